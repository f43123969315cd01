//! `outpost run` and `outpost jobs ls|show|logs|cancel`.
//!
//! A `run` is a job with command `run` (`POST /api/jobs`). Without `--follow` it waits on the
//! job's event stream without printing it, then prints the stored output; with `--follow` it
//! prints the event stream as it comes. The event stream rather than `?wait=` because it has no
//! upper limit (`?wait` stops at 600 s) and it also ends when runs expire or are lost, which
//! `?wait` does not notice until its time is up. The exit status follows the runs: see
//! [`exit_status`].

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::agents;
use crate::args::{Global, JobsCommand, JobsLogsArgs, JobsLsArgs, RunArgs, Stream};
use crate::client::Client;
use crate::error::{CliError, exit};
use crate::follow::{self, Options, Printer};
use crate::output::{self, Cell, Table};
use crate::schedules;

/// `NAME=VALUE` (or `NAME=PATH`) of a flag; the flag names the error. The text of a secret
/// flag is not repeated in its error: all of it may be the secret.
fn name_value<'a>(flag: &str, text: &'a str) -> Result<(&'a str, &'a str), CliError> {
    let (shown, form) = match flag {
        "--param" => (format!(" {text:?}"), "NAME=VALUE"),
        "--secret-file" => (format!(" {text:?}"), "NAME=PATH"),
        _ => (String::new(), "NAME=VALUE"),
    };
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| CliError::Usage(format!("{flag}{shown}: expected {form}")))?;
    if k.is_empty() {
        return Err(CliError::Usage(format!("{flag}{shown}: the name is empty")));
    }
    Ok((k, v))
}

/// A script's parameters from `--param`, `--secret` and `--secret-file`: the `params` object
/// and the names of the secret ones (for `data.secret_params`).
pub fn script_params(
    params: &[String],
    secrets: &[String],
    secret_files: &[String],
) -> Result<(Map<String, Value>, Vec<String>), CliError> {
    let mut out = Map::new();
    for param in params {
        let (k, v) = name_value("--param", param)?;
        out.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let mut secret_names = Vec::new();
    for param in secrets {
        let (k, v) = name_value("--secret", param)?;
        out.insert(k.to_owned(), Value::String(v.to_owned()));
        secret_names.push(k.to_owned());
    }
    for param in secret_files {
        let (k, path) = name_value("--secret-file", param)?;
        let mut value = std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("--secret-file {k}: cannot read {path}: {e}")))?;
        if value.ends_with('\n') {
            value.pop();
        }
        out.insert(k.to_owned(), Value::String(value));
        secret_names.push(k.to_owned());
    }
    Ok((out, secret_names))
}

/// Where a job runs, as the command line said it: agents as typed (ids, parts of ids,
/// hostnames), tags, or all. `run` spells it `--on`; schedules `--agent`, `--tag`, `--all`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Targets {
    /// Agents as typed.
    pub agents: Vec<String>,
    /// Tags (a job runs on the agents having all of them).
    pub tags: Vec<String>,
    /// Every agent.
    pub all: bool,
}

impl Targets {
    /// From `--on` values: `all`, `tag:T` or an agent.
    pub fn from_on(on: &[String]) -> Result<Self, CliError> {
        let mut targets = Self::default();
        for on in on {
            if on == "all" {
                targets.all = true;
            } else if let Some(tag) = on.strip_prefix("tag:") {
                if tag.is_empty() {
                    return Err(CliError::Usage(
                        "--on tag: needs a tag, e.g. tag:web".into(),
                    ));
                }
                targets.tags.push(tag.to_owned());
            } else {
                targets.agents.push(on.clone());
            }
        }
        Ok(targets)
    }

    /// Whether nothing was said.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty() && self.tags.is_empty() && !self.all
    }

    /// The API's `target` (as `POST /api/jobs` takes it), each agent resolved against
    /// `agents_list` (`GET /api/agents`; only read when agents were given).
    pub fn body(&self, agents_list: &Value) -> Result<Map<String, Value>, CliError> {
        let mut ids: Vec<String> = Vec::new();
        for agent in &self.agents {
            let id = agents::pick(agents_list, agent).or_else(|err| {
                // An agent registered since the list was read is still found by its full id.
                if agent.len() == 36 {
                    Ok(agent.clone())
                } else {
                    Err(err)
                }
            })?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        if self.tags.iter().any(String::is_empty) {
            return Err(CliError::Usage("--tag: a tag is empty".into()));
        }
        let mut target = Map::new();
        if !ids.is_empty() {
            target.insert("agents".into(), json!(ids));
        }
        if !self.tags.is_empty() {
            target.insert("tags".into(), json!(self.tags));
        }
        if self.all {
            target.insert("all".into(), json!(true));
        }
        Ok(target)
    }
}

/// `err` with a hint when it is the server's "no agent has the tags" (422) for a target with
/// `tags`: where agents get tags from.
pub fn no_agent_hint(err: CliError, tags: &[String]) -> CliError {
    match &err {
        // No agent has the tags (the server names them; an older one did not).
        CliError::Api {
            status: 422, code, ..
        } if code == "unprocessable" && !tags.is_empty() => {
            let shown: Vec<String> = tags.iter().map(|t| format!("{t:?}")).collect();
            err.with_hint(format!(
                "no agent has {} {}: `outpost agents ls --tag {}` lists the agents with a tag; \
                 an agent gets tags from its OUTPOST_TAGS, its key (`outpost keys agent create --tag`) \
                 or `outpost agents tag add AGENT TAG`",
                if tags.len() == 1 {
                    "the tag"
                } else {
                    "all of the tags"
                },
                shown.join(", "),
                tags[0]
            ))
        }
        _ => err,
    }
}

/// `outpost run`.
pub async fn run_script(client: &Client, global: &Global, args: RunArgs) -> Result<u8, CliError> {
    let (params, secret_params) = script_params(&args.params, &args.secrets, &args.secret_files)?;
    let targets = Targets::from_on(&args.on)?;
    let agents_list = client.get("/api/agents", &[]).await?;
    let mut body = json!({
        "command": "run",
        "data": {"script": args.script, "params": params},
        "target": targets.body(&agents_list)?,
    });
    if !secret_params.is_empty() {
        body["data"]["secret_params"] = json!(secret_params);
    }
    if let Some(timeout) = args.timeout {
        body["timeout_s"] = json!(timeout);
    }
    if let Some(ttl) = args.ttl {
        body["ttl_s"] = json!(ttl);
    }
    let job = client
        .json(Method::POST, "/api/jobs", &[], Some(&body))
        .await
        .map_err(|err| no_agent_hint(err, &targets.tags))?;
    watch(client, global, job, &agents_list, args.follow).await
}

/// What `run` does once the job exists: waits for it and prints the stored output, or with
/// `follow` prints the output live; the exit status follows the runs ([`exit_status`]).
pub async fn watch(
    client: &Client,
    global: &Global,
    job: Value,
    agents_list: &Value,
    follow: bool,
) -> Result<u8, CliError> {
    let job_id = output::field(&job, "job_id");
    let runs = run_labels(&job, agents_list);
    let fan_out = runs.len() > 1;
    let job = if follow {
        if !global.json {
            eprintln!(
                "job {job_id}: {} on {} agent{}",
                match job["data"].get("script").and_then(Value::as_str) {
                    Some(script) => output::escape(script).into_owned(),
                    None => output::field(&job, "command"),
                },
                runs.len(),
                if fan_out { "s" } else { "" }
            );
        }
        let mut printer = Printer::new(
            Options {
                run: None,
                stream: Stream::Both,
                prefix: true,
                json: global.json,
                quiet: false,
                announce: fan_out || !global.json,
            },
            runs.clone(),
        );
        follow::follow(client, &job_id, &mut printer).await?;
        client.get(&format!("/api/jobs/{job_id}"), &[]).await?
    } else {
        let job = wait_done(client, job).await?;
        if global.json {
            output::print_json(&job);
        } else {
            print_outputs(client, &job, &runs, Stream::Both, true).await?;
            for run in job_runs(&job) {
                let id = output::field(run, "run_id");
                if fan_out || output::field(run, "status") != "succeeded" {
                    let label = label_of(&runs, &id);
                    eprintln!(
                        "{}",
                        follow::run_outcome(&label, run, output::colour_stderr())
                    );
                }
            }
        }
        job
    };
    if fan_out && !global.json {
        eprintln!("{}", summary(&job));
        match crate::results::after_run(client, &job_id).await {
            Ok(text) => eprint!("{text}"),
            Err(err) => eprintln!("(no summary: {err})"),
        }
    }
    Ok(exit_status(&job))
}

/// Waits until a job is no longer running; `job` is its latest view.
async fn wait_done(client: &Client, job: Value) -> Result<Value, CliError> {
    if output::field(&job, "status") != "running" {
        return Ok(job);
    }
    let job_id = output::field(&job, "job_id");
    let mut printer = Printer::new(
        Options {
            run: None,
            stream: Stream::Both,
            prefix: false,
            json: false,
            quiet: true,
            announce: false,
        },
        Vec::new(),
    );
    follow::follow(client, &job_id, &mut printer).await?;
    client.get(&format!("/api/jobs/{job_id}"), &[]).await
}

/// The exit status for a finished job: one run passes its script's exit code through (124 for
/// a timeout, 125 for an end without exit code); several runs give 0 only if all succeeded.
pub fn exit_status(job: &Value) -> u8 {
    let runs = job_runs(job);
    match runs.as_slice() {
        [run] => {
            let status = output::field(run, "status");
            if status == "succeeded" {
                return 0;
            }
            if status == "timed_out" {
                return exit::TIMED_OUT;
            }
            match run.get("exit_code").and_then(Value::as_i64) {
                // Exit codes are 0–255 on Unix; a failed run with code 0 still fails.
                Some(code) if code & 0xff != 0 => (code & 0xff) as u8,
                Some(_) => exit::FAILURE,
                None => exit::NO_EXIT_CODE,
            }
        }
        runs => {
            if !runs.is_empty()
                && runs
                    .iter()
                    .all(|r| output::field(r, "status") == "succeeded")
            {
                0
            } else {
                exit::FAILURE
            }
        }
    }
}

fn job_runs(job: &Value) -> Vec<&Value> {
    job.get("runs")
        .and_then(Value::as_array)
        .map(|r| r.iter().collect())
        .unwrap_or_default()
}

/// (run id, agent label) for each run of the job.
fn run_labels(job: &Value, agents_list: &Value) -> Vec<(String, String)> {
    let runs = job_runs(job);
    let agent_ids: Vec<String> = runs.iter().map(|r| output::field(r, "agent_id")).collect();
    let labels = agents::labels(agents_list, &agent_ids);
    runs.iter()
        .map(|r| {
            let agent = output::field(r, "agent_id");
            // The fleet's labels tell agents of one host name apart (`web/1a2b3c4d`); the
            // run's own host name serves when the agent is not listed.
            let label = match (
                labels.get(&agent),
                r.get("hostname").and_then(Value::as_str),
            ) {
                (Some(label), _) => label.clone(),
                (None, Some(host)) if !host.is_empty() => output::escape(host).into_owned(),
                (None, _) => agent,
            };
            (output::field(r, "run_id"), label)
        })
        .collect()
}

fn label_of(runs: &[(String, String)], run_id: &str) -> String {
    runs.iter()
        .find(|(r, _)| r == run_id)
        .map(|(_, l)| l.clone())
        .unwrap_or_else(|| run_id.to_owned())
}

/// `3 runs: 2 succeeded, 1 failed (job …)`.
fn summary(job: &Value) -> String {
    let runs = job_runs(job);
    format!(
        "{} runs: {} (job {})",
        runs.len(),
        counts_text(job),
        output::field(job, "job_id")
    )
}

/// Run counts as "2 succeeded, 1 failed".
fn counts_text(job: &Value) -> String {
    let mut counts: Vec<(String, u64)> = job
        .get("run_counts")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let order = |s: &str| {
        [
            "succeeded",
            "failed",
            "timed_out",
            "cancelled",
            "expired",
            "lost",
            "running",
            "delivered",
            "pending",
        ]
        .iter()
        .position(|o| *o == s)
        .unwrap_or(99)
    };
    counts.sort_by_key(|(k, _)| order(k));
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// Prints the stored output of `runs` (run id, label). One run: its bytes as they are, stdout
/// to stdout and stderr to stderr when `split`; several: line by line, prefixed by agent.
async fn print_outputs(
    client: &Client,
    job: &Value,
    runs: &[(String, String)],
    stream: Stream,
    split: bool,
) -> Result<(), CliError> {
    let job_id = output::field(job, "job_id");
    let prefix = runs.len() > 1;
    let streams: Vec<Stream> = match (split, stream) {
        (true, Stream::Both) => vec![Stream::Stdout, Stream::Stderr],
        (_, s) => vec![s],
    };
    let mut printer = Printer::new(
        Options {
            run: None,
            stream: Stream::Both,
            prefix,
            json: false,
            quiet: false,
            announce: false,
        },
        runs.to_vec(),
    );
    for (run_id, _) in runs {
        for s in &streams {
            let path = format!("/api/jobs/{job_id}/runs/{run_id}/output");
            let mut response = client
                .send(
                    Method::GET,
                    &path,
                    &[("stream", s.as_str().to_owned())],
                    None,
                    None,
                )
                .await?;
            // `run` keeps the script's stderr on stderr; `jobs logs` prints what was asked for.
            let to_stderr = split && *s == Stream::Stderr;
            loop {
                let chunk = response.chunk().await.map_err(|e| client.transport(&e))?;
                let Some(chunk) = chunk else { break };
                if prefix {
                    printer.raw(run_id, to_stderr, &chunk);
                } else if to_stderr {
                    use std::io::Write;
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(&chunk);
                } else {
                    output::print_stdout(&chunk);
                }
            }
            printer.end_run(run_id);
        }
    }
    Ok(())
}

/// Whether `s` looks like a full id (a UUID).
pub fn is_full_id(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        })
}

/// Shortest part of a job id looked up (shorter ones match too much to be worth a request).
const MIN_JOB_ID_PART: usize = 4;

/// The job id meant by `text`: a full id as given; else the one job whose id starts or ends
/// with `text`, as agent ids can be shortened ([`agents::resolve`]). Job ids are UUIDv7: jobs
/// created within the same minute share their first 8 characters, so the end of an id (its
/// random part) is the handy short form. The server does the lookup (`GET
/// /api/jobs?id=…`); its answer is checked here again, so a server that does not know the
/// filter (it would list every job) yields "no job" rather than the wrong job.
pub async fn resolve_job(client: &Client, text: &str) -> Result<String, CliError> {
    if is_full_id(text) {
        return Ok(text.to_owned());
    }
    let text = text.to_ascii_lowercase();
    if text.len() < MIN_JOB_ID_PART || !text.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
        return Err(CliError::not_found(format!(
            "no job matches {text:?} (give a job id, or at least {MIN_JOB_ID_PART} of its first or last characters; see `outpost jobs ls`)"
        )));
    }
    let page = client
        .get("/api/jobs", &[("id", text.clone()), ("limit", "10".into())])
        .await?;
    let ids: Vec<String> = page
        .get("jobs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|j| j.get("job_id").and_then(Value::as_str))
        .filter(|id| id.starts_with(text.as_str()) || id.ends_with(text.as_str()))
        .map(str::to_owned)
        .collect();
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(CliError::not_found(format!(
            "no job matches {text:?} (give a job id, or a unique start or end of one; see `outpost jobs ls`)"
        ))),
        many => Err(CliError::Usage(format!(
            "{text:?} matches {}{} jobs ({}); give more of the id",
            if many.len() >= 10 { "at least " } else { "" },
            many.len(),
            many.join(", ")
        ))),
    }
}

/// Runs an `outpost jobs` subcommand.
pub async fn run(client: &Client, global: &Global, cmd: JobsCommand) -> Result<u8, CliError> {
    match cmd {
        JobsCommand::Ls(args) => list(client, global, args).await?,
        JobsCommand::Show { job, mask_numbers } => {
            let job = resolve_job(client, &job).await?;
            crate::results::show(client, global, &job, mask_numbers).await?;
        }
        JobsCommand::Runs(args) => crate::results::runs(client, global, args).await?,
        JobsCommand::Rerun(args) => return crate::results::rerun(client, global, args).await,
        JobsCommand::Logs(args) => return logs(client, global, args).await,
        JobsCommand::Cancel { job } => {
            let job = resolve_job(client, &job).await?;
            let job = client
                .json(Method::POST, &format!("/api/jobs/{job}/cancel"), &[], None)
                .await?;
            if global.json {
                output::print_json(&job);
            } else {
                let cancelled = job_runs(&job)
                    .iter()
                    .any(|r| output::field(r, "status") == "cancelled");
                let status = output::field(&job, "status");
                let verb = if cancelled || status == "running" {
                    "Cancelled job"
                } else {
                    "Nothing to cancel: job"
                };
                eprintln!(
                    "{verb} {} ({status}); runs: {}",
                    output::field(&job, "job_id"),
                    counts_text(&job)
                );
            }
        }
    }
    Ok(0)
}

async fn list(client: &Client, global: &Global, args: JobsLsArgs) -> Result<(), CliError> {
    let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    if let Some(agent) = &args.agent {
        query.push(("agent_id", agents::resolve(client, agent).await?));
    }
    if let Some(schedule) = &args.schedule {
        query.push((
            "schedule_id",
            schedules::resolve_id(client, schedule).await?,
        ));
    }
    for (name, value) in [
        ("script", &args.script),
        ("command", &args.command),
        ("status", &args.status),
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
    let page = client.get("/api/jobs", &query).await?;
    if global.json {
        output::print_json(&page);
        return Ok(());
    }
    let mut table = Table::new(vec!["ID", "COMMAND", "STATUS", "RUNS", "CREATED", "TARGET"]);
    for job in page
        .get("jobs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        table.row(vec![
            output::field(job, "job_id").into(),
            command_text(job).into(),
            Cell::status(&output::field(job, "status")),
            counts_text(job).into(),
            output::ago(job, "created_at").into(),
            target_text(job.get("target")).into(),
        ]);
    }
    table.print();
    if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
        eprintln!("More jobs: add --cursor {cursor}");
    }
    Ok(())
}

/// `run disk-usage` for runs, the command name otherwise.
pub fn command_text(job: &Value) -> String {
    let command = output::field(job, "command");
    match job
        .get("data")
        .and_then(|d| d.get("script"))
        .and_then(Value::as_str)
    {
        Some(script) if command == "run" => format!("run {}", output::escape(script)),
        _ => command,
    }
}

pub fn target_text(target: Option<&Value>) -> String {
    let Some(t) = target else { return "-".into() };
    let mut parts = Vec::new();
    if t.get("all").and_then(Value::as_bool) == Some(true) {
        parts.push("all".to_owned());
    }
    for tag in t
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        parts.push(format!(
            "tag:{}",
            output::escape(tag.as_str().unwrap_or("?"))
        ));
    }
    let agents = t
        .get("agents")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    match agents {
        0 => {}
        1 => parts.push("1 agent".into()),
        n => parts.push(format!("{n} agents")),
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// An RFC 3339 time, or an age (`90s`, `30m`, `6h`, `2d`, `1w`) before `now`.
pub fn parse_time(flag: &str, text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, CliError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = || {
        CliError::Usage(format!(
            "--{flag} {text:?}: expected an RFC 3339 time (2026-11-21T08:00:00Z) or an age (30m, 6h, 2d, 1w)"
        ))
    };
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let age = n
        .checked_mul(secs)
        .and_then(chrono::Duration::try_seconds)
        .ok_or_else(bad)?;
    now.checked_sub_signed(age).ok_or_else(bad)
}

/// A job's head: id, command, status, target, times, run counts, schedule and parameters.
pub fn head_text(job: &Value) -> String {
    let colour = output::colour_stdout();
    let status = output::field(job, "status");
    let painted = match output::status_colour(&status) {
        Some(c) => output::paint(&status, c, colour),
        None => status,
    };
    let mut head = String::new();
    for (label, value) in [
        ("job", output::field(job, "job_id")),
        ("command", command_text(job)),
        ("status", painted),
        ("target", target_text(job.get("target"))),
        ("created", output::ago(job, "created_at")),
        ("finished", output::ago(job, "finished_at")),
        ("runs", counts_text(job)),
    ] {
        head.push_str(&format!("{:<10}{value}\n", format!("{label}:")));
    }
    if job.get("schedule_id").is_some_and(Value::is_string) {
        let catch_up = if job.get("catch_up").and_then(Value::as_bool) == Some(true) {
            ", a catch-up"
        } else {
            ""
        };
        let when = match job.get("scheduled_for").and_then(Value::as_str) {
            Some(at) => format!("the fire of {}{catch_up}", output::escape(at)),
            None => "run outside its cron".to_owned(),
        };
        head.push_str(&format!(
            "{:<10}{} ({when})\n",
            "schedule:",
            output::field(job, "schedule_id"),
        ));
    }
    if let Some(params) = job
        .get("data")
        .and_then(|d| d.get("params"))
        .and_then(Value::as_object)
        .filter(|p| !p.is_empty())
    {
        let text: Vec<String> = params
            .iter()
            .map(|(k, v)| {
                let text = format!("{k}={}", v.as_str().unwrap_or("?"));
                output::escape(&text).into_owned()
            })
            .collect();
        head.push_str(&format!("{:<10}{}\n", "params:", text.join(" ")));
    }
    head
}

async fn logs(client: &Client, global: &Global, mut args: JobsLogsArgs) -> Result<u8, CliError> {
    args.job = resolve_job(client, &args.job).await?;
    let job = client.get(&format!("/api/jobs/{}", args.job), &[]).await?;
    let agents_list = client.get("/api/agents", &[]).await?;
    let mut runs = run_labels(&job, &agents_list);
    if let Some(want) = &args.run {
        let agent_of: HashMap<String, String> = job_runs(&job)
            .iter()
            .map(|r| (output::field(r, "run_id"), output::field(r, "agent_id")))
            .collect();
        let exact: Vec<(String, String)> = runs
            .iter()
            .filter(|(run, label)| {
                run == want || label == want || agent_of.get(run).is_some_and(|a| a == want)
            })
            .cloned()
            .collect();
        let chosen = if exact.is_empty() {
            runs.iter()
                .filter(|(run, _)| {
                    let part =
                        |id: &str| id.starts_with(want.as_str()) || id.ends_with(want.as_str());
                    part(run) || agent_of.get(run).is_some_and(|a| part(a))
                })
                .cloned()
                .collect()
        } else {
            exact
        };
        match chosen.len() {
            1 => runs = chosen,
            0 => {
                return Err(CliError::not_found(format!(
                    "job {} has no run matching {want:?} (give a run id, agent id or hostname; see `outpost jobs show {}`)",
                    args.job, args.job
                )));
            }
            n => {
                return Err(CliError::Usage(format!(
                    "{want:?} matches {n} runs of job {}; give a run id",
                    args.job
                )));
            }
        }
    }
    if args.follow {
        let mut printer = Printer::new(
            Options {
                run: args.run.as_ref().map(|_| runs[0].0.clone()),
                stream: args.stream,
                prefix: runs.len() > 1,
                json: global.json,
                quiet: false,
                announce: false,
            },
            runs.clone(),
        );
        follow::follow(client, &output::field(&job, "job_id"), &mut printer).await?;
    } else {
        print_outputs(client, &job, &runs, args.stream, false).await?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_follows_the_runs() {
        let one = |run: Value| json!({"runs": [run]});
        assert_eq!(
            exit_status(&one(json!({"status": "succeeded", "exit_code": 0}))),
            0
        );
        assert_eq!(
            exit_status(&one(json!({"status": "failed", "exit_code": 3}))),
            3
        );
        assert_eq!(
            exit_status(&one(json!({"status": "failed", "exit_code": 256}))),
            1
        );
        assert_eq!(exit_status(&one(json!({"status": "timed_out"}))), 124);
        assert_eq!(exit_status(&one(json!({"status": "lost"}))), 125);
        let two = json!({"runs": [{"status": "succeeded"}, {"status": "failed", "exit_code": 3}]});
        assert_eq!(exit_status(&two), 1);
        let ok = json!({"runs": [{"status": "succeeded"}, {"status": "succeeded"}]});
        assert_eq!(exit_status(&ok), 0);
    }

    #[test]
    fn times_are_rfc3339_or_ages() {
        let now = Utc::now();
        assert_eq!(
            parse_time("since", "2h", now).ok(),
            Some(now - chrono::Duration::hours(2))
        );
        assert!(parse_time("since", "2026-11-21T08:00:00Z", now).is_ok());
        for bad in ["", "h", "2y", "yesterday", "-"] {
            assert!(parse_time("since", bad, now).is_err(), "{bad}");
        }
    }
}
