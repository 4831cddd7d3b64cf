//! Worker processes for tests and benchmarks: start a `recorder` replica
//! against the local stack, stop it with SIGTERM, and see who holds which
//! lease. Every process started here is stopped by its PID, and killed if
//! the test ends first.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};

use kcl_lease::{DynamoDbLeaseStore, LeaseStore};

use crate::LocalAws;

/// Starts the recorder `binary` as worker `worker` of `app` on `stream`,
/// writing to `output` (its logs to `output` with the extension `log`),
/// with `extra` flags.
///
/// # Panics
/// If the process cannot be started.
pub fn start_recorder(
    binary: &str,
    aws: &LocalAws,
    stream: &str,
    app: &str,
    worker: &str,
    output: &Path,
    extra: &[&str],
) -> Child {
    let log = std::fs::File::create(output.with_extension("log")).expect("log file");
    Command::new(binary)
        .args(["--application-name", app, "--worker-id", worker])
        .arg("--output")
        .arg(output)
        .args(extra)
        // The stream name through the environment, as in a Deployment.
        .env("KCL_STREAM_NAME", stream)
        .envs(local_aws_env(aws))
        .stderr(log)
        .spawn()
        .expect("start recorder")
}

/// The environment that points a process at the local stack, with dummy
/// credentials.
pub fn local_aws_env(aws: &LocalAws) -> [(&'static str, String); 5] {
    [
        ("AWS_ENDPOINT_URL_KINESIS", aws.kinesis_endpoint.clone()),
        ("AWS_ENDPOINT_URL_DYNAMODB", aws.dynamodb_endpoint.clone()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "kcllocalaccesskey".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "kcllocalsecretkey".to_owned()),
    ]
}

/// Sends SIGTERM to `child` by its PID.
///
/// # Panics
/// If `kill` cannot be run or fails.
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {} failed", child.id());
}

/// Processes that are killed if still running when dropped, so none
/// outlives a failed test.
#[derive(Default)]
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// How many unfinished leases each worker processes, as the lease table of
/// `app` shows now.
pub async fn lease_owners(aws: &LocalAws, app: &str) -> BTreeMap<String, usize> {
    let leases = DynamoDbLeaseStore::new(&aws.dynamodb(), app);
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    for lease in leases.list_leases().await.unwrap_or_default() {
        if let Some(owner) = lease.processing_owner().filter(|_| !lease.is_finished()) {
            *owners.entry(owner.to_owned()).or_default() += 1;
        }
    }
    owners
}
