//! `kcl-admin reset` on a live group of recorder replicas: records at or
//! after the new position are processed again, records before it are not,
//! nothing written after it is lost, across a split and during a
//! rebalance; `--latest` skips a backlog; bad input changes nothing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kcl_examples::recorder::{RecordLine, read_lines};
use kcl_lease::{DynamoDbLeaseStore, LeaseStore};
use kcl_tests::processes::{Processes, lease_owners, local_aws_env, start_recorder, terminate};
use kcl_tests::stream::{create_stream, open_shards, put_records, split_in_half};
use kcl_tests::{LocalAws, output_dir, unique_name};
use serde_json::Value;
use tempfile::TempDir;

use super::{ADMIN, RECORDER};

/// A group of recorder replicas on a stream of its own.
struct Group {
    aws: LocalAws,
    stream: String,
    app: String,
    dir: TempDir,
    fleet: Processes,
    outputs: Vec<PathBuf>,
}

impl Group {
    async fn new(shards: i32) -> Self {
        let aws = LocalAws::connect();
        let stream = unique_name("reset");
        create_stream(&aws.kinesis(), &stream, shards).await;
        Self {
            aws,
            stream,
            app: unique_name("reset-app"),
            dir: output_dir("reset"),
            fleet: Processes(Vec::new()),
            outputs: Vec::new(),
        }
    }

    fn start(&mut self, worker: &str) {
        let output = self
            .dir
            .path()
            .join(format!("{worker}-{}.jsonl", self.outputs.len()));
        let fast = [
            "--failover-time-ms",
            "3000",
            "--assignment-interval-ms",
            "500",
        ];
        self.fleet.0.push(start_recorder(
            RECORDER,
            &self.aws,
            &self.stream,
            &self.app,
            worker,
            &output,
            &fast,
        ));
        self.outputs.push(output);
    }

    fn stop_all(&mut self) {
        for worker in &self.fleet.0 {
            terminate(worker);
        }
        for worker in &mut self.fleet.0 {
            let _ = worker.wait();
        }
        self.fleet.0.clear();
    }

    async fn put(&self, first: usize, count: usize) -> Vec<String> {
        put_records(&self.aws.kinesis(), &self.stream, 8, first, count).await
    }

    fn lines(&self) -> Vec<RecordLine> {
        self.outputs
            .iter()
            .flat_map(|path| read_lines(path).unwrap_or_default())
            .collect()
    }

    /// How many times each payload was processed.
    fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for line in self.lines() {
            *counts.entry(line.data).or_default() += 1;
        }
        counts
    }

    /// Waits until every record of `records` was processed `times` times
    /// or more.
    async fn wait_processed(&self, records: &[String], times: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let counts = self.counts();
            let short: Vec<&String> = records
                .iter()
                .filter(|r| counts.get(*r).copied().unwrap_or(0) < times)
                .collect();
            if short.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} records processed fewer than {times} times, e.g. {:?}",
                short.len(),
                &short[..short.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn admin(&self, args: &[&str]) -> Output {
        Command::new(ADMIN)
            .args(args)
            .args([
                "--application-name",
                &self.app,
                "--stream-name",
                &self.stream,
            ])
            .env_remove("KCL_APPLICATION_NAME")
            .env_remove("KCL_STREAM_NAME")
            .envs(local_aws_env(&self.aws))
            .output()
            .expect("run kcl-admin")
    }

    /// Runs a reset expected to succeed; returns its JSON report.
    fn reset(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.insert(0, "reset");
        args.extend(["--output", "json"]);
        let output = self.admin(&args);
        assert!(
            output.status.success(),
            "kcl-admin {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON plan")
    }

    async fn leases(&self) -> Vec<kcl_lease::Lease> {
        let mut leases = DynamoDbLeaseStore::new(&self.aws.dynamodb(), &self.app)
            .list_leases()
            .await
            .expect("read leases");
        leases.sort_by(|a, b| a.key.cmp(&b.key));
        leases
    }
}

/// A moment between two batches, clear of both by `gap` on each side.
async fn moment_between(gap: Duration) -> SystemTime {
    tokio::time::sleep(gap).await;
    let at = SystemTime::now();
    tokio::time::sleep(gap).await;
    at
}

fn epoch_millis(at: SystemTime) -> String {
    at.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis()
        .to_string()
}

fn assert_once(group: &Group, records: &[String], what: &str) {
    let counts = group.counts();
    let repeated: Vec<(&String, usize)> = records
        .iter()
        .map(|r| (r, counts.get(r).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(
        repeated.is_empty(),
        "{what} processed other than once: {repeated:?}"
    );
}

#[tokio::test]
async fn a_live_group_moves_back_to_a_time_and_processes_again_from_it() {
    let mut group = Group::new(2).await;
    group.start("worker-a");
    group.start("worker-b");
    let before = group.put(0, 40).await;
    group.wait_processed(&before, 1).await;
    let at = moment_between(Duration::from_millis(1200)).await;
    let after = group.put(40, 40).await;
    group.wait_processed(&after, 1).await;

    let rfc3339 = kcl_admin::reset::format_time(at);
    let dry = group.reset(&["--at-timestamp", &rfc3339, "--dry-run"]);
    assert_eq!(dry["applied"], false);
    assert_once(&group, &after, "records after the time, before the reset");
    let plan = group.reset(&["--at-timestamp", &rfc3339]);
    assert_eq!(plan["applied"], true, "{plan:#}");
    assert_eq!(plan["steps"].as_array().map(Vec::len), Some(2), "{plan:#}");
    let later = group.put(80, 40).await;

    group.wait_processed(&after, 2).await;
    group.wait_processed(&later, 1).await;
    assert_once(&group, &before, "records before the time");
    // The workers went on without a restart, each from its own shards.
    assert_eq!(group.fleet.0.len(), 2);
    for worker in &mut group.fleet.0 {
        assert!(
            worker.try_wait().expect("status").is_none(),
            "still running"
        );
    }
}

#[tokio::test]
async fn a_reset_across_a_split_reads_the_parent_again_before_its_children() {
    let mut group = Group::new(1).await;
    group.start("worker-a");
    group.start("worker-b");
    let before = group.put(0, 40).await;
    group.wait_processed(&before, 1).await;
    let at = moment_between(Duration::from_millis(1200)).await;
    let in_parent = group.put(40, 40).await;
    group.wait_processed(&in_parent, 1).await;
    let parent = open_shards(&group.aws.kinesis(), &group.stream).await[0]
        .0
        .clone();
    split_in_half(&group.aws.kinesis(), &group.stream, &parent).await;
    let in_children = group.put(80, 40).await;
    group.wait_processed(&in_children, 1).await;

    let plan = group.reset(&["--at-timestamp", &epoch_millis(at)]);
    let order: Vec<&str> = plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["shard"].as_str())
        .collect();
    assert_eq!(
        order.first(),
        Some(&parent.as_str()),
        "parents first: {plan:#}"
    );
    assert_eq!(order.len(), 3, "{plan:#}");

    group.wait_processed(&in_parent, 2).await;
    group.wait_processed(&in_children, 2).await;
    assert_once(&group, &before, "records before the time");
    // Per key, the replay reads the parent's records before the children's.
    let lines = group.lines();
    let second_time = |data: &String| {
        let mut times: Vec<u64> = lines
            .iter()
            .filter(|l| &l.data == data)
            .map(|l| l.processed_ms)
            .collect();
        times.sort_unstable();
        times[1]
    };
    for key in 0..8 {
        let prefix = format!("k{key}:");
        let parent_done = in_parent
            .iter()
            .filter(|d| d.starts_with(&prefix))
            .map(second_time)
            .max();
        let children_start = in_children
            .iter()
            .filter(|d| d.starts_with(&prefix))
            .map(second_time)
            .min();
        if let (Some(parent_done), Some(children_start)) = (parent_done, children_start) {
            assert!(
                parent_done <= children_start,
                "k{key}: a child record replayed at {children_start} before the parent's last at {parent_done}"
            );
        }
    }
}

#[tokio::test]
async fn a_reset_during_a_rebalance_moves_every_shard() {
    let mut group = Group::new(4).await;
    group.start("worker-a");
    let before = group.put(0, 40).await;
    group.wait_processed(&before, 1).await;
    let at = moment_between(Duration::from_millis(1200)).await;
    let after = group.put(40, 40).await;
    group.wait_processed(&after, 1).await;
    // A second worker joins: handoffs begin while the reset is written.
    group.start("worker-b");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let plan = group.reset(&["--at-timestamp", &epoch_millis(at)]);
    assert_eq!(plan["steps"].as_array().map(Vec::len), Some(4), "{plan:#}");
    let later = group.put(80, 40).await;
    group.wait_processed(&after, 2).await;
    group.wait_processed(&later, 1).await;
    assert_once(&group, &before, "records before the time");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let owners = lease_owners(&group.aws, &group.app).await;
        if owners.len() == 2 && owners.values().all(|n| *n == 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never balanced: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn latest_skips_a_backlog_of_a_stopped_group() {
    let mut group = Group::new(2).await;
    group.start("worker-a");
    let first = group.put(0, 20).await;
    group.wait_processed(&first, 1).await;
    group.stop_all();
    let backlog = group.put(20, 40).await;
    // `--latest` starts a clock margin before the reset, as workers do.
    tokio::time::sleep(kcl_core::consumer::LATEST_START_MARGIN + Duration::from_secs(1)).await;
    let refused = group.admin(&["reset", "--latest"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--while-stopped"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    group.reset(&["--latest", "--while-stopped"]);
    group.start("worker-a");
    let fresh = group.put(60, 40).await;
    group.wait_processed(&fresh, 1).await;
    let counts = group.counts();
    let replayed: Vec<&String> = backlog.iter().filter(|r| counts.contains_key(*r)).collect();
    assert!(
        replayed.is_empty(),
        "the backlog was processed: {replayed:?}"
    );
    assert_once(&group, &first, "records processed before the stop");
}

#[tokio::test]
async fn bad_resets_are_refused_and_change_nothing() {
    let mut group = Group::new(2).await;
    group.start("worker-a");
    let first = group.put(0, 20).await;
    group.wait_processed(&first, 1).await;
    let table = group.leases().await;
    let refused = |args: &[&str], reason: &str| {
        let mut args = args.to_vec();
        args.insert(0, "reset");
        let output = group.admin(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    };
    let tomorrow = SystemTime::now() + Duration::from_secs(86_400);
    refused(
        &["--at-timestamp", &epoch_millis(tomorrow)],
        "in the future",
    );
    refused(&["--at-timestamp", "yesterday"], "is not a time");
    refused(
        &["--trim-horizon", "--shard", "shardId-000000000042"],
        "has no shard shardId-000000000042",
    );
    refused(&[], "required");
    refused(&["--latest", "--trim-horizon"], "cannot be used with");
    let unknown = Command::new(ADMIN)
        .args(["reset", "--trim-horizon", "--stream-name", &group.stream])
        .args(["--application-name", &unique_name("no-such-app")])
        .envs(local_aws_env(&group.aws))
        .output()
        .expect("run kcl-admin");
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("no lease table named"), "{stderr}");
    let dry = group.reset(&["--trim-horizon", "--dry-run"]);
    assert_eq!(dry["applied"], false);
    assert_eq!(dry["steps"].as_array().map(Vec::len), Some(2));
    // The fleet's own writes go on (checkpoints, heartbeats); compare what
    // a reset would have changed.
    let positions = |leases: &[kcl_lease::Lease]| -> Vec<(String, u64)> {
        leases.iter().map(|l| (l.key.clone(), l.counter)).collect()
    };
    assert_eq!(
        positions(&group.leases().await),
        positions(&table),
        "nothing changed"
    );
    assert_once(&group, &first, "records");
}

/// A shard that closed before the time is not read again: its records
/// stay processed once, and its children go on from the time.
#[tokio::test]
async fn a_shard_closed_before_the_time_is_not_read_again() {
    let mut group = Group::new(1).await;
    group.start("worker-a");
    group.start("worker-b");
    let in_parent = group.put(0, 40).await;
    group.wait_processed(&in_parent, 1).await;
    let parent = open_shards(&group.aws.kinesis(), &group.stream).await[0]
        .0
        .clone();
    split_in_half(&group.aws.kinesis(), &group.stream, &parent).await;
    let before = group.put(40, 40).await;
    group.wait_processed(&before, 1).await;
    let at = moment_between(Duration::from_millis(1200)).await;
    let after = group.put(80, 40).await;
    group.wait_processed(&after, 1).await;

    let plan = group.reset(&["--at-timestamp", &epoch_millis(at)]);
    assert_eq!(plan["steps"].as_array().map(Vec::len), Some(3), "{plan:#}");
    let later = group.put(120, 40).await;
    group.wait_processed(&after, 2).await;
    group.wait_processed(&later, 1).await;
    assert_once(
        &group,
        &in_parent,
        "records of the parent, closed before the time",
    );
    assert_once(&group, &before, "records of the children before the time");
}
