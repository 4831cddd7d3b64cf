//! Lease-table items in the exact layouts the Java KCL writes them, for the
//! migration tests: leases as 2.x and 3.0–3.4 write them (no `entityType`)
//! and as 3.5 writes them (`entityType` `LEASE`, `throughputKBps`), Java
//! multi-stream leases (key `account:stream:epoch:shardId`, with
//! `streamName` and `shardId`), and the other items the Java KCL 3.5 keeps
//! in the lease table in its single-table layout: worker metrics, the
//! leader lock, and the client-version and table migration states.
//!
//! Layouts as the Java KCL's serializers write them
//! (`DynamoDBLeaseSerializer`, `DynamoDBMultiStreamLeaseSerializer`,
//! `WorkerMetricStats`, `CoordinatorState`, `MigrationState`,
//! `TableMigrationState`, and the DynamoDB lock client's lock item).

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn item(attributes: Vec<(&str, AttributeValue)>) -> Item {
    attributes
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// A lease as the Java KCL 2.x and 3.0–3.4 write it: no `entityType`.
/// Unowned when `owner` is `None`.
pub fn lease_2x(shard_id: &str, checkpoint: &str, sub_sequence: u64, owner: Option<&str>) -> Item {
    let mut lease = item(vec![
        ("leaseKey", s(shard_id)),
        ("leaseCounter", n(17)),
        ("ownerSwitchesSinceCheckpoint", n(0)),
        ("checkpoint", s(checkpoint)),
        ("checkpointSubSequenceNumber", n(sub_sequence)),
    ]);
    if let Some(owner) = owner {
        lease.insert("leaseOwner".into(), s(owner));
    }
    lease
}

/// A lease as the Java KCL 3.5 writes it: `entityType` `LEASE` and the
/// shard's measured throughput.
pub fn lease_3_5(shard_id: &str, checkpoint: &str, sub_sequence: u64, owner: Option<&str>) -> Item {
    let mut lease = lease_2x(shard_id, checkpoint, sub_sequence, owner);
    lease.insert("entityType".into(), s("LEASE"));
    lease.insert("throughputKBps".into(), n("12.5"));
    lease
}

/// Adds the shard's hash key range to a lease item, as the Java KCL's
/// shard syncer records it.
pub fn with_hash_range(mut lease: Item, start: u128, end: u128) -> Item {
    lease.insert("startingHashKey".into(), s(&start.to_string()));
    lease.insert("endingHashKey".into(), s(&end.to_string()));
    lease
}

/// Adds a prepared checkpoint with its state to a lease item.
pub fn with_pending(mut lease: Item, pending: &str, sub_sequence: u64, state: &[u8]) -> Item {
    lease.insert("pendingCheckpoint".into(), s(pending));
    lease.insert("pendingCheckpointSubSequenceNumber".into(), n(sub_sequence));
    lease.insert(
        "pendingCheckpointState".into(),
        AttributeValue::B(Blob::new(state.to_vec())),
    );
    lease
}

/// Adds a parent and children to a lease item (a shard of a split or a
/// merge).
pub fn with_lineage(mut lease: Item, parents: &[&str], children: &[&str]) -> Item {
    let set = |ids: &[&str]| AttributeValue::Ss(ids.iter().map(|id| (*id).to_owned()).collect());
    if !parents.is_empty() {
        lease.insert("parentShardId".into(), set(parents));
    }
    if !children.is_empty() {
        lease.insert("childShardIds".into(), set(children));
    }
    lease
}

/// A lease of a Java multi-stream application, as 3.5 writes it: keyed
/// `account:stream:epoch:shardId`, with the stream identifier in
/// `streamName` and the shard in `shardId`.
pub fn multi_stream_lease(
    account: &str,
    stream: &str,
    epoch: u64,
    shard_id: &str,
    checkpoint: &str,
) -> Item {
    let stream_id = format!("{account}:{stream}:{epoch}");
    let mut lease = lease_3_5(
        &format!("{stream_id}:{shard_id}"),
        checkpoint,
        0,
        Some("java-worker"),
    );
    lease.insert("streamName".into(), s(&stream_id));
    lease.insert("shardId".into(), s(shard_id));
    lease
}

/// A worker-metrics item of the Java KCL 3.5 (single-table layout).
pub fn worker_metrics(worker: &str) -> Item {
    let list = |values: &[&str]| AttributeValue::L(values.iter().map(n).collect());
    item(vec![
        ("leaseKey", s(worker)),
        ("entityType", s("WORKER_METRIC_STATS")),
        ("lut", n(1_752_500_000)),
        (
            "sts",
            AttributeValue::M([("C".to_owned(), list(&["10.5", "12.0"]))].into()),
        ),
        (
            "opr",
            AttributeValue::M([("C".to_owned(), list(&["100"]))].into()),
        ),
        ("sup", n(1)),
        ("slu", n(1_752_500_000)),
    ])
}

/// The leader lock of a Java KCL 3.5 fleet, as the DynamoDB lock client
/// writes it into the lease table.
pub fn leader_lock(owner: &str) -> Item {
    item(vec![
        ("leaseKey", s("Leader")),
        ("entityType", s("LEADER")),
        ("ownerName", s(owner)),
        ("leaseDuration", s("120000")),
        (
            "recordVersionNumber",
            s("3f1c2c9e-8a4b-4c51-9a7e-2b8f0d2e6c11"),
        ),
    ])
}

fn history(field: &str, value: &str) -> AttributeValue {
    AttributeValue::L(vec![AttributeValue::M(
        [
            (field.to_owned(), s(value)),
            ("mb".to_owned(), s("java-worker")),
            ("mts".to_owned(), n(1_752_500_000_000u64)),
        ]
        .into(),
    )])
}

/// The client-version migration state of a Java KCL 3.5 fleet.
pub fn client_version_migration() -> Item {
    item(vec![
        ("leaseKey", s("Migration3.0")),
        ("entityType", s("CLIENT_VERSION_MIGRATION")),
        ("cv", s("CLIENT_VERSION_3X")),
        ("mb", s("java-worker")),
        ("mts", n(1_752_500_000_123u64)),
        ("h", history("cv", "CLIENT_VERSION_INIT")),
    ])
}

/// The table migration state of a Java KCL 3.5 fleet that moved from 3.x's
/// separate tables to the single-table layout.
pub fn table_migration() -> Item {
    item(vec![
        ("leaseKey", s("TableMigration3.5")),
        ("entityType", s("TABLE_MIGRATION")),
        ("tm", s("TABLE_MIGRATION_STATUS_COMPLETE")),
        ("mb", s("java-worker")),
        ("mts", n(1_752_600_000_000u64)),
        ("h", history("tm", "TABLE_MIGRATION_STATUS_PENDING")),
    ])
}

/// The stream information the Java KCL 3.5 keeps when told to track it,
/// keyed by the stream's identifier: its name for a single-stream
/// application, `account:stream:epoch` for a multi-stream one.
pub fn stream_info(stream_identifier: &str) -> Item {
    item(vec![
        ("leaseKey", s(stream_identifier)),
        ("entityType", s("STREAM")),
        ("streamId", s("a1b2c3d4e5")),
    ])
}

/// Every item other than leases that a stopped single-stream Java KCL 3.5
/// fleet of two workers, tracking its stream's information, leaves in its
/// lease table.
pub fn java_3_5_items_other_than_leases() -> Vec<Item> {
    vec![
        worker_metrics("java-worker-1"),
        worker_metrics("java-worker-2"),
        leader_lock("java-worker-1"),
        client_version_migration(),
        table_migration(),
        stream_info("orders"),
    ]
}

/// The `leaseKey` of an item.
pub fn key_of(item: &Item) -> &str {
    match item.get("leaseKey") {
        Some(AttributeValue::S(key)) => key,
        _ => "",
    }
}

/// Checks a lease item against what the Java KCL's lease reader
/// (`DynamoDBLeaseSerializer`, 2.x to 3.5) requires of it, so that an
/// application can move back to the Java KCL: the numbers it parses are
/// numbers, `checkpoint` is a non-empty string, sets are string sets, a
/// hash key range is complete and ordered, `leaseOwner` is a non-empty
/// string (the 3.x owner index requires one) and `entityType` is `LEASE` if
/// present. Attributes the Java KCL does not know are ignored, as it
/// ignores them. Returns what it would misread.
pub fn java_reader_accepts(lease: &Item) -> Result<(), String> {
    use AttributeValue as A;
    let key = key_of(lease);
    if key.is_empty() {
        return Err("no string leaseKey".into());
    }
    let number = |name: &str, required: bool| match lease.get(name) {
        Some(A::N(value)) if value.parse::<i64>().is_ok() => Ok(()),
        None if !required => Ok(()),
        other => Err(format!("{key}: {name} is {other:?}, not a whole number")),
    };
    number("leaseCounter", true)?;
    number("ownerSwitchesSinceCheckpoint", true)?;
    number("checkpointSubSequenceNumber", false)?;
    number("pendingCheckpointSubSequenceNumber", false)?;
    // A sequence number (digits) or a sentinel, as the Java KCL compares
    // them.
    let position = |value: &str| {
        (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
            || ["TRIM_HORIZON", "LATEST", "SHARD_END", "AT_TIMESTAMP"].contains(&value)
    };
    match lease.get("checkpoint") {
        Some(A::S(value)) if position(value) => {}
        other => return Err(format!("{key}: checkpoint is {other:?}")),
    }
    match lease.get("pendingCheckpoint") {
        None => {}
        Some(A::S(value)) if position(value) => {}
        other => return Err(format!("{key}: pendingCheckpoint is {other:?}")),
    }
    // Present means a handoff is under way, from that worker.
    match lease.get("checkpointOwner") {
        None => {}
        Some(A::S(owner)) if !owner.is_empty() => {}
        other => return Err(format!("{key}: checkpointOwner is {other:?}")),
    }
    match lease.get("leaseOwner") {
        None => {}
        Some(A::S(owner)) if !owner.is_empty() => {}
        other => return Err(format!("{key}: leaseOwner is {other:?}")),
    }
    match lease.get("pendingCheckpointState") {
        None | Some(A::B(_)) => {}
        other => {
            return Err(format!(
                "{key}: pendingCheckpointState is {other:?}, not binary"
            ));
        }
    }
    for name in ["parentShardId", "childShardIds"] {
        match lease.get(name) {
            None | Some(A::Ss(_)) => {}
            other => return Err(format!("{key}: {name} is {other:?}, not a string set")),
        }
    }
    match (lease.get("startingHashKey"), lease.get("endingHashKey")) {
        (None, None) => {}
        (Some(A::S(start)), Some(A::S(end))) => {
            let parse = |v: &str| {
                v.parse::<u128>()
                    .map_err(|_| format!("{key}: hash key {v}"))
            };
            if parse(start)? >= parse(end)? {
                return Err(format!(
                    "{key}: hash key range {start}..{end} is not ordered"
                ));
            }
        }
        other => return Err(format!("{key}: incomplete hash key range {other:?}")),
    }
    match lease.get("throughputKBps") {
        None | Some(A::N(_)) => {}
        other => return Err(format!("{key}: throughputKBps is {other:?}")),
    }
    // A multi-stream lease (as the Java multi-stream serializer reads it):
    // both attributes, and the key made of them.
    match (lease.get("streamName"), lease.get("shardId")) {
        (None, None) => {}
        (Some(A::S(stream)), Some(A::S(shard))) if key == format!("{stream}:{shard}") => {
            let parts: Vec<&str> = stream.split(':').collect();
            let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
            if parts.len() != 3 || !digits(parts[0]) || parts[1].is_empty() || !digits(parts[2]) {
                return Err(format!(
                    "{key}: streamName {stream} is not account:stream:epoch"
                ));
            }
        }
        other => return Err(format!("{key}: streamName and shardId are {other:?}")),
    }
    match lease.get("entityType") {
        None => {}
        Some(A::S(entity)) if entity == "LEASE" => {}
        other => {
            return Err(format!(
                "{key}: entityType is {other:?}; the Java KCL skips the item"
            ));
        }
    }
    Ok(())
}

/// Checks every lease item of `table` against the Java KCL's reader, so
/// the application can move back.
///
/// # Panics
/// On the first lease a Java KCL worker would misread, saying why.
pub async fn assert_a_java_worker_can_read_every_lease(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) {
    let items = client
        .scan()
        .table_name(table)
        .send()
        .await
        .expect("scan the lease table")
        .items
        .unwrap_or_default();
    let leases: Vec<&Item> = items
        .iter()
        .filter(
            |item| !matches!(item.get("entityType"), Some(AttributeValue::S(e)) if e != "LEASE"),
        )
        .collect();
    assert!(!leases.is_empty());
    for lease in leases {
        if let Err(why) = java_reader_accepts(lease) {
            panic!("a Java KCL worker would misread the table: {why}");
        }
    }
}

/// Writes `items` into the DynamoDB table `table` as they are.
///
/// # Panics
/// If an item cannot be written.
pub async fn put_items(client: &aws_sdk_dynamodb::Client, table: &str, items: &[Item]) {
    for item in items {
        client
            .put_item()
            .table_name(table)
            .set_item(Some(item.clone()))
            .send()
            .await
            .expect("put a fixture item");
    }
}

/// Reads the item `key` of `table` as it is stored.
///
/// # Panics
/// If the table cannot be read.
pub async fn stored_item(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
) -> Option<Item> {
    client
        .get_item()
        .table_name(table)
        .key("leaseKey", AttributeValue::S(key.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get an item")
        .item
}

/// Checks that each of `items` is stored in `table` exactly as it was
/// written.
///
/// # Panics
/// On the first item that changed or is gone, naming it.
pub async fn assert_unchanged(client: &aws_sdk_dynamodb::Client, table: &str, items: &[Item]) {
    for item in items {
        assert_eq!(
            stored_item(client, table, key_of(item)).await.as_ref(),
            Some(item),
            "{} changed",
            key_of(item)
        );
    }
}

/// Creates a lease table as the Java KCL does (key `leaseKey`, on-demand),
/// and nothing else.
///
/// # Panics
/// If the table cannot be created.
pub async fn create_lease_table(client: &aws_sdk_dynamodb::Client, table: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("leaseKey")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("leaseKey")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create the lease table");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_java_reader_check_accepts_java_leases_and_names_what_it_would_misread() {
        let good = with_pending(
            with_hash_range(lease_3_5("shardId-1", "123", 2, Some("w")), 0, 9),
            "125",
            0,
            b"state",
        );
        assert_eq!(java_reader_accepts(&good), Ok(()));
        assert_eq!(
            java_reader_accepts(&lease_2x("shardId-1", "SHARD_END", 0, None)),
            Ok(())
        );
        let broken: [(&str, Option<AttributeValue>); 9] = [
            ("leaseCounter", Some(AttributeValue::Null(true))),
            ("ownerSwitchesSinceCheckpoint", None),
            ("checkpoint", Some(s(""))),
            ("checkpoint", Some(s("12ab"))),
            ("checkpointOwner", Some(s(""))),
            ("leaseOwner", Some(s(""))),
            ("endingHashKey", None),
            ("pendingCheckpointState", Some(n(1))),
            ("entityType", Some(s("WORKER_METRIC_STATS"))),
        ];
        for (name, value) in broken {
            let mut lease = good.clone();
            match value {
                Some(value) => lease.insert(name.into(), value),
                None => lease.remove(name),
            };
            assert!(java_reader_accepts(&lease).is_err(), "{name}");
        }
        let multi = multi_stream_lease("1", "orders", 5, "shardId-1", "123");
        assert_eq!(java_reader_accepts(&multi), Ok(()));
        for (name, value) in [
            ("streamName", None),
            ("shardId", None),
            ("shardId", Some(s("shardId-2"))),
            ("streamName", Some(s("orders"))),
        ] {
            let mut lease = multi.clone();
            match value {
                Some(value) => lease.insert(name.into(), value),
                None => lease.remove(name),
            };
            assert!(java_reader_accepts(&lease).is_err(), "{name}");
        }
    }
}
