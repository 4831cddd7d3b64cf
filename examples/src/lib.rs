//! Shared pieces of the example applications.
//!
//! The binaries in `src/bin/` are the runnable apps; this library holds what
//! more than one of them (and the tests) needs.
#![warn(missing_docs)]

pub mod payload;
pub mod recorder;
pub mod worker;
