//! Quorum approvals and MFA in the engine: who may ask for which token, which operations each
//! service controls and for whom, who may approve, and the token rules (expiry, single use,
//! session, service and key binding, limits). Approvers' RSA keys are made and used inside a
//! second fixture HSM (RSA PKCS#1 v1.5 SHA-256 signatures, as openssl makes).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_core::crypto::{
    AesSize, Curve, HashAlg, KeySpec, RsaSize, SignMechanism, WrapMechanism,
};
use sealgate_hsm_core::{
    Approvals, AttributeChange, EngineError, KeyHandle, KeyQuorum, QuorumService, Role, SessionId,
    Step, TOKEN_LIFETIME_MS, Timestamp,
};
use support::{CU_PASSWORD, Fixture, engine_err, pw, tpl};

/// RSA keys held "outside" the cluster under test: in another fixture HSM, one per approver.
struct Approvers {
    fx: Fixture,
    session: SessionId,
    keys: Vec<(String, KeyHandle, Vec<u8>)>,
}

impl Approvers {
    fn new() -> Self {
        let mut fx = Fixture::activated();
        let session = fx.cu("holder");
        Self {
            fx,
            session,
            keys: Vec::new(),
        }
    }

    /// The public key (DER) of `name`'s RSA key, made on first use.
    fn public(&mut self, name: &str) -> Vec<u8> {
        if let Some((_, _, der)) = self.keys.iter().find(|(n, _, _)| n == name) {
            return der.clone();
        }
        let (public, private) = self.fx.gen_pair(
            self.session,
            KeySpec::Rsa(RsaSize::Rsa2048),
            &tpl(&[("verify", "true")]),
            &tpl(&[("sign", "true")]),
        );
        let der = self
            .fx
            .hsm
            .engine()
            .export_public_key(self.session, public)
            .unwrap()
            .to_der()
            .to_vec();
        self.keys.push((name.to_owned(), private, der.clone()));
        der
    }

    fn sign(&mut self, name: &str, data: &[u8]) -> Vec<u8> {
        self.public(name);
        let key = self.keys.iter().find(|(n, _, _)| n == name).unwrap().1;
        self.fx
            .hsm
            .engine()
            .sign(
                self.session,
                key,
                SignMechanism::RsaPkcs1(HashAlg::Sha256),
                data,
            )
            .unwrap()
    }
}

struct World {
    fx: Fixture,
    approvers: Approvers,
}

impl World {
    /// Officers admin and co2, crypto users cu1, cu2, cu3; everyone's key registered.
    fn new() -> Self {
        let mut fx = Fixture::activated();
        let co = fx.co();
        fx.create_user(co, "co2", Role::CryptoOfficer, CU_PASSWORD);
        for cu in ["cu1", "cu2", "cu3"] {
            fx.create_user(co, cu, Role::CryptoUser, CU_PASSWORD);
        }
        fx.hsm.engine_mut().close_session(co);
        let mut w = Self {
            fx,
            approvers: Approvers::new(),
        };
        for (name, password) in [
            ("admin", support::CO_PASSWORD),
            ("co2", CU_PASSWORD),
            ("cu1", CU_PASSWORD),
            ("cu2", CU_PASSWORD),
            ("cu3", CU_PASSWORD),
        ] {
            let s = w.fx.login(name, password).unwrap();
            let der = w.approvers.public(name);
            let now = w.fx.now();
            let cmd = w.fx.hsm.engine().register_quorum_key(s, &der, now);
            w.fx.commit(s, cmd).unwrap();
            w.fx.hsm.engine_mut().close_session(s);
        }
        w
    }

    fn login(&mut self, name: &str) -> SessionId {
        let password = if name == "admin" {
            support::CO_PASSWORD
        } else {
            CU_PASSWORD
        };
        self.fx.login(name, password).unwrap()
    }

    fn set_value(&mut self, s: SessionId, service: QuorumService, value: u8) {
        let now = self.fx.now();
        let cmd = self
            .fx
            .hsm
            .engine()
            .set_quorum_value(s, service, value, now);
        self.fx.commit(s, cmd).unwrap();
    }

    /// A token on `s` approved by `by`.
    fn approvals(
        &mut self,
        s: SessionId,
        service: QuorumService,
        key: Option<KeyHandle>,
        by: &[&str],
    ) -> Approvals {
        let now = self.fx.now();
        let token = self
            .fx
            .hsm
            .engine_mut()
            .generate_quorum_token(s, service, key, 1, now)
            .unwrap();
        Approvals {
            token: token.id,
            signatures: by
                .iter()
                .map(|name| {
                    (
                        (*name).to_owned(),
                        self.approvers.sign(name, &token.approval_data),
                    )
                })
                .collect(),
        }
    }

    /// Runs a command-preparing operation with `approvals` (or none) and commits it.
    fn run(
        &mut self,
        s: SessionId,
        approvals: Option<(&Approvals, QuorumService, Option<KeyHandle>)>,
        op: impl FnOnce(&mut sealgate_hsm_core::Engine, Timestamp) -> Result<Step<()>, EngineError>,
    ) -> Result<(), EngineError> {
        let now = self.fx.now();
        let engine = self.fx.hsm.engine_mut();
        let step = match approvals {
            Some((a, service, key)) => {
                engine.with_approval(s, a, service, key, now, |e| op(e, now))
            }
            None => op(engine, now),
        }?;
        self.fx.hsm.complete(s, step).map_err(engine_err)
    }
}

fn is_quorum(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Quorum(_) | EngineError::QuorumRequired { .. }
    )
}

fn required(e: &EngineError) -> (u8, u8) {
    match e {
        EngineError::QuorumRequired {
            needed, approved, ..
        } => (*needed, *approved),
        other => panic!("expected a quorum refusal, got {other}"),
    }
}

#[test]
fn tokens_are_for_officers_on_admin_services_and_key_users_on_key_services() {
    let mut w = World::new();
    let admin = w.login("admin");
    let cu1 = w.login("cu1");
    let cu3 = w.login("cu3");
    let anon = w.fx.session();
    let (_, key) = w.fx.gen_pair(
        cu1,
        KeySpec::Ec(Curve::P256),
        &tpl(&[]),
        &tpl(&[("sign", "true")]),
    );
    let now = w.fx.now();
    let e = w.fx.hsm.engine_mut();
    for service in [QuorumService::User, QuorumService::Quorum] {
        assert!(
            e.generate_quorum_token(admin, service, None, 1, now)
                .is_ok()
        );
        assert!(is_quorum(
            &e.generate_quorum_token(cu1, service, None, 1, now)
                .unwrap_err()
        ));
        assert!(
            e.generate_quorum_token(anon, service, None, 1, now)
                .is_err()
        );
        // Admin tokens name no key, and one is live per service and node.
        assert!(
            e.generate_quorum_token(admin, service, Some(key), 1, now)
                .is_err()
        );
        let again = e
            .generate_quorum_token(admin, service, None, 1, now)
            .unwrap_err();
        assert!(again.to_string().contains("live"), "{again}");
    }
    for service in [QuorumService::KeyManagement, QuorumService::KeyUsage] {
        assert!(
            e.generate_quorum_token(cu1, service, Some(key), 1, now)
                .is_ok()
        );
        // Several key tokens may be live at once.
        assert!(
            e.generate_quorum_token(cu1, service, Some(key), 1, now)
                .is_ok()
        );
        assert!(e.generate_quorum_token(cu1, service, None, 1, now).is_err());
        assert!(
            e.generate_quorum_token(admin, service, Some(key), 1, now)
                .is_err()
        );
        // A crypto user who cannot see the key gets no token for it.
        assert!(
            e.generate_quorum_token(cu3, service, Some(key), 1, now)
                .is_err()
        );
        assert!(
            e.generate_quorum_token(anon, service, Some(key), 1, now)
                .is_err()
        );
    }
}

#[test]
fn the_user_service_controls_an_officers_user_management_only() {
    let mut w = World::new();
    let admin = w.login("admin");
    w.set_value(admin, QuorumService::User, 2);
    type Op = Box<
        dyn Fn(
            &mut sealgate_hsm_core::Engine,
            SessionId,
            Timestamp,
        ) -> Result<Step<()>, EngineError>,
    >;
    let cmd = |r: Result<sealgate_hsm_core::Command, EngineError>| r.map(Step::Replicate);
    let ops: Vec<(&str, Op)> = vec![
        (
            "create",
            Box::new(move |e, s, now| {
                cmd(e.create_user(s, "newbie", Role::CryptoUser, &pw(CU_PASSWORD), now))
            }),
        ),
        (
            "change another's password",
            Box::new(move |e, s, now| cmd(e.change_password(s, "cu3", &pw("another-pass-1"), now))),
        ),
        (
            "change own password",
            Box::new(move |e, s, now| {
                cmd(e.change_password(s, "admin", &pw(support::CO_PASSWORD), now))
            }),
        ),
        (
            "change mfa",
            Box::new(move |e, s, now| cmd(e.change_mfa(s, "cu2", None, now))),
        ),
        (
            "delete",
            Box::new(move |e, s, now| cmd(e.delete_user(s, "cu2", now))),
        ),
    ];
    for (what, op) in &ops {
        let err = w.run(admin, None, |e, now| op(e, admin, now)).unwrap_err();
        assert_eq!(required(&err), (2, 0), "{what}");
        // One approval is not enough; a crypto user's does not count.
        let a = w.approvals(admin, QuorumService::User, None, &["admin", "cu1"]);
        let err = w
            .run(admin, Some((&a, QuorumService::User, None)), |e, now| {
                op(e, admin, now)
            })
            .unwrap_err();
        assert_eq!(required(&err), (2, 1), "{what}");
        let a = w.approvals(admin, QuorumService::User, None, &["admin", "co2"]);
        w.run(admin, Some((&a, QuorumService::User, None)), |e, now| {
            op(e, admin, now)
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    // A crypto user's own password and MFA are not controlled.
    let cu1 = w.login("cu1");
    w.run(cu1, None, |e, now| {
        cmd(e.change_password(cu1, "cu1", &pw(CU_PASSWORD), now))
    })
    .unwrap();
    w.run(cu1, None, |e, now| cmd(e.change_mfa(cu1, "cu1", None, now)))
        .unwrap();
}

#[test]
fn changing_a_quorum_value_needs_approval_at_the_current_value() {
    let mut w = World::new();
    let admin = w.login("admin");
    w.set_value(admin, QuorumService::Quorum, 2);
    let set = |v: u8| {
        move |e: &mut sealgate_hsm_core::Engine, now| {
            e.set_quorum_value(admin, QuorumService::User, v, now)
                .map(Step::Replicate)
        }
    };
    assert_eq!(required(&w.run(admin, None, set(2)).unwrap_err()), (2, 0));
    let a = w.approvals(admin, QuorumService::Quorum, None, &["admin", "co2"]);
    w.run(admin, Some((&a, QuorumService::Quorum, None)), set(2))
        .unwrap();
    // A user-service token does not approve a quorum-service operation.
    let a = w.approvals(admin, QuorumService::User, None, &["admin", "co2"]);
    assert!(is_quorum(
        &w.run(admin, Some((&a, QuorumService::Quorum, None)), set(1))
            .unwrap_err()
    ));
    // Values: 1 to 8, and no more than the officers with registered keys.
    let a = w.approvals(admin, QuorumService::Quorum, None, &["admin", "co2"]);
    assert!(is_quorum(
        &w.run(admin, Some((&a, QuorumService::Quorum, None)), set(9))
            .unwrap_err()
    ));
    let a = w.approvals(admin, QuorumService::Quorum, None, &["admin", "co2"]);
    let err = w
        .run(admin, Some((&a, QuorumService::Quorum, None)), set(3))
        .unwrap_err();
    assert!(err.to_string().contains("3 crypto officers"), "{err}");
    // Crypto users may not set values.
    let cu1 = w.login("cu1");
    assert!(
        w.run(cu1, None, |e, now| e
            .set_quorum_value(cu1, QuorumService::User, 1, now)
            .map(Step::Replicate))
            .is_err()
    );
}

#[test]
fn key_services_control_their_operations_and_only_the_keys_users_approve() {
    let mut w = World::new();
    let cu1 = w.login("cu1");
    // Quorum values at most the key's users: owner plus shares made at creation.
    let q = KeyQuorum {
        usage: 2,
        management: 2,
    };
    let now = w.fx.now();
    let refused = w.fx.hsm.engine_mut().with_key_quorum(cu1, q, &[], |e| {
        e.generate_key(cu1, KeySpec::Aes(AesSize::Aes256), &tpl(&[]), now)
    });
    assert!(is_quorum(&refused.unwrap_err()));
    let make = |w: &mut World, spec: KeySpec, attrs: &[(&str, &str)]| {
        let now = w.fx.now();
        let step =
            w.fx.hsm
                .engine_mut()
                .with_key_quorum(cu1, q, &["cu2".to_owned()], |e| {
                    e.generate_key(cu1, spec, &tpl(attrs), now)
                })
                .unwrap();
        w.fx.finish_keys(cu1, step)[0]
    };
    let key = make(
        &mut w,
        KeySpec::Aes(AesSize::Aes256),
        &[
            ("extractable", "true"),
            ("wrap", "true"),
            ("unwrap", "true"),
        ],
    );
    let mac = make(&mut w, KeySpec::GenericSecret(32), &[("sign", "true")]);
    let (_, ec) = w.fx.gen_pair(
        cu1,
        KeySpec::Ec(Curve::P256),
        &tpl(&[]),
        &tpl(&[("sign", "true"), ("extractable", "true")]),
    );
    assert_eq!(w.fx.hsm.engine().key_quorum(key), q);

    // key-usage: sign.
    let sign = |e: &mut sealgate_hsm_core::Engine| {
        e.sign(cu1, mac, SignMechanism::Hmac(HashAlg::Sha256), b"x")
            .map(|_| ())
    };
    let now = w.fx.now();
    assert_eq!(required(&sign(w.fx.hsm.engine_mut()).unwrap_err()), (2, 0));
    for (by, ok) in [
        (&["cu1", "cu3"][..], false), // cu3 is not one of the key's users
        (&["cu1", "admin"][..], false),
        (&["cu1", "cu2"][..], true),
    ] {
        let a = w.approvals(cu1, QuorumService::KeyUsage, Some(mac), by);
        let r = w.fx.hsm.engine_mut().with_approval(
            cu1,
            &a,
            QuorumService::KeyUsage,
            Some(mac),
            now,
            sign,
        );
        assert_eq!(r.is_ok(), ok, "{by:?}: {r:?}");
    }
    // A key-usage token does not approve management, nor another key.
    let a = w.approvals(cu1, QuorumService::KeyUsage, Some(key), &["cu1", "cu2"]);
    assert!(
        w.fx.hsm
            .engine_mut()
            .with_approval(
                cu1,
                &a,
                QuorumService::KeyManagement,
                Some(key),
                now,
                |_| Ok(())
            )
            .is_err()
    );
    let a = w.approvals(cu1, QuorumService::KeyUsage, Some(ec), &["cu1", "cu2"]);
    assert!(
        w.fx.hsm
            .engine_mut()
            .with_approval(cu1, &a, QuorumService::KeyUsage, Some(mac), now, sign)
            .is_err()
    );

    // key-management: share, unshare, set-attribute, wrap, unwrap with it.
    type Op =
        Box<dyn Fn(&mut sealgate_hsm_core::Engine, Timestamp) -> Result<Step<()>, EngineError>>;
    let ops: Vec<(&str, Op)> = vec![
        (
            "share",
            Box::new(move |e, now| e.share_key(cu1, key, "cu3", now).map(Step::Replicate)),
        ),
        (
            "set-attribute",
            Box::new(move |e, now| {
                e.set_attributes(
                    cu1,
                    key,
                    &[AttributeChange::parse("label", "x").unwrap()],
                    now,
                )
            }),
        ),
        (
            "wrap",
            Box::new(move |e, _| {
                e.wrap_key(cu1, key, WrapMechanism::AesKeyWrapPad, ec)
                    .map(|_| Step::Done(()))
            }),
        ),
        (
            "wrap it",
            Box::new(move |e, _| {
                e.wrap_key(cu1, ec, WrapMechanism::AesKeyWrapPad, key)
                    .map(|_| Step::Done(()))
            }),
        ),
        (
            "unwrap with it",
            Box::new(move |e, now| {
                e.unwrap_key(
                    cu1,
                    key,
                    WrapMechanism::AesKeyWrapPad,
                    &[0; 40],
                    sealgate_hsm_core::crypto::KeyType::Ec,
                    &tpl(&[]),
                    now,
                )
                .map(|_| Step::Done(()))
            }),
        ),
    ];
    for (what, op) in &ops {
        let first = w.run(cu1, None, |e, now| op(e, now));
        if *what == "wrap" {
            // Wrapping another key under it manages the other key, not this one.
            if let Err(e) = &first {
                assert!(!is_quorum(e), "{what}: {e}");
            }
            continue;
        }
        let err = first.unwrap_err();
        assert_eq!(required(&err), (2, 0), "{what}");
        let a = w.approvals(
            cu1,
            QuorumService::KeyManagement,
            Some(key),
            &["cu1", "cu2"],
        );
        let r = w.run(
            cu1,
            Some((&a, QuorumService::KeyManagement, Some(key))),
            |e, now| op(e, now),
        );
        // Approved, the operation runs on its own merits (unwrapping garbage still fails).
        if let Err(e) = r {
            assert!(!is_quorum(&e), "{what}: {e}");
        }
    }
    // Unsharing is allowed down to the quorum value (the key was shared with cu3 above),
    // refused below it even with approvals.
    let a = w.approvals(
        cu1,
        QuorumService::KeyManagement,
        Some(key),
        &["cu1", "cu2"],
    );
    w.run(
        cu1,
        Some((&a, QuorumService::KeyManagement, Some(key))),
        |e, now| e.unshare_key(cu1, key, "cu3", now).map(Step::Replicate),
    )
    .unwrap();
    let a = w.approvals(
        cu1,
        QuorumService::KeyManagement,
        Some(key),
        &["cu1", "cu2"],
    );
    let err = w
        .run(
            cu1,
            Some((&a, QuorumService::KeyManagement, Some(key))),
            |e, now| e.unshare_key(cu1, key, "cu2", now).map(Step::Replicate),
        )
        .unwrap_err();
    assert!(err.to_string().contains("fewer users"), "{err}");
}

#[test]
fn tokens_expire_are_used_once_and_stay_in_their_session() {
    let mut w = World::new();
    let admin = w.login("admin");
    let other = w.login("co2");
    w.set_value(admin, QuorumService::User, 2);
    let create = |name: &'static str| {
        move |e: &mut sealgate_hsm_core::Engine, now| {
            e.create_user(admin, name, Role::CryptoUser, &pw(CU_PASSWORD), now)
                .map(Step::Replicate)
        }
    };
    // Another session's token: refused, and still usable by its own session.
    let a = w.approvals(admin, QuorumService::User, None, &["admin", "co2"]);
    let now = w.fx.now();
    let err =
        w.fx.hsm
            .engine_mut()
            .with_approval(other, &a, QuorumService::User, None, now, |_| Ok(()))
            .unwrap_err();
    assert!(err.to_string().contains("another session"), "{err}");
    w.run(admin, Some((&a, QuorumService::User, None)), create("u1"))
        .unwrap();
    // Used once.
    let err = w
        .run(admin, Some((&a, QuorumService::User, None)), create("u2"))
        .unwrap_err();
    assert!(err.to_string().contains("not live"), "{err}");
    // Expired.
    let a = w.approvals(admin, QuorumService::User, None, &["admin", "co2"]);
    let late = Timestamp(w.fx.now().0 + TOKEN_LIFETIME_MS + 1);
    let err =
        w.fx.hsm
            .engine_mut()
            .with_approval(admin, &a, QuorumService::User, None, late, |_| Ok(()))
            .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    // Gone with a logout.
    let a = w.approvals(admin, QuorumService::User, None, &["admin", "co2"]);
    w.fx.hsm.engine_mut().logout(admin).unwrap();
    w.fx.login_on(admin, "admin", support::CO_PASSWORD).unwrap();
    let err = w
        .run(admin, Some((&a, QuorumService::User, None)), create("u3"))
        .unwrap_err();
    assert!(err.to_string().contains("not live"), "{err}");
    // At most 1,024 live key tokens.
    let cu1 = w.login("cu1");
    let k = w.fx.gen_key(cu1, KeySpec::Aes(AesSize::Aes128), &tpl(&[]));
    let now = w.fx.now();
    let e = w.fx.hsm.engine_mut();
    for _ in 0..sealgate_hsm_core::MAX_TOKENS {
        e.generate_quorum_token(cu1, QuorumService::KeyUsage, Some(k), 1, now)
            .unwrap();
    }
    assert!(matches!(
        e.generate_quorum_token(cu1, QuorumService::KeyUsage, Some(k), 1, now),
        Err(EngineError::LimitReached { .. })
    ));
    // Expired ones make room.
    let later = Timestamp(now.0 + TOKEN_LIFETIME_MS + 1);
    assert!(
        e.generate_quorum_token(cu1, QuorumService::KeyUsage, Some(k), 1, later)
            .is_ok()
    );
}

#[test]
fn mfa_holds_the_login_until_the_challenge_is_signed_and_a_reset_turns_it_off() {
    let mut w = World::new();
    let co2 = w.login("co2");
    let der = w.approvers.public("co2");
    let now = w.fx.now();
    let cmd = w.fx.hsm.engine().change_mfa(co2, "co2", Some(&der), now);
    w.fx.commit(co2, cmd).unwrap();
    w.fx.hsm.engine_mut().close_session(co2);

    // The password alone: no login, a challenge.
    let s = w.fx.login("co2", CU_PASSWORD).unwrap();
    assert!(w.fx.hsm.engine().session_user(s).unwrap().is_none());
    let challenge = w.fx.hsm.engine().mfa_challenge(s).unwrap();
    // A wrong signature fails the login and counts as a failure.
    let wrong = w.approvers.sign("cu1", &challenge);
    let now = w.fx.now();
    let step = w.fx.hsm.engine_mut().finish_mfa(s, &wrong, now).unwrap();
    assert!(w.fx.hsm.complete(s, step).is_err());
    assert!(w.fx.hsm.engine().session_user(s).unwrap().is_none());
    let failures = |w: &World| {
        let admin_view = w.fx.hsm.engine().list_users(s).unwrap();
        admin_view
            .iter()
            .find(|u| u.name == "co2")
            .unwrap()
            .failed_logins
    };
    assert_eq!(failures(&w), 1);
    // The right signature logs in.
    w.fx.login_on(s, "co2", CU_PASSWORD).unwrap();
    let challenge = w.fx.hsm.engine().mfa_challenge(s).unwrap();
    let good = w.approvers.sign("co2", &challenge);
    let now = w.fx.now();
    let step = w.fx.hsm.engine_mut().finish_mfa(s, &good, now).unwrap();
    w.fx.hsm.complete(s, step).unwrap();
    assert_eq!(
        w.fx.hsm.engine().session_user(s).unwrap().map(|(_, r)| r),
        Some(Role::CryptoOfficer)
    );
    // Another officer's reset turns MFA off (the key was lost).
    let admin = w.login("admin");
    let now = w.fx.now();
    let cmd =
        w.fx.hsm
            .engine()
            .change_password(admin, "co2", &pw("reset-password-1"), now);
    w.fx.commit(admin, cmd).unwrap();
    let s = w.fx.login("co2", "reset-password-1").unwrap();
    assert!(w.fx.hsm.engine().session_user(s).unwrap().is_some());
    // Registrations are replicated state: a node restored from the store has them (the
    // officers' keys), and the reset co2's is gone.
    let mut clone = w.fx.clone_cluster();
    let s = clone.session();
    let users = clone.hsm.engine().list_users(s).unwrap();
    let id = |name: &str| users.iter().find(|u| u.name == name).unwrap().id;
    let engine = clone.hsm.engine();
    assert_eq!(engine.quorum_registration(id("admin")), (true, false));
    assert_eq!(engine.quorum_registration(id("co2")), (false, false));
}
