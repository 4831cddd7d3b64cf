//! What happens when a processor fails a batch.

use std::time::Duration;

use crate::backoff::BackoffConfig;
use crate::consumer::DeadLetter;

/// How a batch the processor failed on (an error or a panic) is retried.
///
/// The default retries forever: a record is never skipped unless the
/// application chooses [`SkipBatchAfter`](Self::SkipBatchAfter), and then
/// every skipped batch is logged at `ERROR` with its shard and sequence
/// numbers and counted. [`DeadLetterAfter`](Self::DeadLetterAfter) moves
/// past a failing batch too, but only once its records are written to a
/// dead-letter stream.
#[derive(Clone, Debug, PartialEq)]
pub enum ProcessorRetryPolicy {
    /// Deliver the batch again after each failure, forever, backing off
    /// between attempts (`max_attempts` of the backoff is ignored).
    RetryForever {
        /// Delays between attempts.
        backoff: BackoffConfig,
    },
    /// Give up after `attempts` failed attempts at a batch and move past it:
    /// its records are lost to the application (logged and counted).
    SkipBatchAfter {
        /// Attempts in all before the batch is skipped (at least 1).
        attempts: u32,
        /// Delays between attempts.
        backoff: BackoffConfig,
    },
    /// Give up after `attempts` failed attempts at a batch, write its
    /// records to a dead-letter stream, and move past the batch only once
    /// every one of them is written there. Writing is retried (with
    /// `backoff`) until it succeeds or the lease is lost: no record is
    /// skipped without a copy. Each dead-lettered batch is logged at
    /// `ERROR` and counted.
    DeadLetterAfter {
        /// Attempts in all before the batch is dead-lettered (at least 1).
        attempts: u32,
        /// Delays between attempts, and between attempts at writing the
        /// dead letters.
        backoff: BackoffConfig,
        /// Where the records go.
        destination: DeadLetter,
    },
}

impl Default for ProcessorRetryPolicy {
    /// Retry forever, 200 ms doubling up to 30 s.
    fn default() -> Self {
        Self::RetryForever {
            backoff: BackoffConfig {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(30),
                multiplier: 2.0,
                max_attempts: None,
            },
        }
    }
}

impl ProcessorRetryPolicy {
    /// The delays between attempts, with the attempt limit this policy sets.
    pub fn backoff(&self) -> BackoffConfig {
        match self {
            Self::RetryForever { backoff } => backoff.clone().without_limit(),
            Self::SkipBatchAfter { attempts, backoff }
            | Self::DeadLetterAfter {
                attempts, backoff, ..
            } => BackoffConfig {
                max_attempts: Some((*attempts).max(1)),
                ..backoff.clone()
            },
        }
    }
}
