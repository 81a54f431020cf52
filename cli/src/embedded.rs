//! The embedded HSM cluster of `sealgate serve`: every `node-N.toml` of a cluster directory
//! runs as a child process (`sealgate node`, this same binary), restarted with back-off when it
//! exits, and stopped with SIGTERM (by the PID it was started with) when serve stops. The
//! proxy talks to the nodes only through the client SDK, so no key is ever in its memory.

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Longest wait for a node's "listening on" line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// First wait before restarting a node that exited; doubles to [`RESTART_MAX`].
const RESTART_MIN: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// Longest wait for a node to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The running children.
pub(crate) struct Embedded {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    pids: Vec<(u32, Arc<AtomicU32>)>,
    /// Each node's metrics endpoint while it runs (when serve asked for them).
    metrics: Vec<Arc<Mutex<Option<SocketAddr>>>>,
}

/// The node configurations of a cluster directory, by id.
pub(crate) fn node_configs(dir: &Path) -> anyhow::Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_prefix("node-")
            .and_then(|r| r.strip_suffix(".toml"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            out.push((id, entry.path()));
        }
    }
    out.sort();
    if out.is_empty() {
        anyhow::bail!(
            "{} holds no node-N.toml: create the cluster with `sealgate cluster init --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(out)
}

impl Embedded {
    /// Starts every node of `dir` and waits until each listens (or fails to start). With
    /// `metrics`, each node serves its metrics on a free port of 127.0.0.1
    /// ([`Embedded::metrics_endpoints`]).
    pub(crate) async fn start(dir: &Path, metrics: bool) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the sealgate binary")?;
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut pids = Vec::new();
        let mut endpoints = Vec::new();
        let mut ready = Vec::new();
        for (id, config) in node_configs(dir)? {
            let log = dir.join(format!("node-{id}.log"));
            let pid = Arc::new(AtomicU32::new(0));
            let endpoint = Arc::new(Mutex::new(None));
            let (tx, rx) = oneshot::channel();
            let child = NodeChild {
                exe: exe.clone(),
                config,
                log,
                metrics: metrics.then(|| Arc::clone(&endpoint)),
            };
            tasks.push(tokio::spawn(supervise(
                child,
                id,
                Arc::clone(&pid),
                tx,
                stop.clone(),
            )));
            pids.push((id, pid));
            endpoints.push(endpoint);
            ready.push((id, rx));
        }
        let this = Self {
            stop,
            tasks,
            pids,
            metrics: endpoints,
        };
        for (id, rx) in ready {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    this.stop().await;
                    return Err(e.context(format!("HSM node {id} did not start")));
                }
                Err(_) => {
                    this.stop().await;
                    anyhow::bail!("HSM node {id} did not start");
                }
            }
        }
        Ok(this)
    }

    /// The nodes' PIDs now (0 while one restarts).
    pub(crate) fn pids(&self) -> Vec<(u32, u32)> {
        self.pids
            .iter()
            .map(|(id, pid)| (*id, pid.load(Ordering::Relaxed)))
            .collect()
    }

    /// A function that lists the metrics endpoints of the nodes running at the time.
    pub(crate) fn metrics_endpoints(&self) -> impl Fn() -> Vec<SocketAddr> + Send + Sync + 'static {
        let slots = self.metrics.clone();
        move || {
            slots
                .iter()
                .filter_map(|m| m.lock().ok().and_then(|m| *m))
                .collect()
        }
    }

    /// Stops every node (SIGTERM, then SIGKILL after a while) and waits.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// How to start one node.
struct NodeChild {
    exe: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// Where to publish the node's metrics endpoint, when it should have one.
    metrics: Option<Arc<Mutex<Option<SocketAddr>>>>,
}

/// Spawns `sealgate node --config CONFIG` (with `--metrics-bind 127.0.0.1:0` when the node
/// should serve metrics), stderr appended to its log, and waits for its "listening on" line
/// (and its "metrics on" line).
async fn spawn(node: &NodeChild) -> anyhow::Result<Child> {
    let (exe, config, log) = (&node.exe, &node.config, &node.log);
    // The node's standard input is a pipe this process holds (in the `Child`): if serve dies,
    // even by SIGKILL, the pipe closes and the node stops (`--stop-on-stdin-eof`).
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut command = Command::new(exe);
    command
        .arg("node")
        .arg("--config")
        .arg(config)
        .arg("--stop-on-stdin-eof");
    if node.metrics.is_some() {
        command.args(["--metrics-bind", "127.0.0.1:0"]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let wait = async {
        let mut listening = false;
        while let Some(line) = lines.next_line().await? {
            listening |= line.contains("listening on");
            if let Some(slot) = &node.metrics {
                let addr = line
                    .split_once(" metrics on http://")
                    .and_then(|(_, a)| a.trim().parse::<SocketAddr>().ok());
                if let (Some(addr), Ok(mut slot)) = (addr, slot.lock()) {
                    *slot = Some(addr);
                } else {
                    continue;
                }
            }
            if listening {
                return Ok::<bool, std::io::Error>(true);
            }
        }
        Ok(false)
    };
    match tokio::time::timeout(START_TIMEOUT, wait).await {
        Ok(Ok(true)) => {
            // Keep reading what it prints later, so it never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(child)
        }
        Ok(Ok(false)) | Ok(Err(_)) => {
            let status = child.wait().await.ok();
            anyhow::bail!(
                "it exited ({}); see {}",
                status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string()),
                log.display()
            )
        }
        Err(_) => {
            let _ = child.kill().await;
            anyhow::bail!(
                "no \"listening on\" within {START_TIMEOUT:?}; see {}",
                log.display()
            )
        }
    }
}

impl NodeChild {
    /// The node stopped: its metrics endpoint is gone.
    fn forget_metrics(&self) {
        if let Some(Ok(mut slot)) = self.metrics.as_ref().map(|m| m.lock()) {
            *slot = None;
        }
    }
}

/// Sends SIGTERM to `pid` (the PID of a child this process started).
fn terminate(pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

async fn supervise(
    node: NodeChild,
    id: u32,
    pid: Arc<AtomicU32>,
    ready: oneshot::Sender<anyhow::Result<()>>,
    stop: CancellationToken,
) {
    let mut ready = Some(ready);
    let mut backoff = RESTART_MIN;
    loop {
        let started = tokio::time::Instant::now();
        let mut child = match spawn(&node).await {
            Ok(child) => child,
            Err(e) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                warn!(
                    node = id,
                    "HSM node did not restart: {e:#}; retrying in {backoff:?}"
                );
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RESTART_MAX);
                continue;
            }
        };
        // Held open while the node runs (`Child::wait` would close it, and the node stop).
        let _stdin = child.stdin.take();
        pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
        info!(node = id, pid = child.id().unwrap_or(0), "HSM node running");
        if let Some(tx) = ready.take() {
            let _ = tx.send(Ok(()));
        }
        tokio::select! {
            status = child.wait() => {
                pid.store(0, Ordering::Relaxed);
                node.forget_metrics();
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = RESTART_MIN;
                }
                warn!(
                    node = id,
                    "HSM node exited ({}); restarting in {backoff:?} (log: {})",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                    node.log.display()
                );
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RESTART_MAX);
            }
            () = stop.cancelled() => {
                if let Some(p) = child.id() {
                    terminate(p);
                }
                if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
                    warn!(node = id, "HSM node did not stop within {STOP_TIMEOUT:?}; killing it");
                    let _ = child.kill().await;
                }
                pid.store(0, Ordering::Relaxed);
                return;
            }
        }
    }
}
