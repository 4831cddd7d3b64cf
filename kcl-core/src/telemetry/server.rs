//! The HTTP endpoint for metrics and probes: `GET /metrics` (Prometheus
//! text format), `GET /healthz` (liveness) and `GET /readyz` (readiness).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info};

use super::Health;
use super::metrics::{BATCH_PROCESSING_SECONDS, BATCH_SECONDS_BUCKETS, describe};

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The address is not a `host:port` this machine can listen on.
    #[error("metrics address {addr}: {source}")]
    Listen {
        /// The address given.
        addr: String,
        /// Why it could not be bound.
        source: std::io::Error,
    },
    /// The Prometheus recorder could not be installed (another metrics
    /// recorder is installed already).
    #[error("installing the Prometheus recorder: {0}")]
    Recorder(String),
}

/// Serves metrics and probes until dropped.
pub struct TelemetryServer {
    local_addr: SocketAddr,
    /// The server task, aborted when this is dropped.
    _task: AbortOnDropHandle<()>,
}

impl TelemetryServer {
    /// Installs the Prometheus recorder for this process (histogram buckets
    /// for batch times, help texts for every metric).
    pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(BATCH_PROCESSING_SECONDS.to_owned()),
                BATCH_SECONDS_BUCKETS,
            )
            .map_err(|e| TelemetryError::Recorder(e.to_string()))?
            .install_recorder()
            .map_err(|e| TelemetryError::Recorder(e.to_string()))?;
        describe();
        Ok(handle)
    }

    /// Listens on `addr` (`host:port`; port 0 picks one) and serves
    /// `metrics` and `health`.
    pub async fn start(
        addr: &str,
        metrics: PrometheusHandle,
        health: Arc<Health>,
    ) -> Result<Self, TelemetryError> {
        let listen_error = |source| TelemetryError::Listen {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
        let local_addr = listener.local_addr().map_err(listen_error)?;
        info!(%local_addr, "serving /metrics, /healthz and /readyz");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (metrics, health) = (metrics.clone(), Arc::clone(&health));
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let response = respond(&request, &metrics, &health);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    if let Err(error) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        debug!(%error, "telemetry connection ended");
                    }
                });
            }
        });
        Ok(Self {
            local_addr,
            _task: AbortOnDropHandle::new(task),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

fn respond(
    request: &Request<Incoming>,
    metrics: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
    let now = Instant::now();
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        (&Method::GET, "/healthz") if health.is_live(now) => {
            (StatusCode::OK, "text/plain", "ok\n".to_owned())
        }
        (&Method::GET, "/healthz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "the scheduler's loop is stalled\n".to_owned(),
        ),
        (&Method::GET, "/readyz") if health.is_ready(now) => {
            (StatusCode::OK, "text/plain", "ready\n".to_owned())
        }
        (&Method::GET, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: starting, stopping, or the lease table is unreachable\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
