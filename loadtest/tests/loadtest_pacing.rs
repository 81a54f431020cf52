//! The open loop keeps its rate (as the server counts it), and `--server-pid` measures the CPU
//! of a server process's descendants.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_rate_is_kept() {
    let server = support::start(false).await;
    let url = server.url(false, "/");
    let run = support::run_json(
        server.dir.path(),
        &[
            "keepalive",
            &url,
            "--rate",
            "200",
            "--duration",
            "3",
            "-c",
            "4",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let arrivals = server.seen.arrivals.lock().unwrap().clone();
    let n = arrivals.len();
    assert!((570..=630).contains(&n), "{n} requests for 200/s over 3 s");
    let span = *arrivals.last().unwrap() - arrivals[0];
    let rate = (n - 1) as f64 / span.as_secs_f64();
    assert!((rate - 200.0).abs() <= 10.0, "server saw {rate:.1} req/s");
    let j = run.json.unwrap();
    assert_eq!(j["rate_rps"], 200.0);
    let tool_rate = j["throughput_rps"].as_f64().unwrap();
    assert!(
        (tool_rate - 200.0).abs() <= 10.0,
        "tool counted {tool_rate:.1} req/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_cpu_of_descendants_is_measured() {
    let server = support::start(false).await;
    let url = server.url(false, "/");
    // A shell (idle) whose child burns CPU; the shell's pid is the one given.
    let mut shell = tokio::process::Command::new("sh")
        .args(["-c", "nice -n 19 yes > /dev/null & echo $!; wait"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = shell.stdout.take().unwrap();
    let mut line = String::new();
    {
        use tokio::io::AsyncBufReadExt;
        let mut reader = tokio::io::BufReader::new(&mut stdout);
        reader.read_line(&mut line).await.unwrap();
    }
    let burner: u32 = line.trim().parse().unwrap();
    let shell_pid = shell.id().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let run = support::run_json(
        server.dir.path(),
        &[
            "keepalive",
            &url,
            "--rate",
            "100",
            "--duration",
            "1",
            "-c",
            "2",
            "--server-pid",
            &shell_pid,
        ],
    )
    .await;
    // Stop what was started: the burner by its pid, then the shell.
    let _ = std::process::Command::new("kill")
        .arg(burner.to_string())
        .status();
    let _ = shell.kill().await;
    assert_eq!(run.code, 0, "{run:?}");
    let j = run.json.unwrap();
    let per_request = j["server_cpu_us_per_request"].as_f64().unwrap();
    let cores = j["server_cores"].as_f64().unwrap();
    assert!(per_request > 0.0 && cores > 0.05, "{j}");
    assert!(j["server_processes"].as_u64().unwrap() >= 2, "{j}");
    assert!(run.stdout.contains("server cpu"), "{}", run.stdout);
}
