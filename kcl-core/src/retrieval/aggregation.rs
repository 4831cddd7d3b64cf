//! KPL de-aggregation: records written by the Kinesis Producer Library may
//! carry many user records in one Kinesis record.
//!
//! An aggregate is the magic bytes `F3 89 9A C2`, a protobuf
//! `AggregatedRecord` (a partition key table, an explicit hash key table,
//! and records with data, key indexes and tags), then the MD5 digest of the
//! protobuf bytes. Each user record inherits the outer sequence number and
//! gets sub-sequence number 0, 1, 2… in order, its own partition key and
//! explicit hash key.
//!
//! A record that is not a valid aggregate (wrong magic, bad digest,
//! undecodable protobuf, a key index out of range) is delivered as it is,
//! with a warning and a count: nothing is lost.
//!
//! User records whose hash key falls outside the shard they were read from
//! (when the shard's range is known):
//! - an aggregate none of whose user records belongs to the shard is
//!   dropped whole: that is the KPL's wrong-shard case (its shard map was
//!   stale after a reshard, and it puts the whole aggregate again to the
//!   right shard), so delivering it would process every record twice;
//! - an aggregate with at least one user record in the shard is delivered
//!   whole: the KPL never mixes shards in one aggregate, so this is another
//!   aggregator (AWS's `aws-kinesis-agg` packs records of any keys and
//!   routes the aggregate by its first key), whose records are nowhere
//!   else; the ones outside the shard are counted.
//!
//! Both are counted and logged; `RetrievalConfig::drop_records_outside_shard`
//! turns the drop off entirely.

use kcl_lease::HashKeyRange;
use md5::{Digest, Md5};
use prost::Message;
use tracing::{debug, warn};

/// The KPL aggregate format, shared with the producer (`kcl-producer`).
pub use kcl_producer::kpl::{
    AggregatedEntry, AggregatedRecord, DIGEST_LEN, MAGIC, Tag, aggregate, partition_key_hash,
};

use crate::Record;

/// What de-aggregating a batch found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeaggregationReport {
    /// Records that were aggregates.
    pub aggregates: usize,
    /// Records that started with the magic bytes but were not valid
    /// aggregates, delivered as they are.
    pub malformed: usize,
    /// User records dropped with their aggregate because none of the
    /// aggregate's records belongs to the shard.
    pub outside_shard_dropped: usize,
    /// User records delivered although their hash key is outside the
    /// shard, because another record of their aggregate belongs to it.
    pub outside_shard_delivered: usize,
}

/// Why a record that looks like an aggregate is not one.
#[derive(Debug, thiserror::Error)]
enum Malformed {
    #[error("shorter than the magic bytes and digest")]
    TooShort,
    #[error("the MD5 digest does not match")]
    Digest,
    #[error("the protobuf does not decode: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("record {index} refers to {table} key {key}, past the table's end")]
    KeyIndex {
        index: usize,
        table: &'static str,
        key: u64,
    },
}

/// Replaces aggregates in `records` by their user records, dropping the
/// aggregates none of whose user records belongs to `shard_range` (when
/// known; see the module docs).
pub fn deaggregate(
    records: Vec<Record>,
    shard_range: Option<HashKeyRange>,
) -> (Vec<Record>, DeaggregationReport) {
    let mut report = DeaggregationReport::default();
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        if !record.data.starts_with(&MAGIC) {
            out.push(record);
            continue;
        }
        match expand(&record) {
            Ok(users) => {
                report.aggregates += 1;
                let outside = match shard_range {
                    Some(range) => users.iter().filter(|u| !in_range(u, range)).count(),
                    None => 0,
                };
                if outside > 0 && outside == users.len() {
                    report.outside_shard_dropped += outside;
                } else {
                    report.outside_shard_delivered += outside;
                    out.extend(users);
                }
            }
            Err(reason) => {
                report.malformed += 1;
                warn!(
                    sequence = %record.sequence_number,
                    %reason,
                    "record starts like a KPL aggregate but is not one; delivering it as it is"
                );
                out.push(record);
            }
        }
    }
    if report.outside_shard_dropped > 0 {
        warn!(
            dropped = report.outside_shard_dropped,
            "dropped KPL aggregates none of whose user records belongs to this shard (the KPL puts \
             them again to the right shard after a reshard)"
        );
    }
    if report.outside_shard_delivered > 0 {
        debug!(
            delivered = report.outside_shard_delivered,
            "delivered user records outside this shard's hash key range with the rest of their \
             aggregate (an aggregator that mixes keys of several shards)"
        );
    }
    (out, report)
}

/// Whether a user record's hash key (its explicit hash key, or the MD5 of
/// its partition key) is in `range`. A key that cannot be read counts as
/// in range: nothing is dropped on a guess.
fn in_range(user: &Record, range: HashKeyRange) -> bool {
    let hash = match &user.explicit_hash_key {
        Some(key) => key.parse::<u128>().ok(),
        None => Some(partition_key_hash(&user.partition_key)),
    };
    hash.is_none_or(|hash| (range.start..=range.end).contains(&hash))
}

/// The user records of one aggregate.
fn expand(record: &Record) -> Result<Vec<Record>, Malformed> {
    let data = &record.data;
    if data.len() < MAGIC.len() + DIGEST_LEN {
        return Err(Malformed::TooShort);
    }
    let body = &data[MAGIC.len()..data.len() - DIGEST_LEN];
    let digest = &data[data.len() - DIGEST_LEN..];
    if Md5::digest(body).as_slice() != digest {
        return Err(Malformed::Digest);
    }
    let aggregate = AggregatedRecord::decode(data.slice(MAGIC.len()..data.len() - DIGEST_LEN))?;
    aggregate
        .records
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let partition_key = aggregate
                .partition_key_table
                .get(entry.partition_key_index as usize)
                .ok_or(Malformed::KeyIndex {
                    index,
                    table: "partition",
                    key: entry.partition_key_index,
                })?
                .clone();
            let explicit_hash_key = match entry.explicit_hash_key_index {
                Some(key) => Some(
                    aggregate
                        .explicit_hash_key_table
                        .get(key as usize)
                        .ok_or(Malformed::KeyIndex {
                            index,
                            table: "explicit hash",
                            key,
                        })?
                        .clone(),
                ),
                None => None,
            };
            Ok(Record {
                data: entry.data,
                partition_key,
                sequence_number: record.sequence_number.clone(),
                sub_sequence_number: index as u64,
                approximate_arrival_timestamp: record.approximate_arrival_timestamp,
                explicit_hash_key,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kcl_checkpoint::SequenceNumber;

    use super::*;

    fn outer(data: Bytes) -> Record {
        Record {
            data,
            partition_key: "outer-key".into(),
            sequence_number: SequenceNumber::new(
                "49590000000000000000000000000000000000000000000000000001",
            )
            .unwrap(),
            sub_sequence_number: 0,
            approximate_arrival_timestamp: None,
            explicit_hash_key: None,
        }
    }

    #[test]
    fn an_aggregate_becomes_its_user_records_in_order() {
        let data = aggregate(&[
            ("alpha", None, b"one"),
            ("beta", Some("12345"), b"two"),
            ("alpha", None, b"three"),
        ]);
        let (records, report) = deaggregate(vec![outer(data)], None);
        assert_eq!(report.aggregates, 1);
        let seen: Vec<(&str, Option<&str>, &[u8], u64)> = records
            .iter()
            .map(|r| {
                (
                    r.partition_key.as_str(),
                    r.explicit_hash_key.as_deref(),
                    r.data.as_ref(),
                    r.sub_sequence_number,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("alpha", None, &b"one"[..], 0),
                ("beta", Some("12345"), &b"two"[..], 1),
                ("alpha", None, &b"three"[..], 2),
            ]
        );
        assert!(
            records
                .iter()
                .all(|r| r.sequence_number.as_str().ends_with("0001"))
        );
    }

    #[test]
    fn records_that_are_not_valid_aggregates_are_delivered_as_they_are() {
        let mut bad_digest = aggregate(&[("k", None, b"x")]).to_vec();
        let last = bad_digest.len() - 1;
        bad_digest[last] ^= 0xFF;
        let mut garbage = MAGIC.to_vec();
        garbage.extend_from_slice(&[0xFF; 40]);
        let cases = [
            Bytes::from_static(b"plain data"),
            Bytes::from(bad_digest),
            Bytes::from_static(&[0xF3, 0x89, 0x9A, 0xC2, 1, 2]),
            Bytes::from(garbage),
            Bytes::new(),
        ];
        for data in cases {
            let (records, report) = deaggregate(vec![outer(data.clone())], None);
            assert_eq!(records.len(), 1);
            assert_eq!(records[0].data, data);
            assert_eq!(report.aggregates, 0);
            assert_eq!(report.malformed, usize::from(data.starts_with(&MAGIC)));
        }
    }

    #[test]
    fn a_key_index_past_the_table_makes_the_record_malformed() {
        let message = AggregatedRecord {
            partition_key_table: vec!["k".into()],
            explicit_hash_key_table: vec![],
            records: vec![AggregatedEntry {
                partition_key_index: 3,
                explicit_hash_key_index: None,
                data: Bytes::from_static(b"x"),
                tags: vec![],
            }],
        };
        let body = message.encode_to_vec();
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&body);
        data.extend_from_slice(&Md5::digest(&body));
        let (records, report) = deaggregate(vec![outer(Bytes::from(data))], None);
        assert_eq!((records.len(), report.malformed), (1, 1));
    }

    #[test]
    fn an_aggregate_with_any_record_in_the_shard_is_delivered_whole() {
        // As aws-kinesis-agg packs them: 64 keys, routed by the first one.
        let keys: Vec<String> = (0..64).map(|n| format!("key-{n}")).collect();
        let first = partition_key_hash(&keys[0]);
        let range = HashKeyRange {
            start: first.saturating_sub(1 << 120),
            end: first.saturating_add(1 << 120),
        };
        let entries: Vec<(&str, Option<&str>, &[u8])> = keys
            .iter()
            .map(|key| (key.as_str(), None, key.as_bytes()))
            .collect();
        let (records, report) = deaggregate(vec![outer(aggregate(&entries))], Some(range));
        assert_eq!(records.len(), 64);
        let subs: Vec<u64> = records.iter().map(|r| r.sub_sequence_number).collect();
        assert_eq!(subs, (0..64).collect::<Vec<u64>>());
        let outside = keys
            .iter()
            .filter(|k| !(range.start..=range.end).contains(&partition_key_hash(k)))
            .count();
        assert!(outside > 50, "the test needs keys outside the shard");
        assert_eq!(report.outside_shard_delivered, outside);
        assert_eq!(report.outside_shard_dropped, 0);
    }

    #[test]
    fn an_aggregate_with_no_record_in_the_shard_is_dropped_and_counted() {
        let stale = aggregate(&[
            ("any", Some(&u128::MAX.to_string()), b"out"),
            ("other", Some(&(u128::MAX - 1).to_string()), b"out too"),
        ]);
        let plain = outer(Bytes::from_static(b"plain"));
        let range = HashKeyRange { start: 0, end: 10 };
        let (records, report) = deaggregate(vec![outer(stale.clone()), plain], Some(range));
        assert_eq!(records.len(), 1, "only the plain record");
        assert_eq!(report.outside_shard_dropped, 2);
        // With the range unknown (or the drop turned off), nothing is dropped.
        let (records, report) = deaggregate(vec![outer(stale)], None);
        assert_eq!((records.len(), report.outside_shard_dropped), (2, 0));
    }
}
