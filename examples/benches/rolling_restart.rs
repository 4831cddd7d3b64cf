//! A rolling restart of three `recorder` replicas under load, as a
//! Kubernetes Deployment with `maxSurge: 1, maxUnavailable: 0` does it:
//! for each old replica, start a new one, let it take its share, then stop
//! the old one with SIGTERM. Measures, from the recorders' output:
//! - per shard, the gap between the last record the old owner processed and
//!   the first the new owner processed, at every change of owner;
//! - records processed more than once;
//! - per stop, the time from SIGTERM until every shard the stopped replica
//!   was processing has processed a record on its new owner.
//!
//! ```sh
//! scripts/local-aws.sh up && eval "$(scripts/local-aws.sh env)"
//! cargo bench -p kcl-examples --bench rolling_restart
//! ```
//!
//! Settings are the defaults (10 s failover, 10 s assignment rounds, 100 ms
//! handoff polls, 500 ms watch), 6 shards, 16 keys written every 20 ms.
//! Run with `KCL_WATCH_INTERVAL_MS=0 KCL_HANDOFF_POLL_INTERVAL_MS=200` in
//! the environment (the recorders inherit it) for the row without the
//! watch.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use kcl_examples::recorder::{RecordLine, read_lines};
use kcl_tests::processes::{Processes, lease_owners, start_recorder, terminate};
use kcl_tests::stream::{OrderedProducer, create_stream};
use kcl_tests::{LocalAws, output_dir, unique_name};

const RECORDER: &str = env!("CARGO_BIN_EXE_recorder");
const SHARDS: usize = 6;

#[tokio::main]
async fn main() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (unique_name("rolling"), unique_name("rolling-app"));
    create_stream(&kinesis, &stream, SHARDS as i32).await;
    let out = output_dir("rolling-out");
    let dir = out.path();
    let started = Instant::now();
    let mut processes = Processes::default();
    let mut outputs: Vec<PathBuf> = Vec::new();
    let mut start = |name: &str, processes: &mut Processes| {
        let output = dir.join(format!("{name}.jsonl"));
        let child = start_recorder(RECORDER, &aws, &stream, &app, name, &output, &[]);
        outputs.push(output);
        processes.0.push(child);
        processes.0.len() - 1
    };

    let old: Vec<usize> = ["old-0", "old-1", "old-2"]
        .iter()
        .map(|name| start(name, &mut processes))
        .collect();
    wait_for(&aws, &app, 3).await;
    let producer = OrderedProducer::start(kinesis.clone(), &stream, 16, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut stop_times = Vec::new();
    let mut signals: Vec<(String, u64)> = Vec::new();
    for (n, old) in old.into_iter().enumerate() {
        start(&format!("new-{n}"), &mut processes);
        wait_for(&aws, &app, 4).await;
        let stopping = Instant::now();
        signals.push((format!("old-{n}"), epoch_ms()));
        terminate(&processes.0[old]);
        let status = wait_exit(&mut processes.0[old]).await;
        assert!(status.success(), "old-{n} exited with {status}");
        stop_times.push(stopping.elapsed());
        wait_for(&aws, &app, 3).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let written = producer.stop().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while distinct(&outputs) < written.len() {
        assert!(
            Instant::now() < deadline,
            "records missing after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for child in &mut processes.0 {
        if matches!(child.try_wait(), Ok(None)) {
            terminate(child);
            wait_exit(child).await;
        }
    }

    let lines = all_lines(&outputs);
    report(&lines, written.len(), &stop_times, started.elapsed());
    let moved = handed_over(&lines, &signals);
    println!("SIGTERM to every shard processing on its new owner, ms: {moved:?}");
}

/// Per shard, the records in processing order: (processed_ms, worker).
fn batches_by_shard(lines: &[RecordLine]) -> BTreeMap<&str, Vec<(u64, &str)>> {
    let mut by_shard: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    for line in lines {
        by_shard
            .entry(&line.shard)
            .or_default()
            .push((line.processed_ms, &line.worker));
    }
    for batches in by_shard.values_mut() {
        batches.sort_unstable();
    }
    by_shard
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// For each stop (worker, signal time in epoch ms): how long until every
/// shard that worker was processing when signalled (it processed the
/// shard's last record before the signal) processed a record on another
/// worker. Asserts that each of them did.
fn handed_over(lines: &[RecordLine], signals: &[(String, u64)]) -> Vec<u64> {
    let by_shard = batches_by_shard(lines);
    signals
        .iter()
        .map(|(worker, signal)| {
            by_shard
                .iter()
                .filter(|(_, batches)| {
                    batches
                        .iter()
                        .rev()
                        .find(|(at, _)| at <= signal)
                        .is_some_and(|(_, by)| by == worker)
                })
                .map(|(shard, batches)| {
                    let (at, _) = batches
                        .iter()
                        .find(|(at, by)| at > signal && by != worker)
                        .unwrap_or_else(|| panic!("{shard} never moved off {worker}"));
                    at - signal
                })
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// Waits until `workers` workers hold the shards (each at least one).
async fn wait_for(aws: &LocalAws, app: &str, workers: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let owners = lease_owners(aws, app).await;
        let held: usize = owners.values().sum();
        if owners.len() == workers && held == SHARDS {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never spread over {workers}: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("wait for recorder") {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_lines(outputs: &[PathBuf]) -> Vec<RecordLine> {
    outputs
        .iter()
        .flat_map(|p| read_lines(p).unwrap_or_default())
        .collect()
}

fn distinct(outputs: &[PathBuf]) -> usize {
    let lines = all_lines(outputs);
    let mut data: Vec<&str> = lines.iter().map(|l| l.data.as_str()).collect();
    data.sort_unstable();
    data.dedup();
    data.len()
}

fn report(lines: &[RecordLine], written: usize, stop_times: &[Duration], took: Duration) {
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for line in lines {
        *copies.entry(&line.data).or_default() += 1;
    }
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    let mut handoff_gaps = Vec::new();
    let mut steady_gaps = Vec::new();
    for mut batches in batches_by_shard(lines).into_values() {
        batches.dedup();
        for pair in batches.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            if pair[0].1 == pair[1].1 {
                steady_gaps.push(gap);
            } else {
                handoff_gaps.push(gap);
            }
        }
    }
    handoff_gaps.sort_unstable();
    steady_gaps.sort_unstable();
    let pick = |v: &[u64], q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    println!("rolling restart of 3 replicas, {SHARDS} shards, {written} records, {took:.0?}");
    println!(
        "records processed: {} (distinct {})",
        lines.len(),
        copies.len()
    );
    println!("records processed twice: {duplicates}");
    println!(
        "owner changes: {}; gap ms min/median/max: {:?}/{:?}/{:?}",
        handoff_gaps.len(),
        pick(&handoff_gaps, 0.0),
        pick(&handoff_gaps, 0.5),
        pick(&handoff_gaps, 1.0),
    );
    println!(
        "same-owner gap between batches, ms median/max: {:?}/{:?}",
        pick(&steady_gaps, 0.5),
        pick(&steady_gaps, 1.0)
    );
    println!("SIGTERM to exit: {stop_times:.1?}");
    assert_eq!(copies.len(), written, "records lost");
}
