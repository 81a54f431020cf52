//! The HTTP loads: `handshake` (a new connection for every request), `keepalive` over
//! HTTP/1.1 (one persistent connection per caller) and over HTTP/2 (`streams` callers share
//! each connection, one request in flight each).
//!
//! HTTP/1.1 goes through [`crate::h1`]: the request bytes are built once and written as they
//! are. HTTP/2 goes through hyper's client connection.

use crate::h1::{self, H1Error};
use crate::net::{Connector, Stream, Target, WireSnapshot};
use crate::run::{Caller, Load};
use crate::stats::{Failure, StatusKey};
use crate::tls::{self, Verify};
use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

/// Initial size of a connection's read buffer.
const READ_BUFFER: usize = 16 * 1024;

/// What every HTTP load needs: the target, how to check it, extra headers.
#[derive(Debug, Clone)]
pub(crate) struct HttpSetup {
    pub(crate) target: Target,
    pub(crate) verify: Verify,
    /// The TLS server name, if not the URL's host.
    pub(crate) sni: Option<String>,
    /// Extra request headers.
    pub(crate) headers: Vec<(String, String)>,
}

/// Parses `--header 'Name: value'`.
pub(crate) fn parse_header(text: &str) -> anyhow::Result<(String, String)> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| anyhow!("bad --header {text:?}: expected 'Name: value'"))?;
    let (name, value) = (name.trim(), value.trim());
    HeaderName::from_bytes(name.as_bytes())
        .with_context(|| format!("bad --header {text:?}: invalid name"))?;
    HeaderValue::from_str(value)
        .with_context(|| format!("bad --header {text:?}: invalid value"))?;
    Ok((name.to_owned(), value.to_owned()))
}

impl HttpSetup {
    fn connector(&self, alpn: &[&[u8]], resume: bool) -> anyhow::Result<Connector> {
        let tls = if self.target.tls {
            let config = tls::client_config(&self.verify, alpn, resume)?;
            let name = tls::server_name(&self.target, self.sni.as_deref())?;
            Some((TlsConnector::from(config), name))
        } else {
            None
        };
        Ok(Connector::new(&self.target, tls))
    }

    fn h1_request(&self, close: bool) -> Vec<u8> {
        h1::request(
            &self.target.path,
            &self.target.authority,
            &self.headers,
            close,
        )
    }
}

fn status(code: u16) -> Result<(), Failure> {
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(Failure::Status(StatusKey::Http(code)))
    }
}

/// What HTTP/1.1 callers share.
#[derive(Debug)]
struct H1Shared {
    connector: Connector,
    request: Vec<u8>,
}

/// `handshake`: every request on a new connection, `Connection: close`.
#[derive(Debug)]
pub(crate) struct HandshakeLoad(Arc<H1Shared>);

impl HandshakeLoad {
    /// Without `resume`, every handshake is a full one; with it, connections share a
    /// session store and resume after the first.
    pub(crate) fn new(setup: &HttpSetup, resume: bool) -> anyhow::Result<Self> {
        Ok(Self(Arc::new(H1Shared {
            connector: setup.connector(&[b"http/1.1"], resume)?,
            request: setup.h1_request(true),
        })))
    }
}

impl Load for HandshakeLoad {
    type Caller = HandshakeCaller;

    fn caller(&self, _: usize) -> HandshakeCaller {
        HandshakeCaller {
            shared: Arc::clone(&self.0),
            buf: BytesMut::with_capacity(READ_BUFFER),
        }
    }

    fn wire(&self) -> Option<WireSnapshot> {
        Some(self.0.connector.counters().snapshot())
    }

    fn tls(&self) -> bool {
        self.0.connector.is_tls()
    }
}

/// One `handshake` caller.
#[derive(Debug)]
pub(crate) struct HandshakeCaller {
    shared: Arc<H1Shared>,
    buf: BytesMut,
}

impl Caller for HandshakeCaller {
    async fn call(&mut self) -> Result<(), Failure> {
        let mut stream = self.shared.connector.connect().await?;
        let response = h1::exchange(&mut stream, &self.shared.request, &mut self.buf)
            .await
            .map_err(|e| Failure::Other(e.into()))?;
        // close_notify and FIN; the server's own close is not waited for.
        let _ = stream.shutdown().await;
        status(response.status)
    }
}

/// `keepalive` over HTTP/1.1: one persistent connection per caller.
#[derive(Debug)]
pub(crate) struct KeepaliveH1Load(Arc<H1Shared>);

impl KeepaliveH1Load {
    /// Connections that resume their TLS session when they reconnect.
    pub(crate) fn new(setup: &HttpSetup) -> anyhow::Result<Self> {
        Ok(Self(Arc::new(H1Shared {
            connector: setup.connector(&[b"http/1.1"], true)?,
            request: setup.h1_request(false),
        })))
    }
}

impl Load for KeepaliveH1Load {
    type Caller = KeepaliveH1Caller;

    fn caller(&self, _: usize) -> KeepaliveH1Caller {
        KeepaliveH1Caller {
            shared: Arc::clone(&self.0),
            conn: None,
            buf: BytesMut::with_capacity(READ_BUFFER),
        }
    }

    fn wire(&self) -> Option<WireSnapshot> {
        Some(self.0.connector.counters().snapshot())
    }

    fn tls(&self) -> bool {
        self.0.connector.is_tls()
    }
}

/// One HTTP/1.1 `keepalive` caller and its connection.
#[derive(Debug)]
pub(crate) struct KeepaliveH1Caller {
    shared: Arc<H1Shared>,
    /// Taken while a request is in flight, so a request dropped mid-way leaves none.
    conn: Option<Stream>,
    buf: BytesMut,
}

/// Whether a reused connection failed the way an idle connection closed by the server does
/// (the request can be sent again on a new one).
fn stale(e: &H1Error) -> bool {
    match e {
        H1Error::ClosedBeforeResponse => true,
        H1Error::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        ),
        _ => false,
    }
}

impl Caller for KeepaliveH1Caller {
    async fn call(&mut self) -> Result<(), Failure> {
        loop {
            let (mut stream, reused) = match self.conn.take() {
                Some(stream) => (stream, true),
                None => (self.shared.connector.connect().await?, false),
            };
            match h1::exchange(&mut stream, &self.shared.request, &mut self.buf).await {
                Ok(response) => {
                    if response.reusable {
                        self.conn = Some(stream);
                    }
                    return status(response.status);
                }
                // Once, on a new connection: the next turn connects.
                Err(e) if reused && stale(&e) => {}
                Err(e) => return Err(Failure::Other(e.into())),
            }
        }
    }
}

/// What HTTP/2 callers share.
#[derive(Debug)]
struct H2Shared {
    connector: Connector,
    uri: http::Uri,
    headers: HeaderMap,
}

/// One HTTP/2 connection, made by whichever of its callers needs it first.
#[derive(Debug, Default)]
struct H2Conn {
    sender: tokio::sync::Mutex<Option<SendRequest<Empty<Bytes>>>>,
}

/// `keepalive --http2`: `connections` connections, `streams` callers on each.
#[derive(Debug)]
pub(crate) struct KeepaliveH2Load {
    shared: Arc<H2Shared>,
    conns: Vec<Arc<H2Conn>>,
}

impl KeepaliveH2Load {
    /// `connections` HTTP/2 connections (ALPN h2 over TLS, prior knowledge over plain TCP).
    pub(crate) fn new(setup: &HttpSetup, connections: usize) -> anyhow::Result<Self> {
        let mut headers = HeaderMap::new();
        for (name, value) in &setup.headers {
            // HTTP/2 carries the host as :authority, from the URL.
            if name.eq_ignore_ascii_case("host") {
                continue;
            }
            headers.append(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
        if connections == 0 {
            bail!("--connections must be at least 1");
        }
        Ok(Self {
            shared: Arc::new(H2Shared {
                connector: setup.connector(&[b"h2"], true)?,
                uri: setup.target.uri.clone(),
                headers,
            }),
            conns: (0..connections).map(|_| Arc::default()).collect(),
        })
    }
}

impl Load for KeepaliveH2Load {
    type Caller = KeepaliveH2Caller;

    fn caller(&self, index: usize) -> KeepaliveH2Caller {
        let conn = self
            .conns
            .get(index % self.conns.len().max(1))
            .cloned()
            .unwrap_or_default();
        KeepaliveH2Caller {
            shared: Arc::clone(&self.shared),
            conn,
        }
    }

    fn wire(&self) -> Option<WireSnapshot> {
        Some(self.shared.connector.counters().snapshot())
    }

    fn tls(&self) -> bool {
        self.shared.connector.is_tls()
    }
}

/// One HTTP/2 stream caller.
#[derive(Debug)]
pub(crate) struct KeepaliveH2Caller {
    shared: Arc<H2Shared>,
    conn: Arc<H2Conn>,
}

impl KeepaliveH2Caller {
    /// The connection's sender, connecting first if there is none or it closed.
    async fn sender(&self) -> Result<SendRequest<Empty<Bytes>>, Failure> {
        let mut slot = self.conn.sender.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        *slot = None;
        let stream = self.shared.connector.connect().await?;
        if self.shared.connector.is_tls() && stream.alpn() != Some(b"h2") {
            return Err(Failure::Tls(anyhow!(
                "the server did not agree to HTTP/2 (ALPN h2)"
            )));
        }
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| Failure::Other(e.into()))?;
        // The connection's own failures surface on its requests.
        tokio::spawn(connection);
        *slot = Some(sender.clone());
        Ok(sender)
    }
}

impl Caller for KeepaliveH2Caller {
    async fn call(&mut self) -> Result<(), Failure> {
        let mut sender = self.sender().await?;
        let mut request = http::Request::new(Empty::<Bytes>::new());
        *request.uri_mut() = self.shared.uri.clone();
        *request.headers_mut() = self.shared.headers.clone();
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Other(e.into()))?;
        let code = response.status().as_u16();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| Failure::Other(e.into()))?;
        }
        status(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_headers() {
        assert_eq!(
            parse_header("X-A:  b c ").unwrap(),
            ("X-A".to_owned(), "b c".to_owned())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: v").is_err());
    }
}
