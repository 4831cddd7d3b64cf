//! Shared pieces of the example applications.
//!
//! The binaries in `src/bin/` are the runnable apps; this library holds what
//! more than one of them (and the tests) needs:
//!
//! - [`worker`]: settings as flags and `KCL_*` variables, logging, the
//!   metrics and probe endpoint, and a clean stop on SIGTERM;
//! - [`recorder`]: a processor that writes one JSON line per record it
//!   processed;
//! - [`payload`]: the payload the example producer writes
//!   (`KEY:COUNTER:SENT_MS`).
#![warn(missing_docs)]

pub mod payload;
pub mod recorder;
pub mod worker;
