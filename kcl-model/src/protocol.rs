//! The protocol as the workers run it, step by step: heartbeats and the
//! deadline they earn, assignment rounds (read, then decide, write and
//! publish), shard consumers (start, batches, checkpoints, handoff,
//! release), and the adversary.
//!
//! A write reaches the tables and is answered within the step that sends
//! it, unless its worker's tables stall (then it waits, and lands when the
//! stall ends: late) or the adversary armed a fault for it (lost, or applied
//! with its answer lost). Each step is atomic; the checker tries every
//! order of the steps that are due, and every moment for the adversary.

use kcl_lease::assignment::{self, Holder, LeaseView};
use kcl_lease::{LeaseScope, WorkerHeartbeat};
use stateright::{Model, Property};

use crate::properties;
use crate::state::*;
use crate::{Config, Variant};

/// How a processor handles a batch.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Batch {
    /// Processes it and returns.
    Quick,
    /// Processes it, checkpoints, and returns.
    QuickThenCheckpoint,
    /// Takes its time: the batch is still running at the deadline, when
    /// the consumer drops it (within the scheduling slop).
    Linger,
}

/// One step.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Action {
    /// Time passes by one tick (once every running worker took its turn).
    Tick,
    /// A worker's turn: writes its stall held land, a heartbeat if due, the
    /// deadline check, its assignment round if due (a read, then the
    /// decision, writes and publishing; after a slow read, those come at the
    /// next turn), and one step of each shard consumer, whose processor
    /// handles its batch as given.
    Turn(W, [Batch; 2]),
    /// Adversary: a worker crashes.
    Crash(W),
    /// Adversary: a worker's next write fails.
    Arm(W, Fault),
    /// Adversary: a worker's next round reads slowly (the answers come a
    /// tick later, describing the tables as they were when it began).
    SlowRead(W),
    /// Adversary: a worker's process pauses for some ticks.
    Pause(W, Time),
    /// Adversary: a worker's lease tables stop answering for some ticks.
    Stall(W, Time),
    /// Adversary: a worker begins to stop (SIGTERM).
    Drain(W),
}

/// The lease protocol under `config`.
pub struct LeaseModel {
    /// The sizes, timings and variant.
    pub config: Config,
}

/// What happened to a write when it was sent.
enum Sent {
    /// Applied (or refused, or failed) and answered.
    Answered,
    /// Held: its worker's tables stall.
    Held,
}

impl LeaseModel {
    fn bug(&self, variant: Variant) -> bool {
        self.config.variant == variant
    }

    fn margin(&self) -> Time {
        if self.bug(Variant::NoMargin) {
            0
        } else {
            self.config.margin
        }
    }

    /// The fleet as it stands once started: every worker has heartbeated
    /// at time 0 (and seen the others do so), and worker 0 holds both
    /// leases, the child waiting for its parent. From here the rounds
    /// balance (a handoff), and faults, pauses and stops do their worst.
    fn initial_state(&self) -> State {
        let workers = usize::from(self.config.workers);
        let seen = Seen {
            value: Some(1),
            changed_at: 0,
        };
        let worker = Worker {
            crashed: false,
            draining: false,
            paused_until: 0,
            stalled_until: 0,
            armed: None,
            acted: false,
            slow_read: false,
            next_beat: 2,
            heartbeat_due: self.config.heartbeat_interval,
            until: Some(self.config.failover - self.margin()),
            epoch: 0,
            retake: false,
            seen: [Some(seen); 3],
            round: Round::Idle { due: 0 },
            held: [None; 2],
            consumers: [Consumer::Idle; 2],
        };
        assert_eq!(workers, 3, "the model has three workers");
        let mut workers = [worker; 3];
        let held = Held {
            counter: 1,
            epoch: 0,
            handoff: false,
        };
        workers[0].held = [Some(held); 2];
        let row = Row {
            owner: Some(0),
            handing_over: None,
            counter: 1,
            checkpoint: Pos::TrimHorizon,
        };
        let beat = Beat {
            value: 1,
            draining: false,
        };
        State {
            now: 0,
            events: 0,
            stops: 0,
            leases: [row; 2],
            beats: [Some(beat); 3],
            net: Vec::new(),
            workers,
            processed: [0; 2],
            handoffs: 0,
            failovers: 0,
            broken: None,
        }
    }

    /// The epoch `worker` may process in at `now`, if any.
    fn live_epoch(worker: &Worker, now: Time) -> Option<u8> {
        worker
            .until
            .filter(|until| now < *until)
            .map(|_| worker.epoch)
    }

    /// Whether `worker` can take a turn now.
    fn up(worker: &Worker, now: Time) -> bool {
        !worker.crashed && now >= worker.paused_until
    }

    /// The batch choices worth trying for `w`'s consumers this turn.
    fn batch_choices(&self, state: &State, w: W) -> Vec<[Batch; 2]> {
        let kinds: &[Batch] = if self.config.eager {
            &[Batch::QuickThenCheckpoint]
        } else {
            &[Batch::Quick, Batch::QuickThenCheckpoint, Batch::Linger]
        };
        let worker = &state.workers[usize::from(w)];
        // A consumer that is running, or has a published lease to start on,
        // may hand its processor a batch this turn. A batch that lingers
        // past the deadline is the worst case for exclusivity; one that
        // begins in the last tick before the deadline stands for every
        // batch still running then (one that lingers from earlier on only
        // keeps its consumer busy meanwhile).
        let busy = |lease: usize| {
            matches!(worker.consumers[lease], Consumer::Running { .. })
                || worker.held[lease].is_some()
        };
        let last_tick = worker.until.is_some_and(|until| state.now + 1 >= until);
        let choices = |lease: usize| -> Vec<Batch> {
            if busy(lease) {
                kinds
                    .iter()
                    .copied()
                    .filter(|kind| *kind != Batch::Linger || last_tick)
                    .collect()
            } else {
                vec![kinds[0]]
            }
        };
        let mut all = Vec::new();
        for p in choices(P) {
            for c in choices(C) {
                all.push([p, c]);
            }
        }
        all
    }

    /// A worker's turn.
    fn turn(&self, state: &mut State, w: W, batches: [Batch; 2]) {
        let now = state.now;
        let me = usize::from(w);
        state.workers[me].acted = true;
        let tables_answer = now >= state.workers[me].stalled_until;
        // Writes held by a stall that is over land now (late).
        if tables_answer {
            while let Some(i) = state.net.iter().position(|m| m.from == w) {
                let msg = state.net.remove(i);
                let answer = self.land(state, msg);
                self.answer(state, msg, answer);
            }
        }
        let in_flight = state.net.iter().filter(|m| m.from == w).count();
        if now >= state.workers[me].heartbeat_due && in_flight < 2 {
            self.heartbeat(state, w);
        }
        self.lapse(&mut state.workers[me], now);
        if tables_answer {
            match state.workers[me].round {
                Round::Read { .. } => {
                    self.decide(state, w);
                    self.pump_round(state, w);
                }
                Round::Idle { due } if now >= due => {
                    let (leases, beats) = (state.leases, state.beats);
                    let epoch = Self::live_epoch(&state.workers[me], now);
                    state.workers[me].round = Round::Read {
                        began: now,
                        epoch,
                        leases,
                        beats,
                    };
                    if state.workers[me].slow_read {
                        state.workers[me].slow_read = false;
                    } else {
                        self.decide(state, w);
                        self.pump_round(state, w);
                    }
                }
                _ => {}
            }
        }
        for lease in [P, C] {
            self.consumer_step(state, w, lease, batches[lease], tables_answer);
        }
    }

    /// One step of `w`'s consumer of `lease`.
    fn consumer_step(
        &self,
        state: &mut State,
        w: W,
        lease: usize,
        batch: Batch,
        tables_answer: bool,
    ) {
        let now = state.now;
        let me = usize::from(w);
        let worker = &state.workers[me];
        let open = |epoch: u8| Self::live_epoch(worker, now) == Some(epoch);
        match worker.consumers[lease] {
            Consumer::Releasing { .. } => {}
            Consumer::Idle => {
                let Some(held) = worker.held[lease] else {
                    return;
                };
                let row = state.leases[lease];
                if row.checkpoint == Pos::ShardEnd {
                    return;
                }
                if held.handoff || worker.draining {
                    // Nothing processed here since the last checkpoint.
                    self.release(state, w, lease, held.counter);
                    return;
                }
                let parents_done = lease == P || state.leases[P].checkpoint == Pos::ShardEnd;
                if tables_answer && open(held.epoch) && row.held_by(w, held.counter) && parents_done
                {
                    state.workers[me].consumers[lease] = Consumer::Running {
                        counter: held.counter,
                        epoch: held.epoch,
                        pos: row.checkpoint,
                        stored: row.checkpoint,
                        writing: false,
                        in_batch: None,
                        stopping: false,
                    };
                    self.begin(state, w, lease, batch);
                }
            }
            Consumer::Running {
                counter,
                epoch,
                pos,
                stored,
                writing,
                in_batch,
                stopping,
            } => {
                if !open(epoch) {
                    // The deadline passed: a batch in flight is dropped, the
                    // consumer stops.
                    state.workers[me].consumers[lease] = Consumer::Idle;
                    return;
                }
                if in_batch.is_some() || writing {
                    return;
                }
                if stopping {
                    if stored < pos {
                        self.checkpoint(state, w, lease);
                    }
                    if let Consumer::Running {
                        stored,
                        pos,
                        writing: false,
                        ..
                    } = state.workers[me].consumers[lease]
                        && stored == pos
                    {
                        self.release(state, w, lease, counter);
                    }
                    return;
                }
                self.begin(state, w, lease, batch);
            }
        }
    }

    fn release(&self, state: &mut State, w: W, lease: usize, counter: u8) {
        state.workers[usize::from(w)].consumers[lease] = Consumer::Releasing { counter };
        self.write(state, w, Write::Release { lease, counter });
    }

    /// Whether time may pass: every running worker took its turn.
    fn time_may_pass(&self, state: &State) -> bool {
        state.now < self.config.horizon
            && state
                .workers
                .iter()
                .all(|worker| worker.acted || !Self::up(worker, state.now))
    }

    /// The adversary strikes between ticks (before any worker's turn in a
    /// tick): each worker acts once a tick, and every event acts on one
    /// worker, so striking between two turns of a tick does nothing that
    /// striking at the tick's start, with the turns in another order, does
    /// not.
    fn adversary_actions(&self, state: &State, actions: &mut Vec<Action>) {
        let now = state.now;
        if state.workers.iter().any(|worker| worker.acted) {
            return;
        }
        let up = state
            .workers
            .iter()
            .enumerate()
            .filter(|(_, worker)| Self::up(worker, now))
            .map(|(w, worker)| (w as W, worker));
        let events = state.events < self.config.adversary;
        let stops = state.stops < self.config.stops;
        for (w, worker) in up {
            if events {
                actions.push(Action::Crash(w));
                if worker.armed.is_none() {
                    actions.push(Action::Arm(w, Fault::Lose));
                    actions.push(Action::Arm(w, Fault::ApplyThenFail));
                }
                if !worker.slow_read {
                    actions.push(Action::SlowRead(w));
                }
                for ticks in [1, self.config.failover - 1, self.config.failover + 1] {
                    actions.push(Action::Pause(w, ticks));
                    actions.push(Action::Stall(w, ticks));
                }
            }
            if (events || stops) && !worker.draining {
                actions.push(Action::Drain(w));
            }
        }
    }
}

/// The position after `pos` in `lease`'s shard, if any: the next record,
/// or the parent's shard end after its last record.
fn next(lease: usize, pos: Pos) -> Option<Pos> {
    let last = RECORDS[lease];
    match pos {
        Pos::TrimHorizon => Some(Pos::Record(1)),
        Pos::Record(n) if n < last => Some(Pos::Record(n + 1)),
        Pos::Record(_) if lease == P => Some(Pos::ShardEnd),
        _ => None,
    }
}

/// Whether every record up to `pos` was processed by someone.
fn covered(processed: u8, lease: usize, pos: Pos) -> bool {
    let upto = match pos {
        Pos::TrimHorizon => 0,
        Pos::Record(n) => n,
        Pos::ShardEnd => RECORDS[lease],
    };
    (1..=upto).all(|n| processed & (1 << n) != 0)
}

impl Model for LeaseModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial_state()]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        if state.broken.is_some() {
            return;
        }
        for (w, worker) in state.workers.iter().enumerate() {
            if !worker.acted && Self::up(worker, state.now) {
                for batches in self.batch_choices(state, w as W) {
                    actions.push(Action::Turn(w as W, batches));
                }
            }
        }
        if self.time_may_pass(state) {
            actions.push(Action::Tick);
        }
        self.adversary_actions(state, actions);
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        let now = state.now;
        match action {
            Action::Tick => {
                state.now += 1;
                let now = state.now;
                let forgotten = now.saturating_sub(self.config.failover + 1);
                for worker in &mut state.workers {
                    worker.acted = false;
                    // Forget what no longer makes a difference, so states
                    // that behave alike are one: how long ago a heartbeat
                    // went silent beyond the failover time (reads begin at
                    // most a tick ago), and by how much a schedule is late.
                    for seen in worker.seen.iter_mut().flatten() {
                        seen.changed_at = seen.changed_at.max(forgotten);
                    }
                    worker.heartbeat_due = worker.heartbeat_due.max(now);
                    if let Round::Idle { due } = &mut worker.round {
                        *due = (*due).max(now);
                    }
                    if worker.paused_until <= now {
                        worker.paused_until = 0;
                    }
                    if worker.stalled_until <= now {
                        worker.stalled_until = 0;
                    }
                }
            }
            Action::Turn(w, batches) => self.turn(&mut state, w, batches),
            Action::Crash(w) => {
                state.events += 1;
                let worker = &mut state.workers[usize::from(w)];
                worker.crashed = true;
                worker.consumers = [Consumer::Idle; 2];
            }
            Action::Arm(w, fault) => {
                state.events += 1;
                state.workers[usize::from(w)].armed = Some(fault);
            }
            Action::SlowRead(w) => {
                state.events += 1;
                state.workers[usize::from(w)].slow_read = true;
            }
            Action::Pause(w, ticks) => {
                state.events += 1;
                state.workers[usize::from(w)].paused_until = now + ticks;
            }
            Action::Stall(w, ticks) => {
                state.events += 1;
                state.workers[usize::from(w)].stalled_until = now + ticks;
            }
            Action::Drain(w) => {
                if state.stops < self.config.stops {
                    state.stops += 1;
                } else {
                    state.events += 1;
                }
                let worker = &mut state.workers[usize::from(w)];
                worker.draining = true;
                worker.heartbeat_due = now;
                if let Round::Idle { due } = &mut worker.round {
                    *due = now;
                }
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }
}

/// Ends `worker`'s epoch if its deadline has passed at `now`: it publishes
/// nothing, and takes its own leases anew before processing again.
/// Consumers stop by themselves (a batch in flight is dropped by its
/// deadline).
fn lapse_if_due(worker: &mut Worker, now: Time) -> bool {
    if worker.until.is_none_or(|until| now < until) {
        return false;
    }
    worker.epoch += 1;
    worker.until = None;
    worker.retake = true;
    worker.held = [None; 2];
    true
}

impl LeaseModel {
    /// [`lapse_if_due`], but a variant that skips taking own leases anew
    /// forgets that it must.
    fn lapse(&self, worker: &mut Worker, now: Time) -> bool {
        let lapsed = lapse_if_due(worker, now);
        if lapsed && self.bug(Variant::NoRetake) {
            worker.retake = false;
        }
        lapsed
    }
}

impl LeaseModel {
    /// Sends `write` for `from`: held while its tables stall, otherwise
    /// applied (or lost, if a fault is armed) and answered at once.
    fn write(&self, state: &mut State, from: W, write: Write) -> Sent {
        let worker = &state.workers[usize::from(from)];
        if state.now < worker.stalled_until {
            let msg = Msg {
                from,
                write,
                abandoned: false,
            };
            let at = state.net.partition_point(|m| *m < msg);
            state.net.insert(at, msg);
            return Sent::Held;
        }
        let msg = Msg {
            from,
            write,
            abandoned: false,
        };
        let answer = self.land(state, msg);
        self.answer(state, msg, answer);
        Sent::Answered
    }

    /// A write reaches the tables: applied unless a fault is armed for it.
    fn land(&self, state: &mut State, msg: Msg) -> Answer {
        match state.workers[usize::from(msg.from)].armed.take() {
            Some(Fault::Lose) => Answer::Failed,
            Some(Fault::ApplyThenFail) => {
                self.apply(state, msg);
                Answer::Failed
            }
            None => self.apply(state, msg),
        }
    }

    fn heartbeat(&self, state: &mut State, w: W) {
        let now = state.now;
        let worker = &mut state.workers[usize::from(w)];
        let value = worker.next_beat;
        if !self.bug(Variant::BeatOnlyOnSuccess) {
            worker.next_beat += 1;
        }
        worker.heartbeat_due = now + self.config.heartbeat_interval;
        let draining = worker.draining;
        // The last one timed out: its answer no longer counts.
        for msg in &mut state.net {
            if msg.from == w && matches!(msg.write, Write::Heartbeat { .. }) {
                msg.abandoned = true;
            }
        }
        state.net.sort();
        let write = Write::Heartbeat {
            value,
            draining,
            sent: now,
        };
        self.write(state, w, write);
    }

    /// A heartbeat sent at `sent` was confirmed now.
    fn confirm(&self, state: &mut State, w: W, sent: Time) {
        let now = state.now;
        let until = sent + self.config.failover - self.margin();
        let slop = self.config.slop;
        let worker = &mut state.workers[usize::from(w)];
        if !self.bug(Variant::NoGapRule) {
            self.lapse(worker, now);
        }
        if until <= now {
            return;
        }
        let extended = worker.until.map_or(until, |current| current.max(until));
        worker.until = Some(extended);
        let epoch = worker.epoch;
        // A batch in flight is dropped at the deadline as it now stands.
        for consumer in &mut worker.consumers {
            if let Consumer::Running {
                epoch: e,
                in_batch: Some(drop_by),
                ..
            } = consumer
                && *e == epoch
            {
                *drop_by = extended + slop;
            }
        }
    }

    fn begin(&self, state: &mut State, w: W, lease: usize, batch: Batch) {
        if lease == C && state.leases[P].checkpoint != Pos::ShardEnd {
            state.broken = Some(properties::PARENTS_FIRST);
        }
        let slop = self.config.slop;
        let worker = &mut state.workers[usize::from(w)];
        let Some(until) = worker.until else { return };
        let Consumer::Running { in_batch, pos, .. } = &mut worker.consumers[lease] else {
            return;
        };
        match batch {
            Batch::Linger => *in_batch = Some(until + slop),
            Batch::Quick | Batch::QuickThenCheckpoint => {
                let Some(reached) = next(lease, *pos) else {
                    return;
                };
                *pos = reached;
                if let Pos::Record(n) = reached {
                    state.processed[lease] |= 1 << n;
                }
                // At shard end the processor checkpoints SHARD_END.
                if batch == Batch::QuickThenCheckpoint || reached == Pos::ShardEnd {
                    self.checkpoint(state, w, lease);
                }
            }
        }
    }

    fn checkpoint(&self, state: &mut State, w: W, lease: usize) {
        let worker = &mut state.workers[usize::from(w)];
        let Consumer::Running {
            counter,
            pos,
            writing,
            ..
        } = &mut worker.consumers[lease]
        else {
            return;
        };
        *writing = true;
        let write = Write::Checkpoint {
            lease,
            counter: *counter,
            pos: *pos,
        };
        self.write(state, w, write);
    }

    /// Judges liveness from the round's read and queues the round's writes.
    fn decide(&self, state: &mut State, w: W) {
        let now = state.now;
        let failover = self.config.failover;
        let me = usize::from(w);
        let Round::Read {
            began,
            epoch: epoch_at_start,
            leases,
            beats,
        } = state.workers[me].round
        else {
            return;
        };
        let as_of = if self.bug(Variant::JudgeAsOfEnd) {
            now
        } else {
            began
        };
        let worker = &mut state.workers[me];
        // Observe: news stamped with the end of the read.
        for (other, beat) in beats.iter().enumerate() {
            let value = beat.map(|b| b.value);
            worker.seen[other] = match (worker.seen[other], value) {
                (Some(seen), value) if seen.value == value => Some(seen),
                (Some(seen), None) => Some(Seen {
                    value: None,
                    changed_at: seen.changed_at,
                }),
                (_, Some(value)) => Some(Seen {
                    value: Some(value),
                    changed_at: now,
                }),
                (None, None) => None,
            };
        }
        let silent_for = |seen: Seen| as_of.saturating_sub(seen.changed_at);
        let live = |worker: &Worker, other: usize| {
            worker.seen[other].is_some_and(|s| s.value.is_some() && silent_for(s) < failover)
        };
        let expired = |worker: &Worker, other: W| {
            worker.seen[usize::from(other)].is_some_and(|s| silent_for(s) >= failover)
        };
        let Some(epoch) = Self::live_epoch(worker, now) else {
            self.lapse(worker, now);
            worker.round = Round::Idle {
                due: now + self.config.assignment_interval,
            };
            return;
        };
        if epoch_at_start != Some(epoch) {
            // Read (in part) before this epoch began: act at the next round.
            worker.round = Round::Idle {
                due: now + self.config.assignment_interval,
            };
            return;
        }
        let mut writes = Vec::new();
        for (other, beat) in beats.iter().enumerate() {
            if let Some(beat) = beat
                && other != me
                && !live(worker, other)
            {
                writes.push(Write::RemoveHeartbeat {
                    worker: other as W,
                    judged: beat.value,
                });
            }
        }
        let retaking = worker.retake;
        let mut retaken = [false; 2];
        if retaking {
            for lease in [P, C] {
                let row = leases[lease];
                if row.processing_owner() == Some(w) {
                    retaken[lease] = true;
                    writes.push(take(lease, row));
                }
            }
        }
        // The plan, as the coordinator builds it (one stream: no worker
        // announces streams).
        let name = |worker: usize| format!("w{worker}");
        let heartbeats: Vec<WorkerHeartbeat> = beats
            .iter()
            .enumerate()
            .filter_map(|(other, beat)| {
                beat.map(|beat| WorkerHeartbeat {
                    worker: name(other),
                    beat: 0,
                    draining: beat.draining,
                    failover_time: None,
                    streams: None,
                    written_at: None,
                    evicted: false,
                    stalled_shards: Default::default(),
                    offered: Default::default(),
                })
            })
            .collect();
        let (workers, stopping) = assignment::planning_workers(
            &name(me),
            (0..beats.len())
                .filter(|&other| other != me && live(worker, other))
                .map(name),
            &heartbeats,
            &LeaseScope::SingleStream,
            worker.draining,
        );
        let keys = ["shard-0", "shard-1"];
        let views: Vec<LeaseView> = [P, C]
            .into_iter()
            .filter(|&lease| leases[lease].checkpoint != Pos::ShardEnd)
            .map(|lease| {
                let row = leases[lease];
                let holder = match row.owner {
                    None => Holder::Free,
                    Some(_) if row.processing_owner() == Some(w) => Holder::Held(name(me)),
                    Some(_) if row.processing_owner().is_some_and(|o| expired(worker, o)) => {
                        Holder::Free
                    }
                    Some(owner) if workers.contains(&name(usize::from(owner))) => {
                        Holder::Held(name(usize::from(owner)))
                    }
                    Some(_) => Holder::Pinned,
                };
                let processing = row.processing_owner().map(|o| name(usize::from(o)));
                let holder = match holder {
                    Holder::Pinned if processing.as_ref().is_some_and(|p| stopping.contains(p)) => {
                        Holder::Draining(processing.unwrap_or_default())
                    }
                    Holder::Held(owner) if stopping.contains(&owner) => Holder::Draining(owner),
                    holder => holder,
                };
                LeaseView {
                    key: keys[lease].to_owned(),
                    holder,
                    moving: row.handing_over.is_some(),
                    waiting: lease == C
                        && row.checkpoint == Pos::TrimHorizon
                        && leases[P].checkpoint != Pos::ShardEnd,
                }
            })
            .collect();
        let plan = assignment::plan(&views, &workers, None);
        let my_name = name(me);
        if worker.draining {
            // Hands its leases over itself, to the receivers of the plan.
            for (key, to) in plan.gives(&my_name) {
                let lease = keys.iter().position(|k| *k == key).unwrap_or(P);
                let row = leases[lease];
                let to = (0..beats.len())
                    .find(|&other| name(other) == to)
                    .and_then(|to| W::try_from(to).ok());
                if let Some(to) = to
                    && row.owner == Some(w)
                    && to != w
                    && !retaken[lease]
                {
                    writes.push(Write::RequestHandoff {
                        lease,
                        from: w,
                        to,
                        counter: row.counter,
                    });
                }
            }
        } else {
            let (takes, moves) = plan.for_worker(&my_name);
            for key in takes {
                let lease = keys.iter().position(|k| *k == key).unwrap_or(P);
                if !retaken[lease] {
                    writes.push(take(lease, leases[lease]));
                }
            }
            for (key, _) in moves {
                let lease = keys.iter().position(|k| *k == key).unwrap_or(P);
                let row = leases[lease];
                if let Some(from) = row.owner
                    && !retaken[lease]
                {
                    writes.push(Write::RequestHandoff {
                        lease,
                        from,
                        to: w,
                        counter: row.counter,
                    });
                }
            }
        }
        assert!(writes.len() <= 6, "a round sends at most six writes");
        worker.round = Round::Writing {
            epoch,
            leases,
            fresh: [false; 2],
            retaking,
            queue: Queue::new(&writes),
            waiting: false,
        };
    }

    /// Sends the round's writes one after the other; once every one is
    /// answered, publishes.
    fn pump_round(&self, state: &mut State, w: W) {
        loop {
            let Round::Writing { queue, waiting, .. } = &mut state.workers[usize::from(w)].round
            else {
                return;
            };
            if *waiting {
                return;
            }
            let Some(write) = queue.pop() else {
                self.finish(state, w);
                return;
            };
            if let Sent::Held = self.write(state, w, write) {
                if let Round::Writing { waiting, .. } = &mut state.workers[usize::from(w)].round {
                    *waiting = true;
                }
                return;
            }
        }
    }

    /// Publishes what the round holds, if the worker stayed alive in the
    /// epoch it decided in.
    fn finish(&self, state: &mut State, w: W) {
        let now = state.now;
        let due = now + self.config.assignment_interval;
        let worker = &mut state.workers[usize::from(w)];
        let Round::Writing {
            epoch,
            leases,
            fresh,
            retaking,
            ..
        } = worker.round
        else {
            return;
        };
        worker.round = Round::Idle { due };
        if Self::live_epoch(worker, now) != Some(epoch) {
            self.lapse(worker, now);
            return;
        }
        if retaking {
            worker.retake = false;
        }
        for lease in [P, C] {
            let row = leases[lease];
            worker.held[lease] = (row.processing_owner() == Some(w) && (!retaking || fresh[lease]))
                .then_some(Held {
                    counter: row.counter,
                    epoch,
                    handoff: row.owner != Some(w),
                });
            // The scheduler's reconcile: consumers of leases no longer held
            // stop at once; a requested handoff stops after the batch.
            let held = worker.held[lease];
            if let Consumer::Running {
                counter, stopping, ..
            } = &mut worker.consumers[lease]
            {
                match held {
                    Some(h) if h.counter == *counter => *stopping |= h.handoff,
                    _ => worker.consumers[lease] = Consumer::Idle,
                }
            }
        }
    }

    /// Applies a write to the tables, as DynamoDB evaluates its condition.
    fn apply(&self, state: &mut State, msg: Msg) -> Answer {
        let from = msg.from;
        match msg.write {
            Write::Heartbeat {
                value, draining, ..
            } => {
                let stored = state.beats[usize::from(from)];
                let forward = stored.is_none_or(|s| s.value < value);
                if forward || self.bug(Variant::BeatOnlyOnSuccess) {
                    state.beats[usize::from(from)] = Some(Beat { value, draining });
                    Answer::Ok
                } else {
                    Answer::Refused(stored.map(|s| s.value))
                }
            }
            Write::RemoveHeartbeat { worker, judged } => {
                let stored = &mut state.beats[usize::from(worker)];
                let matches = stored.is_some_and(|s| s.value == judged);
                if matches || self.bug(Variant::UnconditionalHeartbeatRemoval) {
                    *stored = None;
                    Answer::Ok
                } else {
                    Answer::Refused(None)
                }
            }
            Write::Take {
                lease,
                owner,
                handing_over,
                counter,
            } => {
                let row = &mut state.leases[lease];
                if row.owner == owner && row.handing_over == handing_over && row.counter == counter
                {
                    if row.processing_owner().is_some_and(|o| o != from) {
                        state.failovers += 1;
                    }
                    row.owner = Some(from);
                    row.handing_over = None;
                    row.counter += 1;
                    Answer::Ok
                } else {
                    Answer::Refused(None)
                }
            }
            Write::RequestHandoff {
                lease,
                from: owner,
                to,
                counter,
            } => {
                let row = &mut state.leases[lease];
                if row.counter == counter && row.owner == Some(owner) && row.handing_over.is_none()
                {
                    row.owner = Some(to);
                    row.handing_over = Some(owner);
                    Answer::Ok
                } else {
                    Answer::Refused(None)
                }
            }
            Write::Checkpoint {
                lease,
                counter,
                pos,
            } => {
                let row = state.leases[lease];
                if !row.held_by(from, counter) && !self.bug(Variant::UnfencedCheckpoints) {
                    return Answer::Refused(None);
                }
                if pos < row.checkpoint && state.broken.is_none() {
                    state.broken = Some(properties::CHECKPOINT_MONOTONE);
                }
                if !covered(state.processed[lease], lease, pos) && state.broken.is_none() {
                    state.broken = Some(properties::NOTHING_SKIPPED);
                }
                state.leases[lease].checkpoint = pos;
                Answer::Ok
            }
            Write::Release { lease, counter } => {
                let row = &mut state.leases[lease];
                if !row.held_by(from, counter) {
                    return Answer::Refused(None);
                }
                if row.handing_over == Some(from) {
                    row.handing_over = None;
                    state.handoffs += 1;
                } else {
                    row.owner = None;
                }
                row.counter += 1;
                Answer::Ok
            }
        }
    }

    /// Gives the sender its answer (unless it stopped waiting, or crashed).
    fn answer(&self, state: &mut State, msg: Msg, answer: Answer) {
        let w = msg.from;
        if msg.abandoned || state.workers[usize::from(w)].crashed {
            return;
        }
        match msg.write {
            Write::Heartbeat { sent, .. } => match answer {
                Answer::Ok => {
                    if self.bug(Variant::BeatOnlyOnSuccess) {
                        state.workers[usize::from(w)].next_beat += 1;
                    }
                    self.confirm(state, w, sent);
                }
                Answer::Refused(Some(stored)) => {
                    let worker = &mut state.workers[usize::from(w)];
                    worker.next_beat = worker.next_beat.max(stored + 1);
                }
                Answer::Refused(None) | Answer::Failed => {}
            },
            Write::RemoveHeartbeat { .. } => self.round_answered(state, w, None),
            Write::Take { lease, counter, .. } => {
                let taken = (answer == Answer::Ok).then_some(Row {
                    owner: Some(w),
                    handing_over: None,
                    counter: counter + 1,
                    checkpoint: state.leases[lease].checkpoint,
                });
                self.round_answered(state, w, taken.map(|row| (lease, row, true)));
            }
            Write::RequestHandoff {
                lease,
                from,
                to,
                counter,
            } => {
                let asked = (answer == Answer::Ok).then_some(Row {
                    owner: Some(to),
                    handing_over: Some(from),
                    counter,
                    checkpoint: state.leases[lease].checkpoint,
                });
                self.round_answered(state, w, asked.map(|row| (lease, row, false)));
            }
            Write::Checkpoint {
                lease,
                counter: sent_with,
                pos,
            } => {
                let worker = &mut state.workers[usize::from(w)];
                if let Consumer::Running {
                    counter,
                    stored,
                    writing,
                    ..
                } = &mut worker.consumers[lease]
                    && *counter == sent_with
                {
                    match answer {
                        Answer::Ok => {
                            *stored = pos;
                            *writing = false;
                            if pos == Pos::ShardEnd {
                                worker.consumers[lease] = Consumer::Idle;
                            }
                        }
                        Answer::Refused(_) => worker.consumers[lease] = Consumer::Idle,
                        // The processor's checkpoint failed: it may try
                        // again with a later batch, or at its stop.
                        Answer::Failed => *writing = false,
                    }
                }
            }
            Write::Release { lease, .. } => {
                let worker = &mut state.workers[usize::from(w)];
                worker.consumers[lease] = Consumer::Idle;
                if answer != Answer::Failed {
                    worker.held[lease] = None;
                }
            }
        }
    }

    /// One of a round's writes was answered; `update` is what it changed.
    /// The next write goes out (from a late answer, the round goes on now).
    fn round_answered(&self, state: &mut State, w: W, update: Option<(usize, Row, bool)>) {
        let Round::Writing {
            leases,
            fresh,
            waiting,
            ..
        } = &mut state.workers[usize::from(w)].round
        else {
            return;
        };
        if let Some((lease, row, taken)) = update {
            leases[lease] = row;
            fresh[lease] |= taken;
        }
        if *waiting {
            *waiting = false;
            self.pump_round(state, w);
        }
    }
}

/// A take of `lease` as seen in `row`.
fn take(lease: usize, row: Row) -> Write {
    Write::Take {
        lease,
        owner: row.owner,
        handing_over: row.handing_over,
        counter: row.counter,
    }
}
