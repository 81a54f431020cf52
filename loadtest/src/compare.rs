//! `compare`: the same HTTP scenario against two targets, alternately (A, B, A, B, …), and
//! each figure for both with the ratio B/A as min, median and max over the rounds.

use crate::stats::Summary;
use crate::{HttpScenario, run_http};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

/// `sealgate-loadtest compare`.
#[derive(Debug, Clone, Args)]
pub(crate) struct CompareArgs {
    /// Rounds; each runs A then B.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Target A's URL (replaces the scenario's URL).
    #[arg(long, value_name = "URL")]
    a: String,
    /// Target B's URL.
    #[arg(long, value_name = "URL")]
    b: String,
    /// A server process of A whose CPU is measured, with its descendants (repeatable).
    #[arg(long = "a-pid", value_name = "PID")]
    a_pid: Vec<u32>,
    /// A server process of B (repeatable).
    #[arg(long = "b-pid", value_name = "PID")]
    b_pid: Vec<u32>,
    /// A's name in the output.
    #[arg(long, default_value = "A")]
    a_name: String,
    /// B's name in the output.
    #[arg(long, default_value = "B")]
    b_name: String,
    /// Seconds to wait between runs (lets sockets in TIME_WAIT and servers settle).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pause: f64,
    /// Write every round and the ratios as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Exit 1 if any run's error rate (a fraction) exceeds this.
    #[arg(long, value_name = "F")]
    max_error_rate: Option<f64>,
    /// The scenario, without its URL.
    #[command(subcommand)]
    pub(crate) scenario: HttpScenario,
}

/// A figure compared, and how to read it from a summary.
type Figure = (&'static str, fn(&Summary) -> Option<f64>);

const FIGURES: [Figure; 11] = [
    ("throughput_rps", |s| Some(s.throughput_rps)),
    ("error_rate", |s| Some(s.error_rate)),
    ("latency_us.p50", |s| Some(s.latency_us.p50 as f64)),
    ("latency_us.p90", |s| Some(s.latency_us.p90 as f64)),
    ("latency_us.p99", |s| Some(s.latency_us.p99 as f64)),
    ("latency_us.p99_9", |s| Some(s.latency_us.p99_9 as f64)),
    ("latency_us.max", |s| Some(s.latency_us.max as f64)),
    ("server_cpu_us_per_request", |s| s.server_cpu_us_per_request),
    ("server_cores", |s| s.server_cores),
    ("client_cpu_us_per_request", |s| {
        Some(s.client_cpu_us_per_request)
    }),
    ("bytes_received", |s| s.bytes_received.map(|b| b as f64)),
];

/// Min, median and max of a figure over the rounds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Option<Self> {
        values.retain(|v| v.is_finite());
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let min = *values.first()?;
        let max = *values.last()?;
        let median = if n % 2 == 1 {
            *values.get(n / 2)?
        } else {
            (values.get(n / 2 - 1)? + values.get(n / 2)?) / 2.0
        };
        Some(Self { min, median, max })
    }
}

/// One figure for both targets and B/A, per round summarised.
#[derive(Debug, Clone, Serialize)]
struct Compared {
    a: Option<Spread>,
    b: Option<Spread>,
    ratio: Option<Spread>,
}

#[derive(Debug, Serialize)]
struct Side<'a> {
    name: &'a str,
    url: &'a str,
    pids: &'a [u32],
}

#[derive(Debug, Serialize)]
struct Round {
    a: Summary,
    b: Summary,
}

/// `--json` of `compare`: `{"a": {"name", "url", "pids"}, "b": {…}, "rounds": [{"a": SUMMARY,
/// "b": SUMMARY}, …], "figures": {"throughput_rps": {"a": {"min", "median", "max"}, "b": …,
/// "ratio": …}, …}}`; SUMMARY as for a single run, ratio = B/A per round.
#[derive(Debug, Serialize)]
struct Report<'a> {
    a: Side<'a>,
    b: Side<'a>,
    rounds: Vec<Round>,
    figures: BTreeMap<&'static str, Compared>,
}

/// Runs the comparison; whether every run's error rate was within `--max-error-rate`.
pub(crate) async fn compare(args: &CompareArgs) -> anyhow::Result<bool> {
    let pause = Duration::try_from_secs_f64(args.pause)
        .map_err(|_| anyhow::anyhow!("bad --pause {}", args.pause))?;
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        if round > 0 {
            tokio::time::sleep(pause).await;
        }
        eprintln!("round {}/{}: {}", round + 1, args.rounds, args.a_name);
        let a = run_http(&args.scenario, &args.a, &args.a_pid).await?;
        tokio::time::sleep(pause).await;
        eprintln!("round {}/{}: {}", round + 1, args.rounds, args.b_name);
        let b = run_http(&args.scenario, &args.b, &args.b_pid).await?;
        rounds.push(Round { a, b });
    }
    let figures = FIGURES
        .iter()
        .map(|(name, get)| {
            let a: Vec<f64> = rounds.iter().filter_map(|r| get(&r.a)).collect();
            let b: Vec<f64> = rounds.iter().filter_map(|r| get(&r.b)).collect();
            let ratio: Vec<f64> = rounds
                .iter()
                .filter_map(|r| Some(get(&r.b)? / get(&r.a)?))
                .collect();
            let compared = Compared {
                a: Spread::of(a),
                b: Spread::of(b),
                ratio: Spread::of(ratio),
            };
            (*name, compared)
        })
        .collect();
    let report = Report {
        a: Side {
            name: &args.a_name,
            url: &args.a,
            pids: &args.a_pid,
        },
        b: Side {
            name: &args.b_name,
            url: &args.b,
            pids: &args.b_pid,
        },
        rounds,
        figures,
    };
    print(&report, &mut io::stdout().lock())?;
    if let Some(path) = &args.json {
        crate::write_json(path, &report)?;
    }
    let within = |s: &Summary| args.max_error_rate.is_none_or(|max| s.error_rate <= max);
    let ok = report.rounds.iter().all(|r| within(&r.a) && within(&r.b));
    if !ok {
        eprintln!(
            "error: a run's error rate exceeds --max-error-rate {}",
            args.max_error_rate.unwrap_or_default()
        );
    }
    Ok(ok)
}

fn spread(s: Option<Spread>, precision: usize) -> String {
    match s {
        Some(s) => format!(
            "{:.p$} [{:.p$}–{:.p$}]",
            s.median,
            s.min,
            s.max,
            p = precision
        ),
        None => "-".to_owned(),
    }
}

fn print(report: &Report<'_>, out: &mut impl Write) -> io::Result<()> {
    let first = report.rounds.first();
    writeln!(
        out,
        "compare {}: {} rounds; A = {} ({}), B = {} ({})",
        first.map_or("", |r| r.a.mode.as_str()),
        report.rounds.len(),
        report.a.name,
        report.a.url,
        report.b.name,
        report.b.url
    )?;
    writeln!(
        out,
        "{:<28} {:>30} {:>30} {:>24}",
        "figure (median [min–max])", report.a.name, report.b.name, "B/A"
    )?;
    for (name, _) in FIGURES {
        let Some(c) = report.figures.get(name) else {
            continue;
        };
        if c.a.is_none() && c.b.is_none() {
            continue;
        }
        let precision = match name {
            "error_rate" => 4,
            "bytes_received" => 0,
            _ if name.starts_with("latency") => 0,
            _ => 1,
        };
        writeln!(
            out,
            "{name:<28} {:>30} {:>30} {:>24}",
            spread(c.a, precision),
            spread(c.b, precision),
            spread(c.ratio, 3)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        assert_eq!(
            Spread::of(vec![3.0, 1.0, 2.0]),
            Some(Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        assert_eq!(Spread::of(vec![4.0, 1.0]).map(|s| s.median), Some(2.5));
        assert_eq!(Spread::of(vec![f64::NAN]), None);
        assert_eq!(Spread::of(vec![]), None);
    }
}
