//! The shard consumer's lifecycle as a plain state machine: which step
//! follows which, decided apart from any I/O.
//!
//! ```text
//!  WaitingOnParents ──ParentsDone──▶ Initializing
//!  Initializing ──Initialized──▶ Processing ──BatchDone──▶ Processing
//!       ▲                          │
//!       └──ProcessorRestarted──────┤
//!                                  ├─ShardEndReached──▶ ShuttingDown(ShardEnd)
//!  (any running state) ─LeaseLost──▶ ShuttingDown(LeaseLost)
//!  (any running state) ─ShutdownRequested─▶ ShuttingDown(Requested)
//!  ShuttingDown(reason) ──ShutdownDone──▶ Stopped(reason)
//! ```
//!
//! A child shard waits until every parent shard has been read to its end
//! and checkpointed (or is gone from the stream), so per-key order holds
//! across splits and merges.
//!
//! A lost lease overrides any other way of shutting down: once another
//! worker owns the shard, nothing may be checkpointed. A requested shutdown
//! does not interrupt a shard end: storing `SHARD_END` is the better
//! checkpoint.

/// Why a shard consumer stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShutdownReason {
    /// Another worker has the lease; the processor is told with `lease_lost`.
    LeaseLost,
    /// The shard was read to its end; the processor checkpoints `SHARD_END`.
    ShardEnd,
    /// The worker is stopping or handing the shard over; the processor may
    /// checkpoint, then the lease is released.
    Requested,
}

/// Where a shard consumer is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerState {
    /// Waiting until the parent shards are finished.
    WaitingOnParents,
    /// Creating the processor and calling `initialize`.
    Initializing,
    /// Delivering batches to the processor.
    Processing,
    /// Telling the processor why it stops.
    ShuttingDown(ShutdownReason),
    /// Done.
    Stopped(ShutdownReason),
}

/// What happened to a shard consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerEvent {
    /// Every parent shard is finished (or gone).
    ParentsDone,
    /// `initialize` succeeded.
    Initialized,
    /// A batch was processed (or skipped by the retry policy).
    BatchDone,
    /// The processor panicked: a new one starts from the last checkpoint.
    ProcessorRestarted,
    /// Every record of the shard has been delivered.
    ShardEndReached,
    /// The lease moved to another worker.
    LeaseLost,
    /// The worker is stopping, or another worker asked for the lease.
    ShutdownRequested,
    /// The processor has been told why it stops.
    ShutdownDone,
}

/// An event that cannot happen in a state (a bug in the consumer's driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("shard consumer: {event:?} cannot happen while {state:?}")]
pub struct InvalidTransition {
    /// The state.
    pub state: ConsumerState,
    /// The event.
    pub event: ConsumerEvent,
}

impl ConsumerState {
    /// The state after `event`.
    pub fn on(self, event: ConsumerEvent) -> Result<Self, InvalidTransition> {
        use ConsumerEvent as E;
        use ConsumerState as S;
        use ShutdownReason as R;
        let next = match (self, event) {
            (S::Stopped(reason), _) => S::Stopped(reason),
            (S::ShuttingDown(reason), E::ShutdownDone) => S::Stopped(reason),
            (S::ShuttingDown(_), E::LeaseLost) => S::ShuttingDown(R::LeaseLost),
            (S::ShuttingDown(reason), E::ShutdownRequested) => S::ShuttingDown(reason),
            (S::WaitingOnParents | S::Initializing | S::Processing, E::LeaseLost) => {
                S::ShuttingDown(R::LeaseLost)
            }
            (S::WaitingOnParents | S::Initializing | S::Processing, E::ShutdownRequested) => {
                S::ShuttingDown(R::Requested)
            }
            (S::WaitingOnParents, E::ParentsDone) => S::Initializing,
            (S::Initializing, E::Initialized) => S::Processing,
            (S::Initializing, E::ProcessorRestarted) => S::Initializing,
            (S::Processing, E::BatchDone) => S::Processing,
            (S::Processing, E::ProcessorRestarted) => S::Initializing,
            (S::Processing, E::ShardEndReached) => S::ShuttingDown(R::ShardEnd),
            (state, event) => return Err(InvalidTransition { state, event }),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConsumerEvent as E;
    use ConsumerState as S;
    use ShutdownReason as R;

    fn run(events: &[ConsumerEvent]) -> Result<ConsumerState, InvalidTransition> {
        events
            .iter()
            .try_fold(S::WaitingOnParents, |state, event| state.on(*event))
    }

    #[test]
    fn a_shard_is_processed_to_its_end() {
        let events = [
            E::ParentsDone,
            E::Initialized,
            E::BatchDone,
            E::BatchDone,
            E::ShardEndReached,
            E::ShutdownDone,
        ];
        assert_eq!(run(&events), Ok(S::Stopped(R::ShardEnd)));
    }

    #[test]
    fn a_panicking_processor_starts_again_from_initializing() {
        assert_eq!(
            run(&[E::ParentsDone, E::Initialized, E::ProcessorRestarted]),
            Ok(S::Initializing)
        );
        assert_eq!(
            run(&[
                E::ParentsDone,
                E::Initialized,
                E::ProcessorRestarted,
                E::Initialized,
                E::BatchDone
            ]),
            Ok(S::Processing)
        );
    }

    #[test]
    fn a_lost_lease_overrides_every_other_shutdown() {
        for before in [
            vec![],
            vec![E::ParentsDone],
            vec![E::ParentsDone, E::Initialized],
            vec![E::ParentsDone, E::Initialized, E::ShardEndReached],
            vec![E::ParentsDone, E::Initialized, E::ShutdownRequested],
        ] {
            let mut events = before.clone();
            events.extend([E::LeaseLost, E::ShutdownDone]);
            assert_eq!(run(&events), Ok(S::Stopped(R::LeaseLost)), "{before:?}");
        }
    }

    #[test]
    fn a_requested_shutdown_does_not_interrupt_a_shard_end() {
        let events = [
            E::ParentsDone,
            E::Initialized,
            E::ShardEndReached,
            E::ShutdownRequested,
            E::ShutdownDone,
        ];
        assert_eq!(run(&events), Ok(S::Stopped(R::ShardEnd)));
        assert_eq!(
            run(&[E::ShutdownRequested, E::ShutdownDone]),
            Ok(S::Stopped(R::Requested))
        );
    }

    #[test]
    fn impossible_events_are_refused() {
        assert!(
            run(&[E::Initialized]).is_err(),
            "not before the parents are done"
        );
        assert!(run(&[E::ParentsDone, E::BatchDone]).is_err());
        assert!(run(&[E::ParentsDone, E::ShardEndReached]).is_err());
        assert!(run(&[E::ParentsDone, E::Initialized, E::Initialized]).is_err());
        assert!(run(&[E::ParentsDone, E::Initialized, E::ParentsDone]).is_err());
        assert!(run(&[E::ShutdownDone]).is_err());
        assert_eq!(
            run(&[E::ShutdownRequested, E::ShutdownDone, E::ParentsDone]),
            Ok(S::Stopped(R::Requested)),
            "a stopped consumer stays stopped"
        );
    }
}
