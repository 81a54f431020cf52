//! The HSM audit log, as real processes write it: a scripted session through the CLI against
//! a real node (activation, login, create users, generate a key pair, share it, a failed
//! login) leaves exactly the expected CloudHSM-style records in the node's `audit.jsonl`, with
//! consecutive sequence numbers; a restart continues the sequence with the next reboot
//! counter; `cluster init` records a CreateCluster management event.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::Value;
use support::{CO_PASSWORD, Cluster};

const ALICE: Option<(&str, &str)> = Some(("alice", "alice-password-1"));

/// A record reduced to what the script determines: opcode, response, session user (actor),
/// the user it is about, and key handles.
fn summary(r: &Value) -> String {
    let field = |k: &str| match &r[k] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    format!(
        "{} {} actor={}/{} user={}/{} key={} pub={}",
        field("opcode"),
        field("response"),
        field("actor_name"),
        field("actor_type"),
        field("user_name"),
        field("user_type"),
        field("key_handle"),
        field("public_key_handle"),
    )
}

fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[test]
fn a_scripted_session_leaves_exactly_the_expected_audit_records() {
    let mut cluster = Cluster::init(1);

    // `cluster init` recorded the cluster's creation beside client.toml.
    let events = records(&cluster.dir.join("management-events.jsonl"));
    assert_eq!(events.len(), 1, "{events:?}");
    let created = &events[0];
    assert_eq!(created["eventName"], "CreateCluster");
    assert_eq!(created["eventSource"], "sealgate");
    assert_eq!(created["userIdentity"]["type"], "LocalOperator");
    assert_eq!(created["requestParameters"]["nodes"], 1);
    assert_eq!(
        created["responseElements"]["hsmIds"],
        serde_json::json!([1])
    );
    assert_eq!(
        created["clusterId"],
        created["responseElements"]["clusterId"]
    );
    assert!(created["errorCode"].is_null());
    assert_eq!(created["eventID"].as_str().unwrap().len(), 36);

    cluster.start(1);
    cluster.activate();
    cluster.create_user("alice", "cu", ALICE.unwrap().1);
    cluster.create_user("bob", "cu", "bob-password-12");
    let (public, private) = cluster.ec_pair(ALICE, "a");
    let shared = cluster.sg_json(
        ALICE,
        &["key", "share", "--handle", &private, "--with", "bob"],
    );
    assert_eq!(shared["ok"], true, "{shared}");
    let refused = cluster.sg_json(Some(("alice", "wrong-password-1")), &["key", "list"]);
    assert_eq!(refused["error"]["kind"], "login-failed", "{refused}");
    // A signature is not a management operation: not audited.
    let signed = cluster.sign_x(ALICE, &private);
    assert_eq!(signed["ok"], true, "{signed}");

    let path = cluster.dir.join("node-1").join("audit.jsonl");
    let all = records(&path);
    let got: Vec<String> = all.iter().map(summary).collect();
    let login =
        |who: &str, role: &str| format!("CN_LOGIN SUCCESS actor=-/- user={who}/{role} key=- pub=-");
    let logout = |who: &str, role: &str| {
        format!("CN_LOGOUT SUCCESS actor={who}/{role} user={who}/{role} key=- pub=-")
    };
    let co = "CN_CRYPTO_OFFICER";
    let cu = "CN_CRYPTO_USER";
    let pre = "CN_CRYPTO_PRE_OFFICER";
    let expected = vec![
        "CN_NODE_START SUCCESS actor=-/- user=-/- key=- pub=-".to_owned(),
        // Activation: the PRECO logs in, sets its password and becomes a CO.
        login("admin", pre),
        format!("CN_CHANGE_PSWD SUCCESS actor=admin/{pre} user=admin/{pre} key=- pub=-"),
        logout("admin", co),
        login("admin", co),
        format!("CN_CREATE_USER SUCCESS actor=admin/{co} user=alice/{cu} key=- pub=-"),
        logout("admin", co),
        login("admin", co),
        format!("CN_CREATE_USER SUCCESS actor=admin/{co} user=bob/{cu} key=- pub=-"),
        logout("admin", co),
        login("alice", cu),
        format!(
            "CN_GENERATE_KEY_PAIR SUCCESS actor=alice/{cu} user=-/- key={private} pub={public}"
        ),
        logout("alice", cu),
        login("alice", cu),
        format!("CN_SHARE_OBJECT SUCCESS actor=alice/{cu} user=bob/{cu} key={private} pub=-"),
        logout("alice", cu),
        format!("CN_LOGIN login-failed actor=-/- user=alice/{cu} key=- pub=-"),
        login("alice", cu),
        logout("alice", cu),
    ];
    assert_eq!(got, expected, "{path:?}");

    // Every record: consecutive sequence numbers from 0, this node, the first start, time in
    // UTC agreeing with the epoch microseconds, never decreasing.
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r["sequence"], i, "{r}");
        assert_eq!(r["reboot_counter"], 1, "{r}");
        assert_eq!(r["hsm_id"], 1, "{r}");
        assert_eq!(r["command_type"], "CN_MGMT_CMD", "{r}");
        assert!(r["origin_node"].is_null(), "{r}");
        let time = r["time"].as_str().unwrap();
        let usecs = r["usecs"].as_u64().unwrap();
        assert!(time.ends_with('Z'), "{time}");
        assert_eq!(&time[20..26], format!("{:06}", usecs % 1_000_000), "{r}");
        if i > 0 {
            assert!(usecs >= all[i - 1]["usecs"].as_u64().unwrap(), "{r}");
        }
    }
    // Sessions: each CLI run is one session, from login to logout.
    assert_eq!(all[1]["session"], all[3]["session"]);
    assert_ne!(all[1]["session"], all[4]["session"]);
    assert_eq!(all[11]["log_type"], "MGMT_KEY_DETAILS_LOG");
    assert_eq!(all[5]["log_type"], "MGMT_USER_DETAILS_LOG");
    assert_eq!(all[0]["log_type"], "MINIMAL_LOG_ENTRY");
    // No secret is in the log.
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in [
        CO_PASSWORD,
        "alice-password-1",
        "wrong-password-1",
        "bob-password-12",
    ] {
        assert!(!text.contains(secret), "a password is in the audit log");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    // A clean stop closes the run; a restart continues the stream: the next sequence number,
    // the next reboot counter.
    assert!(cluster.stop(1).success());
    cluster.start(1);
    let again = records(&path);
    assert_eq!(again.len(), all.len() + 2);
    assert_eq!(again[..all.len()], all[..], "earlier records changed");
    let (stop, start) = (&again[all.len()], &again[all.len() + 1]);
    assert_eq!(stop["opcode"], "CN_NODE_STOP");
    assert_eq!(stop["reboot_counter"], 1);
    assert_eq!(start["opcode"], "CN_NODE_START");
    assert_eq!(start["sequence"], all.len() + 1);
    assert_eq!(start["reboot_counter"], 2);
    // A clean stop leaves nothing to note.
    assert!(
        !start["detail"].as_str().unwrap().contains("did not stop"),
        "{start}"
    );
    // Each record names the hash of the one before.
    for pair in again.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
}

#[test]
fn a_node_refuses_to_continue_an_audit_log_whose_last_record_is_damaged() {
    let mut cluster = Cluster::init(1);
    cluster.start(1);
    assert!(cluster.stop(1).success());
    let path = cluster.dir.join("node-1").join("audit.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"sequence\": \"edited\"}\n");
    std::fs::write(&path, &text).unwrap();

    let mut cmd = std::process::Command::new(support::sealgate_bin());
    cmd.args(["node", "--config"]).arg(cluster.node_config(1));
    let out = support::run_bounded(cmd, None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("audit.jsonl") && stderr.contains("does not parse"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "changed");
}
