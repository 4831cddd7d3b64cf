//! Peak memory per shard: one worker processes 32 in-memory shards of 1 KiB
//! records to the end, and the process's resident memory is sampled
//! throughout. The figure is the peak above the resident memory once the
//! stream is loaded (the stream itself lives in the same process), divided
//! by the number of shards.
//!
//! Two processors, each in a fresh process so one's freed memory does not
//! hide the other's:
//! - `noop` does nothing (and checkpoints each batch): what the framework
//!   holds per shard when the application keeps up;
//! - `slow` takes 500 ms per batch of at most 1,000 records: fetchers run
//!   ahead until each shard's prefetch budget is full (sampled for 15 s), so
//!   this is what a full budget costs.
//!
//! The in-memory stream hands out records that share their payload with the
//! stream, so these figures are the framework's own memory per shard. Records
//! read from Kinesis bring their payload with them: add up to
//! `RetrievalConfig::max_prefetch_bytes` (32 MiB by default) per shard while
//! the processor lags.
//!
//! ```sh
//! cargo bench -p kcl-core --bench memory
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::kinesis::InMemoryKinesis;
use kcl_core::retrieval::RetrievalConfig;
use kcl_core::{
    InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor, Scheduler,
};
use kcl_lease::InMemoryLeaseStore;

const SHARDS: u32 = 32;
const RECORDS_PER_SHARD: u64 = 40_000;
const RECORD_BYTES: usize = 1024;
const SCENARIO: &str = "KCL_MEMORY_SCENARIO";

/// Counts records, waits `delay` per batch, checkpoints.
struct Processor {
    processed: Arc<AtomicU64>,
    delay: Duration,
}

#[async_trait]
impl RecordProcessor for Processor {
    async fn initialize(&mut self, _: InitializationInput) -> Result<(), ProcessorError> {
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput) -> Result<(), ProcessorError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.processed
            .fetch_add(input.records.len() as u64, Ordering::Relaxed);
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, checkpointer: Checkpointer) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        Ok(())
    }
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn main() {
    match std::env::var(SCENARIO) {
        Ok(scenario) => run(&scenario),
        Err(_) => {
            for scenario in ["noop", "slow"] {
                let status = std::process::Command::new(std::env::current_exe().expect("exe"))
                    .env(SCENARIO, scenario)
                    .status()
                    .expect("run scenario");
                assert!(status.success(), "{scenario} failed");
            }
        }
    }
}

fn run(scenario: &str) {
    let delay = match scenario {
        "noop" => Duration::ZERO,
        "slow" => Duration::from_millis(500),
        other => panic!("unknown scenario {other}"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let kinesis = InMemoryKinesis::new();
        let shards = kinesis.create_stream("bench", SHARDS);
        let payload = vec![b'x'; RECORD_BYTES];
        for shard in &shards {
            for n in 0..RECORDS_PER_SHARD {
                kinesis.put_record_to_shard("bench", shard, &format!("k{n}"), &payload);
            }
        }
        let loaded = resident_bytes();
        let processed = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&processed);
        let scheduler = Scheduler::builder()
            .application_name("bench-app")
            .stream_name("bench")
            .worker_id("bench-worker")
            .assignment_interval(Duration::from_millis(100))
            .retrieval(RetrievalConfig {
                min_call_interval: Duration::ZERO,
                max_records_per_call: if delay.is_zero() { 10_000 } else { 1_000 },
                ..RetrievalConfig::default()
            })
            .backends(Arc::new(kinesis), Arc::new(InMemoryLeaseStore::new()))
            .build(move |_: &str| Processor {
                processed: Arc::clone(&counter),
                delay,
            })
            .expect("valid settings");
        let stop = scheduler.shutdown_handle();
        let worker = tokio::spawn(scheduler.run());
        let total = u64::from(SHARDS) * RECORDS_PER_SHARD;
        // The slow processor would take minutes to finish: sample its
        // steady state for a while instead.
        let until = tokio::time::Instant::now()
            + match scenario {
                "slow" => Duration::from_secs(15),
                _ => Duration::from_secs(600),
            };
        let mut peak = loaded;
        while processed.load(Ordering::Relaxed) < total && tokio::time::Instant::now() < until {
            peak = peak.max(resident_bytes());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.shutdown();
        worker.await.expect("worker").expect("clean stop");
        let above = peak.saturating_sub(loaded);
        println!(
            "memory, {scenario} processor, {SHARDS} shards of {RECORD_BYTES}-byte records \
             ({} of {total} processed): stream loaded {:.0} MiB, peak {:.0} MiB, \
             {:.2} MiB per shard above the loaded stream",
            processed.load(Ordering::Relaxed),
            loaded as f64 / 1048576.0,
            peak as f64 / 1048576.0,
            above as f64 / 1048576.0 / f64::from(SHARDS)
        );
    });
}
