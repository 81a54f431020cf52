//! The node's audit log and its management events: JSON lines, appended and fsynced before the
//! operation is answered, one stream per node in its data directory.
//!
//! - `audit.jsonl`: CloudHSM's audit record for every login, logout, user and key management
//!   operation this node served, every such change it applied for another node, and its own
//!   starts. Each record has the time (UTC and epoch microseconds), a sequence number that
//!   starts at 0 and has no gaps for the life of the file, and a reboot counter that grows by
//!   one at each start of the node. Signatures and other cryptographic operations are not
//!   audited (as in CloudHSM).
//! - `management-events.jsonl`: CloudTrail-style events for cluster-level operations
//!   (`AddNode`, `RemoveNode`) asked of this node.
//!
//! The engine describes what happened ([`sealgate_hsm_core::Opcode`]); this module numbers,
//! stamps and writes it. A record that cannot be written makes the node refuse every further
//! audited operation (fail closed) until it is restarted; signing goes on.

use sealgate_hsm_core::crypto::{PrivateKey, SignMechanism};
use sealgate_hsm_core::{AuditUser, KeyHandle, Opcode, SessionId};
use sealgate_hsm_proto::ErrorKind;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The audit log's file name in a node's data directory.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// The management events' file name (in a node's data directory, and in the directory
/// `cluster init` writes).
pub const EVENTS_FILE: &str = "management-events.jsonl";

/// The longest record the log reads back at start (records are a few hundred bytes).
const MAX_RECORD: u64 = 64 << 10;

/// One audit record, as written (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// UTC, RFC 3339 with microseconds.
    pub time: String,
    /// Microseconds since the Unix epoch.
    pub usecs: u64,
    /// 0, 1, 2, ... with no gap in one node's file.
    pub sequence: u64,
    /// How many times the node has started with this file (1 at the first start).
    pub reboot_counter: u32,
    /// The node that wrote the record.
    pub hsm_id: u32,
    /// `CN_MGMT_CMD` (CloudHSM's command type).
    pub command_type: String,
    /// The operation (`CN_LOGIN`, `CN_CREATE_USER`, ...).
    pub opcode: String,
    /// `MINIMAL_LOG_ENTRY`, `MGMT_USER_DETAILS_LOG` or `MGMT_KEY_DETAILS_LOG`.
    pub log_type: String,
    /// The session on this node that asked for it (none for a replicated change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    /// `SUCCESS`, or the error kind the client was answered (`login-failed`, ...).
    pub response: String,
    /// The user the operation is about (logging in, created, deleted, shared with, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    /// Its type (`CN_CRYPTO_USER`, `CN_CRYPTO_OFFICER`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
    /// The user logged in on the session that asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_name: Option<String>,
    /// Its type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_type: Option<String>,
    /// The private or secret key (or a public key alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_handle: Option<u64>,
    /// The public key of a generated pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_handle: Option<u64>,
    /// The node that served the operation, when it is another one (the change was replicated
    /// here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_node: Option<u32>,
    /// More about the event (a start, a membership change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The `hash` of the record before it in the file (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 of the line up to this field (hex): see [`split_line`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// The node's audit key's Ed25519 signature of [`seal_message`]`(hash)` (hex).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub seal: String,
}

/// The `prev_hash` of a file's first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a seal signs: a fixed context and the record's hash in hex.
pub fn seal_message(hash: &str) -> Vec<u8> {
    let mut m = b"sealgate audit seal v1\n".to_vec();
    m.extend_from_slice(hash.as_bytes());
    m
}

/// A line cut into what its hash covers and the hash and seal that follow. A line is the
/// record's JSON object, written so that it ends `,"hash":"<64 hex>","seal":"<hex>"}`; the
/// hash is SHA-256 of everything before `,"hash":` (the object up to and including
/// `prev_hash`). `None` for a line not of that shape.
pub fn split_line(line: &str) -> Option<(&str, &str, &str)> {
    const HASH: &str = ",\"hash\":\"";
    const SEAL: &str = "\",\"seal\":\"";
    let at = line.rfind(HASH)?;
    let (covered, rest) = line.split_at(at);
    let rest = rest.strip_prefix(HASH)?.strip_suffix("\"}")?;
    let (hash, seal) = rest.split_once(SEAL)?;
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    (hash.len() == 64 && hex(hash) && !seal.is_empty() && hex(seal))
        .then_some((covered, hash, seal))
}

/// SHA-256 of `covered`, hex.
pub fn line_hash(covered: &str) -> String {
    hex::encode(sealgate_hsm_core::crypto::digest(
        sealgate_hsm_core::crypto::HashAlg::Sha256,
        covered.as_bytes(),
    ))
}

/// What a caller tells the log; [`AuditLog::record`] adds time and numbers.
#[derive(Debug, Clone)]
pub(crate) struct AuditEntry {
    pub opcode: Opcode,
    pub session: Option<SessionId>,
    pub actor: Option<AuditUser>,
    pub user: Option<AuditUser>,
    pub key_handle: Option<KeyHandle>,
    pub public_key_handle: Option<KeyHandle>,
    pub origin_node: Option<u32>,
    pub response: Result<(), ErrorKind>,
    pub detail: Option<String>,
}

impl AuditEntry {
    pub(crate) fn new(opcode: Opcode) -> Self {
        Self {
            opcode,
            session: None,
            actor: None,
            user: None,
            key_handle: None,
            public_key_handle: None,
            origin_node: None,
            response: Ok(()),
            detail: None,
        }
    }
}

/// Why the audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {reason}")]
pub struct AuditError {
    path: PathBuf,
    reason: String,
}

impl AuditError {
    pub(crate) fn new(path: &Path, reason: String) -> Self {
        Self {
            path: path.to_owned(),
            reason,
        }
    }
}

struct Writer {
    file: File,
    next_sequence: u64,
    /// The last record's hash (the next one's `prev_hash`).
    last_hash: String,
}

/// One node's audit stream.
pub(crate) struct AuditLog {
    path: PathBuf,
    /// The management events' file, beside it.
    events: PathBuf,
    hsm_id: u32,
    reboot_counter: u32,
    writer: Mutex<Writer>,
    failed: AtomicBool,
    /// Seals every record: the node's audit key ([`MasterKey::audit_key`]).
    ///
    /// [`MasterKey::audit_key`]: sealgate_hsm_core::crypto::MasterKey::audit_key
    sealer: PrivateKey,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("reboot_counter", &self.reboot_counter)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) `path` for node `hsm_id`, continues its sequence, counts this start
    /// and records it. A last line cut short by a crash (it was never acknowledged) is
    /// removed, and the start record says how many bytes it had; a last record that is whole
    /// but does not parse refuses the start: the stream cannot be continued safely.
    pub(crate) fn open(
        path: &Path,
        events: &Path,
        hsm_id: u32,
        sealer: PrivateKey,
    ) -> Result<Self, AuditError> {
        let fail = |reason: String| AuditError {
            path: path.to_owned(),
            reason,
        };
        let created = !path.exists();
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| fail(e.to_string()))?;
        let (last, unfinished) = last_record(&mut file).map_err(fail)?;
        if unfinished > 0 {
            let len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
            file.set_len(len - unfinished)
                .map_err(|e| fail(e.to_string()))?;
        }
        if created && let Some(dir) = path.parent() {
            // The new file's name must survive a crash too.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| fail(e.to_string()))?;
        }
        let (next_sequence, reboot_counter, last_hash) = match &last {
            Some(r) => (
                r.sequence + 1,
                r.reboot_counter.saturating_add(1),
                r.hash.clone(),
            ),
            None => (0, 1, GENESIS_HASH.to_owned()),
        };
        let log = Self {
            path: path.to_owned(),
            events: events.to_owned(),
            hsm_id,
            reboot_counter,
            writer: Mutex::new(Writer {
                file,
                next_sequence,
                last_hash,
            }),
            failed: AtomicBool::new(false),
            sealer,
        };
        let mut notes = vec![format!("sealgate {}", env!("CARGO_PKG_VERSION"))];
        if let Some(r) = &last
            && r.opcode != Opcode::NodeStop.name()
        {
            notes.push(format!(
                "the previous run did not stop cleanly (its last record is {})",
                r.sequence
            ));
        }
        if unfinished > 0 {
            notes.push(format!(
                "removed an unfinished last record of {unfinished} bytes (the node stopped \
                 while writing it)"
            ));
        }
        let mut start = AuditEntry::new(Opcode::NodeStart);
        start.detail = Some(notes.join("; "));
        log.record(start)?;
        Ok(log)
    }

    /// Records the node's clean stop: the record that closes a run (`sealgate audit verify`
    /// knows from it that nothing was cut after it).
    pub(crate) fn stop(&self) {
        if let Err(e) = self.record(AuditEntry::new(Opcode::NodeStop)) {
            tracing::error!("{e}");
        }
    }

    /// The last record's sequence number and hash.
    pub(crate) fn head(&self) -> Option<(u64, String)> {
        let writer = self.writer.lock().ok()?;
        writer
            .next_sequence
            .checked_sub(1)
            .map(|seq| (seq, writer.last_hash.clone()))
    }

    /// Whether records can be written (else audited operations are refused).
    pub(crate) fn healthy(&self) -> bool {
        !self.failed.load(Ordering::Relaxed)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a management event to the node's events file (durably); a failure is logged.
    pub(crate) fn event(&self, event: &ManagementEvent) {
        if let Err(e) = event.append_to(&self.events) {
            tracing::error!(
                path = %self.events.display(),
                "cannot write a management event: {e}"
            );
        }
    }

    /// Appends one record and makes it durable. On failure the log refuses further records.
    pub(crate) fn record(&self, entry: AuditEntry) -> Result<(), AuditError> {
        let fail = |reason: String| AuditError {
            path: self.path.clone(),
            reason,
        };
        if !self.healthy() {
            return Err(fail("an earlier record could not be written".into()));
        }
        let (time, usecs) = now_utc();
        let mut writer = self
            .writer
            .lock()
            .map_err(|_| fail("a writer failed earlier".into()))?;
        let role_type = |u: &Option<AuditUser>| {
            u.as_ref()
                .and_then(|u| u.role)
                .map(|r| r.audit_type().to_owned())
        };
        let record = AuditRecord {
            time,
            usecs,
            sequence: writer.next_sequence,
            reboot_counter: self.reboot_counter,
            hsm_id: self.hsm_id,
            command_type: "CN_MGMT_CMD".into(),
            opcode: entry.opcode.name().into(),
            log_type: entry.opcode.log_type().name().into(),
            session: entry.session.map(|s| s.0),
            response: match entry.response {
                Ok(()) => "SUCCESS".into(),
                Err(kind) => kind.as_str().into(),
            },
            user_type: role_type(&entry.user),
            user_name: entry.user.map(|u| u.name),
            actor_type: role_type(&entry.actor),
            actor_name: entry.actor.map(|u| u.name),
            key_handle: entry.key_handle.map(|h| h.0),
            public_key_handle: entry.public_key_handle.map(|h| h.0),
            origin_node: entry.origin_node,
            detail: entry.detail,
            prev_hash: writer.last_hash.clone(),
            hash: String::new(),
            seal: String::new(),
        };
        let json = serde_json::to_string(&record).map_err(|e| fail(e.to_string()))?;
        let covered = json
            .strip_suffix('}')
            .ok_or_else(|| fail("a record did not encode as an object".into()))?;
        let hash = line_hash(covered);
        let seal = self
            .sealer
            .sign(SignMechanism::Ed25519, &seal_message(&hash))
            .map_err(|e| fail(format!("cannot seal a record: {e}")))?;
        let mut line = format!(
            "{covered},\"hash\":\"{hash}\",\"seal\":\"{}\"}}\n",
            hex::encode(seal)
        )
        .into_bytes();
        debug_assert!(split_line(std::str::from_utf8(&line).unwrap_or("").trim_end()).is_some());
        let written = writer
            .file
            .write_all(&line)
            .and_then(|()| writer.file.sync_data());
        if let Err(e) = written {
            self.failed.store(true, Ordering::Relaxed);
            tracing::error!(
                path = %self.path.display(),
                "the audit log cannot be written; audited operations are refused until the \
                 node restarts: {e}"
            );
            return Err(fail(e.to_string()));
        }
        writer.next_sequence += 1;
        writer.last_hash = hash;
        line.clear();
        Ok(())
    }
}

/// A file whose every record checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// How many records.
    pub records: u64,
    /// The node that wrote them.
    pub hsm_id: Option<u32>,
    /// The last record's sequence number and hash.
    pub last: Option<(u64, String)>,
    /// Whether the last record is the node's stop record (`CN_NODE_STOP`): nothing can have
    /// been cut after it.
    pub closed: bool,
}

/// The first place where a file departs from what its node wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {what}", .sequence.map(|s| format!(" (record {s})")).unwrap_or_default())]
pub struct Tampered {
    /// The line (from 1).
    pub line: usize,
    /// The record's sequence number, when it could be read.
    pub sequence: Option<u64>,
    /// What is wrong.
    pub what: String,
}

/// Checks an audit file's text against node `key` (its audit key's public half): every
/// line is a record whose hash matches its content and whose seal is the key's signature,
/// the sequence numbers run from 0 without gap or reordering, and each record names the hash
/// of the one before. Reports the first departure: an edited, removed, reordered or inserted
/// record, or a cut (an unfinished last line). Whether the tail was cut after a whole record
/// is for the caller to tell from [`Verified::closed`] and the node's head.
pub fn verify(
    text: &str,
    key: &sealgate_hsm_core::crypto::PublicKey,
) -> Result<Verified, Tampered> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // Where each sequence number stands, to tell a removed record from a moved one.
    let positions: std::collections::HashMap<u64, usize> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let r: AuditRecord = serde_json::from_str(l.trim_end_matches('\n')).ok()?;
            Some((r.sequence, i + 1))
        })
        .collect();
    let mut done = Verified {
        records: 0,
        hsm_id: None,
        last: None,
        closed: false,
    };
    for (i, raw) in lines.iter().enumerate() {
        let line = i + 1;
        let fail = |sequence: Option<u64>, what: String| Tampered {
            line,
            sequence,
            what,
        };
        let Some(text) = raw.strip_suffix('\n') else {
            return Err(fail(
                None,
                "the last line is unfinished (the file was cut, or the node stopped while \
                 writing it)"
                    .into(),
            ));
        };
        let record: AuditRecord = serde_json::from_str(text)
            .map_err(|e| fail(None, format!("not a record: it was edited ({e})")))?;
        let seq = Some(record.sequence);
        let (covered, hash, seal) = split_line(text)
            .ok_or_else(|| fail(seq, "not a sealed record: it was edited".into()))?;
        if line_hash(covered) != hash {
            return Err(fail(
                seq,
                "edited: its content does not match its hash".into(),
            ));
        }
        let signature = hex::decode(seal).unwrap_or_default();
        if key
            .verify(SignMechanism::Ed25519, &seal_message(hash), &signature)
            .is_err()
        {
            return Err(fail(
                seq,
                "its seal is not a signature of the node's audit key (edited, or not this \
                 node's file)"
                    .into(),
            ));
        }
        match done.hsm_id {
            Some(id) if id != record.hsm_id => {
                return Err(fail(
                    seq,
                    format!(
                        "written by node {}, the records before by node {id}",
                        record.hsm_id
                    ),
                ));
            }
            _ => done.hsm_id = Some(record.hsm_id),
        }
        let (expected, prev_hash) = match &done.last {
            Some((s, h)) => (s + 1, h.as_str()),
            None => (0, GENESIS_HASH),
        };
        if record.sequence != expected {
            let what = match positions.get(&expected) {
                Some(at) if *at > line => format!(
                    "out of order: record {expected} was expected here and is at line {at} \
                     (records were reordered)"
                ),
                _ if record.sequence > expected => {
                    if record.sequence - 1 == expected {
                        format!("record {expected} before it was removed")
                    } else {
                        format!(
                            "records {expected} to {} before it were removed",
                            record.sequence - 1
                        )
                    }
                }
                _ => format!(
                    "out of order: record {expected} was expected here (records were \
                     reordered or repeated)"
                ),
            };
            return Err(fail(seq, what));
        }
        if record.prev_hash != prev_hash {
            return Err(fail(
                seq,
                "does not follow the record before it (a record was removed, inserted or \
                 reordered)"
                    .into(),
            ));
        }
        done.records += 1;
        done.closed = record.opcode == Opcode::NodeStop.name();
        done.last = Some((record.sequence, hash.to_owned()));
    }
    Ok(done)
}

/// The last whole record of `file` and the length of an unfinished line after it.
fn last_record(file: &mut File) -> Result<(Option<AuditRecord>, u64), String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Ok((None, 0));
    }
    let start = len.saturating_sub(MAX_RECORD);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_to_end(&mut tail))
        .map_err(|e| e.to_string())?;
    // The bytes after the last newline, then the last whole line before them.
    let mut parts = tail.rsplit(|&b| b == b'\n');
    let unfinished = parts.next().map_or(0, <[u8]>::len) as u64;
    let Some(line) = parts.next() else {
        return if start == 0 {
            Ok((None, unfinished))
        } else {
            Err(format!("its last line is longer than {MAX_RECORD} bytes"))
        };
    };
    // The line is whole if a newline precedes it or it starts the file.
    if parts.next().is_none() && start > 0 {
        return Err(format!("its last record is longer than {MAX_RECORD} bytes"));
    }
    let refuse = |why: String| {
        format!(
            "its last record {why}; the stream cannot be continued: check the file with \
             `sealgate audit verify`, then move it aside to start a new one"
        )
    };
    let text = std::str::from_utf8(line).map_err(|_| refuse("is not UTF-8".into()))?;
    let record: AuditRecord =
        serde_json::from_str(text).map_err(|e| refuse(format!("does not parse ({e})")))?;
    match split_line(text) {
        Some((covered, hash, _)) if line_hash(covered) == hash && hash == record.hash => {}
        _ => return Err(refuse("does not match its hash (edited)".into())),
    }
    Ok((Some(record), unfinished))
}

/// The time now: RFC 3339 UTC with microseconds, and microseconds since the epoch.
fn now_utc() -> (String, u64) {
    let usecs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    (rfc3339_micros(usecs), usecs)
}

fn rfc3339_micros(usecs: u64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(usecs) * 1_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// A CloudTrail-style management event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagementEvent {
    /// The format's version.
    pub event_version: String,
    /// When (UTC, RFC 3339).
    pub event_time: String,
    /// `sealgate`.
    pub event_source: String,
    /// `CreateCluster`, `AddNode`, `RemoveNode`.
    pub event_name: String,
    /// A random id (UUID form).
    #[serde(rename = "eventID")]
    pub event_id: String,
    /// `Management`.
    pub event_category: String,
    /// Whether the call only read.
    pub read_only: bool,
    /// The cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Who called: `type` (`CryptoOfficer`, `CryptoUser`, `Unauthenticated`,
    /// `LocalOperator`), `userName`, and the node and session it called.
    pub user_identity: serde_json::Value,
    /// Where the call came from (`ip`, or `local` for the command line).
    #[serde(rename = "sourceIPAddress")]
    pub source_ip_address: String,
    /// The call's parameters.
    pub request_parameters: serde_json::Value,
    /// What it answered (null when it failed).
    pub response_elements: serde_json::Value,
    /// The error kind, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// The error's message, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

impl ManagementEvent {
    /// An event named `name`, now, with a fresh id; the caller fills in the rest.
    pub(crate) fn new(name: &str, user_identity: serde_json::Value, source: String) -> Self {
        let (time, usecs) = now_utc();
        let _ = usecs;
        Self {
            event_version: "1.0".into(),
            event_time: time,
            event_source: "sealgate".into(),
            event_name: name.into(),
            event_id: event_id(),
            event_category: "Management".into(),
            read_only: false,
            cluster_id: None,
            user_identity,
            source_ip_address: source,
            request_parameters: serde_json::Value::Null,
            response_elements: serde_json::Value::Null,
            error_code: None,
            error_message: None,
        }
    }

    /// Appends the event to `path` (created if missing, owner-only) and makes it durable.
    pub(crate) fn append_to(&self, path: &Path) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        file.write_all(&line)?;
        file.sync_data()
    }
}

/// A random id in UUID version 4 form.
fn event_id() -> String {
    let mut b: [u8; 16] = sealgate_hsm_core::crypto::random_bytes(16)
        .ok()
        .and_then(|v| v.try_into().ok())
        .unwrap_or_default();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealgate_hsm_core::crypto::MasterKey;

    fn key() -> PrivateKey {
        MasterKey::from_bytes(&[7; 32])
            .unwrap()
            .audit_key(1)
            .unwrap()
    }

    fn open(path: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open(path, &path.with_file_name(EVENTS_FILE), 1, key())
    }

    fn records(path: &Path) -> Vec<AuditRecord> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn sequence_continues_and_the_reboot_counter_grows_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        {
            let log = open(&path).unwrap();
            let mut e = AuditEntry::new(Opcode::Login);
            e.user = Some(AuditUser {
                name: "alice".into(),
                role: None,
            });
            e.response = Err(ErrorKind::LoginFailed);
            log.record(e).unwrap();
        }
        let _log = open(&path).unwrap();
        let all = records(&path);
        let seq: Vec<u64> = all.iter().map(|r| r.sequence).collect();
        assert_eq!(seq, [0, 1, 2]);
        let boots: Vec<u32> = all.iter().map(|r| r.reboot_counter).collect();
        assert_eq!(boots, [1, 1, 2]);
        assert_eq!(all[1].opcode, "CN_LOGIN");
        assert_eq!(all[1].response, "login-failed");
        assert_eq!(all[1].user_name.as_deref(), Some("alice"));
        assert_eq!(all[1].user_type, None);
        assert_eq!(all[2].opcode, "CN_NODE_START");
        assert!(
            all[2]
                .detail
                .as_deref()
                .unwrap()
                .contains("did not stop cleanly"),
            "{:?}",
            all[2].detail
        );
        assert!(
            all[0].time.ends_with('Z') && all[0].time.len() == 27,
            "{}",
            all[0].time
        );
    }

    #[test]
    fn an_unfinished_last_line_is_removed_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        drop(open(&path).unwrap());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"time\":\"20").unwrap();
        drop(f);
        drop(open(&path).unwrap());
        let all = records(&path);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].sequence, 1);
        assert!(
            all[1].detail.as_deref().unwrap().contains("11 bytes"),
            "{:?}",
            all[1].detail
        );
    }

    #[test]
    fn a_whole_last_record_that_does_not_parse_refuses_the_start_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        drop(open(&path).unwrap());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"not json\n").unwrap();
        drop(f);
        let before = std::fs::read(&path).unwrap();
        let err = open(&path).unwrap_err().to_string();
        assert!(
            err.contains("audit.jsonl") && err.contains("does not parse"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_failed_write_refuses_every_later_record() {
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let log = AuditLog {
            path: "/dev/full".into(),
            events: "/dev/full".into(),
            hsm_id: 1,
            reboot_counter: 1,
            writer: Mutex::new(Writer {
                file: full,
                next_sequence: 7,
                last_hash: GENESIS_HASH.into(),
            }),
            failed: AtomicBool::new(false),
            sealer: key(),
        };
        assert!(log.healthy());
        let err = log.record(AuditEntry::new(Opcode::Logout)).unwrap_err();
        assert!(err.to_string().contains("/dev/full"), "{err}");
        assert!(!log.healthy());
        let again = log.record(AuditEntry::new(Opcode::Logout)).unwrap_err();
        assert!(again.to_string().contains("earlier record"), "{again}");
        // The sequence number was not used up: no gap if the node is restarted.
        assert_eq!(log.writer.lock().unwrap().next_sequence, 7);
    }

    /// A file of `n` records (start, logins, stop) written by a real log.
    fn sample(n: usize) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        let log = open(&path).unwrap();
        for _ in 2..n {
            log.record(AuditEntry::new(Opcode::Login)).unwrap();
        }
        log.stop();
        let text = std::fs::read_to_string(&path).unwrap();
        (dir, text)
    }

    fn public() -> sealgate_hsm_core::crypto::PublicKey {
        key().public_key().clone()
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn an_untouched_file_verifies_and_is_closed() {
        let (_dir, text) = sample(6);
        let v = verify(&text, &public()).unwrap();
        assert_eq!(v.records, 6);
        assert!(v.closed);
        assert_eq!(v.hsm_id, Some(1));
        assert_eq!(v.last.unwrap().0, 5);
        // Another node's key does not verify it.
        let other = MasterKey::from_bytes(&[7; 32])
            .unwrap()
            .audit_key(2)
            .unwrap();
        let err = verify(&text, other.public_key()).unwrap_err();
        assert_eq!((err.line, err.sequence), (1, Some(0)), "{err}");
    }

    #[test]
    fn every_kind_of_tampering_is_found_at_its_record() {
        let (_dir, text) = sample(6);
        let original = lines(&text);
        // One byte edited (inside a field, in the hash, in the seal), each at record 2.
        for (from, to) in [
            ("CN_LOGIN", "CN_LOGIM"),
            ("\"hash\":\"", "\"hash\":\"f"),
            ("\"seal\":\"", "\"seal\":\"0"),
        ] {
            let mut l = original.clone();
            l[2] = l[2].replacen(from, to, 1);
            let err = verify(&l.concat(), &public()).unwrap_err();
            assert_eq!(err.line, 3, "{from}: {err}");
        }
        // A record removed.
        let mut l = original.clone();
        l.remove(3);
        let err = verify(&l.concat(), &public()).unwrap_err();
        assert_eq!((err.line, err.sequence), (4, Some(4)), "{err}");
        assert!(err.what.contains("record 3 before it was removed"), "{err}");
        // Two records swapped.
        let mut l = original.clone();
        l.swap(2, 3);
        let err = verify(&l.concat(), &public()).unwrap_err();
        assert_eq!((err.line, err.sequence), (3, Some(3)), "{err}");
        assert!(err.what.contains("reordered"), "{err}");
        // The tail cut after a whole record: every record checks out, but the stop is gone.
        let v = verify(&original[..4].concat(), &public()).unwrap();
        assert!(!v.closed);
        assert_eq!(v.last.unwrap().0, 3);
        // Cut inside a record.
        let cut = &text[..text.len() - 10];
        let err = verify(cut, &public()).unwrap_err();
        assert_eq!(err.line, 6, "{err}");
        // The head cut.
        let err = verify(&original[2..].concat(), &public()).unwrap_err();
        assert_eq!((err.line, err.sequence), (1, Some(2)), "{err}");
    }

    #[test]
    fn event_ids_look_like_uuids() {
        let id = event_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, event_id());
    }
}
