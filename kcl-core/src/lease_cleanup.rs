//! Removing leases that are no longer needed:
//! - a finished lease (checkpointed at `SHARD_END`) once every child shard
//!   has started (its checkpoint is past `TRIM_HORIZON`), so a child never
//!   loses track of a parent it must wait for;
//! - the lease of a shard that is gone from the stream (past retention);
//! - in a multi-stream application, the leases of a stream it no longer
//!   consumes (removed from its list, or deleted from Kinesis), after a
//!   delay of their own, as the Java KCL's former-streams deletion does.
//!   Nothing of a stream the worker consumes is deleted for that reason.
//!
//! Which leases qualify is a pure decision ([`cleanable`],
//! [`of_former_streams`]); a [`LeaseCleaner`] deletes them once they have
//! qualified for the configured delay, judged by this worker's clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use kcl_lease::{Lease, LeaseStore, LeaseStoreError, StreamIdentifier};
use tracing::info;

use crate::kinesis::ShardDescription;

/// Why a lease may be deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupReason {
    /// The shard is finished and every child shard has started.
    ChildrenStarted,
    /// The shard no longer exists in the stream.
    ShardGone,
    /// The lease belongs to a stream the multi-stream application no
    /// longer consumes.
    FormerStream,
    /// The stream is consumed but Kinesis says it does not exist any more.
    StreamDeleted,
}

impl CleanupReason {
    /// Whether the lease's stream is gone as a whole (deleted after the
    /// former-stream delay, not the lease cleanup delay).
    pub fn stream_gone(self) -> bool {
        matches!(self, Self::FormerStream | Self::StreamDeleted)
    }
}

/// The leases of one stream that may be deleted, given that stream's leases
/// and its shards. With an empty shard list nothing is judged gone (a
/// stream always has an open shard, so an empty list is a bad answer).
pub fn cleanable(leases: &[Lease], shards: &[ShardDescription]) -> Vec<(Lease, CleanupReason)> {
    let in_stream: BTreeSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    let by_shard: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.shard_id(), l)).collect();
    let mut children: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for lease in leases {
        for parent in &lease.parent_shard_ids {
            children.entry(parent).or_default().insert(lease.shard_id());
        }
        for child in &lease.child_shard_ids {
            children.entry(lease.shard_id()).or_default().insert(child);
        }
    }
    let mut result = Vec::new();
    for lease in leases {
        if !in_stream.is_empty() && !in_stream.contains(lease.shard_id()) {
            result.push((lease.clone(), CleanupReason::ShardGone));
            continue;
        }
        if !lease.is_finished() {
            continue;
        }
        let Some(kids) = children.get(lease.shard_id()) else {
            continue;
        };
        let all_started = kids.iter().all(|kid| match by_shard.get(kid) {
            Some(child) => child.has_started(),
            // A child without a lease counts only if it is gone as well.
            None => !in_stream.is_empty() && !in_stream.contains(kid),
        });
        if all_started {
            result.push((lease.clone(), CleanupReason::ChildrenStarted));
        }
    }
    result
}

/// The leases of a multi-stream application's table that belong to none of
/// the `consumed` streams, or to one of the `deleted` streams (consumed,
/// but gone from Kinesis). Leases of an application of one stream (no
/// stream on the lease) are never among them.
pub fn of_former_streams(
    leases: &[Lease],
    consumed: &BTreeSet<StreamIdentifier>,
    deleted: &BTreeSet<StreamIdentifier>,
) -> Vec<(Lease, CleanupReason)> {
    leases
        .iter()
        .filter_map(|lease| {
            let stream = lease.stream.as_ref()?;
            let reason = if deleted.contains(stream) {
                CleanupReason::StreamDeleted
            } else if !consumed.contains(stream) {
                CleanupReason::FormerStream
            } else {
                return None;
            };
            Some((lease.clone(), reason))
        })
        .collect()
}

/// Deletes cleanable leases once they have stayed cleanable for their
/// delay.
#[derive(Debug)]
pub struct LeaseCleaner {
    /// How long a finished lease stays cleanable before it is deleted.
    delay: Duration,
    /// How long a lease of a former stream waits; `None`: kept.
    former_stream_delay: Option<Duration>,
    /// When each cleanable lease was first seen cleanable, by key.
    first_seen: HashMap<String, Instant>,
}

impl LeaseCleaner {
    /// A cleaner that waits `delay` before deleting a lease, and
    /// `former_stream_delay` before deleting a lease of a stream that is no
    /// longer consumed (never, when `None`).
    pub fn new(delay: Duration, former_stream_delay: Option<Duration>) -> Self {
        Self {
            delay,
            former_stream_delay,
            first_seen: HashMap::new(),
        }
    }

    /// Deletes the `candidates` (every cleanable lease, as of now, as the
    /// table was read) that have been cleanable for their delay at `now`,
    /// each only if it is still as read: a lease taken or reset since
    /// stays. Returns the keys deleted.
    pub async fn run(
        &mut self,
        store: &dyn LeaseStore,
        candidates: Vec<(Lease, CleanupReason)>,
        now: Instant,
    ) -> Result<Vec<String>, LeaseStoreError> {
        let keys: BTreeSet<&str> = candidates.iter().map(|(l, _)| l.key.as_str()).collect();
        self.first_seen.retain(|key, _| keys.contains(key.as_str()));
        let mut deleted = Vec::new();
        for (lease, reason) in candidates {
            let key = lease.key.clone();
            let delay = if reason.stream_gone() {
                match self.former_stream_delay {
                    Some(delay) => delay,
                    None => continue,
                }
            } else {
                self.delay
            };
            let since = *self.first_seen.entry(key.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= delay {
                match store.delete_lease(&lease).await {
                    Ok(()) => {
                        info!(lease = %key, ?reason, "deleted lease");
                        deleted.push(key.clone());
                    }
                    // Taken or reset since the table was read: it is judged
                    // again from the next read.
                    Err(LeaseStoreError::LeaseLost { .. }) => {
                        info!(lease = %key, "lease changed since it was judged cleanable; kept");
                    }
                    Err(error) => return Err(error),
                }
                self.first_seen.remove(&key);
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    /// The keys of cleanup candidates, with their reasons.
    fn keyed(candidates: Vec<(Lease, CleanupReason)>) -> Vec<(String, CleanupReason)> {
        candidates
            .into_iter()
            .map(|(lease, reason)| (lease.key, reason))
            .collect()
    }

    use kcl_checkpoint::ExtendedSequenceNumber;
    use kcl_lease::{HashKeyRange, InMemoryLeaseStore};

    use super::*;

    fn shard(id: &str) -> ShardDescription {
        ShardDescription {
            shard_id: id.to_owned(),
            parent_shard_id: None,
            adjacent_parent_shard_id: None,
            hash_key_range: HashKeyRange { start: 0, end: 1 },
            ending_sequence_number: None,
        }
    }

    fn lease(key: &str, checkpoint: ExtendedSequenceNumber, parents: &[&str]) -> Lease {
        let mut lease = Lease::new(key, checkpoint);
        lease.parent_shard_ids = parents.iter().map(|p| (*p).to_owned()).collect();
        lease
    }

    fn at(seq: &str) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::record(seq, 0).unwrap()
    }

    #[test]
    fn a_finished_parent_goes_once_every_child_has_started() {
        let shards = [shard("p"), shard("a"), shard("b")];
        let parent = lease("p", ExtendedSequenceNumber::ShardEnd, &[]);
        let a = lease("a", at("5"), &["p"]);
        let b_waiting = lease("b", ExtendedSequenceNumber::TrimHorizon, &["p"]);
        assert!(cleanable(&[parent.clone(), a.clone(), b_waiting], &shards).is_empty());

        let b_started = lease("b", at("7"), &["p"]);
        assert_eq!(
            keyed(cleanable(&[parent, a, b_started], &shards)),
            [("p".to_owned(), CleanupReason::ChildrenStarted)]
        );
    }

    #[test]
    fn a_finished_lease_without_known_children_stays() {
        let shards = [shard("p")];
        let mut parent = lease("p", ExtendedSequenceNumber::ShardEnd, &[]);
        assert!(cleanable(&[parent.clone()], &shards).is_empty());
        // Children recorded but their leases not created yet.
        parent.child_shard_ids.insert("c".into());
        let shards = [shard("p"), shard("c")];
        assert!(cleanable(&[parent], &shards).is_empty());
    }

    #[test]
    fn leases_of_shards_gone_from_the_stream_go_unless_the_listing_is_empty() {
        let leases = [lease("old", at("1"), &[]), lease("s", at("1"), &[])];
        assert_eq!(
            keyed(cleanable(&leases, &[shard("s")])),
            [("old".to_owned(), CleanupReason::ShardGone)]
        );
        assert!(cleanable(&leases, &[]).is_empty());
    }

    #[test]
    fn an_unfinished_lease_is_never_cleaned_while_its_shard_exists() {
        let leases = [lease("p", at("9"), &[]), lease("c", at("1"), &["p"])];
        assert!(cleanable(&leases, &[shard("p"), shard("c")]).is_empty());
    }

    #[tokio::test]
    async fn the_cleaner_waits_for_the_delay() {
        let store = InMemoryLeaseStore::new();
        let leases = [lease("old", at("1"), &[])];
        store.create_lease_if_absent(&leases[0]).await.unwrap();
        let mut cleaner = LeaseCleaner::new(Duration::from_secs(60), None);
        let start = Instant::now();
        let shards = [shard("s")];
        let candidates = || cleanable(&leases, &shards);
        assert!(
            cleaner
                .run(&store, candidates(), start)
                .await
                .unwrap()
                .is_empty()
        );
        let later = start + Duration::from_secs(59);
        assert!(
            cleaner
                .run(&store, candidates(), later)
                .await
                .unwrap()
                .is_empty()
        );
        let deleted = cleaner
            .run(&store, candidates(), start + Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(deleted, ["old"]);
        assert_eq!(store.get_lease("old").await.unwrap(), None);
    }

    /// An operator reset the lease between the read that judged it
    /// cleanable and the delete: it is kept, and cleanup goes on.
    #[tokio::test]
    async fn a_lease_reset_after_it_was_judged_cleanable_is_kept() {
        let store = InMemoryLeaseStore::new();
        let leases = [lease("old", at("1"), &[]), lease("gone", at("1"), &[])];
        for lease in &leases {
            store.create_lease_if_absent(lease).await.unwrap();
        }
        let candidates = cleanable(&leases, &[shard("s")]);
        assert_eq!(candidates.len(), 2);
        store
            .reset_checkpoint(
                &leases[0],
                &ExtendedSequenceNumber::TrimHorizon,
                None,
                false,
            )
            .await
            .unwrap();
        let mut cleaner = LeaseCleaner::new(Duration::ZERO, None);
        let deleted = cleaner
            .run(&store, candidates, Instant::now())
            .await
            .unwrap();
        assert_eq!(deleted, ["gone"]);
        let kept = store.get_lease("old").await.unwrap().expect("kept");
        assert_eq!(kept.checkpoint, ExtendedSequenceNumber::TrimHorizon);
    }

    #[test]
    fn multi_stream_leases_are_judged_by_their_shard_ids() {
        let orders = StreamIdentifier::parse("1:orders:10").unwrap();
        let of = |shard: &str, checkpoint, parents: &[&str]| {
            let mut lease = Lease::for_shard(Some(&orders), shard, checkpoint);
            lease.parent_shard_ids = parents.iter().map(|p| (*p).to_owned()).collect();
            lease
        };
        let parent = of("p", ExtendedSequenceNumber::ShardEnd, &[]);
        let child = of("c", at("3"), &["p"]);
        let open = of("o", at("3"), &[]);
        let shards = [shard("p"), shard("c"), shard("o")];
        assert_eq!(
            keyed(cleanable(
                &[parent.clone(), child.clone(), open.clone()],
                &shards
            )),
            [(orders.lease_key("p"), CleanupReason::ChildrenStarted)]
        );
        let waiting = of("c", ExtendedSequenceNumber::TrimHorizon, &["p"]);
        assert!(cleanable(&[parent, waiting, open], &shards).is_empty());
    }

    #[test]
    fn only_leases_of_streams_no_longer_consumed_are_former() {
        let stream = |text: &str| StreamIdentifier::parse(text).unwrap();
        let (orders, refunds, old) = (
            stream("1:orders:10"),
            stream("1:refunds:10"),
            stream("1:old:10"),
        );
        let recreated = stream("1:orders:99");
        let of = |id: &StreamIdentifier| Lease::for_shard(Some(id), "s", at("1"));
        let leases = [
            of(&orders),
            of(&refunds),
            of(&old),
            of(&recreated),
            Lease::new("s", at("1")),
        ];
        let consumed: BTreeSet<_> = [orders.clone(), refunds.clone()].into();
        assert_eq!(
            keyed(of_former_streams(&leases, &consumed, &BTreeSet::new())),
            [
                (old.lease_key("s"), CleanupReason::FormerStream),
                (recreated.lease_key("s"), CleanupReason::FormerStream),
            ]
        );
        assert_eq!(
            keyed(of_former_streams(
                &leases,
                &consumed,
                &[refunds.clone()].into()
            )),
            [
                (refunds.lease_key("s"), CleanupReason::StreamDeleted),
                (old.lease_key("s"), CleanupReason::FormerStream),
                (recreated.lease_key("s"), CleanupReason::FormerStream),
            ]
        );
    }

    #[tokio::test]
    async fn leases_of_former_streams_wait_for_their_own_delay_or_stay() {
        let store = InMemoryLeaseStore::new();
        let old = StreamIdentifier::parse("1:old:10").unwrap();
        let lease = Lease::for_shard(Some(&old), "s", at("1"));
        store.create_lease_if_absent(&lease).await.unwrap();
        let none = BTreeSet::new();
        let candidates = || of_former_streams(std::slice::from_ref(&lease), &none, &none);
        let start = Instant::now();
        let mut keeps = LeaseCleaner::new(Duration::ZERO, None);
        for later in [0, 3_600, 86_400] {
            let now = start + Duration::from_secs(later);
            assert!(
                keeps
                    .run(&store, candidates(), now)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
        let mut cleaner = LeaseCleaner::new(Duration::ZERO, Some(Duration::from_secs(600)));
        assert!(
            cleaner
                .run(&store, candidates(), start)
                .await
                .unwrap()
                .is_empty()
        );
        let before = start + Duration::from_secs(599);
        assert!(
            cleaner
                .run(&store, candidates(), before)
                .await
                .unwrap()
                .is_empty()
        );
        let deleted = cleaner
            .run(&store, candidates(), start + Duration::from_secs(600))
            .await
            .unwrap();
        assert_eq!(deleted, std::slice::from_ref(&lease.key));
        assert_eq!(store.get_lease(&lease.key).await.unwrap(), None);
    }
}
