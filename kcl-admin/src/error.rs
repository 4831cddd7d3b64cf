//! What can stop an operator command.

use kcl_core::kinesis::KinesisError;
use kcl_lease::LeaseStoreError;

/// Why a command failed or refused. Nothing was changed when it is
/// returned, unless the variant says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The lease table does not exist.
    #[error(
        "no lease table named {application:?}: check --application-name (the application's name \
         is its lease table's name) and the AWS region"
    )]
    UnknownApplication {
        /// The application name given.
        application: String,
    },
    /// The command needs the stream and none was given.
    #[error("this command needs the stream: give --stream-name (or KCL_STREAM_NAME)")]
    StreamNeeded,
    /// A time that is neither RFC 3339 nor epoch milliseconds.
    #[error(
        "{text:?} is not a time: {reason} (give RFC 3339, e.g. 2026-12-06T10:00:00Z, or milliseconds since the Unix epoch)"
    )]
    InvalidTime {
        /// The text given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A reset to a time that has not come yet.
    #[error(
        "{at} is in the future (now {now}): no record is at or after it yet; to skip to new records, use --latest"
    )]
    TimestampInFuture {
        /// The time given.
        at: String,
        /// This machine's time.
        now: String,
    },
    /// Shards named that neither the stream nor the lease table knows.
    #[error("stream {stream} has no shard {}: see `kcl-admin lineage`", shards.join(", "))]
    UnknownShards {
        /// The stream.
        stream: String,
        /// The shards not found.
        shards: Vec<String>,
    },
    /// Kinesis listed no shard (a stream always has an open one).
    #[error("stream {stream} lists no shards; nothing was changed, try again")]
    NoShards {
        /// The stream.
        stream: String,
    },
    /// The lease table has no lease of the stream.
    #[error(
        "application {application} has no leases of stream {stream}: check --stream-name, or start a worker first"
    )]
    NoLeases {
        /// The application.
        application: String,
        /// The stream.
        stream: String,
    },
    /// A reset was asked with no worker running.
    #[error(
        "no worker of {application} is running (no heartbeat): a reset moves a live group. Check --application-name, or give --while-stopped to reset a stopped group (its workers start from the new position)"
    )]
    NoWorkers {
        /// The application.
        application: String,
    },
    /// A lease changed under every attempt to reset it. The leases before
    /// it (parents first) were reset.
    #[error(
        "lease {lease} changed under every attempt to reset it; the shards before it were reset: run the same reset again to finish it"
    )]
    KeptChanging {
        /// The lease.
        lease: String,
    },
    /// The worker named has no heartbeat in the application.
    #[error("{application} has no worker {worker:?} with a heartbeat (workers now: {})", if known.is_empty() { "none".to_owned() } else { known.join(", ") })]
    UnknownWorker {
        /// The application.
        application: String,
        /// The worker named.
        worker: String,
        /// The workers with a heartbeat.
        known: Vec<String>,
    },
    /// The lease table could not be read or written.
    #[error("lease table: {0}")]
    LeaseTable(#[source] LeaseStoreError),
    /// Kinesis refused or failed a call.
    #[error("stream {stream}: {source}")]
    Stream {
        /// The stream.
        stream: String,
        /// What Kinesis said.
        #[source]
        source: KinesisError,
    },
}

impl AdminError {
    /// A lease-table error, recognising a missing table.
    pub(crate) fn from_store(application: &str, error: LeaseStoreError) -> Self {
        match &error {
            LeaseStoreError::Refused { code, .. } if code == "ResourceNotFoundException" => {
                Self::UnknownApplication {
                    application: application.to_owned(),
                }
            }
            _ => Self::LeaseTable(error),
        }
    }
}
