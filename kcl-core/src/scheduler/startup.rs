//! What a worker does before it processes anything ([`start_up`]): it
//! resolves the identifiers of the streams it consumes and checks, before
//! it writes anything, that the lease table is one it may use (an
//! application of the same kind, the same stream epochs); then it creates
//! the tables, the first leases and the fan-out consumers.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use kcl_lease::{LeaseCoordinator, LeaseScope, LeaseStore, LeaseStoreError, StreamIdentifier};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{RetrievalMode, SchedulerConfig, SchedulerError, maintenance};
use crate::backoff::{Backoff, retry_with_backoff};
use crate::consumer::ConsumerContext;
use crate::kinesis::Kinesis;
use crate::streams::{ConsumedStream, ConsumedStreams, StreamsConfig};

/// Everything a worker does before it processes anything, in order:
/// resolves its streams, refuses a table of another kind, creates the
/// tables if absent, scopes the coordinator to its streams (announcing them
/// in a first heartbeat), discovers the shards and creates their leases,
/// and registers the enhanced fan-out consumers. `None` if the worker was
/// told to stop meanwhile (nothing is held yet then).
pub(super) async fn start_up(
    config: &SchedulerConfig,
    context: &ConsumerContext,
    coordinator: &mut LeaseCoordinator<dyn LeaseStore>,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<ConsumedStreams>>, SchedulerError> {
    let streams = tokio::select! {
        () = shutdown.cancelled() => return Ok(None),
        streams = resolve_streams(config, &*context.kinesis) => streams?,
    };
    refuse_a_table_of_another_kind(
        &*context.store,
        &config.application_name,
        config.streams.is_multi_stream(),
        &streams,
    )
    .await?;
    context
        .store
        .ensure_tables()
        .await
        .map_err(SchedulerError::LeaseTable)?;
    // An eviction lasts as long as the process it was asked of: a worker
    // started again under the same id takes leases.
    if let Err(error) = context
        .store
        .request_eviction(&config.lease.worker_id, false)
        .await
    {
        warn!(%error, "could not clear an earlier eviction of this worker id");
    }
    if config.streams.is_multi_stream() {
        let identifiers: BTreeSet<StreamIdentifier> = streams
            .iter()
            .filter_map(|stream| stream.identifier.clone())
            .collect();
        coordinator.set_scope(LeaseScope::MultiStream(identifiers));
        // Announce the streams before creating any lease of them, so that
        // no worker of another list takes a new stream for a former one.
        if let Err(error) = coordinator.heartbeat(kcl_lease::deadline::now).await {
            warn!(%error, "could not write the first heartbeat; the coordinator retries");
        }
    }
    maintenance::discover(context, &streams, true).await?;
    if let RetrievalMode::FanOut { consumer_name } = &config.retrieval_mode {
        let name = consumer_name.as_deref().unwrap_or(&config.application_name);
        for stream in streams.iter() {
            let registering = crate::retrieval::fanout::register_consumer(
                &*context.kinesis,
                &stream.name,
                name,
                &context.kinesis_backoff,
            );
            let arn = tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                registered = registering => registered.map_err(|source| SchedulerError::Stream {
                    stream: stream.name.clone(),
                    source,
                })?,
            };
            info!(stream = %stream.name, consumer = %name, %arn, "reading through enhanced fan-out");
            let _ = stream.fanout_consumer.set(arn);
        }
    }
    Ok(Some(streams))
}

/// Refuses to start on a lease table of another kind of application,
/// before anything is written (a table that does not exist yet is fine):
/// an application of one stream on a table that holds a multi-stream
/// application's leases (or the stream information of one of its
/// streams), and a multi-stream application on a table that holds leases
/// keyed by shard id.
async fn refuse_a_table_of_another_kind(
    store: &dyn LeaseStore,
    table: &str,
    multi_stream: bool,
    streams: &ConsumedStreams,
) -> Result<(), SchedulerError> {
    let listing = match store.list_table().await {
        Ok(listing) => listing,
        Err(LeaseStoreError::Refused { code, .. }) if code == "ResourceNotFoundException" => {
            return Ok(());
        }
        Err(error) => return Err(SchedulerError::LeaseTable(error)),
    };
    let other: Vec<&str> = if multi_stream {
        listing
            .leases
            .iter()
            .filter(|lease| lease.stream.is_none())
            .map(|lease| lease.key.as_str())
            .collect()
    } else {
        listing
            .leases
            .iter()
            .filter(|lease| lease.stream.is_some())
            .map(|lease| lease.key.as_str())
            .chain(
                listing
                    .skipped
                    .iter()
                    .filter(|item| item.is_multi_stream_information())
                    .map(|item| item.key.as_str()),
            )
            .collect()
    };
    let Some(example) = other.first() else {
        return refuse_another_epoch(&listing, table, streams);
    };
    let (table, count, example) = (table.to_owned(), other.len(), (*example).to_owned());
    Err(if multi_stream {
        SchedulerError::SingleStreamTable {
            table,
            count,
            example,
        }
    } else {
        SchedulerError::MultiStreamTable {
            table,
            count,
            example,
        }
    })
}

/// Refuses to start while the table holds unfinished leases of a consumed
/// stream's name and account under another creation epoch: the checkpoints of a Java application that chose its own epoch,
/// or of the stream before it was deleted and created again. Neither may be
/// left behind silently.
fn refuse_another_epoch(
    listing: &kcl_lease::LeaseTableListing,
    table: &str,
    streams: &ConsumedStreams,
) -> Result<(), SchedulerError> {
    for stream in streams.iter() {
        let Some(ours) = &stream.identifier else {
            continue;
        };
        let others: Vec<&kcl_lease::Lease> = listing
            .leases
            .iter()
            .filter(|lease| {
                lease.stream.as_ref().is_some_and(|theirs| {
                    theirs.account_id == ours.account_id
                        && theirs.stream_name == ours.stream_name
                        && theirs != ours
                }) && !lease.is_finished()
            })
            .collect();
        if let Some(first) = others.first() {
            return Err(SchedulerError::StreamEpochMismatch {
                table: table.to_owned(),
                name: ours.stream_name.clone(),
                consumed_as: ours.to_string(),
                found: first
                    .stream
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                count: others.len(),
            });
        }
    }
    Ok(())
}

/// Each configured stream as its consumers use it: for a multi-stream
/// application, its identifier read from Kinesis (retried with backoff
/// while Kinesis throttles or fails).
async fn resolve_streams(
    config: &SchedulerConfig,
    kinesis: &dyn Kinesis,
) -> Result<Arc<ConsumedStreams>, SchedulerError> {
    let configs = match &config.streams {
        StreamsConfig::Single(name) => {
            let stream = ConsumedStream::single(name.clone(), config.initial_position);
            return Ok(Arc::new(ConsumedStreams::new(vec![Arc::new(stream)])));
        }
        StreamsConfig::Multi(configs) => configs,
    };
    let mut streams = Vec::new();
    for stream in configs {
        let backoff = Backoff::new(config.kinesis_backoff.clone().without_limit());
        let resolved = retry_with_backoff("DescribeStreamSummary", backoff, || async {
            match stream.resolve(kinesis, config.initial_position).await {
                Ok(resolved) => ControlFlow::Break(Ok(resolved)),
                Err(error) if error.is_retryable() => {
                    warn!(stream = %stream.name(), %error, "describing the stream failed; retrying");
                    ControlFlow::Continue(error)
                }
                Err(error) => ControlFlow::Break(Err(error)),
            }
        })
        .await
        .map_err(|exhausted| exhausted.error)
        .map_err(|source| SchedulerError::Stream {
            stream: stream.name().to_owned(),
            source,
        })?;
        if let Some(identifier) = &resolved.identifier {
            info!(stream = %stream.name(), %identifier, "consuming stream");
        }
        streams.push(Arc::new(resolved));
    }
    Ok(Arc::new(ConsumedStreams::new(streams)))
}
