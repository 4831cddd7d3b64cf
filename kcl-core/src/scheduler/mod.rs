//! The scheduler: one per worker process. It runs the lease coordinator and
//! shard discovery, and keeps exactly one
//! [`ShardConsumer`](crate::consumer::ShardConsumer) running for each lease
//! the worker holds:
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
//! What the worker does before it processes anything is in `startup.rs`;
//! the consumer tasks and releases in `worker_tasks.rs`; shard discovery
//! and lease cleanup, on a task of their own, in `maintenance.rs`.
//!
//! Nothing in the scheduler's loop waits on the lease table: shard
//! discovery and lease cleanup run on a task of their own,
//! releases run as tasks, and each consumer checks the worker's processing
//! deadline itself. A table that stalls delays those tasks, never the
//! moment a consumer stops.

mod config;
mod maintenance;
mod startup;
mod worker_tasks;

use startup::start_up;
use worker_tasks::WorkerTasks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kcl_lease::{
    CoordinatorHandle, HeldLease, LeaseConfigError, LeaseCoordinator, LeaseScope, LeaseStore,
    LeaseStoreError,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, info, info_span, warn};

/// Where a shard with no checkpoint starts; defined with the [streams](crate::streams).
pub use crate::streams::InitialPosition;
pub use config::{ConfigError, RetrievalMode, SchedulerBuilder, SchedulerConfig};

use crate::RecordProcessorFactory;
use crate::consumer::ConsumerContext;
use crate::kinesis::{Kinesis, KinesisError};
use crate::lease_cleanup::LeaseCleaner;
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
            processor_timeout: config.processor_timeout,
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
        let Some(streams) = start_up(&config, &context, &mut coordinator, &shutdown).await? else {
            // Stopped while starting: nothing is held yet.
            return Ok(());
        };
        let stop_coordinator = CancellationToken::new();
        let coordinator_stop = stop_coordinator.clone();
        let mut tasks =
            WorkerTasks::new(Arc::clone(&context), Arc::clone(&streams), handle.clone());
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
        let mut stalls = Stalls::default();
        let mut held = handle.held();
        let result = loop {
            let snapshot = held.borrow_and_update().clone();
            tasks.reconcile(&snapshot);
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                _ = ticks.tick() => {
                    health.tick(std::time::Instant::now());
                    stalls.check(&context, &streams, &handle, config.stall_report_after);
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

/// The shards reported stalled, as of the last check.
#[derive(Default)]
struct Stalls(std::collections::BTreeSet<(String, String)>);

impl Stalls {
    /// Reports the shards with no progress for `after`: in the log (once
    /// each, and again when it recovers), as a metric, and to the
    /// coordinator for the heartbeat.
    fn check(
        &mut self,
        context: &ConsumerContext,
        streams: &crate::streams::ConsumedStreams,
        handle: &CoordinatorHandle<dyn LeaseStore>,
        after: Duration,
    ) {
        let stalled = context
            .stats
            .activity()
            .stalled(tokio::time::Instant::now(), after);
        for (stream, shard) in stalled.difference(&self.0) {
            warn!(%stream, shard_id = %shard, ?after, "shard stalled: a processor call, or reads from Kinesis, have not returned for the stall time");
        }
        for (stream, shard) in self.0.difference(&stalled) {
            info!(%stream, shard_id = %shard, "shard no longer stalled");
        }
        if stalled != self.0 {
            let multi_stream = streams.iter().any(|s| s.identifier.is_some());
            handle.report_stalled(
                stalled
                    .iter()
                    .map(|(stream, shard)| {
                        if multi_stream {
                            format!("{stream}/{shard}")
                        } else {
                            shard.clone()
                        }
                    })
                    .collect(),
            );
        }
        metrics::gauge!(crate::telemetry::metrics::STALLED_SHARDS).set(stalled.len() as f64);
        self.0 = stalled;
    }
}

/// How often the scheduler's loop ticks to show it is alive.
const HEALTH_TICK: Duration = Duration::from_secs(1);

/// How long without a tick before the worker is judged stuck.
const STALL_AFTER: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests;
