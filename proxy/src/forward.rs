//! The HTTP side: each request goes through the phases of [`Phases`] (pingora's shape: route,
//! prepare the upstream request, then the response), to a server of its route's pool over a
//! pooled HTTP/1.1 connection. Bodies stream both ways; nothing is buffered whole.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sealgate_config::{Balancing, Config, PoolConfig, RouteConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A response body: the upstream's, streamed, or one the proxy made.
pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// What the proxy knows of the client's connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientInfo {
    /// The client's address.
    pub(crate) addr: SocketAddr,
}

/// The steps every request goes through (pingora's phase trait, reduced to what sealgate
/// does): pick the route, shape the upstream request, shape the response.
pub(crate) trait Phases {
    /// The route of `req`, if any (else 404).
    fn route(&self, host: Option<&str>, path: &str) -> Option<&RouteConfig>;
    /// Turns the client's headers into the upstream's: hop-by-hop headers out, forwarding
    /// headers in.
    fn upstream_headers(&self, headers: &mut HeaderMap, client: ClientInfo, host: Option<&str>);
    /// Turns the upstream's response headers into the client's.
    fn response_headers(&self, headers: &mut HeaderMap);
}

/// One upstream server and its requests in flight.
#[derive(Debug)]
struct Server {
    address: String,
    in_flight: AtomicUsize,
}

/// A pool of servers.
#[derive(Debug)]
struct Pool {
    config: PoolConfig,
    servers: Vec<Server>,
    next: AtomicUsize,
}

impl Pool {
    /// The server for the next request, avoiding `avoid` when another exists.
    fn pick(&self, avoid: Option<usize>) -> usize {
        let n = self.servers.len();
        let candidates = (0..n).filter(|i| Some(*i) != avoid || n == 1);
        match self.config.balancing {
            Balancing::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .find(|i| Some(*i) != avoid || n == 1)
                    .unwrap_or(0)
            }
            Balancing::LeastRequests => candidates
                .min_by_key(|i| {
                    self.servers
                        .get(*i)
                        .map_or(usize::MAX, |s| s.in_flight.load(Ordering::Relaxed))
                })
                .unwrap_or(0),
        }
    }
}

/// Routes, pools and the upstream client of one configuration.
pub(crate) struct Forwarder {
    routes: Vec<RouteConfig>,
    pools: Vec<Pool>,
    client: HttpClient<HttpConnector, Incoming>,
    empty_client: HttpClient<HttpConnector, http_body_util::Empty<Bytes>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

impl Phases for Forwarder {
    fn route(&self, host: Option<&str>, path: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| {
            r.host.as_deref().is_none_or(|h| Some(h) == host) && path.starts_with(&r.path_prefix)
        })
    }

    fn upstream_headers(&self, headers: &mut HeaderMap, client: ClientInfo, host: Option<&str>) {
        remove_hop_by_hop(headers);
        let ip = client.addr.ip().to_string();
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {ip}"),
            None => ip.clone(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert("x-forwarded-for", v);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let for_ = if client.addr.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip
        };
        let mut forwarded = format!("for={for_};proto=https");
        if let Some(host) = host {
            if let Ok(v) = HeaderValue::from_str(host) {
                headers.insert("x-forwarded-host", v);
            }
            forwarded.push_str(&format!(";host=\"{host}\""));
        }
        let forwarded = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {forwarded}"),
            None => forwarded,
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded) {
            headers.insert(header::FORWARDED, v);
        }
    }

    fn response_headers(&self, headers: &mut HeaderMap) {
        remove_hop_by_hop(headers);
    }
}

/// A response the proxy makes itself.
pub(crate) fn local(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("{text}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The request's host, lowercase, without port: from the URI (HTTP/2's :authority) or the
/// Host header.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = req.uri().host().map(str::to_owned).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(|h| {
                if h.starts_with('[') {
                    h.split_once(']')
                        .map_or(h, |(a, _)| a)
                        .trim_start_matches('[')
                        .to_owned()
                } else {
                    h.rsplit_once(':').map_or(h, |(a, _)| a).to_owned()
                }
            })
    })?;
    Some(raw.to_ascii_lowercase())
}

/// Whether a request may be sent again to another server after a connect failure: an
/// idempotent method and no body.
fn retryable<B: hyper::body::Body>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::DELETE | Method::PUT
    ) && req.body().is_end_stream()
}

impl Forwarder {
    /// Routes and pools of `config`.
    pub(crate) fn new(config: &Config) -> Self {
        let pools = config
            .pools
            .iter()
            .map(|p| Pool {
                servers: p
                    .servers
                    .iter()
                    .map(|s| Server {
                        address: s.clone(),
                        in_flight: AtomicUsize::new(0),
                    })
                    .collect(),
                config: p.clone(),
                next: AtomicUsize::new(0),
            })
            .collect();
        let connect_timeout = config
            .pools
            .iter()
            .map(|p| p.connect_timeout)
            .max()
            .unwrap_or(Duration::from_secs(3));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector.clone());
        let empty_client = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Self {
            routes: config.routes.clone(),
            pools,
            client,
            empty_client,
        }
    }

    /// Serves one request.
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: ClientInfo,
    ) -> Response<ProxyBody> {
        let host = request_host(&req);
        let Some(route) = self.route(host.as_deref(), req.uri().path()) else {
            return local(StatusCode::NOT_FOUND, "no route for this host and path");
        };
        let Some(pool) = self.pools.get(route.pool) else {
            return local(StatusCode::BAD_GATEWAY, "the route's pool is missing");
        };
        let (mut parts, body) = req.into_parts();
        self.upstream_headers(&mut parts.headers, client, host.as_deref());
        if host.is_some() && !parts.headers.contains_key(header::HOST) {
            // HTTP/2 clients send :authority; HTTP/1.1 upstreams need Host.
            if let Some(v) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
                parts.headers.insert(header::HOST, v);
            }
        }
        parts.version = http::Version::HTTP_11;
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let req = Request::from_parts(parts, body);

        let first = pool.pick(None);
        let response = if retryable(&req) {
            // No body: the request can be rebuilt for a second server.
            let (parts, _) = req.into_parts();
            let mut tried = None;
            let mut result = Err(UpstreamError::NoServer);
            for _ in 0..2.min(pool.servers.len()).max(1) {
                let index = match tried {
                    None => first,
                    Some(t) => pool.pick(Some(t)),
                };
                let mut p = parts.clone();
                result = self.send_empty(pool, index, &path, &mut p).await;
                match &result {
                    Err(UpstreamError::Connect(_)) if tried.is_none() => tried = Some(index),
                    _ => break,
                }
            }
            result
        } else {
            self.send(pool, first, &path, req).await
        };
        match response {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                self.response_headers(&mut parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Err(UpstreamError::Timeout) => local(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream server did not answer in time",
            ),
            Err(UpstreamError::Connect(e)) => {
                tracing::warn!(pool = %pool.config.name, "upstream connect failed: {e}");
                local(StatusCode::BAD_GATEWAY, "cannot reach an upstream server")
            }
            Err(UpstreamError::Other(e)) => {
                tracing::warn!(pool = %pool.config.name, "upstream request failed: {e}");
                local(StatusCode::BAD_GATEWAY, "the upstream server failed")
            }
            Err(UpstreamError::NoServer) => {
                local(StatusCode::SERVICE_UNAVAILABLE, "no upstream server")
            }
        }
    }

    fn uri(server: &str, path: &str) -> Result<Uri, UpstreamError> {
        format!("http://{server}{path}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamError::Other(e.to_string()))
    }

    async fn send(
        &self,
        pool: &Pool,
        index: usize,
        path: &str,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let server = pool.servers.get(index).ok_or(UpstreamError::NoServer)?;
        *req.uri_mut() = Self::uri(&server.address, path)?;
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        let result =
            tokio::time::timeout(pool.config.response_timeout, self.client.request(req)).await;
        server.in_flight.fetch_sub(1, Ordering::Relaxed);
        classify(result)
    }

    async fn send_empty(
        &self,
        pool: &Pool,
        index: usize,
        path: &str,
        parts: &mut http::request::Parts,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let server = pool.servers.get(index).ok_or(UpstreamError::NoServer)?;
        parts.uri = Self::uri(&server.address, path)?;
        let req = Request::from_parts(parts.clone(), http_body_util::Empty::new());
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        let result =
            tokio::time::timeout(pool.config.response_timeout, self.empty_client.request(req))
                .await;
        server.in_flight.fetch_sub(1, Ordering::Relaxed);
        classify(result)
    }
}

/// Why an upstream request failed.
#[derive(Debug)]
enum UpstreamError {
    /// No connection could be made (safe to try another server).
    Connect(String),
    /// No response headers within the pool's response timeout.
    Timeout,
    /// Anything else.
    Other(String),
    /// The pool has no server.
    NoServer,
}

fn classify(
    result: Result<
        Result<Response<Incoming>, hyper_util::client::legacy::Error>,
        tokio::time::error::Elapsed,
    >,
) -> Result<Response<Incoming>, UpstreamError> {
    match result {
        Err(_) => Err(UpstreamError::Timeout),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(e.to_string())),
        Ok(Err(e)) => Err(UpstreamError::Other(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn hosts_lose_their_port_and_case() {
        let r = Request::builder()
            .uri("/x")
            .header(header::HOST, "Example.COM:8443")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("example.com"));
        let r = Request::builder()
            .uri("/x")
            .header(header::HOST, "[::1]:8443")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("::1"));
        let r = Request::builder()
            .uri("https://h2.example:8443/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("h2.example"));
    }
}
