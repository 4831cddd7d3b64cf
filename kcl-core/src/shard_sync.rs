//! Shard discovery: list the stream's shards and create a lease for every
//! shard that needs one. Creating a lease is conditional (only if absent),
//! so several workers may discover at once.
//!
//! Which leases to create is a pure decision ([`leases_to_create`]). For a
//! shard without a lease, in this order:
//! 1. if a descendant shard's lease has started, nothing: a child starts
//!    only after its parents are finished, so this shard was read to its
//!    end and its lease cleaned up, and must not come back;
//! 2. if a parent has a lease, or a child's lease waits at `TRIM_HORIZON`
//!    for this shard, `TRIM_HORIZON`, so nothing between the parent's end
//!    and the child's start is skipped (the child waits for its parents
//!    before it is read);
//! 3. if a parent's lease is created in the same pass, where that parent
//!    starts (parents come first);
//! 4. if the shard is open, or the table is empty and the initial position
//!    is not `LATEST`, the initial position: a new application with
//!    `TRIM_HORIZON` or `AT_TIMESTAMP` reads the closed shards still in the
//!    stream first, while one with `LATEST` leaves them out (they hold no
//!    record written from now on);
//! 5. otherwise nothing: a closed shard with no leased relative on a table
//!    in use was finished and cleaned up long ago.

use std::collections::{BTreeMap, BTreeSet};

use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_lease::{
    HashKeyRange, Lease, LeaseStore, LeaseStoreError, LeaseTableListing, SkippedKind,
    StreamIdentifier,
};
use tracing::{debug, info};

use crate::kinesis::{Kinesis, KinesisError, ShardDescription};
use crate::streams::ConsumedStream;

/// What a discovery pass found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The stream's shards.
    pub shards: Vec<ShardDescription>,
    /// The stream's leases in the table before this pass created any.
    pub leases: Vec<Lease>,
    /// Leases created by this worker (others may have created some first).
    pub created: Vec<String>,
}

/// Why a discovery pass failed.
#[derive(Debug, thiserror::Error)]
pub enum ShardSyncError {
    /// The shards could not be listed.
    #[error("listing the shards of stream {stream}: {source}")]
    ListShards {
        /// The stream.
        stream: String,
        /// The Kinesis error.
        source: KinesisError,
    },
    /// The lease table could not be read or written.
    #[error("creating leases: {0}")]
    LeaseTable(#[from] LeaseStoreError),
}

/// The leases to create for `shards`, given the leases that exist and the
/// initial position of a new application (see the module docs for the
/// rules).
pub fn leases_to_create(
    shards: &[ShardDescription],
    existing: &[Lease],
    initial: &ExtendedSequenceNumber,
) -> Vec<Lease> {
    let leases: BTreeMap<&str, &Lease> = existing.iter().map(|l| (l.key.as_str(), l)).collect();
    let mut sorted: Vec<&ShardDescription> = shards.iter().collect();
    // Shard ids grow with creation, so parents come before children.
    sorted.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for shard in &sorted {
        for parent in shard.parents() {
            children.entry(parent).or_default().push(&shard.shard_id);
        }
    }
    // Children before parents, so each shard sees its children's answers.
    let mut started_below: BTreeSet<&str> = BTreeSet::new();
    for shard in sorted.iter().rev() {
        let id = shard.shard_id.as_str();
        let below = children.get(id).into_iter().flatten().any(|kid| {
            started_below.contains(kid) || leases.get(kid).is_some_and(|l| l.has_started())
        });
        if below {
            started_below.insert(id);
        }
    }
    let mut new: BTreeMap<&str, ExtendedSequenceNumber> = BTreeMap::new();
    let mut created = Vec::new();
    for shard in sorted {
        let id = shard.shard_id.as_str();
        if leases.contains_key(id) || started_below.contains(id) {
            continue;
        }
        let parent_leased = shard.parents().any(|p| leases.contains_key(p));
        let awaited = children.get(id).into_iter().flatten().any(|kid| {
            leases
                .get(kid)
                .is_some_and(|l| l.checkpoint == ExtendedSequenceNumber::TrimHorizon)
        });
        let new_parents: Vec<&ExtendedSequenceNumber> =
            shard.parents().filter_map(|p| new.get(p)).collect();
        let start = if parent_leased
            || awaited
            || new_parents.contains(&&ExtendedSequenceNumber::TrimHorizon)
        {
            ExtendedSequenceNumber::TrimHorizon
        } else if let Some(start) = new_parents.first() {
            (*start).clone()
        } else if shard.is_open()
            || (existing.is_empty() && *initial != ExtendedSequenceNumber::Latest)
        {
            initial.clone()
        } else {
            continue;
        };
        let lease = new_shard_lease(
            None,
            &shard.shard_id,
            shard.parents().map(str::to_owned),
            shard.hash_key_range,
            start.clone(),
        );
        new.insert(id, start);
        created.push(lease);
    }
    created
}

/// The lease of a shard with no lease yet, unowned, starting at `start`,
/// with its parents (two for a merge) and hash key range: how shard
/// discovery and a parent's consumer at shard end both create one. `stream`
/// is the stream of a multi-stream application (`None`: the lease is keyed
/// by shard id).
pub fn new_shard_lease(
    stream: Option<&StreamIdentifier>,
    shard_id: &str,
    parents: impl IntoIterator<Item = String>,
    hash_key_range: HashKeyRange,
    start: ExtendedSequenceNumber,
) -> Lease {
    let mut lease = Lease::for_shard(stream, shard_id, start);
    lease.parent_shard_ids = parents.into_iter().collect();
    lease.hash_key_range = Some(hash_key_range);
    lease
}

/// The leases of `stream` in `listing`, keyed by shard id (as
/// [`leases_to_create`] sees them), and in place of each of its leases that cannot be read (see
/// [`kcl_lease::listing`]) one that has not started: its shard gets no new
/// lease over it, and its relatives are decided as if it waited at
/// `TRIM_HORIZON`, which never skips a record of theirs (a child of it
/// starts at `TRIM_HORIZON`, not at `LATEST`).
pub fn stream_leases_by_shard(listing: &LeaseTableListing, stream: &ConsumedStream) -> Vec<Lease> {
    let unreadable = listing.skipped.iter().filter_map(|item| {
        if !matches!(
            item.kind,
            SkippedKind::Malformed { .. } | SkippedKind::NotALease { entity_type: None }
        ) {
            return None;
        }
        let shard = match (
            &stream.identifier,
            StreamIdentifier::split_lease_key(&item.key),
        ) {
            (None, None) => item.key.as_str(),
            (Some(ours), Some((theirs, shard))) if *ours == theirs => shard,
            _ => return None,
        };
        Some(Lease::new(shard, ExtendedSequenceNumber::TrimHorizon))
    });
    listing
        .leases
        .iter()
        .filter(|lease| stream.owns(lease))
        .map(|lease| Lease {
            key: lease.shard_id().to_owned(),
            stream: None,
            ..lease.clone()
        })
        .chain(unreadable)
        .collect()
}

/// Every shard of `stream`.
pub async fn list_stream_shards(
    kinesis: &dyn Kinesis,
    stream: &ConsumedStream,
) -> Result<Vec<ShardDescription>, ShardSyncError> {
    kinesis
        .list_shards(&stream.name)
        .await
        .map_err(|source| ShardSyncError::ListShards {
            stream: stream.name.clone(),
            source,
        })
}

/// Creates the leases [`leases_to_create`] names for `stream`'s `shards`,
/// given the lease table as `listing` found it (read after the shards were
/// listed, so that no lease cleaned up since is created again).
pub async fn create_missing_leases(
    store: &dyn LeaseStore,
    stream: &ConsumedStream,
    shards: Vec<ShardDescription>,
    listing: &LeaseTableListing,
) -> Result<SyncReport, ShardSyncError> {
    let initial = stream.initial_position.checkpoint();
    let to_create = leases_to_create(&shards, &stream_leases_by_shard(listing, stream), &initial);
    let mut report = SyncReport {
        shards,
        leases: listing
            .leases
            .iter()
            .filter(|lease| stream.owns(lease))
            .cloned()
            .collect(),
        created: Vec::new(),
    };
    for lease in to_create {
        let lease = Lease {
            key: stream.lease_key(&lease.key),
            stream: stream.identifier.clone(),
            ..lease
        };
        if store.create_lease_if_absent(&lease).await? {
            info!(stream = %stream.name, lease = %lease.key, checkpoint = %lease.checkpoint, "created lease for shard");
            report.created.push(lease.key);
        }
    }
    debug!(stream = %stream.name, shards = report.shards.len(), created = ?report.created, "shard sync");
    Ok(report)
}

/// Lists `stream`'s shards, then reads the lease table and creates the
/// leases that are missing (see [`create_missing_leases`]).
pub async fn sync_shards(
    kinesis: &dyn Kinesis,
    store: &dyn LeaseStore,
    stream: &ConsumedStream,
) -> Result<SyncReport, ShardSyncError> {
    let shards = list_stream_shards(kinesis, stream).await?;
    let listing = store.list_table().await?;
    create_missing_leases(store, stream, shards, &listing).await
}

#[cfg(test)]
mod tests {
    use kcl_lease::HashKeyRange;

    use super::*;

    fn shard(id: &str, parents: &[&str], open: bool) -> ShardDescription {
        ShardDescription {
            shard_id: id.to_owned(),
            parent_shard_id: parents.first().map(|p| (*p).to_owned()),
            adjacent_parent_shard_id: parents.get(1).map(|p| (*p).to_owned()),
            hash_key_range: HashKeyRange { start: 0, end: 9 },
            ending_sequence_number: (!open).then(|| "99".to_owned()),
        }
    }

    /// Leases for `(key, checkpoint)` pairs.
    fn leased(entries: &[(&str, ExtendedSequenceNumber)]) -> Vec<Lease> {
        entries
            .iter()
            .map(|(key, checkpoint)| Lease::new(*key, checkpoint.clone()))
            .collect()
    }

    fn at(seq: &str) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::record(seq, 0).unwrap()
    }

    fn keys(leases: &[Lease]) -> Vec<(&str, String)> {
        leases
            .iter()
            .map(|l| (l.key.as_str(), l.checkpoint.to_string()))
            .collect()
    }

    #[test]
    fn an_empty_table_gets_leases_for_open_shards_at_the_initial_position() {
        let shards = [shard("s-0", &[], true), shard("s-1", &[], true)];
        let created = leases_to_create(&shards, &[], &ExtendedSequenceNumber::Latest);
        assert_eq!(
            keys(&created),
            [("s-0", "LATEST".into()), ("s-1", "LATEST".into())]
        );
        assert_eq!(
            created[0].hash_key_range,
            Some(HashKeyRange { start: 0, end: 9 })
        );
    }

    #[test]
    fn children_of_leased_shards_start_at_trim_horizon_with_their_parents() {
        let shards = [
            shard("s-0", &[], false),
            shard("s-1", &[], false),
            shard("s-2", &["s-0", "s-1"], true),
        ];
        let existing = leased(&[("s-0", ExtendedSequenceNumber::ShardEnd), ("s-1", at("5"))]);
        let created = leases_to_create(&shards, &existing, &ExtendedSequenceNumber::Latest);
        assert_eq!(keys(&created), [("s-2", "TRIM_HORIZON".into())]);
        assert_eq!(
            created[0].parent_shard_ids,
            BTreeSet::from(["s-0".to_owned(), "s-1".to_owned()])
        );
    }

    #[test]
    fn at_timestamp_reads_closed_shards_from_the_timestamp() {
        let shards = [shard("s-0", &[], false), shard("s-1", &["s-0"], true)];
        let created = leases_to_create(&shards, &[], &ExtendedSequenceNumber::AtTimestamp);
        assert_eq!(
            keys(&created),
            [
                ("s-0", "AT_TIMESTAMP".into()),
                ("s-1", "AT_TIMESTAMP".into())
            ]
        );
    }

    #[test]
    fn closed_shards_are_left_out_when_starting_at_latest() {
        let shards = [shard("s-0", &[], false), shard("s-1", &["s-0"], true)];
        let latest = leases_to_create(&shards, &[], &ExtendedSequenceNumber::Latest);
        assert_eq!(keys(&latest), [("s-1", "LATEST".into())]);
        let trim = leases_to_create(&shards, &[], &ExtendedSequenceNumber::TrimHorizon);
        assert_eq!(
            keys(&trim),
            [
                ("s-0", "TRIM_HORIZON".into()),
                ("s-1", "TRIM_HORIZON".into())
            ]
        );
    }

    #[test]
    fn a_closed_shard_whose_lease_was_cleaned_up_gets_none_again() {
        // s-0 was split into s-1 and s-2, both started, and s-0's lease
        // deleted.
        let shards = [
            shard("s-0", &[], false),
            shard("s-1", &["s-0"], true),
            shard("s-2", &["s-0"], true),
        ];
        let existing = leased(&[("s-1", at("7")), ("s-2", at("8"))]);
        let trim = ExtendedSequenceNumber::TrimHorizon;
        assert!(leases_to_create(&shards, &existing, &trim).is_empty());
    }

    #[test]
    fn shards_with_leases_are_left_alone() {
        let shards = [shard("s-0", &[], true)];
        let existing = leased(&[("s-0", ExtendedSequenceNumber::TrimHorizon)]);
        assert!(leases_to_create(&shards, &existing, &ExtendedSequenceNumber::Latest).is_empty());
    }

    #[test]
    fn a_finished_merge_parent_stays_gone_while_its_own_parent_waits() {
        // s-0 split into s-1 and s-2; s-2 and s-3 merged into s-4. s-2 was
        // read to its end and its lease deleted once s-4 started, while
        // s-0's lease waits for s-1 to start. s-2 must not come back.
        let shards = [
            shard("s-0", &[], false),
            shard("s-1", &["s-0"], true),
            shard("s-2", &["s-0"], false),
            shard("s-3", &[], false),
            shard("s-4", &["s-2", "s-3"], true),
        ];
        let existing = leased(&[
            ("s-0", ExtendedSequenceNumber::ShardEnd),
            ("s-1", ExtendedSequenceNumber::TrimHorizon),
            ("s-3", ExtendedSequenceNumber::ShardEnd),
            ("s-4", at("40")),
        ]);
        let trim = ExtendedSequenceNumber::TrimHorizon;
        assert!(leases_to_create(&shards, &existing, &trim).is_empty());
    }

    #[test]
    fn a_grandchild_that_started_keeps_finished_ancestors_gone() {
        let shards = [
            shard("s-0", &[], false),
            shard("s-1", &["s-0"], false),
            shard("s-2", &["s-1"], true),
        ];
        let existing = leased(&[("s-2", at("9"))]);
        let trim = ExtendedSequenceNumber::TrimHorizon;
        assert!(leases_to_create(&shards, &existing, &trim).is_empty());
    }

    #[test]
    fn a_merge_child_waiting_for_an_unleased_parent_gets_that_parent_created() {
        // s-3 ended and created the lease of s-4 (its merge with s-2)
        // before s-2 had a lease: s-2 is read from TRIM_HORIZON, and s-4
        // waits for it.
        let shards = [
            shard("s-2", &[], false),
            shard("s-3", &[], false),
            shard("s-4", &["s-2", "s-3"], true),
        ];
        let existing = leased(&[
            ("s-3", ExtendedSequenceNumber::ShardEnd),
            ("s-4", ExtendedSequenceNumber::TrimHorizon),
        ]);
        let created = leases_to_create(&shards, &existing, &ExtendedSequenceNumber::Latest);
        assert_eq!(keys(&created), [("s-2", "TRIM_HORIZON".into())]);
    }

    #[test]
    fn a_child_of_a_lease_created_in_the_same_pass_starts_where_its_parent_does() {
        // s-0 is held; s-1 (its child) and s-2 (s-1's child) have no lease:
        // both are read from TRIM_HORIZON whatever the initial position.
        let shards = [
            shard("s-0", &[], false),
            shard("s-1", &["s-0"], false),
            shard("s-2", &["s-1"], true),
        ];
        let existing = leased(&[("s-0", at("3"))]);
        let created = leases_to_create(&shards, &existing, &ExtendedSequenceNumber::Latest);
        assert_eq!(
            keys(&created),
            [
                ("s-1", "TRIM_HORIZON".into()),
                ("s-2", "TRIM_HORIZON".into())
            ]
        );
    }
}

#[cfg(test)]
mod sync_tests {
    use aws_sdk_dynamodb::types::AttributeValue;
    use kcl_lease::InMemoryLeaseStore;

    use super::*;
    use crate::InitialPosition;
    use crate::kinesis::InMemoryKinesis;

    fn at(seq: &str) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::record(seq, 0).unwrap()
    }

    #[tokio::test]
    async fn a_child_of_a_lease_that_cannot_be_read_starts_at_trim_horizon() {
        let kinesis = InMemoryKinesis::new();
        let parent = kinesis.create_stream("orders", 1).remove(0);
        let children = kinesis.split_shard("orders", &parent, u128::MAX / 2);
        let store = InMemoryLeaseStore::new();
        // The parent's lease is in the table, but cannot be read.
        store.put_item(
            &[
                ("leaseKey", AttributeValue::S(parent.clone())),
                ("leaseCounter", AttributeValue::S("many".into())),
                ("checkpoint", AttributeValue::S("TRIM_HORIZON".into())),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
        );

        let orders = ConsumedStream::single("orders", InitialPosition::Latest);
        let report = sync_shards(&kinesis, &store, &orders).await.unwrap();
        assert_eq!(report.created.len(), 2, "{report:?}");
        assert!(!report.created.contains(&parent));
        for child in &children {
            let lease = store.get_lease(child).await.unwrap().unwrap();
            assert_eq!(
                lease.checkpoint,
                ExtendedSequenceNumber::TrimHorizon,
                "{child}"
            );
        }
    }

    #[tokio::test]
    async fn each_stream_of_a_multi_stream_table_gets_its_own_leases() {
        let kinesis = InMemoryKinesis::new();
        let orders_shards = kinesis.create_stream("orders", 2);
        let refunds_shards = kinesis.create_stream("refunds", 1);
        let parent = refunds_shards[0].clone();
        let children = kinesis.split_shard("refunds", &parent, u128::MAX / 2);
        let orders_id = StreamIdentifier::parse("1:orders:10").unwrap();
        let refunds_id = StreamIdentifier::parse("1:refunds:20").unwrap();
        let stream = |name: &str, id: &StreamIdentifier, initial| ConsumedStream {
            identifier: Some(id.clone()),
            ..ConsumedStream::single(name, initial)
        };
        let orders = stream("orders", &orders_id, InitialPosition::Latest);
        let refunds = stream("refunds", &refunds_id, InitialPosition::Latest);
        let store = InMemoryLeaseStore::new();
        // One orders shard is read already; a lease of the same shard id in
        // another stream, and one of an application of one stream, change
        // nothing for either stream.
        let mut read = Lease::for_shard(Some(&orders_id), &orders_shards[0], at("5"));
        read.owner = Some("w".into());
        store.create_lease_if_absent(&read).await.unwrap();
        store
            .create_lease_if_absent(&Lease::new(&orders_shards[1], at("9")))
            .await
            .unwrap();
        // The refunds parent's lease cannot be read.
        store.put_item(
            &[
                ("leaseKey", AttributeValue::S(refunds_id.lease_key(&parent))),
                ("leaseCounter", AttributeValue::S("many".into())),
                ("checkpoint", AttributeValue::S("TRIM_HORIZON".into())),
                ("streamName", AttributeValue::S(refunds_id.to_string())),
                ("shardId", AttributeValue::S(parent.clone())),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect(),
        );

        let report = sync_shards(&kinesis, &store, &orders).await.unwrap();
        assert_eq!(report.created, [orders_id.lease_key(&orders_shards[1])]);
        assert_eq!(report.leases, [read.clone()]);
        let created = store
            .get_lease(&orders_id.lease_key(&orders_shards[1]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(created.stream.as_ref(), Some(&orders_id));
        assert_eq!(created.shard_id(), orders_shards[1]);
        assert_eq!(created.checkpoint, ExtendedSequenceNumber::Latest);

        let report = sync_shards(&kinesis, &store, &refunds).await.unwrap();
        let mut expected: Vec<String> = children.iter().map(|c| refunds_id.lease_key(c)).collect();
        expected.sort();
        assert_eq!(report.created, expected);
        for child in &children {
            let lease = store
                .get_lease(&refunds_id.lease_key(child))
                .await
                .unwrap()
                .unwrap();
            // Parents stay shard ids, as the Java KCL keeps them.
            assert_eq!(lease.parent_shard_ids, [parent.clone()].into());
            assert_eq!(lease.checkpoint, ExtendedSequenceNumber::TrimHorizon);
        }
    }
}
