//! A worker that records every record it processes as a JSON line (see
//! `kcl_examples::recorder`). Tests and the demo run several replicas and
//! read the files to check what was processed.
//!
//! Settings: `kcl_examples::worker::WorkerArgs` (every flag also as a
//! `KCL_*` variable), `--output` and `--checkpoint-interval-ms`. SIGTERM or Ctrl-C hands the shards
//! over and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use clap::Parser;
use kcl_examples::recorder::RecordLog;
use kcl_examples::worker::{WorkerArgs, exit_code};
use tracing::info;

/// Command-line settings.
#[derive(Parser, Debug)]
#[command(about = "Consume a Kinesis stream and record every processed record as a JSON line")]
struct Args {
    /// The file to append JSON lines to.
    #[arg(long, env = "KCL_OUTPUT")]
    output: PathBuf,
    /// Checkpoint after a batch only if this many milliseconds have passed
    /// since the shard's last checkpoint (0: after every batch). Shard ends
    /// and graceful stops always checkpoint.
    #[arg(long, env = "KCL_CHECKPOINT_INTERVAL_MS", default_value_t = 0)]
    checkpoint_interval_ms: u64,
    #[command(flatten)]
    worker: WorkerArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    args.worker.init_logging();
    exit_code("recorder", run(args).await)
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let builder = args.worker.builder().await?;
    // Log lines name the worker, whose id the builder settles (generating
    // one by default), so the log is opened after building and reaches the
    // factory through a cell set before the scheduler runs.
    let log_slot: Arc<OnceLock<RecordLog>> = Arc::default();
    let factory_slot = Arc::clone(&log_slot);
    let scheduler = builder.build(move |shard: &str| {
        factory_slot
            .get()
            .expect("the log is opened before the scheduler runs")
            .recorder(shard)
    })?;
    let log = RecordLog::open(&args.output, scheduler.worker_id())
        .map_err(|e| format!("--output {}: {e}", args.output.display()))?
        .with_checkpoint_interval(std::time::Duration::from_millis(
            args.checkpoint_interval_ms,
        ));
    let _ = log_slot.set(log);
    info!(worker_id = scheduler.worker_id(), output = %args.output.display(), "recorder starting");
    args.worker.run(scheduler).await
}
