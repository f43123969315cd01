//! The plumbing under the domain methods: where the data lives, opening the pool (SQLite's
//! pragmas, or a PostgreSQL URL), the writer's own connection, write transactions, WAL
//! checkpoints, the conversion to incremental vacuum, the checks `/readyz` and the host commands
//! make, PostgreSQL's `NOTIFY`, and the claim every queue's workers take rows with. Kept apart
//! from the subjects' files so that those read as what they store, not how the database is
//! reached.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sqlx::sqlite::{SqliteAutoVacuum, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, Statement, TransactionTrait,
};

use super::{Result, Store, StoreError, migrations};

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum DatabaseLocation {
    /// An SQLite file (created if missing).
    Sqlite(std::path::PathBuf),
    /// A database URL (`postgres://…` or `sqlite://…`).
    Url(String),
}

/// The WAL's size past which the writer checkpoints so that it starts over (see
/// `writer::Checkpoints`).
pub const WAL_LIMIT_BYTES: i64 = 64 << 20;
/// The size the WAL's file is cut back to when the WAL starts over (`journal_size_limit`):
/// SQLite reuses the file rather than shrinking it, so without a limit a burst of writes the
/// writer does not checkpoint between (10,000 agents registering at once leave a WAL several
/// times [`WAL_LIMIT_BYTES`]) stays on disk for good.
///
/// Twice [`WAL_LIMIT_BYTES`], not equal to it: the writer starts the WAL over once the
/// background has seen it past that limit, so under steady writes it holds up to a second's
/// more by then (95–110 MiB in the round-trip benchmark). Cut back to the limit at every
/// restart, the file then grew again by that much in every cycle, and both ends were on the
/// writer's path: the cut (`ftruncate`, which also discards the freed blocks on a file
/// system mounted with `discard`: up to 10 ms), and the regrowth, where each new block's
/// reservation waits while the background checkpoint's `fsync` of the same file allocates
/// blocks. With room for the overshoot, the file keeps its size and later cycles write over
/// it in place (figures: docs/BENCHMARKS.md, "The WAL's file keeps its size under load").
pub const WAL_FILE_LIMIT_BYTES: i64 = 2 * WAL_LIMIT_BYTES;
/// The largest SQLite database converted to `auto_vacuum = INCREMENTAL` at start (a `VACUUM`
/// of this much takes a second or two and as much memory).
pub const CONVERT_AT_START_BYTES: i64 = 64 << 20;
/// Rows a query may have in flight from SQLite's thread (see `connect`).
const ROW_CHANNEL: usize = 4096;
/// Connections in the pool for request handlers and background tasks.
const POOL_SIZE: u32 = 16;
/// How many times [`Store::open`] asks again when SQLite is busy at open (waiting 0.1 s, 0.2 s,
/// … between: 1.5 s in all).
const OPEN_BUSY_TRIES: u64 = 5;
/// The writer's page cache: a batch of 2,048 results touches a few thousand pages, which
/// SQLite's default cache (2 MiB) would spill to the WAL before the commit. Not more: a
/// commit by any other connection (a new command, a job's runs) empties it, which costs in
/// proportion to the pages it holds, and it counts in the server's memory.
const WRITER_CACHE_KIB: u32 = 8 * 1024;

impl Store {
    /// Opens (and creates, for SQLite) the database and brings its schema up to date.
    pub async fn open(location: &DatabaseLocation) -> Result<Self> {
        if let DatabaseLocation::Sqlite(path) = location {
            create_private_file(path)?;
        }
        // Processes opening one new SQLite file at the same moment (a server and a host
        // command beside it) can meet `BUSY` where SQLite does not wait (the switch to WAL,
        // a migration's transaction upgrading to a write): asked again a few times.
        let mut tries = 0u64;
        loop {
            let opened = async {
                let db = connect(location, POOL_SIZE, None).await?;
                migrations::migrate(&db).await?;
                Ok::<_, StoreError>(db)
            }
            .await;
            match opened {
                Ok(db) => return Ok(Self { db }),
                Err(err) if err.is_sqlite_busy() && tries < OPEN_BUSY_TRIES => {
                    tries += 1;
                    tracing::debug!(error = %err, tries, "the database is busy at open; asking again");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(err) => return Err(err),
            }
        }
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
    /// still there whenever only the writer wrote in between, as during a fan-out. A job's
    /// runs and single commands are inserted through it too (`Writer::store`).
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

    /// The PostgreSQL pool, for a `LISTEN` connection (`outpost_web::cluster`); `None` on SQLite.
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

    /// Cheap liveness query for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        Ok(self.db.ping().await?)
    }

    /// The same methods inside one write transaction; see [`Store::commit`] and
    /// [`begin_write`].
    pub async fn begin(&self) -> Result<Store<DatabaseTransaction>> {
        self.begin_write().await
    }
}

impl<C: TransactionTrait> Store<C> {
    /// The same methods inside one write transaction on this handle's connection (see
    /// [`begin_write`]); what they do is kept by `txn.db.commit()`, and dropped with the handle
    /// otherwise.
    pub(crate) async fn begin_write(&self) -> Result<Store<C::Transaction>> {
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

    /// Commits a transaction that changed API keys or users (it called `revoke_api_key`, say),
    /// then drops every kept copy of them (`credential_cache`): after the commit, so that no
    /// read that raced the change is served.
    pub async fn commit_credentials(self) -> Result<()> {
        self.db.commit().await?;
        crate::credential_cache::changed();
        Ok(())
    }

    /// Commits a transaction that changed an agent's row or an agent key (`set_agent_tags`,
    /// say), then drops every kept copy of agents' rows (`credential_cache`), for the same
    /// reason.
    pub async fn commit_agents(self) -> Result<()> {
        self.db.commit().await?;
        crate::credential_cache::agents_changed();
        Ok(())
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
                .pragma("journal_size_limit", WAL_FILE_LIMIT_BYTES.to_string())
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

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// What a queue's claim looks like (the claim rule's form 2, docs/ARCHITECTURE.md): the
/// table, its holder and lease columns, which rows are due, and in what order they are taken.
pub struct ClaimSpec<'a> {
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
    pub async fn claim_ids(
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
