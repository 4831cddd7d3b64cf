//! A realistic example worker: counts records and bytes per partition key
//! on every shard it holds, and logs each shard's running totals (the
//! busiest keys first) every few seconds. It checkpoints after every batch,
//! so after a restart or a handoff the counts go on from where the shard
//! was checkpointed (counts are per owner: a new owner starts from zero).
//!
//! Settings: `kcl_examples::worker::WorkerArgs` (every flag also as a
//! `KCL_*` variable) and `--report-every-ms`. SIGTERM or Ctrl-C hands the
//! shards over and exits 0.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Parser;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::{InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor};
use kcl_examples::worker::{WorkerArgs, exit_code};
use tracing::info;

/// Command-line settings.
#[derive(Parser, Debug)]
#[command(about = "Count records per partition key on a Kinesis stream")]
struct Args {
    /// How often each shard logs its totals.
    #[arg(long, env = "KCL_REPORT_EVERY_MS", default_value_t = 5_000)]
    report_every_ms: u64,
    #[command(flatten)]
    worker: WorkerArgs,
}

/// One shard's counts.
struct KeyCounter {
    report_every: Duration,
    last_report: Instant,
    records: u64,
    bytes: u64,
    by_key: HashMap<String, u64>,
}

impl KeyCounter {
    fn new(report_every: Duration) -> Self {
        Self {
            report_every,
            last_report: Instant::now(),
            records: 0,
            bytes: 0,
            by_key: HashMap::new(),
        }
    }

    fn report(&mut self, why: &str) {
        let mut busiest: Vec<(&String, &u64)> = self.by_key.iter().collect();
        busiest.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top: Vec<String> = busiest
            .iter()
            .take(5)
            .map(|(key, n)| format!("{key}={n}"))
            .collect();
        info!(
            records = self.records,
            bytes = self.bytes,
            keys = self.by_key.len(),
            top = %top.join(" "),
            "{why}"
        );
        self.last_report = Instant::now();
    }
}

#[async_trait]
impl RecordProcessor for KeyCounter {
    async fn initialize(&mut self, input: InitializationInput) -> Result<(), ProcessorError> {
        info!(checkpoint = %input.checkpoint, "counting keys");
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput) -> Result<(), ProcessorError> {
        for record in &input.records {
            self.records += 1;
            self.bytes += record.data.len() as u64;
            *self.by_key.entry(record.partition_key.clone()).or_default() += 1;
        }
        input.checkpointer.checkpoint().await?;
        if self.last_report.elapsed() >= self.report_every {
            self.report("totals");
        }
        Ok(())
    }

    async fn lease_lost(&mut self) {
        self.report("lease lost; final totals");
    }

    async fn shard_ended(&mut self, checkpointer: Checkpointer) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        self.report("shard ended; final totals");
        Ok(())
    }

    async fn shutdown_requested(
        &mut self,
        checkpointer: Checkpointer,
    ) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        self.report("handing over; final totals");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    args.worker.init_logging();
    exit_code("key-counter", run(args).await)
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let report_every = Duration::from_millis(args.report_every_ms);
    let scheduler = args
        .worker
        .builder()
        .await?
        .build(move |_shard: &str| KeyCounter::new(report_every))?;
    info!(worker_id = scheduler.worker_id(), "key-counter starting");
    args.worker.run(scheduler).await
}
