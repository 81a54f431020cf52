//! `--requests N` makes exactly N requests, as the server and the tool both count, in every
//! HTTP mode; and the JSON summary has its documented keys with consistent numbers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::Value;

async fn exactly_200(mode: &[&str], tls: bool) {
    let server = support::start(tls).await;
    let url = server.url(tls, "/");
    let cert = server.cert.to_str().unwrap().to_owned();
    let mut args: Vec<&str> = mode.to_vec();
    args.extend([url.as_str(), "--requests", "200", "-c", "8"]);
    if tls {
        args.extend(["--cacert", cert.as_str()]);
    }
    let run = support::run_json(server.dir.path(), &args).await;
    assert_eq!(run.code, 0, "{run:?}");
    let json = run.json.unwrap();
    assert_eq!(json["requests"], 200, "{json}");
    assert_eq!(json["errors"]["total"], 0, "{json}");
    assert_eq!(server.seen.total(), 200);
    assert!(
        run.stdout.contains("requests     200 ok, 0 errors"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_counts_exactly() {
    exactly_200(&["handshake"], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_over_plain_http_counts_exactly() {
    exactly_200(&["handshake"], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_h1_counts_exactly() {
    exactly_200(&["keepalive"], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_h2_counts_exactly() {
    exactly_200(&["keepalive", "--http2", "--streams", "4"], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_h2c_counts_exactly() {
    exactly_200(&["keepalive", "--http2", "--streams", "4"], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_has_the_documented_keys_and_consistent_numbers() {
    let server = support::start(true).await;
    let url = server.url(true, "/flaky");
    let run = support::run_json(
        server.dir.path(),
        &["handshake", &url, "-k", "-n", "100", "-c", "4"],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let j = run.json.unwrap();
    for key in [
        "mode",
        "target",
        "connections",
        "streams",
        "rate_rps",
        "requests",
        "errors",
        "error_rate",
        "throughput_rps",
        "latency_us",
        "bytes_received",
        "bytes_sent",
        "tls_handshakes",
        "tls_resumed",
        "duration_s",
        "server_cpu_us_per_request",
        "server_cores",
        "server_processes",
        "client_cpu_us_per_request",
        "client_cores",
    ] {
        assert!(j.get(key).is_some(), "no {key} in {j}");
    }
    for key in ["connect", "tls", "status", "timeout", "other", "total"] {
        assert!(j["errors"].get(key).is_some(), "no errors.{key} in {j}");
    }
    assert_eq!(j["mode"], "handshake");
    assert_eq!(j["requests"], 90);
    assert_eq!(j["errors"]["status"]["503"], 10);
    assert_eq!(j["errors"]["total"], 10);
    assert_eq!(j["error_rate"], 0.1);
    assert_eq!(j["tls_handshakes"], 100);
    assert_eq!(j["tls_resumed"], 0);
    assert_eq!(j["server_cpu_us_per_request"], Value::Null);
    let f = |v: &Value| v.as_f64().unwrap();
    let throughput = f(&j["requests"]) / f(&j["duration_s"]);
    assert!((f(&j["throughput_rps"]) - throughput).abs() < 1e-6 * throughput);
    let l = &j["latency_us"];
    let order = ["p50", "p90", "p99", "p99_9", "max"].map(|k| f(&l[k]));
    assert!(
        order[0] > 0.0 && order.windows(2).all(|w| w[0] <= w[1]),
        "{l}"
    );
    assert!(f(&j["bytes_received"]) > 100.0 * 200.0, "{j}");
    assert!(f(&j["client_cpu_us_per_request"]) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_resumes() {
    let server = support::start(true).await;
    let url = server.url(true, "/");
    let run = support::run_json(
        server.dir.path(),
        &["handshake", &url, "-k", "--resume", "-n", "50", "-c", "1"],
    )
    .await;
    let j = run.json.unwrap();
    assert_eq!(j["requests"], 50, "{j}");
    assert_eq!(j["tls_resumed"], 49, "{j}");
}
