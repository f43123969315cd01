//! `outpost events ls` and `outpost events follow`: the events the server records (CONTRACT.md §11),
//! listed a page at a time or printed as they come.
//!
//! `follow` reads `GET /api/events/stream` and prints each event as `ls` shows one. It is
//! meant to run for hours, so a connection that drops (a server restarted, a proxy's timeout,
//! the server ending a reader that fell behind with `lagged`) is opened again with
//! `Last-Event-ID`, from the last event printed, and nothing is printed twice or lost. Only
//! the first connection's failure is an error: after that the server is known to exist and
//! the CLI keeps trying, with a backoff, until Ctrl-C. A connection that goes silent (no
//! event and no keep-alive comment, which the server sends every 15 s) is taken for dead.

use std::time::Duration;

use serde_json::Value;

use crate::args::{EventsCommand, EventsFollowArgs, EventsLsArgs, Global};
use crate::client::Client;
use crate::error::CliError;
use crate::follow::{EventReader, SseEvent};
use crate::output::{self, Table};
use crate::schedules::resolve_id;

/// Silence after which a stream is taken for dead: three of the server's keep-alives.
const IDLE: Duration = Duration::from_secs(45);
/// The first wait before reconnecting; it doubles with each failure in a row.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest wait before reconnecting.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs an `events` subcommand.
pub async fn run(client: &Client, global: &Global, cmd: EventsCommand) -> Result<u8, CliError> {
    match cmd {
        EventsCommand::Ls(args) => list(client, global, args).await?,
        EventsCommand::Follow(args) => {
            let path = stream_path(client, args).await?;
            tokio::select! {
                result = follow(client, global, &path) => result?,
                // Ctrl-C is how a follow ends: not a failure.
                _ = tokio::signal::ctrl_c() => {}
            }
        }
    }
    Ok(0)
}

async fn list(client: &Client, global: &Global, args: EventsLsArgs) -> Result<(), CliError> {
    let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    if let Some(kind) = args.kind {
        query.push(("type", kind));
    }
    if let Some(subject) = &args.subject {
        query.push(("subject_id", resolve_id(client, subject).await?));
    }
    if let Some(cursor) = args.cursor {
        query.push(("cursor", cursor));
    }
    let page = client.get("/api/events", &query).await?;
    if global.json {
        output::print_json(&page);
        return Ok(());
    }
    let mut table = Table::new(vec!["TIME", "TYPE", "SUBJECT", "SUMMARY"]);
    for e in page
        .get("events")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        table.row(vec![
            output::field(e, "time").into(),
            output::field(e, "type").into(),
            subject(e).into(),
            output::field(e, "summary").into(),
        ]);
    }
    table.print();
    if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
        eprintln!("More events: add --cursor {cursor}");
    }
    Ok(())
}

/// What an event is about, for people: `schedule nightly-backup`.
fn subject(event: &Value) -> String {
    let part = |key: &str| {
        event
            .pointer(&format!("/subject/{key}"))
            .and_then(Value::as_str)
            .map_or_else(|| "-".to_owned(), |s| output::escape(s).into_owned())
    };
    format!("{} {}", part("kind"), part("name"))
}

/// The stream's path with the filters as its query.
async fn stream_path(client: &Client, args: EventsFollowArgs) -> Result<String, CliError> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(kind) = &args.kind {
        query.append_pair("type", kind);
    }
    if let Some(subject) = &args.subject {
        query.append_pair("subject_id", &resolve_id(client, subject).await?);
    }
    let query = query.finish();
    Ok(if query.is_empty() {
        "/api/events/stream".to_owned()
    } else {
        format!("/api/events/stream?{query}")
    })
}

/// Prints the stream's events until the first connection fails or a later one is refused
/// for good; a dropped connection is opened again after the last event printed.
async fn follow(client: &Client, global: &Global, path: &str) -> Result<(), CliError> {
    let mut last_id: Option<String> = None;
    let mut failures: u32 = 0;
    let mut connected = false;
    loop {
        let response = match client.events(path, last_id.as_deref()).await {
            Ok(response) => response,
            Err(err) if !connected || !passing(&err) => return Err(err),
            Err(err) => {
                failures += 1;
                let wait = backoff(failures);
                eprintln!("warning: {err}; trying again in {} s", wait.as_secs_f32());
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        connected = true;
        let mut reader = EventReader::new(response).with_idle_timeout(IDLE);
        let cause = loop {
            match reader.next().await {
                Ok(Some(event)) if event.event == "lagged" => {
                    break "the server ended the stream: this reader fell behind".to_owned();
                }
                Ok(Some(event)) => {
                    failures = 0;
                    if let Some(id) = &event.id {
                        last_id = Some(id.clone());
                    }
                    print(&event, global.json);
                }
                Ok(None) => break "the server closed the event stream".to_owned(),
                Err(e) => break e,
            }
        };
        failures += 1;
        let wait = backoff(failures);
        eprintln!("warning: {cause}; reconnecting in {} s", wait.as_secs_f32());
        tokio::time::sleep(wait).await;
    }
}

/// Whether a failure to reconnect may pass: the server unreachable for a while (restarting),
/// over a limit (429), or unable to answer now (5xx). Anything else (the key revoked, the
/// route gone) stays the same however often it is asked.
fn passing(err: &CliError) -> bool {
    match err {
        CliError::Unreachable { .. } => true,
        CliError::Api { status, .. } => *status == 429 || *status >= 500,
        CliError::Hinted { error, .. } => passing(error),
        _ => false,
    }
}

/// The wait before reconnection attempt `failures` (from 1): 0.5 s, doubling, at most 30 s.
fn backoff(failures: u32) -> Duration {
    let doubled = RETRY_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(RETRY_MAX)
}

/// One event: a line like `events ls`'s rows, or its JSON on one line.
fn print(event: &SseEvent, json: bool) {
    let value: Value = match serde_json::from_str(&event.data) {
        Ok(value) => value,
        Err(_) => {
            eprintln!(
                "warning: an event that is not JSON was skipped: {}",
                event.data
            );
            return;
        }
    };
    let line = if json {
        value.to_string()
    } else {
        format!(
            "{}  {:<20}  {}  {}",
            output::field(&value, "time"),
            output::field(&value, "type"),
            subject(&value),
            output::field(&value, "summary")
        )
    };
    output::print_stdout(format!("{line}\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::args::{Cli, Command};

    fn events(args: &[&str]) -> EventsCommand {
        let mut all = vec!["outpost", "events"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).map(|c| c.command) {
            Ok(Command::Events(cmd)) => cmd,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn ls_and_follow_take_the_same_filters() {
        match events(&["ls", "--type", "schedule.missed", "--subject", "x"]) {
            EventsCommand::Ls(a) => {
                assert_eq!(a.kind.as_deref(), Some("schedule.missed"));
                assert_eq!(a.subject.as_deref(), Some("x"));
            }
            other => panic!("{other:?}"),
        }
        match events(&["follow", "--type", "schedule", "--subject", "x"]) {
            EventsCommand::Follow(a) => {
                assert_eq!(a.kind.as_deref(), Some("schedule"));
                assert_eq!(a.subject.as_deref(), Some("x"));
            }
            other => panic!("{other:?}"),
        }
        match events(&["follow"]) {
            EventsCommand::Follow(a) => assert!(a.kind.is_none() && a.subject.is_none()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reconnections_back_off_to_a_ceiling_and_only_for_passing_failures() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(7), RETRY_MAX);
        assert_eq!(backoff(u32::MAX), RETRY_MAX);
        let api = |status| CliError::Api {
            status,
            code: String::new(),
            message: String::new(),
            url: String::new(),
        };
        assert!(passing(&api(429)) && passing(&api(503)));
        assert!(!passing(&api(401)) && !passing(&api(403)) && !passing(&api(400)));
        assert!(passing(&CliError::Unreachable {
            url: String::new(),
            cause: String::new()
        }));
    }

    #[test]
    fn a_subject_shows_its_kind_and_name_escaped() {
        let e = json!({"subject": {"kind": "schedule", "name": "night\x1bly"}});
        assert_eq!(subject(&e), "schedule night\\x1bly");
        assert_eq!(subject(&json!({})), "- -");
    }
}
