//! [`Kinesis`] in memory: streams whose shards are vectors of records, with
//! controls for what a test needs (closing shards, expiring iterators,
//! injecting errors, counting calls).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use kcl_checkpoint::SequenceNumber;
use kcl_lease::HashKeyRange;

use super::{
    ChildShard, Kinesis, KinesisError, RecordsPage, ShardDescription, StartingPosition,
    StreamSummary, Subscription, SubscriptionEvent,
};
use crate::Record;

/// Streams in memory. Clones share the same streams.
#[derive(Clone, Debug, Default)]
pub struct InMemoryKinesis {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    streams: BTreeMap<String, Stream>,
    /// How many streams were created (each gets its own creation time).
    streams_created: u64,
    /// Errors to return from the next calls, by operation.
    faults: HashMap<&'static str, VecDeque<KinesisError>>,
    calls: HashMap<&'static str, u64>,
    /// Iterators from an older generation have expired.
    iterator_generation: u64,
    next_sequence: u64,
    /// Subscriptions end after this many events (Kinesis ends them after
    /// 5 minutes); `None` for never.
    subscription_events: Option<usize>,
    /// The next this many `ListShards` calls answer with no shard at all (a
    /// bad answer a client must not take for an empty stream).
    empty_listings: usize,
}

#[derive(Debug, Default)]
struct Stream {
    shards: BTreeMap<String, Shard>,
    /// When it was created, in seconds since the Unix epoch.
    created_epoch: u64,
}

/// The account id in-memory streams' ARNs name.
pub const IN_MEMORY_ACCOUNT: &str = "000000000000";

#[derive(Debug)]
struct Shard {
    description: ShardDescription,
    records: Vec<Record>,
    children: Vec<ChildShard>,
}

impl InMemoryKinesis {
    /// No streams.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates `stream` with `shards` open shards splitting the hash key
    /// space evenly. Returns the shard ids.
    pub fn create_stream(&self, stream: &str, shards: u32) -> Vec<String> {
        let mut state = self.state();
        let width = u128::MAX / u128::from(shards.max(1));
        // Each stream created at its own second, as a stream created again
        // under the same name would be.
        let created_epoch = 1_700_000_000 + state.streams_created;
        state.streams_created += 1;
        let stream = state.streams.entry(stream.to_owned()).or_insert(Stream {
            shards: BTreeMap::new(),
            created_epoch,
        });
        (0..shards)
            .map(|n| {
                let shard_id = format!("shardId-{n:012}");
                let start = width * u128::from(n);
                let end = if n + 1 == shards {
                    u128::MAX
                } else {
                    start + width - 1
                };
                stream.shards.insert(
                    shard_id.clone(),
                    Shard {
                        description: ShardDescription {
                            shard_id: shard_id.clone(),
                            parent_shard_id: None,
                            adjacent_parent_shard_id: None,
                            hash_key_range: HashKeyRange { start, end },
                            ending_sequence_number: None,
                        },
                        records: Vec::new(),
                        children: Vec::new(),
                    },
                );
                shard_id
            })
            .collect()
    }

    /// Deletes `stream` with its records: every later call on it answers
    /// that it is not found.
    pub fn delete_stream(&self, stream: &str) {
        self.state().streams.remove(stream);
    }

    /// Appends a record to the shard whose hash range holds `partition_key`'s
    /// hash. Returns the shard id and the sequence number.
    ///
    /// # Panics
    /// If the stream does not exist (a test setup error).
    pub fn put_record(&self, stream: &str, partition_key: &str, data: &[u8]) -> (String, String) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        partition_key.hash(&mut hasher);
        let half = u128::from(hasher.finish());
        let hash = (half << 64) | half;
        let shard_id = {
            let state = self.state();
            let stream = state.streams.get(stream).expect("stream exists");
            stream
                .shards
                .values()
                .filter(|s| s.description.is_open())
                .find(|s| {
                    let range = s.description.hash_key_range;
                    range.start <= hash && hash <= range.end
                })
                .map(|s| s.description.shard_id.clone())
                .expect("an open shard covers every hash key")
        };
        let sequence = self.put_record_to_shard(stream, &shard_id, partition_key, data);
        (shard_id, sequence)
    }

    /// Appends a record to `shard_id`. Returns its sequence number.
    ///
    /// # Panics
    /// If the stream or shard does not exist, or the shard is closed.
    pub fn put_record_to_shard(
        &self,
        stream: &str,
        shard_id: &str,
        partition_key: &str,
        data: &[u8],
    ) -> String {
        let mut state = self.state();
        state.next_sequence += 1;
        // Realistic length (56 digits), increasing across the stream.
        let sequence = format!("4959{:052}", state.next_sequence);
        let shard = state
            .streams
            .get_mut(stream)
            .and_then(|s| s.shards.get_mut(shard_id))
            .expect("shard exists");
        assert!(shard.description.is_open(), "{shard_id} is closed");
        shard.records.push(Record {
            data: Bytes::copy_from_slice(data),
            partition_key: partition_key.to_owned(),
            sequence_number: SequenceNumber::new(&sequence).expect("digits"),
            sub_sequence_number: 0,
            approximate_arrival_timestamp: Some(SystemTime::now()),
            explicit_hash_key: None,
        });
        sequence
    }

    /// Closes `shard_id`: after its last record, readers reach shard end
    /// with no child shards.
    pub fn close_shard(&self, stream: &str, shard_id: &str) {
        let mut state = self.state();
        if let Some(shard) = state
            .streams
            .get_mut(stream)
            .and_then(|s| s.shards.get_mut(shard_id))
        {
            let last = shard
                .records
                .last()
                .map_or_else(|| "0".to_owned(), |r| r.sequence_number.to_string());
            shard.description.ending_sequence_number = Some(last);
        }
    }

    /// Splits `shard_id` at `new_starting_hash_key`: the shard closes and two
    /// children take its lower and upper hash ranges. Returns the children's
    /// ids.
    ///
    /// # Panics
    /// If the shard does not exist, is closed, or the key is outside it.
    pub fn split_shard(
        &self,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: u128,
    ) -> [String; 2] {
        let mut state = self.state();
        let stream = state.streams.get_mut(stream).expect("stream exists");
        let range = stream.shards[shard_id].description.hash_key_range;
        assert!(range.start < new_starting_hash_key && new_starting_hash_key <= range.end);
        let lower = HashKeyRange {
            start: range.start,
            end: new_starting_hash_key - 1,
        };
        let upper = HashKeyRange {
            start: new_starting_hash_key,
            end: range.end,
        };
        let lower = add_child(stream, &[shard_id], lower);
        let upper = add_child(stream, &[shard_id], upper);
        [lower, upper]
    }

    /// Merges two adjacent open shards into a new one. Returns its id.
    ///
    /// # Panics
    /// If a shard does not exist, is closed, or they are not adjacent.
    pub fn merge_shards(&self, stream: &str, shard_id: &str, adjacent_shard_id: &str) -> String {
        let mut state = self.state();
        let stream = state.streams.get_mut(stream).expect("stream exists");
        let a = stream.shards[shard_id].description.hash_key_range;
        let b = stream.shards[adjacent_shard_id].description.hash_key_range;
        assert!(a.end.checked_add(1) == Some(b.start) || b.end.checked_add(1) == Some(a.start));
        let range = HashKeyRange {
            start: a.start.min(b.start),
            end: a.end.max(b.end),
        };
        add_child(stream, &[shard_id, adjacent_shard_id], range)
    }

    /// Makes subscriptions opened from now on end after `events` events, so
    /// that readers must subscribe again.
    pub fn end_subscriptions_after(&self, events: usize) {
        self.state().subscription_events = Some(events);
    }

    /// Makes the next `times` `ListShards` calls answer with no shard.
    pub fn answer_empty_listings(&self, times: usize) {
        self.state().empty_listings = times;
    }

    /// Makes every iterator handed out so far expire.
    pub fn expire_iterators(&self) {
        self.state().iterator_generation += 1;
    }

    /// Makes the next `times` calls of `operation` (`"GetRecords"`,
    /// `"GetShardIterator"`, `"ListShards"`) fail with `error`.
    pub fn fail_next(&self, operation: &'static str, error: KinesisError, times: usize) {
        let mut state = self.state();
        let queue = state.faults.entry(operation).or_default();
        queue.extend(std::iter::repeat_n(error, times));
    }

    /// How many calls of `operation` were made (failed ones included).
    pub fn calls(&self, operation: &'static str) -> u64 {
        self.state().calls.get(operation).copied().unwrap_or(0)
    }

    /// Counts a call and returns the injected fault for it, if any.
    fn begin(state: &mut State, operation: &'static str) -> Result<(), KinesisError> {
        *state.calls.entry(operation).or_default() += 1;
        match state
            .faults
            .get_mut(operation)
            .and_then(VecDeque::pop_front)
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Adds an open shard made from `parents` (closing them) and returns its id.
fn add_child(stream: &mut Stream, parents: &[&str], range: HashKeyRange) -> String {
    let shard_id = format!("shardId-{:012}", stream.shards.len());
    let child = ChildShard {
        shard_id: shard_id.clone(),
        parent_shards: parents.iter().map(|p| (*p).to_owned()).collect(),
        hash_key_range: range,
    };
    for parent in parents {
        let shard = stream.shards.get_mut(*parent).expect("parent exists");
        if shard.description.is_open() {
            let last = shard
                .records
                .last()
                .map_or_else(|| "0".to_owned(), |r| r.sequence_number.to_string());
            shard.description.ending_sequence_number = Some(last);
        }
        shard.children.push(child.clone());
    }
    stream.shards.insert(
        shard_id.clone(),
        Shard {
            description: ShardDescription {
                shard_id: shard_id.clone(),
                parent_shard_id: parents.first().map(|p| (*p).to_owned()),
                adjacent_parent_shard_id: parents.get(1).map(|p| (*p).to_owned()),
                hash_key_range: range,
                ending_sequence_number: None,
            },
            records: Vec::new(),
            children: Vec::new(),
        },
    );
    shard_id
}

/// The index of the first record a reader starting at `position` gets.
fn position_index(
    shard: &Shard,
    position: &StartingPosition,
    operation: &'static str,
) -> Result<usize, KinesisError> {
    let find = |sequence: &str| {
        let wanted = SequenceNumber::new(sequence).map_err(|e| KinesisError::Refused {
            operation,
            code: "InvalidArgumentException".into(),
            message: e.to_string(),
        })?;
        Ok::<_, KinesisError>(
            shard
                .records
                .iter()
                .position(|r| r.sequence_number >= wanted)
                .map(|i| (i, shard.records[i].sequence_number == wanted))
                .unwrap_or((shard.records.len(), false)),
        )
    };
    Ok(match position {
        StartingPosition::TrimHorizon => 0,
        StartingPosition::Latest => shard.records.len(),
        StartingPosition::AtTimestamp(at) => shard
            .records
            .iter()
            .position(|r| r.approximate_arrival_timestamp.is_some_and(|t| t >= *at))
            .unwrap_or(shard.records.len()),
        StartingPosition::AtSequenceNumber(sequence) => find(sequence)?.0,
        StartingPosition::AfterSequenceNumber(sequence) => {
            let (index, exact) = find(sequence)?;
            if exact { index + 1 } else { index }
        }
    })
}

/// An in-memory `SubscribeToShard` stream: up to 100 records an event, an
/// empty event every 200 ms once caught up, the child shards in the last
/// event at shard end.
struct MemorySubscription {
    kinesis: InMemoryKinesis,
    stream: String,
    shard: String,
    index: usize,
    events_left: Option<usize>,
    ended: bool,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, KinesisError> {
        const OP: &str = "SubscribeToShardEvent";
        if self.ended || self.events_left == Some(0) {
            return Ok(None);
        }
        if let Some(left) = &mut self.events_left {
            *left -= 1;
        }
        let event = {
            let mut state = self.kinesis.state();
            InMemoryKinesis::begin(&mut state, OP)?;
            let shard = state
                .streams
                .get(&self.stream)
                .and_then(|s| s.shards.get(&self.shard))
                .ok_or_else(|| not_found(OP, &self.shard))?;
            let end = (self.index + 100).min(shard.records.len());
            let records = shard.records[self.index..end].to_vec();
            self.index = end;
            let caught_up = end >= shard.records.len();
            let shard_ended = caught_up && !shard.description.is_open();
            self.ended = shard_ended;
            SubscriptionEvent {
                continuation_sequence_number: (!shard_ended).then(|| {
                    shard
                        .records
                        .get(end.saturating_sub(1))
                        .map_or_else(|| "0".to_owned(), |r| r.sequence_number.to_string())
                }),
                records,
                millis_behind_latest: Some(if caught_up { 0 } else { 1_000 }),
                child_shards: if shard_ended {
                    shard.children.clone()
                } else {
                    Vec::new()
                },
            }
        };
        if event.records.is_empty() && !self.ended {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Ok(Some(event))
    }
}

fn not_found(operation: &'static str, what: &str) -> KinesisError {
    KinesisError::NotFound {
        operation,
        message: format!("{what} not found"),
    }
}

/// An iterator names a stream, a shard, the index of the next record and
/// the generation it was made in.
fn encode_iterator(stream: &str, shard: &str, index: usize, generation: u64) -> String {
    format!("{stream}|{shard}|{index}|{generation}")
}

fn decode_iterator(iterator: &str) -> Option<(String, String, usize, u64)> {
    let mut parts = iterator.split('|');
    let stream = parts.next()?.to_owned();
    let shard = parts.next()?.to_owned();
    let index = parts.next()?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    Some((stream, shard, index, generation))
}

#[async_trait]
impl Kinesis for InMemoryKinesis {
    async fn describe_stream(&self, name: &str) -> Result<StreamSummary, KinesisError> {
        const OP: &str = "DescribeStreamSummary";
        let mut state = self.state();
        Self::begin(&mut state, OP)?;
        let stream = state.streams.get(name).ok_or_else(|| not_found(OP, name))?;
        Ok(StreamSummary {
            arn: format!("arn:aws:kinesis:us-east-1:{IN_MEMORY_ACCOUNT}:stream/{name}"),
            created: std::time::UNIX_EPOCH + std::time::Duration::from_secs(stream.created_epoch),
        })
    }

    async fn list_shards(&self, stream: &str) -> Result<Vec<ShardDescription>, KinesisError> {
        let mut state = self.state();
        Self::begin(&mut state, "ListShards")?;
        if state.empty_listings > 0 {
            state.empty_listings -= 1;
            return Ok(Vec::new());
        }
        let stream = state
            .streams
            .get(stream)
            .ok_or_else(|| not_found("ListShards", stream))?;
        Ok(stream
            .shards
            .values()
            .map(|s| s.description.clone())
            .collect())
    }

    async fn get_shard_iterator(
        &self,
        stream_name: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, KinesisError> {
        const OP: &str = "GetShardIterator";
        let mut state = self.state();
        Self::begin(&mut state, OP)?;
        let generation = state.iterator_generation;
        let shard = state
            .streams
            .get(stream_name)
            .and_then(|s| s.shards.get(shard_id))
            .ok_or_else(|| not_found(OP, shard_id))?;
        let index = position_index(shard, position, OP)?;
        Ok(encode_iterator(stream_name, shard_id, index, generation))
    }

    async fn register_consumer(&self, stream: &str, name: &str) -> Result<String, KinesisError> {
        let mut state = self.state();
        Self::begin(&mut state, "RegisterStreamConsumer")?;
        if !state.streams.contains_key(stream) {
            return Err(not_found("RegisterStreamConsumer", stream));
        }
        Ok(format!("{stream}|consumer|{name}"))
    }

    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<Box<dyn Subscription>, KinesisError> {
        const OP: &str = "SubscribeToShard";
        let mut state = self.state();
        Self::begin(&mut state, OP)?;
        let stream = consumer_arn
            .split('|')
            .next()
            .unwrap_or_default()
            .to_owned();
        let shard = state
            .streams
            .get(&stream)
            .and_then(|s| s.shards.get(shard_id))
            .ok_or_else(|| not_found(OP, shard_id))?;
        let index = position_index(shard, position, OP)?;
        Ok(Box::new(MemorySubscription {
            kinesis: self.clone(),
            stream,
            shard: shard_id.to_owned(),
            index,
            events_left: state.subscription_events,
            ended: false,
        }))
    }

    async fn get_records(&self, iterator: &str, limit: u32) -> Result<RecordsPage, KinesisError> {
        const OP: &str = "GetRecords";
        let mut state = self.state();
        Self::begin(&mut state, OP)?;
        let (stream, shard_id, index, generation) =
            decode_iterator(iterator).ok_or_else(|| KinesisError::Refused {
                operation: OP,
                code: "InvalidArgumentException".into(),
                message: format!("not a shard iterator: {iterator}"),
            })?;
        if generation != state.iterator_generation {
            return Err(KinesisError::ExpiredIterator {
                message: "iterator expired".into(),
            });
        }
        let shard = state
            .streams
            .get(&stream)
            .and_then(|s| s.shards.get(&shard_id))
            .ok_or_else(|| not_found(OP, &shard_id))?;
        let end = (index + limit.max(1) as usize).min(shard.records.len());
        let records = shard.records.get(index..end).unwrap_or_default().to_vec();
        let caught_up = end >= shard.records.len();
        let shard_ended = caught_up && !shard.description.is_open();
        Ok(RecordsPage {
            records,
            next_iterator: (!shard_ended)
                .then(|| encode_iterator(&stream, &shard_id, end, generation)),
            millis_behind_latest: Some(if caught_up { 0 } else { 1_000 }),
            child_shards: if shard_ended {
                shard.children.clone()
            } else {
                Vec::new()
            },
        })
    }
}
