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
        .checkpoint(&token, &taken.checkpoint, &CheckpointUpdate::at(at.clone()))
        .await
        .unwrap();
    assert_eq!(stored, at);
    let applied = proxy
        .requests()
        .get(&("UpdateItem".to_owned(), "applied_then_server_error"))
        .copied();
    assert_eq!(applied, Some(1), "{:?}", proxy.requests());
    let stored = direct.get_lease(&lease.key).await.unwrap().unwrap();
    assert_eq!(stored.checkpoint, at);
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

    // The first attempt of checkpoint 100 hangs in the network.
    proxy.set(Fault::Stall);
    let held_back = DynamoDbLeaseStore::new(&through.dynamodb(), &table);
    let first_attempt = {
        let token = token.clone();
        tokio::spawn(async move {
            let update = CheckpointUpdate::at(at("100"));
            held_back
                .checkpoint(&token, &ExtendedSequenceNumber::TrimHorizon, &update)
                .await
        })
    };
    let stalled = || {
        proxy
            .requests()
            .get(&("UpdateItem".to_owned(), "stalled"))
            .copied()
    };
    while stalled().is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Its retry lands on another connection, and processing goes on to 200.
    let retried = direct
        .checkpoint(
            &token,
            &ExtendedSequenceNumber::TrimHorizon,
            &CheckpointUpdate::at(at("100")),
        )
        .await
        .unwrap();
    direct
        .checkpoint(&token, &retried, &CheckpointUpdate::at(at("200")))
        .await
        .unwrap();

    // The partition heals and the first attempt arrives.
    proxy.set(Fault::None);
    let answer = first_attempt.await.unwrap().unwrap();
    assert_eq!(answer, at("200"), "the checkpoint stored");
    let late_requests = proxy.late_requests();
    assert_eq!(late_requests.len(), 1, "{late_requests:?}");
    assert_eq!(
        late_requests[0].error_type.as_deref(),
        Some("ConditionalCheckFailedException")
    );
    let stored = direct.get_lease(&lease.key).await.unwrap().unwrap();
    assert_eq!(stored.checkpoint, at("200"));
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
            .checkpoint(&token, &ExtendedSequenceNumber::TrimHorizon, &update)
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
            &ExtendedSequenceNumber::TrimHorizon,
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
