//! The HSM node: the mutual-TLS server that runs the engine for clients, its redb store and
//! storage master key, replication (openraft), `cluster init`, and the node's metrics
//! (CloudHSM's names, served on `[monitoring] metrics_bind`).
//!
//! What this crate does not do: it holds no key material in clear on disk. The store receives
//! only records whose secrets are sealed by the engine; the master key lives in its own file
//! (mode 0600) or in the environment, never in the store.
#![forbid(unsafe_code)]

pub mod audit;
mod config;
mod convert;
pub mod init;
mod join;
mod master_key;
mod metrics;
mod pool;
pub mod raft;
mod server;
mod service;
mod store;
mod tls;

pub use config::{
    ClusterSection, LimitsSection, LoggingSection, MAX_NODE_ID, MAX_NODES, MemberSection,
    MonitoringSection, NodeConfig, NodeConfigError, NodeFile, NodeLogging, NodeSection, TlsSection,
};
pub use master_key::{MASTER_KEY_ENV, MasterKeyError, MasterKeySource, load_or_create_master_key};
pub use server::{NodeError, NodeHandle, run, run_with, start};
pub use store::{LOG_KEEP, RedbStore};
pub use tls::TlsError;
