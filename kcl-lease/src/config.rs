//! The lease coordinator's settings, validated once.

use std::time::Duration;

use crate::LeaseScope;

/// How a worker takes part in the lease table.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseConfig {
    /// This worker's id, unique in the fleet (the `leaseOwner` it writes).
    pub worker_id: String,
    /// How long a worker's heartbeat may stay unchanged before others take
    /// its leases, and how long a worker that cannot heartbeat keeps
    /// processing before it stops by itself. Default 10 s.
    pub failover_time: Duration,
    /// How often the worker writes its heartbeat. At most half the failover
    /// time, so one lost heartbeat never expires a live worker. Default: half
    /// the failover time.
    pub heartbeat_interval: Duration,
    /// How long before its deadline a worker stops processing: a worker
    /// processes a shard only until its last confirmed heartbeat was sent
    /// plus the failover time minus this margin, so its consumers have
    /// stopped before any other worker may judge it expired. Must be less
    /// than the failover time minus the heartbeat interval (or a healthy
    /// worker would stop between two heartbeats). Default: a fifth of the
    /// failover time.
    pub safety_margin: Duration,
    /// How often the worker reads the tables and takes or asks for leases.
    /// Failover after a crash takes at most the failover time plus this.
    /// Default 10 s.
    pub assignment_interval: Duration,
    /// The most leases this worker holds; `None` for no limit.
    pub max_leases_per_worker: Option<usize>,
    /// How often a worker checks a lease it asked for, or was handed, until
    /// the old owner has released it (so it starts within this time), and
    /// how often a stopping worker looks for requests for its leases.
    /// Default 100 ms.
    pub handoff_poll_interval: Duration,
    /// How often the worker reads its own heartbeat item (one small,
    /// eventually consistent read): for leases a stopping worker handed to
    /// it, which it then starts as soon as they are released, and for an
    /// operator's eviction, which it then carries out at once. `None` turns
    /// the watch off: both wait for the next assignment round (a planned
    /// stop then takes up to an assignment interval instead of about a
    /// second). Default 500 ms.
    pub watch_interval: Option<Duration>,
    /// Which leases of the table this worker processes. Default: those of
    /// an application of one stream.
    pub scope: LeaseScope,
}

/// A [`LeaseConfig`] setting that cannot work, named.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    /// `worker_id` is empty.
    #[error("worker_id must not be empty")]
    EmptyWorkerId,
    /// A duration is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The heartbeat interval is too long for the failover time.
    #[error(
        "heartbeat_interval ({heartbeat:?}) must be at most half of failover_time ({failover:?}), \
         so that one missed heartbeat does not expire a live worker"
    )]
    HeartbeatTooSlow {
        /// The heartbeat interval given.
        heartbeat: Duration,
        /// The failover time given.
        failover: Duration,
    },
    /// The safety margin leaves no time between two heartbeats.
    #[error(
        "safety_margin ({margin:?}) must be less than failover_time ({failover:?}) minus \
         heartbeat_interval ({heartbeat:?}), or a healthy worker would stop between two heartbeats"
    )]
    MarginTooLarge {
        /// The safety margin given.
        margin: Duration,
        /// The failover time given.
        failover: Duration,
        /// The heartbeat interval given.
        heartbeat: Duration,
    },
    /// `max_leases_per_worker` is zero.
    #[error("max_leases_per_worker must be at least 1 (or unset for no limit)")]
    ZeroMaxLeases,
}

impl LeaseConfig {
    /// The defaults for `worker_id`: 10 s failover, 5 s heartbeats, a 2 s
    /// safety margin, 10 s assignment rounds, 100 ms handoff polls, a watch
    /// every 500 ms, no lease limit.
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            failover_time: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(5),
            safety_margin: Duration::from_secs(2),
            assignment_interval: Duration::from_secs(10),
            max_leases_per_worker: None,
            handoff_poll_interval: Duration::from_millis(100),
            watch_interval: Some(Duration::from_millis(500)),
            scope: LeaseScope::SingleStream,
        }
    }

    /// Sets the failover time, the heartbeat interval to half of it and the
    /// safety margin to a fifth of it.
    pub fn with_failover_time(mut self, failover_time: Duration) -> Self {
        self.failover_time = failover_time;
        self.heartbeat_interval = failover_time / 2;
        self.safety_margin = failover_time / 5;
        self
    }

    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        if self.worker_id.is_empty() {
            return Err(LeaseConfigError::EmptyWorkerId);
        }
        for (name, value) in [
            ("failover_time", self.failover_time),
            ("heartbeat_interval", self.heartbeat_interval),
            ("safety_margin", self.safety_margin),
            ("assignment_interval", self.assignment_interval),
            ("handoff_poll_interval", self.handoff_poll_interval),
            (
                "watch_interval",
                self.watch_interval.unwrap_or(Duration::MAX),
            ),
        ] {
            if value.is_zero() {
                return Err(LeaseConfigError::Zero(name));
            }
        }
        if self.heartbeat_interval * 2 > self.failover_time {
            return Err(LeaseConfigError::HeartbeatTooSlow {
                heartbeat: self.heartbeat_interval,
                failover: self.failover_time,
            });
        }
        if self.safety_margin + self.heartbeat_interval >= self.failover_time {
            return Err(LeaseConfigError::MarginTooLarge {
                margin: self.safety_margin,
                failover: self.failover_time,
                heartbeat: self.heartbeat_interval,
            });
        }
        if self.max_leases_per_worker == Some(0) {
            return Err(LeaseConfigError::ZeroMaxLeases);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(LeaseConfig::new("w").validate(), Ok(()));
        assert_eq!(
            LeaseConfig::new("").validate(),
            Err(LeaseConfigError::EmptyWorkerId)
        );
        let mut slow = LeaseConfig::new("w");
        slow.heartbeat_interval = Duration::from_secs(6);
        assert!(
            slow.validate()
                .unwrap_err()
                .to_string()
                .contains("heartbeat_interval")
        );
        let mut zero = LeaseConfig::new("w");
        zero.assignment_interval = Duration::ZERO;
        assert_eq!(
            zero.validate(),
            Err(LeaseConfigError::Zero("assignment_interval"))
        );
        let mut no_leases = LeaseConfig::new("w");
        no_leases.max_leases_per_worker = Some(0);
        assert_eq!(no_leases.validate(), Err(LeaseConfigError::ZeroMaxLeases));
        let fast = LeaseConfig::new("w").with_failover_time(Duration::from_secs(2));
        assert_eq!(fast.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(fast.safety_margin, Duration::from_millis(400));
        assert_eq!(fast.validate(), Ok(()));
        let mut wide = LeaseConfig::new("w");
        wide.safety_margin = Duration::from_secs(5);
        assert!(matches!(
            wide.validate(),
            Err(LeaseConfigError::MarginTooLarge { .. })
        ));
        let mut watch = LeaseConfig::new("w");
        watch.watch_interval = Some(Duration::ZERO);
        assert_eq!(
            watch.validate(),
            Err(LeaseConfigError::Zero("watch_interval"))
        );
        watch.watch_interval = None;
        assert_eq!(watch.validate(), Ok(()), "no watch at all is allowed");
        let mut none = LeaseConfig::new("w");
        none.safety_margin = Duration::ZERO;
        assert_eq!(
            none.validate(),
            Err(LeaseConfigError::Zero("safety_margin"))
        );
    }
}
