//! `sealgate serve --config` in front of a three-node replicated HSM cluster (remote mode) under
//! h2load, every request on a new TLS connection with a full handshake signed by the HSM. One
//! HSM node is killed with SIGKILL mid-load, first a follower, then (after the follower is back
//! and signing again) the leader: no request fails either time, and the surviving nodes'
//! signature counters show that the handshakes after the kill were signed by them.
//!
//! h2load resumes the TLS session of each of its connections (`-c`) when it reconnects, and has
//! no option against it: `-n 3000 -c 16` makes only 16 full handshakes. So the load is h2load
//! run again and again with `-n 8 -c 8` (8 connections, each with one request and a session of
//! its own) by two threads side by side, 3000 requests in all: 16 connections at most, and a
//! run in progress whenever the node is killed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_client::{Client, ClientConfig};
use sealgate_hsm_proto::{Reply, Request};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::proxy::{Serve, Site, Upstream, curl};

/// Requests (and so full handshakes) per round.
const REQUESTS: u64 = 3000;
/// h2load runs side by side.
const LOADERS: u64 = 2;
/// Connections of one h2load run, each with one request.
const RUN_CONNECTIONS: u64 = 8;
/// Connections open at once: at most this many handshakes can straddle the kill.
const CONNECTIONS: u64 = LOADERS * RUN_CONNECTIONS;
/// The share of [`REQUESTS`] done when the node is killed, percent.
const KILL_AT_PERCENT: u64 = 20;
/// Time limit of one h2load run (`timeout`), and of a whole round, seconds.
const RUN_LIMIT: u64 = 30;
const ROUND_LIMIT: u64 = 180;

fn proxy_toml(echo: &Upstream) -> String {
    Site::one_pool_proxy("echo", echo.addr, "")
}

/// The node every answering node names as leader (bounded: 30 s).
async fn leader(site: &Site) -> u32 {
    let config = ClientConfig::load(&site.cluster.client_toml()).unwrap();
    let client = tokio::time::timeout(Duration::from_secs(30), Client::connect(config, None))
        .await
        .expect("connect in time")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let mut seen = Vec::new();
        for node in client.nodes() {
            let health = client.call_on(node.id, Request::Health);
            if let Ok(Ok(Reply::Health(h))) =
                tokio::time::timeout(Duration::from_secs(10), health).await
            {
                seen.push(h.leader);
            }
        }
        if let Some(Some(first)) = seen.first().copied()
            && seen.len() == 3
            && seen.iter().all(|l| *l == Some(first))
        {
            break first;
        }
        assert!(
            Instant::now() < deadline,
            "no leader all three nodes agree on: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    client.close().await;
    leader
}

/// The numbers of h2load's line starting with `label`.
fn numbers(output: &str, label: &str) -> Vec<u64> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// One `h2load --h1 -H 'Connection: close' -n N -c N -t 1`: N connections, one full handshake
/// and one request each. Returns `Err(its output)` unless all N requests got a 2xx.
fn h2load_run(url: &str, n: u64) -> Result<(), String> {
    let mut cmd = Command::new("timeout");
    cmd.arg(RUN_LIMIT.to_string())
        .args(["h2load", "--h1", "-H", "Connection: close"])
        .args(["-n", &n.to_string(), "-c", &n.to_string(), "-t", "1", url]);
    let out = support::run_bounded(cmd, None);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // total, started, done, succeeded, failed, errored, timeout
    let requests = numbers(&text, "requests:");
    // 2xx, 3xx, 4xx, 5xx
    let statuses = numbers(&text, "status codes:");
    if out.status.success() && requests == [n, n, n, n, 0, 0, 0] && statuses.first() == Some(&n) {
        Ok(())
    } else {
        Err(format!("h2load exited with {}: {text}", out.status))
    }
}

/// What a round of load saw.
struct Load {
    /// Runs that did not get all their requests answered 2xx, with h2load's output.
    failures: Vec<String>,
    /// Requests made.
    requests: u64,
    /// The upstream's request count read right after the kill.
    upstream_at_kill: u64,
}

/// Runs h2load against the proxy from [`LOADERS`] threads until [`REQUESTS`] requests are
/// made; once [`KILL_AT_PERCENT`] of them are done, SIGKILLs HSM node `victim`.
fn load_and_kill(site: &mut Site, serve: &Serve, echo: &Upstream, victim: u32) -> Load {
    let url = format!("https://127.0.0.1:{}/", serve.port());
    let claimed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(ROUND_LIMIT);
    let loaders: Vec<_> = (0..LOADERS)
        .map(|_| {
            let (url, claimed, done) = (url.clone(), Arc::clone(&claimed), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while Instant::now() < deadline {
                    let start = claimed.fetch_add(RUN_CONNECTIONS, Ordering::SeqCst);
                    if start >= REQUESTS {
                        break;
                    }
                    let n = RUN_CONNECTIONS.min(REQUESTS - start);
                    if let Err(output) = h2load_run(&url, n) {
                        failures.push(output);
                    }
                    done.fetch_add(n, Ordering::SeqCst);
                }
                failures
            })
        })
        .collect();
    let start = Instant::now();
    let kill_at = REQUESTS * KILL_AT_PERCENT / 100;
    while done.load(Ordering::SeqCst) < kill_at {
        assert!(
            Instant::now() < deadline && loaders.iter().any(|l| !l.is_finished()),
            "the load stopped before {kill_at} requests"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    site.cluster.kill(victim);
    let upstream_at_kill = echo.requests();
    eprintln!(
        "killed node {victim} after {:?}, {} requests done",
        start.elapsed(),
        done.load(Ordering::SeqCst)
    );
    let failures = loaders
        .into_iter()
        .flat_map(|l| l.join().unwrap())
        .collect();
    let requests = done.load(Ordering::SeqCst);
    eprintln!("{requests} requests in {:?}", start.elapsed());
    Load {
        failures,
        requests,
        upstream_at_kill,
    }
}

fn delta(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>, ids: &[u32]) -> u64 {
    ids.iter()
        .map(|id| after[id].checked_sub(before[id]).expect("signs only grow"))
        .sum()
}

/// One round: load, kill `victim` mid-load, check h2load and the survivors' signatures.
async fn round(site: &mut Site, serve: &Serve, echo: &Upstream, victim: u32, what: &str) {
    let before = site.signs().await;
    assert_eq!(before.len(), 3, "all three nodes answer: {before:?}");
    let upstream_before = echo.requests();
    let load = load_and_kill(site, serve, echo, victim);
    let after = site.signs().await;
    let survivors: Vec<u32> = (1..=3).filter(|id| *id != victim).collect();
    assert_eq!(
        after.keys().copied().collect::<Vec<_>>(),
        survivors,
        "only the killed node is gone"
    );
    eprintln!("{what}: signs before {before:?}, after {after:?}");

    // Every request succeeded: no handshake failed while a node died.
    assert_eq!(load.requests, REQUESTS, "the load ran out of time");
    assert!(
        load.failures.is_empty(),
        "killing {what} (node {victim}) failed requests in {} h2load runs:\n{}",
        load.failures.len(),
        load.failures.join("\n")
    );
    let served = echo.requests() - upstream_before;
    assert_eq!(served, REQUESTS, "every request reached the upstream");

    let after_kill = echo.requests() - load.upstream_at_kill;
    let survivors_signed = delta(&before, &after, &survivors);
    eprintln!(
        "{what}: {after_kill} requests after the kill; the surviving nodes signed \
         {survivors_signed} handshakes during the run"
    );
    // Every request was a full handshake (each h2load run starts without sessions), so all
    // nodes together signed at least REQUESTS times: what the survivors did not sign, the
    // killed node signed before it died.
    assert!(
        survivors_signed < REQUESTS,
        "node {victim} ({what}) was signing for the proxy before the kill: the survivors \
         signed {survivors_signed} of {REQUESTS} handshakes"
    );
    // A request that reached the upstream after the kill came on a connection whose
    // handshake was signed after the kill, so by a survivor, unless that connection was
    // already open at the kill (at most CONNECTIONS were).
    assert!(
        survivors_signed >= after_kill.saturating_sub(CONNECTIONS),
        "the handshakes after the kill of {what} were signed by the surviving nodes: \
         {after_kill} requests after the kill, {survivors_signed} signatures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_hsm_node_under_full_handshakes_fails_none() {
    let mut site = Site::new(3);
    let echo = Upstream::echo("echo");
    site.write_config(&proxy_toml(&echo));
    let mut serve = site.serve();
    let r = curl(&site.cert, serve.port(), "/", &[]);
    assert!(r.ok && r.status == 200, "{r:?}");

    // A follower first.
    let first_leader = leader(&site).await;
    let follower = (1..=3).find(|id| *id != first_leader).unwrap();
    round(&mut site, &serve, &echo, follower, "a follower").await;

    // It comes back, and the proxy signs with it again (its counter restarts at 0).
    site.cluster.start(follower);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = curl(&site.cert, serve.port(), "/", &[]);
        assert!(r.ok && r.status == 200, "{r:?}");
        let signs = site.signs().await;
        if signs.len() == 3 && signs[&follower] > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy never signed with the restarted node {follower}: {signs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Then the leader.
    let leader = leader(&site).await;
    round(&mut site, &serve, &echo, leader, "the leader").await;

    let status = serve.terminate();
    let log = serve.log_text();
    assert!(status.success(), "serve exited with {status}: {log}");
    assert!(!log.contains("panicked"), "serve panicked: {log}");
}
