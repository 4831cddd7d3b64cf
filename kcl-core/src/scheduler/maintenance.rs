//! Shard discovery and lease cleanup, on a task of their own: every
//! `shard_sync_interval`, list each stream's shards, then read the lease
//! table once, create the leases that are missing, and delete the leases
//! that have been unneeded for their cleanup delay. A stalled Kinesis or
//! lease table delays only this task.
//!
//! In a multi-stream application each pass also reads each stream's
//! identifier again: a stream deleted and created again under its name is
//! another stream, and the worker stops with an error rather than read the
//! new stream with the old one's leases. The streams no live worker of the
//! application consumes (as their heartbeats announce them) are former
//! streams, whose leases go after the former-stream delay.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, warn};

use super::SchedulerError;
use crate::consumer::ConsumerContext;
use crate::kinesis::KinesisError;
use crate::lease_cleanup::{CleanupReason, LeaseCleaner, cleanable, of_former_streams};
use crate::shard_sync::{ShardSyncError, create_missing_leases, list_stream_shards};
use crate::streams::{ConsumedStream, ConsumedStreams, describe};

/// Runs discovery and cleanup every `interval` until the task is dropped
/// (the first pass runs at start, before this task), or until a stream of a
/// multi-stream application turns out to have been created anew (the
/// error returned).
pub(super) async fn run(
    context: Arc<ConsumerContext>,
    streams: Arc<ConsumedStreams>,
    interval: Duration,
    mut cleaner: LeaseCleaner,
) -> SchedulerError {
    loop {
        tokio::time::sleep(interval).await;
        let candidates = match discover(&context, &streams, false).await {
            Ok(candidates) => candidates,
            Err(error) => return error,
        };
        let now = tokio::time::Instant::now().into_std();
        if let Err(error) = cleaner.run(&*context.store, candidates, now).await {
            warn!(%error, "lease cleanup failed; retrying at the next interval");
        }
    }
}

/// One pass: creates the leases that are missing and returns the leases
/// that may be deleted. At start, a stream that does not exist or may not
/// be read is an error; later it is retried at the next interval (or, in a
/// multi-stream application, a stream gone from Kinesis is a former
/// stream). A stream of a multi-stream application that Kinesis describes
/// otherwise than at start (deleted and created again) is an error. Any
/// other failure is logged and retried at the next interval.
pub(super) async fn discover(
    context: &ConsumerContext,
    streams: &ConsumedStreams,
    at_start: bool,
) -> Result<Vec<(kcl_lease::Lease, CleanupReason)>, SchedulerError> {
    let mut listed = Vec::new();
    let mut deleted = BTreeSet::new();
    for stream in streams.iter() {
        let shards = list_stream_shards(&*context.kinesis, stream).await;
        // In a multi-stream application, the shards listed are used only if
        // Kinesis describes the stream seen at start after listing them: a
        // stream created anew has another creation time from then on, so the
        // listing came from the stream seen at start too.
        match identity(context, stream).await {
            Identity::Same => {}
            Identity::Recreated(error) => return Err(error),
            Identity::Gone if !at_start => {
                deleted.extend(stream.identifier.clone());
                continue;
            }
            Identity::Gone | Identity::Unknown => continue,
        }
        match shards {
            Ok(shards) => listed.push((stream, shards)),
            Err(ShardSyncError::ListShards {
                source: source @ KinesisError::NotFound { .. },
                ..
            }) if !at_start && stream.identifier.is_some() => {
                warn!(stream = %stream.name, %source, "the stream is gone; its leases are deleted after the former-stream cleanup delay");
                deleted.extend(stream.identifier.clone());
            }
            Err(ShardSyncError::ListShards { stream, source })
                if at_start
                    && !source.is_retryable()
                    && !matches!(source, KinesisError::InvalidResponse { .. }) =>
            {
                return Err(SchedulerError::Stream { stream, source });
            }
            Err(error) => {
                warn!(stream = %stream.name, %error, "shard discovery failed; retrying at the next interval")
            }
        }
    }
    let listing = match context.store.list_table().await {
        Ok(listing) => listing,
        Err(error) => {
            warn!(%error, "shard discovery failed; retrying at the next interval");
            return Ok(Vec::new());
        }
    };
    let mut candidates = Vec::new();
    for (stream, shards) in listed {
        match create_missing_leases(&*context.store, stream, shards, &listing).await {
            Ok(report) => {
                if at_start {
                    tracing::info!(
                        stream = %stream.name,
                        shards = report.shards.len(),
                        created = report.created.len(),
                        "shards discovered"
                    );
                }
                candidates.extend(cleanable(&report.leases, &report.shards));
            }
            Err(error) => {
                warn!(stream = %stream.name, %error, "shard discovery failed; retrying at the next interval")
            }
        }
    }
    let mut consumed: BTreeSet<_> = streams
        .iter()
        .filter_map(|stream| stream.identifier.clone())
        .collect();
    if consumed.is_empty() {
        return Ok(candidates);
    }
    // Streams other live workers consume (a rolling deploy that changes
    // the list) are not former streams.
    match context.store.list_heartbeats().await {
        Ok(heartbeats) => {
            let announced = heartbeats
                .iter()
                .filter_map(|heartbeat| heartbeat.streams.as_ref())
                .flatten()
                .filter_map(|text| kcl_lease::StreamIdentifier::parse(text).ok());
            consumed.extend(announced);
            candidates.extend(of_former_streams(&listing.leases, &consumed, &deleted));
        }
        Err(error) => {
            warn!(%error, "could not read which streams the workers consume; former streams are cleaned up at a later pass");
        }
    }
    Ok(candidates)
}

/// What Kinesis says of a consumed stream now, against what it said at
/// start.
enum Identity {
    /// The same stream (or an application of one stream: not checked).
    Same,
    /// Gone: a former stream once that has lasted the delay.
    Gone,
    /// Kinesis could not be asked: the stream is left alone this pass.
    Unknown,
    /// Another stream under the name: deleted and created again.
    Recreated(SchedulerError),
}

/// Checks a stream of a multi-stream application against Kinesis's
/// description of it at start.
async fn identity(context: &ConsumerContext, stream: &ConsumedStream) -> Identity {
    let Some(was) = &stream.described else {
        return Identity::Same;
    };
    match describe(&*context.kinesis, &stream.name).await {
        Ok(now) if now == *was => Identity::Same,
        Ok(now) => {
            error!(stream = %stream.name, %was, %now, "the stream was deleted and created again; stopping");
            Identity::Recreated(SchedulerError::StreamRecreated {
                stream: stream.name.clone(),
                was: was.to_string(),
                now: now.to_string(),
            })
        }
        Err(KinesisError::NotFound { .. }) => Identity::Gone,
        Err(error) => {
            warn!(stream = %stream.name, %error, "could not describe the stream; its shards are discovered at the next interval");
            Identity::Unknown
        }
    }
}
