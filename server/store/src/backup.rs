//! SQLite backups (CONTRACT.md §14): a consistent copy of a live database, whether a database file
//! is in use, and whether a file is an Outpost database this server can open.
//!
//! The copy is `VACUUM INTO` on a connection of its own: a read transaction, so it sees one
//! committed state (WAL mode: the server's writer goes on meanwhile, and nothing committed
//! after the copy began is in it), and it writes a compact file in rollback-journal mode that
//! the server opens as it is (it turns WAL on). The connection asks for `auto_vacuum =
//! INCREMENTAL`, which `VACUUM INTO` gives the copy: restoring a backup of an older database
//! converts it (docs/OPERATIONS.md, "Retention").

use std::path::Path;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteAutoVacuum, SqliteConnectOptions, SqliteLockingMode};
use sea_orm::sqlx::{ConnectOptions as _, Connection as _, Row as _, SqliteConnection};

use super::{Result, StoreError};

/// What a database file holds, as far as a restore cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseInfo {
    /// Its schema version (`outpost_schema`).
    pub schema_version: i64,
    /// The newest schema version this server knows.
    pub known_version: i64,
    /// Tenants.
    pub tenants: i64,
    /// Jobs.
    pub jobs: i64,
}

fn failed(what: &str, path: &Path, err: impl std::fmt::Display) -> StoreError {
    StoreError::Config(format!("{what} {}: {err}", path.display()))
}

/// A connection on an existing SQLite file.
async fn open(path: &Path, options: SqliteConnectOptions) -> Result<SqliteConnection> {
    if !path.is_file() {
        return Err(StoreError::Config(format!(
            "{} does not exist or is not a file",
            path.display()
        )));
    }
    options
        .filename(path)
        .create_if_missing(false)
        .connect()
        .await
        .map_err(|e| failed("cannot open", path, e))
}

/// Copies the database at `db` into `to`, a file that must not exist (created 0600), as one
/// consistent state while the server writes. Returns the copy's size in bytes.
pub async fn backup_sqlite(db: &Path, to: &Path) -> Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    // Made here, empty (which `VACUUM INTO` accepts), so that the copy is private from its
    // first byte and an existing file is refused, never replaced.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => StoreError::Config(format!(
                "{} exists already: give a new file (a backup never replaces one)",
                to.display()
            )),
            _ => failed("cannot create", to, e),
        })?;
    let copied = async {
        let mut conn = open(
            db,
            SqliteConnectOptions::new()
                .busy_timeout(Duration::from_secs(10))
                .auto_vacuum(SqliteAutoVacuum::Incremental),
        )
        .await?;
        sea_orm::sqlx::query("VACUUM INTO ?")
            .bind(to.to_string_lossy().into_owned())
            .execute(&mut conn)
            .await
            .map_err(|e| failed("cannot copy", db, e))?;
        conn.close().await.map_err(|e| failed("closing", db, e))?;
        std::fs::metadata(to)
            .map(|m| m.len())
            .map_err(|e| failed("cannot read", to, e))
    }
    .await;
    if copied.is_err() {
        let _ = std::fs::remove_file(to);
    }
    copied
}

/// Whether another connection (a running server) has the database at `db` open: taking
/// SQLite's exclusive lock fails then. In WAL mode every open connection holds a shared lock
/// (on the `-shm` file) for as long as it is open, idle or not, so a running server is seen
/// even when it does nothing.
pub async fn in_use(db: &Path) -> Result<bool> {
    let mut conn = open(
        db,
        SqliteConnectOptions::new()
            .busy_timeout(Duration::ZERO)
            .locking_mode(SqliteLockingMode::Exclusive),
    )
    .await?;
    let taken = match sea_orm::sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut conn)
        .await
    {
        Ok(_) => {
            sea_orm::sqlx::query("COMMIT")
                .execute(&mut conn)
                .await
                .map_err(|e| failed("cannot unlock", db, e))?;
            false
        }
        Err(err) if err.to_string().contains("locked") || err.to_string().contains("busy") => true,
        Err(err) => return Err(failed("cannot lock", db, err)),
    };
    let _ = conn.close().await;
    Ok(taken)
}

/// Checks that `path` is a sound Outpost database this server can open: SQLite's
/// `integrity_check` says ok, it has a schema version, not newer than this server's.
pub async fn inspect(path: &Path) -> Result<DatabaseInfo> {
    let mut conn = open(
        path,
        SqliteConnectOptions::new()
            .read_only(true)
            .busy_timeout(Duration::from_secs(10)),
    )
    .await?;
    let not_outpost = |e: sea_orm::sqlx::Error| {
        StoreError::Config(format!(
            "{} is not an Outpost database ({e})",
            path.display()
        ))
    };
    let problems: Vec<String> = sea_orm::sqlx::query("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await
        .map_err(not_outpost)?
        .iter()
        .filter_map(|row| row.try_get::<String, _>(0).ok())
        .collect();
    if problems != ["ok"] {
        let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
        return Err(StoreError::Config(format!(
            "{} fails SQLite's integrity check: {}",
            path.display(),
            shown.join("; ")
        )));
    }
    let count = |sql: &'static str| sea_orm::sqlx::query(sql);
    let schema_version: i64 =
        count("SELECT CAST(COALESCE(MAX(version), 0) AS INTEGER) FROM outpost_schema")
            .fetch_one(&mut conn)
            .await
            .map_err(not_outpost)?
            .try_get(0)
            .map_err(not_outpost)?;
    let known_version = i64::try_from(super::migrations::known_version()).unwrap_or(i64::MAX);
    if schema_version < 1 {
        return Err(StoreError::Config(format!(
            "{} is not an Outpost database (no schema version)",
            path.display()
        )));
    }
    if schema_version > known_version {
        return Err(StoreError::Config(format!(
            "{} is at schema version {schema_version}, newer than this server knows \
             ({known_version}): restore it with the newer outpost-server",
            path.display()
        )));
    }
    let tenants: i64 = count("SELECT COUNT(*) FROM tenants")
        .fetch_one(&mut conn)
        .await
        .map_err(not_outpost)?
        .try_get(0)
        .map_err(not_outpost)?;
    let jobs: i64 = count("SELECT COUNT(*) FROM jobs")
        .fetch_one(&mut conn)
        .await
        .map_err(not_outpost)?
        .try_get(0)
        .map_err(not_outpost)?;
    let _ = conn.close().await;
    Ok(DatabaseInfo {
        schema_version,
        known_version,
        tenants,
        jobs,
    })
}
