//! Faults injected between the clients and the local stack by the fault
//! proxy: each is classified as the worker needs (retry throttling and server
//! errors, give up at once on refusals), and a write held back by a
//! partition and delivered late fails without effect.

use std::time::Duration;

use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_core::kinesis::{Kinesis, KinesisError, SdkKinesis};
use kcl_lease::backoff::BackoffConfig;
use kcl_lease::{CheckpointUpdate, DynamoDbLeaseStore, Lease, LeaseStore, LeaseStoreError};
use kcl_tests::fault_proxy::{Fault, FaultProxy};
use kcl_tests::stream::create_stream;
use kcl_tests::{LocalAws, unique_name};

/// The local stack, reached through one proxy per service.
async fn proxied() -> (LocalAws, LocalAws, FaultProxy, FaultProxy) {
    let aws = LocalAws::connect();
    let kinesis = FaultProxy::start(&aws.kinesis_endpoint).await;
    let dynamodb = FaultProxy::start(&aws.dynamodb_endpoint).await;
    let mut through = aws.clone();
    through.kinesis_endpoint = kinesis.endpoint();
    through.dynamodb_endpoint = dynamodb.endpoint();
    (aws, through, kinesis, dynamodb)
}

/// Quick retries, so exhausting them takes well under a second.
fn quick_backoff() -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        multiplier: 2.0,
        max_attempts: Some(3),
    }
}

#[tokio::test]
async fn lease_table_faults_are_retried_or_refused_as_their_kind_requires() {
    let (_, through, _, proxy) = proxied().await;
    let table = unique_name("faults-leases");
    let store = DynamoDbLeaseStore::new(&through.dynamodb(), &table).with_backoff(quick_backoff());
    store
        .ensure_tables()
        .await
        .expect("tables through the proxy");
    assert!(store.list_leases().await.unwrap().is_empty());

    for (fault, outcome) in [
        (Fault::Throttle, "throttled"),
        (Fault::ServerError, "server_error"),
        (Fault::DropConnections, "dropped"),
    ] {
        proxy.set(fault.clone());
        let before = proxy.requests().get(&("Scan".to_owned(), outcome)).copied();
        match store.list_leases().await {
            Err(LeaseStoreError::Unavailable { attempts, .. }) => assert_eq!(attempts, 3),
            other => panic!("{fault:?}: expected retries then Unavailable, got {other:?}"),
        }
        let after = proxy.requests()[&("Scan".to_owned(), outcome)];
        assert_eq!(
            after - before.unwrap_or(0),
            3,
            "{fault:?}: one request per attempt"
        );
    }

    proxy.set(Fault::AccessDenied);
    match store.list_leases().await {
        Err(LeaseStoreError::Refused { code, .. }) => assert_eq!(code, "AccessDeniedException"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        proxy.requests()[&("Scan".to_owned(), "access_denied")],
        1,
        "a refusal is not retried"
    );

    proxy.set(Fault::Latency(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    assert!(store.list_leases().await.unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
    proxy.set(Fault::None);
    assert!(store.list_leases().await.unwrap().is_empty());
}

#[tokio::test]
async fn kinesis_faults_are_classified_for_the_fetchers() {
    let (aws, through, proxy, _) = proxied().await;
    let stream = unique_name("faults-stream");
    create_stream(&aws.kinesis(), &stream, 1).await;
    let kinesis = SdkKinesis::new(&through.kinesis());
    assert_eq!(kinesis.list_shards(&stream).await.unwrap().len(), 1);

    proxy.set(Fault::Throttle);
    let error = kinesis.list_shards(&stream).await.unwrap_err();
    assert!(matches!(error, KinesisError::Throttled { .. }), "{error:?}");
    proxy.set(Fault::ServerError);
    let error = kinesis.list_shards(&stream).await.unwrap_err();
    assert!(matches!(error, KinesisError::Transient { .. }), "{error:?}");
    proxy.set(Fault::DropConnections);
    let error = kinesis.list_shards(&stream).await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    proxy.set(Fault::AccessDenied);
    let error = kinesis.list_shards(&stream).await.unwrap_err();
    match &error {
        KinesisError::Refused { code, .. } => assert_eq!(code, "AccessDeniedException"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!error.is_retryable());
    proxy.set(Fault::None);
    assert_eq!(kinesis.list_shards(&stream).await.unwrap().len(), 1);
}

/// A checkpoint that took effect but was answered with an error is retried;
/// the retry finds its own checkpoint stored and succeeds, rather than
/// taking the lease for lost.
#[tokio::test]
async fn a_checkpoint_applied_but_answered_with_an_error_is_not_taken_for_a_lost_lease() {
    let (aws, through, _, proxy) = proxied().await;
    let table = unique_name("faults-applied");
    let direct = DynamoDbLeaseStore::new(&aws.dynamodb(), &table);
    direct.ensure_tables().await.unwrap();
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    direct.create_lease_if_absent(&lease).await.unwrap();
    let taken = direct.take_lease(&lease, "worker").await.unwrap();
    let token = taken.token().expect("a token");
    let store = DynamoDbLeaseStore::new(&through.dynamodb(), &table).with_backoff(quick_backoff());
    let at = ExtendedSequenceNumber::record("100", 0).unwrap();

    proxy.set_once(Fault::AppliedThenServerError);
    let stored = store
        .checkpoint(
            &token,
            &CheckpointUpdate::at(taken.checkpoint.clone()),
            &CheckpointUpdate::at(at.clone()),
        )
        .await
        .unwrap();
    assert_eq!(stored, CheckpointUpdate::at(at.clone()));
    let applied = proxy
        .requests()
        .get(&("UpdateItem".to_owned(), "applied_then_server_error"))
        .copied();
    assert_eq!(applied, Some(1), "{:?}", proxy.requests());
    let stored = direct.get_lease(&lease.key).await.unwrap().unwrap();
    assert_eq!(stored.checkpoint, at);
}

/// Sends `update` through the proxy, which holds it (the proxy must be
/// stalled), and gives up on it as a timed-out attempt does: the request
/// stays in the network, to be delivered when the stall ends.
async fn attempt_held_in_the_network(
    proxy: &FaultProxy,
    through: &LocalAws,
    table: &str,
    token: &kcl_lease::LeaseToken,
    previous: CheckpointUpdate,
    update: CheckpointUpdate,
) {
    let stalled = || {
        proxy
            .requests()
            .get(&("UpdateItem".to_owned(), "stalled"))
            .copied()
            .unwrap_or(0)
    };
    let before = stalled();
    let store = DynamoDbLeaseStore::new(&through.dynamodb(), table);
    let token = token.clone();
    let attempt = tokio::spawn(async move { store.checkpoint(&token, &previous, &update).await });
    while stalled() == before {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    attempt.abort();
}

/// Ends the stall and waits until the held requests have been delivered and
/// answered; returns them.
async fn deliver_late(
    proxy: &FaultProxy,
    count: usize,
) -> Vec<kcl_tests::fault_proxy::LateRequest> {
    proxy.set(Fault::None);
    tokio::time::timeout(Duration::from_secs(10), async {
        while proxy.late_requests().len() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("held requests delivered");
    proxy.late_requests()
}

/// A request of an earlier checkpoint that the network delivers late, after
/// the same worker's retry and a later checkpoint took effect, changes
/// nothing: the checkpoint never moves back.
#[tokio::test]
async fn an_earlier_checkpoint_delivered_late_does_not_move_the_checkpoint_back() {
    let (aws, through, _, proxy) = proxied().await;
    let table = unique_name("faults-late-own");
    let direct = DynamoDbLeaseStore::new(&aws.dynamodb(), &table);
    direct.ensure_tables().await.unwrap();
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    direct.create_lease_if_absent(&lease).await.unwrap();
    let taken = direct.take_lease(&lease, "worker").await.unwrap();
    let token = taken.token().expect("a token");
    let at = |n: &str| ExtendedSequenceNumber::record(n, 0).unwrap();
    let start = CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon);

    // The first attempt of checkpoint 100 hangs in the network.
    proxy.set(Fault::Stall);
    let first = CheckpointUpdate::at(at("100"));
    attempt_held_in_the_network(
        &proxy,
        &through,
        &table,
        &token,
        start.clone(),
        first.clone(),
    )
    .await;

    // Its retry lands on another connection, and processing goes on to 200.
    let retried = direct.checkpoint(&token, &start, &first).await.unwrap();
    direct
        .checkpoint(&token, &retried, &CheckpointUpdate::at(at("200")))
        .await
        .unwrap();

    // The partition heals and the first attempt arrives.
    let late_requests = deliver_late(&proxy, 1).await;
    assert_eq!(late_requests.len(), 1, "{late_requests:?}");
    assert_eq!(
        late_requests[0].error_type.as_deref(),
        Some("ConditionalCheckFailedException")
    );
    let stored = direct.get_lease(&lease.key).await.unwrap().unwrap();
    assert_eq!(stored.checkpoint, at("200"));
}

/// The same for a prepared checkpoint: a first attempt of an earlier
/// prepare, delivered late, does not replace the pending checkpoint and
/// state prepared after it.
#[tokio::test]
async fn an_earlier_prepared_checkpoint_delivered_late_does_not_replace_a_later_one() {
    let (aws, through, _, proxy) = proxied().await;
    let table = unique_name("faults-late-prepare");
    let direct = DynamoDbLeaseStore::new(&aws.dynamodb(), &table);
    direct.ensure_tables().await.unwrap();
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    direct.create_lease_if_absent(&lease).await.unwrap();
    let taken = direct.take_lease(&lease, "worker").await.unwrap();
    let token = taken.token().expect("a token");
    let prepare = |n: &str, state: &[u8]| CheckpointUpdate {
        checkpoint: ExtendedSequenceNumber::TrimHorizon,
        pending_checkpoint: Some(ExtendedSequenceNumber::record(n, 0).unwrap()),
        pending_checkpoint_state: Some(state.to_vec()),
    };
    let start = CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon);

    proxy.set(Fault::Stall);
    let first = prepare("100", b"first");
    attempt_held_in_the_network(
        &proxy,
        &through,
        &table,
        &token,
        start.clone(),
        first.clone(),
    )
    .await;
    direct.checkpoint(&token, &start, &first).await.unwrap();
    let second = prepare("200", b"second");
    direct.checkpoint(&token, &first, &second).await.unwrap();

    let late_requests = deliver_late(&proxy, 1).await;
    assert_eq!(
        late_requests[0].error_type.as_deref(),
        Some("ConditionalCheckFailedException"),
        "{late_requests:?}"
    );
    let stored = direct.get_lease(&lease.key).await.unwrap().unwrap();
    assert_eq!(stored.pending_checkpoint, second.pending_checkpoint);
    assert_eq!(
        stored.pending_checkpoint_state,
        second.pending_checkpoint_state
    );
}

/// An item whose sub-sequence numbers and handoff marker are stored as
/// DynamoDB NULL (read as 0 and as absent) can be checkpointed, handed over
/// and released; one whose owner is NULL (read as unowned) can be taken.
#[tokio::test]
async fn a_lease_with_null_attributes_can_be_checkpointed_handed_over_and_taken() {
    let aws = LocalAws::connect();
    let table = unique_name("faults-null-sub");
    let store = DynamoDbLeaseStore::new(&aws.dynamodb(), &table);
    store.ensure_tables().await.unwrap();
    let key = "shardId-000000000000";
    let null = aws_sdk_dynamodb::types::AttributeValue::Null(true);
    aws.dynamodb()
        .put_item()
        .table_name(&table)
        .item(
            "leaseKey",
            aws_sdk_dynamodb::types::AttributeValue::S(key.into()),
        )
        .item(
            "leaseCounter",
            aws_sdk_dynamodb::types::AttributeValue::N("1".into()),
        )
        .item(
            "leaseOwner",
            aws_sdk_dynamodb::types::AttributeValue::S("worker".into()),
        )
        .item(
            "checkpoint",
            aws_sdk_dynamodb::types::AttributeValue::S("TRIM_HORIZON".into()),
        )
        .item("checkpointSubSequenceNumber", null.clone())
        .item("pendingCheckpoint", null.clone())
        .item("checkpointOwner", null.clone())
        .item(
            "ownerSwitchesSinceCheckpoint",
            aws_sdk_dynamodb::types::AttributeValue::N("0".into()),
        )
        .send()
        .await
        .unwrap();
    let lease = store.get_lease(key).await.unwrap().unwrap();
    assert_eq!(lease.checkpoint, ExtendedSequenceNumber::TrimHorizon);
    let at = ExtendedSequenceNumber::record("100", 0).unwrap();
    let stored = store
        .checkpoint(
            &lease.token().unwrap(),
            &CheckpointUpdate::at(lease.checkpoint.clone()),
            &CheckpointUpdate::at(at.clone()),
        )
        .await
        .unwrap();
    assert_eq!(stored, CheckpointUpdate::at(at.clone()));
    let requests = store.request_counts();
    assert_eq!(requests.get("UpdateItem").copied(), Some(1), "{requests:?}");
    let lease = store.get_lease(key).await.unwrap().unwrap();
    let handing = store.request_handoff(&lease, "receiver").await.unwrap();
    store.release_lease(&lease.token().unwrap()).await.unwrap();
    let received = store.get_lease(key).await.unwrap().unwrap();
    assert_eq!(received.owner.as_deref(), Some("receiver"));
    assert_eq!(received.counter, handing.counter + 1);

    // A lease whose owner and handoff marker are NULL is unowned: it can be
    // taken, and the taker can checkpoint it and give it up.
    let unowned = "shardId-000000000001";
    aws.dynamodb()
        .put_item()
        .table_name(&table)
        .item(
            "leaseKey",
            aws_sdk_dynamodb::types::AttributeValue::S(unowned.into()),
        )
        .item(
            "leaseCounter",
            aws_sdk_dynamodb::types::AttributeValue::N("4".into()),
        )
        .item(
            "ownerSwitchesSinceCheckpoint",
            aws_sdk_dynamodb::types::AttributeValue::N("0".into()),
        )
        .item("leaseOwner", null.clone())
        .item("checkpointOwner", null.clone())
        .item(
            "checkpoint",
            aws_sdk_dynamodb::types::AttributeValue::S("TRIM_HORIZON".into()),
        )
        .send()
        .await
        .unwrap();
    let seen = store.get_lease(unowned).await.unwrap().unwrap();
    assert_eq!(seen.owner, None);
    let taken = store.take_lease(&seen, "worker").await.unwrap();
    store
        .checkpoint(
            &taken.token().unwrap(),
            &CheckpointUpdate::at(taken.checkpoint.clone()),
            &CheckpointUpdate::at(at.clone()),
        )
        .await
        .unwrap();
    store.release_lease(&taken.token().unwrap()).await.unwrap();
    let released = store.get_lease(unowned).await.unwrap().unwrap();
    assert_eq!((released.owner, released.checkpoint), (None, at));
}

#[tokio::test]
async fn a_checkpoint_held_back_by_a_partition_and_delivered_late_fails_without_effect() {
    let (aws, through, _, proxy) = proxied().await;
    let table = unique_name("faults-late");
    let direct = DynamoDbLeaseStore::new(&aws.dynamodb(), &table);
    direct.ensure_tables().await.unwrap();
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    direct.create_lease_if_absent(&lease).await.unwrap();
    let cut_off =
        DynamoDbLeaseStore::new(&through.dynamodb(), &table).with_backoff(BackoffConfig {
            max_attempts: Some(1),
            ..quick_backoff()
        });
    let taken = cut_off.take_lease(&lease, "cut-off").await.unwrap();
    let token = taken.token().expect("a token");

    // The worker is cut off; its checkpoint hangs in the network.
    proxy.set(Fault::Stall);
    let late = tokio::spawn(async move {
        let update = CheckpointUpdate::at(ExtendedSequenceNumber::Latest);
        cut_off
            .checkpoint(
                &token,
                &CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
                &update,
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile another worker takes the lease over and checkpoints.
    let seen = direct.get_lease(&lease.key).await.unwrap().unwrap();
    let other = direct.take_lease(&seen, "other").await.unwrap();
    let at = ExtendedSequenceNumber::record(
        "49590338271490256608559692538361571095921575989136588898",
        0,
    )
    .unwrap();
    direct
        .checkpoint(
            &other.token().unwrap(),
            &CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
            &CheckpointUpdate::at(at.clone()),
        )
        .await
        .unwrap();

    // The partition heals and the held write arrives.
    proxy.set(Fault::None);
    let result = late.await.unwrap();
    assert!(
        matches!(result, Err(ref e) if e.is_lease_lost()),
        "{result:?}"
    );
    let late_requests = proxy.late_requests();
    assert_eq!(late_requests.len(), 1, "{late_requests:?}");
    assert_eq!(late_requests[0].operation, "UpdateItem");
    assert_eq!(
        late_requests[0].error_type.as_deref(),
        Some("ConditionalCheckFailedException")
    );
    let stored = direct.get_lease(&lease.key).await.unwrap().unwrap();
    assert_eq!(stored.checkpoint, at);
    assert_eq!(stored.owner.as_deref(), Some("other"));
}
