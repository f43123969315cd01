//! `outpost-store`: the bottom layer of the server. The only crate that talks to the database,
//! and the vocabulary every layer above shares.
//!
//! - the [`Store`] and its domain methods, one file per subject (agents, agent keys, commands,
//!   jobs, users, tenants and API keys, schedules, integrations, the library, audit, retention,
//!   ...); `connect` is the plumbing under them (opening the pool, pragmas, write transactions,
//!   checkpoints, claims); [`entities`] are the sea-orm rows and `migrations` the SQL, for SQLite
//!   and PostgreSQL alike; [`writer`] is the single writer that commits agents' reports in
//!   batches;
//! - [`domain`]: ids, states, roles, commands and [`domain::DomainError`], the words every layer
//!   uses;
//! - [`credentials`] (key generation, hashing, constant-time checks), [`seal`] (secrets at rest
//!   under the master key) and [`secrets`] (which run parameters are secret);
//! - [`metrics`]: the Prometheus names, recorded where things happen;
//! - [`private_files`]: files and directories made readable by the server's user only.
//!
//! Nothing here knows HTTP or the services: `outpost-core` builds on this crate, `outpost-web`
//! on both (docs/ARCHITECTURE.md, "Crates").
//!
//! Handlers and the hub call domain methods (`insert_command`, `finish_command`, …) and never
//! build queries themselves, so tenant scoping is enforced in one place: every method that reads
//! or writes tenant data takes the tenant id and puts it in the `WHERE` clause.
//!
//! State changes are single conditional `UPDATE`s (`… WHERE state = 'pending'`) rather than
//! read-then-write transactions. That keeps them atomic without locks and makes every transition
//! idempotent, which the delivery guarantees rely on: a resent `ack` or `response` changes
//! nothing the second time.

pub mod credential_cache;
pub mod credentials;
pub mod domain;
pub mod metrics;
pub mod private_files;
pub mod seal;
pub mod secrets;

mod agent_certs;
mod agent_keys;
mod agents;
mod api_keys;
pub mod audit;
pub mod backup;
mod batch;
mod commands;
mod connect;
mod digests;
pub mod entities;
mod fleet;
mod integrations;
mod jobs;
mod library;
mod migrations;
mod nodes;
mod oidc;
mod presence;
mod releases;
pub mod retention;
mod rollouts;
mod schedules;
mod signin;
mod tenants;
pub mod totp;
mod users;
mod webhooks;
pub mod writer;

pub use agent_certs::{CertStanding, NewAgentCert};
pub use agent_keys::{AgentKeyPatch, KEY_USE_GRANULARITY, key_status};
pub use agents::{AgentTarget, Registered};
pub use api_keys::{BOOTSTRAP_KEY_NAME, Bootstrapped, NewApiKey};
pub use audit::{AuditFilter, AuditHeads, AuditRecord, ChainCheck};
pub use commands::{NewCommand, pending_command, state};
pub use connect::{
    CONVERT_AT_START_BYTES, ClaimSpec, DatabaseLocation, WAL_FILE_LIMIT_BYTES, WAL_LIMIT_BYTES,
    begin_write,
};
pub use digests::{GroupRow, JobDigest, MAX_GROUPS, MAX_RUNS_PAGE, RunFilter, RunRow};
pub use fleet::{AgentPageQuery, TagMatch};
pub use integrations::{
    DeliveryAttempt, JOB_FAILED, JOB_RECOVERED, JOB_SUCCEEDED, NewIntegration, delivery_status,
    wants,
};
pub use jobs::{
    Fire, JobFilter, NewJob, NewRun, OutputChunk, Stored, canonical_target, job_status,
    webhook_status,
};
pub use library::{
    DraftRefused, LibraryRefused, MAX_DRAFTS, MAX_VERSIONS as MAX_LIBRARY_VERSIONS, NewDraft,
    NewLibraryScript,
};
pub use nodes::RemoteAgent;
pub use oidc::{NewOidcLogin, SsoIdentity};
pub use presence::{AGENT_OFFLINE, AGENT_ONLINE, AGENT_UPDATE_ROLLED_BACK, AGENT_UPDATED};
pub use rollouts::{
    AgentFields, AgentMove, MAX_AGENTS_PAGE as MAX_ROLLOUT_AGENTS_PAGE, RolloutAgentRow,
    RolloutMove, RolloutRefused, StageAgent, desired_id,
};
pub use schedules::{
    Advance, EventFilter, FireJob, FiredJob, NewEvent, NewSchedule, ScheduleFilter, SchedulePatch,
    ScheduleRefused,
};
pub use signin::{CodeCheck, MailOutcome, MailState, NewMail};
pub use tenants::{Quotas, TenantPatch, TenantUsage, Usage, UserRefused};
pub use users::{NewUser, Refreshed, UserChange, UserChanged};
pub use webhooks::Attempt;

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, DbErr};
use serde_json::Value;

pub use entities::{
    agent, agent_key, agent_metric, api_key, audit_entry, audit_head, claim, command, delivery,
    delivery_attempt, desired_version, email_code, event, fleet_policy, integration, invite, job,
    library_bundle, library_script, mail_outbox, node, output_chunk, password_reset, refresh_token,
    release, rollout, rollout_agent, run_digest, schedule, tenant, user, webhook_attempt,
};
pub use entities::{agent_cert, pki_key, revoked_agent};
pub use entities::{library_draft, library_draft_bundle, library_name};
pub use entities::{login_ticket, recovery_code, totp_factor};
pub use entities::{oidc_identity, oidc_login};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// The configuration does not describe a usable database.
    #[error("{0}")]
    Config(String),
}

impl From<StoreError> for crate::domain::DomainError {
    /// A failure that passes (a full disk, a busy or unreachable database) is `Unavailable`,
    /// saying nothing was stored, so that the caller retries; anything else is internal.
    fn from(err: StoreError) -> Self {
        if err.is_transient() {
            tracing::warn!(error = %err, "a request failed on the database");
            return Self::Unavailable(format!(
                "the database cannot be written or read right now ({err}); nothing was stored, try again later"
            ));
        }
        Self::Internal(err.into())
    }
}

impl StoreError {
    /// Whether SQLite answered `BUSY` or `LOCKED`: another connection held a lock longer than
    /// the busy timeout, or SQLite would not wait for it (a deferred transaction's upgrade, a
    /// journal mode change), as when processes open a new database at the same moment.
    pub fn is_sqlite_busy(&self) -> bool {
        use sea_orm::RuntimeErr;
        let Self::Db(
            DbErr::Conn(RuntimeErr::SqlxError(err))
            | DbErr::Exec(RuntimeErr::SqlxError(err))
            | DbErr::Query(RuntimeErr::SqlxError(err)),
        ) = self
        else {
            return false;
        };
        match err.as_ref() {
            sea_orm::sqlx::Error::Database(db) => db
                .code()
                .and_then(|code| code.parse::<i32>().ok())
                .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
            _ => false,
        }
    }

    /// Whether the transaction lost a conflict with another one that the database resolved
    /// by aborting it: PostgreSQL's deadlock (`40P01`) and serialization failure (`40001`).
    /// The database is fine and the other transaction went on; the same transaction tried
    /// again at once normally commits. Every conflict is also [`transient`](Self::is_transient).
    pub fn is_conflict(&self) -> bool {
        use sea_orm::RuntimeErr;
        let Self::Db(DbErr::Conn(e) | DbErr::Exec(e) | DbErr::Query(e)) = self else {
            return false;
        };
        let RuntimeErr::SqlxError(err) = e else {
            return false;
        };
        match err.as_ref() {
            sea_orm::sqlx::Error::Database(db) => {
                matches!(db.code().as_deref(), Some("40001" | "40P01"))
            }
            _ => false,
        }
    }

    /// Whether the same statement may succeed if tried again later: the database is busy or
    /// locked, out of space or memory, or unreachable (SQLite `BUSY`, `LOCKED`, `NOMEM`,
    /// `IOERR`, `FULL`, `CANTOPEN`, `PROTOCOL`; PostgreSQL's connection, resource and
    /// serialization classes; a pool that gave no connection in time). Anything else (a
    /// constraint, a malformed statement, a bug) fails the same way every time.
    pub fn is_transient(&self) -> bool {
        use sea_orm::RuntimeErr;
        let runtime = match self {
            Self::Db(DbErr::ConnectionAcquire(_)) => return true,
            Self::Db(DbErr::Conn(e) | DbErr::Exec(e) | DbErr::Query(e)) => e,
            _ => return false,
        };
        let RuntimeErr::SqlxError(err) = runtime else {
            return false;
        };
        match err.as_ref() {
            sea_orm::sqlx::Error::Database(db) => {
                let Some(code) = db.code() else { return false };
                if let Ok(sqlite) = code.parse::<i32>() {
                    // The primary result code is the low byte of the extended one.
                    return matches!(sqlite & 0xff, 5 | 6 | 7 | 10 | 13 | 14 | 15);
                }
                // SQLSTATE: connection exception, insufficient resources (disk full, out of
                // memory, too many connections), operator intervention, serialization
                // failure or deadlock.
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P")
                    || code == "40001"
                    || code == "40P01"
            }
            sea_orm::sqlx::Error::Io(_)
            | sea_orm::sqlx::Error::PoolTimedOut
            | sea_orm::sqlx::Error::PoolClosed
            | sea_orm::sqlx::Error::WorkerCrashed => true,
            _ => false,
        }
    }
}

/// Result alias for store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The database handle and its domain methods.
///
/// Generic over the connection so that the same methods run on the pool or inside one
/// transaction (the batching [`writer`] runs many of them in one commit).
#[derive(Clone)]
pub struct Store<C = DatabaseConnection> {
    db: C,
}

/// The time now, to the microsecond: what PostgreSQL's `timestamptz` keeps, so that a row the
/// store hands back equals the row read later, on either backend.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// A new time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A list of strings kept in a JSON column: an agent key's permissions and tags, an agent's
/// capabilities and tags, an integration's events, an API key's scopes. Read into this type
/// by the store, so that no layer above decodes JSON text. A value that is not an array of
/// strings (written by hand into the database) reads as the strings it holds, else empty,
/// never as an error that would make the row unreadable.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    sea_orm::FromJsonQueryResult,
)]
#[serde(from = "Value", into = "Vec<String>")]
pub struct StringList(pub Vec<String>);

impl StringList {
    /// The strings.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether `item` is one of them.
    pub fn contains(&self, item: &str) -> bool {
        self.0.iter().any(|s| s == item)
    }
}

impl std::ops::Deref for StringList {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl From<Value> for StringList {
    fn from(value: Value) -> Self {
        Self(string_list(&value))
    }
}

impl From<StringList> for Vec<String> {
    fn from(list: StringList) -> Self {
        list.0
    }
}

impl From<Vec<String>> for StringList {
    fn from(list: Vec<String>) -> Self {
        Self(list)
    }
}

impl<S: AsRef<str>> FromIterator<S> for StringList {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Self(iter.into_iter().map(|s| s.as_ref().to_owned()).collect())
    }
}

/// Reads a JSON array of strings, tolerating anything else as empty.
pub(crate) fn string_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::StringList;

    #[test]
    fn a_string_list_reads_what_strings_a_column_holds_and_writes_an_array() {
        let read = |value| serde_json::from_value::<StringList>(value).expect("never an error");
        assert_eq!(read(json!(["a", "b"])).as_slice(), ["a", "b"]);
        assert_eq!(read(json!(["a", 1, null, "b"])).as_slice(), ["a", "b"]);
        assert!(read(json!("a")).is_empty());
        assert!(read(json!({"a": 1})).is_empty());
        assert!(read(json!(null)).is_empty());
        let list: StringList = ["x", "y"].into_iter().collect();
        assert_eq!(
            serde_json::to_value(&list).expect("json"),
            json!(["x", "y"])
        );
        assert!(list.contains("y") && !list.contains("z"));
    }
}
