//! Sequence numbers and checkpoint semantics.
//!
//! Every shard position the framework stores or compares is an
//! [`ExtendedSequenceNumber`]: a Kinesis sequence number plus the KPL
//! sub-sequence number of a user record, or one of the sentinels
//! (`TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`, `SHARD_END`). Positions are
//! stored in the lease table exactly as the Java KCL stores them and ordered
//! as the Java KCL orders them, so a table can move between the two.
//!
//! Record processors checkpoint through a [`Checkpointer`]: every position is
//! [validated](validate_checkpoint) (never behind the last checkpoint, never
//! past the last record delivered) and written through a
//! [`CheckpointWriter`], which the lease table implements with fencing.
//!
//! This crate sits at the bottom of the workspace: `kcl-lease` stores these
//! positions and `kcl-core` hands them to the application.
#![warn(missing_docs)]

mod checkpoint_update;
mod checkpointer;
mod sequence_number;
mod validation;
mod writer;

pub use checkpoint_update::CheckpointUpdate;
pub use checkpointer::{CheckpointError, CheckpointProgress, CheckpointTracker, Checkpointer};
pub use sequence_number::{
    ExtendedSequenceNumber, MAX_SEQUENCE_NUMBER_DIGITS, SequenceNumber, SequenceNumberError,
};
pub use validation::{InvalidCheckpoint, validate_checkpoint};
pub use writer::{CheckpointWriteError, CheckpointWriter};
