//! What operators see: metrics (recorded through the `metrics` facade and
//! exported in the Prometheus text format), health and readiness, and an
//! HTTP endpoint serving them.
//!
//! - [`metrics`]: the names and meaning of every metric the worker records.
//! - [`WorkerStats`]: the worker's counters, which record those metrics as
//!   they count.
//! - [`ShardActivity`]: which shards are stalled (a processor call or
//!   reads that do not return).
//! - [`Health`]: liveness (the scheduler's loops are progressing) and
//!   readiness (started, and the lease table answered recently).
//! - [`TelemetryServer`] (feature `metrics-server`): `GET /metrics`,
//!   `/healthz` and `/readyz` on one address. Without the feature, install
//!   any `metrics` exporter and serve [`Health`] as the application likes.

mod activity;
mod health;
pub mod metrics;
#[cfg(feature = "metrics-server")]
mod server;
mod stats;

pub use activity::ShardActivity;
pub use health::Health;
#[cfg(feature = "metrics-server")]
pub use server::{TelemetryError, TelemetryServer};
pub use stats::{StatsSnapshot, WorkerStats};
