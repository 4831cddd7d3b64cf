//! The scheduler: one per worker process. It runs the lease coordinator and
//! shard discovery, and keeps exactly one [`ShardConsumer`] running for each
//! lease the worker holds:
//!
//! - a lease newly held gets a consumer, started from the checkpoint read
//!   fresh from the table;
//! - a lease lost (to a failover, or after this worker lost its liveness)
//!   stops its consumer at once;
//! - a handoff request stops the consumer after its batch in flight, lets
//!   the processor checkpoint, then releases the lease to the asking worker;
//! - a shard read to its end and checkpointed at `SHARD_END` is done.
//!
//! [`ShutdownHandle::shutdown`] stops the worker cleanly: it takes no more
//! leases, every consumer finishes its batch and checkpoints, the leases are
//! released, and the worker's heartbeat is removed, all within the
//! configured shutdown timeout.
//!
//! Nothing in the scheduler's loop waits on the lease table: shard
//! discovery and lease cleanup run on a task of their own,
//! releases run as tasks, and each consumer checks the worker's processing
//! deadline itself. A table that stalls delays those tasks, never the
//! moment a consumer stops.

mod config;
mod maintenance;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::{Backoff, retry_with_backoff};
use kcl_lease::{
    CoordinatorHandle, HeldLease, LeaseConfigError, LeaseCoordinator, LeaseScope, LeaseStore,
    LeaseStoreError, LeaseToken, ProcessingDeadline, StreamIdentifier,
};
use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, error, info, info_span, warn};

pub use config::{ConfigError, InitialPosition, RetrievalMode, SchedulerBuilder, SchedulerConfig};

use crate::RecordProcessorFactory;
use crate::consumer::{
    ConsumerContext, ConsumerOutcome, ConsumerSignal, ShardConsumer, ShardStart, ShutdownReason,
};
use crate::kinesis::{Kinesis, KinesisError};
use crate::lease_cleanup::LeaseCleaner;
use crate::streams::{ConsumedStream, ConsumedStreams, StreamsConfig};
use crate::telemetry::Health;
use crate::telemetry::WorkerStats;

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The lease table could not be created or read.
    #[error("lease table: {0}")]
    LeaseTable(LeaseStoreError),
    /// The stream does not exist or may not be read: check the stream name,
    /// the region and the IAM policy.
    #[error("stream {stream}: {source}")]
    Stream {
        /// The stream.
        stream: String,
        /// What Kinesis said.
        source: KinesisError,
    },
    /// The lease coordinator stopped on its own.
    #[error("lease coordinator stopped: {0}")]
    Coordinator(String),
    /// The lease table belongs to an application of another kind (a Java
    /// KCL multi-stream application): nothing was written to it. Give this
    /// application a table of its own (its application name).
    #[error(
        "lease table {table} holds {count} item(s) of a multi-stream application (for example \
         {example}); this worker consumes one stream and writes nothing to it. Use another \
         application name, or stop the application that owns the table first and migrate it"
    )]
    MultiStreamTable {
        /// The lease table.
        table: String,
        /// How many items of a multi-stream application it holds (leases
        /// and stream information).
        count: usize,
        /// One of their keys.
        example: String,
    },
    /// The lease table holds unfinished leases of a consumed stream's name
    /// under another identifier: nothing was written to it.
    #[error(
        "lease table {table} holds {count} unfinished lease(s) of stream {name} as {found}, while \
         it is consumed as {consumed_as}. If those leases are this stream's (a Java application that \
         chose its own creation epoch), name the stream as {found} (StreamConfig::with_identifier, \
         or --stream-name {found}); if the stream was deleted and created again, the leases are \
         the old stream's: delete them from the table to start the new one"
    )]
    StreamEpochMismatch {
        /// The lease table.
        table: String,
        /// The stream's name.
        name: String,
        /// The stream as this worker identifies it (`account:stream:epoch`).
        consumed_as: String,
        /// The identifier the table's leases carry.
        found: String,
        /// How many unfinished leases carry it.
        count: usize,
    },
    /// A consumed stream was deleted and created again while the worker
    /// ran (Kinesis describes it with another creation time): the worker
    /// stopped, handing its shards over. Its leases of the old stream stay
    /// for the operator to delete (see [`StreamEpochMismatch`](Self::StreamEpochMismatch)).
    #[error(
        "stream {stream} was deleted and created again ({was} is now {now}); the worker stopped \
         so as not to read the new stream with the old one's checkpoints"
    )]
    StreamRecreated {
        /// The stream's name.
        stream: String,
        /// How it was identified at start (`account:stream:epoch`).
        was: String,
        /// How Kinesis identifies it now.
        now: String,
    },
    /// A multi-stream application was started on the lease table of an
    /// application of one stream: nothing was written to it.
    #[error(
        "lease table {table} holds {count} lease(s) of an application of one stream (for example \
         {example}); this multi-stream application writes nothing to it. Use another application \
         name, or consume that one stream with stream_name"
    )]
    SingleStreamTable {
        /// The lease table.
        table: String,
        /// How many leases keyed by shard id it holds.
        count: usize,
        /// One of their keys.
        example: String,
    },
}

/// Stops a running [`Scheduler`] cleanly. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Asks the scheduler to hand its shards over and stop; `run` returns
    /// when it has.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

/// A worker: see the module documentation.
pub struct Scheduler {
    /// The validated settings.
    config: SchedulerConfig,
    /// What every shard consumer shares (and the worker's counters).
    context: Arc<ConsumerContext>,
    /// The lease coordinator, run on a task of its own by `run`.
    coordinator: LeaseCoordinator<dyn LeaseStore>,
    /// The coordinator's handle: held leases, deadlines, releases.
    handle: CoordinatorHandle<dyn LeaseStore>,
    /// Set to stop the worker cleanly (see [`ShutdownHandle`]).
    shutdown: CancellationToken,
    /// Liveness and readiness, for the probes.
    health: Arc<Health>,
}

/// A running consumer, as the scheduler tracks it.
struct Running {
    /// The lease it processes.
    token: LeaseToken,
    /// The stream of the lease.
    stream: String,
    /// How the scheduler steers it.
    signal: watch::Sender<ConsumerSignal>,
}

/// What a consumer task returns.
type Finished = (LeaseToken, ConsumerOutcome);

impl Scheduler {
    /// A builder; see [`SchedulerBuilder`].
    pub fn builder() -> SchedulerBuilder {
        SchedulerBuilder::default()
    }

    fn new(
        config: SchedulerConfig,
        kinesis: Arc<dyn Kinesis>,
        store: Arc<dyn LeaseStore>,
        factory: Arc<dyn RecordProcessorFactory>,
    ) -> Result<Self, LeaseConfigError> {
        let mut lease_config = config.lease.clone();
        if config.streams.is_multi_stream() {
            // No lease until the streams' identifiers are known (at run).
            lease_config.scope = LeaseScope::MultiStream(Default::default());
        }
        let (coordinator, handle) = LeaseCoordinator::new(Arc::clone(&store), lease_config)?;
        let context = Arc::new(ConsumerContext {
            worker_id: config.lease.worker_id.clone(),
            kinesis,
            store,
            factory,
            retrieval: config.retrieval.clone(),
            retry_policy: config.retry_policy.clone(),
            kinesis_backoff: config.kinesis_backoff.clone(),
            parent_poll_interval: config.parent_poll_interval,
            stats: Arc::default(),
            shard_ends: tokio::sync::watch::channel(0).0,
        });
        let health = Arc::new(Health::new(STALL_AFTER, config.lease.failover_time));
        Ok(Self {
            config,
            context,
            coordinator,
            handle,
            shutdown: CancellationToken::new(),
            health,
        })
    }

    /// The validated settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.config.lease.worker_id
    }

    /// Stops this scheduler cleanly when asked.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// The worker's counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.context.stats)
    }

    /// Liveness and readiness, for probes (served over HTTP by
    /// `telemetry::TelemetryServer`, feature `metrics-server`).
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// The leases this worker processes, updated as they change.
    pub fn held_leases(&self) -> watch::Receiver<BTreeMap<String, HeldLease>> {
        self.handle.held()
    }

    /// Runs the worker until [`ShutdownHandle::shutdown`] is called (then
    /// returns `Ok` after a clean stop), or fails at start if the lease
    /// table or the stream cannot be used.
    ///
    /// Dropping the future stops everything at once without releasing
    /// anything, as a crash would: other workers take the leases after the
    /// failover time.
    pub async fn run(self) -> Result<(), SchedulerError> {
        let span = info_span!("worker", worker_id = %self.config.lease.worker_id);
        self.run_inner().instrument(span).await
    }

    async fn run_inner(self) -> Result<(), SchedulerError> {
        let Self {
            config,
            context,
            mut coordinator,
            handle,
            shutdown,
            health,
        } = self;
        info!(
            application = %config.application_name,
            streams = ?config.streams.names(),
            "worker starting"
        );
        let streams = tokio::select! {
            // Stopped while starting: nothing is held yet.
            () = shutdown.cancelled() => return Ok(()),
            streams = resolve_streams(&config, &*context.kinesis) => streams?,
        };
        refuse_a_table_of_another_kind(
            &*context.store,
            &config.application_name,
            config.streams.is_multi_stream(),
            &streams,
        )
        .await?;
        context
            .store
            .ensure_tables()
            .await
            .map_err(SchedulerError::LeaseTable)?;
        let identifiers: BTreeSet<StreamIdentifier> = streams
            .iter()
            .filter_map(|stream| stream.identifier.clone())
            .collect();
        if config.streams.is_multi_stream() {
            coordinator.set_scope(LeaseScope::MultiStream(identifiers));
            // Announce the streams before creating any lease of them, so
            // that no worker of another list takes a new stream for a
            // former one.
            if let Err(error) = coordinator.heartbeat(kcl_lease::deadline::now).await {
                warn!(%error, "could not write the first heartbeat; the coordinator retries");
            }
        }
        maintenance::discover(&context, &streams, true).await?;

        if let RetrievalMode::FanOut { consumer_name } = &config.retrieval_mode {
            let name = consumer_name.as_deref().unwrap_or(&config.application_name);
            for stream in streams.iter() {
                let registering = crate::retrieval::fanout::register_consumer(
                    &*context.kinesis,
                    &stream.name,
                    name,
                    &context.kinesis_backoff,
                );
                let arn = tokio::select! {
                    // Stopped while registering: nothing is held yet.
                    () = shutdown.cancelled() => return Ok(()),
                    registered = registering => registered.map_err(|source| SchedulerError::Stream {
                        stream: stream.name.clone(),
                        source,
                    })?,
                };
                info!(stream = %stream.name, consumer = %name, %arn, "reading through enhanced fan-out");
                let _ = stream.fanout_consumer.set(arn);
            }
        }

        let stop_coordinator = CancellationToken::new();
        let coordinator_stop = stop_coordinator.clone();
        let mut tasks = WorkerTasks {
            context: Arc::clone(&context),
            streams: Arc::clone(&streams),
            handle: handle.clone(),
            consumers: JoinSet::new(),
            releases: JoinSet::new(),
            running: HashMap::new(),
            task_keys: HashMap::new(),
            finished: HashSet::new(),
            lost: HashSet::new(),
            stopped_at_deadline: HashSet::new(),
            releasing: HashSet::new(),
            release_failures: HashMap::new(),
            abandoned: HashSet::new(),
        };
        // Aborted if this future is dropped, like everything else the worker
        // runs: a dropped worker must look crashed to the fleet, not stopped.
        let mut coordinator_task = AbortOnDropHandle::new(tokio::spawn(
            coordinator
                .run(async move { coordinator_stop.cancelled().await })
                .in_current_span(),
        ));
        let mut maintenance_task = AbortOnDropHandle::new(tokio::spawn(
            maintenance::run(
                Arc::clone(&context),
                Arc::clone(&streams),
                config.shard_sync_interval,
                LeaseCleaner::new(
                    config.lease_cleanup_delay,
                    config.former_stream_cleanup_delay,
                ),
            )
            .in_current_span(),
        ));
        health.started(std::time::Instant::now());
        let mut ticks = tokio::time::interval(HEALTH_TICK);
        let mut held = handle.held();
        let result = loop {
            let snapshot = held.borrow_and_update().clone();
            tasks.reconcile(&snapshot);
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                _ = ticks.tick() => {
                    health.tick(std::time::Instant::now());
                    if let Some(at) = handle.last_heartbeat() {
                        health.table_ok(at);
                    }
                    health.foreign_owners(handle.foreign_owners().into_keys().collect());
                }
                changed = held.changed() => {
                    if changed.is_err() {
                        break Err(SchedulerError::Coordinator("stopped publishing leases".into()));
                    }
                }
                Some(joined) = tasks.consumers.join_next_with_id() => tasks.finished(joined),
                Some(released) = tasks.releases.join_next() => tasks.released(released),
                ended = &mut maintenance_task => {
                    let error = match ended {
                        Ok(error) => error,
                        Err(error) => SchedulerError::Coordinator(format!("shard discovery task failed: {error}")),
                    };
                    if let SchedulerError::StreamRecreated { stream, .. } = &error {
                        tasks.abandon(stream);
                    }
                    break Err(error);
                }
                ended = &mut coordinator_task => {
                    let why = match ended {
                        Ok(Ok(())) => "ended".to_owned(),
                        Ok(Err(error)) => error.to_string(),
                        Err(error) => error.to_string(),
                    };
                    break Err(SchedulerError::Coordinator(why));
                }
            }
        };

        info!("worker stopping: handing over its shards");
        drop(maintenance_task);
        health.stopping();
        handle.stop_taking();
        tasks.drain(&mut held, config.shutdown_timeout).await;
        stop_coordinator.cancel();
        if !coordinator_task.is_finished() {
            match (&mut coordinator_task).await {
                Ok(Err(error)) => warn!(%error, "could not remove the worker's heartbeat"),
                Err(error) => warn!(%error, "lease coordinator task failed"),
                Ok(Ok(())) => {}
            }
        }
        info!(stats = ?context.stats.snapshot(), "worker stopped");
        result
    }
}

/// The consumer tasks of a worker and what is known about them.
struct WorkerTasks {
    /// What every consumer shares.
    context: Arc<ConsumerContext>,
    /// The streams this worker consumes.
    streams: Arc<ConsumedStreams>,
    /// The coordinator's handle: held leases, deadlines, releases.
    handle: CoordinatorHandle<dyn LeaseStore>,
    /// One task per running consumer; each returns its lease and outcome.
    consumers: JoinSet<Finished>,
    /// Releases under way; each returns the lease and whether the release
    /// failed (a failed one waits before it returns, so that the next
    /// attempt comes later and later).
    releases: JoinSet<(LeaseToken, bool)>,
    /// The running consumers, by lease key.
    running: HashMap<String, Running>,
    /// Which lease each consumer task works on.
    task_keys: HashMap<Id, String>,
    /// Leases this worker read to their end and checkpointed at `SHARD_END`.
    finished: HashSet<LeaseToken>,
    /// Leases whose consumer stopped because the lease was lost: not
    /// started again until the coordinator publishes them with another
    /// token, so a stale snapshot never starts a consumer that can only find
    /// its lease gone.
    lost: HashSet<LeaseToken>,
    /// Leases whose consumer stopped because the processing deadline
    /// passed: handled again (started, or released on request) only once
    /// the deadline of their epoch is open again (a heartbeat confirmed in
    /// time after all); otherwise the epoch ends and they are taken anew.
    stopped_at_deadline: HashSet<LeaseToken>,
    /// Leases with a release under way.
    releasing: HashSet<LeaseToken>,
    /// Releases that failed in a row, by lease.
    release_failures: HashMap<LeaseToken, u32>,
    /// Streams whose leases this worker no longer processes, checkpoints or
    /// releases (a stream created anew under its name: its old checkpoints
    /// must not be carried into the new stream by a handoff).
    abandoned: HashSet<String>,
}

impl WorkerTasks {
    /// Starts, stops and signals consumers so they match `held`, and
    /// releases what must be released. Never waits on the lease table.
    fn reconcile(&mut self, held: &BTreeMap<String, HeldLease>) {
        let active = held.values().filter(|h| !h.lease.is_finished()).count();
        metrics::gauge!(crate::telemetry::metrics::LEASES_HELD).set(active as f64);
        // Forget leases once they are gone (cleaned up, lost, released).
        let still = |token: &LeaseToken| held.get(&token.key).is_some_and(|h| h.token == *token);
        self.finished.retain(still);
        self.lost.retain(still);
        self.release_failures.retain(|token, _| still(token));
        let reopened = |token: &LeaseToken| {
            held.get(&token.key)
                .is_some_and(|h| self.handle.deadline(h.epoch).is_open())
        };
        self.stopped_at_deadline
            .retain(|token| still(token) && !reopened(token));
        for (key, running) in &self.running {
            let still_held = held.get(key).is_some_and(|h| h.token == running.token);
            if !still_held {
                running.signal.send_replace(ConsumerSignal::LeaseLost);
            } else if held[key].handoff_requested {
                running.signal.send_if_modified(|signal| {
                    let ask = *signal == ConsumerSignal::Run;
                    if ask {
                        info!(lease = %key, "handoff requested; stopping after the batch in flight");
                        *signal = ConsumerSignal::ShutdownRequested;
                    }
                    ask
                });
            }
        }
        let draining = self.handle.is_draining();
        for (key, lease) in held {
            if self.running.contains_key(key)
                || lease.lease.is_finished()
                || self.finished.contains(&lease.token)
                || self.lost.contains(&lease.token)
                || self.stopped_at_deadline.contains(&lease.token)
                || self.releasing.contains(&lease.token)
                || self.is_abandoned(&lease.lease)
            {
                continue;
            }
            if lease.handoff_requested || draining {
                // Nothing processed here since the last checkpoint: give it
                // up straight away.
                self.release(lease.token.clone());
                continue;
            }
            self.start(lease);
        }
    }

    /// Stops the consumers of `stream` at once, as if their leases were
    /// lost (no checkpoint, no handoff): the leases stay with this worker
    /// until it stops, then expire.
    fn abandon(&mut self, stream: &str) {
        warn!(
            stream,
            "stopping the stream's shards without checkpointing or handing them over"
        );
        self.abandoned.insert(stream.to_owned());
        for running in self.running.values() {
            if running.stream == stream {
                running.signal.send_replace(ConsumerSignal::LeaseLost);
            }
        }
    }

    /// Whether `lease` belongs to a stream this worker abandoned.
    fn is_abandoned(&self, lease: &kcl_lease::Lease) -> bool {
        !self.abandoned.is_empty()
            && self
                .streams
                .of(lease)
                .is_some_and(|stream| self.abandoned.contains(&stream.name))
    }

    fn start(&mut self, held: &HeldLease) {
        let (signal, signals) = watch::channel(ConsumerSignal::Run);
        let context = Arc::clone(&self.context);
        let Some(stream) = self.streams.of(&held.lease).cloned() else {
            // Never published: the coordinator holds leases of the
            // worker's streams only.
            error!(lease = %held.token.key, "a held lease of a stream this worker does not consume; not processed");
            return;
        };
        let stream_name = stream.name.clone();
        let token = held.token.clone();
        let deadline = self.handle.deadline(held.epoch);
        let task_token = token.clone();
        let task = async move {
            let outcome =
                start_consumer(context, stream, task_token.clone(), deadline, signals).await;
            (task_token, outcome)
        };
        let abort = self.consumers.spawn(task.in_current_span());
        self.task_keys.insert(abort.id(), token.key.clone());
        self.running.insert(
            token.key.clone(),
            Running {
                token,
                stream: stream_name,
                signal,
            },
        );
    }

    /// Handles a consumer that ended.
    fn finished(&mut self, joined: Result<(Id, Finished), JoinError>) {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(error) => error.id(),
        };
        let Some(key) = self.task_keys.remove(&id) else {
            return;
        };
        self.running.remove(&key);
        match joined {
            Ok((_, (token, outcome))) => match outcome.reason {
                ShutdownReason::ShardEnd
                    if outcome.checkpoint == kcl_checkpoint::ExtendedSequenceNumber::ShardEnd =>
                {
                    info!(lease = %key, "shard finished");
                    self.finished.insert(token);
                }
                ShutdownReason::ShardEnd | ShutdownReason::Requested => self.release(token),
                ShutdownReason::LeaseLost if outcome.deadline_passed => {
                    self.stopped_at_deadline.insert(token);
                }
                ShutdownReason::LeaseLost => {
                    self.lost.insert(token);
                }
            },
            Err(error) => {
                error!(lease = %key, %error, "shard consumer task failed; it restarts if the lease is still held");
            }
        }
    }

    /// Starts releasing `token`'s lease on a task of its own.
    fn release(&mut self, token: LeaseToken) {
        if !self.releasing.insert(token.clone()) {
            return;
        }
        let handle = self.handle.clone();
        let stats = Arc::clone(&self.context.stats);
        let failures = self.release_failures.get(&token).copied().unwrap_or(0);
        let task = async move {
            match handle.release(&token).await {
                Ok(()) => {
                    stats.count_lease_released();
                    info!(lease = %token.key, "lease released");
                    (token, false)
                }
                Err(error) if error.is_lease_lost() => (token, false),
                Err(error) => {
                    let delay = release_retry_delay(failures);
                    warn!(lease = %token.key, %error, ?delay, "could not release the lease; trying again later (it expires after the failover time if this worker stops first)");
                    tokio::time::sleep(delay).await;
                    (token, true)
                }
            }
        };
        self.releases.spawn(task.in_current_span());
    }

    /// Handles a release that ended (done or not: a lease still held after
    /// a failed release is processed or released again by `reconcile`).
    fn released(&mut self, joined: Result<(LeaseToken, bool), JoinError>) {
        match joined {
            Ok((token, failed)) => {
                self.releasing.remove(&token);
                if failed {
                    *self.release_failures.entry(token).or_default() += 1;
                } else {
                    self.release_failures.remove(&token);
                }
            }
            Err(error) => {
                error!(%error, "a lease release task failed");
                self.releasing.clear();
            }
        }
    }

    /// Hands every shard over and stops, within `timeout`:
    /// - while other live workers can receive them, leases are handed over
    ///   as those workers ask (they see this worker draining at their next
    ///   round): the consumer finishes its batch, the processor
    ///   checkpoints, the lease is released to the asking worker, which
    ///   starts within its handoff poll interval;
    /// - with no one to receive them, or [`RELEASE_RESERVE`] before the
    ///   timeout, the remaining consumers checkpoint and their leases are
    ///   released for anyone to take;
    /// - at the timeout, consumers still running are told their lease is
    ///   lost and stopped (their leases expire after the failover time).
    async fn drain(
        &mut self,
        held: &mut watch::Receiver<BTreeMap<String, HeldLease>>,
        timeout: Duration,
    ) {
        let started = tokio::time::Instant::now();
        let hard_deadline = started + timeout;
        let release_deadline = started + timeout.saturating_sub(RELEASE_RESERVE.min(timeout / 2));
        let mut releasing_all = false;
        loop {
            let snapshot = held.borrow_and_update().clone();
            self.reconcile(&snapshot);
            if self.consumers.is_empty() && self.releases.is_empty() {
                return;
            }
            let no_receivers = self.handle.receivers() == 0;
            if !releasing_all && (no_receivers || tokio::time::Instant::now() >= release_deadline) {
                releasing_all = true;
                info!(
                    remaining = self.running.len(),
                    no_receivers, "checkpointing and releasing the remaining shards"
                );
                for running in self.running.values() {
                    running.signal.send_if_modified(|signal| {
                        let ask = *signal == ConsumerSignal::Run;
                        if ask {
                            *signal = ConsumerSignal::ShutdownRequested;
                        }
                        ask
                    });
                }
            }
            tokio::select! {
                changed = held.changed() => {
                    if changed.is_err() {
                        releasing_all = true;
                    }
                }
                Some(joined) = self.consumers.join_next_with_id() => self.finished(joined),
                Some(released) = self.releases.join_next() => self.released(released),
                () = tokio::time::sleep_until(release_deadline), if !releasing_all => {}
                // Receivers may go away (stopping too) without anything
                // else changing here: look again.
                () = tokio::time::sleep(RECEIVERS_CHECK), if !releasing_all => {}
                () = tokio::time::sleep_until(hard_deadline) => {
                    warn!(
                        remaining = self.consumers.len(),
                        releases = self.releases.len(),
                        "shutdown timeout reached; stopping the remaining shards without checkpointing"
                    );
                    for running in self.running.values() {
                        running.signal.send_replace(ConsumerSignal::LeaseLost);
                    }
                    let grace = tokio::time::sleep(LEASE_LOST_GRACE);
                    tokio::pin!(grace);
                    loop {
                        tokio::select! {
                            joined = self.consumers.join_next_with_id() => match joined {
                                Some(joined) => self.finished(joined),
                                None => break,
                            },
                            () = &mut grace => break,
                        }
                    }
                    self.consumers.abort_all();
                    self.releases.abort_all();
                    while self.consumers.join_next().await.is_some() {}
                    while self.releases.join_next().await.is_some() {}
                    return;
                }
            }
        }
    }
}

/// How long a failed release waits before it may be tried again: 500 ms,
/// doubling with each failure in a row, at most 30 s.
fn release_retry_delay(failures: u32) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(30))
}

/// How long before the shutdown timeout a stopping worker stops waiting for
/// handoff requests and releases its remaining leases itself.
const RELEASE_RESERVE: Duration = Duration::from_secs(5);

/// How often the scheduler's loop ticks to show it is alive.
const HEALTH_TICK: Duration = Duration::from_secs(1);

/// How long without a tick before the worker is judged stuck.
const STALL_AFTER: Duration = Duration::from_secs(30);

/// How often a stopping worker checks whether anyone can still receive its
/// leases.
const RECEIVERS_CHECK: Duration = Duration::from_millis(200);

/// How long processors get to return from `lease_lost` when forced out.
const LEASE_LOST_GRACE: Duration = Duration::from_secs(1);

/// Reads the lease fresh (the held snapshot may predate checkpoints written
/// since) and runs its consumer, unless the lease has moved on, the
/// processing deadline passes, or the consumer is told to stop first.
/// Refuses to start on a lease table of another kind of application,
/// before anything is written (a table that does not exist yet is fine):
/// an application of one stream on a table that holds a multi-stream
/// application's leases (or the stream information of one of its
/// streams), and a multi-stream application on a table that holds leases
/// keyed by shard id.
async fn refuse_a_table_of_another_kind(
    store: &dyn LeaseStore,
    table: &str,
    multi_stream: bool,
    streams: &ConsumedStreams,
) -> Result<(), SchedulerError> {
    let listing = match store.list_table().await {
        Ok(listing) => listing,
        Err(LeaseStoreError::Refused { code, .. }) if code == "ResourceNotFoundException" => {
            return Ok(());
        }
        Err(error) => return Err(SchedulerError::LeaseTable(error)),
    };
    let other: Vec<&str> = if multi_stream {
        listing
            .leases
            .iter()
            .filter(|lease| lease.stream.is_none())
            .map(|lease| lease.key.as_str())
            .collect()
    } else {
        listing
            .leases
            .iter()
            .filter(|lease| lease.stream.is_some())
            .map(|lease| lease.key.as_str())
            .chain(
                listing
                    .skipped
                    .iter()
                    .filter(|item| item.is_multi_stream_information())
                    .map(|item| item.key.as_str()),
            )
            .collect()
    };
    let Some(example) = other.first() else {
        return refuse_another_epoch(&listing, table, streams);
    };
    let (table, count, example) = (table.to_owned(), other.len(), (*example).to_owned());
    Err(if multi_stream {
        SchedulerError::SingleStreamTable {
            table,
            count,
            example,
        }
    } else {
        SchedulerError::MultiStreamTable {
            table,
            count,
            example,
        }
    })
}

/// Refuses to start while the table holds unfinished leases of a consumed
/// stream's name and account under another creation epoch: the checkpoints of a Java application that chose its own epoch,
/// or of the stream before it was deleted and created again. Neither may be
/// left behind silently.
fn refuse_another_epoch(
    listing: &kcl_lease::LeaseTableListing,
    table: &str,
    streams: &ConsumedStreams,
) -> Result<(), SchedulerError> {
    for stream in streams.iter() {
        let Some(ours) = &stream.identifier else {
            continue;
        };
        let others: Vec<&kcl_lease::Lease> = listing
            .leases
            .iter()
            .filter(|lease| {
                lease.stream.as_ref().is_some_and(|theirs| {
                    theirs.account_id == ours.account_id
                        && theirs.stream_name == ours.stream_name
                        && theirs != ours
                }) && !lease.is_finished()
            })
            .collect();
        if let Some(first) = others.first() {
            return Err(SchedulerError::StreamEpochMismatch {
                table: table.to_owned(),
                name: ours.stream_name.clone(),
                consumed_as: ours.to_string(),
                found: first
                    .stream
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                count: others.len(),
            });
        }
    }
    Ok(())
}

/// Each configured stream as its consumers use it: for a multi-stream
/// application, its identifier read from Kinesis (retried with backoff
/// while Kinesis throttles or fails).
async fn resolve_streams(
    config: &SchedulerConfig,
    kinesis: &dyn Kinesis,
) -> Result<Arc<ConsumedStreams>, SchedulerError> {
    let configs = match &config.streams {
        StreamsConfig::Single(name) => {
            let stream = ConsumedStream::single(name.clone(), config.initial_position);
            return Ok(Arc::new(ConsumedStreams::new(vec![Arc::new(stream)])));
        }
        StreamsConfig::Multi(configs) => configs,
    };
    let mut streams = Vec::new();
    for stream in configs {
        let backoff = Backoff::new(config.kinesis_backoff.clone().without_limit());
        let resolved = retry_with_backoff("DescribeStreamSummary", backoff, || async {
            match stream.resolve(kinesis, config.initial_position).await {
                Ok(resolved) => ControlFlow::Break(Ok(resolved)),
                Err(error) if error.is_retryable() => {
                    warn!(stream = %stream.name(), %error, "describing the stream failed; retrying");
                    ControlFlow::Continue(error)
                }
                Err(error) => ControlFlow::Break(Err(error)),
            }
        })
        .await
        .map_err(|exhausted| exhausted.error)
        .map_err(|source| SchedulerError::Stream {
            stream: stream.name().to_owned(),
            source,
        })?;
        if let Some(identifier) = &resolved.identifier {
            info!(stream = %stream.name(), %identifier, "consuming stream");
        }
        streams.push(Arc::new(resolved));
    }
    Ok(Arc::new(ConsumedStreams::new(streams)))
}

async fn start_consumer(
    context: Arc<ConsumerContext>,
    stream: Arc<ConsumedStream>,
    token: LeaseToken,
    deadline: ProcessingDeadline,
    mut signals: watch::Receiver<ConsumerSignal>,
) -> ConsumerOutcome {
    let stopped = |reason| ConsumerOutcome {
        reason,
        checkpoint: kcl_checkpoint::ExtendedSequenceNumber::TrimHorizon,
        child_shards: Vec::new(),
        deadline_passed: deadline.was_found_passed(),
    };
    let lease = loop {
        let read = tokio::select! {
            biased;
            () = deadline.passed() => return stopped(ShutdownReason::LeaseLost),
            read = context.store.get_lease(&token.key) => read,
        };
        match read {
            Ok(Some(lease)) if lease.token().as_ref() == Some(&token) => break lease,
            Ok(_) => return stopped(ShutdownReason::LeaseLost),
            Err(error) => {
                warn!(lease = %token.key, %error, "reading the lease failed; retrying");
                tokio::select! {
                    biased;
                    () = deadline.passed() => return stopped(ShutdownReason::LeaseLost),
                    signal = signals.wait_for(|s| *s != ConsumerSignal::Run) => {
                        let reason = match signal.as_deref() {
                            Ok(ConsumerSignal::ShutdownRequested) => ShutdownReason::Requested,
                            _ => ShutdownReason::LeaseLost,
                        };
                        return stopped(reason);
                    }
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let start = ShardStart {
        shard_id: lease.shard_id().to_owned(),
        stream,
        token,
        checkpoint: lease.checkpoint.clone(),
        pending_checkpoint: lease.pending_checkpoint.clone(),
        pending_checkpoint_state: lease.pending_checkpoint_state.clone(),
        parent_shard_ids: lease.parent_shard_ids.clone(),
        hash_key_range: lease.hash_key_range,
        deadline,
        start_timestamp: lease.start_timestamp,
    };
    ShardConsumer::new(context, start, signals).run().await
}

#[cfg(test)]
mod tests;
