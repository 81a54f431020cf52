//! The engine's error type: one variant per reason a request is refused.

use crate::attributes::Attribute;
use crate::permissions::{Operation, Principal};
use crate::types::{KeyHandle, SessionId};
use sealgate_hsm_crypto::{CryptoError, KeyClass, KeyType};

/// Why the engine refused a request. A refused request changes no state (the one exception is
/// a failed login, which counts towards the lockout).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The cluster has not been initialized.
    #[error("the cluster is not initialized")]
    NotInitialized,
    /// The cluster was initialized already.
    #[error("the cluster is already initialized")]
    AlreadyInitialized,
    /// The cluster was activated already.
    #[error("the cluster is already activated")]
    AlreadyActivated,
    /// The cluster must be activated first.
    #[error("the cluster is not activated yet: the PRECO must activate it first")]
    NotActivated,
    /// No such session on this node.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// Too many sessions are open on this node.
    #[error("too many open sessions (limit {limit})")]
    TooManySessions {
        /// The configured limit.
        limit: usize,
    },
    /// The session must log in first.
    #[error("not logged in")]
    NotLoggedIn,
    /// The session is logged in already.
    #[error("already logged in; log out first")]
    AlreadyLoggedIn,
    /// The permission table does not allow this.
    #[error("permission denied: a {principal} may not {operation}")]
    PermissionDenied {
        /// What was asked.
        operation: Operation,
        /// Who asked.
        principal: Principal,
    },
    /// A quorum token or approval was refused.
    #[error("quorum failed: {0}")]
    Quorum(String),
    /// The operation needs more approvals.
    #[error(
        "quorum failed: {service} needs {needed} approvals and has {approved}; ask for a token \
         (`sealgate quorum token generate --service {service}`), have it signed, and pass it \
         with --approval"
    )]
    QuorumRequired {
        /// The service.
        service: crate::QuorumService,
        /// M.
        needed: u8,
        /// Valid approvals presented.
        approved: u8,
    },
    /// Wrong user name or password. The same error for both, so names cannot be probed.
    #[error("login failed: wrong user name or password")]
    LoginFailed,
    /// The user is locked after too many failed logins; a crypto officer must reset the
    /// password.
    #[error(
        "user {name} is locked after {failures} failed logins; a crypto officer must reset its password"
    )]
    UserLocked {
        /// The user.
        name: String,
        /// Failures counted.
        failures: u8,
    },
    /// The appliance user has no password and cannot log in with one.
    #[error("the appliance user cannot log in with a password")]
    ApplianceLogin,
    /// No such user.
    #[error("no user named {name}")]
    UserNotFound {
        /// The name asked for.
        name: String,
    },
    /// A user of that name exists.
    #[error("a user named {name} already exists")]
    UserExists {
        /// The name.
        name: String,
    },
    /// A user name that breaks the rules.
    #[error("invalid user name: {reason}")]
    InvalidUserName {
        /// Which rule.
        reason: &'static str,
    },
    /// Only crypto officers and crypto users can be created.
    #[error("users can be created as CO or CU only")]
    InvalidRole,
    /// Users cannot delete themselves.
    #[error("a user cannot delete itself")]
    CannotDeleteSelf,
    /// The last crypto officer cannot be deleted.
    #[error("{name} is the last crypto officer and cannot be deleted")]
    LastCryptoOfficer {
        /// The officer.
        name: String,
    },
    /// A user that owns keys cannot be deleted.
    #[error("user {name} owns {count} keys; delete them first")]
    UserOwnsKeys {
        /// The user.
        name: String,
        /// Keys owned.
        count: usize,
    },
    /// Built-in users (the appliance user) cannot be changed or deleted.
    #[error("{name} is a built-in user and cannot be changed")]
    BuiltInUser {
        /// The user.
        name: String,
    },
    /// No key with this handle is visible to the session.
    #[error("no key with handle {handle}")]
    KeyNotFound {
        /// The handle asked for.
        handle: KeyHandle,
    },
    /// Only the key's owner may do this (shared users may only use the key).
    #[error("only the owner of key {handle} may do this; shared users may only use it")]
    NotKeyOwner {
        /// The key.
        handle: KeyHandle,
    },
    /// The key's usage attribute does not allow this operation.
    #[error("key {handle} does not allow {attribute}")]
    KeyUsageNotAllowed {
        /// The key.
        handle: KeyHandle,
        /// The attribute that is false.
        attribute: Attribute,
    },
    /// The key is of the wrong class or type for this operation.
    #[error("key {handle} is a {class} of type {key_type}, which cannot do this")]
    WrongKeyKind {
        /// The key.
        handle: KeyHandle,
        /// Its class.
        class: KeyClass,
        /// Its type.
        key_type: KeyType,
    },
    /// An attribute that cannot be set on this kind of key.
    #[error("attribute {attribute} does not apply to a {class} of type {key_type}")]
    AttributeNotApplicable {
        /// The attribute.
        attribute: Attribute,
        /// The key's class.
        class: KeyClass,
        /// The key's type.
        key_type: KeyType,
    },
    /// A read-only attribute.
    #[error("attribute {attribute} is read-only")]
    AttributeReadOnly {
        /// The attribute.
        attribute: Attribute,
    },
    /// An attribute change that the rules forbid.
    #[error("cannot change {attribute}: {reason}")]
    AttributeChangeRefused {
        /// The attribute.
        attribute: Attribute,
        /// Which rule.
        reason: &'static str,
    },
    /// The key is not destroyable.
    #[error("key {handle} is not destroyable")]
    NotDestroyable {
        /// The key.
        handle: KeyHandle,
    },
    /// The key is not extractable and can never leave the HSM.
    #[error("key {handle} is not extractable and cannot leave the HSM in any form")]
    NotExtractable {
        /// The key.
        handle: KeyHandle,
    },
    /// The key may only be wrapped by a trusted key.
    #[error("key {handle} has wrap-with-trusted; wrapping key {wrapping} is not trusted")]
    WrapWithTrustedRequired {
        /// The key to wrap.
        handle: KeyHandle,
        /// The untrusted wrapping key.
        wrapping: KeyHandle,
    },
    /// Sharing rules.
    #[error("cannot share key {handle}: {reason}")]
    ShareRefused {
        /// The key.
        handle: KeyHandle,
        /// Which rule.
        reason: &'static str,
    },
    /// An object with this unique id exists already (masked-object insert).
    #[error("an object with this unique id exists already")]
    ObjectExists,
    /// A masked object that does not open or decode.
    #[error("masked object is not from this cluster or is damaged")]
    BadMaskedObject,
    /// A limit was reached.
    #[error("limit reached: at most {limit} {what}")]
    LimitReached {
        /// What is limited.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// Malformed input.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// Which input.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A log entry at or below the applied index (a duplicate delivery).
    #[error("log entry {index} was already applied (applied up to {applied})")]
    AlreadyApplied {
        /// The entry's index.
        index: u64,
        /// The last applied index.
        applied: u64,
    },
    /// A masked object of a key that was deleted.
    #[error("this key was deleted; a masked copy cannot bring it back")]
    ObjectDeleted,
    /// A stored record could not be read back.
    #[error("store is damaged: {0}")]
    Corrupt(&'static str),
    /// The cryptographic operation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}
