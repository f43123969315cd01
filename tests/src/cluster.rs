//! `scripts/cluster.sh` as a fixture: a PostgreSQL, several `outpost-server` nodes sharing it
//! and HAProxy in front of them, all processes on this machine (CONTRACT.md §13). Stopped when
//! dropped; the nodes' and the balancer's logs are printed when a test fails.
//!
//! Tests that need it skip, saying so, where HAProxy or PostgreSQL's server programs are not
//! installed (Debian: `haproxy`, `postgresql`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Api, bin_dir};

/// A running cluster.
pub struct Cluster {
    /// The balancer's URL: what agents and API clients use.
    pub url: String,
    /// Each node's own URL, in order (`node1`, `node2`, …).
    pub node_urls: Vec<String>,
    /// The owner API key, the same on every node.
    pub admin_key: String,
    /// The database the nodes share.
    pub database_url: String,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts `nodes` nodes behind HAProxy, or returns `None` (after printing why `test` is
    /// skipped) when HAProxy or PostgreSQL is not installed. Panics when the script fails.
    pub fn start(test: &str, nodes: usize) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        crate::init();
        let missing: Vec<&str> = [
            (on_path("haproxy"), "haproxy"),
            (has_initdb(), "PostgreSQL's server programs (postgresql)"),
            (on_path("psql"), "psql (postgresql-client)"),
        ]
        .iter()
        .filter(|(found, _)| !found)
        .map(|(_, what)| *what)
        .collect();
        if !missing.is_empty() {
            eprintln!(
                "SKIPPED {test}: needs haproxy/PostgreSQL; missing: {} (Debian: apt-get install haproxy postgresql)",
                missing.join(", ")
            );
            return None;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        // As root, PostgreSQL runs as `postgres`, which must reach its directory in there.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let dir = tmp.path().join("cluster");
        let out = script()
            .arg("start")
            .arg(&dir)
            .arg("--nodes")
            .arg(nodes.to_string())
            .arg("--bin-dir")
            .arg(bin_dir())
            .env("OUTPOST_LOG", "info,outpost_server=debug,outpost_store=debug,outpost_core=debug,outpost_web=debug")
            .output()
            .expect("running scripts/cluster.sh");
        assert!(
            out.status.success(),
            "scripts/cluster.sh start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("env")).expect("DIR/env");
        let var = |name: &str| -> String {
            env.lines()
                .find_map(|line| line.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("{name} missing from DIR/env:\n{env}"))
                .to_owned()
        };
        Some(Self {
            url: var("OUTPOST_URL"),
            node_urls: var("OUTPOST_NODE_URLS")
                .split(',')
                .map(str::to_owned)
                .collect(),
            admin_key: var("OUTPOST_ADMIN_KEY"),
            database_url: var("OUTPOST_DATABASE_URL"),
            dir,
            _tmp: tmp,
        })
    }

    /// An API client on the balancer, with the owner key.
    pub fn api(&self) -> Api {
        Api::new(&self.url, &self.admin_key)
    }

    /// An API client on node `i` itself (from 0), with the owner key.
    pub fn node_api(&self, i: usize) -> Api {
        Api::new(&self.node_urls[i], &self.admin_key)
    }

    /// The end of every node's log and of the balancer's.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<(String, PathBuf)> = (1..=self.node_urls.len())
            .map(|i| {
                (
                    format!("node{i}"),
                    self.dir.join(format!("node{i}/server.log")),
                )
            })
            .collect();
        files.push(("haproxy".into(), self.dir.join("haproxy.log")));
        for (name, file) in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            out.push_str(&format!(
                "---- {name} ({}) ----\n{}\n",
                file.display(),
                crate::tail(&text, 60)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = script().arg("stop").arg(&self.dir).output();
    }
}

fn script() -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    Command::new(root.join("scripts/cluster.sh"))
}

/// Whether `program` is on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Whether PostgreSQL's `initdb` is where scripts/postgres.sh looks for it.
fn has_initdb() -> bool {
    if let Some(bin) = std::env::var_os("PG_BIN") {
        return Path::new(&bin).join("initdb").is_file();
    }
    std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
        versions
            .flatten()
            .any(|v| v.path().join("bin/initdb").is_file())
    })
}
