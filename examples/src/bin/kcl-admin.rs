//! Operator commands for a fleet (used by the demo):
//! - `leases`: the lease table and the workers' heartbeats, one line each;
//! - `split-shard`: split an open shard of a stream in half;
//! - `verify`: read `recorder` output files and report what was processed,
//!   lost, duplicated, and any per-key order violation (exit 1 if records
//!   were lost or processed out of order).
//!
//! AWS access comes from the standard chain (`aws-config`), with
//! `AWS_ENDPOINT_URL_*` for the local stack.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use aws_config::BehaviorVersion;
use clap::{Parser, Subcommand};
use kcl_core::checkpoint::ExtendedSequenceNumber;
use kcl_core::kinesis::{Kinesis, SdkKinesis};
use kcl_examples::payload::Payload;
use kcl_examples::recorder::read_lines;
use kcl_lease::{DynamoDbLeaseStore, LeaseStore};

/// Command-line settings.
#[derive(Parser, Debug)]
#[command(about = "Look at and act on a Kinesis consumer fleet")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the lease table and the workers' heartbeats.
    Leases {
        /// The application name (the lease table's name).
        #[arg(long, env = "KCL_APPLICATION_NAME")]
        application_name: String,
    },
    /// Split an open shard in the middle of its hash key range.
    SplitShard {
        /// The stream.
        #[arg(long, env = "KCL_STREAM_NAME")]
        stream_name: String,
        /// The shard to split (default: the first open shard).
        #[arg(long)]
        shard_id: Option<String>,
    },
    /// Check recorder output files against what the producer wrote
    /// (`KEY:COUNTER:SENT_MS` payloads, counters from 0 per key).
    Verify {
        /// How many records the producer wrote.
        #[arg(long)]
        produced: usize,
        /// Recorder output files.
        files: Vec<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Leases { application_name } => leases(&application_name).await,
        Command::SplitShard {
            stream_name,
            shard_id,
        } => split_shard(&stream_name, shard_id).await,
        Command::Verify { produced, files } => verify(produced, &files),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("kcl-admin: {error}");
            ExitCode::FAILURE
        }
    }
}

type Outcome = Result<bool, Box<dyn std::error::Error>>;

async fn leases(application_name: &str) -> Outcome {
    let aws = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let store = DynamoDbLeaseStore::new(&aws_sdk_dynamodb::Client::new(&aws), application_name);
    let mut leases = store.list_leases().await?;
    leases.sort_by(|a, b| a.key.cmp(&b.key));
    // A multi-stream application's leases name their stream.
    let streams = leases.iter().any(|lease| lease.stream.is_some());
    if streams {
        print!("{:<32} ", "stream");
    }
    println!("{:<22} {:<16} {:<14} notes", "shard", "owner", "checkpoint");
    for lease in &leases {
        let checkpoint = match &lease.checkpoint {
            ExtendedSequenceNumber::Record { sequence, .. } => {
                let digits = sequence.as_str();
                format!("…{}", &digits[digits.len().saturating_sub(8)..])
            }
            other => other.to_string(),
        };
        let mut notes = Vec::new();
        if let Some(from) = &lease.checkpoint_owner {
            notes.push(format!("handing over from {from}"));
        }
        if !lease.parent_shard_ids.is_empty() {
            let parents: Vec<&str> = lease.parent_shard_ids.iter().map(String::as_str).collect();
            notes.push(format!("parents {}", parents.join(",")));
        }
        if !lease.child_shard_ids.is_empty() {
            let children: Vec<&str> = lease.child_shard_ids.iter().map(String::as_str).collect();
            notes.push(format!("children {}", children.join(",")));
        }
        if streams {
            let stream = lease.stream.as_ref().map(ToString::to_string);
            print!("{:<32} ", stream.as_deref().unwrap_or("-"));
        }
        println!(
            "{:<22} {:<16} {:<14} {}",
            lease.shard_id(),
            lease.owner.as_deref().unwrap_or("-"),
            checkpoint,
            notes.join("; ")
        );
    }
    let mut workers = store.list_heartbeats().await?;
    workers.sort_by(|a, b| a.worker.cmp(&b.worker));
    let names: Vec<String> = workers
        .iter()
        .map(|w| {
            if w.draining {
                format!("{} (draining)", w.worker)
            } else {
                w.worker.clone()
            }
        })
        .collect();
    println!("workers with a heartbeat: {}", names.join(", "));
    Ok(true)
}

async fn split_shard(stream: &str, shard_id: Option<String>) -> Outcome {
    let aws = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let client = aws_sdk_kinesis::Client::new(&aws);
    let shards = SdkKinesis::new(&client).list_shards(stream).await?;
    let shard = shards
        .iter()
        .filter(|s| s.is_open())
        .find(|s| shard_id.as_ref().is_none_or(|id| *id == s.shard_id))
        .ok_or("no such open shard")?;
    let range = shard.hash_key_range;
    let middle = range.start + (range.end - range.start) / 2 + 1;
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(&shard.shard_id)
        .new_starting_hash_key(middle.to_string())
        .send()
        .await
        .map_err(|e| aws_sdk_kinesis::error::DisplayErrorContext(e).to_string())?;
    println!("split {} at hash key {middle}", shard.shard_id);
    Ok(true)
}

fn verify(produced: usize, files: &[PathBuf]) -> Outcome {
    let mut lines = Vec::new();
    let mut by_worker: BTreeMap<String, usize> = BTreeMap::new();
    for file in files {
        for line in read_lines(file)? {
            *by_worker.entry(line.worker.clone()).or_default() += 1;
            lines.push(line);
        }
    }
    // First processing of each record, in processing order.
    lines.sort_by_key(|l| l.processed_ms);
    let mut copies: HashMap<(&str, &str), usize> = HashMap::new();
    let mut first_ms: HashMap<(String, u64), u64> = HashMap::new();
    let mut unreadable = 0;
    for line in &lines {
        // The same payload in two streams is two records.
        let record = (
            line.stream.as_deref().unwrap_or_default(),
            line.data.as_str(),
        );
        *copies.entry(record).or_default() += 1;
        match Payload::from_bytes(line.data.as_bytes()).ok() {
            Some(payload) => {
                first_ms
                    .entry((payload.key, payload.counter))
                    .or_insert(line.processed_ms);
            }
            None => unreadable += 1,
        }
    }
    let distinct = copies.len();
    let duplicates = lines.len() - distinct;
    let lost = produced.saturating_sub(distinct);
    let mut counters: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (key, counter) in first_ms.keys() {
        counters.entry(key).or_default().push(*counter);
    }
    let mut gaps = 0;
    let mut order_violations = 0;
    for (key, list) in &mut counters {
        list.sort_unstable();
        for (expected, counter) in list.iter().enumerate() {
            if *counter != expected as u64 {
                gaps += 1;
                break;
            }
        }
        for pair in list.windows(2) {
            let earlier = first_ms[&((*key).to_owned(), pair[0])];
            let later = first_ms[&((*key).to_owned(), pair[1])];
            if later < earlier {
                order_violations += 1;
            }
        }
    }
    println!("records produced:  {produced}");
    println!("records processed: {} ({distinct} distinct)", lines.len());
    println!("records lost:      {lost}");
    println!("duplicates:        {duplicates} (replays after a killed worker's last checkpoint)");
    println!("keys with a gap:   {gaps}");
    println!("per-key order violations: {order_violations}");
    if unreadable > 0 {
        println!("unreadable payloads: {unreadable}");
    }
    let per_worker: Vec<String> = by_worker.iter().map(|(w, n)| format!("{w}={n}")).collect();
    println!("records per worker: {}", per_worker.join(" "));
    Ok(lost == 0 && gaps == 0 && order_violations == 0 && unreadable == 0)
}
