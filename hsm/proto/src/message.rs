//! Requests and replies: one request per engine operation, plus hello and health.
//!
//! Attributes travel by their CloudHSM names as text (`label`, `sign`, `extractable`, …) so the
//! protocol does not duplicate the engine's attribute rules; the node parses and checks them.

use crate::types::{
    EncryptMechanism, HashAlg, KdfMechanism, KeySpec, KeyType, Role, Secret, SignMechanism,
    WrapMechanism,
};
use serde::{Deserialize, Serialize};

/// A `name=value` key attribute (CloudHSM's names, e.g. `label`, `sign`, `extractable`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeValue {
    /// Attribute name.
    pub name: String,
    /// Value as text (`true`/`false` for flags).
    pub value: String,
}

impl AttributeValue {
    /// `name=value`.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// The first request on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Oldest protocol version the client speaks.
    pub min_version: u16,
    /// Newest protocol version the client speaks.
    pub max_version: u16,
    /// Free text naming the client (for the node's log).
    pub client: String,
}

impl Hello {
    /// A hello for the versions this build speaks.
    pub fn current(client: impl Into<String>) -> Self {
        Self {
            min_version: crate::MIN_VERSION,
            max_version: crate::VERSION,
            client: client.into(),
        }
    }
}

/// The node's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both sides now speak.
    pub version: u16,
    /// The node's id in its cluster.
    pub node_id: u32,
    /// The cluster's id (hex), empty before initialization.
    pub cluster_id: String,
    /// Largest frame the node accepts.
    pub max_frame_len: u32,
    /// Most requests in flight the node accepts on this connection.
    pub max_in_flight: u32,
}

/// A node's health, answered without a login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The node's id.
    pub node_id: u32,
    /// How far this node has applied the cluster's log (raft index).
    pub applied_index: u64,
    /// Open sessions.
    pub sessions: u32,
    /// Open client connections.
    pub connections: u32,
    /// Crypto operations queued or running.
    pub queued: u32,
    /// Whether the node accepts writes (false after a storage failure).
    pub writable: bool,
    /// The raft leader this node knows of, if any.
    pub leader: Option<u32>,
    /// This node's raft role: `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    /// The raft term this node is in.
    pub term: u64,
    /// The cluster's members as this node knows them (voters and learners), in id order.
    pub members: Vec<Member>,
    /// The log index of the membership `members` comes from: of two answers, the one with
    /// the higher index is the newer membership.
    pub membership_index: u64,
    /// Signatures this node made since it started (`Sign` requests answered with a
    /// signature).
    pub signs: u64,
}

/// One member of a cluster's replication group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's id.
    pub id: u32,
    /// Where clients and the other nodes reach it (`host:port`).
    pub address: String,
    /// Whether it votes; a learner (a node that is joining) does not yet.
    pub voter: bool,
}

/// Cluster information.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The answering node.
    pub node_id: u32,
    /// The cluster id (hex), once initialized.
    pub cluster_id: Option<String>,
    /// Initialized.
    pub initialized: bool,
    /// Activated (the PRECO became a CO).
    pub activated: bool,
    /// Users, including built-in ones.
    pub users: u64,
    /// Token keys.
    pub token_keys: u64,
    /// Index of the last applied command.
    pub applied_index: u64,
}

/// One user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// Id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Locked after failed logins.
    pub locked: bool,
    /// Failed logins in a row.
    pub failed_logins: u8,
    /// Built in (the appliance user).
    pub built_in: bool,
}

/// One key's metadata (never its material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Handle.
    pub handle: u64,
    /// Unique id (hex).
    pub uid: String,
    /// Owner's user id.
    pub owner: u32,
    /// Owner's name.
    pub owner_name: String,
    /// Names of the users the key is shared with.
    pub shared_with: Vec<String>,
    /// Every attribute by name, values as text.
    pub attributes: Vec<AttributeValue>,
}

impl KeyInfo {
    /// The text value of attribute `name`.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.value.as_str())
    }
}

/// A request. Key handles are the numbers `key generate` and `key list` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Negotiate the version; must be first.
    Hello(Hello),
    /// The node's health (no login needed).
    Health,
    /// Cluster information (no login needed).
    Info,
    /// Log this connection in.
    Login {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
    },
    /// Log this connection out.
    Logout,
    /// PRECO only: set a new password and become the first crypto officer.
    Activate {
        /// The new password.
        new_password: Secret,
    },
    /// List users.
    ListUsers,
    /// Create a CO or CU.
    CreateUser {
        /// Name.
        name: String,
        /// Role (CO or CU).
        role: Role,
        /// Initial password.
        password: Secret,
    },
    /// Delete a user.
    DeleteUser {
        /// Name.
        name: String,
    },
    /// Change a password (one's own, or any as a CO: this also unlocks).
    ChangePassword {
        /// User name.
        name: String,
        /// New password.
        new_password: Secret,
    },
    /// Generate a symmetric key.
    GenerateKey {
        /// Type and size (AES or generic secret).
        spec: KeySpec,
        /// Attributes.
        attributes: Vec<AttributeValue>,
    },
    /// Generate a key pair; the reply lists the public then the private handle.
    GenerateKeyPair {
        /// Type and size (RSA, EC, Ed25519).
        spec: KeySpec,
        /// Public key attributes.
        public: Vec<AttributeValue>,
        /// Private key attributes.
        private: Vec<AttributeValue>,
    },
    /// Import a public key (DER SubjectPublicKeyInfo).
    ImportPublicKey {
        /// The key.
        der: Vec<u8>,
        /// Attributes.
        attributes: Vec<AttributeValue>,
    },
    /// Unwrap (import) a wrapped key.
    UnwrapKey {
        /// The unwrapping key.
        unwrapping: u64,
        /// How it was wrapped.
        mechanism: WrapMechanism,
        /// The wrapped bytes.
        wrapped: Vec<u8>,
        /// The type of the key inside.
        key_type: KeyType,
        /// Attributes of the new key.
        attributes: Vec<AttributeValue>,
    },
    /// Derive a secret key from a base key.
    DeriveKey {
        /// The base key.
        base: u64,
        /// The KDF.
        mechanism: KdfMechanism,
        /// Type and size of the result (AES or generic secret).
        spec: KeySpec,
        /// Attributes of the new key.
        attributes: Vec<AttributeValue>,
    },
    /// List keys visible to the session that match every filter attribute.
    ListKeys {
        /// Filter (`class`, `key-type`, `label`, `id`, `token` and usage flags).
        filter: Vec<AttributeValue>,
    },
    /// One key's metadata.
    GetKey {
        /// Handle.
        handle: u64,
    },
    /// A public key, DER and PEM.
    ExportPublicKey {
        /// Handle of a public or private key.
        handle: u64,
    },
    /// Change attributes.
    SetAttributes {
        /// Handle.
        handle: u64,
        /// Changes.
        changes: Vec<AttributeValue>,
    },
    /// Share a key with a crypto user.
    ShareKey {
        /// Handle.
        handle: u64,
        /// User name.
        user: String,
    },
    /// Stop sharing a key.
    UnshareKey {
        /// Handle.
        handle: u64,
        /// User name.
        user: String,
    },
    /// Delete a key.
    DeleteKey {
        /// Handle.
        handle: u64,
    },
    /// Wrap (export) a key under another key.
    WrapKey {
        /// The wrapping key.
        wrapping: u64,
        /// How.
        mechanism: WrapMechanism,
        /// The key to export.
        handle: u64,
    },
    /// Sign `data` (the HSM hashes it as the mechanism says).
    Sign {
        /// Key.
        handle: u64,
        /// Mechanism.
        mechanism: SignMechanism,
        /// Message.
        data: Vec<u8>,
    },
    /// Verify a signature.
    Verify {
        /// Key.
        handle: u64,
        /// Mechanism.
        mechanism: SignMechanism,
        /// Message.
        data: Vec<u8>,
        /// Signature.
        signature: Vec<u8>,
    },
    /// Encrypt.
    Encrypt {
        /// Key.
        handle: u64,
        /// Mechanism.
        mechanism: EncryptMechanism,
        /// Plaintext.
        data: Vec<u8>,
        /// Additional authenticated data (AES-GCM).
        aad: Vec<u8>,
    },
    /// Decrypt.
    Decrypt {
        /// Key.
        handle: u64,
        /// Mechanism.
        mechanism: EncryptMechanism,
        /// Ciphertext.
        data: Vec<u8>,
        /// Additional authenticated data (AES-GCM).
        aad: Vec<u8>,
    },
    /// Digest.
    Digest {
        /// Algorithm.
        hash: HashAlg,
        /// Data.
        data: Vec<u8>,
    },
    /// Random bytes.
    Random {
        /// How many.
        len: u32,
    },
    /// Adds node `id` at `address` to the cluster as a learner (crypto officers only). The
    /// node then gets the cluster's domain key and state from the others and becomes a voter
    /// once it has caught up. Answered with the membership after the change.
    AddNode {
        /// The new node's id (its certificate must name it).
        id: u32,
        /// Where the others and clients reach it (`host:port`).
        address: String,
    },
    /// Removes node `id` from the cluster (crypto officers only). Answered with the
    /// membership after the change.
    RemoveNode {
        /// The node's id.
        id: u32,
    },
    /// Between nodes only (a connection authenticated with a node certificate): a raft message
    /// whose payload the nodes encode.
    Raft {
        /// Which raft call.
        rpc: RaftRpc,
        /// The encoded openraft request.
        payload: Vec<u8>,
    },
    /// The public half of node `hsm_id`'s audit key, which seals its audit records (no login
    /// needed). Answered with [`Reply::PublicKey`].
    AuditKey {
        /// The node.
        hsm_id: u32,
    },
    /// This node's last audit record: its sequence number and hash (no login needed).
    AuditHead,
    /// Registers the logged-in user's RSA public key (2048 bits or more, DER
    /// SubjectPublicKeyInfo) for quorum approvals: the key their approvals are checked with.
    RegisterQuorumKey {
        /// The key.
        public_key: Vec<u8>,
    },
    /// Turns MFA (token-sign) on for a user with its RSA public key (which is also registered
    /// for quorum), or off (`None`). One's own, or a crypto officer for anyone.
    ChangeMfa {
        /// The user.
        name: String,
        /// The key, or none to turn MFA off.
        public_key: Option<Vec<u8>>,
    },
    /// Second step of a login with MFA: the signature of the challenge that
    /// [`Reply::MfaChallenge`] carried (RSA PKCS#1 v1.5 with SHA-256, as
    /// `openssl dgst -sha256 -sign` makes).
    LoginMfa {
        /// The signature.
        signature: Vec<u8>,
    },
    /// A quorum token for `service` (and, for the key services, `key`), valid on this node, in
    /// this session, for 10 minutes and one use.
    GenerateQuorumToken {
        /// The service.
        service: QuorumService,
        /// The key, for `key-management` and `key-usage`.
        key: Option<u64>,
    },
    /// The live quorum tokens of this node.
    ListQuorumTokens,
    /// Deletes a token (its requester's, or any as a crypto officer).
    DeleteQuorumToken {
        /// The token's id.
        id: u64,
    },
    /// The quorum values of the admin services.
    ListQuorumValues,
    /// Sets an admin service's quorum value (crypto officers; approved at the `quorum`
    /// service's current value when it is 2 or more).
    SetQuorumValue {
        /// `user` or `quorum`.
        service: QuorumService,
        /// M, 1 (off) to 8.
        value: u8,
    },
    /// `request`, with the approvals of a quorum token.
    Approved {
        /// The token and its approvals.
        approval: Approval,
        /// The controlled request.
        request: Box<Request>,
    },
}

/// A quorum-controlled service (CloudHSM's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QuorumService {
    /// Admin: user create, delete, change-password, change-mfa.
    User,
    /// Admin: set-quorum-value.
    Quorum,
    /// Crypto user, per key: wrap, unwrap, share, unshare, set-attribute.
    KeyManagement,
    /// Crypto user, per key: sign.
    KeyUsage,
}

impl QuorumService {
    /// Every service.
    pub const ALL: [Self; 4] = [
        Self::User,
        Self::Quorum,
        Self::KeyManagement,
        Self::KeyUsage,
    ];

    /// CloudHSM's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Quorum => "quorum",
            Self::KeyManagement => "key-management",
            Self::KeyUsage => "key-usage",
        }
    }

    /// The service named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether it is a per-key (crypto user) service.
    pub fn per_key(self) -> bool {
        matches!(self, Self::KeyManagement | Self::KeyUsage)
    }
}

/// A quorum token as the node issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumToken {
    /// Its id on the node.
    pub id: u64,
    /// The node that issued it (and checks it).
    pub hsm_id: u32,
    /// The service.
    pub service: QuorumService,
    /// The key, for the key services.
    pub key: Option<u64>,
    /// Who asked for it.
    pub user: String,
    /// What approvers sign (`openssl dgst -sha256 -sign KEY.pem approval_data`).
    pub approval_data: Vec<u8>,
    /// When it expires (milliseconds since the Unix epoch).
    pub expires_ms: u64,
}

/// The approvals presented with a controlled request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The token's id.
    pub token: u64,
    /// One signature of its approval data per approver.
    pub signatures: Vec<ApprovalSignature>,
}

/// One approver's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalSignature {
    /// The approver.
    pub user: String,
    /// RSA PKCS#1 v1.5 with SHA-256 of the token's approval data.
    pub signature: Vec<u8>,
}

/// An admin service's quorum value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumValue {
    /// The service.
    pub service: QuorumService,
    /// M (1: no approval needed).
    pub value: u8,
}

/// The raft calls between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRpc {
    /// Append entries (and heartbeats).
    AppendEntries,
    /// Request a vote.
    Vote,
    /// A chunk of a snapshot.
    InstallSnapshot,
    /// A follower forwards a write (an encoded log entry) to the leader.
    Forward,
    /// A node forwards a membership change to the leader.
    ChangeMembership,
    /// A joining node asks for the cluster's domain key; a node answers only a node whose
    /// certificate names a member of the cluster.
    DomainKey,
}

impl Request {
    /// Whether sending this request twice is harmless, so a client may re-send it to another
    /// node when its node fails mid-request. Writes are never re-sent silently.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self,
            Self::Health
                | Self::Info
                | Self::ListUsers
                | Self::ListKeys { .. }
                | Self::GetKey { .. }
                | Self::ExportPublicKey { .. }
                | Self::WrapKey { .. }
                | Self::Sign { .. }
                | Self::Verify { .. }
                | Self::Encrypt { .. }
                | Self::Decrypt { .. }
                | Self::Digest { .. }
                | Self::Random { .. }
        )
    }

    /// The first key handle this request names (`handle`, `wrapping`, `unwrapping` or `base`,
    /// in field order) that has bit 63 set, if any. Such handles name session keys, which
    /// live only on the node (and in the session) that created them: the same number names
    /// another key, or none, on any other node, so such a request must go to that node.
    pub fn session_handle(&self) -> Option<u64> {
        const SESSION_BIT: u64 = 1 << 63;
        let handles: &[u64] = match self {
            Self::UnwrapKey { unwrapping, .. } => &[*unwrapping],
            Self::DeriveKey { base, .. } => &[*base],
            Self::WrapKey {
                wrapping, handle, ..
            } => &[*wrapping, *handle],
            Self::GetKey { handle }
            | Self::ExportPublicKey { handle }
            | Self::SetAttributes { handle, .. }
            | Self::ShareKey { handle, .. }
            | Self::UnshareKey { handle, .. }
            | Self::DeleteKey { handle }
            | Self::Sign { handle, .. }
            | Self::Verify { handle, .. }
            | Self::Encrypt { handle, .. }
            | Self::Decrypt { handle, .. } => &[*handle],
            Self::Hello(_)
            | Self::Health
            | Self::Info
            | Self::Login { .. }
            | Self::Logout
            | Self::Activate { .. }
            | Self::ListUsers
            | Self::CreateUser { .. }
            | Self::DeleteUser { .. }
            | Self::ChangePassword { .. }
            | Self::GenerateKey { .. }
            | Self::GenerateKeyPair { .. }
            | Self::ImportPublicKey { .. }
            | Self::ListKeys { .. }
            | Self::Digest { .. }
            | Self::Random { .. }
            | Self::AddNode { .. }
            | Self::RemoveNode { .. }
            | Self::Raft { .. }
            | Self::AuditKey { .. }
            | Self::AuditHead
            | Self::RegisterQuorumKey { .. }
            | Self::ChangeMfa { .. }
            | Self::LoginMfa { .. }
            | Self::ListQuorumTokens
            | Self::DeleteQuorumToken { .. }
            | Self::ListQuorumValues
            | Self::SetQuorumValue { .. } => &[],
            Self::GenerateQuorumToken { key, .. } => return key.filter(|k| k & SESSION_BIT != 0),
            Self::Approved { request, .. } => return request.session_handle(),
        };
        handles
            .iter()
            .copied()
            .find(|handle| handle & SESSION_BIT != 0)
    }

    /// The quorum service (and key) that controls this request, if any: what a token for its
    /// approval must name ([`Request::Approved`]).
    pub fn quorum_control(&self) -> Option<(QuorumService, Option<u64>)> {
        match self {
            Self::CreateUser { .. }
            | Self::DeleteUser { .. }
            | Self::ChangePassword { .. }
            | Self::ChangeMfa { .. } => Some((QuorumService::User, None)),
            Self::SetQuorumValue { .. } => Some((QuorumService::Quorum, None)),
            Self::ShareKey { handle, .. }
            | Self::UnshareKey { handle, .. }
            | Self::SetAttributes { handle, .. }
            | Self::WrapKey { handle, .. } => Some((QuorumService::KeyManagement, Some(*handle))),
            Self::UnwrapKey { unwrapping, .. } => {
                Some((QuorumService::KeyManagement, Some(*unwrapping)))
            }
            Self::Sign { handle, .. } => Some((QuorumService::KeyUsage, Some(*handle))),
            _ => None,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Health => "health",
            Self::Info => "info",
            Self::Login { .. } => "login",
            Self::Logout => "logout",
            Self::Activate { .. } => "activate",
            Self::ListUsers => "list-users",
            Self::CreateUser { .. } => "create-user",
            Self::DeleteUser { .. } => "delete-user",
            Self::ChangePassword { .. } => "change-password",
            Self::GenerateKey { .. } => "generate-key",
            Self::GenerateKeyPair { .. } => "generate-key-pair",
            Self::ImportPublicKey { .. } => "import-public-key",
            Self::UnwrapKey { .. } => "unwrap-key",
            Self::DeriveKey { .. } => "derive-key",
            Self::ListKeys { .. } => "list-keys",
            Self::GetKey { .. } => "get-key",
            Self::ExportPublicKey { .. } => "export-public-key",
            Self::SetAttributes { .. } => "set-attributes",
            Self::ShareKey { .. } => "share-key",
            Self::UnshareKey { .. } => "unshare-key",
            Self::DeleteKey { .. } => "delete-key",
            Self::WrapKey { .. } => "wrap-key",
            Self::Sign { .. } => "sign",
            Self::Verify { .. } => "verify",
            Self::Encrypt { .. } => "encrypt",
            Self::Decrypt { .. } => "decrypt",
            Self::Digest { .. } => "digest",
            Self::Random { .. } => "random",
            Self::AddNode { .. } => "add-node",
            Self::RemoveNode { .. } => "remove-node",
            Self::Raft { .. } => "raft",
            Self::AuditKey { .. } => "audit-key",
            Self::AuditHead => "audit-head",
            Self::RegisterQuorumKey { .. } => "register-quorum-key",
            Self::ChangeMfa { .. } => "change-mfa",
            Self::LoginMfa { .. } => "login-mfa",
            Self::GenerateQuorumToken { .. } => "generate-quorum-token",
            Self::ListQuorumTokens => "list-quorum-tokens",
            Self::DeleteQuorumToken { .. } => "delete-quorum-token",
            Self::ListQuorumValues => "list-quorum-values",
            Self::SetQuorumValue { .. } => "set-quorum-value",
            Self::Approved { .. } => "approved",
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reply {
    /// Answer to [`Request::Hello`].
    Welcome(Welcome),
    /// Answer to [`Request::Health`].
    Health(Health),
    /// Answer to [`Request::Info`].
    Info(ClusterInfo),
    /// Done, nothing to return (logout, activate, delete, share, attributes, passwords).
    Done,
    /// Answer to [`Request::Login`].
    LoggedIn {
        /// The user's role.
        role: Role,
    },
    /// Answer to [`Request::ListUsers`].
    Users(Vec<UserInfo>),
    /// Answer to [`Request::CreateUser`].
    UserCreated {
        /// The new user's id.
        id: u32,
    },
    /// Keys created: one handle, or public then private for a pair.
    KeysCreated(Vec<u64>),
    /// Answer to [`Request::ListKeys`].
    Keys(Vec<KeyInfo>),
    /// Answer to [`Request::GetKey`].
    Key(KeyInfo),
    /// Answer to [`Request::ExportPublicKey`].
    PublicKey {
        /// DER SubjectPublicKeyInfo.
        der: Vec<u8>,
        /// PEM of the same.
        pem: String,
    },
    /// Bytes: a signature, ciphertext, plaintext, digest, random bytes or a wrapped key.
    Data(Vec<u8>),
    /// The signature verified.
    Verified,
    /// Answer to [`Request::Raft`]: the encoded openraft response.
    Raft(Vec<u8>),
    /// Answer to [`Request::AddNode`] and [`Request::RemoveNode`]: the membership after it.
    Members(Vec<Member>),
    /// Answer to [`Request::AuditHead`].
    AuditHead {
        /// The node.
        hsm_id: u32,
        /// Its last record's sequence number (none before the first).
        sequence: Option<u64>,
        /// That record's hash (hex).
        hash: String,
    },
    /// Answer to [`Request::Login`] for a user with MFA: sign `challenge` (RSA PKCS#1 v1.5
    /// with SHA-256) with the registered key and send [`Request::LoginMfa`].
    MfaChallenge {
        /// What to sign.
        challenge: Vec<u8>,
    },
    /// Answer to [`Request::GenerateQuorumToken`].
    QuorumToken(QuorumToken),
    /// Answer to [`Request::ListQuorumTokens`].
    QuorumTokens(Vec<QuorumToken>),
    /// Answer to [`Request::ListQuorumValues`].
    QuorumValues(Vec<QuorumValue>),
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: u64 = (1 << 63) | 5;

    #[test]
    fn session_handle_finds_the_first_handle_with_bit_63() {
        assert_eq!(
            Request::Sign {
                handle: SESSION,
                mechanism: SignMechanism::Ed25519,
                data: vec![],
            }
            .session_handle(),
            Some(SESSION)
        );
        assert_eq!(Request::DeleteKey { handle: 7 }.session_handle(), None);
        assert_eq!(Request::GetKey { handle: 1 << 62 }.session_handle(), None);
        let wrap = |wrapping, handle| Request::WrapKey {
            wrapping,
            mechanism: WrapMechanism::AesKeyWrapPad,
            handle,
        };
        assert_eq!(wrap(3, 4).session_handle(), None);
        assert_eq!(wrap(3, SESSION).session_handle(), Some(SESSION));
        assert_eq!(
            wrap(SESSION | 1, SESSION).session_handle(),
            Some(SESSION | 1)
        );
        let unwrap = Request::UnwrapKey {
            unwrapping: SESSION,
            mechanism: WrapMechanism::AesKeyWrapPad,
            wrapped: vec![],
            key_type: KeyType::Aes,
            attributes: vec![],
        };
        assert_eq!(unwrap.session_handle(), Some(SESSION));
        let derive = Request::DeriveKey {
            base: SESSION,
            mechanism: KdfMechanism::Hkdf {
                hash: HashAlg::Sha256,
                salt: vec![],
                info: vec![],
            },
            spec: KeySpec::Aes { bits: 256 },
            attributes: vec![],
        };
        assert_eq!(derive.session_handle(), Some(SESSION));
        assert_eq!(Request::Random { len: 1 }.session_handle(), None);
        assert_eq!(Request::ListKeys { filter: vec![] }.session_handle(), None);
    }
}
