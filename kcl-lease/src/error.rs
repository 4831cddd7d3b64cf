//! What can go wrong when talking to the lease table.

/// An error from a [`LeaseStore`](crate::LeaseStore).
#[derive(Debug, thiserror::Error)]
pub enum LeaseStoreError {
    /// The lease is no longer what the caller saw: another worker owns or
    /// processes it, or its counter has moved. Nothing was written. For a
    /// processing worker this means the lease is lost: stop processing the
    /// shard without checkpointing. For a take or handoff request it means
    /// another worker got there first.
    #[error("lease {lease_key} was lost or changed by another worker; nothing was written")]
    LeaseLost {
        /// The lease key.
        lease_key: String,
    },
    /// The lease does not exist (deleted, or never created).
    #[error("lease {lease_key} does not exist")]
    NotFound {
        /// The lease key.
        lease_key: String,
    },
    /// A heartbeat was not written because the stored one is already
    /// further: a write of this worker id that took effect late, or another
    /// process running with the same worker id. The next heartbeat must go
    /// above `stored`.
    #[error(
        "heartbeat of worker {worker} not written: the table already holds {stored}, a later \
         value (another process may run with the same worker id)"
    )]
    HeartbeatSuperseded {
        /// The worker id.
        worker: String,
        /// The value stored.
        stored: u64,
    },
    /// Another live process writes heartbeats under this worker id (this
    /// one's heartbeats found a larger value than they carried again after
    /// going above it). Worker ids must be unique in a fleet: this worker
    /// stops processing at once and its coordinator ends.
    #[error(
        "another process runs with worker id {worker} (this one's heartbeats keep finding larger \
         values); stopping this one: worker ids must be unique"
    )]
    DuplicateWorkerId {
        /// The worker id.
        worker: String,
    },
    /// An item in the lease table is not a valid lease.
    #[error("lease table item {lease_key:?} is malformed: {reason}")]
    InvalidItem {
        /// The item's `leaseKey`, if it has one.
        lease_key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The table does not exist and could not be created, or did not become
    /// active in time.
    #[error("lease table {table}: {reason}")]
    Table {
        /// The table's name.
        table: String,
        /// What happened.
        reason: String,
    },
    /// DynamoDB kept throttling or failing the request through every retry.
    /// Transient: the caller may try again later.
    #[error("{operation} on {table} still failing after {attempts} attempts: {message}")]
    Unavailable {
        /// The DynamoDB operation.
        operation: &'static str,
        /// The table.
        table: String,
        /// How many times it was sent.
        attempts: u32,
        /// The last error.
        message: String,
    },
    /// DynamoDB refused the request for a reason retrying will not fix
    /// (permissions, validation, a missing table). Check the configuration.
    #[error("{operation} on {table} was refused: {message}")]
    Refused {
        /// The DynamoDB operation.
        operation: &'static str,
        /// The table.
        table: String,
        /// DynamoDB's error code (e.g. `AccessDeniedException`), empty if
        /// there was none.
        code: String,
        /// DynamoDB's error, with its context.
        message: String,
    },
}

impl LeaseStoreError {
    /// Whether the lease moved on (see [`LeaseStoreError::LeaseLost`]).
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Self::LeaseLost { .. })
    }

    pub(crate) fn lost(lease_key: &str) -> Self {
        Self::LeaseLost {
            lease_key: lease_key.to_owned(),
        }
    }
}
