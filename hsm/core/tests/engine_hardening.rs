//! Defences against an attacker who can edit the store file, race logins, or combine key
//! operations to launder attributes (each test is an attack that must fail).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_core::crypto::{
    AesSize, EncryptMechanism, HashAlg, KdfMechanism, KeySpec, KeyType, MasterKey, OaepHash,
    RsaSize, WrapMechanism,
};
use sealgate_hsm_core::{
    AttributeChange, ClusterLimits, EngineConfig, EngineError, KeyRecord, LocalHsm, MemoryStore,
    Role, Step, Store, StoreBatch, StoreError, StoreOp, Table,
};
use support::*;

fn reopen(store: MemoryStore, master: &[u8]) -> Result<LocalHsm<MemoryStore>, StoreError> {
    LocalHsm::open(
        store,
        MasterKey::from_bytes(master).unwrap(),
        EngineConfig::default(),
    )
}

fn put(store: &mut MemoryStore, table: Table, key: u64, value: Vec<u8>) {
    store
        .commit(&StoreBatch {
            ops: vec![StoreOp::Put { table, key, value }],
        })
        .unwrap();
}

#[test]
fn edits_to_the_store_file_are_detected() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let k = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes256),
        &tpl(&[("encrypt", "true")]),
    );
    let master = fx.master.clone();
    let store = fx.hsm.store().clone();
    let row = store.rows()[&(Table::Keys, k.0)].clone();

    // Flip extractable in the record and keep the old tag: refused.
    let (payload, tag) = row.split_at(row.len() - 32);
    let mut record: KeyRecord = postcard::from_bytes(payload).unwrap();
    assert!(!record.attrs.extractable);
    record.attrs.extractable = true;
    let mut forged = postcard::to_allocvec(&record).unwrap();
    forged.extend_from_slice(tag);
    let mut edited = store.clone();
    put(&mut edited, Table::Keys, k.0, forged);
    let e = reopen(edited, &master).err().unwrap();
    assert!(e.to_string().contains("changed outside sealgate"), "{e}");

    // A row moved under another key: refused.
    let mut moved = store.clone();
    put(&mut moved, Table::Keys, k.0 + 100, row.clone());
    assert!(reopen(moved, &master).is_err());

    // A row removed: refused.
    let mut removed = store.clone();
    removed
        .commit(&StoreBatch {
            ops: vec![StoreOp::Delete {
                table: Table::Keys,
                key: k.0,
            }],
        })
        .unwrap();
    let e = reopen(removed, &master).err().unwrap();
    assert!(
        e.to_string().contains("added, removed or rolled back"),
        "{e}"
    );

    // An older version of a row put back (a per-row rollback): refused.
    let mut fx = Fixture::from_store(store.clone(), &master);
    let alice = fx.login("alice", CU_PASSWORD).unwrap();
    let now = fx.now();
    let step = fx
        .hsm
        .engine_mut()
        .set_attributes(alice, k, &[AttributeChange::Label("new".into())], now)
        .unwrap();
    fx.hsm.complete(alice, step).unwrap();
    let mut rolled_back = fx.hsm.store().clone();
    put(&mut rolled_back, Table::Keys, k.0, row);
    let e = reopen(rolled_back, &master).err().unwrap();
    assert!(e.to_string().contains("rolled back"), "{e}");
    // The untouched store opens.
    reopen(fx.hsm.store().clone(), &master).unwrap();
}

#[test]
fn a_trusted_key_cannot_launder_wrap_with_trusted() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let co = fx.co();
    let protected = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes256),
        &tpl(&[("extractable", "true"), ("wrap-with-trusted", "true")]),
    );
    let trusted = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes256),
        &tpl(&[("wrap", "true"), ("unwrap", "true")]),
    );
    let untrusted = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes256),
        &tpl(&[("wrap", "true")]),
    );
    let now = fx.now();
    let change = AttributeChange::parse("trusted", "true").unwrap();
    let step = fx
        .hsm
        .engine_mut()
        .set_attributes(co, trusted, &[change], now)
        .unwrap();
    fx.hsm.complete(co, step).unwrap();
    // Wrap under the trusted key, unwrap as extractable: the copy is still bound.
    let blob = fx
        .hsm
        .engine()
        .wrap_key(alice, trusted, WrapMechanism::AesKeyWrapPad, protected)
        .unwrap();
    let step = fx
        .hsm
        .engine_mut()
        .unwrap_key(
            alice,
            trusted,
            WrapMechanism::AesKeyWrapPad,
            &blob,
            KeyType::Aes,
            &tpl(&[("extractable", "true")]),
            now,
        )
        .unwrap();
    let copy = fx.finish_keys(alice, step)[0];
    assert!(
        fx.hsm
            .engine()
            .get_key(alice, copy)
            .unwrap()
            .attributes
            .wrap_with_trusted
    );
    assert!(matches!(
        fx.hsm
            .engine()
            .wrap_key(alice, untrusted, WrapMechanism::AesKeyWrapPad, copy),
        Err(EngineError::WrapWithTrustedRequired { .. })
    ));
}

#[test]
fn trusting_a_public_key_binds_its_private_half() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let co = fx.co();
    let protected = fx.gen_key(
        alice,
        KeySpec::Aes(AesSize::Aes256),
        &tpl(&[("extractable", "true"), ("wrap-with-trusted", "true")]),
    );
    let (public, private) = fx.gen_pair(
        alice,
        KeySpec::Rsa(RsaSize::Rsa2048),
        &tpl(&[("wrap", "true")]),
        &tpl(&[("decrypt", "true"), ("unwrap", "true")]),
    );
    let now = fx.now();
    let change = AttributeChange::parse("trusted", "true").unwrap();
    let step = fx
        .hsm
        .engine_mut()
        .set_attributes(co, public, &[change], now)
        .unwrap();
    fx.hsm.complete(co, step).unwrap();
    assert!(
        fx.hsm
            .engine()
            .get_key(alice, private)
            .unwrap()
            .attributes
            .trusted
    );
    // Wrap with RSA-OAEP under the trusted public key, then try to read it with the private
    // half's decrypt: refused.
    let m = OaepHash::Sha256;
    let blob = fx
        .hsm
        .engine()
        .wrap_key(alice, public, WrapMechanism::RsaOaep(m), protected)
        .unwrap();
    assert!(matches!(
        fx.hsm
            .engine()
            .decrypt(alice, private, EncryptMechanism::RsaOaep(m), &blob, b""),
        Err(EngineError::KeyUsageNotAllowed { .. })
    ));
    // Unwrapping with the private half keeps the copy bound.
    let step = fx
        .hsm
        .engine_mut()
        .unwrap_key(
            alice,
            private,
            WrapMechanism::RsaOaep(m),
            &blob,
            KeyType::Aes,
            &tpl(&[("extractable", "true")]),
            now,
        )
        .unwrap();
    let copy = fx.finish_keys(alice, step)[0];
    assert!(
        fx.hsm
            .engine()
            .get_key(alice, copy)
            .unwrap()
            .attributes
            .wrap_with_trusted
    );
}

#[test]
fn derived_keys_are_no_more_exportable_than_their_base() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let bob = fx.cu("bob");
    let base = fx.gen_key(
        alice,
        KeySpec::GenericSecret(32),
        &tpl(&[("derive", "true")]),
    );
    let now = fx.now();
    let cmd = fx.hsm.engine().share_key(alice, base, "bob", now);
    fx.commit(alice, cmd).unwrap();
    let m = KdfMechanism::Hkdf {
        hash: HashAlg::Sha256,
        salt: vec![],
        info: b"x".to_vec(),
    };
    let spec = KeySpec::Aes(AesSize::Aes256);
    let extractable = tpl(&[("extractable", "true")]);
    for s in [alice, bob] {
        assert!(matches!(
            fx.hsm
                .engine_mut()
                .derive_key(s, base, &m, spec, &extractable, now),
            Err(EngineError::AttributeChangeRefused { .. })
        ));
    }
    // Non-extractable results are fine, for both.
    for s in [alice, bob] {
        let step = fx
            .hsm
            .engine_mut()
            .derive_key(s, base, &m, spec, &tpl(&[]), now)
            .unwrap();
        fx.finish_keys(s, step);
    }
    // From an extractable base, its owner may derive an extractable key; bob may not.
    let open = fx.gen_key(
        alice,
        KeySpec::GenericSecret(32),
        &tpl(&[("derive", "true"), ("extractable", "true")]),
    );
    let cmd = fx.hsm.engine().share_key(alice, open, "bob", now);
    fx.commit(alice, cmd).unwrap();
    let step = fx
        .hsm
        .engine_mut()
        .derive_key(alice, open, &m, spec, &extractable, now)
        .unwrap();
    fx.finish_keys(alice, step);
    assert!(
        fx.hsm
            .engine_mut()
            .derive_key(bob, open, &m, spec, &extractable, now)
            .is_err()
    );
}

#[test]
fn activation_ends_the_other_sessions_of_the_preco() {
    let mut fx = Fixture::initialized();
    let first = fx.login("admin", PRECO_PASSWORD).unwrap();
    let second = fx.login("admin", PRECO_PASSWORD).unwrap();
    let now = fx.now();
    let cmd = fx
        .hsm
        .engine()
        .activate(first, &pw(CO_PASSWORD), now)
        .unwrap();
    fx.hsm.commit(&cmd, Some(first)).unwrap();
    assert!(fx.hsm.engine().session_user(first).unwrap().is_some());
    assert!(fx.hsm.engine().session_user(second).unwrap().is_none());
    assert!(matches!(
        fx.hsm
            .engine()
            .create_user(second, "x", Role::CryptoOfficer, &pw(CO_PASSWORD), now),
        Err(EngineError::NotLoggedIn)
    ));
}

#[test]
fn parallel_guesses_cannot_outrun_the_lockout() {
    let mut fx = Fixture::activated();
    let co = fx.co();
    fx.create_user(co, "alice", Role::CryptoUser, CU_PASSWORD);
    let now = fx.now();
    // Five wrong guesses are prepared before any is applied.
    let mut pending = Vec::new();
    for _ in 0..5 {
        let s = fx.session();
        let step = fx
            .hsm
            .engine_mut()
            .login(s, "alice", &pw("wrong-guess"), now)
            .unwrap();
        let Step::Replicate(cmd) = step else {
            panic!("a failure is replicated")
        };
        pending.push((s, cmd));
    }
    // The sixth guess, even the right one, is not checked at all.
    let s = fx.session();
    assert!(matches!(
        fx.hsm.engine_mut().login(s, "alice", &pw(CU_PASSWORD), now),
        Err(EngineError::UserLocked { .. })
    ));
    for (s, cmd) in pending {
        assert_eq!(
            engine_err(fx.hsm.commit(&cmd, Some(s)).unwrap_err()),
            EngineError::LoginFailed
        );
    }
    // Locked now; every attempt gets the same answer.
    for guess in [CU_PASSWORD, "wrong-guess"] {
        let s = fx.session();
        assert!(matches!(
            fx.hsm.engine_mut().login(s, "alice", &pw(guess), now),
            Err(EngineError::UserLocked { .. })
        ));
    }
}

#[test]
fn a_right_guess_applied_after_the_lock_looks_like_any_other() {
    let mut fx = Fixture::activated();
    let co = fx.co();
    fx.create_user(co, "alice", Role::CryptoUser, CU_PASSWORD);
    // One failure first, so that the right guess goes through the log too.
    assert!(fx.login("alice", "wrong-guess").is_err());
    let now = fx.now();
    let s = fx.session();
    let step = fx
        .hsm
        .engine_mut()
        .login(s, "alice", &pw(CU_PASSWORD), now)
        .unwrap();
    let Step::Replicate(right) = step else {
        panic!()
    };
    // Meanwhile four more failures land (from other nodes, say).
    for _ in 0..4 {
        assert!(fx.login("alice", "wrong-guess").is_err());
    }
    let e = engine_err(fx.hsm.commit(&right, Some(s)).unwrap_err());
    assert!(matches!(e, EngineError::UserLocked { .. }), "{e}");
    assert!(fx.hsm.engine().session_user(s).unwrap().is_none());
}

#[test]
fn a_login_checked_against_an_old_password_does_not_count() {
    let mut fx = Fixture::activated();
    let co = fx.co();
    fx.create_user(co, "alice", Role::CryptoUser, CU_PASSWORD);
    assert!(fx.login("alice", "wrong-guess").is_err());
    let now = fx.now();
    let s = fx.session();
    let step = fx
        .hsm
        .engine_mut()
        .login(s, "alice", &pw(CU_PASSWORD), now)
        .unwrap();
    let Step::Replicate(old) = step else { panic!() };
    // The officer resets the password before that login is applied.
    let cmd = fx
        .hsm
        .engine()
        .change_password(co, "alice", &pw("brand-new-pw"), now);
    fx.commit(co, cmd).unwrap();
    assert_eq!(
        engine_err(fx.hsm.commit(&old, Some(s)).unwrap_err()),
        EngineError::LoginFailed
    );
    assert!(fx.hsm.engine().session_user(s).unwrap().is_none());
}

#[test]
fn changing_ones_own_password_does_not_unlock() {
    let mut fx = Fixture::activated();
    let co = fx.co();
    fx.create_user(co, "alice", Role::CryptoUser, CU_PASSWORD);
    let alice = fx.login("alice", CU_PASSWORD).unwrap();
    for _ in 0..5 {
        assert!(fx.login("alice", "wrong-guess").is_err());
    }
    let now = fx.now();
    let cmd = fx
        .hsm
        .engine()
        .change_password(alice, "alice", &pw("alice-new-pw"), now);
    fx.commit(alice, cmd).unwrap();
    assert!(matches!(
        engine_err(fx.login("alice", "alice-new-pw").unwrap_err()),
        EngineError::UserLocked { .. }
    ));
}

#[test]
fn limits_travel_with_the_cluster_not_with_each_node() {
    // Node a initializes with max_users = 3 (admin, app_user and one more); node b has the
    // default limits but applies the same log and refuses the same command.
    let (master, raw) = MasterKey::generate().unwrap();
    let small = EngineConfig {
        cluster: ClusterLimits {
            max_users: 3,
            ..ClusterLimits::default()
        },
        ..EngineConfig::default()
    };
    let mut a = LocalHsm::open(MemoryStore::new(), master, small).unwrap();
    let mut b = reopen(MemoryStore::new(), &raw[..]).unwrap();
    let t = sealgate_hsm_core::Timestamp;
    let sa = a.engine_mut().open_session().unwrap();
    let cmd = a.engine().initialize(&pw(PRECO_PASSWORD), t(1)).unwrap();
    a.commit(&cmd, None).unwrap();
    b.commit(&cmd, None).unwrap();
    let step = a
        .engine_mut()
        .login(sa, "admin", &pw(PRECO_PASSWORD), t(2))
        .unwrap();
    a.complete(sa, step).unwrap();
    let cmd = a.engine().activate(sa, &pw(CO_PASSWORD), t(3)).unwrap();
    a.commit(&cmd, Some(sa)).unwrap();
    b.commit(&cmd, None).unwrap();
    let one = a
        .engine()
        .create_user(sa, "one", Role::CryptoUser, &pw(CU_PASSWORD), t(4))
        .unwrap();
    let two = a
        .engine()
        .create_user(sa, "two", Role::CryptoUser, &pw(CU_PASSWORD), t(5))
        .unwrap();
    a.commit(&one, Some(sa)).unwrap();
    b.commit(&one, None).unwrap();
    let ra = a.commit(&two, Some(sa)).unwrap_err();
    let rb = b.commit(&two, None).unwrap_err();
    assert_eq!(ra.to_string(), rb.to_string());
    assert!(ra.to_string().contains("at most 3 users"), "{ra}");
    assert_eq!(a.store().rows(), b.store().rows());
}

#[test]
fn a_log_entry_is_applied_once() {
    let mut fx = Fixture::activated();
    let co = fx.co();
    let now = fx.now();
    let cmd = fx
        .hsm
        .engine()
        .create_user(co, "alice", Role::CryptoUser, &pw(CU_PASSWORD), now)
        .unwrap();
    let index = fx.hsm.engine().applied_index() + 1;
    let first = fx.hsm.engine_mut().apply(index, &cmd, None);
    assert!(first.result.is_ok());
    let again = fx.hsm.engine_mut().apply(index, &cmd, None);
    assert!(matches!(
        again.result,
        Err(EngineError::AlreadyApplied { .. })
    ));
    assert!(again.batch.ops.is_empty());
}

#[test]
fn logins_being_checked_count_as_failures_until_finished() {
    let mut fx = Fixture::activated();
    let co = fx.co();
    fx.create_user(co, "alice", Role::CryptoUser, CU_PASSWORD);
    let now = fx.now();
    // Five logins whose passwords are still being checked (outside the engine).
    let mut tickets = Vec::new();
    for _ in 0..5 {
        let s = fx.session();
        tickets.push(fx.hsm.engine_mut().begin_login(s, "alice", now).unwrap());
    }
    // A sixth is refused before its password is looked at.
    let s = fx.session();
    assert!(matches!(
        fx.hsm.engine_mut().begin_login(s, "alice", now),
        Err(EngineError::UserLocked { .. })
    ));
    // They finish as successes: the reservations are released, and the first success of a
    // user with failures in flight is recorded through the log like any other.
    let mut sessions = Vec::new();
    for ticket in tickets {
        assert!(ticket.check(&pw(CU_PASSWORD)));
        let step = fx.hsm.engine_mut().finish_login(ticket, true, now).unwrap();
        sessions.push(step);
    }
    // Every reservation was released: a new login goes through at once.
    let s = fx.session();
    let ticket = fx.hsm.engine_mut().begin_login(s, "alice", now).unwrap();
    assert!(matches!(
        fx.hsm.engine_mut().finish_login(ticket, true, now),
        Ok(Step::Done(()))
    ));
    drop(sessions);
}

#[test]
fn a_password_changed_while_a_login_is_checked_voids_that_login() {
    let mut fx = Fixture::activated();
    let co = fx.co();
    fx.create_user(co, "alice", Role::CryptoUser, CU_PASSWORD);
    let now = fx.now();
    let s = fx.session();
    let ticket = fx.hsm.engine_mut().begin_login(s, "alice", now).unwrap();
    assert!(ticket.check(&pw(CU_PASSWORD)));
    // Meanwhile a crypto officer resets alice's password.
    let cmd = fx
        .hsm
        .engine()
        .change_password(co, "alice", &pw("a-new-password-1"), now)
        .unwrap();
    fx.hsm.commit(&cmd, Some(co)).unwrap();
    assert_eq!(
        fx.hsm
            .engine_mut()
            .finish_login(ticket, true, now)
            .unwrap_err(),
        EngineError::LoginFailed
    );
    assert!(fx.login("alice", "a-new-password-1").is_ok());
}

#[test]
fn an_unknown_user_costs_a_check_and_fails_like_a_wrong_password() {
    let mut fx = Fixture::activated();
    let s = fx.session();
    let now = fx.now();
    let ticket = fx.hsm.engine_mut().begin_login(s, "nobody", now).unwrap();
    assert!(!ticket.check(&pw("whatever-password")));
    assert_eq!(
        fx.hsm
            .engine_mut()
            .finish_login(ticket, true, now)
            .unwrap_err(),
        EngineError::LoginFailed,
        "even a caller that claims success"
    );
}
