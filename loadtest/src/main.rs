//! `sealgate-loadtest`: sealgate's load generator. It measures what a TLS-terminating proxy
//! costs per request, on the client's and the server's side, against sealgate or any other
//! HTTP server.
//!
//! # Modes
//!
//! - `handshake URL`: every request on a new TCP (+ TLS) connection: one HTTP/1.1 `GET` with
//!   `Connection: close`, the whole response read. Every handshake is a full one (the rustls
//!   client keeps no sessions); with `--resume` connections share a session store, so all but
//!   the first resume.
//! - `keepalive URL`: `--connections` persistent connections; HTTP/1.1 (one request at a time
//!   per connection), or HTTP/2 with `--http2` (ALPN h2, or prior knowledge over `http://`)
//!   and `--streams` requests in flight per connection. A closed connection is reopened.
//! - `hsm-sign --cluster client.toml`: `Sign` requests straight to the HSM nodes through the
//!   client SDK, `--connections` concurrent callers over the SDK's shared connections.
//! - `compare --a URL --b URL … handshake|keepalive …`: one scenario against two targets,
//!   alternately, with each figure's ratio B/A.
//! - `h3`: refused (exit 2), HTTP/3 is not supported by this target yet.
//!
//! # Pacing
//!
//! A closed loop by default: each caller sends its next request when the last one ended, and
//! latency runs from a request's start to its completion. `--rate R` makes it an open loop: R
//! requests per second in total on a fixed schedule spread over the callers, and latency runs
//! from each request's *intended* start, so a server that stalls is charged for the requests
//! it held back (coordinated omission corrected, as wrk2 does). The run stops after
//! `--duration` (requests still in flight then are dropped, not counted) or `--requests`
//! (exactly that many are sent and counted). Requests started in the `--warmup` are not
//! counted in any figure.
//!
//! # Figures
//!
//! Successful requests (2xx); errors by kind: `connect`, `tls`, `status` (non-2xx, by code),
//! `timeout` (`--timeout-ms`), `other`; throughput; latency percentiles of successful
//! requests from an HDR histogram (µs resolution, 3 significant digits); TCP bytes received
//! and sent; TLS handshakes and resumptions; CPU per request. The summary goes to stdout,
//! `--json FILE` writes the same figures (keys documented on [`stats::Summary`]), and a
//! progress line goes to stderr once a second when stderr is a terminal.
//!
//! # Server CPU
//!
//! With `--server-pid PID` (repeatable), the server's processes are those pids and all their
//! descendants, found through the parent pid in every `/proc/*/stat`, once when the measured
//! window starts (after the warm-up) and once when it ends. Their CPU time is `utime + stime`
//! plus `cutime + cstime` (children they reaped): the growth for processes present at both
//! ends, all of it for processes started in between (see [`cpu`]). The report gives that time
//! per request (errors included) and as cores (CPU seconds over wall seconds). The tool's own
//! CPU per request comes from `/proc/self/stat` over the same window. Ticks are converted with
//! `getconf CLK_TCK` (100 if that fails).
//!
//! # Exit codes
//!
//! 0 done; 1 the error rate exceeded `--max-error-rate`; 2 bad arguments or a setup failure
//! (one `error:` line on stderr), and `h3`.
//!
//! What this tool does not do: HTTP/3, request bodies or methods other than GET, pipelining
//! HTTP/1.1, or more than one address per host name (the first one resolved is used).
#![forbid(unsafe_code)]

mod compare;
mod cpu;
mod h1;
mod hsm;
mod http;
mod net;
mod pacer;
mod run;
mod stats;
mod tls;

use crate::hsm::{HsmLoad, HsmSetup, KeyRef};
use crate::http::{HandshakeLoad, HttpSetup, KeepaliveH1Load, KeepaliveH2Load, parse_header};
use crate::net::Target;
use crate::run::{Load, Plan};
use crate::stats::{Scenario, Summary};
use crate::tls::Verify;
use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// sealgate's load generator: TLS handshakes, keep-alive HTTP/1.1 and HTTP/2, HSM signing.
#[derive(Debug, Parser)]
#[command(name = "sealgate-loadtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every request on a new connection (full TLS handshake unless --resume).
    Handshake(HandshakeArgs),
    /// Persistent connections, HTTP/1.1 or HTTP/2.
    Keepalive(KeepaliveArgs),
    /// HTTP/3 (not supported yet).
    H3(H3Args),
    /// Sign requests straight to the HSM nodes through the client SDK.
    HsmSign(HsmSignArgs),
    /// One scenario against two targets, alternately, with the ratios B/A.
    Compare(compare::CompareArgs),
}

/// How many requests, how fast, for how long.
#[derive(Debug, Clone, Args)]
struct LoadOptions {
    /// Concurrency: connections (hsm-sign: concurrent callers).
    #[arg(short = 'c', long, default_value_t = 16, value_name = "C")]
    connections: usize,
    /// Measure for SECS seconds after the warm-up (default 10 unless --requests).
    #[arg(short = 'd', long, value_name = "SECS")]
    duration: Option<f64>,
    /// Measure exactly N requests after the warm-up.
    #[arg(short = 'n', long, value_name = "N")]
    requests: Option<u64>,
    /// Open loop: R requests per second in total, on a fixed schedule.
    #[arg(short = 'r', long, value_name = "R")]
    rate: Option<f64>,
    /// Seconds of load before measuring; those requests are not counted.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    warmup: f64,
    /// Longest wait for one request (connection and handshake included), ms.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    timeout_ms: u64,
    /// Runtime worker threads (default: the available cores).
    #[arg(long, value_name = "T")]
    threads: Option<usize>,
}

/// TLS and request options of the HTTP modes.
#[derive(Debug, Clone, Args)]
struct HttpOptions {
    /// Accept any server certificate (the handshake signature is still verified).
    #[arg(short = 'k', long, conflicts_with = "cacert")]
    insecure: bool,
    /// Trust the CA certificates in this PEM file instead of the system's.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// TLS server name to send and check (default: the URL's host; Host comes from the URL).
    #[arg(long, value_name = "NAME")]
    sni: Option<String>,
    /// An extra request header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "'K: V'")]
    headers: Vec<String>,
}

/// What is reported and checked after a run.
#[derive(Debug, Clone, Args)]
struct ReportOptions {
    /// Also write the figures as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Exit 1 if the error rate (a fraction, 0.01 = 1 %) exceeds F.
    #[arg(long, value_name = "F")]
    max_error_rate: Option<f64>,
    /// A server process whose CPU (with its descendants') is measured (repeatable).
    #[arg(long = "server-pid", value_name = "PID")]
    server_pids: Vec<u32>,
}

/// `handshake` without its URL (also a `compare` scenario).
#[derive(Debug, Clone, Args)]
struct HandshakeOptions {
    /// Resume TLS sessions (a store shared by every connection) instead of full handshakes.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    load: LoadOptions,
    #[command(flatten)]
    http: HttpOptions,
}

/// `keepalive` without its URL (also a `compare` scenario).
#[derive(Debug, Clone, Args)]
struct KeepaliveOptions {
    /// HTTP/2 (ALPN h2; prior knowledge for http:// URLs).
    #[arg(long)]
    http2: bool,
    /// Requests in flight per HTTP/2 connection.
    #[arg(long, default_value_t = 1, value_name = "S", requires = "http2")]
    streams: usize,
    #[command(flatten)]
    load: LoadOptions,
    #[command(flatten)]
    http: HttpOptions,
}

/// An HTTP scenario, without its URL.
#[derive(Debug, Clone, Subcommand)]
enum HttpScenario {
    /// Every request on a new connection.
    Handshake(HandshakeOptions),
    /// Persistent connections.
    Keepalive(KeepaliveOptions),
}

#[derive(Debug, Args)]
struct HandshakeArgs {
    /// http:// or https:// URL.
    url: String,
    #[command(flatten)]
    options: HandshakeOptions,
    #[command(flatten)]
    report: ReportOptions,
}

#[derive(Debug, Args)]
struct KeepaliveArgs {
    /// http:// or https:// URL.
    url: String,
    #[command(flatten)]
    options: KeepaliveOptions,
    #[command(flatten)]
    report: ReportOptions,
}

#[derive(Debug, Args)]
struct H3Args {
    /// Ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("key").required(true).args(["label", "handle"]))]
struct HsmSignArgs {
    /// The cluster's client configuration (client.toml).
    #[arg(long, value_name = "CLIENT_TOML")]
    cluster: PathBuf,
    /// The signing key's label.
    #[arg(long, value_name = "L")]
    label: Option<String>,
    /// The signing key's handle.
    #[arg(long, value_name = "H")]
    handle: Option<u64>,
    /// ecdsa-sha256, rsa-pkcs1-sha256, rsa-pss-sha256 (or any the HSM knows).
    #[arg(long, default_value = "ecdsa-sha256")]
    mechanism: String,
    /// Bytes signed per request (130: a TLS 1.3 CertificateVerify input).
    #[arg(long, default_value_t = 130, value_name = "N")]
    payload_bytes: usize,
    /// User name (default: SEALGATE_USER).
    #[arg(long)]
    user: Option<String>,
    /// Read the password from FILE (default: SEALGATE_PASSWORD; never on the command line).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    #[command(flatten)]
    load: LoadOptions,
    #[command(flatten)]
    report: ReportOptions,
}

impl LoadOptions {
    /// The plan for `callers` concurrent callers.
    fn plan(&self, callers: usize) -> anyhow::Result<Plan> {
        let seconds = |flag: &str, value: f64| {
            Duration::try_from_secs_f64(value).map_err(|_| anyhow!("bad {flag} {value}"))
        };
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            bail!("bad --rate {rate}: requests per second above 0");
        }
        if self.timeout_ms == 0 {
            bail!("--timeout-ms must be above 0");
        }
        let duration = match (self.duration, self.requests) {
            (Some(d), _) if d <= 0.0 => bail!("bad --duration {d}"),
            (Some(d), _) => Some(seconds("--duration", d)?),
            (None, Some(0)) => bail!("--requests must be at least 1"),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        };
        Ok(Plan {
            callers,
            duration,
            requests: self.requests,
            rate: self.rate,
            warmup: seconds("--warmup", self.warmup)?,
            timeout: Duration::from_millis(self.timeout_ms),
            progress: true,
        })
    }
}

impl HttpScenario {
    fn parts(&self) -> (&LoadOptions, &HttpOptions) {
        match self {
            Self::Handshake(o) => (&o.load, &o.http),
            Self::Keepalive(o) => (&o.load, &o.http),
        }
    }
}

/// Runs `load` and summarises it.
async fn measure<L: Load>(
    load: L,
    plan: &Plan,
    server_pids: &[u32],
    scenario: Scenario,
) -> anyhow::Result<Summary> {
    let outcome = run::run(Arc::new(load), plan, server_pids).await?;
    Ok(Summary::new(scenario, &outcome.stats, &outcome.measured))
}

/// Runs an HTTP scenario against `url`.
pub(crate) async fn run_http(
    scenario: &HttpScenario,
    url: &str,
    server_pids: &[u32],
) -> anyhow::Result<Summary> {
    let (load, http) = scenario.parts();
    let headers = http
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<anyhow::Result<_>>()?;
    let setup = HttpSetup {
        target: Target::resolve(url).await?,
        verify: Verify {
            insecure: http.insecure,
            cacert: http.cacert.clone(),
        },
        sni: http.sni.clone(),
        headers,
    };
    let connections = load.connections;
    let info = |mode: &str, streams: usize| Scenario {
        mode: mode.to_owned(),
        target: url.to_owned(),
        connections,
        streams,
        rate: load.rate,
    };
    match scenario {
        HttpScenario::Handshake(o) => {
            let plan = load.plan(connections)?;
            let mode = if o.resume {
                "handshake-resume"
            } else {
                "handshake"
            };
            let info = info(mode, 1);
            measure(
                HandshakeLoad::new(&setup, o.resume)?,
                &plan,
                server_pids,
                info,
            )
            .await
        }
        HttpScenario::Keepalive(o) if o.http2 => {
            if o.streams == 0 {
                bail!("--streams must be at least 1");
            }
            let plan = load.plan(connections.saturating_mul(o.streams))?;
            let load = KeepaliveH2Load::new(&setup, connections)?;
            measure(load, &plan, server_pids, info("keepalive-h2", o.streams)).await
        }
        HttpScenario::Keepalive(_) => {
            let plan = load.plan(connections)?;
            let load = KeepaliveH1Load::new(&setup)?;
            measure(load, &plan, server_pids, info("keepalive-h1", 1)).await
        }
    }
}

async fn run_hsm(args: &HsmSignArgs) -> anyhow::Result<Summary> {
    let key = match (&args.label, args.handle) {
        (Some(label), _) => KeyRef::Label(label.clone()),
        (None, Some(handle)) => KeyRef::Handle(handle),
        (None, None) => bail!("give --label or --handle"),
    };
    let setup = HsmSetup {
        cluster: args.cluster.clone(),
        key,
        mechanism: hsm::parse_mechanism(&args.mechanism)?,
        payload_bytes: args.payload_bytes,
        user: args.user.clone(),
        password_file: args.password_file.clone(),
    };
    let plan = args.load.plan(args.load.connections)?;
    let load = HsmLoad::connect(&setup).await?;
    let client = Arc::new(load);
    let outcome = run::run(Arc::clone(&client), &plan, &args.report.server_pids).await;
    client.close().await;
    let outcome = outcome?;
    let scenario = Scenario {
        mode: "hsm-sign".to_owned(),
        target: args.cluster.display().to_string(),
        connections: args.load.connections,
        streams: 1,
        rate: args.load.rate,
    };
    Ok(Summary::new(scenario, &outcome.stats, &outcome.measured))
}

/// Writes `value` as pretty JSON to `path`.
pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write --json {}", path.display()))
}

/// Prints `summary`, writes its JSON, and checks the error rate: whether it is within bounds.
fn report(summary: &Summary, options: &ReportOptions) -> anyhow::Result<bool> {
    summary.print(&mut std::io::stdout().lock())?;
    if let Some(path) = &options.json {
        write_json(path, summary)?;
    }
    match options.max_error_rate {
        Some(max) if summary.error_rate > max => {
            eprintln!(
                "error: error rate {:.4} exceeds --max-error-rate {max}",
                summary.error_rate
            );
            Ok(false)
        }
        _ => Ok(true),
    }
}

fn threads(command: &Command) -> Option<usize> {
    match command {
        Command::Handshake(a) => a.options.load.threads,
        Command::Keepalive(a) => a.options.load.threads,
        Command::HsmSign(a) => a.load.threads,
        Command::Compare(a) => a.scenario.parts().0.threads,
        Command::H3(_) => None,
    }
}

async fn dispatch(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Handshake(args) => {
            let scenario = HttpScenario::Handshake(args.options);
            let summary = run_http(&scenario, &args.url, &args.report.server_pids).await?;
            report(&summary, &args.report)
        }
        Command::Keepalive(args) => {
            let scenario = HttpScenario::Keepalive(args.options);
            let summary = run_http(&scenario, &args.url, &args.report.server_pids).await?;
            report(&summary, &args.report)
        }
        Command::HsmSign(args) => {
            let summary = run_hsm(&args).await?;
            report(&summary, &args.report)
        }
        Command::Compare(args) => compare::compare(&args).await,
        Command::H3(_) => bail!("HTTP/3 is not supported by this target yet"),
    }
}

fn start(cli: Cli) -> anyhow::Result<bool> {
    if let Command::H3(_) = cli.command {
        bail!("HTTP/3 is not supported by this target yet");
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    match threads(&cli.command) {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => {
            runtime.worker_threads(n);
        }
        None => {}
    }
    let runtime = runtime.build().context("cannot start the runtime")?;
    runtime.block_on(dispatch(cli.command))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match start(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::from(2)
        }
    }
}
