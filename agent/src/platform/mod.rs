//! What the agent needs from the operating system, behind one interface.
//!
//! Everything OS-specific the agent does goes through this module: containing a script run
//! (and everything it starts) so that nothing outlives the run or the agent, cleaning up after
//! an agent that was killed, keeping other processes of the same user out of the agent's
//! memory, noticing that the manifest changed, the signals that stop the agent or make it
//! reload, and the owner-only permissions of its state. The rest of the agent uses only the
//! types and functions below; each one's documentation is the contract a port must keep.
//!
//! The implementation is chosen at compile time: [`linux`] on Linux (cgroup v2, process groups,
//! `PR_SET_PDEATHSIG`, a child subreaper, inotify). On any other target the crate does not
//! build (a `compile_error!`, not a fallback that would run scripts without containment): a
//! port is a new file beside `linux.rs` that provides the same items, and one more `cfg` line
//! here. docs/ARCHITECTURE.md, "Porting the agent", says what a Windows or macOS port
//! implements and which crates serve.
//!
//! The items here are thin wrappers, so that the contract is written once, here, and the
//! compiler checks that an implementation provides all of it.

use std::future::Future;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use outpost_protocol::CommandId;
use serde_json::Value;
use tokio::process::{Child, Command};

#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(target_os = "linux")]
use linux as imp;

#[cfg(not(target_os = "linux"))]
compile_error!(
    "outpost-agent has a platform implementation for Linux only: a port adds \
     agent/src/platform/<os>.rs (see docs/ARCHITECTURE.md, \"Porting the agent\")"
);

/// Keeps other processes of the agent's user (the scripts) from reading this process's memory
/// and environment, so that none can read the agent key out of the agent or the supervisor.
/// Also disables core dumps. Called first thing in `main`; a script the agent starts must not
/// inherit it (it would then be unable to debug itself). Returns why it failed, if it did:
/// the caller reports it and carries on.
pub fn make_undumpable() -> Result<(), String> {
    imp::make_undumpable()
}

/// What [`clean_up_after`] found and killed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Run boxes removed (cgroups on Linux, Job Objects on Windows).
    pub cgroups: usize,
    /// Processes killed because they belonged to a run the journal shows as interrupted.
    pub processes: usize,
}

/// Kills and removes what a previous agent process (killed, crashed, or stopped) left of its
/// runs, from what it recorded in `state_dir` and what the journal there shows as started but
/// not answered. Called by the agent at start, before the journal reports those runs
/// `interrupted` (so a retry never runs beside the old script), by the supervisor as soon as
/// the agent exits, and by test harnesses. Blocks until the kills are done (bounded: about
/// 10 s for processes stuck in the kernel).
pub fn clean_up_after(state_dir: &Path) -> Leftovers {
    imp::clean_up_after(state_dir)
}

/// How the agent contains its runs (`--containment`): a choice of the agent's configuration,
/// defined here because [`Containment::start`] is what acts on it. The help texts are Linux's;
/// a port maps the modes to its own boxes (Job Objects are the "cgroup" of Windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ContainMode {
    /// A cgroup per run where the agent may create one, else process mode.
    Auto,
    /// A cgroup per run; the agent refuses to start where it cannot create one.
    Cgroup,
    /// Process groups, a parent-death signal and a subreaper, never cgroups.
    Process,
}

/// The agent's way of containing runs, for a whole agent process: each run gets a [`Cell`],
/// and nothing a run starts may outlive the run, nor the agent (even `kill -9` of the agent).
/// Cheap to clone (a handle).
#[derive(Clone)]
pub struct Containment(std::sync::Arc<imp::Containment>);

impl Containment {
    /// Sets up containment for this agent process: first cleans up after the previous one
    /// ([`clean_up_after`]), then chooses the strongest mode `choice` allows and the machine
    /// offers. Fails only when `choice` demands a mode that is not available here.
    pub fn start(choice: ContainMode, state_dir: &Path, agent_id: &str) -> anyhow::Result<Self> {
        imp::Containment::start(choice, state_dir, agent_id).map(|c| Self(std::sync::Arc::new(c)))
    }

    /// Containment that only ties runs to the calling process and kills them at their end,
    /// adopting and recording nothing: for running scripts inside a process that is not the
    /// agent (tests).
    pub fn unconfined() -> Self {
        Self(std::sync::Arc::new(imp::Containment::unconfined()))
    }

    /// For `info`: `{"mode": …}` plus what explains it (the folder of the runs' boxes, or why
    /// the strongest mode is not used).
    pub fn describe(&self) -> Value {
        self.0.describe()
    }

    /// Prepares a run's box, before its leader is spawned. An error means the run cannot be
    /// contained as promised and must not start.
    pub fn prepare(&self, id: CommandId) -> std::io::Result<Cell> {
        self.0.prepare(id).map(Cell)
    }

    /// Collects the processes this process adopted (orphans of runs) for as long as the
    /// process lives, without taking a run leader's exit from tokio. Spawned once by the
    /// agent; a port without adoption returns at once.
    pub fn reap_orphans(&self) -> impl Future<Output = ()> + Send + 'static {
        self.0.clone().reap_orphans()
    }

    /// The agent is stopping: kills every running run and everything it started, and removes
    /// their boxes. Blocks (bounded) rather than awaiting, so that the runs' own tasks are not
    /// polled again to report the kill as their result: the next agent process reports them
    /// `interrupted`.
    pub fn shutdown(&self) {
        self.0.shutdown();
    }
}

/// One run's box: its leader and everything the leader starts, however it daemonizes.
pub struct Cell(imp::Cell);

impl Cell {
    /// Where the run is contained, for error messages (`the cgroup /sys/fs/cgroup/…`), when
    /// it has a box of its own.
    pub fn place(&self) -> Option<String> {
        self.0.place()
    }

    /// Spawns the run's leader in the box: a new process group (or the OS's equivalent), tied
    /// to the agent's life (it dies when the agent dies, whichever thread of the agent
    /// spawned it), inside the box before it runs any code of its own.
    pub async fn spawn(&mut self, command: Command) -> std::io::Result<Child> {
        self.0.spawn(command).await
    }

    /// Asks the whole run to stop (SIGTERM on Unix): the leader and everything it started.
    pub fn terminate(&self) {
        self.0.terminate();
    }

    /// Kills the whole run at once, leader and descendants, including those that left its
    /// process group.
    pub fn kill(&self) {
        self.0.kill();
    }

    /// Ends the run for good once its leader has been waited for: kills whatever is left,
    /// waits (bounded) until it is gone and removes the box. A `Cell` dropped without this
    /// (its run's future was dropped) kills the run as well.
    pub async fn finish(self) {
        self.0.finish().await;
    }
}

/// How often a watched file is checked anyway, for the changes the OS's notifications do not
/// report (a network filesystem changed from another host, an overflowed queue).
pub const SAFETY_CHECK: Duration = Duration::from_secs(60);
/// How often a watched file is checked when the OS offers no notifications at all.
pub const FALLBACK_POLL: Duration = Duration::from_secs(2);

/// Watches one file (the manifest) without waking the agent up to look.
pub struct FileWatch(imp::FileWatch);

impl FileWatch {
    /// Starts watching `path`, which need not exist yet. `safety` is how often the file is
    /// checked anyway when notifications work ([`SAFETY_CHECK`] in service), `fallback` how
    /// often when they do not ([`FALLBACK_POLL`]). A file replaced by a rename, and a symlink
    /// re-pointed, count as changes. Must be called inside a tokio runtime.
    pub fn new(path: &Path, safety: Duration, fallback: Duration) -> Self {
        Self(imp::FileWatch::new(path, safety, fallback))
    }

    /// Takes the file as it is now as seen (after a reload asked for by other means).
    pub fn mark_seen(&mut self) {
        self.0.mark_seen();
    }

    /// Returns once the file differs from the last version seen (created, replaced, written,
    /// removed). Cancel-safe: dropping the future loses no change, the next call finds it.
    pub async fn changed(&mut self) {
        self.0.changed().await;
    }
}

/// The operator's request to reload the manifest (SIGHUP on Unix; a port without one never
/// fires).
pub struct ReloadSignal(imp::ReloadSignal);

impl ReloadSignal {
    /// Starts listening. Must be called inside a tokio runtime.
    pub fn new() -> Self {
        Self(imp::ReloadSignal::listen())
    }

    /// Returns at the next request. Cancel-safe.
    pub async fn recv(&mut self) {
        self.0.recv().await;
    }
}

impl Default for ReloadSignal {
    fn default() -> Self {
        Self::new()
    }
}

/// Returns when the agent is asked to stop (SIGTERM or Ctrl-C on Unix; a service stop on
/// Windows). Pends forever when such requests cannot be received.
pub async fn stop_requested() {
    imp::stop_requested().await;
}

/// Hands the memory the allocator holds free back to the operating system. The agent calls
/// it when it has nothing to do (a connection just registered, a heartbeat with no command
/// running): memory freed in the middle of the heap otherwise stays resident for good, and
/// some of it is large (reading the system's CA certificates takes ~320 KiB on Debian 12, of
/// which ~60 KiB is kept). Cheap on a small heap; never needed for correctness.
pub fn release_free_memory() {
    imp::release_free_memory()
}

/// The signal that ended a process, if one did (Unix), for the exit record; `None` where the
/// OS has no signals.
pub fn exit_signal(status: &ExitStatus) -> Option<i32> {
    imp::exit_signal(status)
}

/// Creates `dir` and its parents, the new folders accessible to this user only (mode 0700 on
/// Unix). Leaves an existing folder's permissions as they are.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    imp::create_private_dir(dir)
}

/// Writes `bytes` to `path` readable and writable by this user only (mode 0600 on Unix),
/// through a temporary file renamed over it, so that a crash leaves the old file or the new,
/// never half of one (the agent's key and certificate: CONTRACT.md §19).
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    imp::write_private_file(path, bytes)
}

/// Makes an existing file or folder accessible to this user only, with full access for them
/// (mode 0700 on Unix).
pub fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    imp::restrict_to_owner(path)
}

/// Whether users other than the owner have any access to the file `meta` describes (a key
/// file that should be private): the permissions to show in a warning (the Unix mode bits,
/// e.g. `0o644`), or `None` when only its owner has.
pub fn open_to_others(meta: &std::fs::Metadata) -> Option<u32> {
    imp::open_to_others(meta)
}
