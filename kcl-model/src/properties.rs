//! What the protocol promises, as properties of every reachable state.

use stateright::Property;

use crate::protocol::LeaseModel;
use crate::state::{C, Consumer, P, Pos, State};

/// Never two workers processing one shard at the same time: at most one
/// consumer per shard is entitled to process it, because it runs on a lease
/// published in its worker's current epoch before the deadline, or because
/// a batch it began is still in flight (until the consumer drops it, at most
/// the slop after the deadline).
pub const EXCLUSIVE: &str = "never two workers process one shard";
/// A stored checkpoint never moves back.
pub const CHECKPOINT_MONOTONE: &str = "a checkpoint never moves back";
/// No record is skipped: a stored checkpoint never covers a record that no
/// processor processed.
pub const NOTHING_SKIPPED: &str = "a checkpoint never passes an unprocessed record";
/// A child shard is never processed before its parent was checkpointed at
/// its end.
pub const PARENTS_FIRST: &str = "a child is never processed before its parent ends";
/// With no faults, every shard is processed and checkpointed, and every
/// handoff asked for completes (a stopping worker's leases end up with the
/// others).
pub const ALL_DONE: &str = "every shard is processed and every handoff completes";
/// The model reaches a completed handoff (so the properties above are not
/// vacuous for handoffs).
pub const SOME_HANDOFF: &str = "a handoff completes";
/// The model reaches a failover: a lease processed by a second worker
/// after its first owner crashed or stalled.
pub const SOME_FAILOVER: &str = "a lease fails over";

/// Every property the model is checked against.
pub fn all() -> Vec<Property<LeaseModel>> {
    vec![
        Property::always(EXCLUSIVE, |_, state: &State| exclusive(state)),
        Property::always(CHECKPOINT_MONOTONE, |_, state: &State| {
            state.broken != Some(CHECKPOINT_MONOTONE)
        }),
        Property::always(NOTHING_SKIPPED, |_, state: &State| {
            state.broken != Some(NOTHING_SKIPPED)
        }),
        Property::always(PARENTS_FIRST, |_, state: &State| {
            state.broken != Some(PARENTS_FIRST)
        }),
        Property::eventually(ALL_DONE, |model: &LeaseModel, state: &State| {
            // Only promised without faults and disruptions (a crashed or
            // cut-off worker's leases wait for the failover time, which may
            // fall past the model's horizon).
            model.config.adversary > 0 || all_done(state)
        }),
        Property::sometimes(SOME_HANDOFF, |_, state: &State| state.handoffs > 0),
        Property::sometimes(SOME_FAILOVER, |_, state: &State| state.failovers > 0),
    ]
}

/// At most one worker per shard is entitled to process it: its consumer
/// runs on a lease published in its worker's current epoch, before the
/// deadline; or a batch it began is still in flight (until the consumer
/// drops it, at most the slop after the deadline; a batch past its drop
/// time is dead, since the consumer checks the clock before the processor
/// can go on).
fn exclusive(state: &State) -> bool {
    let now = state.now;
    [P, C].into_iter().all(|lease| {
        state
            .workers
            .iter()
            .filter(|worker| match worker.consumers[lease] {
                Consumer::Running {
                    epoch, in_batch, ..
                } => {
                    let open = worker.epoch == epoch && worker.until.is_some_and(|u| now < u);
                    open || in_batch.is_some_and(|drop_by| now < drop_by)
                }
                _ => false,
            })
            .count()
            <= 1
    })
}

fn all_done(state: &State) -> bool {
    let draining = |w: Option<u8>| w.is_some_and(|w| state.workers[usize::from(w)].draining);
    state.leases[P].checkpoint == Pos::ShardEnd
        && state.leases[C].checkpoint == Pos::Record(1)
        // A handoff asked for just before the lease's shard ended needs no
        // completing: a finished lease is never processed again.
        && state
            .leases
            .iter()
            .all(|row| row.handing_over.is_none() || row.checkpoint == Pos::ShardEnd)
        && !draining(state.leases[C].owner)
}
