//! The owner API key: made on the first start, replaced by a changed `OUTPOST_ADMIN_KEY`, and
//! rotated with `outpost-server admin-key rotate`.
//!
//! A generated key is written to `<data-dir>/admin.key` (0600) and printed only when stdout is
//! a terminal: a server's stdout usually ends up in journald or `docker logs`, which keep it
//! and show it to whoever may read the logs. Otherwise the server says where the key is.
//!
//! Replacing the owner key revokes the earlier ones the server made (the row stays, marked
//! `revoked_at`, so that a revoked key given again in `OUTPOST_ADMIN_KEY` is recognised and
//! refused rather than registered anew). `rotate` works on the database directly, so it runs
//! whether the server is stopped or running: every request checks its key in the database,
//! and the old key stops working at once.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::config::Config;
use outpost_store::{Bootstrapped, DatabaseLocation, Store};

/// The file the owner key is written to, in the data directory.
pub const FILE: &str = "admin.key";

/// Creates the default tenant and owner key on first start, or applies a changed
/// `OUTPOST_ADMIN_KEY`.
pub async fn bootstrap(store: &Store, config: &Config) -> anyhow::Result<()> {
    if let Some(key) = &config.admin_key {
        outpost_store::credentials::validate_admin_key(key).map_err(anyhow::Error::msg)?;
    }
    let path = config.data_dir.join(FILE);
    match store.bootstrap(config.admin_key.as_deref()).await? {
        Bootstrapped::Created(Some(secret)) => {
            outpost_store::private_files::create_private_dir(&config.data_dir)?;
            write_key(&path, &secret)?;
            show("Created the owner API key", &path, &secret);
        }
        Bootstrapped::Created(None) | Bootstrapped::Unchanged => {}
        Bootstrapped::Replaced { revoked } => {
            tracing::info!(
                revoked,
                "OUTPOST_ADMIN_KEY is a new owner key: registered it and revoked the earlier owner key(s)"
            );
            // admin.key held an earlier key, revoked now: a file with a dead key in it only
            // misleads.
            let stale = std::fs::read_to_string(&path)
                .is_ok_and(|held| Some(held.trim()) != config.admin_key.as_deref());
            if stale {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
                tracing::info!(path = %path.display(), "removed the file holding the revoked owner key");
            }
        }
        Bootstrapped::Revoked => {
            tracing::warn!(
                "OUTPOST_ADMIN_KEY holds an owner key that was revoked (by `outpost-server admin-key rotate` or a later OUTPOST_ADMIN_KEY); it is not accepted: unset it, or set a new key"
            );
        }
    }
    Ok(())
}

/// `outpost-server admin-key …`.
#[derive(Debug, Args)]
#[command(about = "Manage the owner API key of the server's default tenant")]
pub struct AdminKeyCli {
    #[command(subcommand)]
    command: AdminKeyCommand,
}

#[derive(Debug, Subcommand)]
enum AdminKeyCommand {
    /// Create a new owner API key, write it to <data-dir>/admin.key (0600) and revoke the
    /// previous owner key(s) the server made (first start, OUTPOST_ADMIN_KEY, earlier
    /// rotations). Works while the server runs: the old key stops working at once.
    Rotate(RotateArgs),
}

#[derive(Debug, Args)]
struct RotateArgs {
    /// The server's data directory (admin.key is written there).
    #[arg(long, env = "OUTPOST_DATA_DIR", default_value = "./outpost-data")]
    data_dir: PathBuf,
    /// Database URL; default: SQLite in --data-dir.
    #[arg(long, env = "OUTPOST_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

/// Runs an `admin-key` subcommand.
pub async fn run(cli: AdminKeyCli) -> anyhow::Result<()> {
    match cli.command {
        AdminKeyCommand::Rotate(args) => rotate(args).await,
    }
}

async fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    let location = match &args.database_url {
        Some(url) => DatabaseLocation::Url(url.clone()),
        None => {
            let db = args.data_dir.join("outpost.db");
            anyhow::ensure!(
                db.exists(),
                "{} does not exist: give the server's --data-dir (or OUTPOST_DATA_DIR)",
                db.display()
            );
            DatabaseLocation::Sqlite(db)
        }
    };
    outpost_store::private_files::create_private_dir(&args.data_dir)?;
    let store = Store::open(&location)
        .await
        .context("opening the server's database")?;
    let path = args.data_dir.join(FILE);
    let (secret, revoked) = store.rotate_owner_key().await?;
    // Committed first, then written: a key in the file is always a valid one. Should the
    // write fail, the error says what to do (the old key is revoked already).
    write_key(&path, &secret).with_context(|| {
        format!(
            "the new owner key is registered and the old one revoked, but writing {} failed: run `outpost-server admin-key rotate` again",
            path.display()
        )
    })?;
    show("Created a new owner API key", &path, &secret);
    // A running server may hold a copy of the old key's row for up to a second
    // (`outpost_store::credential_cache`): nodes on PostgreSQL are told to forget it, and the
    // command returns once any copy a node was not told about has aged out, so that "revoked"
    // holds everywhere when it says so.
    if store.is_postgres()
        && let Err(err) = outpost_web::cluster::announce_credentials_changed(&store).await
    {
        tracing::warn!(error = %err, "could not tell running nodes; their copies age out instead");
    }
    tokio::time::sleep(outpost_store::credential_cache::FRESH).await;
    println!("Revoked {revoked} earlier owner key(s); they stop working at once.");
    Ok(())
}

/// Says where a new key is, and shows it only on a terminal.
fn show(what: &str, path: &Path, secret: &str) {
    if std::io::stdout().is_terminal() {
        println!("{what} (shown once, also saved to {}):", path.display());
        println!("  {secret}");
    } else {
        // Printed on stdout, not logged; but stdout is a log here too (journald, docker logs).
        println!(
            "{what}; it is in {} (mode 0600), not printed because stdout is not a terminal",
            path.display()
        );
    }
}

/// Writes `secret` to `path` (mode 0600) through a temporary file renamed over it, so the
/// file holds the old key or the new one, never a mix or nothing.
fn write_key(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("key.new");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(format!("{secret}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}
