//! `kcl-admin`: operating a consumer group on a live fleet.
//!
//! - `status`: the workers (heartbeat age, draining, leases held) and the
//!   leases (shard, owner, checkpoint, parents and children, state);
//! - `lag`: per shard, how far the group's checkpoint is behind the newest
//!   record (no worker needs to run);
//! - `lineage`: the shard tree with each shard's lease state;
//! - `evict`: ask a live worker to hand all its leases over without
//!   stopping (`--cancel` to undo);
//! - `reset`: move the group's position (`--trim-horizon`, `--latest`,
//!   `--at-timestamp TIME`) while its workers run, `--dry-run` to see the
//!   plan;
//! - `split-shard`: split an open shard of a stream in half (for the demo
//!   and tests);
//! - `verify`: read `recorder` output files and report what was processed,
//!   lost, duplicated, and any per-key order violation (exit 1 if records
//!   were lost or processed out of order).
//!
//! Exit codes: 0 done; 1 refused or failed, with the reason on standard
//! error (a usage error included). `--output json` prints the report as
//! JSON instead of a table. AWS access comes from the standard chain
//! (`aws-config`), with `AWS_ENDPOINT_URL_*` for the local stack.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use aws_config::BehaviorVersion;
use clap::{Parser, Subcommand, ValueEnum};
use kcl_core::kinesis::{Kinesis, SdkKinesis};
use kcl_examples::payload::Payload;
use kcl_examples::recorder::read_lines;
use kcl_lease::DynamoDbLeaseStore;
use serde::Serialize;

/// Command-line settings.
#[derive(Parser, Debug)]
#[command(
    name = "kcl-admin",
    about = "Look at and act on a Kinesis consumer group while its workers run",
    after_help = "Exit codes: 0 done; 1 refused or failed (the reason on standard error)."
)]
struct Args {
    /// The application's name: its lease table's name.
    #[arg(long, global = true, env = "KCL_APPLICATION_NAME")]
    application_name: Option<String>,
    /// The stream (for `lag` and `lineage` of an application of one
    /// stream; a filter by name in a multi-stream table).
    #[arg(long, global = true, env = "KCL_STREAM_NAME")]
    stream_name: Option<String>,
    /// How to print the report.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// How a report is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// A readable table.
    Table,
    /// One JSON document.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The application's workers (heartbeat age, draining, leases held) and
    /// its leases (shard, state, owner, checkpoint, parents and children).
    Status,
    /// Per shard, how far the group's checkpoint is behind the newest
    /// record, in milliseconds, and the largest and total. Reads Kinesis
    /// (one GetRecords after each checkpoint); no worker needs to run.
    Lag,
    /// The shard tree, parents before children, with each shard's lease
    /// state (and, given --stream-name, whether Kinesis lists it open).
    Lineage,
    /// Move the group's position while its workers run: every affected
    /// shard is processed again from the new position within about two
    /// assignment rounds, parents before children. The workers holding the
    /// shards are fenced (their checkpoints fail) and go on from the new
    /// position without a restart.
    #[command(group(
        clap::ArgGroup::new("target")
            .required(true)
            .args(["trim_horizon", "latest", "at_timestamp"])
    ))]
    Reset {
        /// From the oldest record of every shard.
        #[arg(long)]
        trim_horizon: bool,
        /// From now: the backlog is skipped, nothing written from now on is.
        #[arg(long)]
        latest: bool,
        /// From the first record at or after TIME: RFC 3339
        /// (2026-12-06T10:00:00Z, offsets allowed) or milliseconds since
        /// the Unix epoch.
        #[arg(long, value_name = "TIME")]
        at_timestamp: Option<String>,
        /// Only this shard and its descendants (repeatable); default: every
        /// shard of the stream.
        #[arg(long = "shard", value_name = "ID")]
        shards: Vec<String>,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Reset even though no worker runs (they start from the new
        /// position).
        #[arg(long)]
        while_stopped: bool,
    },
    /// Ask a live worker to hand all its leases over and take none, without
    /// stopping it (to drain a node); it does so from its next assignment
    /// round. Lasts until cancelled or until the worker's process stops.
    Evict {
        /// The worker.
        #[arg(long)]
        worker_id: String,
        /// Let the worker take leases again.
        #[arg(long)]
        cancel: bool,
        /// Wait up to this many seconds for the worker to hold no lease
        /// (exit 1 if it still holds some).
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
    /// Split an open shard in the middle of its hash key range.
    SplitShard {
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
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            // Help and version are answers, not failures.
            let code = if error.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
            let _ = error.print();
            return code;
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("kcl-admin: {error}");
            ExitCode::FAILURE
        }
    }
}

type Outcome = Result<bool, Box<dyn std::error::Error>>;

async fn run(args: Args) -> Outcome {
    let application = || {
        args.application_name.clone().ok_or(
            "this command needs the application: give --application-name (or KCL_APPLICATION_NAME)",
        )
    };
    let stream = || {
        args.stream_name
            .clone()
            .ok_or("this command needs the stream: give --stream-name (or KCL_STREAM_NAME)")
    };
    match &args.command {
        Command::Status => {
            let application = application()?;
            let (store, _) = clients(&application).await;
            let status = kcl_admin::status::read(&store, &application).await?;
            print(args.output, &status, || status.to_table())
        }
        Command::Lag => {
            let application = application()?;
            let (store, kinesis) = clients(&application).await;
            let lag = kcl_admin::lag::measure(
                &store,
                &kinesis,
                &application,
                args.stream_name.as_deref(),
            )
            .await?;
            print(args.output, &lag, || lag.to_table())
        }
        Command::Lineage => {
            let application = application()?;
            let (store, kinesis) = clients(&application).await;
            let stream = args.stream_name.as_deref();
            let lineage = kcl_admin::lineage::read(
                &store,
                &application,
                stream.map(|stream| (&kinesis as &dyn Kinesis, stream)),
            )
            .await?;
            print(args.output, &lineage, || lineage.to_table())
        }
        Command::Reset {
            trim_horizon: _,
            latest,
            at_timestamp,
            shards,
            dry_run,
            while_stopped,
        } => {
            let target = match (latest, at_timestamp) {
                (true, _) => kcl_admin::reset::Target::Latest,
                (false, Some(time)) => {
                    kcl_admin::reset::Target::AtTimestamp(kcl_admin::reset::parse_time(time)?)
                }
                (false, None) => kcl_admin::reset::Target::TrimHorizon,
            };
            let request = kcl_admin::reset::ResetRequest {
                application: application()?,
                stream: stream()?,
                target,
                only: shards.iter().cloned().collect(),
                dry_run: *dry_run,
                while_stopped: *while_stopped,
            };
            let (store, kinesis) = clients(&request.application).await;
            let plan = kcl_admin::reset::reset(&store, &kinesis, &request).await?;
            print(args.output, &plan, || plan.to_table())
        }
        Command::Evict {
            worker_id,
            cancel,
            wait,
        } => {
            let application = application()?;
            let (store, _) = clients(&application).await;
            let eviction = kcl_admin::evict::evict(
                &store,
                &application,
                worker_id,
                *cancel,
                wait.map(std::time::Duration::from_secs),
            )
            .await?;
            print(args.output, &eviction, || eviction.to_table())?;
            Ok(eviction.drained != Some(false))
        }
        Command::SplitShard { shard_id } => split_shard(&stream()?, shard_id.clone()).await,
        Command::Verify { produced, files } => verify(*produced, files),
    }
}

/// The lease store and Kinesis client of `application`, from the standard
/// AWS configuration chain.
async fn clients(application: &str) -> (DynamoDbLeaseStore, SdkKinesis) {
    let aws = aws_config::defaults(BehaviorVersion::latest()).load().await;
    (
        DynamoDbLeaseStore::new(&aws_sdk_dynamodb::Client::new(&aws), application),
        SdkKinesis::new(&aws_sdk_kinesis::Client::new(&aws)),
    )
}

/// Prints `report` as JSON or as its table.
fn print(output: Output, report: &impl Serialize, table: impl FnOnce() -> String) -> Outcome {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(report)?),
        Output::Table => print!("{}", table()),
    }
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
