//! `sealgate cluster init|activate|status|add-node|remove-node`: create a cluster's files, turn
//! the PRECO into the first crypto officer, show each node's health, and grow or shrink the
//! cluster while it runs.

use crate::credentials::{
    self, ENV_CLUSTER, On, Target, Tty, connect_as, load_config, new_password, password,
    password_from_file, process_env,
};
use crate::node;
use crate::output::{self, Report, error};
use clap::{Args, Subcommand};
use sealgate_hsm_client::{Client, ClientError, Credentials};
use sealgate_hsm_node::init::{self, InitReport};
use sealgate_hsm_proto::{ClusterInfo, ErrorKind, Health, Member, Reply, Request};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The PRECO's user name, fixed at initialization.
const PRECO: &str = "admin";

/// `sealgate cluster …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Create a new cluster's CA, node certificates and configuration files.
    ///
    /// With --nodes above 1 the nodes replicate (openraft): each node's config lists every
    /// member, and the node with the smallest id starts the group.
    ///
    /// JSON data: {"cluster_id", "dir", "ca_cert", "client_config", "node_configs": [..],
    /// "preco_password_file", "next_steps": [..]}. The PRECO password itself is
    /// never printed.
    Init(InitArgs),
    /// Activate the cluster: log in as the PRECO "admin" with the one-time password and set the
    /// new crypto-officer password (one node takes it; replication brings it to the others).
    ///
    /// One-time password: --password-file FILE, else SEALGATE_PASSWORD, else a prompt. New
    /// password: SEALGATE_NEW_PASSWORD, else a prompt asked twice.
    ///
    /// JSON data: {"nodes": [{"id", "result": "activated" | "already-activated"}]}.
    Activate(ActivateArgs),
    /// Show every node's health and cluster information (no login needed).
    ///
    /// JSON data: {"cluster_id", "nodes": [{"id", "address", "up", "lag", "health": {"role",
    /// "applied_index", "sessions", "connections", "queued", "writable", "leader", "term"} |
    /// null, "info": {"cluster_id",
    /// "initialized", "activated", "users", "keys", "applied_index"} | null, "error": text |
    /// null}]}.
    ///
    /// The nodes are those of the cluster's membership (as the nodes report it), so nodes
    /// added or removed since client.toml was written are shown as they are now.
    Status,
    /// Add a node to the running cluster (as a crypto officer).
    ///
    /// Writes DIR/node-N.toml and DIR/node-N/ with the node's certificate (signed with
    /// DIR/ca-key.pem); no domain key and no store: the node gets both from the cluster. Then
    /// adds node N to the cluster as a learner. Start it with `sealgate node --config
    /// DIR/node-N.toml`: it asks the members for the domain key over mutual TLS, receives the
    /// cluster's keys, users and policies as a snapshot, and becomes a voter once it has caught
    /// up. Clients learn of it from the nodes (client.toml needs no change).
    ///
    /// Password: SEALGATE_PASSWORD, else a prompt.
    /// JSON data: {"id", "address", "config", "members": [{"id", "address", "voter"}],
    /// "next_steps": [..]}.
    AddNode(AddNodeArgs),
    /// Remove a node from the running cluster (as a crypto officer).
    ///
    /// The node stops receiving the cluster's changes and refuses clients; stop it and delete
    /// its data directory. Its id is never given to another node.
    ///
    /// Password: SEALGATE_PASSWORD, else a prompt.
    /// JSON data: {"id", "members": [{"id", "address", "voter"}]}.
    RemoveNode(RemoveNodeArgs),
}

/// `cluster add-node`.
#[derive(Debug, Args)]
pub(crate) struct AddNodeArgs {
    /// The cluster's directory (written by `cluster init`; holds ca-key.pem). Default: the
    /// directory of the cluster's client.toml.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// The new node's id. Default: one above every id in use or used before.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub(crate) id: Option<u32>,
    /// The host the node listens on and is reached at. Default: the newest member's host.
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// The node's port. Default: one above the highest port of the members on that host.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) port: Option<u16>,
}

/// `cluster remove-node`.
#[derive(Debug, Args)]
pub(crate) struct RemoveNodeArgs {
    /// The node's id.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub(crate) id: u32,
}

/// `cluster init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Directory for the files (created; must not hold a cluster already).
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// Number of nodes (1–28). Above 1, the nodes do not replicate yet (see above).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=28))]
    pub(crate) nodes: u32,
    /// Address the nodes listen on and clients connect to.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port of node 1; node N listens on base-port + N - 1.
    #[arg(long, default_value_t = sealgate_hsm_proto::DEFAULT_PORT)]
    pub(crate) base_port: u16,
}

/// `cluster activate`.
#[derive(Debug, Args)]
pub(crate) struct ActivateArgs {
    /// File holding the PRECO's one-time password (`cluster init` writes DIR/preco-password).
    #[arg(long, value_name = "FILE")]
    pub(crate) password_file: Option<PathBuf>,
}

/// Runs `cluster activate` or `cluster status` (`init` runs without a runtime: [`init`]).
pub(crate) async fn run(command: ClusterCommand, target: &Target) -> anyhow::Result<Report> {
    match command {
        ClusterCommand::Init(args) => init(args),
        ClusterCommand::Activate(args) => activate(&args, target).await,
        ClusterCommand::Status => status(target).await,
        ClusterCommand::AddNode(args) => add_node(&args, target).await,
        ClusterCommand::RemoveNode(args) => remove_node(&args, target).await,
    }
}

fn members_json(members: &[Member]) -> Value {
    Value::Array(
        members
            .iter()
            .map(|m| json!({"id": m.id, "address": m.address, "voter": m.voter}))
            .collect(),
    )
}

fn members_text(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| {
            format!(
                "node {} {} ({})",
                m.id,
                m.address,
                if m.voter { "voter" } else { "learner" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sends a membership change and returns the membership after it.
async fn change_membership(client: &Client, request: Request) -> anyhow::Result<Vec<Member>> {
    match credentials::call(client, On::Any, request).await? {
        Reply::Members(members) => Ok(members),
        other => Err(credentials::unexpected(&other)),
    }
}

async fn add_node(args: &AddNodeArgs, target: &Target) -> anyhow::Result<Report> {
    let cluster_file = credentials::cluster_file(target.cluster.as_deref(), &process_env)?;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => cluster_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned),
    };
    let client = credentials::connect_user(target).await?;
    let result = add_node_with(&client, args, dir).await;
    credentials::finish(client).await;
    result
}

async fn add_node_with(
    client: &Client,
    args: &AddNodeArgs,
    dir: PathBuf,
) -> anyhow::Result<Report> {
    let members = match credentials::call(client, On::Any, Request::Health).await? {
        Reply::Health(h) => h.members,
        other => return Err(credentials::unexpected(&other)),
    };
    let added = init::add_node_files(&init::AddNodeOptions {
        dir,
        members: members.iter().map(|m| (m.id, m.address.clone())).collect(),
        id: args.id,
        host: args.host.clone(),
        port: args.port,
    })
    .map_err(|e| error("invalid-input", e.to_string()))?;
    let request = Request::AddNode {
        id: added.id,
        address: added.address.clone(),
    };
    let (id, address, config) = (added.id, added.address.clone(), added.config.clone());
    let members = match change_membership(client, request).await {
        Ok(members) => members,
        // No answer: the node may have been added, so its files stay.
        Err(e) if outcome_unknown(&e) => {
            added.keep();
            return Err(e.context(format!(
                "node {id} may or may not have been added; its files are kept ({}): if \
                 `cluster status` lists node {id}, start it, else delete them",
                config.display()
            )));
        }
        // Refused: dropping `added` removes the files it wrote.
        Err(e) => return Err(e),
    };
    added.keep();
    let start = format!("sealgate node --config {}", config.display());
    let mut text = format!("node {id} added to the cluster as a learner at {address}\n");
    let _ = writeln!(text, "  config   {}", config.display());
    let _ = writeln!(text, "  members  {}", members_text(&members));
    let _ = writeln!(
        text,
        "next step: start it (it gets the domain key and the cluster's state from the members, \
         then becomes a voter):"
    );
    let _ = write!(text, "  {start}");
    Ok(Report::new(
        json!({
            "id": id,
            "address": address,
            "config": config.display().to_string(),
            "members": members_json(&members),
            "next_steps": [start],
        }),
        text,
    ))
}

/// Whether a request failed without an answer (it may have been applied).
fn outcome_unknown(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ClientError>(),
            Some(ClientError::Interrupted { .. } | ClientError::Timeout { .. })
        )
    })
}

async fn remove_node(args: &RemoveNodeArgs, target: &Target) -> anyhow::Result<Report> {
    let client = credentials::connect_user(target).await?;
    let result = change_membership(&client, Request::RemoveNode { id: args.id }).await;
    credentials::finish(client).await;
    let members = result?;
    let text = format!(
        "node {} removed from the cluster\n  members {}\nnext step: stop node {} and delete its \
         data directory (it holds the cluster's keys, sealed under the domain key)",
        args.id,
        members_text(&members),
        args.id
    );
    Ok(Report::new(
        json!({"id": args.id, "members": members_json(&members)}),
        text,
    ))
}

/// `cluster init`.
pub(crate) fn init(args: InitArgs) -> anyhow::Result<Report> {
    let dir = args.dir.clone();
    let made = node::init_cluster(args.dir, args.nodes, args.host, args.base_port)?;
    Ok(init_report(&dir, &made))
}

/// What `cluster init` prints about the files `made` under `dir`.
fn init_report(dir: &Path, made: &InitReport) -> Report {
    let paths = |p: &[PathBuf]| {
        p.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
    };
    let start: Vec<String> = made
        .node_configs
        .iter()
        .map(|c| format!("sealgate node --config {}", c.display()))
        .collect();
    let activate = format!(
        "{ENV_CLUSTER}={} sealgate cluster activate --password-file {}",
        made.client_config.display(),
        made.preco_password_file.display()
    );
    let mut next_steps = start.clone();
    next_steps.push(activate.clone());
    let data = json!({
        "cluster_id": made.cluster_id,
        "dir": dir.display().to_string(),
        "ca_cert": made.ca_cert.display().to_string(),
        "client_config": made.client_config.display().to_string(),
        "node_configs": paths(&made.node_configs),
        "preco_password_file": made.preco_password_file.display().to_string(),
        "next_steps": next_steps,
    });
    let mut text = format!(
        "initialized cluster {} in {}\n",
        made.cluster_id,
        dir.display()
    );
    let _ = writeln!(text, "  CA certificate   {}", made.ca_cert.display());
    let _ = writeln!(text, "  client config    {}", made.client_config.display());
    for (i, c) in made.node_configs.iter().enumerate() {
        let _ = writeln!(text, "  node {} config    {}", i + 1, c.display());
    }
    let _ = writeln!(
        text,
        "  PRECO password   in {} (one-time; user \"{PRECO}\")",
        made.preco_password_file.display()
    );
    let _ = writeln!(text, "next steps:");
    let _ = writeln!(
        text,
        "  1. start each node (each in its own terminal or service):"
    );
    for s in &start {
        let _ = writeln!(text, "       {s}");
    }
    let _ = writeln!(
        text,
        "  2. activate the cluster (sets the crypto officer's password):"
    );
    let _ = writeln!(text, "       {activate}");
    Report::new(data, text)
}

/// What activation did on one node.
fn node_failure(id: u32, e: &ClientError) -> (&'static str, String) {
    (output::client_error_kind(e), format!("node {id}: {e}"))
}

fn is_login_failure(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ClientError>()
        .is_some_and(|c| c.kind() == Some(ErrorKind::LoginFailed))
}

/// Whether a node answers that the cluster is activated (no login needed).
async fn already_activated(config: sealgate_hsm_client::ClientConfig) -> bool {
    let Ok(client) = connect_as(config, None).await else {
        return false;
    };
    let activated = matches!(
        client.call(Request::Info).await,
        Ok(Reply::Info(ClusterInfo {
            activated: true,
            ..
        }))
    );
    client.close().await;
    activated
}

async fn activate(args: &ActivateArgs, target: &Target) -> anyhow::Result<Report> {
    let config = load_config(target)?;
    let ids: Vec<u32> = config.nodes.iter().map(|n| n.id).collect();
    let one_time = match &args.password_file {
        Some(path) => password_from_file(path)?,
        None => password(PRECO, &process_env, &Tty)?,
    };
    let new = new_password("the crypto officer \"admin\"", &process_env, &Tty)?;
    let client = match connect_as(config.clone(), Some(Credentials::new(PRECO, one_time))).await {
        Ok(client) => client,
        Err(e) if is_login_failure(&e) && already_activated(config).await => {
            return Err(e.context(
                "the cluster is already activated: the one-time password works no more; \
                 \"admin\" is a crypto officer with the password set then",
            ));
        }
        Err(e) => return Err(e),
    };
    // The nodes replicate: one node takes the activation (the first that can; while a leader
    // is being elected, writes are answered `unavailable` for a moment).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut last_failure = None;
    let result = 'activation: loop {
        for &id in &ids {
            let request = Request::Activate {
                new_password: new.clone(),
            };
            match client.call_on(id, request).await {
                Ok(Reply::Done) => break 'activation (id, "activated"),
                Ok(other) => {
                    client.close().await;
                    return Err(error(
                        "failed",
                        format!("node {id}: {}", credentials::unexpected(&other)),
                    ));
                }
                Err(e) if e.kind() == Some(ErrorKind::WrongClusterState) => {
                    // Already activated (a re-run)?
                    if let Ok(Reply::Info(info)) = client.call_on(id, Request::Info).await
                        && info.activated
                    {
                        break 'activation (id, "already-activated");
                    }
                    last_failure = Some(node_failure(id, &e));
                }
                Err(e) => last_failure = Some(node_failure(id, &e)),
            }
        }
        if std::time::Instant::now() > deadline {
            client.close().await;
            let (kind, message) = last_failure.unwrap_or(("failed", "no node answered".into()));
            return Err(error(kind, format!("activation failed: {message}")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    client.close().await;
    let (id, outcome) = result;
    let text = format!(
        "node {id}: {}\nthe cluster is active; \"admin\" is now a crypto officer with the new password",
        outcome.replace('-', " ")
    );
    Ok(Report::new(
        json!({"nodes": [{"id": id, "result": outcome}]}),
        text,
    ))
}

fn health_json(h: &Health) -> Value {
    json!({
        "applied_index": h.applied_index,
        "sessions": h.sessions,
        "connections": h.connections,
        "queued": h.queued,
        "writable": h.writable,
        "leader": h.leader,
        "role": h.role,
        "term": h.term,
    })
}

fn info_json(i: &ClusterInfo) -> Value {
    json!({
        "cluster_id": i.cluster_id,
        "initialized": i.initialized,
        "activated": i.activated,
        "users": i.users,
        "keys": i.token_keys,
        "applied_index": i.applied_index,
    })
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// One node's line of `cluster status`.
fn status_line(
    id: u32,
    address: &str,
    health: Option<&Health>,
    lag: Option<u64>,
    info: Option<&ClusterInfo>,
    err: Option<&str>,
) -> String {
    let mut line = format!("node {id}  {address}  ");
    match health {
        Some(h) => {
            let _ = write!(
                line,
                "up    {}  applied {}  lag {}  sessions {}  connections {}  queued {}  \
                 writable {}  leader {}",
                h.role,
                h.applied_index,
                lag.unwrap_or(0),
                h.sessions,
                h.connections,
                h.queued,
                yes(h.writable),
                h.leader
                    .map_or_else(|| "none".to_owned(), |l| l.to_string())
            );
        }
        None => line.push_str("down"),
    }
    if let Some(i) = info {
        let _ = write!(
            line,
            "  initialized {}  activated {}  users {}  keys {}",
            yes(i.initialized),
            yes(i.activated),
            i.users,
            i.token_keys
        );
    }
    if let Some(e) = err {
        let _ = write!(line, "  ({e})");
    }
    line
}

async fn status(target: &Target) -> anyhow::Result<Report> {
    let config = load_config(target)?;
    let configured_id = config.cluster_id.clone();
    let client = connect_as(config, None).await?;
    // The cluster's nodes as they are now (the client follows the membership).
    let endpoints = client.nodes();
    let mut nodes = Vec::new();
    let mut lines = Vec::new();
    let mut cluster_id = configured_id;
    let mut answered = 0usize;
    let mut rows = Vec::with_capacity(endpoints.len());
    for ep in &endpoints {
        let health = match credentials::call(&client, On::Node(ep.id), Request::Health).await {
            Ok(Reply::Health(h)) => Ok(h),
            Ok(other) => Err(credentials::unexpected(&other).to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        let info = match credentials::call(&client, On::Node(ep.id), Request::Info).await {
            Ok(Reply::Info(i)) => Ok(i),
            Ok(other) => Err(credentials::unexpected(&other).to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        let (health, info, err) = match (health, info) {
            (Ok(h), Ok(i)) => (Some(h), Some(i), None),
            (Ok(h), Err(e)) => (Some(h), None, Some(e)),
            (Err(e), Ok(i)) => (None, Some(i), Some(e)),
            (Err(e), Err(_)) => {
                // "node N is down": the client's last error with it says why.
                let why = client
                    .nodes()
                    .into_iter()
                    .find(|n| n.id == ep.id)
                    .and_then(|n| n.last_error)
                    .filter(|last| !e.contains(last.as_str()));
                (
                    None,
                    None,
                    Some(why.map_or(e.clone(), |w| format!("{e}: {w}"))),
                )
            }
        };
        if health.is_some() || info.is_some() {
            answered += 1;
        }
        if cluster_id.is_none() {
            cluster_id = info.as_ref().and_then(|i| i.cluster_id.clone());
        }
        rows.push((ep.id, ep.address.to_string(), health, info, err));
    }
    // Lag: how far each node's applied log index is behind the furthest node's.
    let furthest = rows
        .iter()
        .filter_map(|(_, _, h, _, _)| h.as_ref().map(|h| h.applied_index))
        .max()
        .unwrap_or(0);
    for (id, address, health, info, err) in rows {
        let lag = health
            .as_ref()
            .map(|h| furthest.saturating_sub(h.applied_index));
        lines.push(status_line(
            id,
            &address,
            health.as_ref(),
            lag,
            info.as_ref(),
            err.as_deref(),
        ));
        nodes.push(json!({
            "id": id,
            "address": address,
            "up": health.is_some(),
            "health": health.as_ref().map(health_json),
            "lag": lag,
            "info": info.as_ref().map(info_json),
            "error": err,
        }));
    }
    client.close().await;
    if answered == 0 {
        return Err(error(
            "connection",
            format!("no node answered: {}", lines.join("; ")),
        ));
    }
    let header = format!(
        "cluster {}",
        cluster_id.as_deref().unwrap_or("(not initialized)")
    );
    let text = std::iter::once(header)
        .chain(lines)
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Report::new(
        json!({"cluster_id": cluster_id, "nodes": nodes}),
        text,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_show_health_and_info() {
        let h = Health {
            node_id: 1,
            applied_index: 7,
            sessions: 2,
            connections: 3,
            queued: 0,
            writable: true,
            leader: Some(1),
            role: "leader".into(),
            term: 1,
            members: Vec::new(),
            membership_index: 1,
            signs: 0,
        };
        let i = ClusterInfo {
            node_id: 1,
            cluster_id: Some("abcd".into()),
            initialized: true,
            activated: false,
            users: 2,
            token_keys: 5,
            applied_index: 7,
        };
        let line = status_line(1, "127.0.0.1:2225", Some(&h), Some(0), Some(&i), None);
        assert!(
            line.contains("up    leader") && line.contains("applied 7") && line.contains("lag 0"),
            "{line}"
        );
        assert!(
            line.contains("activated no") && line.contains("keys 5"),
            "{line}"
        );
        let line = status_line(
            2,
            "127.0.0.1:2226",
            None,
            None,
            None,
            Some("connection refused"),
        );
        assert!(
            line.contains("down") && line.contains("connection refused"),
            "{line}"
        );
        assert_eq!(health_json(&h)["writable"], json!(true));
        assert_eq!(info_json(&i)["keys"], json!(5));
    }

    fn made(nodes: u32) -> InitReport {
        let dir = Path::new("/tmp/c");
        InitReport {
            cluster_id: "00112233445566778899aabbccddeeff".into(),
            client_config: dir.join("client.toml"),
            node_configs: (1..=nodes)
                .map(|i| dir.join(format!("node-{i}.toml")))
                .collect(),
            preco_password_file: dir.join("preco-password"),
            ca_cert: dir.join("ca.pem"),
        }
    }

    #[test]
    fn init_reports_the_files_and_next_steps() {
        let r = init_report(Path::new("/tmp/c"), &made(1));
        let d = r.data();
        assert_eq!(d["cluster_id"], json!("00112233445566778899aabbccddeeff"));
        assert_eq!(d["dir"], json!("/tmp/c"));
        assert_eq!(d["ca_cert"], json!("/tmp/c/ca.pem"));
        assert_eq!(d["client_config"], json!("/tmp/c/client.toml"));
        assert_eq!(d["node_configs"], json!(["/tmp/c/node-1.toml"]));
        assert_eq!(d["preco_password_file"], json!("/tmp/c/preco-password"));
        assert_eq!(
            d["next_steps"],
            json!([
                "sealgate node --config /tmp/c/node-1.toml",
                "SEALGATE_CLUSTER=/tmp/c/client.toml sealgate cluster activate \
                 --password-file /tmp/c/preco-password"
            ])
        );
        assert!(r.text().contains("node 1 config"), "{}", r.text());
    }

    #[test]
    fn init_of_several_nodes_lists_every_node_config() {
        let r = init_report(Path::new("/tmp/c"), &made(3));
        assert_eq!(r.data()["node_configs"].as_array().unwrap().len(), 3);
        assert_eq!(r.data()["next_steps"].as_array().unwrap().len(), 4);
    }

    #[test]
    fn activation_failures_keep_the_interrupted_kind() {
        let e = ClientError::Interrupted {
            node: 2,
            request: "activate",
        };
        let (kind, message) = node_failure(2, &e);
        assert_eq!(kind, "interrupted");
        assert!(message.starts_with("node 2: "), "{message}");
        assert_eq!(
            node_failure(1, &ClientError::NodeDown { node: 1 }).0,
            "connection"
        );
    }
}
