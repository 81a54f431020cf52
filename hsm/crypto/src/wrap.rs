//! Key wrapping: the only way private and secret key material leaves or enters the HSM.
//!
//! Private keys travel as PKCS#8 (v1) DER, secret keys as their raw bytes, each encrypted under
//! a wrapping key with one of the [`WrapMechanism`]s.

use crate::KeyMaterial;
use crate::alg::{AesSize, EncryptMechanism, KeyType, WrapMechanism};
use crate::asym::{PrivateKey, PublicKey};
use crate::error::CryptoError;
use crate::secret::SecretKey;
use aws_lc_rs::key_wrap::{self, AesKek, KeyWrap, KeyWrapPadded};
use zeroize::Zeroizing;

/// Largest wrapped blob accepted by [`unwrap_key`].
const MAX_WRAPPED_LEN: usize = 16 * 1024;

/// The key that encrypts a payload for export.
pub enum WrappingKey<'a> {
    /// An AES key (AES key wrap mechanisms).
    Secret(&'a SecretKey),
    /// An RSA public key (RSA-OAEP and RSA-AES).
    Public(&'a PublicKey),
}

/// The key that decrypts a wrapped payload on import.
pub enum UnwrappingKey<'a> {
    /// An AES key (AES key wrap mechanisms).
    Secret(&'a SecretKey),
    /// An RSA private key (RSA-OAEP and RSA-AES).
    Private(&'a PrivateKey),
}

/// What the unwrapped bytes are expected to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnwrapTarget {
    /// The type of the key inside the wrapped blob.
    pub key_type: KeyType,
}

fn kek(key: &SecretKey) -> Result<AesKek, CryptoError> {
    let cipher = match key.aes_size() {
        Some(AesSize::Aes128) => &key_wrap::AES_128,
        Some(AesSize::Aes256) => &key_wrap::AES_256,
        Some(AesSize::Aes192) => {
            return Err(CryptoError::Unsupported(
                "AES key wrap uses 128- or 256-bit wrapping keys",
            ));
        }
        None => {
            return Err(CryptoError::MechanismMismatch {
                mechanism: "aes key wrap",
                key: "generic-secret",
            });
        }
    };
    Ok(AesKek::new(cipher, key.bytes())?)
}

fn payload_bytes(payload: &KeyMaterial) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    match payload {
        KeyMaterial::Private(k) => k.to_pkcs8(),
        KeyMaterial::Secret(k) => Ok(Zeroizing::new(k.bytes().to_vec())),
    }
}

fn aes_wrap(
    mechanism: WrapMechanism,
    key: &SecretKey,
    payload: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let kek = kek(key)?;
    let mut out = vec![0u8; payload.len().div_ceil(8) * 8 + 8];
    let n = if mechanism == WrapMechanism::AesKeyWrap {
        if !payload.len().is_multiple_of(8) || payload.len() < 16 {
            return Err(CryptoError::InvalidLength {
                what: "payload for AES key wrap without padding",
                actual: payload.len(),
                allowed: "a multiple of 8 bytes, at least 16; use aes-zero-pad (RFC 5649)",
            });
        }
        kek.wrap(payload, &mut out)?.len()
    } else {
        kek.wrap_with_padding(payload, &mut out)?.len()
    };
    out.truncate(n);
    Ok(out)
}

fn aes_unwrap(
    mechanism: WrapMechanism,
    key: &SecretKey,
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let kek = kek(key)?;
    if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) {
        return Err(CryptoError::UnwrapFailed);
    }
    let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
    let n = if mechanism == WrapMechanism::AesKeyWrap {
        if wrapped.len() < 24 {
            return Err(CryptoError::UnwrapFailed);
        }
        kek.unwrap(wrapped, &mut out)
            .map_err(|_| CryptoError::UnwrapFailed)?
            .len()
    } else {
        kek.unwrap_with_padding(wrapped, &mut out)
            .map_err(|_| CryptoError::UnwrapFailed)?
            .len()
    };
    out.truncate(n);
    Ok(out)
}

/// Wraps `payload` under `wrapping` with `mechanism`.
pub fn wrap_key(
    mechanism: WrapMechanism,
    wrapping: WrappingKey<'_>,
    payload: &KeyMaterial,
) -> Result<Vec<u8>, CryptoError> {
    let bytes = payload_bytes(payload)?;
    match (mechanism, wrapping) {
        (WrapMechanism::AesKeyWrap | WrapMechanism::AesKeyWrapPad, WrappingKey::Secret(k)) => {
            aes_wrap(mechanism, k, &bytes)
        }
        (WrapMechanism::RsaOaep(h), WrappingKey::Public(p)) => {
            let capacity = p.oaep_capacity(h).unwrap_or(0);
            if bytes.len() > capacity {
                return Err(CryptoError::InvalidLength {
                    what: "payload for RSA-OAEP wrapping",
                    actual: bytes.len(),
                    allowed: "at most modulus bytes - 2 x hash bytes - 2; use rsa-aes for private keys",
                });
            }
            p.encrypt(EncryptMechanism::RsaOaep(h), &bytes, None)
        }
        (WrapMechanism::RsaAes { oaep, aes }, WrappingKey::Public(p)) => {
            let temp = SecretKey::generate_aes(aes)?;
            kek(&temp)?;
            let mut out = p.encrypt(EncryptMechanism::RsaOaep(oaep), temp.bytes(), None)?;
            out.extend(aes_wrap(WrapMechanism::AesKeyWrapPad, &temp, &bytes)?);
            Ok(out)
        }
        (m, WrappingKey::Secret(k)) => Err(CryptoError::MechanismMismatch {
            mechanism: m.name(),
            key: k.key_type().as_str(),
        }),
        (m, WrappingKey::Public(p)) => Err(CryptoError::MechanismMismatch {
            mechanism: m.name(),
            key: p.key_type().as_str(),
        }),
    }
}

/// Unwraps `wrapped` with `unwrapping` and parses the result as a key of `target`'s type.
pub fn unwrap_key(
    mechanism: WrapMechanism,
    unwrapping: UnwrappingKey<'_>,
    wrapped: &[u8],
    target: UnwrapTarget,
) -> Result<KeyMaterial, CryptoError> {
    if wrapped.len() > MAX_WRAPPED_LEN {
        return Err(CryptoError::InvalidLength {
            what: "wrapped key",
            actual: wrapped.len(),
            allowed: "at most 16384 bytes",
        });
    }
    let bytes = match (mechanism, unwrapping) {
        (WrapMechanism::AesKeyWrap | WrapMechanism::AesKeyWrapPad, UnwrappingKey::Secret(k)) => {
            aes_unwrap(mechanism, k, wrapped)?
        }
        (WrapMechanism::RsaOaep(h), UnwrappingKey::Private(k)) => k
            .decrypt(EncryptMechanism::RsaOaep(h), wrapped, None)
            .map_err(|_| CryptoError::UnwrapFailed)?,
        (WrapMechanism::RsaAes { oaep, aes }, UnwrappingKey::Private(k)) => {
            let modulus = match k.spec() {
                crate::KeySpec::Rsa(s) => usize::from(s.bits()) / 8,
                _ => return Err(CryptoError::Internal),
            };
            if wrapped.len() <= modulus {
                return Err(CryptoError::UnwrapFailed);
            }
            let (head, tail) = wrapped.split_at(modulus);
            let temp = k
                .decrypt(EncryptMechanism::RsaOaep(oaep), head, None)
                .map_err(|_| CryptoError::UnwrapFailed)?;
            if temp.len() != aes.bytes() {
                return Err(CryptoError::UnwrapFailed);
            }
            let temp = SecretKey::from_bytes(KeyType::Aes, temp)?;
            aes_unwrap(WrapMechanism::AesKeyWrapPad, &temp, tail)?
        }
        (m, UnwrappingKey::Secret(k)) => {
            return Err(CryptoError::MechanismMismatch {
                mechanism: m.name(),
                key: k.key_type().as_str(),
            });
        }
        (m, UnwrappingKey::Private(k)) => {
            return Err(CryptoError::MechanismMismatch {
                mechanism: m.name(),
                key: k.key_type().as_str(),
            });
        }
    };
    material_from_bytes(target.key_type, bytes)
}

pub(crate) fn material_from_bytes(
    key_type: KeyType,
    bytes: Zeroizing<Vec<u8>>,
) -> Result<KeyMaterial, CryptoError> {
    if key_type.is_asymmetric() {
        PrivateKey::from_pkcs8(key_type, &bytes).map(KeyMaterial::Private)
    } else {
        SecretKey::from_bytes(key_type, bytes).map(KeyMaterial::Secret)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::alg::{Curve, HashAlg, KeySpec, OaepHash, RsaSize, SignMechanism};

    fn target(t: KeyType) -> UnwrapTarget {
        UnwrapTarget { key_type: t }
    }

    #[test]
    fn aes_kwp_round_trips_a_private_key() {
        let kek_key = SecretKey::generate_aes(AesSize::Aes256).unwrap();
        let ec = KeyMaterial::generate(KeySpec::Ec(Curve::P256)).unwrap();
        let wrapped = wrap_key(
            WrapMechanism::AesKeyWrapPad,
            WrappingKey::Secret(&kek_key),
            &ec,
        )
        .unwrap();
        let back = unwrap_key(
            WrapMechanism::AesKeyWrapPad,
            UnwrappingKey::Secret(&kek_key),
            &wrapped,
            target(KeyType::Ec),
        )
        .unwrap();
        let (KeyMaterial::Private(a), KeyMaterial::Private(b)) = (&ec, &back) else {
            panic!("private keys expected")
        };
        assert_eq!(a.public_key(), b.public_key());
        let sig = b.sign(SignMechanism::Ecdsa(HashAlg::Sha256), b"m").unwrap();
        a.verify(SignMechanism::Ecdsa(HashAlg::Sha256), b"m", &sig)
            .unwrap();
        // Tampering is detected.
        let mut bad = wrapped.clone();
        bad[3] ^= 0x80;
        assert_eq!(
            unwrap_key(
                WrapMechanism::AesKeyWrapPad,
                UnwrappingKey::Secret(&kek_key),
                &bad,
                target(KeyType::Ec)
            )
            .err(),
            Some(CryptoError::UnwrapFailed)
        );
        // PKCS#8 is not a multiple of 8 bytes here, so RFC 3394 refuses it.
        assert!(
            wrap_key(
                WrapMechanism::AesKeyWrap,
                WrappingKey::Secret(&kek_key),
                &ec
            )
            .is_err()
        );
    }

    #[test]
    fn rsa_oaep_and_rsa_aes() {
        let rsa = PrivateKey::generate_rsa(RsaSize::Rsa2048).unwrap();
        let aes = KeyMaterial::generate(KeySpec::Aes(AesSize::Aes128)).unwrap();
        let KeyMaterial::Secret(aes_key) = &aes else {
            panic!()
        };
        let m = WrapMechanism::RsaOaep(OaepHash::Sha256);
        let w = wrap_key(m, WrappingKey::Public(rsa.public_key()), &aes).unwrap();
        let back = unwrap_key(m, UnwrappingKey::Private(&rsa), &w, target(KeyType::Aes)).unwrap();
        let KeyMaterial::Secret(back) = back else {
            panic!()
        };
        assert_eq!(back.check_value(), aes_key.check_value());

        let big = KeyMaterial::generate(KeySpec::Rsa(RsaSize::Rsa2048)).unwrap();
        assert!(wrap_key(m, WrappingKey::Public(rsa.public_key()), &big).is_err());
        let m = WrapMechanism::RsaAes {
            oaep: OaepHash::Sha256,
            aes: AesSize::Aes256,
        };
        let w = wrap_key(m, WrappingKey::Public(rsa.public_key()), &big).unwrap();
        let back = unwrap_key(m, UnwrappingKey::Private(&rsa), &w, target(KeyType::Rsa)).unwrap();
        let (KeyMaterial::Private(a), KeyMaterial::Private(b)) = (&big, &back) else {
            panic!()
        };
        assert_eq!(a.public_key(), b.public_key());
        assert!(
            unwrap_key(
                m,
                UnwrappingKey::Private(&rsa),
                &w[..300],
                target(KeyType::Rsa)
            )
            .is_err()
        );
        // The wrong expected type is refused.
        assert!(unwrap_key(m, UnwrappingKey::Private(&rsa), &w, target(KeyType::Ec)).is_err());
    }
}
