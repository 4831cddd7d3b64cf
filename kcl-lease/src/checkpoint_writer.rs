//! Checkpoints stored in the lease table, fenced by the lease.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use kcl_checkpoint::{CheckpointUpdate, CheckpointWriteError, CheckpointWriter};

use crate::{LeaseStore, LeaseStoreError, LeaseToken, ProcessingDeadline};

/// Writes a shard's checkpoints to its lease, conditional on `token`: once
/// the lease has moved to another worker, writes fail with
/// [`CheckpointWriteError::LeaseLost`] and change nothing. Once the
/// worker's [processing deadline](crate::deadline) has passed, nothing is
/// sent at all (the same error). Throttling is retried with backoff by the
/// store before an error is returned. Checkpoints only move forward: each
/// write is conditional on the checkpoint this writer last knew stored, so a
/// request of an earlier write that lands late changes nothing.
pub struct LeaseCheckpointWriter<S: ?Sized> {
    /// Where the lease lives.
    store: Arc<S>,
    /// The lease and counter every write is fenced by.
    token: LeaseToken,
    /// Past it, nothing is written.
    deadline: ProcessingDeadline,
    /// The checkpoint and pending checkpoint last known stored under
    /// `token`: read with the lease, then the result of each write.
    stored: Mutex<CheckpointUpdate>,
}

impl<S: LeaseStore + ?Sized> LeaseCheckpointWriter<S> {
    /// Checkpoints of the lease `token` holds, read with the checkpoint and
    /// pending checkpoint in `stored`, written to `store` while `deadline`
    /// is open.
    pub fn new(
        store: Arc<S>,
        token: LeaseToken,
        stored: CheckpointUpdate,
        deadline: ProcessingDeadline,
    ) -> Self {
        Self {
            store,
            token,
            deadline,
            stored: Mutex::new(stored),
        }
    }
}

impl<S: ?Sized> LeaseCheckpointWriter<S> {
    /// Takes `stored` as what the lease holds now (read again, after a
    /// processor restart), so the next write's condition expects it.
    pub fn resume_from(&self, stored: CheckpointUpdate) {
        *self.stored.lock().unwrap_or_else(PoisonError::into_inner) = stored;
    }
}

#[async_trait]
impl<S: LeaseStore + ?Sized> CheckpointWriter for LeaseCheckpointWriter<S> {
    async fn write(
        &self,
        update: &CheckpointUpdate,
    ) -> Result<CheckpointUpdate, CheckpointWriteError> {
        if !self.deadline.is_open() {
            metrics::counter!(crate::metrics::CHECKPOINT_WRITES, "outcome" => "deadline_passed")
                .increment(1);
            return Err(CheckpointWriteError::LeaseLost);
        }
        // Writes of one shard are made one at a time; the lock is not held
        // across the write.
        let previous = self
            .stored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let written = self.store.checkpoint(&self.token, &previous, update).await;
        let (outcome, result) = match written {
            Ok(stored) => {
                *self.stored.lock().unwrap_or_else(PoisonError::into_inner) = stored.clone();
                ("ok", Ok(stored))
            }
            Err(LeaseStoreError::LeaseLost { .. } | LeaseStoreError::NotFound { .. }) => {
                ("lease_lost", Err(CheckpointWriteError::LeaseLost))
            }
            Err(error) => (
                "failed",
                Err(CheckpointWriteError::Failed(error.to_string())),
            ),
        };
        metrics::counter!(crate::metrics::CHECKPOINT_WRITES, "outcome" => outcome).increment(1);
        result
    }
}

#[cfg(test)]
mod tests {
    use kcl_checkpoint::{CheckpointTracker, ExtendedSequenceNumber};

    use super::*;
    use crate::{InMemoryLeaseStore, Lease};

    #[tokio::test]
    async fn checkpoints_land_in_the_lease_until_it_is_taken_away() {
        let store = Arc::new(InMemoryLeaseStore::new());
        let lease = Lease::new("shardId-1", ExtendedSequenceNumber::TrimHorizon);
        store.create_lease_if_absent(&lease).await.unwrap();
        let mine = store.take_lease(&lease, "worker-a").await.unwrap();
        let writer = LeaseCheckpointWriter::new(
            store.clone(),
            mine.token().unwrap(),
            CheckpointUpdate::at(mine.checkpoint.clone()),
            ProcessingDeadline::unlimited(),
        );
        let tracker = CheckpointTracker::new(
            "shardId-1",
            Arc::new(writer),
            CheckpointUpdate::at(mine.checkpoint.clone()),
        );
        let at = |n: &str| ExtendedSequenceNumber::record(n, 0).unwrap();

        tracker.delivered(at("200"));
        tracker
            .checkpointer()
            .checkpoint_at("100", 0)
            .await
            .unwrap();
        let stored = store.get_lease("shardId-1").await.unwrap().unwrap();
        assert_eq!(stored.checkpoint, at("100"));

        store.take_lease(&stored, "worker-b").await.unwrap();
        let error = tracker.checkpointer().checkpoint().await.unwrap_err();
        assert!(error.is_lease_lost(), "{error}");
        let stored = store.get_lease("shardId-1").await.unwrap().unwrap();
        assert_eq!(stored.checkpoint, at("100"));
    }

    /// A tracker over a lease of `store` held by worker-a, whose writes
    /// pass through faults steered by the returned control.
    async fn faulty_tracker(
        store: &Arc<InMemoryLeaseStore>,
    ) -> (CheckpointTracker, crate::faults::FaultControl) {
        let lease = Lease::new("shardId-1", ExtendedSequenceNumber::TrimHorizon);
        store.create_lease_if_absent(&lease).await.unwrap();
        let mine = store.take_lease(&lease, "worker-a").await.unwrap();
        let (faulty, control) = crate::faults::FaultyStore::new(Arc::clone(store));
        let writer = LeaseCheckpointWriter::new(
            Arc::new(faulty),
            mine.token().unwrap(),
            CheckpointUpdate::at(mine.checkpoint.clone()),
            ProcessingDeadline::unlimited(),
        );
        let tracker = CheckpointTracker::new(
            "shardId-1",
            Arc::new(writer),
            CheckpointUpdate::at(mine.checkpoint.clone()),
        );
        (tracker, control)
    }

    #[tokio::test]
    async fn a_checkpoint_prepared_after_a_lost_answer_is_stored_on_top_of_the_applied_one() {
        let store = Arc::new(InMemoryLeaseStore::new());
        let (tracker, control) = faulty_tracker(&store).await;
        let at = |n: &str| ExtendedSequenceNumber::record(n, 0).unwrap();
        tracker.delivered(at("200"));
        let checkpointer = tracker.checkpointer();

        // Checkpoint 100 takes effect, but its answer is an error.
        control.apply_then_fail(1);
        assert!(checkpointer.checkpoint_at("100", 0).await.is_err());
        assert_eq!(
            checkpointer.last_checkpoint(),
            ExtendedSequenceNumber::TrimHorizon
        );

        // The prepare that follows is built on TRIM_HORIZON, yet it is stored,
        // and the tracker learns where the checkpoint is.
        checkpointer
            .prepare_checkpoint(Some(at("200")), Some(b"state".to_vec()))
            .await
            .unwrap();
        let stored = store.get_lease("shardId-1").await.unwrap().unwrap();
        assert_eq!(stored.checkpoint, at("100"));
        assert_eq!(stored.pending_checkpoint, Some(at("200")));
        assert_eq!(stored.pending_checkpoint_state, Some(b"state".to_vec()));
        assert_eq!(checkpointer.last_checkpoint(), at("100"));
    }

    #[tokio::test]
    async fn positions_covered_by_a_checkpoint_whose_answer_was_lost_are_accepted() {
        let store = Arc::new(InMemoryLeaseStore::new());
        let (tracker, control) = faulty_tracker(&store).await;
        let at = |n: &str| ExtendedSequenceNumber::record(n, 0).unwrap();
        let checkpointer = tracker.checkpointer();

        // Checkpoint 150 takes effect, its answer is an error, and the
        // processor is restarted from the checkpoint it knows (TRIM_HORIZON).
        tracker.delivered(at("150"));
        control.apply_then_fail(1);
        assert!(checkpointer.checkpoint_at("150", 0).await.is_err());
        tracker.rewind_to_checkpoint();

        // The records are delivered again; the first checkpoint learns of 150.
        tracker.delivered(at("120"));
        checkpointer.checkpoint_at("120", 0).await.unwrap();
        assert_eq!(checkpointer.last_checkpoint(), at("150"));
        // Positions up to 150 were checkpointed already: accepted, not
        // written, never refused as moving back.
        tracker.delivered(at("140"));
        checkpointer.checkpoint_at("130", 0).await.unwrap();
        checkpointer.checkpoint_at("140", 0).await.unwrap();
        checkpointer.checkpoint().await.unwrap();
        let stored = store.get_lease("shardId-1").await.unwrap().unwrap();
        assert_eq!(stored.checkpoint, at("150"));
        // Nor is a pending checkpoint stored behind it.
        checkpointer
            .prepare_checkpoint(None, Some(b"state".to_vec()))
            .await
            .unwrap();
        let stored = store.get_lease("shardId-1").await.unwrap().unwrap();
        assert_eq!(stored.pending_checkpoint, None);
        assert_eq!(stored.pending_checkpoint_state, None);
        // Behind what this processor itself checkpointed is still a bug.
        let error = checkpointer.checkpoint_at("125", 0).await.unwrap_err();
        assert!(
            matches!(
                error,
                kcl_checkpoint::CheckpointError::Invalid {
                    reason: kcl_checkpoint::InvalidCheckpoint::BehindLastCheckpoint { .. },
                    ..
                }
            ),
            "{error}"
        );

        tracker.delivered(at("160"));
        checkpointer.checkpoint().await.unwrap();
        let stored = store.get_lease("shardId-1").await.unwrap().unwrap();
        assert_eq!(stored.checkpoint, at("160"));
    }

    #[tokio::test]
    async fn a_fetcher_restart_keeps_what_the_running_processor_may_checkpoint() {
        let store = Arc::new(InMemoryLeaseStore::new());
        let (tracker, control) = faulty_tracker(&store).await;
        let at = |n: &str| ExtendedSequenceNumber::record(n, 0).unwrap();
        let checkpointer = tracker.checkpointer();
        tracker.delivered(at("150"));
        control.apply_then_fail(1);
        assert!(checkpointer.checkpoint_at("150", 0).await.is_err());
        checkpointer.checkpoint_at("120", 0).await.unwrap();
        assert_eq!(checkpointer.last_checkpoint(), at("150"));

        // The fetcher restarts after the checkpoint; the processor, still
        // the same, checkpoints a batch it was given before.
        tracker.rewind_to_checkpoint();
        checkpointer.checkpoint_at("130", 0).await.unwrap();
        let stored = store.get_lease("shardId-1").await.unwrap().unwrap();
        assert_eq!(stored.checkpoint, at("150"));
    }

    #[tokio::test]
    async fn a_pending_checkpoint_behind_the_stored_checkpoint_is_not_stored() {
        let store = Arc::new(InMemoryLeaseStore::new());
        let (tracker, control) = faulty_tracker(&store).await;
        let at = |n: &str| ExtendedSequenceNumber::record(n, 0).unwrap();
        let checkpointer = tracker.checkpointer();
        tracker.delivered(at("150"));
        control.apply_then_fail(1);
        assert!(checkpointer.checkpoint_at("150", 0).await.is_err());

        // Prepared at 120 on top of TRIM_HORIZON, but 150 is stored: the
        // pending checkpoint is already passed and must not be stored behind.
        checkpointer
            .prepare_checkpoint(Some(at("120")), Some(b"state".to_vec()))
            .await
            .unwrap();
        let stored = store.get_lease("shardId-1").await.unwrap().unwrap();
        assert_eq!(stored.checkpoint, at("150"));
        assert_eq!(stored.pending_checkpoint, None);
        assert_eq!(stored.pending_checkpoint_state, None);
        assert_eq!(tracker.progress().pending_checkpoint, None);
    }

    #[tokio::test]
    async fn a_checkpointer_kept_past_its_consumer_writes_nothing() {
        let store = Arc::new(InMemoryLeaseStore::new());
        let (tracker, _control) = faulty_tracker(&store).await;
        let at = |n: &str| ExtendedSequenceNumber::record(n, 0).unwrap();
        // A batch was handed over, then dropped at the deadline; the
        // consumer ended, and a processor kept its checkpointer.
        tracker.delivered(at("200"));
        let kept = tracker.checkpointer();
        drop(tracker);

        let error = kept.checkpoint().await.unwrap_err();
        assert!(error.is_lease_lost(), "{error}");
        let stored = store.get_lease("shardId-1").await.unwrap().unwrap();
        assert_eq!(stored.checkpoint, ExtendedSequenceNumber::TrimHorizon);
    }
}
