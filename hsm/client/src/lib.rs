//! sealgate's HSM client SDK (work in progress: the configuration file so far).
#![forbid(unsafe_code)]

mod config;

pub use config::{ClientConfig, ClientFile, ClientSection, ConfigError, NodeEndpoint, NodeSection};
