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
use std::time::Instant;

use tokio::sync::watch;
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
pub struct LeaseCoordinator<S> {
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
    held: Arc<watch::Sender<HeldLeases>>,
}

/// What the rest of the worker uses to follow and act on the held leases.
#[derive(Clone)]
pub struct CoordinatorHandle<S> {
    store: Arc<S>,
    held: Arc<watch::Sender<HeldLeases>>,
}

impl<S: LeaseStore> CoordinatorHandle<S> {
    /// The leases this worker processes; changes whenever a round or a
    /// release changes them.
    pub fn held(&self) -> watch::Receiver<HeldLeases> {
        self.held.subscribe()
    }

    /// Gives a lease up (after a handoff request, or on shutdown): completes
    /// the handoff if one was requested, otherwise leaves the lease unowned
    /// for another worker to take. The lease stops being published at once.
    pub async fn release(&self, token: &LeaseToken) -> Result<(), LeaseStoreError> {
        let result = self.store.release_lease(token).await;
        if result.is_ok() || result.as_ref().is_err_and(LeaseStoreError::is_lease_lost) {
            self.held.send_if_modified(|held| {
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

impl<S: LeaseStore> LeaseCoordinator<S> {
    /// A coordinator for the worker `config.worker_id`, once the settings are
    /// validated.
    pub fn new(
        store: Arc<S>,
        config: LeaseConfig,
    ) -> Result<(Self, CoordinatorHandle<S>), LeaseConfigError> {
        config.validate()?;
        let (held, _) = watch::channel(HeldLeases::new());
        let held = Arc::new(held);
        let handle = CoordinatorHandle {
            store: Arc::clone(&store),
            held: Arc::clone(&held),
        };
        let coordinator = Self {
            tracker: LivenessTracker::new(config.failover_time),
            store,
            config,
            beat: 1,
            last_heartbeat_sent: None,
            retake_own: false,
            held,
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
        };
        self.store.heartbeat(&heartbeat).await?;
        self.beat += 1;
        if !self.is_alive(now) && self.last_heartbeat_sent.is_some() {
            info!("heartbeat restored; own leases will be taken anew before processing");
        }
        self.last_heartbeat_sent = Some(now);
        Ok(())
    }

    /// Whether this worker may process shards at `now`: it has heartbeated
    /// successfully within the failover time.
    pub fn is_alive(&self, now: Instant) -> bool {
        self.last_heartbeat_sent
            .is_some_and(|sent| now.saturating_duration_since(sent) < self.config.failover_time)
    }

    /// Stops publishing any lease if liveness is lost at `now`. Returns
    /// whether it did.
    pub fn enforce_liveness(&mut self, now: Instant) -> bool {
        if self.is_alive(now) || self.held.borrow().is_empty() {
            return false;
        }
        warn!(
            failover_time = ?self.config.failover_time,
            "no successful heartbeat for the failover time: stopping all shards, others may take them"
        );
        self.retake_own = true;
        self.held.send_replace(HeldLeases::new());
        true
    }

    /// Reads the tables, judges liveness, carries out this worker's part of
    /// the plan and publishes the leases it processes.
    pub async fn assignment_round(&mut self, now: Instant) -> Result<RoundReport, LeaseStoreError> {
        let mut leases = self.store.list_leases().await?;
        let heartbeats = self.store.list_heartbeats().await?;
        self.tracker.observe(now, &heartbeats, &leases);
        let mut report = RoundReport::default();
        if !self.is_alive(now) {
            self.enforce_liveness(now);
            return Ok(report);
        }
        let me = self.config.worker_id.clone();

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

        let mut workers: BTreeSet<String> = self.tracker.live_workers(now).into_iter().collect();
        workers.insert(me.clone());
        report.live_workers = workers.len();
        let views: Vec<LeaseView> = leases
            .iter()
            .filter(|lease| !lease.is_finished())
            .map(|lease| LeaseView {
                key: lease.key.clone(),
                holder: self.holder(lease, &workers, now),
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
        let takes: Vec<usize> = takes.filter_map(|key| by_key.get(key).copied()).collect();
        let moves: Vec<usize> = moves
            .filter_map(|(key, _)| by_key.get(key).copied())
            .collect();
        for index in takes {
            match self.store.take_lease(&leases[index], &me).await {
                Ok(taken) => {
                    info!(lease = %taken.key, previous_owner = ?leases[index].processing_owner(), "took lease");
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
        report.lost = self
            .held
            .borrow()
            .iter()
            .filter(|(key, before)| held.get(*key).is_none_or(|now| now.token != before.token))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &report.lost {
            warn!(lease = %key, "lease lost to another worker");
        }
        report.held = held.len();
        self.held.send_if_modified(|published| {
            let changed = *published != held;
            *published = held;
            changed
        });
        debug!(?report, "assignment round");
        Ok(report)
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
            if let Err(error) = self.heartbeat(now()).await {
                warn!(%error, "first heartbeat failed; retrying");
            }
            let mut next_heartbeat = now() + self.config.heartbeat_interval;
            let mut next_round = now();
            loop {
                let liveness_deadline = self
                    .last_heartbeat_sent
                    .map_or(next_round, |sent| sent + self.config.failover_time);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep_until(next_heartbeat.into()) => {
                        let sent = now();
                        next_heartbeat = match self.heartbeat(sent).await {
                            Ok(()) => sent + self.config.heartbeat_interval,
                            Err(error) => {
                                warn!(%error, "heartbeat failed");
                                now() + self.config.heartbeat_interval / 4
                            }
                        };
                    }
                    () = tokio::time::sleep_until(liveness_deadline.into()),
                        if !self.held.borrow().is_empty() => {
                        self.enforce_liveness(now());
                    }
                    () = tokio::time::sleep_until(next_round.into()) => {
                        let started = now();
                        if let Err(error) = self.assignment_round(started).await {
                            warn!(%error, "assignment round failed; retrying at the next one");
                        }
                        next_round = self.next_round(started).max(now());
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
