//! The producer's decisions, apart from any I/O: which buffered records go
//! into the next `PutRecords` call, and what each answer means for them
//! (written, retried after a backoff, failed, or sent again after a shard
//! map refresh).
//!
//! Records wait in *lanes*. With ordering on, a lane is a partition key:
//! its records go out in order, and the lane has at most one Kinesis record
//! in flight (one plain record, or some of its records inside one
//! aggregate), so a retry can never overtake. With ordering off, every
//! record is a lane of its own. A lane is ready (it may go into the next
//! call), in flight, or parked until its retry time; ready lanes are taken
//! oldest record first.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use kcl_backoff::BackoffConfig;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use crate::config::ProducerConfig;
use crate::error::{PutError, SendError};
use crate::kpl::AggregateBuilder;
use crate::record::{UserRecord, Written};
use crate::shard_map::ShardMap;
use crate::sink::{EntryResult, PutEntry};

/// Numbers records in the order they were sent.
pub type RecordId = u64;
type LaneId = u64;

/// A record sent and not yet written or failed.
pub struct Pending {
    id: RecordId,
    record: UserRecord,
    hash: u128,
    enqueued: Instant,
    lane: LaneId,
    /// Calls that carried it.
    attempts: u32,
    last_error: String,
}

struct Lane {
    /// The partition key, with ordering on (to forget the lane when empty).
    key: Option<String>,
    records: VecDeque<Pending>,
    state: LaneState,
    /// Bytes (data and partition keys) of its records.
    bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaneState {
    Ready,
    InFlight,
    Parked(Instant),
}

/// The records of one Kinesis record of a call.
pub struct EntryMembers {
    members: Vec<Pending>,
    /// The shard the entry was aggregated for (it is an aggregate).
    shard: Option<Arc<str>>,
}

/// One `PutRecords` call: the entries to send, and which records each
/// carries (same order).
pub struct Batch {
    /// What to send.
    pub puts: Vec<PutEntry>,
    /// The records behind each entry.
    pub entries: Vec<EntryMembers>,
}

impl Batch {
    /// User records in the call.
    pub fn records(&self) -> usize {
        self.entries.iter().map(|e| e.members.len()).sum()
    }

    /// Bytes of data and partition keys sent.
    pub fn bytes(&self) -> usize {
        self.puts
            .iter()
            .map(|p| p.data.len() + p.partition_key.len())
            .sum()
    }
}

/// What an answer (or a shard map refresh) settled.
#[derive(Default)]
pub struct Completion {
    /// Records written or failed for good, by id.
    pub settled: Vec<(RecordId, Result<Written, SendError>)>,
    /// Records to be sent again, counted by error code.
    pub retried: Vec<(String, u64)>,
    /// An aggregate landed on another shard than the map said: the map is
    /// stale, and the aggregate's records wait for a fresh one.
    pub map_stale: bool,
}

impl Completion {
    /// One more record to be sent again for `code`.
    fn count_retry(&mut self, code: &str) {
        match self.retried.iter_mut().find(|(c, _)| c == code) {
            Some((_, count)) => *count += 1,
            None => self.retried.push((code.to_owned(), 1)),
        }
    }
}

/// An aggregate that landed on a shard the map did not expect.
struct Misplaced {
    members: Vec<Pending>,
    shard_id: Arc<str>,
    sequence_number: Arc<str>,
}

/// The records buffered, by lane, and the rules for batching them.
pub struct Batcher {
    linger: Duration,
    ordering: bool,
    aggregation: Option<(usize, usize)>,
    max_entries: usize,
    max_bytes: usize,
    record_ttl: Option<Duration>,
    backoff: BackoffConfig,
    rng: SmallRng,
    stream: Arc<str>,
    lanes: HashMap<LaneId, Lane>,
    by_key: HashMap<String, LaneId>,
    /// Ready lanes by the id of their first record (oldest first).
    ready: BTreeMap<RecordId, LaneId>,
    parked: BinaryHeap<Reverse<(Instant, LaneId)>>,
    misplaced: Vec<Misplaced>,
    next_lane: LaneId,
    /// Bytes of the records of ready lanes: what the next call can take
    /// from (records behind a key in flight or waiting for a retry do not
    /// make a call due).
    ready_bytes: usize,
    /// Send everything ready now, without lingering.
    flushing: bool,
}

impl Batcher {
    /// An empty buffer for `stream` with these settings (already
    /// validated).
    pub fn new(config: &ProducerConfig, stream: Arc<str>) -> Self {
        Self {
            linger: config.linger,
            ordering: config.ordering,
            aggregation: config
                .aggregation
                .as_ref()
                .map(|a| (a.max_bytes, a.max_records)),
            max_entries: config.max_records_per_call,
            max_bytes: config.max_bytes_per_call,
            record_ttl: config.record_ttl,
            backoff: config.backoff.clone().without_limit(),
            rng: SmallRng::from_os_rng(),
            stream,
            lanes: HashMap::new(),
            by_key: HashMap::new(),
            ready: BTreeMap::new(),
            parked: BinaryHeap::new(),
            misplaced: Vec::new(),
            next_lane: 0,
            ready_bytes: 0,
            flushing: false,
        }
    }

    /// Whether every record has been settled.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty() && self.misplaced.is_empty()
    }

    /// Sends what is ready without lingering (a flush or a close), or
    /// lingers again.
    pub fn set_flushing(&mut self, flushing: bool) {
        self.flushing = flushing;
    }

    /// Buffers a record sent at `now` (already validated).
    pub fn push(&mut self, id: RecordId, record: UserRecord, now: Instant) {
        let lane_id = match (self.ordering, self.by_key.get(&record.partition_key)) {
            (true, Some(&lane)) => lane,
            (ordering, _) => {
                let lane = self.next_lane;
                self.next_lane += 1;
                let key = ordering.then(|| record.partition_key.clone());
                if let Some(key) = &key {
                    self.by_key.insert(key.clone(), lane);
                }
                self.lanes.insert(
                    lane,
                    Lane {
                        key,
                        records: VecDeque::new(),
                        state: LaneState::Ready,
                        bytes: 0,
                    },
                );
                self.ready.insert(id, lane);
                lane
            }
        };
        let hash = record.hash_key();
        if let Some(lane) = self.lanes.get_mut(&lane_id) {
            lane.bytes += record.size();
            if lane.state == LaneState::Ready {
                self.ready_bytes += record.size();
            }
            lane.records.push_back(Pending {
                id,
                record,
                hash,
                enqueued: now,
                lane: lane_id,
                attempts: 0,
                last_error: String::new(),
            });
        }
    }

    /// Moves lanes whose retry time has come back to ready.
    fn unpark(&mut self, now: Instant) {
        while let Some(Reverse((until, lane_id))) = self.parked.peek().copied() {
            if until > now {
                break;
            }
            self.parked.pop();
            if let Some(lane) = self.lanes.get_mut(&lane_id)
                && lane.state == LaneState::Parked(until)
            {
                Self::make_ready(&mut self.ready, &mut self.ready_bytes, lane_id, lane);
            }
        }
    }

    fn make_ready(
        ready: &mut BTreeMap<RecordId, LaneId>,
        ready_bytes: &mut usize,
        lane_id: LaneId,
        lane: &mut Lane,
    ) {
        if let Some(front) = lane.records.front() {
            lane.state = LaneState::Ready;
            ready.insert(front.id, lane_id);
            *ready_bytes += lane.bytes;
        }
    }

    /// Whether a call should go now: something is ready and either the
    /// oldest ready record has lingered long enough, a call's worth is
    /// waiting, or a flush asks for everything.
    fn is_due(&self, now: Instant) -> bool {
        let Some(oldest) = self
            .ready
            .first_key_value()
            .and_then(|(_, lane)| self.lanes.get(lane))
            .and_then(|lane| lane.records.front())
        else {
            return false;
        };
        self.flushing
            || oldest.enqueued + self.linger <= now
            || self.ready_bytes >= self.max_bytes
            || (self.aggregation.is_none() && self.ready.len() >= self.max_entries)
    }

    /// When [`next_batch`](Self::next_batch) may next have something:
    /// the oldest ready record's linger, or the next retry time.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let lingered = self
            .ready
            .first_key_value()
            .and_then(|(_, lane)| self.lanes.get(lane))
            .and_then(|lane| lane.records.front())
            .map(|oldest| oldest.enqueued + self.linger);
        let retry = self.parked.peek().map(|Reverse((until, _))| *until);
        match (lingered, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next call to make, if one is due. `map` groups records by shard
    /// for aggregation; without it (or for a hash key it does not cover)
    /// records go as they are.
    pub fn next_batch(&mut self, now: Instant, map: Option<&ShardMap>) -> Option<Batch> {
        self.unpark(now);
        if !self.is_due(now) {
            return None;
        }
        let mut call = CallBuilder::default();
        while let Some((&front, &lane_id)) = self.ready.first_key_value() {
            let Some(lane) = self.lanes.get_mut(&lane_id) else {
                self.ready.remove(&front);
                continue;
            };
            let bytes = lane.bytes;
            let taken = call.take_from(
                lane,
                self.aggregation,
                map,
                self.max_entries,
                self.max_bytes,
            );
            if taken == 0 {
                break;
            }
            self.ready.remove(&front);
            self.ready_bytes -= bytes;
            lane.state = LaneState::InFlight;
        }
        let batch = call.finish();
        (!batch.puts.is_empty()).then_some(batch)
    }

    /// Settles a call's records by its answer.
    pub fn complete(
        &mut self,
        entries: Vec<EntryMembers>,
        answer: Result<Vec<EntryResult>, PutError>,
        now: Instant,
    ) -> Completion {
        let mut done = Completion::default();
        let mut lanes = Vec::new();
        let answer = match answer {
            // Results that cannot be matched to their entries: send them all
            // again rather than guess.
            Ok(results) if results.len() != entries.len() => Err(PutError::retryable(
                "InvalidResponse",
                format!("{} results for {} entries", results.len(), entries.len()),
            )),
            answer => answer,
        };
        // Every record of one answer that is sent again waits the same
        // time, so that they go out together again.
        let mut retry_at: Option<Instant> = None;
        match answer {
            Ok(results) => {
                for (entry, result) in entries.into_iter().zip(results) {
                    lanes.extend(entry.members.iter().map(|m| m.lane));
                    match result {
                        EntryResult::Written {
                            shard_id,
                            sequence_number,
                        } => {
                            let shard_id: Arc<str> = shard_id.into();
                            let sequence_number: Arc<str> = sequence_number.into();
                            if entry.shard.as_ref().is_some_and(|s| *s != shard_id) {
                                done.map_stale = true;
                                self.misplaced.push(Misplaced {
                                    members: entry.members,
                                    shard_id,
                                    sequence_number,
                                });
                                continue;
                            }
                            let aggregated = entry.shard.is_some();
                            for (index, member) in entry.members.into_iter().enumerate() {
                                done.settled.push((
                                    member.id,
                                    Ok(Written {
                                        shard_id: shard_id.clone(),
                                        sequence_number: sequence_number.clone(),
                                        sub_sequence_number: aggregated.then_some(index as u64),
                                        attempts: member.attempts,
                                    }),
                                ));
                            }
                        }
                        EntryResult::Failed { code, message } => {
                            if EntryResult::is_retryable(&code) {
                                self.retry(
                                    entry.members,
                                    &code,
                                    &message,
                                    now,
                                    &mut retry_at,
                                    &mut done,
                                );
                            } else {
                                let error = SendError::Rejected { code, message };
                                done.settled.extend(
                                    entry
                                        .members
                                        .into_iter()
                                        .map(|m| (m.id, Err(error.clone()))),
                                );
                            }
                        }
                    }
                }
            }
            Err(error) => {
                for entry in entries {
                    lanes.extend(entry.members.iter().map(|m| m.lane));
                    if error.kind == crate::error::PutErrorKind::Retryable {
                        self.retry(
                            entry.members,
                            &error.code,
                            &error.message,
                            now,
                            &mut retry_at,
                            &mut done,
                        );
                    } else {
                        let failure = error.for_record(&self.stream);
                        done.settled.extend(
                            entry
                                .members
                                .into_iter()
                                .map(|m| (m.id, Err(failure.clone()))),
                        );
                    }
                }
            }
        }
        self.land(lanes);
        done
    }

    /// Settles the records of misplaced aggregates with a fresh map: those
    /// whose hash key is in the shard the aggregate landed on are written
    /// there (every consumer reads them from it); the others are sent again
    /// at once, before their lanes' later records.
    pub fn settle_misplaced(&mut self, map: &ShardMap, now: Instant) -> Completion {
        let mut done = Completion::default();
        let mut lanes = Vec::new();
        for misplaced in std::mem::take(&mut self.misplaced) {
            let range = map.range_of(&misplaced.shard_id);
            let mut again = Vec::new();
            // Lanes with a record sent again: their later records in the
            // aggregate go again too, so that none is written before it.
            let mut resent: Vec<LaneId> = Vec::new();
            for (index, member) in misplaced.members.into_iter().enumerate() {
                lanes.push(member.lane);
                let in_shard =
                    range.is_some_and(|(start, end)| (start..=end).contains(&member.hash));
                if in_shard && !resent.contains(&member.lane) {
                    done.settled.push((
                        member.id,
                        Ok(Written {
                            shard_id: misplaced.shard_id.clone(),
                            sequence_number: misplaced.sequence_number.clone(),
                            sub_sequence_number: Some(index as u64),
                            attempts: member.attempts,
                        }),
                    ));
                } else {
                    resent.push(member.lane);
                    again.push(member);
                }
            }
            for member in again.into_iter().rev() {
                done.count_retry("WrongShard");
                self.requeue(member, now);
            }
        }
        self.land(lanes);
        done
    }

    /// Puts records back at the front of their lanes, in order, after a
    /// backoff, or fails those past their time to live.
    fn retry(
        &mut self,
        members: Vec<Pending>,
        code: &str,
        message: &str,
        now: Instant,
        retry_at: &mut Option<Instant>,
        done: &mut Completion,
    ) {
        for mut member in members.into_iter().rev() {
            member.last_error = format!("{code}: {message}");
            if let Some(ttl) = self.record_ttl
                && now.duration_since(member.enqueued) >= ttl
            {
                done.settled.push((
                    member.id,
                    Err(SendError::Expired {
                        ttl,
                        attempts: member.attempts,
                        last_error: member.last_error,
                    }),
                ));
                continue;
            }
            let at = *retry_at.get_or_insert_with(|| {
                now + self
                    .backoff
                    .delay_before_retry(member.attempts, &mut self.rng)
            });
            done.count_retry(code);
            self.requeue(member, at);
        }
    }

    /// Puts a record back at the front of its lane, to go no earlier than
    /// `not_before`. The lane is in flight; [`land`](Self::land) parks it.
    fn requeue(&mut self, member: Pending, not_before: Instant) {
        let Some(lane) = self.lanes.get_mut(&member.lane) else {
            return;
        };
        if let LaneState::Parked(until) = lane.state {
            lane.state = LaneState::Parked(until.max(not_before));
        } else {
            lane.state = LaneState::Parked(not_before);
        }
        lane.bytes += member.record.size();
        lane.records.push_front(member);
    }

    /// Ends the flight of `lanes`: parked ones wait for their retry time,
    /// the others are ready again, or forgotten when empty.
    fn land(&mut self, mut lanes: Vec<LaneId>) {
        lanes.sort_unstable();
        lanes.dedup();
        for lane_id in lanes {
            let in_misplaced = self
                .misplaced
                .iter()
                .any(|m| m.members.iter().any(|p| p.lane == lane_id));
            let Some(lane) = self.lanes.get_mut(&lane_id) else {
                continue;
            };
            if in_misplaced {
                // Still waiting for the map: stays in flight.
                lane.state = LaneState::InFlight;
                continue;
            }
            match lane.state {
                LaneState::Parked(until) => self.parked.push(Reverse((until, lane_id))),
                _ if lane.records.is_empty() => {
                    if let Some(key) = &lane.key {
                        self.by_key.remove(key);
                    }
                    self.lanes.remove(&lane_id);
                }
                _ => Self::make_ready(&mut self.ready, &mut self.ready_bytes, lane_id, lane),
            }
        }
    }
}

/// A record sent as a Kinesis record of its own.
fn plain_entry(record: &UserRecord) -> PutEntry {
    PutEntry {
        partition_key: record.partition_key.clone(),
        explicit_hash_key: record.explicit_hash_key,
        data: record.data.clone(),
    }
}

/// The size of an aggregate holding only `record`, with the key it is put
/// with.
fn aggregate_of_one(record: &UserRecord) -> usize {
    AggregateBuilder::new().encoded_len_with(
        &record.partition_key,
        record.explicit_hash_key,
        record.data.len(),
    ) + record.partition_key.len()
}

/// The entries of one call as they are filled.
#[derive(Default)]
struct CallBuilder {
    plain: Vec<(PutEntry, Pending)>,
    aggregates: Vec<OpenAggregate>,
    /// The aggregate still taking records, by shard.
    open: HashMap<Arc<str>, usize>,
    bytes: usize,
}

struct OpenAggregate {
    shard: Arc<str>,
    builder: AggregateBuilder,
    members: Vec<Pending>,
    /// The partition key it is put with (its first record's).
    key_len: usize,
}

impl OpenAggregate {
    fn size(&self) -> usize {
        self.builder.encoded_len() + self.key_len
    }
}

impl CallBuilder {
    fn entries(&self) -> usize {
        self.plain.len() + self.aggregates.len()
    }

    /// Takes records from the front of `lane` into the call: one plain
    /// record, or as many as go into one aggregate (with ordering, a lane's
    /// records in flight are always in one Kinesis record). Returns how
    /// many; 0 when the call is full.
    fn take_from(
        &mut self,
        lane: &mut Lane,
        aggregation: Option<(usize, usize)>,
        map: Option<&ShardMap>,
        max_entries: usize,
        max_bytes: usize,
    ) -> usize {
        let mut taken = 0;
        // The aggregate this lane's records go into.
        let mut into: Option<usize> = None;
        while let Some(next) = lane.records.front() {
            let record = &next.record;
            let shard = match (aggregation, map) {
                (Some(_), Some(map)) => map.shard_for(next.hash),
                _ => None,
            };
            let (agg_max_bytes, agg_max_records) = aggregation.unwrap_or((0, 0));
            let alone_fits = shard.is_some() && aggregate_of_one(record) <= agg_max_bytes;
            let Some(shard) = shard.filter(|_| alone_fits) else {
                // A plain record: only as the lane's first in this call.
                if taken > 0
                    || self.entries() >= max_entries
                    || self.bytes + record.size() > max_bytes
                {
                    return taken;
                }
                let Some(member) = lane.records.pop_front() else {
                    return taken;
                };
                lane.bytes -= member.record.size();
                self.bytes += member.record.size();
                self.plain.push((plain_entry(&member.record), member));
                return 1;
            };
            // Into the shard's open aggregate if it fits, else (only as the
            // lane's first record) into a new one.
            let target = match self.open.get(shard).copied() {
                Some(index) if into.is_none_or(|i| i == index) => {
                    let open = &self.aggregates[index];
                    let grown = open.builder.encoded_len_with(
                        &record.partition_key,
                        record.explicit_hash_key,
                        record.data.len(),
                    ) + open.key_len;
                    let fits = grown <= agg_max_bytes
                        && open.builder.len() < agg_max_records
                        && self.bytes + grown - open.size() <= max_bytes;
                    fits.then_some(index)
                }
                _ => None,
            };
            let index = match target {
                Some(index) => index,
                None if taken > 0 => return taken,
                None => {
                    let size = aggregate_of_one(record);
                    if self.entries() >= max_entries || self.bytes + size > max_bytes {
                        return taken;
                    }
                    let opened = OpenAggregate {
                        shard: shard.clone(),
                        builder: AggregateBuilder::new(),
                        members: Vec::new(),
                        key_len: record.partition_key.len(),
                    };
                    // The frame (magic bytes, digest) and the key it is put
                    // with count from the start; each record adds its growth.
                    self.bytes += opened.size();
                    self.aggregates.push(opened);
                    let index = self.aggregates.len() - 1;
                    self.open.insert(shard.clone(), index);
                    index
                }
            };
            let Some(member) = lane.records.pop_front() else {
                return taken;
            };
            lane.bytes -= member.record.size();
            let open = &mut self.aggregates[index];
            let before = open.size();
            open.builder.push(
                &member.record.partition_key,
                member.record.explicit_hash_key,
                member.record.data.clone(),
            );
            self.bytes += open.size() - before;
            open.members.push(member);
            taken += 1;
            into = Some(index);
            // Without ordering, each lane holds one record anyway.
        }
        taken
    }

    /// The call's entries: aggregates of one record go as plain records.
    fn finish(self) -> Batch {
        let mut puts = Vec::with_capacity(self.entries());
        let mut entries = Vec::with_capacity(self.entries());
        let mut plain = self.plain;
        let mut aggregates = Vec::with_capacity(self.aggregates.len());
        for aggregate in self.aggregates {
            if aggregate.members.len() == 1 {
                let mut members = aggregate.members;
                let member = members.remove(0);
                plain.push((plain_entry(&member.record), member));
            } else {
                aggregates.push(aggregate);
            }
        }
        for (put, mut member) in plain {
            member.attempts += 1;
            puts.push(put);
            entries.push(EntryMembers {
                members: vec![member],
                shard: None,
            });
        }
        for aggregate in aggregates {
            let mut members = aggregate.members;
            let Some(first) = members.first() else {
                continue;
            };
            let put = PutEntry {
                partition_key: first.record.partition_key.clone(),
                explicit_hash_key: Some(first.hash),
                data: aggregate.builder.finish(),
            };
            for member in &mut members {
                member.attempts += 1;
            }
            puts.push(put);
            entries.push(EntryMembers {
                members,
                shard: Some(aggregate.shard),
            });
        }
        Batch { puts, entries }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::config::AggregationConfig;
    use crate::shard_map::ShardRange;

    fn one_shard() -> ShardMap {
        ShardMap::new(vec![ShardRange {
            shard_id: "shard-0".into(),
            start: 0,
            end: u128::MAX,
        }])
    }

    /// Batches everything, answering each call with success, and checks
    /// Kinesis's limits and the configured ones on every call. Returns the
    /// records settled, in order of settlement.
    fn drain(config: &ProducerConfig, records: Vec<UserRecord>) -> Vec<RecordId> {
        let mut batcher = Batcher::new(config, "s".into());
        let start = Instant::now();
        let count = records.len();
        for (id, record) in records.into_iter().enumerate() {
            batcher.push(id as RecordId, record, start);
        }
        let map = one_shard();
        let mut settled = Vec::new();
        let mut now = start + config.linger;
        let mut sequence = 0u64;
        while !batcher.is_empty() {
            let batch = batcher.next_batch(now, Some(&map)).expect("a due batch");
            assert!(batch.puts.len() <= config.max_records_per_call);
            assert!(
                batch.bytes() <= config.max_bytes_per_call,
                "{} bytes in one call",
                batch.bytes()
            );
            for put in &batch.puts {
                let size = put.data.len() + put.partition_key.len();
                assert!(size <= crate::MAX_RECORD_BYTES);
                if let Some(aggregation) = &config.aggregation
                    && put.data.starts_with(&crate::kpl::MAGIC)
                {
                    assert!(
                        size <= aggregation.max_bytes,
                        "an aggregate of {size} bytes"
                    );
                }
            }
            let results = batch
                .puts
                .iter()
                .map(|_| {
                    sequence += 1;
                    EntryResult::Written {
                        shard_id: "shard-0".into(),
                        sequence_number: sequence.to_string(),
                    }
                })
                .collect();
            let done = batcher.complete(batch.entries, Ok(results), now);
            settled.extend(done.settled.into_iter().map(|(id, outcome)| {
                assert!(outcome.is_ok());
                id
            }));
            now += Duration::from_millis(1);
        }
        assert_eq!(settled.len(), count, "every record settled once");
        assert_eq!(batcher.ready_bytes, 0);
        settled
    }

    #[test]
    fn records_behind_a_key_in_flight_do_not_cut_the_linger_of_others() {
        let config = ProducerConfig {
            linger: Duration::from_secs(1),
            max_bytes_per_call: crate::MAX_RECORD_BYTES,
            ..Default::default()
        };
        let mut batcher = Batcher::new(&config, "s".into());
        let t0 = Instant::now();
        batcher.push(0, UserRecord::new("hot", "first"), t0);
        let first = batcher.next_batch(t0 + config.linger, None).expect("due");
        assert_eq!(first.records(), 1);
        // Over a call's worth waits behind "hot", which is in flight.
        let now = t0 + config.linger;
        batcher.push(1, UserRecord::new("hot", vec![0u8; 600 * 1024]), now);
        batcher.push(2, UserRecord::new("hot", vec![0u8; 600 * 1024]), now);
        batcher.push(3, UserRecord::new("cold", "x"), now);
        assert!(
            batcher.next_batch(now, None).is_none(),
            "the cold record lingers: nothing else can go with it"
        );
        let later = batcher
            .next_batch(now + config.linger, None)
            .expect("lingered");
        assert_eq!(later.records(), 1);
    }

    #[test]
    fn aggregated_calls_stay_within_the_byte_limit() {
        // Long keys: each aggregate's frame and key are a visible share.
        let records: Vec<UserRecord> = (0..20_000)
            .map(|n| UserRecord::new(format!("{n:0200}"), vec![7u8; 100]))
            .collect();
        let config = ProducerConfig {
            aggregation: Some(AggregationConfig::default()),
            max_bytes_per_call: crate::MAX_RECORD_BYTES,
            ordering: false,
            ..Default::default()
        };
        drain(&config, records);
    }

    #[test]
    fn every_record_settles_once_within_the_limits_in_many_shapes() {
        for (ordering, aggregation) in [(true, false), (false, false), (true, true), (false, true)]
        {
            let records: Vec<UserRecord> = (0..3_000usize)
                .map(|n| {
                    let size = [1, 100, 5_000, 60_000, 300_000][n % 5];
                    UserRecord::new(format!("key-{}", n % 37), Bytes::from(vec![1u8; size]))
                })
                .collect();
            let config = ProducerConfig {
                ordering,
                aggregation: aggregation.then(AggregationConfig::default),
                ..Default::default()
            };
            let settled = drain(&config, records);
            if ordering {
                // Per key, in the order sent.
                let mut last: HashMap<usize, RecordId> = HashMap::new();
                for id in settled {
                    let key = id as usize % 37;
                    if let Some(before) = last.insert(key, id) {
                        assert!(before < id, "key {key}: {before} settled after {id}");
                    }
                }
            }
        }
    }
}
