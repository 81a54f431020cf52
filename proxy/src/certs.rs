//! A listener's certificates: each chain read from its PEM file, its key found in the HSM (by
//! label or handle) and checked to be the certificate's, and the resolver that picks one per
//! handshake: by SNI (exact name, then wildcard), then by what the client can verify (an RSA
//! and an ECDSA certificate for one name), else the first certificate.

use crate::ProxyError;
use crate::signer::{HsmKey, KeyKind, SignCounters};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sealgate_config::{CertificateConfig, KeyRef};
use sealgate_hsm_client::Client;
use sealgate_hsm_proto::{AttributeValue, Reply, Request};
use std::path::Path;
use std::sync::Arc;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// One certificate, ready for handshakes.
#[derive(Debug)]
struct Entry {
    /// Its DNS names (lowercase; `*.example.com` for wildcards).
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Picks a listener's certificate per handshake.
#[derive(Debug)]
pub(crate) struct CertResolver {
    entries: Vec<Entry>,
}

fn cert_error(path: &Path, reason: impl std::fmt::Display) -> ProxyError {
    ProxyError::Certificate {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl CertResolver {
    /// Loads every certificate of a listener and finds its key in the HSM.
    pub(crate) async fn load(
        certificates: &[CertificateConfig],
        client: &Client,
        counters: &Arc<SignCounters>,
    ) -> Result<Self, ProxyError> {
        let mut entries = Vec::with_capacity(certificates.len());
        for c in certificates {
            entries.push(load_one(c, client, counters).await?);
        }
        Ok(Self { entries })
    }

    fn matches(entry: &Entry, name: &str) -> bool {
        entry.names.iter().any(|n| {
            n == name
                || n.strip_prefix("*.").is_some_and(|suffix| {
                    name.split_once('.').is_some_and(|(_, rest)| rest == suffix)
                })
        })
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        let usable = |e: &&Entry| e.key.key.choose_scheme(schemes).is_some();
        let by_name: Vec<&Entry> = match hello.server_name() {
            Some(name) => {
                let name = name.to_ascii_lowercase();
                self.entries
                    .iter()
                    .filter(|e| Self::matches(e, &name))
                    .collect()
            }
            None => Vec::new(),
        };
        by_name
            .iter()
            .copied()
            .find(usable)
            .or_else(|| self.entries.iter().find(usable))
            .or_else(|| self.entries.first())
            .map(|e| Arc::clone(&e.key))
    }
}

async fn load_one(
    c: &CertificateConfig,
    client: &Client,
    counters: &Arc<SignCounters>,
) -> Result<Entry, ProxyError> {
    let path = c.chain.as_path();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| cert_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(path, e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| cert_error(path, "no certificate in the file"))?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| cert_error(path, format!("the first certificate does not parse: {e}")))?;
    let spki = cert.public_key();
    let kind = key_kind(spki).ok_or_else(|| {
        cert_error(
            path,
            "the certificate's key is not ECDSA P-256/P-384, RSA or Ed25519",
        )
    })?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => names.push(n.to_ascii_lowercase()),
                GeneralName::IPAddress(ip) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*ip) {
                        names.push(std::net::Ipv4Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let spki_der = spki.raw.to_vec();
    let handle = find_key(&c.key, client, path).await?;
    // The key in the HSM must be the certificate's.
    match client.call(Request::ExportPublicKey { handle }).await {
        Ok(Reply::PublicKey { der, .. }) if der == spki_der => {}
        Ok(Reply::PublicKey { .. }) => {
            return Err(cert_error(
                path,
                format!(
                    "the HSM key ({}, handle {handle}) is not this certificate's key",
                    c.key
                ),
            ));
        }
        Ok(_) => return Err(cert_error(path, "unexpected answer to export-public-key")),
        Err(e) => {
            return Err(cert_error(
                path,
                format!("cannot read the HSM key's public half ({}): {e}", c.key),
            ));
        }
    }
    let key = HsmKey::new(
        client.clone(),
        handle,
        kind,
        spki_der,
        tokio::runtime::Handle::current(),
        Arc::clone(counters),
    );
    tracing::info!(certificate = %path.display(), key = %c.key, handle, ?names, "certificate ready");
    Ok(Entry {
        names,
        key: Arc::new(CertifiedKey::new(chain, Arc::new(key))),
    })
}

/// The kind of a certificate's public key.
fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<KeyKind> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519,
    };
    let alg = &spki.algorithm;
    if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        return Some(KeyKind::Rsa);
    }
    if alg.algorithm == OID_SIG_ED25519 {
        return Some(KeyKind::Ed25519);
    }
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg.parameters.as_ref()?.as_oid().ok()?;
        if curve == OID_EC_P256 {
            return Some(KeyKind::EcdsaP256);
        }
        if curve == OID_NIST_EC_P384 {
            return Some(KeyKind::EcdsaP384);
        }
    }
    None
}

/// The handle of the private key `key` names.
async fn find_key(key: &KeyRef, client: &Client, path: &Path) -> Result<u64, ProxyError> {
    let label = match key {
        KeyRef::Handle(h) => return Ok(*h),
        KeyRef::Label(label) => label,
    };
    let filter = vec![
        AttributeValue::new("label", label.clone()),
        AttributeValue::new("class", "private-key"),
    ];
    let keys = match client.call(Request::ListKeys { filter }).await {
        Ok(Reply::Keys(keys)) => keys,
        Ok(_) => return Err(cert_error(path, "unexpected answer to list-keys")),
        Err(e) => {
            return Err(cert_error(
                path,
                format!("cannot look up the HSM key with label {label:?}: {e}"),
            ));
        }
    };
    match keys.as_slice() {
        [one] => Ok(one.handle),
        [] => Err(cert_error(
            path,
            format!("the HSM user has no private key with label {label:?}"),
        )),
        many => Err(cert_error(
            path,
            format!(
                "{} private keys have label {label:?}; name the key by handle",
                many.len()
            ),
        )),
    }
}
