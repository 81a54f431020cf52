//! The permission table, cell by cell: for every (principal, operation) pair, a real request
//! through the engine, and the expected answer written out here independently of the code's
//! table (CloudHSM User Guide, "HSM user permissions table").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_core::crypto::{
    AesSize, Curve, EncryptMechanism, HashAlg, KdfMechanism, KeySpec, KeyType, SignMechanism,
    WrapMechanism,
};
use sealgate_hsm_core::{
    AttributeChange, EngineError, KeyFilter, KeyHandle, Operation, Principal, Role, SessionId,
};
use support::*;

/// Expected: Y allowed, N denied. Columns: unauthenticated, PRECO, CO, CU, AU.
#[rustfmt::skip]
const EXPECTED: &[(Operation, &str)] = &[
    (Operation::GetInfo,             "Y Y Y Y Y"),
    (Operation::ListUsers,           "Y Y Y Y Y"),
    (Operation::Logout,              "N Y Y Y Y"),
    (Operation::Activate,            "N Y N N N"),
    (Operation::ChangeOwnPassword,   "N N Y Y Y"),
    (Operation::ChangeAnyPassword,   "N N Y N N"),
    (Operation::CreateUser,          "N N Y N N"),
    (Operation::DeleteUser,          "N N Y N N"),
    (Operation::GetSyncStatus,       "N N Y Y Y"),
    (Operation::ExtractMaskedObject, "N N Y Y Y"),
    (Operation::InsertMaskedObject,  "N N Y Y Y"),
    (Operation::ListKeys,            "N N Y Y N"),
    (Operation::GenerateKey,         "N N N Y N"),
    (Operation::ImportPublicKey,     "N N N Y N"),
    (Operation::ExportPublicKey,     "N N N Y N"),
    (Operation::DeleteKey,           "N N N Y N"),
    (Operation::WrapKey,             "N N N Y N"),
    (Operation::UnwrapKey,           "N N N Y N"),
    (Operation::DeriveKey,           "N N N Y N"),
    (Operation::SetAttribute,        "N N N Y N"),
    (Operation::SetTrusted,          "N N Y N N"),
    (Operation::ShareKey,            "N N N Y N"),
    (Operation::UnshareKey,          "N N N Y N"),
    (Operation::Encrypt,             "N N N Y N"),
    (Operation::Decrypt,             "N N N Y N"),
    (Operation::Sign,                "N N N Y N"),
    (Operation::Verify,              "N N N Y N"),
    (Operation::Digest,              "N N N Y N"),
    (Operation::Hmac,                "N N N Y N"),
    (Operation::Random,              "N N N Y N"),
];

/// Keys and users the requests act on, owned by the crypto user `alice`.
struct World {
    fx: Fixture,
    /// A clone of `fx` taken when alice was created, where masked objects come from.
    donor: Fixture,
    donor_alice: SessionId,
    /// A second fixture, never activated, whose `admin` is still the PRECO.
    unactivated: Fixture,
    alice: SessionId,
    ec_public: KeyHandle,
    ec_private: KeyHandle,
    aes_wrap: KeyHandle,
    aes_payload: KeyHandle,
    hmac: KeyHandle,
    counter: u32,
}

impl World {
    fn new() -> Self {
        let mut fx = Fixture::activated();
        let co = fx.co();
        fx.create_user(co, "bob", Role::CryptoUser, CU_PASSWORD);
        let alice = fx.cu("alice");
        let mut donor = fx.clone_cluster();
        let donor_alice = donor.login("alice", CU_PASSWORD).unwrap();
        let (ec_public, ec_private) = fx.gen_pair(
            alice,
            KeySpec::Ec(Curve::P256),
            &tpl(&[("verify", "true")]),
            &tpl(&[("sign", "true")]),
        );
        let aes_wrap = fx.gen_key(
            alice,
            KeySpec::Aes(AesSize::Aes256),
            &tpl(&[
                ("wrap", "true"),
                ("unwrap", "true"),
                ("encrypt", "true"),
                ("decrypt", "true"),
            ]),
        );
        let aes_payload = fx.gen_key(
            alice,
            KeySpec::Aes(AesSize::Aes128),
            &tpl(&[("extractable", "true")]),
        );
        let hmac = fx.gen_key(
            alice,
            KeySpec::GenericSecret(32),
            &tpl(&[("sign", "true"), ("verify", "true"), ("derive", "true")]),
        );
        Self {
            fx,
            donor,
            donor_alice,
            unactivated: Fixture::initialized(),
            alice,
            ec_public,
            ec_private,
            aes_wrap,
            aes_payload,
            hmac,
            counter: 0,
        }
    }

    fn unique(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    /// A fresh session of `principal` (on the unactivated fixture for the PRECO).
    fn session(&mut self, principal: Principal) -> SessionId {
        match principal {
            Principal::Unauthenticated => self.fx.session(),
            Principal::User(Role::PreCryptoOfficer) => {
                let probe = self.unactivated.session();
                if self.unactivated.hsm.engine().info(probe).unwrap().activated {
                    self.unactivated = Fixture::initialized();
                }
                self.unactivated.login("admin", PRECO_PASSWORD).unwrap()
            }
            Principal::User(Role::CryptoOfficer) => self.fx.co(),
            Principal::User(Role::CryptoUser) => self.fx.login("alice", CU_PASSWORD).unwrap(),
            Principal::User(Role::ApplianceUser) => {
                self.fx.hsm.engine_mut().open_appliance_session().unwrap()
            }
        }
    }

    /// A throwaway key owned by alice.
    fn throwaway_key(&mut self) -> KeyHandle {
        let alice = self.alice;
        self.fx.gen_key(
            alice,
            KeySpec::Aes(AesSize::Aes128),
            &tpl(&[("extractable", "true")]),
        )
    }

    /// A throwaway CU.
    fn throwaway_user(&mut self) -> String {
        let name = self.unique("temp");
        let co = self.fx.co();
        self.fx
            .create_user(co, &name, Role::CryptoUser, CU_PASSWORD);
        name
    }

    /// Performs a representative request of `op` as `principal`.
    fn attempt(&mut self, principal: Principal, op: Operation) -> Result<(), EngineError> {
        // Objects the request needs are made first, by their rightful owners.
        let throwaway_key = match op {
            Operation::DeleteKey | Operation::ShareKey | Operation::UnshareKey => {
                Some(self.throwaway_key())
            }
            _ => None,
        };
        let throwaway_user = match op {
            Operation::DeleteUser | Operation::ChangeAnyPassword => Some(self.throwaway_user()),
            _ => None,
        };
        let (alice, now) = (self.alice, self.fx.now());
        if op == Operation::UnshareKey {
            let k = throwaway_key.unwrap();
            let cmd = self.fx.hsm.engine().share_key(alice, k, "bob", now);
            self.fx.commit(alice, cmd).unwrap();
        }
        let masked = if op == Operation::InsertMaskedObject {
            // A key made on a clone of the cluster, which this node has never seen.
            let donor_alice = self.donor_alice;
            let k = self.donor.gen_key(
                donor_alice,
                KeySpec::Aes(AesSize::Aes128),
                &tpl(&[("extractable", "true")]),
            );
            Some(
                self.donor
                    .hsm
                    .engine()
                    .extract_masked(donor_alice, k)
                    .unwrap(),
            )
        } else {
            None
        };
        let wrapped = self
            .fx
            .hsm
            .engine()
            .wrap_key(
                alice,
                self.aes_wrap,
                WrapMechanism::AesKeyWrapPad,
                self.aes_payload,
            )
            .unwrap();
        let ciphertext = self
            .fx
            .hsm
            .engine()
            .encrypt(alice, self.aes_wrap, EncryptMechanism::AesGcm, b"data", b"")
            .unwrap();
        let signature = self
            .fx
            .hsm
            .engine()
            .sign(
                alice,
                self.ec_private,
                SignMechanism::Ecdsa(HashAlg::Sha256),
                b"data",
            )
            .unwrap();
        let public_der = self
            .fx
            .hsm
            .engine()
            .export_public_key(alice, self.ec_public)
            .unwrap()
            .to_der()
            .to_vec();

        let is_preco = principal == Principal::User(Role::PreCryptoOfficer);
        let s = self.session(principal);
        let fx = if is_preco {
            &mut self.unactivated
        } else {
            &mut self.fx
        };
        let own_name = match principal {
            Principal::User(Role::CryptoOfficer) | Principal::User(Role::PreCryptoOfficer) => {
                "admin"
            }
            Principal::User(Role::CryptoUser) => "alice",
            Principal::User(Role::ApplianceUser) => "app_user",
            Principal::Unauthenticated => "alice",
        };
        let own_password = match principal {
            Principal::User(Role::CryptoUser) => CU_PASSWORD,
            _ => CO_PASSWORD,
        };
        let e = |r: Result<(), sealgate_hsm_core::DriverError>| r.map_err(engine_err);
        let created = |r: Result<Vec<KeyHandle>, sealgate_hsm_core::DriverError>| {
            r.map(|_| ()).map_err(engine_err)
        };
        match op {
            Operation::GetInfo => fx.hsm.engine().info(s).map(|_| ()),
            Operation::ListUsers => fx.hsm.engine().list_users(s).map(|_| ()),
            Operation::Logout => fx.hsm.engine_mut().logout(s),
            Operation::Activate => {
                let cmd = fx.hsm.engine().activate(s, &pw(CO_PASSWORD), now);
                fx.commit(s, cmd).map(|_| ()).map_err(engine_err)
            }
            Operation::ChangeOwnPassword => {
                // The same password again, so later logins still work.
                let cmd = fx
                    .hsm
                    .engine()
                    .change_password(s, own_name, &pw(own_password), now);
                fx.commit(s, cmd).map(|_| ()).map_err(engine_err)
            }
            Operation::ChangeAnyPassword => {
                let name = throwaway_user.unwrap();
                let cmd = fx
                    .hsm
                    .engine()
                    .change_password(s, &name, &pw("fresh-password"), now);
                fx.commit(s, cmd).map(|_| ()).map_err(engine_err)
            }
            Operation::CreateUser => {
                let name = format!("new{}", now.0 % 1_000_000);
                let cmd =
                    fx.hsm
                        .engine()
                        .create_user(s, &name, Role::CryptoUser, &pw(CU_PASSWORD), now);
                fx.commit(s, cmd).map(|_| ()).map_err(engine_err)
            }
            Operation::DeleteUser => {
                let cmd = fx
                    .hsm
                    .engine()
                    .delete_user(s, &throwaway_user.unwrap(), now);
                fx.commit(s, cmd).map(|_| ()).map_err(engine_err)
            }
            Operation::GetSyncStatus => fx.hsm.engine().sync_status(s).map(|_| ()),
            Operation::ExtractMaskedObject => fx
                .hsm
                .engine()
                .extract_masked(s, self.aes_payload)
                .map(|_| ()),
            Operation::InsertMaskedObject => {
                let cmd = fx.hsm.engine().insert_masked(s, &masked.unwrap(), now);
                fx.commit(s, cmd).map(|_| ()).map_err(engine_err)
            }
            Operation::ListKeys => fx
                .hsm
                .engine()
                .list_keys(s, &KeyFilter::default())
                .map(|_| ()),
            Operation::GenerateKey => {
                let step = fx.hsm.engine_mut().generate_key(
                    s,
                    KeySpec::Aes(AesSize::Aes128),
                    &tpl(&[]),
                    now,
                );
                match step {
                    Ok(step) => created(fx.hsm.complete(s, step)),
                    Err(err) => Err(err),
                }
            }
            Operation::ImportPublicKey => {
                match fx
                    .hsm
                    .engine_mut()
                    .import_public_key(s, &public_der, &tpl(&[]), now)
                {
                    Ok(step) => created(fx.hsm.complete(s, step)),
                    Err(err) => Err(err),
                }
            }
            Operation::ExportPublicKey => fx
                .hsm
                .engine()
                .export_public_key(s, self.ec_public)
                .map(|_| ()),
            Operation::DeleteKey => {
                match fx
                    .hsm
                    .engine_mut()
                    .delete_key(s, throwaway_key.unwrap(), now)
                {
                    Ok(step) => e(fx.hsm.complete(s, step)),
                    Err(err) => Err(err),
                }
            }
            Operation::WrapKey => fx
                .hsm
                .engine()
                .wrap_key(
                    s,
                    self.aes_wrap,
                    WrapMechanism::AesKeyWrapPad,
                    self.aes_payload,
                )
                .map(|_| ()),
            Operation::UnwrapKey => {
                let step = fx.hsm.engine_mut().unwrap_key(
                    s,
                    self.aes_wrap,
                    WrapMechanism::AesKeyWrapPad,
                    &wrapped,
                    KeyType::Aes,
                    &tpl(&[]),
                    now,
                );
                match step {
                    Ok(step) => created(fx.hsm.complete(s, step)),
                    Err(err) => Err(err),
                }
            }
            Operation::DeriveKey => {
                let m = KdfMechanism::Hkdf {
                    hash: HashAlg::Sha256,
                    salt: vec![],
                    info: b"perm".to_vec(),
                };
                let step = fx.hsm.engine_mut().derive_key(
                    s,
                    self.hmac,
                    &m,
                    KeySpec::Aes(AesSize::Aes256),
                    &tpl(&[]),
                    now,
                );
                match step {
                    Ok(step) => created(fx.hsm.complete(s, step)),
                    Err(err) => Err(err),
                }
            }
            Operation::SetAttribute => {
                let change = AttributeChange::Label(format!("label{}", now.0));
                match fx
                    .hsm
                    .engine_mut()
                    .set_attributes(s, self.aes_payload, &[change], now)
                {
                    Ok(step) => e(fx.hsm.complete(s, step)),
                    Err(err) => Err(err),
                }
            }
            Operation::SetTrusted => {
                let change = AttributeChange::parse("trusted", "true").unwrap();
                match fx
                    .hsm
                    .engine_mut()
                    .set_attributes(s, self.aes_wrap, &[change], now)
                {
                    Ok(step) => e(fx.hsm.complete(s, step)),
                    Err(err) => Err(err),
                }
            }
            Operation::ShareKey => {
                let cmd = fx
                    .hsm
                    .engine()
                    .share_key(s, throwaway_key.unwrap(), "bob", now);
                fx.commit(s, cmd).map(|_| ()).map_err(engine_err)
            }
            Operation::UnshareKey => {
                let cmd = fx
                    .hsm
                    .engine()
                    .unshare_key(s, throwaway_key.unwrap(), "bob", now);
                fx.commit(s, cmd).map(|_| ()).map_err(engine_err)
            }
            Operation::Encrypt => fx
                .hsm
                .engine()
                .encrypt(s, self.aes_wrap, EncryptMechanism::AesGcm, b"data", b"")
                .map(|_| ()),
            Operation::Decrypt => fx
                .hsm
                .engine()
                .decrypt(s, self.aes_wrap, EncryptMechanism::AesGcm, &ciphertext, b"")
                .map(|_| ()),
            Operation::Sign => fx
                .hsm
                .engine()
                .sign(
                    s,
                    self.ec_private,
                    SignMechanism::Ecdsa(HashAlg::Sha256),
                    b"data",
                )
                .map(|_| ()),
            Operation::Verify => fx.hsm.engine().verify(
                s,
                self.ec_public,
                SignMechanism::Ecdsa(HashAlg::Sha256),
                b"data",
                &signature,
            ),
            Operation::Digest => fx
                .hsm
                .engine()
                .digest(s, HashAlg::Sha256, b"data")
                .map(|_| ()),
            Operation::Hmac => fx
                .hsm
                .engine()
                .sign(s, self.hmac, SignMechanism::Hmac(HashAlg::Sha256), b"data")
                .map(|_| ()),
            Operation::Random => fx.hsm.engine().random(s, 16).map(|_| ()),
            other => panic!("no request written for {other}"),
        }
    }
}

#[test]
fn every_cell_of_the_permission_table() {
    let mut world = World::new();
    assert_eq!(
        EXPECTED.len(),
        Operation::ALL.len(),
        "one row per operation"
    );
    let mut cells = 0;
    for &(op, row) in EXPECTED {
        let expected: Vec<bool> = row.split(' ').map(|c| c == "Y").collect();
        for (principal, allowed) in Principal::ALL.into_iter().zip(expected) {
            assert_eq!(
                sealgate_hsm_core::is_permitted(principal, op),
                allowed,
                "the code's table disagrees at ({principal}, {op})"
            );
            let result = world.attempt(principal, op);
            match (allowed, result) {
                (true, Ok(())) => {}
                // The appliance user may change its own password by the table, but it is
                // built in and has no password.
                (true, Err(EngineError::BuiltInUser { .. }))
                    if principal == Principal::User(Role::ApplianceUser)
                        && op == Operation::ChangeOwnPassword => {}
                (true, Err(err)) => panic!("({principal}, {op}) should be allowed: {err}"),
                (
                    false,
                    Err(EngineError::PermissionDenied {
                        operation,
                        principal: p,
                    }),
                ) => {
                    assert_eq!((operation, p), (op, principal));
                }
                (false, Err(EngineError::NotLoggedIn))
                    if principal == Principal::Unauthenticated => {}
                (false, other) => panic!("({principal}, {op}) should be denied, got {other:?}"),
            }
            cells += 1;
        }
    }
    assert_eq!(cells, 150);
}

#[test]
fn a_crypto_officer_sees_keys_but_cannot_use_them() {
    let mut world = World::new();
    let co = world.fx.co();
    let keys = world
        .fx
        .hsm
        .engine()
        .list_keys(co, &KeyFilter::default())
        .unwrap();
    assert!(keys.iter().any(|k| k.handle == world.ec_private));
    let err = world
        .fx
        .hsm
        .engine()
        .sign(
            co,
            world.ec_private,
            SignMechanism::Ecdsa(HashAlg::Sha256),
            b"x",
        )
        .unwrap_err();
    assert!(matches!(err, EngineError::PermissionDenied { .. }));
    // A CU cannot set trusted, even on its own key.
    let alice = world.alice;
    let change = AttributeChange::parse("trusted", "true").unwrap();
    let now = world.fx.now();
    let err = world
        .fx
        .hsm
        .engine_mut()
        .set_attributes(alice, world.aes_wrap, &[change], now)
        .unwrap_err();
    assert!(matches!(
        err,
        EngineError::PermissionDenied {
            operation: Operation::SetTrusted,
            ..
        }
    ));
}
