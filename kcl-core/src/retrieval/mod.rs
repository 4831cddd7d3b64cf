//! Reading a shard's records: a fetcher task per shard that runs ahead of
//! the processor into a bounded buffer (prefetch), so the processor rarely
//! waits for Kinesis and memory stays flat however slow the processor is.
//!
//! - [`polling`]: `GetShardIterator`, then a `GetRecords` loop.
//! - [`fanout`]: enhanced fan-out, `SubscribeToShard` streams pushing records.
//! - [`PrefetchBudget`]: the bound on records and bytes fetched but not yet
//!   processed.
//! - [`aggregation`]: KPL aggregates expanded into their user records.

pub mod aggregation;
mod budget;
pub mod fanout;
pub mod polling;

use std::time::Duration;

use std::time::SystemTime;

use crate::backoff::{Backoff, BackoffConfig};
use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_lease::HashKeyRange;
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::Record;
use crate::kinesis::{ChildShard, KinesisError, StartingPosition};
use crate::telemetry::WorkerStats;

pub use budget::{PrefetchBudget, PrefetchPermit};

/// How records are read from Kinesis.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrievalConfig {
    /// The most records one `GetRecords` call asks for (1 to 10,000).
    /// Default 10,000.
    pub max_records_per_call: u32,
    /// How long to wait before the next `GetRecords` call once a shard is
    /// caught up (an empty answer, or `millis_behind_latest` of 0). Calls
    /// are never closer than `min_call_interval`. Default 250 ms.
    pub idle_time_between_calls: Duration,
    /// The shortest time between two `GetRecords` calls on one shard.
    /// Default [`MIN_CALL_INTERVAL`] (200 ms): Kinesis allows five calls per
    /// second per shard, and shorter intervals only get throttled. Lower it
    /// only for other implementations (the in-memory one in benchmarks).
    pub min_call_interval: Duration,
    /// The most records fetched ahead of the processor. Default 30,000.
    pub max_prefetch_records: usize,
    /// The most bytes (data and partition keys) fetched ahead of the
    /// processor. Default 32 MiB. A single `GetRecords` answer (up to 10 MiB)
    /// is always accepted, so the bound is this plus one answer.
    pub max_prefetch_bytes: usize,
    /// Drop KPL aggregates none of whose user records belongs to the shard
    /// they were read from (default `true`). That is the KPL's wrong-shard
    /// case: after a reshard its stale shard map sends a whole aggregate to
    /// the wrong shard, and it puts the aggregate again to the right one,
    /// so its records would otherwise be processed twice. An aggregate with
    /// at least one record in the shard is always delivered whole (other
    /// aggregators, such as `aws-kinesis-agg`, mix keys of several shards).
    /// Every record outside the shard is counted
    /// (`kcl_kpl_records_outside_shard_total`, by `action`). `false`
    /// delivers everything.
    pub drop_records_outside_shard: bool,
    /// With enhanced fan-out, end each subscription after this long and
    /// subscribe again (Kinesis ends them every 5 minutes itself; this is
    /// for tests). Default `None`.
    pub fanout_resubscribe_after: Option<Duration>,
    /// With enhanced fan-out, how long a shard may send nothing before it
    /// is checked once by polling for a shard end the subscription did not
    /// report. Default 30 s.
    pub fanout_shard_end_check: Duration,
}

/// The shortest time between two `GetRecords` calls on one shard: Kinesis
/// allows five calls per second per shard.
pub const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);

impl RetrievalConfig {
    /// Checks every setting is in its range.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        use crate::ConfigError;
        if !(1..=10_000).contains(&self.max_records_per_call) {
            return Err(ConfigError::Invalid {
                setting: "max_records_per_call",
                reason: format!("{} is not between 1 and 10,000", self.max_records_per_call),
            });
        }
        for (setting, value) in [
            ("max_prefetch_records", self.max_prefetch_records),
            ("max_prefetch_bytes", self.max_prefetch_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    setting,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.fanout_shard_end_check.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "fanout_shard_end_check",
                reason: "must be more than zero".into(),
            });
        }
        Ok(())
    }
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self {
            max_records_per_call: 10_000,
            idle_time_between_calls: Duration::from_millis(250),
            min_call_interval: MIN_CALL_INTERVAL,
            max_prefetch_records: 30_000,
            max_prefetch_bytes: 32 << 20,
            drop_records_outside_shard: true,
            fanout_resubscribe_after: None,
            fanout_shard_end_check: Duration::from_secs(30),
        }
    }
}

/// Backs off between failed Kinesis calls of one shard's fetcher, without a
/// limit on attempts (a shard cannot be skipped).
pub(crate) struct FetchRetry {
    config: BackoffConfig,
    failures: Backoff,
}

impl FetchRetry {
    /// Delays following `config`, its attempt limit ignored.
    pub(crate) fn new(config: &BackoffConfig) -> Self {
        let config = config.clone().without_limit();
        Self {
            failures: Backoff::new(config.clone()),
            config,
        }
    }

    /// A call succeeded: the next failure starts from the shortest delay.
    pub(crate) fn succeeded(&mut self) {
        self.failures = Backoff::new(self.config.clone());
    }

    /// Counts and logs a failed call, then sleeps before the next attempt:
    /// a growing jittered delay for throttling and transient failures, the
    /// longest for refusals.
    pub(crate) async fn wait_after(&mut self, error: &KinesisError, stats: &WorkerStats) {
        stats.count_kinesis_retry();
        let delay = if error.is_retryable() {
            self.failures.next_delay().unwrap_or(self.config.max)
        } else {
            self.config.max.max(Duration::from_secs(1))
        };
        if error.is_retryable() {
            warn!(%error, attempt = self.failures.attempts(), ?delay, "Kinesis call failed; retrying");
        } else {
            error!(%error, ?delay, "Kinesis refused a call this shard needs; retrying");
        }
        tokio::time::sleep(delay).await;
    }
}

/// Where a fetcher starts: after a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchStart {
    /// The checkpoint (a record or a sentinel other than `SHARD_END`).
    pub after: ExtendedSequenceNumber,
    /// The time to start from when `after` is `AT_TIMESTAMP`, or `LATEST`
    /// once a reader recorded where it began (see
    /// [`Lease::start_timestamp`](kcl_lease::Lease::start_timestamp)).
    pub timestamp: Option<SystemTime>,
}

impl FetchStart {
    /// Where to start reading, and the position through which records are
    /// dropped as processed already. A checkpoint at a record starts AT its
    /// sequence number and drops the user records up to and including it, so
    /// a checkpoint inside a KPL aggregate resumes at the next user record.
    pub fn position(&self) -> (StartingPosition, Option<ExtendedSequenceNumber>) {
        let start = match &self.after {
            ExtendedSequenceNumber::Record { sequence, .. } => {
                StartingPosition::AtSequenceNumber(sequence.to_string())
            }
            ExtendedSequenceNumber::Latest => match self.timestamp {
                Some(at) => StartingPosition::AtTimestamp(at),
                None => StartingPosition::Latest,
            },
            ExtendedSequenceNumber::AtTimestamp => match self.timestamp {
                Some(at) => StartingPosition::AtTimestamp(at),
                None => {
                    warn!(
                        "lease starts AT_TIMESTAMP but no initial timestamp is configured; \
                         reading from TRIM_HORIZON so nothing is skipped"
                    );
                    StartingPosition::TrimHorizon
                }
            },
            ExtendedSequenceNumber::TrimHorizon | ExtendedSequenceNumber::ShardEnd => {
                StartingPosition::TrimHorizon
            }
        };
        let skip_through = (!self.after.is_sentinel()).then(|| self.after.clone());
        (start, skip_through)
    }
}

/// Expands KPL aggregates (dropping user records outside `range`, when
/// given) and drops records at or before `skip_through`.
pub(crate) fn prepare(
    records: Vec<Record>,
    range: Option<HashKeyRange>,
    skip_through: Option<&ExtendedSequenceNumber>,
    stats: &WorkerStats,
) -> Vec<Record> {
    let (records, report) = aggregation::deaggregate(records, range);
    stats.count_deaggregation(&report);
    records
        .into_iter()
        .filter(|r| skip_through.is_none_or(|skip| r.position() > *skip))
        .collect()
}

/// Takes the records' share of `budget` (waiting while the processor is
/// behind) and sends them. Returns `false` if the consumer is gone.
pub(crate) async fn send_batch(
    events: &mpsc::Sender<ShardEvent>,
    budget: &PrefetchBudget,
    records: Vec<Record>,
    millis_behind_latest: Option<u64>,
) -> bool {
    if records.is_empty() {
        return true;
    }
    let bytes = records.iter().map(Record::size).sum();
    let permit = budget.acquire(records.len(), bytes).await;
    let batch = Batch {
        records,
        millis_behind_latest,
        permit,
    };
    events.send(ShardEvent::Records(batch)).await.is_ok()
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
