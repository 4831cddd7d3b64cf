//! The shard tree of a consumer group: every shard its lease table knows
//! (and, given the stream, every shard Kinesis still lists), parents before
//! children, with each shard's lease state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use kcl_core::kinesis::{Kinesis, ShardDescription};
use kcl_lease::{Lease, LeaseStore};
use serde::Serialize;

use crate::AdminError;
use crate::status::{LeaseState, lease_state};

/// One shard of the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardNode {
    /// The stream (`account:stream:epoch`) of a multi-stream application's
    /// shard.
    pub stream: Option<String>,
    /// The shard.
    pub shard: String,
    /// The shards it was split or merged from.
    pub parents: Vec<String>,
    /// The shards it was split or merged into.
    pub children: Vec<String>,
    /// Its lease's state; `None` when it has no lease (not created yet, or
    /// deleted after its children started).
    pub state: Option<LeaseState>,
    /// Whether Kinesis lists it as open; `None` when the stream was not
    /// read.
    pub open: Option<bool>,
}

/// Every shard, parents before children.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lineage {
    /// The shards, each after all its parents (roots in key order).
    pub shards: Vec<ShardNode>,
}

/// The lineage of the shards in `leases` and `described` (the stream's
/// shards as `ListShards` gives them, for an application of one stream).
pub fn lineage(
    leases: &[Lease],
    heartbeats: &[kcl_lease::WorkerHeartbeat],
    described: Option<&[ShardDescription]>,
) -> Lineage {
    let table: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
    // By (stream, shard): multi-stream tables hold several trees.
    let mut nodes: BTreeMap<(Option<String>, String), ShardNode> = BTreeMap::new();
    for lease in leases {
        let stream = lease.stream.as_ref().map(ToString::to_string);
        nodes.insert(
            (stream.clone(), lease.shard_id().to_owned()),
            ShardNode {
                stream,
                shard: lease.shard_id().to_owned(),
                parents: lease.parent_shard_ids.iter().cloned().collect(),
                children: lease.child_shard_ids.iter().cloned().collect(),
                state: Some(lease_state(lease, &table, heartbeats)),
                open: None,
            },
        );
    }
    for shard in described.unwrap_or_default() {
        let node = nodes
            .entry((None, shard.shard_id.clone()))
            .or_insert_with(|| ShardNode {
                stream: None,
                shard: shard.shard_id.clone(),
                parents: shard.parents().map(str::to_owned).collect(),
                children: Vec::new(),
                state: None,
                open: None,
            });
        node.open = Some(shard.is_open());
    }
    // Children known from the parents' side only (a child's lease records
    // its parents; a parent's lease its children once it ended).
    let links: Vec<((Option<String>, String), String)> = nodes
        .iter()
        .flat_map(|((stream, shard), node)| {
            node.parents
                .iter()
                .map(|parent| ((stream.clone(), parent.clone()), shard.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    for (parent, child) in links {
        if let Some(node) = nodes.get_mut(&parent)
            && !node.children.contains(&child)
        {
            node.children.push(child);
            node.children.sort();
        }
    }
    // Parents first: a shard comes once every parent that is in the tree
    // has come (shard ids grow with creation, so key order breaks ties).
    let mut placed: BTreeSet<(Option<String>, String)> = BTreeSet::new();
    let mut shards = Vec::with_capacity(nodes.len());
    while placed.len() < nodes.len() {
        let ready: Vec<(Option<String>, String)> = nodes
            .iter()
            .filter(|(key, _)| !placed.contains(*key))
            .filter(|((stream, _), node)| {
                node.parents.iter().all(|parent| {
                    let key = (stream.clone(), parent.clone());
                    !nodes.contains_key(&key) || placed.contains(&key)
                })
            })
            .map(|(key, _)| key.clone())
            .collect();
        if ready.is_empty() {
            // A cycle can only come from a corrupt table: list the rest
            // as they are rather than loop.
            let rest: Vec<_> = nodes
                .keys()
                .filter(|key| !placed.contains(*key))
                .cloned()
                .collect();
            for key in rest {
                shards.push(nodes[&key].clone());
                placed.insert(key);
            }
            break;
        }
        for key in ready {
            shards.push(nodes[&key].clone());
            placed.insert(key);
        }
    }
    Lineage { shards }
}

/// Reads the lease table of `application` and, when `stream` is given,
/// the stream's shards, and builds the lineage.
pub async fn read(
    store: &dyn LeaseStore,
    application: &str,
    kinesis: Option<(&dyn Kinesis, &str)>,
) -> Result<Lineage, AdminError> {
    let (leases, heartbeats) = crate::status::read_tables(store, application).await?;
    let described = match kinesis {
        Some((kinesis, stream)) => {
            Some(crate::lag::with_retries(stream, || kinesis.list_shards(stream)).await?)
        }
        None => None,
    };
    Ok(lineage(&leases, &heartbeats, described.as_deref()))
}

impl Lineage {
    /// The tree, one shard a line, children indented under each parent (a
    /// merged shard appears under both).
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let by_key: BTreeMap<(Option<&str>, &str), &ShardNode> = self
            .shards
            .iter()
            .map(|n| ((n.stream.as_deref(), n.shard.as_str()), n))
            .collect();
        let mut last_stream = None;
        for node in &self.shards {
            let is_root = node
                .parents
                .iter()
                .all(|p| !by_key.contains_key(&(node.stream.as_deref(), p.as_str())));
            if !is_root {
                continue;
            }
            if node.stream.is_some() && last_stream != Some(node.stream.as_deref()) {
                let _ = writeln!(out, "{}", node.stream.as_deref().unwrap_or_default());
                last_stream = Some(node.stream.as_deref());
            }
            write_node(&mut out, node, &by_key, 0);
        }
        if self.shards.is_empty() {
            let _ = writeln!(out, "(no shards)");
        }
        out
    }
}

fn write_node(
    out: &mut String,
    node: &ShardNode,
    by_key: &BTreeMap<(Option<&str>, &str), &ShardNode>,
    depth: usize,
) {
    let state = node.state.map_or("no lease", LeaseState::as_str);
    let open = match node.open {
        Some(true) => ", open",
        Some(false) => ", closed",
        None => "",
    };
    let merged = if node.parents.len() > 1 {
        format!(" (merged from {})", node.parents.join(" and "))
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "{}{} [{state}{open}]{merged}",
        "  ".repeat(depth),
        node.shard
    );
    // Depth is bounded by the resharding history; a corrupt cycle stops here.
    if depth > 64 {
        return;
    }
    for child in &node.children {
        if let Some(child) = by_key.get(&(node.stream.as_deref(), child.as_str())) {
            write_node(out, child, by_key, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use kcl_checkpoint::ExtendedSequenceNumber;

    use super::*;
    use crate::test_support::shard;

    #[test]
    fn parents_come_before_children_and_a_merge_sits_under_both() {
        // 0 split into 1 and 2, which merged into 3; 0's lease is deleted.
        let mut one = Lease::new("shardId-1", ExtendedSequenceNumber::ShardEnd);
        one.parent_shard_ids = ["shardId-0".to_owned()].into();
        let mut two = Lease::new("shardId-2", ExtendedSequenceNumber::ShardEnd);
        two.parent_shard_ids = ["shardId-0".to_owned()].into();
        let mut three = Lease::new("shardId-3", ExtendedSequenceNumber::TrimHorizon);
        three.parent_shard_ids = ["shardId-1".to_owned(), "shardId-2".to_owned()].into();
        let described = [
            shard("shardId-0", &[], false),
            shard("shardId-1", &["shardId-0"], false),
            shard("shardId-2", &["shardId-0"], false),
            shard("shardId-3", &["shardId-1", "shardId-2"], true),
        ];
        let lineage = lineage(&[three, two, one], &[], Some(&described));
        let order: Vec<&str> = lineage.shards.iter().map(|n| n.shard.as_str()).collect();
        assert_eq!(order, ["shardId-0", "shardId-1", "shardId-2", "shardId-3"]);
        assert_eq!(lineage.shards[0].state, None, "deleted lease");
        assert_eq!(lineage.shards[0].children, ["shardId-1", "shardId-2"]);
        assert_eq!(lineage.shards[3].state, Some(LeaseState::Unassigned));
        assert_eq!(lineage.shards[3].open, Some(true));
        let table = lineage.to_table();
        assert_eq!(
            table
                .matches("shardId-3 [unassigned, open] (merged from shardId-1 and shardId-2)")
                .count(),
            2,
            "under both parents:\n{table}"
        );
        assert!(
            table.starts_with("shardId-0 [no lease, closed]\n  shardId-1"),
            "{table}"
        );
    }
}
