//! `sealgate audit verify|tail|key`: check a node's audit file (every record's hash and seal,
//! the sequence and hash chain, and whether its tail is whole), show its last records and
//! follow new ones, and fetch a node's audit public key so that files can be checked offline.
//!
//! The checks themselves are `sealgate_hsm_node::audit::verify`; this module reads files,
//! asks the cluster (no login) for keys and heads, and decides about the tail. Its exit codes
//! are its own (see [`main`]): 1 when a file fails a check, 2 when it could not be checked.

use crate::credentials::{self, ENV_CLUSTER, On, Target, connect_as, load_config, process_env};
use crate::output::{self, Format, Report, error};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use sealgate_hsm_client::{Client, ClientError};
use sealgate_hsm_crypto::{HashAlg, KeySpec, PublicKey};
use sealgate_hsm_node::audit::{self, AuditRecord, Tampered, Verified};
use sealgate_hsm_proto::{Reply, Request};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// `sealgate audit …`.
///
/// Exit codes: 0 the file checked out (or the command did what it was asked), 1 the file
/// failed a check (JSON error kinds "tampered": it is not what its node wrote; "incomplete":
/// its tail cannot be shown whole; "changed": a followed file was cut, replaced or removed),
/// 2 the check could not be made (a file or key that cannot be read, no cluster to ask, a
/// node that does not answer, a usage error).
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check a node's audit file: every record's hash and seal (the node's audit key), the
    /// sequence from 0 without gap or reordering, the hash chain, and the tail.
    ///
    /// The key is --key PEM (from `sealgate audit key`), else asked of the cluster for the node
    /// named by the file's first record. The tail is whole when the file ends with the node's
    /// stop record (written at a clean shutdown), or when the node (asked through the cluster,
    /// when one is given) has written nothing after the file's last record. A file that ends
    /// without the stop record and cannot be compared with its node fails as "incomplete".
    ///
    /// JSON data: {"file", "hsm_id", "records", "first_sequence", "last_sequence",
    /// "last_hash", "closed", "complete": "stop-record" | "node-head", "node_head":
    /// {"sequence", "hash"} | null, "key": "file" | "cluster"}.
    Verify(VerifyArgs),
    /// Print the last records of an audit file, one per line, and with --follow the records
    /// appended to it.
    ///
    /// A line reads `#SEQ  TIME  OPCODE  RESPONSE  user=NAME(TYPE) actor=NAME(TYPE) key=H
    /// pub=H origin=NODE DETAIL` (empty parts left out); a line that is not a record prints as
    /// `#? unparsable line L`. With --output json, each record is printed as the JSON line it
    /// is in the file (JSON Lines, not one object), and a line that is not a record as
    /// {"unparsable_line": L}.
    Tail(TailArgs),
    /// Fetch node N's audit public key (PEM) from the cluster (no login needed), to check its
    /// files offline with `audit verify --key`.
    ///
    /// JSON data: {"node", "pem", "sha256" (of the key's DER), "out"}.
    Key(KeyArgs),
}

/// `audit verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The audit file: a node's DATA_DIR/audit.jsonl, or a copy of it.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// The node's audit public key (PEM, as `sealgate audit key` writes it). Default: asked of
    /// the cluster.
    #[arg(long, value_name = "PEM")]
    pub(crate) key: Option<PathBuf>,
}

/// `audit tail`.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// The audit file.
    #[arg(value_name = "FILE")]
    pub(crate) file: PathBuf,
    /// How many of the last records to print.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 10)]
    pub(crate) lines: usize,
    /// Then print each record as it is appended (checked every 200 ms) until SIGINT or
    /// SIGTERM (exit code 0). If the file shrinks, is replaced or is removed, says so and
    /// exits with code 1.
    #[arg(short = 'f', long)]
    pub(crate) follow: bool,
}

/// `audit key`.
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// The node.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub(crate) node: u32,
    /// Write the PEM to FILE instead of stdout (created with mode 0600, like every --out).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// The error kinds of a file that failed a check (exit code 1).
const FAILED_CHECK: [&str; 3] = ["tampered", "incomplete", "changed"];

/// How often `tail --follow` looks for new records.
const POLL: Duration = Duration::from_millis(200);

/// What a line that is not text is.
const BINARY: &str = "binary data, not a record: not an audit file, or it was edited";

/// The longest line `tail` keeps (records are a few hundred bytes; a longer line is not one).
const MAX_LINE: usize = 64 << 10;

/// Runs an `audit` command, prints its result as every command does and returns the exit
/// code: 0 on success, 1 when a file failed a check (error kinds "tampered", "incomplete",
/// "changed"), 2 when it could not be checked (any other error).
pub(crate) fn main(command: AuditCommand, format: Format, target: &Target) -> ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| error("failed", format!("cannot start the runtime: {e}")))
        .and_then(|runtime| runtime.block_on(run(command, format, target)));
    let trouble = result.as_ref().is_err_and(|e| !failed_check(e));
    let code = output::finish(format, result);
    if trouble { ExitCode::from(2) } else { code }
}

/// Whether `err` says that a file failed a check (rather than that it could not be checked).
fn failed_check(err: &anyhow::Error) -> bool {
    FAILED_CHECK.contains(&output::classify(err).0.as_str())
}

async fn run(command: AuditCommand, format: Format, target: &Target) -> anyhow::Result<Report> {
    match command {
        AuditCommand::Verify(args) => {
            let mut cluster = Cluster::new(target);
            let result = verify(&args, &mut cluster).await;
            cluster.close().await;
            result
        }
        AuditCommand::Tail(args) => tail(&args, format).await,
        AuditCommand::Key(args) => {
            let mut cluster = Cluster::new(target);
            let result = key(&args, &mut cluster).await;
            cluster.close().await;
            result
        }
    }
}

/// The cluster, connected on first use and without login (audit keys and heads need none).
struct Cluster<'a> {
    target: &'a Target,
    client: Option<Client>,
}

impl<'a> Cluster<'a> {
    fn new(target: &'a Target) -> Self {
        Self {
            target,
            client: None,
        }
    }

    /// Whether a cluster is given (`--cluster` or `SEALGATE_CLUSTER`).
    fn given(&self) -> bool {
        credentials::cluster_file(self.target.cluster.as_deref(), &process_env).is_ok()
    }

    async fn client(&mut self) -> anyhow::Result<&Client> {
        if self.client.is_none() {
            let config = load_config(self.target)?;
            self.client = Some(connect_as(config, None).await?);
        }
        self.client
            .as_ref()
            .ok_or_else(|| error("failed", "no connection to the cluster"))
    }

    /// Node `hsm_id`'s audit public key, from any node.
    async fn audit_key(&mut self, hsm_id: u32) -> anyhow::Result<PublicKey> {
        let client = self.client().await?;
        match credentials::call(client, On::Any, Request::AuditKey { hsm_id }).await? {
            Reply::PublicKey { der, .. } => {
                let key = PublicKey::from_der(&der).map_err(|e| {
                    error(
                        "failed",
                        format!("the cluster sent an unusable audit key for node {hsm_id}: {e}"),
                    )
                })?;
                ed25519(key, &format!("the cluster's audit key for node {hsm_id}"))
            }
            other => Err(credentials::unexpected(&other)),
        }
    }

    /// Node `hsm_id`'s last record: its sequence number (none before the first) and hash.
    async fn head(&mut self, hsm_id: u32) -> anyhow::Result<Head> {
        let client = self.client().await?;
        match credentials::call(client, On::Node(hsm_id), Request::AuditHead).await? {
            Reply::AuditHead {
                hsm_id: answered,
                sequence,
                hash,
            } if answered == hsm_id => Ok(Head { sequence, hash }),
            Reply::AuditHead {
                hsm_id: answered, ..
            } => Err(error(
                "failed",
                format!("node {hsm_id} answered as node {answered}"),
            )),
            other => Err(credentials::unexpected(&other)),
        }
    }

    async fn close(self) {
        if let Some(client) = self.client {
            client.close().await;
        }
    }
}

/// A node's last audit record, as it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    sequence: Option<u64>,
    hash: String,
}

/// A file that failed a check.
fn tampered(message: impl Into<String>) -> anyhow::Error {
    error("tampered", message)
}

/// `key`, if it is an Ed25519 key (audit keys are).
fn ed25519(key: PublicKey, what: &str) -> anyhow::Result<PublicKey> {
    if key.spec() == KeySpec::Ed25519 {
        Ok(key)
    } else {
        Err(output::input(format!(
            "{what} is not an Ed25519 key (audit keys are)"
        )))
    }
}

/// Reads a PEM public key for `--key`.
fn read_key(path: &Path) -> anyhow::Result<PublicKey> {
    let name = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
    let key = PublicKey::from_pem(&text)
        .map_err(|e| output::input(format!("{name}: not a PEM public key: {e}")))?;
    ed25519(key, &name.to_string())
}

/// An audit file's bytes as text: all of it, or (when a byte is not UTF-8, which no record
/// holds) the whole lines before that byte, and that byte's line.
fn as_text(bytes: &[u8]) -> (&str, Option<usize>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text, None),
        Err(e) => {
            let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
            let whole = valid
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |at| at + 1);
            let text =
                std::str::from_utf8(valid.get(..whole).unwrap_or_default()).unwrap_or_default();
            (text, Some(text.lines().count() + 1))
        }
    }
}

/// The node a file's first line names (its `hsm_id`), to ask the cluster for its key.
fn first_hsm_id(name: &str, text: &str, binary_line: Option<usize>) -> anyhow::Result<u32> {
    let unknown = |what: String| {
        tampered(format!(
            "{name} line 1: {what}; its node, and so its key, cannot be told (--key PEM gives \
             the key)"
        ))
    };
    let Some(first) = text.split_inclusive('\n').next() else {
        return Err(match binary_line {
            Some(_) => unknown(BINARY.into()),
            None => tampered(format!("{name}: no records")),
        });
    };
    let value: Value = serde_json::from_str(first.trim_end_matches('\n'))
        .map_err(|e| unknown(format!("not a record: it was edited ({e})")))?;
    value
        .get("hsm_id")
        .and_then(Value::as_u64)
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| unknown("not a record: it has no hsm_id".into()))
}

/// A file that checked out: what [`audit::verify`] found, for the record count and ends.
#[derive(Debug)]
struct Checked {
    verified: Verified,
    hsm_id: u32,
    last: u64,
    last_hash: String,
}

/// Checks `bytes` (the file `name`) with `key`: every record, then that there is one at all.
fn check(name: &str, bytes: &[u8], key: &PublicKey) -> anyhow::Result<Checked> {
    let (text, binary_line) = as_text(bytes);
    let verified = audit::verify(text, key).map_err(|t| tampered_at(name, &t))?;
    if let Some(line) = binary_line {
        return Err(tampered(format!("{name} line {line}: {BINARY}")));
    }
    match (verified.hsm_id, verified.last.clone()) {
        (Some(hsm_id), Some((last, last_hash))) => Ok(Checked {
            verified,
            hsm_id,
            last,
            last_hash,
        }),
        _ => Err(tampered(format!("{name}: no records"))),
    }
}

fn tampered_at(name: &str, t: &Tampered) -> anyhow::Error {
    tampered(format!("{name} {t}"))
}

/// The hash of record `sequence` in a file that checked out (its line `sequence + 1`).
fn hash_of(bytes: &[u8], sequence: u64) -> Option<String> {
    let index = usize::try_from(sequence).ok()?;
    let line = bytes.split(|&b| b == b'\n').nth(index)?;
    serde_json::from_slice::<AuditRecord>(line)
        .ok()
        .map(|r| r.hash)
}

/// How a file's tail compares with its node's head.
#[derive(Debug, PartialEq, Eq)]
enum Tail {
    /// The file ends at the node's last record.
    AtHead,
    /// The node has written past the file's end.
    Cut,
    /// The file is not the node's stream as it is now.
    Other,
}

/// Compares a file that ends at record `last` with hash `last_hash` with its node's `head`.
/// `grown`: the file was read again after the head was asked for, so records written since
/// may follow the head in it; `hash_at` gives a record's hash in the file.
fn compare(
    last: u64,
    last_hash: &str,
    head: &Head,
    grown: bool,
    hash_at: impl Fn(u64) -> Option<String>,
) -> Tail {
    match head.sequence {
        Some(s) if s == last && head.hash == last_hash => Tail::AtHead,
        Some(s) if s > last => Tail::Cut,
        Some(s) if grown && hash_at(s).as_deref() == Some(head.hash.as_str()) => Tail::AtHead,
        _ => Tail::Other,
    }
}

async fn verify(args: &VerifyArgs, cluster: &mut Cluster<'_>) -> anyhow::Result<Report> {
    let name = args.file.display().to_string();
    let read = || std::fs::read(&args.file).with_context(|| format!("cannot read {name}"));
    let bytes = read()?;
    if bytes.is_empty() {
        return Err(tampered(format!(
            "{name}: no records: the file is empty (a node's audit file starts with its start \
             record)"
        )));
    }
    let (key, key_source) = match &args.key {
        Some(path) => (read_key(path)?, "file"),
        None => {
            let (text, binary_line) = as_text(&bytes);
            let hsm_id = first_hsm_id(&name, text, binary_line)?;
            let key = cluster.audit_key(hsm_id).await.with_context(|| {
                format!(
                    "cannot get node {hsm_id}'s audit key from the cluster (or give it with \
                     --key PEM)"
                )
            })?;
            (key, "cluster")
        }
    };
    let mut checked = check(&name, &bytes, &key)?;
    let mut node_head = None;
    if !checked.verified.closed {
        let (hsm_id, last) = (checked.hsm_id, checked.last);
        let open_end = format!(
            "{name} ends at record {last} without node {hsm_id}'s stop record, so its tail may \
             have been cut"
        );
        if !cluster.given() {
            return Err(error(
                "incomplete",
                format!(
                    "{open_end}: give the cluster (--cluster FILE or {ENV_CLUSTER}) to compare \
                     it with the node's last record"
                ),
            ));
        }
        let head = match cluster.head(hsm_id).await {
            Ok(head) => head,
            Err(e)
                if matches!(
                    e.downcast_ref::<ClientError>(),
                    Some(ClientError::UnknownNode { .. })
                ) =>
            {
                return Err(error(
                    "incomplete",
                    format!("{open_end}, and node {hsm_id} is not in the cluster to tell"),
                ));
            }
            Err(e) => {
                return Err(e.context(format!(
                    "{open_end}, and node {hsm_id} could not be asked for its last record"
                )));
            }
        };
        // A live file may have grown since it was read: read it again once.
        let mut grown = false;
        let mut bytes = bytes;
        if head.sequence.is_some_and(|s| s > last) {
            bytes = read()?;
            checked = check(&name, &bytes, &key)?;
            grown = true;
        }
        if !checked.verified.closed {
            let last = checked.last;
            match compare(last, &checked.last_hash, &head, grown, |s| {
                hash_of(&bytes, s)
            }) {
                Tail::AtHead => {}
                Tail::Cut => {
                    return Err(tampered(format!(
                        "{name}: the tail was cut: the file ends at record {last}, node \
                         {hsm_id} has written up to record {} (a copy made before those \
                         records ends early too: check the node's own file)",
                        head.sequence.unwrap_or_default()
                    )));
                }
                Tail::Other => {
                    let theirs = head.sequence.map_or_else(
                        || "the node has written no records".to_owned(),
                        |s| format!("the node's last record is {s} (hash {})", head.hash),
                    );
                    return Err(tampered(format!(
                        "{name} is not node {hsm_id}'s current stream: it ends at record \
                         {last} (hash {}), {theirs}",
                        checked.last_hash
                    )));
                }
            }
            node_head = Some(head);
        }
    }
    Ok(verified_report(
        &name,
        &checked,
        node_head.as_ref(),
        key_source,
    ))
}

fn verified_report(
    name: &str,
    checked: &Checked,
    node_head: Option<&Head>,
    key_source: &str,
) -> Report {
    let records = checked.verified.records;
    let (hsm_id, last) = (checked.hsm_id, checked.last);
    let end = match node_head {
        None => "closed by the node's stop record".to_owned(),
        Some(_) => "up to the node's current head".to_owned(),
    };
    let plural = if records == 1 { "" } else { "s" };
    let text =
        format!("{name}: {records} record{plural} of node {hsm_id} verified (0 to {last}), {end}");
    let data = json!({
        "file": name,
        "hsm_id": hsm_id,
        "records": records,
        "first_sequence": 0,
        "last_sequence": last,
        "last_hash": checked.last_hash,
        "closed": checked.verified.closed,
        "complete": if node_head.is_some() { "node-head" } else { "stop-record" },
        "node_head": node_head.map(|h| json!({"sequence": h.sequence, "hash": h.hash})),
        "key": key_source,
    });
    Report::new(data, text)
}

async fn key(args: &KeyArgs, cluster: &mut Cluster<'_>) -> anyhow::Result<Report> {
    let node = args.node;
    let key = cluster
        .audit_key(node)
        .await
        .with_context(|| format!("cannot get node {node}'s audit key"))?;
    let pem = key.to_pem();
    let sha256 = hex::encode(sealgate_hsm_crypto::digest(HashAlg::Sha256, key.to_der()));
    let mut data = json!({"node": node, "pem": pem, "sha256": sha256});
    match &args.out {
        Some(path) => {
            output::write_file(path, pem.as_bytes())?;
            if let Some(map) = data.as_object_mut() {
                map.insert("out".into(), json!(path.display().to_string()));
            }
            Ok(Report::new(
                data,
                format!(
                    "node {node}'s audit key written to {} (SHA-256 of its DER: {sha256})",
                    path.display()
                ),
            ))
        }
        None => Ok(Report::bytes(data, pem.into_bytes())),
    }
}

/// One line of a file, numbered from 1.
#[derive(Debug)]
struct Line {
    number: u64,
    /// Without its newline; cut at [`MAX_LINE`] bytes.
    bytes: Vec<u8>,
    /// Whether it was longer than [`MAX_LINE`] (so not a record).
    overlong: bool,
}

impl Line {
    fn record(&self) -> Option<AuditRecord> {
        if self.overlong {
            return None;
        }
        serde_json::from_slice(&self.bytes).ok()
    }

    /// For people: the record's fields on one line.
    fn human(&self) -> String {
        self.record().map_or_else(
            || format!("#? unparsable line {}", self.number),
            |r| describe(&r),
        )
    }

    /// For `--output json`: the record's line as it is in the file.
    fn json(&self) -> String {
        match self.record() {
            Some(_) => String::from_utf8_lossy(self.bytes.trim_ascii_end()).into_owned(),
            None => json!({"unparsable_line": self.number}).to_string(),
        }
    }
}

/// A record on one line: `#SEQ  TIME  OPCODE  RESPONSE  user=… actor=… key=… pub=… origin=…
/// DETAIL`, the empty parts left out and control characters (a file may hold anything)
/// replaced.
fn describe(r: &AuditRecord) -> String {
    let who = |name: &Option<String>, kind: &Option<String>| {
        name.as_ref().map(|n| match kind {
            Some(k) => format!("{n}({k})"),
            None => n.clone(),
        })
    };
    let mut extra = Vec::new();
    if let Some(u) = who(&r.user_name, &r.user_type) {
        extra.push(format!("user={u}"));
    }
    if let Some(a) = who(&r.actor_name, &r.actor_type) {
        extra.push(format!("actor={a}"));
    }
    if let Some(k) = r.key_handle {
        extra.push(format!("key={k}"));
    }
    if let Some(p) = r.public_key_handle {
        extra.push(format!("pub={p}"));
    }
    if let Some(o) = r.origin_node {
        extra.push(format!("origin={o}"));
    }
    if let Some(d) = r.detail.as_deref().filter(|d| !d.is_empty()) {
        extra.push(d.to_owned());
    }
    let mut line = format!("#{}  {}  {}  {}", r.sequence, r.time, r.opcode, r.response);
    if !extra.is_empty() {
        line.push_str("  ");
        line.push_str(&extra.join(" "));
    }
    output::single_line(&line)
}

/// Whole lines of a file as they become available: an unfinished last line waits for its
/// newline (or [`Lines::rest`]), and at most [`MAX_LINE`] bytes of a line are kept.
struct Lines<R> {
    reader: BufReader<R>,
    /// Lines returned so far.
    number: u64,
    /// Where the unfinished line starts (the bytes of the whole lines read).
    whole: u64,
    /// The unfinished line (its first [`MAX_LINE`] bytes).
    partial: Vec<u8>,
    /// Its length.
    partial_len: u64,
}

impl<R: std::io::Read> Lines<R> {
    fn new(inner: R) -> Self {
        Self {
            reader: BufReader::new(inner),
            number: 0,
            whole: 0,
            partial: Vec::new(),
            partial_len: 0,
        }
    }

    /// The next whole line, or `None` at the end of what there is now.
    fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            let newline = buf.iter().position(|&b| b == b'\n');
            let chunk = buf.get(..newline.unwrap_or(buf.len())).unwrap_or_default();
            let room = MAX_LINE.saturating_sub(self.partial.len()).min(chunk.len());
            self.partial
                .extend_from_slice(chunk.get(..room).unwrap_or_default());
            self.partial_len += chunk.len() as u64;
            let used = newline.map_or(buf.len(), |at| at + 1);
            self.reader.consume(used);
            if newline.is_some() {
                self.whole += self.partial_len + 1;
                return Ok(Some(self.take()));
            }
        }
    }

    /// The unfinished last line, if any, as a line (the file's end when not following).
    fn rest(&mut self) -> Option<Line> {
        (self.partial_len > 0).then(|| {
            self.whole += self.partial_len;
            self.take()
        })
    }

    fn take(&mut self) -> Line {
        self.number += 1;
        let line = Line {
            number: self.number,
            bytes: std::mem::take(&mut self.partial),
            overlong: self.partial_len > MAX_LINE as u64,
        };
        self.partial_len = 0;
        line
    }

    /// How far the file has been read.
    fn position(&self) -> u64 {
        self.whole + self.partial_len
    }
}

impl<R: std::io::Read + std::io::Seek> Lines<R> {
    /// Forgets the unfinished line and reads again from its start (the node removed it when
    /// it restarted after stopping while writing it).
    fn drop_partial(&mut self) -> std::io::Result<()> {
        self.reader.seek(SeekFrom::Start(self.whole))?;
        self.partial.clear();
        self.partial_len = 0;
        Ok(())
    }
}

/// Writes lines to stdout as they come; `false` once stdout is closed (`| head`).
struct Printer {
    format: Format,
}

impl Printer {
    fn print(&self, lines: impl IntoIterator<Item = Line>) -> anyhow::Result<bool> {
        let mut text = String::new();
        for line in lines {
            text.push_str(&match self.format {
                Format::Human => line.human(),
                Format::Json => line.json(),
            });
            text.push('\n');
        }
        if text.is_empty() {
            return Ok(true);
        }
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
        }
    }
}

async fn tail(args: &TailArgs, format: Format) -> anyhow::Result<Report> {
    let name = args.file.display().to_string();
    // Watched from the start, so that a signal once the first lines are out stops cleanly.
    let stop = args.follow.then(Stop::new).transpose()?;
    let file = File::open(&args.file).with_context(|| format!("cannot read {name}"))?;
    let opened = file
        .metadata()
        .with_context(|| format!("cannot read {name}"))?;
    let mut lines = Lines::new(file);
    let mut last = VecDeque::with_capacity(args.lines.min(1024));
    let mut keep = |line: Line| {
        if args.lines > 0 {
            if last.len() == args.lines {
                last.pop_front();
            }
            last.push_back(line);
        }
    };
    while let Some(line) = lines
        .next_line()
        .with_context(|| format!("cannot read {name}"))?
    {
        keep(line);
    }
    let printer = Printer { format };
    let done = Report::human_only("");
    let Some(mut stop) = stop else {
        if let Some(rest) = lines.rest() {
            keep(rest);
        }
        printer.print(last)?;
        return Ok(done);
    };
    if printer.print(last)? {
        follow(&args.file, &name, &opened, &mut lines, &printer, &mut stop).await?;
    }
    Ok(done)
}

/// SIGTERM and SIGINT, which end `tail --follow`.
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?,
        })
    }

    /// Whether a signal came within `wait`.
    async fn within(&mut self, wait: Duration) -> bool {
        tokio::select! {
            _ = self.term.recv() => true,
            _ = self.int.recv() => true,
            () = tokio::time::sleep(wait) => false,
        }
    }
}

/// Prints the lines appended to the file until SIGINT or SIGTERM (or stdout closes); fails
/// when the file shrinks below what was read, is replaced or is removed.
async fn follow(
    path: &Path,
    name: &str,
    opened: &std::fs::Metadata,
    lines: &mut Lines<File>,
    printer: &Printer,
    stop: &mut Stop,
) -> anyhow::Result<()> {
    let changed = |what: String| error("changed", format!("{name} {what}: stopped following"));
    loop {
        let mut new = Vec::new();
        while let Some(line) = lines
            .next_line()
            .with_context(|| format!("cannot read {name}"))?
        {
            new.push(line);
        }
        if !printer.print(new)? {
            return Ok(());
        }
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(changed("was removed".into()));
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot check {name}"))),
            Ok(now) if !same_file(opened, &now) => {
                return Err(changed(
                    "was replaced (another file has its name now)".into(),
                ));
            }
            Ok(now) if now.len() < lines.position() => {
                if now.len() >= lines.whole {
                    // Only the unfinished last line went: the node removes one that it was
                    // writing when it stopped, at its next start.
                    lines
                        .drop_partial()
                        .with_context(|| format!("cannot read {name}"))?;
                } else {
                    return Err(changed(format!(
                        "shrank from {} to {} bytes",
                        lines.position(),
                        now.len()
                    )));
                }
            }
            Ok(_) => {}
        }
        if stop.within(POLL).await {
            return Ok(());
        }
    }
}

/// Whether two metadata are of the same file (device and inode).
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use sealgate_hsm_crypto::{MasterKey, PrivateKey, SignMechanism};

    fn node_key(id: u32) -> PrivateKey {
        MasterKey::from_bytes(&[7; 32])
            .unwrap()
            .audit_key(id)
            .unwrap()
    }

    fn record(sequence: u64, opcode: &str, prev_hash: &str) -> AuditRecord {
        AuditRecord {
            time: "2025-01-01T00:00:00.000000Z".into(),
            usecs: 1_735_689_600_000_000 + sequence,
            sequence,
            reboot_counter: 1,
            hsm_id: 1,
            command_type: "CN_MGMT_CMD".into(),
            opcode: opcode.into(),
            log_type: "MINIMAL_LOG_ENTRY".into(),
            session: None,
            response: "SUCCESS".into(),
            user_name: None,
            user_type: None,
            actor_name: None,
            actor_type: None,
            key_handle: None,
            public_key_handle: None,
            origin_node: None,
            detail: None,
            prev_hash: prev_hash.into(),
            hash: String::new(),
            seal: String::new(),
        }
    }

    /// A sealed file as node 1 writes it: a start, logins, and a stop if `closed`.
    fn sealed(n: u64, closed: bool) -> (String, Vec<String>) {
        let key = node_key(1);
        let mut prev = audit::GENESIS_HASH.to_owned();
        let mut text = String::new();
        let mut hashes = Vec::new();
        for seq in 0..n {
            let opcode = match seq {
                0 => "CN_NODE_START",
                s if closed && s == n - 1 => "CN_NODE_STOP",
                _ => "CN_LOGIN",
            };
            let json = serde_json::to_string(&record(seq, opcode, &prev)).unwrap();
            let covered = json.strip_suffix('}').unwrap();
            let hash = audit::line_hash(covered);
            let seal = key
                .sign(SignMechanism::Ed25519, &audit::seal_message(&hash))
                .unwrap();
            text.push_str(&format!(
                "{covered},\"hash\":\"{hash}\",\"seal\":\"{}\"}}\n",
                hex::encode(seal)
            ));
            prev.clone_from(&hash);
            hashes.push(hash);
        }
        (text, hashes)
    }

    fn public() -> PublicKey {
        node_key(1).public_key().clone()
    }

    #[test]
    fn a_whole_file_checks_out_and_edits_are_found_at_their_line() {
        let (text, hashes) = sealed(5, true);
        let c = check("f", text.as_bytes(), &public()).unwrap();
        assert_eq!((c.hsm_id, c.last, c.verified.records), (1, 4, 5));
        assert!(c.verified.closed);
        assert_eq!(c.last_hash, hashes[4]);
        assert_eq!(hash_of(text.as_bytes(), 2).as_deref(), Some(&*hashes[2]));
        assert_eq!(hash_of(text.as_bytes(), 9), None);

        let edited = text.replacen("CN_LOGIN", "CN_LOGIM", 1);
        let err = check("f", edited.as_bytes(), &public()).unwrap_err();
        assert_eq!(output::classify(&err).0, "tampered");
        assert!(
            err.to_string().starts_with("f line 2 (record 1): edited"),
            "{err}"
        );

        // Binary garbage in line 4; the lines before it are checked first.
        let mut bytes = text.clone().into_bytes();
        let at = text.match_indices('\n').nth(2).unwrap().0 + 5;
        bytes[at] = 0xff;
        let err = check("f", &bytes, &public()).unwrap_err().to_string();
        assert!(err.starts_with("f line 4: binary data"), "{err}");
        bytes[3] = 0xfe;
        let err = check("f", &bytes, &public()).unwrap_err().to_string();
        assert!(err.starts_with("f line 1: binary data"), "{err}");
    }

    #[test]
    fn the_node_is_read_from_the_first_line_without_trusting_the_rest() {
        let (text, _) = sealed(3, true);
        assert_eq!(first_hsm_id("f", &text, None).unwrap(), 1);
        for (text, binary, what) in [
            ("", None, "f: no records"),
            ("", Some(1), "f line 1: binary data"),
            ("hello\n", None, "f line 1: not a record"),
            (
                "{\"a\":1}\n",
                None,
                "f line 1: not a record: it has no hsm_id",
            ),
        ] {
            let err = first_hsm_id("f", text, binary).unwrap_err();
            assert!(err.to_string().starts_with(what), "{err}");
            assert!(failed_check(&err));
        }
    }

    #[test]
    fn a_tail_is_judged_against_the_node_head() {
        let head = |s: Option<u64>, h: &str| Head {
            sequence: s,
            hash: h.into(),
        };
        let none = |_| None;
        assert_eq!(
            compare(4, "h4", &head(Some(4), "h4"), false, none),
            Tail::AtHead
        );
        assert_eq!(
            compare(4, "h4", &head(Some(6), "h6"), false, none),
            Tail::Cut
        );
        assert_eq!(
            compare(4, "h4", &head(Some(4), "xx"), false, none),
            Tail::Other
        );
        assert_eq!(
            compare(4, "h4", &head(Some(3), "h3"), false, none),
            Tail::Other
        );
        assert_eq!(compare(4, "h4", &head(None, ""), false, none), Tail::Other);
        // Read again after the head was asked for: records written since follow the head.
        let at = |s: u64| Some(format!("h{s}"));
        assert_eq!(
            compare(6, "h6", &head(Some(5), "h5"), true, at),
            Tail::AtHead
        );
        assert_eq!(
            compare(6, "h6", &head(Some(5), "xx"), true, at),
            Tail::Other
        );
    }

    #[test]
    fn records_read_on_one_line() {
        let mut r = record(7, "CN_SHARE_KEY", audit::GENESIS_HASH);
        r.user_name = Some("bob".into());
        r.user_type = Some("CN_CRYPTO_USER".into());
        r.actor_name = Some("alice".into());
        r.key_handle = Some(5);
        r.origin_node = Some(2);
        r.detail = Some("a\nb\x1b[31m".into());
        assert_eq!(
            describe(&r),
            "#7  2025-01-01T00:00:00.000000Z  CN_SHARE_KEY  SUCCESS  user=bob(CN_CRYPTO_USER) \
             actor=alice key=5 origin=2 a b [31m"
        );
        assert_eq!(
            describe(&record(0, "CN_NODE_START", "")),
            "#0  2025-01-01T00:00:00.000000Z  CN_NODE_START  SUCCESS"
        );
    }

    #[test]
    fn lines_wait_for_their_newline_and_are_never_held_whole_when_huge() {
        let long = vec![b'x'; MAX_LINE + 10];
        let mut input = b"one\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\ntwo\nunfini");
        let mut lines = Lines::new(std::io::Cursor::new(input.clone()));
        let one = lines.next_line().unwrap().unwrap();
        assert_eq!((one.number, one.bytes.as_slice()), (1, b"one".as_slice()));
        let huge = lines.next_line().unwrap().unwrap();
        assert!(huge.overlong && huge.bytes.len() == MAX_LINE);
        assert_eq!(huge.human(), "#? unparsable line 2");
        assert_eq!(huge.json(), r#"{"unparsable_line":2}"#);
        assert_eq!(lines.next_line().unwrap().unwrap().bytes, b"two");
        assert!(lines.next_line().unwrap().is_none());
        assert_eq!(lines.position(), input.len() as u64);
        assert_eq!(lines.whole, input.len() as u64 - 6);
        let rest = lines.rest().unwrap();
        assert_eq!(
            (rest.number, rest.bytes.as_slice()),
            (4, b"unfini".as_slice())
        );
        assert!(lines.rest().is_none());
    }

    #[test]
    fn a_record_line_is_printed_as_it_is_for_json() {
        let (text, _) = sealed(1, false);
        let line = Line {
            number: 1,
            bytes: format!("{}\r", text.trim_end()).into_bytes(),
            overlong: false,
        };
        assert_eq!(line.json(), text.trim_end());
        assert!(line.human().starts_with("#0  "));
    }

    #[test]
    fn only_ed25519_keys_are_audit_keys() {
        let pem = public().to_pem();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, &pem).unwrap();
        assert_eq!(read_key(&path).unwrap(), public());
        std::fs::write(&path, "not pem").unwrap();
        let err = read_key(&path).unwrap_err();
        assert!(err.to_string().contains("not a PEM public key"), "{err}");
        assert!(!failed_check(&err));
        let err = read_key(&dir.path().join("missing.pem")).unwrap_err();
        assert!(!failed_check(&err));
    }

    #[test]
    fn the_commands_parse() {
        let parse = |line: &str| {
            crate::Cli::try_parse_from(std::iter::once("sealgate").chain(line.split_whitespace()))
        };
        for line in [
            "audit verify node-1/audit.jsonl",
            "audit verify a.jsonl --key k.pem --cluster c.toml --output json",
            "audit tail a.jsonl",
            "audit tail a.jsonl -n 3 --follow",
            "audit tail a.jsonl --lines 0 -f",
            "audit key --node 1 --out k.pem",
        ] {
            if let Err(e) = parse(line) {
                panic!("{line}: {e}");
            }
        }
        assert!(parse("audit verify").is_err());
        assert!(parse("audit key").is_err());
        assert!(parse("audit key --node 0").is_err());
        assert!(parse("audit tail a -n x").is_err());
    }
}
