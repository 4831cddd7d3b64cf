//! The lease-store conformance suite against DynamoDB Local (kcl-lease's
//! own tests run it against the in-memory store), plus what only DynamoDB
//! can get wrong.

use kcl_lease::{DynamoDbLeaseStore, LeaseStore, LeaseStoreError};
use kcl_tests::{LocalAws, unique_name};

/// Two clients of fresh tables in DynamoDB Local.
async fn dynamodb_tables() -> (DynamoDbLeaseStore, DynamoDbLeaseStore) {
    let client = LocalAws::connect().dynamodb();
    let table = unique_name("leases");
    let a = DynamoDbLeaseStore::new(&client, &table);
    a.ensure_tables().await.expect("create tables");
    (a, DynamoDbLeaseStore::new(&client, &table))
}

mod dynamodb {
    kcl_lease::lease_store_conformance!(super::dynamodb_tables);
}

#[tokio::test]
async fn a_missing_table_is_a_clear_error_not_a_retry_loop() {
    let client = LocalAws::connect().dynamodb();
    let store = DynamoDbLeaseStore::new(&client, unique_name("never-created"));
    match store.list_leases().await {
        Err(LeaseStoreError::Refused {
            code, operation, ..
        }) => {
            assert_eq!(code, "ResourceNotFoundException");
            assert_eq!(operation, "Scan");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        store.request_counts()["Scan"],
        1,
        "a refusal is not retried"
    );
}

#[tokio::test]
async fn tables_are_created_on_demand_billing_with_the_java_kcl_key() {
    let client = LocalAws::connect().dynamodb();
    let table = unique_name("created");
    let store = DynamoDbLeaseStore::new(&client, &table);
    store.ensure_tables().await.unwrap();
    for (name, key) in [
        (table.clone(), "leaseKey"),
        (format!("{table}-Workers"), "workerId"),
    ] {
        let described = client
            .describe_table()
            .table_name(&name)
            .send()
            .await
            .unwrap();
        let described = described.table().unwrap();
        assert_eq!(described.key_schema()[0].attribute_name(), key);
        assert_eq!(
            described
                .billing_mode_summary()
                .and_then(|b| b.billing_mode()),
            Some(&aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        );
    }
}
