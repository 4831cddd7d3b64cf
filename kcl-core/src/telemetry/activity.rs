//! Which shards are stalled: a shard consumer whose processor call has not
//! returned, or whose reads from Kinesis have not succeeded, for longer
//! than the stall time. Reported as a metric, in the log, and in the
//! worker's heartbeat (for `kcl-admin status`), so that a processor that
//! hangs does not go unnoticed.
//!
//! Reading an idle shard is progress (an empty answer is a successful
//! read); a processor that fails and is retried is not stalled (its calls
//! return; the retries are counted elsewhere).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The running shards' last signs of progress.
#[derive(Debug, Default)]
pub struct ShardActivity(Mutex<HashMap<(String, String), Activity>>);

#[derive(Clone, Copy, Debug)]
struct Activity {
    /// The last successful read from Kinesis (or the consumer's start).
    last_read: Instant,
    /// When the processor call under way began.
    call_since: Option<Instant>,
}

impl ShardActivity {
    fn with(&self, stream: &str, shard: &str, update: impl FnOnce(&mut Activity)) {
        let mut shards = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(activity) = shards.get_mut(&(stream.to_owned(), shard.to_owned())) {
            update(activity);
        }
    }

    /// A consumer of `shard` of `stream` starts.
    pub fn started(&self, stream: &str, shard: &str) {
        let mut shards = self.0.lock().unwrap_or_else(|p| p.into_inner());
        shards.insert(
            (stream.to_owned(), shard.to_owned()),
            Activity {
                last_read: Instant::now(),
                call_since: None,
            },
        );
    }

    /// The consumer of `shard` of `stream` stopped.
    pub fn stopped(&self, stream: &str, shard: &str) {
        let mut shards = self.0.lock().unwrap_or_else(|p| p.into_inner());
        shards.remove(&(stream.to_owned(), shard.to_owned()));
    }

    /// A read of `shard` of `stream` succeeded (records or none).
    pub fn read(&self, stream: &str, shard: &str) {
        self.with(stream, shard, |a| a.last_read = Instant::now());
    }

    /// A processor call on `shard` of `stream` began.
    pub fn call_began(&self, stream: &str, shard: &str) {
        self.with(stream, shard, |a| a.call_since = Some(Instant::now()));
    }

    /// The processor call on `shard` of `stream` returned (or was
    /// cancelled).
    pub fn call_ended(&self, stream: &str, shard: &str) {
        self.with(stream, shard, |a| a.call_since = None);
    }

    /// The shards (stream, shard) with no progress for `after` at `now`: a
    /// processor call under way that long, or no successful read that
    /// long.
    pub fn stalled(&self, now: Instant, after: Duration) -> BTreeSet<(String, String)> {
        let shards = self.0.lock().unwrap_or_else(|p| p.into_inner());
        shards
            .iter()
            .filter(|(_, a)| {
                let stuck_in_call = a.call_since.is_some_and(|since| now - since >= after);
                stuck_in_call || now.saturating_duration_since(a.last_read) >= after
            })
            .map(|(key, _)| key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_or_reads_that_stop_for_the_stall_time_stall_a_shard() {
        let activity = ShardActivity::default();
        let after = Duration::from_secs(60);
        activity.started("s", "busy");
        activity.started("s", "idle");
        activity.started("s", "cut-off");
        let key = |shard: &str| ("s".to_owned(), shard.to_owned());
        tokio::time::advance(Duration::from_secs(30)).await;
        activity.call_began("s", "busy");
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(20)).await;
            activity.read("s", "busy");
            activity.read("s", "idle");
        }
        let stalled = activity.stalled(Instant::now(), after);
        // busy: in one call for 80 s though its fetcher reads on; cut-off: no
        // read for 110 s; idle: reads every 20 s.
        assert_eq!(stalled, [key("busy"), key("cut-off")].into());
        activity.call_ended("s", "busy");
        activity.stopped("s", "cut-off");
        assert!(activity.stalled(Instant::now(), after).is_empty());
    }
}
