//! Commands: the state changes the engine applies, in log order, on every node.
//!
//! A command is prepared on one node (authorization checked, randomness drawn, passwords hashed,
//! key material generated and sealed) and then applied by every replica with
//! [`Engine::apply`](crate::Engine::apply). Applying is deterministic: it reads no clock and
//! draws no randomness, so every replica that applies the same commands in the same order
//! reaches the same state. Commands carry key material and password hashes only sealed under
//! the master key (the cluster's domain key), so they may be written to a log.

use crate::api::ClusterLimits;
use crate::attributes::{AttributeChange, KeyAttributes};
use crate::error::EngineError;
use crate::types::{KeyHandle, ObjectUid, Role, Timestamp, UserId};
use sealgate_hsm_crypto::SealedBytes;
use serde::{Deserialize, Serialize};

/// A state change, with who made it and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// When the command was prepared (the preparing node's clock).
    pub at: Timestamp,
    /// The user on whose behalf it runs (none for cluster initialization).
    pub actor: Option<UserId>,
    /// What changes.
    pub op: CommandOp,
}

impl Command {
    /// Encodes the command for a log.
    pub fn encode(&self) -> Result<Vec<u8>, EngineError> {
        postcard::to_allocvec(self).map_err(|_| EngineError::Corrupt("command does not encode"))
    }

    /// Decodes a command from a log.
    pub fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        postcard::from_bytes(bytes).map_err(|_| EngineError::InvalidInput {
            what: "command",
            reason: "does not decode",
        })
    }
}

/// The state changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CommandOp {
    /// Creates the cluster: its id, the PRECO and the built-in appliance user.
    Initialize {
        /// The cluster's unique id.
        cluster_uid: ObjectUid,
        /// The pre-crypto-officer with its one-time password.
        preco: NewUser,
        /// The appliance user (no password).
        appliance: NewUser,
        /// The cluster's limits.
        limits: ClusterLimits,
    },
    /// The PRECO sets its password and becomes a crypto officer.
    Activate {
        /// The new password hash, sealed under the PRECO's uid.
        password: SealedBytes,
    },
    /// Creates a user.
    CreateUser(NewUser),
    /// Deletes a user.
    DeleteUser {
        /// The user.
        user: UserId,
    },
    /// Sets a user's password (and clears its failed-login count).
    SetPassword {
        /// The user.
        user: UserId,
        /// The password hash, sealed under the user's uid.
        password: SealedBytes,
    },
    /// Records a login attempt that changes the failed-login count.
    LoginAttempt {
        /// The user.
        user: UserId,
        /// Whether the password was right.
        success: bool,
        /// Which password was checked (a digest of its sealed hash): a success is void if the
        /// password changed meanwhile.
        credential: [u8; 16],
    },
    /// Creates one key or a key pair (public first, then private); handles are assigned in
    /// this order when applied.
    CreateKeys {
        /// The objects.
        objects: Vec<NewKeyObject>,
    },
    /// Changes attributes of a key.
    SetAttributes {
        /// The key.
        handle: KeyHandle,
        /// The changes, made together or not at all.
        changes: Vec<AttributeChange>,
    },
    /// Shares a key with a crypto user.
    Share {
        /// The key.
        handle: KeyHandle,
        /// The user.
        user: UserId,
    },
    /// Stops sharing a key.
    Unshare {
        /// The key.
        handle: KeyHandle,
        /// The user.
        user: UserId,
    },
    /// Deletes a key.
    DeleteKey {
        /// The key.
        handle: KeyHandle,
    },
    /// Inserts a key object extracted as a masked object (from this cluster or a clone).
    InsertMasked {
        /// The object as it was stored.
        record: KeyRecord,
    },
    /// Sets a user's registered quorum key and MFA switch (no key and no MFA: forgets both).
    SetUserAuth {
        /// The user.
        user: UserId,
        /// DER SubjectPublicKeyInfo of its RSA key.
        key: Option<Vec<u8>>,
        /// Whether its logins need the key's signature.
        mfa: bool,
    },
    /// Sets an admin service's quorum value.
    SetQuorumValue {
        /// `user` or `quorum`.
        service: crate::QuorumService,
        /// M (1: off).
        value: u8,
    },
    /// [`CommandOp::CreateKeys`], shared at once with crypto users and with quorum values,
    /// fixed from creation on.
    CreateKeysShared {
        /// The objects.
        objects: Vec<NewKeyObject>,
        /// The users to share them with.
        shared: Vec<UserId>,
        /// Their quorum values.
        quorum: crate::KeyQuorum,
    },
}

/// A user as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser {
    /// Unique id.
    pub uid: ObjectUid,
    /// Name (lowercase).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Password hash sealed under `uid` (none for the appliance user).
    pub password: Option<SealedBytes>,
}

/// A key object as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewKeyObject {
    /// Unique id.
    pub uid: ObjectUid,
    /// Attributes.
    pub attrs: KeyAttributes,
    /// DER SubjectPublicKeyInfo, for public and private keys.
    pub public_der: Option<Vec<u8>>,
    /// Key material sealed under `uid`, for private and secret keys.
    pub sealed: Option<SealedBytes>,
    /// The other half of a key pair.
    pub partner: Option<ObjectUid>,
}

/// A token key object as stored (and as carried in a masked object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Handle.
    pub handle: KeyHandle,
    /// Unique id.
    pub uid: ObjectUid,
    /// Owning crypto user.
    pub owner: UserId,
    /// Crypto users the key is shared with.
    pub shared: Vec<UserId>,
    /// Attributes.
    pub attrs: KeyAttributes,
    /// DER SubjectPublicKeyInfo, for public and private keys.
    pub public_der: Option<Vec<u8>>,
    /// Key material sealed under `uid`, for private and secret keys.
    pub sealed: Option<SealedBytes>,
    /// The other half of a key pair.
    pub partner: Option<ObjectUid>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UserRecord {
    pub(crate) id: UserId,
    pub(crate) uid: ObjectUid,
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) password: Option<SealedBytes>,
    pub(crate) failed_logins: u8,
    pub(crate) created_at: Timestamp,
}

/// Cluster-wide counters, one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetaRecord {
    pub(crate) format: u32,
    pub(crate) fingerprint: [u8; 8],
    pub(crate) cluster_uid: Option<ObjectUid>,
    pub(crate) activated: bool,
    pub(crate) next_user_id: u32,
    pub(crate) next_handle: u64,
    pub(crate) next_tombstone: u64,
    pub(crate) applied: u64,
    pub(crate) limits: ClusterLimits,
    /// XOR of a keyed tag per stored row (users, keys, tombstones): a row added, removed or
    /// rolled back outside the engine changes it.
    pub(crate) rows_digest: [u8; 32],
}

/// The store format this build writes and reads.
pub(crate) const STORE_FORMAT: u32 = 1;
