//! `outpost-server`: parses flags, sets up logging and TLS, binds, and hands over to
//! [`outpost_server::run`].

use clap::Parser;
use outpost_server::config::Config;
use outpost_server::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// mimalloc, for Rust's allocations and (through `override`) SQLite's: a fan-out to thousands
/// of agents allocates and frees millions of small blocks across threads, where glibc's
/// allocator spent a large share of the server's CPU consolidating and unlinking chunks
/// (figures: docs/BENCHMARKS.md, "Design notes behind the figures").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long mimalloc keeps freed memory before handing it back to the kernel (its default is
/// 10 ms). A fan-out frees and reallocates the same hundreds of megabytes within a second; at
/// 10 ms each round was returned (`madvise`) and then faulted in and zeroed again, a
/// measurable share of the server's CPU in a fan-out. At one second a burst reuses its own
/// memory. The price: mimalloc purges expired memory only when the owning thread allocates or
/// frees again, so a quiet server keeps some of what a burst freed (14 KiB of RSS per idle
/// connection after 15,000 connected, against 10 KiB at 10 ms; docs/BENCHMARKS.md, "Memory per
/// idle connection"). `MIMALLOC_PURGE_DELAY` in the environment still wins.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// Sets [`ALLOCATOR_PURGE_DELAY_MS`] unless the environment set the delay, and turns
/// transparent huge pages off for the process unless `MIMALLOC_ALLOW_THP` says otherwise.
///
/// mimalloc asks for huge pages on every region it maps (`madvise(MADV_HUGEPAGE)`), so each
/// first touch of a region, and each touch after a purge, zeroed 2 MiB in the kernel, a
/// measurable share of a fan-out's CPU (more of SQLite's thread), where 4 KiB pages zero
/// only what is used. It also rounded the idle RSS up: an idle connection cost markedly more
/// with huge pages. See OPERATIONS.md, "Memory" (figures: docs/BENCHMARKS.md, "Design notes
/// behind the figures").
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none()
        && let Err(err) = nix::sys::prctl::set_thp_disable(true)
    {
        eprintln!("outpost-server: could not turn transparent huge pages off: {err}");
    }
    unsafe extern "C" {
        // mimalloc's own API (mimalloc.h), linked in by the `mimalloc` crate.
        fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (v2, the version built here, and
    // v3 alike), whose default is 10 ms: an option at that number with another value means
    // the enum moved, and nothing is set.
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    const MIMALLOC_DEFAULT_PURGE_DELAY_MS: std::ffi::c_long = 10;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: reads and sets one option by its documented number; mimalloc reads options
    // atomically and allows changing them at any time.
    unsafe {
        if mi_option_get(MI_OPTION_PURGE_DELAY) == MIMALLOC_DEFAULT_PURGE_DELAY_MS {
            mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS);
        }
    }
}

/// Least time between two full purges of one runtime thread's free memory.
const QUIET_PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Called by each runtime thread as it parks (it has nothing to do): at most every
/// [`QUIET_PURGE_EVERY`], hands back to the kernel what that thread's heap holds free
/// (`mi_collect(true)`). mimalloc purges only on a thread that allocates or frees again, past
/// the delay above, so after a burst (15,000 connections set up, a fan-out) a thread that then
/// only serves heartbeats kept most of what the burst freed (docs/BENCHMARKS.md, "Memory per
/// idle connection"). Once every few seconds per thread costs a burst at most one refill of
/// what it would have reused, where purging at every park would cost it on every pause.
#[allow(unsafe_code)]
fn purge_when_parked() {
    use std::cell::Cell;
    use std::time::Instant;
    unsafe extern "C" {
        // mimalloc.h: collects the calling thread's heap; `force` also frees what the purge
        // delay would keep.
        fn mi_collect(force: bool);
    }
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    LAST.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < QUIET_PURGE_EVERY => {}
        Some(_) => {
            // SAFETY: a documented call on the calling thread's own heap, taking no pointer.
            unsafe { mi_collect(true) };
            last.set(Some(now));
        }
        // Not at a thread's first park: the server is starting.
        None => last.set(Some(now)),
    });
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(purge_when_parked)
        .build()?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    // `outpost-server release …`, `admin-key …`, `user …`, `tenant …`, `backup` and `restore` are
    // operator commands sharing the binary; everything else is the server's own flags.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| outpost_server::ops::is_command(&a))
    {
        return outpost_server::ops::main(std::env::args_os().skip(1)).await;
    }
    let config = Config::parse();
    let filter = EnvFilter::try_from_env("OUTPOST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // OUTPOST_LOG_SPANS=close: a line when each span closes, with the time it was busy and
    // idle (docs/OPERATIONS.md's flag table). For finding where a request's time goes; with
    // `OUTPOST_LOG=info,outpost_core=debug` the command path's steps show (docs/BENCHMARKS.md,
    // "The round trip's steps").
    let span_events = match std::env::var("OUTPOST_LOG_SPANS").as_deref() {
        Ok("close") => tracing_subscriber::fmt::format::FmtSpan::CLOSE,
        Ok("") | Err(std::env::VarError::NotPresent) => {
            tracing_subscriber::fmt::format::FmtSpan::NONE
        }
        Ok(other) => {
            eprintln!("OUTPOST_LOG_SPANS={other:?} is not `close`: no span lines");
            tracing_subscriber::fmt::format::FmtSpan::NONE
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            eprintln!("OUTPOST_LOG_SPANS is not UTF-8: no span lines");
            tracing_subscriber::fmt::format::FmtSpan::NONE
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(span_events)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;

    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "starting");

    outpost_server::run(listener, config, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
