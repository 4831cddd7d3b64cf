//! Where a retry policy that gives up on a batch puts its records: a
//! dead-letter stream, written through the producer library
//! (`kcl-producer`).

use kcl_producer::{MAX_PARTITION_KEY_CHARS, Producer, SendError, UserRecord, Written};

use crate::Record;

/// A dead-letter stream: the records of a batch the processor kept failing
/// on are written there (partition key, explicit hash key and data as they
/// were) before the consumer moves past the batch.
///
/// Two destinations are equal when they write to the same stream.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    producer: Producer,
}

impl PartialEq for DeadLetter {
    fn eq(&self, other: &Self) -> bool {
        self.producer.stream() == other.producer.stream()
    }
}

impl DeadLetter {
    /// Dead letters go through `producer` (its stream, batching, ordering
    /// and retry settings).
    pub fn new(producer: Producer) -> Self {
        Self { producer }
    }

    /// The stream dead letters go to.
    pub fn stream(&self) -> &str {
        self.producer.stream()
    }

    /// Writes `records` and waits for each: one outcome per record, in
    /// order.
    pub(crate) async fn write(&self, records: &[&Record]) -> Vec<Result<Written, SendError>> {
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            deliveries.push(self.producer.enqueue(dead_letter_of(record)).await);
        }
        let mut outcomes = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            outcomes.push(match delivery {
                Ok(delivery) => delivery.await,
                Err(error) => Err(error),
            });
        }
        outcomes
    }
}

/// The partition key of a dead letter whose own key Kinesis refuses. An
/// aggregate's framing takes more bytes than this key, so a user record's
/// data fits beside it in 1 MiB.
pub const REPLACEMENT_KEY: &str = "dead-letter";

/// The record written for `record`: its partition key, explicit hash key
/// and data. A user record unpacked from another producer's aggregate may
/// carry a partition key Kinesis refuses (empty, or over 256 characters):
/// it goes under the key [`REPLACEMENT_KEY`] instead, short enough that
/// its data always fits beside it. An explicit hash key that is not a
/// number is left out.
fn dead_letter_of(record: &Record) -> UserRecord {
    let chars = record.partition_key.chars().count();
    let key = if (1..=MAX_PARTITION_KEY_CHARS).contains(&chars) {
        record.partition_key.clone()
    } else {
        REPLACEMENT_KEY.to_owned()
    };
    let mut user = UserRecord::new(key, record.data.clone());
    user.explicit_hash_key = record
        .explicit_hash_key
        .as_deref()
        .and_then(|key| key.parse().ok());
    user
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kcl_checkpoint::SequenceNumber;

    use super::*;

    fn record(partition_key: &str, explicit_hash_key: Option<&str>) -> Record {
        Record {
            data: Bytes::from_static(b"data"),
            partition_key: partition_key.into(),
            sequence_number: SequenceNumber::new(
                "49590000000000000000000000000000000000000000000000000001",
            )
            .unwrap(),
            sub_sequence_number: 3,
            approximate_arrival_timestamp: None,
            explicit_hash_key: explicit_hash_key.map(str::to_owned),
        }
    }

    #[test]
    fn a_dead_letter_keeps_key_hash_key_and_data_and_is_always_writable() {
        let kept = dead_letter_of(&record("k", Some("42")));
        assert_eq!(
            (
                kept.partition_key.as_str(),
                kept.explicit_hash_key,
                &kept.data[..]
            ),
            ("k", Some(42), &b"data"[..])
        );
        for bad in ["".to_owned(), "x".repeat(257)] {
            let written = dead_letter_of(&record(&bad, Some("not a number")));
            assert!(written.validate().is_ok(), "{bad:?}");
            assert_eq!(written.partition_key, REPLACEMENT_KEY);
            assert_eq!(written.explicit_hash_key, None);
        }
        // The largest data a user record can have inside a 1 MiB aggregate
        // (magic bytes, digest, a one-byte outer key, the entry's framing)
        // still fits with the replacement key.
        let mut largest = record("", None);
        largest.data = Bytes::from(vec![0u8; kcl_producer::MAX_RECORD_BYTES - 4 - 16 - 1 - 8]);
        assert!(dead_letter_of(&largest).validate().is_ok());
    }
}
