//! `sealgate key …`: generate, import, export (public halves), wrap, unwrap, list, show, share,
//! unshare, set attributes and delete keys. Keys are named by `--handle` (decimal or 0x-hex) or,
//! where a command takes one key, by `--label` (which must match exactly one key).
//!
//! JSON shape of one key (`key list`, `key show`): {"handle", "uid", "label", "class",
//! "key_type", "owner", "owner_id", "shared_with": [names], "attributes": {name: text}}.

use crate::credentials::{self, On, Target};
use crate::output::{self, Report, error, input, usage};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use sealgate_hsm_client::Client;
use sealgate_hsm_crypto as crypto;
use sealgate_hsm_proto::{
    AttributeValue, Curve, KeyInfo, KeySpec, KeyType, OaepHash, Reply, Request, WrapMechanism,
};
use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// `sealgate key …`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate a key or key pair in the HSM.
    ///
    /// Pairs: the private key gets sign=true and the public key verify=true unless --attr /
    /// --public-attr say otherwise; AES keys get encrypt=true decrypt=true; generic secrets
    /// sign=true verify=true (HMAC). --label and --id apply to both halves of a pair.
    /// JSON data: {"public": h, "private": h, "handles": [public, private]} for pairs,
    /// {"handle": h, "handles": [h]} for secret keys.
    #[command(subcommand)]
    Generate(GenerateCommand),
    /// Import a PEM private key (PKCS#8 "PRIVATE KEY"), wrapped on the way in.
    ///
    /// The key is wrapped here with RSA-AES under a temporary session key pair made in one
    /// node, unwrapped there, and the session keys are deleted. The new key gets sign=true
    /// unless --attr says otherwise.
    /// JSON data: {"handle", "handles": [h], "key_type", "node"}.
    Import(ImportArgs),
    /// Export a public key as PEM (the handle of the public or the private half).
    ///
    /// JSON data: {"handle", "pem", "out"?}.
    Export(ExportArgs),
    /// Export a key wrapped under another key (only extractable keys, by their owner).
    ///
    /// JSON data: {"handle", "wrapping_key", "mechanism", "wrapped": hex, "len", "out"?}.
    Wrap(WrapArgs),
    /// Import a wrapped key (the bytes `key wrap --out` wrote).
    ///
    /// JSON data: {"handle", "handles": [h]}.
    Unwrap(UnwrapArgs),
    /// List the keys this user can see, optionally filtered.
    ///
    /// JSON data: [key objects, see the module doc].
    List(ListArgs),
    /// Show one key's attributes.
    ///
    /// JSON data: a key object.
    Show(KeyRef),
    /// Share a key with a crypto user (owner only).
    ///
    /// JSON data: {"handle", "shared_with": user}.
    Share(ShareArgs),
    /// Stop sharing a key with a crypto user (owner only).
    ///
    /// JSON data: {"handle", "unshared_with": user}.
    Unshare(ShareArgs),
    /// Change attributes (label, usage flags, one-way flags; trusted by a crypto officer).
    ///
    /// JSON data: {"handle", "changed": {name: value}}.
    SetAttribute(SetAttributeArgs),
    /// Delete a key (owner only).
    ///
    /// JSON data: {"handle", "deleted": true}.
    Delete(KeyRef),
}

/// One key, by handle or label.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct KeyRef {
    /// The key's handle (decimal or 0x-hex).
    #[arg(long, value_parser = parse_handle)]
    pub(crate) handle: Option<u64>,
    /// The key's label (must match exactly one key).
    #[arg(long)]
    pub(crate) label: Option<String>,
}

/// Attributes of a new key.
#[derive(Debug, Clone, Args, Default)]
pub(crate) struct NewKeyArgs {
    /// Label (for pairs: both halves).
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Id (for pairs: both halves).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// An attribute of the private or secret key, name=value (repeatable), e.g.
    /// extractable=true, token=false, decrypt=true.
    #[arg(long = "attr", value_name = "NAME=VALUE", value_parser = parse_attr)]
    pub(crate) attrs: Vec<AttributeValue>,
    /// Approvals needed to sign with the key (quorum `key-usage`, 2 to 8; fixed at creation,
    /// at most the number of its users: the owner and --share-with).
    #[arg(long, value_name = "M")]
    pub(crate) quorum_usage: Option<u8>,
    /// Approvals needed to wrap, unwrap with, share, unshare or change the key (quorum
    /// `key-management`; as --quorum-usage).
    #[arg(long, value_name = "M")]
    pub(crate) quorum_management: Option<u8>,
    /// Crypto users to share the key with from its creation (repeatable).
    #[arg(long = "share-with", value_name = "USER")]
    pub(crate) share_with: Vec<String>,
}

impl NewKeyArgs {
    /// The private or secret key's extra attributes: `--attr`s and the creation options.
    fn private_extra(&self) -> Vec<AttributeValue> {
        let mut out = self.attrs.clone();
        if let Some(m) = self.quorum_usage {
            out.push(AttributeValue::new("quorum-usage", m.to_string()));
        }
        if let Some(m) = self.quorum_management {
            out.push(AttributeValue::new("quorum-management", m.to_string()));
        }
        for user in &self.share_with {
            out.push(AttributeValue::new("share", user.clone()));
        }
        out
    }
}

/// Attributes of the public half of a new pair.
#[derive(Debug, Clone, Args, Default)]
pub(crate) struct PublicArgs {
    /// An attribute of the public key, name=value (repeatable), e.g. encrypt=true.
    #[arg(long = "public-attr", value_name = "NAME=VALUE", value_parser = parse_attr)]
    pub(crate) public_attrs: Vec<AttributeValue>,
}

/// `key generate …`.
#[derive(Debug, Subcommand)]
pub(crate) enum GenerateCommand {
    /// An RSA key pair.
    Rsa {
        /// Modulus size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        bits: u16,
        #[command(flatten)]
        key: NewKeyArgs,
        #[command(flatten)]
        public: PublicArgs,
    },
    /// An ECDSA key pair.
    Ec {
        /// secp256r1, secp384r1 or secp521r1.
        #[arg(long, default_value = "secp256r1")]
        curve: Curve,
        #[command(flatten)]
        key: NewKeyArgs,
        #[command(flatten)]
        public: PublicArgs,
    },
    /// An Ed25519 key pair.
    Ed25519 {
        #[command(flatten)]
        key: NewKeyArgs,
        #[command(flatten)]
        public: PublicArgs,
    },
    /// An AES key.
    Aes {
        /// Key size: 128, 192 or 256.
        #[arg(long, default_value_t = 256)]
        bits: u16,
        #[command(flatten)]
        key: NewKeyArgs,
    },
    /// A generic secret (HMAC, derivation).
    GenericSecret {
        /// Length in bytes (16–800).
        #[arg(long, default_value_t = 32)]
        bytes: u16,
        #[command(flatten)]
        key: NewKeyArgs,
    },
}

/// `key import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The PEM file with a PKCS#8 "PRIVATE KEY".
    #[arg(long, value_name = "FILE")]
    pub(crate) pem: PathBuf,
    #[command(flatten)]
    pub(crate) key: NewKeyArgs,
}

/// `key export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    pub(crate) key: KeyRef,
    /// Write the PEM to FILE instead of stdout. A new FILE is created with mode 0600; an
    /// existing one is overwritten and keeps its mode.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// `key wrap`.
#[derive(Debug, Args)]
pub(crate) struct WrapArgs {
    #[command(flatten)]
    pub(crate) key: KeyRef,
    /// Handle of the wrapping key (AES key, or RSA public key).
    #[arg(long, value_name = "HANDLE", value_parser = parse_handle)]
    pub(crate) wrapping_key: u64,
    /// aes-no-pad, aes-zero-pad, rsa-oaep-HASH or rsa-aes-HASH.
    #[arg(long)]
    pub(crate) mechanism: WrapMechanism,
    /// Write the wrapped bytes (raw) to FILE; without it they are printed in hex. A new FILE
    /// is created with mode 0600 (owner only); an existing one is overwritten and keeps its
    /// mode.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// `key unwrap`.
#[derive(Debug, Args)]
pub(crate) struct UnwrapArgs {
    /// Handle of the unwrapping key (AES key, or RSA private key).
    #[arg(long, value_name = "HANDLE", value_parser = parse_handle)]
    pub(crate) wrapping_key: u64,
    /// The mechanism the key was wrapped with.
    #[arg(long)]
    pub(crate) mechanism: WrapMechanism,
    /// Type of the wrapped key: rsa, ec, ed25519, aes, generic-secret.
    #[arg(long)]
    pub(crate) key_type: KeyType,
    /// File with the wrapped bytes (raw).
    #[arg(long = "in", value_name = "FILE")]
    pub(crate) input: PathBuf,
    #[command(flatten)]
    pub(crate) key: NewKeyArgs,
}

/// `key list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only keys with this attribute value, name=value (repeatable): class, key-type, label,
    /// id, token, sign, verify, encrypt, decrypt, wrap, unwrap, extractable, trusted.
    #[arg(long = "filter", value_name = "NAME=VALUE", value_parser = parse_attr)]
    pub(crate) filters: Vec<AttributeValue>,
}

/// `key share` / `key unshare`.
#[derive(Debug, Args)]
pub(crate) struct ShareArgs {
    #[command(flatten)]
    pub(crate) key: KeyRef,
    /// The crypto user to share with (or stop sharing with). Not `--user`, which names the
    /// user logged in.
    #[arg(long, value_name = "USER")]
    pub(crate) with: String,
}

/// `key set-attribute`.
#[derive(Debug, Args)]
pub(crate) struct SetAttributeArgs {
    #[command(flatten)]
    pub(crate) key: KeyRef,
    /// The change, name=value (repeatable).
    #[arg(long = "attr", value_name = "NAME=VALUE", value_parser = parse_attr, required = true)]
    pub(crate) attrs: Vec<AttributeValue>,
}

/// A handle: decimal or 0x-hex.
pub(crate) fn parse_handle(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("expected a key handle (decimal or 0x-hex), got {s:?}"))
}

/// `name=value`.
pub(crate) fn parse_attr(s: &str) -> Result<AttributeValue, String> {
    match s.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok(AttributeValue::new(name.trim(), value))
        }
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// What the key is for, to pick one half of a pair that shares a label: the attribute that
/// must have this value (a name starting with `!`: must not have it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Purpose(pub(crate) &'static str, pub(crate) &'static str);

impl Purpose {
    /// Any key with the label (it must be the only one).
    pub(crate) const ANY: Option<Purpose> = None;

    /// Whether `k` fits.
    fn fits(self, k: &KeyInfo) -> bool {
        match self.0.strip_prefix('!') {
            Some(name) => k.attribute(name) != Some(self.1),
            None => k.attribute(self.0) == Some(self.1),
        }
    }
}

/// The private or secret half: what `key wrap` exports.
const NOT_PUBLIC: Purpose = Purpose("!class", "public-key");

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.strip_prefix('!') {
            Some(name) => write!(f, "{name} other than {}", self.1),
            None => write!(f, "{}={}", self.0, self.1),
        }
    }
}

/// Picks the key `label` names: the only match, or the only one fit for `purpose`. Otherwise
/// the error lists every key with the label, by handle and class.
fn pick(label: &str, keys: &[KeyInfo], purpose: Option<Purpose>) -> anyhow::Result<u64> {
    let fit: Vec<&KeyInfo> = match purpose {
        Some(p) if keys.len() > 1 => keys.iter().filter(|k| p.fits(k)).collect(),
        _ => keys.iter().collect(),
    };
    match fit.as_slice() {
        [one] => Ok(one.handle),
        [] if keys.is_empty() => Err(error(
            "not-found",
            format!(
                "no key labelled {label:?} is visible to this user (`sealgate key list` shows \
                 the keys it can see)"
            ),
        )),
        _ => {
            let listed = keys
                .iter()
                .map(|k| format!("{} ({})", k.handle, k.attribute("class").unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(", ");
            let why = match purpose {
                Some(p) if fit.is_empty() => format!("; none of them has {p}"),
                Some(p) => format!("; {} of them have {p}", fit.len()),
                None => String::new(),
            };
            Err(usage(format!(
                "label {label:?} matches {} keys: handles {listed}{why}; use --handle",
                keys.len()
            )))
        }
    }
}

impl KeyRef {
    /// The handle, looking the label up if needed.
    pub(crate) async fn resolve(
        &self,
        client: &Client,
        purpose: Option<Purpose>,
    ) -> anyhow::Result<u64> {
        if let Some(h) = self.handle {
            return Ok(h);
        }
        let Some(label) = &self.label else {
            return Err(usage("give --handle or --label"));
        };
        let filter = vec![AttributeValue::new("label", label.clone())];
        let keys = credentials::list_keys(client, filter).await?;
        pick(label, &keys, purpose)
    }
}

/// Attributes of a new key: `defaults` not overridden, then label, id, then `extra`.
fn template(
    defaults: &[(&str, &str)],
    key: &NewKeyArgs,
    extra: &[AttributeValue],
) -> Vec<AttributeValue> {
    let mut out: Vec<AttributeValue> = Vec::new();
    let given = |name: &str| {
        extra.iter().any(|a| a.name == name)
            || (name == "label" && key.label.is_some())
            || (name == "id" && key.id.is_some())
    };
    for (name, value) in defaults {
        if !given(name) {
            out.push(AttributeValue::new(*name, *value));
        }
    }
    if let Some(label) = &key.label {
        out.push(AttributeValue::new("label", label.clone()));
    }
    if let Some(id) = &key.id {
        out.push(AttributeValue::new("id", id.clone()));
    }
    out.extend(extra.iter().cloned());
    out
}

/// The request `key generate` sends.
fn generate_request(command: &GenerateCommand) -> Request {
    let pair = |spec: KeySpec, key: &NewKeyArgs, public: &PublicArgs| Request::GenerateKeyPair {
        spec,
        public: template(&[("verify", "true")], key, &public.public_attrs),
        private: template(&[("sign", "true")], key, &key.private_extra()),
    };
    match command {
        GenerateCommand::Rsa { bits, key, public } => {
            pair(KeySpec::Rsa { bits: *bits }, key, public)
        }
        GenerateCommand::Ec { curve, key, public } => pair(KeySpec::Ec(*curve), key, public),
        GenerateCommand::Ed25519 { key, public } => pair(KeySpec::Ed25519, key, public),
        GenerateCommand::Aes { bits, key } => Request::GenerateKey {
            spec: KeySpec::Aes { bits: *bits },
            attributes: template(
                &[("encrypt", "true"), ("decrypt", "true")],
                key,
                &key.private_extra(),
            ),
        },
        GenerateCommand::GenericSecret { bytes, key } => Request::GenerateKey {
            spec: KeySpec::GenericSecret { bytes: *bytes },
            attributes: template(
                &[("sign", "true"), ("verify", "true")],
                key,
                &key.private_extra(),
            ),
        },
    }
}

/// The report for new keys: a pair (public, private) or one secret key.
fn created_report(handles: &[u64], pair: bool) -> anyhow::Result<Report> {
    match (pair, handles) {
        (true, [public, private]) => Ok(Report::new(
            json!({"public": public, "private": private, "handles": [public, private]}),
            format!("public key handle {public}\nprivate key handle {private}"),
        )),
        (false, [handle]) => Ok(Report::new(
            json!({"handle": handle, "handles": [handle]}),
            format!("key handle {handle}"),
        )),
        _ => Err(error(
            "failed",
            format!("the node answered with {} handles", handles.len()),
        )),
    }
}

/// A key's JSON object.
pub(crate) fn key_json(k: &KeyInfo) -> Value {
    let attributes: Map<String, Value> = k
        .attributes
        .iter()
        .map(|a| (a.name.clone(), Value::String(a.value.clone())))
        .collect();
    json!({
        "handle": k.handle,
        "uid": k.uid,
        "label": k.attribute("label").unwrap_or_default(),
        "class": k.attribute("class").unwrap_or_default(),
        "key_type": k.attribute("key-type").unwrap_or_default(),
        "owner": k.owner_name,
        "owner_id": k.owner,
        "shared_with": k.shared_with,
        "attributes": attributes,
    })
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// `key list` as a table.
fn list_text(keys: &[KeyInfo]) -> String {
    let mut text = format!(
        "{:<10} {:<12} {:<15} {:<16} {:<24} {}\n",
        "HANDLE", "CLASS", "TYPE", "OWNER", "LABEL", "SHARED WITH"
    );
    for k in keys {
        let _ = writeln!(
            text,
            "{:<10} {:<12} {:<15} {:<16} {:<24} {}",
            k.handle,
            k.attribute("class").unwrap_or("-"),
            k.attribute("key-type").unwrap_or("-"),
            k.owner_name,
            or_dash(k.attribute("label").unwrap_or_default()),
            or_dash(&k.shared_with.join(","))
        );
    }
    let _ = write!(text, "{} keys", keys.len());
    text
}

/// `key show` as `name value` lines.
fn show_text(k: &KeyInfo) -> String {
    let mut text = format!("{:<20} {}\n", "handle", k.handle);
    let _ = writeln!(text, "{:<20} {}", "uid", k.uid);
    let _ = writeln!(text, "{:<20} {} (id {})", "owner", k.owner_name, k.owner);
    let _ = writeln!(
        text,
        "{:<20} {}",
        "shared-with",
        or_dash(&k.shared_with.join(", "))
    );
    for a in &k.attributes {
        let _ = writeln!(text, "{:<20} {}", a.name, a.value);
    }
    text
}

/// `key share` or `key unshare`: what differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    Share,
    Unshare,
}

impl Sharing {
    /// The request, the report's JSON field and its human text.
    fn parts(self, handle: u64, user: String) -> (Request, &'static str, String) {
        match self {
            Self::Share => {
                let text = format!("key {handle} shared with {user}");
                (Request::ShareKey { handle, user }, "shared_with", text)
            }
            Self::Unshare => {
                let text = format!("key {handle} no longer shared with {user}");
                (Request::UnshareKey { handle, user }, "unshared_with", text)
            }
        }
    }
}

/// Shares the key of `args` with `args.with`, or stops sharing it.
async fn set_sharing(client: &Client, args: ShareArgs, how: Sharing) -> anyhow::Result<Report> {
    let handle = args.key.resolve(client, Purpose::ANY).await?;
    let (request, field, text) = how.parts(handle, args.with.clone());
    credentials::done(client, On::Any, request).await?;
    Ok(Report::new(
        json!({"handle": handle, field: args.with}),
        text,
    ))
}

/// Runs a `key` command.
pub(crate) async fn run(command: KeyCommand, target: &Target) -> anyhow::Result<Report> {
    let client = credentials::connect_user(target).await?;
    let result = run_with(&client, command).await;
    credentials::finish(client).await;
    result
}

async fn run_with(client: &Client, command: KeyCommand) -> anyhow::Result<Report> {
    match command {
        KeyCommand::Generate(g) => {
            let pair = !matches!(
                g,
                GenerateCommand::Aes { .. } | GenerateCommand::GenericSecret { .. }
            );
            let handles = credentials::keys_created(client, On::Any, generate_request(&g)).await?;
            created_report(&handles, pair)
        }
        KeyCommand::Import(args) => import(client, &args).await,
        KeyCommand::Export(args) => {
            let handle = args
                .key
                .resolve(client, Some(Purpose("class", "public-key")))
                .await?;
            let pem = match credentials::call(client, On::Any, Request::ExportPublicKey { handle })
                .await?
            {
                Reply::PublicKey { pem, .. } => pem,
                other => return Err(credentials::unexpected(&other)),
            };
            let mut data = json!({"handle": handle, "pem": pem});
            match &args.out {
                Some(path) => {
                    output::write_file(path, pem.as_bytes())?;
                    if let Some(m) = data.as_object_mut() {
                        m.insert("out".into(), json!(path.display().to_string()));
                    }
                    Ok(Report::new(
                        data,
                        format!("public key of {handle} written to {}", path.display()),
                    ))
                }
                None => Ok(Report::bytes(data, pem.into_bytes())),
            }
        }
        KeyCommand::Wrap(args) => {
            let handle = args.key.resolve(client, Some(NOT_PUBLIC)).await?;
            let request = Request::WrapKey {
                wrapping: args.wrapping_key,
                mechanism: args.mechanism,
                handle,
            };
            let wrapped = credentials::data(client, On::Any, request).await?;
            let mut data = json!({
                "handle": handle,
                "wrapping_key": args.wrapping_key,
                "mechanism": args.mechanism.to_string(),
                "wrapped": hex::encode(&wrapped),
                "len": wrapped.len(),
            });
            match &args.out {
                Some(path) => {
                    output::write_file(path, &wrapped)?;
                    if let Some(m) = data.as_object_mut() {
                        m.insert("out".into(), json!(path.display().to_string()));
                    }
                    Ok(Report::new(
                        data,
                        format!(
                            "key {handle} wrapped ({} bytes) written to {}",
                            wrapped.len(),
                            path.display()
                        ),
                    ))
                }
                None => Ok(Report::new(data, hex::encode(&wrapped))),
            }
        }
        KeyCommand::Unwrap(args) => {
            let wrapped = std::fs::read(&args.input)
                .with_context(|| format!("cannot read {}", args.input.display()))?;
            let request = Request::UnwrapKey {
                unwrapping: args.wrapping_key,
                mechanism: args.mechanism,
                wrapped,
                key_type: args.key_type,
                attributes: template(&[], &args.key, &args.key.private_extra()),
            };
            let handles = credentials::keys_created(client, On::Any, request).await?;
            created_report(&handles, false)
        }
        KeyCommand::List(args) => {
            let keys = credentials::list_keys(client, args.filters).await?;
            Ok(Report::new(
                Value::Array(keys.iter().map(key_json).collect()),
                list_text(&keys),
            ))
        }
        KeyCommand::Show(key) => {
            let handle = key.resolve(client, Purpose::ANY).await?;
            match credentials::call(client, On::Any, Request::GetKey { handle }).await? {
                Reply::Key(k) => Ok(Report::new(key_json(&k), show_text(&k))),
                other => Err(credentials::unexpected(&other)),
            }
        }
        KeyCommand::Share(args) => set_sharing(client, args, Sharing::Share).await,
        KeyCommand::Unshare(args) => set_sharing(client, args, Sharing::Unshare).await,
        KeyCommand::SetAttribute(args) => {
            let handle = args.key.resolve(client, Purpose::ANY).await?;
            let changed: Map<String, Value> = args
                .attrs
                .iter()
                .map(|a| (a.name.clone(), Value::String(a.value.clone())))
                .collect();
            let request = Request::SetAttributes {
                handle,
                changes: args.attrs,
            };
            credentials::done(client, On::Any, request).await?;
            let text = changed
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ");
            Ok(Report::new(
                json!({"handle": handle, "changed": changed}),
                format!("key {handle}: set {text}"),
            ))
        }
        KeyCommand::Delete(key) => {
            let handle = key.resolve(client, Purpose::ANY).await?;
            credentials::done(client, On::Any, Request::DeleteKey { handle }).await?;
            Ok(Report::new(
                json!({"handle": handle, "deleted": true}),
                format!("deleted key {handle}"),
            ))
        }
    }
}

// ---- import ----

/// The PKCS#8 DER of the first "PRIVATE KEY" block in `text`; every block is zeroized.
fn pkcs8_from_pem(text: &[u8]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let blocks: Vec<(String, Zeroizing<Vec<u8>>)> = pem::parse_many(text)
        .map_err(|e| input(format!("not a PEM file: {e}")))?
        .into_iter()
        .map(|p| (p.tag().to_owned(), Zeroizing::new(p.into_contents())))
        .collect();
    let convert = "convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY.pem -out KEY.pk8.pem`";
    let mut tags = Vec::new();
    for (tag, der) in blocks {
        match tag.as_str() {
            "PRIVATE KEY" => return Ok(der),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(input(
                    "encrypted PKCS#8 keys are not supported; decrypt it first with \
                     `openssl pkcs8 -in KEY.pem -out KEY.pk8.pem`",
                ));
            }
            "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
                return Err(input(format!(
                    "{tag} (PKCS#1/SEC1) is not supported, only PKCS#8 \"PRIVATE KEY\"; {convert}"
                )));
            }
            _ => tags.push(tag),
        }
    }
    if tags.is_empty() {
        Err(input("no PEM block found; expected a \"PRIVATE KEY\""))
    } else {
        Err(input(format!(
            "no \"PRIVATE KEY\" block (found {}); expected a PKCS#8 private key",
            tags.join(", ")
        )))
    }
}

/// The key type of a PKCS#8 private key, found by parsing it as each type.
fn detect_key_type(der: &[u8]) -> anyhow::Result<crypto::KeyType> {
    for t in [
        crypto::KeyType::Rsa,
        crypto::KeyType::Ec,
        crypto::KeyType::Ed25519,
    ] {
        if crypto::client::public_key_of_pkcs8(t, der).is_ok() {
            return Ok(t);
        }
    }
    Err(input(
        "the private key is not RSA 2048/3072/4096, EC P-256/P-384/P-521 or Ed25519",
    ))
}

fn proto_key_type(t: crypto::KeyType) -> KeyType {
    match t {
        crypto::KeyType::Rsa => KeyType::Rsa,
        crypto::KeyType::Ec => KeyType::Ec,
        crypto::KeyType::Ed25519 => KeyType::Ed25519,
        crypto::KeyType::Aes => KeyType::Aes,
        crypto::KeyType::GenericSecret => KeyType::GenericSecret,
    }
}

/// The node the import runs on: the first one up.
fn import_node(client: &Client) -> anyhow::Result<u32> {
    let nodes = client.nodes();
    nodes
        .iter()
        .find(|n| n.up)
        .or_else(|| nodes.first())
        .map(|n| n.id)
        .ok_or_else(|| error("connection", "no node of the cluster is up"))
}

async fn import(client: &Client, args: &ImportArgs) -> anyhow::Result<Report> {
    let text = Zeroizing::new(
        std::fs::read(&args.pem).with_context(|| format!("cannot read {}", args.pem.display()))?,
    );
    let pkcs8 =
        pkcs8_from_pem(&text).with_context(|| format!("cannot import {}", args.pem.display()))?;
    drop(text);
    let key_type = detect_key_type(&pkcs8)?;
    let node = import_node(client)?;
    let on = On::Node(node);
    // A session (token=false) RSA pair in that node: its public half wraps, its private half
    // unwraps; both vanish with the session anyway, and are deleted below.
    let session = credentials::keys_created(
        client,
        on,
        Request::GenerateKeyPair {
            spec: KeySpec::Rsa { bits: 2048 },
            public: vec![AttributeValue::new("token", "false")],
            private: vec![
                AttributeValue::new("token", "false"),
                AttributeValue::new("unwrap", "true"),
            ],
        },
    )
    .await
    .context("cannot make the session key pair for the import")?;
    let result = match session.as_slice() {
        [public, private] => {
            import_with(client, on, *public, *private, key_type, &pkcs8, &args.key).await
        }
        _ => Err(error(
            "failed",
            format!("the node answered with {} handles", session.len()),
        )),
    };
    for handle in session {
        if let Err(e) = credentials::done(client, on, Request::DeleteKey { handle }).await {
            tracing::warn!("cannot delete session key {handle} on node {node}: {e:#}");
        }
    }
    Ok(import_report(result?, key_type, node))
}

/// The report of `key import`: the same `"handle"`/`"handles"` shape as `generate`/`unwrap`.
fn import_report(handle: u64, key_type: crypto::KeyType, node: u32) -> Report {
    Report::new(
        json!({
            "handle": handle,
            "handles": [handle],
            "key_type": key_type.as_str(),
            "node": node,
        }),
        format!("imported {key_type} private key as handle {handle}"),
    )
}

async fn import_with(
    client: &Client,
    on: On,
    public: u64,
    private: u64,
    key_type: crypto::KeyType,
    pkcs8: &[u8],
    key: &NewKeyArgs,
) -> anyhow::Result<u64> {
    let der =
        match credentials::call(client, on, Request::ExportPublicKey { handle: public }).await? {
            Reply::PublicKey { der, .. } => der,
            other => return Err(credentials::unexpected(&other)),
        };
    let wrapping = crypto::PublicKey::from_der(&der)
        .map_err(|e| error("failed", format!("the session public key is unusable: {e}")))?;
    let wrapped = crypto::client::wrap_for_import(
        crypto::WrapMechanism::RsaAes {
            oaep: crypto::OaepHash::Sha256,
            aes: crypto::AesSize::Aes256,
        },
        crypto::client::ClientWrappingKey::RsaPublic(&wrapping),
        key_type,
        pkcs8,
    )
    .map_err(|e| input(format!("cannot wrap the private key: {e}")))?;
    let request = Request::UnwrapKey {
        unwrapping: private,
        mechanism: WrapMechanism::RsaAes {
            oaep: OaepHash::Sha256,
            aes_bits: 256,
        },
        wrapped,
        key_type: proto_key_type(key_type),
        attributes: template(&[("sign", "true")], key, &key.private_extra()),
    };
    match credentials::keys_created(client, on, request)
        .await?
        .as_slice()
    {
        [handle] => Ok(*handle),
        other => Err(error(
            "failed",
            format!("the node answered with {} handles", other.len()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_decimal_or_hex() {
        assert_eq!(parse_handle("42"), Ok(42));
        assert_eq!(parse_handle("0x2a"), Ok(42));
        assert_eq!(parse_handle("0X2A"), Ok(42));
        assert!(parse_handle("web").is_err());
        assert!(parse_handle("-1").is_err());
    }

    #[test]
    fn attributes_are_name_equals_value() {
        assert_eq!(
            parse_attr("label=a=b"),
            Ok(AttributeValue::new("label", "a=b"))
        );
        assert_eq!(
            parse_attr("sign=true"),
            Ok(AttributeValue::new("sign", "true"))
        );
        assert!(parse_attr("sign").is_err());
        assert!(parse_attr("=true").is_err());
    }

    fn names(attrs: &[AttributeValue]) -> Vec<String> {
        attrs
            .iter()
            .map(|a| format!("{}={}", a.name, a.value))
            .collect()
    }

    #[test]
    fn pairs_get_sign_and_verify_unless_told_otherwise() {
        let cmd = GenerateCommand::Ec {
            curve: Curve::P256,
            key: NewKeyArgs {
                label: Some("web".into()),
                id: None,
                attrs: vec![AttributeValue::new("extractable", "true")],
                ..NewKeyArgs::default()
            },
            public: PublicArgs::default(),
        };
        let Request::GenerateKeyPair {
            spec,
            public,
            private,
        } = generate_request(&cmd)
        else {
            panic!("a pair")
        };
        assert_eq!(spec, KeySpec::Ec(Curve::P256));
        assert_eq!(names(&public), ["verify=true", "label=web"]);
        assert_eq!(
            names(&private),
            ["sign=true", "label=web", "extractable=true"]
        );

        let cmd = GenerateCommand::Rsa {
            bits: 3072,
            key: NewKeyArgs {
                attrs: vec![
                    AttributeValue::new("sign", "false"),
                    AttributeValue::new("decrypt", "true"),
                ],
                ..NewKeyArgs::default()
            },
            public: PublicArgs {
                public_attrs: vec![AttributeValue::new("encrypt", "true")],
            },
        };
        let Request::GenerateKeyPair {
            spec,
            public,
            private,
        } = generate_request(&cmd)
        else {
            panic!("a pair")
        };
        assert_eq!(spec, KeySpec::Rsa { bits: 3072 });
        assert_eq!(names(&public), ["verify=true", "encrypt=true"]);
        assert_eq!(names(&private), ["sign=false", "decrypt=true"]);

        let cmd = GenerateCommand::Aes {
            bits: 128,
            key: NewKeyArgs::default(),
        };
        let Request::GenerateKey { spec, attributes } = generate_request(&cmd) else {
            panic!("a secret key")
        };
        assert_eq!(spec, KeySpec::Aes { bits: 128 });
        assert_eq!(names(&attributes), ["encrypt=true", "decrypt=true"]);
    }

    fn key(handle: u64, class: &str, sign: bool) -> KeyInfo {
        KeyInfo {
            handle,
            uid: format!("{handle:016x}"),
            owner: 3,
            owner_name: "alice".into(),
            shared_with: vec!["bob".into()],
            attributes: vec![
                AttributeValue::new("class", class),
                AttributeValue::new("key-type", "ec"),
                AttributeValue::new("label", "web"),
                AttributeValue::new("sign", if sign { "true" } else { "false" }),
            ],
        }
    }

    #[test]
    fn labels_pick_one_key_or_explain() {
        let pair = [key(5, "public-key", false), key(6, "private-key", true)];
        assert_eq!(
            pick("web", &pair, Some(Purpose("sign", "true"))).unwrap(),
            6
        );
        assert_eq!(
            pick("web", &pair, Some(Purpose("class", "public-key"))).unwrap(),
            5
        );
        assert_eq!(pick("web", &pair, Some(NOT_PUBLIC)).unwrap(), 6);
        let err = pick("web", &pair, Purpose::ANY).unwrap_err();
        assert_eq!(output::classify(&err).0, "usage");
        assert_eq!(
            err.to_string(),
            "label \"web\" matches 2 keys: handles 5 (public-key), 6 (private-key); use --handle"
        );
        let err = pick("web", &[], Purpose::ANY).unwrap_err();
        assert_eq!(output::classify(&err).0, "not-found");
        assert!(err.to_string().contains("no key labelled \"web\""), "{err}");
        assert_eq!(pick("web", &pair[..1], Purpose::ANY).unwrap(), 5);

        // Several keys, none fit: every match is listed, with what was looked for.
        let err = pick("web", &pair, Some(Purpose("decrypt", "true")))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "label \"web\" matches 2 keys: handles 5 (public-key), 6 (private-key); none of \
             them has decrypt=true; use --handle"
        );
        // Several fit.
        let three = [
            key(5, "public-key", false),
            key(6, "private-key", true),
            key(7, "private-key", true),
        ];
        let err = pick("web", &three, Some(NOT_PUBLIC))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("handles 5 (public-key), 6 (private-key), 7 (private-key)")
                && err.contains("2 of them have class other than public-key"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1);
    }

    #[test]
    fn share_and_unshare_differ_only_in_request_and_wording() {
        let (request, field, text) = Sharing::Share.parts(5, "bob".into());
        assert_eq!(
            request,
            Request::ShareKey {
                handle: 5,
                user: "bob".into()
            }
        );
        assert_eq!(field, "shared_with");
        assert_eq!(text, "key 5 shared with bob");
        let (request, field, text) = Sharing::Unshare.parts(5, "bob".into());
        assert_eq!(
            request,
            Request::UnshareKey {
                handle: 5,
                user: "bob".into()
            }
        );
        assert_eq!(field, "unshared_with");
        assert_eq!(text, "key 5 no longer shared with bob");
    }

    #[test]
    fn import_reports_handles_like_generate_and_unwrap() {
        let r = import_report(9, crypto::KeyType::Ec, 1);
        assert_eq!(r.data()["handle"], json!(9));
        assert_eq!(r.data()["handles"], json!([9]));
        assert_eq!(r.data()["key_type"], json!("ec"));
        assert_eq!(r.data()["node"], json!(1));
        let generated = created_report(&[9], false).unwrap();
        assert_eq!(generated.data()["handles"], r.data()["handles"]);
    }

    #[test]
    fn key_json_has_a_stable_shape() {
        let v = key_json(&key(6, "private-key", true));
        assert_eq!(v["handle"], json!(6));
        assert_eq!(v["label"], json!("web"));
        assert_eq!(v["class"], json!("private-key"));
        assert_eq!(v["key_type"], json!("ec"));
        assert_eq!(v["owner"], json!("alice"));
        assert_eq!(v["owner_id"], json!(3));
        assert_eq!(v["shared_with"], json!(["bob"]));
        assert_eq!(v["attributes"]["sign"], json!("true"));
        let text = list_text(&[key(6, "private-key", true)]);
        assert!(
            text.contains("private-key") && text.contains("1 keys"),
            "{text}"
        );
        assert!(show_text(&key(6, "private-key", true)).contains("shared-with"));
    }

    #[test]
    fn pem_import_takes_pkcs8_only() {
        let pkcs8 = pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1, 2, 3]));
        assert_eq!(&pkcs8_from_pem(pkcs8.as_bytes()).unwrap()[..], &[1, 2, 3]);
        let with_params = format!(
            "{}{}",
            pem::encode(&pem::Pem::new("EC PARAMETERS", vec![6])),
            pem::encode(&pem::Pem::new("EC PRIVATE KEY", vec![1]))
        );
        let err = pkcs8_from_pem(with_params.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("openssl pkcs8 -topk8"), "{err}");
        let enc = pem::encode(&pem::Pem::new("ENCRYPTED PRIVATE KEY", vec![1]));
        assert!(pkcs8_from_pem(enc.as_bytes()).is_err());
        let cert = pem::encode(&pem::Pem::new("CERTIFICATE", vec![1]));
        let err = pkcs8_from_pem(cert.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("CERTIFICATE"), "{err}");
        assert!(pkcs8_from_pem(b"hello").is_err());
        assert!(detect_key_type(&[1, 2, 3]).is_err());
    }
}
