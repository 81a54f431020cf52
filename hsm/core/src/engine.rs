//! The engine: replicated state (users, keys), node-local sessions, and every operation.
//!
//! Reads and crypto operations answer at once from the applied state. Requests that change
//! replicated state are checked, prepared into a [`Command`] and applied with
//! [`Engine::apply`]; applying checks again against the state of that moment, so a command
//! that raced with another (the user was deleted meanwhile, say) is refused on every replica
//! alike.

use crate::api::{
    Applied, ClusterInfo, ClusterLimits, EngineConfig, EngineStats, KeyInfo, MaskedObject, Outcome,
    Step, SyncStatus, UserInfo,
};
use crate::attributes::Attribute;
use crate::attributes::{AttributeChange, KeyAttributes, KeyFilter, KeyTemplate};
use crate::command::{
    Command, CommandOp, KeyRecord, MetaRecord, NewKeyObject, NewUser, STORE_FORMAT, UserRecord,
};
use crate::error::EngineError;
use crate::permissions::{Operation, Principal, is_permitted};
use crate::quorum::{MFA_LIFETIME_MS, MfaPending, QuorumRow, QuorumService, QuorumState, Tokens};
use crate::store::{Fingerprint, Snapshot, StoreBatch, StoreError, StoreOp, Table};
use crate::types::{KeyHandle, ObjectUid, Role, SessionId, Timestamp, UserId};
use sealgate_hsm_crypto::{
    self as crypto, CryptoError, EncryptMechanism, HashAlg, KdfMechanism, KeyClass, KeyMaterial,
    KeySpec, KeyType, MasterKey, Password, PasswordHash, PublicKey, SealedBytes, SignMechanism,
    UnwrapTarget, UnwrappingKey, WrapMechanism, WrappingKey,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use zeroize::Zeroizing;

/// Name of the pre-crypto-officer that initialization creates (CloudHSM's default admin).
pub const PRECO_NAME: &str = "admin";
/// Name of the built-in appliance user.
pub const APPLIANCE_NAME: &str = "app_user";
/// Longest user name.
pub const MAX_USER_NAME_LEN: usize = 31;

const PASSWORD_AAD: &[u8] = b"user password";
const MASKED_AAD: &[u8] = b"masked object";

pub(crate) struct User {
    id: UserId,
    uid: ObjectUid,
    name: String,
    role: Role,
    password: Option<(SealedBytes, PasswordHash)>,
    failed_logins: u8,
    created_at: Timestamp,
}

impl User {
    fn record(&self) -> UserRecord {
        UserRecord {
            id: self.id,
            uid: self.uid,
            name: self.name.clone(),
            role: self.role,
            password: self.password.as_ref().map(|(s, _)| s.clone()),
            failed_logins: self.failed_logins,
            created_at: self.created_at,
        }
    }
}

/// A key object with its material opened for use.
struct KeyObject {
    record: KeyRecord,
    public: Option<PublicKey>,
    material: Option<KeyMaterial>,
}

impl KeyObject {
    fn handle(&self) -> KeyHandle {
        self.record.handle
    }

    fn attrs(&self) -> &KeyAttributes {
        &self.record.attrs
    }

    fn visible_to(&self, user: UserId) -> bool {
        self.record.owner == user || self.record.shared.contains(&user)
    }

    fn wrong_kind(&self) -> EngineError {
        EngineError::WrongKeyKind {
            handle: self.handle(),
            class: self.attrs().class,
            key_type: self.attrs().key_type(),
        }
    }

    fn require(&self, attribute: Attribute, value: bool) -> Result<(), EngineError> {
        if value {
            Ok(())
        } else {
            Err(EngineError::KeyUsageNotAllowed {
                handle: self.handle(),
                attribute,
            })
        }
    }
}

struct Session {
    user: Option<UserId>,
    keys: BTreeMap<KeyHandle, KeyObject>,
    /// A login whose password was right, waiting for the MFA signature.
    mfa: Option<MfaPending>,
}

/// Who is calling, resolved from a session.
#[derive(Clone, Copy)]
pub(crate) struct Caller {
    session: SessionId,
    user: Option<UserId>,
    principal: Principal,
}

impl Caller {
    pub(crate) fn user(&self) -> Result<UserId, EngineError> {
        self.user.ok_or(EngineError::NotLoggedIn)
    }

    pub(crate) fn role(&self) -> Option<Role> {
        match self.principal {
            Principal::User(role) => Some(role),
            Principal::Unauthenticated => None,
        }
    }
}

/// The HSM engine. See the [crate documentation](crate).
pub struct Engine {
    master: MasterKey,
    config: EngineConfig,
    meta: MetaRecord,
    users: BTreeMap<UserId, User>,
    keys: BTreeMap<KeyHandle, KeyObject>,
    /// The token keys by unique id (an index of `keys`, kept with it).
    key_uids: BTreeMap<ObjectUid, KeyHandle>,
    sessions: BTreeMap<SessionId, Session>,
    next_session: u64,
    next_session_handle: u64,
    /// Unique ids of deleted token keys.
    tombstones: BTreeSet<ObjectUid>,
    /// Integrity tag of every stored row but the meta row, to keep `meta.rows_digest`.
    row_tags: BTreeMap<(Table, u64), [u8; 32]>,
    /// Quorum values and registrations (replicated).
    pub(crate) quorum: QuorumState,
    /// Quorum tokens and approvals in progress (this node's).
    pub(crate) tokens: Tokens,
    /// Failed logins prepared on this node but not applied yet, by user, with when they were
    /// prepared: they count towards the lockout at once, so parallel guesses cannot outrun it.
    pending_failures: BTreeMap<UserId, Vec<Timestamp>>,
}

/// How long a prepared failed login counts as pending if its command never comes back.
const PENDING_FAILURE_MS: u64 = 60_000;

const TAG_LEN: usize = 32;

fn row_context(table: Table, key: u64) -> Vec<u8> {
    format!("{}/{key}", table.name()).into_bytes()
}

/// The element a row contributes to the rows digest.
fn row_element(master: &MasterKey, table: Table, key: u64, tag: &[u8; 32]) -> [u8; 32] {
    master.record_tag(
        b"row set element",
        &[row_context(table, key).as_slice(), tag].concat(),
    )
}

/// Which password a login checked: a digest of the sealed hash (sealed with a fresh nonce each
/// time a password is set, so every password change gives a new value).
/// A login between [`Engine::begin_login`] and [`Engine::finish_login`]: holds a copy of the
/// user's password hash so the password can be checked without the engine. Single use.
#[must_use = "a ticket holds a reserved failure until finish_login"]
pub struct LoginTicket {
    session: SessionId,
    /// `None` for an unknown user name: the check costs the same and fails.
    target: Option<LoginTarget>,
}

struct LoginTarget {
    user: UserId,
    hash: PasswordHash,
    credential: [u8; 16],
    reserved_at: Timestamp,
}

impl LoginTicket {
    /// Checks `password` (argon2id; the slow part of a login). Needs no engine.
    pub fn check(&self, password: &Password) -> bool {
        match &self.target {
            Some(t) => t.hash.verify(password),
            None => {
                PasswordHash::verify_dummy(password);
                false
            }
        }
    }
}

impl std::fmt::Debug for LoginTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginTicket")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

fn credential_of(sealed: &SealedBytes) -> [u8; 16] {
    let d = crypto::digest(HashAlg::Sha256, sealed.as_bytes());
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(d) {
        *o = b;
    }
    out
}

fn xor_into(acc: &mut [u8; 32], x: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a ^= b;
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EngineError> {
    postcard::to_allocvec(value).map_err(|_| EngineError::Corrupt("record does not encode"))
}

fn key_aad(attrs: &KeyAttributes) -> Vec<u8> {
    format!("key material/{}/{}", attrs.class, attrs.key_type()).into_bytes()
}

fn open_password(
    master: &MasterKey,
    uid: ObjectUid,
    sealed: &SealedBytes,
) -> Result<PasswordHash, EngineError> {
    let phc = master
        .unseal_bytes(sealed, &uid.0, PASSWORD_AAD)
        .map_err(|_| EngineError::Corrupt("a password hash does not open under the master key"))?;
    PasswordHash::from_phc(phc).map_err(|_| EngineError::Corrupt("a password hash is malformed"))
}

/// Opens a stored or replicated key record into a usable object.
fn open_key(master: &MasterKey, record: KeyRecord) -> Result<KeyObject, EngineError> {
    let attrs = &record.attrs;
    let public = match &record.public_der {
        Some(der) => Some(
            PublicKey::from_der(der)
                .map_err(|_| EngineError::Corrupt("a public key does not parse"))?,
        ),
        None => None,
    };
    let material = match &record.sealed {
        Some(sealed) => Some(
            master
                .unseal_key(sealed, &record.uid.0, &key_aad(attrs), attrs.key_type())
                .map_err(|_| {
                    EngineError::Corrupt("key material does not open under the master key")
                })?,
        ),
        None => None,
    };
    let consistent = match attrs.class {
        KeyClass::PublicKey => public.is_some() && material.is_none(),
        KeyClass::PrivateKey => matches!(material, Some(KeyMaterial::Private(_))),
        KeyClass::SecretKey => matches!(material, Some(KeyMaterial::Secret(_))),
    };
    if !consistent {
        return Err(EngineError::Corrupt(
            "key record class and material disagree",
        ));
    }
    if let Some(m) = &material
        && m.spec() != attrs.spec
    {
        return Err(EngineError::Corrupt(
            "key material does not match its attributes",
        ));
    }
    Ok(KeyObject {
        record,
        public,
        material,
    })
}

/// Checks and normalizes a user name: 1–31 characters of `a-z`, `0-9`, `_`, `-`, compared
/// without case (stored lowercase, as CloudHSM does).
pub fn normalize_user_name(name: &str) -> Result<String, EngineError> {
    if name.is_empty() {
        return Err(EngineError::InvalidUserName {
            reason: "it is empty",
        });
    }
    if name.chars().count() > MAX_USER_NAME_LEN {
        return Err(EngineError::InvalidUserName {
            reason: "at most 31 characters",
        });
    }
    let lower = name.to_ascii_lowercase();
    if !lower
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(EngineError::InvalidUserName {
            reason: "only letters, digits, '_' and '-'",
        });
    }
    if !lower.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(EngineError::InvalidUserName {
            reason: "must start with a letter or digit",
        });
    }
    Ok(lower)
}

/// The replicated part of the engine's state, as loaded from rows.
struct LoadedState {
    meta: MetaRecord,
    users: BTreeMap<UserId, User>,
    keys: BTreeMap<KeyHandle, KeyObject>,
    tombstones: BTreeSet<ObjectUid>,
    row_tags: BTreeMap<(Table, u64), [u8; 32]>,
    quorum: QuorumState,
}

impl LoadedState {
    /// Loads and checks every row of `snapshot` (not empty) into this empty state.
    fn load(&mut self, master: &MasterKey, snapshot: &Snapshot) -> Result<(), StoreError> {
        let corrupt = |table: Table, key: u64, reason: &'static str| StoreError::Corrupt {
            table: table.name(),
            key,
            reason,
        };
        // Every row is `payload || tag`; the tag binds the payload to its table and key.
        let split =
            |table: Table, key: u64, bytes: &'_ [u8]| -> Result<(Vec<u8>, [u8; 32]), StoreError> {
                let cut =
                    bytes
                        .len()
                        .checked_sub(TAG_LEN)
                        .ok_or(corrupt(table, key, "too short"))?;
                let (payload, tag) = bytes.split_at(cut);
                let tag: [u8; 32] = tag
                    .try_into()
                    .map_err(|_| corrupt(table, key, "too short"))?;
                Ok((payload.to_vec(), tag))
            };
        let meta_bytes =
            snapshot
                .rows
                .get(&(Table::Meta, 0))
                .ok_or(corrupt(Table::Meta, 0, "missing"))?;
        let (meta_payload, meta_tag) = split(Table::Meta, 0, meta_bytes)?;
        let meta: MetaRecord = postcard::from_bytes(&meta_payload)
            .map_err(|_| corrupt(Table::Meta, 0, "does not decode"))?;
        if meta.format != STORE_FORMAT {
            return Err(StoreError::UnsupportedFormat {
                found: meta.format,
                supported: STORE_FORMAT,
            });
        }
        let ours = master.fingerprint();
        if meta.fingerprint != ours {
            return Err(StoreError::MasterKeyMismatch {
                expected: Fingerprint(meta.fingerprint),
                found: Fingerprint(ours),
            });
        }
        const EDITED: &str = "fails its integrity check: it was changed outside sealgate";
        if !master.check_record_tag(&row_context(Table::Meta, 0), &meta_payload, &meta_tag) {
            return Err(corrupt(Table::Meta, 0, EDITED));
        }
        let mut digest = [0u8; 32];
        for ((table, key), bytes) in &snapshot.rows {
            let (table, key) = (*table, *key);
            if table == Table::Meta {
                if key != 0 {
                    return Err(corrupt(table, key, "unexpected row"));
                }
                continue;
            }
            let (payload, tag) = split(table, key, bytes)?;
            if !master.check_record_tag(&row_context(table, key), &payload, &tag) {
                return Err(corrupt(table, key, EDITED));
            }
            xor_into(&mut digest, &row_element(master, table, key, &tag));
            self.row_tags.insert((table, key), tag);
            match table {
                Table::Meta => {}
                Table::Users => {
                    let r: UserRecord = postcard::from_bytes(&payload)
                        .map_err(|_| corrupt(table, key, "does not decode"))?;
                    let password = match &r.password {
                        Some(sealed) => Some((
                            sealed.clone(),
                            open_password(master, r.uid, sealed)
                                .map_err(|_| corrupt(table, key, "password does not open"))?,
                        )),
                        None => None,
                    };
                    self.users.insert(
                        r.id,
                        User {
                            id: r.id,
                            uid: r.uid,
                            name: r.name,
                            role: r.role,
                            password,
                            failed_logins: r.failed_logins,
                            created_at: r.created_at,
                        },
                    );
                }
                Table::Keys => {
                    let r: KeyRecord = postcard::from_bytes(&payload)
                        .map_err(|_| corrupt(table, key, "does not decode"))?;
                    let handle = r.handle;
                    let obj = open_key(master, r)
                        .map_err(|_| corrupt(table, key, "key material does not open"))?;
                    self.keys.insert(handle, obj);
                }
                Table::Tombstones => {
                    let uid: ObjectUid = postcard::from_bytes(&payload)
                        .map_err(|_| corrupt(table, key, "does not decode"))?;
                    self.tombstones.insert(uid);
                }
                Table::Quorum => {
                    let row: QuorumRow = postcard::from_bytes(&payload)
                        .map_err(|_| corrupt(table, key, "does not decode"))?;
                    if row.key() != key {
                        return Err(corrupt(table, key, "stored under another row's key"));
                    }
                    self.quorum.load(row);
                }
            }
        }
        if digest != meta.rows_digest {
            return Err(corrupt(
                Table::Meta,
                0,
                "rows were added, removed or rolled back outside sealgate",
            ));
        }
        self.meta = meta;
        Ok(())
    }
}

/// The unique-id index of `keys`.
fn uid_index(keys: &BTreeMap<KeyHandle, KeyObject>) -> BTreeMap<ObjectUid, KeyHandle> {
    keys.iter()
        .map(|(handle, obj)| (obj.record.uid, *handle))
        .collect()
}

impl Engine {
    /// A new engine with no state (a node that has not joined or initialized a cluster).
    pub fn new(master: MasterKey, config: EngineConfig) -> Self {
        let LoadedState {
            meta,
            users,
            keys,
            tombstones,
            row_tags,
            quorum,
        } = Self::new_state(&master, config.cluster);
        let key_uids = uid_index(&keys);
        Self {
            master,
            config,
            meta,
            users,
            keys,
            key_uids,
            sessions: BTreeMap::new(),
            next_session: 1,
            next_session_handle: 1,
            tombstones,
            row_tags,
            quorum,
            tokens: Tokens::default(),
            pending_failures: BTreeMap::new(),
        }
    }

    /// Rebuilds the engine from a store's rows. Fails with a clear error if the rows were
    /// written under another master key or are damaged.
    pub fn restore(
        master: MasterKey,
        config: EngineConfig,
        snapshot: &Snapshot,
    ) -> Result<Self, StoreError> {
        let mut engine = Self::new(master, config);
        engine.reload(snapshot)?;
        Ok(engine)
    }

    /// Replaces the replicated state (users, keys, counters) with the rows of `snapshot`, as
    /// when a node installs a snapshot of its cluster. The rows are checked as [`Engine::restore`]
    /// checks them, and nothing changes if they fail. Sessions stay open: a session whose user
    /// no longer exists is logged out; session keys are kept.
    pub fn reload(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut loaded = Self::new_state(&self.master, self.config.cluster);
        if !snapshot.is_empty() {
            loaded.load(&self.master, snapshot)?;
        }
        let LoadedState {
            meta,
            users,
            keys,
            tombstones,
            row_tags,
            quorum,
        } = loaded;
        self.quorum = quorum;
        self.meta = meta;
        self.users = users;
        self.key_uids = uid_index(&keys);
        self.keys = keys;
        self.tombstones = tombstones;
        self.row_tags = row_tags;
        self.pending_failures.clear();
        for session in self.sessions.values_mut() {
            if session.user.is_some_and(|u| !self.users.contains_key(&u)) {
                session.user = None;
            }
        }
        Ok(())
    }

    fn new_state(master: &MasterKey, limits: ClusterLimits) -> LoadedState {
        LoadedState {
            meta: MetaRecord {
                format: STORE_FORMAT,
                fingerprint: master.fingerprint(),
                cluster_uid: None,
                activated: false,
                next_user_id: 1,
                next_handle: 1,
                next_tombstone: 1,
                applied: 0,
                limits,
                rows_digest: [0; 32],
            },
            users: BTreeMap::new(),
            keys: BTreeMap::new(),
            tombstones: BTreeSet::new(),
            row_tags: BTreeMap::new(),
            quorum: QuorumState::default(),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Counters for metrics.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            users: self.users.len(),
            token_keys: self.keys.len(),
            session_keys: self.sessions.values().map(|s| s.keys.len()).sum(),
            sessions: self.sessions.len(),
            applied_index: self.meta.applied,
            max_users: self.meta.limits.max_users as usize,
        }
    }

    /// Index of the last applied command.
    pub fn applied_index(&self) -> u64 {
        self.meta.applied
    }

    /// Whether the cluster was initialized (a node that is joining a cluster is not until it
    /// receives the cluster's state).
    pub fn is_initialized(&self) -> bool {
        self.meta.cluster_uid.is_some()
    }

    /// The cluster's id, once initialized.
    pub fn cluster_uid(&self) -> Option<ObjectUid> {
        self.meta.cluster_uid
    }

    // ----- sessions ------------------------------------------------------------------------

    /// Opens an unauthenticated session.
    pub fn open_session(&mut self) -> Result<SessionId, EngineError> {
        if self.sessions.len() >= self.config.max_sessions {
            return Err(EngineError::TooManySessions {
                limit: self.config.max_sessions,
            });
        }
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                user: None,
                keys: BTreeMap::new(),
                mfa: None,
            },
        );
        Ok(id)
    }

    /// Opens a session as the appliance user, for cluster peers that the node authenticated by
    /// certificate (the AU never logs in with a password).
    pub fn open_appliance_session(&mut self) -> Result<SessionId, EngineError> {
        let au = self
            .users
            .values()
            .find(|u| u.role == Role::ApplianceUser)
            .map(|u| u.id)
            .ok_or(EngineError::NotInitialized)?;
        let id = self.open_session()?;
        if let Some(s) = self.sessions.get_mut(&id) {
            s.user = Some(au);
        }
        Ok(id)
    }

    /// Closes a session, destroying its session keys.
    pub fn close_session(&mut self, session: SessionId) {
        self.sessions.remove(&session);
        self.tokens.close_session(session);
    }

    /// The user and role a session is logged in as.
    pub fn session_user(&self, session: SessionId) -> Result<Option<(UserId, Role)>, EngineError> {
        let caller = self.caller(session)?;
        Ok(caller
            .user
            .and_then(|u| self.users.get(&u))
            .map(|u| (u.id, u.role)))
    }

    pub(crate) fn caller(&self, session: SessionId) -> Result<Caller, EngineError> {
        let s = self
            .sessions
            .get(&session)
            .ok_or(EngineError::UnknownSession(session))?;
        let (user, principal) = match s.user.and_then(|u| self.users.get(&u)) {
            Some(u) => (Some(u.id), Principal::User(u.role)),
            None => (None, Principal::Unauthenticated),
        };
        Ok(Caller {
            session,
            user,
            principal,
        })
    }

    pub(crate) fn authorize(
        &self,
        session: SessionId,
        operation: Operation,
    ) -> Result<Caller, EngineError> {
        let caller = self.caller(session)?;
        if is_permitted(caller.principal, operation) {
            Ok(caller)
        } else if caller.principal == Principal::Unauthenticated {
            Err(EngineError::NotLoggedIn)
        } else {
            Err(EngineError::PermissionDenied {
                operation,
                principal: caller.principal,
            })
        }
    }

    pub(crate) fn user_by_name(&self, name: &str) -> Result<&User, EngineError> {
        let lower = name.to_ascii_lowercase();
        self.users
            .values()
            .find(|u| u.name == lower)
            .ok_or_else(|| EngineError::UserNotFound {
                name: name.to_owned(),
            })
    }

    fn user_info(&self, u: &User) -> UserInfo {
        UserInfo {
            id: u.id,
            name: u.name.clone(),
            role: u.role,
            locked: u.failed_logins >= self.meta.limits.lockout_threshold,
            failed_logins: u.failed_logins,
            built_in: u.role == Role::ApplianceUser,
        }
    }

    pub(crate) fn user_name(&self, id: UserId) -> String {
        self.users
            .get(&id)
            .map(|u| u.name.clone())
            .unwrap_or_else(|| format!("#{id}"))
    }

    pub(crate) fn master(&self) -> &MasterKey {
        &self.master
    }

    /// The crypto officers.
    pub(crate) fn officers(&self) -> impl Iterator<Item = UserId> + '_ {
        self.users
            .values()
            .filter(|u| u.role == Role::CryptoOfficer)
            .map(|u| u.id)
    }

    /// The id of the user called `name`.
    pub(crate) fn user_id(&self, name: &str) -> Result<UserId, EngineError> {
        self.user_by_name(name).map(|u| u.id)
    }

    /// The users associated with token key `handle` (owner and shares).
    pub(crate) fn key_associated(&self, handle: KeyHandle) -> Vec<UserId> {
        self.keys
            .get(&handle)
            .map(|k| {
                let mut users = vec![k.record.owner];
                users.extend(k.record.shared.iter().copied());
                users
            })
            .unwrap_or_default()
    }

    /// Checks that `user` may use token key `handle`.
    pub(crate) fn key_users(&self, handle: KeyHandle, user: UserId) -> Result<(), EngineError> {
        match self.keys.get(&handle) {
            Some(k) if k.visible_to(user) => Ok(()),
            _ => Err(EngineError::KeyNotFound { handle }),
        }
    }

    pub(crate) fn user_role(&self, id: UserId) -> Option<Role> {
        self.users.get(&id).map(|u| u.role)
    }

    /// The name and role of the user called `name` (case-insensitively).
    pub(crate) fn find_user(&self, name: &str) -> Option<(String, Role)> {
        self.user_by_name(name)
            .ok()
            .map(|u| (u.name.clone(), u.role))
    }

    // ----- cluster and users ------------------------------------------------------------------

    /// Prepares the command that initializes a new cluster: its id, the PRECO (`admin`) with
    /// the given one-time password, and the appliance user.
    pub fn initialize(
        &self,
        preco_password: &Password,
        now: Timestamp,
    ) -> Result<Command, EngineError> {
        if self.meta.cluster_uid.is_some() {
            return Err(EngineError::AlreadyInitialized);
        }
        preco_password.check_policy()?;
        let preco_uid = ObjectUid(crypto::random_array()?);
        let hash = PasswordHash::new(preco_password)?;
        let sealed = self
            .master
            .seal_bytes(&preco_uid.0, PASSWORD_AAD, hash.as_phc())?;
        Ok(Command {
            at: now,
            actor: None,
            op: CommandOp::Initialize {
                cluster_uid: ObjectUid(crypto::random_array()?),
                preco: NewUser {
                    uid: preco_uid,
                    name: PRECO_NAME.to_owned(),
                    role: Role::PreCryptoOfficer,
                    password: Some(sealed),
                },
                appliance: NewUser {
                    uid: ObjectUid(crypto::random_array()?),
                    name: APPLIANCE_NAME.to_owned(),
                    role: Role::ApplianceUser,
                    password: None,
                },
                limits: self.config.cluster,
            },
        })
    }

    /// Logs a session in. Success with no earlier failures finishes at once; otherwise the
    /// returned command records the attempt (and finishes the login when applied with this
    /// session as origin).
    ///
    /// This runs the password check (argon2, tens of milliseconds) inside the engine; a driver
    /// that serves other requests meanwhile uses [`Engine::begin_login`], checks the password
    /// with [`LoginTicket::check`] without holding the engine, then [`Engine::finish_login`].
    pub fn login(
        &mut self,
        session: SessionId,
        name: &str,
        password: &Password,
        now: Timestamp,
    ) -> Result<Step<()>, EngineError> {
        let ticket = self.begin_login(session, name, now)?;
        let ok = ticket.check(password);
        self.finish_login(ticket, ok, now)
    }

    /// First half of a login: checks the session and the user's lockout, and counts the attempt
    /// as a failure at once (until [`Engine::finish_login`]), so that guesses sent in parallel
    /// cannot get past the lockout while their passwords are being checked.
    pub fn begin_login(
        &mut self,
        session: SessionId,
        name: &str,
        now: Timestamp,
    ) -> Result<LoginTicket, EngineError> {
        let caller = self.caller(session)?;
        if caller.user.is_some() {
            return Err(EngineError::AlreadyLoggedIn);
        }
        if self.meta.cluster_uid.is_none() {
            return Err(EngineError::NotInitialized);
        }
        let Ok(user) = self.user_by_name(name) else {
            // Unknown names cost the same as known ones and fail the same way.
            return Ok(LoginTicket {
                session,
                target: None,
            });
        };
        let Some((sealed, hash)) = &user.password else {
            return Err(EngineError::ApplianceLogin);
        };
        let (id, failures, user_name) = (user.id, user.failed_logins, user.name.clone());
        let credential = credential_of(sealed);
        let hash = PasswordHash::from_phc(Zeroizing::new(hash.as_phc().to_vec()))?;
        // Failures prepared here but not applied yet count at once (see above).
        let pending = self.pending_failures.entry(id).or_default();
        pending.retain(|t| t.0.saturating_add(PENDING_FAILURE_MS) > now.0);
        let counted = usize::from(failures).saturating_add(pending.len());
        if counted >= usize::from(self.meta.limits.lockout_threshold) {
            return Err(EngineError::UserLocked {
                name: user_name,
                failures: u8::try_from(counted).unwrap_or(u8::MAX),
            });
        }
        pending.push(now);
        Ok(LoginTicket {
            session,
            target: Some(LoginTarget {
                user: id,
                hash,
                credential,
                reserved_at: now,
            }),
        })
    }

    /// Second half of a login: `password_ok` is what [`LoginTicket::check`] said. A success
    /// with no earlier failures logs the session in at once; otherwise the returned command
    /// records the attempt in the replicated failure count.
    pub fn finish_login(
        &mut self,
        ticket: LoginTicket,
        password_ok: bool,
        now: Timestamp,
    ) -> Result<Step<()>, EngineError> {
        let LoginTicket { session, target } = ticket;
        let Some(target) = target else {
            return Err(EngineError::LoginFailed);
        };
        let id = target.user;
        // Take the attempt's reservation back; a failure puts it back below.
        if let Some(p) = self.pending_failures.get_mut(&id)
            && let Some(at) = p.iter().position(|t| *t == target.reserved_at)
        {
            p.remove(at);
        }
        let caller = self.caller(session)?;
        if caller.user.is_some() {
            return Err(EngineError::AlreadyLoggedIn);
        }
        // The user may have been deleted, or its password changed, while the password was
        // being checked: the attempt was against a credential that no longer exists.
        let Some(user) = self.users.get(&id) else {
            return Err(EngineError::LoginFailed);
        };
        let current = user
            .password
            .as_ref()
            .map(|(sealed, _)| credential_of(sealed));
        if current != Some(target.credential) {
            return Err(EngineError::LoginFailed);
        }
        let failures = user.failed_logins;
        let pending = self.pending_failures.entry(id).or_default();
        pending.retain(|t| t.0.saturating_add(PENDING_FAILURE_MS) > now.0);
        if password_ok && failures == 0 && pending.is_empty() {
            self.log_in(session, id, now);
            return Ok(Step::Done(()));
        }
        if !password_ok {
            pending.push(now);
        }
        Ok(Step::Replicate(Command {
            at: now,
            actor: Some(id),
            op: CommandOp::LoginAttempt {
                user: id,
                success: password_ok,
                credential: target.credential,
            },
        }))
    }

    /// Logs `session` in as `user` once its password was right: at once, or, for a user with
    /// MFA, after the signature of a challenge ([`Engine::finish_mfa`]).
    fn log_in(&mut self, session: SessionId, user: UserId, now: Timestamp) {
        let challenge = self.mfa_key(user).is_some().then(|| {
            // Unpredictable without the master key, and no randomness: this also runs when a
            // replicated login attempt is applied.
            let mut seed = session.0.to_be_bytes().to_vec();
            seed.extend_from_slice(&user.0.to_be_bytes());
            seed.extend_from_slice(&now.0.to_be_bytes());
            seed.extend_from_slice(&self.meta.applied.to_be_bytes());
            let nonce = hex::encode(self.master.record_tag(b"sealgate mfa challenge", &seed));
            let cluster = self
                .meta
                .cluster_uid
                .map(|u| u.to_string())
                .unwrap_or_default();
            format!(
                "sealgate mfa challenge v1\ncluster={cluster}\nuser={}\nnonce={nonce}\n",
                self.user_name(user)
            )
            .into_bytes()
        });
        if let Some(s) = self.sessions.get_mut(&session) {
            match challenge {
                None => s.user = Some(user),
                Some(challenge) => {
                    s.mfa = Some(MfaPending {
                        user,
                        challenge,
                        expires: Timestamp(now.0.saturating_add(MFA_LIFETIME_MS)),
                    });
                }
            }
        }
    }

    /// The challenge a login with MFA waits to have signed, if `session` has one.
    pub fn mfa_challenge(&self, session: SessionId) -> Option<Vec<u8>> {
        self.sessions
            .get(&session)
            .and_then(|s| s.mfa.as_ref())
            .map(|m| m.challenge.clone())
    }

    /// Second half of a login with MFA: `signature` is the RSA PKCS#1 v1.5 SHA-256 signature
    /// of the session's challenge with the user's registered key. A good one logs the session
    /// in; a bad or late one ends the attempt and counts as a failed login (the returned
    /// command), like a wrong password.
    pub fn finish_mfa(
        &mut self,
        session: SessionId,
        signature: &[u8],
        now: Timestamp,
    ) -> Result<Step<()>, EngineError> {
        let pending = self
            .sessions
            .get_mut(&session)
            .ok_or(EngineError::UnknownSession(session))?
            .mfa
            .take()
            .ok_or(EngineError::InvalidInput {
                what: "MFA signature",
                reason: "no login on this session is waiting for one",
            })?;
        let user = pending.user;
        let key = self.mfa_key(user).map(<[u8]>::to_vec);
        let good = pending.expires.0 > now.0
            && key.is_some_and(|k| crate::quorum::signed_by(&k, &pending.challenge, signature));
        if good {
            if let Some(s) = self.sessions.get_mut(&session) {
                s.user = Some(user);
            }
            return Ok(Step::Done(()));
        }
        let credential = self
            .users
            .get(&user)
            .and_then(|u| u.password.as_ref())
            .map(|(sealed, _)| credential_of(sealed))
            .ok_or(EngineError::LoginFailed)?;
        self.pending_failures.entry(user).or_default().push(now);
        Ok(Step::Replicate(Command {
            at: now,
            actor: Some(user),
            op: CommandOp::LoginAttempt {
                user,
                success: false,
                credential,
            },
        }))
    }

    /// Logs a session out and destroys its session keys.
    pub fn logout(&mut self, session: SessionId) -> Result<(), EngineError> {
        self.authorize(session, Operation::Logout)?;
        if let Some(s) = self.sessions.get_mut(&session) {
            s.user = None;
            s.keys.clear();
        }
        // A session's tokens end with its login.
        self.tokens.close_session(session);
        Ok(())
    }

    /// Basic cluster information (no login needed).
    pub fn info(&self, session: SessionId) -> Result<ClusterInfo, EngineError> {
        self.authorize(session, Operation::GetInfo)?;
        Ok(ClusterInfo {
            cluster_uid: self.meta.cluster_uid,
            initialized: self.meta.cluster_uid.is_some(),
            activated: self.meta.activated,
            users: self.users.len(),
            token_keys: self.keys.len(),
            applied_index: self.meta.applied,
        })
    }

    /// Every user with role and lock state (no login needed, as in CloudHSM).
    pub fn list_users(&self, session: SessionId) -> Result<Vec<UserInfo>, EngineError> {
        self.authorize(session, Operation::ListUsers)?;
        Ok(self.users.values().map(|u| self.user_info(u)).collect())
    }

    /// Activation: the logged-in PRECO sets its password and becomes the first crypto officer.
    pub fn activate(
        &self,
        session: SessionId,
        new_password: &Password,
        now: Timestamp,
    ) -> Result<Command, EngineError> {
        let caller = self.authorize(session, Operation::Activate)?;
        let user = self
            .users
            .get(&caller.user()?)
            .ok_or(EngineError::NotLoggedIn)?;
        new_password.check_policy()?;
        let hash = PasswordHash::new(new_password)?;
        let password = self
            .master
            .seal_bytes(&user.uid.0, PASSWORD_AAD, hash.as_phc())?;
        Ok(Command {
            at: now,
            actor: Some(user.id),
            op: CommandOp::Activate { password },
        })
    }

    /// Creates a crypto officer or crypto user.
    pub fn create_user(
        &self,
        session: SessionId,
        name: &str,
        role: Role,
        password: &Password,
        now: Timestamp,
    ) -> Result<Command, EngineError> {
        let caller = self.authorize(session, Operation::CreateUser)?;
        self.require_admin_quorum(session, caller.role(), QuorumService::User)?;
        if !matches!(role, Role::CryptoOfficer | Role::CryptoUser) {
            return Err(EngineError::InvalidRole);
        }
        let name = normalize_user_name(name)?;
        if self.users.values().any(|u| u.name == name) {
            return Err(EngineError::UserExists { name });
        }
        if self.users.len() >= self.meta.limits.max_users as usize {
            return Err(EngineError::LimitReached {
                what: "users",
                limit: self.meta.limits.max_users as usize,
            });
        }
        password.check_policy()?;
        let uid = ObjectUid(crypto::random_array()?);
        let hash = PasswordHash::new(password)?;
        let sealed = self
            .master
            .seal_bytes(&uid.0, PASSWORD_AAD, hash.as_phc())?;
        Ok(Command {
            at: now,
            actor: caller.user,
            op: CommandOp::CreateUser(NewUser {
                uid,
                name,
                role,
                password: Some(sealed),
            }),
        })
    }

    /// Deletes a user (not oneself, not the last CO, not a CU that owns keys).
    pub fn delete_user(
        &self,
        session: SessionId,
        name: &str,
        now: Timestamp,
    ) -> Result<Command, EngineError> {
        let caller = self.authorize(session, Operation::DeleteUser)?;
        self.require_admin_quorum(session, caller.role(), QuorumService::User)?;
        let target = self.user_by_name(name)?;
        self.check_delete_user(caller.user()?, target.id)?;
        Ok(Command {
            at: now,
            actor: caller.user,
            op: CommandOp::DeleteUser { user: target.id },
        })
    }

    fn check_delete_user(&self, actor: UserId, target: UserId) -> Result<(), EngineError> {
        let t = self
            .users
            .get(&target)
            .ok_or_else(|| EngineError::UserNotFound {
                name: format!("#{target}"),
            })?;
        if t.id == actor {
            return Err(EngineError::CannotDeleteSelf);
        }
        if t.role == Role::ApplianceUser {
            return Err(EngineError::BuiltInUser {
                name: t.name.clone(),
            });
        }
        if t.role == Role::CryptoOfficer
            && self
                .users
                .values()
                .filter(|u| u.role == Role::CryptoOfficer)
                .count()
                <= 1
        {
            return Err(EngineError::LastCryptoOfficer {
                name: t.name.clone(),
            });
        }
        let owned = self
            .keys
            .values()
            .filter(|k| k.record.owner == t.id)
            .count();
        if owned > 0 {
            return Err(EngineError::UserOwnsKeys {
                name: t.name.clone(),
                count: owned,
            });
        }
        Ok(())
    }

    /// Sets a password: one's own (any logged-in user but the PRECO, who activates instead), or
    /// any user's as a crypto officer, which also unlocks a locked user.
    pub fn change_password(
        &self,
        session: SessionId,
        name: &str,
        new_password: &Password,
        now: Timestamp,
    ) -> Result<Command, EngineError> {
        let caller = self.caller(session)?;
        let actor = caller.user()?;
        // Decide own-or-other by name before looking the target up, so that a caller who may
        // not reset passwords learns nothing about which users exist.
        let own = self
            .users
            .get(&actor)
            .is_some_and(|u| u.name == name.to_ascii_lowercase());
        let op = if own {
            Operation::ChangeOwnPassword
        } else {
            Operation::ChangeAnyPassword
        };
        let checked = self.authorize(session, op)?;
        self.require_admin_quorum(session, checked.role(), QuorumService::User)?;
        let target = self.user_by_name(name)?;
        if target.role == Role::ApplianceUser {
            return Err(EngineError::BuiltInUser {
                name: target.name.clone(),
            });
        }
        new_password.check_policy()?;
        let hash = PasswordHash::new(new_password)?;
        let password = self
            .master
            .seal_bytes(&target.uid.0, PASSWORD_AAD, hash.as_phc())?;
        Ok(Command {
            at: now,
            actor: Some(actor),
            op: CommandOp::SetPassword {
                user: target.id,
                password,
            },
        })
    }

    // ----- keys: creation -----------------------------------------------------------------

    fn check_key_room(
        &self,
        session: SessionId,
        token: bool,
        count: usize,
    ) -> Result<(), EngineError> {
        if token {
            if self.keys.len() + count > self.meta.limits.max_token_keys as usize {
                return Err(EngineError::LimitReached {
                    what: "token keys",
                    limit: self.meta.limits.max_token_keys as usize,
                });
            }
        } else {
            let n = self.sessions.get(&session).map_or(0, |s| s.keys.len());
            if n + count > self.config.max_session_keys {
                return Err(EngineError::LimitReached {
                    what: "session keys per session",
                    limit: self.config.max_session_keys,
                });
            }
        }
        Ok(())
    }

    /// Seals the material of new objects and either stores them in the session (session keys)
    /// or returns the command that creates them (token keys).
    fn create_objects(
        &mut self,
        caller: Caller,
        objects: Vec<(KeyAttributes, Option<PublicKey>, Option<KeyMaterial>)>,
        now: Timestamp,
    ) -> Result<Step<Vec<KeyHandle>>, EngineError> {
        let user = caller.user()?;
        let token = objects.first().is_some_and(|(a, _, _)| a.token);
        if objects.iter().any(|(a, _, _)| a.token != token) {
            return Err(EngineError::InvalidInput {
                what: "template",
                reason: "both halves of a key pair must be token keys or both session keys",
            });
        }
        self.check_key_room(caller.session, token, objects.len())?;
        // The two halves of a pair name each other.
        let mut uids = Vec::with_capacity(objects.len());
        for _ in 0..objects.len() {
            uids.push(ObjectUid(crypto::random_array()?));
        }
        let partner_of = |i: usize| -> Option<ObjectUid> {
            if uids.len() == 2 {
                uids.get(1 - i).copied()
            } else {
                None
            }
        };
        let partners: Vec<Option<ObjectUid>> = (0..objects.len()).map(partner_of).collect();
        if token {
            let mut new = Vec::with_capacity(objects.len());
            for (((attrs, public, material), uid), partner) in
                objects.into_iter().zip(uids.iter().copied()).zip(partners)
            {
                let sealed = match &material {
                    Some(m) => Some(self.master.seal_key(m, &uid.0, &key_aad(&attrs))?),
                    None => None,
                };
                new.push(NewKeyObject {
                    uid,
                    attrs,
                    public_der: public.map(|p| p.to_der().to_vec()),
                    sealed,
                    partner,
                });
            }
            return Ok(Step::Replicate(Command {
                at: now,
                actor: Some(user),
                op: CommandOp::CreateKeys { objects: new },
            }));
        }
        let mut handles = Vec::with_capacity(objects.len());
        let mut created = Vec::with_capacity(objects.len());
        for (((attrs, public, material), uid), partner) in
            objects.into_iter().zip(uids.iter().copied()).zip(partners)
        {
            let handle = KeyHandle(KeyHandle::SESSION_BIT | self.next_session_handle);
            self.next_session_handle += 1;
            let record = KeyRecord {
                handle,
                uid,
                owner: user,
                shared: Vec::new(),
                attrs,
                public_der: public.as_ref().map(|p| p.to_der().to_vec()),
                sealed: None,
                partner,
                created_at: now,
            };
            created.push(KeyObject {
                record,
                public,
                material,
            });
            handles.push(handle);
        }
        let s = self
            .sessions
            .get_mut(&caller.session)
            .ok_or(EngineError::UnknownSession(caller.session))?;
        for obj in created {
            s.keys.insert(obj.handle(), obj);
        }
        Ok(Step::Done(handles))
    }

    /// Generates a symmetric key (AES or generic secret).
    pub fn generate_key(
        &mut self,
        session: SessionId,
        spec: KeySpec,
        template: &KeyTemplate,
        now: Timestamp,
    ) -> Result<Step<Vec<KeyHandle>>, EngineError> {
        let caller = self.authorize(session, Operation::GenerateKey)?;
        if spec.key_type().is_asymmetric() {
            return Err(EngineError::InvalidInput {
                what: "key spec",
                reason: "asymmetric keys are generated as key pairs",
            });
        }
        // Check the template before spending time on generation.
        KeyAttributes::from_template(KeyClass::SecretKey, spec, true, template, None)?;
        let material = KeyMaterial::generate(spec)?;
        let KeyMaterial::Secret(secret) = &material else {
            return Err(EngineError::Crypto(CryptoError::Internal));
        };
        let attrs = KeyAttributes::from_template(
            KeyClass::SecretKey,
            spec,
            true,
            template,
            secret.check_value(),
        )?;
        self.create_objects(caller, vec![(attrs, None, Some(material))], now)
    }

    /// Generates a key pair (RSA, EC or Ed25519). Handles come back public first.
    pub fn generate_key_pair(
        &mut self,
        session: SessionId,
        spec: KeySpec,
        public_template: &KeyTemplate,
        private_template: &KeyTemplate,
        now: Timestamp,
    ) -> Result<Step<Vec<KeyHandle>>, EngineError> {
        let caller = self.authorize(session, Operation::GenerateKey)?;
        if !spec.key_type().is_asymmetric() {
            return Err(EngineError::InvalidInput {
                what: "key spec",
                reason: "symmetric keys are generated singly",
            });
        }
        let public_token = public_template.token.or(private_template.token);
        let public_template = KeyTemplate {
            token: public_token,
            ..public_template.clone()
        };
        KeyAttributes::from_template(KeyClass::PublicKey, spec, true, &public_template, None)?;
        KeyAttributes::from_template(KeyClass::PrivateKey, spec, true, private_template, None)?;
        let material = KeyMaterial::generate(spec)?;
        let KeyMaterial::Private(private) = &material else {
            return Err(EngineError::Crypto(CryptoError::Internal));
        };
        let public = private.public_key().clone();
        let kcv = Some(public.check_value());
        let pub_attrs =
            KeyAttributes::from_template(KeyClass::PublicKey, spec, true, &public_template, kcv)?;
        let priv_attrs =
            KeyAttributes::from_template(KeyClass::PrivateKey, spec, true, private_template, kcv)?;
        self.create_objects(
            caller,
            vec![
                (pub_attrs, Some(public.clone()), None),
                (priv_attrs, Some(public), Some(material)),
            ],
            now,
        )
    }

    /// Imports a public key (DER SubjectPublicKeyInfo) in clear.
    pub fn import_public_key(
        &mut self,
        session: SessionId,
        der: &[u8],
        template: &KeyTemplate,
        now: Timestamp,
    ) -> Result<Step<Vec<KeyHandle>>, EngineError> {
        let caller = self.authorize(session, Operation::ImportPublicKey)?;
        let public = PublicKey::from_der(der)?;
        let attrs = KeyAttributes::from_template(
            KeyClass::PublicKey,
            public.spec(),
            false,
            template,
            Some(public.check_value()),
        )?;
        self.create_objects(caller, vec![(attrs, Some(public), None)], now)
    }

    /// Unwraps (imports) a key: `wrapped` is decrypted with the unwrapping key inside the HSM
    /// and becomes a new key object of `key_type` owned by the caller.
    #[allow(clippy::too_many_arguments)]
    pub fn unwrap_key(
        &mut self,
        session: SessionId,
        unwrapping: KeyHandle,
        mechanism: WrapMechanism,
        wrapped: &[u8],
        key_type: KeyType,
        template: &KeyTemplate,
        now: Timestamp,
    ) -> Result<Step<Vec<KeyHandle>>, EngineError> {
        let caller = self.authorize(session, Operation::UnwrapKey)?;
        let class = if key_type.is_asymmetric() {
            KeyClass::PrivateKey
        } else {
            KeyClass::SecretKey
        };
        let key = self.usable_key(caller, unwrapping)?;
        self.require_key_quorum(session, QuorumService::KeyManagement, unwrapping)?;
        key.require(Attribute::Unwrap, key.attrs().unwrap)?;
        let by_trusted_key = key.attrs().trusted;
        let unwrapping_key = match &key.material {
            Some(KeyMaterial::Secret(s)) => UnwrappingKey::Secret(s),
            Some(KeyMaterial::Private(p)) => UnwrappingKey::Private(p),
            None => return Err(key.wrong_kind()),
        };
        let material = crypto::unwrap_key(
            mechanism,
            unwrapping_key,
            wrapped,
            UnwrapTarget { key_type },
        )?;
        let (kcv, public) = match &material {
            KeyMaterial::Private(p) => (
                Some(p.public_key().check_value()),
                Some(p.public_key().clone()),
            ),
            KeyMaterial::Secret(s) => (s.check_value(), None),
        };
        let mut attrs = KeyAttributes::from_template(class, material.spec(), false, template, kcv)?;
        // The key existed outside this HSM.
        attrs.never_extractable = false;
        attrs.always_sensitive = false;
        // What a trusted key unwraps may have been a wrap-with-trusted key: the copy stays
        // bound to trusted keys, so unwrapping cannot launder that attribute away.
        if by_trusted_key {
            attrs.wrap_with_trusted = true;
        }
        self.create_objects(caller, vec![(attrs, public, Some(material))], now)
    }

    /// Derives a new secret key from a secret key with `derive`.
    #[allow(clippy::too_many_arguments)]
    pub fn derive_key(
        &mut self,
        session: SessionId,
        base: KeyHandle,
        mechanism: &KdfMechanism,
        spec: KeySpec,
        template: &KeyTemplate,
        now: Timestamp,
    ) -> Result<Step<Vec<KeyHandle>>, EngineError> {
        let caller = self.authorize(session, Operation::DeriveKey)?;
        let key = self.usable_key(caller, base)?;
        key.require(Attribute::Derive, key.attrs().derive)?;
        let Some(KeyMaterial::Secret(secret)) = &key.material else {
            return Err(key.wrong_kind());
        };
        let (base_never_extractable, base_always_sensitive) =
            (key.attrs().never_extractable, key.attrs().always_sensitive);
        let base_extractable = key.attrs().extractable;
        let base_wrap_with_trusted = key.attrs().wrap_with_trusted;
        let by_owner = Some(key.record.owner) == caller.user;
        // Deriving is a use of the base key. What it makes may leave the HSM only if the base
        // key itself may, and only when its owner derives it: a user the base key is shared
        // with, or anyone deriving from a non-extractable key, gets a non-extractable result.
        if template.extractable == Some(true) && !(base_extractable && by_owner) {
            return Err(EngineError::AttributeChangeRefused {
                attribute: Attribute::Extractable,
                reason: "a key derived from a non-extractable key, or by a user the base key is \
                         shared with, cannot be extractable",
            });
        }
        let derived = crypto::derive_key(secret, mechanism, spec)?;
        let mut attrs = KeyAttributes::from_template(
            KeyClass::SecretKey,
            spec,
            false,
            template,
            derived.check_value(),
        )?;
        attrs.never_extractable = base_never_extractable && !attrs.extractable;
        attrs.always_sensitive = base_always_sensitive;
        attrs.wrap_with_trusted |= base_wrap_with_trusted;
        self.create_objects(
            caller,
            vec![(attrs, None, Some(KeyMaterial::Secret(derived)))],
            now,
        )
    }

    // ----- keys: lookup and management -------------------------------------------------------

    fn find(&self, caller: Caller, handle: KeyHandle) -> Option<&KeyObject> {
        if handle.is_session() {
            self.sessions.get(&caller.session)?.keys.get(&handle)
        } else {
            self.keys.get(&handle)
        }
    }

    /// A key the caller may use: owned or shared with it.
    fn usable_key(&self, caller: Caller, handle: KeyHandle) -> Result<&KeyObject, EngineError> {
        let user = caller.user()?;
        match self.find(caller, handle) {
            Some(k) if k.visible_to(user) => Ok(k),
            _ => Err(EngineError::KeyNotFound { handle }),
        }
    }

    /// A key the caller owns.
    fn owned_key(&self, caller: Caller, handle: KeyHandle) -> Result<&KeyObject, EngineError> {
        let key = self.usable_key(caller, handle)?;
        if key.record.owner != caller.user()? {
            return Err(EngineError::NotKeyOwner { handle });
        }
        Ok(key)
    }

    fn key_info(&self, k: &KeyObject) -> KeyInfo {
        KeyInfo {
            handle: k.handle(),
            uid: k.record.uid,
            owner: k.record.owner,
            owner_name: self.user_name(k.record.owner),
            shared_with: k
                .record
                .shared
                .iter()
                .map(|u| (*u, self.user_name(*u)))
                .collect(),
            attributes: k.record.attrs.clone(),
        }
    }

    /// Keys matching `filter`: a crypto user sees the keys it owns or that are shared with it;
    /// a crypto officer sees every token key's metadata.
    pub fn list_keys(
        &self,
        session: SessionId,
        filter: &KeyFilter,
    ) -> Result<Vec<KeyInfo>, EngineError> {
        let caller = self.authorize(session, Operation::ListKeys)?;
        let user = caller.user()?;
        let officer = caller.principal == Principal::User(Role::CryptoOfficer);
        let session_keys = self
            .sessions
            .get(&session)
            .into_iter()
            .flat_map(|s| s.keys.values());
        Ok(self
            .keys
            .values()
            .chain(session_keys)
            .filter(|k| officer || k.visible_to(user))
            .filter(|k| filter.matches(k.attrs()))
            .map(|k| self.key_info(k))
            .collect())
    }

    /// One key's metadata.
    pub fn get_key(&self, session: SessionId, handle: KeyHandle) -> Result<KeyInfo, EngineError> {
        let caller = self.authorize(session, Operation::ListKeys)?;
        let key = if caller.principal == Principal::User(Role::CryptoOfficer) {
            self.keys
                .get(&handle)
                .ok_or(EngineError::KeyNotFound { handle })?
        } else {
            self.usable_key(caller, handle)?
        };
        Ok(self.key_info(key))
    }

    /// The public key of a public or private key object, for export as DER or PEM.
    pub fn export_public_key(
        &self,
        session: SessionId,
        handle: KeyHandle,
    ) -> Result<PublicKey, EngineError> {
        let caller = self.authorize(session, Operation::ExportPublicKey)?;
        let key = self.usable_key(caller, handle)?;
        key.public.clone().ok_or_else(|| key.wrong_kind())
    }

    /// Changes attributes. `trusted` needs a crypto officer; everything else the owner.
    pub fn set_attributes(
        &mut self,
        session: SessionId,
        handle: KeyHandle,
        changes: &[AttributeChange],
        now: Timestamp,
    ) -> Result<Step<()>, EngineError> {
        if changes.is_empty() {
            return Err(EngineError::InvalidInput {
                what: "attribute changes",
                reason: "none given",
            });
        }
        let trusted = changes.iter().any(|c| c.attribute() == Attribute::Trusted);
        if trusted && changes.len() > 1 {
            return Err(EngineError::InvalidInput {
                what: "attribute changes",
                reason: "set trusted on its own",
            });
        }
        let op = if trusted {
            Operation::SetTrusted
        } else {
            Operation::SetAttribute
        };
        let caller = self.authorize(session, op)?;
        let role = match caller.principal {
            Principal::User(r) => r,
            Principal::Unauthenticated => return Err(EngineError::NotLoggedIn),
        };
        let key = if trusted {
            self.keys
                .get(&handle)
                .ok_or(EngineError::KeyNotFound { handle })?
        } else {
            self.owned_key(caller, handle)?
        };
        if !trusted {
            self.require_key_quorum(session, QuorumService::KeyManagement, handle)?;
        }
        let mut attrs = key.attrs().clone();
        for change in changes {
            change.check_form()?;
            attrs.check_change(change, role)?;
            attrs.apply_change(change);
        }
        if handle.is_session() {
            if let Some(obj) = self
                .sessions
                .get_mut(&session)
                .and_then(|s| s.keys.get_mut(&handle))
            {
                obj.record.attrs = attrs;
            }
            return Ok(Step::Done(()));
        }
        Ok(Step::Replicate(Command {
            at: now,
            actor: caller.user,
            op: CommandOp::SetAttributes {
                handle,
                changes: changes.to_vec(),
            },
        }))
    }

    fn share_command(
        &self,
        session: SessionId,
        handle: KeyHandle,
        user_name: &str,
        share: bool,
        now: Timestamp,
    ) -> Result<Command, EngineError> {
        let op = if share {
            Operation::ShareKey
        } else {
            Operation::UnshareKey
        };
        let caller = self.authorize(session, op)?;
        let key = self.owned_key(caller, handle)?;
        if handle.is_session() {
            return Err(EngineError::ShareRefused {
                handle,
                reason: "session keys cannot be shared",
            });
        }
        self.require_key_quorum(session, QuorumService::KeyManagement, handle)?;
        let target = self.user_by_name(user_name)?;
        check_share(key, target.id, target.role, share)?;
        let q = self.key_quorum(handle);
        let associated = 1 + key.record.shared.len();
        if !share && usize::from(q.usage.max(q.management)) >= associated {
            return Err(EngineError::Quorum(format!(
                "unsharing would leave key {handle} fewer users ({}) than its quorum value ({})",
                associated - 1,
                q.usage.max(q.management)
            )));
        }
        let user = target.id;
        let op = if share {
            CommandOp::Share { handle, user }
        } else {
            CommandOp::Unshare { handle, user }
        };
        Ok(Command {
            at: now,
            actor: caller.user,
            op,
        })
    }

    /// Shares a key with another crypto user, who may then use (not manage) it.
    pub fn share_key(
        &self,
        session: SessionId,
        handle: KeyHandle,
        user_name: &str,
        now: Timestamp,
    ) -> Result<Command, EngineError> {
        self.share_command(session, handle, user_name, true, now)
    }

    /// Stops sharing a key.
    pub fn unshare_key(
        &self,
        session: SessionId,
        handle: KeyHandle,
        user_name: &str,
        now: Timestamp,
    ) -> Result<Command, EngineError> {
        self.share_command(session, handle, user_name, false, now)
    }

    /// Deletes a key (owner only; the key must be destroyable).
    pub fn delete_key(
        &mut self,
        session: SessionId,
        handle: KeyHandle,
        now: Timestamp,
    ) -> Result<Step<()>, EngineError> {
        let caller = self.authorize(session, Operation::DeleteKey)?;
        let key = self.owned_key(caller, handle)?;
        if !key.attrs().destroyable {
            return Err(EngineError::NotDestroyable { handle });
        }
        if handle.is_session() {
            if let Some(s) = self.sessions.get_mut(&session) {
                s.keys.remove(&handle);
            }
            return Ok(Step::Done(()));
        }
        Ok(Step::Replicate(Command {
            at: now,
            actor: caller.user,
            op: CommandOp::DeleteKey { handle },
        }))
    }

    /// Exports a key wrapped under another: the only way a private or secret key leaves.
    /// The caller must own the key, the key must be extractable, the wrapping key must allow
    /// `wrap`, and a `wrap-with-trusted` key needs a trusted wrapping key.
    pub fn wrap_key(
        &self,
        session: SessionId,
        wrapping: KeyHandle,
        mechanism: WrapMechanism,
        handle: KeyHandle,
    ) -> Result<Vec<u8>, EngineError> {
        let caller = self.authorize(session, Operation::WrapKey)?;
        let payload = self.owned_key(caller, handle)?;
        self.require_key_quorum(session, QuorumService::KeyManagement, handle)?;
        let wrapper = self.usable_key(caller, wrapping)?;
        let Some(material) = &payload.material else {
            return Err(EngineError::InvalidInput {
                what: "key to wrap",
                reason: "public keys are exported in clear, not wrapped",
            });
        };
        if !payload.attrs().extractable {
            return Err(EngineError::NotExtractable { handle });
        }
        wrapper.require(Attribute::Wrap, wrapper.attrs().wrap)?;
        if payload.attrs().wrap_with_trusted && !wrapper.attrs().trusted {
            return Err(EngineError::WrapWithTrustedRequired { handle, wrapping });
        }
        if wrapping == handle {
            return Err(EngineError::InvalidInput {
                what: "wrapping key",
                reason: "a key cannot wrap itself",
            });
        }
        let wrapping_key = match (&wrapper.material, &wrapper.public) {
            (Some(KeyMaterial::Secret(s)), _) => WrappingKey::Secret(s),
            (None, Some(p)) => WrappingKey::Public(p),
            _ => return Err(wrapper.wrong_kind()),
        };
        Ok(crypto::wrap_key(mechanism, wrapping_key, material)?)
    }

    // ----- clone and sync ---------------------------------------------------------------------

    /// Digests of every user and of the token keys the caller may see.
    pub fn sync_status(&self, session: SessionId) -> Result<SyncStatus, EngineError> {
        let caller = self.authorize(session, Operation::GetSyncStatus)?;
        let all = caller.principal != Principal::User(Role::CryptoUser);
        let user = caller.user()?;
        let mut users = Vec::new();
        for u in self.users.values() {
            users.push((u.id, crypto::digest(HashAlg::Sha256, &encode(&u.record())?)));
        }
        let mut keys = Vec::new();
        for k in self.keys.values().filter(|k| all || k.visible_to(user)) {
            keys.push((
                k.handle(),
                crypto::digest(HashAlg::Sha256, &encode(&k.record)?),
            ));
        }
        Ok(SyncStatus { users, keys })
    }

    /// Extracts a token key as a masked object: its stored record sealed under the cluster's
    /// domain key. A crypto user may extract only keys it owns.
    pub fn extract_masked(
        &self,
        session: SessionId,
        handle: KeyHandle,
    ) -> Result<MaskedObject, EngineError> {
        let caller = self.authorize(session, Operation::ExtractMaskedObject)?;
        let key = if caller.principal == Principal::User(Role::CryptoUser) {
            self.owned_key(caller, handle)?
        } else {
            self.keys
                .get(&handle)
                .ok_or(EngineError::KeyNotFound { handle })?
        };
        if handle.is_session() {
            return Err(EngineError::InvalidInput {
                what: "key",
                reason: "session keys are never extracted",
            });
        }
        let id: [u8; 16] = crypto::random_array()?;
        let sealed = self
            .master
            .seal_bytes(&id, MASKED_AAD, &encode(&key.record)?)?;
        let mut bytes = id.to_vec();
        bytes.extend_from_slice(sealed.as_bytes());
        Ok(MaskedObject(bytes))
    }

    /// Inserts a masked object from this cluster or a clone of it.
    pub fn insert_masked(
        &self,
        session: SessionId,
        masked: &MaskedObject,
        now: Timestamp,
    ) -> Result<Command, EngineError> {
        let caller = self.authorize(session, Operation::InsertMaskedObject)?;
        let record = self.open_masked(masked)?;
        if caller.principal == Principal::User(Role::CryptoUser)
            && Some(record.owner) != caller.user
        {
            return Err(EngineError::NotKeyOwner {
                handle: record.handle,
            });
        }
        self.check_insert(&record)?;
        Ok(Command {
            at: now,
            actor: caller.user,
            op: CommandOp::InsertMasked { record },
        })
    }

    fn open_masked(&self, masked: &MaskedObject) -> Result<KeyRecord, EngineError> {
        let (id, sealed) = masked
            .0
            .split_at_checked(16)
            .ok_or(EngineError::BadMaskedObject)?;
        let id: [u8; 16] = id.try_into().map_err(|_| EngineError::BadMaskedObject)?;
        let bytes = self
            .master
            .unseal_bytes(&SealedBytes::from_stored(sealed.to_vec()), &id, MASKED_AAD)
            .map_err(|_| EngineError::BadMaskedObject)?;
        let record: KeyRecord =
            postcard::from_bytes(&bytes).map_err(|_| EngineError::BadMaskedObject)?;
        // The material must open too, or the object is useless.
        open_key(&self.master, record.clone()).map_err(|_| EngineError::BadMaskedObject)?;
        Ok(record)
    }

    /// The other half of a token key pair, if it still exists.
    fn partner_of(&self, record: &KeyRecord) -> Option<&KeyObject> {
        let partner = record.partner?;
        self.key_uids
            .get(&partner)
            .and_then(|handle| self.keys.get(handle))
    }

    fn uid_taken(&self, uid: ObjectUid) -> bool {
        self.tombstones.contains(&uid) || self.key_uids.contains_key(&uid)
    }

    /// Adds a token key (and its unique id to the index).
    fn insert_key(&mut self, obj: KeyObject) -> KeyHandle {
        let handle = obj.handle();
        self.key_uids.insert(obj.record.uid, handle);
        self.keys.insert(handle, obj);
        handle
    }

    /// Removes a token key (and its unique id from the index).
    fn remove_key(&mut self, handle: KeyHandle) {
        if let Some(obj) = self.keys.remove(&handle) {
            self.key_uids.remove(&obj.record.uid);
        }
    }

    fn check_insert(&self, record: &KeyRecord) -> Result<(), EngineError> {
        if self.tombstones.contains(&record.uid) {
            return Err(EngineError::ObjectDeleted);
        }
        if self.key_uids.contains_key(&record.uid) {
            return Err(EngineError::ObjectExists);
        }
        record.attrs.check_new_or_inserted()?;
        match self.users.get(&record.owner) {
            Some(u) if u.role == Role::CryptoUser => {}
            _ => {
                return Err(EngineError::InvalidInput {
                    what: "masked object",
                    reason: "its owner is not a crypto user of this cluster",
                });
            }
        }
        if self.keys.len() >= self.meta.limits.max_token_keys as usize {
            return Err(EngineError::LimitReached {
                what: "token keys",
                limit: self.meta.limits.max_token_keys as usize,
            });
        }
        Ok(())
    }

    // ----- crypto -------------------------------------------------------------------------

    fn check_data(&self, data: &[u8]) -> Result<(), EngineError> {
        if data.len() > self.config.max_data_len {
            return Err(EngineError::LimitReached {
                what: "bytes of input to one operation",
                limit: self.config.max_data_len,
            });
        }
        Ok(())
    }

    /// Signs `data` (hashing inside), or computes an HMAC with a generic secret.
    pub fn sign(
        &self,
        session: SessionId,
        handle: KeyHandle,
        mechanism: SignMechanism,
        data: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        let op = if matches!(mechanism, SignMechanism::Hmac(_)) {
            Operation::Hmac
        } else {
            Operation::Sign
        };
        let caller = self.authorize(session, op)?;
        self.check_data(data)?;
        let key = self.usable_key(caller, handle)?;
        key.require(Attribute::Sign, key.attrs().sign)?;
        self.require_key_quorum(session, QuorumService::KeyUsage, handle)?;
        match &key.material {
            Some(KeyMaterial::Private(p)) => Ok(p.sign(mechanism, data)?),
            Some(KeyMaterial::Secret(s)) => Ok(s.sign(mechanism, data)?),
            None => Err(key.wrong_kind()),
        }
    }

    /// Verifies a signature with a public key, or an HMAC with a generic secret.
    pub fn verify(
        &self,
        session: SessionId,
        handle: KeyHandle,
        mechanism: SignMechanism,
        data: &[u8],
        signature: &[u8],
    ) -> Result<(), EngineError> {
        let op = if matches!(mechanism, SignMechanism::Hmac(_)) {
            Operation::Hmac
        } else {
            Operation::Verify
        };
        let caller = self.authorize(session, op)?;
        self.check_data(data)?;
        self.check_data(signature)?;
        let key = self.usable_key(caller, handle)?;
        key.require(Attribute::Verify, key.attrs().verify)?;
        match (&key.material, &key.public) {
            (Some(KeyMaterial::Secret(s)), _) => Ok(s.verify(mechanism, data, signature)?),
            (None, Some(p)) => Ok(p.verify(mechanism, data, signature)?),
            _ => Err(key.wrong_kind()),
        }
    }

    /// Encrypts. For AES-GCM the HSM picks the IV and `aad` is the additional data; for
    /// RSA-OAEP `aad` is the label.
    pub fn encrypt(
        &self,
        session: SessionId,
        handle: KeyHandle,
        mechanism: EncryptMechanism,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        let caller = self.authorize(session, Operation::Encrypt)?;
        self.check_data(plaintext)?;
        self.check_data(aad)?;
        let key = self.usable_key(caller, handle)?;
        key.require(Attribute::Encrypt, key.attrs().encrypt)?;
        match (&key.material, &key.public) {
            (Some(KeyMaterial::Secret(s)), _) => Ok(s.encrypt(mechanism, plaintext, aad)?),
            (None, Some(p)) => Ok(p.encrypt(mechanism, plaintext, label(aad))?),
            _ => Err(key.wrong_kind()),
        }
    }

    /// Decrypts (see [`Engine::encrypt`] for `aad`).
    pub fn decrypt(
        &self,
        session: SessionId,
        handle: KeyHandle,
        mechanism: EncryptMechanism,
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        let caller = self.authorize(session, Operation::Decrypt)?;
        self.check_data(ciphertext)?;
        self.check_data(aad)?;
        let key = self.usable_key(caller, handle)?;
        key.require(Attribute::Decrypt, key.attrs().decrypt)?;
        if key.attrs().trusted && key.attrs().class == KeyClass::PrivateKey {
            // A blob wrapped under the trusted public half must only ever be unwrapped, never
            // read: otherwise wrap-with-trusted keys could be decrypted into clear.
            return Err(EngineError::KeyUsageNotAllowed {
                handle,
                attribute: Attribute::Decrypt,
            });
        }
        let plain = match &key.material {
            Some(KeyMaterial::Secret(s)) => s.decrypt(mechanism, ciphertext, aad)?,
            Some(KeyMaterial::Private(p)) => p.decrypt(mechanism, ciphertext, label(aad))?,
            None => return Err(key.wrong_kind()),
        };
        Ok(plain.to_vec())
    }

    /// Computes a digest.
    pub fn digest(
        &self,
        session: SessionId,
        alg: HashAlg,
        data: &[u8],
    ) -> Result<Vec<u8>, EngineError> {
        self.authorize(session, Operation::Digest)?;
        self.check_data(data)?;
        Ok(crypto::digest(alg, data))
    }

    /// Random bytes (at most 64 KiB).
    pub fn random(&self, session: SessionId, len: usize) -> Result<Vec<u8>, EngineError> {
        self.authorize(session, Operation::Random)?;
        Ok(crypto::random_bytes(len)?)
    }

    // ----- apply --------------------------------------------------------------------------

    /// Applies a command at log position `index`. `origin` is the session that requested it,
    /// on the node where it was requested (none on other replicas).
    ///
    /// Deterministic: the same commands in the same order give the same state on every node.
    /// A refused command changes nothing but the applied index (and, for a failed login, the
    /// user's failure count).
    pub fn apply(&mut self, index: u64, cmd: &Command, origin: Option<SessionId>) -> Applied {
        if index <= self.meta.applied {
            return Applied {
                result: Err(EngineError::AlreadyApplied {
                    index,
                    applied: self.meta.applied,
                }),
                batch: StoreBatch::default(),
            };
        }
        let mut ops = Vec::new();
        let result = self.apply_op(cmd, origin, &mut ops);
        // A refused command writes nothing but the applied index, except a failed login, which
        // writes the user's failure count.
        let keep = result.is_ok() || matches!(cmd.op, CommandOp::LoginAttempt { .. });
        if !keep {
            ops.clear();
        }
        self.meta.applied = index;
        let mut batch = StoreBatch::default();
        for op in ops {
            batch.ops.push(self.seal_row(op));
        }
        match encode(&self.meta) {
            Ok(payload) => {
                let op = StoreOp::Put {
                    table: Table::Meta,
                    key: 0,
                    value: payload,
                };
                batch.ops.push(self.seal_row(op));
            }
            Err(e) => {
                return Applied {
                    result: Err(e),
                    batch,
                };
            }
        }
        Applied { result, batch }
    }

    /// Appends the integrity tag to a row and keeps the rows digest (the meta row, written
    /// last, carries the digest and is not part of it).
    fn seal_row(&mut self, op: StoreOp) -> StoreOp {
        match op {
            StoreOp::Put {
                table,
                key,
                mut value,
            } => {
                let tag = self.master.record_tag(&row_context(table, key), &value);
                if table != Table::Meta {
                    if let Some(old) = self.row_tags.insert((table, key), tag) {
                        xor_into(
                            &mut self.meta.rows_digest,
                            &row_element(&self.master, table, key, &old),
                        );
                    }
                    xor_into(
                        &mut self.meta.rows_digest,
                        &row_element(&self.master, table, key, &tag),
                    );
                }
                value.extend_from_slice(&tag);
                StoreOp::Put { table, key, value }
            }
            StoreOp::Delete { table, key } => {
                if let Some(old) = self.row_tags.remove(&(table, key)) {
                    xor_into(
                        &mut self.meta.rows_digest,
                        &row_element(&self.master, table, key, &old),
                    );
                }
                StoreOp::Delete { table, key }
            }
        }
    }

    fn actor(&self, cmd: &Command, operation: Operation) -> Result<&User, EngineError> {
        let user = cmd
            .actor
            .and_then(|a| self.users.get(&a))
            .ok_or(EngineError::NotLoggedIn)?;
        if is_permitted(Principal::User(user.role), operation) {
            Ok(user)
        } else {
            Err(EngineError::PermissionDenied {
                operation,
                principal: Principal::User(user.role),
            })
        }
    }

    fn put_user(ops: &mut Vec<StoreOp>, user: &User) -> Result<(), EngineError> {
        ops.push(StoreOp::Put {
            table: Table::Users,
            key: u64::from(user.id.0),
            value: encode(&user.record())?,
        });
        Ok(())
    }

    /// Changes a stored user: the new row is encoded (and pushed) before memory changes.
    fn update_user(
        &mut self,
        ops: &mut Vec<StoreOp>,
        id: UserId,
        role: Role,
        failed_logins: u8,
        password: Option<(SealedBytes, PasswordHash)>,
    ) -> Result<(), EngineError> {
        let user = self
            .users
            .get_mut(&id)
            .ok_or(EngineError::Corrupt("updated user is missing"))?;
        let mut record = user.record();
        record.role = role;
        record.failed_logins = failed_logins;
        if let Some((sealed, _)) = &password {
            record.password = Some(sealed.clone());
        }
        ops.push(StoreOp::Put {
            table: Table::Users,
            key: u64::from(id.0),
            value: encode(&record)?,
        });
        user.role = role;
        user.failed_logins = failed_logins;
        if password.is_some() {
            user.password = password;
        }
        Ok(())
    }

    fn put_key(ops: &mut Vec<StoreOp>, record: &KeyRecord) -> Result<(), EngineError> {
        ops.push(StoreOp::Put {
            table: Table::Keys,
            key: record.handle.0,
            value: encode(record)?,
        });
        Ok(())
    }

    fn new_user(&self, id: UserId, new: &NewUser, at: Timestamp) -> Result<User, EngineError> {
        let password = match &new.password {
            Some(sealed) => Some((
                sealed.clone(),
                open_password(&self.master, new.uid, sealed)?,
            )),
            None => None,
        };
        Ok(User {
            id,
            uid: new.uid,
            name: new.name.clone(),
            role: new.role,
            password,
            failed_logins: 0,
            created_at: at,
        })
    }

    /// Creates the keys of a `CreateKeys` command (owned by its actor, shared with `shared`).
    fn create_keys(
        &mut self,
        cmd: &Command,
        objects: &[NewKeyObject],
        shared: &[UserId],
        ops: &mut Vec<StoreOp>,
    ) -> Result<Vec<KeyHandle>, EngineError> {
        let owner = self.actor(cmd, Operation::GenerateKey)?.id;
        if objects.is_empty() || objects.len() > 2 {
            return Err(EngineError::InvalidInput {
                what: "command",
                reason: "creates one key or one key pair",
            });
        }
        if self.keys.len() + objects.len() > self.meta.limits.max_token_keys as usize {
            return Err(EngineError::LimitReached {
                what: "token keys",
                limit: self.meta.limits.max_token_keys as usize,
            });
        }
        let mut created = Vec::with_capacity(objects.len());
        let mut handle = self.meta.next_handle;
        for (i, new) in objects.iter().enumerate() {
            if !new.attrs.token {
                return Err(EngineError::InvalidInput {
                    what: "command",
                    reason: "session keys are not replicated",
                });
            }
            // The creation rules hold for the attributes as carried, too.
            new.attrs.check_new()?;
            let dup_in_command = objects.iter().take(i).any(|o| o.uid == new.uid);
            if dup_in_command || self.uid_taken(new.uid) {
                return Err(EngineError::ObjectExists);
            }
            let record = KeyRecord {
                handle: KeyHandle(handle),
                uid: new.uid,
                owner,
                shared: shared.to_vec(),
                attrs: new.attrs.clone(),
                public_der: new.public_der.clone(),
                sealed: new.sealed.clone(),
                partner: new.partner,
                created_at: cmd.at,
            };
            created.push(open_key(&self.master, record)?);
            handle += 1;
        }
        let mut handles = Vec::with_capacity(created.len());
        for obj in &created {
            Self::put_key(ops, &obj.record)?;
        }
        for obj in created {
            handles.push(self.insert_key(obj));
        }
        self.meta.next_handle = handle;
        Ok(handles)
    }

    fn apply_op(
        &mut self,
        cmd: &Command,
        origin: Option<SessionId>,
        ops: &mut Vec<StoreOp>,
    ) -> Result<Outcome, EngineError> {
        if self.meta.cluster_uid.is_none() && !matches!(cmd.op, CommandOp::Initialize { .. }) {
            return Err(EngineError::NotInitialized);
        }
        match &cmd.op {
            CommandOp::Initialize {
                cluster_uid,
                preco,
                appliance,
                limits,
            } => {
                if self.meta.cluster_uid.is_some() {
                    return Err(EngineError::AlreadyInitialized);
                }
                let first = UserId(self.meta.next_user_id);
                let second = UserId(self.meta.next_user_id + 1);
                let preco = self.new_user(first, preco, cmd.at)?;
                let au = self.new_user(second, appliance, cmd.at)?;
                Self::put_user(ops, &preco)?;
                Self::put_user(ops, &au)?;
                self.users.insert(preco.id, preco);
                self.users.insert(au.id, au);
                self.meta.next_user_id += 2;
                self.meta.cluster_uid = Some(*cluster_uid);
                self.meta.limits = *limits;
                Ok(Outcome::Initialized)
            }
            CommandOp::Activate { password } => {
                if self.meta.activated {
                    return Err(EngineError::AlreadyActivated);
                }
                let actor = self.actor(cmd, Operation::Activate)?;
                let (id, uid) = (actor.id, actor.uid);
                let hash = open_password(&self.master, uid, password)?;
                self.update_user(
                    ops,
                    id,
                    Role::CryptoOfficer,
                    0,
                    Some((password.clone(), hash)),
                )?;
                self.meta.activated = true;
                // Other sessions opened with the one-time password end here; only the session
                // that activated carries on, now as a crypto officer.
                for (sid, s) in &mut self.sessions {
                    if s.user == Some(id) && Some(*sid) != origin {
                        s.user = None;
                        s.keys.clear();
                    }
                }
                Ok(Outcome::Activated)
            }
            CommandOp::CreateUser(new) => {
                self.actor(cmd, Operation::CreateUser)?;
                if !matches!(new.role, Role::CryptoOfficer | Role::CryptoUser) {
                    return Err(EngineError::InvalidRole);
                }
                let name = normalize_user_name(&new.name)?;
                if self.users.values().any(|u| u.name == name) {
                    return Err(EngineError::UserExists { name });
                }
                if self.users.len() >= self.meta.limits.max_users as usize {
                    return Err(EngineError::LimitReached {
                        what: "users",
                        limit: self.meta.limits.max_users as usize,
                    });
                }
                let id = UserId(self.meta.next_user_id);
                let user = self.new_user(id, new, cmd.at)?;
                Self::put_user(ops, &user)?;
                self.users.insert(id, user);
                self.meta.next_user_id += 1;
                Ok(Outcome::UserCreated(id))
            }
            CommandOp::DeleteUser { user } => {
                let actor = self.actor(cmd, Operation::DeleteUser)?.id;
                self.check_delete_user(actor, *user)?;
                // Drop the user from every share list.
                let mut changed = Vec::new();
                for k in self
                    .keys
                    .values()
                    .filter(|k| k.record.shared.contains(user))
                {
                    let mut r = k.record.clone();
                    r.shared.retain(|u| u != user);
                    Self::put_key(ops, &r)?;
                    changed.push(r);
                }
                ops.push(StoreOp::Delete {
                    table: Table::Users,
                    key: u64::from(user.0),
                });
                for r in changed {
                    if let Some(k) = self.keys.get_mut(&r.handle) {
                        k.record = r;
                    }
                }
                self.users.remove(user);
                self.end_sessions_of(*user);
                self.set_user_auth(ops, *user, None, false)?;
                Ok(Outcome::UserDeleted)
            }
            CommandOp::SetPassword { user, password } => {
                let actor = cmd
                    .actor
                    .and_then(|a| self.users.get(&a))
                    .ok_or(EngineError::NotLoggedIn)?;
                let op = if actor.id == *user {
                    Operation::ChangeOwnPassword
                } else {
                    Operation::ChangeAnyPassword
                };
                let actor_id = self.actor(cmd, op)?.id;
                let target = self
                    .users
                    .get(user)
                    .ok_or_else(|| EngineError::UserNotFound {
                        name: format!("#{user}"),
                    })?;
                if target.role == Role::ApplianceUser {
                    return Err(EngineError::BuiltInUser {
                        name: target.name.clone(),
                    });
                }
                let (role, uid) = (target.role, target.uid);
                // Only an officer's reset unlocks; changing one's own password does not.
                let failures = if actor_id == *user {
                    target.failed_logins
                } else {
                    0
                };
                let hash = open_password(&self.master, uid, password)?;
                self.update_user(ops, *user, role, failures, Some((password.clone(), hash)))?;
                if actor_id != *user {
                    // A reset by an officer ends the user's sessions on this node, and drops
                    // the user's MFA and quorum key: how a user who lost the key gets back in.
                    self.end_sessions_of(*user);
                    self.set_user_auth(ops, *user, None, false)?;
                }
                Ok(Outcome::PasswordChanged)
            }
            CommandOp::LoginAttempt {
                user,
                success,
                credential,
            } => {
                if !*success && origin.is_some() {
                    // The failure this node prepared is now in the replicated count.
                    if let Some(p) = self.pending_failures.get_mut(user)
                        && !p.is_empty()
                    {
                        p.remove(0);
                    }
                }
                let threshold = self.meta.limits.lockout_threshold;
                let target = self.users.get(user).ok_or(EngineError::LoginFailed)?;
                let locked_before = target.failed_logins >= threshold;
                let name = target.name.clone();
                let current = target
                    .password
                    .as_ref()
                    .map(|(sealed, _)| credential_of(sealed));
                let role = target.role;
                let failures = if *success {
                    target.failed_logins
                } else {
                    target.failed_logins.saturating_add(1)
                };
                if !*success {
                    self.update_user(ops, *user, role, failures, None)?;
                }
                if locked_before {
                    // Every attempt against a locked user gets the same answer, right password
                    // or not, so a locked account is no oracle.
                    return Err(EngineError::UserLocked { name, failures });
                }
                if !*success {
                    return Err(EngineError::LoginFailed);
                }
                if current != Some(*credential) {
                    // The password changed after this attempt was checked.
                    return Err(EngineError::LoginFailed);
                }
                self.update_user(ops, *user, role, 0, None)?;
                if let Some(o) = origin
                    && let Some(s) = self.sessions.get(&o)
                {
                    match s.user {
                        None => self.log_in(o, *user, cmd.at),
                        Some(u) if u == *user => {}
                        Some(_) => return Err(EngineError::AlreadyLoggedIn),
                    }
                }
                Ok(Outcome::LoggedIn)
            }
            CommandOp::CreateKeys { objects } => {
                let handles = self.create_keys(cmd, objects, &[], ops)?;
                Ok(Outcome::KeysCreated(handles))
            }
            CommandOp::CreateKeysShared {
                objects,
                shared,
                quorum,
            } => {
                for user in shared {
                    if self.users.get(user).map(|u| u.role) != Some(Role::CryptoUser) {
                        return Err(EngineError::UserNotFound {
                            name: format!("#{user}"),
                        });
                    }
                }
                let users = 1 + shared.len();
                if usize::from(quorum.usage.max(quorum.management)) > users {
                    return Err(EngineError::Quorum(
                        "a key's quorum value exceeds the users associated with it".into(),
                    ));
                }
                let handles = self.create_keys(cmd, objects, shared, ops)?;
                for handle in &handles {
                    self.set_key_quorum(ops, *handle, *quorum)?;
                }
                Ok(Outcome::KeysCreated(handles))
            }
            CommandOp::SetUserAuth { .. } | CommandOp::SetQuorumValue { .. } => {
                self.apply_quorum(cmd, ops)
            }
            CommandOp::SetAttributes { handle, changes } => {
                let trusted = changes.iter().any(|c| c.attribute() == Attribute::Trusted);
                let op = if trusted {
                    Operation::SetTrusted
                } else {
                    Operation::SetAttribute
                };
                let actor = self.actor(cmd, op)?;
                let (actor_id, role) = (actor.id, actor.role);
                let key = self
                    .keys
                    .get(handle)
                    .ok_or(EngineError::KeyNotFound { handle: *handle })?;
                if !trusted && key.record.owner != actor_id {
                    return Err(EngineError::NotKeyOwner { handle: *handle });
                }
                let mut record = key.record.clone();
                for change in changes {
                    change.check_form()?;
                    record.attrs.check_change(change, role)?;
                    record.attrs.apply_change(change);
                }
                // Trust covers a whole pair: a blob wrapped under a trusted public key is
                // opened by its private half, which must then be bound like a trusted key.
                let mut partner_record = None;
                if trusted && let Some(partner) = self.partner_of(&key.record) {
                    let mut r = partner.record.clone();
                    for change in changes {
                        r.attrs.check_change(change, role)?;
                        r.attrs.apply_change(change);
                    }
                    partner_record = Some(r);
                }
                Self::put_key(ops, &record)?;
                if let Some(r) = &partner_record {
                    Self::put_key(ops, r)?;
                }
                for r in [Some(record), partner_record].into_iter().flatten() {
                    if let Some(k) = self.keys.get_mut(&r.handle) {
                        k.record = r;
                    }
                }
                Ok(Outcome::AttributesChanged)
            }
            CommandOp::Share { handle, user } | CommandOp::Unshare { handle, user } => {
                let share = matches!(cmd.op, CommandOp::Share { .. });
                let op = if share {
                    Operation::ShareKey
                } else {
                    Operation::UnshareKey
                };
                let actor = self.actor(cmd, op)?.id;
                let key = self
                    .keys
                    .get(handle)
                    .ok_or(EngineError::KeyNotFound { handle: *handle })?;
                if key.record.owner != actor {
                    return Err(EngineError::NotKeyOwner { handle: *handle });
                }
                let target = self
                    .users
                    .get(user)
                    .ok_or_else(|| EngineError::UserNotFound {
                        name: format!("#{user}"),
                    })?;
                check_share(key, target.id, target.role, share)?;
                let mut record = key.record.clone();
                if share {
                    record.shared.push(*user);
                    record.shared.sort();
                } else {
                    record.shared.retain(|u| u != user);
                }
                Self::put_key(ops, &record)?;
                if let Some(k) = self.keys.get_mut(handle) {
                    k.record = record;
                }
                Ok(if share {
                    Outcome::KeyShared
                } else {
                    Outcome::KeyUnshared
                })
            }
            CommandOp::DeleteKey { handle } => {
                let actor = self.actor(cmd, Operation::DeleteKey)?.id;
                let key = self
                    .keys
                    .get(handle)
                    .ok_or(EngineError::KeyNotFound { handle: *handle })?;
                if key.record.owner != actor {
                    return Err(EngineError::NotKeyOwner { handle: *handle });
                }
                if !key.attrs().destroyable {
                    return Err(EngineError::NotDestroyable { handle: *handle });
                }
                // The tombstone keeps a masked copy from bringing the key back.
                let uid = key.record.uid;
                ops.push(StoreOp::Delete {
                    table: Table::Keys,
                    key: handle.0,
                });
                ops.push(StoreOp::Put {
                    table: Table::Tombstones,
                    key: self.meta.next_tombstone,
                    value: encode(&uid)?,
                });
                self.meta.next_tombstone += 1;
                self.tombstones.insert(uid);
                self.remove_key(*handle);
                self.drop_key_quorum(ops, *handle);
                Ok(Outcome::KeyDeleted)
            }
            CommandOp::InsertMasked { record } => {
                let actor = self.actor(cmd, Operation::InsertMaskedObject)?;
                // As when preparing: a crypto user inserts only keys it owns.
                if actor.role == Role::CryptoUser && actor.id != record.owner {
                    return Err(EngineError::NotKeyOwner {
                        handle: record.handle,
                    });
                }
                self.check_insert(record)?;
                let mut record = record.clone();
                record.handle = KeyHandle(self.meta.next_handle);
                let users = &self.users;
                record
                    .shared
                    .retain(|u| users.get(u).is_some_and(|u| u.role == Role::CryptoUser));
                let obj = open_key(&self.master, record)?;
                Self::put_key(ops, &obj.record)?;
                let handle = self.insert_key(obj);
                self.meta.next_handle += 1;
                Ok(Outcome::KeysCreated(vec![handle]))
            }
        }
    }

    /// Logs out (on this node) every session of a user that was deleted or reset.
    fn end_sessions_of(&mut self, user: UserId) {
        for s in self.sessions.values_mut() {
            if s.user == Some(user) {
                s.user = None;
                s.keys.clear();
            }
        }
    }
}

fn label(aad: &[u8]) -> Option<&[u8]> {
    if aad.is_empty() { None } else { Some(aad) }
}

fn check_share(
    key: &KeyObject,
    target: UserId,
    role: Role,
    share: bool,
) -> Result<(), EngineError> {
    let handle = key.handle();
    if share {
        if role != Role::CryptoUser {
            return Err(EngineError::ShareRefused {
                handle,
                reason: "keys are shared with crypto users only",
            });
        }
        if target == key.record.owner {
            return Err(EngineError::ShareRefused {
                handle,
                reason: "the owner already has the key",
            });
        }
        if key.record.shared.contains(&target) {
            return Err(EngineError::ShareRefused {
                handle,
                reason: "already shared with that user",
            });
        }
    } else if !key.record.shared.contains(&target) {
        return Err(EngineError::ShareRefused {
            handle,
            reason: "not shared with that user",
        });
    }
    Ok(())
}
