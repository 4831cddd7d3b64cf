//! Enhanced fan-out retrieval: a `SubscribeToShard` stream per shard, on
//! the stream consumer the scheduler registered, pushing records as they
//! arrive (no polling).
//!
//! - The first subscription starts at the checkpoint (as polling does);
//!   every later one starts AFTER the last record received, so a
//!   resubscription (Kinesis ends every subscription after 5 minutes) has
//!   no gap and no duplicate.
//! - Records pass through the same prefetch budget as polling: while the
//!   processor is behind, the fetcher stops reading the stream, and
//!   Kinesis's flow control holds the rest back.
//! - An event with child shards is the shard's end: it feeds the same
//!   shard-end path as polling. Because not every implementation reports it
//!   (kinesis-mock keeps a closed shard's subscription open), a shard that
//!   has sent nothing for `fanout_shard_end_check` is also checked with one
//!   `GetShardIterator` and `GetRecords` after the last record read.
//! - Failures are retried with jittered backoff by subscribing again.

use std::sync::Arc;

use kcl_checkpoint::SequenceNumber;
use kcl_lease::HashKeyRange;
use kcl_lease::backoff::BackoffConfig;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use super::{
    FetchRetry, FetchStart, PrefetchBudget, RetrievalConfig, ShardEvent, prepare, send_batch,
};
use crate::kinesis::{Kinesis, StartingPosition};
use crate::stats::WorkerStats;

/// Reads one shard through enhanced fan-out into a channel.
pub struct FanoutFetcher {
    /// Where records come from.
    pub kinesis: Arc<dyn Kinesis>,
    /// The registered stream consumer.
    pub consumer_arn: String,
    /// The shard.
    pub shard_id: String,
    /// Prefetch bounds and KPL settings.
    pub config: RetrievalConfig,
    /// Backoff between failed subscriptions (attempts are not limited).
    pub backoff: BackoffConfig,
    /// Counts retries.
    pub stats: Arc<WorkerStats>,
    /// The shard's hash key range, when known.
    pub hash_key_range: Option<HashKeyRange>,
    /// The stream (for the shard-end check).
    pub stream: String,
}

impl FanoutFetcher {
    /// Runs until the shard ends, or the receiving side of `events` is
    /// dropped.
    pub async fn run(self, start: FetchStart, events: mpsc::Sender<ShardEvent>) {
        let budget = PrefetchBudget::new(
            self.config.max_prefetch_records,
            self.config.max_prefetch_bytes,
        );
        let (initial, skip_through) = start.position();
        let range = self
            .hash_key_range
            .filter(|_| self.config.drop_records_outside_shard);
        let mut last_read: Option<SequenceNumber> = None;
        let mut retry = FetchRetry::new(&self.backoff);
        // Since when nothing has arrived (across resubscriptions).
        let mut quiet_since = Instant::now();
        loop {
            if events.is_closed() {
                return;
            }
            let position = match &last_read {
                Some(sequence) => StartingPosition::AfterSequenceNumber(sequence.to_string()),
                None => initial.clone(),
            };
            let mut subscription = match self
                .kinesis
                .subscribe_to_shard(&self.consumer_arn, &self.shard_id, &position)
                .await
            {
                Ok(subscription) => subscription,
                Err(error) => {
                    retry.wait_after(&error, &self.stats).await;
                    continue;
                }
            };
            debug!(?position, "subscribed");
            let ends_at = self
                .config
                .fanout_resubscribe_after
                .map(|after| Instant::now() + after);
            loop {
                let next = match ends_at {
                    Some(at) => {
                        match tokio::time::timeout_at(at, subscription.next_event()).await {
                            Ok(next) => next,
                            Err(_) => Ok(None),
                        }
                    }
                    None => subscription.next_event().await,
                };
                let event = match next {
                    Ok(Some(event)) => event,
                    Ok(None) => {
                        debug!(after = ?last_read, "subscription ended; subscribing again");
                        break;
                    }
                    Err(error) => {
                        retry.wait_after(&error, &self.stats).await;
                        break;
                    }
                };
                retry.succeeded();
                if let Some(last) = event.records.last() {
                    last_read = Some(last.sequence_number.clone());
                    quiet_since = Instant::now();
                } else if quiet_since.elapsed() >= self.config.fanout_shard_end_check {
                    quiet_since = Instant::now();
                    if let Some(child_shards) = self.ended(&initial, last_read.as_ref()).await {
                        let _ = events.send(ShardEvent::ShardEnd { child_shards }).await;
                        return;
                    }
                }
                let records = prepare(event.records, range, skip_through.as_ref(), &self.stats);
                if !send_batch(&events, &budget, records, event.millis_behind_latest).await {
                    return;
                }
                if !event.child_shards.is_empty() {
                    let _ = events
                        .send(ShardEvent::ShardEnd {
                            child_shards: event.child_shards,
                        })
                        .await;
                    return;
                }
            }
        }
    }

    /// Whether the shard has ended with nothing after `last_read`, asked by
    /// polling once: its child shards if so.
    async fn ended(
        &self,
        initial: &StartingPosition,
        last_read: Option<&SequenceNumber>,
    ) -> Option<Vec<crate::kinesis::ChildShard>> {
        let position = match last_read {
            Some(sequence) => StartingPosition::AfterSequenceNumber(sequence.to_string()),
            None => initial.clone(),
        };
        let iterator = self
            .kinesis
            .get_shard_iterator(&self.stream, &self.shard_id, &position)
            .await
            .ok()?;
        let page = self.kinesis.get_records(&iterator, 1).await.ok()?;
        (page.records.is_empty() && page.next_iterator.is_none()).then_some(page.child_shards)
    }
}
