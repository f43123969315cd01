//! `outpost users …`: the tenant's users. An invite token is printed only by `invite`, the one
//! answer of the API that carries it.

use reqwest::Method;
use serde_json::{Value, json};

use crate::args::{Global, UsersCommand};
use crate::client::Client;
use crate::config;
use crate::error::CliError;
use crate::output::{self, Cell, Table};

/// Runs a `users` subcommand (but `accept-invite`, which needs no sign-in).
pub async fn run(client: &Client, global: &Global, cmd: UsersCommand) -> Result<(), CliError> {
    match cmd {
        UsersCommand::Ls => {
            let users = client.get("/api/users", &[]).await?;
            if global.json {
                output::print_json(&users);
            } else {
                print_users(&users);
            }
        }
        UsersCommand::Invite { email, role } => {
            let created = client
                .json(
                    Method::POST,
                    "/api/users",
                    &[],
                    Some(&json!({"email": email, "role": role})),
                )
                .await?;
            if global.json {
                output::print_json(&created);
            } else {
                eprintln!(
                    "Invited {} as {} (user {}). The invite token is shown only this once; it works \
                     until {} (`outpost users accept-invite TOKEN`):",
                    output::field(&created["user"], "email"),
                    output::field(&created["user"], "role"),
                    output::field(&created["user"], "id"),
                    output::field(&created, "invite_expires_at"),
                );
                output::print_stdout(
                    format!("{}\n", output::field(&created, "invite_token")).as_bytes(),
                );
            }
        }
        UsersCommand::SetRole { user, role } => {
            patch(
                client,
                global,
                &user,
                json!({"role": role}),
                "Changed the role of",
            )
            .await?;
        }
        UsersCommand::Disable { user } => {
            patch(client, global, &user, json!({"disabled": true}), "Disabled").await?;
        }
        UsersCommand::Enable { user } => {
            patch(client, global, &user, json!({"disabled": false}), "Enabled").await?;
        }
        UsersCommand::Rm { user } => {
            let id = resolve(client, &user).await?;
            client
                .json(Method::DELETE, &format!("/api/users/{id}"), &[], None)
                .await?;
            if global.json {
                output::print_json(&json!({"id": id, "deleted": true}));
            } else {
                eprintln!("Deleted user {id}; their sessions ended");
            }
        }
        UsersCommand::AcceptInvite {
            token,
            password_stdin,
        } => return accept_invite(global, &token, password_stdin).await,
    }
    Ok(())
}

/// `outpost users accept-invite TOKEN`: sets the password; no sign-in needed.
pub async fn accept_invite(
    global: &Global,
    token: &str,
    password_stdin: bool,
) -> Result<(), CliError> {
    let (url, _) = config::resolve(global)?;
    let password = config::read_secret("New password (at least 12 characters)", password_stdin)?;
    let client = Client::new(&url, "")?;
    let user = client
        .anonymous(
            "/api/auth/accept-invite",
            &json!({"token": token, "password": password}),
        )
        .await?;
    if global.json {
        output::print_json(&user);
    } else {
        let email = output::field(&user, "email");
        eprintln!(
            "Password set for {email}; sign in with `outpost login --url {url} --email {email}`"
        );
    }
    Ok(())
}

async fn patch(
    client: &Client,
    global: &Global,
    user: &str,
    body: Value,
    verb: &str,
) -> Result<(), CliError> {
    let id = resolve(client, user).await?;
    let user = client
        .json(Method::PATCH, &format!("/api/users/{id}"), &[], Some(&body))
        .await?;
    if global.json {
        output::print_json(&user);
    } else {
        eprintln!(
            "{verb} {} ({}): role {}, {}; this applies from their next request",
            output::field(&user, "email"),
            output::field(&user, "id"),
            output::field(&user, "role"),
            output::field(&user, "status"),
        );
    }
    Ok(())
}

fn print_users(users: &Value) {
    let mut table = Table::new(vec![
        "ID",
        "EMAIL",
        "ROLE",
        "STATUS",
        "LAST LOGIN",
        "CREATED",
    ]);
    for u in users.as_array().into_iter().flatten() {
        let status = if u.get("invite_pending").and_then(Value::as_bool) == Some(true) {
            "invited".to_owned()
        } else {
            output::field(u, "status")
        };
        table.row(vec![
            output::field(u, "id").into(),
            output::field(u, "email").into(),
            output::field(u, "role").into(),
            Cell::status(&status),
            output::ago(u, "last_login_at").into(),
            output::ago(u, "created_at").into(),
        ]);
    }
    table.print();
}

/// The user id meant by `name`: an id as listed, else the user with that email.
async fn resolve(client: &Client, name: &str) -> Result<String, CliError> {
    let users = client.get("/api/users", &[]).await?;
    let all = users.as_array().map(Vec::as_slice).unwrap_or_default();
    let id_of = |u: &Value| u.get("id").and_then(Value::as_str).map(str::to_owned);
    let by_email = |u: &&Value| {
        u.get("email")
            .and_then(Value::as_str)
            .is_some_and(|e| e.eq_ignore_ascii_case(name.trim()))
    };
    all.iter()
        .filter_map(id_of)
        .find(|id| id == name)
        .or_else(|| all.iter().find(by_email).and_then(id_of))
        .ok_or_else(|| {
            CliError::not_found(format!(
                "no user {name:?} (give a user id or email; see `outpost users ls`)"
            ))
        })
}
