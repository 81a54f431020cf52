//! What the engine returns: results of reads, the two-step shape of writes, configuration and
//! statistics.

use crate::attributes::KeyAttributes;
use crate::command::Command;
use crate::error::EngineError;
use crate::store::StoreBatch;
use crate::types::{KeyHandle, ObjectUid, Role, UserId};
use serde::{Deserialize, Serialize};

/// The result of a request that may change replicated state.
///
/// Session-local effects finish at once ([`Step::Done`]); changes to replicated state come back
/// as a [`Command`] that the driver must log (and later replicate) and then pass to
/// [`Engine::apply`](crate::Engine::apply), whose [`Outcome`] is the answer to the request.
// A step is returned and consumed at once; boxing the command would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[must_use = "a Replicate step does nothing until the driver applies its command"]
pub enum Step<T> {
    /// Finished; nothing to replicate.
    Done(T),
    /// Apply this command (with the requesting session as origin) to finish.
    Replicate(Command),
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Outcome {
    /// The cluster was initialized.
    Initialized,
    /// The PRECO became a crypto officer.
    Activated,
    /// A user was created.
    UserCreated(UserId),
    /// A user was deleted.
    UserDeleted,
    /// A password was set.
    PasswordChanged,
    /// The origin session is logged in.
    LoggedIn,
    /// Keys were created: one handle, or public then private for a pair.
    KeysCreated(Vec<KeyHandle>),
    /// Attributes were changed.
    AttributesChanged,
    /// A key was shared.
    KeyShared,
    /// A key was unshared.
    KeyUnshared,
    /// A key was deleted.
    KeyDeleted,
}

impl Outcome {
    /// The handles of created keys (empty for other outcomes).
    pub fn handles(&self) -> &[KeyHandle] {
        match self {
            Self::KeysCreated(h) => h,
            _ => &[],
        }
    }
}

/// The result of [`Engine::apply`](crate::Engine::apply): the answer for the requester and the
/// writes the driver must make durable before giving that answer.
#[derive(Debug)]
pub struct Applied {
    /// The answer.
    pub result: Result<Outcome, EngineError>,
    /// What to persist (also for refused commands: the applied index moves on).
    pub batch: StoreBatch,
}

/// Cluster-wide limits. They are part of the replicated state (fixed when the cluster is
/// initialized), so every replica applies commands against the same limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLimits {
    /// Most users in the cluster (CloudHSM hsm2m.medium: 1,024).
    pub max_users: u32,
    /// Most token keys in the cluster (CloudHSM hsm2m.medium: 16,666).
    pub max_token_keys: u32,
    /// Failed logins in a row that lock a user (CloudHSM: 5).
    pub lockout_threshold: u8,
}

impl Default for ClusterLimits {
    fn default() -> Self {
        Self {
            max_users: 1024,
            max_token_keys: 16_666,
            lockout_threshold: 5,
        }
    }
}

/// Limits of one engine. `cluster` only seeds a cluster this node initializes; after that the
/// replicated limits apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Limits for a cluster initialized by this node.
    pub cluster: ClusterLimits,
    /// Most open sessions on this node.
    pub max_sessions: usize,
    /// Most session keys in one session.
    pub max_session_keys: usize,
    /// Largest input to one crypto operation, in bytes.
    pub max_data_len: usize,
    /// How long a quorum token lives on this node, in milliseconds (CloudHSM: 10 minutes).
    pub quorum_token_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            cluster: ClusterLimits::default(),
            max_sessions: 4096,
            max_session_keys: 1024,
            max_data_len: 64 * 1024,
            quorum_token_ms: crate::TOKEN_LIFETIME_MS,
        }
    }
}

/// Counters of one engine (sans-IO: the driver publishes them as metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Users, including built-in ones.
    pub users: usize,
    /// Token keys in the cluster.
    pub token_keys: usize,
    /// Session keys on this node.
    pub session_keys: usize,
    /// Open sessions on this node.
    pub sessions: usize,
    /// Index of the last applied command.
    pub applied_index: u64,
    /// The most users the cluster may hold.
    pub max_users: usize,
}

/// Basic cluster information, open to every session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The cluster's unique id, once initialized.
    pub cluster_uid: Option<ObjectUid>,
    /// Whether initialized.
    pub initialized: bool,
    /// Whether activated.
    pub activated: bool,
    /// Users, including built-in ones.
    pub users: usize,
    /// Token keys.
    pub token_keys: usize,
    /// Index of the last applied command.
    pub applied_index: u64,
}

/// One user, as `user list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// Id.
    pub id: UserId,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Locked by failed logins.
    pub locked: bool,
    /// Failed logins in a row.
    pub failed_logins: u8,
    /// Built in (the appliance user).
    pub built_in: bool,
}

/// One key, as `key list` and `key show` present it: metadata only, never material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Handle.
    pub handle: KeyHandle,
    /// Unique id.
    pub uid: ObjectUid,
    /// Owning user.
    pub owner: UserId,
    /// Owner's name.
    pub owner_name: String,
    /// Users the key is shared with (id and name).
    pub shared_with: Vec<(UserId, String)>,
    /// Attributes.
    pub attributes: KeyAttributes,
}

/// Digests of every user and visible key, to compare nodes (CloudHSM's sync status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// SHA-256 of each user record.
    pub users: Vec<(UserId, Vec<u8>)>,
    /// SHA-256 of each token key record.
    pub keys: Vec<(KeyHandle, Vec<u8>)>,
}

/// A key object encrypted under the cluster's domain key: only this cluster and its clones can
/// open it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedObject(pub Vec<u8>);

/// Values a [`Step`] can finish with, recovered from the [`Outcome`] of its command.
pub trait FromOutcome: Sized {
    /// The value for this outcome.
    fn from_outcome(outcome: Outcome) -> Self;
}

impl FromOutcome for () {
    fn from_outcome(_: Outcome) -> Self {}
}

impl FromOutcome for Vec<KeyHandle> {
    fn from_outcome(outcome: Outcome) -> Self {
        outcome.handles().to_vec()
    }
}

impl FromOutcome for Outcome {
    fn from_outcome(outcome: Outcome) -> Self {
        outcome
    }
}
