//! Identifiers, roles and time as the engine sees them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A point in time: milliseconds since the Unix epoch, supplied by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }
}

/// A user's numeric id, stable for the user's lifetime and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub u32);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A key object's handle (CloudHSM's key reference). Token keys get small handles assigned in
/// log order; session keys get handles with the top bit set, local to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyHandle(pub u64);

impl KeyHandle {
    pub(crate) const SESSION_BIT: u64 = 1 << 63;

    /// Whether this handle names a session (non-replicated) key.
    pub fn is_session(self) -> bool {
        self.0 & Self::SESSION_BIT != 0
    }
}

impl fmt::Display for KeyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:016x}", self.0)
    }
}

/// A session on one node (node-local, never replicated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 16-byte unique id given to every user and key object when it is prepared. It names the
/// object across nodes and clones and feeds the per-object storage key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectUid(pub [u8; 16]);

impl fmt::Display for ObjectUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A user's role, as in CloudHSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Pre-crypto-officer: exists only until the cluster is activated; activation sets its
    /// password and turns it into a [`Role::CryptoOfficer`].
    PreCryptoOfficer,
    /// Crypto officer ("admin"): manages users; cannot manage or use keys, except setting
    /// `trusted`.
    CryptoOfficer,
    /// Crypto user: creates, manages and uses keys.
    CryptoUser,
    /// Appliance user: clone and sync operations only; authenticated by the cluster, never by a
    /// password.
    ApplianceUser,
}

impl Role {
    /// CloudHSM's short name (PRECO, CO, CU, AU).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreCryptoOfficer => "PRECO",
            Self::CryptoOfficer => "CO",
            Self::CryptoUser => "CU",
            Self::ApplianceUser => "AU",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
