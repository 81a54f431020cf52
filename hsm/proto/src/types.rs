//! Plain data carried in messages: roles, key specifications, mechanisms, and [`Secret`] for
//! passwords. Each has a stable text name (`FromStr` and `Display`) for the command line.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

/// A password in transit: zeroized on drop, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    /// The text, for the one place that checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A name on the command line that is not one of the accepted values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}; expected one of: {expected}")]
pub struct ParseError {
    /// What was being parsed.
    pub what: &'static str,
    /// The text given.
    pub given: String,
    /// The accepted values.
    pub expected: &'static str,
}

/// Implements `as_str`, `Display` and `FromStr` from one table of names.
macro_rules! named {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The stable text name.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                match s.to_ascii_lowercase().as_str() {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(ParseError {
                        what: $what,
                        given: s.to_owned(),
                        expected: concat!($($name, " "),+),
                    }),
                }
            }
        }
    };
}

/// A user's role, as in CloudHSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Pre-crypto-officer: only until activation.
    PreCryptoOfficer,
    /// Crypto officer: manages users.
    CryptoOfficer,
    /// Crypto user: owns and uses keys.
    CryptoUser,
    /// Appliance user: cluster-internal.
    ApplianceUser,
}

named!(Role, "role", {
    PreCryptoOfficer => "preco",
    CryptoOfficer => "co",
    CryptoUser => "cu",
    ApplianceUser => "au",
});

/// Digest algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HashAlg {
    /// SHA-1 (digests and OAEP only).
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

named!(HashAlg, "hash", {
    Sha1 => "sha1",
    Sha224 => "sha224",
    Sha256 => "sha256",
    Sha384 => "sha384",
    Sha512 => "sha512",
});

/// Elliptic curves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
    /// NIST P-521.
    P521,
}

named!(Curve, "curve", {
    P256 => "secp256r1",
    P384 => "secp384r1",
    P521 => "secp521r1",
});

/// Key types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyType {
    /// RSA.
    Rsa,
    /// ECDSA on a NIST curve.
    Ec,
    /// Ed25519.
    Ed25519,
    /// AES.
    Aes,
    /// A generic secret (HMAC, derivation).
    GenericSecret,
}

named!(KeyType, "key type", {
    Rsa => "rsa",
    Ec => "ec",
    Ed25519 => "ed25519",
    Aes => "aes",
    GenericSecret => "generic-secret",
});

/// A key's type and size. The node checks sizes against what the HSM supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeySpec {
    /// RSA with this modulus size in bits (2048, 3072, 4096).
    Rsa {
        /// Modulus bits.
        bits: u16,
    },
    /// ECDSA on this curve.
    Ec(Curve),
    /// Ed25519.
    Ed25519,
    /// AES with this key size in bits (128, 192, 256).
    Aes {
        /// Key bits.
        bits: u16,
    },
    /// A generic secret of this many bytes (16–800).
    GenericSecret {
        /// Length in bytes.
        bytes: u16,
    },
}

impl KeySpec {
    /// The key type.
    pub fn key_type(self) -> KeyType {
        match self {
            Self::Rsa { .. } => KeyType::Rsa,
            Self::Ec(_) => KeyType::Ec,
            Self::Ed25519 => KeyType::Ed25519,
            Self::Aes { .. } => KeyType::Aes,
            Self::GenericSecret { .. } => KeyType::GenericSecret,
        }
    }
}

/// OAEP hash (MGF1 uses the same hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OaepHash {
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

named!(OaepHash, "OAEP hash", {
    Sha1 => "sha1",
    Sha256 => "sha256",
    Sha384 => "sha384",
    Sha512 => "sha512",
});

/// Signature mechanisms. Text names: `rsa-pkcs-sha256`, `rsa-pss-sha384`, `ecdsa-sha256`,
/// `ed25519`, `hmac-sha512`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SignMechanism {
    /// RSA PKCS#1 v1.5.
    RsaPkcs1(HashAlg),
    /// RSA-PSS (salt length = hash length).
    RsaPss(HashAlg),
    /// ECDSA, DER-encoded signature.
    Ecdsa(HashAlg),
    /// Ed25519 (pure).
    Ed25519,
    /// HMAC with a generic secret.
    Hmac(HashAlg),
}

const SIGN_NAMES: &str =
    "rsa-pkcs-HASH rsa-pss-HASH ecdsa-HASH ed25519 hmac-HASH (HASH: sha256 sha384 sha512)";

impl fmt::Display for SignMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RsaPkcs1(h) => write!(f, "rsa-pkcs-{h}"),
            Self::RsaPss(h) => write!(f, "rsa-pss-{h}"),
            Self::Ecdsa(h) => write!(f, "ecdsa-{h}"),
            Self::Ed25519 => f.write_str("ed25519"),
            Self::Hmac(h) => write!(f, "hmac-{h}"),
        }
    }
}

impl FromStr for SignMechanism {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError {
            what: "signature mechanism",
            given: s.to_owned(),
            expected: SIGN_NAMES,
        };
        let lower = s.to_ascii_lowercase();
        if lower == "ed25519" {
            return Ok(Self::Ed25519);
        }
        let (family, hash) = lower.rsplit_once('-').ok_or_else(err)?;
        let hash: HashAlg = hash.parse().map_err(|_| err())?;
        match family {
            "rsa-pkcs" => Ok(Self::RsaPkcs1(hash)),
            "rsa-pss" => Ok(Self::RsaPss(hash)),
            "ecdsa" => Ok(Self::Ecdsa(hash)),
            "hmac" => Ok(Self::Hmac(hash)),
            _ => Err(err()),
        }
    }
}

/// Encryption mechanisms. Text names: `aes-gcm`, `rsa-oaep-sha256`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EncryptMechanism {
    /// AES-GCM; the HSM picks the IV and returns `iv || ciphertext || tag`.
    AesGcm,
    /// RSA-OAEP with this hash.
    RsaOaep(OaepHash),
}

impl fmt::Display for EncryptMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AesGcm => f.write_str("aes-gcm"),
            Self::RsaOaep(h) => write!(f, "rsa-oaep-{h}"),
        }
    }
}

impl FromStr for EncryptMechanism {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let lower = s.to_ascii_lowercase();
        if lower == "aes-gcm" {
            return Ok(Self::AesGcm);
        }
        lower
            .strip_prefix("rsa-oaep-")
            .and_then(|h| h.parse().ok())
            .map(Self::RsaOaep)
            .ok_or_else(|| ParseError {
                what: "encryption mechanism",
                given: s.to_owned(),
                expected: "aes-gcm rsa-oaep-sha1 rsa-oaep-sha256 rsa-oaep-sha384 rsa-oaep-sha512",
            })
    }
}

/// Key-wrapping mechanisms. Text names: `aes-no-pad`, `aes-zero-pad`, `rsa-oaep-sha256`,
/// `rsa-aes-sha256` (a 256-bit temporary AES key), …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WrapMechanism {
    /// AES key wrap (RFC 3394).
    AesKeyWrap,
    /// AES key wrap with padding (RFC 5649).
    AesKeyWrapPad,
    /// RSA-OAEP.
    RsaOaep(OaepHash),
    /// RSA-AES: a temporary AES key under RSA-OAEP, the payload under RFC 5649.
    RsaAes {
        /// OAEP hash.
        oaep: OaepHash,
        /// Temporary AES key size in bits (128, 192, 256).
        aes_bits: u16,
    },
}

impl fmt::Display for WrapMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AesKeyWrap => f.write_str("aes-no-pad"),
            Self::AesKeyWrapPad => f.write_str("aes-zero-pad"),
            Self::RsaOaep(h) => write!(f, "rsa-oaep-{h}"),
            Self::RsaAes {
                oaep,
                aes_bits: 256,
            } => write!(f, "rsa-aes-{oaep}"),
            Self::RsaAes { oaep, aes_bits } => write!(f, "rsa-aes{aes_bits}-{oaep}"),
        }
    }
}

impl FromStr for WrapMechanism {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let lower = s.to_ascii_lowercase();
        let parsed = match lower.as_str() {
            "aes-no-pad" => Some(Self::AesKeyWrap),
            "aes-zero-pad" => Some(Self::AesKeyWrapPad),
            other => {
                if let Some(h) = other.strip_prefix("rsa-oaep-") {
                    h.parse().ok().map(Self::RsaOaep)
                } else if let Some(h) = other.strip_prefix("rsa-aes-") {
                    h.parse().ok().map(|oaep| Self::RsaAes {
                        oaep,
                        aes_bits: 256,
                    })
                } else {
                    None
                }
            }
        };
        parsed.ok_or_else(|| ParseError {
            what: "wrap mechanism",
            given: s.to_owned(),
            expected: "aes-no-pad aes-zero-pad rsa-oaep-HASH rsa-aes-HASH (HASH: sha1 sha256 sha384 sha512)",
        })
    }
}

/// Key derivation functions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KdfMechanism {
    /// HKDF (RFC 5869).
    Hkdf {
        /// HMAC hash.
        hash: HashAlg,
        /// Salt (may be empty).
        salt: Vec<u8>,
        /// Context info.
        info: Vec<u8>,
    },
    /// NIST SP 800-108 counter mode with HMAC.
    Sp800108Counter {
        /// HMAC hash.
        hash: HashAlg,
        /// Fixed input data.
        info: Vec<u8>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in [
            SignMechanism::Ecdsa(HashAlg::Sha256),
            SignMechanism::RsaPss(HashAlg::Sha512),
            SignMechanism::RsaPkcs1(HashAlg::Sha384),
            SignMechanism::Ed25519,
            SignMechanism::Hmac(HashAlg::Sha256),
        ] {
            assert_eq!(m.to_string().parse::<SignMechanism>(), Ok(m));
        }
        for m in [
            EncryptMechanism::AesGcm,
            EncryptMechanism::RsaOaep(OaepHash::Sha256),
        ] {
            assert_eq!(m.to_string().parse::<EncryptMechanism>(), Ok(m));
        }
        for m in [
            WrapMechanism::AesKeyWrap,
            WrapMechanism::AesKeyWrapPad,
            WrapMechanism::RsaOaep(OaepHash::Sha1),
            WrapMechanism::RsaAes {
                oaep: OaepHash::Sha256,
                aes_bits: 256,
            },
        ] {
            assert_eq!(m.to_string().parse::<WrapMechanism>(), Ok(m));
        }
        assert_eq!("CU".parse::<Role>(), Ok(Role::CryptoUser));
        assert_eq!("secp256r1".parse::<Curve>(), Ok(Curve::P256));
    }

    #[test]
    fn unknown_names_say_what_is_accepted() {
        let err = "ecdsa-md5".parse::<SignMechanism>().unwrap_err();
        assert!(err.to_string().contains("ecdsa-HASH"), "{err}");
        let err = "xx".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("co cu"), "{err}");
    }
}
