//! The command line: `h3` is refused clearly, bad arguments give one `error:` line and exit 2.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

fn one_error_line(run: &support::Run, starts: &str) {
    assert_eq!(run.code, 2, "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(lines[0].starts_with(starts), "{}", run.stderr);
}

#[tokio::test]
async fn h3_is_not_supported() {
    let run = support::run(&["h3", "https://127.0.0.1:1/", "-c", "4"]).await;
    one_error_line(&run, "error: HTTP/3 is not supported by this target yet");
    assert!(run.stdout.is_empty());
}

#[tokio::test]
async fn bad_urls() {
    for url in ["not a url", "ftp://127.0.0.1/", "127.0.0.1:443", "https://"] {
        let run = support::run(&["handshake", url, "-n", "1"]).await;
        one_error_line(&run, "error: bad URL");
    }
}

#[tokio::test]
async fn missing_cacert() {
    let run = support::run(&[
        "handshake",
        "https://127.0.0.1:1/",
        "--cacert",
        "/nonexistent/ca.pem",
    ])
    .await;
    one_error_line(&run, "error: cannot read --cacert /nonexistent/ca.pem");
}

#[tokio::test]
async fn bad_values() {
    let run = support::run(&["keepalive", "http://127.0.0.1:1/", "--rate", "0"]).await;
    one_error_line(&run, "error: bad --rate 0");
    let run = support::run(&["keepalive", "http://127.0.0.1:1/", "-H", "nocolon"]).await;
    one_error_line(&run, "error: bad --header");
    let run = support::run(&[
        "handshake",
        "http://127.0.0.1:1/",
        "--server-pid",
        "999999999",
    ])
    .await;
    one_error_line(&run, "error: --server-pid 999999999: no such process");
    // clap's own errors exit 2 as well.
    let run = support::run(&["handshake"]).await;
    assert_eq!(run.code, 2);
}

#[tokio::test]
async fn hsm_sign_needs_a_password_from_the_environment_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("client.toml");
    std::fs::write(&toml, "garbage = [").unwrap();
    let run = support::run(&[
        "hsm-sign",
        "--cluster",
        toml.to_str().unwrap(),
        "--handle",
        "1",
    ])
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.starts_with("error: --cluster"), "{}", run.stderr);
    let run = support::run(&["hsm-sign", "--cluster", "x.toml"]).await;
    assert_eq!(run.code, 2, "{run:?}"); // neither --label nor --handle
}
