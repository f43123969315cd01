//! `outpost rollouts …`: staged rollouts of an agent version (CONTRACT.md §17) and the fleet's
//! minimum version.
//!
//! The server runs a rollout (stages, health gate, halting); the CLI only shapes requests and
//! prints answers. Flags the user leaves out are left out of the request, so the server's
//! defaults apply and stay in one place. A rollout is named by its id only: the API has no
//! lookup by part of one, and rollouts are few enough to pick from `rollouts ls`.
//!
//! Hosts are named by hostname in tables (by agent id only when the agent is forgotten and has
//! none); `--json` prints the agent ids as the API gives them.

use std::io::{BufRead, IsTerminal, Write};

use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::args::{
    Global, RolloutPolicyArgs, RolloutShowArgs, RolloutStartArgs, RolloutsCommand, RolloutsLsArgs,
};
use crate::client::Client;
use crate::error::CliError;
use crate::jobs;
use crate::output::{self, Cell, Table};

/// Agents per page of `GET /api/rollouts/{id}/agents` (the API's largest).
const AGENTS_PAGE: u32 = 500;

/// Agent states in the order a person reads them: done, then failing, then on the way.
const STATE_ORDER: [&str; 12] = [
    "healthy",
    "ahead",
    "skipped",
    "failed",
    "checking",
    "soaking",
    "updating",
    "pending",
    "revert_pending",
    "reverting",
    "reverted",
    "revert_failed",
];

/// Agent states that count as done in `ls`'s PROGRESS.
const DONE: [&str; 3] = ["healthy", "skipped", "ahead"];

/// Runs a `rollouts` subcommand.
pub async fn run(client: &Client, global: &Global, cmd: RolloutsCommand) -> Result<u8, CliError> {
    match cmd {
        RolloutsCommand::Start(args) => {
            let body = start_body(&args);
            let rollout = client
                .json(Method::POST, "/api/rollouts", &[], Some(&body))
                .await
                .map_err(|e| hint(e, None))?;
            print_rollout_or_json(global, &rollout);
        }
        RolloutsCommand::Ls(args) => list(client, global, args).await?,
        RolloutsCommand::Show(args) => show(client, global, args).await?,
        RolloutsCommand::Pause { rollout } => act(client, global, &rollout, "pause").await?,
        RolloutsCommand::Resume { rollout } => act(client, global, &rollout, "resume").await?,
        RolloutsCommand::Abort { rollout } => act(client, global, &rollout, "abort").await?,
        RolloutsCommand::Rollback { rollout, yes } => {
            if !yes {
                // Nobody to ask: refused before anything is sent.
                if !std::io::stdin().is_terminal() {
                    return Err(CliError::Usage(
                        "a rollback asks for confirmation and stdin is not a terminal; add --yes to roll back without asking".into(),
                    ));
                }
                let shown = client.get(&path(&rollout)?, &[]).await?;
                confirm(&rollback_question(&shown))?;
            }
            act(client, global, &rollout, "rollback").await?;
        }
        RolloutsCommand::Policy(args) => policy(client, global, args).await?,
    }
    Ok(0)
}

/// `/api/rollouts/{id}`. Ids are made of letters, digits, `-` and `_`: anything else (a `/`, a `?`,
/// `..`) would send the request elsewhere, and names no rollout.
fn path(id: &str) -> Result<String, CliError> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_');
    if id.is_empty() || !id.bytes().all(plain) {
        return Err(CliError::not_found(format!(
            "no rollout {:?} (give a rollout id; see `outpost rollouts ls`)",
            output::escape(id)
        )));
    }
    Ok(format!("/api/rollouts/{id}"))
}

/// `POST /api/rollouts`' body from `start`'s flags; what was not given is left out.
fn start_body(args: &RolloutStartArgs) -> Value {
    let mut body = Map::new();
    body.insert("version".into(), json!(args.version));
    let target = if args.all {
        json!({"all": true})
    } else {
        json!({"tags": args.tags})
    };
    body.insert("target".into(), target);
    if let Some(canary) = args.canary {
        body.insert("canary".into(), json!(canary));
    }
    if let Some(waves) = &args.waves {
        body.insert("waves".into(), json!(waves.0));
    }
    if let Some(max) = args.max_in_flight {
        body.insert("max_in_flight".into(), json!(max));
    }
    let mut health = Map::new();
    for (key, value) in [
        ("online_within_s", args.online_within),
        ("soak_s", args.soak),
        ("min_healthy_percent", args.min_healthy),
    ] {
        if let Some(value) = value {
            health.insert(key.into(), json!(value));
        }
    }
    if let Some(script) = &args.check_script {
        health.insert("script".into(), json!(script));
    }
    if !health.is_empty() {
        body.insert("health".into(), Value::Object(health));
    }
    Value::Object(body)
}

/// The server's rollout errors, with what to do next; `id` is the rollout acted on.
fn hint(err: CliError, id: Option<&str>) -> CliError {
    let hint = match &err {
        CliError::Api { code, .. } if code == "rollout_conflict" => {
            "`outpost rollouts ls` shows the active rollouts; wait for the one holding these agents, or abort it".to_owned()
        }
        CliError::Api { code, .. } if code == "rollout_state" => format!(
            "`outpost rollouts show {}` shows its state; pause needs a running rollout, resume a paused or halted one",
            id.unwrap_or("ROLLOUT")
        ),
        _ => return err,
    };
    err.with_hint(hint)
}

/// `POST /api/rollouts/{id}/{action}` and the rollout it answers.
async fn act(client: &Client, global: &Global, id: &str, action: &str) -> Result<(), CliError> {
    let rollout = client
        .json(Method::POST, &format!("{}/{action}", path(id)?), &[], None)
        .await
        .map_err(|e| hint(e, Some(id)))?;
    print_rollout_or_json(global, &rollout);
    Ok(())
}

fn print_rollout_or_json(global: &Global, rollout: &Value) {
    if global.json {
        output::print_json(rollout);
    } else {
        output::print_stdout(rollout_text(rollout).as_bytes());
    }
}

fn rollouts_of(page: &Value) -> impl Iterator<Item = &Value> {
    page.get("rollouts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn stages_of(rollout: &Value) -> impl Iterator<Item = &Value> {
    rollout
        .get("stages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn count(counts: &Value, state: &str) -> i64 {
    counts.get(state).and_then(Value::as_i64).unwrap_or(0)
}

/// `done/agents`: the agents healthy, skipped or ahead, over all stages, out of the rollout's.
fn progress(rollout: &Value) -> String {
    let done: i64 = stages_of(rollout)
        .filter_map(|s| s.get("counts"))
        .map(|c| DONE.iter().map(|state| count(c, state)).sum::<i64>())
        .sum();
    format!("{done}/{}", output::field(rollout, "agents"))
}

async fn list(client: &Client, global: &Global, args: RolloutsLsArgs) -> Result<(), CliError> {
    let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    if let Some(before) = args.before {
        query.push(("before", before));
    }
    let page = client.get("/api/rollouts", &query).await?;
    if global.json {
        output::print_json(&page);
        return Ok(());
    }
    print_list(&page);
    if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
        eprintln!("More rollouts: add --before {}", output::escape(cursor));
    }
    Ok(())
}

fn print_list(page: &Value) {
    let mut table = Table::new(vec![
        "ID", "VERSION", "STATE", "AGENTS", "PROGRESS", "CREATED",
    ]);
    for r in rollouts_of(page) {
        table.row(vec![
            output::field(r, "id").into(),
            output::field(r, "version").into(),
            Cell::status(&output::field(r, "state")),
            output::field(r, "agents").into(),
            progress(r).into(),
            output::ago(r, "created_at").into(),
        ]);
    }
    table.print();
}

/// A stage's counts by state, in [`STATE_ORDER`], zeros left out: `healthy 2, updating 1`.
fn counts_text(counts: Option<&Value>) -> String {
    let Some(by) = counts.and_then(Value::as_object) else {
        return "-".into();
    };
    let mut parts: Vec<(usize, String)> = by
        .iter()
        .filter_map(|(state, n)| {
            let n = n.as_i64().filter(|n| *n > 0)?;
            let rank = STATE_ORDER
                .iter()
                .position(|s| s == state)
                .unwrap_or(STATE_ORDER.len());
            Some((rank, format!("{} {n}", output::escape(state))))
        })
        .collect();
    parts.sort();
    if parts.is_empty() {
        "-".into()
    } else {
        parts
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The health gate in words: `online within 300s, soak 120s, 100% healthy, script x`.
fn health_text(health: Option<&Value>) -> String {
    let Some(h) = health.filter(|h| h.is_object()) else {
        return "-".into();
    };
    let mut parts = vec![
        format!("online within {}s", output::field(h, "online_within_s")),
        format!("soak {}s", output::field(h, "soak_s")),
        format!("{}% healthy", output::field(h, "min_healthy_percent")),
    ];
    if h.get("script").and_then(Value::as_str).is_some() {
        parts.push(format!("script {}", output::field(h, "script")));
    }
    parts.join(", ")
}

/// Each wave's percentage: `10,40,50`.
fn waves_text(rollout: &Value) -> String {
    let waves: Vec<String> = rollout
        .get("waves")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|w| output::escape(&w.to_string()).into_owned())
        .collect();
    if waves.is_empty() {
        "-".into()
    } else {
        waves.join(",")
    }
}

/// A rollout for people: its fields, then one line per stage.
fn rollout_text(r: &Value) -> String {
    let state = output::field(r, "state");
    let state = match output::status_colour(&state) {
        Some(c) => output::paint(&state, c, output::colour_stdout()),
        None => state,
    };
    let rows: Vec<(&str, String)> = vec![
        ("id", output::field(r, "id")),
        ("version", output::field(r, "version")),
        ("state", state),
        ("reason", output::field(r, "reason")),
        ("target", jobs::target_text(r.get("target"))),
        ("agents", output::field(r, "agents")),
        ("canary", output::field(r, "canary")),
        ("waves", waves_text(r)),
        (
            "max in flight",
            format!("{}%", output::field(r, "max_in_flight")),
        ),
        ("health", health_text(r.get("health"))),
        ("created by", output::field(r, "created_by")),
        ("created", output::ago(r, "created_at")),
        ("updated", output::ago(r, "updated_at")),
        ("finished", output::ago(r, "finished_at")),
    ];
    let mut out = String::new();
    for (label, value) in rows {
        out.push_str(&format!("{:<15}{value}\n", format!("{label}:")));
    }
    let stages: Vec<(String, String, String)> = stages_of(r)
        .map(|s| {
            let agents = s.get("agents").and_then(Value::as_i64).unwrap_or(0);
            (
                output::field(s, "name"),
                format!("{agents} agent{}", if agents == 1 { "" } else { "s" }),
                counts_text(s.get("counts")),
            )
        })
        .collect();
    if !stages.is_empty() {
        let name_w = stages
            .iter()
            .map(|s| s.0.chars().count())
            .max()
            .unwrap_or(0);
        let agents_w = stages
            .iter()
            .map(|s| s.1.chars().count())
            .max()
            .unwrap_or(0);
        out.push_str("stages:\n");
        for (name, agents, counts) in stages {
            out.push_str(&format!(
                "  {name:<name_w$}  {agents:<agents_w$}  {counts}\n"
            ));
        }
    }
    out
}

async fn show(client: &Client, global: &Global, args: RolloutShowArgs) -> Result<(), CliError> {
    let rollout = client.get(&path(&args.rollout)?, &[]).await?;
    let with_agents = args.agents || args.stage.is_some() || args.state.is_some();
    if !with_agents {
        print_rollout_or_json(global, &rollout);
        return Ok(());
    }
    let id = rollout
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or(&args.rollout)
        .to_owned();
    let agents = all_agents(client, &id, args.stage, args.state.as_deref()).await?;
    if global.json {
        output::print_json(&json!({"rollout": rollout, "agents": agents}));
        return Ok(());
    }
    output::print_stdout(rollout_text(&rollout).as_bytes());
    output::print_stdout(b"\n");
    print_agents(&rollout, &agents);
    Ok(())
}

/// Every agent of the rollout the filters keep, page by page.
async fn all_agents(
    client: &Client,
    id: &str,
    stage: Option<u32>,
    state: Option<&str>,
) -> Result<Vec<Value>, CliError> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query: Vec<(&str, String)> = vec![("limit", AGENTS_PAGE.to_string())];
        if let Some(stage) = stage {
            query.push(("stage", stage.to_string()));
        }
        if let Some(state) = state {
            query.push(("state", state.to_owned()));
        }
        if let Some(after) = &after {
            query.push(("after", after.clone()));
        }
        let page = client.get(&format!("{}/agents", path(id)?), &query).await?;
        all.extend(
            page.get("agents")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .cloned(),
        );
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(next) if after.as_deref() != Some(next) => after = Some(next.to_owned()),
            _ => return Ok(all),
        }
    }
}

/// An agent's host name, or its id when the agent is forgotten (no host name any more).
fn host_of(agent: &Value) -> String {
    match agent.get("hostname").and_then(Value::as_str) {
        Some(host) if !host.is_empty() => output::escape(host).into_owned(),
        _ => output::field(agent, "agent_id"),
    }
}

/// The name of stage `n` in `rollout` (`canary`, `wave 1`), else the number.
fn stage_name(rollout: &Value, n: Option<i64>) -> String {
    let Some(n) = n else { return "-".into() };
    stages_of(rollout)
        .find(|s| s.get("stage").and_then(Value::as_i64) == Some(n))
        .map(|s| output::field(s, "name"))
        .unwrap_or_else(|| n.to_string())
}

fn print_agents(rollout: &Value, agents: &[Value]) {
    let mut table = Table::new(vec!["HOSTNAME", "STAGE", "STATE", "FROM", "NOW", "REASON"]);
    for a in agents {
        table.row(vec![
            host_of(a).into(),
            stage_name(rollout, a.get("stage").and_then(Value::as_i64)).into(),
            Cell::status(&output::field(a, "state")),
            output::field(a, "from_version").into(),
            output::field(a, "version").into(),
            output::field(a, "reason").into(),
        ]);
    }
    table.print();
}

fn rollback_question(rollout: &Value) -> String {
    format!(
        "Roll back rollout {} (version {}, {}, {} agents)? Every agent it updated is sent back to the version it had.",
        output::field(rollout, "id"),
        output::field(rollout, "version"),
        output::field(rollout, "state"),
        output::field(rollout, "agents"),
    )
}

/// Whether an answer to a y/N question is yes.
fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Asks `question` on stderr and reads y/N from stdin (a terminal: the caller checks); anything
/// but yes refuses.
fn confirm(question: &str) -> Result<(), CliError> {
    let stdin = std::io::stdin();
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Other(format!("cannot read the answer: {e}")))?;
    if is_yes(&line) {
        Ok(())
    } else {
        Err(CliError::Other(
            "not confirmed; nothing was rolled back".into(),
        ))
    }
}

async fn policy(client: &Client, global: &Global, args: RolloutPolicyArgs) -> Result<(), CliError> {
    let policy = if args.clear || args.min_version.is_some() {
        let body = json!({"min_agent_version": args.min_version});
        client
            .json(Method::PUT, "/api/fleet/policy", &[], Some(&body))
            .await?
    } else {
        client.get("/api/fleet/policy", &[]).await?
    };
    if global.json {
        output::print_json(&policy);
    } else {
        print_policy(&policy);
    }
    Ok(())
}

/// The fleet policy for people: the minimum, the agents below it, the desired versions.
fn print_policy(p: &Value) {
    output::print_stdout(policy_head(p).as_bytes());
    let below: Vec<&Value> = p
        .get("below")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if !below.is_empty() {
        output::print_stdout(b"\n");
        let mut table = Table::new(vec!["HOSTNAME", "VERSION"]);
        for a in &below {
            table.row(vec![host_of(a).into(), output::field(a, "version").into()]);
        }
        table.print();
        let total = p.get("agents_below").and_then(Value::as_i64).unwrap_or(0);
        if total > below.len() as i64 {
            output::print_stdout(format!("… and {} more\n", total - below.len() as i64).as_bytes());
        }
    }
    output::print_stdout(b"\n");
    let desired: Vec<&Value> = p
        .get("desired")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if desired.is_empty() {
        output::print_stdout(
            b"No desired versions yet (a target gets one when a rollout over it completes).\n",
        );
        return;
    }
    let mut table = Table::new(vec!["TARGET", "VERSION", "ROLLOUT"]);
    for d in desired {
        table.row(vec![
            jobs::target_text(d.get("target")).into(),
            output::field(d, "version").into(),
            output::field(d, "rollout_id").into(),
        ]);
    }
    table.print();
}

/// The policy's first lines: the minimum (or none) and how many agents run below it.
fn policy_head(p: &Value) -> String {
    let min = match p.get("min_agent_version").and_then(Value::as_str) {
        Some(_) => output::field(p, "min_agent_version"),
        None => "none".into(),
    };
    format!(
        "{:<15}{min}\n{:<15}{}\n",
        "min version:",
        "agents below:",
        output::field(p, "agents_below")
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use clap::error::ErrorKind;

    use super::*;
    use crate::args::{Cli, Command, Waves, parse_waves};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut all = vec!["outpost", "rollouts"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
    }

    fn rollouts(args: &[&str]) -> RolloutsCommand {
        match parse(args).map(|c| c.command) {
            Ok(Command::Rollouts(cmd)) => cmd,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn start_args(args: &[&str]) -> RolloutStartArgs {
        let mut all = vec!["start"];
        all.extend_from_slice(args);
        match rollouts(&all) {
            RolloutsCommand::Start(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn kind(args: &[&str]) -> Option<ErrorKind> {
        parse(args).err().map(|e| e.kind())
    }

    #[test]
    fn start_sends_only_what_was_given() {
        assert_eq!(
            start_body(&start_args(&["1.4.0", "--tag", "web"])),
            json!({"version": "1.4.0", "target": {"tags": ["web"]}})
        );
        assert_eq!(
            start_body(&start_args(&["1.4.0", "--all", "--soak", "600"])),
            json!({"version": "1.4.0", "target": {"all": true}, "health": {"soak_s": 600}})
        );
        let all = start_args(&[
            "2.0.1",
            "--tag",
            "db",
            "--tag",
            "eu",
            "--canary",
            "3",
            "--waves",
            "10, 40,50",
            "--max-in-flight",
            "5",
            "--online-within",
            "120",
            "--soak",
            "300",
            "--min-healthy",
            "95",
            "--check-script",
            "db-health",
        ]);
        assert_eq!(
            start_body(&all),
            json!({
                "version": "2.0.1",
                "target": {"tags": ["db", "eu"]},
                "canary": 3,
                "waves": [10, 40, 50],
                "max_in_flight": 5,
                "health": {
                    "online_within_s": 120,
                    "soak_s": 300,
                    "min_healthy_percent": 95,
                    "script": "db-health",
                },
            })
        );
    }

    #[test]
    fn start_needs_one_target_and_waves_that_are_numbers() {
        assert_eq!(
            kind(&["start", "1.4.0"]),
            Some(ErrorKind::MissingRequiredArgument)
        );
        assert_eq!(
            kind(&["start", "--all"]),
            Some(ErrorKind::MissingRequiredArgument)
        );
        assert_eq!(
            kind(&["start", "1.4.0", "--all", "--tag", "web"]),
            Some(ErrorKind::ArgumentConflict)
        );
        for bad in ["10,,90", "ten", "10;90", "10,-90", "", "50,", "1.5"] {
            assert_eq!(
                kind(&["start", "1.4.0", "--all", "--waves", bad]),
                Some(ErrorKind::ValueValidation),
                "{bad:?}"
            );
        }
        // Sums are the server's to check.
        assert_eq!(parse_waves("30,30"), Ok(Waves(vec![30, 30])));
        assert_eq!(parse_waves("100"), Ok(Waves(vec![100])));
        let message = parse_waves("10,x").expect_err("not a number");
        assert!(message.contains("10,40,50"), "{message}");
        assert_eq!(
            kind(&["start", "1.4.0", "--all", "--canary", "-1"]),
            Some(ErrorKind::UnknownArgument)
        );
    }

    #[test]
    fn the_other_commands_parse() {
        match rollouts(&["ls"]) {
            RolloutsCommand::Ls(a) => assert_eq!((a.limit, a.before), (20, None)),
            other => panic!("{other:?}"),
        }
        match rollouts(&["ls", "--limit", "5", "--before", "c1"]) {
            RolloutsCommand::Ls(a) => assert_eq!((a.limit, a.before.as_deref()), (5, Some("c1"))),
            other => panic!("{other:?}"),
        }
        match rollouts(&["show", "r1", "--stage", "0", "--state", "failed"]) {
            RolloutsCommand::Show(a) => {
                assert_eq!(a.rollout, "r1");
                assert!(!a.agents);
                assert_eq!((a.stage, a.state.as_deref()), (Some(0), Some("failed")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            kind(&["show", "r1", "--state", "broken"]),
            Some(ErrorKind::InvalidValue)
        );
        for (args, want) in [
            (&["pause", "r1"][..], "pause"),
            (&["resume", "r1"], "resume"),
            (&["abort", "r1"], "abort"),
            (&["rollback", "r1"], "rollback"),
            (&["rollback", "r1", "--yes"], "rollback --yes"),
            (&["rollback", "-y", "r1"], "rollback --yes"),
        ] {
            let got = match rollouts(args) {
                RolloutsCommand::Pause { rollout } => ("pause", rollout),
                RolloutsCommand::Resume { rollout } => ("resume", rollout),
                RolloutsCommand::Abort { rollout } => ("abort", rollout),
                RolloutsCommand::Rollback { rollout, yes } => {
                    (if yes { "rollback --yes" } else { "rollback" }, rollout)
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(got, (want, "r1".to_owned()), "{args:?}");
        }
        match rollouts(&["policy"]) {
            RolloutsCommand::Policy(p) => assert!(p.min_version.is_none() && !p.clear),
            other => panic!("{other:?}"),
        }
        match rollouts(&["policy", "--min-version", "1.3.0"]) {
            RolloutsCommand::Policy(p) => assert_eq!(p.min_version.as_deref(), Some("1.3.0")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            kind(&["policy", "--min-version", "1.3.0", "--clear"]),
            Some(ErrorKind::ArgumentConflict)
        );
        assert_eq!(kind(&["pause"]), Some(ErrorKind::MissingRequiredArgument));
    }

    fn sample() -> Value {
        json!({
            "id": "0199b3c4-0000-7000-8000-000000000001",
            "version": "1.4.0",
            "target": {"tags": ["web"]},
            "state": "wave 1",
            "stage": 1,
            "reason": null,
            "agents": 12,
            "canary": 2,
            "waves": [50, 50],
            "max_in_flight": 10,
            "health": {"online_within_s": 300, "soak_s": 120, "min_healthy_percent": 100, "script": null},
            "stages": [
                {"stage": 0, "name": "canary", "agents": 2, "counts": {"healthy": 2}, "listed": []},
                {"stage": 1, "name": "wave 1", "agents": 5,
                 "counts": {"pending": 1, "updating": 2, "healthy": 1, "ahead": 1, "failed": 0}, "listed": []},
                {"stage": 2, "name": "wave 2", "agents": 5, "counts": {"pending": 5}, "listed": []},
            ],
            "created_by": "ada@example.com",
            "created_at": "2026-03-08T07:00:00Z",
            "updated_at": "2026-03-08T07:05:00Z",
            "finished_at": null,
        })
    }

    #[test]
    fn a_rollout_reads_as_fields_then_stages() {
        let text = rollout_text(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "id:            0199b3c4-0000-7000-8000-000000000001"
        );
        for want in [
            "version:       1.4.0",
            "state:         wave 1",
            "reason:        -",
            "target:        tag:web",
            "agents:        12",
            "waves:         50,50",
            "max in flight: 10%",
            "health:        online within 300s, soak 120s, 100% healthy",
            "created by:    ada@example.com",
            "finished:      -",
        ] {
            assert!(lines.contains(&want), "{want:?} in\n{text}");
        }
        let stages = &lines[lines.iter().position(|l| *l == "stages:").expect("stages")..];
        assert_eq!(
            stages[1..],
            [
                "  canary  2 agents  healthy 2",
                "  wave 1  5 agents  healthy 1, ahead 1, updating 2, pending 1",
                "  wave 2  5 agents  pending 5",
            ]
        );
        let mut halted = sample();
        halted["state"] = json!("halted");
        halted["reason"] = json!("wave 1: 60% healthy\u{1b}[2J, below 100%");
        halted["health"]["script"] = json!("web-check");
        let text = rollout_text(&halted);
        assert!(
            text.contains("reason:        wave 1: 60% healthy\\x1b[2J, below 100%\n"),
            "{text}"
        );
        assert!(text.contains(", script web-check\n"), "{text}");
    }

    #[test]
    fn progress_counts_the_agents_done() {
        // healthy 2 + healthy 1 + ahead 1, out of 12.
        assert_eq!(progress(&sample()), "4/12");
        let mut skipped = sample();
        skipped["stages"][2]["counts"] = json!({"skipped": 3, "failed": 2});
        assert_eq!(progress(&skipped), "7/12");
        assert_eq!(progress(&json!({"agents": 0, "stages": []})), "0/0");
        assert_eq!(counts_text(Some(&json!({}))), "-");
        assert_eq!(counts_text(None), "-");
        assert_eq!(
            counts_text(Some(&json!({"new_state": 1, "reverted": 2}))),
            "reverted 2, new_state 1"
        );
        assert_eq!(stage_name(&sample(), Some(1)), "wave 1");
        assert_eq!(stage_name(&sample(), Some(7)), "7");
        assert_eq!(
            host_of(&json!({"agent_id": "a1", "hostname": "web-1"})),
            "web-1"
        );
        assert_eq!(host_of(&json!({"agent_id": "a1", "hostname": null})), "a1");
    }

    #[test]
    fn ids_stay_one_path_segment_and_only_yes_confirms() {
        assert_eq!(
            path("0199b3c4-0000-7000-8000-000000000001").ok().as_deref(),
            Some("/api/rollouts/0199b3c4-0000-7000-8000-000000000001")
        );
        for bad in ["", "..", ".", "a/b", "a?b", "a#b", "a b", "é"] {
            assert!(
                matches!(path(bad), Err(CliError::Api { status: 404, .. })),
                "{bad:?}"
            );
        }
        for yes in ["y", "Y", "yes", " YES \n"] {
            assert!(is_yes(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yep", "y y"] {
            assert!(!is_yes(no), "{no:?}");
        }
        assert!(rollback_question(&sample()).contains("version 1.4.0, wave 1, 12 agents"));
    }

    #[test]
    fn the_policy_head_names_the_minimum() {
        assert_eq!(
            policy_head(&json!({"min_agent_version": "1.3.0", "agents_below": 2})),
            "min version:   1.3.0\nagents below:  2\n"
        );
        assert_eq!(
            policy_head(&json!({"min_agent_version": null, "agents_below": 0})),
            "min version:   none\nagents below:  0\n"
        );
    }
}
