//! Removing leases that are no longer needed:
//! - a finished lease (checkpointed at `SHARD_END`) once every child shard
//!   has started (its checkpoint is past `TRIM_HORIZON`), so a child never
//!   loses track of a parent it must wait for;
//! - the lease of a shard that is gone from the stream (past retention).
//!
//! Which leases qualify is a pure decision ([`cleanable`]); a
//! [`LeaseCleaner`] deletes them once they have qualified for the
//! configured delay, judged by this worker's clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use kcl_lease::{Lease, LeaseStore, LeaseStoreError};
use tracing::info;

use crate::kinesis::ShardDescription;

/// Why a lease may be deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanupReason {
    /// The shard is finished and every child shard has started.
    ChildrenStarted,
    /// The shard no longer exists in the stream.
    ShardGone,
}

/// The leases that may be deleted, given every lease and the stream's
/// shards. With an empty shard list nothing is judged gone (a stream
/// always has an open shard, so an empty list is a bad answer).
pub fn cleanable(leases: &[Lease], shards: &[ShardDescription]) -> Vec<(String, CleanupReason)> {
    let in_stream: BTreeSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    let by_key: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    let mut children: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for lease in leases {
        for parent in &lease.parent_shard_ids {
            children.entry(parent).or_default().insert(&lease.key);
        }
        for child in &lease.child_shard_ids {
            children.entry(&lease.key).or_default().insert(child);
        }
    }
    let mut result = Vec::new();
    for lease in leases {
        if !in_stream.is_empty() && !in_stream.contains(lease.key.as_str()) {
            result.push((lease.key.clone(), CleanupReason::ShardGone));
            continue;
        }
        if !lease.is_finished() {
            continue;
        }
        let Some(kids) = children.get(lease.key.as_str()) else {
            continue;
        };
        let all_started = kids.iter().all(|kid| match by_key.get(kid) {
            Some(child) => child.has_started(),
            // A child without a lease counts only if it is gone as well.
            None => !in_stream.is_empty() && !in_stream.contains(kid),
        });
        if all_started {
            result.push((lease.key.clone(), CleanupReason::ChildrenStarted));
        }
    }
    result
}

/// Deletes cleanable leases once they have stayed cleanable for `delay`.
#[derive(Debug)]
pub struct LeaseCleaner {
    delay: Duration,
    first_seen: HashMap<String, Instant>,
}

impl LeaseCleaner {
    /// A cleaner that waits `delay` before deleting.
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            first_seen: HashMap::new(),
        }
    }

    /// Deletes the leases that have been cleanable for the delay at `now`.
    /// Returns the keys deleted.
    pub async fn run(
        &mut self,
        store: &dyn LeaseStore,
        leases: &[Lease],
        shards: &[ShardDescription],
        now: Instant,
    ) -> Result<Vec<String>, LeaseStoreError> {
        let candidates = cleanable(leases, shards);
        let keys: BTreeSet<&str> = candidates.iter().map(|(k, _)| k.as_str()).collect();
        self.first_seen.retain(|key, _| keys.contains(key.as_str()));
        let mut deleted = Vec::new();
        for (key, reason) in candidates {
            let since = *self.first_seen.entry(key.clone()).or_insert(now);
            if now.saturating_duration_since(since) >= self.delay {
                store.delete_lease(&key).await?;
                info!(lease = %key, ?reason, "deleted lease");
                self.first_seen.remove(&key);
                deleted.push(key);
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
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
            cleanable(&[parent, a, b_started], &shards),
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
            cleanable(&leases, &[shard("s")]),
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
        let mut cleaner = LeaseCleaner::new(Duration::from_secs(60));
        let start = Instant::now();
        let shards = [shard("s")];
        assert!(
            cleaner
                .run(&store, &leases, &shards, start)
                .await
                .unwrap()
                .is_empty()
        );
        let later = start + Duration::from_secs(59);
        assert!(
            cleaner
                .run(&store, &leases, &shards, later)
                .await
                .unwrap()
                .is_empty()
        );
        let deleted = cleaner
            .run(&store, &leases, &shards, start + Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(deleted, ["old"]);
        assert_eq!(store.get_lease("old").await.unwrap(), None);
    }
}
