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
use kcl_tests::{LocalAws, output_dir, unique_name};

use super::RECORDER;

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

/// Starts recorders "w0" and "w1" (writing `w0.jsonl` and `w1.jsonl` in
/// `dir`) with `flags`, and waits until they hold two leases each.
async fn start_balanced_pair(
    aws: &LocalAws,
    stream: &str,
    app: &str,
    dir: &Path,
    flags: &[&str],
) -> (Processes, Vec<PathBuf>) {
    let outputs: Vec<PathBuf> = (0..2).map(|n| dir.join(format!("w{n}.jsonl"))).collect();
    let replicas = Processes(
        outputs
            .iter()
            .enumerate()
            .map(|(n, out)| {
                start_recorder(RECORDER, aws, stream, app, &format!("w{n}"), out, flags)
            })
            .collect(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let owners = lease_owners(aws, app).await;
        if owners.get("w0") == Some(&2) && owners.get("w1") == Some(&2) {
            return (replicas, outputs);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never balanced: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops every replica still running with SIGTERM and checks each exits 0.
fn stop_all(replicas: &mut Processes) {
    for child in &mut replicas.0 {
        if matches!(child.try_wait(), Ok(None)) {
            terminate(child);
        }
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
    let out = output_dir("recorder-out");
    let dir = out.path();
    let (mut replicas, outputs) = start_three(&aws, &stream, &app, dir);
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
}

/// Runs the recorder with `args` (which must make it fail before it
/// connects anywhere) and returns its standard error.
fn failing_run(args: &[&str]) -> String {
    let mut command = Command::new(RECORDER);
    for (flag, default) in [("--stream-name", "s"), ("--application-name", "app")] {
        if !args.contains(&flag) {
            command.args([flag, default]);
        }
    }
    let output = command
        .args(["--output", "/dev/null"])
        .args(args)
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null())
        .output()
        .expect("run recorder");
    assert!(!output.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_settings_and_missing_features_fail_fast_naming_the_setting() {
    assert!(failing_run(&["--retrieval", "sideways"]).contains("retrieval"));
    assert!(failing_run(&["--max-records-per-call", "20000"]).contains("max_records_per_call"));
    assert!(failing_run(&["--failover-time-ms", "0"]).contains("failover_time"));
    assert!(failing_run(&["--shutdown-timeout-ms", "0"]).contains("shutdown_timeout"));
    assert!(failing_run(&["--application-name", "a b"]).contains("application_name"));
    assert!(failing_run(&["--initial-position", "middle"]).contains("initial-position"));
}

/// A GET on the local endpoint: the status code and the body.
async fn get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_are_served_over_http() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (
        unique_name("recorder-metrics"),
        unique_name("recorder-metrics-app"),
    );
    create_stream(&kinesis, &stream, 2).await;
    let out = output_dir("recorder-metrics-out");
    let dir = out.path();
    let output = dir.join("worker.jsonl");
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let flags = [
        "--metrics-addr",
        addr.as_str(),
        "--assignment-interval-ms",
        "500",
        "--log-format",
        "json",
    ];
    let mut replicas = Processes(vec![start_recorder(
        RECORDER, &aws, &stream, &app, "worker-m", &output, &flags,
    )]);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ready = tokio::net::TcpStream::connect(&addr).await.is_ok()
            && get(&addr, "/readyz").await.0 == 200;
        if ready {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&addr, "/healthz").await.0, 200);
    assert_eq!(get(&addr, "/nothing-here").await.0, 404);
    let written = put_records(&kinesis, &stream, 8, 0, 50).await;
    wait_for_lines(std::slice::from_ref(&output), written.len()).await;

    fn value(metrics: &str, name: &str) -> f64 {
        metrics
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
    // The recorder writes its lines inside `process_records`; the worker counts
    // a batch once the processor returns, so the last batch may be counted a
    // moment after its lines are on disk.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, metrics) = get(&addr, "/metrics").await;
        assert_eq!(status, 200);
        let processed = value(&metrics, "kcl_records_processed_total");
        assert!(processed <= 50.0, "{metrics}");
        if processed == 50.0 {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "records never counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let metric = |name: &str| value(&metrics, name);
    assert_eq!(metric("kcl_leases_held"), 2.0);
    // The group's gauges, for autoscaling.
    assert_eq!(
        metric("kcl_group_leases{state=\"processing\"}"),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric("kcl_group_leases{state=\"waiting\"}"),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric("kcl_group_leases{state=\"unassigned\"}"),
        0.0,
        "{metrics}"
    );
    assert_eq!(metric("kcl_group_workers"), 1.0, "{metrics}");
    assert!(metric("kcl_checkpoint_writes_total{outcome=\"ok\"}") >= 2.0);
    assert!(metrics.contains(
        "kcl_aws_requests_total{service=\"kinesis\",operation=\"GetRecords\",outcome=\"ok\"}"
    ));
    assert!(metrics.contains(
        "kcl_aws_requests_total{service=\"dynamodb\",operation=\"Scan\",outcome=\"ok\"}"
    ));
    assert!(metrics.contains("kcl_batch_processing_seconds_bucket"));
    assert!(metrics.contains(&format!(
        "kcl_millis_behind_latest{{stream=\"{stream}\",shard="
    )));
    assert!(metrics.contains(&format!(
        "kcl_records_processed_total{{stream=\"{stream}\",shard="
    )));
    assert!(metrics.contains("# HELP kcl_records_processed_total"));

    stop_all(&mut replicas);
    // JSON logs carry the worker and shard ids on the shard consumers' lines.
    let logs = std::fs::read_to_string(output.with_extension("log")).unwrap();
    let consumer_line = logs
        .lines()
        .find(|line| line.contains("shard consumer starting"))
        .expect("a shard consumer log line");
    let parsed: serde_json::Value = serde_json::from_str(consumer_line).expect("JSON log line");
    let span = &parsed["span"];
    assert_eq!(span["worker_id"], "worker-m", "{consumer_line}");
    assert_eq!(span["stream"], stream.as_str(), "{consumer_line}");
    assert!(
        span["shard_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("shardId-"))
    );
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
    let out = output_dir("recorder-reshard-out");
    let dir = out.path();
    let (mut replicas, outputs) = start_three(&aws, &stream, &app, dir);
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_shards_over_before_they_could_expire_and_nothing_is_processed_twice() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (
        unique_name("recorder-handoff"),
        unique_name("recorder-handoff-app"),
    );
    create_stream(&kinesis, &stream, 4).await;
    let out = output_dir("recorder-handoff-out");
    let dir = out.path();
    // A failover time far longer than a handoff: shards that had to expire
    // would stall for 30 s.
    let flags = [
        "--failover-time-ms",
        "30000",
        "--assignment-interval-ms",
        "500",
    ];
    let (mut replicas, outputs) = start_balanced_pair(&aws, &stream, &app, dir, &flags).await;
    let producer = OrderedProducer::start(kinesis.clone(), &stream, 16, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;

    terminate(&replicas.0[0]);
    let stopped = tokio::time::Instant::now();
    let status = replicas.0[0].wait().expect("wait for w0");
    assert!(status.success(), "w0 exited with {status}");
    let taken_over = loop {
        let owners = lease_owners(&aws, &app).await;
        if owners.get("w1") == Some(&4) {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "never handed over: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        taken_over < Duration::from_secs(15),
        "took {taken_over:?}: the leases expired instead"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = producer.stop().await;
    wait_for_lines(&outputs, written.len()).await;
    stop_all(&mut replicas);

    let mut data: Vec<String> = Vec::new();
    for output in &outputs {
        data.extend(read_lines(output).unwrap().into_iter().map(|l| l.data));
    }
    assert_eq!(data.len(), written.len(), "no record processed twice");
    data.sort_unstable();
    let mut wanted = written.clone();
    wanted.sort_unstable();
    assert_eq!(data, wanted);
}

/// A planned stop does not wait for the other workers' rounds: the
/// stopping worker hands each shard to its receiver itself, and the
/// receiver, watching its own heartbeat item, starts it as soon as it is
/// released. Rounds here are 30 s apart, so a stop that waited for one
/// would take up to 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_every_shard_over_within_seconds_without_waiting_for_a_round() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (
        unique_name("recorder-fast"),
        unique_name("recorder-fast-app"),
    );
    create_stream(&kinesis, &stream, 4).await;
    let out = output_dir("recorder-fast-out");
    let dir = out.path();
    // Started together, they split the shards at their first rounds.
    let flags = ["--assignment-interval-ms", "30000"];
    let (mut replicas, outputs) = start_balanced_pair(&aws, &stream, &app, dir, &flags).await;
    let producer = OrderedProducer::start(kinesis.clone(), &stream, 16, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let signalled_ms = epoch_ms();
    terminate(&replicas.0[0]);
    let status = replicas.0[0].wait().expect("wait for w0");
    assert!(status.success(), "w0 exited with {status}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let written = producer.stop().await;
    wait_for_lines(&outputs, written.len()).await;
    stop_all(&mut replicas);

    let lines: Vec<_> = outputs
        .iter()
        .flat_map(|output| read_lines(output).unwrap())
        .collect();
    // Each shard w0 was processing when signalled: the first record w1
    // processed on it afterwards.
    let mut last_before: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    let mut first_after: BTreeMap<&str, u64> = BTreeMap::new();
    for line in &lines {
        if line.processed_ms <= signalled_ms {
            let last = last_before.entry(&line.shard).or_insert((0, ""));
            if line.processed_ms >= last.0 {
                *last = (line.processed_ms, &line.worker);
            }
        } else if line.worker == "w1" {
            let first = first_after.entry(&line.shard).or_insert(u64::MAX);
            *first = (*first).min(line.processed_ms);
        }
    }
    let moved: Vec<&str> = last_before
        .iter()
        .filter(|(_, (_, worker))| *worker == "w0")
        .map(|(shard, _)| *shard)
        .collect();
    assert_eq!(
        moved.len(),
        2,
        "w0 was processing two shards: {last_before:?}"
    );
    for shard in moved {
        let took = first_after
            .get(shard)
            .map(|first| first - signalled_ms)
            .unwrap_or_else(|| panic!("{shard} never processed by w1 after the stop"));
        assert!(
            took < 5_000,
            "{shard}: {took} ms from SIGTERM to its new owner's first record"
        );
    }
    let mut data: Vec<&str> = lines.iter().map(|l| l.data.as_str()).collect();
    assert_eq!(data.len(), written.len(), "no record processed twice");
    data.sort_unstable();
    let mut wanted: Vec<&str> = written.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    assert_eq!(data, wanted);
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_reads_through_enhanced_fan_out() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (
        unique_name("recorder-fanout"),
        unique_name("recorder-fanout-app"),
    );
    create_stream(&kinesis, &stream, 2).await;
    let out = output_dir("recorder-fanout-out");
    let dir = out.path();
    let output = dir.join("worker.jsonl");
    let flags = ["--retrieval", "fanout", "--assignment-interval-ms", "500"];
    let mut replicas = Processes(vec![start_recorder(
        RECORDER, &aws, &stream, &app, "worker-f", &output, &flags,
    )]);
    let written = put_records(&kinesis, &stream, 8, 0, 100).await;
    wait_for_lines(std::slice::from_ref(&output), written.len()).await;
    stop_all(&mut replicas);
    let mut data: Vec<String> = read_lines(&output)
        .unwrap()
        .into_iter()
        .map(|l| l.data)
        .collect();
    data.sort_unstable();
    let mut wanted = written.clone();
    wanted.sort_unstable();
    assert_eq!(data, wanted, "every record exactly once");
    let logs = std::fs::read_to_string(output.with_extension("log")).unwrap();
    assert!(logs.contains("reading through enhanced fan-out"), "{logs}");
}
