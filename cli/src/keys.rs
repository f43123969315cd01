//! `outpost keys agent …`: the keys agents connect with, and `outpost keys api …`: programs'
//! API keys. A secret is printed only by `create` (and an agent key's `regenerate`), the
//! answers of the API that carry it.

use reqwest::Method;
use serde_json::{Value, json};

use crate::args::{AgentKeysCommand, ApiKeysCommand, Global, KeysCommand};
use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, Cell, Table};

/// Runs a `keys` subcommand.
pub async fn run(client: &Client, global: &Global, cmd: KeysCommand) -> Result<(), CliError> {
    let cmd = match cmd {
        KeysCommand::Agent(cmd) => cmd,
        KeysCommand::Api(cmd) => return api(client, global, cmd).await,
    };
    match cmd {
        AgentKeysCommand::Create {
            name,
            permissions,
            tags,
            expires_at,
        } => {
            let mut body = json!({"name": name});
            if !permissions.is_empty() {
                body["permissions"] = json!(permissions);
            }
            if !tags.is_empty() {
                body["tags"] = json!(tags);
            }
            if let Some(at) = expires_at {
                body["expires_at"] = json!(rfc3339(&at)?);
            }
            let key = client
                .json(Method::POST, "/api/agents/keys", &[], Some(&body))
                .await?;
            print_secret(global, &key, "Created");
        }
        AgentKeysCommand::Ls => {
            let keys = client.get("/api/agents/keys", &[]).await?;
            if global.json {
                output::print_json(&keys);
            } else {
                print_keys(&keys);
            }
        }
        AgentKeysCommand::Disable { key } => set_status(client, global, &key, "disabled").await?,
        AgentKeysCommand::Enable { key } => set_status(client, global, &key, "active").await?,
        AgentKeysCommand::Rm { key } => {
            let id = resolve(client, &key).await?;
            client
                .json(Method::DELETE, &format!("/api/agents/keys/{id}"), &[], None)
                .await?;
            if global.json {
                output::print_json(&json!({"id": id, "deleted": true}));
            } else {
                eprintln!("Deleted agent key {id}; agents connected with it were disconnected");
            }
        }
        AgentKeysCommand::Regenerate { key } => {
            let id = resolve(client, &key).await?;
            let key = client
                .json(
                    Method::POST,
                    &format!("/api/agents/keys/{id}/regenerate"),
                    &[],
                    None,
                )
                .await?;
            print_secret(global, &key, "Regenerated");
        }
    }
    Ok(())
}

fn rfc3339(at: &str) -> Result<String, CliError> {
    chrono::DateTime::parse_from_rfc3339(at)
        .map(|t| t.to_rfc3339())
        .map_err(|e| {
            CliError::Usage(format!(
                "--expires-at: {at:?} is not an RFC 3339 time such as 2027-01-01T00:00:00Z ({e})"
            ))
        })
}

/// `outpost keys api …`.
async fn api(client: &Client, global: &Global, cmd: ApiKeysCommand) -> Result<(), CliError> {
    match cmd {
        ApiKeysCommand::Create {
            name,
            scopes,
            expires_at,
        } => {
            let mut body = json!({"name": name, "scopes": scopes});
            if let Some(at) = expires_at {
                body["expires_at"] = json!(rfc3339(&at)?);
            }
            let key = client
                .json(Method::POST, "/api/keys", &[], Some(&body))
                .await?;
            if global.json {
                output::print_json(&key);
                return Ok(());
            }
            eprintln!(
                "Created API key {} ({}); scopes {}; expires {}",
                output::field(&key, "id"),
                output::field(&key, "name"),
                output::list(&key, "scopes"),
                output::field(&key, "expires_at"),
            );
            eprintln!(
                "The secret is shown only this once; store it now (programs send it as \
                 `Authorization: Bearer …`, the CLI reads it from OUTPOST_TOKEN):"
            );
            output::print_stdout(format!("{}\n", output::field(&key, "secret")).as_bytes());
        }
        ApiKeysCommand::Ls => {
            let keys = client.get("/api/keys", &[]).await?;
            if global.json {
                output::print_json(&keys);
                return Ok(());
            }
            let mut table = Table::new(vec!["ID", "NAME", "SCOPES", "OWNER", "CREATED", "EXPIRES"]);
            for k in keys.as_array().into_iter().flatten() {
                table.row(vec![
                    output::field(k, "id").into(),
                    output::field(k, "name").into(),
                    output::list(k, "scopes").into(),
                    output::field(k, "owner_user_id").into(),
                    output::ago(k, "created_at").into(),
                    output::ago(k, "expires_at").into(),
                ]);
            }
            table.print();
        }
        ApiKeysCommand::Rm { key } => {
            let keys = client.get("/api/keys", &[]).await?;
            let id = pick(&keys, &key, "API key", "outpost keys api ls")?;
            client
                .json(Method::DELETE, &format!("/api/keys/{id}"), &[], None)
                .await?;
            if global.json {
                output::print_json(&json!({"id": id, "deleted": true}));
            } else {
                eprintln!("Revoked API key {id}; it stops working at once");
            }
        }
    }
    Ok(())
}

fn print_secret(global: &Global, key: &Value, verb: &str) {
    if global.json {
        output::print_json(key);
        return;
    }
    // The secret alone on stdout, so `$(outpost keys agent create …)` captures just it; the
    // explanation goes to stderr.
    eprintln!(
        "{verb} agent key {} ({}); permissions {}; tags {}",
        output::field(key, "id"),
        output::field(key, "name"),
        output::list(key, "permissions"),
        output::list(key, "tags"),
    );
    eprintln!(
        "The secret is shown only this once; store it now (agents use it as OUTPOST_API_KEY):"
    );
    output::print_stdout(format!("{}\n", output::field(key, "secret")).as_bytes());
}

async fn set_status(
    client: &Client,
    global: &Global,
    key: &str,
    status: &str,
) -> Result<(), CliError> {
    let id = resolve(client, key).await?;
    let key = client
        .json(
            Method::PATCH,
            &format!("/api/agents/keys/{id}"),
            &[],
            Some(&json!({"status": status})),
        )
        .await?;
    if global.json {
        output::print_json(&key);
    } else if status == "disabled" {
        eprintln!(
            "Disabled agent key {id}; agents connected with it were disconnected. They keep asking \
             (every 5-15 s, after 10 minutes every 30-90 s) and come back after `outpost keys agent enable`"
        );
    } else {
        // The agents cannot be told: they find out at their next attempt (agent back-off after
        // `key_disabled`, docs/PROTOCOL.md).
        eprintln!(
            "Enabled agent key {id}; its agents reconnect at their next attempt: within 15 s, or \
             within 90 s if the key was disabled for more than 10 minutes"
        );
    }
    Ok(())
}

fn print_keys(keys: &Value) {
    let mut table = Table::new(vec![
        "ID",
        "NAME",
        "STATUS",
        "CONNECTED",
        "PERMISSIONS",
        "TAGS",
        "LAST USED",
        "EXPIRES",
    ]);
    for k in keys.as_array().into_iter().flatten() {
        table.row(vec![
            output::field(k, "id").into(),
            output::field(k, "name").into(),
            Cell::status(&output::field(k, "status")),
            output::field(k, "connected_agents").into(),
            output::list(k, "permissions").into(),
            output::list(k, "tags").into(),
            output::ago(k, "last_used_at").into(),
            output::ago(k, "expires_at").into(),
        ]);
    }
    table.print();
}

/// The agent key id meant by `name`: an id as listed, else the one key with that name.
async fn resolve(client: &Client, name: &str) -> Result<String, CliError> {
    let keys = client.get("/api/agents/keys", &[]).await?;
    pick(&keys, name, "agent key", "outpost keys agent ls")
}

/// The id in `keys` meant by `name`: an id as listed, else the one key with that name.
fn pick(keys: &Value, name: &str, what: &str, ls: &str) -> Result<String, CliError> {
    let all = keys.as_array().map(Vec::as_slice).unwrap_or_default();
    let id_of = |k: &Value| k.get("id").and_then(Value::as_str).map(str::to_owned);
    if let Some(id) = all.iter().filter_map(id_of).find(|id| id == name) {
        return Ok(id);
    }
    let named: Vec<String> = all
        .iter()
        .filter(|k| k.get("name").and_then(Value::as_str) == Some(name))
        .filter_map(id_of)
        .collect();
    match named.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(CliError::not_found(format!(
            "no {what} {name:?} (give a key id or name; see `{ls}`)"
        ))),
        many => Err(CliError::Usage(format!(
            "{} {what}s are named {name:?} ({}); give a key id",
            many.len(),
            many.join(", ")
        ))),
    }
}
