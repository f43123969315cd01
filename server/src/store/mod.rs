//! Storage: the only module that talks to the database.
//!
//! Handlers and the hub call domain methods (`insert_command`, `finish_command`, …) and never
//! build queries themselves, so tenant scoping is enforced in one place: every method that reads
//! or writes tenant data takes the tenant id and puts it in the `WHERE` clause.
//!
//! State changes are single conditional `UPDATE`s (`… WHERE state = 'pending'`) rather than
//! read-then-write transactions. That keeps them atomic without locks and makes every transition
//! idempotent, which the delivery guarantees rely on: a resent `ack` or `response` changes
//! nothing the second time.

mod api_keys;
pub mod audit;
pub mod backup;
mod batch;
pub mod entities;
mod fleet;
mod integrations;
mod jobs;
mod library;
mod migrations;
mod nodes;
mod presence;
mod releases;
pub mod retention;
mod schedules;
mod tenants;
mod users;
mod webhooks;
pub mod writer;

pub use api_keys::NewApiKey;
pub use audit::{AuditFilter, AuditRecord, ChainCheck};
pub use fleet::{AgentPageQuery, TagMatch};
pub use integrations::{
    DeliveryAttempt, JOB_FAILED, JOB_RECOVERED, JOB_SUCCEEDED, NewIntegration, delivery_status,
    wants,
};
pub use jobs::{Fire, JobFilter, NewJob, NewRun, OutputChunk, Stored, job_status, webhook_status};
pub use library::{LibraryRefused, MAX_VERSIONS as MAX_LIBRARY_VERSIONS, NewLibraryScript};
pub use nodes::RemoteAgent;
pub use presence::{AGENT_OFFLINE, AGENT_ONLINE, AGENT_UPDATE_ROLLED_BACK, AGENT_UPDATED};
pub use schedules::{
    Advance, EventFilter, FireJob, FiredJob, NewEvent, NewSchedule, ScheduleFilter, SchedulePatch,
    ScheduleRefused,
};
pub use tenants::{Quotas, TenantPatch, TenantUsage, Usage, UserRefused};
pub use users::{NewUser, Refreshed, UserChange, UserChanged};
pub use webhooks::Attempt;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use outpost_protocol::RegisterData;
use sea_orm::sea_query::Expr;
use sea_orm::sqlx::sqlite::{SqliteAutoVacuum, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, JoinType, QueryFilter, QueryOrder,
    QuerySelect, Set, Statement, TransactionSession, TransactionTrait,
};
use serde_json::{Value, json};

use crate::credentials::{self, KeyKind};
use crate::domain::{Actor, AuditAction, AuditEvent, AuditTarget};
pub use entities::{
    agent, agent_key, agent_metric, api_key, audit_entry, audit_head, claim, command, delivery,
    delivery_attempt, event, integration, invite, job, library_bundle, library_script, node,
    output_chunk, refresh_token, release, schedule, tenant, user, webhook_attempt,
};

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

/// Command states (SPEC §2 "Run states").
pub mod state {
    use crate::domain::CommandState;

    /// Stored, not yet acknowledged by the agent.
    pub const PENDING: &str = CommandState::Pending.as_str();
    /// Acknowledged by the agent, no result yet.
    pub const DELIVERED: &str = CommandState::Delivered.as_str();
    /// A script run the agent has started (it acknowledges a `run` as it starts it).
    pub const RUNNING: &str = CommandState::Running.as_str();
    /// Finished successfully.
    pub const SUCCEEDED: &str = CommandState::Succeeded.as_str();
    /// Finished unsuccessfully.
    pub const FAILED: &str = CommandState::Failed.as_str();
    /// Killed at its timeout.
    pub const TIMED_OUT: &str = CommandState::TimedOut.as_str();
    /// Cancelled on request.
    pub const CANCELLED: &str = CommandState::Cancelled.as_str();
    /// Its TTL passed before it was delivered.
    pub const EXPIRED: &str = CommandState::Expired.as_str();
    /// Its agent never came back.
    pub const LOST: &str = CommandState::Lost.as_str();

    /// States in which a command will not change any more.
    pub const FINAL: &[&str] = &[SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, EXPIRED, LOST];
    /// States in which the agent still owes an answer.
    pub const OPEN: &[&str] = &[PENDING, DELIVERED, RUNNING];
    /// `state IN (…OPEN)` as SQL text with literals, for the partial index on open commands:
    /// SQLite uses a partial index only when it can see at prepare time that the query
    /// implies the index's condition, which a bound value does not show.
    pub const OPEN_SQL: &str = "state IN ('pending', 'delivered', 'running')";
}

/// Agent key statuses.
pub mod key_status {
    use crate::domain::KeyStatus;

    /// The key authenticates.
    pub const ACTIVE: &str = KeyStatus::Active.as_str();
    /// The key is refused until re-enabled.
    pub const DISABLED: &str = KeyStatus::Disabled.as_str();
}

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum DatabaseLocation {
    /// An SQLite file (created if missing).
    Sqlite(std::path::PathBuf),
    /// A database URL (`postgres://…` or `sqlite://…`).
    Url(String),
}

/// A new command, as the API asks for it.
#[derive(Debug, Clone)]
pub struct NewCommand {
    /// Owning tenant.
    pub tenant_id: String,
    /// Target agent.
    pub agent_id: String,
    /// Command name.
    pub command: String,
    /// Command arguments.
    pub data: Value,
    /// Run timeout on the agent.
    pub timeout_s: u32,
    /// How long it may wait for an offline agent.
    pub ttl_s: u32,
    /// The job it is a run of.
    pub job_id: Option<String>,
    /// Secret parameter values, sealed (see `crate::secrets`); `data` holds them masked.
    pub sealed_params: Option<String>,
}

/// Changes to an agent key.
#[derive(Debug, Clone, Default)]
pub struct AgentKeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New permission list.
    pub permissions: Option<Vec<String>>,
    /// New status (`active` or `disabled`).
    pub status: Option<String>,
}

/// The WAL's size past which the writer checkpoints so that it starts over (see
/// `writer::Checkpoints`), and the size its file is cut back to when it does: SQLite reuses the
/// file rather than shrinking it, so without a limit a burst of writes the writer does not
/// checkpoint between (10,000 agents registering at once leave a WAL several times this limit)
/// stays on disk for good.
pub const WAL_LIMIT_BYTES: i64 = 64 << 20;
/// The largest SQLite database converted to `auto_vacuum = INCREMENTAL` at start (a `VACUUM`
/// of this much takes a second or two and as much memory).
pub const CONVERT_AT_START_BYTES: i64 = 64 << 20;
/// Rows a query may have in flight from SQLite's thread (see `connect`).
const ROW_CHANNEL: usize = 4096;
/// Connections in the pool for request handlers and background tasks.
const POOL_SIZE: u32 = 16;
/// The writer's page cache: a batch of 2,048 results touches a few thousand pages, which
/// SQLite's default cache (2 MiB) would spill to the WAL before the commit. Not more: a
/// commit by any other connection (a new command, a job's runs) empties it, which costs in
/// proportion to the pages it holds, and it counts in the server's memory.
const WRITER_CACHE_KIB: u32 = 8 * 1024;

/// The name of the owner keys the server itself makes (first start, `OUTPOST_ADMIN_KEY`,
/// `outpost-server admin-key rotate`): the ones a new owner key of that kind revokes.
pub const BOOTSTRAP_KEY_NAME: &str = "owner";

/// What [`Store::bootstrap`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrapped {
    /// A fresh database: the default tenant and its owner key, with the secret when it was
    /// generated (to save and show).
    Created(Option<String>),
    /// The given key is the owner key now; this many earlier owner keys were revoked.
    Replaced {
        /// Keys revoked.
        revoked: u64,
    },
    /// Nothing to do: no key given, or the given key is the owner key already.
    Unchanged,
    /// The given key was revoked before; it was not registered again.
    Revoked,
}

/// The database handle and its domain methods.
///
/// Generic over the connection so that the same methods run on the pool or inside one
/// transaction (the batching [`writer`] runs many of them in one commit).
#[derive(Clone)]
pub struct Store<C = DatabaseConnection> {
    db: C,
}

impl Store {
    /// Opens (and creates, for SQLite) the database and brings its schema up to date.
    pub async fn open(location: &DatabaseLocation) -> Result<Self> {
        if let DatabaseLocation::Sqlite(path) = location {
            create_private_file(path)?;
        }
        let db = connect(location, POOL_SIZE, None).await?;
        migrations::migrate(&db).await?;
        Ok(Self { db })
    }

    /// Converts an SQLite database made before retention (`auto_vacuum = NONE`) to
    /// `INCREMENTAL`, which takes a `VACUUM`: a rewrite of the whole file, holding the write
    /// lock, with a temporary copy in memory. Done at start when the file is at most
    /// [`CONVERT_AT_START_BYTES`]; a larger one is left as it is (its free pages are reused,
    /// but the file does not shrink) with a warning saying how to convert it
    /// (docs/OPERATIONS.md, "Retention"). The server calls it at start, before it serves; the
    /// host commands (which may run beside a server) never do. Nothing on PostgreSQL.
    pub async fn ensure_incremental_vacuum(&self, path: &Path) -> Result<()> {
        if self.is_postgres() {
            return Ok(());
        }
        // `page_count` first: it reads the database's header, which a connection's idea of
        // `auto_vacuum` is only refreshed from at such a read.
        let bytes = self.pragma_i64("page_count").await? * self.pragma_i64("page_size").await?;
        if self.pragma_i64("auto_vacuum").await? == 2 {
            return Ok(());
        }
        if bytes > CONVERT_AT_START_BYTES {
            tracing::warn!(
                db = %path.display(),
                bytes,
                "this database does not give freed space back to the file system \
                 (auto_vacuum is off; it is reused, but the file does not shrink): convert it \
                 with `outpost-server backup` and `restore`, see OPERATIONS.md, Retention"
            );
            return Ok(());
        }
        let started = std::time::Instant::now();
        // Asked for again on the connection that runs the VACUUM, in the same call, so that
        // it is that connection's setting whatever it did since it opened.
        self.db
            .execute_unprepared("PRAGMA auto_vacuum = INCREMENTAL; VACUUM")
            .await?;
        tracing::info!(
            db = %path.display(),
            bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "converted the database to auto_vacuum = INCREMENTAL (freed space is given back)"
        );
        Ok(())
    }

    /// A second handle on an opened database that always uses the same one connection, with
    /// a larger page cache: the writer's. SQLite keeps a page cache per connection, and a
    /// commit through one connection empties the caches of all others; a writer that took
    /// any pooled connection would start each batch on a cold cache (and prepare its
    /// statements again), while one that keeps its own finds the pages of its last batch
    /// still there whenever only the writer wrote in between, as during a fan-out.
    pub async fn open_writer(location: &DatabaseLocation) -> Result<Self> {
        Ok(Self {
            db: connect(location, 1, Some(WRITER_CACHE_KIB)).await?,
        })
    }

    /// Copies the WAL's committed pages into the database file without waiting for (or
    /// blocking) readers or the writer, so that the WAL can start over. SQLite only (see
    /// `writer::Checkpoints` for who calls it when). Returns the WAL's pages and how many of
    /// them are in the database now; `(-1, -1)` when another connection's checkpoint is
    /// running.
    pub async fn checkpoint(&self) -> Result<Option<(i64, i64)>> {
        self.wal_checkpoint("PASSIVE").await
    }

    /// Checkpoints, then starts the WAL over and cuts its file to nothing. Unlike
    /// [`Store::checkpoint`] this takes the write lock and, holding it, waits (up to the busy
    /// timeout) for reads under way in the WAL to end, so it is for when the WAL is idle (see
    /// `writer::Checkpoints`). That wait is short: the server's reads run to completion as
    /// soon as they start (none streams rows to a client). Returns what
    /// [`Store::checkpoint`] does; `(0, 0)` once done.
    pub async fn checkpoint_truncate(&self) -> Result<Option<(i64, i64)>> {
        self.wal_checkpoint("TRUNCATE").await
    }

    async fn wal_checkpoint(&self, mode: &'static str) -> Result<Option<(i64, i64)>> {
        if self.db.get_database_backend() != DbBackend::Sqlite {
            return Ok(None);
        }
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!("PRAGMA wal_checkpoint({mode})"),
            ))
            .await?;
        Ok(row.and_then(|row| {
            let log = row.try_get_by_index::<i64>(1).ok()?;
            let done = row.try_get_by_index::<i64>(2).ok()?;
            Some((log, done))
        }))
    }

    /// SQLite's `PRAGMA integrity_check`: `["ok"]` for a sound database, otherwise what is
    /// wrong; nothing on other backends.
    pub async fn integrity_check(&self) -> Result<Vec<String>> {
        if self.db.get_database_backend() != DbBackend::Sqlite {
            return Ok(Vec::new());
        }
        let rows = self
            .db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "PRAGMA integrity_check",
            ))
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| row.try_get_by_index::<String>(0).ok())
            .collect())
    }

    /// Whether this is PostgreSQL, where several nodes may share the database.
    pub fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == DbBackend::Postgres
    }

    /// The PostgreSQL pool, for a `LISTEN` connection (`crate::cluster`); `None` on SQLite.
    pub fn postgres_pool(&self) -> Option<sea_orm::sqlx::PgPool> {
        self.is_postgres()
            .then(|| self.db.get_postgres_connection_pool().clone())
    }

    /// `NOTIFY channel, payload` (PostgreSQL only; delivered to listeners once committed,
    /// which a statement outside a transaction is at once).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [channel.into(), payload.into()],
            ))
            .await?;
        Ok(())
    }

    /// See [`Store::bootstrap_now`]. In one write transaction, so that servers starting together
    /// on one database take turns (on PostgreSQL under an advisory lock too, since its `BEGIN`
    /// takes no lock): the second finds what the first made.
    pub async fn bootstrap(&self, admin_key: Option<&str>) -> Result<Bootstrapped> {
        let txn = Store {
            db: begin_write(&self.db).await?,
        };
        if self.db.get_database_backend() == DbBackend::Postgres {
            txn.db
                .execute_unprepared(&format!(
                    "SELECT pg_advisory_xact_lock({})",
                    migrations::BOOTSTRAP_LOCK
                ))
                .await?;
        }
        let done = txn.bootstrap_now(admin_key).await?;
        txn.db.commit().await?;
        Ok(done)
    }

    /// Cheap liveness query for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        Ok(self.db.ping().await?)
    }

    /// The same methods inside one write transaction; see [`Store::commit`] and
    /// [`begin_write`].
    pub async fn begin(&self) -> Result<Store<DatabaseTransaction>> {
        Ok(Store {
            db: begin_write(&self.db).await?,
        })
    }
}

impl Store<DatabaseTransaction> {
    /// Commits everything done through this handle.
    pub async fn commit(self) -> Result<()> {
        Ok(self.db.commit().await?)
    }
}

impl<C: ConnectionTrait + TransactionTrait> Store<C> {
    // ---- tenants and API keys -------------------------------------------------------------

    /// On an empty database, creates the default tenant and its owner key (`admin_key`, from
    /// `OUTPOST_ADMIN_KEY`, or a generated one, returned to be saved and shown once).
    ///
    /// On a database with a tenant, an `admin_key` not seen before becomes the default
    /// tenant's owner key and revokes the earlier ones the server made (see
    /// [`BOOTSTRAP_KEY_NAME`]): a changed `OUTPOST_ADMIN_KEY` replaces the old key rather than
    /// adding one. A key that was revoked is not registered again, so restarting with an old
    /// `OUTPOST_ADMIN_KEY` after a rotation does not bring it back.
    pub async fn bootstrap_now(&self, admin_key: Option<&str>) -> Result<Bootstrapped> {
        let Some(tenant) = self.default_tenant().await? else {
            let (_, secret) = self.create_tenant("default", admin_key).await?;
            return Ok(Bootstrapped::Created(admin_key.is_none().then_some(secret)));
        };
        let Some(key) = admin_key else {
            return Ok(Bootstrapped::Unchanged);
        };
        match self.api_key_by_hash(&credentials::hash_secret(key)).await? {
            Some(row) if row.revoked_at.is_some() => Ok(Bootstrapped::Revoked),
            Some(_) => Ok(Bootstrapped::Unchanged),
            None => {
                let revoked = self
                    .replace_owner_key(
                        &tenant.id,
                        key,
                        AuditAction::ApiKeyCreate,
                        Actor::system("OUTPOST_ADMIN_KEY", "a new OUTPOST_ADMIN_KEY at start"),
                    )
                    .await?;
                Ok(Bootstrapped::Replaced { revoked })
            }
        }
    }

    /// A new owner key for the default tenant, replacing (revoking) the earlier ones the
    /// server made: `outpost-server admin-key rotate`. Returns the secret and how many keys
    /// were revoked.
    pub async fn rotate_owner_key(&self) -> Result<(String, u64)> {
        let tenant = self.default_tenant().await?.ok_or_else(|| {
            StoreError::Config(
                "the database has no tenant yet: start the server once, it creates the owner key"
                    .into(),
            )
        })?;
        let secret = credentials::generate_secret(KeyKind::Api);
        let revoked = self
            .replace_owner_key(
                &tenant.id,
                &secret,
                AuditAction::ApiKeyRotate,
                Actor::system("admin-key rotate", "outpost-server admin-key rotate"),
            )
            .await?;
        Ok((secret, revoked))
    }

    /// The tenant the server made on its first start: the oldest.
    pub async fn default_tenant(&self) -> Result<Option<tenant::Model>> {
        Ok(tenant::Entity::find()
            .order_by_asc(tenant::Column::CreatedAt)
            .one(&self.db)
            .await?)
    }

    /// Registers `secret` as the tenant's owner key and revokes the other keys the server
    /// made, in one transaction (never both valid or neither). Returns how many it revoked.
    async fn replace_owner_key(
        &self,
        tenant_id: &str,
        secret: &str,
        action: AuditAction,
        actor: Actor,
    ) -> Result<u64> {
        let txn = Store {
            db: begin_write(&self.db).await?,
        };
        let id = txn.insert_owner_key(tenant_id, secret).await?;
        let revoked = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(now()))
            .filter(api_key::Column::TenantId.eq(tenant_id))
            .filter(api_key::Column::Name.eq(BOOTSTRAP_KEY_NAME))
            .filter(api_key::Column::Role.eq(crate::domain::Role::Owner.as_str()))
            .filter(api_key::Column::RevokedAt.is_null())
            .filter(api_key::Column::Id.ne(id.clone()))
            .exec(&txn.db)
            .await?
            .rows_affected;
        txn.append_audit_now(&AuditRecord {
            tenant_id: tenant_id.to_owned(),
            actor,
            address: None,
            event: AuditEvent::new(action, AuditTarget::ApiKey, id)
                .with(json!({"name": BOOTSTRAP_KEY_NAME, "role": "owner", "revoked": revoked})),
        })
        .await?;
        txn.db.commit().await?;
        Ok(revoked)
    }

    /// Creates a tenant with an owner API key (`secret`, or a generated one), in one
    /// transaction with the first row of its audit log; returns the tenant id and the key.
    pub async fn create_tenant(
        &self,
        name: &str,
        secret: Option<&str>,
    ) -> Result<(String, String)> {
        self.create_tenant_by(name, secret, Actor::system("outpost-server", "the server"))
            .await
    }

    /// [`Store::create_tenant`], recorded as done by `actor` (`outpost-server tenant create`).
    pub async fn create_tenant_by(
        &self,
        name: &str,
        secret: Option<&str>,
        actor: Actor,
    ) -> Result<(String, String)> {
        let txn = Store {
            db: begin_write(&self.db).await?,
        };
        let id = txn.insert_tenant(name).await?.id;
        let secret = secret
            .map(str::to_owned)
            .unwrap_or_else(|| credentials::generate_secret(KeyKind::Api));
        let key_id = txn.insert_owner_key(&id, &secret).await?;
        txn.append_audit_now(&AuditRecord {
            tenant_id: id.clone(),
            actor,
            address: None,
            event: AuditEvent::new(AuditAction::TenantCreate, AuditTarget::Tenant, &id)
                .with(json!({"name": name, "owner_key_id": key_id})),
        })
        .await?;
        txn.db.commit().await?;
        Ok((id, secret))
    }

    async fn insert_owner_key(&self, tenant_id: &str, secret: &str) -> Result<String> {
        let id = new_id();
        api_key::ActiveModel {
            id: Set(id.clone()),
            tenant_id: Set(tenant_id.to_owned()),
            name: Set(BOOTSTRAP_KEY_NAME.into()),
            key_hash: Set(credentials::hash_secret(secret)),
            role: Set(crate::domain::Role::Owner.as_str().into()),
            created_at: Set(now()),
            expires_at: Set(None),
            revoked_at: Set(None),
            owner_user_id: Set(None),
            scopes: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(id)
    }

    /// Creates an API key with `role` in a tenant and returns its secret (shown once). The
    /// accounts API will create keys of every role; until then this is how an admin or member
    /// key is made (by tools and tests on the server's host).
    pub async fn create_api_key(&self, tenant_id: &str, name: &str, role: &str) -> Result<String> {
        let secret = credentials::generate_secret(KeyKind::Api);
        api_key::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(tenant_id.to_owned()),
            name: Set(name.to_owned()),
            key_hash: Set(credentials::hash_secret(&secret)),
            role: Set(role.to_owned()),
            created_at: Set(now()),
            expires_at: Set(None),
            revoked_at: Set(None),
            owner_user_id: Set(None),
            scopes: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok(secret)
    }

    /// Finds the API key whose secret hashes to `hash` (revoked or not: the caller decides).
    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<api_key::Model>> {
        Ok(api_key::Entity::find()
            .filter(api_key::Column::KeyHash.eq(hash))
            .one(&self.db)
            .await?)
    }

    // ---- agent keys -----------------------------------------------------------------------

    /// Finds the agent key whose secret hashes to `hash`.
    pub async fn agent_key_by_hash(&self, hash: &str) -> Result<Option<agent_key::Model>> {
        Ok(agent_key::Entity::find()
            .filter(agent_key::Column::KeyHash.eq(hash))
            .one(&self.db)
            .await?)
    }

    /// Creates an agent key and returns it with its secret.
    pub async fn create_agent_key(
        &self,
        tenant_id: &str,
        name: &str,
        permissions: &[String],
        tags: &[String],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(agent_key::Model, String)> {
        let secret = credentials::generate_secret(KeyKind::Agent);
        let model = agent_key::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(tenant_id.to_owned()),
            name: Set(name.to_owned()),
            key_hash: Set(credentials::hash_secret(&secret)),
            permissions: Set(json!(permissions)),
            tags: Set(json!(tags)),
            status: Set(key_status::ACTIVE.into()),
            created_at: Set(now()),
            expires_at: Set(expires_at),
            last_used_at: Set(None),
        }
        .insert(&self.db)
        .await?;
        Ok((model, secret))
    }

    /// Every agent key of a tenant, oldest first.
    pub async fn list_agent_keys(&self, tenant_id: &str) -> Result<Vec<agent_key::Model>> {
        Ok(agent_key::Entity::find()
            .filter(agent_key::Column::TenantId.eq(tenant_id))
            .order_by_asc(agent_key::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    /// One agent key of a tenant.
    pub async fn get_agent_key(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<agent_key::Model>> {
        Ok(agent_key::Entity::find_by_id(id.to_owned())
            .filter(agent_key::Column::TenantId.eq(tenant_id))
            .one(&self.db)
            .await?)
    }

    /// Applies a patch; `None` when the key is not the tenant's.
    pub async fn update_agent_key(
        &self,
        tenant_id: &str,
        id: &str,
        patch: AgentKeyPatch,
    ) -> Result<Option<agent_key::Model>> {
        let Some(existing) = self.get_agent_key(tenant_id, id).await? else {
            return Ok(None);
        };
        let mut model: agent_key::ActiveModel = existing.into();
        if let Some(name) = patch.name {
            model.name = Set(name);
        }
        if let Some(permissions) = patch.permissions {
            model.permissions = Set(json!(permissions));
        }
        if let Some(status) = patch.status {
            model.status = Set(status);
        }
        Ok(Some(model.update(&self.db).await?))
    }

    /// Replaces a key's secret; the old one stops working with this commit.
    pub async fn regenerate_agent_key(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<(agent_key::Model, String)>> {
        let Some(existing) = self.get_agent_key(tenant_id, id).await? else {
            return Ok(None);
        };
        let secret = credentials::generate_secret(KeyKind::Agent);
        let mut model: agent_key::ActiveModel = existing.into();
        model.key_hash = Set(credentials::hash_secret(&secret));
        Ok(Some((model.update(&self.db).await?, secret)))
    }

    /// Deletes a key; `false` when it was not the tenant's.
    pub async fn delete_agent_key(&self, tenant_id: &str, id: &str) -> Result<bool> {
        let res = agent_key::Entity::delete_many()
            .filter(agent_key::Column::TenantId.eq(tenant_id))
            .filter(agent_key::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected > 0)
    }

    /// Records that a key was just used to connect.
    pub async fn touch_agent_key(&self, tenant_id: &str, id: &str) -> Result<()> {
        agent_key::Entity::update_many()
            .col_expr(agent_key::Column::LastUsedAt, Expr::value(now()))
            .filter(agent_key::Column::TenantId.eq(tenant_id))
            .filter(agent_key::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    // ---- agents ---------------------------------------------------------------------------

    /// Stores an agent's `register`: a new agent id is bound to `key_id`, the key it first
    /// registered with; an agent bound to that key is refreshed; an agent bound to another key
    /// is left alone and [`Registered::Taken`] returned (SPEC §9, "Agent identity"). Without
    /// the binding, any agent key of a tenant could take over any of its agents: receive its
    /// queued commands and parameters, and answer for it.
    ///
    /// Each step is one conditional statement (an update of the row bound to this key, or an
    /// insert that does nothing if the id exists), so two registrations of one id with two
    /// keys racing each other bind it to exactly one. A new id in a tenant at its
    /// `max_agents` quota is refused ([`Registered::OverQuota`]); an agent already registered
    /// never is.
    ///
    /// `node_id` is the node that holds the agent's connection, when several share the
    /// database (`crate::cluster`).
    pub async fn upsert_agent(
        &self,
        tenant_id: &str,
        key_id: &str,
        data: &RegisterData,
        node_id: Option<&str>,
        transport: crate::domain::Transport,
    ) -> Result<Registered> {
        let id = data.agent_id.to_string();
        // Twice at most: an insert that lost a race with the same key's insert finds the row
        // on its second update.
        for _ in 0..2 {
            let now = now();
            let mut update = agent::Entity::update_many()
                .col_expr(agent::Column::Hostname, Expr::value(data.hostname.clone()))
                .col_expr(agent::Column::Ip, Expr::value(data.ip.clone()))
                .col_expr(agent::Column::Version, Expr::value(data.version.clone()))
                .col_expr(agent::Column::Os, Expr::value(data.os.clone()))
                .col_expr(agent::Column::Arch, Expr::value(data.arch.clone()))
                .col_expr(agent::Column::Protocol, Expr::value(data.protocol as i32))
                .col_expr(
                    agent::Column::Capabilities,
                    Expr::value(json!(data.capabilities)),
                )
                .col_expr(agent::Column::AgentTags, Expr::value(json!(data.tags)))
                .col_expr(agent::Column::Scripts, Expr::value(json!(data.scripts)))
                .col_expr(
                    agent::Column::Library,
                    Expr::value(data.library.as_ref().map(|l| json!(l))),
                )
                .col_expr(agent::Column::LastSeen, Expr::value(now))
                .col_expr(agent::Column::ConnectedAt, Expr::value(Some(now)))
                .col_expr(
                    agent::Column::NodeId,
                    Expr::value(node_id.map(str::to_owned)),
                )
                .col_expr(
                    agent::Column::Transport,
                    Expr::value(Some(transport.as_str().to_owned())),
                );
            // An agent without a report keeps the last one it sent: the report describes the
            // last update, which stays true until the next.
            if let Some(report) = &data.update_status {
                update = update.col_expr(
                    agent::Column::UpdateStatus,
                    Expr::value(Some(json!(report))),
                );
            }
            let updated = update
                .filter(agent::Column::TenantId.eq(tenant_id))
                .filter(agent::Column::Id.eq(&id))
                .filter(agent::Column::KeyId.eq(key_id))
                .exec_with_returning(&self.db)
                .await?;
            if let Some(model) = updated.into_iter().next() {
                return Ok(Registered::Stored(Box::new(model)));
            }
            let new = agent::ActiveModel {
                tenant_id: Set(tenant_id.to_owned()),
                id: Set(id.clone()),
                key_id: Set(key_id.to_owned()),
                hostname: Set(data.hostname.clone()),
                ip: Set(data.ip.clone()),
                version: Set(data.version.clone()),
                os: Set(data.os.clone()),
                arch: Set(data.arch.clone()),
                protocol: Set(data.protocol as i32),
                capabilities: Set(json!(data.capabilities)),
                agent_tags: Set(json!(data.tags)),
                server_tags: Set(json!([])),
                scripts: Set(json!(data.scripts)),
                first_seen: Set(now),
                last_seen: Set(now),
                connected_at: Set(Some(now)),
                disconnected_at: Set(None),
                last_heartbeat: Set(None),
                update_status: Set(data.update_status.as_ref().map(|r| json!(r))),
                node_id: Set(node_id.map(str::to_owned)),
                transport: Set(Some(transport.as_str().to_owned())),
                offline_reported_at: Set(None),
                library: Set(data.library.as_ref().map(|l| json!(l))),
            };
            // Counted against the tenant's `max_agents` (`store::tenants`): only a new id
            // can be refused, never an agent already registered.
            match self.insert_new_agent(new).await? {
                tenants::NewAgent::Inserted => {
                    let model = self.get_agent(tenant_id, &id).await?.ok_or_else(|| {
                        StoreError::Db(DbErr::RecordNotFound(format!("agent {id}")))
                    })?;
                    return Ok(Registered::Stored(Box::new(model)));
                }
                tenants::NewAgent::OverQuota(max) => return Ok(Registered::OverQuota { max }),
                tenants::NewAgent::Exists => {}
            }
            // The id exists: bound to another key, or inserted by this key just now.
            match self.get_agent(tenant_id, &id).await? {
                Some(other) if other.key_id != key_id => {
                    return Ok(Registered::Taken {
                        key_id: other.key_id,
                    });
                }
                _ => continue,
            }
        }
        Err(StoreError::Db(DbErr::Custom(format!(
            "agent {id}: its row changed under two registrations in a row"
        ))))
    }

    /// Records that an agent's connection to `node_id` ended. When several nodes share the
    /// database, an agent that moved to another node meanwhile is left as that node recorded
    /// it: a node learns late that a connection it lost is gone, often after the agent has
    /// registered elsewhere.
    pub async fn record_disconnect(
        &self,
        tenant_id: &str,
        agent_id: &str,
        node_id: Option<&str>,
    ) -> Result<()> {
        let now = now();
        let mut update = agent::Entity::update_many()
            .col_expr(agent::Column::LastSeen, Expr::value(now))
            .col_expr(agent::Column::DisconnectedAt, Expr::value(now))
            .col_expr(agent::Column::NodeId, Expr::value(Option::<String>::None))
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.eq(agent_id));
        if let Some(node_id) = node_id {
            update = update.filter(agent::Column::NodeId.eq(node_id));
        }
        update.exec(&self.db).await?;
        Ok(())
    }

    /// Every agent of a tenant, by host name.
    pub async fn list_agents(&self, tenant_id: &str) -> Result<Vec<agent::Model>> {
        Ok(agent::Entity::find()
            .filter(agent::Column::TenantId.eq(tenant_id))
            .order_by_asc(agent::Column::Hostname)
            .order_by_asc(agent::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// Every agent of a tenant as a job target: id, key and tags only, in hostname order.
    /// Resolving a target reads the whole fleet, and the other columns (scripts, metrics) are
    /// most of each row.
    ///
    /// On SQLite the rows come back as one text that SQLite concatenates: through the driver,
    /// decoding each row separately was a large part of a job's creation, before any run was
    /// stored. The fields are joined as they are stored, not rebuilt as JSON, and the rows are
    /// read in the order of the `agents_hostname` index: an aggregate's own `ORDER BY` sorted
    /// them again in a temporary B-tree, and `json_array(…, json(…))` parsed and re-serialised
    /// every agent's tags, which roughly doubled SQLite's own work (figures:
    /// docs/BENCHMARKS.md, "Design notes behind the figures"). Fields are separated by the
    /// ASCII unit separator, agents by the record separator, and neither can occur inside a
    /// field: ids are UUIDs, the host name comes as `hex()` and tags are stored JSON, whose
    /// text never holds a raw control character. An aggregate's input order is not SQLite's
    /// promise, so the list is checked and sorted if it is not in order; hex digits sort as
    /// the bytes they encode. Other backends read the rows.
    pub async fn agent_targets(&self, tenant_id: &str) -> Result<Vec<AgentTarget>> {
        let backend = self.db.get_database_backend();
        if backend == DbBackend::Sqlite {
            let row = self
                .db
                .query_one_raw(Statement::from_sql_and_values(
                    backend,
                    "SELECT group_concat(agent, char(30)) FROM (SELECT hex(hostname) \
                     || char(31) || id || char(31) || key_id || char(31) || agent_tags \
                     || char(31) || server_tags AS agent FROM agents WHERE tenant_id = ? \
                     ORDER BY hostname, id)",
                    [tenant_id.into()],
                ))
                .await?;
            // An aggregate always yields one row, NULL for a tenant without agents.
            let text: Option<String> = match row {
                Some(row) => row.try_get_by_index(0)?,
                None => None,
            };
            let text = text.unwrap_or_default();
            let mut agents = text
                .split(RECORD_SEPARATOR)
                .filter(|record| !record.is_empty())
                .map(|record| AgentTarget::from_record(record, tenant_id))
                .collect::<Result<Vec<_>>>()?;
            if !agents.is_sorted_by(|(a, x), (b, y)| (a, &x.id) <= (b, &y.id)) {
                agents.sort_unstable_by(|(a, x), (b, y)| (a, &x.id).cmp(&(b, &y.id)));
            }
            return Ok(agents.into_iter().map(|(_, agent)| agent).collect());
        }
        let rows: Vec<(String, String, Value, Value)> = agent::Entity::find()
            .select_only()
            .columns([
                agent::Column::Id,
                agent::Column::KeyId,
                agent::Column::AgentTags,
                agent::Column::ServerTags,
            ])
            .filter(agent::Column::TenantId.eq(tenant_id))
            .order_by_asc(agent::Column::Hostname)
            .order_by_asc(agent::Column::Id)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(AgentTarget::from_row).collect())
    }

    /// One agent of a tenant.
    pub async fn get_agent(&self, tenant_id: &str, id: &str) -> Result<Option<agent::Model>> {
        Ok(agent::Entity::find()
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.eq(id))
            .one(&self.db)
            .await?)
    }

    /// An agent and the key it connected with, in one query: a command's round trip needs
    /// both, and each query is a hop to SQLite's thread and back, a noticeable part of the
    /// round trip (figures: docs/BENCHMARKS.md, "Design notes behind the figures"). The key is
    /// `None` when it no longer exists (or, which the schema does not allow, belongs to
    /// another tenant).
    pub async fn get_agent_with_key(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<(agent::Model, Option<agent_key::Model>)>> {
        let key_of_agent = agent::Entity::belongs_to(agent_key::Entity)
            .from(agent::Column::KeyId)
            .to(agent_key::Column::Id)
            .into();
        let found = agent::Entity::find()
            .join(JoinType::LeftJoin, key_of_agent)
            .select_also(agent_key::Entity)
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.eq(id))
            .one(&self.db)
            .await?;
        Ok(found.map(|(agent, key)| {
            let key = key.filter(|key| key.tenant_id == agent.tenant_id);
            (agent, key)
        }))
    }

    /// Replaces an agent's server-side tags.
    pub async fn set_agent_tags(
        &self,
        tenant_id: &str,
        id: &str,
        tags: &[String],
    ) -> Result<Option<agent::Model>> {
        agent::Entity::update_many()
            .col_expr(agent::Column::ServerTags, Expr::value(json!(tags)))
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        self.get_agent(tenant_id, id).await
    }

    /// Forgets an agent. The commands it still owed become `lost` and their jobs are
    /// recomputed; they are returned, so that whoever waits for them can be told (`None` when
    /// the agent was not the tenant's).
    pub async fn delete_agent(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Vec<command::Model>>> {
        let lost = command::Entity::update_many()
            .col_expr(command::Column::State, Expr::value(state::LOST))
            .col_expr(command::Column::FinishedAt, Expr::value(now()))
            .col_expr(command::Column::ErrorCode, Expr::value("agent_deleted"))
            .col_expr(
                command::Column::ErrorMessage,
                Expr::value("the agent was deleted before it answered"),
            )
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::AgentId.eq(id))
            .filter(Expr::cust(state::OPEN_SQL))
            .exec_with_returning(&self.db)
            .await?;
        let jobs: std::collections::BTreeSet<&str> =
            lost.iter().filter_map(|c| c.job_id.as_deref()).collect();
        for job_id in jobs {
            self.refresh_job(tenant_id, job_id).await?;
        }
        let res = agent::Entity::delete_many()
            .filter(agent::Column::TenantId.eq(tenant_id))
            .filter(agent::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok((res.rows_affected > 0).then_some(lost))
    }

    // ---- commands -------------------------------------------------------------------------

    /// Stores a command before it is sent (delivery guarantee 1).
    pub async fn insert_command(&self, new: NewCommand) -> Result<command::Model> {
        let now = now();
        let model = command::ActiveModel {
            id: Set(new_id()),
            tenant_id: Set(new.tenant_id),
            agent_id: Set(new.agent_id),
            command: Set(new.command),
            data: Set(new.data),
            timeout_s: Set(new.timeout_s as i32),
            state: Set(state::PENDING.into()),
            created_at: Set(now),
            expires_at: Set(now + chrono::Duration::seconds(i64::from(new.ttl_s))),
            delivered_at: Set(None),
            finished_at: Set(None),
            success: Set(None),
            result: Set(None),
            error_code: Set(None),
            error_message: Set(None),
            job_id: Set(new.job_id),
            started_at: Set(None),
            exit_code: Set(None),
            stdout_bytes: Set(0),
            stderr_bytes: Set(0),
            output_truncated: Set(false),
            sealed_params: Set(new.sealed_params),
        }
        .insert(&self.db)
        .await?;
        crate::metrics::commands_created(&model.command, 1);
        Ok(model)
    }

    /// Fails an agent's pending commands `ids` with `forbidden` instead of sending them: its
    /// key no longer allows them (permissions are checked on every send, not only when a
    /// command is stored). Commands the agent already received are left alone: it runs them
    /// and answers. Returns the commands failed, their jobs recomputed.
    pub async fn refuse_pending(
        &self,
        tenant_id: &str,
        agent_id: &str,
        ids: &[String],
        message: &str,
    ) -> Result<Vec<command::Model>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let refused = command::Entity::update_many()
            .col_expr(command::Column::State, Expr::value(state::FAILED))
            .col_expr(command::Column::FinishedAt, Expr::value(now()))
            .col_expr(command::Column::Success, Expr::value(false))
            .col_expr(
                command::Column::ErrorCode,
                Expr::value(outpost_protocol::codes::FORBIDDEN),
            )
            .col_expr(command::Column::ErrorMessage, Expr::value(message))
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::AgentId.eq(agent_id))
            .filter(command::Column::Id.is_in(ids.iter().map(String::as_str)))
            .filter(Expr::cust(format!("state = '{}'", state::PENDING)))
            .exec_with_returning(&self.db)
            .await?;
        let jobs: std::collections::BTreeSet<&str> =
            refused.iter().filter_map(|c| c.job_id.as_deref()).collect();
        for job_id in jobs {
            self.refresh_job(tenant_id, job_id).await?;
        }
        Ok(refused)
    }

    /// Whether command `id` is one of this agent's.
    pub async fn is_agents_command(
        &self,
        tenant_id: &str,
        agent_id: &str,
        id: &str,
    ) -> Result<bool> {
        let found = command::Entity::find_by_id(id.to_owned())
            .select_only()
            .column(command::Column::Id)
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::AgentId.eq(agent_id))
            .into_tuple::<String>()
            .one(&self.db)
            .await?;
        Ok(found.is_some())
    }

    /// One command of a tenant.
    pub async fn get_command(&self, tenant_id: &str, id: &str) -> Result<Option<command::Model>> {
        Ok(command::Entity::find_by_id(id.to_owned())
            .filter(command::Column::TenantId.eq(tenant_id))
            .one(&self.db)
            .await?)
    }

    /// Commands an agent still owes an answer to, oldest first, after expiring those whose TTL
    /// passed undelivered. Sent again on every (re)connect (delivery guarantees 1 and 2).
    /// Returns the commands it expired too, so that whoever waits for them can be told.
    pub async fn open_commands_for(
        &self,
        tenant_id: &str,
        agent_id: &str,
    ) -> Result<(Vec<command::Model>, Vec<command::Model>)> {
        let expired = self.expire_commands_for(tenant_id, agent_id).await?;
        let jobs: std::collections::BTreeSet<&str> =
            expired.iter().filter_map(|c| c.job_id.as_deref()).collect();
        for job_id in jobs {
            self.refresh_job(tenant_id, job_id).await?;
        }
        let open = command::Entity::find()
            .filter(command::Column::TenantId.eq(tenant_id))
            .filter(command::Column::AgentId.eq(agent_id))
            .filter(Expr::cust(state::OPEN_SQL))
            .order_by_asc(command::Column::Id)
            .all(&self.db)
            .await?;
        Ok((expired, open))
    }

    /// Marks every pending command whose TTL has passed as expired. Returns them.
    pub async fn expire_commands(&self) -> Result<Vec<command::Model>> {
        self.expire_where(None).await
    }

    /// Expires one agent's overdue commands (cheap: done on every registration).
    async fn expire_commands_for(
        &self,
        tenant_id: &str,
        agent_id: &str,
    ) -> Result<Vec<command::Model>> {
        self.expire_where(Some((tenant_id, agent_id))).await
    }

    async fn expire_where(&self, agent: Option<(&str, &str)>) -> Result<Vec<command::Model>> {
        let now = now();
        let mut update = command::Entity::update_many()
            .col_expr(command::Column::State, Expr::value(state::EXPIRED))
            .col_expr(command::Column::FinishedAt, Expr::value(now))
            .col_expr(
                command::Column::ErrorCode,
                Expr::value(outpost_protocol::codes::EXPIRED),
            )
            .col_expr(
                command::Column::ErrorMessage,
                Expr::value("the agent did not connect before the command's ttl passed"),
            )
            // A literal, not a bound value: SQLite uses the partial index on pending
            // commands only when it can see at prepare time that the query implies it.
            .filter(Expr::cust(format!("state = '{}'", state::PENDING)))
            .filter(command::Column::ExpiresAt.lt(now));
        if let Some((tenant_id, agent_id)) = agent {
            update = update
                .filter(command::Column::TenantId.eq(tenant_id))
                .filter(command::Column::AgentId.eq(agent_id));
        }
        Ok(update.exec_with_returning(&self.db).await?)
    }
}

/// What [`Store::upsert_agent`] did with a `register`.
#[derive(Debug)]
pub enum Registered {
    /// Stored: a new agent, now bound to the key, or one already bound to it.
    Stored(Box<agent::Model>),
    /// The agent id is bound to another key of the tenant, named here; nothing was stored.
    Taken {
        /// The key the agent is bound to.
        key_id: String,
    },
    /// The agent id is new and the tenant has its `max_agents` already; nothing was stored.
    OverQuota {
        /// The tenant's `max_agents`.
        max: i64,
    },
}

impl Registered {
    /// The stored agent, unless the id was taken.
    pub fn into_stored(self) -> Option<agent::Model> {
        match self {
            Self::Stored(model) => Some(*model),
            Self::Taken { .. } | Self::OverQuota { .. } => None,
        }
    }
}

/// An agent as a job target sees it.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    /// Agent id.
    pub id: String,
    /// The key it is bound to.
    pub key_id: String,
    /// The tags it declares itself.
    pub declared: Vec<String>,
    /// The tags an operator set on it.
    pub server: Vec<String>,
}

/// Separates agents in [`Store::agent_targets`]' text (ASCII RS).
const RECORD_SEPARATOR: char = '\u{1e}';
/// Separates an agent's fields there (ASCII US).
const UNIT_SEPARATOR: char = '\u{1f}';

impl AgentTarget {
    /// From `hex(hostname) US id US key_id US agent_tags US server_tags`, the tags as stored
    /// JSON; with the hex host name, which sorts as the host name does.
    fn from_record<'a>(record: &'a str, tenant_id: &str) -> Result<(&'a str, Self)> {
        let bad = |what: &str| {
            StoreError::Db(DbErr::Custom(format!(
                "agents of tenant {tenant_id}: {what} in {record:?}"
            )))
        };
        let fields: Vec<&str> = record.split(UNIT_SEPARATOR).collect();
        let [hostname, id, key_id, agent_tags, server_tags] = fields[..] else {
            return Err(bad("not 5 fields"));
        };
        // Tags are stored as a list of strings; anything else is read as `string_list` does.
        let tags = |text: &str| -> Result<Vec<String>> {
            serde_json::from_str(text).or_else(|_| {
                serde_json::from_str(text)
                    .map(|value: Value| string_list(&value))
                    .map_err(|err| bad(&err.to_string()))
            })
        };
        Ok((
            hostname,
            Self {
                id: id.to_owned(),
                key_id: key_id.to_owned(),
                declared: tags(agent_tags)?,
                server: tags(server_tags)?,
            },
        ))
    }

    /// From `(id, key_id, agent_tags, server_tags)`.
    fn from_row((id, key_id, agent_tags, server_tags): (String, String, Value, Value)) -> Self {
        Self {
            id,
            key_id,
            declared: string_list(&agent_tags),
            server: string_list(&server_tags),
        }
    }
}

/// Starts a transaction that will write: on SQLite, `BEGIN IMMEDIATE`, which takes the write
/// lock at once and waits for it in the busy handler (up to the busy timeout). A deferred
/// transaction that reads first and then writes cannot wait: when another connection holds the
/// lock, or committed since its read began, its first write fails at once with `SQLITE_BUSY`
/// (5, or 517 `BUSY_SNAPSHOT`), whatever the busy timeout. Under contention (agents answering
/// while others register) that failed writer batches and closed agents' connections. On
/// PostgreSQL this is a plain `BEGIN`.
pub async fn begin_write<C: TransactionTrait>(db: &C) -> Result<C::Transaction, DbErr> {
    db.begin_with_options(sea_orm::TransactionOptions {
        sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// Creates a new SQLite database file readable by the server's user only (SQLite would make
/// it 0644 less the umask; its `-wal` and `-shm` files take the database file's mode). An
/// empty file is an empty database. An existing file is left as it is.
fn create_private_file(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(StoreError::Config(format!(
            "cannot create the database {}: {err}",
            path.display()
        ))),
    }
}

/// A pool of at most `size` connections. `cache_kib` sets SQLite's page cache per connection
/// (SQLite's default is 2 MiB).
async fn connect(
    location: &DatabaseLocation,
    size: u32,
    cache_kib: Option<u32>,
) -> Result<DatabaseConnection> {
    let mut options = match location {
        DatabaseLocation::Sqlite(path) => {
            let mut options = ConnectOptions::new(sqlite_url(path));
            // A file on this machine does not go stale while it idles in the pool; the
            // check would cost a round trip to the connection's thread on every acquire,
            // which the writer makes once per batch.
            options.test_before_acquire(false);
            options
        }
        DatabaseLocation::Url(url) => ConnectOptions::new(url.clone()),
    };
    // A connection left inside a transaction is closed rather than handed out again. sqlx
    // counts the transactions it opened on a connection and rolls back one that is dropped
    // unfinished; but when SQLite itself rolled a transaction back (a statement failed with
    // `SQLITE_FULL` or `IOERR`), that rollback fails ("no transaction is active") and the
    // count stays at 1. sqlx then opens the next "transaction" as a savepoint, so its commit
    // commits nothing and its rollback ends nothing: after a full disk, the writer's
    // connection kept a transaction open for good, its jobs were invisible to every other
    // connection (404) while their commands went out, and every other write failed with
    // "database is locked". By the time a connection is acquired again its count is exact
    // (the queued rollback and the pool's release ping ran in order), so a non-zero count
    // means the connection's state is not what sqlx believes: close it, and the pool opens a
    // fresh one (SQLite rolls back whatever the closed one held).
    options.map_sqlx_sqlite_before_acquire(|conn, _| {
        Box::pin(async move {
            use sea_orm::sqlx::Connection as _;
            let inside = conn.is_in_transaction();
            if inside {
                tracing::warn!("closing a database connection left inside a transaction");
            }
            Ok(!inside)
        })
    });
    options
        .max_connections(size)
        .min_connections(1)
        // Also how long a request waits for a pooled connection (sqlx's acquire timeout).
        .connect_timeout(Duration::from_secs(10))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |o| {
            // WAL with synchronous=NORMAL: a commit survives `kill -9` of the server (the
            // WAL is in the OS page cache), and costs no fsync per transaction.
            let o = o
                .create_if_missing(true)
                // Space freed by retention is given back in steps (`Store::reclaim_space`).
                // Takes effect on a new database (sqlx sets it before WAL, and before the
                // first table exists) and on a `VACUUM`; an older database is converted at
                // start when small (`ensure_incremental_vacuum`).
                .auto_vacuum(SqliteAutoVacuum::Incremental)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // No commit checkpoints the WAL by itself: that would stall whichever commit
                // crossed the threshold (the writer's, usually) for the copy and its fsync.
                // `writer::Checkpoints` calls `Store::checkpoint` instead.
                .pragma("wal_autocheckpoint", "0")
                // Whichever connection starts the WAL over cuts its file back to this.
                .pragma("journal_size_limit", WAL_LIMIT_BYTES.to_string())
                // Temporary B-trees and statement journals in memory. A job's runs are
                // inserted in statements of 1,024 rows, each checking the tenant's foreign
                // key, which makes SQLite keep a statement journal; in a file, it was created,
                // written and deleted (with its pages evicted from the OS cache) in every
                // job's transaction, a measurable share of the server's CPU in a fan-out
                // (figures: docs/BENCHMARKS.md, "Design notes behind the figures"). It
                // holds the pages one statement changes (~0.5 MB for 1,024 runs); the server
                // sorts nothing larger than a job's runs.
                .pragma("temp_store", "memory")
                // Rows travel from SQLite's thread to the task reading them through a bounded
                // channel; at sqlx's default of 50 a fan-out's 10,000 returned rows cost 200
                // hand-offs between the threads, each a wake-up.
                .row_buffer_size(ROW_CHANNEL);
            match cache_kib {
                // Negative: a size in KiB rather than in pages.
                Some(kib) => o.pragma("cache_size", format!("-{kib}")),
                None => o,
            }
        });
    Ok(Database::connect(options).await?)
}

/// A pending command row for tests: `ping`, no job, every time the epoch.
#[cfg(test)]
pub(crate) fn pending_command(tenant_id: &str, id: &str, agent_id: &str) -> command::Model {
    let now = chrono::DateTime::UNIX_EPOCH;
    command::Model {
        id: id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        agent_id: agent_id.to_owned(),
        command: "ping".into(),
        data: serde_json::json!({}),
        timeout_s: 60,
        state: state::PENDING.into(),
        created_at: now,
        expires_at: now,
        delivered_at: None,
        finished_at: None,
        success: None,
        result: None,
        error_code: None,
        error_message: None,
        job_id: None,
        started_at: None,
        exit_code: None,
        stdout_bytes: 0,
        stderr_bytes: 0,
        output_truncated: false,
        sealed_params: None,
    }
}

/// The time now, to the microsecond: what PostgreSQL's `timestamptz` keeps, so that a row the
/// store hands back equals the row read later, on either backend.
pub fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// What a queue's claim looks like (the claim rule's form 2, docs/ARCHITECTURE.md): the
/// table, its holder and lease columns, which rows are due, and in what order they are taken.
pub(crate) struct ClaimSpec<'a> {
    /// The table.
    pub table: &'a str,
    /// The column naming the holder.
    pub by: &'a str,
    /// The column holding the lease's end.
    pub until: &'a str,
    /// SQL over the row: which rows are due; each `{at}` is the claim's instant.
    pub due: &'a str,
    /// A node may take again rows it holds (a worker that restarts its pass).
    pub reclaim_own: bool,
    /// `ORDER BY` of the rows taken.
    pub order: &'a str,
}

impl<C: ConnectionTrait> Store<C> {
    /// Claims up to `limit` due rows as `spec` says for `node_id` until `until`, in one
    /// `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING id`: nodes asking at
    /// once take different rows, and rows of a node that died return once its lease ends.
    pub(crate) async fn claim_ids(
        &self,
        spec: &ClaimSpec<'_>,
        node_id: &str,
        until: DateTime<Utc>,
        at: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<String>> {
        let backend = self.db.get_database_backend();
        let postgres = backend == DbBackend::Postgres;
        let mut values: Vec<sea_orm::Value> = Vec::new();
        let mut mark = |value: sea_orm::Value| {
            values.push(value);
            if postgres {
                format!("${}", values.len())
            } else {
                "?".to_owned()
            }
        };
        let by = mark(node_id.into());
        let lease = mark(until.into());
        let mut due = String::new();
        for (i, part) in spec.due.split("{at}").enumerate() {
            if i > 0 {
                due.push_str(&mark(at.into()));
            }
            due.push_str(part);
        }
        let lapsed = mark(at.into());
        let own = if spec.reclaim_own {
            format!(" OR {} = {}", spec.by, mark(node_id.into()))
        } else {
            String::new()
        };
        let limit = mark((limit as i64).into());
        let lock = if postgres {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let (table, by_col, until_col, order) = (spec.table, spec.by, spec.until, spec.order);
        let text = format!(
            "UPDATE {table} SET {by_col} = {by}, {until_col} = {lease} \
             WHERE id IN (SELECT id FROM {table} WHERE ({due}) \
             AND ({until_col} IS NULL OR {until_col} < {lapsed}{own}) \
             ORDER BY {order} LIMIT {limit}{lock}) RETURNING id"
        );
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(backend, text, values))
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| row.try_get_by_index::<String>(0).ok())
            .collect())
    }
}

/// A job's target as a short stable text, for the subject of its events: `all`,
/// `tags:db+eu`, `agents:a,b`, or for a long list of agents `agents:<hash>` (the same list
/// always gives the same text).
pub fn canonical_target(target: &Value) -> String {
    if target.get("all").and_then(Value::as_bool) == Some(true) {
        return "all".into();
    }
    let mut parts = Vec::new();
    let mut tags = string_list(target.get("tags").unwrap_or(&Value::Null));
    if !tags.is_empty() {
        tags.sort();
        parts.push(format!("tags:{}", tags.join("+")));
    }
    let mut agents = string_list(target.get("agents").unwrap_or(&Value::Null));
    if !agents.is_empty() {
        agents.sort();
        let list = agents.join(",");
        if agents.len() <= 3 && list.len() <= 120 {
            parts.push(format!("agents:{list}"));
        } else {
            let digest = ring::digest::digest(&ring::digest::SHA256, list.as_bytes());
            let hex: String = digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            parts.push(format!("agents:{}x{hex}", agents.len()));
        }
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(";")
    }
}

/// A new time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Reads a JSON array of strings, tolerating anything else as empty.
pub fn string_list(value: &Value) -> Vec<String> {
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
