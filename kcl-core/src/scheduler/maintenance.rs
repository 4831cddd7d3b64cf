//! Shard discovery and lease cleanup, on a task of their own: every
//! `shard_sync_interval`, list the shards, create the leases that are
//! missing, and delete the leases that have been unneeded for the cleanup
//! delay. A stalled Kinesis or lease table delays only this task.

use std::sync::Arc;
use std::time::Duration;

use kcl_checkpoint::ExtendedSequenceNumber;
use tracing::warn;

use crate::consumer::ConsumerContext;
use crate::lease_cleanup::LeaseCleaner;
use crate::shard_sync::sync_shards;

/// Runs discovery and cleanup every `interval` until the task is dropped
/// (the first pass runs at start, before this task).
pub(super) async fn run(
    context: Arc<ConsumerContext>,
    initial: ExtendedSequenceNumber,
    interval: Duration,
    cleanup_delay: Duration,
) {
    let mut cleaner = LeaseCleaner::new(cleanup_delay);
    loop {
        tokio::time::sleep(interval).await;
        let synced = sync_shards(
            &*context.kinesis,
            &*context.store,
            &context.stream,
            &initial,
        )
        .await;
        match synced {
            Ok(report) => {
                let now = tokio::time::Instant::now().into_std();
                let cleaned = cleaner
                    .run(&*context.store, &report.leases, &report.shards, now)
                    .await;
                if let Err(error) = cleaned {
                    warn!(%error, "lease cleanup failed; retrying at the next interval");
                }
            }
            Err(error) => {
                warn!(%error, "shard discovery failed; retrying at the next interval")
            }
        }
    }
}
