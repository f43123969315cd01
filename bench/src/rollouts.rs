//! The `rollouts` scenario (CONTRACT.md §17): a staged rollout over the simulated agents, and
//! a crashing release stopped at its canaries.
//!
//! 1. The swarm starts at an old version (`--agent-version`, below the server's). A rollout to
//!    the server's own version (the build it ships, servable while nothing is published) goes
//!    over every agent of the swarm's tag: canary, waves, `max_in_flight`, a short soak. The
//!    simulated agents answer `update` as a supervised agent does (ack, ok, the connection
//!    closed, back 200–500 ms later at the version; `swarm.rs`). Measured: the time from the
//!    rollout's creation to `completed` (the server's own timestamps, and as seen by polling
//!    every 200 ms), each stage's share of it (as seen by polling), and the server's CPU
//!    (utime + stime from `/proc`) over it.
//! 2. A release that crashes: a version is published with `outpost-server release publish`
//!    (the file is never downloaded; the swarm's `--crash-version` is what crashes: an agent
//!    sent it comes back at its old version reporting `update_status: rolled_back`, as the real
//!    supervisor does after restoring the previous build). A rollout to it halts at its
//!    canaries. Measured: the time from the first canary's rollback report (its `at`, stamped
//!    by the simulated agent as it reconnects) to the halt (the rollout's `updated_at`, stamped
//!    by the engine's look that halted it, and the moment polling every 50 ms saw it), and
//!    from the rollout's creation to the halt. The rollout is then aborted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::Swarm;
use crate::report::Report;
use crate::server::{Client, Nodes, Server};

/// What the scenario needs from the harness.
pub struct Plan {
    /// The tag the rollouts target: the swarm's agents (`all` would take agents earlier
    /// scenarios left offline; they would be skipped, not waited for, but counted).
    pub tag: String,
    /// Agents carrying it.
    pub agents: u64,
    /// Canary agents of each rollout.
    pub canary: u32,
    /// The first rollout's waves, in percent of the non-canary agents.
    pub waves: Vec<u8>,
    /// Percent of the target updating at once.
    pub max_in_flight: u8,
    /// `health.soak_s`.
    pub soak_s: u32,
    /// Seconds the server's CPU is sampled for before the rollout, holding the same fleet
    /// idle: what the rollout's CPU compares with.
    pub idle_secs: u64,
    /// The version the swarm started at (for the words).
    pub from_version: String,
    /// The version the swarm treats as crashing; published for the second rollout.
    pub crash_version: String,
    /// Where the scratch files go (the release key, the published file).
    pub workdir: PathBuf,
    pub on: String,
}

/// The server's version, from `outpost-server --version` (what it ships and can serve while
/// nothing is published).
pub fn server_version(server: &Server) -> anyhow::Result<String> {
    let out = std::process::Command::new(server.binary())
        .arg("--version")
        .output()
        .context("outpost-server --version")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .last()
        .map(str::to_owned)
        .with_context(|| format!("outpost-server --version printed {text:?}"))
}

/// A time in a JSON field.
fn time(v: &Value, field: &str) -> anyhow::Result<DateTime<Utc>> {
    let text = v
        .get(field)
        .and_then(Value::as_str)
        .with_context(|| format!("no {field} in {v}"))?;
    Ok(DateTime::parse_from_rfc3339(text)?.with_timezone(&Utc))
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(0) as f64 / 1e6
}

/// A rollout's agents by state, over every stage.
fn totals(rollout: &Value) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for stage in rollout["stages"].as_array().into_iter().flatten() {
        for (state, n) in stage["counts"].as_object().into_iter().flatten() {
            *out.entry(state.clone()).or_default() += n.as_i64().unwrap_or(0);
        }
    }
    out
}

fn words(counts: &BTreeMap<String, i64>) -> String {
    counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Polls a rollout every `every` until `done` says its state ends the wait; returns the last
/// body, when that was seen (UTC), and each state with the time it was first seen.
async fn follow(
    client: &Client,
    id: &str,
    every: Duration,
    limit: Duration,
    started: Instant,
    done: impl Fn(&str) -> anyhow::Result<bool>,
) -> anyhow::Result<(Value, DateTime<Utc>, Vec<(String, f64)>)> {
    let path = format!("/api/rollouts/{id}");
    let mut seen: Vec<(String, f64)> = Vec::new();
    loop {
        let body = client.get(&path).await?;
        let at = Utc::now();
        let state = body["state"].as_str().unwrap_or("?").to_owned();
        if seen.last().map(|(s, _)| s.as_str()) != Some(state.as_str()) {
            seen.push((state.clone(), started.elapsed().as_secs_f64()));
        }
        if done(&state).with_context(|| format!("rollout {id}: {body}"))? {
            return Ok((body, at, seen));
        }
        if started.elapsed() > limit {
            bail!(
                "rollout {id} still {state} after {} s: {body}",
                limit.as_secs()
            );
        }
        tokio::time::sleep(every).await;
    }
}

pub async fn scenario(
    nodes: &Nodes,
    swarm: &Swarm,
    plan: &Plan,
    report: &mut Report,
) -> anyhow::Result<()> {
    let server = nodes.first();
    let client = server.client();
    let on = &plan.on;
    let version = server_version(server)?;
    {
        use outpost_protocol::release::Version;
        let parse = |v: &str, what: &str| {
            v.parse::<Version>()
                .map_err(|e| anyhow::anyhow!("{what} {v:?}: {e}"))
        };
        let (server_v, from, crash) = (
            parse(&version, "the server's version")?,
            parse(&plan.from_version, "--rollout-from-version")?,
            parse(&plan.crash_version, "--rollout-crash-version")?,
        );
        if from >= server_v || crash <= server_v {
            bail!(
                "the swarm starts at {from} and crashes on {crash}: the first must be below the \
                 server's version {server_v} and the second above it"
            );
        }
    }
    let limit = Duration::from_secs(300 + plan.agents / 20);
    let health = json!({"online_within_s": 60, "soak_s": plan.soak_s});

    // What holding the fleet costs without a rollout (heartbeats, the engine's empty looks).
    let cpu = nodes.cpu_seconds()?;
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(plan.idle_secs)).await;
    let idle_percent = (nodes.cpu_seconds()? - cpu) / idle_started.elapsed().as_secs_f64() * 100.0;

    // 1. The fleet to the server's version.
    let cpu = nodes.cpu_seconds()?;
    let swarm_cpu = swarm.cpu_seconds()?;
    let writer = nodes.writer().await?;
    let started = Instant::now();
    let created = client
        .post(
            "/api/rollouts",
            &json!({"version": version, "target": {"tags": [plan.tag]}, "canary": plan.canary,
                    "waves": plan.waves, "max_in_flight": plan.max_in_flight, "health": health}),
        )
        .await
        .with_context(|| format!("starting a rollout of {version} (the server's version)"))?;
    let id = created["id"].as_str().context("no rollout id")?.to_owned();
    eprintln!(
        "outpost-bench: rollout {id} of {version} to {} agents (tag {})",
        created["agents"], plan.tag
    );
    let (done, _, seen) = follow(
        &client,
        &id,
        Duration::from_millis(200),
        limit,
        started,
        |state| match state {
            "completed" => Ok(true),
            "halted" | "aborted" | "rolled_back" | "rolling_back" | "paused" => {
                bail!("the rollout to the server's version ended {state}")
            }
            _ => Ok(false),
        },
    )
    .await?;
    let wall = started.elapsed().as_secs_f64();
    let server_cpu = nodes.cpu_seconds()? - cpu;
    let swarm_cpu = swarm.cpu_seconds()? - swarm_cpu;
    let (writer, writer_json) = nodes.writer().await?.since(&writer, wall);
    let took = secs(time(&done, "finished_at")? - time(&done, "created_at")?);
    let counts = totals(&done);
    let agents = done["agents"].as_i64().unwrap_or(0);
    // Each state's share of the wall time, as polling saw it.
    let stages: Vec<(String, f64)> = seen
        .iter()
        .zip(seen.iter().skip(1))
        .map(|((state, from), (_, to))| (state.clone(), to - from))
        .collect();
    let stage_words = stages
        .iter()
        .map(|(state, s)| format!("{state} {s:.1}"))
        .collect::<Vec<_>>()
        .join(", ");
    // The engine's looks that sent each stage's updates (an agent's `sent_at` is its look's).
    let looks = send_looks(&client, &id).await?;
    let look_words = looks
        .iter()
        .map(|(stage, times)| {
            let name = if *stage == 0 {
                "canary".to_owned()
            } else {
                format!("wave {stage}")
            };
            match (times.first(), times.last()) {
                (Some(first), Some(last)) if times.len() > 1 => format!(
                    "{name} {} looks {:.1} s apart",
                    times.len(),
                    secs(*last - *first) / (times.len() - 1) as f64
                ),
                _ => format!("{name} {}", times.len()),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let shape = format!(
        "canary {}, waves {:?} %, max_in_flight {} %, soak {} s",
        plan.canary, plan.waves, plan.max_in_flight, plan.soak_s
    );
    report.row(
        &format!(
            "rollout of the server's version to {agents} agents ({shape}): created to completed{on}"
        ),
        "—",
        "—",
        format!(
            "{took:.1} s (seen by polling every 200 ms: {wall:.1} s; stages as seen, s: {stage_words}; the engine's looks that sent updates: {look_words}; {}; from {})",
            words(&counts),
            plan.from_version
        ),
        json!({"rollout_id": id, "version": version, "agents": agents, "canary": plan.canary,
               "waves": plan.waves, "max_in_flight": plan.max_in_flight, "soak_s": plan.soak_s,
               "completed_s": took, "seen_s": wall,
               "stages_seen_s": stages.iter().map(|(s, t)| json!({"state": s, "seconds": t})).collect::<Vec<_>>(),
               "send_looks": looks.iter().map(|(stage, t)| json!({"stage": stage, "looks": t.len(),
                   "first": t.first().map(DateTime::to_rfc3339), "last": t.last().map(DateTime::to_rfc3339)})).collect::<Vec<_>>(),
               "counts": counts}),
    );
    let whose = if nodes.len() == 1 { "server" } else { "nodes'" };
    report.row(
        &format!("{whose} CPU during that rollout{on}"),
        "—",
        "—",
        format!(
            "{server_cpu:.2} s of CPU over {wall:.1} s ({:.0} % of one core, against {idle_percent:.1} % holding the same fleet idle for {} s before; {:.0} µs per agent updated; simulated agents {swarm_cpu:.2} s; {writer})",
            server_cpu / wall.max(1e-9) * 100.0,
            plan.idle_secs,
            server_cpu * 1e6 / (agents.max(1) as f64),
        ),
        json!({"server_cpu_s": server_cpu, "wall_s": wall,
               "cpu_percent": server_cpu / wall.max(1e-9) * 100.0,
               "idle_cpu_percent": idle_percent, "idle_secs": plan.idle_secs,
               "server_cpu_us_per_agent": server_cpu * 1e6 / (agents.max(1) as f64),
               "swarm_cpu_s": swarm_cpu, "writer": writer_json}),
    );

    // 2. A crashing release halts at its canaries.
    publish(server, &plan.workdir, &plan.crash_version)
        .await
        .with_context(|| format!("publishing {}", plan.crash_version))?;
    let started = Instant::now();
    let posted_at = Utc::now();
    let created = client
        .post(
            "/api/rollouts",
            &json!({"version": plan.crash_version, "target": {"tags": [plan.tag]},
                    "canary": plan.canary, "waves": [100], "max_in_flight": plan.max_in_flight,
                    "health": health}),
        )
        .await
        .with_context(|| format!("starting a rollout of {}", plan.crash_version))?;
    let id = created["id"].as_str().context("no rollout id")?.to_owned();
    let (halted, seen_at, _) = follow(
        &client,
        &id,
        Duration::from_millis(50),
        Duration::from_secs(120),
        started,
        |state| match state {
            "halted" => Ok(true),
            "canary" => Ok(false),
            other => bail!("a rollout of a crashing version went on to {other}"),
        },
    )
    .await?;
    let seen_wall = started.elapsed().as_secs_f64();
    client
        .post(&format!("/api/rollouts/{id}/abort"), &json!({}))
        .await
        .context("aborting the halted rollout")?;
    let created_at = time(&halted, "created_at")?;
    let halted_at = time(&halted, "updated_at")?;
    // The earliest rollback report among the canaries: the first failure's instant.
    let canaries = client
        .get(&format!("/api/rollouts/{id}/agents?stage=0&limit=500"))
        .await?;
    let mut first_report: Option<DateTime<Utc>> = None;
    let mut first_sent: Option<DateTime<Utc>> = None;
    for agent in canaries["agents"].as_array().into_iter().flatten() {
        if let Ok(sent) = time(agent, "sent_at") {
            first_sent = Some(first_sent.map_or(sent, |f| f.min(sent)));
        }
        let agent_id = agent["agent_id"].as_str().context("no agent_id")?;
        let row = client.get(&format!("/api/agents/{agent_id}")).await?;
        let status = &row["update_status"];
        if status["status"] != "rolled_back" || status["to"] != plan.crash_version.as_str() {
            continue;
        }
        let at = time(status, "at")?;
        if at >= created_at {
            first_report = Some(first_report.map_or(at, |f| f.min(at)));
        }
    }
    let first_report = first_report.with_context(|| {
        format!("the rollout halted and no canary reported a rollback: {canaries}")
    })?;
    let waves = halted["stages"]
        .as_array()
        .and_then(|s| s.get(1..))
        .map(<[Value]>::to_vec);
    let wave_counts = totals(&json!({ "stages": waves }));
    let wave_sent: i64 = wave_counts
        .iter()
        .filter(|(state, _)| state.as_str() != "pending")
        .map(|(_, n)| n)
        .sum();
    if wave_sent > 0 {
        bail!("agents past the canary were sent the crashing version: {halted}");
    }
    let to_halt = secs(halted_at - first_report);
    let to_seen = secs(seen_at - first_report);
    let start_to_halt = secs(halted_at - created_at);
    let crash = first_sent.map_or(0.0, |sent| secs(first_report - sent));
    let canary_counts = totals(&json!({"stages": [halted["stages"][0].clone()]}));
    report.row(
        &format!(
            "a crashing version ({} canaries): the first canary's rollback report to the halt{on}",
            plan.canary
        ),
        "—",
        "—",
        format!(
            "{:.0} ms to the halt as the engine stamped it, {:.0} ms until polling every 50 ms saw it; rollout created to halted {start_to_halt:.2} s (seen {seen_wall:.2} s after the POST; the simulated crash: update sent to report {crash:.2} s); canaries at the halt: {}; no wave agent sent it; aborted",
            to_halt * 1e3,
            to_seen * 1e3,
            words(&canary_counts)
        ),
        json!({"rollout_id": id, "version": plan.crash_version, "canary": plan.canary,
               "report_to_halt_ms": to_halt * 1e3, "report_to_seen_ms": to_seen * 1e3,
               "created_to_halt_s": start_to_halt, "post_to_seen_s": seen_wall,
               "posted_at": posted_at.to_rfc3339(),
               "sent_to_report_s": crash, "canary_counts": canary_counts,
               "reason": halted["reason"]}),
    );
    Ok(())
}

/// Each stage's distinct `sent_at` (the looks that sent its updates), in order, from every
/// page of the rollout's agents.
async fn send_looks(
    client: &Client,
    id: &str,
) -> anyhow::Result<BTreeMap<i64, Vec<DateTime<Utc>>>> {
    let mut looks: BTreeMap<i64, Vec<DateTime<Utc>>> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        // Pages of 250: at the most (500) the server gives no next_cursor, since the store
        // caps the one more row the service reads to know whether a page follows.
        let path = match &after {
            Some(cursor) => format!("/api/rollouts/{id}/agents?limit=250&after={cursor}"),
            None => format!("/api/rollouts/{id}/agents?limit=250"),
        };
        let page = client.get(&path).await?;
        for agent in page["agents"].as_array().into_iter().flatten() {
            if let Ok(sent) = time(agent, "sent_at") {
                looks
                    .entry(agent["stage"].as_i64().unwrap_or(-1))
                    .or_default()
                    .push(sent);
            }
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => after = Some(cursor.to_owned()),
            None => break,
        }
    }
    for times in looks.values_mut() {
        times.sort_unstable();
        times.dedup();
    }
    Ok(looks)
}

/// Publishes `version` of the agent (a small file standing for it: nothing downloads it)
/// with a release key made for the purpose, as an operator would with `outpost-server release
/// keygen|publish`. A version published already (a kept data directory) is fine.
async fn publish(server: &Server, workdir: &Path, version: &str) -> anyhow::Result<()> {
    let dir = workdir.join(format!("bench-release-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("release.key");
    let agent = dir.join("outpost-agent");
    std::fs::write(
        &agent,
        format!("a stand-in for the crashing agent {version}\n"),
    )?;
    let mut keygen = std::process::Command::new(server.binary());
    keygen.args(["release", "keygen", "--out"]).arg(&key);
    let mut publish = server.tool(&["release", "publish"]);
    publish
        .arg("--signing-key")
        .arg(&key)
        .args(["--version", version, "--target"])
        .arg(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .arg("--agent")
        .arg(&agent);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for (what, command) in [("keygen", &mut keygen), ("publish", &mut publish)] {
            let out = command
                .output()
                .with_context(|| format!("release {what}"))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && !stderr.contains("already published") {
                bail!("release {what}: {}: {stderr}", out.status);
            }
        }
        Ok(())
    })
    .await?
}
