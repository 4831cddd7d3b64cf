//! [`Kinesis`] on aws-sdk-kinesis.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{self, ShardIteratorType};
use kcl_checkpoint::SequenceNumber;
use kcl_lease::HashKeyRange;

use super::{
    ChildShard, Kinesis, KinesisError, RecordsPage, ShardDescription, StartingPosition,
    StreamSummary, Subscription, SubscriptionEvent,
};
use crate::Record;

/// Kinesis through an aws-sdk-kinesis client. The SDK's own retries are
/// turned off (the framework retries with its own backoff, so every attempt
/// is seen and counted), and each attempt times out after 30 s so a dropped
/// connection cannot stall a shard.
#[derive(Clone, Debug)]
pub struct SdkKinesis {
    client: Client,
    /// For `SubscribeToShard`, whose response streams for minutes: no
    /// attempt timeout.
    streaming: Client,
}

impl SdkKinesis {
    /// Wraps `client`, keeping its region, credentials and endpoint.
    pub fn new(client: &Client) -> Self {
        let config = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            )
            .build();
        let streaming = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build();
        Self {
            client: Client::from_conf(config),
            streaming: Client::from_conf(streaming),
        }
    }
}

/// A `SubscribeToShard` event stream.
struct SdkSubscription {
    events: aws_sdk_kinesis::primitives::event_stream::EventReceiver<
        types::SubscribeToShardEventStream,
        types::error::SubscribeToShardEventStreamError,
    >,
}

#[async_trait]
impl Subscription for SdkSubscription {
    async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, KinesisError> {
        const OP: &str = "SubscribeToShard";
        loop {
            let event = match self.events.recv().await {
                Ok(Some(types::SubscribeToShardEventStream::SubscribeToShardEvent(event))) => event,
                // Event types this version does not know: skip them.
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(None),
                Err(error) => {
                    let message = aws_sdk_kinesis::error::DisplayErrorContext(&error).to_string();
                    return Err(KinesisError::Transient {
                        operation: OP,
                        message,
                    });
                }
            };
            let records = event
                .records()
                .iter()
                .map(record)
                .collect::<Result<Vec<_>, _>>()?;
            let child_shards = child_shards(OP, event.child_shards())?;
            let continuation = event.continuation_sequence_number();
            return Ok(Some(SubscriptionEvent {
                records,
                continuation_sequence_number: (!continuation.is_empty())
                    .then(|| continuation.to_owned()),
                millis_behind_latest: u64::try_from(event.millis_behind_latest()).ok(),
                child_shards,
            }));
        }
    }
}

#[async_trait]
impl Kinesis for SdkKinesis {
    async fn describe_stream(&self, stream: &str) -> Result<StreamSummary, KinesisError> {
        const OP: &str = "DescribeStreamSummary";
        let summary = counted(
            OP,
            self.client
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await
                .map_err(|e| classify(OP, e)),
        )?;
        let description =
            summary
                .stream_description_summary()
                .ok_or_else(|| KinesisError::InvalidResponse {
                    operation: OP,
                    message: "no stream description".into(),
                })?;
        let created =
            SystemTime::try_from(*description.stream_creation_timestamp()).map_err(|error| {
                KinesisError::InvalidResponse {
                    operation: OP,
                    message: format!("stream creation time: {error}"),
                }
            })?;
        Ok(StreamSummary {
            arn: description.stream_arn().to_owned(),
            created,
        })
    }

    async fn register_consumer(&self, stream: &str, name: &str) -> Result<String, KinesisError> {
        let summary = counted(
            "DescribeStreamSummary",
            self.client
                .describe_stream_summary()
                .stream_name(stream)
                .send()
                .await
                .map_err(|e| classify("DescribeStreamSummary", e)),
        )?;
        let stream_arn = summary
            .stream_description_summary()
            .map(|s| s.stream_arn().to_owned())
            .ok_or_else(|| KinesisError::InvalidResponse {
                operation: "DescribeStreamSummary",
                message: "no stream description".into(),
            })?;
        let registered = self
            .client
            .register_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(name)
            .send()
            .await;
        let already = registered
            .as_ref()
            .err()
            .and_then(|e| e.as_service_error())
            .is_some_and(|e| e.is_resource_in_use_exception());
        if !already {
            counted(
                "RegisterStreamConsumer",
                registered.map_err(|e| classify("RegisterStreamConsumer", e)),
            )?;
        }
        // Wait until it is active (registration takes seconds on AWS).
        for _ in 0..600 {
            let described = counted(
                "DescribeStreamConsumer",
                self.client
                    .describe_stream_consumer()
                    .stream_arn(&stream_arn)
                    .consumer_name(name)
                    .send()
                    .await
                    .map_err(|e| classify("DescribeStreamConsumer", e)),
            )?;
            if let Some(consumer) = described.consumer_description()
                && *consumer.consumer_status() == types::ConsumerStatus::Active
            {
                return Ok(consumer.consumer_arn().to_owned());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(KinesisError::Transient {
            operation: "DescribeStreamConsumer",
            message: format!("consumer {name} not active after 5 minutes"),
        })
    }

    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<Box<dyn Subscription>, KinesisError> {
        const OP: &str = "SubscribeToShard";
        let builder = types::StartingPosition::builder();
        let start = match position {
            StartingPosition::TrimHorizon => builder.r#type(ShardIteratorType::TrimHorizon),
            StartingPosition::Latest => builder.r#type(ShardIteratorType::Latest),
            StartingPosition::AtTimestamp(at) => builder
                .r#type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(*at)),
            StartingPosition::AtSequenceNumber(sequence) => builder
                .r#type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(sequence),
            StartingPosition::AfterSequenceNumber(sequence) => builder
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(sequence),
        }
        .build()
        .map_err(|e| KinesisError::Refused {
            operation: OP,
            code: String::new(),
            message: e.to_string(),
        })?;
        let output = counted(
            OP,
            self.streaming
                .subscribe_to_shard()
                .consumer_arn(consumer_arn)
                .shard_id(shard_id)
                .starting_position(start)
                .send()
                .await
                .map_err(|e| classify(OP, e)),
        )?;
        Ok(Box::new(SdkSubscription {
            events: output.event_stream,
        }))
    }

    async fn list_shards(&self, stream: &str) -> Result<Vec<ShardDescription>, KinesisError> {
        const OP: &str = "ListShards";
        let mut shards = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            // With a next token, the stream name must not be given.
            let request = match &next_token {
                Some(token) => self.client.list_shards().next_token(token),
                None => self.client.list_shards().stream_name(stream),
            };
            let page = counted(OP, request.send().await.map_err(|e| classify(OP, e)))?;
            for shard in page.shards() {
                shards.push(describe(shard)?);
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => return Ok(shards),
            }
        }
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, KinesisError> {
        const OP: &str = "GetShardIterator";
        let request = self
            .client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard_id);
        let request = match position {
            StartingPosition::TrimHorizon => {
                request.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            StartingPosition::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            StartingPosition::AtTimestamp(at) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(*at)),
            StartingPosition::AtSequenceNumber(sequence) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(sequence),
            StartingPosition::AfterSequenceNumber(sequence) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence),
        };
        let output = counted(OP, request.send().await.map_err(|e| classify(OP, e)))?;
        output
            .shard_iterator
            .ok_or_else(|| KinesisError::InvalidResponse {
                operation: OP,
                message: format!("no shard iterator for {shard_id}"),
            })
    }

    async fn get_records(&self, iterator: &str, limit: u32) -> Result<RecordsPage, KinesisError> {
        const OP: &str = "GetRecords";
        let output = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit.clamp(1, 10_000) as i32)
            .send()
            .await
            .map_err(|e| classify(OP, e));
        let output = counted(OP, output)?;
        let records = output
            .records()
            .iter()
            .map(record)
            .collect::<Result<Vec<_>, _>>()?;
        let child_shards = child_shards(OP, output.child_shards())?;
        Ok(RecordsPage {
            records,
            next_iterator: output.next_shard_iterator().map(str::to_owned),
            millis_behind_latest: output
                .millis_behind_latest()
                .and_then(|ms| u64::try_from(ms).ok()),
            child_shards,
        })
    }
}

/// Counts a Kinesis request by operation and outcome.
fn counted<T>(operation: &'static str, result: Result<T, KinesisError>) -> Result<T, KinesisError> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(KinesisError::Throttled { .. }) => "throttled",
        Err(KinesisError::ExpiredIterator { .. }) => "expired_iterator",
        Err(KinesisError::Transient { .. }) => "failed",
        Err(KinesisError::NotFound { .. }) => "not_found",
        Err(KinesisError::Refused { .. }) => "refused",
        Err(KinesisError::InvalidResponse { .. }) => "invalid_response",
    };
    metrics::counter!(
        crate::telemetry::metrics::AWS_REQUESTS,
        "service" => "kinesis",
        "operation" => operation,
        "outcome" => outcome
    )
    .increment(1);
    result
}

/// The child shards Kinesis reported at a shard's end.
fn child_shards(
    operation: &'static str,
    children: &[types::ChildShard],
) -> Result<Vec<ChildShard>, KinesisError> {
    children
        .iter()
        .map(|child| {
            Ok(ChildShard {
                shard_id: child.shard_id().to_owned(),
                parent_shards: child.parent_shards().to_vec(),
                hash_key_range: hash_key_range(operation, child.hash_key_range())?,
            })
        })
        .collect()
}

fn describe(shard: &types::Shard) -> Result<ShardDescription, KinesisError> {
    Ok(ShardDescription {
        shard_id: shard.shard_id().to_owned(),
        parent_shard_id: shard.parent_shard_id().map(str::to_owned),
        adjacent_parent_shard_id: shard.adjacent_parent_shard_id().map(str::to_owned),
        hash_key_range: hash_key_range("ListShards", shard.hash_key_range())?,
        ending_sequence_number: shard
            .sequence_number_range()
            .and_then(|range| range.ending_sequence_number())
            .map(str::to_owned),
    })
}

fn hash_key_range(
    operation: &'static str,
    range: Option<&types::HashKeyRange>,
) -> Result<HashKeyRange, KinesisError> {
    let invalid = |message: String| KinesisError::InvalidResponse { operation, message };
    let range = range.ok_or_else(|| invalid("a shard without a hash key range".into()))?;
    let parse = |digits: &str| {
        digits
            .parse::<u128>()
            .map_err(|e| invalid(format!("hash key {digits:?}: {e}")))
    };
    Ok(HashKeyRange {
        start: parse(range.starting_hash_key())?,
        end: parse(range.ending_hash_key())?,
    })
}

fn record(record: &types::Record) -> Result<Record, KinesisError> {
    let sequence = record.sequence_number();
    let sequence_number =
        SequenceNumber::new(sequence).map_err(|e| KinesisError::InvalidResponse {
            operation: "GetRecords",
            message: format!("sequence number {sequence:?}: {e}"),
        })?;
    Ok(Record {
        data: bytes::Bytes::copy_from_slice(record.data().as_ref()),
        partition_key: record.partition_key().unwrap_or_default().to_owned(),
        sequence_number,
        sub_sequence_number: 0,
        approximate_arrival_timestamp: record
            .approximate_arrival_timestamp()
            .and_then(|at| SystemTime::try_from(*at).ok()),
        explicit_hash_key: None,
    })
}

/// Sorts an SDK error into what the caller should do about it.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    operation: &'static str,
    error: SdkError<E>,
) -> KinesisError {
    let message = match error.message() {
        Some(message) => message.to_owned(),
        None => format!("{}", aws_sdk_kinesis::error::DisplayErrorContext(&error)),
    };
    match &error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or_default().to_owned();
            match code.as_str() {
                "ProvisionedThroughputExceededException"
                | "LimitExceededException"
                | "ThrottlingException"
                | "KMSThrottlingException" => KinesisError::Throttled { operation, message },
                "ExpiredIteratorException" => KinesisError::ExpiredIterator { message },
                "ResourceNotFoundException" => KinesisError::NotFound { operation, message },
                _ if status == 429 => KinesisError::Throttled { operation, message },
                _ if status >= 500 => KinesisError::Transient { operation, message },
                "InternalFailure" | "ServiceUnavailable" => {
                    KinesisError::Transient { operation, message }
                }
                _ => KinesisError::Refused {
                    operation,
                    code,
                    message,
                },
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            KinesisError::Transient { operation, message }
        }
        _ => KinesisError::Refused {
            operation,
            code: String::new(),
            message,
        },
    }
}
