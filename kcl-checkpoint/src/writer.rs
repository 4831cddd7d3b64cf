//! Where checkpoints are stored: the trait the lease table implements.

use async_trait::async_trait;

use crate::CheckpointUpdate;

/// Where checkpoints are stored. The lease table implements it, fenced by the
/// lease: once the lease has moved to another worker every write fails with
/// [`CheckpointWriteError::LeaseLost`] and changes nothing.
#[async_trait]
pub trait CheckpointWriter: Send + Sync + 'static {
    /// Stores `update` and returns what is stored afterwards. A store never
    /// moves a checkpoint back: if an earlier write whose answer was lost
    /// stored a later checkpoint, that one stays, with the pending fields of
    /// `update` written on top of it (see [`CheckpointUpdate::on_top_of`]).
    /// Throttling and transient failures are retried with backoff inside.
    /// After [`CheckpointWriteError::LeaseLost`] nothing was written; after
    /// [`CheckpointWriteError::Failed`] the write may still have taken
    /// effect (its answer was lost), which a later write finds out.
    async fn write(
        &self,
        update: &CheckpointUpdate,
    ) -> Result<CheckpointUpdate, CheckpointWriteError>;
}

/// Why a [`CheckpointWriter`] could not store a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointWriteError {
    /// The lease is no longer this worker's.
    #[error("the lease was lost")]
    LeaseLost,
    /// The store failed through every retry, or refused the write.
    #[error("{0}")]
    Failed(String),
}
