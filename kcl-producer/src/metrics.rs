//! The metrics a producer records, through the `metrics` facade (the same
//! one the worker uses; install any exporter). Every metric has the label
//! `stream`.

/// User records written.
pub const RECORDS_WRITTEN: &str = "kcl_producer_records_written_total";
/// Bytes (data and partition keys) of user records written.
pub const BYTES_WRITTEN: &str = "kcl_producer_bytes_written_total";
/// User records that failed for good: label `reason` (the error's kind).
pub const RECORDS_FAILED: &str = "kcl_producer_records_failed_total";
/// User records sent again: label `reason` (Kinesis's error code,
/// `WrongShard` after a reshard).
pub const RETRIES: &str = "kcl_producer_retries_total";
/// `PutRecords` calls: label `outcome` (`ok`, `partial` when some entries
/// failed, `failed`).
pub const PUT_CALLS: &str = "kcl_producer_put_calls_total";
/// User records per `PutRecords` call.
pub const BATCH_RECORDS: &str = "kcl_producer_batch_records";
/// Kinesis records (plain records and aggregates) per `PutRecords` call.
pub const BATCH_ENTRIES: &str = "kcl_producer_batch_entries";
/// Bytes per `PutRecords` call.
pub const BATCH_BYTES: &str = "kcl_producer_batch_bytes";
/// Records buffered (sent, not yet written or failed).
pub const BUFFERED_RECORDS: &str = "kcl_producer_buffered_records";
/// Bytes buffered.
pub const BUFFERED_BYTES: &str = "kcl_producer_buffered_bytes";
/// Shard map loads (`ListShards`), for aggregation: label `outcome`.
pub const SHARD_MAP_LOADS: &str = "kcl_producer_shard_map_loads_total";

/// Describes every metric to the installed recorder (help texts).
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RECORDS_WRITTEN, "User records written, by stream");
    describe_counter!(
        BYTES_WRITTEN,
        Unit::Bytes,
        "Bytes (data and partition keys) of user records written, by stream"
    );
    describe_counter!(
        RECORDS_FAILED,
        "User records that failed for good, by stream and reason"
    );
    describe_counter!(RETRIES, "User records sent again, by stream and reason");
    describe_counter!(PUT_CALLS, "PutRecords calls, by stream and outcome");
    describe_histogram!(BATCH_RECORDS, "User records per PutRecords call");
    describe_histogram!(
        BATCH_ENTRIES,
        "Kinesis records (plain records and aggregates) per PutRecords call"
    );
    describe_histogram!(BATCH_BYTES, Unit::Bytes, "Bytes per PutRecords call");
    describe_gauge!(
        BUFFERED_RECORDS,
        "Records sent and not yet written or failed"
    );
    describe_gauge!(
        BUFFERED_BYTES,
        Unit::Bytes,
        "Bytes sent and not yet written or failed"
    );
    describe_counter!(SHARD_MAP_LOADS, "Shard map loads (ListShards), by outcome");
}
