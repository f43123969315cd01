//! The real `outpost-server` under test: started on a temporary data directory, watched through
//! `/proc/<pid>`, driven over REST, restarted on the same directory and port. With
//! `--database-url`, one or several of them ([`Nodes`]) share a PostgreSQL database, as the
//! nodes of one cluster do (CONTRACT.md §13).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// A REST client for the server (cheap to clone).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    admin: String,
}

impl Client {
    /// POSTs JSON and returns the JSON answer; any non-2xx is an error.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        Ok(self.post_timed(path, body).await?.0)
    }

    /// [`post`](Self::post), also returning how long the request took until its answer's last
    /// byte arrived: the harness's own parsing of a fan-out's answer (3 MB of JSON for 10,000
    /// runs, 20-70 ms) is not the server's time.
    pub async fn post_timed(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(Value, std::time::Duration)> {
        let started = std::time::Instant::now();
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        let text = response.text().await?;
        let took = started.elapsed();
        if !status.is_success() {
            bail!("POST {path}: {status}: {text}");
        }
        Ok((serde_json::from_str(&text)?, took))
    }

    /// PATCHes JSON and returns the JSON answer; any non-2xx is an error.
    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .patch(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .json(body)
            .send()
            .await
            .with_context(|| format!("PATCH {path}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("PATCH {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// DELETEs; any non-2xx is an error.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .with_context(|| format!("DELETE {path}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("DELETE {path}: {status}: {}", response.text().await?);
        }
        Ok(())
    }

    /// The same client presenting `token` (a user's access token, another API key) instead
    /// of the owner API key.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            http: self.http.clone(),
            base: self.base.clone(),
            admin: token.to_owned(),
        }
    }

    /// POSTs JSON without a bearer token (sign-in routes); any non-2xx is an error.
    pub async fn post_anonymous(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("POST {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// GETs `path` (with the bearer token, or none when `anonymous`) and returns the time until
    /// the answer's last byte; any non-2xx is an error.
    pub async fn get_timed(&self, path: &str, anonymous: bool) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut request = self.http.get(format!("{}{path}", self.base));
        if !anonymous {
            request = request.bearer_auth(&self.admin);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let body = response.bytes().await?;
        let took = started.elapsed();
        if !status.is_success() {
            bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(took)
    }

    /// GETs JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&self.get_text(path).await?)?)
    }

    /// The writer's totals so far, read from `/metrics`.
    pub async fn writer(&self) -> anyhow::Result<WriterTotals> {
        WriterTotals::parse(&self.get_text("/metrics").await?)
    }

    /// GETs a body as text; any non-2xx is an error.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {text}");
        }
        Ok(text)
    }
}

/// The store writer's cumulative figures, from its Prometheus histograms: how many
/// transactions, how many writes in them and how long their commits took.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriterTotals {
    /// Transactions committed.
    pub batches: f64,
    /// Writes in them.
    pub writes: f64,
    /// Seconds spent in them, from the first statement to the commit.
    pub busy_s: f64,
}

impl WriterTotals {
    /// The totals of two writers (two nodes') together.
    pub fn plus(self, other: Self) -> Self {
        Self {
            batches: self.batches + other.batches,
            writes: self.writes + other.writes,
            busy_s: self.busy_s + other.busy_s,
        }
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        // A histogram appears with its first value: absent, nothing was committed yet.
        let value = |name: &str| -> anyhow::Result<f64> {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .map_or(Ok(0.0), |v| v.trim().parse())
                .with_context(|| format!("/metrics: {name} is not a number"))
        };
        Ok(Self {
            batches: value("outpost_store_commit_seconds_count")?,
            writes: value("outpost_store_batch_size_sum")?,
            busy_s: value("outpost_store_commit_seconds_sum")?,
        })
    }

    /// What the writer did between `earlier` and `self`, over `wall_s` seconds, in words and
    /// as JSON.
    pub fn since(&self, earlier: &Self, wall_s: f64) -> (String, Value) {
        let batches = self.batches - earlier.batches;
        let writes = self.writes - earlier.writes;
        let busy = self.busy_s - earlier.busy_s;
        let mean = writes / batches.max(1.0);
        let share = busy / wall_s.max(1e-6) * 100.0;
        (
            format!(
                "writer: {batches:.0} transactions of {mean:.0} writes on average, busy {share:.0} % of the time"
            ),
            json!({"transactions": batches, "writes": writes, "busy_s": busy, "busy_percent": share}),
        )
    }
}

/// What every node of a run shares: the owner key, and on PostgreSQL the database and the
/// master key (which a node on SQLite makes itself in its data directory).
#[derive(Clone)]
pub struct Shared {
    /// `OUTPOST_ADMIN_KEY`.
    pub admin: String,
    /// `--database-url`; `None`: SQLite in the data directory.
    pub database_url: Option<String>,
    /// `OUTPOST_MASTER_KEY`, set when nodes share a database.
    pub master_key: Option<String>,
    /// `--retention-seconds` (the soak's shortened retention window).
    pub retention_seconds: Option<u64>,
    /// `--tls-auto`: the server serves TLS with a certificate from its agent CA (the
    /// `handshakes` scenario); the harness's REST client then speaks HTTPS.
    pub tls: bool,
}

impl Shared {
    /// Fresh keys for a run on `database_url` (or SQLite).
    pub fn new(database_url: Option<String>) -> Self {
        let random = || uuid::Uuid::new_v4().simple().to_string();
        Self {
            admin: format!("opk_bench{}", random()),
            master_key: database_url
                .is_some()
                .then(|| format!("{}{}", random(), random())),
            database_url,
            retention_seconds: None,
            tls: false,
        }
    }
}

/// How a server process is started, again on a restart.
struct Launch {
    binary: PathBuf,
    addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    name: String,
    shared: Shared,
}

/// A running server process.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    launch: Launch,
    child: Child,
    client: Client,
    /// The process's CPU seconds when it printed that it listens: its start-up's cost.
    cpu_at_listen: f64,
    /// Its VmRSS then, KiB.
    rss_at_listen: u64,
}

impl Server {
    /// Starts `outpost-server` as node `name` on a free loopback port with its data in
    /// `workdir/data`.
    pub async fn start(
        bin_dir: &Path,
        workdir: &Path,
        name: &str,
        shared: &Shared,
    ) -> anyhow::Result<Self> {
        let binary = bin_dir.join("outpost-server");
        if !binary.is_file() {
            bail!(
                "{} not found: build it first (cargo build --release -p outpost-server -p outpost-agent -p outpost-bench) or pass --bin-dir",
                binary.display()
            );
        }
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        std::fs::create_dir_all(workdir)?;
        let launch = Launch {
            binary,
            addr,
            data_dir: workdir.join("data"),
            log: workdir.join("server.log"),
            name: name.to_owned(),
            shared: shared.clone(),
        };
        let child = spawn(&launch)?;
        // Over TLS the harness trusts the server it started without checking its certificate:
        // the CA is the server's own, made on its first start (the simulated agents do check it,
        // against the CA the harness reads from `/agent/v1/ca`).
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .tls_danger_accept_invalid_certs(shared.tls)
            .build()?;
        let scheme = if shared.tls { "https" } else { "http" };
        let client = Client {
            http,
            base: format!("{scheme}://{addr}"),
            admin: shared.admin.clone(),
        };
        Ok(Self {
            addr,
            launch,
            cpu_at_listen: cpu_seconds_of(child.id()).unwrap_or(0.0),
            rss_at_listen: rss_kib(child.id()).unwrap_or(0),
            child,
            client,
        })
    }

    /// The owner API key every node is started with.
    pub fn admin_key(&self) -> String {
        self.launch.shared.admin.clone()
    }

    /// Its database, for a harness that reads the store itself.
    pub fn database(&self) -> outpost_store::DatabaseLocation {
        use outpost_store::DatabaseLocation;
        match &self.launch.shared.database_url {
            Some(url) => DatabaseLocation::Url(url.clone()),
            None => DatabaseLocation::Sqlite(self.launch.data_dir.join("outpost.db")),
        }
    }

    /// Its master key's text: `OUTPOST_MASTER_KEY` when nodes share one, else the data
    /// directory's `master.key`.
    pub fn master_key(&self) -> anyhow::Result<String> {
        match &self.launch.shared.master_key {
            Some(key) => Ok(key.clone()),
            None => {
                let path = self.launch.data_dir.join("master.key");
                std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))
            }
        }
    }

    /// `outpost-server release …` (or any other subcommand) for this server: the same binary,
    /// its data directory and database. The caller adds the subcommand's own arguments after
    /// `args`.
    pub fn tool(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.launch.binary);
        command
            .args(args)
            .arg("--data-dir")
            .arg(&self.launch.data_dir)
            .env_remove("OUTPOST_DATABASE_URL")
            .env_remove("OUTPOST_MASTER_KEY");
        if let Some(url) = &self.launch.shared.database_url {
            command.arg("--database-url").arg(url);
        }
        command
    }

    /// The server binary, for subcommands that take no data directory (`--version`,
    /// `release keygen`).
    pub fn binary(&self) -> &Path {
        &self.launch.binary
    }

    /// The node's name (`--node-name`).
    pub fn name(&self) -> &str {
        &self.launch.name
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the server process has used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds_of(self.pid())
    }

    /// A REST client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The writer's totals so far.
    pub async fn writer(&self) -> anyhow::Result<WriterTotals> {
        self.client.writer().await
    }

    /// POSTs JSON as the owner.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.client.post(path, body).await
    }

    /// POSTs JSON as the owner; also returns the time until the answer's last byte.
    pub async fn post_timed(&self, path: &str, body: &Value) -> anyhow::Result<(Value, Duration)> {
        self.client.post_timed(path, body).await
    }

    /// A few requests so that the baseline RSS includes a warmed-up process.
    pub async fn warm_up(&self) -> anyhow::Result<()> {
        for _ in 0..20 {
            self.client.get("/api/agents").await?;
            self.client.get("/readyz").await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(())
    }

    /// Creates an agent key allowing the built-in commands and `update` (the `rollouts`
    /// scenario's; no other scenario sends it); returns its secret.
    pub async fn agent_key(&self) -> anyhow::Result<String> {
        let key = self
            .post(
                "/api/agents/keys",
                &json!({"name": "bench", "permissions": ["ping", "info", "echo", "run", "update"]}),
            )
            .await?;
        key.get("secret")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("no secret in the new agent key")
    }

    /// The server's `/metrics` (Prometheus text).
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        self.client.get_text("/metrics").await
    }

    /// Agents connected now (`/readyz`).
    pub async fn connected(&self) -> anyhow::Result<u64> {
        let ready = self.client.get("/readyz").await?;
        ready
            .get("agents_connected")
            .and_then(Value::as_u64)
            .context("/readyz has no agents_connected")
    }

    /// Waits until at least `n` agents are connected.
    pub async fn wait_connected(&self, n: u64, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = 0;
        loop {
            match self.connected().await {
                Ok(now) if now >= n => return Ok(()),
                Ok(now) => last = now,
                Err(_) if Instant::now() < deadline => {}
                Err(err) => return Err(err),
            }
            if Instant::now() >= deadline {
                bail!(
                    "{last} of {n} agents connected to {} after {} s (server log: {})",
                    self.launch.name,
                    limit.as_secs(),
                    self.launch.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resident memory of the server process, KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid())
    }

    /// Open descriptors of the server process.
    pub fn open_fds(&self) -> Option<usize> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .ok()
            .map(Iterator::count)
    }

    /// CPU seconds the process took until it listened (its start-up), read as it said so.
    pub fn start_up_cpu_seconds(&self) -> f64 {
        self.cpu_at_listen
    }

    /// Its VmRSS as it said it listens, KiB.
    pub fn start_up_rss_kib(&self) -> u64 {
        self.rss_at_listen
    }

    /// Stops the server with SIGTERM (as systemd would), starts it again on the same data
    /// directory and port, and waits for `n` agents. Returns (time to stop, time from the new
    /// process's start until every agent is back).
    pub async fn restart_and_wait(&mut self, n: u64) -> anyhow::Result<(Duration, Duration)> {
        let stopping = Instant::now();
        self.terminate()?;
        let stopped = stopping.elapsed();
        let started = Instant::now();
        self.child = spawn(&self.launch)?;
        self.cpu_at_listen = cpu_seconds_of(self.child.id()).unwrap_or(0.0);
        self.rss_at_listen = rss_kib(self.child.id()).unwrap_or(0);
        self.wait_connected(n, Duration::from_secs(300)).await?;
        Ok((stopped, started.elapsed()))
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(i32::try_from(self.pid())?);
        kill(pid, Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        let _ = self.terminate();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The server processes of a run: one, or several nodes on one PostgreSQL database. REST calls
/// go to the first; simulated agent `i` connects to node `i % len` ([`Nodes::node_of`]).
pub struct Nodes {
    list: Vec<Server>,
}

impl Nodes {
    /// Starts `count` nodes (`node1`, `node2`, …) sharing `shared`, one after the other (the
    /// first migrates the database), each in a directory of its own under `workdir` when there
    /// are several.
    pub async fn start(
        bin_dir: &Path,
        workdir: &Path,
        count: usize,
        shared: &Shared,
    ) -> anyhow::Result<Self> {
        let mut list = Vec::with_capacity(count);
        for i in 1..=count {
            let dir = if count == 1 {
                workdir.to_path_buf()
            } else {
                workdir.join(format!("node{i}"))
            };
            list.push(Server::start(bin_dir, &dir, &format!("node{i}"), shared).await?);
        }
        Ok(Self { list })
    }

    /// The node REST calls go to (jobs are created there).
    pub fn first(&self) -> &Server {
        &self.list[0]
    }

    /// The same, to restart it.
    pub fn first_mut(&mut self) -> &mut Server {
        &mut self.list[0]
    }

    /// Every node.
    pub fn all(&self) -> &[Server] {
        &self.list
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Where the nodes listen, in order: the swarm's `--server` list.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.list.iter().map(|s| s.addr).collect()
    }

    /// The node simulated agent `index` connects to.
    pub fn node_of(&self, index: u64) -> usize {
        (index % self.list.len() as u64) as usize
    }

    /// How many of `agents` simulated agents connect to node `node`.
    pub fn share(&self, node: usize, agents: u64) -> u64 {
        let n = self.list.len() as u64;
        agents / n + u64::from((node as u64) < agents % n)
    }

    /// CPU time every node has used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.list.iter().map(Server::cpu_seconds).sum()
    }

    /// The writers' totals so far, every node's together.
    pub async fn writer(&self) -> anyhow::Result<WriterTotals> {
        let mut total = WriterTotals::default();
        for server in &self.list {
            total = total.plus(server.writer().await?);
        }
        Ok(total)
    }

    /// Waits until each node holds its share of `agents`.
    pub async fn wait_connected(&self, agents: u64, limit: Duration) -> anyhow::Result<()> {
        for (i, server) in self.list.iter().enumerate() {
            server.wait_connected(self.share(i, agents), limit).await?;
        }
        Ok(())
    }

    /// Waits until the first node, where the REST calls go, lists all `agents` as connected:
    /// its own, and the other nodes' as their rows in the database say (what it reads at most
    /// every 2 s). Returns how long that took; at once with one node.
    pub async fn wait_seen_by_first(
        &self,
        agents: u64,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        if self.list.len() == 1 {
            return Ok(started.elapsed());
        }
        let mut seen = 0;
        while started.elapsed() < limit {
            let list = self.first().client.get("/api/agents/connected").await?;
            seen = list.as_array().map_or(0, Vec::len) as u64;
            if seen >= agents {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "node1 lists {seen} of {agents} agents as connected after {} s",
            limit.as_secs()
        )
    }

    /// Stops every node.
    pub async fn stop(self) {
        for server in self.list {
            server.stop().await;
        }
    }
}

fn spawn(launch: &Launch) -> anyhow::Result<Child> {
    let log = &launch.log;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut command = Command::new(&launch.binary);
    command
        .arg("--listen")
        .arg(launch.addr.to_string())
        .arg("--data-dir")
        .arg(&launch.data_dir)
        .arg("--node-name")
        .arg(&launch.name)
        // The harness drives thousands of API requests a second with one key, far past the
        // default per-caller rate limit (1,200 a minute): the largest limit keeps the limiter
        // in the measured path (its cost counts) without refusing anything.
        .arg("--rate-limit")
        .arg(u32::MAX.to_string())
        .env("OUTPOST_ADMIN_KEY", &launch.shared.admin)
        // The events scenario's receiver listens on loopback.
        .env("OUTPOST_WEBHOOK_ALLOW_PRIVATE", "1")
        // Per-connection info lines would cost more than what is measured. To see where a
        // request's time goes: OUTPOST_BENCH_SERVER_LOG=warn,outpost_core=debug and
        // OUTPOST_LOG_SPANS=close (docs/BENCHMARKS.md, "The round trip's steps").
        .env(
            "OUTPOST_LOG",
            std::env::var("OUTPOST_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("OUTPOST_DATABASE_URL")
        .env_remove("OUTPOST_MASTER_KEY");
    if let Some(url) = &launch.shared.database_url {
        command.arg("--database-url").arg(url);
    }
    if let Some(key) = &launch.shared.master_key {
        command.env("OUTPOST_MASTER_KEY", key);
    }
    if launch.shared.tls {
        command.arg("--tls-auto");
    }
    if let Some(seconds) = launch.shared.retention_seconds {
        command.arg("--retention-seconds").arg(seconds.to_string());
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", launch.binary.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("outpost-server listening on") => break,
            Some(Ok(_)) => {}
            _ => bail!("the server exited before listening; see {}", log.display()),
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(child)
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// CPU time process `pid` has used so far (user + system), in seconds.
pub fn cpu_seconds_of(pid: u32) -> anyhow::Result<f64> {
    // USER_HZ is 100 on every Linux architecture we build for.
    Ok(cpu_ticks(pid)? as f64 / 100.0)
}

/// CPU time, in nanoseconds, that the threads of process `pid` have run, by thread id, from
/// `/proc/PID/task/TID/schedstat` (the scheduler's own clock). `None` where the kernel does not
/// keep it.
///
/// `/proc/PID/stat` counts CPU in 10 ms ticks, charged to whatever runs when the timer interrupt
/// comes: over a minute of an idle agent, which runs well under 1 % of the time in slices of
/// about a millisecond, that is a handful of ticks, and one tick more or less is 0.017 % of a
/// core, a third of the contract's goal.
fn cpu_ns_by_thread(pid: u32) -> Option<HashMap<u32, u64>> {
    let mut threads = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let entry = entry.ok()?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            // The thread ended meanwhile.
            continue;
        };
        threads.insert(tid, stat.split_whitespace().next()?.parse().ok()?);
    }
    Some(threads)
}

/// The real agent's footprint.
pub struct AgentFigures {
    /// VmRSS at the end of the sampling, KiB.
    pub rss_kib: u64,
    /// CPU used over the sampling, percent of one core, from the scheduler's clock (see
    /// [`cpu_ns_by_thread`]); from the 10 ms ticks when the kernel has no schedstat.
    pub cpu_percent: f64,
    /// The same from `/proc/PID/stat`'s 10 ms ticks, for comparison.
    pub cpu_percent_ticks: f64,
    /// Threads the agent had at the end of the sampling.
    pub threads: usize,
    /// Size of the binary.
    pub binary_bytes: u64,
    /// Whether the binary has no symbol table.
    pub stripped: bool,
}

/// Runs the real `outpost-agent` against the server and samples it while idle.
pub async fn agent_footprint(
    server: &Server,
    bin_dir: &Path,
    workdir: &Path,
    secs: u64,
) -> anyhow::Result<AgentFigures> {
    let binary = bin_dir.join("outpost-agent");
    let bytes = std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let stripped = !bytes.windows(7).any(|w| w == b".symtab");
    let key = server.agent_key().await?;
    let before = server.connected().await?;
    let state_dir = workdir.join("agent-state");
    let mut child = Command::new(&binary)
        .env("OUTPOST_SERVER_URL", format!("http://{}", server.addr))
        .env("OUTPOST_API_KEY", key)
        .env("OUTPOST_STATE_DIR", &state_dir)
        .env("OUTPOST_SKIP_UPDATE", "1")
        .env("OUTPOST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id();
    let result = async {
        server
            .wait_connected(before + 1, Duration::from_secs(30))
            .await
            .context("the real agent did not connect")?;
        // One command answered, as an agent in service would have.
        let id = std::fs::read_to_string(state_dir.join("agent_id"))?;
        server
            .post(
                &format!("/api/agents/{}/command", id.trim()),
                &json!({"command": "ping"}),
            )
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cpu_before = cpu_seconds_of(pid)?;
        let ns = cpu_ns_by_thread(pid);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let used = cpu_seconds_of(pid)? - cpu_before;
        let ns_end = cpu_ns_by_thread(pid);
        let elapsed = started.elapsed().as_secs_f64();
        let cpu_percent_ticks = used / elapsed * 100.0;
        let threads = ns_end.as_ref().map_or(0, HashMap::len);
        // A thread started during the sampling counts from zero. One that ended during it is
        // missing from the sum, which is why the tick figure is kept next to it.
        let cpu_percent = match (ns, ns_end) {
            (Some(before), Some(after)) => {
                let run: u64 = after
                    .iter()
                    .map(|(tid, end)| end.saturating_sub(before.get(tid).copied().unwrap_or(0)))
                    .sum();
                run as f64 / 1e9 / elapsed * 100.0
            }
            _ => cpu_percent_ticks,
        };
        anyhow::Ok(AgentFigures {
            rss_kib: rss_kib(pid)?,
            cpu_percent,
            cpu_percent_ticks,
            threads,
            binary_bytes: bytes.len() as u64,
            stripped,
        })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}
