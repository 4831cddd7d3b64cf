//! Which open shard each hash key maps to, for grouping aggregated records
//! by shard.

use std::sync::Arc;

/// An open shard and the hash keys it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRange {
    /// The shard id.
    pub shard_id: String,
    /// Its first hash key.
    pub start: u128,
    /// Its last hash key (inclusive).
    pub end: u128,
}

/// The open shards of a stream by hash key range, as of one `ListShards`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardMap {
    /// By start; ranges of open shards do not overlap.
    ranges: Vec<(u128, u128, Arc<str>)>,
}

impl ShardMap {
    /// The map of these open shards.
    pub fn new(shards: Vec<ShardRange>) -> Self {
        let mut ranges: Vec<(u128, u128, Arc<str>)> = shards
            .into_iter()
            .map(|s| (s.start, s.end, Arc::from(s.shard_id)))
            .collect();
        ranges.sort_by_key(|r| r.0);
        Self { ranges }
    }

    /// The shard `hash_key` maps to, if the map covers it.
    pub fn shard_for(&self, hash_key: u128) -> Option<&Arc<str>> {
        let after = self.ranges.partition_point(|r| r.0 <= hash_key);
        let (start, end, id) = self.ranges.get(after.checked_sub(1)?)?;
        (*start..=*end).contains(&hash_key).then_some(id)
    }

    /// The hash key range of `shard_id`, if it is in the map.
    pub fn range_of(&self, shard_id: &str) -> Option<(u128, u128)> {
        self.ranges
            .iter()
            .find(|r| &*r.2 == shard_id)
            .map(|r| (r.0, r.1))
    }

    /// How many shards it has.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether it has no shard.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_map_to_the_shard_whose_range_holds_them() {
        let map = ShardMap::new(vec![
            ShardRange {
                shard_id: "b".into(),
                start: 100,
                end: u128::MAX,
            },
            ShardRange {
                shard_id: "a".into(),
                start: 0,
                end: 99,
            },
        ]);
        assert_eq!(map.shard_for(0).map(|s| &**s), Some("a"));
        assert_eq!(map.shard_for(99).map(|s| &**s), Some("a"));
        assert_eq!(map.shard_for(100).map(|s| &**s), Some("b"));
        assert_eq!(map.shard_for(u128::MAX).map(|s| &**s), Some("b"));
        assert_eq!(map.range_of("a"), Some((0, 99)));
        let gap = ShardMap::new(vec![ShardRange {
            shard_id: "c".into(),
            start: 10,
            end: 20,
        }]);
        assert_eq!(gap.shard_for(5), None);
        assert_eq!(gap.shard_for(21), None);
        assert_eq!(ShardMap::default().shard_for(1), None);
    }
}
