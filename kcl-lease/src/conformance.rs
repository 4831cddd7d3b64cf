//! The lease-store conformance suite: the semantics every [`LeaseStore`]
//! keeps, run against the in-memory store by this crate's own tests and
//! against DynamoDB Local by the integration tests, so the fake stays
//! honest.
//!
//! Each case gets two clients, `a` and `b`, of the same fresh tables, as two
//! workers would have. [`lease_store_conformance!`](crate::lease_store_conformance)
//! turns every case into a test:
//!
//! ```ignore
//! async fn tables() -> (MyStore, MyStore) { /* two clients of fresh tables */ }
//! kcl_lease::lease_store_conformance!(tables);
//! ```

use std::collections::BTreeSet;

use kcl_checkpoint::ExtendedSequenceNumber;

use crate::{CheckpointUpdate, Lease, LeaseStore, LeaseStoreError, LeaseToken, WorkerHeartbeat};

/// Runs every case in this suite; generates one `#[tokio::test]` per case
/// in the calling module, each calling `$tables().await` for its two clients.
#[macro_export]
macro_rules! lease_store_conformance {
    ($tables:path) => {
        $crate::lease_store_conformance!(
            $tables;
            creating_is_conditional_and_reads_are_consistent,
            list_returns_every_lease_across_pages,
            of_two_racing_takes_exactly_one_wins,
            a_stale_owner_can_neither_checkpoint_nor_release,
            checkpoints_only_move_forward,
            counters_grow_on_ownership_changes_only,
            a_handoff_lets_the_old_owner_checkpoint_then_passes_the_lease,
            only_one_handoff_at_a_time,
            a_lease_being_handed_over_can_be_taken,
            a_plain_release_frees_the_lease,
            pending_checkpoints_and_state_round_trip,
            a_deleted_lease_cannot_be_written,
            heartbeats_are_kept_per_worker,
            heartbeats_only_move_forward,
            ensuring_tables_twice_is_harmless,
            child_shards_are_recorded_by_the_owner_only,
            the_start_timestamp_is_recorded_once_and_fenced,
            a_reset_moves_the_position_and_fences_the_holder,
            an_eviction_mark_outlives_heartbeats_until_cleared,
            offers_outlive_heartbeats_until_cleared,
            a_release_to_no_one_ends_a_handoff_and_frees_the_lease
        );
    };
    ($tables:path; $($case:ident),+) => {
        $(
            #[tokio::test]
            async fn $case() {
                let (a, b) = $tables().await;
                $crate::conformance::$case(a, b).await;
            }
        )+
    };
}

fn shard(n: u32) -> String {
    format!("shardId-{n:012}")
}

fn position(sequence: &str) -> ExtendedSequenceNumber {
    ExtendedSequenceNumber::record(sequence, 0).expect("valid sequence number")
}

async fn must_get(store: &impl LeaseStore, key: &str) -> Lease {
    store
        .get_lease(key)
        .await
        .expect("get lease")
        .expect("lease exists")
}

async fn create_and_take(store: &impl LeaseStore, key: &str, worker: &str) -> Lease {
    assert!(
        store
            .create_lease_if_absent(&Lease::new(key, ExtendedSequenceNumber::TrimHorizon))
            .await
            .expect("create")
    );
    let seen = must_get(store, key).await;
    store.take_lease(&seen, worker).await.expect("take")
}

fn assert_lost<T: std::fmt::Debug>(result: Result<T, LeaseStoreError>) {
    match result {
        Err(LeaseStoreError::LeaseLost { .. }) => {}
        other => panic!("expected LeaseLost, got {other:?}"),
    }
}

/// Creating is conditional; what was written is read back at once.
pub async fn creating_is_conditional_and_reads_are_consistent(
    a: impl LeaseStore,
    b: impl LeaseStore,
) {
    let mut lease = Lease::new(shard(1), ExtendedSequenceNumber::TrimHorizon);
    lease.parent_shard_ids = [shard(0)].into();
    assert!(a.create_lease_if_absent(&lease).await.unwrap());
    let mut other = Lease::new(shard(1), ExtendedSequenceNumber::Latest);
    other.owner = Some("intruder".into());
    assert!(!b.create_lease_if_absent(&other).await.unwrap());
    assert_eq!(must_get(&b, &shard(1)).await, lease);
    assert_eq!(b.get_lease(&shard(2)).await.unwrap(), None);
}

/// Listing returns every lease, also when the table needs several pages
/// (DynamoDB pages scans at 1 MB).
pub async fn list_returns_every_lease_across_pages(a: impl LeaseStore, b: impl LeaseStore) {
    let state = vec![7u8; 12 * 1024];
    for n in 0..100 {
        let mut lease = Lease::new(shard(n), ExtendedSequenceNumber::TrimHorizon);
        // Big items, so 100 of them take more than one scan page.
        lease.pending_checkpoint_state = Some(state.clone());
        assert!(a.create_lease_if_absent(&lease).await.unwrap());
    }
    let mut keys: Vec<String> = b
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    keys.sort();
    assert_eq!(keys, (0..100).map(shard).collect::<Vec<_>>());
}

/// Two workers take the same lease at the same moment: exactly one wins.
pub async fn of_two_racing_takes_exactly_one_wins(a: impl LeaseStore, b: impl LeaseStore) {
    for n in 0..5 {
        let key = shard(n);
        a.create_lease_if_absent(&Lease::new(&key, ExtendedSequenceNumber::TrimHorizon))
            .await
            .unwrap();
        let seen = must_get(&a, &key).await;
        let (by_a, by_b) = tokio::join!(
            a.take_lease(&seen, "worker-a"),
            b.take_lease(&seen, "worker-b")
        );
        let winner = match (by_a, by_b) {
            (Ok(lease), Err(LeaseStoreError::LeaseLost { .. })) => {
                assert_eq!(lease.owner.as_deref(), Some("worker-a"));
                "worker-a"
            }
            (Err(LeaseStoreError::LeaseLost { .. }), Ok(lease)) => {
                assert_eq!(lease.owner.as_deref(), Some("worker-b"));
                "worker-b"
            }
            other => panic!("expected exactly one winner, got {other:?}"),
        };
        let stored = must_get(&b, &key).await;
        assert_eq!(stored.owner.as_deref(), Some(winner));
        assert_eq!(stored.counter, seen.counter + 1);
    }
}

/// A worker whose lease was taken over can neither checkpoint nor release
/// it, and its failed writes change nothing.
pub async fn a_stale_owner_can_neither_checkpoint_nor_release(
    a: impl LeaseStore,
    b: impl LeaseStore,
) {
    let key = shard(1);
    let held_by_a = create_and_take(&a, &key, "worker-a").await;
    let token_a = held_by_a.token().unwrap();
    a.checkpoint(
        &token_a,
        &CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
        &CheckpointUpdate::at(position("100")),
    )
    .await
    .unwrap();

    // b takes the lease (as after judging a expired).
    let seen = must_get(&b, &key).await;
    let held_by_b = b.take_lease(&seen, "worker-b").await.unwrap();
    assert_eq!(held_by_b.owner_switches_since_checkpoint, 1);

    assert_lost(
        a.checkpoint(
            &token_a,
            &CheckpointUpdate::at(position("100")),
            &CheckpointUpdate::at(position("200")),
        )
        .await,
    );
    assert_lost(a.release_lease(&token_a).await);
    // A take on an old view fails too.
    assert_lost(a.take_lease(&held_by_a, "worker-a").await);
    let stored = must_get(&b, &key).await;
    assert_eq!(stored.checkpoint, position("100"));
    assert_eq!(stored.owner.as_deref(), Some("worker-b"));

    b.checkpoint(
        &held_by_b.token().unwrap(),
        &CheckpointUpdate::at(position("100")),
        &CheckpointUpdate::at(position("150")),
    )
    .await
    .unwrap();
    let stored = must_get(&a, &key).await;
    assert_eq!(stored.checkpoint, position("150"));
    assert_eq!(stored.owner_switches_since_checkpoint, 0);

    // Same worker id, old counter: still fenced (a worker that lost and
    // retook a lease cannot write with its first token).
    let seen = must_get(&a, &key).await;
    b.release_lease(&held_by_b.token().unwrap()).await.unwrap();
    let retaken = a
        .take_lease(&must_get(&a, &key).await, "worker-a")
        .await
        .unwrap();
    assert!(retaken.counter > seen.counter);
    assert_lost(
        a.checkpoint(
            &token_a,
            &CheckpointUpdate::at(position("150")),
            &CheckpointUpdate::at(position("300")),
        )
        .await,
    );
}

/// A checkpoint only moves forward: a write behind the stored checkpoint
/// leaves it (writing only its pending fields, unless the pending checkpoint
/// is not past it either) and answers with what is stored, while a write whose expected previous checkpoint is out of date (an
/// earlier write took effect but its answer was lost) still lands.
pub async fn checkpoints_only_move_forward(a: impl LeaseStore, b: impl LeaseStore) {
    let key = shard(1);
    let token = create_and_take(&a, &key, "worker-a").await.token().unwrap();
    let start = ExtendedSequenceNumber::TrimHorizon;
    let write = |previous: ExtendedSequenceNumber, update: CheckpointUpdate| {
        let (a, token) = (&a, &token);
        async move {
            a.checkpoint(token, &CheckpointUpdate::at(previous), &update)
                .await
                .unwrap()
                .checkpoint
        }
    };

    // The writer missed the answer to 200 and still expects TRIM_HORIZON.
    assert_eq!(
        write(start.clone(), CheckpointUpdate::at(position("200"))).await,
        position("200")
    );
    assert_eq!(
        write(start.clone(), CheckpointUpdate::at(position("300"))).await,
        position("300")
    );
    assert_eq!(must_get(&b, &key).await.checkpoint, position("300"));

    // Behind the stored checkpoint: it stays.
    assert_eq!(
        write(start.clone(), CheckpointUpdate::at(position("100"))).await,
        position("300")
    );
    assert_eq!(must_get(&b, &key).await.checkpoint, position("300"));

    // A checkpoint prepared from behind is stored on top of it.
    let prepared_behind = CheckpointUpdate {
        checkpoint: position("100"),
        pending_checkpoint: Some(position("350")),
        pending_checkpoint_state: Some(b"state".to_vec()),
    };
    assert_eq!(write(start.clone(), prepared_behind).await, position("300"));
    let stored = must_get(&b, &key).await;
    assert_eq!(stored.checkpoint, position("300"));
    assert_eq!(stored.pending_checkpoint, Some(position("350")));
    assert_eq!(stored.pending_checkpoint_state, Some(b"state".to_vec()));

    // Prepared from behind at a position already passed: no pending
    // checkpoint is stored behind the checkpoint, and the answer says so.
    let passed_behind = CheckpointUpdate {
        checkpoint: position("100"),
        pending_checkpoint: Some(position("250")),
        pending_checkpoint_state: Some(b"state".to_vec()),
    };
    let answer = a
        .checkpoint(&token, &CheckpointUpdate::at(start.clone()), &passed_behind)
        .await
        .unwrap();
    assert_eq!(answer, CheckpointUpdate::at(position("300")));
    let stored = must_get(&b, &key).await;
    assert_eq!(stored.checkpoint, position("300"));
    assert_eq!(stored.pending_checkpoint, None);
    assert_eq!(stored.pending_checkpoint_state, None);

    // Sub-sequence numbers count.
    let user = |n| ExtendedSequenceNumber::record("300", n).unwrap();
    assert_eq!(
        write(position("300"), CheckpointUpdate::at(user(2))).await,
        user(2)
    );
    assert_eq!(write(start, CheckpointUpdate::at(user(1))).await, user(2));
    assert_eq!(must_get(&b, &key).await.checkpoint, user(2));

    // The same checkpoint again lands (it may carry a pending one).
    let prepared = CheckpointUpdate {
        checkpoint: user(2),
        pending_checkpoint: Some(position("400")),
        pending_checkpoint_state: None,
    };
    assert_eq!(write(user(2), prepared).await, user(2));
    let stored = must_get(&b, &key).await;
    assert_eq!(stored.checkpoint, user(2));
    assert_eq!(stored.pending_checkpoint, Some(position("400")));
}

/// The counter grows by one on each change of ownership and never moves
/// otherwise.
pub async fn counters_grow_on_ownership_changes_only(a: impl LeaseStore, b: impl LeaseStore) {
    let key = shard(1);
    a.create_lease_if_absent(&Lease::new(&key, ExtendedSequenceNumber::TrimHorizon))
        .await
        .unwrap();
    let mut counters = vec![must_get(&a, &key).await.counter];
    let taken = a
        .take_lease(&must_get(&a, &key).await, "worker-a")
        .await
        .unwrap();
    counters.push(must_get(&b, &key).await.counter);
    a.checkpoint(
        &taken.token().unwrap(),
        &CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
        &CheckpointUpdate::at(position("5")),
    )
    .await
    .unwrap();
    counters.push(must_get(&b, &key).await.counter);
    let moving = b
        .request_handoff(&must_get(&b, &key).await, "worker-b")
        .await
        .unwrap();
    counters.push(must_get(&b, &key).await.counter);
    a.release_lease(&moving.token().unwrap()).await.unwrap();
    counters.push(must_get(&b, &key).await.counter);
    let received = must_get(&b, &key).await;
    b.release_lease(&received.token().unwrap()).await.unwrap();
    counters.push(must_get(&b, &key).await.counter);
    // take +1, checkpoint +0, handoff request +0, handoff completion +1, release +1
    let base = counters[0];
    assert_eq!(
        counters,
        [base, base + 1, base + 1, base + 1, base + 2, base + 3]
    );
}

/// A handoff: the receiver becomes owner at once, the old owner keeps
/// checkpointing until it releases, then only the receiver can write.
pub async fn a_handoff_lets_the_old_owner_checkpoint_then_passes_the_lease(
    a: impl LeaseStore,
    b: impl LeaseStore,
) {
    let key = shard(1);
    let held = create_and_take(&a, &key, "worker-a").await;
    let token_a = held.token().unwrap();

    let moving = b
        .request_handoff(&must_get(&b, &key).await, "worker-b")
        .await
        .unwrap();
    assert_eq!(moving.owner.as_deref(), Some("worker-b"));
    assert_eq!(moving.checkpoint_owner.as_deref(), Some("worker-a"));
    assert_eq!(moving.processing_owner(), Some("worker-a"));
    assert_eq!(moving.counter, held.counter);

    // The receiver cannot write before the handoff completes.
    let early_b = LeaseToken {
        key: key.clone(),
        worker: "worker-b".into(),
        counter: moving.counter,
    };
    assert_lost(
        b.checkpoint(
            &early_b,
            &CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
            &CheckpointUpdate::at(position("1")),
        )
        .await,
    );

    // The old owner checkpoints at its batch boundary and releases.
    a.checkpoint(
        &token_a,
        &CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
        &CheckpointUpdate::at(position("42")),
    )
    .await
    .unwrap();
    a.release_lease(&token_a).await.unwrap();

    let received = must_get(&b, &key).await;
    assert_eq!(received.owner.as_deref(), Some("worker-b"));
    assert_eq!(received.checkpoint_owner, None);
    assert_eq!(received.checkpoint, position("42"));
    assert_eq!(received.counter, held.counter + 1);
    assert_eq!(received.owner_switches_since_checkpoint, 1);
    let token_b = received.token().unwrap();
    assert_eq!(token_b.worker, "worker-b");
    assert_lost(
        a.checkpoint(
            &token_a,
            &CheckpointUpdate::at(position("42")),
            &CheckpointUpdate::at(position("43")),
        )
        .await,
    );
    b.checkpoint(
        &token_b,
        &CheckpointUpdate::at(position("42")),
        &CheckpointUpdate::at(position("43")),
    )
    .await
    .unwrap();
}

/// A lease already being handed over cannot be asked for again, and an
/// unowned lease cannot be handed over (it is taken instead).
pub async fn only_one_handoff_at_a_time(a: impl LeaseStore, b: impl LeaseStore) {
    let key = shard(1);
    create_and_take(&a, &key, "worker-a").await;
    let seen = must_get(&b, &key).await;
    b.request_handoff(&seen, "worker-b").await.unwrap();
    assert_lost(a.request_handoff(&seen, "worker-c").await);
    assert_lost(
        a.request_handoff(&must_get(&a, &key).await, "worker-c")
            .await,
    );
    assert_eq!(must_get(&a, &key).await.owner.as_deref(), Some("worker-b"));

    let free = shard(2);
    a.create_lease_if_absent(&Lease::new(&free, ExtendedSequenceNumber::TrimHorizon))
        .await
        .unwrap();
    assert_lost(
        b.request_handoff(&must_get(&b, &free).await, "worker-b")
            .await,
    );
}

/// A lease whose handoff is under way (both holders gone, say) can be taken
/// by a third worker; the taker ends the handoff and the old holder is
/// fenced out.
pub async fn a_lease_being_handed_over_can_be_taken(a: impl LeaseStore, b: impl LeaseStore) {
    let key = shard(1);
    let held = create_and_take(&a, &key, "worker-a").await;
    let handing = b
        .request_handoff(&must_get(&b, &key).await, "worker-b")
        .await
        .unwrap();
    assert!(handing.handoff_in_progress());
    let taken = b.take_lease(&handing, "worker-c").await.unwrap();
    assert_eq!(taken.owner.as_deref(), Some("worker-c"));
    assert_eq!(taken.checkpoint_owner, None);
    assert_eq!(taken.counter, handing.counter + 1);
    assert_eq!(must_get(&a, &key).await, taken);
    assert_lost(
        a.checkpoint(
            &held.token().unwrap(),
            &CheckpointUpdate::at(held.checkpoint.clone()),
            &CheckpointUpdate::at(position("10")),
        )
        .await,
    );
}

/// A release without a handoff leaves the lease unowned for anyone to take.
pub async fn a_plain_release_frees_the_lease(a: impl LeaseStore, b: impl LeaseStore) {
    let key = shard(1);
    let held = create_and_take(&a, &key, "worker-a").await;
    a.release_lease(&held.token().unwrap()).await.unwrap();
    let released = must_get(&b, &key).await;
    assert_eq!(released.owner, None);
    assert_eq!(released.counter, held.counter + 1);
    let taken = b.take_lease(&released, "worker-b").await.unwrap();
    assert_eq!(taken.owner.as_deref(), Some("worker-b"));
    // Nobody was processing it in between: no owner switch is counted.
    assert_eq!(taken.owner_switches_since_checkpoint, 0);
}

/// A prepared checkpoint and its state are stored and read back; a plain
/// checkpoint clears them.
pub async fn pending_checkpoints_and_state_round_trip(a: impl LeaseStore, b: impl LeaseStore) {
    let key = shard(1);
    let token = create_and_take(&a, &key, "worker-a").await.token().unwrap();
    let prepared = CheckpointUpdate {
        checkpoint: position("10"),
        pending_checkpoint: Some(ExtendedSequenceNumber::record("20", 3).unwrap()),
        pending_checkpoint_state: Some(b"app state \x00\xff".to_vec()),
    };
    a.checkpoint(
        &token,
        &CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
        &prepared,
    )
    .await
    .unwrap();
    let stored = must_get(&b, &key).await;
    assert_eq!(stored.checkpoint, prepared.checkpoint);
    assert_eq!(stored.pending_checkpoint, prepared.pending_checkpoint);
    assert_eq!(
        stored.pending_checkpoint_state,
        prepared.pending_checkpoint_state
    );

    a.checkpoint(
        &token,
        &CheckpointUpdate::at(position("10")),
        &CheckpointUpdate::at(ExtendedSequenceNumber::ShardEnd),
    )
    .await
    .unwrap();
    let stored = must_get(&b, &key).await;
    assert_eq!(stored.checkpoint, ExtendedSequenceNumber::ShardEnd);
    assert!(stored.is_finished());
    assert_eq!(stored.pending_checkpoint, None);
    assert_eq!(stored.pending_checkpoint_state, None);
}

/// Writes to a deleted lease fail as lost; deleting twice is harmless; a
/// lease changed since it was read (taken, reset) is not deleted.
pub async fn a_deleted_lease_cannot_be_written(a: impl LeaseStore, b: impl LeaseStore) {
    let key = shard(1);
    let seen = {
        assert!(
            a.create_lease_if_absent(&Lease::new(&key, ExtendedSequenceNumber::TrimHorizon))
                .await
                .unwrap()
        );
        must_get(&a, &key).await
    };
    let held = a.take_lease(&seen, "worker-a").await.expect("take");
    assert_lost(b.delete_lease(&seen).await);
    assert_eq!(must_get(&b, &key).await.counter, held.counter, "kept");
    b.delete_lease(&held).await.unwrap();
    b.delete_lease(&held).await.unwrap();
    assert_eq!(a.get_lease(&key).await.unwrap(), None);
    assert_lost(
        a.checkpoint(
            &held.token().unwrap(),
            &CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
            &CheckpointUpdate::at(position("1")),
        )
        .await,
    );
    assert_lost(a.release_lease(&held.token().unwrap()).await);
    assert_lost(a.take_lease(&held, "worker-a").await);
}

/// `heartbeats` without the times they were written, to compare with what
/// was written.
fn without_times(heartbeats: Vec<WorkerHeartbeat>) -> Vec<WorkerHeartbeat> {
    heartbeats
        .into_iter()
        .map(|heartbeat| WorkerHeartbeat {
            written_at: None,
            ..heartbeat
        })
        .collect()
}

/// One heartbeat per worker, overwritten by the next, removed on request;
/// the draining flag, the failover time and the streams announced are kept
/// with it.
pub async fn heartbeats_are_kept_per_worker(a: impl LeaseStore, b: impl LeaseStore) {
    let beat = |worker: &str, beat| WorkerHeartbeat {
        worker: worker.into(),
        beat,
        draining: false,
        failover_time: Some(std::time::Duration::from_millis(7_500)),
        streams: None,
        written_at: None,
        evicted: false,
        stalled_shards: Default::default(),
        offered: Default::default(),
    };
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    a.heartbeat(&beat("worker-a", 1)).await.unwrap();
    b.heartbeat(&beat("worker-b", 1)).await.unwrap();
    a.heartbeat(&beat("worker-a", 2)).await.unwrap();
    let mut seen = b.list_heartbeats().await.unwrap();
    seen.sort_by(|x, y| x.worker.cmp(&y.worker));
    for heartbeat in &seen {
        let written_at = heartbeat.written_at.expect("the store records when");
        assert!(written_at >= before, "written now: {heartbeat:?}");
    }
    let seen = without_times(seen);
    assert_eq!(seen, [beat("worker-a", 2), beat("worker-b", 1)]);
    let draining = WorkerHeartbeat {
        draining: true,
        failover_time: None,
        streams: Some(["1:orders:10".to_owned(), "1:refunds:10".to_owned()].into()),
        stalled_shards: ["orders/shardId-1".to_owned()].into(),
        ..beat("worker-a", 3)
    };
    a.heartbeat(&draining).await.unwrap();
    let mut seen = without_times(b.list_heartbeats().await.unwrap());
    seen.sort_by(|x, y| x.worker.cmp(&y.worker));
    assert_eq!(seen, [draining, beat("worker-b", 1)]);
    assert!(a.remove_heartbeat("worker-a", None).await.unwrap());
    assert!(!a.remove_heartbeat("worker-a", None).await.unwrap());
    assert_eq!(
        without_times(b.list_heartbeats().await.unwrap()),
        [beat("worker-b", 1)]
    );
}

/// A stored heartbeat only moves forward: a write of a value that is not
/// larger (a late or repeated write, another process) changes nothing and
/// names the stored value. A removal conditional on a value removes only
/// that value.
pub async fn heartbeats_only_move_forward(a: impl LeaseStore, b: impl LeaseStore) {
    let beat = |beat| WorkerHeartbeat {
        worker: "worker-a".into(),
        beat,
        draining: false,
        failover_time: None,
        streams: None,
        written_at: None,
        evicted: false,
        stalled_shards: Default::default(),
        offered: Default::default(),
    };
    a.heartbeat(&beat(10)).await.unwrap();
    for stale in [10, 4] {
        match b.heartbeat(&beat(stale)).await {
            Err(LeaseStoreError::HeartbeatSuperseded { stored: 10, worker }) => {
                assert_eq!(worker, "worker-a");
            }
            other => panic!("a write of {stale} over 10 must be refused: {other:?}"),
        }
    }
    assert_eq!(
        without_times(b.list_heartbeats().await.unwrap()),
        [beat(10)]
    );
    b.heartbeat(&beat(11)).await.unwrap();
    assert!(!a.remove_heartbeat("worker-a", Some(10)).await.unwrap());
    assert_eq!(
        without_times(a.list_heartbeats().await.unwrap()),
        [beat(11)]
    );
    assert!(a.remove_heartbeat("worker-a", Some(11)).await.unwrap());
    assert!(b.list_heartbeats().await.unwrap().is_empty());
    // Gone, a worker starts over with any value.
    b.heartbeat(&beat(1)).await.unwrap();
}

/// Where reading began is recorded by the lease's processing owner only,
/// once: a later record keeps the first moment (to the millisecond), and
/// the moment survives handoffs and checkpoints at sentinels.
pub async fn the_start_timestamp_is_recorded_once_and_fenced(
    a: impl LeaseStore,
    b: impl LeaseStore,
) {
    use std::time::{Duration, UNIX_EPOCH};
    let mut lease = Lease::new(shard(1), ExtendedSequenceNumber::Latest);
    assert!(a.create_lease_if_absent(&lease).await.unwrap());
    lease = a.take_lease(&lease, "worker-a").await.unwrap();
    let token = lease.token().unwrap();
    let first = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    let stored = a.record_start_timestamp(&token, first).await.unwrap();
    assert_eq!(
        stored,
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
    );
    let later = first + Duration::from_secs(60);
    assert_eq!(
        a.record_start_timestamp(&token, later).await.unwrap(),
        stored
    );
    let read = b.get_lease(&shard(1)).await.unwrap().unwrap();
    assert_eq!(read.start_timestamp, Some(stored));
    assert_eq!(read.checkpoint, ExtendedSequenceNumber::Latest);
    let taken = b.take_lease(&read, "worker-b").await.unwrap();
    assert_eq!(taken.start_timestamp, Some(stored));
    assert_lost(a.record_start_timestamp(&token, later).await);
}

/// Ensuring the tables again (as every worker does at start) changes nothing.
pub async fn ensuring_tables_twice_is_harmless(a: impl LeaseStore, b: impl LeaseStore) {
    create_and_take(&a, &shard(1), "worker-a").await;
    b.ensure_tables().await.unwrap();
    a.ensure_tables().await.unwrap();
    assert_eq!(b.list_leases().await.unwrap().len(), 1);
}

/// Child shard ids are added to a finished parent's lease by its owner,
/// fenced like a checkpoint.
pub async fn child_shards_are_recorded_by_the_owner_only(a: impl LeaseStore, b: impl LeaseStore) {
    a.ensure_tables().await.expect("tables");
    let lease = Lease::new(shard(1), ExtendedSequenceNumber::TrimHorizon);
    a.create_lease_if_absent(&lease).await.expect("create");
    let mine = a.take_lease(&lease, "worker-a").await.expect("take");
    let token = mine.token().expect("owned");
    let children = |ids: &[u32]| ids.iter().map(|n| shard(*n)).collect();

    a.record_child_shards(&token, &children(&[2, 3]))
        .await
        .expect("record children");
    a.record_child_shards(&token, &children(&[3, 4]))
        .await
        .expect("record more");
    a.record_child_shards(&token, &children(&[]))
        .await
        .expect("nothing to record");
    assert_eq!(
        must_get(&b, &shard(1)).await.child_shard_ids,
        children(&[2, 3, 4])
    );

    let stale = LeaseToken {
        worker: "worker-b".into(),
        ..token
    };
    let error = b
        .record_child_shards(&stale, &children(&[5]))
        .await
        .expect_err("not the owner");
    assert!(error.is_lease_lost(), "{error}");
    assert_eq!(
        must_get(&a, &shard(1)).await.child_shard_ids,
        children(&[2, 3, 4])
    );
}

/// An operator's reset: the checkpoint moves (back or forward), the
/// pending checkpoint goes, the start timestamp is set or removed, and the
/// counter grows, so the holder's token writes nothing more; the owner and
/// a handoff under way stay. A reset on a lease changed since it was read
/// changes nothing.
pub async fn a_reset_moves_the_position_and_fences_the_holder(
    a: impl LeaseStore,
    b: impl LeaseStore,
) {
    use std::time::{Duration, UNIX_EPOCH};

    let key = shard(1);
    let held = create_and_take(&a, &key, "worker-a").await;
    let token = held.token().unwrap();
    let pending = CheckpointUpdate {
        checkpoint: position("200"),
        pending_checkpoint: Some(position("300")),
        pending_checkpoint_state: Some(b"state".to_vec()),
    };
    a.checkpoint(
        &token,
        &CheckpointUpdate::at(held.checkpoint.clone()),
        &pending,
    )
    .await
    .unwrap();
    let seen = must_get(&b, &key).await;
    let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let reset = b
        .reset_checkpoint(&seen, &ExtendedSequenceNumber::AtTimestamp, Some(at), false)
        .await
        .unwrap();
    let stored = must_get(&a, &key).await;
    assert_eq!(reset, stored);
    assert_eq!(stored.checkpoint, ExtendedSequenceNumber::AtTimestamp);
    assert_eq!(stored.pending_checkpoint, None);
    assert_eq!(stored.pending_checkpoint_state, None);
    assert_eq!(stored.start_timestamp, Some(at));
    assert_eq!(stored.counter, seen.counter + 1);
    assert_eq!(stored.owner.as_deref(), Some("worker-a"), "the owner stays");
    // The holder's token is fenced: it neither checkpoints nor releases.
    assert_lost(
        a.checkpoint(&token, &pending, &CheckpointUpdate::at(position("400")))
            .await,
    );
    assert_lost(a.release_lease(&token).await);
    assert_eq!(must_get(&b, &key).await, stored, "nothing written");
    // The owner goes on with the new token from the new position.
    let token = stored.token().unwrap();
    a.checkpoint(
        &token,
        &CheckpointUpdate::at(stored.checkpoint.clone()),
        &CheckpointUpdate::at(position("150")),
    )
    .await
    .unwrap();
    // A reset on a stale read changes nothing.
    assert_lost(
        b.reset_checkpoint(&seen, &ExtendedSequenceNumber::TrimHorizon, None, false)
            .await,
    );
    assert_eq!(must_get(&b, &key).await.checkpoint, position("150"));
    // During a handoff, the marker stays; the start timestamp is removed.
    let mut seen = must_get(&b, &key).await;
    let handing = b.request_handoff(&seen, "worker-b").await.unwrap();
    seen = handing.clone();
    let reset = b
        .reset_checkpoint(&seen, &ExtendedSequenceNumber::TrimHorizon, None, false)
        .await
        .unwrap();
    assert_eq!(reset.checkpoint, ExtendedSequenceNumber::TrimHorizon);
    assert_eq!(reset.start_timestamp, None);
    assert_eq!(reset.owner.as_deref(), Some("worker-b"));
    assert_eq!(reset.checkpoint_owner.as_deref(), Some("worker-a"));
    assert_eq!(reset.counter, handing.counter + 1);
    // The worker handing over completes the handoff with the new token.
    a.release_lease(&reset.token().unwrap()).await.unwrap();
    let received = must_get(&b, &key).await;
    assert_eq!(received.processing_owner(), Some("worker-b"));
    assert_eq!(received.checkpoint, ExtendedSequenceNumber::TrimHorizon);
    // The lease of a worker gone (no heartbeat) is freed by the reset.
    let handing = b.request_handoff(&received, "worker-c").await.unwrap();
    let freed = b
        .reset_checkpoint(&handing, &position("5"), None, true)
        .await
        .unwrap();
    assert_eq!(
        (freed.owner.as_deref(), freed.checkpoint_owner.as_deref()),
        (None, None)
    );
    assert_eq!(freed.checkpoint, position("5"));
    assert_eq!(must_get(&a, &key).await, freed);
    assert_lost(b.release_lease(&handing.token().unwrap()).await);
}

/// An operator's eviction mark is kept by the worker's later heartbeats
/// until cleared; a worker with no heartbeat cannot be marked, and no item
/// is made for it.
pub async fn an_eviction_mark_outlives_heartbeats_until_cleared(
    a: impl LeaseStore,
    b: impl LeaseStore,
) {
    let beat = |beat| WorkerHeartbeat {
        worker: "worker-a".into(),
        beat,
        draining: false,
        failover_time: Some(std::time::Duration::from_secs(10)),
        streams: None,
        written_at: None,
        evicted: false,
        stalled_shards: Default::default(),
        offered: Default::default(),
    };
    let evicted = |store_list: Vec<WorkerHeartbeat>| store_list.iter().any(|h| h.evicted);
    a.heartbeat(&beat(1)).await.unwrap();
    assert!(!evicted(b.list_heartbeats().await.unwrap()));
    assert!(b.request_eviction("worker-a", true).await.unwrap());
    assert!(evicted(a.list_heartbeats().await.unwrap()));
    a.heartbeat(&beat(2)).await.unwrap();
    let after = without_times(a.list_heartbeats().await.unwrap());
    assert_eq!(
        after,
        [WorkerHeartbeat {
            evicted: true,
            ..beat(2)
        }],
        "kept, the rest written"
    );
    assert!(b.request_eviction("worker-a", false).await.unwrap());
    a.heartbeat(&beat(3)).await.unwrap();
    assert!(!evicted(a.list_heartbeats().await.unwrap()));
    assert!(!b.request_eviction("nobody", true).await.unwrap());
    assert_eq!(a.list_heartbeats().await.unwrap().len(), 1, "no item made");
    // A heartbeat that loses its failover time drops it.
    a.heartbeat(&WorkerHeartbeat {
        failover_time: None,
        ..beat(4)
    })
    .await
    .unwrap();
    assert_eq!(a.list_heartbeats().await.unwrap()[0].failover_time, None);
}

/// Leases offered to a worker are on its heartbeat item (read alone or
/// with the others) until it clears them; its heartbeats keep them; a
/// worker without a heartbeat gets no item.
pub async fn offers_outlive_heartbeats_until_cleared(a: impl LeaseStore, b: impl LeaseStore) {
    let beat = |beat| WorkerHeartbeat {
        worker: "worker-a".into(),
        beat,
        draining: false,
        failover_time: Some(std::time::Duration::from_secs(10)),
        streams: None,
        written_at: None,
        evicted: false,
        stalled_shards: Default::default(),
        offered: Default::default(),
    };
    let keys =
        |keys: &[&str]| -> BTreeSet<String> { keys.iter().map(|k| (*k).to_owned()).collect() };
    assert_eq!(a.get_heartbeat("worker-a").await.unwrap(), None);
    assert!(!b.offer_leases("worker-a", &keys(&["s-1"])).await.unwrap());
    b.clear_offers("worker-a", &keys(&["s-1"])).await.unwrap();
    assert!(
        a.list_heartbeats().await.unwrap().is_empty(),
        "no item made"
    );

    a.heartbeat(&beat(1)).await.unwrap();
    let read = a.get_heartbeat("worker-a").await.unwrap().expect("has one");
    assert!(read.written_at.is_some());
    assert_eq!(without_times(vec![read]), [beat(1)]);
    assert!(
        b.offer_leases("worker-a", &keys(&["s-1", "s-2"]))
            .await
            .unwrap()
    );
    assert!(b.offer_leases("worker-a", &keys(&["s-3"])).await.unwrap());
    // Nothing to add is not an error.
    assert!(b.offer_leases("worker-a", &keys(&[])).await.unwrap());
    a.heartbeat(&beat(2)).await.unwrap();
    let offered = keys(&["s-1", "s-2", "s-3"]);
    assert_eq!(
        without_times(a.list_heartbeats().await.unwrap()),
        [WorkerHeartbeat {
            offered: offered.clone(),
            ..beat(2)
        }],
        "kept by the heartbeat, the rest written"
    );
    a.clear_offers("worker-a", &keys(&["s-1", "s-3", "s-9"]))
        .await
        .unwrap();
    a.clear_offers("worker-a", &keys(&[])).await.unwrap();
    let read = a.get_heartbeat("worker-a").await.unwrap().expect("has one");
    assert_eq!(read.offered, keys(&["s-2"]));
    assert_eq!(read.beat, 2);
}

/// A release to no one frees the lease, during a handoff too (the marker
/// goes with the owner), only for the token that processes it.
pub async fn a_release_to_no_one_ends_a_handoff_and_frees_the_lease(
    a: impl LeaseStore,
    b: impl LeaseStore,
) {
    let key = shard(1);
    let held_by_a = create_and_take(&a, &key, "worker-a").await;
    let token_a = held_by_a.token().unwrap();
    let asked = b.request_handoff(&held_by_a, "worker-b").await.unwrap();
    // The receiver's own token does not process the lease.
    let receivers = LeaseToken {
        worker: "worker-b".into(),
        ..token_a.clone()
    };
    assert!(
        b.release_lease_unowned(&receivers)
            .await
            .unwrap_err()
            .is_lease_lost()
    );
    a.release_lease_unowned(&token_a).await.unwrap();
    let freed = must_get(&b, &key).await;
    assert_eq!(
        (freed.owner.as_deref(), freed.checkpoint_owner.as_deref()),
        (None, None)
    );
    assert_eq!(freed.counter, asked.counter + 1);
    // The old token is fenced now.
    assert!(
        a.release_lease_unowned(&token_a)
            .await
            .unwrap_err()
            .is_lease_lost()
    );
    // Without a handoff, it frees the owner's lease as a plain release does.
    let taken = b.take_lease(&freed, "worker-b").await.unwrap();
    b.release_lease_unowned(&taken.token().unwrap())
        .await
        .unwrap();
    let freed = must_get(&a, &key).await;
    assert_eq!(freed.owner, None);
    assert_eq!(freed.counter, taken.counter + 1);
}

/// The suite against the in-memory store.
#[cfg(test)]
mod in_memory {
    use crate::{InMemoryLeaseStore, LeaseStore};

    /// Two clients of fresh in-memory tables.
    async fn tables() -> (InMemoryLeaseStore, InMemoryLeaseStore) {
        let a = InMemoryLeaseStore::new();
        a.ensure_tables().await.expect("create tables");
        let b = a.client();
        (a, b)
    }

    crate::lease_store_conformance!(tables);
}
