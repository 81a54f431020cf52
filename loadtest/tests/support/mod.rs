//! Shared by the end-to-end tests: an HTTP/1.1 + HTTP/2 test server (TLS with an rcgen
//! self-signed certificate, or plain) that counts requests and injects errors, a server that
//! answers TLS with garbage, and a runner for the built `sealgate-loadtest` binary.
//!
//! Paths: `/` answers 200; `/flaky` answers 503 to every 10th request it gets; `/hang` waits
//! 30 s; `/cut` announces 100 bytes, sends 4 and drops the connection.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::PrivateKeyDer;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// What the server saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Requests, every path.
    pub(crate) total: AtomicU64,
    /// Requests to `/flaky`.
    pub(crate) flaky: AtomicU64,
    /// When each request arrived.
    pub(crate) arrivals: Mutex<Vec<Instant>>,
}

impl Seen {
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }
}

/// A running test server; stops (its accept loop) when dropped.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    /// The self-signed certificate, PEM (to pass as --cacert).
    pub(crate) cert: PathBuf,
    pub(crate) seen: Arc<Seen>,
    pub(crate) dir: TempDir,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// `https://127.0.0.1:PORT{path}` (or http).
    pub(crate) fn url(&self, tls: bool, path: &str) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.addr.port())
    }
}

/// Starts a server on 127.0.0.1:0, TLS (ALPN h2 and http/1.1) or plain (HTTP/1.1 and h2c).
pub(crate) async fn start(tls: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    let acceptor = tls.then(|| {
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let task = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen));
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                serve(TokioIo::new(tls), seen).await;
                            }
                        }
                        None => serve(TokioIo::new(tcp), seen).await,
                    }
                });
            }
        })
    };
    Server {
        addr,
        cert,
        seen,
        dir,
        task,
    }
}

async fn serve<I>(io: TokioIo<I>, seen: Arc<Seen>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, Arc::clone(&seen)));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

type Reply = Response<BoxBody<Bytes, io::Error>>;

fn full(status: u16, body: &'static str) -> Reply {
    Response::builder()
        .status(status)
        .body(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

async fn handle(req: Request<Incoming>, seen: Arc<Seen>) -> Result<Reply, Infallible> {
    seen.total.fetch_add(1, Ordering::SeqCst);
    seen.arrivals.lock().unwrap().push(Instant::now());
    Ok(match req.uri().path() {
        "/flaky" => {
            let n = seen.flaky.fetch_add(1, Ordering::SeqCst) + 1;
            if n.is_multiple_of(10) {
                full(503, "busy\n")
            } else {
                full(200, "ok\n")
            }
        }
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            full(200, "late\n")
        }
        "/cut" => Response::builder()
            .header("content-length", "100")
            .body(
                Cut {
                    sent: false,
                    pause: Box::pin(tokio::time::sleep(Duration::from_millis(20))),
                }
                .boxed(),
            )
            .unwrap(),
        _ => full(200, "hello\n"),
    })
}

/// A body that sends 4 bytes, pauses (so they are flushed), then fails: the server drops the
/// connection mid-response.
struct Cut {
    sent: bool,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Cut {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"part")))));
        }
        match self.pause.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::other("cut")))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A TCP server that answers anything with bytes that are not TLS, then closes.
pub(crate) async fn start_garbage() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.write_all(b"HTTP/1.1 400 Not TLS\r\n\r\n").await;
            });
        }
    });
    (addr, task)
}

/// A port on 127.0.0.1 where nothing listens.
pub(crate) async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// What a run of the binary gave.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// The `--json` file, if `run_json` asked for one.
    pub(crate) json: Option<serde_json::Value>,
}

/// Runs `sealgate-loadtest ARGS` (killed after 30 s).
pub(crate) async fn run(args: &[&str]) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sealgate-loadtest"))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("sealgate-loadtest took over 30 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
        json: None,
    }
}

/// Runs `sealgate-loadtest ARGS --json FILE` (FILE in `dir`) and parses FILE.
pub(crate) async fn run_json(dir: &Path, args: &[&str]) -> Run {
    let path = dir.join(format!(
        "out-{}.json",
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let mut all: Vec<&str> = args.to_vec();
    let path_str = path.to_str().unwrap().to_owned();
    all.extend(["--json", &path_str]);
    let mut run = run(&all).await;
    if let Ok(text) = std::fs::read_to_string(&path) {
        run.json = Some(serde_json::from_str(&text).unwrap());
    }
    run
}

static COUNTER: AtomicU64 = AtomicU64::new(0);
