//! Shard discovery: list the stream's shards and create a lease for every
//! shard that needs one. Creating a lease is conditional (only if absent),
//! so several workers may discover at once.
//!
//! Which leases to create is a pure decision ([`leases_to_create`]):
//! - a shard whose parent already has a lease starts at `TRIM_HORIZON`, so
//!   nothing between the parent's end and the child's start is skipped (it
//!   waits for its parents before it is read);
//! - on an empty table, every shard starts at the configured initial
//!   position, parents before children, except that closed shards are left
//!   out when starting at `LATEST` (they hold no record written from now
//!   on). With `TRIM_HORIZON`, closed shards still in the stream are read
//!   first, so a new application reads everything the stream retains;
//! - on a table with leases, an open shard with no leased parent starts at
//!   the initial position, and a closed one gets no lease: its lease was
//!   deleted after its children started, and must not come back.

use std::collections::BTreeSet;

use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_lease::{Lease, LeaseStore, LeaseStoreError};
use tracing::{debug, info};

use crate::kinesis::{Kinesis, KinesisError, ShardDescription};

/// What a discovery pass found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The stream's shards.
    pub shards: Vec<ShardDescription>,
    /// The leases in the table before this pass created any.
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
    let mut new: BTreeSet<&str> = BTreeSet::new();
    let mut created = Vec::new();
    for shard in sorted {
        if existing.contains(&shard.shard_id) {
            continue;
        }
        let start = if shard.parents().any(|p| existing.contains(p)) {
            ExtendedSequenceNumber::TrimHorizon
        } else if shard.is_open()
            || shard.parents().any(|p| new.contains(p))
            || (existing.is_empty() && *initial != ExtendedSequenceNumber::Latest)
        {
            initial.clone()
        } else {
            continue;
        };
        let mut lease = Lease::new(shard.shard_id.clone(), start);
        lease.parent_shard_ids = shard.parents().map(str::to_owned).collect();
        lease.hash_key_range = Some(shard.hash_key_range);
        new.insert(&shard.shard_id);
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
    let leases = store.list_leases().await?;
    let existing: BTreeSet<String> = leases.iter().map(|lease| lease.key.clone()).collect();
    let to_create = leases_to_create(&shards, &existing, initial);
    let mut report = SyncReport {
        shards,
        leases,
        created: Vec::new(),
    };
    for lease in to_create {
        if store.create_lease_if_absent(&lease).await? {
            info!(lease = %lease.key, checkpoint = %lease.checkpoint, "created lease for shard");
            report.created.push(lease.key);
        }
    }
    debug!(shards = report.shards.len(), created = ?report.created, "shard sync");
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
    fn at_timestamp_reads_closed_shards_from_the_timestamp() {
        let shards = [shard("s-0", &[], false), shard("s-1", &["s-0"], true)];
        let created = leases_to_create(
            &shards,
            &BTreeSet::new(),
            &ExtendedSequenceNumber::AtTimestamp,
        );
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
    fn a_closed_shard_whose_lease_was_cleaned_up_gets_none_again() {
        // s-0 was split into s-1 and s-2, both started, and s-0's lease deleted.
        let shards = [
            shard("s-0", &[], false),
            shard("s-1", &["s-0"], true),
            shard("s-2", &["s-0"], true),
        ];
        let existing = BTreeSet::from(["s-1".to_owned(), "s-2".to_owned()]);
        let trim = ExtendedSequenceNumber::TrimHorizon;
        assert!(leases_to_create(&shards, &existing, &trim).is_empty());
    }

    #[test]
    fn shards_with_leases_are_left_alone() {
        let shards = [shard("s-0", &[], true)];
        let existing = BTreeSet::from(["s-0".to_owned()]);
        assert!(leases_to_create(&shards, &existing, &ExtendedSequenceNumber::Latest).is_empty());
    }
}
