//! Acknowledgements and results of many commands, one statement each kind.
//!
//! When ten thousand agents answer a fan-out, the writer receives twenty thousand state
//! changes within a second. Run one by one, each is a round trip from the writer task to the
//! database driver's thread, and those round trips, not the commits, bound how many results a
//! second the server stores. These methods take a whole batch and change it with one
//! `UPDATE … RETURNING`: the values ride in a `WITH v(…) AS (VALUES …)` table that the update
//! joins on the command's primary key, so the statement is as selective as the single-row one
//! and keeps its conditions: the tenant, the addressed agent (only a command's own agent can
//! move it) and the states it may move from (so a resend changes nothing).
//!
//! Both SQLite (3.35+: `UPDATE … FROM`, `RETURNING`) and PostgreSQL accept the same text;
//! only the placeholders differ, and SQLite's statements say `OR FAIL`.
//!
//! `OR FAIL`: by default (`OR ABORT`) SQLite undoes a failed statement's own changes and
//! keeps the transaction, so before a statement that changes many rows touches a page it
//! copies the page to a statement journal, which spills into a temporary file past 64 KiB:
//! for a batch of a thousand results that file was created, written and deleted in every
//! transaction, a measurable share of the server's CPU in a fan-out and of the results' time
//! in SQLite (figures: docs/BENCHMARKS.md, "Design notes behind the figures"). With `OR FAIL`
//! a failed statement keeps what it changed before failing and needs no such copy. That is
//! safe here because every one of these statements runs in a transaction that is rolled back
//! whole when a statement fails: the writer's batch (it retries the writes one by one), and a
//! job's creation.

use super::now;
use outpost_protocol::{HeartbeatStatus, Response};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Iterable, QueryResult, Statement, Value};

use super::{Result, Store, command, state};

/// Rows changed by one statement: far below SQLite's 32,766 bound variables at 10 a row. A
/// power of two, so that a full chunk needs no padding (see `Sql::pad_rows`).
const ROWS_PER_STATEMENT: usize = 1024;

/// One acknowledgement: `(tenant, agent, command)`.
pub type AckKey<'a> = (&'a str, &'a str, &'a str);

impl<C: ConnectionTrait> Store<C> {
    /// Records agents' `ack`s: each `run` is then running (the agent acknowledges it as it
    /// starts the process), anything else delivered. Returns the commands whose state changed;
    /// a repeat, or an id that is not the agent's own pending command, changes nothing.
    pub async fn mark_delivered_many(&self, acks: &[AckKey<'_>]) -> Result<Vec<command::Model>> {
        let mut changed = Vec::with_capacity(acks.len());
        for chunk in acks.chunks(ROWS_PER_STATEMENT) {
            let now = Value::from(now());
            let mut sql = Sql::new(self.db.get_database_backend(), padded(chunk) * 3 + 2);
            sql.push("WITH v(id, tenant_id, agent_id) AS (VALUES ");
            for (i, (tenant_id, agent_id, id)) in chunk.iter().enumerate() {
                sql.row(i, [(*id).into(), (*tenant_id).into(), (*agent_id).into()]);
            }
            sql.pad_rows(chunk.len());
            sql.verb("UPDATE");
            sql.push(&format!(
                " commands SET state = CASE WHEN commands.command = '{run}' \
                 THEN '{running}' ELSE '{delivered}' END, \
                 started_at = CASE WHEN commands.command = '{run}' THEN ",
                run = outpost_protocol::commands::RUN,
                running = state::RUNNING,
                delivered = state::DELIVERED,
            ));
            sql.bind(now.clone());
            sql.push(" ELSE commands.started_at END, delivered_at = ");
            sql.bind(now);
            sql.push(&format!(
                " FROM v WHERE commands.id = v.id AND commands.tenant_id = v.tenant_id \
                 AND commands.agent_id = v.agent_id AND commands.state = '{}'",
                state::PENDING
            ));
            changed.extend(self.returning_commands(sql).await?);
        }
        Ok(changed)
    }

    /// Stores agents' results: `(tenant, agent, response)`. Only a command's own agent can
    /// finish it, and only once: returns the commands finished by this call; a repeat or a
    /// foreign command changes nothing. Jobs are not recomputed here (the writer does it once
    /// per job and batch).
    pub async fn store_results_many(
        &self,
        results: &[(&str, &str, &Response)],
    ) -> Result<Vec<command::Model>> {
        let mut finished = Vec::with_capacity(results.len());
        for chunk in results.chunks(ROWS_PER_STATEMENT) {
            let mut sql = Sql::new(self.db.get_database_backend(), padded(chunk) * 10 + 3);
            sql.push(
                "WITH v(id, tenant_id, agent_id, state, success, result, error_code, \
                 error_message, exit_code, truncated) AS (VALUES ",
            );
            for (i, (tenant_id, agent_id, response)) in chunk.iter().enumerate() {
                let (code, message) = match &response.error {
                    Some(e) => (Some(e.code.clone()), Some(e.message.clone())),
                    None => (None, None),
                };
                let data = &response.data;
                let flag = |name| data.get(name).and_then(serde_json::Value::as_bool) == Some(true);
                let exit_code = data
                    .get("exit_code")
                    .and_then(serde_json::Value::as_i64)
                    .and_then(|c| i32::try_from(c).ok());
                sql.row(
                    i,
                    [
                        response.command_id.to_string().into(),
                        (*tenant_id).into(),
                        (*agent_id).into(),
                        final_state_of(response).into(),
                        response.success.into(),
                        data.clone().into(),
                        code.into(),
                        message.into(),
                        exit_code.into(),
                        flag("output_truncated").into(),
                    ],
                );
            }
            sql.pad_rows(chunk.len());
            // An answer is also proof of delivery: the writer skips the ack of a command
            // whose result shares its batch, and this sets what the ack would have. The same
            // instant goes into `delivered_at` and `finished_at`, which is how
            // `metrics::command_answered` tells that this result delivered its command.
            let now = Value::from(now());
            sql.verb("UPDATE");
            sql.push(
                " commands SET \
                   state = v.state, success = v.success, result = v.result, \
                   error_code = v.error_code, error_message = v.error_message, \
                   exit_code = v.exit_code, \
                   output_truncated = (commands.output_truncated OR v.truncated), \
                   delivered_at = COALESCE(commands.delivered_at, ",
            );
            sql.bind(now.clone());
            sql.push(&format!(
                "), started_at = CASE WHEN commands.command = '{}' THEN COALESCE(commands.started_at, ",
                outpost_protocol::commands::RUN
            ));
            sql.bind(now.clone());
            sql.push(") ELSE commands.started_at END, finished_at = ");
            sql.bind(now);
            sql.push(&format!(
                " FROM v WHERE commands.id = v.id AND commands.tenant_id = v.tenant_id \
                 AND commands.agent_id = v.agent_id AND commands.{}",
                state::OPEN_SQL
            ));
            finished.extend(self.returning_commands(sql).await?);
        }
        Ok(finished)
    }

    /// Records agents' heartbeats: `(tenant, agent, status)`, at most one per agent (the
    /// caller keeps each agent's latest). Ten thousand agents beating every 30 s are 333
    /// heartbeats a second, which one by one were as many statements, each a round trip to
    /// the database's thread inside the writer's transaction, ahead of the results it holds.
    pub async fn record_heartbeats_many(
        &self,
        beats: &[(&str, &str, &HeartbeatStatus)],
    ) -> Result<()> {
        for chunk in beats.chunks(ROWS_PER_STATEMENT) {
            let mut sql = Sql::new(self.db.get_database_backend(), padded(chunk) * 3 + 1);
            sql.push("WITH v(tenant_id, id, status) AS (VALUES ");
            for (i, (tenant_id, agent_id, status)) in chunk.iter().enumerate() {
                sql.row(
                    i,
                    [
                        (*tenant_id).into(),
                        (*agent_id).into(),
                        serde_json::json!(status).into(),
                    ],
                );
            }
            sql.pad_rows(chunk.len());
            sql.verb("UPDATE");
            sql.push(" agents SET last_seen = ");
            sql.bind(now().into());
            sql.push(
                ", last_heartbeat = v.status FROM v \
                 WHERE agents.tenant_id = v.tenant_id AND agents.id = v.id",
            );
            self.db
                .execute_raw(Statement::from_sql_and_values(
                    sql.backend,
                    sql.text,
                    sql.values,
                ))
                .await?;
            self.record_metrics(chunk).await?;
        }
        Ok(())
    }

    /// The chart's samples of `chunk` (`agent_metrics`): the first heartbeat of each agent's
    /// minute is kept, later ones in the same minute change nothing. What an agent reports
    /// is clamped to 0–100 %.
    async fn record_metrics(&self, chunk: &[(&str, &str, &HeartbeatStatus)]) -> Result<()> {
        let percent = |v: f64| {
            if v.is_finite() {
                v.clamp(0.0, 100.0)
            } else {
                0.0
            }
        };
        let minute = {
            let now = now();
            now - chrono::Duration::seconds(i64::from(chrono::Timelike::second(&now)))
                - chrono::Duration::nanoseconds(i64::from(chrono::Timelike::nanosecond(&now)))
        };
        let mut sql = Sql::new(self.db.get_database_backend(), padded(chunk) * 5 + 1);
        sql.push("WITH v(tenant_id, id, cpu, memory, disk) AS (VALUES ");
        for (i, (tenant_id, agent_id, status)) in chunk.iter().enumerate() {
            sql.row(
                i,
                [
                    (*tenant_id).into(),
                    (*agent_id).into(),
                    Value::from(Some(percent(status.cpu_percent))),
                    Value::from(Some(percent(status.memory_percent))),
                    Value::from(Some(percent(status.disk_percent))),
                ],
            );
        }
        sql.pad_rows(chunk.len());
        // No `OR FAIL` here: a conflict is a minute already sampled, and is skipped. (SQLite
        // needs the `WHERE` to read `ON CONFLICT` as the insert's.)
        sql.push(
            ") INSERT INTO agent_metrics (tenant_id, agent_id, minute, cpu, memory, disk) \
             SELECT tenant_id, id, ",
        );
        sql.bind(minute.into());
        sql.push(
            ", cpu, memory, disk FROM v WHERE tenant_id IS NOT NULL \
             ON CONFLICT (tenant_id, agent_id, minute) DO NOTHING",
        );
        self.db
            .execute_raw(Statement::from_sql_and_values(
                sql.backend,
                sql.text,
                sql.values,
            ))
            .await?;
        Ok(())
    }

    /// Runs an `UPDATE` built by [`Sql`], returning the changed commands.
    async fn returning_commands(&self, mut sql: Sql) -> Result<Vec<command::Model>> {
        sql.push(" RETURNING ");
        sql.push(&returning());
        let statement = Statement::from_sql_and_values(sql.backend, sql.text, sql.values);
        let rows = self.db.query_all_raw(statement).await?;
        Ok(rows
            .iter()
            .map(command_from_row)
            .collect::<std::result::Result<_, _>>()?)
    }
}

/// A command from a row of [`returning`]'s columns, read by position. The derived reader
/// looks each column up by name, formatting the name anew and hashing it for every column of
/// every row: 210,000 times for a 10,000-run fan-out's results, a large part of the time the
/// writer spent turning them into models (figures: docs/BENCHMARKS.md, "Design notes behind
/// the figures").
fn command_from_row(row: &QueryResult) -> std::result::Result<command::Model, DbErr> {
    Ok(command::Model {
        id: row.try_get_by_index(0)?,
        tenant_id: row.try_get_by_index(1)?,
        agent_id: row.try_get_by_index(2)?,
        command: row.try_get_by_index(3)?,
        data: row.try_get_by_index(4)?,
        timeout_s: row.try_get_by_index(5)?,
        state: row.try_get_by_index(6)?,
        created_at: row.try_get_by_index(7)?,
        expires_at: row.try_get_by_index(8)?,
        delivered_at: row.try_get_by_index(9)?,
        finished_at: row.try_get_by_index(10)?,
        success: row.try_get_by_index(11)?,
        result: row.try_get_by_index(12)?,
        error_code: row.try_get_by_index(13)?,
        error_message: row.try_get_by_index(14)?,
        job_id: row.try_get_by_index(15)?,
        started_at: row.try_get_by_index(16)?,
        exit_code: row.try_get_by_index(17)?,
        stdout_bytes: row.try_get_by_index(18)?,
        stderr_bytes: row.try_get_by_index(19)?,
        output_truncated: row.try_get_by_index(20)?,
        sealed_params: row.try_get_by_index(21)?,
        key_id: row.try_get_by_index(22)?,
    })
}

/// A job's runs per `INSERT`: 8 bound values a row.
const RUNS_PER_INSERT: usize = 1024;

impl<C: ConnectionTrait> Store<C> {
    /// Inserts a job's runs (built by `create_job`: one tenant, job, command, arguments,
    /// sealed parameters and times). What they share is bound once per statement, and only what differs (the run's
    /// id and agent, and a refused run's outcome) once per row: a 10,000-run job binds 70,000
    /// values in 10 statements instead of 210,000 in 20 through the query builder, which cost
    /// as much as SQLite's own work on the rows.
    pub(super) async fn insert_runs(&self, runs: &[command::Model]) -> Result<()> {
        let Some(first) = runs.first() else {
            return Ok(());
        };
        debug_assert!(runs.iter().all(|r| r.job_id == first.job_id
            && r.tenant_id == first.tenant_id
            && r.command == first.command
            && r.created_at == first.created_at
            && r.sealed_params == first.sealed_params));
        let backend = self.db.get_database_backend();
        for chunk in runs.chunks(RUNS_PER_INSERT) {
            let mut sql = Sql::new(backend, padded(chunk) * 8 + 7);
            sql.push(
                "WITH v(id, agent_id, state, finished_at, success, error_code, error_message, \
                 key_id) AS (VALUES ",
            );
            for (i, run) in chunk.iter().enumerate() {
                sql.row(
                    i,
                    [
                        run.id.as_str().into(),
                        run.agent_id.as_str().into(),
                        run.state.as_str().into(),
                        run.finished_at.into(),
                        run.success.into(),
                        run.error_code.clone().into(),
                        run.error_message.clone().into(),
                        run.key_id.clone().into(),
                    ],
                );
            }
            sql.pad_rows(chunk.len());
            sql.verb("INSERT");
            sql.push(
                " INTO commands (id, tenant_id, agent_id, command, data, timeout_s, \
                 state, created_at, expires_at, finished_at, success, error_code, \
                 error_message, job_id, sealed_params, key_id) SELECT v.id, ",
            );
            sql.bind(first.tenant_id.as_str().into());
            sql.push(", v.agent_id, ");
            sql.bind(first.command.as_str().into());
            sql.push(", ");
            sql.bind(first.data.clone().into());
            sql.push(", ");
            sql.bind(first.timeout_s.into());
            sql.push(", v.state, ");
            sql.bind(first.created_at.into());
            sql.push(", ");
            sql.bind(first.expires_at.into());
            sql.push(", v.finished_at, v.success, v.error_code, v.error_message, ");
            sql.bind(first.job_id.clone().into());
            sql.push(", ");
            sql.bind(first.sealed_params.clone().into());
            sql.push(", v.key_id");
            // The padding rows are all NULL.
            sql.push(" FROM v WHERE v.id IS NOT NULL");
            self.db
                .execute_raw(Statement::from_sql_and_values(
                    backend, sql.text, sql.values,
                ))
                .await?;
        }
        Ok(())
    }
}

/// Rows in a statement for `chunk` once padded (see [`Sql::pad_rows`]).
fn padded<T>(chunk: &[T]) -> usize {
    chunk.len().next_power_of_two()
}

/// The state a response moves its command to.
pub(super) fn final_state_of(response: &Response) -> &'static str {
    let flag = |name| response.data.get(name).and_then(serde_json::Value::as_bool) == Some(true);
    if response.success {
        state::SUCCEEDED
    } else if flag("timed_out") {
        state::TIMED_OUT
    } else if flag("cancelled") {
        state::CANCELLED
    } else {
        state::FAILED
    }
}

/// Every column of `commands`, qualified (PostgreSQL's `RETURNING *` after `FROM` would add
/// the joined table's columns too).
fn returning() -> String {
    command::Column::iter()
        .map(|c| format!("commands.{}", sea_orm::IdenStatic::as_str(&c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A statement's text and its bound values, built in text order.
///
/// SQLite gets anonymous `?` markers, which bind by position in the text; numbered `?n`
/// markers would be simpler to write but make SQLite look each one up in a list of names
/// (`sqlite3_bind_parameter_name`), quadratic in the 10,000 values of a batch. PostgreSQL
/// gets `$n`.
struct Sql {
    backend: DbBackend,
    text: String,
    values: Vec<Value>,
    /// Where the `VALUES` list's first row starts in `values`, and its width.
    first_row: usize,
    columns: usize,
}

impl Sql {
    fn new(backend: DbBackend, values: usize) -> Self {
        Self {
            backend,
            text: String::with_capacity(values * 5 + 1024),
            values: Vec::with_capacity(values),
            first_row: 0,
            columns: 0,
        }
    }

    fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// Closes the `WITH v(…) AS (VALUES …` list and starts the statement: `) UPDATE` or
    /// `) INSERT`, followed by ` OR FAIL` on SQLite (see the module's documentation).
    fn verb(&mut self, verb: &str) {
        self.push(") ");
        self.push(verb);
        if self.backend == DbBackend::Sqlite {
            self.push(" OR FAIL");
        }
    }

    /// Appends a marker for `value`.
    fn bind(&mut self, value: Value) {
        self.values.push(value);
        match self.backend {
            DbBackend::Postgres => {
                use std::fmt::Write;
                let _ = write!(self.text, "${}", self.values.len());
            }
            _ => self.text.push('?'),
        }
    }

    /// Pads a `VALUES` list of `rows` rows to the next power of two with rows of `NULL`,
    /// which match no row of the table. Connections keep prepared statements by their text,
    /// and the text depends on the number of rows: padded, a batch of any size reuses one of
    /// 11 prepared statements instead of parsing a statement of thousands of markers anew
    /// (a cost on every writer batch; figures: docs/BENCHMARKS.md, "Design notes behind the
    /// figures"). The `NULL`s are bound, as markers like the rest: written out as literals
    /// they made the text differ with every batch size again (perf showed a prepare per batch
    /// or two, and the statement cache churning). Each is bound with the type of the first
    /// row's value in its column, which PostgreSQL needs to type the `VALUES` table.
    fn pad_rows(&mut self, rows: usize) {
        let nulls: Vec<Value> = self.values[self.first_row..self.first_row + self.columns]
            .iter()
            .map(Value::as_null)
            .collect();
        for _ in rows..rows.next_power_of_two() {
            self.push(", (");
            for (col, null) in nulls.iter().enumerate() {
                if col > 0 {
                    self.push(", ");
                }
                self.bind(null.clone());
            }
            self.push(")");
        }
    }

    /// Appends `(…)` for one row of a `VALUES` list; `i` is the row's index.
    fn row<const N: usize>(&mut self, i: usize, values: [Value; N]) {
        if i == 0 {
            self.first_row = self.values.len();
            self.columns = N;
        }
        self.push(if i == 0 { "(" } else { ", (" });
        for (col, value) in values.into_iter().enumerate() {
            if col > 0 {
                self.push(", ");
            }
            self.bind(value);
        }
        self.push(")");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(backend: DbBackend, rows: usize) -> Sql {
        let mut sql = Sql::new(backend, 4);
        sql.push("WITH v(id, n) AS (VALUES ");
        for i in 0..rows {
            sql.row(i, [format!("id-{i}").into(), Value::from(Some(i as i64))]);
        }
        sql.pad_rows(rows);
        sql.push(") SELECT * FROM v");
        sql
    }

    /// The point of padding: batches of 5 to 8 rows share one text, so one prepared
    /// statement, with their padding bound as typed NULLs.
    #[test]
    fn padded_batches_share_their_text() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            let eight = statement(backend, 8);
            for rows in 5..8 {
                let sql = statement(backend, rows);
                assert_eq!(sql.text, eight.text, "{rows} rows on {backend:?}");
                assert_eq!(sql.values.len(), 16);
                assert_eq!(sql.values[2 * rows], Value::String(None));
                assert_eq!(sql.values[2 * rows + 1], Value::BigInt(None));
            }
            assert_ne!(statement(backend, 4).text, eight.text);
        }
    }
}

#[cfg(test)]
mod store {
    use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

    use super::super::{DatabaseLocation, Store, new_id};
    use super::*;

    use super::super::pending_command as run;

    /// A store on a new SQLite file, with one tenant.
    async fn fresh() -> (tempfile::TempDir, Store, String) {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("t.db")))
            .await
            .expect("open");
        let (tenant, _) = store.create_tenant("t", None).await.expect("tenant");
        (dir, store, tenant)
    }

    async fn runs_of(store: &Store<impl ConnectionTrait>, tenant_id: &str) -> u64 {
        command::Entity::find()
            .filter(command::Column::TenantId.eq(tenant_id))
            .count(&store.db)
            .await
            .expect("count")
    }

    /// Heartbeats keep one chart sample per agent and minute (the first, clamped to 0–100),
    /// and the sweep's delete drops samples older than its cutoff.
    #[tokio::test]
    async fn heartbeats_keep_one_sample_a_minute_and_old_ones_go() {
        let (_dir, store, tenant) = fresh().await;
        let beat = |cpu: f64| HeartbeatStatus {
            uptime_s: 1,
            cpu_percent: cpu,
            memory_percent: -5.0,
            disk_percent: 50.0,
            load1: 0.0,
            timestamp: now(),
        };
        let (first, later) = (beat(250.0), beat(3.0));
        for status in [&first, &later, &later] {
            store
                .record_heartbeats_many(&[(tenant.as_str(), "a1", status)])
                .await
                .expect("heartbeat");
        }
        let since = now() - chrono::Duration::hours(1);
        let samples = store
            .agent_metrics(&tenant, "a1", since)
            .await
            .expect("read");
        // Two when the three straddled a minute's end; the first is the minute's.
        assert!((1..=2).contains(&samples.len()), "{samples:?}");
        assert_eq!((samples[0].cpu, samples[0].memory), (100.0, 0.0));
        assert_eq!(
            store.delete_old_metrics(since).await.expect("delete"),
            0,
            "nothing is an hour old"
        );
        let gone = store
            .delete_old_metrics(now() + chrono::Duration::minutes(2))
            .await
            .expect("delete");
        assert_eq!(gone, samples.len() as u64);
        assert!(
            store
                .agent_metrics(&tenant, "a1", since)
                .await
                .expect("read")
                .is_empty()
        );
    }

    /// [`command_from_row`] reads [`returning`]'s columns in their order: a model read by
    /// position equals the one the derived reader makes by name, for a row with every column
    /// set and one with the optional ones empty.
    #[tokio::test]
    async fn a_row_read_by_position_is_the_row_read_by_name() {
        use sea_orm::{EntityTrait, FromQueryResult};
        let (_dir, store, tenant) = fresh().await;
        let mut full = run(&tenant, &new_id(), "a");
        full.delivered_at = Some(now());
        full.finished_at = Some(now());
        full.started_at = Some(now());
        full.success = Some(false);
        full.result = Some(serde_json::json!({"exit_code": 3}));
        full.error_code = Some("failed".into());
        full.error_message = Some("exit 3".into());
        full.job_id = Some(new_id());
        full.exit_code = Some(3);
        full.stdout_bytes = 5;
        full.stderr_bytes = 7;
        full.output_truncated = true;
        let empty = run(&tenant, &new_id(), "b");
        for model in [full, empty] {
            command::ActiveModel::from(model.clone())
                .insert(&store.db)
                .await
                .expect("insert");
            let select = Statement::from_string(
                DbBackend::Sqlite,
                format!(
                    "SELECT {} FROM commands WHERE id = '{}'",
                    returning(),
                    model.id
                ),
            );
            let row = store
                .db
                .query_one_raw(select)
                .await
                .expect("select")
                .expect("row");
            let by_position = command_from_row(&row).expect("by position");
            let by_name = command::Model::from_query_result(&row, "").expect("by name");
            assert_eq!(by_position, by_name);
            let stored = command::Entity::find_by_id(model.id.clone())
                .one(&store.db)
                .await
                .expect("find")
                .expect("stored");
            assert_eq!(by_position, stored);
        }
    }

    /// `OR FAIL` keeps a failed statement's earlier rows in its transaction (that is what
    /// spares SQLite the statement journal), and the transaction's rollback takes them out:
    /// nothing of a failed batch is left.
    #[tokio::test]
    async fn a_failed_statement_leaves_nothing_once_its_transaction_ends() {
        let (_dir, store, tenant) = fresh().await;
        let (first, second) = (new_id(), new_id());
        // The third row repeats the first's id: the statement fails on it, after two rows.
        let runs = [
            run(&tenant, &first, "a"),
            run(&tenant, &second, "b"),
            run(&tenant, &first, "c"),
        ];
        let txn = store.begin().await.expect("begin");
        let err = txn
            .insert_runs(&runs)
            .await
            .expect_err("a repeated id fails");
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        assert_eq!(
            runs_of(&txn, &tenant).await,
            2,
            "OR FAIL keeps the rows before"
        );
        drop(txn);
        assert_eq!(
            runs_of(&store, &tenant).await,
            0,
            "the rollback takes them out"
        );
    }
}
