//! `outpost-supervisor`: parses its configuration, sets up logging (stderr and
//! `<state_dir>/logs/supervisor.log`) and runs [`outpost_supervisor::Supervisor`].

use clap::Parser;
use outpost_supervisor::{Cli, Settings, Supervisor, logs};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() {
    // First: no other process of this user (a script) may read the key out of this one.
    let undumpable = outpost_agent::contain::make_undumpable();
    let settings = match Settings::resolve(Cli::parse()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("outpost-supervisor: {err:#}");
            std::process::exit(2);
        }
    };
    let log = logs::Log::open(&settings.log_dir(), "supervisor.log");
    let filter = outpost_agent::config::log_filter("outpost-supervisor");
    let subscriber = tracing_subscriber::fmt().with_writer(log).with_ansi(false);
    if settings.json_logs {
        subscriber.json().finish().with(filter).init();
    } else {
        subscriber.finish().with(filter).init();
    }
    if let Err(err) = undumpable {
        tracing::warn!("{err}");
    }
    if let Some(warning) = &settings.key_warning {
        tracing::warn!("{warning}");
    }
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::warn!("a rustls crypto provider was already installed");
    }
    // One thread is plenty: the supervisor waits on one child and, rarely, downloads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!("cannot start the runtime: {err}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            target = outpost_supervisor::update::TARGET,
            settings = ?settings,
            "supervisor starting"
        );
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signal.cancel();
        });
        match Supervisor::new(settings) {
            Ok(supervisor) => supervisor.run(shutdown).await,
            Err(err) => {
                tracing::error!("{err:#}");
                1
            }
        }
    });
    std::process::exit(code);
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
