//! The lease coordinator: the task of each worker that keeps it alive in the
//! fleet's eyes, takes and asks for leases, and tells the scheduler which
//! shards to process.
//!
//! It runs two loops on one task:
//! - heartbeats, every `heartbeat_interval`: one write to the workers table.
//!   If no heartbeat has succeeded for the failover time (counted from when
//!   the last successful one was sent), the worker stops processing all its
//!   shards by itself, because others may take them from now on; once it can
//!   heartbeat again it takes its own leases anew (bumping their counters)
//!   before processing them, which fences any write left over from before.
//! - assignment rounds, every `assignment_interval`, and also at the moment
//!   an owner would expire: read both tables, judge liveness, compute the
//!   [plan](crate::assignment), take free leases and ask for handoffs, then
//!   publish the leases this worker processes.
//!
//! The held leases are published on a `watch` channel; the scheduler starts a
//! shard consumer for each, stops the consumers of leases that disappear, and
//! answers handoff requests by checkpointing and calling
//! [`CoordinatorHandle::release`].

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::assignment::{self, Holder, LeaseView};
use crate::liveness::LivenessTracker;
use crate::{
    Lease, LeaseConfig, LeaseConfigError, LeaseStore, LeaseStoreError, LeaseToken, WorkerHeartbeat,
};

/// A lease this worker processes, as last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLease {
    /// The lease as of the last round (or as written by this worker's take).
    pub lease: Lease,
    /// What checkpoints and the release are written with.
    pub token: LeaseToken,
    /// Another worker asked for the lease: checkpoint at a batch boundary,
    /// then [release](CoordinatorHandle::release) it.
    pub handoff_requested: bool,
}

/// The leases this worker processes, by lease key.
pub type HeldLeases = BTreeMap<String, HeldLease>;

/// What one assignment round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Free or expired leases this worker took.
    pub taken: Vec<String>,
    /// Leases this worker asked their owners to hand over.
    pub handoffs_requested: Vec<String>,
    /// Takes and handoff requests another worker won first.
    pub contended: usize,
    /// Leases processed before this round and no longer.
    pub lost: Vec<String>,
    /// Leases processed after this round.
    pub held: usize,
    /// Live workers seen, this one included.
    pub live_workers: usize,
}

/// Runs heartbeats and assignment rounds for one worker.
pub struct LeaseCoordinator<S: ?Sized> {
    store: Arc<S>,
    config: LeaseConfig,
    tracker: LivenessTracker,
    /// The value of the next heartbeat.
    beat: u64,
    /// When the last successful heartbeat was sent: processing is allowed
    /// until the failover time after it.
    last_heartbeat_sent: Option<Instant>,
    /// Set when liveness was lost: own leases must be taken anew before they
    /// are processed again.
    retake_own: bool,
    shared: Arc<Shared>,
    /// Handoffs this worker asked for and is waiting to complete, with the
    /// moment it stops watching each (the regular rounds take over then).
    awaiting: BTreeMap<String, Instant>,
}

/// What the coordinator and its handles share.
#[derive(Default)]
struct Shared {
    /// The leases this worker processes.
    held: watch::Sender<HeldLeases>,
    /// Set when the worker is stopping: it takes no more leases, announces
    /// it in its heartbeat, and others ask for its leases.
    draining: AtomicBool,
    /// Wakes the coordinator's loop (when draining starts).
    wake: Notify,
    /// Live workers other than this one that are not draining, as of the
    /// last round: who could receive this worker's leases.
    receivers: AtomicUsize,
    /// When the last heartbeat succeeded.
    last_heartbeat: std::sync::Mutex<Option<Instant>>,
}

/// What the rest of the worker uses to follow and act on the held leases.
pub struct CoordinatorHandle<S: ?Sized> {
    store: Arc<S>,
    shared: Arc<Shared>,
}

impl<S: ?Sized> Clone for CoordinatorHandle<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: LeaseStore + ?Sized> CoordinatorHandle<S> {
    /// Starts draining (the worker is stopping): takes and asks for no more
    /// leases, announces it in the heartbeat at once so that other workers
    /// ask for this worker's leases, and runs rounds every
    /// `handoff_poll_interval` to see their requests quickly. The leases
    /// already held stay published until released.
    pub fn stop_taking(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    /// Whether [`stop_taking`](Self::stop_taking) was called.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// When the worker's last heartbeat succeeded (the lease tables were
    /// reachable then).
    pub fn last_heartbeat(&self) -> Option<Instant> {
        *self
            .shared
            .last_heartbeat
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How many other live workers could receive this worker's leases (not
    /// draining themselves), as of the last assignment round.
    pub fn receivers(&self) -> usize {
        self.shared.receivers.load(Ordering::SeqCst)
    }

    /// The leases this worker processes; changes whenever a round or a
    /// release changes them.
    pub fn held(&self) -> watch::Receiver<HeldLeases> {
        self.shared.held.subscribe()
    }

    /// The leases another worker has asked for: checkpoint each at a batch
    /// boundary, then [release](Self::release) it.
    pub fn handoffs_requested(&self) -> Vec<LeaseToken> {
        self.shared
            .held
            .borrow()
            .values()
            .filter(|h| h.handoff_requested)
            .map(|h| h.token.clone())
            .collect()
    }

    /// Gives a lease up (after a handoff request, or on shutdown): completes
    /// the handoff if one was requested, otherwise leaves the lease unowned
    /// for another worker to take. The lease stops being published at once.
    pub async fn release(&self, token: &LeaseToken) -> Result<(), LeaseStoreError> {
        let result = self.store.release_lease(token).await;
        if result.is_ok() || result.as_ref().is_err_and(LeaseStoreError::is_lease_lost) {
            self.shared.held.send_if_modified(|held| {
                let ours = held.get(&token.key).is_some_and(|h| h.token == *token);
                if ours {
                    held.remove(&token.key);
                }
                ours
            });
        }
        result
    }

    /// The store the coordinator works on (for checkpoints).
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }
}

impl<S: LeaseStore + ?Sized> LeaseCoordinator<S> {
    /// A coordinator for the worker `config.worker_id`, once the settings are
    /// validated.
    pub fn new(
        store: Arc<S>,
        config: LeaseConfig,
    ) -> Result<(Self, CoordinatorHandle<S>), LeaseConfigError> {
        config.validate()?;
        let shared = Arc::new(Shared::default());
        let handle = CoordinatorHandle {
            store: Arc::clone(&store),
            shared: Arc::clone(&shared),
        };
        let coordinator = Self {
            tracker: LivenessTracker::new(config.failover_time),
            store,
            config,
            beat: 1,
            last_heartbeat_sent: None,
            retake_own: false,
            shared,
            awaiting: BTreeMap::new(),
        };
        Ok((coordinator, handle))
    }

    /// The worker's id.
    pub fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    /// Writes one heartbeat, sent at `now`.
    pub async fn heartbeat(&mut self, now: Instant) -> Result<(), LeaseStoreError> {
        let heartbeat = WorkerHeartbeat {
            worker: self.config.worker_id.clone(),
            beat: self.beat,
            draining: self.shared.draining.load(Ordering::SeqCst),
        };
        self.store.heartbeat(&heartbeat).await?;
        self.beat += 1;
        if !self.is_alive(now) && self.last_heartbeat_sent.is_some() {
            info!("heartbeat restored; own leases will be taken anew before processing");
        }
        self.last_heartbeat_sent = Some(now);
        *self
            .shared
            .last_heartbeat
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(now);
        Ok(())
    }

    /// Whether this worker may process shards at `now`: it has heartbeated
    /// successfully within the failover time.
    pub fn is_alive(&self, now: Instant) -> bool {
        self.last_heartbeat_sent
            .is_some_and(|sent| now.saturating_duration_since(sent) < self.config.failover_time)
    }

    /// The latest moment a lease-table call started at `now` may finish: a
    /// failover time, and never past the moment this worker must stop its
    /// shards for want of a heartbeat. A table that hangs (a network
    /// partition, a stalled connection) so never keeps the loop from
    /// enforcing liveness.
    fn call_deadline(&self, now: Instant) -> Instant {
        let limit = now + self.config.failover_time;
        match self.last_heartbeat_sent {
            Some(sent) if !self.shared.held.borrow().is_empty() => {
                limit.min(sent + self.config.failover_time).max(now)
            }
            _ => limit,
        }
    }

    /// Stops publishing any lease if liveness is lost at `now`. Returns
    /// whether it did.
    pub fn enforce_liveness(&mut self, now: Instant) -> bool {
        if self.is_alive(now) || self.shared.held.borrow().is_empty() {
            return false;
        }
        warn!(
            failover_time = ?self.config.failover_time,
            "no successful heartbeat for the failover time: stopping all shards, others may take them"
        );
        self.retake_own = true;
        self.shared.held.send_replace(HeldLeases::new());
        true
    }

    /// Reads the tables, judges liveness, carries out this worker's part of
    /// the plan and publishes the leases it processes.
    ///
    /// `clock` tells the time. It is read once the tables have been read, so
    /// what was seen is stamped no earlier than it was seen: a read that
    /// hung for seconds (a stall, a partition that healed) must not make a
    /// heartbeat look older than it is, or a live owner would be judged
    /// expired too soon. It is read again before the leases are published.
    pub async fn assignment_round(
        &mut self,
        clock: impl Fn() -> Instant,
    ) -> Result<RoundReport, LeaseStoreError> {
        let mut leases = self.store.list_leases().await?;
        let heartbeats = self.store.list_heartbeats().await?;
        let now = clock();
        self.tracker.observe(now, &heartbeats, &leases);
        let mut report = RoundReport::default();
        if !self.is_alive(now) {
            self.enforce_liveness(now);
            return Ok(report);
        }
        let me = self.config.worker_id.clone();

        // Remove the heartbeats of workers judged dead, so a worker that
        // starts later does not count them as live for a failover time
        // (it has never seen their heartbeat change, so only time could
        // tell it). A dead worker that comes back writes a new one.
        for heartbeat in &heartbeats {
            if heartbeat.worker != self.config.worker_id
                && !self.tracker.is_worker_live(&heartbeat.worker, now)
            {
                info!(worker = %heartbeat.worker, "removing the heartbeat of an expired worker");
                self.store.remove_heartbeat(&heartbeat.worker).await?;
            }
        }
        // After a liveness loss, take own leases anew so nothing written under
        // the old counters can land.
        if self.retake_own {
            for lease in leases
                .iter_mut()
                .filter(|l| l.processing_owner() == Some(me.as_str()))
            {
                match self.store.take_lease(lease, &me).await {
                    Ok(taken) => *lease = taken,
                    Err(LeaseStoreError::LeaseLost { .. }) => report.contended += 1,
                    Err(error) => return Err(error),
                }
            }
            self.retake_own = false;
        }

        let draining = self.shared.draining.load(Ordering::SeqCst);
        let mut workers: BTreeSet<String> = self.tracker.live_workers(now).into_iter().collect();
        workers.insert(me.clone());
        report.live_workers = workers.len();
        // Draining workers (this one too, when stopping) receive nothing;
        // their leases are planned to move to the others.
        let mut stopping: BTreeSet<String> = heartbeats
            .iter()
            .filter(|h| h.draining && h.worker != me && workers.contains(&h.worker))
            .map(|h| h.worker.clone())
            .collect();
        if draining {
            stopping.insert(me.clone());
        }
        workers.retain(|w| !stopping.contains(w));
        self.shared.receivers.store(
            workers.iter().filter(|w| **w != me).count(),
            Ordering::SeqCst,
        );
        let views: Vec<LeaseView> = leases
            .iter()
            .filter(|lease| !lease.is_finished())
            .map(|lease| LeaseView {
                key: lease.key.clone(),
                holder: match self.holder(lease, &workers, now) {
                    Holder::Pinned
                        if lease
                            .processing_owner()
                            .is_some_and(|owner| stopping.contains(owner)) =>
                    {
                        Holder::Draining(lease.processing_owner().unwrap_or_default().to_owned())
                    }
                    Holder::Held(owner) if stopping.contains(&owner) => Holder::Draining(owner),
                    holder => holder,
                },
                moving: lease.handoff_in_progress(),
            })
            .collect();
        let plan = assignment::plan(&views, &workers, self.config.max_leases_per_worker);

        let by_key: BTreeMap<&str, usize> = leases
            .iter()
            .enumerate()
            .map(|(i, l)| (l.key.as_str(), i))
            .collect();
        let (takes, moves) = plan.for_worker(&me);
        let takes: Vec<usize> = takes
            .filter(|_| !draining)
            .filter_map(|key| by_key.get(key).copied())
            .collect();
        let moves: Vec<usize> = moves
            .filter(|_| !draining)
            .filter_map(|(key, _)| by_key.get(key).copied())
            .collect();
        for index in takes {
            match self.store.take_lease(&leases[index], &me).await {
                Ok(taken) => {
                    info!(lease = %taken.key, previous_owner = ?leases[index].processing_owner(), "took lease");
                    metrics::counter!(crate::metrics::LEASE_TAKES).increment(1);
                    report.taken.push(taken.key.clone());
                    leases[index] = taken;
                }
                Err(LeaseStoreError::LeaseLost { .. }) => report.contended += 1,
                Err(error) => return Err(error),
            }
        }
        for index in moves {
            match self.store.request_handoff(&leases[index], &me).await {
                Ok(moving) => {
                    info!(lease = %moving.key, from = ?moving.checkpoint_owner, "asked for a handoff");
                    report.handoffs_requested.push(moving.key.clone());
                    metrics::counter!(crate::metrics::LEASE_HANDOFFS, "event" => "requested")
                        .increment(1);
                    // Watch it closely: the new owner should start as soon
                    // as the old one releases.
                    self.awaiting
                        .insert(moving.key.clone(), now + self.config.failover_time);
                    leases[index] = moving;
                }
                Err(LeaseStoreError::LeaseLost { .. }) => report.contended += 1,
                Err(error) => return Err(error),
            }
        }

        let held: HeldLeases = leases
            .into_iter()
            .filter(|lease| lease.processing_owner() == Some(me.as_str()))
            .filter_map(|lease| {
                let token = lease.token()?;
                let handoff_requested = lease.owner.as_deref() != Some(me.as_str());
                Some((
                    lease.key.clone(),
                    HeldLease {
                        lease,
                        token,
                        handoff_requested,
                    },
                ))
            })
            .collect();
        // The takes and handoff requests above may have been slow: publish
        // only while this worker is still alive.
        let published_at = clock();
        if !self.is_alive(published_at) {
            self.enforce_liveness(published_at);
            return Ok(report);
        }
        report.lost = self
            .shared
            .held
            .borrow()
            .iter()
            .filter(|(key, before)| held.get(*key).is_none_or(|now| now.token != before.token))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &report.lost {
            warn!(lease = %key, "lease lost to another worker");
            metrics::counter!(crate::metrics::LEASE_LOSSES).increment(1);
        }
        report.held = held.len();
        self.shared.held.send_if_modified(|published| {
            let changed = *published != held;
            *published = held;
            changed
        });
        debug!(?report, "assignment round");
        Ok(report)
    }

    /// Checks the handoffs this worker is waiting for and publishes the
    /// leases whose old owner has released them, so their consumers start
    /// at once instead of at the next round.
    /// `clock` tells the time, read after each lease is read.
    pub async fn poll_awaited_handoffs(
        &mut self,
        clock: impl Fn() -> Instant,
    ) -> Result<(), LeaseStoreError> {
        let me = self.config.worker_id.clone();
        let keys: Vec<String> = self.awaiting.keys().cloned().collect();
        for key in keys {
            let lease = self.store.get_lease(&key).await?;
            let now = clock();
            match lease {
                Some(lease)
                    if lease.owner.as_deref() == Some(me.as_str())
                        && !lease.handoff_in_progress() =>
                {
                    self.awaiting.remove(&key);
                    if let Some(token) = lease.token()
                        && self.is_alive(now)
                    {
                        debug!(lease = %key, "handoff completed");
                        metrics::counter!(crate::metrics::LEASE_HANDOFFS, "event" => "received")
                            .increment(1);
                        let held = HeldLease {
                            lease,
                            token,
                            handoff_requested: false,
                        };
                        self.shared.held.send_modify(|published| {
                            published.insert(key.clone(), held);
                        });
                    }
                }
                Some(lease) if lease.owner.as_deref() == Some(me.as_str()) => {
                    if self.awaiting.get(&key).is_some_and(|until| *until <= now) {
                        self.awaiting.remove(&key);
                    }
                }
                _ => {
                    self.awaiting.remove(&key);
                }
            }
        }
        Ok(())
    }

    fn holder(&self, lease: &Lease, workers: &BTreeSet<String>, now: Instant) -> Holder {
        let me = self.config.worker_id.as_str();
        match &lease.owner {
            None => Holder::Free,
            Some(_) if lease.processing_owner() == Some(me) => Holder::Held(me.to_owned()),
            Some(_) if self.tracker.is_lease_expired(lease, now) => Holder::Free,
            Some(owner) if workers.contains(owner) => Holder::Held(owner.clone()),
            Some(_) => Holder::Pinned,
        }
    }

    /// The next moment a round is due: the regular interval after `last`, or
    /// earlier when an owner would expire.
    fn next_round(&self, last: Instant) -> Instant {
        let regular = last + self.config.assignment_interval;
        match self.tracker.next_expiry(last) {
            Some(expiry) if expiry < regular => expiry,
            _ => regular,
        }
    }

    /// Runs heartbeats and rounds until `shutdown` completes, then removes
    /// this worker's heartbeat so the others stop counting it at once.
    /// Creates the tables first if they do not exist.
    ///
    /// Leases are not released here: the scheduler hands them over first
    /// (through [`CoordinatorHandle::release`]) and then shuts this down.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), LeaseStoreError> {
        let span = info_span!("lease_coordinator", worker_id = %self.config.worker_id);
        async move {
            self.store.ensure_tables().await?;
            tokio::pin!(shutdown);
            let now = || tokio::time::Instant::now().into_std();
            let deadline = self.call_deadline(now());
            if let Err(error) = bounded(deadline, self.heartbeat(now())).await {
                warn!(%error, "first heartbeat failed; retrying");
            }
            let mut next_heartbeat = now() + self.config.heartbeat_interval;
            // The first round waits a moment, so that workers started
            // together (a scale-out) see each other's heartbeats and split
            // the leases once, instead of the first to start asking for a
            // share it must pass on again a round later.
            let mut next_round = now() + first_round_delay(self.config.assignment_interval);
            let mut next_poll = now();
            let mut announced_draining = false;
            loop {
                let liveness_deadline = self
                    .last_heartbeat_sent
                    .map_or(next_round, |sent| sent + self.config.failover_time);
                let draining = self.shared.draining.load(Ordering::SeqCst);
                if draining && !announced_draining {
                    // Tell the fleet at once, then look for their handoff
                    // requests often while the leases are handed over.
                    info!("draining: announcing it and handing leases over on request");
                    announced_draining = true;
                    next_heartbeat = now();
                    next_round = now();
                }
                let shared = Arc::clone(&self.shared);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = shared.wake.notified() => {}
                    () = tokio::time::sleep_until(next_poll.into()), if !self.awaiting.is_empty() => {
                        let deadline = self.call_deadline(now());
                        if let Err(error) = bounded(deadline, self.poll_awaited_handoffs(now)).await {
                            debug!(%error, "checking awaited handoffs failed");
                        }
                        next_poll = now() + self.config.handoff_poll_interval;
                    }
                    () = tokio::time::sleep_until(next_heartbeat.into()) => {
                        let sent = now();
                        let deadline = self.call_deadline(sent);
                        next_heartbeat = match bounded(deadline, self.heartbeat(sent)).await {
                            Ok(()) => sent + self.config.heartbeat_interval,
                            Err(error) => {
                                warn!(%error, "heartbeat failed");
                                now() + self.config.heartbeat_interval / 4
                            }
                        };
                    }
                    () = tokio::time::sleep_until(liveness_deadline.into()),
                        if !self.shared.held.borrow().is_empty() => {
                        self.enforce_liveness(now());
                    }
                    () = tokio::time::sleep_until(next_round.into()) => {
                        let started = now();
                        let deadline = self.call_deadline(started);
                        if let Err(error) = bounded(deadline, self.assignment_round(now)).await {
                            warn!(%error, "assignment round failed; retrying at the next one");
                        }
                        next_round = if draining {
                            now() + self.config.handoff_poll_interval
                        } else {
                            self.next_round(started).max(now())
                        };
                        next_poll = now() + self.config.handoff_poll_interval;
                    }
                }
            }
            info!("lease coordinator stopping; removing heartbeat");
            self.store.remove_heartbeat(&self.config.worker_id).await
        }
        .instrument(span)
        .await
    }
}

/// How long a worker waits after its first heartbeat before its first
/// assignment round: a tenth of the assignment interval, at most 1 s.
fn first_round_delay(assignment_interval: std::time::Duration) -> std::time::Duration {
    (assignment_interval / 10).min(std::time::Duration::from_secs(1))
}

/// Runs `call` until `deadline`; a call still pending then is abandoned and
/// reported as [`LeaseStoreError::Unavailable`].
async fn bounded<T>(
    deadline: Instant,
    call: impl Future<Output = Result<T, LeaseStoreError>>,
) -> Result<T, LeaseStoreError> {
    match tokio::time::timeout_at(deadline.into(), call).await {
        Ok(result) => result,
        Err(_) => Err(LeaseStoreError::Unavailable {
            operation: "lease coordinator call",
            table: "lease table".to_owned(),
            attempts: 1,
            message: "no answer in time; abandoned".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kcl_checkpoint::ExtendedSequenceNumber;

    use super::*;
    use crate::{CheckpointUpdate, InMemoryLeaseStore};

    const S: fn(u64) -> Duration = Duration::from_secs;

    async fn table_with(leases: usize) -> InMemoryLeaseStore {
        let store = InMemoryLeaseStore::new();
        for n in 0..leases {
            let lease = Lease::new(
                format!("shardId-{n:012}"),
                ExtendedSequenceNumber::TrimHorizon,
            );
            store.create_lease_if_absent(&lease).await.unwrap();
        }
        store
    }

    fn coordinator(
        store: &InMemoryLeaseStore,
        worker: &str,
    ) -> (
        LeaseCoordinator<InMemoryLeaseStore>,
        CoordinatorHandle<InMemoryLeaseStore>,
    ) {
        LeaseCoordinator::new(Arc::new(store.client()), LeaseConfig::new(worker)).unwrap()
    }

    #[tokio::test]
    async fn a_worker_that_cannot_heartbeat_stops_by_itself_and_retakes_before_resuming() {
        let store = table_with(3).await;
        let (mut a, handle) = coordinator(&store, "a");
        let t0 = Instant::now();
        a.heartbeat(t0).await.unwrap();
        let report = a.assignment_round(|| t0).await.unwrap();
        assert_eq!(report.taken.len(), 3);
        let before = handle.held().borrow().clone();
        assert_eq!(before.len(), 3);

        // No heartbeat gets through for the failover time: it stops itself,
        // just before anyone else could judge it expired.
        assert!(!a.enforce_liveness(t0 + S(9)));
        assert!(a.enforce_liveness(t0 + S(10)));
        assert!(handle.held().borrow().is_empty());
        // Rounds while cut off publish nothing.
        a.assignment_round(|| t0 + S(11)).await.unwrap();
        assert!(handle.held().borrow().is_empty());

        // Back: its leases are taken anew, so the old tokens are fenced.
        a.heartbeat(t0 + S(12)).await.unwrap();
        a.assignment_round(|| t0 + S(12)).await.unwrap();
        let after = handle.held().borrow().clone();
        assert_eq!(after.len(), 3);
        for (key, held) in &after {
            assert_eq!(held.token.counter, before[key].token.counter + 1);
            let stale = store
                .checkpoint(
                    &before[key].token,
                    &CheckpointUpdate::at(ExtendedSequenceNumber::Latest),
                )
                .await;
            assert!(stale.unwrap_err().is_lease_lost());
        }
    }

    #[tokio::test]
    async fn leases_of_a_silent_worker_are_taken_only_after_the_failover_time() {
        let store = table_with(4).await;
        let (mut a, _) = coordinator(&store, "a");
        let (mut b, b_handle) = coordinator(&store, "b");
        let t0 = Instant::now();
        a.heartbeat(t0).await.unwrap();
        a.assignment_round(|| t0).await.unwrap();
        // b starts and balances by asking a for handoffs; a is silent from now.
        b.heartbeat(t0).await.unwrap();
        let report = b.assignment_round(|| t0).await.unwrap();
        assert_eq!(report.handoffs_requested.len(), 2);
        for t in [5, 9] {
            b.heartbeat(t0 + S(t)).await.unwrap();
            let report = b.assignment_round(|| t0 + S(t)).await.unwrap();
            assert!(report.taken.is_empty(), "taken at {t}s: {report:?}");
        }
        // a's heartbeat has not changed for 10 s (b saw it first at t0).
        let report = b.assignment_round(|| t0 + S(10)).await.unwrap();
        assert_eq!(report.taken.len(), 4, "{report:?}");
        assert_eq!(b_handle.held().borrow().len(), 4);
        assert_eq!(report.live_workers, 1);
    }

    #[tokio::test]
    async fn a_handoff_request_is_published_and_release_completes_it() {
        let store = table_with(2).await;
        let (mut a, a_handle) = coordinator(&store, "a");
        let (mut b, b_handle) = coordinator(&store, "b");
        let t0 = Instant::now();
        a.heartbeat(t0).await.unwrap();
        a.assignment_round(|| t0).await.unwrap();
        b.heartbeat(t0).await.unwrap();
        b.assignment_round(|| t0).await.unwrap();
        assert!(
            b_handle.held().borrow().is_empty(),
            "not b's until a releases"
        );

        a.assignment_round(|| t0 + S(1)).await.unwrap();
        let requested = a_handle.handoffs_requested();
        assert_eq!(requested.len(), 1);
        a_handle.release(&requested[0]).await.unwrap();
        assert_eq!(a_handle.held().borrow().len(), 1);

        b.assignment_round(|| t0 + S(2)).await.unwrap();
        let b_held = b_handle.held().borrow().clone();
        assert_eq!(b_held.keys().collect::<Vec<_>>(), [&requested[0].key]);
        assert!(!b_held.values().any(|h| h.handoff_requested));
    }

    #[tokio::test(start_paused = true)]
    async fn run_balances_then_fails_over_within_failover_plus_one_round() {
        let store = table_with(10).await;
        let config = |w: &str| LeaseConfig::new(w);
        let mut tasks = Vec::new();
        let mut handles = Vec::new();
        for worker in ["a", "b"] {
            let (coordinator, handle) =
                LeaseCoordinator::new(Arc::new(store.client()), config(worker)).unwrap();
            // Stand-in for the scheduler: hand over whatever is asked for.
            let releaser = handle.clone();
            tokio::spawn(async move {
                let mut held = releaser.held();
                while held.changed().await.is_ok() {
                    for token in releaser.handoffs_requested() {
                        let _ = releaser.release(&token).await;
                    }
                }
            });
            tasks.push(tokio::spawn(coordinator.run(std::future::pending())));
            handles.push(handle);
            tokio::time::sleep(S(3)).await;
        }
        tokio::time::sleep(S(30)).await;
        let counts: Vec<usize> = handles.iter().map(|h| h.held().borrow().len()).collect();
        assert_eq!(counts, [5, 5]);

        // a crashes: no release, no goodbye.
        tasks[0].abort();
        let crashed_at = tokio::time::Instant::now();
        let mut held = handles[1].held();
        while held.borrow_and_update().len() < 10 {
            held.changed().await.unwrap();
        }
        let failover = crashed_at.elapsed();
        assert!(failover <= S(20), "took {failover:?}");
        assert!(
            failover >= S(5),
            "took {failover:?}: faster than a live worker allows"
        );
    }

    #[tokio::test]
    async fn a_slow_read_does_not_make_a_live_owner_look_expired() {
        let store = table_with(2).await;
        let (mut a, _) = coordinator(&store, "a");
        let t0 = Instant::now();
        let clock = Arc::new(std::sync::Mutex::new(t0));
        let slow = StallingStore {
            inner: store.client(),
            stalled: Arc::new(AtomicBool::new(false)),
            slow_scan: Some((Arc::clone(&clock), S(4))),
        };
        let (mut b, _) = LeaseCoordinator::new(Arc::new(slow), LeaseConfig::new("b")).unwrap();
        let b_clock = || *clock.lock().unwrap();
        a.heartbeat(t0).await.unwrap();
        a.assignment_round(|| t0).await.unwrap();
        b.heartbeat(b_clock()).await.unwrap();
        b.assignment_round(b_clock).await.unwrap();

        // b's next round begins at t0+5, and its reads take 4 s. a heartbeats
        // at t0+8 while they are under way; b sees that at t0+9.
        *clock.lock().unwrap() = t0 + S(5);
        a.heartbeat(t0 + S(8)).await.unwrap();
        b.heartbeat(b_clock()).await.unwrap();
        b.assignment_round(b_clock).await.unwrap();

        // a stays alive until t0+18 by its own reckoning; at t0+16 b
        // (alive, its reads now quick) must still count it live.
        *clock.lock().unwrap() = t0 + S(16);
        b.heartbeat(b_clock()).await.unwrap();
        let b_quick = || t0 + S(16);
        let report = b.assignment_round(b_quick).await.unwrap();
        assert!(
            report.taken.is_empty(),
            "took from a live owner: {report:?}"
        );
        // Past a's own failover it may.
        b.heartbeat(t0 + S(19)).await.unwrap();
        let report = b.assignment_round(|| t0 + S(19)).await.unwrap();
        assert_eq!(report.taken.len(), 2, "{report:?}");
    }

    /// A client of the tables whose calls hang, unanswered, while `stalled`
    /// is set: a network partition that drops packets. With `slow_scan`,
    /// listing the leases moves a test clock on, as a slow read would.
    struct StallingStore {
        inner: InMemoryLeaseStore,
        stalled: Arc<AtomicBool>,
        slow_scan: Option<(Arc<std::sync::Mutex<Instant>>, std::time::Duration)>,
    }

    impl StallingStore {
        async fn gate(&self) {
            if self.stalled.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        }
    }

    #[async_trait::async_trait]
    impl LeaseStore for StallingStore {
        async fn ensure_tables(&self) -> Result<(), LeaseStoreError> {
            self.gate().await;
            self.inner.ensure_tables().await
        }
        async fn list_leases(&self) -> Result<Vec<Lease>, LeaseStoreError> {
            self.gate().await;
            if let Some((clock, takes)) = &self.slow_scan {
                *clock.lock().unwrap() += *takes;
            }
            self.inner.list_leases().await
        }
        async fn get_lease(&self, key: &str) -> Result<Option<Lease>, LeaseStoreError> {
            self.gate().await;
            self.inner.get_lease(key).await
        }
        async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError> {
            self.gate().await;
            self.inner.create_lease_if_absent(lease).await
        }
        async fn take_lease(&self, seen: &Lease, worker: &str) -> Result<Lease, LeaseStoreError> {
            self.gate().await;
            self.inner.take_lease(seen, worker).await
        }
        async fn request_handoff(&self, seen: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
            self.gate().await;
            self.inner.request_handoff(seen, to).await
        }
        async fn checkpoint(
            &self,
            token: &LeaseToken,
            update: &CheckpointUpdate,
        ) -> Result<(), LeaseStoreError> {
            self.gate().await;
            self.inner.checkpoint(token, update).await
        }
        async fn record_child_shards(
            &self,
            token: &LeaseToken,
            children: &BTreeSet<String>,
        ) -> Result<(), LeaseStoreError> {
            self.gate().await;
            self.inner.record_child_shards(token, children).await
        }
        async fn release_lease(&self, token: &LeaseToken) -> Result<(), LeaseStoreError> {
            self.gate().await;
            self.inner.release_lease(token).await
        }
        async fn delete_lease(&self, key: &str) -> Result<(), LeaseStoreError> {
            self.gate().await;
            self.inner.delete_lease(key).await
        }
        async fn heartbeat(&self, heartbeat: &WorkerHeartbeat) -> Result<(), LeaseStoreError> {
            self.gate().await;
            self.inner.heartbeat(heartbeat).await
        }
        async fn list_heartbeats(&self) -> Result<Vec<WorkerHeartbeat>, LeaseStoreError> {
            self.gate().await;
            self.inner.list_heartbeats().await
        }
        async fn remove_heartbeat(&self, worker: &str) -> Result<(), LeaseStoreError> {
            self.gate().await;
            self.inner.remove_heartbeat(worker).await
        }
        fn request_counts(&self) -> crate::RequestCounts {
            self.inner.request_counts()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_whose_table_calls_hang_stops_its_shards_within_the_failover_time() {
        let store = table_with(4).await;
        let stalled = Arc::new(AtomicBool::new(false));
        let stalling = StallingStore {
            inner: store.client(),
            stalled: Arc::clone(&stalled),
            slow_scan: None,
        };
        let (coordinator, handle) =
            LeaseCoordinator::new(Arc::new(stalling), LeaseConfig::new("a")).unwrap();
        let task = tokio::spawn(coordinator.run(std::future::pending()));
        let mut held = handle.held();
        while held.borrow_and_update().len() < 4 {
            held.changed().await.unwrap();
        }
        let last_heartbeat = handle.last_heartbeat().unwrap();

        // From now on every call hangs, unanswered: no error ever comes back.
        stalled.store(true, Ordering::SeqCst);
        let stopped = tokio::time::timeout(S(60), async {
            while !held.borrow_and_update().is_empty() {
                held.changed().await.unwrap();
            }
        })
        .await;
        assert!(stopped.is_ok(), "still processing a minute after the cut");
        let since_heartbeat = tokio::time::Instant::now()
            .into_std()
            .duration_since(last_heartbeat);
        assert!(
            since_heartbeat <= S(10),
            "stopped after {since_heartbeat:?}"
        );
        task.abort();
    }
}
