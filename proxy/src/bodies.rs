//! A request body on its way to the upstream, tied to the response coming back.
//!
//! An upstream server may answer before it has read the whole request body (a 413 or a 401 to
//! an upload, or the demo upstream, which answers at once). Left alone, the client would
//! go on sending into a request nobody reads: the upload stalls until a timeout (HTTP/2), or
//! the connection is reset under the client, which may then never read the answer (HTTP/1.1).
//! So, as nginx does, once the response to the client has ended (or was dropped), the upload
//! to the upstream is abandoned: the body is taken from [`RequestBody`], whose next poll is an
//! error, which closes that upstream connection (it is in the middle of a request and cannot
//! be reused). Then:
//! - HTTP/1.1: the rest of the client's body is read and thrown away on a task of its own
//!   ([`discard`]), each piece within [`LINGER_READ`] and the whole within [`LINGER_TOTAL`]
//!   (nginx's `lingering_timeout` and `lingering_time`), so that the client finishes sending,
//!   reads the answer, and the connection can serve its next request;
//! - HTTP/2: the body is dropped once the response has been handed to the stream in full, and
//!   h2 resets the stream with NO_ERROR, which tells the client to stop sending and keep the
//!   answer (RFC 9113 §8.1). Dropped earlier (no response yet), h2 would cancel the stream and
//!   the answer with it: so an HTTP/2 body is only let go by the response's side.

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// Longest wait for each piece of a request body being discarded.
const LINGER_READ: Duration = Duration::from_secs(5);
/// Longest time spent discarding one request body.
const LINGER_TOTAL: Duration = Duration::from_secs(30);

/// Why an upload to the upstream was abandoned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    /// The client's body failed (the client went away, a malformed chunk).
    #[error("the client's request body failed: {0}")]
    Client(#[from] hyper::Error),
    /// The response ended before the request body did.
    #[error("the response ended before the request body")]
    ResponseEnded,
}

/// The client's body, shared by the two halves (see [`let_go`]).
type Slot = Arc<Mutex<Option<Incoming>>>;

/// The client's request body, as sent to the upstream. Once the paired [`ResponseEnd`] is
/// dropped the body is gone from here and this ends with an error.
pub(crate) struct RequestBody {
    slot: Slot,
    h2: bool,
}

/// Held by the response body; dropping it (at the response's end, or when the client's side
/// goes away) takes the request body from the upstream's side and discards what is left of it.
/// It must not wait for the upstream connection to ask for more of the body: an upstream that
/// has answered may never read again.
pub(crate) struct ResponseEnd {
    slot: Slot,
    h2: bool,
}

/// A request body for the upstream and the token the response must hold while it lasts;
/// `version` is the client's HTTP version.
pub(crate) fn pair(body: Incoming, version: http::Version) -> (RequestBody, ResponseEnd) {
    let slot = Arc::new(Mutex::new(Some(body)));
    let h2 = version == http::Version::HTTP_2;
    (
        RequestBody {
            slot: Arc::clone(&slot),
            h2,
        },
        ResponseEnd { slot, h2 },
    )
}

/// Takes the body out of `slot`, unless it has ended: HTTP/1.1 discards the rest of it, HTTP/2
/// drops it (h2 resets the stream: NO_ERROR after a full response, CANCEL before).
fn let_go(slot: &Slot, h2: bool) {
    let Some(body) = slot.lock().ok().and_then(|mut body| body.take()) else {
        return;
    };
    if body.is_end_stream() || h2 {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(discard(body));
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let Ok(mut slot) = self.slot.lock() else {
            return Poll::Ready(Some(Err(RequestBodyError::ResponseEnded)));
        };
        let Some(body) = slot.as_mut() else {
            return Poll::Ready(Some(Err(RequestBodyError::ResponseEnded)));
        };
        Pin::new(body)
            .poll_frame(cx)
            .map(|frame| frame.map(|f| f.map_err(RequestBodyError::from)))
    }

    fn is_end_stream(&self) -> bool {
        // An abandoned body is not at its end: the next poll reports why.
        self.slot
            .lock()
            .ok()
            .and_then(|body| body.as_ref().map(Body::is_end_stream))
            .unwrap_or(false)
    }

    fn size_hint(&self) -> SizeHint {
        self.slot
            .lock()
            .ok()
            .and_then(|body| body.as_ref().map(Body::size_hint))
            .unwrap_or_default()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // The upstream's side let go first (its connection failed, say): an HTTP/1.1 client may
        // still be sending. An HTTP/2 body waits for the response (see the module's comment).
        if !self.h2 {
            let_go(&self.slot, false);
        }
    }
}

impl Drop for ResponseEnd {
    fn drop(&mut self) {
        let_go(&self.slot, self.h2);
    }
}

/// Reads the rest of `body` and throws it away, within [`LINGER_READ`] per piece and
/// [`LINGER_TOTAL`] in all; then drops it (hyper closes the connection if it did not end).
async fn discard(mut body: Incoming) {
    let deadline = tokio::time::Instant::now() + LINGER_TOTAL;
    let mut discarded = 0u64;
    loop {
        let wait = LINGER_READ.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                discarded += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Ok(None) => {
                tracing::debug!(discarded, "discarded the rest of a request body");
                return;
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(discarded, "discarding a request body: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(discarded, "gave up discarding a request body");
                return;
            }
        }
    }
}

/// A response body that holds the [`ResponseEnd`] of its request until it ends or is dropped.
pub(crate) struct TiedResponse<B> {
    inner: B,
    end: Option<ResponseEnd>,
}

impl<B> TiedResponse<B> {
    pub(crate) fn new(inner: B, end: ResponseEnd) -> Self {
        Self {
            inner,
            end: Some(end),
        }
    }
}

impl<B: Body + Unpin> Body for TiedResponse<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        // hyper's server stops polling a body that says it has ended: an HTTP/1.1 request body
        // is let go then, not only at `None` (an HTTP/2 one when this is dropped, after hyper
        // has ended the stream's send side).
        let ended =
            matches!(frame, Poll::Ready(None)) || (frame.is_ready() && this.inner.is_end_stream());
        if ended && this.end.as_ref().is_some_and(|end| !end.h2) {
            this.end = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
