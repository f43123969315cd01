//! Outpost agent: connects out to the server, registers, heartbeats and answers commands.
//!
//! Reading order: [`config`], [`journal`] and [`spool`] (what makes delivery exactly-once and
//! lossless), [`session`] (one connection, over a WebSocket or [`http`] long-poll), [`commands`] (what each command does),
//! [`manifest`] and [`exec`] (script runs), [`platform`] (everything OS-specific: what keeps
//! runs from outliving their run or the agent, noticing a new manifest, signals), [`host`].
//!
//! The agent owns one [`Agent`] value for its whole life. Connections come and go; the
//! journal, the output spools and the running commands outlive them. Nothing a command
//! produces is handed to a connection directly: answers go to the journal and output to the
//! spool, and each connection sends from there what the server has not acknowledged. So a
//! result produced while the agent is cut off, or before it crashed, is delivered by the next
//! connection, and memory stays bounded however much a script prints.

pub mod commands;
pub mod config;
pub mod endpoint;
pub mod exec;
pub mod host;
pub mod http;
pub mod identity;
pub mod journal;
pub mod library;
pub mod manifest;
pub mod platform;
pub mod session;
pub mod spool;
pub mod tls;

/// The containment items under the name the supervisor and the end-to-end harness use; they
/// live in [`platform`].
pub mod contain {
    pub use crate::platform::{Leftovers, clean_up_after, make_undumpable};
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use outpost_protocol::{AgentId, CommandId, RegisterData, Response, ServerCommand};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::Config;
use host::Host;
use journal::{Entry, Journal};
use manifest::Manifest;
use platform::Containment;

/// The agent: its identity, journal, manifest and running commands.
pub struct Agent {
    /// Configuration.
    pub config: Config,
    /// Stable id from the state directory.
    pub agent_id: AgentId,
    state_dir: PathBuf,
    spool_dir: PathBuf,
    manifest_path: PathBuf,
    manifest: RwLock<Arc<Manifest>>,
    journal: Mutex<Journal>,
    host: Mutex<Host>,
    /// What runs scripts in boxes that nothing escapes.
    contain: Containment,
    /// Cancel handles of running commands.
    running: Mutex<HashMap<CommandId, CancellationToken>>,
    /// Address of the current (or last) connection, as the agent sees it.
    ip: Mutex<String>,
    /// The HTTP routes of the node of the current (or last) connection: where library
    /// bundles are downloaded from.
    endpoint: Mutex<Option<http::Endpoint>>,
    /// The library's cache, virtual environments and run folders in the state directory.
    library: library::Library,
    /// Signalled when there is something new to send (an answer, output).
    pub activity: Notify,
    /// Signalled when the manifest changed and `register` must be sent again.
    pub manifest_changed: Notify,
    /// Set by a control command: exit with this code once the server acknowledged `CommandId`.
    exit: Mutex<Option<(CommandId, i32)>>,
    exit_now: Notify,
}

impl Agent {
    /// Sets up the state directory, the agent id, containment (which first kills what a
    /// previous agent process left running), the journal and the manifest.
    pub fn new(mut config: Config) -> anyhow::Result<Arc<Self>> {
        config.load_key()?;
        let state_dir = config.state_dir();
        create_private_dir(&state_dir)?;
        let spool_dir = state_dir.join("spool");
        create_private_dir(&spool_dir)?;
        let agent_id = load_or_create_id(&state_dir)?;
        // Before the journal turns the runs a previous agent left into `interrupted` answers:
        // once the server hears that, a retry may start, and the old script must be gone.
        let contain = Containment::start(config.containment, &state_dir, &agent_id.to_string())?;
        let (journal, interrupted) = Journal::open(&state_dir)
            .with_context(|| format!("opening the journal in {}", state_dir.display()))?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "commands were interrupted by the previous run; reporting them as failed"
            );
        }
        remove_stale_spools(&spool_dir, &journal);
        let library = library::Library::open(&state_dir)?;
        let manifest_path = config
            .manifest
            .clone()
            .unwrap_or_else(|| state_dir.join("script_manifest.json"));
        let manifest = match Manifest::load(&manifest_path) {
            Ok(m) => m,
            Err(why) => {
                tracing::error!("{why}; starting with no scripts");
                Manifest::default()
            }
        };
        tracing::info!(path = %manifest_path.display(), scripts = manifest.infos().len(), "manifest loaded");
        for problem in config.tag_problems() {
            tracing::error!("{problem}");
        }
        Ok(Arc::new(Self {
            host: Mutex::new(Host::new(&state_dir)),
            config,
            agent_id,
            state_dir,
            spool_dir,
            manifest_path,
            manifest: RwLock::new(Arc::new(manifest)),
            journal: Mutex::new(journal),
            contain,
            running: Mutex::new(HashMap::new()),
            ip: Mutex::new(String::new()),
            endpoint: Mutex::new(None),
            library,
            activity: Notify::new(),
            manifest_changed: Notify::new(),
            exit: Mutex::new(None),
            exit_now: Notify::new(),
        }))
    }

    /// What the agent says about itself in `register`, within the protocol's limits (the
    /// server refuses a `register` past them): host facts are cut to their limit and stripped
    /// of control characters, and the tags and the manifest were checked when read.
    pub fn register_data(&self) -> RegisterData {
        use outpost_protocol::limits::{MAX_HOSTNAME_LEN, MAX_IP_LEN, MAX_OS_LEN, MAX_VERSION_LEN};
        let ip = self.ip.lock().map(|ip| ip.clone()).unwrap_or_default();
        let data = RegisterData {
            agent_id: self.agent_id,
            hostname: fit("hostname", host::hostname(), MAX_HOSTNAME_LEN),
            ip: fit("ip", ip, MAX_IP_LEN),
            version: fit("version", self.config.version(), MAX_VERSION_LEN),
            os: fit("os", host::os(), MAX_OS_LEN),
            arch: std::env::consts::ARCH.into(),
            protocol: outpost_protocol::PROTOCOL_VERSION,
            capabilities: commands::capabilities(self.config.supervised),
            tags: self.config.clean_tags(),
            scripts: self.manifest().infos(),
            update_status: self.update_status().map(Box::new),
            library: self.manifest().library().cloned(),
        };
        if let Err(why) = data.check() {
            tracing::error!(
                "the registration breaks a limit of the protocol; the server will refuse it: {why}"
            );
        }
        data
    }

    /// The supervisor's report on its last update (`<state_dir>/update_status.json`), sent
    /// with every `register` until the next update replaces it. A missing or unreadable file
    /// is no report: the agent must start whatever the supervisor left behind.
    fn update_status(&self) -> Option<outpost_protocol::release::UpdateStatus> {
        let text = std::fs::read(self.state_dir.join(UPDATE_STATUS_FILE)).ok()?;
        if text.len() > 64 * 1024 {
            return None;
        }
        match serde_json::from_slice(&text) {
            Ok(status) => match outpost_protocol::check::update_status(&status) {
                Ok(()) => Some(status),
                Err(why) => {
                    tracing::warn!("not reporting {UPDATE_STATUS_FILE}: {why}");
                    None
                }
            },
            Err(err) => {
                tracing::warn!(error = %err, "ignoring an unreadable {UPDATE_STATUS_FILE}");
                None
            }
        }
    }

    /// The answer to `info`: the `register` fields plus runtime facts.
    pub fn info(&self) -> Value {
        let mut info = json!(self.register_data());
        let uptime = self.host.lock().map(|h| h.uptime_s()).unwrap_or_default();
        info["uptime_s"] = json!(uptime);
        info["rust_version"] = json!(env!("OUTPOST_RUSTC_VERSION"));
        info["build_version"] = json!(env!("CARGO_PKG_VERSION"));
        info["pid"] = json!(std::process::id());
        info["supervised"] = json!(self.config.supervised);
        info["state_dir"] = json!(self.state_dir.display().to_string());
        info["manifest"] = json!(self.manifest_path.display().to_string());
        info["containment"] = self.contain.describe();
        info["library_cache"] = self.library.describe();
        info
    }

    /// How runs are contained.
    pub fn containment(&self) -> &Containment {
        &self.contain
    }

    /// Records the local address of a new connection.
    pub fn set_ip(&self, ip: String) {
        if let Ok(mut slot) = self.ip.lock() {
            *slot = ip;
        }
    }

    /// Records the HTTP routes of the node a new connection reached.
    pub fn set_endpoint(&self, endpoint: http::Endpoint) {
        if let Ok(mut slot) = self.endpoint.lock() {
            *slot = Some(endpoint);
        }
    }

    /// The HTTP routes of the current (or last) connection's node, if any connection opened.
    pub fn endpoint(&self) -> Option<http::Endpoint> {
        self.endpoint.lock().ok().and_then(|e| e.clone())
    }

    /// The script library's local side.
    pub fn library(&self) -> &library::Library {
        &self.library
    }

    /// Gives the memory the allocator holds free back to the operating system when no command
    /// is running (see [`platform::release_free_memory`]); while one runs, what it frees is
    /// soon allocated again.
    pub fn release_free_memory(&self) {
        if self.running.lock().is_ok_and(|running| running.is_empty()) {
            platform::release_free_memory();
        }
    }

    /// Fresh heartbeat metrics.
    pub fn heartbeat(&self) -> outpost_protocol::HeartbeatStatus {
        match self.host.lock() {
            Ok(mut host) => host.sample(),
            Err(poisoned) => poisoned.into_inner().sample(),
        }
    }

    /// The current manifest.
    pub fn manifest(&self) -> Arc<Manifest> {
        self.manifest
            .read()
            .map(|m| m.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Re-reads the manifest. An invalid one is logged and the previous one kept.
    pub fn reload_manifest(&self) {
        match Manifest::load(&self.manifest_path) {
            Ok(new) => {
                let old = self.manifest();
                let changed = old.infos() != new.infos() || old.library() != new.library();
                if let Ok(mut slot) = self.manifest.write() {
                    *slot = Arc::new(new);
                }
                if changed {
                    tracing::info!(scripts = self.manifest().infos().len(), "manifest reloaded");
                    self.manifest_changed.notify_one();
                }
            }
            Err(why) => tracing::error!("{why}; keeping the previous manifest"),
        }
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        // A panic while holding the lock cannot leave the journal half-updated: every update
        // is one append followed by one in-memory change.
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commands whose answer or output the server may still need: `(id, answer if done)`.
    pub fn unfinished(&self) -> Vec<(CommandId, Option<Response>)> {
        self.journal().unfinished()
    }

    /// Where a command's output spool is.
    pub fn spool_path(&self, id: CommandId) -> PathBuf {
        spool::path(&self.spool_dir, id)
    }

    /// Takes a command from the server. Returns whether to acknowledge it; starts it if new.
    /// A command seen before is never started again: its stored answer, if any, goes out with
    /// the connection's next send.
    pub fn accept(self: &Arc<Self>, cmd: ServerCommand) -> Result<(), Response> {
        let id = cmd.command_id;
        let mut journal = self.journal();
        match journal.get(&id) {
            Some(Entry::Answered(_)) => {
                drop(journal);
                self.activity.notify_one();
                return Ok(());
            }
            Some(Entry::Accepted | Entry::Acked) => return Ok(()),
            None => {}
        }
        if let Err(err) = journal.accept(id) {
            // Without a journal record a crash could run it twice; refuse instead.
            tracing::error!(command_id = %id, error = %err, "cannot journal a command; refusing it");
            return Err(Response::failed(
                id,
                outpost_protocol::codes::INTERNAL,
                format!("the agent cannot write its journal: {err}"),
            ));
        }
        drop(journal);
        tracing::info!(command_id = %id, command = %cmd.command, "running command");
        let cancel = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            running.insert(id, cancel.clone());
        }
        let agent = self.clone();
        tokio::spawn(async move {
            let outcome = commands::execute(&agent, &cmd, cancel).await;
            if let Ok(mut running) = agent.running.lock() {
                running.remove(&id);
            }
            agent.answer(outcome);
        });
        Ok(())
    }

    /// Cancels a running command; `false` if it is not running here.
    pub fn cancel(&self, id: CommandId) -> bool {
        match self.running.lock().ok().and_then(|r| r.get(&id).cloned()) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Journals an answer; the connection sends it from there. An answer that cannot be
    /// journaled (the disk is full) is kept and tried again every [`JOURNAL_RETRY`] until it
    /// is: it is never sent unjournaled (a crash would then lose it after the server stored
    /// it, and the command would be reported interrupted instead), and never dropped.
    fn answer(self: &Arc<Self>, outcome: commands::Outcome) {
        let id = outcome.response.command_id;
        let Err(err) = self.journal().answer(outcome.response.clone()) else {
            self.answered(id, outcome.exit_code);
            return;
        };
        tracing::error!(command_id = %id, error = %err, retry_in = ?JOURNAL_RETRY, "cannot journal an answer; keeping it and trying again");
        let agent = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(JOURNAL_RETRY).await;
                match agent.journal().answer(outcome.response.clone()) {
                    Ok(()) => break,
                    Err(err) => {
                        tracing::warn!(command_id = %id, error = %err, "still cannot journal an answer")
                    }
                }
            }
            tracing::info!(command_id = %id, "answer journaled");
            agent.answered(id, outcome.exit_code);
        });
    }

    /// An answer is journaled: the connection may send it, and a control command's exit
    /// follows.
    fn answered(&self, id: CommandId, exit_code: Option<i32>) {
        if let Some(code) = exit_code
            && let Ok(mut exit) = self.exit.lock()
        {
            *exit = Some((id, code));
            // Exit even if the acknowledgement never comes; the answer is journaled and will
            // be delivered by the next agent process.
            self.exit_now.notify_one();
        }
        self.activity.notify_one();
    }

    /// The server stored an answer: forget it and its output, and exit if a control command
    /// asked to. Returns the exit code to use, if any.
    pub fn acked(&self, id: CommandId) -> Option<i32> {
        if let Err(err) = self.journal().acked(id) {
            tracing::warn!(command_id = %id, error = %err, "cannot journal an acknowledgement");
        }
        let _ = std::fs::remove_file(self.spool_path(id));
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

    /// Records what an `update` asked for, for the supervisor to read after the exit:
    /// `target_version` holds the version (absent: the latest), `update_force` exists when the
    /// caller allowed a downgrade. Both are rewritten or removed on every request, so a stale
    /// file from an earlier update never redirects this one.
    pub fn request_update(&self, version: Option<&str>, force: bool) -> std::io::Result<()> {
        let target = self.state_dir.join(TARGET_VERSION_FILE);
        match version {
            Some(version) => std::fs::write(&target, version)?,
            None => remove_if_present(&target)?,
        }
        let force_path = self.state_dir.join(UPDATE_FORCE_FILE);
        if force {
            std::fs::write(&force_path, "1")
        } else {
            remove_if_present(&force_path)
        }
    }
}

/// File in the state directory naming the version an `update` asked for.
pub const TARGET_VERSION_FILE: &str = "target_version";
/// How often an answer that could not be journaled is tried again.
const JOURNAL_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
/// File in the state directory whose presence allows the asked-for update to be a downgrade.
pub const UPDATE_FORCE_FILE: &str = "update_force";
/// File in the state directory where the supervisor reports its last update.
pub const UPDATE_STATUS_FILE: &str = "update_status.json";

/// A host fact as `register` may carry it: control characters left out, cut to `max` bytes.
/// Host names and kernel strings are set by the machine's owner, not by us; an odd one is
/// reported (and logged) rather than getting the agent refused.
fn fit(field: &str, value: String, max: usize) -> String {
    if outpost_protocol::check::text(field, &value, max).is_ok() {
        return value;
    }
    let mut clean: String = value
        .chars()
        .filter(|c| !outpost_protocol::check::is_control(*c))
        .collect();
    if clean.len() > max {
        let mut end = max;
        while !clean.is_char_boundary(end) {
            end -= 1;
        }
        clean.truncate(end);
    }
    tracing::warn!(
        "the {field} {:?} holds control characters or is longer than {max} bytes; reporting {clean:?}",
        value.chars().take(300).collect::<String>()
    );
    clean
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Runs the agent until `shutdown` is cancelled or a control command asks it to exit.
/// Returns the process exit code.
pub async fn run(mut config: Config, shutdown: CancellationToken) -> anyhow::Result<i32> {
    // The key, then the servers, checked before anything touches the state directory.
    config.load_key()?;
    let servers = config.server_urls()?;
    if let Some(first) = config.first_server
        && usize::from(first) > servers.len()
    {
        anyhow::bail!(
            "OUTPOST_FIRST_SERVER is {first}, but OUTPOST_SERVER_URL lists {} server(s)",
            servers.len()
        );
    }
    let agent = Agent::new(config)?;
    let shown: Vec<String> = servers.iter().map(config::url_for_logs).collect();
    tracing::info!(agent_id = %agent.agent_id, servers = %shown.join(","), "agent starting");
    tokio::spawn(watch_manifest(agent.clone(), shutdown.clone()));
    tokio::spawn(agent.contain.reap_orphans());
    let Some((tls, identity)) = identity::setup(&agent, &servers, &shutdown).await? else {
        return Ok(0);
    };
    let connector = session::Connector::new(agent.clone(), &servers, tls, identity)?;
    let code = connector.run(shutdown).await;
    // Running scripts end with the agent; their runs are reported `interrupted` by the next.
    agent.contain.shutdown();
    code
}

/// Reloads the manifest when its file changes (see [`platform::FileWatch`]) or on SIGHUP.
async fn watch_manifest(agent: Arc<Agent>, shutdown: CancellationToken) {
    let mut hup = platform::ReloadSignal::new();
    let mut file = platform::FileWatch::new(
        &agent.manifest_path,
        platform::SAFETY_CHECK,
        platform::FALLBACK_POLL,
    );
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = hup.recv() => {
                tracing::info!("SIGHUP: reloading the manifest");
                file.mark_seen();
                agent.reload_manifest();
            }
            () = file.changed() => agent.reload_manifest(),
        }
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    platform::create_private_dir(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))
}

/// Spools whose command the journal no longer tracks are leftovers of a crash mid-cleanup.
fn remove_stale_spools(dir: &Path, journal: &Journal) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(".out"))
            .and_then(|n| n.parse::<CommandId>().ok());
        let keep = id.is_some_and(|id| {
            matches!(journal.get(&id), Some(Entry::Accepted | Entry::Answered(_)))
        });
        if !keep {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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
