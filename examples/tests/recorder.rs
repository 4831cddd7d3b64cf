//! The `recorder` binary as operators run it: several replicas as
//! processes against the local AWS stack, stopped with SIGTERM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kcl_examples::recorder::read_lines;
use kcl_tests::processes::{Processes, lease_owners, start_recorder, terminate};
use kcl_tests::stream::{
    OrderedProducer, create_stream, merge, open_shards, put_records, split_in_half,
    update_shard_count,
};
use kcl_tests::{LocalAws, unique_name};

const RECORDER: &str = env!("CARGO_BIN_EXE_recorder");

/// Starts a recorder replica with a short failover time and fast rounds.
fn start(aws: &LocalAws, stream: &str, app: &str, worker: &str, output: &Path) -> Child {
    let fast = [
        "--failover-time-ms",
        "3000",
        "--assignment-interval-ms",
        "500",
    ];
    start_recorder(RECORDER, aws, stream, app, worker, output, &fast)
}

fn line_count(paths: &[std::path::PathBuf]) -> usize {
    paths
        .iter()
        .map(|p| read_lines(p).map_or(0, |lines| lines.len()))
        .sum()
}

/// Waits until three workers hold `each` leases each, as the lease table
/// shows.
async fn wait_for_balance(aws: &LocalAws, app: &str, each: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let owners = lease_owners(aws, app).await;
        if owners.len() == 3 && owners.values().all(|n| *n == each) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never balanced: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts three replicas writing to `dir`.
fn start_three(aws: &LocalAws, stream: &str, app: &str, dir: &Path) -> (Processes, Vec<PathBuf>) {
    let outputs: Vec<PathBuf> = (0..3)
        .map(|n| dir.join(format!("worker-{n}.jsonl")))
        .collect();
    let replicas = Processes(
        outputs
            .iter()
            .enumerate()
            .map(|(n, output)| start(aws, stream, app, &format!("worker-{n}"), output))
            .collect(),
    );
    (replicas, outputs)
}

/// Waits until the files hold `n` lines, failing after 90 s.
async fn wait_for_lines(outputs: &[PathBuf], n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while line_count(outputs) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} records recorded",
            line_count(outputs)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops every replica with SIGTERM and checks each exits 0.
fn stop_all(replicas: &mut Processes) {
    for child in &replicas.0 {
        terminate(child);
    }
    for (n, child) in replicas.0.iter_mut().enumerate() {
        let status = child.wait().expect("wait for recorder");
        assert!(status.success(), "worker-{n} exited with {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_record_every_record_once_and_exit_cleanly_on_sigterm() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (unique_name("recorder"), unique_name("recorder-app"));
    create_stream(&kinesis, &stream, 6).await;
    let dir = std::env::temp_dir().join(unique_name("recorder-out"));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut replicas, outputs) = start_three(&aws, &stream, &app, &dir);
    // Every replica holds two shards before records flow, so all take part.
    wait_for_balance(&aws, &app, 2).await;
    let expected = put_records(&kinesis, &stream, 24, 0, 600).await;
    wait_for_lines(&outputs, expected.len()).await;
    stop_all(&mut replicas);

    let mut lines = Vec::new();
    for output in &outputs {
        lines.extend(read_lines(output).unwrap());
    }
    let mut data: Vec<&str> = lines.iter().map(|l| l.data.as_str()).collect();
    data.sort_unstable();
    let mut wanted: Vec<&str> = expected.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    assert_eq!(data, wanted, "every record exactly once");
    let workers: std::collections::BTreeSet<&str> =
        lines.iter().map(|l| l.worker.as_str()).collect();
    assert_eq!(workers.len(), 3, "all replicas took part: {workers:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.arrival_ms > 0 && l.processed_ms >= l.arrival_ms.saturating_sub(5_000))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flags_for_features_not_built_yet_fail_with_a_clear_error() {
    let output = Command::new(RECORDER)
        .args([
            "--stream-name",
            "s",
            "--application-name",
            "app",
            "--output",
            "/dev/null",
        ])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run recorder");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--metrics-addr"), "{stderr}");

    let output = Command::new(RECORDER)
        .args([
            "--stream-name",
            "s",
            "--application-name",
            "app",
            "--output",
            "/dev/null",
        ])
        .args(["--retrieval", "fanout"])
        .output()
        .expect("run recorder");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("fanout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_keep_per_key_order_across_split_merge_and_scale_up() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (
        unique_name("recorder-reshard"),
        unique_name("recorder-reshard-app"),
    );
    create_stream(&kinesis, &stream, 3).await;
    let dir = std::env::temp_dir().join(unique_name("recorder-reshard-out"));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut replicas, outputs) = start_three(&aws, &stream, &app, &dir);
    wait_for_balance(&aws, &app, 1).await;

    let producer = OrderedProducer::start(kinesis.clone(), &stream, 16, Duration::from_millis(40));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = open_shards(&kinesis, &stream).await[0].0.clone();
    split_in_half(&kinesis, &stream, &first).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let shards = open_shards(&kinesis, &stream).await;
    merge(&kinesis, &stream, &shards[0].0, &shards[1].0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    update_shard_count(&kinesis, &stream, 6).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = producer.stop().await;
    wait_for_lines(&outputs, written.len()).await;
    stop_all(&mut replicas);

    let mut lines = Vec::new();
    for output in &outputs {
        lines.extend(read_lines(output).unwrap());
    }
    let mut data: Vec<&str> = lines.iter().map(|l| l.data.as_str()).collect();
    data.sort_unstable();
    data.dedup();
    let mut wanted: Vec<&str> = written.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    assert_eq!(data, wanted, "nothing lost, nothing unknown");
    // Per key, record n+1 is first processed no earlier than record n
    // (lines of one batch share a processing time).
    let mut first_processed: BTreeMap<&str, u64> = BTreeMap::new();
    for line in &lines {
        let at = first_processed
            .entry(&line.data)
            .or_insert(line.processed_ms);
        *at = (*at).min(line.processed_ms);
    }
    for data in &written {
        let (key, n) = data.split_once(':').unwrap();
        let n: u64 = n.parse().unwrap();
        if n == 0 {
            continue;
        }
        let before = first_processed[format!("{key}:{}", n - 1).as_str()];
        assert!(
            first_processed[data.as_str()] >= before,
            "{data} was first processed before {key}:{}",
            n - 1
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
