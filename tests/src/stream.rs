//! Streams for tests: create one on kinesis-mock and write records to it
//! (through the producer library, `kcl-producer`).

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::StreamStatus;
use kcl_producer::{Producer, ProducerConfig, UserRecord};

/// Creates `stream` with `shards` shards and waits until it is active.
///
/// # Panics
/// If kinesis-mock refuses or the stream is not active within 30 s.
pub async fn create_stream(kinesis: &Client, stream: &str, shards: i32) {
    kinesis
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await
        .expect("create stream");
    wait_active(kinesis, stream).await;
}

/// A producer for tests: per-key order, a short linger (so put-to-process
/// latency stays low), retrying until each record is written.
fn test_producer(kinesis: &Client, stream: &str) -> Producer {
    let config = ProducerConfig {
        linger: Duration::from_millis(5),
        record_ttl: None,
        ..Default::default()
    };
    Producer::from_client(kinesis, stream, config).expect("a valid producer config")
}

/// Writes `count` records to `stream`, spread over `keys` partition keys,
/// with data `KEY:N` where N counts the key's records from `first`. Returns
/// the data written, in order.
///
/// # Panics
/// If a record cannot be written.
pub async fn put_records(
    kinesis: &Client,
    stream: &str,
    keys: usize,
    first: usize,
    count: usize,
) -> Vec<String> {
    let producer = test_producer(kinesis, stream);
    let mut deliveries = Vec::with_capacity(count);
    for n in first..first + count {
        let key = format!("k{}", n % keys);
        let value = format!("{key}:{}", n / keys);
        let delivery = producer
            .enqueue(UserRecord::new(key, value.clone()))
            .await
            .expect("a valid record");
        deliveries.push((value, delivery));
    }
    producer.close().await;
    let mut written = Vec::with_capacity(count);
    for (value, delivery) in deliveries {
        delivery.await.expect("record written");
        written.push(value);
    }
    written
}

/// Waits until `stream` is active again (after a reshard).
///
/// # Panics
/// If it is not active within 30 s.
pub async fn wait_active(kinesis: &Client, stream: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let summary = kinesis
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .expect("describe stream");
        if summary
            .stream_description_summary()
            .map(|s| s.stream_status())
            == Some(&StreamStatus::Active)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stream} not active after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes one record with `data` to the shard whose hash key range starts
/// at `hash_key` (given explicitly), and returns its sequence number.
///
/// # Panics
/// If the record cannot be written, or lands on a shard other than
/// `shard_id`.
pub async fn put_to_shard(
    kinesis: &Client,
    stream: &str,
    shard_id: &str,
    hash_key: u128,
    data: &str,
) -> String {
    let put = kinesis
        .put_record()
        .stream_name(stream)
        .partition_key("any")
        .explicit_hash_key(hash_key.to_string())
        .data(Blob::new(data.as_bytes()))
        .send()
        .await
        .expect("put a record");
    assert_eq!(put.shard_id(), shard_id, "the record went to another shard");
    put.sequence_number().to_owned()
}

/// Every shard of `stream`, open or closed, following pagination.
///
/// # Panics
/// If Kinesis refuses a call.
async fn all_shards(kinesis: &Client, stream: &str) -> Vec<aws_sdk_kinesis::types::Shard> {
    let mut shards = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        let request = match &next_token {
            Some(token) => kinesis.list_shards().next_token(token),
            None => kinesis.list_shards().stream_name(stream),
        };
        let page = request.send().await.expect("list shards");
        shards.extend(page.shards().iter().cloned());
        match page.next_token() {
            Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
            _ => return shards,
        }
    }
}

/// The stream's open shards: id and hash key range, by starting hash key.
pub async fn open_shards(kinesis: &Client, stream: &str) -> Vec<(String, u128, u128)> {
    let mut shards = Vec::new();
    for shard in all_shards(kinesis, stream).await {
        let open = shard
            .sequence_number_range()
            .is_some_and(|r| r.ending_sequence_number().is_none());
        if let (true, Some(range)) = (open, shard.hash_key_range()) {
            shards.push((
                shard.shard_id().to_owned(),
                range.starting_hash_key().parse().expect("hash key"),
                range.ending_hash_key().parse().expect("hash key"),
            ));
        }
    }
    shards.sort_by_key(|s| s.1);
    shards
}

/// A record as Kinesis stores it (an aggregate stays packed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// The shard it is in.
    pub shard_id: String,
    /// Its sequence number.
    pub sequence_number: String,
    /// Its partition key.
    pub partition_key: String,
    /// Its data.
    pub data: Vec<u8>,
}

/// Every record of every shard of `stream`, open or closed: shard by
/// shard, each in sequence order.
///
/// # Panics
/// If Kinesis refuses a call.
pub async fn read_raw_records(kinesis: &Client, stream: &str) -> Vec<RawRecord> {
    let shard_ids: Vec<String> = all_shards(kinesis, stream)
        .await
        .iter()
        .map(|s| s.shard_id().to_owned())
        .collect();
    let mut records = Vec::new();
    for shard_id in shard_ids {
        let mut iterator = kinesis
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(&shard_id)
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("shard iterator")
            .shard_iterator()
            .map(str::to_owned);
        while let Some(current) = iterator {
            let page = kinesis
                .get_records()
                .shard_iterator(&current)
                .send()
                .await
                .expect("get records");
            for record in page.records() {
                records.push(RawRecord {
                    shard_id: shard_id.clone(),
                    sequence_number: record.sequence_number().to_owned(),
                    partition_key: record.partition_key().unwrap_or_default().to_owned(),
                    data: record.data().as_ref().to_vec(),
                });
            }
            let caught_up = page.millis_behind_latest().is_none_or(|m| m == 0);
            if page.records().is_empty() && caught_up {
                break;
            }
            iterator = page.next_shard_iterator().map(str::to_owned);
        }
    }
    records
}

/// Splits the open shard `shard_id` in the middle of its hash range and
/// waits until the stream is active.
pub async fn split_in_half(kinesis: &Client, stream: &str, shard_id: &str) {
    let shards = open_shards(kinesis, stream).await;
    let (_, start, end) = shards
        .iter()
        .find(|s| s.0 == shard_id)
        .expect("an open shard");
    let middle = start + (end - start) / 2 + 1;
    kinesis
        .split_shard()
        .stream_name(stream)
        .shard_to_split(shard_id)
        .new_starting_hash_key(middle.to_string())
        .send()
        .await
        .expect("split shard");
    wait_active(kinesis, stream).await;
}

/// Merges two adjacent open shards and waits until the stream is active.
pub async fn merge(kinesis: &Client, stream: &str, shard_id: &str, adjacent: &str) {
    kinesis
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge(shard_id)
        .adjacent_shard_to_merge(adjacent)
        .send()
        .await
        .expect("merge shards");
    wait_active(kinesis, stream).await;
}

/// Changes the number of open shards (uniform scaling) and waits until the
/// stream is active.
pub async fn update_shard_count(kinesis: &Client, stream: &str, target: i32) {
    kinesis
        .update_shard_count()
        .stream_name(stream)
        .target_shard_count(target)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await
        .expect("update shard count");
    wait_active(kinesis, stream).await;
}

/// Writes records with per-key counters in the background, one record per
/// key every `interval`, through the producer library with per-key order.
pub struct OrderedProducer {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl OrderedProducer {
    /// Starts writing `k<key>:<n>` for `keys` keys, one round every
    /// `interval`.
    pub fn start(kinesis: Client, stream: &str, keys: usize, interval: Duration) -> Self {
        Self::start_with_prefix(kinesis, stream, "k", keys, interval)
    }

    /// Like [`start`](Self::start), with keys named `<prefix><key>` so two
    /// producers on one stream write different keys.
    pub fn start_with_prefix(
        kinesis: Client,
        stream: &str,
        prefix: &str,
        keys: usize,
        interval: Duration,
    ) -> Self {
        let prefix = prefix.to_owned();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let producer = test_producer(&kinesis, stream);
        let task = tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut round = 0u64;
            while !*stopped.borrow_and_update() {
                for key in 0..keys {
                    let (key, value) = (format!("{prefix}{key}"), format!("{prefix}{key}:{round}"));
                    let delivery = producer
                        .enqueue(UserRecord::new(key, value.clone()))
                        .await
                        .expect("a valid record");
                    sent.push((value, delivery));
                }
                round += 1;
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    _ = stopped.changed() => {}
                }
            }
            producer.close().await;
            let mut written = Vec::with_capacity(sent.len());
            for (value, delivery) in sent {
                delivery.await.expect("record written");
                written.push(value);
            }
            written
        });
        Self { stop, task }
    }

    /// Stops, waits until every record sent is written, and returns them,
    /// in the order sent.
    pub async fn stop(self) -> Vec<String> {
        let _ = self.stop.send(true);
        self.task.await.expect("producer task")
    }
}

/// The identifier (`account:stream:epoch`) a multi-stream application
/// gives `stream`: the account from its ARN, the epoch from its creation
/// time in seconds.
///
/// # Panics
/// If the stream cannot be described.
pub async fn stream_identifier(kinesis: &Client, stream: &str) -> String {
    let summary = kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .expect("describe the stream");
    let summary = summary
        .stream_description_summary()
        .expect("a stream description");
    let account = summary.stream_arn().split(':').nth(4).unwrap_or_default();
    let epoch = summary.stream_creation_timestamp().secs();
    format!("{account}:{stream}:{epoch}")
}
