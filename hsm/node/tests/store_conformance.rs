//! One conformance suite for every store (memory and redb), the engine over redb across a
//! restart, and a scan of the redb file for key material and passwords in clear.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use sealgate_hsm_core::crypto::client::{
    ClientUnwrappingKey, ClientWrappingKey, unwrap_export, wrap_for_import,
};
use sealgate_hsm_core::crypto::{
    AesSize, Curve, EncryptMechanism, HashAlg, KeySpec, KeyType, MasterKey, OaepHash, Password,
    RsaSize, SignMechanism, WrapMechanism, random_bytes,
};
use sealgate_hsm_core::{
    EngineConfig, KeyFilter, KeyHandle, KeyTemplate, LocalHsm, MemoryStore, Role, SessionId,
    Snapshot, Store, StoreBatch, StoreOp, Table, Timestamp,
};
use sealgate_hsm_node::RedbStore;
use std::path::Path;

// ----- the suite -------------------------------------------------------------------------

/// Runs the conformance checks on a store; `reopen` gives back the same store reopened.
fn conformance<S: Store>(mut store: S, reopen: impl FnOnce(S) -> S) {
    assert!(store.load().unwrap().is_empty(), "a new store is empty");
    let put = |table, key, value: &[u8]| StoreOp::Put {
        table,
        key,
        value: value.to_vec(),
    };
    store
        .commit(&StoreBatch {
            ops: vec![
                put(Table::Meta, 0, b"meta"),
                put(Table::Users, 1, b"u1"),
                put(Table::Users, 2, b"u2"),
                put(Table::Keys, 1, b"k1"),
                put(Table::Keys, u64::MAX, b"kmax"),
            ],
        })
        .unwrap();
    store
        .commit(&StoreBatch {
            ops: vec![
                put(Table::Users, 1, b"u1-new"),
                StoreOp::Delete {
                    table: Table::Users,
                    key: 2,
                },
                StoreOp::Delete {
                    table: Table::Keys,
                    key: 77,
                },
                put(Table::Keys, 2, b""),
            ],
        })
        .unwrap();
    // An empty batch is fine.
    store.commit(&StoreBatch::default()).unwrap();
    let mut expected = Snapshot::default();
    for (t, k, v) in [
        (Table::Meta, 0, &b"meta"[..]),
        (Table::Users, 1, b"u1-new"),
        (Table::Keys, 1, b"k1"),
        (Table::Keys, 2, b""),
        (Table::Keys, u64::MAX, b"kmax"),
    ] {
        expected.rows.insert((t, k), v.to_vec());
    }
    assert_eq!(store.load().unwrap(), expected);
    let mut store = reopen(store);
    assert_eq!(store.load().unwrap(), expected, "rows survive a reopen");
    // The same key in different tables stays apart.
    store
        .commit(&StoreBatch {
            ops: vec![
                put(Table::Meta, 1, b"m1"),
                put(Table::Users, 1, b"u1-again"),
            ],
        })
        .unwrap();
    let rows = store.load().unwrap().rows;
    assert_eq!(rows[&(Table::Meta, 1)], b"m1");
    assert_eq!(rows[&(Table::Users, 1)], b"u1-again");
    assert_eq!(rows[&(Table::Keys, 1)], b"k1");
}

#[test]
fn memory_store_conforms() {
    conformance(MemoryStore::new(), |s| s);
}

#[test]
fn redb_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hsm.redb");
    let reopen_path = path.clone();
    conformance(RedbStore::open(&path).unwrap(), move |s| {
        drop(s);
        RedbStore::open(&reopen_path).unwrap()
    });
}

#[test]
fn redb_store_reports_a_bad_file_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.redb");
    std::fs::write(&path, vec![0x5a; 4096]).unwrap();
    let e = RedbStore::open(&path).unwrap_err();
    assert!(e.to_string().contains("garbage.redb"), "{e}");
}

// ----- the engine over redb ------------------------------------------------------------------

struct Node {
    hsm: LocalHsm<RedbStore>,
    clock: u64,
}

const CO_PW: &str = "officer-password";
const CU_PW: &str = "crypto-user-pw";

impl Node {
    fn open(path: &Path, master: &[u8]) -> Self {
        let hsm = LocalHsm::open(
            RedbStore::open(path).unwrap(),
            MasterKey::from_bytes(master).unwrap(),
            EngineConfig::default(),
        )
        .unwrap();
        Self {
            hsm,
            clock: 1_700_000_000_000,
        }
    }

    fn now(&mut self) -> Timestamp {
        self.clock += 1;
        Timestamp(self.clock)
    }

    fn login(&mut self, name: &str, password: &str) -> SessionId {
        let s = self.hsm.engine_mut().open_session().unwrap();
        let now = self.now();
        let step = self
            .hsm
            .engine_mut()
            .login(s, name, &Password::from(password), now)
            .unwrap();
        self.hsm.complete(s, step).unwrap();
        s
    }

    fn setup(&mut self) -> SessionId {
        let now = self.now();
        let cmd = self
            .hsm
            .engine()
            .initialize(&Password::from("preco-password"), now)
            .unwrap();
        self.hsm.commit(&cmd, None).unwrap();
        let preco = self.login("admin", "preco-password");
        let cmd = self
            .hsm
            .engine()
            .activate(preco, &Password::from(CO_PW), now)
            .unwrap();
        self.hsm.commit(&cmd, Some(preco)).unwrap();
        let cmd = self
            .hsm
            .engine()
            .create_user(
                preco,
                "alice",
                Role::CryptoUser,
                &Password::from(CU_PW),
                now,
            )
            .unwrap();
        self.hsm.commit(&cmd, Some(preco)).unwrap();
        self.login("alice", CU_PW)
    }

    fn keys(
        &mut self,
        s: SessionId,
        step: sealgate_hsm_core::Step<Vec<KeyHandle>>,
    ) -> Vec<KeyHandle> {
        self.hsm.complete(s, step).unwrap()
    }
}

fn tpl(pairs: &[(&str, &str)]) -> KeyTemplate {
    let mut t = KeyTemplate::default();
    for (k, v) in pairs {
        t.set(k, v).unwrap();
    }
    t
}

#[test]
fn the_engine_over_redb_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hsm.redb");
    let master = random_bytes(32).unwrap();
    let mut node = Node::open(&path, &master);
    let alice = node.setup();
    let now = node.now();
    let step = node
        .hsm
        .engine_mut()
        .generate_key_pair(
            alice,
            KeySpec::Ec(Curve::P256),
            &tpl(&[("verify", "true"), ("label", "web")]),
            &tpl(&[("sign", "true"), ("label", "web")]),
            now,
        )
        .unwrap();
    let pair = node.keys(alice, step);
    let step = node
        .hsm
        .engine_mut()
        .generate_key(
            alice,
            KeySpec::Aes(AesSize::Aes256),
            &tpl(&[("encrypt", "true"), ("decrypt", "true")]),
            now,
        )
        .unwrap();
    let aes = node.keys(alice, step)[0];
    let ciphertext = node
        .hsm
        .engine()
        .encrypt(alice, aes, EncryptMechanism::AesGcm, b"kept", b"")
        .unwrap();
    let public_before = node.hsm.engine().export_public_key(alice, pair[0]).unwrap();
    let users_before = node.hsm.engine().list_users(alice).unwrap();
    let keys_before = node
        .hsm
        .engine()
        .list_keys(alice, &KeyFilter::default())
        .unwrap();
    drop(node);

    let mut node = Node::open(&path, &master);
    let alice = node.login("alice", CU_PW);
    assert_eq!(node.hsm.engine().list_users(alice).unwrap(), users_before);
    assert_eq!(
        node.hsm
            .engine()
            .list_keys(alice, &KeyFilter::default())
            .unwrap(),
        keys_before
    );
    let m = SignMechanism::Ecdsa(HashAlg::Sha256);
    let sig = node
        .hsm
        .engine()
        .sign(alice, pair[1], m, b"after restart")
        .unwrap();
    public_before.verify(m, b"after restart", &sig).unwrap();
    assert_eq!(
        node.hsm
            .engine()
            .decrypt(alice, aes, EncryptMechanism::AesGcm, &ciphertext, b"")
            .unwrap(),
        b"kept"
    );
    // New handles continue after the old ones.
    let now = node.now();
    let step = node
        .hsm
        .engine_mut()
        .generate_key(alice, KeySpec::GenericSecret(32), &tpl(&[]), now)
        .unwrap();
    let next = node.keys(alice, step)[0];
    assert!(next.0 > aes.0);
    drop(node);

    // The wrong master key is refused before anything is read.
    let other = random_bytes(32).unwrap();
    let e = LocalHsm::open(
        RedbStore::open(&path).unwrap(),
        MasterKey::from_bytes(&other).unwrap(),
        EngineConfig::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("master key does not match"), "{e}");
}

/// Every 16-byte window of `secret` that is not also in `public` (public key bytes inside a
/// PKCS#8 are not secret).
fn secret_windows<'a>(secret: &'a [u8], public: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    secret
        .windows(16)
        .filter(move |w| !public.windows(16).any(|p| p == *w))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_store_file_holds_no_key_material_or_password_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hsm.redb");
    let master = random_bytes(32).unwrap();
    let mut node = Node::open(&path, &master);
    let alice = node.setup();
    let now = node.now();

    // Import a key whose bytes the test made: the HSM's RSA public key wraps them outside.
    let step = node
        .hsm
        .engine_mut()
        .generate_key_pair(
            alice,
            KeySpec::Rsa(RsaSize::Rsa2048),
            &tpl(&[]),
            &tpl(&[("unwrap", "true")]),
            now,
        )
        .unwrap();
    let rsa = node.keys(alice, step);
    let hsm_public = node.hsm.engine().export_public_key(alice, rsa[0]).unwrap();
    let kek = random_bytes(32).unwrap();
    let import = WrapMechanism::RsaOaep(OaepHash::Sha256);
    let wrapped = wrap_for_import(
        import,
        ClientWrappingKey::RsaPublic(&hsm_public),
        KeyType::Aes,
        &kek,
    )
    .unwrap();
    let step = node
        .hsm
        .engine_mut()
        .unwrap_key(
            alice,
            rsa[1],
            import,
            &wrapped,
            KeyType::Aes,
            &tpl(&[("wrap", "true")]),
            now,
        )
        .unwrap();
    let kek_handle = node.keys(alice, step)[0];
    let mut secrets: Vec<(String, Vec<u8>, Vec<u8>)> =
        vec![("imported AES key".into(), kek.clone(), vec![])];

    // Generate extractable keys of every kind inside the HSM and learn their bytes by
    // exporting them under the key the test knows.
    let specs = [
        KeySpec::Aes(AesSize::Aes128),
        KeySpec::Aes(AesSize::Aes256),
        KeySpec::GenericSecret(64),
        KeySpec::Rsa(RsaSize::Rsa2048),
        KeySpec::Ec(Curve::P256),
        KeySpec::Ec(Curve::P521),
        KeySpec::Ed25519,
    ];
    for spec in specs {
        let handle = if spec.key_type().is_asymmetric() {
            let step = node
                .hsm
                .engine_mut()
                .generate_key_pair(
                    alice,
                    spec,
                    &tpl(&[]),
                    &tpl(&[("extractable", "true")]),
                    now,
                )
                .unwrap();
            node.keys(alice, step)[1]
        } else {
            let step = node
                .hsm
                .engine_mut()
                .generate_key(alice, spec, &tpl(&[("extractable", "true")]), now)
                .unwrap();
            node.keys(alice, step)[0]
        };
        let out = node
            .hsm
            .engine()
            .wrap_key(alice, kek_handle, WrapMechanism::AesKeyWrapPad, handle)
            .unwrap();
        let bytes = unwrap_export(
            WrapMechanism::AesKeyWrapPad,
            ClientUnwrappingKey::Aes(&kek),
            &out,
            spec.key_type(),
        )
        .unwrap();
        let public = if spec.key_type().is_asymmetric() {
            node.hsm
                .engine()
                .export_public_key(alice, handle)
                .unwrap()
                .to_der()
                .to_vec()
        } else {
            vec![]
        };
        secrets.push((format!("{spec}"), bytes.to_vec(), public));
    }
    drop(node);

    let file = std::fs::read(&path).unwrap();
    // Positive control: things that are stored in clear are found, so the scan works.
    let (_, _, ec_public) = &secrets[5];
    assert!(
        contains(&file, ec_public),
        "the scan finds a stored public key"
    );
    assert!(
        contains(&file, b"alice"),
        "the scan finds a stored user name"
    );
    let mut windows = 0;
    for (what, secret, public) in &secrets {
        for w in secret_windows(secret, public) {
            windows += 1;
            assert!(
                !contains(&file, w),
                "{what}: key bytes found in clear in the store file"
            );
        }
    }
    assert!(windows > 1000, "the scan checked {windows} windows");
    for password in ["preco-password", CO_PW, CU_PW] {
        assert!(
            !contains(&file, password.as_bytes()),
            "password {password} in the store file"
        );
    }
    // Password hashes are sealed too: no argon2 PHC string in clear.
    assert!(!contains(&file, b"$argon2id$"));
}
