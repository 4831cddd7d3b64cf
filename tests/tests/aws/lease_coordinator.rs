//! Several lease coordinators on DynamoDB Local: they share the leases
//! evenly, and when one crashes the others take its leases after the
//! failover time, fencing its writes.

use std::sync::Arc;
use std::time::Duration;

use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_lease::{
    CheckpointUpdate, CoordinatorHandle, DynamoDbLeaseStore, Lease, LeaseConfig, LeaseCoordinator,
    LeaseStore, LeaseToken,
};
use kcl_tests::{LocalAws, unique_name};

type Handle = CoordinatorHandle<DynamoDbLeaseStore>;

fn start(store: &Arc<DynamoDbLeaseStore>, worker: &str) -> (tokio::task::JoinHandle<()>, Handle) {
    let mut config = LeaseConfig::new(worker).with_failover_time(Duration::from_secs(2));
    config.assignment_interval = Duration::from_millis(500);
    let (coordinator, handle) = LeaseCoordinator::new(Arc::clone(store), config).unwrap();
    // Stand-in for the scheduler: hand over whatever is asked for.
    let releaser = handle.clone();
    tokio::spawn(async move {
        let mut held = releaser.held();
        while held.changed().await.is_ok() {
            for token in releaser.handoffs_requested() {
                let _ = releaser.release(&token).await;
            }
        }
    });
    let task = tokio::spawn(async move {
        coordinator.run(std::future::pending()).await.unwrap();
    });
    (task, handle)
}

/// Waits (up to 30 s) until the held counts are as `expected`.
async fn wait_for_counts(handles: &[&Handle], expected: &[usize]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts: Vec<usize> = handles.iter().map(|h| h.held().borrow().len()).collect();
        if counts == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "held {counts:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn coordinators_share_leases_and_take_over_from_a_crashed_one() {
    let client = LocalAws::connect().dynamodb();
    let table = unique_name("coordinators");
    let store = Arc::new(DynamoDbLeaseStore::new(&client, &table));
    store.ensure_tables().await.unwrap();
    for n in 0..12 {
        let lease = Lease::new(
            format!("shardId-{n:012}"),
            ExtendedSequenceNumber::TrimHorizon,
        );
        store.create_lease_if_absent(&lease).await.unwrap();
    }

    let (task_a, a) = start(&store, "worker-a");
    let (_task_b, b) = start(&store, "worker-b");
    let (_task_c, c) = start(&store, "worker-c");
    wait_for_counts(&[&a, &b, &c], &[4, 4, 4]).await;

    // worker-a crashes: its task stops, it never releases or says goodbye.
    let a_tokens: Vec<LeaseToken> = a
        .held()
        .borrow()
        .values()
        .map(|h| h.token.clone())
        .collect();
    task_a.abort();
    wait_for_counts(&[&b, &c], &[6, 6]).await;

    // A late checkpoint from the crashed worker changes nothing.
    for token in &a_tokens {
        let late = store
            .checkpoint(
                token,
                &CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
                &CheckpointUpdate::at(ExtendedSequenceNumber::ShardEnd),
            )
            .await;
        assert!(late.unwrap_err().is_lease_lost());
        let lease = store.get_lease(&token.key).await.unwrap().unwrap();
        assert_eq!(lease.checkpoint, ExtendedSequenceNumber::TrimHorizon);
    }
}
