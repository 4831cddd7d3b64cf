//! Lease tables as the Java KCL leaves them: a stopped Java KCL 3.5 fleet's
//! single-table layout (leases beside worker metrics, the leader lock and
//! migration items), leases of 2.x and 3.0–3.4 without `entityType`, and a
//! multi-stream application's table. Leases are read with their
//! checkpoints, every other item is left exactly as it was. A Java
//! multi-stream table of two streams carries over to a multi-stream worker
//! with every checkpoint, and each kind of worker refuses the other kind's
//! table without writing.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use kcl_core::checkpoint::{Checkpointer, ExtendedSequenceNumber};
use kcl_core::{
    InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor, Scheduler,
    SchedulerBuilder, SchedulerError, StreamConfig,
};
use kcl_lease::{
    CheckpointUpdate, DynamoDbLeaseStore, InMemoryLeaseStore, LeaseStore, LeaseStoreError,
    SkippedKind,
};
use kcl_tests::java_kcl::{self, Item, assert_unchanged, key_of, put_items, stored_item};
use kcl_tests::stream::{create_stream, open_shards, put_to_shard, stream_identifier};
use kcl_tests::{LocalAws, unique_name};

/// The leases of a stopped Java KCL 3.5 fleet over two shards: one leased
/// by 3.5 and checkpointed mid-shard inside an aggregate, one written by
/// 2.x, unowned and finished, with a child.
fn java_leases() -> Vec<Item> {
    vec![
        java_kcl::lease_3_5(
            "shardId-000000000000",
            "49590338271490256608559692538361571095921575989136588898",
            3,
            Some("java-worker-1"),
        ),
        java_kcl::with_lineage(
            java_kcl::lease_2x("shardId-000000000001", "SHARD_END", 0, None),
            &[],
            &["shardId-000000000002"],
        ),
    ]
}

/// A lease that cannot be read (its counter as a caller might guess it:
/// 17, owner `java-worker`).
fn leases_not_ours() -> Vec<Item> {
    let mut unreadable = java_kcl::lease_3_5("shardId-000000000009", "TRIM_HORIZON", 0, None);
    unreadable.insert("leaseCounter".into(), AttributeValue::S("many".into()));
    vec![unreadable]
}

/// Tries every write on the leases of [`leases_not_ours`], as if a caller
/// had them: each fails and changes nothing.
async fn writes_nothing_to_leases_not_ours(store: &impl LeaseStore) {
    for key in ["shardId-000000000009"] {
        let mut guessed = kcl_lease::Lease::new(key, ExtendedSequenceNumber::TrimHorizon);
        guessed.owner = Some("java-worker".into());
        guessed.counter = 17;
        let outcome = store.take_lease(&guessed, "rust-worker").await;
        assert!(outcome.is_err(), "{key} taken: {outcome:?}");
        let outcome = store.request_handoff(&guessed, "rust-worker").await;
        assert!(outcome.is_err(), "{key} handed over: {outcome:?}");
        let token = guessed.token().unwrap();
        let outcome = store
            .checkpoint(
                &token,
                &CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
                &CheckpointUpdate::at(ExtendedSequenceNumber::ShardEnd),
            )
            .await;
        assert!(
            matches!(outcome, Err(LeaseStoreError::LeaseLost { .. })),
            "{key} checkpointed: {outcome:?}"
        );
        let outcome = store.release_lease(&token).await;
        assert!(outcome.is_err(), "{key} released: {outcome:?}");
        let outcome = store
            .delete_lease(&kcl_lease::Lease::new(
                key,
                ExtendedSequenceNumber::TrimHorizon,
            ))
            .await;
        assert!(
            matches!(outcome, Err(LeaseStoreError::InvalidItem { .. })),
            "{key} deleted: {outcome:?}"
        );
    }
}

/// What a store of the Java 3.5 table must list, and how it may use it.
async fn lists_the_leases_and_leaves_the_rest(store: &impl LeaseStore) {
    let listing = store.list_table().await.expect("list the table");
    let leases: BTreeSet<_> = listing.leases.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(
        leases,
        BTreeSet::from(["shardId-000000000000", "shardId-000000000001"])
    );
    let mid_shard = listing
        .leases
        .iter()
        .find(|l| l.key == "shardId-000000000000")
        .unwrap();
    assert_eq!(
        mid_shard.checkpoint,
        ExtendedSequenceNumber::record(
            "49590338271490256608559692538361571095921575989136588898",
            3
        )
        .unwrap()
    );
    assert_eq!(mid_shard.owner.as_deref(), Some("java-worker-1"));
    let finished = listing
        .leases
        .iter()
        .find(|l| l.key == "shardId-000000000001")
        .unwrap();
    assert_eq!(finished.checkpoint, ExtendedSequenceNumber::ShardEnd);
    assert_eq!(
        finished.child_shard_ids,
        BTreeSet::from(["shardId-000000000002".to_owned()])
    );

    let mut skipped: Vec<_> = listing
        .skipped
        .iter()
        .map(|item| (item.key.as_str(), item.kind.clone()))
        .collect();
    skipped.sort_by_key(|(key, _)| *key);
    let not_a_lease = |entity: &str| SkippedKind::NotALease {
        entity_type: Some(entity.into()),
    };
    let (not_ours, skipped): (Vec<_>, Vec<_>) = skipped
        .into_iter()
        .partition(|(key, _)| *key == "shardId-000000000009");
    assert_eq!(
        skipped,
        [
            ("Leader", not_a_lease("LEADER")),
            ("Migration3.0", not_a_lease("CLIENT_VERSION_MIGRATION")),
            ("TableMigration3.5", not_a_lease("TABLE_MIGRATION")),
            ("java-worker-1", not_a_lease("WORKER_METRIC_STATS")),
            ("java-worker-2", not_a_lease("WORKER_METRIC_STATS")),
            ("orders", not_a_lease("STREAM")),
        ]
    );
    let kinds: Vec<_> = not_ours.iter().map(|(_, kind)| kind.label()).collect();
    assert_eq!(kinds, ["malformed"]);

    // The leases are used as leases; the other items cannot be deleted or
    // read as leases, and a new lease is not created over one.
    let taken = store
        .take_lease(mid_shard, "rust-worker")
        .await
        .expect("take the Java lease");
    let next = ExtendedSequenceNumber::record(
        "49590338271490256608559692538361571095921575989136588898",
        4,
    )
    .unwrap();
    store
        .checkpoint(
            &taken.token().unwrap(),
            &CheckpointUpdate::at(taken.checkpoint.clone()),
            &CheckpointUpdate::at(next.clone()),
        )
        .await
        .expect("checkpoint the Java lease");
    let finished = store
        .get_lease("shardId-000000000001")
        .await
        .expect("read the finished lease")
        .expect("the finished lease");
    store
        .delete_lease(&finished)
        .await
        .expect("delete the finished lease");
    for key in ["Leader", "java-worker-1", "Migration3.0"] {
        assert!(
            matches!(
                store
                    .delete_lease(&kcl_lease::Lease::new(
                        key,
                        ExtendedSequenceNumber::TrimHorizon
                    ))
                    .await,
                Err(LeaseStoreError::InvalidItem { .. })
            ),
            "{key} deleted"
        );
        assert!(store.get_lease(key).await.is_err(), "{key} read as a lease");
        let over = kcl_lease::Lease::new(key, ExtendedSequenceNumber::TrimHorizon);
        assert!(!store.create_lease_if_absent(&over).await.unwrap(), "{key}");
    }
    writes_nothing_to_leases_not_ours(store).await;
    let after = store.list_table().await.unwrap();
    assert_eq!(after.skipped.len(), 7, "{after:?}");
    assert_eq!(after.leases.len(), 1);
    assert_eq!(after.leases[0].checkpoint, next);
}

#[tokio::test]
async fn a_java_3_5_table_lists_its_leases_and_leaves_everything_else_alone_in_memory() {
    let store = InMemoryLeaseStore::new();
    for item in java_leases()
        .iter()
        .chain(&java_kcl::java_3_5_items_other_than_leases())
        .chain(&leases_not_ours())
    {
        store.put_item(item);
    }
    lists_the_leases_and_leaves_the_rest(&store).await;
}

#[tokio::test]
async fn a_java_3_5_table_lists_its_leases_and_leaves_everything_else_alone_on_dynamodb() {
    let aws = LocalAws::connect();
    let table = unique_name("java-3-5");
    let store = DynamoDbLeaseStore::new(&aws.dynamodb(), &table);
    store.ensure_tables().await.unwrap();
    let mut others = java_kcl::java_3_5_items_other_than_leases();
    others.extend(leases_not_ours());
    put_items(&aws.dynamodb(), &table, &java_leases()).await;
    put_items(&aws.dynamodb(), &table, &others).await;

    lists_the_leases_and_leaves_the_rest(&store).await;
    assert_unchanged(&aws.dynamodb(), &table, &others).await;
    // The lease the Java KCL wrote keeps its own attributes.
    let lease = stored_item(&aws.dynamodb(), &table, "shardId-000000000000")
        .await
        .unwrap();
    assert_eq!(lease["throughputKBps"], AttributeValue::N("12.5".into()));
    assert_eq!(lease["entityType"], AttributeValue::S("LEASE".into()));
}

/// Keeps what a worker delivers: every record's shard and data, and every
/// initialization input.
#[derive(Clone, Default)]
struct Seen {
    records: Arc<Mutex<Vec<(String, String)>>>,
    /// Every record as (stream, shard, data).
    by_stream: Arc<Mutex<Vec<(String, String, String)>>>,
    inits: Arc<Mutex<Vec<InitializationInput>>>,
}

struct Recording {
    shard: String,
    seen: Seen,
}

#[async_trait]
impl RecordProcessor for Recording {
    async fn initialize(&mut self, input: InitializationInput) -> Result<(), ProcessorError> {
        self.seen.inits.lock().unwrap().push(input);
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput) -> Result<(), ProcessorError> {
        self.seen
            .records
            .lock()
            .unwrap()
            .extend(input.records.iter().map(|record| {
                (
                    self.shard.clone(),
                    String::from_utf8_lossy(&record.data).into_owned(),
                )
            }));
        self.seen
            .by_stream
            .lock()
            .unwrap()
            .extend(input.records.iter().map(|record| {
                (
                    input.stream_name.clone(),
                    self.shard.clone(),
                    String::from_utf8_lossy(&record.data).into_owned(),
                )
            }));
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, checkpointer: Checkpointer) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        Ok(())
    }
}

/// Runs the worker `builder` makes ("rust-worker", a 2 s failover time,
/// 500 ms rounds, a [`Recording`] processor writing to `seen`) until
/// `done`, then stops it cleanly. Fails after 60 s, or if the worker stops
/// first.
async fn run_until(
    builder: SchedulerBuilder,
    aws: &LocalAws,
    seen: &Seen,
    done: impl Fn() -> bool,
) {
    let scheduler = builder
        .worker_id("rust-worker")
        .failover_time(Duration::from_secs(2))
        .assignment_interval(Duration::from_millis(500))
        .aws_clients(&aws.kinesis(), &aws.dynamodb())
        .build({
            let seen = seen.clone();
            move |shard: &str| Recording {
                shard: shard.to_owned(),
                seen: seen.clone(),
            }
        })
        .expect("valid settings");
    let shutdown = scheduler.shutdown_handle();
    let task = tokio::spawn(scheduler.run());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "processed {:?}",
            seen.by_stream.lock().unwrap()
        );
        assert!(!task.is_finished(), "the worker stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.shutdown();
    task.await.unwrap().expect("the worker stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_resumes_a_java_3_5_table_after_each_checkpoint_and_changes_nothing_else() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let stream = unique_name("java-3-5-resume");
    let table = unique_name("java-3-5-resume-app");
    create_stream(&kinesis, &stream, 2).await;
    let shards = open_shards(&kinesis, &stream).await;

    // Ten records on each shard, their sequence numbers noted.
    let mut written: Vec<(String, String, String)> = Vec::new();
    for n in 0..20 {
        let (shard, start, _) = &shards[n % 2];
        let data = format!("record-{n}");
        let sequence = put_to_shard(&kinesis, &stream, shard, *start, &data).await;
        written.push((shard.clone(), sequence, data));
    }
    let on = |shard: &str| -> Vec<&(String, String, String)> {
        written.iter().filter(|(s, _, _)| s == shard).collect()
    };
    let (first, second) = (&shards[0], &shards[1]);
    // The Java fleet checkpointed the first shard after its fourth record
    // (leased, 3.5 layout) and the second after its seventh (2.x layout,
    // with a prepared checkpoint after its eighth).
    let first_checkpoint = &on(&first.0)[3].1;
    let second_checkpoint = &on(&second.0)[6].1;
    let second_pending = &on(&second.0)[7].1;
    let leases = vec![
        java_kcl::with_hash_range(
            java_kcl::lease_3_5(&first.0, first_checkpoint, 0, Some("java-worker-1")),
            first.1,
            first.2,
        ),
        java_kcl::with_pending(
            java_kcl::with_hash_range(
                java_kcl::lease_2x(&second.0, second_checkpoint, 0, None),
                second.1,
                second.2,
            ),
            second_pending,
            0,
            b"java state",
        ),
    ];
    let others = java_kcl::java_3_5_items_other_than_leases();
    let store = DynamoDbLeaseStore::new(&aws.dynamodb(), &table);
    store.ensure_tables().await.unwrap();
    put_items(&aws.dynamodb(), &table, &leases).await;
    put_items(&aws.dynamodb(), &table, &others).await;

    let seen = Seen::default();

    let expected: BTreeSet<(String, String)> = on(&first.0)[4..]
        .iter()
        .chain(&on(&second.0)[7..])
        .map(|(shard, _, data)| (shard.clone(), data.clone()))
        .collect();
    run_until(
        Scheduler::builder()
            .application_name(&table)
            .stream_name(&stream),
        &aws,
        &seen,
        || seen.records.lock().unwrap().len() >= expected.len(),
    )
    .await;

    let processed: Vec<_> = seen.records.lock().unwrap().clone();
    assert_eq!(
        processed.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "exactly the records after each checkpoint"
    );
    assert_eq!(processed.len(), expected.len(), "nothing twice");
    let inits = seen.inits.lock().unwrap().clone();
    let second_init = inits
        .iter()
        .find(|input| input.shard_id == second.0)
        .expect("the second shard was initialized");
    assert_eq!(
        second_init.pending_checkpoint,
        Some(ExtendedSequenceNumber::record(second_pending, 0).unwrap())
    );
    assert_eq!(
        second_init.pending_checkpoint_state.as_deref(),
        Some(&b"java state"[..])
    );
    assert_unchanged(&aws.dynamodb(), &table, &others).await;
    java_kcl::assert_a_java_worker_can_read_every_lease(&aws.dynamodb(), &table).await;
}

#[tokio::test]
async fn a_single_stream_worker_refuses_a_multi_stream_table_and_writes_nothing() {
    let leases = vec![
        java_kcl::multi_stream_lease(
            "123456789012",
            "orders",
            1_700_000_000,
            "shardId-000000000000",
            "TRIM_HORIZON",
        ),
        java_kcl::multi_stream_lease(
            "123456789012",
            "payments",
            1_700_000_001,
            "shardId-000000000000",
            "49590338271490256608559692538361571095921575989136588898",
        ),
        java_kcl::leader_lock("java-worker-1"),
    ];
    refuses_and_writes_nothing(leases, 2).await;
    // A multi-stream application that has created no lease yet, but keeps
    // its streams' information.
    let streams_only = vec![
        java_kcl::stream_info("123456789012:orders:1700000000"),
        java_kcl::leader_lock("java-worker-1"),
    ];
    refuses_and_writes_nothing(streams_only, 1).await;
}

/// Starts a single-stream worker on a lease table holding `items`, of which
/// `count` belong to a multi-stream application: it refuses, naming the
/// table, and the table is as it was.
async fn refuses_and_writes_nothing(items: Vec<Item>, count: usize) {
    let aws = LocalAws::connect();
    let table = unique_name("java-multi-stream-app");
    java_kcl::create_lease_table(&aws.dynamodb(), &table).await;
    put_items(&aws.dynamodb(), &table, &items).await;

    let scheduler = Scheduler::builder()
        .application_name(&table)
        .stream_name("orders")
        .worker_id("rust-worker")
        .aws_clients(&aws.kinesis(), &aws.dynamodb())
        .build(|shard: &str| Recording {
            shard: shard.to_owned(),
            seen: Seen::default(),
        })
        .expect("valid settings");
    let error = tokio::time::timeout(Duration::from_secs(30), scheduler.run())
        .await
        .expect("the worker refuses at once")
        .unwrap_err();
    match &error {
        SchedulerError::MultiStreamTable {
            table: named,
            count: found,
            ..
        } => {
            assert_eq!(named, &table);
            assert_eq!(*found, count);
        }
        other => panic!("expected MultiStreamTable, got {other}"),
    }
    assert!(error.to_string().contains(&table), "{error}");
    let scanned = aws
        .dynamodb()
        .scan()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    assert_eq!(scanned.len(), items.len());
    assert_unchanged(&aws.dynamodb(), &table, &items).await;
    // Nor was its workers table created.
    let workers = aws
        .dynamodb()
        .describe_table()
        .table_name(format!("{table}-Workers"))
        .send()
        .await;
    assert!(workers.is_err(), "the workers table was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_stream_worker_resumes_a_java_multi_stream_table_after_each_checkpoint() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let table = unique_name("java-multi-stream-app");
    let names = [unique_name("java-orders"), unique_name("java-refunds")];
    let mut written: Vec<(String, String, String, String)> = Vec::new();
    let mut leases = Vec::new();
    let mut others = java_kcl::java_3_5_items_other_than_leases();
    let mut expected = BTreeSet::new();
    for (index, stream) in names.iter().enumerate() {
        create_stream(&kinesis, stream, 2).await;
        let identifier = stream_identifier(&kinesis, stream).await;
        others.push(java_kcl::stream_info(&identifier));
        let (account, epoch) = {
            let parts: Vec<&str> = identifier.split(':').collect();
            (parts[0].to_owned(), parts[2].parse::<u64>().unwrap())
        };
        for (shard_index, (shard, start, end)) in
            open_shards(&kinesis, stream).await.into_iter().enumerate()
        {
            let mut sequences = Vec::new();
            for n in 0..6 {
                let data = format!("{stream}-{shard_index}-{n}");
                let sequence = put_to_shard(&kinesis, stream, &shard, start, &data).await;
                written.push((stream.clone(), shard.clone(), sequence.clone(), data));
                sequences.push(sequence);
            }
            // Each shard checkpointed after a different record: 1, 2, 3, 4.
            let after = index * 2 + shard_index;
            let lease = java_kcl::with_hash_range(
                java_kcl::multi_stream_lease(&account, stream, epoch, &shard, &sequences[after]),
                start,
                end,
            );
            leases.push(lease);
            for (stream, shard, _, data) in written.iter().rev().take(6 - after - 1) {
                expected.insert((stream.clone(), shard.clone(), data.clone()));
            }
        }
    }
    let store = DynamoDbLeaseStore::new(&aws.dynamodb(), &table);
    store.ensure_tables().await.unwrap();
    put_items(&aws.dynamodb(), &table, &leases).await;
    put_items(&aws.dynamodb(), &table, &others).await;

    let seen = Seen::default();
    run_until(
        Scheduler::builder()
            .application_name(&table)
            .stream(StreamConfig::new(&names[0]))
            .stream(StreamConfig::new(&names[1])),
        &aws,
        &seen,
        || seen.by_stream.lock().unwrap().len() >= expected.len(),
    )
    .await;

    let processed = seen.by_stream.lock().unwrap().clone();
    assert_eq!(
        processed.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "exactly the records after each checkpoint, named by their stream"
    );
    assert_eq!(processed.len(), expected.len(), "nothing twice");
    // No lease was added beside the Java ones, and nothing else changed.
    let scanned = aws
        .dynamodb()
        .scan()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    assert_eq!(scanned.len(), leases.len() + others.len());
    assert_unchanged(&aws.dynamodb(), &table, &others).await;
    for lease in &leases {
        let stored = stored_item(&aws.dynamodb(), &table, key_of(lease))
            .await
            .expect("the Java lease is still there");
        assert_eq!(stored["streamName"], lease["streamName"]);
        assert_eq!(stored["shardId"], lease["shardId"]);
        assert_ne!(stored["checkpoint"], lease["checkpoint"], "checkpointed on");
    }
    java_kcl::assert_a_java_worker_can_read_every_lease(&aws.dynamodb(), &table).await;
}

#[tokio::test]
async fn a_multi_stream_worker_refuses_a_single_stream_table_and_writes_nothing() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let stream = unique_name("java-single");
    create_stream(&kinesis, &stream, 1).await;
    let table = unique_name("java-single-app");
    java_kcl::create_lease_table(&aws.dynamodb(), &table).await;
    let items = java_leases();
    put_items(&aws.dynamodb(), &table, &items).await;

    let scheduler = Scheduler::builder()
        .application_name(&table)
        .stream(StreamConfig::new(&stream))
        .worker_id("rust-worker")
        .aws_clients(&kinesis, &aws.dynamodb())
        .build(|shard: &str| Recording {
            shard: shard.to_owned(),
            seen: Seen::default(),
        })
        .expect("valid settings");
    let error = tokio::time::timeout(Duration::from_secs(30), scheduler.run())
        .await
        .expect("the worker refuses at once")
        .unwrap_err();
    assert!(
        matches!(&error, SchedulerError::SingleStreamTable { count: 2, .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&table), "{error}");
    assert_unchanged(&aws.dynamodb(), &table, &items).await;
}

#[tokio::test]
async fn multi_stream_leases_this_project_writes_are_read_by_the_java_kcl_as_written() {
    let aws = LocalAws::connect();
    let table = unique_name("multi-stream-back-to-java");
    let store = DynamoDbLeaseStore::new(&aws.dynamodb(), &table);
    store.ensure_tables().await.unwrap();
    let orders = kcl_lease::StreamIdentifier::parse("123456789012:orders:1700000000").unwrap();
    // A parent read to its end with two children, one of them started
    // and mid-handoff, as a multi-stream worker leaves them.
    let mut parent = kcl_lease::Lease::for_shard(
        Some(&orders),
        "shardId-000000000000",
        ExtendedSequenceNumber::TrimHorizon,
    );
    parent.hash_key_range = Some(kcl_lease::HashKeyRange { start: 0, end: 99 });
    store.create_lease_if_absent(&parent).await.unwrap();
    let parent = store.take_lease(&parent, "rust-worker").await.unwrap();
    let children = ["shardId-000000000001", "shardId-000000000002"];
    store
        .record_child_shards(
            &parent.token().unwrap(),
            &children.iter().map(|c| (*c).to_owned()).collect(),
        )
        .await
        .unwrap();
    store
        .checkpoint(
            &parent.token().unwrap(),
            &CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
            &CheckpointUpdate::at(ExtendedSequenceNumber::ShardEnd),
        )
        .await
        .unwrap();
    for (n, child) in children.iter().enumerate() {
        let mut lease =
            kcl_lease::Lease::for_shard(Some(&orders), child, ExtendedSequenceNumber::TrimHorizon);
        lease.parent_shard_ids = [parent.shard_id().to_owned()].into();
        let start = 50 * n as u128;
        lease.hash_key_range = Some(kcl_lease::HashKeyRange {
            start,
            end: start + 49,
        });
        store.create_lease_if_absent(&lease).await.unwrap();
    }
    let child = store
        .get_lease(&orders.lease_key(children[0]))
        .await
        .unwrap()
        .unwrap();
    let child = store.take_lease(&child, "rust-worker").await.unwrap();
    let at = ExtendedSequenceNumber::record(
        "49590338271490256608559692538361571095921575989136588898",
        2,
    )
    .unwrap();
    store
        .checkpoint(
            &child.token().unwrap(),
            &CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
            &CheckpointUpdate::at(at),
        )
        .await
        .unwrap();
    store
        .request_handoff(&child, "rust-worker-2")
        .await
        .unwrap();

    java_kcl::assert_a_java_worker_can_read_every_lease(&aws.dynamodb(), &table).await;
    let stored = stored_item(&aws.dynamodb(), &table, &orders.lease_key(children[0]))
        .await
        .unwrap();
    assert_eq!(
        stored["streamName"],
        AttributeValue::S("123456789012:orders:1700000000".into())
    );
    assert_eq!(stored["shardId"], AttributeValue::S(children[0].into()));
    assert_eq!(
        stored["parentShardId"],
        AttributeValue::Ss(vec!["shardId-000000000000".into()])
    );
    assert_eq!(stored["entityType"], AttributeValue::S("LEASE".into()));
}

#[tokio::test]
async fn java_multi_stream_leases_read_the_same_in_memory_and_on_dynamodb() {
    let aws = LocalAws::connect();
    let table = unique_name("java-multi-stream-read");
    let dynamodb = DynamoDbLeaseStore::new(&aws.dynamodb(), &table);
    dynamodb.ensure_tables().await.unwrap();
    let memory = InMemoryLeaseStore::new();
    let items = vec![
        java_kcl::with_hash_range(
            java_kcl::multi_stream_lease(
                "123456789012",
                "orders",
                1_700_000_000,
                "shardId-000000000000",
                "49590338271490256608559692538361571095921575989136588898",
            ),
            0,
            99,
        ),
        java_kcl::with_lineage(
            java_kcl::multi_stream_lease(
                "123456789012",
                "refunds",
                1_700_000_001,
                "shardId-000000000003",
                "TRIM_HORIZON",
            ),
            &["shardId-000000000001", "shardId-000000000002"],
            &[],
        ),
        java_kcl::stream_info("123456789012:orders:1700000000"),
    ];
    put_items(&aws.dynamodb(), &table, &items).await;
    for item in &items {
        memory.put_item(item);
    }
    let mut on_dynamodb = dynamodb.list_table().await.unwrap();
    let mut in_memory = memory.list_table().await.unwrap();
    for listing in [&mut on_dynamodb, &mut in_memory] {
        listing.leases.sort_by(|a, b| a.key.cmp(&b.key));
    }
    assert_eq!(on_dynamodb.leases, in_memory.leases);
    assert_eq!(on_dynamodb.skipped, in_memory.skipped);
    let [orders, refunds] = on_dynamodb.leases.as_slice() else {
        panic!("{on_dynamodb:?}");
    };
    assert_eq!(orders.stream.as_ref().unwrap().stream_name, "orders");
    assert_eq!(orders.shard_id(), "shardId-000000000000");
    assert_eq!(
        refunds.stream.as_ref().unwrap().creation_epoch,
        1_700_000_001
    );
    assert_eq!(refunds.shard_id(), "shardId-000000000003");
    assert_eq!(
        refunds.parent_shard_ids,
        BTreeSet::from([
            "shardId-000000000001".to_owned(),
            "shardId-000000000002".to_owned()
        ])
    );
    assert_eq!(on_dynamodb.skipped.len(), 1, "the stream information");
    assert!(on_dynamodb.skipped[0].is_multi_stream_information());
}
