//! Algorithm identifiers: key types and sizes, and the mechanisms each key type supports.
//!
//! These are plain data (no key material) and may be serialized, logged and sent.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A hash function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HashAlg {
    /// SHA-1 (digests and OAEP only; never for signatures).
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// Output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha224 => 28,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// The name used on the command line and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha224 => "sha224",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    pub(crate) fn digest_alg(self) -> &'static aws_lc_rs::digest::Algorithm {
        use aws_lc_rs::digest;
        match self {
            Self::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha224 => &digest::SHA224,
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
            Self::Sha512 => &digest::SHA512,
        }
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An elliptic curve for ECDSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Curve {
    /// NIST P-256 (secp256r1, prime256v1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
}

impl Curve {
    /// The curve's SEC name, as CloudHSM prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P256 => "secp256r1",
            Self::P384 => "secp384r1",
            Self::P521 => "secp521r1",
        }
    }

    /// Size of the group order in bits.
    pub fn bits(self) -> u16 {
        match self {
            Self::P256 => 256,
            Self::P384 => 384,
            Self::P521 => 521,
        }
    }
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RSA modulus sizes that can be generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RsaSize {
    /// 2048-bit modulus.
    Rsa2048,
    /// 3072-bit modulus.
    Rsa3072,
    /// 4096-bit modulus.
    Rsa4096,
}

impl RsaSize {
    /// Modulus size in bits.
    pub fn bits(self) -> u16 {
        match self {
            Self::Rsa2048 => 2048,
            Self::Rsa3072 => 3072,
            Self::Rsa4096 => 4096,
        }
    }

    /// The size for a modulus of `bits` bits, if it is one this HSM accepts.
    pub fn from_bits(bits: usize) -> Option<Self> {
        match bits {
            2048 => Some(Self::Rsa2048),
            3072 => Some(Self::Rsa3072),
            4096 => Some(Self::Rsa4096),
            _ => None,
        }
    }
}

/// AES key sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AesSize {
    /// 128-bit key.
    Aes128,
    /// 192-bit key.
    Aes192,
    /// 256-bit key.
    Aes256,
}

impl AesSize {
    /// Key length in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Self::Aes128 => 16,
            Self::Aes192 => 24,
            Self::Aes256 => 32,
        }
    }

    /// The size for a key of `len` bytes.
    pub fn from_len(len: usize) -> Option<Self> {
        match len {
            16 => Some(Self::Aes128),
            24 => Some(Self::Aes192),
            32 => Some(Self::Aes256),
            _ => None,
        }
    }
}

/// The key-type attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyType {
    /// RSA.
    Rsa,
    /// Elliptic-curve (ECDSA) key on a NIST curve.
    Ec,
    /// Ed25519 (EdDSA on Curve25519).
    Ed25519,
    /// AES.
    Aes,
    /// Generic secret, used for HMAC and key derivation.
    GenericSecret,
}

impl KeyType {
    /// The name CloudHSM's CLI uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa => "rsa",
            Self::Ec => "ec",
            Self::Ed25519 => "ed25519",
            Self::Aes => "aes",
            Self::GenericSecret => "generic-secret",
        }
    }

    /// Whether keys of this type come in public/private pairs.
    pub fn is_asymmetric(self) -> bool {
        matches!(self, Self::Rsa | Self::Ec | Self::Ed25519)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class attribute of a key object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyClass {
    /// The public half of a key pair.
    PublicKey,
    /// The private half of a key pair.
    PrivateKey,
    /// A symmetric key or generic secret.
    SecretKey,
}

impl KeyClass {
    /// The name CloudHSM's CLI uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PublicKey => "public-key",
            Self::PrivateKey => "private-key",
            Self::SecretKey => "secret-key",
        }
    }
}

impl fmt::Display for KeyClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What key to generate: type and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeySpec {
    /// An RSA key pair (public exponent 65537).
    Rsa(RsaSize),
    /// An ECDSA key pair.
    Ec(Curve),
    /// An Ed25519 key pair.
    Ed25519,
    /// An AES key.
    Aes(AesSize),
    /// A generic secret of the given length in bytes (16–800).
    GenericSecret(u16),
}

impl KeySpec {
    /// The key type of keys made from this spec.
    pub fn key_type(self) -> KeyType {
        match self {
            Self::Rsa(_) => KeyType::Rsa,
            Self::Ec(_) => KeyType::Ec,
            Self::Ed25519 => KeyType::Ed25519,
            Self::Aes(_) => KeyType::Aes,
            Self::GenericSecret(_) => KeyType::GenericSecret,
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rsa(s) => write!(f, "rsa-{}", s.bits()),
            Self::Ec(c) => write!(f, "ec-{c}"),
            Self::Ed25519 => f.write_str("ed25519"),
            Self::Aes(s) => write!(f, "aes-{}", s.bytes() * 8),
            Self::GenericSecret(n) => write!(f, "generic-secret-{n}"),
        }
    }
}

/// Signature and MAC mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SignMechanism {
    /// RSASSA-PKCS1-v1_5 with SHA-256, SHA-384 or SHA-512.
    RsaPkcs1(HashAlg),
    /// RSASSA-PSS with SHA-256/384/512, MGF1 with the same hash, salt as long as the hash.
    RsaPss(HashAlg),
    /// ECDSA with SHA-256/384/512; signatures are DER `ECDSA-Sig-Value`.
    Ecdsa(HashAlg),
    /// Ed25519 (PureEdDSA).
    Ed25519,
    /// HMAC with SHA-256/384/512 on a generic secret.
    Hmac(HashAlg),
}

impl SignMechanism {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::RsaPkcs1(_) => "rsa-pkcs",
            Self::RsaPss(_) => "rsa-pkcs-pss",
            Self::Ecdsa(_) => "ecdsa",
            Self::Ed25519 => "ed25519",
            Self::Hmac(_) => "hmac",
        }
    }

    /// The key type the mechanism works with.
    pub fn key_type(self) -> KeyType {
        match self {
            Self::RsaPkcs1(_) | Self::RsaPss(_) => KeyType::Rsa,
            Self::Ecdsa(_) => KeyType::Ec,
            Self::Ed25519 => KeyType::Ed25519,
            Self::Hmac(_) => KeyType::GenericSecret,
        }
    }
}

/// Hash for RSA-OAEP (the MGF1 hash is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OaepHash {
    /// SHA-1 (as CloudHSM's default OAEP).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl OaepHash {
    pub(crate) fn alg(self) -> &'static aws_lc_rs::rsa::OaepAlgorithm {
        use aws_lc_rs::rsa;
        match self {
            Self::Sha1 => &rsa::OAEP_SHA1_MGF1SHA1,
            Self::Sha256 => &rsa::OAEP_SHA256_MGF1SHA256,
            Self::Sha384 => &rsa::OAEP_SHA384_MGF1SHA384,
            Self::Sha512 => &rsa::OAEP_SHA512_MGF1SHA512,
        }
    }

    pub(crate) fn hash_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

/// Encryption mechanisms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EncryptMechanism {
    /// AES-GCM, 12-byte IV generated by the HSM and prepended to the output, 16-byte tag
    /// appended (CloudHSM's `CKM_CLOUDHSM_AES_GCM` layout: `iv || ciphertext || tag`).
    AesGcm,
    /// RSA-OAEP with the given hash for both OAEP and MGF1.
    RsaOaep(OaepHash),
}

impl EncryptMechanism {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::AesGcm => "aes-gcm",
            Self::RsaOaep(_) => "rsa-oaep",
        }
    }
}

/// Key-wrapping mechanisms (how a key is exported and imported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WrapMechanism {
    /// AES key wrap without padding (RFC 3394): the payload must be a multiple of 8 bytes.
    AesKeyWrap,
    /// AES key wrap with padding (RFC 5649): any payload.
    AesKeyWrapPad,
    /// RSA-OAEP: only for payloads that fit in one OAEP block (secret keys).
    RsaOaep(OaepHash),
    /// RSA-AES (`CKM_RSA_AES_KEY_WRAP`): a fresh AES key wrapped with RSA-OAEP, followed by the
    /// payload wrapped under that AES key with RFC 5649.
    RsaAes {
        /// OAEP hash for the temporary AES key.
        oaep: OaepHash,
        /// Size of the temporary AES key.
        aes: AesSize,
    },
}

impl WrapMechanism {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::AesKeyWrap => "aes-no-pad",
            Self::AesKeyWrapPad => "aes-zero-pad",
            Self::RsaOaep(_) => "rsa-oaep",
            Self::RsaAes { .. } => "rsa-aes",
        }
    }
}

/// Key derivation functions. The salt and info are not secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KdfMechanism {
    /// HKDF (RFC 5869) with HMAC on the given hash.
    Hkdf {
        /// HMAC hash (SHA-256/384/512).
        hash: HashAlg,
        /// Salt; empty means "no salt".
        salt: Vec<u8>,
        /// Context info.
        info: Vec<u8>,
    },
    /// NIST SP 800-108 KDF in counter mode with HMAC (32-bit big-endian counter before the
    /// fixed info).
    Sp800108Counter {
        /// HMAC hash (SHA-256/384/512).
        hash: HashAlg,
        /// The fixed input data (label, context).
        info: Vec<u8>,
    },
}
