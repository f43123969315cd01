//! The `events` scenario (CONTRACT.md §11, issue 32): how late a failure reaches the tool that should
//! hear of it, and how many failure events the server records per second.
//!
//! A generic webhook integration (`job.failed`) points at a receiver in this process. Each job
//! runs a script that the simulated agents do not list, on two of them, so the server stores
//! both runs `failed` (`script_not_allowed`) in the write that creates the job, and records
//! the job's `job.failed` event with its delivery in that same transaction. The delay is from
//! the event's own time (stamped in that transaction, just before its commit) to the
//! receiver's clock when the request arrives: the outbox's claim, the attempt and the HTTP
//! round trip, without the harness's polling. The trickle is spaced over the per-destination
//! rate (1 request/s), as failures come in practice; a burst to one integration drains at that
//! rate by design, so the burst is timed at the server (events recorded per second) and its
//! integration is removed before the receiver would see the backlog.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::report::{Report, percentile};
use crate::server::{Client, Nodes};

/// Failing jobs created in flight during the burst.
const CONCURRENCY: usize = 16;
/// Between two failures of the trickle: over the 1 request/s per destination.
const SPACING: Duration = Duration::from_millis(1200);

/// What the scenario needs from the harness.
pub struct Plan {
    /// Two simulated agents' ids.
    pub agents: Vec<String>,
    /// Failures sent one by one, timed at the receiver.
    pub trickle: usize,
    /// Failing jobs created at once, timed at the server.
    pub burst: usize,
    pub on: String,
}

/// Arrival times and the events' own times, in arrival order.
type Seen = Arc<Mutex<Vec<(DateTime<Utc>, Value)>>>;

/// Runs the scenario against the first node.
pub async fn scenario(nodes: &Nodes, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let client = nodes.first().client();
    let on = &plan.on;
    let (url, seen) = receiver().await?;
    let hook = client
        .post(
            "/api/integrations",
            &json!({"name": "bench-hook", "kind": "webhook", "config": {"url": url},
                    "events": ["job.failed"]}),
        )
        .await
        .context("making the webhook integration")?;
    let hook_id = hook
        .get("id")
        .and_then(Value::as_str)
        .context("no id in POST /api/integrations")?
        .to_owned();

    for i in 0..plan.trickle {
        failing_job(&client, &plan.agents, &format!("bench-trickle-{i}")).await?;
        tokio::time::sleep(SPACING).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().map(|s| s.len()).unwrap_or(0) < plan.trickle {
        if Instant::now() > deadline {
            bail!(
                "the receiver got {} of {} failures in 60 s",
                seen.lock().map(|s| s.len()).unwrap_or(0),
                plan.trickle
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut delays: Vec<f64> = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("receiver lock"))?
        .iter()
        .filter_map(|(at, body)| {
            let time = body.get("time")?.as_str()?;
            let time = DateTime::parse_from_rfc3339(time).ok()?;
            Some((*at - time.with_timezone(&Utc)).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    if delays.len() != plan.trickle {
        bail!(
            "{} of {} deliveries had no event time",
            plan.trickle - delays.len(),
            plan.trickle
        );
    }
    delays.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&delays, 50.0),
        percentile(&delays, 99.0),
        delays.last().copied().unwrap_or_default(),
    );
    report.row(
        &format!("failed run committed -> its job.failed at a webhook, p50 / p99{on}"),
        "—",
        "—",
        format!(
            "{p50:.0} / {p99:.0} ms (max {max:.0} ms; {} failures, one every {:.1} s)",
            plan.trickle,
            SPACING.as_secs_f64()
        ),
        json!({"failures": plan.trickle, "p50_ms": p50, "p99_ms": p99, "max_ms": max}),
    );

    let started = Instant::now();
    {
        use futures_util::{StreamExt, stream};
        let made: Vec<anyhow::Result<()>> = stream::iter(0..plan.burst)
            .map(|i| {
                let client = client.clone();
                let agents = plan.agents.clone();
                async move { failing_job(&client, &agents, &format!("bench-burst-{i}")).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        made.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = plan.burst as f64 / elapsed;
    report.row(
        &format!("job.failed events recorded per second, each with its delivery{on}"),
        "—",
        "—",
        format!(
            "{rate:.0}/s ({} failing jobs of 2 runs in {elapsed:.1} s, {CONCURRENCY} POSTs in flight: job, runs, event and outbox row in one write each)",
            plan.burst
        ),
        json!({"jobs": plan.burst, "seconds": elapsed, "events_per_s": rate}),
    );
    // The backlog would drain at 1 request/s: not the other scenarios' business.
    client
        .delete(&format!("/api/integrations/{hook_id}"))
        .await
        .context("removing the integration")?;
    Ok(())
}

/// A job whose two runs are refused at once: the script is in no simulated agent's manifest.
async fn failing_job(client: &Client, agents: &[String], script: &str) -> anyhow::Result<()> {
    let job = client
        .post(
            "/api/jobs",
            &json!({"command": "run", "data": {"script": script}, "target": {"agents": agents}}),
        )
        .await
        .context("POST /api/jobs")?;
    if job.get("status").and_then(Value::as_str) != Some("failed") {
        bail!("a job of an unlisted script did not fail at once: {job}");
    }
    Ok(())
}

/// A webhook receiver on loopback: records when each request arrived and its body.
async fn receiver() -> anyhow::Result<(String, Seen)> {
    use axum::extract::State;
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |State(seen): State<Seen>, body: axum::body::Bytes| async move {
                    let at = Utc::now();
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if let Ok(mut seen) = seen.lock() {
                        seen.push((at, body));
                    }
                    "ok"
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, seen))
}
