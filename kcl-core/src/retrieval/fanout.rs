//! Enhanced fan-out retrieval: a `SubscribeToShard` stream per shard, on
//! the stream consumer the scheduler registered, pushing records as they
//! arrive (no polling).
//!
//! - The first subscription starts at the checkpoint (as polling does);
//!   every later one starts AFTER the continuation sequence number of the
//!   last event received (the position the subscription had reached, even
//!   when no record came), or after the last record if an event carried
//!   none, so a resubscription (Kinesis ends every subscription after 5
//!   minutes) has no gap and no duplicate.
//! - Records pass through the same prefetch budget as polling: while the
//!   processor is behind, the fetcher stops reading the stream, and
//!   Kinesis's flow control holds the rest back.
//! - An event with child shards is the shard's end: it feeds the same
//!   shard-end path as polling. Because not every implementation reports it
//!   (kinesis-mock keeps a closed shard's subscription open), a shard that
//!   has sent nothing for `fanout_shard_end_check` is also checked with one
//!   `GetShardIterator` and `GetRecords` after the last record read.
//! - Failures are retried with jittered backoff by subscribing again.
//! - Registering the stream consumer ([`register_consumer`]) retries
//!   throttling and transient failures too: a worker that starts while the
//!   network hiccups, or with a hundred others, waits instead of exiting.

use std::ops::ControlFlow;
use std::sync::Arc;

use crate::backoff::{Backoff, BackoffConfig, retry_with_backoff};
use kcl_lease::HashKeyRange;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{
    FetchRetry, FetchStart, PrefetchBudget, RetrievalConfig, ShardEvent, prepare, send_batch,
};
use crate::kinesis::{Kinesis, KinesisError, StartingPosition};
use crate::telemetry::WorkerStats;

/// Registers (or finds) the stream consumer `name` on `stream` and returns
/// its ARN once it is active. Throttling and transient failures are retried
/// with `backoff`'s delays until it succeeds (its attempt limit does not
/// apply), each retry logged; any other error (no such stream, access
/// denied) is returned at once.
pub async fn register_consumer(
    kinesis: &dyn Kinesis,
    stream: &str,
    name: &str,
    backoff: &BackoffConfig,
) -> Result<String, KinesisError> {
    let unlimited = Backoff::new(backoff.clone().without_limit());
    retry_with_backoff("RegisterStreamConsumer", unlimited, || async {
        match kinesis.register_consumer(stream, name).await {
            Ok(arn) => ControlFlow::Break(Ok(arn)),
            Err(error) if error.is_retryable() => {
                warn!(%error, consumer = name, "registering the fan-out consumer failed; retrying");
                ControlFlow::Continue(error)
            }
            Err(error) => ControlFlow::Break(Err(error)),
        }
    })
    .await
    .map_err(|exhausted| exhausted.error)
}

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
        // Where the next subscription starts after: the last event's
        // continuation, or its last record.
        let mut resume_after: Option<String> = None;
        let mut retry = FetchRetry::new(&self.backoff);
        // Since when nothing has arrived (across resubscriptions).
        let mut quiet_since = Instant::now();
        loop {
            if events.is_closed() {
                return;
            }
            let position = match &resume_after {
                Some(sequence) => StartingPosition::AfterSequenceNumber(sequence.clone()),
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
                        debug!(after = ?resume_after, "subscription ended; subscribing again");
                        break;
                    }
                    Err(error) => {
                        retry.wait_after(&error, &self.stats).await;
                        break;
                    }
                };
                retry.succeeded();
                self.stats.activity().read(&self.stream, &self.shard_id);
                if let Some(continuation) = &event.continuation_sequence_number {
                    resume_after = Some(continuation.clone());
                } else if let Some(last) = event.records.last() {
                    resume_after = Some(last.sequence_number.to_string());
                }
                if !event.records.is_empty() {
                    quiet_since = Instant::now();
                } else if quiet_since.elapsed() >= self.config.fanout_shard_end_check {
                    quiet_since = Instant::now();
                    if let Some(child_shards) = self.ended(&initial, resume_after.as_deref()).await
                    {
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

    /// Whether the shard has ended with nothing after `resume_after`, asked
    /// by polling once: its child shards if so.
    async fn ended(
        &self,
        initial: &StartingPosition,
        resume_after: Option<&str>,
    ) -> Option<Vec<crate::kinesis::ChildShard>> {
        let position = match resume_after {
            Some(sequence) => StartingPosition::AfterSequenceNumber(sequence.to_owned()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::InMemoryKinesis;

    #[tokio::test(start_paused = true)]
    async fn registration_rides_out_transient_failures_and_throttling() {
        let kinesis = InMemoryKinesis::new();
        kinesis.create_stream("orders", 1);
        let transient = KinesisError::Transient {
            operation: "RegisterStreamConsumer",
            message: "connection closed before message completed".into(),
        };
        let throttled = KinesisError::Throttled {
            operation: "RegisterStreamConsumer",
            message: "LimitExceededException".into(),
        };
        kinesis.fail_next("RegisterStreamConsumer", transient, 3);
        kinesis.fail_next("RegisterStreamConsumer", throttled, 2);
        let arn = register_consumer(&kinesis, "orders", "app", &BackoffConfig::default())
            .await
            .unwrap();
        assert!(arn.contains("app"), "{arn}");
        assert_eq!(kinesis.calls("RegisterStreamConsumer"), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn registration_on_a_missing_stream_fails_at_once() {
        let kinesis = InMemoryKinesis::new();
        let error = register_consumer(&kinesis, "missing", "app", &BackoffConfig::default())
            .await
            .unwrap_err();
        assert!(!error.is_retryable(), "{error}");
        assert_eq!(kinesis.calls("RegisterStreamConsumer"), 1);
    }
}
