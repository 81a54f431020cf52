//! sealgate's HSM engine: a deterministic, sans-IO state machine modelled on AWS CloudHSM.
//!
//! It holds the cluster's users (PRECO, CO, CU, AU with CloudHSM's permission table, argon2id
//! passwords and a 5-strike lockout), its key objects (CloudHSM's attribute set, owners and
//! shares, wrap-only import and export) and each node's sessions (with session keys).
//!
//! Shape (after quinn-proto): requests come in as method calls with the time passed in; reads
//! and crypto operations answer at once; state changes come back as a [`Command`] that the
//! driver logs (later: replicates with openraft) and then hands to [`Engine::apply`], which
//! returns the answer and the [`StoreBatch`] to make durable first. [`LocalHsm`] is the
//! single-node driver.
//!
//! What this crate does **not** do:
//! - it reads no clock, opens no file or socket and spawns nothing (`clippy.toml` bans them);
//! - it never returns private or secret key material: keys leave only wrapped by another key
//!   ([`Engine::wrap_key`]) or as masked objects sealed under the cluster's domain key; the
//!   records and commands it hands out hold key material and password hashes only sealed.
#![forbid(unsafe_code)]

mod api;
mod attributes;
mod audit;
mod command;
mod driver;
mod engine;
mod error;
mod permissions;
mod quorum;
mod store;
mod types;

pub use api::{
    Applied, ClusterInfo, ClusterLimits, EngineConfig, EngineStats, FromOutcome, KeyInfo,
    MaskedObject, Outcome, Step, SyncStatus, UserInfo,
};
pub use attributes::{
    Attribute, AttributeChange, KeyAttributes, KeyFilter, KeyTemplate, MAX_ID_LEN, MAX_LABEL_LEN,
};
pub use audit::{AuditUser, CommandAudit, LogType, Opcode};
pub use command::{Command, CommandOp, KeyRecord, NewKeyObject, NewUser};
pub use driver::{DriverError, LocalHsm};
pub use engine::{
    APPLIANCE_NAME, Engine, LoginTicket, MAX_USER_NAME_LEN, PRECO_NAME, normalize_user_name,
};
pub use error::EngineError;
pub use permissions::{Operation, Principal, is_permitted};
pub use quorum::{
    Approvals, KeyQuorum, MAX_QUORUM, MAX_TOKENS, MFA_LIFETIME_MS, MIN_QUORUM_KEY_BITS,
    QuorumService, TOKEN_LIFETIME_MS, TokenInfo,
};
pub use store::{
    Fingerprint, MemoryStore, Snapshot, Store, StoreBatch, StoreError, StoreOp, Table,
};
pub use types::{KeyHandle, ObjectUid, Role, SessionId, Timestamp, UserId};

/// The crypto crate's types that appear in this crate's API.
pub use sealgate_hsm_crypto as crypto;
