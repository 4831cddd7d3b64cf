//! The shard consumer: the task that drives one shard's
//! [`RecordProcessor`] through its [lifecycle](state), from the lease's
//! checkpoint until the lease is lost, the shard ends, or a shutdown is
//! requested.
//!
//! - A child shard's consumer waits until every parent lease is
//!   checkpointed at `SHARD_END` (or its shard is gone from the stream), so
//!   per-key order holds across splits and merges (`parents.rs`).
//! - At shard end the consumer creates the child shards' leases (with all
//!   their parents) and records them on the finished lease before the
//!   processor checkpoints `SHARD_END` (`shard_end.rs`).
//! - Records come from a fetcher task (polling or enhanced fan-out) running
//!   ahead within the prefetch budget.
//! - A batch the processor fails on is delivered again after a backoff, as
//!   the [`ProcessorRetryPolicy`] says; while it is being retried, a
//!   checkpoint cannot cover it.
//! - A panic in any processor call is caught: the processor is dropped and
//!   a new one starts from the last checkpoint.
//! - The scheduler steers the consumer through a [`ConsumerSignal`]: a
//!   requested shutdown lets the batch in flight finish, a lost lease
//!   interrupts it (nothing it does can be checkpointed any more).
//! - The consumer holds the worker's [`ProcessingDeadline`] for its lease
//!   and checks it itself, before every delivery and every checkpoint, and
//!   while the processor works on a batch: once it passes, the batch in
//!   flight is dropped and the consumer stops as if the lease were lost,
//!   whatever the rest of the worker is waiting on.

mod dead_letter;
mod parents;
mod retry_policy;
mod shard_end;
pub mod state;

use std::any::Any;
use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::ProcessorError;
use crate::backoff::{Backoff, BackoffConfig};
use futures::FutureExt;
use kcl_checkpoint::{CheckpointTracker, ExtendedSequenceNumber};
use kcl_lease::{LeaseCheckpointWriter, LeaseStore, LeaseToken, ProcessingDeadline};
use tokio::sync::{mpsc, watch};
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

pub use dead_letter::DeadLetter;
pub use retry_policy::ProcessorRetryPolicy;
pub use state::{ConsumerEvent, ConsumerState, ShutdownReason};

use crate::kinesis::{ChildShard, Kinesis};
use crate::retrieval::FetchStart;
use crate::retrieval::fanout::FanoutFetcher;
use crate::retrieval::polling::PollingFetcher;
use crate::retrieval::{Batch, RetrievalConfig, ShardEvent};
use crate::streams::ConsumedStream;
use crate::telemetry::WorkerStats;
use crate::{InitializationInput, ProcessRecordsInput, RecordProcessor, RecordProcessorFactory};

/// What the scheduler tells a running shard consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerSignal {
    /// Keep processing.
    Run,
    /// Finish the batch in flight, let the processor checkpoint, stop.
    ShutdownRequested,
    /// Stop at once; nothing can be checkpointed.
    LeaseLost,
}

/// What every shard consumer of a worker shares.
pub struct ConsumerContext {
    /// The worker's id (for logs).
    pub worker_id: String,
    /// Where records come from.
    pub kinesis: Arc<dyn Kinesis>,
    /// Where checkpoints go.
    pub store: Arc<dyn LeaseStore>,
    /// Makes the application's processors.
    pub factory: Arc<dyn RecordProcessorFactory>,
    /// How records are read.
    pub retrieval: RetrievalConfig,
    /// How failed batches are retried.
    pub retry_policy: ProcessorRetryPolicy,
    /// Backoff between failed Kinesis calls.
    pub kinesis_backoff: BackoffConfig,
    /// How often a child shard's consumer checks whether its parents are
    /// finished.
    pub parent_poll_interval: Duration,
    /// How long one processor call (`initialize`, `process_records`,
    /// `shard_ended`) may run before it is cancelled and handled as a
    /// failure; `None`: as long as it takes.
    pub processor_timeout: Option<Duration>,
    /// Counters.
    pub stats: Arc<WorkerStats>,
    /// Counts the shards this worker's consumers read to their end and
    /// checkpointed: a child waiting for its parents looks again at once
    /// when it changes.
    pub shard_ends: watch::Sender<u64>,
}

/// How a shard consumer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerOutcome {
    /// Why it stopped.
    pub reason: ShutdownReason,
    /// The last checkpoint stored (`SHARD_END` once a shard end was
    /// checkpointed).
    pub checkpoint: ExtendedSequenceNumber,
    /// At shard end, the shards that follow.
    pub child_shards: Vec<ChildShard>,
    /// It stopped because its processing deadline passed (the worker's
    /// heartbeats were not confirmed in time), not because the lease moved
    /// on.
    pub deadline_passed: bool,
}

/// Where a shard's processing starts.
#[derive(Clone, Debug)]
pub struct ShardStart {
    /// The stream the shard belongs to.
    pub stream: Arc<ConsumedStream>,
    /// The shard.
    pub shard_id: String,
    /// What checkpoints are written with.
    pub token: LeaseToken,
    /// The lease's checkpoint.
    pub checkpoint: ExtendedSequenceNumber,
    /// The lease's pending checkpoint.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// The state stored with the pending checkpoint.
    pub pending_checkpoint_state: Option<Vec<u8>>,
    /// The parent shards, which must be finished first.
    pub parent_shard_ids: BTreeSet<String>,
    /// The shard's hash key range, when the lease records it.
    pub hash_key_range: Option<kcl_lease::HashKeyRange>,
    /// Until when the shard may be processed.
    pub deadline: ProcessingDeadline,
    /// Where an earlier reader began, for a lease still at `LATEST` or
    /// `AT_TIMESTAMP` (see [`Lease::start_timestamp`](kcl_lease::Lease::start_timestamp)).
    pub start_timestamp: Option<SystemTime>,
}

/// How far before the moment it starts a consumer of a shard at `LATEST`
/// begins reading (and records that it did): room for the difference
/// between this machine's clock and the one Kinesis stamps records with, so
/// that no record written after the consumer started is left out.
pub const LATEST_START_MARGIN: Duration = Duration::from_secs(5);

/// A running fetcher: no fetcher outlives its consumer.
struct FetcherTask {
    /// The task, aborted when this is dropped.
    _handle: AbortOnDropHandle<()>,
    /// What it reads: batches, then the shard end.
    events: mpsc::Receiver<ShardEvent>,
}
/// One shard's consumer. Create with [`ShardConsumer::new`], then
/// [`run`](ShardConsumer::run) it on its own task.
pub struct ShardConsumer {
    /// What every consumer of the worker shares: Kinesis, the lease table,
    /// the processor factory, settings and counters.
    context: Arc<ConsumerContext>,
    /// The shard, its stream, its lease token and deadline, and where
    /// processing starts.
    start: ShardStart,
    /// How the scheduler steers this consumer (run, shut down, lease lost).
    signals: watch::Receiver<ConsumerSignal>,
    /// Writes the shard's checkpoints to its lease; the tracker's writer.
    writer: Arc<LeaseCheckpointWriter<dyn LeaseStore>>,
    /// What has been delivered and checkpointed; hands out the
    /// checkpointers and validates what they are asked to store.
    tracker: CheckpointTracker,
    /// A processor was restarted: the lease is read again before the next
    /// one is initialized.
    resync: bool,
    /// The application's processor, created on first use and replaced
    /// after a panic.
    processor: Option<Box<dyn RecordProcessor>>,
    /// The task reading records ahead (polling or fan-out); `None` before
    /// initialization and while restarting from the checkpoint.
    fetcher: Option<FetcherTask>,
    /// The shards that follow this one, once its end is reached.
    child_shards: Vec<ChildShard>,
    /// Backoff after panics and failed initializations; reset by progress.
    failures: Backoff,
    /// Where reading begins while the checkpoint is still `LATEST` or
    /// `AT_TIMESTAMP`: recorded on the lease before the first read.
    start_timestamp: Option<SystemTime>,
}

impl ShardConsumer {
    /// A consumer for `start`, steered by `signals`.
    pub fn new(
        context: Arc<ConsumerContext>,
        start: ShardStart,
        signals: watch::Receiver<ConsumerSignal>,
    ) -> Self {
        let stored = kcl_checkpoint::CheckpointUpdate {
            checkpoint: start.checkpoint.clone(),
            pending_checkpoint: start.pending_checkpoint.clone(),
            pending_checkpoint_state: start.pending_checkpoint_state.clone(),
        };
        let writer = Arc::new(LeaseCheckpointWriter::new(
            Arc::clone(&context.store),
            start.token.clone(),
            stored.clone(),
            start.deadline.clone(),
        ));
        let tracker = CheckpointTracker::new(start.shard_id.clone(), writer.clone(), stored);
        let failures = unlimited(&context.retry_policy.backoff());
        let start_timestamp = start.start_timestamp;
        Self {
            context,
            start,
            signals,
            writer,
            tracker,
            resync: false,
            processor: None,
            fetcher: None,
            child_shards: Vec::new(),
            failures,
            start_timestamp,
        }
    }

    /// Runs the lifecycle to its end, in a `shard_consumer` span with the
    /// shard and worker ids.
    pub async fn run(self) -> ConsumerOutcome {
        let span = info_span!(
            "shard_consumer",
            stream = %self.start.stream.name,
            shard_id = %self.start.shard_id,
            worker_id = %self.context.worker_id
        );
        let (stats, stream, shard) = (
            Arc::clone(&self.context.stats),
            self.start.stream.name.clone(),
            self.start.shard_id.clone(),
        );
        stats.activity().started(&stream, &shard);
        let outcome = self.lifecycle().instrument(span).await;
        stats.activity().stopped(&stream, &shard);
        outcome
    }

    async fn lifecycle(mut self) -> ConsumerOutcome {
        info!(checkpoint = %self.start.checkpoint, "shard consumer starting");
        let mut state = ConsumerState::WaitingOnParents;
        loop {
            let event = match state {
                ConsumerState::WaitingOnParents => Some(self.wait_for_parents().await),
                ConsumerState::Initializing => Some(self.initialize().await),
                ConsumerState::Processing => self.process_next().await,
                ConsumerState::ShuttingDown(reason) => {
                    self.fetcher = None;
                    Some(self.shut_down(reason).await)
                }
                ConsumerState::Stopped(reason) => {
                    let checkpoint = self.tracker.progress().checkpoint;
                    info!(?reason, %checkpoint, "shard consumer stopped");
                    return ConsumerOutcome {
                        reason,
                        checkpoint,
                        child_shards: self.child_shards,
                        deadline_passed: self.start.deadline.was_found_passed(),
                    };
                }
            };
            let Some(event) = event else { continue };
            state = match state.on(event) {
                Ok(next) => next,
                Err(invalid) => {
                    // A bug in this driver; stop without checkpointing.
                    error!(%invalid, "stopping the shard consumer");
                    ConsumerState::ShuttingDown(ShutdownReason::LeaseLost)
                }
            };
            debug!(?event, ?state, "shard consumer transition");
        }
    }

    /// The signal now, marked as seen; `LeaseLost` once the processing
    /// deadline has passed.
    fn current_signal(&mut self) -> ConsumerSignal {
        if !self.start.deadline.is_open() {
            self.deadline_passed();
            return ConsumerSignal::LeaseLost;
        }
        *self.signals.borrow_and_update()
    }

    /// The event that stops the consumer, if [`current_signal`](Self::current_signal)
    /// says to stop.
    fn stop_requested(&mut self) -> Option<ConsumerEvent> {
        match self.current_signal() {
            ConsumerSignal::LeaseLost => Some(ConsumerEvent::LeaseLost),
            ConsumerSignal::ShutdownRequested => Some(ConsumerEvent::ShutdownRequested),
            ConsumerSignal::Run => None,
        }
    }

    fn deadline_passed(&self) {
        warn!("processing deadline passed (no confirmed heartbeat in time); stopping the shard");
    }

    /// Creates the processor if needed and initializes it, retrying with
    /// backoff; then starts the fetcher from the last checkpoint.
    async fn initialize(&mut self) -> ConsumerEvent {
        loop {
            if let Some(event) = self.stop_requested() {
                return event;
            }
            if let Some(event) = self.make_start_durable().await {
                return event;
            }
            if self.resync
                && let Some(event) = self.resync_with_lease().await
            {
                return event;
            }
            let progress = self.tracker.progress();
            let input = InitializationInput {
                stream_name: self.start.stream.name.clone(),
                shard_id: self.start.shard_id.clone(),
                checkpoint: progress.checkpoint.clone(),
                pending_checkpoint: progress.pending_checkpoint.clone(),
                pending_checkpoint_state: progress
                    .pending_checkpoint
                    .as_ref()
                    .and(progress.pending_checkpoint_state.clone()),
            };
            let factory = &self.context.factory;
            let processor = self.processor.get_or_insert_with(|| {
                factory.create_for_stream(&input.stream_name, &input.shard_id)
            });
            let (stream, shard) = (&self.start.stream.name, &self.start.shard_id);
            match self
                .context
                .call_processor(stream, shard, processor.initialize(input))
                .await
            {
                Ok(Ok(())) => {
                    self.start_fetcher(progress.checkpoint);
                    return ConsumerEvent::Initialized;
                }
                Ok(Err(error)) => {
                    self.context
                        .stats
                        .count_processor_retry(&self.start.stream.name, &self.start.shard_id);
                    warn!(%error, attempt = self.failures.attempts(), "processor failed to initialize; retrying");
                }
                Err(panic) => {
                    self.processor = None;
                    self.context.stats.count_processor_panic();
                    self.context
                        .stats
                        .count_processor_retry(&self.start.stream.name, &self.start.shard_id);
                    error!(panic = %panic, "processor panicked in initialize; starting a new one");
                }
            }
            if let Some(event) = self.pause_after_failure().await {
                return event;
            }
        }
    }

    /// Before a shard whose checkpoint is `LATEST` or `AT_TIMESTAMP` is read
    /// for the first time, records on the lease where reading begins (now,
    /// less [`LATEST_START_MARGIN`], or the configured timestamp), so that
    /// every later reader of the shard (after a panic, a restart, a
    /// handoff, a resubscription) begins there too and nothing written after
    /// this moment is skipped. Retried until it is stored.
    async fn make_start_durable(&mut self) -> Option<ConsumerEvent> {
        if self.start_timestamp.is_some() {
            return None;
        }
        let at = match self.tracker.progress().checkpoint {
            ExtendedSequenceNumber::Latest => SystemTime::now()
                .checked_sub(LATEST_START_MARGIN)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            // Without a configured timestamp it is read from TRIM_HORIZON,
            // which skips nothing.
            ExtendedSequenceNumber::AtTimestamp => self.start.stream.initial_timestamp()?,
            _ => return None,
        };
        loop {
            if let Some(event) = self.stop_requested() {
                return Some(event);
            }
            let recorded = tokio::select! {
                biased;
                () = must_stop(&mut self.signals, &self.start.deadline) => return Some(ConsumerEvent::LeaseLost),
                recorded = self.context.store.record_start_timestamp(&self.start.token, at) => recorded,
            };
            match recorded {
                Ok(stored) => {
                    info!(
                        from = ?stored,
                        "recorded where reading of this shard begins; later readers begin there too"
                    );
                    self.start_timestamp = Some(stored);
                    return None;
                }
                Err(error) if error.is_lease_lost() => return Some(ConsumerEvent::LeaseLost),
                Err(error) => {
                    warn!(%error, "could not record where reading begins; retrying before reading");
                    if let Some(event) = self.pause_after_failure().await {
                        return Some(event);
                    }
                }
            }
        }
    }

    fn start_fetcher(&mut self, after: ExtendedSequenceNumber) {
        let (sender, events) = mpsc::channel(8);
        let start = FetchStart {
            after,
            timestamp: self
                .start_timestamp
                .or(self.start.stream.initial_timestamp()),
        };
        let context = &self.context;
        let task = match self.start.stream.fanout_consumer.get() {
            Some(consumer_arn) => {
                let fetcher = FanoutFetcher {
                    kinesis: Arc::clone(&context.kinesis),
                    consumer_arn: consumer_arn.clone(),
                    stream: self.start.stream.name.clone(),
                    shard_id: self.start.shard_id.clone(),
                    config: context.retrieval.clone(),
                    backoff: context.kinesis_backoff.clone(),
                    stats: Arc::clone(&context.stats),
                    hash_key_range: self.start.hash_key_range,
                };
                tokio::spawn(fetcher.run(start, sender).in_current_span())
            }
            None => {
                let fetcher = PollingFetcher {
                    kinesis: Arc::clone(&context.kinesis),
                    stream: self.start.stream.name.clone(),
                    shard_id: self.start.shard_id.clone(),
                    config: context.retrieval.clone(),
                    backoff: context.kinesis_backoff.clone(),
                    stats: Arc::clone(&context.stats),
                    hash_key_range: self.start.hash_key_range,
                };
                tokio::spawn(fetcher.run(start, sender).in_current_span())
            }
        };
        self.fetcher = Some(FetcherTask {
            _handle: AbortOnDropHandle::new(task),
            events,
        });
    }

    /// Waits for the next batch or signal and handles it.
    async fn process_next(&mut self) -> Option<ConsumerEvent> {
        if let Some(event) = self.stop_requested() {
            return Some(event);
        }
        let Some(fetcher) = self.fetcher.as_mut() else {
            self.start_fetcher(self.tracker.progress().checkpoint);
            return None;
        };
        let event = tokio::select! {
            biased;
            () = self.start.deadline.passed() => {
                self.deadline_passed();
                return Some(ConsumerEvent::LeaseLost);
            }
            changed = self.signals.changed() => {
                if changed.is_err() {
                    // The scheduler is gone: nothing can steer this shard.
                    return Some(ConsumerEvent::LeaseLost);
                }
                return None;
            }
            event = fetcher.events.recv() => event,
        };
        match event {
            Some(ShardEvent::Records(batch)) => Some(self.deliver(batch).await),
            Some(ShardEvent::ShardEnd { child_shards }) => {
                info!(children = ?child_shards.iter().map(|c| &c.shard_id).collect::<Vec<_>>(), "shard end reached");
                self.child_shards = child_shards;
                Some(ConsumerEvent::ShardEndReached)
            }
            None => {
                error!("record fetcher stopped unexpectedly; restarting from the last checkpoint");
                self.tracker.rewind_to_checkpoint();
                self.start_fetcher(self.tracker.progress().checkpoint);
                None
            }
        }
    }

    /// Hands a batch to the processor until it succeeds (or the retry
    /// policy skips it).
    async fn deliver(&mut self, batch: Batch) -> ConsumerEvent {
        let Batch {
            records,
            millis_behind_latest,
            permit: _permit,
        } = batch;
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return ConsumerEvent::BatchDone;
        };
        let (first, last) = (first.position(), last.position());
        let previous = self.tracker.progress().last_delivered;
        let mut retries = Backoff::new(self.context.retry_policy.backoff());
        loop {
            let Some(processor) = self.processor.as_mut() else {
                return ConsumerEvent::ProcessorRestarted;
            };
            self.tracker.delivered(last.clone());
            let input = ProcessRecordsInput {
                stream_name: self.start.stream.name.clone(),
                records: records.clone(),
                millis_behind_latest,
                checkpointer: self.tracker.checkpointer(),
            };
            let began = tokio::time::Instant::now();
            if !self.start.deadline.is_open() {
                self.deadline_passed();
                return ConsumerEvent::LeaseLost;
            }
            let outcome = tokio::select! {
                biased;
                () = must_stop(&mut self.signals, &self.start.deadline) => return ConsumerEvent::LeaseLost,
                outcome = self.context.call_processor(
                    &self.start.stream.name,
                    &self.start.shard_id,
                    processor.process_records(input),
                ) => outcome,
            };
            self.context.stats.record_batch_time(
                &self.start.stream.name,
                &self.start.shard_id,
                began.elapsed(),
                millis_behind_latest,
            );
            if self.tracker.progress().lease_lost {
                return ConsumerEvent::LeaseLost;
            }
            match outcome {
                Ok(Ok(())) => {
                    let bytes = records.iter().map(crate::Record::size).sum();
                    self.context.stats.count_batch(
                        &self.start.stream.name,
                        &self.start.shard_id,
                        records.len(),
                        bytes,
                    );
                    self.failures = unlimited(&self.context.retry_policy.backoff());
                    return ConsumerEvent::BatchDone;
                }
                Ok(Err(error)) => {
                    self.tracker.retract_delivery(previous.clone());
                    let Some(delay) = retries.next_delay() else {
                        if let ProcessorRetryPolicy::DeadLetterAfter { destination, .. } =
                            &self.context.retry_policy
                        {
                            let destination = destination.clone();
                            if let Some(event) = self.dead_letter(&destination, &records).await {
                                return event;
                            }
                            self.context.stats.count_batch_dead_lettered(records.len());
                            error!(
                                %error, %first, %last, records = records.len(), attempts = retries.attempts(),
                                dead_letter_stream = destination.stream(),
                                "processor kept failing; the batch's records are in the dead-letter stream and processing moves past them"
                            );
                            self.tracker.delivered(last);
                            return ConsumerEvent::BatchDone;
                        }
                        self.context.stats.count_batch_skipped();
                        error!(
                            %error, %first, %last, records = records.len(), attempts = retries.attempts(),
                            "processor kept failing; SKIPPING the batch as the retry policy says (its records are lost)"
                        );
                        self.tracker.delivered(last);
                        return ConsumerEvent::BatchDone;
                    };
                    self.context
                        .stats
                        .count_processor_retry(&self.start.stream.name, &self.start.shard_id);
                    warn!(%error, %first, %last, attempt = retries.attempts(), ?delay, "processor failed a batch; delivering it again");
                    if let Some(event) = self.pause(delay).await {
                        return event;
                    }
                }
                Err(panic) => {
                    self.context.stats.count_processor_panic();
                    self.context
                        .stats
                        .count_processor_retry(&self.start.stream.name, &self.start.shard_id);
                    error!(panic = %panic, %first, %last, "processor panicked; restarting from the last checkpoint");
                    self.restart_from_checkpoint();
                    if let Some(event) = self.pause_after_failure().await {
                        return event;
                    }
                    return ConsumerEvent::ProcessorRestarted;
                }
            }
        }
    }

    /// Writes a batch's records to the dead-letter stream, sending the
    /// ones that failed again after a backoff until every one is written.
    /// Returns an event if the consumer must stop first (lease lost,
    /// deadline passed or shutdown requested): the batch then stays
    /// unprocessed, for the next owner.
    async fn dead_letter(
        &mut self,
        destination: &DeadLetter,
        records: &[crate::Record],
    ) -> Option<ConsumerEvent> {
        let mut pending: Vec<&crate::Record> = records.iter().collect();
        let mut retries = unlimited(&self.context.retry_policy.backoff());
        loop {
            // A stop leaves the batch unprocessed (and not checkpointed):
            // its next owner delivers it again.
            let outcomes = tokio::select! {
                biased;
                () = self.start.deadline.passed() => return Some(ConsumerEvent::LeaseLost),
                event = stop_signal(&mut self.signals) => return Some(event),
                outcomes = destination.write(&pending) => outcomes,
            };
            let (failed, errors): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .zip(outcomes)
                .filter_map(|(record, outcome)| outcome.err().map(|error| (record, error)))
                .unzip();
            let Some(error) = errors.last() else {
                // Every record is in the dead-letter stream.
                return None;
            };
            let delay = retries.next_delay().unwrap_or(Duration::from_secs(30));
            error!(
                %error, records = failed.len(), dead_letter_stream = destination.stream(), ?delay,
                "could not write records to the dead-letter stream; the batch is held until they are written"
            );
            pending = failed;
            if let Some(event) = self.pause(delay).await {
                return Some(event);
            }
        }
    }

    /// Drops the processor and the fetcher; the next ones start after the
    /// checkpoint stored (read again before the new processor starts).
    fn restart_from_checkpoint(&mut self) {
        self.replace_processor();
        self.fetcher = None;
        self.tracker.rewind_to_checkpoint();
    }

    /// Drops the processor after a panic. Checkpointers it handed to tasks
    /// of its own write nothing more, and the lease is read again before
    /// the next processor starts.
    fn replace_processor(&mut self) {
        self.processor = None;
        self.tracker.retire_checkpointers();
        self.resync = true;
    }

    /// Reads the lease again before a restarted processor starts: a write
    /// whose answer was lost may have stored a later checkpoint, or another
    /// pending checkpoint and state, than the tracker knows, and the new
    /// processor resumes from what is stored. A write of the old processor
    /// still under way is waited for first, so the read sees it. Retried
    /// until read.
    async fn resync_with_lease(&mut self) -> Option<ConsumerEvent> {
        tokio::select! {
            biased;
            () = must_stop(&mut self.signals, &self.start.deadline) => return Some(ConsumerEvent::LeaseLost),
            () = self.tracker.settled() => {}
        }
        loop {
            let read = tokio::select! {
                biased;
                () = must_stop(&mut self.signals, &self.start.deadline) => return Some(ConsumerEvent::LeaseLost),
                read = self.context.store.get_lease(&self.start.token.key) => read,
            };
            match read {
                Ok(Some(lease)) if lease.is_held_by(&self.start.token) => {
                    let stored = lease.stored_checkpoint();
                    self.writer.resume_from(stored.clone());
                    self.tracker.resume_from(stored);
                    self.resync = false;
                    return None;
                }
                Ok(_) => return Some(ConsumerEvent::LeaseLost),
                Err(error) => {
                    warn!(%error, "could not read the lease again for the restarted processor; retrying");
                    if let Some(event) = self.pause_after_failure().await {
                        return Some(event);
                    }
                }
            }
        }
    }

    /// Tells the processor why it stops.
    async fn shut_down(&mut self, reason: ShutdownReason) -> ConsumerEvent {
        match reason {
            ShutdownReason::LeaseLost => {
                if let Some(processor) = self.processor.as_mut()
                    && let Err(panic) = guarded(processor.lease_lost()).await
                {
                    error!(panic = %panic, "processor panicked in lease_lost");
                }
                ConsumerEvent::ShutdownDone
            }
            ShutdownReason::Requested => {
                let checkpointer = self.tracker.checkpointer();
                if let Some(processor) = self.processor.as_mut() {
                    let outcome = tokio::select! {
                        biased;
                        () = must_stop(&mut self.signals, &self.start.deadline) => return ConsumerEvent::LeaseLost,
                        outcome = guarded(processor.shutdown_requested(checkpointer)) => outcome,
                    };
                    match outcome {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => warn!(%error, "processor failed in shutdown_requested"),
                        Err(panic) => {
                            error!(panic = %panic, "processor panicked in shutdown_requested")
                        }
                    }
                }
                ConsumerEvent::ShutdownDone
            }
            ShutdownReason::ShardEnd => match self.finish_shard().await {
                ConsumerEvent::ShutdownRequested => {
                    // Stop trying: the lease is released without SHARD_END,
                    // and its next owner reaches the shard end again.
                    warn!("shutdown requested before the shard end was checkpointed");
                    ConsumerEvent::ShutdownDone
                }
                event => event,
            },
        }
    }

    /// Sleeps the next failure backoff, unless a signal comes first.
    async fn pause_after_failure(&mut self) -> Option<ConsumerEvent> {
        let delay = self
            .failures
            .next_delay()
            .unwrap_or(Duration::from_secs(30));
        self.pause(delay).await
    }

    /// Sleeps `delay`, unless the lease is lost, the deadline passes or a
    /// shutdown is requested first.
    async fn pause(&mut self, delay: Duration) -> Option<ConsumerEvent> {
        tokio::select! {
            biased;
            () = self.start.deadline.passed() => Some(ConsumerEvent::LeaseLost),
            event = stop_signal(&mut self.signals) => Some(event),
            () = tokio::time::sleep(delay) => None,
        }
    }
}

/// A backoff that never runs out (for restarts, which never give up).
fn unlimited(config: &BackoffConfig) -> Backoff {
    Backoff::new(config.clone().without_limit())
}

/// Resolves once the processor must be stopped at once: the processing
/// deadline has passed (checked first, against the clock, on every poll),
/// or the lease is lost (or the scheduler is gone).
async fn must_stop(signals: &mut watch::Receiver<ConsumerSignal>, deadline: &ProcessingDeadline) {
    tokio::select! {
        biased;
        () = deadline.passed() => warn!(
            "processing deadline passed (no confirmed heartbeat in time); dropping the call in flight"
        ),
        _ = signals.wait_for(|s| *s == ConsumerSignal::LeaseLost) => {}
    }
}

/// Resolves with the event once the consumer is told to stop: the lease is
/// lost (or the scheduler is gone), or a shutdown is requested.
async fn stop_signal(signals: &mut watch::Receiver<ConsumerSignal>) -> ConsumerEvent {
    match signals.wait_for(|s| *s != ConsumerSignal::Run).await {
        Ok(signal) if *signal == ConsumerSignal::ShutdownRequested => {
            ConsumerEvent::ShutdownRequested
        }
        _ => ConsumerEvent::LeaseLost,
    }
}

/// A processor call ran past `processor_timeout` and was cancelled.
#[derive(Debug, thiserror::Error)]
#[error(
    "the processor call ran past processor_timeout ({limit:?}) and was cancelled; it is handled \
     as a failure"
)]
pub struct ProcessorTimedOut {
    /// The timeout.
    pub limit: Duration,
}

impl ConsumerContext {
    /// Runs a processor call on `shard` of `stream`: a panic is caught as
    /// its message, and past [`processor_timeout`](Self::processor_timeout)
    /// the call is cancelled (dropped), counted, and returned as a
    /// [`ProcessorTimedOut`] error, which the caller handles like any
    /// processor error.
    async fn call_processor(
        &self,
        stream: &str,
        shard: &str,
        call: impl Future<Output = Result<(), ProcessorError>>,
    ) -> Result<Result<(), ProcessorError>, String> {
        let activity = self.stats.activity();
        activity.call_began(stream, shard);
        let caught = guarded(call);
        let outcome = match self.processor_timeout {
            None => caught.await,
            Some(limit) => match tokio::time::timeout(limit, caught).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.stats.count_processor_timeout(stream, shard);
                    let timed_out: ProcessorError = Box::new(ProcessorTimedOut { limit });
                    Ok(Err(timed_out))
                }
            },
        };
        activity.call_ended(stream, shard);
        outcome
    }
}

/// Runs a processor call, catching a panic as its message.
async fn guarded<T>(call: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .map_err(panic_message)
}

fn panic_message(panic: Box<dyn Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests;
