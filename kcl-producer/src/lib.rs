//! A Kinesis producer: records batched into `PutRecords` calls, retried
//! entry by entry, in order per partition key, optionally packed into KPL
//! aggregates, with a bounded buffer.
//!
//! - [`Producer`]: [`send`](Producer::send) a [`UserRecord`] and get back
//!   where it was [`Written`] (shard, sequence number, sub-sequence number
//!   inside an aggregate), or a [`SendError`] that says why not. Records
//!   wait at most [`ProducerConfig::linger`] for a call to fill (500
//!   records or 5 MiB); [`flush`](Producer::flush) and
//!   [`close`](Producer::close) send everything at once.
//! - Partial failures: entries that fail inside a `PutRecords` answer
//!   (throttling, `InternalFailure`) are sent again after a jittered
//!   backoff, and only they; a call that fails as a whole is made again; a
//!   record that cannot be written fails its own delivery.
//! - Per-key order ([`ProducerConfig::ordering`], on by default): a
//!   partition key never has two Kinesis records in flight, so a retry
//!   never reorders a key.
//! - Aggregation ([`ProducerConfig::aggregation`], off by default): small
//!   records packed per shard into KPL aggregates ([`kpl`]), grouped by a
//!   shard map that is loaded again when a reshard makes it stale.
//! - Backpressure: [`enqueue`](Producer::enqueue) waits while
//!   [`ProducerConfig::max_buffered_records`] or
//!   [`ProducerConfig::max_buffered_bytes`] is reached.
//! - [`metrics`]: what it records through the `metrics` facade.
//! - [`Sink`]: the two Kinesis calls it makes, implemented on the AWS SDK
//!   ([`SdkSink`]) and, with the `test-util` feature, in memory
//!   (`memory::InMemorySink`, held to the same semantics by
//!   `conformance`).
//! - [`backoff`]: the one retry component (shared with the consumer).
#![warn(missing_docs)]

mod batcher;
mod config;
mod error;
pub mod kpl;
pub mod metrics;
mod producer;
mod record;
mod sdk;
mod shard_map;
mod sink;

#[cfg(feature = "test-util")]
pub mod conformance;
#[cfg(feature = "test-util")]
pub mod memory;

/// The one retry component: exponential backoff with jitter.
pub use kcl_backoff as backoff;

pub use config::{AggregationConfig, MAX_BYTES_PER_CALL, MAX_RECORDS_PER_CALL, ProducerConfig};
pub use error::{ConfigError, PutError, PutErrorKind, SendError};
pub use producer::{Delivery, Producer};
pub use record::{MAX_PARTITION_KEY_CHARS, MAX_RECORD_BYTES, UserRecord, Written};
pub use sdk::SdkSink;
pub use shard_map::{ShardMap, ShardRange};
pub use sink::{EntryResult, PutEntry, Sink};

#[cfg(test)]
mod tests;
