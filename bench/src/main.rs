//! `outpost-bench`: the load harness behind `docs/BENCHMARKS.md` (CONTRACT.md §8).
//!
//! It starts the real `outpost-server` on a temporary data directory, connects a swarm of
//! simulated agents speaking protocol v1 (spread over worker processes, which are this same
//! binary re-executed with `worker`, each under the per-process file limit), and measures
//! what CONTRACT.md §8 names: idle connections and server memory per connection, REST command round
//! trips, `ping` fan-outs with every result stored, results stored per second, how long the
//! fleet takes to come back after a server restart, the real agent's footprint, how the
//! server sheds sockets that never authenticate while it holds the fleet (`sockets`), and what
//! checking an API key or a user's access token costs (`auth`), and what 10,000 schedules
//! cost idle and how late their jobs are when all fall due in one minute (`schedules`), and how
//! long a staged rollout over the swarm takes and how soon a crashing release halts at its
//! canaries (`rollouts`).
//!
//! It prints figures and never judges them: a slow machine gives slow figures, not a failure.
//! It fails only when something does not work (an agent not answering, a job not finishing).

mod attack;
mod auth;
mod events;
mod handshakes;
mod postgres;
mod report;
mod results;
mod rollouts;
mod schedules;
mod server;
mod soak;
mod swarm;
mod ui;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use report::{Report, percentile};
use server::{Nodes, Server, Shared};

#[derive(Parser)]
#[command(
    name = "outpost-bench",
    version,
    about = "Outpost load harness (CONTRACT.md §8 figures)"
)]
struct Cli {
    #[command(subcommand)]
    worker: Option<Command>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand)]
enum Command {
    /// Internal: one process of simulated agents (started by the harness itself).
    #[command(hide = true)]
    Worker(swarm::WorkerArgs),
    /// Internal: one process of sockets that never authenticate (the `sockets` scenario).
    #[command(hide = true)]
    Attacker(attack::AttackArgs),
}

/// The scenarios; all by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Idle connections held and server RSS per connection.
    Idle,
    /// Sequential REST command round trips to one agent.
    Roundtrip,
    /// `ping` jobs fanned out to 1,000 and 10,000 agents.
    Fanout,
    /// Concurrent fan-outs to every agent: results stored per second.
    Throughput,
    /// Idle and slow sockets opened as fast as possible while the agents are held: sockets
    /// shed per second, `/healthz` latency, agents kept.
    Sockets,
    /// Server restart: time until every agent is back.
    Restart,
    /// The real outpost-agent: idle RSS, CPU and binary size.
    Agent,
    /// What authentication costs: the round trip with the owner API key and with a user's
    /// access token (JWT), interleaved on one server, and a cheap authenticated GET with each
    /// against the unauthenticated `/healthz`.
    Auth,
    /// Failures to a webhook integration: the delay from a failed run's commit to the
    /// receiver (a trickle), and job.failed events recorded per second (a burst).
    Events,
    /// 10,000 schedules: the server's idle CPU with them enabled and not due (vs none), then
    /// the delay from their common minute to each job's creation when all are due at once.
    Schedules,
    /// The dashboard: the agents and jobs pages' render time with the fleet and --ui-runs
    /// runs, and their weight (HTML + JS + CSS).
    Ui,
    /// Fleet results: one job over every agent with varied output; the time to group it, the
    /// summary's, a page of runs', the export's and the job page's server time.
    Results,
    /// Staged rollouts (CONTRACT.md §17): one to the server's version over the swarm (time to
    /// complete, the server's CPU meanwhile), then one to a published version the simulated
    /// agents roll back (from the first canary's rollback report to the halt).
    Rollouts,
    /// Only when named (a server of its own with --tls-auto): the swarm over TLS by key, the
    /// server restarted; then new agents that enroll and connect by certificate, the server
    /// restarted: each reconnection's server CPU per agent (CONTRACT.md §19).
    Handshakes,
    /// Only when named (it starts the server with a retention window of --retention-seconds):
    /// a steady load of jobs with output for --soak-secs; the database's size over time and
    /// the jobs' latency before and while retention deletes.
    Soak,
}

#[derive(clap::Args)]
struct Opts {
    /// Simulated agents.
    #[arg(long, default_value_t = 1000)]
    agents: u64,
    /// Scenarios to run (comma-separated); default: all.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Small counts everywhere (CI): 200 round trips, 2 jobs per fan-out, 5 s of agent sampling.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Directory holding outpost-server and outpost-agent (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Simulated agents per worker process (at most 19,000: the file limit is 20,000).
    #[arg(long, default_value_t = 5000)]
    per_worker: u64,
    /// Source addresses 127.0.0.2 .. 127.0.0.(1+N) the swarm connects from.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Round trips measured (after 10 % as warm-up).
    #[arg(long)]
    roundtrips: Option<usize>,
    /// Fan-out sizes (each capped at --agents).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    fanout_sizes: Vec<u64>,
    /// Jobs per fan-out size.
    #[arg(long)]
    fanout_jobs: Option<usize>,
    /// Concurrent jobs to every agent in the throughput scenario.
    #[arg(long, default_value_t = 4)]
    throughput_jobs: usize,
    /// Seconds the idle fleet's server CPU is sampled for (default 30, one heartbeat
    /// interval; 3 with --quick).
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Seconds the real agent is sampled for.
    #[arg(long)]
    agent_secs: Option<u64>,
    /// Seconds the `sockets` scenario attacks for (default 30; 5 with --quick).
    #[arg(long)]
    attack_secs: Option<u64>,
    /// Attacker processes in the `sockets` scenario.
    #[arg(long, default_value_t = 2)]
    attack_processes: usize,
    /// Sockets each attacker process holds at once (default 3,000, more than the server lets
    /// in: 2,048; 1,000 with --quick).
    #[arg(long)]
    attack_slots: Option<usize>,
    /// Keep the server's data directory and log here instead of a temporary directory (and,
    /// with --database-url, its database).
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Run the servers on PostgreSQL: the URL of a database to connect to for `CREATE
    /// DATABASE` (as `scripts/postgres.sh start DIR` prints it). Each run makes a fresh
    /// database beside it, and drops it at the end. Default: SQLite in the data directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Server nodes sharing that database (needs --database-url). Simulated agent `i`
    /// connects to node `i % N`; jobs and commands are sent to the first node, so with more
    /// than one most of them reach their agents through another node.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Schedules in the `schedules` scenario (default 10,000; 500 with --quick).
    #[arg(long)]
    schedules: Option<usize>,
    /// Runs seeded for the `ui` scenario, as ping jobs of 100 agents (default 10,000; 1,000
    /// with --quick).
    #[arg(long)]
    ui_runs: Option<u64>,
    /// Timed requests per dashboard page in the `ui` scenario (default 200; 30 with --quick).
    #[arg(long)]
    ui_requests: Option<usize>,
    /// The `soak` scenario: the server's retention window in seconds (default 60; 20 with
    /// --quick).
    #[arg(long)]
    retention_seconds: Option<u64>,
    /// The `soak` scenario: how long the load lasts, in seconds (default 600; 90 with --quick).
    #[arg(long)]
    soak_secs: Option<u64>,
    /// The `soak` scenario: milliseconds between two jobs (each to every agent).
    #[arg(long, default_value_t = 250)]
    soak_interval_ms: u64,
    /// The `soak` scenario: output bytes each run prints.
    #[arg(long, default_value_t = 4096)]
    soak_output_bytes: usize,
    /// Compare the figures with a baseline (an earlier run's `--json` output, such as
    /// bench/baseline-quick.json) and print every figure --margin times worse or more. It
    /// reports; it never fails the run (CI's regression guard).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// How many times worse than the baseline a figure must be to be reported.
    #[arg(long, default_value_t = 2.0)]
    margin: f64,
    /// The `rollouts` scenario: canary agents of each rollout (default 10; 2 with --quick).
    #[arg(long)]
    rollout_canary: Option<u32>,
    /// The `rollouts` scenario: the first rollout's waves, percent of the non-canary agents
    /// (default 10,40,50; 100 with --quick).
    #[arg(long, value_delimiter = ',')]
    rollout_waves: Vec<u8>,
    /// The `rollouts` scenario: percent of the target updating at once (default 10; 100 with
    /// --quick, so that each stage is one batch).
    #[arg(long)]
    rollout_max_in_flight: Option<u8>,
    /// The `rollouts` scenario: `health.soak_s` (default 1; 0 with --quick).
    #[arg(long)]
    rollout_soak_s: Option<u32>,
    /// The `rollouts` scenario: the version the simulated agents start at (below the
    /// server's). Without the scenario they register as `bench`.
    #[arg(long, default_value = "0.0.1")]
    rollout_from_version: String,
    /// The `rollouts` scenario: the version published for the second rollout, which the
    /// simulated agents roll back (above the server's).
    #[arg(long, default_value = "9.9.9")]
    rollout_crash_version: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.worker {
        Some(Command::Worker(args)) => swarm::run(args),
        Some(Command::Attacker(args)) => attack::run(args),
        None => {
            rustls::crypto::ring::default_provider()
                .install_default()
                .map_err(|_| anyhow::anyhow!("a rustls provider was already installed"))?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(harness(cli.opts))
        }
    }
}

/// Raises the open-file limit to the hard limit (each simulated agent is one descriptor).
pub(crate) fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

fn has(opts: &Opts, scenario: Scenario) -> bool {
    // The soak changes how the server runs (its retention window): only when named.
    // The handshakes start a TLS server of their own, for minutes: only when named too.
    let only_named = matches!(scenario, Scenario::Soak | Scenario::Handshakes);
    (opts.scenarios.is_empty() && !only_named) || opts.scenarios.contains(&scenario)
}

/// The soak's retention window, in seconds.
fn soak_window(opts: &Opts) -> u64 {
    opts.retention_seconds
        .unwrap_or(if opts.quick { 20 } else { 60 })
        .max(1)
}

async fn harness(opts: Opts) -> anyhow::Result<()> {
    let fd_limit = raise_fd_limit();
    if opts.nodes == 0 {
        bail!("--nodes: at least 1");
    }
    if opts.nodes > 1 && opts.database_url.is_none() {
        bail!(
            "--nodes {} needs --database-url: the nodes of a cluster share one PostgreSQL (CONTRACT.md §13)",
            opts.nodes
        );
    }
    let bin_dir = match &opts.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .to_path_buf(),
    };
    let mut report = Report::new(opts.agents, &bin_dir, fd_limit);
    report.set_backend(&backend_words(&opts));
    let workdir = match &opts.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Workdir::Kept(dir.clone())
        }
        None => Workdir::Temp(tempfile::tempdir()?),
    };
    let database = match &opts.database_url {
        Some(url) => Some(postgres::Database::create(url, opts.keep.is_some())?),
        None => None,
    };
    let mut shared = Shared::new(database.as_ref().map(|d| d.url.clone()));
    if has(&opts, Scenario::Soak) {
        shared.retention_seconds = Some(soak_window(&opts));
    }
    let mut nodes = Nodes::start(&bin_dir, workdir.path(), opts.nodes, &shared).await?;
    for server in nodes.all() {
        eprintln!(
            "outpost-bench: {} pid {} on {}",
            server.name(),
            server.pid(),
            server.addr
        );
    }
    eprintln!(
        "outpost-bench: {} agents; {}",
        opts.agents,
        backend_words(&opts)
    );
    // Whatever was measured is printed, also when a later scenario fails.
    let result = scenarios(&opts, &mut nodes, &bin_dir, workdir.path(), &mut report).await;
    nodes.stop().await;
    report.print(opts.json);
    if let Some(path) = &opts.baseline {
        compare_with_baseline(&report, path, opts.margin);
    }
    drop(database);
    drop(workdir);
    result
}

/// Prints (on stderr, so that `--json` stays one object) the figures that drifted past the
/// margin against the baseline, or that none did.
fn compare_with_baseline(report: &Report, path: &std::path::Path, margin: f64) {
    let baseline: Value = match std::fs::read_to_string(path)
        .map_err(anyhow::Error::from)
        .and_then(|text| Ok(serde_json::from_str(&text)?))
    {
        Ok(baseline) => baseline,
        Err(err) => {
            eprintln!(
                "outpost-bench: WARNING: baseline {} not read: {err:#}",
                path.display()
            );
            return;
        }
    };
    let recorded = baseline["machine"]["started_at"].as_str().unwrap_or("?");
    let drifts = report.drifts(&baseline, margin);
    if drifts.is_empty() {
        eprintln!(
            "outpost-bench: against the baseline {} (recorded {recorded}): no figure {margin}x worse or more",
            path.display()
        );
        return;
    }
    eprintln!(
        "outpost-bench: WARNING: against the baseline {} (recorded {recorded}), {} figure(s) {margin}x worse or more          (a report, not a failure: a busy machine moves figures too; compare on a quiet one with --bin-dir):",
        path.display(),
        drifts.len()
    );
    for d in &drifts {
        eprintln!(
            "  {}: {} {:.3} -> {:.3} ({:.1}x worse)",
            d.row, d.figure, d.baseline, d.now, d.worse_by
        );
    }
}

/// What the servers run on, in words.
fn backend_words(opts: &Opts) -> String {
    match (&opts.database_url, opts.nodes) {
        (None, _) => "SQLite (WAL), one server process".to_owned(),
        (Some(_), 1) => "PostgreSQL, one server process".to_owned(),
        (Some(_), n) => format!("PostgreSQL, {n} server nodes sharing it"),
    }
}

/// Said after a row's name: on which backend it was measured (nothing for SQLite, whose rows
/// keep their names from before PostgreSQL).
fn on_backend(opts: &Opts) -> String {
    match (&opts.database_url, opts.nodes) {
        (None, _) => String::new(),
        (Some(_), 1) => " (PostgreSQL)".to_owned(),
        (Some(_), n) => format!(" (PostgreSQL, {n} nodes)"),
    }
}

async fn scenarios(
    opts: &Opts,
    nodes: &mut Nodes,
    bin_dir: &std::path::Path,
    workdir: &std::path::Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let on = on_backend(opts);
    let needs_swarm = [
        Scenario::Idle,
        Scenario::Roundtrip,
        Scenario::Fanout,
        Scenario::Throughput,
        Scenario::Sockets,
        Scenario::Restart,
        Scenario::Auth,
        Scenario::Events,
        Scenario::Schedules,
        Scenario::Results,
        Scenario::Rollouts,
        Scenario::Soak,
        Scenario::Ui,
    ]
    .iter()
    .any(|s| has(opts, *s));
    let run_id = u64::from_be_bytes(*b"benchrun") ^ u64::from(std::process::id());
    let sizes: Vec<u64> = {
        let mut sizes: Vec<u64> = opts
            .fanout_sizes
            .iter()
            .map(|s| (*s).min(opts.agents))
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    };
    let mut swarm = None;
    if needs_swarm && opts.agents > 0 {
        // Let the allocator and the database settle before the baseline.
        for server in nodes.all() {
            server.warm_up().await?;
        }
        let before = rss_of(nodes)?;
        let key = nodes.first().agent_key().await?;
        let started = Instant::now();
        swarm = Some(spawn_swarm(opts, &nodes.addrs(), &key, run_id, &sizes)?);
        nodes
            .wait_connected(opts.agents, Duration::from_secs(60 + opts.agents / 100))
            .await
            .context("the swarm did not connect")?;
        let ramp = started.elapsed();
        // Jobs and commands go to node1: it must know where the other nodes' agents are.
        let seen = nodes
            .wait_seen_by_first(opts.agents, Duration::from_secs(60))
            .await
            .context("node1 does not see the other nodes' agents")?;
        if nodes.len() > 1 {
            eprintln!(
                "outpost-bench: node1 listed all {} agents as connected {:.1} s after they were",
                opts.agents,
                seen.as_secs_f64()
            );
        }
        // Settle: the first heartbeats and any allocator growth from the ramp.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = rss_of(nodes)?;
        let growth: u64 = after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum();
        let per_conn = growth as f64 * 1024.0 / opts.agents as f64;
        if has(opts, Scenario::Idle) {
            let mib = |v: &[u64]| {
                v.iter()
                    .map(|k| (k / 1024).to_string())
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            let fds: Vec<Option<usize>> = nodes.all().iter().map(Server::open_fds).collect();
            if nodes.len() == 1 {
                report.row(
                    &format!("idle agent connections held by one server process{on}"),
                    "15,000",
                    "19,500",
                    format!(
                        "{} (all connected in {:.1} s)",
                        opts.agents,
                        ramp.as_secs_f64()
                    ),
                    json!({"connected": opts.agents, "ramp_s": ramp.as_secs_f64(), "server_fds": fds[0]}),
                );
            } else {
                let shares: Vec<u64> = (0..nodes.len())
                    .map(|i| nodes.share(i, opts.agents))
                    .collect();
                report.row(
                    &format!(
                        "idle agent connections held by {} nodes on one PostgreSQL",
                        nodes.len()
                    ),
                    "—",
                    "—",
                    format!(
                        "{} ({} per node; all connected in {:.1} s)",
                        opts.agents,
                        shares
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(" / "),
                        ramp.as_secs_f64()
                    ),
                    json!({"connected": opts.agents, "per_node": shares, "ramp_s": ramp.as_secs_f64(), "server_fds": fds}),
                );
            }
            report.row(
                &format!("server RSS per idle connection{on}"),
                "16 KiB",
                "4 KiB",
                format!(
                    "{:.1} KiB ({} -> {} MiB)",
                    per_conn / 1024.0,
                    mib(&before),
                    mib(&after)
                ),
                json!({"rss_before_kib": before, "rss_after_kib": after, "bytes_per_connection": per_conn}),
            );
            // What holding the fleet costs while nothing is asked of it: heartbeats (one per
            // agent per interval), the hub's liveness sweep, the WAL checkpoints.
            let secs = opts.idle_secs.unwrap_or(if opts.quick { 3 } else { 30 });
            let (cpu_before, writer) = (nodes.cpu_seconds()?, nodes.writer().await?);
            let phase = Instant::now();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let wall = phase.elapsed().as_secs_f64();
            let cpu = (nodes.cpu_seconds()? - cpu_before) / wall * 100.0;
            let (writer, writer_json) = nodes.writer().await?.since(&writer, wall);
            let whose = if nodes.len() == 1 {
                "server".to_owned()
            } else {
                format!("{} nodes'", nodes.len())
            };
            report.row(
                &format!(
                    "(for scale) {whose} CPU with {} idle agents{on}",
                    opts.agents
                ),
                "—",
                "—",
                format!("{cpu:.1} % of one core over {wall:.0} s ({writer})"),
                json!({"cpu_percent": cpu, "seconds": wall, "writer": writer_json}),
            );
        }
    }

    if has(opts, Scenario::Roundtrip) && swarm.is_some() {
        let count = opts
            .roundtrips
            .unwrap_or(if opts.quick { 200 } else { 2000 });
        // Agent 0 is held by the node the REST calls go to; agent 1, with several nodes, by
        // the next one, so its commands cross from node to node through the database.
        let mut agents = vec![(0, "")];
        if nodes.len() > 1 && opts.agents > 1 {
            agents.push((1, ", agent held by another node than the REST call's"));
        }
        for (index, how) in agents {
            let agent = swarm::agent_id(run_id, index).to_string();
            let (writer, phase) = (nodes.writer().await?, Instant::now());
            let times = roundtrips(&nodes.first().client(), &agent, count)
                .await
                .with_context(|| {
                    format!(
                        "round trips through node1 to agent {index}, held by node{}",
                        nodes.node_of(index) + 1
                    )
                })?;
            // How many of the writer's transactions each round trip waited on: the agent's
            // `ack` and its result stored together (1) or one after the other (2).
            let (_, writer_json) = nodes
                .writer()
                .await?
                .since(&writer, phase.elapsed().as_secs_f64());
            let per_trip = writer_json["transactions"].as_f64().unwrap_or(0.0) / count as f64;
            report.row(
                &format!("REST -> agent -> stored result round trip, p50 / p99{on}{how}"),
                "2 ms / 10 ms",
                "0.3 ms / 2 ms",
                format!(
                    "{:.2} ms / {:.2} ms (p90 {:.2}, max {:.2}; {count} sequential pings, {} idle agents connected; {per_trip:.2} writer transactions per round trip)",
                    percentile(&times, 50.0),
                    percentile(&times, 99.0),
                    percentile(&times, 90.0),
                    times.last().copied().unwrap_or(0.0),
                    opts.agents
                ),
                json!({"count": count, "agent_node": nodes.node_of(index) + 1,
                       "p50_ms": percentile(&times, 50.0), "p90_ms": percentile(&times, 90.0),
                       "p99_ms": percentile(&times, 99.0), "max_ms": times.last(),
                       "writer": writer_json}),
            );
        }
    }

    if has(opts, Scenario::Auth) && swarm.is_some() {
        auth_cost(
            opts,
            nodes.first(),
            &swarm::agent_id(run_id, 0).to_string(),
            report,
        )
        .await?;
    }

    if has(opts, Scenario::Fanout)
        && let Some(swarm) = &swarm
    {
        let jobs = opts.fanout_jobs.unwrap_or(if opts.quick { 2 } else { 5 });
        let server = nodes.first();
        for size in &sizes {
            eprintln!("outpost-bench: fan-out to {size} agents, {jobs} jobs");
            let mut completions = Vec::new();
            let mut runs = Vec::new();
            // Where a job's time goes, from the POST: the job's `created_at` (stamped once its
            // target is resolved, before its runs are inserted), the last run's `finished_at`
            // (stamped by the writer as it stores that result), and the answer received.
            let mut phases = Vec::new();
            let cpu = nodes.cpu_seconds()?;
            let swarm_cpu = swarm.cpu_seconds()?;
            let writer = nodes.writer().await?;
            let phase = Instant::now();
            for _ in 0..jobs {
                let started_at = chrono::Utc::now();
                // Until the answer's last byte: parsing it is the harness's work.
                let (job, took) = server
                    .post_timed(
                        "/api/jobs?wait=120",
                        &json!({"command": "ping", "target": {"tags": [format!("first-{size}")]}, "timeout_s": 60}),
                    )
                    .await?;
                let completion = took.as_secs_f64() * 1e3;
                completions.push(completion);
                let lat = run_latencies(&job, *size)?;
                let since = |t: chrono::DateTime<chrono::Utc>| {
                    (t - started_at).num_microseconds().unwrap_or(0) as f64 / 1e3
                };
                phases.push([since(lat.created), since(lat.last_finished), completion]);
                runs.extend(lat.per_run_ms);
            }
            let cpu_per_run_us = (nodes.cpu_seconds()? - cpu) * 1e6 / runs.len().max(1) as f64;
            let (writer, writer_json) = nodes
                .writer()
                .await?
                .since(&writer, phase.elapsed().as_secs_f64());
            let swarm_per_run_us =
                (swarm.cpu_seconds()? - swarm_cpu) * 1e6 / runs.len().max(1) as f64;
            completions.sort_by(f64::total_cmp);
            runs.sort_by(f64::total_cmp);
            let median_phase = |i: usize| {
                let mut v: Vec<f64> = phases.iter().map(|p| p[i]).collect();
                v.sort_by(f64::total_cmp);
                percentile(&v, 50.0)
            };
            let phase_ms = [median_phase(0), median_phase(1), median_phase(2)];
            let (what, goal) = if nodes.len() > 1 {
                (
                    format!(
                        "`ping` fanned out to {size} agents held by {} nodes on one PostgreSQL, all results stored (jobs created on node1)",
                        nodes.len()
                    ),
                    if *size >= 30_000 {
                        ("3 s", "1 s")
                    } else {
                        ("—", "—")
                    },
                )
            } else {
                (
                    format!("`ping` fanned out to {size} agents, all results stored{on}"),
                    if *size >= 10_000 {
                        ("1 s", "250 ms")
                    } else {
                        ("—", "—")
                    },
                )
            };
            let whose = if nodes.len() == 1 { "server" } else { "nodes'" };
            report.row(
                &what,
                goal.0,
                goal.1,
                format!(
                    "job p50 {:.0} ms / p99 {:.0} ms over {jobs} jobs (median job from its POST: created_at +{:.0} ms, last finished_at +{:.0}, answered +{:.0}); per run p50 {:.0} ms / p99 {:.0} ms; {whose} CPU {cpu_per_run_us:.0} µs per run (simulated agents {swarm_per_run_us:.0}); {writer}",
                    percentile(&completions, 50.0),
                    percentile(&completions, 99.0),
                    phase_ms[0],
                    phase_ms[1],
                    phase_ms[2],
                    percentile(&runs, 50.0),
                    percentile(&runs, 99.0),
                ),
                json!({"size": size, "jobs": jobs, "server_cpu_us_per_run": cpu_per_run_us,
                       "writer": writer_json,
                       "swarm_cpu_us_per_run": swarm_per_run_us,
                       "job_p50_ms": percentile(&completions, 50.0), "job_p99_ms": percentile(&completions, 99.0),
                       "job_max_ms": completions.last(),
                       "median_job_created_ms": phase_ms[0],
                       "median_job_last_stored_ms": phase_ms[1],
                       "median_job_answered_ms": phase_ms[2],
                       "jobs_in_order_ms": phases,
                       "run_p50_ms": percentile(&runs, 50.0), "run_p99_ms": percentile(&runs, 99.0)}),
            );
        }
    }

    if has(opts, Scenario::Throughput)
        && let Some(swarm) = &swarm
    {
        let jobs = opts.throughput_jobs.max(1);
        // A line to start a profiler on (docs/BENCHMARKS.md, the result path's profile).
        eprintln!("outpost-bench: throughput, {jobs} concurrent jobs to every agent");
        let cpu = nodes.cpu_seconds()?;
        let swarm_cpu = swarm.cpu_seconds()?;
        let writer = nodes.writer().await?;
        let started = Instant::now();
        let mut pending = Vec::new();
        for _ in 0..jobs {
            let server = nodes.first().client();
            pending.push(tokio::spawn(async move {
                server
                    .post(
                        "/api/jobs?wait=300",
                        &json!({"command": "ping", "target": {"all": true}, "timeout_s": 120}),
                    )
                    .await
            }));
        }
        let mut first_created = None::<chrono::DateTime<chrono::Utc>>;
        let mut last_finished = None::<chrono::DateTime<chrono::Utc>>;
        let mut total = 0u64;
        for handle in pending {
            let job = handle.await??;
            let lat = run_latencies(&job, opts.agents)?;
            total += lat.count;
            first_created = first_created.min(Some(lat.created)).or(Some(lat.created));
            last_finished = last_finished.max(Some(lat.last_finished));
        }
        let wall = started.elapsed().as_secs_f64();
        eprintln!("outpost-bench: throughput, every job answered");
        let (writer, writer_json) = nodes.writer().await?.since(&writer, wall);
        let cpu_per_result_us = (nodes.cpu_seconds()? - cpu) * 1e6 / total.max(1) as f64;
        let swarm_per_result_us = (swarm.cpu_seconds()? - swarm_cpu) * 1e6 / total.max(1) as f64;
        let stored_span = match (first_created, last_finished) {
            (Some(a), Some(b)) => (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6,
            _ => 0.0,
        };
        let rate = total as f64 / stored_span.max(1e-6);
        let (what, floor, goal) = match (&opts.database_url, nodes.len()) {
            (None, _) => (
                "job results durably stored per second (SQLite WAL)".to_owned(),
                "10,000",
                "100,000",
            ),
            (Some(_), 1) => (
                "results stored per second on PostgreSQL, one node".to_owned(),
                "5,000",
                "50,000",
            ),
            (Some(_), n) => (
                format!(
                    "results stored per second on PostgreSQL, {n} nodes (jobs created on node1)"
                ),
                "—",
                "—",
            ),
        };
        let whose = if nodes.len() == 1 { "server" } else { "nodes'" };
        report.row(
            &what,
            floor,
            goal,
            format!(
                "{rate:.0}/s ({total} results of {jobs} concurrent jobs stored {stored_span:.2} s after the first was created; {:.0}/s counting the REST calls; {whose} CPU {cpu_per_result_us:.0} µs per result, simulated agents {swarm_per_result_us:.0}; {writer})",
                total as f64 / wall
            ),
            json!({"results": total, "jobs": jobs, "stored_span_s": stored_span, "wall_s": wall,
                   "server_cpu_us_per_result": cpu_per_result_us,
                   "swarm_cpu_us_per_result": swarm_per_result_us, "writer": writer_json,
                   "per_second": rate, "per_second_wall": total as f64 / wall}),
        );
    }

    if has(opts, Scenario::Agent) {
        let secs = opts.agent_secs.unwrap_or(if opts.quick { 5 } else { 60 });
        let figures = server::agent_footprint(nodes.first(), bin_dir, workdir, secs).await?;
        report.row(
            "agent idle RSS / idle CPU",
            "10 MiB / 0.2 %",
            "4 MiB / 0.05 %",
            format!(
                "{:.1} MiB / {:.3} % (over {secs} s, connected and idle; {} thread(s); {:.3} % \
                 counted in 10 ms ticks)",
                figures.rss_kib as f64 / 1024.0,
                figures.cpu_percent,
                figures.threads,
                figures.cpu_percent_ticks,
            ),
            json!({"rss_kib": figures.rss_kib, "cpu_percent": figures.cpu_percent,
                   "cpu_percent_ticks": figures.cpu_percent_ticks, "threads": figures.threads,
                   "seconds": secs}),
        );
        report.row(
            "agent release binary, stripped",
            "12 MiB",
            "5 MiB",
            format!(
                "{:.1} MiB ({} bytes{})",
                figures.binary_bytes as f64 / (1024.0 * 1024.0),
                figures.binary_bytes,
                if figures.stripped {
                    ""
                } else {
                    "; NOT stripped: a debug build?"
                }
            ),
            json!({"bytes": figures.binary_bytes, "stripped": figures.stripped}),
        );
    }

    // With several nodes, the next two scenarios are about node1 and the agents it holds.
    let first_share = nodes.share(0, opts.agents);
    if has(opts, Scenario::Sockets) && swarm.is_some() {
        // The addresses after the swarm's 127.0.0.2 .. 127.0.0.(1+sources).
        let first = 2 + opts.sources.max(1);
        let sources = (0..4u8)
            .map(|i| Ipv4Addr::new(127, 0, 0, first.saturating_add(i)))
            .collect();
        let plan = attack::Plan {
            agents: first_share,
            secs: opts.attack_secs.unwrap_or(if opts.quick { 5 } else { 30 }),
            processes: opts.attack_processes.max(1),
            slots: opts
                .attack_slots
                .unwrap_or(if opts.quick { 1000 } else { 3000 })
                .max(1),
            sources,
        };
        attack::scenario(nodes.first(), &plan, report).await?;
    }

    if has(opts, Scenario::Restart) && swarm.is_some() {
        let (stopped, back) = nodes.first_mut().restart_and_wait(first_share).await?;
        let what = if nodes.len() == 1 {
            format!(
                "{} agents back online after a server restart{on}",
                opts.agents
            )
        } else {
            format!(
                "{first_share} agents back online after node1 restarts{on} (the others keep theirs)"
            )
        };
        report.row(
            &what,
            "60 s (10,000)",
            "10 s (10,000)",
            format!(
                "{:.1} s from the new process's start ({:.1} s to stop the old one)",
                back.as_secs_f64(),
                stopped.as_secs_f64()
            ),
            json!({"agents": first_share, "back_online_s": back.as_secs_f64(), "stop_s": stopped.as_secs_f64()}),
        );
    }

    if has(opts, Scenario::Events) && swarm.is_some() && opts.agents >= 2 {
        let plan = events::Plan {
            agents: (0..2)
                .map(|i| swarm::agent_id(run_id, i).to_string())
                .collect(),
            trickle: if opts.quick { 5 } else { 30 },
            burst: if opts.quick { 200 } else { 2000 },
            on: on.clone(),
        };
        events::scenario(nodes, &plan, report).await?;
    }

    if has(opts, Scenario::Ui) && swarm.is_some() {
        let plan = ui::Plan {
            agents: (0..opts.agents)
                .map(|i| swarm::agent_id(run_id, i).to_string())
                .collect(),
            runs: opts
                .ui_runs
                .unwrap_or(if opts.quick { 1_000 } else { 10_000 }),
            tag: format!("first-{}", sizes.first().copied().unwrap_or(opts.agents)),
            requests: opts
                .ui_requests
                .unwrap_or(if opts.quick { 30 } else { 200 })
                .max(1),
            on: on.clone(),
        };
        ui::scenario(nodes.first(), &plan, report).await?;
    }

    if has(opts, Scenario::Results) && swarm.is_some() {
        let plan = results::Plan {
            // The swarm's agents carry `first-N` for each fan-out size: the largest is the
            // swarm (or its first N), never an agent an earlier scenario left offline.
            tag: format!("first-{}", sizes.last().copied().unwrap_or(opts.agents)),
            requests: opts
                .ui_requests
                .unwrap_or(if opts.quick { 30 } else { 200 })
                .max(1),
            on: on.clone(),
        };
        results::scenario(nodes.first(), &plan, report).await?;
    }

    if has(opts, Scenario::Rollouts)
        && let Some(swarm) = &swarm
    {
        let size = sizes.last().copied().unwrap_or(opts.agents);
        let plan = rollouts::Plan {
            // As the results scenario: the swarm, never an agent left offline earlier.
            tag: format!("first-{size}"),
            agents: size,
            canary: opts
                .rollout_canary
                .unwrap_or(if opts.quick { 2 } else { 10 }),
            waves: if !opts.rollout_waves.is_empty() {
                opts.rollout_waves.clone()
            } else if opts.quick {
                vec![100]
            } else {
                vec![10, 40, 50]
            },
            max_in_flight: opts
                .rollout_max_in_flight
                .unwrap_or(if opts.quick { 100 } else { 10 }),
            idle_secs: if opts.quick { 2 } else { 5 },
            soak_s: opts
                .rollout_soak_s
                .unwrap_or(if opts.quick { 0 } else { 1 }),
            from_version: opts.rollout_from_version.clone(),
            crash_version: opts.rollout_crash_version.clone(),
            workdir: workdir.to_path_buf(),
            on: on.clone(),
        };
        rollouts::scenario(nodes, swarm, &plan, report).await?;
    }

    if has(opts, Scenario::Soak) && swarm.is_some() {
        let location = nodes.first().database();
        let plan = soak::Plan {
            duration: Duration::from_secs(opts.soak_secs.unwrap_or(if opts.quick {
                90
            } else {
                600
            })),
            window: Duration::from_secs(soak_window(opts)),
            interval: Duration::from_millis(opts.soak_interval_ms.max(1)),
            agents: opts.agents,
            output_bytes: opts.soak_output_bytes.clamp(1, 60_000),
            sqlite: match &location {
                outpost_store::DatabaseLocation::Sqlite(path) => Some(path.clone()),
                outpost_store::DatabaseLocation::Url(_) => None,
            },
            postgres: match location {
                outpost_store::DatabaseLocation::Url(url) => Some(url),
                outpost_store::DatabaseLocation::Sqlite(_) => None,
            },
            on: on.clone(),
        };
        eprintln!(
            "outpost-bench: soak for {:?}, retention window {:?}, a job to {} agents every {:?}",
            plan.duration, plan.window, plan.agents, plan.interval
        );
        soak::scenario(nodes, &plan, report).await?;
    }

    // Last: its schedules go on firing every minute until the server stops.
    if has(opts, Scenario::Schedules) && swarm.is_some() {
        let plan = schedules::Plan {
            count: opts
                .schedules
                .unwrap_or(if opts.quick { 500 } else { 10_000 })
                .max(1),
            agents: (0..opts.agents.min(100))
                .map(|i| swarm::agent_id(run_id, i).to_string())
                .collect(),
            idle_secs: opts.idle_secs.unwrap_or(if opts.quick { 3 } else { 30 }),
            on: on.clone(),
        };
        schedules::scenario(nodes, &plan, report).await?;
    }

    if let Some(swarm) = swarm {
        swarm.stop();
    }

    if has(opts, Scenario::Handshakes) && opts.agents > 0 {
        if opts.database_url.is_some() {
            eprintln!(
                "outpost-bench: handshakes run on a SQLite server of their own, not on --database-url"
            );
        }
        let plan = handshakes::Plan {
            agents: opts.agents,
            per_worker: opts.per_worker,
            sources: opts.sources,
        };
        handshakes::scenario(bin_dir, workdir, &plan, report).await?;
    }
    Ok(())
}

/// Resident memory of every node, KiB.
fn rss_of(nodes: &Nodes) -> anyhow::Result<Vec<u64>> {
    nodes.all().iter().map(Server::rss_kib).collect()
}

/// `count` sequential `ping` round trips to `agent` through `client` (after 10 % more as
/// warm-up), in milliseconds, sorted.
async fn roundtrips(
    client: &server::Client,
    agent: &str,
    count: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut times = interleaved_roundtrips(std::slice::from_ref(client), agent, count).await?;
    Ok(times.remove(0))
}

/// One `ping` round trip to `agent` through `client`, in milliseconds.
async fn roundtrip(client: &server::Client, agent: &str, i: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let answer = client
        .post(
            &format!("/api/agents/{agent}/command"),
            &json!({"command": "ping", "timeout_s": 10}),
        )
        .await?;
    let took = started.elapsed();
    if answer.get("status").and_then(Value::as_str) != Some("succeeded") {
        bail!("round trip {i}: the ping did not succeed: {answer}");
    }
    Ok(took.as_secs_f64() * 1e3)
}

/// `count` sequential round trips to `agent` through each of `clients`, taking turns (the
/// first client first on even turns, last on odd ones), so that each sees the same server
/// and machine; after 10 % more as warm-up. Milliseconds, sorted, one list per client.
async fn interleaved_roundtrips(
    clients: &[server::Client],
    agent: &str,
    count: usize,
) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut times = vec![Vec::with_capacity(count); clients.len()];
    for i in 0..count + count / 10 {
        for turn in 0..clients.len() {
            let which = if i % 2 == 0 {
                turn
            } else {
                clients.len() - 1 - turn
            };
            let took = roundtrip(&clients[which], agent, i).await?;
            if i >= count / 10 {
                times[which].push(took);
            }
        }
    }
    for list in &mut times {
        list.sort_by(f64::total_cmp);
    }
    Ok(times)
}

/// A user's access token: the owner API key invites an owner, who accepts and signs in, as
/// CONTRACT.md §9 has it (three sign-in attempts of the ten a minute allowed).
async fn sign_in(client: &server::Client) -> anyhow::Result<String> {
    const PASSWORD: &str = "bench password, not secret";
    let email = format!("bench-{}@example.com", std::process::id());
    let invited = client
        .post("/api/users", &json!({"email": email, "role": "owner"}))
        .await?;
    let invite = invited
        .get("invite_token")
        .and_then(Value::as_str)
        .context("no invite_token in POST /api/users")?;
    client
        .post_anonymous(
            "/api/auth/accept-invite",
            &json!({"token": invite, "password": PASSWORD}),
        )
        .await?;
    let session = client
        .post_anonymous(
            "/api/auth/login",
            &json!({"email": email, "password": PASSWORD}),
        )
        .await?;
    session
        .get("access_token")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .context("no access_token in POST /api/auth/login")
}

/// The `auth` scenario: what the bearer check costs an API key (`opk_…`: a lookup by hash
/// and a constant-time compare) and a user's access token (HMAC-SHA256 check of the JWT,
/// then the user's row read again, CONTRACT.md §9), on the round trip and on a cheap GET.
async fn auth_cost(
    opts: &Opts,
    server: &Server,
    agent: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let on = on_backend(opts);
    let key = server.client();
    let token = sign_in(&key).await.context("signing a user in")?;
    let jwt = key.with_token(&token);
    let started = Instant::now();
    let count = opts
        .roundtrips
        .unwrap_or(if opts.quick { 200 } else { 2000 });
    // A scoped key of that user (`/api/keys`): its check reads the key and then its user.
    let scoped = jwt
        .post(
            "/api/keys",
            &json!({"name": "bench", "scopes": ["jobs:run", "jobs:read", "agents:read"]}),
        )
        .await
        .context("making a scoped API key")?;
    let scoped = key.with_token(
        scoped["secret"]
            .as_str()
            .context("the scoped key's secret")?,
    );
    let times =
        interleaved_roundtrips(&[key.clone(), jwt.clone(), scoped.clone()], agent, count).await?;
    let p = |v: &[f64], q: f64| percentile(v, q);
    let (by_key, by_jwt, by_scoped) = (&times[0], &times[1], &times[2]);
    let scoped50 = p(by_scoped, 50.0) - p(by_key, 50.0);
    let delta50 = p(by_jwt, 50.0) - p(by_key, 50.0);
    let within_budget = delta50 <= 0.1 && scoped50 <= 0.1;
    report.row(
        &format!("round trip with the owner key vs a user's access token vs a user's scoped key, p50 / p99{on}"),
        "—",
        "+0.1 ms p50 at most (CONTRACT.md §9)",
        format!(
            "owner key {:.3} / {:.3} ms, access token {:.3} / {:.3} ms ({delta50:+.3} ms p50, {:+.3} ms p99), scoped key {:.3} / {:.3} ms ({scoped50:+.3} ms p50) ({count} pings each, interleaved)",
            p(by_key, 50.0),
            p(by_key, 99.0),
            p(by_jwt, 50.0),
            p(by_jwt, 99.0),
            p(by_jwt, 99.0) - p(by_key, 99.0),
            p(by_scoped, 50.0),
            p(by_scoped, 99.0),
        ),
        json!({"count": count,
               "key": {"p50_ms": p(by_key, 50.0), "p90_ms": p(by_key, 90.0), "p99_ms": p(by_key, 99.0)},
               "jwt": {"p50_ms": p(by_jwt, 50.0), "p90_ms": p(by_jwt, 90.0), "p99_ms": p(by_jwt, 99.0)},
               "scoped_key": {"p50_ms": p(by_scoped, 50.0), "p90_ms": p(by_scoped, 90.0), "p99_ms": p(by_scoped, 99.0)},
               "scoped_p50_delta_ms": scoped50,
               "p50_delta_ms": delta50, "budget_ms": 0.1, "within_budget": within_budget}),
    );

    // The same cheap requests, each in turn: nothing authenticated, then one agent read with
    // each credential, then `GET /api/auth/me` (which, for a user, reads the row once more).
    let gets = if opts.quick { 1000 } else { 5000 };
    let agent_path = format!("/api/agents/{agent}");
    let probes: [(&str, &server::Client, &str, bool); 5] = [
        ("GET /healthz, no token", &key, "/healthz", true),
        ("GET /api/agents/{id}, API key", &key, &agent_path, false),
        (
            "GET /api/agents/{id}, access token",
            &jwt,
            &agent_path,
            false,
        ),
        ("GET /api/auth/me, API key", &key, "/api/auth/me", false),
        (
            "GET /api/auth/me, access token",
            &jwt,
            "/api/auth/me",
            false,
        ),
    ];
    let mut times = vec![Vec::with_capacity(gets); probes.len()];
    for i in 0..gets + gets / 10 {
        for (n, (_, client, path, anonymous)) in probes.iter().enumerate() {
            let took = client.get_timed(path, *anonymous).await?.as_secs_f64() * 1e3;
            if i >= gets / 10 {
                times[n].push(took);
            }
        }
    }
    for list in &mut times {
        list.sort_by(f64::total_cmp);
    }
    let base = p(&times[0], 50.0);
    let measured = probes
        .iter()
        .zip(&times)
        .map(|((what, ..), t)| {
            format!(
                "{what} {:.3} / {:.3} ms ({:+.3})",
                p(t, 50.0),
                p(t, 99.0),
                p(t, 50.0) - base
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let data: serde_json::Map<String, Value> = probes
        .iter()
        .zip(&times)
        .map(|((what, ..), t)| {
            (
                (*what).to_owned(),
                json!({"p50_ms": p(t, 50.0), "p90_ms": p(t, 90.0), "p99_ms": p(t, 99.0)}),
            )
        })
        .collect();
    report.row(
        &format!("a cheap GET by credential, p50 / p99 (p50 vs /healthz){on}"),
        "—",
        "—",
        format!("{measured} ({gets} each, in turn)"),
        json!({"count": gets, "probes": data}),
    );
    // Where the time goes: each step of the check, timed in this process.
    let steps = auth::breakdown(server, &token, &server.admin_key(), gets)
        .await
        .context("timing the steps of the bearer check")?;
    let (text, data) = auth::describe(&steps);
    report.row(
        &format!("the bearer check's steps, in-process, p50 / p99{on}"),
        "—",
        "—",
        format!("{text} ({gets} each)"),
        json!({"count": gets, "steps": data}),
    );
    // An access token lives 15 minutes: a run longer than that would have measured 401s,
    // which `get_timed` and `post` refuse, so reaching here means every request was served.
    eprintln!(
        "outpost-bench: auth scenario took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

enum Workdir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Workdir {
    fn path(&self) -> &std::path::Path {
        match self {
            Self::Temp(dir) => dir.path(),
            Self::Kept(dir) => dir,
        }
    }
}

/// The worker processes; they exit when their stdin closes.
struct Swarm {
    children: Vec<std::process::Child>,
}

impl Swarm {
    /// CPU time all workers have used so far, in seconds: on a machine whose cores the swarm
    /// shares with the server, this is what the server could not have.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.children
            .iter()
            .map(|child| server::cpu_seconds_of(child.id()))
            .sum()
    }

    fn stop(mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
    }
}

fn spawn_swarm(
    opts: &Opts,
    servers: &[std::net::SocketAddr],
    key: &str,
    run_id: u64,
    sizes: &[u64],
) -> anyhow::Result<Swarm> {
    let per_worker = opts.per_worker.clamp(1, 19_000);
    let exe = std::env::current_exe()?;
    let sizes: Vec<String> = sizes.iter().map(u64::to_string).collect();
    // The rollouts scenario's agents start at an old version and know which one crashes;
    // without it they register as `bench`, as they always did.
    let rollout_args: Vec<&str> = if has(opts, Scenario::Rollouts) {
        vec![
            "--agent-version",
            &opts.rollout_from_version,
            "--crash-version",
            &opts.rollout_crash_version,
        ]
    } else {
        Vec::new()
    };
    let mut children = Vec::new();
    let mut first = 0;
    while first < opts.agents {
        let count = per_worker.min(opts.agents - first);
        let child = worker_command(&exe, servers, run_id, first, count, opts.sources, key)
            .arg("--tag-sizes")
            .arg(sizes.join(","))
            .args(&rollout_args)
            .spawn()
            .context("starting a worker process")?;
        children.push(child);
        first += count;
    }
    Ok(Swarm { children })
}

/// A worker process's command for agents `first .. first + count` of run `run_id`, the agent
/// key passed through the environment (not in `ps` output), stdin piped (the worker lives until
/// it closes).
fn worker_command(
    exe: &std::path::Path,
    servers: &[std::net::SocketAddr],
    run_id: u64,
    first: u64,
    count: u64,
    sources: u8,
    key: &str,
) -> std::process::Command {
    let servers: Vec<String> = servers.iter().map(ToString::to_string).collect();
    let mut command = std::process::Command::new(exe);
    command
        .arg("worker")
        .arg("--server")
        .arg(servers.join(","))
        .arg("--run-id")
        .arg(run_id.to_string())
        .arg("--first")
        .arg(first.to_string())
        .arg("--count")
        .arg(count.to_string())
        .arg("--sources")
        .arg(sources.to_string())
        .env("OUTPOST_BENCH_AGENT_KEY", key)
        .stdin(std::process::Stdio::piped());
    command
}

struct Latencies {
    count: u64,
    per_run_ms: Vec<f64>,
    created: chrono::DateTime<chrono::Utc>,
    last_finished: chrono::DateTime<chrono::Utc>,
}

/// Checks that a job finished with every run succeeded, and reads its runs' latencies.
fn run_latencies(job: &Value, expected: u64) -> anyhow::Result<Latencies> {
    let status = job.get("status").and_then(Value::as_str).unwrap_or("?");
    let runs = job
        .get("runs")
        .and_then(Value::as_array)
        .context("the job has no runs")?;
    if status != "succeeded" || runs.len() as u64 != expected {
        bail!(
            "job {} ended {status} with {} runs (expected {expected} succeeded): {}",
            job.get("job_id").unwrap_or(&Value::Null),
            runs.len(),
            job.get("run_counts").unwrap_or(&Value::Null)
        );
    }
    let time = |v: &Value, field: &str| -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
        let text = v
            .get(field)
            .and_then(Value::as_str)
            .with_context(|| format!("no {field}"))?;
        Ok(chrono::DateTime::parse_from_rfc3339(text)?.with_timezone(&chrono::Utc))
    };
    let created = time(job, "created_at")?;
    let mut per_run_ms = Vec::with_capacity(runs.len());
    let mut last_finished = created;
    for run in runs {
        let finished = time(run, "finished_at")?;
        last_finished = last_finished.max(finished);
        per_run_ms.push((finished - created).num_microseconds().unwrap_or(0) as f64 / 1e3);
    }
    Ok(Latencies {
        count: runs.len() as u64,
        per_run_ms,
        created,
        last_finished,
    })
}
