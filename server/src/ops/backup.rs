//! `outpost-server backup --to FILE` and `outpost-server restore --from FILE` (CONTRACT.md §14).
//!
//! `backup` copies a SQLite database while its server runs (`store::backup::backup_sqlite`:
//! `VACUUM INTO` on a connection of its own, one consistent state) and checks the copy.
//! `restore` puts such a copy in place of a data directory's database: it checks the file
//! first (SQLite's integrity check, an Outpost schema not newer than this binary's) and
//! refuses while the database there is in use (a server running on it), then moves the old
//! database and its `-wal`/`-shm` aside rather than deleting them. PostgreSQL has its own
//! tools (`pg_dump`, `pg_restore`): both commands say so and point to OPERATIONS.md.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use outpost_store::backup;

const POSTGRES: &str = "this server's database is PostgreSQL: back it up with pg_dump and restore \
     it with pg_restore (docs/OPERATIONS.md, \"Backups and restore\", has the commands and a \
     restore drill)";

/// `outpost-server backup`.
#[derive(Debug, Args)]
#[command(
    about = "Copy the server's SQLite database, consistently, while the server runs",
    after_help = "\
Example:
  outpost-server backup --data-dir /var/lib/outpost --to /backups/outpost-$(date +%F).db
Keep master.key and release.key (in the data directory) with the copy.
For PostgreSQL use pg_dump (docs/OPERATIONS.md, \"Backups and restore\")."
)]
pub struct BackupCli {
    /// The file to write; it must not exist.
    #[arg(long)]
    to: PathBuf,
    /// The server's data directory (its SQLite database).
    #[arg(long, env = "OUTPOST_DATA_DIR", default_value = "./outpost-data")]
    data_dir: PathBuf,
    /// The server's database URL, if it has one (PostgreSQL is refused: use pg_dump).
    #[arg(long, env = "OUTPOST_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

/// `outpost-server restore`.
#[derive(Debug, Args)]
#[command(
    about = "Put a backup in place of a data directory's database (the server stopped)",
    after_help = "\
Example:
  systemctl stop outpost-server
  outpost-server restore --from /backups/outpost-2026-11-27.db --data-dir /var/lib/outpost
  systemctl start outpost-server
The database it replaces is kept beside it as outpost.db.before-restore-<time>.
Restore master.key with it (the one the backup's secrets are sealed with)."
)]
pub struct RestoreCli {
    /// The backup to restore (from `outpost-server backup`).
    #[arg(long)]
    from: PathBuf,
    /// The data directory to restore into (created if missing).
    #[arg(long, env = "OUTPOST_DATA_DIR", default_value = "./outpost-data")]
    data_dir: PathBuf,
    /// The server's database URL, if it has one (PostgreSQL is refused: use pg_restore).
    #[arg(long, env = "OUTPOST_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

/// The SQLite file a data directory and database URL name; an error for PostgreSQL.
fn sqlite_path(data_dir: &Path, url: Option<&str>) -> anyhow::Result<PathBuf> {
    match url {
        None => Ok(data_dir.join("outpost.db")),
        Some(url) if url.starts_with("postgres") => anyhow::bail!("{POSTGRES}"),
        Some(url) => {
            let rest = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .with_context(|| {
                    format!(
                        "--database-url {}: expected postgres://… or sqlite://…",
                        crate::config::masked_url(url)
                    )
                })?;
            Ok(PathBuf::from(rest.split('?').next().unwrap_or(rest)))
        }
    }
}

/// Runs `outpost-server backup`; `args` starts with `backup`.
pub async fn backup(cli: BackupCli) -> anyhow::Result<()> {
    let db = sqlite_path(&cli.data_dir, cli.database_url.as_deref())?;
    anyhow::ensure!(
        db.is_file(),
        "{} does not exist: give the server's --data-dir (or OUTPOST_DATA_DIR)",
        db.display()
    );
    let started = std::time::Instant::now();
    let bytes = backup::backup_sqlite(&db, &cli.to)
        .await
        .with_context(|| format!("backing up {}", db.display()))?;
    let info = backup::inspect(&cli.to)
        .await
        .with_context(|| format!("checking the copy {}", cli.to.display()))?;
    println!(
        "Backed up {} to {} ({bytes} bytes, {:.1} s): schema version {}, {} tenants, {} jobs; \
         integrity ok.",
        db.display(),
        cli.to.display(),
        started.elapsed().as_secs_f64(),
        info.schema_version,
        info.tenants,
        info.jobs
    );
    println!(
        "Keep {} with it (it opens the sealed secrets).",
        cli.data_dir.join("master.key").display()
    );
    Ok(())
}

/// Runs `outpost-server restore`; `args` starts with `restore`.
pub async fn restore(cli: RestoreCli) -> anyhow::Result<()> {
    let db = sqlite_path(&cli.data_dir, cli.database_url.as_deref())?;
    let info = backup::inspect(&cli.from)
        .await
        .with_context(|| format!("checking {}", cli.from.display()))?;
    let dir = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    outpost_store::private_files::create_private_dir(dir)?;
    let mut kept = None;
    if db.exists() {
        if backup::in_use(&db)
            .await
            .with_context(|| format!("checking whether {} is in use", db.display()))?
        {
            anyhow::bail!(
                "{} is in use (a server is running on it): stop the server, then restore; \
                 nothing was changed",
                db.display()
            );
        }
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        let aside = PathBuf::from(format!("{}.before-restore-{stamp}", db.display()));
        // The database and its WAL move together, so the old one stays whole.
        for suffix in ["-wal", "-shm", ""] {
            let from = PathBuf::from(format!("{}{suffix}", db.display()));
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!("moving {} aside to {}", from.display(), to.display())
                    });
                }
            }
        }
        kept = Some(aside);
    }
    let partial = PathBuf::from(format!("{}.restoring", db.display()));
    let _ = std::fs::remove_file(&partial);
    copy_private(&cli.from, &partial)
        .with_context(|| format!("copying {} to {}", cli.from.display(), partial.display()))?;
    std::fs::rename(&partial, &db)
        .with_context(|| format!("moving {} to {}", partial.display(), db.display()))?;
    println!(
        "Restored {} into {}: schema version {} (this server: {}), {} tenants, {} jobs.",
        cli.from.display(),
        db.display(),
        info.schema_version,
        info.known_version,
        info.tenants,
        info.jobs
    );
    if let Some(aside) = kept {
        println!("The database it replaced is {}.", aside.display());
    }
    if !dir.join("master.key").exists() {
        println!(
            "{} is missing: put back the master key the backup's secrets are sealed with (or \
             set OUTPOST_MASTER_KEY) before starting the server.",
            dir.join("master.key").display()
        );
    }
    Ok(())
}

/// Copies `from` to a new file `to` (0600), synced to disk.
fn copy_private(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = std::fs::File::open(from)?;
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    std::io::copy(&mut source, &mut target)?;
    target.sync_all()
}
