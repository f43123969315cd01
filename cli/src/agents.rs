//! `outpost agents ls|show|rm|tag` and `outpost ping`, and naming agents by id, id prefix or
//! hostname.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{Value, json};

use crate::args::{AgentsCommand, Global, PingArgs, TagCommand};
use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, Cell, Table};

/// Runs an `agents` subcommand.
pub async fn run(client: &Client, global: &Global, cmd: AgentsCommand) -> Result<(), CliError> {
    match cmd {
        AgentsCommand::Ls { tag, status } => {
            let mut query = Vec::new();
            if let Some(tag) = tag {
                query.push(("tag", tag));
            }
            if let Some(status) = status {
                query.push(("status", status));
            }
            let agents = client.get("/api/agents", &query).await?;
            if global.json {
                output::print_json(&agents);
            } else {
                print_agents(&agents);
            }
            Ok(())
        }
        AgentsCommand::Show { agent } => {
            let id = resolve(client, &agent).await?;
            let agent = client.get(&format!("/api/agents/{id}"), &[]).await?;
            if global.json {
                output::print_json(&agent);
            } else {
                print_agent(&agent);
            }
            Ok(())
        }
        AgentsCommand::Rm { agent } => {
            let id = resolve(client, &agent).await?;
            // Read first, to say whom it was (the answer to DELETE is empty).
            let shown = client.get(&format!("/api/agents/{id}"), &[]).await?;
            client
                .json(Method::DELETE, &format!("/api/agents/{id}"), &[], None)
                .await?;
            if global.json {
                output::print_json(&json!({"agent_id": id, "deleted": true}));
            } else {
                let online = output::field(&shown, "status") == "online";
                eprintln!(
                    "Forgot agent {id} ({}); its open runs end as lost.{}",
                    output::field(&shown, "hostname"),
                    if online {
                        " It was online and was disconnected: if it is still installed, it registers again as a new agent."
                    } else {
                        ""
                    }
                );
            }
            Ok(())
        }
        AgentsCommand::Unrevoke { id: agent } => {
            client
                .json(
                    Method::POST,
                    &format!("/api/agents/{agent}/unrevoke"),
                    &[],
                    Some(&json!({})),
                )
                .await?;
            if global.json {
                output::print_json(&json!({"agent_id": agent, "unrevoked": true}));
            } else {
                eprintln!("Agent {agent} may enroll again.");
            }
            Ok(())
        }
        AgentsCommand::Tag(cmd) => tag(client, global, cmd).await,
    }
}

/// `outpost agents tag add|rm AGENT TAG…`: reads the agent's server-side tags, changes them
/// and writes them back (`PATCH /api/agents/{id}` replaces the whole list; two people
/// changing one agent's tags at the same instant may lose one change).
async fn tag(client: &Client, global: &Global, cmd: TagCommand) -> Result<(), CliError> {
    let (agent, tags, adding) = match cmd {
        TagCommand::Add { agent, tags } => (agent, tags, true),
        TagCommand::Rm { agent, tags } => (agent, tags, false),
    };
    let id = resolve(client, &agent).await?;
    let current = client.get(&format!("/api/agents/{id}"), &[]).await?;
    let strings = |key: &str| -> Vec<String> {
        current
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    };
    let mut server = strings("server_tags");
    let mut notes = Vec::new();
    for tag in &tags {
        let present = server.contains(tag);
        match (adding, present) {
            (true, false) => server.push(tag.clone()),
            (false, true) => server.retain(|t| t != tag),
            (true, true) => {}
            (false, false) => {
                let from = if strings("key_tags").contains(tag) {
                    "it comes from the agent's key (`outpost keys agent`)"
                } else if strings("agent_tags").contains(tag) {
                    "the agent declares it itself (OUTPOST_TAGS)"
                } else {
                    "the agent does not have it"
                };
                notes.push(format!(
                    "\"{}\" is not a server tag of {id}: {from}",
                    output::escape(tag)
                ));
            }
        }
    }
    let updated = client
        .json(
            Method::PATCH,
            &format!("/api/agents/{id}"),
            &[],
            Some(&json!({"tags": server})),
        )
        .await?;
    for note in notes {
        eprintln!("note: {note}");
    }
    if global.json {
        output::print_json(&updated);
    } else {
        eprintln!(
            "Agent {id} ({}): server tags {}; all tags {}",
            output::field(&updated, "hostname"),
            output::list(&updated, "server_tags"),
            output::list(&updated, "tags"),
        );
    }
    Ok(())
}

fn print_agents(agents: &Value) {
    let mut table = Table::new(vec![
        "ID",
        "HOSTNAME",
        "STATUS",
        "HEARTBEAT",
        "CPU",
        "MEM",
        "DISK",
        "VERSION",
        "TAGS",
    ]);
    for a in agents.as_array().into_iter().flatten() {
        let hb = a.get("last_heartbeat");
        let metric = |k: &str| output::percent(hb.and_then(|h| h.get(k)));
        table.row(vec![
            output::field(a, "agent_id").into(),
            output::field(a, "hostname").into(),
            Cell::status(&output::field(a, "status")),
            heartbeat_ago(a).into(),
            metric("cpu_percent").into(),
            metric("memory_percent").into(),
            metric("disk_percent").into(),
            output::field(a, "version").into(),
            output::list(a, "tags").into(),
        ]);
    }
    table.print();
}

/// When the last heartbeat was sampled, else when the agent was last heard from.
fn heartbeat_ago(agent: &Value) -> String {
    match agent.get("last_heartbeat") {
        Some(hb) if hb.get("timestamp").is_some() => output::ago(hb, "timestamp"),
        _ => output::ago(agent, "last_seen"),
    }
}

fn print_agent(a: &Value) {
    let colour = output::colour_stdout();
    let status = output::field(a, "status");
    let painted = match output::status_colour(&status) {
        Some(c) => output::paint(&status, c, colour),
        None => status,
    };
    let hb = a.get("last_heartbeat").cloned().unwrap_or(Value::Null);
    let mut lines = vec![
        ("id", output::field(a, "agent_id")),
        ("hostname", output::field(a, "hostname")),
        ("status", painted),
        ("ip", output::field(a, "ip")),
        ("version", output::field(a, "version")),
        (
            "platform",
            format!("{}/{}", output::field(a, "os"), output::field(a, "arch")),
        ),
        ("key", output::field(a, "key_id")),
        ("tags", output::list(a, "tags")),
        ("server tags", output::list(a, "server_tags")),
        ("capabilities", output::list(a, "capabilities")),
        ("first seen", output::ago(a, "first_seen")),
        ("last seen", output::ago(a, "last_seen")),
        ("connected", output::ago(a, "connected_at")),
        ("heartbeat", heartbeat_ago(a)),
    ];
    if !hb.is_null() {
        lines.push((
            "metrics",
            format!(
                "cpu {}  mem {}  disk {}  load {}  up {}",
                output::percent(hb.get("cpu_percent")),
                output::percent(hb.get("memory_percent")),
                output::percent(hb.get("disk_percent")),
                hb.get("load1")
                    .and_then(Value::as_f64)
                    .map(|l| format!("{l:.2}"))
                    .unwrap_or_else(|| "-".into()),
                hb.get("uptime_s")
                    .and_then(Value::as_i64)
                    .map(|s| output::duration_ms(Some(s * 1000)))
                    .unwrap_or_else(|| "-".into()),
            ),
        ));
    }
    let scripts: Vec<String> = a
        .get("scripts")
        .and_then(Value::as_array)
        .map(|s| {
            s.iter()
                .filter_map(|s| s.get("name").and_then(Value::as_str))
                .map(|name| output::escape(name).into_owned())
                .collect()
        })
        .unwrap_or_default();
    lines.push((
        "scripts",
        if scripts.is_empty() {
            "-".into()
        } else {
            scripts.join(", ")
        },
    ));
    let mut out = String::new();
    for (label, value) in lines {
        out.push_str(&format!("{:<14}{value}\n", format!("{label}:")));
    }
    output::print_stdout(out.as_bytes());
}

/// `outpost ping AGENT`.
pub async fn ping(client: &Client, global: &Global, args: PingArgs) -> Result<(), CliError> {
    let id = resolve(client, &args.agent).await?;
    let body = json!({"command": "ping", "timeout_s": args.timeout});
    let started = std::time::Instant::now();
    let answer = client
        .json_within(
            Method::POST,
            &format!("/api/agents/{id}/command"),
            &[],
            Some(&body),
            std::time::Duration::from_secs(u64::from(args.timeout) + 10),
        )
        .await?;
    let elapsed = started.elapsed();
    if global.json {
        output::print_json(&answer);
    }
    if answer.get("success").and_then(Value::as_bool) != Some(true) {
        let error = answer.get("error").cloned().unwrap_or(Value::Null);
        return Err(CliError::Api {
            status: 200,
            code: error
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("failed")
                .to_owned(),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("ping ended {}", output::field(&answer, "status"))),
            url: client.base().to_owned(),
        });
    }
    if !global.json {
        output::print_stdout(
            format!(
                "pong from {id} in {} (server round trip {})\n",
                output::duration_ms(answer.get("duration_ms").and_then(Value::as_i64)),
                output::duration_ms(Some(elapsed.as_millis() as i64)),
            )
            .as_bytes(),
        );
    }
    Ok(())
}

/// Whether `s` looks like a full agent id (a UUID).
fn is_full_id(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == '-') && (c == '-' || c.is_ascii_hexdigit())
        })
}

/// The agent id meant by `name`: a full id as given; else the one agent whose hostname is
/// `name`, or whose id starts or ends with `name` (ids are UUIDv7: they start with a timestamp,
/// so agents registered together share a prefix and are told apart by their ends, which is
/// what [`labels`] shows). Unknown and ambiguous names are errors.
pub async fn resolve(client: &Client, name: &str) -> Result<String, CliError> {
    if is_full_id(name) {
        return Ok(name.to_owned());
    }
    let agents = client.get("/api/agents", &[]).await?;
    pick(&agents, name)
}

/// [`resolve`] against a list already fetched.
pub fn pick(agents: &Value, name: &str) -> Result<String, CliError> {
    let all = agents.as_array().map(Vec::as_slice).unwrap_or_default();
    let id_of = |a: &Value| a.get("agent_id").and_then(Value::as_str).map(str::to_owned);
    if let Some(id) = all.iter().filter_map(id_of).find(|id| id == name) {
        return Ok(id);
    }
    let by_host: Vec<String> = all
        .iter()
        .filter(|a| a.get("hostname").and_then(Value::as_str) == Some(name))
        .filter_map(id_of)
        .collect();
    let by_prefix: Vec<String> = all
        .iter()
        .filter_map(id_of)
        .filter(|id| !name.is_empty() && (id.starts_with(name) || id.ends_with(name)))
        .collect();
    let matches = if by_host.is_empty() {
        by_prefix
    } else {
        by_host
    };
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(CliError::not_found(format!(
            "no agent matches {name:?} (give an agent id, a unique start or end of one, or a hostname; see `outpost agents ls`)"
        ))),
        many => Err(CliError::Usage(format!(
            "{name:?} matches {} agents ({}); give an agent id",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// Short labels for agents, for prefixing output lines: the hostname when it is unique among
/// `ids`, else `hostname/` plus the id's last 8 characters (the random part of a UUIDv7),
/// else those 8 characters alone.
pub fn labels(agents: &Value, ids: &[String]) -> HashMap<String, String> {
    let host: HashMap<String, String> = agents
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some((
                a.get("agent_id")?.as_str()?.to_owned(),
                // Labels prefix output lines: a hostname is shown, never interpreted.
                output::escape(a.get("hostname")?.as_str()?).into_owned(),
            ))
        })
        .collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for id in ids {
        if let Some(h) = host.get(id) {
            *count.entry(h.as_str()).or_default() += 1;
        }
    }
    ids.iter()
        .map(|id| {
            let short = short_id(id);
            let label = match host.get(id) {
                Some(h) if count.get(h.as_str()) == Some(&1) => h.clone(),
                Some(h) => format!("{h}/{short}"),
                None => short,
            };
            (id.clone(), label)
        })
        .collect()
}

/// The last 8 characters of an id: the random end of a UUIDv7, unlike its timestamp start.
pub fn short_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    chars[chars.len().saturating_sub(8)..].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_by_id_hostname_and_prefix() {
        let agents = json!([
            {"agent_id": "0199aaaa-0000-7000-8000-000000000001", "hostname": "web-1"},
            {"agent_id": "0199aaaa-0000-7000-8000-000000000002", "hostname": "web-2"},
            {"agent_id": "0199bbbb-0000-7000-8000-000000000003", "hostname": "web-2"},
        ]);
        assert_eq!(
            pick(&agents, "web-1").ok().as_deref(),
            Some("0199aaaa-0000-7000-8000-000000000001")
        );
        assert_eq!(
            pick(&agents, "0199bb").ok().as_deref(),
            Some("0199bbbb-0000-7000-8000-000000000003")
        );
        assert_eq!(
            pick(&agents, "00000002").ok().as_deref(),
            Some("0199aaaa-0000-7000-8000-000000000002")
        );
        assert!(matches!(pick(&agents, "web-2"), Err(CliError::Usage(_))));
        assert!(matches!(pick(&agents, "0199aa"), Err(CliError::Usage(_))));
        assert!(matches!(pick(&agents, "db-1"), Err(CliError::Api { .. })));
        assert!(is_full_id("0199aaaa-0000-7000-8000-000000000001"));
        assert!(!is_full_id("web-1"));
    }

    #[test]
    fn labels_are_hostnames_unless_shared() {
        let agents = json!([
            {"agent_id": "x-aaaaaaaa", "hostname": "web"},
            {"agent_id": "x-bbbbbbbb", "hostname": "web"},
            {"agent_id": "x-cccccccc", "hostname": "db"},
        ]);
        let ids: Vec<String> = ["x-aaaaaaaa", "x-bbbbbbbb", "x-cccccccc", "x-dddddddd"]
            .map(String::from)
            .to_vec();
        let l = labels(&agents, &ids);
        assert_eq!(l["x-aaaaaaaa"], "web/aaaaaaaa");
        assert_eq!(l["x-cccccccc"], "db");
        assert_eq!(l["x-dddddddd"], "dddddddd");
    }
}
