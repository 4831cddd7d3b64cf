//! The `recorder` binary as operators run it: several replicas as
//! processes against the local AWS stack, stopped with SIGTERM.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kcl_examples::recorder::read_lines;
use kcl_lease::{DynamoDbLeaseStore, LeaseStore};
use kcl_tests::stream::{create_stream, put_records};
use kcl_tests::{LocalAws, unique_name};

const RECORDER: &str = env!("CARGO_BIN_EXE_recorder");

/// Starts a recorder replica; its logs go to `<output>.log`.
fn start(aws: &LocalAws, stream: &str, app: &str, worker: &str, output: &Path) -> Child {
    let log = std::fs::File::create(output.with_extension("log")).expect("log file");
    Command::new(RECORDER)
        .args(["--application-name", app, "--worker-id", worker])
        .arg("--output")
        .arg(output)
        .args([
            "--failover-time-ms",
            "3000",
            "--assignment-interval-ms",
            "500",
        ])
        // The stream name through the environment, as in a Deployment.
        .env("KCL_STREAM_NAME", stream)
        .env("AWS_ENDPOINT_URL_KINESIS", &aws.kinesis_endpoint)
        .env("AWS_ENDPOINT_URL_DYNAMODB", &aws.dynamodb_endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "kcllocalaccesskey")
        .env("AWS_SECRET_ACCESS_KEY", "kcllocalsecretkey")
        .stderr(log)
        .spawn()
        .expect("start recorder")
}

fn line_count(paths: &[std::path::PathBuf]) -> usize {
    paths
        .iter()
        .map(|p| read_lines(p).map_or(0, |lines| lines.len()))
        .sum()
}

/// Replicas that are killed if the test fails before stopping them, so no
/// process outlives the test.
struct Replicas(Vec<Child>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Sends SIGTERM to `child` by its PID.
fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_record_every_record_once_and_exit_cleanly_on_sigterm() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (unique_name("recorder"), unique_name("recorder-app"));
    create_stream(&kinesis, &stream, 6).await;
    let dir = std::env::temp_dir().join(unique_name("recorder-out"));
    std::fs::create_dir_all(&dir).unwrap();
    let outputs: Vec<_> = (0..3)
        .map(|n| dir.join(format!("worker-{n}.jsonl")))
        .collect();
    let mut replicas = Replicas(
        outputs
            .iter()
            .enumerate()
            .map(|(n, output)| start(&aws, &stream, &app, &format!("worker-{n}"), output))
            .collect(),
    );

    // Wait until the replicas share the six shards two each, as the lease
    // table shows, so every replica gets records.
    let leases = DynamoDbLeaseStore::new(&aws.dynamodb(), &app);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut owners: BTreeMap<String, usize> = BTreeMap::new();
        for lease in leases.list_leases().await.unwrap_or_default() {
            if let Some(owner) = lease.processing_owner() {
                *owners.entry(owner.to_owned()).or_default() += 1;
            }
        }
        if owners.len() == 3 && owners.values().all(|n| *n == 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never balanced: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expected = put_records(&kinesis, &stream, 24, 0, 600).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while line_count(&outputs) < expected.len() {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "only {} of {} records recorded",
                line_count(&outputs),
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for child in &replicas.0 {
        terminate(child);
    }
    for (n, child) in replicas.0.iter_mut().enumerate() {
        let status = child.wait().expect("wait for recorder");
        assert!(status.success(), "worker-{n} exited with {status}");
    }

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
