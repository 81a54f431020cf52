//! The configuration as written: serde sections that refuse unknown keys, with their defaults.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// `[proxy]`.
    pub proxy: RawProxy,
    /// `[hsm]`.
    pub hsm: RawHsm,
    /// `[logging]`.
    pub logging: RawLogging,
    /// `[monitoring]`.
    pub monitoring: RawMonitoring,
}

/// `[proxy]`: listeners, routes, upstream pools and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawProxy {
    /// `[[proxy.listeners]]`.
    pub listeners: Vec<RawListener>,
    /// `[[proxy.routes]]`, first match wins.
    pub routes: Vec<RawRoute>,
    /// `[[proxy.pools]]`.
    pub pools: Vec<RawPool>,
    /// Longest wait for a client's request headers (slowloris), ms.
    pub request_header_timeout_ms: u64,
    /// A client connection with no request for this long is closed, ms.
    pub idle_timeout_ms: u64,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Most TLS handshakes being signed at once (each holds a thread while the HSM signs).
    pub max_handshakes_in_flight: usize,
    /// Longest a TLS handshake may take, ms.
    pub handshake_timeout_ms: u64,
    /// How long SIGTERM waits for requests in flight, ms.
    pub shutdown_grace_ms: u64,
}

impl Default for RawProxy {
    fn default() -> Self {
        Self {
            listeners: Vec::new(),
            routes: Vec::new(),
            pools: Vec::new(),
            request_header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_header_bytes: 64 << 10,
            max_headers: 100,
            max_handshakes_in_flight: 256,
            handshake_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

/// `[[proxy.listeners]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `ip:port`.
    pub bind: String,
    /// `[[proxy.listeners.certificates]]`: chosen by SNI, and by the client's signature
    /// algorithms when several match (an RSA and an ECDSA certificate for one name).
    pub certificates: Vec<RawCertificate>,
}

/// One certificate and its HSM key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM file: the certificate chain, leaf first.
    pub chain: PathBuf,
    /// The private key: an HSM key, `{ label = "…" }` or `{ handle = N }`.
    pub key: RawKeyRef,
}

/// A reference to a key in the HSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyRef {
    /// The key's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The key's handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
}

/// `[[proxy.routes]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The request's host (without port); any host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The path prefix, `/` by default.
    #[serde(default = "slash")]
    pub path_prefix: String,
    /// The pool that serves it.
    pub pool: String,
}

fn slash() -> String {
    "/".to_owned()
}

/// `[[proxy.pools]]`: upstream servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// The pool's name, used by routes.
    pub name: String,
    /// `host:port` of each server (plain HTTP).
    pub servers: Vec<String>,
    /// `round-robin` or `least-requests`.
    #[serde(default = "round_robin")]
    pub balancing: String,
    /// How the proxy talks to the servers: `http1` (HTTP/1.1 keep-alive) or `h2c` (HTTP/2
    /// without TLS, prior knowledge).
    #[serde(default = "http1")]
    pub protocol: String,
    /// Longest wait for a TCP connection to a server, ms.
    #[serde(default = "connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Longest wait for a server's response headers, ms.
    #[serde(default = "response_timeout")]
    pub response_timeout_ms: u64,
    /// Active health checks (`GET path`); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<RawHealthCheck>,
}

fn round_robin() -> String {
    "round-robin".to_owned()
}

fn http1() -> String {
    "http1".to_owned()
}

fn connect_timeout() -> u64 {
    3_000
}

fn response_timeout() -> u64 {
    60_000
}

/// `[proxy.pools.health_check]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// The path to `GET`; a 2xx or 3xx answer is healthy.
    #[serde(default = "slash")]
    pub path: String,
    /// Between checks, ms.
    #[serde(default = "health_interval")]
    pub interval_ms: u64,
    /// Longest wait for an answer, ms.
    #[serde(default = "health_timeout")]
    pub timeout_ms: u64,
}

fn health_interval() -> u64 {
    5_000
}

fn health_timeout() -> u64 {
    2_000
}

/// `[hsm]`: where the keys are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawHsm {
    /// `remote` (a running cluster, from `client_config`) or `embedded` (the serve process
    /// runs the nodes of the cluster in `data_dir` as child processes).
    pub mode: String,
    /// remote: the cluster's client.toml.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_config: Option<PathBuf>,
    /// embedded: the directory of the cluster (`cluster init` layout).
    pub data_dir: PathBuf,
    /// The crypto user that owns the keys.
    pub user: String,
    /// A file holding its password (mode 0600); or set SEALGATE_HSM__PASSWORD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The password itself: from the environment only (SEALGATE_HSM__PASSWORD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl Default for RawHsm {
    fn default() -> Self {
        Self {
            mode: "remote".to_owned(),
            client_config: None,
            data_dir: PathBuf::from("sealgate-data"),
            user: String::new(),
            password_file: None,
            password: None,
        }
    }
}

/// `[monitoring]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawMonitoring {
    /// `ip:port` of the metrics endpoint (`/metrics`, `/healthz`, `/readyz`); none when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_bind: Option<String>,
    /// `[monitoring.emf]`: CloudWatch Embedded Metric Format lines to a file; none when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emf: Option<RawEmf>,
}

/// `[monitoring.emf]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmf {
    /// The file the JSON lines are appended to.
    pub path: PathBuf,
    /// The CloudWatch namespace.
    #[serde(default = "default_emf_namespace")]
    pub namespace: String,
    /// How often, in milliseconds (CloudWatch's standard resolution: 60 000).
    #[serde(default = "default_emf_flush_interval_ms")]
    pub flush_interval_ms: u64,
}

fn default_emf_namespace() -> String {
    "sealgate".to_owned()
}

fn default_emf_flush_interval_ms() -> u64 {
    60_000
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLogging {
    /// A tracing filter: `info`, `warn,sealgate_proxy=debug`, …
    pub level: String,
    /// `pretty` or `json`.
    pub format: String,
    /// A file to write the log to instead of standard error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// With `file`: `daily`, `hourly` or `never` (a new file, suffixed with the date, each
    /// period).
    pub rotation: String,
    /// One line per request (target `sealgate::access`, level info).
    pub access_log: bool,
}

impl Default for RawLogging {
    fn default() -> Self {
        Self {
            level: "info,openraft=error".to_owned(),
            format: "pretty".to_owned(),
            file: None,
            rotation: "daily".to_owned(),
            access_log: false,
        }
    }
}
