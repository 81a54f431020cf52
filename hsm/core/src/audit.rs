//! What the audit log says about an operation: CloudHSM's opcodes, log types and user types,
//! and the engine's view of who did what (user names and roles, key handles).
//!
//! The engine only describes; the node numbers, timestamps and writes the records (this crate
//! does no I/O). Ordinary cryptographic operations (sign, encrypt, digest, ...) and reads are
//! not audited, as in CloudHSM: the log holds management operations and logins.

use crate::command::{Command, CommandOp};
use crate::engine::Engine;
use crate::types::{KeyHandle, Role, SessionId};

/// An audited operation, named as CloudHSM's audit log names it where CloudHSM has it
/// (`CN_LOGIN`, `CN_CREATE_USER`, ...); the node's own events (`CN_NODE_START`, membership
/// changes) follow the same style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Opcode {
    /// The node started (the reboot counter grew by one).
    NodeStart,
    /// The node stopped cleanly (closes a run).
    NodeStop,
    /// The cluster was initialized (its first command).
    InitToken,
    /// A login, successful or not.
    Login,
    /// An explicit logout.
    Logout,
    /// A logged-in session ended without a logout (its connection closed).
    CloseSession,
    /// A crypto user was created.
    CreateUser,
    /// A crypto officer was created.
    CreateCo,
    /// A user was deleted.
    DeleteUser,
    /// A password was changed (also the PRECO's activation).
    ChangePassword,
    /// A symmetric key was generated.
    GenerateKey,
    /// A key pair was generated.
    GenerateKeyPair,
    /// A public key was imported.
    CreateObject,
    /// A wrapped key was imported.
    UnwrapKey,
    /// A key was derived.
    DeriveKey,
    /// A key's attributes were changed.
    ModifyObject,
    /// A key was shared with a crypto user.
    ShareObject,
    /// A key was no longer shared with a crypto user.
    UnshareObject,
    /// A key was deleted.
    DestroyObject,
    /// A key was exported wrapped under another key.
    WrapKey,
    /// A key object made on another node arrived here (CloudHSM logs the same opcode on the
    /// other HSMs of a cluster when a new key is synchronized to them).
    InsertMaskedObject,
    /// The node received the cluster's whole state (a new node is cloned).
    CloneTarget,
    /// A node was added to the cluster.
    AddNode,
    /// A node was removed from the cluster.
    RemoveNode,
    /// A user registered its quorum key.
    RegisterQuorumKey,
    /// A user's MFA was turned on or off.
    ChangeMfa,
    /// An admin service's quorum value was set.
    SetMValue,
    /// A quorum token was issued.
    GetToken,
    /// A quorum token was deleted.
    DeleteToken,
    /// An operation was run with a quorum token's approvals.
    ApproveToken,
}

impl Opcode {
    /// The name in the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Self::NodeStart => "CN_NODE_START",
            Self::NodeStop => "CN_NODE_STOP",
            Self::InitToken => "CN_INIT_TOKEN",
            Self::Login => "CN_LOGIN",
            Self::Logout => "CN_LOGOUT",
            Self::CloseSession => "CN_CLOSE_SESSION",
            Self::CreateUser => "CN_CREATE_USER",
            Self::CreateCo => "CN_CREATE_CO",
            Self::DeleteUser => "CN_DELETE_USER",
            Self::ChangePassword => "CN_CHANGE_PSWD",
            Self::GenerateKey => "CN_GENERATE_KEY",
            Self::GenerateKeyPair => "CN_GENERATE_KEY_PAIR",
            Self::CreateObject => "CN_CREATE_OBJECT",
            Self::UnwrapKey => "CN_UNWRAP_KEY",
            Self::DeriveKey => "CN_DERIVE_KEY",
            Self::ModifyObject => "CN_MODIFY_OBJECT",
            Self::ShareObject => "CN_SHARE_OBJECT",
            Self::UnshareObject => "CN_UNSHARE_OBJECT",
            Self::DestroyObject => "CN_DESTROY_OBJECT",
            Self::WrapKey => "CN_WRAP_KEY",
            Self::InsertMaskedObject => "CN_INSERT_MASKED_OBJECT_USER",
            Self::CloneTarget => "CN_CLONE_TARGET_INIT",
            Self::AddNode => "CN_ADD_NODE",
            Self::RemoveNode => "CN_REMOVE_NODE",
            Self::RegisterQuorumKey => "CN_REGISTER_QUORUM_PUBKEY",
            Self::ChangeMfa => "CN_CHANGE_MFA",
            Self::SetMValue => "CN_SET_M_VALUE",
            Self::GetToken => "CN_GET_TOKEN",
            Self::DeleteToken => "CN_DELETE_TOKEN",
            Self::ApproveToken => "CN_APPROVE_TOKEN",
        }
    }

    /// Which details the record carries (CloudHSM's `Log type`).
    pub fn log_type(self) -> LogType {
        match self {
            Self::Login
            | Self::Logout
            | Self::CloseSession
            | Self::CreateUser
            | Self::CreateCo
            | Self::DeleteUser
            | Self::ChangePassword
            | Self::RegisterQuorumKey
            | Self::ChangeMfa => LogType::UserDetails,
            Self::GenerateKey
            | Self::GenerateKeyPair
            | Self::CreateObject
            | Self::UnwrapKey
            | Self::DeriveKey
            | Self::ModifyObject
            | Self::ShareObject
            | Self::UnshareObject
            | Self::DestroyObject
            | Self::WrapKey
            | Self::InsertMaskedObject => LogType::KeyDetails,
            Self::NodeStart
            | Self::NodeStop
            | Self::InitToken
            | Self::CloneTarget
            | Self::AddNode
            | Self::RemoveNode
            | Self::SetMValue
            | Self::GetToken
            | Self::DeleteToken
            | Self::ApproveToken => LogType::Minimal,
        }
    }
}

/// CloudHSM's `Log type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogType {
    /// `MINIMAL_LOG_ENTRY`.
    Minimal,
    /// `MGMT_KEY_DETAILS_LOG`: key handles.
    KeyDetails,
    /// `MGMT_USER_DETAILS_LOG`: user name and type.
    UserDetails,
}

impl LogType {
    /// The name in the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Minimal => "MINIMAL_LOG_ENTRY",
            Self::KeyDetails => "MGMT_KEY_DETAILS_LOG",
            Self::UserDetails => "MGMT_USER_DETAILS_LOG",
        }
    }
}

impl Role {
    /// CloudHSM's user type in audit records.
    pub fn audit_type(self) -> &'static str {
        match self {
            Self::CryptoUser => "CN_CRYPTO_USER",
            Self::CryptoOfficer => "CN_CRYPTO_OFFICER",
            Self::ApplianceUser => "CN_APPLIANCE_USER",
            Self::PreCryptoOfficer => "CN_CRYPTO_PRE_OFFICER",
        }
    }
}

/// A user as the audit log names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditUser {
    /// The user's name.
    pub name: String,
    /// Its role (`None` for a name that is no user, as in a failed login).
    pub role: Option<Role>,
}

/// What the engine knows of a replicated command, read before it is applied (a deleted
/// user's name is gone afterwards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandAudit {
    /// The operation.
    pub opcode: Opcode,
    /// Who asked for it.
    pub actor: Option<AuditUser>,
    /// The user it is about (created, deleted, logging in, ...).
    pub user: Option<AuditUser>,
    /// The key it is about (a private or secret key, or a public key alone).
    pub key_handle: Option<KeyHandle>,
}

impl Engine {
    /// The user logged in on `session`, if any.
    pub fn audit_session_user(&self, session: SessionId) -> Option<AuditUser> {
        let (id, role) = self.session_user(session).ok().flatten()?;
        Some(AuditUser {
            name: self.user_name(id),
            role: Some(role),
        })
    }

    /// The user called `name` (case-insensitively), with no role when there is none.
    pub fn audit_user(&self, name: &str) -> AuditUser {
        match self.find_user(name) {
            Some((name, role)) => AuditUser {
                name,
                role: Some(role),
            },
            // A name that is no user's is recorded as given, cut to a user name's length.
            None => AuditUser {
                name: crate::engine::normalize_user_name(name).unwrap_or_else(|_| {
                    name.chars()
                        .take(crate::engine::MAX_USER_NAME_LEN)
                        .collect()
                }),
                role: None,
            },
        }
    }

    /// Describes `cmd` as applied on a node other than the one that prepared it; `None` for a
    /// command that is not audited.
    pub fn audit_command(&self, cmd: &Command) -> Option<CommandAudit> {
        let actor = cmd.actor.map(|id| self.audit_user_id(id));
        let (opcode, user, key_handle) = match &cmd.op {
            CommandOp::Initialize { .. } => (Opcode::InitToken, None, None),
            CommandOp::Activate { .. } => (Opcode::ChangePassword, actor.clone(), None),
            CommandOp::CreateUser(new) => {
                let opcode = if new.role == Role::CryptoOfficer {
                    Opcode::CreateCo
                } else {
                    Opcode::CreateUser
                };
                let user = AuditUser {
                    name: new.name.clone(),
                    role: Some(new.role),
                };
                (opcode, Some(user), None)
            }
            CommandOp::DeleteUser { user } => {
                (Opcode::DeleteUser, Some(self.audit_user_id(*user)), None)
            }
            CommandOp::SetPassword { user, .. } => (
                Opcode::ChangePassword,
                Some(self.audit_user_id(*user)),
                None,
            ),
            CommandOp::LoginAttempt { user, .. } => {
                (Opcode::Login, Some(self.audit_user_id(*user)), None)
            }
            CommandOp::CreateKeys { .. }
            | CommandOp::CreateKeysShared { .. }
            | CommandOp::InsertMasked { .. } => (Opcode::InsertMaskedObject, None, None),
            CommandOp::SetUserAuth { user, mfa, .. } => {
                let opcode = if *mfa || cmd.actor != Some(*user) {
                    Opcode::ChangeMfa
                } else {
                    Opcode::RegisterQuorumKey
                };
                (opcode, Some(self.audit_user_id(*user)), None)
            }
            CommandOp::SetQuorumValue { .. } => (Opcode::SetMValue, None, None),
            CommandOp::SetAttributes { handle, .. } => (Opcode::ModifyObject, None, Some(*handle)),
            CommandOp::Share { handle, user } => (
                Opcode::ShareObject,
                Some(self.audit_user_id(*user)),
                Some(*handle),
            ),
            CommandOp::Unshare { handle, user } => (
                Opcode::UnshareObject,
                Some(self.audit_user_id(*user)),
                Some(*handle),
            ),
            CommandOp::DeleteKey { handle } => (Opcode::DestroyObject, None, Some(*handle)),
        };
        Some(CommandAudit {
            opcode,
            actor,
            user,
            key_handle,
        })
    }

    /// The public half of node `node`'s audit key (see `MasterKey::audit_key`).
    pub fn audit_public_key(
        &self,
        node: u32,
    ) -> Result<crate::crypto::PublicKey, crate::EngineError> {
        Ok(self.master().audit_key(node)?.public_key().clone())
    }

    fn audit_user_id(&self, id: crate::types::UserId) -> AuditUser {
        AuditUser {
            name: self.user_name(id),
            role: self.user_role(id),
        }
    }
}
