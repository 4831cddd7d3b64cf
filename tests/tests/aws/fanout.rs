//! Enhanced fan-out on kinesis-mock: a worker reads through
//! `SubscribeToShard`, subscribes again when a subscription ends, and
//! follows a split through the shard end the subscription reports.

use std::time::Duration;

use kcl_tests::stream::{OrderedProducer, create_stream, open_shards, split_in_half};
use kcl_tests::{LocalAws, unique_name};

use crate::probe_fleet::{
    SharedBoard, Worker, check_complete_and_ordered, check_per_key_order, wait_for_records,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reads_everything_across_resubscriptions_and_a_split() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (unique_name("fanout"), unique_name("fanout-app"));
    create_stream(&kinesis, &stream, 2).await;
    let board = SharedBoard::default();
    let worker = Worker::start_with(&aws, &app, &stream, "worker-a", &board, |builder| {
        builder.fan_out(Some("fanout-test".into())).retrieval(
            kcl_core::retrieval::RetrievalConfig {
                // Subscriptions last 5 minutes on AWS; end them often here.
                fanout_resubscribe_after: Some(Duration::from_millis(700)),
                // kinesis-mock does not report a shard end on a subscription.
                fanout_shard_end_check: Duration::from_secs(1),
                ..Default::default()
            },
        )
    });

    let producer = OrderedProducer::start(kinesis.clone(), &stream, 16, Duration::from_millis(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let parent = open_shards(&kinesis, &stream).await[0].0.clone();
    split_in_half(&kinesis, &stream, &parent).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = producer.stop().await;
    wait_for_records(&board, written.len()).await;
    let stats = worker.stop().await;

    assert_eq!(
        check_complete_and_ordered(&board, &written),
        0,
        "no duplicates"
    );
    check_per_key_order(&board);
    let shards: std::collections::BTreeSet<String> = board
        .lock()
        .unwrap()
        .seen
        .iter()
        .map(|s| s.shard.clone())
        .collect();
    assert_eq!(
        shards.len(),
        4,
        "both shards and the split's children: {shards:?}"
    );
    assert!(stats.records_processed >= written.len() as u64);
}
