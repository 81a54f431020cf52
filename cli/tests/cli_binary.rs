//! The `sealgate` binary as a user first meets it, and the parts of its output contract that
//! need no running cluster. (Having an integration test also makes `cargo test` build the
//! binary, which the end-to-end tests in `tests/` run.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn sealgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sealgate"))
}

#[test]
fn without_arguments_it_describes_itself() {
    let out = sealgate().output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for command in ["node", "cluster", "user", "key", "crypto"] {
        assert!(text.contains(command), "help lists {command}: {text}");
    }
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let out = sealgate().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

fn one_json_object(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    assert_eq!(text.lines().count(), 1, "one JSON line on stdout: {text}");
    serde_json::from_str(&text).unwrap()
}

fn one_stderr_line(stderr: &[u8], prefix: &str) -> String {
    let text = String::from_utf8_lossy(stderr).into_owned();
    assert_eq!(text.lines().count(), 1, "one line on stderr: {text}");
    assert!(text.starts_with(prefix), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    text
}

#[cfg(unix)]
#[test]
fn a_non_utf8_argument_is_a_usage_error_not_a_panic() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt as _;
    let label = OsStr::from_bytes(b"w\xffb");

    let out = sealgate()
        .args(["key", "show", "--label"])
        .arg(label)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let line = one_stderr_line(&out.stderr, "error: ");
    assert!(line.contains("UTF-8"), "{line}");

    let out = sealgate()
        .args(["--output", "json", "key", "show", "--label"])
        .arg(label)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v = one_json_object(&out.stdout);
    assert_eq!(v["ok"], serde_json::json!(false));
    assert_eq!(v["error"]["kind"], serde_json::json!("usage"));
    one_stderr_line(&out.stderr, "error: ");

    // As a subcommand, too.
    let out = sealgate().arg(label).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    one_stderr_line(&out.stderr, "error: ");
}

#[test]
fn usage_errors_are_one_line_on_stderr() {
    for args in [
        &["key", "share", "--handle", "1"][..],
        &["cluster"],
        &["crypto", "sign", "--handle", "x", "--mechanism", "ed25519"],
    ] {
        let out = sealgate().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        one_stderr_line(&out.stderr, "error: ");
    }
}

#[test]
fn node_in_json_mode_prints_one_object_for_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = sealgate()
        .args(["node", "--output", "json", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = one_json_object(&out.stdout);
    assert_eq!(v["error"]["kind"], serde_json::json!("config"));
    let help = sealgate().args(["node", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("ignores --output json"), "{help}");
}

#[test]
fn init_of_several_nodes_makes_them_members_of_one_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let out = sealgate()
        .args([
            "cluster", "init", "--output", "json", "--nodes", "3", "--dir",
        ])
        .arg(dir.path().join("c"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = one_json_object(&out.stdout);
    assert!(v["data"].get("warning").is_none(), "{v}");
    for id in 1..=3 {
        let text = std::fs::read_to_string(dir.path().join(format!("c/node-{id}.toml"))).unwrap();
        assert_eq!(text.matches("[[cluster.members]]").count(), 3, "{text}");
    }
}
