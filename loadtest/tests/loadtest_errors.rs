//! Failures are counted by kind: status (exact), connect, timeout, TLS and other; and
//! `--max-error-rate` drives the exit code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_errors_are_exact() {
    let server = support::start(true).await;
    let url = server.url(true, "/flaky");
    let run = support::run_json(server.dir.path(), &["keepalive", &url, "-k", "-n", "200"]).await;
    let j = run.json.unwrap();
    assert_eq!(j["errors"]["status"]["503"], 20, "{j}");
    assert_eq!(j["errors"]["total"], 20, "{j}");
    assert_eq!(j["requests"], 180, "{j}");
    assert!(run.stdout.contains("status: 503 ×20"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{}/", support::closed_port().await);
    let run = support::run_json(
        dir.path(),
        &["handshake", &url, "-k", "-n", "20", "-c", "2"],
    )
    .await;
    let j = run.json.unwrap();
    assert_eq!(j["errors"]["connect"], 20, "{j}");
    assert_eq!(j["requests"], 0, "{j}");
    assert!(
        run.stdout.contains("first error  connect:"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts() {
    let server = support::start(false).await;
    let url = server.url(false, "/hang");
    let run = support::run_json(
        server.dir.path(),
        &[
            "keepalive",
            &url,
            "-n",
            "4",
            "-c",
            "4",
            "--timeout-ms",
            "300",
        ],
    )
    .await;
    let j = run.json.unwrap();
    assert_eq!(j["errors"]["timeout"], 4, "{j}");
    assert_eq!(j["errors"]["total"], 4, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_errors_against_a_server_that_is_not_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, task) = support::start_garbage().await;
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let run = support::run_json(
        dir.path(),
        &["handshake", &url, "-k", "-n", "10", "-c", "2"],
    )
    .await;
    task.abort();
    let j = run.json.unwrap();
    assert_eq!(j["errors"]["tls"], 10, "{j}");
    assert_eq!(j["errors"]["total"], 10, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_errors_for_an_untrusted_certificate() {
    let server = support::start(true).await;
    let other = support::start(true).await;
    let url = server.url(true, "/");
    let wrong_ca = other.cert.to_str().unwrap();
    let run = support::run_json(
        server.dir.path(),
        &[
            "handshake",
            &url,
            "--cacert",
            wrong_ca,
            "-n",
            "5",
            "-c",
            "1",
        ],
    )
    .await;
    assert_eq!(run.json.unwrap()["errors"]["tls"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_response_are_other_errors() {
    let server = support::start(false).await;
    let url = server.url(false, "/cut");
    let run = support::run_json(
        server.dir.path(),
        &["keepalive", &url, "-n", "10", "-c", "2"],
    )
    .await;
    let j = run.json.unwrap();
    assert_eq!(j["errors"]["other"], 10, "{j}");
    assert!(run.stdout.contains("closed mid-response"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_error_rate_drives_the_exit_code() {
    let server = support::start(false).await;
    let url = server.url(false, "/flaky");
    let over = support::run(&["keepalive", &url, "-n", "100", "--max-error-rate", "0.05"]).await;
    assert_eq!(over.code, 1, "{over:?}");
    assert!(
        over.stderr.contains("exceeds --max-error-rate 0.05"),
        "{}",
        over.stderr
    );
    let within = support::run(&["keepalive", &url, "-n", "100", "--max-error-rate", "0.1"]).await;
    assert_eq!(within.code, 0, "{within:?}");
}
