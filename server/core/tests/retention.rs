//! History retention (CONTRACT.md §14) on the store, on SQLite or PostgreSQL as the run asks: rows
//! made before an instant are old, rows made after it are new, and the cleaner's steps, with
//! each tenant's cutoff worked out as the cleaner does, delete exactly the old finished
//! history: never a job or command still open, a job finished after the cutoff, a job whose
//! webhook is still to go out, or an event with a delivery still pending; a tenant's own
//! window wins over the server's, and a tenant with 0 keeps everything.

use chrono::{DateTime, Utc};
use outpost_core::service::retention::{Window, cutoff};
use outpost_protocol::{OutputStream, Response};
use outpost_store::domain::Actor;
use outpost_store::retention::Deleted;
use outpost_store::{NewCommand, NewJob, NewRun, OutputChunk, Store, TenantPatch};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, Value};
use serde_json::json;

#[path = "../../store/tests/it/common/mod.rs"]
mod common;

/// A second connection of the test's own, for rows no store method makes directly and for
/// counting.
struct Raw(DatabaseConnection);

impl Raw {
    fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        let backend = self.0.get_database_backend();
        let sql = if backend == DbBackend::Postgres {
            let mut out = String::new();
            let mut n = 0;
            for c in sql.chars() {
                if c == '?' {
                    n += 1;
                    out.push_str(&format!("${n}"));
                } else {
                    out.push(c);
                }
            }
            out
        } else {
            sql.to_owned()
        };
        Statement::from_sql_and_values(backend, sql, values)
    }

    async fn exec(&self, sql: &str, values: Vec<Value>) {
        self.0
            .execute_raw(self.statement(sql, values))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn count(&self, sql: &str, values: Vec<Value>) -> i64 {
        let row = self
            .0
            .query_one_raw(self.statement(sql, values))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .expect("a row");
        row.try_get_by_index::<i64>(0).expect("a count")
    }

    /// A tenant's rows in each table the cleaner deletes from.
    async fn rows(&self, tenant: &str) -> Counts {
        let mut counts = Vec::new();
        for table in [
            "jobs",
            "commands",
            "output_chunks",
            "webhook_attempts",
            "events",
            "deliveries",
            "delivery_attempts",
            "event_streaks",
        ] {
            counts.push(
                self.count(
                    &format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table} WHERE tenant_id = ?"),
                    vec![tenant.into()],
                )
                .await,
            );
        }
        Counts(counts)
    }

    async fn exists(&self, table: &str, id: &str) -> bool {
        self.count(
            &format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table} WHERE id = ?"),
            vec![id.into()],
        )
        .await
            == 1
    }
}

/// Rows per table, in the order of [`Raw::rows`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counts(Vec<i64>);

impl Counts {
    fn less(&self, d: &Deleted) -> Counts {
        let gone = [
            d.jobs,
            d.commands,
            d.output_chunks,
            d.webhook_attempts,
            d.events,
            d.deliveries,
            d.delivery_attempts,
            d.streaks,
        ];
        Counts(
            self.0
                .iter()
                .zip(gone)
                .map(|(n, g)| n - i64::try_from(g).expect("small"))
                .collect(),
        )
    }
}

/// What one tenant was given, by name.
struct Seeded {
    /// Finished before the cutoff, two runs with output, a webhook attempt, its end event
    /// delivered (two attempts), the last job of a schedule.
    done: String,
    done_runs: Vec<String>,
    done_event: String,
    /// Failed before the cutoff (a failure streak), its end event's delivery still pending.
    failed: String,
    failed_event: String,
    /// Finished before the cutoff, its webhook still to go out.
    webhook_due: String,
    /// Still running: one run never answered.
    open: String,
    /// Made before the cutoff, finished after it.
    late: String,
    late_run: String,
    /// Commands outside a job: finished before the cutoff (with output), still pending.
    command_done: String,
    command_open: String,
    schedule: String,
    /// Made after the cutoff.
    new_job: String,
    new_command: String,
}

fn job(tenant: &str, target: serde_json::Value) -> NewJob {
    NewJob {
        tenant_id: tenant.to_owned(),
        command: "ping".into(),
        data: json!({}),
        sealed_params: None,
        target,
        timeout_s: 60,
        ttl_s: 600,
        idempotency_key: None,
        request_fingerprint: None,
        webhook_url: None,
        fire: None,
        note: None,
        rerun_of: None,
    }
}

fn runs(agents: &[&str]) -> Vec<NewRun> {
    agents
        .iter()
        .map(|a| NewRun {
            agent_id: (*a).to_owned(),
            refused: None,
            key_id: None,
        })
        .collect()
}

async fn output(store: &Store, tenant: &str, agent: &str, run: &str, seq: u64) {
    let txn = store.begin().await.expect("begin");
    txn.append_output(
        tenant,
        agent,
        OutputChunk {
            command_id: run,
            stream: OutputStream::Stdout,
            seq,
            bytes: b"some output\n",
        },
        1 << 20,
        false,
    )
    .await
    .expect("output");
    txn.commit().await.expect("commit");
}

async fn answer(store: &Store, tenant: &str, agent: &str, run: &str, ok: bool) {
    let id = run.parse().expect("uuid");
    let response = if ok {
        Response::ok(id, json!({"pong": true}))
    } else {
        Response::failed(id, "script_failed", "it failed")
    };
    let stored = store
        .store_results_many(&[(tenant, agent, &response)])
        .await
        .expect("result");
    assert_eq!(stored.len(), 1, "{run} answered");
    if let Some(job) = &stored[0].job_id {
        store.refresh_job(tenant, job).await.expect("refresh");
    }
}

async fn event_of(raw: &Raw, job: &str) -> String {
    // Job ends are recorded with the job's id in their detail.
    let backend = raw.0.get_database_backend();
    let sql = if backend == DbBackend::Postgres {
        "SELECT id FROM events WHERE detail->>'job_id' = ?"
    } else {
        "SELECT id FROM events WHERE json_extract(detail, '$.job_id') = ?"
    };
    let row = raw
        .0
        .query_one_raw(raw.statement(sql, vec![job.into()]))
        .await
        .expect("event")
        .unwrap_or_else(|| panic!("no end event for job {job}"));
    row.try_get_by_index::<String>(0).expect("id")
}

async fn delivery(raw: &Raw, tenant: &str, event: &str, status: &str, attempts: i32) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let now = Utc::now();
    raw.exec(
        "INSERT INTO deliveries (id, tenant_id, integration_id, event_id, status, attempts, \
         next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            id.clone().into(),
            tenant.into(),
            "integration-1".into(),
            event.into(),
            status.into(),
            attempts.into(),
            now.into(),
            now.into(),
        ],
    )
    .await;
    for attempt in 1..=attempts {
        raw.exec(
            "INSERT INTO delivery_attempts (delivery_id, attempt, tenant_id, at, status_code, \
             duration_ms) VALUES (?, ?, ?, ?, ?, ?)",
            vec![
                id.clone().into(),
                attempt.into(),
                tenant.into(),
                now.into(),
                500i32.into(),
                12i64.into(),
            ],
        )
        .await;
    }
    id
}

/// The rows made before the cutoff.
async fn seed_old(store: &Store, raw: &Raw, tenant: &str) -> Seeded {
    // A finished job: two runs, three chunks of output, a webhook attempt.
    let (done, done_runs, _) = store
        .create_job(job(tenant, json!({"all": true})), runs(&["a1", "a2"]))
        .await
        .expect("job");
    output(store, tenant, "a1", &done_runs[0].id, 0).await;
    output(store, tenant, "a1", &done_runs[0].id, 1).await;
    output(store, tenant, "a2", &done_runs[1].id, 0).await;
    answer(store, tenant, "a1", &done_runs[0].id, true).await;
    answer(store, tenant, "a2", &done_runs[1].id, true).await;
    raw.exec(
        "INSERT INTO webhook_attempts (id, tenant_id, job_id, url, attempt, at, status_code, \
         duration_ms) VALUES (?, ?, ?, ?, 1, ?, 200, 5)",
        vec![
            uuid::Uuid::now_v7().to_string().into(),
            tenant.into(),
            done.id.clone().into(),
            "https://hooks.example/x".into(),
            Utc::now().into(),
        ],
    )
    .await;
    let done_event = event_of(raw, &done.id).await;
    delivery(raw, tenant, &done_event, "delivered", 2).await;

    // A failed job (its own subject: a failure streak); its event's delivery still pending.
    let (failed, failed_runs, _) = store
        .create_job(job(tenant, json!({"tags": ["x"]})), runs(&["a1"]))
        .await
        .expect("job");
    answer(store, tenant, "a1", &failed_runs[0].id, false).await;
    let failed_event = event_of(raw, &failed.id).await;
    delivery(raw, tenant, &failed_event, "pending", 1).await;

    // Finished, but its webhook is still to be delivered.
    let (webhook_due, due_runs, _) = store
        .create_job(job(tenant, json!({"all": true})), runs(&["a1"]))
        .await
        .expect("job");
    answer(store, tenant, "a1", &due_runs[0].id, true).await;
    raw.exec(
        "UPDATE jobs SET webhook_url = 'https://hooks.example/y', webhook_status = 'pending' \
         WHERE id = ?",
        vec![webhook_due.id.clone().into()],
    )
    .await;

    // Still running, and made now but finished later.
    let (open, _, _) = store
        .create_job(job(tenant, json!({"all": true})), runs(&["a3"]))
        .await
        .expect("job");
    let (late, late_runs, _) = store
        .create_job(job(tenant, json!({"all": true})), runs(&["a4"]))
        .await
        .expect("job");

    // Commands outside a job.
    let command = |agent: &str| NewCommand {
        tenant_id: tenant.to_owned(),
        agent_id: agent.to_owned(),
        command: "ping".into(),
        data: json!({}),
        timeout_s: 60,
        ttl_s: 600,
        job_id: None,
        sealed_params: None,
    };
    let command_done = store.insert_command(command("a1")).await.expect("command");
    output(store, tenant, "a1", &command_done.id, 0).await;
    answer(store, tenant, "a1", &command_done.id, true).await;
    let command_open = store.insert_command(command("a5")).await.expect("command");

    // A schedule whose last job is the finished one.
    let schedule = uuid::Uuid::now_v7().to_string();
    let now = Utc::now();
    raw.exec(
        "INSERT INTO schedules (id, tenant_id, name, cron, timezone, command, data, target, \
         enabled, missed, concurrency, role, created_by, created_at, updated_at, last_job_id) \
         VALUES (?, ?, 'nightly', '0 2 * * *', 'UTC', 'ping', ?, ?, ?, 'skip', 'allow', \
         'owner', 'test', ?, ?, ?)",
        vec![
            schedule.clone().into(),
            tenant.into(),
            json!({}).into(),
            json!({"all": true}).into(),
            true.into(),
            now.into(),
            now.into(),
            done.id.clone().into(),
        ],
    )
    .await;

    Seeded {
        done: done.id,
        done_runs: done_runs.into_iter().map(|r| r.id).collect(),
        done_event,
        failed: failed.id,
        failed_event,
        webhook_due: webhook_due.id,
        open: open.id,
        late: late.id,
        late_run: late_runs[0].id.clone(),
        command_done: command_done.id,
        command_open: command_open.id,
        schedule,
        new_job: String::new(),
        new_command: String::new(),
    }
}

/// The rows made after the cutoff, and the late job's end.
async fn seed_new(store: &Store, tenant: &str, seeded: &mut Seeded) {
    answer(store, tenant, "a4", &seeded.late_run, true).await;
    let (new_job, new_runs, _) = store
        .create_job(job(tenant, json!({"all": true})), runs(&["a1"]))
        .await
        .expect("job");
    output(store, tenant, "a1", &new_runs[0].id, 0).await;
    answer(store, tenant, "a1", &new_runs[0].id, true).await;
    let new_command = store
        .insert_command(NewCommand {
            tenant_id: tenant.to_owned(),
            agent_id: "a1".into(),
            command: "ping".into(),
            data: json!({}),
            timeout_s: 60,
            ttl_s: 600,
            job_id: None,
            sealed_params: None,
        })
        .await
        .expect("command");
    answer(store, tenant, "a1", &new_command.id, true).await;
    seeded.new_job = new_job.id;
    seeded.new_command = new_command.id;
}

/// Waits until the clock is past `at`'s millisecond (ids are time-ordered to the millisecond).
async fn past(at: DateTime<Utc>) -> DateTime<Utc> {
    loop {
        let now = outpost_store::now();
        if now.timestamp_millis() > at.timestamp_millis() + 1 {
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Runs the cleaner's steps for every tenant as of `now` (3 rows a step, so that jobs and
/// their output take several); what each tenant lost, and the steps taken.
async fn clean(store: &Store, server: Window, now: DateTime<Utc>) -> (Vec<(String, Deleted)>, u32) {
    let mut out = Vec::new();
    let mut steps = 0;
    for (tenant, days) in store.retention_windows().await.expect("windows") {
        let mut total = Deleted::default();
        if let Some(cutoff) = cutoff(days, server, now) {
            loop {
                let step = store
                    .retention_step(&tenant, cutoff, 3)
                    .await
                    .expect("step");
                steps += 1;
                total.add(&step.deleted);
                if !step.more {
                    break;
                }
            }
        }
        out.push((tenant, total));
    }
    (out, steps)
}

#[tokio::test]
async fn retention_deletes_exactly_the_old_finished_history_of_each_tenant() {
    let fresh = common::Fresh::new();
    let store = Store::open(&fresh.location).await.expect("open");
    let raw = Raw(Database::connect(&fresh.url).await.expect("connect"));
    let actor = Actor::system("test", "test");
    let mut tenants = Vec::new();
    for (name, days) in [("short", Some(1)), ("forever", Some(0)), ("default", None)] {
        let (id, _) = store.create_tenant(name, None).await.expect("tenant");
        if days.is_some() {
            let patch = TenantPatch {
                retention_days: Some(days),
                ..TenantPatch::default()
            };
            store
                .update_tenant(&id, &patch, &actor, None)
                .await
                .expect("patch")
                .expect("tenant");
        }
        tenants.push(id);
    }
    let mut seeded = Vec::new();
    for tenant in &tenants {
        seeded.push(seed_old(&store, &raw, tenant).await);
    }
    let last_old = outpost_store::now();
    let mid = past(last_old).await;
    past(mid).await;
    for (tenant, s) in tenants.iter().zip(seeded.iter_mut()) {
        seed_new(&store, tenant, s).await;
    }
    let mut before = Vec::new();
    for tenant in &tenants {
        before.push(raw.rows(tenant).await);
    }

    // What the old rows of one tenant come to: two jobs (the finished and the failed one),
    // their three runs and the command outside a job; four chunks; the webhook attempt; the
    // end events of the finished job (its delivery and two attempts with it) and of the job
    // whose webhook is due (the job is kept, its event is as old as any); the failure streak.
    let expected = Deleted {
        jobs: 2,
        commands: 4,
        output_chunks: 4,
        run_digests: 0,
        webhook_attempts: 1,
        events: 2,
        deliveries: 1,
        delivery_attempts: 2,
        streaks: 1,
    };
    let server = Window::Days(90);

    // A day after the cutoff: only the tenant keeping one day loses anything.
    let (deleted, steps) = clean(&store, server, mid + chrono::Duration::days(1)).await;
    assert!(steps > 5, "three rows a step take several steps: {steps}");
    let by_tenant = |deleted: &[(String, Deleted)], t: &str| {
        deleted
            .iter()
            .find(|(id, _)| id == t)
            .map(|(_, d)| *d)
            .unwrap_or_default()
    };
    assert_eq!(by_tenant(&deleted, &tenants[0]), expected);
    assert_eq!(by_tenant(&deleted, &tenants[1]), Deleted::default());
    assert_eq!(by_tenant(&deleted, &tenants[2]), Deleted::default());
    assert_eq!(raw.rows(&tenants[0]).await, before[0].less(&expected));
    assert_eq!(raw.rows(&tenants[1]).await, before[1]);
    assert_eq!(raw.rows(&tenants[2]).await, before[2]);
    check_kept(&raw, &seeded[0], true).await;
    check_kept(&raw, &seeded[1], false).await;
    check_kept(&raw, &seeded[2], false).await;

    // Again: nothing more.
    let (deleted, _) = clean(&store, server, mid + chrono::Duration::days(1)).await;
    assert!(deleted.iter().all(|(_, d)| d.rows() == 0), "{deleted:?}");

    // Ninety days on, the server's window reaches the default tenant too; the tenant with 0
    // still keeps everything.
    let (deleted, _) = clean(&store, server, mid + chrono::Duration::days(90)).await;
    assert_eq!(by_tenant(&deleted, &tenants[1]), Deleted::default());
    assert_eq!(by_tenant(&deleted, &tenants[2]), expected);
    // The one-day tenant's new history is 89 days old by then: all of it goes but what is
    // still open or has a webhook to send.
    let short = &seeded[0];
    for (id, kept) in [
        (&short.webhook_due, true),
        (&short.open, true),
        (&short.late, false),
        (&short.new_job, false),
    ] {
        assert_eq!(raw.exists("jobs", id).await, kept, "job {id}");
    }
    assert!(raw.exists("commands", &short.command_open).await);
    assert!(!raw.exists("commands", &short.new_command).await);
    assert_eq!(raw.rows(&tenants[1]).await, before[1]);
    assert_eq!(raw.rows(&tenants[2]).await, before[2].less(&expected));
    check_kept(&raw, &seeded[2], true).await;

    // With the server keeping everything (0), only a tenant's own window deletes.
    let (deleted, _) = clean(&store, Window::Days(0), mid + chrono::Duration::days(3650)).await;
    assert!(deleted.iter().all(|(_, d)| d.rows() == 0), "{deleted:?}");
}

/// What must be there after a clean (`cleaned`: the tenant's old history was deleted).
async fn check_kept(raw: &Raw, s: &Seeded, cleaned: bool) {
    for (what, id) in [
        ("the job whose webhook is due", &s.webhook_due),
        ("the open job", &s.open),
        ("the job finished after the cutoff", &s.late),
        ("the new job", &s.new_job),
    ] {
        assert!(raw.exists("jobs", id).await, "{what} {id} is kept");
    }
    for (what, id) in [
        ("the open command", &s.command_open),
        ("the new command", &s.new_command),
        ("the late job's run", &s.late_run),
    ] {
        assert!(raw.exists("commands", id).await, "{what} {id} is kept");
    }
    assert!(
        raw.exists("events", &s.failed_event).await,
        "an event with a pending delivery is kept"
    );
    assert_eq!(!raw.exists("jobs", &s.done).await, cleaned);
    assert_eq!(!raw.exists("jobs", &s.failed).await, cleaned);
    assert_eq!(!raw.exists("commands", &s.command_done).await, cleaned);
    assert_eq!(!raw.exists("events", &s.done_event).await, cleaned);
    for run in &s.done_runs {
        assert_eq!(!raw.exists("commands", run).await, cleaned);
        let chunks = raw
            .count(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM output_chunks WHERE command_id = ?",
                vec![run.clone().into()],
            )
            .await;
        assert_eq!(chunks == 0, cleaned, "output of {run}");
    }
    let last_job = raw
        .count(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM schedules WHERE id = ? AND last_job_id IS NULL",
            vec![s.schedule.clone().into()],
        )
        .await;
    assert_eq!(
        last_job == 1,
        cleaned,
        "a schedule's last job is cleared with the job"
    );
}

/// A database made before retention (`auto_vacuum = NONE`) is converted at start, and the
/// space retention frees is then given back to the file system, not only reused.
#[tokio::test]
async fn an_older_database_is_converted_and_gives_freed_space_back() {
    if !common::on_sqlite("an_older_database_is_converted_and_gives_freed_space_back") {
        return;
    }
    let fresh = common::Fresh::new();
    let outpost_store::DatabaseLocation::Sqlite(path) = fresh.location.clone() else {
        unreachable!("on SQLite")
    };
    {
        use sea_orm::sqlx::{ConnectOptions as _, Connection as _};
        let mut conn = sea_orm::sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await
            .expect("old database");
        for sql in [
            "PRAGMA auto_vacuum = NONE",
            "CREATE TABLE made_before (x TEXT)",
        ] {
            sea_orm::sqlx::query(sql)
                .execute(&mut conn)
                .await
                .expect(sql);
        }
        conn.close().await.expect("close");
    }
    // A connection of its own each time: one opened earlier reports the setting it read then.
    let auto_vacuum = || async {
        let raw = Raw(Database::connect(&fresh.url).await.expect("connect"));
        raw.count("PRAGMA auto_vacuum", vec![]).await
    };
    let store = Store::open(&fresh.location).await.expect("open");
    assert_eq!(auto_vacuum().await, 0, "made without it");
    store
        .ensure_incremental_vacuum(&path)
        .await
        .expect("convert");
    assert_eq!(auto_vacuum().await, 2, "INCREMENTAL after the start");
    let raw = Raw(Database::connect(&fresh.url).await.expect("connect"));
    let pragma = |name: &'static str| {
        let raw = &raw;
        async move { raw.count(&format!("PRAGMA {name}"), vec![]).await }
    };

    // Two hundred finished commands with 8 KiB of output each, then all of them old.
    let (tenant, _) = store.create_tenant("t", None).await.expect("tenant");
    let chunk = vec![b'x'; 8192];
    for i in 0..200 {
        let command = store
            .insert_command(NewCommand {
                tenant_id: tenant.clone(),
                agent_id: "a1".into(),
                command: "run".into(),
                data: json!({}),
                timeout_s: 60,
                ttl_s: 600,
                job_id: None,
                sealed_params: None,
            })
            .await
            .expect("command");
        let txn = store.begin().await.expect("begin");
        txn.append_output(
            &tenant,
            "a1",
            OutputChunk {
                command_id: &command.id,
                stream: OutputStream::Stdout,
                seq: 0,
                bytes: &chunk,
            },
            1 << 20,
            false,
        )
        .await
        .expect("output");
        txn.commit().await.expect("commit");
        answer(&store, &tenant, "a1", &command.id, i % 2 == 0).await;
    }
    let pages_before = pragma("page_count").await;
    let later = past(outpost_store::now()).await;
    loop {
        let step = store
            .retention_step(&tenant, later, 500)
            .await
            .expect("step");
        if !step.more {
            break;
        }
    }
    assert_eq!(
        raw.count("SELECT CAST(COUNT(*) AS BIGINT) FROM output_chunks", vec![])
            .await,
        0
    );
    let free = pragma("freelist_count").await;
    assert!(free > 200, "the output's pages are free: {free}");
    let mut given = 0;
    loop {
        let n = store.reclaim_space(64).await.expect("reclaim");
        if n == 0 {
            break;
        }
        given += n;
    }
    let pages_after = pragma("page_count").await;
    println!("pages {pages_before} -> {pages_after}, {given} given back, {free} were free");
    assert!(given > 0);
    assert!(
        pages_after <= pages_before - given + 1,
        "the file shrank: {pages_before} -> {pages_after}"
    );
    assert!(
        pragma("freelist_count").await <= pages_after / 4 + 1,
        "a quarter of the file at most stays free for reuse"
    );
}
