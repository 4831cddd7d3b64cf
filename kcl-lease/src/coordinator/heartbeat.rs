//! This worker's heartbeats and the deadline they earn.
//!
//! - Every heartbeat write carries a value no earlier write of this worker
//!   id had, by any process: values grow with every attempt (not only with
//!   every success, so a write that took effect but reported an error is
//!   followed by a different value), they start from the wall clock in
//!   microseconds (so a restarted process starts above the values of the
//!   one before it), and the store only ever moves the stored value forward
//!   (a late write of an old value fails; a process that finds a larger
//!   value goes on above it).
//! - A heartbeat confirmed before the current deadline moves the deadline
//!   to the moment it was *sent* plus the failover time minus the safety
//!   margin. One confirmed at or after the deadline does not: the worker
//!   lost its liveness in between, the epoch grows, and own leases must be
//!   taken anew before they are processed again.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{info, warn};

use super::{Shared, bounded};
use crate::deadline::Liveness;
use crate::{LeaseConfig, LeaseStore, LeaseStoreError, WorkerHeartbeat};

pub(super) use crate::deadline::now;

/// How many times finding a larger heartbeat value than the one sent shows
/// that another live process writes under this worker id.
const DUPLICATE_AFTER: u32 = 2;

/// The heartbeat state of one worker.
pub(super) struct Heart {
    /// The worker's id.
    worker_id: String,
    /// The failover time it runs with (and announces).
    failover_time: Duration,
    /// How long before the failover time it stops processing.
    safety_margin: Duration,
    /// The published liveness: epoch and deadline.
    liveness: watch::Sender<Liveness>,
    /// What the heartbeat writes and the rounds need to agree on.
    state: Mutex<HeartState>,
}

struct HeartState {
    /// The value of the next heartbeat write.
    next_beat: u64,
    /// When the last confirmed heartbeat was sent.
    last_confirmed: Option<Instant>,
    /// Own leases must be taken anew before they are processed: set at
    /// start and by every loss of liveness, cleared by a round that took
    /// them anew in the epoch it began in.
    retake_own: bool,
    /// Times a heartbeat found a larger value in the table than the one it
    /// carried (one a previous process wrote, or another live process under
    /// the same id). A value equal to the one sent is this write's own
    /// earlier attempt whose answer was lost, and does not count.
    larger_values: u32,
}

impl Heart {
    pub(super) fn new(config: &LeaseConfig) -> Self {
        let wall_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Self {
            worker_id: config.worker_id.clone(),
            failover_time: config.failover_time,
            safety_margin: config.safety_margin,
            liveness: watch::channel(Liveness::default()).0,
            state: Mutex::new(HeartState {
                next_beat: wall_micros.max(1),
                last_confirmed: None,
                retake_own: true,
                larger_values: 0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, HeartState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Liveness> {
        self.liveness.subscribe()
    }

    pub(super) fn last_confirmed(&self) -> Option<Instant> {
        self.state().last_confirmed
    }

    /// The deadline now, if the worker is alive.
    fn until(&self) -> Option<Instant> {
        self.liveness.borrow().until
    }

    /// The epoch, if the worker may process at `now`.
    pub(super) fn live_epoch(&self, now: Instant) -> Option<u64> {
        let live = self.liveness.borrow();
        live.until.filter(|until| now < *until).map(|_| live.epoch)
    }

    /// Ends the epoch if its deadline has passed at `now`. Returns whether
    /// it did.
    pub(super) fn lapse(&self, now: Instant) -> bool {
        let lapsed = self.liveness.send_if_modified(|live| {
            let due = live.until.is_some_and(|until| now >= until);
            if due {
                live.epoch += 1;
                live.until = None;
            }
            due
        });
        if lapsed {
            self.state().retake_own = true;
            metrics::counter!(crate::metrics::LIVENESS_LOSSES).increment(1);
        }
        lapsed
    }

    /// Ends the epoch now, whatever the deadline: this process must not
    /// process anything more.
    pub(super) fn end_epoch(&self) {
        self.liveness.send_modify(|live| {
            live.epoch += 1;
            live.until = None;
        });
        self.state().retake_own = true;
    }

    pub(super) fn retake_pending(&self) -> bool {
        self.state().retake_own
    }

    /// Own leases were taken anew in `epoch`: done, unless the epoch ended
    /// meanwhile.
    pub(super) fn retake_done(&self, epoch: u64) {
        let mut state = self.state();
        if self.liveness.borrow().epoch == epoch {
            state.retake_own = false;
        }
    }

    /// Sets the value of the next write (a test stands in for a clock that
    /// went back).
    #[cfg(test)]
    pub(super) fn set_next_beat(&self, beat: u64) {
        self.state().next_beat = beat;
    }

    /// The value for the next write; every call gets a new one.
    fn next_beat(&self) -> u64 {
        let mut state = self.state();
        let beat = state.next_beat;
        state.next_beat += 1;
        beat
    }
}

impl Shared {
    /// Writes one heartbeat; `clock` is read when it is sent and when it is
    /// confirmed.
    pub(super) async fn beat<S: LeaseStore + ?Sized>(
        &self,
        store: &S,
        clock: impl Fn() -> Instant,
    ) -> Result<(), LeaseStoreError> {
        let heart = &self.heart;
        let heartbeat = WorkerHeartbeat {
            worker: heart.worker_id.clone(),
            beat: heart.next_beat(),
            draining: *self.draining.borrow(),
            failover_time: Some(heart.failover_time),
            streams: self
                .streams
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
            written_at: None,
            evicted: false,
            stalled_shards: self
                .stalled
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
            offered: Default::default(),
        };
        let sent = clock();
        let result = store.heartbeat(&heartbeat).await;
        let confirmed = clock();
        match result {
            Ok(()) => {
                let restored = self.lapse_if_due(confirmed) || heart.until().is_none();
                let until = sent + heart.failover_time - heart.safety_margin;
                if until > confirmed {
                    heart.liveness.send_if_modified(|live| {
                        let later = live.until.is_none_or(|current| until > current);
                        if later {
                            live.until = Some(until);
                        }
                        later
                    });
                    if restored && heart.state().last_confirmed.is_some() {
                        info!(
                            "heartbeat confirmed again; own leases are taken anew before processing"
                        );
                    }
                    heart.state().last_confirmed = Some(sent);
                }
                Ok(())
            }
            Err(LeaseStoreError::HeartbeatSuperseded { stored, .. }) => {
                let mut state = heart.state();
                // An equal value may be this very write, applied on an
                // attempt whose answer was lost; a larger one is not ours.
                let larger = stored > heartbeat.beat;
                // Go above it by a random step, equal or larger, so that two
                // processes under one id never keep writing the same values
                // in lockstep (each finding its value equal, neither larger).
                let step = rand::random_range(1..=1000);
                state.next_beat = state.next_beat.max(stored + step);
                if larger {
                    state.larger_values += 1;
                }
                // Once is a previous process's last value; after going above
                // it, a larger one again means another process writes now.
                let conflict = state.larger_values >= DUPLICATE_AFTER;
                drop(state);
                if conflict {
                    // Both processes would hold the same tokens: fencing
                    // cannot tell them apart. Stop everything now.
                    heart.end_epoch();
                    self.held.send_replace(super::HeldLeases::new());
                    return Err(LeaseStoreError::DuplicateWorkerId {
                        worker: heartbeat.worker,
                    });
                }
                warn!(
                    stored,
                    "the workers table holds a later heartbeat of this worker id (one a previous \
                     process wrote, or another process running with the same id); going on above it"
                );
                Err(LeaseStoreError::HeartbeatSuperseded {
                    worker: heartbeat.worker,
                    stored,
                })
            }
            Err(error) => Err(error),
        }
    }
}

/// The heartbeat loop: a heartbeat every `heartbeat_interval` (sooner after
/// a failure, and at once when draining starts, to announce it), each
/// bounded by the interval so a hung write never delays the next.
/// Ends only when another process runs under this worker id.
pub(super) async fn run_heartbeats<S: LeaseStore + ?Sized>(
    store: Arc<S>,
    shared: Arc<Shared>,
    config: LeaseConfig,
) -> LeaseStoreError {
    let mut draining = shared.draining.subscribe();
    let mut next = now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {
                let sent = now();
                let limit = sent + config.heartbeat_interval;
                next = match bounded(limit, shared.beat(&*store, now)).await {
                    Ok(()) => sent + config.heartbeat_interval,
                    Err(error @ LeaseStoreError::DuplicateWorkerId { .. }) => {
                        tracing::error!(%error, "stopping");
                        return error;
                    }
                    Err(error) => {
                        warn!(%error, "heartbeat failed");
                        now() + config.heartbeat_interval / 4
                    }
                };
            }
            changed = draining.changed() => {
                if changed.is_ok() && *draining.borrow_and_update() {
                    next = now();
                }
            }
        }
    }
}

/// The coordinator's own check of the deadline: when it passes, the held
/// leases stop being published (each consumer has stopped by itself
/// already). Never waits on the tables.
pub(super) async fn watch_deadline(shared: Arc<Shared>) {
    let mut liveness = shared.heart.subscribe();
    loop {
        let until = liveness.borrow_and_update().until;
        match until {
            Some(until) => {
                tokio::select! {
                    () = tokio::time::sleep_until(until.into()) => {
                        shared.lapse_if_due(now());
                    }
                    changed = liveness.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
            None => {
                if liveness.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}
