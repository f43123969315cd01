//! A fresh store for the store's tests, on the backend the run asks for: an SQLite file, or,
//! with `OUTPOST_TEST_BACKEND=postgres`, a new database in the cluster at
//! `OUTPOST_TEST_POSTGRES` (`export OUTPOST_TEST_POSTGRES=$(scripts/postgres.sh start DIR)`),
//! dropped at the end. Databases are made with `psql`, the client that comes with the server.

#![allow(dead_code)]

use std::process::Command;

use outpost_store::{DatabaseLocation, Store};

/// Where a fresh store lives; dropping it removes the database.
pub struct Fresh {
    dir: tempfile::TempDir,
    /// Its URL (`sqlite://…` or `postgres://…`), for a second connection of a test's own.
    pub url: String,
    /// Its location, to open it again.
    pub location: DatabaseLocation,
    postgres: Option<(String, String)>,
}

impl Fresh {
    /// A new empty database.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        match std::env::var("OUTPOST_TEST_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("sqlite") => {
                let path = dir.path().join("outpost.db");
                Self {
                    url: format!("sqlite://{}", path.display()),
                    location: DatabaseLocation::Sqlite(path),
                    dir,
                    postgres: None,
                }
            }
            Ok("postgres") => {
                let cluster = std::env::var("OUTPOST_TEST_POSTGRES").expect(
                    "OUTPOST_TEST_BACKEND=postgres needs OUTPOST_TEST_POSTGRES \
                     (export OUTPOST_TEST_POSTGRES=$(scripts/postgres.sh start /tmp/outpost-pg))",
                );
                let name = format!("outpost_test_{}", uuid_like());
                psql(&cluster, &format!("CREATE DATABASE {name}"));
                let url = match cluster.rsplit_once('/') {
                    Some((base, _)) => format!("{base}/{name}"),
                    None => panic!("OUTPOST_TEST_POSTGRES={cluster}: not a URL with a database"),
                };
                Self {
                    location: DatabaseLocation::Url(url.clone()),
                    url,
                    dir,
                    postgres: Some((cluster, name)),
                }
            }
            Ok(other) => panic!("OUTPOST_TEST_BACKEND={other}: expected sqlite or postgres"),
        }
    }

    /// A scratch directory of the test's.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Whether this run is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if let Some((cluster, name)) = &self.postgres {
            let _ = Command::new("psql")
                .args(["-q", "-X", cluster, "-c"])
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .output();
        }
    }
}

/// A store on a fresh database with one tenant.
pub async fn fresh_store() -> (Fresh, Store, String) {
    let fresh = Fresh::new();
    let store = Store::open(&fresh.location).await.expect("open");
    let (tenant, _) = store.create_tenant("t", None).await.expect("tenant");
    (fresh, store, tenant)
}

/// Whether this run is on SQLite; otherwise says that `test`, which is about SQLite, is skipped.
pub fn on_sqlite(test: &str) -> bool {
    let sqlite = !matches!(
        std::env::var("OUTPOST_TEST_BACKEND").as_deref(),
        Ok("postgres")
    );
    if !sqlite {
        eprintln!("SKIPPED {test}: it is about SQLite");
    }
    sqlite
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args(["-q", "-X", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("running psql (Debian: postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{:x}_{}", nanos, std::process::id())
}
