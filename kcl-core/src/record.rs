//! The record handed to the application.

use std::time::SystemTime;

use bytes::Bytes;
use kcl_checkpoint::{ExtendedSequenceNumber, SequenceNumber};

/// One user record of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The payload.
    pub data: Bytes,
    /// The partition key the producer gave.
    pub partition_key: String,
    /// The Kinesis record's sequence number.
    pub sequence_number: SequenceNumber,
    /// The user record's index inside a KPL aggregate; 0 for records that are
    /// not aggregated.
    pub sub_sequence_number: u64,
    /// When Kinesis accepted the record (approximate).
    pub approximate_arrival_timestamp: Option<SystemTime>,
    /// The explicit hash key the producer gave, when known.
    pub explicit_hash_key: Option<String>,
}

impl Record {
    /// The bytes the record counts for (payload and partition key), as
    /// the prefetch budget and the bytes metric count them.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    /// The record's position, as checkpointed.
    pub fn position(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::Record {
            sequence: self.sequence_number.clone(),
            sub_sequence: self.sub_sequence_number,
        }
    }
}
