//! What the worker tests share: a probe processor that records what every
//! worker processed (and catches two processors on one shard at once), and
//! workers run as tasks against the local stack.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kcl_core::checkpoint::{Checkpointer, ExtendedSequenceNumber};
use kcl_core::{
    InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor, Scheduler,
    StatsSnapshot,
};
use kcl_tests::LocalAws;
use tokio::task::JoinHandle;

/// One processed record.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) worker: String,
    pub(crate) shard: String,
    pub(crate) seq: String,
    pub(crate) subseq: u64,
    pub(crate) pk: String,
    pub(crate) ehk: Option<String>,
    pub(crate) data: String,
}

/// What every processor of a test saw, and faults to inject.
#[derive(Default)]
pub(crate) struct Board {
    pub(crate) seen: Vec<Seen>,
    /// Processors alive per shard (created and initialized, not dropped).
    pub(crate) active: HashMap<String, usize>,
    /// Times two processors were alive for one shard at once.
    pub(crate) overlaps: Vec<String>,
    /// Data to fail on, with how many more times.
    pub(crate) fail: HashMap<String, u32>,
    /// Data to panic on, with how many more times.
    pub(crate) panic: HashMap<String, u32>,
}

pub(crate) type SharedBoard = Arc<Mutex<Board>>;

pub(crate) struct Probe {
    board: SharedBoard,
    worker: String,
    shard: String,
    initialized: bool,
}

#[async_trait]
impl RecordProcessor for Probe {
    async fn initialize(&mut self, _: InitializationInput) -> Result<(), ProcessorError> {
        let mut board = self.board.lock().unwrap();
        let active = board.active.entry(self.shard.clone()).or_default();
        *active += 1;
        if *active > 1 {
            let overlap = format!("{} on {}", self.worker, self.shard);
            board.overlaps.push(overlap);
        }
        self.initialized = true;
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput) -> Result<(), ProcessorError> {
        {
            let mut board = self.board.lock().unwrap();
            for record in &input.records {
                let data = String::from_utf8_lossy(&record.data).into_owned();
                if let Some(left) = board.panic.get_mut(&data).filter(|n| **n > 0) {
                    *left -= 1;
                    drop(board);
                    panic!("injected panic on {data}");
                }
                if let Some(left) = board.fail.get_mut(&data).filter(|n| **n > 0) {
                    *left -= 1;
                    return Err(format!("injected failure on {data}").into());
                }
            }
            for record in &input.records {
                board.seen.push(Seen {
                    worker: self.worker.clone(),
                    shard: self.shard.clone(),
                    seq: record.sequence_number.to_string(),
                    subseq: record.sub_sequence_number,
                    pk: record.partition_key.clone(),
                    ehk: record.explicit_hash_key.clone(),
                    data: String::from_utf8_lossy(&record.data).into_owned(),
                });
            }
        }
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, checkpointer: Checkpointer) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        Ok(())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.initialized {
            let mut board = self.board.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(active) = board.active.get_mut(&self.shard) {
                *active -= 1;
            }
        }
    }
}

/// A running worker.
pub(crate) struct Worker {
    pub(crate) id: String,
    pub(crate) task: JoinHandle<Result<(), kcl_core::SchedulerError>>,
    pub(crate) shutdown: kcl_core::ShutdownHandle,
    pub(crate) stats: Arc<kcl_core::WorkerStats>,
    pub(crate) held: tokio::sync::watch::Receiver<BTreeMap<String, kcl_lease::HeldLease>>,
}

impl Worker {
    pub(crate) fn start(
        aws: &LocalAws,
        app: &str,
        stream: &str,
        id: &str,
        board: &SharedBoard,
    ) -> Self {
        Self::start_reading(aws, app, stream, id, board, 10_000)
    }

    /// A worker that reads at most `max_records_per_call` records per
    /// `GetRecords` call: a small value makes its shards lag behind a
    /// producer.
    pub(crate) fn start_reading(
        aws: &LocalAws,
        app: &str,
        stream: &str,
        id: &str,
        board: &SharedBoard,
        max_records_per_call: u32,
    ) -> Self {
        Self::start_with(aws, app, stream, id, board, |builder| {
            builder.retrieval(kcl_core::retrieval::RetrievalConfig {
                max_records_per_call,
                ..Default::default()
            })
        })
    }

    /// A worker with the tests' short times, and whatever else `configure`
    /// sets.
    pub(crate) fn start_with(
        aws: &LocalAws,
        app: &str,
        stream: &str,
        id: &str,
        board: &SharedBoard,
        configure: impl FnOnce(kcl_core::SchedulerBuilder) -> kcl_core::SchedulerBuilder,
    ) -> Self {
        let board = Arc::clone(board);
        let worker = id.to_owned();
        let builder = Scheduler::builder()
            .application_name(app)
            .stream_name(stream)
            .worker_id(id)
            .failover_time(Duration::from_secs(3))
            .assignment_interval(Duration::from_millis(500))
            .shard_sync_interval(Duration::from_secs(1))
            .parent_poll_interval(Duration::from_millis(200))
            .lease_cleanup_delay(Duration::from_secs(1))
            .aws_clients(&aws.kinesis(), &aws.dynamodb());
        let scheduler = configure(builder)
            .build(move |shard: &str| Probe {
                board: Arc::clone(&board),
                worker: worker.clone(),
                shard: shard.to_owned(),
                initialized: false,
            })
            .expect("valid settings");
        Self {
            id: id.to_owned(),
            shutdown: scheduler.shutdown_handle(),
            stats: scheduler.stats(),
            held: scheduler.held_leases(),
            task: tokio::spawn(scheduler.run()),
        }
    }

    /// Stops cleanly and returns the worker's counters.
    pub(crate) async fn stop(self) -> StatsSnapshot {
        self.shutdown.shutdown();
        self.task
            .await
            .expect("worker task")
            .unwrap_or_else(|e| panic!("{}: {e}", self.id));
        self.stats.snapshot()
    }

    pub(crate) fn held(&self) -> usize {
        self.held.borrow().len()
    }
}

/// Waits until the board holds at least `n` records, failing after 90 s.
pub(crate) async fn wait_for_records(board: &SharedBoard, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let seen = board.lock().unwrap().seen.len();
        if seen >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {seen} of {n} records processed after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks that every record in `expected` was processed, and that each
/// shard's records were first processed in sequence-number order. Returns
/// how many records were processed more than once.
pub(crate) fn check_complete_and_ordered(board: &SharedBoard, expected: &[String]) -> usize {
    let board = board.lock().unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for seen in &board.seen {
        *counts.entry(seen.data.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|data| !counts.contains_key(data.as_str()))
        .collect();
    assert!(missing.is_empty(), "records never processed: {missing:?}");
    assert_eq!(counts.len(), expected.len(), "records nobody wrote");

    let mut last_first_seen: HashMap<&str, ExtendedSequenceNumber> = HashMap::new();
    let mut first_time: HashMap<&str, ()> = HashMap::new();
    for seen in &board.seen {
        if first_time.insert(seen.data.as_str(), ()).is_some() {
            continue;
        }
        let seq = ExtendedSequenceNumber::record(&seen.seq, seen.subseq).unwrap();
        if let Some(previous) = last_first_seen.get(seen.shard.as_str()) {
            assert!(
                *previous < seq,
                "{} first processed out of order on {} ({} after {})",
                seen.data,
                seen.shard,
                seq,
                previous
            );
        }
        last_first_seen.insert(seen.shard.as_str(), seq);
    }
    assert!(
        board.overlaps.is_empty(),
        "shards processed by two processors at once: {:?}",
        board.overlaps
    );
    board.seen.len() - expected.len()
}

/// Checks that for every key, records were first processed in the order
/// they were written (data `k<key>:<n>`, n counting up from 0 per key).
pub(crate) fn check_per_key_order(board: &SharedBoard) {
    let board = board.lock().unwrap();
    let mut next: HashMap<&str, u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for record in &board.seen {
        if !seen.insert(record.data.as_str()) {
            continue;
        }
        let (key, n) = record.data.split_once(':').expect("KEY:N data");
        let n: u64 = n.parse().expect("a counter");
        let expected = next.entry(key).or_default();
        assert_eq!(
            n, *expected,
            "{key}: record {n} first processed (on {}) before record {expected}",
            record.shard
        );
        *expected += 1;
    }
}
