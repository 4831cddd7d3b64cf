//! Counting the requests a store sends, by operation: the figures behind
//! the cost comparison and the request metric.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Requests sent to the tables, by operation name (DynamoDB's names), each
/// retry counted. Used for the cost figures and exposed as metrics.
#[derive(Debug, Default)]
pub struct RequestCounter(Mutex<BTreeMap<&'static str, u64>>);

/// A snapshot of a [`RequestCounter`].
pub type RequestCounts = BTreeMap<&'static str, u64>;

/// The DynamoDB operations that write.
pub const WRITE_OPERATIONS: [&str; 5] = [
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "CreateTable",
    "BatchWriteItem",
];

impl RequestCounter {
    /// Counts one request of `operation`.
    pub fn add(&self, operation: &'static str) {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry(operation).or_default() += 1;
    }

    /// The counts so far.
    pub fn snapshot(&self) -> RequestCounts {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Sums the write requests in `counts`.
pub fn write_requests(counts: &RequestCounts) -> u64 {
    counts
        .iter()
        .filter(|(op, _)| WRITE_OPERATIONS.contains(op))
        .map(|(_, n)| n)
        .sum()
}
