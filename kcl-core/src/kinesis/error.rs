//! What can go wrong when calling Kinesis.

/// An error from a [`Kinesis`](super::Kinesis) call, classified by what the
/// caller should do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KinesisError {
    /// Kinesis asked to slow down (`ProvisionedThroughputExceededException`,
    /// `LimitExceededException`, HTTP 429). Retry after a backoff.
    #[error("{operation} throttled: {message}")]
    Throttled {
        /// The operation.
        operation: &'static str,
        /// Kinesis's message.
        message: String,
    },
    /// The shard iterator is older than five minutes. Get a new one after the
    /// last record read.
    #[error("shard iterator expired: {message}")]
    ExpiredIterator {
        /// Kinesis's message.
        message: String,
    },
    /// A failure that may pass: a 5xx, a timeout, a dropped connection.
    /// Retry after a backoff.
    #[error("{operation} failed: {message}")]
    Transient {
        /// The operation.
        operation: &'static str,
        /// What happened.
        message: String,
    },
    /// The stream or shard does not exist (or is being deleted). Check the
    /// stream name; a shard past retention is gone for good.
    #[error("{operation}: not found: {message}")]
    NotFound {
        /// The operation.
        operation: &'static str,
        /// Kinesis's message.
        message: String,
    },
    /// Kinesis refused the request for a reason retrying will not fix
    /// (permissions, validation). Check the configuration and IAM policy.
    #[error("{operation} refused ({code}): {message}")]
    Refused {
        /// The operation.
        operation: &'static str,
        /// Kinesis's error code (e.g. `AccessDeniedException`).
        code: String,
        /// Kinesis's message.
        message: String,
    },
    /// Kinesis answered with something the framework cannot use (a missing
    /// field, a malformed sequence number).
    #[error("{operation} returned an unusable answer: {message}")]
    InvalidResponse {
        /// The operation.
        operation: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl KinesisError {
    /// Whether the same call may succeed after a backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throttled { .. } | Self::Transient { .. })
    }
}
