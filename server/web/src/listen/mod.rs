//! The accept loop and each connection's task: what stands between a socket and the router.
//!
//! `axum::serve` and `axum_server` gave no way to time out a connection that sends nothing, or
//! its headers a byte at a time, or its body never: 20,000 such sockets exhausted the open-file
//! limit and locked every agent out (issue 26). This module serves plain HTTP and TLS alike with
//! hyper-util's HTTP/1-and-2 connection builder (what `axum::serve` runs inside), and adds:
//!
//! - a **header timeout** (`--header-timeout`): a new connection has that long to finish its TLS
//!   handshake and send its first request's headers;
//! - a **body timeout** (`--body-timeout`): a request's body has that long from its headers
//!   (`service::Deadline`); then the request fails and the connection closes after the answer;
//! - an **idle timeout** (`--idle-timeout`) between requests for connections that have not
//!   authenticated, and a longer **keep-alive timeout** (`--keepalive-timeout`) for those that
//!   have. Upgraded WebSockets leave this task and are watched by heartbeats instead;
//! - **caps** on connections that have not authenticated, per client address and in total, and
//!   on open connections (the open-file limit less a reserve), that close the oldest
//!   unauthenticated connection to let a new one in (`registry`);
//! - handling of `EMFILE` at `accept` that frees a descriptor instead of retrying in a loop.
//!
//! A connection counts as authenticated once a request on it passes an API- or agent-key check
//! (the HTTP layers call [`mark_authenticated`] once a key or session checks out). Only connections from clients without a key are
//! closed to make room, so an attacker without a key cannot push agents out.
//!
//! Each connection has one task, which owns the hyper connection and `select!`s over it, one
//! timer (re-armed lazily: it is only looked at when it fires), a close request (shed, or a
//! body past its deadline) and the server's shutdown. The timer is not reset per request: when
//! it fires the task reads when the connection last became quiet and sleeps again if that was
//! recent.

mod registry;
mod service;

use std::net::SocketAddr;
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::FutureExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use registry::{Caps, Registry};
pub use service::mark_authenticated;

use registry::{Close, Conn, Listed, Open};

/// Open connections, of every kind (agents' WebSockets included).
pub const CONNECTIONS_OPEN: &str = "outpost_connections_open";
/// Open connections on which no request has passed a key check yet.
pub const CONNECTIONS_UNAUTHENTICATED: &str = "outpost_connections_unauthenticated";
/// Unauthenticated connections closed to make room, by `reason`.
pub const CONNECTIONS_SHED: &str = "outpost_connections_shed_total";
/// Connections closed by a timeout, by `phase`.
pub const CONNECTIONS_TIMED_OUT: &str = "outpost_connections_timed_out_total";
/// New connections closed at once: the open-file budget was used up by authenticated ones.
pub const CONNECTIONS_REFUSED: &str = "outpost_connections_refused_total";
/// `accept` failing because the process or system had no descriptor left.
pub const ACCEPT_OUT_OF_FILES: &str = "outpost_accept_out_of_files_total";

/// Default of `--max-unauthenticated` when the open-file limit allows it.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 2048;
/// How long the server waits for connections to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);
/// How long a connection whose body timed out has to take its answer before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Sockets let past the descriptor budget while the connections closed to make room for them
/// are still closing; the accept loop waits beyond it. Less than the smallest reserve (16).
const OVERSHOOT: usize = 8;
/// Largest request head (and read buffer) per connection. hyper's default (~400 KB) would let
/// 2,048 slow-header connections hold 800 MB; 32 KiB is what nginx allows for headers.
const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Timeouts of a connection's phases (`--header-timeout` and its siblings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// TLS handshake and first request's headers, from the accept.
    pub header: Duration,
    /// A request's body, from its headers.
    pub body: Duration,
    /// Between requests, for a connection that has not authenticated.
    pub idle: Duration,
    /// Between requests, for one that has.
    pub keepalive: Duration,
}

/// The caps for an open-file limit of `fd_limit` with `fds_in_use` descriptors already open
/// (the database, the listeners): a reserve of a sixteenth of the limit (16 to 256) is kept
/// for the database's further connections, webhooks and logs, and the rest may be connections.
/// `max_unauthenticated` (`None`: 2,048 or a quarter of the limit) and `per_address` are
/// `--max-unauthenticated` and `--max-unauthenticated-per-address`.
pub fn caps(
    max_unauthenticated: Option<u64>,
    per_address: u64,
    fd_limit: u64,
    fds_in_use: u64,
) -> Caps {
    let fd_limit = usize::try_from(fd_limit).unwrap_or(usize::MAX);
    let in_use = usize::try_from(fds_in_use).unwrap_or(0);
    let reserve = (fd_limit / 16).clamp(16, 256);
    let connections = fd_limit.saturating_sub(in_use + reserve).max(1);
    let unauthenticated = match max_unauthenticated {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => DEFAULT_MAX_UNAUTHENTICATED.min(fd_limit / 4).max(1),
    };
    let per_address = usize::try_from(per_address).unwrap_or(usize::MAX);
    Caps {
        unauthenticated,
        per_address: per_address.min(unauthenticated),
        connections,
    }
}

/// Lets the kernel queue as many connections for `accept` as the system allows
/// (`net.core.somaxconn`, 4,096 on current kernels) instead of the 128 the standard library
/// asks for. While a flood of sockets keeps the accept loop busy, a full queue drops the SYN
/// of the next client, an agent's or a `/healthz` probe's, which then waits a second or more
/// to retry.
pub fn deepen_backlog(listener: &std::net::TcpListener) {
    use nix::sys::socket::{Backlog, listen};
    // On a socket already listening, `listen` only changes the queue's length.
    if let Err(err) = listen(listener, Backlog::MAXCONN) {
        tracing::warn!(error = %err, "could not lengthen the listen queue; keeping 128");
    }
}

/// Descriptors the process has open now (Linux); `None` where `/proc` cannot tell.
pub fn open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.count() as u64)
}

/// The SHA-256 (lowercase hex) of the client certificate a TLS connection presented and the
/// agent CA verified, put in every request's extensions (CONTRACT.md §19). The agents' routes
/// look it up in `agent_certs`; nothing else reads it.
#[derive(Debug, Clone)]
pub struct PeerCert(pub Arc<str>);

/// The server's certificate and key as rustls uses them: from `--tls-cert`/`--tls-key`, or
/// from the agent CA (`--tls-auto`), swapped in place when it is re-issued.
#[derive(Debug)]
pub struct ServerCert(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl ServerCert {
    /// From a PEM chain (leaf first) and a PEM private key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], what: &str) -> anyhow::Result<Self> {
        Ok(Self(std::sync::RwLock::new(Arc::new(certified_key(
            chain_pem, key_pem, what,
        )?))))
    }

    /// From `--tls-cert` and `--tls-key`.
    pub fn from_files(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let chain = std::fs::read(cert)
            .with_context(|| format!("reading the TLS certificate {}", cert.display()))?;
        let key_pem = std::fs::read(key)
            .with_context(|| format!("reading the TLS private key {}", key.display()))?;
        Self::from_pem(
            &chain,
            &key_pem,
            &format!(
                "the TLS certificate {} and key {}",
                cert.display(),
                key.display()
            ),
        )
    }

    /// Serves `chain_pem` and `key_pem` from the next handshake on.
    pub fn replace(&self, chain_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<()> {
        let new = Arc::new(certified_key(
            chain_pem,
            key_pem,
            "the re-issued certificate",
        )?);
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> anyhow::Result<rustls::sign::CertifiedKey> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what}: the certificate is not PEM"))?;
    if chain.is_empty() {
        anyhow::bail!("{what}: no PEM certificate in it");
    }
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .with_context(|| format!("{what}: the private key is not PEM"))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = provider
        .key_provider
        .load_private_key(key_der)
        .with_context(|| format!("{what}: the private key cannot be used"))?;
    let certified = rustls::sign::CertifiedKey::new(chain, key);
    certified
        .keys_match()
        .with_context(|| format!("{what} do not go together"))?;
    Ok(certified)
}

/// The TLS acceptor: `cert` for the server's side and, when `agent_ca` (DER) is given, client
/// certificates verified against it: optional, since browsers, the CLI and key-authenticated
/// agents present none (`--agent-auth cert` refuses those on the agents' routes, not here).
pub fn tls_acceptor(cert: Arc<ServerCert>, agent_ca: Option<&[u8]>) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("configuring TLS")?;
    let builder = match agent_ca {
        None => builder.with_no_client_auth(),
        Some(der) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
                .context("the agent CA's certificate")?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .context("the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn hex_sha256(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// Registers the metrics' descriptions (once the recorder is installed).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Open client connections, agents' WebSockets included."
    );
    describe_gauge!(
        CONNECTIONS_UNAUTHENTICATED,
        "Open connections on which no request has passed a key check yet."
    );
    describe_counter!(
        CONNECTIONS_SHED,
        "Unauthenticated connections closed to make room, by reason (per_address, total, file_limit)."
    );
    describe_counter!(
        CONNECTIONS_TIMED_OUT,
        "Connections closed by a timeout, by phase (header, idle, keepalive, body)."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "New connections closed at once: authenticated ones used the descriptor budget, or none was left."
    );
    describe_counter!(
        ACCEPT_OUT_OF_FILES,
        "accept() failures for want of a file descriptor."
    );
}

/// What every connection task of one listener shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: CancellationToken,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets connections finish
/// their requests for up to 10 s.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    registry: Arc<Registry>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper timer: its header timeout would also end authenticated keep-alive connections,
    // and cannot see the TLS handshake; the connection task keeps the time instead.
    builder.http1().max_buf_size(MAX_HEAD_BYTES);
    let shared = Arc::new(Shared {
        builder,
        router,
        tls,
        limits,
        shutdown: shutdown.clone(),
    });
    let tasks = TaskTracker::new();
    let mut spare = Spare::open();
    let mut warned: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let Some(open) = registry.open_one() else {
                    // Every descriptor the budget allows is an authenticated connection.
                    drop(tcp);
                    continue;
                };
                // Listed on the connection's own task: the accept loop does no more than count
                // (it is what a flood of connects waits on), and the connection's state is
                // allocated and freed on one thread (mimalloc hands a page freed from another
                // thread back to its owner only when the owner next allocates).
                tasks.spawn(connection(
                    tcp,
                    peer,
                    open,
                    registry.clone(),
                    shared.clone(),
                ));
                if registry.open() > registry.caps().connections + OVERSHOOT {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break,
                        () = registry.wait_for_room(OVERSHOOT) => {}
                    }
                }
            }
            Err(err) if out_of_descriptors(&err) => {
                metrics::counter!(ACCEPT_OUT_OF_FILES).increment(1);
                if warned.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        error = %err,
                        open = registry.open(),
                        "accept: out of file descriptors; closing unauthenticated connections to make room"
                    );
                }
                if registry.shed_for_descriptor() {
                    // Let the shed connection's task close its socket before trying again, so
                    // that one missing descriptor does not shed a connection per loop.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                } else if !spare.refuse_one(&listener) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            // The peer gave up before we accepted it, or a firewall refused it: nothing to do.
            Err(err) if per_connection(&err) => {}
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
        tracing::info!(
            left = tasks.len(),
            "connections still busy after the drain; the process ends with them"
        );
    }
}

/// One connection, from the accept to its close (or its upgrade).
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    open: Open,
    registry: Arc<Registry>,
    shared: Arc<Shared>,
) {
    let admitted = registry.admit(peer, open);
    drop(registry);
    // Commands are small frames that must not wait for Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    let conn = admitted.conn().clone();
    let (listed, open) = admitted.split();
    let accepted = Instant::now();
    match &shared.tls {
        None => serve_io(tcp, peer, None, open, &listed, conn, accepted, &shared).await,
        // Boxed: a TLS stream is kilobytes, and inline it made every plain connection's task
        // more than twice as large (every agent's, until its upgrade; figures:
        // docs/BENCHMARKS.md, "Design notes behind the figures").
        Some(acceptor) => {
            Box::pin(serve_tls(
                acceptor, tcp, peer, open, &listed, conn, accepted, &shared,
            ))
            .await;
        }
    }
}

/// The TLS handshake (within the header timeout), then [`serve_io`].
#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    open: Open,
    listed: &Listed,
    conn: Arc<Conn>,
    accepted: Instant,
    shared: &Shared,
) {
    let handshake = tokio::select! {
        biased;
        _ = conn.wait_close(Close::Now) => return,
        () = shared.shutdown.cancelled() => return,
        handshake = tokio::time::timeout_at(accepted + shared.limits.header, acceptor.accept(tcp)) => handshake,
    };
    match handshake {
        Ok(Ok(tls)) => {
            let peer_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(<[_]>::first)
                .map(|der| PeerCert(hex_sha256(der).into()));
            serve_io(tls, peer, peer_cert, open, listed, conn, accepted, shared).await;
        }
        Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
        Err(_) => {
            metrics::counter!(CONNECTIONS_TIMED_OUT, "phase" => "header").increment(1);
            tracing::debug!(%peer, "TLS handshake not finished in time");
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_io<IO>(
    io: IO,
    peer: SocketAddr,
    peer_cert: Option<PeerCert>,
    open: Open,
    // Kept (in the caller) for as long as this task runs.
    _listed: &Listed,
    conn: Arc<Conn>,
    accepted: Instant,
    shared: &Shared,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = service::PerConnection {
        router: TowerToHyperService::new(shared.router.clone()),
        conn: conn.clone(),
        peer,
        peer_cert,
        body_timeout: shared.limits.body,
    };
    let io = TokioIo::new(Tracked { io, _open: open });
    let mut http = pin!(shared.builder.serve_connection_with_upgrades(io, service));
    let timer = tokio::time::sleep_until(accepted + shared.limits.header);
    let mut timer = pin!(timer);
    // Set once the connection is asked to finish: the time it has left.
    let mut closing_by: Option<Instant> = None;
    loop {
        tokio::select! {
            served = http.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            how = conn.wait_close(if closing_by.is_none() { Close::AfterResponse } else { Close::Now }) => {
                if how == Close::Now {
                    tracing::debug!(%peer, "closing an unauthenticated connection to make room");
                    return;
                }
                http.as_mut().graceful_shutdown();
                let by = Instant::now() + CLOSE_GRACE;
                closing_by = Some(by);
                timer.as_mut().reset(by);
            }
            () = shared.shutdown.cancelled(), if closing_by.is_none() => {
                http.as_mut().graceful_shutdown();
                // The accept loop's drain bounds the rest.
                closing_by = Some(Instant::now() + DRAIN);
            }
            () = &mut timer => {
                let now = Instant::now();
                if closing_by.is_some_and(|by| by <= now) {
                    return;
                }
                match expiry(&conn, accepted, &shared.limits) {
                    Expiry::At(at, phase) if at <= now => {
                        metrics::counter!(CONNECTIONS_TIMED_OUT, "phase" => phase).increment(1);
                        tracing::debug!(%peer, phase, "closing a connection that timed out");
                        return;
                    }
                    Expiry::At(at, _) => timer.as_mut().reset(at.min(closing_by.unwrap_or(at))),
                    // A request is in progress: look again after the longest wait there is.
                    Expiry::Busy => timer.as_mut().reset(now + shared.limits.keepalive.max(shared.limits.idle)),
                }
            }
        }
    }
}

enum Expiry {
    /// No request in progress: the connection expires then, in that phase.
    At(Instant, &'static str),
    /// A request is in progress.
    Busy,
}

/// When a quiet connection expires: its first request's headers are due `header` after the
/// accept; after that it may wait `idle` between requests until it authenticates, `keepalive`
/// after.
fn expiry(conn: &Conn, accepted: Instant, limits: &Limits) -> Expiry {
    let Some(quiet_since) = conn.quiet_since() else {
        return Expiry::Busy;
    };
    if !conn.has_requested() {
        Expiry::At(accepted + limits.header, "header")
    } else if conn.is_authenticated() {
        Expiry::At(
            Instant::from_std(quiet_since) + limits.keepalive,
            "keepalive",
        )
    } else {
        Expiry::At(Instant::from_std(quiet_since) + limits.idle, "idle")
    }
}

/// The socket (or TLS stream), counted as open for as long as it is: through an upgrade too,
/// so an agent's WebSocket still counts against the descriptor budget.
struct Tracked<IO> {
    io: IO,
    _open: Open,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// `accept` ran out of descriptors (the process's or the system's) or kernel memory: the
/// pending connection stays queued, so the next `accept` fails the same way unless something
/// is closed.
fn out_of_descriptors(err: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        err.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
    )
}

/// `accept` failed for this one connection only.
fn per_connection(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::Interrupted
            | ErrorKind::PermissionDenied
    ) || matches!(
        err.raw_os_error().map(nix::errno::Errno::from_raw),
        Some(nix::errno::Errno::EPROTO)
    )
}

/// A descriptor held in reserve, so that a process out of descriptors with nothing it may
/// close can still take the oldest queued connection off the listen queue and close it (the
/// client sees a closed connection instead of a connect that hangs, and `accept` stops failing
/// in a loop).
struct Spare(Option<std::fs::File>);

impl Spare {
    fn open() -> Self {
        Self(std::fs::File::open("/dev/null").ok())
    }

    /// Closes the spare, accepts and closes one connection, and takes the spare again;
    /// whether a connection was refused.
    fn refuse_one(&mut self, listener: &TcpListener) -> bool {
        if self.0.take().is_none() {
            *self = Self::open();
            return false;
        }
        let refused = matches!(listener.accept().now_or_never(), Some(Ok(_)));
        if refused {
            metrics::counter!(CONNECTIONS_REFUSED).increment(1);
        }
        *self = Self::open();
        refused
    }
}
