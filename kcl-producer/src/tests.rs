//! The producer against the in-memory stream, on a paused clock where
//! time matters.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use crate::error::{PutError, PutErrorKind, SendError};
use crate::kpl::{AggregatedRecord, DIGEST_LEN, MAGIC};
use crate::memory::{InMemorySink, StoredRecord};
use crate::{AggregationConfig, Delivery, Producer, ProducerConfig, UserRecord, Written};

const STREAM: &str = "orders";

fn sink(shards: u32) -> InMemorySink {
    let sink = InMemorySink::new();
    sink.create_stream(STREAM, shards);
    sink
}

fn producer(sink: &InMemorySink, config: ProducerConfig) -> Producer {
    Producer::new(sink.clone(), STREAM, config).expect("a valid config")
}

async fn enqueue_all(producer: &Producer, records: Vec<UserRecord>) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    for record in records {
        deliveries.push(producer.enqueue(record).await.expect("enqueued"));
    }
    deliveries
}

async fn written(deliveries: Vec<Delivery>) -> Vec<Written> {
    let mut out = Vec::new();
    for delivery in deliveries {
        out.push(delivery.await.expect("written"));
    }
    out
}

/// `keys` keys, `per_key` records each, sent key by key in rounds; data
/// `key:n`.
fn rounds(keys: usize, per_key: usize) -> Vec<UserRecord> {
    (0..per_key)
        .flat_map(|n| (0..keys).map(move |k| UserRecord::new(format!("k{k}"), format!("k{k}:{n}"))))
        .collect()
}

/// The user records of a stored record: itself, or an aggregate's.
fn unpack(stored: &StoredRecord) -> Vec<(String, Bytes)> {
    if !stored.data.starts_with(&MAGIC) {
        return vec![(stored.partition_key.clone(), stored.data.clone())];
    }
    let body = stored
        .data
        .slice(MAGIC.len()..stored.data.len() - DIGEST_LEN);
    let aggregate = AggregatedRecord::decode(body).expect("a valid aggregate");
    aggregate
        .records
        .into_iter()
        .map(|r| {
            let key = aggregate.partition_key_table[r.partition_key_index as usize].clone();
            (key, r.data)
        })
        .collect()
}

/// Every user record in the stream, in stream order, as `data` strings.
fn stream_data(sink: &InMemorySink) -> Vec<String> {
    sink.records(STREAM)
        .iter()
        .flat_map(unpack)
        .map(|(_, data)| String::from_utf8(data.to_vec()).expect("utf-8"))
        .collect()
}

fn throttled() -> &'static str {
    "ProvisionedThroughputExceededException"
}

#[tokio::test(start_paused = true)]
async fn records_are_batched_into_calls_of_at_most_500() {
    let sink = sink(4);
    let producer = producer(
        &sink,
        ProducerConfig {
            ordering: false,
            ..Default::default()
        },
    );
    let records: Vec<UserRecord> = (0..1200)
        .map(|n| UserRecord::new(format!("key-{n}"), format!("{n}")))
        .collect();
    let deliveries = enqueue_all(&producer, records).await;
    let results = written(deliveries).await;
    assert_eq!(sink.put_calls(), 3, "500 + 500 + 200");
    let stored = sink.records(STREAM);
    assert_eq!(stored.len(), 1200);
    // Each delivery names the shard and sequence number of its record.
    for (n, result) in results.iter().enumerate() {
        let record = stored
            .iter()
            .find(|s| *s.sequence_number == *result.sequence_number)
            .expect("the sequence number is in the stream");
        assert_eq!(record.data, Bytes::from(n.to_string()));
        assert_eq!(&*result.shard_id, record.shard_id);
        assert_eq!((result.sub_sequence_number, result.attempts), (None, 1));
    }
}

#[tokio::test(start_paused = true)]
async fn a_partial_call_lingers_then_goes_and_flush_sends_at_once() {
    let sink = sink(2);
    let producer = producer(
        &sink,
        ProducerConfig {
            linger: Duration::from_secs(10),
            ..Default::default()
        },
    );
    let first = enqueue_all(&producer, rounds(5, 1)).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(sink.put_calls(), 0, "still lingering");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.put_calls(), 1, "the linger has passed");
    written(first).await;

    let start = tokio::time::Instant::now();
    let second = enqueue_all(&producer, rounds(5, 1)).await;
    producer.flush().await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "flush does not linger"
    );
    assert_eq!(sink.put_calls(), 2);
    for delivery in second {
        delivery.await.expect("flushed means written");
    }
}

#[tokio::test(start_paused = true)]
async fn only_the_failed_entries_of_a_call_are_sent_again() {
    let sink = sink(2);
    sink.fail_entries(throttled(), 5, |entry| {
        entry.partition_key.ends_with('3') || entry.partition_key.ends_with('7')
    });
    let producer = producer(&sink, ProducerConfig::default());
    let deliveries = enqueue_all(&producer, rounds(40, 1)).await;
    let results = written(deliveries).await;
    let mut data = stream_data(&sink);
    data.sort();
    let mut expected: Vec<String> = (0..40).map(|k| format!("k{k}:0")).collect();
    expected.sort();
    assert_eq!(data, expected, "each record written once");
    let retried = results.iter().filter(|w| w.attempts == 2).count();
    assert_eq!(retried, 5, "the throttled entries took a second call");
    assert_eq!(sink.put_calls(), 2, "the second call carried only them");
}

#[tokio::test(start_paused = true)]
async fn a_failed_call_is_made_again_and_a_lost_answer_duplicates_rather_than_loses() {
    let sink = sink(2);
    sink.fail_calls(PutError::retryable("InternalFailure", "injected"), 2);
    let producer = producer(&sink, ProducerConfig::default());
    let results = written(enqueue_all(&producer, rounds(10, 1)).await).await;
    assert!(results.iter().all(|w| w.attempts == 3));
    assert_eq!(stream_data(&sink).len(), 10);

    sink.apply_then_fail(1);
    let results = written(enqueue_all(&producer, rounds(10, 1)).await).await;
    assert!(results.iter().all(|w| w.attempts == 2));
    assert_eq!(
        stream_data(&sink).len(),
        30,
        "the call whose answer was lost wrote the records, and the retry wrote them again"
    );
}

#[tokio::test(start_paused = true)]
async fn records_that_cannot_be_written_fail_their_own_delivery_and_say_why() {
    let sink = sink(2);
    sink.fail_entries("KMSAccessDeniedException", 1, |entry| {
        &entry.data[..] == b"k1:0"
    });
    let producer = producer(&sink, ProducerConfig::default());
    let deliveries = enqueue_all(&producer, rounds(3, 1)).await;
    let outcomes: Vec<Result<Written, SendError>> = futures::future::join_all(deliveries).await;
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok());
    assert!(
        matches!(&outcomes[1], Err(SendError::Rejected { code, .. }) if code == "KMSAccessDeniedException"),
        "{:?}",
        outcomes[1]
    );

    let too_large = UserRecord::new("k", vec![0u8; crate::MAX_RECORD_BYTES]);
    assert!(matches!(
        producer.enqueue(too_large).await,
        Err(SendError::TooLarge { .. })
    ));

    let missing = Producer::new(sink.clone(), "missing", ProducerConfig::default()).unwrap();
    let error = missing.send(UserRecord::new("k", "x")).await.unwrap_err();
    assert!(
        matches!(&error, SendError::StreamNotFound { stream, .. } if stream == "missing"),
        "{error:?}"
    );
    assert!(error.to_string().contains("create it"), "{error}");

    sink.fail_calls(
        PutError {
            kind: PutErrorKind::AccessDenied,
            code: "AccessDeniedException".into(),
            message: "no".into(),
        },
        1,
    );
    let error = producer.send(UserRecord::new("k", "x")).await.unwrap_err();
    assert!(error.to_string().contains("kinesis:PutRecords"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_record_throttled_past_its_time_to_live_expires_with_the_last_error() {
    let sink = sink(1);
    sink.fail_entries(throttled(), usize::MAX, |entry| {
        &entry.data[..] == b"doomed"
    });
    let producer = producer(
        &sink,
        ProducerConfig {
            record_ttl: Some(Duration::from_secs(5)),
            ..Default::default()
        },
    );
    let doomed = producer
        .enqueue(UserRecord::new("a", "doomed"))
        .await
        .unwrap();
    let fine = producer
        .enqueue(UserRecord::new("b", "fine"))
        .await
        .unwrap();
    fine.await.expect("another key is not held up");
    let start = tokio::time::Instant::now();
    match doomed.await {
        Err(SendError::Expired {
            attempts,
            last_error,
            ..
        }) => {
            assert!(attempts > 2, "retried with backoff: {attempts}");
            assert!(last_error.contains(throttled()), "{last_error}");
        }
        other => panic!("expected Expired, got {other:?}"),
    }
    assert!(start.elapsed() <= Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn retries_never_reorder_a_key() {
    let sink = sink(4);
    // Throttle every third entry, 400 times.
    let seen = std::sync::atomic::AtomicUsize::new(0);
    sink.fail_entries(throttled(), 400, move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 3 == 0
    });
    let producer = producer(
        &sink,
        ProducerConfig {
            linger: Duration::from_millis(5),
            ..Default::default()
        },
    );
    let records = rounds(16, 60);
    let results = written(enqueue_all(&producer, records).await).await;
    assert!(
        results.iter().any(|w| w.attempts > 1),
        "the faults were hit"
    );
    let mut next: HashMap<String, usize> = HashMap::new();
    for data in stream_data(&sink) {
        let (key, n) = data.split_once(':').expect("key:n");
        let expected = next.entry(key.to_owned()).or_default();
        assert_eq!(n.parse::<usize>().unwrap(), *expected, "{key} out of order");
        *expected += 1;
    }
    assert_eq!(
        next.values().sum::<usize>(),
        16 * 60,
        "none lost, none twice"
    );
}

#[tokio::test(start_paused = true)]
async fn send_waits_while_the_buffer_is_full() {
    let sink = sink(1);
    sink.hold();
    let producer = producer(
        &sink,
        ProducerConfig {
            max_buffered_records: 10,
            ..Default::default()
        },
    );
    let deliveries = enqueue_all(&producer, rounds(10, 1)).await;
    let eleventh = producer.enqueue(UserRecord::new("late", "x"));
    tokio::pin!(eleventh);
    // However long it waits, the eleventh record is not taken while the
    // ten fill the buffer.
    tokio::select! {
        _ = &mut eleventh => panic!("an eleventh record went into a full buffer"),
        () = tokio::time::sleep(Duration::from_secs(60)) => {}
    }
    sink.release();
    let late = eleventh.await.expect("taken once there is room");
    written(deliveries).await;
    late.await.expect("written");
}

#[tokio::test(start_paused = true)]
async fn send_waits_while_the_buffered_bytes_are_at_their_bound() {
    let sink = sink(1);
    sink.hold();
    let bound = crate::MAX_RECORD_BYTES + 4 * crate::MAX_PARTITION_KEY_CHARS;
    let producer = producer(
        &sink,
        ProducerConfig {
            max_buffered_bytes: bound,
            ..Default::default()
        },
    );
    let first = producer
        .enqueue(UserRecord::new("a", vec![0u8; 600 * 1024]))
        .await
        .unwrap();
    let second = producer.enqueue(UserRecord::new("b", vec![0u8; 600 * 1024]));
    tokio::pin!(second);
    tokio::select! {
        _ = &mut second => panic!("1.2 MB went into a buffer bounded at {bound} bytes"),
        () = tokio::time::sleep(Duration::from_secs(60)) => {}
    }
    sink.release();
    let second = second.await.expect("taken once there is room");
    first.await.expect("written");
    second.await.expect("written");
}

#[tokio::test(start_paused = true)]
async fn close_writes_everything_pending_and_refuses_more() {
    let sink = sink(2);
    sink.hold();
    let producer = producer(&sink, ProducerConfig::default());
    let deliveries = enqueue_all(&producer, rounds(20, 5)).await;
    let closing = tokio::spawn({
        let producer = producer.clone();
        async move { producer.close().await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !closing.is_finished(),
        "close waits for the pending records"
    );
    sink.release();
    closing.await.unwrap();
    assert_eq!(stream_data(&sink).len(), 100);
    for delivery in deliveries {
        delivery.await.expect("written before close returned");
    }
    assert_eq!(
        producer.send(UserRecord::new("k", "x")).await,
        Err(SendError::Closed)
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_still_writes_what_was_sent() {
    let sink = sink(2);
    let producer = producer(&sink, ProducerConfig::default());
    let deliveries = enqueue_all(&producer, rounds(5, 4)).await;
    drop(producer);
    written(deliveries).await;
    assert_eq!(stream_data(&sink).len(), 20);
}

fn aggregating() -> ProducerConfig {
    ProducerConfig {
        aggregation: Some(AggregationConfig::default()),
        ..Default::default()
    }
}

/// Checks every written record against the stream: it is inside the
/// stored record its delivery names, at its sub-sequence number, and its
/// hash key is in the range of the shard that holds it.
fn check_deliveries(
    sink: &InMemorySink,
    sent: &[UserRecord],
    results: &[Written],
    ranges: &HashMap<String, (u128, u128)>,
) {
    let stored = sink.records(STREAM);
    for (record, result) in sent.iter().zip(results) {
        let holder = stored
            .iter()
            .find(|s| *s.sequence_number == *result.sequence_number)
            .expect("the delivery's sequence number is in the stream");
        assert_eq!(&*result.shard_id, holder.shard_id);
        let users = unpack(holder);
        let index = result.sub_sequence_number.unwrap_or(0) as usize;
        assert_eq!(
            users[index],
            (record.partition_key.clone(), record.data.clone())
        );
        assert_eq!(result.sub_sequence_number.is_some(), users.len() > 1);
        let (start, end) = ranges[&holder.shard_id];
        assert!((start..=end).contains(&record.hash_key()), "in its shard");
    }
}

/// The open shards' hash key ranges, by shard id.
async fn open_ranges(sink: &InMemorySink) -> HashMap<String, (u128, u128)> {
    crate::sink::Sink::open_shards(sink, STREAM)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.shard_id, (s.start, s.end)))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn aggregation_packs_records_per_shard() {
    let sink = sink(4);
    let producer = producer(&sink, aggregating());
    let sent: Vec<UserRecord> = (0..2000)
        .map(|n| UserRecord::new(format!("key-{}", n % 100), format!("{n:0100}")))
        .collect();
    let results = written(enqueue_all(&producer, sent.clone()).await).await;
    let ranges = open_ranges(&sink).await;
    check_deliveries(&sink, &sent, &results, &ranges);
    let stored = sink.records(STREAM);
    // About 210 KB of records in 50 KiB aggregates, per shard: a handful
    // of Kinesis records, not 2,000.
    assert!(stored.len() <= 16, "{} Kinesis records", stored.len());
    assert!(sink.put_calls() <= 4, "{} calls", sink.put_calls());
    // Per-key order holds inside and across aggregates.
    let mut last: HashMap<String, u64> = HashMap::new();
    for (key, data) in stored.iter().flat_map(unpack) {
        let n: u64 = std::str::from_utf8(&data).unwrap().parse().unwrap();
        if let Some(before) = last.insert(key.clone(), n) {
            assert!(before < n, "{key}: {before} then {n}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn after_a_split_misplaced_records_are_sent_again_to_their_new_shard() {
    let sink = sink(2);
    let producer = producer(&sink, aggregating());
    let before: Vec<UserRecord> = (0..200)
        .map(|n| UserRecord::new(format!("key-{}", n % 50), format!("a{n}")))
        .collect();
    let mut results = written(enqueue_all(&producer, before.clone()).await).await;
    let mut ranges = open_ranges(&sink).await;
    let lists = sink.list_calls();
    // The producer's map still has shard 0: its aggregates for it land on
    // one child, with records of both children inside.
    sink.split_shard(STREAM, "shardId-000000000000");
    let after: Vec<UserRecord> = (0..200)
        .map(|n| UserRecord::new(format!("key-{}", n % 50), format!("b{n}")))
        .collect();
    results.extend(written(enqueue_all(&producer, after.clone()).await).await);
    assert!(sink.list_calls() > lists, "the map was loaded again");
    ranges.extend(open_ranges(&sink).await);
    let sent: Vec<UserRecord> = before.into_iter().chain(after).collect();
    check_deliveries(&sink, &sent, &results, &ranges);
    // Some records of the misplaced aggregate were sent again (they are in
    // the stream twice: inside it, and on their own shard).
    let data = stream_data(&sink);
    assert!(
        data.len() > 400,
        "no record was misplaced: the test missed its case"
    );
    for record in &sent {
        let data_str = std::str::from_utf8(&record.data).unwrap().to_owned();
        assert!(data.contains(&data_str), "{data_str} is lost");
    }
}

#[tokio::test(start_paused = true)]
async fn aggregation_without_a_shard_map_sends_records_as_they_are_until_it_loads() {
    let sink = sink(2);
    sink.fail_listings(
        PutError {
            kind: PutErrorKind::AccessDenied,
            code: "AccessDeniedException".into(),
            message: "no kinesis:ListShards".into(),
        },
        1,
    );
    let producer = producer(&sink, aggregating());
    let first = written(enqueue_all(&producer, rounds(10, 3)).await).await;
    assert!(first.iter().all(|w| w.sub_sequence_number.is_none()));
    assert_eq!(sink.records(STREAM).len(), 30, "30 plain records");
    // The map loads on a later try; records are aggregated from then on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = written(enqueue_all(&producer, rounds(10, 3)).await).await;
    assert!(later.iter().any(|w| w.sub_sequence_number.is_some()));
    assert_eq!(stream_data(&sink).len(), 60);
}

#[tokio::test(start_paused = true)]
async fn a_second_close_and_a_flush_during_a_close_wait_for_the_records() {
    let sink = sink(1);
    sink.hold();
    let producer = producer(&sink, ProducerConfig::default());
    let delivery = producer.enqueue(UserRecord::new("k", "x")).await.unwrap();
    let first = tokio::spawn({
        let producer = producer.clone();
        async move { producer.close().await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let second = tokio::spawn({
        let producer = producer.clone();
        async move { producer.close().await }
    });
    let flush = tokio::spawn({
        let producer = producer.clone();
        async move { producer.flush().await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !first.is_finished() && !second.is_finished() && !flush.is_finished(),
        "nothing is written yet"
    );
    sink.release();
    for waiter in [first, second, flush] {
        waiter.await.unwrap();
        assert!(
            !sink.records(STREAM).is_empty(),
            "returned before the write"
        );
    }
    delivery.await.expect("written");
}

#[tokio::test(start_paused = true)]
async fn after_a_split_a_keys_records_with_their_own_hash_keys_stay_in_order() {
    // One key, three records routed by explicit hash keys: low, high, low.
    let sink = sink(1);
    sink.hold();
    let producer = producer(&sink, aggregating());
    let mut deliveries = Vec::new();
    for hash in [1, u128::MAX - 1, 2] {
        let record = UserRecord::new("k", format!("{hash}")).with_explicit_hash_key(hash);
        deliveries.push(producer.enqueue(record).await.unwrap());
    }
    // The map (one shard) was loaded; the aggregate of the three is held.
    tokio::time::sleep(Duration::from_millis(200)).await;
    sink.split_shard(STREAM, "shardId-000000000000");
    sink.release();
    let results = written(deliveries).await;
    // The aggregate landed on the low child; the high record goes again to
    // the high child, and so must the low one after it.
    let position = |w: &Written| (w.sequence_number.to_string(), w.sub_sequence_number);
    let (r1, r2, r3) = (
        position(&results[0]),
        position(&results[1]),
        position(&results[2]),
    );
    let later = |a: &(String, Option<u64>), b: &(String, Option<u64>)| {
        (a.0.len(), &a.0, a.1) > (b.0.len(), &b.0, b.1)
    };
    assert!(later(&r2, &r1), "{r1:?} then {r2:?}");
    assert!(
        later(&r3, &r2),
        "the third record was written before the second: {r2:?}, {r3:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn written_retried_and_failed_records_and_the_buffer_are_measured() {
    // The only test of this binary that installs a recorder.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("a global recorder");
    let sink = InMemorySink::new();
    sink.create_stream("measured", 2);
    sink.fail_entries(throttled(), 3, |_| true);
    sink.fail_entries("KMSAccessDeniedException", 1, |e| &e.data[..] == b"k9:0");
    let producer = Producer::new(sink.clone(), "measured", ProducerConfig::default()).unwrap();
    let deliveries = enqueue_all(&producer, rounds(10, 2)).await;
    let outcomes = futures::future::join_all(deliveries).await;
    assert_eq!(outcomes.iter().filter(|o| o.is_err()).count(), 1);
    producer.close().await;

    let text = prometheus.render();
    let value = |name: &str, labels: &str| -> f64 {
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
            .parse()
            .expect("a number")
    };
    let stream = "stream=\"measured\"";
    assert_eq!(value("kcl_producer_records_written_total", stream), 19.0);
    assert_eq!(
        value("kcl_producer_bytes_written_total", stream),
        rounds(10, 2)
            .iter()
            .filter(|r| &r.data[..] != b"k9:0")
            .map(|r| r.size() as f64)
            .sum::<f64>()
    );
    assert_eq!(
        value(
            "kcl_producer_retries_total",
            &format!("{stream},reason=\"ProvisionedThroughputExceededException\"")
        ),
        3.0
    );
    assert_eq!(
        value(
            "kcl_producer_records_failed_total",
            &format!("{stream},reason=\"rejected\"")
        ),
        1.0
    );
    assert_eq!(
        value("kcl_producer_batch_records_count", stream),
        sink.put_calls() as f64
    );
    assert_eq!(value("kcl_producer_batch_records_sum", stream), 20.0 + 3.0);
    assert!(value("kcl_producer_batch_bytes_sum", stream) > 0.0);
    assert_eq!(value("kcl_producer_buffered_records", stream), 0.0);
    assert_eq!(value("kcl_producer_buffered_bytes", stream), 0.0);
    assert!(
        value(
            "kcl_producer_put_calls_total",
            &format!("{stream},outcome=\"partial\"")
        ) >= 1.0
    );
}

#[tokio::test(start_paused = true)]
async fn misplaced_records_are_sent_again_when_the_map_cannot_be_reloaded() {
    let sink = sink(1);
    let producer = producer(&sink, aggregating());
    tokio::time::sleep(Duration::from_millis(10)).await;
    sink.hold();
    let sent = rounds(100, 1);
    let deliveries = enqueue_all(&producer, sent.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    sink.split_shard(STREAM, "shardId-000000000000");
    sink.fail_listings(
        PutError::retryable("LimitExceededException", "injected"),
        100_000,
    );
    sink.release();
    let closed = tokio::time::timeout(Duration::from_secs(3600), producer.close()).await;
    assert!(closed.is_ok(), "close waited an hour for a shard map");
    written(deliveries).await;
    let data = stream_data(&sink);
    for record in &sent {
        let value = String::from_utf8(record.data.to_vec()).unwrap();
        assert!(data.contains(&value), "{value} is lost");
    }
}
