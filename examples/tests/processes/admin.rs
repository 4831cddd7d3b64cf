//! `kcl-admin` against a running fleet of recorder replicas: `status`,
//! `lineage` and `lag` as an operator runs them (JSON output, exit codes),
//! and bad input refused with a clear message and nothing changed.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

use kcl_examples::recorder::read_lines;
use kcl_tests::processes::{Processes, lease_owners, local_aws_env, start_recorder, terminate};
use kcl_tests::stream::{create_stream, put_records, split_in_half};
use kcl_tests::{LocalAws, output_dir, unique_name};
use serde_json::Value;

use super::{ADMIN, RECORDER};

/// Runs `kcl-admin` with `args` against the local stack.
fn admin(aws: &LocalAws, args: &[&str]) -> Output {
    Command::new(ADMIN)
        .args(args)
        .env_remove("KCL_APPLICATION_NAME")
        .env_remove("KCL_STREAM_NAME")
        .envs(local_aws_env(aws))
        .output()
        .expect("run kcl-admin")
}

/// Runs `kcl-admin ... --output json`, expecting success, and parses it.
fn admin_json(aws: &LocalAws, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let output = admin(aws, &args);
    assert!(
        output.status.success(),
        "kcl-admin {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON report")
}

fn start(aws: &LocalAws, stream: &str, app: &str, worker: &str, dir: &Path) -> Child {
    let fast = [
        "--failover-time-ms",
        "3000",
        "--assignment-interval-ms",
        "500",
    ];
    let output = dir.join(format!("{worker}.jsonl"));
    start_recorder(RECORDER, aws, stream, app, worker, &output, &fast)
}

/// Waits until `check` holds of `kcl-admin status`.
async fn wait_for_status(
    aws: &LocalAws,
    app: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let output = admin(
            aws,
            &["status", "--application-name", app, "--output", "json"],
        );
        // Until the first worker creates the tables, there is no status.
        let status: Value = if output.status.success() {
            serde_json::from_slice(&output.stdout).expect("JSON report")
        } else {
            Value::String(String::from_utf8_lossy(&output.stderr).into_owned())
        };
        if output.status.success() && check(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {what}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn states(status: &Value) -> Vec<(String, String)> {
    status["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| {
            (
                l["shard"].as_str().unwrap_or_default().to_owned(),
                l["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn status_lineage_and_lag_of_a_running_fleet() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let stream = unique_name("admin");
    let app = unique_name("admin-app");
    create_stream(&kinesis, &stream, 2).await;
    put_records(&kinesis, &stream, 8, 0, 40).await;
    let dir = output_dir("admin");
    let fleet = Processes(vec![
        start(&aws, &stream, &app, "worker-a", dir.path()),
        start(&aws, &stream, &app, "worker-b", dir.path()),
    ]);

    // Status: two workers with a heartbeat, one lease each, processing.
    let status = wait_for_status(&aws, &app, "balanced", |status| {
        let workers = status["workers"].as_array().map_or(0, Vec::len);
        workers == 2
            && status["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|w| w["leases_held"] == 1)
    })
    .await;
    assert_eq!(status["application"], app.as_str());
    for worker in status["workers"].as_array().expect("workers") {
        let age = worker["heartbeat_age_millis"].as_u64().expect("age");
        assert!(age < 10_000, "a fresh heartbeat: {worker}");
        assert_eq!(worker["draining"], false);
    }
    assert!(
        states(&status)
            .iter()
            .all(|(_, state)| state == "processing"),
        "{status:#}"
    );
    let table = admin(&aws, &["status", "--application-name", &app]);
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("worker-a") && table.contains("processing"),
        "{table}"
    );

    // Lineage after a split: the parent ends, its children follow it.
    let parent = status["leases"][0]["shard"]
        .as_str()
        .expect("shard")
        .to_owned();
    split_in_half(&kinesis, &stream, &parent).await;
    put_records(&kinesis, &stream, 8, 40, 40).await;
    let status = wait_for_status(&aws, &app, "past the split", |status| {
        let states = states(status);
        states.len() == 4
            && states
                .iter()
                .any(|(s, state)| *s == parent && state == "finished")
            && states
                .iter()
                .filter(|(_, state)| state == "processing")
                .count()
                == 3
    })
    .await;
    let lineage = admin_json(
        &aws,
        &[
            "lineage",
            "--application-name",
            &app,
            "--stream-name",
            &stream,
        ],
    );
    let shards = lineage["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 4, "{lineage:#}");
    let position = |id: &str| {
        shards
            .iter()
            .position(|s| s["shard"] == id)
            .expect("listed")
    };
    let children: Vec<&str> = shards[position(&parent)]["children"]
        .as_array()
        .expect("children")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(children.len(), 2, "{lineage:#}");
    for child in &children {
        assert!(
            position(child) > position(&parent),
            "parents first: {lineage:#}"
        );
        assert_eq!(shards[position(child)]["open"], true);
        assert_eq!(shards[position(child)]["parents"][0], parent.as_str());
    }
    assert_eq!(shards[position(&parent)]["open"], false);
    assert_eq!(shards[position(&parent)]["state"], "finished");
    drop(status);

    // Lag with every worker stopped: records written since are behind,
    // by about the time since they were written. First every record so far
    // is processed (a stop is too quick to catch up on the way).
    let outputs = ["worker-a", "worker-b"].map(|w| dir.path().join(format!("{w}.jsonl")));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let processed: std::collections::BTreeSet<String> = outputs
            .iter()
            .flat_map(|output| read_lines(output).unwrap_or_default())
            .map(|line| line.data)
            .collect();
        if processed.len() >= 80 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 80 records processed",
            processed.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for worker in &fleet.0 {
        terminate(worker);
    }
    let stopped = wait_for_status(&aws, &app, "without workers", |status| {
        status["workers"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    assert_eq!(stopped["workers"].as_array().map(Vec::len), Some(0));
    let caught_up = admin_json(
        &aws,
        &["lag", "--application-name", &app, "--stream-name", &stream],
    );
    assert_eq!(
        caught_up["shards"].as_array().map(Vec::len),
        Some(3),
        "{caught_up:#}"
    );
    assert_eq!(caught_up["max_millis_behind_latest"], 0, "{caught_up:#}");
    put_records(&kinesis, &stream, 8, 80, 40).await;
    let written = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let behind = admin_json(
        &aws,
        &["lag", "--application-name", &app, "--stream-name", &stream],
    );
    let elapsed = written.elapsed().as_millis() as u64;
    for shard in behind["shards"].as_array().expect("shards") {
        let lag = shard["millis_behind_latest"].as_u64().expect("lag");
        assert!(
            (1_500..=elapsed + 1_000).contains(&lag),
            "{lag} ms behind, written {elapsed} ms ago: {behind:#}"
        );
    }
    let table = admin(
        &aws,
        &["lag", "--application-name", &app, "--stream-name", &stream],
    );
    assert!(String::from_utf8_lossy(&table.stdout).contains("largest"));
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason_and_exit_code_1() {
    let aws = LocalAws::connect();
    let refused = |args: &[&str], reason: &str| {
        let output = admin(&aws, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout");
    };
    let missing = unique_name("no-such-app");
    refused(
        &["status", "--application-name", &missing],
        "no lease table named",
    );
    refused(
        &["lag", "--application-name", &missing, "--stream-name", "s"],
        "no lease table named",
    );
    refused(&["status"], "give --application-name");
    refused(&["status", "--output", "yaml"], "invalid value 'yaml'");
    refused(&["no-such-command"], "unrecognized subcommand");
    // A table of one stream needs the stream for lag.
    let kinesis = aws.kinesis();
    let stream = unique_name("admin-bad");
    let app = unique_name("admin-bad-app");
    create_stream(&kinesis, &stream, 1).await;
    let dir = output_dir("admin-bad");
    let worker = Processes(vec![start(&aws, &stream, &app, "worker-a", dir.path())]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while lease_owners(&aws, &app).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no lease taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    refused(&["lag", "--application-name", &app], "needs the stream");
    drop(worker);
    // Help is an answer.
    let help = admin(&aws, &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["status", "lag", "lineage"] {
        assert!(help.contains(command), "{help}");
    }
}

/// `evict` moves a live worker's leases away without stopping it, each
/// handed over after a checkpoint (nothing processed twice, nothing lost),
/// and `--cancel` lets it take its share again.
#[tokio::test]
async fn evict_drains_a_live_worker_and_cancel_brings_it_back() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let stream = unique_name("evict");
    let app = unique_name("evict-app");
    create_stream(&kinesis, &stream, 4).await;
    let dir = output_dir("evict");
    let mut fleet = Processes(vec![
        start(&aws, &stream, &app, "worker-a", dir.path()),
        start(&aws, &stream, &app, "worker-b", dir.path()),
    ]);
    let held = |status: &Value, worker: &str| {
        status["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["worker"] == worker)
            .and_then(|w| w["leases_held"].as_u64())
    };
    wait_for_status(&aws, &app, "balanced", |s| {
        held(s, "worker-a") == Some(2) && held(s, "worker-b") == Some(2)
    })
    .await;
    let mut written = put_records(&kinesis, &stream, 8, 0, 80).await;

    let evicted = admin_json(
        &aws,
        &[
            "evict",
            "--application-name",
            &app,
            "--worker-id",
            "worker-a",
            "--wait",
            "60",
        ],
    );
    assert_eq!(evicted["drained"], true, "{evicted:#}");
    let status = wait_for_status(&aws, &app, "drained", |s| {
        held(s, "worker-a") == Some(0) && held(s, "worker-b") == Some(4)
    })
    .await;
    let a = status["workers"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["worker"] == "worker-a").cloned())
        .expect("worker-a still has a heartbeat");
    assert_eq!(a["draining"], true);
    assert_eq!(a["evicted"], true);
    assert!(
        fleet.0[0].try_wait().expect("status").is_none(),
        "worker-a runs on"
    );
    written.extend(put_records(&kinesis, &stream, 8, 80, 80).await);

    admin_json(
        &aws,
        &[
            "evict",
            "--application-name",
            &app,
            "--worker-id",
            "worker-a",
            "--cancel",
        ],
    );
    wait_for_status(&aws, &app, "balanced again", |s| {
        held(s, "worker-a") == Some(2) && held(s, "worker-b") == Some(2)
    })
    .await;
    written.extend(put_records(&kinesis, &stream, 8, 160, 40).await);

    // Every record processed exactly once: graceful handoffs both ways.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut counts = std::collections::HashMap::<String, usize>::new();
        for n in ["worker-a", "worker-b"] {
            let path = dir.path().join(format!("{n}.jsonl"));
            for line in kcl_examples::recorder::read_lines(&path).unwrap_or_default() {
                *counts.entry(line.data).or_default() += 1;
            }
        }
        if written.iter().all(|r| counts.contains_key(r)) {
            let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
            assert!(repeated.is_empty(), "processed twice: {repeated:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "records missing");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Unknown workers are refused, naming the live ones.
    let unknown = admin(
        &aws,
        &[
            "evict",
            "--application-name",
            &app,
            "--worker-id",
            "worker-z",
        ],
    );
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("worker-a, worker-b"), "{stderr}");
    for worker in &fleet.0 {
        terminate(worker);
    }
    fleet.0.iter_mut().for_each(|w| {
        let _ = w.wait();
    });
}
