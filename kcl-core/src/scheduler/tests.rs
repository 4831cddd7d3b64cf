//! Schedulers on the in-memory Kinesis and lease store, on tokio's paused
//! clock: handoffs between workers, clean shutdown and releases, resharding
//! (splits and merges), multi-stream tables (streams shared, added,
//! removed, deleted or created again, stream epochs) and the refusal of a
//! table of another kind.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl_lease::{InMemoryLeaseStore, Lease, LeaseStore};

use super::*;
use crate::consumer::{ConsumerOutcome, ShutdownReason};
use crate::kinesis::InMemoryKinesis;
use crate::streams::{ConsumedStream, ConsumedStreams};
use crate::test_support::{Journal, Scripted};

const STREAM: &str = "orders";

struct Fleet {
    /// Small values make shards lag behind their producer.
    max_records_per_call: u32,
    assignment_interval: Duration,
    kinesis: InMemoryKinesis,
    store: InMemoryLeaseStore,
    journal: Arc<Mutex<Journal>>,
}

impl Fleet {
    fn new(shards: u32, records: usize) -> Self {
        let kinesis = InMemoryKinesis::new();
        kinesis.create_stream(STREAM, shards);
        for n in 0..records {
            kinesis.put_record(STREAM, &format!("k{n}"), format!("r{n}").as_bytes());
        }
        let journal = Arc::new(Mutex::new(Journal {
            checkpoint_batches: true,
            ..Journal::default()
        }));
        Self {
            max_records_per_call: 10_000,
            assignment_interval: Duration::from_millis(500),
            kinesis,
            store: InMemoryLeaseStore::new(),
            journal,
        }
    }

    fn worker(&self, id: &str) -> Scheduler {
        let journal = Arc::clone(&self.journal);
        Scheduler::builder()
            .application_name("orders-app")
            .stream_name(STREAM)
            .worker_id(id)
            .failover_time(Duration::from_secs(2))
            .assignment_interval(self.assignment_interval)
            .shutdown_timeout(Duration::from_secs(5))
            .shard_sync_interval(Duration::from_secs(1))
            .lease_cleanup_delay(Duration::from_secs(2))
            .retrieval(crate::retrieval::RetrievalConfig {
                max_records_per_call: self.max_records_per_call,
                ..Default::default()
            })
            .backends(
                Arc::new(self.kinesis.clone()),
                Arc::new(self.store.client()),
            )
            .build(move |_: &str| Scripted(Arc::clone(&journal)))
            .unwrap()
    }

    fn processed(&self) -> Vec<String> {
        let mut data: Vec<String> = self
            .journal
            .lock()
            .unwrap()
            .processed
            .iter()
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect();
        data.sort();
        data
    }
}

fn expected(records: usize) -> Vec<String> {
    let mut data: Vec<String> = (0..records).map(|n| format!("r{n}")).collect();
    data.sort();
    data
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not reached within 60 s of virtual time");
}

#[tokio::test(start_paused = true)]
async fn a_joining_worker_gets_its_share_through_handoffs_without_duplicates() {
    let fleet = Fleet::new(4, 40);
    let a = fleet.worker("worker-a");
    let (a_held, a_stop, a_stats) = (a.held_leases(), a.shutdown_handle(), a.stats());
    let a_task = tokio::spawn(a.run());
    wait_until(|| a_held.borrow().len() == 4 && fleet.processed().len() == 40).await;

    for n in 40..80 {
        fleet
            .kinesis
            .put_record(STREAM, &format!("k{n}"), format!("r{n}").as_bytes());
    }
    let b = fleet.worker("worker-b");
    let (b_held, b_stop) = (b.held_leases(), b.shutdown_handle());
    let b_task = tokio::spawn(b.run());
    wait_until(|| {
        a_held.borrow().len() == 2 && b_held.borrow().len() == 2 && fleet.processed().len() >= 80
    })
    .await;

    a_stop.shutdown();
    b_stop.shutdown();
    a_task.await.unwrap().unwrap();
    b_task.await.unwrap().unwrap();
    assert_eq!(fleet.processed(), expected(80), "every record exactly once");
    assert_eq!(
        a_stats.snapshot().leases_released,
        4,
        "two handoffs and two at shutdown"
    );
    let leases = fleet.store.list_leases().await.unwrap();
    assert!(leases.iter().all(|l| l.owner.is_none()), "{leases:?}");
    assert!(fleet.store.list_heartbeats().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_processor_that_hangs_at_shutdown_does_not_hold_the_worker_past_the_timeout() {
    let fleet = Fleet::new(2, 10);
    fleet.journal.lock().unwrap().hang_on_shutdown = true;
    let worker = fleet.worker("worker-a");
    let (held, stop) = (worker.held_leases(), worker.shutdown_handle());
    let task = tokio::spawn(worker.run());
    wait_until(|| held.borrow().len() == 2 && fleet.processed().len() == 10).await;

    let asked = tokio::time::Instant::now();
    stop.shutdown();
    task.await.unwrap().unwrap();
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(6),
        "{took:?}"
    );
    // Not released: the hanging shards expire after the failover time.
    let leases = fleet.store.list_leases().await.unwrap();
    assert!(
        leases
            .iter()
            .all(|l| l.owner.as_deref() == Some("worker-a"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_missing_stream_fails_the_start_with_its_name() {
    let fleet = Fleet::new(1, 0);
    let worker = Scheduler::builder()
        .application_name("orders-app")
        .stream_name("no-such-stream")
        .backends(
            Arc::new(fleet.kinesis.clone()),
            Arc::new(fleet.store.client()),
        )
        .build(|_: &str| crate::test_support::NoopProcessor)
        .unwrap();
    let error = worker.run().await.unwrap_err();
    assert!(matches!(error, SchedulerError::Stream { .. }), "{error}");
    assert!(error.to_string().contains("no-such-stream"), "{error}");
}

/// Checks that for every key the records were first processed in the order
/// they were written (`k<key>:<n>`, n counting up per key).
fn assert_per_key_order(journal: &Journal) {
    let mut next: std::collections::HashMap<String, u64> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for record in &journal.processed {
        let data = String::from_utf8_lossy(&record.data).into_owned();
        if !seen.insert(data.clone()) {
            continue;
        }
        let (key, n) = data.split_once(':').unwrap();
        let n: u64 = n.parse().unwrap();
        let expected = next.entry(key.to_owned()).or_default();
        assert_eq!(
            n, *expected,
            "{key}: record {n} first processed before {expected}"
        );
        *expected += 1;
    }
}

#[tokio::test(start_paused = true)]
async fn splits_and_merges_keep_per_key_order_and_lose_nothing() {
    splits_and_merges_keep_per_key_order(false).await;
}

#[tokio::test(start_paused = true)]
async fn splits_and_merges_keep_per_key_order_in_a_multi_stream_application() {
    splits_and_merges_keep_per_key_order(true).await;
}

/// Splits and merges under two workers of an application of one stream, or
/// of a multi-stream application (children found by their stream's keys).
async fn splits_and_merges_keep_per_key_order(multi_stream: bool) {
    let mut fleet = Fleet::new(2, 0);
    // Shards fall behind, so child leases exist (found by discovery) long
    // before their parents are read to the end.
    fleet.max_records_per_call = 5;
    let worker = |id: &str| {
        if multi_stream {
            multi_stream_worker(&fleet, id, &[STREAM], Duration::from_secs(60))
        } else {
            fleet.worker(id)
        }
    };
    let a = worker("worker-a");
    let b = worker("worker-b");
    let (a_stop, b_stop) = (a.shutdown_handle(), b.shutdown_handle());
    let tasks = [tokio::spawn(a.run()), tokio::spawn(b.run())];

    let keys = 12;
    let mut written = 0;
    let mut split_children = None;
    for step in 0..80u64 {
        for key in 0..keys {
            fleet.kinesis.put_record(
                STREAM,
                &format!("k{key}"),
                format!("k{key}:{step}").as_bytes(),
            );
            written += 1;
        }
        match step {
            20 => {
                split_children = Some(fleet.kinesis.split_shard(
                    STREAM,
                    "shardId-000000000000",
                    u128::MAX / 4,
                ));
            }
            40 => {
                let [lower, upper] = split_children.clone().unwrap();
                fleet.kinesis.merge_shards(STREAM, &lower, &upper);
            }
            60 => {
                fleet
                    .kinesis
                    .split_shard(STREAM, "shardId-000000000001", u128::MAX / 4 * 3);
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_until(|| {
        let journal = fleet.journal.lock().unwrap();
        let distinct: std::collections::HashSet<_> =
            journal.processed.iter().map(|r| r.data.clone()).collect();
        distinct.len() == written
    })
    .await;
    // Finished parents go once their children have started.
    wait_until(|| {
        let leases = futures::executor::block_on(fleet.store.list_leases()).unwrap();
        leases.iter().all(|l| !l.is_finished())
    })
    .await;
    a_stop.shutdown();
    b_stop.shutdown();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let journal = fleet.journal.lock().unwrap();
    assert_per_key_order(&journal);
    assert_eq!(
        journal.processed.len(),
        written,
        "no record processed twice"
    );
    let leases = futures::executor::block_on(fleet.store.list_leases()).unwrap();
    assert!(
        leases.iter().all(|l| l.stream.is_some() == multi_stream),
        "{leases:?}"
    );
    let leases: Vec<&str> = leases.iter().map(Lease::shard_id).collect();
    assert_eq!(
        leases,
        [
            "shardId-000000000004",
            "shardId-000000000005",
            "shardId-000000000006"
        ],
        "only the open shards' leases remain"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stopping_worker_hands_its_shards_over_with_short_gaps_and_no_duplicates() {
    let mut fleet = Fleet::new(4, 0);
    // Long rounds: a stop that waited for them would leave gaps of seconds.
    fleet.assignment_interval = Duration::from_secs(5);
    let a = fleet.worker("worker-a");
    let (a_held, a_stop) = (a.held_leases(), a.shutdown_handle());
    let a_task = tokio::spawn(a.run());
    wait_until(|| a_held.borrow().len() == 4).await;
    let b = fleet.worker("worker-b");
    let (b_held, b_stop) = (b.held_leases(), b.shutdown_handle());
    let b_task = tokio::spawn(b.run());
    wait_until(|| a_held.borrow().len() == 2 && b_held.borrow().len() == 2).await;

    let producer = {
        let kinesis = fleet.kinesis.clone();
        tokio::spawn(async move {
            for n in 0..400 {
                kinesis.put_record(STREAM, &format!("k{}", n % 16), format!("r{n}").as_bytes());
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopping = tokio::time::Instant::now();
    a_stop.shutdown();
    a_task.await.unwrap().unwrap();
    let stop_took = stopping.elapsed();
    // b starts each shard within its handoff poll interval.
    wait_until(|| b_held.borrow().len() == 4).await;
    producer.await.unwrap();
    wait_until(|| fleet.processed().len() >= 400).await;
    b_stop.shutdown();
    b_task.await.unwrap().unwrap();

    assert_eq!(
        fleet.processed(),
        expected(400),
        "every record exactly once"
    );
    assert!(
        stop_took < Duration::from_secs(7),
        "stop took {stop_took:?}"
    );
    let journal = fleet.journal.lock().unwrap();
    let mut by_shard: std::collections::BTreeMap<&str, Vec<tokio::time::Instant>> =
        Default::default();
    for (shard, at) in &journal.batch_times {
        by_shard.entry(shard).or_default().push(*at);
    }
    for (shard, times) in by_shard {
        let longest = times
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default();
        assert!(
            longest < Duration::from_secs(1),
            "{shard}: {longest:?} without processing while records flowed"
        );
    }
}

/// A worker of `fleet` on its own journal and lease store client.
fn worker_on(
    fleet: &Fleet,
    id: &str,
    store: Arc<dyn LeaseStore>,
    journal: Arc<Mutex<Journal>>,
) -> Scheduler {
    Scheduler::builder()
        .application_name("orders-app")
        .stream_name(STREAM)
        .worker_id(id)
        .failover_time(Duration::from_secs(2))
        .assignment_interval(fleet.assignment_interval)
        .shutdown_timeout(Duration::from_secs(5))
        .shard_sync_interval(Duration::from_secs(1))
        .lease_cleanup_delay(Duration::from_secs(2))
        .backends(Arc::new(fleet.kinesis.clone()), store)
        .build(move |_: &str| Scripted(Arc::clone(&journal)))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_worker_cut_from_its_table_processes_nothing_after_another_took_its_shards() {
    let fleet = Fleet::new(4, 0);
    let journal = |_: &str| {
        Arc::new(Mutex::new(Journal {
            checkpoint_batches: false,
            ..Journal::default()
        }))
    };
    let (a_journal, b_journal) = (journal("a"), journal("b"));
    let kinesis = fleet.kinesis.clone();
    let producer = tokio::spawn(async move {
        for n in 0.. {
            kinesis.put_record(STREAM, &format!("k{n}"), format!("r{n}").as_bytes());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (faulty, faults) = kcl_lease::faults::FaultyStore::new(Arc::new(fleet.store.client()));
    let a = worker_on(&fleet, "worker-a", Arc::new(faulty), Arc::clone(&a_journal));
    let a_held = a.held_leases();
    let _a_task = tokio::spawn(a.run());
    wait_until(|| a_held.borrow().len() == 4).await;
    let b = worker_on(
        &fleet,
        "worker-b",
        Arc::new(fleet.store.client()),
        Arc::clone(&b_journal),
    );
    let b_held = b.held_leases();
    let _b_task = tokio::spawn(b.run());
    wait_until(|| a_held.borrow().len() == 2 && b_held.borrow().len() == 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // a's table stops answering; its Kinesis goes on.
    faults.stall();
    let stalled_at = tokio::time::Instant::now();
    wait_until(|| b_held.borrow().len() == 4).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    producer.abort();

    let first_b: std::collections::BTreeMap<String, tokio::time::Instant> = {
        let mut first = std::collections::BTreeMap::new();
        for (shard, at) in &b_journal.lock().unwrap().batch_times {
            if *at >= stalled_at {
                first.entry(shard.clone()).or_insert(*at);
            }
        }
        first
    };
    assert_eq!(first_b.len(), 4, "b processes every shard");
    let overlapping: Vec<(String, Duration)> = a_journal
        .lock()
        .unwrap()
        .batch_times
        .iter()
        .filter(|(shard, at)| first_b.get(shard).is_some_and(|b| at >= b))
        .map(|(shard, at)| (shard.clone(), *at - stalled_at))
        .collect();
    assert!(
        overlapping.is_empty(),
        "a processed {} batches after b started on the same shard (first: {:?}, last: {:?})",
        overlapping.len(),
        overlapping.first(),
        overlapping.last()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_found_its_lease_taken_is_not_restarted_before_the_next_round() {
    let mut fleet = Fleet::new(1, 0);
    fleet.assignment_interval = Duration::from_secs(30);
    let journal = Arc::new(Mutex::new(Journal {
        checkpoint_batches: true,
        ..Journal::default()
    }));
    let client = Arc::new(fleet.store.client());
    let a = worker_on(&fleet, "worker-a", client.clone(), Arc::clone(&journal));
    let held = a.held_leases();
    let _task = tokio::spawn(a.run());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while held.borrow().len() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another worker takes the lease behind a's back; a's next checkpoint
    // finds it gone.
    let lease = fleet.store.list_leases().await.unwrap().remove(0);
    fleet.store.take_lease(&lease, "worker-b").await.unwrap();
    fleet.kinesis.put_record(STREAM, "k", b"r0");
    while !journal
        .lock()
        .unwrap()
        .calls
        .iter()
        .any(|c| c == "lease_lost")
    {
        assert!(tokio::time::Instant::now() < deadline, "never lost");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = client.request_counts().get("GetItem").copied().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = client.request_counts().get("GetItem").copied().unwrap_or(0);
    assert!(after - before < 5, "{} lease reads in 2 s", after - before);
}

/// A coordinator of `fleet`'s two shards on `store` that holds both leases,
/// and the scheduler's consumer tasks around it (nothing started yet).
async fn holding_worker(
    fleet: &Fleet,
    store: Arc<dyn LeaseStore>,
) -> (WorkerTasks, CoordinatorHandle<dyn LeaseStore>) {
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let lease =
            kcl_lease::Lease::new(shard, kcl_checkpoint::ExtendedSequenceNumber::TrimHorizon);
        fleet.store.create_lease_if_absent(&lease).await.unwrap();
    }
    let (mut coordinator, handle) =
        LeaseCoordinator::new(Arc::clone(&store), kcl_lease::LeaseConfig::new("worker-a")).unwrap();
    let now = kcl_lease::deadline::now();
    coordinator.heartbeat(|| now).await.unwrap();
    coordinator.assignment_round(|| now).await.unwrap();
    assert_eq!(handle.held().borrow().len(), 2);
    let journal = Arc::clone(&fleet.journal);
    let context = Arc::new(ConsumerContext {
        worker_id: "worker-a".into(),
        kinesis: Arc::new(fleet.kinesis.clone()),
        store,
        factory: Arc::new(move |_: &str| Scripted(Arc::clone(&journal))),
        retrieval: Default::default(),
        retry_policy: Default::default(),
        kinesis_backoff: Default::default(),
        parent_poll_interval: Duration::from_secs(1),
        processor_timeout: None,
        stats: Arc::default(),
        shard_ends: tokio::sync::watch::channel(0).0,
    });
    let stream = ConsumedStream::single(STREAM, InitialPosition::TrimHorizon);
    let tasks = WorkerTasks::new(
        context,
        Arc::new(ConsumedStreams::new(vec![Arc::new(stream)])),
        handle.clone(),
    );
    (tasks, handle)
}

/// [`holding_worker`], already draining: it began to stop before it
/// started anything (the leases came from a round or a handoff that
/// completed after that).
async fn draining_worker(
    fleet: &Fleet,
    store: Arc<dyn LeaseStore>,
) -> (WorkerTasks, CoordinatorHandle<dyn LeaseStore>) {
    let (tasks, handle) = holding_worker(fleet, store).await;
    handle.stop_taking();
    (tasks, handle)
}

#[tokio::test(start_paused = true)]
async fn a_draining_worker_releases_the_leases_it_holds_but_never_started() {
    let fleet = Fleet::new(2, 0);
    let (mut tasks, handle) = draining_worker(&fleet, Arc::new(fleet.store.client())).await;
    let mut held = handle.held();
    tasks.drain(&mut held, Duration::from_secs(5)).await;
    assert!(
        tasks.running.is_empty(),
        "nothing was started while draining"
    );
    let leases = fleet.store.list_leases().await.unwrap();
    assert!(
        leases.iter().all(|l| l.owner.is_none()),
        "released for others to take: {leases:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_release_that_keeps_failing_is_tried_again_later_and_later() {
    let fleet = Fleet::new(2, 0);
    let (faulty, faults) = kcl_lease::faults::FaultyStore::new(Arc::new(fleet.store.client()));
    faults.only(&[kcl_lease::faults::Call::ReleaseLease]);
    faults.lose(u32::MAX);
    let (mut tasks, handle) = draining_worker(&fleet, Arc::new(faulty)).await;
    let mut held = handle.held();
    tasks.drain(&mut held, Duration::from_secs(20)).await;
    // Two leases, each tried at 0, 0.5, 1.5, 3.5, 7.5 and 15.5 s.
    let attempts = faults.lost();
    assert!(attempts <= 12, "{attempts} release attempts in 20 s");
    assert!(attempts >= 8, "{attempts} release attempts in 20 s");
}

#[tokio::test(start_paused = true)]
async fn a_consumer_stopped_by_a_deadline_that_moved_on_starts_again_and_a_lost_one_does_not() {
    let fleet = Fleet::new(2, 0);
    let (mut tasks, handle) = holding_worker(&fleet, Arc::new(fleet.store.client())).await;
    let held = handle.held().borrow().clone();
    assert_eq!(held.len(), 2);
    // Each consumer ends with its lease lost: one because its deadline
    // passed (a heartbeat then moved it on in the same epoch), the other
    // because the lease moved on.
    for (n, lease) in held.values().enumerate() {
        let token = lease.token.clone();
        let outcome = ConsumerOutcome {
            reason: ShutdownReason::LeaseLost,
            checkpoint: kcl_checkpoint::ExtendedSequenceNumber::TrimHorizon,
            child_shards: Vec::new(),
            deadline_passed: n == 0,
        };
        let task = tasks.consumers.spawn(async move { (token, outcome) });
        tasks.task_keys.insert(task.id(), lease.token.key.clone());
        let joined = tasks.consumers.join_next_with_id().await.unwrap();
        tasks.finished(joined);
    }
    tasks.reconcile(&held);
    let keys: Vec<&String> = held.keys().collect();
    assert!(tasks.running.contains_key(keys[0]), "started again");
    assert!(!tasks.running.contains_key(keys[1]), "a lost lease is not");
}

#[tokio::test(start_paused = true)]
async fn a_worker_sharing_its_table_with_a_renewing_foreign_worker_is_not_ready_until_it_stops() {
    let fleet = Fleet::new(2, 0);
    let shards: Vec<String> = fleet
        .kinesis
        .list_shards(STREAM)
        .await
        .unwrap()
        .into_iter()
        .map(|shard| shard.shard_id)
        .collect();
    // A Java KCL worker (no heartbeat) holds the first shard's lease.
    let java_lease = kcl_lease::Lease::new(
        &shards[0],
        kcl_checkpoint::ExtendedSequenceNumber::TrimHorizon,
    );
    fleet
        .store
        .create_lease_if_absent(&java_lease)
        .await
        .unwrap();
    let renew = || async {
        let seen = fleet.store.get_lease(&shards[0]).await.unwrap().unwrap();
        fleet.store.take_lease(&seen, "java-worker").await.unwrap();
    };
    renew().await;
    let worker = fleet.worker("rust-worker");
    let health = worker.health();
    let shutdown = worker.shutdown_handle();
    let task = tokio::spawn(worker.run());
    let ready = || health.is_ready(std::time::Instant::now());

    // It renews every second: the worker sees it and is not ready.
    let mut renewals = 0;
    while ready() || renewals < 5 {
        renew().await;
        renewals += 1;
        assert!(renewals < 60, "never judged not ready");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for _ in 0..10 {
        renew().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!ready(), "ready while a foreign worker renews");
        let lease = fleet.store.get_lease(&shards[0]).await.unwrap().unwrap();
        assert_eq!(lease.owner.as_deref(), Some("java-worker"));
    }
    // It stops: the worker takes its lease and is ready again.
    wait_until(ready).await;
    let store = fleet.store.clone();
    let key = shards[0].clone();
    for _ in 0..100 {
        let lease = store.get_lease(&key).await.unwrap().unwrap();
        if lease.owner.as_deref() == Some("rust-worker") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lease = store.get_lease(&key).await.unwrap().unwrap();
    assert_eq!(lease.owner.as_deref(), Some("rust-worker"));
    shutdown.shutdown();
    task.await.unwrap().unwrap();
}

/// A worker of the multi-stream application `apps` over `streams`.
fn multi_stream_worker(
    fleet: &Fleet,
    id: &str,
    streams: &[&str],
    former_stream_cleanup_delay: Duration,
) -> Scheduler {
    let journal = Arc::clone(&fleet.journal);
    let mut builder = multi_stream_builder(fleet, id, former_stream_cleanup_delay);
    for stream in streams {
        builder = builder.stream(crate::StreamConfig::new(*stream));
    }
    builder
        .build(move |_: &str| Scripted(Arc::clone(&journal)))
        .unwrap()
}

/// The settings of [`multi_stream_worker`], without its streams.
fn multi_stream_builder(
    fleet: &Fleet,
    id: &str,
    former_stream_cleanup_delay: Duration,
) -> SchedulerBuilder {
    Scheduler::builder()
        .application_name("apps")
        .worker_id(id)
        .failover_time(Duration::from_secs(2))
        .assignment_interval(fleet.assignment_interval)
        .shutdown_timeout(Duration::from_secs(5))
        .shard_sync_interval(Duration::from_secs(1))
        .lease_cleanup_delay(Duration::from_secs(2))
        .former_stream_cleanup_delay(Some(former_stream_cleanup_delay))
        .retrieval(crate::retrieval::RetrievalConfig {
            max_records_per_call: fleet.max_records_per_call,
            ..Default::default()
        })
        .backends(
            Arc::new(fleet.kinesis.clone()),
            Arc::new(fleet.store.client()),
        )
}

/// `orders` with `records` records (`r<n>`) and `refunds` with as many
/// (`s<n>`), two shards each.
fn two_streams(records: usize) -> Fleet {
    let fleet = Fleet::new(2, records);
    fleet.kinesis.create_stream("refunds", 2);
    for n in 0..records {
        fleet
            .kinesis
            .put_record("refunds", &format!("k{n}"), format!("s{n}").as_bytes());
    }
    fleet
}

fn by_stream(fleet: &Fleet) -> Vec<String> {
    let mut lines = fleet.journal.lock().unwrap().by_stream.clone();
    lines.sort();
    lines
}

fn expected_by_stream(records: usize) -> Vec<String> {
    let mut lines: Vec<String> = (0..records)
        .flat_map(|n| [format!("orders:r{n}"), format!("refunds:s{n}")])
        .collect();
    lines.sort();
    lines
}

#[tokio::test(start_paused = true)]
async fn a_multi_stream_application_shares_every_stream_of_one_table() {
    let fleet = two_streams(20);
    let a = multi_stream_worker(
        &fleet,
        "worker-a",
        &["orders", "refunds"],
        Duration::from_secs(60),
    );
    let b = multi_stream_worker(
        &fleet,
        "worker-b",
        &["orders", "refunds"],
        Duration::from_secs(60),
    );
    let (a_held, a_stop) = (a.held_leases(), a.shutdown_handle());
    let (b_held, b_stop) = (b.held_leases(), b.shutdown_handle());
    let a_task = tokio::spawn(a.run());
    let b_task = tokio::spawn(b.run());
    wait_until(|| {
        a_held.borrow().len() == 2 && b_held.borrow().len() == 2 && by_stream(&fleet).len() >= 40
    })
    .await;
    a_stop.shutdown();
    b_stop.shutdown();
    a_task.await.unwrap().unwrap();
    b_task.await.unwrap().unwrap();

    assert_eq!(
        by_stream(&fleet),
        expected_by_stream(20),
        "each record once, named by its stream"
    );
    let leases = fleet.store.list_leases().await.unwrap();
    assert_eq!(leases.len(), 4);
    for lease in &leases {
        let stream = lease.stream.as_ref().expect("a multi-stream lease");
        assert_eq!(stream.account_id, crate::kinesis::IN_MEMORY_ACCOUNT);
        assert_eq!(lease.key, stream.lease_key(lease.shard_id()));
        assert!(!lease.checkpoint.is_sentinel(), "{lease:?}");
    }
    let journal = fleet.journal.lock().unwrap();
    let mut initialized: Vec<String> = journal
        .initializations
        .iter()
        .map(|input| format!("{}/{}", input.stream_name, input.shard_id))
        .collect();
    initialized.sort();
    assert_eq!(
        initialized,
        [
            "orders/shardId-000000000000",
            "orders/shardId-000000000001",
            "refunds/shardId-000000000000",
            "refunds/shardId-000000000001"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_no_longer_consumed_loses_its_leases_after_the_delay_and_no_other_lease_goes() {
    let fleet = two_streams(10);
    let both = multi_stream_worker(
        &fleet,
        "worker-a",
        &["orders", "refunds"],
        Duration::from_secs(60),
    );
    let stop = both.shutdown_handle();
    let task = tokio::spawn(both.run());
    wait_until(|| by_stream(&fleet).len() >= 20).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    let before = fleet.store.list_leases().await.unwrap();
    assert_eq!(before.len(), 4);

    // The application goes on with orders only.
    let delay = Duration::from_secs(8);
    let orders_only = multi_stream_worker(&fleet, "worker-b", &["orders"], delay);
    let (held, stop) = (orders_only.held_leases(), orders_only.shutdown_handle());
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(orders_only.run());
    let refunds_left = || {
        let store = fleet.store.client();
        async move {
            store
                .list_leases()
                .await
                .unwrap()
                .iter()
                .filter(|l| l.stream.as_ref().unwrap().stream_name == "refunds")
                .count()
        }
    };
    for _ in 0..600 {
        if refunds_left().await == 0 {
            break;
        }
        assert!(
            held.borrow()
                .values()
                .all(|h| h.lease.stream.as_ref().unwrap().stream_name == "orders"),
            "only leases of consumed streams are taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refunds_left().await, 0);
    assert!(
        started.elapsed() >= delay,
        "deleted after {:?}",
        started.elapsed()
    );
    // Orders' leases all stay, with their checkpoints.
    let after = fleet.store.list_leases().await.unwrap();
    let orders = |leases: &[Lease]| -> Vec<(String, String)> {
        let mut of: Vec<_> = leases
            .iter()
            .filter(|l| l.stream.as_ref().unwrap().stream_name == "orders")
            .map(|l| (l.key.clone(), l.checkpoint.to_string()))
            .collect();
        of.sort();
        of
    };
    assert_eq!(orders(&after), orders(&before));
    stop.shutdown();
    task.await.unwrap().unwrap();
    assert_eq!(
        by_stream(&fleet),
        expected_by_stream(10),
        "nothing read twice"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deleted_stream_loses_its_leases_after_the_delay() {
    let fleet = two_streams(4);
    let delay = Duration::from_secs(8);
    let worker = multi_stream_worker(&fleet, "worker-a", &["orders", "refunds"], delay);
    let stop = worker.shutdown_handle();
    let task = tokio::spawn(worker.run());
    wait_until(|| by_stream(&fleet).len() >= 8).await;
    fleet.kinesis.delete_stream("refunds");
    let deleted_at = tokio::time::Instant::now();
    let store = fleet.store.client();
    let mut remaining = 4;
    for _ in 0..600 {
        remaining = store.list_leases().await.unwrap().len();
        if remaining == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(remaining, 2);
    assert!(deleted_at.elapsed() >= delay, "{:?}", deleted_at.elapsed());
    let left = store.list_leases().await.unwrap();
    assert!(
        left.iter()
            .all(|l| l.stream.as_ref().unwrap().stream_name == "orders"),
        "{left:?}"
    );
    stop.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn each_kind_of_application_refuses_the_other_kinds_table_before_writing() {
    // A single-stream table: a multi-stream worker refuses it.
    let fleet = Fleet::new(2, 4);
    let single = fleet.worker("worker-a");
    let stop = single.shutdown_handle();
    let task = tokio::spawn(single.run());
    wait_until(|| fleet.processed().len() >= 4).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    let before = fleet.store.list_leases().await.unwrap();
    let journal = Arc::clone(&fleet.journal);
    let multi = Scheduler::builder()
        .application_name("orders-app")
        .stream(crate::StreamConfig::new(STREAM))
        .backends(
            Arc::new(fleet.kinesis.clone()),
            Arc::new(fleet.store.client()),
        )
        .build(move |_: &str| Scripted(Arc::clone(&journal)))
        .unwrap();
    let error = multi.run().await.unwrap_err();
    assert!(
        matches!(&error, SchedulerError::SingleStreamTable { count: 2, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("orders-app"), "{error}");
    assert_eq!(fleet.store.list_leases().await.unwrap(), before);
    assert!(fleet.store.list_heartbeats().await.unwrap().is_empty());

    // A multi-stream table: a single-stream worker refuses it.
    let fleet = two_streams(2);
    let multi = multi_stream_worker(
        &fleet,
        "worker-a",
        &["orders", "refunds"],
        Duration::from_secs(60),
    );
    let stop = multi.shutdown_handle();
    let task = tokio::spawn(multi.run());
    wait_until(|| by_stream(&fleet).len() >= 4).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    let before = fleet.store.list_leases().await.unwrap();
    let single = Scheduler::builder()
        .application_name("apps")
        .stream_name(STREAM)
        .backends(
            Arc::new(fleet.kinesis.clone()),
            Arc::new(fleet.store.client()),
        )
        .build(|_: &str| crate::test_support::NoopProcessor)
        .unwrap();
    let error = single.run().await.unwrap_err();
    assert!(
        matches!(&error, SchedulerError::MultiStreamTable { count: 4, .. }),
        "{error}"
    );
    assert_eq!(fleet.store.list_leases().await.unwrap(), before);
}

#[tokio::test(start_paused = true)]
async fn each_stream_starts_at_its_own_initial_position_and_fan_out_reads_every_stream() {
    for fan_out in [false, true] {
        let fleet = two_streams(5);
        // Records are stamped with the wall clock as they are written.
        std::thread::sleep(Duration::from_millis(5));
        let cut = std::time::SystemTime::now();
        std::thread::sleep(Duration::from_millis(5));
        let journal = Arc::clone(&fleet.journal);
        let mut builder = Scheduler::builder()
            .application_name("apps")
            .worker_id("worker-a")
            .failover_time(Duration::from_secs(2))
            .assignment_interval(fleet.assignment_interval)
            // Orders from the oldest record (the application's default),
            // refunds from records written after the cut.
            .stream(crate::StreamConfig::new("orders"))
            .stream(
                crate::StreamConfig::new("refunds")
                    .initial_position(InitialPosition::AtTimestamp(cut)),
            )
            .backends(
                Arc::new(fleet.kinesis.clone()),
                Arc::new(fleet.store.client()),
            );
        if fan_out {
            builder = builder.fan_out(None);
        }
        let worker = builder
            .build(move |_: &str| Scripted(Arc::clone(&journal)))
            .unwrap();
        let (held, stop) = (worker.held_leases(), worker.shutdown_handle());
        let task = tokio::spawn(worker.run());
        wait_until(|| held.borrow().len() == 4 && by_stream(&fleet).len() >= 5).await;
        for n in 5..8 {
            fleet
                .kinesis
                .put_record("refunds", &format!("k{n}"), format!("s{n}").as_bytes());
            fleet
                .kinesis
                .put_record(STREAM, &format!("k{n}"), format!("r{n}").as_bytes());
        }
        wait_until(|| by_stream(&fleet).len() >= 11).await;
        stop.shutdown();
        task.await.unwrap().unwrap();
        let mut expected: Vec<String> = (0..8)
            .map(|n| format!("orders:r{n}"))
            .chain((5..8).map(|n| format!("refunds:s{n}")))
            .collect();
        expected.sort();
        assert_eq!(by_stream(&fleet), expected, "fan-out: {fan_out}");
        if fan_out {
            // Each stream's consumer registered, every shard subscribed.
            assert_eq!(fleet.kinesis.calls("RegisterStreamConsumer"), 2);
            assert!(fleet.kinesis.calls("SubscribeToShard") >= 4);
            assert_eq!(fleet.kinesis.calls("GetRecords"), 0);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn workers_of_different_stream_lists_share_a_table_without_stalling_or_deleting() {
    // A rolling deploy that adds refunds: worker A still runs with orders
    // only, worker B with both.
    let fleet = two_streams(10);
    let delay = Duration::from_secs(8);
    let a = multi_stream_worker(&fleet, "worker-a", &["orders"], delay);
    let b = multi_stream_worker(&fleet, "worker-b", &["orders", "refunds"], delay);
    let (a_held, a_stop) = (a.held_leases(), a.shutdown_handle());
    let (b_held, b_stop) = (b.held_leases(), b.shutdown_handle());
    let a_task = tokio::spawn(a.run());
    let b_task = tokio::spawn(b.run());
    wait_until(|| by_stream(&fleet).len() >= 20).await;
    // Well past the former-stream delay: refunds is consumed by B, so A
    // deletes none of its leases.
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            a_held
                .borrow()
                .values()
                .all(|h| h.lease.stream.as_ref().unwrap().stream_name == "orders"),
            "A holds only orders"
        );
    }
    let leases = fleet.store.list_leases().await.unwrap();
    assert_eq!(leases.len(), 4, "{leases:?}");
    // Not deleted and created again either: each keeps its checkpoint.
    assert!(
        leases.iter().all(|l| !l.checkpoint.is_sentinel()),
        "{leases:?}"
    );
    assert_eq!(
        b_held
            .borrow()
            .values()
            .filter(|h| h.lease.stream.as_ref().unwrap().stream_name == "refunds")
            .count(),
        2
    );
    // More records on both streams: read once each.
    for n in 10..14 {
        fleet
            .kinesis
            .put_record(STREAM, &format!("k{n}"), format!("r{n}").as_bytes());
        fleet
            .kinesis
            .put_record("refunds", &format!("k{n}"), format!("s{n}").as_bytes());
    }
    wait_until(|| by_stream(&fleet).len() >= 28).await;
    a_stop.shutdown();
    b_stop.shutdown();
    a_task.await.unwrap().unwrap();
    b_task.await.unwrap().unwrap();
    assert_eq!(
        by_stream(&fleet),
        expected_by_stream(14),
        "each record once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_table_keeping_a_stream_under_another_epoch_is_refused_until_named_so() {
    let fleet = two_streams(6);
    // A Java application's lease of orders, under an epoch of its own
    // choosing, checkpointed after the third record.
    let java = kcl_lease::StreamIdentifier::parse("000000000000:orders:1").unwrap();
    let shards = ["shardId-000000000000", "shardId-000000000001"];
    let mut checkpoints = Vec::new();
    for shard in shards {
        let mut page = fleet
            .kinesis
            .get_records(
                &fleet
                    .kinesis
                    .get_shard_iterator(
                        STREAM,
                        shard,
                        &crate::kinesis::StartingPosition::TrimHorizon,
                    )
                    .await
                    .unwrap(),
                100,
            )
            .await
            .unwrap();
        let after = page.records.remove(0);
        let mut lease = Lease::for_shard(Some(&java), shard, after.position());
        lease.owner = Some("java-worker".into());
        fleet.store.create_lease_if_absent(&lease).await.unwrap();
        checkpoints.push(String::from_utf8_lossy(&after.data).into_owned());
    }
    let before = fleet.store.list_leases().await.unwrap();
    let journal = Arc::clone(&fleet.journal);
    let derived = Scheduler::builder()
        .application_name("apps")
        .stream(crate::StreamConfig::new(STREAM))
        .backends(
            Arc::new(fleet.kinesis.clone()),
            Arc::new(fleet.store.client()),
        )
        .build(move |_: &str| Scripted(Arc::clone(&journal)))
        .unwrap();
    let error = derived.run().await.unwrap_err();
    match &error {
        SchedulerError::StreamEpochMismatch { found, count, .. } => {
            assert_eq!(found, &java.to_string());
            assert_eq!(*count, 2);
        }
        other => panic!("expected StreamEpochMismatch, got {other}"),
    }
    assert!(
        error.to_string().contains("000000000000:orders:1"),
        "{error}"
    );
    assert_eq!(fleet.store.list_leases().await.unwrap(), before);

    // Named as the table names it, every shard resumes after its checkpoint.
    let journal = Arc::clone(&fleet.journal);
    let named = Scheduler::builder()
        .application_name("apps")
        .stream(crate::StreamConfig::with_identifier(java.clone()))
        .failover_time(Duration::from_secs(2))
        .assignment_interval(fleet.assignment_interval)
        .backends(
            Arc::new(fleet.kinesis.clone()),
            Arc::new(fleet.store.client()),
        )
        .build(move |_: &str| Scripted(Arc::clone(&journal)))
        .unwrap();
    let stop = named.shutdown_handle();
    let task = tokio::spawn(named.run());
    wait_until(|| by_stream(&fleet).len() >= 4).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    let mut expected: Vec<String> = (0..6)
        .map(|n| format!("r{n}"))
        .filter(|data| !checkpoints.contains(data))
        .map(|data| format!("orders:{data}"))
        .collect();
    expected.sort();
    assert_eq!(by_stream(&fleet), expected);
    assert_eq!(fleet.store.list_leases().await.unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_stream_created_again_under_its_name_stops_the_worker_and_is_refused_after() {
    let fleet = two_streams(4);
    let worker = multi_stream_worker(
        &fleet,
        "worker-a",
        &["orders", "refunds"],
        Duration::from_secs(600),
    );
    let task = tokio::spawn(worker.run());
    wait_until(|| by_stream(&fleet).len() >= 8).await;
    fleet.kinesis.delete_stream("refunds");
    fleet.kinesis.create_stream("refunds", 1);
    let error = task.await.unwrap().unwrap_err();
    assert!(
        matches!(&error, SchedulerError::StreamRecreated { stream, .. } if stream == "refunds"),
        "{error}"
    );
    // The old stream's leases stay (stopped as lost, so neither
    // checkpointed nor released) until an operator deletes them; a worker
    // started now refuses rather than leave them behind.
    let leases = fleet.store.list_leases().await.unwrap();
    assert_eq!(leases.len(), 4);
    for lease in &leases {
        let refunds = lease.stream.as_ref().unwrap().stream_name == "refunds";
        let owner = if refunds { Some("worker-a") } else { None };
        assert_eq!(lease.owner.as_deref(), owner, "{lease:?}");
    }
    let again = multi_stream_worker(
        &fleet,
        "worker-b",
        &["orders", "refunds"],
        Duration::from_secs(600),
    );
    let error = again.run().await.unwrap_err();
    assert!(
        matches!(&error, SchedulerError::StreamEpochMismatch { count: 2, .. }),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_restarted_under_its_id_without_a_stream_leaves_that_stream_to_the_others() {
    let fleet = two_streams(10);
    let delay = Duration::from_secs(600);
    let both = ["orders", "refunds"];
    let a = multi_stream_worker(&fleet, "worker-a", &both, delay);
    let a_held = a.held_leases();
    let a_task = tokio::spawn(a.run());
    wait_until(|| by_stream(&fleet).len() >= 20 && a_held.borrow().len() == 4).await;
    // A crashes and comes back at once under its id, with orders only;
    // B, with both streams, joins.
    a_task.abort();
    let _ = a_task.await;
    let a = multi_stream_worker(&fleet, "worker-a", &["orders"], delay);
    let a_stop = a.shutdown_handle();
    let a_task = tokio::spawn(a.run());
    let b = multi_stream_worker(&fleet, "worker-b", &both, delay);
    let (b_held, b_stop) = (b.held_leases(), b.shutdown_handle());
    let b_task = tokio::spawn(b.run());
    for n in 10..14 {
        fleet
            .kinesis
            .put_record("refunds", &format!("k{n}"), format!("s{n}").as_bytes());
    }
    wait_until(|| {
        let lines = by_stream(&fleet);
        (10..14).all(|n| lines.contains(&format!("refunds:s{n}")))
    })
    .await;
    assert!(
        b_held
            .borrow()
            .values()
            .all(|h| h.lease.stream.as_ref().unwrap().stream_name == "refunds"),
        "B took the refunds shards A left, and none of A's orders shards"
    );
    a_stop.shutdown();
    b_stop.shutdown();
    a_task.await.unwrap().unwrap();
    b_task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stream_created_again_is_not_read_with_the_old_leases_while_kinesis_cannot_say() {
    let fleet = two_streams(4);
    let worker = multi_stream_worker(
        &fleet,
        "worker-a",
        &["orders", "refunds"],
        Duration::from_secs(600),
    );
    let task = tokio::spawn(worker.run());
    wait_until(|| by_stream(&fleet).len() >= 8).await;
    // Kinesis cannot describe streams for a while, and refunds is created
    // again meanwhile, with a third shard the old stream never had.
    fleet.kinesis.fail_next(
        "DescribeStreamSummary",
        KinesisError::Throttled {
            operation: "DescribeStreamSummary",
            message: "slow down".into(),
        },
        20,
    );
    fleet.kinesis.delete_stream("refunds");
    fleet.kinesis.create_stream("refunds", 3);
    fleet
        .kinesis
        .put_record_to_shard("refunds", "shardId-000000000002", "k", b"new");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let leases = fleet.store.list_leases().await.unwrap();
    assert!(
        leases
            .iter()
            .all(|l| l.shard_id() != "shardId-000000000002"),
        "no lease of the new stream under the old one's key: {leases:?}"
    );
    assert!(!by_stream(&fleet).contains(&"refunds:new".to_owned()));
    // Once Kinesis answers, the worker stops.
    let error = task.await.unwrap().unwrap_err();
    assert!(
        matches!(error, SchedulerError::StreamRecreated { .. }),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_named_stream_created_again_stops_its_shards_without_checkpointing_them() {
    let fleet = two_streams(4);
    // Refunds named as a table written by a Java application names it.
    let named = kcl_lease::StreamIdentifier::parse("000000000000:refunds:5").unwrap();
    let journal = Arc::clone(&fleet.journal);
    let worker = multi_stream_builder(&fleet, "worker-a", Duration::from_secs(600))
        .stream(crate::StreamConfig::new(STREAM))
        .stream(crate::StreamConfig::with_identifier(named.clone()))
        .build(move |_: &str| Scripted(Arc::clone(&journal)))
        .unwrap();
    let held = worker.held_leases();
    let task = tokio::spawn(worker.run());
    wait_until(|| held.borrow().len() == 4 && by_stream(&fleet).len() >= 8).await;
    let calls = fleet.journal.lock().unwrap().calls.len();

    fleet.kinesis.delete_stream("refunds");
    fleet.kinesis.create_stream("refunds", 2);
    let error = task.await.unwrap().unwrap_err();
    assert!(
        matches!(&error, SchedulerError::StreamRecreated { stream, .. } if stream == "refunds"),
        "{error}"
    );
    // Refunds' shards were stopped as lost (not checkpointed, not
    // released, so not handed to anyone); orders' were checkpointed and
    // released.
    let calls = fleet.journal.lock().unwrap().calls[calls..].to_vec();
    assert_eq!(
        calls.iter().filter(|call| *call == "lease_lost").count(),
        2,
        "{calls:?}"
    );
    for lease in fleet.store.list_leases().await.unwrap() {
        let refunds = lease.stream.as_ref() == Some(&named);
        let owner = if refunds { Some("worker-a") } else { None };
        assert_eq!(lease.owner.as_deref(), owner, "{lease:?}");
    }
}

/// A processor call that never returns is reported: after the stall time
/// the worker's heartbeat names the shard, and the other shard is not.
#[tokio::test(start_paused = true)]
async fn a_shard_whose_processor_hangs_is_reported_stalled_in_the_heartbeat() {
    let fleet = Fleet::new(2, 20);
    fleet.journal.lock().unwrap().hang.insert("r3".into(), 1);
    let journal = Arc::clone(&fleet.journal);
    let worker = Scheduler::builder()
        .application_name("orders-app")
        .stream_name(STREAM)
        .worker_id("worker-a")
        .failover_time(Duration::from_secs(2))
        .assignment_interval(fleet.assignment_interval)
        .stall_report_after(Duration::from_secs(10))
        .backends(
            Arc::new(fleet.kinesis.clone()),
            Arc::new(fleet.store.client()),
        )
        .build(move |_: &str| Scripted(Arc::clone(&journal)))
        .unwrap();
    let task = tokio::spawn(worker.run());
    let stalled = || async {
        fleet
            .store
            .list_heartbeats()
            .await
            .unwrap()
            .into_iter()
            .find(|h| h.worker == "worker-a")
            .map(|h| h.stalled_shards)
            .unwrap_or_default()
    };
    let mut waited = Duration::ZERO;
    while stalled().await.is_empty() {
        assert!(waited < Duration::from_secs(60), "never reported stalled");
        tokio::time::sleep(Duration::from_millis(500)).await;
        waited += Duration::from_millis(500);
    }
    assert!(
        waited >= Duration::from_secs(9),
        "reported after the stall time only, not after {waited:?}"
    );
    let shards = stalled().await;
    assert_eq!(shards.len(), 1, "{shards:?}");
    let hung = fleet
        .kinesis
        .list_shards(STREAM)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.shard_id)
        .find(|s| shards.contains(s))
        .expect("a shard of the stream");
    assert!(
        !fleet.processed().contains(&"r3".to_owned()),
        "{hung} hangs on r3"
    );
    task.abort();
}
