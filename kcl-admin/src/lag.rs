//! How far a consumer group is behind its streams: for each unfinished
//! lease, one `GetRecords` of one record after the group's checkpoint. The
//! shard's lag is the age of that record (now less its arrival time): how
//! long the oldest record the group has not processed has waited. With no
//! record there, it is what Kinesis says (`MillisBehindLatest`, 0 when
//! caught up). No worker needs to run; nothing is written.

use std::fmt::Write as _;
use std::future::Future;
use std::ops::ControlFlow;
use std::time::SystemTime;

use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_core::backoff::{Backoff, BackoffConfig, retry_with_backoff};
use kcl_core::kinesis::{Kinesis, KinesisError, StartingPosition};
use kcl_lease::{Lease, LeaseStore};
use serde::Serialize;

use crate::AdminError;
use crate::status::{checkpoint_text, short};

/// One shard's lag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardLag {
    /// The stream.
    pub stream: String,
    /// The shard.
    pub shard: String,
    /// The group's checkpoint in the shard.
    pub checkpoint: String,
    /// How long the first record after the checkpoint has waited, in
    /// milliseconds (0: caught up).
    pub millis_behind_latest: u64,
}

/// The group's lag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lag {
    /// Every unfinished lease's shard.
    pub shards: Vec<ShardLag>,
    /// The largest lag of any shard: how old the oldest record not yet
    /// processed is, about.
    pub max_millis_behind_latest: u64,
    /// The shards' lags added up.
    pub total_millis_behind_latest: u64,
}

/// Where a reader of `lease` would begin: after its checkpoint, or where
/// its initial position says.
pub fn reading_position(lease: &Lease) -> StartingPosition {
    match &lease.checkpoint {
        // Part of an aggregate was processed: the aggregate is read again.
        ExtendedSequenceNumber::Record {
            sequence,
            sub_sequence,
        } if *sub_sequence > 0 => StartingPosition::AtSequenceNumber(sequence.to_string()),
        ExtendedSequenceNumber::Record { sequence, .. } => {
            StartingPosition::AfterSequenceNumber(sequence.to_string())
        }
        ExtendedSequenceNumber::Latest => match lease.start_timestamp {
            Some(at) => StartingPosition::AtTimestamp(at),
            None => StartingPosition::Latest,
        },
        // Without the time recorded (nothing read yet), the configured
        // time is the workers' to know: counted from the oldest record,
        // the most it can be.
        ExtendedSequenceNumber::AtTimestamp => match lease.start_timestamp {
            Some(at) => StartingPosition::AtTimestamp(at),
            None => StartingPosition::TrimHorizon,
        },
        ExtendedSequenceNumber::TrimHorizon | ExtendedSequenceNumber::ShardEnd => {
            StartingPosition::TrimHorizon
        }
    }
}

/// Runs a Kinesis call, retrying throttling and transient failures with
/// backoff (a few attempts: an operator is waiting).
pub(crate) async fn with_retries<T, F, Fut>(stream: &str, mut call: F) -> Result<T, AdminError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KinesisError>>,
{
    retry_with_backoff(stream, Backoff::new(BackoffConfig::default()), || {
        let attempt = call();
        async move {
            match attempt.await {
                Ok(value) => ControlFlow::Break(Ok(value)),
                Err(error) if error.is_retryable() => ControlFlow::Continue(error),
                Err(error) => ControlFlow::Break(Err(error)),
            }
        }
    })
    .await
    .map_err(|exhausted| AdminError::Stream {
        stream: stream.to_owned(),
        source: exhausted.error,
    })
}

/// Measures the lag of every unfinished lease of `application` in
/// `stream` (an application of one stream), or of every stream in a
/// multi-stream table (then `stream` filters, by name, when given).
pub async fn measure(
    store: &dyn LeaseStore,
    kinesis: &dyn Kinesis,
    application: &str,
    stream: Option<&str>,
) -> Result<Lag, AdminError> {
    let listing = store
        .list_table()
        .await
        .map_err(|e| AdminError::from_store(application, e))?;
    let mut shards = Vec::new();
    for lease in listing.leases.iter().filter(|l| !l.is_finished()) {
        let stream_name = match (&lease.stream, stream) {
            (Some(identifier), Some(wanted)) if identifier.stream_name != wanted => continue,
            (Some(identifier), _) => identifier.stream_name.clone(),
            (None, Some(name)) => name.to_owned(),
            (None, None) => return Err(AdminError::StreamNeeded),
        };
        let position = reading_position(lease);
        let iterator = with_retries(&stream_name, || {
            kinesis.get_shard_iterator(&stream_name, lease.shard_id(), &position)
        })
        .await?;
        let page = with_retries(&stream_name, || kinesis.get_records(&iterator, 1)).await?;
        let oldest_waiting = page
            .records
            .first()
            .and_then(|record| record.approximate_arrival_timestamp);
        let millis_behind_latest = match oldest_waiting {
            Some(arrived) => SystemTime::now()
                .duration_since(arrived)
                .map_or(0, |age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            None => page.millis_behind_latest.unwrap_or(0),
        };
        shards.push(ShardLag {
            stream: stream_name,
            shard: lease.shard_id().to_owned(),
            checkpoint: checkpoint_text(&lease.checkpoint),
            millis_behind_latest,
        });
    }
    shards.sort_by(|a, b| (&a.stream, &a.shard).cmp(&(&b.stream, &b.shard)));
    Ok(Lag {
        max_millis_behind_latest: shards
            .iter()
            .map(|s| s.millis_behind_latest)
            .max()
            .unwrap_or(0),
        total_millis_behind_latest: shards.iter().map(|s| s.millis_behind_latest).sum(),
        shards,
    })
}

impl Lag {
    /// One line per shard, then the largest and the total.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<20} {:<24} {:<20} {:>14}",
            "stream", "shard", "checkpoint", "behind (ms)"
        );
        for shard in &self.shards {
            let _ = writeln!(
                out,
                "{:<20} {:<24} {:<20} {:>14}",
                shard.stream,
                shard.shard,
                short(&shard.checkpoint),
                shard.millis_behind_latest
            );
        }
        let _ = writeln!(
            out,
            "largest {} ms, total {} ms over {} shards",
            self.max_millis_behind_latest,
            self.total_millis_behind_latest,
            self.shards.len()
        );
        out
    }
}
