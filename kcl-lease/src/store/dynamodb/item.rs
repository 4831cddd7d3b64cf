//! The items of both tables. Leases are written in the Java KCL's
//! attribute names and types, so a table written by either library reads
//! the same in the other; the workers table's heartbeat items are this
//! project's own (see the end of this page).
//!
//! | attribute | type | field |
//! |---|---|---|
//! | `leaseKey` | S | [`Lease::key`] (hash key) |
//! | `leaseOwner` | S | [`Lease::owner`] |
//! | `leaseCounter` | N | [`Lease::counter`] |
//! | `checkpoint`, `checkpointSubSequenceNumber` | S, N | [`Lease::checkpoint`] |
//! | `pendingCheckpoint`, `pendingCheckpointSubSequenceNumber` | S, N | [`Lease::pending_checkpoint`] |
//! | `pendingCheckpointState` | B | [`Lease::pending_checkpoint_state`] |
//! | `ownerSwitchesSinceCheckpoint` | N | [`Lease::owner_switches_since_checkpoint`] |
//! | `parentShardId` | SS | [`Lease::parent_shard_ids`] |
//! | `childShardIds` | SS | [`Lease::child_shard_ids`] |
//! | `startingHashKey`, `endingHashKey` | S | [`Lease::hash_key_range`] |
//! | `checkpointOwner` | S | [`Lease::checkpoint_owner`] |
//! | `startingTimestampMillis` | N | [`Lease::start_timestamp`] (this project's own) |
//! | `entityType` | S | `LEASE` on every lease this project creates, as the Java KCL 3.5 writes it |
//! | `streamName`, `shardId` | S | a multi-stream application's lease: [`Lease::stream`] (`account:stream:epoch`) and its shard; the key is then `account:stream:epoch:shardId` |
//!
//! Attributes this project does not know (the Java KCL 3.x adds some) are
//! ignored when reading and left alone by every update. Items that are not
//! leases (the Java KCL 3.5's other items, unreadable ones; see
//! [`crate::listing`]) are recognised when a scan reads them and skipped.
//!
//! A heartbeat item of the workers table (hash key `workerId`):
//!
//! | attribute | type | field |
//! |---|---|---|
//! | `workerId` | S | [`WorkerHeartbeat::worker`] |
//! | `heartbeat` | N | [`WorkerHeartbeat::beat`] |
//! | `heartbeatEpochMillis` | N | the writer's wall clock, for operators only |
//! | `draining` | BOOL | [`WorkerHeartbeat::draining`] |
//! | `failoverMillis` | N | [`WorkerHeartbeat::failover_time`] |
//! | `streams` | SS | [`WorkerHeartbeat::streams`] |
//! | `stalledShards` | SS | [`WorkerHeartbeat::stalled_shards`] |
//! | `evictRequested` | BOOL | [`WorkerHeartbeat::evicted`] (set by an operator; heartbeats keep it) |
//! | `handoffOffers` | SS | [`WorkerHeartbeat::offered`] (set by stopping workers; heartbeats keep it) |

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use kcl_checkpoint::ExtendedSequenceNumber;

use crate::listing::{SkippedItem, SkippedKind};
use crate::{HashKeyRange, Lease, LeaseStoreError, StreamIdentifier, WorkerHeartbeat};

pub(crate) const LEASE_KEY: &str = "leaseKey";
pub(crate) const LEASE_OWNER: &str = "leaseOwner";
pub(crate) const LEASE_COUNTER: &str = "leaseCounter";
pub(crate) const CHECKPOINT: &str = "checkpoint";
pub(crate) const CHECKPOINT_SUB_SEQUENCE: &str = "checkpointSubSequenceNumber";
pub(crate) const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
pub(crate) const PENDING_CHECKPOINT_SUB_SEQUENCE: &str = "pendingCheckpointSubSequenceNumber";
pub(crate) const PENDING_CHECKPOINT_STATE: &str = "pendingCheckpointState";
pub(crate) const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
pub(crate) const PARENT_SHARD_IDS: &str = "parentShardId";
pub(crate) const CHILD_SHARD_IDS: &str = "childShardIds";
pub(crate) const STARTING_HASH_KEY: &str = "startingHashKey";
pub(crate) const ENDING_HASH_KEY: &str = "endingHashKey";
pub(crate) const CHECKPOINT_OWNER: &str = "checkpointOwner";
pub(crate) const STARTING_TIMESTAMP_MILLIS: &str = "startingTimestampMillis";
/// What an item of the lease table is (Java KCL 3.5); absent on leases
/// written by earlier versions.
pub(crate) const ENTITY_TYPE: &str = "entityType";
/// The [`ENTITY_TYPE`] of a lease.
pub(crate) const LEASE_ENTITY: &str = "LEASE";
/// The stream of a multi-stream application's lease
/// (`account:stream:epoch`).
pub(crate) const STREAM_NAME: &str = "streamName";
/// The shard of a multi-stream application's lease.
pub(crate) const SHARD_ID: &str = "shardId";

/// The workers table's hash key: the worker's id.
pub(crate) const WORKER_ID: &str = "workerId";
/// A heartbeat's value, growing with every write.
pub(crate) const HEARTBEAT: &str = "heartbeat";
/// The writer's wall clock at the heartbeat, for operators only.
pub(crate) const HEARTBEAT_EPOCH_MILLIS: &str = "heartbeatEpochMillis";
/// Set while the worker stops and hands its leases over.
pub(crate) const DRAINING: &str = "draining";
/// The failover time the worker runs with.
pub(crate) const FAILOVER_MILLIS: &str = "failoverMillis";
/// The streams of a multi-stream worker (a string set of identifiers).
pub(crate) const STREAMS: &str = "streams";
/// Set by an operator: the worker hands all its leases over without
/// stopping. Written by `request_eviction` only; heartbeats keep it.
pub(crate) const EVICTED: &str = "evictRequested";
/// The shards the worker reports stalled (a string set).
pub(crate) const STALLED_SHARDS: &str = "stalledShards";
/// Leases stopping workers handed to the worker, not yet noted by it (a
/// string set). Written by `offer_leases` and `clear_offers` only;
/// heartbeats keep it.
pub(crate) const OFFERS: &str = "handoffOffers";

/// A DynamoDB item.
pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The item the Java KCL would write for `lease`.
pub(crate) fn lease_to_item(lease: &Lease) -> Item {
    let mut item = Item::new();
    item.insert(LEASE_KEY.into(), s(&lease.key));
    item.insert(ENTITY_TYPE.into(), s(LEASE_ENTITY));
    if let Some(stream) = &lease.stream {
        item.insert(STREAM_NAME.into(), s(stream.to_string()));
        item.insert(SHARD_ID.into(), s(lease.shard_id()));
    }
    item.insert(LEASE_COUNTER.into(), n(lease.counter));
    if let Some(owner) = &lease.owner {
        item.insert(LEASE_OWNER.into(), s(owner));
    }
    item.insert(
        OWNER_SWITCHES.into(),
        n(lease.owner_switches_since_checkpoint),
    );
    item.insert(CHECKPOINT.into(), s(lease.checkpoint.checkpoint_str()));
    item.insert(
        CHECKPOINT_SUB_SEQUENCE.into(),
        n(lease.checkpoint.sub_sequence_number()),
    );
    if let Some(pending) = &lease.pending_checkpoint {
        item.insert(PENDING_CHECKPOINT.into(), s(pending.checkpoint_str()));
        item.insert(
            PENDING_CHECKPOINT_SUB_SEQUENCE.into(),
            n(pending.sub_sequence_number()),
        );
    }
    if let Some(state) = &lease.pending_checkpoint_state {
        item.insert(
            PENDING_CHECKPOINT_STATE.into(),
            AttributeValue::B(Blob::new(state.clone())),
        );
    }
    // DynamoDB rejects empty sets: an empty set is an absent attribute.
    if !lease.parent_shard_ids.is_empty() {
        item.insert(
            PARENT_SHARD_IDS.into(),
            AttributeValue::Ss(lease.parent_shard_ids.iter().cloned().collect()),
        );
    }
    if !lease.child_shard_ids.is_empty() {
        item.insert(
            CHILD_SHARD_IDS.into(),
            AttributeValue::Ss(lease.child_shard_ids.iter().cloned().collect()),
        );
    }
    if let Some(range) = lease.hash_key_range {
        item.insert(STARTING_HASH_KEY.into(), s(range.start.to_string()));
        item.insert(ENDING_HASH_KEY.into(), s(range.end.to_string()));
    }
    if let Some(checkpoint_owner) = &lease.checkpoint_owner {
        item.insert(CHECKPOINT_OWNER.into(), s(checkpoint_owner));
    }
    if let Some(at) = lease.start_timestamp {
        item.insert(STARTING_TIMESTAMP_MILLIS.into(), n(epoch_millis(at)));
    }
    item
}

/// The workers-table item of `heartbeat`, written at `now_ms` (the
/// writer's wall clock, milliseconds since the epoch), without the
/// operator's [`EVICTED`] mark (a heartbeat keeps the stored one).
pub(crate) fn heartbeat_to_item(heartbeat: &WorkerHeartbeat, now_ms: u64) -> Item {
    let mut item = Item::new();
    item.insert(WORKER_ID.into(), s(&heartbeat.worker));
    item.insert(HEARTBEAT.into(), n(heartbeat.beat));
    item.insert(HEARTBEAT_EPOCH_MILLIS.into(), n(now_ms));
    item.insert(DRAINING.into(), AttributeValue::Bool(heartbeat.draining));
    if let Some(failover) = heartbeat.failover_time {
        item.insert(FAILOVER_MILLIS.into(), n(failover.as_millis() as u64));
    }
    // DynamoDB refuses empty sets; a multi-stream worker has a stream.
    if let Some(streams) = heartbeat.streams.as_ref().filter(|s| !s.is_empty()) {
        item.insert(
            STREAMS.into(),
            AttributeValue::Ss(streams.iter().cloned().collect()),
        );
    }
    if !heartbeat.stalled_shards.is_empty() {
        item.insert(
            STALLED_SHARDS.into(),
            AttributeValue::Ss(heartbeat.stalled_shards.iter().cloned().collect()),
        );
    }
    item
}

/// Reads a heartbeat item; `None` for an item that is not one.
pub(crate) fn heartbeat_from_item(item: &Item) -> Option<WorkerHeartbeat> {
    let (Some(AttributeValue::S(worker)), Some(AttributeValue::N(beat))) =
        (item.get(WORKER_ID), item.get(HEARTBEAT))
    else {
        return None;
    };
    let failover_time = match item.get(FAILOVER_MILLIS) {
        Some(AttributeValue::N(millis)) => millis.parse().ok().map(Duration::from_millis),
        _ => None,
    };
    Some(WorkerHeartbeat {
        worker: worker.clone(),
        beat: beat.parse().ok()?,
        draining: matches!(item.get(DRAINING), Some(AttributeValue::Bool(true))),
        failover_time,
        streams: match item.get(STREAMS) {
            Some(AttributeValue::Ss(streams)) => Some(streams.iter().cloned().collect()),
            _ => None,
        },
        written_at: match item.get(HEARTBEAT_EPOCH_MILLIS) {
            Some(AttributeValue::N(millis)) => millis
                .parse()
                .ok()
                .map(|millis| UNIX_EPOCH + Duration::from_millis(millis)),
            _ => None,
        },
        stalled_shards: match item.get(STALLED_SHARDS) {
            Some(AttributeValue::Ss(shards)) => shards.iter().cloned().collect(),
            _ => Default::default(),
        },
        evicted: matches!(item.get(EVICTED), Some(AttributeValue::Bool(true))),
        offered: match item.get(OFFERS) {
            Some(AttributeValue::Ss(keys)) => keys.iter().cloned().collect(),
            _ => Default::default(),
        },
    })
}

/// `at` in milliseconds since the Unix epoch (0 before it).
pub(crate) fn epoch_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Sorts an item of the lease table: a lease this worker uses, or an item
/// it skips (see [`crate::listing`]). Never fails: an item that cannot be
/// read is a skipped item too.
pub(crate) fn classify_item(item: &Item) -> Result<Lease, SkippedItem> {
    let key = match item.get(LEASE_KEY) {
        Some(AttributeValue::S(key)) => key.clone(),
        _ => String::new(),
    };
    let skipped = |kind| SkippedItem {
        key: key.clone(),
        kind,
    };
    // As the Java KCL 3.5 reads it: a string other than LEASE is another
    // kind of item; absent (or not a string) is a lease.
    if let Some(AttributeValue::S(entity)) = item.get(ENTITY_TYPE)
        && entity != LEASE_ENTITY
    {
        return Err(skipped(SkippedKind::NotALease {
            entity_type: Some(entity.clone()),
        }));
    }
    if matches!(item.get(CHECKPOINT), None | Some(AttributeValue::Null(_))) {
        return Err(skipped(SkippedKind::NotALease { entity_type: None }));
    }
    lease_from_item(item).map_err(|error| {
        skipped(SkippedKind::Malformed {
            reason: match error {
                LeaseStoreError::InvalidItem { reason, .. } => reason,
                other => other.to_string(),
            },
        })
    })
}

/// Reads a lease item written by this project or by the Java KCL.
pub(crate) fn lease_from_item(item: &Item) -> Result<Lease, LeaseStoreError> {
    let key = match item.get(LEASE_KEY) {
        Some(AttributeValue::S(key)) => key.clone(),
        _ => return Err(invalid("", format!("no string attribute {LEASE_KEY}"))),
    };
    let reader = Reader { key: &key, item };
    let stream = reader.stream()?;
    let checkpoint = reader
        .position(CHECKPOINT, CHECKPOINT_SUB_SEQUENCE)?
        .ok_or_else(|| invalid(&key, format!("no {CHECKPOINT} attribute")))?;
    let hash_key_range = match (
        reader.string(STARTING_HASH_KEY)?,
        reader.string(ENDING_HASH_KEY)?,
    ) {
        (Some(start), Some(end)) => Some(HashKeyRange {
            start: reader.hash_key(STARTING_HASH_KEY, start)?,
            end: reader.hash_key(ENDING_HASH_KEY, end)?,
        }),
        _ => None,
    };
    // The Java KCL requires both numbers too; and attributes this project
    // updates in place (ADD, arithmetic, if_not_exists) must not be NULL.
    let required = |name: &str| {
        reader
            .number(name)?
            .ok_or_else(|| invalid(&key, format!("no {name} number")))
    };
    let (counter, owner_switches) = (required(LEASE_COUNTER)?, required(OWNER_SWITCHES)?);
    for name in [CHILD_SHARD_IDS, STARTING_TIMESTAMP_MILLIS] {
        if matches!(item.get(name), Some(AttributeValue::Null(_))) {
            return Err(invalid(
                &key,
                format!("{name} is NULL; remove the attribute instead"),
            ));
        }
    }
    Ok(Lease {
        stream,
        owner: reader.string(LEASE_OWNER)?.map(str::to_owned),
        counter,
        checkpoint,
        pending_checkpoint: reader.position(PENDING_CHECKPOINT, PENDING_CHECKPOINT_SUB_SEQUENCE)?,
        pending_checkpoint_state: match item.get(PENDING_CHECKPOINT_STATE) {
            None => None,
            Some(AttributeValue::B(blob)) => Some(blob.as_ref().to_vec()),
            Some(_) => {
                return Err(invalid(
                    &key,
                    format!("{PENDING_CHECKPOINT_STATE} is not binary"),
                ));
            }
        },
        owner_switches_since_checkpoint: owner_switches,
        parent_shard_ids: reader.string_set(PARENT_SHARD_IDS)?,
        child_shard_ids: reader.string_set(CHILD_SHARD_IDS)?,
        hash_key_range,
        checkpoint_owner: reader.string(CHECKPOINT_OWNER)?.map(str::to_owned),
        start_timestamp: reader
            .number(STARTING_TIMESTAMP_MILLIS)?
            .map(|millis| UNIX_EPOCH + Duration::from_millis(millis)),
        key,
    })
}

fn invalid(key: &str, reason: String) -> LeaseStoreError {
    LeaseStoreError::InvalidItem {
        lease_key: key.to_owned(),
        reason,
    }
}

/// Typed access to one item's attributes, with errors naming the lease.
struct Reader<'a> {
    key: &'a str,
    item: &'a Item,
}

impl<'a> Reader<'a> {
    /// The stream of a multi-stream application's lease: `streamName` and
    /// `shardId` together, and the key made of both (as the Java KCL
    /// writes them); `None` for a lease keyed by its shard id.
    fn stream(&self) -> Result<Option<StreamIdentifier>, LeaseStoreError> {
        let Some(name) = self.string(STREAM_NAME)? else {
            if StreamIdentifier::split_lease_key(self.key).is_some() {
                return Err(invalid(
                    self.key,
                    format!("a multi-stream lease key without {STREAM_NAME}"),
                ));
            }
            return Ok(None);
        };
        let stream = StreamIdentifier::parse(name)
            .map_err(|error| invalid(self.key, format!("{STREAM_NAME}: {error}")))?;
        let shard = self
            .string(SHARD_ID)?
            .ok_or_else(|| invalid(self.key, format!("{STREAM_NAME} without {SHARD_ID}")))?;
        if stream.lease_key(shard) != self.key {
            return Err(invalid(
                self.key,
                format!("the key is not {STREAM_NAME}:{SHARD_ID} ({name}:{shard})"),
            ));
        }
        Ok(Some(stream))
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, LeaseStoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(value)) => Ok(Some(value)),
            Some(_) => Err(invalid(self.key, format!("{name} is not a string"))),
        }
    }

    fn number(&self, name: &str) -> Result<Option<u64>, LeaseStoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(value)) => value.parse().map(Some).map_err(|_| {
                invalid(
                    self.key,
                    format!("{name} = {value} is not a non-negative integer"),
                )
            }),
            Some(_) => Err(invalid(self.key, format!("{name} is not a number"))),
        }
    }

    fn string_set(
        &self,
        name: &str,
    ) -> Result<std::collections::BTreeSet<String>, LeaseStoreError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(Default::default()),
            Some(AttributeValue::Ss(values)) => Ok(values.iter().cloned().collect()),
            Some(_) => Err(invalid(self.key, format!("{name} is not a string set"))),
        }
    }

    fn position(
        &self,
        sequence: &str,
        sub_sequence: &str,
    ) -> Result<Option<ExtendedSequenceNumber>, LeaseStoreError> {
        // The Java KCL writes an empty pending checkpoint as absent, and
        // reads an empty string as absent too.
        let Some(value) = self.string(sequence)?.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        ExtendedSequenceNumber::from_lease_attributes(value, self.number(sub_sequence)?)
            .map(Some)
            .map_err(|error| invalid(self.key, format!("{sequence}: {error}")))
    }

    fn hash_key(&self, name: &str, value: &str) -> Result<u128, LeaseStoreError> {
        value.parse().map_err(|_| {
            invalid(
                self.key,
                format!("{name} = {value} is not a 128-bit hash key"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn java_item(json_like: &[(&str, AttributeValue)]) -> Item {
        json_like
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// An item exactly as the Java KCL writes it.
    fn written_by_java_kcl() -> Item {
        java_item(&[
            ("leaseKey", s("shardId-000000000001")),
            ("leaseOwner", s("w1")),
            ("leaseCounter", AttributeValue::N("42".into())),
            (
                "checkpoint",
                s("49590338271490256608559692538361571095921575989136588898"),
            ),
            ("checkpointSubSequenceNumber", AttributeValue::N("0".into())),
            (
                "ownerSwitchesSinceCheckpoint",
                AttributeValue::N("1".into()),
            ),
            (
                "parentShardId",
                AttributeValue::Ss(vec!["shardId-000000000000".into()]),
            ),
        ])
    }

    #[test]
    fn reads_an_item_written_by_the_java_kcl() {
        let lease = lease_from_item(&written_by_java_kcl()).unwrap();
        assert_eq!(lease.key, "shardId-000000000001");
        assert_eq!(lease.owner.as_deref(), Some("w1"));
        assert_eq!(lease.counter, 42);
        assert_eq!(
            lease.checkpoint,
            ExtendedSequenceNumber::record(
                "49590338271490256608559692538361571095921575989136588898",
                0
            )
            .unwrap()
        );
        assert_eq!(lease.owner_switches_since_checkpoint, 1);
        assert_eq!(
            lease.parent_shard_ids.iter().collect::<Vec<_>>(),
            ["shardId-000000000000"]
        );
        assert!(lease.child_shard_ids.is_empty());
        assert_eq!(lease.pending_checkpoint, None);
        assert_eq!(lease.checkpoint_owner, None);
        assert_eq!(lease.hash_key_range, None);
    }

    #[test]
    fn writes_what_the_java_kcl_3_5_writes() {
        let lease = lease_from_item(&written_by_java_kcl()).unwrap();
        let mut java_3_5 = written_by_java_kcl();
        java_3_5.insert("entityType".into(), s("LEASE"));
        assert_eq!(lease_to_item(&lease), java_3_5);
        assert_eq!(lease_from_item(&java_3_5).unwrap(), lease);
    }

    #[test]
    fn leases_of_every_java_version_are_classified_as_leases() {
        let older = written_by_java_kcl();
        let mut java_3_5 = older.clone();
        java_3_5.insert("entityType".into(), s("LEASE"));
        java_3_5.insert("throughputKBps".into(), AttributeValue::N("12.5".into()));
        for item in [older, java_3_5] {
            assert_eq!(classify_item(&item), Ok(lease_from_item(&item).unwrap()));
        }
    }

    #[test]
    fn items_that_are_not_leases_of_one_stream_are_skipped_with_the_reason() {
        let skipped = |item: Item| classify_item(&item).unwrap_err();
        let metrics = java_item(&[
            ("leaseKey", s("worker-a")),
            ("entityType", s("WORKER_METRIC_STATS")),
            ("lut", AttributeValue::N("1752500000".into())),
        ]);
        assert_eq!(
            skipped(metrics),
            SkippedItem {
                key: "worker-a".into(),
                kind: SkippedKind::NotALease {
                    entity_type: Some("WORKER_METRIC_STATS".into())
                }
            }
        );
        let untyped = java_item(&[("leaseKey", s("Leader")), ("ownerName", s("worker-a"))]);
        assert_eq!(
            skipped(untyped).kind,
            SkippedKind::NotALease { entity_type: None }
        );

        for (name, value) in [
            ("leaseCounter", None),
            ("leaseCounter", Some(AttributeValue::Null(true))),
            ("ownerSwitchesSinceCheckpoint", None),
            ("childShardIds", Some(AttributeValue::Null(true))),
            ("startingTimestampMillis", Some(AttributeValue::Null(true))),
        ] {
            let mut item = written_by_java_kcl();
            match value {
                Some(value) => item.insert(name.into(), value),
                None => item.remove(name),
            };
            assert!(
                matches!(&skipped(item).kind, SkippedKind::Malformed { reason } if reason.contains(name)),
                "{name}"
            );
        }
        // An entityType that is not a string is read as the Java KCL reads
        // it: a lease.
        let mut odd_entity = written_by_java_kcl();
        odd_entity.insert("entityType".into(), AttributeValue::Null(true));
        assert!(classify_item(&odd_entity).is_ok());

        let mut unreadable = written_by_java_kcl();
        unreadable.insert("leaseCounter".into(), AttributeValue::S("many".into()));
        let unreadable = skipped(unreadable);
        assert_eq!(unreadable.key, "shardId-000000000001");
        assert!(
            matches!(&unreadable.kind, SkippedKind::Malformed { reason } if reason.contains("leaseCounter")),
            "{unreadable:?}"
        );
    }

    #[test]
    fn multi_stream_leases_read_and_write_as_the_java_kcl_writes_them() {
        let key = "123456789012:orders:1700000000:shardId-000000000001";
        let mut java = written_by_java_kcl();
        java.insert("leaseKey".into(), s(key));
        java.insert("streamName".into(), s("123456789012:orders:1700000000"));
        java.insert("shardId".into(), s("shardId-000000000001"));
        java.insert("entityType".into(), s("LEASE"));
        let lease = classify_item(&java).unwrap();
        let orders = StreamIdentifier::parse("123456789012:orders:1700000000").unwrap();
        assert_eq!(lease.stream.as_ref(), Some(&orders));
        assert_eq!(lease.key, key);
        assert_eq!(lease.shard_id(), "shardId-000000000001");
        // Parents and children stay shard ids, as the Java KCL keeps them.
        assert_eq!(
            lease.parent_shard_ids.iter().collect::<Vec<_>>(),
            ["shardId-000000000000"]
        );
        assert_eq!(
            lease.key_of("shardId-000000000000"),
            "123456789012:orders:1700000000:shardId-000000000000"
        );
        assert_eq!(lease_to_item(&lease), java);

        let skipped = |item: &Item| match classify_item(item) {
            Err(SkippedItem {
                kind: SkippedKind::Malformed { reason },
                ..
            }) => reason,
            other => panic!("{other:?}"),
        };
        let mut no_stream = java.clone();
        no_stream.remove("streamName");
        assert!(skipped(&no_stream).contains("streamName"));
        let mut no_shard = java.clone();
        no_shard.remove("shardId");
        assert!(skipped(&no_shard).contains("shardId"));
        let mut other_shard = java.clone();
        other_shard.insert("shardId".into(), s("shardId-000000000002"));
        assert!(skipped(&other_shard).contains("key"));
        let mut bad_stream = java.clone();
        bad_stream.insert("streamName".into(), s("orders"));
        assert!(skipped(&bad_stream).contains("streamName"));
    }

    #[test]
    fn every_field_round_trips() {
        let lease = Lease {
            key: "shardId-000000000007".into(),
            stream: None,
            owner: Some("receiver".into()),
            counter: 9,
            checkpoint: ExtendedSequenceNumber::record("123", 4).unwrap(),
            pending_checkpoint: Some(ExtendedSequenceNumber::record("125", 0).unwrap()),
            pending_checkpoint_state: Some(vec![0, 1, 255]),
            owner_switches_since_checkpoint: 2,
            parent_shard_ids: ["shardId-000000000003".into(), "shardId-000000000004".into()].into(),
            child_shard_ids: ["shardId-000000000009".into()].into(),
            hash_key_range: Some(HashKeyRange {
                start: 0,
                end: u128::MAX,
            }),
            checkpoint_owner: Some("sender".into()),
            start_timestamp: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
        };
        let item = lease_to_item(&lease);
        assert_eq!(item[ENDING_HASH_KEY], s(u128::MAX.to_string()));
        assert_eq!(item[PENDING_CHECKPOINT_SUB_SEQUENCE], n(0));
        assert_eq!(lease_from_item(&item).unwrap(), lease);

        let sentinel = Lease::new("shardId-000000000000", ExtendedSequenceNumber::ShardEnd);
        assert_eq!(
            lease_from_item(&lease_to_item(&sentinel)).unwrap(),
            sentinel
        );
    }

    #[test]
    fn malformed_items_are_rejected_with_the_lease_named() {
        let mut no_checkpoint = written_by_java_kcl();
        no_checkpoint.remove("checkpoint");
        let mut bad_counter = written_by_java_kcl();
        bad_counter.insert("leaseCounter".into(), AttributeValue::N("-1".into()));
        let mut bad_sequence = written_by_java_kcl();
        bad_sequence.insert("checkpoint".into(), s("12ab"));
        let mut wrong_type = written_by_java_kcl();
        wrong_type.insert("leaseOwner".into(), AttributeValue::N("3".into()));
        for item in [no_checkpoint, bad_counter, bad_sequence, wrong_type] {
            let error = lease_from_item(&item).unwrap_err();
            assert!(
                matches!(&error, LeaseStoreError::InvalidItem { lease_key, .. } if lease_key == "shardId-000000000001"),
                "{error}"
            );
        }
        assert!(lease_from_item(&Item::new()).is_err());
    }
}
