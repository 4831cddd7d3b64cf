//! Records no producer should send but some do, and a stream that is not
//! there: each is delivered byte for byte or refused with a clear error;
//! nothing is lost and the worker keeps going.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::primitives::Blob;
use bytes::Bytes;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::kinesis::KinesisError;
use kcl_core::retrieval::aggregation;
use kcl_core::{
    InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor, Scheduler,
    SchedulerError,
};
use kcl_tests::stream::create_stream;
use kcl_tests::{LocalAws, unique_name};
use md5::{Digest, Md5};

/// The KPL aggregate magic bytes.
const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// The largest record Kinesis accepts: data and partition key together.
const MAX_RECORD: usize = 1024 * 1024;

/// Keeps every record's partition key and exact bytes.
struct Keeper(Arc<Mutex<Vec<(String, Bytes)>>>);

#[async_trait]
impl RecordProcessor for Keeper {
    async fn initialize(&mut self, _: InitializationInput) -> Result<(), ProcessorError> {
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput) -> Result<(), ProcessorError> {
        self.0.lock().unwrap().extend(
            input
                .records
                .iter()
                .map(|record| (record.partition_key.clone(), record.data.clone())),
        );
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shard_ended(&mut self, checkpointer: Checkpointer) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        Ok(())
    }
}

fn with_digest(body: &[u8]) -> Vec<u8> {
    let mut data = MAGIC.to_vec();
    data.extend_from_slice(body);
    data.extend_from_slice(&Md5::digest(body));
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_records_are_delivered_byte_for_byte_and_malformed_aggregates_counted() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (unique_name("bad-input"), unique_name("bad-input-app"));
    create_stream(&kinesis, &stream, 1).await;

    let largest_key = "largest";
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let valid = aggregation::aggregate(&[("inner-a", None, b"a"), ("inner-b", None, b"b")]);
    let mut bad_digest = valid.to_vec();
    let last = bad_digest.len() - 1;
    bad_digest[last] ^= 0xFF;
    // Aggregates with no body at all, a digest that does not match, a body
    // that is not a protobuf message, and a key index past the key table.
    let malformed: Vec<Vec<u8>> = vec![
        MAGIC.to_vec(),
        bad_digest,
        with_digest(&[0xFF; 40]),
        // Record 1 of a one-key table names key index 3.
        with_digest(&[0x0A, 0x01, b'k', 0x1A, 0x04, 0x08, 0x03, 0x1A, 0x00]),
    ];
    let mut plain: Vec<(String, Vec<u8>)> = vec![
        (
            largest_key.to_owned(),
            vec![0xA5; MAX_RECORD - largest_key.len()],
        ),
        ("binary".to_owned(), every_byte),
        // Kinesis accepts records with no data at all.
        ("empty".to_owned(), Vec::new()),
        (
            "nearly-magic".to_owned(),
            vec![0xF3, 0x89, 0x9A, 0xC3, 1, 2],
        ),
    ];
    for (n, data) in malformed.iter().enumerate() {
        plain.push((format!("malformed-{n}"), data.clone()));
    }
    for (key, data) in &plain {
        kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key(key)
            .data(Blob::new(data.clone()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }
    // Kinesis refuses data over 1 MiB (AWS counts the partition key in the
    // limit too; kinesis-mock counts only the data).
    let refused = kinesis
        .put_record()
        .stream_name(&stream)
        .partition_key("too-big")
        .data(Blob::new(vec![0u8; MAX_RECORD + 1]))
        .send()
        .await;
    assert!(refused.is_err(), "a record over 1 MiB was accepted");

    let kept = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&kept);
    let scheduler = Scheduler::builder()
        .application_name(&app)
        .stream_name(&stream)
        .worker_id("bad-input")
        .aws_clients(&kinesis, &aws.dynamodb())
        .build(move |_: &str| Keeper(Arc::clone(&sink)))
        .expect("valid settings");
    let (shutdown, stats) = (scheduler.shutdown_handle(), scheduler.stats());
    let task = tokio::spawn(scheduler.run());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while kept.lock().unwrap().len() < plain.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} records delivered",
            kept.lock().unwrap().len(),
            plain.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.shutdown();
    task.await.unwrap().expect("the worker stops cleanly");

    let kept = kept.lock().unwrap();
    assert_eq!(kept.len(), plain.len(), "each record once");
    for ((key, data), (kept_key, kept_data)) in plain.iter().zip(kept.iter()) {
        assert_eq!(kept_key, key);
        assert!(kept_data[..] == data[..], "{key}: bytes changed");
    }
    assert_eq!(
        stats.snapshot().malformed_aggregates,
        malformed.len() as u64
    );
}

#[tokio::test]
async fn a_stream_that_does_not_exist_stops_the_worker_with_its_name() {
    let aws = LocalAws::connect();
    let stream = unique_name("no-such-stream");
    let scheduler = Scheduler::builder()
        .application_name(unique_name("no-stream-app"))
        .stream_name(&stream)
        .worker_id("lonely")
        .aws_clients(&aws.kinesis(), &aws.dynamodb())
        .build(|_: &str| Keeper(Arc::default()))
        .expect("valid settings");
    let outcome = tokio::time::timeout(Duration::from_secs(30), scheduler.run())
        .await
        .expect("fails fast, not a retry loop");
    match outcome {
        Err(SchedulerError::Stream {
            stream: named,
            source: KinesisError::NotFound { .. },
        }) => assert_eq!(named, stream),
        other => panic!("expected a missing-stream error, got {other:?}"),
    }
}
