//! Quorum (M of N) approvals and MFA, end to end: real nodes, the real CLI (one-shot and
//! `sealgate shell`), approvals and MFA challenges signed by the real `openssl`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::{CO_PASSWORD, Cluster};

const CO2: (&str, &str) = ("co2", "officer-password-2");
const CU1: (&str, &str) = ("cu1", "crypto-user-1-pw");
const CU2: (&str, &str) = ("cu2", "crypto-user-2-pw");

/// An RSA-2048 key pair made by openssl in `dir`: (private PEM, public PEM).
fn rsa_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let out = support::openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = support::openssl(
        dir,
        &[
            "pkey",
            "-in",
            private.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    (private, public)
}

/// `openssl dgst -sha256 -sign KEY` of `data`; returns the signature file.
fn openssl_sign(dir: &Path, key: &Path, data: &[u8], tag: &str) -> PathBuf {
    let input = dir.join(format!("{tag}.data"));
    let sig = dir.join(format!("{tag}.sig"));
    std::fs::write(&input, data).unwrap();
    let out = support::openssl(
        dir,
        &[
            "dgst",
            "-sha256",
            "-sign",
            key.to_str().unwrap(),
            "-out",
            sig.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    sig
}

/// `sealgate shell --output json` logged in as `user`: one JSON line per command.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Shell {
    fn start(cluster: &Cluster, user: (&str, &str), env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(support::sealgate_bin());
        cmd.args(["shell", "--output", "json"])
            .env("SEALGATE_CLUSTER", cluster.client_toml())
            .env("SEALGATE_USER", user.0)
            .env("SEALGATE_PASSWORD", user.1)
            .env_remove("SEALGATE_NEW_PASSWORD")
            .current_dir(cluster.root.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = support::line_reader(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// Runs one command line; returns its JSON answer.
    fn run(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let answer = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no answer to `{line}`: {e}"));
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("`{line}`: {e}: {answer}"))
    }

    fn ok(&mut self, line: &str) -> Value {
        let v = self.run(line);
        assert_eq!(v["ok"], true, "`{line}`: {v}");
        v["data"].clone()
    }

    /// Runs `line` and expects a quorum refusal whose message contains `says`.
    fn refused(&mut self, line: &str, says: &str) {
        let v = self.run(line);
        assert_eq!(v["ok"], false, "`{line}` was not refused: {v}");
        assert_eq!(v["error"]["kind"], "quorum-failed", "`{line}`: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "`{line}`: {message}");
    }

    fn exit(mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.stdin.flush();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while matches!(self.child.try_wait(), Ok(None)) {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the shell did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Signs the approval file `file` as each of `approvers` (name, private key) with openssl and
/// adds the signatures with `quorum token approve` (in `shell`).
fn approve(shell: &mut Shell, dir: &Path, file: &str, approvers: &[(&str, &Path)]) {
    let token: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
    let data = B64
        .decode(token["approval_data"].as_str().unwrap())
        .unwrap();
    for (name, key) in approvers {
        let sig = openssl_sign(dir, key, &data, &format!("{file}-{name}"));
        shell.ok(&format!(
            "quorum token approve --file {file} --approver {name} --signature {}",
            sig.display()
        ));
    }
}

/// A one-node cluster, activated, with crypto officer co2 and crypto users cu1, cu2.
fn cluster() -> Cluster {
    cluster_with(|_| {})
}

/// [`cluster`], with the node's limits edited before it starts.
fn cluster_with(edit: impl FnOnce(&mut sealgate_hsm_node::LimitsSection)) -> Cluster {
    let mut cluster = Cluster::init(1);
    cluster.set_limits(1, edit);
    cluster.start(1);
    cluster.activate();
    cluster.create_user(CO2.0, "co", CO2.1);
    cluster.create_user(CU1.0, "cu", CU1.1);
    cluster.create_user(CU2.0, "cu", CU2.1);
    cluster
}

fn register(cluster: &Cluster, user: (&str, &str), public: &Path) {
    let v = cluster.sg_json(
        Some(user),
        &[
            "user",
            "register-quorum-key",
            "--public-key",
            public.to_str().unwrap(),
        ],
    );
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn user_management_needs_two_approvals_once_m_is_two() {
    let cluster = cluster();
    let dir = cluster.root.path().to_owned();
    let (admin_key, admin_pub) = rsa_pair(&dir, "admin");
    let (co2_key, co2_pub) = rsa_pair(&dir, "co2");
    let (_, cu1_pub) = rsa_pair(&dir, "cu1");
    let admin = ("admin", CO_PASSWORD);
    let set_user_value = |cluster: &Cluster| {
        cluster.sg_json(
            Some(admin),
            &[
                "quorum",
                "token",
                "set-value",
                "--service",
                "user",
                "--value",
                "2",
            ],
        )
    };

    // M=2 needs two officers with registered keys.
    register(&cluster, admin, &admin_pub);
    let v = set_user_value(&cluster);
    assert_eq!(v["error"]["kind"], "quorum-failed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 crypto officers"),
        "{v}"
    );
    register(&cluster, CO2, &co2_pub);
    register(&cluster, CU1, &cu1_pub);
    let v = set_user_value(&cluster);
    assert_eq!(v["ok"], true, "{v}");
    let values = cluster.sg_json(Some(admin), &["quorum", "token", "list-values"]);
    assert_eq!(values["data"], serde_json::json!({"user": 2, "quorum": 1}));

    let mut shell = Shell::start(
        &cluster,
        admin,
        &[("SEALGATE_NEW_PASSWORD", "new-user-password-1")],
    );
    // Without approval: refused, saying what it needs.
    shell.refused(
        "user create --name bob --role cu",
        "needs 2 approvals and has 0",
    );
    // One approval: refused.
    shell.ok("quorum token generate --service user --out t1.json");
    approve(&mut shell, &dir, "t1.json", &[("admin", &admin_key)]);
    shell.refused(
        "user create --name bob --role cu --approval t1.json",
        "needs 2 approvals and has 1",
    );
    // A crypto user's approval does not count for an admin service.
    shell.ok("quorum token generate --service user --out t2.json");
    approve(&mut shell, &dir, "t2.json", &[("admin", &admin_key)]);
    let cu1_key = dir.join("cu1.pem");
    approve(&mut shell, &dir, "t2.json", &[("cu1", &cu1_key)]);
    shell.refused(
        "user create --name bob --role cu --approval t2.json",
        "needs 2 approvals and has 1",
    );
    // A signature by the wrong key: refused, naming the approver.
    shell.ok("quorum token generate --service user --out t3.json");
    approve(
        &mut shell,
        &dir,
        "t3.json",
        &[("admin", &admin_key), ("co2", &admin_key)],
    );
    shell.refused(
        "user create --name bob --role cu --approval t3.json",
        "the approval by co2",
    );
    // Two valid approvals (the requester's own counts): accepted.
    shell.ok("quorum token generate --service user --out t4.json");
    approve(
        &mut shell,
        &dir,
        "t4.json",
        &[("admin", &admin_key), ("co2", &co2_key)],
    );
    let created = shell.ok("user create --name bob --role cu --approval t4.json");
    assert_eq!(created["name"], "bob");
    // Reused: refused.
    shell.refused(
        "user create --name carol --role cu --approval t4.json",
        "not live",
    );
    // A token for another service: refused.
    shell.ok("quorum token generate --service quorum --out q.json");
    approve(
        &mut shell,
        &dir,
        "q.json",
        &[("admin", &admin_key), ("co2", &co2_key)],
    );
    let v = shell.run("user create --name carol --role cu --approval q.json");
    assert_eq!(v["ok"], false, "{v}");
    // An approval file given to a command it does not control: refused before anything runs.
    let v = shell.run("user list --approval q.json");
    assert_eq!(v["error"]["kind"], "usage", "{v}");
    // One live token per admin service and node: the unused one is deleted first.
    let q: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("q.json")).unwrap()).unwrap();
    shell.ok(&format!("quorum token delete --id {} --node 1", q["token"]));
    // Changing M itself needs the quorum service's approval at the current value (2).
    shell.ok("quorum token generate --service quorum --out q2.json");
    approve(&mut shell, &dir, "q2.json", &[("admin", &admin_key)]);
    shell.refused(
        "quorum token set-value --service user --value 1 --approval q2.json",
        "needs 2 approvals and has 1",
    );
    // A token from this shell, used by another session: refused.
    shell.ok("quorum token generate --service user --out t5.json");
    approve(
        &mut shell,
        &dir,
        "t5.json",
        &[("admin", &admin_key), ("co2", &co2_key)],
    );
    let other = cluster.sg_env(
        Some(admin),
        &[("SEALGATE_NEW_PASSWORD", "new-user-password-1")],
        &[
            "--output",
            "json",
            "user",
            "create",
            "--name",
            "dave",
            "--role",
            "cu",
            "--approval",
            "t5.json",
        ],
    );
    let v: Value = serde_json::from_slice(&other.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "quorum-failed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another session"),
        "{v}"
    );
    // The audit log shows the approved creation with its approvers.
    let audit = std::fs::read_to_string(cluster.dir.join("node-1/audit.jsonl")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"CN_CREATE_USER\"")
            && l.contains("\"user_name\":\"bob\"")
            && l.contains("by admin, co2")),
        "{audit}"
    );
    shell.exit();
}

#[test]
fn an_expired_token_is_refused() {
    // Tokens live 1 s on this node (node.toml [limits] quorum_token_secs; 600 by default).
    let cluster = cluster_with(|l| l.quorum_token_secs = 1);
    let dir = cluster.root.path().to_owned();
    let (admin_key, admin_pub) = rsa_pair(&dir, "admin");
    let (co2_key, co2_pub) = rsa_pair(&dir, "co2");
    let admin = ("admin", CO_PASSWORD);
    register(&cluster, admin, &admin_pub);
    register(&cluster, CO2, &co2_pub);
    let v = cluster.sg_json(
        Some(admin),
        &[
            "quorum",
            "token",
            "set-value",
            "--service",
            "user",
            "--value",
            "2",
        ],
    );
    assert_eq!(v["ok"], true, "{v}");
    let mut shell = Shell::start(
        &cluster,
        admin,
        &[("SEALGATE_NEW_PASSWORD", "new-user-password-1")],
    );
    shell.ok("quorum token generate --service user --out t.json");
    approve(
        &mut shell,
        &dir,
        "t.json",
        &[("admin", &admin_key), ("co2", &co2_key)],
    );
    std::thread::sleep(Duration::from_millis(1500));
    shell.refused("user delete --name cu1 --approval t.json", "expired");
    shell.exit();
}

#[test]
fn a_key_with_usage_quorum_two_needs_two_approvals_for_every_signature() {
    let cluster = cluster();
    let dir = cluster.root.path().to_owned();
    let (cu1_key, cu1_pub) = rsa_pair(&dir, "cu1");
    let (cu2_key, cu2_pub) = rsa_pair(&dir, "cu2");
    register(&cluster, CU1, &cu1_pub);
    register(&cluster, CU2, &cu2_pub);

    // A quorum value above the key's users is refused at creation.
    let v = cluster.sg_json(
        Some(CU1),
        &[
            "key",
            "generate",
            "ec",
            "--label",
            "q",
            "--quorum-usage",
            "2",
        ],
    );
    assert_eq!(v["error"]["kind"], "quorum-failed", "{v}");
    let v = cluster.sg_json(
        Some(CU1),
        &[
            "key",
            "generate",
            "ec",
            "--label",
            "q",
            "--quorum-usage",
            "2",
            "--share-with",
            "cu2",
        ],
    );
    assert_eq!(v["ok"], true, "{v}");
    let private = v["data"]["private"].as_u64().unwrap();
    let sign = format!("crypto sign --handle {private} --mechanism ecdsa-sha256 --data x");

    let mut shell = Shell::start(&cluster, CU1, &[]);
    shell.refused(&sign, "key-usage needs 2 approvals and has 0");
    for round in 0..2 {
        let file = format!("k{round}.json");
        shell.ok(&format!(
            "quorum token generate --service key-usage --key {private} --out {file}"
        ));
        approve(
            &mut shell,
            &dir,
            &file,
            &[("cu1", &cu1_key), ("cu2", &cu2_key)],
        );
        let signed = shell.ok(&format!("{sign} --approval {file}"));
        assert!(
            signed["signature"].is_string() || !signed.is_null(),
            "{signed}"
        );
        // The token is used up: the next signature needs new approvals.
        shell.refused(&format!("{sign} --approval {file}"), "not live");
    }
    // A token for another key is refused.
    shell.ok("quorum token generate --service key-usage --key 1 --out other.json");
    approve(
        &mut shell,
        &dir,
        "other.json",
        &[("cu1", &cu1_key), ("cu2", &cu2_key)],
    );
    shell.refused(&format!("{sign} --approval other.json"), "has 0");
    // Unsharing below the quorum value is refused.
    shell.refused(
        &format!("key unshare --handle {private} --with cu2"),
        "fewer users",
    );
    shell.exit();
}

/// Waits (bounded) for the MFA token file, signs every challenge with `key` as openssl does,
/// and writes the signatures back.
fn sign_mfa_file(dir: &Path, file: &Path, key: &Path) {
    support::wait_until("the MFA token file", Duration::from_secs(30), || {
        file.exists()
    });
    let mut tokens: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    for (i, t) in tokens["tokens"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        let challenge = B64.decode(t["unsigned"].as_str().unwrap()).unwrap();
        let sig = openssl_sign(dir, key, &challenge, &format!("mfa-{i}"));
        t["signed"] = B64.encode(std::fs::read(sig).unwrap()).into();
    }
    std::fs::write(file, tokens.to_string()).unwrap();
}

#[test]
fn an_officer_with_mfa_logs_in_with_the_signed_challenge_only() {
    let cluster = cluster();
    let dir = cluster.root.path().to_owned();
    let (co2_key, co2_pub) = rsa_pair(&dir, "co2");
    let v = cluster.sg_json(
        Some(CO2),
        &[
            "user",
            "change-mfa",
            "--public-key",
            co2_pub.to_str().unwrap(),
        ],
    );
    assert_eq!(v["ok"], true, "{v}");

    // The password alone does not log in: the SDK without a signer is refused, and the node
    // never logs the session in.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = sealgate_hsm_client::ClientConfig::load(&cluster.client_toml()).unwrap();
    let creds =
        sealgate_hsm_client::Credentials::new(CO2.0, sealgate_hsm_proto::Secret::new(CO2.1.into()));
    let Err(err) = rt.block_on(sealgate_hsm_client::Client::connect(config, Some(creds))) else {
        panic!("a login without the MFA signature succeeded");
    };
    assert!(err.to_string().contains("MFA"), "{err}");

    // With the CLI, the challenge goes to the token file; signed with openssl, the login
    // finishes and the command runs.
    let mfa_file = dir.join("mfa.json");
    let mut cmd = Command::new(support::sealgate_bin());
    cmd.args(["--output", "json", "user", "list"])
        .env("SEALGATE_CLUSTER", cluster.client_toml())
        .env("SEALGATE_USER", CO2.0)
        .env("SEALGATE_PASSWORD", CO2.1)
        .env("SEALGATE_MFA_FILE", &mfa_file)
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    sign_mfa_file(&dir, &mfa_file, &co2_key);
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["ok"],
        true,
        "{v} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A signature by another key: the login fails.
    let (wrong_key, _) = rsa_pair(&dir, "wrong");
    std::fs::remove_file(&mfa_file).unwrap();
    let child = cmd.spawn().unwrap();
    sign_mfa_file(&dir, &mfa_file, &wrong_key);
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "login-failed", "{v}");

    // Lost key: another officer resets the password, which turns MFA off.
    let out = cluster.sg_env(
        Some(("admin", CO_PASSWORD)),
        &[("SEALGATE_NEW_PASSWORD", "officer-password-3")],
        &["user", "change-password", "--name", "co2"],
    );
    assert!(out.status.success(), "{out:?}");
    let v = cluster.sg_json(Some((CO2.0, "officer-password-3")), &["user", "list"]);
    assert_eq!(v["ok"], true, "{v}");
}
