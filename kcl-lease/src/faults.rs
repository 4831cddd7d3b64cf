//! A lease store that injects faults into the calls of one client of
//! another store: for tests and simulations of what a worker does when its
//! tables misbehave while the rest of the fleet's do not.
//!
//! - [`FaultControl::stall`]: every call hangs, unanswered, until
//!   [`resume`](FaultControl::resume) (a network partition that drops
//!   packets); a call still awaited then goes on.
//! - [`FaultControl::apply_then_fail`]: the next writes take effect, then
//!   report an error, as DynamoDB documents for a 500 (an answer lost on the
//!   way back).
//! - [`FaultControl::lose`]: the next writes fail without taking effect.
//!
//! Faults can be limited to some [`Call`]s (say, heartbeats only).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use kcl_checkpoint::ExtendedSequenceNumber;
use tokio::sync::watch;

use crate::store::{CheckpointUpdate, LeaseStore, RequestCounts, WorkerHeartbeat};
use crate::{Lease, LeaseStoreError, LeaseToken};

/// A [`LeaseStore`] call, for aiming faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Call {
    /// [`LeaseStore::ensure_tables`].
    EnsureTables,
    /// [`LeaseStore::list_table`] (which [`LeaseStore::list_leases`]
    /// calls).
    ListTable,
    /// [`LeaseStore::get_lease`].
    GetLease,
    /// [`LeaseStore::create_lease_if_absent`].
    CreateLease,
    /// [`LeaseStore::take_lease`].
    TakeLease,
    /// [`LeaseStore::request_handoff`].
    RequestHandoff,
    /// [`LeaseStore::checkpoint`].
    Checkpoint,
    /// [`LeaseStore::record_child_shards`].
    RecordChildShards,
    /// [`LeaseStore::record_start_timestamp`].
    RecordStartTimestamp,
    /// [`LeaseStore::release_lease`].
    ReleaseLease,
    /// [`LeaseStore::delete_lease`].
    DeleteLease,
    /// [`LeaseStore::reset_checkpoint`].
    ResetCheckpoint,
    /// [`LeaseStore::request_eviction`].
    RequestEviction,
    /// [`LeaseStore::heartbeat`].
    Heartbeat,
    /// [`LeaseStore::list_heartbeats`].
    ListHeartbeats,
    /// [`LeaseStore::remove_heartbeat`].
    RemoveHeartbeat,
    /// [`LeaseStore::get_heartbeat`].
    GetHeartbeat,
    /// [`LeaseStore::release_lease_unowned`].
    ReleaseLeaseUnowned,
    /// [`LeaseStore::offer_leases`].
    OfferLeases,
    /// [`LeaseStore::clear_offers`].
    ClearOffers,
}

impl Call {
    /// Whether the call writes.
    pub fn is_write(self) -> bool {
        !matches!(
            self,
            Self::EnsureTables
                | Self::ListTable
                | Self::GetLease
                | Self::ListHeartbeats
                | Self::GetHeartbeat
        )
    }
}

#[derive(Debug, Default)]
struct Plan {
    /// Calls the faults apply to; all when empty.
    only: BTreeSet<Call>,
    apply_then_fail: u32,
    lose: u32,
    /// Writes that took effect and reported an error, by call.
    applied_and_failed: Vec<Call>,
    /// Writes that failed without taking effect.
    lost: u64,
    /// Every call made, by kind.
    calls: std::collections::BTreeMap<Call, u64>,
}

/// Sets the faults of a [`FaultyStore`]. Cheap to clone; clones steer the
/// same store.
#[derive(Clone, Debug)]
pub struct FaultControl {
    plan: Arc<Mutex<Plan>>,
    stalled: Arc<watch::Sender<bool>>,
}

impl Default for FaultControl {
    fn default() -> Self {
        Self {
            plan: Arc::default(),
            stalled: Arc::new(watch::channel(false).0),
        }
    }
}

impl FaultControl {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.plan
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Aims the faults (stalls too) at `calls` only (all calls when empty).
    pub fn only(&self, calls: &[Call]) {
        self.plan().only = calls.iter().copied().collect();
    }

    /// Makes every call hang until [`resume`](Self::resume).
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Ends a stall: calls still awaited go on.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// Whether calls hang now.
    pub fn is_stalled(&self) -> bool {
        *self.stalled.borrow()
    }

    /// The next `writes` writes take effect, then report an error.
    pub fn apply_then_fail(&self, writes: u32) {
        self.plan().apply_then_fail = writes;
    }

    /// The next `writes` writes fail without taking effect.
    pub fn lose(&self, writes: u32) {
        self.plan().lose = writes;
    }

    /// How many calls of `call` were made so far (stalled and failed ones
    /// included).
    pub fn calls(&self, call: Call) -> u64 {
        self.plan().calls.get(&call).copied().unwrap_or(0)
    }

    /// How many writes failed without taking effect so far.
    pub fn lost(&self) -> u64 {
        self.plan().lost
    }

    /// The writes that took effect and reported an error so far.
    pub fn applied_and_failed(&self) -> Vec<Call> {
        self.plan().applied_and_failed.clone()
    }

    /// Waits while calls like `call` are stalled.
    async fn gate(&self, call: Call) {
        if !self.aimed_at(call) {
            return;
        }
        let mut stalled = self.stalled.subscribe();
        let _ = stalled.wait_for(|stalled| !*stalled).await;
    }

    /// Whether the faults apply to `call`.
    fn aimed_at(&self, call: Call) -> bool {
        let plan = self.plan();
        plan.only.is_empty() || plan.only.contains(&call)
    }

    /// What to do with `call`: `Ok(true)` forward and report the answer,
    /// `Ok(false)` forward and then report a failure, `Err` fail at once.
    fn decide(&self, call: Call) -> Result<bool, LeaseStoreError> {
        let mut plan = self.plan();
        if !call.is_write() || !(plan.only.is_empty() || plan.only.contains(&call)) {
            return Ok(true);
        }
        if plan.lose > 0 {
            plan.lose -= 1;
            plan.lost += 1;
            return Err(injected(call, "lost before it reached the table"));
        }
        if plan.apply_then_fail > 0 {
            plan.apply_then_fail -= 1;
            plan.applied_and_failed.push(call);
            return Ok(false);
        }
        Ok(true)
    }
}

fn injected(call: Call, what: &str) -> LeaseStoreError {
    LeaseStoreError::Unavailable {
        operation: "injected fault",
        table: format!("{call:?}"),
        attempts: 1,
        message: what.to_owned(),
    }
}

/// A client of `inner` whose calls suffer the faults its [`FaultControl`]
/// sets.
pub struct FaultyStore<S: ?Sized> {
    inner: Arc<S>,
    control: FaultControl,
}

impl<S: LeaseStore + ?Sized> FaultyStore<S> {
    /// A faulty client of `inner`, steered by the returned control.
    pub fn new(inner: Arc<S>) -> (Self, FaultControl) {
        let control = FaultControl::default();
        let store = Self {
            inner,
            control: control.clone(),
        };
        (store, control)
    }

    async fn call<T, F>(&self, call: Call, run: F) -> Result<T, LeaseStoreError>
    where
        F: Future<Output = Result<T, LeaseStoreError>>,
    {
        *self.control.plan().calls.entry(call).or_default() += 1;
        self.control.gate(call).await;
        let report = self.control.decide(call)?;
        let result = run.await;
        if report {
            result
        } else {
            result.and(Err(injected(call, "took effect, then the answer was lost")))
        }
    }
}

#[async_trait]
impl<S: LeaseStore + ?Sized> LeaseStore for FaultyStore<S> {
    async fn ensure_tables(&self) -> Result<(), LeaseStoreError> {
        self.call(Call::EnsureTables, self.inner.ensure_tables())
            .await
    }
    async fn list_table(&self) -> Result<crate::LeaseTableListing, LeaseStoreError> {
        self.call(Call::ListTable, self.inner.list_table()).await
    }
    async fn get_lease(&self, key: &str) -> Result<Option<Lease>, LeaseStoreError> {
        self.call(Call::GetLease, self.inner.get_lease(key)).await
    }
    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError> {
        self.call(Call::CreateLease, self.inner.create_lease_if_absent(lease))
            .await
    }
    async fn take_lease(&self, seen: &Lease, worker: &str) -> Result<Lease, LeaseStoreError> {
        self.call(Call::TakeLease, self.inner.take_lease(seen, worker))
            .await
    }
    async fn request_handoff(&self, seen: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        self.call(Call::RequestHandoff, self.inner.request_handoff(seen, to))
            .await
    }
    async fn checkpoint(
        &self,
        token: &LeaseToken,
        previous: &CheckpointUpdate,
        update: &CheckpointUpdate,
    ) -> Result<CheckpointUpdate, LeaseStoreError> {
        let run = self.inner.checkpoint(token, previous, update);
        self.call(Call::Checkpoint, run).await
    }
    async fn record_start_timestamp(
        &self,
        token: &LeaseToken,
        at: std::time::SystemTime,
    ) -> Result<std::time::SystemTime, LeaseStoreError> {
        let run = self.inner.record_start_timestamp(token, at);
        self.call(Call::RecordStartTimestamp, run).await
    }
    async fn record_child_shards(
        &self,
        token: &LeaseToken,
        children: &BTreeSet<String>,
    ) -> Result<(), LeaseStoreError> {
        let run = self.inner.record_child_shards(token, children);
        self.call(Call::RecordChildShards, run).await
    }
    async fn release_lease(&self, token: &LeaseToken) -> Result<(), LeaseStoreError> {
        self.call(Call::ReleaseLease, self.inner.release_lease(token))
            .await
    }
    async fn delete_lease(&self, seen: &Lease) -> Result<(), LeaseStoreError> {
        self.call(Call::DeleteLease, self.inner.delete_lease(seen))
            .await
    }
    async fn reset_checkpoint(
        &self,
        seen: &Lease,
        checkpoint: &ExtendedSequenceNumber,
        start_timestamp: Option<SystemTime>,
        clear_owner: bool,
    ) -> Result<Lease, LeaseStoreError> {
        self.call(
            Call::ResetCheckpoint,
            self.inner
                .reset_checkpoint(seen, checkpoint, start_timestamp, clear_owner),
        )
        .await
    }
    async fn request_eviction(&self, worker: &str, evict: bool) -> Result<bool, LeaseStoreError> {
        self.call(
            Call::RequestEviction,
            self.inner.request_eviction(worker, evict),
        )
        .await
    }
    async fn heartbeat(&self, heartbeat: &WorkerHeartbeat) -> Result<(), LeaseStoreError> {
        self.call(Call::Heartbeat, self.inner.heartbeat(heartbeat))
            .await
    }
    async fn list_heartbeats(&self) -> Result<Vec<WorkerHeartbeat>, LeaseStoreError> {
        self.call(Call::ListHeartbeats, self.inner.list_heartbeats())
            .await
    }
    async fn release_lease_unowned(&self, token: &LeaseToken) -> Result<(), LeaseStoreError> {
        self.call(
            Call::ReleaseLeaseUnowned,
            self.inner.release_lease_unowned(token),
        )
        .await
    }
    async fn get_heartbeat(
        &self,
        worker: &str,
    ) -> Result<Option<WorkerHeartbeat>, LeaseStoreError> {
        self.call(Call::GetHeartbeat, self.inner.get_heartbeat(worker))
            .await
    }
    async fn offer_leases(
        &self,
        worker: &str,
        keys: &BTreeSet<String>,
    ) -> Result<bool, LeaseStoreError> {
        self.call(Call::OfferLeases, self.inner.offer_leases(worker, keys))
            .await
    }
    async fn clear_offers(
        &self,
        worker: &str,
        keys: &BTreeSet<String>,
    ) -> Result<(), LeaseStoreError> {
        self.call(Call::ClearOffers, self.inner.clear_offers(worker, keys))
            .await
    }
    async fn remove_heartbeat(
        &self,
        worker: &str,
        beat: Option<u64>,
    ) -> Result<bool, LeaseStoreError> {
        self.call(
            Call::RemoveHeartbeat,
            self.inner.remove_heartbeat(worker, beat),
        )
        .await
    }
    fn request_counts(&self) -> RequestCounts {
        self.inner.request_counts()
    }
}
