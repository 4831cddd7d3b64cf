//! Whole workers (`Scheduler`s) on kinesis-mock and DynamoDB Local: every
//! record processed, in shard order, by one worker at a time, across
//! restarts, crashes and failing processors.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kcl_tests::stream::{create_stream, put_records};
use kcl_tests::{LocalAws, unique_name};

use crate::probe_fleet::{SharedBoard, Worker, check_complete_and_ordered, wait_for_records};

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
