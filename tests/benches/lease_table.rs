//! Lease-table figures, for BENCHMARKS.md.
//!
//! ```sh
//! cargo bench -p kcl-tests --bench lease_table -- cost        # simulated hour, exact counts
//! cargo bench -p kcl-tests --bench lease_table -- cost-dynamodb 120   # real coordinators, DynamoDB Local
//! cargo bench -p kcl-tests --bench lease_table -- rebalance   # 1,000 leases, random fleet changes
//! ```
//!
//! Cost is DynamoDB requests per lease-hour in steady state with 64 leases,
//! 4 workers and a 10 s failover time (the defaults: heartbeat every 5 s,
//! assignment round every 10 s, each worker reading its own heartbeat item
//! every 500 ms), and with that watch off. The Java KCL 2.x figure beside it is
//! analytic: with the same failover time it renews every lease every
//! 10 s / 3 = 3.33 s (one conditional UpdateItem each), and each worker's
//! lease taker scans the table every 2 × failover = 20 s.

use std::sync::Arc;
use std::time::Duration;

use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_lease::{
    DynamoDbLeaseStore, Lease, LeaseConfig, LeaseCoordinator, LeaseStore, RequestCounts,
    write_requests,
};
use kcl_tests::fleet_sim::FleetSim;
use kcl_tests::{LocalAws, unique_name};

const LEASES: usize = 64;
const WORKERS: usize = 4;

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; skip flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    match args.first().map(String::as_str) {
        None | Some("cost") => cost_simulated().await,
        Some("cost-dynamodb") => {
            let seconds = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(120);
            cost_dynamodb(seconds).await
        }
        Some("rebalance") => rebalance().await,
        Some(other) => {
            eprintln!(
                "unknown benchmark {other:?}: expected cost, cost-dynamodb [SECONDS] or rebalance"
            );
            std::process::exit(2);
        }
    }
}

fn java_kcl_per_lease_hour() -> (f64, f64) {
    let renewals = 3600.0 / (10.0 / 3.0);
    let scans = WORKERS as f64 * 3600.0 / 20.0 / LEASES as f64;
    (renewals, scans)
}

fn report(label: &str, before: &RequestCounts, after: &RequestCounts, hours: f64) {
    let diff: RequestCounts = after
        .iter()
        .map(|(op, n)| (*op, n - before.get(op).copied().unwrap_or(0)))
        .collect();
    let lease_hours = LEASES as f64 * hours;
    let writes = write_requests(&diff) as f64 / lease_hours;
    let total = diff.values().sum::<u64>() as f64 / lease_hours;
    let (kcl_writes, kcl_reads) = java_kcl_per_lease_hour();
    println!("{label}: {LEASES} leases, {WORKERS} workers, 10 s failover, idle");
    for (op, n) in &diff {
        println!("  {op:<12} {:>8.1} per lease-hour", *n as f64 / lease_hours);
    }
    println!("  writes       {writes:>8.1} per lease-hour   (Java KCL 2.x: {kcl_writes:.0})");
    println!(
        "  all requests {total:>8.1} per lease-hour   (Java KCL 2.x: {:.0}; {:.1}x fewer)",
        kcl_writes + kcl_reads,
        (kcl_writes + kcl_reads) / total
    );
}

/// One simulated hour of an idle fleet: exact request counts, with the
/// default settings and with the watch of each worker's own heartbeat item
/// off.
async fn cost_simulated() {
    let mut without_watch = LeaseConfig::new("replaced");
    without_watch.watch_interval = None;
    for (label, config) in [
        (
            "simulated hour (in-memory store)",
            LeaseConfig::new("replaced"),
        ),
        ("simulated hour, watch off", without_watch),
    ] {
        let mut sim = FleetSim::new(LEASES, config, 1).await;
        for _ in 0..WORKERS {
            sim.join().await;
        }
        sim.run_for(Duration::from_secs(120)).await;
        assert!(
            sim.is_balanced().await,
            "the fleet should be balanced after warm-up"
        );
        let before = sim.requests();
        sim.run_for(Duration::from_secs(3600)).await;
        report(label, &before, &sim.requests(), 1.0);
    }
}

/// Real coordinators on DynamoDB Local for `seconds`, extrapolated.
async fn cost_dynamodb(seconds: u64) {
    let client = LocalAws::connect().dynamodb();
    let table = unique_name("cost");
    let setup = DynamoDbLeaseStore::new(&client, &table);
    setup.ensure_tables().await.expect("create tables");
    for n in 0..LEASES {
        let lease = Lease::new(
            format!("shardId-{n:012}"),
            ExtendedSequenceNumber::TrimHorizon,
        );
        setup
            .create_lease_if_absent(&lease)
            .await
            .expect("create lease");
    }
    let mut stores = Vec::new();
    for w in 0..WORKERS {
        let store = Arc::new(DynamoDbLeaseStore::new(&client, &table));
        let (coordinator, _handle) =
            LeaseCoordinator::new(Arc::clone(&store), LeaseConfig::new(format!("worker-{w}")))
                .expect("valid config");
        tokio::spawn(coordinator.run(std::future::pending()));
        stores.push(store);
    }
    let total = |stores: &[Arc<DynamoDbLeaseStore>]| {
        let mut sum = RequestCounts::new();
        for store in stores {
            for (op, n) in store.request_counts() {
                *sum.entry(op).or_default() += n;
            }
        }
        sum
    };
    eprintln!("warming up for 30 s, then measuring for {seconds} s");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let before = total(&stores);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = total(&stores);
    report(
        &format!("{seconds} s on DynamoDB Local, extrapolated"),
        &before,
        &after,
        seconds as f64 / 3600.0,
    );
    let owners: Vec<_> = setup
        .list_leases()
        .await
        .expect("list")
        .into_iter()
        .filter_map(|l| l.owner)
        .collect();
    println!("  leases owned at the end: {} of {LEASES}", owners.len());
}

/// 1,000 leases; 40 seeded random fleet changes.
async fn rebalance() {
    let mut sim = FleetSim::new(1000, LeaseConfig::new("replaced"), 42).await;
    for _ in 0..4 {
        sim.join().await;
    }
    sim.episode(&[], 10).await;
    let (mut worst, mut moves, mut least) = (0.0f64, 0, 0);
    let mut worst_crash_seconds = 0.0f64;
    println!("1,000 leases, 10 s failover, 10 s rounds; rounds to balance after each change:");
    for _ in 0..40 {
        let changes = sim.random_changes(1, 12);
        let episode = sim.episode(&changes, 10).await;
        println!(
            "  {:<8} -> {:>2} workers: {:.2} rounds, {:.1} s, {} moves (least {})",
            format!("{:?}", episode.changes[0]),
            episode.workers,
            episode.rounds_to_balance,
            episode.seconds_to_balance,
            episode.moves,
            episode.least_moves
        );
        worst = worst.max(episode.rounds_to_balance);
        if episode.changes[0] == kcl_tests::fleet_sim::Change::Crash {
            worst_crash_seconds = worst_crash_seconds.max(episode.seconds_to_balance);
        }
        moves += episode.moves;
        least += episode.least_moves;
    }
    println!(
        "worst: {worst:.2} rounds after the change was visible; crash to balanced at most {worst_crash_seconds:.1} s"
    );
    println!("moves between live workers: {moves} (least possible {least})");
}
