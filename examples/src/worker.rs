//! What every example worker shares: its settings as flags and `KCL_*`
//! environment variables, logging, the metrics and probe endpoint, and a
//! clean stop on SIGTERM or Ctrl-C.
//!
//! Every flag can also be given as an environment variable: `KCL_` and the
//! flag's name in upper snake case (`--stream-name` is `KCL_STREAM_NAME`).
//! AWS access comes from the standard chain (`aws-config`): credentials,
//! region, and `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL_DYNAMODB`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use aws_config::BehaviorVersion;
use clap::{Args, ValueEnum};
use kcl_core::retrieval::RetrievalConfig;
use kcl_core::telemetry::TelemetryServer;
use kcl_core::{InitialPosition, Scheduler, SchedulerBuilder, StreamConfig};
use kcl_lease::StreamIdentifier;
use tracing::info;

/// Where shards without a checkpoint start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Position {
    /// The oldest record in the shard.
    #[value(name = "trim_horizon", alias = "trim-horizon")]
    TrimHorizon,
    /// Records written after the worker starts.
    Latest,
}

/// How records are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Retrieval {
    /// GetRecords polling.
    Polling,
    /// Enhanced fan-out (SubscribeToShard).
    Fanout,
}

/// How log lines are written (to standard error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the span fields (worker and shard
    /// ids) on every line.
    Json,
}

/// The settings of a worker. Durations are in milliseconds.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The stream to consume. Given more than once (or as a comma-separated
    /// list in `KCL_STREAM_NAME`), one multi-stream application consumes
    /// them all from one lease table, its leases keyed
    /// `account:stream:epoch:shardId` as the Java KCL keys them.
    #[arg(
        long = "stream-name",
        env = "KCL_STREAM_NAME",
        value_delimiter = ',',
        required = true
    )]
    pub stream_names: Vec<String>,
    /// Consume the streams as a multi-stream application even when only
    /// one is given (so that a fleet whose list shrank to one stream keeps
    /// its table). A stream given as `account:stream:epoch` is named as
    /// the table's leases name it.
    #[arg(long, env = "KCL_MULTI_STREAM")]
    pub multi_stream: bool,
    /// The application name (the lease table's name).
    #[arg(long, env = "KCL_APPLICATION_NAME")]
    pub application_name: String,
    /// This worker's id (default: host name and a random suffix).
    #[arg(long, env = "KCL_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Where shards without a checkpoint start.
    #[arg(
        long,
        env = "KCL_INITIAL_POSITION",
        value_enum,
        default_value = "trim_horizon"
    )]
    pub initial_position: Position,
    /// Heartbeat silence after which a worker's leases are taken.
    #[arg(long, env = "KCL_FAILOVER_TIME_MS", default_value_t = 10_000)]
    pub failover_time_ms: u64,
    /// How often the worker heartbeats (default: half the failover time).
    #[arg(long, env = "KCL_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,
    /// How long before the failover time after its last confirmed heartbeat
    /// a worker stops processing (default: a fifth of the failover time).
    #[arg(long, env = "KCL_SAFETY_MARGIN_MS")]
    pub safety_margin_ms: Option<u64>,
    /// How often leases are balanced.
    #[arg(long, env = "KCL_ASSIGNMENT_INTERVAL_MS", default_value_t = 10_000)]
    pub assignment_interval_ms: u64,
    /// How often a lease being handed over is checked.
    #[arg(long, env = "KCL_HANDOFF_POLL_INTERVAL_MS", default_value_t = 100)]
    pub handoff_poll_interval_ms: u64,
    /// How often the worker reads its own heartbeat item for leases handed
    /// to it by a stopping worker and for an operator's eviction (0: never;
    /// they then wait for the next assignment round).
    #[arg(long, env = "KCL_WATCH_INTERVAL_MS", default_value_t = 500)]
    pub watch_interval_ms: u64,
    /// The most leases this worker holds (default: no limit).
    #[arg(long, env = "KCL_MAX_LEASES_PER_WORKER")]
    pub max_leases_per_worker: Option<usize>,
    /// How often shards are listed.
    #[arg(long, env = "KCL_SHARD_SYNC_INTERVAL_MS", default_value_t = 60_000)]
    pub shard_sync_interval_ms: u64,
    /// How often a waiting child shard checks its parents.
    #[arg(long, env = "KCL_PARENT_POLL_INTERVAL_MS", default_value_t = 1_000)]
    pub parent_poll_interval_ms: u64,
    /// How long an unneeded lease stays before it is deleted.
    #[arg(long, env = "KCL_LEASE_CLEANUP_DELAY_MS", default_value_t = 60_000)]
    pub lease_cleanup_delay_ms: u64,
    /// The most records one GetRecords call asks for (1 to 10,000).
    #[arg(long, env = "KCL_MAX_RECORDS_PER_CALL", default_value_t = 10_000)]
    pub max_records_per_call: u32,
    /// Wait between GetRecords calls once a shard is caught up.
    #[arg(long, env = "KCL_IDLE_TIME_BETWEEN_CALLS_MS", default_value_t = 250)]
    pub idle_time_between_calls_ms: u64,
    /// Cancel a processor call that runs longer than this and retry it as a
    /// failure (0: no timeout, the default).
    #[arg(long, env = "KCL_PROCESSOR_TIMEOUT_MS", default_value_t = 0)]
    pub processor_timeout_ms: u64,
    /// Report a shard stalled (metric, log, `kcl-admin status`) when a
    /// processor call or its reads have not returned for this long.
    #[arg(long, env = "KCL_STALL_REPORT_AFTER_MS", default_value_t = 300_000)]
    pub stall_report_after_ms: u64,
    /// How long a stop may take before the remaining shards are forced out.
    #[arg(long, env = "KCL_SHUTDOWN_TIMEOUT_MS", default_value_t = 20_000)]
    pub shutdown_timeout_ms: u64,
    /// Serve /metrics, /healthz and /readyz on this address (host:port).
    #[arg(long, env = "KCL_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// How records are read.
    #[arg(long, env = "KCL_RETRIEVAL", value_enum, default_value = "polling")]
    pub retrieval: Retrieval,
    /// With fan-out, how long a shard may send nothing before one polling
    /// call checks whether it ended (for endpoints that do not report the
    /// child shards in the subscription).
    #[arg(long, env = "KCL_FANOUT_SHARD_END_CHECK_MS", default_value_t = 30_000)]
    pub fanout_shard_end_check_ms: u64,
    /// The enhanced fan-out consumer's name (default: the application name).
    #[arg(long, env = "KCL_CONSUMER_NAME")]
    pub consumer_name: Option<String>,
    /// How log lines are written.
    #[arg(long, env = "KCL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl WorkerArgs {
    /// Sets up logging to standard error: `RUST_LOG` filters (default
    /// `info`), text or JSON as asked.
    pub fn init_logging(&self) {
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Json => builder.json().init(),
            LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        }
    }

    /// A scheduler builder with every setting applied, using the standard
    /// AWS configuration chain.
    pub async fn builder(&self) -> Result<SchedulerBuilder, String> {
        let ms = Duration::from_millis;
        let aws = aws_config::defaults(BehaviorVersion::latest()).load().await;
        let mut builder = Scheduler::builder().application_name(&self.application_name);
        builder = match self.stream_names.as_slice() {
            [one] if !self.multi_stream && StreamIdentifier::parse(one).is_err() => {
                builder.stream_name(one)
            }
            several => several.iter().fold(builder, |builder, name| {
                builder.stream(match StreamIdentifier::parse(name) {
                    Ok(identifier) => StreamConfig::with_identifier(identifier),
                    Err(_) => StreamConfig::new(name),
                })
            }),
        };
        let builder = if self.processor_timeout_ms > 0 {
            builder.processor_timeout(ms(self.processor_timeout_ms))
        } else {
            builder
        };
        let mut builder = builder
            .initial_position(match self.initial_position {
                Position::TrimHorizon => InitialPosition::TrimHorizon,
                Position::Latest => InitialPosition::Latest,
            })
            .failover_time(ms(self.failover_time_ms))
            .assignment_interval(ms(self.assignment_interval_ms))
            .handoff_poll_interval(ms(self.handoff_poll_interval_ms))
            .watch_interval((self.watch_interval_ms > 0).then(|| ms(self.watch_interval_ms)))
            .shard_sync_interval(ms(self.shard_sync_interval_ms))
            .parent_poll_interval(ms(self.parent_poll_interval_ms))
            .lease_cleanup_delay(ms(self.lease_cleanup_delay_ms))
            .shutdown_timeout(ms(self.shutdown_timeout_ms))
            .stall_report_after(ms(self.stall_report_after_ms))
            .retrieval(RetrievalConfig {
                max_records_per_call: self.max_records_per_call,
                idle_time_between_calls: ms(self.idle_time_between_calls_ms),
                fanout_shard_end_check: ms(self.fanout_shard_end_check_ms),
                ..RetrievalConfig::default()
            })
            .sdk_config(&aws);
        if let Some(interval) = self.heartbeat_interval_ms {
            builder = builder.heartbeat_interval(ms(interval));
        }
        if let Some(margin) = self.safety_margin_ms {
            builder = builder.safety_margin(ms(margin));
        }
        if let Some(max) = self.max_leases_per_worker {
            builder = builder.max_leases_per_worker(max);
        }
        if let Some(worker_id) = &self.worker_id {
            builder = builder.worker_id(worker_id);
        }
        if self.retrieval == Retrieval::Fanout {
            builder = builder.fan_out(self.consumer_name.clone());
        }
        Ok(builder)
    }

    /// Runs `scheduler` until SIGTERM or Ctrl-C, serving metrics and probes
    /// if asked, then hands the shards over and returns.
    pub async fn run(&self, scheduler: Scheduler) -> Result<(), Box<dyn std::error::Error>> {
        let _telemetry = match &self.metrics_addr {
            Some(addr) => {
                let recorder = TelemetryServer::install_recorder()?;
                Some(TelemetryServer::start(addr, recorder, scheduler.health()).await?)
            }
            None => None,
        };
        let shutdown = scheduler.shutdown_handle();
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            info!("stop signal received; handing shards over");
            shutdown.shutdown();
        });
        scheduler.run().await?;
        Ok(())
    }
}

/// Logs a worker's failure and turns its outcome into the process's exit
/// code: 0 after a clean stop, 1 after an error.
pub fn exit_code(program: &str, outcome: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("{program}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
