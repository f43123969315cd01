//! The batching writer: many agents finishing at once cost few transactions, every write is
//! committed and answered, and repeats are no-ops.

use std::sync::{Arc, Mutex};

use outpost_protocol::Response;
use outpost_store::writer::{Checkpointing, Finish, Write, Writer, Written};
use outpost_store::{
    DatabaseLocation, NewCommand, Store, WAL_FILE_LIMIT_BYTES, WAL_LIMIT_BYTES, command,
};
use serde_json::json;

use crate::common;
use common::fresh_store;

/// A pending command for `agent`.
async fn insert(store: &Store, tenant: &str, agent: &str, command: &str) -> command::Model {
    store
        .insert_command(NewCommand {
            tenant_id: tenant.to_owned(),
            agent_id: agent.to_owned(),
            command: command.into(),
            data: json!({}),
            timeout_s: 60,
            ttl_s: 3600,
            job_id: None,
            sealed_params: None,
        })
        .await
        .expect("insert")
}

/// A pending `echo` of `message` for `agent`: a large message grows the WAL quickly.
async fn insert_echo(store: &Store, tenant: &str, agent: &str, message: &str) -> command::Model {
    store
        .insert_command(NewCommand {
            tenant_id: tenant.to_owned(),
            agent_id: agent.to_owned(),
            command: "echo".into(),
            data: json!({ "message": message }),
            timeout_s: 60,
            ttl_s: 3600,
            job_id: None,
            sealed_params: None,
        })
        .await
        .expect("insert")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_results_commit_in_few_transactions() {
    let (_dir, store, tenant) = fresh_store().await;
    let mut ids = Vec::new();
    for i in 0..2000 {
        let command = insert(&store, &tenant, &format!("agent-{i}"), "ping").await;
        ids.push((format!("agent-{i}"), command.id));
    }
    let writer = Writer::start(store.clone(), store.clone()).expect("the writer starts");
    // Whoever waits for a result hears of it before the write's submitter does.
    let heard = Arc::new(Mutex::new(Vec::new()));
    let listener = heard.clone();
    assert!(writer.on_finished(move |runs| {
        let mut heard = listener.lock().expect("lock");
        heard.extend(runs.into_iter().map(|run| run.id));
    }));
    assert!(!writer.on_finished(|_| {}), "the listener is set once");
    let finish = |agent: String, id: String| {
        let (writer, tenant, heard) = (writer.clone(), tenant.clone(), heard.clone());
        tokio::spawn(async move {
            let response = Response::ok(id.parse().expect("uuid"), json!({"pong": true}));
            let written = writer
                .write(Write::Finish {
                    tenant_id: tenant,
                    agent_id: agent,
                    response,
                })
                .await
                .expect("write");
            assert!(
                heard.lock().expect("lock").contains(&id),
                "{id} not heard first"
            );
            written
        })
    };
    let tasks: Vec<_> = ids
        .iter()
        .map(|(a, id)| finish(a.clone(), id.clone()))
        .collect();
    for task in tasks {
        assert!(matches!(
            task.await.expect("join"),
            Written::Finished(Finish::Stored)
        ));
    }
    let (batches, writes) = writer.stats();
    println!("{writes} results committed in {batches} transactions");
    assert_eq!(writes, 2000);
    assert!(
        batches * 4 < writes,
        "{batches} transactions for {writes} writes"
    );
    for (_, id) in &ids {
        let stored = store
            .get_command(&tenant, id)
            .await
            .expect("get")
            .expect("row");
        assert_eq!(stored.state, "succeeded");
    }
    // A repeated answer changes nothing; one for another agent's command is ignored.
    let (agent, id) = ids[0].clone();
    let again = Response::ok(id.parse().expect("uuid"), json!({"pong": false}));
    let written = writer
        .write(Write::Finish {
            tenant_id: tenant.clone(),
            agent_id: agent,
            response: again.clone(),
        })
        .await
        .expect("write");
    assert!(matches!(written, Written::Finished(Finish::Repeat)));
    let written = writer
        .write(Write::Finish {
            tenant_id: tenant.clone(),
            agent_id: "intruder".into(),
            response: again,
        })
        .await
        .expect("write");
    assert!(matches!(written, Written::Finished(Finish::Foreign)));
    // Each result was heard once; the repeat and the foreign answer were not.
    let mut heard = std::mem::take(&mut *heard.lock().expect("lock"));
    heard.sort();
    let mut expected: Vec<String> = ids.iter().map(|(_, id)| id.clone()).collect();
    expected.sort();
    assert_eq!(heard, expected);
    let stored = store
        .get_command(&tenant, &id)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(stored.result, Some(json!({"pong": true})));
}

/// Acknowledgements of many agents in one batch: a `run` becomes running (with its start
/// time), anything else delivered; a foreign or repeated ack changes nothing; an agent's own
/// ack, output and result queued together are applied in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_acks_move_only_the_agents_own_pending_commands() {
    let (_dir, store, tenant) = fresh_store().await;
    let mut commands = Vec::new();
    for i in 0..600 {
        let command = if i % 2 == 0 { "ping" } else { "run" };
        let model = insert(&store, &tenant, &format!("agent-{i}"), command).await;
        commands.push(model);
    }
    let writer = Writer::start(store.clone(), store.clone()).expect("the writer starts");
    let ack = |agent: &str, id: &str| Write::Delivered {
        tenant_id: tenant.clone(),
        agent_id: agent.to_owned(),
        command_id: id.to_owned(),
    };
    // Every agent's ack, plus one from an intruder for each command, all queued at once.
    let mut tasks = Vec::new();
    for model in &commands {
        for agent in [model.agent_id.as_str(), "intruder"] {
            let (writer, write) = (writer.clone(), ack(agent, &model.id));
            let own = agent == model.agent_id;
            tasks.push(tokio::spawn(async move {
                (own, writer.write(write).await.expect("write"))
            }));
        }
    }
    for task in tasks {
        match task.await.expect("join") {
            (true, Written::Delivered { changed: true, .. })
            | (false, Written::Delivered { changed: false, .. }) => {}
            (own, other) => panic!("own={own}: {other:?}"),
        }
    }
    for model in &commands {
        let stored = store
            .get_command(&tenant, &model.id)
            .await
            .expect("get")
            .expect("row");
        let expected = if model.command == "run" {
            "running"
        } else {
            "delivered"
        };
        assert_eq!(stored.state, expected, "{}", model.command);
        assert!(stored.delivered_at.is_some());
        assert_eq!(stored.started_at.is_some(), model.command == "run");
    }
    // A repeat changes nothing.
    let first = &commands[0];
    let written = writer
        .write(ack(&first.agent_id, &first.id))
        .await
        .expect("write");
    assert!(matches!(
        written,
        Written::Delivered {
            changed: false,
            job_id: None
        }
    ));
}

/// Batches of every size from 1 to 17 (statements are padded to a power of two with rows
/// that must match nothing): each stores exactly its own commands and returns each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_any_size_change_exactly_their_own_commands() {
    let (_dir, store, tenant) = fresh_store().await;
    for size in 1..=17usize {
        let mut models = Vec::new();
        for i in 0..size + 2 {
            models.push(insert(&store, &tenant, &format!("agent-{size}-{i}"), "ping").await);
        }
        // Two commands of each round stay untouched.
        let (answered, untouched) = models.split_at(size);
        let acks: Vec<_> = answered
            .iter()
            .map(|m| (tenant.as_str(), m.agent_id.as_str(), m.id.as_str()))
            .collect();
        let delivered = store.mark_delivered_many(&acks).await.expect("acks");
        assert_eq!(delivered.len(), size, "acks of a batch of {size}");
        let responses: Vec<_> = answered
            .iter()
            .map(|m| Response::ok(m.id.parse().expect("uuid"), json!({"pong": true})))
            .collect();
        let results: Vec<_> = answered
            .iter()
            .zip(&responses)
            .map(|(m, r)| (tenant.as_str(), m.agent_id.as_str(), r))
            .collect();
        let finished = store.store_results_many(&results).await.expect("results");
        let mut ids: Vec<_> = finished.iter().map(|m| m.id.clone()).collect();
        ids.sort();
        let mut expected: Vec<_> = answered.iter().map(|m| m.id.clone()).collect();
        expected.sort();
        assert_eq!(ids, expected, "results of a batch of {size}");
        for model in untouched {
            let stored = store
                .get_command(&tenant, &model.id)
                .await
                .expect("get")
                .expect("row");
            assert_eq!(stored.state, "pending", "beside a batch of {size}");
        }
    }
}

/// A migrated SQLite store and a plain connection of the test's own to it (the directory
/// goes when the first is dropped).
async fn migrated_sqlite() -> (tempfile::TempDir, sea_orm::DatabaseConnection) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("outpost.db");
    Store::open(&DatabaseLocation::Sqlite(path.clone()))
        .await
        .expect("open");
    let db = sea_orm::Database::connect(format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    (dir, db)
}

/// The SQLite linked into the server keeps a statement's plan whatever is bound to it
/// (`.cargo/config.toml`): without that, every `LIMIT ?` (every sea-orm `.one()`, every page)
/// made SQLite parse and plan its statement again on each run.
#[tokio::test]
async fn sqlite_plans_never_depend_on_bound_values() {
    if !common::on_sqlite("sqlite_plans_never_depend_on_bound_values") {
        return;
    }
    use sea_orm::{ConnectionTrait, Statement};
    let (_dir, db) = migrated_sqlite().await;
    let options: Vec<String> = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "PRAGMA compile_options".to_owned(),
        ))
        .await
        .expect("compile options")
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).expect("option"))
        .collect();
    assert!(
        options.iter().any(|o| o == "ENABLE_QPSG"),
        "SQLite was built without SQLITE_ENABLE_QPSG (LIBSQLITE3_FLAGS in .cargo/config.toml): \
         {options:?}"
    );
}

/// An agent's open commands are found on the partial index of open commands (which a bound
/// state value would hide from SQLite's planner), and its history on the agent index.
#[tokio::test]
async fn open_commands_use_the_partial_index() {
    if !common::on_sqlite("open_commands_use_the_partial_index") {
        return;
    }
    use sea_orm::{ConnectionTrait, Statement};
    let (_dir, db) = migrated_sqlite().await;
    let plan = |sql: String| {
        let db = db.clone();
        async move {
            let rows = db
                .query_all_raw(Statement::from_string(
                    db.get_database_backend(),
                    format!("EXPLAIN QUERY PLAN {sql}"),
                ))
                .await
                .expect("plan");
            rows.iter()
                .map(|r| r.try_get::<String>("", "detail").expect("detail"))
                .collect::<Vec<_>>()
                .join("; ")
        }
    };
    let open = plan(format!(
        "SELECT id FROM commands WHERE tenant_id = 't' AND agent_id = 'a' AND {}",
        outpost_store::state::OPEN_SQL
    ))
    .await;
    assert!(open.contains("commands_agent_open"), "{open}");
    let history =
        plan("SELECT job_id FROM commands WHERE tenant_id = 't' AND agent_id = 'a'".into()).await;
    assert!(history.contains("commands_agent"), "{history}");
    let quoted: Vec<_> = outpost_store::state::OPEN
        .iter()
        .map(|s| format!("'{s}'"))
        .collect();
    assert_eq!(
        outpost_store::state::OPEN_SQL,
        format!("state IN ({})", quoted.join(", "))
    );
}

/// Commits do not checkpoint the WAL themselves (that stalled the commit that crossed the
/// threshold); the writer's checkpoint between batches copies every committed page into the
/// database file.
#[tokio::test]
async fn checkpoints_copy_the_wal_into_the_database() {
    if !common::on_sqlite("checkpoints_copy_the_wal_into_the_database") {
        return;
    }
    let (dir, store, tenant) = fresh_store().await;
    for i in 0..50 {
        insert(&store, &tenant, &format!("agent-{i}"), "ping").await;
    }
    let wal = dir.path().join("outpost.db-wal");
    let before = std::fs::metadata(&wal).expect("wal").len();
    assert!(before > 0, "commits went to the WAL");
    let (log, done) = store
        .checkpoint()
        .await
        .expect("checkpoint")
        .expect("SQLite reports its WAL");
    assert!(log > 0, "the WAL held pages");
    assert_eq!(
        log, done,
        "every page was copied (nothing else was reading)"
    );
}

/// The WAL is checkpointed in the background, beside a writer that never pauses; such a
/// checkpoint never lets the WAL start over (that needs a write to begin with every page
/// copied), so past its limit the writer checkpoints itself between two batches. Here output
/// is written without a pause against a 1 MiB limit until the WAL file (which only grows) is
/// under half of what was written, which it never is unless the WAL starts over. How soon that
/// is depends on how fast the background's checkpoints are (slower on a busy machine), so the
/// test waits for it, up to 192 MiB written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_under_continuous_writes() {
    if !common::on_sqlite("the_wal_starts_over_under_continuous_writes") {
        return;
    }
    let (dir, store, tenant) = fresh_store().await;
    let run = insert(&store, &tenant, "agent", "run").await;
    let policy = Checkpointing {
        every: std::time::Duration::from_millis(20),
        restart_pages: 256,
    };
    let writer = Writer::start_with(store.clone(), store.clone(), policy).expect("starts");
    let chunk = vec![b'x'; 64 * 1024];
    let wal_file = dir.path().join("outpost.db-wal");
    let wal = || std::fs::metadata(&wal_file).expect("wal").len();
    // Eight writes in flight at once, so that the writer always has the next batch queued.
    let mut pending = std::collections::VecDeque::new();
    let mut written = 0u64;
    for seq in 0.. {
        let committed = writer
            .submit(stdout(&tenant, "agent", &run.id, seq, chunk.clone()))
            .await
            .expect("queued");
        pending.push_back(committed);
        if pending.len() == 8 {
            pending.pop_front().expect("one").await.expect("stored");
            written += chunk.len() as u64;
        }
        if written >= 8 << 20 && wal() < written / 2 {
            break;
        }
        assert!(
            written < 192 << 20,
            "the WAL grew to {} bytes for {written} bytes written: it never started over",
            wal()
        );
    }
    for committed in pending {
        committed.await.expect("stored");
    }
}

/// A writer on `store` whose background checkpoint runs every 20 ms, with the WAL's limits as
/// shipped.
fn writer_checkpointing_often(store: &Store) -> Writer {
    let policy = Checkpointing {
        every: std::time::Duration::from_millis(20),
        ..Checkpointing::default()
    };
    Writer::start_with(store.clone(), store.clone(), policy).expect("starts")
}

/// SQLite reuses the WAL's file rather than shrinking it: a burst of writes that the writer
/// did not checkpoint between (here, commits on the pool, as when thousands of agents register
/// at once) would leave it that large on disk for good. Once the writer has made the WAL start
/// over, its file is cut back to the file's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_file_is_cut_back_after_a_burst() {
    if !common::on_sqlite("the_wal_file_is_cut_back_after_a_burst") {
        return;
    }
    let (dir, store, tenant) = fresh_store().await;
    let wal_file = dir.path().join("outpost.db-wal");
    let wal = || std::fs::metadata(&wal_file).expect("wal").len();
    let limit = WAL_FILE_LIMIT_BYTES as u64;
    let blob = "x".repeat(1 << 20);
    let mut i = 0;
    while wal() <= limit + (4 << 20) {
        insert_echo(&store, &tenant, &format!("agent-{i}"), &blob).await;
        i += 1;
        assert!(i < 400, "the WAL stayed at {} bytes", wal());
    }
    let burst = wal();
    let run = insert(&store, &tenant, "agent", "run").await;
    let writer = writer_checkpointing_often(&store);
    for seq in 0.. {
        writer
            .write(stdout(&tenant, "agent", &run.id, seq, vec![b'y'; 1024]))
            .await
            .expect("stored");
        if wal() <= limit {
            break;
        }
        assert!(
            seq < 20_000,
            "the WAL file is still {} bytes after a burst to {burst} and {seq} writes",
            wal()
        );
    }
}

/// Under steady writes through the writer the WAL's file keeps its size from one cycle to the
/// next: the writer starts the WAL over once the background has seen it past
/// `WAL_LIMIT_BYTES`, a little past it by then, and the file's own limit leaves room for that,
/// so the file is written over in place. Cut back to `WAL_LIMIT_BYTES` at every restart, it was
/// cut and grown again in every cycle, on the writer's path (docs/BENCHMARKS.md, "The WAL's file
/// keeps its size under load").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_steady_writes_the_wal_file_keeps_its_size() {
    if !common::on_sqlite("under_steady_writes_the_wal_file_keeps_its_size") {
        return;
    }
    let (dir, store, tenant) = fresh_store().await;
    let wal_file = dir.path().join("outpost.db-wal");
    let wal = || std::fs::metadata(&wal_file).map_or(0, |m| m.len());
    let run = insert(&store, &tenant, "agent", "run").await;
    let writer = writer_checkpointing_often(&store);
    let chunk = 256 << 10;
    let mut size = wal();
    let mut written = 0u64;
    let mut seq = 0;
    // Three times the restart point: the WAL starts over at least twice.
    while written < 3 * WAL_LIMIT_BYTES as u64 {
        writer
            .write(stdout(&tenant, "agent", &run.id, seq, vec![b'y'; chunk]))
            .await
            .expect("stored");
        seq += 1;
        written += chunk as u64;
        let now = wal();
        // Emptied is allowed: a test stalled for two of the background's looks leaves an idle
        // WAL, which the background truncates (the test below), and this write may then be
        // all the file holds (one chunk's pages: 288,432 bytes seen on a busy CI machine).
        // Cut back part way, to the file limit (128 MiB), is not.
        let emptied_then_written = now <= 2 * chunk as u64;
        assert!(
            now >= size || emptied_then_written,
            "the WAL file was cut from {size} to {now} bytes after {written} bytes of writes"
        );
        size = now;
    }
    assert!(
        size <= WAL_FILE_LIMIT_BYTES as u64,
        "the WAL did not start over: its file is {size} bytes after {written} bytes of writes"
    );
}

/// A WAL left past its limit by a burst (as when thousands of agents register at once) is
/// started over and cut to nothing by the background once nothing has written to it for a
/// look, rather than by the next write's commit, which is on a job's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_wal_past_its_limit_is_truncated_in_the_background() {
    if !common::on_sqlite("an_idle_wal_past_its_limit_is_truncated_in_the_background") {
        return;
    }
    let (dir, store, tenant) = fresh_store().await;
    let wal_file = dir.path().join("outpost.db-wal");
    let wal = || std::fs::metadata(&wal_file).expect("wal").len();
    let blob = "x".repeat(64 << 10);
    let mut ids = Vec::new();
    for i in 0..32 {
        ids.push(
            insert_echo(&store, &tenant, &format!("agent-{i}"), &blob)
                .await
                .id,
        );
    }
    let policy = Checkpointing {
        every: std::time::Duration::from_millis(20),
        restart_pages: 64,
    };
    let burst = wal();
    assert!(burst > 64 * 4096, "the burst grew the WAL past the limit");
    let _writer = Writer::start_with(store.clone(), store.clone(), policy).expect("starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while wal() > 0 {
        if std::time::Instant::now() >= deadline {
            // Seen once in CI and never since: say whether the WAL could be cut at all now
            // (a reader pinning it) or whether the background never tried.
            let stuck = wal();
            let passive = store.checkpoint().await;
            let truncate = store.checkpoint_truncate().await;
            panic!(
                "the idle WAL is still {stuck} bytes (burst: {burst}); checked now: \
                 PASSIVE (log, done) {passive:?}, TRUNCATE {truncate:?}, leaving {} bytes",
                wal()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Everything was copied before the WAL was cut, and it takes writes again.
    for id in &ids {
        let stored = store.get_command(&tenant, id).await.expect("read");
        assert!(stored.is_some(), "command {id} survived the truncation");
    }
    insert(&store, &tenant, "agent-after", "ping").await;
    assert!(wal() > 0, "the next write went to the WAL");
}

fn register(hostname: &str) -> outpost_protocol::RegisterData {
    serde_json::from_value(json!({
        "agent_id": uuid::Uuid::now_v7(), "hostname": hostname, "ip": "127.0.0.1",
        "version": "0.1.0", "os": "linux", "arch": "x86_64", "protocol": 1,
        "capabilities": ["ping"], "tags": [], "scripts": []
    }))
    .expect("register data")
}

/// Registers an agent with `data` under the tenant's key "key"; its stored row.
async fn stored_agent(
    store: &Store,
    tenant: &str,
    data: &outpost_protocol::RegisterData,
) -> outpost_store::agent::Model {
    store
        .upsert_agent(
            tenant,
            "key",
            data,
            None,
            outpost_store::domain::Transport::Websocket,
        )
        .await
        .expect("agent")
        .into_stored()
        .expect("bound to its key")
}

fn status(uptime_s: u64) -> outpost_protocol::HeartbeatStatus {
    serde_json::from_value(json!({
        "uptime_s": uptime_s, "cpu_percent": 1.5, "memory_percent": 40.0,
        "disk_percent": 60.0, "load1": 0.25, "timestamp": chrono::Utc::now(),
    }))
    .expect("heartbeat status")
}

/// Heartbeats are stored a batch at a time: each agent's row gets its own latest heartbeat
/// (also when one agent's two heartbeats share a batch), and an agent id of another tenant is
/// not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_in_one_batch_store_each_agent_s_latest() {
    let (_dir, store, tenant) = fresh_store().await;
    let (other, _) = store.create_tenant("u", None).await.expect("tenant");
    let mut agents = Vec::new();
    for i in 0..1500 {
        let agent = stored_agent(&store, &tenant, &register(&format!("host-{i}"))).await;
        agents.push(agent.id);
    }
    // The same agent id in another tenant.
    let data = outpost_protocol::RegisterData {
        agent_id: agents[0].parse().expect("uuid"),
        ..register("elsewhere")
    };
    stored_agent(&store, &other, &data).await;

    let writer = Writer::start(store.clone(), store.clone()).expect("the writer starts");
    let beat = |tenant: &str, agent: &str, uptime_s| Write::Heartbeat {
        tenant_id: tenant.to_owned(),
        agent_id: agent.to_owned(),
        status: status(uptime_s),
    };
    // Queued without waiting, so that they share batches: every agent twice, in order.
    let mut committed = Vec::new();
    for round in [1, 2] {
        for (i, agent) in agents.iter().enumerate() {
            let write = beat(&tenant, agent, round * 10_000 + i as u64);
            committed.push(writer.submit(write).await.expect("queued"));
        }
    }
    for done in committed {
        assert!(matches!(done.await.expect("committed"), Written::Heartbeat));
    }
    let (batches, writes) = writer.stats();
    assert_eq!(writes, 3000);
    assert!(
        batches < 3000,
        "{batches} transactions for {writes} heartbeats"
    );

    for (i, agent) in agents.iter().enumerate() {
        let row = store
            .get_agent(&tenant, agent)
            .await
            .expect("get")
            .expect("row");
        let stored = row.last_heartbeat.expect("a heartbeat is stored");
        assert_eq!(stored["uptime_s"], json!(20_000 + i as u64), "agent {i}");
        assert_eq!(stored["load1"], json!(0.25));
    }
    let untouched = store
        .get_agent(&other, &agents[0])
        .await
        .expect("get")
        .expect("row");
    assert_eq!(untouched.last_heartbeat, None, "another tenant's agent");
}

/// Output chunks `0..n` of `run` on stdout, each one byte `b'a' + seq`.
fn chunk(tenant: &str, agent: &str, run: &str, seq: u64) -> Write {
    stdout(tenant, agent, run, seq, vec![b'a' + seq as u8])
}

/// Chunk `seq` of `run`'s stdout, holding `bytes`, uncapped.
fn stdout(tenant: &str, agent: &str, run: &str, seq: u64, bytes: Vec<u8>) -> Write {
    Write::Output {
        tenant_id: tenant.to_owned(),
        agent_id: agent.to_owned(),
        command_id: run.to_owned(),
        stream: outpost_protocol::OutputStream::Stdout,
        seq,
        bytes,
        cap: u64::MAX,
    }
}

/// The seqs of a run's stored stdout chunks.
async fn stored_seqs(store: &Store, tenant: &str, run: &str) -> Vec<i64> {
    let chunks = store
        .output_page(
            tenant,
            run,
            &[outpost_protocol::OutputStream::Stdout],
            0,
            1000,
        )
        .await
        .expect("output");
    let mut seqs: Vec<i64> = chunks.into_iter().map(|c| c.seq).collect();
    seqs.sort_unstable();
    seqs
}

/// Another connection holding SQLite's write lock (as registrations, disconnects and new
/// commands on the pool do) delays the writer's batches but fails none of them. A batch that
/// reads before it writes (output) used to fail at once with "database is locked" (5, or 517
/// `BUSY_SNAPSHOT`), whatever the busy timeout, when it met such a lock: it is `BEGIN
/// IMMEDIATE` now, which waits for the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writer_holding_the_lock_delays_batches_but_fails_none() {
    use sea_orm::ConnectionTrait;
    let (dir, store, tenant) = fresh_store().await;
    let writer = Writer::start(store.clone(), store.clone()).expect("starts");
    let other = sea_orm::Database::connect(&dir.url).await.expect("connect");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Takes the write lock for 20 ms at a time, 2 ms apart, until told to stop.
    let contender = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut held = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let txn = outpost_store::begin_write(&other).await.expect("begin");
                txn.execute_unprepared("UPDATE tenants SET name = name")
                    .await
                    .expect("update");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                txn.commit().await.expect("commit");
                held += 1;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            held
        })
    };
    let mut runs = Vec::new();
    for i in 0..20 {
        let agent = format!("agent-{i}");
        runs.push((insert(&store, &tenant, &agent, "run").await.id, agent));
    }
    // Every run: 20 output chunks then its result, queued without waiting, as agents do.
    let mut pending = Vec::new();
    for seq in 0..20 {
        for (run, agent) in &runs {
            pending.push(
                writer
                    .submit(chunk(&tenant, agent, run, seq))
                    .await
                    .expect("queued"),
            );
        }
    }
    for (run, agent) in &runs {
        let response = Response::ok(run.parse().expect("uuid"), json!({"exit_code": 0}));
        pending.push(
            writer
                .submit(Write::Finish {
                    tenant_id: tenant.clone(),
                    agent_id: agent.clone(),
                    response,
                })
                .await
                .expect("queued"),
        );
    }
    for committed in pending {
        committed.await.expect("every write commits");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let held = contender.await.expect("join");
    assert!(held > 0, "the other connection took the lock");
    for (run, _) in &runs {
        let stored = store
            .get_command(&tenant, run)
            .await
            .expect("get")
            .expect("row");
        assert_eq!(stored.state, "succeeded");
        assert_eq!(
            stored_seqs(&store, &tenant, run).await,
            (0..20).collect::<Vec<_>>()
        );
    }
    assert_eq!(writer.health().failures(), 0, "no batch failed on the lock");
}

/// A write that fails for good (here: a trigger refuses output chunk 1) fails alone: the other
/// connections' writes in its batch commit, and its own connection's later writes (chunk 2, the
/// result) are refused unapplied, in that batch and in later ones, so that the run is never
/// finished with a hole in its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_write_its_connection_s_later_writes_are_refused() {
    use outpost_store::writer::Fence;
    use sea_orm::ConnectionTrait;
    let (dir, store, tenant) = fresh_store().await;
    let other = sea_orm::Database::connect(&dir.url).await.expect("connect");
    let trigger = if dir.is_postgres() {
        "CREATE FUNCTION refuse_seq_1() RETURNS trigger AS $$ BEGIN IF NEW.seq = 1 THEN \
         RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER refuse_seq_1 BEFORE INSERT ON output_chunks FOR EACH ROW \
         EXECUTE FUNCTION refuse_seq_1()"
    } else {
        "CREATE TRIGGER refuse_seq_1 BEFORE INSERT ON output_chunks WHEN NEW.seq = 1 \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    };
    other.execute_unprepared(trigger).await.expect("trigger");
    let writer = Writer::start(store.clone(), store.clone()).expect("starts");
    let (broken, sound) = (
        insert(&store, &tenant, "agent-a", "run").await.id,
        insert(&store, &tenant, "agent-b", "run").await.id,
    );
    let (fence_a, fence_b) = (Fence::new(), Fence::new());
    let finish = |agent: &str, run: &str| Write::Finish {
        tenant_id: tenant.clone(),
        agent_id: agent.to_owned(),
        response: Response::ok(run.parse().expect("uuid"), json!({"exit_code": 0})),
    };
    // One batch: a's chunks 0, 1 (refused), 2 and result, between b's chunks 0 and 2.
    let mut queued = Vec::new();
    for (write, fence) in [
        (chunk(&tenant, "agent-a", &broken, 0), &fence_a),
        (chunk(&tenant, "agent-b", &sound, 0), &fence_b),
        (chunk(&tenant, "agent-a", &broken, 1), &fence_a),
        (chunk(&tenant, "agent-a", &broken, 2), &fence_a),
        (chunk(&tenant, "agent-b", &sound, 2), &fence_b),
        (finish("agent-a", &broken), &fence_a),
    ] {
        queued.push(writer.submit_in_order(write, fence).await.expect("queued"));
    }
    let mut outcomes = Vec::new();
    for committed in queued {
        outcomes.push(committed.await.is_ok());
    }
    assert_eq!(outcomes, [true, true, false, false, true, false]);
    // A later batch of the broken connection is refused too; the other goes on.
    let late = writer
        .submit_in_order(chunk(&tenant, "agent-a", &broken, 3), &fence_a)
        .await
        .expect("queued");
    assert!(late.await.is_err());
    writer
        .write(finish("agent-b", &sound))
        .await
        .expect("b's result");

    assert_eq!(stored_seqs(&store, &tenant, &broken).await, [0]);
    let run = store
        .get_command(&tenant, &broken)
        .await
        .expect("get")
        .expect("row");
    assert_ne!(
        run.state, "succeeded",
        "never finished with a hole in its output"
    );
    assert_eq!(stored_seqs(&store, &tenant, &sound).await, [0, 2]);
    let run = store
        .get_command(&tenant, &sound)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(run.state, "succeeded");
}

/// On PostgreSQL, a batch that loses a deadlock is tried again at once and commits, and the
/// writer never reports its writes as failing meanwhile: a lost lock conflict is not an
/// unwritable database (it was reported as one, and every API write was refused and
/// `/readyz` failed for the retry's backoff). The other transaction here locks agent `b`,
/// then `a`, while the writer's batch of heartbeats (in key order) holds `a` and waits for
/// `b`; the other waits longer before checking for deadlocks, so the writer's batch loses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_loses_a_deadlock_is_tried_again_without_failing_writes() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    use std::sync::atomic::{AtomicBool, Ordering};
    let (dir, store, tenant) = fresh_store().await;
    if !dir.is_postgres() {
        eprintln!(
            "SKIPPED a_batch_that_loses_a_deadlock_is_tried_again_without_failing_writes: \
             about PostgreSQL's row locks (run with OUTPOST_TEST_BACKEND=postgres)"
        );
        return;
    }
    let mut agents = Vec::new();
    for host in ["a", "b", "c"] {
        let agent = stored_agent(&store, &tenant, &register(host)).await;
        agents.push(agent.id);
    }
    agents.sort();
    let (a, b, c) = (&agents[0], &agents[1], &agents[2]);
    let lock = |agent: &str| {
        format!(
            "UPDATE agents SET last_seen = last_seen WHERE tenant_id = '{tenant}' AND id = '{agent}'"
        )
    };
    let other = sea_orm::Database::connect(&dir.url).await.expect("connect");
    let waiting = || async {
        let row = other
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND datname = current_database()",
            ))
            .await
            .expect("pg_stat_activity")
            .expect("a row");
        row.try_get::<i64>("", "n").expect("count") > 0
    };
    let txn = other.begin().await.expect("begin");
    txn.execute_unprepared("SET LOCAL deadlock_timeout = '30s'")
        .await
        .expect("deadlock_timeout");
    txn.execute_unprepared(&lock(b)).await.expect("lock b");
    // `c` is held in a savepoint: rolling back to it lets the writer's first batch through.
    txn.execute_unprepared("SAVEPOINT c")
        .await
        .expect("savepoint");
    txn.execute_unprepared(&lock(c)).await.expect("lock c");

    let writer = Writer::start(store.clone(), store.clone()).expect("the writer starts");
    let failing = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (writer, failing, done) = (writer.clone(), failing.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if writer.health().status().is_err() {
                    failing.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
    };
    let beat = |agent: &str, uptime_s| Write::Heartbeat {
        tenant_id: tenant.clone(),
        agent_id: agent.to_owned(),
        status: status(uptime_s),
    };
    // The first batch waits for `c`; `a` and `b` queue behind it and share the next batch.
    let first = writer.submit(beat(c, 1)).await.expect("queued");
    while !waiting().await {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (beat_a, beat_b) = (
        writer.submit(beat(a, 2)).await.expect("queued"),
        writer.submit(beat(b, 3)).await.expect("queued"),
    );
    txn.execute_unprepared("ROLLBACK TO SAVEPOINT c")
        .await
        .expect("release c");
    first.await.expect("the first batch commits");
    while !waiting().await {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // The writer holds `a` and waits for `b`: taking `a` closes the cycle. The writer's
    // check runs first (1 s against 30 s) and aborts its own batch, which lets this through.
    txn.execute_unprepared(&lock(a))
        .await
        .expect("the other transaction wins the deadlock");
    txn.commit().await.expect("commit");
    beat_a.await.expect("a's heartbeat commits");
    beat_b.await.expect("b's heartbeat commits");
    done.store(true, Ordering::Relaxed);
    watcher.await.expect("join");

    assert_eq!(writer.health().failures(), 1, "the batch lost one deadlock");
    assert!(
        !failing.load(Ordering::Relaxed),
        "the writer reported its writes as failing for a lost deadlock"
    );
    for (agent, uptime_s) in [(a, 2), (b, 3), (c, 1)] {
        let row = store
            .get_agent(&tenant, agent)
            .await
            .expect("get")
            .expect("row");
        let stored = row.last_heartbeat.expect("a heartbeat is stored");
        assert_eq!(stored["uptime_s"], json!(uptime_s), "agent {agent}");
    }
}
