//! sealgate's monitoring: the names of every metric ([`names`]: CloudWatch's, and the Prometheus
//! names made from them), the metrics endpoint of each process ([`exporter`]: `/metrics` with
//! the process's children merged in, `/healthz`, `/readyz`), the merging of Prometheus
//! expositions ([`merge`]), the CloudWatch embedded metric format writer ([`emf`]) and a
//! byte-counting stream ([`io`]).
//!
//! Metrics are recorded with the `metrics` crate's macros against the names here; the recorder
//! is metrics-exporter-prometheus, installed once per process by [`exporter::install`].
#![forbid(unsafe_code)]

pub mod emf;
pub mod exporter;
pub mod io;
pub mod logging;
pub mod merge;
pub mod names;

pub use metrics;
