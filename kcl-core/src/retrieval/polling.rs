//! Polling retrieval: `GetShardIterator` from the checkpoint, then a
//! `GetRecords` loop that runs ahead of the processor within a
//! [`PrefetchBudget`].
//!
//! - Calls on a shard are at least `min_call_interval` (200 ms) apart, and
//!   `idle_time_between_calls` apart once the shard is caught up.
//! - Throttling and transient failures are retried after a jittered,
//!   growing backoff; other failures are logged and retried after the
//!   longest backoff, since a shard cannot be skipped.
//! - An expired iterator is replaced by one `AFTER_SEQUENCE_NUMBER` of the
//!   last record read: no gap, no duplicate.
//! - Starting from a checkpoint at a record, the iterator starts
//!   `AT_SEQUENCE_NUMBER` and every user record at or before the checkpoint
//!   is dropped, so a checkpoint inside a KPL aggregate resumes at the next
//!   sub-record.
//! - KPL aggregates are expanded into their user records; user records
//!   outside the shard's hash key range are dropped (after a reshard).
//! - When `GetRecords` returns no next iterator the shard has ended:
//!   [`ShardEvent::ShardEnd`] is sent and the fetcher stops.

use std::sync::Arc;

use crate::backoff::BackoffConfig;
use kcl_checkpoint::SequenceNumber;
use kcl_lease::HashKeyRange;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use super::{
    FetchRetry, FetchStart, PrefetchBudget, RetrievalConfig, ShardEvent, prepare, send_batch,
};
use crate::kinesis::{Kinesis, KinesisError, StartingPosition};
use crate::telemetry::WorkerStats;

/// Reads one shard into a channel.
pub struct PollingFetcher {
    /// Where records come from.
    pub kinesis: Arc<dyn Kinesis>,
    /// The stream.
    pub stream: String,
    /// The shard.
    pub shard_id: String,
    /// Call sizes and pacing.
    pub config: RetrievalConfig,
    /// Backoff between failed calls (attempts are not limited here).
    pub backoff: BackoffConfig,
    /// Counts retries.
    pub stats: Arc<WorkerStats>,
    /// The shard's hash key range, when known: KPL user records outside it
    /// are dropped (see [`aggregation`](super::aggregation)).
    pub hash_key_range: Option<HashKeyRange>,
}

impl PollingFetcher {
    /// Runs until the shard ends, or the receiving side of `events` is
    /// dropped.
    pub async fn run(self, start: FetchStart, events: mpsc::Sender<ShardEvent>) {
        let budget = PrefetchBudget::new(
            self.config.max_prefetch_records,
            self.config.max_prefetch_bytes,
        );
        let (initial, skip_through) = start.position();
        let mut last_read: Option<SequenceNumber> = None;
        let mut iterator = None;
        let mut retry = FetchRetry::new(&self.backoff);
        let mut next_call = Instant::now();
        loop {
            if events.is_closed() {
                return;
            }
            let current = match iterator.take() {
                Some(current) => current,
                None => {
                    let position = match &last_read {
                        Some(sequence) => {
                            StartingPosition::AfterSequenceNumber(sequence.to_string())
                        }
                        None => initial.clone(),
                    };
                    match self
                        .kinesis
                        .get_shard_iterator(&self.stream, &self.shard_id, &position)
                        .await
                    {
                        Ok(fresh) => fresh,
                        Err(error) => {
                            retry.wait_after(&error, &self.stats).await;
                            continue;
                        }
                    }
                }
            };
            tokio::time::sleep_until(next_call).await;
            let called = Instant::now();
            next_call = called + self.config.min_call_interval;
            let page = match self
                .kinesis
                .get_records(&current, self.config.max_records_per_call)
                .await
            {
                Ok(page) => page,
                Err(KinesisError::ExpiredIterator { .. }) => {
                    debug!(after = ?last_read, "shard iterator expired; getting a new one");
                    continue;
                }
                Err(error) => {
                    iterator = Some(current);
                    retry.wait_after(&error, &self.stats).await;
                    continue;
                }
            };
            retry.succeeded();
            self.stats.activity().read(&self.stream, &self.shard_id);
            if let Some(last) = page.records.last() {
                last_read = Some(last.sequence_number.clone());
            }
            let caught_up = page.records.is_empty() || page.millis_behind_latest == Some(0);
            let range = self
                .hash_key_range
                .filter(|_| self.config.drop_records_outside_shard);
            let records = prepare(page.records, range, skip_through.as_ref(), &self.stats);
            if !send_batch(&events, &budget, records, page.millis_behind_latest).await {
                return;
            }
            match page.next_iterator {
                Some(next) => iterator = Some(next),
                None => {
                    let _ = events
                        .send(ShardEvent::ShardEnd {
                            child_shards: page.child_shards,
                        })
                        .await;
                    return;
                }
            }
            if caught_up {
                next_call = next_call.max(called + self.config.idle_time_between_calls);
            }
        }
    }
}
