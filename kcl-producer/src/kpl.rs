//! The KPL aggregate format, written here and read by `kcl-core`'s
//! de-aggregation, the Java KCL and AWS's de-aggregation libraries.
//!
//! An aggregate is the magic bytes `F3 89 9A C2`, a protobuf
//! `AggregatedRecord` (a partition key table, an explicit hash key table,
//! and records with data and key indexes), then the MD5 digest of the
//! protobuf bytes. Consumers give each user record the outer sequence
//! number and sub-sequence number 0, 1, 2… in order.

use std::collections::HashMap;

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

/// The bytes every KPL aggregate starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// The length of the MD5 digest that ends an aggregate.
pub const DIGEST_LEN: usize = 16;

/// The KPL's aggregate message (`messages.proto` of the KPL).
#[derive(Clone, PartialEq, Message)]
pub struct AggregatedRecord {
    /// Partition keys, referred to by index.
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    /// Explicit hash keys, referred to by index.
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    /// The user records.
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<AggregatedEntry>,
}

/// One user record inside an aggregate.
#[derive(Clone, PartialEq, Message)]
pub struct AggregatedEntry {
    /// Index into the partition key table.
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    /// Index into the explicit hash key table, if the record has one.
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    /// The user record's data.
    #[prost(bytes = "bytes", required, tag = "3")]
    pub data: Bytes,
    /// Tags (not used by consumers).
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

/// A KPL record tag.
#[derive(Clone, PartialEq, Message)]
pub struct Tag {
    /// The tag's key.
    #[prost(string, required, tag = "1")]
    pub key: String,
    /// The tag's value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// The 128-bit hash key of a partition key: its MD5 digest as a big-endian
/// number (how Kinesis maps partition keys to shards).
pub fn partition_key_hash(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// Builds an aggregate of `records` (partition key, explicit hash key,
/// data), as the KPL writes them. For tests and tools; the producer builds
/// its aggregates with [`AggregateBuilder`].
pub fn aggregate(records: &[(&str, Option<&str>, &[u8])]) -> Bytes {
    let mut message = AggregatedRecord::default();
    for (partition_key, explicit_hash_key, data) in records {
        let partition_key_index = index_of(&mut message.partition_key_table, partition_key);
        let explicit_hash_key_index =
            explicit_hash_key.map(|key| index_of(&mut message.explicit_hash_key_table, key));
        message.records.push(AggregatedEntry {
            partition_key_index,
            explicit_hash_key_index,
            data: Bytes::copy_from_slice(data),
            tags: Vec::new(),
        });
    }
    frame(&message)
}

fn index_of(table: &mut Vec<String>, key: &str) -> u64 {
    let index = table.iter().position(|k| k == key).unwrap_or_else(|| {
        table.push(key.to_owned());
        table.len() - 1
    });
    index as u64
}

/// Magic bytes, the message, its MD5.
fn frame(message: &AggregatedRecord) -> Bytes {
    let body = message.encode_to_vec();
    let mut bytes = Vec::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&Md5::digest(&body));
    Bytes::from(bytes)
}

/// An aggregate being filled, which knows its encoded size before each
/// record is added, so that it never grows past a limit.
#[derive(Debug, Default)]
pub struct AggregateBuilder {
    message: AggregatedRecord,
    partition_keys: HashMap<String, u64>,
    hash_keys: HashMap<u128, u64>,
    body_len: usize,
}

impl AggregateBuilder {
    /// An empty aggregate.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many user records it holds.
    pub fn len(&self) -> usize {
        self.message.records.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.message.records.is_empty()
    }

    /// Its size once framed: magic bytes, message, digest.
    pub fn encoded_len(&self) -> usize {
        MAGIC.len() + self.body_len + DIGEST_LEN
    }

    /// Its framed size if a record with this key, explicit hash key and
    /// data length were added.
    pub fn encoded_len_with(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<u128>,
        data_len: usize,
    ) -> usize {
        self.encoded_len() + self.growth(partition_key, explicit_hash_key, data_len).0
    }

    /// The bytes a record adds, and its key indexes.
    fn growth(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<u128>,
        data_len: usize,
    ) -> (usize, u64, Option<u64>) {
        let mut added = 0;
        let key_index = match self.partition_keys.get(partition_key) {
            Some(&index) => index,
            None => {
                added += field_len(partition_key.len());
                self.partition_keys.len() as u64
            }
        };
        let hash_index = explicit_hash_key.map(|hash| match self.hash_keys.get(&hash) {
            Some(&index) => index,
            None => {
                added += field_len(decimal_len(hash));
                self.hash_keys.len() as u64
            }
        });
        let mut entry = 1 + varint_len(key_index as usize) + field_len(data_len);
        if let Some(index) = hash_index {
            entry += 1 + varint_len(index as usize);
        }
        added += field_len(entry);
        (added, key_index, hash_index)
    }

    /// Adds a user record.
    pub fn push(&mut self, partition_key: &str, explicit_hash_key: Option<u128>, data: Bytes) {
        let (added, key_index, hash_index) =
            self.growth(partition_key, explicit_hash_key, data.len());
        self.body_len += added;
        if key_index as usize == self.message.partition_key_table.len() {
            self.message
                .partition_key_table
                .push(partition_key.to_owned());
            self.partition_keys
                .insert(partition_key.to_owned(), key_index);
        }
        if let (Some(hash), Some(index)) = (explicit_hash_key, hash_index)
            && index as usize == self.message.explicit_hash_key_table.len()
        {
            self.message.explicit_hash_key_table.push(hash.to_string());
            self.hash_keys.insert(hash, index);
        }
        self.message.records.push(AggregatedEntry {
            partition_key_index: key_index,
            explicit_hash_key_index: hash_index,
            data,
            tags: Vec::new(),
        });
    }

    /// The framed aggregate.
    pub fn finish(&self) -> Bytes {
        frame(&self.message)
    }
}

/// A length-delimited field of `len` bytes with a one-byte tag.
fn field_len(len: usize) -> usize {
    1 + varint_len(len) + len
}

fn varint_len(value: usize) -> usize {
    prost::encoding::encoded_len_varint(value as u64)
}

fn decimal_len(value: u128) -> usize {
    value
        .checked_ilog10()
        .map_or(1, |digits| digits as usize + 1)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn partition_keys_hash_like_kinesis() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(partition_key_hash(""), 0xd41d8cd98f00b204e9800998ecf8427e);
    }

    #[test]
    fn decimal_lengths() {
        for value in [0u128, 9, 10, 99, 100, u128::MAX] {
            assert_eq!(decimal_len(value), value.to_string().len());
        }
    }

    proptest! {
        /// The size known before each push is the size of the framed bytes,
        /// and the builder frames what `aggregate` frames.
        #[test]
        fn the_size_is_known_before_each_record_is_added(
            records in prop::collection::vec(
                (0usize..6, prop::option::of(0u8..4), 0usize..300),
                1..40,
            )
        ) {
            let mut builder = AggregateBuilder::new();
            let mut plain: Vec<(String, Option<String>, Vec<u8>)> = Vec::new();
            for (key, hash, len) in records {
                let key = format!("key-{key}").repeat(1 + key * 7);
                let hash = hash.map(|h| u128::MAX >> (h * 30));
                let predicted = builder.encoded_len_with(&key, hash, len);
                builder.push(&key, hash, Bytes::from(vec![7u8; len]));
                prop_assert_eq!(builder.finish().len(), predicted);
                prop_assert_eq!(builder.encoded_len(), predicted);
                plain.push((key, hash.map(|h| h.to_string()), vec![7u8; len]));
            }
            let refs: Vec<(&str, Option<&str>, &[u8])> = plain
                .iter()
                .map(|(k, h, d)| (k.as_str(), h.as_deref(), d.as_slice()))
                .collect();
            prop_assert_eq!(builder.finish(), aggregate(&refs));
        }
    }
}
