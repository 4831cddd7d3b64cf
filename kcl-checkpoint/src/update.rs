//! What a checkpoint writes.

use crate::ExtendedSequenceNumber;

/// A checkpoint write: the new position, and the pending (prepared)
/// checkpoint with its state, which a plain checkpoint clears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointUpdate {
    /// The position processing has reached.
    pub checkpoint: ExtendedSequenceNumber,
    /// A prepared checkpoint not yet committed, if any.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// Application state stored with the pending checkpoint.
    pub pending_checkpoint_state: Option<Vec<u8>>,
}

impl CheckpointUpdate {
    /// A plain checkpoint at `position`, clearing any pending checkpoint.
    pub fn at(position: ExtendedSequenceNumber) -> Self {
        Self {
            checkpoint: position,
            pending_checkpoint: None,
            pending_checkpoint_state: None,
        }
    }
}
