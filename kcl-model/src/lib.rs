//! A model of the lease protocol, checked exhaustively with `stateright`:
//! every order of steps of three workers sharing two leases (a parent shard
//! and its child) is tried, with heartbeats judged by each observer's own
//! clock, the processing deadline and its margin, assignment rounds that
//! take, ask for handoffs and take own leases anew, checkpoints and
//! releases conditional on the lease counter, and an adversary that, within
//! a budget, pauses a process, stalls a worker's lease tables while its
//! Kinesis goes on (its writes land late), crashes a worker, loses a write
//! or applies one and loses its answer, and stops a worker (SIGTERM), each
//! at any moment.
//!
//! Time is in ticks. Each worker keeps up with its own schedule unless the
//! adversary holds it back: time passes once every step that is due has
//! been taken (in every order), while a processor may take its time to
//! return from a batch or to checkpoint.
//!
//! The model's state is in [`state`] and its steps in [`protocol`]. The
//! properties ([`properties`]): never two workers processing one shard;
//! a checkpoint never moves back; no record skipped (a checkpoint never
//! passes a record nobody processed); a child never processed before its
//! parent ended; and, without faults, every handoff completes and every
//! shard is processed.
//!
//! The model uses the real assignment plan ([`kcl_lease::assignment`]);
//! the rest mirrors the code in `kcl-lease` (`coordinator`, `liveness`,
//! `deadline`) and `kcl-core` (`consumer`, `scheduler`), one step per
//! awaited call. [`Variant`]s remove one rule each; the checker finds a
//! counterexample for every one of them (see the tests), which shows that
//! the properties can fail.
//!
//! Run the check and print what it found:
//!
//! ```sh
//! cargo run --release -p kcl-model --example check -- [variant]
//! ```
#![warn(missing_docs)]

pub mod properties;
pub mod protocol;
pub mod state;
#[cfg(test)]
mod tests;

pub use protocol::{Action, LeaseModel};

use state::Time;
use stateright::{Checker, Expectation, HasDiscoveries, Model};

/// The protocol as built, or with one of its rules removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The protocol as built.
    AsBuilt,
    /// Processing stops at the failover time itself, without the safety
    /// margin.
    NoMargin,
    /// Checkpoints are written without the lease-counter condition.
    UnfencedCheckpoints,
    /// The heartbeat value grows only when a write is confirmed, and the
    /// stored value is overwritten whatever it was (the previous code).
    BeatOnlyOnSuccess,
    /// A heartbeat confirmed after the deadline still extends it.
    NoGapRule,
    /// Silence is judged as of the end of the observer's read instead of
    /// its beginning.
    JudgeAsOfEnd,
    /// A worker that lost its liveness resumes its leases without taking
    /// them anew.
    NoRetake,
    /// An expired worker's heartbeat is removed whatever its value is now.
    UnconditionalHeartbeatRemoval,
}

impl Variant {
    /// Every variant that removes a rule.
    pub const BROKEN: [Variant; 7] = [
        Variant::NoMargin,
        Variant::UnfencedCheckpoints,
        Variant::BeatOnlyOnSuccess,
        Variant::NoGapRule,
        Variant::JudgeAsOfEnd,
        Variant::NoRetake,
        Variant::UnconditionalHeartbeatRemoval,
    ];
}

/// The model's sizes and timings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Workers (at least 3 for the checks).
    pub workers: u8,
    /// Failover time, in ticks.
    pub failover: Time,
    /// Heartbeat interval.
    pub heartbeat_interval: Time,
    /// Safety margin.
    pub margin: Time,
    /// How long after its deadline a batch in flight may still run before
    /// the consumer drops it (timer and scheduling delay). The margin must
    /// cover it.
    pub slop: Time,
    /// How often a worker runs an assignment round.
    pub assignment_interval: Time,
    /// The last moment explored.
    pub horizon: Time,
    /// How many adversarial events one run may suffer, of any kind: a
    /// crash, a lost write, a write applied with its answer lost, a pause of
    /// a process or a stall of its lease tables (of 1, failover - 1 or
    /// failover + 1 ticks), or a stop (SIGTERM).
    pub adversary: u8,
    /// How many workers may begin to stop (SIGTERM) in one run, beyond the
    /// adversary's events (for the liveness check, whose adversary is off).
    pub stops: u8,
    /// Processors return and checkpoint at once (for the liveness
    /// property); otherwise they may take their time.
    pub eager: bool,
    /// Which protocol.
    pub variant: Variant,
}

impl Config {
    /// Safety through any one adversarial event, over 12 ticks (three
    /// failover times).
    pub fn one_event() -> Self {
        Self {
            workers: 3,
            failover: 4,
            heartbeat_interval: 2,
            margin: 1,
            slop: 1,
            assignment_interval: 2,
            horizon: 12,
            adversary: 1,
            stops: 0,
            eager: false,
            variant: Variant::AsBuilt,
        }
    }

    /// Safety through any two adversarial events, over 5 ticks.
    pub fn two_events() -> Self {
        Self {
            adversary: 2,
            horizon: 5,
            ..Self::one_event()
        }
    }

    /// Where the broken variants are hunted: two events over 8 ticks (the
    /// search stops at the first counterexample).
    pub fn hunt() -> Self {
        Self {
            adversary: 2,
            horizon: 8,
            ..Self::one_event()
        }
    }

    /// Liveness: no adversary, processors that return and checkpoint at
    /// once, one worker that stops (SIGTERM) at any moment, over 12 ticks.
    pub fn liveness() -> Self {
        Self {
            adversary: 0,
            stops: 1,
            eager: true,
            ..Self::one_event()
        }
    }

    /// This configuration with `variant`.
    pub fn with(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self
    }
}

/// What a check found.
#[derive(Debug)]
pub struct Outcome {
    /// States visited (with repeats).
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// Properties that failed, each with its counterexample: the steps and
    /// the time of each.
    pub failures: Vec<(&'static str, Vec<(Time, Action)>)>,
    /// `sometimes` properties for which an example was found.
    pub examples: Vec<&'static str>,
}

/// Checks the model under `config` with `threads` threads, exhaustively,
/// or until the first failure when `first_failure` is set.
pub fn check(config: Config, threads: usize, first_failure: bool) -> Outcome {
    let model = LeaseModel { config };
    let properties = model.properties();
    let checker = model
        .checker()
        .threads(threads)
        .finish_when(if first_failure {
            HasDiscoveries::AnyFailures
        } else {
            HasDiscoveries::All
        })
        .spawn_bfs()
        .join();
    let mut failures = Vec::new();
    let mut examples = Vec::new();
    for property in properties {
        let Some(path) = checker.discovery(property.name) else {
            continue;
        };
        if property.expectation == Expectation::Sometimes {
            examples.push(property.name);
            continue;
        }
        let steps = path
            .into_vec()
            .into_iter()
            .filter_map(|(state, action)| action.map(|action| (state.now, action)))
            .collect();
        failures.push((property.name, steps));
    }
    Outcome {
        states: checker.state_count(),
        unique_states: checker.unique_state_count(),
        failures,
        examples,
    }
}
