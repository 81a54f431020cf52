//! What a run counts (requests, failures by kind, an HDR latency histogram) and the summary
//! made from it: printed as text on stdout and written as JSON with `--json`.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

/// Highest latency the histogram holds, in µs (one hour); longer ones are recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What a failed response answered: an HTTP status, or an HSM node's error kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusKey {
    /// A non-2xx HTTP status code.
    Http(u16),
    /// An HSM error kind (`busy`, `permission-denied`, …).
    Hsm(&'static str),
}

impl fmt::Display for StatusKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(code) => write!(f, "{code}"),
            Self::Hsm(kind) => f.write_str(kind),
        }
    }
}

/// Why one request failed. The kinds are the keys of `errors` in the summary.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The TCP connection (or, for hsm-sign, a node) could not be reached.
    Connect(anyhow::Error),
    /// The TLS handshake failed (including a server that does not speak TLS).
    Tls(anyhow::Error),
    /// The server answered with a non-2xx status (or the HSM with an error).
    Status(StatusKey),
    /// No complete answer within `--timeout-ms`.
    Timeout,
    /// Anything else: a connection closed mid-response, a malformed response.
    Other(anyhow::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e:#}"),
            Self::Tls(e) => write!(f, "tls: {e:#}"),
            Self::Status(key) => write!(f, "status {key}"),
            Self::Timeout => f.write_str("timeout"),
            Self::Other(e) => write!(f, "other: {e:#}"),
        }
    }
}

/// Counts of one run (or one shard of it): successes with their latency, failures by kind.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    /// Latency of successful requests, µs.
    latency: Histogram<u64>,
    ok: u64,
    connect: u64,
    tls: u64,
    timeout: u64,
    other: u64,
    /// Failed answers by status; a handful of distinct keys, so a list.
    status: Vec<(StatusKey, u64)>,
    /// The first failure's message, to tell the user what went wrong.
    first_error: Option<String>,
}

impl Stats {
    /// Empty counts.
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            ok: 0,
            connect: 0,
            tls: 0,
            timeout: 0,
            other: 0,
            status: Vec::new(),
            first_error: None,
        })
    }

    /// Counts one request: a success with its latency, or a failure by kind.
    pub(crate) fn record(&mut self, result: &Result<(), Failure>, latency: Duration) {
        let failure = match result {
            Ok(()) => {
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency.saturating_record(micros.max(1));
                self.ok += 1;
                return;
            }
            Err(failure) => failure,
        };
        match failure {
            Failure::Connect(_) => self.connect += 1,
            Failure::Tls(_) => self.tls += 1,
            Failure::Timeout => self.timeout += 1,
            Failure::Other(_) => self.other += 1,
            Failure::Status(key) => self.add_status(*key, 1),
        }
        if self.first_error.is_none() {
            self.first_error = Some(failure.to_string());
        }
    }

    fn add_status(&mut self, key: StatusKey, n: u64) {
        match self.status.iter_mut().find(|(k, _)| *k == key) {
            Some((_, count)) => *count += n,
            None => self.status.push((key, n)),
        }
    }

    /// Adds `other`'s counts to these.
    pub(crate) fn merge(&mut self, other: &Self) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.connect += other.connect;
        self.tls += other.tls;
        self.timeout += other.timeout;
        self.other += other.other;
        for &(key, n) in &other.status {
            self.add_status(key, n);
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Successful requests.
    pub(crate) fn ok(&self) -> u64 {
        self.ok
    }

    /// Failed requests, every kind.
    pub(crate) fn errors(&self) -> u64 {
        self.connect
            + self.tls
            + self.timeout
            + self.other
            + self.status.iter().map(|(_, n)| n).sum::<u64>()
    }

    /// The latency at `quantile` (0..=1) in µs, 0 before the first success.
    pub(crate) fn latency_at(&self, quantile: f64) -> u64 {
        self.latency.value_at_quantile(quantile)
    }
}

/// `errors` of the JSON summary.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ErrorCounts {
    /// TCP connect failures (hsm-sign: no node reachable).
    pub(crate) connect: u64,
    /// TLS handshake failures.
    pub(crate) tls: u64,
    /// Non-2xx answers by status code (hsm-sign: by HSM error kind).
    pub(crate) status: BTreeMap<String, u64>,
    /// Requests without a complete answer within the timeout.
    pub(crate) timeout: u64,
    /// Other failures (connection closed mid-response, malformed response).
    pub(crate) other: u64,
    /// The sum of every kind.
    pub(crate) total: u64,
}

/// `latency_us` of the JSON summary: successful requests only.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Latency {
    /// Median.
    pub(crate) p50: u64,
    /// 90th percentile.
    pub(crate) p90: u64,
    /// 99th percentile.
    pub(crate) p99: u64,
    /// 99.9th percentile.
    pub(crate) p99_9: u64,
    /// Largest.
    pub(crate) max: u64,
    /// Arithmetic mean.
    pub(crate) mean: f64,
}

/// One run's figures: what `sealgate-loadtest` prints and writes with `--json FILE`.
///
/// JSON keys (stable; `null` where a figure does not apply):
///
/// - `mode`: `handshake`, `keepalive-h1`, `keepalive-h2` or `hsm-sign`; `target`: the URL or
///   the cluster file; `connections`: concurrency (connections, or callers for hsm-sign);
///   `streams`: concurrent requests per connection; `rate_rps`: the open-loop rate, `null` in
///   a closed loop.
/// - `requests`: successful requests in the measured window (after warm-up).
/// - `errors`: `{"connect", "tls", "status": {"503": n, …}, "timeout", "other", "total"}`;
///   for hsm-sign `status` is keyed by the HSM's error kind (`busy`, …).
/// - `error_rate`: `errors.total / (requests + errors.total)`.
/// - `throughput_rps`: `requests / duration_s`.
/// - `latency_us`: `{"p50", "p90", "p99", "p99_9", "max", "mean"}` of successful requests, µs;
///   in an open loop measured from each request's intended start (coordinated omission
///   corrected), in a closed loop from its actual start.
/// - `bytes_received`, `bytes_sent`: TCP payload bytes (TLS records included) in the window;
///   `null` for hsm-sign.
/// - `tls_handshakes`, `tls_resumed`: TLS connections made in the window and how many of them
///   resumed a session; `null` for plain HTTP and hsm-sign.
/// - `duration_s`: the measured window, seconds.
/// - `server_cpu_us_per_request`: CPU time (user + system) of the `--server-pid` processes
///   and their descendants during the window, µs, divided by `requests + errors.total`;
///   `server_cores`: that CPU time over `duration_s`; `server_processes`: how many processes
///   were counted. All `null` without `--server-pid`.
/// - `client_cpu_us_per_request`, `client_cores`: the same for this tool's own process.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Summary {
    pub(crate) mode: String,
    pub(crate) target: String,
    pub(crate) connections: usize,
    pub(crate) streams: usize,
    pub(crate) rate_rps: Option<f64>,
    pub(crate) requests: u64,
    pub(crate) errors: ErrorCounts,
    pub(crate) error_rate: f64,
    pub(crate) throughput_rps: f64,
    pub(crate) latency_us: Latency,
    pub(crate) bytes_received: Option<u64>,
    pub(crate) bytes_sent: Option<u64>,
    pub(crate) tls_handshakes: Option<u64>,
    pub(crate) tls_resumed: Option<u64>,
    pub(crate) duration_s: f64,
    pub(crate) server_cpu_us_per_request: Option<f64>,
    pub(crate) server_cores: Option<f64>,
    pub(crate) server_processes: Option<usize>,
    pub(crate) client_cpu_us_per_request: f64,
    pub(crate) client_cores: f64,
    /// The first failure's message (not a figure; helps find what went wrong).
    pub(crate) first_error: Option<String>,
}

/// Figures that are not counted by [`Stats`]: the window, CPU, wire counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    pub(crate) window: Duration,
    /// CPU seconds of the server processes and how many were counted.
    pub(crate) server_cpu: Option<(f64, usize)>,
    /// CPU seconds of this process.
    pub(crate) client_cpu: f64,
    pub(crate) bytes_received: Option<u64>,
    pub(crate) bytes_sent: Option<u64>,
    pub(crate) tls_handshakes: Option<u64>,
    pub(crate) tls_resumed: Option<u64>,
}

/// What the run was, for the summary's first fields.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub(crate) mode: String,
    pub(crate) target: String,
    pub(crate) connections: usize,
    pub(crate) streams: usize,
    pub(crate) rate: Option<f64>,
}

impl Summary {
    /// The summary of `stats` and `measured`.
    pub(crate) fn new(scenario: Scenario, stats: &Stats, measured: &Measured) -> Self {
        let errors = stats.errors();
        let attempts = stats.ok + errors;
        let seconds = measured.window.as_secs_f64();
        let per_request = |cpu_s: f64| {
            if attempts == 0 {
                0.0
            } else {
                cpu_s * 1e6 / attempts as f64
            }
        };
        let per_second = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
        Self {
            mode: scenario.mode,
            target: scenario.target,
            connections: scenario.connections,
            streams: scenario.streams,
            rate_rps: scenario.rate,
            requests: stats.ok,
            errors: ErrorCounts {
                connect: stats.connect,
                tls: stats.tls,
                status: stats
                    .status
                    .iter()
                    .map(|(key, n)| (key.to_string(), *n))
                    .collect(),
                timeout: stats.timeout,
                other: stats.other,
                total: errors,
            },
            error_rate: if attempts == 0 {
                0.0
            } else {
                errors as f64 / attempts as f64
            },
            throughput_rps: per_second(stats.ok as f64),
            latency_us: Latency {
                p50: stats.latency_at(0.5),
                p90: stats.latency_at(0.9),
                p99: stats.latency_at(0.99),
                p99_9: stats.latency_at(0.999),
                max: stats.latency.max(),
                mean: stats.latency.mean(),
            },
            bytes_received: measured.bytes_received,
            bytes_sent: measured.bytes_sent,
            tls_handshakes: measured.tls_handshakes,
            tls_resumed: measured.tls_resumed,
            duration_s: seconds,
            server_cpu_us_per_request: measured.server_cpu.map(|(cpu, _)| per_request(cpu)),
            server_cores: measured.server_cpu.map(|(cpu, _)| per_second(cpu)),
            server_processes: measured.server_cpu.map(|(_, n)| n),
            client_cpu_us_per_request: per_request(measured.client_cpu),
            client_cores: per_second(measured.client_cpu),
            first_error: stats.first_error.clone(),
        }
    }

    /// Writes the summary as text.
    pub(crate) fn print(&self, out: &mut impl Write) -> io::Result<()> {
        let loop_kind = match self.rate_rps {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_owned(),
        };
        let streams = if self.streams > 1 {
            format!(" × {} streams", self.streams)
        } else {
            String::new()
        };
        let callers = if self.mode == "hsm-sign" {
            "callers"
        } else {
            "connections"
        };
        writeln!(
            out,
            "{} {}: {} {callers}{streams}, {loop_kind}, {:.2} s measured",
            self.mode, self.target, self.connections, self.duration_s
        )?;
        writeln!(
            out,
            "requests     {} ok, {} errors (error rate {:.3} %)",
            self.requests,
            self.errors.total,
            self.error_rate * 100.0
        )?;
        if self.errors.total > 0 {
            let e = &self.errors;
            let mut status: Vec<String> =
                e.status.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            if status.is_empty() {
                status.push("none".to_owned());
            }
            writeln!(
                out,
                "errors       connect {}, tls {}, timeout {}, other {}, status: {}",
                e.connect,
                e.tls,
                e.timeout,
                e.other,
                status.join(", ")
            )?;
            if let Some(first) = &self.first_error {
                writeln!(out, "first error  {first}")?;
            }
        }
        writeln!(out, "throughput   {:.1} req/s", self.throughput_rps)?;
        let l = &self.latency_us;
        writeln!(
            out,
            "latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            micros(l.p50),
            micros(l.p90),
            micros(l.p99),
            micros(l.p99_9),
            micros(l.max)
        )?;
        if let (Some(received), Some(sent)) = (self.bytes_received, self.bytes_sent) {
            writeln!(
                out,
                "bytes        received {}, sent {}",
                bytes(received),
                bytes(sent)
            )?;
        }
        if let (Some(handshakes), Some(resumed)) = (self.tls_handshakes, self.tls_resumed) {
            writeln!(
                out,
                "tls          {handshakes} handshakes, {resumed} resumed"
            )?;
        }
        writeln!(
            out,
            "client cpu   {:.1} µs/request ({:.2} cores)",
            self.client_cpu_us_per_request, self.client_cores
        )?;
        if let (Some(cpu), Some(cores), Some(n)) = (
            self.server_cpu_us_per_request,
            self.server_cores,
            self.server_processes,
        ) {
            writeln!(
                out,
                "server cpu   {cpu:.1} µs/request ({cores:.2} cores, {n} processes)"
            )?;
        }
        Ok(())
    }
}

/// `1234` µs as `1.23 ms`.
pub(crate) fn micros(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_merges() {
        let mut a = Stats::new().unwrap();
        a.record(&Ok(()), Duration::from_micros(100));
        a.record(&Err(Failure::Status(StatusKey::Http(503))), Duration::ZERO);
        a.record(&Err(Failure::Timeout), Duration::ZERO);
        let mut b = Stats::new().unwrap();
        b.record(&Ok(()), Duration::from_micros(300));
        b.record(&Err(Failure::Status(StatusKey::Http(503))), Duration::ZERO);
        b.record(&Err(Failure::Status(StatusKey::Http(404))), Duration::ZERO);
        a.merge(&b);
        assert_eq!(a.ok(), 2);
        assert_eq!(a.errors(), 4);
        assert_eq!(
            a.status,
            vec![(StatusKey::Http(503), 2), (StatusKey::Http(404), 1)]
        );
        assert_eq!(a.first_error.as_deref(), Some("status 503"));
        let summary = Summary::new(
            Scenario {
                mode: "handshake".into(),
                target: "x".into(),
                connections: 1,
                streams: 1,
                rate: None,
            },
            &a,
            &Measured {
                window: Duration::from_secs(2),
                client_cpu: 0.006,
                ..Measured::default()
            },
        );
        assert_eq!(summary.throughput_rps, 1.0);
        assert_eq!(summary.error_rate, 4.0 / 6.0);
        assert_eq!(summary.client_cpu_us_per_request, 1000.0);
        assert!((299..=300).contains(&summary.latency_us.max));
        assert_eq!(summary.errors.status["503"], 2);
    }

    #[test]
    fn formats_units() {
        assert_eq!(micros(999), "999 µs");
        assert_eq!(micros(1500), "1.50 ms");
        assert_eq!(micros(2_500_000), "2.50 s");
        assert_eq!(bytes(2048), "2.0 KiB");
    }
}
