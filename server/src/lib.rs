//! Outpost server: the REST API, the agent hub and storage, in one process.
//!
//! [`run`] takes a bound listener, a [`Config`] and a shutdown future, so the binary and the
//! tests start the server the same way. Reading order: [`config`], [`store`], [`hub`],
//! [`dispatch`], [`api`]; [`listen`] is what accepts and times connections.
//!
//! Invariants the modules rely on (see `docs/ARCHITECTURE.md`):
//! - only `outpost-protocol` knows the wire format;
//! - every store method that touches tenant data takes the tenant id;
//! - a command is committed to the store before any frame carrying it is sent;
//! - a result is committed before the agent is acknowledged and before any waiter is woken.

pub mod admin_key;
pub mod api;
pub mod auth;
pub mod builtin;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod http_error;
pub mod hub;
pub mod listen;
pub mod metrics;
pub mod release;
pub mod seal;
pub mod secrets;
pub mod store;
pub mod tags;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use hub::Hub;
use store::{DatabaseLocation, Store};

/// Shared state handed to every handler and connection task.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Batches what agents report into few transactions.
    pub writer: store::writer::Writer,
    /// Live agent connections.
    pub hub: Arc<Hub>,
    /// Cancelled when the server shuts down; connection tasks close their sockets on it.
    pub shutdown: CancellationToken,
    /// Output bytes kept per run and stream.
    pub max_output_bytes: u64,
    /// The webhook worker and the master key.
    pub webhooks: Arc<webhooks::Webhooks>,
    /// Published release files.
    pub releases: Arc<release::Releases>,
}

/// Opens the store, bootstraps the admin key and serves on `listener` until `shutdown`
/// resolves.
pub async fn run(
    listener: std::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let fd_limit = metrics::raise_fd_limit();
    tracing::info!(
        fd_limit,
        "open-file limit (one per agent connection, plus the database and clients)"
    );
    metrics::handle();
    let (store, writer) = open_store(&config).await?;
    admin_key::bootstrap(&store, &config).await?;
    let master = load_master_key(&config)?;
    let builtin = builtin::Builtin::open(&config.data_dir, config.builds_dir.clone())?;
    builtin.log_startup();

    let state = AppState {
        writer: store::writer::Writer::start(writer, store.clone())
            .context("cannot start the store writer's thread")?,
        store: store.clone(),
        hub: Arc::new(Hub::new(Duration::from_secs(
            config.heartbeat_interval.max(1),
        ))),
        shutdown: CancellationToken::new(),
        max_output_bytes: config.max_output_bytes,
        webhooks: Arc::new(webhooks::Webhooks::new(
            master,
            config.webhook_allow_private,
        )),
        releases: Arc::new(release::Releases {
            dir: config.data_dir.join("releases"),
            builtin,
            public_url: config.public_url.clone(),
            tls: config.tls_cert.is_some(),
        }),
    };
    // A result reaches whoever waits for it as soon as its batch is committed (see
    // `Writer::on_finished`); the connection that carried it only acknowledges it.
    let (hub, webhooks) = (state.hub.clone(), state.webhooks.clone());
    state.writer.on_finished(move |runs| {
        let of_jobs = runs.iter().any(|run| run.job_id.is_some());
        hub.finished(runs);
        if of_jobs {
            webhooks.wake();
        }
    });
    tokio::spawn(webhooks::run(state.clone()));
    tokio::spawn(metrics::upkeep(state.clone()));
    listen::describe_metrics();
    let limits = listen::Limits::from_config(&config);
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(listen::tls_acceptor(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key must be given together"),
    };
    let mut metrics_listener = None;
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-listen {addr}"))?;
        metrics_listener = Some((addr, listener));
    }
    let heartbeat = Duration::from_secs(config.heartbeat_interval.max(1));
    let lost_after = Duration::from_secs(config.lost_after);
    if lost_after < heartbeat * outpost_protocol::limits::MISSED_HEARTBEATS {
        anyhow::bail!(
            "--lost-after ({} s) must be at least 3 heartbeat intervals ({} s)",
            config.lost_after,
            heartbeat.as_secs() * 3
        );
    }
    tokio::spawn(liveness_loop(state.clone()));
    tokio::spawn(sweep_loop(
        state.clone(),
        heartbeat.min(Duration::from_secs(30)),
        lost_after,
    ));

    let app = api::router()
        .route("/agent/v1/ws", axum::routing::get(hub::ws::handler))
        .route("/metrics", axum::routing::get(metrics::route))
        // Applied by the body extractors (ApiJson), whose rejection is the JSON error
        // envelope (413); tower-http's layer answered text/plain. No API handler reads a body
        // any other way.
        .layer(axum::extract::DefaultBodyLimit::max(
            outpost_protocol::limits::MAX_FRAME_BYTES,
        ))
        // Long-poll batches carry many frames: their routes have their own, larger limit.
        .merge(hub::http::router())
        // Requests are logged at debug level, without headers (they carry keys).
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state.clone());

    let token = state.shutdown.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        token.cancel();
    });

    listener.set_nonblocking(true)?;
    listen::deepen_backlog(&listener);
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    // Counted once everything but the connections is open (the database's files, the
    // listeners): the rest of the open-file limit, less a reserve, is for connections.
    let fds_in_use = listen::open_fds().unwrap_or(64);
    let caps = listen::caps(&config, fd_limit, fds_in_use);
    let registry = listen::Registry::new(caps);
    tracing::info!(
        max_connections = caps.connections,
        max_unauthenticated = caps.unauthenticated,
        max_unauthenticated_per_address = caps.per_address,
        header_timeout_s = limits.header.as_secs(),
        body_timeout_s = limits.body.as_secs(),
        idle_timeout_s = limits.idle.as_secs(),
        keepalive_timeout_s = limits.keepalive.as_secs(),
        "connection limits"
    );
    if let Some((addr, listener)) = metrics_listener {
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(metrics::open_route))
            .with_state(state.clone());
        tracing::info!(%addr, "serving unauthenticated /metrics");
        // Its connections count against the same caps: they use the same descriptors.
        tokio::spawn(listen::serve(
            listener,
            None,
            app,
            registry.clone(),
            limits,
            state.shutdown.clone(),
        ));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Printed once the database is ready and the admin key written: scripts and tests wait
    // for this line.
    println!("outpost-server listening on {scheme}://{addr}");
    listen::serve(listener, tls, app, registry, limits, state.shutdown.clone()).await;
    Ok(())
}

/// The store, and the writer's own handle on it (see [`Store::open_writer`]).
async fn open_store(config: &Config) -> anyhow::Result<(Store, Store)> {
    let location = match &config.database_url {
        Some(url) => DatabaseLocation::Url(url.clone()),
        None => {
            create_private_dir(&config.data_dir)?;
            DatabaseLocation::Sqlite(config.data_dir.join("outpost.db"))
        }
    };
    let context = || match &location {
        DatabaseLocation::Sqlite(path) => format!("opening SQLite database {}", path.display()),
        DatabaseLocation::Url(_) => "connecting to --database-url".to_owned(),
    };
    let store = Store::open(&location).await.with_context(context)?;
    let writer = Store::open_writer(&location).await.with_context(context)?;
    Ok((store, writer))
}

/// `OUTPOST_MASTER_KEY`, or `<data-dir>/master.key` (created 0600 on first start).
fn load_master_key(config: &Config) -> anyhow::Result<seal::MasterKey> {
    if let Some(key) = &config.master_key {
        return seal::MasterKey::parse(key).map_err(anyhow::Error::msg);
    }
    create_private_dir(&config.data_dir)?;
    let path = config.data_dir.join("master.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            seal::MasterKey::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = seal::MasterKey::generate();
            write_private(&path, &format!("{key}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "created the master key for secrets at rest; back it up with the database");
            seal::MasterKey::parse(&key).map_err(anyhow::Error::msg)
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Closes the connections of agents gone silent or whose key expired ([`hub::Hub::sweep`]).
async fn liveness_loop(state: AppState) {
    let mut tick = tokio::time::interval(state.hub.sweep_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => {
                state.hub.sweep();
            }
        }
    }
}

/// Housekeeping: expires commands whose TTL passed undelivered and marks runs lost whose agent
/// went away for longer than `--lost-after`. Runs every 30 s, or every heartbeat interval when
/// that is shorter.
async fn sweep_loop(state: AppState, every: Duration, lost_after: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(err) = sweep(&state, lost_after).await {
                    tracing::warn!(error = %err, "housekeeping failed; retrying at the next tick");
                }
            }
        }
    }
}

async fn sweep(state: &AppState, lost_after: Duration) -> Result<(), store::StoreError> {
    let expired = state.store.expire_commands().await?;
    let any_expired = !expired.is_empty();
    if any_expired {
        tracing::info!(expired = expired.len(), "commands expired undelivered");
        for (tenant_id, job_id) in state.store.refresh_running_jobs().await? {
            state.hub.job_changed(&tenant_id, &job_id);
        }
        // Callers waiting on them (`?wait`, a queued command) learn the outcome now.
        state.hub.finished(expired);
    }
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(lost_after).unwrap_or(chrono::Duration::hours(1));
    let lost = state.store.mark_lost(cutoff).await?;
    for run in &lost {
        tracing::warn!(run_id = %run.id, agent_id = %run.agent_id, "run lost: its agent did not come back");
    }
    let any_lost = !lost.is_empty();
    if any_lost {
        state.hub.finished(lost);
    }
    if any_expired || any_lost {
        state.webhooks.wake();
    }
    Ok(())
}

pub(crate) fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))
}

fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}
