//! Shards and heartbeats for the unit tests.

use std::time::SystemTime;

use kcl_core::kinesis::ShardDescription;
use kcl_lease::{HashKeyRange, WorkerHeartbeat};

/// A shard as `ListShards` describes it: with `parents`, open or closed.
pub fn shard(id: &str, parents: &[&str], open: bool) -> ShardDescription {
    ShardDescription {
        shard_id: id.into(),
        parent_shard_id: parents.first().map(|p| (*p).to_owned()),
        adjacent_parent_shard_id: parents.get(1).map(|p| (*p).to_owned()),
        hash_key_range: HashKeyRange { start: 0, end: 9 },
        ending_sequence_number: (!open).then(|| "9".to_owned()),
    }
}

/// A plain heartbeat of `worker`, written at `written_at`.
pub fn heartbeat(worker: &str, written_at: Option<SystemTime>) -> WorkerHeartbeat {
    WorkerHeartbeat {
        worker: worker.into(),
        beat: 1,
        draining: false,
        failover_time: None,
        streams: None,
        written_at,
        evicted: false,
        stalled_shards: Default::default(),
        offered: Default::default(),
    }
}
