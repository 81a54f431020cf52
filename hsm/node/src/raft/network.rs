//! The raft transport between nodes: the nodes' own protocol over the cluster's mutual TLS.
//! A node connects to a peer with its node certificate (which the peer checks names a node of
//! the cluster), says hello, and sends `Request::Raft` frames carrying openraft's messages
//! encoded with postcard. One connection per peer, one message at a time (openraft drives each
//! peer from one task); a failed call drops the connection, and the next one reconnects.

use super::{ClusterEntry, MembershipChange, NodeId, TypeConfig};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use openraft::BasicNode;
use openraft::error::{
    ClientWriteError, InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, ClientWriteResponse, InstallSnapshotRequest,
    InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use rustls_pki_types::ServerName;
use sealgate_hsm_proto::{self as proto, Hello, RaftRpc, Reply, Request, RequestFrame};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use zeroize::Zeroizing;

type Conn = Framed<TlsStream<TcpStream>, LengthDelimitedCodec>;

/// First wait before retrying an unreachable peer.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// Longest wait before retrying an unreachable peer.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The peer could not be reached or the connection broke.
    #[error("node {node} at {address}: {reason}")]
    Unreachable {
        /// The peer.
        node: NodeId,
        /// Its address.
        address: String,
        /// What happened.
        reason: String,
    },
    /// The peer answered with an error.
    #[error("node {node} refused: {error}")]
    Refused {
        /// The peer.
        node: NodeId,
        /// Its answer.
        error: proto::Error,
    },
}

/// Idle links by peer and address.
type IdleLinks = std::collections::HashMap<(NodeId, String), Vec<PeerLink>>;

/// Most idle connections kept per peer for forwarded writes and membership changes.
const IDLE_LINKS_PER_PEER: usize = 4;

/// Creates links to other nodes with this node's TLS identity.
#[derive(Clone)]
pub struct PeerNetwork {
    tls: Arc<rustls::ClientConfig>,
    /// Connections to peers left open after a forwarded request, by peer and address: a
    /// follower forwards every write to the leader, and a new mutual-TLS handshake for each
    /// cost the leader about 8 % of its time.
    idle: Arc<std::sync::Mutex<IdleLinks>>,
}

impl std::fmt::Debug for PeerNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerNetwork").finish_non_exhaustive()
    }
}

impl PeerNetwork {
    /// Links made with `tls` (the node's certificate, the cluster CA).
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            tls,
            idle: Arc::default(),
        }
    }

    /// An idle connected link to `target`, or a new one. A pooled connection that the peer
    /// has closed meanwhile (it restarted, say) is dropped here, before a request is sent on
    /// it: a request lost on a dead connection could not be told from one that was applied.
    fn checkout(&self, target: NodeId, node: &BasicNode) -> PeerLink {
        let pooled = self.idle.lock().ok().and_then(|mut idle| {
            idle.get_mut(&(target, node.addr.clone()))
                .and_then(Vec::pop)
        });
        let mut link = pooled.unwrap_or_else(|| self.link(target, node));
        if let Some(conn) = link.conn.as_mut() {
            // Nothing is expected on an idle connection: end of stream, an error or stray
            // data all mean it is not fit for a request.
            if conn.next().now_or_never().is_some() {
                link.conn = None;
            }
        }
        link
    }

    /// Keeps `link` for the next request to its peer if it is still connected.
    fn checkin(&self, link: PeerLink) {
        if link.conn.is_none() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let links = idle.entry((link.target, link.address.clone())).or_default();
            if links.len() < IDLE_LINKS_PER_PEER {
                links.push(link);
            }
        }
    }

    /// A link to `target` at `node`'s address.
    pub fn link(&self, target: NodeId, node: &BasicNode) -> PeerLink {
        PeerLink {
            target,
            address: node.addr.clone(),
            tls: Arc::clone(&self.tls),
            conn: None,
            next_id: 1,
        }
    }

    /// Sends a write to the leader `target` (this node is a follower) and returns the leader's
    /// answer once the entry is committed and applied there.
    pub async fn forward(
        &self,
        target: NodeId,
        node: &BasicNode,
        entry: &ClusterEntry,
        timeout: Duration,
    ) -> Result<
        Result<
            ClientWriteResponse<TypeConfig>,
            RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
        >,
        LinkError,
    > {
        let mut link = self.checkout(target, node);
        let answer = link.call(RaftRpc::Forward, entry, timeout).await;
        self.checkin(link);
        answer
    }

    /// Sends a membership change to the leader `target` and returns its answer.
    pub async fn change_membership(
        &self,
        target: NodeId,
        node: &BasicNode,
        change: &MembershipChange,
        timeout: Duration,
    ) -> Result<Result<Vec<proto::Member>, proto::Error>, LinkError> {
        let mut link = self.checkout(target, node);
        let answer = link.call(RaftRpc::ChangeMembership, change, timeout).await;
        self.checkin(link);
        answer
    }

    /// Asks `target` for its health (which carries the membership it knows).
    pub async fn health(
        &self,
        target: NodeId,
        node: &BasicNode,
        timeout: Duration,
    ) -> Result<proto::Health, LinkError> {
        let mut link = self.link(target, node);
        match tokio::time::timeout(timeout, link.request(Request::Health)).await {
            Ok(Ok(Reply::Health(health))) => Ok(health),
            Ok(Ok(other)) => Err(link.unreachable(format!("unexpected answer {other:?}"))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(link.unreachable(format!("no answer within {timeout:?}"))),
        }
    }

    /// Asks `target` for the cluster's domain key (this node is joining the cluster). The
    /// answer is the key's 32 bytes, over this mutual-TLS connection only.
    pub async fn domain_key(
        &self,
        target: NodeId,
        node: &BasicNode,
        timeout: Duration,
    ) -> Result<Zeroizing<[u8; 32]>, LinkError> {
        let mut link = self.link(target, node);
        let answer = tokio::time::timeout(timeout, link.exchange(RaftRpc::DomainKey, Vec::new()))
            .await
            .unwrap_or_else(|_| Err(link.unreachable(format!("no answer within {timeout:?}"))))
            .map(Zeroizing::new)?;
        let mut key = Zeroizing::new([0u8; 32]);
        if answer.len() != key.len() {
            return Err(link.unreachable("the answer is not a 32-byte key"));
        }
        key.copy_from_slice(&answer);
        Ok(key)
    }
}

/// A connection to one other node.
pub struct PeerLink {
    target: NodeId,
    address: String,
    tls: Arc<rustls::ClientConfig>,
    conn: Option<Conn>,
    next_id: u64,
}

impl PeerLink {
    fn unreachable(&self, reason: impl std::fmt::Display) -> LinkError {
        LinkError::Unreachable {
            node: self.target,
            address: self.address.clone(),
            reason: reason.to_string(),
        }
    }

    async fn connect(&self) -> Result<Conn, LinkError> {
        let tcp = TcpStream::connect(&self.address)
            .await
            .map_err(|e| self.unreachable(e))?;
        let _ = tcp.set_nodelay(true);
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name = ServerName::try_from(host).map_err(|e| self.unreachable(e))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut conn = Framed::new(tls, proto::length_codec(proto::MAX_RESPONSE_LEN));
        let hello = RequestFrame::new(0, Request::Hello(Hello::current("sealgate node")));
        conn.send(Bytes::from(proto::encode(&hello)))
            .await
            .map_err(|e| self.unreachable(e))?;
        match conn.next().await {
            Some(Ok(bytes)) => match proto::decode_response(&bytes) {
                Ok(frame) => match frame.result {
                    Ok(Reply::Welcome(_)) => Ok(conn),
                    Ok(other) => {
                        Err(self.unreachable(format!("unexpected hello answer {other:?}")))
                    }
                    Err(error) => Err(LinkError::Refused {
                        node: self.target,
                        error,
                    }),
                },
                Err(e) => Err(self.unreachable(e)),
            },
            Some(Err(e)) => Err(self.unreachable(e)),
            None => Err(self.unreachable("closed during hello")),
        }
    }

    /// Sends `message` as `rpc` and decodes the answer, within `timeout`.
    async fn call<M: Serialize, R: DeserializeOwned>(
        &mut self,
        rpc: RaftRpc,
        message: &M,
        timeout: Duration,
    ) -> Result<R, LinkError> {
        let payload = postcard::to_stdvec(message).map_err(|e| self.unreachable(e))?;
        let result = tokio::time::timeout(timeout, self.exchange(rpc, payload))
            .await
            .unwrap_or_else(|_| Err(self.unreachable(format!("no answer within {timeout:?}"))));
        if result.is_err() {
            self.conn = None;
        }
        let bytes = result?;
        postcard::from_bytes(&bytes).map_err(|e| self.unreachable(e))
    }

    async fn exchange(&mut self, rpc: RaftRpc, payload: Vec<u8>) -> Result<Vec<u8>, LinkError> {
        match self.request(Request::Raft { rpc, payload }).await? {
            Reply::Raft(bytes) => Ok(bytes),
            other => Err(self.unreachable(format!("unexpected answer {other:?}"))),
        }
    }

    /// Sends one request and waits for its answer, connecting first if needed.
    async fn request(&mut self, request: Request) -> Result<Reply, LinkError> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let id = self.next_id;
        self.next_id += 1;
        let frame = RequestFrame::new(id, request);
        let target = self.target;
        let unreachable = |reason: String| LinkError::Unreachable {
            node: target,
            address: self.address.clone(),
            reason,
        };
        let Some(conn) = self.conn.as_mut() else {
            return Err(unreachable("not connected".into()));
        };
        conn.send(Bytes::from(proto::encode(&frame)))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        loop {
            let bytes = match conn.next().await {
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => return Err(unreachable(e.to_string())),
                None => return Err(unreachable("connection closed".into())),
            };
            let answer = proto::decode_response(&bytes).map_err(|e| unreachable(e.to_string()))?;
            if answer.id != id {
                continue;
            }
            return answer.result.map_err(|error| LinkError::Refused {
                node: target,
                error,
            });
        }
    }

    /// A raft call whose answer is openraft's `Result<R, E>`.
    async fn raft_call<M: Serialize, R: DeserializeOwned, E>(
        &mut self,
        rpc: RaftRpc,
        message: &M,
        option: &RPCOption,
    ) -> Result<R, RPCError<NodeId, BasicNode, E>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<R, E> = self
            .call(rpc, message, option.hard_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerLink {
        self.link(target, node)
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.raft_call(RaftRpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.raft_call(RaftRpc::InstallSnapshot, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.raft_call(RaftRpc::Vote, &rpc, &option).await
    }

    /// After a peer was unreachable: retry after 250 ms, doubling up to 2 s (openraft's
    /// default is every 500 ms forever, which logs a few lines each time for a node that is
    /// down). A node that comes back is contacted within 2 s.
    fn backoff(&self) -> Backoff {
        Backoff::new((0u32..).map(|attempt| {
            BACKOFF_FIRST
                .saturating_mul(2u32.saturating_pow(attempt))
                .min(BACKOFF_MAX)
        }))
    }
}

/// Answers a raft message from a peer node: decodes it, hands it to `raft`, encodes the answer.
pub async fn serve(
    raft: &super::Raft,
    rpc: RaftRpc,
    payload: &[u8],
) -> Result<Vec<u8>, proto::Error> {
    fn bad(e: impl std::fmt::Display) -> proto::Error {
        proto::Error::new(proto::ErrorKind::BadRequest, format!("raft message: {e}"))
    }
    fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, proto::Error> {
        postcard::to_stdvec(value)
            .map_err(|e| proto::Error::new(proto::ErrorKind::Failed, format!("raft answer: {e}")))
    }
    match rpc {
        RaftRpc::AppendEntries => {
            let request = postcard::from_bytes(payload).map_err(bad)?;
            encode(&raft.append_entries(request).await)
        }
        RaftRpc::Vote => {
            let request = postcard::from_bytes(payload).map_err(bad)?;
            encode(&raft.vote(request).await)
        }
        RaftRpc::InstallSnapshot => {
            let request = postcard::from_bytes(payload).map_err(bad)?;
            encode(&raft.install_snapshot(request).await)
        }
        RaftRpc::Forward => {
            let entry: ClusterEntry = postcard::from_bytes(payload).map_err(bad)?;
            encode(&raft.client_write(entry).await)
        }
        RaftRpc::ChangeMembership => {
            let change: MembershipChange = postcard::from_bytes(payload).map_err(bad)?;
            encode(&super::membership::apply(raft, change).await)
        }
        // Answered by the server, which holds the key and knows the caller.
        RaftRpc::DomainKey => Err(bad("the domain key is not served here")),
    }
}
