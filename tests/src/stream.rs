//! Streams for tests: create one on kinesis-mock and write records to it.

use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};

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
            "stream {stream} not active after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `count` records to `stream`, spread over `keys` partition keys,
/// with data `KEY:N` where N counts the key's records from `first`. Returns
/// the data written, in order.
///
/// # Panics
/// If a record cannot be written after retries.
pub async fn put_records(
    kinesis: &Client,
    stream: &str,
    keys: usize,
    first: usize,
    count: usize,
) -> Vec<String> {
    let data: Vec<(String, String)> = (first..first + count)
        .map(|n| {
            let key = format!("k{}", n % keys);
            let value = format!("{key}:{}", n / keys);
            (key, value)
        })
        .collect();
    for chunk in data.chunks(100) {
        let mut pending: Vec<&(String, String)> = chunk.iter().collect();
        for _attempt in 0..20 {
            if pending.is_empty() {
                break;
            }
            let entries = pending
                .iter()
                .map(|(key, value)| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(key)
                        .data(Blob::new(value.as_bytes()))
                        .build()
                        .expect("entry")
                })
                .collect::<Vec<_>>();
            let output = kinesis
                .put_records()
                .stream_name(stream)
                .set_records(Some(entries))
                .send()
                .await
                .expect("put records");
            pending = pending
                .into_iter()
                .zip(output.records())
                .filter(|(_, result)| result.error_code().is_some())
                .map(|(entry, _)| entry)
                .collect();
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert!(pending.is_empty(), "records not accepted after retries");
    }
    data.into_iter().map(|(_, value)| value).collect()
}
