//! Sequence numbers and checkpoint semantics.
//!
//! Every shard position the framework stores or compares is an
//! [`ExtendedSequenceNumber`]: a Kinesis sequence number plus the KPL
//! sub-sequence number of a user record, or one of the sentinels
//! (`TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`, `SHARD_END`). Positions are
//! stored in the lease table exactly as the Java KCL stores them and ordered
//! as the Java KCL orders them, so a table can move between the two.
//!
//! This crate sits at the bottom of the workspace: `kcl-lease` stores these
//! positions and `kcl-core` hands them to the application.

mod sequence_number;

pub use sequence_number::{
    ExtendedSequenceNumber, MAX_SEQUENCE_NUMBER_DIGITS, SequenceNumber, SequenceNumberError,
};
