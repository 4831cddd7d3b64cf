//! Judging which lease owners are alive, without a write per lease.
//!
//! Every worker writes its heartbeat item a few times per failover time,
//! each write with a value no earlier write had (see
//! [`LeaseStore::heartbeat`](crate::LeaseStore::heartbeat)). An observer
//! remembers, by its own monotonic clock, when it first saw each value; an
//! owner whose value has not changed for the failover time is expired and
//! its leases may be taken. No wall clocks are compared between machines.
//!
//! Each worker announces its failover time in its heartbeat; an observer
//! judges it by the larger of that and its own, so a fleet in the middle of
//! a change of failover time never expires a worker that still runs with
//! the longer one.
//!
//! A lease whose owner has no heartbeat item (a Java KCL worker during a
//! migration, or a worker that removed its heartbeat while still holding
//! leases) is judged by the lease itself: its owner and counter, which the
//! Java KCL changes on every renewal.
//!
//! Why this never takes a lease from an owner that may still process it:
//! the owner processes only until its *deadline*, the moment its last
//! confirmed heartbeat was sent plus its failover time minus a margin (see
//! [`crate::deadline`]), and it extends that deadline only with a heartbeat
//! confirmed before the deadline passed. An observer reads the tables in a
//! window `[began, ended]`:
//! - a value seen for the first time is stamped `ended`, which is after the
//!   value was written, so after it was sent;
//! - silence is judged as of `began`: a value written before `began` is
//!   seen by the read (reads are strongly consistent), so when the read shows
//!   no change for the failover time as of `began`, every heartbeat the owner
//!   wrote before `began` was sent at least a failover time ago, and any
//!   later one was confirmed after its deadline, which does not extend it.
//!
//! So the owner's deadline is at least the margin before `began`, which is
//! before any take the observer then writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::{Lease, WorkerHeartbeat};

/// When an observer's reads of the tables were under way: from the moment
/// the first request was sent to the moment the last answer arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadWindow {
    /// Before the first read was sent.
    pub began: Instant,
    /// After the last answer arrived.
    pub ended: Instant,
}

impl ReadWindow {
    /// A window of no length (for tests and simulations whose reads take no
    /// time).
    pub fn at(now: Instant) -> Self {
        Self {
            began: now,
            ended: now,
        }
    }
}

/// What one observer knows about the liveness of owners.
#[derive(Debug)]
pub struct LivenessTracker {
    failover_time: Duration,
    /// Heartbeats by worker; `None` for a heartbeat that vanished.
    workers: HashMap<String, Observed<Option<u64>>>,
    /// Leases whose owner has no heartbeat item: (processing owner, counter).
    leases: HashMap<String, Observed<(String, u64)>>,
    /// The processing owner of every lease, as of the last observation: a
    /// lease that moves to an owner without heartbeat was taken by it.
    owners: HashMap<String, String>,
    /// When the reads of the last observation began: silence is judged as
    /// of then.
    as_of: Option<Instant>,
}

#[derive(Debug)]
struct Observed<T> {
    signal: T,
    /// When this observer first saw the current value (the end of the read
    /// that showed it).
    changed_at: Instant,
    /// How long the value may stand still before its owner is expired.
    failover: Duration,
    /// The value changed at least once while this observer watched it (it
    /// was not just found as it is).
    moved: bool,
}

impl<T: PartialEq> Observed<T> {
    fn update(entry: Option<Self>, signal: T, seen: Instant, failover: Duration) -> Self {
        match entry {
            Some(mut known) if known.signal == signal => {
                known.failover = failover;
                known
            }
            known => Self {
                signal,
                changed_at: seen,
                failover,
                moved: known.is_some(),
            },
        }
    }

    fn expired(&self, as_of: Instant) -> bool {
        as_of.saturating_duration_since(self.changed_at) >= self.failover
    }
}

impl LivenessTracker {
    /// A tracker that expires owners after `failover_time` without change
    /// (or after the longer failover time a worker announces).
    pub fn new(failover_time: Duration) -> Self {
        Self {
            failover_time,
            workers: HashMap::new(),
            leases: HashMap::new(),
            owners: HashMap::new(),
            as_of: None,
        }
    }

    /// The failover time to judge a worker by: the larger of this
    /// observer's and the one the worker announces.
    fn failover_for(&self, heartbeat: &WorkerHeartbeat) -> Duration {
        heartbeat
            .failover_time
            .map_or(self.failover_time, |theirs| theirs.max(self.failover_time))
    }

    /// Records what the tables held during `window`: every worker's
    /// heartbeat, and every lease (for owners that have no heartbeat).
    pub fn observe(
        &mut self,
        window: ReadWindow,
        heartbeats: &[WorkerHeartbeat],
        leases: &[Lease],
    ) {
        let seen = window.ended;
        let mut workers = HashMap::with_capacity(heartbeats.len());
        for heartbeat in heartbeats {
            let known = self.workers.remove(&heartbeat.worker);
            let failover = self.failover_for(heartbeat);
            workers.insert(
                heartbeat.worker.clone(),
                Observed::update(known, Some(heartbeat.beat), seen, failover),
            );
        }
        // A heartbeat that vanished (its worker stopped, or another observer
        // removed it as expired) is remembered as silent from the moment it
        // last changed, for as long as a lease still names its worker: the
        // worker is no longer counted as live, and its leases expire on the
        // same schedule as before instead of starting over.
        let owners: HashSet<&str> = leases.iter().filter_map(Lease::processing_owner).collect();
        for (worker, known) in self.workers.drain() {
            if owners.contains(worker.as_str()) {
                let silent = Observed {
                    signal: None,
                    changed_at: known.changed_at,
                    failover: known.failover,
                    moved: known.moved,
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
            let known = self.leases.remove(&lease.key);
            let mut observed = Observed::update(
                known,
                (owner.to_owned(), lease.counter),
                seen,
                self.failover_time,
            );
            // Taken from another owner since the last observation: that is
            // a move too, seen at once.
            if self
                .owners
                .get(&lease.key)
                .is_some_and(|before| before != owner)
            {
                observed.moved = true;
            }
            tracked.insert(lease.key.clone(), observed);
        }
        self.leases = tracked;
        self.owners = leases
            .iter()
            .filter_map(|lease| Some((lease.key.clone(), lease.processing_owner()?.to_owned())))
            .collect();
        self.as_of = Some(window.began);
    }

    /// Records what the workers table held during `window`, without the
    /// lease table (a draining worker's cheap poll): heartbeats are updated
    /// as by [`observe`](Self::observe); workers whose heartbeat vanished
    /// are kept as silent, and owners judged by their leases are left as
    /// they were.
    pub fn observe_heartbeats(&mut self, window: ReadWindow, heartbeats: &[WorkerHeartbeat]) {
        let mut workers = HashMap::with_capacity(heartbeats.len());
        for heartbeat in heartbeats {
            let known = self.workers.remove(&heartbeat.worker);
            let failover = self.failover_for(heartbeat);
            workers.insert(
                heartbeat.worker.clone(),
                Observed::update(known, Some(heartbeat.beat), window.ended, failover),
            );
        }
        for (worker, known) in self.workers.drain() {
            let silent = Observed {
                signal: None,
                changed_at: known.changed_at,
                failover: known.failover,
                moved: known.moved,
            };
            workers.insert(worker, silent);
        }
        self.workers = workers;
        self.as_of = Some(window.began);
    }

    /// Whether `worker` has a heartbeat that changed within its failover
    /// time, as of the last observation.
    pub fn is_worker_live(&self, worker: &str) -> bool {
        let Some(as_of) = self.as_of else {
            return false;
        };
        self.workers
            .get(worker)
            .is_some_and(|known| known.signal.is_some() && !known.expired(as_of))
    }

    /// The heartbeat value `worker` was judged by, if it has one.
    pub fn heartbeat_of(&self, worker: &str) -> Option<u64> {
        self.workers.get(worker).and_then(|known| known.signal)
    }

    /// Every worker with a live heartbeat, sorted.
    pub fn live_workers(&self) -> Vec<String> {
        let mut live: Vec<String> = self
            .workers
            .keys()
            .filter(|worker| self.is_worker_live(worker))
            .cloned()
            .collect();
        live.sort();
        live
    }

    /// Whether `lease` has an owner that has not shown life for its failover
    /// time, as of the last observation. Unowned leases are not expired.
    pub fn is_lease_expired(&self, lease: &Lease) -> bool {
        let (Some(owner), Some(as_of)) = (lease.processing_owner(), self.as_of) else {
            return false;
        };
        if let Some(known) = self.workers.get(owner) {
            return known.expired(as_of);
        }
        // Never observed: it gets a full failover time from now.
        self.leases
            .get(&lease.key)
            .is_some_and(|known| known.expired(as_of))
    }

    /// Owners with no heartbeat item whose leases this observer saw change
    /// (counter or owner) within the failover time: workers that renew
    /// their leases instead of heartbeating, such as Java KCL workers on the
    /// same table. Each with the keys of those leases, sorted.
    pub fn active_owners_without_heartbeat(&self) -> BTreeMap<String, Vec<String>> {
        let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let Some(as_of) = self.as_of else {
            return owners;
        };
        for (key, known) in &self.leases {
            if known.moved && !known.expired(as_of) {
                owners
                    .entry(known.signal.0.clone())
                    .or_default()
                    .push(key.clone());
            }
        }
        for keys in owners.values_mut() {
            keys.sort();
        }
        owners
    }

    /// The earliest moment after `now` at which an owner that looks alive
    /// now would expire if its signal does not change: a read that begins
    /// then can judge it. The coordinator wakes then, so a crash is noticed
    /// without waiting for a later round.
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        let workers = self.workers.values().map(|k| k.changed_at + k.failover);
        let leases = self.leases.values().map(|k| k.changed_at + k.failover);
        workers.chain(leases).filter(|&expiry| expiry > now).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kcl_checkpoint::ExtendedSequenceNumber;

    const FAILOVER: Duration = Duration::from_secs(10);
    const S: fn(u64) -> Duration = Duration::from_secs;

    fn beat(worker: &str, beat: u64) -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker: worker.into(),
            beat,
            draining: false,
            failover_time: Some(FAILOVER),
            streams: None,
            written_at: None,
            evicted: false,
            stalled_shards: Default::default(),
            offered: Default::default(),
        }
    }

    fn lease(key: &str, owner: &str, counter: u64) -> Lease {
        let mut lease = Lease::new(key, ExtendedSequenceNumber::TrimHorizon);
        lease.owner = Some(owner.into());
        lease.counter = counter;
        lease
    }

    fn at(t: Instant) -> ReadWindow {
        ReadWindow::at(t)
    }

    #[test]
    fn a_worker_expires_after_the_failover_time_without_a_change() {
        let t0 = Instant::now();
        let mut tracker = LivenessTracker::new(FAILOVER);
        let leases = [lease("shard-1", "a", 1)];
        tracker.observe(at(t0), &[beat("a", 1), beat("b", 1)], &leases);
        assert!(!tracker.is_lease_expired(&leases[0]));
        assert_eq!(tracker.live_workers(), ["a", "b"]);

        // b keeps beating, a stops.
        tracker.observe(at(t0 + S(6)), &[beat("a", 1), beat("b", 2)], &leases);
        assert_eq!(tracker.next_expiry(t0 + S(6)), Some(t0 + S(10)));
        tracker.observe(at(t0 + S(9)), &[beat("a", 1), beat("b", 2)], &leases);
        assert!(!tracker.is_lease_expired(&leases[0]));
        tracker.observe(at(t0 + S(10)), &[beat("a", 1), beat("b", 3)], &leases);
        assert!(tracker.is_lease_expired(&leases[0]));
        assert_eq!(tracker.live_workers(), ["b"]);

        // a comes back: alive again at once.
        tracker.observe(at(t0 + S(11)), &[beat("a", 2), beat("b", 3)], &leases);
        assert!(!tracker.is_lease_expired(&leases[0]));
    }

    #[test]
    fn silence_is_judged_as_of_when_the_read_began_and_news_as_of_when_it_ended() {
        let t0 = Instant::now();
        let mut tracker = LivenessTracker::new(FAILOVER);
        let leases = [lease("shard-1", "a", 1)];
        // The first sight of a's value comes from a read that took 3 s: the
        // value may have been written at its very end.
        let slow = ReadWindow {
            began: t0,
            ended: t0 + S(3),
        };
        tracker.observe(slow, &[beat("a", 7)], &leases);
        // Silence counts from the end of that read: a read that began 12 s
        // after t0 (and ended later still) is 9 s into it, not 12 or 14.
        let window = ReadWindow {
            began: t0 + S(12),
            ended: t0 + S(14),
        };
        tracker.observe(window, &[beat("a", 7)], &leases);
        assert!(!tracker.is_lease_expired(&leases[0]));
        tracker.observe(at(t0 + S(13)), &[beat("a", 7)], &leases);
        assert!(tracker.is_lease_expired(&leases[0]));
    }

    #[test]
    fn a_worker_is_judged_by_the_longer_of_both_failover_times() {
        let t0 = Instant::now();
        let mut tracker = LivenessTracker::new(S(5));
        let leases = [lease("shard-1", "old", 1), lease("shard-2", "new", 1)];
        let mut old = beat("old", 1);
        old.failover_time = Some(S(10));
        let mut new = beat("new", 1);
        new.failover_time = Some(S(2));
        tracker.observe(at(t0), &[old.clone(), new.clone()], &leases);
        tracker.observe(at(t0 + S(5)), &[old.clone(), new.clone()], &leases);
        assert!(!tracker.is_lease_expired(&leases[0]), "old runs with 10 s");
        assert!(
            tracker.is_lease_expired(&leases[1]),
            "5 s is the observer's"
        );
        tracker.observe(at(t0 + S(10)), &[old, new], &leases);
        assert!(tracker.is_lease_expired(&leases[0]));
    }

    #[test]
    fn owners_without_heartbeat_whose_counters_move_are_reported_until_they_stand_still() {
        let t0 = Instant::now();
        let mut tracker = LivenessTracker::new(FAILOVER);
        let found = [
            lease("shard-1", "java-worker", 5),
            lease("shard-2", "java-worker", 9),
            lease("shard-3", "gone-worker", 3),
        ];
        tracker.observe(at(t0), &[beat("rust-worker", 1)], &found);
        // Found as they are: nothing is known to move yet.
        assert!(tracker.active_owners_without_heartbeat().is_empty());

        let renewed = [
            lease("shard-1", "java-worker", 6),
            lease("shard-2", "java-worker", 10),
            lease("shard-3", "gone-worker", 3),
        ];
        tracker.observe(at(t0 + S(2)), &[beat("rust-worker", 2)], &renewed);
        assert_eq!(
            tracker.active_owners_without_heartbeat(),
            BTreeMap::from([(
                "java-worker".to_owned(),
                vec!["shard-1".to_owned(), "shard-2".to_owned()]
            )])
        );
        // The counters stand still for the failover time: no longer active,
        // and only then expired.
        tracker.observe(at(t0 + S(11)), &[beat("rust-worker", 3)], &renewed);
        assert_eq!(tracker.active_owners_without_heartbeat().len(), 1);
        assert!(!tracker.is_lease_expired(&renewed[0]));
        tracker.observe(at(t0 + S(12)), &[beat("rust-worker", 4)], &renewed);
        assert!(tracker.active_owners_without_heartbeat().is_empty());
        assert!(tracker.is_lease_expired(&renewed[0]));
    }

    #[test]
    fn a_lease_taken_by_an_owner_without_heartbeat_is_reported_at_once() {
        let t0 = Instant::now();
        let mut tracker = LivenessTracker::new(FAILOVER);
        tracker.observe(
            at(t0),
            &[beat("rust-worker", 1)],
            &[lease("shard-1", "rust-worker", 4)],
        );
        tracker.observe(
            at(t0 + S(1)),
            &[beat("rust-worker", 2)],
            &[lease("shard-1", "java-worker", 5)],
        );
        assert_eq!(
            tracker.active_owners_without_heartbeat(),
            BTreeMap::from([("java-worker".to_owned(), vec!["shard-1".to_owned()])])
        );
    }

    #[test]
    fn an_owner_without_heartbeat_is_judged_by_its_lease_counter() {
        let t0 = Instant::now();
        let mut tracker = LivenessTracker::new(FAILOVER);
        tracker.observe(at(t0), &[], &[lease("shard-1", "java-worker", 5)]);
        // The Java KCL renews by bumping the counter.
        let renewed = [lease("shard-1", "java-worker", 6)];
        tracker.observe(at(t0 + S(8)), &[], &renewed);
        tracker.observe(at(t0 + S(17)), &[], &renewed);
        assert!(!tracker.is_lease_expired(&renewed[0]));
        tracker.observe(at(t0 + S(18)), &[], &renewed);
        assert!(tracker.is_lease_expired(&renewed[0]));
        // A lease never observed is not expired.
        assert!(!tracker.is_lease_expired(&lease("shard-2", "java-worker", 1)));
        // An unowned lease is not expired.
        let free = Lease::new("shard-3", ExtendedSequenceNumber::TrimHorizon);
        assert!(!tracker.is_lease_expired(&free));
    }

    #[test]
    fn a_vanished_heartbeat_is_not_live_and_its_leases_expire_on_schedule() {
        let t0 = Instant::now();
        let leases = [lease("shard-1", "a", 1)];
        let mut tracker = LivenessTracker::new(FAILOVER);
        tracker.observe(at(t0), &[beat("a", 1), beat("b", 1)], &leases);
        // Another observer removed a's heartbeat.
        tracker.observe(at(t0 + S(4)), &[beat("b", 2)], &leases);
        assert_eq!(tracker.live_workers(), ["b"]);
        tracker.observe(at(t0 + S(9)), &[beat("b", 2)], &leases);
        assert!(!tracker.is_lease_expired(&leases[0]));
        tracker.observe(at(t0 + S(10)), &[beat("b", 2)], &leases);
        assert!(tracker.is_lease_expired(&leases[0]));
        // Once no lease names it, it is forgotten.
        tracker.observe(at(t0 + S(11)), &[beat("b", 3)], &[]);
        assert!(!tracker.workers.contains_key("a"));
    }

    #[test]
    fn during_a_handoff_the_handing_over_worker_is_judged() {
        let t0 = Instant::now();
        let mut moving = lease("shard-1", "receiver", 3);
        moving.checkpoint_owner = Some("sender".into());
        let mut tracker = LivenessTracker::new(FAILOVER);
        let both = |r| [beat("sender", 1), beat("receiver", r)];
        tracker.observe(at(t0), &both(1), std::slice::from_ref(&moving));
        tracker.observe(at(t0 + S(10)), &both(2), std::slice::from_ref(&moving));
        assert!(tracker.is_lease_expired(&moving));
    }
}
