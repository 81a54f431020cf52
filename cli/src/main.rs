//! `sealgate`: the one binary. It parses the command line and wires the libraries together:
//! `serve` runs the proxy (`sealgate-proxy`, configured by `sealgate-config`) with its HSM
//! cluster remote or embedded (child processes), `node` runs an HSM node (`sealgate-hsm-node`),
//! `cluster`, `user`, `key` and `crypto` manage a cluster through the client SDK
//! (`sealgate-hsm-client`). Logic that belongs in a library
//! stays there; each command group is one module.
//!
//! Environment: `SEALGATE_CLUSTER` (client.toml), `SEALGATE_USER`, `SEALGATE_PASSWORD`,
//! `SEALGATE_NEW_PASSWORD`, `SEALGATE_LOG` (tracing filter; default `info` for `node`, `warn`
//! otherwise). Passwords are never taken from the command line.
#![forbid(unsafe_code)]

/// jemalloc for serve and the nodes: both run many threads (runtime workers, a thread per
/// handshake waiting for its signature, crypto threads), where glibc's malloc spent 11 % of
/// serve's CPU in full handshakes (`malloc_consolidate`, arena locks). Measured side by side
/// (BENCHMARKS.md, "Allocator"): serve with glibc took 1.06–1.16× the CPU per ECDSA handshake
/// and 1.12× per keep-alive request of serve with jemalloc; mimalloc did worse than glibc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod audit;
mod cert;
mod cluster;
mod config;
mod credentials;
mod crypto;
mod embedded;
mod key;
mod mfa;
mod node;
mod output;
mod quorum;
mod serve;
mod shell;
mod user;

use clap::{Args, CommandFactory, Parser, Subcommand};
use output::{Format, Report};
use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// sealgate: a TLS-terminating reverse proxy whose private keys live in a clustered software HSM.
///
/// Management commands reach a cluster through --cluster FILE (its client.toml) or
/// SEALGATE_CLUSTER, and log in as --user NAME or SEALGATE_USER with the password in
/// SEALGATE_PASSWORD or typed at a prompt. New passwords come from SEALGATE_NEW_PASSWORD or a
/// prompt. `--output json` prints exactly one JSON object:
/// {"ok": true, "data": …, "error": null} or {"ok": false, "data": null, "error": {"kind",
/// "message"}} (`node` only for startup errors: see `sealgate node --help`). Error kind
/// "interrupted": a write was cut off and may or may not have been applied; check before
/// repeating it. Errors and warnings go to stderr as one line each. Exit code 0 on success,
/// 1 on failure, 2 on a usage error (`audit`: 1 when a file fails a check, 2 when it cannot be
/// checked).
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
    /// A quorum approval file (`sealgate quorum token generate`, signed by approvers) for the
    /// command's quorum-controlled request; see `sealgate quorum --help`.
    #[arg(long, global = true, value_name = "FILE")]
    approval: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the TLS-terminating proxy until SIGTERM or SIGINT; `serve --dev` needs no input.
    ///
    /// Handshake signatures are made by the HSM cluster: remote (a client.toml) or embedded
    /// (the cluster's nodes run as child processes of serve, restarted if they exit). Prints
    /// where it listens on stdout. Logs go to stderr (SEALGATE_LOG, default info).
    Serve(serve::ServeArgs),
    /// Check a configuration file for `serve` without starting anything.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Make a self-signed certificate or a signing request for an HSM key.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Run one HSM node until SIGTERM or SIGINT.
    ///
    /// Once it listens, the node prints `sealgate node ID listening on ADDRESS` on stdout, as
    /// text whatever --output says: that line is its lifetime output, the one supervisors wait
    /// for. `node` ignores --output json for it and prints JSON only for a startup error
    /// ({"ok": false, …}: unusable configuration, store, certificates or address); a clean stop
    /// adds nothing to stdout in JSON (people get `sealgate node ID stopped`). Logs go to
    /// stderr (SEALGATE_LOG, default info).
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
    /// Check a node's audit file, show its last records, fetch a node's audit key.
    ///
    /// Exit codes: 0 checked out, 1 the file failed a check, 2 it could not be checked.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Quorum (M of N) approvals: tokens, approval files, the admin services' values.
    ///
    /// A token lives in the session that asked for it: ask for it, collect the approvals and
    /// run the controlled command (with --approval FILE) in one `sealgate shell`.
    #[command(subcommand)]
    Quorum(quorum::QuorumCommand),
    /// Log in once and run management commands from standard input, one per line, in one
    /// session (as CloudHSM CLI's interactive mode); `exit` or the end of input logs out.
    Shell,
}

/// Whether the raw arguments ask for JSON (for errors clap reports before parsing finishes).
/// Arguments need not be UTF-8: they are compared lossily.
fn wants_json(args: &[OsString]) -> bool {
    let is = |a: &OsString, s: &str| a.to_string_lossy() == s;
    args.iter().any(|a| is(a, "--output=json"))
        || args
            .windows(2)
            .any(|w| matches!(w, [flag, value] if is(flag, "--output") && is(value, "json")))
}

/// The usage lines of clap's rendered error (empty if it has none), joined with " | ".
fn clap_usage(detail: &str) -> String {
    detail
        .lines()
        .skip_while(|l| !l.starts_with("Usage:"))
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("Usage:").trim())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// For a command group called without its command (`sealgate key`): which commands it has.
/// clap would print the whole help there.
fn missing_command(usage: &str) -> Option<String> {
    let path: Vec<&str> = usage
        .split_whitespace()
        .take_while(|w| !w.starts_with(['[', '<']))
        .collect();
    let mut cmd = Cli::command();
    for word in path.iter().skip(1) {
        cmd = cmd.find_subcommand(word)?.clone();
    }
    let names: Vec<&str> = cmd
        .get_subcommands()
        .map(clap::Command::get_name)
        .filter(|n| *n != "help")
        .collect();
    (!names.is_empty())
        .then(|| format!("`{}` needs a command: {}", path.join(" "), names.join(", ")))
}

/// clap's error on one line, without its usage block and help hint ("the following required
/// arguments were not provided: --with <USER>").
fn clap_message(e: &clap::Error) -> String {
    let detail = e.render().to_string();
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        && let Some(message) = missing_command(&clap_usage(&detail))
    {
        return message;
    }
    let message = detail
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(|l| l.trim().trim_start_matches("error: "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    output::single_line(&message)
}

/// clap's error for people, on one line: the message, the usage if clap gave one, and where
/// to read more.
fn clap_line(e: &clap::Error) -> String {
    let usage = clap_usage(&e.render().to_string());
    let message = clap_message(e);
    if usage.is_empty() {
        format!("{message} (see --help)")
    } else {
        output::single_line(&format!("{message} (usage: {usage}; see --help)"))
    }
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

/// Runs a management command; with `--approval FILE`, the command's quorum-controlled
/// request carries the file's approvals (and a command that sends none is refused).
async fn manage(command: Command, target: credentials::Target) -> anyhow::Result<Report> {
    let Some(path) = target.approval.clone() else {
        return dispatch(command, target).await;
    };
    let file = quorum::TokenFile::load(&path)?;
    let service = file.service.clone();
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(file)));
    let result = credentials::APPROVAL
        .scope(std::sync::Arc::clone(&slot), dispatch(command, target))
        .await;
    let unused = slot.lock().map(|s| s.is_some()).unwrap_or(false);
    if result.is_ok() && unused {
        return Err(output::usage(format!(
            "the approval in {} was not used: this command sends no request that the {service} \
             service controls",
            path.display()
        )));
    }
    result
}

async fn dispatch(command: Command, target: credentials::Target) -> anyhow::Result<Report> {
    match command {
        Command::Quorum(c) => quorum::run(c, &target).await,
        Command::Cluster(c) => cluster::run(c, &target).await,
        Command::User(c) => user::run(c, &target).await,
        Command::Key(c) => key::run(c, &target).await,
        Command::Crypto(c) => crypto::run(c, &target).await,
        Command::Cert(c) => cert::run(c, &target).await,
        // Dispatched in `run`, with their own runtimes.
        Command::Node(_)
        | Command::Serve(_)
        | Command::Config(_)
        | Command::Audit(_)
        | Command::Shell => Err(output::error(
            "failed",
            "node, serve, config, audit and shell do not run inside a management runtime",
        )),
    }
}

fn run(cli: Cli) -> anyhow::Result<Report> {
    let format = cli.global.output;
    let target = credentials::Target {
        cluster: cli.global.cluster,
        user: cli.global.user,
        approval: cli.global.approval,
    };
    match cli.command {
        // The node and serve build their own runtimes; init needs none.
        Command::Node(args) => node::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Config(c) => config::run(&c),
        Command::Cluster(cluster::ClusterCommand::Init(args)) => cluster::init(args),
        Command::Shell => shell::run(&target, format),
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

/// Parses the arguments (which need not be UTF-8: clap refuses a non-UTF-8 value where text
/// is expected with a usage error, and takes it as it is for file names). An error is printed
/// as one line on stderr (and as JSON with `--output json`); help and version go to stdout.
fn parse_args(args: &[OsString]) -> Result<Cli, ExitCode> {
    Cli::try_parse_from(args).map_err(|e| {
        if !e.use_stderr() {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        if wants_json(args) {
            output::print_json(&output::error_envelope("usage", &clap_message(&e)));
        }
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "error: {}", clap_line(&e));
        ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
    })
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.len() <= 1 {
        // No arguments: show what the binary is, like `--help`.
        let _ = Cli::command().print_long_help();
        return ExitCode::SUCCESS;
    }
    let cli = match parse_args(&args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let format = cli.global.output;
    // `serve` and `node` set their log up from their configuration ([logging]) once read
    // (default `info,openraft=error`); the management commands log warnings to stderr.
    if !matches!(cli.command, Command::Serve(_) | Command::Node(_)) {
        init_logging("warn");
    }
    if let Command::Audit(command) = cli.command {
        if cli.global.approval.is_some() {
            return output::finish(
                format,
                Err(output::usage("audit commands take no --approval")),
            );
        }
        // Its own exit codes: 1 when a file fails a check, 2 when it cannot be checked.
        let target = credentials::Target {
            cluster: cli.global.cluster,
            user: cli.global.user,
            approval: cli.global.approval,
        };
        return audit::main(command, format, &target);
    }
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
            "cluster add-node",
            "cluster add-node --dir /tmp/x --id 5 --host 127.0.0.1 --port 3000",
            "cluster remove-node --id 4",
            "cert self-sign --label web --name localhost --name 127.0.0.1 --days 30 --out c.pem",
            "cert csr --handle 7 --name example.com",
            "config check --config sealgate.toml",
            "serve --dev",
            "serve --config sealgate.toml",
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
        assert!(parse("cluster remove-node").is_err());
        assert!(parse("cluster remove-node --id 0").is_err());
        assert!(parse("cluster add-node --port 0").is_err());
        assert!(parse("user create --name a --role preco").is_err());
        assert!(parse("crypto random --len 0").is_err());
        assert!(parse("key set-attribute --handle 5").is_err());
        assert!(parse("crypto verify --handle 4 --mechanism ed25519 --data x").is_err());
    }

    fn os_args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn json_is_seen_in_raw_arguments() {
        assert!(wants_json(&os_args("sealgate key list --output json")));
        assert!(wants_json(&os_args("sealgate --output=json key")));
        assert!(!wants_json(&os_args("sealgate key list --output human")));
        assert!(!wants_json(&os_args("sealgate key list --output")));
    }

    #[cfg(unix)]
    fn not_utf8() -> OsString {
        use std::os::unix::ffi::OsStringExt as _;
        OsString::from_vec(vec![b'w', 0xff, b'b'])
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_arguments_are_usage_errors_not_panics() {
        // Where text is expected (a label, a subcommand), clap refuses it.
        let mut args = os_args("sealgate --output json key show --label");
        args.push(not_utf8());
        assert!(wants_json(&args));
        let e = Cli::try_parse_from(&args).unwrap_err();
        assert!(e.use_stderr());
        assert_eq!(e.exit_code(), 2);
        let line = clap_line(&e);
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(!clap_message(&e).is_empty());

        let mut args = os_args("sealgate");
        args.push(not_utf8());
        assert!(Cli::try_parse_from(&args).is_err());
        assert!(!wants_json(&args));

        // A file name is taken as it is.
        let mut args = os_args("sealgate node --config");
        args.push(not_utf8());
        let cli = Cli::try_parse_from(&args).unwrap();
        let Command::Node(node) = cli.command else {
            panic!("node")
        };
        assert_eq!(node.config.as_os_str(), not_utf8().as_os_str());
    }

    #[test]
    fn usage_errors_are_one_line() {
        for line in [
            "sealgate frobnicate",
            "sealgate key share --handle 1",
            "sealgate crypto sign --handle x --mechanism ed25519",
            "sealgate key --hndle 1",
            "sealgate cluster",
        ] {
            let e = Cli::try_parse_from(os_args(line)).unwrap_err();
            let text = clap_line(&e);
            assert_eq!(text.lines().count(), 1, "{line}: {text}");
            assert!(text.contains("--help"), "{line}: {text}");
            assert!(!clap_message(&e).contains("Usage"), "{line}");
        }
        let e = Cli::try_parse_from(os_args("sealgate key generate")).unwrap_err();
        assert_eq!(
            clap_message(&e),
            "`sealgate key generate` needs a command: rsa, ec, ed25519, aes, generic-secret"
        );
        let e = Cli::try_parse_from(os_args("sealgate key share --handle 1")).unwrap_err();
        let text = clap_line(&e);
        assert!(
            text.contains("--with <USER>") && text.contains("usage: sealgate key share"),
            "{text}"
        );
    }
}
