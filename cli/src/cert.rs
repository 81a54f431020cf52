//! `sealgate cert self-sign|csr`: a self-signed certificate, or a certificate signing request
//! to send to a CA, for a key in the HSM. rcgen builds them; the HSM signs them (the key never
//! leaves it).

use crate::credentials::{self, Target};
use crate::key::{KeyRef, Purpose};
use crate::output::{Report, error};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use sealgate_hsm_client::Client;
use sealgate_hsm_proto::{HashAlg, Reply, Request, SignMechanism};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer as _;

/// `sealgate cert …`.
#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// A self-signed certificate for an HSM key (for tests, or a private deployment).
    ///
    /// JSON data: {"file", "handle", "names", "pem"}.
    SelfSign(SelfSignArgs),
    /// A certificate signing request for an HSM key, to send to a certificate authority.
    ///
    /// JSON data: {"file", "handle", "names", "pem"}.
    Csr(CsrArgs),
}

/// What both commands take.
#[derive(Debug, Args)]
pub(crate) struct Subject {
    /// The private key (ECDSA P-256/P-384, RSA or Ed25519).
    #[command(flatten)]
    pub(crate) key: KeyRef,
    /// A DNS name or IP address for the certificate (repeat for several; the first is also
    /// the common name).
    #[arg(long = "name", required = true, value_name = "NAME")]
    pub(crate) names: Vec<String>,
    /// Where to write the PEM (default: standard output).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// `cert self-sign`.
#[derive(Debug, Args)]
pub(crate) struct SelfSignArgs {
    #[command(flatten)]
    pub(crate) subject: Subject,
    /// Days of validity.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub(crate) days: u32,
}

/// `cert csr`.
#[derive(Debug, Args)]
pub(crate) struct CsrArgs {
    #[command(flatten)]
    pub(crate) subject: Subject,
}

/// An HSM key as rcgen sees it: its public half, and signatures made by the HSM. rcgen signs
/// synchronously: use it on a blocking thread (it waits with `Handle::block_on`).
pub(crate) struct HsmCertKey {
    client: Client,
    handle: u64,
    public: Vec<u8>,
    algorithm: &'static rcgen::SignatureAlgorithm,
    mechanism: SignMechanism,
    runtime: tokio::runtime::Handle,
}

impl HsmCertKey {
    /// Reads the public half of private key `handle` and picks the signature algorithm.
    pub(crate) async fn new(client: &Client, handle: u64) -> anyhow::Result<Self> {
        let spki = match client.call(Request::ExportPublicKey { handle }).await? {
            Reply::PublicKey { der, .. } => der,
            other => return Err(credentials::unexpected(&other)),
        };
        let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki)
            .map_err(|e| anyhow::anyhow!("the key's public half does not parse: {e}"))?;
        let alg = &info.algorithm;
        let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
        let (algorithm, mechanism) = if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
            (
                &rcgen::PKCS_RSA_SHA256,
                SignMechanism::RsaPkcs1(HashAlg::Sha256),
            )
        } else if alg.algorithm == OID_SIG_ED25519 {
            (&rcgen::PKCS_ED25519, SignMechanism::Ed25519)
        } else if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_EC_P256) {
            (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                SignMechanism::Ecdsa(HashAlg::Sha256),
            )
        } else if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_NIST_EC_P384) {
            (
                &rcgen::PKCS_ECDSA_P384_SHA384,
                SignMechanism::Ecdsa(HashAlg::Sha384),
            )
        } else {
            return Err(error(
                "invalid-input",
                "certificates are made for ECDSA P-256/P-384, RSA and Ed25519 keys",
            ));
        };
        Ok(Self {
            client: client.clone(),
            handle,
            public: info.subject_public_key.data.to_vec(),
            algorithm,
            mechanism,
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

impl rcgen::PublicKeyData for HsmCertKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.algorithm
    }
}

impl rcgen::SigningKey for HsmCertKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let request = Request::Sign {
            handle: self.handle,
            mechanism: self.mechanism,
            data: msg.to_vec(),
        };
        match self.runtime.block_on(self.client.call(request)) {
            Ok(Reply::Data(signature)) => Ok(signature),
            _ => Err(rcgen::Error::RemoteKeyError),
        }
    }
}

/// Certificate parameters for `names` (the first is the common name).
fn params(names: &[String]) -> anyhow::Result<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| error("invalid-input", format!("names: {e}")))?;
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.clone());
    }
    Ok(params)
}

/// A self-signed certificate for `names`, valid from an hour ago for `days` days, signed by
/// `key` (on a blocking thread).
pub(crate) async fn self_signed(
    key: HsmCertKey,
    names: Vec<String>,
    days: u32,
) -> anyhow::Result<String> {
    let mut params = params(&names)?;
    let now = std::time::SystemTime::now();
    params.not_before = now
        .checked_sub(Duration::from_secs(3600))
        .unwrap_or(now)
        .into();
    params.not_after = now
        .checked_add(Duration::from_secs(u64::from(days) * 24 * 3600))
        .unwrap_or(now)
        .into();
    tokio::task::spawn_blocking(move || params.self_signed(&key).map(|c| c.pem()))
        .await
        .context("certificate task failed")?
        .map_err(|e| {
            error(
                "failed",
                format!("the HSM did not sign the certificate: {e}"),
            )
        })
}

/// Runs `cert self-sign` or `cert csr`.
pub(crate) async fn run(command: CertCommand, target: &Target) -> anyhow::Result<Report> {
    let client = credentials::connect_user(target).await?;
    let result = run_with(&client, command).await;
    credentials::finish(client).await;
    result
}

async fn run_with(client: &Client, command: CertCommand) -> anyhow::Result<Report> {
    let (subject, kind) = match &command {
        CertCommand::SelfSign(a) => (&a.subject, "certificate"),
        CertCommand::Csr(a) => (&a.subject, "certificate signing request"),
    };
    let handle = subject
        .key
        .resolve(client, Some(Purpose("sign", "true")))
        .await?;
    let key = HsmCertKey::new(client, handle).await?;
    let names = subject.names.clone();
    let pem = match &command {
        CertCommand::SelfSign(a) => self_signed(key, names.clone(), a.days).await?,
        CertCommand::Csr(_) => {
            let params = params(&names)?;
            tokio::task::spawn_blocking(move || params.serialize_request(&key))
                .await
                .context("request task failed")?
                .map_err(|e| error("failed", format!("the HSM did not sign the request: {e}")))?
                .pem()
                .map_err(|e| error("failed", e.to_string()))?
        }
    };
    let file = match &subject.out {
        Some(path) => {
            std::fs::write(path, &pem)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let data = json!({"file": file, "handle": handle, "names": names, "pem": pem});
    let text = match &file {
        Some(f) => format!(
            "wrote {f}: a {kind} for {} (key handle {handle})",
            names.join(", ")
        ),
        None => pem.trim_end().to_owned(),
    };
    Ok(Report::new(data, text))
}
