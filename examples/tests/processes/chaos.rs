//! The chaos test: three `recorder` replicas and a producer with per-key
//! counters, while seeded random events hit the fleet:
//! - SIGKILL and restart of a worker (same worker id, as a container
//!   restart does), SIGTERM and restart (a new id, as a rolling deploy does);
//! - a split and a merge of random shards;
//! - faults between one worker and one AWS endpoint, injected by a fault
//!   proxy per worker and service: added latency, dropped connections,
//!   HTTP 500 and throttling answers, for a while;
//! - one worker cut off from DynamoDB (requests held, unanswered) for
//!   longer than the failover time, then let through late.
//!
//! - DynamoDB answering HTTP 500 after the request took effect.
//!
//! The workers start at `LATEST` on an idle stream, and records begin once
//! every lease is held; processors checkpoint after every batch on one
//! replica and every 1 or 3 s on the others, so a cut-off worker keeps
//! processing between checkpoints.
//!
//! At the end it checks: no record lost; per key, records first processed in
//! the order produced; no checkpoint ever moved backwards (the lease table is
//! sampled throughout); a cut-off worker stopped processing within the
//! failover time, processed nothing on a shard after another worker started
//! on it (no zombie output), and every checkpoint it sent during the cut-off
//! failed when it finally arrived. It reports how many records were
//! processed twice, and fails if any of them is not explained by a
//! disruption of the process that processed it first: a SIGKILL, a cut-off,
//! or a fault on its path to DynamoDB (a planned stop or a rebalance move
//! must cost none).
//!
//! The test suite runs a short variant (about a minute of events, seed 1).
//! A longer run, with any seed:
//!
//! ```sh
//! scripts/chaos.sh --seed 7 --seconds 600 [--retrieval fanout]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_examples::recorder::{RecordLine, read_lines};
use kcl_lease::{DynamoDbLeaseStore, LeaseStore};
use kcl_tests::fault_proxy::{Fault, FaultProxy};
use kcl_tests::processes::{Processes, start_recorder, terminate};
use kcl_tests::stream::{OrderedProducer, create_stream, merge, open_shards, split_in_half};
use kcl_tests::{LocalAws, output_dir, unique_name};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::RECORDER;

const REPLICAS: usize = 3;
const SHARDS: i32 = 4;
/// Splits stop at this many open shards (merges take over).
const MAX_OPEN_SHARDS: usize = 8;
const FAILOVER: Duration = Duration::from_millis(3000);
/// How long a cut-off lasts: long enough that the others take its leases.
const CUT_OFF: Duration = Duration::from_millis(8000);
/// Scheduling slack allowed on top of the failover time when checking that
/// a cut-off worker stopped by itself.
const STOP_SLACK_MS: u64 = 1000;

/// How long and with which seed to run, from `KCL_CHAOS_SECONDS` (default
/// 30: after the first round of every kind of event) and `KCL_CHAOS_SEED`
/// (default 1), and how the workers read, from `KCL_CHAOS_RETRIEVAL`
/// (`polling`, the default, or `fanout`).
struct Settings {
    seed: u64,
    duration: Duration,
    retrieval: String,
}

impl Settings {
    fn from_env() -> Self {
        let number = |name: &str, default: u64| match std::env::var(name) {
            Ok(value) => value
                .parse()
                .unwrap_or_else(|_| panic!("{name} must be a whole number, not {value:?}")),
            Err(_) => default,
        };
        let retrieval = std::env::var("KCL_CHAOS_RETRIEVAL").unwrap_or_else(|_| "polling".into());
        assert!(
            ["polling", "fanout"].contains(&retrieval.as_str()),
            "KCL_CHAOS_RETRIEVAL must be polling or fanout, not {retrieval:?}"
        );
        Self {
            seed: number("KCL_CHAOS_SEED", 1),
            duration: Duration::from_secs(number("KCL_CHAOS_SECONDS", 30)),
            retrieval,
        }
    }
}

/// Which endpoint a fault is injected in front of.
#[derive(Clone, Copy, Debug)]
enum Service {
    Kinesis,
    DynamoDb,
}

/// One chaos event. Worker events name a replica slot.
#[derive(Clone, Debug)]
enum Event {
    Kill(usize),
    Terminate(usize),
    Split,
    Merge,
    Fault {
        slot: usize,
        service: Service,
        fault: Fault,
        lasting: Duration,
    },
    CutOff(usize),
}

impl Event {
    /// One of each kind, in a seeded order: every run sees them all.
    fn one_of_each(rng: &mut SmallRng) -> Vec<Event> {
        let mut events = vec![
            Event::Kill(rng.random_range(0..REPLICAS)),
            Event::Terminate(rng.random_range(0..REPLICAS)),
            Event::Split,
            Event::Merge,
            Event::CutOff(rng.random_range(0..REPLICAS)),
        ];
        for fault in [
            Fault::Latency(Duration::from_millis(rng.random_range(100..800))),
            Fault::DropConnections,
            Fault::ServerError,
            Fault::Throttle,
        ] {
            for service in [Service::Kinesis, Service::DynamoDb] {
                events.push(Event::fault(rng, service, fault.clone()));
            }
        }
        events.push(Event::fault(
            rng,
            Service::DynamoDb,
            Fault::AppliedThenServerError,
        ));
        events.shuffle(rng);
        events
    }

    /// A fault on one replica's path to `service`. Faults on DynamoDB last
    /// less than the failover time minus a heartbeat interval, so the worker
    /// rides them out; a longer one is a cut-off, an event of its own.
    fn fault(rng: &mut SmallRng, service: Service, fault: Fault) -> Event {
        let lasting = match service {
            Service::Kinesis => Duration::from_millis(rng.random_range(1000..4000)),
            Service::DynamoDb => Duration::from_millis(rng.random_range(500..1200)),
        };
        Event::Fault {
            slot: rng.random_range(0..REPLICAS),
            service,
            fault,
            lasting,
        }
    }

    /// Any event, at random.
    fn any(rng: &mut SmallRng) -> Event {
        let mut one = Self::one_of_each(rng);
        one.swap_remove(rng.random_range(0..one.len()))
    }
}

/// One replica: its proxies (kept across restarts) and its current process.
struct Slot {
    kinesis: FaultProxy,
    dynamodb: FaultProxy,
    worker: String,
    generation: u32,
    output: PathBuf,
}

/// How long before a disruption a batch may have been processed and not
/// yet checkpointed (the longest checkpoint interval, and a batch).
const IN_FLIGHT_MS: u64 = 5000;

/// How often each replica's processors checkpoint (0: after every batch).
const CHECKPOINT_INTERVAL_MS: [&str; REPLICAS] = ["0", "1000", "3000"];

/// A stretch of time in which a process's checkpoints could be lost, so
/// that records it processed then may be processed again by another.
struct Disruption {
    output: PathBuf,
    from_ms: u64,
    until_ms: u64,
}

impl Disruption {
    /// Whether `output`'s processing at `at_ms` may be repeated because of
    /// this disruption.
    fn explains(&self, output: &PathBuf, at_ms: u64) -> bool {
        self.output == *output
            && (self.from_ms.saturating_sub(IN_FLIGHT_MS)..=self.until_ms).contains(&at_ms)
    }
}

/// A cut-off as it happened, for the checks.
struct CutOff {
    output: PathBuf,
    worker: String,
    from_ms: u64,
    until_ms: u64,
}

struct Fleet {
    aws: LocalAws,
    retrieval: String,
    stream: String,
    app: String,
    dir: PathBuf,
    slots: Vec<Slot>,
    processes: Processes,
    outputs: Vec<PathBuf>,
}

impl Fleet {
    /// Starts (or restarts) the process of `slot`, behind its proxies.
    fn start(&mut self, slot: usize) {
        let entry = &mut self.slots[slot];
        entry.generation += 1;
        entry.output = self
            .dir
            .join(format!("{}-{}.jsonl", entry.worker, entry.generation));
        let mut through = self.aws.clone();
        through.kinesis_endpoint = entry.kinesis.endpoint();
        through.dynamodb_endpoint = entry.dynamodb.endpoint();
        let flags = [
            "--initial-position",
            "latest",
            "--checkpoint-interval-ms",
            CHECKPOINT_INTERVAL_MS[slot],
            "--failover-time-ms",
            "3000",
            // More room for a slow heartbeat than half the failover time
            // leaves (DynamoDB Local sometimes answers a second late).
            "--heartbeat-interval-ms",
            "1000",
            "--assignment-interval-ms",
            "500",
            "--shard-sync-interval-ms",
            "2000",
            "--lease-cleanup-delay-ms",
            "3000",
            "--parent-poll-interval-ms",
            "200",
            "--shutdown-timeout-ms",
            "8000",
            "--retrieval",
            &self.retrieval,
            // kinesis-mock does not report a shard's end in its
            // subscriptions: find it quickly, or every generation of a
            // reshard waits 30 s.
            "--fanout-shard-end-check-ms",
            "2000",
        ];
        let child = start_recorder(
            RECORDER,
            &through,
            &self.stream,
            &self.app,
            &entry.worker,
            &entry.output,
            &flags,
        );
        self.outputs.push(entry.output.clone());
        match self.processes.0.get_mut(slot) {
            Some(place) => *place = child,
            None => self.processes.0.push(child),
        }
    }

    fn child(&mut self, slot: usize) -> &mut Child {
        &mut self.processes.0[slot]
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait for recorder") {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recorder {} still running after {within:?}",
            child.id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples every lease's checkpoint until told to stop; returns how many
/// samples were taken and every backwards move seen.
async fn sample_checkpoints(
    store: DynamoDbLeaseStore,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (usize, Vec<String>) {
    let mut last: BTreeMap<String, ExtendedSequenceNumber> = BTreeMap::new();
    let mut deleted: Vec<String> = Vec::new();
    let mut violations = Vec::new();
    let mut samples = 0;
    while !*stop.borrow_and_update() {
        if let Ok(leases) = store.list_leases().await {
            samples += 1;
            for lease in &leases {
                if deleted.contains(&lease.key) {
                    violations.push(format!("{} came back after it was deleted", lease.key));
                }
                let now = &lease.checkpoint;
                if let Some(before) = last.get(&lease.key) {
                    let positioned = matches!(
                        before,
                        ExtendedSequenceNumber::Record { .. } | ExtendedSequenceNumber::ShardEnd
                    );
                    if positioned && now < before {
                        violations.push(format!(
                            "{}: checkpoint moved back from {before} to {now}",
                            lease.key
                        ));
                    }
                }
                last.insert(lease.key.clone(), now.clone());
            }
            let present: Vec<&String> = leases.iter().map(|l| &l.key).collect();
            for key in last.keys() {
                if !present.contains(&key) && !deleted.contains(key) {
                    deleted.push(key.clone());
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    (samples, violations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_loses_nothing_and_keeps_order_through_crashes_reshards_and_faults() {
    let settings = Settings::from_env();
    let mut rng = SmallRng::seed_from_u64(settings.seed);
    let aws = LocalAws::connect();
    let kinesis = aws.kinesis();
    let (stream, app) = (unique_name("chaos"), unique_name("chaos-app"));
    create_stream(&kinesis, &stream, SHARDS).await;
    let out = output_dir("chaos-out");
    let dir = out.path();
    let mut slots = Vec::new();
    for n in 0..REPLICAS {
        slots.push(Slot {
            kinesis: FaultProxy::start(&aws.kinesis_endpoint).await,
            dynamodb: FaultProxy::start(&aws.dynamodb_endpoint).await,
            worker: format!("w{n}"),
            generation: 0,
            output: PathBuf::new(),
        });
    }
    let mut fleet = Fleet {
        aws: aws.clone(),
        retrieval: settings.retrieval.clone(),
        stream: stream.clone(),
        app: app.clone(),
        dir: dir.to_path_buf(),
        slots,
        processes: Processes::default(),
        outputs: Vec::new(),
    };
    for slot in 0..REPLICAS {
        fleet.start(slot);
    }
    // At LATEST, records written before a shard's first reader started
    // are not promised: begin once every lease is held.
    let leases = DynamoDbLeaseStore::new(&aws.dynamodb(), &app);
    let held_by = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let held = leases.list_leases().await.unwrap_or_default();
        if held.len() == SHARDS as usize && held.iter().all(|l| l.owner.is_some()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < held_by,
            "leases never all held: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (stop_sampling, stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(sample_checkpoints(leases, stopped));
    let producer = OrderedProducer::start(kinesis.clone(), &stream, 16, Duration::from_millis(50));

    println!(
        "chaos: seed {}, {:?} of events, {REPLICAS} replicas, {SHARDS} shards, {} retrieval",
        settings.seed, settings.duration, settings.retrieval
    );
    let started = tokio::time::Instant::now();
    let mut first_round = Event::one_of_each(&mut rng);
    first_round.reverse();
    let mut cut_offs: Vec<CutOff> = Vec::new();
    let mut crashes = 0;
    let mut disruptions: Vec<Disruption> = Vec::new();
    loop {
        let event = match first_round.pop() {
            Some(event) => event,
            None if started.elapsed() < settings.duration => Event::any(&mut rng),
            None => break,
        };
        let pause = Duration::from_millis(rng.random_range(500..2500));
        tokio::time::sleep(pause).await;
        println!(
            "chaos +{:>5.1}s: {event:?}",
            started.elapsed().as_secs_f64()
        );
        match event {
            Event::Kill(slot) => {
                let at = epoch_ms();
                let child = fleet.child(slot);
                child.kill().expect("SIGKILL");
                child.wait().expect("reap");
                crashes += 1;
                disruptions.push(Disruption {
                    output: fleet.slots[slot].output.clone(),
                    from_ms: at,
                    until_ms: at,
                });
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
                fleet.start(slot);
            }
            Event::Terminate(slot) => {
                terminate(fleet.child(slot));
                let status = wait_exit(fleet.child(slot), Duration::from_secs(15)).await;
                assert!(status.success(), "SIGTERM: exited with {status}");
                let entry = &mut fleet.slots[slot];
                entry.worker = format!("w{slot}-{}", entry.generation);
                fleet.start(slot);
            }
            Event::Split | Event::Merge => {
                // A merge needs two adjacent open shards and splits stop at
                // MAX_OPEN_SHARDS: a merge with no pair left becomes a split,
                // a split with too many shards a merge.
                let shards = open_shards(&kinesis, &stream).await;
                let pairs: Vec<(&String, &String)> = shards
                    .windows(2)
                    .filter(|pair| pair[0].2 + 1 == pair[1].1)
                    .map(|pair| (&pair[0].0, &pair[1].0))
                    .collect();
                let split = match event {
                    Event::Split => shards.len() < MAX_OPEN_SHARDS || pairs.is_empty(),
                    _ => pairs.is_empty(),
                };
                if split {
                    let shard = &shards[rng.random_range(0..shards.len())].0;
                    println!("chaos: splitting {shard} ({} open)", shards.len());
                    split_in_half(&kinesis, &stream, shard).await;
                } else {
                    let (left, right) = pairs[rng.random_range(0..pairs.len())];
                    println!("chaos: merging {left} and {right} ({} open)", shards.len());
                    merge(&kinesis, &stream, left, right).await;
                }
            }
            Event::Fault {
                slot,
                service,
                fault,
                lasting,
            } => {
                let proxy = match service {
                    Service::Kinesis => &fleet.slots[slot].kinesis,
                    Service::DynamoDb => &fleet.slots[slot].dynamodb,
                };
                let from_ms = epoch_ms();
                proxy.set(fault);
                tokio::time::sleep(lasting).await;
                proxy.set(Fault::None);
                if let Service::DynamoDb = service {
                    disruptions.push(Disruption {
                        output: fleet.slots[slot].output.clone(),
                        from_ms,
                        until_ms: epoch_ms(),
                    });
                }
            }
            Event::CutOff(slot) => {
                let entry = &fleet.slots[slot];
                let from_ms = epoch_ms();
                entry.dynamodb.set(Fault::Stall);
                tokio::time::sleep(CUT_OFF).await;
                let until_ms = epoch_ms();
                entry.dynamodb.set(Fault::None);
                crashes += 1;
                disruptions.push(Disruption {
                    output: entry.output.clone(),
                    from_ms,
                    until_ms,
                });
                cut_offs.push(CutOff {
                    output: entry.output.clone(),
                    worker: entry.worker.clone(),
                    from_ms,
                    until_ms,
                });
            }
        }
    }
    let written = producer.stop().await;
    println!(
        "chaos: events done after {:.1?}; {} records written; waiting for all to be processed",
        started.elapsed(),
        written.len()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let lines = all_lines(&fleet.outputs);
        let seen = first_processing(&lines);
        let missing = written
            .iter()
            .filter(|d| !seen.contains_key(d.as_str()))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} records never processed",
            written.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for slot in 0..REPLICAS {
        terminate(fleet.child(slot));
    }
    for slot in 0..REPLICAS {
        let status = wait_exit(fleet.child(slot), Duration::from_secs(15)).await;
        assert!(status.success(), "w{slot} exited with {status}");
    }
    stop_sampling.send_replace(true);
    let (samples, backwards) = sampler.await.expect("sampler");

    let lines = all_lines(&fleet.outputs);
    check_order(&lines, &written);
    // A worker whose heartbeat was not confirmed in time stops by itself
    // (its log says so) and takes its leases anew: a disruption too, even
    // when nothing was injected (a slow answer from DynamoDB Local).
    let self_stops = self_stops(&fleet.outputs);
    disruptions.extend(self_stops.iter().map(|(output, at_ms)| Disruption {
        output: output.clone(),
        from_ms: *at_ms,
        until_ms: at_ms + SELF_STOP_RECOVERY_MS,
    }));
    let (duplicates, unexplained) = duplicates(&fleet.outputs, &disruptions);
    println!(
        "chaos: {} records, {} processings, {duplicates} processed more than once \
         ({crashes} crashes and cut-offs, {} self-stops, {} disruptions in all); \
         {samples} lease-table samples",
        written.len(),
        lines.len(),
        self_stops.len(),
        disruptions.len()
    );
    assert!(
        unexplained.is_empty(),
        "{} repeated processings no disruption explains, e.g. {:#?}",
        unexplained.len(),
        &unexplained[..unexplained.len().min(10)]
    );
    assert!(samples > 10, "the lease table was hardly sampled");
    assert!(
        backwards.is_empty(),
        "checkpoints moved back: {backwards:#?}"
    );
    for cut in &cut_offs {
        check_cut_off(cut);
        check_no_zombie(cut, &fleet.outputs);
    }
    for (slot, entry) in fleet.slots.iter().enumerate() {
        check_late_writes(slot, &entry.dynamodb, &app);
        println!(
            "chaos: w{slot} kinesis proxy: {:?}",
            entry.kinesis.requests()
        );
        println!(
            "chaos: w{slot} dynamodb proxy: {:?}",
            entry.dynamodb.requests()
        );
    }
}

/// How long after a self-stop a worker may take to take its leases anew and
/// process again (a heartbeat, then a round).
const SELF_STOP_RECOVERY_MS: u64 = 3000;

/// Every self-stop each process logged: its output file and when.
fn self_stops(outputs: &[PathBuf]) -> Vec<(PathBuf, u64)> {
    let mut stops = Vec::new();
    for output in outputs {
        let log = std::fs::read_to_string(output.with_extension("log")).unwrap_or_default();
        for line in log.lines() {
            if line.contains("no heartbeat confirmed in time")
                && let Some(at_ms) = log_time_ms(line)
            {
                stops.push((output.clone(), at_ms));
            }
        }
    }
    stops
}

/// The time a text log line begins with (`2026-12-03T19:11:13.993918Z`),
/// in epoch milliseconds.
fn log_time_ms(line: &str) -> Option<u64> {
    let stamp = line.get(..26)?;
    let number = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<u64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let micros = number(20..26)?;
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(seconds * 1000 + micros / 1000)
}

#[test]
fn log_times_are_read_as_epoch_milliseconds() {
    let line = "2026-12-03T19:11:13.993918Z  WARN worker{worker_id=w1}: no heartbeat";
    assert_eq!(log_time_ms(line), Some(1_796_325_073_993));
    assert_eq!(log_time_ms("1970-01-01T00:00:01.000500Z x"), Some(1000));
}

fn all_lines(outputs: &[PathBuf]) -> Vec<RecordLine> {
    outputs
        .iter()
        .flat_map(|p| read_lines(p).unwrap_or_default())
        .collect()
}

/// When each record (by its data) was first processed.
fn first_processing(lines: &[RecordLine]) -> HashMap<&str, u64> {
    let mut first: HashMap<&str, u64> = HashMap::new();
    for line in lines {
        let at = first.entry(&line.data).or_insert(line.processed_ms);
        *at = (*at).min(line.processed_ms);
    }
    first
}

/// Per key, record n+1 is first processed no earlier than record n (lines
/// of one batch share a processing time).
fn check_order(lines: &[RecordLine], written: &[String]) {
    let first = first_processing(lines);
    for data in written {
        let (key, n) = data.split_once(':').expect("key:counter");
        let n: u64 = n.parse().expect("a counter");
        if n == 0 {
            continue;
        }
        let before = first[format!("{key}:{}", n - 1).as_str()];
        assert!(
            first[data.as_str()] >= before,
            "{data} was first processed before {key}:{}",
            n - 1
        );
    }
}

/// How many records (by sequence and sub-sequence number) were processed
/// more than once, and every processing that was repeated later with no
/// disruption of its process to explain it.
fn duplicates(outputs: &[PathBuf], disruptions: &[Disruption]) -> (usize, Vec<String>) {
    let mut seen: HashMap<(String, u64), Vec<(u64, &PathBuf)>> = HashMap::new();
    for output in outputs {
        for line in read_lines(output).unwrap_or_default() {
            seen.entry((line.seq, line.subseq))
                .or_default()
                .push((line.processed_ms, output));
        }
    }
    let mut repeated = 0;
    let mut unexplained = Vec::new();
    for ((seq, subseq), mut processings) in seen {
        repeated += processings.len() - 1;
        // The last processing is the one whose checkpoint held.
        processings.sort();
        processings.pop();
        for (at_ms, output) in processings {
            if !disruptions.iter().any(|d| d.explains(output, at_ms)) {
                unexplained.push(format!(
                    "{seq}/{subseq} by {} at {at_ms}",
                    output.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
        }
    }
    (repeated, unexplained)
}

/// The cut-off worker processed nothing later than the failover time after
/// the cut (plus scheduling slack) while it lasted.
fn check_cut_off(cut: &CutOff) {
    let lines = read_lines(&cut.output).unwrap_or_default();
    let during: Vec<u64> = lines
        .iter()
        .map(|l| l.processed_ms)
        .filter(|at| (cut.from_ms..cut.until_ms).contains(at))
        .collect();
    let last = during.iter().max().map(|at| at - cut.from_ms);
    println!(
        "chaos: {} cut off for {} ms: last processed {last:?} ms after the cut ({} lines during it)",
        cut.worker,
        cut.until_ms - cut.from_ms,
        during.len()
    );
    let limit = FAILOVER.as_millis() as u64 + STOP_SLACK_MS;
    assert!(
        last.is_none_or(|after| after <= limit),
        "{} kept processing {last:?} ms into its cut-off (limit {limit} ms)",
        cut.worker
    );
}

/// During a cut-off, the cut-off worker processed nothing on a shard after
/// another worker had started on it.
fn check_no_zombie(cut: &CutOff, outputs: &[PathBuf]) {
    let mut others_from: HashMap<String, u64> = HashMap::new();
    for output in outputs.iter().filter(|o| **o != cut.output) {
        for line in read_lines(output).unwrap_or_default() {
            if line.processed_ms >= cut.from_ms {
                let first = others_from.entry(line.shard).or_insert(line.processed_ms);
                *first = (*first).min(line.processed_ms);
            }
        }
    }
    let zombie: Vec<String> = read_lines(&cut.output)
        .unwrap_or_default()
        .into_iter()
        .filter(|l| (cut.from_ms..cut.until_ms).contains(&l.processed_ms))
        .filter(|l| {
            others_from
                .get(&l.shard)
                .is_some_and(|f| l.processed_ms >= *f)
        })
        .map(|l| format!("{} {} at {}", l.shard, l.seq, l.processed_ms))
        .collect();
    assert!(
        zombie.is_empty(),
        "{} processed {} records on shards another worker had started on: {:?}",
        cut.worker,
        zombie.len(),
        &zombie[..zombie.len().min(10)]
    );
}

/// Every checkpoint held back by a cut-off and delivered late was refused.
fn check_late_writes(slot: usize, proxy: &FaultProxy, app: &str) {
    let late = proxy.late_requests();
    let checkpoints: Vec<_> = late
        .iter()
        .filter(|r| r.table.as_deref() == Some(app))
        .filter(|r| {
            r.update_expression
                .as_deref()
                .is_some_and(|e| e.starts_with("SET checkpoint ="))
        })
        .collect();
    println!(
        "chaos: w{slot}: {} requests delivered late, {} of them checkpoints",
        late.len(),
        checkpoints.len()
    );
    for request in checkpoints {
        assert_eq!(
            request.error_type.as_deref(),
            Some("ConditionalCheckFailedException"),
            "a late checkpoint had an effect: {request:?}"
        );
    }
}
