//! Where a producer's calls go: `PutRecords` and `ListShards`, behind a
//! trait implemented for the AWS SDK's Kinesis client (in [`crate::sdk`])
//! and, for tests, an in-memory stream (`memory::InMemorySink`, feature
//! `test-util`).
//!
//! Implementations make each call once: the producer retries, with
//! backoff, in one place.

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::PutError;
use crate::shard_map::ShardRange;

/// One Kinesis record of a `PutRecords` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutEntry {
    /// Its partition key.
    pub partition_key: String,
    /// The hash key that picks its shard, if not the partition key's MD5.
    pub explicit_hash_key: Option<u128>,
    /// Its data (a user record's, or a KPL aggregate).
    pub data: Bytes,
}

/// What `PutRecords` answered for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryResult {
    /// Written.
    Written {
        /// The shard it was written to.
        shard_id: String,
        /// Its sequence number.
        sequence_number: String,
    },
    /// Not written.
    Failed {
        /// Kinesis's error code (`ProvisionedThroughputExceededException`,
        /// `InternalFailure`, a KMS error…).
        code: String,
        /// Kinesis's message.
        message: String,
    },
}

impl EntryResult {
    /// Whether a failed entry may succeed if sent again.
    pub fn is_retryable(code: &str) -> bool {
        matches!(
            code,
            "ProvisionedThroughputExceededException"
                | "InternalFailure"
                | "ServiceUnavailable"
                | "KMSThrottlingException"
        )
    }
}

/// The Kinesis calls a producer makes.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Writes `entries` to `stream` (a name, or an ARN) in one
    /// `PutRecords` call; the answer has one result per entry, in order.
    async fn put_records(
        &self,
        stream: &str,
        entries: Vec<PutEntry>,
    ) -> Result<Vec<EntryResult>, PutError>;

    /// The stream's open shards, following pagination.
    async fn open_shards(&self, stream: &str) -> Result<Vec<ShardRange>, PutError>;
}

#[async_trait]
impl<S: Sink + ?Sized> Sink for std::sync::Arc<S> {
    async fn put_records(
        &self,
        stream: &str,
        entries: Vec<PutEntry>,
    ) -> Result<Vec<EntryResult>, PutError> {
        (**self).put_records(stream, entries).await
    }

    async fn open_shards(&self, stream: &str) -> Result<Vec<ShardRange>, PutError> {
        (**self).open_shards(stream).await
    }
}
