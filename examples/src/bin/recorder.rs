//! A worker that records every record it processes as a JSON line (see
//! `kcl_examples::recorder`). Tests and the demo run several replicas and
//! read the files to check what was processed.
//!
//! Every flag can also be given as an environment variable: `KCL_` and the
//! flag's name in upper snake case (`--stream-name` is `KCL_STREAM_NAME`).
//! AWS access comes from the standard chain (`aws-config`): credentials,
//! region, and `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL_DYNAMODB` for
//! the local stack. SIGTERM or Ctrl-C hands the shards over and exits 0.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aws_config::BehaviorVersion;
use clap::{Parser, ValueEnum};
use kcl_core::{InitialPosition, Scheduler};
use kcl_examples::recorder::RecordLog;
use tracing::{error, info};

/// Where shards without a checkpoint start.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Position {
    /// The oldest record in the shard.
    #[value(name = "trim_horizon", alias = "trim-horizon")]
    TrimHorizon,
    /// Records written after the worker starts.
    Latest,
}

/// How records are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Retrieval {
    /// GetRecords polling.
    Polling,
    /// Enhanced fan-out (SubscribeToShard).
    Fanout,
}

/// Command-line settings.
#[derive(Parser, Debug)]
#[command(about = "Consume a Kinesis stream and record every processed record as a JSON line")]
struct Args {
    /// The stream to consume.
    #[arg(long, env = "KCL_STREAM_NAME")]
    stream_name: String,
    /// The application name (the lease table's name).
    #[arg(long, env = "KCL_APPLICATION_NAME")]
    application_name: String,
    /// The file to append JSON lines to.
    #[arg(long, env = "KCL_OUTPUT")]
    output: PathBuf,
    /// This worker's id (default: host name and a random suffix).
    #[arg(long, env = "KCL_WORKER_ID")]
    worker_id: Option<String>,
    /// Where shards without a checkpoint start.
    #[arg(
        long,
        env = "KCL_INITIAL_POSITION",
        value_enum,
        default_value = "trim_horizon"
    )]
    initial_position: Position,
    /// Failover time in milliseconds (heartbeats every half of it).
    #[arg(long, env = "KCL_FAILOVER_TIME_MS", default_value_t = 10_000)]
    failover_time_ms: u64,
    /// Assignment interval in milliseconds.
    #[arg(long, env = "KCL_ASSIGNMENT_INTERVAL_MS", default_value_t = 10_000)]
    assignment_interval_ms: u64,
    /// Serve metrics and health checks on this address (not available yet).
    #[arg(long, env = "KCL_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// How records are read.
    #[arg(long, env = "KCL_RETRIEVAL", value_enum, default_value = "polling")]
    retrieval: Retrieval,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("{error}");
            eprintln!("recorder: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(addr) = &args.metrics_addr {
        return Err(format!(
            "--metrics-addr {addr}: metrics are not implemented yet; leave the flag out"
        )
        .into());
    }
    if args.retrieval == Retrieval::Fanout {
        return Err(
            "--retrieval fanout: enhanced fan-out is not implemented yet; use polling".into(),
        );
    }
    let aws = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let mut builder = Scheduler::builder()
        .application_name(&args.application_name)
        .stream_name(&args.stream_name)
        .initial_position(match args.initial_position {
            Position::TrimHorizon => InitialPosition::TrimHorizon,
            Position::Latest => InitialPosition::Latest,
        })
        .failover_time(Duration::from_millis(args.failover_time_ms))
        .assignment_interval(Duration::from_millis(args.assignment_interval_ms))
        .sdk_config(&aws);
    if let Some(worker_id) = &args.worker_id {
        builder = builder.worker_id(worker_id);
    }
    // Log lines name the worker, whose id the builder settles (generating
    // one by default), so the log is opened after building and reaches the
    // factory through a cell set before the scheduler runs.
    let log_slot: std::sync::Arc<std::sync::OnceLock<RecordLog>> = Default::default();
    let factory_slot = std::sync::Arc::clone(&log_slot);
    let scheduler = builder.build(move |shard: &str| {
        factory_slot
            .get()
            .expect("the log is opened before the scheduler runs")
            .recorder(shard)
    })?;
    let log = RecordLog::open(&args.output, scheduler.worker_id())
        .map_err(|e| format!("--output {}: {e}", args.output.display()))?;
    let _ = log_slot.set(log);
    info!(worker_id = scheduler.worker_id(), output = %args.output.display(), "recorder starting");

    let shutdown = scheduler.shutdown_handle();
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        info!("stop signal received; handing shards over");
        shutdown.shutdown();
    });
    scheduler.run().await?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn wait_for_stop_signal() {
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
