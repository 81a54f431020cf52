//! The HTTP side: each request goes through the phases of [`Phases`] (pingora's shape: route,
//! prepare the upstream request, then the response), to a server of its route's pool over a
//! pooled HTTP/1.1 connection. Bodies stream both ways; nothing is buffered whole.

use crate::bodies::{self, RequestBody, TiedResponse};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics::{counter, gauge, histogram};
use sealgate_config::{Balancing, Config, PoolConfig, RouteConfig, UpstreamProtocol};
use sealgate_monitoring::names as n;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A response body: the upstream's, streamed, or one the proxy made.
pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// What the proxy knows of the client's connection.
#[derive(Debug, Clone)]
pub(crate) struct ClientInfo {
    /// The client's address.
    pub(crate) addr: SocketAddr,
    /// Its IP address as text, as `X-Forwarded-For` gives it (made once per connection).
    ip: HeaderValue,
}

impl ClientInfo {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::try_from(addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { addr, ip }
    }
}

/// The steps every request goes through (pingora's phase trait, reduced to what sealgate
/// does): pick the route, shape the upstream request, shape the response.
pub(crate) trait Phases {
    /// The route of `req`, if any (else 404).
    fn route(&self, host: Option<&str>, path: &str) -> Option<&RouteConfig>;
    /// Turns the client's headers into the upstream's: hop-by-hop headers out, forwarding
    /// headers in.
    fn upstream_headers(&self, headers: &mut HeaderMap, client: &ClientInfo, host: Option<&str>);
    /// Turns the upstream's response headers into the client's.
    fn response_headers(&self, headers: &mut HeaderMap);
}

/// Consecutive failed requests (no connection, no answer in time) that eject a server.
const EJECT_AFTER: u32 = 3;
/// How long an ejected server gets no requests.
const EJECT_FOR: Duration = Duration::from_secs(10);

/// One upstream server: its requests in flight and its health.
#[derive(Debug)]
struct Server {
    address: String,
    /// `address` as a URI's authority (parsed once; None if it is not one).
    authority: Option<Authority>,
    in_flight: AtomicUsize,
    /// The last active health check's verdict (true without health checks).
    healthy: AtomicBool,
    /// Failed requests in a row (passive health).
    failures: AtomicU32,
    /// Ejected (passive health) until then.
    ejected_until: Mutex<Option<Instant>>,
}

impl Server {
    fn new(address: String) -> Self {
        Self {
            authority: address.parse().ok(),
            address,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
        }
    }

    fn usable(&self, now: Instant) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self
                .ejected_until
                .lock()
                .map_or(true, |until| until.is_none_or(|t| t <= now))
    }

    /// Counts a request's outcome; a server that fails `EJECT_AFTER` times in a row is
    /// ejected for `EJECT_FOR`.
    fn record(&self, ok: bool, pool: &str) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= EJECT_AFTER {
            self.failures.store(0, Ordering::Relaxed);
            if let Ok(mut until) = self.ejected_until.lock() {
                *until = Some(Instant::now() + EJECT_FOR);
            }
            tracing::warn!(
                pool,
                server = %self.address,
                "upstream server ejected for {EJECT_FOR:?} after {failures} failed requests in a row"
            );
        }
    }
}

/// A pool of servers.
#[derive(Debug)]
struct Pool {
    config: PoolConfig,
    /// The pool's name as a metrics label, shared (no allocation per request).
    label: Arc<str>,
    servers: Vec<Server>,
    next: AtomicUsize,
}

impl Pool {
    /// The server for the next request, avoiding `avoid` when another exists: among the
    /// healthy, not ejected servers, or among all when none is (as Envoy's panic mode: better
    /// a server that may fail than none).
    fn pick(&self, avoid: Option<usize>) -> usize {
        let n = self.servers.len();
        let now = Instant::now();
        let usable: Vec<usize> = (0..n)
            .filter(|i| self.servers.get(*i).is_some_and(|s| s.usable(now)))
            .collect();
        let mut candidates: Vec<usize> = if usable.is_empty() {
            (0..n).collect()
        } else {
            usable
        };
        if candidates.len() > 1 {
            candidates.retain(|i| Some(*i) != avoid);
        }
        match self.config.balancing {
            Balancing::RoundRobin => {
                let k = self.next.fetch_add(1, Ordering::Relaxed);
                candidates
                    .get(k % candidates.len().max(1))
                    .copied()
                    .unwrap_or(0)
            }
            Balancing::LeastRequests => candidates
                .into_iter()
                .min_by_key(|i| {
                    self.servers
                        .get(*i)
                        .map_or(usize::MAX, |s| s.in_flight.load(Ordering::Relaxed))
                })
                .unwrap_or(0),
        }
    }
}

/// Checks each server of `pool` every interval with `GET path`: a 2xx or 3xx answer within
/// the timeout is healthy. Runs until `stop`.
async fn health_checks(
    pool: Arc<Pool>,
    client: HttpClient<HttpConnector, http_body_util::Empty<Bytes>>,
    stop: CancellationToken,
) {
    let Some(check) = pool.config.health_check.clone() else {
        return;
    };
    loop {
        for server in &pool.servers {
            let uri = format!("http://{}{}", server.address, check.path);
            let healthy = match Request::get(uri)
                .header(header::USER_AGENT, "sealgate-health-check")
                .body(http_body_util::Empty::new())
            {
                Ok(req) => matches!(
                    tokio::time::timeout(check.timeout, client.request(req)).await,
                    Ok(Ok(r)) if r.status().is_success() || r.status().is_redirection()
                ),
                Err(_) => false,
            };
            let was = server.healthy.swap(healthy, Ordering::Relaxed);
            if was != healthy {
                tracing::warn!(
                    pool = %pool.config.name,
                    server = %server.address,
                    healthy,
                    "upstream server health changed"
                );
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(check.interval) => {}
        }
    }
}

/// Routes, pools and the upstream client of one configuration.
pub(crate) struct Forwarder {
    routes: Vec<RouteConfig>,
    pools: Vec<Arc<Pool>>,
    /// Ends the health checks when this forwarder is replaced (reload) and dropped.
    stop: CancellationToken,
    client: HttpClient<HttpConnector, RequestBody>,
    empty_client: HttpClient<HttpConnector, http_body_util::Empty<Bytes>>,
    /// The same for pools spoken to in HTTP/2 (h2c, prior knowledge).
    h2_client: HttpClient<HttpConnector, RequestBody>,
    h2_empty_client: HttpClient<HttpConnector, http_body_util::Empty<Bytes>>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded. Names made once, not parsed from
/// text on every request.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present (a handful) instead of a lookup per hop-by-hop name; the
    // names the Connection header lists are hop-by-hop too.
    let listed: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            HOP_BY_HOP.contains(name)
                || listed.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// `earlier, this` when the request already has the header (an earlier proxy's), else `this`.
fn append_to(headers: &HeaderMap, name: &HeaderName, this: &str) -> Option<HeaderValue> {
    match headers.get(name).map(HeaderValue::to_str) {
        Some(Ok(earlier)) => HeaderValue::try_from(format!("{earlier}, {this}")).ok(),
        // An earlier value that is not text is replaced.
        Some(Err(_)) | None => HeaderValue::from_str(this).ok(),
    }
}

/// `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` (RFC 7239), each appended to an earlier
/// proxy's value if the request has one.
fn add_forwarding_headers(headers: &mut HeaderMap, client: &ClientInfo, host: Option<&str>) {
    headers.reserve(4);
    let ip = client.ip.to_str().unwrap_or("unknown");
    let xff = if headers.contains_key(&X_FORWARDED_FOR) {
        append_to(headers, &X_FORWARDED_FOR, ip)
    } else {
        Some(client.ip.clone())
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    // RFC 7239: `for=` with an IPv6 address is quoted and bracketed.
    let mut forwarded = String::with_capacity(40 + host.map_or(0, str::len));
    if client.addr.is_ipv6() {
        forwarded.push_str("for=\"[");
        forwarded.push_str(ip);
        forwarded.push_str("]\"");
    } else {
        forwarded.push_str("for=");
        forwarded.push_str(ip);
    }
    forwarded.push_str(";proto=https");
    if let Some(host) = host {
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
        // Only a name or address goes into the quoted string (no quote or backslash can).
        if host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
        {
            forwarded.push_str(";host=\"");
            forwarded.push_str(host);
            forwarded.push('"');
        }
    } else {
        // The client's own claim is not passed on as if the proxy had made it.
        headers.remove(&X_FORWARDED_HOST);
    }
    if let Some(v) = append_to(headers, &header::FORWARDED, &forwarded) {
        headers.insert(header::FORWARDED, v);
    }
}

impl Phases for Forwarder {
    fn route(&self, host: Option<&str>, path: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| {
            r.host.as_deref().is_none_or(|h| Some(h) == host) && path.starts_with(&r.path_prefix)
        })
    }

    fn upstream_headers(&self, headers: &mut HeaderMap, client: &ClientInfo, host: Option<&str>) {
        remove_hop_by_hop(headers);
        add_forwarding_headers(headers, client, host);
    }

    fn response_headers(&self, headers: &mut HeaderMap) {
        remove_hop_by_hop(headers);
    }
}

/// A response the proxy makes itself (counted as the load balancer's own, `HTTPCode_ELB_*`).
pub(crate) fn local(status: StatusCode, text: &str) -> Response<ProxyBody> {
    if status.is_client_error() {
        counter!(n::HTTP_CODE_ELB_4XX_COUNT.name).increment(1);
    } else if status.is_server_error() {
        counter!(n::HTTP_CODE_ELB_5XX_COUNT.name).increment(1);
    }
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
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().host() {
        Some(host) => host,
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            if h.starts_with('[') {
                h.split_once(']')
                    .map_or(h, |(a, _)| a)
                    .trim_start_matches('[')
            } else {
                h.rsplit_once(':').map_or(h, |(a, _)| a)
            }
        }
    };
    let mut host = raw.to_owned();
    host.make_ascii_lowercase();
    Some(host)
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` and `Upgrade`).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if req.version() != http::Version::HTTP_11 || !asks {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections
/// until either side closes.
async fn join_upgraded(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!("upgraded connection ended: {e}");
    }
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
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|p| {
                Arc::new(Pool {
                    servers: p.servers.iter().map(|s| Server::new(s.clone())).collect(),
                    config: p.clone(),
                    label: Arc::from(p.name.as_str()),
                    next: AtomicUsize::new(0),
                })
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
            .build(connector.clone());
        let h2_client = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_only(true)
            .build(connector.clone());
        let h2_empty_client = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_only(true)
            .build(connector);
        let stop = CancellationToken::new();
        for pool in pools.iter().filter(|p| p.config.health_check.is_some()) {
            tokio::spawn(health_checks(
                Arc::clone(pool),
                empty_client.clone(),
                stop.clone(),
            ));
        }
        Self {
            routes: config.routes.clone(),
            pools,
            stop,
            client,
            empty_client,
            h2_client,
            h2_empty_client,
        }
    }

    /// Sets each pool's `HealthyHostCount` and `UnHealthyHostCount` (healthy: passing its
    /// health checks and not ejected).
    pub(crate) fn refresh_metrics(&self) {
        let now = Instant::now();
        for pool in &self.pools {
            let healthy = pool.servers.iter().filter(|s| s.usable(now)).count();
            let unhealthy = pool.servers.len() - healthy;
            let name = Arc::clone(&pool.label);
            gauge!(n::HEALTHY_HOST_COUNT.name, "pool" => name.clone()).set(healthy as f64);
            gauge!(n::UN_HEALTHY_HOST_COUNT.name, "pool" => name).set(unhealthy as f64);
        }
    }

    /// Serves one request.
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        client: &ClientInfo,
    ) -> Response<ProxyBody> {
        let host = request_host(&req);
        // An HTTP/1.1 Upgrade (WebSocket, say): the Upgrade header survives, and once the
        // upstream answers 101 the two connections are joined.
        let upgrade =
            upgrade_protocol(&req).map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
        let Some(route) = self.route(host.as_deref(), req.uri().path()) else {
            return local(StatusCode::NOT_FOUND, "no route for this host and path");
        };
        let Some(pool) = self.pools.get(route.pool) else {
            return local(StatusCode::BAD_GATEWAY, "the route's pool is missing");
        };
        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        self.upstream_headers(&mut parts.headers, client, host.as_deref());
        if host.is_some() && !parts.headers.contains_key(header::HOST) {
            // HTTP/2 clients send :authority; HTTP/1.1 upstreams need Host.
            if let Some(v) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
                parts.headers.insert(header::HOST, v);
            }
        }
        parts.version = match pool.config.protocol {
            UpstreamProtocol::Http1 => http::Version::HTTP_11,
            UpstreamProtocol::H2c => http::Version::HTTP_2,
        };
        if let Some((protocol, _)) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let req = Request::from_parts(parts, body);

        let first = pool.pick(None);
        // A request with a body: its end is tied to the response (see `crate::bodies`).
        let mut end = None;
        let response = if retryable(&req) {
            // No body: the request can be sent again to a second server, if the pool has one
            // (only then is a copy kept).
            let (parts, _) = req.into_parts();
            let spare = (pool.servers.len() > 1).then(|| parts.clone());
            let result = self.send_empty(pool, first, &path, parts).await;
            match (result, spare) {
                (Err(UpstreamError::Connect(_)), Some(parts)) => {
                    let second = pool.pick(Some(first));
                    self.send_empty(pool, second, &path, parts).await
                }
                (result, _) => result,
            }
        } else {
            let (parts, body) = req.into_parts();
            let (body, tie) = bodies::pair(body, client_version);
            end = Some(tie);
            self.send(pool, first, &path, Request::from_parts(parts, body))
                .await
        };
        let response = match response {
            Ok(mut response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let Some((_, client_side)) = upgrade else {
                    return local(
                        StatusCode::BAD_GATEWAY,
                        "the upstream server switched protocols unasked",
                    );
                };
                let upstream_side = hyper::upgrade::on(&mut response);
                tokio::spawn(join_upgraded(client_side, upstream_side));
                response
            }
            Ok(mut response) => {
                self.response_headers(response.headers_mut());
                response
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
        };
        match end {
            Some(end) => response.map(|body| TiedResponse::new(body, end).boxed()),
            None => response,
        }
    }

    /// `http://SERVER/PATH`, from the server's authority parsed once.
    fn uri(server: &Server, path: &PathAndQuery) -> Result<Uri, UpstreamError> {
        let authority = server.authority.clone().ok_or_else(|| {
            UpstreamError::Other(format!("{:?} is not host:port", server.address))
        })?;
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(path.clone());
        Uri::from_parts(uri).map_err(|e| UpstreamError::Other(e.to_string()))
    }

    async fn send(
        &self,
        pool: &Pool,
        index: usize,
        path: &PathAndQuery,
        mut req: Request<RequestBody>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let server = pool.servers.get(index).ok_or(UpstreamError::NoServer)?;
        *req.uri_mut() = Self::uri(server, path)?;
        let client = match pool.config.protocol {
            UpstreamProtocol::Http1 => &self.client,
            UpstreamProtocol::H2c => &self.h2_client,
        };
        let response = timed(pool, server, client, req).await?;
        Ok(response.map(BodyExt::boxed))
    }

    async fn send_empty(
        &self,
        pool: &Pool,
        index: usize,
        path: &PathAndQuery,
        mut parts: http::request::Parts,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let server = pool.servers.get(index).ok_or(UpstreamError::NoServer)?;
        parts.uri = Self::uri(server, path)?;
        let req = Request::from_parts(parts, http_body_util::Empty::new());
        let client = match pool.config.protocol {
            UpstreamProtocol::Http1 => &self.empty_client,
            UpstreamProtocol::H2c => &self.h2_empty_client,
        };
        let response = timed(pool, server, client, req).await?;
        Ok(response.map(BodyExt::boxed))
    }
}

/// Sends `req` to `server` with `client` within the pool's response timeout, counting it in
/// flight and recording the outcome for passive health.
async fn timed<B>(
    pool: &Pool,
    server: &Server,
    client: &HttpClient<HttpConnector, B>,
    req: Request<B>,
) -> Result<Response<Incoming>, UpstreamError>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    server.in_flight.fetch_add(1, Ordering::Relaxed);
    let sent = Instant::now();
    let result = tokio::time::timeout(pool.config.response_timeout, client.request(req)).await;
    server.in_flight.fetch_sub(1, Ordering::Relaxed);
    let mut result = classify(result);
    let name = Arc::clone(&pool.label);
    match &mut result {
        Ok(response) => {
            let took = sent.elapsed();
            histogram!(n::TARGET_RESPONSE_TIME.name, "pool" => name.clone())
                .record(took.as_secs_f64());
            response
                .extensions_mut()
                .insert(crate::access::UpstreamTime(took));
            let class = match response.status().as_u16() {
                200..=299 => n::HTTP_CODE_TARGET_2XX_COUNT,
                300..=399 => n::HTTP_CODE_TARGET_3XX_COUNT,
                400..=499 => n::HTTP_CODE_TARGET_4XX_COUNT,
                _ => n::HTTP_CODE_TARGET_5XX_COUNT,
            };
            // A 101 (an upgrade) is no response class the load balancer counts.
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                counter!(class.name, "pool" => name).increment(1);
            }
        }
        Err(UpstreamError::Connect(_)) => {
            counter!(n::TARGET_CONNECTION_ERROR_COUNT.name, "pool" => name).increment(1);
        }
        Err(_) => {}
    }
    server.record(
        !matches!(
            result,
            Err(UpstreamError::Connect(_) | UpstreamError::Timeout)
        ),
        &pool.config.name,
    );
    result
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
    fn forwarding_headers_name_the_client_and_append_to_an_earlier_proxys() {
        let v4 = ClientInfo::new("192.0.2.7:5000".parse().unwrap());
        let mut h = HeaderMap::new();
        add_forwarding_headers(&mut h, &v4, Some("example.com"));
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=https;host=\"example.com\""
        );

        let v6 = ClientInfo::new("[2001:db8::1]:443".parse().unwrap());
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        h.insert("forwarded", HeaderValue::from_static("for=198.51.100.1"));
        h.insert("x-forwarded-host", HeaderValue::from_static("spoofed"));
        add_forwarding_headers(&mut h, &v6, None);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 2001:db8::1");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.1, for=\"[2001:db8::1]\";proto=https"
        );
        assert!(!h.contains_key("x-forwarded-host"));
        // A host that would break out of Forwarded's quoted string is left out of it.
        let mut h = HeaderMap::new();
        add_forwarding_headers(&mut h, &v4, Some("a\";for=evil"));
        assert_eq!(h["forwarded"], "for=192.0.2.7;proto=https");
        // Not text: replaced, not appended to.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        add_forwarding_headers(&mut h, &v4, None);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    fn pool(balancing: Balancing, n: usize) -> Pool {
        Pool {
            config: PoolConfig {
                name: "p".into(),
                servers: (0..n).map(|i| format!("127.0.0.1:{}", 9000 + i)).collect(),
                balancing,
                protocol: UpstreamProtocol::Http1,
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(1),
                health_check: None,
            },
            label: Arc::from("p"),
            servers: (0..n)
                .map(|i| Server::new(format!("127.0.0.1:{}", 9000 + i)))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    fn picks(p: &Pool, avoid: Option<usize>) -> std::collections::BTreeSet<usize> {
        (0..30).map(|_| p.pick(avoid)).collect()
    }

    #[test]
    fn unhealthy_and_ejected_servers_get_no_requests_unless_none_is_left() {
        for balancing in [Balancing::RoundRobin, Balancing::LeastRequests] {
            let p = pool(balancing, 3);
            if balancing == Balancing::RoundRobin {
                assert_eq!(picks(&p, None).len(), 3);
            }
            p.servers[0].healthy.store(false, Ordering::Relaxed);
            for _ in 0..EJECT_AFTER {
                p.servers[1].record(false, "p");
            }
            assert_eq!(picks(&p, None), [2].into(), "{balancing:?}");
            // Avoiding the only usable server still gives it: there is no other.
            assert_eq!(picks(&p, Some(2)), [2].into(), "{balancing:?}");
            p.servers[2].healthy.store(false, Ordering::Relaxed);
            // None usable: every server is a candidate again.
            assert!(picks(&p, None).len() > 1 || balancing == Balancing::LeastRequests);
        }
        // Failures must be consecutive: a success in between resets the count.
        let p = pool(Balancing::RoundRobin, 2);
        p.servers[0].record(false, "p");
        p.servers[0].record(false, "p");
        p.servers[0].record(true, "p");
        p.servers[0].record(false, "p");
        assert_eq!(picks(&p, None).len(), 2);
    }

    #[test]
    fn least_requests_prefers_the_idle_server() {
        let p = pool(Balancing::LeastRequests, 2);
        p.servers[0].in_flight.store(5, Ordering::Relaxed);
        assert_eq!(picks(&p, None), [1].into());
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
