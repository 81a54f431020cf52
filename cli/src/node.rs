//! The two places where the binary calls into the node crate: `sealgate node` (run one node
//! until SIGTERM/SIGINT) and the file generation behind `sealgate cluster init`.

use crate::output::{Report, error};
use clap::Args;
use sealgate_hsm_node::init::{self, InitReport};
use std::path::PathBuf;

/// `sealgate node --config FILE`.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The node's `node.toml` (`cluster init` writes one per node).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: PathBuf,
    /// Also stop when standard input closes (`sealgate serve` starts its embedded nodes so:
    /// they end with it even if it is killed).
    #[arg(long)]
    pub(crate) stop_on_stdin_eof: bool,
    /// Serve the node's metrics (`/metrics`, `/healthz`, `/readyz`) on ADDR, instead of
    /// `[monitoring] metrics_bind` of node.toml (port 0: a free port, printed as
    /// `sealgate node ID metrics on http://ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_bind: Option<std::net::SocketAddr>,
}

/// Runs one HSM node until SIGTERM or SIGINT. The node prints
/// `sealgate node ID listening on ADDRESS` on stdout once it listens, in both output formats:
/// that line is the node's lifetime output, the one supervisors wait for.
///
/// `--output json` covers startup errors only (`{"ok": false, …}` when the configuration,
/// store, certificates or address are unusable); a clean stop prints nothing more on stdout
/// in JSON, so stdout never mixes the text line with a JSON object. People get
/// `sealgate node ID stopped`.
pub(crate) fn run(args: &NodeArgs) -> anyhow::Result<Report> {
    let mut config = sealgate_hsm_node::NodeConfig::load(&args.config)
        .map_err(|e| error("config", e.to_string()))?;
    if args.metrics_bind.is_some() {
        config.metrics_bind = args.metrics_bind;
    }
    let l = &config.logging;
    let rotation = match l.rotation.as_str() {
        "hourly" => sealgate_config::Rotation::Hourly,
        "never" => sealgate_config::Rotation::Never,
        _ => sealgate_config::Rotation::Daily,
    };
    let format = if l.json {
        sealgate_config::LogFormat::Json
    } else {
        sealgate_config::LogFormat::Pretty
    };
    let _log = sealgate_monitoring::logging::init(
        &l.level,
        format,
        l.file.as_deref().map(|f| (f, rotation)),
    )
    .map_err(|e| error("config", e))?;
    let id = config.id;
    sealgate_hsm_node::run_with(config, args.stop_on_stdin_eof)
        .map_err(|e| error("failed", e.to_string()))?;
    Ok(Report::human_only(format!("sealgate node {id} stopped")))
}

/// Writes a new cluster's CA, certificates and configuration files under `dir`.
pub(crate) fn init_cluster(
    dir: PathBuf,
    nodes: u32,
    host: String,
    base_port: u16,
) -> anyhow::Result<InitReport> {
    init::init_cluster(&init::InitOptions {
        dir,
        nodes,
        host,
        base_port,
    })
    .map_err(|e| error("failed", e.to_string()))
}
