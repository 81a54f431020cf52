//! `sealgate audit verify`, `tail` and `key` against a real node's audit file: a node's file
//! verifies (offline with the key `audit key` fetched, and with the key from the cluster),
//! and every kind of tampering with a copy (an edited byte, a removed record, two records
//! swapped, a cut tail, garbage) fails with exit code 1 and one line naming the line and
//! record; files that cannot be read fail with exit code 2; `tail` prints the last records and
//! `--follow` prints the new ones until it is stopped or the file is cut.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{CU1_PASSWORD, CU2_PASSWORD, Cluster, run_bounded, sealgate_bin};

/// Runs `sealgate ARGS` with no cluster given (offline).
fn offline(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(sealgate_bin());
    cmd.args(args)
        .env_remove("SEALGATE_CLUSTER")
        .env_remove("SEALGATE_USER")
        .env_remove("SEALGATE_PASSWORD")
        .current_dir(dir);
    run_bounded(cmd, None)
}

/// Checks the exit code and that stdout and stderr together hold every needle; returns them.
fn expect(what: &str, out: &Output, code: i32, needles: &[&str]) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}{stderr}");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit code {:?}: {all}",
        out.status.code()
    );
    for needle in needles {
        assert!(all.contains(needle), "{what}: {needle:?} is not in: {all}");
    }
    assert!(!all.contains("panicked"), "{what}: {all}");
    if code != 0 {
        assert_eq!(
            stderr.lines().count(),
            1,
            "{what}: one error line: {stderr}"
        );
        assert!(stderr.starts_with("error: "), "{what}: {stderr}");
    }
    all
}

/// The file's lines, each with its newline.
fn lines(text: &str) -> Vec<String> {
    text.lines().map(|l| format!("{l}\n")).collect()
}

fn sequence(line: &str) -> u64 {
    serde_json::from_str::<Value>(line).unwrap()["sequence"]
        .as_u64()
        .unwrap()
}

fn s(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

#[test]
fn a_nodes_audit_file_verifies_and_every_kind_of_tampering_is_named() {
    let mut cluster = Cluster::init(1);
    cluster.start(1);
    cluster.activate();
    cluster.create_user("alice", "cu", CU1_PASSWORD);
    cluster.create_user("bob", "cu", CU2_PASSWORD);
    let node_file = cluster.dir.join("node-1").join("audit.jsonl");
    let work = cluster.root.path().join("audit");
    std::fs::create_dir(&work).unwrap();

    // The key for offline checks, fetched while the node runs (no login needed).
    let key = work.join("node-1-audit.pem");
    let out = cluster.sg(None, &["audit", "key", "--node", "1", "--out", s(&key)]);
    expect(
        "audit key --out",
        &out,
        0,
        &["node 1's audit key written to"],
    );
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.contains("BEGIN PUBLIC KEY"), "{pem}");
    let v = cluster.sg_json(None, &["audit", "key", "--node", "1"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["data"]["pem"], json!(pem));
    assert_eq!(v["data"]["sha256"].as_str().unwrap().len(), 64, "{v}");

    // The running node's own file: no stop record yet, and it ends at the node's head.
    let out = cluster.sg(None, &["audit", "verify", s(&node_file)]);
    expect(
        "the live file",
        &out,
        0,
        &["of node 1 verified (0 to ", "up to the node's current head"],
    );

    // A clean stop closes the file with the node's stop record.
    cluster.stop(1);
    let text = std::fs::read_to_string(&node_file).unwrap();
    let original = lines(&text);
    let n = original.len();
    assert!(n >= 6, "{text}");
    assert!(original[n - 1].contains("\"CN_NODE_STOP\""), "{text}");
    let copy = work.join("audit.jsonl");
    std::fs::write(&copy, &text).unwrap();
    let variant = |name: &str, lines: &[String]| -> PathBuf {
        let path = work.join(name);
        std::fs::write(&path, lines.concat()).unwrap();
        path
    };
    let key_args = |file: &Path| -> Vec<String> {
        ["audit", "verify", s(file), "--key", s(&key)]
            .map(str::to_owned)
            .to_vec()
    };
    let verify_offline = |file: &Path| {
        let args = key_args(file);
        offline(&work, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Untouched, offline with the key.
    let whole = format!("{n} records of node 1 verified (0 to {})", n - 1);
    let out = verify_offline(&copy);
    expect(
        "untouched, --key",
        &out,
        0,
        &[&whole, "closed by the node's stop record"],
    );
    let out = offline(
        &work,
        &[
            "--output",
            "json",
            "audit",
            "verify",
            s(&copy),
            "--key",
            s(&key),
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["data"]["records"], json!(n), "{v}");
    assert_eq!(v["data"]["last_sequence"], json!(n - 1), "{v}");
    assert_eq!(v["data"]["closed"], true, "{v}");
    assert_eq!(v["data"]["complete"], "stop-record", "{v}");
    assert_eq!(v["data"]["key"], "file", "{v}");

    // Restarted (it appends to its own file, not to the copy): the key comes from the cluster.
    cluster.start(1);
    let out = cluster.sg(None, &["audit", "verify", s(&copy)]);
    expect(
        "untouched, key from the cluster",
        &out,
        0,
        &[&whole, "closed by the node's stop record"],
    );

    // One byte edited inside a record in the middle (a user's name), still valid JSON.
    let at = original
        .iter()
        .position(|l| l.contains("\"alice\""))
        .unwrap();
    assert!(at > 0 && at < n - 1, "{at} of {n}");
    let mut edited = original.clone();
    edited[at] = edited[at].replacen("\"alice\"", "\"alicf\"", 1);
    serde_json::from_str::<Value>(&edited[at]).unwrap();
    let file = variant("edited.jsonl", &edited);
    let named = format!("line {} (record {})", at + 1, sequence(&original[at]));
    expect(
        "edited",
        &verify_offline(&file),
        1,
        &[&named, "edited: its content does not match its hash"],
    );
    let v = cluster.sg_json(None, &["audit", "verify", s(&file)]);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["error"]["kind"], "tampered", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&named),
        "{v}"
    );

    // One record removed: the next one is named, and what is missing.
    let mut removed = original.clone();
    removed.remove(2);
    let file = variant("removed.jsonl", &removed);
    expect(
        "removed",
        &verify_offline(&file),
        1,
        &["line 3 (record 3)", "record 2 before it was removed"],
    );

    // Two adjacent records swapped.
    let mut swapped = original.clone();
    swapped.swap(2, 3);
    let file = variant("swapped.jsonl", &swapped);
    expect(
        "swapped",
        &verify_offline(&file),
        1,
        &["line 3 (record 3)", "reordered"],
    );

    // The tail cut after a whole record: every record checks out, but the stop record is gone.
    let cut = variant("cut.jsonl", &original[..n - 2]);
    let ends = format!("ends at record {}", n - 3);
    expect(
        "cut, offline",
        &verify_offline(&cut),
        1,
        &[&ends, "without node 1's stop record", "--cluster"],
    );
    // With the running node: its head is ahead of the copy.
    let out = cluster.sg(None, &["audit", "verify", s(&cut), "--key", s(&key)]);
    expect("cut, node running", &out, 1, &["the tail was cut", &ends]);
    let out = cluster.sg(None, &["audit", "verify", s(&cut)]);
    expect(
        "cut, node running, key from it",
        &out,
        1,
        &["the tail was cut", "node 1 has written up to record"],
    );

    // The last records, readable; and as the JSON lines they are.
    let out = offline(&work, &["audit", "tail", s(&copy), "-n", "3"]);
    let printed = expect("tail", &out, 0, &[]);
    let shown: Vec<&str> = printed.lines().collect();
    assert_eq!(shown.len(), 3, "{printed}");
    assert!(shown[0].starts_with(&format!("#{}  ", n - 3)), "{printed}");
    assert!(shown[2].contains("CN_NODE_STOP"), "{printed}");
    let out = offline(
        &work,
        &["--output", "json", "audit", "tail", s(&copy), "-n", "2"],
    );
    let printed = expect("tail json", &out, 0, &[]);
    let shown: Vec<&str> = printed.lines().collect();
    assert_eq!(
        shown,
        original[n - 2..]
            .iter()
            .map(|l| l.trim_end())
            .collect::<Vec<_>>()
    );

    // A missing file cannot be checked (2); garbage and an empty file fail the check (1).
    let missing = work.join("missing.jsonl");
    expect(
        "missing",
        &verify_offline(&missing),
        2,
        &["cannot read", "missing.jsonl"],
    );
    let out = cluster.sg(None, &["audit", "verify", s(&missing)]);
    expect("missing, cluster", &out, 2, &["cannot read"]);
    let out = offline(&work, &["audit", "tail", s(&missing)]);
    expect("tail missing", &out, 2, &["cannot read"]);
    let garbage = work.join("garbage.jsonl");
    std::fs::write(
        &garbage,
        b"\x89PNG\r\n\x1a\n\x00\xff\xfe garbage {\"hsm_id\": \n",
    )
    .unwrap();
    expect(
        "garbage, --key",
        &verify_offline(&garbage),
        1,
        &["garbage.jsonl line 1"],
    );
    let out = cluster.sg(None, &["audit", "verify", s(&garbage)]);
    expect("garbage, cluster", &out, 1, &["garbage.jsonl line 1"]);
    let out = offline(&work, &["audit", "tail", s(&garbage)]);
    expect(
        "tail garbage",
        &out,
        0,
        &["#? unparsable line 1", "#? unparsable line 2"],
    );
    let empty = variant("empty.jsonl", &[]);
    expect(
        "empty",
        &verify_offline(&empty),
        1,
        &["empty.jsonl: no records"],
    );
    // An unreadable key cannot check anything (2).
    let out = offline(&work, &["audit", "verify", s(&garbage), "--key", s(&copy)]);
    expect("bad key", &out, 2, &["not a PEM public key"]);

    cluster.stop(1);
}

/// A record line as a node writes it (unsealed: `tail` does not check seals).
fn record_line(sequence: u64, opcode: &str) -> String {
    let record = json!({
        "time": "2025-01-01T00:00:00.000000Z",
        "usecs": 1_735_689_600_000_000_u64 + sequence,
        "sequence": sequence,
        "reboot_counter": 1,
        "hsm_id": 1,
        "command_type": "CN_MGMT_CMD",
        "opcode": opcode,
        "log_type": "MINIMAL_LOG_ENTRY",
        "response": "SUCCESS",
        "user_name": "alice",
        "prev_hash": "00",
    });
    format!("{record}\n")
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// `sealgate audit tail FILE -n 1 --follow`, its stdout read line by line; killed when dropped.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(file: &Path) -> Self {
        let mut child = Command::new(sealgate_bin())
            .args(["audit", "tail", s(file), "-n", "1", "--follow"])
            .env_remove("SEALGATE_CLUSTER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = support::line_reader(child.stdout.take().unwrap());
        Self { child, lines }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a line from tail --follow within 20 s")
    }

    /// Waits (bounded) for the exit; returns its status and stderr.
    fn exit(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut stderr = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                return (status, stderr);
            }
            assert!(Instant::now() < deadline, "tail --follow did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn tail_follow_prints_new_records_until_stopped_or_the_file_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    std::fs::write(
        &file,
        [record_line(0, "CN_NODE_START"), record_line(1, "CN_LOGIN")].concat(),
    )
    .unwrap();

    // New records (and a line that is not one) are printed as they are appended; a line
    // being written waits for its end.
    let mut follower = Follower::start(&file);
    assert!(follower.line().starts_with("#1  "));
    let third = record_line(2, "CN_LOGOUT");
    let (head, rest) = third.split_at(20);
    append(&file, head);
    std::thread::sleep(Duration::from_millis(500));
    append(&file, rest);
    let line = follower.line();
    assert!(
        line.starts_with("#2  ") && line.contains("CN_LOGOUT  SUCCESS  user=alice"),
        "{line}"
    );
    append(&file, "not a record\n");
    assert_eq!(follower.line(), "#? unparsable line 4");
    // Cut: it says so and fails.
    std::fs::write(&file, record_line(0, "CN_NODE_START")).unwrap();
    let (status, stderr) = follower.exit();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("audit.jsonl shrank") && stderr.contains("stopped following"),
        "{stderr}"
    );

    // Replaced: the same.
    let mut follower = Follower::start(&file);
    assert!(follower.line().starts_with("#0  "));
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, record_line(0, "CN_NODE_START")).unwrap();
    std::fs::rename(&other, &file).unwrap();
    let (status, stderr) = follower.exit();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was replaced"), "{stderr}");

    // SIGTERM and SIGINT stop it cleanly.
    for signal in ["TERM", "INT"] {
        let mut follower = Follower::start(&file);
        assert!(follower.line().starts_with("#0  "));
        follower.signal(signal);
        let (status, stderr) = follower.exit();
        assert_eq!(status.code(), Some(0), "SIG{signal}: {stderr}");
        assert!(stderr.is_empty(), "SIG{signal}: {stderr}");
    }
}
