//! The producer's settings.

use std::time::Duration;

use kcl_backoff::BackoffConfig;

use crate::error::ConfigError;
use crate::record::{MAX_PARTITION_KEY_CHARS, MAX_RECORD_BYTES};

/// The most records one `PutRecords` call may carry.
pub const MAX_RECORDS_PER_CALL: usize = 500;

/// The most bytes (data and partition keys) one `PutRecords` call may carry:
/// 5 MiB.
pub const MAX_BYTES_PER_CALL: usize = 5 * 1024 * 1024;

/// How a [`Producer`](crate::Producer) batches, orders, retries and bounds
/// its buffer. `ProducerConfig::default()` is the recommended start.
#[derive(Clone, Debug, PartialEq)]
pub struct ProducerConfig {
    /// How long a record may wait for others to fill its `PutRecords` call
    /// before the call is made anyway. A full call goes at once. Default
    /// 100 ms.
    pub linger: Duration,
    /// Per-key order (default on): a partition key never has two Kinesis
    /// records in flight, so a retry never puts a key's later record before
    /// an earlier one. Off, records of one key go out in parallel and a
    /// retried record may land after later ones.
    pub ordering: bool,
    /// KPL aggregation (default off): many small records packed, per shard,
    /// into one Kinesis record that consumers (this project's, the Java
    /// KCL, AWS's de-aggregation libraries) unpack.
    pub aggregation: Option<AggregationConfig>,
    /// The most Kinesis records per `PutRecords` call (1 to 500; default
    /// 500).
    pub max_records_per_call: usize,
    /// The most bytes per `PutRecords` call (up to 5 MiB; default 5 MiB).
    pub max_bytes_per_call: usize,
    /// How many `PutRecords` calls may be in flight at once (default 8).
    pub max_in_flight_calls: usize,
    /// The most records buffered (sent and not yet written or failed);
    /// `send` waits while it is reached. Default 50,000.
    pub max_buffered_records: usize,
    /// The most bytes (data and partition keys) buffered; `send` waits
    /// while it is reached. At least 1 MiB and 1 KiB, the largest record.
    /// Default 64 MiB.
    pub max_buffered_bytes: usize,
    /// How long a record is retried after it was sent before it fails with
    /// [`SendError::Expired`](crate::SendError::Expired); `None` retries
    /// until it is written or fails for a reason retrying cannot change.
    /// Default 2 minutes.
    pub record_ttl: Option<Duration>,
    /// Delays between attempts at a throttled or failed record (jittered;
    /// `max_attempts` is ignored: [`record_ttl`](Self::record_ttl) bounds
    /// the retrying). Default 100 ms doubling up to 5 s.
    pub backoff: BackoffConfig,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(100),
            ordering: true,
            aggregation: None,
            max_records_per_call: MAX_RECORDS_PER_CALL,
            max_bytes_per_call: MAX_BYTES_PER_CALL,
            max_in_flight_calls: 8,
            max_buffered_records: 50_000,
            max_buffered_bytes: 64 * 1024 * 1024,
            record_ttl: Some(Duration::from_secs(120)),
            backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
                multiplier: 2.0,
                max_attempts: None,
            },
        }
    }
}

/// How records are packed into KPL aggregates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregationConfig {
    /// The largest aggregate, in bytes, including the partition key it is
    /// put with (at most 1 MiB; default 50 KiB, the KPL's). Larger
    /// aggregates mean fewer Kinesis records but more records read again
    /// when a consumer retries one.
    pub max_bytes: usize,
    /// The most user records in one aggregate (default 4,096).
    pub max_records: usize,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        Self {
            max_bytes: 50 * 1024,
            max_records: 4096,
        }
    }
}

impl ProducerConfig {
    /// Checks every setting; the producer refuses to start with an invalid
    /// one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |setting, reason: String| Err(ConfigError { setting, reason });
        if !(1..=MAX_RECORDS_PER_CALL).contains(&self.max_records_per_call) {
            return fail(
                "max_records_per_call",
                format!("{} is not in 1..=500", self.max_records_per_call),
            );
        }
        // A call must fit the largest record.
        if !(MAX_RECORD_BYTES..=MAX_BYTES_PER_CALL).contains(&self.max_bytes_per_call) {
            return fail(
                "max_bytes_per_call",
                format!(
                    "{} is not between 1 MiB (the largest record) and 5 MiB",
                    self.max_bytes_per_call
                ),
            );
        }
        if self.max_in_flight_calls == 0 {
            return fail("max_in_flight_calls", "must be at least 1".into());
        }
        if self.max_buffered_records == 0 {
            return fail("max_buffered_records", "must be at least 1".into());
        }
        let largest = MAX_RECORD_BYTES + MAX_PARTITION_KEY_CHARS * 4;
        if self.max_buffered_bytes < largest {
            return fail(
                "max_buffered_bytes",
                format!(
                    "{} cannot hold the largest record ({largest} bytes)",
                    self.max_buffered_bytes
                ),
            );
        }
        if u32::try_from(self.max_buffered_bytes).is_err() {
            return fail("max_buffered_bytes", "must be below 4 GiB".into());
        }
        if self.record_ttl.is_some_and(|ttl| ttl.is_zero()) {
            return fail("record_ttl", "must be above zero (or None)".into());
        }
        if self.backoff.initial.is_zero()
            || self.backoff.max < self.backoff.initial
            || self.backoff.max > Duration::from_secs(3600)
        {
            return fail(
                "backoff",
                "initial must be above zero, and max at least initial and at most 1 hour".into(),
            );
        }
        if !(1.0..=10.0).contains(&self.backoff.multiplier) {
            return fail(
                "backoff.multiplier",
                format!("{} is not between 1 and 10", self.backoff.multiplier),
            );
        }
        if let Some(aggregation) = &self.aggregation {
            if !(64..=MAX_RECORD_BYTES).contains(&aggregation.max_bytes) {
                return fail(
                    "aggregation.max_bytes",
                    format!("{} is not in 64..=1 MiB", aggregation.max_bytes),
                );
            }
            if aggregation.max_records < 1 {
                return fail("aggregation.max_records", "must be at least 1".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_settings_are_named() {
        assert_eq!(ProducerConfig::default().validate(), Ok(()));
        let cases: Vec<(&str, ProducerConfig)> = vec![
            (
                "max_records_per_call",
                ProducerConfig {
                    max_records_per_call: 501,
                    ..Default::default()
                },
            ),
            (
                "max_bytes_per_call",
                ProducerConfig {
                    max_bytes_per_call: 1000,
                    ..Default::default()
                },
            ),
            (
                "max_in_flight_calls",
                ProducerConfig {
                    max_in_flight_calls: 0,
                    ..Default::default()
                },
            ),
            (
                "max_buffered_bytes",
                ProducerConfig {
                    max_buffered_bytes: MAX_RECORD_BYTES,
                    ..Default::default()
                },
            ),
            (
                "backoff.multiplier",
                ProducerConfig {
                    backoff: BackoffConfig {
                        multiplier: f64::INFINITY,
                        ..ProducerConfig::default().backoff
                    },
                    ..Default::default()
                },
            ),
            (
                "record_ttl",
                ProducerConfig {
                    record_ttl: Some(Duration::ZERO),
                    ..Default::default()
                },
            ),
            (
                "aggregation.max_bytes",
                ProducerConfig {
                    aggregation: Some(AggregationConfig {
                        max_bytes: 2 * MAX_RECORD_BYTES,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        ];
        for (setting, config) in cases {
            assert_eq!(config.validate().unwrap_err().setting, setting);
        }
    }
}
