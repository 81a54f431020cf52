//! Shared support for the end-to-end tests: a cluster made by the real `sealgate cluster init`,
//! real `sealgate node` processes on 127.0.0.1 (port 0, the real port read from their output),
//! the real CLI, and a raw TLS connection for protocol-level tests. Every process is stopped by
//! its PID when the test ends, and every wait is bounded.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const CO_PASSWORD: &str = "officer-password-1";
pub const CU1_PASSWORD: &str = "crypto-user-1-pw";
pub const CU2_PASSWORD: &str = "crypto-user-2-pw";

/// How long any one CLI command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The `sealgate` binary built with this test run (target/<profile>/sealgate).
pub fn sealgate_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("sealgate");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace --all-targets`",
        bin.display()
    );
    bin
}

/// Runs a command with a time limit, returning its output.
pub fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn command");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).expect("write stdin");
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(COMMAND_TIMEOUT) {
        Ok(out) => out.expect("command output"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("command {cmd:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
    }
}

/// A cluster directory made by `sealgate cluster init`, and its node processes.
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub dir: PathBuf,
    pub nodes: Vec<Option<NodeProcess>>,
}

impl Cluster {
    /// `sealgate cluster init --dir … --nodes n`, with every node set to listen on port 0.
    pub fn init(n: u32) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("cluster");
        let mut cmd = Command::new(sealgate_bin());
        cmd.args(["cluster", "init", "--dir"])
            .arg(&dir)
            .args(["--nodes", &n.to_string()]);
        let out = run_bounded(cmd, None);
        assert!(
            out.status.success(),
            "cluster init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 1..=n {
            let path = dir.join(format!("node-{i}.toml"));
            let mut file: sealgate_hsm_node::NodeFile =
                toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            file.node.listen = "127.0.0.1:0".into();
            // Independent nodes (each a raft group of one); see `init_replicated`.
            file.cluster.members.clear();
            std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
        }
        Self {
            root,
            dir,
            nodes: (0..n).map(|_| None).collect(),
        }
    }

    /// `sealgate cluster init` for `n` nodes that replicate to each other: each node gets a
    /// free port on 127.0.0.1, known to the others before any starts.
    pub fn init_replicated(n: u32) -> Self {
        let cluster = Self::init(n);
        // Ports the system hands out now; the listeners are closed just before the nodes bind.
        let listeners: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addresses: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        drop(listeners);
        let members: Vec<sealgate_hsm_node::MemberSection> = (1..=n)
            .map(|id| sealgate_hsm_node::MemberSection {
                id,
                address: addresses[(id - 1) as usize].clone(),
            })
            .collect();
        for id in 1..=n {
            let path = cluster.node_config(id);
            let mut file: sealgate_hsm_node::NodeFile =
                toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            file.node.listen = addresses[(id - 1) as usize].clone();
            file.cluster.members = members.clone();
            std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
            cluster.set_client_address(id, addresses[(id - 1) as usize].parse().unwrap());
        }
        cluster
    }

    /// Edits node `id`'s limits before it starts.
    pub fn set_limits(&self, id: u32, edit: impl FnOnce(&mut sealgate_hsm_node::LimitsSection)) {
        let path = self.node_config(id);
        let mut file: sealgate_hsm_node::NodeFile =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut file.limits);
        std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    }

    pub fn client_toml(&self) -> PathBuf {
        self.dir.join("client.toml")
    }

    pub fn node_config(&self, id: u32) -> PathBuf {
        self.dir.join(format!("node-{id}.toml"))
    }

    pub fn node_log(&self, id: u32) -> PathBuf {
        self.root.path().join(format!("node-{id}.log"))
    }

    /// The one-time PRECO password written by init.
    pub fn preco_password(&self) -> String {
        std::fs::read_to_string(self.dir.join("preco-password"))
            .expect("preco-password file")
            .trim()
            .to_owned()
    }

    /// Starts node `id` and points client.toml at its real port. The port is then written
    /// into the node's config, so a restart listens where clients expect it.
    pub fn start(&mut self, id: u32) -> SocketAddr {
        let node = NodeProcess::start(&self.node_config(id), &self.node_log(id));
        let addr = node.addr;
        self.nodes[(id - 1) as usize] = Some(node);
        self.set_client_address(id, addr);
        let path = self.node_config(id);
        let mut file: sealgate_hsm_node::NodeFile =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        file.node.listen = addr.to_string();
        std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
        addr
    }

    pub fn start_all(&mut self) {
        for id in 1..=self.nodes.len() as u32 {
            self.start(id);
        }
    }

    pub fn node(&mut self, id: u32) -> &mut NodeProcess {
        self.nodes[(id - 1) as usize]
            .as_mut()
            .expect("node is running")
    }

    /// Stops node `id` with SIGTERM and waits for it to exit.
    pub fn stop(&mut self, id: u32) -> std::process::ExitStatus {
        let mut node = self.nodes[(id - 1) as usize].take().expect("running");
        node.terminate()
    }

    /// Kills node `id` with SIGKILL.
    pub fn kill(&mut self, id: u32) {
        if let Some(mut node) = self.nodes[(id - 1) as usize].take() {
            node.kill();
        }
    }

    fn set_client_address(&self, id: u32, addr: SocketAddr) {
        let path = self.client_toml();
        let mut file: sealgate_hsm_client::ClientFile =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for node in &mut file.nodes {
            if node.id == id {
                node.address = addr.to_string();
            }
        }
        std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    }

    /// Runs the CLI against this cluster as `user` (password through the environment).
    pub fn sg(&self, user: Option<(&str, &str)>, args: &[&str]) -> Output {
        self.sg_env(user, &[], args)
    }

    pub fn sg_env(
        &self,
        user: Option<(&str, &str)>,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Output {
        let mut cmd = Command::new(sealgate_bin());
        cmd.args(args)
            .env("SEALGATE_CLUSTER", self.client_toml())
            .env_remove("SEALGATE_USER")
            .env_remove("SEALGATE_PASSWORD")
            .env_remove("SEALGATE_NEW_PASSWORD")
            .current_dir(self.root.path());
        if let Some((name, password)) = user {
            cmd.env("SEALGATE_USER", name)
                .env("SEALGATE_PASSWORD", password);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_bounded(cmd, None)
    }

    /// Runs the CLI and expects success; returns stdout.
    pub fn sg_ok(&self, user: Option<(&str, &str)>, args: &[&str]) -> String {
        let out = self.sg(user, args);
        assert!(
            out.status.success(),
            "sealgate {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs the CLI with `--output json` and returns the parsed object.
    pub fn sg_json(&self, user: Option<(&str, &str)>, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.sg(user, &all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sealgate {args:?}: stdout is not JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Activates the cluster (PRECO → CO with `CO_PASSWORD`).
    pub fn activate(&self) {
        let preco = self.preco_password();
        let out = self.sg_env(
            Some(("admin", &preco)),
            &[("SEALGATE_NEW_PASSWORD", CO_PASSWORD)],
            &["cluster", "activate"],
        );
        assert!(
            out.status.success(),
            "activate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// As the CO, adds a node with `sealgate cluster add-node` on a free port of 127.0.0.1;
    /// returns its id. Start it with [`Cluster::start`].
    pub fn add_node(&mut self) -> u32 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let v = self.sg_json(
            Some(("admin", CO_PASSWORD)),
            &["cluster", "add-node", "--port", &port],
        );
        assert_eq!(v["ok"], true, "add-node: {v}");
        let id = u32::try_from(v["data"]["id"].as_u64().unwrap()).unwrap();
        if self.nodes.len() < id as usize {
            self.nodes.resize_with(id as usize, || None);
        }
        id
    }

    /// As `user`, generates a P-256 key pair labelled `label`; returns the public and private
    /// handles as the CLI prints them.
    pub fn ec_pair(&self, user: Option<(&str, &str)>, label: &str) -> (String, String) {
        let v = self.sg_json(
            user,
            &[
                "key",
                "generate",
                "ec",
                "--curve",
                "secp256r1",
                "--label",
                label,
            ],
        );
        assert_eq!(v["ok"], true, "key generate: {v}");
        (
            v["data"]["public"].to_string(),
            v["data"]["private"].to_string(),
        )
    }

    /// As `user`, signs "x" with ECDSA-SHA256 and `handle`; returns the CLI's JSON answer.
    pub fn sign_x(&self, user: Option<(&str, &str)>, handle: &str) -> serde_json::Value {
        self.sg_json(
            user,
            &[
                "crypto",
                "sign",
                "--handle",
                handle,
                "--mechanism",
                "ecdsa-sha256",
                "--data",
                "x",
            ],
        )
    }

    /// As the CO, creates a user.
    pub fn create_user(&self, name: &str, role: &str, password: &str) {
        let out = self.sg_env(
            Some(("admin", CO_PASSWORD)),
            &[("SEALGATE_NEW_PASSWORD", password)],
            &["user", "create", "--name", name, "--role", role],
        );
        assert!(
            out.status.success(),
            "user create {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Starts `sealgate ARGS` (stderr appended to `log`, SEALGATE_LOG=info) and waits, bounded by
/// `timeout`, for a stdout line with `marker` followed by an address; returns the child and
/// that address. Stdout is read until the process exits, so it never blocks on a full pipe.
pub fn start_listening(
    args: &[&OsStr],
    log: &Path,
    marker: &'static str,
    timeout: Duration,
) -> (Child, SocketAddr) {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut child = Command::new(sealgate_bin())
        .args(args)
        .env("SEALGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .expect("spawn sealgate");
    let lines = line_reader(child.stdout.take().expect("stdout"));
    let deadline = Instant::now() + timeout;
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = line.split(marker).nth(1) {
                    break Some(addr.trim().to_owned());
                }
            }
            Err(_) => break None,
        }
    };
    match found {
        Some(a) => (child, a.parse().expect("listening address")),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sealgate {args:?} did not start within {timeout:?}; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

/// Starts `sealgate serve --dev --data-dir DIR` with its HTTPS and metrics listeners on port 0
/// (a port picked in advance may be taken by then), stderr to `log`, and waits (bounded:
/// 120 s) for its `try: curl` line. Returns the child and every line it printed up to there.
pub fn start_dev(dir: &Path, log: &Path) -> (Child, Vec<String>) {
    let mut child = Command::new(sealgate_bin())
        .args(["serve", "--dev", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn sealgate serve --dev");
    let rx = line_reader(child.stdout.take().expect("stdout"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut output = Vec::new();
    while !output.iter().any(|l: &String| l.starts_with("try: curl")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => output.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "serve --dev did not start within 120 s; stdout {output:?}; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }
    (child, output)
}

/// The address in the first of `lines` that starts with `prefix`.
pub fn address_after(lines: &[String], prefix: &str) -> SocketAddr {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"))
}

/// A running `sealgate node` process; killed by PID when dropped.
pub struct NodeProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl NodeProcess {
    /// Starts `sealgate node --config FILE`, stderr to `log`, and waits (bounded) for its
    /// "listening on" line.
    pub fn start(config: &Path, log: &Path) -> Self {
        let args = [
            OsStr::new("node"),
            OsStr::new("--config"),
            config.as_os_str(),
        ];
        let (child, addr) = start_listening(&args, log, "listening on ", Duration::from_secs(30));
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait up to 20 s (SIGKILL after that, and fail).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("node {} ignored SIGTERM for 20 s", self.pid());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// The lines `stream` yields, read on their own thread until it ends (a reader that blocks
/// cannot hold a test up: receive them with a timeout). Lines keep being read after the
/// receiver is gone, so the writing process never blocks on a full pipe.
pub fn line_reader(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    lines
}

/// Lines of a node's log that contain `needle`.
pub fn log_lines(log: &Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Waits (bounded) until `cond` holds.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `openssl` with `args` in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(dir);
    run_bounded(cmd, None)
}

/// A raw protocol connection (mutual TLS with the cluster's client certificate, or another),
/// for tests below the client SDK.
pub mod raw {
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use sealgate_hsm_proto::{self as proto, Hello, Reply, Request, RequestFrame, ResponseFrame};
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;
    use tokio_util::codec::{Framed, LengthDelimitedCodec};

    pub type Conn = Framed<TlsStream<TcpStream>, LengthDelimitedCodec>;

    /// A TLS 1.3 client config trusting the cluster CA, with `identity` (cert, key) if given.
    pub fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(cert)
                        .unwrap()
                        .map(|c| c.unwrap())
                        .collect(),
                    PrivateKeyDer::from_pem_file(key).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }

    /// Connects and finishes the TLS handshake (client side).
    pub async fn connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await?;
        Ok(Framed::new(tls, proto::length_codec(64 << 20)))
    }

    /// Sends one request frame.
    pub async fn send(conn: &mut Conn, id: u64, request: Request) {
        let frame = proto::encode(&RequestFrame::new(id, request));
        conn.send(Bytes::from(frame)).await.expect("send frame");
    }

    /// Sends a whole request frame.
    pub async fn send_frame(conn: &mut Conn, frame: &RequestFrame) {
        conn.send(Bytes::from(proto::encode(frame)))
            .await
            .expect("send frame");
    }

    /// Sends raw bytes as one frame body.
    pub async fn send_body(conn: &mut Conn, body: &[u8]) {
        conn.send(Bytes::copy_from_slice(body))
            .await
            .expect("send frame");
    }

    /// Receives one response (bounded: 10 s); `None` when the node closed the connection.
    pub async fn recv(conn: &mut Conn) -> Option<ResponseFrame> {
        match tokio::time::timeout(Duration::from_secs(10), conn.next()).await {
            Ok(Some(Ok(bytes))) => Some(proto::decode_response(&bytes).expect("valid response")),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("no response within 10 s"),
        }
    }

    /// Connects with the cluster's client certificate and says hello.
    pub async fn hello(cluster_dir: &Path, addr: SocketAddr) -> Conn {
        let config = client_config(
            &cluster_dir.join("ca.pem"),
            Some((
                &cluster_dir.join("client.pem"),
                &cluster_dir.join("client-key.pem"),
            )),
        );
        let mut conn = connect(addr, config).await.expect("connect");
        send(&mut conn, 1, Request::Hello(Hello::current("e2e test"))).await;
        let welcome = recv(&mut conn).await.expect("welcome");
        assert!(
            matches!(welcome.result, Ok(Reply::Welcome(_))),
            "{welcome:?}"
        );
        conn
    }

    /// Whether the connection still answers a health request.
    pub async fn healthy(conn: &mut Conn, id: u64) -> bool {
        send(conn, id, Request::Health).await;
        matches!(
            recv(conn).await,
            Some(ResponseFrame { id: got, result: Ok(Reply::Health(_)), .. }) if got == id
        )
    }
}

/// The client SDK against a cluster started here.
pub mod sdk {
    use sealgate_hsm_client::{Client, ClientConfig, Credentials};
    use sealgate_hsm_proto::{ErrorKind, Reply, Request, Secret};
    use std::path::Path;
    use std::time::Duration;

    /// Connects with the client.toml at `path` as `user` (bounded: 30 s).
    pub async fn connect(path: &Path, user: &str, password: &str) -> Client {
        let config = ClientConfig::load(path).unwrap();
        let credentials = Credentials::new(user, Secret::new(password.into()));
        tokio::time::timeout(
            Duration::from_secs(30),
            Client::connect(config, Some(credentials)),
        )
        .await
        .expect("connect in time")
        .expect("connect")
    }

    /// Sends a write (to `node`, or any node), retrying while the cluster has no leader yet
    /// (bounded: 30 s).
    pub async fn write(client: &Client, node: Option<u32>, request: Request) -> Reply {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let sent = match node {
                Some(id) => client.call_on(id, request.clone()).await,
                None => client.call(request.clone()).await,
            };
            match sent {
                Ok(reply) => return reply,
                Err(e) if e.kind() == Some(ErrorKind::Unavailable) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no leader within 30 s: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("write on node {node:?} failed: {e}"),
            }
        }
    }
}

/// The proxy side: `sealgate serve --config FILE` in remote mode in front of a cluster started
/// here, with a certificate whose key is in the HSM; test upstreams in the test process; curl
/// and raw TLS connections to the proxy.
pub mod proxy {
    use super::{CU1_PASSWORD, Cluster, run_bounded, sealgate_bin, start_listening};
    use std::collections::BTreeMap;
    use std::ffi::OsStr;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, ExitStatus};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// A port on 127.0.0.1 with nothing listening (bound, then closed).
    pub fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A cluster of `nodes` (replicating when more than one) with everything `serve` needs: an
    /// activated cluster, the crypto user `cu1`, a P-256 key labelled `web` in the HSM, a
    /// certificate it signed for `localhost` and `127.0.0.1` (`web.pem`) and a password file.
    pub struct Site {
        pub cluster: Cluster,
        /// The directory of `web.pem`, `cu1-password` and `sealgate.toml`.
        pub dir: PathBuf,
        pub cert: PathBuf,
        pub config: PathBuf,
    }

    impl Site {
        pub fn new(nodes: u32) -> Self {
            let mut cluster = if nodes == 1 {
                Cluster::init(1)
            } else {
                Cluster::init_replicated(nodes)
            };
            cluster.start_all();
            cluster.activate();
            cluster.create_user("cu1", "cu", CU1_PASSWORD);
            let dir = cluster.root.path().to_owned();
            let cu1 = Some(("cu1", CU1_PASSWORD));
            cluster.ec_pair(cu1, "web");
            let cert = dir.join("web.pem");
            let cert_arg = cert.to_str().unwrap();
            let signed = cluster.sg_json(
                cu1,
                &[
                    "cert",
                    "self-sign",
                    "--label",
                    "web",
                    "--name",
                    "localhost",
                    "--name",
                    "127.0.0.1",
                    "--out",
                    cert_arg,
                ],
            );
            assert_eq!(signed["ok"], true, "cert self-sign: {signed}");
            write_secret(&dir.join("cu1-password"), CU1_PASSWORD);
            let config = dir.join("sealgate.toml");
            Self {
                cluster,
                dir,
                cert,
                config,
            }
        }

        /// Writes sealgate.toml: `proxy` (the `[proxy]` tables: listeners, routes, pools,
        /// limits), then an `[hsm]` section for this cluster in remote mode. Checks it with
        /// `sealgate config check`.
        pub fn write_config(&self, proxy: &str) {
            let hsm = format!(
                "\n[hsm]\nmode = \"remote\"\nclient_config = {:?}\nuser = \"cu1\"\n\
                 password_file = \"cu1-password\"\n",
                self.cluster.client_toml().to_str().unwrap()
            );
            std::fs::write(&self.config, format!("{proxy}{hsm}")).unwrap();
            let mut cmd = Command::new(sealgate_bin());
            cmd.args(["--output", "json", "config", "check", "--config"])
                .arg(&self.config)
                .current_dir(&self.dir);
            let out = run_bounded(cmd, None);
            assert!(
                out.status.success(),
                "config check refused sealgate.toml: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// The `[proxy]` tables of the simplest site: one listener on a free port of 127.0.0.1
        /// with `web.pem` (key `web`), every path routed to the pool `pool` of one server
        /// (`upstream`); `extra` is appended (another section, say).
        pub fn one_pool_proxy(pool: &str, upstream: SocketAddr, extra: &str) -> String {
            format!(
                "[[proxy.listeners]]\nbind = \"127.0.0.1:0\"\n\
                 [[proxy.listeners.certificates]]\nchain = \"web.pem\"\nkey = {{ label = \"web\" }}\n\n\
                 [[proxy.routes]]\npath_prefix = \"/\"\npool = \"{pool}\"\n\n\
                 [[proxy.pools]]\nname = \"{pool}\"\nservers = [\"{upstream}\"]\n{extra}"
            )
        }

        /// Starts `sealgate serve --config sealgate.toml`, its log in `serve.log`.
        pub fn serve(&self) -> Serve {
            Serve::start(&self.config, &self.dir.join("serve.log"))
        }

        /// Signatures made so far by each node that answers a health request.
        pub async fn signs(&self) -> BTreeMap<u32, u64> {
            signs_by_node(&self.cluster.client_toml()).await
        }
    }

    /// Writes `text` to a new file of mode 0600.
    pub fn write_secret(path: &Path, text: &str) {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// `Health::signs` of every node that answers (a node that is down is left out).
    pub async fn signs_by_node(client_toml: &Path) -> BTreeMap<u32, u64> {
        use sealgate_hsm_client::{Client, ClientConfig};
        use sealgate_hsm_proto::{Reply, Request};
        let config = ClientConfig::load(client_toml).unwrap();
        let client = tokio::time::timeout(Duration::from_secs(30), Client::connect(config, None))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut signs = BTreeMap::new();
        for node in client.nodes() {
            let health = tokio::time::timeout(
                Duration::from_secs(10),
                client.call_on(node.id, Request::Health),
            )
            .await;
            if let Ok(Ok(Reply::Health(h))) = health {
                signs.insert(node.id, h.signs);
            }
        }
        client.close().await;
        signs
    }

    /// A running `sealgate serve`; SIGKILLed by its PID when dropped still running.
    pub struct Serve {
        child: Child,
        pub addr: SocketAddr,
        pub log: PathBuf,
    }

    impl Serve {
        /// Starts `sealgate serve --config FILE` (stderr to `log`) and waits (bounded: 60 s) for
        /// its `sealgate serve listening on https://ADDR` line.
        pub fn start(config: &Path, log: &Path) -> Self {
            let args = [
                OsStr::new("serve"),
                OsStr::new("--config"),
                config.as_os_str(),
            ];
            let marker = "sealgate serve listening on https://";
            let (child, addr) = start_listening(&args, log, marker, Duration::from_secs(60));
            Self {
                child,
                addr,
                log: log.to_owned(),
            }
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        pub fn port(&self) -> u16 {
            self.addr.port()
        }

        /// Whether serve still runs.
        pub fn running(&mut self) -> bool {
            matches!(self.child.try_wait(), Ok(None))
        }

        /// The log so far.
        pub fn log_text(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }

        /// SIGTERM, then wait up to 30 s (SIGKILL after that, and fail).
        pub fn terminate(&mut self) -> ExitStatus {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = self.child.try_wait().expect("wait") {
                    return status;
                }
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("serve {} ignored SIGTERM for 30 s", self.pid());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    impl Drop for Serve {
        fn drop(&mut self) {
            if self.running() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }

    /// What curl got.
    #[derive(Debug)]
    pub struct CurlResult {
        /// curl's exit status was 0.
        pub ok: bool,
        /// The HTTP status (0 when there was no answer).
        pub status: u16,
        /// `1.1` or `2`.
        pub version: String,
        pub body: String,
        pub stderr: String,
    }

    /// `curl -sS --max-time 20 --cacert CERT EXTRA… https://localhost:PORT{path}`.
    pub fn curl(cert: &Path, port: u16, path: &str, extra: &[&str]) -> CurlResult {
        const MARK: &str = "\n--curl-status ";
        let url = format!("https://localhost:{port}{path}");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "--cacert"])
            .arg(cert)
            .args(["-w", &format!("{MARK}%{{http_code}} %{{http_version}}")])
            .args(extra)
            .arg(&url);
        let out = run_bounded(cmd, None);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = stdout.rsplit_once(MARK).unwrap_or((&stdout, "0 0"));
        let mut tail = tail.split_whitespace();
        CurlResult {
            ok: out.status.success(),
            status: tail.next().and_then(|s| s.parse().ok()).unwrap_or(0),
            version: tail.next().unwrap_or_default().to_owned(),
            body: body.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// An HTTP/1.1 server in the test process (a thread per connection), stopped when dropped.
    pub struct Upstream {
        pub addr: SocketAddr,
        /// Requests it has read (the hanging server counts connections).
        pub requests: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    }

    impl Upstream {
        /// Answers every request `200` with the body `NAME METHOD PATH host=HOST` (keep-alive;
        /// request bodies with a Content-Length are read and dropped).
        pub fn echo(name: &str) -> Self {
            let name = name.to_owned();
            Self::spawn(move |stream, requests| echo_connection(&name, stream, requests))
        }

        /// Accepts connections, reads what comes and never answers.
        pub fn hang() -> Self {
            Self::spawn(|mut stream, requests| {
                requests.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            })
        }

        fn spawn(serve: impl Fn(TcpStream, &AtomicU64) + Send + Sync + Clone + 'static) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (count, stopped) = (Arc::clone(&requests), Arc::clone(&stop));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (serve, count) = (serve.clone(), Arc::clone(&count));
                    std::thread::spawn(move || serve(stream, &count));
                }
            });
            Self {
                addr,
                requests,
                stop,
            }
        }

        pub fn requests(&self) -> u64 {
            self.requests.load(Ordering::Relaxed)
        }
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            // Wakes the accept loop so that it sees the flag.
            let _ = TcpStream::connect(self.addr);
        }
    }

    fn echo_connection(name: &str, stream: TcpStream, requests: &AtomicU64) {
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        });
        let mut writer = stream;
        loop {
            let mut request_line = String::new();
            if !matches!(reader.read_line(&mut request_line), Ok(n) if n > 0) {
                return;
            }
            let mut host = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if !matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("host") {
                        v.trim().clone_into(&mut host);
                    } else if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            if length > 0
                && std::io::copy(&mut (&mut reader).take(length as u64), &mut std::io::sink())
                    .is_err()
            {
                return;
            }
            requests.fetch_add(1, Ordering::Relaxed);
            let mut parts = request_line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let body = format!("{name} {method} {path} host={host}\n");
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if writer.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// Raw TLS connections to the proxy, for inputs no well-behaved client sends.
    pub mod tls {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, ServerName};
        use std::net::SocketAddr;
        use std::path::Path;
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
        use tokio::net::TcpStream;
        use tokio_rustls::client::TlsStream;

        /// A client config (TLS 1.3 and 1.2) trusting the certificates of `ca` (PEM), offering
        /// the ALPN protocols `alpn`.
        pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        }

        /// Connects to `addr` and finishes the TLS handshake for `localhost` (bounded: 20 s).
        pub async fn connect(
            addr: SocketAddr,
            config: Arc<rustls::ClientConfig>,
        ) -> std::io::Result<TlsStream<TcpStream>> {
            let handshake = async {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                tokio_rustls::TlsConnector::from(config)
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
            };
            tokio::time::timeout(Duration::from_secs(20), handshake)
                .await
                .map_err(|_| std::io::Error::other("no TLS handshake within 20 s"))?
        }

        /// How a connection ended while being read.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum End {
            /// The peer closed it (EOF).
            Closed,
            /// A read error (a reset, or TLS closed without close_notify).
            Error(String),
            /// Still open when the wait ended.
            Open,
        }

        /// What a connection answered.
        #[derive(Debug)]
        pub struct Answer {
            pub bytes: Vec<u8>,
            pub end: End,
            /// From the start of the read to its end.
            pub elapsed: Duration,
        }

        impl Answer {
            /// The HTTP/1.x status of the answer, if it starts with a status line.
            pub fn status(&self) -> Option<u16> {
                let text = std::str::from_utf8(self.bytes.get(..12)?).ok()?;
                text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
            }

            /// The connection was closed (EOF or error), not left open.
            pub fn closed(&self) -> bool {
                self.end != End::Open
            }

            /// The first bytes of the answer, for messages.
            pub fn head(&self) -> String {
                let n = self.bytes.len().min(200);
                String::from_utf8_lossy(self.bytes.get(..n).unwrap_or_default()).into_owned()
            }
        }

        /// Writes `bytes` (a write error is not a failure: the peer may close early), then
        /// reads until the peer closes the connection or `wait` has passed.
        pub async fn send_and_read<S: AsyncRead + AsyncWrite + Unpin>(
            stream: &mut S,
            bytes: &[u8],
            wait: Duration,
        ) -> Answer {
            let start = Instant::now();
            if !bytes.is_empty() {
                let write = async {
                    stream.write_all(bytes).await?;
                    stream.flush().await
                };
                // A failed or stalled write is not a failure: the peer may have closed early.
                let _: Result<std::io::Result<()>, _> = tokio::time::timeout(wait, write).await;
            }
            let mut answer = read_until_closed(stream, wait.saturating_sub(start.elapsed())).await;
            answer.elapsed = start.elapsed();
            answer
        }

        /// Reads until the peer closes the connection or `wait` has passed.
        pub async fn read_until_closed<S: AsyncRead + Unpin>(
            stream: &mut S,
            wait: Duration,
        ) -> Answer {
            let start = Instant::now();
            let deadline = tokio::time::Instant::now() + wait;
            let mut bytes = Vec::new();
            let mut buf = vec![0u8; 16 << 10];
            let end = loop {
                match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                    Err(_) => break End::Open,
                    Ok(Ok(0)) => break End::Closed,
                    Ok(Ok(n)) => bytes.extend_from_slice(buf.get(..n).unwrap_or_default()),
                    Ok(Err(e)) => break End::Error(e.to_string()),
                }
            };
            Answer {
                bytes,
                end,
                elapsed: start.elapsed(),
            }
        }
    }
}
