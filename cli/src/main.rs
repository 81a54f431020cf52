//! `sealgate`: the one binary. For now it only describes itself; later issues add `serve`,
//! `node`, `cluster`, `user`, `key`, `crypto` and the other subcommands (see ARCHITECTURE.md).
#![forbid(unsafe_code)]

use clap::{CommandFactory, Parser};

/// sealgate: a TLS-terminating reverse proxy whose private keys live in a clustered software HSM.
///
/// The HSM engine (users, roles, keys, wrap-only export, encrypted store) is built as a library;
/// the proxy, the HSM node process and the management commands come next.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {}

fn main() {
    if std::env::args_os().len() <= 1 {
        // No arguments: show what the binary is, like `--help`.
        let _ = Cli::command().print_long_help();
        return;
    }
    let _ = Cli::parse();
}
