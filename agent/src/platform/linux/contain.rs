//! Containment: what makes sure nothing a run started outlives the run, or the agent.
//!
//! A script leads its own process group, but a process group is only a convention: anything
//! it starts can leave with `setsid` (daemons, `nohup`, double forks), and when the agent is
//! killed (`kill -9`, the OOM killer, a crash) nothing at all used to end the script, which then
//! did its work after the run had been reported `interrupted`, beside the retry. Linux offers
//! three tools, used together:
//!
//! - **A parent-death signal** (`PR_SET_PDEATHSIG` = SIGKILL) on each run's leader, set in the
//!   child between `fork` and `exec`: the script dies with the agent, at once. The kernel sends
//!   it when the *thread* that forked exits, not the process, so every spawn happens on a
//!   thread that lives as long as the process: the main thread (the agent's runtime runs on
//!   it), else a spawner thread started once and never stopped ([`Cell::spawn`]). Never a
//!   `spawn_blocking` thread, which tokio ends after 10 s idle. The child checks `getppid()`
//!   after the `prctl`, in case the agent died before it.
//! - **A cgroup per run** (cgroup v2, kernel 5.14 or later for `cgroup.kill`), where the agent
//!   may create one: under its own cgroup, `outpost-agent-<agent id>/run-<command id>/`. The
//!   child moves itself there before `exec` (it writes `0` to the run's `cgroup.procs`, opened
//!   by the agent), so no process of the run is ever outside it, `setsid` or not. At the end
//!   of every run (exit, timeout, cancel) the whole cgroup is killed and removed. No
//!   controller is enabled anywhere, so cgroup v2's "no internal processes" rule does not
//!   apply and the agent stays where it was started (beside the supervisor, under systemd).
//!   The runs' parent folder is recorded in `<state-dir>/cgroup`, so that the next agent
//!   process (and the supervisor, as soon as the agent exits) kills what a killed agent left.
//! - **A child subreaper** (`PR_SET_CHILD_SUBREAPER`): orphans of a run are re-parented to the
//!   agent rather than to init, so the agent reaps them (no zombie waits on a PID 1 that may
//!   not reap) and, without cgroups, can find and kill them when their run ends.
//!
//! Without a usable cgroup (cgroup v1 only, a read-only `/sys/fs/cgroup` in a container, a
//! user session whose cgroup belongs to root, or `--containment process`), runs are contained
//! by process group, parent-death signal and subreaper: when a run ends, its group is killed,
//! and so is every orphan the agent adopted that does not name another running run in its
//! `OUTPOST_RUN_ID` (scripts inherit it). What a killed agent left is found at the next start
//! by that same variable. A process that both leaves its group and clears its environment
//! escapes this mode after an agent crash; docs/OPERATIONS.md says what holds where.
//!
//! This is containment against accidents and ordinary daemonizing, not a sandbox: a script
//! runs as the agent's user and may, if it means to, move itself into another cgroup that user
//! can write to.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use outpost_protocol::CommandId;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::platform::ContainMode as Choice;
use crate::platform::Leftovers;

/// The file in the state directory that names the folder of the runs' cgroups.
pub const CGROUP_RECORD: &str = "cgroup";
/// Prefix of the agent's folder of run cgroups (followed by the agent id).
const RUNS_PREFIX: &str = "outpost-agent-";
/// Prefix of one run's cgroup (followed by the command id).
const RUN_PREFIX: &str = "run-";
/// How long a killed cgroup may take to empty before it is left for the next clean-up.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);
/// The variable every script starts with; what attributes a process to its run.
const RUN_ID_VAR: &[u8] = b"OUTPOST_RUN_ID=";

/// The agent's way of containing runs, for a whole agent process.
pub struct Containment {
    /// The folder of the runs' cgroups, when cgroups are used.
    runs: Option<PathBuf>,
    /// Why cgroups are not used (logged, and shown in `info`).
    why_not: Option<String>,
    /// Running runs' leaders: pid -> run. Locked while a leader is spawned and while orphans
    /// are reaped, so the reaper never takes a leader's exit status from tokio.
    leaders: Mutex<HashMap<i32, CommandId>>,
    /// Whether this process adopts orphans and kills them when their run ends (the agent
    /// binary; not tests that run scripts inside a test process).
    adopts: bool,
}

/// Kills and removes what a previous agent process (killed, crashed, or stopped) left of
/// its runs: every run cgroup under the folder `<state_dir>/cgroup` names, and every process
/// whose `OUTPOST_RUN_ID` is a run the journal shows as started but not answered. The agent
/// calls it at start, before the journal reports those runs `interrupted`; the supervisor
/// calls it as soon as the agent exits, so a crashing agent's scripts do not run on during
/// the restart delay. Blocks for as long as the kills take (up to 10 s for a cgroup whose
/// processes are stuck in the kernel).
pub fn clean_up_after(state_dir: &Path) -> Leftovers {
    let mut left = Leftovers::default();
    if let Some(runs) = recorded_runs(state_dir) {
        left.cgroups = remove_runs(&runs);
    }
    let ids = crate::journal::unanswered(state_dir);
    if !ids.is_empty() {
        left.processes = kill_processes_of(&ids.into_iter().collect());
    }
    left
}

impl Containment {
    /// Sets up containment for this agent process: cleans up after the previous one, makes
    /// the agent a subreaper, and chooses cgroups when `choice` allows and they work here.
    /// Fails only when `choice` demands cgroups that are not available.
    pub fn start(choice: Choice, state_dir: &Path, agent_id: &str) -> anyhow::Result<Self> {
        let left = clean_up_after(state_dir);
        if left != Leftovers::default() {
            tracing::warn!(
                cgroups = left.cgroups,
                processes = left.processes,
                "killed what the previous agent process left running"
            );
        }
        if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %err, "cannot become a child subreaper; orphans of scripts go to init");
        }
        let cgroups = match choice {
            Choice::Process => Err("--containment process".to_owned()),
            Choice::Auto | Choice::Cgroup => create_runs_folder(agent_id),
        };
        let record = state_dir.join(CGROUP_RECORD);
        let (runs, why_not) = match cgroups {
            Ok(runs) => {
                if let Err(err) = std::fs::write(&record, format!("{}\n", runs.display())) {
                    // Without the record a killed agent's runs are found only by the next
                    // agent of the same cgroup; that is still this agent in most setups.
                    tracing::warn!(path = %record.display(), error = %err, "cannot record the runs' cgroup folder");
                }
                tracing::info!(cgroup = %runs.display(), "each run gets its own cgroup");
                (Some(runs), None)
            }
            Err(why) if choice == Choice::Cgroup => {
                anyhow::bail!("--containment cgroup: cgroups cannot be used here: {why}")
            }
            Err(why) => {
                let _ = std::fs::remove_file(&record);
                tracing::info!(reason = %why, "runs are contained by process group, parent-death signal and subreaper, without cgroups");
                (None, Some(why))
            }
        };
        Ok(Self {
            runs,
            why_not,
            leaders: Mutex::default(),
            adopts: true,
        })
    }

    /// Containment by process group and parent-death signal only, adopting nothing: for
    /// running scripts inside a process that is not the agent (tests).
    pub fn unconfined() -> Self {
        Self {
            runs: None,
            why_not: Some("not the agent process".into()),
            leaders: Mutex::default(),
            adopts: false,
        }
    }

    /// For `info`: `{"mode": "cgroup", "cgroup": folder}` or `{"mode": "process", "reason"}`.
    pub fn describe(&self) -> Value {
        match (&self.runs, &self.why_not) {
            (Some(runs), _) => json!({"mode": "cgroup", "cgroup": runs.display().to_string()}),
            (None, why) => json!({"mode": "process", "reason": why}),
        }
    }

    fn leaders(&self) -> MutexGuard<'_, HashMap<i32, CommandId>> {
        self.leaders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Prepares a run's box: its cgroup when cgroups are used.
    pub fn prepare(self: &Arc<Self>, id: CommandId) -> std::io::Result<Cell> {
        let (cgroup, procs) = match &self.runs {
            Some(runs) => {
                let dir = create_run_cgroup(runs, id)?;
                let procs = File::options()
                    .write(true)
                    .open(dir.join("cgroup.procs"))
                    .inspect_err(|_| {
                        let _ = std::fs::remove_dir(&dir);
                    })?;
                (Some(dir), Some(procs))
            }
            None => (None, None),
        };
        Ok(Cell {
            contain: self.clone(),
            id,
            cgroup,
            procs,
            leader: None,
            finished: false,
        })
    }

    /// Reaps the orphans this process adopted (as a subreaper), on every SIGCHLD, until the
    /// process ends. Leaders of running runs are left to tokio, which waits for them.
    pub async fn reap_orphans(self: Arc<Self>) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut sigchld) = signal(SignalKind::child()) else {
            tracing::warn!("cannot listen for SIGCHLD; adopted orphans are not reaped");
            return;
        };
        while sigchld.recv().await.is_some() {
            self.reap_now();
        }
    }

    fn reap_now(&self) {
        let leaders = self.leaders();
        for child in own_children() {
            if !leaders.contains_key(&child) {
                // Only zombies are collected; a live child answers "still alive".
                let _ = waitpid(Pid::from_raw(child), Some(WaitPidFlag::WNOHANG));
            }
        }
    }

    /// The agent is stopping: kills every running run and everything adopted, and removes
    /// the runs' cgroups. The runs stay `accepted` in the journal and are reported
    /// `interrupted` by the next agent process. Blocks (at most about 10 s) rather than
    /// awaiting: the runs' own tasks must not be polled again to report a kill as their result.
    pub fn shutdown(&self) {
        let leaders: Vec<i32> = self.leaders().keys().copied().collect();
        for pgid in leaders {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        if let Some(runs) = &self.runs {
            let removed = remove_runs(runs);
            if removed > 0 {
                tracing::info!(runs = removed, "killed the running scripts");
            }
        }
        if self.adopts {
            let deadline = Instant::now() + EMPTY_TIMEOUT;
            loop {
                let targets = self.orphans(None);
                if targets.is_empty() || Instant::now() > deadline {
                    break;
                }
                for pid in targets {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                std::thread::sleep(Duration::from_millis(10));
                self.reap_now();
            }
        }
    }

    /// Orphans adopted by this process that belong to no running run other than `ending`
    /// (by their `OUTPOST_RUN_ID`), with all their descendants.
    fn orphans(&self, ending: Option<CommandId>) -> Vec<Pid> {
        if !self.adopts {
            return Vec::new();
        }
        let (leaders, running): (HashSet<i32>, HashSet<CommandId>) = {
            let leaders = self.leaders();
            (
                leaders.keys().copied().collect(),
                leaders
                    .values()
                    .copied()
                    .filter(|id| Some(*id) != ending)
                    .collect(),
            )
        };
        let table = process_table();
        let me = std::process::id() as i32;
        let adopted: Vec<i32> = table
            .iter()
            .filter(|(pid, p)| p.ppid == me && p.alive && !leaders.contains(pid))
            .map(|(pid, _)| *pid)
            .filter(|pid| run_of(*pid).is_none_or(|id| !running.contains(&id)))
            .collect();
        with_descendants(&table, adopted)
    }
}

/// One run's box: its cgroup (if any), its leader and what kills them.
pub struct Cell {
    contain: Arc<Containment>,
    id: CommandId,
    cgroup: Option<PathBuf>,
    /// The run cgroup's `cgroup.procs`, which the child writes itself into before `exec`.
    procs: Option<File>,
    leader: Option<i32>,
    finished: bool,
}

/// A unit of work for the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

/// The thread that forks leaders when the caller is not on the main thread. It is started once
/// and never ends, so a parent-death signal set in its children fires only when the process
/// dies.
fn spawner() -> &'static Mutex<std::sync::mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("outpost-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            });
        if let Err(err) = started {
            tracing::error!(error = %err, "cannot start the spawner thread");
        }
        Mutex::new(tx)
    })
}

fn on_main_thread() -> bool {
    nix::unistd::gettid() == nix::unistd::getpid()
}

impl Cell {
    /// The run's cgroup, if it has one, as error messages name it.
    pub fn place(&self) -> Option<String> {
        self.cgroup
            .as_ref()
            .map(|dir| format!("the cgroup {}", dir.display()))
    }

    /// Spawns the run's leader: makes it lead a new process group, arms the parent-death signal
    /// and the move into the run's cgroup, then forks on a thread that lives as long as the process (see the module doc).
    pub async fn spawn(&mut self, mut command: Command) -> std::io::Result<Child> {
        arm(&mut command, self.procs.take());
        let contain = self.contain.clone();
        let id = self.id;
        let fork = move |mut command: Command| -> std::io::Result<Child> {
            let mut leaders = contain.leaders();
            let child = command.spawn()?;
            if let Some(pid) = child.id() {
                leaders.insert(pid as i32, id);
            }
            Ok(child)
        };
        let child = if on_main_thread() {
            fork(command)?
        } else {
            let handle = tokio::runtime::Handle::current();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let job: Job = Box::new(move || {
                // tokio registers the child with the caller's runtime.
                let _runtime = handle.enter();
                let _ = tx.send(fork(command));
            });
            spawner()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send(job)
                .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
            rx.await
                .map_err(|_| std::io::Error::other("the spawner thread dropped the spawn"))??
        };
        self.leader = child.id().map(|pid| pid as i32);
        Ok(child)
    }

    /// SIGTERM to the run: its process group and, with a cgroup, every process in it (or,
    /// without, every adopted orphan of the run).
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// SIGKILL to the whole run: `cgroup.kill` with a cgroup, else the group and the run's
    /// adopted orphans.
    pub fn kill(&self) {
        if let Some(dir) = &self.cgroup {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
        self.signal(Signal::SIGKILL);
    }

    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.leader {
            let _ = killpg(Pid::from_raw(pgid), signal);
        }
        match &self.cgroup {
            Some(dir) => {
                for pid in cgroup_pids(dir) {
                    let _ = kill(pid, signal);
                }
            }
            None => {
                for pid in self.contain.orphans(Some(self.id)) {
                    let _ = kill(pid, signal);
                }
            }
        }
    }

    /// Ends the run for good once its leader has been waited for: kills whatever is left,
    /// waits until it is gone and removes the run's cgroup.
    pub async fn finish(mut self) {
        self.kill();
        let deadline = tokio::time::Instant::now() + EMPTY_TIMEOUT;
        match self.cgroup.clone() {
            Some(dir) => {
                while populated(&dir) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if let Err(err) = remove_tree(&dir) {
                    tracing::warn!(cgroup = %dir.display(), error = %err, "cannot remove a run's cgroup; the next start removes it");
                }
                if let Some(runs) = dir.parent() {
                    // Fails while other runs have theirs: the last one out removes it.
                    let _ = std::fs::remove_dir(runs);
                }
            }
            None => loop {
                let left = self.contain.orphans(Some(self.id));
                if left.is_empty() || tokio::time::Instant::now() >= deadline {
                    break;
                }
                for pid in left {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            },
        }
        self.release();
        if self.contain.adopts {
            self.contain.reap_now();
        }
    }

    fn release(&mut self) {
        self.finished = true;
        if let Some(pid) = self.leader {
            self.contain.leaders().remove(&pid);
        }
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The run's future was dropped before it ended: kill it all, and remove the cgroup if
        // it is already empty (otherwise the next clean-up does).
        self.kill();
        if let Some(dir) = &self.cgroup {
            let _ = remove_tree(dir);
        }
        self.release();
    }
}

/// Makes the child lead a new process group (what [`Cell::terminate`] signals), set its
/// parent-death signal, check that its parent is still there, and move itself into the run's
/// cgroup, between `fork` and `exec`.
#[allow(unsafe_code)]
fn arm(command: &mut Command, procs: Option<File>) {
    command.process_group(0);
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before `exec`. It only makes system calls
    // (prctl, getppid, write) and allocates nothing, so it is safe in a child forked from a
    // multi-threaded process.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                // The agent died before the prctl: the signal will never come.
                return Err(nix::errno::Errno::ESRCH.into());
            }
            if let Some(procs) = &procs {
                // "0" moves the writing process.
                (&*procs).write_all(b"0")?;
            }
            Ok(())
        });
    }
}

/// This process's cgroup folder on the cgroup v2 hierarchy, from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`.
fn own_cgroup() -> Result<PathBuf, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 hierarchy (cgroup v1 only)")?;
    if !rel.starts_with('/') || rel.split('/').any(|part| part == "..") {
        return Err(format!(
            "the agent's cgroup {rel} is outside its cgroup namespace"
        ));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    for line in mounts.lines() {
        let Some((fields, rest)) = line.split_once(" - ") else {
            continue;
        };
        if rest.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = fields.split(' ').collect();
        let (Some(root), Some(point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let (root, point) = (unescape(root), PathBuf::from(unescape(point)));
        if let Ok(inner) = Path::new(rel).strip_prefix(&root) {
            let dir = point.join(inner);
            if dir.join("cgroup.procs").exists() {
                return Ok(dir);
            }
        }
    }
    Err(format!(
        "the cgroup v2 hierarchy holding {rel} is not mounted here"
    ))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the agent's cgroup and checks that runs can be placed under it: the agent may move
/// processes within its cgroup (the permission a child needs to move itself into a run's
/// cgroup), may create a folder there, and the kernel has `cgroup.kill`. Returns the folder
/// for the runs' cgroups (created per run, removed when the last run ends).
fn create_runs_folder(agent_id: &str) -> Result<PathBuf, String> {
    let base = own_cgroup()?;
    let procs = base.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).map_err(|e| {
        format!(
            "cannot move processes within {} ({e}); give the agent a delegated cgroup",
            base.display()
        )
    })?;
    let runs = base.join(format!("{RUNS_PREFIX}{agent_id}"));
    match std::fs::create_dir(&runs) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", runs.display())),
    }
    if !runs.join("cgroup.kill").exists() {
        let _ = std::fs::remove_dir(&runs);
        return Err("the kernel has no cgroup.kill (Linux 5.14 or later is needed)".into());
    }
    // Left over from an agent whose record was lost; then created again for each run.
    remove_runs(&runs);
    Ok(runs)
}

/// Creates `runs/run-<id>`, creating `runs` first when the last run removed it.
fn create_run_cgroup(runs: &Path, id: CommandId) -> std::io::Result<PathBuf> {
    let dir = runs.join(format!("{RUN_PREFIX}{id}"));
    let mut attempts = 0;
    loop {
        match std::fs::create_dir(runs) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(dir),
            // The last run out removed `runs` between the two calls.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// The runs folder `<state_dir>/cgroup` names, if it is one of ours and still exists.
fn recorded_runs(state_dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(state_dir.join(CGROUP_RECORD)).ok()?;
    let runs = PathBuf::from(text.trim());
    let ours = runs.is_absolute()
        && runs
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(RUNS_PREFIX))
        && runs.join("cgroup.procs").exists();
    ours.then_some(runs)
}

/// Kills every `run-*` cgroup in `runs`, waits for them to empty, removes them and `runs`.
/// Returns how many there were.
fn remove_runs(runs: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return 0;
    };
    let dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(RUN_PREFIX))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    for dir in &dirs {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    }
    let deadline = Instant::now() + EMPTY_TIMEOUT;
    for dir in &dirs {
        while populated(dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(err) = remove_tree(dir) {
            tracing::warn!(cgroup = %dir.display(), error = %err, "cannot remove a leftover run cgroup");
        }
    }
    let _ = std::fs::remove_dir(runs);
    dirs.len()
}

/// Whether a cgroup (or one below it) still has processes: `populated 1` in `cgroup.events`.
fn populated(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l == "populated 1"),
        Err(_) => false,
    }
}

/// Removes a cgroup and any cgroups a script created below it, deepest first.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The processes in a cgroup (not below it).
fn cgroup_pids(dir: &Path) -> Vec<Pid> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// One line of the process table.
struct Proc {
    ppid: i32,
    /// Not a zombie (nor dead).
    alive: bool,
}

/// Every process's parent and state, from `/proc/<pid>/stat`.
fn process_table() -> HashMap<i32, Proc> {
    let mut table = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return table;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next().unwrap_or("");
        let Some(ppid) = fields.next().and_then(|p| p.parse().ok()) else {
            continue;
        };
        table.insert(
            pid,
            Proc {
                ppid,
                alive: state != "Z" && state != "X",
            },
        );
    }
    table
}

/// `roots` and every live process below them.
fn with_descendants(table: &HashMap<i32, Proc>, roots: Vec<i32>) -> Vec<Pid> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, p) in table {
        children.entry(p.ppid).or_default().push(*pid);
    }
    let mut seen: HashSet<i32> = HashSet::new();
    let mut stack = roots;
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if let Some(kids) = children.get(&pid) {
            stack.extend(kids.iter().copied().filter(|k| table[k].alive));
        }
    }
    seen.into_iter().map(Pid::from_raw).collect()
}

/// This process's children: `/proc/self/task/*/children` (orphans are re-parented to one of
/// its threads), or the process table where the kernel does not offer those files.
fn own_children() -> Vec<i32> {
    let mut children = Vec::new();
    let mut found = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                found = true;
                children.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    if !found {
        let me = std::process::id() as i32;
        children = process_table()
            .into_iter()
            .filter(|(_, p)| p.ppid == me)
            .map(|(pid, _)| pid)
            .collect();
    }
    children
}

/// The run a process names in its `OUTPOST_RUN_ID`, if its environment can be read.
fn run_of(pid: i32) -> Option<CommandId> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(RUN_ID_VAR))
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
}

/// Kills every process (with its descendants) whose `OUTPOST_RUN_ID` is one of `ids`, until
/// none is left (at most about a second of rounds). Returns how many were killed.
fn kill_processes_of(ids: &HashSet<CommandId>) -> usize {
    let me = std::process::id() as i32;
    let mut killed = HashSet::new();
    for _ in 0..50 {
        let table = process_table();
        let named: Vec<i32> = table
            .iter()
            .filter(|(pid, p)| **pid != me && p.alive)
            .map(|(pid, _)| *pid)
            .filter(|pid| run_of(*pid).is_some_and(|id| ids.contains(&id)))
            .collect();
        let targets: Vec<Pid> = with_descendants(&table, named)
            .into_iter()
            .filter(|pid| pid.as_raw() != me)
            .collect();
        if targets.is_empty() {
            break;
        }
        for pid in targets {
            if kill(pid, Signal::SIGKILL).is_ok() {
                killed.insert(pid.as_raw());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    killed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_are_unescaped() {
        assert_eq!(unescape(r"/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn the_process_table_knows_this_process_and_its_parent() {
        let table = process_table();
        let me = table
            .get(&(std::process::id() as i32))
            .expect("this process");
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert!(me.alive);
    }

    /// The pitfall of `PR_SET_PDEATHSIG`: it fires when the thread that forked ends. A leader
    /// spawned from a `spawn_blocking` thread must outlive that thread.
    #[test]
    fn a_leader_spawned_off_the_main_thread_outlives_the_spawning_thread() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_keep_alive(Duration::from_millis(10))
            .enable_all()
            .build()
            .expect("runtime");
        let contain = Arc::new(Containment::unconfined());
        let (pid, blocking_tid) = runtime.block_on(async {
            let contain = contain.clone();
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                handle.block_on(async {
                    let mut cell = contain.prepare(uuid::Uuid::now_v7()).expect("cell");
                    let mut command = Command::new("sleep");
                    command.arg("30").kill_on_drop(false);
                    let child = cell.spawn(command).await.expect("spawn");
                    let pid = child.id().expect("pid") as i32;
                    // The cell's bookkeeping is not under test here.
                    cell.finished = true;
                    (pid, nix::unistd::gettid().as_raw())
                })
            })
            .await
            .expect("join")
        });
        // The blocking thread goes after 10 ms idle.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/self/task/{blocking_tid}")).exists() {
            assert!(Instant::now() < deadline, "the blocking thread did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        // A parent-death signal is queued while the thread exits, before its /proc entry
        // goes: by now the leader is either gone, or has SIGKILL pending, or was spared.
        let alive = process_table().get(&pid).is_some_and(|p| p.alive);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let doomed = status.lines().any(|line| {
            let mask = line
                .strip_prefix("SigPnd:")
                .or_else(|| line.strip_prefix("ShdPnd:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok());
            mask.is_some_and(|m| m & (1 << (Signal::SIGKILL as u64 - 1)) != 0)
        });
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(pid), None);
        assert!(
            alive && !doomed,
            "the leader died with the thread that spawned it (alive {alive}, SIGKILL pending {doomed})"
        );
    }
}
