//! `node.toml`: one node's identity, listener, TLS files, data directory and limits. Read as a
//! raw [`NodeFile`] (serde, unknown keys refused), then checked into a [`NodeConfig`].

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The file as written (`cluster init` writes one per node). Relative paths are relative to the
/// file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// `[node]`.
    pub node: NodeSection,
    /// `[tls]`.
    pub tls: TlsSection,
    /// `[limits]`.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[cluster]`: the nodes of the raft group.
    #[serde(default, skip_serializing_if = "ClusterSection::is_empty")]
    pub cluster: ClusterSection,
    /// `[monitoring]`.
    #[serde(default, skip_serializing_if = "MonitoringSection::is_empty")]
    pub monitoring: MonitoringSection,
    /// `[logging]`.
    #[serde(default, skip_serializing_if = "LoggingSection::is_empty")]
    pub logging: LoggingSection,
}

/// `[logging]`: the node's log (standard error with `SEALGATE_LOG`'s filter when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingSection {
    /// A tracing filter (default `info,openraft=error`; `SEALGATE_LOG` overrides it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// `pretty` (default) or `json` (one object per line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A file instead of standard error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// With `file`: `daily` (default), `hourly` or `never`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<String>,
}

impl LoggingSection {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The node's log, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLogging {
    /// The tracing filter.
    pub level: String,
    /// One JSON object per line rather than readable lines.
    pub json: bool,
    /// The log file, if not standard error.
    pub file: Option<PathBuf>,
    /// `daily`, `hourly` or `never`.
    pub rotation: String,
}

/// `[monitoring]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringSection {
    /// `ip:port` of the node's metrics endpoint (`/metrics`, `/healthz`, `/readyz`); none
    /// when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_bind: Option<String>,
    /// `[monitoring.emf]`: the node's metrics as CloudWatch Embedded Metric Format lines
    /// appended to `path` (as in `serve`'s configuration); none when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emf: Option<sealgate_monitoring::emf::RawEmf>,
}

impl MonitoringSection {
    fn is_empty(&self) -> bool {
        self.metrics_bind.is_none() && self.emf.is_none()
    }
}

/// `[cluster]`: every node of the cluster (this one included), for replication. Empty: this
/// node is a cluster of one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// A node added to a running cluster (`sealgate cluster add-node` sets it): it never
    /// starts a raft group and never creates a master key; on its first start it fetches the
    /// cluster's domain key from a member over mutual TLS, then receives the cluster's state.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
    /// `[[cluster.members]]`.
    pub members: Vec<MemberSection>,
}

impl ClusterSection {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && !self.join
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    /// The node's id.
    pub id: u32,
    /// `host:port` where the other nodes reach it (its certificate names the host).
    pub address: String,
}

/// `[node]`: identity, address and data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's id in its cluster (1–28).
    pub id: u32,
    /// `ip:port` to listen on (port 0 picks a free port; the node prints the one it got).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory of the store (`store.redb`) and the master key file (`master.key`).
    pub data_dir: PathBuf,
}

fn default_listen() -> String {
    format!("127.0.0.1:{}", sealgate_hsm_proto::DEFAULT_PORT)
}

/// `[tls]`: mutual TLS with the cluster CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM of the cluster CA; clients must present a certificate it signed.
    pub ca: PathBuf,
    /// PEM of this node's certificate chain.
    pub cert: PathBuf,
    /// PEM of this node's certificate key (PKCS#8).
    pub key: PathBuf,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Most client connections at once; more are refused at accept.
    pub max_connections: usize,
    /// Largest request frame in bytes (responses may be up to 16 MiB).
    pub max_frame_len: usize,
    /// Most requests in flight on one connection.
    pub max_in_flight: usize,
    /// Most requests queued for the crypto pool on the node before it answers `busy`.
    pub max_queued: usize,
    /// Threads of the crypto pool (0: one per core).
    pub crypto_threads: usize,
    /// Most open sessions (one per connection).
    pub max_sessions: usize,
    /// Seconds a client has to finish TLS and say hello.
    pub handshake_timeout_secs: u64,
    /// Seconds a draining node waits for requests in flight on SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Seconds a client may leave answers unread (a write that cannot proceed) before the node
    /// closes its connection.
    pub write_timeout_secs: u64,
    /// Seconds a quorum token lives (1 to 86400; CloudHSM's default, 600).
    pub quorum_token_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_frame_len: sealgate_hsm_proto::MAX_FRAME_LEN,
            max_in_flight: sealgate_hsm_proto::MAX_IN_FLIGHT,
            max_queued: 4_096,
            crypto_threads: 0,
            max_sessions: 10_000,
            handshake_timeout_secs: 5,
            shutdown_grace_secs: 10,
            write_timeout_secs: 30,
            quorum_token_secs: 600,
        }
    }
}

/// A checked node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's id.
    pub id: u32,
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// CA file.
    pub ca: PathBuf,
    /// Certificate file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
    /// Limits, with `crypto_threads` resolved to a count.
    pub limits: LimitsSection,
    /// The nodes of the cluster (id, `host:port`), this one included; empty for a cluster of
    /// one.
    pub members: Vec<(u32, String)>,
    /// `[cluster] join`: the node joins a running cluster (see [`ClusterSection::join`]).
    pub join: bool,
    /// `[monitoring] metrics_bind`: where the metrics endpoint listens, if anywhere.
    pub metrics_bind: Option<SocketAddr>,
    /// `[monitoring.emf]`: EMF lines of the node's metrics, if wanted.
    pub emf: Option<sealgate_monitoring::emf::EmfConfig>,
    /// `[logging]`.
    pub logging: NodeLogging,
}

/// Why a node configuration was refused. Every message names the file and, where it applies,
/// the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is wrong.
    #[error("{path}: {key}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Largest `limits.max_in_flight` accepted.
const MAX_IN_FLIGHT_LIMIT: usize = 1 << 16;

/// Largest cluster (CloudHSM's limit).
pub const MAX_NODES: u32 = 28;

/// Largest node id. Ids of removed nodes are never reused (their certificates stay valid),
/// so ids go beyond the cluster's size.
pub const MAX_NODE_ID: u32 = 65_535;

impl NodeConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, NodeConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodeConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: NodeFile = toml::from_str(&text).map_err(|e| NodeConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_file(file, base, path)
    }

    /// Checks a parsed file; relative paths are taken from `base`.
    pub fn from_file(file: NodeFile, base: &Path, origin: &Path) -> Result<Self, NodeConfigError> {
        let invalid = |key: &'static str, reason: &str| NodeConfigError::Invalid {
            path: origin.to_owned(),
            key,
            reason: reason.to_owned(),
        };
        if file.node.id == 0 || file.node.id > MAX_NODE_ID {
            return Err(invalid("node.id", "must be between 1 and 65535"));
        }
        let listen: SocketAddr = file
            .node
            .listen
            .parse()
            .map_err(|_| invalid("node.listen", "expected ip:port, e.g. 127.0.0.1:2225"))?;
        let mut limits = file.limits;
        for (value, key) in [
            (limits.max_connections, "limits.max_connections"),
            (limits.max_in_flight, "limits.max_in_flight"),
            (limits.max_queued, "limits.max_queued"),
            (limits.max_sessions, "limits.max_sessions"),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if !(1024..=sealgate_hsm_proto::MAX_RESPONSE_LEN).contains(&limits.max_frame_len) {
            return Err(invalid(
                "limits.max_frame_len",
                "must be between 1024 and 16777216 bytes",
            ));
        }
        if limits.max_in_flight > MAX_IN_FLIGHT_LIMIT {
            return Err(invalid("limits.max_in_flight", "must be at most 65536"));
        }
        if limits.write_timeout_secs == 0 {
            return Err(invalid(
                "limits.write_timeout_secs",
                "must be greater than 0",
            ));
        }
        if !(1..=86_400).contains(&limits.quorum_token_secs) {
            return Err(invalid(
                "limits.quorum_token_secs",
                "must be between 1 and 86400",
            ));
        }
        if limits.handshake_timeout_secs == 0 {
            return Err(invalid(
                "limits.handshake_timeout_secs",
                "must be greater than 0",
            ));
        }
        let mut members: Vec<(u32, String)> = Vec::new();
        for m in &file.cluster.members {
            if m.id == 0 || m.id > MAX_NODE_ID {
                return Err(invalid("cluster.members.id", "must be between 1 and 65535"));
            }
            if members.iter().any(|(id, _)| *id == m.id) {
                return Err(invalid("cluster.members.id", "duplicate node id"));
            }
            if !m.address.contains(':') {
                return Err(invalid("cluster.members.address", "expected host:port"));
            }
            members.push((m.id, m.address.clone()));
        }
        if !members.is_empty() && !members.iter().any(|(id, _)| *id == file.node.id) {
            return Err(invalid(
                "cluster.members",
                "must include this node (node.id)",
            ));
        }
        if members.len() > MAX_NODES as usize {
            return Err(invalid("cluster.members", "a cluster has at most 28 nodes"));
        }
        if file.cluster.join && members.len() < 2 {
            return Err(invalid(
                "cluster.join",
                "a joining node needs the members it joins (cluster.members)",
            ));
        }
        if limits.crypto_threads == 0 {
            limits.crypto_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        let metrics_bind = match &file.monitoring.metrics_bind {
            None => None,
            Some(bind) => Some(bind.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "monitoring.metrics_bind",
                    "expected ip:port, e.g. 127.0.0.1:9464",
                )
            })?),
        };
        let emf = match &file.monitoring.emf {
            None => None,
            Some(e) => Some(
                sealgate_monitoring::emf::check_emf(e, base)
                    .map_err(|(key, why)| invalid(key, &why))?,
            ),
        };
        let l = &file.logging;
        let json = match l.format.as_deref().unwrap_or("pretty") {
            "pretty" => false,
            "json" => true,
            _ => return Err(invalid("logging.format", "must be \"pretty\" or \"json\"")),
        };
        let rotation = l.rotation.clone().unwrap_or_else(|| "daily".to_owned());
        if !["daily", "hourly", "never"].contains(&rotation.as_str()) {
            return Err(invalid(
                "logging.rotation",
                "must be \"daily\", \"hourly\" or \"never\"",
            ));
        }
        let logging = NodeLogging {
            level: l
                .level
                .clone()
                .unwrap_or_else(|| "info,openraft=error".to_owned()),
            json,
            file: l.file.as_ref().map(|f| base.join(f)),
            rotation,
        };
        Ok(Self {
            id: file.node.id,
            listen,
            data_dir: base.join(&file.node.data_dir),
            ca: base.join(&file.tls.ca),
            cert: base.join(&file.tls.cert),
            key: base.join(&file.tls.key),
            limits,
            members,
            join: file.cluster.join,
            metrics_bind,
            emf,
            logging,
        })
    }

    /// The store file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store.redb")
    }

    /// The master key file.
    pub fn master_key_path(&self) -> PathBuf {
        self.data_dir.join("master.key")
    }

    /// The node's audit log (`audit.jsonl` in the data directory).
    pub fn audit_path(&self) -> PathBuf {
        self.data_dir.join(crate::audit::AUDIT_FILE)
    }

    /// The node's management events (`management-events.jsonl` in the data directory).
    pub fn events_path(&self) -> PathBuf {
        self.data_dir.join(crate::audit::EVENTS_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[node]
id = 2
listen = "127.0.0.1:2226"
data_dir = "node-2"

[tls]
ca = "ca.pem"
cert = "node-2/node.pem"
key = "node-2/node-key.pem"
"#;

    #[test]
    fn sample_parses_with_default_limits() {
        let file: NodeFile = toml::from_str(SAMPLE).expect("parses");
        let cfg =
            NodeConfig::from_file(file, Path::new("/c"), Path::new("node.toml")).expect("valid");
        assert_eq!(cfg.id, 2);
        assert_eq!(cfg.store_path(), Path::new("/c/node-2/store.redb"));
        assert!(cfg.limits.crypto_threads >= 1);
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let err = toml::from_str::<NodeFile>(&SAMPLE.replace("[tls]", "[tls]\nfoo = 1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("foo"), "{err}");
        let file: NodeFile =
            toml::from_str(&SAMPLE.replace("id = 2", "id = 70000")).expect("parses");
        let err = NodeConfig::from_file(file, Path::new("."), Path::new("n.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "n.toml: node.id: must be between 1 and 65535");
    }
}
