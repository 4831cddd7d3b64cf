//! The checkpointer handed to record processors.
//!
//! A [`CheckpointTracker`] belongs to the framework's shard consumer: it
//! learns which positions have been delivered to the processor and hands out
//! [`Checkpointer`]s. The processor checkpoints through those; every request
//! is [validated](crate::validate_checkpoint) against what was delivered and
//! what was checkpointed before, then written through a [`CheckpointWriter`]
//! (the lease table, fenced by the lease). Writes are serialized, so the
//! stored checkpoint never moves backwards even when a processor checkpoints
//! from several tasks at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{
    CheckpointUpdate, CheckpointWriteError, CheckpointWriter, ExtendedSequenceNumber,
    InvalidCheckpoint, SequenceNumberError, validate_checkpoint,
};

/// Why a checkpoint was not written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The position is not allowed (behind the last checkpoint the
    /// processor was answered, past the last record delivered, or not a
    /// record position). A bug in the processor: nothing was written.
    #[error("checkpoint refused for shard {shard_id}: {reason}")]
    Invalid {
        /// The shard.
        shard_id: String,
        /// What is wrong with the position.
        reason: InvalidCheckpoint,
    },
    /// The sequence number given is not a valid Kinesis sequence number.
    #[error("checkpoint refused for shard {shard_id}: {reason}")]
    SequenceNumber {
        /// The shard.
        shard_id: String,
        /// What is wrong with it.
        reason: SequenceNumberError,
    },
    /// Another worker holds the shard's lease now. Stop processing the shard:
    /// the other worker continues from the last stored checkpoint.
    #[error(
        "the lease on shard {shard_id} was lost; stop processing it, another worker \
         continues from its last checkpoint"
    )]
    LeaseLost {
        /// The shard.
        shard_id: String,
    },
    /// The lease table did not confirm the write, even after retrying with
    /// backoff. The write may still have taken effect (its answer was
    /// lost); the checkpoint may be tried again later, and a later write
    /// finds out.
    #[error("checkpoint of shard {shard_id} could not be stored: {message}")]
    Unavailable {
        /// The shard.
        shard_id: String,
        /// The store's last error.
        message: String,
    },
}

impl CheckpointError {
    /// Whether the lease was lost (see [`CheckpointError::LeaseLost`]).
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Self::LeaseLost { .. })
    }
}

/// How far a shard has been delivered and checkpointed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointProgress {
    /// The last checkpoint stored (or read from the lease).
    pub checkpoint: ExtendedSequenceNumber,
    /// The pending (prepared) checkpoint stored, if any.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// The application state stored with the pending checkpoint.
    pub pending_checkpoint_state: Option<Vec<u8>>,
    /// The furthest checkpoint the processor asked for and was answered
    /// (or, after a start or restart, the checkpoint it resumed from). A
    /// request behind it is a bug in the processor and is refused. It is
    /// behind `checkpoint` only when a write whose answer was lost stored a
    /// later checkpoint; requests between the two are already covered.
    pub acknowledged: ExtendedSequenceNumber,
    /// The furthest position delivered to the processor: the last record
    /// given to it, or `SHARD_END` once it has been told the shard ended.
    pub last_delivered: ExtendedSequenceNumber,
    /// A write found the lease lost.
    pub lease_lost: bool,
    /// The tracker was dropped (its shard consumer ended): checkpointers
    /// still held by the processor write nothing more.
    pub closed: bool,
    /// How many checkpoints were written.
    pub writes: u64,
}

/// What a shard's tracker and its checkpointers share.
struct Shared {
    /// The shard, for errors and logs.
    shard_id: String,
    /// Where the checkpoints go (the lease, fenced).
    writer: Arc<dyn CheckpointWriter>,
    /// Which processor the checkpointers handed out now belong to; one
    /// from an earlier (replaced) processor writes nothing.
    generation: AtomicU64,
    /// What was delivered and what was checkpointed so far.
    progress: Mutex<CheckpointProgress>,
    /// Held across each write so writes reach the store in order.
    write_order: tokio::sync::Mutex<()>,
}

impl Shared {
    fn progress(&self) -> MutexGuard<'_, CheckpointProgress> {
        // Updates are single assignments; a panic elsewhere cannot leave the
        // progress half-written.
        self.progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The framework's side of a shard's checkpoints: records what was delivered
/// and hands out [`Checkpointer`]s for the processor.
pub struct CheckpointTracker {
    /// Shared with every checkpointer handed out.
    shared: Arc<Shared>,
}

impl CheckpointTracker {
    /// A tracker for `shard_id`, resuming from what the lease holds
    /// (`stored`: its checkpoint, pending checkpoint and state), writing
    /// through `writer`.
    pub fn new(
        shard_id: impl Into<String>,
        writer: Arc<dyn CheckpointWriter>,
        stored: CheckpointUpdate,
    ) -> Self {
        let progress = CheckpointProgress {
            last_delivered: stored.checkpoint.clone(),
            acknowledged: stored.checkpoint.clone(),
            checkpoint: stored.checkpoint,
            pending_checkpoint: stored.pending_checkpoint,
            pending_checkpoint_state: stored.pending_checkpoint_state,
            lease_lost: false,
            closed: false,
            writes: 0,
        };
        Self {
            shared: Arc::new(Shared {
                shard_id: shard_id.into(),
                writer,
                generation: AtomicU64::new(0),
                progress: Mutex::new(progress),
                write_order: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// A checkpointer for the processor.
    pub fn checkpointer(&self) -> Checkpointer {
        Checkpointer {
            shared: Arc::clone(&self.shared),
            generation: self.shared.generation.load(Ordering::SeqCst),
        }
    }

    /// The processor was replaced: every checkpointer handed out so far
    /// writes nothing more (its calls fail with
    /// [`CheckpointError::LeaseLost`]), so a task the old processor left
    /// behind cannot checkpoint records delivered to the new one. A write
    /// of theirs already under way may still finish; see
    /// [`settled`](Self::settled).
    pub fn retire_checkpointers(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Resolves once no checkpoint write is under way.
    pub async fn settled(&self) {
        drop(self.shared.write_order.lock().await);
    }

    /// Records that everything up to `position` has been handed to the
    /// processor (the last record of a batch, or `SHARD_END`).
    pub fn delivered(&self, position: ExtendedSequenceNumber) {
        let mut progress = self.shared.progress();
        if position > progress.last_delivered {
            progress.last_delivered = position;
        }
    }

    /// Takes back a delivery the processor failed on: the furthest position
    /// delivered becomes `previous` (or the last checkpoint, if that is
    /// further), so a checkpoint cannot cover the failed records.
    pub fn retract_delivery(&self, previous: ExtendedSequenceNumber) {
        let mut progress = self.shared.progress();
        progress.last_delivered = previous.max(progress.checkpoint.clone());
    }

    /// Forgets deliveries after the last checkpoint: the records after it
    /// will be delivered again.
    pub fn rewind_to_checkpoint(&self) {
        let mut progress = self.shared.progress();
        progress.last_delivered = progress.checkpoint.clone();
    }

    /// Starts over from what the lease holds, read again for a restarted
    /// processor (a write whose answer was lost may have stored more than
    /// this tracker knows): its checkpoint, pending checkpoint and state,
    /// with nothing delivered past the checkpoint.
    pub fn resume_from(&self, stored: CheckpointUpdate) {
        let mut progress = self.shared.progress();
        // The checkpoint never moves back, even if this tracker knows of a
        // later one than the lease read.
        let stored = stored.on_top_of(&progress.checkpoint);
        progress.last_delivered = stored.checkpoint.clone();
        progress.acknowledged = stored.checkpoint.clone();
        progress.checkpoint = stored.checkpoint;
        progress.pending_checkpoint = stored.pending_checkpoint;
        progress.pending_checkpoint_state = stored.pending_checkpoint_state;
    }

    /// The progress so far.
    pub fn progress(&self) -> CheckpointProgress {
        self.shared.progress().clone()
    }
}

/// When its consumer ends, the tracker goes and the processor's checkpointers
/// stop writing: a consumer started later for the same lease (after its
/// deadline moved on) has a tracker of its own, and the old one's idea of
/// what was delivered (a batch dropped at the deadline) must not reach the
/// lease.
impl Drop for CheckpointTracker {
    fn drop(&mut self) {
        self.shared.progress().closed = true;
    }
}

/// What a record processor checkpoints with. Cheap to clone; every clone
/// checkpoints the same shard.
#[derive(Clone)]
pub struct Checkpointer {
    /// The shard's state, shared with its tracker.
    shared: Arc<Shared>,
    /// The processor generation this checkpointer was handed to.
    generation: u64,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("shard_id", &self.shared.shard_id)
            .field("progress", &*self.shared.progress())
            .finish()
    }
}

impl Checkpointer {
    /// The shard this checkpointer writes for.
    pub fn shard_id(&self) -> &str {
        &self.shared.shard_id
    }

    /// Checkpoints after the last record delivered (or at `SHARD_END` once
    /// the shard has ended). Does not write if that position is already
    /// checkpointed (or passed) and nothing is pending.
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        let position = self.shared.progress().last_delivered.clone();
        self.write(CheckpointUpdate::at(position), true).await
    }

    /// Checkpoints at a record: everything up to and including the user
    /// record `sequence`/`sub_sequence` (0 for records that are not KPL
    /// aggregates) is done.
    pub async fn checkpoint_at(
        &self,
        sequence: &str,
        sub_sequence: u64,
    ) -> Result<(), CheckpointError> {
        let position = self.parse(sequence, sub_sequence)?;
        self.write(CheckpointUpdate::at(position), false).await
    }

    /// Checkpoints at `position` (a record, or `SHARD_END` once delivered).
    pub async fn checkpoint_position(
        &self,
        position: ExtendedSequenceNumber,
    ) -> Result<(), CheckpointError> {
        self.write(CheckpointUpdate::at(position), false).await
    }

    /// Stores a pending checkpoint with optional application `state`,
    /// without moving the checkpoint: at `position`, or after the last
    /// record delivered when `None`. A later checkpoint clears it; after a
    /// restart the processor finds it in its initialization input.
    pub async fn prepare_checkpoint(
        &self,
        position: Option<ExtendedSequenceNumber>,
        state: Option<Vec<u8>>,
    ) -> Result<(), CheckpointError> {
        let (checkpoint, position) = {
            let progress = self.shared.progress();
            let position = position.unwrap_or_else(|| progress.last_delivered.clone());
            (progress.checkpoint.clone(), position)
        };
        let update = CheckpointUpdate {
            checkpoint,
            pending_checkpoint: Some(position),
            pending_checkpoint_state: state,
        };
        self.write(update, false).await
    }

    /// The last checkpoint stored.
    pub fn last_checkpoint(&self) -> ExtendedSequenceNumber {
        self.shared.progress().checkpoint.clone()
    }

    /// The furthest position delivered to the processor.
    pub fn last_delivered(&self) -> ExtendedSequenceNumber {
        self.shared.progress().last_delivered.clone()
    }

    fn parse(&self, sequence: &str, sub: u64) -> Result<ExtendedSequenceNumber, CheckpointError> {
        ExtendedSequenceNumber::record(sequence, sub).map_err(|reason| {
            CheckpointError::SequenceNumber {
                shard_id: self.shared.shard_id.clone(),
                reason,
            }
        })
    }

    /// Validates and writes `update`. With `skip_if_current`, a plain
    /// checkpoint at or behind the position already stored (and nothing
    /// pending) is not written again.
    async fn write(
        &self,
        update: CheckpointUpdate,
        skip_if_current: bool,
    ) -> Result<(), CheckpointError> {
        let shard_id = &self.shared.shard_id;
        let _in_order = self.shared.write_order.lock().await;
        {
            let mut progress = self.shared.progress();
            let retired = self.generation != self.shared.generation.load(Ordering::SeqCst);
            if progress.lease_lost || progress.closed || retired {
                return Err(CheckpointError::LeaseLost {
                    shard_id: shard_id.clone(),
                });
            }
            let plain =
                update.pending_checkpoint.is_none() && progress.pending_checkpoint.is_none();
            if skip_if_current && plain && update.checkpoint <= progress.checkpoint {
                return Ok(());
            }
            let target = update
                .pending_checkpoint
                .as_ref()
                .unwrap_or(&update.checkpoint);
            validate_checkpoint(target, &progress.acknowledged, &progress.last_delivered).map_err(
                |reason| CheckpointError::Invalid {
                    shard_id: shard_id.clone(),
                    reason,
                },
            )?;
            // Behind the stored checkpoint yet not behind what this processor
            // was answered: a write whose answer was lost covered it.
            if plain && update.checkpoint < progress.checkpoint {
                progress.acknowledged = update.checkpoint;
                return Ok(());
            }
        }
        match self.shared.writer.write(&update).await {
            Ok(stored) => {
                let mut progress = self.shared.progress();
                if update.pending_checkpoint.is_none() {
                    progress.acknowledged = update.checkpoint.max(progress.acknowledged.clone());
                }
                progress.checkpoint = stored.checkpoint;
                progress.pending_checkpoint = stored.pending_checkpoint;
                progress.pending_checkpoint_state = stored.pending_checkpoint_state;
                progress.writes += 1;
                Ok(())
            }
            Err(CheckpointWriteError::LeaseLost) => {
                self.shared.progress().lease_lost = true;
                Err(CheckpointError::LeaseLost {
                    shard_id: shard_id.clone(),
                })
            }
            Err(CheckpointWriteError::Failed(message)) => Err(CheckpointError::Unavailable {
                shard_id: shard_id.clone(),
                message,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;

    /// Stores every write; fails when told to.
    #[derive(Default)]
    struct Recording {
        writes: Mutex<Vec<CheckpointUpdate>>,
        fail_with: Mutex<Option<CheckpointWriteError>>,
        /// Told when a write begins.
        entered: tokio::sync::Notify,
        /// A write waits here while a test holds it.
        gate: tokio::sync::Mutex<()>,
    }

    #[async_trait]
    impl CheckpointWriter for Recording {
        async fn write(
            &self,
            update: &CheckpointUpdate,
        ) -> Result<CheckpointUpdate, CheckpointWriteError> {
            self.entered.notify_one();
            drop(self.gate.lock().await);
            if let Some(error) = self.fail_with.lock().unwrap().clone() {
                return Err(error);
            }
            self.writes.lock().unwrap().push(update.clone());
            Ok(update.clone())
        }
    }

    fn at(seq: &str) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::record(seq, 0).unwrap()
    }

    fn tracker() -> (CheckpointTracker, Arc<Recording>) {
        let writer = Arc::new(Recording::default());
        let tracker = CheckpointTracker::new(
            "shardId-000000000001",
            writer.clone(),
            CheckpointUpdate::at(ExtendedSequenceNumber::TrimHorizon),
        );
        (tracker, writer)
    }

    #[tokio::test]
    async fn a_replaced_processors_checkpointers_write_nothing_once_its_write_under_way_is_done() {
        let (tracker, writer) = tracker();
        tracker.delivered(at("200"));
        let old = tracker.checkpointer();
        let gate = writer.gate.lock().await;
        let under_way = tokio::spawn({
            let old = old.clone();
            async move { old.checkpoint_at("200", 0).await }
        });
        writer.entered.notified().await;

        // The processor panics and is replaced while its write is under way.
        tracker.rewind_to_checkpoint();
        tracker.retire_checkpointers();
        let mut settled = std::pin::pin!(tracker.settled());
        tokio::select! {
            biased;
            () = &mut settled => panic!("settled while a write was under way"),
            () = std::future::ready(()) => {}
        }
        drop(gate);
        under_way.await.unwrap().unwrap();
        settled.await;

        // The lease is read again: the new processor starts from 200.
        tracker.resume_from(CheckpointUpdate::at(at("200")));
        let progress = tracker.progress();
        assert_eq!(progress.checkpoint, at("200"));
        assert_eq!(progress.acknowledged, at("200"));
        assert_eq!(progress.last_delivered, at("200"));
        let error = old.checkpoint_at("200", 0).await.unwrap_err();
        assert!(error.is_lease_lost(), "{error}");
        tracker.delivered(at("250"));
        tracker.checkpointer().checkpoint().await.unwrap();
        assert_eq!(
            *writer.writes.lock().unwrap(),
            [
                CheckpointUpdate::at(at("200")),
                CheckpointUpdate::at(at("250"))
            ]
        );
    }

    #[tokio::test]
    async fn resuming_from_an_older_read_keeps_the_later_checkpoint_and_drops_a_passed_pending_one()
    {
        let (tracker, _writer) = tracker();
        tracker.delivered(at("200"));
        tracker
            .checkpointer()
            .checkpoint_at("200", 0)
            .await
            .unwrap();
        tracker.resume_from(CheckpointUpdate {
            checkpoint: at("50"),
            pending_checkpoint: Some(at("150")),
            pending_checkpoint_state: Some(b"state".to_vec()),
        });
        let progress = tracker.progress();
        assert_eq!(progress.checkpoint, at("200"));
        assert_eq!(progress.pending_checkpoint, None);
        assert_eq!(progress.pending_checkpoint_state, None);
        assert_eq!(progress.last_delivered, at("200"));
    }

    #[tokio::test]
    async fn checkpoint_writes_the_last_delivered_position_once() {
        let (tracker, writer) = tracker();
        let checkpointer = tracker.checkpointer();
        checkpointer.checkpoint().await.unwrap();
        assert!(
            writer.writes.lock().unwrap().is_empty(),
            "nothing delivered"
        );

        tracker.delivered(at("20"));
        checkpointer.checkpoint().await.unwrap();
        checkpointer.checkpoint().await.unwrap();
        assert_eq!(
            *writer.writes.lock().unwrap(),
            [CheckpointUpdate::at(at("20"))]
        );
        assert_eq!(tracker.progress().checkpoint, at("20"));
        assert_eq!(tracker.progress().writes, 1);
    }

    #[tokio::test]
    async fn checkpoint_at_is_validated_before_anything_is_written() {
        let (tracker, writer) = tracker();
        let checkpointer = tracker.checkpointer();
        tracker.delivered(at("20"));
        checkpointer.checkpoint_at("10", 0).await.unwrap();
        let behind = checkpointer.checkpoint_at("5", 0).await.unwrap_err();
        assert!(
            matches!(behind, CheckpointError::Invalid { .. }),
            "{behind}"
        );
        let ahead = checkpointer.checkpoint_at("21", 0).await.unwrap_err();
        assert!(matches!(ahead, CheckpointError::Invalid { .. }), "{ahead}");
        let garbage = checkpointer.checkpoint_at("12x", 0).await.unwrap_err();
        assert!(matches!(garbage, CheckpointError::SequenceNumber { .. }));
        assert_eq!(
            *writer.writes.lock().unwrap(),
            [CheckpointUpdate::at(at("10"))]
        );
    }

    #[tokio::test]
    async fn prepared_checkpoints_keep_the_checkpoint_and_store_state() {
        let (tracker, writer) = tracker();
        let checkpointer = tracker.checkpointer();
        tracker.delivered(at("30"));
        checkpointer.checkpoint_at("10", 0).await.unwrap();
        checkpointer
            .prepare_checkpoint(None, Some(b"state".to_vec()))
            .await
            .unwrap();
        assert_eq!(
            writer.writes.lock().unwrap()[1],
            CheckpointUpdate {
                checkpoint: at("10"),
                pending_checkpoint: Some(at("30")),
                pending_checkpoint_state: Some(b"state".to_vec()),
            }
        );
        // A plain checkpoint at the stored position still clears the pending one.
        checkpointer.checkpoint_at("10", 0).await.unwrap();
        assert_eq!(writer.writes.lock().unwrap().len(), 3);
        assert_eq!(tracker.progress().pending_checkpoint, None);
    }

    #[tokio::test]
    async fn a_lost_lease_fails_this_and_every_later_checkpoint() {
        let (tracker, writer) = tracker();
        let checkpointer = tracker.checkpointer();
        tracker.delivered(at("30"));
        *writer.fail_with.lock().unwrap() = Some(CheckpointWriteError::LeaseLost);
        assert!(checkpointer.checkpoint().await.unwrap_err().is_lease_lost());
        *writer.fail_with.lock().unwrap() = None;
        assert!(checkpointer.checkpoint().await.unwrap_err().is_lease_lost());
        assert!(tracker.progress().lease_lost);
        assert!(writer.writes.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_write_leaves_the_checkpoint_where_it_was() {
        let (tracker, writer) = tracker();
        let checkpointer = tracker.checkpointer();
        tracker.delivered(at("30"));
        *writer.fail_with.lock().unwrap() = Some(CheckpointWriteError::Failed("throttled".into()));
        let error = checkpointer.checkpoint().await.unwrap_err();
        assert!(
            matches!(error, CheckpointError::Unavailable { .. }),
            "{error}"
        );
        assert_eq!(
            checkpointer.last_checkpoint(),
            ExtendedSequenceNumber::TrimHorizon
        );
        *writer.fail_with.lock().unwrap() = None;
        checkpointer.checkpoint().await.unwrap();
        assert_eq!(checkpointer.last_checkpoint(), at("30"));
    }

    #[tokio::test]
    async fn shard_end_can_be_checkpointed_once_delivered() {
        let (tracker, _writer) = tracker();
        let checkpointer = tracker.checkpointer();
        tracker.delivered(at("30"));
        assert!(
            checkpointer
                .checkpoint_position(ExtendedSequenceNumber::ShardEnd)
                .await
                .is_err()
        );
        tracker.delivered(ExtendedSequenceNumber::ShardEnd);
        checkpointer.checkpoint().await.unwrap();
        assert_eq!(
            checkpointer.last_checkpoint(),
            ExtendedSequenceNumber::ShardEnd
        );
    }

    #[tokio::test]
    async fn rewinding_forgets_deliveries_after_the_checkpoint() {
        let (tracker, _writer) = tracker();
        tracker.delivered(at("30"));
        tracker.checkpointer().checkpoint_at("10", 0).await.unwrap();
        tracker.rewind_to_checkpoint();
        assert_eq!(tracker.progress().last_delivered, at("10"));
        assert!(tracker.checkpointer().checkpoint_at("30", 0).await.is_err());
    }
}
