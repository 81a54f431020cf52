//! The cluster benchmark for BENCHMARKS.md (issue 4), against a running 3-node cluster: write
//! latency of key generation (one caller, then concurrent callers), P-256 signing spread over
//! 1, 2 and 3 nodes (signs per second and the nodes' CPU per sign, from /proc/PID/stat), and
//! the time a fourth node takes to join once the cluster holds the keys: it is added with
//! `sealgate cluster add-node`, started here, timed to its first signature and to a caught-up
//! voter, then removed again. Prints a markdown summary on stdout, progress on stderr.
//!
//! ```text
//! cargo run --release -p sealgate-tests --example hsm_cluster_bench -- \
//!     --cluster DIR/client.toml --sealgate target/release/sealgate --keys 1000 --seconds 8 \
//!     --node-pid PID1 --node-pid PID2 --node-pid PID3 --pid-file DIR/node-4.pid
//! ```
//! Credentials come from the environment: SEALGATE_USER and SEALGATE_PASSWORD (a crypto user),
//! SEALGATE_CO_PASSWORD (the crypto officer `admin`, for add-node and remove-node).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use sealgate_hsm_client::{Client, ClientConfig, Credentials, NodeEndpoint};
use sealgate_hsm_proto::{
    AttributeValue, Curve, HashAlg, Health, KeySpec, Reply, Request, Secret, SignMechanism,
};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the fourth node has to join before the benchmark gives up on it.
const JOIN_DEADLINE: Duration = Duration::from_secs(180);
/// How long one CLI command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two polls while waiting for something.
const POLL: Duration = Duration::from_millis(10);
/// The message signed: the size of a TLS 1.3 CertificateVerify input.
const MESSAGE_LEN: usize = 130;

/// utime + stime of a process and its waited-for children, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let (user, system) = cpu_ticks_split(pid);
    user + system
}

/// (utime + cutime, stime + cstime) of a process, in clock ticks.
fn cpu_ticks_split(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse::<u64>().unwrap())
        .collect();
    // utime, stime, cutime, cstime are fields 14-17 (1-based), i.e. 11-14 after the name.
    (fields[0] + fields[2], fields[1] + fields[3])
}

fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The summed (user, system) CPU seconds of `pids` since `before` (from [`cpu_ticks_split`]).
fn cpu_seconds(pids: &[u32], before: &[(u64, u64)]) -> (f64, f64) {
    let (mut user, mut system) = (0, 0);
    for (&p, &(u0, s0)) in pids.iter().zip(before) {
        let (u, s) = cpu_ticks_split(p);
        user += u - u0;
        system += s - s0;
    }
    let tick = ticks_per_second();
    (user as f64 / tick, system as f64 / tick)
}

fn new_key() -> Request {
    Request::GenerateKeyPair {
        spec: KeySpec::Ec(Curve::P256),
        public: vec![AttributeValue::new("verify", "true")],
        private: vec![AttributeValue::new("sign", "true")],
    }
}

fn sign(handle: u64) -> Request {
    Request::Sign {
        handle,
        mechanism: SignMechanism::Ecdsa(HashAlg::Sha256),
        data: vec![0x5a; MESSAGE_LEN],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || format!("not reached within {} s", JOIN_DEADLINE.as_secs()),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

/// The `p`-quantile (0..=1) of `sorted` by nearest rank.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Node `id`'s health through `client` (`None` when it does not answer).
async fn health(client: &Client, id: u32) -> Option<Health> {
    match client.call_on(id, Request::Health).await {
        Ok(Reply::Health(h)) => Some(h),
        _ => None,
    }
}

/// Runs the CLI with `--output json` as the crypto officer, bounded; returns the JSON answer
/// and the command's wall time.
fn cli_as_officer(
    sealgate: &Path,
    cluster: &Path,
    officer: &Secret,
    args: &[&str],
) -> (serde_json::Value, Duration) {
    let mut cmd = Command::new(sealgate);
    cmd.args(["--output", "json"])
        .args(args)
        .env("SEALGATE_CLUSTER", cluster)
        .env("SEALGATE_USER", "admin")
        .env("SEALGATE_PASSWORD", officer.expose())
        .env_remove("SEALGATE_NEW_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn sealgate");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(COMMAND_TIMEOUT) else {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
        panic!("sealgate {args:?} did not finish within {COMMAND_TIMEOUT:?}");
    };
    let elapsed = start.elapsed();
    let out = out.expect("command output");
    let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sealgate {args:?}: stdout is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (value, elapsed)
}

/// Latencies of key-pair generations (in the order they were made, and sorted), with the
/// errors, the wall time and the nodes' CPU time (user, system).
struct Writes {
    in_order: Vec<Duration>,
    latencies: Vec<Duration>,
    errors: Vec<String>,
    elapsed: Duration,
    cpu_s: (f64, f64),
}

impl Writes {
    fn row(&self, what: &str) -> String {
        let n = self.latencies.len();
        let l = &self.latencies;
        let per_write = |s: f64| s * 1e6 / n.max(1) as f64;
        format!(
            "| {what} | {n} | {} | {:.0} | {} | {} | {} | {} | {:.0} µs ({:.0} user + {:.0} system) |",
            self.errors.len(),
            n as f64 / self.elapsed.as_secs_f64(),
            ms(percentile(l, 0.50)),
            ms(percentile(l, 0.90)),
            ms(percentile(l, 0.99)),
            ms(l.last().copied().unwrap_or_default()),
            per_write(self.cpu_s.0 + self.cpu_s.1),
            per_write(self.cpu_s.0),
            per_write(self.cpu_s.1),
        )
    }

    /// The median of the first and of the last tenth of the writes, in the order made.
    fn drift(&self) -> (Duration, Duration) {
        let tenth = (self.in_order.len() / 10).max(1).min(self.in_order.len());
        let median = |part: &[Duration]| {
            let mut part = part.to_vec();
            part.sort_unstable();
            percentile(&part, 0.5)
        };
        (
            median(&self.in_order[..tenth]),
            median(&self.in_order[self.in_order.len() - tenth..]),
        )
    }
}

/// `total` key-pair generations by `callers` concurrent callers, each sending through
/// `client.call` (node `on`, if given, with `call_on`); every latency is recorded. Returns the
/// private handles made too.
async fn generate(
    client: &Client,
    total: usize,
    callers: usize,
    on: Option<u32>,
    pids: &[u32],
) -> (Writes, Vec<u64>) {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before: Vec<(u64, u64)> = pids.iter().map(|&p| cpu_ticks_split(p)).collect();
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, next) = (client.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let (mut latencies, mut errors, mut handles) = (Vec::new(), Vec::new(), Vec::new());
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let t = Instant::now();
                    let reply = match on {
                        Some(id) => client.call_on(id, new_key()).await,
                        None => client.call(new_key()).await,
                    };
                    let took = t.elapsed();
                    match reply {
                        Ok(Reply::KeysCreated(h)) if h.len() == 2 => {
                            latencies.push(took);
                            handles.push(h[1]);
                        }
                        other => errors.push(format!("{other:?}")),
                    }
                }
                (latencies, errors, handles)
            })
        })
        .collect();
    let mut writes = Writes {
        in_order: Vec::with_capacity(total),
        latencies: Vec::new(),
        errors: Vec::new(),
        elapsed: Duration::ZERO,
        cpu_s: (0.0, 0.0),
    };
    let mut handles = Vec::with_capacity(total);
    for task in tasks {
        let (l, e, h) = task.await.expect("writer task");
        writes.in_order.extend(l);
        writes.errors.extend(e);
        handles.extend(h);
    }
    writes.elapsed = start.elapsed();
    writes.cpu_s = cpu_seconds(pids, &cpu_before);
    writes.latencies.clone_from(&writes.in_order);
    writes.latencies.sort_unstable();
    (writes, handles)
}

/// One signing run over a set of nodes.
struct SignRun {
    signs: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: f64,
    /// CPU seconds of each node.
    cpu_s: Vec<f64>,
    /// CPU seconds of this process (the client).
    client_cpu_s: f64,
}

/// `concurrency` callers sign with `handle` in a loop, each request to the next node of
/// `nodes` in turn (`call_on`); counted for `seconds` after `warmup` seconds.
async fn sign_load(
    client: &Client,
    nodes: &[u32],
    handle: u64,
    concurrency: usize,
    (warmup, seconds): (u64, u64),
    pids: &[u32],
) -> SignRun {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let next = Arc::new(AtomicUsize::new(0));
    let nodes: Arc<[u32]> = nodes.into();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, stop, done, errors, first_error, next, nodes) = (
                client.clone(),
                Arc::clone(&stop),
                Arc::clone(&done),
                Arc::clone(&errors),
                Arc::clone(&first_error),
                Arc::clone(&next),
                Arc::clone(&nodes),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let node = nodes[next.fetch_add(1, Ordering::Relaxed) % nodes.len()];
                    match client.call_on(node, sign(handle)).await {
                        Ok(Reply::Data(_)) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap()
                                .get_or_insert_with(|| format!("node {node}: {other:?}"));
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let (done0, errors0) = (done.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    let cpu_before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let client_before = cpu_ticks(std::process::id());
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let signs = done.load(Ordering::Relaxed) - done0;
    let failed = errors.load(Ordering::Relaxed) - errors0;
    let cpu_s = pids
        .iter()
        .zip(&cpu_before)
        .map(|(&p, &b)| (cpu_ticks(p) - b) as f64 / ticks_per_second())
        .collect();
    let client_cpu_s = (cpu_ticks(std::process::id()) - client_before) as f64 / ticks_per_second();
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let first_error = first_error.lock().unwrap().take();
    SignRun {
        signs,
        errors: failed,
        first_error,
        elapsed,
        cpu_s,
        client_cpu_s,
    }
}

/// A node process started here; stopped by its PID.
struct NodeProcess {
    child: Child,
    started: Instant,
    listening: Arc<OnceLock<Instant>>,
    key_received: Arc<OnceLock<Instant>>,
}

impl NodeProcess {
    /// Starts `sealgate node --config FILE` (log level info, stderr copied to `log`) and
    /// writes its PID to `pid_file`; the "listening on" line and the log line of the domain
    /// key's arrival are timestamped as they come.
    fn start(sealgate: &Path, config: &Path, log: &Path, pid_file: &Path) -> Self {
        let started = Instant::now();
        let mut child = Command::new(sealgate)
            .args(["node", "--config"])
            .arg(config)
            .env("SEALGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node");
        std::fs::write(pid_file, child.id().to_string()).expect("write the PID file");
        let listening = Arc::new(OnceLock::new());
        let key_received = Arc::new(OnceLock::new());
        let stdout = child.stdout.take().expect("stdout");
        let seen = Arc::clone(&listening);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on") {
                    let _ = seen.set(Instant::now());
                }
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let mut file = std::fs::File::create(log).expect("node log");
        let seen = Arc::clone(&key_received);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("received the cluster's domain key") {
                    let _ = seen.set(Instant::now());
                }
                let _ = writeln!(file, "{line}");
            }
        });
        Self {
            child,
            started,
            listening,
            key_received,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time from the process start to `at`.
    fn since_start(&self, at: Option<&Instant>) -> Option<Duration> {
        at.map(|t| t.duration_since(self.started))
    }

    /// SIGTERM, then waits up to 20 s (SIGKILL after that).
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("node {} ignored SIGTERM for 20 s: killed", self.pid());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// When each step of the join happened, from the node's process start.
#[derive(Default)]
struct JoinTimes {
    add_node: Duration,
    key: Option<Duration>,
    listening: Option<Duration>,
    new: NewNodeTimes,
    sdk_up: Option<Duration>,
    sdk_sign: Option<Duration>,
    sdk_errors: Vec<String>,
    cpu_s: f64,
}

/// What a client that connects to the new node only sees, from its process start.
#[derive(Default)]
struct NewNodeTimes {
    /// The last refused connection (before the node held the cluster's state).
    refused: Option<Duration>,
    /// The first successful connection and login.
    state: Option<Duration>,
    /// The first signature.
    signed: Option<Duration>,
    /// A follower as far as the leader has applied.
    voter: Option<Duration>,
    /// The node's applied index then.
    index: u64,
}

/// Waits (bounded) until a client that lists only node `id` at `address` connects and logs in
/// (the node accepts clients once it holds the cluster's state), then until that client
/// signs with `handle` on it, then until the node is a follower as far as the leader has
/// applied. Times are from `t0`.
async fn watch_new_node(
    base: ClientConfig,
    credentials: (String, Secret),
    id: u32,
    address: std::net::SocketAddr,
    handle: u64,
    t0: Instant,
) -> NewNodeTimes {
    let deadline = t0 + JOIN_DEADLINE;
    let mut times = NewNodeTimes::default();
    let mut config = base;
    config.nodes = vec![NodeEndpoint {
        id,
        address,
        server_name: address.ip().to_string(),
    }];
    let client = loop {
        let creds = Credentials::new(credentials.0.clone(), credentials.1.clone());
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_secs(5),
            Client::connect(config.clone(), Some(creds)),
        )
        .await
        {
            break c;
        }
        times.refused = Some(t0.elapsed());
        if Instant::now() > deadline {
            return times;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    times.state = Some(t0.elapsed());
    while Instant::now() < deadline {
        if let Ok(Reply::Data(_)) = client.call_on(id, sign(handle)).await {
            times.signed = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    while times.signed.is_some() && Instant::now() < deadline {
        let leader = health(&client, id).await.and_then(|h| h.leader);
        let leader_index = match leader {
            Some(l) if l != id => health(&client, l).await.map(|h| h.applied_index),
            _ => None,
        };
        if let (Some(li), Some(h)) = (leader_index, health(&client, id).await)
            && h.role == "follower"
            && h.applied_index >= li
        {
            times.voter = Some(t0.elapsed());
            times.index = h.applied_index;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    client.close().await;
    times
}

/// Waits (bounded) until the long-lived `client` has node `id` up (it learns of it from the
/// nodes' health answers), then until it signs there with `handle` (`call_on`).
async fn watch_sdk(
    client: Client,
    id: u32,
    handle: u64,
    t0: Instant,
) -> (Option<Duration>, Option<Duration>, Vec<String>) {
    let deadline = t0 + JOIN_DEADLINE;
    let mut up = None;
    let mut errors: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        if client.nodes().iter().any(|n| n.id == id && n.up) {
            up = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let mut signed = None;
    while up.is_some() && Instant::now() < deadline {
        match client.call_on(id, sign(handle)).await {
            Ok(Reply::Data(_)) => {
                signed = Some(t0.elapsed());
                break;
            }
            other => {
                let e = format!("{other:?}");
                if !errors.contains(&e) {
                    errors.push(e);
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    (up, signed, errors)
}

struct Args {
    cluster: PathBuf,
    sealgate: PathBuf,
    keys: usize,
    seconds: u64,
    warmup: u64,
    concurrency: usize,
    writers: usize,
    pids: Vec<u32>,
    pid_file: PathBuf,
}

fn args() -> Args {
    let mut args = std::env::args().skip(1);
    let mut a = Args {
        cluster: PathBuf::new(),
        sealgate: PathBuf::from("target/release/sealgate"),
        keys: 1000,
        seconds: 8,
        warmup: 2,
        concurrency: 64,
        writers: 8,
        pids: Vec::new(),
        pid_file: PathBuf::new(),
    };
    while let Some(flag) = args.next() {
        let value = args.next().expect("every flag takes a value");
        match flag.as_str() {
            "--cluster" => a.cluster = value.into(),
            "--sealgate" => a.sealgate = value.into(),
            "--keys" => a.keys = value.parse().expect("keys"),
            "--seconds" => a.seconds = value.parse().expect("seconds"),
            "--warmup" => a.warmup = value.parse().expect("warmup"),
            "--concurrency" => a.concurrency = value.parse().expect("concurrency"),
            "--writers" => a.writers = value.parse().expect("writers"),
            "--node-pid" => a.pids.push(value.parse().expect("pid")),
            "--pid-file" => a.pid_file = value.into(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.cluster.is_file(), "--cluster DIR/client.toml");
    assert!(!a.pid_file.as_os_str().is_empty(), "--pid-file");
    assert_eq!(a.pids.len(), 3, "--node-pid for each of the 3 nodes");
    a
}

#[tokio::main]
async fn main() {
    let a = args();
    let user = std::env::var("SEALGATE_USER").expect("SEALGATE_USER");
    let password = Secret::new(std::env::var("SEALGATE_PASSWORD").expect("SEALGATE_PASSWORD"));
    let officer = Secret::new(std::env::var("SEALGATE_CO_PASSWORD").expect("SEALGATE_CO_PASSWORD"));
    let config = ClientConfig::load(&a.cluster).expect("client.toml");
    let client = Client::connect(
        config.clone(),
        Some(Credentials::new(user.clone(), password.clone())),
    )
    .await
    .expect("connect");
    let start = Instant::now();
    let leader = loop {
        let up = client.nodes().iter().filter(|n| n.up).count();
        if let Some(l) = health(&client, 1).await.and_then(|h| h.leader)
            && up == 3
        {
            break l;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "3 nodes up with a leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let mut out = String::new();

    // 1. Write latency: the cluster's keys, made one after the other through `call`.
    eprintln!("generating {} key pairs, one caller", a.keys);
    let (sequential, handles) = generate(&client, a.keys, 1, None, &a.pids).await;
    assert!(
        !handles.is_empty(),
        "no key was created: {:?}",
        sequential.errors
    );
    let handle = handles[0];

    // 2. Signing over 1, 2 and 3 nodes.
    let mut sign_rows = Vec::new();
    for n in 1..=3u32 {
        let nodes: Vec<u32> = (1..=n).collect();
        eprintln!("signing on nodes {nodes:?} for {} s", a.seconds);
        let run = sign_load(
            &client,
            &nodes,
            handle,
            a.concurrency,
            (a.warmup, a.seconds),
            &a.pids,
        )
        .await;
        sign_rows.push((nodes, run));
    }

    // 3. A fourth node joins the cluster that now holds the keys.
    eprintln!("adding a node");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let (added, add_time) = cli_as_officer(
        &a.sealgate,
        &a.cluster,
        &officer,
        &["cluster", "add-node", "--port", &port],
    );
    assert_eq!(added["ok"], true, "add-node: {added}");
    let id = u32::try_from(added["data"]["id"].as_u64().unwrap()).unwrap();
    let node_config = PathBuf::from(added["data"]["config"].as_str().unwrap());
    let address = added["data"]["address"]
        .as_str()
        .unwrap()
        .parse()
        .expect("node address");
    let store_path = sealgate_hsm_node::NodeConfig::load(&node_config)
        .expect("node config")
        .store_path();
    let log = node_config.with_extension("log");
    let mut node = NodeProcess::start(&a.sealgate, &node_config, &log, &a.pid_file);
    let t0 = node.started;
    let cpu0 = cpu_ticks(node.pid());
    let fresh = tokio::spawn(watch_new_node(
        config.clone(),
        (user.clone(), password.clone()),
        id,
        address,
        handle,
        t0,
    ));
    let sdk = tokio::spawn(watch_sdk(client.clone(), id, handle, t0));
    let new = fresh.await.expect("watch task");
    let (sdk_up, sdk_sign, sdk_errors) = sdk.await.expect("watch task");
    let join = JoinTimes {
        add_node: add_time,
        key: node.since_start(node.key_received.get()),
        listening: node.since_start(node.listening.get()),
        new,
        sdk_up,
        sdk_sign,
        sdk_errors,
        cpu_s: (cpu_ticks(node.pid()) - cpu0) as f64 / ticks_per_second(),
    };
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let leader_store = store_path
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(format!("node-{leader}/store.redb")))
        .unwrap_or_default();
    let (store_new, store_leader) = (size(&store_path), size(&leader_store));

    // The fourth node leaves again, so the cluster is back to three nodes for the writes.
    eprintln!("removing node {id}");
    let (removed, remove_time) = cli_as_officer(
        &a.sealgate,
        &a.cluster,
        &officer,
        &["cluster", "remove-node", "--id", &id.to_string()],
    );
    node.terminate();
    let _ = std::fs::remove_file(&a.pid_file);
    let dropped = {
        let until = Instant::now() + Duration::from_secs(15);
        while client.nodes().iter().any(|n| n.id == id) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client.nodes().iter().all(|n| n.id != id)
    };

    // 4. More writes on three nodes: concurrent callers, and one caller pinned to the leader
    // or a follower.
    eprintln!("generating {} key pairs, {} callers", a.keys, a.writers);
    let (concurrent, _) = generate(&client, a.keys, a.writers, None, &a.pids).await;
    let pinned = (a.keys / 5).max(1);
    eprintln!("generating {pinned} key pairs on the leader, then on a follower");
    let (on_leader, _) = generate(&client, pinned, 1, Some(leader), &a.pids).await;
    let (on_follower, _) = generate(&client, pinned, 1, Some(follower), &a.pids).await;
    client.close().await;

    // The summary.
    let n = &join.new;
    let _ = writeln!(
        out,
        "### Node {id} joins a 3-node cluster holding {} key pairs ({} objects)\n",
        handles.len(),
        2 * handles.len()
    );
    let _ = writeln!(
        out,
        "| step | time from node {id}'s process start |\n|---|---|\n\
         | (before the start) `cluster add-node`: CLI login, snapshot and log purge on the leader, learner added | took {:.2} s |\n\
         | domain key received over mutual TLS (node {id}'s log) | {} |\n\
         | \"listening on\" | {} |\n\
         | cluster state installed: last refused hello / first client (listing node {id} only) connected and logged in | {} / {} |\n\
         | first `Sign` on node {id} through that client | {} |\n\
         | caught-up voter: role \"follower\", applied index {} ≥ the leader's | {} |\n\
         | the long-lived SDK client has node {id} up (learned from health answers) | {} |\n\
         | first `Sign` through the long-lived client (`call_on({id}, …)`) | {} |",
        join.add_node.as_secs_f64(),
        secs(join.key),
        secs(join.listening),
        secs(n.refused),
        secs(n.state),
        secs(n.signed),
        n.index,
        secs(n.voter),
        secs(join.sdk_up),
        secs(join.sdk_sign),
    );
    let _ = writeln!(
        out,
        "\nNode {id} used {:.2} CPU s up to then. store.redb: node {id} {:.2} MiB, leader {:.2} \
         MiB. `cluster remove-node` afterwards: {:.2} s (ok: {}); the SDK dropped node {id}: \
         {dropped}.",
        join.cpu_s,
        store_new as f64 / f64::from(1 << 20),
        store_leader as f64 / f64::from(1 << 20),
        remove_time.as_secs_f64(),
        removed["ok"],
    );
    if !join.sdk_errors.is_empty() {
        let _ = writeln!(
            out,
            "\nAnswers to the long-lived client's signs on node {id} before the first success: {}",
            join.sdk_errors.join("; ")
        );
    }

    let _ = writeln!(
        out,
        "\n### Write latency: P-256 key-pair generation, 3 nodes (leader: node {leader})\n"
    );
    let _ = writeln!(
        out,
        "| callers | writes | errors | writes/s | p50 | p90 | p99 | max | node CPU per write (3 nodes) |\n|---|---|---|---|---|---|---|---|---|"
    );
    let writes = [
        (
            "1, sequential (`call`: any node), before the join".to_owned(),
            &sequential,
        ),
        (format!("{}, concurrent (`call`)", a.writers), &concurrent),
        (format!("1 on the leader (`call_on({leader})`)"), &on_leader),
        (
            format!("1 on a follower (`call_on({follower})`, forwarded)"),
            &on_follower,
        ),
    ];
    for (what, w) in &writes {
        let _ = writeln!(out, "{}", w.row(what));
    }
    let (early, late) = sequential.drift();
    let _ = writeln!(
        out,
        "\nSequential writes: median of the first tenth {}, of the last tenth {}.",
        ms(early),
        ms(late)
    );
    for (what, w) in &writes {
        if let Some(e) = w.errors.first() {
            let _ = writeln!(out, "\n{what}: {} errors, first: {e}", w.errors.len());
        }
    }

    let _ = writeln!(
        out,
        "\n### Signing over 1, 2 and 3 nodes: {} callers, {} s after {} s of warm-up\n",
        a.concurrency, a.seconds, a.warmup
    );
    let _ = writeln!(
        out,
        "| nodes | signs/s | errors | node CPU per sign (all 3 nodes) | node cores (sum) | cores of nodes 1 / 2 / 3 | client cores |\n|---|---|---|---|---|---|---|"
    );
    for (nodes, run) in &sign_rows {
        let cpu: f64 = run.cpu_s.iter().sum();
        let per_node: Vec<String> = run
            .cpu_s
            .iter()
            .map(|c| format!("{:.2}", c / run.elapsed))
            .collect();
        let _ = writeln!(
            out,
            "| {nodes:?} | {:.0} | {} | {:.1} µs | {:.2} | {} | {:.2} |",
            run.signs as f64 / run.elapsed,
            run.errors,
            cpu * 1e6 / run.signs.max(1) as f64,
            cpu / run.elapsed,
            per_node.join(" / "),
            run.client_cpu_s / run.elapsed,
        );
    }
    for (nodes, run) in &sign_rows {
        if let Some(e) = &run.first_error {
            let _ = writeln!(out, "\n{nodes:?}: first error: {e}");
        }
    }
    print!("{out}");
}
