//! Keys: attributes, owners and shares, wrap-only export and import, session keys, masked
//! objects, bad input, and replica determinism.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_core::crypto::{
    self, AesSize, Curve, EncryptMechanism, HashAlg, KdfMechanism, KeyClass, KeyMaterial, KeySpec,
    KeyType, MasterKey, OaepHash, PublicKey, RsaSize, SignMechanism, UnwrapTarget, UnwrappingKey,
    WrapMechanism, WrappingKey,
};
use sealgate_hsm_core::{
    Attribute, AttributeChange, EngineConfig, EngineError, KeyFilter, KeyHandle, LocalHsm,
    MemoryStore, Role, SessionId,
};
use support::*;

const ECDSA: SignMechanism = SignMechanism::Ecdsa(HashAlg::Sha256);

fn set(
    fx: &mut Fixture,
    s: SessionId,
    k: KeyHandle,
    name: &str,
    value: &str,
) -> Result<(), EngineError> {
    let change = AttributeChange::parse(name, value)?;
    let now = fx.now();
    let step = fx.hsm.engine_mut().set_attributes(s, k, &[change], now)?;
    fx.hsm.complete(s, step).map_err(engine_err)
}

fn attrs(fx: &Fixture, s: SessionId, k: KeyHandle) -> sealgate_hsm_core::KeyAttributes {
    fx.hsm.engine().get_key(s, k).unwrap().attributes
}

#[test]
fn a_shared_user_can_use_but_not_manage_a_key() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let bob = fx.cu("bob");
    let carol = fx.cu("carol");
    let (public, private) = fx.gen_pair(
        alice,
        KeySpec::Ec(Curve::P256),
        &tpl(&[("verify", "true")]),
        &tpl(&[("sign", "true"), ("extractable", "true"), ("label", "tls")]),
    );
    let wrap = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes256),
        &tpl(&[("wrap", "true")]),
    );
    // Before sharing, bob cannot even see the key.
    assert_eq!(
        fx.hsm.engine().sign(bob, private, ECDSA, b"m").unwrap_err(),
        EngineError::KeyNotFound { handle: private }
    );
    let now = fx.now();
    let cmd = fx.hsm.engine().share_key(alice, private, "bob", now);
    fx.commit(alice, cmd).unwrap();
    let cmd = fx.hsm.engine().share_key(alice, wrap, "bob", now);
    fx.commit(alice, cmd).unwrap();

    // Bob signs; the signature verifies with alice's public key.
    let sig = fx.hsm.engine().sign(bob, private, ECDSA, b"m").unwrap();
    fx.hsm
        .engine()
        .verify(alice, public, ECDSA, b"m", &sig)
        .unwrap();
    // Bob may not delete, export (wrap), change attributes or re-share.
    let e = fx
        .hsm
        .engine_mut()
        .delete_key(bob, private, now)
        .unwrap_err();
    assert_eq!(e, EngineError::NotKeyOwner { handle: private });
    let e = fx
        .hsm
        .engine()
        .wrap_key(bob, wrap, WrapMechanism::AesKeyWrapPad, private)
        .unwrap_err();
    assert_eq!(e, EngineError::NotKeyOwner { handle: private });
    assert_eq!(
        set(&mut fx, bob, private, "label", "mine").unwrap_err(),
        EngineError::NotKeyOwner { handle: private }
    );
    assert!(matches!(
        fx.hsm.engine().share_key(bob, private, "carol", now),
        Err(EngineError::NotKeyOwner { .. })
    ));
    // Carol, not shared with, sees nothing.
    assert_eq!(
        fx.hsm
            .engine()
            .list_keys(carol, &KeyFilter::default())
            .unwrap()
            .len(),
        0
    );
    // Bob's listing shows the shared keys with their owner.
    let listed = fx
        .hsm
        .engine()
        .list_keys(bob, &KeyFilter::default())
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|k| k.owner_name == "alice"));
    // Sharing rules.
    assert!(matches!(
        fx.hsm.engine().share_key(alice, private, "bob", now),
        Err(EngineError::ShareRefused { .. })
    ));
    assert!(matches!(
        fx.hsm.engine().share_key(alice, private, "alice", now),
        Err(EngineError::ShareRefused { .. })
    ));
    assert!(matches!(
        fx.hsm.engine().share_key(alice, private, "admin", now),
        Err(EngineError::ShareRefused { .. })
    ));
    // Unsharing revokes use at once.
    let cmd = fx.hsm.engine().unshare_key(alice, private, "bob", now);
    fx.commit(alice, cmd).unwrap();
    assert!(fx.hsm.engine().sign(bob, private, ECDSA, b"m").is_err());
    let info = fx.hsm.engine().get_key(alice, private).unwrap();
    assert!(info.shared_with.is_empty());
    // The owner still manages it.
    let step = fx.hsm.engine_mut().delete_key(alice, private, now).unwrap();
    fx.hsm.complete(alice, step).unwrap();
}

#[test]
fn attributes_one_way_and_read_only() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let k = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes128),
        &tpl(&[("extractable", "true"), ("encrypt", "true")]),
    );
    let a = attrs(&fx, alice, k);
    assert!(a.extractable && !a.never_extractable && a.local && a.token && a.sensitive);
    assert_eq!(a.class, KeyClass::SecretKey);
    // extractable: true -> false works, false -> true never.
    set(&mut fx, alice, k, "extractable", "false").unwrap();
    let a = attrs(&fx, alice, k);
    assert!(!a.extractable);
    assert!(!a.never_extractable, "it was extractable once");
    let e = set(&mut fx, alice, k, "extractable", "true").unwrap_err();
    assert!(matches!(
        e,
        EngineError::AttributeChangeRefused {
            attribute: Attribute::Extractable,
            ..
        }
    ));
    // Read-only attributes.
    for name in [
        "class",
        "key-type",
        "id",
        "token",
        "local",
        "never-extractable",
        "check-value",
    ] {
        assert!(
            matches!(
                AttributeChange::parse(name, "true"),
                Err(EngineError::AttributeReadOnly { .. })
            ),
            "{name}"
        );
    }
    // A forged change naming a read-only attribute is refused by the engine too.
    let now = fx.now();
    let forged = AttributeChange::Flag(Attribute::Local, false);
    assert!(matches!(
        fx.hsm.engine_mut().set_attributes(alice, k, &[forged], now),
        Err(EngineError::AttributeReadOnly { .. })
    ));
    // Inapplicable usage: AES keys do not sign.
    assert!(matches!(
        set(&mut fx, alice, k, "sign", "true"),
        Err(EngineError::AttributeNotApplicable { .. })
    ));
    // wrap-with-trusted: false -> true, then read-only.
    set(&mut fx, alice, k, "wrap-with-trusted", "true").unwrap();
    assert!(set(&mut fx, alice, k, "wrap-with-trusted", "false").is_err());
    // Sensitive stays true.
    assert!(set(&mut fx, alice, k, "sensitive", "false").is_err());
    // destroyable false blocks deletion, and cannot go back.
    set(&mut fx, alice, k, "destroyable", "false").unwrap();
    assert_eq!(
        fx.hsm.engine_mut().delete_key(alice, k, now).unwrap_err(),
        EngineError::NotDestroyable { handle: k }
    );
    assert!(set(&mut fx, alice, k, "destroyable", "true").is_err());
    // modifiable false freezes everything.
    set(&mut fx, alice, k, "label", "frozen").unwrap();
    set(&mut fx, alice, k, "modifiable", "false").unwrap();
    assert!(matches!(
        set(&mut fx, alice, k, "label", "thawed"),
        Err(EngineError::AttributeChangeRefused { .. })
    ));
    assert_eq!(attrs(&fx, alice, k).label, "frozen");
    // Defaults: private and secret keys are not extractable unless asked.
    let (_, private) = fx.gen_pair(
        alice,
        KeySpec::Ed25519,
        &tpl(&[]),
        &tpl(&[("sign", "true")]),
    );
    let a = attrs(&fx, alice, private);
    assert!(!a.extractable && a.never_extractable && a.always_sensitive);
    assert!(a.check_value.is_some());
}

#[test]
fn non_extractable_keys_never_leave() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let wrap = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes256),
        &tpl(&[("wrap", "true")]),
    );
    let (public, private) = fx.gen_pair(
        alice,
        KeySpec::Ec(Curve::P384),
        &tpl(&[]),
        &tpl(&[("sign", "true")]),
    );
    for m in [WrapMechanism::AesKeyWrapPad, WrapMechanism::AesKeyWrap] {
        assert_eq!(
            fx.hsm
                .engine()
                .wrap_key(alice, wrap, m, private)
                .unwrap_err(),
            EngineError::NotExtractable { handle: private }
        );
    }
    // Nor as a masked object to another cluster: the masked object only opens under this
    // cluster's domain key (see masked_objects_only_open_in_the_same_cluster).
    // Public keys export in clear, never wrapped.
    assert!(fx.hsm.engine().export_public_key(alice, private).is_ok());
    assert!(matches!(
        fx.hsm
            .engine()
            .wrap_key(alice, wrap, WrapMechanism::AesKeyWrapPad, public),
        Err(EngineError::InvalidInput { .. })
    ));
    // A wrapping key without `wrap` is refused.
    let nowrap = fx.gen_key(alice, KeySpec::Aes(AesSize::Aes256), &tpl(&[]));
    let payload = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes128),
        &tpl(&[("extractable", "true")]),
    );
    assert_eq!(
        fx.hsm
            .engine()
            .wrap_key(alice, nowrap, WrapMechanism::AesKeyWrapPad, payload)
            .unwrap_err(),
        EngineError::KeyUsageNotAllowed {
            handle: nowrap,
            attribute: Attribute::Wrap
        }
    );
}

#[test]
fn wrap_with_trusted_needs_a_key_an_officer_trusted() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let wrap = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes256),
        &tpl(&[("wrap", "true")]),
    );
    let payload = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes128),
        &tpl(&[("extractable", "true"), ("wrap-with-trusted", "true")]),
    );
    assert_eq!(
        fx.hsm
            .engine()
            .wrap_key(alice, wrap, WrapMechanism::AesKeyWrapPad, payload)
            .unwrap_err(),
        EngineError::WrapWithTrustedRequired {
            handle: payload,
            wrapping: wrap
        }
    );
    let co = fx.co();
    set(&mut fx, co, wrap, "trusted", "true").unwrap();
    assert!(attrs(&fx, alice, wrap).trusted);
    fx.hsm
        .engine()
        .wrap_key(alice, wrap, WrapMechanism::AesKeyWrapPad, payload)
        .unwrap();
}

#[test]
fn export_and_import_round_trips() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let now = fx.now();
    let aes_kek = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes256),
        &tpl(&[("wrap", "true"), ("unwrap", "true")]),
    );
    let (rsa_pub, rsa_priv) = fx.gen_pair(
        alice,
        KeySpec::Rsa(RsaSize::Rsa2048),
        &tpl(&[("wrap", "true")]),
        &tpl(&[("unwrap", "true")]),
    );
    let aes = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes128),
        &tpl(&[
            ("extractable", "true"),
            ("encrypt", "true"),
            ("decrypt", "true"),
        ]),
    );
    let (rsa_payload_pub, rsa_payload) = fx.gen_pair(
        alice,
        KeySpec::Rsa(RsaSize::Rsa2048),
        &tpl(&[("verify", "true")]),
        &tpl(&[("extractable", "true"), ("sign", "true")]),
    );
    let sealed = fx
        .hsm
        .engine()
        .encrypt(alice, aes, EncryptMechanism::AesGcm, b"secret text", b"aad")
        .unwrap();
    let cases = [
        (aes, KeyType::Aes, aes_kek, WrapMechanism::AesKeyWrapPad),
        (aes, KeyType::Aes, aes_kek, WrapMechanism::AesKeyWrap),
        (
            aes,
            KeyType::Aes,
            rsa_pub,
            WrapMechanism::RsaOaep(OaepHash::Sha256),
        ),
        (
            aes,
            KeyType::Aes,
            rsa_pub,
            WrapMechanism::RsaOaep(OaepHash::Sha1),
        ),
        (
            rsa_payload,
            KeyType::Rsa,
            aes_kek,
            WrapMechanism::AesKeyWrapPad,
        ),
        (
            rsa_payload,
            KeyType::Rsa,
            rsa_pub,
            WrapMechanism::RsaAes {
                oaep: OaepHash::Sha256,
                aes: AesSize::Aes256,
            },
        ),
    ];
    for (payload, key_type, wrapping, mechanism) in cases {
        let unwrapping = if wrapping == rsa_pub {
            rsa_priv
        } else {
            aes_kek
        };
        let wrapped = fx
            .hsm
            .engine()
            .wrap_key(alice, wrapping, mechanism, payload)
            .unwrap();
        let template = if key_type == KeyType::Aes {
            tpl(&[("decrypt", "true")])
        } else {
            tpl(&[("sign", "true")])
        };
        let step = fx
            .hsm
            .engine_mut()
            .unwrap_key(
                alice, unwrapping, mechanism, &wrapped, key_type, &template, now,
            )
            .unwrap();
        let imported = fx.finish_keys(alice, step)[0];
        let info = attrs(&fx, alice, imported);
        assert!(!info.local && !info.extractable && !info.never_extractable);
        assert_eq!(info.check_value, attrs(&fx, alice, payload).check_value);
        if key_type == KeyType::Aes {
            let plain = fx
                .hsm
                .engine()
                .decrypt(alice, imported, EncryptMechanism::AesGcm, &sealed, b"aad")
                .unwrap();
            assert_eq!(plain, b"secret text", "{mechanism:?}");
        } else {
            let m = SignMechanism::RsaPss(HashAlg::Sha256);
            let sig = fx.hsm.engine().sign(alice, imported, m, b"msg").unwrap();
            fx.hsm
                .engine()
                .verify(alice, rsa_payload_pub, m, b"msg", &sig)
                .unwrap();
        }
    }
    // A private key is too large for plain RSA-OAEP.
    assert!(
        fx.hsm
            .engine()
            .wrap_key(
                alice,
                rsa_pub,
                WrapMechanism::RsaOaep(OaepHash::Sha256),
                rsa_payload
            )
            .is_err()
    );
}

#[test]
fn a_key_wrapped_outside_imports_and_one_exported_opens_outside() {
    // The real import path: the HSM's RSA public key leaves in clear, the caller wraps its own
    // key with RSA-AES, and the HSM unwraps it. And back out: an extractable key wrapped under
    // a key the caller knows opens outside.
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let now = fx.now();
    let (rsa_pub, rsa_priv) = fx.gen_pair(
        alice,
        KeySpec::Rsa(RsaSize::Rsa3072),
        &tpl(&[]),
        &tpl(&[("unwrap", "true")]),
    );
    let hsm_public = fx.hsm.engine().export_public_key(alice, rsa_pub).unwrap();
    let pem = hsm_public.to_pem();
    let outside_public = PublicKey::from_pem(&pem).unwrap();
    let mine = KeyMaterial::generate(KeySpec::Aes(AesSize::Aes256)).unwrap();
    let KeyMaterial::Secret(my_secret) = &mine else {
        panic!()
    };
    let mechanism = WrapMechanism::RsaAes {
        oaep: OaepHash::Sha256,
        aes: AesSize::Aes128,
    };
    let wrapped = crypto::wrap_key(mechanism, WrappingKey::Public(&outside_public), &mine).unwrap();
    let step = fx
        .hsm
        .engine_mut()
        .unwrap_key(
            alice,
            rsa_priv,
            mechanism,
            &wrapped,
            KeyType::Aes,
            &tpl(&[("wrap", "true"), ("extractable", "true")]),
            now,
        )
        .unwrap();
    let imported = fx.finish_keys(alice, step)[0];
    assert_eq!(
        attrs(&fx, alice, imported).check_value,
        my_secret.check_value()
    );

    // Export a generated key under the imported one and open it outside.
    let generated = fx.gen_key(
        alice,
        KeySpec::GenericSecret(48),
        &tpl(&[("extractable", "true"), ("sign", "true")]),
    );
    let out = fx
        .hsm
        .engine()
        .wrap_key(alice, imported, WrapMechanism::AesKeyWrapPad, generated)
        .unwrap();
    let opened = crypto::unwrap_key(
        WrapMechanism::AesKeyWrapPad,
        UnwrappingKey::Secret(my_secret),
        &out,
        UnwrapTarget {
            key_type: KeyType::GenericSecret,
        },
    )
    .unwrap();
    let KeyMaterial::Secret(opened) = opened else {
        panic!()
    };
    let m = SignMechanism::Hmac(HashAlg::Sha256);
    let tag = fx.hsm.engine().sign(alice, generated, m, b"data").unwrap();
    opened.verify(m, b"data", &tag).unwrap();
}

#[test]
fn session_keys_stay_in_their_session() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let other = fx.login("alice", CU_PASSWORD).unwrap();
    let k = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes256),
        &tpl(&[("token", "false"), ("encrypt", "true")]),
    );
    assert!(k.is_session());
    // Not replicated: nothing was written for it.
    assert!(
        !fx.hsm
            .store()
            .rows()
            .keys()
            .any(|(t, key)| *t == sealgate_hsm_core::Table::Keys && *key == k.0)
    );
    fx.hsm
        .engine()
        .encrypt(alice, k, EncryptMechanism::AesGcm, b"x", b"")
        .unwrap();
    // Another session of the same user does not see it.
    assert!(
        fx.hsm
            .engine()
            .encrypt(other, k, EncryptMechanism::AesGcm, b"x", b"")
            .is_err()
    );
    // Logout destroys it.
    fx.hsm.engine_mut().logout(alice).unwrap();
    fx.login_on(alice, "alice", CU_PASSWORD).unwrap();
    assert_eq!(
        fx.hsm
            .engine()
            .encrypt(alice, k, EncryptMechanism::AesGcm, b"x", b"")
            .unwrap_err(),
        EngineError::KeyNotFound { handle: k }
    );
    // Session pairs work the same way.
    let (public, private) = fx.gen_pair(
        alice,
        KeySpec::Ec(Curve::P521),
        &tpl(&[("verify", "true"), ("token", "false")]),
        &tpl(&[("sign", "true"), ("token", "false")]),
    );
    let sig = fx.hsm.engine().sign(alice, private, ECDSA, b"m").unwrap();
    fx.hsm
        .engine()
        .verify(alice, public, ECDSA, b"m", &sig)
        .unwrap();
    // Session keys cannot be shared.
    let now = fx.now();
    assert!(matches!(
        fx.hsm.engine().share_key(alice, private, "admin", now),
        Err(EngineError::ShareRefused { .. })
    ));
}

#[test]
fn find_keys_by_attributes() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    fx.gen_pair(
        alice,
        KeySpec::Ec(Curve::P256),
        &tpl(&[("label", "web"), ("verify", "true")]),
        &tpl(&[("label", "web"), ("sign", "true"), ("id", "k1")]),
    );
    fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes128),
        &tpl(&[("label", "db")]),
    );
    fx.gen_key(
        alice,
        KeySpec::GenericSecret(32),
        &tpl(&[("label", "web"), ("sign", "true")]),
    );
    let find = |fx: &Fixture, f: KeyFilter| fx.hsm.engine().list_keys(alice, &f).unwrap().len();
    assert_eq!(find(&fx, KeyFilter::default()), 4);
    let web = KeyFilter {
        label: Some("web".into()),
        ..KeyFilter::default()
    };
    assert_eq!(find(&fx, web.clone()), 3);
    assert_eq!(
        find(
            &fx,
            KeyFilter {
                sign: Some(true),
                ..web.clone()
            }
        ),
        2
    );
    assert_eq!(
        find(
            &fx,
            KeyFilter {
                class: Some(KeyClass::PrivateKey),
                key_type: Some(KeyType::Ec),
                id: Some(b"k1".to_vec()),
                ..KeyFilter::default()
            }
        ),
        1
    );
    assert_eq!(
        find(
            &fx,
            KeyFilter {
                key_type: Some(KeyType::Rsa),
                ..KeyFilter::default()
            }
        ),
        0
    );
}

#[test]
fn hmac_derive_digest_random() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let now = fx.now();
    let secret = fx.gen_key(
        alice,
        KeySpec::GenericSecret(64),
        &tpl(&[("sign", "true"), ("verify", "true"), ("derive", "true")]),
    );
    let engine = fx.hsm.engine();
    for h in [HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512] {
        let m = SignMechanism::Hmac(h);
        let tag = engine.sign(alice, secret, m, b"data").unwrap();
        assert_eq!(tag.len(), h.output_len());
        engine.verify(alice, secret, m, b"data", &tag).unwrap();
        assert!(engine.verify(alice, secret, m, b"date", &tag).is_err());
    }
    for (h, hex_digest) in [
        (HashAlg::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
        (
            HashAlg::Sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
    ] {
        assert_eq!(
            hex::encode(engine.digest(alice, h, b"abc").unwrap()),
            hex_digest
        );
    }
    let r1 = engine.random(alice, 32).unwrap();
    let r2 = engine.random(alice, 32).unwrap();
    assert_ne!(r1, r2);
    assert!(engine.random(alice, 1 << 20).is_err());
    for m in [
        KdfMechanism::Hkdf {
            hash: HashAlg::Sha256,
            salt: b"salt".to_vec(),
            info: b"info".to_vec(),
        },
        KdfMechanism::Sp800108Counter {
            hash: HashAlg::Sha384,
            info: b"label".to_vec(),
        },
    ] {
        let step = fx
            .hsm
            .engine_mut()
            .derive_key(
                alice,
                secret,
                &m,
                KeySpec::Aes(AesSize::Aes256),
                &tpl(&[("encrypt", "true"), ("decrypt", "true")]),
                now,
            )
            .unwrap();
        let k = fx.finish_keys(alice, step)[0];
        let a = attrs(&fx, alice, k);
        assert!(!a.local && a.never_extractable);
        let ct = fx
            .hsm
            .engine()
            .encrypt(alice, k, EncryptMechanism::AesGcm, b"p", b"")
            .unwrap();
        assert_eq!(
            fx.hsm
                .engine()
                .decrypt(alice, k, EncryptMechanism::AesGcm, &ct, b"")
                .unwrap(),
            b"p"
        );
    }
}

#[test]
fn bad_input_gets_one_clear_error_and_changes_nothing() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let bob = fx.cu("bob");
    let now = fx.now();
    let (public, private) = fx.gen_pair(
        alice,
        KeySpec::Rsa(RsaSize::Rsa2048),
        &tpl(&[("verify", "true"), ("encrypt", "true")]),
        &tpl(&[("decrypt", "true"), ("unwrap", "true")]),
    );
    let before = fx.hsm.engine().sync_status(alice).unwrap();
    let e = fx.hsm.engine();
    // Usage flags.
    assert_eq!(
        e.sign(
            alice,
            private,
            SignMechanism::RsaPkcs1(HashAlg::Sha256),
            b"x"
        )
        .unwrap_err(),
        EngineError::KeyUsageNotAllowed {
            handle: private,
            attribute: Attribute::Sign
        }
    );
    // Unknown handles and other users' keys look the same.
    let missing = KeyHandle(4242);
    assert_eq!(
        e.sign(alice, missing, ECDSA, b"x").unwrap_err(),
        EngineError::KeyNotFound { handle: missing }
    );
    assert_eq!(
        e.sign(bob, private, ECDSA, b"x").unwrap_err(),
        EngineError::KeyNotFound { handle: private }
    );
    // Wrong mechanism for the key.
    assert!(matches!(
        e.encrypt(alice, public, EncryptMechanism::AesGcm, b"x", b""),
        Err(EngineError::Crypto(
            crypto::CryptoError::MechanismMismatch { .. }
        ))
    ));
    // Oversized input.
    let big = vec![0u8; EngineConfig::default().max_data_len + 1];
    assert!(matches!(
        e.encrypt(
            alice,
            public,
            EncryptMechanism::RsaOaep(OaepHash::Sha256),
            &big,
            b""
        ),
        Err(EngineError::LimitReached { .. })
    ));
    // Garbage ciphertexts and signatures.
    assert!(
        e.decrypt(
            alice,
            private,
            EncryptMechanism::RsaOaep(OaepHash::Sha256),
            b"junk",
            b""
        )
        .is_err()
    );
    assert!(
        e.verify(
            alice,
            public,
            SignMechanism::RsaPss(HashAlg::Sha256),
            b"m",
            &[0u8; 256]
        )
        .is_err()
    );
    // Garbage to unwrap: refused, and no key appears.
    for junk in [
        &b""[..],
        &[0u8; 7][..],
        &[1u8; 300][..],
        &[0xffu8; 20_000][..],
    ] {
        let r = fx.hsm.engine_mut().unwrap_key(
            alice,
            private,
            WrapMechanism::RsaAes {
                oaep: OaepHash::Sha256,
                aes: AesSize::Aes256,
            },
            junk,
            KeyType::Ec,
            &tpl(&[]),
            now,
        );
        assert!(r.is_err());
    }
    // Malformed public keys and templates.
    assert!(
        fx.hsm
            .engine_mut()
            .import_public_key(alice, b"\x30\x03\x02\x01\x01", &tpl(&[]), now)
            .is_err()
    );
    let long_label = sealgate_hsm_core::KeyTemplate {
        label: Some("x".repeat(200)),
        ..Default::default()
    };
    assert!(
        fx.hsm
            .engine_mut()
            .generate_key(alice, KeySpec::Aes(AesSize::Aes128), &long_label, now)
            .is_err()
    );
    assert!(
        fx.hsm
            .engine_mut()
            .generate_key(alice, KeySpec::GenericSecret(8), &tpl(&[]), now)
            .is_err()
    );
    assert!(
        fx.hsm
            .engine_mut()
            .generate_key(alice, KeySpec::Ec(Curve::P256), &tpl(&[]), now)
            .is_err()
    );
    let mut t = sealgate_hsm_core::KeyTemplate::default();
    assert!(t.set("nonsense", "true").is_err());
    assert!(t.set("sign", "maybe").is_err());
    assert!(t.set("trusted", "true").is_err());
    // Commands from a log that do not decode are refused.
    assert!(sealgate_hsm_core::Command::decode(b"\xff\xff\xff").is_err());
    assert_eq!(fx.hsm.engine().sync_status(alice).unwrap(), before);
}

#[test]
fn masked_objects_only_open_in_the_same_cluster() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let bob = fx.cu("bob");
    let bob_id = fx.hsm.engine().session_user(bob).unwrap().unwrap().0;
    // A clone of the cluster taken now, before the key exists (CloudHSM's cloned cluster).
    let mut clone = fx.clone_cluster();
    let (public, private) = fx.gen_pair(
        alice,
        KeySpec::Ec(Curve::P256),
        &tpl(&[("verify", "true")]),
        &tpl(&[("sign", "true")]),
    );
    let masked = fx.hsm.engine().extract_masked(alice, private).unwrap();
    // Same cluster: the object already exists.
    let now = fx.now();
    assert_eq!(
        fx.hsm
            .engine()
            .insert_masked(alice, &masked, now)
            .unwrap_err(),
        EngineError::ObjectExists
    );
    // Another cluster's domain key cannot open it, nor can anyone open a modified one.
    let mut other = Fixture::activated();
    let co = other.co();
    assert_eq!(
        other
            .hsm
            .engine()
            .insert_masked(co, &masked, now)
            .unwrap_err(),
        EngineError::BadMaskedObject
    );
    let mut tampered = masked.clone();
    let last = tampered.0.len() - 1;
    tampered.0[last] ^= 1;
    assert_eq!(
        fx.hsm
            .engine()
            .insert_masked(alice, &tampered, now)
            .unwrap_err(),
        EngineError::BadMaskedObject
    );
    // The clone takes it, for its owner only, and the key signs there.
    let clone_alice = clone.login("alice", CU_PASSWORD).unwrap();
    let clone_bob = clone.login("bob", CU_PASSWORD).unwrap();
    assert!(matches!(
        clone.hsm.engine().insert_masked(clone_bob, &masked, now),
        Err(EngineError::NotKeyOwner { .. })
    ));
    let mut forged = clone
        .hsm
        .engine()
        .insert_masked(clone_alice, &masked, now)
        .unwrap();
    forged.actor = Some(bob_id);
    assert!(matches!(
        engine_err(clone.hsm.commit(&forged, None).unwrap_err()),
        EngineError::NotKeyOwner { .. }
    ));
    let cmd = clone.hsm.engine().insert_masked(clone_alice, &masked, now);
    let restored = clone.commit(clone_alice, cmd).unwrap().handles()[0];
    let sig = clone
        .hsm
        .engine()
        .sign(clone_alice, restored, ECDSA, b"m")
        .unwrap();
    fx.hsm
        .engine()
        .verify(alice, public, ECDSA, b"m", &sig)
        .unwrap();
    // A deleted key stays deleted: its masked copy cannot bring it back.
    let step = fx.hsm.engine_mut().delete_key(alice, private, now).unwrap();
    fx.hsm.complete(alice, step).unwrap();
    assert_eq!(
        fx.hsm
            .engine()
            .insert_masked(alice, &masked, now)
            .unwrap_err(),
        EngineError::ObjectDeleted
    );
}

#[test]
fn replicas_that_apply_the_same_commands_agree() {
    // Two engines under one domain key: every command prepared on the first is applied on
    // both, in order; their sync digests match and keys made on one sign on the other.
    let (master, raw) = MasterKey::generate().unwrap();
    let mut a = LocalHsm::open(MemoryStore::new(), master, EngineConfig::default()).unwrap();
    let mut b = LocalHsm::open(
        MemoryStore::new(),
        MasterKey::from_bytes(&raw[..]).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let mut t = 0u64;
    let mut now = || {
        t += 1;
        sealgate_hsm_core::Timestamp(t)
    };
    let both = |a: &mut LocalHsm<MemoryStore>,
                b: &mut LocalHsm<MemoryStore>,
                cmd: sealgate_hsm_core::Command,
                origin: SessionId| {
        let out = a.commit(&cmd, Some(origin)).unwrap();
        assert_eq!(b.commit(&cmd, None).unwrap(), out);
        out
    };
    let sa = a.engine_mut().open_session().unwrap();
    let cmd = a.engine().initialize(&pw(PRECO_PASSWORD), now()).unwrap();
    both(&mut a, &mut b, cmd, sa);
    let step = a
        .engine_mut()
        .login(sa, "admin", &pw(PRECO_PASSWORD), now())
        .unwrap();
    a.complete(sa, step).unwrap();
    let cmd = a.engine().activate(sa, &pw(CO_PASSWORD), now()).unwrap();
    both(&mut a, &mut b, cmd, sa);
    let cmd = a
        .engine()
        .create_user(sa, "alice", Role::CryptoUser, &pw(CU_PASSWORD), now())
        .unwrap();
    both(&mut a, &mut b, cmd, sa);
    let cu = a.engine_mut().open_session().unwrap();
    let step = a
        .engine_mut()
        .login(cu, "alice", &pw(CU_PASSWORD), now())
        .unwrap();
    a.complete(cu, step).unwrap();
    let step = a
        .engine_mut()
        .generate_key_pair(
            cu,
            KeySpec::Ec(Curve::P256),
            &tpl(&[("verify", "true")]),
            &tpl(&[("sign", "true")]),
            now(),
        )
        .unwrap();
    let sealgate_hsm_core::Step::Replicate(cmd) = step else {
        panic!()
    };
    let handles = both(&mut a, &mut b, cmd, cu).handles().to_vec();
    let cmd = a
        .engine_mut()
        .set_attributes(
            cu,
            handles[1],
            &[AttributeChange::Label("web".into())],
            now(),
        )
        .unwrap();
    let sealgate_hsm_core::Step::Replicate(cmd) = cmd else {
        panic!()
    };
    both(&mut a, &mut b, cmd, cu);

    // Sync status is the same on both (compared with an appliance session on each).
    let au_a = a.engine_mut().open_appliance_session().unwrap();
    let au_b = b.engine_mut().open_appliance_session().unwrap();
    assert_eq!(
        a.engine().sync_status(au_a).unwrap(),
        b.engine().sync_status(au_b).unwrap()
    );
    assert_eq!(a.engine().applied_index(), b.engine().applied_index());
    // Alice logs in on b and signs with the key made through a.
    let sb = b.engine_mut().open_session().unwrap();
    let step = b
        .engine_mut()
        .login(sb, "alice", &pw(CU_PASSWORD), now())
        .unwrap();
    b.complete(sb, step).unwrap();
    let sig = b.engine().sign(sb, handles[1], ECDSA, b"m").unwrap();
    a.engine()
        .verify(cu, handles[0], ECDSA, b"m", &sig)
        .unwrap();
    // The stores hold the same rows.
    assert_eq!(a.store().rows(), b.store().rows());
}

#[test]
fn key_check_values_follow_cloudhsm() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let (public, private) = fx.gen_pair(alice, KeySpec::Ec(Curve::P256), &tpl(&[]), &tpl(&[]));
    let der = fx.hsm.engine().export_public_key(alice, public).unwrap();
    let sha1 = crypto::digest(HashAlg::Sha1, der.to_der());
    let kcv = attrs(&fx, alice, private).check_value.unwrap();
    assert_eq!(kcv, [sha1[0], sha1[1], sha1[2]]);
    assert_eq!(attrs(&fx, alice, public).check_value, Some(kcv));
    let g = fx.gen_key(alice, KeySpec::GenericSecret(32), &tpl(&[]));
    assert_eq!(attrs(&fx, alice, g).check_value, None);
    // Imported public keys carry the same value.
    let now = fx.now();
    let step = fx
        .hsm
        .engine_mut()
        .import_public_key(alice, der.to_der(), &tpl(&[]), now)
        .unwrap();
    let imported = fx.finish_keys(alice, step)[0];
    assert_eq!(attrs(&fx, alice, imported).check_value, Some(kcv));
}

#[test]
fn apply_checks_again_so_stale_or_altered_commands_change_nothing() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let bob = fx.cu("bob");
    let k = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes128),
        &tpl(&[("extractable", "true")]),
    );
    let bob_id = fx.hsm.engine().session_user(bob).unwrap().unwrap().0;
    let now = fx.now();

    // A command prepared for alice but carrying bob as its actor is refused at apply.
    let step = fx.hsm.engine_mut().delete_key(alice, k, now).unwrap();
    let sealgate_hsm_core::Step::Replicate(mut cmd) = step else {
        panic!()
    };
    cmd.actor = Some(bob_id);
    assert_eq!(
        engine_err(fx.hsm.commit(&cmd, None).unwrap_err()),
        EngineError::NotKeyOwner { handle: k }
    );
    let step = fx
        .hsm
        .engine_mut()
        .set_attributes(alice, k, &[AttributeChange::Label("x".into())], now)
        .unwrap();
    let sealgate_hsm_core::Step::Replicate(mut cmd) = step else {
        panic!()
    };
    cmd.actor = Some(bob_id);
    assert!(fx.hsm.commit(&cmd, None).is_err());
    let step = fx.hsm.engine_mut().delete_key(alice, k, now).unwrap();
    let sealgate_hsm_core::Step::Replicate(delete) = step else {
        panic!()
    };
    fx.hsm.commit(&delete, Some(alice)).unwrap();
    // The same delete applied twice (a replayed log entry) is refused the second time.
    assert!(matches!(
        engine_err(fx.hsm.commit(&delete, Some(alice)).unwrap_err()),
        EngineError::KeyNotFound { .. }
    ));
    // Two changes prepared from the same state: the one applied second is checked against the
    // state the first left, so extractable cannot come back once it went false.
    let k2 = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes128),
        &tpl(&[("extractable", "true")]),
    );
    let now = fx.now();
    let off = fx
        .hsm
        .engine_mut()
        .set_attributes(
            alice,
            k2,
            &[AttributeChange::parse("extractable", "false").unwrap()],
            now,
        )
        .unwrap();
    let sealgate_hsm_core::Step::Replicate(off) = off else {
        panic!()
    };
    let mut on = off.clone();
    on.op = sealgate_hsm_core::CommandOp::SetAttributes {
        handle: k2,
        changes: vec![AttributeChange::parse("extractable", "true").unwrap()],
    };
    fx.hsm.commit(&off, Some(alice)).unwrap();
    assert!(matches!(
        engine_err(fx.hsm.commit(&on, Some(alice)).unwrap_err()),
        EngineError::AttributeChangeRefused { .. }
    ));
    assert!(!attrs(&fx, alice, k2).extractable);
}
