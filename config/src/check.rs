//! The checked configuration: every value parsed and in range, every reference resolved.

use crate::ConfigError;
use crate::raw::{RawCertificate, RawConfig, RawEmf, RawHealthCheck, RawPool};
use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// `[proxy]`.
    pub proxy: ProxyLimits,
    /// `[[proxy.listeners]]`.
    pub listeners: Vec<ListenerConfig>,
    /// `[[proxy.routes]]`, in order (first match wins).
    pub routes: Vec<RouteConfig>,
    /// `[[proxy.pools]]`.
    pub pools: Vec<PoolConfig>,
    /// `[hsm]`.
    pub hsm: HsmConfig,
    /// `[logging]`.
    pub logging: LoggingConfig,
    /// `[monitoring]`.
    pub monitoring: MonitoringConfig,
}

/// The proxy's timeouts and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Longest wait for a client's request headers.
    pub request_header_timeout: Duration,
    /// Idle client connections are closed after this.
    pub idle_timeout: Duration,
    /// Largest request head, bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Most handshakes being signed at once.
    pub max_handshakes_in_flight: usize,
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// How long SIGTERM waits for requests in flight.
    pub shutdown_grace: Duration,
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Where it listens.
    pub bind: SocketAddr,
    /// Its certificates.
    pub certificates: Vec<CertificateConfig>,
}

/// A certificate chain and its HSM key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// The PEM chain file, leaf first.
    pub chain: PathBuf,
    /// The key in the HSM.
    pub key: KeyRef,
}

/// A key in the HSM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// By label.
    Label(String),
    /// By handle.
    Handle(u64),
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Label(l) => write!(f, "label {l:?}"),
            Self::Handle(h) => write!(f, "handle {h}"),
        }
    }
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// The host (lowercase, no port); any when `None`.
    pub host: Option<String>,
    /// The path prefix (starts with `/`).
    pub path_prefix: String,
    /// Index into [`Config::pools`].
    pub pool: usize,
}

/// How a pool picks a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancing {
    /// In turn.
    RoundRobin,
    /// The one with the fewest requests in flight.
    LeastRequests,
}

/// How the proxy talks to a pool's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, keep-alive.
    Http1,
    /// HTTP/2 over plain TCP (prior knowledge).
    H2c,
}

/// An upstream pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Its name.
    pub name: String,
    /// Its servers, `host:port`.
    pub servers: Vec<String>,
    /// How a server is chosen.
    pub balancing: Balancing,
    /// HTTP/1.1 or HTTP/2 to the servers.
    pub protocol: UpstreamProtocol,
    /// Longest wait for a connection to a server.
    pub connect_timeout: Duration,
    /// Longest wait for response headers.
    pub response_timeout: Duration,
    /// Active health checks.
    pub health_check: Option<HealthCheck>,
}

/// Active health checks of a pool's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path to `GET`.
    pub path: String,
    /// Between checks.
    pub interval: Duration,
    /// Longest wait for an answer.
    pub timeout: Duration,
}

/// Where the HSM is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HsmMode {
    /// A running cluster, reached through this client.toml.
    Remote {
        /// The cluster's client.toml.
        client_config: PathBuf,
    },
    /// The serve process runs the cluster's nodes (in this directory) as children.
    Embedded {
        /// The cluster's directory.
        data_dir: PathBuf,
    },
}

/// `[hsm]`.
#[derive(Clone)]
pub struct HsmConfig {
    /// Remote or embedded.
    pub mode: HsmMode,
    /// The crypto user.
    pub user: String,
    /// Its password file, if the password is not in the environment.
    pub password_file: Option<PathBuf>,
    /// Its password, from SEALGATE_HSM__PASSWORD. Never printed.
    pub password: Option<Zeroizing<String>>,
}

impl fmt::Debug for HsmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmConfig")
            .field("mode", &self.mode)
            .field("user", &self.user)
            .field("password_file", &self.password_file)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl PartialEq for HsmConfig {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode
            && self.user == other.user
            && self.password_file == other.password_file
            && self.password.as_deref() == other.password.as_deref()
    }
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[monitoring]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonitoringConfig {
    /// Where the metrics endpoint listens (`/metrics`, `/healthz`, `/readyz`), if anywhere.
    pub metrics_bind: Option<SocketAddr>,
    /// CloudWatch Embedded Metric Format output, if any.
    pub emf: Option<EmfConfig>,
}

/// `[monitoring.emf]`: the metrics as CloudWatch EMF JSON lines, appended to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmfConfig {
    /// The file.
    pub path: PathBuf,
    /// The CloudWatch namespace.
    pub namespace: String,
    /// How often the lines are written.
    pub flush_interval: Duration,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    /// The tracing filter.
    pub level: String,
    /// The format.
    pub format: LogFormat,
    /// The log file (standard error when none), and how it rotates.
    pub file: Option<(PathBuf, Rotation)>,
    /// Whether every request is logged (target `sealgate::access`).
    pub access_log: bool,
}

/// When a log file is replaced by a new one (named with the date and, hourly, the hour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// One file per day.
    Daily,
    /// One file per hour.
    Hourly,
    /// One file (rotate it with logrotate's `copytruncate`).
    Never,
}

/// Checks `raw`, read from `file`; relative paths are taken from `base`.
pub(crate) fn check(raw: RawConfig, base: &Path, file: &Path) -> Result<Config, ConfigError> {
    let invalid = |key: String, reason: String| ConfigError::Invalid {
        file: file.to_owned(),
        key,
        reason,
    };
    let ms = |value: u64, key: &str| -> Result<Duration, ConfigError> {
        if value == 0 || value > 3_600_000 {
            Err(invalid(
                key.to_owned(),
                "must be between 1 and 3600000 (one hour) milliseconds".into(),
            ))
        } else {
            Ok(Duration::from_millis(value))
        }
    };
    let p = &raw.proxy;
    let positive = |value: usize, key: &str| -> Result<usize, ConfigError> {
        if value == 0 {
            Err(invalid(key.to_owned(), "must be greater than 0".into()))
        } else {
            Ok(value)
        }
    };
    let proxy = ProxyLimits {
        request_header_timeout: ms(
            p.request_header_timeout_ms,
            "proxy.request_header_timeout_ms",
        )?,
        idle_timeout: ms(p.idle_timeout_ms, "proxy.idle_timeout_ms")?,
        max_header_bytes: positive(p.max_header_bytes, "proxy.max_header_bytes")?,
        max_headers: positive(p.max_headers, "proxy.max_headers")?,
        max_handshakes_in_flight: positive(
            p.max_handshakes_in_flight,
            "proxy.max_handshakes_in_flight",
        )?,
        handshake_timeout: ms(p.handshake_timeout_ms, "proxy.handshake_timeout_ms")?,
        shutdown_grace: ms(p.shutdown_grace_ms, "proxy.shutdown_grace_ms")?,
    };
    if proxy.max_header_bytes < 1024 {
        return Err(invalid(
            "proxy.max_header_bytes".into(),
            "must be at least 1024".into(),
        ));
    }

    // Pools first: routes refer to them.
    let mut pools = Vec::with_capacity(p.pools.len());
    let mut names = BTreeSet::new();
    for (i, pool) in p.pools.iter().enumerate() {
        pools.push(check_pool(pool, i, &invalid, &ms)?);
        if !names.insert(pool.name.clone()) {
            return Err(invalid(
                format!("proxy.pools.{i}.name"),
                format!("duplicate pool name {:?}", pool.name),
            ));
        }
    }
    let mut routes = Vec::with_capacity(p.routes.len());
    for (i, route) in p.routes.iter().enumerate() {
        let pool = pools
            .iter()
            .position(|pl| pl.name == route.pool)
            .ok_or_else(|| {
                invalid(
                    format!("proxy.routes.{i}.pool"),
                    format!("no pool is named {:?}", route.pool),
                )
            })?;
        if !route.path_prefix.starts_with('/') {
            return Err(invalid(
                format!("proxy.routes.{i}.path_prefix"),
                "must start with /".into(),
            ));
        }
        let host = match &route.host {
            Some(h) if h.is_empty() || h.contains([':', '/', ' ']) => {
                return Err(invalid(
                    format!("proxy.routes.{i}.host"),
                    "must be a host name without port or path".into(),
                ));
            }
            Some(h) => Some(h.to_ascii_lowercase()),
            None => None,
        };
        routes.push(RouteConfig {
            host,
            path_prefix: route.path_prefix.clone(),
            pool,
        });
    }

    let mut listeners = Vec::with_capacity(p.listeners.len());
    for (i, l) in p.listeners.iter().enumerate() {
        let bind = l.bind.parse::<SocketAddr>().map_err(|_| {
            invalid(
                format!("proxy.listeners.{i}.bind"),
                format!("{:?} is not ip:port", l.bind),
            )
        })?;
        if l.certificates.is_empty() {
            return Err(invalid(
                format!("proxy.listeners.{i}.certificates"),
                "a TLS listener needs at least one certificate".into(),
            ));
        }
        let certificates = l
            .certificates
            .iter()
            .enumerate()
            .map(|(j, c)| {
                check_certificate(
                    c,
                    base,
                    &format!("proxy.listeners.{i}.certificates.{j}"),
                    &invalid,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        listeners.push(ListenerConfig { bind, certificates });
    }
    if listeners.is_empty() {
        return Err(invalid(
            "proxy.listeners".into(),
            "at least one listener is needed".into(),
        ));
    }
    if routes.is_empty() {
        return Err(invalid(
            "proxy.routes".into(),
            "at least one route is needed".into(),
        ));
    }

    let h = &raw.hsm;
    let mode = match h.mode.as_str() {
        "remote" => HsmMode::Remote {
            client_config: base.join(h.client_config.as_ref().ok_or_else(|| {
                invalid(
                    "hsm.client_config".into(),
                    "remote mode needs the cluster's client.toml".into(),
                )
            })?),
        },
        "embedded" => HsmMode::Embedded {
            data_dir: base.join(&h.data_dir),
        },
        other => {
            return Err(invalid(
                "hsm.mode".into(),
                format!("{other:?} is neither \"remote\" nor \"embedded\""),
            ));
        }
    };
    if h.user.is_empty() {
        return Err(invalid(
            "hsm.user".into(),
            "the crypto user that owns the keys is needed".into(),
        ));
    }
    if h.password.is_none() && h.password_file.is_none() {
        return Err(invalid(
            "hsm.password_file".into(),
            "the user's password is needed: a password file, or SEALGATE_HSM__PASSWORD".into(),
        ));
    }
    let hsm = HsmConfig {
        mode,
        user: h.user.clone(),
        password_file: h.password_file.as_ref().map(|f| base.join(f)),
        password: h.password.clone().map(Zeroizing::new),
    };

    let format = match raw.logging.format.as_str() {
        "pretty" => LogFormat::Pretty,
        "json" => LogFormat::Json,
        other => {
            return Err(invalid(
                "logging.format".into(),
                format!("{other:?} is neither \"pretty\" nor \"json\""),
            ));
        }
    };
    let rotation = match raw.logging.rotation.as_str() {
        "daily" => Rotation::Daily,
        "hourly" => Rotation::Hourly,
        "never" => Rotation::Never,
        other => {
            return Err(invalid(
                "logging.rotation".into(),
                format!("{other:?} is none of \"daily\", \"hourly\" and \"never\""),
            ));
        }
    };
    let metrics_bind = match &raw.monitoring.metrics_bind {
        None => None,
        Some(bind) => Some(bind.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "monitoring.metrics_bind".into(),
                format!("{bind:?} is not ip:port"),
            )
        })?),
    };
    let emf = match &raw.monitoring.emf {
        None => None,
        Some(e) => Some(check_emf(e, base).map_err(|(key, why)| invalid(key.into(), why))?),
    };
    Ok(Config {
        file: file.to_owned(),
        proxy,
        listeners,
        routes,
        pools,
        hsm,
        logging: LoggingConfig {
            level: raw.logging.level.clone(),
            format,
            file: raw.logging.file.as_ref().map(|f| (base.join(f), rotation)),
            access_log: raw.logging.access_log,
        },
        monitoring: MonitoringConfig { metrics_bind, emf },
    })
}

/// The longest namespace, in characters (CloudWatch).
pub const MAX_NAMESPACE_CHARS: usize = 255;

/// Why a CloudWatch namespace is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NamespaceError {
    /// The namespace is empty.
    #[error("the namespace is empty")]
    Empty,
    /// The namespace is longer than [`MAX_NAMESPACE_CHARS`].
    #[error("the namespace is longer than {MAX_NAMESPACE_CHARS} characters")]
    TooLong,
    /// The namespace holds a character CloudWatch refuses.
    #[error(
        "the namespace holds {0:?}: only ASCII letters, digits, spaces and . - _ / # : are allowed"
    )]
    BadChar(char),
    /// The namespace starts with `AWS/`, which AWS keeps for its services.
    #[error("namespaces starting with AWS/ are reserved for AWS services")]
    Reserved,
}

/// Checks a `[monitoring.emf]` section (of `serve`'s file or a node.toml); relative paths are
/// taken from `base`. A refusal names the key (`monitoring.emf.…`) and what is wrong.
pub fn check_emf(e: &RawEmf, base: &Path) -> Result<EmfConfig, (&'static str, String)> {
    if let Err(why) = check_namespace(&e.namespace) {
        return Err((
            "monitoring.emf.namespace",
            format!("{:?}: {why}", e.namespace),
        ));
    }
    if !(100..=3_600_000).contains(&e.flush_interval_ms) {
        return Err((
            "monitoring.emf.flush_interval_ms",
            format!(
                "{} is not between 100 and 3600000 milliseconds",
                e.flush_interval_ms
            ),
        ));
    }
    Ok(EmfConfig {
        path: base.join(&e.path),
        namespace: e.namespace.clone(),
        flush_interval: Duration::from_millis(e.flush_interval_ms),
    })
}

/// Checks `namespace` against CloudWatch's rules: 1 to 255 characters among ASCII letters,
/// digits, space and `. - _ / # :`, not starting with `AWS/`.
pub fn check_namespace(namespace: &str) -> Result<(), NamespaceError> {
    if namespace.is_empty() {
        return Err(NamespaceError::Empty);
    }
    if namespace.chars().count() > MAX_NAMESPACE_CHARS {
        return Err(NamespaceError::TooLong);
    }
    if let Some(c) = namespace
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || " .-_/#:".contains(*c)))
    {
        return Err(NamespaceError::BadChar(c));
    }
    if namespace.starts_with("AWS/") {
        return Err(NamespaceError::Reserved);
    }
    Ok(())
}

fn check_certificate(
    c: &RawCertificate,
    base: &Path,
    key: &str,
    invalid: &impl Fn(String, String) -> ConfigError,
) -> Result<CertificateConfig, ConfigError> {
    let key_ref = match (&c.key.label, c.key.handle) {
        (Some(label), None) if !label.is_empty() => KeyRef::Label(label.clone()),
        (None, Some(handle)) => KeyRef::Handle(handle),
        _ => {
            return Err(invalid(
                format!("{key}.key"),
                "name the HSM key by label or by handle (one of them)".into(),
            ));
        }
    };
    Ok(CertificateConfig {
        chain: base.join(&c.chain),
        key: key_ref,
    })
}

fn check_pool(
    pool: &RawPool,
    i: usize,
    invalid: &impl Fn(String, String) -> ConfigError,
    ms: &impl Fn(u64, &str) -> Result<Duration, ConfigError>,
) -> Result<PoolConfig, ConfigError> {
    let key = |k: &str| format!("proxy.pools.{i}.{k}");
    if pool.name.is_empty() {
        return Err(invalid(key("name"), "must not be empty".into()));
    }
    if pool.servers.is_empty() {
        return Err(invalid(
            key("servers"),
            "a pool needs at least one server".into(),
        ));
    }
    for (j, server) in pool.servers.iter().enumerate() {
        let ok = server
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(invalid(
                format!("proxy.pools.{i}.servers.{j}"),
                format!("{server:?} is not host:port"),
            ));
        }
    }
    let balancing = match pool.balancing.as_str() {
        "round-robin" => Balancing::RoundRobin,
        "least-requests" => Balancing::LeastRequests,
        other => {
            return Err(invalid(
                key("balancing"),
                format!("{other:?} is neither \"round-robin\" nor \"least-requests\""),
            ));
        }
    };
    let protocol = match pool.protocol.as_str() {
        "http1" => UpstreamProtocol::Http1,
        "h2c" => UpstreamProtocol::H2c,
        other => {
            return Err(invalid(
                key("protocol"),
                format!("{other:?} is neither \"http1\" nor \"h2c\""),
            ));
        }
    };
    let health_check = match &pool.health_check {
        None => None,
        Some(RawHealthCheck {
            path,
            interval_ms,
            timeout_ms,
        }) => {
            if !path.starts_with('/') {
                return Err(invalid(
                    key("health_check.path"),
                    "must start with /".into(),
                ));
            }
            Some(HealthCheck {
                path: path.clone(),
                interval: ms(*interval_ms, &key("health_check.interval_ms"))?,
                timeout: ms(*timeout_ms, &key("health_check.timeout_ms"))?,
            })
        }
    };
    Ok(PoolConfig {
        name: pool.name.clone(),
        servers: pool.servers.clone(),
        balancing,
        protocol,
        connect_timeout: ms(pool.connect_timeout_ms, &key("connect_timeout_ms"))?,
        response_timeout: ms(pool.response_timeout_ms, &key("response_timeout_ms"))?,
        health_check,
    })
}

#[cfg(test)]
mod tests {
    use crate::{ConfigError, HsmMode, KeyRef, load, parse};
    use std::path::Path;

    const GOOD: &str = r#"
[[proxy.listeners]]
bind = "127.0.0.1:8443"
[[proxy.listeners.certificates]]
chain = "site.pem"
key = { label = "site" }

[[proxy.routes]]
host = "Example.com"
pool = "web"

[[proxy.pools]]
name = "web"
servers = ["127.0.0.1:8080", "127.0.0.1:8081"]
balancing = "least-requests"
health_check = { path = "/healthz" }

[hsm]
mode = "remote"
client_config = "c/client.toml"
user = "proxy"
password_file = "pw"
"#;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealgate.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn a_good_file_is_checked_with_paths_from_its_directory() {
        let (dir, path) = write(GOOD);
        let c = load(&path, no_env()).unwrap();
        assert_eq!(c.listeners[0].bind.to_string(), "127.0.0.1:8443");
        assert_eq!(
            c.listeners[0].certificates[0].chain,
            dir.path().join("site.pem")
        );
        assert_eq!(
            c.listeners[0].certificates[0].key,
            KeyRef::Label("site".into())
        );
        assert_eq!(c.routes[0].host.as_deref(), Some("example.com"));
        assert_eq!(c.routes[0].path_prefix, "/");
        assert_eq!(c.pools[0].servers.len(), 2);
        assert_eq!(
            c.hsm.mode,
            HsmMode::Remote {
                client_config: dir.path().join("c/client.toml")
            }
        );
        assert_eq!(c.proxy.max_headers, 100);
    }

    #[test]
    fn the_environment_overrides_the_file_and_passwords_are_not_printed() {
        let (_dir, path) = write(GOOD);
        let env = vec![
            ("SEALGATE_HSM__USER".to_owned(), "other".to_owned()),
            ("SEALGATE_HSM__PASSWORD".to_owned(), "s3cret-pw".to_owned()),
            ("SEALGATE_PROXY__MAX_HEADERS".to_owned(), "50".to_owned()),
            // Management variables are not configuration.
            ("SEALGATE_USER".to_owned(), "admin".to_owned()),
            ("SEALGATE_CLUSTER".to_owned(), "x".to_owned()),
        ];
        let c = load(&path, env).unwrap();
        assert_eq!(c.hsm.user, "other");
        assert_eq!(c.proxy.max_headers, 50);
        assert_eq!(
            c.hsm.password.as_deref().map(String::as_str),
            Some("s3cret-pw")
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn every_error_names_the_file_and_the_key() {
        for (edit, expected) in [
            (
                GOOD.replace("bind =", "bnid ="),
                "sealgate.toml: proxy.listeners.0.bnid: unknown field",
            ),
            (
                GOOD.replace("[hsm]", "[hsm]\ncolour = 1"),
                "sealgate.toml: hsm.colour: unknown field",
            ),
            (
                GOOD.replace("8443\"", "99999\""),
                "proxy.listeners.0.bind: \"127.0.0.1:99999\" is not ip:port",
            ),
            (
                GOOD.replace("pool = \"web\"", "pool = \"wbe\""),
                "proxy.routes.0.pool: no pool is named \"wbe\"",
            ),
            (
                GOOD.replace("least-requests", "random"),
                "proxy.pools.0.balancing",
            ),
            (
                format!("{GOOD}\n[logging]\nrotation = \"weekly\"\n"),
                "logging.rotation: \"weekly\" is none of",
            ),
            (
                format!("{GOOD}\n[monitoring.emf]\npath = \"m.jsonl\"\nnamespace = \"AWS/ELB\"\n"),
                "monitoring.emf.namespace: \"AWS/ELB\"",
            ),
            (
                format!("{GOOD}\n[monitoring]\nmetrics_bind = \"localhost\"\n"),
                "monitoring.metrics_bind: \"localhost\" is not ip:port",
            ),
            (
                format!("{GOOD}\n[monitoring]\nmetrics_bnid = \"127.0.0.1:9464\"\n"),
                "sealgate.toml: monitoring.metrics_bnid: unknown field",
            ),
            (
                GOOD.replace("{ label = \"site\" }", "{ label = \"site\", handle = 3 }"),
                "proxy.listeners.0.certificates.0.key",
            ),
            (
                GOOD.replace("mode = \"remote\"", "mode = \"local\""),
                "hsm.mode",
            ),
            (
                GOOD.replace("password_file = \"pw\"", ""),
                "hsm.password_file",
            ),
            (
                GOOD.replace("127.0.0.1:8081", "nohost"),
                "proxy.pools.0.servers.1",
            ),
        ] {
            let (_dir, path) = write(&edit);
            let err = load(&path, no_env()).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
            assert!(err.contains("sealgate.toml"), "{err}");
        }
        let (_dir, path) = write(GOOD);
        let err = parse(
            &path,
            vec![("SEALGATE_PROXY__MAX_HEADERS".to_owned(), "many".to_owned())],
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("environment: proxy.max_headers"),
            "{err}"
        );
        let missing = load(Path::new("/nonexistent/sealgate.toml"), no_env()).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("/nonexistent/sealgate.toml: "),
            "{missing}"
        );
    }
}
