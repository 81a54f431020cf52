//! The client's TLS: TLS 1.3 only, the cluster CA as the only trust anchor, and this client's
//! certificate presented to every node (mutual TLS).

use crate::config::ClientConfig;
use crate::error::ClientError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

fn pem_error(path: &Path, reason: impl std::fmt::Display) -> ClientError {
    ClientError::Pem {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// Builds the rustls configuration from the CA, certificate and key files of `config`.
pub(crate) fn client_config(
    config: &ClientConfig,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(&config.ca)? {
        roots.add(cert).map_err(|e| pem_error(&config.ca, e))?;
    }
    let chain = load_certs(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| pem_error(&config.key, e))?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(tls))
}
