//! Shard discovery and lease cleanup, on a task of their own: every
//! `shard_sync_interval`, read the lease table once, list each stream's
//! shards, create the leases that are missing, and delete the leases that
//! have been unneeded for their cleanup delay. A stalled Kinesis or lease
//! table delays only this task.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kcl_lease::StreamIdentifier;
use tracing::warn;

use crate::consumer::ConsumerContext;
use crate::kinesis::KinesisError;
use crate::lease_cleanup::{LeaseCleaner, cleanable, of_former_streams};
use crate::shard_sync::{ShardSyncError, sync_stream};
use crate::streams::ConsumedStreams;

/// Runs discovery and cleanup every `interval` until the task is dropped
/// (the first pass runs at start, before this task).
pub(super) async fn run(
    context: Arc<ConsumerContext>,
    streams: Arc<ConsumedStreams>,
    interval: Duration,
    mut cleaner: LeaseCleaner,
) {
    let consumed: BTreeSet<StreamIdentifier> = streams
        .iter()
        .filter_map(|stream| stream.identifier.clone())
        .collect();
    loop {
        tokio::time::sleep(interval).await;
        let listing = match context.store.list_table().await {
            Ok(listing) => listing,
            Err(error) => {
                warn!(%error, "shard discovery failed; retrying at the next interval");
                continue;
            }
        };
        let mut candidates = Vec::new();
        let mut deleted = BTreeSet::new();
        for stream in streams.iter() {
            match sync_stream(&*context.kinesis, &*context.store, stream, &listing).await {
                Ok(report) => candidates.extend(cleanable(&report.leases, &report.shards)),
                Err(ShardSyncError::ListShards {
                    source: source @ KinesisError::NotFound { .. },
                    ..
                }) if stream.identifier.is_some() => {
                    warn!(stream = %stream.name, %source, "the stream is gone; its leases are deleted after the former-stream cleanup delay");
                    deleted.extend(stream.identifier.clone());
                }
                Err(error) => {
                    warn!(stream = %stream.name, %error, "shard discovery failed; retrying at the next interval")
                }
            }
        }
        if !consumed.is_empty() {
            candidates.extend(of_former_streams(&listing.leases, &consumed, &deleted));
        }
        let now = tokio::time::Instant::now().into_std();
        if let Err(error) = cleaner.run(&*context.store, candidates, now).await {
            warn!(%error, "lease cleanup failed; retrying at the next interval");
        }
    }
}
