//! Waiting on parent shards: a child shard is read only once every parent
//! was read to its end and checkpointed at `SHARD_END` (or is gone from the
//! stream), so per-key order holds across splits and merges.
//!
//! Waiting is cheap: a parent seen finished is not read again, the other
//! parents are read at `parent_poll_interval`, then less and less often (the
//! interval doubles up to [`PARENT_POLL_MAX`]), and the wait ends at once
//! when a consumer of this worker reads a shard to its end, which is where a
//! parent usually ends (its consumer creates the child's lease).

use std::collections::BTreeSet;
use std::time::Duration;

use kcl_checkpoint::ExtendedSequenceNumber;
use tracing::{info, warn};

use super::{ConsumerContext, ConsumerEvent, ShardConsumer, stop_signal};

/// The longest interval between two reads of the parents of a waiting
/// child (unless `parent_poll_interval` is longer).
pub const PARENT_POLL_MAX: Duration = Duration::from_secs(10);

impl ShardConsumer {
    /// Waits until every parent lease is finished or gone. A lease that has
    /// a record checkpoint already started once, so its parents were done.
    ///
    /// A parent without a lease is done only if the shard is gone from the
    /// stream (past retention): while a child waits at `TRIM_HORIZON`, a
    /// parent's lease is never cleaned up, so a missing one is one that
    /// discovery has yet to create (one parent of a merge can end and create
    /// the child before the other parent has a lease). A child at another
    /// position starts a lineage of its own and does not wait for parents
    /// that were never leased.
    pub(super) async fn wait_for_parents(&mut self) -> ConsumerEvent {
        if self.start.parent_shard_ids.is_empty() || !self.start.checkpoint.is_sentinel() {
            return ConsumerEvent::ParentsDone;
        }
        let mut pending: BTreeSet<String> = self.start.parent_shard_ids.clone();
        let mut interval = self.context.parent_poll_interval;
        let longest = interval.max(PARENT_POLL_MAX);
        let mut shard_ends = self.context.shard_ends.subscribe();
        let mut logged = false;
        loop {
            if let Some(event) = self.stop_requested() {
                return event;
            }
            shard_ends.borrow_and_update();
            self.check_parents(&mut pending).await;
            if pending.is_empty() {
                if logged {
                    info!("parent shards finished; starting");
                }
                return ConsumerEvent::ParentsDone;
            }
            if !logged {
                info!(unfinished = ?pending, "waiting for parent shards to be read to their end");
                logged = true;
            }
            tokio::select! {
                biased;
                () = self.start.deadline.passed() => return ConsumerEvent::LeaseLost,
                event = stop_signal(&mut self.signals) => return event,
                _ = shard_ends.changed() => interval = self.context.parent_poll_interval,
                () = tokio::time::sleep(interval) => interval = (interval * 2).min(longest),
            }
        }
    }

    /// Reads the parents still in `pending` and removes those that are
    /// done.
    async fn check_parents(&mut self, pending: &mut BTreeSet<String>) {
        let mut unleased = Vec::new();
        for parent in pending.clone() {
            match self
                .context
                .store
                .get_lease(&self.start.stream.lease_key(&parent))
                .await
            {
                Ok(None) => unleased.push(parent),
                Ok(Some(lease)) if lease.is_finished() => {
                    pending.remove(&parent);
                }
                Ok(Some(_)) => {}
                Err(error) => {
                    warn!(%parent, %error, "could not read a parent lease; checking again");
                }
            }
        }
        if unleased.is_empty() {
            return;
        }
        let still: Vec<String> = if self.start.checkpoint == ExtendedSequenceNumber::TrimHorizon {
            let unleased: Vec<&str> = unleased.iter().map(String::as_str).collect();
            still_in_stream(&self.context, &self.start.stream.name, &unleased)
                .await
                .into_iter()
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        for parent in unleased {
            if !still.contains(&parent) {
                pending.remove(&parent);
            }
        }
    }
}

/// Which of `shards` the stream still has; all of them when the shards
/// cannot be listed, or the listing is empty (a stream always has an open
/// shard, so an empty answer is a bad one), and the caller checks again
/// later.
async fn still_in_stream<'a>(
    context: &ConsumerContext,
    stream: &str,
    shards: &[&'a str],
) -> Vec<&'a str> {
    match context.kinesis.list_shards(stream).await {
        Ok(listed) if listed.is_empty() => {
            warn!("the stream's shard listing came back empty; checking the parents again later");
            shards.to_vec()
        }
        Ok(listed) => shards
            .iter()
            .copied()
            .filter(|id| listed.iter().any(|s| s.shard_id == *id))
            .collect(),
        Err(error) => {
            warn!(%error, "could not list the shards to look for unleased parents; checking again");
            shards.to_vec()
        }
    }
}
