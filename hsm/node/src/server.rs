//! The node's RPC server: accepts mutually authenticated TLS connections, reads frames,
//! answers requests concurrently (pipelined, out of order), and runs every engine call on a
//! bounded crypto pool so the async workers never block.
//!
//! Back-pressure, as CloudHSM does it: when more than `max_queued` requests wait for the pool,
//! new ones are answered `busy` at once instead of queueing without bound. Each connection may
//! have `max_in_flight` requests outstanding; the next one is answered `too-many-in-flight` and
//! the connection stays open. A frame over `max_frame_len`, a frame that does not decode, or a
//! connection without a valid client certificate is logged in one line and closed; other
//! connections are not affected.

use crate::audit::{AuditError, AuditLog};
use crate::config::NodeConfig;
use crate::master_key::{
    MASTER_KEY_ENV, MasterKeyError, MasterKeySource, load_master_key_bytes, write_master_key,
};
use crate::pool::{CryptoPool, Job, Outbox};
use crate::raft::{EngineStateMachine, MembershipChange, PeerNetwork, Raft, RaftLogStore, Replica};
use crate::service::Hsm;
use crate::store::RedbStore;
use crate::tls::{self, TlsError};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use openraft::BasicNode;
use sealgate_hsm_core::crypto::MasterKey;
use sealgate_hsm_core::{EngineConfig, SessionId, StoreError};
use sealgate_hsm_proto::{
    self as proto, ErrorKind, Health, Reply, Request, RequestFrame, ResponseFrame, SignMechanism,
    Welcome,
};
use sealgate_monitoring::exporter::{self, Exposition, ReadyHook, ScrapeHook};
use sealgate_monitoring::io::{Counted, Octets};
use std::io::Write as _;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use zeroize::Zeroizing;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The master key could not be loaded or created.
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    /// The store could not be opened or does not match the master key.
    #[error("store {path}: {source}")]
    Store {
        /// The store file.
        path: std::path::PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// Replication could not start.
    #[error("cannot start replication: {0}")]
    Raft(String),
    /// A joining node could not get the cluster's domain key.
    #[error("cannot join the cluster: {0}")]
    Join(String),
    /// The metrics endpoint could not start.
    #[error("{0}")]
    Metrics(String),
    /// The audit log could not be opened or continued.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// What connections share.
pub(crate) struct Shared {
    pub(crate) hsm: Arc<Hsm>,
    pub(crate) config: NodeConfig,
    /// The cluster's domain key (the storage master key), handed to joining nodes.
    domain_key: Zeroizing<[u8; 32]>,
    acceptor: TlsAcceptor,
    /// Runs every engine call.
    pub(crate) pool: CryptoPool,
    /// Open client connections.
    pub(crate) connections: AtomicUsize,
    /// Open engine sessions.
    sessions: AtomicUsize,
    /// Requests answered `busy`.
    pub(crate) busy: AtomicUsize,
    /// Signatures made (`Sign` answered with a signature).
    pub(crate) signs: AtomicU64,
    /// Bytes received and sent on every connection (TLS records).
    pub(crate) octets: Arc<Octets>,
    /// Whether a metrics recorder is installed (then requests' latencies are recorded).
    metrics_enabled: AtomicBool,
    /// Connections refused at accept, logged at most once a second.
    refusals: RateLimitedLog,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// A running node.
pub struct NodeHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    raft: Raft,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl NodeHandle {
    /// The address the node listens on (with the real port when 0 was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The hooks of a metrics endpoint: set the node's gauges and kept counters from its
    /// state (before a scrape), and whether it serves clients (`/readyz`).
    pub fn metrics_hooks(&self) -> (ScrapeHook, ReadyHook) {
        let (a, b) = (Arc::clone(&self.shared), Arc::clone(&self.shared));
        (
            Arc::new(move || crate::metrics::refresh(&a)),
            Arc::new(move || b.hsm.serving().map_err(|e| e.message)),
        )
    }

    /// Stops accepting, lets requests in flight finish (up to the configured grace period) and
    /// returns; connections still open after that end when the runtime is dropped.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
        let _ = self.raft.shutdown().await;
        // The last record of this run: nothing was cut after it.
        let hsm = Arc::clone(&self.shared.hsm);
        let _ = tokio::task::spawn_blocking(move || hsm.audit().stop()).await;
    }
}

/// Opens the store and starts serving in the current tokio runtime.
pub async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    create_private_dir(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let network = PeerNetwork::new(tls::peer_client_config(
        &config.ca,
        &config.cert,
        &config.key,
    )?);
    let env_key = Zeroizing::new(std::env::var(MASTER_KEY_ENV).ok());
    let key_path = config.master_key_path();
    let (domain_key, source) = match load_master_key_bytes(&key_path, env_key.as_deref())? {
        Some(found) => found,
        None => {
            let raw = if config.join {
                info!(
                    node = config.id,
                    "joining the cluster: asking the members for its domain key"
                );
                crate::join::fetch_domain_key(
                    config.id,
                    &config.members,
                    &network,
                    crate::join::JOIN_TIMEOUT,
                )
                .await?
            } else {
                let (_, raw) = MasterKey::generate().map_err(|_| MasterKeyError::Io {
                    path: key_path.clone(),
                    source: std::io::Error::other("random number generator failed"),
                })?;
                raw
            };
            write_master_key(&key_path, &raw)?;
            (raw, MasterKeySource::Created(key_path.clone()))
        }
    };
    let master = MasterKey::from_bytes(&domain_key[..]).map_err(|_| MasterKeyError::Malformed {
        origin: key_path.display().to_string(),
    })?;
    debug!(?source, "master key loaded");
    let store_path = config.store_path();
    let store_error = |source| NodeError::Store {
        path: store_path.clone(),
        source,
    };
    let store = RedbStore::open(&store_path).map_err(store_error)?;
    restrict_to_owner(&store_path).map_err(|source| NodeError::DataDir {
        path: store_path.clone(),
        source,
    })?;
    let engine_config = EngineConfig {
        max_sessions: config.limits.max_sessions,
        quorum_token_ms: config.limits.quorum_token_secs.saturating_mul(1000),
        ..EngineConfig::default()
    };
    let database = store.database();
    let node_id = u64::from(config.id);
    let audit_key = master
        .audit_key(config.id)
        .map_err(|e| AuditError::new(&config.audit_path(), format!("no audit key: {e}")))?;
    let mut replica = Replica::open(node_id, store, master, engine_config).map_err(store_error)?;
    // Opened before replication starts, so the changes this node catches up on are audited.
    let audit = Arc::new(AuditLog::open(
        &config.audit_path(),
        &config.events_path(),
        config.id,
        audit_key,
    )?);
    replica.attach_audit(Arc::clone(&audit));
    let replica = Arc::new(std::sync::RwLock::new(replica));
    let acceptor = TlsAcceptor::from(tls::server_config(&config.ca, &config.cert, &config.key)?);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| NodeError::Bind {
            address: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| NodeError::Bind {
        address: config.listen,
        source,
    })?;
    let raft = start_raft(
        node_id,
        local_addr,
        &config.members,
        config.join,
        network.clone(),
        database,
        Arc::clone(&replica),
    )
    .await?;
    let hsm = Arc::new(Hsm::new(
        config.id,
        replica,
        raft.clone(),
        network.clone(),
        tokio::runtime::Handle::current(),
        config.limits.crypto_threads,
        audit,
    ));
    let pool = CryptoPool::new(
        config.limits.crypto_threads,
        config.limits.max_queued,
        &tokio::runtime::Handle::current(),
    )
    .map_err(NodeError::Runtime)?;
    let shared = Arc::new(Shared {
        pool,
        hsm,
        config,
        domain_key,
        acceptor,
        connections: AtomicUsize::new(0),
        sessions: AtomicUsize::new(0),
        busy: AtomicUsize::new(0),
        signs: AtomicU64::new(0),
        octets: Arc::new(Octets::default()),
        metrics_enabled: AtomicBool::new(false),
        refusals: RateLimitedLog::default(),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
    });
    info!(
        node = shared.config.id,
        address = %local_addr,
        cluster = %shared.hsm.cluster_id(),
        applied = shared.hsm.applied_index(),
        crypto_threads = shared.config.limits.crypto_threads,
        "node listening"
    );
    let shutdown = shared.shutdown.clone();
    tokio::spawn(crate::raft::promote_learners(
        raft.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(crate::raft::watch_removal(
        raft.clone(),
        network,
        shared.hsm.removal(),
        shutdown.clone(),
    ));
    let done = tokio::spawn(accept_loop(Arc::clone(&shared), listener));
    Ok(NodeHandle {
        local_addr,
        shared,
        raft,
        shutdown,
        done,
    })
}

/// Starts this node's raft: the log in `database`, the engine (`replica`) as state machine,
/// `network` to reach the other `members`. A node whose log is empty and whose id is the
/// smallest of the members starts the group; the others (and a node that `join`s a running
/// cluster) wait to be contacted. A cluster of one waits until it leads itself before serving.
async fn start_raft(
    node_id: u64,
    address: SocketAddr,
    members: &[(u32, String)],
    join: bool,
    network: PeerNetwork,
    database: Arc<redb::Database>,
    replica: Arc<std::sync::RwLock<Replica>>,
) -> Result<Raft, NodeError> {
    let raft_error = |e: &dyn std::fmt::Display| NodeError::Raft(e.to_string());
    let config = openraft::Config {
        cluster_name: "sealgate".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1_000,
        election_timeout_max: 2_000,
        // Keep every raft message well inside a request frame.
        max_payload_entries: 32,
        snapshot_max_chunk_size: 128 << 10,
        // Installing the last chunk checks every row of the snapshot and fsyncs them all: far
        // more than openraft's default 200 ms on a large store (every try would time out, and
        // a lagging or new node would never catch up).
        install_snapshot_timeout: 10_000,
        ..openraft::Config::default()
    }
    .validate()
    .map_err(|e| raft_error(&e))?;
    let raft = Raft::new(
        node_id,
        Arc::new(config),
        network,
        RaftLogStore::new(database),
        EngineStateMachine::new(replica),
    )
    .await
    .map_err(|e| raft_error(&e))?;
    let members: std::collections::BTreeMap<u64, BasicNode> = if members.is_empty() {
        std::collections::BTreeMap::from([(node_id, BasicNode::new(address.to_string()))])
    } else {
        members
            .iter()
            .map(|(id, address)| (u64::from(*id), BasicNode::new(address.clone())))
            .collect()
    };
    let first = members.keys().next().copied();
    let fresh = !raft.is_initialized().await.map_err(|e| raft_error(&e))?;
    if !join && fresh && first == Some(node_id) {
        raft.initialize(members.clone())
            .await
            .map_err(|e| raft_error(&e))?;
    }
    // A cluster of one (as configured when new, else as its log says: it may have grown
    // since) waits until it leads itself before serving.
    let alone = if fresh {
        members.len() == 1 && !join
    } else {
        let metrics = raft
            .wait(Some(Duration::from_secs(5)))
            .metrics(
                |m| m.membership_config.membership().nodes().next().is_some(),
                "the stored membership is loaded",
            )
            .await
            .map_err(|e| raft_error(&e))?;
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        voters == [node_id]
    };
    if alone {
        raft.wait(Some(Duration::from_secs(15)))
            .current_leader(node_id, "this node leads its raft group")
            .await
            .map_err(|e| raft_error(&e))?;
    }
    Ok(raft)
}

/// Creates the data directory (and its parents) if absent; a new directory is readable by its
/// owner only.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The store holds sealed secrets and their metadata: readable by the node's user only.
fn restrict_to_owner(file: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
}

/// Runs a node until SIGTERM or SIGINT: builds the runtime, starts, prints
/// `sealgate node ID listening on ADDRESS` on stdout, waits for the signal, shuts down cleanly.
pub fn run(config: NodeConfig) -> Result<(), NodeError> {
    run_with(config, false)
}

/// [`run`], and with `stop_on_stdin_eof` also stops (cleanly) when standard input reaches
/// its end: a supervisor that holds the other end of a pipe (`sealgate serve`) takes its
/// nodes down with it even when it is killed without a chance to stop them.
pub fn run_with(config: NodeConfig, stop_on_stdin_eof: bool) -> Result<(), NodeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sealgate-node")
        .build()
        .map_err(NodeError::Runtime)?;
    runtime.block_on(async {
        let id = config.id;
        let metrics_bind = config.metrics_bind;
        let emf = config.emf.clone();
        let node = start(config).await?;
        let metrics_stop = CancellationToken::new();
        let (metrics, emf_task) =
            serve_metrics(&node, metrics_bind, emf.clone(), metrics_stop.clone()).await?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "sealgate node {id} listening on {}", node.local_addr());
        if let Some(emf) = &emf {
            let _ = writeln!(
                out,
                "sealgate node {id} CloudWatch EMF every {:?} to {}",
                emf.flush_interval,
                emf.path.display()
            );
        }
        if let Some(addr) = metrics {
            let _ = writeln!(out, "sealgate node {id} metrics on http://{addr}");
        }
        let _ = out.flush();
        drop(out);
        if stop_on_stdin_eof {
            tokio::select! {
                () = wait_for_signal() => {}
                () = stdin_closed() => info!("standard input closed: the supervisor is gone"),
            }
        } else {
            wait_for_signal().await;
        }
        info!("shutting down");
        metrics_stop.cancel();
        if let Some(task) = emf_task {
            // The last interval's counts are written as the writer stops.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        node.shutdown().await;
        info!("stopped");
        Ok::<(), NodeError>(())
    })?;
    // Connections that outlived the grace period are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// With a `bind` address or an `emf` output, installs the process's metrics recorder; serves
/// `/metrics`, `/healthz` and `/readyz` on `bind` and writes EMF lines to `emf` until `stop`.
/// Returns the endpoint's address and the EMF writer's task.
async fn serve_metrics(
    node: &NodeHandle,
    bind: Option<SocketAddr>,
    emf: Option<sealgate_monitoring::emf::EmfConfig>,
    stop: CancellationToken,
) -> Result<(Option<SocketAddr>, Option<tokio::task::JoinHandle<()>>), NodeError> {
    if bind.is_none() && emf.is_none() {
        return Ok((None, None));
    }
    let handle = exporter::install(&[]).map_err(|e| NodeError::Metrics(e.to_string()))?;
    node.shared.metrics_enabled.store(true, Ordering::Relaxed);
    let (on_scrape, ready) = node.metrics_hooks();
    let exposition = Arc::new(Exposition::new(handle, on_scrape, ready));
    let address = match bind {
        Some(bind) => Some(
            exporter::serve(bind, Arc::clone(&exposition), stop.clone())
                .await
                .map_err(|e| NodeError::Metrics(e.to_string()))?
                .local_addr(),
        ),
        None => None,
    };
    let task = emf.map(|emf| tokio::spawn(sealgate_monitoring::emf::run(emf, exposition, stop)));
    Ok((address, task))
}

/// Returns when standard input reaches its end (or fails).
async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A warning that a flood would repeat: logged at most once a second, with how many were not.
#[derive(Default)]
struct RateLimitedLog {
    last: std::sync::Mutex<Option<Instant>>,
    suppressed: AtomicUsize,
}

impl RateLimitedLog {
    /// Calls `log` with the number of events suppressed since the last line, or counts this
    /// one as suppressed.
    fn note(&self, log: impl FnOnce(usize)) {
        let now = Instant::now();
        let due = match self.last.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
                if due {
                    *last = Some(now);
                }
                due
            }
            Err(_) => true,
        };
        if due {
            log(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let open = shared.connections.load(Ordering::Relaxed);
                if open >= shared.config.limits.max_connections {
                    shared.refusals.note(|suppressed| {
                        warn!(
                            %peer,
                            "refused connection: {open} connections open (limit); \
                             {suppressed} more refused in the last second"
                        );
                    });
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let task_shared = Arc::clone(&shared);
                shared.tracker.spawn(async move {
                    serve_connection(&task_shared, tcp, peer).await;
                    task_shared.connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                // Out of file descriptors, say: back off a little rather than spin.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    shared.tracker.close();
    let grace = Duration::from_secs(shared.config.limits.shutdown_grace_secs);
    if tokio::time::timeout(grace, shared.tracker.wait())
        .await
        .is_err()
    {
        warn!("connections still open after {grace:?}; closing them");
    }
}

type Reader<S> = FramedRead<tokio::io::ReadHalf<S>, LengthDelimitedCodec>;

/// Sends frames in batches: every frame queued while the last write was in progress goes out
/// in the next write. Ends (and so ends the connection) when a write fails or a client leaves
/// answers unread for `timeout`.
async fn write_frames<S: AsyncWrite>(
    mut sink: FramedWrite<tokio::io::WriteHalf<S>, LengthDelimitedCodec>,
    mut frames: mpsc::Receiver<Bytes>,
    peer: SocketAddr,
    timeout: Duration,
) {
    while let Some(frame) = frames.recv().await {
        let batch = async {
            sink.feed(frame).await?;
            while let Ok(more) = frames.try_recv() {
                sink.feed(more).await?;
            }
            SinkExt::<Bytes>::flush(&mut sink).await
        };
        match tokio::time::timeout(timeout, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(%peer, "connection ended: {e}");
                return;
            }
            Err(_) => {
                warn!(%peer, "closed connection: answers unread for {timeout:?}");
                return;
            }
        }
    }
    let _ = tokio::time::timeout(timeout, SinkExt::<Bytes>::close(&mut sink)).await;
}

/// Encodes an answer that promises no log position (see [`indexed_response`]).
fn response(id: u64, result: Result<Reply, proto::Error>) -> Bytes {
    indexed_response(id, 0, result)
}

/// Encodes an answer given when the node had applied the log up to `index`; one too large for a
/// response frame becomes an error saying so.
fn indexed_response(id: u64, index: u64, result: Result<Reply, proto::Error>) -> Bytes {
    let bytes = proto::encode(&ResponseFrame { id, index, result });
    if bytes.len() <= proto::MAX_RESPONSE_LEN {
        return Bytes::from(bytes);
    }
    let message = format!(
        "the answer is {} bytes, over the {} byte limit; narrow the request (a key filter, say)",
        bytes.len(),
        proto::MAX_RESPONSE_LEN
    );
    Bytes::from(proto::encode(&ResponseFrame {
        id,
        index,
        result: Err(proto::Error::new(ErrorKind::LimitReached, message)),
    }))
}

fn refusal(id: u64, kind: ErrorKind, message: impl Into<String>) -> Bytes {
    response(id, Err(proto::Error::new(kind, message)))
}

async fn serve_connection(shared: &Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let limits = &shared.config.limits;
    let handshake = Duration::from_secs(limits.handshake_timeout_secs);
    let tcp = Counted::new(tcp, Arc::clone(&shared.octets));
    let stream = match tokio::time::timeout(handshake, shared.acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            warn!(%peer, "refused connection: TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            warn!(%peer, "refused connection: no TLS handshake within {handshake:?}");
            return;
        }
    };
    // A node of the cluster (by its certificate) may send raft messages; clients may not.
    let peer_node = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| tls::peer_node_id(cert));
    let (read, write) = tokio::io::split(stream);
    let mut reader = FramedRead::new(read, proto::length_codec(limits.max_frame_len));
    let (tx, rx) = mpsc::channel::<Bytes>(limits.max_in_flight.saturating_add(8));
    let sink = FramedWrite::new(write, proto::length_codec(proto::MAX_RESPONSE_LEN));
    let write_timeout = Duration::from_secs(limits.write_timeout_secs);
    let writer = tokio::spawn(write_frames(sink, rx, peer, write_timeout));

    if hello(
        shared,
        &mut reader,
        &tx,
        peer,
        handshake,
        peer_node.is_some(),
    )
    .await
    {
        if peer_node.is_some() {
            // A peer node sends raft messages and health checks only: no engine session (an
            // engine request from it finds no session and is refused as not logged in).
            serve_requests(shared, &mut reader, &tx, peer, NO_SESSION, peer_node).await;
        } else {
            match open_session(shared).await {
                Ok(session) => {
                    serve_requests(shared, &mut reader, &tx, peer, session, peer_node).await;
                    close_session(shared, session).await;
                }
                Err(e) => {
                    warn!(%peer, "refused connection: {e}");
                    let _ = tx.send(refusal(0, e.kind, e.message)).await;
                }
            }
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(write_timeout, writer).await;
}

/// Reads the first frame, which must be a hello with a version both sides speak.
async fn hello<S: AsyncRead>(
    shared: &Shared,
    reader: &mut Reader<S>,
    tx: &mpsc::Sender<Bytes>,
    peer: SocketAddr,
    deadline: Duration,
    from_node: bool,
) -> bool {
    let frame = match tokio::time::timeout(deadline, reader.next()).await {
        Ok(Some(Ok(bytes))) => bytes,
        Ok(Some(Err(e))) => {
            refuse_stream_error(tx, peer, &e).await;
            return false;
        }
        Ok(None) => return false,
        Err(_) => {
            warn!(%peer, "refused connection: no hello within {deadline:?}");
            return false;
        }
    };
    let (id, result) = match proto::decode_request(&frame) {
        Ok(RequestFrame {
            id,
            request: Request::Hello(h),
            ..
        }) => match proto::negotiate(h.min_version, h.max_version) {
            // A node that is joining serves its peers only. (A removed node still says hello,
            // so that clients learn the membership from its health answer; it refuses every
            // other request.)
            Some(_) if !from_node && shared.hsm.cluster_id().is_empty() => {
                (id, shared.hsm.serving().map(|()| Reply::Done))
            }
            Some(version) => {
                debug!(%peer, client = ?h.client, version, "hello");
                let limits = &shared.config.limits;
                (
                    id,
                    Ok(Reply::Welcome(Welcome {
                        version,
                        node_id: shared.hsm.node_id(),
                        cluster_id: shared.hsm.cluster_id(),
                        max_frame_len: u32::try_from(limits.max_frame_len).unwrap_or(u32::MAX),
                        max_in_flight: u32::try_from(limits.max_in_flight).unwrap_or(u32::MAX),
                    })),
                )
            }
            None => (
                id,
                Err(proto::Error::new(
                    ErrorKind::UnsupportedVersion,
                    format!(
                        "protocol versions {}..={} are not supported; this node speaks {}..={}",
                        h.min_version,
                        h.max_version,
                        proto::MIN_VERSION,
                        proto::VERSION
                    ),
                )),
            ),
        },
        Ok(other) => (
            other.id,
            Err(proto::Error::new(
                ErrorKind::BadRequest,
                "the first request on a connection must be hello",
            )),
        ),
        Err(e) => (
            proto::decode_request_id(&frame).unwrap_or(0),
            Err(proto::Error::new(ErrorKind::BadRequest, e.to_string())),
        ),
    };
    let ok = result.is_ok();
    if let Err(e) = &result {
        warn!(%peer, "refused connection: {e}");
    }
    let _ = tx.send(response(id, result)).await;
    ok
}

async fn refuse_stream_error(tx: &mpsc::Sender<Bytes>, peer: SocketAddr, e: &std::io::Error) {
    let too_long = e
        .get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>());
    if too_long {
        warn!(%peer, "refused connection: frame over the size limit");
        let _ = tx
            .send(refusal(
                0,
                ErrorKind::FrameTooLarge,
                "frame over the size limit",
            ))
            .await;
    } else {
        debug!(%peer, "connection ended: {e}");
    }
}

/// The session of a peer node's connection: none (the engine numbers sessions from 1).
const NO_SESSION: SessionId = SessionId(0);

/// Most frames read in one go and handed to the crypto pool together.
const READ_BATCH: usize = 128;

/// Largest batch whose cheap requests are answered on the connection's task (`runs_inline`):
/// eight P-256 signatures are about 160 µs of the task's time. Larger batches go to the crypto
/// threads, which spread them over the cores. Measured with `loadtest/bench/sign-ab.sh`
/// against 2: node CPU per signature 0.82× with 4 callers, 0.85× with 16, equal with 64.
const INLINE_BATCH: usize = 8;

/// Requests that take a few tens of microseconds of CPU and do not wait (when the log index
/// the client has seen is applied and no write holds the state): ECDSA, Ed25519 and
/// HMAC signatures (a P-256 signature is about 20 µs; RSA-2048 is over 200 µs and goes to the
/// pool). At the moderate rates of TLS handshakes, handing each to a crypto thread and its
/// answer back to the writer cost the node several times the signature itself, in thread
/// wake-ups (BENCHMARKS.md, "The proxy against nginx").
fn runs_inline(request: &Request) -> bool {
    matches!(
        request,
        Request::Sign {
            mechanism: SignMechanism::Ecdsa(_) | SignMechanism::Ed25519 | SignMechanism::Hmac(_),
            ..
        }
    )
}

/// Runs one engine request for `session` and encodes its answer: on a crypto thread, or inline
/// (`runs_inline`). A panic inside the engine is a bug; it is answered, not propagated. Its
/// time in the engine and since it `arrived` go to the operation's latency histograms.
fn execute(
    shared: &Shared,
    session: SessionId,
    id: u64,
    min_index: u64,
    request: Request,
    arrived: Instant,
) -> Bytes {
    let hsm = &shared.hsm;
    let name = request.name();
    let started = Instant::now();
    // Signatures are counted (`Health::signs`).
    let sign = matches!(request, Request::Sign { .. });
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        hsm.serving()?;
        // Read-your-writes: first catch up with what the client has seen.
        hsm.wait_applied(min_index)?;
        hsm.handle(session, request)
    }))
    .unwrap_or_else(|_| {
        error!("request {name} failed inside the node (a bug)");
        Err(proto::Error::new(
            ErrorKind::Failed,
            format!("{name} failed inside the node"),
        ))
    });
    if sign && result.is_ok() {
        shared.signs.fetch_add(1, Ordering::Relaxed);
    }
    if shared.metrics_enabled.load(Ordering::Relaxed) {
        let done = Instant::now();
        crate::metrics::operation(shared, name, done - started, done - arrived);
    }
    indexed_response(id, hsm.log_index(), result)
}

async fn serve_requests<S: AsyncRead>(
    shared: &Arc<Shared>,
    reader: &mut Reader<S>,
    tx: &mpsc::Sender<Bytes>,
    peer: SocketAddr,
    session: SessionId,
    peer_node: Option<u32>,
) {
    let max_in_flight = shared.config.limits.max_in_flight;
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    // Every frame that has already arrived, up to READ_BATCH, in one batch.
    let mut frames = reader.ready_chunks(READ_BATCH);
    let mut open = true;
    while open {
        let next = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            // The writer gave up (a failed write, a client that does not read): stop reading.
            () = tx.closed() => break,
            next = frames.next() => next,
        };
        let Some(batch) = next else { break };
        let arrived = Instant::now();
        // Requests that cost less than the hand-off to a crypto thread and back (see
        // `runs_inline`) are answered here, in a batch of up to INLINE_BATCH when the pool has
        // nothing queued; a larger batch, or a busy pool, goes to the crypto threads, which
        // spread it over the cores.
        let inline = batch.len() <= INLINE_BATCH && shared.pool.queued() == 0;
        let mut jobs = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        let mut answers = Vec::new();
        for frame in batch {
            let bytes = match frame {
                Ok(bytes) => bytes,
                Err(e) => {
                    refuse_stream_error(tx, peer, &e).await;
                    open = false;
                    break;
                }
            };
            let RequestFrame {
                id,
                min_index,
                request,
            } = match proto::decode_request(&bytes) {
                Ok(frame) => frame,
                Err(e) => {
                    warn!(%peer, "closed connection: {e}");
                    let id = proto::decode_request_id(&bytes).unwrap_or(0);
                    answers.push(refusal(id, ErrorKind::BadRequest, e.to_string()));
                    open = false;
                    break;
                }
            };
            let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                let message =
                    format!("more than {max_in_flight} requests in flight on this connection");
                answers.push(refusal(id, ErrorKind::TooManyInFlight, message));
                continue;
            };
            if matches!(request, Request::Health) {
                answers.push(response(id, Ok(health(shared))));
                continue;
            }
            let change = match &request {
                Request::AddNode { id, address } => Some(MembershipChange::Add {
                    id: *id,
                    address: address.clone(),
                }),
                Request::RemoveNode { id } => Some(MembershipChange::Remove { id: *id }),
                _ => None,
            };
            if let Some(change) = change {
                let (hsm, answer) = (Arc::clone(&shared.hsm), tx.clone());
                tokio::spawn(async move {
                    let result = match hsm.serving() {
                        Ok(()) => {
                            Arc::clone(&hsm)
                                .change_membership(session, change, peer)
                                .await
                        }
                        Err(e) => Err(e),
                    };
                    let index = hsm.log_index();
                    let _ = answer.send(indexed_response(id, index, result)).await;
                    drop(permit);
                });
                continue;
            }
            if let Request::Raft { rpc, payload } = request {
                let Some(from) = peer_node else {
                    warn!(%peer, "refused a raft message from a client certificate");
                    answers.push(refusal(
                        id,
                        ErrorKind::PermissionDenied,
                        "raft messages are accepted from the cluster's nodes only",
                    ));
                    continue;
                };
                if rpc == proto::RaftRpc::DomainKey {
                    answers.push(response(id, domain_key(shared, from)));
                    continue;
                }
                let (hsm, answer) = (Arc::clone(&shared.hsm), tx.clone());
                tokio::spawn(async move {
                    let result = crate::raft::serve(hsm.raft(), rpc, &payload)
                        .await
                        .map(Reply::Raft);
                    if let Err(e) = &result {
                        debug!(node = from, "raft message refused: {e}");
                    }
                    let _ = answer.send(response(id, result)).await;
                    drop(permit);
                });
                continue;
            }
            if inline
                && runs_inline(&request)
                && shared.hsm.log_index() >= min_index
                && shared.hsm.readable_now()
            {
                answers.push(execute(shared, session, id, min_index, request, arrived));
                drop(permit);
                continue;
            }
            let shared = Arc::clone(shared);
            let answer = tx.clone();
            jobs.push(Box::new(move |outbox: &mut Outbox| {
                let bytes = execute(&shared, session, id, min_index, request, arrived);
                outbox.send(answer, bytes, permit);
            }) as Job);
            ids.push(id);
        }
        let refused = shared.pool.run_batch(jobs);
        if !refused.is_empty() {
            shared.busy.fetch_add(refused.len(), Ordering::Relaxed);
            let limit = shared.config.limits.max_queued;
            let message =
                format!("node is busy ({limit} requests queued); retry later or on another node");
            // Refused jobs are the last ones of the batch; dropping them frees their slots.
            let first_refused = ids.len() - refused.len();
            drop(refused);
            for &id in ids.iter().skip(first_refused) {
                answers.push(refusal(id, ErrorKind::Busy, message.clone()));
            }
        }
        for answer in answers {
            let _ = tx.send(answer).await;
        }
    }
    // Let the requests in flight finish before the session (and its keys) goes away.
    let grace = Duration::from_secs(shared.config.limits.shutdown_grace_secs);
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace, in_flight.acquire_many(all)).await;
}

/// The domain key, for node `from` if it is a member of the cluster (added by a crypto
/// officer); its certificate was checked against the cluster CA by the TLS handshake.
fn domain_key(shared: &Shared, from: u32) -> Result<Reply, proto::Error> {
    let metrics = shared.hsm.raft().metrics().borrow().clone();
    let member = metrics
        .membership_config
        .membership()
        .get_node(&u64::from(from))
        .is_some();
    if !member || from == shared.config.id {
        warn!(
            node = from,
            "refused the domain key to a node that is not a member"
        );
        return Err(proto::Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "node {from} is not a member of the cluster; add it with `sealgate cluster add-node`"
            ),
        ));
    }
    info!(
        node = from,
        "gave the cluster's domain key to a joining member"
    );
    Ok(Reply::Raft(shared.domain_key.to_vec()))
}

fn health(shared: &Shared) -> Reply {
    let metrics = shared.hsm.raft().metrics().borrow().clone();
    let (members, membership_index) = shared.hsm.membership();
    let count = |n: &AtomicUsize| u32::try_from(n.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
    Reply::Health(Health {
        node_id: shared.hsm.node_id(),
        applied_index: metrics.last_applied.map_or(0, |id| id.index),
        sessions: count(&shared.sessions),
        connections: count(&shared.connections),
        queued: u32::try_from(shared.pool.queued()).unwrap_or(u32::MAX),
        writable: shared.hsm.writable(),
        leader: metrics.current_leader.and_then(|id| u32::try_from(id).ok()),
        role: if shared.hsm.is_removed() {
            "removed"
        } else if shared.hsm.cluster_id().is_empty() {
            "joining"
        } else {
            match metrics.state {
                openraft::ServerState::Leader => "leader",
                openraft::ServerState::Follower => "follower",
                openraft::ServerState::Candidate => "candidate",
                openraft::ServerState::Learner => "learner",
                openraft::ServerState::Shutdown => "shut down",
            }
        }
        .to_owned(),
        term: metrics.current_term,
        members,
        membership_index,
        signs: shared.signs.load(Ordering::Relaxed),
    })
}

async fn open_session(shared: &Arc<Shared>) -> Result<SessionId, proto::Error> {
    let hsm = Arc::clone(&shared.hsm);
    let session = blocking(move || hsm.open_session()).await??;
    shared.sessions.fetch_add(1, Ordering::Relaxed);
    Ok(session)
}

async fn close_session(shared: &Arc<Shared>, session: SessionId) {
    let hsm = Arc::clone(&shared.hsm);
    let _ = blocking(move || hsm.close_session(session)).await;
    shared.sessions.fetch_sub(1, Ordering::Relaxed);
}

/// Session bookkeeping takes the engine lock, which a write may hold while it fsyncs: it runs
/// on tokio's blocking threads, and is never refused as busy.
async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, proto::Error> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|_| proto::Error::new(ErrorKind::Failed, "the request failed inside the node"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_is_one_line_a_second_with_a_count() {
        let log = RateLimitedLog::default();
        let mut lines = Vec::new();
        for _ in 0..1000 {
            log.note(|suppressed| lines.push(suppressed));
        }
        assert_eq!(lines, vec![0], "one line for the first second");
        if let Ok(mut last) = log.last.lock() {
            *last = Some(Instant::now() - Duration::from_secs(2));
        }
        log.note(|suppressed| lines.push(suppressed));
        assert_eq!(
            lines,
            vec![0, 999],
            "the next line counts what was not logged"
        );
    }
}
