//! Retries with exponential backoff and jitter: the one retry component every
//! AWS call of the project goes through (the lease table in `kcl-lease`,
//! Kinesis reads in `kcl-core`, Kinesis writes in `kcl-producer`).
//!
//! The ceiling for attempt `n` is `initial * multiplier^n`, capped at `max`;
//! the delay is drawn uniformly from the upper half of that ceiling ("equal
//! jitter"), so workers that were throttled together do not retry together,
//! and no delay collapses to zero. The randomness is injectable so tests can
//! check exact delays.
#![warn(missing_docs)]

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracing::debug;

/// How to back off between attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct BackoffConfig {
    /// The ceiling of the first delay.
    pub initial: Duration,
    /// The largest ceiling any delay can have.
    pub max: Duration,
    /// How much the ceiling grows per attempt (at least 1).
    pub multiplier: f64,
    /// How many attempts in all before giving up; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for BackoffConfig {
    /// 50 ms doubling up to 2 s, six attempts in all (about 3 s of retrying at
    /// most): short enough that a lease-table call gives up well inside a
    /// failover time and the caller's next round tries again.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            max_attempts: Some(6),
        }
    }
}

impl BackoffConfig {
    /// The same delays with no attempt limit: for calls that must succeed
    /// in the end (a stop or a lost lease ends them, not a count).
    pub fn without_limit(self) -> Self {
        Self {
            max_attempts: None,
            ..self
        }
    }

    /// The delay before retry number `retry` (1 for the first) for a caller
    /// that counts attempts itself: the delay a [`Backoff`] gives at that
    /// point, drawn from `rng`. The attempt limit is the caller's.
    pub fn delay_before_retry(&self, retry: u32, rng: &mut dyn rand::RngCore) -> Duration {
        let mut ceiling = self.initial.min(self.max);
        for _ in 1..retry {
            if ceiling >= self.max {
                break;
            }
            ceiling = ceiling.mul_f64(self.multiplier.max(1.0)).min(self.max);
        }
        jittered(ceiling, rng)
    }
}

/// A delay drawn uniformly from the upper half of `ceiling`.
fn jittered(ceiling: Duration, rng: &mut dyn rand::RngCore) -> Duration {
    let half = ceiling / 2;
    let jitter = if half.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_nanos(rng.random_range(0..=half.as_nanos() as u64))
    };
    ceiling - half + jitter
}

/// A sequence of jittered delays following a [`BackoffConfig`].
pub struct Backoff {
    config: BackoffConfig,
    ceiling: Duration,
    attempts: u32,
    rng: Box<dyn rand::RngCore + Send>,
}

impl Backoff {
    /// Delays drawn from a generator seeded by the operating system.
    pub fn new(config: BackoffConfig) -> Self {
        Self::with_rng(config, Box::new(SmallRng::from_os_rng()))
    }

    /// Delays drawn from `rng` (for tests, a seeded or constant generator).
    pub fn with_rng(config: BackoffConfig, rng: Box<dyn rand::RngCore + Send>) -> Self {
        Self {
            ceiling: config.initial,
            config,
            attempts: 1,
            rng,
        }
    }

    /// The delay before the next attempt, or `None` if the attempts are used
    /// up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self
            .config
            .max_attempts
            .is_some_and(|max| self.attempts >= max)
        {
            return None;
        }
        self.attempts += 1;
        let ceiling = self.ceiling.min(self.config.max);
        self.ceiling = ceiling.mul_f64(self.config.multiplier.max(1.0));
        Some(jittered(ceiling, &mut *self.rng))
    }

    /// How many attempts have been made or started (1 before any retry).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

/// Why [`retry_with_backoff`] stopped without a result.
#[derive(Debug)]
pub struct RetriesExhausted<E> {
    /// The last error.
    pub error: E,
    /// How many attempts were made.
    pub attempts: u32,
}

/// Runs `attempt` until it breaks with a result or the attempts are used up.
///
/// `attempt` returns `ControlFlow::Break(result)` when done (successfully or
/// with an error not worth retrying) and `ControlFlow::Continue(error)` for an
/// error worth retrying (throttling, a 5xx, a timeout). `request` names the
/// call in the logs.
pub async fn retry_with_backoff<T, E, F, Fut>(
    request: &str,
    mut backoff: Backoff,
    mut attempt: F,
) -> Result<T, RetriesExhausted<E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = ControlFlow<Result<T, E>, E>>,
{
    loop {
        match attempt().await {
            ControlFlow::Break(Ok(value)) => return Ok(value),
            ControlFlow::Break(Err(error)) => {
                return Err(RetriesExhausted {
                    error,
                    attempts: backoff.attempts(),
                });
            }
            ControlFlow::Continue(error) => match backoff.next_delay() {
                Some(delay) => {
                    debug!(request, %error, attempt = backoff.attempts(), ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    return Err(RetriesExhausted {
                        error,
                        attempts: backoff.attempts(),
                    });
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generator that always yields zero: every draw is its lower bound.
    struct Zero;

    impl rand::RngCore for Zero {
        fn next_u32(&mut self) -> u32 {
            0
        }
        fn next_u64(&mut self) -> u64 {
            0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(0);
        }
    }

    fn config(max_attempts: Option<u32>) -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            multiplier: 2.0,
            max_attempts,
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_within_the_upper_half() {
        let mut low = Backoff::with_rng(config(None), Box::new(Zero));
        let lows: Vec<_> = (0..5).map(|_| low.next_delay().unwrap()).collect();
        let ms = Duration::from_millis;
        assert_eq!(lows, [ms(50), ms(100), ms(200), ms(250), ms(250)]);

        let mut random = Backoff::with_rng(config(None), Box::new(SmallRng::seed_from_u64(7)));
        let ceilings = [100, 200, 400, 500, 500, 500];
        for ceiling in ceilings {
            let delay = random.next_delay().unwrap();
            assert!(
                delay >= ms(ceiling / 2) && delay <= ms(ceiling),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn a_delay_by_retry_number_matches_the_sequence() {
        let mut sequence = Backoff::with_rng(config(None), Box::new(Zero));
        for retry in 1..8 {
            assert_eq!(
                config(None).delay_before_retry(retry, &mut Zero),
                sequence.next_delay().unwrap(),
                "retry {retry}"
            );
        }
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let mut backoff = Backoff::with_rng(config(Some(3)), Box::new(Zero));
        assert!(backoff.next_delay().is_some());
        assert!(backoff.next_delay().is_some());
        assert_eq!(backoff.next_delay(), None);
        assert_eq!(backoff.attempts(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_reports_exhaustion() {
        let mut calls = 0;
        let result: Result<u32, _> =
            retry_with_backoff("test", Backoff::new(config(Some(5))), || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        ControlFlow::Continue("throttled")
                    } else {
                        ControlFlow::Break(Ok(n))
                    }
                }
            })
            .await;
        assert_eq!(result.unwrap(), 3);

        let exhausted =
            retry_with_backoff::<(), _, _, _>("test", Backoff::new(config(Some(2))), || async {
                ControlFlow::Continue("throttled")
            })
            .await
            .unwrap_err();
        assert_eq!(exhausted.attempts, 2);

        let fatal =
            retry_with_backoff::<(), _, _, _>("test", Backoff::new(config(None)), || async {
                ControlFlow::Break(Err("access denied"))
            })
            .await
            .unwrap_err();
        assert_eq!((fatal.error, fatal.attempts), ("access denied", 1));
    }
}
