//! sealgate's HSM client SDK: a [`Client`] holds one mutually authenticated TLS 1.3
//! connection to every node of a cluster, logs in, and sends requests of the wire protocol
//! (`sealgate-hsm-proto`) to them.
//!
//! - **Pipelining:** many requests in flight per connection, matched to answers by id; a writer
//!   task batches queued frames into one write; the node's `max_in_flight` and `max_frame_len`
//!   (from its welcome) are respected.
//! - **Load balancing:** each request goes to the less loaded of two random healthy nodes
//!   (power of two choices on outstanding requests).
//! - **Retries and failover:** `busy` and `too-many-in-flight` answers (the node did not run
//!   the request) are retried with exponential backoff and jitter, preferably elsewhere; so
//!   is `unavailable` for requests that are safe to repeat ([`Request::is_idempotent`]). When
//!   a node fails mid-request, those requests go to another node; writes fail with
//!   [`ClientError::Interrupted`] (or, answered `unavailable`, with the node's error) and are
//!   never sent twice.
//! - **Session keys:** requests naming a session key ([`Request::session_handle`]) must go to
//!   the node that created it ([`Client::call_on`]); [`Client::call`] refuses them.
//! - **Cluster check:** with `cluster_id` in the configuration, nodes of another cluster are
//!   refused before login.
//! - **Health:** a background task per node checks health, marks nodes down, reconnects with
//!   backoff, logs in again with the stored credentials, and marks them up; a node that
//!   refuses the credentials (`login-failed`, `user-locked`) is parked instead, as failed
//!   logins count toward lockout. A node that ends the client's session while the connection
//!   stays open (it answers `not-logged-in` after a password reset, a user deletion, or the
//!   PRECO's activation) is treated like a lost connection: marked down, reconnected and
//!   logged in again (parked if that login is refused). The request it refused is sent again,
//!   to another node or to the same once back, if it is safe to repeat; a write returns the
//!   node's error and is never re-sent. Without credentials, `not-logged-in` is just an
//!   answer.
//!
//! What this crate does **not** do: it does not depend on the engine (`sealgate-hsm-core`) or
//! the crypto crate (`sealgate-hsm-crypto`), performs no cryptography of its own besides TLS,
//! and never holds key material: keys stay in the nodes, and requests name them by handle. The
//! only secret it keeps is the login password, as a zeroized [`Secret`] that is never logged.
#![forbid(unsafe_code)]

mod client;
mod config;
mod connection;
mod error;
mod node;
mod tls;

#[cfg(test)]
mod tests;

pub use client::{Client, Credentials, MfaSigner, NodeStatus};
pub use config::{ClientConfig, ClientFile, ClientSection, ConfigError, NodeEndpoint, NodeSection};
pub use error::{ClientError, ConnectError};
pub use sealgate_hsm_proto::{ErrorKind, Reply, Request, Secret};
