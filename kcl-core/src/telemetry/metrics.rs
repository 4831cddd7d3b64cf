//! The metrics a worker records. Names follow Prometheus conventions; the
//! lease layer's are in [`kcl_lease::metrics`].

/// Records processed successfully: labels `stream` and `shard`.
pub const RECORDS_PROCESSED: &str = "kcl_records_processed_total";
/// Bytes of data (and partition keys) processed successfully: labels `stream`
/// and `shard`.
pub const BYTES_PROCESSED: &str = "kcl_bytes_processed_total";
/// How far behind the newest record the last batch was: labels `stream` and `shard`.
pub const MILLIS_BEHIND_LATEST: &str = "kcl_millis_behind_latest";
/// Time the processor took per batch (successful or not), in seconds.
pub const BATCH_PROCESSING_SECONDS: &str = "kcl_batch_processing_seconds";
/// Processor calls given again after an error or a panic: labels `stream` and
/// `shard`.
pub const PROCESSOR_RETRIES: &str = "kcl_processor_retries_total";
/// Shards of this worker with no progress for the stall time (a processor
/// call or reads that do not return), as of its last check (every second).
pub const STALLED_SHARDS: &str = "kcl_stalled_shards";
/// Processor calls cancelled for running past `processor_timeout`: labels
/// `stream` and `shard`.
pub const PROCESSOR_TIMEOUTS: &str = "kcl_processor_timeouts_total";
/// Panics caught in processor calls.
pub const PROCESSOR_PANICS: &str = "kcl_processor_panics_total";
/// Batches skipped by a retry policy that gives up (records lost by the
/// application's choice).
pub const BATCHES_SKIPPED: &str = "kcl_batches_skipped_total";
/// Batches given up on by a dead-letter retry policy, once their records
/// were written to the dead-letter stream.
pub const BATCHES_DEAD_LETTERED: &str = "kcl_batches_dead_lettered_total";
/// Records written to the dead-letter stream.
pub const RECORDS_DEAD_LETTERED: &str = "kcl_records_dead_lettered_total";
/// KPL aggregates expanded into their user records.
pub const KPL_AGGREGATES: &str = "kcl_kpl_aggregates_total";
/// Records that started like KPL aggregates but were not valid ones,
/// delivered as they were.
pub const KPL_MALFORMED: &str = "kcl_kpl_malformed_aggregates_total";
/// KPL user records outside the shard they were read from: label `action`
/// (`dropped` with an aggregate none of whose records belongs to the shard,
/// `delivered` with an aggregate that has records in it).
pub const KPL_OUTSIDE_SHARD: &str = "kcl_kpl_records_outside_shard_total";
/// Leases released by this worker (handoffs and shutdown).
pub const LEASES_RELEASED: &str = "kcl_leases_released_total";

pub use kcl_lease::metrics::{
    AWS_REQUESTS, CHECKPOINT_WRITES, GROUP_LEASES, GROUP_WORKERS, LEASE_HANDOFFS, LEASE_LOSSES,
    LEASE_TAKES, LEASES_HELD,
};

/// The buckets of [`BATCH_PROCESSING_SECONDS`], from 1 ms to 1 min.
pub const BATCH_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Describes every metric to the installed recorder (help texts).
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    kcl_lease::metrics::describe();
    describe_counter!(
        RECORDS_PROCESSED,
        "Records processed successfully, by stream and shard"
    );
    describe_counter!(
        BYTES_PROCESSED,
        "Bytes (data and partition keys) processed, by stream and shard"
    );
    describe_gauge!(
        MILLIS_BEHIND_LATEST,
        "Milliseconds the last batch was behind the newest record, by stream and shard"
    );
    describe_histogram!(
        BATCH_PROCESSING_SECONDS,
        ::metrics::Unit::Seconds,
        "Time the processor took per batch"
    );
    describe_counter!(
        PROCESSOR_RETRIES,
        "Processor calls retried after an error or panic, by stream and shard"
    );
    describe_counter!(PROCESSOR_PANICS, "Panics caught in processor calls");
    describe_gauge!(
        STALLED_SHARDS,
        "Shards with no progress (a processor call or reads not returning) for the stall time"
    );
    describe_counter!(
        PROCESSOR_TIMEOUTS,
        "Processor calls cancelled past processor_timeout, by stream and shard"
    );
    describe_counter!(
        BATCHES_SKIPPED,
        "Batches skipped by a retry policy that gives up"
    );
    describe_counter!(
        BATCHES_DEAD_LETTERED,
        "Batches given up on after their records were written to the dead-letter stream"
    );
    describe_counter!(
        RECORDS_DEAD_LETTERED,
        "Records written to the dead-letter stream"
    );
    describe_counter!(LEASES_RELEASED, "Leases released by this worker");
    describe_counter!(KPL_AGGREGATES, "KPL aggregates expanded into user records");
    describe_counter!(
        KPL_MALFORMED,
        "Records that looked like KPL aggregates but were not, delivered as they were"
    );
    describe_counter!(
        KPL_OUTSIDE_SHARD,
        "KPL user records outside the shard's hash key range, dropped or delivered"
    );
}
