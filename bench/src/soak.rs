//! The `soak` scenario (CONTRACT.md §8's retention row, §14): a steady load of jobs with output for a
//! while, with the server's retention window shortened (`--retention-seconds`, hidden), so that
//! what a year does to the database happens in minutes: the database's size over time, which
//! should stop growing once the window is full, and the result path's latency before the
//! cleaner has anything to delete and while it deletes.
//!
//! The load: every `interval`, an `echo` job to `agents` simulated agents, each answering with
//! one chunk of output (`output_bytes`) and a result, waited for (`?wait=`). Every 5 s the
//! harness samples the database's size (SQLite: the database file plus its WAL; PostgreSQL:
//! `pg_database_size`), the rows retention deleted so far and the writer's totals. The first
//! jobs warm the server up and are left out of the latency figures.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::report::{Report, percentile};
use crate::server::{Nodes, WriterTotals};

/// Jobs left out of the latency figures: the first ones warm the server's caches.
const WARM_UP: usize = 10;

/// What the scenario needs from the harness.
pub struct Plan {
    /// How long the load lasts.
    pub duration: Duration,
    /// The server's retention window (as started).
    pub window: Duration,
    /// Time between two jobs.
    pub interval: Duration,
    /// Runs per job.
    pub agents: u64,
    /// Output bytes per run.
    pub output_bytes: usize,
    /// The SQLite database (None on PostgreSQL).
    pub sqlite: Option<std::path::PathBuf>,
    /// The PostgreSQL database's URL (None on SQLite).
    pub postgres: Option<String>,
    pub on: String,
}

/// One sample of the database.
struct Sample {
    at_s: f64,
    /// The database file (PostgreSQL: the database's size).
    bytes: u64,
    /// SQLite's WAL beside it (up to 64 MiB plus a second of writes, then cut back).
    wal: u64,
    deleted: f64,
}

/// The database's size and (SQLite) its WAL's.
fn database_bytes(plan: &Plan) -> anyhow::Result<(u64, u64)> {
    if let Some(db) = &plan.sqlite {
        let size = |p: std::path::PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        return Ok((size(db.clone()), size(db.with_extension("db-wal"))));
    }
    if let Some(url) = &plan.postgres {
        let out = std::process::Command::new("psql")
            .args([
                "-tA",
                "-X",
                url,
                "-c",
                "SELECT pg_database_size(current_database())",
            ])
            .output()
            .context("psql (Debian: postgresql-client)")?;
        let bytes = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("pg_database_size")?;
        return Ok((bytes, 0));
    }
    Ok((0, 0))
}

/// Rows retention deleted so far, every table together (from `/metrics`).
fn deleted_rows(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("outpost_retention_deleted_rows_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub async fn scenario(nodes: &Nodes, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let server = nodes.first();
    let on = &plan.on;
    let message = "x".repeat(plan.output_bytes);
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = Duration::ZERO;
    // (seconds since the start, completion ms, rows deleted so far when it was sent)
    let mut jobs: Vec<(f64, f64, f64)> = Vec::new();
    let mut deleted_now = 0.0;
    // The writer's totals when the cleaner first deleted something.
    let writer_start = nodes.writer().await?;
    let mut writer_at_first_delete: Option<(WriterTotals, Instant)> = None;
    let mut tick = tokio::time::interval(plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while started.elapsed() < plan.duration {
        tick.tick().await;
        if started.elapsed() >= next_sample {
            let metrics = server.metrics_text().await?;
            deleted_now = deleted_rows(&metrics);
            let (bytes, wal) = database_bytes(plan)?;
            samples.push(Sample {
                at_s: started.elapsed().as_secs_f64(),
                bytes,
                wal,
                deleted: deleted_now,
            });
            if deleted_now > 0.0 && writer_at_first_delete.is_none() {
                writer_at_first_delete = Some((nodes.writer().await?, Instant::now()));
            }
            next_sample += Duration::from_secs(5);
        }
        let (job, took) = server
            .post_timed(
                "/api/jobs?wait=60",
                &json!({"command": "echo", "data": {"message": message},
                        "target": {"all": true}, "timeout_s": 60}),
            )
            .await?;
        anyhow::ensure!(
            job.get("status").and_then(|s| s.as_str()) == Some("succeeded"),
            "a soak job did not succeed: {}",
            job.get("status").cloned().unwrap_or_default()
        );
        jobs.push((
            started.elapsed().as_secs_f64(),
            took.as_secs_f64() * 1e3,
            deleted_now,
        ));
    }
    let wall = started.elapsed().as_secs_f64();
    let metrics = server.metrics_text().await?;
    let (bytes, wal) = database_bytes(plan)?;
    samples.push(Sample {
        at_s: wall,
        bytes,
        wal,
        deleted: deleted_rows(&metrics),
    });
    let writer_end = nodes.writer().await?;

    // Latency: jobs sent before the cleaner had deleted anything, and after.
    let split = |cleaning: bool| {
        let mut v: Vec<f64> = jobs
            .iter()
            .skip(WARM_UP)
            .filter(|(_, _, d)| (*d > 0.0) == cleaning)
            .map(|(_, ms, _)| *ms)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (before, during) = (split(false), split(true));
    let commit_ms = |a: &WriterTotals, b: &WriterTotals| {
        let batches = (b.batches - a.batches).max(1.0);
        (b.busy_s - a.busy_s) * 1e3 / batches
    };
    let (commit_before, commit_during) = match &writer_at_first_delete {
        Some((w, _)) => (commit_ms(&writer_start, w), commit_ms(w, &writer_end)),
        None => (commit_ms(&writer_start, &writer_end), f64::NAN),
    };
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let window_s = plan.window.as_secs_f64();
    // Size at one window, at two windows, and at the end: flat after the window means the
    // last two are alike.
    let size_at = |t: f64| {
        samples
            .iter()
            .rfind(|s| s.at_s <= t + 2.5)
            .map_or(0, |s| s.bytes)
    };
    let curve: Vec<String> = samples
        .iter()
        .step_by((samples.len() / 12).max(1))
        .map(|s| format!("{:.0}s {:.1}+{:.1}", s.at_s, mib(s.bytes), mib(s.wal)))
        .collect();
    let runs = jobs.len() as u64 * plan.agents;
    report.row(
        &format!(
            "soak: database size with retention ({:.0} s window, {} jobs x {} runs x {} B of output, {:.0} s){on}",
            window_s,
            jobs.len(),
            plan.agents,
            plan.output_bytes,
            wall
        ),
        "bounded",
        "flat after the window",
        format!(
            "database file {:.1} MiB at 1 window, {:.1} MiB at 2, {:.1} MiB at the end (largest {:.1}); {:.0} rows deleted (MiB over time, file+WAL: {})",
            mib(size_at(window_s)),
            mib(size_at(2.0 * window_s)),
            mib(samples.last().map_or(0, |s| s.bytes)),
            mib(samples.iter().map(|s| s.bytes).max().unwrap_or(0)),
            samples.last().map_or(0.0, |s| s.deleted),
            curve.join(", ")
        ),
        json!({"window_s": window_s, "jobs": jobs.len(), "runs": runs, "output_bytes": plan.output_bytes,
               "samples": samples.iter().map(|s| json!({"at_s": s.at_s, "bytes": s.bytes, "wal_bytes": s.wal, "deleted_rows": s.deleted})).collect::<Vec<_>>()}),
    );
    let p = |v: &[f64], q: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            percentile(v, q)
        }
    };
    report.row(
        &format!("soak: job with output, p50 / p99 / max, before the cleaner deletes vs while it does{on}"),
        "—",
        "unchanged",
        format!(
            "{:.1} / {:.1} / {:.1} ms ({} jobs) vs {:.1} / {:.1} / {:.1} ms ({} jobs); writer commit mean {:.2} ms vs {:.2} ms",
            p(&before, 50.0),
            p(&before, 99.0),
            before.last().copied().unwrap_or(f64::NAN),
            before.len(),
            p(&during, 50.0),
            p(&during, 99.0),
            during.last().copied().unwrap_or(f64::NAN),
            during.len(),
            commit_before,
            commit_during
        ),
        json!({"before": {"n": before.len(), "p50_ms": p(&before, 50.0), "p99_ms": p(&before, 99.0)},
               "during": {"n": during.len(), "p50_ms": p(&during, 50.0), "p99_ms": p(&during, 99.0)},
               "commit_mean_ms": [commit_before, commit_during]}),
    );
    Ok(())
}
