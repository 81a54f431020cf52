//! What a command prints: human text by default, or with `--output json` exactly one JSON object
//! on stdout, `{"ok": true, "data": …, "error": null}` or
//! `{"ok": false, "data": null, "error": {"kind": "…", "message": "…"}}`. Errors also go to
//! stderr as one line, `error: MESSAGE`; the exit code is 0 on success, 2 for usage errors and 1
//! for everything else.
//!
//! Error kinds in JSON are the node's (`permission-denied`, `login-failed`, `not-found`, … as
//! `sealgate_hsm_proto::ErrorKind::as_str` names them) or the command's own: `usage` (arguments
//! that do not fit together), `config` (no cluster file, unreadable configuration), `input` (a
//! file or value that cannot be used), `io` (a file could not be read or written),
//! `connection` (no answer from the cluster), `interrupted` (a write was sent, then its node
//! failed or did not answer in time: it may or may not have been applied, so check before
//! repeating it) and `failed`.
//!
//! Byte results (signatures, ciphertexts, digests, random bytes) are written hex (the default),
//! base64 or raw, to stdout or to `--out FILE`; see [`BytesOut`]. Files written for `--out` are
//! created readable by their owner only (mode 0600): they can hold plaintext, wrapped keys or
//! random secrets. An existing file is overwritten and keeps its mode, like `openssl -out`.
//!

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Args, ValueEnum};
use sealgate_hsm_client::ClientError;
use serde_json::{Value, json};
use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Text for people.
    Human,
    /// One JSON object on stdout.
    Json,
}

/// What a successful command hands back: the JSON `data` and what a person sees.
#[derive(Debug)]
pub(crate) struct Report {
    /// `None`: nothing is printed with `--output json` (see [`Report::human_only`]).
    data: Option<Value>,
    human: Human,
}

#[derive(Debug)]
enum Human {
    Text(String),
    Bytes(Vec<u8>),
}

impl Report {
    /// `data` for `--output json`, `text` (one or more lines) for people.
    pub(crate) fn new(data: Value, text: impl Into<String>) -> Self {
        Self {
            data: Some(data),
            human: Human::Text(text.into()),
        }
    }

    /// `data` for `--output json`, `bytes` written as they are to stdout for people.
    pub(crate) fn bytes(data: Value, bytes: Vec<u8>) -> Self {
        Self {
            data: Some(data),
            human: Human::Bytes(bytes),
        }
    }

    /// `text` for people, nothing at all on stdout with `--output json` (`sealgate node`,
    /// whose stdout is its lifetime output, not one result).
    pub(crate) fn human_only(text: impl Into<String>) -> Self {
        Self {
            data: None,
            human: Human::Text(text.into()),
        }
    }

    /// The JSON data (`null` for a human-only report).
    #[cfg(test)]
    pub(crate) fn data(&self) -> &Value {
        self.data.as_ref().unwrap_or(&Value::Null)
    }

    /// The human text (empty for raw bytes).
    #[cfg(test)]
    pub(crate) fn text(&self) -> &str {
        match &self.human {
            Human::Text(t) => t,
            Human::Bytes(_) => "",
        }
    }
}

/// An error the command itself raises, with its JSON kind.
#[derive(Debug)]
pub(crate) struct CliError {
    kind: &'static str,
    message: String,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// An error of `kind` (see the module doc for the kinds).
pub(crate) fn error(kind: &'static str, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(CliError {
        kind,
        message: message.into(),
    })
}

/// Arguments that do not fit together (exit code 2).
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    error("usage", message)
}

/// A file or value that cannot be used.
pub(crate) fn input(message: impl Into<String>) -> anyhow::Error {
    error("input", message)
}

/// The JSON kind of a client error: the node's kind when a node answered, `interrupted` when a
/// write may or may not have been applied (never worth a blind retry), else `connection`.
pub(crate) fn client_error_kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::Interrupted { .. } => "interrupted",
        _ => e.kind().map_or("connection", |k| k.as_str()),
    }
}

/// The JSON kind and exit code of an error.
pub(crate) fn classify(err: &anyhow::Error) -> (String, u8) {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            let code = if e.kind == "usage" { 2 } else { 1 };
            return (e.kind.to_owned(), code);
        }
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return (client_error_kind(e).to_owned(), 1);
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return ("io".to_owned(), 1);
        }
    }
    ("failed".to_owned(), 1)
}

/// `{"ok": true, "data": data, "error": null}`.
pub(crate) fn success_envelope(data: Value) -> Value {
    json!({"ok": true, "data": data, "error": null})
}

/// `{"ok": false, "data": null, "error": {"kind": kind, "message": message}}`.
pub(crate) fn error_envelope(kind: &str, message: &str) -> Value {
    json!({"ok": false, "data": null, "error": {"kind": kind, "message": message}})
}

/// `text` on one line: newlines, tabs and other control characters (a node's message could
/// hold terminal escapes) become spaces.
pub(crate) fn single_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One line: the error and its causes (each cause once: many errors print their source in
/// their own message already), newlines folded.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    single_line(&line)
}

fn write_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not worth a second error.
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// Prints `value` as one line on stdout.
pub(crate) fn print_json(value: &Value) {
    write_stdout(format!("{value}\n").as_bytes());
}

/// Prints the result of a command the way `format` says and returns the exit code.
pub(crate) fn finish(format: Format, result: anyhow::Result<Report>) -> ExitCode {
    match result {
        Ok(report) => {
            match (format, report.human) {
                (Format::Json, _) => {
                    if let Some(data) = report.data {
                        print_json(&success_envelope(data));
                    }
                }
                (Format::Human, Human::Text(text)) if text.is_empty() => {}
                (Format::Human, Human::Text(text)) => {
                    let text = if text.ends_with('\n') {
                        text
                    } else {
                        format!("{text}\n")
                    };
                    write_stdout(text.as_bytes());
                }
                (Format::Human, Human::Bytes(bytes)) => write_stdout(&bytes),
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            let (kind, code) = classify(&err);
            let message = one_line(&err);
            if format == Format::Json {
                print_json(&error_envelope(&kind, &message));
            }
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {message}");
            ExitCode::from(code)
        }
    }
}

/// How byte results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum Encoding {
    /// Lower-case hex.
    #[default]
    Hex,
    /// Standard base64 with padding.
    Base64,
    /// The bytes as they are.
    Raw,
}

/// `--format` and `--out` of commands that produce bytes.
///
/// People get the bytes on stdout (hex or base64 with a newline, raw as they are) or in
/// `--out FILE` (then a one-line confirmation on stdout). With `--output json` the bytes are in
/// the data object as hex (base64 with `--format base64`; raw gives hex in JSON), with
/// `"encoding"`, and `"out"` when a file was written; the file holds the `--format` encoding.
#[derive(Debug, Clone, Args, Default)]
pub(crate) struct BytesOut {
    /// How to write the bytes.
    #[arg(long, value_enum, default_value_t = Encoding::Hex)]
    pub(crate) format: Encoding,
    /// Write the bytes to FILE instead of stdout. A new FILE is created with mode 0600 (owner
    /// only: it may hold plaintext or secrets); an existing one is overwritten and keeps its
    /// mode.
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// `bytes` as text in `encoding` (raw is not text: hex).
pub(crate) fn encode_text(encoding: Encoding, bytes: &[u8]) -> String {
    match encoding {
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        Encoding::Hex | Encoding::Raw => hex::encode(bytes),
    }
}

/// Writes `bytes` to `path` (an `--out` file), naming the file in the error. A new file is
/// created with mode 0600, since it may hold decrypted plaintext, a wrapped key or random
/// secrets; an existing file is truncated and keeps its mode (as `openssl -out` does).
pub(crate) fn write_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.flush()
        })
        .with_context(|| format!("cannot write {}", path.display()))
}

impl BytesOut {
    /// The report for `bytes` named `field` (`signature`, `ciphertext`, …), writing `--out`.
    pub(crate) fn report(&self, field: &str, bytes: Vec<u8>) -> anyhow::Result<Report> {
        let encoding_name = match self.format {
            Encoding::Base64 => "base64",
            Encoding::Hex | Encoding::Raw => "hex",
        };
        let text = encode_text(self.format, &bytes);
        let mut data = json!({ field: text, "encoding": encoding_name, "len": bytes.len() });
        let encoded = match self.format {
            Encoding::Raw => bytes,
            Encoding::Hex | Encoding::Base64 => format!("{text}\n").into_bytes(),
        };
        match &self.out {
            Some(path) => {
                write_file(path, &encoded)?;
                if let Some(map) = data.as_object_mut() {
                    map.insert("out".into(), json!(path.display().to_string()));
                }
                let human = format!("{field} written to {}", path.display());
                Ok(Report::new(data, human))
            }
            None => Ok(Report::bytes(data, encoded)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_have_the_documented_shape() {
        let ok = success_envelope(json!({"handle": 5}));
        assert_eq!(
            ok.to_string(),
            r#"{"data":{"handle":5},"error":null,"ok":true}"#
        );
        let err = error_envelope("permission-denied", "permission denied: a CO may not sign");
        assert_eq!(err["ok"], json!(false));
        assert_eq!(err["data"], Value::Null);
        assert_eq!(err["error"]["kind"], json!("permission-denied"));
        assert_eq!(
            err["error"]["message"],
            json!("permission denied: a CO may not sign")
        );
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(classify(&usage("x")), ("usage".to_owned(), 2));
        assert_eq!(classify(&input("x")), ("input".to_owned(), 1));
        let io = anyhow::Error::new(std::io::Error::other("gone")).context("cannot read f");
        assert_eq!(classify(&io), ("io".to_owned(), 1));
        assert_eq!(classify(&anyhow::anyhow!("x")), ("failed".to_owned(), 1));
        let nested = input("inner").context("outer");
        assert_eq!(one_line(&nested), "outer: inner");
        let repeated = anyhow::Error::new(std::io::Error::other("refused"))
            .context("cannot connect: refused")
            .context("node 1");
        assert_eq!(one_line(&repeated), "node 1: cannot connect: refused");
    }

    #[test]
    fn bytes_are_encoded_as_asked() {
        let out = BytesOut::default();
        let r = out.report("signature", vec![0xde, 0xad]).unwrap();
        assert_eq!(r.data()["signature"], json!("dead"));
        assert_eq!(r.data()["encoding"], json!("hex"));
        assert!(matches!(&r.human, Human::Bytes(b) if b == b"dead\n"));

        let out = BytesOut {
            format: Encoding::Base64,
            out: None,
        };
        let r = out.report("digest", vec![0xde, 0xad]).unwrap();
        assert_eq!(r.data()["digest"], json!("3q0="));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sig.bin");
        let out = BytesOut {
            format: Encoding::Raw,
            out: Some(path.clone()),
        };
        let r = out.report("signature", vec![1, 2, 3]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![1, 2, 3]);
        assert_eq!(r.data()["out"], json!(path.display().to_string()));
        assert!(r.text().contains("sig.bin"));
    }

    #[test]
    fn an_interrupted_write_is_its_own_kind() {
        let interrupted = ClientError::Interrupted {
            node: 2,
            request: "generate-key",
        };
        assert_eq!(client_error_kind(&interrupted), "interrupted");
        let err = anyhow::Error::new(interrupted).context("cannot generate the key");
        assert_eq!(classify(&err), ("interrupted".to_owned(), 1));
        assert!(one_line(&err).contains("may or may not have been applied"));
        // Transport failures of requests safe to repeat stay `connection`.
        let down = anyhow::Error::new(ClientError::NodeDown { node: 1 });
        assert_eq!(classify(&down), ("connection".to_owned(), 1));
        let none = anyhow::Error::new(ClientError::NoNodeAvailable);
        assert_eq!(classify(&none), ("connection".to_owned(), 1));
    }

    #[test]
    fn error_lines_are_one_line() {
        let err = input("line one\nline two\r\n\x1b[31mred\tend");
        let line = one_line(&err);
        assert_eq!(line.lines().count(), 1, "{line:?}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with("line one line two") && line.ends_with("red end"));
    }

    #[cfg(unix)]
    #[test]
    fn out_files_are_created_owner_only_and_keep_an_existing_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();

        let new = dir.path().join("plain.bin");
        write_file(&new, b"secret").unwrap();
        assert_eq!(mode(&new), 0o600);
        assert_eq!(std::fs::read(&new).unwrap(), b"secret");

        let existing = dir.path().join("shared.pem");
        std::fs::write(&existing, b"a much longer old content").unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_file(&existing, b"new").unwrap();
        assert_eq!(mode(&existing), 0o644, "an existing file keeps its mode");
        assert_eq!(
            std::fs::read(&existing).unwrap(),
            b"new",
            "and is truncated"
        );

        let out = BytesOut {
            format: Encoding::Raw,
            out: Some(dir.path().join("random.bin")),
        };
        out.report("random", vec![7; 16]).unwrap();
        assert_eq!(mode(&dir.path().join("random.bin")), 0o600);

        let err = write_file(&dir.path().join("no/such/dir"), b"x").unwrap_err();
        assert_eq!(classify(&err).0, "io");
        assert!(one_line(&err).contains("no/such/dir"));
    }
}
