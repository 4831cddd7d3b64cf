//! Kinesis calls retried with backoff and jitter, through the framework's
//! one backoff component ([`kcl_lease::backoff`]).

use std::future::Future;
use std::ops::ControlFlow;

use kcl_lease::backoff::{Backoff, BackoffConfig, retry_with_backoff};

use super::KinesisError;

/// Runs `call` until it succeeds, fails with an error that retrying will
/// not fix, or `backoff`'s attempts are used up; throttling and transient
/// failures are retried.
pub async fn with_backoff<T, F, Fut>(
    request: &str,
    backoff: &BackoffConfig,
    mut call: F,
) -> Result<T, KinesisError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KinesisError>>,
{
    retry_with_backoff(request, Backoff::new(backoff.clone()), || {
        let attempt = call();
        async move {
            match attempt.await {
                Err(error) if error.is_retryable() => ControlFlow::Continue(error),
                done => ControlFlow::Break(done),
            }
        }
    })
    .await
    .map_err(|exhausted| exhausted.error)
}
