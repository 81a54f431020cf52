//! Wycheproof test vectors run through the engine's API: keys enter by public-key import or by
//! unwrapping a blob wrapped outside, and every verdict comes from `Engine::verify`,
//! `Engine::decrypt` or `Engine::unwrap_key`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout
)]

mod support;

use std::collections::HashMap;

use sealgate_hsm_core::crypto::client::{ClientWrappingKey, wrap_for_import};
use sealgate_hsm_core::crypto::{
    AesSize, CryptoError, EncryptMechanism, HashAlg, KeySpec, KeyType, OaepHash, PublicKey,
    RsaSize, SignMechanism, WrapMechanism,
};
use sealgate_hsm_core::{EngineError, KeyHandle, SessionId};
use support::*;
use wycheproof::{HashFunction, Mgf, TestResult};

/// How private and secret keys from the vectors are wrapped for import.
const IMPORT: WrapMechanism = WrapMechanism::RsaAes {
    oaep: OaepHash::Sha256,
    aes: AesSize::Aes256,
};

/// Verdicts for one family of vectors.
struct Tally {
    family: &'static str,
    valid_ok: usize,
    invalid_rejected: usize,
    acceptable_accepted: usize,
    acceptable_rejected: usize,
    skipped: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(family: &'static str) -> Self {
        Self {
            family,
            valid_ok: 0,
            invalid_rejected: 0,
            acceptable_accepted: 0,
            acceptable_rejected: 0,
            skipped: 0,
            failures: Vec::new(),
        }
    }

    /// Records one vector's outcome. `supported` is false when the vector's parameters are
    /// ones the engine refuses on purpose: a refusal then counts as skipped, not as a verdict.
    fn record(
        &mut self,
        set: &str,
        tc_id: usize,
        expected: TestResult,
        outcome: Result<(), String>,
        supported: bool,
    ) {
        match (expected, outcome) {
            (TestResult::Valid, Ok(())) => self.valid_ok += 1,
            (TestResult::Valid, Err(_)) if !supported => self.skipped += 1,
            (TestResult::Valid, Err(e)) => self
                .failures
                .push(format!("{set} tc {tc_id}: valid vector failed: {e}")),
            (TestResult::Invalid, Ok(())) => self
                .failures
                .push(format!("{set} tc {tc_id}: invalid vector accepted")),
            (TestResult::Invalid, Err(_)) if !supported => self.skipped += 1,
            (TestResult::Invalid, Err(_)) => self.invalid_rejected += 1,
            (TestResult::Acceptable, Ok(())) => self.acceptable_accepted += 1,
            (TestResult::Acceptable, Err(_)) => self.acceptable_rejected += 1,
        }
    }

    /// Counts vectors not run: their parameters cannot be expressed through the engine's API
    /// or were refused at key import.
    fn skip(&mut self, n: usize) {
        self.skipped += n;
    }

    fn fail(&mut self, message: String) {
        self.failures.push(message);
    }

    /// Prints the counts and checks that nothing failed and that enough vectors ran.
    fn finish(self, min_run: usize, min_valid: usize) {
        let acceptable = self.acceptable_accepted + self.acceptable_rejected;
        println!(
            "wycheproof {}: {} valid ok, {} invalid rejected, {} acceptable ({} accepted, {} \
             rejected), {} skipped (unsupported params)",
            self.family,
            self.valid_ok,
            self.invalid_rejected,
            acceptable,
            self.acceptable_accepted,
            self.acceptable_rejected,
            self.skipped,
        );
        assert!(
            self.failures.is_empty(),
            "wycheproof {}: {} failures:\n{}",
            self.family,
            self.failures.len(),
            self.failures.join("\n")
        );
        let run = self.valid_ok + self.invalid_rejected + acceptable;
        assert!(
            run >= min_run,
            "wycheproof {}: only {run} vectors ran, expected at least {min_run}",
            self.family
        );
        assert!(
            self.valid_ok >= min_valid,
            "wycheproof {}: only {} valid vectors verified, expected at least {min_valid}",
            self.family,
            self.valid_ok
        );
    }
}

/// A fixture with a logged-in crypto user.
fn crypto_user() -> (Fixture, SessionId) {
    let mut fx = Fixture::activated();
    let s = fx.cu("wycheproof");
    (fx, s)
}

fn err_text(e: EngineError) -> String {
    e.to_string()
}

/// The engine's hash for signatures (SHA-256/384/512 only).
fn sig_hash(h: HashFunction) -> Option<HashAlg> {
    match h {
        HashFunction::Sha2_256 => Some(HashAlg::Sha256),
        HashFunction::Sha2_384 => Some(HashAlg::Sha384),
        HashFunction::Sha2_512 => Some(HashAlg::Sha512),
        _ => None,
    }
}

/// The engine's OAEP hash, when the MGF1 hash is the same (the only OAEP the engine offers).
fn oaep_hash(h: HashFunction, mgf: Mgf, mgf_hash: HashFunction) -> Option<OaepHash> {
    if mgf != Mgf::Mgf1 || h != mgf_hash {
        return None;
    }
    match h {
        HashFunction::Sha1 => Some(OaepHash::Sha1),
        HashFunction::Sha2_256 => Some(OaepHash::Sha256),
        HashFunction::Sha2_384 => Some(OaepHash::Sha384),
        HashFunction::Sha2_512 => Some(OaepHash::Sha512),
        _ => None,
    }
}

fn rsa_size_supported(bits: usize) -> bool {
    RsaSize::from_bits(bits).is_some()
}

/// Imports a public key as a session key usable for `verify`.
fn import_public(fx: &mut Fixture, s: SessionId, der: &[u8]) -> Result<KeyHandle, EngineError> {
    let now = fx.now();
    let step = fx.hsm.engine_mut().import_public_key(
        s,
        der,
        &tpl(&[("token", "false"), ("verify", "true")]),
        now,
    )?;
    let handles: Vec<KeyHandle> = fx.hsm.complete(s, step).map_err(engine_err)?;
    Ok(handles[0])
}

fn delete(fx: &mut Fixture, s: SessionId, k: KeyHandle) {
    let now = fx.now();
    let step = fx.hsm.engine_mut().delete_key(s, k, now).unwrap();
    fx.hsm.complete::<()>(s, step).unwrap();
}

/// Whether a group's public key must import, or the engine refuses it on purpose.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyExpect {
    /// The key is one the engine accepts.
    Accepted,
    /// The engine refuses keys like this (an RSA modulus size it does not offer).
    Refused,
}

/// One group of signature vectors: its public key and the mechanism to verify with (`None`
/// when the engine offers no mechanism for the group's parameters).
struct SigGroup<'a> {
    set: &'a str,
    der: &'a [u8],
    key: KeyExpect,
    mechanism: Option<SignMechanism>,
}

/// One signature vector.
struct SigVector<'a> {
    tc_id: usize,
    result: TestResult,
    msg: &'a [u8],
    sig: &'a [u8],
}

/// Imports one group's public key and checks every signature in it with `engine.verify`.
fn verify_group<'a>(
    fx: &mut Fixture,
    s: SessionId,
    tally: &mut Tally,
    group: &SigGroup<'_>,
    vectors: impl ExactSizeIterator<Item = SigVector<'a>>,
) {
    let set = group.set;
    let Some(mechanism) = group.mechanism else {
        tally.skip(vectors.len());
        return;
    };
    let handle = match (import_public(fx, s, group.der), group.key) {
        (Ok(h), KeyExpect::Accepted) => h,
        (Err(EngineError::Crypto(CryptoError::KeyRejected(_))), KeyExpect::Refused) => {
            tally.skip(vectors.len());
            return;
        }
        (Err(e), KeyExpect::Refused) => {
            tally.fail(format!("{set}: refused with an unclear error: {e}"));
            tally.skip(vectors.len());
            return;
        }
        (Ok(h), KeyExpect::Refused) => {
            tally.fail(format!(
                "{set}: a key the engine should refuse was imported"
            ));
            tally.skip(vectors.len());
            delete(fx, s, h);
            return;
        }
        (Err(e), KeyExpect::Accepted) => {
            tally.fail(format!("{set}: public key import failed: {e}"));
            tally.skip(vectors.len());
            return;
        }
    };
    for v in vectors {
        let outcome = fx
            .hsm
            .engine()
            .verify(s, handle, mechanism, v.msg, v.sig)
            .map_err(err_text);
        tally.record(set, v.tc_id, v.result, outcome, true);
    }
    delete(fx, s, handle);
}

#[test]
fn ecdsa_verify() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let (mut fx, s) = crypto_user();
    let mut tally = Tally::new("ecdsa");
    for name in [
        TestName::EcdsaSecp256r1Sha256,
        TestName::EcdsaSecp256r1Sha512,
        TestName::EcdsaSecp384r1Sha256,
        TestName::EcdsaSecp384r1Sha384,
        TestName::EcdsaSecp384r1Sha512,
        TestName::EcdsaSecp521r1Sha512,
    ] {
        let set = TestSet::load(name).unwrap();
        let label = format!("{name:?}");
        for group in &set.test_groups {
            let mechanism = sig_hash(group.hash).map(SignMechanism::Ecdsa);
            let vectors = group.tests.iter().map(|t| SigVector {
                tc_id: t.tc_id,
                result: t.result,
                msg: &t.msg,
                sig: &t.sig,
            });
            verify_group(
                &mut fx,
                s,
                &mut tally,
                &SigGroup {
                    set: &label,
                    der: &group.der,
                    key: KeyExpect::Accepted,
                    mechanism,
                },
                vectors,
            );
        }
    }
    tally.finish(3_000, 1_200);
}

#[test]
fn ed25519_verify() {
    use wycheproof::eddsa::{TestName, TestSet};
    let (mut fx, s) = crypto_user();
    let mut tally = Tally::new("ed25519");
    let set = TestSet::load(TestName::Ed25519).unwrap();
    for group in &set.test_groups {
        let vectors = group.tests.iter().map(|t| SigVector {
            tc_id: t.tc_id,
            result: t.result,
            msg: &t.msg,
            sig: &t.sig,
        });
        verify_group(
            &mut fx,
            s,
            &mut tally,
            &SigGroup {
                set: "Ed25519",
                der: &group.der,
                key: KeyExpect::Accepted,
                mechanism: Some(SignMechanism::Ed25519),
            },
            vectors,
        );
    }
    tally.finish(150, 88);
}

#[test]
fn rsa_pkcs1_verify() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let (mut fx, s) = crypto_user();
    let mut tally = Tally::new("rsa pkcs#1 v1.5");
    for name in [
        TestName::Rsa2048Sha256,
        TestName::Rsa2048Sha384,
        TestName::Rsa2048Sha512,
        TestName::Rsa3072Sha256,
        TestName::Rsa3072Sha384,
        TestName::Rsa3072Sha512,
        TestName::Rsa4096Sha256,
        TestName::Rsa4096Sha384,
        TestName::Rsa4096Sha512,
        // 8192-bit keys are refused at import: they count as skipped.
        TestName::Rsa8192Sha256,
        TestName::Rsa8192Sha384,
        TestName::Rsa8192Sha512,
    ] {
        let set = TestSet::load(name).unwrap();
        let label = format!("{name:?}");
        for group in &set.test_groups {
            let key = if rsa_size_supported(group.key_size) {
                KeyExpect::Accepted
            } else {
                KeyExpect::Refused
            };
            let mechanism = sig_hash(group.hash).map(SignMechanism::RsaPkcs1);
            let vectors = group.tests.iter().map(|t| SigVector {
                tc_id: t.tc_id,
                result: t.result,
                msg: &t.msg,
                sig: &t.sig,
            });
            verify_group(
                &mut fx,
                s,
                &mut tally,
                &SigGroup {
                    set: &label,
                    der: &group.der,
                    key,
                    mechanism,
                },
                vectors,
            );
        }
    }
    tally.finish(2_300, 60);
}

#[test]
fn rsa_pss_verify() {
    use wycheproof::rsa_pss_verify::{TestGroupTypeId, TestName, TestSet};
    let (mut fx, s) = crypto_user();
    let mut tally = Tally::new("rsa-pss");
    for name in [
        TestName::RsaPss2048Sha256Mgf1SaltLen32,
        TestName::RsaPss2048Sha384Mgf1SaltLen48,
        TestName::RsaPss3072Sha256Mgf1SaltLen32,
        TestName::RsaPss4096Sha256Mgf1SaltLen32,
        TestName::RsaPss4096Sha384Mgf1SaltLen48,
        TestName::RsaPss4096Sha512Mgf1SaltLen64,
        // One group per parameter combination; only sLen = hLen with MGF1 on the same hash
        // is a mechanism the engine offers, the rest count as skipped.
        TestName::RsaPssmisc,
        // The same vectors with the key as an id-RSASSA-PSS SubjectPublicKeyInfo (with PSS
        // parameters): the engine takes only rsaEncryption keys, so these count as skipped.
        TestName::RsaPss2048Sha256Mgf1SaltLen32WithParams,
        TestName::RsaPss3072Sha256Mgf1SaltLen32WithParams,
        TestName::RsaPss4096Sha512Mgf1SaltLen64WithParams,
    ] {
        let set = TestSet::load(name).unwrap();
        let label = format!("{name:?}");
        for group in &set.test_groups {
            let pss_key = group.test_type == TestGroupTypeId::RsaPssVerifyWithParam;
            let key = if rsa_size_supported(group.key_size) && !pss_key {
                KeyExpect::Accepted
            } else {
                KeyExpect::Refused
            };
            let mechanism = sig_hash(group.hash)
                .filter(|h| {
                    group.mgf == Mgf::Mgf1
                        && group.mgf_hash == Some(group.hash)
                        && group.salt_size == h.output_len()
                })
                .map(SignMechanism::RsaPss);
            let vectors = group.tests.iter().map(|t| SigVector {
                tc_id: t.tc_id,
                result: t.result,
                msg: &t.msg,
                sig: &t.sig,
            });
            verify_group(
                &mut fx,
                s,
                &mut tally,
                &SigGroup {
                    set: &label,
                    der: &group.der,
                    key,
                    mechanism,
                },
                vectors,
            );
        }
    }
    tally.finish(780, 500);
}

// ----- keys that enter wrapped ------------------------------------------------------------

/// An engine RSA key pair whose private half unwraps imported keys, and its public half as
/// the client sees it.
struct Importer {
    unwrapping: KeyHandle,
    public: PublicKey,
}

impl Importer {
    fn new(fx: &mut Fixture, s: SessionId) -> Self {
        let (public, private) = fx.gen_pair(
            s,
            KeySpec::Rsa(RsaSize::Rsa3072),
            &tpl(&[("token", "false")]),
            &tpl(&[("token", "false"), ("unwrap", "true")]),
        );
        let exported = fx.hsm.engine().export_public_key(s, public).unwrap();
        // The client gets the public key as PEM, as it would from the CLI.
        let public = PublicKey::from_pem(&exported.to_pem()).unwrap();
        Self {
            unwrapping: private,
            public,
        }
    }

    /// Wraps key bytes outside the engine (the client's side of an import) and unwraps them
    /// into the engine as a session key with `attributes`.
    fn import(
        &self,
        fx: &mut Fixture,
        s: SessionId,
        key_type: KeyType,
        bytes: &[u8],
        attributes: &[(&str, &str)],
    ) -> Result<KeyHandle, String> {
        let wrapped = client_wrap(&self.public, key_type, bytes)?;
        let mut pairs = vec![("token", "false")];
        pairs.extend_from_slice(attributes);
        let now = fx.now();
        let step = fx
            .hsm
            .engine_mut()
            .unwrap_key(
                s,
                self.unwrapping,
                IMPORT,
                &wrapped,
                key_type,
                &tpl(&pairs),
                now,
            )
            .map_err(err_text)?;
        let handles: Vec<KeyHandle> = fx
            .hsm
            .complete(s, step)
            .map_err(|e| err_text(engine_err(e)))?;
        Ok(handles[0])
    }
}

/// The client's side of an import: hsm-core's clippy configuration bans this function because
/// the engine must never handle clear key bytes; this test plays the client, which owns them.
#[allow(clippy::disallowed_methods)]
fn client_wrap(hsm_public: &PublicKey, key_type: KeyType, bytes: &[u8]) -> Result<Vec<u8>, String> {
    wrap_for_import(
        IMPORT,
        ClientWrappingKey::RsaPublic(hsm_public),
        key_type,
        bytes,
    )
    .map_err(|e| format!("client-side wrap refused the key: {e}"))
}

#[test]
fn rsa_oaep_decrypt() {
    use wycheproof::rsa_oaep::{TestName, TestSet};
    let (mut fx, s) = crypto_user();
    let importer = Importer::new(&mut fx, s);
    let mut tally = Tally::new("rsa-oaep");
    for name in [
        TestName::Rsa2048Sha1Mgf1Sha1,
        TestName::Rsa2048Sha256Mgf1Sha256,
        TestName::Rsa2048Sha384Mgf1Sha384,
        TestName::Rsa2048Sha512Mgf1Sha512,
        TestName::Rsa3072Sha256Mgf1Sha256,
        TestName::Rsa3072Sha512Mgf1Sha512,
        TestName::Rsa4096Sha256Mgf1Sha256,
        TestName::Rsa4096Sha512Mgf1Sha512,
        // Many key sizes and hash pairs; those the engine does not offer count as skipped.
        TestName::RsaMisc,
    ] {
        let set = TestSet::load(name).unwrap();
        let label = format!("{name:?}");
        for group in &set.test_groups {
            let Some(hash) = oaep_hash(group.hash, group.mgf, group.mgf_hash) else {
                tally.skip(group.tests.len());
                continue;
            };
            let imported = importer.import(
                &mut fx,
                s,
                KeyType::Rsa,
                &group.pkcs8,
                &[("decrypt", "true")],
            );
            let key = match (imported, rsa_size_supported(group.key_size)) {
                (Ok(k), true) => k,
                // Moduli other than 2048/3072/4096 bits are refused (by the client-side check,
                // which is the engine's own PKCS#8 parser).
                (Err(_), false) => {
                    tally.skip(group.tests.len());
                    continue;
                }
                (Ok(k), false) => {
                    tally.fail(format!(
                        "{label}: a {}-bit key was imported",
                        group.key_size
                    ));
                    tally.skip(group.tests.len());
                    delete(&mut fx, s, k);
                    continue;
                }
                (Err(e), true) => {
                    tally.fail(format!("{label}: private key import failed: {e}"));
                    tally.skip(group.tests.len());
                    continue;
                }
            };
            for t in &group.tests {
                let outcome = fx
                    .hsm
                    .engine()
                    .decrypt(s, key, EncryptMechanism::RsaOaep(hash), &t.ct, &t.label)
                    .map_err(err_text)
                    .and_then(|plain| {
                        if plain == *t.pt {
                            Ok(())
                        } else {
                            Err("decrypted to the wrong plaintext".to_string())
                        }
                    });
                tally.record(&label, t.tc_id, t.result, outcome, true);
            }
            delete(&mut fx, s, key);
        }
    }
    tally.finish(300, 160);
}

#[test]
fn aes_gcm_decrypt() {
    use wycheproof::aead::{TestName, TestSet};
    let (mut fx, s) = crypto_user();
    let importer = Importer::new(&mut fx, s);
    let mut tally = Tally::new("aes-gcm");
    let set = TestSet::load(TestName::AesGcm).unwrap();
    for group in &set.test_groups {
        // The engine's layout is a 12-byte IV and a 16-byte tag; other sizes cannot be
        // expressed through its API.
        if group.nonce_size != 96 || group.tag_size != 128 {
            tally.skip(group.tests.len());
            continue;
        }
        let mut keys: HashMap<Vec<u8>, KeyHandle> = HashMap::new();
        for t in &group.tests {
            let key = match keys.get(&*t.key) {
                Some(k) => *k,
                None => {
                    match importer.import(&mut fx, s, KeyType::Aes, &t.key, &[("decrypt", "true")])
                    {
                        Ok(k) => {
                            keys.insert(t.key.to_vec(), k);
                            k
                        }
                        Err(e) => {
                            tally.fail(format!("AesGcm tc {}: key import failed: {e}", t.tc_id));
                            continue;
                        }
                    }
                }
            };
            let mut input = t.nonce.to_vec();
            input.extend_from_slice(&t.ct);
            input.extend_from_slice(&t.tag);
            let outcome = fx
                .hsm
                .engine()
                .decrypt(s, key, EncryptMechanism::AesGcm, &input, &t.aad)
                .map_err(err_text)
                .and_then(|plain| {
                    if plain == *t.pt {
                        Ok(())
                    } else {
                        Err("decrypted to the wrong plaintext".to_string())
                    }
                });
            tally.record("AesGcm", t.tc_id, t.result, outcome, true);
        }
        for k in keys.into_values() {
            delete(&mut fx, s, k);
        }
    }
    tally.finish(190, 110);
}

#[test]
fn aes_key_wrap_unwrap() {
    use wycheproof::keywrap::{TestName, TestSet};
    let (mut fx, s) = crypto_user();
    let importer = Importer::new(&mut fx, s);
    let mut tally = Tally::new("aes key wrap");
    for (name, mechanism) in [
        (TestName::AesKeyWrap, WrapMechanism::AesKeyWrap),
        (
            TestName::AesKeyWrapWithPadding,
            WrapMechanism::AesKeyWrapPad,
        ),
    ] {
        let set = TestSet::load(name).unwrap();
        let label = format!("{name:?}");
        for group in &set.test_groups {
            // AES key wrap is offered with 128- and 256-bit wrapping keys; AES-192 KEKs are
            // imported but refused when used.
            let kek_supported = matches!(group.key_size, 128 | 256);
            let mut keks: HashMap<Vec<u8>, KeyHandle> = HashMap::new();
            for t in &group.tests {
                let kek = match keks.get(&*t.key) {
                    Some(k) => *k,
                    None => match importer.import(
                        &mut fx,
                        s,
                        KeyType::Aes,
                        &t.key,
                        &[("wrap", "true"), ("unwrap", "true")],
                    ) {
                        Ok(k) => {
                            keks.insert(t.key.to_vec(), k);
                            k
                        }
                        Err(e) => {
                            tally.fail(format!("{label} tc {}: KEK import failed: {e}", t.tc_id));
                            continue;
                        }
                    },
                };
                // What the payload becomes in the engine: an AES key when it has an AES key's
                // length, else a generic secret (16 to 800 bytes).
                let key_type = if AesSize::from_len(t.pt.len()).is_some() {
                    KeyType::Aes
                } else {
                    KeyType::GenericSecret
                };
                // A payload outside 16..=800 bytes is refused whatever the ciphertext, so such
                // a vector's verdict says nothing about the unwrap; an empty payload marks
                // vectors about a malformed ciphertext, which are rejected before any payload.
                let supported =
                    kek_supported && (t.pt.is_empty() || (16..=800).contains(&t.pt.len()));
                let now = fx.now();
                let outcome = fx
                    .hsm
                    .engine_mut()
                    .unwrap_key(
                        s,
                        kek,
                        mechanism,
                        &t.ct,
                        key_type,
                        &tpl(&[("token", "false"), ("extractable", "true")]),
                        now,
                    )
                    .map_err(err_text)
                    .and_then(|step| {
                        fx.hsm
                            .complete::<Vec<KeyHandle>>(s, step)
                            .map_err(|e| err_text(engine_err(e)))
                    });
                // An unwrapped key must hold exactly the vector's bytes: wrapped again under
                // the same KEK (the wrap is deterministic) it must give the vector's ciphertext.
                let outcome = match outcome {
                    Ok(handles) => {
                        let unwrapped = handles[0];
                        let rewrapped = fx.hsm.engine().wrap_key(s, kek, mechanism, unwrapped);
                        delete(&mut fx, s, unwrapped);
                        match rewrapped {
                            Ok(ct) if ct == *t.ct => Ok(()),
                            Ok(_) => Err("unwrapped to different key bytes".to_string()),
                            Err(e) => Err(format!("re-wrapping the unwrapped key failed: {e}")),
                        }
                    }
                    Err(e) => Err(e),
                };
                tally.record(&label, t.tc_id, t.result, outcome, supported);
            }
            for k in keks.into_values() {
                delete(&mut fx, s, k);
            }
        }
    }
    tally.finish(160, 40);
}

#[test]
fn hmac_verify() {
    use wycheproof::mac::{TestName, TestSet};
    let (mut fx, s) = crypto_user();
    let importer = Importer::new(&mut fx, s);
    let mut tally = Tally::new("hmac");
    for (name, hash) in [
        (TestName::HmacSha256, HashAlg::Sha256),
        (TestName::HmacSha384, HashAlg::Sha384),
        (TestName::HmacSha512, HashAlg::Sha512),
    ] {
        let set = TestSet::load(name).unwrap();
        let label = format!("{name:?}");
        for group in &set.test_groups {
            // Generic secrets are 16 to 800 bytes; tags shorter than 16 bytes are refused.
            let key_len = group.key_size / 8;
            if !(16..=800).contains(&key_len) {
                tally.skip(group.tests.len());
                continue;
            }
            let supported = group.tag_size / 8 >= 16;
            let mut keys: HashMap<Vec<u8>, KeyHandle> = HashMap::new();
            for t in &group.tests {
                let key = match keys.get(&*t.key) {
                    Some(k) => *k,
                    None => match importer.import(
                        &mut fx,
                        s,
                        KeyType::GenericSecret,
                        &t.key,
                        &[("verify", "true")],
                    ) {
                        Ok(k) => {
                            keys.insert(t.key.to_vec(), k);
                            k
                        }
                        Err(e) => {
                            tally.fail(format!("{label} tc {}: key import failed: {e}", t.tc_id));
                            continue;
                        }
                    },
                };
                let outcome = fx
                    .hsm
                    .engine()
                    .verify(s, key, SignMechanism::Hmac(hash), &t.msg, &t.tag)
                    .map_err(err_text);
                tally.record(&label, t.tc_id, t.result, outcome, supported);
            }
            for k in keys.into_values() {
                delete(&mut fx, s, k);
            }
        }
    }
    tally.finish(500, 190);
}
