//! Liveness and readiness, as the probes of an orchestrator ask them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The worker's health, updated by the scheduler and read by the probes.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    /// How long the scheduler's loop may go without a tick before the
    /// worker is judged stuck.
    stall_after: Duration,
    /// How long without a successful lease-table call before the worker is
    /// judged not ready.
    unreachable_after: Duration,
}

#[derive(Debug, Default)]
struct State {
    started: bool,
    stopping: bool,
    last_tick: Option<Instant>,
    last_table_ok: Option<Instant>,
    /// Workers of another library seen renewing leases on this table.
    foreign_owners: Vec<String>,
}

impl Health {
    /// A worker that has not started: live (it is starting), not ready.
    pub fn new(stall_after: Duration, unreachable_after: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            stall_after,
            unreachable_after,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lease table and stream were checked and the loops started.
    pub fn started(&self, now: Instant) {
        let mut state = self.state();
        state.started = true;
        state.last_tick = Some(now);
        state.last_table_ok = Some(now);
    }

    /// The scheduler's loop went round.
    pub fn tick(&self, now: Instant) {
        self.state().last_tick = Some(now);
    }

    /// A lease-table call succeeded.
    pub fn table_ok(&self, now: Instant) {
        self.state().last_table_ok = Some(now);
    }

    /// The workers of another library (such as the Java KCL) seen renewing
    /// leases on this table: while there are any, the worker is not ready.
    pub fn foreign_owners(&self, owners: Vec<String>) {
        self.state().foreign_owners = owners;
    }

    /// The worker is handing its shards over: no longer ready.
    pub fn stopping(&self) {
        self.state().stopping = true;
    }

    /// Liveness: the loop has ticked recently (or the worker is still
    /// starting). A failing liveness probe means restart the process.
    pub fn is_live(&self, now: Instant) -> bool {
        let state = self.state();
        match state.last_tick {
            None => true,
            Some(tick) => now.saturating_duration_since(tick) < self.stall_after,
        }
    }

    /// Readiness: started, not stopping, no worker of another library on
    /// the table, and the lease table answered within the failover time.
    pub fn is_ready(&self, now: Instant) -> bool {
        let state = self.state();
        state.started
            && !state.stopping
            && state.foreign_owners.is_empty()
            && state
                .last_table_ok
                .is_some_and(|ok| now.saturating_duration_since(ok) < self.unreachable_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starting_worker_is_live_but_not_ready() {
        let health = Health::new(Duration::from_secs(30), Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(health.is_live(t0));
        assert!(!health.is_ready(t0));
        health.started(t0);
        assert!(health.is_ready(t0));
    }

    #[test]
    fn a_stalled_loop_fails_liveness_and_an_unreachable_table_readiness() {
        let health = Health::new(Duration::from_secs(30), Duration::from_secs(10));
        let t0 = Instant::now();
        health.started(t0);
        let later = t0 + Duration::from_secs(11);
        health.tick(later);
        assert!(health.is_live(later));
        assert!(!health.is_ready(later), "no table call for 11 s");
        health.table_ok(later);
        assert!(health.is_ready(later));
        assert!(!health.is_live(later + Duration::from_secs(30)));
    }

    #[test]
    fn a_worker_sharing_its_table_with_another_librarys_workers_is_not_ready() {
        let health = Health::new(Duration::from_secs(30), Duration::from_secs(10));
        let t0 = Instant::now();
        health.started(t0);
        health.foreign_owners(vec!["java-worker".into()]);
        assert!(!health.is_ready(t0));
        assert!(health.is_live(t0));
        health.foreign_owners(Vec::new());
        assert!(health.is_ready(t0));
    }

    #[test]
    fn a_stopping_worker_is_not_ready() {
        let health = Health::new(Duration::from_secs(30), Duration::from_secs(10));
        let t0 = Instant::now();
        health.started(t0);
        health.stopping();
        assert!(!health.is_ready(t0));
        assert!(health.is_live(t0));
    }
}
