//! KPL aggregates made by AWS's own aggregation library (the PyPI package
//! aws-kinesis-agg, installed by `scripts/python-tools.sh`), put to
//! kinesis-mock and read by a worker: every user record is delivered once,
//! in order, with its own partition key and explicit hash key.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use aws_sdk_kinesis::primitives::Blob;
use kcl_tests::stream::{create_stream, open_shards};
use kcl_tests::{LocalAws, unique_name};

use crate::probe_fleet::{SharedBoard, Worker, check_complete_and_ordered, wait_for_records};

/// The Python with aws-kinesis-agg: `KCL_TEST_PYTHON` (set by
/// `scripts/test.sh`), else the one `scripts/python-tools.sh` installs.
fn python() -> String {
    std::env::var("KCL_TEST_PYTHON").unwrap_or_else(|_| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let output = Command::new(format!("{root}/scripts/python-tools.sh"))
            .output()
            .expect("run scripts/python-tools.sh");
        assert!(output.status.success(), "scripts/python-tools.sh failed");
        String::from_utf8(output.stdout)
            .expect("a path")
            .trim()
            .to_owned()
    })
}

/// One aggregate to put: partition key, explicit hash key, bytes.
struct Aggregate {
    pk: String,
    ehk: Option<String>,
    data: Vec<u8>,
}

/// Aggregates `records` (partition key, explicit hash key, data) with
/// aws-kinesis-agg, per shard as the KPL does.
fn aggregate(
    shards: &[(String, u128, u128)],
    records: &[(String, Option<String>, String)],
) -> Vec<Aggregate> {
    run_aggregator(shards, records, false)
}

/// Aggregates `records` with aws-kinesis-agg, keys of every shard mixed in
/// one aggregate, as applications using the library directly do.
fn aggregate_mixed(records: &[(String, Option<String>, String)]) -> Vec<Aggregate> {
    run_aggregator(&[], records, true)
}

fn run_aggregator(
    shards: &[(String, u128, u128)],
    records: &[(String, Option<String>, String)],
    mix: bool,
) -> Vec<Aggregate> {
    let request = format!(
        "{{\"shards\": [{}], \"records\": [{}], \"per_aggregate\": 20, \"mix\": {mix}}}",
        shards
            .iter()
            .map(|(_, start, end)| format!("[\"{start}\", \"{end}\"]"))
            .collect::<Vec<_>>()
            .join(","),
        records
            .iter()
            .map(|(pk, ehk, data)| {
                let ehk = ehk
                    .as_ref()
                    .map_or("null".to_owned(), |e| format!("\"{e}\""));
                format!("[\"{pk}\", {ehk}, \"{data}\"]")
            })
            .collect::<Vec<_>>()
            .join(","),
    );
    run_script("kpl_aggregate.py", &request)
        .lines()
        .map(|line| Aggregate {
            pk: field(line, "pk").expect("pk"),
            ehk: field(line, "ehk"),
            data: hex(&field(line, "data_hex").expect("data")),
        })
        .collect()
}

/// Runs `scripts/<script>` with the tools' Python, `input` on its standard
/// input; returns its standard output.
pub(crate) fn run_script(script: &str, input: &str) -> String {
    let path = format!("{}/../scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python())
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write the input");
    let output = child.wait_with_output().expect("the script's output");
    assert!(output.status.success(), "{script} failed");
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// A string field of a flat JSON object line (`None` if null or absent).
fn field(line: &str, name: &str) -> Option<String> {
    let after = line.split(&format!("\"{name}\": ")).nth(1)?;
    let value = after.strip_prefix('"')?;
    Some(value[..value.find('"')?].to_owned())
}

fn hex(digits: &str) -> Vec<u8> {
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_from_aws_kinesis_agg_are_delivered_user_record_by_user_record() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (unique_name("kpl"), unique_name("kpl-app"));
    create_stream(&kinesis, &stream, 2).await;
    let shards = open_shards(&kinesis, &stream).await;

    // 12 keys, 20 records each; every third key's records carry an explicit
    // hash key (in the second shard).
    let second_shard_key = (shards[1].1 + 1000).to_string();
    let records: Vec<(String, Option<String>, String)> = (0..240)
        .map(|n| {
            let key = format!("k{}", n % 12);
            let ehk = (n % 12 % 3 == 0).then(|| second_shard_key.clone());
            (key.clone(), ehk, format!("{key}:{}", n / 12))
        })
        .collect();
    let aggregates = aggregate(&shards, &records);
    assert!(aggregates.len() >= 12, "{} aggregates", aggregates.len());
    for aggregate in &aggregates {
        assert!(aggregate.data.starts_with(&[0xF3, 0x89, 0x9A, 0xC2]));
        kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key(&aggregate.pk)
            .set_explicit_hash_key(aggregate.ehk.clone())
            .data(Blob::new(aggregate.data.clone()))
            .send()
            .await
            .expect("put aggregate");
    }

    let board = SharedBoard::default();
    let worker = Worker::start(&aws, &app, &stream, "worker-a", &board);
    wait_for_records(&board, records.len()).await;
    let stats = worker.stop().await;

    let expected: Vec<String> = records.iter().map(|r| r.2.clone()).collect();
    assert_eq!(
        check_complete_and_ordered(&board, &expected),
        0,
        "no duplicates"
    );
    let board = board.lock().unwrap();
    let wanted: HashMap<&str, (&str, Option<&str>)> = records
        .iter()
        .map(|(pk, ehk, data)| (data.as_str(), (pk.as_str(), ehk.as_deref())))
        .collect();
    for seen in &board.seen {
        let (pk, ehk) = wanted[seen.data.as_str()];
        assert_eq!(seen.pk, pk, "{}", seen.data);
        assert_eq!(seen.ehk.as_deref(), ehk, "{}", seen.data);
    }
    // Per key, records arrive in the order they were written.
    let mut next: HashMap<&str, u64> = HashMap::new();
    for seen in &board.seen {
        let n: u64 = seen.data.split_once(':').unwrap().1.parse().unwrap();
        let expected = next.entry(seen.pk.as_str()).or_default();
        assert_eq!(n, *expected, "{}", seen.data);
        *expected += 1;
    }
    assert!(
        board.seen.iter().any(|s| s.subseq > 0),
        "user records carry sub-sequence numbers"
    );
    assert_eq!(stats.malformed_aggregates, 0);
    assert_eq!(stats.records_outside_shard_dropped, 0);
    assert_eq!(stats.records_outside_shard_delivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_mixing_the_keys_of_every_shard_lose_no_record() {
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (unique_name("kpl-mixed"), unique_name("kpl-mixed-app"));
    create_stream(&kinesis, &stream, 4).await;

    // 64 keys, 2,200 user records, packed 20 to an aggregate whatever their
    // keys; a plain record after every aggregate.
    let records: Vec<(String, Option<String>, String)> = (0..2200)
        .map(|n| {
            let key = format!("key-{}", n % 64);
            (key.clone(), None, format!("{key}:{}", n / 64))
        })
        .collect();
    let aggregates = aggregate_mixed(&records);
    assert_eq!(aggregates.len(), 110);
    let mut plain = Vec::new();
    for (n, aggregate) in aggregates.iter().enumerate() {
        for (key, data) in [
            (aggregate.pk.clone(), aggregate.data.clone()),
            (format!("plain-{n}"), format!("plain-{n}").into_bytes()),
        ] {
            kinesis
                .put_record()
                .stream_name(&stream)
                .partition_key(key)
                .set_explicit_hash_key(aggregate.ehk.clone())
                .data(Blob::new(data))
                .send()
                .await
                .expect("put");
        }
        plain.push(format!("plain-{n}"));
    }

    let board = SharedBoard::default();
    let worker = Worker::start(&aws, &app, &stream, "worker-a", &board);
    let total = records.len() + plain.len();
    wait_for_records(&board, total).await;
    let stats = worker.stop().await;

    let board = board.lock().unwrap();
    let mut seen: Vec<&str> = board.seen.iter().map(|s| s.data.as_str()).collect();
    seen.sort_unstable();
    let mut expected: Vec<&str> = records.iter().map(|r| r.2.as_str()).collect();
    expected.extend(plain.iter().map(String::as_str));
    expected.sort_unstable();
    assert_eq!(seen, expected, "every user record and plain record, once");
    // User records carry their place in their aggregate.
    let subseqs: std::collections::BTreeSet<u64> = board
        .seen
        .iter()
        .filter(|s| !s.data.starts_with("plain-"))
        .map(|s| s.subseq)
        .collect();
    assert_eq!(subseqs, (0..20).collect());
    assert!(
        stats.records_outside_shard_delivered > 1000,
        "most user records are outside the shard their aggregate went to: {stats:?}"
    );
    assert_eq!(stats.records_outside_shard_dropped, 0);
}
