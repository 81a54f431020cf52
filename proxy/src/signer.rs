//! A rustls signing key whose private half lives in the HSM cluster: `Signer::sign` sends a
//! `Sign` request through the client SDK (load-balanced, failed over) and waits for the answer.
//!
//! rustls calls `sign` synchronously. It must not simply block a runtime worker, or the runtime
//! stalls (DESIGN.md §2). On a worker (the default handshake driver, and the second ClientHello
//! after a HelloRetryRequest) the signer waits inside `block_in_place`, which hands the
//! worker's other tasks to another thread; on a thread the `offload` driver marked as a
//! handshake thread it waits with `Handle::block_on`.

use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use sealgate_hsm_client::Client;
use sealgate_hsm_proto::{HashAlg, Reply, Request, SignMechanism};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    /// Set while this thread runs a handshake step for the handshake driver.
    static IN_HANDSHAKE_POOL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread marked as a handshake thread (the signer may block it).
pub(crate) fn in_handshake_pool<T>(f: impl FnOnce() -> T) -> T {
    IN_HANDSHAKE_POOL.with(|c| c.set(true));
    let out = f();
    IN_HANDSHAKE_POOL.with(|c| c.set(false));
    out
}

/// What kind of key the certificate holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA.
    Rsa,
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    /// The TLS schemes this key can make, best first, with the HSM mechanism for each.
    fn schemes(self) -> &'static [(SignatureScheme, SignMechanism)] {
        use SignatureScheme as S;
        match self {
            Self::EcdsaP256 => &[(
                S::ECDSA_NISTP256_SHA256,
                SignMechanism::Ecdsa(HashAlg::Sha256),
            )],
            Self::EcdsaP384 => &[(
                S::ECDSA_NISTP384_SHA384,
                SignMechanism::Ecdsa(HashAlg::Sha384),
            )],
            Self::Rsa => &[
                (S::RSA_PSS_SHA256, SignMechanism::RsaPss(HashAlg::Sha256)),
                (S::RSA_PSS_SHA384, SignMechanism::RsaPss(HashAlg::Sha384)),
                (S::RSA_PSS_SHA512, SignMechanism::RsaPss(HashAlg::Sha512)),
                (
                    S::RSA_PKCS1_SHA256,
                    SignMechanism::RsaPkcs1(HashAlg::Sha256),
                ),
                (
                    S::RSA_PKCS1_SHA384,
                    SignMechanism::RsaPkcs1(HashAlg::Sha384),
                ),
                (
                    S::RSA_PKCS1_SHA512,
                    SignMechanism::RsaPkcs1(HashAlg::Sha512),
                ),
            ],
            Self::Ed25519 => &[(S::ED25519, SignMechanism::Ed25519)],
        }
    }

    fn algorithm(self) -> SignatureAlgorithm {
        match self {
            Self::EcdsaP256 | Self::EcdsaP384 => SignatureAlgorithm::ECDSA,
            Self::Rsa => SignatureAlgorithm::RSA,
            Self::Ed25519 => SignatureAlgorithm::ED25519,
        }
    }
}

/// Counts the signatures the proxy asked the HSM for.
#[derive(Debug, Default)]
pub struct SignCounters {
    /// Signatures made.
    pub signed: AtomicU64,
    /// Signatures that failed (the handshake failed with them).
    pub failed: AtomicU64,
    /// Signatures waited for on a runtime worker, in `block_in_place` (the default handshake
    /// driver, and the path of a second ClientHello after a HelloRetryRequest).
    pub on_worker: AtomicU64,
}

/// A private key in the HSM, as rustls sees it.
#[derive(Clone)]
pub(crate) struct HsmKey {
    client: Client,
    handle: u64,
    kind: KeyKind,
    spki: Vec<u8>,
    runtime: tokio::runtime::Handle,
    counters: Arc<SignCounters>,
}

impl std::fmt::Debug for HsmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmKey")
            .field("handle", &self.handle)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl HsmKey {
    /// The key `handle` of kind `kind` whose public half is `spki` (DER).
    pub(crate) fn new(
        client: Client,
        handle: u64,
        kind: KeyKind,
        spki: Vec<u8>,
        runtime: tokio::runtime::Handle,
        counters: Arc<SignCounters>,
    ) -> Self {
        Self {
            client,
            handle,
            kind,
            spki,
            runtime,
            counters,
        }
    }
}

impl SigningKey for HsmKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        self.kind
            .schemes()
            .iter()
            .find(|(scheme, _)| offered.contains(scheme))
            .map(|&(scheme, mechanism)| {
                Box::new(HsmSigner {
                    key: self.clone(),
                    scheme,
                    mechanism,
                }) as Box<dyn Signer>
            })
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.kind.algorithm()
    }
}

/// One signature with a chosen scheme.
struct HsmSigner {
    key: HsmKey,
    scheme: SignatureScheme,
    mechanism: SignMechanism,
}

impl std::fmt::Debug for HsmSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmSigner")
            .field("handle", &self.key.handle)
            .field("scheme", &self.scheme)
            .finish()
    }
}

impl Signer for HsmSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let client = self.key.client.clone();
        let request = Request::Sign {
            handle: self.key.handle,
            mechanism: self.mechanism,
            data: message.to_vec(),
        };
        let started = std::time::Instant::now();
        let call = async move { client.call(request).await };
        let counters = &self.key.counters;
        let answer = if IN_HANDSHAKE_POOL.with(Cell::get) {
            self.key.runtime.block_on(call)
        } else if tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            counters.on_worker.fetch_add(1, Ordering::Relaxed);
            tokio::task::block_in_place(|| self.key.runtime.block_on(call))
        } else if tokio::runtime::Handle::try_current().is_err() {
            self.key.runtime.block_on(call)
        } else {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            return Err(rustls::Error::General(
                "cannot wait for the HSM on a single-threaded runtime".into(),
            ));
        };
        metrics::histogram!(sealgate_monitoring::names::HANDSHAKE_SIGN_TIME.name)
            .record(started.elapsed().as_secs_f64());
        match answer {
            Ok(Reply::Data(signature)) => {
                counters.signed.fetch_add(1, Ordering::Relaxed);
                Ok(signature)
            }
            Ok(_) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                Err(rustls::Error::General(
                    "the HSM answered a signature request with something else".into(),
                ))
            }
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = self.key.handle, "the HSM did not sign: {e}");
                Err(rustls::Error::General(format!("the HSM did not sign: {e}")))
            }
        }
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}
