//! How a Java KCL multi-stream application names a stream in its lease
//! table: `account:stream:epoch` (the AWS account id, the stream name and
//! the stream's creation time in epoch seconds), and a lease of one of its
//! shards as `account:stream:epoch:shardId`.

use std::fmt;

/// A stream of a multi-stream application, as its lease keys name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamIdentifier {
    /// The AWS account id (digits).
    pub account_id: String,
    /// The stream name (no `:`).
    pub stream_name: String,
    /// When the stream was created, in seconds since the Unix epoch (more
    /// than 0): a stream deleted and created again under the same name is
    /// another stream.
    pub creation_epoch: u64,
}

/// Why a text is not a stream identifier.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a stream identifier: expected account:stream:epoch (account and epoch in \
     digits, epoch above 0)"
)]
pub struct StreamIdentifierError {
    /// The text given.
    pub text: String,
}

impl StreamIdentifier {
    /// Reads `account:stream:epoch`, as the Java KCL does.
    pub fn parse(text: &str) -> Result<Self, StreamIdentifierError> {
        let invalid = || StreamIdentifierError {
            text: text.to_owned(),
        };
        let parts: Vec<&str> = text.split(':').collect();
        let [account, stream, epoch] = parts.as_slice() else {
            return Err(invalid());
        };
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(account) || stream.is_empty() || !digits(epoch) {
            return Err(invalid());
        }
        let creation_epoch: u64 = epoch.parse().map_err(|_| invalid())?;
        if creation_epoch == 0 {
            return Err(invalid());
        }
        Ok(Self {
            account_id: (*account).to_owned(),
            stream_name: (*stream).to_owned(),
            creation_epoch,
        })
    }

    /// The lease key of `shard_id` of this stream.
    pub fn lease_key(&self, shard_id: &str) -> String {
        format!("{self}:{shard_id}")
    }

    /// The stream and the shard of a multi-stream lease key, if `key` is
    /// one.
    pub fn split_lease_key(key: &str) -> Option<(Self, &str)> {
        let (stream, shard) = key.rsplit_once(':')?;
        if shard.is_empty() {
            return None;
        }
        Some((Self::parse(stream).ok()?, shard))
    }
}

impl fmt::Display for StreamIdentifier {
    /// `account:stream:epoch`, as the Java KCL writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.account_id, self.stream_name, self.creation_epoch
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_lease_keys_round_trip() {
        let orders = StreamIdentifier::parse("123456789012:orders:1700000000").unwrap();
        assert_eq!(orders.account_id, "123456789012");
        assert_eq!(orders.stream_name, "orders");
        assert_eq!(orders.creation_epoch, 1_700_000_000);
        assert_eq!(orders.to_string(), "123456789012:orders:1700000000");
        let key = orders.lease_key("shardId-000000000001");
        assert_eq!(key, "123456789012:orders:1700000000:shardId-000000000001");
        assert_eq!(
            StreamIdentifier::split_lease_key(&key),
            Some((orders, "shardId-000000000001"))
        );
    }

    #[test]
    fn other_texts_are_refused() {
        for text in [
            "orders",
            "a:orders:1",
            "1:orders:x",
            "1::2",
            "1:orders:0",
            "1:orders:2:3",
            "",
        ] {
            assert!(StreamIdentifier::parse(text).is_err(), "{text}");
        }
        for key in [
            "shardId-000000000000",
            "1:orders:2:",
            "1:orders:2",
            "x:orders:2:shard",
        ] {
            assert_eq!(StreamIdentifier::split_lease_key(key), None, "{key}");
        }
    }
}
