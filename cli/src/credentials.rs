//! Reaching the cluster: which `client.toml` (`--cluster` or `SEALGATE_CLUSTER`), who logs in
//! (`--user` or `SEALGATE_USER`), passwords (`SEALGATE_PASSWORD`, `SEALGATE_NEW_PASSWORD` or a
//! prompt on the terminal; never a command-line argument), and small helpers that send one
//! request and take the reply they expect.

use crate::output::{self, error};
use anyhow::Context as _;
use sealgate_hsm_client::{Client, ClientConfig, Credentials};
use sealgate_hsm_proto::{KeyInfo, Reply, Request, Secret};
use std::path::{Path, PathBuf};

/// The cluster's `client.toml`.
pub(crate) const ENV_CLUSTER: &str = "SEALGATE_CLUSTER";
/// The user to log in as.
pub(crate) const ENV_USER: &str = "SEALGATE_USER";
/// The login password.
pub(crate) const ENV_PASSWORD: &str = "SEALGATE_PASSWORD";
/// A new password (activate, user create, change-password, unlock).
pub(crate) const ENV_NEW_PASSWORD: &str = "SEALGATE_NEW_PASSWORD";

/// Reads an environment variable; empty counts as unset. A function so tests can fake it.
pub(crate) type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Asks for a password on the terminal.
pub(crate) trait Prompt {
    /// Whether there is a terminal to ask on.
    fn available(&self) -> bool;
    /// Asks, without echo.
    fn ask(&self, prompt: &str) -> std::io::Result<String>;
}

/// The controlling terminal (`/dev/tty`), as `rpassword` uses it.
pub(crate) struct Tty;

impl Prompt for Tty {
    fn available(&self) -> bool {
        #[cfg(unix)]
        {
            std::fs::File::open("/dev/tty").is_ok()
        }
        #[cfg(not(unix))]
        {
            use std::io::IsTerminal as _;
            std::io::stdin().is_terminal()
        }
    }

    fn ask(&self, prompt: &str) -> std::io::Result<String> {
        rpassword::prompt_password(prompt)
    }
}

/// The global options that say how to reach the cluster.
#[derive(Debug, Clone, Default)]
pub(crate) struct Target {
    /// `--cluster FILE`.
    pub(crate) cluster: Option<PathBuf>,
    /// `--user NAME`.
    pub(crate) user: Option<String>,
    /// `--approval FILE`.
    pub(crate) approval: Option<PathBuf>,
}

/// `--cluster FILE`, else `SEALGATE_CLUSTER`.
pub(crate) fn cluster_file(flag: Option<&Path>, env: EnvFn<'_>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path.to_owned());
    }
    env(ENV_CLUSTER).map(PathBuf::from).ok_or_else(|| {
        error(
            "config",
            format!(
                "no cluster given: pass --cluster FILE or set {ENV_CLUSTER} to the cluster's \
                 client.toml"
            ),
        )
    })
}

/// `--user NAME`, else `SEALGATE_USER`.
pub(crate) fn login_user(flag: Option<&str>, env: EnvFn<'_>) -> anyhow::Result<String> {
    if let Some(user) = flag {
        return Ok(user.to_owned());
    }
    env(ENV_USER).ok_or_else(|| {
        error(
            "config",
            format!("no user given: pass --user NAME or set {ENV_USER}"),
        )
    })
}

fn no_terminal(what: &str, var: &str) -> anyhow::Error {
    error(
        "config",
        format!("{what} is needed: set {var} (there is no terminal to ask on)"),
    )
}

/// The login password of `user`: `SEALGATE_PASSWORD`, else a prompt.
pub(crate) fn password(user: &str, env: EnvFn<'_>, prompt: &dyn Prompt) -> anyhow::Result<Secret> {
    if let Some(p) = env(ENV_PASSWORD) {
        return Ok(Secret::new(p));
    }
    if !prompt.available() {
        return Err(no_terminal(
            &format!("the password of {user}"),
            ENV_PASSWORD,
        ));
    }
    let p = prompt
        .ask(&format!("Password for {user}: "))
        .context("cannot read the password")?;
    Ok(Secret::new(p))
}

/// A new password for `whom`: `SEALGATE_NEW_PASSWORD`, else a prompt asked twice.
pub(crate) fn new_password(
    whom: &str,
    env: EnvFn<'_>,
    prompt: &dyn Prompt,
) -> anyhow::Result<Secret> {
    if let Some(p) = env(ENV_NEW_PASSWORD) {
        return Ok(Secret::new(p));
    }
    if !prompt.available() {
        return Err(no_terminal(
            &format!("a new password for {whom}"),
            ENV_NEW_PASSWORD,
        ));
    }
    let first = Secret::new(
        prompt
            .ask(&format!("New password for {whom}: "))
            .context("cannot read the password")?,
    );
    let second = Secret::new(
        prompt
            .ask(&format!("Repeat the new password for {whom}: "))
            .context("cannot read the password")?,
    );
    if first != second {
        return Err(output::input("the two passwords differ"));
    }
    Ok(first)
}

/// A password kept in a file (the first line; a trailing newline is not part of it).
pub(crate) fn password_from_file(path: &Path) -> anyhow::Result<Secret> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(output::input(format!("{} is empty", path.display())));
    }
    Ok(Secret::new(line.to_owned()))
}

/// Loads the cluster's `client.toml`.
pub(crate) fn load_config(target: &Target) -> anyhow::Result<ClientConfig> {
    let path = cluster_file(target.cluster.as_deref(), &process_env)?;
    ClientConfig::load(&path).map_err(|e| error("config", e.to_string()))
}

/// Connects with `credentials` (none: health and info only).
pub(crate) async fn connect_as(
    config: ClientConfig,
    credentials: Option<Credentials>,
) -> anyhow::Result<Client> {
    Ok(Client::connect(config, credentials).await?)
}

/// Connects as the user of `--user`/`SEALGATE_USER` with `SEALGATE_PASSWORD` or a prompt
/// (inside `sealgate shell`: the shell's logged-in client). A user with MFA signs each node's
/// challenge through a token file (see [`crate::mfa`]).
pub(crate) async fn connect_user(target: &Target) -> anyhow::Result<Client> {
    if let Ok(client) = SHELL_CLIENT.try_with(Client::clone) {
        return Ok(client);
    }
    let config = load_config(target)?;
    let nodes = config.nodes.len();
    let user = login_user(target.user.as_deref(), &process_env)?;
    let password = password(&user, &process_env, &Tty)?;
    let signer = crate::mfa::FileSigner::new(crate::mfa::token_file(&process_env), nodes);
    connect_as(
        config,
        Some(Credentials::new(user, password).with_mfa(std::sync::Arc::new(signer))),
    )
    .await
}

tokio::task_local! {
    /// The logged-in client of `sealgate shell`, which its commands share (one session per
    /// node for the whole shell: quorum tokens live in it).
    pub(crate) static SHELL_CLIENT: Client;
    /// The approval file of `--approval`, for the one controlled request of the command.
    pub(crate) static APPROVAL: std::sync::Arc<std::sync::Mutex<Option<crate::quorum::TokenFile>>>;
}

/// Ends a command's use of `client`: closes it (logging out), except inside a shell, whose
/// client lives on.
pub(crate) async fn finish(client: Client) {
    if SHELL_CLIENT.try_with(|_| ()).is_err() {
        client.close().await;
    }
}

/// Which node a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum On {
    /// Any node (load-balanced, retried).
    Any,
    /// This node only (session keys are node-local).
    Node(u32),
}

/// Sends one request. A request the `--approval` file's token controls goes with its
/// approvals to the node that issued the token (once per command).
pub(crate) async fn call(client: &Client, on: On, request: Request) -> anyhow::Result<Reply> {
    let approval = APPROVAL
        .try_with(|slot| {
            let mut slot = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match slot.as_ref() {
                Some(file) if file.controls(&request) => slot.take(),
                _ => None,
            }
        })
        .ok()
        .flatten();
    if let Some(file) = approval {
        let node = file.hsm_id;
        let request = Request::Approved {
            approval: file.approval()?,
            request: Box::new(request),
        };
        return Ok(client.call_on(node, request).await?);
    }
    let reply = match on {
        On::Any => client.call(request).await?,
        On::Node(id) => client.call_on(id, request).await?,
    };
    Ok(reply)
}

/// The reply's variant name, for an "unexpected reply" error.
fn reply_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Welcome(_) => "welcome",
        Reply::Health(_) => "health",
        Reply::Info(_) => "info",
        Reply::Done => "done",
        Reply::LoggedIn { .. } => "logged-in",
        Reply::Users(_) => "users",
        Reply::UserCreated { .. } => "user-created",
        Reply::KeysCreated(_) => "keys-created",
        Reply::Keys(_) => "keys",
        Reply::Key(_) => "key",
        Reply::PublicKey { .. } => "public-key",
        Reply::Data(_) => "data",
        Reply::Verified => "verified",
        Reply::Members(_) => "members",
        _ => "unknown",
    }
}

/// The error for a reply of the wrong kind.
pub(crate) fn unexpected(reply: &Reply) -> anyhow::Error {
    error(
        "failed",
        format!("unexpected reply from the node: {}", reply_name(reply)),
    )
}

/// Sends a request answered by [`Reply::Done`].
pub(crate) async fn done(client: &Client, on: On, request: Request) -> anyhow::Result<()> {
    match call(client, on, request).await? {
        Reply::Done => Ok(()),
        other => Err(unexpected(&other)),
    }
}

/// Sends a request answered by [`Reply::Data`].
pub(crate) async fn data(client: &Client, on: On, request: Request) -> anyhow::Result<Vec<u8>> {
    match call(client, on, request).await? {
        Reply::Data(bytes) => Ok(bytes),
        other => Err(unexpected(&other)),
    }
}

/// Sends a request answered by [`Reply::KeysCreated`].
pub(crate) async fn keys_created(
    client: &Client,
    on: On,
    request: Request,
) -> anyhow::Result<Vec<u64>> {
    match call(client, on, request).await? {
        Reply::KeysCreated(handles) => Ok(handles),
        other => Err(unexpected(&other)),
    }
}

/// Sends [`Request::ListKeys`].
pub(crate) async fn list_keys(
    client: &Client,
    filter: Vec<sealgate_hsm_proto::AttributeValue>,
) -> anyhow::Result<Vec<KeyInfo>> {
    match call(client, On::Any, Request::ListKeys { filter }).await? {
        Reply::Keys(keys) => Ok(keys),
        other => Err(unexpected(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned().filter(|v| !v.is_empty())
    }

    struct Fake {
        tty: bool,
        answers: RefCell<Vec<&'static str>>,
    }

    impl Prompt for Fake {
        fn available(&self) -> bool {
            self.tty
        }
        fn ask(&self, _: &str) -> std::io::Result<String> {
            Ok(self.answers.borrow_mut().remove(0).to_owned())
        }
    }

    fn fake(tty: bool, answers: &[&'static str]) -> Fake {
        Fake {
            tty,
            answers: RefCell::new(answers.to_vec()),
        }
    }

    #[test]
    fn cluster_comes_from_the_flag_then_the_environment() {
        let e = env(&[(ENV_CLUSTER, "/env/client.toml")]);
        assert_eq!(
            cluster_file(Some(Path::new("/flag.toml")), &e).unwrap(),
            Path::new("/flag.toml")
        );
        assert_eq!(
            cluster_file(None, &e).unwrap(),
            Path::new("/env/client.toml")
        );
        let err = cluster_file(None, &env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("--cluster") && err.contains(ENV_CLUSTER),
            "{err}"
        );
    }

    #[test]
    fn user_comes_from_the_flag_then_the_environment() {
        let e = env(&[(ENV_USER, "alice")]);
        assert_eq!(login_user(Some("bob"), &e).unwrap(), "bob");
        assert_eq!(login_user(None, &e).unwrap(), "alice");
        let err = login_user(None, &env(&[])).unwrap_err().to_string();
        assert!(err.contains("--user") && err.contains(ENV_USER), "{err}");
    }

    #[test]
    fn passwords_come_from_the_environment_or_a_terminal() {
        let e = env(&[(ENV_PASSWORD, "from-env-1")]);
        let p = password("alice", &e, &fake(false, &[])).unwrap();
        assert_eq!(p.expose(), "from-env-1");
        let p = password("alice", &env(&[]), &fake(true, &["typed-pw"])).unwrap();
        assert_eq!(p.expose(), "typed-pw");
        let err = password("alice", &env(&[]), &fake(false, &[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(ENV_PASSWORD) && err.contains("terminal"),
            "{err}"
        );
    }

    #[test]
    fn new_passwords_are_asked_twice() {
        let p = new_password("bob", &env(&[]), &fake(true, &["same-pw-1", "same-pw-1"])).unwrap();
        assert_eq!(p.expose(), "same-pw-1");
        let err = new_password("bob", &env(&[]), &fake(true, &["one-pw-11", "two-pw-22"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("differ"), "{err}");
        let e = env(&[(ENV_NEW_PASSWORD, "new-env-pw")]);
        assert_eq!(
            new_password("bob", &e, &fake(false, &[])).unwrap().expose(),
            "new-env-pw"
        );
        let err = new_password("bob", &env(&[]), &fake(false, &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(ENV_NEW_PASSWORD), "{err}");
    }

    #[test]
    fn password_files_lose_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("preco-password");
        std::fs::write(&path, "one-time-pw\n").unwrap();
        assert_eq!(password_from_file(&path).unwrap().expose(), "one-time-pw");
        std::fs::write(&path, "").unwrap();
        assert!(password_from_file(&path).is_err());
    }
}
