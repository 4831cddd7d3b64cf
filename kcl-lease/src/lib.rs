//! Shard leases: how a fleet of workers shares the shards of a stream through
//! one DynamoDB table.
//!
//! - [`Lease`]: one item per shard in the lease table, in the Java KCL's item
//!   format (attribute names and types in [`dynamodb`]), so an application
//!   can move from the Java KCL to this project by pointing at its table.
//! - [`LeaseStore`]: every operation a worker makes on the tables, with two
//!   implementations of the same semantics: [`DynamoDbLeaseStore`] and
//!   [`InMemoryLeaseStore`] (feature `test-util`). Every write that depends
//!   on ownership is conditional on the owner and the lease counter
//!   (fencing): a worker that lost a lease gets
//!   [`LeaseStoreError::LeaseLost`] and changes nothing.
//! - [`listing`]: what a scan of the lease table finds; items that are
//!   not leases (the Java KCL 3.5's other items, unreadable items) are
//!   skipped and never written.
//! - [`StreamIdentifier`]: how a multi-stream application names its
//!   streams (`account:stream:epoch`) and keys their leases, as the Java
//!   KCL does; [`LeaseScope`]: which leases of the table a worker
//!   processes (its one stream's, or those of the streams it consumes).
//! - [`liveness`]: workers heartbeat one item each, in a table of their own,
//!   instead of renewing every lease; a lease expires when its owner's
//!   heartbeat has not changed for the failover time, judged by the
//!   observer's own monotonic clock.
//! - [`deadline`]: how long a worker may process its shards after its last
//!   confirmed heartbeat, checked by each consumer itself.
//! - [`assignment`]: a pure function from a table snapshot to a plan: which
//!   free leases to take and which leases to ask others to hand over.
//! - [`LeaseCoordinator`]: the task that runs heartbeats and assignment
//!   rounds and publishes the leases its worker holds.
//! - [`LeaseCheckpointWriter`]: checkpoints written to the lease, fenced.
//! - [`LeaseConfig`]: the settings (failover time, intervals, worker id).
//! - [`backoff`]: the retry component every AWS call goes through.
//! - [`metrics`]: the names of the metrics the lease layer records.
//!
//! With the `test-util` feature (for tests and simulations, off by
//! default): [`InMemoryLeaseStore`]; [`faults`], a store wrapper that
//! injects stalls, lost writes and writes that take effect but report
//! failure; and [`conformance`], the suite that holds every [`LeaseStore`]
//! to the same semantics.
#![warn(missing_docs)]

pub mod assignment;
pub use kcl_backoff as backoff;
mod checkpoint_writer;
mod config;
#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
mod coordinator;
pub mod deadline;
mod error;
#[cfg(any(test, feature = "test-util"))]
pub mod faults;
mod lease;
pub mod listing;
pub mod liveness;
pub mod metrics;
mod scope;
mod store;
pub use store::dynamodb;
mod stream_identifier;

pub use checkpoint_writer::LeaseCheckpointWriter;
pub use config::{LeaseConfig, LeaseConfigError};
pub use coordinator::{CoordinatorHandle, HeldLease, HeldLeases, LeaseCoordinator, RoundReport};
pub use deadline::{Liveness, ProcessingDeadline};
pub use dynamodb::DynamoDbLeaseStore;
pub use error::LeaseStoreError;
pub use lease::{HashKeyRange, Lease, LeaseToken};
pub use listing::{LeaseTableListing, SkippedItem, SkippedKind};
pub use scope::LeaseScope;
#[cfg(any(test, feature = "test-util"))]
pub use store::memory::InMemoryLeaseStore;
pub use store::{
    CheckpointUpdate, LeaseStore, RequestCounter, RequestCounts, WRITE_OPERATIONS, WorkerHeartbeat,
    write_requests,
};
pub use stream_identifier::{StreamIdentifier, StreamIdentifierError};
