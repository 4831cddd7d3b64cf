//! The semantics every [`Sink`] must have for the producer to be right,
//! as checks that panic with what differs. Run against the in-memory
//! stream (`memory::InMemorySink`) and against Kinesis (kinesis-mock in
//! this project's tests), so that the fake stays honest.

use std::future::Future;

use bytes::Bytes;

use crate::error::PutErrorKind;
use crate::kpl::partition_key_hash;
use crate::shard_map::ShardMap;
use crate::sink::{EntryResult, PutEntry, Sink};

/// Runs every check. `stream` is a fresh stream with two or more open
/// shards, `missing` a stream that does not exist, and `split(shard)`
/// splits an open shard of `stream` in two (and waits until writes go to
/// the children).
pub async fn run_all<S, F, Fut>(sink: &S, stream: &str, missing: &str, split: F)
where
    S: Sink,
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    open_shards_cover_the_hash_key_space(sink, stream).await;
    entries_go_to_the_shard_of_their_hash_key_in_order(sink, stream).await;
    a_missing_stream_is_not_found(sink, missing).await;
    a_split_moves_the_keys_to_the_children(sink, stream, split).await;
}

async fn open_map<S: Sink>(sink: &S, stream: &str) -> ShardMap {
    let shards = sink.open_shards(stream).await.expect("list open shards");
    assert!(
        shards.len() >= 2,
        "the conformance stream needs two shards or more"
    );
    let mut ranges: Vec<(u128, u128)> = shards.iter().map(|s| (s.start, s.end)).collect();
    ranges.sort();
    assert_eq!(
        ranges.first().map(|r| r.0),
        Some(0),
        "open shards start at 0"
    );
    assert_eq!(
        ranges.last().map(|r| r.1),
        Some(u128::MAX),
        "open shards end at 2^128-1"
    );
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].1 + 1, pair[1].0, "open shards are contiguous");
    }
    ShardMap::new(shards)
}

/// The open shards' hash key ranges cover 0 to 2^128-1 without a gap or
/// an overlap.
pub async fn open_shards_cover_the_hash_key_space<S: Sink>(sink: &S, stream: &str) {
    open_map(sink, stream).await;
}

/// Each entry lands on the open shard whose range holds its explicit hash
/// key (or its partition key's MD5), and within a shard the sequence
/// numbers grow in the order of the entries.
pub async fn entries_go_to_the_shard_of_their_hash_key_in_order<S: Sink>(sink: &S, stream: &str) {
    let map = open_map(sink, stream).await;
    let mut entries: Vec<PutEntry> = (0..40)
        .map(|n| PutEntry {
            partition_key: format!("conformance-{n}"),
            explicit_hash_key: None,
            data: Bytes::from(format!("value-{n}")),
        })
        .collect();
    for hash in [0, u128::MAX, u128::MAX / 2, u128::MAX / 2 + 1] {
        entries.push(PutEntry {
            partition_key: "explicit".into(),
            explicit_hash_key: Some(hash),
            data: Bytes::from_static(b"explicit"),
        });
    }
    let results = sink
        .put_records(stream, entries.clone())
        .await
        .expect("put records");
    assert_eq!(results.len(), entries.len(), "one result per entry");
    let mut last: std::collections::HashMap<String, String> = Default::default();
    for (entry, result) in entries.iter().zip(results) {
        let EntryResult::Written {
            shard_id,
            sequence_number,
        } = result
        else {
            panic!("{entry:?} was not written: {result:?}");
        };
        let hash = entry
            .explicit_hash_key
            .unwrap_or_else(|| partition_key_hash(&entry.partition_key));
        assert_eq!(
            map.shard_for(hash).map(|s| s.to_string()),
            Some(shard_id.clone()),
            "{entry:?} went to another shard"
        );
        if let Some(before) = last.get(&shard_id) {
            assert!(
                (before.len(), before) < (sequence_number.len(), &sequence_number),
                "sequence numbers of {shard_id} do not grow: {before} then {sequence_number}"
            );
        }
        last.insert(shard_id, sequence_number);
    }
}

/// Writing to (or listing) a stream that does not exist fails as a whole
/// with [`PutErrorKind::StreamNotFound`].
pub async fn a_missing_stream_is_not_found<S: Sink>(sink: &S, missing: &str) {
    let entry = PutEntry {
        partition_key: "k".into(),
        explicit_hash_key: None,
        data: Bytes::from_static(b"x"),
    };
    let put = sink.put_records(missing, vec![entry]).await;
    assert_eq!(put.map_err(|e| e.kind), Err(PutErrorKind::StreamNotFound));
    let list = sink.open_shards(missing).await;
    assert_eq!(list.map_err(|e| e.kind), Err(PutErrorKind::StreamNotFound));
}

/// After a split, the parent is no longer open, its two children cover its
/// range, and a key of the parent's range lands on a child.
pub async fn a_split_moves_the_keys_to_the_children<S, F, Fut>(sink: &S, stream: &str, split: F)
where
    S: Sink,
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let before = sink.open_shards(stream).await.expect("list open shards");
    let parent = before[0].clone();
    split(parent.shard_id.clone()).await;
    let after = open_map(sink, stream).await;
    assert!(
        after.range_of(&parent.shard_id).is_none(),
        "the split parent is still open"
    );
    let child = after.shard_for(parent.start).expect("a child").to_string();
    let results = sink
        .put_records(
            stream,
            vec![PutEntry {
                partition_key: "split".into(),
                explicit_hash_key: Some(parent.start),
                data: Bytes::from_static(b"after the split"),
            }],
        )
        .await
        .expect("put after the split");
    assert!(
        matches!(&results[..], [EntryResult::Written { shard_id, .. }] if *shard_id == child),
        "a key of the parent's range should land on {child}: {results:?}"
    );
}
