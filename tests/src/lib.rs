//! What the integration tests share: clients for the local AWS stack and
//! names no other test uses.
//!
//! Tests reach the emulators started by `scripts/local-aws.sh up` through the
//! standard `AWS_ENDPOINT_URL_KINESIS` and `AWS_ENDPOINT_URL_DYNAMODB`
//! variables (falling back to the script's default ports). They always use
//! dummy credentials and refuse any endpoint that is not on loopback, so a
//! test can never send traffic to real AWS. A test that cannot reach the stack
//! fails with a message naming the command that starts it; it never skips.
//!
//! Every test makes its own streams and tables with [`unique_name`], so the
//! whole suite can run in parallel against one pair of emulators.
//!
//! - [`stream`]: create a stream on kinesis-mock and write records to it.
//! - [`processes`]: start `recorder` worker processes and stop them by PID.
//! - [`fault_proxy`]: an HTTP proxy on loopback that stalls, drops or
//!   delays one worker's requests to one endpoint.
//! - [`java_kcl`]: lease-table items in the layouts the Java KCL writes.
//! - [`fleet_sim`]: a fleet of lease coordinators on the in-memory store
//!   and a simulated clock.
//! - [`output_dir`]: a directory for a test's output, removed when the test
//!   ends (fails included).
#![warn(missing_docs)]

pub mod fault_proxy;
pub mod fleet_sim;
pub mod java_kcl;
pub mod processes;
pub mod stream;

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

/// The command that starts the stack, named in every failure to reach it.
pub const START_COMMAND: &str = "scripts/local-aws.sh up && eval \"$(scripts/local-aws.sh env)\"";

/// The default endpoints of `scripts/local-aws.sh`.
const DEFAULT_KINESIS: &str = "http://127.0.0.1:4568";
const DEFAULT_DYNAMODB: &str = "http://127.0.0.1:8000";

/// Endpoints and clients for the local AWS stack.
#[derive(Clone, Debug)]
pub struct LocalAws {
    /// Region, dummy credentials and behaviour version shared by both clients.
    pub sdk_config: SdkConfig,
    /// Where kinesis-mock listens (plain HTTP, loopback).
    pub kinesis_endpoint: String,
    /// Where DynamoDB Local listens (plain HTTP, loopback).
    pub dynamodb_endpoint: String,
}

impl LocalAws {
    /// Finds the local stack and checks that both emulators accept
    /// connections.
    ///
    /// # Panics
    /// If an endpoint is not on loopback or does not accept a connection: the
    /// message names the variable, the address and [`START_COMMAND`].
    pub fn connect() -> Self {
        let kinesis_endpoint = endpoint("AWS_ENDPOINT_URL_KINESIS", DEFAULT_KINESIS);
        let dynamodb_endpoint = endpoint("AWS_ENDPOINT_URL_DYNAMODB", DEFAULT_DYNAMODB);
        let sdk_config = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
                Credentials::new(
                    "kcllocalaccesskey",
                    "kcllocalsecretkey",
                    None,
                    None,
                    "kcl-tests",
                ),
            ))
            .build();
        Self {
            sdk_config,
            kinesis_endpoint,
            dynamodb_endpoint,
        }
    }

    /// A Kinesis client pointed at kinesis-mock.
    pub fn kinesis(&self) -> aws_sdk_kinesis::Client {
        let config = aws_sdk_kinesis::config::Builder::from(&self.sdk_config)
            .endpoint_url(&self.kinesis_endpoint)
            .build();
        aws_sdk_kinesis::Client::from_conf(config)
    }

    /// A DynamoDB client pointed at DynamoDB Local.
    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        let config = aws_sdk_dynamodb::config::Builder::from(&self.sdk_config)
            .endpoint_url(&self.dynamodb_endpoint)
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }
}

/// Reads an endpoint variable (or its default) and checks that it is a
/// reachable loopback address.
fn endpoint(variable: &str, default: &str) -> String {
    let url = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    let addr = loopback_addr(&url).unwrap_or_else(|why| {
        panic!("{variable}={url}: {why}; tests only talk to the local AWS stack ({START_COMMAND})")
    });
    if let Err(error) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        panic!(
            "the local AWS stack is not reachable: {variable}={url} ({addr}): {error}. \
             Start it with: {START_COMMAND}"
        );
    }
    url
}

/// The socket address of an `http://host:port` URL whose host is loopback.
pub fn loopback_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("expected an http:// or https:// URL")?;
    let host_port = rest.split('/').next().unwrap_or(rest);
    let addrs: Vec<SocketAddr> = host_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host_port:?} (give host:port): {e}"))?
        .collect();
    match addrs.iter().find(|a| !a.ip().is_loopback()) {
        Some(outside) => Err(format!("{outside} is not a loopback address")),
        None => addrs
            .first()
            .copied()
            .ok_or_else(|| format!("{host_port:?} resolves to nothing")),
    }
}

/// A name no other test in this or any concurrent run uses: `prefix`, this
/// process's id, a per-process counter and a random suffix. Valid as a
/// Kinesis stream name and a DynamoDB table name (letters, digits, `-`).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}-{n}-{}", std::process::id(), &random[..8])
}

/// A directory for a test's output files, named after `prefix`, removed
/// with everything in it when dropped: when the test passes and when it
/// fails.
///
/// # Panics
/// If the directory cannot be created.
pub fn output_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir()
        .expect("create an output directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_are_valid_aws_names() {
        let a = unique_name("lease-table");
        let b = unique_name("lease-table");
        assert_ne!(a, b);
        for name in [a, b] {
            assert!(name.starts_with("lease-table-"));
            assert!(name.len() <= 128);
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        }
    }

    #[test]
    fn only_loopback_endpoints_are_accepted() {
        assert_eq!(
            loopback_addr("http://127.0.0.1:4568").unwrap(),
            "127.0.0.1:4568".parse().unwrap()
        );
        assert!(loopback_addr("http://[::1]:8000/").is_ok());
        assert!(loopback_addr("http://10.1.2.3:8000").is_err());
        assert!(loopback_addr("127.0.0.1:8000").is_err());
        assert!(loopback_addr("http://127.0.0.1").is_err());
    }
}
