//! Secret keys: AES keys (GCM encryption, key wrapping) and generic secrets (HMAC, KDF input).

use crate::alg::{AesSize, EncryptMechanism, HashAlg, KeySpec, KeyType, SignMechanism};
use crate::error::CryptoError;
use crate::hash;
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{cipher, constant_time, hmac};
use zeroize::Zeroizing;

/// Length of the AES-GCM IV the HSM generates for every encryption.
pub const GCM_IV_LEN: usize = 12;
/// Length of the AES-GCM authentication tag.
pub const GCM_TAG_LEN: usize = 16;
/// Shortest generic secret, in bytes.
pub(crate) const MIN_GENERIC_LEN: usize = 16;
/// Longest generic secret, in bytes.
pub(crate) const MAX_GENERIC_LEN: usize = 800;
/// Shortest HMAC tag accepted by verification (truncated tags below 128 bits are refused).
const MIN_HMAC_TAG_LEN: usize = 16;

/// An AES key or a generic secret. No `Debug`, `Clone` or `Serialize`; zeroized on drop.
pub struct SecretKey {
    kind: SecretKind,
    bytes: Zeroizing<Vec<u8>>,
}

#[derive(Clone, Copy)]
enum SecretKind {
    Aes(AesSize),
    Generic,
}

impl SecretKey {
    pub(crate) fn generate_aes(size: AesSize) -> Result<Self, CryptoError> {
        let bytes = crate::random::random_secret(size.bytes())?;
        Ok(Self {
            kind: SecretKind::Aes(size),
            bytes,
        })
    }

    pub(crate) fn generate_generic(len: u16) -> Result<Self, CryptoError> {
        let len = usize::from(len);
        check_generic_len(len)?;
        Ok(Self {
            kind: SecretKind::Generic,
            bytes: crate::random::random_secret(len)?,
        })
    }

    /// Builds a key of `key_type` from bytes that arrived wrapped or sealed.
    pub(crate) fn from_bytes(
        key_type: KeyType,
        bytes: Zeroizing<Vec<u8>>,
    ) -> Result<Self, CryptoError> {
        let kind = match key_type {
            KeyType::Aes => SecretKind::Aes(AesSize::from_len(bytes.len()).ok_or(
                CryptoError::KeyRejected("an AES key is 16, 24 or 32 bytes long"),
            )?),
            KeyType::GenericSecret => {
                check_generic_len(bytes.len())?;
                SecretKind::Generic
            }
            _ => {
                return Err(CryptoError::KeyRejected(
                    "a private key type cannot hold secret key bytes",
                ));
            }
        };
        Ok(Self { kind, bytes })
    }

    /// The raw bytes, for wrapping and sealing inside this crate only.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        match self.kind {
            SecretKind::Aes(_) => KeyType::Aes,
            SecretKind::Generic => KeyType::GenericSecret,
        }
    }

    /// The key's type and size.
    pub fn spec(&self) -> KeySpec {
        match self.kind {
            SecretKind::Aes(s) => KeySpec::Aes(s),
            // Lengths are checked to be 16..=800 on every construction.
            SecretKind::Generic => {
                KeySpec::GenericSecret(u16::try_from(self.bytes.len()).unwrap_or(u16::MAX))
            }
        }
    }

    /// Key length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: keys are never empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn aes_size(&self) -> Option<AesSize> {
        match self.kind {
            SecretKind::Aes(s) => Some(s),
            SecretKind::Generic => None,
        }
    }

    /// The key check value as CloudHSM defines it for symmetric keys: the first three bytes of
    /// the encryption of one all-zero block under the key. Generic secrets have none.
    pub fn check_value(&self) -> Option<[u8; 3]> {
        let size = self.aes_size()?;
        let alg = match size {
            AesSize::Aes128 => &cipher::AES_128,
            AesSize::Aes192 => &cipher::AES_192,
            AesSize::Aes256 => &cipher::AES_256,
        };
        let key = cipher::UnboundCipherKey::new(alg, &self.bytes).ok()?;
        let key = cipher::EncryptingKey::ecb(key).ok()?;
        let mut block = [0u8; 16];
        key.encrypt(&mut block).ok()?;
        Some(hash::first3(&block))
    }

    fn gcm_key(&self) -> Result<LessSafeKey, CryptoError> {
        let alg = match self.kind {
            SecretKind::Aes(AesSize::Aes128) => &aead::AES_128_GCM,
            SecretKind::Aes(AesSize::Aes192) => &aead::AES_192_GCM,
            SecretKind::Aes(AesSize::Aes256) => &aead::AES_256_GCM,
            SecretKind::Generic => {
                return Err(CryptoError::MechanismMismatch {
                    mechanism: "aes-gcm",
                    key: "generic-secret",
                });
            }
        };
        Ok(LessSafeKey::new(UnboundKey::new(alg, &self.bytes)?))
    }

    /// Encrypts with AES-GCM under a fresh random 12-byte IV.
    /// Output: `iv (12) || ciphertext || tag (16)`.
    pub fn encrypt(
        &self,
        mechanism: EncryptMechanism,
        plaintext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if mechanism != EncryptMechanism::AesGcm {
            return Err(CryptoError::MechanismMismatch {
                mechanism: mechanism.name(),
                key: self.key_type().as_str(),
            });
        }
        let key = self.gcm_key()?;
        let iv: [u8; GCM_IV_LEN] = crate::random::random_array()?;
        let mut out = Vec::with_capacity(GCM_IV_LEN + plaintext.len() + GCM_TAG_LEN);
        out.extend_from_slice(&iv);
        out.extend_from_slice(plaintext);
        let tag = key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(aad),
            out.get_mut(GCM_IV_LEN..).ok_or(CryptoError::Internal)?,
        )?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `iv (12) || ciphertext || tag (16)` made by [`SecretKey::encrypt`] (or by any
    /// AES-GCM implementation with a 12-byte IV and a 16-byte tag).
    pub fn decrypt(
        &self,
        mechanism: EncryptMechanism,
        input: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if mechanism != EncryptMechanism::AesGcm {
            return Err(CryptoError::MechanismMismatch {
                mechanism: mechanism.name(),
                key: self.key_type().as_str(),
            });
        }
        let key = self.gcm_key()?;
        if input.len() < GCM_IV_LEN + GCM_TAG_LEN {
            return Err(CryptoError::InvalidLength {
                what: "AES-GCM input",
                actual: input.len(),
                allowed: "at least 28 bytes: 12-byte IV, ciphertext, 16-byte tag",
            });
        }
        let (iv, rest) = input.split_at(GCM_IV_LEN);
        let nonce = Nonce::try_assume_unique_for_key(iv)?;
        let mut buf = Zeroizing::new(rest.to_vec());
        let n = key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::DecryptFailed)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }

    fn hmac_key(&self, mechanism: SignMechanism) -> Result<(hmac::Key, usize), CryptoError> {
        let (SignMechanism::Hmac(h), SecretKind::Generic) = (mechanism, self.kind) else {
            return Err(CryptoError::MechanismMismatch {
                mechanism: mechanism.name(),
                key: self.key_type().as_str(),
            });
        };
        let alg = match h {
            HashAlg::Sha256 => hmac::HMAC_SHA256,
            HashAlg::Sha384 => hmac::HMAC_SHA384,
            HashAlg::Sha512 => hmac::HMAC_SHA512,
            _ => {
                return Err(CryptoError::Unsupported(
                    "HMAC uses SHA-256, SHA-384 or SHA-512",
                ));
            }
        };
        Ok((hmac::Key::new(alg, &self.bytes), h.output_len()))
    }

    /// Computes a full-length HMAC tag.
    pub fn sign(&self, mechanism: SignMechanism, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (key, _) = self.hmac_key(mechanism)?;
        Ok(hmac::sign(&key, data).as_ref().to_vec())
    }

    /// Verifies an HMAC tag in constant time. A tag may be truncated to no fewer than 16 bytes;
    /// then its leading bytes are compared.
    pub fn verify(
        &self,
        mechanism: SignMechanism,
        data: &[u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        let (key, full) = self.hmac_key(mechanism)?;
        if tag.len() < MIN_HMAC_TAG_LEN || tag.len() > full {
            return Err(CryptoError::BadSignature);
        }
        let expected = hmac::sign(&key, data);
        let expected = expected
            .as_ref()
            .get(..tag.len())
            .ok_or(CryptoError::Internal)?;
        constant_time::verify_slices_are_equal(expected, tag).map_err(|_| CryptoError::BadSignature)
    }
}

fn check_generic_len(len: usize) -> Result<(), CryptoError> {
    if (MIN_GENERIC_LEN..=MAX_GENERIC_LEN).contains(&len) {
        Ok(())
    } else {
        Err(CryptoError::InvalidLength {
            what: "generic secret",
            actual: len,
            allowed: "16 to 800 bytes",
        })
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn aes(bytes: &[u8]) -> SecretKey {
        SecretKey::from_bytes(KeyType::Aes, Zeroizing::new(bytes.to_vec())).unwrap()
    }

    #[test]
    fn kcv_matches_the_aes_zero_block() {
        // AES-128 of the zero block under the zero key is 66e94bd4ef8a2c3b884cfa59ca342b2e.
        assert_eq!(aes(&[0u8; 16]).check_value(), Some([0x66, 0xe9, 0x4b]));
        // AES-256 of the zero block under the zero key is dc95c078a2408989ad48a21492842087.
        assert_eq!(aes(&[0u8; 32]).check_value(), Some([0xdc, 0x95, 0xc0]));
        let g = SecretKey::generate_generic(32).unwrap();
        assert_eq!(g.check_value(), None);
    }

    #[test]
    fn gcm_round_trip_with_fresh_ivs() {
        for size in [AesSize::Aes128, AesSize::Aes192, AesSize::Aes256] {
            let key = SecretKey::generate_aes(size).unwrap();
            let a = key
                .encrypt(EncryptMechanism::AesGcm, b"plain", b"aad")
                .unwrap();
            let b = key
                .encrypt(EncryptMechanism::AesGcm, b"plain", b"aad")
                .unwrap();
            assert_eq!(a.len(), 12 + 5 + 16);
            assert_ne!(a[..12], b[..12], "every encryption draws a new IV");
            assert_eq!(
                &key.decrypt(EncryptMechanism::AesGcm, &a, b"aad").unwrap()[..],
                b"plain"
            );
            assert_eq!(
                key.decrypt(EncryptMechanism::AesGcm, &a, b"other").err(),
                Some(CryptoError::DecryptFailed)
            );
            let mut bad = a.clone();
            bad[14] ^= 1;
            assert!(key.decrypt(EncryptMechanism::AesGcm, &bad, b"aad").is_err());
            assert!(
                key.decrypt(EncryptMechanism::AesGcm, &a[..20], b"aad")
                    .is_err()
            );
        }
    }

    #[test]
    fn hmac_sign_verify_truncation() {
        let key = SecretKey::generate_generic(64).unwrap();
        let m = SignMechanism::Hmac(HashAlg::Sha384);
        let tag = key.sign(m, b"data").unwrap();
        assert_eq!(tag.len(), 48);
        key.verify(m, b"data", &tag).unwrap();
        key.verify(m, b"data", &tag[..16]).unwrap();
        assert!(key.verify(m, b"data", &tag[..15]).is_err());
        assert!(key.verify(m, b"dat", &tag).is_err());
        assert!(aes(&[1u8; 16]).sign(m, b"x").is_err());
    }

    #[test]
    fn sizes_are_enforced() {
        assert!(SecretKey::generate_generic(15).is_err());
        assert!(SecretKey::generate_generic(801).is_err());
        assert!(SecretKey::from_bytes(KeyType::Aes, Zeroizing::new(vec![0; 17])).is_err());
        assert!(SecretKey::from_bytes(KeyType::Rsa, Zeroizing::new(vec![0; 16])).is_err());
    }
}
