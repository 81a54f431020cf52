//! Users, activation, login, lockout and persistence of the engine.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_core::crypto::MasterKey;
use sealgate_hsm_core::{
    DriverError, EngineConfig, EngineError, LocalHsm, Operation, Principal, Role, StoreError,
};
use support::*;

#[test]
fn activation_turns_the_preco_into_the_first_officer() {
    let mut fx = Fixture::initialized();
    let s = fx.session();
    let users = fx.hsm.engine().list_users(s).unwrap();
    let names: Vec<_> = users.iter().map(|u| (u.name.as_str(), u.role)).collect();
    assert_eq!(
        names,
        [
            ("admin", Role::PreCryptoOfficer),
            ("app_user", Role::ApplianceUser)
        ]
    );
    assert!(!fx.hsm.engine().info(s).unwrap().activated);

    // The PRECO can do nothing but activate.
    let preco = fx.login("admin", PRECO_PASSWORD).unwrap();
    let now = fx.now();
    let err = fx
        .hsm
        .engine()
        .create_user(preco, "alice", Role::CryptoUser, &pw(CU_PASSWORD), now)
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::PermissionDenied {
            operation: Operation::CreateUser,
            principal: Principal::User(Role::PreCryptoOfficer)
        }
    );
    // A weak new password is refused and nothing changes.
    assert!(fx.hsm.engine().activate(preco, &pw("short"), now).is_err());
    let cmd = fx
        .hsm
        .engine()
        .activate(preco, &pw(CO_PASSWORD), now)
        .unwrap();
    fx.hsm.commit(&cmd, Some(preco)).unwrap();
    assert!(fx.hsm.engine().info(s).unwrap().activated);
    // The same session is now a CO.
    assert_eq!(
        fx.hsm.engine().session_user(preco).unwrap().map(|(_, r)| r),
        Some(Role::CryptoOfficer)
    );
    // The one-time password no longer works; the new one does.
    assert!(fx.login("admin", PRECO_PASSWORD).is_err());
    fx.login("admin", CO_PASSWORD).unwrap();
    // Activation happens once.
    let co = fx.co();
    assert!(fx.hsm.engine().activate(co, &pw(CO_PASSWORD), now).is_err());
}

#[test]
fn five_failures_lock_until_an_officer_resets_the_password() {
    let mut fx = Fixture::activated();
    let co = fx.co();
    fx.create_user(co, "alice", Role::CryptoUser, CU_PASSWORD);
    for attempt in 1..=5 {
        let e = engine_err(fx.login("alice", "wrong-password").unwrap_err());
        assert_eq!(e, EngineError::LoginFailed, "attempt {attempt}");
    }
    let listed = fx.hsm.engine().list_users(co).unwrap();
    let alice = listed.iter().find(|u| u.name == "alice").unwrap();
    assert!(alice.locked);
    assert_eq!(alice.failed_logins, 5);
    // Even the right password is refused now.
    let e = engine_err(fx.login("alice", CU_PASSWORD).unwrap_err());
    assert!(
        matches!(e, EngineError::UserLocked { failures: 5, .. }),
        "{e}"
    );
    // A CU cannot reset another user's password.
    let bob = fx.cu("bob");
    let now = fx.now();
    let e = fx
        .hsm
        .engine()
        .change_password(bob, "alice", &pw("new-password-1"), now)
        .unwrap_err();
    assert!(matches!(e, EngineError::PermissionDenied { .. }), "{e}");
    // The CO resets it; the user is unlocked and only the new password works.
    let cmd = fx
        .hsm
        .engine()
        .change_password(co, "alice", &pw("new-password-1"), now)
        .unwrap();
    fx.hsm.commit(&cmd, Some(co)).unwrap();
    assert!(fx.login("alice", CU_PASSWORD).is_err());
    fx.login("alice", "new-password-1").unwrap();
    let alice = fx.hsm.engine().list_users(co).unwrap();
    let alice = alice.iter().find(|u| u.name == "alice").unwrap();
    assert!(!alice.locked);
    assert_eq!(alice.failed_logins, 0);
}

#[test]
fn a_success_clears_earlier_failures() {
    let mut fx = Fixture::activated();
    let co = fx.co();
    fx.create_user(co, "alice", Role::CryptoUser, CU_PASSWORD);
    for _ in 0..4 {
        assert!(fx.login("alice", "wrong-password").is_err());
    }
    fx.login("alice", CU_PASSWORD).unwrap();
    for _ in 0..4 {
        assert!(fx.login("alice", "wrong-password").is_err());
    }
    // 4 + 4 failures with a success between do not lock.
    fx.login("alice", CU_PASSWORD).unwrap();
}

#[test]
fn login_errors_do_not_tell_names_apart() {
    let mut fx = Fixture::activated();
    let unknown = engine_err(fx.login("nobody", "whatever-pw").unwrap_err());
    let wrong = engine_err(fx.login("admin", "whatever-pw").unwrap_err());
    assert_eq!(unknown, EngineError::LoginFailed);
    assert_eq!(wrong, EngineError::LoginFailed);
    // The appliance user never logs in with a password.
    let e = engine_err(fx.login("app_user", "whatever-pw").unwrap_err());
    assert_eq!(e, EngineError::ApplianceLogin);
    // Logging in twice on one session is refused.
    let s = fx.co();
    let e = engine_err(fx.login_on(s, "admin", CO_PASSWORD).unwrap_err());
    assert_eq!(e, EngineError::AlreadyLoggedIn);
    // Names are case-insensitive.
    fx.login("ADMIN", CO_PASSWORD).unwrap();
    // An unknown session is an error, not a panic.
    let e = fx
        .hsm
        .engine()
        .list_users(sealgate_hsm_core::SessionId(999_999))
        .unwrap_err();
    assert!(matches!(e, EngineError::UnknownSession(_)));
}

#[test]
fn user_names_and_passwords_follow_the_rules() {
    let mut fx = Fixture::activated();
    let co = fx.co();
    let now = fx.now();
    let e = fx.hsm.engine();
    let bad_names = [
        "",
        "a b",
        "x".repeat(32).as_str(),
        "_lead",
        "ünïcode",
        "semi;colon",
    ]
    .map(str::to_owned);
    for name in &bad_names {
        assert!(
            matches!(
                e.create_user(co, name, Role::CryptoUser, &pw(CU_PASSWORD), now),
                Err(EngineError::InvalidUserName { .. })
            ),
            "{name:?}"
        );
    }
    assert!(
        e.create_user(co, &"x".repeat(31), Role::CryptoUser, &pw(CU_PASSWORD), now)
            .is_ok()
    );
    for bad in ["1234567", &"p".repeat(33)] {
        assert!(matches!(
            e.create_user(co, "carol", Role::CryptoUser, &pw(bad), now),
            Err(EngineError::Crypto(_))
        ));
    }
    // Only CO and CU can be created.
    assert_eq!(
        e.create_user(co, "carol", Role::ApplianceUser, &pw(CU_PASSWORD), now)
            .unwrap_err(),
        EngineError::InvalidRole
    );
    fx.create_user(co, "Carol", Role::CryptoUser, CU_PASSWORD);
    let e = fx.hsm.engine();
    assert!(matches!(
        e.create_user(co, "CAROL", Role::CryptoOfficer, &pw(CU_PASSWORD), now),
        Err(EngineError::UserExists { .. })
    ));
    let users = e.list_users(co).unwrap();
    assert!(
        users
            .iter()
            .any(|u| u.name == "carol" && u.role == Role::CryptoUser)
    );
}

#[test]
fn deleting_users_keeps_the_cluster_manageable() {
    let mut fx = Fixture::activated();
    let co = fx.co();
    let now = fx.now();
    // Not oneself, not the last officer, not the appliance user.
    assert_eq!(
        fx.hsm.engine().delete_user(co, "admin", now).unwrap_err(),
        EngineError::CannotDeleteSelf
    );
    fx.create_user(co, "officer2", Role::CryptoOfficer, CO_PASSWORD);
    let co2 = fx.login("officer2", CO_PASSWORD).unwrap();
    let cmd = fx.hsm.engine().delete_user(co2, "admin", now).unwrap();
    fx.hsm.commit(&cmd, Some(co2)).unwrap();
    // The deleted officer's session is logged out.
    assert!(fx.hsm.engine().session_user(co).unwrap().is_none());
    assert!(matches!(
        fx.hsm.engine().delete_user(co2, "app_user", now),
        Err(EngineError::BuiltInUser { .. })
    ));
    // A CU that owns keys stays until its keys are gone.
    fx.create_user(co2, "alice", Role::CryptoUser, CU_PASSWORD);
    let alice = fx.login("alice", CU_PASSWORD).unwrap();
    let k = fx.gen_key(
        alice,
        sealgate_hsm_core::crypto::KeySpec::Aes(sealgate_hsm_core::crypto::AesSize::Aes128),
        &tpl(&[]),
    );
    let e = fx.hsm.engine().delete_user(co2, "alice", now).unwrap_err();
    assert!(
        matches!(e, EngineError::UserOwnsKeys { count: 1, .. }),
        "{e}"
    );
    let step = fx.hsm.engine_mut().delete_key(alice, k, now).unwrap();
    fx.hsm.complete(alice, step).unwrap();
    let cmd = fx.hsm.engine().delete_user(co2, "alice", now).unwrap();
    fx.hsm.commit(&cmd, Some(co2)).unwrap();
    assert!(fx.hsm.engine().session_user(alice).unwrap().is_none());
    assert!(fx.login("alice", CU_PASSWORD).is_err());
}

#[test]
fn own_password_change_keeps_the_session_and_officer_reset_ends_it() {
    let mut fx = Fixture::activated();
    let alice = fx.cu("alice");
    let now = fx.now();
    let cmd = fx
        .hsm
        .engine()
        .change_password(alice, "alice", &pw("alice-new-pw"), now)
        .unwrap();
    fx.hsm.commit(&cmd, Some(alice)).unwrap();
    assert!(fx.hsm.engine().session_user(alice).unwrap().is_some());
    fx.login("alice", "alice-new-pw").unwrap();
    let co = fx.co();
    let cmd = fx
        .hsm
        .engine()
        .change_password(co, "alice", &pw("reset-by-officer"), now)
        .unwrap();
    fx.hsm.commit(&cmd, Some(co)).unwrap();
    assert!(fx.hsm.engine().session_user(alice).unwrap().is_none());
}

#[test]
fn state_survives_a_restart_and_a_failed_write_loses_nothing() {
    let mut fx = Fixture::activated();
    let co = fx.co();
    fx.create_user(co, "alice", Role::CryptoUser, CU_PASSWORD);
    assert!(fx.login("alice", "wrong-password").is_err());
    let master = fx.master.clone();
    let store = fx.hsm.into_store();

    let mut hsm = LocalHsm::open(
        store,
        MasterKey::from_bytes(&master).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let s = hsm.engine_mut().open_session().unwrap();
    let users = hsm.engine().list_users(s).unwrap();
    let alice = users.iter().find(|u| u.name == "alice").unwrap();
    assert_eq!(alice.failed_logins, 1, "the failure count is persisted");

    // A write whose store commit fails is not acknowledged, and the store keeps the old state.
    let step = hsm
        .engine_mut()
        .login(
            s,
            "admin",
            &pw(CO_PASSWORD),
            sealgate_hsm_core::Timestamp(1),
        )
        .unwrap();
    hsm.complete(s, step).unwrap();
    let cmd = hsm
        .engine()
        .create_user(
            s,
            "bob",
            Role::CryptoUser,
            &pw(CU_PASSWORD),
            sealgate_hsm_core::Timestamp(2),
        )
        .unwrap();
    let mut store = hsm.into_store();
    store.fail_next_commit();
    let mut hsm = LocalHsm::open(
        store,
        MasterKey::from_bytes(&master).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let e = hsm.commit(&cmd, None).unwrap_err();
    assert!(
        matches!(e, DriverError::Store(StoreError::Backend(_))),
        "{e}"
    );
    // Further writes are refused until reopened.
    assert!(matches!(
        hsm.commit(&cmd, None),
        Err(DriverError::Store(StoreError::Poisoned))
    ));
    let hsm = LocalHsm::open(
        hsm.into_store(),
        MasterKey::from_bytes(&master).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let mut hsm = hsm;
    let s = hsm.engine_mut().open_session().unwrap();
    assert!(
        !hsm.engine()
            .list_users(s)
            .unwrap()
            .iter()
            .any(|u| u.name == "bob")
    );

    // The wrong master key is refused with a clear error.
    let other = MasterKey::generate().unwrap().0;
    let e = LocalHsm::open(hsm.into_store(), other, EngineConfig::default())
        .err()
        .unwrap();
    assert!(matches!(e, StoreError::MasterKeyMismatch { .. }), "{e}");
    assert!(e.to_string().contains("master key does not match"));
}

#[test]
fn sessions_are_bounded() {
    let (master, _) = MasterKey::generate().unwrap();
    let config = EngineConfig {
        max_sessions: 2,
        ..EngineConfig::default()
    };
    let mut hsm = LocalHsm::open(sealgate_hsm_core::MemoryStore::new(), master, config).unwrap();
    let a = hsm.engine_mut().open_session().unwrap();
    hsm.engine_mut().open_session().unwrap();
    assert!(matches!(
        hsm.engine_mut().open_session(),
        Err(EngineError::TooManySessions { limit: 2 })
    ));
    hsm.engine_mut().close_session(a);
    hsm.engine_mut().open_session().unwrap();
}
