//! The client's errors: whether a node refused (with the node's kind and message), whether the
//! request may have been applied, and what went wrong setting up a connection.

use crate::config::ConfigError;
use sealgate_hsm_proto::{DecodeError, ErrorKind};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why a request or [`Client::connect`](crate::Client::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node answered with an error (a wrong password, a missing key, busy after every
    /// retry). The message is the node's.
    #[error("{error}")]
    Node {
        /// The node that answered.
        node: u32,
        /// Its answer.
        error: sealgate_hsm_proto::Error,
    },
    /// No node is up (or every node that was up failed this request).
    #[error("no HSM node is available")]
    NoNodeAvailable,
    /// A request that is not safe to repeat was sent, then its node failed or did not answer
    /// in time. It was not re-sent anywhere.
    #[error(
        "{request} on node {node} was interrupted (connection lost or no answer in time); \
         it may or may not have been applied"
    )]
    Interrupted {
        /// The node the request went to.
        node: u32,
        /// The request's name.
        request: &'static str,
    },
    /// The node did not answer within the request timeout (a request safe to repeat, and no
    /// other node left to try).
    #[error("node {node} did not answer within the request timeout")]
    Timeout {
        /// The node.
        node: u32,
    },
    /// The connection to the node was lost before its answer came (a request safe to repeat,
    /// and no other node left to try).
    #[error("the connection to node {node} was lost before it answered")]
    Disconnected {
        /// The node.
        node: u32,
    },
    /// The node is down (being reconnected in the background, or refused the credentials).
    #[error("node {node} is down")]
    NodeDown {
        /// The node.
        node: u32,
    },
    /// The configuration has no node with this id.
    #[error("no node {node} in the client configuration")]
    UnknownNode {
        /// The id asked for.
        node: u32,
    },
    /// A connection to a node could not be set up.
    #[error("cannot connect to node {node} at {address}: {source}")]
    Connect {
        /// The node.
        node: u32,
        /// Its address.
        address: SocketAddr,
        /// What failed.
        source: ConnectError,
    },
    /// The request is larger than the node accepts; it was not sent.
    #[error("{request} request of {len} bytes exceeds the node's limit of {max} bytes")]
    RequestTooLarge {
        /// The request's name.
        request: &'static str,
        /// Its encoded size.
        len: usize,
        /// The node's frame limit.
        max: usize,
    },
    /// The request names a session key (a handle with bit 63 set): session keys live only on
    /// the node that created them, and the same number names another key, or none, on other
    /// nodes, so [`Client::call`](crate::Client::call) does not choose a node for it. It was
    /// not sent.
    #[error(
        "{request} names session key {handle:#x}, which exists only on the node that created \
         it; send it with Client::call_on to that node"
    )]
    SessionKeyNeedsNode {
        /// The request's name.
        request: &'static str,
        /// The session key's handle.
        handle: u64,
    },
    /// Hello, login and logout belong to the client (sessions live on connections, and the
    /// client re-logs in after every reconnect); pass credentials to
    /// [`Client::connect`](crate::Client::connect) instead.
    #[error("{request} is managed by the client; pass credentials to Client::connect instead")]
    Managed {
        /// The request's name.
        request: &'static str,
    },
    /// The client was closed.
    #[error("the HSM client is closed")]
    Closed,
    /// A PEM file (CA, certificate or key) could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A node's server name is not a valid DNS name or IP address.
    #[error("node {node}: invalid server name {name:?}")]
    ServerName {
        /// The node.
        node: u32,
        /// The name.
        name: String,
    },
    /// rustls refused the TLS configuration (a key that does not match the certificate, say).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client configuration file was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl ClientError {
    /// The node's error kind, if a node answered with an error (so `LoginFailed`, `Busy`,
    /// `NotFound`… can be told apart); `None` for transport and local errors.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Node { error, .. }
            | Self::Connect {
                source: ConnectError::Refused(error),
                ..
            } => Some(error.kind),
            _ => None,
        }
    }

    /// The node concerned, if the error is about one node.
    pub fn node(&self) -> Option<u32> {
        match self {
            Self::Node { node, .. }
            | Self::Interrupted { node, .. }
            | Self::Timeout { node }
            | Self::Disconnected { node }
            | Self::NodeDown { node }
            | Self::UnknownNode { node }
            | Self::Connect { node, .. }
            | Self::ServerName { node, .. } => Some(*node),
            _ => None,
        }
    }
}

/// What failed while connecting to a node: TCP, TLS, or the hello.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// TCP connect or the TLS handshake failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Connecting, the TLS handshake and the hello took longer than the connect timeout.
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    /// The node refused the hello.
    #[error("hello refused: {0}")]
    Refused(sealgate_hsm_proto::Error),
    /// The node closed the connection before answering the hello.
    #[error("the node closed the connection during hello")]
    Closed,
    /// The node's answer to hello did not decode.
    #[error("bad answer to hello: {0}")]
    Malformed(DecodeError),
    /// The node answered hello with something other than a welcome.
    #[error("the node did not answer hello with a welcome")]
    UnexpectedReply,
    /// The node chose a protocol version this client does not speak.
    #[error("the node chose protocol version {0}, which this client does not speak")]
    Version(u16),
    /// The node says it has another id than the configuration gives it.
    #[error("the node says it is node {0}")]
    WrongNode(u32),
    /// The node belongs to another cluster than the configuration's `cluster_id`; the client
    /// does not log in to it.
    #[error(
        "the node belongs to cluster {found}, not to cluster {expected} (cluster_id in the \
         client configuration)"
    )]
    WrongCluster {
        /// The configuration's cluster id.
        expected: String,
        /// The cluster id the node's welcome gave.
        found: String,
    },
}
