//! A lease store in memory, with the same semantics as the DynamoDB one:
//! for unit tests and large simulations. The conformance suite
//! ([`crate::conformance`]) runs against both to keep them the same.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::dynamodb::item::classify_item;
use crate::listing::{SkippedItem, SkippedItemsReport, SkippedKind};
use crate::store::{CheckpointUpdate, LeaseStore, RequestCounter, RequestCounts, WorkerHeartbeat};
use crate::{Lease, LeaseStoreError, LeaseTableListing, LeaseToken};

/// An in-memory lease table and workers table. Clones share the same tables,
/// like several clients of one DynamoDB table; each clone counts its own
/// requests.
#[derive(Clone, Debug, Default)]
pub struct InMemoryLeaseStore {
    tables: Arc<Mutex<Tables>>,
    requests: Arc<RequestCounter>,
    /// Skipped items, reported once each.
    skipped_report: Arc<SkippedItemsReport>,
}

#[derive(Debug, Default)]
struct Tables {
    leases: BTreeMap<String, Lease>,
    /// Items of the lease table that are not leases (put
    /// with [`InMemoryLeaseStore::put_item`]), as a scan reports them.
    skipped: BTreeMap<String, SkippedKind>,
    heartbeats: BTreeMap<String, WorkerHeartbeat>,
}

impl InMemoryLeaseStore {
    /// Empty tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes a raw lease-table item as DynamoDB's `PutItem` would
    /// (replacing any item with its key), read the way the DynamoDB store
    /// reads it: a lease, or an item scans skip. For fixtures, such as
    /// the items the Java KCL writes.
    pub fn put_item(&self, item: &HashMap<String, AttributeValue>) {
        let mut tables = self.tables("PutItem");
        match classify_item(item) {
            Ok(lease) => {
                tables.skipped.remove(&lease.key);
                tables.leases.insert(lease.key.clone(), lease);
            }
            Err(skipped) => {
                tables.leases.remove(&skipped.key);
                tables.skipped.insert(skipped.key, skipped.kind);
            }
        }
    }

    /// Another client of the same tables, with its own request counts.
    pub fn client(&self) -> Self {
        Self {
            tables: Arc::clone(&self.tables),
            requests: Arc::default(),
            skipped_report: Arc::clone(&self.skipped_report),
        }
    }

    fn tables(&self, operation: &'static str) -> MutexGuard<'_, Tables> {
        self.requests.add(operation);
        // A panic while holding the lock cannot leave a table half-written:
        // every operation checks first and writes last.
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether `lease` is still exactly as `seen` in the fields that fence
/// ownership.
fn unchanged(lease: &Lease, seen: &Lease) -> bool {
    lease.counter == seen.counter
        && lease.owner == seen.owner
        && lease.checkpoint_owner == seen.checkpoint_owner
}

/// Whether `token` still processes `lease`.
fn held(lease: &Lease, token: &LeaseToken) -> bool {
    lease.is_held_by(token)
}

#[async_trait]
impl LeaseStore for InMemoryLeaseStore {
    async fn ensure_tables(&self) -> Result<(), LeaseStoreError> {
        drop(self.tables("DescribeTable"));
        Ok(())
    }

    async fn list_table(&self) -> Result<LeaseTableListing, LeaseStoreError> {
        let tables = self.tables("Scan");
        let listing = LeaseTableListing {
            leases: tables.leases.values().cloned().collect(),
            skipped: tables
                .skipped
                .iter()
                .map(|(key, kind)| SkippedItem {
                    key: key.clone(),
                    kind: kind.clone(),
                })
                .collect(),
        };
        drop(tables);
        self.skipped_report.report("in-memory", &listing.skipped);
        Ok(listing)
    }

    async fn get_lease(&self, key: &str) -> Result<Option<Lease>, LeaseStoreError> {
        let tables = self.tables("GetItem");
        if let Some(kind) = tables.skipped.get(key) {
            return Err(LeaseStoreError::InvalidItem {
                lease_key: key.to_owned(),
                reason: kind.to_string(),
            });
        }
        Ok(tables.leases.get(key).cloned())
    }

    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError> {
        let mut tables = self.tables("PutItem");
        // Any item with the key, lease or not, stays as it is.
        if tables.leases.contains_key(&lease.key) || tables.skipped.contains_key(&lease.key) {
            return Ok(false);
        }
        tables.leases.insert(lease.key.clone(), lease.clone());
        Ok(true)
    }

    async fn take_lease(&self, seen: &Lease, worker: &str) -> Result<Lease, LeaseStoreError> {
        let mut tables = self.tables("UpdateItem");
        let lease = tables
            .leases
            .get_mut(&seen.key)
            .filter(|lease| unchanged(lease, seen))
            .ok_or_else(|| LeaseStoreError::lost(&seen.key))?;
        if lease
            .processing_owner()
            .is_some_and(|previous| previous != worker)
        {
            lease.owner_switches_since_checkpoint += 1;
        }
        lease.owner = Some(worker.to_owned());
        lease.checkpoint_owner = None;
        lease.counter += 1;
        Ok(lease.clone())
    }

    async fn request_handoff(&self, seen: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        let mut tables = self.tables("UpdateItem");
        let lease = tables
            .leases
            .get_mut(&seen.key)
            .filter(|lease| {
                unchanged(lease, seen) && lease.owner.is_some() && !lease.handoff_in_progress()
            })
            .ok_or_else(|| LeaseStoreError::lost(&seen.key))?;
        lease.checkpoint_owner = lease.owner.replace(to.to_owned());
        Ok(lease.clone())
    }

    async fn checkpoint(
        &self,
        token: &LeaseToken,
        _previous: &CheckpointUpdate,
        update: &CheckpointUpdate,
    ) -> Result<CheckpointUpdate, LeaseStoreError> {
        // Each call is one atomic step here, so no request can land late:
        // only the forward-only rule applies.
        let mut tables = self.tables("UpdateItem");
        let lease = tables
            .leases
            .get_mut(&token.key)
            .filter(|lease| held(lease, token))
            .ok_or_else(|| LeaseStoreError::lost(&token.key))?;
        // Never back: behind the stored checkpoint, only the pending fields
        // are written, on top of it.
        let written = update.on_top_of(&lease.checkpoint);
        lease.checkpoint = written.checkpoint.clone();
        lease.pending_checkpoint = written.pending_checkpoint.clone();
        lease.pending_checkpoint_state = written.pending_checkpoint_state.clone();
        lease.owner_switches_since_checkpoint = 0;
        Ok(written)
    }

    async fn record_start_timestamp(
        &self,
        token: &LeaseToken,
        at: std::time::SystemTime,
    ) -> Result<std::time::SystemTime, LeaseStoreError> {
        let mut tables = self.tables("UpdateItem");
        let lease = tables
            .leases
            .get_mut(&token.key)
            .filter(|lease| held(lease, token))
            .ok_or_else(|| LeaseStoreError::lost(&token.key))?;
        // Stored as DynamoDB stores it: whole milliseconds.
        let millis = crate::dynamodb::item::epoch_millis(at);
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis);
        Ok(*lease.start_timestamp.get_or_insert(at))
    }

    async fn record_child_shards(
        &self,
        token: &LeaseToken,
        children: &BTreeSet<String>,
    ) -> Result<(), LeaseStoreError> {
        let mut tables = self.tables("UpdateItem");
        let lease = tables
            .leases
            .get_mut(&token.key)
            .filter(|lease| held(lease, token))
            .ok_or_else(|| LeaseStoreError::lost(&token.key))?;
        lease.child_shard_ids.extend(children.iter().cloned());
        Ok(())
    }

    async fn release_lease(&self, token: &LeaseToken) -> Result<(), LeaseStoreError> {
        let mut tables = self.tables("UpdateItem");
        let plain_release = tables
            .leases
            .get(&token.key)
            .is_some_and(|lease| held(lease, token) && !lease.handoff_in_progress());
        if !plain_release {
            // DynamoDB tries a plain release first, then a handoff completion:
            // a second request, counted the same way here.
            self.requests.add("UpdateItem");
        }
        let lease = tables
            .leases
            .get_mut(&token.key)
            .filter(|lease| held(lease, token))
            .ok_or_else(|| LeaseStoreError::lost(&token.key))?;
        if lease.checkpoint_owner.take().is_some() {
            lease.owner_switches_since_checkpoint += 1;
        } else {
            lease.owner = None;
        }
        lease.counter += 1;
        Ok(())
    }

    async fn release_lease_unowned(&self, token: &LeaseToken) -> Result<(), LeaseStoreError> {
        let mut tables = self.tables("UpdateItem");
        let lease = tables
            .leases
            .get_mut(&token.key)
            .filter(|lease| held(lease, token))
            .ok_or_else(|| LeaseStoreError::lost(&token.key))?;
        lease.owner = None;
        lease.checkpoint_owner = None;
        lease.counter += 1;
        Ok(())
    }

    async fn delete_lease(&self, seen: &Lease) -> Result<(), LeaseStoreError> {
        let key = &seen.key;
        let mut tables = self.tables("DeleteItem");
        if let Some(kind) = tables.skipped.get(key) {
            return Err(LeaseStoreError::InvalidItem {
                lease_key: key.to_owned(),
                reason: format!("{kind}; left alone"),
            });
        }
        match tables.leases.get(key) {
            Some(stored) if stored.counter != seen.counter => Err(LeaseStoreError::lost(key)),
            _ => {
                tables.leases.remove(key);
                Ok(())
            }
        }
    }

    async fn reset_checkpoint(
        &self,
        seen: &Lease,
        checkpoint: &kcl_checkpoint::ExtendedSequenceNumber,
        start_timestamp: Option<SystemTime>,
        clear_owner: bool,
    ) -> Result<Lease, LeaseStoreError> {
        let mut tables = self.tables("UpdateItem");
        let lease = tables
            .leases
            .get_mut(&seen.key)
            .filter(|lease| lease.counter == seen.counter)
            .ok_or_else(|| LeaseStoreError::lost(&seen.key))?;
        lease.checkpoint = checkpoint.clone();
        lease.pending_checkpoint = None;
        lease.pending_checkpoint_state = None;
        // Stored as DynamoDB stores it: whole milliseconds.
        lease.start_timestamp = start_timestamp.map(|at| {
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(crate::dynamodb::item::epoch_millis(at))
        });
        lease.counter += 1;
        if clear_owner {
            lease.owner = None;
            lease.checkpoint_owner = None;
        }
        Ok(lease.clone())
    }

    async fn heartbeat(&self, heartbeat: &WorkerHeartbeat) -> Result<(), LeaseStoreError> {
        let mut tables = self.tables("UpdateItem");
        match tables.heartbeats.get(&heartbeat.worker) {
            Some(stored) if stored.beat >= heartbeat.beat => {
                Err(LeaseStoreError::HeartbeatSuperseded {
                    worker: heartbeat.worker.clone(),
                    stored: stored.beat,
                })
            }
            _ => {
                let (evicted, offered) = tables
                    .heartbeats
                    .get(&heartbeat.worker)
                    .map(|stored| (stored.evicted, stored.offered.clone()))
                    .unwrap_or_default();
                let written = WorkerHeartbeat {
                    written_at: Some(SystemTime::now()),
                    evicted,
                    offered,
                    ..heartbeat.clone()
                };
                tables.heartbeats.insert(heartbeat.worker.clone(), written);
                Ok(())
            }
        }
    }

    async fn list_heartbeats(&self) -> Result<Vec<WorkerHeartbeat>, LeaseStoreError> {
        Ok(self.tables("Scan").heartbeats.values().cloned().collect())
    }

    async fn get_heartbeat(
        &self,
        worker: &str,
    ) -> Result<Option<WorkerHeartbeat>, LeaseStoreError> {
        Ok(self.tables("GetItem").heartbeats.get(worker).cloned())
    }

    async fn offer_leases(
        &self,
        worker: &str,
        keys: &BTreeSet<String>,
    ) -> Result<bool, LeaseStoreError> {
        let mut tables = self.tables("UpdateItem");
        Ok(match tables.heartbeats.get_mut(worker) {
            Some(stored) => {
                stored.offered.extend(keys.iter().cloned());
                true
            }
            None => false,
        })
    }

    async fn clear_offers(
        &self,
        worker: &str,
        keys: &BTreeSet<String>,
    ) -> Result<(), LeaseStoreError> {
        let mut tables = self.tables("UpdateItem");
        if let Some(stored) = tables.heartbeats.get_mut(worker) {
            stored.offered.retain(|key| !keys.contains(key));
        }
        Ok(())
    }

    async fn request_eviction(&self, worker: &str, evict: bool) -> Result<bool, LeaseStoreError> {
        let mut tables = self.tables("UpdateItem");
        Ok(match tables.heartbeats.get_mut(worker) {
            Some(stored) => {
                stored.evicted = evict;
                true
            }
            None => false,
        })
    }

    async fn remove_heartbeat(
        &self,
        worker: &str,
        beat: Option<u64>,
    ) -> Result<bool, LeaseStoreError> {
        let mut tables = self.tables("DeleteItem");
        let matches = tables
            .heartbeats
            .get(worker)
            .is_some_and(|stored| beat.is_none_or(|beat| stored.beat == beat));
        if matches {
            tables.heartbeats.remove(worker);
        }
        Ok(matches)
    }

    fn request_counts(&self) -> RequestCounts {
        self.requests.snapshot()
    }
}
