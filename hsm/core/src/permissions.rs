//! The permission table: which principal may perform which operation.
//!
//! One table, transcribed from CloudHSM's user-type permission table (CloudHSM User Guide,
//! "HSM user permissions table", identical for CloudHSM CLI and CMU) and extended row by row for
//! operations CloudHSM lists elsewhere. Key-level rules (owner versus shared user, `trusted`,
//! `wrap-with-trusted`) are checked separately, per key.

use crate::types::Role;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Who is asking: a logged-in role, or a session that has not logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Principal {
    /// A session without a login.
    Unauthenticated,
    /// A logged-in user of this role.
    User(Role),
}

impl Principal {
    /// Every principal, in the table's column order.
    pub const ALL: [Self; 5] = [
        Self::Unauthenticated,
        Self::User(Role::PreCryptoOfficer),
        Self::User(Role::CryptoOfficer),
        Self::User(Role::CryptoUser),
        Self::User(Role::ApplianceUser),
    ];
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unauthenticated => f.write_str("unauthenticated session"),
            Self::User(r) => write!(f, "{r}"),
        }
    }
}

/// Every operation the engine offers (login itself is open to every session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Operation {
    /// Basic cluster information.
    GetInfo,
    /// List users and their roles and lock state.
    ListUsers,
    /// Log out.
    Logout,
    /// Activate the cluster: the PRECO sets its password and becomes the first CO.
    Activate,
    /// Change one's own password.
    ChangeOwnPassword,
    /// Change (reset) another user's password, which also unlocks the user.
    ChangeAnyPassword,
    /// Create a user.
    CreateUser,
    /// Delete a user.
    DeleteUser,
    /// Read the set of key and user digests (cluster sync status).
    GetSyncStatus,
    /// Extract a key as a masked object (encrypted so that only this cluster can read it).
    ExtractMaskedObject,
    /// Insert a masked object.
    InsertMaskedObject,
    /// List or find keys and read their attributes.
    ListKeys,
    /// Generate a key or key pair.
    GenerateKey,
    /// Import a public key.
    ImportPublicKey,
    /// Export a public key.
    ExportPublicKey,
    /// Delete a key.
    DeleteKey,
    /// Export a key wrapped under another key.
    WrapKey,
    /// Import a wrapped key.
    UnwrapKey,
    /// Derive a secret key from another.
    DeriveKey,
    /// Change key attributes (other than `trusted`).
    SetAttribute,
    /// Set or clear the `trusted` attribute.
    SetTrusted,
    /// Share a key with another crypto user.
    ShareKey,
    /// Stop sharing a key.
    UnshareKey,
    /// Encrypt.
    Encrypt,
    /// Decrypt.
    Decrypt,
    /// Sign.
    Sign,
    /// Verify a signature.
    Verify,
    /// Compute a digest.
    Digest,
    /// Compute or verify an HMAC.
    Hmac,
    /// Generate random bytes.
    Random,
}

impl Operation {
    /// Every operation, in the table's row order.
    pub const ALL: [Self; 30] = [
        Self::GetInfo,
        Self::ListUsers,
        Self::Logout,
        Self::Activate,
        Self::ChangeOwnPassword,
        Self::ChangeAnyPassword,
        Self::CreateUser,
        Self::DeleteUser,
        Self::GetSyncStatus,
        Self::ExtractMaskedObject,
        Self::InsertMaskedObject,
        Self::ListKeys,
        Self::GenerateKey,
        Self::ImportPublicKey,
        Self::ExportPublicKey,
        Self::DeleteKey,
        Self::WrapKey,
        Self::UnwrapKey,
        Self::DeriveKey,
        Self::SetAttribute,
        Self::SetTrusted,
        Self::ShareKey,
        Self::UnshareKey,
        Self::Encrypt,
        Self::Decrypt,
        Self::Sign,
        Self::Verify,
        Self::Digest,
        Self::Hmac,
        Self::Random,
    ];
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::GetInfo => "get-info",
            Self::ListUsers => "list-users",
            Self::Logout => "logout",
            Self::Activate => "activate",
            Self::ChangeOwnPassword => "change-own-password",
            Self::ChangeAnyPassword => "change-any-password",
            Self::CreateUser => "create-user",
            Self::DeleteUser => "delete-user",
            Self::GetSyncStatus => "get-sync-status",
            Self::ExtractMaskedObject => "extract-masked-object",
            Self::InsertMaskedObject => "insert-masked-object",
            Self::ListKeys => "list-keys",
            Self::GenerateKey => "generate-key",
            Self::ImportPublicKey => "import-public-key",
            Self::ExportPublicKey => "export-public-key",
            Self::DeleteKey => "delete-key",
            Self::WrapKey => "wrap-key",
            Self::UnwrapKey => "unwrap-key",
            Self::DeriveKey => "derive-key",
            Self::SetAttribute => "set-attribute",
            Self::SetTrusted => "set-trusted",
            Self::ShareKey => "share-key",
            Self::UnshareKey => "unshare-key",
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Sign => "sign",
            Self::Verify => "verify",
            Self::Digest => "digest",
            Self::Hmac => "hmac",
            Self::Random => "random",
        };
        f.write_str(s)
    }
}

/// Columns of [`TABLE`].
const UNAUTH: usize = 0;
const PRECO: usize = 1;
const CO: usize = 2;
const CU: usize = 3;
const AU: usize = 4;

const Y: bool = true;
const N: bool = false;

/// The table. Columns: unauthenticated, PRECO, CO, CU, AU.
#[rustfmt::skip]
const TABLE: [(Operation, [bool; 5]); 30] = [
    //                                     unauth PRECO  CO    CU    AU
    (Operation::GetInfo,             [Y,     Y,     Y,    Y,    Y]),
    (Operation::ListUsers,           [Y,     Y,     Y,    Y,    Y]),
    (Operation::Logout,              [N,     Y,     Y,    Y,    Y]),
    (Operation::Activate,            [N,     Y,     N,    N,    N]),
    (Operation::ChangeOwnPassword,   [N,     N,     Y,    Y,    Y]),
    (Operation::ChangeAnyPassword,   [N,     N,     Y,    N,    N]),
    (Operation::CreateUser,          [N,     N,     Y,    N,    N]),
    (Operation::DeleteUser,          [N,     N,     Y,    N,    N]),
    (Operation::GetSyncStatus,       [N,     N,     Y,    Y,    Y]),
    (Operation::ExtractMaskedObject, [N,     N,     Y,    Y,    Y]),
    (Operation::InsertMaskedObject,  [N,     N,     Y,    Y,    Y]),
    (Operation::ListKeys,            [N,     N,     Y,    Y,    N]),
    (Operation::GenerateKey,         [N,     N,     N,    Y,    N]),
    (Operation::ImportPublicKey,     [N,     N,     N,    Y,    N]),
    (Operation::ExportPublicKey,     [N,     N,     N,    Y,    N]),
    (Operation::DeleteKey,           [N,     N,     N,    Y,    N]),
    (Operation::WrapKey,             [N,     N,     N,    Y,    N]),
    (Operation::UnwrapKey,           [N,     N,     N,    Y,    N]),
    (Operation::DeriveKey,           [N,     N,     N,    Y,    N]),
    (Operation::SetAttribute,        [N,     N,     N,    Y,    N]),
    (Operation::SetTrusted,          [N,     N,     Y,    N,    N]),
    (Operation::ShareKey,            [N,     N,     N,    Y,    N]),
    (Operation::UnshareKey,          [N,     N,     N,    Y,    N]),
    (Operation::Encrypt,             [N,     N,     N,    Y,    N]),
    (Operation::Decrypt,             [N,     N,     N,    Y,    N]),
    (Operation::Sign,                [N,     N,     N,    Y,    N]),
    (Operation::Verify,              [N,     N,     N,    Y,    N]),
    (Operation::Digest,              [N,     N,     N,    Y,    N]),
    (Operation::Hmac,                [N,     N,     N,    Y,    N]),
    (Operation::Random,              [N,     N,     N,    Y,    N]),
];

/// Whether `principal` may perform `operation`.
pub fn is_permitted(principal: Principal, operation: Operation) -> bool {
    let column = match principal {
        Principal::Unauthenticated => UNAUTH,
        Principal::User(Role::PreCryptoOfficer) => PRECO,
        Principal::User(Role::CryptoOfficer) => CO,
        Principal::User(Role::CryptoUser) => CU,
        Principal::User(Role::ApplianceUser) => AU,
    };
    TABLE
        .iter()
        .find(|(op, _)| *op == operation)
        .and_then(|(_, row)| row.get(column).copied())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_exactly_one_row() {
        for op in Operation::ALL {
            assert_eq!(TABLE.iter().filter(|(o, _)| *o == op).count(), 1, "{op}");
        }
        assert_eq!(TABLE.len(), Operation::ALL.len());
    }
}
