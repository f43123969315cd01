//! The `handshakes` scenario (CONTRACT.md §19): what agent certificates cost the server when a
//! whole fleet reconnects. A server of its own with `--tls-auto` (its certificate from its agent
//! CA), a swarm connecting over TLS by key, the server restarted; then a swarm of new agents
//! that first enroll (the real agent's key and CSR code, `POST /agent/v1/enroll`) and connect
//! by certificate (mutual TLS, the certificate looked up on every connection), the server
//! restarted again. Both restarts are timed, and the server's CPU from the moment its new
//! process listens until every agent is back is what the reconnection cost it: TLS handshakes (plus the client
//! certificate's verification for the second swarm), upgrades, `register`s.
//!
//! The agents reconnect with the real agent's backoff (full jitter from 1 s), so the time to
//! come back is mostly that backoff; CPU per agent is the figure to compare.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::Swarm;
use crate::report::Report;
use crate::server::{Server, Shared};

/// What the scenario runs.
pub struct Plan {
    pub agents: u64,
    pub per_worker: u64,
    pub sources: u8,
}

/// The enrollment rate limit is 3,000 a minute per key (its burst): the certificate swarm
/// gives each worker a key of its own and at most this many agents.
const ENROLLING_PER_KEY: u64 = 2_500;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Keys,
    Certificates,
}

impl Mode {
    fn words(self) -> &'static str {
        match self {
            Self::Keys => "by key",
            Self::Certificates => "by certificate",
        }
    }
}

pub async fn scenario(
    bin_dir: &Path,
    workdir: &Path,
    plan: &Plan,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut shared = Shared::new(None);
    shared.tls = true;
    let dir = workdir.join("handshakes");
    let mut server = Server::start(bin_dir, &dir, "tls", &shared).await?;
    server.warm_up().await?;
    let ca = server.client().get_text("/agent/v1/ca").await?;
    let ca_path = dir.join("agent-ca.pem");
    std::fs::write(&ca_path, &ca)?;
    eprintln!(
        "outpost-bench: handshakes: server pid {} on {} over TLS (--tls-auto)",
        server.pid(),
        server.addr
    );
    for (round, mode) in [Mode::Keys, Mode::Certificates].into_iter().enumerate() {
        let run_id =
            u64::from_be_bytes(*b"tlsbench") ^ u64::from(std::process::id()) ^ round as u64;
        let workers = match mode {
            Mode::Keys => plan.per_worker.clamp(1, 19_000),
            Mode::Certificates => plan.per_worker.clamp(1, ENROLLING_PER_KEY),
        };
        let started = Instant::now();
        let swarm = spawn(&server, plan, workers, run_id, &ca_path, mode).await?;
        let limit = Duration::from_secs(120 + plan.agents / 50);
        server
            .wait_connected(plan.agents, limit)
            .await
            .with_context(|| format!("the swarm connecting {}", mode.words()))?;
        let ramp = started.elapsed();
        let swarm_cpu_before = swarm.cpu_seconds()?;
        let (stopped, back) = server.restart_and_wait(plan.agents).await?;
        // The new process's CPU since it listened: every agent's reconnection (its start-up,
        // the database opened and the CA loaded, before it listened, apart).
        let start_up_cpu = server.start_up_cpu_seconds();
        let server_cpu = server.cpu_seconds()? - start_up_cpu;
        let swarm_cpu = swarm.cpu_seconds()? - swarm_cpu_before;
        // Memory of the new process holding the fleet against its own at listening: both
        // rounds measured alike (the first process's memory would carry the first round's).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = server.rss_kib()?;
        let rss_before = server.start_up_rss_kib();
        swarm.stop();
        let per_agent_us = server_cpu * 1e6 / plan.agents.max(1) as f64;
        let per_connection_kib =
            (rss.saturating_sub(rss_before)) as f64 / plan.agents.max(1) as f64;
        let connecting = match mode {
            Mode::Keys => format!("connected in {:.1} s", ramp.as_secs_f64()),
            Mode::Certificates => format!(
                "enrolled and connected in {:.1} s ({:.0} enrollments/s)",
                ramp.as_secs_f64(),
                plan.agents as f64 / ramp.as_secs_f64().max(1e-3)
            ),
        };
        report.row(
            &format!(
                "{} agents reconnecting over TLS {} after a server restart",
                plan.agents,
                mode.words()
            ),
            "60 s (15,000)",
            "10 s (15,000)",
            format!(
                "back in {:.1} s (stop {:.1} s); server CPU {:.2} s, {per_agent_us:.0} µs per \
                 agent (start-up {start_up_cpu:.2} s apart); simulated agents {swarm_cpu:.2} s; {connecting}; server RSS {:.1} KiB per \
                 connection after the restart",
                back.as_secs_f64(),
                stopped.as_secs_f64(),
                server_cpu,
                per_connection_kib,
            ),
            json!({
                "mode": match mode { Mode::Keys => "key", Mode::Certificates => "certificate" },
                "agents": plan.agents,
                "back_online_s": back.as_secs_f64(),
                "stop_s": stopped.as_secs_f64(),
                "server_cpu_s": server_cpu,
                "server_start_up_cpu_s": start_up_cpu,
                "server_cpu_per_agent_us": per_agent_us,
                "swarm_cpu_s": swarm_cpu,
                "first_connect_s": ramp.as_secs_f64(),
                "rss_per_connection_kib": per_connection_kib,
            }),
        );
        // The next round starts from a server without agents.
        wait_disconnected(&server).await?;
    }
    server.stop().await;
    Ok(())
}

/// Workers of `per_worker` agents each: by key, all with one key; by certificate, each worker
/// with a key of its own (the enrollment limit is per key).
async fn spawn(
    server: &Server,
    plan: &Plan,
    per_worker: u64,
    run_id: u64,
    ca: &Path,
    mode: Mode,
) -> anyhow::Result<Swarm> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut first = 0;
    let mut key = String::new();
    while first < plan.agents {
        let count = per_worker.min(plan.agents - first);
        if key.is_empty() || mode == Mode::Certificates {
            key = server.agent_key().await?;
        }
        let mut command = crate::worker_command(
            &exe,
            &[server.addr],
            run_id,
            first,
            count,
            plan.sources,
            &key,
        );
        command.arg("--tls-ca").arg(ca);
        if mode == Mode::Certificates {
            command.arg("--certificates");
        }
        children.push(command.spawn().context("starting a worker process")?);
        first += count;
    }
    Ok(Swarm { children })
}

async fn wait_disconnected(server: &Server) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if server.connected().await? == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("agents still connected a minute after their workers stopped");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
