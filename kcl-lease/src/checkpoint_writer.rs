//! Checkpoints stored in the lease table, fenced by the lease.

use std::sync::Arc;

use async_trait::async_trait;
use kcl_checkpoint::{CheckpointUpdate, CheckpointWriteError, CheckpointWriter};

use crate::{LeaseStore, LeaseStoreError, LeaseToken, ProcessingDeadline};

/// Writes a shard's checkpoints to its lease, conditional on `token`: once
/// the lease has moved to another worker, writes fail with
/// [`CheckpointWriteError::LeaseLost`] and change nothing. Once the
/// worker's [processing deadline](crate::deadline) has passed, nothing is
/// sent at all (the same error). Throttling is retried with backoff by the
/// store before an error is returned.
pub struct LeaseCheckpointWriter<S: ?Sized> {
    store: Arc<S>,
    token: LeaseToken,
    deadline: ProcessingDeadline,
}

impl<S: LeaseStore + ?Sized> LeaseCheckpointWriter<S> {
    /// Checkpoints of the lease `token` holds, written to `store` while
    /// `deadline` is open.
    pub fn new(store: Arc<S>, token: LeaseToken, deadline: ProcessingDeadline) -> Self {
        Self {
            store,
            token,
            deadline,
        }
    }
}

#[async_trait]
impl<S: LeaseStore + ?Sized> CheckpointWriter for LeaseCheckpointWriter<S> {
    async fn write(&self, update: &CheckpointUpdate) -> Result<(), CheckpointWriteError> {
        if !self.deadline.is_open() {
            metrics::counter!(crate::metrics::CHECKPOINT_WRITES, "outcome" => "deadline_passed")
                .increment(1);
            return Err(CheckpointWriteError::LeaseLost);
        }
        let (outcome, result) = match self.store.checkpoint(&self.token, update).await {
            Ok(()) => ("ok", Ok(())),
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
            ProcessingDeadline::unlimited(),
        );
        let tracker =
            CheckpointTracker::new("shardId-1", Arc::new(writer), mine.checkpoint.clone(), None);
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
}
