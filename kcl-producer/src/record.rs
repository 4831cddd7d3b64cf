//! What an application sends and what it gets back.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::SendError;
use crate::kpl::partition_key_hash;

/// The most data plus partition key (UTF-8 bytes) one Kinesis record may
/// carry: 1 MiB.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The longest partition key Kinesis accepts, in Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// One record to write: a partition key, data, and optionally an explicit
/// hash key that picks the shard instead of the partition key's MD5.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// The partition key (1 to 256 characters). With ordering on, records
    /// of one partition key are written in the order they were sent.
    pub partition_key: String,
    /// The record's data.
    pub data: Bytes,
    /// The hash key that picks the shard; `None` uses the MD5 of the
    /// partition key, as Kinesis does.
    pub explicit_hash_key: Option<u128>,
}

impl UserRecord {
    /// A record routed by its partition key.
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            partition_key: partition_key.into(),
            data: data.into(),
            explicit_hash_key: None,
        }
    }

    /// The same record routed by `hash_key` instead of its partition key.
    pub fn with_explicit_hash_key(mut self, hash_key: u128) -> Self {
        self.explicit_hash_key = Some(hash_key);
        self
    }

    /// The hash key that picks the record's shard.
    pub fn hash_key(&self) -> u128 {
        self.explicit_hash_key
            .unwrap_or_else(|| partition_key_hash(&self.partition_key))
    }

    /// Data plus partition key, in bytes: what Kinesis counts against the
    /// 1 MiB limit and what the producer's byte bound counts.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    /// Checks the record against Kinesis's limits before it is buffered, so
    /// a record that can never be written fails at once.
    pub fn validate(&self) -> Result<(), SendError> {
        let chars = self.partition_key.chars().count();
        if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
            return Err(SendError::InvalidPartitionKey { chars });
        }
        let size = self.size();
        if size > MAX_RECORD_BYTES {
            return Err(SendError::TooLarge {
                size,
                limit: MAX_RECORD_BYTES,
            });
        }
        Ok(())
    }
}

/// Where a record was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The shard it was written to.
    pub shard_id: Arc<str>,
    /// The sequence number of the Kinesis record that carries it.
    pub sequence_number: Arc<str>,
    /// Its index inside a KPL aggregate (the consumer's sub-sequence
    /// number), or `None` if it was written as a Kinesis record of its own.
    pub sub_sequence_number: Option<u64>,
    /// How many `PutRecords` calls carried it (1 if the first one wrote it).
    pub attempts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_before_buffering() {
        assert!(UserRecord::new("k", vec![0u8; 10]).validate().is_ok());
        assert!(matches!(
            UserRecord::new("", "x").validate(),
            Err(SendError::InvalidPartitionKey { chars: 0 })
        ));
        assert!(UserRecord::new("é".repeat(256), "x").validate().is_ok());
        assert!(matches!(
            UserRecord::new("é".repeat(257), "x").validate(),
            Err(SendError::InvalidPartitionKey { chars: 257 })
        ));
        // The key counts towards the 1 MiB.
        let exact = UserRecord::new("kk", vec![0u8; MAX_RECORD_BYTES - 2]);
        assert!(exact.validate().is_ok());
        let over = UserRecord::new("kkk", vec![0u8; MAX_RECORD_BYTES - 2]);
        assert!(matches!(
            over.validate(),
            Err(SendError::TooLarge { size, .. }) if size == MAX_RECORD_BYTES + 1
        ));
    }

    #[test]
    fn the_hash_key_is_explicit_or_the_partition_keys_md5() {
        let record = UserRecord::new("", "x");
        assert_eq!(record.hash_key(), 0xd41d8cd98f00b204e9800998ecf8427e);
        assert_eq!(record.with_explicit_hash_key(7).hash_key(), 7);
    }
}
