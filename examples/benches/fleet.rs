//! Fleet figures with `recorder` processes on the local stack, default
//! settings (10 s failover time, 10 s assignment interval):
//! - failover after SIGKILL: three workers on 6 shards under load; one is
//!   killed (then replaced, and the fleet rebalances) several times. Per
//!   shard of the killed worker: time from the kill to the first record
//!   another worker processes on it. Min / median / max over all of them.
//! - scale-out: one worker holds all 32 shards; three more start at once.
//!   Time from their start until every shard is held and the counts differ
//!   by at most one, and how many leases changed owner (24 is the least
//!   possible).
//!
//! ```sh
//! scripts/local-aws.sh up && eval "$(scripts/local-aws.sh env)"
//! cargo bench -p kcl-examples --bench fleet              # both
//! cargo bench -p kcl-examples --bench fleet -- scale-out # one: failover or scale-out
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kcl_examples::recorder::read_lines;
use kcl_lease::{DynamoDbLeaseStore, LeaseStore};
use kcl_tests::processes::{Processes, lease_owners, start_recorder, terminate};
use kcl_tests::stream::{OrderedProducer, create_stream};
use kcl_tests::{LocalAws, output_dir, unique_name};

const RECORDER: &str = env!("CARGO_BIN_EXE_recorder");
const KILLS: usize = 5;

#[tokio::main]
async fn main() {
    let aws = LocalAws::connect();
    // `cargo bench ... -- failover` or `-- scale-out` runs one of the two.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if wanted("failover") {
        failover(&aws).await;
    }
    if wanted("scale-out") {
        scale_out(&aws).await;
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Waits until `workers` workers hold all `shards` leases, balanced.
async fn wait_balanced(aws: &LocalAws, app: &str, workers: usize, shards: usize) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let owners = lease_owners(aws, app).await;
        let held: usize = owners.values().sum();
        let (min, max) = (owners.values().min(), owners.values().max());
        if owners.len() == workers
            && held == shards
            && max.zip(min).is_some_and(|(a, b)| a - b <= 1)
        {
            return;
        }
        assert!(Instant::now() < deadline, "never balanced: {owners:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn failover(aws: &LocalAws) {
    const SHARDS: usize = 6;
    let kinesis = aws.kinesis();
    let (stream, app) = (unique_name("failover"), unique_name("failover-app"));
    create_stream(&kinesis, &stream, SHARDS as i32).await;
    let out = output_dir("failover-out");
    let dir = out.path();
    let mut processes = Processes::default();
    let mut workers: Vec<(String, PathBuf)> = Vec::new();
    let start = |name: String, processes: &mut Processes, workers: &mut Vec<(String, PathBuf)>| {
        let output = dir.join(format!("{name}.jsonl"));
        processes.0.push(start_recorder(
            RECORDER,
            aws,
            &stream,
            &app,
            &name,
            &output,
            &[],
        ));
        workers.push((name, output));
        processes.0.len() - 1
    };
    let mut live: Vec<usize> = (0..3)
        .map(|n| start(format!("worker-{n}"), &mut processes, &mut workers))
        .collect();
    wait_balanced(aws, &app, 3, SHARDS).await;
    let producer = OrderedProducer::start(kinesis.clone(), &stream, 16, Duration::from_millis(20));

    let leases = DynamoDbLeaseStore::new(&aws.dynamodb(), &app);
    let mut gaps: Vec<u64> = Vec::new();
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim = live.remove(0);
        let name = workers[victim].0.clone();
        let shards: Vec<String> = leases
            .list_leases()
            .await
            .expect("leases")
            .into_iter()
            .filter(|l| l.owner.as_deref() == Some(name.as_str()))
            .map(|l| l.key)
            .collect();
        let killed_ms = epoch_ms();
        processes.0[victim].kill().expect("SIGKILL");
        processes.0[victim].wait().expect("reap");
        // Every shard of the victim processed again by another worker.
        let deadline = Instant::now() + Duration::from_secs(120);
        let resumed: BTreeMap<String, u64> = loop {
            let mut resumed = BTreeMap::new();
            for &other in &live {
                for line in read_lines(&workers[other].1).unwrap_or_default() {
                    if shards.contains(&line.shard) && line.processed_ms >= killed_ms {
                        let at = resumed.entry(line.shard.clone()).or_insert(u64::MAX);
                        *at = (*at).min(line.processed_ms - killed_ms);
                    }
                }
            }
            if resumed.len() == shards.len() {
                break resumed;
            }
            assert!(Instant::now() < deadline, "shards never resumed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!("kill {kill}: {name} held {shards:?}; resumed after ms {resumed:?}");
        gaps.extend(resumed.values());
        live.push(start(
            format!("worker-{}", 3 + kill),
            &mut processes,
            &mut workers,
        ));
        wait_balanced(aws, &app, 3, SHARDS).await;
    }
    producer.stop().await;
    for &n in &live {
        terminate(&processes.0[n]);
    }
    for &n in &live {
        processes.0[n].wait().expect("wait");
    }
    gaps.sort_unstable();
    println!(
        "failover after SIGKILL, {} shards over {KILLS} kills: min {} ms, median {} ms, max {} ms \
         (failover time 10 s + assignment interval 10 s = 20 s bound)",
        gaps.len(),
        gaps[0],
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1]
    );
}

async fn scale_out(aws: &LocalAws) {
    const SHARDS: usize = 32;
    let kinesis = aws.kinesis();
    let (stream, app) = (unique_name("scale-out"), unique_name("scale-out-app"));
    create_stream(&kinesis, &stream, SHARDS as i32).await;
    let out = output_dir("scale-out-out");
    let dir = out.path();
    let start = |name: &str| -> Child {
        let output = dir.join(format!("{name}.jsonl"));
        start_recorder(RECORDER, aws, &stream, &app, name, &output, &[])
    };
    let mut processes = Processes(vec![start("worker-0")]);
    wait_balanced(aws, &app, 1, SHARDS).await;
    let producer = OrderedProducer::start(kinesis.clone(), &stream, 64, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let leases = DynamoDbLeaseStore::new(&aws.dynamodb(), &app);
    let owner_of = |leases: Vec<kcl_lease::Lease>| -> BTreeMap<String, Option<String>> {
        leases
            .into_iter()
            .map(|l| (l.key.clone(), l.processing_owner().map(str::to_owned)))
            .collect()
    };
    let mut last = owner_of(leases.list_leases().await.expect("leases"));
    let started = Instant::now();
    for n in 1..4 {
        processes.0.push(start(&format!("worker-{n}")));
    }
    let mut moves = 0;
    let took = loop {
        let now = owner_of(leases.list_leases().await.expect("leases"));
        for (key, owner) in &now {
            if owner.is_some()
                && last
                    .get(key)
                    .is_some_and(|was| was.is_some() && was != owner)
            {
                moves += 1;
            }
        }
        // A lease between owners (released, not yet taken) is not a move
        // yet: keep the last owner seen.
        for (key, owner) in now {
            if owner.is_some() {
                last.insert(key, owner);
            }
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for owner in last.values().flatten() {
            *counts.entry(owner).or_default() += 1;
        }
        let held: usize = counts.values().sum();
        let (min, max) = (counts.values().min(), counts.values().max());
        if counts.len() == 4 && held == SHARDS && max.zip(min).is_some_and(|(a, b)| a - b <= 1) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "never balanced: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    producer.stop().await;
    for child in &processes.0 {
        terminate(child);
    }
    for child in &mut processes.0 {
        child.wait().expect("wait");
    }
    println!(
        "scale-out 1 -> 4 workers on {SHARDS} shards: balanced {took:.1?} after the new workers \
         started ({:.1} assignment intervals), {moves} leases moved (least possible: 24)",
        took.as_secs_f64() / 10.0
    );
}
