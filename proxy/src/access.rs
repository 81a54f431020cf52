//! The access log: one line per request (target `sealgate::access`, level info), written when
//! the response's body has been sent (or the client went away), as nginx does, so it carries
//! the bytes sent and the whole duration.

use crate::forward::ProxyBody;
use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long the upstream server took to answer (response head), set on the response by the
/// forwarder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamTime(pub(crate) Duration);

/// What the line says besides the bytes and the total duration.
#[derive(Debug)]
pub(crate) struct Access {
    pub(crate) client: SocketAddr,
    pub(crate) host: String,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) status: StatusCode,
    pub(crate) upstream: Option<Duration>,
    pub(crate) started: Instant,
    /// `TLSv1.3` or `TLSv1.2`.
    pub(crate) tls: &'static str,
    /// `full` (signed by the HSM) or `resumed`.
    pub(crate) handshake: &'static str,
}

/// A response body that counts what it sends and logs the request when it is dropped.
pub(crate) struct LoggedBody {
    inner: ProxyBody,
    bytes: u64,
    access: Option<Access>,
}

impl LoggedBody {
    pub(crate) fn new(inner: ProxyBody, access: Access) -> Self {
        Self {
            inner,
            bytes: 0,
            access: Some(access),
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(data) = frame.data_ref()
        {
            this.bytes += data.len() as u64;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let Some(a) = self.access.take() else { return };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::info!(
            target: "sealgate::access",
            client = %a.client,
            host = %a.host,
            method = %a.method,
            path = %a.path,
            status = a.status.as_u16(),
            bytes = self.bytes,
            upstream_ms = a.upstream.map(ms),
            total_ms = ms(a.started.elapsed()),
            tls = a.tls,
            handshake = a.handshake,
            "request"
        );
    }
}
