//! The `results` scenario (CONTRACT.md §16, §8): one job over the simulated agents, read as one
//! answer. An `echo vary:…` job makes the swarm's answers differ as a real fleet's do (about 55
//! groups, 2 with digits masked, every 20th agent failing); once every run is over the scenario
//! times how long the digester took to fingerprint them all, then the summary (exact and
//! masked), a filtered page of runs, the whole export, and the dashboard's job page, each
//! timed from the request to its last byte on loopback, one request at a time.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::report::{Report, percentile};
use crate::server::{Client, Server};
use crate::ui::Session;

/// What the scenario needs from the harness.
pub struct Plan {
    /// The tag the job targets: the swarm's agents (`target: all` would include agents
    /// earlier scenarios left offline, and the job would wait for them).
    pub tag: String,
    /// Timed requests per endpoint (after 10 % as warm-up).
    pub requests: usize,
    pub on: String,
}

/// `path` fetched `requests` times after 10 % as warm-up: (p50, p99, max) in ms and the last
/// body's size.
async fn timed(
    client: &Client,
    path: &str,
    requests: usize,
) -> anyhow::Result<(f64, f64, f64, usize)> {
    let mut times = Vec::with_capacity(requests);
    let mut size = 0;
    for i in 0..requests + requests / 10 {
        let started = Instant::now();
        let body = client
            .get_text(path)
            .await
            .with_context(|| format!("GET {path}"))?;
        if i >= requests / 10 {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        size = body.len();
    }
    times.sort_by(f64::total_cmp);
    Ok((
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or_default(),
        size,
    ))
}

pub async fn scenario(server: &Server, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let client = server.client();
    let on = &plan.on;
    let started = Instant::now();
    let job = client
        .post(
            "/api/jobs?wait=600",
            &json!({"command": "echo", "target": {"tags": [plan.tag]}, "data": {"message": "vary:/ used"}, "timeout_s": 60}),
        )
        .await
        .context("the results job")?;
    let job_id = job
        .get("job_id")
        .and_then(Value::as_str)
        .context("no job_id")?
        .to_owned();
    if job.get("status").and_then(Value::as_str) == Some("running") {
        bail!(
            "the results job on tag {} did not finish within 600 s",
            plan.tag
        );
    }
    let ran = started.elapsed();
    // The digests: written by the digester as runs end; the last a moment after the job.
    let summary_path = format!("/api/jobs/{job_id}/summary");
    let deadline = Instant::now() + Duration::from_secs(600);
    let summary = loop {
        let summary = client.get(&summary_path).await?;
        if summary.get("undigested").and_then(Value::as_i64) == Some(0) {
            break summary;
        }
        if Instant::now() > deadline {
            bail!("runs still not grouped 600 s after the job: {summary}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let digested = started.elapsed();
    let groups = summary
        .get("group_count")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let total = summary.get("total").and_then(Value::as_i64).unwrap_or(0);
    report.row(
        &format!("a job of {total} runs with output: all run, then all grouped (digests written){on}"),
        "-",
        "-",
        format!(
            "{:.2} s / {:.2} s ({groups} groups; {:.0} digests/s after the job's start)",
            ran.as_secs_f64(),
            digested.as_secs_f64(),
            total as f64 / digested.as_secs_f64().max(1e-9)
        ),
        json!({"runs": total, "ran_s": ran.as_secs_f64(), "grouped_s": digested.as_secs_f64(), "groups": groups}),
    );

    let cases = [
        (summary_path.clone(), "summary", "300 ms", "50 ms"),
        (
            format!("{summary_path}?mask=numbers"),
            "summary, digits masked",
            "300 ms",
            "50 ms",
        ),
        (
            format!("/api/jobs/{job_id}/runs?status=failed&limit=50"),
            "runs: failed, page of 50",
            "-",
            "-",
        ),
        (
            format!("/api/jobs/{job_id}/runs?limit=200"),
            "runs: page of 200",
            "-",
            "-",
        ),
    ];
    for (path, what, floor, goal) in cases {
        let (p50, p99, max, bytes) = timed(&client, &path, plan.requests).await?;
        report.row(
            &format!("{what} of a {total}-run job, server time p50 / p99{on}"),
            floor,
            goal,
            format!("{p50:.1} / {p99:.1} ms ({bytes} bytes)"),
            json!({"path": path, "p50_ms": p50, "p99_ms": p99, "max_ms": max, "bytes": bytes}),
        );
    }
    // The export: every run, streamed.
    let requests = (plan.requests / 10).max(3);
    let (p50, p99, max, bytes) = timed(
        &client,
        &format!("/api/jobs/{job_id}/export?format=csv"),
        requests,
    )
    .await?;
    report.row(
        &format!("CSV export of a {total}-run job, to its last byte p50 / p99{on}"),
        "-",
        "-",
        format!("{p50:.0} / {p99:.0} ms ({bytes} bytes)"),
        json!({"p50_ms": p50, "p99_ms": p99, "max_ms": max, "bytes": bytes}),
    );
    // The dashboard's job page.
    let mut session = Session::sign_in(server, &client).await?;
    let ((p50, p99, max), body) = session
        .timed(&format!("/ui/jobs/{job_id}"), plan.requests)
        .await?;
    report.row(
        &format!("dashboard job page of a {total}-run job, server time p50 / p99{on}"),
        "200 ms",
        "20 ms",
        format!("{p50:.1} / {p99:.1} ms ({} bytes of HTML)", body.len()),
        json!({"p50_ms": p50, "p99_ms": p99, "max_ms": max, "html_bytes": body.len()}),
    );
    Ok(())
}
