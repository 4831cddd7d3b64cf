//! Shard end: once every record of a shard has been delivered, the
//! consumer creates the child shards' leases (each with all its parents,
//! waiting at `TRIM_HORIZON`) and records them on the finished lease, then
//! delivers the shard end to the processor until it checkpoints
//! `SHARD_END`, which lets the children start.

use std::collections::BTreeSet;

use kcl_checkpoint::ExtendedSequenceNumber;
use tracing::{error, info, warn};

use super::{ConsumerEvent, ConsumerSignal, ShardConsumer, must_stop};
use crate::kinesis::ChildShard;
use crate::shard_sync::new_shard_lease;

impl ShardConsumer {
    /// Creates the child shards' leases (idempotently, each with all its
    /// parents) and records them on this lease, retrying until done.
    async fn create_child_leases(&mut self) -> Option<ConsumerEvent> {
        loop {
            match self.try_create_child_leases().await {
                Ok(()) => return None,
                Err(error) if error.is_lease_lost() => return Some(ConsumerEvent::LeaseLost),
                Err(error) => {
                    warn!(%error, "could not create the child shards' leases; retrying");
                    match self.pause_after_failure().await {
                        None => {}
                        Some(ConsumerEvent::ShutdownRequested) => {
                            // Stop trying: the lease is released without
                            // SHARD_END, and its next owner reaches the shard
                            // end and creates the child leases again.
                            warn!(
                                "shutdown requested while the child shards' leases are not created"
                            );
                            return Some(ConsumerEvent::ShutdownDone);
                        }
                        Some(event) => return Some(event),
                    }
                }
            }
        }
    }

    async fn try_create_child_leases(&mut self) -> Result<(), ChildLeaseError> {
        if self.child_shards.is_empty() {
            // Kinesis did not name the children: find them in the stream.
            let shards = self
                .context
                .kinesis
                .list_shards(&self.start.stream.name)
                .await?;
            let me = self.start.shard_id.as_str();
            self.child_shards = shards
                .iter()
                .filter(|shard| shard.parents().any(|parent| parent == me))
                .map(|shard| ChildShard {
                    shard_id: shard.shard_id.clone(),
                    parent_shards: shard.parents().map(str::to_owned).collect(),
                    hash_key_range: shard.hash_key_range,
                })
                .collect();
        }
        for child in &self.child_shards {
            // Every child waits at TRIM_HORIZON until all its parents are
            // finished.
            let lease = new_shard_lease(
                self.start.stream.identifier.as_ref(),
                &child.shard_id,
                child.parent_shards.iter().cloned(),
                child.hash_key_range,
                ExtendedSequenceNumber::TrimHorizon,
            );
            if self.context.store.create_lease_if_absent(&lease).await? {
                info!(child = %child.shard_id, parents = ?child.parent_shards, "created lease for child shard");
            }
        }
        let children: BTreeSet<String> = self
            .child_shards
            .iter()
            .map(|c| c.shard_id.clone())
            .collect();
        self.context
            .store
            .record_child_shards(&self.start.token, &children)
            .await?;
        Ok(())
    }

    /// Creates the child leases, then delivers the shard end until the
    /// processor checkpoints `SHARD_END`.
    pub(super) async fn finish_shard(&mut self) -> ConsumerEvent {
        if let Some(event) = self.create_child_leases().await {
            return event;
        }
        self.tracker.delivered(ExtendedSequenceNumber::ShardEnd);
        loop {
            if self.current_signal() == ConsumerSignal::LeaseLost {
                return ConsumerEvent::LeaseLost;
            }
            if self.processor.is_none() {
                // A panic replaced the processor: initialize the new one.
                let event = self.initialize().await;
                self.fetcher = None;
                if event != ConsumerEvent::Initialized {
                    return event;
                }
                self.tracker.delivered(ExtendedSequenceNumber::ShardEnd);
            }
            let checkpointer = self.tracker.checkpointer();
            let Some(processor) = self.processor.as_mut() else {
                continue;
            };
            let outcome = tokio::select! {
                biased;
                () = must_stop(&mut self.signals, &self.start.deadline) => return ConsumerEvent::LeaseLost,
                outcome = self.context.call_processor(
                    &self.start.stream.name,
                    &self.start.shard_id,
                    processor.shard_ended(checkpointer),
                ) => outcome,
            };
            let progress = self.tracker.progress();
            if progress.checkpoint == ExtendedSequenceNumber::ShardEnd {
                self.context.shard_ends.send_modify(|ends| *ends += 1);
                return ConsumerEvent::ShutdownDone;
            }
            if progress.lease_lost {
                return ConsumerEvent::LeaseLost;
            }
            self.context.stats.count_shard_end_retry();
            match outcome {
                Ok(Ok(())) => error!(
                    "processor returned from shard_ended without checkpointing; the shard's \
                     children cannot start until it does. Delivering the shard end again"
                ),
                Ok(Err(error)) => {
                    error!(%error, "processor failed in shard_ended; delivering the shard end again");
                }
                Err(panic) => {
                    self.replace_processor();
                    error!(panic = %panic, "processor panicked in shard_ended; delivering the shard end again");
                }
            }
            match self.pause_after_failure().await {
                None => {}
                Some(ConsumerEvent::ShutdownRequested) => {
                    // Stop trying; the lease is released and the shard end is
                    // delivered again by its next owner.
                    warn!("shutdown requested while the shard end is not yet checkpointed");
                    return ConsumerEvent::ShutdownDone;
                }
                Some(event) => return event,
            }
        }
    }
}

/// Why the child shards' leases could not be created.
#[derive(Debug, thiserror::Error)]
enum ChildLeaseError {
    #[error("listing shards: {0}")]
    Kinesis(#[from] crate::kinesis::KinesisError),
    #[error("{0}")]
    LeaseTable(#[from] kcl_lease::LeaseStoreError),
}

impl ChildLeaseError {
    fn is_lease_lost(&self) -> bool {
        matches!(self, Self::LeaseTable(error) if error.is_lease_lost())
    }
}
