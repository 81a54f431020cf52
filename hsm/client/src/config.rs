//! `client.toml`: where the cluster's nodes are and how to authenticate to them. Read as a raw
//! [`ClientFile`] (serde, unknown keys refused), then checked into a [`ClientConfig`].

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest timeout or interval accepted in `[client]`: one hour, in milliseconds (so a
/// deadline computed from it never overflows).
const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// The file as written (`cluster init` writes one). Relative paths are relative to the file's
/// directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// The cluster's id (hex); optional. When given, the client refuses nodes whose welcome
    /// names another cluster (an uninitialized node, with no id yet, is accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// PEM file of the cluster CA that signed the nodes' certificates.
    pub ca: PathBuf,
    /// PEM file of this client's certificate (signed by the cluster CA).
    pub cert: PathBuf,
    /// PEM file of this client's certificate key (PKCS#8).
    pub key: PathBuf,
    /// Timeouts and retries.
    #[serde(default)]
    pub client: ClientSection,
    /// The nodes.
    pub nodes: Vec<NodeSection>,
}

/// `[client]`: timeouts and retries (milliseconds, each from 1 to 3 600 000, one hour).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSection {
    /// Deadline of one request on one node before it is re-sent elsewhere (idempotent
    /// requests) or fails.
    pub request_timeout_ms: u64,
    /// Deadline to connect, finish TLS and say hello.
    pub connect_timeout_ms: u64,
    /// How often each node's health is checked.
    pub health_interval_ms: u64,
    /// How many times a `busy` answer is retried (with exponential backoff).
    pub busy_retries: u32,
}

impl Default for ClientSection {
    fn default() -> Self {
        Self {
            request_timeout_ms: 5_000,
            connect_timeout_ms: 3_000,
            health_interval_ms: 1_000,
            busy_retries: 3,
        }
    }
}

/// `[[nodes]]`: one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's id.
    pub id: u32,
    /// `host:port` to connect to.
    pub address: String,
    /// The name in the node's certificate (defaults to the host part of `address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// A checked client configuration: absolute paths, resolved addresses, durations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The cluster's id, if the file names it: nodes of another cluster are refused.
    pub cluster_id: Option<String>,
    /// CA certificate file.
    pub ca: PathBuf,
    /// Client certificate file.
    pub cert: PathBuf,
    /// Client key file.
    pub key: PathBuf,
    /// The nodes.
    pub nodes: Vec<NodeEndpoint>,
    /// Per-request deadline on one node.
    pub request_timeout: Duration,
    /// Connect + TLS + hello deadline.
    pub connect_timeout: Duration,
    /// Health-check period.
    pub health_interval: Duration,
    /// Retries of a `busy` answer.
    pub busy_retries: u32,
}

/// One node to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// The node's id.
    pub id: u32,
    /// Where it listens.
    pub address: SocketAddr,
    /// The name its certificate must carry.
    pub server_name: String,
}

/// Why a client configuration was refused. Every message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
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
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl ClientConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: ClientFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_file(file, base, path)
    }

    /// Checks a parsed file; relative paths are taken from `base`; `origin` names the file in
    /// errors.
    pub fn from_file(file: ClientFile, base: &Path, origin: &Path) -> Result<Self, ConfigError> {
        let invalid = |key: String, reason: &str| ConfigError::Invalid {
            path: origin.to_owned(),
            key,
            reason: reason.to_owned(),
        };
        if file.nodes.is_empty() {
            return Err(invalid("nodes".into(), "at least one node is needed"));
        }
        let mut nodes = Vec::with_capacity(file.nodes.len());
        for (i, node) in file.nodes.iter().enumerate() {
            let key = format!("nodes[{i}].address");
            let address: SocketAddr = resolve(&node.address)
                .ok_or_else(|| invalid(key, "expected host:port that resolves"))?;
            if nodes.iter().any(|n: &NodeEndpoint| n.id == node.id) {
                return Err(invalid(format!("nodes[{i}].id"), "duplicate node id"));
            }
            let server_name = match &node.server_name {
                Some(name) => name.clone(),
                None => host_of(&node.address).to_owned(),
            };
            nodes.push(NodeEndpoint {
                id: node.id,
                address,
                server_name,
            });
        }
        let c = &file.client;
        let duration = |value: u64, key: &str| {
            if value == 0 {
                Err(invalid(format!("client.{key}"), "must be greater than 0"))
            } else if value > MAX_TIMEOUT_MS {
                Err(invalid(
                    format!("client.{key}"),
                    "must be at most 3600000 (one hour)",
                ))
            } else {
                Ok(Duration::from_millis(value))
            }
        };
        Ok(Self {
            cluster_id: file.cluster_id,
            ca: base.join(&file.ca),
            cert: base.join(&file.cert),
            key: base.join(&file.key),
            nodes,
            request_timeout: duration(c.request_timeout_ms, "request_timeout_ms")?,
            connect_timeout: duration(c.connect_timeout_ms, "connect_timeout_ms")?,
            health_interval: duration(c.health_interval_ms, "health_interval_ms")?,
            busy_retries: c.busy_retries,
        })
    }
}

fn resolve(address: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    address.to_socket_addrs().ok()?.next()
}

fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
ca = "ca.pem"
cert = "client.pem"
key = "client-key.pem"

[[nodes]]
id = 1
address = "127.0.0.1:2225"

[[nodes]]
id = 2
address = "127.0.0.1:2226"
server_name = "node2.example"
"#;

    #[test]
    fn sample_parses_and_resolves_paths() {
        let file: ClientFile = toml::from_str(SAMPLE).expect("parses");
        let cfg = ClientConfig::from_file(file, Path::new("/etc/sg"), Path::new("client.toml"))
            .expect("valid");
        assert_eq!(cfg.ca, Path::new("/etc/sg/ca.pem"));
        assert_eq!(cfg.nodes.len(), 2);
        assert_eq!(cfg.nodes[0].server_name, "127.0.0.1");
        assert_eq!(cfg.nodes[1].server_name, "node2.example");
        assert_eq!(cfg.request_timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_and_bad_addresses_are_named() {
        let err = toml::from_str::<ClientFile>(&format!("{SAMPLE}\nbogus = 1\n")).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let file: ClientFile =
            toml::from_str(&SAMPLE.replace("127.0.0.1:2226", "nowhere")).expect("parses");
        let err = ClientConfig::from_file(file, Path::new("."), Path::new("client.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("client.toml: nodes[1].address"), "{err}");
    }
}
