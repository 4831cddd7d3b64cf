//! The lease store on DynamoDB: conditional writes for every change that
//! depends on ownership, strongly consistent reads, and retries with backoff
//! and jitter on throttling and server errors.
//!
//! Two tables, their items described in [`item`]:
//! - the lease table (hash key `leaseKey`), in the Java KCL's item format;
//! - the workers table (hash key `workerId`, by default the lease table's
//!   name with `-Workers` appended), one heartbeat item per worker, whose
//!   `heartbeat` grows with every write (each write is conditional on the
//!   stored value being lower). Kept apart so a Java KCL reader of the
//!   lease table never sees an item that is not a lease.
//!
//! The condition of every write is built in `condition.rs`, from the
//! attribute names in [`item`].

mod condition;
pub mod item;

use std::collections::BTreeSet;
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus,
};
use kcl_checkpoint::ExtendedSequenceNumber;
use tracing::info;

use crate::backoff::{Backoff, BackoffConfig, retry_with_backoff};
use crate::listing::SkippedItemsReport;
use crate::store::{CheckpointUpdate, LeaseStore, RequestCounter, RequestCounts, WorkerHeartbeat};
use crate::{Lease, LeaseStoreError, LeaseTableListing, LeaseToken};
use condition::Condition;
use item::*;

/// How long [`LeaseStore::ensure_tables`] waits for a new table to become
/// active.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one request to DynamoDB may take before it is abandoned (and
/// retried with backoff). Lease-table requests are small: a healthy table
/// answers in milliseconds.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The lease and workers tables in DynamoDB.
#[derive(Clone, Debug)]
pub struct DynamoDbLeaseStore {
    /// The client, with the SDK's own retries turned off: every retry goes
    /// through [`retry_with_backoff`], so it is jittered and counted.
    client: Client,
    /// The lease table's name (the application's name).
    lease_table: String,
    /// The workers table's name (heartbeats).
    workers_table: String,
    /// How throttled and failed requests are retried.
    backoff: BackoffConfig,
    /// Requests sent, by operation, each retry counted.
    requests: Arc<RequestCounter>,
    /// Items of the lease table this store skips, reported once each.
    skipped: Arc<SkippedItemsReport>,
}

impl DynamoDbLeaseStore {
    /// A store on `lease_table` and its workers table
    /// (`<lease_table>-Workers`), through a client built from `client`'s
    /// configuration (credentials, region, endpoint).
    pub fn new(client: &Client, lease_table: impl Into<String>) -> Self {
        let lease_table = lease_table.into();
        let config = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            // A request that hangs (a stalled connection, a partition) is
            // abandoned and retried like any transient failure.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(3100))
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .build();
        Self {
            client: Client::from_conf(config),
            workers_table: format!("{lease_table}-Workers"),
            lease_table,
            backoff: BackoffConfig::default(),
            requests: Arc::default(),
            skipped: Arc::default(),
        }
    }

    /// Uses `workers_table` for worker heartbeats instead of the default.
    pub fn with_workers_table(mut self, workers_table: impl Into<String>) -> Self {
        self.workers_table = workers_table.into();
        self
    }

    /// Retries throttled and failed requests following `backoff`.
    pub fn with_backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// The lease table's name.
    pub fn lease_table(&self) -> &str {
        &self.lease_table
    }

    /// The workers table's name.
    pub fn workers_table(&self) -> &str {
        &self.workers_table
    }

    /// Sends a request, retrying throttling, server errors and transport
    /// failures with backoff. A failed condition comes back as
    /// `Ok(Err(ConditionFailed))`; every other failure as a
    /// [`LeaseStoreError`].
    async fn send<T, E, F, Fut>(
        &self,
        operation: &'static str,
        table: &str,
        mut call: F,
    ) -> Result<Result<T, ConditionFailed>, LeaseStoreError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
    {
        let result = retry_with_backoff(operation, Backoff::new(self.backoff.clone()), || {
            self.requests.add(operation);
            let response = call();
            async move {
                let (outcome, flow) = match response.await {
                    Ok(value) => ("ok", ControlFlow::Break(Ok(Ok(value)))),
                    Err(error) => match classify(&error) {
                        ErrorClass::ConditionFailed => (
                            "condition_failed",
                            ControlFlow::Break(Ok(Err(ConditionFailed))),
                        ),
                        ErrorClass::Transient => (
                            "throttled_or_failed",
                            ControlFlow::Continue(DisplayErrorContext(error)),
                        ),
                        ErrorClass::Permanent => (
                            "refused",
                            ControlFlow::Break(Err(DisplayErrorContext(error))),
                        ),
                    },
                };
                metrics::counter!(
                    crate::metrics::AWS_REQUESTS,
                    "service" => "dynamodb",
                    "operation" => operation,
                    "outcome" => outcome
                )
                .increment(1);
                flow
            }
        })
        .await;
        match result {
            Ok(outcome) => Ok(outcome),
            Err(exhausted) if classify(&exhausted.error.0) == ErrorClass::Transient => {
                Err(LeaseStoreError::Unavailable {
                    operation,
                    table: table.to_owned(),
                    attempts: exhausted.attempts,
                    message: exhausted.error.to_string(),
                })
            }
            Err(refused) => Err(LeaseStoreError::Refused {
                operation,
                table: table.to_owned(),
                code: refused.error.0.code().unwrap_or_default().to_owned(),
                message: refused.error.to_string(),
            }),
        }
    }

    /// The write of `update` to the lease `token` holds, conditional on the
    /// stored checkpoint and pending checkpoint being `previous`'s (so that a
    /// request that lands late changes nothing).
    fn checkpoint_request(
        &self,
        token: &LeaseToken,
        previous: &CheckpointUpdate,
        update: &CheckpointUpdate,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let mut set = vec![
            format!("{CHECKPOINT} = :checkpoint"),
            format!("{CHECKPOINT_SUB_SEQUENCE} = :checkpoint_sub"),
            format!("{OWNER_SWITCHES} = :zero"),
        ];
        let mut remove = Vec::new();
        let condition = condition::held_by(token)
            .and(condition::stored_position_is(
                CHECKPOINT,
                CHECKPOINT_SUB_SEQUENCE,
                ":previous",
                Some(&previous.checkpoint),
            ))
            .and(condition::stored_position_is(
                PENDING_CHECKPOINT,
                PENDING_CHECKPOINT_SUB_SEQUENCE,
                ":previous_pending",
                previous.pending_checkpoint.as_ref(),
            ));
        let mut request = self
            .conditional_update(condition)
            .table_name(&self.lease_table)
            .key(LEASE_KEY, s(&token.key))
            .expression_attribute_values(":checkpoint", s(update.checkpoint.checkpoint_str()))
            .expression_attribute_values(
                ":checkpoint_sub",
                n(update.checkpoint.sub_sequence_number()),
            )
            .expression_attribute_values(":zero", n(0));
        match &update.pending_checkpoint {
            Some(pending) => {
                set.push(format!("{PENDING_CHECKPOINT} = :pending"));
                set.push(format!("{PENDING_CHECKPOINT_SUB_SEQUENCE} = :pending_sub"));
                request = request
                    .expression_attribute_values(":pending", s(pending.checkpoint_str()))
                    .expression_attribute_values(":pending_sub", n(pending.sub_sequence_number()));
            }
            None => {
                remove.push(PENDING_CHECKPOINT);
                remove.push(PENDING_CHECKPOINT_SUB_SEQUENCE);
            }
        }
        match &update.pending_checkpoint_state {
            Some(state) => {
                set.push(format!("{PENDING_CHECKPOINT_STATE} = :state"));
                request = request.expression_attribute_values(
                    ":state",
                    AttributeValue::B(Blob::new(state.clone())),
                );
            }
            None => remove.push(PENDING_CHECKPOINT_STATE),
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        request.update_expression(expression)
    }

    /// Sends a request whose only expected failure is its condition: a failed
    /// condition means the lease moved on.
    async fn send_conditional<T, E, F, Fut>(
        &self,
        operation: &'static str,
        lease_key: &str,
        call: F,
    ) -> Result<T, LeaseStoreError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E>>>,
    {
        self.send(operation, &self.lease_table, call)
            .await?
            .map_err(|ConditionFailed| LeaseStoreError::lost(lease_key))
    }

    async fn ensure_table(&self, table: &str, hash_key: &str) -> Result<(), LeaseStoreError> {
        let table_error = |reason: String| LeaseStoreError::Table {
            table: table.to_owned(),
            reason,
        };
        let describe = || self.client.describe_table().table_name(table).send();
        let status = match self.send("DescribeTable", table, describe).await {
            Ok(Ok(described)) => described.table.and_then(|t| t.table_status),
            Err(LeaseStoreError::Refused { code, .. }) if code == "ResourceNotFoundException" => {
                None
            }
            Err(error) => return Err(error),
            Ok(Err(ConditionFailed)) => return Err(unreachable_condition("DescribeTable")),
        };
        if status.is_none() {
            info!(table, "creating table (on-demand billing)");
            let create = self
                .client
                .create_table()
                .table_name(table)
                .billing_mode(BillingMode::PayPerRequest)
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(hash_key)
                        .key_type(KeyType::Hash)
                        .build()
                        .map_err(|e| table_error(e.to_string()))?,
                )
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(hash_key)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(|e| table_error(e.to_string()))?,
                );
            match self
                .send("CreateTable", table, || create.clone().send())
                .await
            {
                Ok(_) => {}
                // Another worker is creating it at the same moment.
                Err(LeaseStoreError::Refused { code, .. }) if code == "ResourceInUseException" => {}
                Err(error) => return Err(error),
            }
        } else if status == Some(TableStatus::Active) {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
        let mut poll = Duration::from_millis(100);
        loop {
            let described = self.send("DescribeTable", table, describe).await?;
            let status = described
                .ok()
                .and_then(|d| d.table)
                .and_then(|t| t.table_status);
            if status == Some(TableStatus::Active) {
                info!(table, "table is active");
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(table_error(format!(
                    "not active after {TABLE_ACTIVE_TIMEOUT:?} (status {status:?})"
                )));
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_secs(2));
        }
    }

    /// Every item of `table`, page by page, with strongly consistent reads.
    async fn scan_all(&self, table: &str) -> Result<Vec<Item>, LeaseStoreError> {
        let mut items = Vec::new();
        let mut start_key = None;
        loop {
            let scan = self
                .client
                .scan()
                .table_name(table)
                .consistent_read(true)
                .set_exclusive_start_key(start_key);
            let page = self
                .send("Scan", table, || scan.clone().send())
                .await?
                .map_err(|ConditionFailed| unreachable_condition("Scan"))?;
            items.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start_key = Some(key),
                _ => return Ok(items),
            }
        }
    }

    async fn update_lease(
        &self,
        lease_key: &str,
        update: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    ) -> Result<Lease, LeaseStoreError> {
        let update = update
            .table_name(&self.lease_table)
            .key(LEASE_KEY, s(lease_key))
            .return_values(ReturnValue::AllNew);
        let output = self
            .send_conditional("UpdateItem", lease_key, || update.clone().send())
            .await?;
        lease_from_item(&output.attributes.unwrap_or_default())
    }
}

/// DynamoDB refused a write because its condition did not hold.
struct ConditionFailed;

impl DynamoDbLeaseStore {
    /// An `UpdateItem` request conditional on `condition`, with its values
    /// bound. Bind the update's own values after this.
    fn conditional_update(
        &self,
        condition: Condition,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let (expression, values) = condition.into_parts();
        self.client
            .update_item()
            .condition_expression(expression)
            .set_expression_attribute_values(Some(values))
    }

    /// Adds `keys` to a worker's offers (`action` `ADD`) or removes them
    /// (`DELETE`), if it has a heartbeat item. Returns whether it had.
    async fn change_offers(
        &self,
        worker: &str,
        keys: &BTreeSet<String>,
        action: &str,
    ) -> Result<bool, LeaseStoreError> {
        // DynamoDB refuses an empty set.
        if keys.is_empty() {
            return Ok(true);
        }
        let update = self
            .conditional_update(condition::heartbeat_exists())
            .table_name(&self.workers_table)
            .key(WORKER_ID, s(worker))
            .update_expression(format!("{action} {OFFERS} :keys"))
            .expression_attribute_values(
                ":keys",
                AttributeValue::Ss(keys.iter().cloned().collect()),
            );
        Ok(self
            .send("UpdateItem", &self.workers_table, || update.clone().send())
            .await?
            .is_ok())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorClass {
    ConditionFailed,
    /// Throttling, a server error, a timeout or a dropped connection: worth
    /// retrying.
    Transient,
    /// Anything else (permissions, validation, a missing table).
    Permanent,
}

fn classify<E: ProvideErrorMetadata>(error: &SdkError<E>) -> ErrorClass {
    match error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            match service.err().code() {
                Some("ConditionalCheckFailedException") => ErrorClass::ConditionFailed,
                Some(
                    "ThrottlingException"
                    | "ProvisionedThroughputExceededException"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
                    | "ServiceUnavailable"
                    | "TransactionConflictException",
                ) => ErrorClass::Transient,
                _ if status >= 500 || status == 429 => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Permanent,
    }
}

/// How many times a checkpoint write reads the lease and tries again after
/// finding a stored checkpoint other than the one it expected. Each retry
/// follows a write of the token's own holder; more than a couple in a row do
/// not happen.
const CHECKPOINT_RACES: u32 = 5;

#[async_trait]
impl LeaseStore for DynamoDbLeaseStore {
    async fn ensure_tables(&self) -> Result<(), LeaseStoreError> {
        self.ensure_table(&self.lease_table, LEASE_KEY).await?;
        self.ensure_table(&self.workers_table, WORKER_ID).await
    }

    async fn list_table(&self) -> Result<LeaseTableListing, LeaseStoreError> {
        let items = self.scan_all(&self.lease_table).await?;
        let mut listing = LeaseTableListing::default();
        for item in &items {
            match classify_item(item) {
                Ok(lease) => listing.leases.push(lease),
                Err(skipped) => listing.skipped.push(skipped),
            }
        }
        self.skipped.report(&self.lease_table, &listing.skipped);
        Ok(listing)
    }

    async fn get_lease(&self, key: &str) -> Result<Option<Lease>, LeaseStoreError> {
        let get = self
            .client
            .get_item()
            .table_name(&self.lease_table)
            .key(LEASE_KEY, s(key))
            .consistent_read(true);
        let output = self
            .send("GetItem", &self.lease_table, || get.clone().send())
            .await?
            .map_err(|ConditionFailed| unreachable_condition("GetItem"))?;
        output
            .item
            .as_ref()
            .map(|item| {
                classify_item(item).map_err(|skipped| LeaseStoreError::InvalidItem {
                    lease_key: key.to_owned(),
                    reason: skipped.kind.to_string(),
                })
            })
            .transpose()
    }

    async fn create_lease_if_absent(&self, lease: &Lease) -> Result<bool, LeaseStoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.lease_table)
            .set_item(Some(lease_to_item(lease)))
            .condition_expression(condition::no_item().into_parts().0);
        Ok(self
            .send("PutItem", &self.lease_table, || put.clone().send())
            .await?
            .is_ok())
    }

    async fn take_lease(&self, seen: &Lease, worker: &str) -> Result<Lease, LeaseStoreError> {
        let switches = seen.processing_owner().is_some_and(|p| p != worker);
        let mut update =
            format!("SET {LEASE_OWNER} = :worker, {LEASE_COUNTER} = {LEASE_COUNTER} + :one");
        if switches {
            update.push_str(&format!(
                ", {OWNER_SWITCHES} = if_not_exists({OWNER_SWITCHES}, :zero) + :one"
            ));
        }
        update.push_str(&format!(" REMOVE {CHECKPOINT_OWNER}"));
        let mut request = self
            .conditional_update(condition::unchanged_since(seen))
            .update_expression(update)
            .expression_attribute_values(":worker", s(worker))
            .expression_attribute_values(":one", n(1));
        if switches {
            request = request.expression_attribute_values(":zero", n(0));
        }
        self.update_lease(&seen.key, request).await
    }

    async fn request_handoff(&self, seen: &Lease, to: &str) -> Result<Lease, LeaseStoreError> {
        let Some(from) = &seen.owner else {
            return Err(LeaseStoreError::lost(&seen.key));
        };
        if seen.handoff_in_progress() {
            return Err(LeaseStoreError::lost(&seen.key));
        }
        let condition = condition::counter_is(seen.counter)
            .and(condition::owner_is(":from", from))
            .and(condition::absent(CHECKPOINT_OWNER))
            .and(condition::is_lease());
        let request = self
            .conditional_update(condition)
            .update_expression(format!(
                "SET {LEASE_OWNER} = :to, {CHECKPOINT_OWNER} = :from"
            ))
            .expression_attribute_values(":to", s(to));
        self.update_lease(&seen.key, request).await
    }

    async fn checkpoint(
        &self,
        token: &LeaseToken,
        previous: &CheckpointUpdate,
        update: &CheckpointUpdate,
    ) -> Result<CheckpointUpdate, LeaseStoreError> {
        let mut previous = previous.clone();
        for _ in 0..CHECKPOINT_RACES {
            // Never back: behind the stored checkpoint, only the pending
            // fields are written, on top of it.
            let update = update.on_top_of(&previous.checkpoint);
            let request = self.checkpoint_request(token, &previous, &update);
            match self
                .send("UpdateItem", &token.key, || request.clone().send())
                .await?
            {
                Ok(_) => return Ok(update),
                // The lease moved on, or the stored checkpoint is not the
                // one expected: a write of ours whose answer was lost took
                // effect, or an old one landed late. Only this token's
                // holder writes checkpoints, so try again from what is there.
                Err(ConditionFailed) => {
                    let lease = match self.get_lease(&token.key).await {
                        // It is no longer a lease of ours at all.
                        Err(LeaseStoreError::InvalidItem { .. }) => None,
                        read => read?,
                    }
                    .filter(|lease| lease.is_held_by(token))
                    .ok_or_else(|| LeaseStoreError::lost(&token.key))?;
                    previous = CheckpointUpdate {
                        checkpoint: lease.checkpoint,
                        pending_checkpoint: lease.pending_checkpoint,
                        pending_checkpoint_state: None,
                    };
                }
            }
        }
        Err(LeaseStoreError::Unavailable {
            operation: "UpdateItem",
            table: self.lease_table.clone(),
            attempts: CHECKPOINT_RACES,
            message: format!(
                "the checkpoint of lease {} changed under every attempt to write it",
                token.key
            ),
        })
    }

    async fn record_start_timestamp(
        &self,
        token: &LeaseToken,
        at: SystemTime,
    ) -> Result<SystemTime, LeaseStoreError> {
        let request = self
            .conditional_update(condition::held_by(token))
            .expression_attribute_values(":at", n(epoch_millis(at)))
            .update_expression(format!(
                "SET {STARTING_TIMESTAMP_MILLIS} = if_not_exists({STARTING_TIMESTAMP_MILLIS}, :at)"
            ));
        let lease = self.update_lease(&token.key, request).await?;
        lease
            .start_timestamp
            .ok_or_else(|| LeaseStoreError::InvalidItem {
                lease_key: token.key.clone(),
                reason: format!("{STARTING_TIMESTAMP_MILLIS} missing after it was set"),
            })
    }

    async fn record_child_shards(
        &self,
        token: &LeaseToken,
        children: &BTreeSet<String>,
    ) -> Result<(), LeaseStoreError> {
        if children.is_empty() {
            // DynamoDB sets cannot be empty; there is nothing to add.
            return Ok(());
        }
        let request = self
            .conditional_update(condition::held_by(token))
            .table_name(&self.lease_table)
            .key(LEASE_KEY, s(&token.key))
            .expression_attribute_values(
                ":children",
                AttributeValue::Ss(children.iter().cloned().collect()),
            )
            .update_expression(format!("ADD {CHILD_SHARD_IDS} :children"));
        self.send_conditional("UpdateItem", &token.key, || request.clone().send())
            .await
            .map(drop)
    }

    async fn release_lease(&self, token: &LeaseToken) -> Result<(), LeaseStoreError> {
        // A plain release: the lease becomes unowned.
        let not_handed_over = condition::counter_is(token.counter)
            .and(condition::absent(CHECKPOINT_OWNER))
            .and(condition::owner_is(":worker", &token.worker))
            .and(condition::is_lease());
        let plain = self
            .conditional_update(not_handed_over)
            .table_name(&self.lease_table)
            .key(LEASE_KEY, s(&token.key))
            .update_expression(format!(
                "REMOVE {LEASE_OWNER} SET {LEASE_COUNTER} = {LEASE_COUNTER} + :one"
            ))
            .expression_attribute_values(":one", n(1));
        match self
            .send_conditional("UpdateItem", &token.key, || plain.clone().send())
            .await
        {
            Err(LeaseStoreError::LeaseLost { .. }) => {}
            other => return other.map(drop),
        }
        // A handoff was asked for: completing it leaves the receiver as owner.
        let handing_over = condition::counter_is(token.counter)
            .and(condition::handed_over_by(":worker", &token.worker))
            .and(condition::is_lease());
        let complete_handoff = self
            .conditional_update(handing_over)
            .table_name(&self.lease_table)
            .key(LEASE_KEY, s(&token.key))
            .update_expression(format!(
                "REMOVE {CHECKPOINT_OWNER} SET {LEASE_COUNTER} = {LEASE_COUNTER} + :one, \
                 {OWNER_SWITCHES} = if_not_exists({OWNER_SWITCHES}, :zero) + :one"
            ))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":zero", n(0));
        self.send_conditional("UpdateItem", &token.key, || complete_handoff.clone().send())
            .await
            .map(drop)
    }

    async fn release_lease_unowned(&self, token: &LeaseToken) -> Result<(), LeaseStoreError> {
        let release = self
            .conditional_update(condition::held_by(token))
            .table_name(&self.lease_table)
            .key(LEASE_KEY, s(&token.key))
            .update_expression(format!(
                "REMOVE {LEASE_OWNER}, {CHECKPOINT_OWNER} SET {LEASE_COUNTER} = {LEASE_COUNTER} + :one"
            ))
            .expression_attribute_values(":one", n(1));
        self.send_conditional("UpdateItem", &token.key, || release.clone().send())
            .await
            .map(drop)
    }

    async fn delete_lease(&self, seen: &Lease) -> Result<(), LeaseStoreError> {
        // Only ever a lease, as a scan sorts items: never
        // another application's item or an unreadable lease, even if a
        // caller named one. The item is read and sorted first; the delete is
        // conditional on the types that sorting relied on, so an item
        // replaced in between is not deleted either, and on the counter.
        let key = seen.key.as_str();
        let not_ours = |reason: String| LeaseStoreError::InvalidItem {
            lease_key: key.to_owned(),
            reason: format!("{reason}; left alone"),
        };
        match self.get_lease(key).await {
            Err(LeaseStoreError::InvalidItem { reason, .. }) => return Err(not_ours(reason)),
            Ok(None) => return Ok(()),
            Ok(Some(stored)) if stored.counter != seen.counter => {
                return Err(LeaseStoreError::lost(key));
            }
            _ => {}
        }
        let (condition, values) = condition::deletable(seen.counter).into_parts();
        let delete = self
            .client
            .delete_item()
            .table_name(&self.lease_table)
            .key(LEASE_KEY, s(key))
            .condition_expression(condition)
            .set_expression_attribute_values(Some(values));
        match self
            .send("DeleteItem", &self.lease_table, || delete.clone().send())
            .await?
        {
            Ok(_) => Ok(()),
            // Changed in between: into something that is not a lease, or
            // a lease taken or reset since.
            Err(ConditionFailed) => match self.get_lease(key).await {
                Err(LeaseStoreError::InvalidItem { .. }) => {
                    Err(not_ours("changed into an item that is not a lease".into()))
                }
                _ => Err(LeaseStoreError::lost(key)),
            },
        }
    }

    async fn reset_checkpoint(
        &self,
        seen: &Lease,
        checkpoint: &ExtendedSequenceNumber,
        start_timestamp: Option<SystemTime>,
        clear_owner: bool,
    ) -> Result<Lease, LeaseStoreError> {
        let condition = condition::counter_is(seen.counter).and(condition::is_lease());
        let mut set = vec![
            format!("{CHECKPOINT} = :reset_checkpoint"),
            format!("{CHECKPOINT_SUB_SEQUENCE} = :reset_sub"),
            format!("{LEASE_COUNTER} = {LEASE_COUNTER} + :one"),
        ];
        let mut remove = vec![
            PENDING_CHECKPOINT,
            PENDING_CHECKPOINT_SUB_SEQUENCE,
            PENDING_CHECKPOINT_STATE,
        ];
        let mut request = self
            .conditional_update(condition)
            .expression_attribute_values(":reset_checkpoint", s(checkpoint.checkpoint_str()))
            .expression_attribute_values(":reset_sub", n(checkpoint.sub_sequence_number()))
            .expression_attribute_values(":one", n(1));
        match start_timestamp {
            Some(at) => {
                set.push(format!("{STARTING_TIMESTAMP_MILLIS} = :reset_start"));
                request = request.expression_attribute_values(":reset_start", n(epoch_millis(at)));
            }
            None => remove.push(STARTING_TIMESTAMP_MILLIS),
        }
        if clear_owner {
            remove.extend([LEASE_OWNER, CHECKPOINT_OWNER]);
        }
        let request = request.update_expression(format!(
            "SET {} REMOVE {}",
            set.join(", "),
            remove.join(", ")
        ));
        self.update_lease(&seen.key, request).await
    }

    async fn heartbeat(&self, heartbeat: &WorkerHeartbeat) -> Result<(), LeaseStoreError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // An update, not a put: the operator's eviction mark on the item
        // stays. Every attribute of the heartbeat is set, those it lacks
        // removed.
        let item = heartbeat_to_item(heartbeat, now_ms);
        let (condition, values) = condition::heartbeat_below(heartbeat.beat).into_parts();
        let mut put = self
            .client
            .update_item()
            .table_name(&self.workers_table)
            .key(WORKER_ID, s(&heartbeat.worker))
            .condition_expression(condition)
            .set_expression_attribute_values(Some(values));
        let mut set = Vec::new();
        for (n, (name, value)) in item.into_iter().filter(|(k, _)| k != WORKER_ID).enumerate() {
            set.push(format!("#a{n} = :a{n}"));
            put = put
                .expression_attribute_names(format!("#a{n}"), name)
                .expression_attribute_values(format!(":a{n}"), value);
        }
        let mut expression = format!("SET {}", set.join(", "));
        let absent: Vec<&str> = [
            (FAILOVER_MILLIS, heartbeat.failover_time.is_none()),
            (
                STREAMS,
                heartbeat.streams.as_ref().is_none_or(|s| s.is_empty()),
            ),
            (STALLED_SHARDS, heartbeat.stalled_shards.is_empty()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        if !absent.is_empty() {
            expression.push_str(&format!(" REMOVE {}", absent.join(", ")));
        }
        let put = put.update_expression(expression);
        let written = self
            .send("UpdateItem", &self.workers_table, || put.clone().send())
            .await?;
        if written.is_ok() {
            return Ok(());
        }
        // The stored value is not lower: a later value is there, or an
        // earlier attempt of this very write took effect and its answer was
        // lost. Either way the next heartbeat goes above it; an attempt
        // whose answer was lost never counts as confirmed.
        let get = self
            .client
            .get_item()
            .table_name(&self.workers_table)
            .key(WORKER_ID, s(&heartbeat.worker))
            .consistent_read(true);
        let stored = self
            .send("GetItem", &self.workers_table, || get.clone().send())
            .await?
            .map_err(|ConditionFailed| unreachable_condition("GetItem"))?
            .item
            .and_then(|item| heartbeat_from_item(&item))
            .map(|stored| stored.beat);
        match stored {
            Some(stored) => Err(LeaseStoreError::HeartbeatSuperseded {
                worker: heartbeat.worker.clone(),
                stored,
            }),
            None => Err(LeaseStoreError::Unavailable {
                operation: "UpdateItem",
                table: self.workers_table.clone(),
                attempts: 1,
                message: "the heartbeat's condition failed, then the item was gone".into(),
            }),
        }
    }

    async fn list_heartbeats(&self) -> Result<Vec<WorkerHeartbeat>, LeaseStoreError> {
        let items = self.scan_all(&self.workers_table).await?;
        // An item that is not a heartbeat is skipped, not fatal: the workers
        // table is ours, but a stray item must not stop a fleet.
        Ok(items.iter().filter_map(heartbeat_from_item).collect())
    }

    async fn get_heartbeat(
        &self,
        worker: &str,
    ) -> Result<Option<WorkerHeartbeat>, LeaseStoreError> {
        let get = self
            .client
            .get_item()
            .table_name(&self.workers_table)
            .key(WORKER_ID, s(worker))
            .consistent_read(true);
        Ok(self
            .send("GetItem", &self.workers_table, || get.clone().send())
            .await?
            .map_err(|ConditionFailed| unreachable_condition("GetItem"))?
            .item
            .and_then(|item| heartbeat_from_item(&item)))
    }

    async fn offer_leases(
        &self,
        worker: &str,
        keys: &BTreeSet<String>,
    ) -> Result<bool, LeaseStoreError> {
        self.change_offers(worker, keys, "ADD").await
    }

    async fn clear_offers(
        &self,
        worker: &str,
        keys: &BTreeSet<String>,
    ) -> Result<(), LeaseStoreError> {
        self.change_offers(worker, keys, "DELETE").await.map(drop)
    }

    async fn request_eviction(&self, worker: &str, evict: bool) -> Result<bool, LeaseStoreError> {
        let (condition, values) = condition::heartbeat_exists().into_parts();
        let update = self
            .client
            .update_item()
            .table_name(&self.workers_table)
            .key(WORKER_ID, s(worker))
            .condition_expression(condition)
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .update_expression(format!("SET {EVICTED} = :evict"))
            .expression_attribute_values(":evict", AttributeValue::Bool(evict));
        Ok(self
            .send("UpdateItem", &self.workers_table, || update.clone().send())
            .await?
            .is_ok())
    }

    async fn remove_heartbeat(
        &self,
        worker: &str,
        beat: Option<u64>,
    ) -> Result<bool, LeaseStoreError> {
        let mut delete = self
            .client
            .delete_item()
            .table_name(&self.workers_table)
            .key(WORKER_ID, s(worker))
            .return_values(ReturnValue::AllOld);
        if let Some(beat) = beat {
            let (condition, values) = condition::heartbeat_is(beat).into_parts();
            delete = delete
                .condition_expression(condition)
                .set_expression_attribute_values(Some(values));
        }
        match self
            .send("DeleteItem", &self.workers_table, || delete.clone().send())
            .await?
        {
            Ok(output) => Ok(output.attributes.is_some_and(|old| !old.is_empty())),
            Err(ConditionFailed) => Ok(false),
        }
    }

    fn request_counts(&self) -> RequestCounts {
        self.requests.snapshot()
    }
}

/// A request without a condition expression reported a failed condition:
/// DynamoDB broke its contract. Reported, never panicked on.
fn unreachable_condition(operation: &'static str) -> LeaseStoreError {
    LeaseStoreError::Refused {
        operation,
        table: String::new(),
        code: "ConditionalCheckFailedException".into(),
        message: "ConditionalCheckFailedException for a request without a condition".into(),
    }
}
