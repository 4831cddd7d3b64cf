//! The bound on what a shard's fetcher may hold ahead of its processor.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Records and bytes a fetcher may have fetched but not yet seen processed.
/// The fetcher acquires a batch's share before handing it over; the share
/// returns when the batch is dropped after processing.
#[derive(Clone, Debug)]
pub struct PrefetchBudget {
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_records: usize,
    max_bytes: usize,
}

/// A batch's share of a [`PrefetchBudget`], returned on drop.
#[derive(Debug)]
pub struct PrefetchPermit {
    _records: Option<OwnedSemaphorePermit>,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl PrefetchPermit {
    /// A permit that holds nothing (for batches made outside a fetcher).
    pub fn none() -> Self {
        Self {
            _records: None,
            _bytes: None,
        }
    }
}

impl PrefetchBudget {
    /// A budget of `max_records` records and `max_bytes` bytes (each at
    /// least 1).
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        let max_records = max_records.clamp(1, u32::MAX as usize);
        let max_bytes = max_bytes.clamp(1, u32::MAX as usize);
        Self {
            records: Arc::new(Semaphore::new(max_records)),
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_records,
            max_bytes,
        }
    }

    /// Waits until `records` records and `bytes` bytes fit in the budget,
    /// then takes them. A batch larger than the whole budget takes all of it
    /// (so it can still pass, alone).
    pub async fn acquire(&self, records: usize, bytes: usize) -> PrefetchPermit {
        let records = records.clamp(1, self.max_records) as u32;
        let bytes = bytes.clamp(1, self.max_bytes) as u32;
        // The semaphores are never closed, so acquiring cannot fail.
        let records = Arc::clone(&self.records)
            .acquire_many_owned(records)
            .await
            .ok();
        let bytes = Arc::clone(&self.bytes).acquire_many_owned(bytes).await.ok();
        PrefetchPermit {
            _records: records,
            _bytes: bytes,
        }
    }

    /// Records that may still be fetched ahead.
    pub fn available_records(&self) -> usize {
        self.records.available_permits()
    }
}
