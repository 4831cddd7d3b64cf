//! What a scan of the lease table finds: the leases this worker uses, and
//! the items it leaves alone.
//!
//! A lease table is not always ours alone. The Java KCL 3.5 keeps worker
//! metrics, its leader lock and its migration state in the lease table
//! (each marked with an `entityType` other than `LEASE`). Such items are listed as [`SkippedItem`]s: never taken, checkpointed or
//! deleted, reported once in the log and counted in the
//! [`LEASE_TABLE_SKIPPED_ITEMS`](crate::metrics::LEASE_TABLE_SKIPPED_ITEMS)
//! gauge. One unreadable item never stops the fleet: it is skipped the same
//! way, with the reason logged.

use std::collections::HashSet;
use std::sync::Mutex;

use tracing::{error, info};

use crate::{Lease, StreamIdentifier};

/// Everything a scan of the lease table found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseTableListing {
    /// The leases this worker uses.
    pub leases: Vec<Lease>,
    /// The items it leaves alone, and why.
    pub skipped: Vec<SkippedItem>,
}

/// An item of the lease table that is not a lease this worker uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedItem {
    /// The item's `leaseKey`.
    pub key: String,
    /// Why it is skipped.
    pub kind: SkippedKind,
}

/// Why an item of the lease table is skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkippedKind {
    /// Not a lease: an `entityType` other than `LEASE` (the Java KCL 3.5's
    /// worker metrics, leader lock, migration and stream items), or no
    /// checkpoint at all.
    NotALease {
        /// The item's `entityType`, if it has one.
        entity_type: Option<String>,
    },
    /// A lease item that cannot be read.
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
}

impl SkippedItem {
    /// Whether the item is the stream information a Java KCL 3.5
    /// multi-stream application keeps for one of its streams (`entityType`
    /// `STREAM`, keyed `account:stream:epoch`).
    pub fn is_multi_stream_information(&self) -> bool {
        match &self.kind {
            SkippedKind::NotALease {
                entity_type: Some(entity),
            } => entity == "STREAM" && StreamIdentifier::parse(&self.key).is_ok(),
            _ => false,
        }
    }
}

impl SkippedKind {
    /// The metric label for this kind.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotALease { .. } => "not_a_lease",
            Self::Malformed { .. } => "malformed",
        }
    }
}

impl std::fmt::Display for SkippedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotALease {
                entity_type: Some(entity_type),
            } => write!(f, "not a lease (entityType {entity_type})"),
            Self::NotALease { entity_type: None } => {
                write!(f, "not a lease (no checkpoint attribute)")
            }
            Self::Malformed { reason } => write!(f, "a lease that cannot be read: {reason}"),
        }
    }
}

/// Reports skipped items: each key is logged the first time it is seen
/// (damaged leases as errors, others as information), and the gauge is set
/// to the counts of the latest scan.
#[derive(Debug, Default)]
pub(crate) struct SkippedItemsReport {
    logged: Mutex<HashSet<String>>,
}

/// At most this many new skipped items are logged one by one per scan; the
/// rest are summed up in one line (a large table of another application
/// would flood the log otherwise).
const LOGGED_PER_SCAN: usize = 10;

impl SkippedItemsReport {
    pub(crate) fn report(&self, table: &str, skipped: &[SkippedItem]) {
        let mut logged = self
            .logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let new: Vec<&SkippedItem> = skipped
            .iter()
            .filter(|item| logged.insert(item.key.clone()))
            .collect();
        for item in new.iter().take(LOGGED_PER_SCAN) {
            match &item.kind {
                // A damaged lease: its shard is not processed until it is
                // repaired.
                SkippedKind::Malformed { .. } | SkippedKind::NotALease { entity_type: None } => {
                    error!(
                        table,
                        key = %item.key,
                        "lease table item skipped: {}; repair or delete it to have its shard \
                         processed",
                        item.kind
                    )
                }
                kind => info!(table, key = %item.key, "lease table item left alone: {kind}"),
            }
        }
        if new.len() > LOGGED_PER_SCAN {
            info!(
                table,
                more = new.len() - LOGGED_PER_SCAN,
                "more lease table items left alone (see the kcl_lease_table_skipped_items gauge)"
            );
        }
        for kind in ["not_a_lease", "malformed"] {
            let count = skipped
                .iter()
                .filter(|item| item.kind.label() == kind)
                .count();
            metrics::gauge!(
                crate::metrics::LEASE_TABLE_SKIPPED_ITEMS,
                "table" => table.to_owned(),
                "kind" => kind
            )
            .set(count as f64);
        }
    }
}
