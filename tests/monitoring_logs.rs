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
