//! Resharding with workers running and records flowing: splits, merges and
//! UpdateShardCount on kinesis-mock. For every partition key, the first
//! processing of its records follows the order they were written in, which
//! is what reading parents before children guarantees; nothing is lost.

use std::collections::BTreeSet;
use std::time::Duration;

use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_lease::{CheckpointUpdate, DynamoDbLeaseStore, LeaseStore};
use kcl_tests::stream::{
    OrderedProducer, create_stream, merge, open_shards, split_in_half, update_shard_count,
};
use kcl_tests::{LocalAws, unique_name};

use crate::probe_fleet::{
    SharedBoard, Worker, check_complete_and_ordered, check_per_key_order, wait_for_records,
};

/// Records per `GetRecords` call: few enough that shards fall behind the
/// producer, so child leases exist (made by discovery) well before their
/// parents are read to the end, and reading a child early would show.
const LAGGING: u32 = 10;

/// Waits until the workers hold `leases` unfinished leases between them,
/// each holding at least `min_each`.
async fn wait_for_holders(workers: &[&Worker], leases: usize, min_each: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let held: Vec<usize> = workers
            .iter()
            .map(|w| {
                w.held
                    .borrow()
                    .values()
                    .filter(|h| !h.lease.is_finished())
                    .count()
            })
            .collect();
        if held.iter().sum::<usize>() == leases && held.iter().all(|n| *n >= min_each) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leases never spread as wanted: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces while `reshard` runs, then processes everything and checks it.
async fn produce_through(
    aws: &LocalAws,
    stream: &str,
    board: &SharedBoard,
    reshard: impl Future<Output = ()>,
) -> Vec<String> {
    let producer = OrderedProducer::start(aws.kinesis(), stream, 16, Duration::from_millis(40));
    tokio::time::sleep(Duration::from_secs(1)).await;
    reshard.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = producer.stop().await;
    wait_for_records(board, written.len()).await;
    check_complete_and_ordered(board, &written);
    check_per_key_order(board);
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_keeps_per_key_order_across_three_workers() {
    let aws = LocalAws::connect();
    let (stream, app) = (
        unique_name("reshard-split"),
        unique_name("reshard-split-app"),
    );
    let kinesis = aws.kinesis();
    create_stream(&kinesis, &stream, 3).await;
    let board = SharedBoard::default();
    let workers: Vec<Worker> = ["worker-a", "worker-b", "worker-c"]
        .iter()
        .map(|id| Worker::start_reading(&aws, &app, &stream, id, &board, LAGGING))
        .collect();
    wait_for_holders(&workers.iter().collect::<Vec<_>>(), 3, 1).await;

    let parent = open_shards(&kinesis, &stream).await[0].0.clone();
    produce_through(
        &aws,
        &stream,
        &board,
        split_in_half(&kinesis, &stream, &parent),
    )
    .await;

    let children: BTreeSet<String> = board
        .lock()
        .unwrap()
        .seen
        .iter()
        .map(|s| s.shard.clone())
        .collect();
    assert_eq!(
        children.len(),
        5,
        "the parent, both children and two others: {children:?}"
    );
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_of_shards_held_by_two_workers_waits_for_both_parents() {
    let aws = LocalAws::connect();
    let (stream, app) = (
        unique_name("reshard-merge"),
        unique_name("reshard-merge-app"),
    );
    let kinesis = aws.kinesis();
    create_stream(&kinesis, &stream, 2).await;
    let board = SharedBoard::default();
    let a = Worker::start_reading(&aws, &app, &stream, "worker-a", &board, LAGGING);
    let b = Worker::start_reading(&aws, &app, &stream, "worker-b", &board, LAGGING);
    wait_for_holders(&[&a, &b], 2, 1).await;

    let shards = open_shards(&kinesis, &stream).await;
    let parents = [shards[0].0.clone(), shards[1].0.clone()];
    produce_through(
        &aws,
        &stream,
        &board,
        merge(&kinesis, &stream, &parents[0], &parents[1]),
    )
    .await;

    // The child's first record was processed after the last record of
    // either parent.
    {
        let board = board.lock().unwrap();
        let last_parent = board
            .seen
            .iter()
            .rposition(|s| parents.contains(&s.shard))
            .expect("parent records");
        let first_child = board
            .seen
            .iter()
            .position(|s| !parents.contains(&s.shard))
            .expect("child records");
        assert!(
            first_child > last_parent,
            "the merged shard started before both parents were done"
        );
        let parent_workers: BTreeSet<&str> = board
            .seen
            .iter()
            .filter(|s| parents.contains(&s.shard))
            .map(|s| s.worker.as_str())
            .collect();
        assert_eq!(parent_workers.len(), 2, "each parent on its own worker");
    }
    a.stop().await;
    b.stop().await;
    let store = DynamoDbLeaseStore::new(&aws.dynamodb(), &app);
    let child = &open_shards(&kinesis, &stream).await[0].0;
    let lease = store.get_lease(child).await.unwrap().expect("child lease");
    assert_eq!(lease.parent_shard_ids, parents.iter().cloned().collect());
    // Finished parents, a child of two, leases moved between workers: a
    // Java KCL worker could take over the table as it is.
    kcl_tests::java_kcl::assert_a_java_worker_can_read_every_lease(&aws.dynamodb(), &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_shard_count_up_and_down_keeps_per_key_order() {
    let aws = LocalAws::connect();
    let (stream, app) = (
        unique_name("reshard-scale"),
        unique_name("reshard-scale-app"),
    );
    let kinesis = aws.kinesis();
    create_stream(&kinesis, &stream, 4).await;
    let board = SharedBoard::default();
    let workers: Vec<Worker> = ["worker-a", "worker-b", "worker-c"]
        .iter()
        .map(|id| Worker::start_reading(&aws, &app, &stream, id, &board, LAGGING))
        .collect();
    wait_for_holders(&workers.iter().collect::<Vec<_>>(), 4, 1).await;

    produce_through(&aws, &stream, &board, async {
        update_shard_count(&kinesis, &stream, 6).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        update_shard_count(&kinesis, &stream, 3).await;
    })
    .await;
    assert_eq!(open_shards(&kinesis, &stream).await.len(), 3);

    // Finished leases go once their children have started.
    let store = DynamoDbLeaseStore::new(&aws.dynamodb(), &app);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let leases = store.list_leases().await.unwrap();
        let open: BTreeSet<String> = open_shards(&kinesis, &stream)
            .await
            .into_iter()
            .map(|s| s.0)
            .collect();
        let keys: BTreeSet<String> = leases.iter().map(|l| l.key.clone()).collect();
        if keys == open {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "finished leases not cleaned up: {keys:?} (open: {open:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_recovers_a_parent_finished_before_its_child_leases_were_created() {
    let aws = LocalAws::connect();
    let (stream, app) = (
        unique_name("reshard-recover"),
        unique_name("reshard-recover-app"),
    );
    let kinesis = aws.kinesis();
    create_stream(&kinesis, &stream, 1).await;
    let board = SharedBoard::default();

    // A first worker reads the shard, then stops.
    let first = Worker::start_reading(&aws, &app, &stream, "worker-a", &board, LAGGING);
    let producer = OrderedProducer::start(aws.kinesis(), &stream, 8, Duration::from_millis(40));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut written = producer.stop().await;
    wait_for_records(&board, written.len()).await;
    first.stop().await;

    // The shard is split while no worker runs, and its lease is left as a
    // worker that crashed between checkpointing SHARD_END and creating the
    // child leases would leave it.
    let parent = open_shards(&kinesis, &stream).await[0].0.clone();
    split_in_half(&kinesis, &stream, &parent).await;
    let store = DynamoDbLeaseStore::new(&aws.dynamodb(), &app);
    let lease = store.get_lease(&parent).await.unwrap().unwrap();
    let crashed = store.take_lease(&lease, "crashed-worker").await.unwrap();
    store
        .checkpoint(
            &crashed.token().unwrap(),
            &CheckpointUpdate::at(crashed.checkpoint.clone()),
            &CheckpointUpdate::at(ExtendedSequenceNumber::ShardEnd),
        )
        .await
        .unwrap();
    assert_eq!(store.list_leases().await.unwrap().len(), 1);

    let producer = OrderedProducer::start_with_prefix(
        aws.kinesis(),
        &stream,
        "after-split-",
        8,
        Duration::from_millis(40),
    );
    let second = Worker::start_reading(&aws, &app, &stream, "worker-b", &board, LAGGING);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let more = producer.stop().await;
    written.extend(more.iter().cloned());
    let expected: BTreeSet<String> = written.iter().cloned().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen: BTreeSet<String> = board
            .lock()
            .unwrap()
            .seen
            .iter()
            .map(|s| s.data.clone())
            .collect();
        let children_seen = board
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|s| s.shard != parent)
            .count();
        if seen == expected && children_seen >= more.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "child shards never processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.stop().await;
    check_complete_and_ordered(&board, &written);
    check_per_key_order(&board);
    let leases = store.list_leases().await.unwrap();
    let children: Vec<_> = leases.iter().filter(|l| l.key != parent).collect();
    assert_eq!(children.len(), 2, "{leases:?}");
    assert!(
        children
            .iter()
            .all(|l| l.parent_shard_ids == [parent.clone()].into())
    );
}
