//! `outpost integrations …`: where a tenant's events are sent (CONTRACT.md §11).
//!
//! The server validates and stores everything; the CLI shapes the config from flags named
//! after each provider's own words (`--routing-key`, `--api-key`, `--hec-token`; `--endpoint` for the provider's URL, since
//! `--url` and `--token` are the global flags naming the Outpost server and its credential), so nobody has to
//! write JSON for the common cases, and `--config` takes JSON for the rest. An integration is
//! named by its id or its name, as schedules are.

use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::args::{Global, IntegrationCreateArgs, IntegrationsCommand};
use crate::client::Client;
use crate::error::{CliError, exit};
use crate::jobs;
use crate::output::{self, Cell, Table};

/// Runs an `integrations` subcommand; `test` exits 1 when the provider refused.
pub async fn run(
    client: &Client,
    global: &Global,
    cmd: IntegrationsCommand,
) -> Result<u8, CliError> {
    match cmd {
        IntegrationsCommand::Ls => list(client, global).await?,
        IntegrationsCommand::Show { integration } => {
            let row = resolve(client, &integration).await?;
            if global.json {
                output::print_json(&row);
            } else {
                print_integration(&row);
            }
        }
        IntegrationsCommand::Create(args) => create(client, global, *args).await?,
        IntegrationsCommand::Enable { integration } => {
            set_enabled(client, global, &integration, true).await?;
        }
        IntegrationsCommand::Disable { integration } => {
            set_enabled(client, global, &integration, false).await?;
        }
        IntegrationsCommand::Test { integration } => {
            return test(client, global, &integration).await;
        }
        IntegrationsCommand::Deliveries {
            integration,
            limit,
            cursor,
        } => deliveries(client, global, &integration, limit, cursor).await?,
        IntegrationsCommand::Rm { integration } => {
            let row = resolve(client, &integration).await?;
            let id = output::field(&row, "id");
            client
                .json(
                    Method::DELETE,
                    &format!("/api/integrations/{id}"),
                    &[],
                    None,
                )
                .await?;
            if global.json {
                output::print_json(&json!({"id": id, "deleted": true}));
            } else {
                eprintln!(
                    "Deleted integration {} ({id}) and its delivery log",
                    output::field(&row, "name")
                );
            }
        }
    }
    Ok(0)
}

/// The integration meant by `text` (its id or its name), as the API shows it.
async fn resolve(client: &Client, text: &str) -> Result<Value, CliError> {
    if jobs::is_full_id(text) {
        match client.get(&format!("/api/integrations/{text}"), &[]).await {
            Err(CliError::Api { status: 404, .. }) => {}
            other => return other,
        }
    }
    let all = client.get("/api/integrations", &[]).await?;
    all.get("integrations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|row| row.get("name").and_then(Value::as_str) == Some(text))
        .cloned()
        .ok_or_else(|| CliError::Usage(format!("no integration named or with id {text}")))
}

async fn list(client: &Client, global: &Global) -> Result<(), CliError> {
    let all = client.get("/api/integrations", &[]).await?;
    if global.json {
        output::print_json(&all);
        return Ok(());
    }
    let mut table = Table::new(vec!["ID", "NAME", "KIND", "EVENTS", "FILTER", "ENABLED"]);
    for row in all
        .get("integrations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        table.row(vec![
            output::field(row, "id").into(),
            output::field(row, "name").into(),
            output::field(row, "kind").into(),
            output::list(row, "events").into(),
            filter_text(row).into(),
            Cell::status(
                if row.get("enabled").and_then(Value::as_bool) == Some(true) {
                    "yes"
                } else {
                    "paused"
                },
            ),
        ]);
    }
    table.print();
    Ok(())
}

fn filter_text(row: &Value) -> String {
    let Some(filter) = row.get("filter").filter(|f| f.is_object()) else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(tags) = filter.get("tags").and_then(Value::as_array) {
        let tags: Vec<&str> = tags.iter().filter_map(Value::as_str).collect();
        parts.push(format!("tags:{}", tags.join("+")));
    }
    for key in ["script", "schedule_id"] {
        if let Some(v) = filter.get(key).and_then(Value::as_str) {
            parts.push(format!("{key}:{v}"));
        }
    }
    output::escape(&parts.join(" ")).into_owned()
}

fn print_integration(row: &Value) {
    println!(
        "{} ({})",
        output::field(row, "name"),
        output::field(row, "id")
    );
    println!("  kind          {}", output::field(row, "kind"));
    println!("  events        {}", output::list(row, "events"));
    println!("  filter        {}", filter_text(row));
    println!("  notify after  {}", output::field(row, "notify_after"));
    println!("  enabled       {}", output::field(row, "enabled"));
    if let Some(config) = row.get("config").and_then(Value::as_object) {
        for (key, value) in config {
            let shown = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("  config.{key:<7} {}", output::escape(&shown));
        }
    }
}

/// The config from the flags (or `--config`).
fn config_of(args: &IntegrationCreateArgs) -> Result<Value, CliError> {
    if let Some(text) = &args.config {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| CliError::Usage(format!("--config: not JSON: {e}")))?;
        if !value.is_object() {
            return Err(CliError::Usage("--config: must be a JSON object".into()));
        }
        return Ok(value);
    }
    let mut config = Map::new();
    for (key, value) in [
        ("url", &args.endpoint),
        ("secret", &args.secret),
        ("routing_key", &args.routing_key),
        ("api_key", &args.api_key),
        ("site", &args.site),
        ("token", &args.hec_token),
    ] {
        if let Some(v) = value {
            config.insert(key.into(), json!(v));
        }
    }
    if !args.to.is_empty() {
        config.insert("to".into(), json!(args.to));
    }
    Ok(Value::Object(config))
}

async fn create(
    client: &Client,
    global: &Global,
    args: IntegrationCreateArgs,
) -> Result<(), CliError> {
    let config = config_of(&args)?;
    let mut body = json!({
        "name": args.name,
        "kind": args.kind,
        "config": config,
        "events": args.events,
        "enabled": !args.disabled,
    });
    let mut filter = Map::new();
    if !args.tags.is_empty() {
        filter.insert("tags".into(), json!(args.tags));
    }
    if let Some(script) = &args.script {
        filter.insert("script".into(), json!(script));
    }
    if let Some(schedule) = &args.schedule {
        filter.insert("schedule_id".into(), json!(schedule));
    }
    if !filter.is_empty() {
        body["filter"] = Value::Object(filter);
    }
    if let Some(n) = args.notify_after {
        body["notify_after"] = json!(n);
    }
    let made = client
        .json(Method::POST, "/api/integrations", &[], Some(&body))
        .await?;
    if global.json {
        output::print_json(&made);
    } else {
        eprintln!(
            "Made integration {} ({}); try it with `outpost integrations test {}`",
            output::field(&made, "name"),
            output::field(&made, "id"),
            output::field(&made, "name"),
        );
    }
    Ok(())
}

async fn set_enabled(
    client: &Client,
    global: &Global,
    text: &str,
    enabled: bool,
) -> Result<(), CliError> {
    let row = resolve(client, text).await?;
    let id = output::field(&row, "id");
    let changed = client
        .json(
            Method::PATCH,
            &format!("/api/integrations/{id}"),
            &[],
            Some(&json!({"enabled": enabled})),
        )
        .await?;
    if global.json {
        output::print_json(&changed);
    } else {
        eprintln!(
            "Integration {} is {}",
            output::field(&changed, "name"),
            if enabled { "enabled" } else { "paused" }
        );
    }
    Ok(())
}

async fn test(client: &Client, global: &Global, text: &str) -> Result<u8, CliError> {
    let row = resolve(client, text).await?;
    let id = output::field(&row, "id");
    let report = client
        .json(
            Method::POST,
            &format!("/api/integrations/{id}/test"),
            &[],
            Some(&json!({})),
        )
        .await?;
    let ok = report.get("ok").and_then(Value::as_bool) == Some(true);
    if global.json {
        output::print_json(&report);
    } else {
        let status = report
            .get("status_code")
            .and_then(Value::as_i64)
            .map_or_else(|| "no answer".to_owned(), |s| format!("HTTP {s}"));
        println!(
            "{}: {status} in {}",
            if ok { "ok" } else { "REFUSED" },
            output::duration_ms(report.get("duration_ms").and_then(Value::as_i64)),
        );
        for key in ["error", "response"] {
            if let Some(text) = report.get(key).and_then(Value::as_str) {
                println!("  {key}: {}", output::escape(text));
            }
        }
    }
    Ok(if ok { 0 } else { exit::FAILURE })
}

async fn deliveries(
    client: &Client,
    global: &Global,
    text: &str,
    limit: u32,
    cursor: Option<String>,
) -> Result<(), CliError> {
    let row = resolve(client, text).await?;
    let id = output::field(&row, "id");
    let mut query = vec![("limit", limit.to_string())];
    if let Some(cursor) = cursor {
        query.push(("cursor", cursor));
    }
    let page = client
        .get(&format!("/api/integrations/{id}/deliveries"), &query)
        .await?;
    if global.json {
        output::print_json(&page);
        return Ok(());
    }
    let mut table = Table::new(vec![
        "ID",
        "WHEN",
        "EVENT",
        "STATUS",
        "ATTEMPTS",
        "LAST ANSWER",
    ]);
    for d in page
        .get("deliveries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let last = d
            .get("attempt_log")
            .and_then(Value::as_array)
            .and_then(|a| a.last())
            .cloned()
            .unwrap_or(Value::Null);
        let answer = match (
            last.get("status_code").and_then(Value::as_i64),
            last.get("error").and_then(Value::as_str),
        ) {
            (Some(code), Some(err)) => format!("{code}: {err}"),
            (Some(code), None) => code.to_string(),
            (None, Some(err)) => err.to_owned(),
            (None, None) => String::new(),
        };
        table.row(vec![
            output::field(d, "id").into(),
            output::ago(d, "created_at").into(),
            output::field(d, "event_id").into(),
            Cell::status(&output::field(d, "status")),
            output::field(d, "attempts").into(),
            output::escape(&answer).into_owned().into(),
        ]);
    }
    table.print();
    if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
        eprintln!("More rows: add --cursor {cursor}");
    }
    Ok(())
}
