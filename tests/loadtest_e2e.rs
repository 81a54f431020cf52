//! `sealgate-loadtest` against real sealgate processes: a replicated 3-node HSM cluster and
//! `sealgate serve` in front of an upstream. The nodes' own signature counters (`Health::signs`)
//! check what the tool reports: `hsm-sign` makes exactly the signatures it counts, a
//! `handshake` run makes one HSM signature per full handshake and none per resumed one, and
//! `--server-pid` of serve counts serve and nothing else.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::proxy::{Site, Upstream};
use support::{run_bounded, sealgate_bin};

/// The `sealgate-loadtest` binary built with this test run (next to `sealgate`).
fn loadtest_bin() -> PathBuf {
    let bin = sealgate_bin().with_file_name("sealgate-loadtest");
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

/// Runs the tool with `args`, `--json` to a file in `dir`; returns the JSON summary.
fn loadtest(dir: &Path, name: &str, args: &[&str]) -> serde_json::Value {
    let json = dir.join(format!("{name}.json"));
    let mut cmd = Command::new(loadtest_bin());
    cmd.args(args).arg("--json").arg(&json);
    let out = run_bounded(cmd, None);
    assert!(
        out.status.success(),
        "sealgate-loadtest {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn total(signs: &BTreeMap<u32, u64>) -> u64 {
    signs.values().sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tools_counts_match_the_hsm_nodes_signature_counters() {
    let site = Site::new(3);
    let upstream = Upstream::echo("up");
    site.write_config(&Site::one_pool_proxy("up", upstream.addr, ""));
    let dir = site.dir.clone();
    let client_toml = site.cluster.client_toml();
    let password_file = dir.join("cu1-password");

    // hsm-sign: straight to the nodes, 300 signatures by 8 callers.
    let before = site.signs().await;
    let signed = loadtest(
        &dir,
        "hsm-sign",
        &[
            "hsm-sign",
            "--cluster",
            client_toml.to_str().unwrap(),
            "--label",
            "web",
            "--user",
            "cu1",
            "--password-file",
            password_file.to_str().unwrap(),
            "--connections",
            "8",
            "--requests",
            "300",
        ],
    );
    let after = site.signs().await;
    assert_eq!(signed["requests"], 300, "{signed}");
    assert_eq!(signed["error_rate"], 0.0, "{signed}");
    assert_eq!(
        total(&after) - total(&before),
        300,
        "{before:?} -> {after:?}"
    );
    assert!(
        after.iter().filter(|(id, n)| **n > before[*id]).count() >= 2,
        "the SDK spread the signatures over the nodes: {before:?} -> {after:?}"
    );

    let mut serve = site.serve();
    let url = format!("https://localhost:{}/", serve.port());
    let cert = site.cert.to_str().unwrap();
    let serve_pid = serve.pid().to_string();

    // Full handshakes: one HSM signature each; serve's CPU is measured.
    let before = site.signs().await;
    let full = loadtest(
        &dir,
        "handshake",
        &[
            "handshake",
            &url,
            "--cacert",
            cert,
            "--connections",
            "8",
            "--requests",
            "200",
            "--server-pid",
            &serve_pid,
        ],
    );
    let after = site.signs().await;
    assert_eq!(full["requests"], 200, "{full}");
    assert_eq!(full["tls_handshakes"], 200, "{full}");
    assert_eq!(full["tls_resumed"], 0, "{full}");
    assert_eq!(
        total(&after) - total(&before),
        200,
        "one signature per full handshake"
    );
    assert_eq!(
        full["server_processes"], 1,
        "serve only (remote mode): {full}"
    );
    assert!(
        full["server_cpu_us_per_request"].as_f64().unwrap() > 0.0,
        "{full}"
    );

    // --resume: only the first connection makes a full handshake.
    let before = site.signs().await;
    let resumed = loadtest(
        &dir,
        "resume",
        &[
            "handshake",
            &url,
            "--cacert",
            cert,
            "--resume",
            "--connections",
            "1",
            "--requests",
            "50",
        ],
    );
    let after = site.signs().await;
    assert_eq!(resumed["requests"], 50, "{resumed}");
    assert_eq!(resumed["tls_resumed"], 49, "{resumed}");
    assert_eq!(
        total(&after) - total(&before),
        1,
        "resumed handshakes sign nothing"
    );

    // Keep-alive over HTTP/2: no handshake beyond the connections'.
    let kept = loadtest(
        &dir,
        "h2",
        &[
            "keepalive",
            &url,
            "--cacert",
            cert,
            "--http2",
            "--connections",
            "2",
            "--streams",
            "8",
            "--requests",
            "1000",
        ],
    );
    assert_eq!(kept["requests"], 1000, "{kept}");
    assert_eq!(kept["error_rate"], 0.0, "{kept}");
    assert_eq!(serve.terminate().code(), Some(0));
}
