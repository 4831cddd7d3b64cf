//! The producer (`kcl-producer`) on kinesis-mock: its sink holds to the
//! same semantics as the in-memory one, its aggregates read back with AWS's
//! own de-aggregation library and with this project's worker (across a
//! split), and it rides out throttling and failed calls without losing or
//! reordering a key.

use std::collections::HashMap;
use std::time::Duration;

use kcl_producer::memory::InMemorySink;
use kcl_producer::{
    AggregationConfig, Producer, ProducerConfig, SdkSink, UserRecord, Written, conformance,
};
use kcl_tests::fault_proxy::{Fault, FaultProxy};
use kcl_tests::stream::{RawRecord, create_stream, open_shards, read_raw_records, split_in_half};
use kcl_tests::{LocalAws, unique_name};

use crate::kpl::run_script;
use crate::probe_fleet::{
    SharedBoard, Worker, check_complete_and_ordered, check_per_key_order, wait_for_records,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_sink_and_the_in_memory_sink_pass_the_same_conformance_suite() {
    let memory = InMemorySink::new();
    memory.create_stream("conformance", 2);
    conformance::run_all(&memory, "conformance", "missing", |shard| {
        let memory = memory.clone();
        async move {
            memory.split_shard("conformance", &shard);
        }
    })
    .await;

    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let stream = unique_name("sink");
    create_stream(&kinesis, &stream, 2).await;
    let sink = SdkSink::new(&kinesis);
    conformance::run_all(&sink, &stream, &unique_name("missing"), |shard| {
        let (kinesis, stream) = (kinesis.clone(), stream.clone());
        async move { split_in_half(&kinesis, &stream, &shard).await }
    })
    .await;
}

fn aggregating(linger_ms: u64) -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(linger_ms),
        aggregation: Some(AggregationConfig::default()),
        ..Default::default()
    }
}

/// Sends every record (enqueued in order), then waits for each.
async fn send_all(producer: &Producer, records: &[UserRecord]) -> Vec<Written> {
    let mut deliveries = Vec::new();
    for record in records {
        deliveries.push(producer.enqueue(record.clone()).await.expect("enqueued"));
    }
    let mut written = Vec::new();
    for delivery in deliveries {
        written.push(delivery.await.expect("written"));
    }
    written
}

/// A user record as aws-kinesis-agg reads it back.
#[derive(Debug, PartialEq, Eq)]
struct Unpacked {
    seq: String,
    sub: Option<u64>,
    pk: String,
    ehk: Option<String>,
    data: String,
}

/// De-aggregates `records` with aws-kinesis-agg.
fn deaggregate(records: &[RawRecord]) -> Vec<Unpacked> {
    let mut input = String::new();
    for record in records {
        let hex: String = record.data.iter().map(|b| format!("{b:02x}")).collect();
        input.push_str(
            &serde_json::json!({
                "seq": record.sequence_number,
                "pk": record.partition_key,
                "data_hex": hex,
            })
            .to_string(),
        );
        input.push('\n');
    }
    run_script("kpl_deaggregate.py", &input)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let text = |name: &str| value[name].as_str().map(str::to_owned);
            Unpacked {
                seq: text("seq").expect("seq"),
                sub: value["sub"].as_u64(),
                pk: text("pk").expect("pk"),
                ehk: text("ehk"),
                data: text("data").expect("data"),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kinesis_agg_reads_back_every_record_the_producer_aggregated() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let stream = unique_name("produce-agg");
    create_stream(&kinesis, &stream, 2).await;
    let second = open_shards(&kinesis, &stream).await[1].1 + 7;
    // 30 keys, 20 records each; every fifth key routed by an explicit hash
    // key into the second shard.
    let records: Vec<UserRecord> = (0..600)
        .map(|n| {
            let key = format!("k{}", n % 30);
            let record = UserRecord::new(key.clone(), format!("{key}:{}", n / 30));
            if n % 30 % 5 == 0 {
                record.with_explicit_hash_key(second)
            } else {
                record
            }
        })
        .collect();
    let producer = Producer::from_client(&kinesis, &stream, aggregating(50)).unwrap();
    let written = send_all(&producer, &records).await;
    producer.close().await;

    let raw = read_raw_records(&kinesis, &stream).await;
    assert!(raw.len() <= 60, "{} Kinesis records for 600", raw.len());
    let unpacked = deaggregate(&raw);
    assert_eq!(unpacked.len(), records.len(), "each user record once");
    let by_place: HashMap<(&str, Option<u64>), &Unpacked> = unpacked
        .iter()
        .map(|u| ((u.seq.as_str(), u.sub), u))
        .collect();
    for (record, written) in records.iter().zip(&written) {
        let found = by_place[&(&*written.sequence_number, written.sub_sequence_number)];
        assert_eq!(found.data.as_bytes(), &record.data[..]);
        assert_eq!(found.pk, record.partition_key);
        // aws-kinesis-agg (Python) gives a record without an explicit hash
        // key the table's first one when the table is not empty (it reads
        // the absent index as 0); this project's consumer and the Java
        // KCL check that the index is present.
        if let Some(hash) = record.explicit_hash_key {
            assert_eq!(found.ehk, Some(hash.to_string()), "{}", found.data);
        }
    }
    // Per key, in the order sent.
    let mut next: HashMap<&str, u64> = HashMap::new();
    for user in &unpacked {
        let n: u64 = user.data.split_once(':').unwrap().1.parse().unwrap();
        let expected = next.entry(user.pk.as_str()).or_default();
        assert_eq!(n, *expected, "{}", user.data);
        *expected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_processes_every_aggregated_record_across_a_split() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (
        unique_name("produce-split"),
        unique_name("produce-split-app"),
    );
    create_stream(&kinesis, &stream, 2).await;
    let producer = Producer::from_client(&kinesis, &stream, aggregating(20)).unwrap();
    let batch = |round: u64| -> Vec<UserRecord> {
        (0..40)
            .map(|k| UserRecord::new(format!("k{k}"), format!("k{k}:{round}")))
            .collect()
    };
    let mut expected = Vec::new();
    let mut written = Vec::new();
    for round in 0..20 {
        if round == 10 {
            // The producer's map still names the parent: its next
            // aggregates for it land on a child.
            let parent = open_shards(&kinesis, &stream).await[0].0.clone();
            split_in_half(&kinesis, &stream, &parent).await;
        }
        let records = batch(round);
        expected.extend(
            records
                .iter()
                .map(|r| String::from_utf8(r.data.to_vec()).unwrap()),
        );
        written.extend(send_all(&producer, &records).await);
    }
    producer.close().await;
    let children: Vec<String> = open_shards(&kinesis, &stream)
        .await
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert!(
        written[400..]
            .iter()
            .any(|w| children[..2].contains(&w.shard_id.to_string())),
        "records after the split went to the children"
    );
    assert!(
        written[400..].iter().any(|w| w.attempts > 1),
        "no aggregate was misplaced by the stale map: the test missed its case"
    );

    let board = SharedBoard::default();
    let worker = Worker::start(&aws, &app, &stream, "worker-a", &board);
    wait_for_records(&board, expected.len()).await;
    let stats = worker.stop().await;
    let duplicates = check_complete_and_ordered(&board, &expected);
    check_per_key_order(&board);
    // Records of the misplaced aggregate that belong to the other child
    // are delivered from it and again from their own shard: at least once.
    assert!(
        duplicates as u64 <= stats.records_outside_shard_delivered,
        "{duplicates} duplicates, {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_and_failed_calls_are_retried_and_close_writes_everything() {
    let aws = LocalAws::connect();
    let stream = unique_name("produce-faults");
    create_stream(&aws.kinesis(), &stream, 2).await;
    let proxy = FaultProxy::start(&aws.kinesis_endpoint).await;
    let mut through = aws.clone();
    through.kinesis_endpoint = proxy.endpoint();
    let config = ProducerConfig {
        linger: Duration::from_millis(10),
        backoff: kcl_producer::backoff::BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            multiplier: 2.0,
            max_attempts: None,
        },
        ..Default::default()
    };
    let producer = Producer::from_client(&through.kinesis(), &stream, config).unwrap();

    proxy.set(Fault::Throttle);
    let records: Vec<UserRecord> = (0..300)
        .map(|n| UserRecord::new(format!("k{}", n % 10), format!("k{}:{}", n % 10, n / 10)))
        .collect();
    let mut deliveries = Vec::new();
    for record in &records[..150] {
        deliveries.push(producer.enqueue(record.clone()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One call takes effect but its answer is lost; then all is well.
    proxy.set_once(Fault::AppliedThenServerError);
    proxy.set(Fault::None);
    for record in &records[150..] {
        deliveries.push(producer.enqueue(record.clone()).await.unwrap());
    }
    producer.close().await;
    for delivery in deliveries {
        delivery.await.expect("written before close returned");
    }
    let requests = proxy.requests();
    assert!(requests[&("PutRecords".to_owned(), "throttled")] > 0);
    assert_eq!(
        requests.get(&("PutRecords".to_owned(), "applied_then_server_error")),
        Some(&1)
    );

    let raw = read_raw_records(&aws.kinesis(), &stream).await;
    let data: Vec<String> = raw
        .iter()
        .map(|r| String::from_utf8(r.data.clone()).unwrap())
        .collect();
    // Every record, per key in order of first appearance.
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for value in &data {
        if !seen.insert(value.clone()) {
            continue;
        }
        let (key, n) = value.split_once(':').unwrap();
        let expected = next.entry(key.to_owned()).or_default();
        assert_eq!(n.parse::<u64>().unwrap(), *expected, "{value}");
        *expected += 1;
    }
    assert_eq!(seen.len(), records.len(), "none lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_the_producers_own_not_the_sdks() {
    let aws = LocalAws::connect();
    let stream = unique_name("produce-attempts");
    create_stream(&aws.kinesis(), &stream, 1).await;
    let proxy = FaultProxy::start(&aws.kinesis_endpoint).await;
    let mut through = aws.clone();
    through.kinesis_endpoint = proxy.endpoint();
    // A client with the SDK's standard retries (as aws-config gives).
    let client = through.kinesis();
    let producer = Producer::from_client(&client, &stream, ProducerConfig::default()).unwrap();
    proxy.set_once(Fault::Throttle);
    let written = producer.send(UserRecord::new("k", "x")).await.unwrap();
    producer.close().await;
    // Had the SDK retried the throttled call itself, the producer would
    // have seen one attempt.
    assert_eq!(written.attempts, 2);
    assert_eq!(proxy.requests()[&("PutRecords".to_owned(), "throttled")], 1);
}
