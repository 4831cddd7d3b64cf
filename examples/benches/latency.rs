//! Put-to-process latency with polling and with enhanced fan-out, on the
//! local stack: two `recorder` processes (one per retrieval mode, each its
//! own application) read one 4-shard stream while the `producer` writes
//! 100 records/s for 20 s. Latency is the recorder's processing time minus
//! the producer's send time carried in each record.
//!
//! ```sh
//! scripts/local-aws.sh up && eval "$(scripts/local-aws.sh env)"
//! cargo bench -p kcl-examples --bench latency
//! ```

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kcl_examples::payload::Payload;
use kcl_examples::recorder::read_lines;
use kcl_tests::processes::{Processes, lease_owners, start_recorder, terminate};
use kcl_tests::stream::create_stream;
use kcl_tests::{LocalAws, output_dir, unique_name};

const RECORDER: &str = env!("CARGO_BIN_EXE_recorder");
const PRODUCER: &str = env!("CARGO_BIN_EXE_producer");
const RECORDS: usize = 2_000;

#[tokio::main]
async fn main() {
    let aws = LocalAws::connect();
    let stream = unique_name("latency");
    create_stream(&aws.kinesis(), &stream, 4).await;
    let out = output_dir("latency-out");
    let dir = out.path();
    let modes = [("polling", "polling"), ("fan-out", "fanout")];
    let mut processes = Processes::default();
    let mut outputs = Vec::new();
    for (name, flag) in modes {
        let app = unique_name(&format!("latency-{flag}"));
        let output = dir.join(format!("{flag}.jsonl"));
        let flags = ["--retrieval", flag, "--assignment-interval-ms", "1000"];
        processes.0.push(start_recorder(
            RECORDER, &aws, &stream, &app, name, &output, &flags,
        ));
        wait_for_leases(&aws, &app).await;
        outputs.push((name, output));
    }

    let status = Command::new(PRODUCER)
        .args(["--stream", &stream, "--keys", "8", "--rate", "100"])
        .args(["--count", &RECORDS.to_string()])
        .env("AWS_ENDPOINT_URL_KINESIS", &aws.kinesis_endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "kcllocalaccesskey")
        .env("AWS_SECRET_ACCESS_KEY", "kcllocalsecretkey")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run producer");
    assert!(status.success(), "producer failed");
    let deadline = Instant::now() + Duration::from_secs(60);
    while outputs.iter().any(|(_, path)| lines(path) < RECORDS) {
        assert!(Instant::now() < deadline, "records missing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for child in &mut processes.0 {
        terminate(child);
        let _ = child.wait();
    }

    println!("put-to-process latency, {RECORDS} records at 100/s over 4 shards, default settings");
    for (name, path) in &outputs {
        let mut latencies: Vec<u64> = read_lines(path)
            .expect("recorder output")
            .iter()
            .filter_map(|line| {
                let payload = Payload::from_bytes(line.data.as_bytes()).ok()?;
                Some(line.processed_ms.saturating_sub(payload.sent_ms))
            })
            .collect();
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        println!(
            "{name:>8}: p50 {} ms, p99 {} ms, max {} ms ({} records)",
            at(0.5),
            at(0.99),
            at(1.0),
            latencies.len()
        );
    }
}

async fn wait_for_leases(aws: &LocalAws, app: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while lease_owners(aws, app).await.values().sum::<usize>() < 4 {
        assert!(Instant::now() < deadline, "{app} never took its leases");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn lines(path: &Path) -> usize {
    read_lines(path).map_or(0, |l| l.len())
}
