//! What the model tracks: the tables, the messages on the way to them, and
//! each worker's local state, plus ghost fields that only the properties
//! read.

/// A worker's index (0, 1, 2).
pub type W = u8;
/// Model time, in ticks. Every worker's clock runs at the same rate; a
/// paused worker is one that takes no action while time passes.
pub type Time = u8;

/// The parent lease.
pub const P: usize = 0;
/// The child lease (P's only child; it must wait for P's end).
pub const C: usize = 1;
/// Records in each shard: P has two then ends, C has one and stays open.
pub const RECORDS: [u8; 2] = [2, 1];

/// A position in a shard, as a checkpoint stores it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pos {
    /// Nothing processed yet.
    TrimHorizon,
    /// Every record up to and including this one (1-based) processed.
    Record(u8),
    /// The shard was read to its end.
    ShardEnd,
}

/// One lease item.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Row {
    /// `leaseOwner`: during a handoff, the receiver.
    pub owner: Option<W>,
    /// `checkpointOwner`: set during a handoff, the worker handing over.
    pub handing_over: Option<W>,
    /// `leaseCounter`.
    pub counter: u8,
    /// `checkpoint`.
    pub checkpoint: Pos,
}

impl Row {
    /// The worker that processes the lease now.
    pub fn processing_owner(&self) -> Option<W> {
        self.handing_over.or(self.owner)
    }

    /// Whether `worker` with `counter` still processes the lease (the
    /// fencing condition of checkpoints and releases).
    pub fn held_by(&self, worker: W, counter: u8) -> bool {
        self.counter == counter && self.processing_owner() == Some(worker)
    }
}

/// A heartbeat item.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Beat {
    /// The value; only ever moves forward (in the protocol as built).
    pub value: u16,
    /// The worker is stopping.
    pub draining: bool,
}

/// A write on its way to the tables. Each is answered once it is applied
/// (or lost); the sender may have stopped waiting for the answer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Write {
    /// A heartbeat, sent at `sent`.
    Heartbeat {
        /// The value.
        value: u16,
        /// The stopping flag.
        draining: bool,
        /// When it was sent, by the sender's clock.
        sent: Time,
    },
    /// Remove `worker`'s heartbeat if it still holds `judged`.
    RemoveHeartbeat {
        /// Whose.
        worker: W,
        /// The value judged dead.
        judged: u16,
    },
    /// Take a lease if it is still as seen.
    Take {
        /// Which.
        lease: usize,
        /// `leaseOwner` as seen.
        owner: Option<W>,
        /// `checkpointOwner` as seen.
        handing_over: Option<W>,
        /// `leaseCounter` as seen.
        counter: u8,
    },
    /// Ask `from` to hand a lease over to `to` (the sender, or, from a
    /// draining worker handing its own lease over, the receiver the plan
    /// picks).
    RequestHandoff {
        /// Which.
        lease: usize,
        /// The current owner.
        from: W,
        /// The new owner.
        to: W,
        /// `leaseCounter` as seen.
        counter: u8,
    },
    /// Store a checkpoint, fenced by the token.
    Checkpoint {
        /// Which.
        lease: usize,
        /// The sender's token counter.
        counter: u8,
        /// The position.
        pos: Pos,
    },
    /// Give the lease up (completing a handoff, if one was asked for).
    Release {
        /// Which.
        lease: usize,
        /// The sender's token counter.
        counter: u8,
    },
}

/// A write in flight.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Msg {
    /// The sender.
    pub from: W,
    /// What it writes.
    pub write: Write,
    /// The sender gave up waiting (a timed-out heartbeat): the answer is
    /// dropped, but the write may still take effect.
    pub abandoned: bool,
}

/// A fault the adversary armed for a worker's next write.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Fault {
    /// The write is lost: not applied, answered with an error.
    Lose,
    /// The write is applied, but its answer is an error.
    ApplyThenFail,
}

/// What the sender learns about its write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Applied.
    Ok,
    /// Not applied: its condition did not hold. For a heartbeat, the value
    /// stored then.
    Refused(Option<u16>),
    /// An error: the write may or may not have taken effect.
    Failed,
}

/// What an observer last saw of another worker's heartbeat.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Seen {
    /// The value (`None`: the heartbeat vanished).
    pub value: Option<u16>,
    /// When this observer first saw it (the end of the read).
    pub changed_at: Time,
}

/// A lease published to the worker's consumers.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Held {
    /// The token's counter.
    pub counter: u8,
    /// The epoch it was published in.
    pub epoch: u8,
    /// Another worker asked for it.
    pub handoff: bool,
}

/// A round's writes still to send, in order (a round sends at most six:
/// two heartbeat removals, two retakes, two takes or handoff requests).
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct Queue {
    writes: [Option<Write>; 6],
    next: u8,
}

impl Queue {
    /// The writes, in order.
    pub fn new(writes: &[Write]) -> Self {
        let mut queue = Self::default();
        for (slot, write) in queue.writes.iter_mut().zip(writes) {
            *slot = Some(*write);
        }
        queue
    }

    /// The next write, if any.
    pub fn pop(&mut self) -> Option<Write> {
        let write = self.writes.get(usize::from(self.next)).copied().flatten();
        if write.is_some() {
            self.next += 1;
        }
        write
    }
}

/// An assignment round in progress.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Round {
    /// Due at this time.
    Idle {
        /// When the next round may begin.
        due: Time,
    },
    /// The tables were read at `began`; deciding comes next.
    Read {
        /// When the read began (the snapshot is of that moment).
        began: Time,
        /// The worker's epoch then, if it was alive.
        epoch: Option<u8>,
        /// The lease table.
        leases: [Row; 2],
        /// The workers table.
        beats: [Option<Beat>; 3],
    },
    /// Writes sent, waiting for their answers before publishing.
    Writing {
        /// The epoch the round decided in.
        epoch: u8,
        /// The leases as this round now knows them.
        leases: [Row; 2],
        /// Leases this round took (or took anew) itself.
        fresh: [bool; 2],
        /// The round took own leases anew: only fresh ones are published.
        retaking: bool,
        /// Writes still to send, one after the other (each answered before
        /// the next, as the coordinator awaits them).
        queue: Queue,
        /// One is held on its way (its worker's tables stall).
        waiting: bool,
    },
}

/// A shard consumer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Consumer {
    /// Not running.
    Idle,
    /// Running on the lease with `counter`, published in `epoch`.
    Running {
        /// The token's counter.
        counter: u8,
        /// The epoch of the published lease.
        epoch: u8,
        /// The last position delivered and processed.
        pos: Pos,
        /// The last checkpoint stored.
        stored: Pos,
        /// A checkpoint write is under way.
        writing: bool,
        /// A batch is being processed: the moment by which it has ended or
        /// been dropped (the deadline plus the scheduling slop).
        in_batch: Option<Time>,
        /// Asked to hand over: no more batches.
        stopping: bool,
    },
    /// The release was sent.
    Releasing {
        /// The token's counter.
        counter: u8,
    },
}

/// One worker.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Worker {
    /// Crashed: takes no more actions.
    pub crashed: bool,
    /// Stopping: takes no leases, hands its leases over on request.
    pub draining: bool,
    /// Paused (a stopped process, a long GC): takes no step, and its
    /// writes wait, until this moment.
    pub paused_until: Time,
    /// Its lease tables do not answer (requests hang) until this moment;
    /// Kinesis, and so its consumers, go on.
    pub stalled_until: Time,
    /// A fault waiting for this worker's next write.
    pub armed: Option<Fault>,
    /// It took its turn in this tick.
    pub acted: bool,
    /// Its next round's read is slow: the answers come a tick later.
    pub slow_read: bool,
    /// The value of the next heartbeat.
    pub next_beat: u16,
    /// When the next heartbeat is due.
    pub heartbeat_due: Time,
    /// Processing is allowed before this moment.
    pub until: Option<Time>,
    /// Grows with every loss of liveness.
    pub epoch: u8,
    /// Own leases must be taken anew before they are processed.
    pub retake: bool,
    /// What it saw of each worker's heartbeat.
    pub seen: [Option<Seen>; 3],
    /// The assignment round.
    pub round: Round,
    /// The published leases.
    pub held: [Option<Held>; 2],
    /// One consumer per lease.
    pub consumers: [Consumer; 2],
}

/// The whole system.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    /// The time.
    pub now: Time,
    /// Adversarial events so far.
    pub events: u8,
    /// Stops (draining) begun so far.
    pub stops: u8,
    /// The lease table.
    pub leases: [Row; 2],
    /// The workers table.
    pub beats: [Option<Beat>; 3],
    /// Writes in flight, sorted.
    pub net: Vec<Msg>,
    /// The workers.
    pub workers: [Worker; 3],
    /// Ghost: records processed (by anyone), per lease, as bits.
    pub processed: [u8; 2],
    /// Ghost: handoffs completed.
    pub handoffs: u8,
    /// Ghost: leases taken from another worker (judged expired).
    pub failovers: u8,
    /// Ghost: the first safety rule broken, with what broke it.
    pub broken: Option<&'static str>,
}
