//! One connection to one node: TCP, mutual TLS 1.3, hello, then frames written by the callers
//! themselves (the first to find the writer free writes every frame queued meanwhile, in one
//! flush) and a reader task that hands each answer to the request with its id (many requests
//! in flight, answered in any order).
//!
//! Writing on the caller's own task, rather than handing each frame to a writer task, saves a
//! thread wake-up per request: for a caller blocked on the answer (the proxy's handshake
//! signer), the write and the wait for the answer are the only steps.
//!
//! When the connection ends (the node closed it, a read or write failed, or the client closed
//! it) every request still waiting fails at once, so callers can fail over without waiting for
//! their timeout.

use crate::config::NodeEndpoint;
use crate::error::{ClientError, ConnectError};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use sealgate_hsm_proto::{
    self as proto, Hello, MAX_RESPONSE_LEN, MIN_VERSION, Reply, Request, RequestFrame, VERSION,
    Welcome,
};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How this client names itself in hello.
const CLIENT_NAME: &str = concat!("sealgate-hsm-client/", env!("CARGO_PKG_VERSION"));
/// The id of the hello request; later requests count up from the next one.
const HELLO_ID: u64 = 1;
/// The deadline used for a timeout too long to add to the current instant.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);
/// How long a closing connection may take to send TLS close_notify.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

type Transport = Framed<TlsStream<TcpStream>, LengthDelimitedCodec>;
type Reader = FramedRead<ReadHalf<TlsStream<TcpStream>>, LengthDelimitedCodec>;
type Writer = FramedWrite<WriteHalf<TlsStream<TcpStream>>, LengthDelimitedCodec>;
type Answer = Result<Reply, proto::Error>;

/// Locks `mutex`, ignoring poisoning (the data is always left consistent).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request frame that borrows its request, so a request can be re-sent elsewhere without
/// being cloned. Encodes exactly as [`RequestFrame`] (tested below).
#[derive(Serialize)]
struct RequestFrameRef<'a> {
    id: u64,
    min_index: u64,
    request: &'a Request,
}

/// Why a request got no answer from the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection was closed before the request was handed to the writer: the node never
    /// saw it.
    NotSent,
    /// The connection ended after the request was handed to the writer: the node may or may
    /// not have run it.
    Lost,
    /// No answer in time; `sent` says whether the request had been handed to the writer.
    Timeout {
        /// Whether the node may have seen the request.
        sent: bool,
    },
    /// The encoded request is over the node's frame limit; it was not sent.
    TooLarge {
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl Failure {
    /// Whether the node may have seen (and run) the request.
    pub(crate) fn maybe_applied(self) -> bool {
        matches!(self, Self::Lost | Self::Timeout { sent: true })
    }
}

/// A request waiting for its answer. The permit is held until the answer comes (or the
/// connection ends), even if the caller gave up, so the number of requests the node still
/// works on never exceeds its `max_in_flight`.
struct Pending {
    answer: oneshot::Sender<Answer>,
    _permit: OwnedSemaphorePermit,
}

/// What the connection's tasks and its handle share.
struct State {
    /// Requests waiting for an answer, by id; `None` once the connection is closed.
    pending: Mutex<Option<HashMap<u64, Pending>>>,
    /// One permit per request the node accepts in flight.
    permits: Arc<Semaphore>,
    /// Cancelled when the connection ends.
    closed: CancellationToken,
    /// Why it ended.
    reason: Mutex<Option<String>>,
    /// The highest log index any node of the cluster answered this client with (shared by its
    /// connections): sent with every request so the node waits until it has applied it
    /// (read-your-writes across nodes).
    seen: Arc<AtomicU64>,
}

impl State {
    /// Takes the request `response` answers, and notes how far the node had applied the log.
    fn answered(&self, response: &proto::ResponseFrame) -> Option<Pending> {
        self.seen.fetch_max(response.index, Ordering::Relaxed);
        self.remove(response.id)
    }

    /// Ends the connection: fails every waiting request, refuses new ones, stops the tasks.
    fn shutdown(&self, reason: impl FnOnce() -> String) {
        {
            let mut current = lock(&self.reason);
            if current.is_none() {
                *current = Some(reason());
            }
        }
        // Dropping the senders wakes every waiting request with an error.
        let pending = lock(&self.pending).take();
        drop(pending);
        self.permits.close();
        self.closed.cancel();
    }

    fn insert(&self, id: u64, pending: Pending) -> bool {
        match lock(&self.pending).as_mut() {
            Some(map) => {
                map.insert(id, pending);
                true
            }
            None => false,
        }
    }

    fn remove(&self, id: u64) -> Option<Pending> {
        lock(&self.pending).as_mut().and_then(|map| map.remove(&id))
    }
}

/// Removes a request's entry unless its frame reached the writer (then only the answer, or
/// the end of the connection, removes it).
struct Unsent<'a> {
    state: &'a State,
    id: Option<u64>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.state.remove(id);
        }
    }
}

/// The write side: the framed TLS writer, and the frames queued while another caller writes.
struct Outbox {
    sink: tokio::sync::Mutex<Writer>,
    queue: Mutex<Vec<Bytes>>,
}

/// Shuts the connection down if a write stops half way (its future dropped): the stream may
/// hold half a frame, and frames other callers queued were taken and not written.
struct Writing<'a> {
    state: &'a State,
    done: bool,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.state
                .shutdown(|| "a write was interrupted (its caller gave up)".to_owned());
        }
    }
}

impl Outbox {
    /// Queues `frame` and writes every queued frame if no other caller is writing; a caller
    /// that is writing takes the new frames before it lets the writer go, and looks again
    /// after, so no frame is left behind.
    async fn send(&self, frame: Bytes, state: &State) -> std::io::Result<()> {
        lock(&self.queue).push(frame);
        loop {
            let Ok(mut sink) = self.sink.try_lock() else {
                return Ok(());
            };
            let mut writing = Writing { state, done: false };
            let written: std::io::Result<()> = async {
                loop {
                    let frames = std::mem::take(&mut *lock(&self.queue));
                    if frames.is_empty() {
                        return Ok(());
                    }
                    for frame in frames {
                        sink.feed(frame).await?;
                    }
                    SinkExt::<Bytes>::flush(&mut *sink).await?;
                }
            }
            .await;
            writing.done = true;
            written?;
            drop(sink);
            if lock(&self.queue).is_empty() {
                return Ok(());
            }
        }
    }
}

/// An open, welcomed connection to one node.
pub(crate) struct Connection {
    state: Arc<State>,
    outbox: Arc<Outbox>,
    next_id: AtomicU64,
    max_frame_len: usize,
    max_in_flight: usize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.state
            .shutdown(|| "the connection was dropped by the client".to_owned());
    }
}

/// Connects to `endpoint`: TCP, TLS (server name from the endpoint), hello; all within
/// `timeout`. With `cluster_id`, a node whose welcome names another cluster is refused
/// ([`ConnectError::WrongCluster`]) before anything else is sent to it.
pub(crate) async fn open(
    endpoint: &NodeEndpoint,
    tls: &TlsConnector,
    cluster_id: Option<&str>,
    timeout: Duration,
    seen: Arc<AtomicU64>,
) -> Result<Connection, ClientError> {
    let name = server_name(endpoint)?;
    let connect_error = |source| ClientError::Connect {
        node: endpoint.id,
        address: endpoint.address,
        source,
    };
    let (transport, welcome) =
        tokio::time::timeout(timeout, handshake(endpoint, tls, name, cluster_id))
            .await
            .map_err(|_| connect_error(ConnectError::Timeout(timeout)))?
            .map_err(connect_error)?;
    debug!(
        node = endpoint.id,
        version = welcome.version,
        cluster = %welcome.cluster_id,
        "connected"
    );
    Ok(Connection::start(transport, &welcome, seen))
}

/// The name the node's certificate must carry.
pub(crate) fn server_name(endpoint: &NodeEndpoint) -> Result<ServerName<'static>, ClientError> {
    ServerName::try_from(endpoint.server_name.clone()).map_err(|_| ClientError::ServerName {
        node: endpoint.id,
        name: endpoint.server_name.clone(),
    })
}

async fn handshake(
    endpoint: &NodeEndpoint,
    tls: &TlsConnector,
    name: ServerName<'static>,
    cluster_id: Option<&str>,
) -> Result<(Transport, Welcome), ConnectError> {
    let tcp = TcpStream::connect(endpoint.address).await?;
    tcp.set_nodelay(true)?;
    let stream = tls.connect(name, tcp).await?;
    // Reads answers (the welcome) up to the response limit; the hello is tiny.
    let mut transport = Framed::new(stream, proto::length_codec(MAX_RESPONSE_LEN));
    let hello = RequestFrame::new(HELLO_ID, Request::Hello(Hello::current(CLIENT_NAME)));
    transport.send(Bytes::from(proto::encode(&hello))).await?;
    let bytes = transport.next().await.ok_or(ConnectError::Closed)??;
    let response = proto::decode_response(&bytes).map_err(ConnectError::Malformed)?;
    let welcome = match response.result {
        Ok(Reply::Welcome(welcome)) => welcome,
        Ok(_) => return Err(ConnectError::UnexpectedReply),
        Err(error) => return Err(ConnectError::Refused(error)),
    };
    if !(MIN_VERSION..=VERSION).contains(&welcome.version) {
        return Err(ConnectError::Version(welcome.version));
    }
    if welcome.node_id != endpoint.id {
        return Err(ConnectError::WrongNode(welcome.node_id));
    }
    // An uninitialized node has no cluster id yet; any other must be the configured one.
    if let Some(expected) = cluster_id
        && !welcome.cluster_id.is_empty()
        && !welcome.cluster_id.eq_ignore_ascii_case(expected)
    {
        return Err(ConnectError::WrongCluster {
            expected: expected.to_owned(),
            found: welcome.cluster_id,
        });
    }
    Ok((transport, welcome))
}

impl Connection {
    /// Starts the reader and writer tasks on a welcomed transport, with the node's limits:
    /// requests up to its `max_frame_len`, answers up to [`MAX_RESPONSE_LEN`] (a key list can
    /// be far larger than any request).
    fn start(transport: Transport, welcome: &Welcome, seen: Arc<AtomicU64>) -> Self {
        let max_frame_len = usize::try_from(welcome.max_frame_len)
            .unwrap_or(usize::MAX)
            .max(1);
        let max_in_flight = usize::try_from(welcome.max_in_flight)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        let state = Arc::new(State {
            pending: Mutex::new(Some(HashMap::new())),
            permits: Arc::new(Semaphore::new(max_in_flight)),
            closed: CancellationToken::new(),
            reason: Mutex::new(None),
            seen,
        });
        // The hello was read through `transport`; keep whatever it buffered after the welcome.
        let parts = transport.into_parts();
        let (read, write) = tokio::io::split(parts.io);
        let mut stream = FramedRead::new(read, proto::length_codec(MAX_RESPONSE_LEN));
        *stream.read_buffer_mut() = parts.read_buf;
        let sink = FramedWrite::new(write, proto::length_codec(max_frame_len));
        let outbox = Arc::new(Outbox {
            sink: tokio::sync::Mutex::new(sink),
            queue: Mutex::new(Vec::new()),
        });
        let tasks = vec![
            tokio::spawn(close_when_done(Arc::clone(&outbox), Arc::clone(&state))),
            tokio::spawn(read_answers(stream, Arc::clone(&state))),
        ];
        Self {
            state,
            outbox,
            next_id: AtomicU64::new(HELLO_ID + 1),
            max_frame_len,
            max_in_flight,
            tasks: Mutex::new(tasks),
        }
    }

    /// Sends `request` and waits for its answer, all within `timeout`: the node's reply or
    /// error, or why there was none.
    pub(crate) async fn request(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        // The configuration caps timeouts at an hour; a hand-built one may not.
        let now = Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or_else(|| now + FAR_FUTURE);
        let permit =
            match timeout_at(deadline, Arc::clone(&self.state.permits).acquire_owned()).await {
                Err(_) => return Err(Failure::Timeout { sent: false }),
                Ok(Err(_)) => return Err(Failure::NotSent),
                Ok(Ok(permit)) => permit,
            };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let min_index = self.state.seen.load(Ordering::Relaxed);
        let body = Bytes::from(proto::encode(&RequestFrameRef {
            id,
            min_index,
            request,
        }));
        if body.len() > self.max_frame_len {
            return Err(Failure::TooLarge {
                len: body.len(),
                max: self.max_frame_len,
            });
        }
        let (answer, receiver) = oneshot::channel();
        if !self.state.insert(
            id,
            Pending {
                answer,
                _permit: permit,
            },
        ) {
            return Err(Failure::NotSent);
        }
        let mut unsent = Unsent {
            state: &self.state,
            id: Some(id),
        };
        if self.state.closed.is_cancelled() {
            return Err(Failure::NotSent);
        }
        // Queued, the frame is on its way: written by this caller or by the one writing now.
        unsent.id = None;
        match timeout_at(deadline, self.outbox.send(body, &self.state)).await {
            Err(_) => return Err(Failure::Timeout { sent: true }),
            Ok(Err(e)) => {
                self.state.shutdown(|| format!("write failed: {e}"));
                return Err(Failure::Lost);
            }
            Ok(Ok(())) => {}
        }
        match timeout_at(deadline, receiver).await {
            Err(_) => Err(Failure::Timeout { sent: true }),
            Ok(Err(_)) => Err(Failure::Lost),
            Ok(Ok(answer)) => Ok(answer),
        }
    }

    /// Requests the node is working on (including ones whose caller gave up).
    pub(crate) fn in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.state.permits.available_permits())
    }

    /// Whether the connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.closed.is_cancelled()
    }

    /// Resolves when the connection ends.
    pub(crate) async fn closed(&self) {
        self.state.closed.cancelled().await;
    }

    /// Why the connection ended (empty while it is open).
    pub(crate) fn close_reason(&self) -> String {
        lock(&self.state.reason).clone().unwrap_or_default()
    }

    /// Ends the connection, failing the requests in flight.
    pub(crate) fn close(&self, reason: &str) {
        self.state.shutdown(|| reason.to_owned());
    }

    /// Ends the connection and waits for its tasks to finish.
    pub(crate) async fn close_and_wait(&self, reason: &str) {
        self.close(reason);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Once the connection ends, politely ends TLS (close_notify), but never hangs on a node that
/// stopped reading or on a write that does not finish.
async fn close_when_done(outbox: Arc<Outbox>, state: Arc<State>) {
    state.closed.cancelled().await;
    if let Ok(mut sink) = tokio::time::timeout(CLOSE_GRACE, outbox.sink.lock()).await {
        let _ = tokio::time::timeout(CLOSE_GRACE, SinkExt::<Bytes>::close(&mut *sink)).await;
    }
}

/// Hands each answer to the request with its id, until the connection ends.
async fn read_answers(mut stream: Reader, state: Arc<State>) {
    let reason = loop {
        let next = tokio::select! {
            () = state.closed.cancelled() => return,
            next = stream.next() => next,
        };
        let bytes = match next {
            None => break "the node closed the connection".to_owned(),
            Some(Err(e)) => break format!("read failed: {e}"),
            Some(Ok(bytes)) => bytes,
        };
        match proto::decode_response(&bytes) {
            Err(e) => break format!("the node sent a {e}"),
            // Id 0 answers a frame the node could not read; it closes the connection next.
            Ok(response) if response.id == 0 => {
                break match response.result {
                    Err(error) => format!("the node closed the connection: {error}"),
                    Ok(_) => "the node answered an unknown request".to_owned(),
                };
            }
            Ok(response) => match state.answered(&response) {
                Some(pending) => {
                    // The caller may have given up (timeout); then the answer is dropped.
                    let _ = pending.answer.send(response.result);
                }
                None => debug!(id = response.id, "answer to an unknown request ignored"),
            },
        }
    };
    state.shutdown(|| reason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealgate_hsm_proto::{HashAlg, Secret};

    #[test]
    fn borrowed_frames_encode_like_owned_ones() {
        for request in [
            Request::Health,
            Request::Digest {
                hash: HashAlg::Sha256,
                data: vec![1, 2, 3],
            },
            Request::Login {
                user: "alice".into(),
                password: Secret::new("correct horse".into()),
            },
        ] {
            let borrowed = proto::encode(&RequestFrameRef {
                id: 300,
                min_index: 7,
                request: &request,
            });
            let owned = proto::encode(&RequestFrame {
                id: 300,
                min_index: 7,
                request: request.clone(),
            });
            assert_eq!(borrowed, owned);
            assert_eq!(proto::decode_request(&borrowed).unwrap().request, request);
        }
    }

    #[test]
    fn only_sent_requests_may_have_been_applied() {
        assert!(Failure::Lost.maybe_applied());
        assert!(Failure::Timeout { sent: true }.maybe_applied());
        assert!(!Failure::Timeout { sent: false }.maybe_applied());
        assert!(!Failure::NotSent.maybe_applied());
        assert!(!Failure::TooLarge { len: 2, max: 1 }.maybe_applied());
    }
}
