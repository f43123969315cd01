//! A fresh PostgreSQL database per run (`--database-url`), made and dropped with `psql`, the
//! client that comes with the server package, so the harness needs no driver of its own.
//!
//! `--database-url` names a database to connect to for `CREATE DATABASE`, as
//! `scripts/postgres.sh start DIR` prints it; the run's servers get a new database beside it,
//! so a run never measures what an earlier one left behind.

use std::process::Command;

use anyhow::{Context, bail};

/// A database of the run's own, dropped (with whatever still connects to it) when this is
/// dropped, unless it is kept.
pub struct Database {
    /// Its URL, for the servers' `--database-url`.
    pub url: String,
    admin: String,
    name: String,
    keep: bool,
}

impl Database {
    /// Makes a new empty database in the cluster of `cluster` (a URL of any database there).
    /// A kept one (`--keep`) stays after the run, for a look at what it stored.
    pub fn create(cluster: &str, keep: bool) -> anyhow::Result<Self> {
        let name = format!("outpost_bench_{}", uuid::Uuid::new_v4().simple());
        psql(cluster, &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            url: with_database(cluster, &name),
            admin: cluster.to_owned(),
            name,
            keep,
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("outpost-bench: kept database {}", self.url);
            return;
        }
        if let Err(err) = psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("outpost-bench: could not drop {}: {err:#}", self.name);
        }
    }
}

/// Runs one statement with `psql`; returns what it printed, trimmed.
fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args([
            "-q",
            "-X",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            sql,
        ])
        .output()
        .context("running psql (Debian: postgresql-client)")?;
    if !out.status.success() {
        bail!(
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `url` with its database (the path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|i| start + i))
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn a_database_name_replaces_the_urls_path() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5432/postgres", "x"),
            "postgres://u@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
    }
}
