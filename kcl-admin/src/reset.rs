//! Moving a consumer group's position while its workers run.
//!
//! A reset rewrites the checkpoint of every affected lease with the
//! store's [`reset_checkpoint`](kcl_lease::LeaseStore::reset_checkpoint):
//! conditional on the lease as read, and adding one to its counter. That
//! fences the worker processing it (its checkpoints and its release fail
//! from then on: fencing, not luck), and its coordinator publishes the
//! lease with the new counter at its next assignment round, which stops
//! the old consumer and starts one from the new position. No lease changes
//! owner, so no second worker starts on a shard.
//!
//! What moves where ([`plan`], a pure function):
//! - `--trim-horizon`: every affected shard the stream still lists reads
//!   from its oldest record, parents before children;
//! - `--at-timestamp T`: every affected shard reads from its first record
//!   at or after `T`; a shard that closed before `T` yields nothing and
//!   ends at once, a lineage open at `T` is read parents first;
//! - `--latest`: open shards read from the moment of the reset (nothing
//!   written after it is skipped), closed shards are finished.
//!
//! Shards the stream still lists but whose leases were deleted (finished
//! parents, cleaned up) get a lease again where they must be read, so that
//! their children wait for them. Writes go parents first: a child is
//! reset only after its parents, so it never starts before them.
//!
//! Without `--shard`, every shard of the stream is affected; with it, the
//! shards named and all their descendants (a child read before its
//! replayed parent would break per-key order).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_core::consumer::LATEST_START_MARGIN;
use kcl_core::kinesis::{Kinesis, ShardDescription};
use kcl_core::shard_sync::new_shard_lease;
use kcl_lease::{Lease, LeaseStore, LeaseStoreError, StreamIdentifier};
use serde::Serialize;

use crate::AdminError;
use crate::status::checkpoint_text;

/// Where the group moves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The oldest record of every shard.
    TrimHorizon,
    /// The moment of the reset.
    Latest,
    /// The first record at or after a time.
    AtTimestamp(SystemTime),
}

/// How long into the future a timestamp may be, for clocks a little apart.
const CLOCK_TOLERANCE: Duration = Duration::from_secs(1);

/// How many times a lease that changed between the read and the write
/// (taken, a handoff completed) is read again and reset.
const RACES: u32 = 5;

/// What a reset does to one shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetStep {
    /// The shard.
    pub shard: String,
    /// `reset` for an existing lease, `create` for a shard whose lease is
    /// made again.
    pub action: &'static str,
    /// The checkpoint now (`None` without a lease).
    pub from: Option<String>,
    /// The new checkpoint.
    pub to: String,
    /// Where reading begins, for `AT_TIMESTAMP` and `LATEST`: milliseconds
    /// since the Unix epoch.
    pub start_timestamp_millis: Option<u64>,
}

/// The writes of a reset, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetPlan {
    /// The stream.
    pub stream: String,
    /// The steps, parents before children.
    pub steps: Vec<ResetStep>,
    /// Whether the plan was carried out (`false` for a dry run).
    pub applied: bool,
    /// The leases as read, by key, and the leases to create.
    #[serde(skip)]
    writes: Vec<Write>,
}

/// One write of a plan. (A plan holds one per shard: the variants' sizes
/// do not matter.)
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
enum Write {
    Reset {
        seen: Lease,
        checkpoint: ExtendedSequenceNumber,
        start: Option<SystemTime>,
        /// The owner has no heartbeat: free the lease.
        clear_owner: bool,
        /// The lease to make if this one is gone by the time it is written
        /// (cleaned up meanwhile), when the stream still lists its shard.
        recreate: Option<Lease>,
    },
    Create(Lease),
}

/// Parses a time given as RFC 3339 (`2026-12-06T10:00:00Z`, offsets
/// allowed) or as milliseconds since the Unix epoch.
pub fn parse_time(text: &str) -> Result<SystemTime, AdminError> {
    let invalid = |reason: &str| AdminError::InvalidTime {
        text: text.to_owned(),
        reason: reason.to_owned(),
    };
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let millis: u64 = text.parse().map_err(|_| invalid("too large"))?;
        return Ok(UNIX_EPOCH + Duration::from_millis(millis));
    }
    use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
    let parsed = DateTime::from_str(text, DateTimeFormat::DateTimeWithOffset)
        .map_err(|e| invalid(&e.to_string()))?;
    SystemTime::try_from(parsed).map_err(|_| invalid("before the Unix epoch"))
}

/// The RFC 3339 form of `at`, for messages.
pub fn format_time(at: SystemTime) -> String {
    use aws_sdk_kinesis::primitives::{DateTime, DateTimeFormat};
    DateTime::from(at)
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_else(|_| format!("{at:?}"))
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The plan for moving `stream`'s shards (as `ListShards` lists them) to
/// `target`, given the stream's `leases` (keyed for `identifier` in a
/// multi-stream table) and the workers with a heartbeat (`live`), at `now`.
/// `only` names the shards to move (with their descendants); empty, every
/// shard.
///
/// Besides the affected shards, a closed ancestor of one that the stream
/// still lists but that has no lease gets a finished lease: otherwise
/// shard discovery would see unstarted descendants and make its lease
/// again at `TRIM_HORIZON`, reading records the reset meant to leave. A
/// lease whose processing owner has no heartbeat is freed, so a live
/// worker takes it at its next round.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    stream: &str,
    identifier: Option<&StreamIdentifier>,
    leases: &[Lease],
    shards: &[ShardDescription],
    live: &BTreeSet<String>,
    target: Target,
    only: &BTreeSet<String>,
    now: SystemTime,
) -> Result<ResetPlan, AdminError> {
    if let Target::AtTimestamp(at) = target
        && at > now + CLOCK_TOLERANCE
    {
        return Err(AdminError::TimestampInFuture {
            at: format_time(at),
            now: format_time(now),
        });
    }
    if shards.is_empty() {
        return Err(AdminError::NoShards {
            stream: stream.to_owned(),
        });
    }
    let by_shard: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.shard_id(), l)).collect();
    let listed: BTreeMap<&str, &ShardDescription> =
        shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();
    // Parents of every known shard, from the stream and the leases.
    let mut parents: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for shard in shards {
        parents
            .entry(&shard.shard_id)
            .or_default()
            .extend(shard.parents());
    }
    for lease in leases {
        let entry = parents.entry(lease.shard_id()).or_default();
        entry.extend(lease.parent_shard_ids.iter().map(String::as_str));
        for child in &lease.child_shard_ids {
            parents.entry(child).or_default().insert(lease.shard_id());
        }
    }
    let known: BTreeSet<&str> = parents
        .keys()
        .copied()
        .filter(|s| listed.contains_key(s) || by_shard.contains_key(s))
        .collect();
    let unknown: Vec<String> = only
        .iter()
        .filter(|s| !known.contains(s.as_str()))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(AdminError::UnknownShards {
            stream: stream.to_owned(),
            shards: unknown,
        });
    }
    let affected: BTreeSet<&str> = if only.is_empty() {
        known.clone()
    } else {
        // The shards named and their descendants.
        let mut affected: BTreeSet<&str> = only.iter().map(String::as_str).collect();
        loop {
            let more: Vec<&str> = known
                .iter()
                .copied()
                .filter(|s| !affected.contains(s))
                .filter(|s| {
                    parents
                        .get(s)
                        .is_some_and(|p| p.iter().any(|p| affected.contains(p)))
                })
                .collect();
            if more.is_empty() {
                break affected;
            }
            affected.extend(more);
        }
    };
    let mut steps = Vec::new();
    let mut writes = Vec::new();
    for shard in parents_first(&affected, &parents) {
        let description = listed.get(shard);
        let open = description.is_some_and(|d| d.is_open());
        // A shard gone from the stream (past retention) has nothing to read.
        let (checkpoint, start) = match (target, description) {
            (_, None) => (ExtendedSequenceNumber::ShardEnd, None),
            (Target::TrimHorizon, _) => (ExtendedSequenceNumber::TrimHorizon, None),
            (Target::AtTimestamp(at), _) => (ExtendedSequenceNumber::AtTimestamp, Some(at)),
            // As the workers do: a margin for clocks a little apart.
            (Target::Latest, _) if open => (
                ExtendedSequenceNumber::Latest,
                Some(now - LATEST_START_MARGIN),
            ),
            (Target::Latest, _) => (ExtendedSequenceNumber::ShardEnd, None),
        };
        let step = |action, from: Option<&Lease>| ResetStep {
            shard: shard.to_owned(),
            action,
            from: from.map(|l| checkpoint_text(&l.checkpoint)),
            to: checkpoint.to_string(),
            start_timestamp_millis: start.map(millis),
        };
        let made = |description: &ShardDescription| {
            let mut lease = new_shard_lease(
                identifier,
                shard,
                description.parents().map(str::to_owned),
                description.hash_key_range,
                checkpoint.clone(),
            );
            lease.start_timestamp = start;
            lease
        };
        match (by_shard.get(shard), description) {
            (Some(lease), _) => {
                steps.push(step("reset", Some(lease)));
                writes.push(Write::Reset {
                    seen: (*lease).clone(),
                    checkpoint: checkpoint.clone(),
                    start,
                    clear_owner: lease
                        .processing_owner()
                        .is_some_and(|owner| !live.contains(owner)),
                    recreate: description.map(|d| made(d)),
                });
            }
            (None, Some(description)) => {
                steps.push(step("create", None));
                writes.push(Write::Create(made(description)));
            }
            (None, None) => {}
        }
    }
    // Closed ancestors without a lease, outside the reset: finished.
    let mut ancestors: BTreeSet<&str> = BTreeSet::new();
    let mut frontier: Vec<&str> = affected.iter().copied().collect();
    while let Some(shard) = frontier.pop() {
        for parent in parents.get(shard).into_iter().flatten() {
            if !affected.contains(parent) && ancestors.insert(parent) {
                frontier.push(parent);
            }
        }
    }
    let mut finished_ancestors = Vec::new();
    for shard in parents_first(&ancestors, &parents) {
        let Some(description) = listed.get(shard).filter(|d| !d.is_open()) else {
            continue;
        };
        if by_shard.contains_key(shard) {
            continue;
        }
        steps.insert(
            finished_ancestors.len(),
            ResetStep {
                shard: shard.to_owned(),
                action: "create",
                from: None,
                to: ExtendedSequenceNumber::ShardEnd.to_string(),
                start_timestamp_millis: None,
            },
        );
        finished_ancestors.push(Write::Create(new_shard_lease(
            identifier,
            shard,
            description.parents().map(str::to_owned),
            description.hash_key_range,
            ExtendedSequenceNumber::ShardEnd,
        )));
    }
    finished_ancestors.extend(writes);
    let writes = finished_ancestors;
    Ok(ResetPlan {
        stream: stream.to_owned(),
        steps,
        applied: false,
        writes,
    })
}

/// `shards` ordered so that each comes after every parent of it among
/// them (key order otherwise: shard ids grow with creation).
fn parents_first<'a>(
    shards: &BTreeSet<&'a str>,
    parents: &BTreeMap<&str, BTreeSet<&str>>,
) -> Vec<&'a str> {
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(shards.len());
    while order.len() < shards.len() {
        let before = order.len();
        for shard in shards {
            if placed.contains(shard) {
                continue;
            }
            let ready = parents
                .get(shard)
                .is_none_or(|p| p.iter().all(|p| !shards.contains(p) || placed.contains(p)));
            if ready {
                order.push(*shard);
                placed.insert(*shard);
            }
        }
        if order.len() == before {
            // Only a corrupt table has a cycle: take the rest in key order.
            order.extend(shards.iter().filter(|s| !placed.contains(*s)));
            break;
        }
    }
    order
}

/// Carries out `plan` on `store`, parents first. A lease that changed
/// since it was read (taken, or a handoff completed) is read again and
/// reset; one created meanwhile (by shard discovery) is reset; one deleted
/// meanwhile (by cleanup) is made again. Then the leases of children that
/// appeared meanwhile (a split during the reset) are moved like their
/// parents.
pub async fn apply(store: &dyn LeaseStore, mut plan: ResetPlan) -> Result<ResetPlan, AdminError> {
    for write in &plan.writes {
        match write {
            Write::Create(lease) => {
                let created = store
                    .create_lease_if_absent(lease)
                    .await
                    .map_err(AdminError::LeaseTable)?;
                if !created {
                    reset_fresh(
                        store,
                        &lease.key,
                        &lease.checkpoint,
                        lease.start_timestamp,
                        None,
                    )
                    .await?;
                }
            }
            Write::Reset {
                seen,
                checkpoint,
                start,
                clear_owner,
                recreate,
            } => match store
                .reset_checkpoint(seen, checkpoint, *start, *clear_owner)
                .await
            {
                Ok(_) => {}
                Err(LeaseStoreError::LeaseLost { .. }) => {
                    reset_fresh(store, &seen.key, checkpoint, *start, recreate.as_ref()).await?;
                }
                Err(error) => return Err(AdminError::LeaseTable(error)),
            },
        }
    }
    plan.applied = true;
    Ok(plan)
}

/// Reads the lease `key` again and resets it, a few times if it keeps
/// changing under the write; makes `recreate` if it is gone.
async fn reset_fresh(
    store: &dyn LeaseStore,
    key: &str,
    checkpoint: &ExtendedSequenceNumber,
    start: Option<SystemTime>,
    recreate: Option<&Lease>,
) -> Result<(), AdminError> {
    for _ in 0..RACES {
        let Some(seen) = store.get_lease(key).await.map_err(AdminError::LeaseTable)? else {
            let Some(lease) = recreate else {
                // Gone with its shard: nothing to read.
                return Ok(());
            };
            if store
                .create_lease_if_absent(lease)
                .await
                .map_err(AdminError::LeaseTable)?
            {
                return Ok(());
            }
            continue;
        };
        // The owner is kept: a lease that moved since the read has a live
        // owner now.
        match store
            .reset_checkpoint(&seen, checkpoint, start, false)
            .await
        {
            Ok(_) => return Ok(()),
            Err(LeaseStoreError::LeaseLost { .. }) => continue,
            Err(error) => return Err(AdminError::LeaseTable(error)),
        }
    }
    Err(AdminError::KeptChanging {
        lease: key.to_owned(),
    })
}

/// What `kcl-admin reset` was asked.
#[derive(Clone, Debug)]
pub struct ResetRequest {
    /// The application (lease table).
    pub application: String,
    /// The stream.
    pub stream: String,
    /// Where to move.
    pub target: Target,
    /// The shards to move (with their descendants); empty, every shard.
    pub only: BTreeSet<String>,
    /// Only report the plan.
    pub dry_run: bool,
    /// Reset even though no worker of the application runs.
    pub while_stopped: bool,
}

/// Reads the tables and the stream, plans, and (unless a dry run) applies.
pub async fn reset(
    store: &dyn LeaseStore,
    kinesis: &dyn Kinesis,
    request: &ResetRequest,
) -> Result<ResetPlan, AdminError> {
    let application = request.application.as_str();
    let (table, heartbeats) = crate::status::read_tables(store, application).await?;
    if heartbeats.is_empty() && !request.while_stopped && !request.dry_run {
        return Err(AdminError::NoWorkers {
            application: application.to_owned(),
        });
    }
    let multi_stream = table.iter().any(|l| l.stream.is_some());
    // In a multi-stream table, the stream as Kinesis has it now: leases of
    // an earlier stream of the same name (deleted and created again) are
    // not this one's.
    let identifier = if multi_stream {
        Some(
            crate::lag::with_retries(&request.stream, || {
                kcl_core::streams::describe(kinesis, &request.stream)
            })
            .await?,
        )
    } else {
        None
    };
    let leases: Vec<Lease> = table
        .into_iter()
        .filter(|l| l.stream == identifier)
        .collect();
    if leases.is_empty() {
        return Err(AdminError::NoLeases {
            application: application.to_owned(),
            stream: request.stream.clone(),
        });
    }
    let shards =
        crate::lag::with_retries(&request.stream, || kinesis.list_shards(&request.stream)).await?;
    let live: BTreeSet<String> = heartbeats.into_iter().map(|h| h.worker).collect();
    let now = SystemTime::now();
    let plan = plan(
        &request.stream,
        identifier.as_ref(),
        &leases,
        &shards,
        &live,
        request.target,
        &request.only,
        now,
    )?;
    if request.dry_run {
        return Ok(plan);
    }
    let mut moved: BTreeSet<String> = plan.steps.iter().map(|s| s.shard.clone()).collect();
    let mut plan = apply(store, plan).await?;
    // Children that appeared while the reset was written (a split): they
    // follow their parents, so none runs ahead of a parent read again.
    for _ in 0..RACES {
        let listing = store
            .list_table()
            .await
            .map_err(|e| AdminError::from_store(application, e))?;
        let newcomers: Vec<Lease> = listing
            .leases
            .into_iter()
            .filter(|l| l.stream == identifier && !moved.contains(l.shard_id()))
            .filter(|l| l.parent_shard_ids.iter().any(|p| moved.contains(p)))
            .collect();
        if newcomers.is_empty() {
            break;
        }
        for lease in newcomers {
            let (checkpoint, start) = match request.target {
                Target::TrimHorizon => (ExtendedSequenceNumber::TrimHorizon, None),
                Target::AtTimestamp(at) => (ExtendedSequenceNumber::AtTimestamp, Some(at)),
                Target::Latest => (
                    ExtendedSequenceNumber::Latest,
                    Some(now - LATEST_START_MARGIN),
                ),
            };
            reset_fresh(store, &lease.key, &checkpoint, start, None).await?;
            plan.steps.push(ResetStep {
                shard: lease.shard_id().to_owned(),
                action: "reset",
                from: Some(checkpoint_text(&lease.checkpoint)),
                to: checkpoint.to_string(),
                start_timestamp_millis: start.map(millis),
            });
            moved.insert(lease.shard_id().to_owned());
        }
    }
    Ok(plan)
}

impl ResetPlan {
    /// One line per step, then what happens next.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<24} {:<7} {:<22} {:<14} start",
            "shard", "action", "from", "to"
        );
        for step in &self.steps {
            let start = step.start_timestamp_millis.map_or_else(
                || "-".to_owned(),
                |ms| format_time(UNIX_EPOCH + Duration::from_millis(ms)),
            );
            let _ = writeln!(
                out,
                "{:<24} {:<7} {:<22} {:<14} {start}",
                step.shard,
                step.action,
                crate::status::short(step.from.as_deref().unwrap_or("-")),
                step.to
            );
        }
        if self.applied {
            let _ = writeln!(
                out,
                "reset {} shards of {}: the workers holding them stop them at once if they \
                 checkpoint, and within their next assignment round otherwise, and go on from \
                 the new position",
                self.steps.len(),
                self.stream
            );
        } else {
            let _ = writeln!(out, "dry run: nothing was changed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{heartbeat, shard};

    fn lease(id: &str, parents: &[&str], checkpoint: ExtendedSequenceNumber) -> Lease {
        let mut lease = Lease::new(id, checkpoint);
        lease.parent_shard_ids = parents.iter().map(|p| (*p).to_owned()).collect();
        lease.owner = Some("worker-a".into());
        lease
    }

    fn at(seq: &str) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::record(seq, 0).unwrap()
    }

    /// 0 split into 1 and 2 (0's lease cleaned up), which merged into 3.
    fn family() -> (Vec<Lease>, Vec<ShardDescription>) {
        let leases = vec![
            lease("s-1", &["s-0"], ExtendedSequenceNumber::ShardEnd),
            lease("s-2", &["s-0"], ExtendedSequenceNumber::ShardEnd),
            lease("s-3", &["s-1", "s-2"], at("700")),
        ];
        let shards = vec![
            shard("s-0", &[], false),
            shard("s-1", &["s-0"], false),
            shard("s-2", &["s-0"], false),
            shard("s-3", &["s-1", "s-2"], true),
        ];
        (leases, shards)
    }

    /// The plan for `family` moving to `target`, `worker-a` live.
    fn family_plan(target: Target, only: &BTreeSet<String>, now: SystemTime) -> ResetPlan {
        let (leases, shards) = family();
        plan("s", None, &leases, &shards, &live(), target, only, now).unwrap()
    }

    fn summary(plan: &ResetPlan) -> Vec<(&str, &str, &str)> {
        plan.steps
            .iter()
            .map(|s| (s.shard.as_str(), s.action, s.to.as_str()))
            .collect()
    }

    const NOW: Duration = Duration::from_secs(1_800_000_000);

    /// The workers with a heartbeat: the owner of every lease of [`family`].
    fn live() -> BTreeSet<String> {
        ["worker-a".to_owned()].into()
    }

    #[test]
    fn at_a_timestamp_every_shard_is_read_parents_first_and_missing_parents_get_a_lease() {
        let now = UNIX_EPOCH + NOW;
        let t = now - Duration::from_secs(3600);
        let plan = family_plan(Target::AtTimestamp(t), &BTreeSet::new(), now);
        assert_eq!(
            summary(&plan),
            [
                ("s-0", "create", "AT_TIMESTAMP"),
                ("s-1", "reset", "AT_TIMESTAMP"),
                ("s-2", "reset", "AT_TIMESTAMP"),
                ("s-3", "reset", "AT_TIMESTAMP"),
            ]
        );
        assert!(
            plan.steps
                .iter()
                .all(|s| s.start_timestamp_millis == Some(millis(t)))
        );
        let Write::Create(created) = &plan.writes[0] else {
            panic!("a create first");
        };
        assert_eq!(created.start_timestamp, Some(t));
        assert_eq!(created.owner, None);
    }

    #[test]
    fn at_latest_open_shards_start_now_and_closed_ones_are_finished() {
        let now = UNIX_EPOCH + NOW;
        let plan = family_plan(Target::Latest, &BTreeSet::new(), now);
        assert_eq!(
            summary(&plan),
            [
                ("s-0", "create", "SHARD_END"),
                ("s-1", "reset", "SHARD_END"),
                ("s-2", "reset", "SHARD_END"),
                ("s-3", "reset", "LATEST"),
            ],
            "a closed shard without a lease gets a finished one"
        );
        assert_eq!(
            plan.steps[3].start_timestamp_millis,
            Some(millis(now - LATEST_START_MARGIN)),
            "the workers' margin for clocks a little apart"
        );
    }

    /// P split into A (closed, lease cleaned up after A's children
    /// started) and B (open); A split into A1 and A2. After a reset to
    /// LATEST nothing is left for shard discovery to make at
    /// `TRIM_HORIZON`: A gets a finished lease.
    #[test]
    fn a_closed_shard_without_a_lease_is_finished_so_discovery_leaves_it() {
        let leases = vec![
            lease("s-0", &[], ExtendedSequenceNumber::ShardEnd),
            lease("s-2", &["s-0"], ExtendedSequenceNumber::TrimHorizon),
            lease("s-3", &["s-1"], at("500")),
            lease("s-4", &["s-1"], at("600")),
        ];
        let shards = vec![
            shard("s-0", &[], false),
            shard("s-1", &["s-0"], false),
            shard("s-2", &["s-0"], true),
            shard("s-3", &["s-1"], true),
            shard("s-4", &["s-1"], true),
        ];
        let now = UNIX_EPOCH + NOW;
        for only in [BTreeSet::new(), ["s-3".to_owned(), "s-4".to_owned()].into()] {
            let plan = plan(
                "s",
                None,
                &leases,
                &shards,
                &live(),
                Target::Latest,
                &only,
                now,
            )
            .unwrap();
            let mut after: BTreeMap<String, Lease> =
                leases.iter().map(|l| (l.key.clone(), l.clone())).collect();
            for write in &plan.writes {
                match write {
                    Write::Create(lease) => {
                        after.insert(lease.key.clone(), lease.clone());
                    }
                    Write::Reset {
                        seen, checkpoint, ..
                    } => {
                        after.get_mut(&seen.key).unwrap().checkpoint = checkpoint.clone();
                    }
                }
            }
            assert_eq!(
                after["s-1"].checkpoint,
                ExtendedSequenceNumber::ShardEnd,
                "{only:?}"
            );
            let after: Vec<Lease> = after.into_values().collect();
            for initial in [
                ExtendedSequenceNumber::TrimHorizon,
                ExtendedSequenceNumber::Latest,
            ] {
                let made = kcl_core::shard_sync::leases_to_create(&shards, &after, &initial);
                assert!(made.is_empty(), "{only:?}: discovery would make {made:?}");
            }
        }
    }

    #[test]
    fn a_lease_whose_owner_has_no_heartbeat_is_freed() {
        let (leases, shards) = family();
        let now = UNIX_EPOCH + NOW;
        let nobody = BTreeSet::new();
        let freeing = plan(
            "s",
            None,
            &leases,
            &shards,
            &nobody,
            Target::TrimHorizon,
            &BTreeSet::new(),
            now,
        )
        .unwrap();
        let freed: Vec<bool> = freeing
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Reset { clear_owner, .. } => Some(*clear_owner),
                Write::Create(_) => None,
            })
            .collect();
        assert_eq!(freed, [true, true, true]);
        let kept = family_plan(Target::TrimHorizon, &BTreeSet::new(), now);
        assert!(kept.writes.iter().all(|w| !matches!(
            w,
            Write::Reset {
                clear_owner: true,
                ..
            }
        )));
    }

    #[test]
    fn named_shards_move_with_their_descendants_only() {
        let now = UNIX_EPOCH + NOW;
        let only: BTreeSet<String> = ["s-2".to_owned()].into();
        let plan = family_plan(Target::TrimHorizon, &only, now);
        assert_eq!(
            summary(&plan),
            [
                ("s-0", "create", "SHARD_END"),
                ("s-2", "reset", "TRIM_HORIZON"),
                ("s-3", "reset", "TRIM_HORIZON")
            ],
            "the closed ancestor without a lease is finished, the other parent left"
        );
    }

    #[test]
    fn bad_input_is_refused() {
        let (leases, shards) = family();
        let now = UNIX_EPOCH + NOW;
        let none = BTreeSet::new();
        let future = Target::AtTimestamp(now + Duration::from_secs(60));
        assert!(matches!(
            plan("s", None, &leases, &shards, &live(), future, &none, now),
            Err(AdminError::TimestampInFuture { .. })
        ));
        let only: BTreeSet<String> = ["s-9".to_owned(), "s-1".to_owned()].into();
        match plan(
            "s",
            None,
            &leases,
            &shards,
            &live(),
            Target::TrimHorizon,
            &only,
            now,
        ) {
            Err(AdminError::UnknownShards { shards, .. }) => assert_eq!(shards, ["s-9"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan(
                "s",
                None,
                &leases,
                &[],
                &live(),
                Target::TrimHorizon,
                &none,
                now
            ),
            Err(AdminError::NoShards { .. })
        ));
    }

    #[test]
    fn times_are_rfc_3339_or_epoch_milliseconds() {
        let expected = UNIX_EPOCH + Duration::from_millis(1_765_015_200_000);
        assert_eq!(parse_time("1765015200000").unwrap(), expected);
        assert_eq!(parse_time("2025-12-06T10:00:00Z").unwrap(), expected);
        assert_eq!(parse_time("2025-12-06T11:00:00+01:00").unwrap(), expected);
        assert_eq!(
            parse_time("2025-12-06T10:00:00.250Z").unwrap(),
            expected + Duration::from_millis(250)
        );
        for bad in [
            "",
            "yesterday",
            "2025-13-06T10:00:00Z",
            "99999999999999999999999",
        ] {
            assert!(
                matches!(parse_time(bad), Err(AdminError::InvalidTime { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(format_time(expected), "2025-12-06T10:00:00Z");
    }

    #[tokio::test]
    async fn applying_fences_the_holders_and_survives_a_lease_that_moved() {
        use kcl_lease::InMemoryLeaseStore;
        let store = InMemoryLeaseStore::new();
        let (leases, _) = family();
        for lease in &leases {
            store.create_lease_if_absent(lease).await.unwrap();
        }
        let now = UNIX_EPOCH + NOW;
        let plan = family_plan(Target::TrimHorizon, &BTreeSet::new(), now);
        // A worker takes s-3 between the read and the reset.
        let seen = store.get_lease("s-3").await.unwrap().unwrap();
        let taken = store.take_lease(&seen, "worker-b").await.unwrap();
        let applied = apply(&store, plan).await.unwrap();
        assert!(applied.applied);
        let after = store.list_leases().await.unwrap();
        assert_eq!(after.len(), 4, "s-0 made again");
        for lease in &after {
            assert_eq!(
                lease.checkpoint,
                ExtendedSequenceNumber::TrimHorizon,
                "{lease:?}"
            );
        }
        let s3 = after.iter().find(|l| l.key == "s-3").unwrap();
        assert_eq!(s3.owner.as_deref(), Some("worker-b"), "owner kept");
        assert_eq!(s3.counter, taken.counter + 1, "fenced");
    }

    /// Cleanup deletes a finished parent between the read and the write:
    /// the reset makes its lease again, and goes on to the children.
    #[tokio::test]
    async fn a_lease_cleaned_up_meanwhile_is_made_again() {
        use kcl_lease::InMemoryLeaseStore;
        let store = InMemoryLeaseStore::new();
        let (leases, _) = family();
        for lease in &leases {
            store.create_lease_if_absent(lease).await.unwrap();
        }
        let now = UNIX_EPOCH + NOW;
        let t = now - Duration::from_secs(60);
        let plan = family_plan(Target::AtTimestamp(t), &BTreeSet::new(), now);
        let s1 = store.get_lease("s-1").await.unwrap().unwrap();
        store.delete_lease(&s1).await.unwrap();
        apply(&store, plan).await.unwrap();
        let after = store.list_leases().await.unwrap();
        assert_eq!(after.len(), 4);
        for lease in &after {
            assert_eq!(
                lease.checkpoint,
                ExtendedSequenceNumber::AtTimestamp,
                "{lease:?}"
            );
            assert_eq!(lease.start_timestamp, Some(t), "{lease:?}");
        }
        let s1 = after.iter().find(|l| l.key == "s-1").unwrap();
        assert_eq!(s1.parent_shard_ids, ["s-0".to_owned()].into());
    }

    /// A multi-stream table still holds the leases of a stream deleted and
    /// created again under the same name: only the current stream's move.
    #[tokio::test]
    async fn only_the_current_stream_of_a_name_moves() {
        use kcl_core::kinesis::InMemoryKinesis;
        use kcl_lease::InMemoryLeaseStore;
        let kinesis = InMemoryKinesis::new();
        let shard_ids = kinesis.create_stream("orders", 1);
        let current = kcl_core::streams::describe(&kinesis, "orders")
            .await
            .unwrap();
        let old = StreamIdentifier {
            creation_epoch: current.creation_epoch - 100,
            ..current.clone()
        };
        let store = InMemoryLeaseStore::new();
        for stream in [&current, &old] {
            let mut lease = Lease::for_shard(Some(stream), &shard_ids[0], at("100"));
            lease.owner = Some("worker-a".into());
            store.create_lease_if_absent(&lease).await.unwrap();
        }
        store.heartbeat(&heartbeat("worker-a", None)).await.unwrap();
        let request = ResetRequest {
            application: "app".into(),
            stream: "orders".into(),
            target: Target::TrimHorizon,
            only: BTreeSet::new(),
            dry_run: false,
            while_stopped: false,
        };
        let plan = reset(&store, &kinesis, &request).await.unwrap();
        assert_eq!(plan.steps.len(), 1);
        let moved = store
            .get_lease(&current.lease_key(&shard_ids[0]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(moved.checkpoint, ExtendedSequenceNumber::TrimHorizon);
        let left = store
            .get_lease(&old.lease_key(&shard_ids[0]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(left.checkpoint, at("100"), "the old stream's lease is left");
    }
}
