//! The lease store: every operation a worker makes on the lease table and
//! the workers table ([`LeaseStore`]), with its two implementations of the
//! same semantics: [`dynamodb`] and the in-memory one in `memory` (for
//! tests and simulations), held to each other by the conformance suite.

pub mod dynamodb;
#[cfg(any(test, feature = "test-util"))]
pub(crate) mod memory;
mod requests;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
pub use kcl_checkpoint::CheckpointUpdate;

pub use requests::{RequestCounter, RequestCounts, WRITE_OPERATIONS, write_requests};

use crate::{Lease, LeaseStoreError, LeaseTableListing, LeaseToken};

/// A worker's liveness signal as stored in the workers table. Other workers
/// judge it alive while its value keeps changing, by their own clocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerHeartbeat {
    /// The worker's id.
    pub worker: String,
    /// A value no earlier heartbeat write of this worker id carried, by any
    /// process: a store only ever moves it forward (see
    /// [`LeaseStore::heartbeat`]).
    pub beat: u64,
    /// The worker is stopping: it takes no leases and hands its leases to
    /// whoever asks (the assignment plans to move all of them).
    pub draining: bool,
    /// The failover time the worker runs with; others judge it by the
    /// larger of theirs and this. `None` when the item does not say.
    pub failover_time: Option<Duration>,
    /// The streams a worker of a multi-stream application consumes (their
    /// identifiers, `account:stream:epoch`); `None` for a worker of an
    /// application of one stream. Workers plan leases only with workers of
    /// the same streams, and a stream some live worker announces is never
    /// cleaned up as a former stream.
    pub streams: Option<BTreeSet<String>>,
    /// When the heartbeat was written, by the writing worker's wall clock:
    /// for operators (the age `kcl-admin status` shows), never compared by
    /// workers. Set by the store when it writes (ignored in the heartbeat
    /// given to [`LeaseStore::heartbeat`]); `None` when the item does not
    /// say.
    pub written_at: Option<SystemTime>,
    /// An operator asked the worker to hand all its leases over without
    /// stopping ([`LeaseStore::request_eviction`]); kept by the store across
    /// the worker's heartbeats (ignored in the heartbeat given to
    /// [`LeaseStore::heartbeat`]).
    pub evicted: bool,
    /// The shards the worker reports stalled (a processor call or reads
    /// that have not returned for its stall time): shard ids, as
    /// `stream/shard` in a multi-stream application. For operators.
    pub stalled_shards: BTreeSet<String>,
    /// Leases a stopping worker handed to this one (it wrote the handoff
    /// request on this worker's behalf, [`LeaseStore::offer_leases`]) that
    /// this worker has not yet taken note of: it watches its own item for
    /// them and starts each lease as soon as it is released. Kept by the
    /// store across the worker's heartbeats (ignored in the heartbeat given
    /// to [`LeaseStore::heartbeat`]).
    pub offered: BTreeSet<String>,
}

/// The lease table and the workers table, with the semantics every
/// implementation keeps (checked by the conformance suite,
/// `kcl_lease::conformance`, feature `test-util`):
///
/// - Writes that depend on ownership are conditional: a take or handoff
///   request on the lease as the caller saw it, a checkpoint or release on
///   the caller's [`LeaseToken`]. If the lease changed, nothing is written
///   and the call fails with [`LeaseStoreError::LeaseLost`]. Of two workers
///   taking the same lease at once, exactly one wins.
/// - The lease counter only grows: by one on every change of ownership. A
///   checkpoint does not change it.
/// - Reads are strongly consistent.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Creates the lease and workers tables if absent (on-demand billing) and
    /// waits until they are active.
    async fn ensure_tables(&self) -> Result<(), LeaseStoreError>;

    /// Every item of the lease table: the leases, and the items that are not
    /// leases this worker uses (see [`crate::listing`]), which are reported
    /// (logged once, counted) and never written. An unreadable item does not
    /// fail the scan.
    async fn list_table(&self) -> Result<LeaseTableListing, LeaseStoreError>;

    /// Every lease in the table (the leases of [`list_table`](Self::list_table)).
    async fn list_leases(&self) -> Result<Vec<Lease>, LeaseStoreError> {
        Ok(self.list_table().await?.leases)
    }

    /// One lease, or `None` if it does not exist.
    async fn get_lease(&self, key: &str) -> Result<Option<Lease>, LeaseStoreError>;

    /// Creates `lease` unless a lease with its key exists. Returns whether it
    /// was created; an existing lease is left as it is.
    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError>;

    /// Makes `worker` the owner of the lease, if it is still as `seen` (same
    /// counter, owner and handoff marker). Clears any handoff marker, adds one
    /// to the counter, and counts an owner switch if the processing owner
    /// changes. Returns the lease as written.
    async fn take_lease(&self, seen: &Lease, worker: &str) -> Result<Lease, LeaseStoreError>;

    /// Asks the lease's processing owner to hand it over to `to`: sets the
    /// owner to `to` and the handoff marker (`checkpointOwner`) to the
    /// current owner, if the lease is still as `seen` and not already being
    /// handed over. The counter does not change, so the current owner can
    /// still checkpoint before it [releases](Self::release_lease).
    async fn request_handoff(&self, seen: &Lease, to: &str) -> Result<Lease, LeaseStoreError>;

    /// Writes a checkpoint, if `token` still processes the lease, and only
    /// forward: if the stored checkpoint is already past
    /// `update.checkpoint` (a write whose answer was lost stored it), it
    /// stays, and only the pending fields of `update` are written, unless
    /// the pending checkpoint is not past it either (then none is stored;
    /// see [`CheckpointUpdate::on_top_of`]). Resets the owner-switch count.
    /// Returns the checkpoint, pending checkpoint and state stored
    /// afterwards.
    ///
    /// `previous` is the checkpoint and pending checkpoint the caller
    /// believes stored (the last ones it wrote, or the ones it read with the
    /// lease; the state is not compared). A store whose requests may land
    /// late (a request retried after a timeout can still be applied after
    /// its retry, and after later writes) makes each request conditional on
    /// them, so a late request changes nothing; when the guess is wrong (a
    /// write whose answer was lost did take effect), it reads the lease and
    /// tries again from what it finds.
    async fn checkpoint(
        &self,
        token: &LeaseToken,
        previous: &CheckpointUpdate,
        update: &CheckpointUpdate,
    ) -> Result<CheckpointUpdate, LeaseStoreError>;

    /// Records where reading began ([`Lease::start_timestamp`]), if `token`
    /// still processes the lease. A moment recorded before (by an earlier
    /// reader) is kept. Returns the moment stored.
    async fn record_start_timestamp(
        &self,
        token: &LeaseToken,
        at: SystemTime,
    ) -> Result<SystemTime, LeaseStoreError>;

    /// Records the shards a finished shard was split or merged into
    /// (`childShardIds`), if `token` still processes it. Adds to any ids
    /// already recorded; an empty set changes nothing.
    async fn record_child_shards(
        &self,
        token: &LeaseToken,
        children: &BTreeSet<String>,
    ) -> Result<(), LeaseStoreError>;

    /// Gives the lease up, if `token` still processes it. During a handoff
    /// this completes it (the receiving owner stays and starts); otherwise the
    /// lease becomes unowned. Adds one to the counter either way.
    async fn release_lease(&self, token: &LeaseToken) -> Result<(), LeaseStoreError>;

    /// Gives the lease up to no one, if `token` still processes it, even
    /// during a handoff (whose receiver has stopped or is stopping): the
    /// lease becomes unowned, without a handoff marker, for any worker to
    /// take. Adds one to the counter.
    async fn release_lease_unowned(&self, token: &LeaseToken) -> Result<(), LeaseStoreError>;

    /// Deletes a lease (a finished shard's, or a former stream's, during
    /// cleanup), if it is still as `seen` (same counter): a lease that was
    /// taken or [reset](Self::reset_checkpoint) since it was judged
    /// cleanable stays, and the call fails with
    /// [`LeaseStoreError::LeaseLost`]. A lease already gone is not an error.
    async fn delete_lease(&self, seen: &Lease) -> Result<(), LeaseStoreError>;

    /// Moves the lease's position (an operator's reset), if it is still as
    /// `seen` (same counter): the checkpoint becomes `checkpoint` and the
    /// start timestamp `start_timestamp` (removed when `None`); the pending
    /// checkpoint and its state are removed; and the counter grows by one,
    /// so the worker that processes the lease can no longer checkpoint or
    /// release it with its token, and starts over from the new position
    /// once its coordinator publishes the new token. The owner and any
    /// handoff marker stay, so no other worker starts processing the lease
    /// because of a reset, unless `clear_owner` (for a lease whose owner has
    /// no heartbeat: stopped or crashed): then both are removed and the next
    /// assignment round gives the lease to a live worker. Returns the lease
    /// as written.
    async fn reset_checkpoint(
        &self,
        seen: &Lease,
        checkpoint: &kcl_checkpoint::ExtendedSequenceNumber,
        start_timestamp: Option<SystemTime>,
        clear_owner: bool,
    ) -> Result<Lease, LeaseStoreError>;

    /// Records a heartbeat, if its value is larger than the one stored (or
    /// none is). Values never move back, so no two writes that take effect
    /// leave the same value, even when one is retried after it took effect
    /// but reported an error, or arrives late. When the stored value is not
    /// lower (a later write, another process with this worker id, or an
    /// earlier attempt of this very write whose answer was lost), nothing
    /// is written and the call fails with
    /// [`LeaseStoreError::HeartbeatSuperseded`], naming the stored value:
    /// the next heartbeat goes above it.
    async fn heartbeat(&self, heartbeat: &WorkerHeartbeat) -> Result<(), LeaseStoreError>;

    /// Every worker's last heartbeat.
    async fn list_heartbeats(&self) -> Result<Vec<WorkerHeartbeat>, LeaseStoreError>;

    /// One worker's heartbeat item, or `None` if it has none. Each worker
    /// reads its own item often (one small read), to learn of leases handed
    /// to it and of an operator's eviction.
    async fn get_heartbeat(&self, worker: &str)
    -> Result<Option<WorkerHeartbeat>, LeaseStoreError>;

    /// Tells `worker` that the leases `keys` were handed to it (a stopping
    /// worker asked for their handoff on its behalf) by adding them to its
    /// heartbeat item's [offers](WorkerHeartbeat::offered), which its
    /// heartbeats keep. Returns whether the worker has a heartbeat (nothing
    /// is written for one that has none).
    async fn offer_leases(
        &self,
        worker: &str,
        keys: &BTreeSet<String>,
    ) -> Result<bool, LeaseStoreError>;

    /// Removes `keys` from `worker`'s [offers](WorkerHeartbeat::offered),
    /// once it has taken note of them. Nothing is written for a worker
    /// without a heartbeat.
    async fn clear_offers(
        &self,
        worker: &str,
        keys: &BTreeSet<String>,
    ) -> Result<(), LeaseStoreError>;

    /// Asks `worker` to hand all its leases over and take none, without
    /// stopping (`evict`), or to take leases again (`!evict`), by marking
    /// its heartbeat item; later heartbeats keep the mark. Returns whether
    /// the worker has a heartbeat (nothing is written for one that has
    /// none).
    async fn request_eviction(&self, worker: &str, evict: bool) -> Result<bool, LeaseStoreError>;

    /// Removes a worker's heartbeat, so the others stop counting it at once:
    /// when `beat` is given, only if the stored value is still that one (an
    /// observer removing a worker it judged dead must not remove the
    /// heartbeat of a worker that came back). Returns whether an item was
    /// removed.
    async fn remove_heartbeat(
        &self,
        worker: &str,
        beat: Option<u64>,
    ) -> Result<bool, LeaseStoreError>;

    /// How many requests this store has sent, by operation.
    fn request_counts(&self) -> RequestCounts;
}
