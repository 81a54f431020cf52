//! sealgate's configuration for `sealgate serve`: built-in defaults, then a TOML file, then
//! environment variables `SEALGATE_SECTION__KEY` (figment), read into raw sections that refuse
//! unknown keys, then checked into typed settings ([`Config`]). Every error names the file (or
//! the environment) and the key.
//!
//! What this crate does not do: it starts nothing, opens no socket and reads no certificate
//! or key: it checks the shape and the values; `sealgate serve` loads what they name.
//!
//! ```toml
//! [[proxy.listeners]]
//! bind = "127.0.0.1:8443"
//! [[proxy.listeners.certificates]]
//! chain = "site.pem"                 # the certificate chain, leaf first
//! key = { label = "site-ecdsa" }     # the private key: a key in the HSM, by label or handle
//!
//! [[proxy.routes]]
//! host = "example.com"               # optional; any host when absent
//! path_prefix = "/"
//! pool = "web"
//!
//! [[proxy.pools]]
//! name = "web"
//! servers = ["127.0.0.1:8080"]
//!
//! [hsm]
//! mode = "remote"
//! client_config = "cluster/client.toml"
//! user = "proxy"
//! password_file = "proxy-password"
//! ```
#![forbid(unsafe_code)]

mod check;
mod raw;

pub use check::{
    Balancing, CertificateConfig, Config, EmfConfig, HealthCheck, HsmConfig, HsmMode, KeyRef,
    ListenerConfig, LogFormat, LoggingConfig, MAX_NAMESPACE_CHARS, MonitoringConfig,
    NamespaceError, PoolConfig, ProxyLimits, Rotation, RouteConfig, UpstreamProtocol, check_emf,
    check_namespace,
};
pub use raw::{RawConfig, RawEmf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use std::path::{Path, PathBuf};

/// Prefix of the environment variables that override the file (`SEALGATE_HSM__USER=proxy`).
pub const ENV_PREFIX: &str = "SEALGATE_";

/// Why a configuration was refused. Every message names where the value came from (the file,
/// or the environment) and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is missing or unreadable.
    #[error("{file}: {reason}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// A value does not parse, has the wrong type, or the key is unknown.
    #[error("{origin}: {key}: {message}")]
    Parse {
        /// The file or "environment".
        origin: String,
        /// The key (`proxy.listeners.0.bind`), or empty for the whole file.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value parses but is not acceptable.
    #[error("{file}: {key}: {reason}")]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Reads `file` over the defaults, applies the `SEALGATE_…__…` environment `env` (name,
/// value pairs; pass `std::env::vars()`), and checks the result. Relative paths in the file
/// are taken from the file's directory.
pub fn load(
    file: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    std::fs::File::open(file).map_err(|e| ConfigError::Read {
        file: file.to_owned(),
        reason: e.to_string(),
    })?;
    let raw = parse(file, env)?;
    let base = file.parent().unwrap_or(Path::new("."));
    check::check(raw, base, file)
}

/// Merges the defaults, `file` and the environment into raw sections.
pub fn parse(
    file: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<RawConfig, ConfigError> {
    // Only nested names (SEALGATE_HSM__USER) are configuration: SEALGATE_CLUSTER, SEALGATE_USER
    // and SEALGATE_PASSWORD belong to the management commands.
    let vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
        .collect();
    let file_name = file.display().to_string();
    let figment =
        Figment::from(Serialized::defaults(RawConfig::default())).merge(Toml::file_exact(file));
    let figment = vars.iter().fold(figment, |f, (k, v)| {
        let key = k
            .trim_start_matches(ENV_PREFIX)
            .replace("__", ".")
            .to_lowercase();
        f.merge(Serialized::default(&key, env_value(v)))
    });
    figment.extract::<RawConfig>().map_err(|e| {
        let from_file = e
            .metadata
            .as_ref()
            .is_some_and(|m| matches!(m.source, Some(figment::Source::File(_))));
        ConfigError::Parse {
            origin: if from_file {
                file_name.clone()
            } else {
                "environment".to_owned()
            },
            key: e.path.join("."),
            message: e.kind.to_string(),
        }
    })
}

/// An environment value as TOML would read it: a number, a boolean or a string.
fn env_value(value: &str) -> figment::value::Value {
    use figment::value::Value;
    if let Ok(n) = value.parse::<u64>() {
        return Value::from(n);
    }
    match value {
        "true" => Value::from(true),
        "false" => Value::from(false),
        _ => Value::from(value.to_owned()),
    }
}
