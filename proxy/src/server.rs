//! Listeners: accept TCP, run the TLS handshake through the handshake driver (the signing step
//! off the runtime workers), then serve HTTP/1.1 or HTTP/2 (by ALPN) with hyper, each request
//! through the [`Forwarder`].

use crate::ProxyError;
use crate::access::{Access, LoggedBody, UpstreamTime};
use crate::certs::CertResolver;
use crate::forward::{ClientInfo, Forwarder};
use crate::signer::{SignCounters, in_handshake_pool};
use http_body_util::BodyExt as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::{counter, gauge};
use rustls::ServerConfig;
use rustls::server::Acceptor;
use sealgate_config::{Config, ProxyLimits};
use sealgate_hsm_client::Client;
use sealgate_monitoring::io::{Counted, Octets};
use sealgate_monitoring::names as n;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// hyper's limit on the header count of an HTTP/1.1 request when none is set.
const HYPER_MAX_HEADERS: usize = 100;

/// Counters of the proxy's work.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Signatures asked of the HSM.
    pub signs: Arc<SignCounters>,
    /// TLS handshakes completed (full and resumed).
    pub handshakes: AtomicU64,
    /// Handshakes that failed.
    pub handshake_errors: AtomicU64,
    /// HTTP requests served.
    pub requests: AtomicU64,
    /// Bytes received from and sent to clients (TLS records).
    pub octets: Arc<Octets>,
}

/// Where the signing step of a handshake runs (DESIGN.md §2). In both, the ClientHello is read
/// on the runtime and at most `max_handshakes_in_flight` handshakes are in their signing step
/// at once. `BlockInPlace` is the default: measured side by side against `Offload` on this
/// machine it took 0.80–0.96× the CPU per full handshake at the same or a higher rate
/// (BENCHMARKS.md, "Handshake driver"); `SEALGATE_HANDSHAKE_DRIVER=offload` selects the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeDriver {
    /// The signing step on a runtime worker; the signer waits for the HSM inside
    /// `block_in_place`, which hands the worker's other tasks to another thread meanwhile.
    BlockInPlace,
    /// The signing step on tokio's blocking pool; the worker is never blocked, at the cost of
    /// one more hand-off between threads per handshake.
    Offload,
}

impl HandshakeDriver {
    /// The driver `SEALGATE_HANDSHAKE_DRIVER` names (`block-in-place`, the default, or
    /// `offload`).
    pub fn from_env() -> Self {
        match std::env::var("SEALGATE_HANDSHAKE_DRIVER").as_deref() {
            Ok("offload") => Self::Offload,
            _ => Self::BlockInPlace,
        }
    }
}

/// A running proxy.
pub struct Proxy {
    addrs: Vec<SocketAddr>,
    listeners: Vec<Arc<Listener>>,
    forwarder: Arc<RwLock<Arc<Forwarder>>>,
    client: Client,
    stats: Arc<ProxyStats>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// What every connection of a listener shares. The TLS configuration and the forwarder are
/// replaced on reload; connections already open keep theirs for TLS, and take the new routes
/// for their next request.
struct Listener {
    bind: SocketAddr,
    tls: RwLock<Arc<ServerConfig>>,
    /// The session-ticket keys, kept across reloads so that resumption goes on.
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    forwarder: Arc<RwLock<Arc<Forwarder>>>,
    driver: HandshakeDriver,
    limits: ProxyLimits,
    /// `[logging] access_log`: one line per request (changed by a reload).
    access_log: AtomicBool,
    handshakes: Arc<Semaphore>,
    stats: Arc<ProxyStats>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// The cipher suites, in the server's order of preference: aws-lc-rs's suites (all AEAD with
/// forward secrecy), AES-128-GCM first. Its key schedule hashes with SHA-256, which x86-64
/// (SHA-NI) and ARMv8 compute in hardware, where AES-256-GCM's SHA-384 runs in software: SHA-384
/// took 10 % of the proxy's CPU in full handshakes with clients that list AES-256 first
/// (rustls, OpenSSL), for no security a web server needs.
fn cipher_suites() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

/// The TLS configuration of a listener: TLS 1.3 and 1.2 with [`cipher_suites`] in the
/// server's order, ALPN h2 and http/1.1, stateless session tickets (keys rotated every six
/// hours by rustls' ticketer) so resumed handshakes need no signature.
fn tls_config(
    resolver: CertResolver,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
) -> Result<ServerConfig, ProxyError> {
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: cipher_suites(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    config.ticketer = ticketer;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16_384);
    Ok(config)
}

impl Proxy {
    /// Loads every listener's certificates (keys found in the HSM through `client`), binds the
    /// listeners and starts serving on the current runtime.
    pub async fn start(config: &Config, client: Client) -> Result<Self, ProxyError> {
        let stats = Arc::new(ProxyStats::default());
        let forwarder = Arc::new(RwLock::new(Arc::new(Forwarder::new(config))));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let handshakes = Arc::new(Semaphore::new(config.proxy.max_handshakes_in_flight));
        let mut addrs = Vec::with_capacity(config.listeners.len());
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let resolver = CertResolver::load(&l.certificates, &client, &stats.signs).await?;
            let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
                .map_err(|e| ProxyError::Tls(e.to_string()))?;
            let tls = Arc::new(tls_config(resolver, Arc::clone(&ticketer))?);
            let socket = TcpListener::bind(l.bind)
                .await
                .map_err(|source| ProxyError::Bind {
                    address: l.bind,
                    source,
                })?;
            let addr = socket.local_addr().map_err(|source| ProxyError::Bind {
                address: l.bind,
                source,
            })?;
            info!(address = %addr, "proxy listening (TLS 1.3/1.2, h2 and http/1.1)");
            addrs.push(addr);
            let listener = Arc::new(Listener {
                bind: l.bind,
                tls: RwLock::new(tls),
                ticketer,
                forwarder: Arc::clone(&forwarder),
                driver: HandshakeDriver::from_env(),
                limits: config.proxy,
                access_log: AtomicBool::new(config.logging.access_log),
                handshakes: Arc::clone(&handshakes),
                stats: Arc::clone(&stats),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
            });
            tracker.spawn(accept_loop(Arc::clone(&listener), socket));
            listeners.push(listener);
        }
        Ok(Self {
            addrs,
            listeners,
            forwarder,
            client,
            stats,
            shutdown,
            tracker,
            grace: config.proxy.shutdown_grace,
        })
    }

    /// The listeners' addresses (real ports when 0 was configured), in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The proxy's counters.
    pub fn stats(&self) -> &Arc<ProxyStats> {
        &self.stats
    }

    /// A function that sets the proxy's gauges and kept counters (upstream health,
    /// `ProcessedBytes`) from its state, for a metrics endpoint to call before each scrape.
    pub fn metrics_refresher(&self) -> impl Fn() + Send + Sync + 'static {
        let forwarder = Arc::clone(&self.forwarder);
        let stats = Arc::clone(&self.stats);
        move || {
            if let Ok(f) = forwarder.read() {
                f.refresh_metrics();
            }
            let octets = &stats.octets;
            counter!(n::PROCESSED_BYTES.name).absolute(
                octets.input.load(Ordering::Relaxed) + octets.output.load(Ordering::Relaxed),
            );
        }
    }

    /// Applies a new configuration without dropping a connection: certificates (keys looked
    /// up in the HSM again), routes and pools. New handshakes use the new certificates; every
    /// request from now on, on new and open connections, the new routes. The listeners'
    /// addresses cannot change without a restart. On any error nothing changes.
    pub async fn reload(&self, config: &Config) -> Result<(), ProxyError> {
        let binds: Vec<SocketAddr> = config.listeners.iter().map(|l| l.bind).collect();
        let current: Vec<SocketAddr> = self.listeners.iter().map(|l| l.bind).collect();
        if binds != current {
            return Err(ProxyError::Reload(
                "the listeners' addresses changed; that needs a restart".into(),
            ));
        }
        let mut tls = Vec::with_capacity(self.listeners.len());
        for (l, c) in self.listeners.iter().zip(&config.listeners) {
            let resolver =
                CertResolver::load(&c.certificates, &self.client, &self.stats.signs).await?;
            tls.push(Arc::new(tls_config(resolver, Arc::clone(&l.ticketer))?));
        }
        let forwarder = Arc::new(Forwarder::new(config));
        for (l, t) in self.listeners.iter().zip(tls) {
            if let Ok(mut slot) = l.tls.write() {
                *slot = t;
            }
            l.access_log
                .store(config.logging.access_log, Ordering::Relaxed);
        }
        if let Ok(mut slot) = self.forwarder.write() {
            *slot = forwarder;
        }
        info!("configuration reloaded");
        Ok(())
    }

    /// Stops accepting, lets requests in flight finish (up to the grace period), then returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!("connections still open after the grace period are dropped");
        }
    }
}

async fn accept_loop(listener: Arc<Listener>, socket: TcpListener) {
    loop {
        let accepted = tokio::select! {
            () = listener.shutdown.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                counter!(n::NEW_CONNECTION_COUNT.name).increment(1);
                let _ = tcp.set_nodelay(true);
                let l = Arc::clone(&listener);
                listener.tracker.spawn(connection(l, tcp, peer));
            }
            Err(e) => {
                // Out of file descriptors, say: pause instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The TLS handshake: the ClientHello is read on the runtime; the step in which rustls signs
/// (`into_stream`) runs, at most `max_handshakes_in_flight` at once, on this worker
/// (`BlockInPlace`: the signer waits in `block_in_place`) or on a blocking thread (`Offload`);
/// the rest of the handshake runs on the runtime.
async fn handshake(
    l: &Listener,
    tcp: Counted<TcpStream>,
) -> Result<tokio_rustls::server::TlsStream<Counted<TcpStream>>, String> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), tcp)
        .await
        .map_err(|e| format!("no valid ClientHello: {e}"))?;
    let permit = Arc::clone(&l.handshakes)
        .acquire_owned()
        .await
        .map_err(|_| "shutting down".to_owned())?;
    let config = l
        .tls
        .read()
        .map(|c| Arc::clone(&c))
        .map_err(|_| "TLS configuration unavailable".to_owned())?;
    let accept = match l.driver {
        HandshakeDriver::BlockInPlace => {
            let accept = start.into_stream(config);
            drop(permit);
            accept
        }
        HandshakeDriver::Offload => tokio::task::spawn_blocking(move || {
            let accept = in_handshake_pool(|| start.into_stream(config));
            drop(permit);
            accept
        })
        .await
        .map_err(|e| format!("handshake task failed: {e}"))?,
    };
    accept
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))
}

async fn connection(l: Arc<Listener>, tcp: TcpStream, peer: SocketAddr) {
    let _open = OpenConnection::new();
    let tcp = Counted::new(tcp, Arc::clone(&l.stats.octets));
    let tls = match tokio::time::timeout(l.limits.handshake_timeout, handshake(&l, tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            l.stats.handshake_errors.fetch_add(1, Ordering::Relaxed);
            counter!(n::CLIENT_TLS_NEGOTIATION_ERROR_COUNT.name).increment(1);
            debug!(%peer, "{e}");
            return;
        }
        Err(_) => {
            l.stats.handshake_errors.fetch_add(1, Ordering::Relaxed);
            counter!(n::CLIENT_TLS_NEGOTIATION_ERROR_COUNT.name).increment(1);
            debug!(%peer, "no TLS handshake within {:?}", l.limits.handshake_timeout);
            return;
        }
    };
    l.stats.handshakes.fetch_add(1, Ordering::Relaxed);
    let kind = match tls.get_ref().1.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        _ => "full",
    };
    counter!(n::TLS_HANDSHAKES.name, "kind" => kind).increment(1);
    let version = match tls.get_ref().1.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLSv1.3",
    };
    // HTTP/2 only when ALPN chose it (RFC 9113 §3.2): the protocol is known before the first
    // byte, so the header-read timer runs from the start (an auto-detecting server would wait
    // for enough bytes to tell, with no timer).
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let forwarder = Arc::clone(&l.forwarder);
    let stats = Arc::clone(&l.stats);
    let activity = Arc::new(Activity::new());
    let info = ClientInfo::new(peer);
    let max_headers = l.limits.max_headers;
    let service = {
        let activity = Arc::clone(&activity);
        let listener = Arc::clone(&l);
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            stats.requests.fetch_add(1, Ordering::Relaxed);
            counter!(n::REQUEST_COUNT.name).increment(1);
            // What the access line needs of the request, taken before it is forwarded.
            let access = listener.access_log.load(Ordering::Relaxed).then(|| Access {
                client: info.addr,
                host: crate::forward::request_host(&req).unwrap_or_default(),
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
                status: http::StatusCode::OK,
                upstream: None,
                started: std::time::Instant::now(),
                tls: version,
                handshake: kind,
            });
            // The routes in force now (a reload may have replaced them since the last request).
            let f = forwarder.read().map(|f| Arc::clone(&f)).ok();
            let busy = activity.begin();
            let info = info.clone();
            // Boxed: hyper moves the future it is given (HTTP/2 spawns a task with it), and a
            // request's future is a few kilobytes; a box is moved as a pointer.
            Box::pin(async move {
                let _busy = busy;
                // hyper enforces the count for HTTP/1.1; HTTP/2 has no such setting.
                let response = if req.headers().len() > max_headers {
                    crate::forward::local(
                        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "too many request headers",
                    )
                } else {
                    match f {
                        Some(f) => f.handle(req, &info).await,
                        None => crate::forward::local(
                            http::StatusCode::INTERNAL_SERVER_ERROR,
                            "the proxy's routes are unavailable",
                        ),
                    }
                };
                let Some(mut access) = access else {
                    return Ok::<_, std::convert::Infallible>(response);
                };
                access.status = response.status();
                access.upstream = response.extensions().get::<UpstreamTime>().map(|t| t.0);
                let (parts, body) = response.into_parts();
                let body = LoggedBody::new(body, access).boxed();
                Ok(http::Response::from_parts(parts, body))
            })
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut h1 = builder.http1();
    h1.timer(TokioTimer::new())
        .header_read_timeout(l.limits.request_header_timeout)
        .max_buf_size(l.limits.max_header_bytes.max(8192));
    // Only a limit other than hyper's own default is set: with one set, hyper fills a table of
    // that many entries for every request it parses; with its default, the table is a
    // constant (about 1 % of the CPU of a keep-alive request).
    if l.limits.max_headers != HYPER_MAX_HEADERS {
        h1.max_headers(l.limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(l.limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(l.limits.idle_timeout / 2));
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let idle = l.limits.idle_timeout;
    let mut closing = false;
    // After an idle close starts, how long the client has to take it (an HTTP/2 client must
    // answer the GOAWAY's ping) before the connection is dropped.
    let mut hard_close: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            () = l.shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            // No request for `idle_timeout`: close (HTTP/2: GOAWAY).
            () = tokio::time::sleep(idle / 4), if !closing => {
                if activity.idle_for() >= idle {
                    debug!(%peer, "closing a connection idle for {idle:?}");
                    closing = true;
                    hard_close = Some(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                    conn.as_mut().graceful_shutdown();
                }
            }
            () = tokio::time::sleep_until(hard_close.unwrap_or_else(tokio::time::Instant::now)),
                if hard_close.is_some() => {
                debug!(%peer, "dropping an idle connection that did not close");
                return;
            }
        }
    }
}

/// An open client connection, counted in `ActiveConnectionCount` while it lives.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        gauge!(n::ACTIVE_CONNECTION_COUNT.name).increment(1.0);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        gauge!(n::ACTIVE_CONNECTION_COUNT.name).decrement(1.0);
    }
}

/// How long an idle connection being closed has to finish closing before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Requests in flight on a connection and when the last one ended.
struct Activity {
    in_flight: AtomicU64,
    last: std::sync::Mutex<tokio::time::Instant>,
}

/// A request in flight; ends it when dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut last) = self.0.last.lock() {
            *last = tokio::time::Instant::now();
        }
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            last: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }

    /// How long the connection has had no request in flight (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.last.lock().map_or(Duration::ZERO, |l| l.elapsed())
    }
}
