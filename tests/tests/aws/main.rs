//! Integration tests against the local AWS stack (`scripts/local-aws.sh up`).
//!
//! All of them live in this one test binary, as modules, so the AWS SDK is
//! linked once.

mod bad_input;
mod fanout;
mod faults;
mod java_tables;
mod kpl;
mod lease_coordinator;
mod lease_store;
mod probe_fleet;
mod producer;
mod reshard;
mod stack;
mod worker;
