//! Writes records with per-key counters to a stream, for demos and tests.
//!
//! Each record's data is a [`Payload`] (`KEY:COUNTER:SENT_MS`), written
//! through the project's producer library (`kcl-producer`) with per-key
//! ordering on: a key never has two records in flight, so a record that is
//! throttled is written again before its key's next record, and the
//! stream's per-key order is the counter order. A consumer that sees
//! counter N+1 of a key before N has broken ordering itself.
//!
//! AWS access comes from the standard chain (`aws-config`): credentials,
//! region and `AWS_ENDPOINT_URL_KINESIS` for the local stack.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_config::BehaviorVersion;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::StreamStatus;
use clap::Parser;
use kcl_examples::payload::Payload;
use kcl_producer::{AggregationConfig, Delivery, Producer, ProducerConfig, UserRecord};
use tokio::sync::mpsc;
use tracing::{error, info};

/// Command-line settings.
#[derive(Parser, Debug)]
#[command(about = "Put records with per-key counters (KEY:COUNTER:SENT_MS) to a Kinesis stream")]
struct Args {
    /// The stream to write to.
    #[arg(long, env = "KCL_STREAM_NAME")]
    stream: String,
    /// How many partition keys (k0, k1, ...) to spread records over (1..=500).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=500))]
    keys: u32,
    /// Records per second to aim for, across all keys.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// Stop after this many records (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Create the stream with this many shards if it does not exist.
    #[arg(long)]
    create_shards: Option<u32>,
    /// How long a record may wait for others to fill a PutRecords call.
    #[arg(long, default_value_t = 10)]
    linger_ms: u64,
    /// Pack records into KPL aggregates (per shard).
    #[arg(long)]
    aggregate: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let client = Client::new(&config);
    if let Some(shards) = args.create_shards {
        ensure_stream(&client, &args.stream, shards).await?;
    }
    let producer = Producer::from_client(
        &client,
        &args.stream,
        ProducerConfig {
            linger: Duration::from_millis(args.linger_ms),
            aggregation: args.aggregate.then(AggregationConfig::default),
            // A demo producer never gives up on a record: a counter gap
            // would read as a lost record downstream.
            record_ttl: None,
            ..Default::default()
        },
    )?;

    // Deliveries are awaited in order by a task of their own, so the rounds
    // keep their pace; the first record that fails for good stops the run.
    let (deliveries, mut pending) = mpsc::unbounded_channel::<Delivery>();
    let (failed_tx, mut failed) = tokio::sync::watch::channel(false);
    let confirm = tokio::spawn(async move {
        let mut written = 0u64;
        while let Some(delivery) = pending.recv().await {
            match delivery.await {
                Ok(_) => written += 1,
                Err(e) => {
                    error!(error = %e, "a record could not be written; stopping");
                    let _ = failed_tx.send(true);
                    return Err(e);
                }
            }
        }
        Ok(written)
    });

    let mut next_counter = vec![0u64; args.keys as usize];
    let mut sent = 0u64;
    let limit = args.count.unwrap_or(u64::MAX);
    // One round sends one record per key (fewer near the end), so a round
    // of `keys` records every `keys / rate` seconds gives the asked rate.
    let round = Duration::from_secs_f64(f64::from(args.keys) / f64::from(args.rate));
    let mut ticker = tokio::time::interval(round);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(stream = %args.stream, keys = args.keys, rate = args.rate, "producing");
    while sent < limit {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = failed.changed() => break,
        }
        let take = (limit - sent).min(u64::from(args.keys)) as usize;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        for (k, counter) in next_counter.iter_mut().enumerate().take(take) {
            let payload = Payload {
                key: format!("k{k}"),
                counter: *counter,
                sent_ms: now_ms,
            };
            let record = UserRecord::new(payload.key.clone(), payload.to_string());
            deliveries.send(producer.enqueue(record).await?)?;
            *counter += 1;
            sent += 1;
        }
    }
    producer.close().await;
    drop(deliveries);
    let written = confirm.await??;
    info!(sent = written, "done");
    Ok(())
}

/// Creates the stream with `shards` shards unless it exists, then waits
/// until it is active.
async fn ensure_stream(
    client: &Client,
    stream: &str,
    shards: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let created = client
        .create_stream()
        .stream_name(stream)
        .shard_count(i32::try_from(shards)?)
        .send()
        .await;
    match created {
        Ok(_) => info!(stream, shards, "created stream"),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) => {}
        Err(error) => return Err(error.into()),
    }
    for _ in 0..600 {
        let summary = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await?;
        if summary
            .stream_description_summary()
            .map(|s| s.stream_status())
            == Some(&StreamStatus::Active)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("stream {stream} did not become active within 60 s").into())
}
