//! Recorder replicas started on a lease table as a stopped Java KCL 3.5
//! fleet leaves it (single-table layout: leases of 3.5 and of 2.x beside
//! worker metrics, the leader lock and the migration items), and on a Java
//! multi-stream application's table of two streams: every shard resumes
//! exactly after its checkpoint, and no other item changes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use kcl_examples::recorder::{RecordLine, read_lines};
use kcl_tests::java_kcl::{self, Item};
use kcl_tests::processes::{Processes, start_recorder, terminate};
use kcl_tests::stream::{create_stream, open_shards, put_to_shard, stream_identifier};
use kcl_tests::{LocalAws, output_dir, unique_name};

use super::RECORDER;

/// Waits (at most 90 s) until the `replicas` have written `count` lines to
/// their `outputs`, stops them with SIGTERM, checks that each stopped
/// cleanly, and returns every line.
async fn record_until(
    replicas: &mut Processes,
    outputs: &[PathBuf],
    count: usize,
) -> Vec<RecordLine> {
    let recorded = || -> Vec<RecordLine> {
        outputs
            .iter()
            .flat_map(|output| read_lines(output).unwrap_or_default())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while recorded().len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "recorded {} of {count} records",
            recorded().len(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for child in &replicas.0 {
        terminate(child);
    }
    for child in &mut replicas.0 {
        assert!(child.wait().unwrap().success());
    }
    recorded()
}

/// Records per shard, written before the replicas start.
const PER_SHARD: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_replicas_resume_a_java_3_5_table_after_each_checkpoint() {
    let aws = LocalAws::connect();
    let (kinesis, dynamodb) = (aws.kinesis(), aws.dynamodb());
    let (stream, app) = (unique_name("java-table"), unique_name("java-table-app"));
    create_stream(&kinesis, &stream, 4).await;
    let shards = open_shards(&kinesis, &stream).await;

    // Records on every shard, with their sequence numbers.
    let mut written: Vec<Vec<(String, String)>> = vec![Vec::new(); shards.len()];
    for n in 0..PER_SHARD * shards.len() {
        let index = n % shards.len();
        let (shard, start, _) = &shards[index];
        let data = format!("{shard}:{n}");
        let sequence = put_to_shard(&kinesis, &stream, shard, *start, &data).await;
        written[index].push((sequence, data));
    }

    // The stopped Java fleet checkpointed each shard somewhere else: 3.5
    // and 2.x layouts, owned and unowned, one with a prepared checkpoint,
    // one not read at all yet.
    let checkpointed_after = [Some(2), Some(7), Some(0), None];
    let mut leases: Vec<Item> = Vec::new();
    for (index, (shard, start, end)) in shards.iter().enumerate() {
        let checkpoint = match checkpointed_after[index] {
            Some(n) => written[index][n].0.clone(),
            None => "TRIM_HORIZON".to_owned(),
        };
        let lease = match index {
            0 => java_kcl::lease_3_5(shard, &checkpoint, 0, Some("java-worker-1")),
            1 => java_kcl::lease_3_5(shard, &checkpoint, 0, Some("java-worker-2")),
            2 => java_kcl::with_pending(
                java_kcl::lease_2x(shard, &checkpoint, 0, None),
                &written[index][4].0,
                0,
                b"state",
            ),
            _ => java_kcl::lease_2x(shard, &checkpoint, 0, None),
        };
        leases.push(java_kcl::with_hash_range(lease, *start, *end));
    }
    let others = java_kcl::java_3_5_items_other_than_leases();
    java_kcl::create_lease_table(&dynamodb, &app).await;
    java_kcl::put_items(&dynamodb, &app, &leases).await;
    java_kcl::put_items(&dynamodb, &app, &others).await;
    let expected: BTreeSet<String> = written
        .iter()
        .zip(checkpointed_after)
        .flat_map(|(records, after)| {
            let first = after.map_or(0, |n| n + 1);
            records[first..].iter().map(|(_, data)| data.clone())
        })
        .collect();

    let out = output_dir("java-table-out");
    let dir = out.path();
    let outputs: Vec<PathBuf> = (0..2)
        .map(|n| dir.join(format!("worker-{n}.jsonl")))
        .collect();
    // The default failover time: a heartbeat missed on a loaded machine
    // would deliver records again (at-least-once), and this test counts
    // duplicates.
    let fast = ["--assignment-interval-ms", "500"];
    let mut replicas = Processes(
        outputs
            .iter()
            .enumerate()
            .map(|(n, output)| {
                start_recorder(
                    RECORDER,
                    &aws,
                    &stream,
                    &app,
                    &format!("worker-{n}"),
                    output,
                    &fast,
                )
            })
            .collect(),
    );
    let recorded: Vec<String> = record_until(&mut replicas, &outputs, expected.len())
        .await
        .into_iter()
        .map(|line| line.data)
        .collect();
    assert_eq!(
        recorded.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "exactly the records after each checkpoint"
    );
    assert_eq!(recorded.len(), expected.len(), "nothing twice");
    java_kcl::assert_unchanged(&dynamodb, &app, &others).await;
    java_kcl::assert_a_java_worker_can_read_every_lease(&dynamodb, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_replicas_given_both_streams_resume_a_java_multi_stream_table() {
    let aws = LocalAws::connect();
    let (kinesis, dynamodb) = (aws.kinesis(), aws.dynamodb());
    let app = unique_name("java-multi-app");
    let streams = [unique_name("java-multi-a"), unique_name("java-multi-b")];
    let mut leases: Vec<Item> = Vec::new();
    let mut others = java_kcl::java_3_5_items_other_than_leases();
    // (stream, data) of every record after its shard's checkpoint.
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    for (stream_index, stream) in streams.iter().enumerate() {
        create_stream(&kinesis, stream, 2).await;
        let identifier = stream_identifier(&kinesis, stream).await;
        others.push(java_kcl::stream_info(&identifier));
        let parts: Vec<&str> = identifier.split(':').collect();
        let (account, epoch) = (parts[0], parts[2].parse::<u64>().unwrap());
        for (index, (shard, start, end)) in
            open_shards(&kinesis, stream).await.into_iter().enumerate()
        {
            let mut sequences = Vec::new();
            for n in 0..PER_SHARD {
                let data = format!("{stream}/{shard}:{n}");
                sequences.push(put_to_shard(&kinesis, stream, &shard, start, &data).await);
                // Checkpointed after record 1, 4, 7 and 10.
                if n > (stream_index * 2 + index) * 3 + 1 {
                    expected.insert((stream.clone(), data));
                }
            }
            let after = (stream_index * 2 + index) * 3 + 1;
            leases.push(java_kcl::with_hash_range(
                java_kcl::multi_stream_lease(account, stream, epoch, &shard, &sequences[after]),
                start,
                end,
            ));
        }
    }
    java_kcl::create_lease_table(&dynamodb, &app).await;
    java_kcl::put_items(&dynamodb, &app, &leases).await;
    java_kcl::put_items(&dynamodb, &app, &others).await;

    let out = output_dir("java-multi-out");
    let dir = out.path();
    let outputs: Vec<PathBuf> = (0..2)
        .map(|n| dir.join(format!("worker-{n}.jsonl")))
        .collect();
    // One replica is given the streams as KCL_STREAM_NAME=a,b, the other
    // as --stream-name twice.
    let both = streams.join(",");
    let flags = [
        "--assignment-interval-ms",
        "500",
        "--stream-name",
        &streams[0],
        "--stream-name",
        &streams[1],
    ];
    let mut replicas = Processes(vec![
        start_recorder(
            RECORDER,
            &aws,
            &both,
            &app,
            "worker-0",
            &outputs[0],
            &flags[..2],
        ),
        start_recorder(RECORDER, &aws, "", &app, "worker-1", &outputs[1], &flags),
    ]);
    let recorded: Vec<(String, String)> = record_until(&mut replicas, &outputs, expected.len())
        .await
        .into_iter()
        .map(|line| (line.stream.unwrap_or_default(), line.data))
        .collect();
    assert_eq!(
        recorded.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "exactly the records after each checkpoint, each with its stream"
    );
    assert_eq!(recorded.len(), expected.len(), "nothing twice");
    let scanned = dynamodb
        .scan()
        .table_name(&app)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    assert_eq!(scanned.len(), leases.len() + others.len(), "no lease added");
    java_kcl::assert_unchanged(&dynamodb, &app, &others).await;
    java_kcl::assert_a_java_worker_can_read_every_lease(&dynamodb, &app).await;
}
