//! One node as the client sees it: its connection (when up), counters, last error, and the
//! background task that checks its health and reconnects (with re-login) when it is down.

use crate::client::{Credentials, NodeStatus};
use crate::config::NodeEndpoint;
use crate::connection::{self, Connection, Failure, lock};
use crate::error::ClientError;
use rand::RngExt;
use sealgate_hsm_proto::{ErrorKind, Member, Reply, Request};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// First wait before reconnecting a node that went down.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// First wait before retrying a `busy` answer; doubles on every retry.
const BUSY_BACKOFF: Duration = Duration::from_millis(5);
/// Longest wait before retrying a `busy` answer.
const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The timing and retry settings, from [`ClientConfig`](crate::ClientConfig).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) health_interval: Duration,
    pub(crate) busy_retries: u32,
}

/// What every node's background task needs; holds no reference to the client itself, so the
/// client's last handle going away cancels `shutdown` and the tasks end.
pub(crate) struct Shared {
    pub(crate) tls: TlsConnector,
    /// The cluster every node must belong to (`cluster_id` of the configuration), if known.
    pub(crate) cluster_id: Option<String>,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) settings: Settings,
    pub(crate) shutdown: CancellationToken,
    /// Bumped by the background tasks when a node comes up again or is parked, for requests
    /// waiting for a node that ended the session to log in again ([`wait_for_change`]).
    pub(crate) changes: watch::Sender<()>,
    /// The highest log index the cluster answered with (read-your-writes; see the connection).
    pub(crate) seen: Arc<AtomicU64>,
    /// Every node of the cluster, in id order: those of the configuration, then as the
    /// nodes' health answers report the membership ([`learn`]).
    pub(crate) nodes: RwLock<Vec<Arc<Node>>>,
    /// The log index of the membership `nodes` follows (0: the configuration's).
    pub(crate) membership_index: AtomicU64,
    /// Held while a membership is applied, so two health answers cannot apply theirs in the
    /// wrong order.
    pub(crate) learning: tokio::sync::Mutex<()>,
    /// The nodes' background tasks.
    pub(crate) supervisors: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// Wakes the requests waiting in [`wait_for_change`].
    fn node_changed(&self) {
        self.changes.send_replace(());
    }

    /// Connects to `node` and says hello (no login).
    pub(crate) async fn open(&self, node: &Node) -> Result<Connection, ClientError> {
        connection::open(
            &node.endpoint,
            &self.tls,
            self.cluster_id.as_deref(),
            self.settings.connect_timeout,
            Arc::clone(&self.seen),
        )
        .await
    }

    /// Every node now.
    pub(crate) fn nodes(&self) -> Vec<Arc<Node>> {
        self.nodes.read().map(|n| n.clone()).unwrap_or_default()
    }

    /// Node `id`, if the client knows it.
    pub(crate) fn node(&self, id: u32) -> Option<Arc<Node>> {
        self.nodes
            .read()
            .ok()
            .and_then(|nodes| nodes.iter().find(|n| n.id() == id).cloned())
    }

    /// Starts `node`'s background task (none once the client is closing).
    pub(crate) fn supervise(self: &Arc<Self>, node: Arc<Node>) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let task = tokio::spawn(supervise(node, Arc::clone(self)));
        lock(&self.supervisors).push(task);
    }
}

/// Follows the cluster's membership as a node reported it (`members` at log index `index`):
/// nodes that left are retired (their connection closed, their task ended), new ones added
/// (not connected yet; the caller connects them or starts their task). Only a membership newer
/// than the last one followed counts, so a node that missed a change (one that was removed,
/// say) cannot undo it. Returns the new nodes.
pub(crate) async fn learn(shared: &Shared, members: &[Member], index: u64) -> Vec<Arc<Node>> {
    if members.is_empty() || shared.membership_index.load(Ordering::Acquire) >= index {
        return Vec::new();
    }
    let _learning = shared.learning.lock().await;
    if shared.membership_index.load(Ordering::Acquire) >= index {
        return Vec::new();
    }
    let known = shared.nodes();
    let mut added = Vec::new();
    for member in members {
        if known.iter().any(|n| n.id() == member.id) {
            continue;
        }
        let Some(address) = tokio::net::lookup_host(&member.address)
            .await
            .ok()
            .and_then(|mut a| a.next())
        else {
            warn!(node = member.id, address = %member.address, "cannot resolve a new member's address");
            continue;
        };
        let host = member
            .address
            .rsplit_once(':')
            .map_or(member.address.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        info!(node = member.id, %address, "a node joined the cluster");
        added.push(Arc::new(Node::new(NodeEndpoint {
            id: member.id,
            address,
            server_name: host.to_owned(),
        })));
    }
    let Ok(mut nodes) = shared.nodes.write() else {
        return Vec::new();
    };
    nodes.retain(|node| {
        let member = members.iter().any(|m| m.id == node.id());
        if !member {
            node.retire();
        }
        member
    });
    for node in &added {
        if !nodes.iter().any(|n| n.id() == node.id()) {
            nodes.push(Arc::clone(node));
        }
    }
    nodes.sort_by_key(|n| n.id());
    drop(nodes);
    shared.membership_index.store(index, Ordering::Release);
    shared.node_changed();
    added
}

#[derive(Default)]
struct NodeState {
    /// The connection, while the node is up.
    conn: Option<Arc<Connection>>,
    /// The last failure, for [`NodeStatus`].
    last_error: Option<String>,
    /// The node refused the credentials (`login-failed`, `user-locked`): no more login
    /// attempts (they count toward lockout).
    parked: bool,
    /// The node went down because it ended the client's session ([`Node::end_session`]);
    /// read (and cleared) by the background task to choose its reconnect wait.
    session_ended: bool,
    /// The node left the cluster: no more connections to it.
    retired: bool,
}

/// One node.
pub(crate) struct Node {
    pub(crate) endpoint: NodeEndpoint,
    state: Mutex<NodeState>,
    sent: AtomicU64,
    failovers: AtomicU64,
    retries: AtomicU64,
}

impl Node {
    pub(crate) fn new(endpoint: NodeEndpoint) -> Self {
        Self {
            endpoint,
            state: Mutex::new(NodeState::default()),
            sent: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.endpoint.id
    }

    /// The connection if the node is up.
    pub(crate) fn connection(&self) -> Option<Arc<Connection>> {
        lock(&self.state)
            .conn
            .as_ref()
            .filter(|conn| !conn.is_closed())
            .map(Arc::clone)
    }

    /// Marks the node up on `conn`.
    pub(crate) fn mark_up(&self, conn: Arc<Connection>) {
        lock(&self.state).conn = Some(conn);
        info!(node = self.id(), address = %self.endpoint.address, "hsm node up");
    }

    /// Marks the node down if `conn` is still its connection, and closes `conn` (failing its
    /// requests in flight, which then fail over).
    fn mark_down(&self, conn: &Arc<Connection>, reason: String) {
        self.mark_down_because(conn, reason, false);
    }

    fn mark_down_because(&self, conn: &Arc<Connection>, reason: String, session_ended: bool) {
        {
            let mut state = lock(&self.state);
            if state
                .conn
                .as_ref()
                .is_some_and(|current| Arc::ptr_eq(current, conn))
            {
                state.conn = None;
                state.session_ended = session_ended;
                warn!(node = self.id(), address = %self.endpoint.address, %reason, "hsm node down");
                state.last_error = Some(reason.clone());
            }
        }
        conn.close(&reason);
    }

    /// The node answered `not-logged-in` on `conn`, which the client logged in: it ended the
    /// session (the user's password was reset, another session of the PRECO activated the
    /// cluster, the user was deleted) while the connection stays open, and would refuse every
    /// further request on it. Treated like a lost connection: the node is marked down and
    /// `conn` closed (requests still in flight on it fail over, or are interrupted), and the
    /// background task reconnects and logs in again, or parks the node if the login is
    /// refused.
    pub(crate) fn end_session(&self, conn: &Arc<Connection>, error: &sealgate_hsm_proto::Error) {
        let reason = format!(
            "the node ended the session ({}: {error}); logging in again",
            error.kind
        );
        self.mark_down_because(conn, reason, true);
    }

    /// Whether the node last went down because it ended the session; clears the mark.
    fn take_session_ended(&self) -> bool {
        std::mem::take(&mut lock(&self.state).session_ended)
    }

    /// Takes the connection away (the client is closing).
    pub(crate) fn take_connection(&self) -> Option<Arc<Connection>> {
        lock(&self.state).conn.take()
    }

    /// Records a failure for [`NodeStatus`].
    pub(crate) fn record_error(&self, error: &ClientError) {
        lock(&self.state).last_error = Some(error.to_string());
    }

    /// The node refused the credentials ([`login_refused`]): record why and stop logging in to
    /// it.
    pub(crate) fn park(&self, error: &ClientError) {
        let reason = format!(
            "login refused: {error}; not retrying with these credentials (failed logins count \
             toward lockout)"
        );
        warn!(node = self.id(), "{reason}");
        let mut state = lock(&self.state);
        state.parked = true;
        state.last_error = Some(reason);
    }

    pub(crate) fn is_parked(&self) -> bool {
        lock(&self.state).parked
    }

    /// The node left the cluster: closes its connection (requests in flight on it fail over
    /// or are interrupted) and ends its background task.
    pub(crate) fn retire(&self) {
        let conn = {
            let mut state = lock(&self.state);
            state.retired = true;
            state.last_error = Some("removed from the cluster".to_owned());
            state.conn.take()
        };
        info!(node = self.id(), "the node left the cluster");
        if let Some(conn) = conn {
            conn.close("the node was removed from the cluster");
        }
    }

    fn is_retired(&self) -> bool {
        lock(&self.state).retired
    }

    /// Sends one request on `conn`, counting it.
    pub(crate) async fn attempt(
        &self,
        conn: &Connection,
        request: &Request,
        timeout: Duration,
    ) -> Result<Result<Reply, sealgate_hsm_proto::Error>, Failure> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        conn.request(request, timeout).await
    }

    /// Counts a request that failed here and was offered to another node.
    pub(crate) fn count_failover(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a retry after this node refused a request it did not run (busy), or answered a
    /// request safe to repeat with `unavailable`.
    pub(crate) fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn status(&self) -> NodeStatus {
        let state = lock(&self.state);
        let conn = state.conn.as_ref().filter(|conn| !conn.is_closed());
        // A connection that just ended, before the background task has noticed.
        let ended = state.conn.as_ref().filter(|conn| conn.is_closed());
        NodeStatus {
            id: self.id(),
            address: self.endpoint.address,
            up: conn.is_some(),
            outstanding: conn.map_or(0, |conn| conn.in_flight()),
            sent: self.sent.load(Ordering::Relaxed),
            failovers: self.failovers.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            parked: state.parked,
            last_error: ended
                .map(|conn| conn.close_reason())
                .or_else(|| state.last_error.clone()),
        }
    }
}

/// Whether the node refused the request without running it (`busy`, `too-many-in-flight`), so
/// it may be sent again (after a pause, preferably elsewhere) whatever it is. The node checks
/// both before it runs anything. It frees a request's in-flight slot only once the answer is
/// queued to its writer, so a client that frees its own slot when it reads the answer stays
/// within `max_in_flight`; should the node still answer `too-many-in-flight`, the request did
/// not run.
///
/// `unavailable` is not here: a node answers it after its store failed, when a write may
/// already be applied in its memory (see [`may_resend`]).
pub(crate) fn refused_unrun(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Busy | ErrorKind::TooManyInFlight)
}

/// Whether a node's error answer to `request` allows sending it again (after a pause,
/// preferably elsewhere): a refusal of an unrun request, or `unavailable` for a request that is
/// safe to repeat. A write answered `unavailable` may have been applied, so it is never
/// re-sent.
pub(crate) fn may_resend(kind: ErrorKind, request: &Request) -> bool {
    refused_unrun(kind) || (kind == ErrorKind::Unavailable && request.is_idempotent())
}

/// Whether a node's error answer means it ended the client's session ([`Node::end_session`]):
/// `not-logged-in` to a client that logged in. A client without credentials never logged in,
/// so to it `not-logged-in` is just the node's answer.
pub(crate) fn session_ended(kind: ErrorKind, shared: &Shared) -> bool {
    kind == ErrorKind::NotLoggedIn && shared.credentials.is_some()
}

/// The instant `timeout` from now (far in the future if that overflows).
pub(crate) fn deadline(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + connection::FAR_FUTURE)
}

/// Waits for news from the background tasks (a node came up again or was parked) on
/// `changes`, subscribed before the node was marked down. False when `deadline` passes or the
/// client closes first.
pub(crate) async fn wait_for_change(
    shared: &Shared,
    changes: &mut watch::Receiver<()>,
    deadline: Instant,
) -> bool {
    tokio::select! {
        () = shared.shutdown.cancelled() => false,
        () = tokio::time::sleep_until(deadline) => false,
        changed = changes.changed() => changed.is_ok(),
    }
}

/// Whether a node refused a login in a way that another try would only repeat and that
/// counts toward lockout: a wrong user name or password, or a locked user. The node is then
/// parked (no more logins with these credentials). Any other error (busy, unavailable, a
/// limit, the cluster's state, no answer) is worth another try later.
pub(crate) fn login_refused(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Node { error, .. }
            if matches!(error.kind, ErrorKind::LoginFailed | ErrorKind::UserLocked)
    )
}

/// The pause before busy retry number `attempt` (1, 2, …): 5 ms doubling, capped at 1 s,
/// with ±50 % jitter so clients do not retry in lockstep.
pub(crate) fn busy_backoff(attempt: u32) -> Duration {
    let base = BUSY_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(BUSY_BACKOFF_MAX);
    base.mul_f64(rand::rng().random_range(0.5..1.5))
}

/// The error for a request that got no answer from `node`.
pub(crate) fn failure_error(node: u32, request: &Request, failure: Failure) -> ClientError {
    match failure {
        Failure::TooLarge { len, max } => ClientError::RequestTooLarge {
            request: request.name(),
            len,
            max,
        },
        Failure::NotSent => ClientError::NodeDown { node },
        _ if failure.maybe_applied() && !request.is_idempotent() => ClientError::Interrupted {
            node,
            request: request.name(),
        },
        Failure::Timeout { .. } => ClientError::Timeout { node },
        Failure::Lost => ClientError::Disconnected { node },
    }
}

/// Sends `request` to `node` on the connection `conn` gives (asked again before every try),
/// retrying answers that allow it ([`may_resend`]: busy, or unavailable for a request safe to
/// repeat) up to the configured count, with backoff. No failover.
///
/// When the node ends the session ([`session_ended`]), it is marked down to log in again; a
/// request safe to repeat is sent again once the node is back (waiting up to
/// `request_timeout`), within the same retry count; any other request returns the node's
/// error, and so does one naming a session key (the key ended with the session, and after
/// the new login its number may name another one).
pub(crate) async fn pinned(
    node: &Node,
    request: &Request,
    shared: &Shared,
    conn: impl Fn() -> Option<Arc<Connection>>,
) -> Result<Reply, ClientError> {
    let settings = &shared.settings;
    let mut retries = 0;
    // After the node ended the session: news of it coming back, the wait's end, and the
    // node's answer (returned if it does not come back in time).
    let mut relogin: Option<(watch::Receiver<()>, Instant, ClientError)> = None;
    loop {
        let Some(current) = conn() else {
            if let Some((changes, until, _)) = relogin.as_mut()
                && !node.is_parked()
                && wait_for_change(shared, changes, *until).await
            {
                continue;
            }
            return Err(relogin.map_or(ClientError::NodeDown { node: node.id() }, |r| r.2));
        };
        match node
            .attempt(&current, request, settings.request_timeout)
            .await
        {
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(error)) if session_ended(error.kind, shared) => {
                let changes = shared.changes.subscribe();
                node.end_session(&current, &error);
                let error = ClientError::Node {
                    node: node.id(),
                    error,
                };
                if !request.is_idempotent()
                    || request.session_handle().is_some()
                    || retries >= settings.busy_retries
                {
                    return Err(error);
                }
                retries += 1;
                node.count_retry();
                debug!(
                    node = node.id(),
                    request = request.name(),
                    retries,
                    "the node ended the session; sending again after login: {error}"
                );
                relogin = Some((changes, deadline(settings.request_timeout), error));
            }
            Ok(Err(error))
                if may_resend(error.kind, request) && retries < settings.busy_retries =>
            {
                retries += 1;
                node.count_retry();
                debug!(
                    node = node.id(),
                    request = request.name(),
                    retries,
                    "retrying: {error}"
                );
                tokio::time::sleep(busy_backoff(retries)).await;
            }
            Ok(Err(error)) => {
                return Err(ClientError::Node {
                    node: node.id(),
                    error,
                });
            }
            Err(failure) => return Err(failure_error(node.id(), request, failure)),
        }
    }
}

/// Logs `conn` in with `credentials`.
pub(crate) async fn login(
    node: &Node,
    conn: &Arc<Connection>,
    credentials: &Credentials,
    shared: &Shared,
) -> Result<(), ClientError> {
    let request = Request::Login {
        user: credentials.user.clone(),
        password: credentials.password.clone(),
    };
    let reply = pinned(node, &request, shared, || Some(Arc::clone(conn))).await?;
    let Reply::MfaChallenge { challenge } = reply else {
        return Ok(());
    };
    // The password was right; the node waits for the second factor.
    let refused = |message: String| ClientError::Node {
        node: node.id(),
        error: sealgate_hsm_proto::Error::new(ErrorKind::LoginFailed, message),
    };
    let Some(signer) = &credentials.mfa else {
        return Err(refused(format!(
            "user {} has MFA: the login needs the signature of a challenge (no MFA signer given)",
            credentials.user
        )));
    };
    let signature = signer
        .sign(node.id(), challenge)
        .await
        .map_err(|e| refused(format!("no MFA signature: {e}")))?;
    pinned(node, &Request::LoginMfa { signature }, shared, || {
        Some(Arc::clone(conn))
    })
    .await
    .map(|_| ())
}

/// Connects to `node`, says hello and logs in (if the client has credentials).
pub(crate) async fn establish(
    node: &Node,
    shared: &Shared,
) -> Result<Arc<Connection>, ClientError> {
    let conn = Arc::new(shared.open(node).await?);
    if let Some(credentials) = &shared.credentials {
        login(node, &conn, credentials, shared).await?;
    }
    Ok(conn)
}

/// The node's background task, until the client closes: while the node is up, checks its
/// health every `health_interval` and marks it down when the check fails or the connection
/// ends; while it is down, reconnects with exponential backoff (100 ms doubling to 5 s),
/// logs in again, and marks it up. It ends for good (the node stays down, parked) when the
/// node refuses the credentials ([`login_refused`]); other login errors are retried with the
/// same backoff. A node that ends the session ([`Node::end_session`]) soon after a login
/// (within [`RECONNECT_MAX`]) is reconnected after twice the previous wait, so a node that
/// keeps doing so costs a login every few seconds at most, not a loop.
pub(crate) async fn supervise(node: Arc<Node>, shared: Arc<Shared>) {
    let settings = shared.settings;
    let mut backoff = RECONNECT_MIN;
    // The wait before the last successful reconnect, and when the node last came up.
    let mut last_wait = Duration::ZERO;
    let mut up_since = Instant::now();
    loop {
        if node.is_retired() {
            return;
        }
        let current = lock(&node.state).conn.clone();
        if let Some(conn) = current {
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = conn.closed() => {
                    let reason = conn.close_reason();
                    node.mark_down(&conn, reason);
                }
                () = tokio::time::sleep(settings.health_interval) => {
                    let check = tokio::select! {
                        () = shared.shutdown.cancelled() => return,
                        check = conn.request(&Request::Health, settings.request_timeout) => check,
                    };
                    let problem = match check {
                        Ok(Ok(Reply::Health(health))) => {
                            let added =
                                learn(&shared, &health.members, health.membership_index).await;
                            for new in added {
                                shared.supervise(new);
                            }
                            None
                        }
                        Ok(Ok(_)) => Some("health check: unexpected answer".to_owned()),
                        Ok(Err(error)) => Some(format!("health check refused: {error}")),
                        Err(Failure::Timeout { .. }) => Some(format!(
                            "health check: no answer within {:?}",
                            settings.request_timeout
                        )),
                        Err(_) => Some(format!("health check: {}", conn.close_reason())),
                    };
                    if let Some(reason) = problem {
                        node.mark_down(&conn, reason);
                    }
                }
            }
            continue;
        }
        if node.is_parked() {
            return;
        }
        if node.take_session_ended() && up_since.elapsed() < RECONNECT_MAX {
            backoff = last_wait
                .saturating_mul(2)
                .clamp(RECONNECT_MIN, RECONNECT_MAX);
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        let attempt = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            attempt = establish(&node, &shared) => attempt,
        };
        match attempt {
            Ok(conn) if node.is_retired() => {
                conn.close("the node was removed from the cluster");
                return;
            }
            Ok(conn) => {
                last_wait = backoff;
                backoff = RECONNECT_MIN;
                up_since = Instant::now();
                node.mark_up(conn);
                shared.node_changed();
            }
            Err(error) if login_refused(&error) => {
                // The node refused the login (password changed, user locked or deleted).
                // Trying again would only add failed logins, or feed a lockout.
                node.park(&error);
                shared.node_changed();
                return;
            }
            Err(error) => {
                debug!(node = node.id(), "reconnect failed: {error}");
                node.record_error(&error);
                backoff = backoff.saturating_mul(2).min(RECONNECT_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 1..=3u32 {
            let base = 5.0 * f64::from(1u32 << (attempt - 1));
            for _ in 0..100 {
                let ms = busy_backoff(attempt).as_secs_f64() * 1000.0;
                assert!(ms >= base * 0.5 && ms <= base * 1.5, "{attempt}: {ms}");
            }
        }
        assert!(busy_backoff(u32::MAX) <= BUSY_BACKOFF_MAX.mul_f64(1.5));
    }

    #[test]
    fn unavailable_allows_resending_only_requests_safe_to_repeat() {
        let write = Request::DeleteKey { handle: 1 };
        let read = Request::Random { len: 1 };
        for kind in [ErrorKind::Busy, ErrorKind::TooManyInFlight] {
            assert!(refused_unrun(kind) && may_resend(kind, &write) && may_resend(kind, &read));
        }
        assert!(!refused_unrun(ErrorKind::Unavailable));
        assert!(may_resend(ErrorKind::Unavailable, &read));
        assert!(!may_resend(ErrorKind::Unavailable, &write));
        assert!(!may_resend(ErrorKind::NotFound, &read));
    }

    #[test]
    fn only_wrong_credentials_and_lockouts_park() {
        let answer = |kind| ClientError::Node {
            node: 1,
            error: sealgate_hsm_proto::Error::new(kind, "no"),
        };
        assert!(login_refused(&answer(ErrorKind::LoginFailed)));
        assert!(login_refused(&answer(ErrorKind::UserLocked)));
        for kind in [
            ErrorKind::LimitReached,
            ErrorKind::WrongClusterState,
            ErrorKind::Failed,
            ErrorKind::Unavailable,
            ErrorKind::Busy,
        ] {
            assert!(!login_refused(&answer(kind)), "{kind}");
        }
        assert!(!login_refused(&ClientError::Timeout { node: 1 }));
    }

    #[test]
    fn only_writes_that_may_have_run_are_interrupted() {
        let write = Request::DeleteKey { handle: 1 };
        let read = Request::Random { len: 1 };
        assert!(matches!(
            failure_error(2, &write, Failure::Lost),
            ClientError::Interrupted {
                node: 2,
                request: "delete-key"
            }
        ));
        assert!(matches!(
            failure_error(2, &write, Failure::Timeout { sent: true }),
            ClientError::Interrupted { .. }
        ));
        assert!(matches!(
            failure_error(2, &write, Failure::NotSent),
            ClientError::NodeDown { node: 2 }
        ));
        assert!(matches!(
            failure_error(2, &read, Failure::Lost),
            ClientError::Disconnected { node: 2 }
        ));
        assert!(matches!(
            failure_error(2, &read, Failure::Timeout { sent: true }),
            ClientError::Timeout { node: 2 }
        ));
        let message = failure_error(2, &write, Failure::Lost).to_string();
        assert!(
            message.contains("may or may not have been applied"),
            "{message}"
        );
    }
}
