//! `sealgate crypto sign|verify|encrypt|decrypt|digest|hmac|random`: cryptographic operations
//! with keys in the HSM, as the user logged in. Input comes from `--data TEXT`,
//! `--data-path FILE` or stdin; byte results are written as `--format hex|base64|raw` to stdout
//! or `--out FILE` (see `output::BytesOut`).

use crate::credentials::{self, On, Target};
use crate::key::{KeyRef, Purpose};
use crate::output::{BytesOut, Report, usage};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use sealgate_hsm_client::Client;
use sealgate_hsm_proto::{EncryptMechanism, HashAlg, Reply, Request, SignMechanism};
use serde_json::json;
use std::io::{IsTerminal as _, Read};
use std::path::{Path, PathBuf};

/// `sealgate crypto …`.
#[derive(Debug, Subcommand)]
pub(crate) enum CryptoCommand {
    /// Sign data (the HSM hashes it as the mechanism says).
    ///
    /// JSON data: {"signature": hex|base64, "encoding", "len", "out"?}.
    Sign(SignArgs),
    /// Verify a signature; exits 1 (kind verify-failed) if it does not verify.
    ///
    /// JSON data: {"verified": true}.
    Verify(VerifyArgs),
    /// Encrypt data (aes-gcm output is iv || ciphertext || tag).
    ///
    /// JSON data: {"ciphertext": hex|base64, "encoding", "len", "out"?}.
    Encrypt(EncryptArgs),
    /// Decrypt data.
    ///
    /// JSON data: {"plaintext": hex|base64, "encoding", "len", "out"?}.
    Decrypt(EncryptArgs),
    /// Hash data in the HSM.
    ///
    /// JSON data: {"digest": hex|base64, "encoding", "len", "out"?}.
    Digest(DigestArgs),
    /// HMAC with a generic secret (a sign with hmac-HASH).
    ///
    /// JSON data: {"mac": hex|base64, "encoding", "len", "out"?}.
    Hmac(HmacArgs),
    /// Random bytes from the HSM.
    ///
    /// JSON data: {"random": hex|base64, "encoding", "len", "out"?}.
    Random(RandomArgs),
}

/// Where the input comes from: `--data`, `--data-path`, else stdin.
#[derive(Debug, Clone, Args, Default)]
#[group(multiple = false)]
pub(crate) struct DataIn {
    /// The data, as text.
    #[arg(long, value_name = "TEXT")]
    pub(crate) data: Option<String>,
    /// A file with the data (default: stdin).
    #[arg(long, value_name = "FILE")]
    pub(crate) data_path: Option<PathBuf>,
}

impl DataIn {
    /// Reads the data; `stdin` is read only when it is not a terminal.
    fn read(&self, stdin: &mut dyn Read, stdin_is_terminal: bool) -> anyhow::Result<Vec<u8>> {
        if let Some(text) = &self.data {
            return Ok(text.as_bytes().to_vec());
        }
        if let Some(path) = &self.data_path {
            return read_file(path);
        }
        if stdin_is_terminal {
            return Err(usage(
                "no data: give --data TEXT or --data-path FILE, or pipe the data on stdin",
            ));
        }
        let mut bytes = Vec::new();
        stdin.read_to_end(&mut bytes).context("cannot read stdin")?;
        Ok(bytes)
    }
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `crypto sign`.
#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    #[command(flatten)]
    pub(crate) key: KeyRef,
    /// rsa-pkcs-HASH, rsa-pss-HASH, ecdsa-HASH, ed25519 or hmac-HASH (HASH: sha256, sha384,
    /// sha512).
    #[arg(long)]
    pub(crate) mechanism: SignMechanism,
    #[command(flatten)]
    pub(crate) input: DataIn,
    #[command(flatten)]
    pub(crate) out: BytesOut,
}

/// The signature to verify.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct SignatureIn {
    /// The signature in hex.
    #[arg(long, value_name = "HEX")]
    pub(crate) signature: Option<String>,
    /// A file with the signature's bytes (raw, as `crypto sign --format raw` or openssl write
    /// them).
    #[arg(long, value_name = "FILE")]
    pub(crate) signature_path: Option<PathBuf>,
}

impl SignatureIn {
    fn read(&self) -> anyhow::Result<Vec<u8>> {
        match (&self.signature, &self.signature_path) {
            (Some(text), _) => hex::decode(text.trim())
                .map_err(|e| crate::output::input(format!("--signature is not hex: {e}"))),
            (None, Some(path)) => read_file(path),
            (None, None) => Err(usage("give --signature HEX or --signature-path FILE")),
        }
    }
}

/// `crypto verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) key: KeyRef,
    /// The mechanism the signature was made with.
    #[arg(long)]
    pub(crate) mechanism: SignMechanism,
    #[command(flatten)]
    pub(crate) input: DataIn,
    #[command(flatten)]
    pub(crate) signature: SignatureIn,
}

/// `crypto encrypt` / `crypto decrypt`.
#[derive(Debug, Args)]
pub(crate) struct EncryptArgs {
    #[command(flatten)]
    pub(crate) key: KeyRef,
    /// aes-gcm or rsa-oaep-HASH (HASH: sha1, sha256, sha384, sha512).
    #[arg(long)]
    pub(crate) mechanism: EncryptMechanism,
    /// Additional authenticated data for aes-gcm, as text.
    #[arg(long, value_name = "TEXT")]
    pub(crate) aad: Option<String>,
    #[command(flatten)]
    pub(crate) input: DataIn,
    #[command(flatten)]
    pub(crate) out: BytesOut,
}

/// `crypto digest`.
#[derive(Debug, Args)]
pub(crate) struct DigestArgs {
    /// sha1, sha224, sha256, sha384 or sha512.
    #[arg(long, default_value = "sha256")]
    pub(crate) hash: HashAlg,
    #[command(flatten)]
    pub(crate) input: DataIn,
    #[command(flatten)]
    pub(crate) out: BytesOut,
}

/// `crypto hmac`.
#[derive(Debug, Args)]
pub(crate) struct HmacArgs {
    #[command(flatten)]
    pub(crate) key: KeyRef,
    /// sha256, sha384 or sha512.
    #[arg(long, default_value = "sha256")]
    pub(crate) hash: HashAlg,
    #[command(flatten)]
    pub(crate) input: DataIn,
    #[command(flatten)]
    pub(crate) out: BytesOut,
}

/// `crypto random`.
#[derive(Debug, Args)]
pub(crate) struct RandomArgs {
    /// How many bytes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) len: u32,
    #[command(flatten)]
    pub(crate) out: BytesOut,
}

impl CryptoCommand {
    /// Reads the command's input (empty for `random`).
    fn read_input(&self, stdin: &mut dyn Read, stdin_is_terminal: bool) -> anyhow::Result<Vec<u8>> {
        let input = match self {
            Self::Sign(a) => &a.input,
            Self::Verify(a) => &a.input,
            Self::Encrypt(a) | Self::Decrypt(a) => &a.input,
            Self::Digest(a) => &a.input,
            Self::Hmac(a) => &a.input,
            Self::Random(_) => return Ok(Vec::new()),
        };
        input.read(stdin, stdin_is_terminal)
    }
}

/// Runs a `crypto` command.
pub(crate) async fn run(command: CryptoCommand, target: &Target) -> anyhow::Result<Report> {
    // Read the input (and the signature) before asking for a password or connecting.
    let data = command.read_input(&mut std::io::stdin(), std::io::stdin().is_terminal())?;
    let signature = match &command {
        CryptoCommand::Verify(a) => a.signature.read()?,
        _ => Vec::new(),
    };
    let client = credentials::connect_user(target).await?;
    let result = run_with(&client, command, data, signature).await;
    credentials::finish(client).await;
    result
}

async fn run_with(
    client: &Client,
    command: CryptoCommand,
    data: Vec<u8>,
    signature: Vec<u8>,
) -> anyhow::Result<Report> {
    match command {
        CryptoCommand::Sign(a) => {
            let handle = a.key.resolve(client, Some(Purpose("sign", "true"))).await?;
            let request = Request::Sign {
                handle,
                mechanism: a.mechanism,
                data,
            };
            a.out.report(
                "signature",
                credentials::data(client, On::Any, request).await?,
            )
        }
        CryptoCommand::Verify(a) => {
            let handle = a
                .key
                .resolve(client, Some(Purpose("verify", "true")))
                .await?;
            let request = Request::Verify {
                handle,
                mechanism: a.mechanism,
                data,
                signature,
            };
            match credentials::call(client, On::Any, request).await? {
                Reply::Verified => Ok(Report::new(json!({"verified": true}), "signature verified")),
                other => Err(credentials::unexpected(&other)),
            }
        }
        CryptoCommand::Encrypt(a) => cipher(client, a, data, Direction::Encrypt).await,
        CryptoCommand::Decrypt(a) => cipher(client, a, data, Direction::Decrypt).await,
        CryptoCommand::Digest(a) => {
            let request = Request::Digest { hash: a.hash, data };
            a.out
                .report("digest", credentials::data(client, On::Any, request).await?)
        }
        CryptoCommand::Hmac(a) => {
            let handle = a.key.resolve(client, Some(Purpose("sign", "true"))).await?;
            let request = Request::Sign {
                handle,
                mechanism: SignMechanism::Hmac(a.hash),
                data,
            };
            a.out
                .report("mac", credentials::data(client, On::Any, request).await?)
        }
        CryptoCommand::Random(a) => {
            let request = Request::Random { len: a.len };
            a.out
                .report("random", credentials::data(client, On::Any, request).await?)
        }
    }
}

/// `crypto encrypt` or `crypto decrypt`: what differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Encrypt,
    Decrypt,
}

impl Direction {
    /// The attribute the key needs (picks one half of a pair sharing a label).
    fn purpose(self) -> Purpose {
        match self {
            Self::Encrypt => Purpose("encrypt", "true"),
            Self::Decrypt => Purpose("decrypt", "true"),
        }
    }

    /// The name of the result in JSON and in `--out`'s confirmation.
    fn field(self) -> &'static str {
        match self {
            Self::Encrypt => "ciphertext",
            Self::Decrypt => "plaintext",
        }
    }

    fn request(
        self,
        handle: u64,
        mechanism: EncryptMechanism,
        data: Vec<u8>,
        aad: Vec<u8>,
    ) -> Request {
        match self {
            Self::Encrypt => Request::Encrypt {
                handle,
                mechanism,
                data,
                aad,
            },
            Self::Decrypt => Request::Decrypt {
                handle,
                mechanism,
                data,
                aad,
            },
        }
    }
}

/// Encrypts or decrypts `data` with the key of `a`.
async fn cipher(
    client: &Client,
    a: EncryptArgs,
    data: Vec<u8>,
    direction: Direction,
) -> anyhow::Result<Report> {
    let handle = a.key.resolve(client, Some(direction.purpose())).await?;
    let aad = a.aad.unwrap_or_default().into_bytes();
    let request = direction.request(handle, a.mechanism, data, aad);
    a.out.report(
        direction.field(),
        credentials::data(client, On::Any, request).await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_comes_from_text_a_file_or_stdin() {
        let text = DataIn {
            data: Some("hello".into()),
            data_path: None,
        };
        assert_eq!(text.read(&mut &b"ignored"[..], false).unwrap(), b"hello");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.bin");
        std::fs::write(&path, [0u8, 1, 2]).unwrap();
        let file = DataIn {
            data: None,
            data_path: Some(path),
        };
        assert_eq!(file.read(&mut &b""[..], false).unwrap(), [0, 1, 2]);

        let stdin = DataIn::default();
        assert_eq!(stdin.read(&mut &b"piped"[..], false).unwrap(), b"piped");
        let err = stdin.read(&mut &b""[..], true).unwrap_err().to_string();
        assert!(err.contains("--data"), "{err}");

        let missing = DataIn {
            data: None,
            data_path: Some(dir.path().join("nope")),
        };
        let err = format!("{:#}", missing.read(&mut &b""[..], false).unwrap_err());
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn signatures_come_as_hex_or_a_file() {
        let hex_sig = SignatureIn {
            signature: Some("dead beef".replace(' ', "")),
            signature_path: None,
        };
        assert_eq!(hex_sig.read().unwrap(), [0xde, 0xad, 0xbe, 0xef]);
        let bad = SignatureIn {
            signature: Some("xyz".into()),
            signature_path: None,
        };
        assert!(bad.read().is_err());
    }

    #[test]
    fn encrypt_and_decrypt_differ_only_in_direction() {
        let mechanism = EncryptMechanism::AesGcm;
        let (data, aad) = (b"d".to_vec(), b"a".to_vec());
        assert_eq!(
            Direction::Encrypt.request(7, mechanism, data.clone(), aad.clone()),
            Request::Encrypt {
                handle: 7,
                mechanism,
                data: data.clone(),
                aad: aad.clone()
            }
        );
        assert_eq!(
            Direction::Decrypt.request(7, mechanism, data.clone(), aad.clone()),
            Request::Decrypt {
                handle: 7,
                mechanism,
                data,
                aad
            }
        );
        assert_eq!(Direction::Encrypt.field(), "ciphertext");
        assert_eq!(Direction::Decrypt.field(), "plaintext");
        assert_eq!(Direction::Encrypt.purpose().to_string(), "encrypt=true");
        assert_eq!(Direction::Decrypt.purpose().to_string(), "decrypt=true");
    }
}
