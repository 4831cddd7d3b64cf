//! The coordination guarantees, tried from outside on recorder processes:
//! - a worker whose DynamoDB stops answering (requests held, no error) for
//!   40 s while its Kinesis works, with processors that checkpoint only
//!   every 20 s, processes nothing on a shard after another worker has
//!   started on it, and nothing is lost;
//! - workers at `LATEST` on an idle stream, as records begin: one worker's
//!   Kinesis connections are cut for a few seconds and another stops
//!   gracefully and is replaced; every record written after the leases
//!   were held is processed (polling and enhanced fan-out).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kcl_examples::recorder::{RecordLine, read_lines};
use kcl_lease::{DynamoDbLeaseStore, LeaseStore};
use kcl_tests::fault_proxy::{Fault, FaultProxy};
use kcl_tests::processes::{Processes, start_recorder, terminate};
use kcl_tests::stream::{OrderedProducer, create_stream};
use kcl_tests::{LocalAws, output_dir, unique_name};

use super::RECORDER;

const FAST: [&str; 6] = [
    "--failover-time-ms",
    "3000",
    "--heartbeat-interval-ms",
    "1000",
    "--assignment-interval-ms",
    "500",
];

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lines_of(outputs: &[PathBuf]) -> Vec<RecordLine> {
    outputs
        .iter()
        .flat_map(|output| read_lines(output).unwrap_or_default())
        .collect()
}

/// Waits until every record in `written` appears in `outputs`.
async fn wait_for_all(outputs: &[PathBuf], written: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let lines = lines_of(outputs);
        let seen: std::collections::HashSet<&str> = lines.iter().map(|l| l.data.as_str()).collect();
        let missing: Vec<&String> = written
            .iter()
            .filter(|d| !seen.contains(d.as_str()))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} records never processed, e.g. {:?}",
            missing.len(),
            written.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `app`'s `shards` leases all have an owner.
async fn wait_until_held(aws: &LocalAws, app: &str, shards: usize) {
    let store = DynamoDbLeaseStore::new(&aws.dynamodb(), app);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let leases = store.list_leases().await.unwrap_or_default();
        if leases.len() == shards && leases.iter().all(|l| l.owner.is_some()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leases never all held: {leases:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops every process with SIGTERM and checks each exits 0.
async fn stop_all(processes: &mut Processes) {
    for child in &mut processes.0 {
        if matches!(child.try_wait(), Ok(None)) {
            terminate(child);
        }
    }
    for child in &mut processes.0 {
        let status = wait_exit(child).await;
        assert!(status.success(), "a recorder exited with {status}");
    }
}

async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait for recorder") {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recorder {} still running",
            child.id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A recorder of `app` on `stream` reaching AWS through `aws`.
fn recorder(
    aws: &LocalAws,
    stream: &str,
    app: &str,
    worker: &str,
    output: &Path,
    extra: &[&str],
) -> Child {
    let mut flags: Vec<&str> = FAST.to_vec();
    flags.extend_from_slice(extra);
    start_recorder(RECORDER, aws, stream, app, worker, output, &flags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_from_dynamodb_for_40_s_processes_nothing_on_a_shard_another_worker_took() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (unique_name("stall"), unique_name("stall-app"));
    create_stream(&kinesis, &stream, 4).await;
    let out = output_dir("stall-out");
    let dir = out.path();
    let proxy = FaultProxy::start(&aws.dynamodb_endpoint).await;
    let mut through = aws.clone();
    through.dynamodb_endpoint = proxy.endpoint();
    let outputs: Vec<PathBuf> = (0..3).map(|n| dir.join(format!("w{n}.jsonl"))).collect();
    let rarely = ["--checkpoint-interval-ms", "20000"];
    let mut processes = Processes(vec![
        recorder(&through, &stream, &app, "w0", &outputs[0], &rarely),
        recorder(&aws, &stream, &app, "w1", &outputs[1], &rarely),
        recorder(&aws, &stream, &app, "w2", &outputs[2], &rarely),
    ]);
    wait_until_held(&aws, &app, 4).await;
    let producer = OrderedProducer::start(kinesis.clone(), &stream, 16, Duration::from_millis(40));
    tokio::time::sleep(Duration::from_secs(4)).await;

    // w0's DynamoDB stops answering; its Kinesis goes on.
    let from_ms = epoch_ms();
    proxy.set(Fault::Stall);
    tokio::time::sleep(Duration::from_secs(40)).await;
    proxy.set(Fault::None);
    let until_ms = epoch_ms();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let written = producer.stop().await;
    wait_for_all(&outputs, &written).await;
    stop_all(&mut processes).await;

    // Every other worker's first record of each shard since the stall.
    let mut others_from: BTreeMap<String, u64> = BTreeMap::new();
    for line in lines_of(&outputs[1..]) {
        if line.processed_ms >= from_ms {
            let first = others_from.entry(line.shard).or_insert(line.processed_ms);
            *first = (*first).min(line.processed_ms);
        }
    }
    let w0 = read_lines(&outputs[0]).unwrap_or_default();
    let during: Vec<&RecordLine> = w0
        .iter()
        .filter(|l| (from_ms..until_ms).contains(&l.processed_ms))
        .collect();
    let zombie: Vec<String> = during
        .iter()
        .filter(|l| {
            others_from
                .get(&l.shard)
                .is_some_and(|f| l.processed_ms >= *f)
        })
        .map(|l| {
            format!(
                "{} {} {} ms into the stall",
                l.shard,
                l.data,
                l.processed_ms - from_ms
            )
        })
        .collect();
    let last = during.iter().map(|l| l.processed_ms - from_ms).max();
    println!(
        "stall: {} records; w0 processed {} during the 40 s stall, the last {last:?} ms into it; \
         others took over {:?} ms into it",
        written.len(),
        during.len(),
        others_from
            .values()
            .map(|f| f - from_ms)
            .collect::<Vec<_>>()
    );
    assert!(
        zombie.is_empty(),
        "w0 processed {} records on shards another worker had started on: {:?}",
        zombie.len(),
        &zombie[..zombie.len().min(10)]
    );
    assert!(
        last.is_none_or(|ms| ms <= 3000),
        "w0 processed {last:?} ms into the stall (its failover time is 3000 ms)"
    );
    assert_eq!(others_from.len(), 4, "the others processed every shard");
}

/// Workers at LATEST on an idle stream. Records begin while two workers
/// cannot reach Kinesis (their connections are dropped): one gets its
/// connections back after 3 s (its subscriptions or iterators start
/// again), the other stops gracefully before it read anything and is
/// replaced. Every record written after the leases were held is processed.
async fn latest_skips_nothing(retrieval: &str) {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (unique_name("latest"), unique_name("latest-app"));
    create_stream(&kinesis, &stream, 4).await;
    let out = output_dir("latest-out");
    let dir = out.path();
    let mut proxies = Vec::new();
    let mut paths = Vec::new();
    for _ in 0..2 {
        let proxy = FaultProxy::start(&aws.kinesis_endpoint).await;
        let mut through = aws.clone();
        through.kinesis_endpoint = proxy.endpoint();
        proxies.push(proxy);
        paths.push(through);
    }
    let extra = [
        "--initial-position",
        "latest",
        "--retrieval",
        retrieval,
        "--fanout-shard-end-check-ms",
        "2000",
    ];
    let mut outputs: Vec<PathBuf> = (0..3).map(|n| dir.join(format!("w{n}.jsonl"))).collect();
    let mut processes = Processes(vec![
        recorder(&paths[0], &stream, &app, "w0", &outputs[0], &extra),
        recorder(&paths[1], &stream, &app, "w1", &outputs[1], &extra),
        recorder(&aws, &stream, &app, "w2", &outputs[2], &extra),
    ]);
    wait_until_held(&aws, &app, 4).await;
    // Let every worker begin reading (at LATEST) before the cut.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for proxy in &proxies {
        proxy.set(Fault::DropConnections);
    }
    let producer = OrderedProducer::start(kinesis.clone(), &stream, 16, Duration::from_millis(30));
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxies[0].set(Fault::None);
    terminate(&processes.0[1]);
    let status = wait_exit(&mut processes.0[1]).await;
    assert!(status.success(), "w1 exited with {status}");
    outputs.push(dir.join("w3.jsonl"));
    processes
        .0
        .push(recorder(&aws, &stream, &app, "w3", &outputs[3], &extra));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let written = producer.stop().await;
    wait_for_all(&outputs, &written).await;
    stop_all(&mut processes).await;
    println!(
        "latest ({retrieval}): {} records written after the leases were held, all processed \
         ({} processings)",
        written.len(),
        lines_of(&outputs).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_at_latest_skip_nothing_through_a_kinesis_cut_and_a_replacement() {
    latest_skips_nothing("polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_workers_at_latest_skip_nothing_through_a_kinesis_cut_and_a_replacement() {
    latest_skips_nothing("fanout").await;
}
