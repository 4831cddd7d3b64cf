//! [`Sink`] on aws-sdk-kinesis.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use crate::error::{PutError, PutErrorKind};
use crate::shard_map::ShardRange;
use crate::sink::{EntryResult, PutEntry, Sink};

/// Kinesis through an aws-sdk-kinesis client. The SDK's own retries are
/// turned off (the producer retries with its own backoff, entry by entry,
/// so every attempt is seen and counted), and each attempt times out after
/// 30 s so a dropped connection cannot hold records forever.
#[derive(Clone, Debug)]
pub struct SdkSink {
    client: Client,
}

impl SdkSink {
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
        Self {
            client: Client::from_conf(config),
        }
    }
}

fn is_arn(stream: &str) -> bool {
    stream.starts_with("arn:")
}

#[async_trait]
impl Sink for SdkSink {
    async fn put_records(
        &self,
        stream: &str,
        entries: Vec<PutEntry>,
    ) -> Result<Vec<EntryResult>, PutError> {
        let count = entries.len();
        let entries = entries
            .into_iter()
            .map(|entry| {
                PutRecordsRequestEntry::builder()
                    .partition_key(entry.partition_key)
                    .set_explicit_hash_key(entry.explicit_hash_key.map(|h| h.to_string()))
                    .data(Blob::new(entry.data.to_vec()))
                    .build()
                    .map_err(|e| PutError {
                        kind: PutErrorKind::Rejected,
                        code: "InvalidEntry".into(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let request = self.client.put_records().set_records(Some(entries));
        let request = if is_arn(stream) {
            request.stream_arn(stream)
        } else {
            request.stream_name(stream)
        };
        let output = request.send().await.map_err(classify)?;
        let results: Vec<EntryResult> = output
            .records()
            .iter()
            .map(|result| {
                match (
                    result.error_code(),
                    result.shard_id(),
                    result.sequence_number(),
                ) {
                    (None, Some(shard_id), Some(sequence_number)) => EntryResult::Written {
                        shard_id: shard_id.to_owned(),
                        sequence_number: sequence_number.to_owned(),
                    },
                    (code, _, _) => EntryResult::Failed {
                        code: code.unwrap_or("MissingResult").to_owned(),
                        message: result
                            .error_message()
                            .unwrap_or("no shard id or sequence number in the answer")
                            .to_owned(),
                    },
                }
            })
            .collect();
        if results.len() != count {
            // Nothing can be matched to its entry: send them all again.
            return Err(PutError::retryable(
                "InvalidResponse",
                format!("{} results for {count} entries", results.len()),
            ));
        }
        Ok(results)
    }

    async fn open_shards(&self, stream: &str) -> Result<Vec<ShardRange>, PutError> {
        let mut shards = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let request = match &next_token {
                Some(token) => self.client.list_shards().next_token(token),
                None if is_arn(stream) => self.client.list_shards().stream_arn(stream),
                None => self.client.list_shards().stream_name(stream),
            };
            let page = request.send().await.map_err(classify)?;
            for shard in page.shards() {
                let open = shard
                    .sequence_number_range()
                    .is_some_and(|r| r.ending_sequence_number().is_none());
                let Some(range) = shard.hash_key_range().filter(|_| open) else {
                    continue;
                };
                let parse = |key: &str| {
                    key.parse::<u128>().map_err(|_| {
                        PutError::retryable(
                            "InvalidResponse",
                            format!("hash key {key:?} of {} is not a number", shard.shard_id()),
                        )
                    })
                };
                shards.push(ShardRange {
                    shard_id: shard.shard_id().to_owned(),
                    start: parse(range.starting_hash_key())?,
                    end: parse(range.ending_hash_key())?,
                });
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => return Ok(shards),
            }
        }
    }
}

/// What the producer does about a failed call.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(error: SdkError<E>) -> PutError {
    let message = match error.message() {
        Some(message) => message.to_owned(),
        None => aws_sdk_kinesis::error::DisplayErrorContext(&error).to_string(),
    };
    match &error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or_default().to_owned();
            let kind = match code.as_str() {
                "ResourceNotFoundException" => PutErrorKind::StreamNotFound,
                "AccessDeniedException" | "KMSAccessDeniedException" => PutErrorKind::AccessDenied,
                "ProvisionedThroughputExceededException"
                | "LimitExceededException"
                | "ThrottlingException"
                | "KMSThrottlingException"
                | "InternalFailure"
                | "ServiceUnavailable"
                // Credentials the provider renews.
                | "ExpiredTokenException" => PutErrorKind::Retryable,
                _ if status == 429 || status >= 500 => PutErrorKind::Retryable,
                _ => PutErrorKind::Rejected,
            };
            PutError {
                kind,
                code,
                message,
            }
        }
        SdkError::TimeoutError(_) => PutError::retryable("Timeout", message),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            PutError::retryable("Dispatch", message)
        }
        _ => PutError {
            kind: PutErrorKind::Rejected,
            code: "Construction".into(),
            message,
        },
    }
}
