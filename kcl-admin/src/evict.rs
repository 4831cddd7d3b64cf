//! Asking a live worker to hand all its leases over without stopping (to
//! drain a node), and letting it take leases again.
//!
//! The request is a mark on the worker's heartbeat item
//! ([`request_eviction`](kcl_lease::LeaseStore::request_eviction)). The
//! worker sees it at its next read of its own item (its watch, every
//! 500 ms by default; at its next assignment round with the watch off) and
//! drains as a stopping worker does (it hands each lease to a receiver
//! after its batch in flight, checkpointed), but goes on running. The mark lasts until cancelled or until the process stops: a
//! worker started again under the same id takes leases.

use std::time::Duration;

use kcl_lease::LeaseStore;
use serde::Serialize;

use crate::AdminError;

/// What an eviction did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Eviction {
    /// The worker.
    pub worker: String,
    /// Whether it is evicted now (`false` after a cancel).
    pub evicted: bool,
    /// The leases it processes, as last read (after waiting, if asked).
    pub leases_held: usize,
    /// Whether the wait ended with the worker holding no lease (`None`
    /// without a wait).
    pub drained: Option<bool>,
}

/// Evicts `worker` of `application` (or lets it take leases again, when
/// `cancel`). With `wait`, reads the lease table until the worker holds no
/// lease, for at most that long.
pub async fn evict(
    store: &dyn LeaseStore,
    application: &str,
    worker: &str,
    cancel: bool,
    wait: Option<Duration>,
) -> Result<Eviction, AdminError> {
    let marked = store
        .request_eviction(worker, !cancel)
        .await
        .map_err(|e| AdminError::from_store(application, e))?;
    if !marked {
        let known = store
            .list_heartbeats()
            .await
            .map_err(|e| AdminError::from_store(application, e))?
            .into_iter()
            .map(|h| h.worker)
            .collect();
        return Err(AdminError::UnknownWorker {
            application: application.to_owned(),
            worker: worker.to_owned(),
            known,
        });
    }
    let held = || async {
        let leases = store.list_leases().await.map_err(AdminError::LeaseTable)?;
        Ok::<usize, AdminError>(
            leases
                .iter()
                .filter(|l| !l.is_finished())
                .filter(|l| l.processing_owner() == Some(worker))
                .count(),
        )
    };
    let mut leases_held = held().await?;
    let drained = match wait {
        Some(wait) if !cancel => {
            let deadline = tokio::time::Instant::now() + wait;
            while leases_held > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                leases_held = held().await?;
            }
            Some(leases_held == 0)
        }
        _ => None,
    };
    Ok(Eviction {
        worker: worker.to_owned(),
        evicted: !cancel,
        leases_held,
        drained,
    })
}

impl Eviction {
    /// One line for the operator.
    pub fn to_table(&self) -> String {
        match (self.evicted, self.drained) {
            (false, _) => format!(
                "{}: eviction cancelled; it takes leases again from its next assignment round \
                 ({} held now)\n",
                self.worker, self.leases_held
            ),
            (true, None) => format!(
                "{}: evicted; it hands its {} leases over within about a second (at its next \
                 assignment round if it does not watch its heartbeat item) and goes on running\n",
                self.worker, self.leases_held
            ),
            (true, Some(true)) => format!("{}: evicted; it holds no lease now\n", self.worker),
            (true, Some(false)) => format!(
                "{}: evicted, but still holds {} leases: are other workers running to take \
                 them?\n",
                self.worker, self.leases_held
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use kcl_checkpoint::ExtendedSequenceNumber;
    use kcl_lease::{InMemoryLeaseStore, Lease};

    use super::*;

    #[tokio::test]
    async fn an_unknown_worker_is_refused_with_the_known_ones() {
        let store = InMemoryLeaseStore::new();
        store
            .heartbeat(&crate::test_support::heartbeat("worker-a", None))
            .await
            .unwrap();
        let mut lease = Lease::new("shard-1", ExtendedSequenceNumber::TrimHorizon);
        lease.owner = Some("worker-a".into());
        store.create_lease_if_absent(&lease).await.unwrap();
        match evict(&store, "app", "worker-z", false, None).await {
            Err(AdminError::UnknownWorker { known, .. }) => assert_eq!(known, ["worker-a"]),
            other => panic!("{other:?}"),
        }
        let evicted = evict(&store, "app", "worker-a", false, None).await.unwrap();
        assert_eq!(evicted.leases_held, 1);
        assert!(store.list_heartbeats().await.unwrap()[0].evicted);
        let waited = evict(
            &store,
            "app",
            "worker-a",
            false,
            Some(Duration::from_millis(10)),
        )
        .await
        .unwrap();
        assert_eq!(waited.drained, Some(false), "nobody took the lease");
        evict(&store, "app", "worker-a", true, None).await.unwrap();
        assert!(!store.list_heartbeats().await.unwrap()[0].evicted);
    }
}
