//! What an operator gets wrong, as the `recorder` process meets it: a stream
//! that does not exist, and missing permissions (AccessDenied answers from a
//! fault proxy), at start and while running.

use std::process::Child;
use std::time::Duration;

use kcl_examples::recorder::read_lines;
use kcl_tests::fault_proxy::{Fault, FaultProxy};
use kcl_tests::processes::{Processes, start_recorder, terminate};
use kcl_tests::stream::{create_stream, put_records};
use kcl_tests::{LocalAws, output_dir, unique_name};

use super::RECORDER;

/// Waits for `child` to exit on its own; returns its exit status and log.
async fn exit_and_log(child: &mut Child, output: &std::path::Path) -> (i32, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for recorder") {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recorder kept running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(output.with_extension("log")).unwrap_or_default();
    (status.code().unwrap_or(-1), log)
}

struct Setup {
    aws: LocalAws,
    through: LocalAws,
    kinesis: FaultProxy,
    dynamodb: FaultProxy,
    dir: tempfile::TempDir,
}

async fn setup(name: &str) -> Setup {
    let aws = LocalAws::connect();
    let kinesis = FaultProxy::start(&aws.kinesis_endpoint).await;
    let dynamodb = FaultProxy::start(&aws.dynamodb_endpoint).await;
    let mut through = aws.clone();
    through.kinesis_endpoint = kinesis.endpoint();
    through.dynamodb_endpoint = dynamodb.endpoint();
    let dir = output_dir(name);
    Setup {
        aws,
        through,
        kinesis,
        dynamodb,
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_or_missing_permissions_stop_the_worker_with_a_clear_error() {
    let setup = setup("recorder-refused").await;
    let stream = unique_name("recorder-refused");
    create_stream(&setup.aws.kinesis(), &stream, 1).await;

    // A stream that does not exist.
    let missing = unique_name("no-such-stream");
    let output = setup.dir.path().join("missing.jsonl");
    let mut child = start_recorder(
        RECORDER,
        &setup.aws,
        &missing,
        &unique_name("refused-app"),
        "w",
        &output,
        &[],
    );
    let (code, log) = exit_and_log(&mut child, &output).await;
    assert_ne!(code, 0);
    assert!(log.contains(&missing), "{log}");
    assert!(log.contains("not found"), "{log}");

    // No permission on the lease table, then none on the stream.
    for (proxy, what) in [(&setup.dynamodb, "lease table"), (&setup.kinesis, "stream")] {
        proxy.set(Fault::AccessDenied);
        let output = setup
            .dir
            .path()
            .join(format!("denied-{}.jsonl", what.len()));
        let mut child = start_recorder(
            RECORDER,
            &setup.through,
            &stream,
            &unique_name("refused-app"),
            "w",
            &output,
            &[],
        );
        let (code, log) = exit_and_log(&mut child, &output).await;
        assert_ne!(code, 0, "{what}");
        assert!(log.contains("AccessDeniedException"), "{what}: {log}");
        assert!(log.contains(what), "{what}: {log}");
        proxy.set(Fault::None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_revoked_for_a_while_delay_records_but_lose_none() {
    let setup = setup("recorder-revoked").await;
    let kinesis = setup.aws.kinesis();
    let stream = unique_name("recorder-revoked");
    create_stream(&kinesis, &stream, 2).await;
    let output = setup.dir.path().join("w.jsonl");
    let flags = [
        "--failover-time-ms",
        "3000",
        "--assignment-interval-ms",
        "500",
    ];
    let mut replicas = Processes(vec![start_recorder(
        RECORDER,
        &setup.through,
        &stream,
        &unique_name("revoked-app"),
        "w",
        &output,
        &flags,
    )]);
    let mut written = put_records(&kinesis, &stream, 8, 0, 40).await;
    wait_for(&output, written.len()).await;

    // Reading refused for 3 s, then the lease table for 1 s (less than the
    // failover time, so the worker keeps its leases), records arriving all
    // the while.
    setup.kinesis.set(Fault::AccessDenied);
    written.extend(put_records(&kinesis, &stream, 8, 40, 40).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    setup.kinesis.set(Fault::None);
    setup.dynamodb.set(Fault::AccessDenied);
    written.extend(put_records(&kinesis, &stream, 8, 80, 40).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    setup.dynamodb.set(Fault::None);
    wait_for(&output, written.len()).await;

    let child = &mut replicas.0[0];
    assert!(
        child.try_wait().expect("status").is_none(),
        "the worker exited"
    );
    terminate(child);
    let status = child.wait().expect("wait");
    assert!(status.success(), "exited with {status}");
    let mut data: Vec<String> = read_lines(&output)
        .unwrap()
        .into_iter()
        .map(|l| l.data)
        .collect();
    data.sort_unstable();
    data.dedup();
    written.sort_unstable();
    assert_eq!(data, written, "nothing lost");
    let log = std::fs::read_to_string(output.with_extension("log")).unwrap();
    assert!(log.contains("AccessDeniedException"), "refusals are logged");
    assert!(
        setup
            .kinesis
            .requests()
            .keys()
            .any(|(_, o)| *o == "access_denied")
            && setup
                .dynamodb
                .requests()
                .keys()
                .any(|(_, o)| *o == "access_denied")
    );
}

async fn wait_for(output: &std::path::Path, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut data: Vec<String> = read_lines(output)
            .unwrap_or_default()
            .into_iter()
            .map(|l| l.data)
            .collect();
        data.sort_unstable();
        data.dedup();
        if data.len() >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} records",
            data.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
