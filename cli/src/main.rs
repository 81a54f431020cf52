//! `sealgate`: the one binary. For now it only describes itself; later issues add `serve`,
//! `node`, `cluster`, `user`, `key`, `crypto` and the other subcommands.
#![forbid(unsafe_code)]

use clap::Parser;

/// sealgate: a TLS-terminating reverse proxy whose private keys live in a clustered software HSM.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
