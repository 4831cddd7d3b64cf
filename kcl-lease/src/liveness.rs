//! Judging which lease owners are alive, without a write per lease.
//!
//! Every worker increases a number in its own heartbeat item a few times per
//! failover time. An observer remembers, by its own monotonic clock, when it
//! last saw each number change; an owner whose number has not changed for
//! the failover time is expired and its leases may be taken. No wall clocks
//! are compared between machines.
//!
//! A lease whose owner has no heartbeat item (a Java KCL worker during a
//! migration, or a worker that removed its heartbeat while still holding
//! leases) is judged by the lease itself: its owner and counter, which the
//! Java KCL changes on every renewal.
//!
//! This is safe against taking a lease from a live owner: an observer sees a
//! heartbeat only after it was sent, and stamps what it saw with the time its
//! read returned (never the time the read began, which a slow or stalled read
//! could put before the heartbeat was sent). So it declares the owner expired
//! no earlier than the failover time after the owner's last successful
//! heartbeat was sent, and by then the owner has stopped processing by itself
//! (see the coordinator).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::{Lease, WorkerHeartbeat};

/// What one observer knows about the liveness of owners.
#[derive(Debug)]
pub struct LivenessTracker {
    failover_time: Duration,
    /// Heartbeats by worker; `None` for a heartbeat that vanished.
    workers: HashMap<String, Observed<Option<u64>>>,
    /// Leases whose owner has no heartbeat item: (processing owner, counter).
    leases: HashMap<String, Observed<(String, u64)>>,
}

#[derive(Debug)]
struct Observed<T> {
    signal: T,
    /// When this observer first saw the current value.
    changed_at: Instant,
}

impl<T: PartialEq> Observed<T> {
    fn update(entry: Option<Self>, signal: T, now: Instant) -> Self {
        match entry {
            Some(seen) if seen.signal == signal => seen,
            _ => Self {
                signal,
                changed_at: now,
            },
        }
    }
}

impl LivenessTracker {
    /// A tracker that expires owners after `failover_time` without change.
    pub fn new(failover_time: Duration) -> Self {
        Self {
            failover_time,
            workers: HashMap::new(),
            leases: HashMap::new(),
        }
    }

    /// Records what the tables held at `now`: every worker's heartbeat, and
    /// every lease (for owners that have no heartbeat).
    pub fn observe(&mut self, now: Instant, heartbeats: &[WorkerHeartbeat], leases: &[Lease]) {
        let mut workers = HashMap::with_capacity(heartbeats.len());
        for heartbeat in heartbeats {
            let seen = self.workers.remove(&heartbeat.worker);
            workers.insert(
                heartbeat.worker.clone(),
                Observed::update(seen, Some(heartbeat.beat), now),
            );
        }
        // A heartbeat that vanished (its worker stopped, or another observer
        // removed it as expired) is remembered as silent from the moment it
        // last changed, for as long as a lease still names its worker: the
        // worker is no longer counted as live, and its leases expire on the
        // same schedule as before instead of starting over.
        let owners: std::collections::HashSet<&str> =
            leases.iter().filter_map(Lease::processing_owner).collect();
        for (worker, seen) in self.workers.drain() {
            if owners.contains(worker.as_str()) {
                let silent = Observed {
                    signal: None,
                    changed_at: seen.changed_at,
                };
                workers.insert(worker, silent);
            }
        }
        self.workers = workers;

        let mut tracked = HashMap::new();
        for lease in leases {
            let Some(owner) = lease.processing_owner() else {
                continue;
            };
            if self.workers.contains_key(owner) {
                continue;
            }
            let seen = self.leases.remove(&lease.key);
            tracked.insert(
                lease.key.clone(),
                Observed::update(seen, (owner.to_owned(), lease.counter), now),
            );
        }
        self.leases = tracked;
    }

    /// Whether `worker` has a heartbeat that changed within the failover
    /// time.
    pub fn is_worker_live(&self, worker: &str, now: Instant) -> bool {
        self.workers.get(worker).is_some_and(|seen| {
            seen.signal.is_some()
                && now.saturating_duration_since(seen.changed_at) < self.failover_time
        })
    }

    /// Every worker with a live heartbeat, sorted.
    pub fn live_workers(&self, now: Instant) -> Vec<String> {
        let mut live: Vec<String> = self
            .workers
            .keys()
            .filter(|worker| self.is_worker_live(worker, now))
            .cloned()
            .collect();
        live.sort();
        live
    }

    /// Whether `lease` has an owner that has not shown life for the failover
    /// time (as of the last observation). Unowned leases are not expired.
    pub fn is_lease_expired(&self, lease: &Lease, now: Instant) -> bool {
        let Some(owner) = lease.processing_owner() else {
            return false;
        };
        if let Some(seen) = self.workers.get(owner) {
            return now.saturating_duration_since(seen.changed_at) >= self.failover_time;
        }
        match self.leases.get(&lease.key) {
            Some(seen) => now.saturating_duration_since(seen.changed_at) >= self.failover_time,
            // Never observed: give it a full failover time from now.
            None => false,
        }
    }

    /// The earliest moment after `now` at which an owner that looks alive
    /// now would expire if its signal does not change. The coordinator wakes
    /// then, so a crash is noticed without waiting for a later round.
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        let workers = self.workers.values().map(|seen| seen.changed_at);
        let leases = self.leases.values().map(|seen| seen.changed_at);
        workers
            .chain(leases)
            .map(|changed_at| changed_at + self.failover_time)
            .filter(|&expiry| expiry > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kcl_checkpoint::ExtendedSequenceNumber;

    const FAILOVER: Duration = Duration::from_secs(10);

    fn beat(worker: &str, beat: u64) -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker: worker.into(),
            beat,
            draining: false,
        }
    }

    fn lease(key: &str, owner: &str, counter: u64) -> Lease {
        let mut lease = Lease::new(key, ExtendedSequenceNumber::TrimHorizon);
        lease.owner = Some(owner.into());
        lease.counter = counter;
        lease
    }

    #[test]
    fn a_worker_expires_after_the_failover_time_without_a_change() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut tracker = LivenessTracker::new(FAILOVER);
        let leases = [lease("shard-1", "a", 1)];
        tracker.observe(t0, &[beat("a", 1), beat("b", 1)], &leases);
        assert!(!tracker.is_lease_expired(&leases[0], t0));
        assert_eq!(tracker.live_workers(t0), ["a", "b"]);

        // b keeps beating, a stops.
        tracker.observe(t0 + s(6), &[beat("a", 1), beat("b", 2)], &leases);
        assert!(!tracker.is_lease_expired(&leases[0], t0 + s(9)));
        assert_eq!(tracker.next_expiry(t0 + s(6)), Some(t0 + s(10)));
        tracker.observe(t0 + s(10), &[beat("a", 1), beat("b", 3)], &leases);
        assert!(tracker.is_lease_expired(&leases[0], t0 + s(10)));
        assert_eq!(tracker.live_workers(t0 + s(10)), ["b"]);

        // a comes back: alive again at once.
        tracker.observe(t0 + s(11), &[beat("a", 2), beat("b", 3)], &leases);
        assert!(!tracker.is_lease_expired(&leases[0], t0 + s(11)));
    }

    #[test]
    fn an_owner_without_heartbeat_is_judged_by_its_lease_counter() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut tracker = LivenessTracker::new(FAILOVER);
        tracker.observe(t0, &[], &[lease("shard-1", "java-worker", 5)]);
        // The Java KCL renews by bumping the counter.
        tracker.observe(t0 + s(8), &[], &[lease("shard-1", "java-worker", 6)]);
        assert!(!tracker.is_lease_expired(&lease("shard-1", "java-worker", 6), t0 + s(17)));
        tracker.observe(t0 + s(18), &[], &[lease("shard-1", "java-worker", 6)]);
        assert!(tracker.is_lease_expired(&lease("shard-1", "java-worker", 6), t0 + s(18)));
        // A lease never observed is not expired.
        assert!(!tracker.is_lease_expired(&lease("shard-2", "java-worker", 1), t0 + s(100)));
        // An unowned lease is not expired.
        let free = Lease::new("shard-3", ExtendedSequenceNumber::TrimHorizon);
        assert!(!tracker.is_lease_expired(&free, t0 + s(100)));
    }

    #[test]
    fn a_vanished_heartbeat_is_not_live_and_its_leases_expire_on_schedule() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let leases = [lease("shard-1", "a", 1)];
        let mut tracker = LivenessTracker::new(FAILOVER);
        tracker.observe(t0, &[beat("a", 1), beat("b", 1)], &leases);
        // Another observer removed a's heartbeat.
        tracker.observe(t0 + s(4), &[beat("b", 2)], &leases);
        assert_eq!(tracker.live_workers(t0 + s(4)), ["b"]);
        assert!(!tracker.is_lease_expired(&leases[0], t0 + s(9)));
        assert!(tracker.is_lease_expired(&leases[0], t0 + s(10)));
        // Once no lease names it, it is forgotten.
        tracker.observe(t0 + s(11), &[beat("b", 3)], &[]);
        assert!(!tracker.workers.contains_key("a"));
    }

    #[test]
    fn during_a_handoff_the_handing_over_worker_is_judged() {
        let t0 = Instant::now();
        let mut moving = lease("shard-1", "receiver", 3);
        moving.checkpoint_owner = Some("sender".into());
        let mut tracker = LivenessTracker::new(FAILOVER);
        tracker.observe(
            t0,
            &[beat("sender", 1), beat("receiver", 1)],
            &[moving.clone()],
        );
        let later = t0 + Duration::from_secs(10);
        tracker.observe(
            later,
            &[beat("sender", 1), beat("receiver", 2)],
            &[moving.clone()],
        );
        assert!(tracker.is_lease_expired(&moving, later));
    }
}
