//! Asymmetric keys: RSA, ECDSA and Ed25519 private keys (opaque) and their public halves.

use crate::alg::{Curve, EncryptMechanism, HashAlg, KeySpec, KeyType, RsaSize, SignMechanism};
use crate::error::CryptoError;
use crate::hash;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    PublicEncryptingKey,
};
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair as _, ParsedPublicKey,
    RsaKeyPair, VerificationAlgorithm,
};
use zeroize::Zeroizing;

/// A private key (RSA, ECDSA or Ed25519) that signs and, for RSA, decrypts.
///
/// It has no `Debug`, `Clone` or `Serialize`; its bytes leave only sealed or wrapped.
pub struct PrivateKey {
    inner: PrivateInner,
    public: PublicKey,
}

enum PrivateInner {
    Rsa {
        signer: RsaKeyPair,
        decrypter: OaepPrivateDecryptingKey,
    },
    Ec {
        curve: Curve,
        pair: EcdsaKeyPair,
    },
    Ed25519(Ed25519KeyPair),
}

fn ec_signing_alg(curve: Curve) -> &'static EcdsaSigningAlgorithm {
    match curve {
        Curve::P256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        Curve::P384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        Curve::P521 => &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
    }
}

/// The hash that the curve's aws-lc signing algorithm is bound to.
fn ec_native_hash(curve: Curve) -> HashAlg {
    match curve {
        Curve::P256 => HashAlg::Sha256,
        Curve::P384 => HashAlg::Sha384,
        Curve::P521 => HashAlg::Sha512,
    }
}

const ALL_CURVES: [Curve; 3] = [Curve::P256, Curve::P384, Curve::P521];

impl PrivateKey {
    pub(crate) fn generate_rsa(size: RsaSize) -> Result<Self, CryptoError> {
        let key_size = match size {
            RsaSize::Rsa2048 => KeySize::Rsa2048,
            RsaSize::Rsa3072 => KeySize::Rsa3072,
            RsaSize::Rsa4096 => KeySize::Rsa4096,
        };
        let pair = RsaKeyPair::generate(key_size)?;
        let der = pair.as_der()?;
        Self::from_rsa_pair(pair, der.as_ref())
    }

    pub(crate) fn generate_ec(curve: Curve) -> Result<Self, CryptoError> {
        let pair = EcdsaKeyPair::generate(ec_signing_alg(curve))?;
        Self::from_ec_pair(curve, pair)
    }

    pub(crate) fn generate_ed25519() -> Result<Self, CryptoError> {
        let pair = Ed25519KeyPair::generate()?;
        Self::from_ed25519_pair(pair)
    }

    fn from_rsa_pair(signer: RsaKeyPair, pkcs8: &[u8]) -> Result<Self, CryptoError> {
        let bits = signer.public_modulus_len() * 8;
        let size = RsaSize::from_bits(bits).ok_or(CryptoError::KeyRejected(
            "RSA modulus must be 2048, 3072 or 4096 bits",
        ))?;
        let decrypter = PrivateDecryptingKey::from_pkcs8(pkcs8)
            .map_err(|_| CryptoError::KeyRejected("RSA private key is not usable for OAEP"))?;
        let decrypter = OaepPrivateDecryptingKey::new(decrypter)?;
        let spki = signer.public_key().as_der()?;
        let public = PublicKey {
            spec: KeySpec::Rsa(size),
            spki: spki.as_ref().to_vec(),
        };
        Ok(Self {
            inner: PrivateInner::Rsa { signer, decrypter },
            public,
        })
    }

    fn from_ec_pair(curve: Curve, pair: EcdsaKeyPair) -> Result<Self, CryptoError> {
        let spki: PublicKeyX509Der<'static> = pair.public_key().as_der()?;
        let public = PublicKey {
            spec: KeySpec::Ec(curve),
            spki: spki.as_ref().to_vec(),
        };
        Ok(Self {
            inner: PrivateInner::Ec { curve, pair },
            public,
        })
    }

    /// An Ed25519 key from its 32-byte seed (for keys derived inside the HSM, never imported).
    pub(crate) fn ed25519_from_seed(seed: &[u8]) -> Result<Self, CryptoError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| CryptoError::KeyRejected("not an Ed25519 seed"))?;
        Self::from_ed25519_pair(pair)
    }

    fn from_ed25519_pair(pair: Ed25519KeyPair) -> Result<Self, CryptoError> {
        let spki: PublicKeyX509Der<'static> = pair.public_key().as_der()?;
        let public = PublicKey {
            spec: KeySpec::Ed25519,
            spki: spki.as_ref().to_vec(),
        };
        Ok(Self {
            inner: PrivateInner::Ed25519(pair),
            public,
        })
    }

    /// Parses an unencrypted PKCS#8 private key of the given type (used when unwrapping and
    /// when unsealing from the store; never exposed with clear bytes from outside the HSM).
    pub(crate) fn from_pkcs8(key_type: KeyType, der: &[u8]) -> Result<Self, CryptoError> {
        match key_type {
            KeyType::Rsa => {
                let pair = RsaKeyPair::from_pkcs8(der)
                    .map_err(|_| CryptoError::KeyRejected("not an RSA PKCS#8 private key"))?;
                Self::from_rsa_pair(pair, der)
            }
            KeyType::Ec => {
                for curve in ALL_CURVES {
                    if let Ok(pair) = EcdsaKeyPair::from_pkcs8(ec_signing_alg(curve), der) {
                        return Self::from_ec_pair(curve, pair);
                    }
                }
                Err(CryptoError::KeyRejected(
                    "not an EC PKCS#8 private key on P-256, P-384 or P-521",
                ))
            }
            KeyType::Ed25519 => {
                let pair = Ed25519KeyPair::from_pkcs8(der)
                    .map_err(|_| CryptoError::KeyRejected("not an Ed25519 PKCS#8 private key"))?;
                Self::from_ed25519_pair(pair)
            }
            KeyType::Aes | KeyType::GenericSecret => Err(CryptoError::KeyRejected(
                "a secret key type cannot hold a private key",
            )),
        }
    }

    /// The PKCS#8 (v1) encoding: only for sealing and wrapping inside this crate.
    pub(crate) fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let bytes = match &self.inner {
            PrivateInner::Rsa { signer, .. } => {
                let der: Pkcs8V1Der<'static> = signer.as_der()?;
                Zeroizing::new(der.as_ref().to_vec())
            }
            PrivateInner::Ec { pair, .. } => Zeroizing::new(pair.to_pkcs8v1()?.as_ref().to_vec()),
            PrivateInner::Ed25519(pair) => Zeroizing::new(pair.to_pkcs8v1()?.as_ref().to_vec()),
        };
        Ok(bytes)
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.public.key_type()
    }

    /// The key's type and size.
    pub fn spec(&self) -> KeySpec {
        self.public.spec
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `message` (the whole message; hashing happens here).
    pub fn sign(&self, mechanism: SignMechanism, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match (&self.inner, mechanism) {
            (PrivateInner::Rsa { signer, .. }, SignMechanism::RsaPkcs1(h)) => {
                let enc: &'static dyn signature::RsaEncoding = match h {
                    HashAlg::Sha256 => &signature::RSA_PKCS1_SHA256,
                    HashAlg::Sha384 => &signature::RSA_PKCS1_SHA384,
                    HashAlg::Sha512 => &signature::RSA_PKCS1_SHA512,
                    _ => return Err(CryptoError::Unsupported(UNSUPPORTED_SIG_HASH)),
                };
                rsa_sign(signer, enc, message)
            }
            (PrivateInner::Rsa { signer, .. }, SignMechanism::RsaPss(h)) => {
                let enc: &'static dyn signature::RsaEncoding = match h {
                    HashAlg::Sha256 => &signature::RSA_PSS_SHA256,
                    HashAlg::Sha384 => &signature::RSA_PSS_SHA384,
                    HashAlg::Sha512 => &signature::RSA_PSS_SHA512,
                    _ => return Err(CryptoError::Unsupported(UNSUPPORTED_SIG_HASH)),
                };
                rsa_sign(signer, enc, message)
            }
            (PrivateInner::Ec { curve, pair }, SignMechanism::Ecdsa(h)) => {
                if !matches!(h, HashAlg::Sha256 | HashAlg::Sha384 | HashAlg::Sha512) {
                    return Err(CryptoError::Unsupported(UNSUPPORTED_SIG_HASH));
                }
                let native = ec_native_hash(*curve);
                if h == native {
                    let rng = aws_lc_rs::rand::SystemRandom::new();
                    return Ok(pair.sign(&rng, message)?.as_ref().to_vec());
                }
                // ECDSA signs the leftmost bits of the hash, as many as the group order has
                // (FIPS 186-5 §6.4.1). The aws-lc key is bound to one hash, so the digest is
                // brought to that hash's length without changing the integer ECDSA uses:
                // cut to the leftmost bytes when longer (the order's bit length equals the
                // native hash length for P-256 and P-384), left-padded with zeros when shorter.
                let digest = hash::digest(h, message);
                let mut adapted = [0u8; 64];
                let n = native.output_len();
                let adapted = adapted.get_mut(..n).ok_or(CryptoError::Internal)?;
                if digest.len() >= n {
                    adapted.copy_from_slice(digest.get(..n).ok_or(CryptoError::Internal)?);
                } else {
                    let start = n - digest.len();
                    adapted
                        .get_mut(start..)
                        .ok_or(CryptoError::Internal)?
                        .copy_from_slice(&digest);
                }
                let imported =
                    aws_lc_rs::digest::Digest::import_less_safe(adapted, native.digest_alg())?;
                Ok(pair.sign_digest(&imported)?.as_ref().to_vec())
            }
            (PrivateInner::Ed25519(pair), SignMechanism::Ed25519) => {
                Ok(pair.try_sign(message)?.as_ref().to_vec())
            }
            (_, m) => Err(CryptoError::MechanismMismatch {
                mechanism: m.name(),
                key: self.key_type().as_str(),
            }),
        }
    }

    /// Verifies with the public half.
    pub fn verify(
        &self,
        mechanism: SignMechanism,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.public.verify(mechanism, message, signature)
    }

    /// Decrypts an RSA-OAEP ciphertext (`label` empty when `None`).
    pub fn decrypt(
        &self,
        mechanism: EncryptMechanism,
        ciphertext: &[u8],
        label: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match (&self.inner, mechanism) {
            (PrivateInner::Rsa { decrypter, .. }, EncryptMechanism::RsaOaep(h)) => {
                if ciphertext.len() != decrypter.key_size_bytes() {
                    return Err(CryptoError::DecryptFailed);
                }
                let mut out = Zeroizing::new(vec![0u8; decrypter.min_output_size()]);
                let n = decrypter
                    .decrypt(h.alg(), ciphertext, &mut out, label)
                    .map_err(|_| CryptoError::DecryptFailed)?
                    .len();
                out.truncate(n);
                Ok(out)
            }
            (_, m) => Err(CryptoError::MechanismMismatch {
                mechanism: m.name(),
                key: self.key_type().as_str(),
            }),
        }
    }
}

const UNSUPPORTED_SIG_HASH: &str = "signatures use SHA-256, SHA-384 or SHA-512";

fn rsa_sign(
    signer: &RsaKeyPair,
    enc: &'static dyn signature::RsaEncoding,
    message: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut sig = vec![0u8; signer.public_modulus_len()];
    signer.sign(enc, &rng, message, &mut sig)?;
    Ok(sig)
}

/// A public key: its type and size and its DER SubjectPublicKeyInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    spec: KeySpec,
    spki: Vec<u8>,
}

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo of an RSA (2048/3072/4096), EC (P-256/384/521) or
    /// Ed25519 key. The stored encoding is the canonical re-encoding.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        if der.len() > 4096 {
            return Err(CryptoError::InvalidLength {
                what: "public key",
                actual: der.len(),
                allowed: "at most 4096 bytes",
            });
        }
        // Raw points and raw Ed25519 keys are accepted by aws-lc's parsers; a
        // SubjectPublicKeyInfo always starts with a DER SEQUENCE.
        if der.first() != Some(&0x30) {
            return Err(CryptoError::KeyRejected(
                "expected a DER SubjectPublicKeyInfo",
            ));
        }
        if let Ok(rsa) = PublicEncryptingKey::from_der(der) {
            let size = RsaSize::from_bits(rsa.key_size_bits()).ok_or(CryptoError::KeyRejected(
                "RSA modulus must be 2048, 3072 or 4096 bits",
            ))?;
            // id-RSASSA-PSS keys parse but do not re-encode: only rsaEncryption keys are taken.
            let spki: PublicKeyX509Der<'static> = rsa.as_der().map_err(|_| {
                CryptoError::KeyRejected(
                    "only rsaEncryption RSA public keys are accepted, not id-RSASSA-PSS",
                )
            })?;
            return Ok(Self {
                spec: KeySpec::Rsa(size),
                spki: spki.as_ref().to_vec(),
            });
        }
        for curve in ALL_CURVES {
            if let Ok(parsed) = ParsedPublicKey::new(ecdsa_verify_alg(curve, HashAlg::Sha256), der)
            {
                let spki: PublicKeyX509Der<'static> = parsed.as_der()?;
                return Ok(Self {
                    spec: KeySpec::Ec(curve),
                    spki: spki.as_ref().to_vec(),
                });
            }
        }
        if let Ok(parsed) = ParsedPublicKey::new(&signature::ED25519, der) {
            let spki: PublicKeyX509Der<'static> = parsed.as_der()?;
            return Ok(Self {
                spec: KeySpec::Ed25519,
                spki: spki.as_ref().to_vec(),
            });
        }
        Err(CryptoError::KeyRejected(
            "not an RSA 2048/3072/4096, EC P-256/P-384/P-521 or Ed25519 public key",
        ))
    }

    /// Parses a PEM `PUBLIC KEY` block.
    pub fn from_pem(pem_text: &str) -> Result<Self, CryptoError> {
        let block =
            pem::parse(pem_text).map_err(|_| CryptoError::KeyRejected("malformed PEM text"))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(CryptoError::KeyRejected(
                "expected a PEM block labelled PUBLIC KEY",
            ));
        }
        Self::from_der(block.contents())
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.spec.key_type()
    }

    /// The key's type and size.
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn to_der(&self) -> &[u8] {
        &self.spki
    }

    /// The PEM `PUBLIC KEY` encoding.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki.clone()))
    }

    /// The key check value as CloudHSM defines it for asymmetric keys: the first three bytes of
    /// the SHA-1 hash of the public key (here: of its DER SubjectPublicKeyInfo).
    pub fn check_value(&self) -> [u8; 3] {
        hash::first3(&hash::digest(HashAlg::Sha1, &self.spki))
    }

    /// Verifies `signature` over `message`.
    pub fn verify(
        &self,
        mechanism: SignMechanism,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        let alg: &'static dyn VerificationAlgorithm = match (self.spec, mechanism) {
            (KeySpec::Rsa(_), SignMechanism::RsaPkcs1(h)) => match h {
                HashAlg::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                HashAlg::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                HashAlg::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                _ => return Err(CryptoError::Unsupported(UNSUPPORTED_SIG_HASH)),
            },
            (KeySpec::Rsa(_), SignMechanism::RsaPss(h)) => match h {
                HashAlg::Sha256 => &signature::RSA_PSS_2048_8192_SHA256,
                HashAlg::Sha384 => &signature::RSA_PSS_2048_8192_SHA384,
                HashAlg::Sha512 => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return Err(CryptoError::Unsupported(UNSUPPORTED_SIG_HASH)),
            },
            (KeySpec::Ec(curve), SignMechanism::Ecdsa(h)) => {
                if !matches!(h, HashAlg::Sha256 | HashAlg::Sha384 | HashAlg::Sha512) {
                    return Err(CryptoError::Unsupported(UNSUPPORTED_SIG_HASH));
                }
                ecdsa_verify_alg(curve, h)
            }
            (KeySpec::Ed25519, SignMechanism::Ed25519) => &signature::ED25519,
            (_, m) => {
                return Err(CryptoError::MechanismMismatch {
                    mechanism: m.name(),
                    key: self.key_type().as_str(),
                });
            }
        };
        let parsed = ParsedPublicKey::new(alg, &self.spki)
            .map_err(|_| CryptoError::KeyRejected("stored public key does not parse"))?;
        parsed
            .verify_sig(message, signature)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Encrypts with RSA-OAEP (`label` empty when `None`).
    pub fn encrypt(
        &self,
        mechanism: EncryptMechanism,
        plaintext: &[u8],
        label: Option<&[u8]>,
    ) -> Result<Vec<u8>, CryptoError> {
        match (self.spec, mechanism) {
            (KeySpec::Rsa(_), EncryptMechanism::RsaOaep(h)) => {
                let key = PublicEncryptingKey::from_der(&self.spki)
                    .map_err(|_| CryptoError::KeyRejected("stored public key does not parse"))?;
                let key = OaepPublicEncryptingKey::new(key)?;
                let max = key.max_plaintext_size(h.alg());
                if plaintext.len() > max {
                    return Err(CryptoError::InvalidLength {
                        what: "RSA-OAEP plaintext",
                        actual: plaintext.len(),
                        allowed: "at most modulus bytes - 2 x hash bytes - 2",
                    });
                }
                let mut out = vec![0u8; key.ciphertext_size()];
                let n = key.encrypt(h.alg(), plaintext, &mut out, label)?.len();
                out.truncate(n);
                Ok(out)
            }
            (_, m) => Err(CryptoError::MechanismMismatch {
                mechanism: m.name(),
                key: self.key_type().as_str(),
            }),
        }
    }

    /// Largest payload RSA-OAEP with `hash` can encrypt under this key, if it is an RSA key.
    pub(crate) fn oaep_capacity(&self, hash: crate::alg::OaepHash) -> Option<usize> {
        match self.spec {
            KeySpec::Rsa(size) => {
                (usize::from(size.bits()) / 8).checked_sub(2 * hash.hash_len() + 2)
            }
            _ => None,
        }
    }
}

fn ecdsa_verify_alg(curve: Curve, h: HashAlg) -> &'static dyn VerificationAlgorithm {
    match (curve, h) {
        (Curve::P256, HashAlg::Sha384) => &signature::ECDSA_P256_SHA384_ASN1,
        (Curve::P256, HashAlg::Sha512) => &signature::ECDSA_P256_SHA512_ASN1,
        (Curve::P256, _) => &signature::ECDSA_P256_SHA256_ASN1,
        (Curve::P384, HashAlg::Sha256) => &signature::ECDSA_P384_SHA256_ASN1,
        (Curve::P384, HashAlg::Sha512) => &signature::ECDSA_P384_SHA512_ASN1,
        (Curve::P384, _) => &signature::ECDSA_P384_SHA384_ASN1,
        (Curve::P521, HashAlg::Sha256) => &signature::ECDSA_P521_SHA256_ASN1,
        (Curve::P521, HashAlg::Sha384) => &signature::ECDSA_P521_SHA384_ASN1,
        (Curve::P521, _) => &signature::ECDSA_P521_SHA512_ASN1,
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::alg::OaepHash;

    #[test]
    fn ecdsa_every_curve_and_hash_signs_and_verifies() {
        for curve in ALL_CURVES {
            let key = PrivateKey::generate_ec(curve).unwrap();
            for h in [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
                let sig = key.sign(SignMechanism::Ecdsa(h), b"message").unwrap();
                key.public_key()
                    .verify(SignMechanism::Ecdsa(h), b"message", &sig)
                    .unwrap_or_else(|e| panic!("{curve} {h}: {e}"));
                // A signature made for one hash must not verify under another.
                for other in [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
                    if other != h {
                        assert!(
                            key.public_key()
                                .verify(SignMechanism::Ecdsa(other), b"message", &sig)
                                .is_err()
                        );
                    }
                }
                assert_eq!(
                    key.public_key()
                        .verify(SignMechanism::Ecdsa(h), b"massage", &sig),
                    Err(CryptoError::BadSignature)
                );
            }
        }
    }

    #[test]
    fn rsa_pkcs1_pss_and_oaep() {
        let key = PrivateKey::generate_rsa(RsaSize::Rsa2048).unwrap();
        for h in [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
            for m in [SignMechanism::RsaPkcs1(h), SignMechanism::RsaPss(h)] {
                let sig = key.sign(m, b"hello").unwrap();
                assert_eq!(sig.len(), 256);
                key.verify(m, b"hello", &sig).unwrap();
                assert!(key.verify(m, b"hellO", &sig).is_err());
            }
        }
        for h in [OaepHash::Sha1, OaepHash::Sha256] {
            let m = EncryptMechanism::RsaOaep(h);
            let ct = key
                .public_key()
                .encrypt(m, b"secret", Some(b"lbl"))
                .unwrap();
            assert_eq!(&key.decrypt(m, &ct, Some(b"lbl")).unwrap()[..], b"secret");
            assert_eq!(
                key.decrypt(m, &ct, None).err(),
                Some(CryptoError::DecryptFailed)
            );
        }
        assert!(matches!(
            key.sign(SignMechanism::RsaPkcs1(HashAlg::Sha1), b"x"),
            Err(CryptoError::Unsupported(_))
        ));
        assert!(matches!(
            key.sign(SignMechanism::Ed25519, b"x"),
            Err(CryptoError::MechanismMismatch { .. })
        ));
    }

    #[test]
    fn pkcs8_round_trip_and_public_key_parse() {
        let specs: [(KeyType, PrivateKey); 3] = [
            (
                KeyType::Rsa,
                PrivateKey::generate_rsa(RsaSize::Rsa2048).unwrap(),
            ),
            (KeyType::Ec, PrivateKey::generate_ec(Curve::P384).unwrap()),
            (KeyType::Ed25519, PrivateKey::generate_ed25519().unwrap()),
        ];
        for (t, key) in specs {
            let der = key.to_pkcs8().unwrap();
            let back = PrivateKey::from_pkcs8(t, &der).unwrap();
            assert_eq!(back.public_key(), key.public_key());
            let parsed = PublicKey::from_der(key.public_key().to_der()).unwrap();
            assert_eq!(&parsed, key.public_key());
            let pem = key.public_key().to_pem();
            assert_eq!(PublicKey::from_pem(&pem).unwrap(), parsed);
            // The wrong type is refused.
            let wrong = if t == KeyType::Rsa {
                KeyType::Ec
            } else {
                KeyType::Rsa
            };
            assert!(PrivateKey::from_pkcs8(wrong, &der).is_err());
        }
        assert!(PublicKey::from_der(b"").is_err());
        assert!(PublicKey::from_der(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
    }

    #[test]
    fn ed25519_signs() {
        let key = PrivateKey::generate_ed25519().unwrap();
        let sig = key.sign(SignMechanism::Ed25519, b"m").unwrap();
        assert_eq!(sig.len(), 64);
        key.verify(SignMechanism::Ed25519, b"m", &sig).unwrap();
        assert_eq!(key.public_key().check_value().len(), 3);
    }
}
