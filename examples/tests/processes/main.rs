//! Tests of the example binaries as operators run them: worker processes
//! against the local AWS stack (`scripts/local-aws.sh up`), stopped by
//! signals, some of them behind a fault proxy.
//!
//! All of them live in this one test binary, as modules, so the AWS SDK is
//! linked once.

mod admin;
mod bad_input;
mod chaos;
mod java_table;
mod recorder;
mod reset;
mod safety;

/// The recorder binary built for these tests.
const RECORDER: &str = env!("CARGO_BIN_EXE_recorder");

/// The operator tool built for these tests.
const ADMIN: &str = env!("CARGO_BIN_EXE_kcl-admin");
