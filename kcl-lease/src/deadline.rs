//! The processing deadline: how long a worker may go on processing the
//! shards it holds, judged by its own monotonic clock, and checked by each
//! consumer itself before every delivery and every checkpoint.
//!
//! The coordinator publishes a [`Liveness`]: the moment its last confirmed
//! heartbeat was sent, plus the failover time, minus the safety margin. A
//! heartbeat confirmed before that moment moves it on; once the moment has
//! passed, the worker has lost its liveness: the epoch grows, and leases
//! published in an earlier epoch may never be processed again (the worker
//! takes them anew, with a new counter, before it processes them).
//!
//! A [`ProcessingDeadline`] is one lease's view of it: the epoch the lease
//! was published in and the coordinator's liveness. Nothing the coordinator
//! or the scheduler does, however long it waits on the tables, stands
//! between the deadline and a consumer's check of it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::watch;

/// What a coordinator publishes about its own liveness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Liveness {
    /// Grows by one each time the worker lost its liveness. A lease
    /// published in an earlier epoch may not be processed any more.
    pub epoch: u64,
    /// Processing is allowed before this moment; `None` while the worker is
    /// not alive (before its first heartbeat, and after a loss).
    pub until: Option<Instant>,
}

/// How long the shards of one lease may be processed: see the module docs.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ProcessingDeadline(Inner);

#[derive(Clone, Debug)]
enum Inner {
    Unlimited,
    Lease {
        epoch: u64,
        liveness: watch::Receiver<Liveness>,
    },
}

/// The current time on the clock every deadline is judged by (tokio's, so
/// that tests on a paused clock see the same time as the coordinator).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl ProcessingDeadline {
    /// The deadline of a lease published in `epoch`, following `liveness`.
    pub fn new(epoch: u64, liveness: watch::Receiver<Liveness>) -> Self {
        Self(Inner::Lease { epoch, liveness })
    }

    /// A deadline that never passes, for consumers that run without a
    /// coordinator (benchmarks, tests of the consumer alone).
    pub fn unlimited() -> Self {
        Self(Inner::Unlimited)
    }

    /// The moment processing must stop by (`None`: no limit), or `Lapsed`
    /// if the worker lost its liveness since the lease was published.
    fn until(&self) -> Result<Option<Instant>, Lapsed> {
        match &self.0 {
            Inner::Unlimited => Ok(None),
            Inner::Lease { epoch, liveness } => {
                let live = liveness.borrow();
                match live.until {
                    Some(until) if live.epoch == *epoch => Ok(Some(until)),
                    _ => Err(Lapsed),
                }
            }
        }
    }

    /// Whether processing is still allowed at `at`.
    pub fn is_open_at(&self, at: Instant) -> bool {
        match self.until() {
            Ok(None) => true,
            Ok(Some(until)) => at < until,
            Err(Lapsed) => false,
        }
    }

    /// Whether processing is still allowed now.
    pub fn is_open(&self) -> bool {
        self.is_open_at(now())
    }

    /// Resolves once processing is no longer allowed. Every time it is
    /// polled it reads the clock first, so a task that was not scheduled
    /// for a while (a paused process, a busy runtime) sees the deadline
    /// as passed before anything else it waits on makes progress, provided
    /// it polls this first (a `biased` select).
    pub async fn passed(&self) {
        let Inner::Lease { liveness, .. } = &self.0 else {
            return std::future::pending().await;
        };
        let mut changes = liveness.clone();
        loop {
            let until = match self.until() {
                Ok(Some(until)) => until,
                Ok(None) => return std::future::pending().await,
                Err(Lapsed) => return,
            };
            tokio::select! {
                biased;
                () = ClockReaches::new(until) => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The coordinator is gone: nothing extends it.
                        return ClockReaches::new(until).await;
                    }
                }
            }
        }
    }
}

struct Lapsed;

/// Resolves once the clock reads `until` or later, checking the clock on
/// every poll (not only when the timer fires).
struct ClockReaches {
    until: Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl ClockReaches {
    fn new(until: Instant) -> Self {
        Self {
            until,
            timer: Box::pin(tokio::time::sleep_until(until.into())),
        }
    }
}

impl Future for ClockReaches {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if now() >= self.until {
            return Poll::Ready(());
        }
        self.timer.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moves_with_its_epoch_and_ends_with_a_lapse() {
        let t0 = now();
        let (sender, receiver) = watch::channel(Liveness {
            epoch: 3,
            until: Some(t0 + Duration::from_secs(5)),
        });
        let deadline = ProcessingDeadline::new(3, receiver.clone());
        assert!(deadline.is_open());
        assert!(!deadline.is_open_at(t0 + Duration::from_secs(5)));

        // A heartbeat moves it on; the wait follows.
        let waiting = {
            let deadline = deadline.clone();
            tokio::spawn(async move {
                deadline.passed().await;
                now()
            })
        };
        tokio::time::sleep(Duration::from_secs(4)).await;
        sender.send_modify(|l| l.until = Some(t0 + Duration::from_secs(8)));
        assert_eq!(waiting.await.unwrap(), t0 + Duration::from_secs(8));

        // A lapse ends it for good, even once a later epoch is alive again.
        sender.send_replace(Liveness {
            epoch: 4,
            until: Some(t0 + Duration::from_secs(60)),
        });
        assert!(!deadline.is_open());
        deadline.passed().await;
        assert!(ProcessingDeadline::new(4, receiver).is_open());
        assert!(ProcessingDeadline::unlimited().is_open());
    }
}
