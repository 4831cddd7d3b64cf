//! The narrow part of the Kinesis API the worker uses, behind a trait with
//! two implementations: [`SdkKinesis`] (aws-sdk-kinesis) and
//! [`InMemoryKinesis`] (for unit tests and simulations; feature
//! `test-util`).
//!
//! Implementations send each request once: retries with backoff are the
//! caller's (through [`crate::backoff`]), so throttling is handled in one
//! place and counted.

mod error;
#[cfg(any(test, feature = "test-util"))]
mod memory;
mod sdk;

use std::time::SystemTime;

use async_trait::async_trait;
use kcl_lease::HashKeyRange;

pub use error::KinesisError;
#[cfg(any(test, feature = "test-util"))]
pub use memory::{IN_MEMORY_ACCOUNT, InMemoryKinesis};
pub use sdk::SdkKinesis;

use crate::Record;

/// A shard as `ListShards` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardDescription {
    /// The shard id.
    pub shard_id: String,
    /// The shard it was split from, or the first shard it was merged from.
    pub parent_shard_id: Option<String>,
    /// The second shard of a merge.
    pub adjacent_parent_shard_id: Option<String>,
    /// The shard's hash key range.
    pub hash_key_range: HashKeyRange,
    /// Set when the shard is closed (split or merged): its last sequence
    /// number.
    pub ending_sequence_number: Option<String>,
}

impl ShardDescription {
    /// The parent shards (none, one, or two for a merge).
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent_shard_id
            .iter()
            .chain(&self.adjacent_parent_shard_id)
            .map(String::as_str)
    }

    /// Whether the shard is still open for writes.
    pub fn is_open(&self) -> bool {
        self.ending_sequence_number.is_none()
    }
}

/// A stream as `DescribeStreamSummary` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    /// The stream's ARN (`arn:aws:kinesis:region:account:stream/name`).
    pub arn: String,
    /// When the stream was created.
    pub created: SystemTime,
}

impl StreamSummary {
    /// The AWS account id in the ARN, if it has one.
    pub fn account_id(&self) -> Option<&str> {
        let account = self.arn.split(':').nth(4)?;
        (!account.is_empty() && account.bytes().all(|b| b.is_ascii_digit())).then_some(account)
    }
}

/// Where a shard iterator starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartingPosition {
    /// The oldest record in the shard.
    TrimHorizon,
    /// Just after the newest record at the time of the call.
    Latest,
    /// The first record at or after a time.
    AtTimestamp(SystemTime),
    /// The record with this sequence number.
    AtSequenceNumber(String),
    /// The record after the one with this sequence number.
    AfterSequenceNumber(String),
}

/// A shard created from a shard that ended, as `GetRecords` reports it at
/// shard end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildShard {
    /// The child shard's id.
    pub shard_id: String,
    /// All its parents (two for a merge).
    pub parent_shards: Vec<String>,
    /// Its hash key range.
    pub hash_key_range: HashKeyRange,
}

/// One `GetRecords` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordsPage {
    /// The records, oldest first (possibly none).
    pub records: Vec<Record>,
    /// Where to read next; `None` when the shard has ended and every record
    /// has been returned.
    pub next_iterator: Option<String>,
    /// How far behind the newest record of the shard this page is.
    pub millis_behind_latest: Option<u64>,
    /// At shard end, the shards that follow it.
    pub child_shards: Vec<ChildShard>,
}

/// One event of an enhanced fan-out subscription.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionEvent {
    /// The records, oldest first (possibly none).
    pub records: Vec<Record>,
    /// Where the subscription goes on from.
    pub continuation_sequence_number: Option<String>,
    /// How far behind the newest record of the shard this event is.
    pub millis_behind_latest: Option<u64>,
    /// At shard end, the shards that follow it (the last event).
    pub child_shards: Vec<ChildShard>,
}

/// An open `SubscribeToShard` stream.
#[async_trait]
pub trait Subscription: Send {
    /// The next event; `Ok(None)` once the subscription has ended (Kinesis
    /// ends them after 5 minutes): subscribe again to go on.
    async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, KinesisError>;
}

/// The Kinesis calls the worker makes.
#[async_trait]
pub trait Kinesis: Send + Sync + 'static {
    /// The stream's ARN and creation time (`DescribeStreamSummary`).
    async fn describe_stream(&self, stream: &str) -> Result<StreamSummary, KinesisError>;

    /// Every shard of the stream, following pagination.
    async fn list_shards(&self, stream: &str) -> Result<Vec<ShardDescription>, KinesisError>;

    /// An iterator for reading `shard_id` from `position`.
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, KinesisError>;

    /// Up to `limit` records from `iterator`.
    async fn get_records(&self, iterator: &str, limit: u32) -> Result<RecordsPage, KinesisError>;

    /// Registers the enhanced fan-out consumer `name` of `stream` (or finds
    /// it, if registered already) and waits until it is active. Returns its
    /// ARN.
    async fn register_consumer(&self, stream: &str, name: &str) -> Result<String, KinesisError>;

    /// Subscribes the consumer `consumer_arn` to `shard_id` from `position`.
    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<Box<dyn Subscription>, KinesisError>;
}
