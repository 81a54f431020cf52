//! `compare`: the same scenario against two servers, alternately, round after round; each
//! figure for both and the ratio B/A (min, median, max over the rounds) in the JSON report.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_both_targets_every_round_and_reports_ratios() {
    let (a, b) = (support::start(false).await, support::start(false).await);
    let (url_a, url_b) = (a.url(false, "/"), b.url(false, "/"));
    let json = a.dir.path().join("compare.json");
    let run = support::run(&[
        "compare",
        "--rounds",
        "3",
        "--pause",
        "0",
        "--a",
        &url_a,
        "--b",
        &url_b,
        "--a-name",
        "first",
        "--b-name",
        "second",
        "--json",
        json.to_str().unwrap(),
        "keepalive",
        "-c",
        "2",
        "--requests",
        "50",
    ])
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    // Each server got its 50 requests in each of the 3 rounds.
    assert_eq!(a.seen.total(), 150);
    assert_eq!(b.seen.total(), 150);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["a"]["name"], "first");
    assert_eq!(report["b"]["url"], url_b.as_str());
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    for round in rounds {
        assert_eq!(round["a"]["requests"], 50, "{round}");
        assert_eq!(round["b"]["requests"], 50, "{round}");
    }
    let throughput = &report["figures"]["throughput_rps"];
    for side in ["a", "b", "ratio"] {
        let s = &throughput[side];
        let (min, median, max) = (
            s["min"].as_f64().unwrap(),
            s["median"].as_f64().unwrap(),
            s["max"].as_f64().unwrap(),
        );
        assert!(min > 0.0 && min <= median && median <= max, "{side}: {s}");
    }
    // The ratio is B/A of the same round.
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|r| {
            r["b"]["throughput_rps"].as_f64().unwrap() / r["a"]["throughput_rps"].as_f64().unwrap()
        })
        .collect();
    let median = {
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[1]
    };
    let reported = throughput["ratio"]["median"].as_f64().unwrap();
    assert!((reported - median).abs() < 1e-9, "{reported} vs {ratios:?}");
    assert!(run.stdout.contains("throughput_rps"), "{}", run.stdout);
}
