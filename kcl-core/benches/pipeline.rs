//! Framework overhead: records per second through one shard's whole
//! pipeline (fetcher, KPL check, prefetch budget, consumer, checkpoint per
//! batch in the lease store) with a processor that does nothing, from the
//! in-memory stream, on a single-threaded runtime (one core). Kinesis's call
//! pacing is turned off: the in-memory stream has no such limit, and the
//! figure is what the framework itself costs.
//!
//! ```sh
//! cargo bench -p kcl-core --bench pipeline
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kcl_core::checkpoint::{Checkpointer, ExtendedSequenceNumber};
use kcl_core::kinesis::InMemoryKinesis;
use kcl_core::retrieval::RetrievalConfig;
use kcl_core::{
    InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor, Scheduler,
};
use kcl_lease::{InMemoryLeaseStore, LeaseStore};

const RECORDS: u64 = 2_000_000;

/// Counts records and checkpoints after every batch.
struct Noop(Arc<AtomicU64>);

#[async_trait]
impl RecordProcessor for Noop {
    async fn initialize(&mut self, _: InitializationInput) -> Result<(), ProcessorError> {
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput) -> Result<(), ProcessorError> {
        self.0
            .fetch_add(input.records.len() as u64, Ordering::Relaxed);
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, checkpointer: Checkpointer) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        Ok(())
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let kinesis = InMemoryKinesis::new();
        let shard = kinesis.create_stream("bench", 1).remove(0);
        let payload = [b'x'; 100];
        for n in 0..RECORDS {
            kinesis.put_record_to_shard(
                "bench",
                &shard,
                if n % 2 == 0 { "a" } else { "b" },
                &payload,
            );
        }
        let store = InMemoryLeaseStore::new();
        let processed = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&processed);
        let scheduler = Scheduler::builder()
            .application_name("bench-app")
            .stream_name("bench")
            .worker_id("bench-worker")
            .assignment_interval(Duration::from_millis(100))
            .retrieval(RetrievalConfig {
                min_call_interval: Duration::ZERO,
                idle_time_between_calls: Duration::from_millis(10),
                ..RetrievalConfig::default()
            })
            .backends(Arc::new(kinesis), Arc::new(store.client()))
            .build(move |_: &str| Noop(Arc::clone(&counter)))
            .expect("valid settings");
        let stop = scheduler.shutdown_handle();
        let worker = tokio::spawn(scheduler.run());
        // Time from the first record processed to the last.
        while processed.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        let first = processed.load(Ordering::Relaxed);
        while processed.load(Ordering::Relaxed) < RECORDS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = started.elapsed();
        stop.shutdown();
        worker.await.expect("worker").expect("clean stop");
        let lease = store
            .get_lease(&shard)
            .await
            .expect("lease")
            .expect("exists");
        assert!(
            !lease.checkpoint.is_sentinel() || lease.checkpoint == ExtendedSequenceNumber::ShardEnd
        );
        let rate = (RECORDS - first) as f64 / took.as_secs_f64();
        println!(
            "pipeline, one shard, one core, no-op processor checkpointing every batch: \
             {:.0} records/s ({} records in {took:.2?})",
            rate,
            RECORDS - first
        );
    });
}
