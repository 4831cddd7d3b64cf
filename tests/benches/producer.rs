//! Producer figures, for BENCHMARKS.md: records per second per core for
//! 100-byte records, and `PutRecords` calls per 10,000 records, for the
//! producer library (`kcl-producer`) in several settings and for the loop
//! the example producer ran before it moved onto the library (one call per
//! round of one record per key, waiting for each answer).
//!
//! ```sh
//! scripts/local-aws.sh up && eval "$(scripts/local-aws.sh env)"
//! cargo bench -p kcl-tests --bench producer            # 20,000 records per row
//! cargo bench -p kcl-tests --bench producer -- 50000   # more per row
//! ```
//!
//! Rows with aggregation on kinesis-mock write 10 times as many records, and
//! rows on the in-memory stream 20 times as many, so that their CPU time is
//! well above the 10 ms clock tick.
//!
//! Each row writes its records as fast as the producer goes, on one Tokio
//! thread, to a fresh 4-shard stream on kinesis-mock (and, for the library,
//! to the in-memory stream, which leaves the producer's own work alone).
//! "Per core" is records divided by the CPU time of this process (user and
//! system, every thread, from /proc/self/stat), so kinesis-mock's own work,
//! in its own process, is not counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use kcl_producer::memory::InMemorySink;
use kcl_producer::{
    AggregationConfig, EntryResult, Producer, ProducerConfig, PutEntry, PutError, SdkSink,
    ShardRange, Sink, UserRecord,
};
use kcl_tests::stream::create_stream;
use kcl_tests::{LocalAws, unique_name};

const SHARDS: i32 = 4;
const RECORD_BYTES: usize = 100;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; skip flags.
    let records: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    println!(
        "{records} records of {RECORD_BYTES} bytes per row (x10 aggregated on kinesis-mock, x20 in \
         memory), {SHARDS} shards, one Tokio thread"
    );
    println!(
        "{:<52} {:>10} {:>10} {:>12} {:>12}",
        "row", "records/s", "CPU s", "per core", "calls/10k"
    );

    let stream = fresh_stream(&kinesis).await;
    let started = Measure::start();
    let calls = example_loop(&kinesis, &stream, 16, records).await;
    started.report(
        "example producer before the library, 16 keys",
        records,
        calls,
    );

    let rows: [(&str, usize, bool, bool); 6] = [
        ("library, 16 keys, ordered", 16, true, false),
        ("library, 16 keys, ordered, aggregated", 16, true, true),
        ("library, 1,000 keys, ordered", 1000, true, false),
        ("library, 1,000 keys, unordered", 1000, false, false),
        ("library, 1,000 keys, ordered, aggregated", 1000, true, true),
        (
            "library, 1,000 keys, unordered, aggregated",
            1000,
            false,
            true,
        ),
    ];
    for (name, keys, ordering, aggregate) in rows {
        let stream = fresh_stream(&kinesis).await;
        let sink = Counting::new(SdkSink::new(&kinesis));
        // Aggregated rows are quick: more records, for a CPU time well
        // above the clock tick.
        let records = if aggregate { records * 10 } else { records };
        let started = Measure::start();
        library(&sink, &stream, keys, ordering, aggregate, records).await;
        started.report(
            &format!("{name}, kinesis-mock"),
            records,
            sink.calls.load(Ordering::Relaxed),
        );
    }
    for (name, keys, ordering, aggregate) in rows {
        let memory = InMemorySink::new();
        memory.create_stream("bench", SHARDS as u32);
        let sink = Counting::new(memory);
        let many = records * 20;
        let started = Measure::start();
        library(&sink, "bench", keys, ordering, aggregate, many).await;
        started.report(
            &format!("{name}, in memory"),
            many,
            sink.calls.load(Ordering::Relaxed),
        );
    }
}

async fn fresh_stream(kinesis: &Client) -> String {
    let stream = unique_name("produce-bench");
    create_stream(kinesis, &stream, SHARDS).await;
    stream
}

fn payload(n: usize) -> String {
    format!("{n:0width$}", width = RECORD_BYTES)
}

/// The example producer's loop before the library: each round puts one
/// record per key in one `PutRecords` call and waits for the answer;
/// failed records go again in the next round. Returns the calls made.
async fn example_loop(kinesis: &Client, stream: &str, keys: usize, records: usize) -> u64 {
    let mut pending: Vec<usize> = Vec::new();
    let mut next = 0;
    let mut calls = 0;
    while next < records || !pending.is_empty() {
        while pending.len() < keys && next < records {
            pending.push(next);
            next += 1;
        }
        let entries = pending
            .iter()
            .map(|&n| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{}", n % keys))
                    .data(Blob::new(payload(n)))
                    .build()
                    .expect("an entry")
            })
            .collect::<Vec<_>>();
        calls += 1;
        let Ok(output) = kinesis
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
        else {
            continue;
        };
        pending = pending
            .into_iter()
            .zip(output.records())
            .filter(|(_, r)| r.error_code().is_some())
            .map(|(n, _)| n)
            .collect();
    }
    calls
}

/// The library: every record enqueued as fast as the buffer takes it, then
/// a close.
async fn library<S: Sink + Clone>(
    sink: &S,
    stream: &str,
    keys: usize,
    ordering: bool,
    aggregate: bool,
    records: usize,
) {
    let config = ProducerConfig {
        ordering,
        aggregation: aggregate.then(AggregationConfig::default),
        ..Default::default()
    };
    let producer = Producer::new(sink.clone(), stream, config).expect("a valid config");
    let (deliveries, mut pending) = tokio::sync::mpsc::unbounded_channel();
    let confirm = tokio::spawn(async move {
        while let Some(delivery) = pending.recv().await {
            let delivery: kcl_producer::Delivery = delivery;
            delivery.await.expect("written");
        }
    });
    for n in 0..records {
        let record = UserRecord::new(format!("k{}", n % keys), payload(n));
        let delivery = producer.enqueue(record).await.expect("enqueued");
        deliveries.send(delivery).expect("confirm task");
    }
    producer.close().await;
    drop(deliveries);
    confirm.await.expect("every record written");
}

/// Counts `PutRecords` calls.
#[derive(Clone)]
struct Counting<S> {
    inner: S,
    calls: Arc<AtomicU64>,
}

impl<S> Counting<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            calls: Arc::default(),
        }
    }
}

#[async_trait]
impl<S: Sink> Sink for Counting<S> {
    async fn put_records(
        &self,
        stream: &str,
        entries: Vec<PutEntry>,
    ) -> Result<Vec<EntryResult>, PutError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.put_records(stream, entries).await
    }

    async fn open_shards(&self, stream: &str) -> Result<Vec<ShardRange>, PutError> {
        self.inner.open_shards(stream).await
    }
}

/// Wall and CPU time since a start.
struct Measure {
    wall: Instant,
    cpu: Duration,
}

impl Measure {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_time(),
        }
    }

    fn report(self, row: &str, records: usize, calls: u64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = (cpu_time() - self.cpu).as_secs_f64();
        println!(
            "{row:<52} {:>10.0} {cpu:>10.2} {:>12.0} {:>12.1}",
            records as f64 / wall,
            records as f64 / cpu.max(0.01),
            calls as f64 * 10_000.0 / records as f64
        );
    }
}

/// This process's CPU time, user and system, every thread.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses).
    let after = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
