//! [`Client`]: connects to every node, logs in, and sends each request to a lightly loaded
//! healthy node (power of two choices), retrying `busy` answers and failing over requests that
//! are safe to repeat.

use crate::config::ClientConfig;
use crate::connection::{self, Connection, lock};
use crate::error::ClientError;
use crate::node::{self, Node, Settings, Shared};
use crate::tls;
use futures_util::future::join_all;
use rand::RngExt;
use sealgate_hsm_proto::{Reply, Request, Secret};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Opens connections to `nodes` in parallel; records each failure on its node and the first
/// in `first_error`.
async fn open_all(
    shared: &Shared,
    nodes: &[Arc<Node>],
    first_error: &mut Option<ClientError>,
) -> Vec<(Arc<Node>, Arc<Connection>)> {
    let opened = join_all(nodes.iter().map(|node| shared.open(node))).await;
    let mut conns = Vec::new();
    for (node, result) in nodes.iter().zip(opened) {
        match result {
            Ok(conn) => conns.push((Arc::clone(node), Arc::new(conn))),
            Err(error) => {
                debug!(node = node.id(), "connect failed: {error}");
                node.record_error(&error);
                first_error.get_or_insert(error);
            }
        }
    }
    conns
}

/// Longest wait for a logout answer when closing.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(1);

/// A user name and password. The password stays a [`Secret`] (zeroized on drop, never printed);
/// the client keeps it to log in again after a node reconnects.
pub struct Credentials {
    /// The user's name.
    pub user: String,
    /// The user's password.
    pub password: Secret,
    /// Signs MFA challenges, for a user with MFA (token-sign) on.
    pub mfa: Option<Arc<dyn MfaSigner>>,
}

impl Credentials {
    /// Credentials of `user`.
    pub fn new(user: impl Into<String>, password: Secret) -> Self {
        Self {
            user: user.into(),
            password,
            mfa: None,
        }
    }

    /// With `signer` for the MFA challenges each node sends after the password.
    #[must_use]
    pub fn with_mfa(mut self, signer: Arc<dyn MfaSigner>) -> Self {
        self.mfa = Some(signer);
        self
    }
}

/// The second factor of a login with MFA (token-sign): signs a node's challenge with the
/// user's registered RSA key, which is held outside the HSM (RSA PKCS#1 v1.5 with SHA-256, as
/// `openssl dgst -sha256 -sign KEY.pem` makes). Called once per node the client logs in to.
pub trait MfaSigner: Send + Sync {
    /// The signature of `challenge` from node `node`, or why there is none.
    fn sign(
        &self,
        node: u32,
        challenge: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>>;
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password)
            .field("mfa", &self.mfa.is_some())
            .finish()
    }
}

/// A snapshot of one node, from [`Client::nodes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node's id.
    pub id: u32,
    /// Its address.
    pub address: SocketAddr,
    /// Whether it is connected, logged in and passing health checks.
    pub up: bool,
    /// Requests sent to it and not answered yet (health checks included).
    pub outstanding: usize,
    /// Requests sent to it (every try counts, logins included; health checks do not).
    pub sent: u64,
    /// Requests that failed on it (connection lost, timeout) and were offered to another node.
    pub failovers: u64,
    /// Answers from it that were retried: `busy` and `too-many-in-flight` (the request did not
    /// run), and `unavailable` and `not-logged-in` (the node ended the session) to requests
    /// safe to repeat.
    pub retries: u64,
    /// Whether the node refused the client's credentials (`login-failed` or `user-locked`),
    /// so the client stopped logging in to it: it stays down until the client is connected
    /// again with valid credentials (or the user unlocked). Failed logins count toward
    /// lockout, so the client never guesses again on its own.
    pub parked: bool,
    /// The last failure: why it went down, why a reconnect failed.
    pub last_error: Option<String>,
}

/// A client of an HSM cluster: one connection per node, pipelined. Cheap to clone (every
/// clone shares the connections); the connections and background tasks end with
/// [`Client::close`] or when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends the background tasks; the connections close as the nodes are dropped.
        self.shared.shutdown.cancel();
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("nodes", &self.nodes())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to every node of `config` in parallel (mutual TLS 1.3 with the cluster CA,
    /// server name from each endpoint), says hello, and logs in with `credentials` if given.
    ///
    /// Login goes to one node first, and to the others only if it succeeds, so a wrong
    /// password costs one failed login, not one per node; that node's refusal
    /// (`login-failed`, `user-locked`) is returned. Succeeds if at least one node is up; the
    /// others are reconnected in the background.
    ///
    /// The configuration's nodes are where the client starts: the first node that answers
    /// reports the cluster's membership, and the client connects to the nodes added since and
    /// leaves out those removed. Later changes arrive with the health checks, so a client
    /// follows nodes being added and removed without a change to its configuration.
    pub async fn connect(
        config: ClientConfig,
        credentials: Option<Credentials>,
    ) -> Result<Self, ClientError> {
        let tls = TlsConnector::from(tls::client_config(&config)?);
        for endpoint in &config.nodes {
            connection::server_name(endpoint)?;
        }
        if config.nodes.is_empty() {
            return Err(ClientError::NoNodeAvailable);
        }
        let settings = Settings {
            request_timeout: config.request_timeout,
            connect_timeout: config.connect_timeout,
            health_interval: config.health_interval,
            busy_retries: config.busy_retries,
        };
        let shared = Arc::new(Shared {
            tls,
            cluster_id: config.cluster_id.filter(|id| !id.is_empty()),
            credentials,
            settings,
            shutdown: CancellationToken::new(),
            changes: watch::Sender::new(()),
            seen: Arc::new(AtomicU64::new(0)),
            nodes: RwLock::new(
                config
                    .nodes
                    .into_iter()
                    .map(|endpoint| Arc::new(Node::new(endpoint)))
                    .collect(),
            ),
            membership_index: AtomicU64::new(0),
            learning: tokio::sync::Mutex::new(()),
            supervisors: Mutex::new(Vec::new()),
        });
        // From here on, an early return drops the client, which ends everything it started.
        let client = Self {
            inner: Arc::new(Inner {
                shared: Arc::clone(&shared),
                closed: AtomicBool::new(false),
            }),
        };

        let mut first_error = None;
        let mut opened = open_all(&shared, &shared.nodes(), &mut first_error).await;
        // The membership as the first node that answers knows it: nodes added since the
        // configuration was written are connected too, removed ones are left out.
        let health = match opened.first() {
            Some((_, conn)) => conn
                .request(&Request::Health, settings.request_timeout)
                .await
                .ok(),
            None => None,
        };
        if let Some(Ok(Reply::Health(health))) = health {
            let added = node::learn(&shared, &health.members, health.membership_index).await;
            opened.retain(|(node, conn)| {
                let member = shared.node(node.id()).is_some();
                if !member {
                    conn.close("the node was removed from the cluster");
                }
                member
            });
            opened.extend(open_all(&shared, &added, &mut first_error).await);
        }
        let mut conns: Vec<(&Arc<Node>, Arc<Connection>)> = opened
            .iter()
            .map(|(node, conn)| (node, Arc::clone(conn)))
            .collect();

        if let Some(credentials) = &shared.credentials {
            // One node first: a wrong password must cost one failed login, not one per node.
            let mut rest = conns.into_iter();
            let mut first = None;
            let mut login_error = None;
            for (node, conn) in rest.by_ref() {
                match node::login(node, &conn, credentials, &shared).await {
                    Ok(()) => {
                        first = Some((node, conn));
                        break;
                    }
                    Err(error) if node::login_refused(&error) => return Err(error),
                    Err(error) => {
                        // Busy, unavailable, a limit, no answer (the node failed meanwhile):
                        // try the next node.
                        conn.close("login failed");
                        node.record_error(&error);
                        login_error.get_or_insert(error);
                    }
                }
            }
            let Some(first) = first else {
                // A node's answer to the login says more than another node's connect error.
                return Err(login_error
                    .or(first_error)
                    .unwrap_or(ClientError::NoNodeAvailable));
            };
            let rest: Vec<_> = rest.collect();
            let logins = join_all(
                rest.iter()
                    .map(|(node, conn)| node::login(node, conn, credentials, &shared)),
            )
            .await;
            conns = vec![first];
            for ((node, conn), login) in rest.into_iter().zip(logins) {
                match login {
                    Ok(()) => conns.push((node, conn)),
                    Err(error) => {
                        conn.close("login failed");
                        if node::login_refused(&error) {
                            node.park(&error);
                        } else {
                            node.record_error(&error);
                        }
                    }
                }
            }
        }

        if conns.is_empty() {
            return Err(first_error.unwrap_or(ClientError::NoNodeAvailable));
        }
        for (node, conn) in conns {
            node.mark_up(conn);
        }
        for node in shared.nodes() {
            shared.supervise(node);
        }
        Ok(client)
    }

    /// Sends `request` to a healthy node chosen by power of two choices on outstanding
    /// requests, and returns its answer.
    ///
    /// A `busy` or `too-many-in-flight` answer (the node did not run the request) is retried
    /// up to `busy_retries` times with exponential backoff and jitter, on another node when
    /// there is one; so is `unavailable` to a request that is safe to repeat
    /// ([`Request::is_idempotent`]). A write answered `unavailable` is returned as the node's
    /// error (kind [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable)) and never re-sent:
    /// the node answers so after its store failed, when the write may already be applied. If
    /// the node fails (connection lost, no answer within `request_timeout`), a request that is
    /// safe to repeat is sent to another healthy node, at most once per node; any other request
    /// fails with [`ClientError::Interrupted`] and is never sent twice.
    ///
    /// A `not-logged-in` answer, when the client logged in (credentials were given), means the
    /// node ended the session (the user's password was reset, the user deleted, or the PRECO's
    /// activation ended its other sessions): the node is marked down and its connection closed,
    /// and the background task logs in to it again. A request safe to repeat is then sent to
    /// another node, or to the same once it is back (waiting up to `request_timeout` when no
    /// node is up), within the same `busy_retries`; any other request returns the node's error
    /// (kind [`ErrorKind::NotLoggedIn`](crate::ErrorKind::NotLoggedIn)) and is never re-sent.
    /// Without credentials, `not-logged-in` is returned like any other answer.
    ///
    /// A request naming a session key (a handle with bit 63 set, see
    /// [`Request::session_handle`]) is refused with [`ClientError::SessionKeyNeedsNode`]:
    /// session keys live on the node that created them, and the same number names another key
    /// on other nodes. Send it with [`Client::call_on`] to that node.
    pub async fn call(&self, request: Request) -> Result<Reply, ClientError> {
        self.check(&request)?;
        if let Some(handle) = request.session_handle() {
            return Err(ClientError::SessionKeyNeedsNode {
                request: request.name(),
                handle,
            });
        }
        let shared = &self.inner.shared;
        let settings = shared.settings;
        let mut failed: Vec<u32> = Vec::new();
        let mut avoid = None;
        let mut retries = 0;
        let mut last_error = None;
        // After a node ended the session: news of nodes coming up, and the wait's end.
        let mut relogin: Option<(watch::Receiver<()>, Instant)> = None;
        loop {
            let Some((node, conn)) = self.inner.pick(&failed, avoid) else {
                // No node up: if one is logging in again, wait for it (or another).
                if let Some((changes, until)) = relogin.as_mut()
                    && self.inner.may_come_up(&failed)
                    && node::wait_for_change(shared, changes, *until).await
                {
                    continue;
                }
                return Err(last_error.unwrap_or(ClientError::NoNodeAvailable));
            };
            let failure = match node
                .attempt(&conn, &request, settings.request_timeout)
                .await
            {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(error)) if node::session_ended(error.kind, shared) => {
                    // Subscribed before the node goes down, so its return is not missed.
                    let changes = shared.changes.subscribe();
                    node.end_session(&conn, &error);
                    let error = ClientError::Node {
                        node: node.id(),
                        error,
                    };
                    if !request.is_idempotent() || retries >= settings.busy_retries {
                        return Err(error);
                    }
                    retries += 1;
                    node.count_retry();
                    avoid = Some(node.id());
                    debug!(
                        node = node.id(),
                        request = request.name(),
                        retries,
                        "the node ended the session; sending again: {error}"
                    );
                    relogin = Some((changes, node::deadline(settings.request_timeout)));
                    last_error = Some(error);
                    continue;
                }
                Ok(Err(error))
                    if node::may_resend(error.kind, &request)
                        && retries < settings.busy_retries =>
                {
                    retries += 1;
                    node.count_retry();
                    avoid = Some(node.id());
                    debug!(
                        node = node.id(),
                        request = request.name(),
                        retries,
                        "retrying: {error}"
                    );
                    tokio::time::sleep(node::busy_backoff(retries)).await;
                    continue;
                }
                Ok(Err(error)) => {
                    return Err(ClientError::Node {
                        node: node.id(),
                        error,
                    });
                }
                Err(failure) => failure,
            };
            let error = node::failure_error(node.id(), &request, failure);
            if matches!(
                error,
                ClientError::Interrupted { .. } | ClientError::RequestTooLarge { .. }
            ) {
                return Err(error);
            }
            node.count_failover();
            debug!(
                node = node.id(),
                request = request.name(),
                "failing over: {error}"
            );
            failed.push(node.id());
            last_error = Some(error);
        }
    }

    /// Sends `request` to node `node_id` only: no failover (node-local session keys, per-node
    /// administration). `busy` answers (and `unavailable` to requests safe to repeat) are
    /// still retried on that node. When the node ends the session (`not-logged-in` to a client
    /// that logged in, see [`Client::call`]), it is logged in again, and a request safe to
    /// repeat is sent again once it is back; any other request returns the node's error. So
    /// does a request naming a session key: session keys end with their session, and after
    /// the new login the same number may name another session key.
    pub async fn call_on(&self, node_id: u32, request: Request) -> Result<Reply, ClientError> {
        self.check(&request)?;
        let node = self
            .inner
            .shared
            .node(node_id)
            .ok_or(ClientError::UnknownNode { node: node_id })?;
        node::pinned(&node, &request, &self.inner.shared, || node.connection()).await
    }

    /// A snapshot of every node of the cluster as the client follows it, in id order.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        self.inner
            .shared
            .nodes()
            .iter()
            .map(|node| node.status())
            .collect()
    }

    /// Logs out of every node, closes every connection and stops the background tasks.
    /// Requests still in flight fail. Later calls answer [`ClientError::Closed`].
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.shared.shutdown.cancel();
        // A task may start another (a node that joined) until it sees the cancellation.
        loop {
            let supervisors = std::mem::take(&mut *lock(&self.inner.shared.supervisors));
            if supervisors.is_empty() {
                break;
            }
            for supervisor in supervisors {
                let _ = supervisor.await;
            }
        }
        let logout = self.inner.shared.credentials.is_some();
        let timeout = self
            .inner
            .shared
            .settings
            .request_timeout
            .min(LOGOUT_TIMEOUT);
        join_all(
            self.inner
                .shared
                .nodes()
                .into_iter()
                .map(|node| async move {
                    if let Some(conn) = node.take_connection() {
                        if logout {
                            let _ = conn.request(&Request::Logout, timeout).await;
                        }
                        conn.close_and_wait("the client was closed").await;
                    }
                }),
        )
        .await;
    }

    fn check(&self, request: &Request) -> Result<(), ClientError> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(ClientError::Closed);
        }
        match request {
            Request::Hello(_) | Request::Login { .. } | Request::Logout => {
                Err(ClientError::Managed {
                    request: request.name(),
                })
            }
            _ => Ok(()),
        }
    }
}

impl Inner {
    /// Power of two choices among the healthy nodes not in `failed`, away from `avoid` when
    /// another node is available: two distinct nodes at random, the one with fewer requests
    /// outstanding.
    fn pick(&self, failed: &[u32], avoid: Option<u32>) -> Option<(Arc<Node>, Arc<Connection>)> {
        let nodes = self.shared.nodes();
        let mut up: Vec<(&Arc<Node>, Arc<Connection>)> = nodes
            .iter()
            .filter(|node| !failed.contains(&node.id()))
            .filter_map(|node| node.connection().map(|conn| (node, conn)))
            .collect();
        if let Some(avoid) = avoid
            && up.iter().any(|(node, _)| node.id() != avoid)
        {
            up.retain(|(node, _)| node.id() != avoid);
        }
        let chosen = match up.len() {
            0 => return None,
            1 => 0,
            len => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..len);
                let mut b = rng.random_range(0..len - 1);
                if b >= a {
                    b += 1;
                }
                let load = |i: usize| up.get(i).map_or(usize::MAX, |(_, conn)| conn.in_flight());
                if load(b) < load(a) { b } else { a }
            }
        };
        up.into_iter()
            .nth(chosen)
            .map(|(node, conn)| (Arc::clone(node), conn))
    }

    /// Whether a node not in `failed` may still come up (it is not parked).
    fn may_come_up(&self, failed: &[u32]) -> bool {
        self.shared
            .nodes()
            .iter()
            .any(|node| !failed.contains(&node.id()) && !node.is_parked())
    }
}
