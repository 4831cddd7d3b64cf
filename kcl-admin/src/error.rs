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
