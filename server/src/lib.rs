//! Outpost server: the REST API, the agent hub and storage, in one process.
//!
//! [`run`] takes a bound listener, a [`Config`] and a shutdown future, so the binary and the
//! tests start the server the same way, and wires the layers (`docs/ARCHITECTURE.md` has the
//! code map and the rules between them, which `tests/tidy.rs` checks): [`api`] (HTTP) calls
//! [`service`] (every domain operation), which uses [`store`] (rows), the [`bus::Bus`] (agents
//! wherever they are connected; [`hub`] is its in-process implementation) and [`finish`] (the
//! one path by which commands end); [`domain`] is the vocabulary they share, and [`listen`]
//! accepts and times connections.
//!
//! Invariants the modules rely on (see `docs/ARCHITECTURE.md`):
//! - only `outpost-protocol` knows the wire format;
//! - every store method that touches tenant data takes the tenant id;
//! - a command is committed to the store before any frame carrying it is sent;
//! - a result is committed before the agent is acknowledged and before any waiter is woken.

pub mod config;
pub mod ops;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use config::Config;
use hub::Hub;
use outpost_core::{builtin, bus, finish, forwarded, frames, mail, service};
use outpost_store as store;
use outpost_store::{metrics, private_files, seal};
use outpost_web::{api, cluster, http_error, hub, listen, ui};
use store::{DatabaseLocation, Store};

/// Heartbeat intervals an agent may be gone before `agent.offline` is recorded: with the
/// sweep's period (one interval) an agent that went away is announced within three (CONTRACT.md §11),
/// and a shorter disconnect is never announced.
const OFFLINE_AFTER_HEARTBEATS: u32 = 2;

/// Serves on `listener` until `shutdown` resolves: each step below is a function of its own.
pub async fn run(
    listener: std::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    validate(&config)?;
    let sso = config.sso().map_err(anyhow::Error::msg)?;
    let fd_limit = metrics::raise_fd_limit();
    tracing::info!(
        fd_limit,
        "open-file limit (one per agent connection, plus the database and clients)"
    );
    metrics::handle();
    let opened = open(&config).await?;
    let stop = CancellationToken::new();
    let node = join(&config, &listener, &opened, &stop).await?;
    let pki = pki(&config, &opened, &stop).await?;
    let mut wired = build_services(&config, opened, node, pki, &stop)?;
    wired.services = wired.services.with_sso(sso, config.allow_signup);
    wired
        .services
        .sso
        .check_domains()
        .await
        .map_err(anyhow::Error::msg)?;
    if let Some(name) = wired.services.sso.name() {
        tracing::info!(provider = %name, "single sign-on is on: GET /api/auth/oidc/start");
    }
    spawn_workers(&config, &wired, &stop);
    let app = router(&wired);
    serve(listener, &config, app, wired, fd_limit, stop, shutdown).await
}

/// The flags that only make sense together, checked before anything is opened.
fn validate(config: &Config) -> anyhow::Result<()> {
    if config.tls_cert.is_some() != config.tls_key.is_some() {
        anyhow::bail!("--tls-cert and --tls-key must be given together");
    }
    if config.tls_auto && config.tls_cert.is_some() {
        anyhow::bail!("--tls-auto and --tls-cert exclude each other");
    }
    if config.agent_auth == outpost_core::access::AgentAuthMode::Cert && !serves_tls(config) {
        anyhow::bail!(
            "--agent-auth cert needs the server to serve TLS itself (--tls-auto, or --tls-cert \
             with --tls-key): client certificates are checked in its TLS handshake"
        );
    }
    if config.smtp_url.is_some() && config.public_url.is_none() {
        anyhow::bail!(
            "--smtp-url needs --public-url: mailed links (password resets, invites) are built \
             from it, never from a request's Host header"
        );
    }
    if config.require_verified_email && config.smtp_url.is_none() {
        anyhow::bail!(
            "--require-verified-email needs --smtp-url: verification codes are sent by mail"
        );
    }
    let heartbeat = Duration::from_secs(config.heartbeat_interval.max(1));
    if Duration::from_secs(config.lost_after)
        < heartbeat * outpost_protocol::limits::MISSED_HEARTBEATS
    {
        anyhow::bail!(
            "--lost-after ({} s) must be at least 3 heartbeat intervals ({} s)",
            config.lost_after,
            heartbeat.as_secs() * 3
        );
    }
    Ok(())
}

/// Whether this server terminates TLS itself.
fn serves_tls(config: &Config) -> bool {
    config.tls_auto || config.tls_cert.is_some()
}

/// The agents' CA and the server's TLS certificate (CONTRACT.md §19).
struct Pki {
    /// The CA, when the server serves TLS (client certificates are checked in its handshake).
    ca: Option<Arc<outpost_core::pki::AgentCa>>,
    /// What the TLS acceptor serves.
    server_cert: Option<Arc<listen::ServerCert>>,
    /// Under `--tls-auto`: the pin of the server's key and the CA's fingerprint, for the
    /// install line.
    pins: Option<service::releases::InstallPins>,
}

/// Loads (or makes, on the first start) the agents' CA and the server's certificate; under
/// `--tls-auto` also keeps that certificate re-issued before it runs out.
async fn pki(config: &Config, opened: &Opened, stop: &CancellationToken) -> anyhow::Result<Pki> {
    use outpost_core::pki::{self, AgentCa};
    if !serves_tls(config) {
        return Ok(Pki {
            ca: None,
            server_cert: None,
            pins: None,
        });
    }
    let validity = config.agent_cert_validity;
    let ca = match (&config.agent_ca_cert, &config.agent_ca_key) {
        (Some(cert), Some(key)) => {
            let cert_pem = std::fs::read_to_string(cert)
                .with_context(|| format!("reading --agent-ca-cert {}", cert.display()))?;
            let key_pem = std::fs::read_to_string(key)
                .with_context(|| format!("reading --agent-ca-key {}", key.display()))?;
            AgentCa::from_pem(&cert_pem, &key_pem, validity)
                .with_context(|| format!("--agent-ca-cert {}", cert.display()))?
        }
        _ => AgentCa::load_or_create(&opened.store, &opened.master, validity).await?,
    };
    let ca = Arc::new(ca);
    tracing::info!(fingerprint = %ca.fingerprint(), agent_auth = config.agent_auth.as_str(), "agent CA ready");
    if !config.tls_auto {
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
            anyhow::bail!("--tls-cert and --tls-key must be given together");
        };
        return Ok(Pki {
            ca: Some(ca),
            server_cert: Some(Arc::new(listen::ServerCert::from_files(cert, key)?)),
            pins: None,
        });
    }
    let names = tls_auto_names(config);
    let identity = pki::server_identity(&opened.store, &opened.master, &ca, &names).await?;
    tracing::info!(names = %names.join(","), expires_at = %identity.expires_at, pin = %identity.pin, "serving TLS with a certificate from the agent CA (--tls-auto)");
    let server_cert = Arc::new(listen::ServerCert::from_pem(
        identity.chain_pem.as_bytes(),
        identity.key_pem.as_bytes(),
        "the --tls-auto certificate",
    )?);
    // Re-issued (same key, so the pin holds) when a third of its life is left; checked twice
    // a day.
    let (store, master, renewing, ca_for_task) = (
        opened.store.clone(),
        opened.master.clone(),
        server_cert.clone(),
        ca.clone(),
    );
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(12 * 3600));
        every.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            match pki::server_identity(&store, &master, &ca_for_task, &names).await {
                Ok(identity) => {
                    if let Err(err) =
                        renewing.replace(identity.chain_pem.as_bytes(), identity.key_pem.as_bytes())
                    {
                        tracing::warn!(error = %err, "could not use the re-issued TLS certificate");
                    }
                }
                Err(err) => tracing::warn!(error = %err, "could not re-issue the TLS certificate"),
            }
        }
    });
    Ok(Pki {
        pins: Some(service::releases::InstallPins {
            server_key: identity.pin,
            ca_fingerprint: ca.fingerprint().to_owned(),
        }),
        ca: Some(ca),
        server_cert: Some(server_cert),
    })
}

/// `--tls-auto-names`, or its default.
fn tls_auto_names(config: &Config) -> Vec<String> {
    if !config.tls_auto_names.is_empty() {
        return config
            .tls_auto_names
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
    }
    let mut names = Vec::new();
    if let Some(host) = config
        .public_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_owned()))
    {
        names.push(host);
    }
    for name in [
        host_name(),
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ] {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// What is opened from the data directory and the database before anything is wired.
struct Opened {
    store: Store,
    /// The writer's own handle on the database ([`Store::open_writer`]).
    writer: Store,
    master: Arc<seal::MasterKey>,
    builtin: builtin::Builtin,
}

/// Opens the store, bootstraps the admin key, checks the master key against the database and
/// opens the builds shipped beside the server.
async fn open(config: &Config) -> anyhow::Result<Opened> {
    let (store, writer) = open_store(config).await?;
    ops::admin_key::bootstrap(&store, config).await?;
    let master = load_master_key(config)?;
    let fingerprint = master.fingerprint("outpost-master-key-check", b"");
    if !store.check_master_key(&fingerprint).await? {
        anyhow::bail!(
            "the master key (OUTPOST_MASTER_KEY, or {}) is not the one this database's secrets \
             are sealed with: start with the key used before (every node sharing a database \
             needs the same one)",
            config.data_dir.join("master.key").display()
        );
    }
    let builtin = builtin::Builtin::open(&config.data_dir, config.builds_dir.clone())?;
    builtin.log_startup();
    Ok(Opened {
        store,
        writer,
        master: Arc::new(master),
        builtin,
    })
}

/// This node's place among the nodes sharing a database: its hub, and the bus that reaches
/// agents wherever they are connected (the cluster on PostgreSQL, the hub alone on SQLite).
struct Node {
    hub: Arc<Hub>,
    bus: Arc<dyn bus::Bus>,
    /// The cluster membership, on PostgreSQL (it may be the only node).
    cluster: Option<Arc<cluster::Cluster>>,
}

/// Builds this node's hub and, on PostgreSQL, joins the nodes sharing the database.
async fn join(
    config: &Config,
    listener: &std::net::TcpListener,
    opened: &Opened,
    stop: &CancellationToken,
) -> anyhow::Result<Node> {
    let heartbeat = Duration::from_secs(config.heartbeat_interval.max(1));
    let mut hub = Hub::new(
        heartbeat,
        frames::Frames::new(opened.master.clone(), config.max_output_bytes),
    );
    let store = &opened.store;
    // On PostgreSQL the node joins the others sharing the database (it may be the only one):
    // its bus reaches their agents and waiters too (see `cluster`).
    let node_id = store.is_postgres().then(cluster::Cluster::new_node_id);
    if let Some(id) = &node_id {
        hub = hub.on_node(id);
    }
    let hub = Arc::new(hub);
    let Some(id) = node_id else {
        // The only node: nobody is connected yet, whatever rows a crash left behind.
        let released = store.release_agents_at_start().await?;
        if released > 0 {
            tracing::info!(
                released,
                "agents marked disconnected: the server had stopped without recording it"
            );
        }
        let sends = store
            .release_sends_at_start(outpost_core::service::LOCAL_NODE)
            .await?;
        if sends > 0 {
            tracing::info!(
                sends,
                "deliveries, mails or webhooks the last run had begun are sent again (receivers deduplicate by their id)"
            );
        }
        return Ok(Node {
            bus: hub.clone(),
            hub,
            cluster: None,
        });
    };
    let address = listener.local_addr()?.to_string();
    let name = config
        .node_name
        .clone()
        .unwrap_or_else(|| format!("{}:{}", host_name(), config.listen.port()));
    let joined =
        cluster::Cluster::start(id, name, address, store.clone(), hub.clone(), stop.clone())
            .await
            .context("joining the nodes on --database-url")?;
    Ok(Node {
        bus: joined.clone(),
        hub,
        cluster: Some(joined),
    })
}

/// Everything the router and the workers need.
struct Wired {
    services: service::Services,
    /// The agents' routes' handles.
    agents: hub::Context,
    node: Node,
    /// The CA and the server's certificate.
    pki: Pki,
}

/// Starts the store's writer and builds the finish path and the services from the flags.
fn build_services(
    config: &Config,
    opened: Opened,
    node: Node,
    pki: Pki,
    stop: &CancellationToken,
) -> anyhow::Result<Wired> {
    let Opened {
        store,
        writer,
        master,
        builtin,
    } = opened;
    let writer = store::writer::Writer::start(writer, store.clone())
        .context("cannot start the store writer's thread")?;
    let webhooks_due = Arc::new(tokio::sync::Notify::new());
    let events_due = Arc::new(tokio::sync::Notify::new());
    let finish = finish::Finish::new(node.bus.clone(), webhooks_due.clone(), events_due.clone());
    // A result reaches whoever waits for it as soon as its batch is committed; the connection
    // that carried it only acknowledges it.
    let on_commit = finish.clone();
    writer.on_finished(move |runs| on_commit.finished(runs));
    let agents = hub::Context {
        store: store.clone(),
        writer: writer.clone(),
        hub: node.hub.clone(),
        finish: finish.clone(),
        shutdown: stop.clone(),
        agent_auth: config.agent_auth,
        enrollment: pki
            .ca
            .as_ref()
            .map(|ca| outpost_core::enroll::Enrollment::new(store.clone(), ca.clone())),
    };
    let releases = service::releases::Files {
        dir: config.data_dir.join("releases"),
        builtin,
        public_url: config.public_url.clone(),
        tls: serves_tls(config),
        pins: pki.pins.clone(),
    };
    let delivery = service::webhooks::Delivery::new(
        webhooks_due,
        config.webhook_allow_private,
        api::render_job,
    );
    let mut core = service::Core::new(
        store,
        writer,
        node.bus.clone(),
        finish,
        master,
        stop.clone(),
    )
    .with_max_key_days(config.max_key_days)
    .with_library_max_bytes(config.library_max_bytes)
    .with_require_verified_email(config.require_verified_email)
    .with_credential_cache(std::time::Duration::from_millis(config.credential_cache_ms));
    if let Some(mailer) = mailer(config)? {
        let public_url = config.public_url.as_deref().unwrap_or_default();
        core = core.with_mail(service::account_mail::MailSettings::new(mailer, public_url));
    }
    if let Some(cluster) = &node.cluster {
        core = core.on_node(cluster.node_id());
    }
    let limits = service::limits::Limits::new(
        config.rate_limit,
        forwarded::TrustedProxies::new(config.trusted_proxies.clone()),
    );
    tracing::info!(
        rate_limit = config.rate_limit,
        trusted_proxies = ?config.trusted_proxies,
        "rate limits (a minute, per caller on /api; 0 = off)"
    );
    let outbox = outbox(config, events_due)?;
    let mut services = service::Services::new(core, releases, delivery, outbox, limits)
        .with_signup(config.allow_signup);
    let clock = || match &config.test_clock_file {
        Some(path) => service::schedules::Clock::File(path.clone()),
        None => service::schedules::Clock::System,
    };
    services.schedules = services
        .schedules
        .with_grace(Duration::from_secs(config.schedule_grace_s))
        .with_clock(clock());
    let window = match config.retention_seconds {
        Some(seconds) => service::retention::Window::Seconds(seconds),
        None => service::retention::Window::Days(config.retention_days),
    };
    services.retention = services.retention.with_window(window).with_clock(clock());
    match window {
        service::retention::Window::Days(0) | service::retention::Window::Seconds(0) => {
            tracing::info!(
                "history retention: off (--retention-days 0 keeps everything; tenants with their own window are still cleaned)"
            );
        }
        window => tracing::info!(
            ?window,
            "history retention: finished history older than this is deleted (tenants may have their own window)"
        ),
    }
    if config.allow_signup {
        tracing::info!("signup is on: POST /api/auth/register makes a tenant and its owner");
    }
    Ok(Wired {
        services,
        agents,
        node,
        pki,
    })
}

/// The integrations' outbox, with the SMTP relay of `--smtp-url` when there is one.
fn outbox(
    config: &Config,
    events_due: Arc<tokio::sync::Notify>,
) -> anyhow::Result<service::integrations::Outbox> {
    let outbox = service::integrations::Outbox::new(
        config.webhook_allow_private,
        config.public_url.clone(),
        host_name(),
    )
    .with_wake(events_due);
    let Some(mailer) = mailer(config)? else {
        tracing::info!(
            "no --smtp-url: email integrations are stored, and their deliveries fail saying SMTP is not configured; nothing is mailed to people"
        );
        return Ok(outbox);
    };
    tracing::info!(
        relay = mailer.relay(),
        "email integrations and mail to people (codes, resets, invites) go through this SMTP relay"
    );
    Ok(outbox.with_mailer(mailer))
}

/// The SMTP relay of `--smtp-url` and `--smtp-from`, when there is one.
fn mailer(config: &Config) -> anyhow::Result<Option<mail::Mailer>> {
    let Some(url) = &config.smtp_url else {
        return Ok(None);
    };
    let from = config
        .smtp_from
        .clone()
        .unwrap_or_else(|| format!("Outpost <outpost@{}>", host_name()));
    Ok(Some(
        mail::Mailer::new(url, &from).map_err(anyhow::Error::msg)?,
    ))
}

/// The background loops: deliveries, schedules, integrations, retention, metrics upkeep, the
/// hub's liveness and the health sweeps. Each stops with `stop`.
fn spawn_workers(config: &Config, wired: &Wired, stop: &CancellationToken) {
    let services = &wired.services;
    tokio::spawn(services.webhooks.clone().run());
    tokio::spawn(services.schedules.clone().run());
    tokio::spawn(services.integrations.clone().run());
    tokio::spawn(services.retention.clone().run());
    tokio::spawn(services.digests.clone().run());
    tokio::spawn(services.rollouts.clone().run());
    tokio::spawn(services.account_mail.clone().run());
    tokio::spawn(metrics::upkeep(stop.clone()));
    tokio::spawn(liveness_loop(wired.node.hub.clone(), stop.clone()));
    let heartbeat = Duration::from_secs(config.heartbeat_interval.max(1));
    tokio::spawn(services.health.clone().run_sweeps(
        heartbeat.min(Duration::from_secs(30)),
        Duration::from_secs(config.lost_after),
        heartbeat * OFFLINE_AFTER_HEARTBEATS,
    ));
}

/// The REST API, the dashboard, `/metrics` and the agents' routes, with the layers every
/// request goes through.
fn router(wired: &Wired) -> axum::Router {
    let state = api::AppState {
        services: wired.services.clone(),
    };
    api::router(state.clone())
        // The dashboard (CONTRACT.md §12): `/`, `/ui/…`.
        .merge(ui::router(state.clone()))
        .route("/metrics", axum::routing::get(api::metrics::route))
        // Applied by the body extractors (ApiJson), whose rejection is the JSON error
        // envelope (413); tower-http's layer answered text/plain. No API handler reads a body
        // any other way.
        .layer(axum::extract::DefaultBodyLimit::max(
            outpost_protocol::limits::MAX_FRAME_BYTES,
        ))
        .with_state(state)
        // The agents' routes, with their own handles (long-poll batches carry many frames:
        // their routes have their own, larger body limit).
        .merge(hub::router().with_state(wired.agents.clone()))
        .layer(axum::middleware::map_response(
            http_error::close_after_too_large,
        ))
        // Requests are logged at debug level, without headers (they carry keys).
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Accepts connections on `listener` (and `--metrics-listen`) under the connection limits until
/// `shutdown`, then leaves the nodes.
async fn serve(
    listener: std::net::TcpListener,
    config: &Config,
    app: axum::Router,
    wired: Wired,
    fd_limit: u64,
    stop: CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    listen::describe_metrics();
    let limits = config.connection_limits();
    let pki = &wired.pki;
    let tls = match &pki.server_cert {
        Some(cert) => Some(listen::tls_acceptor(
            cert.clone(),
            pki.ca.as_ref().map(|ca| ca.der()),
        )?),
        None => None,
    };
    let mut metrics_listener = None;
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-listen {addr}"))?;
        metrics_listener = Some((addr, listener));
    }
    let token = stop.clone();
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
    let caps = listen::caps(
        config.max_unauthenticated,
        config.max_unauthenticated_per_address,
        fd_limit,
        fds_in_use,
    );
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
            .route("/metrics", axum::routing::get(api::metrics::open_route))
            .with_state(api::AppState {
                services: wired.services.clone(),
            });
        tracing::info!(%addr, "serving unauthenticated /metrics");
        // Its connections count against the same caps: they use the same descriptors.
        tokio::spawn(listen::serve(
            listener,
            None,
            app,
            registry.clone(),
            limits,
            stop.clone(),
        ));
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Printed once the database is ready and the admin key written: scripts and tests wait
    // for this line.
    println!("outpost-server listening on {scheme}://{addr}");
    listen::serve(listener, tls, app, registry, limits, stop).await;
    if let Some(cluster) = wired.node.cluster {
        cluster.leave().await;
    }
    Ok(())
}

/// This machine's host name, for a node's default name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "outpost".to_owned())
}

/// The store, and the writer's own handle on it (see [`Store::open_writer`]).
async fn open_store(config: &Config) -> anyhow::Result<(Store, Store)> {
    let location = match &config.database_url {
        Some(url) => DatabaseLocation::Url(url.clone()),
        None => {
            private_files::create_private_dir(&config.data_dir)?;
            DatabaseLocation::Sqlite(config.data_dir.join("outpost.db"))
        }
    };
    let context = || match &location {
        DatabaseLocation::Sqlite(path) => format!("opening SQLite database {}", path.display()),
        DatabaseLocation::Url(url) => {
            format!("connecting to --database-url {}", config::masked_url(url))
        }
    };
    let store = match &location {
        DatabaseLocation::Url(url) => open_waiting(&location, url, config.database_wait).await?,
        DatabaseLocation::Sqlite(path) => {
            let store = Store::open(&location).await.with_context(context)?;
            store
                .ensure_incremental_vacuum(path)
                .await
                .with_context(context)?;
            store
        }
    };
    let writer = Store::open_writer(&location).await.with_context(context)?;
    Ok((store, writer))
}

/// Opens a database server's store, trying again for up to `wait_s` seconds while it cannot be
/// reached (it may start after this server), with its URL named and its password masked.
async fn open_waiting(
    location: &DatabaseLocation,
    url: &str,
    wait_s: u64,
) -> anyhow::Result<Store> {
    let masked = config::masked_url(url);
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        match Store::open(location).await {
            Ok(store) => return Ok(store),
            Err(err) if err.is_transient() && started.elapsed() < Duration::from_secs(wait_s) => {
                tracing::warn!(url = %masked, error = %err, retry_in = ?delay, "cannot reach the database; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(err) if err.is_transient() => {
                return Err(err).with_context(|| {
                    format!("connecting to --database-url {masked} (gave up after {wait_s} s)")
                });
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("opening the database at --database-url {masked}"));
            }
        }
    }
}

/// `OUTPOST_MASTER_KEY`, or `<data-dir>/master.key` (created 0600 on first start).
fn load_master_key(config: &Config) -> anyhow::Result<seal::MasterKey> {
    if let Some(key) = &config.master_key {
        return seal::MasterKey::parse(key).map_err(anyhow::Error::msg);
    }
    private_files::create_private_dir(&config.data_dir)?;
    let path = config.data_dir.join("master.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            seal::MasterKey::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = seal::MasterKey::generate();
            private_files::write_private(&path, &format!("{key}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "created the master key for secrets at rest; back it up with the database");
            seal::MasterKey::parse(&key).map_err(anyhow::Error::msg)
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Closes the connections of agents gone silent or whose key expired ([`hub::Hub::sweep`]).
async fn liveness_loop(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(hub.sweep_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                hub.sweep();
            }
        }
    }
}
