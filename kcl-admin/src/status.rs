//! What a consumer group is doing, from its lease table: its workers and
//! its leases.
//!
//! [`status`] is a pure function of one read of both tables; [`read`] does
//! the reading.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_lease::assignment::waiting_on_parents;
use kcl_lease::{Lease, LeaseStore, WorkerHeartbeat};
use serde::Serialize;

use crate::AdminError;

/// A lease as an operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// A child shard that has not started: a parent is not finished yet.
    WaitingForParents,
    /// Owned by a worker with a heartbeat.
    Processing,
    /// Being handed over from one worker to another.
    HandingOver,
    /// Nobody owns it: the next assignment round gives it to a worker.
    Unassigned,
    /// Its owner has no heartbeat (stopped, crashed, or a worker of
    /// another library): the next assignment round gives it to a worker
    /// once the owner is judged gone.
    OwnerGone,
    /// Read to its end and checkpointed at `SHARD_END`.
    Finished,
}

impl LeaseState {
    /// How the table shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WaitingForParents => "waiting for parents",
            Self::Processing => "processing",
            Self::HandingOver => "handing over",
            Self::Unassigned => "unassigned",
            Self::OwnerGone => "owner gone",
            Self::Finished => "finished",
        }
    }
}

/// A worker, by its heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerStatus {
    /// The worker's id.
    pub worker: String,
    /// How long ago it last wrote its heartbeat, by this machine's clock
    /// against the worker's (`None` when the item does not say).
    pub heartbeat_age_millis: Option<u64>,
    /// Whether it is stopping (or evicted): it takes no leases and hands
    /// its own over.
    pub draining: bool,
    /// Whether an operator evicted it (`kcl-admin evict`): it drains
    /// without stopping.
    pub evicted: bool,
    /// How many leases it processes.
    pub leases_held: usize,
    /// The streams it consumes (a multi-stream application's workers).
    pub streams: Option<Vec<String>>,
    /// The shards it reports stalled: a processor call or reads that have
    /// not returned for its stall time (`stream/shard` in a multi-stream
    /// application).
    pub stalled_shards: Vec<String>,
}

/// A lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseStatus {
    /// The stream (`account:stream:epoch`) of a multi-stream application's
    /// lease.
    pub stream: Option<String>,
    /// The shard.
    pub shard: String,
    /// The worker that owns it (during a handoff, the receiving one).
    pub owner: Option<String>,
    /// The worker handing it over, during a handoff.
    pub handing_over_from: Option<String>,
    /// Where the group is in the shard, as the lease table stores it.
    pub checkpoint: String,
    /// The shards it was split or merged from.
    pub parents: Vec<String>,
    /// The shards it was split or merged into, once it ended.
    pub children: Vec<String>,
    /// What is happening to it.
    pub state: LeaseState,
    /// Its worker reports it stalled (see [`WorkerStatus::stalled_shards`]).
    pub stalled: bool,
}

/// The group, as one read of its tables found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The application (the lease table).
    pub application: String,
    /// Every worker with a heartbeat, by id.
    pub workers: Vec<WorkerStatus>,
    /// Every lease, by key.
    pub leases: Vec<LeaseStatus>,
}

/// The state of `lease`, given the whole table and the workers with a
/// heartbeat.
pub fn lease_state(
    lease: &Lease,
    table: &BTreeMap<&str, &Lease>,
    heartbeats: &[WorkerHeartbeat],
) -> LeaseState {
    let has_heartbeat = |worker: &str| heartbeats.iter().any(|h| h.worker == worker);
    if lease.is_finished() {
        LeaseState::Finished
    } else if waiting_on_parents(lease, table) {
        LeaseState::WaitingForParents
    } else if lease.handoff_in_progress() {
        LeaseState::HandingOver
    } else {
        match &lease.owner {
            None => LeaseState::Unassigned,
            Some(owner) if has_heartbeat(owner) => LeaseState::Processing,
            Some(_) => LeaseState::OwnerGone,
        }
    }
}

/// Whether the worker processing `lease` reports it stalled.
fn is_stalled(lease: &Lease, heartbeats: &[WorkerHeartbeat]) -> bool {
    let name = match &lease.stream {
        Some(stream) => format!("{}/{}", stream.stream_name, lease.shard_id()),
        None => lease.shard_id().to_owned(),
    };
    lease.processing_owner().is_some_and(|owner| {
        heartbeats
            .iter()
            .any(|h| h.worker == owner && h.stalled_shards.contains(&name))
    })
}

/// How a checkpoint reads in a report: a sequence number (with its
/// sub-sequence number when not 0), or the sentinel's name.
pub(crate) fn checkpoint_text(checkpoint: &ExtendedSequenceNumber) -> String {
    match checkpoint {
        ExtendedSequenceNumber::Record {
            sequence,
            sub_sequence,
        } if *sub_sequence > 0 => format!("{sequence}/{sub_sequence}"),
        ExtendedSequenceNumber::Record { sequence, .. } => sequence.to_string(),
        other => other.to_string(),
    }
}

/// The status of `application` from its `leases` and `heartbeats`, read
/// at `now`.
pub fn status(
    application: &str,
    leases: &[Lease],
    heartbeats: &[WorkerHeartbeat],
    now: SystemTime,
) -> Status {
    let table: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    let mut workers: Vec<WorkerStatus> = heartbeats
        .iter()
        .map(|heartbeat| WorkerStatus {
            worker: heartbeat.worker.clone(),
            heartbeat_age_millis: heartbeat.written_at.map(|at| {
                now.duration_since(at)
                    .map_or(0, |age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
            }),
            draining: heartbeat.draining,
            evicted: heartbeat.evicted,
            leases_held: leases
                .iter()
                .filter(|l| !l.is_finished())
                .filter(|l| l.processing_owner() == Some(heartbeat.worker.as_str()))
                .count(),
            streams: heartbeat
                .streams
                .as_ref()
                .map(|streams| streams.iter().cloned().collect()),
            stalled_shards: heartbeat.stalled_shards.iter().cloned().collect(),
        })
        .collect();
    workers.sort_by(|a, b| a.worker.cmp(&b.worker));
    let leases = table
        .values()
        .map(|lease| LeaseStatus {
            stream: lease.stream.as_ref().map(ToString::to_string),
            shard: lease.shard_id().to_owned(),
            owner: lease.owner.clone(),
            handing_over_from: lease.checkpoint_owner.clone(),
            checkpoint: checkpoint_text(&lease.checkpoint),
            parents: lease.parent_shard_ids.iter().cloned().collect(),
            children: lease.child_shard_ids.iter().cloned().collect(),
            state: lease_state(lease, &table, heartbeats),
            stalled: is_stalled(lease, heartbeats),
        })
        .collect();
    Status {
        application: application.to_owned(),
        workers,
        leases,
    }
}

/// Reads both tables of `application`: its leases and its workers'
/// heartbeats (a missing table is an unknown application).
pub(crate) async fn read_tables(
    store: &dyn LeaseStore,
    application: &str,
) -> Result<(Vec<Lease>, Vec<WorkerHeartbeat>), AdminError> {
    let listing = store
        .list_table()
        .await
        .map_err(|e| AdminError::from_store(application, e))?;
    let heartbeats = store
        .list_heartbeats()
        .await
        .map_err(|e| AdminError::from_store(application, e))?;
    Ok((listing.leases, heartbeats))
}

/// Reads both tables of `application` through `store` and reports.
pub async fn read(store: &dyn LeaseStore, application: &str) -> Result<Status, AdminError> {
    let (leases, heartbeats) = read_tables(store, application).await?;
    Ok(status(application, &leases, &heartbeats, SystemTime::now()))
}

impl Status {
    /// The status as two tables, workers then leases.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "application {}", self.application);
        let _ = writeln!(
            out,
            "\n{:<28} {:>10} {:>8} {:>6}",
            "worker", "heartbeat", "draining", "leases"
        );
        for worker in &self.workers {
            let age = worker.heartbeat_age_millis.map_or_else(
                || "-".to_owned(),
                |ms| format!("{:.1}s ago", ms as f64 / 1000.0),
            );
            let _ = writeln!(
                out,
                "{:<28} {:>10} {:>8} {:>6}",
                worker.worker,
                age,
                match (worker.evicted, worker.draining) {
                    (true, _) => "evicted",
                    (false, true) => "yes",
                    (false, false) => "no",
                },
                worker.leases_held
            );
        }
        if self.workers.is_empty() {
            let _ = writeln!(out, "(no worker has a heartbeat)");
        }
        let multi_stream = self.leases.iter().any(|l| l.stream.is_some());
        let _ = writeln!(out);
        if multi_stream {
            let _ = write!(out, "{:<36} ", "stream");
        }
        let _ = writeln!(
            out,
            "{:<24} {:<20} {:<26} {:<20} family",
            "shard", "state", "owner", "checkpoint"
        );
        for lease in &self.leases {
            if multi_stream {
                let _ = write!(out, "{:<36} ", lease.stream.as_deref().unwrap_or("-"));
            }
            let owner = match (&lease.owner, &lease.handing_over_from) {
                (Some(to), Some(from)) => format!("{from}->{to}"),
                (Some(owner), None) => owner.clone(),
                (None, _) => "-".to_owned(),
            };
            let mut family = Vec::new();
            if !lease.parents.is_empty() {
                family.push(format!("parents {}", lease.parents.join(",")));
            }
            if !lease.children.is_empty() {
                family.push(format!("children {}", lease.children.join(",")));
            }
            let state = if lease.stalled {
                format!("{} (STALLED)", lease.state.as_str())
            } else {
                lease.state.as_str().to_owned()
            };
            let _ = writeln!(
                out,
                "{:<24} {:<20} {:<26} {:<20} {}",
                lease.shard,
                state,
                owner,
                short(&lease.checkpoint),
                family.join("; ")
            );
        }
        if self.leases.is_empty() {
            let _ = writeln!(out, "(no leases yet)");
        }
        out
    }
}

/// A long sequence number shortened to its last digits for the table.
pub(crate) fn short(checkpoint: &str) -> String {
    if checkpoint.len() > 20 && checkpoint.bytes().all(|b| b.is_ascii_digit() || b == b'/') {
        format!("…{}", &checkpoint[checkpoint.len() - 16..])
    } else {
        checkpoint.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn lease(shard: &str, owner: Option<&str>, checkpoint: ExtendedSequenceNumber) -> Lease {
        let mut lease = Lease::new(shard, checkpoint);
        lease.owner = owner.map(str::to_owned);
        lease
    }

    fn heartbeat(worker: &str, written_at: SystemTime) -> WorkerHeartbeat {
        crate::test_support::heartbeat(worker, Some(written_at))
    }

    #[test]
    fn every_lease_state_and_the_leases_each_worker_holds() {
        let record = ExtendedSequenceNumber::record("1000", 0).unwrap();
        let mut parent = lease("shardId-0", Some("a"), ExtendedSequenceNumber::ShardEnd);
        parent.child_shard_ids = ["shardId-1".to_owned()].into();
        let mut waiting = lease("shardId-1", None, ExtendedSequenceNumber::TrimHorizon);
        waiting.parent_shard_ids = ["shardId-9".to_owned()].into();
        let mut started = lease("shardId-2", Some("a"), record.clone());
        started.parent_shard_ids = ["shardId-0".to_owned()].into();
        let mut handing = lease("shardId-3", Some("b"), record.clone());
        handing.checkpoint_owner = Some("a".into());
        let free = lease("shardId-4", None, record.clone());
        let orphan = lease("shardId-5", Some("gone"), record);
        let leases = [parent, waiting, started, handing, free, orphan];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let mut heartbeats = [
            heartbeat("a", now - Duration::from_millis(1500)),
            heartbeat("b", now),
        ];
        heartbeats[0].stalled_shards.insert("shardId-2".into());
        let status = status("app", &leases, &heartbeats, now);
        let states: Vec<(&str, LeaseState)> = status
            .leases
            .iter()
            .map(|l| (l.shard.as_str(), l.state))
            .collect();
        assert_eq!(
            states,
            [
                ("shardId-0", LeaseState::Finished),
                ("shardId-1", LeaseState::WaitingForParents),
                ("shardId-2", LeaseState::Processing),
                ("shardId-3", LeaseState::HandingOver),
                ("shardId-4", LeaseState::Unassigned),
                ("shardId-5", LeaseState::OwnerGone),
            ]
        );
        // a processes shardId-2 and hands shardId-3 over; its finished
        // shardId-0 is not held.
        assert_eq!(status.workers[0].leases_held, 2);
        assert_eq!(status.workers[0].heartbeat_age_millis, Some(1500));
        assert_eq!(status.workers[1].leases_held, 0);
        let stalled: Vec<&str> = status
            .leases
            .iter()
            .filter(|l| l.stalled)
            .map(|l| l.shard.as_str())
            .collect();
        assert_eq!(stalled, ["shardId-2"]);
        let table = status.to_table();
        assert!(table.contains("a->b"), "{table}");
        assert!(table.contains("waiting for parents"), "{table}");
    }
}
