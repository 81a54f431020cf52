//! Engine signing cost versus the bare key (the crypto crate's `PrivateKey::sign`, a direct
//! aws-lc call) for the signatures a TLS handshake needs: ECDSA P-256/SHA-256, Ed25519 and
//! RSA-2048 PSS/SHA-256, over a 130-byte message (the size of a TLS 1.3 CertificateVerify
//! input). The difference is the engine's overhead: session and permission checks, key lookup
//! and attribute checks. Run: `cargo bench -p sealgate-hsm-core --bench engine_sign`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sealgate_hsm_core::crypto::{
    Curve, HashAlg, KeyMaterial, KeySpec, MasterKey, Password, RsaSize, SignMechanism,
};
use sealgate_hsm_core::{
    EngineConfig, KeyHandle, KeyTemplate, LocalHsm, MemoryStore, Role, SessionId, Timestamp,
};
use std::hint::black_box;

struct Setup {
    hsm: LocalHsm<MemoryStore>,
    session: SessionId,
}

fn login(hsm: &mut LocalHsm<MemoryStore>, name: &str, pw: &str) -> SessionId {
    let s = hsm.engine_mut().open_session().unwrap();
    let step = hsm
        .engine_mut()
        .login(s, name, &Password::from(pw), Timestamp(2))
        .unwrap();
    hsm.complete(s, step).unwrap();
    s
}

fn setup() -> Setup {
    let (master, _) = MasterKey::generate().unwrap();
    let mut hsm = LocalHsm::open(MemoryStore::new(), master, EngineConfig::default()).unwrap();
    let cmd = hsm
        .engine()
        .initialize(&Password::from("preco-password"), Timestamp(1))
        .unwrap();
    hsm.commit(&cmd, None).unwrap();
    let preco = login(&mut hsm, "admin", "preco-password");
    let cmd = hsm
        .engine()
        .activate(preco, &Password::from("officer-password"), Timestamp(3))
        .unwrap();
    hsm.commit(&cmd, Some(preco)).unwrap();
    let cmd = hsm
        .engine()
        .create_user(
            preco,
            "bench",
            Role::CryptoUser,
            &Password::from("bench-password"),
            Timestamp(4),
        )
        .unwrap();
    hsm.commit(&cmd, Some(preco)).unwrap();
    let session = login(&mut hsm, "bench", "bench-password");
    Setup { hsm, session }
}

fn pair(setup: &mut Setup, spec: KeySpec) -> KeyHandle {
    let mut private = KeyTemplate::default();
    private.set("sign", "true").unwrap();
    let s = setup.session;
    let step = setup
        .hsm
        .engine_mut()
        .generate_key_pair(s, spec, &KeyTemplate::default(), &private, Timestamp(5))
        .unwrap();
    let handles: Vec<KeyHandle> = setup.hsm.complete(s, step).unwrap();
    *handles.get(1).expect("a pair has two handles")
}

fn bench(c: &mut Criterion) {
    let mut setup = setup();
    let message = [0x20u8; 130];
    let cases = [
        (
            "p256",
            KeySpec::Ec(Curve::P256),
            SignMechanism::Ecdsa(HashAlg::Sha256),
        ),
        ("ed25519", KeySpec::Ed25519, SignMechanism::Ed25519),
        (
            "rsa2048",
            KeySpec::Rsa(RsaSize::Rsa2048),
            SignMechanism::RsaPss(HashAlg::Sha256),
        ),
    ];
    let mut group = c.benchmark_group("sign");
    for (name, spec, mechanism) in cases {
        let handle = pair(&mut setup, spec);
        // Fill the engine with other keys so that lookups are realistic.
        for _ in 0..50 {
            pair(&mut setup, KeySpec::Ed25519);
        }
        let session = setup.session;
        let engine = setup.hsm.engine();
        group.bench_function(BenchmarkId::new("engine", name), |b| {
            b.iter(|| {
                engine
                    .sign(session, black_box(handle), mechanism, black_box(&message))
                    .unwrap()
            })
        });
        let KeyMaterial::Private(bare) = KeyMaterial::generate(spec).unwrap() else {
            panic!("asymmetric spec")
        };
        group.bench_function(BenchmarkId::new("bare-key", name), |b| {
            b.iter(|| bare.sign(mechanism, black_box(&message)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
