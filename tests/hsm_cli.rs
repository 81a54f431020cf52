//! The acceptance walk-through with real processes: `sealgate cluster init`, one
//! `sealgate node`, activation, users, keys, signatures checked by the real `openssl`, sharing
//! rules, the role table, the lockout, and a restart that keeps everything.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::Value;
use support::{CO_PASSWORD, CU1_PASSWORD, CU2_PASSWORD, Cluster, openssl};

const CO: Option<(&str, &str)> = Some(("admin", CO_PASSWORD));
const CU1: Option<(&str, &str)> = Some(("cu1", CU1_PASSWORD));
const CU2: Option<(&str, &str)> = Some(("cu2", CU2_PASSWORD));

fn ok_data(v: &Value) -> &Value {
    assert_eq!(v["ok"], true, "expected success: {v}");
    assert!(v["error"].is_null(), "{v}");
    &v["data"]
}

fn error_of(v: &Value) -> (String, String) {
    assert_eq!(v["ok"], false, "expected a refusal: {v}");
    assert!(v["data"].is_null(), "{v}");
    (
        v["error"]["kind"].as_str().unwrap().to_owned(),
        v["error"]["message"].as_str().unwrap().to_owned(),
    )
}

/// Generates a key pair as CU1; returns (public handle, private handle).
fn generate_pair(cluster: &Cluster, args: &[&str]) -> (String, String) {
    let mut all = vec!["key", "generate"];
    all.extend_from_slice(args);
    let v = cluster.sg_json(CU1, &all);
    let data = ok_data(&v);
    (data["public"].to_string(), data["private"].to_string())
}

/// Signs `data.txt` with `handle` as `user`, checks the signature with `openssl dgst -verify`
/// against the exported public key `public`.
fn sign_and_verify_with_openssl(
    cluster: &Cluster,
    user: Option<(&str, &str)>,
    handle: &str,
    public: &str,
    mechanism: &str,
    tag: &str,
) {
    let dir = cluster.root.path();
    let sig = format!("{tag}.sig");
    let pem = format!("{tag}.pem");
    cluster.sg_ok(
        user,
        &[
            "crypto",
            "sign",
            "--handle",
            handle,
            "--mechanism",
            mechanism,
            "--data-path",
            "data.txt",
            "--format",
            "raw",
            "--out",
            &sig,
        ],
    );
    cluster.sg_ok(CU1, &["key", "export", "--handle", public, "--out", &pem]);
    let out = openssl(
        dir,
        &[
            "dgst",
            "-sha256",
            "-verify",
            &pem,
            "-signature",
            &sig,
            "data.txt",
        ],
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK"),
        "openssl rejected the {tag} signature: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A changed message does not verify (the check above can fail).
    std::fs::write(dir.join("other.txt"), b"something else").unwrap();
    let out = openssl(
        dir,
        &[
            "dgst",
            "-sha256",
            "-verify",
            &pem,
            "-signature",
            &sig,
            "other.txt",
        ],
    );
    assert!(
        !out.status.success(),
        "openssl accepted a signature over other data"
    );
}

#[test]
fn one_node_cluster_end_to_end() {
    let mut cluster = Cluster::init(1);
    cluster.start(1);
    std::fs::write(
        cluster.root.path().join("data.txt"),
        b"hello from sealgate\n",
    )
    .unwrap();

    // Before activation only the PRECO exists; activation makes it a CO.
    cluster.activate();
    cluster.create_user("cu1", "cu", CU1_PASSWORD);
    cluster.create_user("cu2", "cu", CU2_PASSWORD);
    let users = cluster.sg_json(CO, &["user", "list"]);
    let names: Vec<&str> = ok_data(&users)
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    for name in ["admin", "cu1", "cu2"] {
        assert!(names.contains(&name), "{names:?}");
    }

    // CU1 makes a P-256 and an RSA-2048 key; OpenSSL verifies their signatures.
    let (ec_pub, ec_priv) = generate_pair(
        &cluster,
        &["ec", "--curve", "secp256r1", "--label", "web-ec"],
    );
    let (rsa_pub, rsa_priv) =
        generate_pair(&cluster, &["rsa", "--bits", "2048", "--label", "web-rsa"]);
    sign_and_verify_with_openssl(&cluster, CU1, &ec_priv, &ec_pub, "ecdsa-sha256", "ec");
    sign_and_verify_with_openssl(&cluster, CU1, &rsa_priv, &rsa_pub, "rsa-pkcs-sha256", "rsa");

    // Before sharing, CU2 cannot even see CU1's key.
    let v = cluster.sg_json(
        CU2,
        &[
            "crypto",
            "sign",
            "--handle",
            &ec_priv,
            "--mechanism",
            "ecdsa-sha256",
            "--data",
            "x",
        ],
    );
    assert_eq!(error_of(&v).0, "not-found");

    // Shared, CU2 signs, but cannot delete or wrap (export) the key.
    ok_data(&cluster.sg_json(
        CU1,
        &["key", "share", "--handle", &ec_priv, "--with", "cu2"],
    ));
    sign_and_verify_with_openssl(&cluster, CU2, &ec_priv, &ec_pub, "ecdsa-sha256", "shared");
    let v = cluster.sg_json(CU2, &["key", "delete", "--handle", &ec_priv]);
    let (kind, message) = error_of(&v);
    assert_eq!(kind, "permission-denied", "{message}");
    assert!(message.contains("owner"), "{message}");
    let kek = cluster.sg_json(
        CU2,
        &[
            "key",
            "generate",
            "aes",
            "--bits",
            "256",
            "--label",
            "kek",
            "--attr",
            "wrap=true",
        ],
    );
    let kek = ok_data(&kek)["handle"].to_string();
    let v = cluster.sg_json(
        CU2,
        &[
            "key",
            "wrap",
            "--handle",
            &ec_priv,
            "--wrapping-key",
            &kek,
            "--mechanism",
            "aes-zero-pad",
        ],
    );
    assert_eq!(error_of(&v).0, "permission-denied");

    // The CO manages users but cannot use keys.
    let v = cluster.sg_json(
        CO,
        &[
            "crypto",
            "sign",
            "--handle",
            &ec_priv,
            "--mechanism",
            "ecdsa-sha256",
            "--data",
            "x",
        ],
    );
    let (kind, message) = error_of(&v);
    assert_eq!(kind, "permission-denied", "{message}");

    // Human output: one clear line on stderr and a non-zero exit code.
    let out = cluster.sg(CO, &["key", "delete", "--handle", &ec_priv]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // Five wrong passwords lock CU2; then even the right one is refused.
    for _ in 0..5 {
        let v = cluster.sg_json(Some(("cu2", "wrong-password-x")), &["key", "list"]);
        assert_eq!(error_of(&v).0, "login-failed");
    }
    let v = cluster.sg_json(CU2, &["key", "list"]);
    let (kind, message) = error_of(&v);
    assert_eq!(kind, "user-locked", "{message}");

    // A restart keeps users, keys, shares and the lock.
    assert_eq!(cluster.stop(1).code(), Some(0), "clean exit on SIGTERM");
    cluster.start(1);
    sign_and_verify_with_openssl(&cluster, CU1, &ec_priv, &ec_pub, "ecdsa-sha256", "restart");
    let keys = cluster.sg_json(CU1, &["key", "list"]);
    assert_eq!(ok_data(&keys).as_array().unwrap().len(), 4, "{keys}");
    let shown = cluster.sg_json(CU1, &["key", "show", "--handle", &ec_priv]);
    assert_eq!(ok_data(&shown)["shared_with"][0], "cu2", "{shown}");
    let v = cluster.sg_json(CU2, &["key", "list"]);
    assert_eq!(error_of(&v).0, "user-locked");

    // A CO's password reset unlocks CU2.
    let out = cluster.sg_env(
        CO,
        &[("SEALGATE_NEW_PASSWORD", CU2_PASSWORD)],
        &["user", "unlock", "--name", "cu2"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok_data(&cluster.sg_json(CU2, &["key", "list"]));
    assert_eq!(cluster.stop(1).code(), Some(0));
}

#[test]
fn passwords_never_appear_in_argv_and_missing_credentials_are_named() {
    let mut cluster = Cluster::init(1);
    cluster.start(1);
    // No password in the environment and no terminal: one clear error, not a hang.
    let out = cluster.sg_env(None, &[("SEALGATE_USER", "cu1")], &["key", "list"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SEALGATE_PASSWORD"), "{stderr}");
    // There is no password flag to misuse.
    let out = cluster.sg(None, &["key", "list", "--password", "x"]);
    assert!(!out.status.success());
    // A bad cluster file is named.
    let out = cluster.sg_env(
        None,
        &[("SEALGATE_CLUSTER", "/nonexistent/client.toml")],
        &["cluster", "status"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/client.toml"));
    cluster.stop(1);
}
