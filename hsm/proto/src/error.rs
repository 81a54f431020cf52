//! The error half of a response: a machine-readable kind and a human message.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a node refused or failed a request. The kind drives the client (retry, fail over, give
/// up); the message is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// One line for people, naming what was wrong.
    pub message: String,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The kinds of failure. New kinds may be added in later protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The node is at capacity (CloudHSM's throttle); retry later or elsewhere.
    Busy,
    /// The node cannot serve requests now (storage failure, shutting down); try another node.
    Unavailable,
    /// No common protocol version.
    UnsupportedVersion,
    /// The request did not decode or breaks the protocol (no hello first, a second hello).
    BadRequest,
    /// A frame over the size limit.
    FrameTooLarge,
    /// More requests in flight on this connection than the node allows.
    TooManyInFlight,
    /// The request's input is invalid (a name, an attribute, a mechanism for that key).
    InvalidInput,
    /// The connection must log in first.
    NotLoggedIn,
    /// The connection is logged in already.
    AlreadyLoggedIn,
    /// Wrong user name or password.
    LoginFailed,
    /// The user is locked after too many failed logins.
    UserLocked,
    /// The user's role may not do this, or only the key's owner may.
    PermissionDenied,
    /// No such user or key.
    NotFound,
    /// It exists already.
    AlreadyExists,
    /// The cluster is not initialized or not activated, or already is.
    WrongClusterState,
    /// A limit of the cluster or node was reached.
    LimitReached,
    /// A signature did not verify.
    VerifyFailed,
    /// The operation failed for another reason the message explains.
    Failed,
    /// A quorum-controlled operation lacked approvals, or its token or approvals were refused
    /// (CloudHSM's "Quorum Failed").
    QuorumFailed,
}

impl ErrorKind {
    /// Whether the same request may succeed if sent to another node (or later).
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Busy | Self::Unavailable)
    }

    /// A stable short name, for `--output json` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Unavailable => "unavailable",
            Self::UnsupportedVersion => "unsupported-version",
            Self::BadRequest => "bad-request",
            Self::FrameTooLarge => "frame-too-large",
            Self::TooManyInFlight => "too-many-in-flight",
            Self::InvalidInput => "invalid-input",
            Self::NotLoggedIn => "not-logged-in",
            Self::AlreadyLoggedIn => "already-logged-in",
            Self::LoginFailed => "login-failed",
            Self::UserLocked => "user-locked",
            Self::PermissionDenied => "permission-denied",
            Self::NotFound => "not-found",
            Self::AlreadyExists => "already-exists",
            Self::WrongClusterState => "wrong-cluster-state",
            Self::LimitReached => "limit-reached",
            Self::VerifyFailed => "verify-failed",
            Self::Failed => "failed",
            Self::QuorumFailed => "quorum-failed",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
