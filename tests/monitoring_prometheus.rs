//! `sealgate serve --dev` scraped by a real Prometheus (the Debian package; the test command
//! installs it): after known traffic, Prometheus's query API returns the proxy's and the three
//! HSM nodes' series with the values the traffic implies. `promtool` accepts the exposition,
//! the shipped scrape configuration and the alert rules.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::run_bounded;

/// A child process killed (by its PID) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free port for Prometheus (which cannot report a port 0 it was given), below the
/// ephemeral range (32768 and up), so that no outgoing connection takes it meanwhile.
fn free_port() -> u16 {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (start..32_000)
        .chain(20_000..start)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 32000")
}

/// The path of `tool`, or a failure saying how to install it (never a silent skip).
fn tool(tool: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} is missing: apt-get install -y prometheus (the README's test command does)"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Starts `serve --dev` in `dir`; returns it, its HTTPS port and its metrics address.
fn serve_dev(dir: &Path) -> (Running, u16, SocketAddr) {
    let (child, output) = support::start_dev(&dir.join("data"), &dir.join("serve.log"));
    let https = support::address_after(&output, "sealgate serve listening on https://");
    let metrics = support::address_after(&output, "sealgate serve metrics on http://");
    (Running(child), https.port(), metrics)
}

/// Every `expr` string in a Grafana dashboard (panel targets and query variables' `query`).
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// `curl -s URL` (bounded), the body.
fn get(url: &str) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", url]);
    let out = run_bounded(cmd, None);
    assert!(out.status.success(), "curl {url}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// One instant query through Prometheus's HTTP API: every series' labels and value.
fn query(prometheus: u16, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-G"])
        .arg(format!("http://127.0.0.1:{prometheus}/api/v1/query"))
        .arg("--data-urlencode")
        .arg(format!("query={promql}"));
    let out = run_bounded(cmd, None);
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    body["data"]["result"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .map(|s| {
                    let value = s["value"][1].as_str().unwrap_or("NaN").parse().unwrap();
                    (s["metric"].clone(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (bounded) until `promql` gives exactly one series whose value is `want`.
fn wait_for_value(prometheus: u16, promql: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = query(prometheus, promql);
        if last.len() == 1 && last[0].1 == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{promql}: wanted {want}, Prometheus has {last:?}");
}

#[test]
fn prometheus_scrapes_the_proxy_and_its_hsm_nodes() {
    let prometheus_bin = tool("prometheus");
    let promtool = tool("promtool");
    let dir = tempfile::tempdir().unwrap();
    let (_serve, port, metrics) = serve_dev(dir.path());
    let cert = dir.path().join("data/dev-cert.pem");

    // /healthz and /readyz answer; an unknown path is 404.
    assert_eq!(get(&format!("http://{metrics}/healthz")), "ok\n");
    assert_eq!(get(&format!("http://{metrics}/readyz")), "ready\n");

    // Traffic: 6 requests on 6 connections (6 full handshakes) reach the demo upstream, and
    // 1 HTTP/2 request with too many headers gets the proxy's own 431.
    const OK: u64 = 6;
    for _ in 0..OK {
        let out = support::proxy::curl(&cert, port, "/", &[]);
        assert_eq!(out.status, 200, "{out:?}");
    }
    let many: Vec<String> = (0..120).map(|i| format!("x-h{i}: v")).collect();
    let mut extra: Vec<&str> = vec!["--http2"];
    for h in &many {
        extra.extend(["-H", h.as_str()]);
    }
    let refused = support::proxy::curl(&cert, port, "/", &extra);
    assert_eq!(refused.status, 431, "{refused:?}");

    // The exposition: every family once, accepted by promtool.
    let exposition = get(&format!("http://{metrics}/metrics"));
    let file = dir.path().join("exposition.txt");
    std::fs::write(&file, &exposition).unwrap();
    let mut check = Command::new(&promtool);
    check.args(["check", "metrics"]);
    let out = run_bounded(check, Some(exposition.as_bytes()));
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for family in [
        "# TYPE sealgate_request_count_total counter",
        "# TYPE sealgate_hsm_unhealthy gauge",
        "# TYPE sealgate_hsm_operation_exec_time_seconds histogram",
        "# TYPE sealgate_handshake_sign_time_seconds histogram",
    ] {
        assert_eq!(
            exposition.matches(family).count(),
            1,
            "{family}\n{exposition}"
        );
    }

    // The shipped configuration and rules.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring/prometheus");
    for (what, file) in [("rules", "alerts.yml"), ("config", "prometheus.yml")] {
        let mut check = Command::new(&promtool);
        check.args(["check", what]).arg(shipped.join(file));
        let out = run_bounded(check, None);
        assert!(
            out.status.success(),
            "promtool check {what} {file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The Grafana dashboard: every query is valid PromQL (as recording rules for promtool, the
    // dashboard's variables replaced) and names only sealgate's metrics.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shipped.join("../dashboards/sealgate.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$cluster_id", ".*")
            .replace("$pool", ".*")
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m");
        rules.push_str(&format!(
            "      - record: dashboard:{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("sealgate_"))
        {
            let known = |n: &str| sealgate_monitoring::names::ALL.iter().any(|m| m.name == n);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| known(base))
                .unwrap_or(name);
            assert!(
                known(family),
                "the dashboard queries {name}, which is not a sealgate metric"
            );
        }
    }
    let rules_file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&rules_file, rules).unwrap();
    let mut check = Command::new(&promtool);
    check.args(["check", "rules"]).arg(&rules_file);
    let out = run_bounded(check, None);
    assert!(
        out.status.success(),
        "the dashboard's queries: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scraping serve every 500 ms.
    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 500ms\nscrape_configs:\n  - job_name: sealgate\n    \
             static_configs:\n      - targets: [\"{metrics}\"]\n"
        ),
    )
    .unwrap();
    let _prometheus = Running(
        Command::new(&prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    let ok = OK as f64;
    wait_for_value(prom_port, "up{job=\"sealgate\"}", 1.0);
    wait_for_value(prom_port, "sealgate_request_count_total", ok + 1.0);
    wait_for_value(
        prom_port,
        "sealgate_tls_handshakes_total{kind=\"full\"}",
        ok + 1.0,
    );
    wait_for_value(
        prom_port,
        "sealgate_http_code_target_2xx_count_total{pool=\"demo\"}",
        ok,
    );
    wait_for_value(prom_port, "sealgate_http_code_elb_4xx_count_total", 1.0);
    wait_for_value(prom_port, "sealgate_new_connection_count_total", ok + 1.0);
    wait_for_value(prom_port, "sealgate_healthy_hosts{pool=\"demo\"}", 1.0);
    wait_for_value(
        prom_port,
        "sealgate_handshake_sign_time_seconds_count",
        ok + 1.0,
    );
    // The three nodes, each with its own series; all healthy, the same keys and users.
    wait_for_value(prom_port, "count(sealgate_hsm_unhealthy == 0)", 3.0);
    wait_for_value(prom_port, "sum(sealgate_hsm_raft_leader)", 1.0);
    let keys = query(prom_port, "sealgate_hsm_keys_token_occupied");
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys.iter().all(|(_, v)| *v == keys[0].1 && *v >= 2.0),
        "the dev key pair on every node: {keys:?}"
    );
    let ids: std::collections::BTreeSet<String> = keys
        .iter()
        .map(|(m, _)| m["hsm_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{keys:?}");
    assert!(
        keys.iter()
            .all(|(m, _)| m["cluster_id"] == keys[0].0["cluster_id"])
    );
    // One signature per full handshake, made by the nodes, plus the dev certificate's.
    wait_for_value(prom_port, "sum(sealgate_hsm_signatures_total)", ok + 2.0);
    wait_for_value(
        prom_port,
        "sum(sealgate_hsm_operation_total_time_seconds_count{operation=\"sign\"})",
        ok + 2.0,
    );
}

#[test]
fn serve_writes_cloudwatch_emf_lines_that_count_the_traffic() {
    let site = support::proxy::Site::new(1);
    let upstream = support::proxy::Upstream::echo("up");
    site.write_config(&support::proxy::Site::one_pool_proxy(
        "up",
        upstream.addr,
        "\n[monitoring.emf]\npath = \"metrics.emf.jsonl\"\nnamespace = \"sealgate-test\"\n\
         flush_interval_ms = 300\n",
    ));
    let mut serve = site.serve();
    const REQUESTS: u64 = 5;
    for _ in 0..REQUESTS {
        let out = support::proxy::curl(&site.cert, serve.port(), "/", &[]);
        assert_eq!(out.status, 200, "{out:?}");
    }
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(serve.terminate().code(), Some(0), "{}", serve.log_text());

    let text = std::fs::read_to_string(site.dir.join("metrics.emf.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 2, "{text}");
    let (mut requests, mut upstream_2xx) = (0.0, 0.0);
    for line in &lines {
        sealgate_monitoring::emf::validate_emf_line(line)
            .unwrap_or_else(|e| panic!("not valid EMF ({e}): {line}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "sealgate-test");
        requests += v["RequestCount"].as_f64().unwrap_or(0.0);
        if v["TargetGroup"] == "up" {
            upstream_2xx += v["HTTPCode_Target_2XX_Count"].as_f64().unwrap_or(0.0);
            assert_eq!(
                directive["Dimensions"],
                serde_json::json!([["TargetGroup"]])
            );
        }
    }
    // Counters are per period: their values over every line add up to the traffic.
    assert_eq!(requests, REQUESTS as f64, "{text}");
    assert_eq!(upstream_2xx, REQUESTS as f64, "{text}");
}

#[test]
fn a_node_writes_cloudwatch_emf_lines_of_its_own() {
    let mut cluster = support::Cluster::init(1);
    let path = cluster.node_config(1);
    let mut file: sealgate_hsm_node::NodeFile =
        toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    file.monitoring.emf = Some(sealgate_monitoring::emf::RawEmf {
        path: "node-emf.jsonl".into(),
        namespace: "sealgate-node".into(),
        flush_interval_ms: 200,
    });
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    cluster.start(1);
    cluster.activate();
    cluster.create_user("cu1", "cu", support::CU1_PASSWORD);
    let cu1 = Some(("cu1", support::CU1_PASSWORD));
    let (_, private) = cluster.ec_pair(cu1, "emf");
    const SIGNS: u64 = 3;
    for _ in 0..SIGNS {
        let signed = cluster.sign_x(cu1, &private);
        assert_eq!(signed["ok"], true, "{signed}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(cluster.stop(1).success());

    let text = std::fs::read_to_string(cluster.dir.join("node-emf.jsonl")).unwrap();
    let (mut signatures, mut unhealthy_lines) = (0.0, 0);
    for line in text.lines() {
        sealgate_monitoring::emf::validate_emf_line(line)
            .unwrap_or_else(|e| panic!("not valid EMF ({e}): {line}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "sealgate-node");
        if v.get("HsmUnhealthy").is_some() {
            unhealthy_lines += 1;
            assert_eq!(v["HsmUnhealthy"], 0.0, "{line}");
            assert_eq!(v["HsmId"], "1", "{line}");
            assert_eq!(v["ClusterId"].as_str().unwrap().len(), 32, "{line}");
            assert_eq!(
                directive["Dimensions"],
                serde_json::json!([["ClusterId", "HsmId"]]),
                "{line}"
            );
        }
        signatures += v["HsmSignatures"].as_f64().unwrap_or(0.0);
    }
    assert!(unhealthy_lines > 1, "{text}");
    assert_eq!(signatures, SIGNS as f64, "{text}");

    // A bad namespace is refused with the file and the key; the node does not start.
    let mut bad: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    bad["monitoring"]["emf"]["namespace"] = "AWS/CloudHSM".into();
    std::fs::write(&path, toml::to_string(&bad).unwrap()).unwrap();
    let mut cmd = Command::new(support::sealgate_bin());
    cmd.args(["node", "--config"]).arg(&path);
    let out = run_bounded(cmd, None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("node-1.toml") && stderr.contains("monitoring.emf.namespace"),
        "{stderr}"
    );
}
