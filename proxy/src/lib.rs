//! sealgate's reverse proxy: TLS termination whose handshake signatures the HSM cluster makes
//! (the proxy holds certificates and key references, never a private key), then HTTP/1.1 and
//! HTTP/2 to upstream pools.
//!
//! - [`signer`]: a rustls `SigningKey` that signs through the HSM client SDK.
//! - `certs`: certificates per listener, their keys found in the HSM and checked, chosen by SNI
//!   and by the client's signature algorithms.
//! - `server`: listeners and the handshake driver: the ClientHello is read on the runtime, and
//!   the step in which rustls signs, at most `max_handshakes_in_flight` at once, waits for the
//!   HSM in `block_in_place` (or on the blocking pool: DESIGN.md §2), so a slow HSM never stalls
//!   the runtime.
//! - `forward`: routes, pools, forwarding headers, streaming bodies.
//! - `access`: the access log, one line per request when its response has been sent.
//!
//! What this crate does not do: it does not depend on the HSM engine or its crypto crate
//! (`cargo tree -p sealgate-proxy` shows neither); it reaches keys only through the client SDK.
#![forbid(unsafe_code)]

mod access;
mod bodies;
mod certs;
pub mod demo;
mod forward;
mod server;
pub mod signer;

pub use server::{HandshakeDriver, Proxy, ProxyStats};

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A certificate file is unusable, or its key is not in the HSM.
    #[error("certificate {path}: {reason}")]
    Certificate {
        /// The chain file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(String),
    /// A reload was refused (the old configuration stays).
    #[error("reload refused: {0}")]
    Reload(String),
    /// A listener could not bind.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}
