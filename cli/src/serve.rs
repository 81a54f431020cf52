//! `sealgate serve`: the proxy, with its HSM cluster remote (a client.toml) or embedded (the
//! nodes run as child processes of serve), until SIGTERM or SIGINT.
//!
//! `sealgate serve --dev` needs no input: it creates (or reuses) `./sealgate-data` with a
//! 3-node embedded cluster, a crypto user `proxy`, an ECDSA P-256 key in the HSM and a
//! self-signed certificate signed by that key, starts a demo upstream, and serves HTTPS on
//! 127.0.0.1:8443 in front of it.

use crate::credentials::connect_as;
use crate::embedded::Embedded;
use crate::node::init_cluster;
use crate::output::{Report, error};
use anyhow::Context as _;
use clap::Args;
use sealgate_config::{Config, HsmMode};
use sealgate_hsm_client::{Client, ClientConfig, ClientError, Credentials};
use sealgate_hsm_proto::{AttributeValue, Curve, ErrorKind, KeySpec, Reply, Request, Role, Secret};
use sealgate_proxy::Proxy;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// `sealgate serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (see README: [proxy], [hsm], [logging]).
    #[arg(long, value_name = "FILE", required_unless_present = "dev")]
    pub(crate) config: Option<PathBuf>,
    /// Development mode, no input needed: creates or reuses ./sealgate-data (a 3-node embedded
    /// HSM cluster, a crypto user, a P-256 key in the HSM, a certificate it signed) and serves
    /// HTTPS on 127.0.0.1:8443 in front of a built-in demo upstream.
    #[arg(long, conflicts_with = "config")]
    pub(crate) dev: bool,
    /// With --dev: the data directory.
    #[arg(long, value_name = "DIR", default_value = "sealgate-data")]
    pub(crate) data_dir: PathBuf,
    /// With --dev: where to serve HTTPS.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub(crate) listen: SocketAddr,
    /// With --dev: where to serve metrics (`/metrics` for the proxy and its nodes, `/healthz`,
    /// `/readyz`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub(crate) metrics: SocketAddr,
}

/// The dev key's label.
const DEV_KEY_LABEL: &str = "sealgate-dev";
/// The dev crypto user.
const DEV_USER: &str = "proxy";
/// The crypto officer `cluster init` names.
const OFFICER: &str = "admin";
/// How long setup steps wait for the cluster (an election after the nodes start).
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `sealgate serve` until SIGTERM or SIGINT.
pub(crate) fn run(args: &ServeArgs) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sealgate-serve")
        .build()
        .map_err(|e| error("failed", format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        if args.dev {
            // --dev's configuration logs readable lines to standard error at `info`.
            let _log = sealgate_monitoring::logging::init(
                &sealgate_config::RawConfig::default().logging.level,
                sealgate_config::LogFormat::Pretty,
                None,
            )
            .map_err(|e| error("config", e))?;
            dev(args).await
        } else {
            let file = args.config.clone().context("--config FILE is needed")?;
            let config = sealgate_config::load(&file, std::env::vars())
                .map_err(|e| error("config", e.to_string()))?;
            let logging = &config.logging;
            let _log = sealgate_monitoring::logging::init(
                &logging.level,
                logging.format,
                logging.file.as_ref().map(|(f, r)| (f.as_path(), *r)),
            )
            .map_err(|e| error("config", e))?;
            serve(config, None, None).await
        }
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(Report::human_only("sealgate serve stopped".to_owned()))
}

/// Prints a line on stdout at once (serve runs until stopped).
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// Reads a password file (mode 0600 or stricter expected), without its final newline.
fn read_password(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| error("config", format!("{}: {e}", path.display())))?,
    );
    Ok(Zeroizing::new(
        text.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

/// Writes a new secret file (mode 0600), never replacing one.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A new random password (32 hex digits).
fn new_password() -> anyhow::Result<Zeroizing<String>> {
    let bytes = Zeroizing::new(
        sealgate_hsm_crypto::random_bytes(16).map_err(|e| anyhow::anyhow!("random: {e}"))?,
    );
    Ok(Zeroizing::new(hex::encode(&bytes[..])))
}

/// Connects as `user`, retrying while the cluster elects a leader.
async fn connect_retrying(
    config: &ClientConfig,
    credentials: Option<(&str, &str)>,
) -> anyhow::Result<Client> {
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        let creds = credentials.map(|(u, p)| Credentials::new(u, Secret::new(p.to_owned())));
        match connect_as(config.clone(), creds).await {
            Ok(client) => return Ok(client),
            Err(e) if tokio::time::Instant::now() < deadline && !login_refused(&e) => {
                tracing::debug!("waiting for the HSM cluster: {e:#}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn login_refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<ClientError>().is_some_and(|c| {
            matches!(
                c.kind(),
                Some(ErrorKind::LoginFailed | ErrorKind::UserLocked)
            )
        })
    })
}

/// Sends a setup write, retrying while the cluster has no leader. `done_if` says which
/// refusal means the write was already made (a re-run).
async fn setup_write(
    client: &Client,
    request: Request,
    done_if: Option<ErrorKind>,
) -> anyhow::Result<Option<Reply>> {
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        match client.call(request.clone()).await {
            Ok(reply) => return Ok(Some(reply)),
            Err(e) if done_if.is_some() && e.kind() == done_if => return Ok(None),
            Err(e)
                if matches!(e.kind(), Some(ErrorKind::Unavailable | ErrorKind::Busy))
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A port P with P, P+1 and P+2 free on 127.0.0.1, from a random starting point between 22250
/// and 29999 (so that two dev setups made at once rarely pick the same).
fn free_base_port() -> anyhow::Result<u16> {
    const FIRST: u16 = 22_250;
    const SLOTS: u16 = 2_583; // (30000 - 22250) / 3
    let start = sealgate_hsm_crypto::random_bytes(2)
        .ok()
        .and_then(|b| <[u8; 2]>::try_from(b.as_slice()).ok())
        .map_or(0, |b| u16::from_le_bytes(b) % SLOTS);
    for k in 0..SLOTS {
        let base = FIRST + ((start + k) % SLOTS) * 3;
        let free = (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return Ok(base);
        }
    }
    anyhow::bail!("no three free consecutive ports between 22250 and 30000 on 127.0.0.1")
}

/// Creates what is missing in the dev data directory: the cluster (started), its activation,
/// the crypto user, the key and the certificate. Returns what it did, for the summary.
async fn dev_setup(
    dir: &Path,
    cluster: &Path,
    metrics: bool,
) -> anyhow::Result<(Embedded, Vec<String>)> {
    let mut done = Vec::new();
    if !cluster.join("client.toml").exists() {
        let base = free_base_port()?;
        init_cluster(cluster.to_owned(), 3, "127.0.0.1".into(), base)?;
        done.push(format!(
            "created a 3-node HSM cluster in {} (nodes on 127.0.0.1:{base}-{})",
            cluster.display(),
            base + 2
        ));
    } else {
        done.push(format!("reused the HSM cluster in {}", cluster.display()));
    }
    let embedded = Embedded::start(cluster, metrics).await?;
    let client_config = ClientConfig::load(&cluster.join("client.toml"))
        .map_err(|e| error("config", e.to_string()))?;

    let co_file = dir.join("officer-password");
    if !co_file.exists() {
        let preco = read_password(&cluster.join("preco-password"))?;
        let officer = new_password()?;
        let client = connect_retrying(&client_config, Some((OFFICER, &preco))).await?;
        let activated = setup_write(
            &client,
            Request::Activate {
                new_password: Secret::new(officer.to_string()),
            },
            Some(ErrorKind::WrongClusterState),
        )
        .await;
        client.close().await;
        activated?;
        write_secret(&co_file, &officer)?;
        done.push(format!(
            "activated the cluster (crypto officer \"{OFFICER}\", password in {})",
            co_file.display()
        ));
    }
    let user_file = dir.join("proxy-password");
    if !user_file.exists() {
        let officer = read_password(&co_file)?;
        let password = new_password()?;
        let client = connect_retrying(&client_config, Some((OFFICER, &officer))).await?;
        let created = setup_write(
            &client,
            Request::CreateUser {
                name: DEV_USER.into(),
                role: Role::CryptoUser,
                password: Secret::new(password.to_string()),
            },
            None,
        )
        .await;
        client.close().await;
        created?;
        write_secret(&user_file, &password)?;
        done.push(format!(
            "created the crypto user \"{DEV_USER}\" (password in {})",
            user_file.display()
        ));
    }
    let cert_file = dir.join("dev-cert.pem");
    if !cert_file.exists() {
        let password = read_password(&user_file)?;
        let client = connect_retrying(&client_config, Some((DEV_USER, &password))).await?;
        let made = dev_key_and_cert(&client, &cert_file).await;
        client.close().await;
        let handle = made?;
        done.push(format!(
            "generated an ECDSA P-256 key in the HSM (label \"{DEV_KEY_LABEL}\", handle {handle})"
        ));
        done.push(format!(
            "wrote {}: a self-signed certificate for localhost and 127.0.0.1, signed by that key",
            cert_file.display()
        ));
    } else {
        done.push(format!(
            "reused the key \"{DEV_KEY_LABEL}\" and {}",
            cert_file.display()
        ));
    }
    Ok((embedded, done))
}

/// Generates the dev key and its self-signed certificate; returns the private key's handle.
async fn dev_key_and_cert(client: &Client, cert_file: &Path) -> anyhow::Result<u64> {
    let reply = setup_write(
        client,
        Request::GenerateKeyPair {
            spec: KeySpec::Ec(Curve::P256),
            public: vec![
                AttributeValue::new("verify", "true"),
                AttributeValue::new("label", DEV_KEY_LABEL),
            ],
            private: vec![
                AttributeValue::new("sign", "true"),
                AttributeValue::new("label", DEV_KEY_LABEL),
            ],
        },
        None,
    )
    .await?;
    let Some(Reply::KeysCreated(handles)) = reply else {
        anyhow::bail!("unexpected answer to key generation");
    };
    let private = *handles.get(1).context("no private key handle")?;
    let key = crate::cert::HsmCertKey::new(client, private).await?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let pem = crate::cert::self_signed(key, names, 365).await?;
    std::fs::write(cert_file, pem)
        .with_context(|| format!("cannot write {}", cert_file.display()))?;
    Ok(private)
}

/// `serve --dev`.
async fn dev(args: &ServeArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.clone();
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let cluster = dir.join("cluster");
    let (embedded, mut done) = dev_setup(&dir, &cluster, true).await?;
    let demo_stop = CancellationToken::new();
    let demo = sealgate_proxy::demo::serve("127.0.0.1:0".parse()?, demo_stop.clone())
        .await
        .context("cannot start the demo upstream")?;
    done.push(format!("started the demo upstream on http://{demo}"));
    let config_file = dir.join("sealgate.toml");
    let text = format!(
        "# Written by `sealgate serve --dev` at every start (the demo upstream's port changes).\n\
         # The same settings serve a real site: see README.md.\n\n\
         [[proxy.listeners]]\nbind = \"{}\"\n\n\
         [[proxy.listeners.certificates]]\nchain = \"dev-cert.pem\"\nkey = {{ label = \"{DEV_KEY_LABEL}\" }}\n\n\
         [[proxy.routes]]\npath_prefix = \"/\"\npool = \"demo\"\n\n\
         [[proxy.pools]]\nname = \"demo\"\nservers = [\"{demo}\"]\n\n\
         [hsm]\nmode = \"embedded\"\ndata_dir = \"cluster\"\nuser = \"{DEV_USER}\"\npassword_file = \"proxy-password\"\n\n\
         [monitoring]\nmetrics_bind = \"{}\"\n",
        args.listen, args.metrics
    );
    std::fs::write(&config_file, text)
        .with_context(|| format!("cannot write {}", config_file.display()))?;
    let config = sealgate_config::load(&config_file, std::env::vars())
        .map_err(|e| error("config", e.to_string()))?;
    let mut summary = vec![format!("sealgate serve --dev ({})", dir.display())];
    summary.extend(done.into_iter().map(|d| format!("  - {d}")));
    let result = serve(config, Some(embedded), Some(summary)).await;
    demo_stop.cancel();
    result
}

/// Serves `config` until SIGTERM or SIGINT. `embedded` is the already running cluster (dev);
/// otherwise an embedded configuration starts its nodes here.
async fn serve(
    config: Config,
    embedded: Option<Embedded>,
    summary: Option<Vec<String>>,
) -> anyhow::Result<()> {
    let (embedded, client_file) = match &config.hsm.mode {
        HsmMode::Remote { client_config } => (None, client_config.clone()),
        HsmMode::Embedded { data_dir } => {
            let running = match embedded {
                Some(e) => e,
                None => {
                    let metrics =
                        config.monitoring.metrics_bind.is_some() || config.monitoring.emf.is_some();
                    Embedded::start(data_dir, metrics).await?
                }
            };
            (Some(running), data_dir.join("client.toml"))
        }
    };
    let result = serve_with(&config, &client_file, embedded.as_ref(), summary).await;
    if let Some(e) = embedded {
        e.stop().await;
    }
    result
}

async fn serve_with(
    config: &Config,
    client_file: &Path,
    embedded: Option<&Embedded>,
    summary: Option<Vec<String>>,
) -> anyhow::Result<()> {
    let password = match (&config.hsm.password, &config.hsm.password_file) {
        (Some(p), _) => p.clone(),
        (None, Some(file)) => read_password(file)?,
        (None, None) => return Err(error("config", "no HSM password")),
    };
    let client_config =
        ClientConfig::load(client_file).map_err(|e| error("config", e.to_string()))?;
    let client = connect_retrying(&client_config, Some((&config.hsm.user, &password))).await?;
    let proxy = match Proxy::start(config, client.clone()).await {
        Ok(p) => p,
        Err(e) => {
            client.close().await;
            return Err(error("config", e.to_string()));
        }
    };
    let mut lines = summary.unwrap_or_default();
    for addr in proxy.local_addrs() {
        lines.push(format!("sealgate serve listening on https://{addr}"));
    }
    let metrics_stop = CancellationToken::new();
    let mut emf_task = None;
    if config.monitoring.metrics_bind.is_some() || config.monitoring.emf.is_some() {
        let exposition = match exposition(&proxy, &client, embedded) {
            Ok(e) => e,
            Err(e) => {
                proxy.shutdown().await;
                client.close().await;
                return Err(e);
            }
        };
        if let Some(bind) = config.monitoring.metrics_bind {
            let endpoint = sealgate_monitoring::exporter::serve(
                bind,
                std::sync::Arc::clone(&exposition),
                metrics_stop.clone(),
            )
            .await;
            match endpoint {
                Ok(endpoint) => lines.push(format!(
                    "sealgate serve metrics on http://{}",
                    endpoint.local_addr()
                )),
                Err(e) => {
                    proxy.shutdown().await;
                    client.close().await;
                    return Err(error("failed", e.to_string()));
                }
            }
        }
        if let Some(emf) = &config.monitoring.emf {
            lines.push(format!(
                "CloudWatch EMF every {:?} to {}",
                emf.flush_interval,
                emf.path.display()
            ));
            emf_task = Some(tokio::spawn(sealgate_monitoring::emf::run(
                emf.clone(),
                exposition,
                metrics_stop.clone(),
            )));
        }
    }
    if let Some(e) = embedded {
        let pids: Vec<String> = e
            .pids()
            .iter()
            .map(|(id, pid)| format!("node {id}: pid {pid}"))
            .collect();
        lines.push(format!(
            "HSM nodes (children of this process): {}",
            pids.join(", ")
        ));
    }
    if config.listeners.len() == 1
        && let Some(addr) = proxy.local_addrs().first()
        && let Some(cert) = config
            .listeners
            .first()
            .and_then(|l| l.certificates.first())
    {
        lines.push(format!(
            "try: curl --cacert {} https://localhost:{}/",
            cert.chain.display(),
            addr.port()
        ));
    }
    say(&lines.join("\n"));
    // SIGHUP reloads the file; SIGTERM and SIGINT stop.
    while let Signal::Reload = wait_for_signal().await {
        reload(config, &proxy).await;
    }
    tracing::info!("shutting down");
    metrics_stop.cancel();
    if let Some(task) = emf_task {
        // The last interval's counts are written as the writer stops.
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    proxy.shutdown().await;
    client.close().await;
    Ok(())
}

/// Installs the metrics recorder; returns what the metrics endpoint and the EMF writer render:
/// the proxy's metrics, the client SDK's per node, and the embedded nodes' own, merged; ready
/// (`/readyz`) when at least one HSM node is up (the listeners are, once the proxy started).
fn exposition(
    proxy: &Proxy,
    client: &Client,
    embedded: Option<&Embedded>,
) -> anyhow::Result<std::sync::Arc<sealgate_monitoring::exporter::Exposition>> {
    use sealgate_monitoring::exporter::{self, Exposition};
    use sealgate_monitoring::names as n;
    let handle = exporter::install(&[]).map_err(|e| error("failed", e.to_string()))?;
    let refresh_proxy = proxy.metrics_refresher();
    let sdk = client.clone();
    let on_scrape = std::sync::Arc::new(move || {
        refresh_proxy();
        for node in sdk.nodes() {
            let id = node.id.to_string();
            metrics::counter!(n::HSM_CLIENT_RETRIES.name, "hsm_id" => id.clone())
                .absolute(node.retries);
            metrics::counter!(n::HSM_CLIENT_FAILOVERS.name, "hsm_id" => id)
                .absolute(node.failovers);
        }
    });
    let sdk = client.clone();
    let ready = std::sync::Arc::new(move || {
        if sdk.nodes().iter().any(|node| node.up) {
            Ok(())
        } else {
            Err("no HSM node is up".to_owned())
        }
    });
    let mut exposition = Exposition::new(handle, on_scrape, ready);
    if let Some(e) = embedded {
        exposition = exposition.with_children(std::sync::Arc::new(e.metrics_endpoints()));
    }
    Ok(std::sync::Arc::new(exposition))
}

/// What a signal asks for.
enum Signal {
    Reload,
    Stop,
}

async fn wait_for_signal() -> Signal {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return Signal::Stop;
    };
    tokio::select! {
        _ = term.recv() => Signal::Stop,
        _ = int.recv() => Signal::Stop,
        _ = hup.recv() => Signal::Reload,
    }
}

/// Reads the configuration file again and applies it; on any error the running configuration
/// stays and the error is logged with the file and key.
async fn reload(running: &Config, proxy: &Proxy) {
    let config = match sealgate_config::load(&running.file, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays: {e}");
            return;
        }
    };
    if config.hsm != running.hsm {
        tracing::warn!(
            "the [hsm] section changed: that takes a restart; applying the rest of the file"
        );
    }
    match proxy.reload(&config).await {
        Ok(()) => tracing::info!(file = %running.file.display(), "reloaded on SIGHUP"),
        Err(e) => tracing::error!("reload refused, the running configuration stays: {e}"),
    }
}
