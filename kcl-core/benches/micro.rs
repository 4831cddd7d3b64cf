//! Micro-benchmarks of the hot pure functions, with criterion:
//! sequence-number parsing and comparison, checkpoint validation, KPL
//! de-aggregation, and the lease-assignment plan.
//!
//! ```sh
//! cargo bench -p kcl-core --bench micro
//! ```

use std::collections::BTreeSet;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kcl_checkpoint::{ExtendedSequenceNumber, SequenceNumber, validate_checkpoint};
use kcl_core::Record;
use kcl_core::retrieval::aggregation::{aggregate, deaggregate};
use kcl_lease::HashKeyRange;
use kcl_lease::assignment::{Holder, LeaseView, plan};

/// A sequence number as long as the ones Kinesis hands out.
const SEQUENCE: &str = "49590338271490256608559692538361571095921575989136588898";
const LATER: &str = "49590338271490256608559692540925702759324208523137515618";

fn sequence_numbers(c: &mut Criterion) {
    c.bench_function("sequence_number/parse_56_digits", |b| {
        b.iter(|| SequenceNumber::new(black_box(SEQUENCE)))
    });
    let (a, z) = (
        ExtendedSequenceNumber::record(SEQUENCE, 3).expect("valid"),
        ExtendedSequenceNumber::record(LATER, 0).expect("valid"),
    );
    c.bench_function("sequence_number/compare", |b| {
        b.iter(|| black_box(&a) < black_box(&z))
    });
    let middle = ExtendedSequenceNumber::record(SEQUENCE, 7).expect("valid");
    c.bench_function("checkpoint/validate", |b| {
        b.iter(|| validate_checkpoint(black_box(&middle), black_box(&a), black_box(&z)))
    });
}

fn deaggregation(c: &mut Criterion) {
    let payload = vec![b'x'; 100];
    let keys: Vec<String> = (0..100).map(|n| format!("key-{n}")).collect();
    let users: Vec<(&str, Option<&str>, &[u8])> = keys
        .iter()
        .map(|key| (key.as_str(), None, payload.as_slice()))
        .collect();
    let data = aggregate(&users);
    let outer = Record {
        data: data.clone(),
        partition_key: "outer".to_owned(),
        sequence_number: SequenceNumber::new(SEQUENCE).expect("valid"),
        sub_sequence_number: 0,
        approximate_arrival_timestamp: None,
        explicit_hash_key: None,
    };
    let plain = Record {
        data: Bytes::from(payload.clone()),
        ..outer.clone()
    };
    let whole_range = HashKeyRange {
        start: 0,
        end: u128::MAX,
    };
    let mut group = c.benchmark_group("deaggregate");
    group.throughput(Throughput::Elements(100));
    group.bench_function("aggregate_of_100_user_records", |b| {
        b.iter(|| deaggregate(vec![outer.clone()], Some(whole_range)))
    });
    group.bench_function("100_plain_records", |b| {
        b.iter(|| deaggregate(vec![plain.clone(); 100], Some(whole_range)))
    });
    group.finish();
}

fn assignment(c: &mut Criterion) {
    // 1,000 leases held by 40 workers; 10 more workers join.
    let leases: Vec<LeaseView> = (0..1000)
        .map(|n| LeaseView {
            key: format!("shardId-{n:012}"),
            holder: Holder::Held(format!("worker-{}", n % 40)),
            moving: false,
            waiting: false,
        })
        .collect();
    let workers: BTreeSet<String> = (0..50).map(|n| format!("worker-{n}")).collect();
    c.bench_function("assignment/plan_1000_leases_50_workers", |b| {
        b.iter(|| plan(black_box(&leases), black_box(&workers), None))
    });
}

criterion_group!(benches, sequence_numbers, deaggregation, assignment);
criterion_main!(benches);
