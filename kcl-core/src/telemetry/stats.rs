//! Counters of what a worker has done: kept here for tests and the final
//! log line, and, all but two, recorded as
//! [metrics](crate::telemetry::metrics) (with the stream and shard as
//! labels where they apply) for the exporter. Shard ends delivered again
//! are only logged and counted here; Kinesis retries are in the request
//! metric (`kcl_aws_requests_total`, by outcome).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::retrieval::aggregation::DeaggregationReport;
use crate::telemetry::metrics as names;

/// What a worker has done so far. Every counter only grows.
#[derive(Debug, Default)]
pub struct WorkerStats {
    records_processed: AtomicU64,
    batches_processed: AtomicU64,
    processor_retries: AtomicU64,
    processor_timeouts: AtomicU64,
    processor_panics: AtomicU64,
    batches_skipped: AtomicU64,
    batches_dead_lettered: AtomicU64,
    records_dead_lettered: AtomicU64,
    shard_end_retries: AtomicU64,
    kinesis_retries: AtomicU64,
    leases_released: AtomicU64,
    malformed_aggregates: AtomicU64,
    records_outside_shard_dropped: AtomicU64,
    records_outside_shard_delivered: AtomicU64,
    /// The running shards' last signs of progress.
    activity: super::ShardActivity,
}

/// A snapshot of [`WorkerStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Records in batches the processor finished without error.
    pub records_processed: u64,
    /// Batches the processor finished without error.
    pub batches_processed: u64,
    /// Batches (and initializations) given again after an error or panic.
    pub processor_retries: u64,
    /// Processor calls cancelled past `processor_timeout`.
    pub processor_timeouts: u64,
    /// Panics caught in processor calls.
    pub processor_panics: u64,
    /// Batches given up on by a retry policy that skips (records lost by the
    /// application's explicit choice).
    pub batches_skipped: u64,
    /// Batches given up on by a dead-letter policy, after their records were
    /// written to the dead-letter stream.
    pub batches_dead_lettered: u64,
    /// Records written to the dead-letter stream.
    pub records_dead_lettered: u64,
    /// Shard ends delivered again because the processor did not checkpoint.
    pub shard_end_retries: u64,
    /// Kinesis calls retried after throttling or a failure.
    pub kinesis_retries: u64,
    /// Leases this worker gave back (handoffs and shutdown).
    pub leases_released: u64,
    /// Records that looked like KPL aggregates but were not valid ones,
    /// delivered as they were.
    pub malformed_aggregates: u64,
    /// KPL user records dropped with their aggregate, none of whose records
    /// belonged to the shard (the KPL puts such an aggregate again).
    pub records_outside_shard_dropped: u64,
    /// KPL user records delivered although outside the shard, with the rest
    /// of their aggregate (an aggregator that mixes shards).
    pub records_outside_shard_delivered: u64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl WorkerStats {
    /// The running shards' last signs of progress (see [`super::ShardActivity`]).
    pub fn activity(&self) -> &super::ShardActivity {
        &self.activity
    }

    /// A batch of `records` records (`bytes` of data and keys) of `shard`
    /// of `stream` processed.
    pub fn count_batch(&self, stream: &str, shard: &str, records: usize, bytes: usize) {
        add(&self.batches_processed, 1);
        add(&self.records_processed, records as u64);
        let labels = [("stream", stream.to_owned()), ("shard", shard.to_owned())];
        metrics::counter!(names::RECORDS_PROCESSED, &labels).increment(records as u64);
        metrics::counter!(names::BYTES_PROCESSED, &labels).increment(bytes as u64);
    }

    /// How long the processor took with a batch (whatever the outcome), and
    /// how far behind the newest record the batch was.
    pub fn record_batch_time(
        &self,
        stream: &str,
        shard: &str,
        took: Duration,
        millis_behind: Option<u64>,
    ) {
        metrics::histogram!(names::BATCH_PROCESSING_SECONDS).record(took.as_secs_f64());
        if let Some(millis) = millis_behind {
            metrics::gauge!(
                names::MILLIS_BEHIND_LATEST,
                "stream" => stream.to_owned(),
                "shard" => shard.to_owned()
            )
            .set(millis as f64);
        }
    }

    /// A processor call on `shard` of `stream` cancelled past
    /// `processor_timeout`.
    pub fn count_processor_timeout(&self, stream: &str, shard: &str) {
        add(&self.processor_timeouts, 1);
        metrics::counter!(
            names::PROCESSOR_TIMEOUTS,
            "stream" => stream.to_owned(),
            "shard" => shard.to_owned()
        )
        .increment(1);
    }

    /// A processor call on `shard` of `stream` that will be retried.
    pub fn count_processor_retry(&self, stream: &str, shard: &str) {
        add(&self.processor_retries, 1);
        metrics::counter!(
            names::PROCESSOR_RETRIES,
            "stream" => stream.to_owned(),
            "shard" => shard.to_owned()
        )
        .increment(1);
    }

    /// A panic caught in a processor call.
    pub fn count_processor_panic(&self) {
        add(&self.processor_panics, 1);
        metrics::counter!(names::PROCESSOR_PANICS).increment(1);
    }

    /// A batch skipped by the retry policy.
    pub fn count_batch_skipped(&self) {
        add(&self.batches_skipped, 1);
        metrics::counter!(names::BATCHES_SKIPPED).increment(1);
    }

    /// A batch whose records were written to the dead-letter stream.
    pub fn count_batch_dead_lettered(&self, records: usize) {
        add(&self.batches_dead_lettered, 1);
        add(&self.records_dead_lettered, records as u64);
        metrics::counter!(names::BATCHES_DEAD_LETTERED).increment(1);
        metrics::counter!(names::RECORDS_DEAD_LETTERED).increment(records as u64);
    }

    /// A shard end delivered again.
    pub fn count_shard_end_retry(&self) {
        add(&self.shard_end_retries, 1);
    }

    /// A retried Kinesis call.
    pub fn count_kinesis_retry(&self) {
        add(&self.kinesis_retries, 1);
    }

    /// What de-aggregating a batch found.
    pub fn count_deaggregation(&self, report: &DeaggregationReport) {
        if report.aggregates > 0 {
            metrics::counter!(names::KPL_AGGREGATES).increment(report.aggregates as u64);
        }
        if report.malformed > 0 {
            add(&self.malformed_aggregates, report.malformed as u64);
            metrics::counter!(names::KPL_MALFORMED).increment(report.malformed as u64);
        }
        for (counter, count, action) in [
            (
                &self.records_outside_shard_dropped,
                report.outside_shard_dropped,
                "dropped",
            ),
            (
                &self.records_outside_shard_delivered,
                report.outside_shard_delivered,
                "delivered",
            ),
        ] {
            if count > 0 {
                add(counter, count as u64);
                metrics::counter!(names::KPL_OUTSIDE_SHARD, "action" => action)
                    .increment(count as u64);
            }
        }
    }

    /// A lease released.
    pub fn count_lease_released(&self) {
        add(&self.leases_released, 1);
        metrics::counter!(names::LEASES_RELEASED).increment(1);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            records_processed: get(&self.records_processed),
            batches_processed: get(&self.batches_processed),
            processor_retries: get(&self.processor_retries),
            processor_timeouts: get(&self.processor_timeouts),
            processor_panics: get(&self.processor_panics),
            batches_skipped: get(&self.batches_skipped),
            batches_dead_lettered: get(&self.batches_dead_lettered),
            records_dead_lettered: get(&self.records_dead_lettered),
            shard_end_retries: get(&self.shard_end_retries),
            kinesis_retries: get(&self.kinesis_retries),
            leases_released: get(&self.leases_released),
            malformed_aggregates: get(&self.malformed_aggregates),
            records_outside_shard_dropped: get(&self.records_outside_shard_dropped),
            records_outside_shard_delivered: get(&self.records_outside_shard_delivered),
        }
    }
}
