//! `hsm-sign`: sign requests straight to the HSM nodes through the client SDK, which keeps one
//! pipelined connection per node and balances requests over them; every caller shares it.

use crate::net::WireSnapshot;
use crate::run::{Caller, Load};
use crate::stats::{Failure, StatusKey};
use anyhow::{Context, anyhow, bail};
use sealgate_hsm_client::{Client, ClientConfig, ClientError, Credentials};
use sealgate_hsm_proto::{AttributeValue, Reply, Request, Secret, SignMechanism};
use std::path::{Path, PathBuf};

/// Where the key and credentials come from.
#[derive(Debug, Clone)]
pub(crate) struct HsmSetup {
    /// The cluster's `client.toml`.
    pub(crate) cluster: PathBuf,
    pub(crate) key: KeyRef,
    pub(crate) mechanism: SignMechanism,
    pub(crate) payload_bytes: usize,
    /// `--user`, else `SEALGATE_USER`.
    pub(crate) user: Option<String>,
    /// `--password-file`, else `SEALGATE_PASSWORD`.
    pub(crate) password_file: Option<PathBuf>,
}

/// The signing key, by label or handle.
#[derive(Debug, Clone)]
pub(crate) enum KeyRef {
    Label(String),
    Handle(u64),
}

/// Parses a mechanism name; `rsa-pkcs1-sha256` is accepted for the protocol's
/// `rsa-pkcs-sha256`.
pub(crate) fn parse_mechanism(text: &str) -> anyhow::Result<SignMechanism> {
    let name = text.to_ascii_lowercase().replace("rsa-pkcs1-", "rsa-pkcs-");
    name.parse().map_err(|e| anyhow!("bad --mechanism: {e}"))
}

fn password(file: Option<&Path>) -> anyhow::Result<Secret> {
    // The file's or variable's text is wiped when dropped, like the `Secret` made from it.
    let text = zeroize::Zeroizing::new(match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --password-file {}", path.display()))?,
        None => std::env::var("SEALGATE_PASSWORD").map_err(|_| {
            anyhow!("no password: set SEALGATE_PASSWORD or give --password-file FILE")
        })?,
    });
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(Secret::new(password.to_owned()))
}

/// `hsm-sign`: the client and the request every caller sends.
#[derive(Debug)]
pub(crate) struct HsmLoad {
    client: Client,
    request: Request,
}

impl HsmLoad {
    /// Connects, logs in and finds the key.
    pub(crate) async fn connect(setup: &HsmSetup) -> anyhow::Result<Self> {
        let config = ClientConfig::load(&setup.cluster)
            .with_context(|| format!("--cluster {}", setup.cluster.display()))?;
        let user = match &setup.user {
            Some(user) => user.clone(),
            None => std::env::var("SEALGATE_USER")
                .map_err(|_| anyhow!("no user: give --user NAME or set SEALGATE_USER"))?,
        };
        let credentials = Credentials::new(user, password(setup.password_file.as_deref())?);
        let client = Client::connect(config, Some(credentials))
            .await
            .context("cannot connect to the HSM cluster")?;
        let handle = match &setup.key {
            KeyRef::Handle(handle) => *handle,
            KeyRef::Label(label) => find_key(&client, label).await?,
        };
        Ok(Self {
            client,
            request: Request::Sign {
                handle,
                mechanism: setup.mechanism,
                data: vec![0x5a; setup.payload_bytes],
            },
        })
    }

    /// Logs out and closes the connections.
    pub(crate) async fn close(&self) {
        self.client.close().await;
    }
}

/// The handle of the one private key labelled `label` that can sign.
async fn find_key(client: &Client, label: &str) -> anyhow::Result<u64> {
    let filter = vec![
        AttributeValue::new("label", label),
        AttributeValue::new("sign", "true"),
    ];
    let keys = match client.call(Request::ListKeys { filter }).await {
        Ok(Reply::Keys(keys)) => keys,
        Ok(_) => bail!("unexpected answer to a key search"),
        Err(e) => return Err(e).context("cannot search keys"),
    };
    match keys.as_slice() {
        [key] => Ok(key.handle),
        [] => bail!("no signing key labelled {label:?}"),
        many => bail!(
            "{} signing keys are labelled {label:?} (handles {}): give --handle",
            many.len(),
            many.iter()
                .map(|k| k.handle.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn failure(e: ClientError) -> Failure {
    if let Some(kind) = e.kind() {
        return Failure::Status(StatusKey::Hsm(kind.as_str()));
    }
    match e {
        ClientError::Timeout { .. } => Failure::Timeout,
        ClientError::NoNodeAvailable
        | ClientError::NodeDown { .. }
        | ClientError::Disconnected { .. }
        | ClientError::Connect { .. } => Failure::Connect(e.into()),
        e => Failure::Other(e.into()),
    }
}

impl Load for HsmLoad {
    type Caller = HsmCaller;

    fn caller(&self, _: usize) -> HsmCaller {
        HsmCaller {
            client: self.client.clone(),
            request: self.request.clone(),
        }
    }

    fn wire(&self) -> Option<WireSnapshot> {
        None
    }

    fn tls(&self) -> bool {
        false
    }
}

/// One signing caller.
#[derive(Debug)]
pub(crate) struct HsmCaller {
    client: Client,
    request: Request,
}

impl Caller for HsmCaller {
    async fn call(&mut self) -> Result<(), Failure> {
        match self.client.call(self.request.clone()).await {
            Ok(Reply::Data(_)) => Ok(()),
            Ok(_) => Err(Failure::Other(anyhow!(
                "a sign request answered without a signature"
            ))),
            Err(e) => Err(failure(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealgate_hsm_proto::HashAlg;

    #[test]
    fn parses_mechanisms() {
        assert_eq!(
            parse_mechanism("ecdsa-sha256").unwrap(),
            SignMechanism::Ecdsa(HashAlg::Sha256)
        );
        assert_eq!(
            parse_mechanism("rsa-pkcs1-sha256").unwrap(),
            SignMechanism::RsaPkcs1(HashAlg::Sha256)
        );
        assert_eq!(
            parse_mechanism("RSA-PSS-SHA256").unwrap(),
            SignMechanism::RsaPss(HashAlg::Sha256)
        );
        assert!(parse_mechanism("rot13").is_err());
    }
}
