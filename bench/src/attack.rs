//! The `sockets` scenario (issue 26 §3): while the swarm holds its agents, attacker processes
//! open sockets that never authenticate, as fast as they can, from addresses the agents do not
//! use, and the harness measures how many the server sheds per second, how long `/healthz`
//! takes on a fresh connection meanwhile, and whether every agent stayed connected.
//!
//! An attacker is this binary re-executed with `attacker` (like the swarm's workers, so each
//! has its own file limit). Each of its slots holds one socket at a time, in one of three
//! manners taken in turn: sends nothing; sends a request's headers a line a second, never
//! finishing them; sends whole headers of a `POST` and then its body a byte a second. When the
//! server closes the socket the slot opens the next one at once. An attacker lives until its
//! stdin closes, then prints its tally as one JSON line.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::report::{FLOODED, Report, percentile};
use crate::server::Server;

/// What one attacker process does.
#[derive(Debug, Clone, clap::Args)]
pub struct AttackArgs {
    /// Server address.
    #[arg(long)]
    pub server: SocketAddr,
    /// Source addresses to connect from (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<Ipv4Addr>,
    /// Sockets held at once.
    #[arg(long)]
    pub slots: usize,
}

#[derive(Default)]
struct Tally {
    opened: AtomicU64,
    closed_by_server: AtomicU64,
    failed: AtomicU64,
    /// Milliseconds the closed sockets were open, summed.
    held_ms: AtomicU64,
}

/// Runs an attacker until stdin closes.
pub fn run(args: AttackArgs) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    anyhow::ensure!(!args.sources.is_empty(), "--sources: give at least one");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tally = Arc::new(Tally::default());
    runtime.block_on(async {
        for slot in 0..args.slots {
            tokio::spawn(slot_loop(args.clone(), slot, tally.clone()));
        }
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await?;
        anyhow::Ok(())
    })?;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "opened": load(&tally.opened),
            "closed_by_server": load(&tally.closed_by_server),
            "failed": load(&tally.failed),
            "held_ms": load(&tally.held_ms),
        })
    );
    Ok(())
}

async fn slot_loop(args: AttackArgs, slot: usize, tally: Arc<Tally>) {
    let source = args.sources[slot % args.sources.len()];
    loop {
        match connect(source, args.server).await {
            Some(stream) => {
                tally.opened.fetch_add(1, Ordering::Relaxed);
                let opened = Instant::now();
                hold(stream, slot % 3).await;
                tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
                let ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
                tally.held_ms.fetch_add(ms, Ordering::Relaxed);
            }
            None => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connect(source: Ipv4Addr, server: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket
        .bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .ok()?;
    tokio::time::timeout(Duration::from_secs(10), socket.connect(server))
        .await
        .ok()?
        .ok()
}

/// Holds the socket in the slot's manner until the server closes it.
async fn hold(mut stream: TcpStream, manner: usize) {
    let (start, drip): (&[u8], &[u8]) = match manner {
        // Nothing at all.
        0 => (b"", b""),
        // Headers that never end.
        1 => (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-Slow: y\r\n"),
        // A body that never ends.
        _ => (
            b"POST /agent/v1/frames HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
            b" ",
        ),
    };
    if stream.write_all(start).await.is_err() {
        return;
    }
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = tick.tick(), if !drip.is_empty() => {
                if stream.write_all(drip).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Attacker processes, each with `slots` sockets.
struct Attackers {
    children: Vec<std::process::Child>,
}

impl Attackers {
    fn spawn(
        server: SocketAddr,
        sources: &[Ipv4Addr],
        processes: usize,
        slots: usize,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let sources: Vec<String> = sources.iter().map(ToString::to_string).collect();
        let mut children = Vec::new();
        for _ in 0..processes {
            children.push(
                std::process::Command::new(&exe)
                    .arg("attacker")
                    .arg("--server")
                    .arg(server.to_string())
                    .arg("--sources")
                    .arg(sources.join(","))
                    .arg("--slots")
                    .arg(slots.to_string())
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .context("starting an attacker process")?,
            );
        }
        Ok(Self { children })
    }

    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.children
            .iter()
            .map(|child| crate::server::cpu_seconds_of(child.id()))
            .sum()
    }

    /// Stops every attacker and adds up their tallies.
    fn stop(mut self) -> anyhow::Result<Value> {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        let mut total = json!({"opened": 0, "closed_by_server": 0, "failed": 0, "held_ms": 0});
        for child in std::mem::take(&mut self.children) {
            let out = child.wait_with_output()?;
            let tally: Value = serde_json::from_slice(&out.stdout).with_context(|| {
                format!(
                    "an attacker's tally: {:?}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })?;
            for key in ["opened", "closed_by_server", "failed", "held_ms"] {
                let sum = total[key].as_u64().unwrap_or(0) + tally[key].as_u64().unwrap_or(0);
                total[key] = json!(sum);
            }
        }
        Ok(total)
    }
}

impl Drop for Attackers {
    fn drop(&mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

/// How the scenario is run.
pub struct Plan {
    /// Agents the swarm holds.
    pub agents: u64,
    /// Attack length.
    pub secs: u64,
    /// Attacker processes.
    pub processes: usize,
    /// Sockets each holds at once.
    pub slots: usize,
    /// Source addresses of the attack.
    pub sources: Vec<Ipv4Addr>,
}

/// The server's counters of closed connections, summed over their labels.
#[derive(Clone, Copy, Default)]
struct Closed {
    shed: f64,
    timed_out: f64,
    refused: f64,
    out_of_files: f64,
}

impl Closed {
    async fn read(server: &Server) -> anyhow::Result<Self> {
        let text = server.metrics_text().await?;
        Ok(Self {
            shed: sum_metric(&text, "outpost_connections_shed_total"),
            timed_out: sum_metric(&text, "outpost_connections_timed_out_total"),
            refused: sum_metric(&text, "outpost_connections_refused_total"),
            out_of_files: sum_metric(&text, "outpost_accept_out_of_files_total"),
        })
    }
}

/// The sum of a metric's series in Prometheus text (0 when it is absent).
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs the attack and adds its rows to `report`.
pub async fn scenario(server: &Server, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let probe = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()?;
    let healthz = format!("http://{}/healthz", server.addr);
    let key = server.agent_key().await?;
    let before = Closed::read(server).await?;
    let connected_before = server.connected().await?;
    let cpu_before = server.cpu_seconds()?;
    let rss_before = server.rss_kib()?;
    eprintln!(
        "outpost-bench: attacking with {} processes x {} sockets from {:?} for {} s",
        plan.processes, plan.slots, plan.sources, plan.secs
    );
    let attackers = Attackers::spawn(server.addr, &plan.sources, plan.processes, plan.slots)?;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut failures = 0u64;
    let mut min_connected = connected_before;
    let (mut max_fds, mut max_unauthenticated, mut max_rss) = (0usize, 0f64, 0u64);
    let mut samples = 0u64;
    let (mut agent_connects, mut agent_failures) = (Vec::new(), 0u64);
    while started.elapsed() < Duration::from_secs(plan.secs) {
        let asked = Instant::now();
        match probe.get(&healthz).send().await {
            Ok(response) if response.status().is_success() => {
                latencies.push(asked.elapsed().as_secs_f64() * 1e3);
            }
            _ => failures += 1,
        }
        samples += 1;
        // Every second: a new agent's WebSocket, to its `connected` frame.
        if samples.is_multiple_of(10) {
            match agent_connect(server.addr, &key).await {
                Ok(took) => agent_connects.push(took.as_secs_f64() * 1e3),
                Err(err) => {
                    agent_failures += 1;
                    eprintln!("outpost-bench: a new agent could not connect: {err:#}");
                }
            }
        }
        // Every half second: how many agents, descriptors and unauthenticated sockets.
        if samples.is_multiple_of(5) {
            min_connected = min_connected.min(server.connected().await?);
            max_fds = max_fds.max(server.open_fds().unwrap_or(0));
            max_rss = max_rss.max(server.rss_kib()?);
            let text = server.metrics_text().await?;
            max_unauthenticated =
                max_unauthenticated.max(sum_metric(&text, "outpost_connections_unauthenticated"));
        }
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(asked.elapsed())).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let attacker_cpu = attackers.cpu_seconds()?;
    let cpu = (server.cpu_seconds()? - cpu_before) / wall * 100.0;
    let after = Closed::read(server).await?;
    let connected_end = server.connected().await?;
    let tally = attackers.stop()?;

    // Recovery: how long until the attack's sockets are gone and `/healthz` answers.
    let stopped = Instant::now();
    loop {
        let text = server.metrics_text().await?;
        if sum_metric(&text, "outpost_connections_unauthenticated") <= 2.0 {
            break;
        }
        anyhow::ensure!(
            stopped.elapsed() < Duration::from_secs(60),
            "the attack's sockets were still open a minute after it stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = probe.get(&healthz).send().await?.status();
    anyhow::ensure!(status.is_success(), "/healthz after the attack: {status}");
    let recovered = stopped.elapsed().as_secs_f64();

    latencies.sort_by(f64::total_cmp);
    agent_connects.sort_by(f64::total_cmp);
    let shed = after.shed - before.shed;
    let timed_out = after.timed_out - before.timed_out;
    let opened = tally["opened"].as_u64().unwrap_or(0);
    let closed = tally["closed_by_server"].as_u64().unwrap_or(0);
    let lived = if closed == 0 {
        "none was closed".to_owned()
    } else {
        let ms = tally["held_ms"].as_f64().unwrap_or(0.0) / closed as f64;
        format!("each socket lived {ms:.0} ms on average")
    };
    let stayed = min_connected >= plan.agents && connected_end >= plan.agents;
    report.row(
        &format!("attackers' sockets shed per second while holding {} agents", plan.agents),
        "—",
        "—",
        format!(
            "{:.0}/s shed by the caps (+{:.0}/s timed out) over {wall:.0} s; the attackers opened {:.0}/s and the server closed {:.0}/s ({} connects failed), {lived}; at most {max_unauthenticated:.0} unauthenticated at once, {max_fds} descriptors, RSS {} -> {} MiB at most; server CPU {cpu:.0} % of a core (attackers {:.0} %)",
            shed / wall,
            timed_out / wall,
            opened as f64 / wall,
            closed as f64 / wall,
            tally["failed"],
            rss_before / 1024,
            max_rss / 1024,
            attacker_cpu / wall * 100.0,
        ),
        json!({"seconds": wall, "shed": shed, "timed_out": timed_out, "shed_per_s": shed / wall,
               "timed_out_per_s": timed_out / wall, "attackers": tally,
               "attacker_processes": plan.processes, "slots": plan.slots,
               "refused": after.refused - before.refused,
               "accept_out_of_files": after.out_of_files - before.out_of_files,
               "max_unauthenticated": max_unauthenticated, "max_fds": max_fds,
               "rss_before_kib": rss_before, "rss_max_kib": max_rss,
               "server_cpu_percent": cpu, "attacker_cpu_s": attacker_cpu}),
    );
    report.row(
        "`/healthz` on a fresh connection under that attack",
        "—",
        "—",
        format!(
            "p50 {:.1} ms / p99 {:.1} ms / max {:.1} ms over {} probes, {failures} failed",
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            latencies.last().copied().unwrap_or(0.0),
            latencies.len(),
        ),
        json!({FLOODED: true, "probes": latencies.len(), "failures": failures,
               "p50_ms": percentile(&latencies, 50.0), "p99_ms": percentile(&latencies, 99.0),
               "max_ms": latencies.last()}),
    );
    report.row(
        "a new agent's WebSocket under that attack (upgrade to `connected` frame)",
        "—",
        "—",
        format!(
            "p50 {:.1} ms / p99 {:.1} ms / max {:.1} ms over {} connects, {agent_failures} failed",
            percentile(&agent_connects, 50.0),
            percentile(&agent_connects, 99.0),
            agent_connects.last().copied().unwrap_or(0.0),
            agent_connects.len(),
        ),
        json!({FLOODED: true, "connects": agent_connects.len(), "failures": agent_failures,
               "p50_ms": percentile(&agent_connects, 50.0),
               "p99_ms": percentile(&agent_connects, 99.0), "max_ms": agent_connects.last()}),
    );
    report.row(
        "agents connected through that attack",
        "all",
        "all",
        format!(
            "{} ({connected_before} before, at least {min_connected} during, {connected_end} at the end); attack's sockets gone and /healthz answering {recovered:.1} s after it stopped",
            if stayed { "all stayed" } else { "NOT all stayed" }
        ),
        json!({"before": connected_before, "min_during": min_connected, "end": connected_end,
               "all_stayed": stayed, "recovered_s": recovered}),
    );
    Ok(())
}

/// Opens an agent's WebSocket with `key` and waits for the server's `connected` frame (without
/// registering: the connection is closed right after); how long that took.
async fn agent_connect(server: SocketAddr, key: &str) -> anyhow::Result<Duration> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let started = Instant::now();
    let mut request = format!("ws://{server}/agent/v1/ws").into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {key}"))?,
    );
    let limit = Duration::from_secs(10);
    let (mut ws, _) = tokio::time::timeout(limit, tokio_tungstenite::connect_async(request))
        .await
        .context("the upgrade took over 10 s")??;
    let first = tokio::time::timeout(limit, ws.next())
        .await
        .context("no `connected` frame within 10 s")?
        .context("closed before `connected`")??;
    let took = started.elapsed();
    match first {
        Message::Text(text) => match outpost_protocol::ServerFrame::decode(text.as_str())? {
            outpost_protocol::ServerFrame::Connected(_) => {}
            other => anyhow::bail!("expected `connected`, got {other:?}"),
        },
        other => anyhow::bail!("expected `connected`, got {other:?}"),
    }
    let _ = ws.close(None).await;
    Ok(took)
}
