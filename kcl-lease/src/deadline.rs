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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
        /// Set once any clone found the deadline passed.
        found_passed: Arc<AtomicBool>,
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
        Self(Inner::Lease {
            epoch,
            liveness,
            found_passed: Arc::default(),
        })
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
            Inner::Lease {
                epoch, liveness, ..
            } => {
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
        let open = match self.until() {
            Ok(None) => true,
            Ok(Some(until)) => at < until,
            Err(Lapsed) => false,
        };
        if !open {
            self.note_passed();
        }
        open
    }

    /// Whether this deadline (or a clone of it) was ever found passed: the
    /// consumer that holds it stopped because of it. (A heartbeat may have
    /// moved the deadline on a moment later, in the same epoch: then the
    /// shard may be processed again.)
    pub fn was_found_passed(&self) -> bool {
        match &self.0 {
            Inner::Unlimited => false,
            Inner::Lease { found_passed, .. } => found_passed.load(Ordering::SeqCst),
        }
    }

    fn note_passed(&self) {
        if let Inner::Lease { found_passed, .. } = &self.0 {
            found_passed.store(true, Ordering::SeqCst);
        }
    }

    /// Whether processing is still allowed now.
    pub fn is_open(&self) -> bool {
        self.is_open_at(now())
    }

    /// Resolves once processing is no longer allowed. Every time it is
    /// polled it reads the clock and the deadline as they are now, so a
    /// task that was not scheduled for a while (a paused process, a busy
    /// runtime) sees a passed deadline before anything else it waits on makes
    /// progress, provided it polls this first (a `biased` select), and a
    /// deadline a heartbeat moved on meanwhile is never judged by its old
    /// value.
    pub async fn passed(&self) {
        Passed {
            deadline: self.clone(),
            timer: Box::pin(tokio::time::sleep_until(now().into())),
            armed: None,
        }
        .await
    }
}

struct Lapsed;

/// Resolves once a deadline has passed. It needs no wake-up when the
/// deadline moves: a deadline only moves later within its epoch (the timer
/// then fires early, and is set again), and an epoch ends only once its
/// deadline has passed (when the timer fires anyway).
struct Passed {
    deadline: ProcessingDeadline,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The moment the timer is set for.
    armed: Option<Instant>,
}

impl Future for Passed {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let until = match self.deadline.until() {
                Ok(Some(until)) => until,
                // No limit: never.
                Ok(None) => return Poll::Pending,
                Err(Lapsed) => {
                    self.deadline.note_passed();
                    return Poll::Ready(());
                }
            };
            if now() >= until {
                self.deadline.note_passed();
                return Poll::Ready(());
            }
            if self.armed != Some(until) {
                self.armed = Some(until);
                self.timer.as_mut().reset(until.into());
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_wait_not_polled_while_the_deadline_moved_judges_by_the_new_one() {
        let t0 = now();
        let (sender, receiver) = watch::channel(Liveness {
            epoch: 0,
            until: Some(t0 + Duration::from_secs(5)),
        });
        let deadline = ProcessingDeadline::new(0, receiver);
        let waiting = deadline.passed();
        tokio::pin!(waiting);
        let quick = Duration::from_millis(1);
        assert!(tokio::time::timeout(quick, &mut waiting).await.is_err());
        // A heartbeat moves the deadline on; the waiter is next polled past
        // the old one (its thread was busy).
        sender.send_modify(|l| l.until = Some(t0 + Duration::from_secs(8)));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            tokio::time::timeout(quick, &mut waiting).await.is_err(),
            "judged by the old deadline"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(tokio::time::timeout(quick, &mut waiting).await.is_ok());
    }
}
