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

struct Writer {
    file: File,
    next_sequence: u64,
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
    pub(crate) fn open(path: &Path, events: &Path, hsm_id: u32) -> Result<Self, AuditError> {
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
        let (next_sequence, reboot_counter) = match &last {
            Some(r) => (r.sequence + 1, r.reboot_counter.saturating_add(1)),
            None => (0, 1),
        };
        let log = Self {
            path: path.to_owned(),
            events: events.to_owned(),
            hsm_id,
            reboot_counter,
            writer: Mutex::new(Writer {
                file,
                next_sequence,
            }),
            failed: AtomicBool::new(false),
        };
        let mut start = AuditEntry::new(Opcode::NodeStart);
        start.detail = Some(if unfinished > 0 {
            format!(
                "sealgate {}; removed an unfinished last record of {unfinished} bytes (the \
                 node stopped while writing it)",
                env!("CARGO_PKG_VERSION")
            )
        } else {
            format!("sealgate {}", env!("CARGO_PKG_VERSION"))
        });
        log.record(start)?;
        Ok(log)
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
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| fail(e.to_string()))?;
        line.push(b'\n');
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
        Ok(())
    }
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
    let record: AuditRecord = serde_json::from_slice(line).map_err(|e| {
        format!(
            "its last record does not parse ({e}); the stream cannot be continued: move the \
             file aside to start a new one"
        )
    })?;
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
            let log = AuditLog::open(&path, &dir.path().join(EVENTS_FILE), 3).unwrap();
            let mut e = AuditEntry::new(Opcode::Login);
            e.user = Some(AuditUser {
                name: "alice".into(),
                role: None,
            });
            e.response = Err(ErrorKind::LoginFailed);
            log.record(e).unwrap();
        }
        let _log = AuditLog::open(&path, &dir.path().join(EVENTS_FILE), 3).unwrap();
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
            all[0].time.ends_with('Z') && all[0].time.len() == 27,
            "{}",
            all[0].time
        );
    }

    #[test]
    fn an_unfinished_last_line_is_removed_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        drop(AuditLog::open(&path, &dir.path().join(EVENTS_FILE), 1).unwrap());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"time\":\"20").unwrap();
        drop(f);
        drop(AuditLog::open(&path, &dir.path().join(EVENTS_FILE), 1).unwrap());
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
        drop(AuditLog::open(&path, &dir.path().join(EVENTS_FILE), 1).unwrap());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"not json\n").unwrap();
        drop(f);
        let before = std::fs::read(&path).unwrap();
        let err = AuditLog::open(&path, &dir.path().join(EVENTS_FILE), 1)
            .unwrap_err()
            .to_string();
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
            }),
            failed: AtomicBool::new(false),
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

    #[test]
    fn event_ids_look_like_uuids() {
        let id = event_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, event_id());
    }
}
