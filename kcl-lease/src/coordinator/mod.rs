//! The lease coordinator: the task of each worker that keeps it alive in the
//! fleet's eyes, takes and asks for leases, and tells the scheduler which
//! shards to process and until when.
//!
//! It runs two loops side by side, so that a slow assignment round never
//! delays a heartbeat:
//! - [heartbeats](heartbeat), every `heartbeat_interval`: one write to the
//!   workers table, each with a value no earlier write had. Each confirmed
//!   heartbeat moves the worker's [deadline](crate::deadline) to the moment
//!   it was sent plus the failover time minus the safety margin; the
//!   worker's consumers check that deadline themselves before every
//!   delivery and every checkpoint. If the deadline passes, the worker has
//!   lost its liveness: it stops publishing its leases, and once it can
//!   heartbeat again it takes them anew (bumping their counters) before
//!   processing them, which fences anything left over from before. A worker
//!   also takes its own leases anew when it starts, since a previous process
//!   with its id may have left them.
//! - assignment rounds, every `assignment_interval`, and also at the moment
//!   an owner would expire: read both tables, judge liveness, compute the
//!   [plan](crate::assignment), take free leases and ask for handoffs (a
//!   draining worker hands its own leases to the plan's receivers instead),
//!   then publish the leases this worker processes. Between rounds, it
//!   checks the leases it waits for every `handoff_poll_interval`, and
//!   reads its own heartbeat item every `watch_interval` (leases handed to
//!   it, an operator's eviction).
//!
//! The held leases are published on a `watch` channel, each with the epoch
//! of liveness it was published in; the scheduler starts a shard consumer
//! for each, stops the consumers of leases that disappear, and answers
//! handoff requests by checkpointing and calling
//! [`CoordinatorHandle::release`].

mod heartbeat;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::assignment::{self, RoundView};
use crate::deadline::{Liveness, ProcessingDeadline};
use crate::liveness::{LivenessTracker, ReadWindow};
use crate::{Lease, LeaseConfig, LeaseConfigError, LeaseStore, LeaseStoreError, LeaseToken};

use heartbeat::Heart;

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
    /// The epoch of liveness the lease was published in: it may be
    /// processed only while the worker's liveness stays in this epoch (see
    /// [`CoordinatorHandle::deadline`]).
    pub epoch: u64,
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
    /// Leases this draining worker handed to the receivers the plan picks.
    pub handed_over: Vec<String>,
    /// Takes and handoff requests another worker won first.
    pub contended: usize,
    /// Leases processed before this round and no longer.
    pub lost: Vec<String>,
    /// Leases processed after this round.
    pub held: usize,
    /// Live workers seen, this one included.
    pub live_workers: usize,
    /// Heartbeats of expired workers this round removed.
    pub removed_heartbeats: Vec<String>,
}

/// Runs heartbeats and assignment rounds for one worker.
pub struct LeaseCoordinator<S: ?Sized> {
    /// The tables.
    store: Arc<S>,
    /// The validated settings.
    config: LeaseConfig,
    /// When this worker last saw each other worker's heartbeat change, by
    /// its own clock.
    tracker: LivenessTracker,
    /// What the loops and the handles share.
    shared: Arc<Shared>,
    /// Handoffs this worker asked for and is waiting to complete: the moment
    /// it stops watching each (the regular rounds take over then), and the
    /// epoch it asked in (a lease received in a later epoch is taken anew
    /// by a round before it is processed).
    awaiting: BTreeMap<String, (Instant, u64)>,
    /// Leases this draining worker [handed over](Self::hand_over) and
    /// still processes, with the moment it lets its consumers release them:
    /// one watch interval after the receivers were told, so that each
    /// receiver is already checking the lease when it is released.
    handing: BTreeMap<String, Instant>,
    /// Whether the last assignment round acted as a draining worker.
    round_drained: bool,
}

/// What the coordinator's loops and its handles share.
struct Shared {
    /// This worker's heartbeats and the deadline they earn.
    heart: Heart,
    /// The leases this worker processes.
    held: watch::Sender<HeldLeases>,
    /// Set while the worker hands its leases over (it is stopping, or an
    /// operator evicted it): it takes no more leases, announces it in its
    /// heartbeat, and others ask for its leases.
    draining: watch::Sender<bool>,
    /// The worker is stopping ([`CoordinatorHandle::stop_taking`]).
    stopping: std::sync::atomic::AtomicBool,
    /// An operator asked the worker to hand its leases over without
    /// stopping (its heartbeat item's eviction mark, as of the last round).
    evicted: std::sync::atomic::AtomicBool,
    /// Live workers other than this one that are not draining, as of the
    /// last round: who could receive this worker's leases.
    receivers: AtomicUsize,
    /// The workers with a heartbeat as of the last read of the workers
    /// table, each with whether it is draining; `None` before the first
    /// read. A lease handed to a worker that is draining or gone by then
    /// is released to no one (see [`CoordinatorHandle::release`]).
    workers_seen: std::sync::Mutex<Option<BTreeMap<String, bool>>>,
    /// Leases handed to this worker that it took note of (asked for, found
    /// in a round, or offered), and leases it published: at a clean stop,
    /// the first that are not among the second are released (see
    /// [`release_leftovers`]).
    arrivals: std::sync::Mutex<(BTreeSet<String>, BTreeSet<String>)>,
    /// Owners with no heartbeat whose leases' counters keep moving (Java
    /// KCL workers on this table), with those leases, as of the last round.
    foreign_owners: std::sync::Mutex<BTreeMap<String, Vec<String>>>,
    /// The streams this worker announces in its heartbeat (see
    /// [`WorkerHeartbeat::streams`](crate::WorkerHeartbeat::streams)).
    streams: std::sync::Mutex<Option<std::collections::BTreeSet<String>>>,
    /// The shards the scheduler reports stalled, announced in the
    /// heartbeat (see [`WorkerHeartbeat::stalled_shards`](crate::WorkerHeartbeat::stalled_shards)).
    stalled: std::sync::Mutex<BTreeSet<String>>,
}

impl Shared {
    /// Notes leases handed to this worker (`received`) or published by it.
    fn note_arrivals<'a>(&self, keys: impl IntoIterator<Item = &'a String>, published: bool) {
        let mut arrivals = self
            .arrivals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let set = if published {
            &mut arrivals.1
        } else {
            &mut arrivals.0
        };
        set.extend(keys.into_iter().cloned());
    }

    /// Forgets a lease this worker released.
    fn forget_arrival(&self, key: &str) {
        let mut arrivals = self
            .arrivals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        arrivals.0.remove(key);
        arrivals.1.remove(key);
    }

    /// Whether `worker` could receive a lease, by the last read of the
    /// workers table: it has a heartbeat and is not draining (any worker
    /// before the first read).
    fn can_receive(&self, worker: &str) -> bool {
        self.workers_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .is_none_or(|seen| seen.get(worker) == Some(&false))
    }

    /// Drains while stopping or evicted.
    fn update_draining(&self) {
        let draining = self.stopping.load(Ordering::SeqCst) || self.evicted.load(Ordering::SeqCst);
        self.draining.send_if_modified(|current| {
            let changed = *current != draining;
            *current = draining;
            changed
        });
    }

    /// Stops publishing every lease if the deadline has passed at `now`.
    /// Returns whether it had.
    fn lapse_if_due(&self, now: Instant) -> bool {
        if !self.heart.lapse(now) {
            return false;
        }
        warn!(
            "no heartbeat confirmed in time: every shard stops (each consumer stopped at the \
             deadline by itself); leases are taken anew once heartbeats get through"
        );
        self.held.send_replace(HeldLeases::new());
        true
    }
}

/// Reads a lease this worker holds or waits for. An item that is no longer
/// a lease it can read (rewritten by someone else) counts as gone, like a
/// deleted one, and does not stop the reads of the others.
async fn read_own_lease<S: LeaseStore + ?Sized>(
    store: &S,
    key: &str,
) -> Result<Option<Lease>, LeaseStoreError> {
    match store.get_lease(key).await {
        Err(LeaseStoreError::InvalidItem { reason, .. }) => {
            warn!(lease = %key, %reason, "lease can no longer be read; counting it as lost");
            Ok(None)
        }
        read => read,
    }
}

/// Records the group's gauges from one round's read: its unfinished
/// leases by state and its live workers.
fn record_group(leases: &[Lease], live_workers: usize) {
    let table: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    let (mut processing, mut waiting, mut unassigned) = (0u32, 0u32, 0u32);
    for lease in leases.iter().filter(|l| !l.is_finished()) {
        if assignment::waiting_on_parents(lease, &table) {
            waiting += 1;
        } else if lease.owner.is_some() {
            processing += 1;
        } else {
            unassigned += 1;
        }
    }
    for (state, count) in [
        ("processing", processing),
        ("waiting", waiting),
        ("unassigned", unassigned),
    ] {
        metrics::gauge!(crate::metrics::GROUP_LEASES, "state" => state).set(f64::from(count));
    }
    metrics::gauge!(crate::metrics::GROUP_WORKERS).set(live_workers as f64);
}

/// Logs and counts a lease this worker held and another worker now holds.
fn report_lost(key: &str) {
    warn!(lease = %key, "lease lost to another worker");
    metrics::counter!(crate::metrics::LEASE_LOSSES).increment(1);
}

/// What the rest of the worker uses to follow and act on the held leases.
pub struct CoordinatorHandle<S: ?Sized> {
    /// The tables, for releases.
    store: Arc<S>,
    /// The coordinator's state the handle reads and steers.
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
    /// leases, announces it in a heartbeat at once, runs one round at once
    /// that hands its leases over to the
    /// plan's receivers, and then, every `handoff_poll_interval`, reads the
    /// workers table and its own leases not yet asked for (requests other
    /// workers wrote). The leases already held stay published until
    /// released.
    pub fn stop_taking(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.update_draining();
    }

    /// Whether the worker hands its leases over: it is stopping
    /// ([`stop_taking`](Self::stop_taking)), or evicted by an operator.
    pub fn is_draining(&self) -> bool {
        *self.shared.draining.borrow()
    }

    /// The shards to report stalled in the next heartbeats (see
    /// [`WorkerHeartbeat::stalled_shards`](crate::WorkerHeartbeat::stalled_shards)).
    pub fn report_stalled(&self, shards: BTreeSet<String>) {
        *self
            .shared
            .stalled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = shards;
    }

    /// Whether an operator evicted the worker (see
    /// [`LeaseStore::request_eviction`](crate::LeaseStore::request_eviction)),
    /// as of the last assignment round: it hands its leases over and takes
    /// none, and goes on running.
    pub fn is_evicted(&self) -> bool {
        self.shared.evicted.load(Ordering::SeqCst)
    }

    /// When the last heartbeat that was confirmed had been sent (the lease
    /// tables were reachable then).
    pub fn last_heartbeat(&self) -> Option<Instant> {
        self.shared.heart.last_confirmed()
    }

    /// Owners that renew leases without a heartbeat (another library's
    /// workers on this table, such as the Java KCL's), with the leases they
    /// renew, as of the last assignment round. A worker that sees any is
    /// not ready: mixed fleets are not supported.
    pub fn foreign_owners(&self) -> BTreeMap<String, Vec<String>> {
        self.shared
            .foreign_owners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
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

    /// This worker's liveness as the coordinator publishes it.
    pub fn liveness(&self) -> watch::Receiver<Liveness> {
        self.shared.heart.subscribe()
    }

    /// How long a lease published in `epoch` may be processed.
    pub fn deadline(&self, epoch: u64) -> ProcessingDeadline {
        ProcessingDeadline::new(epoch, self.shared.heart.subscribe())
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
    ///
    /// A handoff whose receiver, by the last read of the workers table, is
    /// draining or has no heartbeat any more (two workers stopping at once
    /// may hand their leases to each other) is not completed: the lease is
    /// released to no one, so a live worker takes it at its next round
    /// instead of after the failover time.
    pub async fn release(&self, token: &LeaseToken) -> Result<(), LeaseStoreError> {
        let receiver_gone = self.receiver_gone(token);
        let result = match &receiver_gone {
            Some(receiver) => {
                info!(
                    lease = %token.key,
                    receiver = %receiver,
                    "the receiver of the handoff is stopping or gone; releasing the lease to no one"
                );
                self.store.release_lease_unowned(token).await
            }
            None => self.store.release_lease(token).await,
        };
        if result.is_ok() {
            // No longer this worker's: should it come back, it is a new
            // arrival (see `release_leftovers`).
            self.shared.forget_arrival(&token.key);
        }
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

    /// The receiver of the handoff of `token`'s lease, if one was asked for
    /// (as this worker last read or wrote the lease) and the receiver, by
    /// the last read of the workers table, is draining or has no heartbeat.
    fn receiver_gone(&self, token: &LeaseToken) -> Option<String> {
        let receiver = self
            .shared
            .held
            .borrow()
            .get(&token.key)
            .filter(|h| h.token == *token)
            .and_then(|h| h.lease.owner.clone())
            .filter(|owner| *owner != token.worker)?;
        (!self.shared.can_receive(&receiver)).then_some(receiver)
    }

    /// The store the coordinator works on (for checkpoints).
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Writes a heartbeat from outside the coordinator (a test that needs
    /// one while a round is under way).
    #[cfg(test)]
    async fn heartbeat(&self, clock: impl Fn() -> Instant) -> Result<(), LeaseStoreError> {
        self.shared.beat(&*self.store, clock).await
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
        let shared = Arc::new(Shared {
            heart: Heart::new(&config),
            held: watch::channel(HeldLeases::new()).0,
            draining: watch::channel(false).0,
            stopping: Default::default(),
            evicted: Default::default(),
            receivers: AtomicUsize::new(0),
            workers_seen: Default::default(),
            arrivals: Default::default(),
            foreign_owners: Default::default(),
            streams: std::sync::Mutex::new(config.scope.announced()),
            stalled: Default::default(),
        });
        let handle = CoordinatorHandle {
            store: Arc::clone(&store),
            shared: Arc::clone(&shared),
        };
        let coordinator = Self {
            tracker: LivenessTracker::new(config.failover_time),
            store,
            config,
            shared,
            awaiting: BTreeMap::new(),
            handing: BTreeMap::new(),
            round_drained: false,
        };
        Ok((coordinator, handle))
    }

    /// The worker's id.
    pub fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    /// Writes one heartbeat. `clock` is read when it is sent and when it is
    /// confirmed: a heartbeat confirmed after the deadline it would have
    /// extended does not extend it (the worker lost its liveness meanwhile).
    pub async fn heartbeat(&self, clock: impl Fn() -> Instant) -> Result<(), LeaseStoreError> {
        self.shared.beat(&*self.store, clock).await
    }

    /// Whether this worker may process shards at `now`.
    pub fn is_alive(&self, now: Instant) -> bool {
        self.shared.heart.live_epoch(now).is_some()
    }

    /// Stops publishing any lease if the deadline has passed at `now`.
    /// Returns whether it had. (Consumers stop at the deadline by
    /// themselves; this is the coordinator catching up.)
    pub fn enforce_liveness(&mut self, now: Instant) -> bool {
        self.shared.lapse_if_due(now)
    }

    /// Publishes the owners that renew leases without a heartbeat (another
    /// library's workers on this table, such as the Java KCL's), logging
    /// each as an error when it is first seen. Their leases are not taken
    /// while their counters move (see [`liveness`](crate::liveness)).
    fn note_foreign_owners(&self) {
        let now = self.tracker.active_owners_without_heartbeat();
        let mut known = self
            .shared
            .foreign_owners
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (owner, leases) in &now {
            if !known.contains_key(owner) {
                tracing::error!(
                    owner = %owner,
                    leases = ?leases,
                    "worker {owner} has no heartbeat but keeps renewing leases: another \
                     library's worker (such as the Java KCL's) runs on this lease table. Mixed \
                     fleets are not supported; stop it. Its leases are not taken until their \
                     counters stand still for the failover time"
                );
            }
        }
        for owner in known.keys() {
            if !now.contains_key(owner) {
                info!(owner = %owner, "worker {owner} no longer renews leases");
            }
        }
        metrics::gauge!(crate::metrics::FOREIGN_LEASE_OWNERS).set(now.len() as f64);
        *known = now;
    }

    /// Changes which leases this worker processes (set before it runs,
    /// once the streams are known).
    pub fn set_scope(&mut self, scope: crate::LeaseScope) {
        *self
            .shared
            .streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = scope.announced();
        self.config.scope = scope;
    }

    /// Reads the tables, judges liveness, carries out this worker's part of
    /// the plan and publishes the leases it processes.
    ///
    /// `clock` tells the time. It is read before the tables are read and
    /// after, and the liveness of others is judged from that window (see
    /// [`liveness`](crate::liveness)); it is read again before the leases
    /// are published, which happens only if this worker stayed alive, in
    /// one epoch, throughout.
    pub async fn assignment_round(
        &mut self,
        clock: impl Fn() -> Instant,
    ) -> Result<RoundReport, LeaseStoreError> {
        self.round_drained = false;
        let began = clock();
        let epoch_at_start = self.shared.heart.live_epoch(began);
        let mut leases = self.store.list_leases().await?;
        leases.retain(|lease| self.config.scope.includes(lease));
        let heartbeats = self.store.list_heartbeats().await?;
        let ended = clock();
        self.note_eviction(&heartbeats);
        self.tracker
            .observe(ReadWindow { began, ended }, &heartbeats, &leases);
        self.note_foreign_owners();
        let mut report = RoundReport::default();
        let Some(epoch) = self.shared.heart.live_epoch(ended) else {
            self.shared.lapse_if_due(ended);
            return Ok(report);
        };
        if epoch_at_start != Some(epoch) {
            // The table was read (in part) before this epoch began: what it
            // shows may predate takes others made while this worker was not
            // alive. Act on a read from this epoch only.
            debug!("liveness changed while the tables were read; acting at the next round");
            return Ok(report);
        }
        let me = self.config.worker_id.clone();

        self.remove_dead_heartbeats(&heartbeats, &mut report)
            .await?;
        let not_retaken = self.retake_own(&mut leases, epoch, &mut report).await?;
        leases.retain(|lease| !not_retaken.contains(&lease.key));

        let draining = *self.shared.draining.borrow();
        self.round_drained = draining;
        let (workers, stopping) = assignment::planning_workers(
            &self.config.worker_id,
            self.tracker.live_workers(),
            &heartbeats,
            &self.config.scope,
            draining,
        );
        report.live_workers = workers.len() + stopping.len();
        self.note_workers(&heartbeats);
        let round = RoundView {
            me: &me,
            workers: &workers,
            stopping: &stopping,
            heartbeats: &heartbeats,
        };
        let views = assignment::lease_views(&leases, &round, |lease| {
            self.tracker.is_lease_expired(lease)
        });
        let plan = assignment::plan(&views, &workers, self.config.max_leases_per_worker);
        if draining {
            // Receivers that do not watch their item learn of a lease
            // handed to them only at their next round: leave the asking
            // to them then.
            if let Some(hold) = self.config.watch_interval {
                self.hand_over(&plan, &mut leases, hold, &clock, &mut report)
                    .await?;
            }
        } else {
            self.carry_out(&plan, &mut leases, (ended, epoch), &mut report)
                .await?;
            self.await_handed_to_me(&leases, (ended, epoch));
            if self.config.watch_interval.is_none()
                && let Err(error) = self.clear_own_offers(&heartbeats).await
            {
                debug!(%error, "clearing this worker's offers failed; trying at the next round");
            }
        }
        // As this round leaves the table: after its own takes.
        record_group(&leases, report.live_workers);
        self.publish(leases, epoch, clock, &mut report);
        debug!(?report, "assignment round");
        Ok(report)
    }

    /// Carries out this worker's part of `plan`: takes the free leases
    /// planned for it and asks for the handoffs planned to it, updating
    /// `leases` with what was written. A lease another worker changed first
    /// is counted as contended and left for the next round. `read` is when
    /// the tables were read and the epoch the round acts in.
    async fn carry_out(
        &mut self,
        plan: &assignment::Plan,
        leases: &mut [Lease],
        (read, epoch): (Instant, u64),
        report: &mut RoundReport,
    ) -> Result<(), LeaseStoreError> {
        let me = self.config.worker_id.clone();
        let by_key: BTreeMap<&str, usize> = leases
            .iter()
            .enumerate()
            .map(|(i, l)| (l.key.as_str(), i))
            .collect();
        let (takes, moves) = plan.for_worker(&me);
        let takes: Vec<usize> = takes.filter_map(|key| by_key.get(key).copied()).collect();
        let moves: Vec<usize> = moves
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
                    self.awaiting.insert(
                        moving.key.clone(),
                        (read + self.config.failover_time, epoch),
                    );
                    self.shared.note_arrivals([&moving.key], false);
                    leases[index] = moving;
                }
                Err(LeaseStoreError::LeaseLost { .. }) => report.contended += 1,
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// While draining: hands this worker's leases to the receivers the plan
    /// picks, writing the handoff requests they would write at their own
    /// rounds on their behalf, then tells each receiver through its
    /// heartbeat item, which it [watches](Self::watch) every `hold`. The
    /// consumers here go on processing those leases for `hold` after that
    /// (see [`let_go`](Self::let_go)), so that each receiver is already
    /// checking its lease when it is released and starts within a handoff
    /// poll, instead of at its next round. A lease that changed meanwhile is
    /// counted as contended (a drain poll or the next round reads it again).
    async fn hand_over(
        &mut self,
        plan: &assignment::Plan,
        leases: &mut [Lease],
        hold: Duration,
        clock: &impl Fn() -> Instant,
        report: &mut RoundReport,
    ) -> Result<(), LeaseStoreError> {
        let mut offers: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (key, to) in plan.gives(&self.config.worker_id) {
            let Some(lease) = leases.iter_mut().find(|lease| lease.key == key) else {
                continue;
            };
            let requested = match self.store.request_handoff(lease, to).await {
                Ok(moving) => Ok(moving),
                // A request may take effect though its answer is an error
                // (or its retry then fails the condition): read what is
                // there.
                Err(error) => match read_own_lease(&*self.store, key).await {
                    Ok(Some(now))
                        if now.owner.as_deref() == Some(to)
                            && now.checkpoint_owner.as_deref()
                                == Some(self.config.worker_id.as_str())
                            && now.counter == lease.counter =>
                    {
                        Ok(now)
                    }
                    Ok(_) => Err(error),
                    Err(read_error) => Err(read_error),
                },
            };
            match requested {
                Ok(moving) => {
                    info!(lease = %key, to = %to, "handing lease over");
                    metrics::counter!(crate::metrics::LEASE_HANDOFFS, "event" => "handed_over")
                        .increment(1);
                    report.handed_over.push(key.to_owned());
                    offers.entry(to).or_default().insert(key.to_owned());
                    *lease = moving;
                }
                Err(LeaseStoreError::LeaseLost { .. }) => report.contended += 1,
                Err(error) => {
                    // Those already handed over are still told and held
                    // back; the rest wait for the next round.
                    warn!(%error, "handing leases over failed; trying again at the next round");
                    break;
                }
            }
        }
        for (to, keys) in offers {
            let told = self.store.offer_leases(to, &keys).await;
            // Nobody to wait for when the receiver is gone.
            if !matches!(told, Ok(false)) {
                let release_at = clock() + hold;
                for key in &keys {
                    self.handing.insert(key.clone(), release_at);
                }
            }
            match told {
                Ok(true) => {}
                Ok(false) => {
                    debug!(to = %to, "the receiver has no heartbeat any more");
                    // Its consumers release these to no one.
                    if let Some(seen) = self
                        .shared
                        .workers_seen
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .as_mut()
                    {
                        seen.remove(to);
                    }
                }
                Err(error) => warn!(
                    to = %to,
                    %error,
                    "could not tell the receiver of the leases handed to it; it finds them at \
                     its next round"
                ),
            }
        }
        Ok(())
    }

    /// Lets the consumers release the leases this worker handed over (see
    /// `hand_over`) whose hold has ended at `now`: publishes them
    /// as asked for. A worker that is not stopping (evicted) reads the
    /// workers table first, as a stopping one does at every drain poll, so
    /// that a lease whose receiver has stopped meanwhile is released to no
    /// one (see [`CoordinatorHandle::release`]).
    pub async fn let_go(&mut self, now: Instant) {
        if !self.shared.stopping.load(Ordering::SeqCst) {
            let read = tokio::time::timeout(LET_GO_READ_LIMIT, self.store.list_heartbeats()).await;
            match read {
                Ok(Ok(heartbeats)) => self.note_workers(&heartbeats),
                Ok(Err(error)) => {
                    debug!(%error, "reading the workers table before a release failed")
                }
                Err(_) => debug!("reading the workers table before a release took too long"),
            }
        }
        let due: Vec<String> = self
            .handing
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &due {
            self.handing.remove(key);
        }
        let me = self.config.worker_id.as_str();
        self.shared.held.send_if_modified(|held| {
            let mut changed = false;
            for key in &due {
                if let Some(entry) = held.get_mut(key)
                    && entry.lease.owner.as_deref() != Some(me)
                    && !entry.handoff_requested
                {
                    debug!(lease = %key, to = ?entry.lease.owner, "releasing the lease handed over");
                    entry.handoff_requested = true;
                    changed = true;
                }
            }
            changed
        });
    }

    /// Watches the leases handed to this worker that it did not ask for (a
    /// draining worker [handed them over](Self::hand_over)) as it watches
    /// the ones it asked for, so that it starts each as soon as it is
    /// released. `read` is when the tables were read and the epoch the
    /// round acts in.
    fn await_handed_to_me(&mut self, leases: &[Lease], (read, epoch): (Instant, u64)) {
        let me = self.config.worker_id.as_str();
        for lease in leases {
            if lease.owner.as_deref() == Some(me) && lease.processing_owner() != Some(me) {
                self.awaiting
                    .entry(lease.key.clone())
                    .or_insert((read + self.config.failover_time, epoch));
                self.shared.note_arrivals([&lease.key], false);
            }
        }
    }

    /// Clears the offers on this worker's own heartbeat item, as read in a
    /// round, when it does not watch them: the round found those leases
    /// itself.
    async fn clear_own_offers(
        &self,
        heartbeats: &[crate::WorkerHeartbeat],
    ) -> Result<(), LeaseStoreError> {
        let me = self.config.worker_id.as_str();
        match heartbeats.iter().find(|h| h.worker == me) {
            Some(own) if !own.offered.is_empty() => self.store.clear_offers(me, &own.offered).await,
            _ => Ok(()),
        }
    }

    /// Reads this worker's own heartbeat item (one small read, every
    /// `watch_interval`): follows an operator's eviction mark, and watches
    /// the leases draining workers handed to it (see `hand_over`) until
    /// they are released, then clears them from the item. Returns whether
    /// there are new leases to watch (to check at once).
    ///
    /// Leases are watched only by a worker that is alive, not draining, and
    /// not waiting to take its own leases anew after a loss of liveness;
    /// otherwise its next round finds them.
    pub async fn watch(&mut self, clock: impl Fn() -> Instant) -> Result<bool, LeaseStoreError> {
        let me = self.config.worker_id.clone();
        let Some(item) = self.store.get_heartbeat(&me).await? else {
            return Ok(false);
        };
        self.note_eviction(std::slice::from_ref(&item));
        if item.offered.is_empty() {
            return Ok(false);
        }
        let now = clock();
        self.shared.note_arrivals(&item.offered, false);
        let accepting = !*self.shared.draining.borrow() && !self.shared.heart.retake_pending();
        let mut added = false;
        if let Some(epoch) = self.shared.heart.live_epoch(now).filter(|_| accepting) {
            let held = self.shared.held.borrow();
            for key in &item.offered {
                if !held.contains_key(key) && !self.awaiting.contains_key(key) {
                    debug!(lease = %key, "lease handed to this worker; waiting for its release");
                    self.awaiting
                        .insert(key.clone(), (now + self.config.failover_time, epoch));
                    added = true;
                }
            }
        }
        self.store.clear_offers(&me, &item.offered).await?;
        Ok(added)
    }

    /// Publishes the leases this worker processes among `leases`, if it is
    /// still alive in `epoch` (the writes before may have been slow), and
    /// reports those it lost since the last publication.
    fn publish(
        &self,
        leases: Vec<Lease>,
        epoch: u64,
        clock: impl Fn() -> Instant,
        report: &mut RoundReport,
    ) {
        let me = self.config.worker_id.as_str();
        let held: HeldLeases = leases
            .into_iter()
            .filter(|lease| lease.processing_owner() == Some(me))
            .filter_map(|lease| {
                let token = lease.token()?;
                let handoff_requested =
                    lease.owner.as_deref() != Some(me) && !self.handing.contains_key(&lease.key);
                Some((
                    lease.key.clone(),
                    HeldLease {
                        lease,
                        token,
                        handoff_requested,
                        epoch,
                    },
                ))
            })
            .collect();
        let published_at = clock();
        if self.shared.heart.live_epoch(published_at) != Some(epoch) {
            self.shared.lapse_if_due(published_at);
            return;
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
            report_lost(key);
        }
        report.held = held.len();
        self.shared.note_arrivals(held.keys(), true);
        self.shared.held.send_if_modified(|published| {
            let changed = *published != held;
            *published = held;
            changed
        });
    }

    /// Follows the eviction mark on this worker's own heartbeat item: an
    /// evicted worker drains (hands its leases over, takes none) without
    /// stopping, until the mark is cleared.
    fn note_eviction(&self, heartbeats: &[crate::WorkerHeartbeat]) {
        let evicted = heartbeats
            .iter()
            .any(|h| h.worker == self.config.worker_id && h.evicted);
        if self.shared.evicted.swap(evicted, Ordering::SeqCst) != evicted {
            if evicted {
                info!("evicted by an operator: handing every lease over, taking none");
            } else {
                info!("eviction cleared: taking leases again");
            }
            self.shared.update_draining();
        }
    }

    /// Records who could receive leases, by the heartbeats just read (see
    /// [`CoordinatorHandle::receivers`] and [`CoordinatorHandle::release`]).
    fn note_workers(&self, heartbeats: &[crate::WorkerHeartbeat]) {
        self.shared
            .receivers
            .store(self.receivers(heartbeats), Ordering::SeqCst);
        *self
            .shared
            .workers_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(
            heartbeats
                .iter()
                .map(|h| (h.worker.clone(), h.draining))
                .collect(),
        );
    }

    /// How many other live workers could receive leases (not draining), by
    /// the heartbeats just observed.
    fn receivers(&self, heartbeats: &[crate::WorkerHeartbeat]) -> usize {
        assignment::receivers(
            &self.config.worker_id,
            heartbeats,
            &self.config.scope,
            |worker| self.tracker.is_worker_live(worker),
        )
    }

    /// While the worker drains, instead of a full round: reads the workers
    /// table (to know who could still receive leases) and each held lease
    /// not yet asked for, one read each, and publishes the handoff requests
    /// found and the leases that moved on. Its cost grows with the workers
    /// and the leases this worker holds, never with the lease table.
    pub async fn drain_poll(&mut self, clock: impl Fn() -> Instant) -> Result<(), LeaseStoreError> {
        let began = clock();
        let heartbeats = self.store.list_heartbeats().await?;
        let ended = clock();
        self.tracker
            .observe_heartbeats(ReadWindow { began, ended }, &heartbeats);
        self.note_workers(&heartbeats);
        let me = self.config.worker_id.as_str();
        let unasked: Vec<(String, LeaseToken)> = self
            .shared
            .held
            .borrow()
            .values()
            .filter(|h| !h.handoff_requested && !self.handing.contains_key(&h.lease.key))
            .map(|h| (h.lease.key.clone(), h.token.clone()))
            .collect();
        for (key, token) in unasked {
            let lease = read_own_lease(&*self.store, &key).await?;
            self.shared.held.send_if_modified(|held| {
                let Some(entry) = held.get_mut(&key).filter(|h| h.token == token) else {
                    return false;
                };
                match lease {
                    Some(lease) if lease.token().as_ref() == Some(&token) => {
                        let requested = lease.owner.as_deref() != Some(me);
                        if requested {
                            debug!(lease = %key, to = ?lease.owner, "handoff requested");
                            entry.handoff_requested = true;
                            entry.lease = lease;
                        }
                        requested
                    }
                    _ => {
                        report_lost(&key);
                        held.remove(&key);
                        true
                    }
                }
            });
        }
        Ok(())
    }

    /// Removes the heartbeats of workers judged dead, so a worker that
    /// starts later does not count them as live for a failover time (it has
    /// never seen their heartbeat change, so only time could tell it). Each
    /// removal is conditional on the value judged: a worker that came back
    /// meanwhile keeps its heartbeat.
    async fn remove_dead_heartbeats(
        &self,
        heartbeats: &[crate::WorkerHeartbeat],
        report: &mut RoundReport,
    ) -> Result<(), LeaseStoreError> {
        for heartbeat in heartbeats {
            if heartbeat.worker == self.config.worker_id
                || self.tracker.is_worker_live(&heartbeat.worker)
            {
                continue;
            }
            let removed = self
                .store
                .remove_heartbeat(&heartbeat.worker, Some(heartbeat.beat))
                .await?;
            if removed {
                info!(worker = %heartbeat.worker, beat = heartbeat.beat, "removed the heartbeat of an expired worker");
                report.removed_heartbeats.push(heartbeat.worker.clone());
            } else {
                info!(worker = %heartbeat.worker, "an expired worker's heartbeat changed before it was removed; kept");
            }
        }
        Ok(())
    }

    /// After a loss of liveness (and at start), takes this worker's own
    /// leases anew, so that nothing written under the old counters can land
    /// and no take another worker sent while judging this one expired can
    /// succeed afterwards.
    /// Returns the leases it could not take anew: another worker changed
    /// them first, so what this round read of them is stale and they are
    /// left out of it (neither published nor planned).
    async fn retake_own(
        &self,
        leases: &mut [Lease],
        epoch: u64,
        report: &mut RoundReport,
    ) -> Result<BTreeSet<String>, LeaseStoreError> {
        let mut not_retaken = BTreeSet::new();
        if !self.shared.heart.retake_pending() {
            return Ok(not_retaken);
        }
        let me = self.config.worker_id.as_str();
        for lease in leases
            .iter_mut()
            .filter(|l| l.processing_owner() == Some(me))
        {
            match self.store.take_lease(lease, me).await {
                Ok(taken) => {
                    debug!(lease = %taken.key, counter = taken.counter, "took own lease anew");
                    *lease = taken;
                }
                Err(LeaseStoreError::LeaseLost { .. }) => {
                    report.contended += 1;
                    not_retaken.insert(lease.key.clone());
                }
                Err(error) => return Err(error),
            }
        }
        self.shared.heart.retake_done(epoch);
        Ok(not_retaken)
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
            let lease = read_own_lease(&*self.store, &key).await?;
            let now = clock();
            let Some(&(until, asked_in)) = self.awaiting.get(&key) else {
                continue;
            };
            match lease {
                Some(lease) if !self.config.scope.includes(&lease) => {
                    self.awaiting.remove(&key);
                }
                Some(lease)
                    if lease.owner.as_deref() == Some(me.as_str())
                        && !lease.handoff_in_progress() =>
                {
                    self.awaiting.remove(&key);
                    // A lease received after a loss of liveness waits for
                    // the next round, which takes it anew first; one
                    // received as this worker stops is released at the stop.
                    if let Some(token) = lease.token()
                        && self.shared.heart.live_epoch(now) == Some(asked_in)
                        && !self.shared.stopping.load(Ordering::SeqCst)
                    {
                        self.shared.note_arrivals([&key], true);
                        debug!(lease = %key, "handoff completed");
                        metrics::counter!(crate::metrics::LEASE_HANDOFFS, "event" => "received")
                            .increment(1);
                        let held = HeldLease {
                            lease,
                            token,
                            handoff_requested: false,
                            epoch: asked_in,
                        };
                        self.shared.held.send_modify(|published| {
                            published.insert(key.clone(), held);
                        });
                    }
                }
                Some(lease) if lease.owner.as_deref() == Some(me.as_str()) => {
                    if until <= now {
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

    /// When the next held-back lease may be released (far off when none is).
    fn next_let_go(&self) -> Instant {
        self.handing
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| heartbeat::now() + self.config.assignment_interval)
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
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), LeaseStoreError> {
        let span = info_span!("lease_coordinator", worker_id = %self.config.worker_id);
        async move {
            self.store.ensure_tables().await?;
            let heartbeats = heartbeat::run_heartbeats(
                Arc::clone(&self.store),
                Arc::clone(&self.shared),
                self.config.clone(),
            );
            let deadline = heartbeat::watch_deadline(Arc::clone(&self.shared));
            let worker_id = self.config.worker_id.clone();
            let scope = self.config.scope.clone();
            let failover_time = self.config.failover_time;
            let store = Arc::clone(&self.store);
            let shared = Arc::clone(&self.shared);
            tokio::select! {
                () = shutdown => {
                    let limit = heartbeat::now() + failover_time;
                    let leftovers = release_leftovers(&*store, &worker_id, &scope, &shared);
                    if let Err(error) = bounded(limit, leftovers).await {
                        warn!(%error, "could not release the leases left over at the stop");
                    }
                }
                // The heartbeat is not removed: it is the other process's.
                error = heartbeats => return Err(error),
                () = deadline => {}
                () = self.run_rounds() => {}
            }
            info!("lease coordinator stopping; removing heartbeat");
            store.remove_heartbeat(&worker_id, None).await.map(drop)
        }
        .instrument(span)
        .await
    }

    /// The assignment loop: rounds on schedule, close watch over handoffs
    /// this worker asked for, and while draining a cheap poll of its own
    /// leases every `handoff_poll_interval`.
    async fn run_rounds(mut self) {
        let now = heartbeat::now;
        let mut draining_changes = self.shared.draining.subscribe();
        // The first round waits a moment, so that workers started together
        // (a scale-out) see each other's heartbeats and split the leases
        // once, instead of the first to start asking for a share it must
        // pass on again a round later.
        let mut next_round = now() + first_round_delay(self.config.assignment_interval);
        let mut next_poll = now();
        let mut next_drain_poll = now();
        let watch_interval = self.config.watch_interval;
        let mut next_watch = now() + watch_interval.unwrap_or(self.config.assignment_interval);
        let mut was_draining = false;
        loop {
            // Compared with the last pass rather than marked as seen by the
            // change below: a stop that came while a round or a poll was
            // under way is acted on as soon as it ends.
            let draining = *draining_changes.borrow_and_update();
            if draining && !was_draining {
                // One full round at once (hands the leases over), then (when
                // stopping) cheap polls of the leases held.
                info!("draining: handing every lease over");
                next_round = now();
                next_drain_poll = now() + self.config.handoff_poll_interval;
            }
            was_draining = draining;
            // Polls while stopping only: the shutdown timeout bounds them.
            // An evicted worker, which runs on, sees requests at its rounds.
            let polling = draining && self.shared.stopping.load(Ordering::SeqCst);
            tokio::select! {
                _ = draining_changes.changed() => {}
                () = tokio::time::sleep_until(next_poll.into()), if !self.awaiting.is_empty() => {
                    let limit = now() + self.config.failover_time;
                    if let Err(error) = bounded(limit, self.poll_awaited_handoffs(now)).await {
                        debug!(%error, "checking awaited handoffs failed");
                    }
                    next_poll = now() + self.config.handoff_poll_interval;
                }
                () = tokio::time::sleep_until(self.next_let_go().into()), if !self.handing.is_empty() => {
                    let limit = now() + self.config.failover_time;
                    let _ = tokio::time::timeout_at(limit.into(), self.let_go(now())).await;
                }
                () = tokio::time::sleep_until(next_watch.into()), if watch_interval.is_some() => {
                    let limit = now() + self.config.failover_time;
                    match bounded(limit, self.watch(now)).await {
                        Ok(true) => next_poll = now(),
                        Ok(false) => {}
                        Err(error) => debug!(%error, "reading this worker's heartbeat item failed"),
                    }
                    next_watch = now() + watch_interval.unwrap_or(self.config.assignment_interval);
                }
                () = tokio::time::sleep_until(next_drain_poll.into()), if polling => {
                    let limit = now() + self.config.failover_time;
                    if let Err(error) = bounded(limit, self.drain_poll(now)).await {
                        debug!(%error, "checking for handoff requests failed");
                    }
                    next_drain_poll = now() + self.config.handoff_poll_interval;
                }
                () = tokio::time::sleep_until(next_round.into()) => {
                    let started = now();
                    let limit = started + self.config.failover_time;
                    if let Err(error) = bounded(limit, self.assignment_round(now)).await {
                        warn!(%error, "assignment round failed; retrying at the next one");
                    }
                    next_round = self.next_round(started).max(now());
                    // A round that began draining by itself (an eviction it
                    // read) has handed the leases over already.
                    was_draining |= self.round_drained;
                    next_poll = now() + self.config.handoff_poll_interval;
                }
            }
        }
    }
}

/// At a clean stop (the scheduler has stopped every consumer), releases
/// what would otherwise wait for the failover time:
/// - leases handed to this worker as it stopped (a handoff it asked for, a
///   lease a draining worker handed it) that it never published;
/// - leases it was handing over and no longer publishes (its token went
///   stale, as after an operator's reset): the handoff is completed.
///
/// Leases it published and did not release (a processor that never
/// returned, a stream created again) are left to expire, and nothing is
/// done by a worker that is not alive or has yet to take its own leases
/// anew (another process with its id may be processing them).
async fn release_leftovers<S: LeaseStore + ?Sized>(
    store: &S,
    me: &str,
    scope: &crate::LeaseScope,
    shared: &Shared,
) -> Result<(), LeaseStoreError> {
    if shared.heart.live_epoch(heartbeat::now()).is_none() || shared.heart.retake_pending() {
        return Ok(());
    }
    let held: BTreeSet<String> = shared.held.borrow().keys().cloned().collect();
    let (arrived, published) = shared
        .arrivals
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    if arrived.is_empty() && published.is_empty() {
        return Ok(());
    }
    let leases = store.list_leases().await?;
    for lease in leases.iter().filter(|lease| {
        let unstarted_arrival = lease.owner.as_deref() == Some(me)
            && !lease.handoff_in_progress()
            && arrived.contains(&lease.key)
            && !published.contains(&lease.key);
        let stale_handoff = lease.checkpoint_owner.as_deref() == Some(me)
            && published.contains(&lease.key)
            && !held.contains(&lease.key);
        scope.includes(lease) && !lease.is_finished() && (unstarted_arrival || stale_handoff)
    }) {
        let Some(token) = lease.token() else {
            continue;
        };
        let receiver = lease.checkpoint_owner.as_ref().and(lease.owner.as_ref());
        let released = match receiver {
            Some(receiver) if !shared.can_receive(receiver) => {
                store.release_lease_unowned(&token).await
            }
            _ => store.release_lease(&token).await,
        };
        match released {
            Ok(()) => {
                info!(lease = %lease.key, to = ?receiver, "released a lease left over at the stop")
            }
            Err(LeaseStoreError::LeaseLost { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// How long an evicted worker waits for its read of the workers table before
/// it lets the leases it handed over go (without it, as last read).
const LET_GO_READ_LIMIT: Duration = Duration::from_secs(1);

/// How long a worker waits after its first heartbeat before its first
/// assignment round: a tenth of the assignment interval, at most 1 s.
fn first_round_delay(assignment_interval: Duration) -> Duration {
    (assignment_interval / 10).min(Duration::from_secs(1))
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
mod tests;
