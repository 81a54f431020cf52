//! `sealgate config check --config FILE`: loads and checks a configuration for `serve` (the
//! file, then the `SEALGATE_SECTION__KEY` environment) without starting anything.

use crate::output::{Report, error};
use clap::{Args, Subcommand};
use sealgate_config::HsmMode;
use serde_json::json;
use std::path::PathBuf;

/// `sealgate config …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Check a configuration file; one line naming the file and key of the first error.
    ///
    /// JSON data: {"file", "listeners", "routes", "pools", "hsm_mode"}.
    Check(CheckArgs),
}

/// `config check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The configuration file.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: PathBuf,
}

/// Runs `config check`.
pub(crate) fn run(command: &ConfigCommand) -> anyhow::Result<Report> {
    let ConfigCommand::Check(args) = command;
    let config = sealgate_config::load(&args.config, std::env::vars())
        .map_err(|e| error("config", e.to_string()))?;
    let mode = match config.hsm.mode {
        HsmMode::Remote { .. } => "remote",
        HsmMode::Embedded { .. } => "embedded",
    };
    let text = format!(
        "{} is valid: {} listener(s), {} route(s), {} pool(s), HSM {mode}",
        args.config.display(),
        config.listeners.len(),
        config.routes.len(),
        config.pools.len()
    );
    Ok(Report::new(
        json!({
            "file": args.config.display().to_string(),
            "listeners": config.listeners.len(),
            "routes": config.routes.len(),
            "pools": config.pools.len(),
            "hsm_mode": mode,
        }),
        text,
    ))
}
