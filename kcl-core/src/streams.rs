//! The streams a worker consumes.
//!
//! An application consumes one stream, or several: a multi-stream
//! application keeps the leases of all its streams in one lease table,
//! keyed `account:stream:epoch:shardId` as the Java KCL keys them (see
//! [`StreamIdentifier`]), so that a Java multi-stream table carries over
//! with its checkpoints. Each stream has its own initial position.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_lease::{Lease, StreamIdentifier};

use crate::kinesis::{Kinesis, KinesisError};

/// What an application consumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamsConfig {
    /// One stream; its leases are keyed by shard id.
    Single(String),
    /// The streams of a multi-stream application; their leases are keyed
    /// `account:stream:epoch:shardId`.
    Multi(Vec<StreamConfig>),
}

impl StreamsConfig {
    /// The streams' names, as given.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Self::Single(name) => vec![name.as_str()],
            Self::Multi(streams) => streams.iter().map(StreamConfig::name).collect(),
        }
    }

    /// Whether this is a multi-stream application.
    pub fn is_multi_stream(&self) -> bool {
        matches!(self, Self::Multi(_))
    }
}

/// Where a shard with no checkpoint starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest record still in the shard (the default: nothing in the
    /// stream is skipped).
    TrimHorizon,
    /// Records written after the worker starts reading. The first reader of
    /// a shard records on the lease where it began (a few seconds before it
    /// started); until a record has been checkpointed, every later reader
    /// (after a restart, a handoff, a processor panic) begins there, so
    /// nothing written after the first reader started is skipped. (The Java
    /// KCL begins from the newest record again.)
    Latest,
    /// Records written at or after a time. The first reader of a shard
    /// records the time on the lease, so a later change of this setting
    /// does not move shards that were already read.
    AtTimestamp(SystemTime),
}

impl InitialPosition {
    /// The checkpoint a new lease starts with.
    pub fn checkpoint(&self) -> ExtendedSequenceNumber {
        match self {
            Self::TrimHorizon => ExtendedSequenceNumber::TrimHorizon,
            Self::Latest => ExtendedSequenceNumber::Latest,
            Self::AtTimestamp(_) => ExtendedSequenceNumber::AtTimestamp,
        }
    }
}

/// One stream of a multi-stream application, as given to
/// [`SchedulerBuilder::stream`](crate::SchedulerBuilder::stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    name: String,
    identifier: Option<StreamIdentifier>,
    initial_position: Option<InitialPosition>,
}

impl StreamConfig {
    /// The stream `name`. Its identifier (`account:stream:epoch`) is read
    /// from Kinesis at start: the account from the stream's ARN, the epoch
    /// from its creation time in seconds.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            identifier: None,
            initial_position: None,
        }
    }

    /// The stream named by `identifier`, as it names the leases already in
    /// the table (for a table a Java application wrote with a creation epoch
    /// of its own choosing).
    pub fn with_identifier(identifier: StreamIdentifier) -> Self {
        Self {
            name: identifier.stream_name.clone(),
            identifier: Some(identifier),
            initial_position: None,
        }
    }

    /// Where this stream's shards without a checkpoint start. Default: the
    /// application's [`initial_position`](crate::SchedulerBuilder::initial_position).
    pub fn initial_position(mut self, position: InitialPosition) -> Self {
        self.initial_position = Some(position);
        self
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The identifier given with [`with_identifier`](Self::with_identifier).
    pub fn identifier(&self) -> Option<&StreamIdentifier> {
        self.identifier.as_ref()
    }

    /// The initial position given, if any.
    pub fn given_initial_position(&self) -> Option<InitialPosition> {
        self.initial_position
    }

    /// The stream as its consumers use it: its identifier given, or read
    /// from Kinesis.
    pub(crate) async fn resolve(
        &self,
        kinesis: &dyn Kinesis,
        default_position: InitialPosition,
    ) -> Result<ConsumedStream, KinesisError> {
        let described = describe(kinesis, &self.name).await?;
        let identifier = self.identifier.clone().unwrap_or(described.clone());
        Ok(ConsumedStream {
            name: self.name.clone(),
            described: Some(described),
            identifier: Some(identifier),
            initial_position: self.initial_position.unwrap_or(default_position),
            fanout_consumer: OnceLock::new(),
        })
    }
}

/// `stream` as Kinesis describes it now: its account (from the ARN) and
/// creation time in seconds.
pub async fn describe(
    kinesis: &dyn Kinesis,
    stream: &str,
) -> Result<StreamIdentifier, KinesisError> {
    let summary = kinesis.describe_stream(stream).await?;
    let invalid = |message: String| KinesisError::InvalidResponse {
        operation: "DescribeStreamSummary",
        message,
    };
    let account_id = summary
        .account_id()
        .ok_or_else(|| invalid(format!("no account id in ARN {}", summary.arn)))?
        .to_owned();
    let creation_epoch = summary
        .created
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .ok()
        .filter(|secs| *secs > 0)
        .ok_or_else(|| invalid("a stream creation time before 1970".into()))?;
    Ok(StreamIdentifier {
        account_id,
        stream_name: stream.to_owned(),
        creation_epoch,
    })
}

/// A stream a worker consumes, as its shard consumers, shard discovery and
/// lease cleanup use it.
#[derive(Debug)]
pub struct ConsumedStream {
    /// The stream's name.
    pub name: String,
    /// How its leases are keyed in a multi-stream application; `None` in an
    /// application of one stream (leases keyed by shard id).
    pub identifier: Option<StreamIdentifier>,
    /// In a multi-stream application, the stream as Kinesis described it at
    /// start (its account and creation time): a stream deleted and created
    /// again under the name is described otherwise, which every shard
    /// discovery checks.
    pub described: Option<StreamIdentifier>,
    /// Where its shards without a checkpoint start.
    pub initial_position: InitialPosition,
    /// The enhanced fan-out consumer's ARN on this stream, once registered:
    /// shards are read through `SubscribeToShard` when set, by polling
    /// otherwise.
    pub fanout_consumer: OnceLock<String>,
}

impl ConsumedStream {
    /// The one stream of an application of one stream.
    pub fn single(name: impl Into<String>, initial_position: InitialPosition) -> Self {
        Self {
            name: name.into(),
            identifier: None,
            described: None,
            initial_position,
            fanout_consumer: OnceLock::new(),
        }
    }

    /// The lease key of `shard_id` of this stream.
    pub fn lease_key(&self, shard_id: &str) -> String {
        match &self.identifier {
            Some(identifier) => identifier.lease_key(shard_id),
            None => shard_id.to_owned(),
        }
    }

    /// Whether `lease` is a lease of this stream.
    pub fn owns(&self, lease: &Lease) -> bool {
        lease.stream == self.identifier
    }

    /// The time shards that start `AT_TIMESTAMP` start from.
    pub fn initial_timestamp(&self) -> Option<SystemTime> {
        match self.initial_position {
            InitialPosition::AtTimestamp(at) => Some(at),
            _ => None,
        }
    }
}

/// The streams of a worker, found by the identifier their leases carry.
#[derive(Debug, Default)]
pub struct ConsumedStreams(Vec<Arc<ConsumedStream>>);

impl ConsumedStreams {
    /// These streams.
    pub fn new(streams: Vec<Arc<ConsumedStream>>) -> Self {
        Self(streams)
    }

    /// The stream `lease` belongs to, if this worker consumes it.
    pub fn of(&self, lease: &Lease) -> Option<&Arc<ConsumedStream>> {
        self.0.iter().find(|stream| stream.owns(lease))
    }

    /// Every stream.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ConsumedStream>> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use kcl_checkpoint::ExtendedSequenceNumber;

    use super::*;
    use crate::kinesis::InMemoryKinesis;

    #[tokio::test]
    async fn a_stream_is_identified_by_its_account_and_creation_time() {
        let kinesis = InMemoryKinesis::new();
        kinesis.create_stream("orders", 1);
        let orders = StreamConfig::new("orders")
            .resolve(&kinesis, InitialPosition::Latest)
            .await
            .unwrap();
        let identifier = orders.identifier.clone().unwrap();
        assert_eq!(identifier.account_id, crate::kinesis::IN_MEMORY_ACCOUNT);
        assert_eq!(identifier.stream_name, "orders");
        assert!(identifier.creation_epoch > 0);
        assert_eq!(orders.initial_position, InitialPosition::Latest);
        assert_eq!(
            orders.lease_key("shardId-000000000000"),
            format!("{identifier}:shardId-000000000000")
        );
        let lease = Lease::for_shard(
            Some(&identifier),
            "shardId-000000000000",
            ExtendedSequenceNumber::TrimHorizon,
        );
        assert!(orders.owns(&lease));

        let given = StreamIdentifier::parse("123456789012:orders:42").unwrap();
        let as_given = StreamConfig::with_identifier(given.clone())
            .initial_position(InitialPosition::TrimHorizon)
            .resolve(&kinesis, InitialPosition::Latest)
            .await
            .unwrap();
        assert_eq!(as_given.identifier, Some(given));
        assert_eq!(as_given.initial_position, InitialPosition::TrimHorizon);
        assert!(!as_given.owns(&lease));

        let missing = StreamConfig::new("missing")
            .resolve(&kinesis, InitialPosition::Latest)
            .await;
        assert!(matches!(missing, Err(KinesisError::NotFound { .. })));
    }
}
