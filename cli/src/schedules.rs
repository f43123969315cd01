//! `outpost schedules …`.
//!
//! A schedule is stored and fired by the server (CONTRACT.md §10); the CLI only shapes requests and
//! prints answers. Two choices worth knowing:
//!
//! - A schedule is named by its id or its name everywhere one is expected: names are unique in
//!   a tenant and are what people remember. The name is looked up in the listing (which the
//!   server orders by name), page by page.
//! - `edit` sends only what the flags say (`PATCH` with a subset), so two people changing
//!   different fields of one schedule do not undo each other. The one exception is `--param`
//!   without `--script`: parameters live inside `data`, which the API replaces as a whole, so
//!   the current script name is read and sent back with the new parameters.
//!
//! What runs and where is spelled as in `outpost run` and parsed by the same code
//! ([`jobs::script_params`], [`jobs::Targets`]), so a schedule's job and a `run` of the same
//! flags are the same job.

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::args::{
    Global, ScheduleCreateArgs, ScheduleEditArgs, ScheduleFields, SchedulePreviewArgs,
    ScheduleRunArgs, SchedulesCommand, SchedulesLsArgs,
};
use crate::client::Client;
use crate::error::CliError;
use crate::jobs::{self, Targets};
use crate::output::{self, Cell, Table};

/// Page size when looking a schedule up by name (the API's largest).
const LOOKUP_PAGE: u32 = 200;

/// Runs a `schedules` subcommand.
pub async fn run(client: &Client, global: &Global, cmd: SchedulesCommand) -> Result<u8, CliError> {
    match cmd {
        SchedulesCommand::Ls(args) => list(client, global, args).await?,
        SchedulesCommand::Show { schedule } => {
            let schedule = resolve(client, &schedule).await?;
            if global.json {
                output::print_json(&schedule);
            } else {
                print_schedule(&schedule, Utc::now());
            }
        }
        SchedulesCommand::Create(args) => create(client, global, args).await?,
        SchedulesCommand::Edit(args) => edit(client, global, args).await?,
        SchedulesCommand::Enable { schedule } => {
            set_enabled(client, global, &schedule, true).await?;
        }
        SchedulesCommand::Disable { schedule } => {
            set_enabled(client, global, &schedule, false).await?;
        }
        SchedulesCommand::Rm { schedule } => {
            let schedule = resolve(client, &schedule).await?;
            let id = output::field(&schedule, "id");
            client
                .json(Method::DELETE, &format!("/api/schedules/{id}"), &[], None)
                .await?;
            if global.json {
                output::print_json(&json!({"id": id, "deleted": true}));
            } else {
                eprintln!(
                    "Deleted schedule {} ({id}); the jobs it created stay (`outpost jobs ls --schedule {id}`)",
                    output::field(&schedule, "name")
                );
            }
        }
        SchedulesCommand::Run(args) => return run_now(client, global, args).await,
        SchedulesCommand::Preview(args) => preview(client, global, args).await?,
    }
    Ok(0)
}

/// The schedule meant by `text` (its id or its name), as the API shows it.
pub async fn resolve(client: &Client, text: &str) -> Result<Value, CliError> {
    if jobs::is_full_id(text) {
        match client.get(&format!("/api/schedules/{text}"), &[]).await {
            Err(CliError::Api { status: 404, .. }) => {}
            other => return other,
        }
    }
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", LOOKUP_PAGE.to_string())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page = client.get("/api/schedules", &query).await?;
        if let Some(found) = schedules_of(&page)
            .find(|s| s.get("name").and_then(Value::as_str) == Some(text))
            .cloned()
        {
            return Ok(found);
        }
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(next) if cursor.as_deref() != Some(next) => cursor = Some(next.to_owned()),
            _ => break,
        }
    }
    Err(CliError::not_found(format!(
        "no schedule {text:?} (give a schedule id or name; see `outpost schedules ls`)"
    )))
}

/// The id of the schedule meant by `text`.
pub async fn resolve_id(client: &Client, text: &str) -> Result<String, CliError> {
    if jobs::is_full_id(text) {
        // A full id is used as it is: `jobs ls --schedule` of a deleted schedule still lists
        // what it created.
        return Ok(text.to_owned());
    }
    let schedule = resolve(client, text).await?;
    Ok(output::field(&schedule, "id"))
}

fn schedules_of(page: &Value) -> impl Iterator<Item = &Value> {
    page.get("schedules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

async fn list(client: &Client, global: &Global, args: SchedulesLsArgs) -> Result<(), CliError> {
    let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    if args.enabled {
        query.push(("enabled", "true".into()));
    }
    if args.disabled {
        query.push(("enabled", "false".into()));
    }
    if let Some(cursor) = args.cursor {
        query.push(("cursor", cursor));
    }
    let page = client.get("/api/schedules", &query).await?;
    if global.json {
        output::print_json(&page);
        return Ok(());
    }
    let now = Utc::now();
    let mut table = Table::new(vec![
        "NAME",
        "CRON",
        "TZ",
        "ENABLED",
        "NEXT",
        "LAST JOB STATUS",
    ]);
    for s in schedules_of(&page) {
        let enabled = s.get("enabled").and_then(Value::as_bool) == Some(true);
        let last = s
            .get("last_job")
            .map(|j| output::field(j, "status"))
            .unwrap_or_else(|| "-".into());
        table.row(vec![
            output::field(s, "name").into(),
            output::field(s, "cron").into(),
            output::field(s, "timezone").into(),
            if enabled {
                Cell::from("yes")
            } else {
                Cell::status("disabled")
            },
            next_text(s, now).into(),
            Cell::status(&last),
        ]);
    }
    table.print();
    if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
        eprintln!("More schedules: add --cursor {cursor}");
    }
    Ok(())
}

/// `at` (RFC 3339) as the wall-clock time of the zone `tz`, with the zone's abbreviation;
/// in UTC when the zone is not one chrono-tz knows (the server's list may be newer).
fn local_text(at: DateTime<Utc>, tz: &str) -> String {
    match tz.parse::<chrono_tz::Tz>() {
        Ok(zone) => at
            .with_timezone(&zone)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    }
}

fn time_of(value: &Value, key: &str) -> Option<DateTime<Utc>> {
    value
        .get(key)
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// A schedule's next fire for the table: local time in its zone and how far off, or "-".
fn next_text(schedule: &Value, now: DateTime<Utc>) -> String {
    let zone = schedule
        .get("timezone")
        .and_then(Value::as_str)
        .unwrap_or("UTC");
    match time_of(schedule, "next_fire_at") {
        Some(at) => format!("{} ({})", local_text(at, zone), output::relative(at, now)),
        None => "-".into(),
    }
}

/// A time field in full: local time in the schedule's zone, the UTC instant, how far off.
fn when_text(value: &Value, key: &str, zone: &str, now: DateTime<Utc>) -> String {
    match time_of(value, key) {
        Some(at) => format!(
            "{} ({}, {})",
            local_text(at, zone),
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            output::relative(at, now)
        ),
        None => "-".into(),
    }
}

fn print_schedule(s: &Value, now: DateTime<Utc>) {
    let zone = s.get("timezone").and_then(Value::as_str).unwrap_or("UTC");
    let enabled = s.get("enabled").and_then(Value::as_bool) == Some(true);
    let secs = |key: &str| match s.get(key).and_then(Value::as_i64) {
        Some(n) => format!("{n}s"),
        None => "server default".into(),
    };
    let last_job = match s.get("last_job").filter(|j| j.is_object()) {
        Some(j) => format!(
            "{} {} (fire of {})",
            output::field(j, "job_id"),
            output::field(j, "status"),
            output::field(j, "scheduled_for"),
        ),
        None => "-".into(),
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("id", output::field(s, "id")),
        ("name", output::field(s, "name")),
        ("cron", output::field(s, "cron")),
        ("timezone", output::field(s, "timezone")),
        ("enabled", if enabled { "yes" } else { "no" }.into()),
        ("command", jobs::command_text(s)),
    ];
    let data = s.get("data").cloned().unwrap_or(Value::Null);
    match data.get("params").and_then(Value::as_object) {
        Some(params) if output::field(s, "command") == "run" => {
            let text: Vec<String> = params
                .iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    output::escape(&format!("{k}={v}")).into_owned()
                })
                .collect();
            rows.push((
                "params",
                if text.is_empty() {
                    "-".into()
                } else {
                    text.join(" ")
                },
            ));
        }
        _ if !data.is_null() && output::field(s, "command") != "run" => {
            rows.push(("data", output::escape(&data.to_string()).into_owned()));
        }
        _ => {}
    }
    rows.extend([
        ("target", jobs::target_text(s.get("target"))),
        ("timeout", secs("timeout_s")),
        ("ttl", secs("ttl_s")),
        ("missed", output::field(s, "missed")),
        ("concurrency", output::field(s, "concurrency")),
        ("webhook", output::field(s, "webhook_url")),
        ("next fire", when_text(s, "next_fire_at", zone, now)),
        ("last fire", when_text(s, "last_fire_at", zone, now)),
        ("last job", last_job),
        ("created", output::ago(s, "created_at")),
        ("updated", output::ago(s, "updated_at")),
    ]);
    let mut out = String::new();
    for (label, value) in rows {
        out.push_str(&format!("{:<13}{value}\n", format!("{label}:")));
    }
    output::print_stdout(out.as_bytes());
}

/// `--data`: a JSON value.
fn parse_data(text: &str) -> Result<Value, CliError> {
    serde_json::from_str(text)
        .map_err(|e| CliError::Usage(format!("--data {text:?}: not JSON: {e}")))
}

/// The agents list, read only when agents were named (resolving them needs it).
async fn agents_for(client: &Client, targets: &Targets) -> Result<Value, CliError> {
    if targets.agents.is_empty() {
        Ok(Value::Null)
    } else {
        client.get("/api/agents", &[]).await
    }
}

fn targets_of(fields: &ScheduleFields) -> Targets {
    Targets {
        agents: fields.agents.clone(),
        tags: fields.tags.clone(),
        all: fields.all,
    }
}

/// `command` and `data` from `--script`/`--param` or `--command`/`--data`. `current` is the
/// schedule being edited (its script keeps when only `--param` is given, its command when
/// only `--data` is); `None` when nothing about them was given.
fn action(
    fields: &ScheduleFields,
    current: Option<&Value>,
) -> Result<Option<(String, Value)>, CliError> {
    if let Some(script) = &fields.script {
        return script_data(fields, script).map(Some);
    }
    if !fields.params.is_empty() || !fields.secrets.is_empty() || !fields.secret_files.is_empty() {
        let current = current.unwrap_or(&Value::Null);
        let script = current
            .get("data")
            .and_then(|d| d.get("script"))
            .and_then(Value::as_str)
            .filter(|_| current.get("command").and_then(Value::as_str) == Some("run"));
        let Some(script) = script else {
            return Err(CliError::Usage(
                "--param: the schedule runs no script; give --script NAME with it".into(),
            ));
        };
        return script_data(fields, script).map(Some);
    }
    let data = fields.data.as_deref().map(parse_data).transpose()?;
    match (&fields.command, data) {
        (Some(command), data) => Ok(Some((command.clone(), data.unwrap_or(Value::Null)))),
        (None, Some(data)) => {
            let command = current
                .and_then(|c| c.get("command"))
                .and_then(Value::as_str)
                .filter(|c| *c != "run")
                .ok_or_else(|| {
                    CliError::Usage(
                        "--data: give the command it is for (--command CMD); a script's parameters are --param K=V".into(),
                    )
                })?;
            Ok(Some((command.to_owned(), data)))
        }
        (None, None) => Ok(None),
    }
}

/// `run` of `script` with the parameters of the flags, the secret ones marked.
fn script_data(fields: &ScheduleFields, script: &str) -> Result<(String, Value), CliError> {
    let (params, secret_params) =
        jobs::script_params(&fields.params, &fields.secrets, &fields.secret_files)?;
    let mut data = json!({"script": script, "params": params});
    if !secret_params.is_empty() {
        data["secret_params"] = json!(secret_params);
    }
    Ok(("run".into(), data))
}

/// The fields every body may carry, from the flags given (`None` flags are left out).
fn common_fields(
    body: &mut Map<String, Value>,
    fields: &ScheduleFields,
    target: Option<Map<String, Value>>,
    action: Option<(String, Value)>,
) {
    if let Some(tz) = &fields.timezone {
        body.insert("timezone".into(), json!(tz));
    }
    if let Some(target) = target {
        body.insert("target".into(), Value::Object(target));
    }
    if let Some((command, data)) = action {
        body.insert("command".into(), json!(command));
        if !data.is_null() {
            body.insert("data".into(), data);
        }
    }
    if let Some(timeout) = fields.timeout {
        body.insert("timeout_s".into(), json!(timeout));
    }
    if let Some(ttl) = fields.ttl {
        body.insert("ttl_s".into(), json!(ttl));
    }
    if let Some(missed) = fields.missed {
        body.insert("missed".into(), json!(missed.as_str()));
    }
    if let Some(concurrency) = fields.concurrency {
        body.insert("concurrency".into(), json!(concurrency.as_str()));
    }
    if let Some(url) = &fields.webhook {
        body.insert("webhook_url".into(), json!(url));
    }
}

/// `POST /api/schedules`' body from `create`'s flags; `agents_list` resolves `--agent`.
pub fn create_body(args: &ScheduleCreateArgs, agents_list: &Value) -> Result<Value, CliError> {
    let target = targets_of(&args.fields).body(agents_list)?;
    let action = action(&args.fields, None)?;
    let mut body = Map::new();
    body.insert("name".into(), json!(args.name));
    body.insert("cron".into(), json!(args.cron));
    common_fields(&mut body, &args.fields, Some(target), action);
    if args.disabled {
        body.insert("enabled".into(), json!(false));
    }
    Ok(Value::Object(body))
}

/// `PATCH /api/schedules/{id}`'s body from `edit`'s flags: only what they change. `current`
/// is the schedule as it is; `agents_list` resolves `--agent`.
pub fn edit_body(
    args: &ScheduleEditArgs,
    current: &Value,
    agents_list: &Value,
) -> Result<Value, CliError> {
    let targets = targets_of(&args.fields);
    let target = if targets.is_empty() {
        None
    } else {
        Some(targets.body(agents_list)?)
    };
    let action = action(&args.fields, Some(current))?;
    let mut body = Map::new();
    if let Some(name) = &args.name {
        body.insert("name".into(), json!(name));
    }
    if let Some(cron) = &args.cron {
        body.insert("cron".into(), json!(cron));
    }
    common_fields(&mut body, &args.fields, target, action);
    for (flag, key) in [
        (args.no_webhook, "webhook_url"),
        (args.no_timeout, "timeout_s"),
        (args.no_ttl, "ttl_s"),
    ] {
        if flag {
            body.insert(key.into(), Value::Null);
        }
    }
    if args.enabled {
        body.insert("enabled".into(), json!(true));
    }
    if args.disabled {
        body.insert("enabled".into(), json!(false));
    }
    if body.is_empty() {
        return Err(CliError::Usage(
            "nothing to change: give at least one flag (see `outpost schedules edit --help`)"
                .into(),
        ));
    }
    Ok(Value::Object(body))
}

async fn create(
    client: &Client,
    global: &Global,
    args: ScheduleCreateArgs,
) -> Result<(), CliError> {
    let targets = targets_of(&args.fields);
    let agents_list = agents_for(client, &targets).await?;
    let body = create_body(&args, &agents_list)?;
    let schedule = client
        .json(Method::POST, "/api/schedules", &[], Some(&body))
        .await
        .map_err(|err| jobs::no_agent_hint(err, &targets.tags))?;
    report(global, &schedule, "Created");
    Ok(())
}

async fn edit(client: &Client, global: &Global, args: ScheduleEditArgs) -> Result<(), CliError> {
    let current = resolve(client, &args.schedule).await?;
    let agents_list = agents_for(client, &targets_of(&args.fields)).await?;
    let body = edit_body(&args, &current, &agents_list)?;
    let id = output::field(&current, "id");
    let schedule = client
        .json(
            Method::PATCH,
            &format!("/api/schedules/{id}"),
            &[],
            Some(&body),
        )
        .await
        .map_err(|err| jobs::no_agent_hint(err, &args.fields.tags))?;
    report(global, &schedule, "Changed");
    Ok(())
}

async fn set_enabled(
    client: &Client,
    global: &Global,
    text: &str,
    enabled: bool,
) -> Result<(), CliError> {
    let current = resolve(client, text).await?;
    let id = output::field(&current, "id");
    let schedule = client
        .json(
            Method::PATCH,
            &format!("/api/schedules/{id}"),
            &[],
            Some(&json!({"enabled": enabled})),
        )
        .await?;
    report(
        global,
        &schedule,
        if enabled { "Enabled" } else { "Disabled" },
    );
    Ok(())
}

/// The answer of a create or change: the JSON, or one line saying what it is now.
fn report(global: &Global, schedule: &Value, verb: &str) {
    if global.json {
        output::print_json(schedule);
        return;
    }
    let next = match schedule.get("next_fire_at").and_then(Value::as_str) {
        Some(_) => format!("next fire {}", next_text(schedule, Utc::now())),
        None => "disabled, no next fire".into(),
    };
    eprintln!(
        "{verb} schedule {} ({}): {} {}; {next}",
        output::field(schedule, "name"),
        output::field(schedule, "id"),
        output::field(schedule, "cron"),
        output::field(schedule, "timezone"),
    );
}

async fn run_now(client: &Client, global: &Global, args: ScheduleRunArgs) -> Result<u8, CliError> {
    let schedule = resolve(client, &args.schedule).await?;
    let id = output::field(&schedule, "id");
    let tags: Vec<String> = schedule
        .get("target")
        .and_then(|t| t.get("tags"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let job = client
        .json(Method::POST, &format!("/api/schedules/{id}/run"), &[], None)
        .await
        .map_err(|err| jobs::no_agent_hint(err, &tags))?;
    if args.wait || args.follow {
        let agents_list = client.get("/api/agents", &[]).await?;
        return jobs::watch(client, global, job, &agents_list, args.follow).await;
    }
    if global.json {
        output::print_json(&job);
    } else {
        let job_id = output::field(&job, "job_id");
        eprintln!(
            "Started job {job_id} of schedule {} ({}); `outpost jobs logs {job_id} --follow` shows its output",
            output::field(&schedule, "name"),
            jobs::command_text(&job),
        );
        output::print_stdout(format!("{job_id}\n").as_bytes());
    }
    Ok(0)
}

/// `--from` as the API wants it.
fn from_param(text: &str) -> Result<String, CliError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| {
            t.with_timezone(&Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .map_err(|e| {
            CliError::Usage(format!(
                "--from {text:?}: not an RFC 3339 time such as 2026-03-07T12:00:00Z ({e})"
            ))
        })
}

async fn preview(
    client: &Client,
    global: &Global,
    args: SchedulePreviewArgs,
) -> Result<(), CliError> {
    let mut query: Vec<(&str, String)> = vec![("cron", args.cron.clone())];
    if let Some(tz) = &args.timezone {
        query.push(("timezone", tz.clone()));
    }
    if let Some(from) = &args.from {
        query.push(("from", from_param(from)?));
    }
    query.push(("count", args.count.to_string()));
    let answer = client.get("/api/schedules/preview", &query).await?;
    if global.json {
        output::print_json(&answer);
        return Ok(());
    }
    let mut table = Table::new(vec!["UTC", "LOCAL"]);
    for fire in answer
        .get("fires")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        table.row(vec![
            output::field(fire, "at").into(),
            output::field(fire, "local").into(),
        ]);
    }
    table.print();
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut all = vec!["outpost"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
    }

    fn schedules(args: &[&str]) -> SchedulesCommand {
        let mut all = vec!["schedules"];
        all.extend_from_slice(args);
        match parse(&all).map(|c| c.command) {
            Ok(Command::Schedules(cmd)) => cmd,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn create_args(args: &[&str]) -> ScheduleCreateArgs {
        let mut all = vec!["create"];
        all.extend_from_slice(args);
        match schedules(&all) {
            SchedulesCommand::Create(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn edit_args(args: &[&str]) -> ScheduleEditArgs {
        let mut all = vec!["edit"];
        all.extend_from_slice(args);
        match schedules(&all) {
            SchedulesCommand::Edit(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn agents() -> Value {
        json!([
            {"agent_id": "0199aaaa-0000-7000-8000-000000000001", "hostname": "web-1"},
            {"agent_id": "0199aaaa-0000-7000-8000-000000000002", "hostname": "db-1"},
        ])
    }

    #[test]
    fn create_builds_the_whole_body() {
        let args = create_args(&[
            "nightly-backup",
            "--cron",
            "30 2 * * *",
            "--tz",
            "Europe/Paris",
            "--tag",
            "db",
            "--tag",
            "eu",
            "--script",
            "backup",
            "--param",
            "KEEP=7",
            "--param",
            "MODE=full=yes",
            "--timeout",
            "300",
            "--ttl",
            "600",
            "--missed",
            "run_once",
            "--concurrency",
            "forbid",
            "--webhook",
            "https://hooks.example.com/x",
            "--disabled",
        ]);
        let body = create_body(&args, &Value::Null).expect("body");
        assert_eq!(
            body,
            json!({
                "name": "nightly-backup",
                "cron": "30 2 * * *",
                "timezone": "Europe/Paris",
                "target": {"tags": ["db", "eu"]},
                "command": "run",
                "data": {"script": "backup", "params": {"KEEP": "7", "MODE": "full=yes"}},
                "timeout_s": 300,
                "ttl_s": 600,
                "missed": "run_once",
                "concurrency": "forbid",
                "webhook_url": "https://hooks.example.com/x",
                "enabled": false,
            })
        );
    }

    #[test]
    fn create_resolves_agents_and_takes_commands_with_data() {
        let args = create_args(&[
            "hb",
            "--cron",
            "@every 30s",
            "--agent",
            "web-1",
            "--agent",
            "00000002",
            "--agent",
            "web-1",
            "--command",
            "echo",
            "--data",
            r#"{"text": "hi"}"#,
        ]);
        let body = create_body(&args, &agents()).expect("body");
        assert_eq!(
            body,
            json!({
                "name": "hb",
                "cron": "@every 30s",
                "target": {"agents": [
                    "0199aaaa-0000-7000-8000-000000000001",
                    "0199aaaa-0000-7000-8000-000000000002",
                ]},
                "command": "echo",
                "data": {"text": "hi"},
            })
        );
        let all = create_args(&["p", "--cron", "@hourly", "--all", "--command", "ping"]);
        assert_eq!(
            create_body(&all, &Value::Null).expect("body"),
            json!({"name": "p", "cron": "@hourly", "target": {"all": true}, "command": "ping"})
        );
        let unknown = create_args(&[
            "p",
            "--cron",
            "@hourly",
            "--agent",
            "nope",
            "--command",
            "ping",
        ]);
        assert!(matches!(
            create_body(&unknown, &agents()),
            Err(CliError::Api { status: 404, .. })
        ));
        let bad = create_args(&[
            "p",
            "--cron",
            "@hourly",
            "--all",
            "--command",
            "echo",
            "--data",
            "{x",
        ]);
        match create_body(&bad, &Value::Null) {
            Err(CliError::Usage(m)) => assert!(m.starts_with("--data"), "{m}"),
            other => panic!("{other:?}"),
        }
        let bad = create_args(&[
            "p", "--cron", "@hourly", "--all", "--script", "s", "--param", "nokey",
        ]);
        match create_body(&bad, &Value::Null) {
            Err(CliError::Usage(m)) => assert!(m.starts_with("--param"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_needs_a_cron_a_target_and_something_to_run() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| {
            let mut all = vec!["schedules", "create"];
            all.extend_from_slice(args);
            parse(&all).err().map(|e| e.kind())
        };
        let missing = Some(ErrorKind::MissingRequiredArgument);
        let conflict = Some(ErrorKind::ArgumentConflict);
        assert_eq!(kind(&["n", "--tag", "db", "--script", "s"]), missing);
        assert_eq!(kind(&["n", "--cron", "@daily", "--script", "s"]), missing);
        assert_eq!(kind(&["n", "--cron", "@daily", "--tag", "db"]), missing);
        assert_eq!(
            kind(&[
                "n", "--cron", "@daily", "--all", "--tag", "db", "--script", "s"
            ]),
            conflict
        );
        assert_eq!(
            kind(&[
                "n",
                "--cron",
                "@daily",
                "--all",
                "--script",
                "s",
                "--command",
                "ping"
            ]),
            conflict
        );
        assert_eq!(
            kind(&[
                "n", "--cron", "@daily", "--all", "--script", "s", "--data", "{}"
            ]),
            conflict
        );
        assert_eq!(
            kind(&[
                "n",
                "--cron",
                "@daily",
                "--all",
                "--command",
                "ping",
                "--param",
                "a=b"
            ]),
            conflict
        );
        assert_eq!(
            kind(&[
                "n", "--cron", "@daily", "--all", "--script", "s", "--missed", "later"
            ]),
            Some(ErrorKind::InvalidValue)
        );
        assert_eq!(
            kind(&[
                "n",
                "--cron",
                "@daily",
                "--all",
                "--script",
                "s",
                "--concurrency",
                "x"
            ]),
            Some(ErrorKind::InvalidValue)
        );
        assert_eq!(
            kind(&[
                "n",
                "--cron",
                "@daily",
                "--all",
                "--script",
                "s",
                "--no-webhook"
            ]),
            Some(ErrorKind::UnknownArgument)
        );
        // Tags and agents together are one target (as `run --on` allows).
        assert_eq!(
            kind(&[
                "n", "--cron", "@daily", "--agent", "a", "--tag", "db", "--script", "s"
            ]),
            None
        );
    }

    #[test]
    fn edit_sends_only_what_the_flags_change() {
        let current = json!({
            "id": "0199aaaa-0000-7000-8000-00000000000a",
            "name": "nightly",
            "command": "run",
            "data": {"script": "backup", "params": {"KEEP": "3"}},
        });
        let body = |args: &[&str]| edit_body(&edit_args(args), &current, &agents());
        assert_eq!(
            body(&["nightly", "--cron", "0 3 * * *"]).ok(),
            Some(json!({"cron": "0 3 * * *"}))
        );
        assert_eq!(
            body(&["nightly", "--tz", "Asia/Tokyo", "--name", "nightly-db"]).ok(),
            Some(json!({"timezone": "Asia/Tokyo", "name": "nightly-db"}))
        );
        // --param alone keeps the script.
        assert_eq!(
            body(&["nightly", "--param", "KEEP=7"]).ok(),
            Some(json!({"command": "run", "data": {"script": "backup", "params": {"KEEP": "7"}}}))
        );
        assert_eq!(
            body(&["nightly", "--secret", "TOKEN=s3"]).ok(),
            Some(json!({"command": "run", "data": {
                "script": "backup", "params": {"TOKEN": "s3"}, "secret_params": ["TOKEN"],
            }}))
        );
        assert_eq!(
            body(&["nightly", "--script", "dump"]).ok(),
            Some(json!({"command": "run", "data": {"script": "dump", "params": {}}}))
        );
        assert_eq!(
            body(&["nightly", "--agent", "db-1"]).ok(),
            Some(json!({"target": {"agents": ["0199aaaa-0000-7000-8000-000000000002"]}}))
        );
        assert_eq!(
            body(&[
                "nightly",
                "--no-webhook",
                "--no-timeout",
                "--no-ttl",
                "--disabled"
            ])
            .ok(),
            Some(json!({"webhook_url": null, "timeout_s": null, "ttl_s": null, "enabled": false}))
        );
        assert_eq!(
            body(&[
                "nightly",
                "--webhook",
                "https://h.example/x",
                "--timeout",
                "5",
                "--missed",
                "skip",
                "--concurrency",
                "replace",
                "--enabled"
            ])
            .ok(),
            Some(json!({
                "webhook_url": "https://h.example/x",
                "timeout_s": 5,
                "missed": "skip",
                "concurrency": "replace",
                "enabled": true,
            }))
        );
        assert!(matches!(body(&["nightly"]), Err(CliError::Usage(_))));
        // --data alone needs a command that is not a script.
        assert!(matches!(
            body(&["nightly", "--data", "{}"]),
            Err(CliError::Usage(_))
        ));
        let echo = json!({"command": "echo", "data": {"text": "a"}});
        assert_eq!(
            edit_body(
                &edit_args(&["e", "--data", r#"{"text":"b"}"#]),
                &echo,
                &Value::Null
            )
            .ok(),
            Some(json!({"command": "echo", "data": {"text": "b"}}))
        );
        assert!(matches!(
            edit_body(&edit_args(&["e", "--param", "a=b"]), &echo, &Value::Null),
            Err(CliError::Usage(_))
        ));
        for conflicting in [
            &["n", "--webhook", "u", "--no-webhook"][..],
            &["n", "--timeout", "5", "--no-timeout"],
            &["n", "--ttl", "5", "--no-ttl"],
            &["n", "--enabled", "--disabled"],
        ] {
            let mut all = vec!["schedules", "edit"];
            all.extend_from_slice(conflicting);
            assert_eq!(
                parse(&all).err().map(|e| e.kind()),
                Some(clap::error::ErrorKind::ArgumentConflict),
                "{conflicting:?}"
            );
        }
    }

    #[test]
    fn the_other_commands_parse() {
        match schedules(&[
            "preview",
            "--cron",
            "30 2 * * *",
            "--tz",
            "America/New_York",
            "--from",
            "2026-03-07T12:00:00Z",
            "-n",
            "2",
        ]) {
            SchedulesCommand::Preview(p) => {
                assert_eq!(p.count, 2);
                assert_eq!(p.timezone.as_deref(), Some("America/New_York"));
            }
            other => panic!("{other:?}"),
        }
        match schedules(&["preview", "--cron", "@daily"]) {
            SchedulesCommand::Preview(p) => assert_eq!(p.count, 10),
            other => panic!("{other:?}"),
        }
        for bad in [
            &["schedules", "preview", "--cron", "@daily", "-n", "0"][..],
            &["schedules", "preview", "--cron", "@daily", "-n", "101"],
            &["schedules", "preview"],
            &["schedules", "run", "x", "--wait", "--follow"],
            &["schedules", "ls", "--enabled", "--disabled"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        match schedules(&["run", "nightly", "--wait"]) {
            SchedulesCommand::Run(r) => assert!(r.wait && !r.follow && r.schedule == "nightly"),
            other => panic!("{other:?}"),
        }
        for (args, enabled) in [(&["enable", "n"], true), (&["disable", "n"], false)] {
            let got = match schedules(args) {
                SchedulesCommand::Enable { schedule } => (schedule, true),
                SchedulesCommand::Disable { schedule } => (schedule, false),
                other => panic!("{other:?}"),
            };
            assert_eq!(got, ("n".to_owned(), enabled));
        }
        match parse(&["jobs", "ls", "--schedule", "nightly"]).map(|c| c.command) {
            Ok(Command::Jobs(crate::args::JobsCommand::Ls(a))) => {
                assert_eq!(a.schedule.as_deref(), Some("nightly"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn times_show_in_the_schedule_zone() {
        let at = DateTime::parse_from_rfc3339("2026-03-08T07:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(
            local_text(at, "America/New_York"),
            "2026-03-08 03:00:00 EDT"
        );
        assert_eq!(local_text(at, "UTC"), "2026-03-08 07:00:00 UTC");
        assert_eq!(local_text(at, "Mars/Olympus"), "2026-03-08 07:00:00 UTC");
        let s = json!({"timezone": "Europe/Paris", "next_fire_at": "2026-03-08T07:00:00Z"});
        assert_eq!(
            next_text(&s, at - chrono::Duration::minutes(5)),
            "2026-03-08 08:00:00 CET (in 5m)"
        );
        assert_eq!(next_text(&json!({"next_fire_at": null}), at), "-");
        assert_eq!(
            from_param("2026-03-07T07:00:00-05:00").ok().as_deref(),
            Some("2026-03-07T12:00:00Z")
        );
        assert!(matches!(from_param("yesterday"), Err(CliError::Usage(_))));
    }
}
