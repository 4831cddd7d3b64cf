//! Shard discovery: list the stream's shards and create a lease for every
//! shard that needs one. Creating a lease is conditional (only if absent),
//! so several workers may discover at once.
//!
//! Which leases to create is a pure decision ([`leases_to_create`]):
//! - a shard whose parent has (or gets) a lease starts at `TRIM_HORIZON`, so
//!   nothing between the parent's end and the child's start is skipped;
//! - an open shard with no known parent starts at the configured initial
//!   position;
//! - a closed shard with no known parent is read only when the initial
//!   position is `TRIM_HORIZON` (its records are older than any other
//!   starting point).

use std::collections::BTreeSet;

use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_lease::{Lease, LeaseStore, LeaseStoreError};
use tracing::{debug, info};

use crate::kinesis::{Kinesis, KinesisError, ShardDescription};

/// What a discovery pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Shards listed.
    pub shards: usize,
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

/// The leases to create for `shards`, given the keys of the leases that
/// exist and the initial position for shards without a known parent.
pub fn leases_to_create(
    shards: &[ShardDescription],
    existing: &BTreeSet<String>,
    initial: &ExtendedSequenceNumber,
) -> Vec<Lease> {
    let mut sorted: Vec<&ShardDescription> = shards.iter().collect();
    // Shard ids grow with creation, so parents come before children.
    sorted.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    let mut known: BTreeSet<&str> = existing.iter().map(String::as_str).collect();
    let mut created = Vec::new();
    for shard in sorted {
        if known.contains(shard.shard_id.as_str()) {
            continue;
        }
        let has_known_parent = shard.parents().any(|p| known.contains(p));
        let start = if has_known_parent {
            ExtendedSequenceNumber::TrimHorizon
        } else if shard.is_open() || *initial == ExtendedSequenceNumber::TrimHorizon {
            initial.clone()
        } else {
            continue;
        };
        let mut lease = Lease::new(shard.shard_id.clone(), start);
        lease.parent_shard_ids = shard.parents().map(str::to_owned).collect();
        lease.hash_key_range = Some(shard.hash_key_range);
        known.insert(&shard.shard_id);
        created.push(lease);
    }
    created
}

/// Lists `stream`'s shards and creates the leases [`leases_to_create`]
/// names.
pub async fn sync_shards(
    kinesis: &dyn Kinesis,
    store: &dyn LeaseStore,
    stream: &str,
    initial: &ExtendedSequenceNumber,
) -> Result<SyncReport, ShardSyncError> {
    let shards =
        kinesis
            .list_shards(stream)
            .await
            .map_err(|source| ShardSyncError::ListShards {
                stream: stream.to_owned(),
                source,
            })?;
    let existing: BTreeSet<String> = store
        .list_leases()
        .await?
        .into_iter()
        .map(|lease| lease.key)
        .collect();
    let mut report = SyncReport {
        shards: shards.len(),
        created: Vec::new(),
    };
    for lease in leases_to_create(&shards, &existing, initial) {
        if store.create_lease_if_absent(&lease).await? {
            info!(lease = %lease.key, checkpoint = %lease.checkpoint, "created lease for shard");
            report.created.push(lease.key);
        }
    }
    debug!(?report, "shard sync");
    Ok(report)
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

    fn keys(leases: &[Lease]) -> Vec<(&str, String)> {
        leases
            .iter()
            .map(|l| (l.key.as_str(), l.checkpoint.to_string()))
            .collect()
    }

    #[test]
    fn an_empty_table_gets_leases_for_open_shards_at_the_initial_position() {
        let shards = [shard("s-0", &[], true), shard("s-1", &[], true)];
        let created = leases_to_create(&shards, &BTreeSet::new(), &ExtendedSequenceNumber::Latest);
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
        let existing = BTreeSet::from(["s-0".to_owned(), "s-1".to_owned()]);
        let created = leases_to_create(&shards, &existing, &ExtendedSequenceNumber::Latest);
        assert_eq!(keys(&created), [("s-2", "TRIM_HORIZON".into())]);
        assert_eq!(
            created[0].parent_shard_ids,
            BTreeSet::from(["s-0".to_owned(), "s-1".to_owned()])
        );
    }

    #[test]
    fn closed_shards_are_read_only_from_trim_horizon() {
        let shards = [shard("s-0", &[], false), shard("s-1", &["s-0"], true)];
        let latest = leases_to_create(&shards, &BTreeSet::new(), &ExtendedSequenceNumber::Latest);
        assert_eq!(keys(&latest), [("s-1", "LATEST".into())]);
        let trim = leases_to_create(
            &shards,
            &BTreeSet::new(),
            &ExtendedSequenceNumber::TrimHorizon,
        );
        assert_eq!(
            keys(&trim),
            [
                ("s-0", "TRIM_HORIZON".into()),
                ("s-1", "TRIM_HORIZON".into())
            ]
        );
    }

    #[test]
    fn shards_with_leases_are_left_alone() {
        let shards = [shard("s-0", &[], true)];
        let existing = BTreeSet::from(["s-0".to_owned()]);
        assert!(leases_to_create(&shards, &existing, &ExtendedSequenceNumber::Latest).is_empty());
    }
}
