//! A fault proxy: an HTTP proxy on loopback that sits between one worker and
//! one AWS endpoint (kinesis-mock or DynamoDB Local) and injects the faults a
//! test sets, for as long as it keeps them set.
//!
//! Point a worker's `AWS_ENDPOINT_URL_*` at [`FaultProxy::endpoint`]; every
//! request is forwarded to the real endpoint on a connection of its own,
//! unless the current [`Fault`] says otherwise. Give each worker its own
//! proxies to cut one worker off while the others carry on.
//!
//! The proxy counts what it did, and keeps the answers to requests it held
//! back ([`Fault::Stall`]) and forwarded late, so a test can check that late
//! writes failed without effect.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// What the proxy does to the requests it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward every request.
    None,
    /// Wait this long before forwarding each request.
    Latency(Duration),
    /// Close the connection without an answer; connections already open
    /// (a subscription's event stream) are closed too.
    DropConnections,
    /// Answer HTTP 500 `InternalFailure`.
    ServerError,
    /// Forward the request (it takes effect), then answer HTTP 500
    /// `InternalFailure` instead of the real answer, as DynamoDB documents
    /// a 500 may mean.
    AppliedThenServerError,
    /// Answer the service's throttling error (HTTP 400
    /// `ProvisionedThroughputExceededException`).
    Throttle,
    /// Answer HTTP 400 `AccessDeniedException`.
    AccessDenied,
    /// Hold each request, unanswered, until the fault changes; then forward
    /// it late, as a partitioned network that finally delivers does.
    Stall,
}

/// A request the proxy held during a [`Fault::Stall`] and forwarded late,
/// with the real endpoint's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LateRequest {
    /// The API operation (`UpdateItem`, `GetRecords`, …).
    pub operation: String,
    /// The table the request named, if any.
    pub table: Option<String>,
    /// The request's `UpdateExpression`, if it had one (what a DynamoDB
    /// write meant to change).
    pub update_expression: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The error type of the answer (`ConditionalCheckFailedException`, …),
    /// if it was an error.
    pub error_type: Option<String>,
}

#[derive(Debug, Default)]
struct Record {
    /// Requests by operation and what the proxy did with them.
    requests: BTreeMap<(String, &'static str), u64>,
    /// Requests the proxy held and delivered late, in order.
    late: Vec<LateRequest>,
    /// A fault for the next request only, before the one set.
    once: Option<Fault>,
}

/// A running fault proxy. Stops when dropped.
pub struct FaultProxy {
    /// Where the proxy listens.
    addr: SocketAddr,
    /// The fault set now.
    fault: watch::Sender<Fault>,
    /// What the proxy saw and did.
    record: Arc<Mutex<Record>>,
    /// The accept loop, aborted when the proxy is dropped.
    _task: AbortOnDropHandle<()>,
}

/// What each connection's handler shares with the proxy.
#[derive(Clone)]
struct Shared {
    /// The endpoint requests are forwarded to.
    upstream: String,
    /// The fault set now.
    fault: watch::Receiver<Fault>,
    /// What the proxy saw and did.
    record: Arc<Mutex<Record>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port that forwards to `upstream`, an
    /// `http://host:port` endpoint on loopback.
    ///
    /// # Panics
    /// If `upstream` is not a loopback `http://` endpoint, or no port can be
    /// bound.
    pub async fn start(upstream: &str) -> Self {
        let authority = upstream
            .strip_prefix("http://")
            .expect("a plain-HTTP upstream")
            .trim_end_matches('/')
            .to_owned();
        assert!(
            authority.starts_with("127.0.0.1:") || authority.starts_with("localhost:"),
            "the fault proxy only forwards to loopback, not {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (fault, receiver) = watch::channel(Fault::None);
        let record = Arc::new(Mutex::new(Record::default()));
        let shared = Shared {
            upstream: authority,
            fault: receiver,
            record: Arc::clone(&record),
        };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    // A connection open when connections start to be
                    // dropped (a subscription's event stream) is cut too;
                    // requests on new ones are dropped as they come.
                    let mut fault = shared.fault.clone();
                    fault.borrow_and_update();
                    let cut = async move {
                        while fault.changed().await.is_ok() {
                            if *fault.borrow_and_update() == Fault::DropConnections {
                                return;
                            }
                        }
                        std::future::pending::<()>().await;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { shared.handle(request).await }
                    });
                    // A dropped connection ends here with an error: expected.
                    let serve = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = serve => {}
                        () = cut => {}
                    }
                });
            }
        });
        Self {
            addr,
            fault,
            record,
            _task: AbortOnDropHandle::new(task),
        }
    }

    /// The endpoint to give a client instead of the real one.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Injects `fault` into every request from now until the next call.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Injects `fault` into the next request only; the requests after it
    /// get the fault [set](Self::set).
    pub fn set_once(&self, fault: Fault) {
        self.lock().once = Some(fault);
    }

    /// The fault set now.
    pub fn fault(&self) -> Fault {
        self.fault.borrow().clone()
    }

    /// Requests seen, by operation and what was done (`forwarded`,
    /// `dropped`, `server_error`, `applied_then_server_error`, `throttled`,
    /// `access_denied`, `stalled`).
    pub fn requests(&self) -> BTreeMap<(String, &'static str), u64> {
        self.lock().requests.clone()
    }

    /// The requests held during a stall and forwarded late, with their
    /// answers, in the order they were answered.
    pub fn late_requests(&self) -> Vec<LateRequest> {
        self.lock().late.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Why the proxy gave no answer: the connection is closed.
#[derive(Debug, thiserror::Error)]
enum NoAnswer {
    #[error("connection dropped by the fault proxy")]
    Dropped,
    #[error("the upstream endpoint failed: {0}")]
    Upstream(String),
}

impl Shared {
    async fn handle(&self, request: Request<Incoming>) -> Result<Response<ProxyBody>, NoAnswer> {
        let operation = request
            .headers()
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .and_then(|target| target.rsplit('.').next())
            .unwrap_or("unknown")
            .to_owned();
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| NoAnswer::Upstream(e.to_string()))?
            .to_bytes();
        let once = self.lock().once.take();
        let fault = once.unwrap_or_else(|| self.fault.borrow().clone());
        let outcome = match &fault {
            Fault::None | Fault::Latency(_) => "forwarded",
            Fault::DropConnections => "dropped",
            Fault::ServerError => "server_error",
            Fault::AppliedThenServerError => "applied_then_server_error",
            Fault::Throttle => "throttled",
            Fault::AccessDenied => "access_denied",
            Fault::Stall => "stalled",
        };
        self.count(&operation, outcome);
        match fault {
            Fault::None => {}
            Fault::Latency(delay) => tokio::time::sleep(delay).await,
            Fault::DropConnections => return Err(NoAnswer::Dropped),
            Fault::ServerError => {
                return Ok(error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalFailure",
                    "injected server error",
                ));
            }
            Fault::AppliedThenServerError => {
                let _ = self.forward(parts, body).await?;
                return Ok(error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalFailure",
                    "injected server error after the request took effect",
                ));
            }
            Fault::Throttle => {
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "ProvisionedThroughputExceededException",
                    "Rate exceeded (injected)",
                ));
            }
            Fault::AccessDenied => {
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "AccessDeniedException",
                    "User is not authorized to perform this action (injected)",
                ));
            }
            Fault::Stall => {
                // Forwarded late in a task of its own, so it reaches the
                // endpoint even if the client has given up by then.
                let shared = self.clone();
                let table = body_field(&body, "TableName");
                let update_expression = body_field(&body, "UpdateExpression");
                let late = tokio::spawn(async move {
                    let mut fault = shared.fault.clone();
                    let _ = fault.wait_for(|f| *f != Fault::Stall).await;
                    let response = shared.forward(parts, body).await?;
                    let (parts, body) = response.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map_err(|e| NoAnswer::Upstream(e.to_string()))?
                        .to_bytes();
                    shared.lock().late.push(LateRequest {
                        operation,
                        table,
                        update_expression,
                        status: parts.status.as_u16(),
                        error_type: error_type(&body),
                    });
                    Ok::<_, NoAnswer>(Response::from_parts(parts, full(body)))
                });
                return late.await.map_err(|e| NoAnswer::Upstream(e.to_string()))?;
            }
        }
        let response = self.forward(parts, body).await?;
        Ok(response.map(BodyExt::boxed))
    }

    /// Sends the request to the upstream endpoint on a new connection.
    async fn forward(
        &self,
        parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Incoming>, NoAnswer> {
        let upstream = TcpStream::connect(&self.upstream)
            .await
            .map_err(|e| NoAnswer::Upstream(e.to_string()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(upstream))
                .await
                .map_err(|e| NoAnswer::Upstream(e.to_string()))?;
        // Drives the connection until the answer (a stream, for
        // SubscribeToShard) has been read.
        tokio::spawn(connection);
        sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(|e| NoAnswer::Upstream(e.to_string()))
    }

    fn count(&self, operation: &str, outcome: &'static str) {
        *self
            .lock()
            .requests
            .entry((operation.to_owned(), outcome))
            .or_default() += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn full(body: Bytes) -> ProxyBody {
    Full::new(body)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// An AWS JSON-protocol error answer, as both Kinesis and DynamoDB send them.
fn error_response(status: StatusCode, error_type: &str, message: &str) -> Response<ProxyBody> {
    let body = format!(r#"{{"__type":"{error_type}","message":"{message}"}}"#);
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amzn-errortype", error_type)
        .header("x-amzn-requestid", "fault-proxy")
        .body(full(Bytes::from(body)))
        .expect("a valid response")
}

/// A string field of an AWS JSON request body.
fn body_field(body: &[u8], field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get(field)?.as_str().map(str::to_owned)
}

/// The error type of an AWS JSON error answer (without any namespace).
fn error_type(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error_type = value.get("__type")?.as_str()?;
    Some(error_type.rsplit('#').next()?.to_owned())
}
