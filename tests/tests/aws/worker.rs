//! Whole workers (`Scheduler`s) on kinesis-mock and DynamoDB Local: every
//! record processed, in shard order, by one worker at a time, across
//! restarts, crashes and failing processors.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::{
    InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor, Scheduler,
    StatsSnapshot,
};
use kcl_tests::stream::{create_stream, put_records};
use kcl_tests::{LocalAws, unique_name};
use tokio::task::JoinHandle;

/// One processed record.
#[derive(Clone, Debug)]
struct Seen {
    worker: String,
    shard: String,
    seq: String,
    data: String,
}

/// What every processor of a test saw, and faults to inject.
#[derive(Default)]
struct Board {
    seen: Vec<Seen>,
    /// Processors alive per shard (created and initialized, not dropped).
    active: HashMap<String, usize>,
    /// Times two processors were alive for one shard at once.
    overlaps: Vec<String>,
    /// Data to fail on, with how many more times.
    fail: HashMap<String, u32>,
    /// Data to panic on, with how many more times.
    panic: HashMap<String, u32>,
}

type SharedBoard = Arc<Mutex<Board>>;

struct Probe {
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
struct Worker {
    id: String,
    task: JoinHandle<Result<(), kcl_core::SchedulerError>>,
    shutdown: kcl_core::ShutdownHandle,
    stats: Arc<kcl_core::WorkerStats>,
    held: tokio::sync::watch::Receiver<BTreeMap<String, kcl_lease::HeldLease>>,
}

impl Worker {
    fn start(aws: &LocalAws, app: &str, stream: &str, id: &str, board: &SharedBoard) -> Self {
        let board = Arc::clone(board);
        let worker = id.to_owned();
        let scheduler = Scheduler::builder()
            .application_name(app)
            .stream_name(stream)
            .worker_id(id)
            .failover_time(Duration::from_secs(3))
            .assignment_interval(Duration::from_millis(500))
            .aws_clients(&aws.kinesis(), &aws.dynamodb())
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
    async fn stop(self) -> StatsSnapshot {
        self.shutdown.shutdown();
        self.task
            .await
            .expect("worker task")
            .unwrap_or_else(|e| panic!("{}: {e}", self.id));
        self.stats.snapshot()
    }

    fn held(&self) -> usize {
        self.held.borrow().len()
    }
}

/// Waits until the board holds at least `n` records, failing after 90 s.
async fn wait_for_records(board: &SharedBoard, n: usize) {
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
fn check_complete_and_ordered(board: &SharedBoard, expected: &[String]) -> usize {
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

    let mut last_first_seen: HashMap<&str, kcl_core::checkpoint::SequenceNumber> = HashMap::new();
    let mut first_time: HashMap<&str, ()> = HashMap::new();
    for seen in &board.seen {
        if first_time.insert(seen.data.as_str(), ()).is_some() {
            continue;
        }
        let seq: kcl_core::checkpoint::SequenceNumber = seen.seq.parse().unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_reads_every_record_once_in_shard_order() {
    let aws = LocalAws::connect();
    let (stream, app) = (unique_name("worker-one"), unique_name("worker-one-app"));
    create_stream(&aws.kinesis(), &stream, 4).await;
    let expected = put_records(&aws.kinesis(), &stream, 16, 0, 400).await;
    let board = SharedBoard::default();

    let worker = Worker::start(&aws, &app, &stream, "worker-a", &board);
    wait_for_records(&board, expected.len()).await;
    let stats = worker.stop().await;

    let duplicates = check_complete_and_ordered(&board, &expected);
    assert_eq!(duplicates, 0);
    assert_eq!(stats.records_processed, 400);
    assert_eq!(
        stats.leases_released, 4,
        "a clean stop releases every lease"
    );
    let shards: std::collections::BTreeSet<String> = board
        .lock()
        .unwrap()
        .seen
        .iter()
        .map(|s| s.shard.clone())
        .collect();
    assert_eq!(shards.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_resumes_from_its_checkpoints() {
    let aws = LocalAws::connect();
    let (stream, app) = (
        unique_name("worker-restart"),
        unique_name("worker-restart-app"),
    );
    create_stream(&aws.kinesis(), &stream, 2).await;
    let mut expected = put_records(&aws.kinesis(), &stream, 8, 0, 100).await;
    let board = SharedBoard::default();

    let first = Worker::start(&aws, &app, &stream, "worker-a", &board);
    wait_for_records(&board, 100).await;
    first.stop().await;

    expected.extend(put_records(&aws.kinesis(), &stream, 8, 100, 100).await);
    let second = Worker::start(&aws, &app, &stream, "worker-a-again", &board);
    wait_for_records(&board, 200).await;
    second.stop().await;

    let duplicates = check_complete_and_ordered(&board, &expected);
    assert_eq!(
        duplicates, 0,
        "a clean stop checkpoints everything: nothing replayed"
    );
    let board = board.lock().unwrap();
    assert!(
        board.seen[100..]
            .iter()
            .all(|s| s.worker == "worker-a-again")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_shards_and_take_over_from_an_aborted_one() {
    let aws = LocalAws::connect();
    let (stream, app) = (unique_name("worker-fleet"), unique_name("worker-fleet-app"));
    let kinesis = aws.kinesis();
    create_stream(&kinesis, &stream, 8).await;
    let board = SharedBoard::default();
    let mut expected = put_records(&kinesis, &stream, 32, 0, 200).await;

    let a = Worker::start(&aws, &app, &stream, "worker-a", &board);
    let b = Worker::start(&aws, &app, &stream, "worker-b", &board);
    let c = Worker::start(&aws, &app, &stream, "worker-c", &board);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let balanced = |workers: [&Worker; 3]| {
        let held = workers.map(Worker::held);
        held.iter().sum::<usize>() == 8 && held.iter().all(|n| *n >= 2)
    };
    while !balanced([&a, &b, &c]) {
        assert!(tokio::time::Instant::now() < deadline, "never balanced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expected.extend(put_records(&kinesis, &stream, 32, 200, 200).await);
    wait_for_records(&board, 400).await;

    // Crash C: no release, no heartbeat removal.
    let c_held = c.held();
    c.task.abort();
    let _ = c.task.await;
    expected.extend(put_records(&kinesis, &stream, 32, 400, 200).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while a.held() + b.held() < 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "C's shards never taken over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_records(&board, 600).await;
    a.stop().await;
    b.stop().await;

    check_complete_and_ordered(&board, &expected);
    assert!(c_held >= 2);
    // Replays can only come from the crash: records C processed whose
    // checkpoint had not landed when it was aborted.
    {
        let board = board.lock().unwrap();
        let mut first_by: HashMap<&str, &str> = HashMap::new();
        for seen in &board.seen {
            if let Some(first) = first_by.get(seen.data.as_str()) {
                assert_eq!(*first, "worker-c", "{} processed twice", seen.data);
            } else {
                first_by.insert(&seen.data, &seen.worker);
            }
        }
    }
    let board = board.lock().unwrap();
    let by_worker: BTreeMap<&str, usize> = board.seen.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.worker.as_str()).or_default() += 1;
        m
    });
    assert_eq!(
        by_worker.len(),
        3,
        "every worker processed records: {by_worker:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_panicking_batches_are_delivered_again_and_never_skipped() {
    let aws = LocalAws::connect();
    let (stream, app) = (
        unique_name("worker-faults"),
        unique_name("worker-faults-app"),
    );
    create_stream(&aws.kinesis(), &stream, 2).await;
    let expected = put_records(&aws.kinesis(), &stream, 8, 0, 120).await;
    let board = SharedBoard::default();
    {
        let mut board = board.lock().unwrap();
        for data in &expected[10..13] {
            board.fail.insert(data.clone(), 2);
        }
        for data in &expected[60..62] {
            board.panic.insert(data.clone(), 1);
        }
    }

    let worker = Worker::start(&aws, &app, &stream, "worker-a", &board);
    wait_for_records(&board, expected.len()).await;
    let stats = worker.stop().await;

    check_complete_and_ordered(&board, &expected);
    assert!(stats.processor_retries >= 3, "{stats:?}");
    assert!(stats.processor_panics >= 1, "{stats:?}");
    assert_eq!(stats.batches_skipped, 0);
    let board = board.lock().unwrap();
    assert!(board.fail.values().all(|left| *left == 0));
    assert!(board.panic.values().all(|left| *left == 0));
}
