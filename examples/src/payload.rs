//! The record payload the example producer writes and the example consumers
//! read back: `KEY:COUNTER:SENT_MS`.
//!
//! `COUNTER` counts from 0 per partition key, so a consumer can tell a lost
//! record (a gap), a duplicate (a counter seen twice) and an ordering fault
//! (a counter seen before a smaller one) without any other state.
//! `SENT_MS` is the producer's wall clock in Unix milliseconds, for
//! put-to-process latency on one machine.

use std::fmt;
use std::str::FromStr;

/// One record of the example producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// The partition key the record was put with.
    pub key: String,
    /// How many records of this key were produced before this one.
    pub counter: u64,
    /// When the producer sent the record, in Unix milliseconds.
    pub sent_ms: u64,
}

/// Why bytes are not a [`Payload`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an example payload (expected KEY:COUNTER:SENT_MS): {0:?}")]
pub struct PayloadError(String);

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.key, self.counter, self.sent_ms)
    }
}

impl FromStr for Payload {
    type Err = PayloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || PayloadError(s.chars().take(80).collect());
        // The key may itself contain ':'; the last two fields are numbers.
        let (rest, sent_ms) = s.rsplit_once(':').ok_or_else(error)?;
        let (key, counter) = rest.rsplit_once(':').ok_or_else(error)?;
        if key.is_empty() {
            return Err(error());
        }
        Ok(Self {
            key: key.to_owned(),
            counter: counter.parse().map_err(|_| error())?,
            sent_ms: sent_ms.parse().map_err(|_| error())?,
        })
    }
}

impl Payload {
    /// Parses a record's data.
    pub fn from_bytes(data: &[u8]) -> Result<Self, PayloadError> {
        std::str::from_utf8(data)
            .map_err(|_| PayloadError(String::from_utf8_lossy(data).chars().take(80).collect()))?
            .parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_allows_colons_in_keys() {
        for key in ["k0", "tenant:7"] {
            let p = Payload {
                key: key.into(),
                counter: 42,
                sent_ms: 1_700_000_000_123,
            };
            assert_eq!(Payload::from_bytes(p.to_string().as_bytes()).unwrap(), p);
        }
    }

    #[test]
    fn rejects_foreign_data() {
        for bad in ["", "k0:1", ":1:2", "k0:x:2", "k0:1:-2"] {
            assert!(bad.parse::<Payload>().is_err(), "{bad:?}");
        }
        assert!(Payload::from_bytes(&[0xff, 0xfe]).is_err());
    }
}
