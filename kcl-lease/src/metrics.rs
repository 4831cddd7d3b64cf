//! The metrics the lease layer records (through the `metrics` facade; the
//! application chooses the exporter). Names follow Prometheus conventions.
//! Requests are counted for every AWS service the worker calls (DynamoDB
//! here, Kinesis in `kcl-core`) under one name.

/// AWS requests sent, each attempt counted: labels `service` (`dynamodb`
/// or `kinesis`), `operation` and `outcome` (for DynamoDB `ok`,
/// `condition_failed`, `throttled_or_failed`, `refused`; Kinesis's are
/// named in `kcl-core`).
pub const AWS_REQUESTS: &str = "kcl_aws_requests_total";
/// Leases taken (free or expired ones).
pub const LEASE_TAKES: &str = "kcl_lease_takes_total";
/// Handoffs: label `event` (`requested` by this worker, `received` when one
/// it asked for completed).
pub const LEASE_HANDOFFS: &str = "kcl_lease_handoffs_total";
/// Leases lost to another worker (failover, or after losing liveness).
pub const LEASE_LOSSES: &str = "kcl_lease_losses_total";
/// Leases this worker processes now.
pub const LEASES_HELD: &str = "kcl_leases_held";
/// Times this worker lost its liveness: its processing deadline passed
/// without a confirmed heartbeat, so every consumer stopped by itself.
pub const LIVENESS_LOSSES: &str = "kcl_liveness_losses_total";
/// Checkpoint writes: label `outcome` (`ok`, `lease_lost`,
/// `deadline_passed`, `failed`).
pub const CHECKPOINT_WRITES: &str = "kcl_checkpoint_writes_total";

/// Items of the lease table this worker leaves alone, as of its latest
/// scan: labels `table` and `kind` (`not_a_lease`, `malformed`).
pub const LEASE_TABLE_SKIPPED_ITEMS: &str = "kcl_lease_table_skipped_items";

/// Owners with no heartbeat whose leases' counters keep moving: workers of
/// another library (such as the Java KCL) on the same table, as of the
/// latest assignment round.
pub const FOREIGN_LEASE_OWNERS: &str = "kcl_foreign_lease_owners";

/// The group's unfinished leases, as of this worker's latest assignment
/// round (every worker reports the same; aggregate with `max`): label
/// `state` (`processing`: owned, `waiting`: a child shard whose parents
/// are not finished, `unassigned`: no owner). With the lag, the signal to
/// scale a group on: more workers than leases processing or unassigned
/// get nothing to do.
pub const GROUP_LEASES: &str = "kcl_group_leases";
/// The group's live workers that share this worker's plan (stopping ones
/// included), as of its latest assignment round.
pub const GROUP_WORKERS: &str = "kcl_group_workers";

/// Describes the lease layer's metrics to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        AWS_REQUESTS,
        "AWS requests sent, by service, operation and outcome"
    );
    metrics::describe_counter!(LEASE_TAKES, "Free or expired leases this worker took");
    metrics::describe_counter!(LEASE_HANDOFFS, "Graceful handoffs requested and received");
    metrics::describe_counter!(LEASE_LOSSES, "Leases lost to another worker");
    metrics::describe_gauge!(LEASES_HELD, "Leases this worker processes");
    metrics::describe_gauge!(
        GROUP_LEASES,
        "The group's unfinished leases by state, as of this worker's latest round"
    );
    metrics::describe_gauge!(
        GROUP_WORKERS,
        "The group's live workers, as of this worker's latest round"
    );
    metrics::describe_counter!(
        LIVENESS_LOSSES,
        "Times the processing deadline passed without a confirmed heartbeat"
    );
    metrics::describe_counter!(CHECKPOINT_WRITES, "Checkpoint writes, by outcome");
    metrics::describe_gauge!(
        FOREIGN_LEASE_OWNERS,
        "Workers of another library renewing leases on this table (mixed fleet)"
    );
    metrics::describe_gauge!(
        LEASE_TABLE_SKIPPED_ITEMS,
        "Lease table items left alone (not leases of this application's stream), by kind"
    );
}
