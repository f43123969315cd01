//! `outpost-agent`: parses configuration, sets up logging and hands over to
//! [`outpost_agent::run`]. Exits with the code a control command asked for (42/43/44).

use clap::Parser;
use outpost_agent::Config;
use outpost_agent::config::LogFormat;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() {
    // First: no other process of this user (a script) may read the key out of this one.
    if let Err(err) = outpost_agent::platform::make_undumpable() {
        eprintln!("outpost-agent: {err}");
    }
    let config = Config::parse();
    let filter = outpost_agent::config::log_filter("outpost-agent");
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Json => logs.json().finish().with(filter).init(),
        LogFormat::Text => logs.finish().with(filter).init(),
    }
    // One small thread is plenty for one connection and a few commands, and keeps the idle
    // footprint low.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("outpost-agent: cannot start the runtime: {err}");
            std::process::exit(outpost_agent::commands::exit::FATAL);
        }
    };
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            outpost_agent::platform::stop_requested().await;
            tracing::info!("stopping");
            signal.cancel();
        });
        match outpost_agent::run(config, shutdown).await {
            Ok(code) => code,
            Err(err) => {
                tracing::error!("{err:#}");
                outpost_agent::commands::exit::FATAL
            }
        }
    });
    std::process::exit(code);
}
