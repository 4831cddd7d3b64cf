//! Operating a consumer group from outside its workers, as `kcl-admin`
//! does: what the group is doing, how far behind it is, and (while it
//! runs) where it reads.
//!
//! - [`status`]: the workers (heartbeat age, draining, leases held) and the
//!   leases (owner, checkpoint, parents and children, [`LeaseState`]).
//! - [`lineage`]: the shard tree, parents before children, with each
//!   shard's lease state.
//! - [`lag`]: per shard, how far the group's checkpoint is behind the
//!   newest record, read from Kinesis (no worker needs to run).
//! - [`evict`]: ask a live worker to hand all its leases over without
//!   stopping (to drain a node), or to take leases again.
//! - [`reset`]: move the group's position (oldest records, now, or a
//!   time) while its workers run, fenced, parents before children.
//!
//! Every command reads the lease table through a [`LeaseStore`] and the
//! stream through a [`Kinesis`](kcl_core::kinesis::Kinesis), so the same
//! code runs against AWS and against the in-memory backends. Reports are
//! plain data (`serde::Serialize`, for `--output json`) with a readable
//! table rendering.
//!
//! [`LeaseStore`]: kcl_lease::LeaseStore
#![warn(missing_docs)]

mod error;
pub mod evict;
pub mod lag;
pub mod lineage;
pub mod reset;
pub mod status;
#[cfg(test)]
mod test_support;

pub use error::AdminError;
pub use lag::Lag;
pub use lineage::Lineage;
pub use status::{LeaseState, Status};
