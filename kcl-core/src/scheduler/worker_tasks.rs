//! The consumer tasks of one worker: one [`ShardConsumer`] per lease the
//! coordinator publishes, steered by signals (shut down, lease lost), and
//! the releases that follow a handoff request or a clean stop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kcl_lease::{CoordinatorHandle, HeldLease, LeaseStore, LeaseToken, ProcessingDeadline};
use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinSet};
use tracing::{Instrument, error, info, warn};

use crate::consumer::{
    ConsumerContext, ConsumerOutcome, ConsumerSignal, ShardConsumer, ShardStart, ShutdownReason,
};
use crate::streams::{ConsumedStream, ConsumedStreams};

/// A running consumer, as the scheduler tracks it.
pub(super) struct Running {
    /// The lease it processes.
    token: LeaseToken,
    /// The stream of the lease.
    stream: String,
    /// How the scheduler steers it.
    signal: watch::Sender<ConsumerSignal>,
}

impl Running {
    /// Asks the consumer to stop after its batch in flight, unless it was
    /// already told to stop. Returns whether it was asked now.
    fn request_shutdown(&self) -> bool {
        self.signal.send_if_modified(|signal| {
            let ask = *signal == ConsumerSignal::Run;
            if ask {
                *signal = ConsumerSignal::ShutdownRequested;
            }
            ask
        })
    }
}

/// What a consumer task returns.
pub(super) type Finished = (LeaseToken, ConsumerOutcome);

/// The consumer tasks of a worker and what is known about them.
pub(super) struct WorkerTasks {
    /// What every consumer shares.
    pub(super) context: Arc<ConsumerContext>,
    /// The streams this worker consumes.
    pub(super) streams: Arc<ConsumedStreams>,
    /// The coordinator's handle: held leases, deadlines, releases.
    pub(super) handle: CoordinatorHandle<dyn LeaseStore>,
    /// One task per running consumer; each returns its lease and outcome.
    pub(super) consumers: JoinSet<Finished>,
    /// Releases under way; each returns the lease and whether the release
    /// failed (a failed one waits before it returns, so that the next
    /// attempt comes later and later).
    pub(super) releases: JoinSet<(LeaseToken, bool)>,
    /// The running consumers, by lease key.
    pub(super) running: HashMap<String, Running>,
    /// Which lease each consumer task works on.
    pub(super) task_keys: HashMap<Id, String>,
    /// Leases this worker read to their end and checkpointed at `SHARD_END`.
    pub(super) finished: HashSet<LeaseToken>,
    /// Leases whose consumer stopped because the lease was lost: not
    /// started again until the coordinator publishes them with another
    /// token, so a stale snapshot never starts a consumer that can only find
    /// its lease gone.
    pub(super) lost: HashSet<LeaseToken>,
    /// Leases whose consumer stopped because the processing deadline
    /// passed: handled again (started, or released on request) only once
    /// the deadline of their epoch is open again (a heartbeat confirmed in
    /// time after all); otherwise the epoch ends and they are taken anew.
    pub(super) stopped_at_deadline: HashSet<LeaseToken>,
    /// Leases with a release under way.
    pub(super) releasing: HashSet<LeaseToken>,
    /// Releases that failed in a row, by lease.
    pub(super) release_failures: HashMap<LeaseToken, u32>,
    /// Streams whose leases this worker no longer processes, checkpoints or
    /// releases (a stream created anew under its name: its old checkpoints
    /// must not be carried into the new stream by a handoff).
    pub(super) abandoned: HashSet<String>,
}

impl WorkerTasks {
    /// No consumers yet, for the leases `handle` publishes.
    pub(super) fn new(
        context: Arc<ConsumerContext>,
        streams: Arc<ConsumedStreams>,
        handle: CoordinatorHandle<dyn LeaseStore>,
    ) -> Self {
        Self {
            context,
            streams,
            handle,
            consumers: JoinSet::new(),
            releases: JoinSet::new(),
            running: HashMap::new(),
            task_keys: HashMap::new(),
            finished: HashSet::new(),
            lost: HashSet::new(),
            stopped_at_deadline: HashSet::new(),
            releasing: HashSet::new(),
            release_failures: HashMap::new(),
            abandoned: HashSet::new(),
        }
    }

    /// Starts, stops and signals consumers so they match `held`, and
    /// releases what must be released. Never waits on the lease table.
    pub(super) fn reconcile(&mut self, held: &BTreeMap<String, HeldLease>) {
        let active = held.values().filter(|h| !h.lease.is_finished()).count();
        metrics::gauge!(crate::telemetry::metrics::LEASES_HELD).set(active as f64);
        // Forget leases once they are gone (cleaned up, lost, released).
        let still = |token: &LeaseToken| held.get(&token.key).is_some_and(|h| h.token == *token);
        self.finished.retain(still);
        self.lost.retain(still);
        self.release_failures.retain(|token, _| still(token));
        let reopened = |token: &LeaseToken| {
            held.get(&token.key)
                .is_some_and(|h| self.handle.deadline(h.epoch).is_open())
        };
        self.stopped_at_deadline
            .retain(|token| still(token) && !reopened(token));
        for (key, running) in &self.running {
            let still_held = held.get(key).is_some_and(|h| h.token == running.token);
            if !still_held {
                running.signal.send_replace(ConsumerSignal::LeaseLost);
            } else if held[key].handoff_requested && running.request_shutdown() {
                info!(lease = %key, "handoff requested; stopping after the batch in flight");
            }
        }
        let draining = self.handle.is_draining();
        for (key, lease) in held {
            if self.running.contains_key(key)
                || lease.lease.is_finished()
                || self.finished.contains(&lease.token)
                || self.lost.contains(&lease.token)
                || self.stopped_at_deadline.contains(&lease.token)
                || self.releasing.contains(&lease.token)
                || self.is_abandoned(&lease.lease)
            {
                continue;
            }
            if lease.handoff_requested || draining {
                // Nothing processed here since the last checkpoint: give it
                // up straight away.
                self.release(lease.token.clone());
                continue;
            }
            self.start(lease);
        }
    }

    /// Stops the consumers of `stream` at once, as if their leases were
    /// lost (no checkpoint, no handoff): the leases stay with this worker
    /// until it stops, then expire.
    pub(super) fn abandon(&mut self, stream: &str) {
        warn!(
            stream,
            "stopping the stream's shards without checkpointing or handing them over"
        );
        self.abandoned.insert(stream.to_owned());
        for running in self.running.values() {
            if running.stream == stream {
                running.signal.send_replace(ConsumerSignal::LeaseLost);
            }
        }
    }

    /// Whether `lease` belongs to a stream this worker abandoned.
    fn is_abandoned(&self, lease: &kcl_lease::Lease) -> bool {
        !self.abandoned.is_empty()
            && self
                .streams
                .of(lease)
                .is_some_and(|stream| self.abandoned.contains(&stream.name))
    }

    fn start(&mut self, held: &HeldLease) {
        let (signal, signals) = watch::channel(ConsumerSignal::Run);
        let context = Arc::clone(&self.context);
        let Some(stream) = self.streams.of(&held.lease).cloned() else {
            // Never published: the coordinator holds leases of the
            // worker's streams only.
            error!(lease = %held.token.key, "a held lease of a stream this worker does not consume; not processed");
            return;
        };
        let stream_name = stream.name.clone();
        let token = held.token.clone();
        let deadline = self.handle.deadline(held.epoch);
        let task_token = token.clone();
        let task = async move {
            let outcome =
                start_consumer(context, stream, task_token.clone(), deadline, signals).await;
            (task_token, outcome)
        };
        let abort = self.consumers.spawn(task.in_current_span());
        self.task_keys.insert(abort.id(), token.key.clone());
        self.running.insert(
            token.key.clone(),
            Running {
                token,
                stream: stream_name,
                signal,
            },
        );
    }

    /// Handles a consumer that ended.
    pub(super) fn finished(&mut self, joined: Result<(Id, Finished), JoinError>) {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(error) => error.id(),
        };
        let Some(key) = self.task_keys.remove(&id) else {
            return;
        };
        self.running.remove(&key);
        match joined {
            Ok((_, (token, outcome))) => match outcome.reason {
                ShutdownReason::ShardEnd
                    if outcome.checkpoint == kcl_checkpoint::ExtendedSequenceNumber::ShardEnd =>
                {
                    info!(lease = %key, "shard finished");
                    self.finished.insert(token);
                }
                ShutdownReason::ShardEnd | ShutdownReason::Requested => self.release(token),
                ShutdownReason::LeaseLost if outcome.deadline_passed => {
                    self.stopped_at_deadline.insert(token);
                }
                ShutdownReason::LeaseLost => {
                    self.lost.insert(token);
                }
            },
            Err(error) => {
                error!(lease = %key, %error, "shard consumer task failed; it restarts if the lease is still held");
            }
        }
    }

    /// Starts releasing `token`'s lease on a task of its own.
    fn release(&mut self, token: LeaseToken) {
        if !self.releasing.insert(token.clone()) {
            return;
        }
        let handle = self.handle.clone();
        let stats = Arc::clone(&self.context.stats);
        let failures = self.release_failures.get(&token).copied().unwrap_or(0);
        let task = async move {
            match handle.release(&token).await {
                Ok(()) => {
                    stats.count_lease_released();
                    info!(lease = %token.key, "lease released");
                    (token, false)
                }
                Err(error) if error.is_lease_lost() => (token, false),
                Err(error) => {
                    let delay = release_retry_delay(failures);
                    warn!(lease = %token.key, %error, ?delay, "could not release the lease; trying again later (it expires after the failover time if this worker stops first)");
                    tokio::time::sleep(delay).await;
                    (token, true)
                }
            }
        };
        self.releases.spawn(task.in_current_span());
    }

    /// Handles a release that ended (done or not: a lease still held after
    /// a failed release is processed or released again by `reconcile`).
    pub(super) fn released(&mut self, joined: Result<(LeaseToken, bool), JoinError>) {
        match joined {
            Ok((token, failed)) => {
                self.releasing.remove(&token);
                if failed {
                    *self.release_failures.entry(token).or_default() += 1;
                } else {
                    self.release_failures.remove(&token);
                }
            }
            Err(error) => {
                error!(%error, "a lease release task failed");
                self.releasing.clear();
            }
        }
    }

    /// Hands every shard over and stops, within `timeout`:
    /// - while other live workers can receive them, leases are handed over
    ///   as those workers ask (they see this worker draining at their next
    ///   round): the consumer finishes its batch, the processor
    ///   checkpoints, the lease is released to the asking worker, which
    ///   starts within its handoff poll interval;
    /// - with no one to receive them, or [`RELEASE_RESERVE`] before the
    ///   timeout, the remaining consumers checkpoint and their leases are
    ///   released for anyone to take;
    /// - at the timeout, consumers still running are told their lease is
    ///   lost and stopped (their leases expire after the failover time).
    pub(super) async fn drain(
        &mut self,
        held: &mut watch::Receiver<BTreeMap<String, HeldLease>>,
        timeout: Duration,
    ) {
        let started = tokio::time::Instant::now();
        let hard_deadline = started + timeout;
        let release_deadline = started + timeout.saturating_sub(RELEASE_RESERVE.min(timeout / 2));
        let mut releasing_all = false;
        loop {
            let snapshot = held.borrow_and_update().clone();
            self.reconcile(&snapshot);
            if self.consumers.is_empty() && self.releases.is_empty() {
                return;
            }
            let no_receivers = self.handle.receivers() == 0;
            if !releasing_all && (no_receivers || tokio::time::Instant::now() >= release_deadline) {
                releasing_all = true;
                info!(
                    remaining = self.running.len(),
                    no_receivers, "checkpointing and releasing the remaining shards"
                );
                for running in self.running.values() {
                    running.request_shutdown();
                }
            }
            tokio::select! {
                changed = held.changed() => {
                    if changed.is_err() {
                        releasing_all = true;
                    }
                }
                Some(joined) = self.consumers.join_next_with_id() => self.finished(joined),
                Some(released) = self.releases.join_next() => self.released(released),
                () = tokio::time::sleep_until(release_deadline), if !releasing_all => {}
                // Receivers may go away (stopping too) without anything
                // else changing here: look again.
                () = tokio::time::sleep(RECEIVERS_CHECK), if !releasing_all => {}
                () = tokio::time::sleep_until(hard_deadline) => {
                    warn!(
                        remaining = self.consumers.len(),
                        releases = self.releases.len(),
                        "shutdown timeout reached; stopping the remaining shards without checkpointing"
                    );
                    for running in self.running.values() {
                        running.signal.send_replace(ConsumerSignal::LeaseLost);
                    }
                    let grace = tokio::time::sleep(LEASE_LOST_GRACE);
                    tokio::pin!(grace);
                    loop {
                        tokio::select! {
                            joined = self.consumers.join_next_with_id() => match joined {
                                Some(joined) => self.finished(joined),
                                None => break,
                            },
                            () = &mut grace => break,
                        }
                    }
                    self.consumers.abort_all();
                    self.releases.abort_all();
                    while self.consumers.join_next().await.is_some() {}
                    while self.releases.join_next().await.is_some() {}
                    return;
                }
            }
        }
    }
}

/// How long a failed release waits before it may be tried again: 500 ms,
/// doubling with each failure in a row, at most 30 s.
fn release_retry_delay(failures: u32) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(30))
}

/// How long before the shutdown timeout a stopping worker stops waiting for
/// handoff requests and releases its remaining leases itself.
const RELEASE_RESERVE: Duration = Duration::from_secs(5);

/// How often a stopping worker checks whether anyone can still receive its
/// leases.
const RECEIVERS_CHECK: Duration = Duration::from_millis(200);

/// How long processors get to return from `lease_lost` when forced out.
const LEASE_LOST_GRACE: Duration = Duration::from_secs(1);

/// Reads the lease fresh (the held snapshot may predate checkpoints written
/// since) and runs its consumer, unless the lease has moved on, the
/// processing deadline passes, or the consumer is told to stop first.
async fn start_consumer(
    context: Arc<ConsumerContext>,
    stream: Arc<ConsumedStream>,
    token: LeaseToken,
    deadline: ProcessingDeadline,
    mut signals: watch::Receiver<ConsumerSignal>,
) -> ConsumerOutcome {
    let stopped = |reason| ConsumerOutcome {
        reason,
        checkpoint: kcl_checkpoint::ExtendedSequenceNumber::TrimHorizon,
        child_shards: Vec::new(),
        deadline_passed: deadline.was_found_passed(),
    };
    let lease = loop {
        let read = tokio::select! {
            biased;
            () = deadline.passed() => return stopped(ShutdownReason::LeaseLost),
            read = context.store.get_lease(&token.key) => read,
        };
        match read {
            Ok(Some(lease)) if lease.token().as_ref() == Some(&token) => break lease,
            Ok(_) => return stopped(ShutdownReason::LeaseLost),
            Err(error) => {
                warn!(lease = %token.key, %error, "reading the lease failed; retrying");
                tokio::select! {
                    biased;
                    () = deadline.passed() => return stopped(ShutdownReason::LeaseLost),
                    signal = signals.wait_for(|s| *s != ConsumerSignal::Run) => {
                        let reason = match signal.as_deref() {
                            Ok(ConsumerSignal::ShutdownRequested) => ShutdownReason::Requested,
                            _ => ShutdownReason::LeaseLost,
                        };
                        return stopped(reason);
                    }
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let start = ShardStart {
        shard_id: lease.shard_id().to_owned(),
        stream,
        token,
        checkpoint: lease.checkpoint.clone(),
        pending_checkpoint: lease.pending_checkpoint.clone(),
        pending_checkpoint_state: lease.pending_checkpoint_state.clone(),
        parent_shard_ids: lease.parent_shard_ids.clone(),
        hash_key_range: lease.hash_key_range,
        deadline,
        start_timestamp: lease.start_timestamp,
    };
    ShardConsumer::new(context, start, signals).run().await
}
