//! `sealgate quorum token …`: quorum tokens, their approval files, and the admin services'
//! values.
//!
//! A token lives in the session that asked for it (and dies with it), so the token, its
//! approvals and the controlled command belong in one session: `sealgate shell`. The token
//! file (`quorum token generate --out FILE`) is what approvers sign and what `--approval FILE`
//! presents:
//!
//! ```json
//! {"version": "sealgate-quorum-1", "hsm_id": 1, "token": 3, "service": "user", "key": null,
//!  "requester": "admin", "expires_ms": 1796000000000,
//!  "approval_data": "<base64>", "approvals": [{"user": "co2", "signature": "<base64>"}]}
//! ```
//!
//! An approver base64-decodes `approval_data`, signs it with the private half of the key they
//! registered (`openssl dgst -sha256 -sign co2.pem -out co2.sig data.bin`), and the requester
//! adds it (`quorum token approve --file FILE --user co2 --signature co2.sig`).

use crate::credentials::{self, On, Target};
use crate::output::{self, Report, error, usage};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Subcommand};
use sealgate_hsm_client::Client;
use sealgate_hsm_proto::{Approval, ApprovalSignature, QuorumService, QuorumToken, Reply, Request};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The token file's format version.
const VERSION: &str = "sealgate-quorum-1";

/// `sealgate quorum …`.
#[derive(Debug, Subcommand)]
pub(crate) enum QuorumCommand {
    /// Quorum tokens (token-sign): ask for one, add approvals, list, delete; the admin
    /// services' quorum values.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `sealgate quorum token …`.
#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Ask a node for a token and write its approval file (valid 10 minutes, in this session,
    /// for one controlled command).
    Generate(GenerateArgs),
    /// Add an approver's signature (made with openssl) to an approval file; needs no cluster.
    Approve(ApproveArgs),
    /// The live tokens of every node.
    List,
    /// Delete a token (one's own, or any as a crypto officer).
    Delete(DeleteArgs),
    /// The quorum values of the admin services (user, quorum).
    ListValues,
    /// Set an admin service's quorum value M (crypto officers; 1 turns it off). Needs the
    /// approvals of a `quorum` token at the current value (--approval).
    SetValue(SetValueArgs),
}

/// `quorum token generate`.
#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// user, quorum, key-management or key-usage.
    #[arg(long, value_parser = parse_service)]
    service: QuorumService,
    /// The key's handle, for key-management and key-usage.
    #[arg(long, value_name = "HANDLE", value_parser = crate::key::parse_handle)]
    key: Option<u64>,
    /// The approval file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// `quorum token approve`.
#[derive(Debug, Args)]
pub(crate) struct ApproveArgs {
    /// The approval file.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// The approver.
    #[arg(long, value_name = "NAME")]
    approver: String,
    /// The approver's signature of the token's approval data (binary, as openssl wrote it).
    #[arg(long, value_name = "FILE")]
    signature: PathBuf,
}

/// `quorum token delete`.
#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// The token's id.
    #[arg(long)]
    id: u64,
    /// The node that issued it.
    #[arg(long, value_name = "ID")]
    node: u32,
}

/// `quorum token set-value`.
#[derive(Debug, Args)]
pub(crate) struct SetValueArgs {
    /// user or quorum.
    #[arg(long, value_parser = parse_service)]
    service: QuorumService,
    /// M: 1 (off) or 2 to 8.
    #[arg(long)]
    value: u8,
}

fn parse_service(name: &str) -> Result<QuorumService, String> {
    QuorumService::parse(name).ok_or_else(|| {
        format!("unknown service {name:?}: user, quorum, key-management or key-usage")
    })
}

/// An approval file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenFile {
    /// `sealgate-quorum-1`.
    pub(crate) version: String,
    /// The node that issued the token (and checks it).
    pub(crate) hsm_id: u32,
    /// The token's id on that node.
    pub(crate) token: u64,
    /// The service.
    pub(crate) service: String,
    /// The key, for a key service.
    pub(crate) key: Option<u64>,
    /// Who asked for it.
    pub(crate) requester: String,
    /// When it expires (ms since the epoch).
    pub(crate) expires_ms: u64,
    /// What approvers sign, base64.
    pub(crate) approval_data: String,
    /// The approvals so far.
    pub(crate) approvals: Vec<FileApproval>,
}

/// One approval in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileApproval {
    /// The approver.
    pub(crate) user: String,
    /// Their signature, base64.
    pub(crate) signature: String,
}

impl TokenFile {
    fn new(token: &QuorumToken) -> Self {
        Self {
            version: VERSION.into(),
            hsm_id: token.hsm_id,
            token: token.id,
            service: token.service.as_str().into(),
            key: token.key,
            requester: token.user.clone(),
            expires_ms: token.expires_ms,
            approval_data: B64.encode(&token.approval_data),
            approvals: Vec::new(),
        }
    }

    /// Reads and checks an approval file.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| output::input(format!("cannot read {}: {e}", path.display())))?;
        let file: Self = serde_json::from_str(&text).map_err(|e| {
            output::input(format!("{} is not an approval file: {e}", path.display()))
        })?;
        if file.version != VERSION {
            return Err(output::input(format!(
                "{}: version {:?}, expected {VERSION:?}",
                path.display(),
                file.version
            )));
        }
        if QuorumService::parse(&file.service).is_none() {
            return Err(output::input(format!(
                "{}: unknown service {:?}",
                path.display(),
                file.service
            )));
        }
        Ok(file)
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| error("failed", format!("cannot encode the approval file: {e}")))?;
        output::write_file(path, format!("{text}\n").as_bytes())
    }

    /// Whether the token is for `request`'s service and key.
    pub(crate) fn controls(&self, request: &Request) -> bool {
        request.quorum_control() == QuorumService::parse(&self.service).map(|s| (s, self.key))
    }

    /// The approvals to present.
    pub(crate) fn approval(&self) -> anyhow::Result<Approval> {
        let signatures = self
            .approvals
            .iter()
            .map(|a| {
                B64.decode(a.signature.trim())
                    .map(|signature| ApprovalSignature {
                        user: a.user.clone(),
                        signature,
                    })
                    .map_err(|e| {
                        output::input(format!("the approval by {} is not base64: {e}", a.user))
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Approval {
            token: self.token,
            signatures,
        })
    }
}

fn token_json(t: &QuorumToken) -> serde_json::Value {
    json!({
        "id": t.id,
        "hsm_id": t.hsm_id,
        "service": t.service.as_str(),
        "key": t.key,
        "requester": t.user,
        "expires_ms": t.expires_ms,
    })
}

/// Runs a `quorum` command.
pub(crate) async fn run(command: QuorumCommand, target: &Target) -> anyhow::Result<Report> {
    if let QuorumCommand::Token(TokenCommand::Approve(a)) = &command {
        return approve(a);
    }
    let client = credentials::connect_user(target).await?;
    let result = run_with(&client, command).await;
    credentials::finish(client).await;
    result
}

fn approve(args: &ApproveArgs) -> anyhow::Result<Report> {
    let mut file = TokenFile::load(&args.file)?;
    let signature = std::fs::read(&args.signature)
        .map_err(|e| output::input(format!("cannot read {}: {e}", args.signature.display())))?;
    if signature.is_empty() {
        return Err(output::input(format!(
            "{} is empty",
            args.signature.display()
        )));
    }
    let user = args.approver.to_ascii_lowercase();
    file.approvals.retain(|a| a.user != user);
    file.approvals.push(FileApproval {
        user: user.clone(),
        signature: B64.encode(&signature),
    });
    file.save(&args.file)?;
    let users: Vec<&str> = file.approvals.iter().map(|a| a.user.as_str()).collect();
    Ok(Report::new(
        json!({"file": args.file.display().to_string(), "approvers": users}),
        format!(
            "{}: approved by {} ({} in all)",
            args.file.display(),
            user,
            users.len()
        ),
    ))
}

async fn run_with(client: &Client, command: QuorumCommand) -> anyhow::Result<Report> {
    match command {
        QuorumCommand::Token(TokenCommand::Generate(a)) => {
            if a.service.per_key() != a.key.is_some() {
                return Err(usage(format!(
                    "--key goes with key-management and key-usage tokens only ({} {})",
                    a.service.as_str(),
                    if a.key.is_some() {
                        "takes none"
                    } else {
                        "needs one"
                    }
                )));
            }
            let request = Request::GenerateQuorumToken {
                service: a.service,
                key: a.key,
            };
            let Reply::QuorumToken(token) = credentials::call(client, On::Any, request).await?
            else {
                return Err(error("failed", "the node did not answer with a token"));
            };
            TokenFile::new(&token).save(&a.out)?;
            let mut data = token_json(&token);
            if let Some(m) = data.as_object_mut() {
                m.insert("out".into(), json!(a.out.display().to_string()));
                m.insert(
                    "approval_data".into(),
                    json!(B64.encode(&token.approval_data)),
                );
            }
            Ok(Report::new(
                data,
                format!(
                    "token {} of node {} for {}{} written to {}; each approver signs its \
                     approval_data (openssl dgst -sha256 -sign KEY.pem) and you add it with \
                     `sealgate quorum token approve --file {} --approver NAME --signature SIG`; \
                     use it in this session within 10 minutes",
                    token.id,
                    token.hsm_id,
                    token.service.as_str(),
                    token
                        .key
                        .map(|k| format!(" on key {k}"))
                        .unwrap_or_default(),
                    a.out.display(),
                    a.out.display(),
                ),
            ))
        }
        QuorumCommand::Token(TokenCommand::Approve(a)) => approve(&a),
        QuorumCommand::Token(TokenCommand::List) => {
            let mut all = Vec::new();
            for status in client.nodes() {
                if let Ok(Reply::QuorumTokens(tokens)) =
                    credentials::call(client, On::Node(status.id), Request::ListQuorumTokens).await
                {
                    all.extend(tokens);
                }
            }
            let text = if all.is_empty() {
                "no live quorum tokens".to_owned()
            } else {
                all.iter()
                    .map(|t| {
                        format!(
                            "node {} token {}: {}{} for {}, until {} ms",
                            t.hsm_id,
                            t.id,
                            t.service.as_str(),
                            t.key.map(|k| format!(" on key {k}")).unwrap_or_default(),
                            t.user,
                            t.expires_ms
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Ok(Report::new(
                json!(all.iter().map(token_json).collect::<Vec<_>>()),
                text,
            ))
        }
        QuorumCommand::Token(TokenCommand::Delete(a)) => {
            credentials::done(
                client,
                On::Node(a.node),
                Request::DeleteQuorumToken { id: a.id },
            )
            .await?;
            Ok(Report::new(
                json!({"id": a.id, "hsm_id": a.node}),
                format!("deleted token {} of node {}", a.id, a.node),
            ))
        }
        QuorumCommand::Token(TokenCommand::ListValues) => {
            let Reply::QuorumValues(values) =
                credentials::call(client, On::Any, Request::ListQuorumValues).await?
            else {
                return Err(error(
                    "failed",
                    "the node did not answer with quorum values",
                ));
            };
            let data: serde_json::Map<String, serde_json::Value> = values
                .iter()
                .map(|v| (v.service.as_str().to_owned(), json!(v.value)))
                .collect();
            let text = values
                .iter()
                .map(|v| format!("{}: {}", v.service.as_str(), v.value))
                .collect::<Vec<_>>()
                .join("\n");
            Ok(Report::new(serde_json::Value::Object(data), text))
        }
        QuorumCommand::Token(TokenCommand::SetValue(a)) => {
            credentials::done(
                client,
                On::Any,
                Request::SetQuorumValue {
                    service: a.service,
                    value: a.value,
                },
            )
            .await?;
            Ok(Report::new(
                json!({"service": a.service.as_str(), "value": a.value}),
                format!("quorum value of {} set to {}", a.service.as_str(), a.value),
            ))
        }
    }
}
