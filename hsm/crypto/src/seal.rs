//! At-rest sealing: key material and other secrets encrypted under the storage master key.
//!
//! Modelled on Kryoptic's storage encryption: every sealed object gets its own AES-256-GCM key,
//! derived with HKDF-SHA-256 from the master key and the object's unique 16-byte id and purpose;
//! each seal draws a fresh 12-byte nonce; the associated data binds the blob to its object, so a
//! blob moved to another object does not open. Layout: `version (1) || nonce (12) || ct || tag`.

use crate::KeyMaterial;
use crate::alg::KeyType;
use crate::error::CryptoError;
use crate::secret::{GCM_IV_LEN, GCM_TAG_LEN};
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::Zeroizing;

const SEAL_VERSION: u8 = 1;
const EXTRACT_SALT: &[u8] = b"sealgate master key v1";

/// The storage master key (the cluster's domain key). 32 bytes, zeroized on drop, no `Debug`,
/// `Clone` or `Serialize`.
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
    /// The HMAC key for record tags, derived once (tags are made for every stored row).
    record_key: aws_lc_rs::hmac::Key,
}

/// Bytes sealed under the master key. Safe to store and log (it is ciphertext), but `Debug`
/// prints only its length.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBytes(Vec<u8>);

impl fmt::Debug for SealedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedBytes({} bytes)", self.0.len())
    }
}

impl SealedBytes {
    /// The sealed bytes as stored.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Wraps bytes read back from storage (they are checked when opened).
    pub fn from_stored(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

/// Purpose tags: the same object id sealed for two purposes uses two different keys.
#[derive(Clone, Copy)]
enum Purpose {
    KeyMaterial = 1,
    Bytes = 2,
}

impl MasterKey {
    /// Length of a master key in bytes.
    pub const LEN: usize = 32;

    /// Generates a new master key. The raw bytes are returned once, so the caller can write them
    /// to the key file (with 0600 permissions); they are zeroized when dropped.
    pub fn generate() -> Result<(Self, Zeroizing<[u8; 32]>), CryptoError> {
        let bytes = Zeroizing::new(crate::random::random_array::<32>()?);
        Ok((Self::with_bytes(bytes.clone()), bytes))
    }

    /// Loads a master key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::InvalidLength {
            what: "master key",
            actual: bytes.len(),
            allowed: "exactly 32 bytes",
        })?;
        Ok(Self::with_bytes(Zeroizing::new(arr)))
    }

    fn with_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, EXTRACT_SALT).extract(&bytes[..]);
        let info = [b"sealgate record mac v1".as_slice()];
        let mut key = Zeroizing::new([0u8; 32]);
        if let Ok(okm) = prk.expand(&info, Len(32)) {
            let _ = okm.fill(&mut key[..]);
        }
        let record_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key[..]);
        Self { bytes, record_key }
    }

    /// A non-secret fingerprint of this key (8 bytes), so a store can tell that it is opened with
    /// the master key it was written with.
    pub fn fingerprint(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, EXTRACT_SALT).extract(&self.bytes[..]);
        let info = [b"sealgate fingerprint v1".as_slice()];
        if let Ok(okm) = prk.expand(&info, Len(8)) {
            let _ = okm.fill(&mut out);
        }
        out
    }

    /// Node `node`'s audit signing key: Ed25519 from a seed derived from this key, so it never
    /// exists outside a node of the cluster (every member can make any member's, and its public
    /// half is what `sealgate audit verify` checks seals with).
    pub fn audit_key(&self, node: u32) -> Result<crate::PrivateKey, CryptoError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, EXTRACT_SALT).extract(&self.bytes[..]);
        let id = node.to_be_bytes();
        let info = [b"sealgate audit key v1".as_slice(), &id];
        let mut seed = Zeroizing::new([0u8; 32]);
        prk.expand(&info, Len(32))?.fill(&mut seed[..])?;
        crate::PrivateKey::ed25519_from_seed(&seed[..])
    }

    /// An integrity tag over `data` in `context` (HMAC-SHA-256 under a key derived from the
    /// master key). Deterministic, so every replica computes the same tag for the same record.
    pub fn record_tag(&self, context: &[u8], data: &[u8]) -> [u8; 32] {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.record_key);
        ctx.update(&(context.len() as u64).to_be_bytes());
        ctx.update(context);
        ctx.update(data);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Checks a tag made by [`MasterKey::record_tag`], in constant time.
    pub fn check_record_tag(&self, context: &[u8], data: &[u8], tag: &[u8]) -> bool {
        let expected = self.record_tag(context, data);
        aws_lc_rs::constant_time::verify_slices_are_equal(&expected, tag).is_ok()
    }

    fn object_key(
        &self,
        purpose: Purpose,
        object_id: &[u8; 16],
    ) -> Result<LessSafeKey, CryptoError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, EXTRACT_SALT).extract(&self.bytes[..]);
        let tag = [purpose as u8];
        let info = [b"sealgate object key v1".as_slice(), &tag, object_id];
        let mut key = Zeroizing::new([0u8; 32]);
        prk.expand(&info, Len(32))?.fill(&mut key[..])?;
        Ok(LessSafeKey::new(UnboundKey::new(
            &aead::AES_256_GCM,
            &key[..],
        )?))
    }

    fn seal(
        &self,
        purpose: Purpose,
        object_id: &[u8; 16],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<SealedBytes, CryptoError> {
        let key = self.object_key(purpose, object_id)?;
        let nonce: [u8; GCM_IV_LEN] = crate::random::random_array()?;
        let mut out = Vec::with_capacity(1 + GCM_IV_LEN + plaintext.len() + GCM_TAG_LEN);
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let full_aad = associated_data(purpose, object_id, aad);
        let tag = key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&full_aad),
            out.get_mut(1 + GCM_IV_LEN..).ok_or(CryptoError::Internal)?,
        )?;
        out.extend_from_slice(tag.as_ref());
        Ok(SealedBytes(out))
    }

    fn open(
        &self,
        purpose: Purpose,
        object_id: &[u8; 16],
        aad: &[u8],
        sealed: &SealedBytes,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let bytes = &sealed.0;
        if bytes.len() < 1 + GCM_IV_LEN + GCM_TAG_LEN || bytes.first() != Some(&SEAL_VERSION) {
            return Err(CryptoError::UnsealFailed);
        }
        let nonce = bytes
            .get(1..1 + GCM_IV_LEN)
            .ok_or(CryptoError::UnsealFailed)?;
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::UnsealFailed)?;
        let key = self.object_key(purpose, object_id)?;
        let mut buf = Zeroizing::new(
            bytes
                .get(1 + GCM_IV_LEN..)
                .ok_or(CryptoError::UnsealFailed)?
                .to_vec(),
        );
        let full_aad = associated_data(purpose, object_id, aad);
        let n = key
            .open_in_place(nonce, Aad::from(&full_aad), &mut buf)
            .map_err(|_| CryptoError::UnsealFailed)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }

    /// Seals key material for storage (or for the replication log). `aad` binds the blob to
    /// the object's metadata; the same bytes must be given to [`MasterKey::unseal_key`].
    pub fn seal_key(
        &self,
        material: &KeyMaterial,
        object_id: &[u8; 16],
        aad: &[u8],
    ) -> Result<SealedBytes, CryptoError> {
        let bytes = match material {
            KeyMaterial::Private(k) => k.to_pkcs8()?,
            KeyMaterial::Secret(k) => Zeroizing::new(k.bytes().to_vec()),
        };
        self.seal(Purpose::KeyMaterial, object_id, aad, &bytes)
    }

    /// Opens sealed key material of type `key_type`.
    pub fn unseal_key(
        &self,
        sealed: &SealedBytes,
        object_id: &[u8; 16],
        aad: &[u8],
        key_type: KeyType,
    ) -> Result<KeyMaterial, CryptoError> {
        let bytes = self.open(Purpose::KeyMaterial, object_id, aad, sealed)?;
        crate::wrap::material_from_bytes(key_type, bytes)
    }

    /// Seals arbitrary secret bytes (a password hash, say).
    pub fn seal_bytes(
        &self,
        object_id: &[u8; 16],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<SealedBytes, CryptoError> {
        self.seal(Purpose::Bytes, object_id, aad, plaintext)
    }

    /// Opens bytes sealed by [`MasterKey::seal_bytes`].
    pub fn unseal_bytes(
        &self,
        sealed: &SealedBytes,
        object_id: &[u8; 16],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.open(Purpose::Bytes, object_id, aad, sealed)
    }
}

fn associated_data(purpose: Purpose, object_id: &[u8; 16], aad: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + 16 + aad.len());
    v.push(SEAL_VERSION);
    v.push(purpose as u8);
    v.extend_from_slice(object_id);
    v.extend_from_slice(aad);
    v
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::alg::{AesSize, KeySpec};

    #[test]
    fn seal_open_and_binding() {
        let (mk, raw) = MasterKey::generate().unwrap();
        let other = MasterKey::generate().unwrap().0;
        let material = KeyMaterial::generate(KeySpec::Aes(AesSize::Aes256)).unwrap();
        let KeyMaterial::Secret(secret) = &material else {
            panic!()
        };
        let id = [1u8; 16];
        let sealed = mk.seal_key(&material, &id, b"meta").unwrap();
        // The raw key bytes are not in the sealed blob.
        assert!(
            !sealed
                .0
                .windows(16)
                .any(|w| secret.bytes().windows(16).any(|s| s == w))
        );
        let back = mk.unseal_key(&sealed, &id, b"meta", KeyType::Aes).unwrap();
        let KeyMaterial::Secret(back) = back else {
            panic!()
        };
        assert_eq!(back.check_value(), secret.check_value());
        // Wrong master key, wrong object, wrong metadata, modified bytes: all refused.
        assert!(
            other
                .unseal_key(&sealed, &id, b"meta", KeyType::Aes)
                .is_err()
        );
        assert!(
            mk.unseal_key(&sealed, &[2u8; 16], b"meta", KeyType::Aes)
                .is_err()
        );
        assert!(mk.unseal_key(&sealed, &id, b"mExa", KeyType::Aes).is_err());
        let mut bad = sealed.clone();
        bad.0[20] ^= 1;
        assert!(mk.unseal_key(&bad, &id, b"meta", KeyType::Aes).is_err());
        assert!(
            mk.unseal_key(&SealedBytes(vec![1, 2]), &id, b"", KeyType::Aes)
                .is_err()
        );
        // Reloading from the raw bytes gives the same key.
        let again = MasterKey::from_bytes(&raw[..]).unwrap();
        assert_eq!(again.fingerprint(), mk.fingerprint());
        assert_ne!(other.fingerprint(), mk.fingerprint());
        assert!(
            again
                .unseal_key(&sealed, &id, b"meta", KeyType::Aes)
                .is_ok()
        );
        assert!(MasterKey::from_bytes(&[0u8; 31]).is_err());
        // Record tags are deterministic, bound to their context, and keyed.
        let t = mk.record_tag(b"users/1", b"row");
        assert_eq!(t, again.record_tag(b"users/1", b"row"));
        assert!(mk.check_record_tag(b"users/1", b"row", &t));
        assert!(!mk.check_record_tag(b"users/2", b"row", &t));
        assert!(!mk.check_record_tag(b"users/1", b"rox", &t));
        assert!(!other.check_record_tag(b"users/1", b"row", &t));
        // Bytes and key material are separate purposes.
        let s = mk.seal_bytes(&id, b"", b"hash").unwrap();
        assert_eq!(&mk.unseal_bytes(&s, &id, b"").unwrap()[..], b"hash");
        assert!(mk.unseal_key(&s, &id, b"", KeyType::Aes).is_err());
    }
}
