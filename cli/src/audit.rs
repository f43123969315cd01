//! `outpost audit ls|verify`: the tenant's audit log and the check of its hash chain.

use chrono::Utc;
use serde_json::Value;

use crate::args::{AuditCommand, AuditLsArgs, Global};
use crate::client::Client;
use crate::error::{CliError, exit};
use crate::jobs::parse_time;
use crate::output::{self, Table};

/// Runs an `audit` subcommand; the exit status is 1 when `verify` finds the chain broken.
pub async fn run(client: &Client, global: &Global, cmd: AuditCommand) -> Result<u8, CliError> {
    match cmd {
        AuditCommand::Ls(args) => list(client, global, args).await.map(|()| 0),
        AuditCommand::Verify => verify(client, global).await,
    }
}

async fn list(client: &Client, global: &Global, args: AuditLsArgs) -> Result<(), CliError> {
    let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    for (name, value) in [
        ("actor", &args.actor),
        ("action", &args.action),
        ("cursor", &args.cursor),
    ] {
        if let Some(v) = value {
            query.push((name, v.clone()));
        }
    }
    for (name, value) in [("since", &args.since), ("until", &args.until)] {
        if let Some(v) = value {
            query.push((name, parse_time(name, v, Utc::now())?.to_rfc3339()));
        }
    }
    let page = client.get("/api/audit", &query).await?;
    if global.json {
        output::print_json(&page);
        return Ok(());
    }
    let mut table = Table::new(vec!["ID", "WHEN", "ACTOR", "ADDRESS", "ACTION", "TARGET"]);
    for row in page
        .get("entries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let actor = row.get("actor").cloned().unwrap_or(Value::Null);
        let target = row.get("target").cloned().unwrap_or(Value::Null);
        table.row(vec![
            output::field(row, "id").into(),
            output::ago(row, "at").into(),
            format!(
                "{} {}",
                output::field(&actor, "kind"),
                output::field(&actor, "label")
            )
            .into(),
            output::field(row, "address").into(),
            output::field(row, "action").into(),
            format!(
                "{} {}",
                output::field(&target, "type"),
                output::field(&target, "id")
            )
            .into(),
        ]);
    }
    table.print();
    if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
        eprintln!("More rows: add --cursor {cursor}");
    }
    Ok(())
}

async fn verify(client: &Client, global: &Global) -> Result<u8, CliError> {
    let check = client.get("/api/audit/verify", &[]).await?;
    let ok = check.get("ok").and_then(Value::as_bool) == Some(true);
    if global.json {
        output::print_json(&check);
    } else if ok {
        println!(
            "ok: {} rows chain; the last is row {}, hash {}",
            output::field(&check, "count"),
            output::field(&check, "head_id"),
            output::field(&check, "head_hash"),
        );
    } else {
        let broken = check.get("first_broken").cloned().unwrap_or(Value::Null);
        println!(
            "BROKEN at row {}: {} ({} rows before it chain)",
            output::field(&broken, "id"),
            output::field(&broken, "reason"),
            output::field(&check, "count"),
        );
    }
    Ok(if ok { 0 } else { exit::FAILURE })
}
