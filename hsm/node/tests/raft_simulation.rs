//! A seeded simulation of an N-node cluster (3 and 5 nodes) replicating through openraft: the
//! real log store ([`RaftLogStore`]) and state machine ([`EngineStateMachine`]) on redb files
//! written by `cluster init` (as in production: the engine initialized once and cloned to every
//! node), joined by an in-memory network that loses, delays and reorders messages, cuts the
//! cluster into partitions, and crashes and restarts nodes. The PRECO activates the cluster;
//! then a client makes a few dozen changes (keys created and deleted, users created, logins
//! with right and wrong passwords, a password reset) through whichever node it picks, retrying
//! as a real client does. Then every fault is healed, one more write must be acknowledged, and
//! once every node has applied the leader's whole log the test checks that every node holds
//! the same engine rows, byte for byte (a snapshot built on each), that every write the
//! cluster acknowledged is on every node, and that no acknowledged delete is undone.
//!
//! What is simulated:
//! - **Network.** Every raft message (append-entries, vote, install-snapshot chunk) and every
//!   write a node forwards to the leader is delivered by a task of its own after a random delay
//!   (so concurrent messages overtake each other, and a message the sender gave up on still
//!   arrives late); the request or its answer may be lost, and the sender then hears nothing.
//!   Loss rate and delay change during the run, and now and then one message is far slower than
//!   the heartbeat interval.
//! - **Partitions.** A random set of nodes is cut off from the others for a while, then healed.
//! - **Crashes.** A node's raft is shut down and everything it held dropped (its redb file is
//!   closed, its sessions lost); it restarts from the same files — a new store, replica, log
//!   store and raft with the same id, never initialized again. Nodes crash at random (the
//!   leader half the time), and now and then right after handing a write over, while it is in
//!   flight; a minority at most is down at once. One node stays down while half the writes
//!   commit and the others purge the log it lacks, so that it comes back through
//!   `InstallSnapshot` (in several chunks), which exercises
//!   `EngineStateMachine::install_snapshot`.
//!
//! Only writes whose `client_write` answered with the engine's success are acknowledged: a
//! write that timed out or failed may or may not be applied, and its retry may find it done
//! (`UserExists`), which is fine. A write the engine refuses with no earlier unsure attempt to
//! explain it fails the test (a login may always fail).
//!
//! A restarted node opens as many sessions as it had before (its clients reconnect), none of
//! which logs in. The scripted test
//! `a_login_in_flight_across_a_restart_is_not_finished_on_another_session` checks that a login
//! the node prepared before the restart and applied after it is not finished on whichever new
//! session has the old session's number (this simulator found that bug: entries now name the
//! origin's run, `ClusterEntry::origin_run`); the seeded runs check the same
//! ([`CHECK_LOGIN_SESSIONS`]).
//!
//! Replaying: every seed is printed; `SEALGATE_SIM_SEED=<seed> cargo test -p sealgate-hsm-node
//! --test raft_simulation` runs that seed alone (with 3 and with 5 nodes), and a failure names
//! its seed. The fault schedule, the network's fates and the client's choices all come from
//! `StdRng`s seeded from it, and time is virtual: a current-thread tokio runtime with paused
//! time, which advances only when every task waits, so redb's fsyncs and argon2 take no
//! simulated time (the files live in `/dev/shm` where there is one). openraft's
//! election-timeout jitter is not seeded (it draws from a thread-local RNG, and its `select!`s
//! pick ready branches at random), so a replay follows the same fault schedule but the
//! interleaving of messages may differ, and with it the outcome.
//!
//! Why here and not in `sealgate-hsm-core`: the core has no openraft and does no I/O. Its
//! `tests/cluster_convergence.rs` checks the engine's side (applying one log, in any
//! interleaving, gives one state); this simulator checks the node's replication around it —
//! the real log store, the state machine, snapshots and their installation — under openraft.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use openraft::error::{
    ClientWriteError, InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, ClientWriteResponse, InstallSnapshotRequest,
    InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{
    AnyError, BasicNode, RaftMetrics, RaftSnapshotBuilder, ServerState, SnapshotPolicy,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sealgate_hsm_core::crypto::{AesSize, KeySpec, Password};
use sealgate_hsm_core::{
    Command, EngineConfig, KeyFilter, KeyHandle, KeyTemplate, Outcome, Role, SessionId, Step,
    Timestamp,
};
use sealgate_hsm_node::init::{InitOptions, init_cluster};
use sealgate_hsm_node::raft::{
    ClusterEntry, EngineStateMachine, NodeId, Raft, RaftLogStore, Replica, TypeConfig,
};
use sealgate_hsm_node::{RedbStore, load_or_create_master_key};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::time::{Instant, sleep, timeout};

/// Replays one seed.
const SEED_ENV: &str = "SEALGATE_SIM_SEED";
/// The seeds a run covers, for each cluster size.
const SEEDS: [u64; 5] = [1, 2, 3, 4, 5];
/// Writes of the client per run (besides the setup and the final write).
const WRITES: usize = 36;
/// How long the client waits for one write before calling its outcome unknown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts of one write before the client gives up on it.
const MAX_ATTEMPTS: usize = 60;
/// How long the sender of a lost message waits before its call fails (openraft's own RPC
/// timeouts are shorter).
const LOST: Duration = Duration::from_secs(2);
/// How long, after healing, every node may take to apply the leader's whole log.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

const CO_PASSWORD: &str = "officer-password";
const CU_NAME: &str = "cu";
const CU_PASSWORD: &str = "crypto-user-pw";
/// A crypto user the client logs in as, now and then with a wrong password, so that logins
/// are replicated (`LoginAttempt`) and finish on the session of the node that prepared them.
const LOGIN_NAME: &str = "login";
const LOGIN_PASSWORD: &str = "login-password";
const USER_PASSWORD: &str = "new-user-password";

/// Whether the seeded runs also check that no login is finished on a session that did not ask
/// for it (entries name the origin's run as well as its session number since a restart renumbers
/// sessions; see `a_login_in_flight_across_a_restart_is_not_finished_on_another_session`).
const CHECK_LOGIN_SESSIONS: bool = true;

/// Production's raft timing, with snapshots every 10 entries that purge the whole log behind
/// them, and small snapshot chunks, so that lagging and restarted nodes catch up by
/// `InstallSnapshot` in several chunks.
fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "sealgate-simulation".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1_000,
        election_timeout_max: 2_000,
        max_payload_entries: 32,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        snapshot_max_chunk_size: 1 << 10,
        ..openraft::Config::default()
    };
    Arc::new(config.validate().unwrap())
}

// ----- the network -------------------------------------------------------------------------

/// What the network does to one call, drawn when it is sent.
struct Fate {
    request_delay: Duration,
    request_lost: bool,
    response_delay: Duration,
    response_lost: bool,
}

/// The network's faults now, its random source, and counters.
struct NetState {
    rng: StdRng,
    loss_percent: u32,
    max_delay_ms: u64,
    /// Nodes cut off from the others (empty: no partition).
    island: BTreeSet<NodeId>,
    calls: u64,
    lost: u64,
    snapshot_chunks: u64,
    snapshots_installed: u64,
}

/// Routes calls between the running nodes' rafts through the faults of [`NetState`].
struct Router {
    running: Mutex<BTreeMap<NodeId, Raft>>,
    net: Mutex<NetState>,
}

fn unreachable(reason: &str) -> Unreachable {
    Unreachable::new(&AnyError::error(reason))
}

impl Router {
    fn new(seed: u64) -> Self {
        Self {
            running: Mutex::new(BTreeMap::new()),
            net: Mutex::new(NetState {
                rng: StdRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
                loss_percent: 0,
                max_delay_ms: 0,
                island: BTreeSet::new(),
                calls: 0,
                lost: 0,
                snapshot_chunks: 0,
                snapshots_installed: 0,
            }),
        }
    }

    fn fate(&self) -> Fate {
        let mut net = self.net.lock().unwrap();
        net.calls += 1;
        let (loss, max) = (net.loss_percent, net.max_delay_ms);
        let rng = &mut net.rng;
        let mut delay = || {
            // Now and then one message is far slower than the heartbeat interval.
            let ms = if max > 0 && rng.random_ratio(1, 40) {
                rng.random_range(200..=700)
            } else {
                rng.random_range(0..=max)
            };
            Duration::from_millis(ms)
        };
        let request_delay = delay();
        let response_delay = delay();
        let request_lost = rng.random_range(0..100) < loss;
        let response_lost = rng.random_range(0..100) < loss;
        if request_lost || response_lost {
            net.lost += 1;
        }
        Fate {
            request_delay,
            request_lost,
            response_delay,
            response_lost,
        }
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        let net = self.net.lock().unwrap();
        net.island.contains(&a) == net.island.contains(&b)
    }

    /// `to`'s raft, if it runs and `from` can reach it now.
    fn reach(&self, from: NodeId, to: NodeId) -> Option<Raft> {
        if !self.connected(from, to) {
            return None;
        }
        self.running.lock().unwrap().get(&to).cloned()
    }

    /// Delivers `deliver` to `to`'s raft and brings its answer back, through the faults. The
    /// delivery runs in a task of its own, so it goes on (and reaches `to` late) even if the
    /// caller stops waiting.
    async fn call<R, Fut>(
        self: &Arc<Self>,
        from: NodeId,
        to: NodeId,
        deliver: impl FnOnce(Raft) -> Fut + Send + 'static,
    ) -> Result<R, Unreachable>
    where
        Fut: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        let fate = self.fate();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let router = Arc::clone(self);
        tokio::spawn(async move {
            sleep(fate.request_delay).await;
            let target = if fate.request_lost {
                None
            } else {
                router.reach(from, to)
            };
            let Some(raft) = target else {
                sleep(LOST).await;
                return;
            };
            let answer = deliver(raft).await;
            sleep(fate.response_delay).await;
            if fate.response_lost || !router.connected(from, to) {
                sleep(LOST).await;
                return;
            }
            let _ = tx.send(answer);
        });
        rx.await
            .map_err(|_| unreachable("lost, or the node is down or cut off"))
    }

    /// Faults for the fault phase.
    fn set_quality(&self, loss_percent: u32, max_delay_ms: u64) {
        let mut net = self.net.lock().unwrap();
        net.loss_percent = loss_percent;
        net.max_delay_ms = max_delay_ms;
    }

    fn set_island(&self, island: BTreeSet<NodeId>) {
        self.net.lock().unwrap().island = island;
    }

    /// No loss, no delay, no partition.
    fn calm(&self) {
        self.set_quality(0, 0);
        self.set_island(BTreeSet::new());
    }
}

/// A raft answer as the sending node sees it: a stopped target is unreachable (its server
/// would be gone), any other refusal is the remote's.
// openraft's RPC errors are large; its network trait returns them as they are.
#[allow(clippy::result_large_err)]
fn remote<R, E>(
    target: NodeId,
    answer: Result<Result<R, RaftError<NodeId, E>>, Unreachable>,
) -> Result<R, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
where
    E: std::error::Error,
{
    match answer {
        Err(e) => Err(RPCError::Unreachable(e)),
        Ok(Ok(r)) => Ok(r),
        Ok(Err(RaftError::Fatal(_))) => Err(RPCError::Unreachable(unreachable("node stopped"))),
        Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(target, e))),
    }
}

/// One node's side of the network.
#[derive(Clone)]
struct SimNetwork {
    from: NodeId,
    router: Arc<Router>,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimLink;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> SimLink {
        SimLink {
            from: self.from,
            to: target,
            router: Arc::clone(&self.router),
        }
    }
}

/// A link from one node to another.
struct SimLink {
    from: NodeId,
    to: NodeId,
    router: Arc<Router>,
}

impl RaftNetwork<TypeConfig> for SimLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let answer = self
            .router
            .call(self.from, self.to, move |raft| async move {
                raft.append_entries(rpc).await
            })
            .await;
        remote(self.to, answer)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let router = Arc::clone(&self.router);
        let answer = self
            .router
            .call(self.from, self.to, move |raft| async move {
                let (last_chunk, vote) = (rpc.done, rpc.vote);
                let answer = raft.install_snapshot(rpc).await;
                // Counted where it is installed (the target took the leader's vote), whether
                // or not the answer gets back.
                let taken = answer.as_ref().is_ok_and(|r| r.vote == vote);
                let mut net = router.net.lock().unwrap();
                net.snapshot_chunks += u64::from(taken);
                net.snapshots_installed += u64::from(taken && last_chunk);
                answer
            })
            .await;
        remote(self.to, answer)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let answer = self
            .router
            .call(self.from, self.to, move |raft| async move {
                raft.vote(rpc).await
            })
            .await;
        remote(self.to, answer)
    }
}

// ----- the cluster -------------------------------------------------------------------------

/// Whom a node's session is logged in as: the crypto officer `admin`, or the crypto user
/// [`CU_NAME`] (who owns the keys).
#[derive(Clone, Copy)]
enum Who {
    Officer,
    User,
}

/// A running node.
struct Running {
    raft: Raft,
    sm: EngineStateMachine,
    /// The node's redb database, to see it closed after a crash.
    db: Weak<redb::Database>,
    /// Its session logged in as the crypto officer, once needed.
    officer: Option<SessionId>,
    /// Its session logged in as the crypto user, once needed.
    user: Option<SessionId>,
    /// Sessions opened after a restart that never log in (clients that connect and wait),
    /// numbered as the previous run of the node numbered its own sessions.
    bystanders: Vec<SessionId>,
}

struct Cluster {
    /// "seed S, N nodes", for messages.
    label: String,
    size: u64,
    dir: tempfile::TempDir,
    router: Arc<Router>,
    config: Arc<openraft::Config>,
    running: RefCell<BTreeMap<NodeId, Running>>,
    /// Crashed nodes and when they come back.
    down: RefCell<BTreeMap<NodeId, Back>>,
    /// The most nodes down at once (a minority).
    max_down: usize,
    /// The highest session id each crashed node had opened.
    last_session: RefCell<BTreeMap<NodeId, u64>>,
    epoch: Instant,
    crashes: Cell<u32>,
    /// Whether nodes may crash (not once the cluster is healed).
    faulty: Cell<bool>,
    /// Whether [`Cluster::check_bystanders`] checks.
    check_sessions: Cell<bool>,
}

type WriteAnswer =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>;

/// What one attempt of a write gave.
#[derive(Debug)]
enum Attempt {
    /// Applied with success: acknowledged.
    Acked(Outcome),
    /// A login that finished on its node with nothing to replicate.
    LoggedInLocally,
    /// Refused by the engine when prepared on the origin node.
    RefusedPrepared(String),
    /// Applied, and refused by the engine.
    RefusedApplied(String),
    /// Certainly not in the log (no leader known, or the leader did not take it).
    NotWritten,
    /// May or may not be applied.
    Unknown,
}

/// When a crashed node comes back.
enum Back {
    At(Instant),
    /// The long outage: once half the writes are acknowledged and every running node has
    /// purged its log past the crashed node's last entry (so that it needs a snapshot), or at
    /// the deadline.
    Lagging {
        last_log: Option<u64>,
        deadline: Instant,
    },
}

/// One write of the client.
#[derive(Clone, Debug)]
enum Op {
    CreateKey(String),
    CreateUser(String),
    DeleteKey(KeyHandle),
    /// A login as [`LOGIN_NAME`] on a new session, with the right password or not.
    Login {
        wrong: bool,
    },
    /// The crypto officer sets [`LOGIN_NAME`]'s password again, which also unlocks it.
    ResetLogin,
}

/// What the client was told.
#[derive(Default)]
struct Ledger {
    /// Keys whose creation was acknowledged, with their labels.
    keys: BTreeMap<KeyHandle, String>,
    /// Keys the client tried to delete (acknowledged or not): they may be gone.
    touched: BTreeSet<KeyHandle>,
    /// Keys whose deletion was acknowledged.
    deleted: BTreeSet<KeyHandle>,
    /// Users whose creation was acknowledged.
    users: BTreeSet<String>,
    acked: usize,
    /// Logins acknowledged through the log (`LoginAttempt` applied).
    logins: usize,
    /// Logins that finished on their node (no failures to clear).
    local_logins: usize,
    settled: usize,
    unknown: usize,
    gave_up: usize,
}

/// The log entry of `cmd`, prepared on `origin`'s `session` in its run `run`.
fn entry(origin: NodeId, run: u64, session: SessionId, cmd: &Command) -> ClusterEntry {
    ClusterEntry {
        origin_node: origin,
        origin_run: run,
        origin_session: session.0,
        command: cmd.encode().unwrap(),
    }
}

fn replicated<T>(step: Step<T>) -> Option<Command> {
    match step {
        Step::Replicate(cmd) => Some(cmd),
        Step::Done(_) => None,
    }
}

impl Cluster {
    /// A new cluster of `size` nodes written by `cluster init`, started, its PRECO activated
    /// as crypto officer `admin`, a crypto user created, every node logged in as both.
    async fn start(seed: u64, size: u64) -> Self {
        let dir = scratch_dir();
        init_cluster(&InitOptions::new(dir.path(), u32::try_from(size).unwrap())).unwrap();
        let preco = std::fs::read_to_string(dir.path().join("preco-password")).unwrap();
        let cluster = Self {
            label: format!("seed {seed}, {size} nodes"),
            size,
            dir,
            router: Arc::new(Router::new(seed)),
            config: raft_config(),
            running: RefCell::new(BTreeMap::new()),
            down: RefCell::new(BTreeMap::new()),
            max_down: usize::try_from((size - 1) / 2).unwrap(),
            last_session: RefCell::new(BTreeMap::new()),
            epoch: Instant::now(),
            crashes: Cell::new(0),
            faulty: Cell::new(true),
            check_sessions: Cell::new(CHECK_LOGIN_SESSIONS),
        };
        for id in 1..=size {
            let node = cluster.boot(id).await;
            cluster.running.borrow_mut().insert(id, node);
        }
        // The node with the smallest id starts the group, as `start_raft` does.
        let first = cluster.raft(1);
        let members: BTreeMap<NodeId, BasicNode> = (1..=size)
            .map(|id| (id, BasicNode::new(format!("sim-node-{id}"))))
            .collect();
        first.initialize(members).await.unwrap();
        first
            .wait(Some(Duration::from_secs(30)))
            .current_leader(1, "node 1 leads")
            .await
            .unwrap();

        // Activation and a crypto user, prepared and written on node 1 (the leader).
        let sm = cluster.running.borrow()[&1].sm.clone();
        let preco_session = cluster.log_in(&sm, sealgate_hsm_core::PRECO_NAME, preco.trim());
        let activate = sm
            .replica()
            .read()
            .unwrap()
            .engine()
            .activate(preco_session, &Password::from(CO_PASSWORD), cluster.now())
            .unwrap();
        cluster.setup_write(&first, preco_session, activate).await;
        let create_cu = sm
            .replica()
            .read()
            .unwrap()
            .engine()
            .create_user(
                preco_session,
                CU_NAME,
                Role::CryptoUser,
                &Password::from(CU_PASSWORD),
                cluster.now(),
            )
            .unwrap();
        cluster.setup_write(&first, preco_session, create_cu).await;
        let create_login = sm
            .replica()
            .read()
            .unwrap()
            .engine()
            .create_user(
                preco_session,
                LOGIN_NAME,
                Role::CryptoUser,
                &Password::from(LOGIN_PASSWORD),
                cluster.now(),
            )
            .unwrap();
        cluster
            .setup_write(&first, preco_session, create_login)
            .await;
        drop(sm);
        cluster.wait_converged().await;
        cluster
    }

    /// The engine's clock: virtual milliseconds since the run started.
    fn now(&self) -> Timestamp {
        let elapsed = u64::try_from(self.epoch.elapsed().as_millis()).unwrap();
        Timestamp(1_800_000_000_000 + elapsed)
    }

    fn raft(&self, id: NodeId) -> Raft {
        self.running.borrow()[&id].raft.clone()
    }

    /// The current run of node `id` (its replica's run id), which names its sessions.
    fn run_of(&self, id: NodeId) -> u64 {
        self.running.borrow()[&id]
            .sm
            .replica()
            .read()
            .unwrap()
            .run_id()
    }

    fn running_ids(&self) -> Vec<NodeId> {
        self.running.borrow().keys().copied().collect()
    }

    /// Starts node `id` from its files, as `start` does in production (it never initializes:
    /// only the first boot of node 1 does).
    async fn boot(&self, id: NodeId) -> Running {
        let dir = self.dir.path().join(format!("node-{id}"));
        let (master, _) = load_or_create_master_key(&dir.join("master.key"), None).unwrap();
        let store = RedbStore::open(&dir.join("store.redb"))
            .unwrap_or_else(|e| panic!("{}: node {id} cannot open its store: {e}", self.label));
        let db = store.database();
        let weak = Arc::downgrade(&db);
        let replica = Replica::open(id, store, master, EngineConfig::default())
            .unwrap_or_else(|e| panic!("{}: node {id} cannot load its replica: {e}", self.label));
        let sm = EngineStateMachine::new(Arc::new(RwLock::new(replica)));
        let network = SimNetwork {
            from: id,
            router: Arc::clone(&self.router),
        };
        let raft = Raft::new(
            id,
            Arc::clone(&self.config),
            network,
            RaftLogStore::new(db),
            sm.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: node {id}'s raft does not start: {e}", self.label));
        self.router.running.lock().unwrap().insert(id, raft.clone());
        Running {
            raft,
            sm,
            db: weak,
            officer: None,
            user: None,
            bystanders: Vec::new(),
        }
    }

    /// Opens a session on `sm`'s engine and logs `name` in, as the node's Login request does
    /// (the password is checked between the two locked steps). These users never fail a login,
    /// so the login finishes on the node without a replicated command.
    fn log_in(&self, sm: &EngineStateMachine, name: &str, password: &str) -> SessionId {
        let replica = sm.replica();
        let (session, ticket) = {
            let mut guard = replica.write().unwrap();
            let engine = guard.engine_mut();
            let session = engine.open_session().unwrap();
            let ticket = engine.begin_login(session, name, self.now()).unwrap();
            (session, ticket)
        };
        let ok = ticket.check(&Password::from(password));
        let step = replica
            .write()
            .unwrap()
            .engine_mut()
            .finish_login(ticket, ok, self.now())
            .unwrap_or_else(|e| panic!("{}: {name} cannot log in: {e}", self.label));
        assert!(
            matches!(step, Step::Done(())),
            "{}: {name}'s login needed a replicated command",
            self.label
        );
        session
    }

    /// Node `id`'s session logged in as `who`, logged in now if it has none yet.
    fn session(&self, id: NodeId, who: Who) -> SessionId {
        let (sm, cached) = {
            let running = self.running.borrow();
            let node = &running[&id];
            let cached = match who {
                Who::Officer => node.officer,
                Who::User => node.user,
            };
            (node.sm.clone(), cached)
        };
        if let Some(session) = cached {
            return session;
        }
        let session = match who {
            Who::Officer => self.log_in(&sm, "admin", CO_PASSWORD),
            Who::User => self.log_in(&sm, CU_NAME, CU_PASSWORD),
        };
        let mut running = self.running.borrow_mut();
        let node = running.get_mut(&id).unwrap();
        match who {
            Who::Officer => node.officer = Some(session),
            Who::User => node.user = Some(session),
        }
        session
    }

    /// A setup write on the leader, on a calm network: it must succeed.
    async fn setup_write(&self, leader: &Raft, session: SessionId, cmd: Command) {
        let response = leader
            .client_write(entry(1, self.run_of(1), session, &cmd))
            .await
            .unwrap();
        assert!(
            matches!(response.data.0, Some(Ok(_))),
            "{}: setup write refused: {:?}",
            self.label,
            response.data
        );
    }

    /// Crashes node `id` until `back`, unless it is down already or a minority is down.
    async fn crash_until(&self, id: NodeId, back: Back) {
        let node = {
            let mut down = self.down.borrow_mut();
            if !self.faulty.get() || down.len() >= self.max_down || down.contains_key(&id) {
                return;
            }
            let Some(node) = self.running.borrow_mut().remove(&id) else {
                return;
            };
            down.insert(id, back);
            node
        };
        self.crash(id, node).await;
    }

    /// Shuts node `id` down and drops everything it held; waits (bounded) until its redb file
    /// is closed, so that a restart can open it again.
    async fn crash(&self, id: NodeId, node: Running) {
        self.router.running.lock().unwrap().remove(&id);
        // The session the node would open next tells how far it numbered them.
        {
            let replica = node.sm.replica();
            let mut guard = replica.write().unwrap();
            let probe = guard.engine_mut().open_session().unwrap();
            guard.engine_mut().close_session(probe);
            self.last_session.borrow_mut().insert(id, probe.0 - 1);
        }
        node.raft.shutdown().await.unwrap();
        let db = node.db.clone();
        drop(node);
        self.crashes.set(self.crashes.get() + 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.upgrade().is_some() {
            assert!(
                Instant::now() < deadline,
                "{}: node {id}'s database is still open 30 s after its raft shut down",
                self.label
            );
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts node `id` again from its files; its clients connect again at once, so it opens
    /// as many sessions as it had before (bystanders, which never log in).
    async fn restart(&self, id: NodeId) {
        let mut node = self.boot(id).await;
        let last = self.last_session.borrow().get(&id).copied().unwrap_or(0);
        {
            let replica = node.sm.replica();
            let mut guard = replica.write().unwrap();
            loop {
                let session = guard.engine_mut().open_session().unwrap();
                if session.0 > last {
                    guard.engine_mut().close_session(session);
                    break;
                }
                node.bystanders.push(session);
            }
        }
        self.running.borrow_mut().insert(id, node);
        self.down.borrow_mut().remove(&id);
    }

    /// No session that never logged in is logged in: a login is finished only on the session
    /// that asked for it.
    fn check_bystanders(&self) {
        if !self.check_sessions.get() {
            return;
        }
        for (id, node) in self.running.borrow().iter() {
            let replica = node.sm.replica().read().unwrap();
            for session in &node.bystanders {
                let user = replica.engine().session_user(*session).unwrap();
                assert!(
                    user.is_none(),
                    "{}: on node {id}, session {} was opened after the node restarted and never \
                     logged in, yet it is logged in as user {:?}: a login prepared by the \
                     node's previous run on its own session {} was finished on this one",
                    self.label,
                    session.0,
                    user.map(|(u, _)| u),
                    session.0
                );
            }
        }
    }

    /// The running node that believes it leads, in the highest term.
    fn leader(&self) -> Option<NodeId> {
        self.running
            .borrow()
            .values()
            .map(|n| n.raft.metrics().borrow().clone())
            .filter(|m| m.state == ServerState::Leader)
            .max_by_key(|m| m.current_term)
            .map(|m| m.id)
    }

    // ----- the client ----------------------------------------------------------------------

    /// Prepares `op` on `origin`'s engine as the node's request handling does: the command
    /// and the session it runs on, `None` for a login that finished on the node, or the
    /// engine's refusal.
    fn prepare(&self, origin: NodeId, op: &Op) -> Result<Option<(Command, SessionId)>, String> {
        let session = match op {
            Op::CreateKey(_) | Op::DeleteKey(_) => Some(self.session(origin, Who::User)),
            Op::CreateUser(_) | Op::ResetLogin => Some(self.session(origin, Who::Officer)),
            Op::Login { .. } => None,
        };
        let sm = self.running.borrow()[&origin].sm.clone();
        let replica = sm.replica();
        let now = self.now();
        if let Op::Login { wrong } = op {
            // As the node's Login request: begin under the lock, check the password without
            // it, finish under it.
            let (session, ticket) = {
                let mut guard = replica.write().unwrap();
                let engine = guard.engine_mut();
                let session = engine.open_session().map_err(|e| e.to_string())?;
                let ticket = engine
                    .begin_login(session, LOGIN_NAME, now)
                    .map_err(|e| e.to_string())?;
                (session, ticket)
            };
            let password = if *wrong {
                "not-the-password"
            } else {
                LOGIN_PASSWORD
            };
            let ok = ticket.check(&Password::from(password));
            let step = replica
                .write()
                .unwrap()
                .engine_mut()
                .finish_login(ticket, ok, self.now())
                .map_err(|e| e.to_string())?;
            return Ok(replicated(step).map(|cmd| (cmd, session)));
        }
        let session = session.unwrap();
        let mut guard = replica.write().unwrap();
        let engine = guard.engine_mut();
        let prepared = match op {
            Op::CreateKey(label) => {
                let mut template = KeyTemplate::default();
                template.set("label", label).unwrap();
                template.set("encrypt", "true").unwrap();
                engine
                    .generate_key(session, KeySpec::Aes(AesSize::Aes256), &template, now)
                    .map(replicated)
            }
            Op::CreateUser(name) => engine
                .create_user(
                    session,
                    name,
                    Role::CryptoUser,
                    &Password::from(USER_PASSWORD),
                    now,
                )
                .map(Some),
            Op::DeleteKey(handle) => engine.delete_key(session, *handle, now).map(replicated),
            Op::ResetLogin => engine
                .change_password(session, LOGIN_NAME, &Password::from(LOGIN_PASSWORD), now)
                .map(Some),
            Op::Login { .. } => unreachable!("logins are prepared above"),
        };
        match prepared {
            Err(e) => Err(e.to_string()),
            Ok(Some(cmd)) => Ok(Some((cmd, session))),
            Ok(None) => panic!("{}: {op:?} made no command", self.label),
        }
    }

    /// Proposes `entry` to `origin`'s raft, and forwards it to the leader through the network
    /// if `origin` does not lead, as the node's `Hsm::change` does.
    async fn propose(&self, origin: NodeId, raft: Raft, entry: ClusterEntry) -> Attempt {
        let answer: WriteAnswer =
            match timeout(WRITE_TIMEOUT, raft.client_write(entry.clone())).await {
                Err(_) => return Attempt::Unknown,
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to)))) => {
                    let Some(leader) = to.leader_id else {
                        return Attempt::NotWritten;
                    };
                    drop(raft);
                    let forwarded = self.router.call(origin, leader, move |raft| async move {
                        raft.client_write(entry).await
                    });
                    match timeout(WRITE_TIMEOUT, forwarded).await {
                        Err(_) | Ok(Err(_)) => return Attempt::Unknown,
                        Ok(Ok(answer)) => answer,
                    }
                }
                Ok(answer) => answer,
            };
        match answer {
            Ok(response) => match response.data.0 {
                Some(Ok(outcome)) => Attempt::Acked(outcome),
                Some(Err(e)) => Attempt::RefusedApplied(e.to_string()),
                None => panic!("{}: a command entry answered as a blank entry", self.label),
            },
            // Not appended, or appended and then truncated (so never committed).
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Attempt::NotWritten,
            Err(_) => Attempt::Unknown,
        }
    }

    /// One attempt of `op` through `origin`. With `crash`, `origin` crashes that long after
    /// handing the write over (while it is in flight), and comes back a while later.
    async fn attempt(
        &self,
        origin: NodeId,
        op: &Op,
        crash: Option<(Duration, Duration)>,
    ) -> Attempt {
        let Some(raft) = self.running.borrow().get(&origin).map(|n| n.raft.clone()) else {
            return Attempt::NotWritten;
        };
        let (cmd, session) = match self.prepare(origin, op) {
            Err(why) => return Attempt::RefusedPrepared(why),
            Ok(None) => return Attempt::LoggedInLocally,
            Ok(Some(prepared)) => prepared,
        };
        let write = self.propose(
            origin,
            raft,
            entry(origin, self.run_of(origin), session, &cmd),
        );
        match crash {
            None => write.await,
            Some((after, down_for)) => {
                let crash = async {
                    sleep(after).await;
                    let back = Back::At(Instant::now() + down_for);
                    self.crash_until(origin, back).await;
                };
                tokio::join!(write, crash).0
            }
        }
    }

    /// Runs `op` through random nodes until it is acknowledged or settled, retrying after
    /// unsure outcomes; records what the client was told. Returns the outcome if acknowledged.
    async fn write(&self, rng: &mut StdRng, op: Op, ledger: &mut Ledger) -> Option<Outcome> {
        if let Op::DeleteKey(handle) = &op {
            ledger.touched.insert(*handle);
        }
        let mut unsure = false;
        for _ in 0..MAX_ATTEMPTS {
            let ids = self.running_ids();
            let origin = ids[rng.random_range(0..ids.len())];
            // Now and then the node crashes while the write is in flight.
            let crash_after = Duration::from_millis(rng.random_range(0..=100));
            let down_for = Duration::from_millis(rng.random_range(300..=5_000));
            let crash = rng.random_ratio(1, 10).then_some((crash_after, down_for));
            let refusal = match self.attempt(origin, &op, crash).await {
                Attempt::Acked(outcome) => {
                    ledger.acked += 1;
                    match (&op, &outcome) {
                        (Op::CreateKey(label), Outcome::KeysCreated(handles)) => {
                            for h in handles {
                                ledger.keys.insert(*h, label.clone());
                            }
                        }
                        (Op::CreateUser(name), Outcome::UserCreated(_)) => {
                            ledger.users.insert(name.clone());
                        }
                        (Op::DeleteKey(handle), Outcome::KeyDeleted) => {
                            ledger.deleted.insert(*handle);
                        }
                        (Op::Login { wrong: false }, Outcome::LoggedIn) => ledger.logins += 1,
                        (Op::ResetLogin, Outcome::PasswordChanged) => {}
                        _ => panic!("{}: {op:?} answered {outcome:?}", self.label),
                    }
                    return Some(outcome);
                }
                Attempt::LoggedInLocally => {
                    assert!(
                        matches!(op, Op::Login { wrong: false }),
                        "{}: {op:?} finished without the log",
                        self.label
                    );
                    ledger.local_logins += 1;
                    return Some(Outcome::LoggedIn);
                }
                Attempt::NotWritten => None,
                Attempt::Unknown => {
                    ledger.unknown += 1;
                    unsure = true;
                    None
                }
                // A lagging origin may not know the key yet: try another node.
                Attempt::RefusedPrepared(_) if matches!(op, Op::DeleteKey(_)) => None,
                Attempt::RefusedPrepared(why) => Some(format!("prepared: {why}")),
                Attempt::RefusedApplied(why) => Some(format!("applied: {why}")),
            };
            if let Some(why) = refusal {
                // A login may fail (wrong password, locked user, password changed meanwhile).
                // Otherwise only an earlier attempt that may have been applied explains a
                // refusal (the user exists, the key is gone); a new key or a password reset is
                // never refused.
                let explained = match op {
                    Op::Login { .. } => true,
                    Op::CreateUser(_) | Op::DeleteKey(_) => unsure,
                    Op::CreateKey(_) | Op::ResetLogin => false,
                };
                assert!(
                    explained,
                    "{}: {op:?} refused ({why}) with no earlier unsure attempt",
                    self.label
                );
                ledger.settled += 1;
                return None;
            }
            sleep(Duration::from_millis(rng.random_range(50..=500))).await;
        }
        ledger.gave_up += 1;
        None
    }

    /// The client: [`WRITES`] writes, one after another, each to a random node.
    async fn workload(&self, rng: &mut StdRng, ledger: &mut Ledger, acked: &Cell<usize>) {
        for i in 0..WRITES {
            let candidates: Vec<KeyHandle> = ledger
                .keys
                .keys()
                .filter(|h| !ledger.touched.contains(h))
                .copied()
                .collect();
            let roll = rng.random_range(0..100);
            let op = if roll < 15 {
                Op::CreateUser(format!("u{i}"))
            } else if roll < 30 && !candidates.is_empty() {
                Op::DeleteKey(candidates[rng.random_range(0..candidates.len())])
            } else if roll < 50 {
                Op::Login {
                    wrong: rng.random_ratio(1, 3),
                }
            } else if roll < 55 {
                Op::ResetLogin
            } else {
                Op::CreateKey(format!("k{i}"))
            };
            self.write(rng, op, ledger).await;
            acked.set(ledger.acked);
            self.check_bystanders();
            sleep(Duration::from_millis(rng.random_range(0..=300))).await;
        }
    }

    // ----- the faults ----------------------------------------------------------------------

    /// Injects faults until `done`: partitions, crashes and restarts, changes of loss and
    /// delay. First of all one node goes down until half the writes are acknowledged and the
    /// others have purged the log it lacks (or a while has passed), so that it comes back by
    /// snapshot.
    async fn faults(&self, rng: &mut StdRng, done: &Cell<bool>, acked: &Cell<usize>) {
        let size = self.size;
        let lagger = rng.random_range(1..=size);
        let last_log = self.raft(lagger).metrics().borrow().last_log_index;
        let deadline = Instant::now() + Duration::from_secs(90);
        self.crash_until(lagger, Back::Lagging { last_log, deadline })
            .await;
        let mut heal_at: Option<Instant> = None;
        while !done.get() {
            sleep(Duration::from_millis(rng.random_range(100..=1_000))).await;
            let now = Instant::now();
            let due: Vec<NodeId> = self
                .down
                .borrow()
                .iter()
                .filter(|(_, back)| match back {
                    Back::At(at) => now >= *at,
                    Back::Lagging { last_log, deadline } => {
                        now >= *deadline
                            || (acked.get() >= WRITES / 2
                                && self
                                    .metrics()
                                    .iter()
                                    .all(|m| m.purged.map(|p| p.index) > *last_log))
                    }
                })
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                self.restart(id).await;
            }
            if heal_at.is_some_and(|at| now >= at) {
                self.router.set_island(BTreeSet::new());
                heal_at = None;
            }
            let roll = rng.random_range(0..100);
            if roll < 20 && heal_at.is_none() {
                // Cut a random proper subset of the nodes off from the others.
                let mut ids: Vec<NodeId> = (1..=size).collect();
                let k = rng.random_range(1..ids.len());
                for i in 0..k {
                    let j = rng.random_range(i..ids.len());
                    ids.swap(i, j);
                }
                self.router.set_island(ids[..k].iter().copied().collect());
                heal_at = Some(now + Duration::from_millis(rng.random_range(500..=4_000)));
            } else if roll < 35 {
                // Crash the leader half the time, else any running node.
                let running = self.running_ids();
                let victim = match self.leader() {
                    Some(leader) if rng.random_bool(0.5) => leader,
                    _ => running[rng.random_range(0..running.len())],
                };
                let back = Instant::now() + Duration::from_millis(rng.random_range(300..=5_000));
                self.crash_until(victim, Back::At(back)).await;
            } else if roll < 50 {
                let loss = [0, 1, 3, 5, 10, 20][rng.random_range(0..6)];
                let delay = [0, 10, 40, 100][rng.random_range(0..4)];
                self.router.set_quality(loss, delay);
            }
        }
    }

    /// Heals the network and restarts every crashed node.
    async fn heal(&self) {
        self.faulty.set(false);
        self.router.calm();
        for id in 1..=self.size {
            if !self.running.borrow().contains_key(&id) {
                self.restart(id).await;
            }
        }
    }

    // ----- the checks ----------------------------------------------------------------------

    fn metrics(&self) -> Vec<RaftMetrics<NodeId, BasicNode>> {
        self.running
            .borrow()
            .values()
            .map(|n| n.raft.metrics().borrow().clone())
            .collect()
    }

    /// Waits (bounded) until one leader is known to every node and every node has applied
    /// the leader's whole log.
    async fn wait_converged(&self) {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let metrics = self.metrics();
            let leaders: Vec<&RaftMetrics<NodeId, BasicNode>> = metrics
                .iter()
                .filter(|m| m.state == ServerState::Leader)
                .collect();
            if let [leader] = leaders.as_slice() {
                let applied = leader.last_applied;
                if leader.last_log_index == applied.map(|id| id.index)
                    && metrics
                        .iter()
                        .all(|m| m.last_applied == applied && m.current_leader == Some(leader.id))
                {
                    return;
                }
            }
            if Instant::now() >= deadline {
                let mut state = String::new();
                for m in &metrics {
                    let _ = write!(
                        state,
                        "\n  node {}: {:?}, leader {:?}, last log {:?}, applied {:?}, snapshot \
                         {:?}, purged {:?}, {:?}",
                        m.id,
                        m.state,
                        m.current_leader,
                        m.last_log_index,
                        m.last_applied,
                        m.snapshot,
                        m.purged,
                        m.running_state
                    );
                }
                panic!(
                    "{}: the nodes did not converge within {CONVERGE_TIMEOUT:?} after healing:{state}",
                    self.label
                );
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every node holds the same engine rows, and every acknowledged write; no login was
    /// finished on another session than its own.
    async fn check(&self, ledger: &Ledger) {
        self.check_bystanders();
        let ids = self.running_ids();
        let nodes: Vec<(NodeId, EngineStateMachine, SessionId)> = ids
            .iter()
            .map(|id| {
                let officer = self.session(*id, Who::Officer);
                (*id, self.running.borrow()[id].sm.clone(), officer)
            })
            .collect();
        assert_eq!(nodes.len(), usize::try_from(self.size).unwrap());
        for m in self.metrics() {
            assert!(
                m.running_state.is_ok(),
                "{}: node {} stopped: {:?}",
                self.label,
                m.id,
                m.running_state
            );
        }
        let mut first: Option<(NodeId, openraft::SnapshotMeta<NodeId, BasicNode>, Vec<u8>)> = None;
        for (id, sm, officer) in &nodes {
            let mut builder = sm.clone();
            let snapshot = builder.build_snapshot().await.unwrap();
            let (meta, data) = (snapshot.meta, snapshot.snapshot.into_inner());
            if let Some((first_id, first_meta, first_data)) = &first {
                assert_eq!(
                    (meta.last_log_id, &meta.last_membership),
                    (first_meta.last_log_id, &first_meta.last_membership),
                    "{}: node {id} applied up to another log entry than node {first_id}",
                    self.label
                );
                assert!(
                    data == *first_data,
                    "{}: node {id}'s engine rows differ from node {first_id}'s: {}",
                    self.label,
                    row_difference(first_data, &data)
                );
            } else {
                first = Some((*id, meta, data));
            }

            let replica = sm.replica().read().unwrap();
            let engine = replica.engine();
            let keys: BTreeMap<KeyHandle, String> = engine
                .list_keys(*officer, &KeyFilter::default())
                .unwrap()
                .into_iter()
                .map(|k| (k.handle, k.attributes.label))
                .collect();
            let users: BTreeSet<String> = engine
                .list_users(*officer)
                .unwrap()
                .into_iter()
                .map(|u| u.name)
                .collect();
            for (handle, label) in &ledger.keys {
                if !ledger.touched.contains(handle) {
                    assert_eq!(
                        keys.get(handle),
                        Some(label),
                        "{}: node {id} lost acknowledged key {} ({label})",
                        self.label,
                        handle.0
                    );
                }
            }
            for handle in &ledger.deleted {
                assert!(
                    !keys.contains_key(handle),
                    "{}: node {id} still holds key {}, whose deletion was acknowledged",
                    self.label,
                    handle.0
                );
            }
            for name in &ledger.users {
                assert!(
                    users.contains(name),
                    "{}: node {id} lost acknowledged user {name}",
                    self.label
                );
            }
        }
    }

    /// Stops every node (the runtime drops whatever tasks remain).
    async fn shutdown(&self) {
        let rafts: Vec<Raft> = self
            .running
            .borrow()
            .values()
            .map(|n| n.raft.clone())
            .collect();
        for raft in rafts {
            let _ = raft.shutdown().await;
        }
        self.running.borrow_mut().clear();
    }
}

/// Which rows two snapshots' data disagree on (decoded as the state machine encodes them: a
/// list of (table code, key, row bytes)).
fn row_difference(a: &[u8], b: &[u8]) -> String {
    type Rows = Vec<(u8, u64, Vec<u8>)>;
    let (Ok(a), Ok(b)) = (
        postcard::from_bytes::<Rows>(a),
        postcard::from_bytes::<Rows>(b),
    ) else {
        return "the snapshot data do not decode as rows".into();
    };
    let index = |rows: Rows| -> BTreeMap<(u8, u64), Vec<u8>> {
        rows.into_iter().map(|(t, k, v)| ((t, k), v)).collect()
    };
    let (a, b) = (index(a), index(b));
    let keys: BTreeSet<&(u8, u64)> = a.keys().chain(b.keys()).collect();
    let differ: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(k) != b.get(k))
        .map(|(t, k)| {
            let side = |rows: &BTreeMap<(u8, u64), Vec<u8>>| match rows.get(&(*t, *k)) {
                Some(v) => format!("{} bytes", v.len()),
                None => "absent".into(),
            };
            format!("table {t} key {k}: {} vs {}", side(&a), side(&b))
        })
        .collect();
    format!("{} rows differ: {}", differ.len(), differ.join("; "))
}

/// Names the seed if the run panics.
struct SeedGuard {
    seed: u64,
    size: u64,
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "raft_simulation: FAILED with seed {} ({} nodes); replay with \
                 {SEED_ENV}={} cargo test -p sealgate-hsm-node --test raft_simulation",
                self.seed, self.size, self.seed
            );
        }
    }
}

/// One seeded run; returns how many snapshots were installed.
async fn simulate(seed: u64, size: u64) -> u64 {
    let cluster = Cluster::start(seed, size).await;
    let mut workload_rng = StdRng::seed_from_u64(seed ^ 0x636c_6965_6e74_0000);
    let mut fault_rng = StdRng::seed_from_u64(seed ^ 0x6661_756c_7473_0000);
    let mut ledger = Ledger::default();
    let done = Cell::new(false);
    let acked = Cell::new(0);
    let client = async {
        cluster
            .workload(&mut workload_rng, &mut ledger, &acked)
            .await;
        done.set(true);
    };
    tokio::join!(client, cluster.faults(&mut fault_rng, &done, &acked));
    let faults_over = cluster.epoch.elapsed();

    cluster.heal().await;
    // Once healed, the cluster takes writes again (bounded by the client's attempts).
    let last = cluster
        .write(
            &mut workload_rng,
            Op::CreateKey("after-healing".into()),
            &mut ledger,
        )
        .await;
    assert!(
        last.is_some(),
        "{}: no write was acknowledged after healing",
        cluster.label
    );
    cluster.wait_converged().await;
    cluster.check(&ledger).await;
    assert!(
        ledger.acked >= WRITES / 3,
        "{}: only {} writes were acknowledged",
        cluster.label,
        ledger.acked
    );
    let (calls, lost, chunks, installed) = {
        let net = cluster.router.net.lock().unwrap();
        (
            net.calls,
            net.lost,
            net.snapshot_chunks,
            net.snapshots_installed,
        )
    };
    let applied = cluster.metrics()[0].last_applied.map_or(0, |id| id.index);
    eprintln!(
        "raft_simulation: seed {seed}, {size} nodes: {} writes acknowledged ({} replicated \
         logins), {} local logins, {} settled by refusal, {} unsure attempts, {} given up; {} \
         crashes, {calls} calls ({lost} lost), {installed} snapshots installed ({chunks} \
         chunks); log index {applied}; faults for {faults_over:?} of virtual time",
        ledger.acked,
        ledger.logins,
        ledger.local_logins,
        ledger.settled,
        ledger.unknown,
        ledger.gave_up,
        cluster.crashes.get()
    );
    cluster.shutdown().await;
    installed
}

fn seeds() -> Vec<u64> {
    match std::env::var(SEED_ENV) {
        Ok(s) => vec![
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_ENV}={s:?} is not a u64")),
        ],
        Err(_) => SEEDS.to_vec(),
    }
}

/// A directory for the cluster's files: in memory (`/dev/shm`) where there is one, so that
/// the run time does not depend on how fast the disk syncs (the simulation's crashes are clean
/// shutdowns, so durability on a real disk is not what it tests).
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("sealgate-sim")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// A current-thread runtime on virtual time.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

fn run(size: u64) {
    let seeds = seeds();
    let mut installed = 0;
    for &seed in &seeds {
        let _guard = SeedGuard { seed, size };
        eprintln!("raft_simulation: seed {seed}, {size} nodes (replay: {SEED_ENV}={seed})");
        let started = std::time::Instant::now();
        installed += runtime().block_on(simulate(seed, size));
        eprintln!(
            "raft_simulation: seed {seed}, {size} nodes took {:?}",
            started.elapsed()
        );
    }
    // The long outage of every run makes a snapshot install all but certain; over all the
    // seeds it is certain.
    assert!(
        installed > 0 || seeds.len() == 1,
        "{size} nodes: no node caught up by snapshot in any run"
    );
}

#[test]
fn three_nodes_converge_and_keep_acknowledged_writes() {
    run(3);
}

#[test]
fn five_nodes_converge_and_keep_acknowledged_writes() {
    run(5);
}

/// A login that a node prepared on its session `s` and handed to the leader just before it
/// crashed is committed while the node is down; the node restarts, numbers its sessions from 1
/// again (its clients reconnect), and applies the entry from the leader's log. The login must
/// not be finished on the new session numbered `s`, which belongs to another client and never
/// logged in. No random faults: the steps are scripted.
#[test]
fn a_login_in_flight_across_a_restart_is_not_finished_on_another_session() {
    runtime().block_on(async {
        let mut cluster = Cluster::start(0, 3).await;
        cluster.label = "scripted login across a restart, 3 nodes".into();
        cluster.check_sessions.set(true);
        let leader = cluster.leader().unwrap();
        let origin = (1..=3).find(|id| *id != leader).unwrap();
        // A failed login, so that the user's next login is replicated.
        let (cmd, session) = cluster
            .prepare(origin, &Op::Login { wrong: true })
            .unwrap()
            .unwrap();
        let run = cluster.run_of(origin);
        let answer = cluster
            .propose(
                origin,
                cluster.raft(origin),
                entry(origin, run, session, &cmd),
            )
            .await;
        assert!(matches!(answer, Attempt::RefusedApplied(_)), "{answer:?}");
        cluster.wait_converged().await;

        // The right password, on a new session of the origin; the origin hands the entry to
        // the leader and crashes before the entry comes back to it.
        let (cmd, session) = cluster
            .prepare(origin, &Op::Login { wrong: false })
            .unwrap()
            .expect("a login after a failure is replicated");
        let run = cluster.run_of(origin);
        let forever = Back::At(Instant::now() + Duration::from_secs(3_600));
        cluster.crash_until(origin, forever).await;
        let answer = cluster
            .propose(
                leader,
                cluster.raft(leader),
                entry(origin, run, session, &cmd),
            )
            .await;
        assert!(
            matches!(answer, Attempt::Acked(Outcome::LoggedIn)),
            "{answer:?}"
        );

        // The origin restarts, its clients open sessions again, and it catches up by log.
        cluster.restart(origin).await;
        assert!(
            cluster.running.borrow()[&origin]
                .bystanders
                .contains(&session),
            "session {} is a bystander's after the restart",
            session.0
        );
        cluster.wait_converged().await;
        cluster.check_bystanders();
        cluster.shutdown().await;
    });
}
