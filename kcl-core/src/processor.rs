//! The interface the application implements: one [`RecordProcessor`] per
//! shard, created by a [`RecordProcessorFactory`].
//!
//! The framework calls a processor from one task, one call at a time:
//! `initialize`, then `process_records` for each batch in shard order, then
//! exactly one of `lease_lost`, `shard_ended` or `shutdown_requested`.
//!
//! A processor that returns an error from `initialize` or `process_records`,
//! or panics in any call, gets the same input again after a backoff (a panic
//! also replaces the processor with a new one, resumed from the last
//! checkpoint): records are never skipped unless the configured
//! [`ProcessorRetryPolicy`](crate::ProcessorRetryPolicy) says so.

use async_trait::async_trait;
use kcl_checkpoint::{Checkpointer, ExtendedSequenceNumber};

use crate::Record;

/// The error type processors return: anything that can be logged.
pub type ProcessorError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where a shard's processing resumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitializationInput {
    /// The stream the shard belongs to (one of several in a multi-stream
    /// application).
    pub stream_name: String,
    /// The shard.
    pub shard_id: String,
    /// The checkpoint processing resumes after (a sentinel for a new lease).
    pub checkpoint: ExtendedSequenceNumber,
    /// A prepared checkpoint left by an earlier owner, if any.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// The application state stored with the pending checkpoint.
    pub pending_checkpoint_state: Option<Vec<u8>>,
}

/// A batch of records, in shard order.
#[derive(Debug)]
pub struct ProcessRecordsInput {
    /// The stream the records come from.
    pub stream_name: String,
    /// The records, oldest first. Never empty.
    pub records: Vec<Record>,
    /// How far behind the newest record of the shard this batch is, as
    /// Kinesis reported it.
    pub millis_behind_latest: Option<u64>,
    /// Checkpoints this shard.
    pub checkpointer: Checkpointer,
}

/// The application's code for one shard.
#[async_trait]
pub trait RecordProcessor: Send + 'static {
    /// Called once before any records. An error is retried with backoff.
    async fn initialize(&mut self, input: InitializationInput) -> Result<(), ProcessorError>;

    /// Handles a batch. Checkpoint through `input.checkpointer` when the
    /// records are done with (after every batch, or less often). An error
    /// delivers the same batch again after a backoff.
    async fn process_records(&mut self, input: ProcessRecordsInput) -> Result<(), ProcessorError>;

    /// Another worker has the shard now; checkpointing is no longer
    /// possible. Release resources; records not checkpointed will be
    /// processed again by the new owner.
    async fn lease_lost(&mut self) {}

    /// Every record of the shard has been delivered. The processor must
    /// checkpoint (`checkpointer.checkpoint()` stores `SHARD_END`) so that
    /// the child shards can start; if it does not, the framework reports an
    /// error and calls this again.
    async fn shard_ended(&mut self, checkpointer: Checkpointer) -> Result<(), ProcessorError>;

    /// The worker is stopping or handing the shard to another worker: a last
    /// chance to checkpoint. The new owner starts after the last checkpoint.
    async fn shutdown_requested(
        &mut self,
        checkpointer: Checkpointer,
    ) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        Ok(())
    }
}

/// Creates a processor for each shard this worker starts processing.
pub trait RecordProcessorFactory: Send + Sync + 'static {
    /// A processor for `shard_id`.
    fn create(&self, shard_id: &str) -> Box<dyn RecordProcessor>;

    /// A processor for `shard_id` of `stream` (in a multi-stream
    /// application, two streams may each have a shard of the same id).
    /// Default: [`create`](Self::create); the stream is named to the
    /// processor in its inputs either way.
    fn create_for_stream(&self, stream: &str, shard_id: &str) -> Box<dyn RecordProcessor> {
        let _ = stream;
        self.create(shard_id)
    }
}

impl<F, P> RecordProcessorFactory for F
where
    F: Fn(&str) -> P + Send + Sync + 'static,
    P: RecordProcessor,
{
    fn create(&self, shard_id: &str) -> Box<dyn RecordProcessor> {
        Box::new(self(shard_id))
    }
}
