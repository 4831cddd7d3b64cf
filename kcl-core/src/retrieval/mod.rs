//! Reading a shard's records: a fetcher task per shard that runs ahead of
//! the processor into a bounded buffer (prefetch), so the processor rarely
//! waits for Kinesis and memory stays flat however slow the processor is.
//!
//! - [`polling`]: `GetShardIterator`, then a `GetRecords` loop.
//! - [`PrefetchBudget`]: the bound on records and bytes fetched but not yet
//!   processed.
//! - [`aggregation`]: KPL aggregates expanded into their user records.

pub mod aggregation;
mod budget;
pub mod polling;

use std::time::Duration;

use crate::Record;
use crate::kinesis::ChildShard;

pub use budget::{PrefetchBudget, PrefetchPermit};

/// How records are read from Kinesis.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrievalConfig {
    /// The most records one `GetRecords` call asks for (1 to 10,000).
    /// Default 10,000.
    pub max_records_per_call: u32,
    /// How long to wait before the next `GetRecords` call once a shard is
    /// caught up (an empty answer, or `millis_behind_latest` of 0). Calls
    /// are never closer than [`MIN_CALL_INTERVAL`] (Kinesis allows five per
    /// second per shard). Default 250 ms.
    pub idle_time_between_calls: Duration,
    /// The most records fetched ahead of the processor. Default 30,000.
    pub max_prefetch_records: usize,
    /// The most bytes (data and partition keys) fetched ahead of the
    /// processor. Default 32 MiB. A single `GetRecords` answer (up to 10 MiB)
    /// is always accepted, so the bound is this plus one answer.
    pub max_prefetch_bytes: usize,
    /// Drop KPL user records whose hash key is outside the shard they were
    /// read from (default `true`, as the Java KCL does). The KPL only
    /// aggregates records bound for one shard and re-puts those that landed
    /// in the wrong one after a reshard, so they would otherwise be
    /// processed twice. Aggregators that mix shards in one record (other
    /// than the KPL) need `false`, or their records are lost; every dropped
    /// record is counted (`kcl_kpl_records_outside_shard_total`) and logged.
    pub drop_records_outside_shard: bool,
}

/// The shortest time between two `GetRecords` calls on one shard: Kinesis
/// allows five calls per second per shard.
pub const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            max_records_per_call: 10_000,
            idle_time_between_calls: Duration::from_millis(250),
            max_prefetch_records: 30_000,
            max_prefetch_bytes: 32 << 20,
            drop_records_outside_shard: true,
        }
    }
}

/// Records fetched from a shard, in order, holding their share of the
/// prefetch budget until dropped.
#[derive(Debug)]
pub struct Batch {
    /// The records, oldest first. Never empty.
    pub records: Vec<Record>,
    /// How far behind the newest record this batch is.
    pub millis_behind_latest: Option<u64>,
    /// Given back to the budget when the batch is dropped.
    pub permit: PrefetchPermit,
}

/// What a fetcher delivers.
#[derive(Debug)]
pub enum ShardEvent {
    /// The next records.
    Records(Batch),
    /// Every record of the shard has been delivered; these shards follow.
    ShardEnd {
        /// The child shards Kinesis reported (empty if it reported none).
        child_shards: Vec<ChildShard>,
    },
}
