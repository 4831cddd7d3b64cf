//! Coordinators on the in-memory store, driven step by step on a clock the
//! test sets (or on tokio's paused clock for `run`).

use std::time::Duration;

use kcl_checkpoint::ExtendedSequenceNumber;

use super::*;
use crate::faults::{Call, FaultyStore};
use crate::{CheckpointUpdate, InMemoryLeaseStore};

const S: fn(u64) -> Duration = Duration::from_secs;

async fn table_with(leases: usize) -> InMemoryLeaseStore {
    let store = InMemoryLeaseStore::new();
    for n in 0..leases {
        let lease = Lease::new(
            format!("shardId-{n:012}"),
            ExtendedSequenceNumber::TrimHorizon,
        );
        store.create_lease_if_absent(&lease).await.unwrap();
    }
    store
}

type Pair<S> = (LeaseCoordinator<S>, CoordinatorHandle<S>);

fn coordinator(store: &InMemoryLeaseStore, worker: &str) -> Pair<InMemoryLeaseStore> {
    LeaseCoordinator::new(Arc::new(store.client()), LeaseConfig::new(worker)).unwrap()
}

/// Stand-in for the scheduler: hands over whatever is asked for, at once.
fn spawn_releaser(handle: &CoordinatorHandle<InMemoryLeaseStore>) {
    let releaser = handle.clone();
    tokio::spawn(async move {
        let mut held = releaser.held();
        while held.changed().await.is_ok() {
            for token in releaser.handoffs_requested() {
                let _ = releaser.release(&token).await;
            }
        }
    });
}

/// Worker "a" running on `table` through a fault proxy, once it holds
/// every lease, beside worker "b", which has written one heartbeat and
/// does nothing else: a's handle, its faults and its task.
async fn a_holding_all_beside_b(
    table: &InMemoryLeaseStore,
) -> (
    CoordinatorHandle<FaultyStore<InMemoryLeaseStore>>,
    crate::faults::FaultControl,
    tokio::task::JoinHandle<Result<(), LeaseStoreError>>,
) {
    let leases = table.list_leases().await.unwrap().len();
    let (faulty, faults) = FaultyStore::new(Arc::new(table.client()));
    let (a, a_handle) = LeaseCoordinator::new(Arc::new(faulty), LeaseConfig::new("a")).unwrap();
    let task = tokio::spawn(a.run(std::future::pending()));
    let mut held = a_handle.held();
    while held.borrow_and_update().len() < leases {
        held.changed().await.unwrap();
    }
    let (b, _) = coordinator(table, "b");
    b.heartbeat(heartbeat::now).await.unwrap();
    (a_handle, faults, task)
}

/// The default settings for `worker`.
fn defaults(worker: &str) -> LeaseConfig {
    LeaseConfig::new(worker)
}

/// Workers "a" and "b" (settings from `config`) running on `table` with
/// stand-in schedulers, started 3 s apart and left 30 s to balance; their
/// handles and tasks.
async fn run_pair(
    table: &InMemoryLeaseStore,
    config: impl Fn(&str) -> LeaseConfig,
) -> (
    Vec<CoordinatorHandle<InMemoryLeaseStore>>,
    Vec<tokio::task::JoinHandle<Result<(), LeaseStoreError>>>,
) {
    let (mut handles, mut tasks) = (Vec::new(), Vec::new());
    for worker in ["a", "b"] {
        let (coordinator, handle) =
            LeaseCoordinator::new(Arc::new(table.client()), config(worker)).unwrap();
        spawn_releaser(&handle);
        tasks.push(tokio::spawn(coordinator.run(std::future::pending())));
        handles.push(handle);
        tokio::time::sleep(S(3)).await;
    }
    tokio::time::sleep(S(30)).await;
    (handles, tasks)
}

fn at(t: Instant) -> impl Fn() -> Instant {
    move || t
}

#[tokio::test]
async fn a_worker_that_cannot_heartbeat_stops_a_margin_before_others_may_take_over() {
    let store = table_with(3).await;
    let (mut a, handle) = coordinator(&store, "a");
    let t0 = Instant::now();
    a.heartbeat(at(t0)).await.unwrap();
    let report = a.assignment_round(at(t0)).await.unwrap();
    assert_eq!(report.taken.len(), 3);
    let before = handle.held().borrow().clone();
    assert_eq!(before.len(), 3);
    let deadline = handle.deadline(before.values().next().unwrap().epoch);

    // No heartbeat gets through: processing ends at 10 s - 2 s after the
    // last one was sent, while no one may take over before 10 s.
    assert!(deadline.is_open_at(t0 + Duration::from_millis(7_999)));
    assert!(!deadline.is_open_at(t0 + S(8)));
    assert!(!a.enforce_liveness(t0 + Duration::from_millis(7_999)));
    assert!(a.enforce_liveness(t0 + S(8)));
    assert!(handle.held().borrow().is_empty());
    // Rounds while cut off publish nothing.
    a.assignment_round(at(t0 + S(11))).await.unwrap();
    assert!(handle.held().borrow().is_empty());

    // Back: its leases are taken anew, so the old tokens are fenced, and
    // the old deadline stays passed.
    a.heartbeat(at(t0 + S(12))).await.unwrap();
    a.assignment_round(at(t0 + S(12))).await.unwrap();
    let after = handle.held().borrow().clone();
    assert_eq!(after.len(), 3);
    assert!(!deadline.is_open_at(t0 + S(12)));
    for (key, held) in &after {
        assert_eq!(held.token.counter, before[key].token.counter + 1);
        assert!(handle.deadline(held.epoch).is_open_at(t0 + S(12)));
        let stale = store
            .checkpoint(
                &before[key].token,
                &CheckpointUpdate::at(ExtendedSequenceNumber::Latest),
                &CheckpointUpdate::at(ExtendedSequenceNumber::Latest),
            )
            .await;
        assert!(stale.unwrap_err().is_lease_lost());
    }
}

#[tokio::test]
async fn a_heartbeat_confirmed_after_the_deadline_does_not_extend_it() {
    let store = table_with(1).await;
    let (mut a, handle) = coordinator(&store, "a");
    let t0 = Instant::now();
    a.heartbeat(at(t0)).await.unwrap();
    a.assignment_round(at(t0)).await.unwrap();
    let epoch = handle.held().borrow().values().next().unwrap().epoch;

    // Sent at 5 s, answered at 9 s: past the deadline of 8 s.
    let clock = std::sync::Mutex::new(vec![t0 + S(9), t0 + S(5)]);
    a.heartbeat(|| clock.lock().unwrap().pop().unwrap())
        .await
        .unwrap();
    assert!(!handle.deadline(epoch).is_open_at(t0 + S(9)));
    assert!(handle.held().borrow().is_empty());
    // Alive again (until 5 + 8 s), in a new epoch: the next round retakes.
    assert!(a.is_alive(t0 + S(12)));
    a.assignment_round(at(t0 + S(10))).await.unwrap();
    let held = handle.held().borrow().values().next().unwrap().clone();
    assert_eq!(held.epoch, epoch + 1);
    assert_eq!(held.token.counter, 2, "taken, then taken anew");
}

#[tokio::test]
async fn a_worker_takes_its_own_leases_anew_when_it_starts() {
    // A previous process under the same id left leases behind.
    let store = table_with(2).await;
    let (mut first, _) = coordinator(&store, "a");
    let t0 = Instant::now();
    first.heartbeat(at(t0)).await.unwrap();
    first.assignment_round(at(t0)).await.unwrap();
    let (mut second, handle) = coordinator(&store, "a");
    second.heartbeat(at(t0 + S(3))).await.unwrap();
    second.assignment_round(at(t0 + S(3))).await.unwrap();
    let held = handle.held().borrow().clone();
    assert_eq!(held.len(), 2);
    assert!(held.values().all(|h| h.token.counter == 2), "{held:?}");
}

#[tokio::test]
async fn leases_of_a_silent_worker_are_taken_only_after_the_failover_time() {
    let store = table_with(4).await;
    let (mut a, _) = coordinator(&store, "a");
    let (mut b, b_handle) = coordinator(&store, "b");
    let t0 = Instant::now();
    a.heartbeat(at(t0)).await.unwrap();
    a.assignment_round(at(t0)).await.unwrap();
    // b starts and balances by asking a for handoffs; a is silent from now.
    b.heartbeat(at(t0)).await.unwrap();
    let report = b.assignment_round(at(t0)).await.unwrap();
    assert_eq!(report.handoffs_requested.len(), 2);
    for t in [5, 9] {
        b.heartbeat(at(t0 + S(t))).await.unwrap();
        let report = b.assignment_round(at(t0 + S(t))).await.unwrap();
        assert!(report.taken.is_empty(), "taken at {t}s: {report:?}");
    }
    // a's heartbeat has not changed for 10 s (b saw it first at t0).
    let report = b.assignment_round(at(t0 + S(10))).await.unwrap();
    assert_eq!(report.taken.len(), 4, "{report:?}");
    assert_eq!(b_handle.held().borrow().len(), 4);
    assert_eq!(report.live_workers, 1);
    assert_eq!(report.removed_heartbeats, ["a"]);
}

#[tokio::test]
async fn a_handoff_request_is_published_and_release_completes_it() {
    let store = table_with(2).await;
    let (mut a, a_handle) = coordinator(&store, "a");
    let (mut b, b_handle) = coordinator(&store, "b");
    let t0 = Instant::now();
    a.heartbeat(at(t0)).await.unwrap();
    a.assignment_round(at(t0)).await.unwrap();
    b.heartbeat(at(t0)).await.unwrap();
    b.assignment_round(at(t0)).await.unwrap();
    assert!(
        b_handle.held().borrow().is_empty(),
        "not b's until a releases"
    );

    a.assignment_round(at(t0 + S(1))).await.unwrap();
    let requested = a_handle.handoffs_requested();
    assert_eq!(requested.len(), 1);
    a_handle.release(&requested[0]).await.unwrap();
    assert_eq!(a_handle.held().borrow().len(), 1);

    b.poll_awaited_handoffs(at(t0 + S(2))).await.unwrap();
    let b_held = b_handle.held().borrow().clone();
    assert_eq!(b_held.keys().collect::<Vec<_>>(), [&requested[0].key]);
    assert!(!b_held.values().any(|h| h.handoff_requested));
}

/// b observes a, which holds every lease, every second; returns the first
/// moment b took a lease while a was still allowed to process it.
async fn overlap(
    a: &LeaseCoordinator<impl LeaseStore + ?Sized>,
    a_handle: &CoordinatorHandle<impl LeaseStore + ?Sized>,
    b: &mut LeaseCoordinator<InMemoryLeaseStore>,
    t0: Instant,
    seconds: std::ops::Range<u64>,
    mut a_beats: impl FnMut(u64) -> bool,
) -> Option<u64> {
    for t in seconds {
        let now = t0 + S(t);
        if a_beats(t) {
            let _ = a.heartbeat(at(now)).await;
        }
        b.heartbeat(at(now)).await.unwrap();
        let report = b.assignment_round(at(now)).await.unwrap();
        let a_may_process = a_handle
            .held()
            .borrow()
            .values()
            .any(|h| a_handle.deadline(h.epoch).is_open_at(now));
        if !report.taken.is_empty() && a_may_process {
            return Some(t);
        }
    }
    None
}

#[tokio::test]
async fn a_heartbeat_that_took_effect_but_reported_failure_never_looks_like_silence() {
    let table = table_with(2).await;
    let (faulty, faults) = FaultyStore::new(Arc::new(table.client()));
    let (mut a, a_handle) = LeaseCoordinator::new(Arc::new(faulty), LeaseConfig::new("a")).unwrap();
    let (mut b, _) = coordinator(&table, "b");
    let t0 = Instant::now();
    a.heartbeat(at(t0)).await.unwrap();
    a.assignment_round(at(t0)).await.unwrap();
    faults.only(&[Call::Heartbeat]);
    // a's heartbeat at 5 s takes effect but reports an error; the one at
    // 7 s is confirmed (a processes until 15 s); then a is cut off.
    faults.apply_then_fail(1);
    let beats = |t: u64| t == 5 || t == 7;
    let took = overlap(&a, &a_handle, &mut b, t0, 0..30, beats).await;
    assert_eq!(faults.applied_and_failed(), [Call::Heartbeat]);
    assert_eq!(took, None, "b took a lease a could still process");
}

#[tokio::test]
async fn a_restarted_process_under_the_same_worker_id_never_repeats_a_heartbeat() {
    let table = table_with(2).await;
    let (first, _) = coordinator(&table, "a");
    let t0 = Instant::now();
    first.heartbeat(at(t0)).await.unwrap();
    let written = table.list_heartbeats().await.unwrap()[0].beat;
    // The process restarts; its clock-based start is pushed below what the
    // first one wrote, as a clock that went back would.
    let (second, _) = coordinator(&table, "a");
    second.shared.heart.set_next_beat(written);
    let repeat = second.heartbeat(at(t0 + S(1))).await;
    assert!(
        matches!(repeat, Err(LeaseStoreError::HeartbeatSuperseded { stored, .. }) if stored == written),
        "{repeat:?}"
    );
    second.heartbeat(at(t0 + S(2))).await.unwrap();
    let now_written = table.list_heartbeats().await.unwrap()[0].beat;
    assert!(now_written > written);
}

#[tokio::test]
async fn a_dead_worker_that_comes_back_keeps_its_heartbeat() {
    let table = table_with(0).await;
    let (a, _) = coordinator(&table, "a");
    let t0 = Instant::now();
    a.heartbeat(at(t0)).await.unwrap();
    let judged = table.list_heartbeats().await.unwrap()[0].beat;
    // a beats again after b judged it dead with the old value.
    a.heartbeat(at(t0 + S(11))).await.unwrap();
    assert!(!table.remove_heartbeat("a", Some(judged)).await.unwrap());
    assert_eq!(table.list_heartbeats().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_observer_with_a_shorter_failover_time_waits_for_the_longer_one() {
    let table = table_with(2).await;
    let (mut a, a_handle) = coordinator(&table, "a");
    let short = LeaseConfig::new("b").with_failover_time(S(4));
    let (mut b, _) = LeaseCoordinator::new(Arc::new(table.client()), short).unwrap();
    let t0 = Instant::now();
    a.heartbeat(at(t0)).await.unwrap();
    a.assignment_round(at(t0)).await.unwrap();
    // a (10 s) falls silent after 2 s; b (4 s) must wait 10 s.
    let took = overlap(&a, &a_handle, &mut b, t0, 0..20, |t| t == 2).await;
    assert_eq!(took, None, "b took a lease a could still process");
    let leases = table.list_leases().await.unwrap();
    assert!(leases.iter().all(|l| l.owner.as_deref() == Some("b")));
}

#[tokio::test(start_paused = true)]
async fn run_balances_then_fails_over_within_failover_plus_one_round() {
    let store = table_with(10).await;
    let (handles, tasks) = run_pair(&store, defaults).await;
    let counts: Vec<usize> = handles.iter().map(|h| h.held().borrow().len()).collect();
    assert_eq!(counts, [5, 5]);

    // a crashes: no release, no goodbye.
    tasks[0].abort();
    let crashed_at = tokio::time::Instant::now();
    let mut held = handles[1].held();
    while held.borrow_and_update().len() < 10 {
        held.changed().await.unwrap();
    }
    let failover = crashed_at.elapsed();
    assert!(failover <= S(20), "took {failover:?}");
    assert!(
        failover >= S(5),
        "took {failover:?}: faster than a live worker allows"
    );
}

#[tokio::test]
async fn a_slow_read_does_not_make_a_live_owner_look_expired() {
    let store = table_with(2).await;
    let (mut a, _) = coordinator(&store, "a");
    let t0 = Instant::now();
    let (mut b, _) = coordinator(&store, "b");
    a.heartbeat(at(t0)).await.unwrap();
    a.assignment_round(at(t0)).await.unwrap();
    b.heartbeat(at(t0)).await.unwrap();
    b.assignment_round(at(t0)).await.unwrap();

    // b's next round begins at t0+5 and its reads take 4 s; a heartbeats at
    // t0+8 while they are under way, and b's read sees it.
    a.heartbeat(at(t0 + S(8))).await.unwrap();
    let clock = std::sync::Mutex::new(vec![t0 + S(9), t0 + S(9), t0 + S(5)]);
    b.heartbeat(at(t0 + S(5))).await.unwrap();
    b.assignment_round(|| clock.lock().unwrap().pop().unwrap_or(t0 + S(9)))
        .await
        .unwrap();

    // a stays alive until t0+16 by its own reckoning (sent at 8, 10 s
    // failover, 2 s margin); at t0+17 b (alive, its reads now quick) must
    // still count it live: it saw the change only at t0+9.
    b.heartbeat(at(t0 + S(17))).await.unwrap();
    let report = b.assignment_round(at(t0 + S(17))).await.unwrap();
    assert!(
        report.taken.is_empty(),
        "took from a live owner: {report:?}"
    );
    b.heartbeat(at(t0 + S(19))).await.unwrap();
    let report = b.assignment_round(at(t0 + S(19))).await.unwrap();
    assert_eq!(report.taken.len(), 2, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_worker_whose_table_calls_hang_stops_its_shards_before_its_deadline() {
    let store = table_with(4).await;
    let (faulty, faults) = FaultyStore::new(Arc::new(store.client()));
    let (coordinator, handle) =
        LeaseCoordinator::new(Arc::new(faulty), LeaseConfig::new("a")).unwrap();
    let task = tokio::spawn(coordinator.run(std::future::pending()));
    let mut held = handle.held();
    while held.borrow_and_update().len() < 4 {
        held.changed().await.unwrap();
    }
    let last_heartbeat = handle.last_heartbeat().unwrap();

    // From now on every call hangs, unanswered: no error ever comes back.
    faults.stall();
    let stopped = tokio::time::timeout(S(60), async {
        while !held.borrow_and_update().is_empty() {
            held.changed().await.unwrap();
        }
    })
    .await;
    assert!(stopped.is_ok(), "still processing a minute after the cut");
    let since_heartbeat = heartbeat::now().duration_since(last_heartbeat);
    assert!(since_heartbeat <= S(8), "stopped after {since_heartbeat:?}");
    task.abort();
}

#[tokio::test]
async fn a_waiting_merge_child_never_keeps_its_parent_from_being_taken() {
    let table = InMemoryLeaseStore::new();
    let mut p1 = Lease::new("shardId-000000000001", ExtendedSequenceNumber::ShardEnd);
    p1.owner = Some("w".into());
    let p2 = Lease::new(
        "shardId-000000000002",
        ExtendedSequenceNumber::record("5", 0).unwrap(),
    );
    let mut child = Lease::new("shardId-000000000003", ExtendedSequenceNumber::TrimHorizon);
    child.parent_shard_ids = [p1.key.clone(), p2.key.clone()].into();
    for lease in [&p1, &p2, &child] {
        table.create_lease_if_absent(lease).await.unwrap();
    }
    let seen = table.get_lease(&child.key).await.unwrap().unwrap();
    table.take_lease(&seen, "w").await.unwrap();
    let mut config = LeaseConfig::new("w");
    config.max_leases_per_worker = Some(1);
    let (mut w, handle) = LeaseCoordinator::new(Arc::new(table.client()), config).unwrap();
    let t0 = Instant::now();
    w.heartbeat(at(t0)).await.unwrap();
    w.assignment_round(at(t0)).await.unwrap();
    let held: Vec<String> = handle.held().borrow().keys().cloned().collect();
    assert!(held.contains(&p2.key), "the parent was not taken: {held:?}");
}

#[tokio::test(start_paused = true)]
async fn a_draining_worker_hands_its_leases_over_itself_and_tells_the_receiver() {
    let table = table_with(4).await;
    let (a_handle, faults, task) = a_holding_all_beside_b(&table).await;

    a_handle.stop_taking();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One round at once: every lease handed to b (the plan's only
    // receiver), and b told in its heartbeat item. a goes on processing
    // them for one watch interval (b is checking them by then), and then
    // lets its consumers release them.
    assert_eq!(a_handle.held().borrow().len(), 4);
    assert!(
        a_handle.handoffs_requested().is_empty(),
        "released before b watches"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(a_handle.handoffs_requested().len(), 4, "{faults:?}");
    let keys: BTreeSet<String> = table
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .inspect(|lease| {
            assert_eq!(lease.owner.as_deref(), Some("b"), "{lease:?}");
            assert_eq!(lease.checkpoint_owner.as_deref(), Some("a"), "{lease:?}");
        })
        .map(|lease| lease.key)
        .collect();
    let b_item = table.get_heartbeat("b").await.unwrap().unwrap();
    assert_eq!(b_item.offered, keys);
    assert_eq!(a_handle.receivers(), 1);

    // Nothing more to read about the leases: no full round in the next 3 s
    // (the next is due 10 s after the last), and no lease read, since every
    // lease is already asked for.
    let (scans, reads) = (faults.calls(Call::ListTable), faults.calls(Call::GetLease));
    tokio::time::sleep(S(3)).await;
    assert_eq!(faults.calls(Call::ListTable), scans);
    assert_eq!(faults.calls(Call::GetLease), reads);
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_stop_that_comes_while_the_coordinator_is_busy_is_acted_on_when_it_is_done() {
    let table = table_with(2).await;
    let (a_handle, faults, _task) = a_holding_all_beside_b(&table).await;
    // a's watch of its own item hangs; the stop comes meanwhile.
    faults.only(&[Call::GetHeartbeat]);
    faults.stall();
    let watches = faults.calls(Call::GetHeartbeat);
    while faults.calls(Call::GetHeartbeat) == watches {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a_handle.stop_taking();
    tokio::time::sleep(Duration::from_millis(100)).await;
    faults.resume();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Handed over at once, not at the next round (10 s after the last).
    let leases = table.list_leases().await.unwrap();
    assert!(
        leases
            .iter()
            .all(|lease| lease.owner.as_deref() == Some("b")),
        "{leases:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_receiver_starts_a_lease_handed_to_it_at_its_next_watch_not_its_next_round() {
    let table = table_with(4).await;
    let (handles, _) = run_pair(&table, defaults).await;
    let counts: Vec<usize> = handles.iter().map(|h| h.held().borrow().len()).collect();
    assert_eq!(counts, [2, 2]);

    let stopped_at = tokio::time::Instant::now();
    handles[0].stop_taking();
    let mut b_held = handles[1].held();
    while b_held.borrow_and_update().len() < 4 {
        b_held.changed().await.unwrap();
    }
    // a's round at once; b's next watch (every 500 ms), while a goes on
    // processing for one watch interval; a's release; b's next check of the
    // lease (every 200 ms): well before b's next round (10 s apart).
    let took = stopped_at.elapsed();
    assert!(took <= Duration::from_millis(800), "took {took:?}");
    assert!(handles[0].held().borrow().is_empty());
    let b_item = table.get_heartbeat("b").await.unwrap().unwrap();
    assert!(
        b_item.offered.is_empty(),
        "noted offers are cleared: {b_item:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_eviction_is_seen_at_the_next_watch_and_the_leases_handed_over() {
    let table = table_with(2).await;
    let (handles, _) = run_pair(&table, defaults).await;
    assert_eq!(handles[0].held().borrow().len(), 1);
    let evicted_at = tokio::time::Instant::now();
    assert!(table.request_eviction("a", true).await.unwrap());
    let mut b_held = handles[1].held();
    while b_held.borrow_and_update().len() < 2 {
        b_held.changed().await.unwrap();
    }
    // a's watch (500 ms), its round at once, the hold (500 ms), b's check
    // (200 ms): not a's next round.
    let took = evicted_at.elapsed();
    assert!(took <= Duration::from_millis(1300), "took {took:?}");
    assert!(handles[0].is_evicted());
    assert!(handles[0].held().borrow().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lease_handed_to_a_worker_that_then_stops_too_is_released_to_no_one() {
    let table = table_with(2).await;
    let (a, a_handle) = coordinator(&table, "a");
    spawn_releaser(&a_handle);
    tokio::spawn(a.run(std::future::pending()));
    let mut held = a_handle.held();
    while held.borrow_and_update().len() < 2 {
        held.changed().await.unwrap();
    }
    let (b, b_handle) = coordinator(&table, "b");
    tokio::spawn(b.run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // a hands both leases to b; b starts stopping while a holds them.
    a_handle.stop_taking();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        table
            .list_leases()
            .await
            .unwrap()
            .iter()
            .all(|l| l.owner.as_deref() == Some("b")),
        "handed to b"
    );
    b_handle.stop_taking();
    tokio::time::sleep(S(1)).await;
    let leases = table.list_leases().await.unwrap();
    assert!(
        leases
            .iter()
            .all(|l| l.owner.is_none() && l.checkpoint_owner.is_none()),
        "free for a live worker, not left with the stopping b: {leases:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_arrives_as_its_receiver_stops_is_released_at_the_stop() {
    let table = table_with(1).await;
    let seen = table.list_leases().await.unwrap().remove(0);
    let held_by_a = table.take_lease(&seen, "a").await.unwrap();
    let (b, _) = coordinator(&table, "b");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let b_task = tokio::spawn(b.run(async {
        let _ = stopped.await;
    }));
    // After b's first round: a hands the lease to b and tells it; b's
    // watch notes it and waits for the release.
    tokio::time::sleep(S(2)).await;
    table.request_handoff(&held_by_a, "b").await.unwrap();
    let key: BTreeSet<String> = [held_by_a.key.clone()].into();
    assert!(table.offer_leases("b", &key).await.unwrap());
    // (Between two of its checks, 100 ms apart.)
    tokio::time::sleep(Duration::from_millis(650)).await;
    assert!(
        table
            .get_heartbeat("b")
            .await
            .unwrap()
            .unwrap()
            .offered
            .is_empty()
    );
    // a releases, and b stops before its next check of the lease.
    table
        .release_lease(&held_by_a.token().unwrap())
        .await
        .unwrap();
    assert_eq!(
        table.list_leases().await.unwrap()[0].owner.as_deref(),
        Some("b")
    );
    stop.send(()).unwrap();
    b_task.await.unwrap().unwrap();
    let lease = table.list_leases().await.unwrap().remove(0);
    assert_eq!(lease.owner, None, "{lease:?}");
}

#[tokio::test(start_paused = true)]
async fn a_process_that_stops_before_taking_its_leases_anew_releases_nothing() {
    // A lease another process with the id "b" may still be processing.
    let table = table_with(1).await;
    let seen = table.list_leases().await.unwrap().remove(0);
    table.take_lease(&seen, "b").await.unwrap();
    let (b, _) = coordinator(&table, "b");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let b_task = tokio::spawn(b.run(async {
        let _ = stopped.await;
    }));
    // Even offered to b (as if handed to it), before b's first round.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let key: BTreeSet<String> = [seen.key.clone()].into();
    assert!(table.offer_leases("b", &key).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        table
            .get_heartbeat("b")
            .await
            .unwrap()
            .unwrap()
            .offered
            .is_empty()
    );
    stop.send(()).unwrap();
    b_task.await.unwrap().unwrap();
    let lease = table.list_leases().await.unwrap().remove(0);
    assert_eq!(lease.owner.as_deref(), Some("b"), "{lease:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hand_over_whose_answer_was_lost_still_tells_the_receiver() {
    let table = table_with(2).await;
    let (a_handle, faults, _task) = a_holding_all_beside_b(&table).await;
    // The first request takes effect, and its answer is an error.
    faults.only(&[Call::RequestHandoff]);
    faults.apply_then_fail(1);
    a_handle.stop_taking();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(faults.applied_and_failed().len(), 1);
    let offered = table.get_heartbeat("b").await.unwrap().unwrap().offered;
    assert_eq!(offered.len(), 2, "both handed over and told: {offered:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a_handle.handoffs_requested().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_handoff_whose_token_went_stale_is_completed_at_the_stop() {
    let table = table_with(1).await;
    let (a, a_handle) = coordinator(&table, "a");
    spawn_releaser(&a_handle);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let a_task = tokio::spawn(a.run(async {
        let _ = stopped.await;
    }));
    let mut held = a_handle.held();
    while held.borrow_and_update().is_empty() {
        held.changed().await.unwrap();
    }
    let (b, b_handle) = coordinator(&table, "b");
    tokio::spawn(b.run(std::future::pending()));
    tokio::time::sleep(S(2)).await;
    // a hands the lease to b; an operator's reset moves it meanwhile, so
    // a's release fails and a no longer publishes it.
    a_handle.stop_taking();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = table.list_leases().await.unwrap().remove(0);
    assert_eq!(seen.owner.as_deref(), Some("b"));
    table
        .reset_checkpoint(&seen, &ExtendedSequenceNumber::TrimHorizon, None, false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a_handle.held().borrow().is_empty());
    assert_eq!(
        table.list_leases().await.unwrap()[0]
            .checkpoint_owner
            .as_deref(),
        Some("a"),
        "still waiting for a"
    );
    stop.send(()).unwrap();
    a_task.await.unwrap().unwrap();
    let lease = table.list_leases().await.unwrap().remove(0);
    assert_eq!(
        (lease.owner.as_deref(), lease.checkpoint_owner.as_deref()),
        (Some("b"), None),
        "completed at a's stop: {lease:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b_handle.held().borrow().len(), 1, "b processes it");
}

#[tokio::test(start_paused = true)]
async fn without_the_watch_a_handed_lease_waits_for_the_receivers_round() {
    let table = table_with(2).await;
    let without_watch = |worker: &str| LeaseConfig {
        watch_interval: None,
        ..LeaseConfig::new(worker)
    };
    let (handles, _) = run_pair(&table, without_watch).await;
    let stopped_at = tokio::time::Instant::now();
    handles[0].stop_taking();
    let mut b_held = handles[1].held();
    while b_held.borrow_and_update().len() < 2 {
        b_held.changed().await.unwrap();
    }
    // At b's next round, which also watches the lease handed to it.
    let took = stopped_at.elapsed();
    assert!(took > S(1), "took {took:?}");
    assert!(took <= S(11), "took {took:?}");
}

#[tokio::test]
async fn a_round_whose_read_straddles_a_return_of_liveness_acts_on_nothing() {
    let table = table_with(2).await;
    let (faulty, faults) = FaultyStore::new(Arc::new(table.client()));
    let (mut a, handle) = LeaseCoordinator::new(Arc::new(faulty), LeaseConfig::new("a")).unwrap();
    let t0 = Instant::now();
    a.heartbeat(at(t0)).await.unwrap();
    a.assignment_round(at(t0)).await.unwrap();
    assert_eq!(handle.held().borrow().len(), 2);
    // The deadline (t0 + 8 s) passes; a round begins while a is not alive,
    // its read of the workers table hangs, and meanwhile a heartbeat is
    // confirmed: the read began in no epoch, and ends in a new one.
    assert!(a.enforce_liveness(t0 + S(9)));
    faults.only(&[Call::ListHeartbeats]);
    faults.stall();
    let round = tokio::spawn(async move {
        let report = a.assignment_round(|| t0 + S(10)).await;
        (a, report)
    });
    tokio::task::yield_now().await;
    handle.heartbeat(at(t0 + S(10))).await.unwrap();
    faults.resume();
    let (mut a, report) = round.await.unwrap();
    report.unwrap();
    assert!(handle.held().borrow().is_empty(), "acted on a stale read");
    // The next round, read within the epoch, takes the leases anew.
    a.assignment_round(at(t0 + S(11))).await.unwrap();
    let held = handle.held().borrow().clone();
    assert_eq!(held.len(), 2);
    assert!(held.values().all(|h| h.token.counter == 2), "{held:?}");
}

#[tokio::test]
async fn a_lease_another_worker_took_before_the_retake_is_not_published() {
    let table = table_with(2).await;
    let (faulty, faults) = FaultyStore::new(Arc::new(table.client()));
    let (mut a, handle) = LeaseCoordinator::new(Arc::new(faulty), LeaseConfig::new("a")).unwrap();
    let t0 = Instant::now();
    a.heartbeat(at(t0)).await.unwrap();
    a.assignment_round(at(t0)).await.unwrap();
    // a loses its liveness and gets it back; its round reads both leases as
    // its own, and its retakes hang while b takes one of them.
    assert!(a.enforce_liveness(t0 + S(9)));
    a.heartbeat(at(t0 + S(10))).await.unwrap();
    faults.only(&[Call::TakeLease]);
    faults.stall();
    let round = tokio::spawn(async move {
        let report = a.assignment_round(|| t0 + S(10)).await;
        (a, report)
    });
    tokio::task::yield_now().await;
    let stolen = table
        .get_lease("shardId-000000000000")
        .await
        .unwrap()
        .unwrap();
    table.take_lease(&stolen, "b").await.unwrap();
    faults.resume();
    let (_, report) = round.await.unwrap();
    assert_eq!(report.unwrap().contended, 1);
    let held: Vec<String> = handle.held().borrow().keys().cloned().collect();
    assert_eq!(held, ["shardId-000000000001"], "published a lease b took");
}

#[tokio::test]
async fn a_second_live_process_under_the_same_worker_id_stops_one_of_them() {
    let table = table_with(2).await;
    let (mut first, first_handle) = coordinator(&table, "a");
    let (mut second, second_handle) = coordinator(&table, "a");
    // Started in the same microsecond: the same values, in lockstep.
    first.shared.heart.set_next_beat(1_000);
    second.shared.heart.set_next_beat(1_000);
    let t0 = Instant::now();
    first.heartbeat(at(t0)).await.unwrap();
    first.assignment_round(at(t0)).await.unwrap();
    second.heartbeat(at(t0)).await.ok();
    second.assignment_round(at(t0)).await.unwrap();
    // Both heartbeat, each going past the other's values.
    let mut stopped = None;
    for t in 1..10 {
        for (name, coordinator) in [("first", &first), ("second", &second)] {
            let result = coordinator.heartbeat(at(t0 + S(t))).await;
            if let Err(LeaseStoreError::DuplicateWorkerId { .. }) = result {
                stopped = Some(name);
                break;
            }
        }
        if stopped.is_some() {
            break;
        }
    }
    let stopped = stopped.expect("one of them stops");
    let handle = if stopped == "first" {
        &first_handle
    } else {
        &second_handle
    };
    assert!(handle.held().borrow().is_empty());
    assert!(handle.liveness().borrow().until.is_none());
    let _ = (&mut first, &mut second);
}

#[tokio::test]
async fn a_worker_of_another_library_renewing_leases_is_reported_and_its_leases_left_alone() {
    let store = table_with(2).await;
    let java_lease = "shardId-000000000000";
    // A Java KCL worker (no heartbeat item) holds one lease and renews it
    // by bumping its counter.
    let renew = |store: InMemoryLeaseStore| async move {
        let seen = store.get_lease(java_lease).await.unwrap().unwrap();
        store.take_lease(&seen, "java-worker").await.unwrap();
    };
    renew(store.clone()).await;
    let (mut a, handle) = coordinator(&store, "a");
    let t0 = Instant::now();
    a.heartbeat(at(t0)).await.unwrap();
    a.assignment_round(at(t0)).await.unwrap();
    assert!(handle.foreign_owners().is_empty(), "not seen to move yet");

    for step in 1..=6 {
        let now = t0 + S(2 * step);
        renew(store.clone()).await;
        a.heartbeat(at(now)).await.unwrap();
        let report = a.assignment_round(at(now)).await.unwrap();
        assert!(!report.taken.contains(&java_lease.to_owned()), "{report:?}");
        assert_eq!(
            handle.foreign_owners(),
            BTreeMap::from([("java-worker".to_owned(), vec![java_lease.to_owned()])]),
            "at {step}"
        );
    }
    // It stops: once its counter has stood still for the failover time,
    // the lease is taken and the report clears.
    let stopped_at = t0 + S(12);
    for step in 1..=5 {
        let now = stopped_at + S(2 * step);
        a.heartbeat(at(now)).await.unwrap();
        a.assignment_round(at(now)).await.unwrap();
    }
    assert!(handle.foreign_owners().is_empty());
    let lease = store.get_lease(java_lease).await.unwrap().unwrap();
    assert_eq!(lease.owner.as_deref(), Some("a"));
}

#[tokio::test]
async fn a_draining_worker_whose_lease_became_unreadable_drops_it_and_reads_the_others() {
    let store = table_with(2).await;
    let (mut a, handle) = coordinator(&store, "a");
    let t0 = Instant::now();
    a.heartbeat(at(t0)).await.unwrap();
    a.assignment_round(at(t0)).await.unwrap();
    assert_eq!(handle.held().borrow().len(), 2);
    // Someone rewrites one lease into an item no reader can use.
    let broken = "shardId-000000000000";
    store.put_item(
        &[
            (
                "leaseKey",
                aws_sdk_dynamodb::types::AttributeValue::S(broken.into()),
            ),
            (
                "leaseCounter",
                aws_sdk_dynamodb::types::AttributeValue::S("many".into()),
            ),
            (
                "checkpoint",
                aws_sdk_dynamodb::types::AttributeValue::S("TRIM_HORIZON".into()),
            ),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect(),
    );
    handle.stop_taking();
    a.drain_poll(at(t0 + S(1))).await.unwrap();
    let held = handle.held().borrow().clone();
    assert_eq!(held.keys().collect::<Vec<_>>(), ["shardId-000000000001"]);
}
