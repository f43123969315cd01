//! Fixtures for end-to-end tests over the real binaries.
//!
//! [`Server`] and [`Agent`] start the built `outpost-server` and `outpost-agent` on loopback
//! (port 0), wait for readiness (a line on stdout, a status over the API), and kill their
//! process in `Drop`. Logs go to files in the test's temporary directory and are printed when
//! a test fails, so a failure explains itself.
//!
//! The binaries are built once per test process with `cargo build --workspace --all-targets`
//! (a no-op when they are up to date), so `cargo test -p outpost-e2e` never runs against stale binaries. Set
//! `OUTPOST_BIN_DIR` to use binaries from elsewhere instead.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub mod cluster;
pub mod library;
pub mod oidc;
pub mod postgres;
pub mod proxy;
pub mod smtp;
pub mod totp;
pub mod webdriver;
pub mod ws;

/// How long any readiness wait may take before the test fails. Generous: CI machines are
/// small and busy; a wait returns as soon as its condition holds.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

static BUILD: Once = Once::new();
static PROVIDER: Once = Once::new();

/// Directory holding the binaries under test: `OUTPOST_BIN_DIR`, or the cargo target
/// directory these tests were built into.
///
/// `cargo nextest run --workspace` (and `cargo test --workspace`) build the binaries, because
/// the server and agent crates have integration tests that need them. Run alone, this crate
/// could meet binaries older than the sources; that is refused with a clear message rather
/// than tested.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OUTPOST_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/debug/deps/<test> -> target/debug
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    BUILD.call_once(|| check_fresh(&dir));
    dir
}

fn check_fresh(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    for (bin, crates) in [
        // The server embeds deploy.sh (GET /deploy.sh).
        (
            "outpost-server",
            &[
                "server/src",
                "server/store/src",
                "server/core/src",
                "server/web/src",
                "server/web/templates",
                "protocol/src",
                "deploy.sh",
            ][..],
        ),
        ("outpost-agent", &["agent/src", "protocol/src"][..]),
        (
            "outpost-supervisor",
            &["supervisor/src", "protocol/src"][..],
        ),
        ("outpost", &["cli/src"][..]),
    ] {
        let built = std::fs::metadata(dir.join(bin))
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| panic!("{bin} is not built: run `cargo nextest run --workspace` (or `cargo build --workspace`)"));
        for source in crates {
            if newest(&root.join(source)).is_some_and(|t| t > built) {
                panic!(
                    "{bin} is older than {source}: run `cargo nextest run --workspace` (or `cargo build --workspace`) so the tests do not run stale binaries"
                );
            }
        }
    }
}

/// The latest modification time of a file, or of any file under a directory.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    if !dir.is_dir() {
        return dir.metadata().and_then(|m| m.modified()).ok();
    }
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        latest = latest.max(time);
    }
    latest
}

/// Installs the ring provider for rustls once per process (reqwest and the TLS tests need it).
pub fn init() {
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Polls `check` every 25 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A running `outpost-server`.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` (or https).
    pub url: String,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// Data directory (SQLite file, admin.key).
    pub data_dir: PathBuf,
    /// Owner API key.
    pub admin_key: String,
    /// Everything it printed on stdout.
    pub stdout: std::sync::Arc<Mutex<Vec<String>>>,
    log: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    ca_pem: Option<String>,
    fd_limit: Option<u64>,
    /// The `--database-url` it runs on, if not SQLite in its data directory.
    pub database_url: Option<String>,
    _database: Option<postgres::Database>,
    _tmp: Option<tempfile::TempDir>,
}

/// Options for [`Server::start_with`].
#[derive(Default, Clone)]
pub struct ServerOptions {
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub envs: Vec<(String, String)>,
    /// Use this data directory instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Listen on this address instead of port 0.
    pub listen: Option<std::net::SocketAddr>,
    /// PEM of a CA the test's API client must trust (for a server with `--tls-cert`).
    pub ca_pem: Option<String>,
    /// The server issues its own certificate (`--tls-auto`, added to the arguments): the test's
    /// API client trusts the CA it serves at `/agent/v1/ca`, fetched once it listens.
    pub tls_auto: bool,
    /// Run the server with this open-file limit (soft and hard, through util-linux's
    /// `prlimit`), so that a test can run it out of descriptors with a few hundred sockets.
    pub fd_limit: Option<u64>,
    /// `--database-url`: for several servers on one PostgreSQL database. Without it the
    /// server gets the backend [`postgres::backend`] names: an SQLite file in its data
    /// directory, or a fresh PostgreSQL database of its own.
    pub database_url: Option<String>,
}

impl Server {
    /// Starts a server on a fresh data directory.
    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    /// Starts a server with options.
    pub async fn start_with(options: ServerOptions) -> Self {
        init();
        let (tmp, data_dir) = match options.data_dir {
            Some(dir) => (None, dir),
            None => {
                let tmp = tempfile::tempdir().expect("tempdir");
                let dir = tmp.path().join("data");
                (Some(tmp), dir)
            }
        };
        let listen = options
            .listen
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let (database_url, database) = match options.database_url {
            Some(url) => (Some(url), None),
            None => match postgres::backend() {
                postgres::Backend::Sqlite => (None, None),
                postgres::Backend::Postgres(cluster) => {
                    let database = postgres::Database::create(&cluster);
                    (Some(database.url.clone()), Some(database))
                }
            },
        };
        let mut args = options.args;
        if options.tls_auto {
            args.push("--tls-auto".into());
        }
        let mut server = Self {
            child: None,
            url: String::new(),
            addr: "127.0.0.1:0".parse().expect("addr"),
            log: data_dir.with_extension("server.log"),
            data_dir,
            admin_key: String::new(),
            stdout: Default::default(),
            args,
            envs: options.envs,
            ca_pem: options.ca_pem,
            fd_limit: options.fd_limit,
            database_url,
            _database: database,
            _tmp: tmp,
        };
        server.spawn(&listen).await;
        server
    }

    async fn spawn(&mut self, listen: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let binary = bin_dir().join("outpost-server");
        let mut command = match self.fd_limit {
            Some(limit) => {
                let mut command = Command::new("prlimit");
                command
                    .arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(
                self.database_url
                    .iter()
                    .flat_map(|url| ["--database-url", url.as_str()]),
            )
            .args(&self.args)
            .env_remove("OUTPOST_ADMIN_KEY")
            .env_remove("OUTPOST_DATABASE_URL")
            .env("OUTPOST_LOG", "info,outpost_server=debug,outpost_store=debug,outpost_core=debug,outpost_web=debug")
            // Tests drive thousands of API requests a minute with one key, past the default
            // per-caller limit (1,200): off unless a test sets it (`--rate-limit N` or
            // this variable in its options, as tests/e2e/limits.rs does).
            .env("OUTPOST_RATE_LIMIT", "0")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning outpost-server");
        let stdout = child.stdout.take().expect("stdout");
        let lines = self.stdout.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("outpost-server listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
                lines.lock().expect("lines").push(line);
            }
        });
        self.child = Some(child);
        let url = tokio::task::spawn_blocking(move || rx.recv_timeout(READY_TIMEOUT))
            .await
            .expect("join");
        let url = url.unwrap_or_else(|_| panic!("server did not start:\n{}", self.logs()));
        self.addr = url
            .split("://")
            .nth(1)
            .and_then(|a| a.parse().ok())
            .expect("address in the listening line");
        self.url = url;
        // "listening" means ready: the database is migrated and the admin key written.
        if let Some((_, key)) = self.envs.iter().find(|(k, _)| k == "OUTPOST_ADMIN_KEY") {
            self.admin_key = key.clone();
        } else {
            let path = self.data_dir.join("admin.key");
            self.admin_key = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| {
                    panic!(
                        "{} missing when the server said it listens: {e}",
                        path.display()
                    )
                })
                .trim()
                .to_owned();
        }
        if self.ca_pem.is_none() && self.args.iter().any(|a| a == "--tls-auto") {
            self.ca_pem = Some(self.fetch_agent_ca().await);
        }
        let api = self.api();
        wait_for("readyz", READY_TIMEOUT, || {
            let api = api.clone();
            async move { (api.get("/readyz").await.0 == StatusCode::OK).then_some(()) }
        })
        .await;
    }

    /// Where its data is, for a test that opens the store itself.
    pub fn database(&self) -> outpost_store::DatabaseLocation {
        use outpost_store::DatabaseLocation;
        match &self.database_url {
            Some(url) => DatabaseLocation::Url(url.clone()),
            None => DatabaseLocation::Sqlite(self.data_dir.join("outpost.db")),
        }
    }

    /// `--database-url URL` when it is not on SQLite in its data directory: for the
    /// `outpost-server` tools (`release publish`, `admin-key rotate`) run beside it.
    pub fn database_args(&self) -> Vec<String> {
        self.database_url
            .iter()
            .flat_map(|url| ["--database-url".to_owned(), url.clone()])
            .collect()
    }

    /// Everything the database holds at rest, as bytes to search for what must not be there:
    /// the SQLite file and its WAL, or a `pg_dump` of the PostgreSQL database.
    pub fn at_rest(&self) -> Vec<(String, Vec<u8>)> {
        match &self.database_url {
            Some(url) => {
                let out = Command::new("pg_dump")
                    .args(["--data-only", url])
                    .output()
                    .expect("pg_dump (Debian: postgresql-client)");
                assert!(out.status.success(), "pg_dump: {out:?}");
                vec![("a pg_dump of the database".into(), out.stdout)]
            }
            None => ["outpost.db", "outpost.db-wal"]
                .iter()
                .map(|file| {
                    let path = self.data_dir.join(file);
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    (path.display().to_string(), bytes)
                })
                .collect(),
        }
    }

    /// `outpost-server user create` on this server's database: with `password` (on stdin,
    /// `--password-stdin`), or without, when it prints an invite token. Returns its exit
    /// status and what it printed.
    pub fn user_create(&self, email: &str, role: &str, password: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let mut command = Command::new(bin_dir().join("outpost-server"));
        command
            .args([
                "user",
                "create",
                "--email",
                email,
                "--role",
                role,
                "--data-dir",
            ])
            .arg(&self.data_dir)
            .args(self.database_args())
            .env_remove("OUTPOST_DATABASE_URL")
            .env_remove("OUTPOST_DATA_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if password.is_some() {
            command.arg("--password-stdin");
        }
        let mut child = command.spawn().expect("running outpost-server user create");
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(password) = password {
            stdin
                .write_all(format!("{password}\n").as_bytes())
                .expect("password on stdin");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("user create");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Creates a user with a password through `outpost-server user create`, signs them in,
    /// and returns an API client with their access token and their refresh token.
    pub async fn user(&self, email: &str, role: &str, password: &str) -> (Api, String) {
        let (ok, text) = self.user_create(email, role, Some(password));
        assert!(ok, "user create: {text}");
        self.login(email, password).await
    }

    /// Signs in; returns an API client with the access token, and the refresh token.
    pub async fn login(&self, email: &str, password: &str) -> (Api, String) {
        let (status, session) = self
            .api()
            .anonymous(
                "/api/auth/login",
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {email}: {session}");
        (
            self.api()
                .with_token(session["access_token"].as_str().expect("access_token")),
            session["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        )
    }

    /// `GET /agent/v1/ca` without checking the server's certificate (a `--tls-auto` server's
    /// is issued by that very CA), as `deploy.sh --ca-fingerprint` fetches it.
    pub async fn fetch_agent_ca(&self) -> String {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .expect("client");
        let url = format!("{}/agent/v1/ca", self.url);
        wait_for("GET /agent/v1/ca", READY_TIMEOUT, || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let response = client.get(&url).send().await.ok()?;
                if !response.status().is_success() {
                    return None;
                }
                response.text().await.ok()
            }
        })
        .await
    }

    /// The sum of a metric's series on `/metrics` whose labels contain `labels` (`""`: all of
    /// them), read with the owner key (a plain-HTTP server).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        self.metric_as(&self.admin_key, name, labels).await
    }

    /// [`Server::metric`], read with `owner_key`.
    pub async fn metric_as(&self, owner_key: &str, name: &str, labels: &str) -> f64 {
        let response = reqwest::Client::new()
            .get(format!("{}/metrics", self.url))
            .bearer_auth(owner_key)
            .send()
            .await
            .expect("/metrics");
        assert_eq!(response.status(), StatusCode::OK, "/metrics");
        let text = response.text().await.expect("/metrics body");
        text.lines()
            .filter(|line| {
                line.strip_prefix(name).is_some_and(|rest| {
                    (rest.starts_with(' ') || rest.starts_with('{'))
                        && rest.split(' ').next().is_some_and(|l| l.contains(labels))
                })
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The PEM of the CA its API client trusts.
    pub fn ca_pem_text(&self) -> String {
        self.ca_pem.clone().expect("a server with a CA")
    }

    /// The CA certificate's SHA-256 (lowercase hex) that the install line carries.
    pub fn agent_ca_fingerprint(&self) -> String {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let pem = self.ca_pem.as_deref().expect("a server with --tls-auto");
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("CA PEM");
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &der))
    }

    /// An API client with the owner key.
    pub fn api(&self) -> Api {
        Api::with_ca(&self.url, &self.admin_key, self.ca_pem.as_deref())
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id(), "TERM");
        child.wait().ok()
    }

    /// Freezes the process (SIGSTOP), as a hung host or hypervisor would: its sockets stay
    /// open and the kernel goes on accepting what peers send; [`Server::resume`] thaws it.
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "STOP");
        }
    }

    /// SIGCONT after [`Server::freeze`].
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "CONT");
        }
    }

    /// Starts the server again on the same address and data directory.
    pub async fn restart(&mut self) {
        self.kill9();
        let listen = self.addr.to_string();
        self.spawn(&listen).await;
    }

    /// The server's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- outpost-server log ----\n{}", tail(&self.logs(), 200));
        }
    }
}

/// A running `outpost-agent`.
pub struct Agent {
    child: Option<Child>,
    /// State directory (agent_id, journal).
    pub state_dir: PathBuf,
    log: PathBuf,
    server_url: String,
    key: String,
    envs: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

impl Agent {
    /// Starts an agent against `server_url` with `key`, in a fresh state directory.
    pub fn start(server_url: &str, key: &str) -> Self {
        Self::start_with(server_url, key, None, Vec::new())
    }

    /// Starts an agent with a given state directory and extra environment.
    pub fn start_with(
        server_url: &str,
        key: &str,
        state_dir: Option<PathBuf>,
        envs: Vec<(String, String)>,
    ) -> Self {
        let (tmp, state_dir) = match state_dir {
            Some(dir) => (None, dir),
            None => {
                let tmp = tempfile::tempdir().expect("tempdir");
                let dir = tmp.path().join("state");
                (Some(tmp), dir)
            }
        };
        let mut agent = Self {
            child: None,
            log: state_dir.with_extension("agent.log"),
            state_dir,
            server_url: server_url.to_owned(),
            key: key.to_owned(),
            envs,
            _tmp: tmp,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = Command::new(bin_dir().join("outpost-agent"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.state_dir)
            .env("OUTPOST_SERVER_URL", &self.server_url)
            .env("OUTPOST_API_KEY", &self.key)
            .env("OUTPOST_STATE_DIR", &self.state_dir)
            .env("OUTPOST_LOG", "info,outpost_agent=debug")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning outpost-agent");
        self.child = Some(child);
    }

    /// The agent's id, once it has written it.
    pub async fn agent_id(&self) -> String {
        let path = self.state_dir.join("agent_id");
        wait_for("agent_id file", READY_TIMEOUT, || {
            let path = path.clone();
            async move {
                std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| s.len() == 36)
            }
        })
        .await
    }

    /// Waits until the server lists this agent as connected; returns its id.
    pub async fn wait_online(&self, api: &Api) -> String {
        let id = self.agent_id().await;
        api.wait_online(&id).await;
        id
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id(), "TERM");
        child.wait().ok()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A line of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// Waits for the agent to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// Starts the agent again with the same state directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// The agent's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The journal's lines.
    pub fn journal(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state_dir.join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        // What the killed agent left running (scripts, their cgroups) goes with it.
        outpost_agent::contain::clean_up_after(&self.state_dir);
        if std::thread::panicking() {
            eprintln!("---- outpost-agent log ----\n{}", tail(&self.logs(), 100));
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A small REST client: every call returns the status and the JSON body (or `Null`).
#[derive(Clone)]
pub struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    /// A client for `base` with bearer `token`.
    pub fn new(base: &str, token: &str) -> Self {
        Self::with_ca(base, token, None)
    }

    /// A client that also trusts the CA in `ca_pem`.
    pub fn with_ca(base: &str, token: &str, ca_pem: Option<&str>) -> Self {
        init();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(120));
        if let Some(pem) = ca_pem {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes()).expect("CA PEM");
            builder = builder.add_root_certificate(ca);
        }
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client: builder.build().expect("client"),
        }
    }

    /// The bearer token it sends.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The same server with another token.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// Any request. An event stream (`text/event-stream`) is answered with its status and
    /// `Null`, and closed: its body may never end.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let stream = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if stream {
            return (status, Value::Null);
        }
        let bytes = response.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A POST without any `Authorization` header (sign-in, refresh, logout, invites).
    pub async fn anonymous(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// GET.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    /// POST with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    /// PATCH with a JSON body.
    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(body)).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// Creates an agent key; returns `(id, secret)`.
    pub async fn create_key(&self, body: Value) -> (String, String) {
        let (status, key) = self.post("/api/agents/keys", body).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        (
            key["id"].as_str().expect("id").to_owned(),
            key["secret"].as_str().expect("secret").to_owned(),
        )
    }

    /// Creates an agent key with default permissions.
    pub async fn agent_key(&self) -> (String, String) {
        self.create_key(json!({"name": "test"})).await
    }

    /// Sends a command to one agent and returns the answer.
    pub async fn command(&self, agent_id: &str, body: Value) -> (StatusCode, Value) {
        self.post(&format!("/api/agents/{agent_id}/command"), body)
            .await
    }

    /// Waits until the agent is connected.
    pub async fn wait_online(&self, agent_id: &str) {
        self.wait_status(agent_id, "online").await;
    }

    /// Waits until the agent has the given status.
    pub async fn wait_status(&self, agent_id: &str, status: &str) {
        let path = format!("/api/agents/{agent_id}");
        wait_for(&format!("agent {agent_id} {status}"), READY_TIMEOUT, || {
            let path = path.clone();
            async move {
                let (code, agent) = self.get(&path).await;
                (code == StatusCode::OK && agent["status"] == status).then_some(())
            }
        })
        .await;
    }

    /// Creates a job and returns `(status, job)`.
    pub async fn job(&self, body: Value, wait_s: Option<u64>) -> (StatusCode, Value) {
        let path = match wait_s {
            Some(s) => format!("/api/jobs?wait={s}"),
            None => "/api/jobs".to_owned(),
        };
        self.post(&path, body).await
    }

    /// Waits until a job is no longer running; returns it.
    pub async fn wait_job(&self, job_id: &str) -> Value {
        let path = format!("/api/jobs/{job_id}");
        wait_for(
            &format!("job {job_id} to finish"),
            Duration::from_secs(120),
            || {
                let path = path.clone();
                async move {
                    let (_, job) = self.get(&path).await;
                    (job["status"].is_string() && job["status"] != "running").then_some(job)
                }
            },
        )
        .await
    }

    /// A run's output bytes.
    pub async fn output(&self, job_id: &str, run_id: &str, query: &str) -> (StatusCode, Vec<u8>) {
        let response = self
            .client
            .get(format!(
                "{}/api/jobs/{job_id}/runs/{run_id}/output{query}",
                self.base
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.bytes().await.expect("body").to_vec())
    }

    /// Waits until a stored command reaches a final state; returns it.
    pub async fn wait_command_final(&self, command_id: &str) -> Value {
        let path = format!("/api/commands/{command_id}");
        wait_for(
            &format!("command {command_id} to finish"),
            READY_TIMEOUT,
            || {
                let path = path.clone();
                async move {
                    let (_, cmd) = self.get(&path).await;
                    let open = ["pending", "delivered"];
                    (cmd["status"].is_string()
                        && !open.contains(&cmd["status"].as_str().unwrap_or("")))
                    .then_some(cmd)
                }
            },
        )
        .await
    }
}

/// A private HOME for the `outpost` CLI, against one server: `outpost login` keeps its session
/// there, `OUTPOST_TOKEN` is unset, so each run uses that session (or none).
pub struct CliHome {
    url: String,
    key: String,
    /// The HOME (`config/outpost/config.toml` under it holds the session).
    pub home: tempfile::TempDir,
}

impl CliHome {
    /// A fresh HOME for `server`.
    pub fn new(server: &Server) -> Self {
        Self {
            url: server.url.clone(),
            key: server.admin_key.clone(),
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The CLI's config file (written by `outpost login`).
    pub fn config(&self) -> std::path::PathBuf {
        self.home.path().join("config/outpost/config.toml")
    }

    /// `outpost` with this HOME and the server's URL.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin_dir().join("outpost"));
        cmd.env_remove("OUTPOST_TOKEN")
            .env_remove("OUTPOST_CA_CERT")
            .env("OUTPOST_URL", &self.url)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.home.path().join("config"));
        cmd
    }

    /// Runs `outpost args` with `stdin` (a password) and returns (status, stdout, stderr).
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running outpost");
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            std::io::Write::write_all(&mut pipe, format!("{text}\n").as_bytes()).expect("stdin");
        }
        drop(pipe);
        let out = child.wait_with_output().expect("outpost");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `outpost args` with the server's owner API key in `OUTPOST_TOKEN`.
    pub fn run_with_key(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .command()
            .env("OUTPOST_TOKEN", &self.key)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("outpost");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The session `outpost login` saved: `access_token`, `refresh_token`, `email`, …
    pub fn session(&self) -> toml::Value {
        let text = std::fs::read_to_string(self.config())
            .unwrap_or_else(|e| panic!("{}: {e}", self.config().display()));
        toml::from_str(&text).expect("the CLI's config is TOML")
    }
}

/// A folder with a `script_manifest.json` and executable scripts, for agents to run.
pub struct Scripts {
    dir: tempfile::TempDir,
    entries: Vec<Value>,
}

impl Scripts {
    /// An empty manifest.
    pub fn new() -> Self {
        let scripts = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            entries: Vec::new(),
        };
        scripts.write_manifest();
        scripts
    }

    /// Adds an executable script and its manifest entry (`extra` is merged into the entry).
    pub fn add(&mut self, name: &str, body: &str, extra: Value) -> &mut Self {
        use std::os::unix::fs::PermissionsExt;
        let file = format!("{name}.sh");
        let path = self.dir.path().join(&file);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut entry = json!({"name": name, "path": file});
        if let (Some(entry), Some(extra)) = (entry.as_object_mut(), extra.as_object()) {
            entry.extend(extra.clone());
        }
        self.entries.push(entry);
        self.write_manifest();
        self
    }

    /// Replaces the manifest file with raw text.
    pub fn write_raw(&self, text: &str) {
        std::fs::write(self.manifest(), text).expect("write manifest");
    }

    fn write_manifest(&self) {
        self.write_raw(&json!({"scripts": self.entries}).to_string());
    }

    /// The manifest's path.
    pub fn manifest(&self) -> PathBuf {
        self.dir.path().join("script_manifest.json")
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Environment for an agent using this manifest.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "OUTPOST_MANIFEST".into(),
            self.manifest().display().to_string(),
        )]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

/// A job body that runs `script` with `params` on one agent.
pub fn run_job(agent_id: &str, script: &str, params: Value) -> Value {
    json!({"command": "run", "data": {"script": script, "params": params}, "target": {"agents": [agent_id]}})
}

/// A one-run job's `(job_id, run_id, run)`.
pub fn only_run(job: &Value) -> (String, String, Value) {
    let run = job["runs"][0].clone();
    (
        job["job_id"].as_str().expect("job_id").to_owned(),
        run["run_id"].as_str().expect("run_id").to_owned(),
        run,
    )
}

/// Processes whose environment holds `OUTPOST_RUN_ID=<run_id>`: what is left of a run.
pub fn processes_of_run(run_id: &str) -> Vec<u32> {
    let needle = format!("OUTPOST_RUN_ID={run_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .filter(|pid| {
            // Zombies waiting for their parent are gone in all but name.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        })
        .collect()
}
