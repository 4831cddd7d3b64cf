//! Which leases of the table a worker's application processes: those of its
//! one stream (keyed by shard id), or those of the streams a multi-stream
//! application consumes (keyed `account:stream:epoch:shardId`). Leases out
//! of scope are never taken, asked for or counted when balancing; a
//! multi-stream application's leases of streams it no longer consumes are
//! left to [lease cleanup](crate::LeaseStore::delete_lease) by the worker.

use std::collections::BTreeSet;

use crate::{Lease, StreamIdentifier};

/// The leases a worker processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LeaseScope {
    /// The leases of an application of one stream: every lease keyed by its
    /// shard id (none of a multi-stream application).
    #[default]
    SingleStream,
    /// The leases of these streams of a multi-stream application.
    MultiStream(BTreeSet<StreamIdentifier>),
}

impl LeaseScope {
    /// What a worker of this scope announces in its heartbeat (see
    /// [`WorkerHeartbeat::streams`](crate::WorkerHeartbeat::streams)).
    pub fn announced(&self) -> Option<BTreeSet<String>> {
        match self {
            Self::SingleStream => None,
            Self::MultiStream(streams) => Some(streams.iter().map(ToString::to_string).collect()),
        }
    }

    /// Whether a worker that announced `streams` processes the same leases
    /// as a worker of this scope.
    pub fn same_as(&self, streams: &Option<BTreeSet<String>>) -> bool {
        self.announced() == *streams
    }

    /// Whether the worker processes `lease`.
    pub fn includes(&self, lease: &Lease) -> bool {
        match (self, &lease.stream) {
            (Self::SingleStream, None) => true,
            (Self::MultiStream(streams), Some(stream)) => streams.contains(stream),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use kcl_checkpoint::ExtendedSequenceNumber;

    use super::*;

    #[test]
    fn each_scope_holds_the_leases_of_its_streams_only() {
        let orders = StreamIdentifier::parse("1:orders:10").unwrap();
        let refunds = StreamIdentifier::parse("1:refunds:10").unwrap();
        let recreated = StreamIdentifier::parse("1:orders:20").unwrap();
        let at = ExtendedSequenceNumber::TrimHorizon;
        let single = Lease::new("shardId-000000000000", at.clone());
        let of = |stream: &StreamIdentifier| {
            Lease::for_shard(Some(stream), "shardId-000000000000", at.clone())
        };
        assert!(LeaseScope::SingleStream.includes(&single));
        assert!(!LeaseScope::SingleStream.includes(&of(&orders)));
        let multi = LeaseScope::MultiStream([orders.clone(), refunds.clone()].into());
        assert!(multi.includes(&of(&orders)));
        assert!(multi.includes(&of(&refunds)));
        assert!(!multi.includes(&of(&recreated)));
        assert!(!multi.includes(&single));
        assert!(LeaseScope::SingleStream.same_as(&None));
        assert!(!LeaseScope::SingleStream.same_as(&multi.announced()));
        assert!(multi.same_as(&Some(
            ["1:refunds:10".to_owned(), "1:orders:10".to_owned()].into()
        )));
        assert!(!multi.same_as(&Some(["1:orders:10".to_owned()].into())));
        assert!(!multi.same_as(&None));
    }
}
