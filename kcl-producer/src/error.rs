//! What can go wrong: per record ([`SendError`]), per `PutRecords` call
//! ([`PutError`], from a [`Sink`](crate::Sink)) and in the settings
//! ([`ConfigError`]).

use std::time::Duration;

/// Why a record was not written. Every record the producer accepts ends in
/// either a [`Written`](crate::Written) or one of these: none is dropped
/// without its sender being told.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Data plus partition key is over Kinesis's 1 MiB limit.
    #[error(
        "record too large: {size} bytes of data and partition key, the limit is {limit}; split \
         it, or store the data elsewhere and send a reference"
    )]
    TooLarge {
        /// The record's data plus partition key, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The partition key is empty or longer than 256 characters.
    #[error("partition key of {chars} characters: Kinesis takes 1 to 256")]
    InvalidPartitionKey {
        /// Its length in Unicode characters.
        chars: usize,
    },
    /// The stream does not exist (or not in this region and account).
    #[error("stream {stream} not found ({message}): create it, or check its name and region")]
    StreamNotFound {
        /// The stream written to.
        stream: String,
        /// Kinesis's message.
        message: String,
    },
    /// The credentials may not write to the stream (or use its KMS key).
    #[error(
        "access denied writing to {stream} ({message}): grant kinesis:PutRecords (and \
         kinesis:ListShards when aggregating), and kms:GenerateDataKey for an encrypted stream"
    )]
    AccessDenied {
        /// The stream written to.
        stream: String,
        /// Kinesis's message.
        message: String,
    },
    /// Kinesis refused the record for a reason retrying does not change.
    #[error("Kinesis rejected the record ({code}): {message}")]
    Rejected {
        /// Kinesis's error code.
        code: String,
        /// Kinesis's message.
        message: String,
    },
    /// Retried until the record's time to live ran out.
    #[error(
        "not written within the record time to live ({ttl:?}) after {attempts} attempts; last \
         error: {last_error}"
    )]
    Expired {
        /// The configured time to live.
        ttl: Duration,
        /// `PutRecords` calls that carried the record.
        attempts: u32,
        /// Why the last attempt failed.
        last_error: String,
    },
    /// The record was sent after [`Producer::close`](crate::Producer::close),
    /// or the producer's task is gone.
    #[error("the producer is closed: it takes no more records")]
    Closed,
}

/// How a failed `PutRecords` call (or `ListShards` call) is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutErrorKind {
    /// Throttling, a server error, a timeout or a lost connection: the call
    /// is made again after a backoff.
    Retryable,
    /// The stream does not exist.
    StreamNotFound,
    /// The caller may not write to the stream.
    AccessDenied,
    /// Any other error retrying does not change.
    Rejected,
}

/// A `PutRecords` or `ListShards` call that failed as a whole.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?} ({code}): {message}")]
pub struct PutError {
    /// How the producer handles it.
    pub kind: PutErrorKind,
    /// The service's error code, or a short name for a client-side failure
    /// (`Timeout`, `Dispatch`).
    pub code: String,
    /// What went wrong.
    pub message: String,
}

impl PutError {
    /// An error the call is retried after.
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: PutErrorKind::Retryable,
            code: code.into(),
            message: message.into(),
        }
    }

    /// The [`SendError`] of each record of a call that failed with `self`,
    /// when it is not retried.
    pub(crate) fn for_record(&self, stream: &str) -> SendError {
        match self.kind {
            PutErrorKind::StreamNotFound => SendError::StreamNotFound {
                stream: stream.to_owned(),
                message: self.message.clone(),
            },
            PutErrorKind::AccessDenied => SendError::AccessDenied {
                stream: stream.to_owned(),
                message: self.message.clone(),
            },
            PutErrorKind::Retryable | PutErrorKind::Rejected => SendError::Rejected {
                code: self.code.clone(),
                message: self.message.clone(),
            },
        }
    }
}

/// Settings the producer cannot run with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid producer setting {setting}: {reason}")]
pub struct ConfigError {
    /// The setting (the field of [`ProducerConfig`](crate::ProducerConfig)).
    pub setting: &'static str,
    /// What is wrong and what it must be.
    pub reason: String,
}
