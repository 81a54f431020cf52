//! Key derivation: HKDF and the NIST SP 800-108 counter-mode KDF, from a secret key into a new
//! secret key that never leaves the HSM.

use crate::alg::{HashAlg, KdfMechanism, KeySpec};
use crate::error::CryptoError;
use crate::secret::SecretKey;
use aws_lc_rs::{hkdf, kdf};
use zeroize::Zeroizing;

/// Longest salt or info accepted.
const MAX_KDF_INPUT: usize = 1024;

struct OutLen(usize);

impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// Derives a new AES key or generic secret of `target`'s size from `base`.
pub fn derive_key(
    base: &SecretKey,
    mechanism: &KdfMechanism,
    target: KeySpec,
) -> Result<SecretKey, CryptoError> {
    let len = match target {
        KeySpec::Aes(s) => s.bytes(),
        KeySpec::GenericSecret(n) => usize::from(n),
        _ => {
            return Err(CryptoError::Unsupported(
                "derivation makes AES keys or generic secrets only",
            ));
        }
    };
    let mut out = Zeroizing::new(vec![0u8; len]);
    match mechanism {
        KdfMechanism::Hkdf { hash, salt, info } => {
            check_input("HKDF salt", salt)?;
            check_input("HKDF info", info)?;
            let alg = match hash {
                HashAlg::Sha256 => hkdf::HKDF_SHA256,
                HashAlg::Sha384 => hkdf::HKDF_SHA384,
                HashAlg::Sha512 => hkdf::HKDF_SHA512,
                _ => {
                    return Err(CryptoError::Unsupported(
                        "HKDF uses SHA-256, SHA-384 or SHA-512",
                    ));
                }
            };
            let prk = hkdf::Salt::new(alg, salt).extract(base.bytes());
            let info_parts = [info.as_slice()];
            prk.expand(&info_parts, OutLen(len))?.fill(&mut out)?;
        }
        KdfMechanism::Sp800108Counter { hash, info } => {
            check_input("SP 800-108 fixed info", info)?;
            let id = match hash {
                HashAlg::Sha256 => kdf::KbkdfCtrHmacAlgorithmId::Sha256,
                HashAlg::Sha384 => kdf::KbkdfCtrHmacAlgorithmId::Sha384,
                HashAlg::Sha512 => kdf::KbkdfCtrHmacAlgorithmId::Sha512,
                _ => {
                    return Err(CryptoError::Unsupported(
                        "SP 800-108 uses HMAC with SHA-256, SHA-384 or SHA-512",
                    ));
                }
            };
            let alg = kdf::get_kbkdf_ctr_hmac_algorithm(id).ok_or(CryptoError::Internal)?;
            kdf::kbkdf_ctr_hmac(alg, base.bytes(), info, &mut out)?;
        }
    }
    SecretKey::from_bytes(target.key_type(), out)
}

fn check_input(what: &'static str, bytes: &[u8]) -> Result<(), CryptoError> {
    if bytes.len() > MAX_KDF_INPUT {
        return Err(CryptoError::InvalidLength {
            what,
            actual: bytes.len(),
            allowed: "at most 1024 bytes",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::alg::{AesSize, EncryptMechanism, KeyType};

    fn generic(bytes: &[u8]) -> SecretKey {
        SecretKey::from_bytes(KeyType::GenericSecret, Zeroizing::new(bytes.to_vec())).unwrap()
    }

    #[test]
    fn hkdf_rfc5869_case_1() {
        // RFC 5869 A.1 uses a 22-byte IKM; the OKM's first 32 bytes become an AES-256 key, whose
        // check value we compare with one computed from the published OKM.
        let ikm = [0x0bu8; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let okm = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf";
        let m = KdfMechanism::Hkdf {
            hash: HashAlg::Sha256,
            salt,
            info,
        };
        let derived = derive_key(&generic(&ikm), &m, KeySpec::GenericSecret(32)).unwrap();
        let expected = generic(&hex::decode(okm).unwrap());
        let mech = crate::alg::SignMechanism::Hmac(HashAlg::Sha256);
        assert_eq!(
            derived.sign(mech, b"x").unwrap(),
            expected.sign(mech, b"x").unwrap()
        );
    }

    #[test]
    fn sp800_108_is_deterministic_and_depends_on_info() {
        let base = generic(&[7u8; 32]);
        let m1 = KdfMechanism::Sp800108Counter {
            hash: HashAlg::Sha256,
            info: b"a".to_vec(),
        };
        let m2 = KdfMechanism::Sp800108Counter {
            hash: HashAlg::Sha256,
            info: b"b".to_vec(),
        };
        let k1 = derive_key(&base, &m1, KeySpec::Aes(AesSize::Aes256)).unwrap();
        let k1b = derive_key(&base, &m1, KeySpec::Aes(AesSize::Aes256)).unwrap();
        let k2 = derive_key(&base, &m2, KeySpec::Aes(AesSize::Aes256)).unwrap();
        assert_eq!(k1.check_value(), k1b.check_value());
        assert_ne!(k1.check_value(), k2.check_value());
        let ct = k1.encrypt(EncryptMechanism::AesGcm, b"p", b"").unwrap();
        assert!(k1b.decrypt(EncryptMechanism::AesGcm, &ct, b"").is_ok());
        assert!(derive_key(&base, &m1, KeySpec::Ed25519).is_err());
    }
}
