//! MFA (token-sign) on the command line: when a user with MFA logs in, every node answers the
//! password with a challenge. The challenges go into a token file; the user signs each with
//! the registered RSA key (`openssl dgst -sha256 -sign KEY.pem`) and puts the signatures in the
//! file; the command, waiting meanwhile, reads them and finishes the logins.
//!
//! The file (`SEALGATE_MFA_FILE`, default `sealgate-mfa-token.json`):
//! `{"version":"sealgate-mfa-1","tokens":[{"hsm_id":1,"unsigned":"<base64>","signed":""},…]}`;
//! `unsigned` is the challenge, `signed` the base64 signature to fill in.

use crate::credentials::EnvFn;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sealgate_hsm_client::MfaSigner;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

/// Where the token file goes.
pub(crate) const ENV_MFA_FILE: &str = "SEALGATE_MFA_FILE";

/// The file's format version.
const VERSION: &str = "sealgate-mfa-1";

/// How long a login waits for its signatures (the nodes' challenges live as long).
const WAIT: Duration = Duration::from_secs(10 * 60);

/// How long the first challenge waits for the other nodes' before the file is written.
const GATHER: Duration = Duration::from_secs(1);

/// The token file of `SEALGATE_MFA_FILE`, or `sealgate-mfa-token.json` here.
pub(crate) fn token_file(env: EnvFn<'_>) -> PathBuf {
    env(ENV_MFA_FILE).map_or_else(|| PathBuf::from("sealgate-mfa-token.json"), PathBuf::from)
}

/// The token file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MfaFile {
    /// `sealgate-mfa-1`.
    pub(crate) version: String,
    /// One per node.
    pub(crate) tokens: Vec<MfaToken>,
}

/// One node's challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MfaToken {
    /// The node.
    pub(crate) hsm_id: u32,
    /// The challenge, base64.
    pub(crate) unsigned: String,
    /// Its signature, base64 (empty until signed).
    pub(crate) signed: String,
}

/// Signs challenges through the token file.
pub(crate) struct FileSigner {
    path: PathBuf,
    nodes: usize,
    challenges: tokio::sync::Mutex<BTreeMap<u32, Vec<u8>>>,
}

impl FileSigner {
    /// For a cluster of `nodes` nodes, through the file at `path`.
    pub(crate) fn new(path: PathBuf, nodes: usize) -> Self {
        Self {
            path,
            nodes,
            challenges: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Writes the file with every challenge known now, unless it already holds them.
    async fn publish(&self) -> Result<(), String> {
        let challenges = self.challenges.lock().await;
        let tokens: Vec<MfaToken> = challenges
            .iter()
            .map(|(id, c)| MfaToken {
                hsm_id: *id,
                unsigned: B64.encode(c),
                signed: String::new(),
            })
            .collect();
        if let Some(existing) = read(&self.path) {
            let same = existing.tokens.len() == tokens.len()
                && existing
                    .tokens
                    .iter()
                    .zip(&tokens)
                    .all(|(a, b)| a.hsm_id == b.hsm_id && a.unsigned == b.unsigned);
            if same {
                return Ok(());
            }
        }
        let file = MfaFile {
            version: VERSION.into(),
            tokens,
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text + "\n")
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        eprintln!(
            "MFA: sign each token's challenge in {} with your registered key (base64-decode \
             \"unsigned\", `openssl dgst -sha256 -sign KEY.pem`, base64 into \"signed\"); \
             waiting up to {} minutes",
            self.path.display(),
            WAIT.as_secs() / 60
        );
        Ok(())
    }
}

fn read(path: &Path) -> Option<MfaFile> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str::<MfaFile>(&text)
        .ok()
        .filter(|f| f.version == VERSION)
}

impl MfaSigner for FileSigner {
    fn sign(
        &self,
        node: u32,
        challenge: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>> {
        Box::pin(async move {
            let unsigned = B64.encode(&challenge);
            self.challenges.lock().await.insert(node, challenge);
            // Let the other nodes' challenges arrive, so one file holds them all.
            let gather = Instant::now() + GATHER;
            while self.challenges.lock().await.len() < self.nodes && Instant::now() < gather {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.publish().await?;
            let until = Instant::now() + WAIT;
            loop {
                let signed = read(&self.path).and_then(|f| {
                    f.tokens.into_iter().find(|t| {
                        t.hsm_id == node && t.unsigned == unsigned && !t.signed.is_empty()
                    })
                });
                if let Some(t) = signed {
                    return B64.decode(t.signed.trim()).map_err(|e| {
                        format!(
                            "the signature for node {node} in {} is not base64: {e}",
                            self.path.display()
                        )
                    });
                }
                if Instant::now() >= until {
                    return Err(format!(
                        "no signature for node {node} in {} within {} minutes",
                        self.path.display(),
                        WAIT.as_secs() / 60
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }
}
