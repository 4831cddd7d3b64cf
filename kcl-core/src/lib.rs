//! The worker, one member of a fleet that shares a stream's shards.
//!
//! - [`RecordProcessor`]: what the application implements, one instance
//!   per shard, made by a [`RecordProcessorFactory`]; it checkpoints
//!   through a [`checkpoint::Checkpointer`].
//! - [`Scheduler`] ([`scheduler`]): built with [`Scheduler::builder`], it
//!   runs the lease coordinator (from `kcl-lease`), shard discovery and one
//!   consumer per lease held, and stops cleanly through a
//!   [`ShutdownHandle`].
//! - [`streams`]: the streams an application consumes (one, or several in
//!   one lease table) and where each starts.
//! - [`consumer`]: the per-shard task driving a processor through its
//!   lifecycle, waiting for parent shards first and creating children's
//!   leases at shard end.
//! - [`retrieval`]: reading records (polling or enhanced fan-out) ahead of
//!   the processor, and expanding KPL aggregates.
//! - [`shard_sync`]: which leases new shards need; [`lease_cleanup`]: which
//!   leases are no longer needed.
//! - [`kinesis`]: the part of the Kinesis API the worker uses, behind a
//!   trait.
//! - [`telemetry`]: metrics, health and readiness.
//! - [`backoff`]: the one retry component (from `kcl-lease`).
//!
//! ```no_run
//! use kcl_core::{
//!     InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor, Scheduler,
//! };
//! use kcl_core::checkpoint::Checkpointer;
//!
//! struct Printer;
//!
//! #[async_trait::async_trait]
//! impl RecordProcessor for Printer {
//!     async fn initialize(&mut self, input: InitializationInput) -> Result<(), ProcessorError> {
//!         println!("{} resumes after {}", input.shard_id, input.checkpoint);
//!         Ok(())
//!     }
//!
//!     async fn process_records(&mut self, input: ProcessRecordsInput) -> Result<(), ProcessorError> {
//!         for record in &input.records {
//!             println!("{}: {:?}", record.partition_key, record.data);
//!         }
//!         input.checkpointer.checkpoint().await?;
//!         Ok(())
//!     }
//!
//!     async fn shard_ended(&mut self, checkpointer: Checkpointer) -> Result<(), ProcessorError> {
//!         checkpointer.checkpoint().await?;
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let aws = aws_config::load_from_env().await;
//! let scheduler = Scheduler::builder()
//!     .application_name("printer")
//!     .stream_name("orders")
//!     .sdk_config(&aws)
//!     .build(|_shard: &str| Printer)?;
//! let shutdown = scheduler.shutdown_handle();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     shutdown.shutdown();
//! });
//! scheduler.run().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `metrics-server`: [`telemetry`]'s `TelemetryServer`, serving
//!   `/metrics` (Prometheus), `/healthz` and `/readyz`. Off by default:
//!   the worker records its metrics through the `metrics` facade either
//!   way, for whichever exporter the application installs.
//! - `test-util`: [`kinesis`]'s `InMemoryKinesis` and `kcl-lease`'s
//!   in-memory lease store, for tests and simulations.
#![warn(missing_docs)]

/// The one retry component: exponential backoff with jitter, for every
/// AWS call the worker makes (Kinesis here, DynamoDB in the lease layer)
/// and for processor retries. Defined in `kcl-lease`, the lowest crate
/// that makes AWS calls.
pub use kcl_lease::backoff;
pub mod consumer;
pub mod kinesis;
pub mod lease_cleanup;
mod processor;
mod record;
pub mod retrieval;
pub mod scheduler;
pub mod shard_sync;
pub mod streams;
pub mod telemetry;
#[cfg(test)]
mod test_support;

/// Checkpointing, re-exported from `kcl-checkpoint`.
pub mod checkpoint {
    pub use kcl_checkpoint::{
        CheckpointError, Checkpointer, ExtendedSequenceNumber, SequenceNumber,
    };
}

pub use consumer::{DeadLetter, ProcessorRetryPolicy};
pub use processor::{
    InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor,
    RecordProcessorFactory,
};
pub use record::Record;
pub use scheduler::{
    ConfigError, InitialPosition, RetrievalMode, Scheduler, SchedulerBuilder, SchedulerConfig,
    SchedulerError, ShutdownHandle,
};
pub use streams::StreamConfig;
pub use telemetry::{StatsSnapshot, WorkerStats};
