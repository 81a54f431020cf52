//! A closed-loop signing load through the client SDK, for BENCHMARKS.md: `C` callers sign in a
//! loop for `D` seconds through every node of a cluster; prints signs per second and, for each
//! `--node-pid`, the node's CPU time per sign (from /proc/PID/stat, children included).
//!
//! ```text
//! cargo run --release -p sealgate-tests --example hsm_sign_load -- \
//!     --cluster DIR/client.toml --handle 2 --concurrency 64 --seconds 10 --node-pid PID
//! ```
//! Credentials come from SEALGATE_USER and SEALGATE_PASSWORD.
#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use sealgate_hsm_client::{Client, ClientConfig, Credentials};
use sealgate_hsm_proto::{HashAlg, Reply, Request, Secret, SignMechanism};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// utime + stime of a process and its waited-for children, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14-17 (1-based), i.e. 11-14 after the name.
    fields[11..15]
        .iter()
        .map(|f| f.parse::<u64>().unwrap())
        .sum()
}

fn ticks_per_second() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut cluster, mut handle, mut concurrency, mut seconds, mut pids) =
        (None, None, 64usize, 10u64, Vec::new());
    let mut mechanism = SignMechanism::Ecdsa(HashAlg::Sha256);
    while let Some(flag) = args.next() {
        let value = args.next().expect("every flag takes a value");
        match flag.as_str() {
            "--cluster" => cluster = Some(value),
            "--handle" => handle = Some(value.parse::<u64>().expect("handle")),
            "--concurrency" => concurrency = value.parse().expect("concurrency"),
            "--seconds" => seconds = value.parse().expect("seconds"),
            "--node-pid" => pids.push(value.parse::<u32>().expect("pid")),
            "--mechanism" => mechanism = value.parse().expect("mechanism"),
            other => panic!("unknown flag {other}"),
        }
    }
    let config = ClientConfig::load(cluster.expect("--cluster").as_ref()).expect("client.toml");
    let user = std::env::var("SEALGATE_USER").expect("SEALGATE_USER");
    let password = Secret::new(std::env::var("SEALGATE_PASSWORD").expect("SEALGATE_PASSWORD"));
    let client = Client::connect(config, Some(Credentials::new(user, password)))
        .await
        .expect("connect");
    let handle = handle.expect("--handle");
    let request = Request::Sign {
        handle,
        mechanism,
        data: vec![0x5a; 130], // the size of a TLS 1.3 CertificateVerify input
    };
    // Warm up, then measure.
    for _ in 0..100 {
        client.call(request.clone()).await.expect("warm-up sign");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, request, stop, done, errors) = (
                client.clone(),
                request.clone(),
                Arc::clone(&stop),
                Arc::clone(&done),
                Arc::clone(&errors),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.call(request.clone()).await {
                        Ok(Reply::Data(_)) => done.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let signs = done.load(Ordering::Relaxed);
    println!(
        "signs {signs} errors {} in {elapsed:.2} s: {:.0} signs/s (concurrency {concurrency}, {mechanism})",
        errors.load(Ordering::Relaxed),
        signs as f64 / elapsed
    );
    let tick = ticks_per_second();
    for (pid, before) in pids.iter().zip(cpu_before) {
        let cpu_s = (cpu_ticks(*pid) - before) as f64 / tick;
        println!(
            "node pid {pid}: {cpu_s:.2} CPU s, {:.1} µs CPU per sign, {:.2} cores",
            cpu_s * 1e6 / signs.max(1) as f64,
            cpu_s / elapsed
        );
    }
    client.close().await;
}
