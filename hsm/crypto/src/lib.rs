//! sealgate's cryptographic backend: every algorithm the HSM offers, on aws-lc-rs.
//!
//! This is the only crate in the workspace that names `aws_lc_rs` (rustls' own provider aside).
//! It offers key generation, signatures, encryption, key wrapping, digests, HMAC, key
//! derivation, random bytes, password hashing and the at-rest sealing of key material.
//!
//! What this crate does **not** do:
//! - it performs no I/O: no files, sockets or clocks;
//! - it never hands out private or secret key bytes in clear. Key material leaves a
//!   [`PrivateKey`] or [`SecretKey`] only wrapped by another key ([`wrap_key`]) or sealed under
//!   the storage master key ([`MasterKey::seal_key`]);
//! - its secret types implement neither `Debug`, `Clone` nor `Serialize`, and they zeroize their
//!   bytes on drop (aws-lc itself cleanses the memory of the keys it holds when they are freed).
//!
//! Algorithms (the set CloudHSM offers for these key types):
//! - RSA 2048/3072/4096: PKCS#1 v1.5 and PSS signatures with SHA-256/384/512, OAEP encryption
//!   with SHA-1/256/384/512 (MGF1 with the same hash);
//! - ECDSA on P-256, P-384, P-521 with SHA-256/384/512 (DER signatures); Ed25519;
//! - AES-128/192/256-GCM with 12-byte IVs that this crate generates, never the caller;
//! - AES key wrap (RFC 3394) and with padding (RFC 5649), RSA-OAEP and RSA-AES key wrapping;
//! - generic secrets of 16–800 bytes for HMAC-SHA-256/384/512; SHA-1/224/256/384/512 digests;
//!   HKDF and the SP 800-108 counter-mode KDF; random bytes;
//! - key check values as CloudHSM defines them ([`SecretKey::check_value`],
//!   [`PublicKey::check_value`]).
#![forbid(unsafe_code)]

mod alg;
mod asym;
pub mod client;
mod error;
mod hash;
mod kdf;
mod password;
mod random;
mod seal;
mod secret;
mod wrap;

pub use alg::{
    AesSize, Curve, EncryptMechanism, HashAlg, KdfMechanism, KeyClass, KeySpec, KeyType, OaepHash,
    RsaSize, SignMechanism, WrapMechanism,
};
pub use asym::{PrivateKey, PublicKey};
pub use error::CryptoError;
pub use hash::digest;
pub use kdf::derive_key;
pub use password::{MAX_PASSWORD_LEN, MIN_PASSWORD_LEN, Password, PasswordHash};
pub use random::{MAX_RANDOM_LEN, random_array, random_bytes};
pub use seal::{MasterKey, SealedBytes};
pub use secret::{GCM_IV_LEN, GCM_TAG_LEN, SecretKey};
pub use wrap::{UnwrapTarget, UnwrappingKey, WrappingKey, unwrap_key, wrap_key};

/// Key material of one private or secret key object: the thing that is sealed at rest and
/// wrapped for export. Public keys are not secret and are carried as [`PublicKey`].
pub enum KeyMaterial {
    /// An RSA, EC or Ed25519 private key.
    Private(PrivateKey),
    /// An AES key or a generic secret.
    Secret(SecretKey),
}

impl KeyMaterial {
    /// Generates fresh key material for `spec`.
    ///
    /// For asymmetric specs the result is the private key; its public half is available from
    /// [`PrivateKey::public_key`].
    pub fn generate(spec: KeySpec) -> Result<Self, CryptoError> {
        match spec {
            KeySpec::Rsa(size) => PrivateKey::generate_rsa(size).map(Self::Private),
            KeySpec::Ec(curve) => PrivateKey::generate_ec(curve).map(Self::Private),
            KeySpec::Ed25519 => PrivateKey::generate_ed25519().map(Self::Private),
            KeySpec::Aes(size) => SecretKey::generate_aes(size).map(Self::Secret),
            KeySpec::GenericSecret(len) => SecretKey::generate_generic(len).map(Self::Secret),
        }
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        match self {
            Self::Private(k) => k.key_type(),
            Self::Secret(k) => k.key_type(),
        }
    }

    /// The class of this key object (private or secret).
    pub fn class(&self) -> KeyClass {
        match self {
            Self::Private(_) => KeyClass::PrivateKey,
            Self::Secret(_) => KeyClass::SecretKey,
        }
    }

    /// The full specification (type and size) of this key.
    pub fn spec(&self) -> KeySpec {
        match self {
            Self::Private(k) => k.spec(),
            Self::Secret(k) => k.spec(),
        }
    }
}
