//! `sealgate serve` logging as `[logging]` says: JSON lines to a file, with one access line per
//! request (client, host, method, path, status, bytes, upstream and total durations, TLS
//! version, whether the handshake was signed by the HSM or resumed).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::proxy::{Site, Upstream, curl};

#[test]
fn serve_writes_json_logs_with_one_access_line_per_request() {
    let site = Site::new(1);
    let upstream = Upstream::echo("up");
    site.write_config(&Site::one_pool_proxy(
        "up",
        upstream.addr,
        "\n[logging]\nformat = \"json\"\nfile = \"logs/serve.log\"\nrotation = \"never\"\n\
         access_log = true\n",
    ));
    let mut serve = site.serve();
    const REQUESTS: usize = 3;
    for i in 0..REQUESTS {
        let out = curl(&site.cert, serve.port(), &format!("/page/{i}?q=1"), &[]);
        assert_eq!(out.status, 200, "{out:?}");
    }
    assert_eq!(serve.terminate().code(), Some(0));

    let text = std::fs::read_to_string(site.dir.join("logs/serve.log")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string()),
        "{text}"
    );
    let access: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "sealgate::access")
        .collect();
    assert_eq!(access.len(), REQUESTS, "{text}");
    for (i, a) in access.iter().enumerate() {
        assert_eq!(a["method"], "GET", "{a}");
        assert_eq!(a["path"], format!("/page/{i}"), "{a}");
        assert_eq!(a["host"], "localhost", "{a}");
        assert_eq!(a["status"], 200, "{a}");
        assert!(
            a["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{a}"
        );
        assert!(a["bytes"].as_u64().unwrap() > 0, "{a}");
        let upstream_ms = a["upstream_ms"].as_f64().unwrap();
        assert!(a["total_ms"].as_f64().unwrap() >= upstream_ms, "{a}");
        assert_eq!(a["tls"], "TLSv1.3", "{a}");
        assert_eq!(a["handshake"], "full", "{a}");
    }
}

#[test]
fn a_node_logs_json_to_the_file_its_configuration_names() {
    let mut cluster = support::Cluster::init(1);
    let path = cluster.node_config(1);
    let mut file: sealgate_hsm_node::NodeFile =
        toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    file.logging = sealgate_hsm_node::LoggingSection {
        format: Some("json".into()),
        file: Some("logs/node-1.log".into()),
        rotation: Some("never".into()),
        ..Default::default()
    };
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    cluster.start(1);
    cluster.stop(1);

    let log = cluster.dir.join("logs/node-1.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "node listening"),
        "{text}"
    );
    assert!(lines.iter().any(|l| l["message"] == "stopped"), "{text}");
    // Nothing of it went to standard error.
    let stderr = std::fs::read_to_string(cluster.node_log(1)).unwrap_or_default();
    assert!(!stderr.contains("node listening"), "{stderr}");
}

#[test]
fn a_bad_logging_section_is_refused_with_the_file_and_key() {
    let cluster = support::Cluster::init(1);
    let path = cluster.node_config(1);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n[logging]\nformat = \"xml\"\n")).unwrap();
    let mut cmd = std::process::Command::new(support::sealgate_bin());
    cmd.args(["node", "--config"]).arg(&path);
    let out = support::run_bounded(cmd, None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("node-1.toml") && stderr.contains("logging.format"),
        "{stderr}"
    );
}
