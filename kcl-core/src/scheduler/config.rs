//! The scheduler's settings and the builder that validates them.

use std::sync::Arc;
use std::time::Duration;

use crate::backoff::BackoffConfig;
use kcl_lease::{DynamoDbLeaseStore, LeaseConfig, LeaseStore};

use super::Scheduler;
use crate::RecordProcessorFactory;
use crate::consumer::ProcessorRetryPolicy;
use crate::kinesis::{Kinesis, SdkKinesis};
use crate::retrieval::RetrievalConfig;
use crate::streams::{InitialPosition, StreamConfig, StreamsConfig};

/// How a worker reads its shards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RetrievalMode {
    /// `GetRecords` polling (the default).
    #[default]
    Polling,
    /// Enhanced fan-out: `SubscribeToShard` on a registered stream consumer
    /// (registered at start if absent; named after the application unless
    /// given).
    FanOut {
        /// The stream consumer's name; default: the application name.
        consumer_name: Option<String>,
    },
}

/// Every setting of a worker, validated by [`SchedulerBuilder::build`].
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// The application's name: the lease table's name (and
    /// `<name>-Workers` for heartbeats). Every worker of one application
    /// uses the same.
    pub application_name: String,
    /// The stream or streams to consume.
    pub streams: StreamsConfig,
    /// Where new shards start (for each stream of a multi-stream
    /// application that names no initial position of its own).
    pub initial_position: InitialPosition,
    /// This worker's lease settings: id, failover time, heartbeat and
    /// assignment intervals, lease limit.
    pub lease: LeaseConfig,
    /// How often the stream's shards are listed to create missing leases.
    /// Default 60 s.
    pub shard_sync_interval: Duration,
    /// How long a finished lease whose children have all started (or the
    /// lease of a shard gone from the stream) stays before it is deleted.
    /// Default 60 s.
    pub lease_cleanup_delay: Duration,
    /// In a multi-stream application, how long the leases of a stream it no
    /// longer consumes (removed from its list, or deleted) stay before they
    /// are deleted; `None` keeps them. Default 1 hour.
    pub former_stream_cleanup_delay: Option<Duration>,
    /// How often a child shard's consumer checks whether its parents are
    /// finished. Default 1 s.
    pub parent_poll_interval: Duration,
    /// How records are read.
    pub retrieval: RetrievalConfig,
    /// Polling or enhanced fan-out.
    pub retrieval_mode: RetrievalMode,
    /// How a failing batch is retried.
    pub retry_policy: ProcessorRetryPolicy,
    /// How long a shard may go without progress (a processor call that
    /// does not return, or reads that do not succeed) before the worker
    /// reports it stalled: `kcl_stalled_shards`, a warning in the log, and
    /// its heartbeat (`kcl-admin status`). Default 5 min.
    pub stall_report_after: Duration,
    /// How long one processor call may run before it is cancelled and
    /// handled as a failure (retried with backoff as `retry_policy` says,
    /// counted, logged). Default `None`: as long as it takes.
    pub processor_timeout: Option<Duration>,
    /// Backoff between failed Kinesis calls: 100 ms doubling to 10 s.
    pub kinesis_backoff: BackoffConfig,
    /// How long a stopping worker waits for its shards to checkpoint and be
    /// released before it stops the rest without checkpointing. Default 20 s
    /// (under Kubernetes' default 30 s grace period).
    pub shutdown_timeout: Duration,
}

/// A setting that cannot work, named.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required setting was not given.
    #[error("{setting} is required")]
    Missing {
        /// The setting.
        setting: &'static str,
    },
    /// A setting's value cannot work.
    #[error("{setting}: {reason}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// Why.
        reason: String,
    },
}

/// Builds a [`Scheduler`]; see each setter for defaults.
#[derive(Default)]
pub struct SchedulerBuilder {
    application_name: Option<String>,
    stream_name: Option<String>,
    streams: Vec<StreamConfig>,
    former_stream_cleanup_delay: Option<Option<Duration>>,
    worker_id: Option<String>,
    initial_position: Option<InitialPosition>,
    failover_time: Option<Duration>,
    heartbeat_interval: Option<Duration>,
    safety_margin: Option<Duration>,
    assignment_interval: Option<Duration>,
    handoff_poll_interval: Option<Duration>,
    watch_interval: Option<Option<Duration>>,
    max_leases_per_worker: Option<usize>,
    shard_sync_interval: Option<Duration>,
    lease_cleanup_delay: Option<Duration>,
    parent_poll_interval: Option<Duration>,
    retrieval: Option<RetrievalConfig>,
    retrieval_mode: RetrievalMode,
    retry_policy: Option<ProcessorRetryPolicy>,
    processor_timeout: Option<Duration>,
    stall_report_after: Option<Duration>,
    shutdown_timeout: Option<Duration>,
    clients: Option<(aws_sdk_kinesis::Client, aws_sdk_dynamodb::Client)>,
    backends: Option<(Arc<dyn Kinesis>, Arc<dyn LeaseStore>)>,
}

impl SchedulerBuilder {
    /// The application's name, which names the lease table. Required.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// The stream to consume, for an application of one stream (leases
    /// keyed by shard id). Required, unless streams are given with
    /// [`stream`](Self::stream).
    pub fn stream_name(mut self, name: impl Into<String>) -> Self {
        self.stream_name = Some(name.into());
        self
    }

    /// Adds a stream to a multi-stream application: one lease table for
    /// every stream, leases keyed `account:stream:epoch:shardId` as the Java
    /// KCL keys them. Call once per stream (once makes a multi-stream
    /// application of one stream); not together with
    /// [`stream_name`](Self::stream_name).
    pub fn stream(mut self, stream: StreamConfig) -> Self {
        self.streams.push(stream);
        self
    }

    /// In a multi-stream application, how long the leases of a stream no
    /// longer consumed (removed from the list, or deleted) stay before they
    /// are deleted; `None` keeps them for good. Default 1 hour.
    pub fn former_stream_cleanup_delay(mut self, delay: Option<Duration>) -> Self {
        self.former_stream_cleanup_delay = Some(delay);
        self
    }

    /// This worker's id, unique in the fleet. Default: the host name and a
    /// random suffix.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// Where shards without a checkpoint start. Default `TrimHorizon`.
    pub fn initial_position(mut self, position: InitialPosition) -> Self {
        self.initial_position = Some(position);
        self
    }

    /// How long a silent worker keeps its leases. Default 10 s.
    pub fn failover_time(mut self, time: Duration) -> Self {
        self.failover_time = Some(time);
        self
    }

    /// How often the worker heartbeats. Default: half the failover time.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// How long before the failover time after its last confirmed
    /// heartbeat a worker stops processing, so it has stopped before
    /// another worker may take its shards. Default: a fifth of the failover
    /// time (2 s); must be less than the failover time minus the heartbeat
    /// interval.
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.safety_margin = Some(margin);
        self
    }

    /// How often leases are balanced. Default 10 s.
    pub fn assignment_interval(mut self, interval: Duration) -> Self {
        self.assignment_interval = Some(interval);
        self
    }

    /// How often a worker checks a lease it asked for, or was handed, until
    /// the old owner releases it (and a stopping worker looks for
    /// requests). Default 100 ms.
    pub fn handoff_poll_interval(mut self, interval: Duration) -> Self {
        self.handoff_poll_interval = Some(interval);
        self
    }

    /// How often a worker reads its own heartbeat item, for leases a
    /// stopping worker handed to it and for an operator's eviction; this is
    /// what lets a planned stop hand every shard over in about a second.
    /// `None` turns the watch off (saving one small read per interval): a
    /// stopping worker's shards then move at the other workers' next
    /// rounds. Default 500 ms.
    pub fn watch_interval(mut self, interval: Option<Duration>) -> Self {
        self.watch_interval = Some(interval);
        self
    }

    /// The most leases this worker holds. Default: no limit.
    pub fn max_leases_per_worker(mut self, max: usize) -> Self {
        self.max_leases_per_worker = Some(max);
        self
    }

    /// How often shards are listed. Default 60 s.
    pub fn shard_sync_interval(mut self, interval: Duration) -> Self {
        self.shard_sync_interval = Some(interval);
        self
    }

    /// How long a lease that is no longer needed stays before it is
    /// deleted. Default 60 s.
    pub fn lease_cleanup_delay(mut self, delay: Duration) -> Self {
        self.lease_cleanup_delay = Some(delay);
        self
    }

    /// How often a waiting child shard checks its parents. Default 1 s.
    pub fn parent_poll_interval(mut self, interval: Duration) -> Self {
        self.parent_poll_interval = Some(interval);
        self
    }

    /// How records are read. Default [`RetrievalConfig::default`].
    pub fn retrieval(mut self, retrieval: RetrievalConfig) -> Self {
        self.retrieval = Some(retrieval);
        self
    }

    /// Reads through enhanced fan-out (`SubscribeToShard`) instead of
    /// polling, on the stream consumer `consumer_name` (default: the
    /// application name), registered at start if absent.
    pub fn fan_out(mut self, consumer_name: Option<String>) -> Self {
        self.retrieval_mode = RetrievalMode::FanOut { consumer_name };
        self
    }

    /// How a failing batch is retried. Default: forever.
    pub fn retry_policy(mut self, policy: ProcessorRetryPolicy) -> Self {
        self.retry_policy = Some(policy);
        self
    }

    /// How long a shard may go without progress before it is reported
    /// stalled (see [`SchedulerConfig::stall_report_after`]). Default 5 min.
    pub fn stall_report_after(mut self, after: Duration) -> Self {
        self.stall_report_after = Some(after);
        self
    }

    /// Cancels a processor call (`initialize`, `process_records`,
    /// `shard_ended`) that runs longer than `timeout` and handles it as a
    /// failure: retried with backoff as the retry policy says, counted in
    /// `kcl_processor_timeouts_total`, logged with the shard. A processor
    /// stuck on a call then no longer holds its shard forever. Default: no
    /// timeout. Choose it well above the slowest batch you expect.
    pub fn processor_timeout(mut self, timeout: Duration) -> Self {
        self.processor_timeout = Some(timeout);
        self
    }

    /// How long a stop waits for shards to be handed over. Default 20 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }

    /// The AWS clients to use (built from `aws_config`, so the standard
    /// credential chain and `AWS_ENDPOINT_URL_*` apply).
    pub fn aws_clients(
        mut self,
        kinesis: &aws_sdk_kinesis::Client,
        dynamodb: &aws_sdk_dynamodb::Client,
    ) -> Self {
        self.clients = Some((kinesis.clone(), dynamodb.clone()));
        self
    }

    /// Both clients from one `aws_config` configuration.
    pub fn sdk_config(self, config: &aws_config::SdkConfig) -> Self {
        let kinesis = aws_sdk_kinesis::Client::new(config);
        let dynamodb = aws_sdk_dynamodb::Client::new(config);
        self.aws_clients(&kinesis, &dynamodb)
    }

    /// Other implementations of Kinesis and the lease table (in-memory ones
    /// for tests). Takes precedence over [`aws_clients`](Self::aws_clients).
    pub fn backends(mut self, kinesis: Arc<dyn Kinesis>, store: Arc<dyn LeaseStore>) -> Self {
        self.backends = Some((kinesis, store));
        self
    }

    /// Validates the settings and builds the scheduler around `factory`.
    pub fn build(mut self, factory: impl RecordProcessorFactory) -> Result<Scheduler, ConfigError> {
        let application_name = self.application_name.take().ok_or(ConfigError::Missing {
            setting: "application_name",
        })?;
        check_name(
            "application_name",
            &application_name,
            3,
            255 - "-Workers".len(),
        )?;
        let streams = streams_config(self.stream_name.take(), std::mem::take(&mut self.streams))?;
        let former_stream_cleanup_delay = self
            .former_stream_cleanup_delay
            .unwrap_or(Some(Duration::from_secs(3600)));
        if former_stream_cleanup_delay.is_some_and(|delay| delay.is_zero()) {
            return Err(ConfigError::Invalid {
                setting: "former_stream_cleanup_delay",
                reason: "must be greater than zero (None keeps the leases)".into(),
            });
        }
        let lease = self.lease_config()?;
        let retrieval = self.retrieval.unwrap_or_default();
        retrieval.validate()?;
        let shard_sync_interval = self.shard_sync_interval.unwrap_or(Duration::from_secs(60));
        let shutdown_timeout = self.shutdown_timeout.unwrap_or(Duration::from_secs(20));
        let parent_poll_interval = self.parent_poll_interval.unwrap_or(Duration::from_secs(1));
        let lease_cleanup_delay = self.lease_cleanup_delay.unwrap_or(Duration::from_secs(60));
        for (setting, value) in [
            ("shard_sync_interval", shard_sync_interval),
            ("shutdown_timeout", shutdown_timeout),
            ("parent_poll_interval", parent_poll_interval),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid {
                    setting,
                    reason: "must be greater than zero".into(),
                });
            }
        }
        let stall_report_after = self.stall_report_after.unwrap_or(Duration::from_secs(300));
        if stall_report_after.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "stall_report_after",
                reason: "must be greater than zero".into(),
            });
        }
        if self.processor_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::Invalid {
                setting: "processor_timeout",
                reason: "must be greater than zero (leave it unset for no timeout)".into(),
            });
        }
        if let Some(
            ProcessorRetryPolicy::SkipBatchAfter { attempts: 0, .. }
            | ProcessorRetryPolicy::DeadLetterAfter { attempts: 0, .. },
        ) = self.retry_policy
        {
            return Err(ConfigError::Invalid {
                setting: "retry_policy",
                reason: "SkipBatchAfter and DeadLetterAfter need at least 1 attempt".into(),
            });
        }
        let (kinesis, store): (Arc<dyn Kinesis>, Arc<dyn LeaseStore>) =
            match (self.backends, self.clients) {
                (Some(backends), _) => backends,
                (None, Some((kinesis, dynamodb))) => (
                    Arc::new(SdkKinesis::new(&kinesis)),
                    Arc::new(DynamoDbLeaseStore::new(&dynamodb, &application_name)),
                ),
                (None, None) => {
                    return Err(ConfigError::Missing {
                        setting: "aws_clients (or sdk_config)",
                    });
                }
            };
        let config = SchedulerConfig {
            application_name,
            streams,
            initial_position: self
                .initial_position
                .unwrap_or(InitialPosition::TrimHorizon),
            lease,
            shard_sync_interval,
            lease_cleanup_delay,
            former_stream_cleanup_delay,
            parent_poll_interval,
            retrieval,
            retrieval_mode: self.retrieval_mode,
            retry_policy: self.retry_policy.unwrap_or_default(),
            processor_timeout: self.processor_timeout,
            stall_report_after,
            kinesis_backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
                ..BackoffConfig::default()
            }
            .without_limit(),
            shutdown_timeout,
        };
        Scheduler::new(config, kinesis, store, Arc::new(factory)).map_err(|e| {
            ConfigError::Invalid {
                setting: "lease settings",
                reason: e.to_string(),
            }
        })
    }

    /// The lease settings, validated.
    fn lease_config(&self) -> Result<LeaseConfig, ConfigError> {
        let worker_id = match self.worker_id.clone() {
            Some(id) => id,
            None => default_worker_id(),
        };
        let mut lease = LeaseConfig::new(worker_id);
        if let Some(failover) = self.failover_time {
            lease = lease.with_failover_time(failover);
        }
        if let Some(interval) = self.heartbeat_interval {
            lease.heartbeat_interval = interval;
        }
        if let Some(margin) = self.safety_margin {
            lease.safety_margin = margin;
        }
        if let Some(interval) = self.assignment_interval {
            lease.assignment_interval = interval;
        }
        if let Some(interval) = self.handoff_poll_interval {
            lease.handoff_poll_interval = interval;
        }
        if let Some(interval) = self.watch_interval {
            lease.watch_interval = interval;
        }
        lease.max_leases_per_worker = self.max_leases_per_worker;
        lease.validate().map_err(|e| ConfigError::Invalid {
            setting: "lease settings",
            reason: e.to_string(),
        })?;
        Ok(lease)
    }
}

/// Checks an AWS resource name: length and the characters Kinesis and
/// DynamoDB accept (`a-z A-Z 0-9 _ - .`).
fn check_name(
    setting: &'static str,
    name: &str,
    min: usize,
    max: usize,
) -> Result<(), ConfigError> {
    if name.len() < min || name.len() > max {
        return Err(ConfigError::Invalid {
            setting,
            reason: format!("{name:?} must be {min} to {max} characters long"),
        });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(ConfigError::Invalid {
            setting,
            reason: format!("{name:?} contains {bad:?}; use letters, digits, '_', '-' and '.'"),
        });
    }
    Ok(())
}

/// The host name (from `HOSTNAME` or the kernel) and a random suffix, so
/// two workers on one host, or a restarted pod, never share an id.
fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// The stream or streams to consume: `stream_name` for one, `streams` for
/// a multi-stream application, never both; names checked, none twice.
fn streams_config(
    stream_name: Option<String>,
    streams: Vec<StreamConfig>,
) -> Result<StreamsConfig, ConfigError> {
    match (stream_name, streams.is_empty()) {
        (Some(_), false) => Err(ConfigError::Invalid {
            setting: "stream_name",
            reason: "give either stream_name (one stream) or stream (each stream of a \
                     multi-stream application), not both"
                .into(),
        }),
        (None, true) => Err(ConfigError::Missing {
            setting: "stream_name",
        }),
        (Some(name), true) => {
            check_name("stream_name", &name, 1, 128)?;
            Ok(StreamsConfig::Single(name))
        }
        (None, false) => {
            let mut names = std::collections::BTreeSet::new();
            for stream in &streams {
                check_name("stream", stream.name(), 1, 128)?;
                if !names.insert(stream.name()) {
                    return Err(ConfigError::Invalid {
                        setting: "stream",
                        reason: format!("{:?} is given more than once", stream.name()),
                    });
                }
            }
            Ok(StreamsConfig::Multi(streams))
        }
    }
}

#[cfg(test)]
mod tests {
    use kcl_lease::InMemoryLeaseStore;

    use super::*;
    use crate::kinesis::InMemoryKinesis;
    use crate::test_support::NoopProcessor;

    fn builder() -> SchedulerBuilder {
        Scheduler::builder()
            .application_name("orders-app")
            .stream_name("orders")
            .backends(
                Arc::new(InMemoryKinesis::new()),
                Arc::new(InMemoryLeaseStore::new()),
            )
    }

    fn error(builder: SchedulerBuilder) -> ConfigError {
        match builder.build(|_: &str| NoopProcessor) {
            Ok(_) => panic!("expected a configuration error"),
            Err(error) => error,
        }
    }

    #[test]
    fn valid_settings_build_with_defaults() {
        let scheduler = builder().build(|_: &str| NoopProcessor).unwrap();
        let config = scheduler.config();
        assert_eq!(config.initial_position, InitialPosition::TrimHorizon);
        assert_eq!(config.lease.failover_time, Duration::from_secs(10));
        assert!(!config.lease.worker_id.is_empty());
        let other = builder().build(|_: &str| NoopProcessor).unwrap();
        assert_ne!(config.lease.worker_id, other.config().lease.worker_id);
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases = [
            (Scheduler::builder().stream_name("s"), "application_name"),
            (builder().application_name("ab"), "application_name"),
            (builder().application_name("my app"), "application_name"),
            (builder().stream_name(""), "stream_name"),
            (
                builder().stream(StreamConfig::new("refunds")),
                "stream_name",
            ),
            (
                Scheduler::builder()
                    .application_name("apps")
                    .stream(StreamConfig::new("orders"))
                    .stream(StreamConfig::new("orders")),
                "stream",
            ),
            (
                Scheduler::builder()
                    .application_name("apps")
                    .stream(StreamConfig::new("bad name")),
                "stream",
            ),
            (
                builder().former_stream_cleanup_delay(Some(Duration::ZERO)),
                "former_stream_cleanup_delay",
            ),
            (
                builder().retrieval(RetrievalConfig {
                    max_records_per_call: 10_001,
                    ..RetrievalConfig::default()
                }),
                "max_records_per_call",
            ),
            (
                builder().retrieval(RetrievalConfig {
                    max_prefetch_bytes: 0,
                    ..RetrievalConfig::default()
                }),
                "max_prefetch_bytes",
            ),
            (
                builder().retrieval(RetrievalConfig {
                    fanout_shard_end_check: Duration::ZERO,
                    ..RetrievalConfig::default()
                }),
                "fanout_shard_end_check",
            ),
            (
                builder().shard_sync_interval(Duration::ZERO),
                "shard_sync_interval",
            ),
            (
                builder().shutdown_timeout(Duration::ZERO),
                "shutdown_timeout",
            ),
            (
                builder().retry_policy(ProcessorRetryPolicy::SkipBatchAfter {
                    attempts: 0,
                    backoff: BackoffConfig::default(),
                }),
                "retry_policy",
            ),
        ];
        for (builder, setting) in cases {
            let message = error(builder).to_string();
            assert!(message.starts_with(setting), "{message}");
        }
        let message = error(
            builder()
                .failover_time(Duration::from_secs(4))
                .heartbeat_interval(Duration::from_secs(3)),
        )
        .to_string();
        assert!(message.contains("heartbeat_interval"), "{message}");
        let message = error(builder().worker_id("")).to_string();
        assert!(message.contains("worker_id"), "{message}");
        let message = error(
            Scheduler::builder()
                .application_name("orders-app")
                .stream_name("orders"),
        )
        .to_string();
        assert!(message.contains("aws_clients"), "{message}");
    }

    #[test]
    fn streams_given_one_by_one_make_a_multi_stream_application() {
        let scheduler = Scheduler::builder()
            .application_name("apps")
            .stream(StreamConfig::new("orders"))
            .stream(StreamConfig::new("refunds").initial_position(InitialPosition::Latest))
            .backends(
                Arc::new(InMemoryKinesis::new()),
                Arc::new(InMemoryLeaseStore::new()),
            )
            .build(|_: &str| NoopProcessor)
            .unwrap();
        let config = scheduler.config();
        assert!(config.streams.is_multi_stream());
        assert_eq!(config.streams.names(), ["orders", "refunds"]);
        assert_eq!(
            config.former_stream_cleanup_delay,
            Some(Duration::from_secs(3600))
        );
        assert!(
            !builder()
                .build(|_: &str| NoopProcessor)
                .unwrap()
                .config()
                .streams
                .is_multi_stream()
        );
    }
}
