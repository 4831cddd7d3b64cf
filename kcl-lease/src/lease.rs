//! The lease: who processes a shard and how far it has been checkpointed.

use std::collections::BTreeSet;
use std::time::SystemTime;

use kcl_checkpoint::{CheckpointUpdate, ExtendedSequenceNumber};

use crate::StreamIdentifier;

/// One shard's lease, as stored in the lease table (one item per shard, in
/// the Java KCL's format; see [`crate::dynamodb::item`] for the attribute
/// names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The lease key (`leaseKey`, the table's hash key): the shard id, or
    /// for a lease of a multi-stream application `account:stream:epoch:
    /// shardId` (see [`stream`](Self::stream)).
    pub key: String,
    /// The stream of a multi-stream application's lease (`streamName`,
    /// with the shard id in `shardId`, as the Java KCL writes them); `None`
    /// for an application of one stream.
    pub stream: Option<StreamIdentifier>,
    /// The worker the lease is assigned to (`leaseOwner`); `None` when free.
    /// During a handoff this is already the receiving worker.
    pub owner: Option<String>,
    /// Grows by one on every change of ownership (take, handoff completion,
    /// release). Ownership-dependent writes are conditional on it, so a
    /// worker holding an old value can change nothing (`leaseCounter`).
    pub counter: u64,
    /// How far the shard has been processed (`checkpoint` and
    /// `checkpointSubSequenceNumber`).
    pub checkpoint: ExtendedSequenceNumber,
    /// A checkpoint the processor prepared but has not committed
    /// (`pendingCheckpoint`, `pendingCheckpointSubSequenceNumber`).
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// Application state stored with the pending checkpoint
    /// (`pendingCheckpointState`, binary).
    pub pending_checkpoint_state: Option<Vec<u8>>,
    /// How many times the lease changed hands since the last checkpoint
    /// (`ownerSwitchesSinceCheckpoint`).
    pub owner_switches_since_checkpoint: u64,
    /// The shards this one was split or merged from (`parentShardId`, a
    /// string set: two ids for a merge).
    pub parent_shard_ids: BTreeSet<String>,
    /// The shards this one was split or merged into (`childShardIds`).
    pub child_shard_ids: BTreeSet<String>,
    /// The shard's hash key range (`startingHashKey`, `endingHashKey`).
    pub hash_key_range: Option<HashKeyRange>,
    /// Set while a graceful handoff is under way (`checkpointOwner`): the
    /// worker that still processes the shard and must checkpoint and release
    /// it, while [`owner`](Self::owner) names the worker that receives it.
    pub checkpoint_owner: Option<String>,
    /// Where reading began for a lease whose checkpoint is still `LATEST`
    /// or `AT_TIMESTAMP` (`startingTimestampMillis`, this project's own
    /// attribute): recorded by the first reader before it reads, so every
    /// later reader (after a restart, a handoff, a processor panic) starts
    /// at the same moment and nothing written since is skipped. The Java KCL
    /// ignores it and starts such a lease at its own initial position.
    pub start_timestamp: Option<SystemTime>,
}

impl Lease {
    /// A new, unowned lease for `key` that starts at `checkpoint`.
    pub fn new(key: impl Into<String>, checkpoint: ExtendedSequenceNumber) -> Self {
        Self {
            key: key.into(),
            stream: None,
            owner: None,
            counter: 0,
            checkpoint,
            pending_checkpoint: None,
            pending_checkpoint_state: None,
            owner_switches_since_checkpoint: 0,
            parent_shard_ids: BTreeSet::new(),
            child_shard_ids: BTreeSet::new(),
            hash_key_range: None,
            checkpoint_owner: None,
            start_timestamp: None,
        }
    }

    /// A new, unowned lease for `shard_id` of `stream` (keyed as a
    /// multi-stream application keys it), or of the application's one
    /// stream when `stream` is `None`.
    pub fn for_shard(
        stream: Option<&StreamIdentifier>,
        shard_id: &str,
        checkpoint: ExtendedSequenceNumber,
    ) -> Self {
        match stream {
            None => Self::new(shard_id, checkpoint),
            Some(stream) => Self {
                stream: Some(stream.clone()),
                ..Self::new(stream.lease_key(shard_id), checkpoint)
            },
        }
    }

    /// The shard id: the key, or its last part for a lease of a
    /// multi-stream application.
    pub fn shard_id(&self) -> &str {
        // A multi-stream key is `account:stream:epoch:shardId`, and shard
        // ids hold no `:` (the key is checked when the lease is read).
        match &self.stream {
            Some(_) => self
                .key
                .rsplit_once(':')
                .map_or(self.key.as_str(), |(_, shard)| shard),
            None => &self.key,
        }
    }

    /// The lease key of `shard_id` of the same stream (a parent's or a
    /// child's).
    pub fn key_of(&self, shard_id: &str) -> String {
        match &self.stream {
            Some(stream) => stream.lease_key(shard_id),
            None => shard_id.to_owned(),
        }
    }

    /// The worker that processes the shard now: the handing-over worker while
    /// a handoff is under way, otherwise the owner.
    pub fn processing_owner(&self) -> Option<&str> {
        self.checkpoint_owner.as_deref().or(self.owner.as_deref())
    }

    /// The checkpoint, pending checkpoint and state stored on the lease, as
    /// a checkpointer resumes from them.
    pub fn stored_checkpoint(&self) -> CheckpointUpdate {
        CheckpointUpdate {
            checkpoint: self.checkpoint.clone(),
            pending_checkpoint: self.pending_checkpoint.clone(),
            pending_checkpoint_state: self.pending_checkpoint_state.clone(),
        }
    }

    /// Whether `token` still processes this lease: same counter, and its
    /// worker is the processing owner.
    pub fn is_held_by(&self, token: &LeaseToken) -> bool {
        self.counter == token.counter && self.processing_owner() == Some(token.worker.as_str())
    }

    /// Whether a graceful handoff has been asked for and not yet completed.
    pub fn handoff_in_progress(&self) -> bool {
        self.checkpoint_owner.is_some()
    }

    /// Whether the shard has been read to its end and checkpointed there.
    pub fn is_finished(&self) -> bool {
        self.checkpoint == ExtendedSequenceNumber::ShardEnd
    }

    /// Whether processing of the shard has begun: the checkpoint is a record
    /// or `SHARD_END`. A child shard only begins once its parents are
    /// finished, so a started lease proves that every ancestor was read to
    /// its end.
    pub fn has_started(&self) -> bool {
        matches!(
            self.checkpoint,
            ExtendedSequenceNumber::Record { .. } | ExtendedSequenceNumber::ShardEnd
        )
    }

    /// The fencing token a worker that processes this lease writes with.
    pub fn token(&self) -> Option<LeaseToken> {
        Some(LeaseToken {
            key: self.key.clone(),
            worker: self.processing_owner()?.to_owned(),
            counter: self.counter,
        })
    }
}

/// What a worker that processes a lease holds: every write it makes is
/// conditional on the lease still being processed by `worker` at `counter`,
/// so after the lease moved on, the write fails with
/// [`LeaseStoreError::LeaseLost`](crate::LeaseStoreError::LeaseLost) and
/// changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseToken {
    /// The lease key (the shard id, or `account:stream:epoch:shardId` in a
    /// multi-stream table).
    pub key: String,
    /// The worker processing it.
    pub worker: String,
    /// The lease counter when the worker got it.
    pub counter: u64,
}

/// A shard's range of partition-key hashes, both ends included (hash keys are
/// 128-bit unsigned integers, stored as decimal strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashKeyRange {
    /// The lowest hash key of the shard.
    pub start: u128,
    /// The highest hash key of the shard.
    pub end: u128,
}
