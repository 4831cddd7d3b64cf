//! Where a retry policy that gives up on a batch puts its records: a
//! dead-letter stream, written through the producer library
//! (`kcl-producer`).

use kcl_producer::{Producer, SendError, UserRecord, Written};

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
            let mut user = UserRecord::new(record.partition_key.clone(), record.data.clone());
            user.explicit_hash_key = record
                .explicit_hash_key
                .as_deref()
                .and_then(|key| key.parse().ok());
            deliveries.push(self.producer.enqueue(user).await);
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
