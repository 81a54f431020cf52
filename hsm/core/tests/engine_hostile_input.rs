//! Hostile input: thousands of random and mangled inputs to every entry point that takes bytes
//! from a caller or a log. Each must return an error (never panic) and change no state.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_core::crypto::{
    AesSize, Curve, EncryptMechanism, HashAlg, KeySpec, KeyType, OaepHash, RsaSize, SignMechanism,
    WrapMechanism,
};
use sealgate_hsm_core::{Command, KeyFilter, MaskedObject};
use support::*;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = (self.next() as usize) % (max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// `base` with a few bytes flipped, cut or extended.
    fn mangle(&mut self, base: &[u8]) -> Vec<u8> {
        let mut v = base.to_vec();
        match self.next() % 4 {
            0 if !v.is_empty() => {
                let i = (self.next() as usize) % v.len();
                v[i] ^= 1 << (self.next() % 8);
            }
            1 => v.truncate((self.next() as usize) % (v.len() + 1)),
            2 => v.extend(self.bytes(64)),
            _ => {
                for _ in 0..4 {
                    if !v.is_empty() {
                        let i = (self.next() as usize) % v.len();
                        v[i] = self.next() as u8;
                    }
                }
            }
        }
        v
    }
}

#[test]
fn random_and_mangled_input_is_refused_without_panics_or_changes() {
    let mut rng = Rng(0x5ea1_9a7e_0000_0001);
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let (rsa_pub, rsa_priv) = fx.gen_pair(
        alice,
        KeySpec::Rsa(RsaSize::Rsa2048),
        &tpl(&[("verify", "true"), ("encrypt", "true"), ("wrap", "true")]),
        &tpl(&[("sign", "true"), ("decrypt", "true"), ("unwrap", "true")]),
    );
    let (ec_pub, _) = fx.gen_pair(
        alice,
        KeySpec::Ec(Curve::P256),
        &tpl(&[("verify", "true")]),
        &tpl(&[("sign", "true"), ("extractable", "true")]),
    );
    let aes = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes256),
        &tpl(&[
            ("encrypt", "true"),
            ("decrypt", "true"),
            ("wrap", "true"),
            ("unwrap", "true"),
            ("extractable", "true"),
        ]),
    );
    let hmac = fx.gen_key(
        alice,
        KeySpec::GenericSecret(32),
        &tpl(&[("verify", "true"), ("sign", "true")]),
    );
    // Valid samples to mangle.
    let e = fx.hsm.engine();
    let good_gcm = e
        .encrypt(alice, aes, EncryptMechanism::AesGcm, b"plaintext", b"")
        .unwrap();
    let good_oaep = e
        .encrypt(
            alice,
            rsa_pub,
            EncryptMechanism::RsaOaep(OaepHash::Sha256),
            b"pt",
            b"",
        )
        .unwrap();
    let good_sig = e
        .sign(
            alice,
            rsa_priv,
            SignMechanism::RsaPss(HashAlg::Sha256),
            b"m",
        )
        .unwrap();
    let good_tag = e
        .sign(alice, hmac, SignMechanism::Hmac(HashAlg::Sha256), b"m")
        .unwrap();
    let ec_der = e
        .export_public_key(alice, ec_pub)
        .unwrap()
        .to_der()
        .to_vec();
    let masked = e.extract_masked(alice, aes).unwrap();
    let now = fx.now();
    let co = fx.co();
    let good_cmd = fx
        .hsm
        .engine()
        .create_user(
            co,
            "zed",
            sealgate_hsm_core::Role::CryptoUser,
            &pw(CU_PASSWORD),
            now,
        )
        .unwrap()
        .encode()
        .unwrap();

    let before = fx.hsm.engine().sync_status(alice).unwrap();
    let keys_before = fx
        .hsm
        .engine()
        .list_keys(alice, &KeyFilter::default())
        .unwrap();
    let mechanisms = [
        WrapMechanism::AesKeyWrap,
        WrapMechanism::AesKeyWrapPad,
        WrapMechanism::RsaOaep(OaepHash::Sha1),
        WrapMechanism::RsaAes {
            oaep: OaepHash::Sha256,
            aes: AesSize::Aes256,
        },
    ];
    let key_types = [
        KeyType::Aes,
        KeyType::GenericSecret,
        KeyType::Rsa,
        KeyType::Ec,
        KeyType::Ed25519,
    ];
    for round in 0..3000 {
        let e = fx.hsm.engine();
        // Ciphertexts, signatures, tags.
        let ct = rng.mangle(&good_gcm);
        if ct != good_gcm {
            assert!(
                e.decrypt(alice, aes, EncryptMechanism::AesGcm, &ct, b"")
                    .is_err()
            );
        }
        let ct = rng.mangle(&good_oaep);
        if ct != good_oaep {
            assert!(
                e.decrypt(
                    alice,
                    rsa_priv,
                    EncryptMechanism::RsaOaep(OaepHash::Sha256),
                    &ct,
                    b""
                )
                .is_err()
            );
        }
        let sig = rng.mangle(&good_sig);
        if sig != good_sig {
            assert!(
                e.verify(
                    alice,
                    rsa_pub,
                    SignMechanism::RsaPss(HashAlg::Sha256),
                    b"m",
                    &sig
                )
                .is_err()
            );
        }
        let tag = rng.mangle(&good_tag);
        // A prefix of 16 bytes or more is a valid truncated tag.
        let truncated = tag.len() >= 16 && good_tag.starts_with(&tag);
        if !truncated {
            assert!(
                e.verify(
                    alice,
                    hmac,
                    SignMechanism::Hmac(HashAlg::Sha256),
                    b"m",
                    &tag
                )
                .is_err()
            );
        }
        // Public keys and masked objects.
        let der = rng.mangle(&ec_der);
        let _ =
            fx.hsm
                .engine_mut()
                .import_public_key(alice, &der, &tpl(&[("token", "false")]), now);
        let junk = MaskedObject(rng.mangle(&masked.0));
        if junk != masked {
            assert!(fx.hsm.engine().insert_masked(alice, &junk, now).is_err());
        }
        // Wrapped keys of every kind under every mechanism.
        let mechanism = mechanisms[round % mechanisms.len()];
        let key_type = key_types[(round / 4) % key_types.len()];
        let unwrapping = if matches!(
            mechanism,
            WrapMechanism::AesKeyWrap | WrapMechanism::AesKeyWrapPad
        ) {
            aes
        } else {
            rsa_priv
        };
        let blob = rng.bytes(600);
        assert!(
            fx.hsm
                .engine_mut()
                .unwrap_key(
                    alice,
                    unwrapping,
                    mechanism,
                    &blob,
                    key_type,
                    &tpl(&[]),
                    now
                )
                .is_err()
        );
        // Log entries: random and mangled commands decode to errors or to commands that apply
        // without panicking.
        for bytes in [rng.bytes(200), rng.mangle(&good_cmd)] {
            if let Ok(cmd) = Command::decode(&bytes) {
                let index = fx.hsm.engine().applied_index() + 1;
                let _ = fx.hsm.engine_mut().apply(index, &cmd, None);
            }
        }
    }
    // Session-key imports above may have succeeded (a mangled key can still be a valid key);
    // the replicated state is what must not have changed, except users a valid mangled
    // command may have created.
    let after = fx.hsm.engine().sync_status(alice).unwrap();
    assert_eq!(after.keys, before.keys, "token keys unchanged");
    let token_keys: Vec<_> = fx
        .hsm
        .engine()
        .list_keys(
            alice,
            &KeyFilter {
                token: Some(true),
                ..KeyFilter::default()
            },
        )
        .unwrap();
    assert_eq!(token_keys.len(), keys_before.len());
}
