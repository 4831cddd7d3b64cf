//! An in-memory stream that takes `PutRecords` and `ListShards` as Kinesis
//! does (shards by hash key range, sequence numbers in write order,
//! resharding, requests over Kinesis's limits refused), with injectable faults: whole calls that fail, entries that
//! are throttled, calls that write and then report a failure, and calls
//! held until released. For tests and simulations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use crate::error::{PutError, PutErrorKind};
use crate::shard_map::ShardRange;
use crate::sink::{EntryResult, PutEntry, Sink};

/// A record as the in-memory stream stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// The shard it was written to.
    pub shard_id: String,
    /// Its sequence number (increasing in write order across the stream).
    pub sequence_number: String,
    /// Its partition key.
    pub partition_key: String,
    /// Its explicit hash key, if it had one.
    pub explicit_hash_key: Option<u128>,
    /// Its data.
    pub data: Bytes,
}

type EntryPredicate = Box<dyn Fn(&PutEntry) -> bool + Send>;

struct EntryFault {
    code: String,
    remaining: usize,
    matches: EntryPredicate,
}

#[derive(Default)]
struct State {
    streams: HashMap<String, Vec<Shard>>,
    records: HashMap<String, Vec<StoredRecord>>,
    next_sequence: u64,
    call_faults: Vec<PutError>,
    list_faults: Vec<PutError>,
    entry_faults: Vec<EntryFault>,
    applied_then_failed: usize,
    put_calls: u64,
    list_calls: u64,
}

struct Shard {
    id: String,
    start: u128,
    end: u128,
    open: bool,
}

/// The in-memory stream (see the module docs). Cheap to clone: clones share
/// the streams.
#[derive(Clone)]
pub struct InMemorySink {
    state: Arc<Mutex<State>>,
    gate: Arc<watch::Sender<bool>>,
}

impl Default for InMemorySink {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            gate: Arc::new(watch::channel(true).0),
        }
    }
}

impl InMemorySink {
    /// No streams yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates `stream` with `shards` shards splitting the hash key space
    /// evenly; returns their ids.
    pub fn create_stream(&self, stream: &str, shards: u32) -> Vec<String> {
        let shards = shards.max(1);
        let width = u128::MAX / u128::from(shards);
        let list: Vec<Shard> = (0..shards)
            .map(|n| Shard {
                id: format!("shardId-{n:012}"),
                start: width * u128::from(n),
                end: if n + 1 == shards {
                    u128::MAX
                } else {
                    width * u128::from(n + 1) - 1
                },
                open: true,
            })
            .collect();
        let ids = list.iter().map(|s| s.id.clone()).collect();
        let mut state = self.state();
        state.streams.insert(stream.to_owned(), list);
        state.records.insert(stream.to_owned(), Vec::new());
        ids
    }

    /// Splits the open shard `shard_id` in the middle of its range; returns
    /// the two children's ids.
    ///
    /// # Panics
    /// If the stream or the open shard does not exist.
    pub fn split_shard(&self, stream: &str, shard_id: &str) -> (String, String) {
        let mut state = self.state();
        let shards = state.streams.get_mut(stream).expect("no such stream");
        let next = shards.len();
        let parent = shards
            .iter_mut()
            .find(|s| s.id == shard_id && s.open)
            .expect("no such open shard");
        parent.open = false;
        let (start, end) = (parent.start, parent.end);
        let middle = start + (end - start) / 2;
        let left = format!("shardId-{next:012}");
        let right = format!("shardId-{:012}", next + 1);
        shards.push(Shard {
            id: left.clone(),
            start,
            end: middle,
            open: true,
        });
        shards.push(Shard {
            id: right.clone(),
            start: middle + 1,
            end,
            open: true,
        });
        (left, right)
    }

    /// Every record written to `stream`, in write order.
    pub fn records(&self, stream: &str) -> Vec<StoredRecord> {
        self.state()
            .records
            .get(stream)
            .cloned()
            .unwrap_or_default()
    }

    /// The next `times` calls fail as a whole with `error`, writing nothing.
    pub fn fail_calls(&self, error: PutError, times: usize) {
        let mut state = self.state();
        state.call_faults.extend(std::iter::repeat_n(error, times));
    }

    /// The next `times` `ListShards` calls fail with `error`.
    pub fn fail_listings(&self, error: PutError, times: usize) {
        let mut state = self.state();
        state.list_faults.extend(std::iter::repeat_n(error, times));
    }

    /// The next `times` entries for which `matches` holds fail with `code`
    /// (inside an answer whose other entries are written).
    pub fn fail_entries(
        &self,
        code: &str,
        times: usize,
        matches: impl Fn(&PutEntry) -> bool + Send + 'static,
    ) {
        self.state().entry_faults.push(EntryFault {
            code: code.to_owned(),
            remaining: times,
            matches: Box::new(matches),
        });
    }

    /// The next `times` calls write their entries, then report a timeout
    /// (the answer was lost).
    pub fn apply_then_fail(&self, times: usize) {
        self.state().applied_then_failed += times;
    }

    /// Holds every call from now until [`release`](Self::release).
    pub fn hold(&self) {
        self.gate.send_replace(false);
    }

    /// Lets held calls go on.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    /// `PutRecords` calls answered (or failed) so far.
    pub fn put_calls(&self) -> u64 {
        self.state().put_calls
    }

    /// `ListShards` calls answered so far.
    pub fn list_calls(&self) -> u64 {
        self.state().list_calls
    }

    async fn wait_for_gate(&self) {
        let mut open = self.gate.subscribe();
        // The sender lives in `self`: the wait ends when released.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// Refuses a request Kinesis would refuse as a whole: over 500 entries or
/// 5 MiB, a record over 1 MiB, a partition key of 0 or over 256 characters.
fn check_limits(entries: &[PutEntry]) -> Result<(), PutError> {
    let invalid = |message: String| PutError {
        kind: PutErrorKind::Rejected,
        code: "ValidationException".into(),
        message,
    };
    if entries.is_empty() || entries.len() > crate::MAX_RECORDS_PER_CALL {
        return Err(invalid(format!("{} records in one call", entries.len())));
    }
    let mut total = 0;
    for entry in entries {
        let size = entry.data.len() + entry.partition_key.len();
        let chars = entry.partition_key.chars().count();
        if size > crate::MAX_RECORD_BYTES || chars == 0 || chars > crate::MAX_PARTITION_KEY_CHARS {
            return Err(invalid(format!(
                "a record of {size} bytes with a key of {chars} characters"
            )));
        }
        total += size;
    }
    if total > crate::MAX_BYTES_PER_CALL {
        return Err(invalid(format!("{total} bytes in one call")));
    }
    Ok(())
}

fn not_found(stream: &str) -> PutError {
    PutError {
        kind: PutErrorKind::StreamNotFound,
        code: "ResourceNotFoundException".into(),
        message: format!("Stream {stream} under account 000000000000 not found."),
    }
}

#[async_trait]
impl Sink for InMemorySink {
    async fn put_records(
        &self,
        stream: &str,
        entries: Vec<PutEntry>,
    ) -> Result<Vec<EntryResult>, PutError> {
        self.wait_for_gate().await;
        let mut state = self.state();
        state.put_calls += 1;
        if !state.call_faults.is_empty() {
            return Err(state.call_faults.remove(0));
        }
        let State {
            streams,
            records,
            next_sequence,
            entry_faults,
            ..
        } = &mut *state;
        let shards = streams.get(stream).ok_or_else(|| not_found(stream))?;
        check_limits(&entries)?;
        let written = records.entry(stream.to_owned()).or_default();
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            let fault = entry_faults
                .iter_mut()
                .find(|f| f.remaining > 0 && (f.matches)(&entry));
            if let Some(fault) = fault {
                fault.remaining -= 1;
                results.push(EntryResult::Failed {
                    code: fault.code.clone(),
                    message: "injected by the in-memory stream".into(),
                });
                continue;
            }
            let hash = entry
                .explicit_hash_key
                .unwrap_or_else(|| crate::kpl::partition_key_hash(&entry.partition_key));
            let Some(shard) = shards
                .iter()
                .find(|s| s.open && (s.start..=s.end).contains(&hash))
            else {
                results.push(EntryResult::Failed {
                    code: "InternalFailure".into(),
                    message: "no open shard for the hash key".into(),
                });
                continue;
            };
            *next_sequence += 1;
            let sequence_number = format!("49{:054}", *next_sequence);
            written.push(StoredRecord {
                shard_id: shard.id.clone(),
                sequence_number: sequence_number.clone(),
                partition_key: entry.partition_key,
                explicit_hash_key: entry.explicit_hash_key,
                data: entry.data,
            });
            results.push(EntryResult::Written {
                shard_id: shard.id.clone(),
                sequence_number,
            });
        }
        entry_faults.retain(|f| f.remaining > 0);
        if state.applied_then_failed > 0 {
            state.applied_then_failed -= 1;
            return Err(PutError::retryable(
                "Timeout",
                "the answer was lost (injected)",
            ));
        }
        Ok(results)
    }

    async fn open_shards(&self, stream: &str) -> Result<Vec<ShardRange>, PutError> {
        let mut state = self.state();
        state.list_calls += 1;
        if !state.list_faults.is_empty() {
            return Err(state.list_faults.remove(0));
        }
        let shards = state.streams.get(stream).ok_or_else(|| not_found(stream))?;
        Ok(shards
            .iter()
            .filter(|s| s.open)
            .map(|s| ShardRange {
                shard_id: s.id.clone(),
                start: s.start,
                end: s.end,
            })
            .collect())
    }
}
