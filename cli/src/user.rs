//! `sealgate user list|create|delete|change-password|unlock`: user management, as CloudHSM's
//! CLI does it. New passwords come from `SEALGATE_NEW_PASSWORD` or a prompt asked twice.

use crate::credentials::{self, On, Target, Tty, new_password, process_env};
use crate::output::Report;
use clap::{Args, Subcommand};
use sealgate_hsm_client::Client;
use sealgate_hsm_proto::{Reply, Request, Role, UserInfo};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::PathBuf;

/// `sealgate user …`.
#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// List the users.
    ///
    /// JSON data: [{"id", "name", "role": "preco"|"co"|"cu"|"au", "locked", "failed_logins",
    /// "built_in"}].
    List,
    /// Create a crypto officer (co) or crypto user (cu).
    ///
    /// Password: SEALGATE_NEW_PASSWORD, else a prompt asked twice.
    /// JSON data: {"id", "name", "role"}.
    Create(CreateArgs),
    /// Delete a user.
    ///
    /// JSON data: {"name", "deleted": true}.
    Delete(NameArgs),
    /// Change a password: one's own, or (as a crypto officer) another user's.
    ///
    /// Password: SEALGATE_NEW_PASSWORD, else a prompt asked twice.
    /// JSON data: {"name", "changed": true}.
    ChangePassword(OptionalNameArgs),
    /// Unlock a user locked after failed logins: a crypto officer sets a new password.
    ///
    /// Password: SEALGATE_NEW_PASSWORD, else a prompt asked twice.
    /// JSON data: {"name", "unlocked": true}.
    Unlock(NameArgs),
    /// Register your RSA public key (2048 bits or more, PEM) for quorum approvals: the key
    /// your approvals (openssl signatures) are checked with.
    ///
    /// JSON data: {"name", "registered": true}.
    RegisterQuorumKey(PublicKeyArgs),
    /// Turn MFA (token-sign) on with an RSA public key, which is also registered for quorum,
    /// or off (--disable): your own, or (as a crypto officer) another user's.
    ///
    /// With MFA, a login needs, after the password, the signature of each node's challenge:
    /// the command writes them to SEALGATE_MFA_FILE (default sealgate-mfa-token.json) and
    /// waits until each has its "signed" (base64 of `openssl dgst -sha256 -sign KEY.pem`).
    /// JSON data: {"name", "mfa": true|false}.
    ChangeMfa(ChangeMfaArgs),
}

/// A public key file.
#[derive(Debug, Args)]
pub(crate) struct PublicKeyArgs {
    /// The RSA public key (PEM, `openssl rsa -pubout`).
    #[arg(long, value_name = "PEM")]
    pub(crate) public_key: PathBuf,
}

/// `user change-mfa`.
#[derive(Debug, Args)]
pub(crate) struct ChangeMfaArgs {
    /// The user (default: the user logged in).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Turn MFA on with this RSA public key (PEM).
    #[arg(
        long,
        value_name = "PEM",
        conflicts_with = "disable",
        required_unless_present = "disable"
    )]
    pub(crate) public_key: Option<PathBuf>,
    /// Turn MFA off (the registered quorum key goes too).
    #[arg(long)]
    pub(crate) disable: bool,
}

/// The DER of the RSA public key in the PEM file `path`.
fn public_key_der(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::output::input(format!("cannot read {}: {e}", path.display())))?;
    let key = sealgate_hsm_crypto::PublicKey::from_pem(&text).map_err(|e| {
        crate::output::input(format!("{} is not a PEM public key: {e}", path.display()))
    })?;
    Ok(key.to_der().to_vec())
}

/// `user create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The new user's name (1–31 of a-z 0-9 _ -).
    #[arg(long)]
    pub(crate) name: String,
    /// co (crypto officer) or cu (crypto user).
    #[arg(long, value_parser = parse_role)]
    pub(crate) role: Role,
}

/// A user by name.
#[derive(Debug, Args)]
pub(crate) struct NameArgs {
    /// The user's name.
    #[arg(long)]
    pub(crate) name: String,
}

/// A user by name, by default the one logged in.
#[derive(Debug, Args)]
pub(crate) struct OptionalNameArgs {
    /// The user's name (default: the user logged in).
    #[arg(long)]
    pub(crate) name: Option<String>,
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s.parse::<Role>() {
        Ok(r @ (Role::CryptoOfficer | Role::CryptoUser)) => Ok(r),
        _ => Err("expected co (crypto officer) or cu (crypto user)".to_owned()),
    }
}

/// Runs a `user` command.
pub(crate) async fn run(command: UserCommand, target: &Target) -> anyhow::Result<Report> {
    // Ask for the new password before connecting, so a prompt does not hold a connection.
    let new = match &command {
        UserCommand::List
        | UserCommand::Delete(_)
        | UserCommand::RegisterQuorumKey(_)
        | UserCommand::ChangeMfa(_) => None,
        UserCommand::Create(a) => Some(new_password(&a.name, &process_env, &Tty)?),
        UserCommand::ChangePassword(a) => {
            let who = match &a.name {
                Some(n) => n.clone(),
                None => credentials::login_user(target.user.as_deref(), &process_env)?,
            };
            Some(new_password(&who, &process_env, &Tty)?)
        }
        UserCommand::Unlock(a) => Some(new_password(&a.name, &process_env, &Tty)?),
    };
    let client = credentials::connect_user(target).await?;
    let result = run_with(&client, command, new, target).await;
    credentials::finish(client).await;
    result
}

async fn run_with(
    client: &Client,
    command: UserCommand,
    new: Option<sealgate_hsm_proto::Secret>,
    target: &Target,
) -> anyhow::Result<Report> {
    let password = || {
        new.clone()
            .ok_or_else(|| crate::output::error("failed", "no new password"))
    };
    match command {
        UserCommand::List => match credentials::call(client, On::Any, Request::ListUsers).await? {
            Reply::Users(users) => Ok(list_report(&users)),
            other => Err(credentials::unexpected(&other)),
        },
        UserCommand::Create(a) => {
            let request = Request::CreateUser {
                name: a.name.clone(),
                role: a.role,
                password: password()?,
            };
            match credentials::call(client, On::Any, request).await? {
                Reply::UserCreated { id } => Ok(Report::new(
                    json!({"id": id, "name": a.name, "role": a.role.as_str()}),
                    format!("created {} {} (id {id})", role_word(a.role), a.name),
                )),
                other => Err(credentials::unexpected(&other)),
            }
        }
        UserCommand::Delete(a) => {
            credentials::done(
                client,
                On::Any,
                Request::DeleteUser {
                    name: a.name.clone(),
                },
            )
            .await?;
            Ok(Report::new(
                json!({"name": a.name, "deleted": true}),
                format!("deleted user {}", a.name),
            ))
        }
        UserCommand::ChangePassword(a) => {
            let name = match a.name {
                Some(n) => n,
                None => credentials::login_user(target.user.as_deref(), &process_env)?,
            };
            let request = Request::ChangePassword {
                name: name.clone(),
                new_password: password()?,
            };
            credentials::done(client, On::Any, request).await?;
            Ok(Report::new(
                json!({"name": name, "changed": true}),
                format!("changed the password of {name}"),
            ))
        }
        UserCommand::Unlock(a) => {
            let request = Request::ChangePassword {
                name: a.name.clone(),
                new_password: password()?,
            };
            credentials::done(client, On::Any, request).await?;
            Ok(Report::new(
                json!({"name": a.name, "unlocked": true}),
                format!("unlocked {} with a new password", a.name),
            ))
        }
        UserCommand::RegisterQuorumKey(a) => {
            let request = Request::RegisterQuorumKey {
                public_key: public_key_der(&a.public_key)?,
            };
            credentials::done(client, On::Any, request).await?;
            let who = credentials::login_user(target.user.as_deref(), &process_env)?;
            Ok(Report::new(
                json!({"name": who, "registered": true}),
                format!("registered the quorum key of {who}"),
            ))
        }
        UserCommand::ChangeMfa(a) => {
            let who = match &a.name {
                Some(n) => n.clone(),
                None => credentials::login_user(target.user.as_deref(), &process_env)?,
            };
            let public_key = match &a.public_key {
                Some(path) => Some(public_key_der(path)?),
                None => None,
            };
            let on = public_key.is_some();
            let request = Request::ChangeMfa {
                name: who.clone(),
                public_key,
            };
            credentials::done(client, On::Any, request).await?;
            Ok(Report::new(
                json!({"name": who, "mfa": on}),
                format!("MFA {} for {who}", if on { "on" } else { "off" }),
            ))
        }
    }
}

fn role_word(role: Role) -> &'static str {
    match role {
        Role::PreCryptoOfficer => "pre-crypto-officer",
        Role::CryptoOfficer => "crypto officer",
        Role::CryptoUser => "crypto user",
        Role::ApplianceUser => "appliance user",
    }
}

fn user_json(u: &UserInfo) -> Value {
    json!({
        "id": u.id,
        "name": u.name,
        "role": u.role.as_str(),
        "locked": u.locked,
        "failed_logins": u.failed_logins,
        "built_in": u.built_in,
    })
}

/// The report of `user list`.
fn list_report(users: &[UserInfo]) -> Report {
    let mut text = format!("{:<5} {:<32} {:<6} {}\n", "ID", "NAME", "ROLE", "STATE");
    for u in users {
        let state = if u.locked {
            "locked".to_owned()
        } else if u.failed_logins > 0 {
            format!("{} failed logins", u.failed_logins)
        } else if u.built_in {
            "built-in".to_owned()
        } else {
            "-".to_owned()
        };
        let _ = writeln!(
            text,
            "{:<5} {:<32} {:<6} {state}",
            u.id,
            u.name,
            u.role.as_str()
        );
    }
    Report::new(Value::Array(users.iter().map(user_json).collect()), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_co_or_cu() {
        assert_eq!(parse_role("co"), Ok(Role::CryptoOfficer));
        assert_eq!(parse_role("CU"), Ok(Role::CryptoUser));
        assert!(parse_role("preco").is_err());
        assert!(parse_role("au").is_err());
    }

    #[test]
    fn user_list_has_a_stable_shape() {
        let users = [UserInfo {
            id: 3,
            name: "alice".into(),
            role: Role::CryptoUser,
            locked: true,
            failed_logins: 5,
            built_in: false,
        }];
        let r = list_report(&users);
        assert_eq!(
            r.data()[0],
            json!({"id": 3, "name": "alice", "role": "cu", "locked": true,
                   "failed_logins": 5, "built_in": false})
        );
        assert!(r.text().contains("alice") && r.text().contains("locked"));
    }
}
