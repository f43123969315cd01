//! Fleet results (CONTRACT.md §16) in the terminal: `outpost jobs show` as one answer (counts,
//! durations and the groups of runs with the same result and output), `outpost jobs runs`
//! (a job's runs by host, filtered and paged), `outpost jobs rerun`, and the summary that ends
//! `outpost run … --follow` over several agents.
//!
//! Everything is read from the server's summary and runs endpoints, which count in the
//! database: nothing here fetches every run of a job.

use reqwest::Method;
use serde_json::{Value, json};

use crate::args::{Global, JobsRerunArgs, JobsRunsArgs};
use crate::client::Client;
use crate::error::CliError;
use crate::jobs;
use crate::output::{self, Cell, Table};

/// Jobs with at most this many runs list them under their summary.
const LIST_RUNS_UP_TO: i64 = 50;
/// Groups printed at the end of `run --follow`.
const GROUPS_AFTER_RUN: usize = 5;

/// States in the order a person reads them.
const STATE_ORDER: [&str; 9] = [
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "expired",
    "lost",
    "running",
    "delivered",
    "pending",
];

/// `58 succeeded, 2 failed`, from a summary's `by_status`.
pub fn counts(summary: &Value) -> String {
    let Some(by) = summary.get("by_status").and_then(Value::as_object) else {
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
            Some((rank, format!("{n} {}", output::escape(state))))
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

/// The summary's lines: counts, exit codes, durations and up to `max_groups` groups.
fn summary_text(summary: &Value, max_groups: usize) -> String {
    let mut out = String::new();
    let total = summary.get("total").and_then(Value::as_i64).unwrap_or(0);
    out.push_str(&format!("{:<10}{total} ({})\n", "runs:", counts(summary)));
    if let Some(codes) = summary
        .get("by_exit_code")
        .and_then(Value::as_object)
        .filter(|c| !c.is_empty())
    {
        let text: Vec<String> = codes
            .iter()
            .map(|(code, n)| format!("{}×{}", n.as_i64().unwrap_or(0), output::escape(code)))
            .collect();
        out.push_str(&format!("{:<10}{}\n", "exit:", text.join(", ")));
    }
    let d = &summary["duration_ms"];
    if d.get("max").and_then(Value::as_i64).is_some() {
        out.push_str(&format!(
            "{:<10}p50 {} · p90 {} · max {}\n",
            "duration:",
            output::duration_ms(d.get("p50").and_then(Value::as_i64)),
            output::duration_ms(d.get("p90").and_then(Value::as_i64)),
            output::duration_ms(d.get("max").and_then(Value::as_i64)),
        ));
    }
    if let Some(slowest) = summary
        .get("slowest")
        .and_then(Value::as_array)
        .filter(|s| s.len() > 1)
    {
        let text: Vec<String> = slowest
            .iter()
            .take(3)
            .map(|run| {
                format!(
                    "{} {}",
                    host_of(run),
                    output::duration_ms(run.get("duration_ms").and_then(Value::as_i64))
                )
            })
            .collect();
        out.push_str(&format!("{:<10}{}\n", "slowest:", text.join(", ")));
    }
    let undigested = summary
        .get("undigested")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let groups = summary
        .get("groups")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let group_count = summary
        .get("group_count")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if !groups.is_empty() {
        let masked = summary.get("masked").and_then(Value::as_bool) == Some(true);
        out.push_str(&format!(
            "\n{group_count} group{}{}:\n",
            if group_count == 1 { "" } else { "s" },
            if masked { " (digits masked)" } else { "" }
        ));
        for group in groups.iter().take(max_groups) {
            out.push_str(&group_text(group));
        }
        if groups.len() > max_groups || group_count > groups.len() as i64 {
            out.push_str(&format!(
                "  … {} more: outpost jobs show {}\n",
                group_count - max_groups.min(groups.len()) as i64,
                output::field(summary, "job_id")
            ));
        }
    }
    if undigested > 0 {
        out.push_str(&format!(
            "({undigested} finished run{} not grouped yet)\n",
            if undigested == 1 { "" } else { "s" }
        ));
    }
    out
}

/// One group: `  12 × failed, exit 1  [key]  sample host` and its first and last line.
fn group_text(group: &Value) -> String {
    let mut head = format!(
        "  {} × {}",
        group.get("count").and_then(Value::as_i64).unwrap_or(0),
        output::field(group, "status")
    );
    if let Some(code) = group.get("exit_code").and_then(Value::as_i64) {
        head.push_str(&format!(", exit {code}"));
    }
    if let Some(error) = group.get("error").filter(|e| e.is_object()) {
        head.push_str(&format!(", {}", output::field(error, "code")));
    }
    head.push_str(&format!(
        "  [{}]  e.g. {}\n",
        output::field(group, "key"),
        host_of(&group["sample"])
    ));
    let first = group.get("first_line").and_then(Value::as_str);
    let last = group.get("last_line").and_then(Value::as_str);
    match (first, last) {
        (Some(first), Some(last)) if first != last => {
            head.push_str(&format!("      │ {}\n", output::escape(first)));
            head.push_str("      │ …\n");
            head.push_str(&format!("      │ {}\n", output::escape(last)));
        }
        (Some(line), _) | (None, Some(line)) => {
            head.push_str(&format!("      │ {}\n", output::escape(line)));
        }
        (None, None) => {
            if let Some(error) = group.get("error").filter(|e| e.is_object()) {
                head.push_str(&format!("      │ {}\n", output::field(error, "message")));
            }
        }
    }
    head
}

/// A run's host name, or its agent id when the agent is forgotten.
fn host_of(run: &Value) -> String {
    match run.get("hostname").and_then(Value::as_str) {
        Some(host) if !host.is_empty() => output::escape(host).into_owned(),
        _ => output::field(run, "agent_id"),
    }
}

/// `outpost jobs show`: the job's head, its summary and groups, and for a small job its runs.
pub async fn show(
    client: &Client,
    global: &Global,
    job_id: &str,
    mask: bool,
) -> Result<(), CliError> {
    let job = client.get(&format!("/api/jobs/{job_id}"), &[]).await?;
    if global.json {
        output::print_json(&job);
        return Ok(());
    }
    let query: Vec<(&str, String)> = if mask {
        vec![("mask", "numbers".into())]
    } else {
        Vec::new()
    };
    let summary = client
        .get(&format!("/api/jobs/{job_id}/summary"), &query)
        .await?;
    let mut text = jobs::head_text(&job);
    if let Some(of) = job.get("rerun_of").and_then(Value::as_str) {
        text.push_str(&format!("{:<10}{}\n", "rerun of:", output::escape(of)));
    }
    text.push_str(&summary_text(&summary, usize::MAX));
    output::print_stdout(text.as_bytes());
    let total = summary.get("total").and_then(Value::as_i64).unwrap_or(0);
    if total > 0 && total <= LIST_RUNS_UP_TO {
        output::print_stdout(b"\n");
        let page = client
            .get(
                &format!("/api/jobs/{job_id}/runs"),
                &[("limit", LIST_RUNS_UP_TO.to_string())],
            )
            .await?;
        print_runs(&page);
    } else if total > 0 {
        output::print_stdout(
            format!("\nRuns by host: outpost jobs runs {job_id} [--status failed]\n").as_bytes(),
        );
    }
    Ok(())
}

/// `outpost jobs runs`.
pub async fn runs(client: &Client, global: &Global, args: JobsRunsArgs) -> Result<(), CliError> {
    let job_id = jobs::resolve_job(client, &args.job).await?;
    let mut query: Vec<(&str, String)> = vec![("limit", args.limit.to_string())];
    for (name, value) in [
        ("status", args.status),
        ("group", args.group),
        ("hostname", args.host),
        ("tag", args.tag),
        ("cursor", args.cursor),
    ] {
        if let Some(value) = value {
            query.push((name, value));
        }
    }
    if let Some(code) = args.exit_code {
        query.push(("exit_code", code.to_string()));
    }
    if args.mask_numbers {
        query.push(("mask", "numbers".into()));
    }
    let page = client
        .get(&format!("/api/jobs/{job_id}/runs"), &query)
        .await?;
    if global.json {
        output::print_json(&page);
        return Ok(());
    }
    print_runs(&page);
    if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
        eprintln!("More runs: --cursor {}", output::escape(cursor));
    }
    Ok(())
}

fn print_runs(page: &Value) {
    let mut table = Table::new(vec![
        "RUN", "HOST", "STATUS", "EXIT", "DURATION", "OUTPUT", "GROUP", "ERROR",
    ]);
    for run in page
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let error = run
            .get("error")
            .filter(|e| e.is_object())
            .map(|e| {
                format!(
                    "{}: {}",
                    output::field(e, "code"),
                    output::field(e, "message")
                )
            })
            .unwrap_or_else(|| "-".into());
        table.row(vec![
            output::field(run, "run_id").into(),
            host_of(run).into(),
            Cell::status(&output::field(run, "status")),
            output::field(run, "exit_code").into(),
            output::duration_ms(run.get("duration_ms").and_then(Value::as_i64)).into(),
            output::bytes(
                run.get("stdout_bytes").and_then(Value::as_i64).unwrap_or(0)
                    + run.get("stderr_bytes").and_then(Value::as_i64).unwrap_or(0),
            )
            .into(),
            output::field(run, "group").into(),
            error.into(),
        ]);
    }
    table.print();
}

/// `outpost jobs rerun`: the new job, what was skipped, then as `outpost run` does.
pub async fn rerun(client: &Client, global: &Global, args: JobsRerunArgs) -> Result<u8, CliError> {
    let job_id = jobs::resolve_job(client, &args.job).await?;
    let runs = if !args.runs.is_empty() {
        json!(args.runs)
    } else if args.all {
        json!("all")
    } else if args.not_succeeded {
        json!("not_succeeded")
    } else {
        json!("failed")
    };
    let answer = client
        .json(
            Method::POST,
            &format!("/api/jobs/{job_id}/rerun"),
            &[],
            Some(&json!({ "runs": runs })),
        )
        .await?;
    let job = answer["job"].clone();
    let skipped = answer
        .get("skipped")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !global.json {
        eprintln!(
            "job {}: re-runs {} run{} of job {job_id}",
            output::field(&job, "job_id"),
            job.get("runs")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            if job
                .get("runs")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
                == 1
            {
                ""
            } else {
                "s"
            }
        );
        for skip in &skipped {
            eprintln!(
                "  skipped {} ({}): {}",
                host_of(skip),
                output::field(skip, "run_id"),
                output::field(skip, "reason")
            );
        }
    }
    let agents_list = client.get("/api/agents", &[]).await?;
    jobs::watch(client, global, job, &agents_list, args.follow).await
}

/// The summary that ends `run` over several agents: counts and the largest groups.
///
/// A run's output is fingerprinted a moment after it ends: the summary is asked again, for up
/// to [`GROUPING_WAIT`], until every finished run is in a group.
pub async fn after_run(client: &Client, job_id: &str) -> Result<String, CliError> {
    let deadline = std::time::Instant::now() + GROUPING_WAIT;
    loop {
        let summary = client
            .get(&format!("/api/jobs/{job_id}/summary"), &[])
            .await?;
        let waiting = summary
            .get("undigested")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0;
        if !waiting || std::time::Instant::now() >= deadline {
            return Ok(summary_text(&summary, GROUPS_AFTER_RUN));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// How long the summary after a run waits for its runs to be grouped.
const GROUPING_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
