//! The local stack itself answers the calls the framework relies on, through
//! the same SDK clients and endpoint wiring the framework uses.

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use kcl_tests::{LocalAws, unique_name};

#[tokio::test]
async fn kinesis_mock_creates_a_stream_and_returns_what_was_put() {
    let kinesis = LocalAws::connect().kinesis();
    let stream = unique_name("stack");
    kinesis
        .create_stream()
        .stream_name(&stream)
        .shard_count(2)
        .send()
        .await
        .expect("create stream");
    wait_until("stream active", || async {
        let summary = kinesis
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
            .await
            .expect("describe stream");
        summary
            .stream_description_summary()
            .map(|s| s.stream_status())
            == Some(&StreamStatus::Active)
    })
    .await;

    let shards = kinesis
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .expect("list shards")
        .shards
        .unwrap_or_default();
    assert_eq!(shards.len(), 2);

    let put = kinesis
        .put_record()
        .stream_name(&stream)
        .partition_key("key-1")
        .data(Blob::new(&b"hello"[..]))
        .send()
        .await
        .expect("put record");
    let iterator = kinesis
        .get_shard_iterator()
        .stream_name(&stream)
        .shard_id(put.shard_id())
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("get shard iterator")
        .shard_iterator
        .expect("an iterator");
    let records = kinesis
        .get_records()
        .shard_iterator(iterator)
        .send()
        .await
        .expect("get records")
        .records;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].data().as_ref(), b"hello");
    assert_eq!(records[0].partition_key(), Some("key-1"));
    assert_eq!(records[0].sequence_number(), put.sequence_number());

    kinesis
        .delete_stream()
        .stream_name(&stream)
        .send()
        .await
        .expect("delete stream");
}

#[tokio::test]
async fn dynamodb_local_enforces_conditional_writes() {
    let dynamodb = LocalAws::connect().dynamodb();
    let table = unique_name("stack");
    dynamodb
        .create_table()
        .table_name(&table)
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
        .expect("create table");
    wait_until("table active", || async {
        let described = dynamodb
            .describe_table()
            .table_name(&table)
            .send()
            .await
            .expect("describe table");
        described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active)
    })
    .await;

    let put_if_absent = |owner: &'static str| {
        dynamodb
            .put_item()
            .table_name(&table)
            .item("leaseKey", AttributeValue::S("shardId-000000000000".into()))
            .item("leaseOwner", AttributeValue::S(owner.into()))
            .condition_expression("attribute_not_exists(leaseKey)")
            .send()
    };
    put_if_absent("worker-a").await.expect("first put");
    let second = put_if_absent("worker-b")
        .await
        .expect_err("second put must fail");
    assert!(
        second
            .as_service_error()
            .is_some_and(|e| e.is_conditional_check_failed_exception()),
        "{second:?}"
    );

    let item = dynamodb
        .get_item()
        .table_name(&table)
        .key("leaseKey", AttributeValue::S("shardId-000000000000".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item
        .expect("the item");
    assert_eq!(item["leaseOwner"], AttributeValue::S("worker-a".into()));

    dynamodb
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .expect("delete table");
}

/// Polls `ready` every 50 ms until it holds; fails the test after 30 s.
async fn wait_until<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
