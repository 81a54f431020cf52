//! Quorum (M of N) approvals, after CloudHSM's token-sign quorum.
//!
//! - **Registration** (replicated): a crypto officer or crypto user registers an RSA public
//!   key (2048 bits or more); approvals are RSA PKCS#1 v1.5 SHA-256 signatures made with its
//!   private half outside the HSM (`openssl dgst -sha256 -sign`).
//! - **Values** (replicated): the admin services `user` and `quorum` have a cluster-wide value M
//!   (1: off, else 2 to 8); a token key has a `key-usage` and a `key-management` value fixed
//!   when it is created, at most the number of users associated with it (owner and shares).
//! - **Tokens** (this node, in memory, like sessions): a token is issued to a session for one
//!   service (and key), lives 10 minutes, is used once, and dies with its session; at most
//!   1,024 are live, and an admin service has at most one live token per node.
//! - **Approval**: a controlled operation runs inside [`Engine::with_approval`], which checks
//!   the token and every signature, then lets the operation see the set of approvers; the
//!   operation counts those who may approve it (crypto officers for the admin services, the
//!   key's users for the key services) against its M. The requester's own approval counts.

use crate::command::{Command, CommandOp};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::permissions::Operation;
use crate::store::{StoreOp, Table};
use crate::types::{KeyHandle, Role, SessionId, Timestamp, UserId};
use sealgate_hsm_crypto::{HashAlg, KeySpec, PublicKey, SignMechanism};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The most approvals a quorum can require.
pub const MAX_QUORUM: u8 = 8;
/// Live tokens per node.
pub const MAX_TOKENS: usize = 1024;
/// How long a token lives by default, in milliseconds (`EngineConfig::quorum_token_ms`).
pub const TOKEN_LIFETIME_MS: u64 = 10 * 60 * 1000;
/// How long a login waits for its MFA signature, in milliseconds.
pub const MFA_LIFETIME_MS: u64 = 10 * 60 * 1000;

/// A login waiting for its MFA signature.
#[derive(Debug, Clone)]
pub(crate) struct MfaPending {
    pub(crate) user: UserId,
    pub(crate) challenge: Vec<u8>,
    pub(crate) expires: Timestamp,
}

/// The smallest RSA key a user may register.
pub const MIN_QUORUM_KEY_BITS: u16 = 2048;

/// A quorum-controlled service (CloudHSM's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum QuorumService {
    /// Admin: create, delete, change-password, change-mfa (when a crypto officer runs them).
    User,
    /// Admin: set-quorum-value.
    Quorum,
    /// Per key: wrap, unwrap, share, unshare, set-attribute.
    KeyManagement,
    /// Per key: sign.
    KeyUsage,
}

impl QuorumService {
    /// CloudHSM's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Quorum => "quorum",
            Self::KeyManagement => "key-management",
            Self::KeyUsage => "key-usage",
        }
    }

    /// Whether it is a per-key service.
    pub fn per_key(self) -> bool {
        matches!(self, Self::KeyManagement | Self::KeyUsage)
    }
}

impl fmt::Display for QuorumService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key's quorum values, fixed when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyQuorum {
    /// Approvals to sign with it (`key-usage`).
    pub usage: u8,
    /// Approvals to wrap, unwrap with, share, unshare or change it (`key-management`).
    pub management: u8,
}

/// A row of the `quorum` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum QuorumRow {
    /// The admin services' values (row 0).
    Values {
        /// `user`.
        user: u8,
        /// `quorum`.
        quorum: u8,
    },
    /// A user's registered key and MFA switch.
    User {
        /// The user.
        user: UserId,
        /// DER SubjectPublicKeyInfo of its RSA key.
        key: Option<Vec<u8>>,
        /// Whether logins need the key's signature (MFA token-sign).
        mfa: bool,
    },
    /// A key's quorum values.
    Key {
        /// The key.
        handle: KeyHandle,
        /// Its values.
        quorum: KeyQuorum,
    },
}

impl QuorumRow {
    /// The row's key in the `quorum` table.
    pub(crate) fn key(&self) -> u64 {
        match self {
            Self::Values { .. } => 0,
            Self::User { user, .. } => (1 << 32) | u64::from(user.0),
            Self::Key { handle, .. } => (1 << 62) | handle.0,
        }
    }
}

/// A user's quorum registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserAuth {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) mfa: bool,
}

/// The replicated quorum state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuorumState {
    pub(crate) user: u8,
    pub(crate) quorum: u8,
    pub(crate) users: BTreeMap<UserId, UserAuth>,
    pub(crate) keys: BTreeMap<KeyHandle, KeyQuorum>,
}

impl Default for QuorumState {
    fn default() -> Self {
        Self {
            user: 1,
            quorum: 1,
            users: BTreeMap::new(),
            keys: BTreeMap::new(),
        }
    }
}

impl QuorumState {
    /// Takes a stored row in.
    pub(crate) fn load(&mut self, row: QuorumRow) {
        match row {
            QuorumRow::Values { user, quorum } => {
                self.user = user;
                self.quorum = quorum;
            }
            QuorumRow::User { user, key, mfa } => {
                self.users.insert(user, UserAuth { key, mfa });
            }
            QuorumRow::Key { handle, quorum } => {
                self.keys.insert(handle, quorum);
            }
        }
    }
}

/// A token as the node keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    info: TokenInfo,
    session: SessionId,
    requester: UserId,
}

/// A token as its requester sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its id on this node.
    pub id: u64,
    /// The service.
    pub service: QuorumService,
    /// The key, for a key service.
    pub key: Option<KeyHandle>,
    /// Who asked for it.
    pub user: String,
    /// What approvers sign.
    pub approval_data: Vec<u8>,
    /// When it expires.
    pub expires: Timestamp,
}

/// Approvals of a token, as presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approvals {
    /// The token's id.
    pub token: u64,
    /// (approver's name, signature of the token's approval data).
    pub signatures: Vec<(String, Vec<u8>)>,
}

/// Approvals checked for a session's next operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    service: QuorumService,
    key: Option<KeyHandle>,
    approvers: BTreeSet<UserId>,
}

/// The node-local quorum state: tokens and the grants of operations in progress.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    live: BTreeMap<u64, Token>,
    next: u64,
    grants: BTreeMap<SessionId, Grant>,
}

impl Tokens {
    /// Forgets a closed session's tokens.
    pub(crate) fn close_session(&mut self, session: SessionId) {
        self.live.retain(|_, t| t.session != session);
        self.grants.remove(&session);
    }
}

fn quorum_error(reason: String) -> EngineError {
    EngineError::Quorum(reason)
}

/// Checks a quorum value: 1 (off) to [`MAX_QUORUM`].
fn check_value(value: u8) -> Result<(), EngineError> {
    if (1..=MAX_QUORUM).contains(&value) {
        Ok(())
    } else {
        Err(quorum_error(format!(
            "a quorum value is 1 (no approval) or 2 to {MAX_QUORUM}, not {value}"
        )))
    }
}

/// Parses a key a user registers: RSA of 2048 bits or more.
fn registered_key(der: &[u8]) -> Result<PublicKey, EngineError> {
    let key = PublicKey::from_der(der)
        .map_err(|_| quorum_error("the quorum key is not a DER SubjectPublicKeyInfo".into()))?;
    match key.spec() {
        KeySpec::Rsa(size) if size.bits() >= MIN_QUORUM_KEY_BITS => Ok(key),
        _ => Err(quorum_error(format!(
            "the quorum key must be RSA of at least {MIN_QUORUM_KEY_BITS} bits"
        ))),
    }
}

/// Whether `signature` is `key`'s RSA PKCS#1 v1.5 SHA-256 signature of `data`.
pub(crate) fn signed_by(key_der: &[u8], data: &[u8], signature: &[u8]) -> bool {
    PublicKey::from_der(key_der).is_ok_and(|k| {
        k.verify(SignMechanism::RsaPkcs1(HashAlg::Sha256), data, signature)
            .is_ok()
    })
}

impl Engine {
    // ----- registration and values ------------------------------------------------------

    /// Registers the session's user's RSA public key for approvals (replacing an earlier one;
    /// MFA, if on, uses the new key).
    pub fn register_quorum_key(
        &self,
        session: SessionId,
        public_der: &[u8],
        now: Timestamp,
    ) -> Result<Command, EngineError> {
        let caller = self.authorize(session, Operation::ChangeOwnPassword)?;
        registered_key(public_der)?;
        let user = caller.user()?;
        let mfa = self.quorum.users.get(&user).is_some_and(|a| a.mfa);
        Ok(Command {
            at: now,
            actor: Some(user),
            op: CommandOp::SetUserAuth {
                user,
                key: Some(public_der.to_vec()),
                mfa,
            },
        })
    }

    /// Turns MFA on for user `name` with `public_der` (also registered for quorum), or off
    /// (`None`: the registration goes too, as in CloudHSM). One's own (CO or CU), or any user's
    /// as a crypto officer, which the `user` service's quorum controls.
    pub fn change_mfa(
        &self,
        session: SessionId,
        name: &str,
        public_der: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<Command, EngineError> {
        let caller = self.caller(session)?;
        let actor = caller.user()?;
        let own = self.user_name(actor) == name.to_ascii_lowercase();
        let op = if own {
            Operation::ChangeOwnPassword
        } else {
            Operation::ChangeAnyPassword
        };
        let caller = self.authorize(session, op)?;
        self.require_admin_quorum(session, caller.role(), QuorumService::User)?;
        let (target, role) = self
            .find_user(name)
            .ok_or_else(|| EngineError::UserNotFound {
                name: name.to_owned(),
            })?;
        if !matches!(role, Role::CryptoOfficer | Role::CryptoUser) {
            return Err(quorum_error(format!(
                "MFA is for crypto officers and crypto users, not {target}"
            )));
        }
        let user = self.user_id(&target)?;
        if let Some(der) = public_der {
            registered_key(der)?;
        }
        Ok(Command {
            at: now,
            actor: Some(actor),
            op: CommandOp::SetUserAuth {
                user,
                key: public_der.map(<[u8]>::to_vec),
                mfa: public_der.is_some(),
            },
        })
    }

    /// The admin services' quorum values (any logged-in user).
    pub fn quorum_values(
        &self,
        session: SessionId,
    ) -> Result<Vec<(QuorumService, u8)>, EngineError> {
        self.authorize(session, Operation::ListUsers)?;
        self.caller(session)?.user()?;
        Ok(vec![
            (QuorumService::User, self.quorum.user),
            (QuorumService::Quorum, self.quorum.quorum),
        ])
    }

    /// Sets an admin service's quorum value (crypto officers). Needs approvals for the
    /// `quorum` service at the larger of its own value and the changed service's current
    /// value; a value of 2 or more needs that many crypto officers with registered keys, so
    /// the officers cannot lock themselves out.
    pub fn set_quorum_value(
        &self,
        session: SessionId,
        service: QuorumService,
        value: u8,
        now: Timestamp,
    ) -> Result<Command, EngineError> {
        let caller = self.authorize(session, Operation::CreateUser)?;
        check_value(value)?;
        let current = match service {
            QuorumService::User => self.quorum.user,
            QuorumService::Quorum => self.quorum.quorum,
            QuorumService::KeyManagement | QuorumService::KeyUsage => {
                return Err(quorum_error(format!(
                    "{service} values belong to each key and are set when it is created"
                )));
            }
        };
        let needed = current.max(self.quorum.quorum);
        self.require_approvals(session, QuorumService::Quorum, None, needed)?;
        let officers = self
            .officers()
            .filter(|id| self.quorum.users.get(id).is_some_and(|a| a.key.is_some()))
            .count();
        if usize::from(value) > officers.max(1) {
            return Err(quorum_error(format!(
                "a quorum of {value} needs {value} crypto officers with registered quorum keys; \
                 {officers} have one"
            )));
        }
        Ok(Command {
            at: now,
            actor: Some(caller.user()?),
            op: CommandOp::SetQuorumValue { service, value },
        })
    }

    /// A key's quorum values (1 and 1 for a key without).
    pub fn key_quorum(&self, handle: KeyHandle) -> KeyQuorum {
        self.quorum.keys.get(&handle).copied().unwrap_or(KeyQuorum {
            usage: 1,
            management: 1,
        })
    }

    /// Runs `create`, a key creation on `session`, with quorum values and shares fixed at
    /// creation: the command it prepares becomes one that creates the keys, shares them with
    /// `share` (crypto users) and sets `quorum` on them, applied together. Each value must be
    /// at most the number of users associated with the key (owner and shares).
    pub fn with_key_quorum<T>(
        &mut self,
        session: SessionId,
        quorum: KeyQuorum,
        share: &[String],
        create: impl FnOnce(&mut Self) -> Result<crate::Step<T>, EngineError>,
    ) -> Result<crate::Step<T>, EngineError> {
        check_value(quorum.usage)?;
        check_value(quorum.management)?;
        let caller = self.caller(session)?;
        let owner = caller.user()?;
        let mut shared = Vec::new();
        for name in share {
            let (name, role) = self
                .find_user(name)
                .ok_or_else(|| EngineError::UserNotFound { name: name.clone() })?;
            let id = self.user_id(&name)?;
            if role != Role::CryptoUser || id == owner {
                return Err(quorum_error(format!(
                    "keys are shared with other crypto users; {name} is not one"
                )));
            }
            if !shared.contains(&id) {
                shared.push(id);
            }
        }
        let users = 1 + shared.len();
        let most = quorum.usage.max(quorum.management);
        if usize::from(most) > users {
            return Err(quorum_error(format!(
                "a key's quorum value ({most}) may not exceed the users associated with it \
                 ({users}: the owner and {} shared)",
                shared.len()
            )));
        }
        match create(self)? {
            crate::Step::Replicate(Command {
                at,
                actor,
                op: CommandOp::CreateKeys { objects },
            }) => Ok(crate::Step::Replicate(Command {
                at,
                actor,
                op: CommandOp::CreateKeysShared {
                    objects,
                    shared,
                    quorum,
                },
            })),
            crate::Step::Replicate(_) => Err(EngineError::Corrupt(
                "a key creation prepared another command",
            )),
            crate::Step::Done(_) => Err(quorum_error(
                "quorum values and shares apply to token keys only (token=true)".into(),
            )),
        }
    }

    // ----- tokens ----------------------------------------------------------------------

    /// Issues a token for `service` (and `key`, for a key service) to `session`: its approval
    /// data, valid on this node for [`TOKEN_LIFETIME_MS`] and one use.
    pub fn generate_quorum_token(
        &mut self,
        session: SessionId,
        service: QuorumService,
        key: Option<KeyHandle>,
        node: u32,
        now: Timestamp,
    ) -> Result<TokenInfo, EngineError> {
        let caller = self.caller(session)?;
        let requester = caller.user()?;
        let role = caller.role();
        match (service.per_key(), key) {
            (false, None) if role == Some(Role::CryptoOfficer) => {}
            (false, None) => {
                return Err(quorum_error(format!(
                    "only crypto officers ask for {service} tokens"
                )));
            }
            (true, Some(handle)) if role == Some(Role::CryptoUser) => {
                // The key must be one the requester can use.
                self.authorize(session, Operation::Sign)?;
                self.key_users(handle, requester)?;
            }
            (true, Some(_)) => {
                return Err(quorum_error(format!(
                    "only crypto users ask for {service} tokens"
                )));
            }
            (true, None) => {
                return Err(quorum_error(format!("a {service} token names its key")));
            }
            (false, Some(_)) => {
                return Err(quorum_error(format!("a {service} token names no key")));
            }
        }
        self.tokens.live.retain(|_, t| t.info.expires.0 > now.0);
        if !service.per_key()
            && let Some(t) = self
                .tokens
                .live
                .values()
                .find(|t| t.info.service == service)
        {
            return Err(quorum_error(format!(
                "this node has a live {service} token already (id {}, until {} ms): use it or \
                 delete it",
                t.info.id, t.info.expires.0
            )));
        }
        if self.tokens.live.len() >= MAX_TOKENS {
            return Err(EngineError::LimitReached {
                what: "live quorum tokens",
                limit: MAX_TOKENS,
            });
        }
        self.tokens.next += 1;
        let id = self.tokens.next;
        let nonce = hex::encode(sealgate_hsm_crypto::random_bytes(16)?);
        let user = self.user_name(requester);
        let expires = Timestamp(now.0.saturating_add(self.config().quorum_token_ms));
        let cluster = self
            .cluster_uid()
            .map(|u| u.to_string())
            .unwrap_or_default();
        let approval_data = format!(
            "sealgate quorum token v1\ncluster={cluster}\nnode={node}\nid={id}\nservice={service}\n\
             key={}\nrequester={user}\nexpires={}\nnonce={nonce}\n",
            key.map_or_else(|| "-".to_owned(), |k| k.0.to_string()),
            expires.0
        )
        .into_bytes();
        let info = TokenInfo {
            id,
            service,
            key,
            user,
            approval_data,
            expires,
        };
        self.tokens.live.insert(
            id,
            Token {
                info: info.clone(),
                session,
                requester,
            },
        );
        Ok(info)
    }

    /// The live tokens of this node (any logged-in user; approval data included, which is
    /// not secret).
    pub fn list_quorum_tokens(
        &self,
        session: SessionId,
        now: Timestamp,
    ) -> Result<Vec<TokenInfo>, EngineError> {
        self.caller(session)?.user()?;
        Ok(self
            .tokens
            .live
            .values()
            .filter(|t| t.info.expires.0 > now.0)
            .map(|t| t.info.clone())
            .collect())
    }

    /// Deletes a token: the requester's own, or any as a crypto officer.
    pub fn delete_quorum_token(&mut self, session: SessionId, id: u64) -> Result<(), EngineError> {
        let caller = self.caller(session)?;
        let user = caller.user()?;
        let token = self
            .tokens
            .live
            .get(&id)
            .ok_or_else(|| quorum_error(format!("no live quorum token {id} on this node")))?;
        if token.requester != user && caller.role() != Some(Role::CryptoOfficer) {
            return Err(quorum_error(format!(
                "token {id} is another user's; a crypto officer may delete it"
            )));
        }
        self.tokens.live.remove(&id);
        Ok(())
    }

    // ----- approval --------------------------------------------------------------------

    /// Checks `approvals` and runs `operation` with them: the token must be live, this
    /// session's, for `service` (and `key`); it is used up whatever the operation then does.
    /// Every signature must verify with its approver's registered key. The operation sees the
    /// approvers (see `require_approvals`) and nothing else does.
    pub fn with_approval<T>(
        &mut self,
        session: SessionId,
        approvals: &Approvals,
        service: QuorumService,
        key: Option<KeyHandle>,
        now: Timestamp,
        operation: impl FnOnce(&mut Self) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        self.caller(session)?.user()?;
        let Some(token) = self.tokens.live.get(&approvals.token).cloned() else {
            return Err(quorum_error(format!(
                "quorum token {} is not live on this node (used, deleted, expired, or from \
                 another node)",
                approvals.token
            )));
        };
        if token.session != session {
            return Err(quorum_error(format!(
                "quorum token {} belongs to another session: a token is used in the session \
                 that asked for it",
                approvals.token
            )));
        }
        // Used up from here on, whatever happens.
        self.tokens.live.remove(&approvals.token);
        if token.info.expires.0 <= now.0 {
            return Err(quorum_error(format!(
                "quorum token {} expired",
                approvals.token
            )));
        }
        if token.info.service != service || token.info.key != key {
            return Err(quorum_error(format!(
                "quorum token {} is for {}{}, not for this operation ({service}{})",
                approvals.token,
                token.info.service,
                token
                    .info
                    .key
                    .map(|k| format!(" on key {k}"))
                    .unwrap_or_default(),
                key.map(|k| format!(" on key {k}")).unwrap_or_default(),
            )));
        }
        let mut approvers = BTreeSet::new();
        for (name, signature) in &approvals.signatures {
            let (name, _) = self
                .find_user(name)
                .ok_or_else(|| quorum_error(format!("approver {name} is no user")))?;
            let id = self.user_id(&name)?;
            let Some(der) = self.quorum.users.get(&id).and_then(|a| a.key.as_ref()) else {
                return Err(quorum_error(format!(
                    "approver {name} has no registered quorum key"
                )));
            };
            if !signed_by(der, &token.info.approval_data, signature) {
                return Err(quorum_error(format!(
                    "the approval by {name} is not a signature of this token's approval data \
                     with {name}'s registered key"
                )));
            }
            approvers.insert(id);
        }
        self.tokens.grants.insert(
            session,
            Grant {
                service,
                key,
                approvers,
            },
        );
        let result = operation(self);
        self.tokens.grants.remove(&session);
        result
    }

    /// Requires `needed` approvals of `service` (and `key`) for the operation running on
    /// `session`: approvers who may approve it, counted from the session's grant.
    pub(crate) fn require_approvals(
        &self,
        session: SessionId,
        service: QuorumService,
        key: Option<KeyHandle>,
        needed: u8,
    ) -> Result<(), EngineError> {
        if needed <= 1 {
            return Ok(());
        }
        let Some(grant) = self
            .tokens
            .grants
            .get(&session)
            .filter(|g| g.service == service && g.key == key)
        else {
            return Err(EngineError::QuorumRequired {
                service,
                needed,
                approved: 0,
            });
        };
        let eligible: BTreeSet<UserId> = match key {
            None => self.officers().collect(),
            Some(handle) => self.key_associated(handle).into_iter().collect(),
        };
        let approved = grant.approvers.intersection(&eligible).count();
        if approved < usize::from(needed) {
            return Err(EngineError::QuorumRequired {
                service,
                needed,
                approved: u8::try_from(approved).unwrap_or(u8::MAX),
            });
        }
        Ok(())
    }

    /// The admin service's quorum for an operation by `role` (only crypto officers' operations
    /// are controlled).
    pub(crate) fn require_admin_quorum(
        &self,
        session: SessionId,
        role: Option<Role>,
        service: QuorumService,
    ) -> Result<(), EngineError> {
        if role != Some(Role::CryptoOfficer) {
            return Ok(());
        }
        let needed = match service {
            QuorumService::User => self.quorum.user,
            _ => self.quorum.quorum,
        };
        self.require_approvals(session, service, None, needed)
    }

    /// The key service's quorum for an operation on `handle`.
    pub(crate) fn require_key_quorum(
        &self,
        session: SessionId,
        service: QuorumService,
        handle: KeyHandle,
    ) -> Result<(), EngineError> {
        let Some(q) = self.quorum.keys.get(&handle) else {
            return Ok(());
        };
        let needed = if service == QuorumService::KeyUsage {
            q.usage
        } else {
            q.management
        };
        self.require_approvals(session, service, Some(handle), needed)
    }

    // ----- applying ---------------------------------------------------------------------

    /// Applies the quorum commands.
    pub(crate) fn apply_quorum(
        &mut self,
        cmd: &Command,
        ops: &mut Vec<StoreOp>,
    ) -> Result<crate::Outcome, EngineError> {
        match &cmd.op {
            CommandOp::SetUserAuth { user, key, mfa } => {
                let actor = cmd.actor.ok_or(EngineError::NotLoggedIn)?;
                if self.user_role(*user).is_none() {
                    return Err(EngineError::UserNotFound {
                        name: format!("#{user}"),
                    });
                }
                let role = self.user_role(actor);
                if actor != *user && role != Some(Role::CryptoOfficer) {
                    return Err(EngineError::PermissionDenied {
                        operation: Operation::ChangeAnyPassword,
                        principal: crate::Principal::User(role.unwrap_or(Role::CryptoUser)),
                    });
                }
                self.set_user_auth(ops, *user, key.clone(), *mfa)?;
                Ok(crate::Outcome::PasswordChanged)
            }
            CommandOp::SetQuorumValue { service, value } => {
                check_value(*value)?;
                let (user, quorum) = match service {
                    QuorumService::User => (*value, self.quorum.quorum),
                    QuorumService::Quorum => (self.quorum.user, *value),
                    _ => {
                        return Err(quorum_error(format!("{service} values belong to keys")));
                    }
                };
                put_row(ops, &QuorumRow::Values { user, quorum })?;
                self.quorum.user = user;
                self.quorum.quorum = quorum;
                Ok(crate::Outcome::AttributesChanged)
            }
            _ => Err(EngineError::Corrupt("not a quorum command")),
        }
    }

    /// Stores a user's registration (none: the row goes).
    pub(crate) fn set_user_auth(
        &mut self,
        ops: &mut Vec<StoreOp>,
        user: UserId,
        key: Option<Vec<u8>>,
        mfa: bool,
    ) -> Result<(), EngineError> {
        let row = QuorumRow::User {
            user,
            key: key.clone(),
            mfa,
        };
        if key.is_none() && !mfa {
            if self.quorum.users.remove(&user).is_some() {
                ops.push(StoreOp::Delete {
                    table: Table::Quorum,
                    key: row.key(),
                });
            }
        } else {
            put_row(ops, &row)?;
            self.quorum.users.insert(user, UserAuth { key, mfa });
        }
        Ok(())
    }

    /// Stores a new key's quorum values.
    pub(crate) fn set_key_quorum(
        &mut self,
        ops: &mut Vec<StoreOp>,
        handle: KeyHandle,
        quorum: KeyQuorum,
    ) -> Result<(), EngineError> {
        if quorum.usage <= 1 && quorum.management <= 1 {
            return Ok(());
        }
        put_row(ops, &QuorumRow::Key { handle, quorum })?;
        self.quorum.keys.insert(handle, quorum);
        Ok(())
    }

    /// Forgets a deleted key's quorum values.
    pub(crate) fn drop_key_quorum(&mut self, ops: &mut Vec<StoreOp>, handle: KeyHandle) {
        if self.quorum.keys.remove(&handle).is_some() {
            ops.push(StoreOp::Delete {
                table: Table::Quorum,
                key: QuorumRow::Key {
                    handle,
                    quorum: KeyQuorum {
                        usage: 1,
                        management: 1,
                    },
                }
                .key(),
            });
        }
    }

    /// Whether a user must sign an MFA challenge to log in, and with which key.
    pub(crate) fn mfa_key(&self, user: UserId) -> Option<&[u8]> {
        self.quorum
            .users
            .get(&user)
            .filter(|a| a.mfa)
            .and_then(|a| a.key.as_deref())
    }

    /// A user's registration, for user listings: (registered key, MFA on).
    pub fn quorum_registration(&self, user: UserId) -> (bool, bool) {
        self.quorum
            .users
            .get(&user)
            .map_or((false, false), |a| (a.key.is_some(), a.mfa))
    }
}

fn put_row(ops: &mut Vec<StoreOp>, row: &QuorumRow) -> Result<(), EngineError> {
    ops.push(StoreOp::Put {
        table: Table::Quorum,
        key: row.key(),
        value: postcard::to_allocvec(row)
            .map_err(|_| EngineError::Corrupt("a quorum row does not encode"))?,
    });
    Ok(())
}
