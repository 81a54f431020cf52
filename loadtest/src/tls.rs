//! The TLS client configuration: rustls with the aws-lc-rs provider, one `Arc<ClientConfig>`
//! per run; roots from `--cacert` or the system bundle, or `--insecure`.
//!
//! `--insecure` skips the certificate chain and name checks only: the server's handshake
//! signature is still verified, so a handshake costs the client what a real one does.

use crate::net::Target;
use anyhow::{Context, anyhow, bail};
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the system's CA bundle usually is (Debian, then Fedora); `SSL_CERT_FILE` comes first.
const SYSTEM_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// How to check the server.
#[derive(Debug, Clone, Default)]
pub(crate) struct Verify {
    /// Accept any certificate (the handshake signature is still checked).
    pub(crate) insecure: bool,
    /// Trust these CA certificates (PEM) instead of the system's.
    pub(crate) cacert: Option<PathBuf>,
}

/// A client configuration offering `alpn`, with session resumption (a store shared by every
/// connection made from it) or without.
pub(crate) fn client_config(
    verify: &Verify,
    alpn: &[&[u8]],
    resume: bool,
) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no protocol version")?;
    let mut config = if verify.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(verify.cacert.as_deref())?)
            .with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = if resume {
        Resumption::in_memory_sessions(1024)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// The name to send (SNI) and check: `--sni`, else the URL's host.
pub(crate) fn server_name(
    target: &Target,
    sni: Option<&str>,
) -> anyhow::Result<ServerName<'static>> {
    let name = sni.unwrap_or(&target.host);
    ServerName::try_from(name.to_owned()).map_err(|_| anyhow!("bad TLS server name {name:?}"))
}

fn roots(cacert: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let (path, flag) = match cacert {
        Some(path) => (path.to_owned(), "--cacert"),
        None => {
            let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
            let found = from_env
                .into_iter()
                .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    anyhow!("no system CA bundle found: give --cacert FILE or --insecure")
                })?;
            (found, "CA bundle")
        }
    };
    let text =
        std::fs::read(&path).with_context(|| format!("cannot read {flag} {}", path.display()))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&text) {
        let cert = cert.with_context(|| format!("bad PEM in {flag} {}", path.display()))?;
        store
            .add(cert)
            .with_context(|| format!("bad certificate in {flag} {}", path.display()))?;
    }
    if store.is_empty() {
        bail!("{flag} {} holds no certificate", path.display());
    }
    Ok(store)
}

/// `--insecure`: any certificate for any name, but a valid handshake signature.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
