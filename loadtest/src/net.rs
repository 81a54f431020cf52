//! Where requests go and how connections are made: the target URL (resolved once), TCP
//! streams that count their bytes, and TLS over them.

use crate::stats::Failure;
use anyhow::{Context, anyhow, bail};
use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A parsed `http://` or `https://` URL, its host resolved to one address.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) uri: http::Uri,
    /// `https`.
    pub(crate) tls: bool,
    /// Where every connection goes (the first address the name resolved to).
    pub(crate) addr: SocketAddr,
    /// The host, without IPv6 brackets: the default TLS server name.
    pub(crate) host: String,
    /// `host[:port]` as in the URL: the Host header.
    pub(crate) authority: String,
    /// Path and query, `/` if the URL has none.
    pub(crate) path: String,
}

impl Target {
    /// Parses `url` and resolves its host.
    pub(crate) async fn resolve(url: &str) -> anyhow::Result<Self> {
        let bad = |why: &str| anyhow!("bad URL {url:?}: {why}");
        let uri: http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(_) => return Err(bad("the scheme must be http or https")),
            None => return Err(bad("expected http://HOST[:PORT]/PATH or https://…")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            bail!(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = match authority.as_str().rsplit_once('@') {
            Some((_, hostport)) => hostport.to_owned(),
            None => authority.as_str().to_owned(),
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} resolves to no address"))?;
        Ok(Self {
            uri,
            tls,
            addr,
            host,
            authority,
            path,
        })
    }
}

/// Counters shared by every connection of a run; read before and after the measured window.
#[derive(Debug, Default)]
pub(crate) struct WireCounters {
    sent: AtomicU64,
    received: AtomicU64,
    handshakes: AtomicU64,
    resumed: AtomicU64,
}

/// The values of [`WireCounters`] at one instant, or the growth between two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WireSnapshot {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) handshakes: u64,
    pub(crate) resumed: u64,
}

impl WireCounters {
    /// The counters now.
    pub(crate) fn snapshot(&self) -> WireSnapshot {
        WireSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            handshakes: self.handshakes.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
        }
    }
}

impl WireSnapshot {
    /// What grew from `before` to `self`.
    pub(crate) fn since(self, before: Self) -> Self {
        Self {
            sent: self.sent.saturating_sub(before.sent),
            received: self.received.saturating_sub(before.received),
            handshakes: self.handshakes.saturating_sub(before.handshakes),
            resumed: self.resumed.saturating_sub(before.resumed),
        }
    }
}

/// A TCP stream that adds what it reads and writes to the run's [`WireCounters`].
#[derive(Debug)]
pub(crate) struct Counted {
    tcp: TcpStream,
    counters: Arc<WireCounters>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let n = buf.filled().len().saturating_sub(before);
            this.counters
                .received
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.tcp).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            this.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A connection to the target: plain TCP or TLS over it.
#[derive(Debug)]
pub(crate) enum Stream {
    /// `http://`.
    Plain(Counted),
    /// `https://` (boxed: a TLS connection is large, and there is one allocation per
    /// connection either way).
    Tls(Box<TlsStream<Counted>>),
}

impl Stream {
    /// The protocol ALPN picked, if any.
    pub(crate) fn alpn(&self) -> Option<&[u8]> {
        match self {
            Self::Plain(_) => None,
            Self::Tls(tls) => tls.get_ref().1.alpn_protocol(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Makes connections to one target: shared by every caller of a run.
pub(crate) struct Connector {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    counters: Arc<WireCounters>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("addr", &self.addr)
            .field("server_name", &self.tls.as_ref().map(|(_, name)| name))
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Connects to `target`'s address; with `tls` (a connector and server name), TLS over it.
    pub(crate) fn new(target: &Target, tls: Option<(TlsConnector, ServerName<'static>)>) -> Self {
        Self {
            addr: target.addr,
            tls,
            counters: Arc::default(),
        }
    }

    /// The run's byte and handshake counters.
    pub(crate) fn counters(&self) -> &WireCounters {
        &self.counters
    }

    /// Whether connections speak TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A new connection, TLS handshake done.
    pub(crate) async fn connect(&self) -> Result<Stream, Failure> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| Failure::Connect(e.into()))?;
        // Requests are small and written whole; do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let counted = Counted {
            tcp,
            counters: Arc::clone(&self.counters),
        };
        let Some((connector, name)) = &self.tls else {
            return Ok(Stream::Plain(counted));
        };
        let tls = connector
            .connect(name.clone(), counted)
            .await
            .map_err(|e| Failure::Tls(e.into()))?;
        self.counters.handshakes.fetch_add(1, Ordering::Relaxed);
        if tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
            self.counters.resumed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Stream::Tls(Box::new(tls)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_urls() {
        let t = Target::resolve("https://127.0.0.1:8443/a?b=1")
            .await
            .unwrap();
        assert!(t.tls);
        assert_eq!(t.addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.authority.as_str()),
            ("127.0.0.1", "127.0.0.1:8443")
        );
        assert_eq!(t.path, "/a?b=1");
        let t = Target::resolve("http://[::1]").await.unwrap();
        assert_eq!(
            (t.host.as_str(), t.addr.port(), t.path.as_str()),
            ("::1", 80, "/")
        );
        for bad in [
            "",
            "127.0.0.1:80",
            "ftp://x/",
            "http://",
            "https:///x",
            "not a url",
        ] {
            let e = Target::resolve(bad).await.unwrap_err().to_string();
            assert!(e.starts_with("bad URL"), "{bad}: {e}");
        }
    }
}
