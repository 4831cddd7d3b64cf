//! The producer: a handle that buffers records with backpressure, and one
//! task that batches them into `PutRecords` calls, retries what failed and
//! tells each sender what became of its record.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kcl_backoff::{Backoff, BackoffConfig};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::batcher::{Batch, Batcher, Completion, EntryMembers, RecordId};
use crate::config::ProducerConfig;
use crate::error::{ConfigError, PutError, SendError};
use crate::metrics;
use crate::record::{UserRecord, Written};
use crate::sdk::SdkSink;
use crate::shard_map::{ShardMap, ShardRange};
use crate::sink::{EntryResult, Sink};

/// Writes records to one stream in batched `PutRecords` calls.
///
/// Cloning gives another handle to the same buffer and task. The task runs
/// on the Tokio runtime the producer was made on; [`close`](Self::close)
/// writes everything buffered and stops it. When every handle is dropped
/// without a close, the task still writes what was buffered before it ends
/// (if the runtime lives that long): call `close` to know when.
///
/// ```no_run
/// use kcl_producer::{Producer, ProducerConfig, UserRecord};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let aws = aws_config::load_from_env().await;
/// let client = aws_sdk_kinesis::Client::new(&aws);
/// let producer = Producer::from_client(&client, "orders", ProducerConfig::default())?;
/// // Waits for room in the buffer, then for the record to be written.
/// let written = producer.send(UserRecord::new("customer-7", "order 1")).await?;
/// println!("in {} at {}", written.shard_id, written.sequence_number);
/// // Many at once: enqueue, then await the deliveries.
/// let mut deliveries = Vec::new();
/// for n in 0..1000 {
///     deliveries.push(producer.enqueue(UserRecord::new(format!("c{}", n % 10), "x")).await?);
/// }
/// for delivery in deliveries {
///     delivery.await?;
/// }
/// producer.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("stream", &self.shared.stream)
            .finish_non_exhaustive()
    }
}

struct Shared {
    stream: Arc<str>,
    commands: mpsc::UnboundedSender<Command>,
    /// Becomes true when the task has ended (everything settled).
    ended: watch::Receiver<bool>,
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    closed: AtomicBool,
}

enum Command {
    Record { record: UserRecord, reply: Reply },
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// Where a record's outcome goes, with the buffer room it holds until then.
struct Reply {
    to: oneshot::Sender<Result<Written, SendError>>,
    size: usize,
    _record: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// A record's outcome, once it is written or has failed for good.
#[derive(Debug)]
pub struct Delivery {
    outcome: oneshot::Receiver<Result<Written, SendError>>,
}

impl Future for Delivery {
    type Output = Result<Written, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.outcome)
            .poll(cx)
            .map(|outcome| outcome.unwrap_or(Err(SendError::Closed)))
    }
}

impl Producer {
    /// A producer writing to `stream` (a name, or an ARN) through
    /// `client`, whose region, credentials and endpoint it keeps.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn from_client(
        client: &aws_sdk_kinesis::Client,
        stream: impl Into<String>,
        config: ProducerConfig,
    ) -> Result<Self, ConfigError> {
        Self::new(SdkSink::new(client), stream, config)
    }

    /// A producer writing to `stream` through `sink`.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn new<S: Sink>(
        sink: S,
        stream: impl Into<String>,
        config: ProducerConfig,
    ) -> Result<Self, ConfigError> {
        let stream: Arc<str> = stream.into().into();
        if stream.is_empty() {
            return Err(ConfigError {
                setting: "stream",
                reason: "the stream name is empty".into(),
            });
        }
        config.validate()?;
        metrics::describe();
        let (commands, receiver) = mpsc::unbounded_channel();
        let (end, ended) = watch::channel(false);
        let shared = Arc::new(Shared {
            stream: stream.clone(),
            commands,
            ended,
            records: Arc::new(Semaphore::new(config.max_buffered_records)),
            bytes: Arc::new(Semaphore::new(config.max_buffered_bytes)),
            closed: AtomicBool::new(false),
        });
        let task = Task {
            sink: Arc::new(sink),
            batcher: Batcher::new(&config, stream.clone()),
            map: MapState::new(config.aggregation.is_some()),
            records: shared.records.clone(),
            bytes: shared.bytes.clone(),
            config,
            stream: stream.clone(),
        };
        tokio::spawn(
            async move {
                task.run(receiver).await;
                end.send_replace(true);
            }
            .instrument(info_span!("producer", stream = %stream)),
        );
        Ok(Self { shared })
    }

    /// The stream it writes to.
    pub fn stream(&self) -> &str {
        &self.shared.stream
    }

    /// Sends a record and waits until it is written (or has failed for
    /// good). Waits first for room in the buffer. To have many records in
    /// flight from one task, use [`enqueue`](Self::enqueue).
    pub async fn send(&self, record: UserRecord) -> Result<Written, SendError> {
        self.enqueue(record).await?.await
    }

    /// Buffers a record, waiting while the buffer is full, and returns the
    /// [`Delivery`] that resolves once it is written or has failed. Records
    /// of one partition key are written in the order they were enqueued
    /// (with ordering on).
    ///
    /// Fails at once for a record Kinesis would never take (too large, bad
    /// partition key), and with [`SendError::Closed`] after
    /// [`close`](Self::close).
    pub async fn enqueue(&self, record: UserRecord) -> Result<Delivery, SendError> {
        record.validate()?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let size = record.size();
        let record_permit = self
            .shared
            .records
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SendError::Closed)?;
        // `validate` bounds the size at 1 MiB.
        let bytes_permit = self
            .shared
            .bytes
            .clone()
            .acquire_many_owned(size as u32)
            .await
            .map_err(|_| SendError::Closed)?;
        let (to, outcome) = oneshot::channel();
        let reply = Reply {
            to,
            size,
            _record: record_permit,
            _bytes: bytes_permit,
        };
        self.shared
            .commands
            .send(Command::Record { record, reply })
            .map_err(|_| SendError::Closed)?;
        Ok(Delivery { outcome })
    }

    /// Sends everything buffered now, without lingering, and waits until
    /// every record enqueued before the call is written or has failed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.shared.commands.send(Command::Flush(done)).is_ok() {
            let _ = wait.await;
        } else {
            // Closing: everything is being written; wait for the end.
            self.ended().await;
        }
    }

    async fn ended(&self) {
        let mut ended = self.shared.ended.clone();
        let _ = ended.wait_for(|ended| *ended).await;
    }

    /// Stops taking records ([`SendError::Closed`] from then on), writes
    /// everything buffered, and waits until every record is written or has
    /// failed and the task has ended.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let (done, wait) = oneshot::channel();
        if self.shared.commands.send(Command::Close(done)).is_ok() {
            let _ = wait.await;
        }
        // Another handle may have closed first: wait for the task's end.
        self.ended().await;
    }
}

/// The shard map for aggregation: loaded at start, and again when an
/// aggregate lands on a shard it did not expect.
struct MapState {
    aggregating: bool,
    map: Option<ShardMap>,
    /// A load is wanted (at start, or the map is stale).
    wanted: bool,
    /// The first load has ended (well or not): until then, aggregated
    /// batches wait for it.
    started: bool,
    not_before: Option<Instant>,
    backoff: Backoff,
    /// Aggregates found on an unexpected shard so far; a load settles them
    /// only if it started after the last one (an older answer may predate
    /// the reshard).
    stale_marks: u64,
}

/// The least time between two loads of the map.
const MAP_LOAD_SPACING: Duration = Duration::from_millis(500);

impl MapState {
    fn new(aggregating: bool) -> Self {
        Self {
            aggregating,
            map: None,
            wanted: aggregating,
            started: !aggregating,
            not_before: None,
            backoff: Self::backoff(),
            stale_marks: 0,
        }
    }

    fn backoff() -> Backoff {
        Backoff::new(BackoffConfig {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: None,
        })
    }

    fn due(&self, now: Instant) -> bool {
        self.aggregating && self.wanted && self.not_before.is_none_or(|at| at <= now)
    }

    fn loaded(&mut self, result: Result<Vec<ShardRange>, PutError>, now: Instant) {
        self.started = true;
        match result {
            Ok(shards) => {
                info!(shards = shards.len(), "shard map loaded for aggregation");
                self.map = Some(ShardMap::new(shards));
                self.wanted = false;
                self.backoff = Self::backoff();
                self.not_before = Some(now + MAP_LOAD_SPACING);
            }
            Err(error) => {
                // A map known to be stale is worse than none.
                self.map = None;
                let delay = self.backoff.next_delay().unwrap_or(Duration::from_secs(10));
                warn!(
                    %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "could not load the shard map; records go unaggregated until it loads"
                );
                self.not_before = Some(now + delay);
            }
        }
    }
}

type CallFuture =
    Pin<Box<dyn Future<Output = (Vec<EntryMembers>, Result<Vec<EntryResult>, PutError>)> + Send>>;
type LoadFuture = Pin<Box<dyn Future<Output = (u64, Result<Vec<ShardRange>, PutError>)> + Send>>;

struct Task<S> {
    sink: Arc<S>,
    stream: Arc<str>,
    config: ProducerConfig,
    batcher: Batcher,
    map: MapState,
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

impl<S: Sink> Task<S> {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut replies: BTreeMap<RecordId, Reply> = BTreeMap::new();
        let mut next_id: RecordId = 0;
        let mut flushes: Vec<(RecordId, oneshot::Sender<()>)> = Vec::new();
        let mut closers: Vec<oneshot::Sender<()>> = Vec::new();
        let mut closing = false;
        let mut receiving = true;
        let mut calls: FuturesUnordered<CallFuture> = FuturesUnordered::new();
        let mut load: Option<LoadFuture> = None;
        let stream = self.stream.to_string();
        loop {
            let now = Instant::now();
            // Flushes are done when every record sent before them is.
            let oldest = replies.first_key_value().map_or(next_id, |(id, _)| *id);
            let (finished, waiting): (Vec<_>, Vec<_>) =
                flushes.into_iter().partition(|(until, _)| *until <= oldest);
            flushes = waiting;
            for (_, done) in finished {
                let _ = done.send(());
            }
            self.batcher.set_flushing(closing || !flushes.is_empty());
            if self.map.started {
                while calls.len() < self.config.max_in_flight_calls {
                    let Some(batch) = self.batcher.next_batch(now, self.map.map.as_ref()) else {
                        break;
                    };
                    calls.push(self.call(batch));
                }
            }
            if load.is_none() && self.map.due(now) {
                let sink = self.sink.clone();
                let name = self.stream.clone();
                let marks = self.map.stale_marks;
                load = Some(Box::pin(
                    async move { (marks, sink.open_shards(&name).await) },
                ));
            }
            self.gauges(&stream);
            if !receiving && self.batcher.is_empty() && calls.is_empty() {
                break;
            }
            // A batch due while no call can start waits for a call to end
            // (or for the map), not for a time already past.
            let can_call = self.map.started && calls.len() < self.config.max_in_flight_calls;
            let batch_wake = if can_call {
                self.batcher.next_wakeup()
            } else {
                None
            };
            let map_wake = self
                .map
                .not_before
                .filter(|_| self.map.wanted && load.is_none());
            let wake = match (batch_wake, map_wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                Some((entries, answer)) = calls.next(), if !calls.is_empty() => {
                    let done = self.batcher.complete(entries, answer, Instant::now());
                    self.settle(done, &mut replies, &stream);
                }
                loaded = async { match load.as_mut() {
                    Some(future) => future.await,
                    None => std::future::pending().await,
                } }, if load.is_some() => {
                    load = None;
                    let (marks, loaded) = loaded;
                    let now = Instant::now();
                    let ok = loaded.is_ok();
                    ::metrics::counter!(metrics::SHARD_MAP_LOADS, "stream" => stream.clone(),
                        "outcome" => if ok { "ok" } else { "failed" }).increment(1);
                    self.map.loaded(loaded, now);
                    if marks != self.map.stale_marks {
                        // Found stale again while this load was under way.
                        self.map.wanted = true;
                    } else {
                        // After a failed load there is no map (a stale one
                        // is dropped): nothing tells which records of a
                        // misplaced aggregate are where they belong, so all
                        // go again, unaggregated (some then twice).
                        let none = ShardMap::default();
                        let map = self.map.map.as_ref().unwrap_or(&none);
                        let done = self.batcher.settle_misplaced(map, now);
                        self.settle(done, &mut replies, &stream);
                    }
                }
                command = commands.recv(), if receiving => {
                    let mut next = command;
                    let mut taken = 0;
                    loop {
                        match next {
                            Some(Command::Record { record, reply }) => {
                                self.batcher.push(next_id, record, Instant::now());
                                replies.insert(next_id, reply);
                                next_id += 1;
                            }
                            Some(Command::Flush(done)) => flushes.push((next_id, done)),
                            Some(Command::Close(done)) => {
                                closing = true;
                                closers.push(done);
                                commands.close();
                            }
                            None => {
                                receiving = false;
                                closing = true;
                                break;
                            }
                        }
                        taken += 1;
                        if taken >= 1024 {
                            break;
                        }
                        match commands.try_recv() {
                            Ok(command) => next = Some(command),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => next = None,
                        }
                    }
                }
                () = sleep_until(wake), if wake.is_some() => {}
            }
        }
        self.gauges(&stream);
        for flush in flushes {
            let _ = flush.1.send(());
        }
        for closer in closers {
            let _ = closer.send(());
        }
        debug!("producer task ended");
    }

    /// Starts one `PutRecords` call.
    fn call(&self, batch: Batch) -> CallFuture {
        let stream = self.stream.to_string();
        ::metrics::histogram!(metrics::BATCH_RECORDS, "stream" => stream.clone())
            .record(batch.records() as f64);
        ::metrics::histogram!(metrics::BATCH_ENTRIES, "stream" => stream.clone())
            .record(batch.puts.len() as f64);
        ::metrics::histogram!(metrics::BATCH_BYTES, "stream" => stream.clone())
            .record(batch.bytes() as f64);
        let sink = self.sink.clone();
        let Batch { puts, entries } = batch;
        Box::pin(async move {
            let answer = sink.put_records(&stream, puts).await;
            let outcome = match &answer {
                Ok(results)
                    if results
                        .iter()
                        .all(|r| matches!(r, EntryResult::Written { .. })) =>
                {
                    "ok"
                }
                Ok(_) => "partial",
                Err(_) => "failed",
            };
            ::metrics::counter!(metrics::PUT_CALLS, "stream" => stream, "outcome" => outcome)
                .increment(1);
            (entries, answer)
        })
    }

    /// Tells senders what became of their records, and counts it.
    fn settle(&mut self, done: Completion, replies: &mut BTreeMap<RecordId, Reply>, stream: &str) {
        let mut written = 0u64;
        let mut bytes = 0u64;
        for (id, outcome) in done.settled {
            let Some(reply) = replies.remove(&id) else {
                continue;
            };
            match &outcome {
                Ok(_) => {
                    written += 1;
                    bytes += reply.size as u64;
                }
                Err(error) => {
                    warn!(%error, "record failed");
                    ::metrics::counter!(metrics::RECORDS_FAILED, "stream" => stream.to_owned(),
                        "reason" => failure_reason(error))
                    .increment(1);
                }
            }
            let _ = reply.to.send(outcome);
        }
        if written > 0 {
            ::metrics::counter!(metrics::RECORDS_WRITTEN, "stream" => stream.to_owned())
                .increment(written);
            ::metrics::counter!(metrics::BYTES_WRITTEN, "stream" => stream.to_owned())
                .increment(bytes);
        }
        for (reason, records) in done.retried {
            debug!(records, %reason, "records will be sent again");
            ::metrics::counter!(metrics::RETRIES, "stream" => stream.to_owned(), "reason" => reason)
                .increment(records);
        }
        if done.map_stale {
            info!("an aggregate landed on another shard than the map said; reloading the map");
            self.map.wanted = true;
            self.map.stale_marks += 1;
        }
    }

    fn gauges(&self, stream: &str) {
        let records = self.config.max_buffered_records - self.records.available_permits();
        let bytes = self.config.max_buffered_bytes - self.bytes.available_permits();
        ::metrics::gauge!(metrics::BUFFERED_RECORDS, "stream" => stream.to_owned())
            .set(records as f64);
        ::metrics::gauge!(metrics::BUFFERED_BYTES, "stream" => stream.to_owned()).set(bytes as f64);
    }
}

/// The `reason` label of a failed record.
fn failure_reason(error: &SendError) -> &'static str {
    match error {
        SendError::TooLarge { .. } => "too_large",
        SendError::InvalidPartitionKey { .. } => "invalid_partition_key",
        SendError::StreamNotFound { .. } => "stream_not_found",
        SendError::AccessDenied { .. } => "access_denied",
        SendError::Rejected { .. } => "rejected",
        SendError::Expired { .. } => "expired",
        SendError::Closed => "closed",
    }
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
