//! The node's engine behind a lock, and the dispatch of each protocol request to it.
//!
//! Everything here blocks (argon2, RSA, fsync), so the server calls it only from its crypto
//! pool, never on an async worker. Reads and crypto operations share a read lock; session
//! changes and writes take the write lock, and a write holds it until its batch is durable, so
//! commands are applied and stored in one order and answered only once fsynced. A login checks
//! its password (argon2) between two short write-locked steps, holding no lock, and at most
//! half the crypto threads check passwords at once.

use crate::audit::{AuditEntry, AuditLog, ManagementEvent};
use crate::convert;
use crate::raft::{ClusterEntry, MembershipChange, PeerNetwork, Raft, Removal, Replica};
use openraft::error::ClientWriteError;
use sealgate_hsm_core::crypto::{EncryptMechanism, Password, PublicKey};
use sealgate_hsm_core::{
    AuditUser, Command, Engine, EngineError, FromOutcome, KeyHandle, Opcode, Outcome, Role,
    SessionId, Step, Timestamp,
};
use sealgate_hsm_proto::{self as proto, ErrorKind, Reply, Request, Secret};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// The engine, its store, and counters readable without the lock.
pub(crate) struct Hsm {
    node_id: u32,
    /// Logins whose password is being checked now, and the most allowed: argon2 takes tens
    /// of milliseconds of a crypto thread, so logins may not take every thread from signing.
    logins: AtomicUsize,
    max_logins: usize,
    /// The engine and store, shared with the raft state machine that applies the log.
    state: Arc<RwLock<Replica>>,
    raft: Raft,
    network: PeerNetwork,
    runtime: tokio::runtime::Handle,
    applied: AtomicU64,
    writable: AtomicBool,
    cluster_id: RwLock<String>,
    /// This run of the node ([`Replica::run_id`]), named in every entry it prepares.
    run_id: u64,
    /// Set when this node finds it was removed from the cluster
    /// ([`watch_removal`](crate::raft::watch_removal)).
    removal: Removal,
    /// The node's audit stream (`audit.jsonl`) and management events.
    audit: Arc<AuditLog>,
}

/// How long a follower waits for the leader to take a forwarded write, and then to apply it.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a node waits to catch up with a client's earlier writes before answering.
const READ_YOUR_WRITES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a raft write gave: the state machine's answer, or why raft did not take it.
type WriteResult = Result<
    openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>,
    openraft::error::RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>,
>;

/// The engine's time: the wall clock in milliseconds since the Unix epoch.
pub(crate) fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

fn password(secret: &Secret) -> Password {
    Password::new(secret.expose().to_owned())
}

fn unavailable() -> proto::Error {
    proto::Error::new(
        ErrorKind::Unavailable,
        "the node's engine failed earlier; restart it",
    )
}

fn engine_error(e: EngineError) -> proto::Error {
    convert::error(&e)
}

/// Approvals presented with a controlled request, and what they are for.
pub(crate) struct Approved {
    approvals: sealgate_hsm_core::Approvals,
    service: sealgate_hsm_core::QuorumService,
    key: Option<KeyHandle>,
}

/// The quorum service (and key) that controls `request`, or why it is not controlled.
fn controlled(
    request: &Request,
) -> Result<(sealgate_hsm_core::QuorumService, Option<KeyHandle>), proto::Error> {
    request
        .quorum_control()
        .map(|(service, key)| (convert::quorum_service(service), key.map(KeyHandle)))
        .ok_or_else(|| {
            proto::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} is not quorum-controlled: it takes no approval",
                    request.name()
                ),
            )
        })
}

/// A role as management events name it.
fn role_name(role: Role) -> &'static str {
    match role {
        Role::PreCryptoOfficer => "PreCryptoOfficer",
        Role::CryptoOfficer => "CryptoOfficer",
        Role::CryptoUser => "CryptoUser",
        Role::ApplianceUser => "ApplianceUser",
    }
}

fn public_key_reply(key: &PublicKey) -> Reply {
    Reply::PublicKey {
        der: key.to_der().to_vec(),
        pem: key.to_pem(),
    }
}

impl Hsm {
    /// `crypto_threads` bounds the logins checked at once (half the threads, at least one).
    /// Writes are proposed to `raft`, whose state machine applies them to `state`.
    pub(crate) fn new(
        node_id: u32,
        state: Arc<RwLock<Replica>>,
        raft: Raft,
        network: PeerNetwork,
        runtime: tokio::runtime::Handle,
        crypto_threads: usize,
        audit: Arc<AuditLog>,
    ) -> Self {
        let (applied, run_id) = state
            .read()
            .map(|r| (r.engine().applied_index(), r.run_id()))
            .unwrap_or_default();
        let this = Self {
            node_id,
            logins: AtomicUsize::new(0),
            max_logins: (crypto_threads / 2).max(1),
            state,
            raft,
            network,
            runtime,
            applied: AtomicU64::new(applied),
            writable: AtomicBool::new(true),
            cluster_id: RwLock::new(String::new()),
            removal: Removal::default(),
            run_id,
            audit,
        };
        let _ = this.refresh_cluster_id();
        this
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Replica>, proto::Error> {
        self.state.read().map_err(|_| unavailable())
    }

    /// The engine's counters (for metrics); `None` while the state is unavailable.
    pub(crate) fn stats(&self) -> Option<sealgate_hsm_core::EngineStats> {
        self.read().ok().map(|st| st.engine().stats())
    }

    /// Whether nothing holds the state for writing right now (a log entry or a snapshot being
    /// applied), so a read would not wait: checked before answering on an I/O task.
    pub(crate) fn readable_now(&self) -> bool {
        self.state.try_read().is_ok()
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Replica>, proto::Error> {
        self.state.write().map_err(|_| unavailable())
    }

    /// The engine's cluster id, cached once known (a joining node learns it from the
    /// snapshot it receives).
    fn refresh_cluster_id(&self) -> String {
        let id = self
            .state
            .read()
            .ok()
            .and_then(|st| st.engine().cluster_uid())
            .map(|u| u.to_string())
            .unwrap_or_default();
        if !id.is_empty()
            && let Ok(mut slot) = self.cluster_id.write()
        {
            slot.clone_from(&id);
        }
        id
    }

    /// A place among the logins being checked, or `busy`.
    fn login_slot(&self) -> Result<LoginSlot<'_>, proto::Error> {
        if self.logins.fetch_add(1, Ordering::AcqRel) >= self.max_logins {
            self.logins.fetch_sub(1, Ordering::AcqRel);
            return Err(proto::Error::new(
                ErrorKind::Busy,
                format!(
                    "{} logins are being checked; retry the login shortly",
                    self.max_logins
                ),
            ));
        }
        Ok(LoginSlot(&self.logins))
    }

    /// How far this node has applied the cluster's log (raft index).
    pub(crate) fn log_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |id| id.index)
    }

    /// Waits (bounded) until this node has applied the log up to `index`, so a client reads
    /// what it wrote through another node. Called on a crypto thread.
    pub(crate) fn wait_applied(&self, index: u64) -> Result<(), proto::Error> {
        if index <= self.log_index() {
            return Ok(());
        }
        self.runtime
            .block_on(
                self.raft
                    .wait(Some(READ_YOUR_WRITES_TIMEOUT))
                    .applied_index_at_least(Some(index), "the client's writes applied here"),
            )
            .map(|_| ())
            .map_err(|_| {
                proto::Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "this node has not caught up with log index {index} within \
                         {READ_YOUR_WRITES_TIMEOUT:?}; try another node"
                    ),
                )
            })
    }

    /// The node's raft (for raft messages from the other nodes).
    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    pub(crate) fn node_id(&self) -> u32 {
        self.node_id
    }

    pub(crate) fn cluster_id(&self) -> String {
        let cached = self
            .cluster_id
            .read()
            .map(|s| s.clone())
            .unwrap_or_default();
        if cached.is_empty() {
            self.refresh_cluster_id()
        } else {
            cached
        }
    }

    /// Whether the cluster id is known (the node has the cluster's state), without copying it:
    /// asked on every request.
    fn has_cluster_id(&self) -> bool {
        let cached = self.cluster_id.read().is_ok_and(|s| !s.is_empty());
        cached || !self.refresh_cluster_id().is_empty()
    }

    /// Whether this node serves clients: not while it is joining (it has no cluster state
    /// yet) and not once it was removed from the cluster.
    pub(crate) fn serving(&self) -> Result<(), proto::Error> {
        if !self.has_cluster_id() {
            return Err(proto::Error::new(
                ErrorKind::Unavailable,
                format!(
                    "node {} is joining the cluster and has not received its state yet; \
                     use another node or retry later",
                    self.node_id
                ),
            ));
        }
        if self.is_removed() {
            return Err(proto::Error::new(
                ErrorKind::Unavailable,
                format!(
                    "node {} was removed from the cluster; use another node",
                    self.node_id
                ),
            ));
        }
        Ok(())
    }

    /// The node's audit stream.
    pub(crate) fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Whether this node was removed from the cluster.
    pub(crate) fn is_removed(&self) -> bool {
        self.removal.lock().is_ok_and(|r| r.is_some())
            || crate::raft::removed(&self.raft.metrics().borrow())
    }

    /// What the removal watch sets.
    pub(crate) fn removal(&self) -> Removal {
        Arc::clone(&self.removal)
    }

    /// The membership this node knows and its log index: from its log, or the newer one it
    /// learned when it found it was removed.
    pub(crate) fn membership(&self) -> (Vec<proto::Member>, u64) {
        let own = crate::raft::members(&self.raft.metrics().borrow());
        match self.removal.lock().ok().and_then(|r| r.clone()) {
            Some(learned) if learned.1 > own.1 => learned,
            _ => own,
        }
    }

    /// Refuses `session` unless a crypto officer is logged in on it.
    fn require_officer(&self, session: SessionId, what: &str) -> Result<(), proto::Error> {
        match self
            .read()?
            .engine()
            .session_user(session)
            .map_err(engine_error)?
        {
            Some((_, Role::CryptoOfficer)) => Ok(()),
            Some(_) => Err(proto::Error::new(
                ErrorKind::PermissionDenied,
                format!("only a crypto officer may {what}"),
            )),
            None => Err(proto::Error::new(
                ErrorKind::NotLoggedIn,
                format!("log in as a crypto officer to {what}"),
            )),
        }
    }

    /// Adds or removes a node (on the leader, through raft), asked by `session` from `peer`;
    /// audited and recorded as a management event, whether it succeeded or not. Runs as its
    /// own task, not on the crypto pool: adding a node waits for a snapshot and a log purge on
    /// the leader.
    pub(crate) async fn change_membership(
        self: Arc<Self>,
        session: SessionId,
        change: MembershipChange,
        peer: std::net::SocketAddr,
    ) -> Result<Reply, proto::Error> {
        let result = Arc::clone(&self)
            .try_change_membership(session, change.clone())
            .await;
        let hsm = Arc::clone(&self);
        let outcome = result.clone();
        // The records are fsynced: not on an async worker.
        let _ = tokio::task::spawn_blocking(move || {
            hsm.record_membership(session, &change, peer, &outcome);
        })
        .await;
        result
    }

    /// The audit record and the management event of a membership change.
    fn record_membership(
        &self,
        session: SessionId,
        change: &MembershipChange,
        peer: std::net::SocketAddr,
        outcome: &Result<Reply, proto::Error>,
    ) {
        let actor = self
            .state
            .read()
            .ok()
            .and_then(|st| st.engine().audit_session_user(session));
        let (opcode, name, parameters, detail) = match change {
            MembershipChange::Add { id, address } => (
                Opcode::AddNode,
                "AddNode",
                serde_json::json!({ "hsmId": id, "address": address }),
                format!("node {id} at {address}"),
            ),
            MembershipChange::Remove { id } => (
                Opcode::RemoveNode,
                "RemoveNode",
                serde_json::json!({ "hsmId": id }),
                format!("node {id}"),
            ),
        };
        let mut entry = AuditEntry::new(opcode);
        entry.session = Some(session);
        entry.actor = actor.clone();
        entry.detail = Some(detail);
        entry.response = outcome.as_ref().map(|_| ()).map_err(|e| e.kind);
        if let Err(e) = self.audit.record(entry) {
            tracing::error!("{e}");
        }
        let identity = serde_json::json!({
            "type": actor.as_ref().and_then(|a| a.role).map_or("Unauthenticated", role_name),
            "userName": actor.as_ref().map(|a| a.name.as_str()),
            "hsmId": self.node_id,
            "sessionId": session.0,
        });
        let mut event = ManagementEvent::new(name, identity, peer.ip().to_string());
        let cluster = self.cluster_id();
        event.cluster_id = (!cluster.is_empty()).then_some(cluster);
        event.request_parameters = parameters;
        match outcome {
            Ok(Reply::Members(members)) => {
                event.response_elements = serde_json::json!({ "members": members });
            }
            Ok(_) => {}
            Err(e) => {
                event.error_code = Some(e.kind.as_str().to_owned());
                event.error_message = Some(e.message.clone());
            }
        }
        self.audit.event(&event);
    }

    async fn try_change_membership(
        self: Arc<Self>,
        session: SessionId,
        change: MembershipChange,
    ) -> Result<Reply, proto::Error> {
        let hsm = Arc::clone(&self);
        // The engine lock may be held by a write while it fsyncs: not on an async worker.
        tokio::task::spawn_blocking(move || {
            hsm.require_officer(session, "change the cluster's membership")
        })
        .await
        .map_err(|_| proto::Error::new(ErrorKind::Failed, "the permission check failed"))??;
        let id = match &change {
            MembershipChange::Add { id, .. } | MembershipChange::Remove { id } => *id,
        };
        if id == 0 || id > crate::config::MAX_NODE_ID {
            return Err(proto::Error::new(
                ErrorKind::InvalidInput,
                format!("node ids are 1 to {}, not {id}", crate::config::MAX_NODE_ID),
            ));
        }
        crate::raft::change_membership(&self.raft, &self.network, change)
            .await
            .map(Reply::Members)
    }

    pub(crate) fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    pub(crate) fn writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    pub(crate) fn open_session(&self) -> Result<SessionId, proto::Error> {
        self.write()?
            .engine_mut()
            .open_session()
            .map_err(engine_error)
    }

    /// Ends `session`; a session still logged in (no logout) is audited as closed.
    pub(crate) fn close_session(&self, session: SessionId) {
        let user = match self.state.write() {
            Ok(mut st) => {
                let user = st.engine().audit_session_user(session);
                st.engine_mut().close_session(session);
                user
            }
            Err(_) => return,
        };
        if let Some(user) = user {
            let mut entry = AuditEntry::new(Opcode::CloseSession);
            entry.session = Some(session);
            entry.user = Some(user.clone());
            entry.actor = Some(user);
            if let Err(e) = self.audit.record(entry) {
                tracing::error!("{e}");
            }
        }
    }

    /// Runs a request that may change replicated state: prepares it with `prepare` and, if it
    /// produced a command, proposes it to the raft log and waits until it is applied (and
    /// durable) here. Called on a crypto thread, never on an async worker, so it may wait.
    fn change<T: FromOutcome>(
        &self,
        session: SessionId,
        approval: Option<&Approved>,
        prepare: impl FnOnce(&mut Engine, Timestamp) -> Result<Step<T>, EngineError>,
    ) -> Result<T, proto::Error> {
        let step = {
            let mut st = self.write()?;
            let now = now();
            match approval {
                Some(a) => st.engine_mut().with_approval(
                    session,
                    &a.approvals,
                    a.service,
                    a.key,
                    now,
                    |e| prepare(e, now),
                ),
                None => prepare(st.engine_mut(), now),
            }
            .map_err(engine_error)?
        };
        let cmd = match step {
            Step::Done(v) => return Ok(v),
            Step::Replicate(cmd) => cmd,
        };
        let entry = ClusterEntry {
            origin_node: u64::from(self.node_id),
            origin_run: self.run_id,
            origin_session: session.0,
            command: cmd.encode().map_err(engine_error)?,
        };
        let written = self.runtime.block_on(self.raft.client_write(entry.clone()));
        let written = match written {
            // A follower hands the write to the leader, then waits until it has applied the
            // entry itself, so the client reads its write here next (and a login finishes on
            // this node's session).
            Err(openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let (Some(leader), Some(node)) = (f.leader_id, f.leader_node) else {
                    return Err(proto::Error::new(
                        ErrorKind::Unavailable,
                        "no leader is elected now; retry shortly",
                    ));
                };
                self.forward(leader, &node, &entry)?
            }
            other => other,
        };
        if let Ok(st) = self.state.read() {
            self.applied
                .store(st.engine().applied_index(), Ordering::Relaxed);
        }
        match written {
            Ok(response) => match response.data.0 {
                Some(Ok(outcome)) => Ok(T::from_outcome(outcome)),
                Some(Err(e)) => Err(e),
                None => Err(proto::Error::new(
                    ErrorKind::Failed,
                    "the log entry carried no command",
                )),
            },
            Err(openraft::error::RaftError::APIError(e)) => Err(proto::Error::new(
                ErrorKind::Unavailable,
                format!("this node cannot take writes now: {e}"),
            )),
            Err(openraft::error::RaftError::Fatal(e)) => {
                // The log or the state machine failed to write: the engine's memory may be
                // ahead of its store, so the node stops answering (see `handle`).
                self.writable.store(false, Ordering::Relaxed);
                Err(proto::Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the node could not store the change, which may or may not survive; \
                         the node stops answering until restarted: {e}"
                    ),
                ))
            }
        }
    }

    /// Sends a write to the leader and waits until this node has applied it too.
    fn forward(
        &self,
        leader: u64,
        node: &openraft::BasicNode,
        entry: &ClusterEntry,
    ) -> Result<WriteResult, proto::Error> {
        let answer = self
            .runtime
            .block_on(self.network.forward(leader, node, entry, FORWARD_TIMEOUT))
            .map_err(|e| {
                proto::Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the leader did not take the write, which may or may not be applied: {e}"
                    ),
                )
            })?;
        if let Ok(response) = &answer {
            let index = response.log_id.index;
            self.runtime
                .block_on(
                    self.raft
                        .wait(Some(FORWARD_TIMEOUT))
                        .applied_index_at_least(Some(index), "a forwarded write applied here"),
                )
                .map_err(|e| {
                    proto::Error::new(
                        ErrorKind::Unavailable,
                        format!("the write was made but is not applied on this node yet: {e}"),
                    )
                })?;
        }
        Ok(answer)
    }

    /// [`Hsm::change`] for engine methods that always produce a command.
    fn command(
        &self,
        session: SessionId,
        approval: Option<&Approved>,
        prepare: impl FnOnce(&Engine, Timestamp) -> Result<Command, EngineError>,
    ) -> Result<Outcome, proto::Error> {
        self.change(session, approval, |engine, now| {
            prepare(engine, now).map(Step::Replicate)
        })
    }

    /// Answers one request on `session`, and audits it if it is a login or a management
    /// operation. Blocks: call it from the crypto pool.
    ///
    /// An audited request is refused while the audit log cannot be written (fail closed); the
    /// record is durable before the answer leaves.
    pub(crate) fn handle(
        &self,
        session: SessionId,
        request: Request,
    ) -> Result<Reply, proto::Error> {
        let Some(mut entry) = self.audit_plan(session, &request) else {
            return self.dispatch(session, request, None);
        };
        if !self.audit.healthy() {
            return Err(proto::Error::new(
                ErrorKind::Unavailable,
                format!(
                    "the node's audit log {} cannot be written, so it refuses audited \
                     operations until restarted; use another node",
                    self.audit.path().display()
                ),
            ));
        }
        let result = self.dispatch(session, request, None);
        match &result {
            Ok(Reply::KeysCreated(handles)) => match handles.as_slice() {
                [public, private] => {
                    entry.public_key_handle = Some(KeyHandle(*public));
                    entry.key_handle = Some(KeyHandle(*private));
                }
                [one, ..] => entry.key_handle = Some(KeyHandle(*one)),
                [] => {}
            },
            Ok(Reply::MfaChallenge { .. }) => {
                entry.detail = Some("password right; waiting for the MFA signature".into());
            }
            Ok(_) => {}
            Err(e) => entry.response = Err(e.kind),
        }
        if let Err(e) = self.audit.record(entry) {
            // The operation happened; the answer says so. Later ones are refused.
            tracing::error!("{e}");
        }
        result
    }

    /// What the audit record of `request` says, read before it runs (the session's user, the
    /// user it is about); `None` for a request that is not audited (reads, cryptographic
    /// operations).
    fn audit_plan(&self, session: SessionId, request: &Request) -> Option<AuditEntry> {
        if let Request::Approved { approval, request } = request {
            let mut entry = match self.audit_plan(session, request) {
                Some(entry) => entry,
                // An approved signature: the approval is the event.
                None => {
                    let mut entry = AuditEntry::new(Opcode::ApproveToken);
                    entry.session = Some(session);
                    entry.actor = self
                        .state
                        .read()
                        .ok()
                        .and_then(|st| st.engine().audit_session_user(session));
                    if let Request::Sign { handle, .. } = **request {
                        entry.key_handle = Some(KeyHandle(handle));
                    }
                    entry.detail = Some(request.name().to_owned());
                    entry
                }
            };
            let approvers: Vec<&str> = approval
                .signatures
                .iter()
                .map(|s| s.user.as_str())
                .collect();
            let approved = if approvers.is_empty() {
                format!("with quorum token {} and no approvals", approval.token)
            } else {
                format!(
                    "with the approvals of quorum token {} by {}",
                    approval.token,
                    approvers.join(", ")
                )
            };
            entry.detail = Some(match entry.detail.take() {
                Some(d) => format!("{d}; {approved}"),
                None => approved,
            });
            return Some(entry);
        }
        let opcode = match request {
            Request::Login { .. } => Opcode::Login,
            Request::Logout => Opcode::Logout,
            Request::Activate { .. } | Request::ChangePassword { .. } => Opcode::ChangePassword,
            Request::CreateUser {
                role: proto::Role::CryptoOfficer,
                ..
            } => Opcode::CreateCo,
            Request::CreateUser { .. } => Opcode::CreateUser,
            Request::DeleteUser { .. } => Opcode::DeleteUser,
            Request::GenerateKey { .. } => Opcode::GenerateKey,
            Request::GenerateKeyPair { .. } => Opcode::GenerateKeyPair,
            Request::ImportPublicKey { .. } => Opcode::CreateObject,
            Request::UnwrapKey { .. } => Opcode::UnwrapKey,
            Request::DeriveKey { .. } => Opcode::DeriveKey,
            Request::SetAttributes { .. } => Opcode::ModifyObject,
            Request::ShareKey { .. } => Opcode::ShareObject,
            Request::UnshareKey { .. } => Opcode::UnshareObject,
            Request::DeleteKey { .. } => Opcode::DestroyObject,
            Request::WrapKey { .. } => Opcode::WrapKey,
            Request::LoginMfa { .. } => Opcode::Login,
            Request::RegisterQuorumKey { .. } => Opcode::RegisterQuorumKey,
            Request::ChangeMfa { .. } => Opcode::ChangeMfa,
            Request::GenerateQuorumToken { .. } => Opcode::GetToken,
            Request::DeleteQuorumToken { .. } => Opcode::DeleteToken,
            Request::SetQuorumValue { .. } => Opcode::SetMValue,
            // A signature is audited when it needed approvals (above), not otherwise.
            _ => return None,
        };
        let mut entry = AuditEntry::new(opcode);
        entry.session = Some(session);
        let st = self.state.read().ok();
        let engine = st.as_ref().map(|st| st.engine());
        let named = |name: &str| {
            engine.map_or_else(
                || AuditUser {
                    name: name.chars().take(64).collect(),
                    role: None,
                },
                |e| e.audit_user(name),
            )
        };
        entry.actor = engine.and_then(|e| e.audit_session_user(session));
        entry.user = match request {
            Request::Login { user, .. } => Some(named(user)),
            Request::Logout
            | Request::Activate { .. }
            | Request::RegisterQuorumKey { .. }
            | Request::LoginMfa { .. } => entry.actor.clone(),
            Request::ChangeMfa { name, .. } => Some(named(name)),
            Request::CreateUser { name, role, .. } => Some(AuditUser {
                role: Some(convert::role(*role)),
                ..named(name)
            }),
            Request::DeleteUser { name } | Request::ChangePassword { name, .. } => {
                Some(named(name))
            }
            Request::ShareKey { user, .. } | Request::UnshareKey { user, .. } => Some(named(user)),
            _ => None,
        };
        entry.key_handle = match request {
            Request::SetAttributes { handle, .. }
            | Request::ShareKey { handle, .. }
            | Request::UnshareKey { handle, .. }
            | Request::DeleteKey { handle } => Some(KeyHandle(*handle)),
            Request::WrapKey {
                wrapping, handle, ..
            } => {
                entry.detail = Some(format!("wrapping key {wrapping}"));
                Some(KeyHandle(*handle))
            }
            Request::UnwrapKey { unwrapping, .. } => {
                entry.detail = Some(format!("unwrapping key {unwrapping}"));
                None
            }
            Request::DeriveKey { base, .. } => {
                entry.detail = Some(format!("base key {base}"));
                None
            }
            Request::GenerateQuorumToken { service, key } => {
                entry.detail = Some(format!("service {}", service.as_str()));
                key.map(KeyHandle)
            }
            Request::DeleteQuorumToken { id } => {
                entry.detail = Some(format!("token {id}"));
                None
            }
            Request::SetQuorumValue { service, value } => {
                entry.detail = Some(format!("{}={value}", service.as_str()));
                None
            }
            _ => None,
        };
        Some(entry)
    }

    /// A read that a quorum may control: with approvals it runs under the write lock, inside
    /// the approvals' check (which uses the token up).
    fn read_approved<T>(
        &self,
        session: SessionId,
        approval: Option<&Approved>,
        read: impl FnOnce(&mut Engine) -> Result<T, EngineError>,
    ) -> Result<T, proto::Error> {
        let mut st = self.write()?;
        match approval {
            Some(a) => {
                st.engine_mut()
                    .with_approval(session, &a.approvals, a.service, a.key, now(), read)
            }
            None => read(st.engine_mut()),
        }
        .map_err(engine_error)
    }

    /// A key creation, with the creation options among its attributes (see
    /// [`convert::creation_options`]) fixed on the keys it makes.
    fn create(
        &self,
        session: SessionId,
        approval: Option<&Approved>,
        options: Option<convert::CreationOptions>,
        create: impl FnOnce(&mut Engine, Timestamp) -> Result<Step<Vec<KeyHandle>>, EngineError>,
    ) -> Result<Reply, proto::Error> {
        let handles = match options {
            None => self.change(session, approval, create)?,
            Some((quorum, share)) => self.change(session, approval, |e, now| {
                e.with_key_quorum(session, quorum, &share, |e| create(e, now))
            })?,
        };
        Ok(created(handles))
    }

    /// Answers one request on `session` (see [`Hsm::handle`]).
    ///
    /// After a failed store write the engine's memory is ahead of its store (the change was
    /// applied but is not durable), so the node answers nothing more until restarted from the
    /// store.
    fn dispatch(
        &self,
        session: SessionId,
        request: Request,
        approval: Option<&Approved>,
    ) -> Result<Reply, proto::Error> {
        if !self.writable() {
            return Err(proto::Error::new(
                ErrorKind::Unavailable,
                "the node's store failed; restart the node to reload it",
            ));
        }
        match request {
            Request::Hello(_) => Err(proto::Error::new(
                ErrorKind::BadRequest,
                "hello was already exchanged on this connection",
            )),
            // Answered by the server without the engine.
            Request::Health => Err(proto::Error::new(
                ErrorKind::BadRequest,
                "health is answered by the server",
            )),
            Request::Info => {
                let info = self.read()?.engine().info(session).map_err(engine_error)?;
                Ok(Reply::Info(proto::ClusterInfo {
                    node_id: self.node_id,
                    cluster_id: info.cluster_uid.map(|u| u.to_string()),
                    initialized: info.initialized,
                    activated: info.activated,
                    users: info.users as u64,
                    token_keys: info.token_keys as u64,
                    applied_index: info.applied_index,
                }))
            }
            Request::Login { user, password: pw } => {
                let _slot = self.login_slot()?;
                let ticket = self
                    .write()?
                    .engine_mut()
                    .begin_login(session, &user, now())
                    .map_err(engine_error)?;
                // argon2 runs here, with no lock held: signatures go on meanwhile.
                let ok = ticket.check(&password(&pw));
                self.change(session, approval, |e, now| e.finish_login(ticket, ok, now))?;
                let st = self.read()?;
                if let Some(challenge) = st.engine().mfa_challenge(session) {
                    return Ok(Reply::MfaChallenge { challenge });
                }
                let role = st
                    .engine()
                    .session_user(session)
                    .map_err(engine_error)?
                    .map(|(_, role)| convert::role_out(role))
                    .ok_or_else(|| proto::Error::new(ErrorKind::LoginFailed, "login failed"))?;
                Ok(Reply::LoggedIn { role })
            }
            Request::LoginMfa { signature } => {
                self.change(session, approval, |e, now| {
                    e.finish_mfa(session, &signature, now)
                })?;
                let role = self
                    .read()?
                    .engine()
                    .session_user(session)
                    .map_err(engine_error)?
                    .map(|(_, role)| convert::role_out(role))
                    .ok_or_else(|| {
                        proto::Error::new(
                            ErrorKind::LoginFailed,
                            "login failed: the MFA signature does not verify with the user's \
                             registered key, or came too late",
                        )
                    })?;
                Ok(Reply::LoggedIn { role })
            }
            Request::Logout => {
                self.write()?
                    .engine_mut()
                    .logout(session)
                    .map_err(engine_error)?;
                Ok(Reply::Done)
            }
            Request::Activate { new_password } => {
                let pw = password(&new_password);
                self.command(session, approval, |e, now| e.activate(session, &pw, now))?;
                Ok(Reply::Done)
            }
            Request::ListUsers => {
                let users = self
                    .read()?
                    .engine()
                    .list_users(session)
                    .map_err(engine_error)?;
                Ok(Reply::Users(
                    users.into_iter().map(convert::user_info).collect(),
                ))
            }
            Request::CreateUser {
                name,
                role,
                password: pw,
            } => {
                let pw = password(&pw);
                let role = convert::role(role);
                let outcome = self.command(session, approval, |e, now| {
                    e.create_user(session, &name, role, &pw, now)
                })?;
                match outcome {
                    Outcome::UserCreated(id) => Ok(Reply::UserCreated { id: id.0 }),
                    _ => Ok(Reply::Done),
                }
            }
            Request::DeleteUser { name } => {
                self.command(session, approval, |e, now| {
                    e.delete_user(session, &name, now)
                })?;
                Ok(Reply::Done)
            }
            Request::ChangePassword { name, new_password } => {
                let pw = password(&new_password);
                self.command(session, approval, |e, now| {
                    e.change_password(session, &name, &pw, now)
                })?;
                Ok(Reply::Done)
            }
            Request::GenerateKey { spec, attributes } => {
                let spec = convert::key_spec(spec)?;
                let (options, attributes) = convert::creation_options(&attributes)?;
                let template = convert::template(&attributes)?;
                self.create(session, approval, options, |e, now| {
                    e.generate_key(session, spec, &template, now)
                })
            }
            Request::GenerateKeyPair {
                spec,
                public,
                private,
            } => {
                let spec = convert::key_spec(spec)?;
                let (options, private) = convert::creation_options(&private)?;
                let public = convert::template(&public)?;
                let private = convert::template(&private)?;
                self.create(session, approval, options, |e, now| {
                    e.generate_key_pair(session, spec, &public, &private, now)
                })
            }
            Request::ImportPublicKey { der, attributes } => {
                let template = convert::template(&attributes)?;
                let handles = self.change(session, approval, |e, now| {
                    e.import_public_key(session, &der, &template, now)
                })?;
                Ok(created(handles))
            }
            Request::UnwrapKey {
                unwrapping,
                mechanism,
                wrapped,
                key_type,
                attributes,
            } => {
                let mechanism = convert::wrap_mechanism(mechanism)?;
                let key_type = convert::key_type(key_type);
                let (options, attributes) = convert::creation_options(&attributes)?;
                let template = convert::template(&attributes)?;
                self.create(session, approval, options, |e, now| {
                    e.unwrap_key(
                        session,
                        KeyHandle(unwrapping),
                        mechanism,
                        &wrapped,
                        key_type,
                        &template,
                        now,
                    )
                })
            }
            Request::DeriveKey {
                base,
                mechanism,
                spec,
                attributes,
            } => {
                let mechanism = convert::kdf(mechanism);
                let spec = convert::key_spec(spec)?;
                let template = convert::template(&attributes)?;
                let handles = self.change(session, approval, |e, now| {
                    e.derive_key(session, KeyHandle(base), &mechanism, spec, &template, now)
                })?;
                Ok(created(handles))
            }
            Request::ListKeys { filter } => {
                let filter = convert::filter(&filter)?;
                let keys = self
                    .read()?
                    .engine()
                    .list_keys(session, &filter)
                    .map_err(engine_error)?;
                Ok(Reply::Keys(
                    keys.into_iter().map(convert::key_info).collect(),
                ))
            }
            Request::GetKey { handle } => {
                let key = self
                    .read()?
                    .engine()
                    .get_key(session, KeyHandle(handle))
                    .map_err(engine_error)?;
                Ok(Reply::Key(convert::key_info(key)))
            }
            Request::ExportPublicKey { handle } => {
                let key = self
                    .read()?
                    .engine()
                    .export_public_key(session, KeyHandle(handle))
                    .map_err(engine_error)?;
                Ok(public_key_reply(&key))
            }
            Request::SetAttributes { handle, changes } => {
                let changes = convert::changes(&changes)?;
                self.change(session, approval, |e, now| {
                    e.set_attributes(session, KeyHandle(handle), &changes, now)
                })?;
                Ok(Reply::Done)
            }
            Request::ShareKey { handle, user } => {
                self.command(session, approval, |e, now| {
                    e.share_key(session, KeyHandle(handle), &user, now)
                })?;
                Ok(Reply::Done)
            }
            Request::UnshareKey { handle, user } => {
                self.command(session, approval, |e, now| {
                    e.unshare_key(session, KeyHandle(handle), &user, now)
                })?;
                Ok(Reply::Done)
            }
            Request::DeleteKey { handle } => {
                self.change(session, approval, |e, now| {
                    e.delete_key(session, KeyHandle(handle), now)
                })?;
                Ok(Reply::Done)
            }
            Request::WrapKey {
                wrapping,
                mechanism,
                handle,
            } => {
                let mechanism = convert::wrap_mechanism(mechanism)?;
                let wrap = |e: &mut Engine| {
                    e.wrap_key(session, KeyHandle(wrapping), mechanism, KeyHandle(handle))
                };
                self.read_approved(session, approval, wrap).map(Reply::Data)
            }
            Request::Sign {
                handle,
                mechanism,
                data,
            } => {
                let mechanism = convert::sign_mechanism(mechanism);
                if approval.is_none() {
                    return self
                        .read()?
                        .engine()
                        .sign(session, KeyHandle(handle), mechanism, &data)
                        .map(Reply::Data)
                        .map_err(engine_error);
                }
                let sign = |e: &mut Engine| e.sign(session, KeyHandle(handle), mechanism, &data);
                self.read_approved(session, approval, sign).map(Reply::Data)
            }
            Request::Verify {
                handle,
                mechanism,
                data,
                signature,
            } => {
                let mechanism = convert::sign_mechanism(mechanism);
                self.read()?
                    .engine()
                    .verify(session, KeyHandle(handle), mechanism, &data, &signature)
                    .map(|()| Reply::Verified)
                    .map_err(engine_error)
            }
            Request::Encrypt {
                handle,
                mechanism,
                data,
                aad,
            } => self.cipher(Engine::encrypt, session, handle, mechanism, &data, &aad),
            Request::Decrypt {
                handle,
                mechanism,
                data,
                aad,
            } => self.cipher(Engine::decrypt, session, handle, mechanism, &data, &aad),
            Request::Digest { hash, data } => self
                .read()?
                .engine()
                .digest(session, convert::hash(hash), &data)
                .map(Reply::Data)
                .map_err(engine_error),
            Request::Random { len } => self
                .read()?
                .engine()
                .random(session, len as usize)
                .map(Reply::Data)
                .map_err(engine_error),
            Request::AuditKey { hsm_id } => {
                let key = self
                    .read()?
                    .engine()
                    .audit_public_key(hsm_id)
                    .map_err(engine_error)?;
                Ok(public_key_reply(&key))
            }
            Request::RegisterQuorumKey { public_key } => {
                self.command(session, approval, |e, now| {
                    e.register_quorum_key(session, &public_key, now)
                })?;
                Ok(Reply::Done)
            }
            Request::ChangeMfa { name, public_key } => {
                self.command(session, approval, |e, now| {
                    e.change_mfa(session, &name, public_key.as_deref(), now)
                })?;
                Ok(Reply::Done)
            }
            Request::GenerateQuorumToken { service, key } => {
                let token = self
                    .write()?
                    .engine_mut()
                    .generate_quorum_token(
                        session,
                        convert::quorum_service(service),
                        key.map(KeyHandle),
                        self.node_id,
                        now(),
                    )
                    .map_err(engine_error)?;
                Ok(Reply::QuorumToken(convert::quorum_token(
                    token,
                    self.node_id,
                )))
            }
            Request::ListQuorumTokens => {
                let tokens = self
                    .read()?
                    .engine()
                    .list_quorum_tokens(session, now())
                    .map_err(engine_error)?;
                Ok(Reply::QuorumTokens(
                    tokens
                        .into_iter()
                        .map(|t| convert::quorum_token(t, self.node_id))
                        .collect(),
                ))
            }
            Request::DeleteQuorumToken { id } => {
                self.write()?
                    .engine_mut()
                    .delete_quorum_token(session, id)
                    .map_err(engine_error)?;
                Ok(Reply::Done)
            }
            Request::ListQuorumValues => {
                let values = self
                    .read()?
                    .engine()
                    .quorum_values(session)
                    .map_err(engine_error)?;
                Ok(Reply::QuorumValues(
                    values
                        .into_iter()
                        .map(|(service, value)| proto::QuorumValue {
                            service: convert::quorum_service_out(service),
                            value,
                        })
                        .collect(),
                ))
            }
            Request::SetQuorumValue { service, value } => {
                let service = convert::quorum_service(service);
                self.command(session, approval, |e, now| {
                    e.set_quorum_value(session, service, value, now)
                })?;
                Ok(Reply::Done)
            }
            Request::Approved {
                approval: presented,
                request,
            } => {
                if approval.is_some() || matches!(*request, Request::Approved { .. }) {
                    return Err(proto::Error::new(
                        ErrorKind::InvalidInput,
                        "approvals are given once per request",
                    ));
                }
                let (service, key) = controlled(&request)?;
                let approved = Approved {
                    approvals: convert::approvals(presented),
                    service,
                    key,
                };
                self.dispatch(session, *request, Some(&approved))
            }
            Request::AuditHead => {
                let head = self.audit.head();
                Ok(Reply::AuditHead {
                    hsm_id: self.node_id,
                    sequence: head.as_ref().map(|(seq, _)| *seq),
                    hash: head.map(|(_, hash)| hash).unwrap_or_default(),
                })
            }
            // Answered by the server on their own task (see `change_membership`).
            Request::AddNode { .. } | Request::RemoveNode { .. } => Err(proto::Error::new(
                ErrorKind::BadRequest,
                "membership changes are answered by the server",
            )),
            _ => Err(proto::Error::new(
                ErrorKind::BadRequest,
                "this node does not support that request",
            )),
        }
    }
}

/// [`Engine::encrypt`] or [`Engine::decrypt`].
type CipherOp = fn(
    &Engine,
    SessionId,
    KeyHandle,
    EncryptMechanism,
    &[u8],
    &[u8],
) -> Result<Vec<u8>, EngineError>;

impl Hsm {
    /// Encrypts or decrypts (`op`) under the read lock.
    fn cipher(
        &self,
        op: CipherOp,
        session: SessionId,
        handle: u64,
        mechanism: proto::EncryptMechanism,
        data: &[u8],
        aad: &[u8],
    ) -> Result<Reply, proto::Error> {
        let mechanism = convert::encrypt_mechanism(mechanism);
        op(
            self.read()?.engine(),
            session,
            KeyHandle(handle),
            mechanism,
            data,
            aad,
        )
        .map(Reply::Data)
        .map_err(engine_error)
    }
}

/// Frees a login place when the login ends.
struct LoginSlot<'a>(&'a AtomicUsize);

impl Drop for LoginSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn created(handles: Vec<KeyHandle>) -> Reply {
    Reply::KeysCreated(handles.into_iter().map(|h| h.0).collect())
}
