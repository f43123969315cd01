//! Outpost agent: connects out to the server, registers, heartbeats and answers commands.
//!
//! Reading order: [`config`], [`journal`] (what makes delivery exactly-once), [`session`] (one
//! connection: register, heartbeat, frames), [`commands`] (what each command does), [`host`].
//!
//! The agent owns one [`Agent`] value for its whole life. Connections come and go; the
//! journal, the queue of frames waiting to be sent and the running commands outlive them, so a
//! result produced while the agent is cut off is delivered after it reconnects.

pub mod commands;
pub mod config;
pub mod host;
pub mod journal;
pub mod session;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use outpost_protocol::{AgentFrame, AgentId, CommandId, RegisterData, ServerCommand};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use config::Config;
use host::Host;
use journal::{Entry, Journal};

/// Frames produced by commands and waiting for a connection to carry them.
const OUTBOX: usize = 1024;

/// The agent: its identity, journal and the frames waiting to go out.
pub struct Agent {
    /// Configuration.
    pub config: Config,
    /// Stable id from the state directory.
    pub agent_id: AgentId,
    state_dir: PathBuf,
    journal: Mutex<Journal>,
    host: Mutex<Host>,
    outbox: mpsc::Sender<AgentFrame>,
    /// Address of the current (or last) connection, as the agent sees it.
    ip: Mutex<String>,
    /// Set by a control command: exit with this code once the server acknowledged `CommandId`.
    exit: Mutex<Option<(CommandId, i32)>>,
    exit_now: Notify,
}

impl Agent {
    /// Sets up the state directory, the agent id and the journal.
    pub fn new(config: Config) -> anyhow::Result<(Arc<Self>, mpsc::Receiver<AgentFrame>)> {
        let state_dir = config.state_dir();
        create_private_dir(&state_dir)?;
        let agent_id = load_or_create_id(&state_dir)?;
        let (journal, interrupted) = Journal::open(&state_dir)
            .with_context(|| format!("opening the journal in {}", state_dir.display()))?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "commands were interrupted by the previous run; reporting them as failed"
            );
        }
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let agent = Arc::new(Self {
            host: Mutex::new(Host::new(&state_dir)),
            config,
            agent_id,
            state_dir,
            journal: Mutex::new(journal),
            outbox,
            ip: Mutex::new(String::new()),
            exit: Mutex::new(None),
            exit_now: Notify::new(),
        });
        Ok((agent, rx))
    }

    /// What the agent says about itself in `register`.
    pub fn register_data(&self) -> RegisterData {
        let ip = self.ip.lock().map(|ip| ip.clone()).unwrap_or_default();
        RegisterData {
            agent_id: self.agent_id,
            hostname: host::hostname(),
            ip,
            version: env!("CARGO_PKG_VERSION").into(),
            os: host::os(),
            arch: std::env::consts::ARCH.into(),
            protocol: outpost_protocol::PROTOCOL_VERSION,
            capabilities: commands::capabilities(self.config.supervised),
            tags: self.config.clean_tags(),
            scripts: Vec::new(),
        }
    }

    /// The answer to `info`: the `register` fields plus runtime facts.
    pub fn info(&self) -> Value {
        let mut info = json!(self.register_data());
        let uptime = self.host.lock().map(|h| h.uptime_s()).unwrap_or_default();
        info["uptime_s"] = json!(uptime);
        info["rust_version"] = json!(env!("OUTPOST_RUSTC_VERSION"));
        info["pid"] = json!(std::process::id());
        info["supervised"] = json!(self.config.supervised);
        info["state_dir"] = json!(self.state_dir.display().to_string());
        info
    }

    /// Records the local address of a new connection.
    pub fn set_ip(&self, ip: String) {
        if let Ok(mut slot) = self.ip.lock() {
            *slot = ip;
        }
    }

    /// A heartbeat frame with fresh metrics.
    pub fn heartbeat(&self) -> AgentFrame {
        let status = match self.host.lock() {
            Ok(mut host) => host.sample(),
            Err(poisoned) => poisoned.into_inner().sample(),
        };
        AgentFrame::Heartbeat { status }
    }

    /// Answers the journal holds that the server has not acknowledged.
    pub fn unacked(&self) -> Vec<AgentFrame> {
        self.journal()
            .unacked()
            .into_iter()
            .map(AgentFrame::Response)
            .collect()
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        // A panic while holding the lock cannot leave the journal half-updated: every update
        // is one append followed by one in-memory change.
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a command from the server. Returns the frames to send right away (its `ack`, or
    /// a stored answer for a command seen before) and starts it if it is new.
    pub fn accept(self: &Arc<Self>, cmd: ServerCommand) -> Vec<AgentFrame> {
        let id = cmd.command_id;
        let ack = AgentFrame::Ack { command_id: id };
        let mut journal = self.journal();
        match journal.get(&id) {
            // Running: acknowledge again, never start it twice.
            Some(Entry::Accepted) => return vec![ack],
            Some(Entry::Answered(response)) => {
                return vec![ack, AgentFrame::Response(response.clone())];
            }
            Some(Entry::Acked) => return vec![ack],
            None => {}
        }
        if let Err(err) = journal.accept(id) {
            // Without a journal record a crash could run it twice; refuse instead.
            tracing::error!(command_id = %id, error = %err, "cannot journal a command; refusing it");
            let response = outpost_protocol::Response::failed(
                id,
                outpost_protocol::codes::INTERNAL,
                format!("the agent cannot write its journal: {err}"),
            );
            return vec![AgentFrame::Response(response)];
        }
        drop(journal);
        tracing::info!(command_id = %id, command = %cmd.command, "running command");
        let agent = self.clone();
        tokio::spawn(async move {
            let outcome = commands::execute(&agent, &cmd).await;
            agent.answer(outcome).await;
        });
        vec![ack]
    }

    /// Journals an answer, then queues it for the server.
    async fn answer(&self, outcome: commands::Outcome) {
        let response = outcome.response;
        let id = response.command_id;
        if let Err(err) = self.journal().answer(response.clone()) {
            tracing::error!(command_id = %id, error = %err, "cannot journal an answer; sending it anyway");
        }
        if let Some(code) = outcome.exit_code {
            if let Ok(mut exit) = self.exit.lock() {
                *exit = Some((id, code));
            }
            // Exit even if the acknowledgement never comes; the answer is journaled and will
            // be delivered by the next agent process.
            self.exit_now.notify_one();
        }
        // The queue outlives connections; if it is full, wait: the journal has the answer.
        let _ = self.outbox.send(AgentFrame::Response(response)).await;
    }

    /// The server stored an answer: forget it, and exit if a control command asked to.
    /// Returns the exit code to use, if any.
    pub fn acked(&self, id: CommandId) -> Option<i32> {
        if let Err(err) = self.journal().acked(id) {
            tracing::warn!(command_id = %id, error = %err, "cannot journal an acknowledgement");
        }
        let exit = self.exit.lock().ok()?;
        match *exit {
            Some((pending, code)) if pending == id => Some(code),
            _ => None,
        }
    }

    /// An exit code requested by a control command whose answer was not acknowledged in time.
    pub async fn exit_requested(&self) -> i32 {
        loop {
            let pending = self.exit.lock().ok().and_then(|e| *e);
            if let Some((_, code)) = pending {
                tokio::time::sleep(Duration::from_secs(10)).await;
                return code;
            }
            self.exit_now.notified().await;
        }
    }

    /// Records the version an `update` asked for, for the supervisor to read.
    pub fn request_version(&self, version: &str) -> std::io::Result<()> {
        std::fs::write(self.state_dir.join("target_version"), version)
    }
}

/// Runs the agent until `shutdown` is cancelled or a control command asks it to exit.
/// Returns the process exit code.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<i32> {
    let (agent, outbox) = Agent::new(config)?;
    tracing::info!(agent_id = %agent.agent_id, server = %agent.config.server_url, "agent starting");
    session::Connector::new(agent, outbox)?.run(shutdown).await
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))
}

/// The agent id is generated once and kept, so the server sees the same agent across
/// restarts, reinstalls of the binary and key rotations.
fn load_or_create_id(dir: &Path) -> anyhow::Result<AgentId> {
    let path = dir.join("agent_id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a UUID", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::now_v7();
            let tmp = dir.join("agent_id.tmp");
            std::fs::write(&tmp, format!("{id}\n"))?;
            std::fs::rename(&tmp, &path)?;
            Ok(id)
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}
