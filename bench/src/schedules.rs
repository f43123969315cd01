//! The `schedules` scenario (CONTRACT.md §8 and §10, issue 31): what 10,000 schedules cost the server
//! when none is due (idle CPU, against the same server with none), and how late their jobs are
//! when all of them fall due in the same minute.
//!
//! The schedules are made through the REST API like an operator would, yearly first (so none
//! fires while they are being made and the idle figure is about holding them), then switched to
//! `* * * * *`; only the fires of the first minute boundary after the last switch are measured,
//! from the jobs' own `scheduled_for` and `created_at` (both stamped by the server), so the
//! harness's polling does not enter the delay.
//!
//! Each schedule pings one simulated agent: schedule `i` targets agent `i % min(agents, 100)`,
//! so every fire is a real job with one run, as a small fleet's cron jobs would be.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, DurationRound, Utc};
use serde_json::{Value, json};

use crate::report::{Report, percentile};
use crate::server::{Client, Nodes};

/// Requests in flight while the schedules are made and switched.
const CONCURRENCY: usize = 16;

/// What the scenario needs from the harness.
pub struct Plan {
    pub count: usize,
    pub agents: Vec<String>,
    pub idle_secs: u64,
    pub on: String,
}

/// Runs the scenario on the first node; the other nodes (if any) fire too.
pub async fn scenario(nodes: &Nodes, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let client = nodes.first().client();
    let on = &plan.on;
    let idle_none = idle_cpu(nodes, plan.idle_secs).await?;

    let started = Instant::now();
    let ids = for_each(
        plan.count,
        |i, client| {
            let agent = plan.agents[i % plan.agents.len()].clone();
            async move {
                let made = client
                    .post(
                        "/api/schedules",
                        &json!({"name": format!("bench-{i:05}"), "cron": "0 0 1 1 *",
                            "command": "ping", "target": {"agents": [agent]}, "timeout_s": 60}),
                    )
                    .await?;
                made.get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .context("no id in POST /api/schedules")
            }
        },
        &client,
    )
    .await
    .context("making the schedules")?;
    let made_in = started.elapsed().as_secs_f64();
    let idle_many = idle_cpu(nodes, plan.idle_secs).await?;
    report.row(
        &format!("server idle CPU with {} enabled schedules not due{on}", plan.count),
        "—",
        "—",
        format!(
            "{idle_many:.2} % of one core vs {idle_none:.2} % with none (over {} s each; the {} were made in {made_in:.1} s, {CONCURRENCY} POSTs in flight)",
            plan.idle_secs, plan.count
        ),
        json!({"schedules": plan.count, "cpu_percent": idle_many, "cpu_percent_none": idle_none,
               "seconds": plan.idle_secs, "made_s": made_in}),
    );

    // Every one due each minute: only the boundary after the last switch is measured.
    let switched_from = Instant::now();
    for_each(
        ids.len(),
        |i, client| {
            let id = ids[i].clone();
            async move {
                client
                    .patch(
                        &format!("/api/schedules/{id}"),
                        &json!({"cron": "* * * * *"}),
                    )
                    .await?;
                Ok(String::new())
            }
        },
        &client,
    )
    .await
    .context("switching the schedules to every minute")?;
    let switched_in = switched_from.elapsed().as_secs_f64();
    let now = Utc::now();
    let minute = now.duration_trunc(chrono::Duration::minutes(1))? + chrono::Duration::minutes(1);
    eprintln!(
        "outpost-bench: {} schedules switched to every minute in {switched_in:.1} s; measuring the fires of {minute}",
        ids.len()
    );
    let cpu = nodes.cpu_seconds()?;
    let writer = nodes.writer().await?;
    let until_fire = (minute - now).to_std().unwrap_or_default();
    tokio::time::sleep(until_fire + Duration::from_secs(2)).await;
    let (delays, span) = wait_fires(&client, minute, ids.len()).await?;
    let cpu_s = nodes.cpu_seconds()? - cpu;
    let (writer, writer_json) = nodes.writer().await?.since(&writer, span.max(1e-3));
    let p = |q: f64| percentile(&delays, q);
    report.row(
        &format!("{} schedules due in the same minute: delay from instant to job created{on}", plan.count),
        "p99 2 s",
        "p99 250 ms",
        format!(
            "p50 {:.0} ms / p99 {:.0} ms / max {:.0} ms ({} jobs, one per schedule, the last created {span:.2} s after the minute; {:.0} µs of server CPU per fire; {writer})",
            p(50.0),
            p(99.0),
            delays.last().copied().unwrap_or(0.0),
            delays.len(),
            cpu_s * 1e6 / delays.len().max(1) as f64,
        ),
        json!({"schedules": plan.count, "jobs": delays.len(), "p50_ms": p(50.0), "p90_ms": p(90.0),
               "p99_ms": p(99.0), "max_ms": delays.last(), "span_s": span,
               "server_cpu_s": cpu_s, "writer": writer_json, "switched_s": switched_in}),
    );
    Ok(())
}

/// Server CPU (all nodes) over `secs`, in % of one core.
async fn idle_cpu(nodes: &Nodes, secs: u64) -> anyhow::Result<f64> {
    let before = nodes.cpu_seconds()?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let wall = started.elapsed().as_secs_f64();
    Ok((nodes.cpu_seconds()? - before) / wall * 100.0)
}

/// Runs `make(i)` for `i` in `0..count`, [`CONCURRENCY`] at a time; the answers in order.
async fn for_each<F, Fut>(count: usize, make: F, client: &Client) -> anyhow::Result<Vec<String>>
where
    F: Fn(usize, Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    use futures_util::{StreamExt, stream};
    let answers: Vec<anyhow::Result<String>> = stream::iter(0..count)
        .map(|i| make(i, client.clone()))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    answers.into_iter().collect()
}

/// Waits until `expected` jobs scheduled for `minute` exist (at most 5 minutes), checks there is
/// exactly one per schedule, and returns their delays (ms, sorted) and the last one's, in s.
async fn wait_fires(
    client: &Client,
    minute: DateTime<Utc>,
    expected: usize,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_seen = 0;
    loop {
        let jobs = jobs_for(client, minute).await?;
        if jobs.len() >= expected || Instant::now() > deadline {
            let mut seen = HashSet::new();
            for (schedule, _) in &jobs {
                if !seen.insert(schedule.clone()) {
                    bail!("two jobs for schedule {schedule} at {minute}");
                }
            }
            if jobs.len() != expected {
                bail!(
                    "{} jobs for the fires of {minute}, expected {expected}",
                    jobs.len()
                );
            }
            let mut delays: Vec<f64> = jobs
                .iter()
                .map(|(_, created)| {
                    (*created - minute).num_microseconds().unwrap_or(0) as f64 / 1e3
                })
                .collect();
            delays.sort_by(f64::total_cmp);
            let span = delays.last().copied().unwrap_or(0.0) / 1e3;
            return Ok((delays, span));
        }
        if jobs.len() != last_seen {
            eprintln!(
                "outpost-bench: {} of {expected} jobs of {minute} so far",
                jobs.len()
            );
            last_seen = jobs.len();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Every job scheduled for `minute`: its schedule and `created_at`.
async fn jobs_for(
    client: &Client,
    minute: DateTime<Utc>,
) -> anyhow::Result<Vec<(String, DateTime<Utc>)>> {
    let since = minute.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut cursor: Option<String> = None;
    let mut found = Vec::new();
    loop {
        let mut path = format!("/api/jobs?limit=200&since={since}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = client.get(&path).await?;
        for job in page["jobs"]
            .as_array()
            .context("no jobs in GET /api/jobs")?
        {
            let time = |field: &str| {
                job.get(field)
                    .and_then(Value::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
            };
            if time("scheduled_for") != Some(minute) {
                continue;
            }
            let schedule = job["schedule_id"].as_str().unwrap_or_default().to_owned();
            found.push((
                schedule,
                time("created_at").context("a job without created_at")?,
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(found),
        }
    }
}
