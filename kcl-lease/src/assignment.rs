//! The assignment plan: pure functions from what the lease table holds to
//! who should hold what. [`lease_views`] decides how the plan sees each
//! lease (free, held, pinned to a worker outside the plan, or draining);
//! [`plan`] decides who gets which.
//!
//! Every worker computes the same plan from its snapshot and carries out only
//! its own part: it takes the free leases planned for it and asks the owners
//! of the leases planned to move to it for a graceful handoff. Conditional
//! writes settle any disagreement between snapshots taken at different
//! moments; the next round repairs the rest.
//!
//! The plan:
//! 1. Each live worker's target is the fair share, `total / workers`, and the
//!    `total % workers` workers holding the most leases now get one more, so
//!    that as few leases as possible move. Targets are capped by the maximum
//!    leases per worker, in which child leases still waiting for their
//!    parents do not count: a waiting child never keeps its own parent from
//!    being taken.
//! 2. Workers above their target give their surplus (their highest lease
//!    keys, never a lease already being handed over); draining workers
//!    (stopping ones) give every lease.
//! 3. Workers below their target receive, least loaded first, free leases
//!    first (unowned or expired, lowest key first: shard ids grow with
//!    creation, so parents come before children) and then the surplus.
//!
//! Afterwards every worker is within one lease of every other, no lease has
//! moved that did not need to, and running the plan again changes nothing,
//! so leases never ping-pong between workers.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Lease, LeaseScope, WorkerHeartbeat};

/// Who holds a lease, as the assignment sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Unowned, or its owner has expired: anyone may take it.
    Free,
    /// Owned by this live worker (during a handoff, the receiving one).
    Held(String),
    /// Held by a live worker that is stopping: it gets no target, and all
    /// its leases move to the others by handoff.
    Draining(String),
    /// Held by an owner outside the assignment (alive but not a heartbeating
    /// worker of this fleet, e.g. a Java KCL worker during a migration): left
    /// alone and not counted.
    Pinned,
}

/// One lease, as the assignment sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    /// The lease key.
    pub key: String,
    /// Who holds it.
    pub holder: Holder,
    /// Whether a handoff of it is already under way (it will not be moved
    /// again until that completes).
    pub moving: bool,
    /// Whether it is a child shard still waiting for its parents (see
    /// [`waiting_on_parents`]): it does not count toward the maximum leases
    /// per worker.
    pub waiting: bool,
}

/// Whether `lease` is a child shard that cannot start yet: it has not
/// started, and one of its parents has a lease that is not finished, or no
/// lease at all (a parent's lease is deleted only once all its children
/// have started, so a missing one has yet to be created). `leases` is the
/// whole table, by key.
pub fn waiting_on_parents(lease: &Lease, leases: &BTreeMap<&str, &Lease>) -> bool {
    !lease.has_started()
        && lease.parent_shard_ids.iter().any(|parent| {
            leases
                .get(lease.key_of(parent).as_str())
                .is_none_or(|parent| !parent.is_finished())
        })
}

/// The workers that share the plan of worker `me`, and those of them that
/// are stopping, from the workers it judges `live` and the `heartbeats`
/// just read: the live workers whose heartbeat announces the same streams
/// as `scope` (`me` always), split into those that may receive leases and
/// the stopping ones (draining, and `me` when `draining`), which receive
/// nothing and whose leases are planned to move to the others.
///
/// A live worker of other streams (a rolling deploy that changes the list)
/// is in neither set: it neither receives leases it would not take nor
/// gives up its own, which are left alone until it stops or expires.
pub fn planning_workers(
    me: &str,
    live: impl IntoIterator<Item = String>,
    heartbeats: &[WorkerHeartbeat],
    scope: &LeaseScope,
    draining: bool,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let same_streams = |worker: &str| {
        heartbeats
            .iter()
            .find(|h| h.worker == worker)
            .is_some_and(|h| scope.same_as(&h.streams))
    };
    let mut workers: BTreeSet<String> = live
        .into_iter()
        .filter(|worker| same_streams(worker))
        .collect();
    workers.insert(me.to_owned());
    let mut stopping: BTreeSet<String> = heartbeats
        .iter()
        .filter(|h| h.draining && h.worker != me && workers.contains(&h.worker))
        .map(|h| h.worker.clone())
        .collect();
    if draining {
        stopping.insert(me.to_owned());
    }
    workers.retain(|w| !stopping.contains(w));
    (workers, stopping)
}

/// How many workers other than `me` could receive its leases: those whose
/// heartbeat says they are not draining, announces the same streams as
/// `scope`, and that `is_live` judges live.
pub fn receivers(
    me: &str,
    heartbeats: &[WorkerHeartbeat],
    scope: &LeaseScope,
    is_live: impl Fn(&str) -> bool,
) -> usize {
    heartbeats
        .iter()
        .filter(|h| h.worker != me && !h.draining)
        .filter(|h| scope.same_as(&h.streams))
        .filter(|h| is_live(&h.worker))
        .count()
}

/// The fleet as one assignment round read it.
#[derive(Clone, Copy, Debug)]
pub struct RoundView<'a> {
    /// The planning worker.
    pub me: &'a str,
    /// The live workers that share the plan and may receive leases (the
    /// planning one included unless it is stopping).
    pub workers: &'a BTreeSet<String>,
    /// Live workers that are stopping: they receive nothing, and every
    /// lease they process moves to the others.
    pub stopping: &'a BTreeSet<String>,
    /// Every heartbeat read in the round.
    pub heartbeats: &'a [WorkerHeartbeat],
}

/// How the plan sees each unfinished lease of `leases` (the leases this
/// worker processes, as the round read them), given the fleet and which
/// leases' owners have expired.
pub fn lease_views(
    leases: &[Lease],
    round: &RoundView<'_>,
    expired: impl Fn(&Lease) -> bool,
) -> Vec<LeaseView> {
    let table: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    leases
        .iter()
        .filter(|lease| !lease.is_finished())
        .map(|lease| LeaseView {
            key: lease.key.clone(),
            holder: holder(lease, round, &expired),
            moving: lease.handoff_in_progress(),
            waiting: waiting_on_parents(lease, &table),
        })
        .collect()
}

/// Who holds `lease`, as the plan sees it.
fn holder(lease: &Lease, round: &RoundView<'_>, expired: impl Fn(&Lease) -> bool) -> Holder {
    let processing = lease.processing_owner();
    let holder = match &lease.owner {
        None => Holder::Free,
        Some(_) if processing == Some(round.me) => Holder::Held(round.me.to_owned()),
        Some(_) if expired(lease) => Holder::Free,
        // Its owner runs, but no longer consumes the lease's stream (it
        // restarted under the same id with another list of streams):
        // nothing processes the lease, so it is free.
        Some(_) if abandoned(lease, round.heartbeats) => Holder::Free,
        Some(owner) if round.workers.contains(owner) => Holder::Held(owner.clone()),
        Some(_) => Holder::Pinned,
    };
    match holder {
        Holder::Pinned if processing.is_some_and(|owner| round.stopping.contains(owner)) => {
            Holder::Draining(processing.unwrap_or_default().to_owned())
        }
        Holder::Held(owner) if round.stopping.contains(&owner) => Holder::Draining(owner),
        holder => holder,
    }
}

/// Whether the worker processing `lease` has a heartbeat in `heartbeats`
/// that does not announce the lease's stream.
fn abandoned(lease: &Lease, heartbeats: &[WorkerHeartbeat]) -> bool {
    let Some(owner) = lease.processing_owner() else {
        return false;
    };
    let Some(heartbeat) = heartbeats.iter().find(|h| h.worker == owner) else {
        return false;
    };
    match (&lease.stream, &heartbeat.streams) {
        (Some(stream), Some(streams)) => !streams.contains(&stream.to_string()),
        (Some(_), None) | (None, Some(_)) => true,
        (None, None) => false,
    }
}

/// What the plan asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Free leases to take: (lease key, worker).
    pub takes: Vec<(String, String)>,
    /// Held leases to hand over: (lease key, from, to).
    pub moves: Vec<(String, String, String)>,
    /// Each live worker's target number of leases.
    pub targets: BTreeMap<String, usize>,
}

impl Plan {
    /// The part of the plan `worker` carries out: leases to take, and leases
    /// to ask their owners to hand over (with the current owner).
    pub fn for_worker<'a>(
        &'a self,
        worker: &'a str,
    ) -> (
        impl Iterator<Item = &'a str> + 'a,
        impl Iterator<Item = (&'a str, &'a str)> + 'a,
    ) {
        let takes = self
            .takes
            .iter()
            .filter(move |(_, to)| to == worker)
            .map(|(key, _)| key.as_str());
        let moves = self
            .moves
            .iter()
            .filter(move |(_, _, to)| to == worker)
            .map(|(key, from, _)| (key.as_str(), from.as_str()));
        (takes, moves)
    }

    /// The leases the plan moves away from `worker` (a draining one hands
    /// them over itself): (lease key, receiving worker).
    pub fn gives<'a>(&'a self, worker: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.moves
            .iter()
            .filter(move |(_, from, _)| from == worker)
            .map(|(key, _, to)| (key.as_str(), to.as_str()))
    }
}

/// Plans who should hold which lease among `workers` (the live workers,
/// including the planning one).
pub fn plan(
    leases: &[LeaseView],
    workers: &BTreeSet<String>,
    max_per_worker: Option<usize>,
) -> Plan {
    let mut plan = Plan::default();
    if workers.is_empty() {
        return plan;
    }
    let mut held: BTreeMap<&str, Vec<&LeaseView>> =
        workers.iter().map(|w| (w.as_str(), Vec::new())).collect();
    let mut free: Vec<&LeaseView> = Vec::new();
    let mut draining: Vec<(&str, &LeaseView)> = Vec::new();
    for lease in leases {
        match &lease.holder {
            Holder::Free => free.push(lease),
            // An owner that is not live but not yet expired either: the
            // lease is neither free nor counted until that resolves.
            Holder::Held(owner) => {
                if let Some(list) = held.get_mut(owner.as_str()) {
                    list.push(lease);
                }
            }
            Holder::Draining(owner) => draining.push((owner.as_str(), lease)),
            Holder::Pinned => {}
        }
    }
    free.sort_by(|a, b| a.key.cmp(&b.key));

    let total = free.len() + draining.len() + held.values().map(Vec::len).sum::<usize>();
    let count = workers.len();
    let (base, extra) = (total / count, total % count);
    // The workers holding the most get the extra leases: fewest moves.
    let mut by_load: Vec<&str> = held.keys().copied().collect();
    by_load.sort_by(|a, b| held[b].len().cmp(&held[a].len()).then(a.cmp(b)));
    let cap = max_per_worker.unwrap_or(usize::MAX);
    for (rank, worker) in by_load.iter().enumerate() {
        let waiting = held[worker].iter().filter(|lease| lease.waiting).count();
        let target = (base + usize::from(rank < extra)).min(cap.saturating_add(waiting));
        plan.targets.insert((*worker).to_owned(), target);
    }

    // Surplus: every lease of a draining worker, and the highest keys of
    // workers above target; none already moving.
    let mut surplus: Vec<(&str, &LeaseView)> = draining
        .into_iter()
        .filter(|(_, lease)| !lease.moving)
        .collect();
    for (worker, leases) in &mut held {
        let target = plan.targets[*worker];
        if leases.len() <= target {
            continue;
        }
        leases.sort_by(|a, b| a.key.cmp(&b.key));
        let mut give = leases.len() - target;
        for lease in leases.iter().rev() {
            if give == 0 {
                break;
            }
            if !lease.moving {
                surplus.push((worker, lease));
                give -= 1;
            }
        }
    }
    surplus.sort_by(|a, b| a.1.key.cmp(&b.1.key));

    // Workers below target, least loaded first, get free leases, then surplus.
    let mut receivers: Vec<(&str, usize)> = held
        .iter()
        .filter(|(worker, leases)| leases.len() < plan.targets[**worker])
        .map(|(worker, leases)| (*worker, plan.targets[*worker] - leases.len()))
        .collect();
    receivers.sort_by(|a, b| held[a.0].len().cmp(&held[b.0].len()).then(a.0.cmp(b.0)));
    let mut free = free.into_iter();
    let mut surplus = surplus.into_iter();
    for (worker, mut wanted) in receivers {
        while wanted > 0 {
            if let Some(lease) = free.next() {
                plan.takes.push((lease.key.clone(), worker.to_owned()));
            } else if let Some((from, lease)) = surplus.next() {
                plan.moves
                    .push((lease.key.clone(), from.to_owned(), worker.to_owned()));
            } else {
                break;
            }
            wanted -= 1;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn heartbeat(worker: &str, draining: bool, streams: Option<&[&str]>) -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker: worker.into(),
            beat: 1,
            draining,
            failover_time: None,
            streams: streams.map(|s| s.iter().map(|s| (*s).to_owned()).collect()),
            written_at: None,
            evicted: false,
            stalled_shards: Default::default(),
            offered: Default::default(),
        }
    }

    fn names(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn the_plan_is_shared_by_live_workers_of_the_same_streams() {
        let orders = "123456789012:orders:1";
        let scope = LeaseScope::MultiStream(
            [crate::StreamIdentifier::parse(orders).expect("identifier")]
                .into_iter()
                .collect(),
        );
        let heartbeats = [
            heartbeat("a", false, Some(&[orders])),
            heartbeat("b", false, Some(&[orders])),
            heartbeat("c", true, Some(&[orders])),
            // Live, but consuming other streams: in neither set.
            heartbeat("d", false, Some(&[orders, "123456789012:refunds:1"])),
            // Of the same streams, but not judged live.
            heartbeat("e", false, Some(&[orders])),
        ];
        let live = ["b", "c", "d"].map(str::to_owned);
        let (workers, stopping) = planning_workers("a", live.clone(), &heartbeats, &scope, false);
        assert_eq!(workers, names(&["a", "b"]));
        assert_eq!(stopping, names(&["c"]));
        // A draining planner plans itself out.
        let (workers, stopping) = planning_workers("a", live, &heartbeats, &scope, true);
        assert_eq!(workers, names(&["b"]));
        assert_eq!(stopping, names(&["a", "c"]));
        // Receivers: live, not draining, same streams, not the planner.
        let is_live = |w: &str| ["b", "c", "d"].contains(&w);
        assert_eq!(receivers("a", &heartbeats, &scope, is_live), 1);
        // An application of one stream plans with the workers that announce
        // no streams.
        let single = [heartbeat("a", false, None), heartbeat("b", false, None)];
        let (workers, _) = planning_workers(
            "a",
            ["b".to_owned()],
            &single,
            &LeaseScope::SingleStream,
            false,
        );
        assert_eq!(workers, names(&["a", "b"]));
        let (workers, _) = planning_workers("a", ["b".to_owned()], &single, &scope, false);
        assert_eq!(workers, names(&["a"]));
    }

    fn view(key: usize, holder: Holder) -> LeaseView {
        LeaseView {
            key: format!("shardId-{key:012}"),
            holder,
            moving: false,
            waiting: false,
        }
    }

    fn workers(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("w{i}")).collect()
    }

    /// Who holds what once the plan is carried out.
    fn apply(leases: &[LeaseView], plan: &Plan) -> Vec<LeaseView> {
        let mut after = leases.to_vec();
        for lease in &mut after {
            if let Some((_, to)) = plan.takes.iter().find(|(k, _)| *k == lease.key) {
                lease.holder = Holder::Held(to.clone());
            }
            if let Some((_, _, to)) = plan.moves.iter().find(|(k, _, _)| *k == lease.key) {
                lease.holder = Holder::Held(to.clone());
            }
        }
        after
    }

    fn counts(leases: &[LeaseView], workers: &BTreeSet<String>) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> = workers.iter().map(|w| (w.clone(), 0)).collect();
        for lease in leases {
            if let Holder::Held(w) = &lease.holder
                && let Some(n) = counts.get_mut(w)
            {
                *n += 1;
            }
        }
        counts
    }

    #[test]
    fn a_new_worker_gets_its_share_from_the_others() {
        // Two workers hold 4 + 4; a third joins.
        let leases: Vec<_> = (0..8)
            .map(|i| view(i, Holder::Held(format!("w{}", i % 2))))
            .collect();
        let plan = plan(&leases, &workers(3), None);
        assert!(plan.takes.is_empty());
        assert_eq!(plan.moves.len(), 2, "{plan:?}");
        assert!(plan.moves.iter().all(|(_, _, to)| to == "w2"));
        let after = counts(&apply(&leases, &plan), &workers(3));
        assert_eq!(after.values().copied().collect::<Vec<_>>(), [3, 3, 2]);
    }

    #[test]
    fn free_leases_go_first_and_to_the_least_loaded() {
        let mut leases = vec![
            view(0, Holder::Held("w0".into())),
            view(1, Holder::Held("w0".into())),
        ];
        leases.extend((2..6).map(|i| view(i, Holder::Free)));
        let plan = plan(&leases, &workers(2), None);
        assert!(plan.moves.is_empty());
        assert_eq!(plan.takes.len(), 4);
        assert_eq!(plan.takes[0], ("shardId-000000000002".into(), "w1".into()));
        let after = counts(&apply(&leases, &plan), &workers(2));
        assert_eq!(after["w0"], 3);
        assert_eq!(after["w1"], 3);
    }

    #[test]
    fn max_leases_per_worker_leaves_the_rest_free() {
        let leases: Vec<_> = (0..10).map(|i| view(i, Holder::Free)).collect();
        let plan = plan(&leases, &workers(2), Some(4));
        assert_eq!(plan.takes.len(), 8);
        assert!(plan.targets.values().all(|&t| t == 4));
    }

    #[test]
    fn a_waiting_child_does_not_keep_its_holder_from_taking_the_parent() {
        // w0 holds the merge child (waiting) and may hold one lease; the
        // parent it waits for is free.
        let mut child = view(3, Holder::Held("w0".into()));
        child.waiting = true;
        let leases = vec![view(2, Holder::Free), child];
        let plan = plan(&leases, &workers(1), Some(1));
        assert_eq!(plan.takes, [("shardId-000000000002".into(), "w0".into())]);
    }

    #[test]
    fn a_child_waits_while_a_parent_is_unfinished_or_has_no_lease_yet() {
        use kcl_checkpoint::ExtendedSequenceNumber as Esn;
        let lease = |key: &str, checkpoint: Esn, parents: &[&str]| {
            let mut lease = Lease::new(key, checkpoint);
            lease.parent_shard_ids = parents.iter().map(|p| (*p).to_owned()).collect();
            lease
        };
        let p1 = lease("p1", Esn::ShardEnd, &[]);
        let p2 = lease("p2", Esn::record("5", 0).unwrap(), &[]);
        let child = lease("c", Esn::TrimHorizon, &["p1", "p2"]);
        let table =
            |leases: &[&Lease]| -> Vec<Lease> { leases.iter().map(|l| (*l).clone()).collect() };
        let waiting = |leases: Vec<Lease>| {
            let by_key = leases.iter().map(|l| (l.key.as_str(), l)).collect();
            waiting_on_parents(&child, &by_key)
        };
        assert!(waiting(table(&[&p1, &p2, &child])));
        assert!(waiting(table(&[&p1, &child])), "p2 has no lease yet");
        let mut done = p2.clone();
        done.checkpoint = Esn::ShardEnd;
        assert!(!waiting(table(&[&p1, &done, &child])));
        let started = lease("c", Esn::record("9", 0).unwrap(), &["p1", "p2"]);
        let by_key = [(p2.key.as_str(), &p2)].into_iter().collect();
        assert!(!waiting_on_parents(&started, &by_key));
        assert!(!waiting_on_parents(&p2, &by_key), "no parents");
    }

    #[test]
    fn each_lease_is_seen_free_held_pinned_or_draining() {
        use kcl_checkpoint::ExtendedSequenceNumber as Esn;
        let orders = crate::StreamIdentifier::parse("1:orders:10").unwrap();
        let owned = |key: &str, owner: Option<&str>| {
            let mut lease = Lease::for_shard(Some(&orders), key, Esn::record("1", 0).unwrap());
            lease.owner = owner.map(str::to_owned);
            lease
        };
        let beat = |worker: &str, streams: &[&str]| WorkerHeartbeat {
            worker: worker.into(),
            beat: 1,
            draining: false,
            failover_time: None,
            streams: Some(streams.iter().map(|s| (*s).to_owned()).collect()),
            written_at: None,
            evicted: false,
            stalled_shards: Default::default(),
            offered: Default::default(),
        };
        let mut finished = owned("done", Some("b"));
        finished.checkpoint = Esn::ShardEnd;
        let leases = [
            owned("free", None),
            owned("mine", Some("me")),
            owned("expired", Some("gone")),
            owned("left", Some("restarted")),
            owned("held", Some("b")),
            owned("other-list", Some("c")),
            owned("stopping", Some("d")),
            finished,
        ];
        let workers: BTreeSet<String> = ["me".into(), "b".into()].into();
        let stopping: BTreeSet<String> = ["d".into()].into();
        let heartbeats = [
            beat("b", &["1:orders:10"]),
            beat("c", &["1:orders:10", "1:refunds:10"]),
            beat("d", &["1:orders:10"]),
            beat("restarted", &["1:refunds:10"]),
        ];
        let round = RoundView {
            me: "me",
            workers: &workers,
            stopping: &stopping,
            heartbeats: &heartbeats,
        };
        let views = lease_views(&leases, &round, |lease| {
            lease.owner.as_deref() == Some("gone")
        });
        let seen: Vec<(&str, Holder)> = views
            .iter()
            .map(|v| (v.key.rsplit(':').next().unwrap(), v.holder.clone()))
            .collect();
        assert_eq!(
            seen,
            [
                ("free", Holder::Free),
                ("mine", Holder::Held("me".into())),
                ("expired", Holder::Free),
                ("left", Holder::Free),
                ("held", Holder::Held("b".into())),
                ("other-list", Holder::Pinned),
                ("stopping", Holder::Draining("d".into())),
            ],
            "a finished lease is not planned"
        );
    }

    #[test]
    fn a_multi_stream_child_finds_its_parents_in_its_own_stream() {
        use kcl_checkpoint::ExtendedSequenceNumber as Esn;
        let orders = crate::StreamIdentifier::parse("1:orders:10").unwrap();
        let refunds = crate::StreamIdentifier::parse("1:refunds:10").unwrap();
        let parent = Lease::for_shard(Some(&orders), "p", Esn::ShardEnd);
        let other = Lease::for_shard(Some(&refunds), "p", Esn::record("5", 0).unwrap());
        let mut child = Lease::for_shard(Some(&orders), "c", Esn::TrimHorizon);
        child.parent_shard_ids = ["p".to_owned()].into();
        let by_key = [&parent, &other]
            .into_iter()
            .map(|l| (l.key.as_str(), l))
            .collect();
        assert!(!waiting_on_parents(&child, &by_key));
        let mut unfinished = parent.clone();
        unfinished.checkpoint = Esn::record("7", 0).unwrap();
        let by_key = [(unfinished.key.as_str(), &unfinished)]
            .into_iter()
            .collect();
        assert!(waiting_on_parents(&child, &by_key));
    }

    #[test]
    fn pinned_and_moving_leases_are_left_alone() {
        let mut leases = vec![view(0, Holder::Pinned)];
        let mut moving = view(1, Holder::Held("w0".into()));
        moving.moving = true;
        leases.push(moving);
        leases.push(view(2, Holder::Held("w0".into())));
        let plan = plan(&leases, &workers(2), None);
        assert_eq!(
            plan.moves,
            [("shardId-000000000002".into(), "w0".into(), "w1".into())]
        );
    }

    #[test]
    fn a_draining_worker_gives_every_lease_to_the_others() {
        let leases: Vec<LeaseView> = (0..6)
            .map(|n| match n {
                0..3 => view(n, Holder::Draining("w9".into())),
                _ => view(n, Holder::Held(format!("w{}", n % 2))),
            })
            .collect();
        let plan = plan(&leases, &workers(2), None);
        assert_eq!(plan.moves.len(), 3, "{plan:?}");
        assert!(plan.moves.iter().all(|(_, from, _)| from == "w9"));
        assert!(plan.takes.is_empty());
        let after = counts(&apply(&leases, &plan), &workers(2));
        assert_eq!(after.values().copied().collect::<Vec<_>>(), [3, 3]);
    }

    #[test]
    fn no_workers_no_plan() {
        assert_eq!(
            plan(&[view(0, Holder::Free)], &BTreeSet::new(), None),
            Plan::default()
        );
    }

    fn snapshot() -> impl Strategy<Value = (Vec<LeaseView>, BTreeSet<String>)> {
        (1usize..8, 0usize..60).prop_flat_map(|(worker_count, lease_count)| {
            // Holders drawn among live workers, a few dead ones, and free.
            let holder = prop_oneof![
                3 => (0..worker_count).prop_map(|w| Holder::Held(format!("w{w}"))),
                1 => Just(Holder::Free),
            ];
            (
                proptest::collection::vec(holder, lease_count),
                Just(worker_count),
            )
                .prop_map(|(holders, worker_count)| {
                    let leases = holders
                        .into_iter()
                        .enumerate()
                        .map(|(i, holder)| view(i, holder))
                        .collect();
                    (leases, workers(worker_count))
                })
        })
    }

    proptest! {
        #[test]
        fn the_plan_balances_with_fewest_moves_and_is_stable(
            (leases, workers) in snapshot(),
        ) {
            let before = counts(&leases, &workers);
            let plan = plan(&leases, &workers, None);
            let after_leases = apply(&leases, &plan);
            let after = counts(&after_leases, &workers);

            // Every lease is held, and loads differ by at most one.
            prop_assert!(after_leases.iter().all(|l| matches!(l.holder, Holder::Held(_))));
            let (min, max) = (after.values().min().unwrap(), after.values().max().unwrap());
            prop_assert!(max - min <= 1, "{after:?}");

            // Moves: exactly the surplus above the targets, the least possible.
            let base = leases.len() / workers.len();
            let extra = leases.len() % workers.len();
            let mut loads: Vec<usize> = before.values().copied().collect();
            loads.sort_unstable_by(|a, b| b.cmp(a));
            let least_moves: usize = loads
                .iter()
                .enumerate()
                .map(|(rank, &n)| n.saturating_sub(base + usize::from(rank < extra)))
                .sum();
            prop_assert_eq!(plan.moves.len(), least_moves);

            // No lease moves twice: planning again changes nothing.
            let again = super::plan(&after_leases, &workers, None);
            prop_assert!(again.takes.is_empty() && again.moves.is_empty(), "{again:?}");
        }

        #[test]
        fn the_plan_respects_the_cap((leases, workers) in snapshot(), cap in 1usize..10) {
            let before = counts(&leases, &workers);
            let plan = plan(&leases, &workers, Some(cap));
            let after = counts(&apply(&leases, &plan), &workers);
            for (worker, n) in &after {
                // A worker above the cap already is not given more.
                prop_assert!(*n <= cap.max(before[worker]));
            }
        }
    }
}
