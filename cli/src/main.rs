//! `sealgate`: the one binary. It parses the command line and wires the libraries together:
//! `node` runs an HSM node (`sealgate-hsm-node`), `cluster`, `user`, `key` and `crypto` manage a
//! cluster through the client SDK (`sealgate-hsm-client`). Logic that belongs in a library
//! stays there; each command group is one module.
//!
//! Environment: `SEALGATE_CLUSTER` (client.toml), `SEALGATE_USER`, `SEALGATE_PASSWORD`,
//! `SEALGATE_NEW_PASSWORD`, `SEALGATE_LOG` (tracing filter; default `info` for `node`, `warn`
//! otherwise). Passwords are never taken from the command line.
#![forbid(unsafe_code)]

mod cluster;
mod credentials;
mod crypto;
mod key;
mod node;
mod output;
mod user;

use clap::{Args, CommandFactory, Parser, Subcommand};
use output::{Format, Report};
use std::path::PathBuf;
use std::process::ExitCode;

/// sealgate: a TLS-terminating reverse proxy whose private keys live in a clustered software HSM.
///
/// Management commands reach a cluster through --cluster FILE (its client.toml) or
/// SEALGATE_CLUSTER, and log in as --user NAME or SEALGATE_USER with the password in
/// SEALGATE_PASSWORD or typed at a prompt. New passwords come from SEALGATE_NEW_PASSWORD or a
/// prompt. `--output json` prints exactly one JSON object:
/// {"ok": true, "data": …, "error": null} or {"ok": false, "data": null, "error": {"kind",
/// "message"}}. Exit code 0 on success, 1 on failure, 2 on a usage error.
#[derive(Debug, Parser)]
#[command(name = "sealgate", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command accepts.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
struct Global {
    /// Output: human text or one JSON object.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    output: Format,
    /// The cluster's client.toml (default: $SEALGATE_CLUSTER).
    #[arg(long, global = true, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// The user to log in as (default: $SEALGATE_USER).
    #[arg(long, global = true, value_name = "NAME")]
    user: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one HSM node until SIGTERM or SIGINT.
    Node(node::NodeArgs),
    /// Create, activate and inspect a cluster.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Manage users (crypto officers and crypto users).
    #[command(subcommand)]
    User(user::UserCommand),
    /// Manage keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Sign, verify, encrypt, decrypt, hash, HMAC and random bytes.
    #[command(subcommand)]
    Crypto(crypto::CryptoCommand),
}

/// Whether the raw arguments ask for JSON (for errors clap reports before parsing finishes).
fn wants_json(args: &[String]) -> bool {
    args.iter().any(|a| a == "--output=json")
        || args
            .windows(2)
            .any(|w| matches!(w, [flag, value] if flag == "--output" && value == "json"))
}

fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("SEALGATE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn manage(command: Command, target: credentials::Target) -> anyhow::Result<Report> {
    match command {
        Command::Cluster(c) => cluster::run(c, &target).await,
        Command::User(c) => user::run(c, &target).await,
        Command::Key(c) => key::run(c, &target).await,
        Command::Crypto(c) => crypto::run(c, &target).await,
        Command::Node(args) => node::run(&args),
    }
}

fn run(cli: Cli) -> anyhow::Result<Report> {
    let target = credentials::Target {
        cluster: cli.global.cluster,
        user: cli.global.user,
    };
    match cli.command {
        // The node builds its own runtime; init needs none.
        Command::Node(args) => node::run(&args),
        Command::Cluster(cluster::ClusterCommand::Init(args)) => cluster::init(args),
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| output::error("failed", format!("cannot start the runtime: {e}")))?;
            runtime.block_on(manage(command, target))
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() <= 1 {
        // No arguments: show what the binary is, like `--help`.
        let _ = Cli::command().print_long_help();
        return ExitCode::SUCCESS;
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            if e.use_stderr() && wants_json(&args) {
                // clap's message without the usage block and help hint, on one line
                // ("the following required arguments were not provided: --with <USER>").
                let detail = e.render().to_string();
                let message = detail
                    .lines()
                    .take_while(|l| !l.starts_with("Usage:"))
                    .map(|l| l.trim().trim_start_matches("error: "))
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                output::print_json(&output::error_envelope("usage", &message));
            }
            e.exit();
        }
    };
    let format = cli.global.output;
    let default_level = if matches!(cli.command, Command::Node(_)) {
        "info"
    } else {
        "warn"
    };
    init_logging(default_level);
    output::finish(format, run(cli))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Command as ClapCommand;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sealgate").chain(line.split_whitespace()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn every_arg(cmd: &ClapCommand, path: &str, out: &mut Vec<(String, String)>) {
        for arg in cmd.get_arguments() {
            let name = arg.get_long().unwrap_or(arg.get_id().as_str()).to_owned();
            out.push((path.to_owned(), name));
        }
        for sub in cmd.get_subcommands() {
            every_arg(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn no_command_takes_a_password_on_the_command_line() {
        let mut args = Vec::new();
        every_arg(&Cli::command(), "sealgate", &mut args);
        assert!(args.len() > 50, "walked the whole tree: {}", args.len());
        for (path, name) in args {
            let lower = name.to_ascii_lowercase();
            let about_password =
                lower.contains("password") || lower.contains("passwd") || lower == "pin";
            assert!(
                !about_password || lower.ends_with("-file"),
                "`{path}` has a password argument --{name}"
            );
        }
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse("key list --output json --cluster c.toml --user alice").unwrap();
        assert_eq!(cli.global.output, Format::Json);
        assert_eq!(cli.global.cluster, Some(PathBuf::from("c.toml")));
        assert_eq!(cli.global.user.as_deref(), Some("alice"));
        let cli = parse("--output json user list").unwrap();
        assert_eq!(cli.global.output, Format::Json);
    }

    #[test]
    fn keys_are_named_by_handle_or_label_not_both() {
        let cli = parse("crypto sign --handle 0x10 --mechanism ecdsa-sha256 --data hi").unwrap();
        let Command::Crypto(crypto::CryptoCommand::Sign(a)) = cli.command else {
            panic!("sign")
        };
        assert_eq!(a.key.handle, Some(16));
        assert_eq!(a.mechanism.to_string(), "ecdsa-sha256");
        assert_eq!(a.input.data.as_deref(), Some("hi"));
        assert!(parse("crypto sign --label web --mechanism ecdsa-sha256").is_ok());
        assert!(parse("crypto sign --mechanism ecdsa-sha256").is_err());
        assert!(parse("crypto sign --handle 1 --label web --mechanism ecdsa-sha256").is_err());
        assert!(parse("crypto sign --handle 1 --mechanism ecdsa-md5").is_err());
        assert!(
            parse("crypto sign --handle 1 --mechanism ed25519 --data a --data-path f").is_err()
        );
    }

    #[test]
    fn every_documented_command_parses() {
        for line in [
            "node --config node-1.toml",
            "cluster init --dir /tmp/x --nodes 3 --host 127.0.0.1 --base-port 3000",
            "cluster activate --password-file /tmp/x/preco-password",
            "cluster status",
            "user list",
            "user create --name alice --role cu",
            "user delete --name alice",
            "user change-password --name alice",
            "user change-password",
            "user unlock --name alice",
            "key generate rsa --bits 2048 --label web --attr decrypt=true --public-attr encrypt=true",
            "key generate ec --curve secp384r1 --id k1",
            "key generate ed25519",
            "key generate aes --bits 128",
            "key generate generic-secret --bytes 48",
            "key list --filter label=web --filter class=private-key",
            "key show --handle 5",
            "key share --handle 5 --with bob",
            "key unshare --label web --with bob",
            "key set-attribute --handle 5 --attr label=new --attr sign=false",
            "key delete --handle 5",
            "key export --handle 5 --out pub.pem",
            "key wrap --handle 5 --wrapping-key 6 --mechanism aes-zero-pad --out k.bin",
            "key unwrap --wrapping-key 6 --mechanism rsa-aes-sha256 --key-type ec --in k.bin --attr sign=true",
            "key import --pem key.pem --label imported --attr extractable=false",
            "crypto sign --handle 5 --mechanism ecdsa-sha256 --data-path f --format raw --out sig.bin",
            "crypto verify --handle 4 --mechanism ecdsa-sha256 --data x --signature-path sig.bin",
            "crypto verify --handle 4 --mechanism ecdsa-sha256 --data x --signature 3044",
            "crypto encrypt --handle 7 --mechanism aes-gcm --aad hdr --data x --format base64",
            "crypto decrypt --handle 7 --mechanism rsa-oaep-sha256 --data-path c.bin --format raw",
            "crypto digest --hash sha384 --data x",
            "crypto hmac --handle 8 --hash sha512 --data x",
            "crypto random --len 32",
        ] {
            if let Err(e) = parse(line) {
                panic!("{line}: {e}");
            }
        }
        assert!(parse("cluster init --dir d --nodes 0").is_err());
        assert!(parse("cluster init --dir d --nodes 29").is_err());
        assert!(parse("user create --name a --role preco").is_err());
        assert!(parse("crypto random --len 0").is_err());
        assert!(parse("key set-attribute --handle 5").is_err());
        assert!(parse("crypto verify --handle 4 --mechanism ed25519 --data x").is_err());
    }

    #[test]
    fn json_is_seen_in_raw_arguments() {
        let args = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert!(wants_json(&args("sealgate key list --output json")));
        assert!(wants_json(&args("sealgate --output=json key")));
        assert!(!wants_json(&args("sealgate key list --output human")));
    }
}
