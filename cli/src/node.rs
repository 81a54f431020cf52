//! The two places where the binary calls into the node crate: `sealgate node` (run one node
//! until SIGTERM/SIGINT) and the file generation behind `sealgate cluster init`.

use crate::output::{Report, error};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;

/// `sealgate node --config FILE`.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The node's `node.toml` (`cluster init` writes one per node).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: PathBuf,
}

/// Runs one HSM node until SIGTERM or SIGINT. The node prints
/// `sealgate node ID listening on ADDRESS` once it listens.
///
/// JSON (`--output json`, when the node stops cleanly): `{"node": id, "stopped": true}`.
pub(crate) fn run(args: &NodeArgs) -> anyhow::Result<Report> {
    let config = sealgate_hsm_node::NodeConfig::load(&args.config)
        .map_err(|e| error("config", e.to_string()))?;
    let id = config.id;
    sealgate_hsm_node::run(config).map_err(|e| error("failed", e.to_string()))?;
    Ok(Report::new(
        json!({"node": id, "stopped": true}),
        format!("sealgate node {id} stopped"),
    ))
}

/// What `cluster init` made.
#[derive(Debug)]
pub(crate) struct InitSummary {
    /// The new cluster's id (hex).
    pub(crate) cluster_id: String,
    /// The clients' `client.toml`.
    pub(crate) client_config: PathBuf,
    /// One `node.toml` per node, by node id.
    pub(crate) node_configs: Vec<PathBuf>,
    /// The file holding the PRECO's one-time password.
    pub(crate) preco_password_file: PathBuf,
    /// The cluster CA certificate.
    pub(crate) ca_cert: PathBuf,
}

/// Writes a new cluster's CA, certificates and configuration files under `dir`.
pub(crate) fn init_cluster(
    dir: PathBuf,
    nodes: u32,
    host: String,
    base_port: u16,
) -> anyhow::Result<InitSummary> {
    use sealgate_hsm_node::init::{InitOptions, init_cluster};
    let report = init_cluster(&InitOptions {
        dir,
        nodes,
        host,
        base_port,
    })
    .map_err(|e| error("failed", e.to_string()))?;
    Ok(InitSummary {
        cluster_id: report.cluster_id,
        client_config: report.client_config,
        node_configs: report.node_configs,
        preco_password_file: report.preco_password_file,
        ca_cert: report.ca_cert,
    })
}
