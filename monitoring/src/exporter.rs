//! The metrics endpoint of a sealgate process: the `metrics` crate's global recorder
//! (metrics-exporter-prometheus, histograms with buckets), served over HTTP/1.1 by a small
//! hyper server with three paths:
//!
//! - `GET /metrics`: this process's metrics, refreshed by its `on_scrape` hook first, merged
//!   with the `/metrics` of the children it was given (the serve process's HSM nodes), so one
//!   scrape sees the whole deployment. A child that does not answer within
//!   [`CHILD_TIMEOUT`] is left out of that scrape (its `sealgate_hsm_unhealthy` comes from
//!   the proxy's view of it).
//! - `GET /healthz`: `200 ok` while the process runs.
//! - `GET /readyz`: `200 ready`, or `503` and the reason, from the `ready` hook.

use crate::merge::merge;
use crate::names::{ALL, Kind};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How long a scrape waits for each child's metrics.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(2);

/// Histogram buckets for durations in seconds: 100 µs to 10 s.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Why the recorder or the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The recorder could not be built or installed (one per process).
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    /// The address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Installs the process's global recorder, with `labels` added to every metric (a node's
/// `hsm_id`), and describes every metric of [`ALL`]. Call once, before recording.
pub fn install(labels: &[(&str, String)]) -> Result<PrometheusHandle, MetricsError> {
    let mut builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
        .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    for (key, value) in labels {
        builder = builder.add_global_label(*key, value.clone());
    }
    let handle = builder
        .install_recorder()
        .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    for m in ALL {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
    Ok(handle)
}

/// Refreshes gauges before a scrape.
pub type ScrapeHook = Arc<dyn Fn() + Send + Sync>;
/// `Ok` when the process is ready to serve, else why not.
pub type ReadyHook = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
/// The metrics endpoints of child processes now (they move when a child restarts).
pub type ChildrenHook = Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>;

/// What the endpoint serves.
pub struct Exposition {
    handle: PrometheusHandle,
    on_scrape: ScrapeHook,
    ready: ReadyHook,
    /// The metrics endpoints of child processes, merged into each scrape.
    children: Option<ChildrenHook>,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition").finish_non_exhaustive()
    }
}

impl Exposition {
    /// An exposition of `handle`'s metrics.
    pub fn new(handle: PrometheusHandle, on_scrape: ScrapeHook, ready: ReadyHook) -> Self {
        Self {
            handle,
            on_scrape,
            ready,
            children: None,
        }
    }

    /// Merges the metrics of the endpoints `children` names into each scrape.
    pub fn with_children(mut self, children: ChildrenHook) -> Self {
        self.children = Some(children);
        self
    }

    /// This process's metrics and its children's, merged.
    pub async fn render(&self) -> String {
        (self.on_scrape)();
        self.handle.run_upkeep();
        let own = self.handle.render();
        let children = self.children.as_ref().map(|c| c()).unwrap_or_default();
        let mut texts = vec![own];
        let fetched = futures_util::future::join_all(children.iter().map(|&addr| async move {
            match tokio::time::timeout(CHILD_TIMEOUT, fetch(addr, "/metrics")).await {
                Ok(Ok(text)) => Some(text),
                Ok(Err(e)) => {
                    debug!(%addr, "no metrics from a child: {e}");
                    None
                }
                Err(_) => {
                    debug!(%addr, "no metrics from a child within {CHILD_TIMEOUT:?}");
                    None
                }
            }
        }))
        .await;
        texts.extend(fetched.into_iter().flatten());
        merge(texts.iter().map(String::as_str))
    }
}

/// GETs `path` from an HTTP/1.1 server at `addr` and returns the body of a 200 answer.
async fn fetch(addr: SocketAddr, path: &str) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8".to_owned())
}

/// A running metrics endpoint.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
}

impl Endpoint {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds `addr` and serves `exposition` until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    exposition: Arc<Exposition>,
    shutdown: CancellationToken,
) -> Result<Endpoint, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((tcp, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let exposition = Arc::clone(&exposition);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let exposition = Arc::clone(&exposition);
                    async move { Ok::<_, std::convert::Infallible>(answer(&exposition, &req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tcp), service);
                let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
            });
        }
    });
    Ok(Endpoint { addr: local })
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

async fn answer(exposition: &Exposition, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET only\n".to_owned(),
            PLAIN,
        );
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            exposition.render().await,
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned(), PLAIN),
        "/readyz" => match (exposition.ready)() {
            Ok(()) => text(StatusCode::OK, "ready\n".to_owned(), PLAIN),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                PLAIN,
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz and /readyz are served here\n".to_owned(),
            PLAIN,
        ),
    }
}
