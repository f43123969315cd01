//! A worker process: thousands of simulated agents speaking protocol v1 to a server, or spread
//! over the nodes of a cluster (agent `i` to node `i % nodes`).
//!
//! Each simulated agent does what the real agent does on the wire, and nothing else: connect
//! (from one of several 127.0.0.x source addresses, so that no address runs out of ephemeral
//! ports), read `connected`, send `register`, heartbeat at the interval the server gives,
//! `ack` every command and answer `ping`/`echo` at once (`echo` with its message as output first). It reconnects like the real agent:
//! exponential backoff from 1 s to 60 s with full jitter, reset after a healthy connection.
//!
//! It answers `update` as an agent under `outpost-supervisor` does: `ack`, an ok result, the
//! connection closed (the agent exits 43), and 200–500 ms later (the supervisor installing and
//! starting the new build) a new connection whose `register` carries the requested version and
//! the supervisor's report (`update_status: updated`). An update to `--crash-version` is the
//! release that crashes at start: the agent comes back at its old version with the report the
//! real supervisor makes after restoring the previous build (`rolled_back`, "exited 3 times
//! within 30 s"). The agents start at `--agent-version`; what an update changed is kept across
//! reconnects (a server restart does not undo it).
//! Commands are not journaled (no disk), so the figures measure the server, not the agents.
//! With `--tls-ca` they connect over TLS trusting only that CA, and with `--certificates` each
//! first enrolls and then connects by its own certificate (the `handshakes` scenario).
//!
//! A worker lives until its stdin closes, so it can never outlive the harness that started it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use outpost_protocol::release::{UpdateStatus, Version, update_status};
use outpost_protocol::{
    AgentFrame, HeartbeatStatus, PROTOCOL_VERSION, RegisterData, Response, ServerFrame, commands,
};
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// What one worker simulates.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Server addresses (plain HTTP/WebSocket), comma-separated: agent `i` connects to the
    /// `i % count`th.
    #[arg(long, value_delimiter = ',', required = true)]
    pub server: Vec<SocketAddr>,
    /// Agent key (opa_…).
    #[arg(long, env = "OUTPOST_BENCH_AGENT_KEY", hide_env_values = true)]
    pub key: String,
    /// High 64 bits of every agent id of this run.
    #[arg(long)]
    pub run_id: u64,
    /// Index of the first agent.
    #[arg(long)]
    pub first: u64,
    /// Agents in this worker.
    #[arg(long)]
    pub count: u64,
    /// Source addresses 127.0.0.2 .. 127.0.0.(1+sources).
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// Agent `i` gets tag `first-S` for each S here with i < S (fan-out targets).
    #[arg(long, value_delimiter = ',')]
    pub tag_sizes: Vec<u64>,
    /// Handshakes in flight at once in this worker.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// The version the agents register with until an `update` changes it.
    #[arg(long, default_value = "bench")]
    pub agent_version: String,
    /// An `update` to this version "crashes": the agent comes back at its old version,
    /// reporting that its supervisor rolled the update back.
    #[arg(long)]
    pub crash_version: Option<String>,
    /// Connect over TLS (`wss://`), trusting only the CA in this PEM file (the server's agent
    /// CA, which signs its certificate under `--tls-auto`).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Each agent enrolls first (a P-256 key and a CSR made by the real agent's code, `POST
    /// /agent/v1/enroll` with the key) and connects with its certificate from then on, as the
    /// real agent does (TLS session resumption off). Needs `--tls-ca`.
    #[arg(long, requires = "tls_ca")]
    pub certificates: bool,
}

/// The id of agent `index` in run `run_id`: the same on every reconnect, like a real agent's
/// id kept in its state directory.
pub fn agent_id(run_id: u64, index: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(run_id, index)
}

struct Shared {
    args: WorkerArgs,
    /// `ws://ADDR/agent/v1/ws` (`wss://` over TLS) for each of `args.server`.
    urls: Vec<String>,
    connect: Semaphore,
    connected: AtomicU64,
    failures: AtomicU64,
    /// With `--tls-ca`.
    tls: Option<Tls>,
}

/// What connecting over TLS needs.
struct Tls {
    /// The CA, the only root trusted.
    roots: Arc<rustls::RootCertStore>,
    /// The agents' configuration when they connect by key.
    by_key: Arc<rustls::ClientConfig>,
    /// `POST /agent/v1/enroll` (with `--certificates`): a client per source address, as the
    /// agents' connections are spread (the server sheds unauthenticated connections past 256
    /// from one address; thousands of real agents come from thousands).
    enroll: Vec<reqwest::Client>,
}

impl Tls {
    fn load(path: &std::path::Path, sources: u8) -> anyhow::Result<Self> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert?)?;
        }
        let roots = Arc::new(roots);
        let by_key = Arc::new(
            client_config()?
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        );
        let enroll = (0..sources.max(1))
            .map(|n| {
                reqwest::Client::builder()
                    .use_preconfigured_tls((*by_key).clone())
                    .local_address(std::net::IpAddr::V4(source_address(u64::from(n), sources)))
                    .pool_max_idle_per_host(16)
                    .timeout(Duration::from_secs(60))
                    .build()
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            roots,
            by_key,
            enroll,
        })
    }
}

fn client_config()
-> anyhow::Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?)
}

/// Runs the worker until stdin closes.
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    crate::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let tls = args
            .tls_ca
            .as_deref()
            .map(|ca| Tls::load(ca, args.sources))
            .transpose()?;
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let shared = Arc::new(Shared {
            urls: args
                .server
                .iter()
                .map(|addr| format!("{scheme}://{addr}/agent/v1/ws"))
                .collect(),
            tls,
            connect: Semaphore::new(args.connect_concurrency.max(1)),
            connected: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            args,
        });
        for index in shared.args.first..shared.args.first + shared.args.count {
            tokio::spawn(agent(shared.clone(), index));
        }
        // The harness closes our stdin when it is done (or dies).
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await?;
        // Dropping the runtime ends every agent.
        anyhow::Ok(())
    })
}

/// What a simulated agent keeps from one connection to the next: what its state directory
/// and its supervisor would.
struct Installed {
    /// The version it registers with.
    version: String,
    /// The supervisor's report on the last update, sent with every `register` after it.
    report: Option<Box<UpdateStatus>>,
}

async fn agent(shared: Arc<Shared>, index: u64) {
    let mut attempt = 0u32;
    let mut rng = Jitter(index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut installed = Installed {
        version: shared.args.agent_version.clone(),
        report: None,
    };
    // Over TLS: the configuration this agent connects with, its own certificate's if it
    // enrolls (made once: a real agent keeps its certificate across reconnects).
    let tls = match &shared.tls {
        None => None,
        Some(tls) if shared.args.certificates => {
            Some(enroll_until_done(&shared, tls, index, &mut rng).await)
        }
        Some(tls) => Some(tls.by_key.clone()),
    };
    loop {
        let started = Instant::now();
        match session(&shared, index, &installed, tls.as_ref()).await {
            Ok(to) => {
                // Asked to update: the agent exited; the supervisor installs and starts the
                // new build (or, for the crashing one, restores the old one after it crashed).
                attempt = 0;
                let pause = Duration::from_millis(200 + (rng.next() * 300.0) as u64);
                tokio::time::sleep(pause).await;
                let from = installed.version.clone();
                let crashed = shared.args.crash_version.as_deref() == Some(to.as_str());
                let (status, reason) = if crashed {
                    (
                        update_status::ROLLED_BACK,
                        Some("exited 3 times within 30 s (simulated)".to_owned()),
                    )
                } else {
                    installed.version.clone_from(&to);
                    (update_status::UPDATED, None)
                };
                installed.report = Some(Box::new(UpdateStatus {
                    status: status.to_owned(),
                    from: Some(from),
                    to: Some(to),
                    reason,
                    at: chrono::Utc::now(),
                }));
                continue;
            }
            Err(err) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                log_first(index, &err);
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            attempt = 0;
        }
        // The real agent's policy: uniform in [0, min(60 s, 2^attempt s)].
        let ceiling = Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60));
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(ceiling.mul_f64(rng.next())).await;
    }
}

/// Enrolls agent `index`, retrying (after the server's `Retry-After` when it limits the rate)
/// until it has a certificate; returns the configuration that presents it.
async fn enroll_until_done(
    shared: &Shared,
    tls: &Tls,
    index: u64,
    rng: &mut Jitter,
) -> Arc<rustls::ClientConfig> {
    loop {
        let wait = match enroll(shared, tls, index).await {
            Ok(Enrolled::Config(config)) => return config,
            Ok(Enrolled::RetryAfter(wait)) => wait,
            Err(err) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                log_first(index, &err);
                Duration::from_secs(1)
            }
        };
        tokio::time::sleep(wait.mul_f64(1.0 + rng.next())).await;
    }
}

enum Enrolled {
    /// The configuration presenting the agent's new certificate.
    Config(Arc<rustls::ClientConfig>),
    /// Refused for the rate: try again after this long.
    RetryAfter(Duration),
}

async fn enroll(shared: &Shared, tls: &Tls, index: u64) -> anyhow::Result<Enrolled> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let args = &shared.args;
    let _permit = shared.connect.acquire().await?;
    let id = agent_id(args.run_id, index);
    let (key, csr) = outpost_agent::identity::new_key_and_csr(id)?;
    let server = args.server[(index % args.server.len() as u64) as usize];
    let client = &tls.enroll[(index % tls.enroll.len() as u64) as usize];
    let response = client
        .post(format!("https://{server}/agent/v1/enroll"))
        .bearer_auth(&args.key)
        .json(&json!({"agent_id": id, "csr": csr}))
        .send()
        .await?;
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        let seconds = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        return Ok(Enrolled::RetryAfter(Duration::from_secs(seconds)));
    }
    let body: serde_json::Value = response.json().await?;
    if !status.is_success() {
        anyhow::bail!("enrollment refused ({status}): {body}");
    }
    let certificate = body
        .get("certificate")
        .and_then(serde_json::Value::as_str)
        .context("no certificate in the enrollment's answer")?;
    let chain = CertificateDer::pem_slice_iter(certificate.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the certificate: {e}"))?;
    let mut config = client_config()?
        .with_root_certificates(tls.roots.clone())
        .with_client_auth_cert(
            chain,
            PrivateKeyDer::try_from(key).map_err(anyhow::Error::msg)?,
        )?;
    // As the real agent: a resumed TLS 1.3 session keeps the client certificate of the
    // handshake it resumes, so an agent with a certificate never resumes.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Enrolled::Config(Arc::new(config)))
}

/// The source address of agent `index`: 127.0.0.2 .. 127.0.0.(1+sources).
fn source_address(index: u64, sources: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (index % u64::from(sources.max(1))) as u8)
}

/// Agent 0 speaks for all: thousands of identical errors help nobody.
fn log_first(index: u64, err: &anyhow::Error) {
    if index == 0 {
        eprintln!("outpost-bench worker: agent 0: {err:#}");
    }
}

/// A small xorshift generator: jitter needs no cryptographic randomness.
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One connection, until it fails (an error) or the server asks for an update (the version).
async fn session(
    shared: &Shared,
    index: u64,
    installed: &Installed,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> anyhow::Result<String> {
    let args = &shared.args;
    let node = (index % args.server.len() as u64) as usize;
    let mut ws = {
        let _permit = shared.connect.acquire().await?;
        let source = source_address(index, args.sources);
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
        let stream =
            tokio::time::timeout(Duration::from_secs(30), socket.connect(args.server[node]))
                .await
                .context("connect timed out")??;
        stream.set_nodelay(true)?;
        let stream = match tls {
            None => MaybeTlsStream::Plain(stream),
            Some(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(args.server[node].ip().into());
                let tls = tokio::time::timeout(
                    Duration::from_secs(30),
                    tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream),
                )
                .await
                .context("TLS handshake timed out")??;
                MaybeTlsStream::Rustls(tls)
            }
        };
        let mut request = shared.urls[node].as_str().into_client_request()?;
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {}", args.key))?,
        );
        // Frames are fed into the write buffer and leave on the flush that follows them (an
        // ack and its result in one `write`, see `serve`).
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(4 * 1024);
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
        )
        .await
        .context("handshake timed out")??;
        ws
    };
    let interval = match next_frame(&mut ws).await? {
        ServerFrame::Connected(c) => Duration::from_secs(u64::from(c.heartbeat_interval_s.max(1))),
        other => anyhow::bail!("expected `connected`, got {other:?}"),
    };
    let tags = args
        .tag_sizes
        .iter()
        .filter(|size| index < **size)
        .map(|size| format!("first-{size}"))
        .collect();
    let register = AgentFrame::Register {
        data: RegisterData {
            agent_id: agent_id(args.run_id, index),
            hostname: format!("sim-{index}"),
            ip: String::new(),
            version: installed.version.clone(),
            os: "Linux".into(),
            arch: std::env::consts::ARCH.into(),
            protocol: PROTOCOL_VERSION,
            capabilities: vec!["ping".into(), "echo".into(), commands::UPDATE.into()],
            tags,
            scripts: Vec::new(),
            update_status: installed.report.clone(),
            library: None,
        },
    };
    ws.send(Message::text(register.encode())).await?;
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let result = serve(&mut ws, interval, index).await;
    shared.connected.fetch_sub(1, Ordering::Relaxed);
    result
}

type Ws = tokio_tungstenite::WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_frame(ws: &mut Ws) -> anyhow::Result<ServerFrame> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(ServerFrame::decode(text.as_str())?),
            Some(Ok(Message::Close(frame))) => anyhow::bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
            None => anyhow::bail!("connection ended"),
        }
    }
}

/// Serves commands and heartbeats until the connection fails or an `update` ends it (the
/// version asked for).
async fn serve(ws: &mut Ws, interval: Duration, index: u64) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            frame = next_frame(ws) => {
                if let ServerFrame::Command(command) = frame? {
                    // The ack and the result leave in one `write`: a simulated agent answers at
                    // once, and a second `write` would add a loopback traversal per run to the
                    // harness's share of this machine's two cores (the server reads the same
                    // two frames either way; a real agent's come apart, see BENCHMARKS).
                    let id = command.command_id;
                    ws.feed(Message::text(AgentFrame::Ack { command_id: id }.encode())).await?;
                    // `echo` prints its message first, as one chunk of output (the soak's
                    // jobs with output). A message `vary:TEXT` makes a fleet's answers differ
                    // as real ones do (the `results` scenario): `TEXT N%` with N the agent's
                    // index modulo 50, and every 20th agent fails.
                    let message = command.data.get("message").and_then(|m| m.as_str()).unwrap_or("");
                    let varied = message.strip_prefix("vary:");
                    let failing = varied.is_some() && index.is_multiple_of(20);
                    if command.command == commands::ECHO && !message.is_empty() {
                        let text = match varied {
                            Some(text) => format!("{text} {}%\n", index % 50),
                            None => message.to_owned(),
                        };
                        let output = outpost_protocol::Output {
                            command_id: id,
                            stream: outpost_protocol::OutputStream::Stdout,
                            seq: 0,
                            data: Some(text),
                            data_b64: None,
                        };
                        ws.feed(Message::text(AgentFrame::Output(output).encode())).await?;
                    }
                    if command.command == commands::UPDATE {
                        // As the real agent: the result says it exits 43 for its supervisor.
                        let version = command.data.get("version").and_then(|v| v.as_str());
                        let Some(version) = version.filter(|v| v.parse::<Version>().is_ok()) else {
                            let refused = Response::failed(id, outpost_protocol::codes::BAD_DATA, "update: simulated agents need data.version, a version like \"1.2.3\"".to_owned());
                            ws.send(Message::text(AgentFrame::Response(refused).encode())).await?;
                            continue;
                        };
                        let force = command.data.get("force").and_then(serde_json::Value::as_bool).unwrap_or(false);
                        let done = Response::ok(id, json!({"exit_code": 43, "version": version, "force": force}));
                        ws.send(Message::text(AgentFrame::Response(done).encode())).await?;
                        let _ = ws.close(None).await;
                        return Ok(version.to_owned());
                    }
                    let response = match command.command.as_str() {
                        commands::PING => Response::ok(id, json!({"pong": true})),
                        commands::ECHO if failing => Response::failed(id, "simulated", "a simulated failure".to_owned()),
                        commands::ECHO => Response::ok(id, json!({"message": command.data.get("message")})),
                        other => Response::failed(id, outpost_protocol::codes::UNSUPPORTED, format!("simulated agents do not run {other}")),
                    };
                    ws.send(Message::text(AgentFrame::Response(response).encode())).await?;
                }
            }
            _ = beat.tick() => {
                let status = HeartbeatStatus {
                    uptime_s: started.elapsed().as_secs(),
                    cpu_percent: 0.0,
                    memory_percent: 0.0,
                    disk_percent: 0.0,
                    load1: 0.0,
                    timestamp: chrono::Utc::now(),
                };
                ws.send(Message::text(AgentFrame::Heartbeat { status }.encode())).await?;
            }
        }
    }
}
