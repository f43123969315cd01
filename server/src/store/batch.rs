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
//! only the placeholders differ.

use chrono::Utc;
use outpost_protocol::Response;
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Iterable, Statement, Value};

use super::{Result, Store, command, state};

/// Rows changed by one statement: far below SQLite's 32,766 bound variables at 10 a row.
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
            let backend = self.db.get_database_backend();
            let now = Value::from(Utc::now());
            let mut values = vec![
                Value::from(outpost_protocol::commands::RUN),
                Value::from(state::RUNNING),
                Value::from(state::DELIVERED),
                now.clone(),
                now,
                Value::from(state::PENDING),
            ];
            let rows = Placeholders::new(backend, values.len()).rows(chunk.len(), 3);
            for (tenant_id, agent_id, id) in chunk {
                values.extend([
                    Value::from(*id),
                    Value::from(*tenant_id),
                    Value::from(*agent_id),
                ]);
            }
            let p = Placeholders::new(backend, 0);
            let sql = format!(
                "WITH v(id, tenant_id, agent_id) AS (VALUES {rows}) \
                 UPDATE commands SET \
                   state = CASE WHEN commands.command = {p1} THEN {p2} ELSE {p3} END, \
                   started_at = CASE WHEN commands.command = {p1} THEN {p4} ELSE commands.started_at END, \
                   delivered_at = {p5} \
                 FROM v \
                 WHERE commands.id = v.id AND commands.tenant_id = v.tenant_id \
                   AND commands.agent_id = v.agent_id AND commands.state = {p6} \
                 RETURNING {returning}",
                p1 = p.nth(1),
                p2 = p.nth(2),
                p3 = p.nth(3),
                p4 = p.nth(4),
                p5 = p.nth(5),
                p6 = p.nth(6),
                returning = returning(),
            );
            changed.extend(self.returning_commands(backend, sql, values).await?);
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
            let backend = self.db.get_database_backend();
            let mut values = vec![Value::from(Utc::now())];
            values.extend(state::OPEN.iter().map(|s| Value::from(*s)));
            let rows = Placeholders::new(backend, values.len()).rows(chunk.len(), 10);
            for (tenant_id, agent_id, response) in chunk {
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
                values.extend([
                    Value::from(response.command_id.to_string()),
                    Value::from(*tenant_id),
                    Value::from(*agent_id),
                    Value::from(final_state_of(response)),
                    Value::from(response.success),
                    Value::from(data.clone()),
                    Value::from(code),
                    Value::from(message),
                    Value::from(exit_code),
                    Value::from(flag("output_truncated")),
                ]);
            }
            let p = Placeholders::new(backend, 0);
            let sql = format!(
                "WITH v(id, tenant_id, agent_id, state, success, result, error_code, \
                        error_message, exit_code, truncated) AS (VALUES {rows}) \
                 UPDATE commands SET \
                   state = v.state, success = v.success, result = v.result, \
                   error_code = v.error_code, error_message = v.error_message, \
                   finished_at = {p1}, exit_code = v.exit_code, \
                   output_truncated = (commands.output_truncated OR v.truncated) \
                 FROM v \
                 WHERE commands.id = v.id AND commands.tenant_id = v.tenant_id \
                   AND commands.agent_id = v.agent_id \
                   AND commands.state IN ({p2}, {p3}, {p4}) \
                 RETURNING {returning}",
                p1 = p.nth(1),
                p2 = p.nth(2),
                p3 = p.nth(3),
                p4 = p.nth(4),
                returning = returning(),
            );
            finished.extend(self.returning_commands(backend, sql, values).await?);
        }
        Ok(finished)
    }

    async fn returning_commands(
        &self,
        backend: DbBackend,
        sql: String,
        values: Vec<Value>,
    ) -> Result<Vec<command::Model>> {
        let statement = Statement::from_sql_and_values(backend, sql, values);
        Ok(command::Entity::find()
            .from_raw_sql(statement)
            .all(&self.db)
            .await?)
    }
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

/// Bound-parameter markers: `?n` for SQLite, `$n` for PostgreSQL.
struct Placeholders {
    backend: DbBackend,
    offset: usize,
}

impl Placeholders {
    fn new(backend: DbBackend, offset: usize) -> Self {
        Self { backend, offset }
    }

    /// The marker of the `n`th parameter (from 1) after the offset. Numbered on both
    /// backends: the shared values come first in the list but after the rows in the text, and
    /// a bare `?` would bind by position in the text.
    fn nth(&self, n: usize) -> String {
        match self.backend {
            DbBackend::Postgres => format!("${}", self.offset + n),
            _ => format!("?{}", self.offset + n),
        }
    }

    /// `(…), (…)`: `rows` tuples of `width` markers, numbered on from the offset.
    fn rows(&self, rows: usize, width: usize) -> String {
        let mut out = String::with_capacity(rows * width * 4);
        for row in 0..rows {
            if row > 0 {
                out.push_str(", ");
            }
            out.push('(');
            for col in 0..width {
                if col > 0 {
                    out.push_str(", ");
                }
                out.push_str(&self.nth(row * width + col + 1));
            }
            out.push(')');
        }
        out
    }
}
