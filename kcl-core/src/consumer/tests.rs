//! The shard consumer against the in-memory Kinesis and lease store, on
//! tokio's paused clock (backoffs and pacing advance virtual time only).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backoff::BackoffConfig;
use kcl_checkpoint::ExtendedSequenceNumber;
use kcl_lease::{InMemoryLeaseStore, Lease, LeaseStore};
use tokio::sync::watch;

use super::*;
use crate::InitialPosition;
use crate::kinesis::{InMemoryKinesis, KinesisError};
use crate::test_support::{Journal, Scripted};

const STREAM: &str = "orders";

/// A consumer, the sender that steers it, and its context.
type Started = (
    ShardConsumer,
    watch::Sender<ConsumerSignal>,
    Arc<ConsumerContext>,
);

struct Fixture {
    kinesis: InMemoryKinesis,
    store: Arc<InMemoryLeaseStore>,
    journal: Arc<Mutex<Journal>>,
    shard: String,
    retrieval: RetrievalConfig,
    policy: ProcessorRetryPolicy,
    /// Read through enhanced fan-out instead of polling.
    fanout: bool,
    /// The worker's processing deadline (unlimited unless a test sets it).
    deadline: kcl_lease::ProcessingDeadline,
    /// The lease store consumers use, when not `store` itself (a faulty
    /// client of it).
    consumer_store: Option<Arc<dyn LeaseStore>>,
    /// The consumers' processor timeout.
    processor_timeout: Option<Duration>,
}

impl Fixture {
    /// One shard holding records "r0".."r{n-1}", a lease on it held by
    /// "worker-a", and a processor that checkpoints after every batch.
    async fn new(records: usize) -> Self {
        let kinesis = InMemoryKinesis::new();
        let shard = kinesis.create_stream(STREAM, 1).remove(0);
        for n in 0..records {
            kinesis.put_record_to_shard(STREAM, &shard, "key", format!("r{n}").as_bytes());
        }
        let store = Arc::new(InMemoryLeaseStore::new());
        let lease = Lease::new(shard.clone(), ExtendedSequenceNumber::TrimHorizon);
        store.create_lease_if_absent(&lease).await.unwrap();
        store.take_lease(&lease, "worker-a").await.unwrap();
        let journal = Arc::new(Mutex::new(Journal {
            checkpoint_batches: true,
            ..Journal::default()
        }));
        Self {
            kinesis,
            store,
            journal,
            shard,
            retrieval: RetrievalConfig {
                max_records_per_call: 3,
                ..RetrievalConfig::default()
            },
            policy: ProcessorRetryPolicy::default(),
            fanout: false,
            deadline: kcl_lease::ProcessingDeadline::unlimited(),
            consumer_store: None,
            processor_timeout: None,
        }
    }

    /// Splits the fixture's shard and merges the halves back, with one
    /// record ("after-merge") in the merged shard: the halves and the
    /// merged shard.
    fn split_and_merge(&self) -> (Vec<String>, String) {
        let halves = self.kinesis.split_shard(STREAM, &self.shard, u128::MAX / 2);
        let merged = self.kinesis.merge_shards(STREAM, &halves[0], &halves[1]);
        self.kinesis
            .put_record_to_shard(STREAM, &merged, "key", b"after-merge");
        (halves.to_vec(), merged)
    }

    /// A lease on `shard` at TRIM_HORIZON with `parents`, taken by `worker`.
    async fn held(&self, shard: &str, parents: &[String], worker: &str) -> Lease {
        let mut lease = Lease::new(shard, ExtendedSequenceNumber::TrimHorizon);
        lease.parent_shard_ids = parents.iter().cloned().collect();
        self.store.create_lease_if_absent(&lease).await.unwrap();
        self.store.take_lease(&lease, worker).await.unwrap()
    }

    /// Checkpoints `lease` at SHARD_END.
    async fn finish(&self, lease: &Lease) {
        let end = kcl_checkpoint::CheckpointUpdate::at(ExtendedSequenceNumber::ShardEnd);
        self.store
            .checkpoint(
                &lease.token().unwrap(),
                &kcl_checkpoint::CheckpointUpdate::at(lease.checkpoint.clone()),
                &end,
            )
            .await
            .unwrap();
    }

    async fn lease(&self) -> Lease {
        self.store.get_lease(&self.shard).await.unwrap().unwrap()
    }

    async fn consumer(&self) -> Started {
        let lease = self.lease().await;
        self.consumer_for(&lease)
    }

    /// A consumer of `lease` as this fixture's worker holds it.
    fn consumer_for(&self, lease: &Lease) -> Started {
        let journal = Arc::clone(&self.journal);
        let context = Arc::new(ConsumerContext {
            worker_id: "worker-a".into(),
            kinesis: Arc::new(self.kinesis.clone()),
            store: match &self.consumer_store {
                Some(store) => Arc::clone(store),
                None => self.store.clone(),
            },
            factory: Arc::new(move |_: &str| Scripted(Arc::clone(&journal))),
            retrieval: self.retrieval.clone(),
            retry_policy: self.policy.clone(),
            kinesis_backoff: BackoffConfig::default().without_limit(),
            parent_poll_interval: Duration::from_secs(1),
            processor_timeout: self.processor_timeout,
            stats: Arc::default(),
            shard_ends: tokio::sync::watch::channel(0).0,
        });
        let stream = ConsumedStream::single(STREAM, InitialPosition::TrimHorizon);
        if self.fanout {
            let _ = stream
                .fanout_consumer
                .set(format!("{STREAM}|consumer|test"));
        }
        let start = ShardStart {
            stream: Arc::new(stream),
            shard_id: lease.key.clone(),
            token: lease.token().unwrap(),
            checkpoint: lease.checkpoint.clone(),
            pending_checkpoint: lease.pending_checkpoint.clone(),
            pending_checkpoint_state: lease.pending_checkpoint_state.clone(),
            parent_shard_ids: lease.parent_shard_ids.clone(),
            hash_key_range: lease.hash_key_range,
            deadline: self.deadline.clone(),
            start_timestamp: lease.start_timestamp,
        };
        let (signal, signals) = watch::channel(ConsumerSignal::Run);
        (
            ShardConsumer::new(Arc::clone(&context), start, signals),
            signal,
            context,
        )
    }

    fn processed(&self) -> Vec<String> {
        self.journal
            .lock()
            .unwrap()
            .processed
            .iter()
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect()
    }

    fn calls(&self) -> Vec<String> {
        self.journal.lock().unwrap().calls.clone()
    }

    /// Runs a consumer until every record `r0..r{n-1}` was processed, then
    /// asks it to shut down.
    async fn run_until_processed(&self, n: usize) -> (ConsumerOutcome, Arc<ConsumerContext>) {
        let (consumer, signal, context) = self.consumer().await;
        let task = tokio::spawn(consumer.run());
        while self.processed().len() < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal.send_replace(ConsumerSignal::ShutdownRequested);
        (task.await.unwrap(), context)
    }
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i}")).collect()
}

#[tokio::test(start_paused = true)]
async fn a_closed_shard_is_processed_in_order_and_checkpointed_at_shard_end() {
    let fixture = Fixture::new(10).await;
    fixture.kinesis.close_shard(STREAM, &fixture.shard);
    let (consumer, _signal, context) = fixture.consumer().await;

    let outcome = consumer.run().await;

    assert_eq!(outcome.reason, ShutdownReason::ShardEnd);
    assert_eq!(outcome.checkpoint, ExtendedSequenceNumber::ShardEnd);
    assert_eq!(fixture.processed(), names(10));
    assert_eq!(
        fixture.lease().await.checkpoint,
        ExtendedSequenceNumber::ShardEnd
    );
    assert_eq!(fixture.calls().first().unwrap(), "init TRIM_HORIZON");
    assert_eq!(fixture.calls().last().unwrap(), "shard_ended");
    assert_eq!(context.stats.snapshot().records_processed, 10);
    assert_eq!(*context.shard_ends.borrow(), 1, "waiting children are told");
}

#[tokio::test(start_paused = true)]
async fn processing_resumes_after_the_checkpoint() {
    let fixture = Fixture::new(6).await;
    let (outcome, _) = fixture.run_until_processed(6).await;
    assert_eq!(outcome.reason, ShutdownReason::Requested);
    let checkpoint = fixture.lease().await.checkpoint;
    assert_eq!(checkpoint, outcome.checkpoint);

    for n in 6..9 {
        fixture.kinesis.put_record_to_shard(
            STREAM,
            &fixture.shard,
            "key",
            format!("r{n}").as_bytes(),
        );
    }
    fixture.run_until_processed(9).await;
    assert_eq!(
        fixture.processed(),
        names(9),
        "nothing replayed, nothing lost"
    );
    assert!(fixture.calls().contains(&format!("init {checkpoint}")));
}

#[tokio::test(start_paused = true)]
async fn a_failing_batch_is_delivered_again_until_it_succeeds() {
    let fixture = Fixture::new(9).await;
    fixture.journal.lock().unwrap().fail.insert("r4".into(), 3);
    let (_, context) = fixture.run_until_processed(9).await;

    assert_eq!(fixture.processed(), names(9));
    let batches = fixture
        .calls()
        .iter()
        .filter(|c| c.starts_with("batch"))
        .count();
    assert_eq!(
        batches,
        3 + 3,
        "three batches, one of them tried three more times"
    );
    let stats = context.stats.snapshot();
    assert_eq!(stats.processor_retries, 3);
    assert_eq!(stats.batches_skipped, 0);
}

/// A call stuck past the processor timeout is cancelled and the batch is
/// delivered again, like a failure: nothing is lost, the shard goes on.
#[tokio::test(start_paused = true)]
async fn a_call_past_the_processor_timeout_is_cancelled_and_retried() {
    let mut fixture = Fixture::new(9).await;
    fixture.processor_timeout = Some(Duration::from_secs(30));
    fixture.journal.lock().unwrap().hang.insert("r4".into(), 1);
    let (_, context) = fixture.run_until_processed(9).await;

    assert_eq!(fixture.processed(), names(9));
    let stats = context.stats.snapshot();
    assert_eq!(stats.processor_timeouts, 1);
    assert_eq!(stats.processor_retries, 1);
    assert_eq!(stats.batches_skipped, 0);
}

#[tokio::test(start_paused = true)]
async fn a_panic_restarts_the_processor_from_the_last_checkpoint() {
    let fixture = Fixture::new(9).await;
    fixture.journal.lock().unwrap().panic.insert("r7".into(), 2);
    let (_, context) = fixture.run_until_processed(9).await;

    assert_eq!(fixture.processed(), names(9));
    let inits = fixture
        .calls()
        .iter()
        .filter(|c| c.starts_with("init"))
        .count();
    assert_eq!(inits, 3, "the first processor and one per panic");
    assert_eq!(context.stats.snapshot().processor_panics, 2);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_processor_is_given_the_pending_checkpoint_with_its_own_state() {
    let fixture = Fixture::new(9).await;
    {
        let mut journal = fixture.journal.lock().unwrap();
        journal.prepare_batches = true;
        journal.panic.insert("r4".into(), 1);
    }
    fixture.run_until_processed(9).await;

    let journal = fixture.journal.lock().unwrap();
    let restarted = &journal.initializations[1];
    assert_eq!(
        restarted.pending_checkpoint,
        Some(journal.processed[2].position())
    );
    assert_eq!(
        restarted.pending_checkpoint_state.as_deref(),
        Some(&b"r2"[..]),
        "the state prepared with the pending checkpoint"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_processor_is_given_what_a_write_whose_answer_was_lost_stored() {
    let mut fixture = Fixture::new(9).await;
    // The lease holds a pending checkpoint from an earlier owner.
    let lease = fixture.lease().await;
    let old = kcl_checkpoint::CheckpointUpdate {
        checkpoint: lease.checkpoint.clone(),
        pending_checkpoint: Some(ExtendedSequenceNumber::record("1", 0).unwrap()),
        pending_checkpoint_state: Some(b"old".to_vec()),
    };
    fixture
        .store
        .checkpoint(
            &lease.token().unwrap(),
            &kcl_checkpoint::CheckpointUpdate::at(lease.checkpoint.clone()),
            &old,
        )
        .await
        .unwrap();
    // The first prepared checkpoint is stored, but answered with an error,
    // and the processor panics on it.
    let (faulty, faults) = kcl_lease::faults::FaultyStore::new(fixture.store.clone());
    faults.only(&[kcl_lease::faults::Call::Checkpoint]);
    faults.apply_then_fail(1);
    fixture.consumer_store = Some(Arc::new(faulty));
    {
        let mut journal = fixture.journal.lock().unwrap();
        journal.prepare_batches = true;
        journal.panic_on_checkpoint_error = true;
    }
    fixture.run_until_processed(9).await;

    let journal = fixture.journal.lock().unwrap();
    assert_eq!(
        journal.initializations[0]
            .pending_checkpoint_state
            .as_deref(),
        Some(&b"old"[..])
    );
    let restarted = &journal.initializations[1];
    assert_eq!(
        restarted.pending_checkpoint,
        Some(journal.processed[2].position()),
        "the pending checkpoint stored, not the one known before"
    );
    assert_eq!(
        restarted.pending_checkpoint_state.as_deref(),
        Some(&b"r2"[..])
    );
}

#[tokio::test(start_paused = true)]
async fn a_policy_that_gives_up_skips_the_batch_visibly() {
    let mut fixture = Fixture::new(9).await;
    fixture.policy = ProcessorRetryPolicy::SkipBatchAfter {
        attempts: 2,
        backoff: BackoffConfig::default(),
    };
    fixture
        .journal
        .lock()
        .unwrap()
        .fail
        .insert("r4".into(), u32::MAX);
    let (consumer, signal, context) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    while fixture.processed().len() < 6 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    task.await.unwrap();

    assert_eq!(fixture.processed(), ["r0", "r1", "r2", "r6", "r7", "r8"]);
    let stats = context.stats.snapshot();
    assert_eq!(stats.batches_skipped, 1);
    assert_eq!(stats.processor_retries, 1);
}

/// Nine records whose processor always fails on `r4` (the batch r3..r5),
/// under a policy that dead-letters a batch after two attempts to the
/// stream `dead-letters` of `sink`.
async fn failing_r4_with_dead_letters(sink: &kcl_producer::memory::InMemorySink) -> Fixture {
    use kcl_producer::{Producer, ProducerConfig};

    let mut fixture = Fixture::new(9).await;
    let producer = Producer::new(sink.clone(), "dead-letters", ProducerConfig::default()).unwrap();
    fixture.policy = ProcessorRetryPolicy::DeadLetterAfter {
        attempts: 2,
        backoff: BackoffConfig::default(),
        destination: DeadLetter::new(producer),
    };
    fixture
        .journal
        .lock()
        .unwrap()
        .fail
        .insert("r4".into(), u32::MAX);
    fixture
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_policy_moves_past_a_batch_only_once_its_records_are_written_there() {
    // The dead-letter stream does not exist yet: its writes fail.
    let sink = kcl_producer::memory::InMemorySink::new();
    let fixture = failing_r4_with_dead_letters(&sink).await;
    let (consumer, signal, context) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    while sink.put_calls() < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Held at the batch while its dead letters cannot be written.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(fixture.processed(), ["r0", "r1", "r2"]);
    assert_eq!(context.stats.snapshot().batches_dead_lettered, 0);

    sink.create_stream("dead-letters", 1);
    while fixture.processed().len() < 6 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    task.await.unwrap();

    assert_eq!(fixture.processed(), ["r0", "r1", "r2", "r6", "r7", "r8"]);
    let dead: Vec<String> = sink
        .records("dead-letters")
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    assert_eq!(dead, ["r3", "r4", "r5"], "the failed batch, once, in order");
    let stats = context.stats.snapshot();
    assert_eq!(stats.batches_dead_lettered, 1);
    assert_eq!(stats.records_dead_lettered, 3);
    assert_eq!(stats.batches_skipped, 0);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_while_dead_letters_are_written_leaves_the_batch_unprocessed() {
    let sink = kcl_producer::memory::InMemorySink::new();
    sink.create_stream("dead-letters", 1);
    sink.hold();
    let fixture = failing_r4_with_dead_letters(&sink).await;
    let (consumer, signal, context) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    // Long after the second failure: the dead letters are being written
    // (the stream holds every call).
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(fixture.processed(), ["r0", "r1", "r2"]);
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the shutdown does not wait for the dead-letter stream")
        .unwrap();
    let processed = fixture.journal.lock().unwrap().processed.clone();
    assert_eq!(
        fixture.lease().await.checkpoint,
        processed[2].position(),
        "checkpointed before the batch, which its next owner gets again"
    );
    assert_eq!(context.stats.snapshot().batches_dead_lettered, 0);
}

#[tokio::test(start_paused = true)]
async fn an_expired_iterator_is_replaced_without_gap_or_duplicate() {
    let fixture = Fixture::new(12).await;
    let (consumer, signal, _) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    while fixture.processed().len() < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fixture.kinesis.expire_iterators();
    while fixture.processed().len() < 12 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    task.await.unwrap();
    assert_eq!(fixture.processed(), names(12));
    assert!(fixture.kinesis.calls("GetShardIterator") >= 2);
}

#[tokio::test(start_paused = true)]
async fn throttling_is_retried_with_backoff() {
    let fixture = Fixture::new(6).await;
    let throttled = KinesisError::Throttled {
        operation: "GetRecords",
        message: "Rate exceeded".into(),
    };
    fixture.kinesis.fail_next("GetRecords", throttled, 4);
    let (_, context) = fixture.run_until_processed(6).await;
    assert_eq!(fixture.processed(), names(6));
    assert_eq!(context.stats.snapshot().kinesis_retries, 4);
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_the_consumer_without_checkpointing() {
    let fixture = Fixture::new(3).await;
    let (consumer, signal, _) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    while fixture.processed().len() < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lease = fixture.lease().await;
    fixture.store.take_lease(&lease, "worker-b").await.unwrap();
    signal.send_replace(ConsumerSignal::LeaseLost);

    let outcome = task.await.unwrap();
    assert_eq!(outcome.reason, ShutdownReason::LeaseLost);
    assert_eq!(fixture.calls().last().unwrap(), "lease_lost");
    assert_eq!(fixture.lease().await.owner.as_deref(), Some("worker-b"));
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_that_finds_the_lease_taken_stops_the_consumer() {
    let fixture = Fixture::new(3).await;
    let lease = fixture.lease().await;
    let (consumer, _signal, _) = fixture.consumer().await;
    // Another worker takes the lease before the first checkpoint.
    fixture.store.take_lease(&lease, "worker-b").await.unwrap();

    let outcome = consumer.run().await;
    assert_eq!(outcome.reason, ShutdownReason::LeaseLost);
    assert_eq!(
        fixture.lease().await.checkpoint,
        ExtendedSequenceNumber::TrimHorizon
    );
}

#[tokio::test(start_paused = true)]
async fn a_shard_end_without_checkpoint_is_reported_and_delivered_again() {
    let fixture = Fixture::new(2).await;
    fixture.kinesis.close_shard(STREAM, &fixture.shard);
    fixture.journal.lock().unwrap().skip_shard_end_checkpoints = 2;
    let (consumer, _signal, context) = fixture.consumer().await;

    let outcome = consumer.run().await;
    assert_eq!(outcome.checkpoint, ExtendedSequenceNumber::ShardEnd);
    let shard_ends = fixture
        .calls()
        .iter()
        .filter(|c| *c == "shard_ended")
        .count();
    assert_eq!(shard_ends, 3);
    assert_eq!(context.stats.snapshot().shard_end_retries, 2);
}

#[tokio::test(start_paused = true)]
async fn prefetch_holds_no_more_than_its_budget_and_one_answer() {
    let mut fixture = Fixture::new(1_000).await;
    fixture.retrieval = RetrievalConfig {
        max_records_per_call: 10,
        max_prefetch_records: 30,
        ..RetrievalConfig::default()
    };
    // The processor never finishes its first batch.
    fixture
        .journal
        .lock()
        .unwrap()
        .fail
        .insert("r0".into(), u32::MAX);
    let (consumer, _signal, _) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = fixture.kinesis.calls("GetRecords");
    assert!(
        (3..=4).contains(&calls),
        "{calls} calls of 10 records with a budget of 30"
    );
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn get_records_is_called_at_most_five_times_a_second() {
    let mut fixture = Fixture::new(1_000).await;
    fixture.retrieval.max_records_per_call = 1;
    let (consumer, _signal, _) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = fixture.kinesis.calls("GetRecords");
    assert!((45..=51).contains(&calls), "{calls} calls in 10 s");
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn a_split_parent_creates_both_child_leases_and_records_them() {
    let fixture = Fixture::new(4).await;
    let children = fixture
        .kinesis
        .split_shard(STREAM, &fixture.shard, u128::MAX / 2);
    let (consumer, _signal, _) = fixture.consumer().await;

    let outcome = consumer.run().await;

    assert_eq!(outcome.checkpoint, ExtendedSequenceNumber::ShardEnd);
    let parent = fixture.lease().await;
    assert_eq!(parent.child_shard_ids, children.iter().cloned().collect());
    for child in &children {
        let lease = fixture.store.get_lease(child).await.unwrap().unwrap();
        assert_eq!(lease.checkpoint, ExtendedSequenceNumber::TrimHorizon);
        assert_eq!(lease.parent_shard_ids, [fixture.shard.clone()].into());
        assert!(lease.hash_key_range.is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn a_merged_child_waits_for_both_parents() {
    let fixture = Fixture::new(0).await;
    // Two parents: split the fixture's shard, then merge the halves back.
    let (halves, merged) = fixture.split_and_merge();
    let child = fixture.held(&merged, &halves, "worker-a").await;
    let mut parents = Vec::new();
    for half in &halves {
        parents.push(fixture.held(half, &[], "worker-b").await);
    }

    let (consumer, signal, _) = fixture.consumer_for(&child);
    let task = tokio::spawn(consumer.run());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(fixture.calls().is_empty(), "started before its parents");
    fixture.finish(&parents[0]).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        fixture.calls().is_empty(),
        "started with one parent unfinished"
    );
    fixture.finish(&parents[1]).await;
    while fixture.processed().is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fixture.processed(), ["after-merge"]);
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_child_whose_parent_lease_is_gone_does_not_wait() {
    let fixture = Fixture::new(0).await;
    let mut lease = fixture.lease().await;
    lease.parent_shard_ids = ["shardId-past-retention".to_owned()].into();
    let (consumer, signal, _) = fixture.consumer_for(&lease);
    let task = tokio::spawn(consumer.run());
    while fixture.calls().is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fixture.calls()[0], "init TRIM_HORIZON");
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_merged_child_waits_for_a_parent_that_has_no_lease_yet() {
    let fixture = Fixture::new(0).await;
    let (halves, merged) = fixture.split_and_merge();
    // halves[0] ended and created the child's lease; halves[1] has no
    // lease yet (discovery has not run), though it is in the stream.
    let first = fixture.held(&halves[0], &[], "worker-b").await;
    fixture.finish(&first).await;
    let child = fixture.held(&merged, &halves, "worker-a").await;

    let (consumer, signal, _) = fixture.consumer_for(&child);
    // A listing that comes back empty does not make the parent look gone.
    fixture.kinesis.answer_empty_listings(3);
    let task = tokio::spawn(consumer.run());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        fixture.calls().is_empty(),
        "started before an unleased parent was read"
    );
    let second = fixture.held(&halves[1], &[], "worker-b").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        fixture.calls().is_empty(),
        "started before the parent ended"
    );
    fixture.finish(&second).await;
    while fixture.processed().is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fixture.processed(), ["after-merge"]);
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_child_at_latest_does_not_wait_for_parents_that_were_never_leased() {
    let fixture = Fixture::new(0).await;
    let halves = fixture
        .kinesis
        .split_shard(STREAM, &fixture.shard, u128::MAX / 2);
    // A new application at LATEST leased only the open halves.
    let mut child = Lease::new(halves[0].clone(), ExtendedSequenceNumber::Latest);
    child.parent_shard_ids = [fixture.shard.clone()].into();
    let stored = fixture
        .store
        .get_lease(&fixture.shard)
        .await
        .unwrap()
        .unwrap();
    fixture.store.delete_lease(&stored).await.unwrap();
    fixture.store.create_lease_if_absent(&child).await.unwrap();
    let child = fixture.store.take_lease(&child, "worker-a").await.unwrap();
    let (consumer, signal, _) = fixture.consumer_for(&child);
    let task = tokio::spawn(consumer.run());
    while fixture.calls().is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fixture.calls()[0], "init LATEST");
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_inside_an_aggregate_resumes_at_the_next_user_record() {
    use crate::retrieval::aggregation::aggregate;
    let fixture = Fixture::new(0).await;
    let users: Vec<(String, Vec<u8>)> = (0..5)
        .map(|n| (format!("key-{n}"), format!("user-{n}").into_bytes()))
        .collect();
    let entries: Vec<(&str, Option<&str>, &[u8])> = users
        .iter()
        .map(|(key, data)| (key.as_str(), None, data.as_slice()))
        .collect();
    let sequence =
        fixture
            .kinesis
            .put_record_to_shard(STREAM, &fixture.shard, "outer", &aggregate(&entries));
    fixture
        .kinesis
        .put_record_to_shard(STREAM, &fixture.shard, "plain", b"after");
    // A previous owner checkpointed user record 2 of the aggregate.
    let lease = fixture.lease().await;
    let at = ExtendedSequenceNumber::record(&sequence, 2).unwrap();
    fixture
        .store
        .checkpoint(
            &lease.token().unwrap(),
            &kcl_checkpoint::CheckpointUpdate::at(lease.checkpoint.clone()),
            &kcl_checkpoint::CheckpointUpdate::at(at),
        )
        .await
        .unwrap();

    let (outcome, _) = fixture.run_until_processed(3).await;
    assert_eq!(fixture.processed(), ["user-3", "user-4", "after"]);
    let journal = fixture.journal.lock().unwrap();
    let subs: Vec<u64> = journal
        .processed
        .iter()
        .map(|r| r.sub_sequence_number)
        .collect();
    assert_eq!(subs, [3, 4, 0]);
    assert_eq!(journal.processed[0].partition_key, "key-3");
    drop(journal);
    assert_eq!(outcome.reason, ShutdownReason::Requested);
}

#[tokio::test(start_paused = true)]
async fn fan_out_delivers_everything_across_resubscriptions_and_reaches_shard_end() {
    let mut fixture = Fixture::new(0).await;
    fixture.fanout = true;
    // Subscriptions end after 3 events; records keep arriving meanwhile.
    fixture.kinesis.end_subscriptions_after(3);
    let (consumer, _signal, context) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    for n in 0..250 {
        fixture.kinesis.put_record_to_shard(
            STREAM,
            &fixture.shard,
            "key",
            format!("r{n}").as_bytes(),
        );
        if n % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
    let children = fixture
        .kinesis
        .split_shard(STREAM, &fixture.shard, u128::MAX / 2);

    let outcome = task.await.unwrap();
    assert_eq!(fixture.processed(), names(250), "no gap, no duplicate");
    assert_eq!(outcome.reason, ShutdownReason::ShardEnd);
    let mut seen: Vec<String> = outcome
        .child_shards
        .iter()
        .map(|c| c.shard_id.clone())
        .collect();
    seen.sort();
    assert_eq!(seen, children);
    assert!(
        fixture.kinesis.calls("SubscribeToShard") > 2,
        "resubscribed"
    );
    assert_eq!(fixture.kinesis.calls("GetRecords"), 0, "no polling");
    assert_eq!(context.stats.snapshot().records_processed, 250);
}

#[tokio::test(start_paused = true)]
async fn a_failed_subscription_is_retried_from_the_last_record() {
    let mut fixture = Fixture::new(30).await;
    fixture.fanout = true;
    fixture.kinesis.end_subscriptions_after(1);
    let failure = KinesisError::Transient {
        operation: "SubscribeToShard",
        message: "connection reset".into(),
    };
    fixture.kinesis.fail_next("SubscribeToShard", failure, 2);
    let (_, context) = fixture.run_until_processed(30).await;
    assert_eq!(fixture.processed(), names(30));
    assert_eq!(context.stats.snapshot().kinesis_retries, 2);
}

/// A fixture whose empty shard's lease starts at LATEST.
async fn latest_fixture() -> Fixture {
    let fixture = Fixture::new(0).await;
    let stored = fixture
        .store
        .get_lease(&fixture.shard)
        .await
        .unwrap()
        .unwrap();
    fixture.store.delete_lease(&stored).await.unwrap();
    let lease = Lease::new(fixture.shard.clone(), ExtendedSequenceNumber::Latest);
    fixture.store.create_lease_if_absent(&lease).await.unwrap();
    fixture.store.take_lease(&lease, "worker-a").await.unwrap();
    fixture
}

fn put(fixture: &Fixture, range: std::ops::Range<usize>) {
    for n in range {
        fixture.kinesis.put_record_to_shard(
            STREAM,
            &fixture.shard,
            "key",
            format!("r{n}").as_bytes(),
        );
    }
}

async fn wait_for_calls(fixture: &Fixture, operation: &'static str, n: u64) {
    while fixture.kinesis.calls(operation) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn fan_out_resubscribes_after_the_continuation_when_nothing_was_read_at_latest() {
    let mut fixture = latest_fixture().await;
    fixture.fanout = true;
    fixture.kinesis.end_subscriptions_after(1);
    let (consumer, signal, _) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    // The first (empty) event is out; records arrive before the next
    // subscription.
    wait_for_calls(&fixture, "SubscribeToShardEvent", 1).await;
    put(&fixture, 0..5);
    for _ in 0..100 {
        if fixture.processed().len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    task.await.unwrap();
    assert_eq!(
        fixture.processed(),
        names(5),
        "records written during the resubscription"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panic_before_the_first_checkpoint_at_latest_skips_nothing() {
    let fixture = latest_fixture().await;
    {
        let mut journal = fixture.journal.lock().unwrap();
        journal.checkpoint_batches = false;
        journal.panic.insert("r1".into(), 1);
    }
    let (consumer, signal, _) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    wait_for_calls(&fixture, "GetRecords", 1).await;
    put(&fixture, 0..3);
    for _ in 0..100 {
        if fixture.processed().iter().any(|r| r == "r1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    task.await.unwrap();
    assert!(
        fixture.processed().contains(&"r1".to_owned()),
        "r1 was never processed: {:?}",
        fixture.processed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_before_the_first_delivery_at_latest_skips_nothing() {
    let fixture = latest_fixture().await;
    let (consumer, signal, _) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    wait_for_calls(&fixture, "GetRecords", 1).await;
    put(&fixture, 0..3);
    // Stopped (a handoff, a restart) before it delivered anything.
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    task.await.unwrap();
    let delivered = fixture.processed().len();
    let (outcome, _) = tokio::time::timeout(
        Duration::from_secs(30),
        fixture.run_until_processed(3 - delivered),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the records written before the restart were skipped: {:?}",
            fixture.processed()
        )
    });
    let _ = outcome;
    assert_eq!(fixture.processed(), names(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_request_while_child_leases_cannot_be_created_ends_the_consumer_without_spinning() {
    let mut fixture = Fixture::new(3).await;
    fixture
        .kinesis
        .split_shard(STREAM, &fixture.shard, u128::MAX / 2);
    let (faulty, faults) = kcl_lease::faults::FaultyStore::new(fixture.store.clone());
    faults.only(&[kcl_lease::faults::Call::CreateLease]);
    faults.lose(u32::MAX);
    fixture.consumer_store = Some(Arc::new(faulty));
    let (consumer, signal, _) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    while faults.lost() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attempts = faults.lost();
    let outcome = tokio::time::timeout(Duration::from_secs(5), task).await;
    assert!(
        attempts < 20,
        "{attempts} attempts to create the child leases in the second after the stop request"
    );
    let outcome = outcome.expect("the consumer ends").unwrap();
    assert_eq!(outcome.reason, ShutdownReason::ShardEnd);
    assert_ne!(outcome.checkpoint, ExtendedSequenceNumber::ShardEnd);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_child_reads_its_parents_less_and_less_often_and_wakes_on_a_local_shard_end() {
    let fixture = Fixture::new(0).await;
    let halves = fixture
        .kinesis
        .split_shard(STREAM, &fixture.shard, u128::MAX / 2);
    // The parent (the fixture's shard) is held and unfinished.
    let child = fixture
        .held(&halves[0], std::slice::from_ref(&fixture.shard), "worker-a")
        .await;
    let (consumer, signal, context) = fixture.consumer_for(&child);
    let reads = || {
        fixture
            .store
            .request_counts()
            .get("GetItem")
            .copied()
            .unwrap_or(0)
    };
    let task = tokio::spawn(consumer.run());
    let before = reads();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let waited = reads() - before;
    // 1, 2, 4, 8 s, then every 10 s: about 60 reads in 10 minutes (it read
    // every second, 600 times, before).
    assert!(waited <= 65, "{waited} reads of the parent in 10 minutes");
    assert!(
        fixture.calls().is_empty(),
        "started before the parent ended"
    );

    // The parent ends on this worker: the child starts at once, not at its
    // next 10 s read.
    let parent = fixture.lease().await;
    fixture.finish(&parent).await;
    fixture
        .kinesis
        .put_record_to_shard(STREAM, &halves[0], "key", b"in-child");
    context.shard_ends.send_modify(|ends| *ends += 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(fixture.processed(), ["in-child"]);
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_request_at_shard_end_with_no_processor_ends_the_consumer_without_spinning() {
    let fixture = Fixture::new(3).await;
    fixture
        .kinesis
        .split_shard(STREAM, &fixture.shard, u128::MAX / 2);
    {
        // shard_ended panics, and so does every new processor's initialize.
        let mut journal = fixture.journal.lock().unwrap();
        journal.panic_on_shard_end = 1;
        journal.panic_in_initialize_after_shard_end = true;
    }
    let (consumer, signal, _) = fixture.consumer().await;
    let task = tokio::spawn(consumer.run());
    while !fixture.calls().iter().any(|c| c == "shard_ended") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal.send_replace(ConsumerSignal::ShutdownRequested);
    let writes = || {
        let counts = fixture.store.request_counts();
        counts.get("PutItem").copied().unwrap_or(0) + counts.get("UpdateItem").copied().unwrap_or(0)
    };
    let before = writes();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = writes() - before;
    let outcome = tokio::time::timeout(Duration::from_secs(5), task).await;
    assert!(
        during < 10,
        "{during} lease writes in the second after the stop request"
    );
    let outcome = outcome.expect("the consumer ends").unwrap();
    assert_eq!(outcome.reason, ShutdownReason::ShardEnd);
    assert_ne!(outcome.checkpoint, ExtendedSequenceNumber::ShardEnd);
}
