//! PostgreSQL for the end-to-end tests: which backend a test run uses, a fresh database per
//! server, and a cluster of a test's own for tests that stop and start PostgreSQL itself.
//!
//! The tests run on SQLite unless `OUTPOST_TEST_BACKEND=postgres`; then every [`crate::Server`]
//! gets a database of its own in the cluster `OUTPOST_TEST_POSTGRES` points at (a URL of a
//! database to connect to for `CREATE DATABASE`, as `scripts/postgres.sh start DIR` prints).
//! Tests that are about PostgreSQL itself (several nodes on one database, PostgreSQL going
//! away) need only `OUTPOST_TEST_POSTGRES`, or start a [`Cluster`] of their own; without one
//! they skip, saying how to enable them (README.md, "Development").
//!
//! Databases are made and dropped with `psql`, the client that comes with the server package,
//! so this crate needs no PostgreSQL driver of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The backend a test run puts its servers on.
pub enum Backend {
    /// An SQLite file in each server's data directory (the default).
    Sqlite,
    /// A fresh database per server in the cluster at this URL.
    Postgres(String),
}

/// What `OUTPOST_TEST_BACKEND` (and `OUTPOST_TEST_POSTGRES`) ask for. Panics on a backend it
/// does not know, or `postgres` without a cluster: a run that asked for PostgreSQL must not
/// pass on SQLite.
pub fn backend() -> Backend {
    match std::env::var("OUTPOST_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
        Ok("postgres") => Backend::Postgres(cluster_url().expect(
            "OUTPOST_TEST_BACKEND=postgres needs OUTPOST_TEST_POSTGRES \
             (export OUTPOST_TEST_POSTGRES=$(scripts/postgres.sh start /tmp/outpost-pg))",
        )),
        Ok(other) => panic!("OUTPOST_TEST_BACKEND={other}: expected sqlite or postgres"),
    }
}

/// `OUTPOST_TEST_POSTGRES`, if set.
pub fn cluster_url() -> Option<String> {
    std::env::var("OUTPOST_TEST_POSTGRES")
        .ok()
        .filter(|url| !url.is_empty())
}

/// The cluster for a test that needs PostgreSQL whatever the backend; `None` (after printing
/// why the test is skipped) when there is none.
pub fn required(test: &str) -> Option<String> {
    let url = cluster_url();
    if url.is_none() {
        eprintln!(
            "SKIPPED {test}: needs PostgreSQL; run it with \
             OUTPOST_TEST_POSTGRES=$(scripts/postgres.sh start /tmp/outpost-pg)"
        );
    }
    url
}

/// A database of its own, dropped (with whatever still connects to it) when this is dropped.
pub struct Database {
    /// Its URL, for `--database-url`.
    pub url: String,
    admin: String,
    name: String,
}

impl Database {
    /// Makes a new empty database in the cluster at `cluster` (a URL of any database there).
    pub fn create(cluster: &str) -> Self {
        let name = format!("outpost_test_{}", uuid::Uuid::new_v4().simple());
        psql(cluster, &format!("CREATE DATABASE {name}"));
        Self {
            url: with_database(cluster, &name),
            admin: cluster.to_owned(),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-q", "-X", "-v", "ON_ERROR_STOP=1", &self.admin, "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// Runs one statement with `psql`, panicking with its error.
pub fn psql(url: &str, sql: &str) -> String {
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
        .expect("running psql (Debian: postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
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

/// A PostgreSQL cluster of a test's own (`scripts/postgres.sh`), for tests that stop and
/// start it. Stopped when dropped.
pub struct Cluster {
    dir: PathBuf,
    /// URL of its `postgres` database.
    pub url: String,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts one, or returns `None` (after saying why the test is skipped) when PostgreSQL's
    /// server programs are not installed.
    pub fn start(test: &str) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        // As root the cluster runs as `postgres`, which must reach its directory.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let dir = tmp.path().join("pg");
        let out = script("start", &dir);
        if !out.status.success() {
            eprintln!(
                "SKIPPED {test}: needs PostgreSQL's server programs (Debian: postgresql): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Some(Self {
            dir,
            url,
            _tmp: tmp,
        })
    }

    /// Stops it (fast shutdown: connections are closed).
    pub fn stop(&self) {
        let out = script("stop", &self.dir);
        assert!(out.status.success(), "stopping PostgreSQL: {out:?}");
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        let out = script("start", &self.dir);
        assert!(out.status.success(), "starting PostgreSQL again: {out:?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = script("stop", &self.dir);
    }
}

fn script(action: &str, dir: &Path) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    Command::new(root.join("scripts/postgres.sh"))
        .arg(action)
        .arg(dir)
        .output()
        .expect("running scripts/postgres.sh")
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
