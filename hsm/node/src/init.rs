//! `sealgate cluster init`: creates a new cluster in a directory — its CA, one certificate,
//! key, master key and `node-i.toml` per node, a client certificate and `client.toml`, and the
//! engine's store initialized once (with a one-time PRECO password) and cloned to every node.
//!
//! What this module does not do: it starts no node and opens no socket, and it never
//! overwrites a file. If a step fails, whatever it created is removed so that a retry starts
//! clean.
//!
//! Layout written into `DIR`:
//!
//! ```text
//! ca.pem  ca-key.pem          cluster CA (ECDSA P-256, 10 years); the key is kept for add-node
//! client.pem  client-key.pem  the client's certificate (clientAuth)
//! client.toml                 the nodes' addresses and the client's TLS files
//! preco-password              the one-time password of the PRECO user `admin`
//! node-i.toml                 node i's configuration (paths relative to DIR)
//! node-i/node.pem             node i's certificate (serverAuth and clientAuth)
//! node-i/node-key.pem
//! node-i/master.key           the cluster's storage master key (the same in every node)
//! node-i/store.redb           the initialized engine store (the same cluster in every node)
//! ```

use crate::config::{
    ClusterSection, LimitsSection, LoggingSection, MAX_NODES, MemberSection, MonitoringSection,
    NodeFile, NodeSection, TlsSection,
};
use crate::master_key::{MasterKeyError, load_or_create_master_key};
use crate::store::RedbStore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use sealgate_hsm_client::ClientFile;
use sealgate_hsm_core::crypto::{CryptoError, Password, random_bytes};
use sealgate_hsm_core::{DriverError, EngineConfig, LocalHsm};
use sealgate_hsm_core::{EngineError, StoreError};
use serde::Serialize;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

/// The host written into the configurations unless another is given.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// The port of node 1 unless another is given; node i listens on `base_port + i - 1`.
pub const DEFAULT_BASE_PORT: u16 = sealgate_hsm_proto::DEFAULT_PORT;
/// Characters in the one-time PRECO password.
pub const PRECO_PASSWORD_LEN: usize = 24;

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const CLIENT_CERT: &str = "client.pem";
const CLIENT_KEY: &str = "client-key.pem";
const CLIENT_CONFIG: &str = "client.toml";
const PRECO_FILE: &str = "preco-password";
const NODE_CERT: &str = "node.pem";
const NODE_KEY: &str = "node-key.pem";
const MASTER_KEY: &str = "master.key";
const STORE: &str = "store.redb";
/// Names that mean "a cluster is already here" (besides any `node-*` entry).
const CLUSTER_FILES: [&str; 6] = [
    CA_CERT,
    CA_KEY,
    CLIENT_CERT,
    CLIENT_KEY,
    CLIENT_CONFIG,
    PRECO_FILE,
];

/// How long the CA and the certificates it signs are valid (ten years of 365.25 days).
const VALIDITY: Duration = Duration::from_secs(3_652 * 24 * 60 * 60 + 12 * 60 * 60);
/// Certificates are valid from an hour before their creation, for clocks slightly behind.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// What `sealgate cluster init` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Directory to write the cluster into; created (mode 0700) if absent. It must not hold a
    /// cluster already.
    pub dir: PathBuf,
    /// Number of nodes, 1 to 28.
    pub nodes: u32,
    /// The IP address or DNS name clients use to reach the nodes (all nodes share it; they
    /// differ by port). An IP address is also what the nodes listen on; with a DNS name the
    /// nodes listen on `0.0.0.0`.
    pub host: String,
    /// Port of node 1; node i gets `base_port + i - 1`.
    pub base_port: u16,
}

impl InitOptions {
    /// Options for `nodes` nodes in `dir` on [`DEFAULT_HOST`] from [`DEFAULT_BASE_PORT`].
    pub fn new(dir: impl Into<PathBuf>, nodes: u32) -> Self {
        Self {
            dir: dir.into(),
            nodes,
            host: DEFAULT_HOST.to_owned(),
            base_port: DEFAULT_BASE_PORT,
        }
    }
}

/// What `init_cluster` wrote. Paths are `InitOptions::dir` joined with the file's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// The new cluster's id (32 hex digits).
    pub cluster_id: String,
    /// `client.toml`.
    pub client_config: PathBuf,
    /// `node-i.toml`, for node 1 to N in order.
    pub node_configs: Vec<PathBuf>,
    /// The file holding the PRECO's one-time password (user
    /// [`PRECO_NAME`](sealgate_hsm_core::PRECO_NAME)).
    pub preco_password_file: PathBuf,
    /// The cluster CA's certificate.
    pub ca_cert: PathBuf,
}

/// Why a cluster could not be created. Nothing is left behind by a failed attempt (best
/// effort), so it can be retried once the cause is fixed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The node count is outside 1–28.
    #[error("a cluster has 1 to {MAX_NODES} nodes, not {nodes}")]
    NodeCount {
        /// The count asked for.
        nodes: u32,
    },
    /// The host is empty.
    #[error("the host must not be empty")]
    EmptyHost,
    /// The host is neither an IP address clients can reach nor a DNS name.
    #[error("host {host:?} is neither a reachable IP address nor a DNS name")]
    InvalidHost {
        /// The host given.
        host: String,
    },
    /// The nodes' ports do not fit between 1 and 65535.
    #[error("node ports {base_port} to {last} do not fit between 1 and 65535")]
    Ports {
        /// Port of node 1.
        base_port: u16,
        /// Port of the last node.
        last: u32,
    },
    /// The directory exists but is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The directory already holds a cluster; nothing was written.
    #[error("{path} already exists: the directory holds a cluster; choose another directory")]
    AlreadyExists {
        /// The first file or directory found that belongs to a cluster.
        path: PathBuf,
    },
    /// A file or directory could not be read, created or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or its key could not be generated.
    #[error("cannot generate {path}: {source}")]
    Certificate {
        /// The certificate file it was for.
        path: PathBuf,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// The master key file could not be created.
    #[error(transparent)]
    MasterKey(#[from] MasterKeyError),
    /// The store could not be opened or loaded.
    #[error("store {path}: {source}")]
    Store {
        /// The store file.
        path: PathBuf,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The engine refused to initialize, or the store failed to record it.
    #[error("cannot initialize the cluster in {path}: {source}")]
    Engine {
        /// The store file.
        path: PathBuf,
        /// The driver's error.
        #[source]
        source: DriverError,
    },
    /// The random number generator failed while drawing the PRECO password.
    #[error("cannot draw the password for {path}: {source}")]
    Random {
        /// The password file it was for.
        path: PathBuf,
        /// The crypto error.
        #[source]
        source: CryptoError,
    },
    /// A configuration file could not be serialized.
    #[error("cannot write {path}: {source}")]
    Serialize {
        /// The configuration file.
        path: PathBuf,
        /// The TOML serializer's error.
        #[source]
        source: toml::ser::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates a new cluster as described by `opts` (see the module documentation for the files).
///
/// Refuses, writing nothing, if the options are out of range or `opts.dir` already holds a
/// cluster (`client.toml`, `ca.pem` or a `node-*` entry, among others).
pub fn init_cluster(opts: &InitOptions) -> Result<InitReport, InitError> {
    let host = Host::parse(&opts.host)?;
    if opts.nodes == 0 || opts.nodes > MAX_NODES {
        return Err(InitError::NodeCount { nodes: opts.nodes });
    }
    let last_port = u32::from(opts.base_port) + opts.nodes - 1;
    if opts.base_port == 0 || last_port > u32::from(u16::MAX) {
        return Err(InitError::Ports {
            base_port: opts.base_port,
            last: last_port,
        });
    }
    refuse_existing(&opts.dir)?;
    let mut created = Created::default();
    let report = write_cluster(opts, &host, &mut created)?;
    // The CreateCluster management event, beside client.toml (the operator's side: the nodes
    // record the calls they serve in their own data directories).
    let events = opts.dir.join(crate::audit::EVENTS_FILE);
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let mut event = crate::audit::ManagementEvent::new(
        "CreateCluster",
        serde_json::json!({ "type": "LocalOperator", "userName": user }),
        "local".into(),
    );
    event.cluster_id = Some(report.cluster_id.clone());
    event.request_parameters = serde_json::json!({
        "nodes": opts.nodes,
        "host": opts.host,
        "basePort": opts.base_port,
    });
    event.response_elements = serde_json::json!({
        "clusterId": report.cluster_id,
        "hsmIds": (1..=opts.nodes).collect::<Vec<u32>>(),
    });
    created.file(&events);
    event.append_to(&events).map_err(io(&events))?;
    created.keep();
    Ok(report)
}

/// The host given on the command line, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    fn parse(host: &str) -> Result<Self, InitError> {
        if host.is_empty() {
            return Err(InitError::EmptyHost);
        }
        let invalid = || InitError::InvalidHost {
            host: host.to_owned(),
        };
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            // Clients cannot connect to "any address"; the node would listen on it anyway.
            return if ip.is_unspecified() {
                Err(invalid())
            } else {
                Ok(Self::Ip(ip))
            };
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        if name.len() <= 253 && name.split('.').all(label_ok) {
            Ok(Self::Name(name.to_ascii_lowercase()))
        } else {
            Err(invalid())
        }
    }

    /// What node `port` listens on.
    fn listen(&self, port: u16) -> SocketAddr {
        match self {
            Self::Ip(ip) => SocketAddr::new(*ip, port),
            Self::Name(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        }
    }

    /// Where clients reach node `port`.
    fn address(&self, port: u16) -> String {
        match self {
            Self::Ip(ip) => SocketAddr::new(*ip, port).to_string(),
            Self::Name(name) => format!("{name}:{port}"),
        }
    }

    /// The subject alternative names of a node certificate.
    fn sans(&self) -> Vec<String> {
        let own = match self {
            Self::Ip(ip) => ip.to_string(),
            Self::Name(name) => name.clone(),
        };
        if own == "localhost" {
            vec![own]
        } else {
            vec![own, "localhost".to_owned()]
        }
    }
}

/// Refuses a path that is not a directory or that holds a cluster.
fn refuse_existing(dir: &Path) -> Result<(), InitError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(InitError::Io {
                path: dir.to_owned(),
                source,
            });
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(InitError::NotADirectory {
                path: dir.to_owned(),
            });
        }
        Ok(_) => {}
    }
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("node-") || CLUSTER_FILES.contains(&name.as_ref()) {
            return Err(InitError::AlreadyExists { path: entry.path() });
        }
    }
    Ok(())
}

/// Everything created so far, removed again (newest first) when dropped before `keep`.
#[derive(Debug, Default)]
struct Created {
    entries: Vec<(PathBuf, bool)>,
    kept: bool,
}

impl Created {
    fn file(&mut self, path: &Path) {
        self.entries.push((path.to_owned(), false));
    }

    fn dir(&mut self, path: &Path) {
        self.entries.push((path.to_owned(), true));
    }

    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for (path, is_dir) in self.entries.iter().rev() {
            // Best effort: the error that got us here is the one worth reporting.
            let _ = if *is_dir {
                fs::remove_dir(path)
            } else {
                fs::remove_file(path)
            };
        }
    }
}

/// Creates `dir` and any missing parents with mode 0700, recording what it created.
fn create_dir(created: &mut Created, dir: &Path) -> Result<(), InitError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty()) {
        match fs::symlink_metadata(path) {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::NotFound => missing.push(path),
            Err(source) => {
                return Err(InitError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        at = path.parent();
    }
    for path in missing.into_iter().rev() {
        DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(io(path))?;
        created.dir(path);
        fs::set_permissions(path, Permissions::from_mode(0o700)).map_err(io(path))?;
    }
    Ok(())
}

/// Writes a new file (never replacing one) with exactly `mode`, and makes it durable.
fn write_new(
    created: &mut Created,
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<(), InitError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    created.file(path);
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io(path))?;
    file.write_all(contents).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Copies `from` to the new file `to` (mode 0600).
fn copy_new(created: &mut Created, from: &Path, to: &Path) -> Result<(), InitError> {
    let mut source = File::open(from).map_err(io(from))?;
    let mut target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io(to))?;
    created.file(to);
    std::io::copy(&mut source, &mut target).map_err(io(to))?;
    target.sync_all().map_err(io(to))
}

/// Serializes `value` under a `#` comment header.
fn toml_text<T: Serialize>(header: &str, value: &T, path: &Path) -> Result<String, InitError> {
    let body = toml::to_string(value).map_err(|source| InitError::Serialize {
        path: path.to_owned(),
        source,
    })?;
    let mut text = String::new();
    for line in header.lines() {
        text.push('#');
        if !line.is_empty() {
            text.push(' ');
            text.push_str(line);
        }
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&body);
    Ok(text)
}

/// A certificate's validity: from an hour ago for ten years.
fn set_validity(params: &mut CertificateParams) {
    let now = SystemTime::now();
    params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
    params.not_after = now.checked_add(VALIDITY).unwrap_or(now).into();
}

/// A fresh ECDSA P-256 key for the certificate at `path`.
fn new_key(path: &Path) -> Result<KeyPair, InitError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| InitError::Certificate {
        path: path.to_owned(),
        source,
    })
}

/// Issues a leaf certificate with `sans`, `cn` and `usages`, and writes it and its key.
fn issue_leaf(
    created: &mut Created,
    issuer: &Issuer<'_, KeyPair>,
    (cert_path, key_path): (&Path, &Path),
    cn: &str,
    sans: Vec<String>,
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<(), InitError> {
    let cert_error = |source| InitError::Certificate {
        path: cert_path.to_owned(),
        source,
    };
    let key = new_key(cert_path)?;
    let mut params = CertificateParams::new(sans).map_err(cert_error)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    set_validity(&mut params);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer).map_err(cert_error)?;
    let key_pem = Zeroizing::new(key.serialize_pem());
    write_new(created, key_path, key_pem.as_bytes(), 0o600)?;
    write_new(created, cert_path, cert.pem().as_bytes(), 0o644)
}

/// Draws the PRECO's one-time password: [`PRECO_PASSWORD_LEN`] characters from `[A-Za-z0-9]`,
/// each equally likely.
fn preco_password(path: &Path) -> Result<Zeroizing<String>, InitError> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // 248 = 4 × 62: bytes at or above it are dropped, so `b % 62` has no bias.
    const LIMIT: u8 = 248;
    let mut out = Zeroizing::new(String::with_capacity(PRECO_PASSWORD_LEN));
    while out.len() < PRECO_PASSWORD_LEN {
        let batch = Zeroizing::new(random_bytes(64).map_err(|source| InitError::Random {
            path: path.to_owned(),
            source,
        })?);
        for &b in batch.iter().filter(|&&b| b < LIMIT) {
            if out.len() == PRECO_PASSWORD_LEN {
                break;
            }
            if let Some(&c) = ALPHABET.get(usize::from(b % 62)) {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

/// Milliseconds since the Unix epoch, now.
/// Initializes the engine in the store at `store_path`; returns the cluster id (hex).
fn initialize_store(
    created: &mut Created,
    store_path: &Path,
    master_path: &Path,
    password: &Zeroizing<String>,
) -> Result<String, InitError> {
    let store_error = |source| InitError::Store {
        path: store_path.to_owned(),
        source,
    };
    let engine_error = |source: DriverError| InitError::Engine {
        path: store_path.to_owned(),
        source,
    };
    created.file(master_path);
    let (master, _) = load_or_create_master_key(master_path, None)?;
    created.file(store_path);
    let store = RedbStore::open(store_path).map_err(store_error)?;
    let mut hsm = LocalHsm::open(store, master, EngineConfig::default()).map_err(store_error)?;
    let cmd = hsm
        .engine()
        .initialize(
            &Password::new(String::clone(password)),
            crate::service::now(),
        )
        .map_err(|e| engine_error(e.into()))?;
    hsm.commit(&cmd, None).map_err(engine_error)?;
    let session = hsm
        .engine_mut()
        .open_session()
        .map_err(|e| engine_error(e.into()))?;
    let info = hsm.engine().info(session);
    hsm.engine_mut().close_session(session);
    let info = info.map_err(|e| engine_error(e.into()))?;
    drop(hsm);
    // redb creates the file with the default mode; keep it to its owner like the rest.
    fs::set_permissions(store_path, Permissions::from_mode(0o600)).map_err(io(store_path))?;
    info.cluster_uid
        .map(|uid| hex::encode(uid.0))
        .ok_or_else(|| engine_error(EngineError::NotInitialized.into()))
}

/// Writes `node-{id}.toml` at `path` under a `header` comment.
fn write_node_config(
    created: &mut Created,
    path: &Path,
    header: &str,
    id: u32,
    listen: SocketAddr,
    cluster: ClusterSection,
) -> Result<(), InitError> {
    let file = NodeFile {
        node: NodeSection {
            id,
            listen: listen.to_string(),
            data_dir: PathBuf::from(format!("node-{id}")),
        },
        tls: TlsSection {
            ca: PathBuf::from(CA_CERT),
            cert: PathBuf::from(format!("node-{id}/{NODE_CERT}")),
            key: PathBuf::from(format!("node-{id}/{NODE_KEY}")),
        },
        limits: LimitsSection::default(),
        cluster,
        monitoring: MonitoringSection::default(),
        logging: LoggingSection::default(),
    };
    write_new(
        created,
        path,
        toml_text(header, &file, path)?.as_bytes(),
        0o644,
    )
}

/// Issues node `id`'s certificate (CN `sealgate node {id}`, server and client use) and
/// writes it and its key into `node_dir`.
fn issue_node_cert(
    created: &mut Created,
    issuer: &Issuer<'_, KeyPair>,
    node_dir: &Path,
    id: u32,
    host: &Host,
) -> Result<(), InitError> {
    issue_leaf(
        created,
        issuer,
        (&node_dir.join(NODE_CERT), &node_dir.join(NODE_KEY)),
        &format!("sealgate node {id}"),
        host.sans(),
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )
}

/// Writes the whole cluster; every file and directory it creates is recorded in `created`.
fn write_cluster(
    opts: &InitOptions,
    host: &Host,
    created: &mut Created,
) -> Result<InitReport, InitError> {
    let dir = opts.dir.as_path();
    create_dir(created, dir)?;

    // The cluster CA.
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let ca_error = |source| InitError::Certificate {
        path: ca_cert_path.clone(),
        source,
    };
    let ca_key = new_key(&ca_cert_path)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sealgate cluster CA");
    set_validity(&mut ca_params);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(ca_error)?;
    let ca_key_pem = Zeroizing::new(ca_key.serialize_pem());
    write_new(created, &ca_key_path, ca_key_pem.as_bytes(), 0o600)?;
    write_new(created, &ca_cert_path, ca_cert.pem().as_bytes(), 0o644)?;
    let issuer = Issuer::new(ca_params, ca_key);

    // The client.
    issue_leaf(
        created,
        &issuer,
        (&dir.join(CLIENT_CERT), &dir.join(CLIENT_KEY)),
        "sealgate client",
        Vec::new(),
        &[ExtendedKeyUsagePurpose::ClientAuth],
    )?;

    // The nodes' directories and certificates.
    let ids: Vec<u32> = (1..=opts.nodes).collect();
    let node_dir = |id: u32| dir.join(format!("node-{id}"));
    for &id in &ids {
        let nd = node_dir(id);
        create_dir(created, &nd)?;
        issue_node_cert(created, &issuer, &nd, id, host)?;
    }

    // The engine, initialized once in node 1, then cloned with its master key.
    let preco_path = dir.join(PRECO_FILE);
    let password = preco_password(&preco_path)?;
    let first = node_dir(1);
    let (first_master, first_store) = (first.join(MASTER_KEY), first.join(STORE));
    let cluster_id = initialize_store(created, &first_store, &first_master, &password)?;
    let master_bytes = Zeroizing::new(fs::read(&first_master).map_err(io(&first_master))?);
    for &id in ids.iter().skip(1) {
        let nd = node_dir(id);
        write_new(created, &nd.join(MASTER_KEY), &master_bytes, 0o600)?;
        copy_new(created, &first_store, &nd.join(STORE))?;
    }
    let mut preco_text = Zeroizing::new(String::clone(&password));
    preco_text.push('\n');
    write_new(created, &preco_path, preco_text.as_bytes(), 0o600)?;

    // The configurations.
    let dns_note = match host {
        Host::Ip(_) => String::new(),
        Host::Name(name) => format!(
            "\nThe cluster was created for the DNS name {name}: the node listens on all IPv4\n\
             interfaces (0.0.0.0) and clients reach it as {name}:PORT. Narrow `listen` to one\n\
             address if the machine has several.\n"
        ),
    };
    let port_of = |id: u32| u16::try_from(u32::from(opts.base_port) + id - 1).unwrap_or(u16::MAX);
    // Every node knows every other for replication (and a cluster of one, its own address,
    // which nodes added later use to reach it).
    let members: Vec<MemberSection> = ids
        .iter()
        .map(|&id| MemberSection {
            id,
            address: host.address(port_of(id)),
        })
        .collect();
    let mut node_configs = Vec::with_capacity(ids.len());
    let mut client_nodes = Vec::with_capacity(ids.len());
    for &id in &ids {
        let port = port_of(id);
        let path = dir.join(format!("node-{id}.toml"));
        let header = format!(
            "sealgate HSM node {id} of cluster {cluster_id},\n\
             written by `sealgate cluster init`. Start it with\n\
             `sealgate node --config node-{id}.toml`. Relative paths are relative to this\n\
             file's directory; node-{id}/ holds the node's store, master key and TLS key.\n\
             {dns_note}"
        );
        let cluster = ClusterSection {
            join: false,
            members: members.clone(),
        };
        write_node_config(created, &path, &header, id, host.listen(port), cluster)?;
        node_configs.push(path);
        client_nodes.push(sealgate_hsm_client::NodeSection {
            id,
            address: host.address(port),
            server_name: None,
        });
    }
    let client_path = dir.join(CLIENT_CONFIG);
    let client = ClientFile {
        cluster_id: Some(cluster_id.clone()),
        ca: PathBuf::from(CA_CERT),
        cert: PathBuf::from(CLIENT_CERT),
        key: PathBuf::from(CLIENT_KEY),
        client: sealgate_hsm_client::ClientSection::default(),
        nodes: client_nodes,
    };
    let header = format!(
        "sealgate HSM cluster {cluster_id}: how clients reach its nodes, written by\n\
         `sealgate cluster init`. Use it with `--cluster client.toml` or SEALGATE_CLUSTER.\n\
         Relative paths are relative to this file's directory.\n\
         Next step: `sealgate cluster activate`, as user {} with the one-time password\n\
         in {PRECO_FILE}.\n",
        sealgate_hsm_core::PRECO_NAME
    );
    write_new(
        created,
        &client_path,
        toml_text(&header, &client, &client_path)?.as_bytes(),
        0o644,
    )?;

    // Make the new directory entries durable.
    for d in ids.iter().map(|&id| node_dir(id)).chain([dir.to_owned()]) {
        File::open(&d).and_then(|f| f.sync_all()).map_err(io(&d))?;
    }

    Ok(InitReport {
        cluster_id,
        client_config: client_path,
        node_configs,
        preco_password_file: preco_path,
        ca_cert: ca_cert_path,
    })
}

/// What `sealgate cluster add-node` asks for: a node to add to the cluster whose files are
/// in `dir` (the directory `cluster init` wrote, which holds the CA key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddNodeOptions {
    /// The cluster's directory.
    pub dir: PathBuf,
    /// The cluster's members now (id, `host:port`), as the nodes report them.
    pub members: Vec<(u32, String)>,
    /// The new node's id; by default one above every id in use or ever used in `dir`.
    pub id: Option<u32>,
    /// Its host; by default the host of the member with the highest id.
    pub host: Option<String>,
    /// Its port; by default one above the highest port of the members on that host.
    pub port: Option<u16>,
}

/// The files written for a new node. Dropping it before [`AddedNode::keep`] removes them
/// again (the cluster refused the node, say).
#[derive(Debug)]
pub struct AddedNode {
    /// The node's id.
    pub id: u32,
    /// Where the others and clients reach it.
    pub address: String,
    /// Its `node-{id}.toml`.
    pub config: PathBuf,
    created: Created,
}

impl AddedNode {
    /// Keeps the files.
    pub fn keep(mut self) {
        self.created.keep();
    }
}

/// Why `add_node_files` refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddNodeError {
    /// Writing failed (as for `cluster init`).
    #[error(transparent)]
    Init(#[from] InitError),
    /// The CA's certificate or key could not be used.
    #[error("{path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The options do not fit the cluster.
    #[error("{0}")]
    Invalid(String),
}

/// The ids named by `node-{id}` entries in `dir` (configurations and data directories,
/// including those of removed nodes, whose certificates remain valid).
fn ids_in(dir: &Path) -> Result<Vec<u32>, InitError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let name = entry.map_err(io(dir))?.file_name();
        let name = name.to_string_lossy();
        if let Some(rest) = name.strip_prefix("node-") {
            let digits = rest.strip_suffix(".toml").unwrap_or(rest);
            if let Ok(id) = digits.parse::<u32>() {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

/// Splits `host:port`.
fn split_address(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

/// Writes a new node's certificate (signed with the cluster CA's key in `opts.dir`), its
/// directory and its `node-{id}.toml` (`[cluster] join = true`, the members to ask for the
/// domain key). Writes no master key and no store: the node gets both from the cluster.
pub fn add_node_files(opts: &AddNodeOptions) -> Result<AddedNode, AddNodeError> {
    let dir = opts.dir.as_path();
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let used = ids_in(dir)?;
    let highest = opts
        .members
        .iter()
        .map(|(id, _)| *id)
        .chain(used.iter().copied())
        .max()
        .unwrap_or(0);
    let id = opts.id.unwrap_or(highest + 1);
    if id == 0 || id > crate::config::MAX_NODE_ID {
        return Err(AddNodeError::Invalid(format!(
            "node ids are 1 to {}, not {id}",
            crate::config::MAX_NODE_ID
        )));
    }
    if opts.members.iter().any(|(m, _)| *m == id) || used.contains(&id) {
        return Err(AddNodeError::Invalid(format!(
            "node id {id} is in use or was used in {} (ids of removed nodes are not reused: \
             their certificates remain valid)",
            dir.display()
        )));
    }
    if opts.members.len() >= MAX_NODES as usize {
        return Err(AddNodeError::Invalid(format!(
            "the cluster has {} nodes, the most it can have",
            opts.members.len()
        )));
    }
    let newest = opts
        .members
        .iter()
        .max_by_key(|(id, _)| *id)
        .and_then(|(_, address)| split_address(address));
    let host_text = match (&opts.host, newest) {
        (Some(h), _) => h.clone(),
        (None, Some((h, _))) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
        (None, None) => DEFAULT_HOST.to_owned(),
    };
    let host = Host::parse(&host_text)?;
    let port = match opts.port {
        Some(p) if p > 0 => p,
        Some(_) => return Err(AddNodeError::Invalid("the port must not be 0".into())),
        None => {
            let top = opts
                .members
                .iter()
                .filter_map(|(_, a)| split_address(a))
                .filter(|(h, _)| h.trim_start_matches('[').trim_end_matches(']') == host_text)
                .map(|(_, p)| p)
                .max()
                .unwrap_or(DEFAULT_BASE_PORT - 1);
            top.checked_add(1).ok_or_else(|| {
                AddNodeError::Invalid(
                    "no port is left above the members' ports; give --port".into(),
                )
            })?
        }
    };
    let address = host.address(port);
    if opts.members.iter().any(|(_, a)| *a == address) {
        return Err(AddNodeError::Invalid(format!(
            "{address} is already a member's address"
        )));
    }

    let ca_error = |path: &Path, reason: String| AddNodeError::Ca {
        path: path.to_owned(),
        reason,
    };
    let ca_pem =
        fs::read_to_string(&ca_cert_path).map_err(|e| ca_error(&ca_cert_path, e.to_string()))?;
    let key_pem = Zeroizing::new(
        fs::read_to_string(&ca_key_path).map_err(|e| ca_error(&ca_key_path, e.to_string()))?,
    );
    let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| ca_error(&ca_key_path, e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| ca_error(&ca_cert_path, e.to_string()))?;

    let mut created = Created::default();
    let node_dir = dir.join(format!("node-{id}"));
    let config = dir.join(format!("node-{id}.toml"));
    create_dir(&mut created, &node_dir)?;
    issue_node_cert(&mut created, &issuer, &node_dir, id, &host)?;
    let mut members: Vec<MemberSection> = opts
        .members
        .iter()
        .map(|(id, address)| MemberSection {
            id: *id,
            address: address.clone(),
        })
        .collect();
    members.push(MemberSection {
        id,
        address: address.clone(),
    });
    let header = format!(
        "sealgate HSM node {id}, added to a running cluster by `sealgate cluster add-node`.\n\
         Start it with `sealgate node --config node-{id}.toml`: it asks the members for the\n\
         cluster's domain key (over mutual TLS, with its certificate), receives the cluster's\n\
         state as a snapshot, and becomes a voter once it has caught up. Relative paths are\n\
         relative to this file's directory.\n"
    );
    let cluster = ClusterSection {
        join: true,
        members,
    };
    write_node_config(
        &mut created,
        &config,
        &header,
        id,
        host.listen(port),
        cluster,
    )?;
    for d in [node_dir.as_path(), dir] {
        File::open(d).and_then(|f| f.sync_all()).map_err(io(d))?;
    }
    Ok(AddedNode {
        id,
        address,
        config,
        created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use sealgate_hsm_client::ClientConfig;
    use sealgate_hsm_core::{PRECO_NAME, Role, Step};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Every file under `dir` with its contents and mode.
    fn tree(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    out.insert(p.clone(), (Vec::new(), mode(&p)));
                    stack.push(p);
                } else {
                    out.insert(p.clone(), (fs::read(&p).unwrap(), mode(&p)));
                }
            }
        }
        out
    }

    fn cert(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    fn open_node(dir: &Path, id: u32) -> LocalHsm<RedbStore> {
        let nd = dir.join(format!("node-{id}"));
        let (master, _) = load_or_create_master_key(&nd.join(MASTER_KEY), None).unwrap();
        LocalHsm::open(
            RedbStore::open(&nd.join(STORE)).unwrap(),
            master,
            EngineConfig::default(),
        )
        .unwrap()
    }

    #[test]
    fn three_nodes_get_every_file_with_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cluster");
        let report = init_cluster(&InitOptions::new(&dir, 3)).unwrap();
        assert_eq!(report.cluster_id.len(), 32);
        assert_eq!(report.client_config, dir.join("client.toml"));
        assert_eq!(report.ca_cert, dir.join("ca.pem"));
        assert_eq!(report.preco_password_file, dir.join("preco-password"));
        assert_eq!(
            report.node_configs,
            (1..=3)
                .map(|i| dir.join(format!("node-{i}.toml")))
                .collect::<Vec<_>>()
        );
        assert_eq!(mode(&dir), 0o700);
        for (name, m) in [
            ("ca.pem", 0o644),
            ("ca-key.pem", 0o600),
            ("client.pem", 0o644),
            ("client-key.pem", 0o600),
            ("client.toml", 0o644),
            ("preco-password", 0o600),
        ] {
            assert_eq!(mode(&dir.join(name)), m, "{name}");
        }
        for i in 1..=3 {
            let nd = dir.join(format!("node-{i}"));
            assert_eq!(mode(&nd), 0o700);
            assert_eq!(mode(&dir.join(format!("node-{i}.toml"))), 0o644);
            for (name, m) in [
                ("node.pem", 0o644),
                ("node-key.pem", 0o600),
                ("master.key", 0o600),
                ("store.redb", 0o600),
            ] {
                assert_eq!(mode(&nd.join(name)), m, "node-{i}/{name}");
            }
            assert_eq!(
                fs::read(nd.join("master.key")).unwrap(),
                fs::read(dir.join("node-1/master.key")).unwrap()
            );
        }
        let password = fs::read_to_string(&report.preco_password_file).unwrap();
        let password = password.strip_suffix('\n').unwrap();
        assert_eq!(password.len(), PRECO_PASSWORD_LEN);
        assert!(password.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn configs_parse_and_stores_hold_one_initialized_cluster() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let report = init_cluster(&InitOptions {
            base_port: 4100,
            ..InitOptions::new(dir, 3)
        })
        .unwrap();

        let client = ClientConfig::load(&report.client_config).unwrap();
        assert_eq!(
            client.cluster_id.as_deref(),
            Some(report.cluster_id.as_str())
        );
        assert_eq!(client.ca, dir.join("ca.pem"));
        assert_eq!(client.cert, dir.join("client.pem"));
        assert_eq!(client.key, dir.join("client-key.pem"));
        let addresses: Vec<String> = client.nodes.iter().map(|n| n.address.to_string()).collect();
        assert_eq!(
            addresses,
            ["127.0.0.1:4100", "127.0.0.1:4101", "127.0.0.1:4102"]
        );
        assert!(client.nodes.iter().all(|n| n.server_name == "127.0.0.1"));
        let text = fs::read_to_string(&report.client_config).unwrap();
        assert!(text.starts_with("# sealgate HSM cluster"), "{text}");

        for (i, path) in (1..=3).zip(&report.node_configs) {
            let cfg = NodeConfig::load(path).unwrap();
            assert_eq!(cfg.id, i);
            assert_eq!(cfg.listen.to_string(), format!("127.0.0.1:{}", 4099 + i));
            assert_eq!(cfg.data_dir, dir.join(format!("node-{i}")));
            assert_eq!(cfg.ca, dir.join("ca.pem"));
            assert_eq!(cfg.cert, dir.join(format!("node-{i}/node.pem")));
            assert_eq!(cfg.key, dir.join(format!("node-{i}/node-key.pem")));
            assert_eq!(cfg.limits.max_queued, LimitsSection::default().max_queued);
            // The node can build its TLS configuration from these files.
            crate::tls::server_config(&cfg.ca, &cfg.cert, &cfg.key).unwrap();

            let mut hsm = open_node(dir, i);
            let s = hsm.engine_mut().open_session().unwrap();
            let info = hsm.engine().info(s).unwrap();
            assert!(info.initialized);
            assert!(!info.activated);
            assert_eq!(
                info.cluster_uid.map(|u| u.to_string()),
                Some(report.cluster_id.clone())
            );
        }
    }

    #[test]
    fn the_preco_password_logs_in_on_a_clone() {
        let tmp = tempfile::tempdir().unwrap();
        let report = init_cluster(&InitOptions::new(tmp.path(), 2)).unwrap();
        let password = fs::read_to_string(&report.preco_password_file).unwrap();
        let mut hsm = open_node(tmp.path(), 2);
        let s = hsm.engine_mut().open_session().unwrap();
        let step = hsm
            .engine_mut()
            .login(
                s,
                PRECO_NAME,
                &Password::new(password.trim_end().to_owned()),
                crate::service::now(),
            )
            .unwrap();
        assert!(matches!(step, Step::Done(())));
        let (_, role) = hsm.engine().session_user(s).unwrap().unwrap();
        assert_eq!(role, Role::PreCryptoOfficer);
    }

    #[test]
    fn certificates_chain_to_the_cluster_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init_cluster(&InitOptions::new(dir, 2)).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert(&dir.join("ca.pem"))).unwrap();
        let roots = Arc::new(roots);
        let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::clone(&roots),
            Arc::clone(&provider),
        )
        .build()
        .unwrap();
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap();
        let now = UnixTime::now();
        for i in 1..=2 {
            let node = cert(&dir.join(format!("node-{i}/node.pem")));
            for name in ["127.0.0.1", "localhost"] {
                let name = ServerName::try_from(name).unwrap();
                servers
                    .verify_server_cert(&node, &[], &name, &[], now)
                    .unwrap();
            }
            let other = ServerName::try_from("example.com").unwrap();
            assert!(
                servers
                    .verify_server_cert(&node, &[], &other, &[], now)
                    .is_err()
            );
            // Nodes also authenticate to each other as clients.
            clients.verify_client_cert(&node, &[], now).unwrap();
        }
        let client = cert(&dir.join("client.pem"));
        clients.verify_client_cert(&client, &[], now).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        assert!(
            servers
                .verify_server_cert(&client, &[], &name, &[], now)
                .is_err(),
            "the client certificate is not a server certificate"
        );
        // A certificate from another cluster's CA does not chain.
        let tmp2 = tempfile::tempdir().unwrap();
        init_cluster(&InitOptions::new(tmp2.path(), 1)).unwrap();
        let stranger = cert(&tmp2.path().join("client.pem"));
        assert!(clients.verify_client_cert(&stranger, &[], now).is_err());
    }

    #[test]
    fn a_dns_host_listens_everywhere_and_is_named_in_client_toml() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let report = init_cluster(&InitOptions {
            host: "localhost".into(),
            base_port: 4200,
            ..InitOptions::new(dir, 1)
        })
        .unwrap();
        let node = NodeConfig::load(&report.node_configs[0]).unwrap();
        assert_eq!(node.listen.to_string(), "0.0.0.0:4200");
        let text = fs::read_to_string(&report.node_configs[0]).unwrap();
        assert!(text.contains("0.0.0.0"), "{text}");
        let client = ClientConfig::load(&report.client_config).unwrap();
        assert_eq!(client.nodes[0].server_name, "localhost");
        let text = fs::read_to_string(&report.client_config).unwrap();
        assert!(text.contains("address = \"localhost:4200\""), "{text}");
    }

    #[test]
    fn an_ipv6_host_is_bracketed() {
        let host = Host::parse("::1").unwrap();
        assert_eq!(host.address(2225), "[::1]:2225");
        assert_eq!(host.listen(2225).to_string(), "[::1]:2225");
        assert_eq!(Host::parse("[::1]").unwrap(), host);
    }

    #[test]
    fn a_second_init_is_refused_and_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init_cluster(&InitOptions::new(dir, 2)).unwrap();
        let before = tree(dir);
        let err = init_cluster(&InitOptions::new(dir, 2)).unwrap_err();
        assert!(matches!(err, InitError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(tree(dir), before);
        // A single leftover node directory is enough to refuse.
        let other = tempfile::tempdir().unwrap();
        fs::create_dir(other.path().join("node-7")).unwrap();
        let err = init_cluster(&InitOptions::new(other.path(), 1)).unwrap_err();
        assert!(err.to_string().contains("node-7"), "{err}");
        // Unrelated files are fine.
        let third = tempfile::tempdir().unwrap();
        fs::write(third.path().join("README"), "x").unwrap();
        init_cluster(&InitOptions::new(third.path(), 1)).unwrap();
    }

    #[test]
    fn bad_options_are_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        for (opts, expected) in [
            (
                InitOptions::new(&dir, 0),
                "a cluster has 1 to 28 nodes, not 0",
            ),
            (
                InitOptions::new(&dir, 29),
                "a cluster has 1 to 28 nodes, not 29",
            ),
            (
                InitOptions {
                    host: String::new(),
                    ..InitOptions::new(&dir, 1)
                },
                "the host must not be empty",
            ),
            (
                InitOptions {
                    host: "0.0.0.0".into(),
                    ..InitOptions::new(&dir, 1)
                },
                "host \"0.0.0.0\" is neither",
            ),
            (
                InitOptions {
                    host: "bad host".into(),
                    ..InitOptions::new(&dir, 1)
                },
                "host \"bad host\" is neither",
            ),
            (
                InitOptions {
                    base_port: 65_535,
                    ..InitOptions::new(&dir, 2)
                },
                "node ports 65535 to 65536 do not fit",
            ),
        ] {
            let err = init_cluster(&opts).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err}");
            assert!(!dir.exists());
        }
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = init_cluster(&InitOptions::new(&file, 1)).unwrap_err();
        assert!(matches!(err, InitError::NotADirectory { .. }), "{err}");
    }

    #[test]
    fn a_failed_attempt_removes_what_it_created() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        {
            let mut created = Created::default();
            create_dir(&mut created, &dir).unwrap();
            write_new(&mut created, &dir.join("f"), b"x", 0o600).unwrap();
            // An existing file is never replaced, and not removed by the clean-up.
            fs::write(tmp.path().join("keep"), "k").unwrap();
            assert!(write_new(&mut created, &tmp.path().join("keep"), b"y", 0o600).is_err());
        }
        assert!(!tmp.path().join("a").exists());
        assert_eq!(fs::read(tmp.path().join("keep")).unwrap(), b"k");
        // A failure midway through init: node 2's directory is in the way of creation, but
        // only after the checks (simulated by a file where node-2/ goes, created late).
        let dir = tmp.path().join("c");
        let opts = InitOptions::new(&dir, 2);
        fs::create_dir(&dir).unwrap();
        let mut created = Created::default();
        let host = Host::parse(DEFAULT_HOST).unwrap();
        fs::write(dir.join("node-2"), "in the way").unwrap();
        assert!(write_cluster(&opts, &host, &mut created).is_err());
        drop(created);
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["node-2"], "only the file that was there before");
    }

    fn members_of(dir: &Path, ids: &[u32]) -> Vec<(u32, String)> {
        ids.iter()
            .map(|&id| {
                let cfg = NodeConfig::load(&dir.join(format!("node-{id}.toml"))).unwrap();
                (id, cfg.listen.to_string())
            })
            .collect()
    }

    #[test]
    fn an_added_node_gets_the_next_id_and_port_a_certificate_and_no_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init_cluster(&InitOptions {
            base_port: 4300,
            ..InitOptions::new(dir, 3)
        })
        .unwrap();
        let opts = AddNodeOptions {
            dir: dir.to_owned(),
            members: members_of(dir, &[1, 2, 3]),
            id: None,
            host: None,
            port: None,
        };
        let added = add_node_files(&opts).unwrap();
        assert_eq!((added.id, added.address.as_str()), (4, "127.0.0.1:4303"));
        added.keep();
        let cfg = NodeConfig::load(&dir.join("node-4.toml")).unwrap();
        assert!(cfg.join);
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:4303");
        assert_eq!(cfg.members.len(), 4);
        assert!(!dir.join("node-4/master.key").exists());
        assert!(!dir.join("node-4/store.redb").exists());
        assert_eq!(mode(&dir.join("node-4/node-key.pem")), 0o600);
        // The certificate chains to the cluster CA and names node 4.
        let node = cert(&dir.join("node-4/node.pem"));
        assert_eq!(crate::tls::peer_node_id(node.as_ref()), Some(4));
        crate::tls::server_config(&cfg.ca, &cfg.cert, &cfg.key).unwrap();

        // Node 4 removed (no longer a member): its id is still not reused.
        let again = add_node_files(&opts).unwrap();
        assert_eq!(again.id, 5);
        let taken = add_node_files(&AddNodeOptions {
            id: Some(4),
            ..opts.clone()
        })
        .unwrap_err();
        assert!(taken.to_string().contains("node id 4 is in use"), "{taken}");
        // Not kept: its files go away.
        drop(again);
        assert!(!dir.join("node-5").exists());
        assert!(!dir.join("node-5.toml").exists());
    }

    #[test]
    fn add_node_refuses_a_full_cluster_a_taken_address_and_a_missing_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        init_cluster(&InitOptions::new(dir, 1)).unwrap();
        let base = AddNodeOptions {
            dir: dir.to_owned(),
            members: members_of(dir, &[1]),
            id: None,
            host: None,
            port: None,
        };
        let full = AddNodeOptions {
            members: (1..=28)
                .map(|i| (i, format!("127.0.0.1:{}", 5000 + i)))
                .collect(),
            ..base.clone()
        };
        let err = add_node_files(&full).unwrap_err().to_string();
        assert!(err.contains("28 nodes"), "{err}");
        let port = base.members[0]
            .1
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap();
        let err = add_node_files(&AddNodeOptions {
            port: Some(port),
            ..base.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("already a member's address"), "{err}");
        let before = tree(dir);
        fs::rename(dir.join("ca-key.pem"), dir.join("moved")).unwrap();
        let err = add_node_files(&base).unwrap_err().to_string();
        assert!(err.contains("ca-key.pem"), "{err}");
        fs::rename(dir.join("moved"), dir.join("ca-key.pem")).unwrap();
        assert_eq!(tree(dir), before, "nothing written");
    }

    #[test]
    fn passwords_use_the_whole_alphabet() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let p = preco_password(Path::new("p")).unwrap();
            assert_eq!(p.len(), PRECO_PASSWORD_LEN);
            seen.extend(p.bytes());
        }
        assert_eq!(seen.len(), 62);
    }
}
