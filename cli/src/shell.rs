//! `sealgate shell`: one login, then management commands read from standard input, one per
//! line, in the same session (CloudHSM CLI's interactive mode). Quorum tokens live in their
//! session, so asking for a token, collecting approvals and running the controlled command
//! happen here:
//!
//! ```text
//! quorum token generate --service user --out t.json
//! # approvers sign; `quorum token approve` adds their signatures to t.json
//! user create --name bob --role cu --approval t.json
//! ```
//!
//! A line is split like a shell would (quotes, escapes) and parsed as the arguments of
//! `sealgate`; `#` starts a comment, `exit` or the end of input ends the shell (logging out).
//! Each command prints what it would print on its own (`--output json`: one object per line).

use crate::credentials::{self, Target};
use crate::output::{self, Format, Report};
use crate::{Cli, Command};
use clap::Parser as _;
use std::io::{BufRead, Write as _};

/// Commands that do not run inside a shell.
fn refused(command: &Command) -> Option<&'static str> {
    match command {
        Command::Serve(_) => Some("serve"),
        Command::Node(_) => Some("node"),
        Command::Config(_) => Some("config"),
        Command::Audit(_) => Some("audit"),
        Command::Shell => Some("shell"),
        Command::Cluster(crate::cluster::ClusterCommand::Init(_)) => Some("cluster init"),
        _ => None,
    }
}

/// Runs the shell: logs in as the target's user, then runs each line of standard input.
/// Succeeds if every command did.
pub(crate) fn run(target: &Target, format: Format) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| output::error("failed", format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let client = credentials::connect_user(target).await?;
        let failed = credentials::SHELL_CLIENT
            .scope(client.clone(), lines(target, format))
            .await;
        client.close().await;
        if failed == 0 {
            Ok(Report::human_only("shell: every command succeeded"))
        } else {
            Err(output::error(
                "failed",
                format!("shell: {failed} command(s) failed"),
            ))
        }
    })
}

/// Runs every line of standard input; returns how many commands failed.
async fn lines(target: &Target, format: Format) -> usize {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    // Standard input is read on its own thread: reads block.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let mut failed = 0;
    while let Some(line) = rx.recv().await {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if matches!(line, "exit" | "quit") {
            break;
        }
        if !one(line, target, format).await {
            failed += 1;
        }
        let _ = std::io::stdout().flush();
    }
    failed
}

/// Runs one line; whether it succeeded.
async fn one(line: &str, target: &Target, format: Format) -> bool {
    let Some(words) = shlex::split(line) else {
        return report(format, Err(output::usage("unbalanced quotes in the line")));
    };
    let cli = match Cli::try_parse_from(std::iter::once("sealgate".to_owned()).chain(words)) {
        Ok(cli) => cli,
        Err(e) => {
            return report(format, Err(output::usage(crate::clap_line(&e))));
        }
    };
    let format = if cli.global.output == Format::Json {
        Format::Json
    } else {
        format
    };
    if let Some(name) = refused(&cli.command) {
        return report(
            format,
            Err(output::usage(format!(
                "`{name}` does not run inside a shell"
            ))),
        );
    }
    let line_target = Target {
        cluster: target.cluster.clone(),
        user: target.user.clone(),
        approval: cli.global.approval,
    };
    report(format, crate::manage(cli.command, line_target).await)
}

fn report(format: Format, result: anyhow::Result<Report>) -> bool {
    let ok = result.is_ok();
    let _ = output::finish(format, result);
    ok
}
