//! Hostile clients at a real `sealgate serve --config` (remote mode, a one-node HSM cluster
//! holding the certificate's key): plain HTTP on the TLS port, garbage after the handshake,
//! oversized and too many headers, slowloris (a partial request head, a dribbled one, a stalled
//! ClientHello), an upstream that never answers, one that is down, and host routes. Each gets
//! the right status or a close within its limit, and after each one the proxy still serves a
//! normal curl request; HTTP/2 works at the end, and SIGTERM stops serve with status 0.
//! Two limits have tests of their own: clients that fall silent right after the handshake are
//! closed within the header or idle timeout, and the header count limit holds over HTTP/2.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};
use support::proxy::tls::{self, Answer, End};
use support::proxy::{CurlResult, Serve, Site, Upstream, curl, free_port};

/// `request_header_timeout_ms` in the configuration.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// `handshake_timeout_ms`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// `idle_timeout_ms`.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// The `hang` pool's `response_timeout_ms`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// `shutdown_grace_ms` (the default).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// What a timeout may overrun by on a loaded test machine.
const SLACK: Duration = Duration::from_secs(4);
/// How long to wait for a close that should come at once.
const PROMPT: Duration = Duration::from_secs(5);

/// The proxy, its upstreams and the HSM cluster behind it.
struct Proxy {
    site: Site,
    serve: Serve,
    /// `/` for any host.
    echo: Upstream,
    /// `/` for host `only.example`.
    only: Upstream,
    /// `/hang`: accepts and never answers.
    hang: Upstream,
}

fn proxy_toml(echo: &Upstream, only: &Upstream, hang: &Upstream, down: u16) -> String {
    format!(
        r#"[proxy]
request_header_timeout_ms = {header}
handshake_timeout_ms = {handshake}
idle_timeout_ms = {idle}

[[proxy.listeners]]
bind = "127.0.0.1:0"
[[proxy.listeners.certificates]]
chain = "web.pem"
key = {{ label = "web" }}

[[proxy.routes]]
host = "only.example"
path_prefix = "/"
pool = "only"
[[proxy.routes]]
path_prefix = "/hang"
pool = "hang"
[[proxy.routes]]
path_prefix = "/down"
pool = "down"
[[proxy.routes]]
path_prefix = "/"
pool = "echo"

[[proxy.pools]]
name = "echo"
servers = ["{echo}"]
[[proxy.pools]]
name = "only"
servers = ["{only}"]
[[proxy.pools]]
name = "hang"
servers = ["{hang}"]
response_timeout_ms = {response}
[[proxy.pools]]
name = "down"
servers = ["127.0.0.1:{down}"]
"#,
        header = HEADER_TIMEOUT.as_millis(),
        handshake = HANDSHAKE_TIMEOUT.as_millis(),
        idle = IDLE_TIMEOUT.as_millis(),
        response = RESPONSE_TIMEOUT.as_millis(),
        echo = echo.addr,
        only = only.addr,
        hang = hang.addr,
    )
}

impl Proxy {
    fn start() -> Self {
        let site = Site::new(1);
        let (echo, only, hang) = (
            Upstream::echo("echo"),
            Upstream::echo("only"),
            Upstream::hang(),
        );
        site.write_config(&proxy_toml(&echo, &only, &hang, free_port()));
        let serve = site.serve();
        Self {
            site,
            serve,
            echo,
            only,
            hang,
        }
    }

    fn curl(&self, path: &str, extra: &[&str]) -> CurlResult {
        curl(&self.site.cert, self.serve.port(), path, extra)
    }

    /// A normal request still gets the echo upstream's answer.
    fn still_serves(&self, after: &str) {
        let r = self.curl("/", &[]);
        assert!(
            r.ok && r.status == 200 && r.body.starts_with("echo GET / host=localhost"),
            "after {after}, a normal request failed: {r:?}\nserve's log:\n{}",
            self.serve.log_text()
        );
    }

    fn tls_h1(&self) -> std::sync::Arc<rustls::ClientConfig> {
        tls::client_config(&self.site.cert, &[b"http/1.1"])
    }

    /// A TLS connection with ALPN http/1.1.
    async fn connect(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        tls::connect(self.serve.addr, self.tls_h1())
            .await
            .expect("TLS connection to the proxy")
    }

    /// Over a new TLS connection: `bytes`, then what comes back until the proxy closes. The
    /// bytes must not reach the upstream.
    async fn send_tls(&self, bytes: &[u8]) -> Answer {
        let forwarded = self.echo.requests();
        let mut conn = self.connect().await;
        let answer = tls::send_and_read(&mut conn, bytes, PROMPT).await;
        assert_eq!(
            self.echo.requests(),
            forwarded,
            "a bad request was forwarded: {:?}",
            String::from_utf8_lossy(bytes.get(..bytes.len().min(200)).unwrap_or_default())
        );
        answer
    }

    /// Stops serve with SIGTERM: it must exit 0, and its log must show no panic.
    fn stop(mut self) {
        let status = self.serve.terminate();
        let log = self.serve.log_text();
        assert!(status.success(), "serve exited with {status}; log:\n{log}");
        assert!(!log.contains("panicked"), "serve panicked; log:\n{log}");
    }
}

fn request_with(headers: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nhost: localhost\r\n{headers}\r\n").into_bytes()
}

/// An HTTP answer with an error status (one of `allowed`) or a close without any answer.
fn refused(answer: &Answer, allowed: &[u16]) -> bool {
    eprintln!(
        "answer: status {:?}, {} bytes, {:?} after {:?}",
        answer.status(),
        answer.bytes.len(),
        answer.end,
        answer.elapsed
    );
    answer.closed()
        && (answer.bytes.is_empty() || answer.status().is_some_and(|s| allowed.contains(&s)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_an_error_or_a_close_and_others_keep_being_served() {
    let proxy = Proxy::start();
    proxy.still_serves("the start");

    // Plain HTTP on the TLS port: no ClientHello, closed without an HTTP answer (a TLS alert at
    // most).
    let mut tcp = tokio::net::TcpStream::connect(proxy.serve.addr)
        .await
        .unwrap();
    let answer = tls::send_and_read(
        &mut tcp,
        b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n",
        PROMPT,
    )
    .await;
    eprintln!(
        "plain HTTP on the TLS port: {:02x?}, {:?} after {:?}",
        answer.bytes, answer.end, answer.elapsed
    );
    assert!(
        answer.closed() && !answer.bytes.starts_with(b"HTTP/"),
        "plain HTTP on the TLS port must be closed without an HTTP answer: {answer:?}"
    );
    proxy.still_serves("plain HTTP on the TLS port");

    // Garbage after the TLS handshake: 400 or a close.
    let answer = proxy
        .send_tls(b"\x16\x03\x01\x00\xff\xfe garbage \x00\x01\x02\r\n\r\n")
        .await;
    assert!(
        refused(&answer, &[400]),
        "garbage after the handshake must be answered 400 or closed: {answer:?} ({})",
        answer.head()
    );
    proxy.still_serves("garbage after the handshake");

    // The HTTP/2 preface, then a frame that is not one (ALPN h2): closed (after a GOAWAY).
    let mut conn = tls::connect(
        proxy.serve.addr,
        tls::client_config(&proxy.site.cert, &[b"h2"]),
    )
    .await
    .unwrap();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0xff; 64]);
    let answer = tls::send_and_read(&mut conn, &bytes, PROMPT).await;
    eprintln!(
        "HTTP/2 preface and garbage: {} bytes, {:?} after {:?}",
        answer.bytes.len(),
        answer.end,
        answer.elapsed
    );
    assert!(
        answer.closed() && !answer.bytes.starts_with(b"HTTP/1.1 200"),
        "an HTTP/2 preface followed by garbage must be closed: {answer:?}"
    );
    proxy.still_serves("garbage after the HTTP/2 preface");

    // A request line that is not HTTP, a header with a NUL byte, two different
    // Content-Lengths: 400 or a close.
    for (what, bytes) in [
        ("a request line that is not HTTP", b"GET\r\n\r\n".to_vec()),
        ("a header with a NUL byte", request_with("x-bad: a\0b\r\n")),
        (
            "two different Content-Length headers",
            b"POST / HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\n\
              content-length: 6\r\n\r\nhello!"
                .to_vec(),
        ),
    ] {
        let answer = proxy.send_tls(&bytes).await;
        assert!(
            refused(&answer, &[400]),
            "{what} must be answered 400 or closed: {answer:?} ({})",
            answer.head()
        );
        proxy.still_serves(what);
    }

    // Oversized headers over HTTP/1.1: one header of 100 KiB, and 200 headers (the defaults
    // allow 64 KiB and 100): 431 (or 400) or a close, never a 200.
    let big = format!("x-big: {}\r\n", "a".repeat(100 << 10));
    let many: String = (0..200).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    for (what, headers) in [
        ("a 100 KiB header (HTTP/1.1)", big),
        ("200 headers (HTTP/1.1)", many),
    ] {
        let answer = proxy.send_tls(&request_with(&headers)).await;
        assert!(
            refused(&answer, &[431, 400]),
            "{what} must be answered 431 or 400, or closed: {answer:?} ({})",
            answer.head()
        );
        proxy.still_serves(what);
    }
    // And over HTTP/2 (curl): a 100 KiB header is over max_header_bytes.
    let big_header = format!("x-big: {}", "a".repeat(100 << 10));
    let r = proxy.curl("/", &["--http2", "-H", &big_header]);
    eprintln!(
        "100 KiB header over HTTP/2: {} {:?} {}",
        r.status,
        r.ok,
        r.stderr.trim()
    );
    assert!(
        r.status != 200 && (r.status == 431 || r.status == 400 || !r.ok),
        "a 100 KiB header over HTTP/2 must be refused (431/400 or a reset): {r:?}"
    );
    proxy.still_serves("a 100 KiB header over HTTP/2");

    // Slowloris: a partial request head, then nothing. The proxy closes the connection once
    // request_header_timeout has passed; meanwhile it serves others.
    let mut conn = proxy.connect().await;
    let waiting = tokio::spawn(async move {
        tls::send_and_read(
            &mut conn,
            b"GET / HTTP/1.1\r\nhost: localhost\r\nx-slow: ",
            HEADER_TIMEOUT + SLACK + SLACK,
        )
        .await
    });
    proxy.still_serves("(during) a partial request head");
    let answer = waiting.await.unwrap();
    eprintln!(
        "partial request head: closed after {:?} ({:?})",
        answer.elapsed, answer.end
    );
    assert!(
        refused(&answer, &[408, 400]),
        "a partial request head must be closed (408 at most): {answer:?}"
    );
    assert!(
        answer.elapsed >= HEADER_TIMEOUT.mul_f32(0.9) && answer.elapsed < HEADER_TIMEOUT + SLACK,
        "a partial request head must be closed after request_header_timeout ({HEADER_TIMEOUT:?}) \
         and within {:?}; it took {:?}",
        HEADER_TIMEOUT + SLACK,
        answer.elapsed
    );
    proxy.still_serves("a partial request head");

    // Slowloris proper: a request head dribbled a byte every 200 ms; the header timeout counts
    // from the start, not from the last byte.
    let mut conn = proxy.connect().await;
    let start = Instant::now();
    let head = [
        &b"GET / HTTP/1.1\r\nhost: localhost\r\nx-slow: "[..],
        &[b'a'; 50],
    ]
    .concat();
    let mut sent_all = true;
    for byte in head.chunks(1) {
        use tokio::io::AsyncWriteExt;
        if conn.write_all(byte).await.is_err() || conn.flush().await.is_err() {
            sent_all = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = tls::read_until_closed(&mut conn, PROMPT).await;
    let elapsed = start.elapsed();
    eprintln!("dribbled request head: closed after {elapsed:?} (sent all: {sent_all})");
    assert!(
        refused(&answer, &[408, 400]) && elapsed < HEADER_TIMEOUT + SLACK,
        "a request head dribbled a byte at a time must be closed within {:?}; \
         after {elapsed:?}: {answer:?}",
        HEADER_TIMEOUT + SLACK
    );
    proxy.still_serves("a dribbled request head");

    // A TCP connection that sends half a ClientHello and stalls (a record header announcing
    // 512 bytes, then the start of a ClientHello): closed after handshake_timeout.
    let mut tcp = tokio::net::TcpStream::connect(proxy.serve.addr)
        .await
        .unwrap();
    let answer = tls::send_and_read(
        &mut tcp,
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
        HANDSHAKE_TIMEOUT + SLACK + SLACK,
    )
    .await;
    eprintln!(
        "stalled ClientHello: closed after {:?} ({:?})",
        answer.elapsed, answer.end
    );
    assert!(
        answer.closed() && answer.elapsed < HANDSHAKE_TIMEOUT + SLACK,
        "a stalled ClientHello must be closed within handshake_timeout ({HANDSHAKE_TIMEOUT:?}) \
         plus {SLACK:?}: {answer:?}"
    );
    proxy.still_serves("a stalled ClientHello");

    // An upstream that accepts and never answers: 504 once the pool's response timeout has
    // passed.
    let start = Instant::now();
    let r = proxy.curl("/hang", &[]);
    let elapsed = start.elapsed();
    eprintln!("hanging upstream: {} after {elapsed:?}", r.status);
    assert_eq!(r.status, 504, "a hanging upstream must give 504: {r:?}");
    assert!(
        elapsed >= RESPONSE_TIMEOUT && elapsed < RESPONSE_TIMEOUT + SLACK,
        "the 504 must come after the response timeout ({RESPONSE_TIMEOUT:?}) and within {:?}: \
         {elapsed:?}",
        RESPONSE_TIMEOUT + SLACK
    );
    assert!(
        proxy.hang.requests() >= 1,
        "the request reached the hanging upstream"
    );
    proxy.still_serves("a hanging upstream");

    // An upstream with nothing listening: 502, at once.
    let start = Instant::now();
    let r = proxy.curl("/down", &[]);
    let elapsed = start.elapsed();
    eprintln!("upstream down: {} after {elapsed:?}", r.status);
    assert_eq!(
        r.status, 502,
        "an upstream that is down must give 502: {r:?}"
    );
    assert!(elapsed < PROMPT, "the 502 took {elapsed:?}");
    proxy.still_serves("an upstream that is down");

    // Host routes: only.example (any case, any port) goes to its own pool, other hosts fall
    // through to `/`.
    for (host, http2) in [
        ("only.example", false),
        ("ONLY.Example:8443", false),
        ("only.example", true),
    ] {
        let header = format!("host: {host}");
        let mut extra = vec!["-H", header.as_str()];
        if http2 {
            extra.push("--http2");
        }
        let r = proxy.curl("/x", &extra);
        assert!(
            r.status == 200 && r.body.starts_with("only GET /x"),
            "host {host} (HTTP/2: {http2}) must reach the only.example pool: {r:?}"
        );
    }
    let r = proxy.curl("/x", &["-H", "host: other.example"]);
    assert!(
        r.status == 200 && r.body.starts_with("echo GET /x host=other.example"),
        "another host must fall through to `/`: {r:?}"
    );
    assert_eq!(
        proxy.only.requests(),
        3,
        "only the only.example requests reached its pool"
    );

    // HTTP/2 still works after all of the above.
    let r = proxy.curl("/after", &["--http2"]);
    assert!(
        r.status == 200 && r.version == "2" && r.body.starts_with("echo GET /after"),
        "HTTP/2 after the hostile clients: {r:?}"
    );
    proxy.stop();
}

/// A client that finishes the TLS handshake and then sends nothing (or too little for the
/// proxy to tell HTTP/1.1 from HTTP/2) holds a connection and its task until the proxy closes
/// it: that must happen within the header or the idle timeout. The cases run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_after_the_handshake_is_closed() {
    let mut proxy = Proxy::start();
    let limit = HEADER_TIMEOUT.max(IDLE_TIMEOUT) + SLACK;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let mut preface_and_settings = preface.clone();
    preface_and_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let cases: Vec<(&str, &[u8], Vec<u8>)> = vec![
        (
            "a whole request, then nothing (keep-alive)",
            b"http/1.1",
            b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n".to_vec(),
        ),
        ("nothing at all", b"http/1.1", Vec::new()),
        (
            "the first 14 bytes of the HTTP/2 preface",
            b"h2",
            b"PRI * HTTP/2.0".to_vec(),
        ),
        ("the HTTP/2 preface", b"h2", preface),
        (
            "the HTTP/2 preface and an empty SETTINGS frame",
            b"h2",
            preface_and_settings,
        ),
    ];
    let mut tasks = Vec::new();
    for (what, alpn, bytes) in cases {
        let (addr, config) = (
            proxy.serve.addr,
            tls::client_config(&proxy.site.cert, &[alpn]),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = tls::connect(addr, config).await.unwrap();
            let answer = tls::send_and_read(&mut conn, &bytes, limit + SLACK).await;
            eprintln!(
                "silent after the handshake, {what}: {:?} after {:?}",
                answer.end, answer.elapsed
            );
            (what, answer)
        }));
    }
    let mut late = Vec::new();
    for task in tasks {
        let (what, answer) = task.await.unwrap();
        if answer.end == End::Open || answer.elapsed >= limit {
            let state = if answer.end == End::Open {
                "still open"
            } else {
                "closed"
            };
            late.push(format!("after {what}: {state} after {:?}", answer.elapsed));
        }
    }
    proxy.still_serves("clients silent after the handshake");

    // SIGTERM with silent clients connected: serve still exits, well within its grace period.
    let mut silent = Vec::new();
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let config = tls::client_config(&proxy.site.cert, &[alpn]);
        silent.push(tls::connect(proxy.serve.addr, config).await.unwrap());
    }
    let start = Instant::now();
    let status = proxy.serve.terminate();
    eprintln!(
        "SIGTERM with silent clients: exit after {:?}",
        start.elapsed()
    );
    assert!(
        status.success() && start.elapsed() < SHUTDOWN_GRACE,
        "serve must exit 0 at SIGTERM even with silent clients connected: {status} after {:?}",
        start.elapsed()
    );
    drop(silent);

    assert!(
        late.is_empty(),
        "a client silent after the handshake must be closed within {limit:?} \
         (request_header_timeout {HEADER_TIMEOUT:?}, idle_timeout {IDLE_TIMEOUT:?}):\n{}",
        late.join("\n")
    );
    let log = proxy.serve.log_text();
    assert!(!log.contains("panicked"), "serve panicked; log:\n{log}");
}

/// The header count limit (`max_headers`, 100 by default) holds over HTTP/2 as it does over
/// HTTP/1.1: 200 small headers are refused (431, or the stream reset), never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_count_limit_holds_over_http2() {
    let proxy = Proxy::start();
    let headers: Vec<String> = (0..200).map(|i| format!("x-h{i}: {i}")).collect();
    let mut args = vec!["--http2"];
    for h in &headers {
        args.extend(["-H", h.as_str()]);
    }
    let r = proxy.curl("/", &args);
    eprintln!("200 headers over HTTP/2: {} {}", r.status, r.stderr.trim());
    assert!(
        r.status != 200 && (r.status == 431 || r.status == 400 || !r.ok),
        "200 headers over HTTP/2 must be refused as over HTTP/1.1 (max_headers = 100): \
         got HTTP/{} {} from the upstream: {}",
        r.version,
        r.status,
        r.body.trim()
    );
    proxy.still_serves("200 headers over HTTP/2");
    proxy.stop();
}
