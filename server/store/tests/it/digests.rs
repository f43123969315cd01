//! Fleet results in the store (CONTRACT.md §16): a job's summary is counted by the database
//! from its runs and their digests; a job is digested only once it is over and every run has
//! a digest; an export reads one snapshot however the job changes while it streams.

use outpost_store::{NewJob, NewRun, RunFilter, Store, run_digest, state};
use serde_json::json;

use crate::common;

/// A cutoff after every run of the test.
fn later() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::hours(1)
}

async fn job_of(store: &Store, tenant: &str, runs: usize) -> (String, Vec<String>) {
    let runs: Vec<NewRun> = (0..runs)
        .map(|i| NewRun {
            agent_id: format!("agent-{i:05}"),
            refused: None,
            key_id: Some("key-1".into()),
        })
        .collect();
    let (job, runs, _) = store
        .create_job(
            NewJob {
                tenant_id: tenant.to_owned(),
                command: "run".into(),
                data: json!({"script": "disk"}),
                sealed_params: None,
                target: json!({"all": true}),
                timeout_s: 60,
                ttl_s: 600,
                idempotency_key: None,
                request_fingerprint: None,
                webhook_url: None,
                fire: None,
                note: None,
                rerun_of: None,
            },
            runs,
        )
        .await
        .expect("create");
    assert_eq!(job.digested, Some(false), "a new job waits for its digests");
    (job.id, runs.into_iter().map(|r| r.id).collect())
}

fn digest(tenant: &str, job_id: &str, run_id: &str, group: &str, ms: i64) -> run_digest::Model {
    run_digest::Model {
        command_id: run_id.to_owned(),
        tenant_id: tenant.to_owned(),
        job_id: job_id.to_owned(),
        group_key: group.to_owned(),
        masked_key: "m".repeat(16),
        stdout_sha: "a".into(),
        stderr_sha: "b".into(),
        masked_sha: "c".into(),
        first_line: Some(format!("first of {group}")),
        last_line: None,
        duration_ms: Some(ms),
    }
}

#[tokio::test]
async fn a_summary_is_counted_by_the_database_and_a_job_is_digested_once_over() {
    let (_db, store, tenant) = common::fresh_store().await;
    let (job_id, runs) = job_of(&store, &tenant, 10).await;

    // Nothing over yet: nothing to digest, and the job is not done.
    assert!(
        store
            .undigested_runs(&tenant, &job_id, later(), 100)
            .await
            .expect("runs")
            .is_empty()
    );
    assert_eq!(
        store.undigested_jobs(10).await.expect("jobs"),
        [(tenant.clone(), job_id.clone())]
    );
    assert!(!store.mark_digested(&tenant, &job_id).await.expect("mark"));

    // Every run cancelled (final), then digested in three groups of 5, 3 and 2, with
    // durations 1..=10 s.
    store.cancel_job(&tenant, &job_id).await.expect("cancel");
    let open = store
        .undigested_runs(&tenant, &job_id, later(), 100)
        .await
        .expect("runs");
    assert_eq!(open.len(), 10);
    let groups = ["0000000000000aaa", "0000000000000bbb", "0000000000000ccc"];
    let rows: Vec<_> = runs
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let group = match i {
                0..5 => groups[0],
                5..8 => groups[1],
                _ => groups[2],
            };
            digest(&tenant, &job_id, id, group, (i as i64 + 1) * 1000)
        })
        .collect();
    // Half first: the job is not digested while a run lacks its digest.
    store
        .insert_digests(rows[..5].to_vec())
        .await
        .expect("insert");
    assert!(!store.mark_digested(&tenant, &job_id).await.expect("mark"));
    let summary = store
        .job_digest(&tenant, &job_id, false)
        .await
        .expect("sum");
    assert_eq!(summary.undigested, 5);
    // All of them; a second write of the same digests keeps the first.
    store.insert_digests(rows.clone()).await.expect("insert");
    store.insert_digests(rows).await.expect("insert again");
    assert!(store.mark_digested(&tenant, &job_id).await.expect("mark"));
    assert!(store.undigested_jobs(10).await.expect("jobs").is_empty());

    let summary = store
        .job_digest(&tenant, &job_id, false)
        .await
        .expect("sum");
    assert_eq!(summary.by_status, [(state::CANCELLED.to_owned(), 10)]);
    assert_eq!(summary.undigested, 0);
    assert_eq!(summary.group_count, 3);
    let counts: Vec<(String, i64)> = summary
        .groups
        .iter()
        .map(|g| (g.key.clone(), g.count))
        .collect();
    assert_eq!(
        counts,
        [
            (groups[0].to_owned(), 5),
            (groups[1].to_owned(), 3),
            (groups[2].to_owned(), 2)
        ]
    );
    // The sample is the group's first run, with its lines.
    assert_eq!(summary.groups[0].sample.run.id, runs[0]);
    assert_eq!(
        summary.groups[1]
            .sample
            .digest
            .as_ref()
            .and_then(|d| d.first_line.clone()),
        Some(format!("first of {}", groups[1]))
    );
    // Nearest-rank percentiles of 1..=10 s.
    assert_eq!(summary.p50_ms, Some(5000));
    assert_eq!(summary.p90_ms, Some(9000));
    assert_eq!(summary.max_ms, Some(10_000));
    let slowest: Vec<&str> = summary.slowest.iter().map(|r| r.run.id.as_str()).collect();
    assert_eq!(slowest, [&runs[9], &runs[8], &runs[7], &runs[6], &runs[5]]);
    // Masked: one key for all.
    let masked = store.job_digest(&tenant, &job_id, true).await.expect("sum");
    assert_eq!(masked.group_count, 1);
    assert_eq!(masked.groups[0].count, 10);

    // A group's runs, paged.
    let page = |after: Option<String>| RunFilter {
        group: Some(groups[1].to_owned()),
        after,
        limit: 2,
        ..Default::default()
    };
    let first = store
        .job_runs_page(&tenant, &job_id, &page(None))
        .await
        .expect("page");
    assert_eq!(first.len(), 2);
    let rest = store
        .job_runs_page(&tenant, &job_id, &page(Some(first[1].run.id.clone())))
        .await
        .expect("page");
    let ids: Vec<&str> = first
        .iter()
        .chain(&rest)
        .map(|r| r.run.id.as_str())
        .collect();
    assert_eq!(ids, [&runs[5], &runs[6], &runs[7]]);
    // Another tenant's job reads as empty, whoever asks with its id.
    let (other, _) = store.create_tenant("other", None).await.expect("tenant");
    let theirs = store.job_digest(&other, &job_id, false).await.expect("sum");
    assert!(theirs.by_status.is_empty() && theirs.groups.is_empty());
}

#[tokio::test]
async fn an_export_reads_the_runs_as_they_were_when_it_started() {
    let (_db, store, tenant) = common::fresh_store().await;
    let (job_id, _) = job_of(&store, &tenant, 1200).await;
    let page = |after: Option<String>| RunFilter {
        after,
        limit: 500,
        ..Default::default()
    };
    let snapshot = store.begin_snapshot().await.expect("snapshot");
    let first = snapshot
        .job_runs_page(&tenant, &job_id, &page(None))
        .await
        .expect("page");
    assert_eq!(first.len(), 500);
    // The job changes under the export: every run is cancelled.
    store.cancel_job(&tenant, &job_id).await.expect("cancel");
    let mut after = first.last().map(|r| r.run.id.clone());
    let mut states: Vec<String> = first.iter().map(|r| r.run.state.clone()).collect();
    loop {
        let rows = snapshot
            .job_runs_page(&tenant, &job_id, &page(after.clone()))
            .await
            .expect("page");
        if rows.is_empty() {
            break;
        }
        after = rows.last().map(|r| r.run.id.clone());
        states.extend(rows.into_iter().map(|r| r.run.state));
    }
    assert_eq!(states.len(), 1200);
    assert!(
        states.iter().all(|s| s == state::PENDING),
        "the export sees the job as it was when it started"
    );
    drop(snapshot);
    let now = store
        .job_runs_page(&tenant, &job_id, &page(None))
        .await
        .expect("page");
    assert!(now.iter().all(|r| r.run.state == state::CANCELLED));
}
