//! Child processes: spawning the agent, collecting exit statuses, forwarding signals.
//!
//! All waiting goes through one [`Reaper`] that calls `waitpid(-1)` on every SIGCHLD (and on
//! a slow tick, in case a signal was coalesced). That is what lets the supervisor be a
//! container's PID 1: processes orphaned inside the container are re-parented to it and must
//! be reaped, and a reaper waiting on any pid would otherwise steal the agent's status from a
//! per-child wait. Spawning happens under the reaper's lock, so a child that exits at once is
//! never reaped before it is registered.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::logs::Log;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit code {code}"),
            Self::Signal(sig) => write!(f, "signal {sig}"),
        }
    }
}

#[derive(Default)]
struct Watches {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
}

/// Reaps every child (and, as PID 1, every orphan) and hands registered children's statuses
/// to their waiters.
#[derive(Clone)]
pub struct Reaper {
    watches: Arc<Mutex<Watches>>,
}

impl Reaper {
    /// Starts the reaping task.
    pub fn start() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let reaper = Self {
            watches: Arc::default(),
        };
        let mut sigchld = signal(SignalKind::child())?;
        let task = reaper.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
                task.reap();
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watches> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Collects every exited child without blocking.
    pub fn reap(&self) {
        let mut watches = self.lock();
        loop {
            let (pid, exit) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            match watches.waiting.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => tracing::debug!(pid = pid.as_raw(), %exit, "reaped an orphan"),
            }
        }
    }

    /// Spawns `command` and registers it; the receiver yields its exit.
    pub fn spawn(&self, command: &mut Command) -> std::io::Result<Running> {
        let mut watches = self.lock();
        let child = command.spawn()?;
        let pid = child.id() as i32;
        let (tx, rx) = oneshot::channel();
        watches.waiting.insert(pid, tx);
        drop(watches);
        Ok(Running {
            pid,
            exit: rx,
            exited: None,
            copiers: Vec::new(),
            drain_until: None,
            child,
        })
    }
}

/// A spawned, registered child.
pub struct Running {
    /// Its pid.
    pub pid: i32,
    exit: oneshot::Receiver<Exit>,
    /// The exit, once received (so that `wait` can be called again after it was cancelled).
    exited: Option<Exit>,
    /// One per thread copying its output; each resolves when its thread ends.
    copiers: Vec<oneshot::Receiver<()>>,
    /// How long after the exit the copiers may take to finish.
    drain_until: Option<tokio::time::Instant>,
    // Kept for its pipes; never waited on (the reaper does that).
    child: std::process::Child,
}

/// How long the child's output may take to drain after it exited. Its pipes reach end of file
/// as soon as it is gone, unless a process it started kept them open.
const DRAIN: Duration = Duration::from_secs(2);

impl Running {
    /// Waits for it to exit and for its last output to be copied to the log: the caller may
    /// act on the exit at once (the supervisor exits after an exit 0 or 99), and a crashing
    /// agent's last lines are the ones worth reading. Cancel-safe.
    pub async fn wait(&mut self) -> Exit {
        let exit = match self.exited {
            Some(exit) => exit,
            None => {
                // The reaper never drops a registered sender without sending.
                let exit = (&mut self.exit).await.unwrap_or(Exit::Signal(0));
                self.exited = Some(exit);
                exit
            }
        };
        let deadline = *self
            .drain_until
            .get_or_insert_with(|| tokio::time::Instant::now() + DRAIN);
        while let Some(copier) = self.copiers.last_mut() {
            if tokio::time::timeout_at(deadline, copier).await.is_err() {
                tracing::warn!(
                    pid = self.pid,
                    "the agent's output pipes are still open after it exited (a process it started holds them?); not waiting for the rest"
                );
                self.copiers.clear();
                break;
            }
            self.copiers.pop();
        }
        exit
    }

    /// Sends a signal (ignoring a child that is already gone).
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid), signal);
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Exit {
        self.signal(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    grace_ms = grace.as_millis() as u64,
                    "the agent ignored SIGTERM; sending SIGKILL"
                );
                self.signal(Signal::SIGKILL);
                self.wait().await
            }
        }
    }

    /// Writes the agent key to the child's standard input and closes it. The key is far
    /// smaller than a pipe's buffer, so this never blocks; a child that exited already is
    /// not an error here (its exit is).
    pub fn send_key(&mut self, key: &str) {
        use std::io::Write;
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(format!("{key}\n").as_bytes());
        }
    }

    /// Copies the child's stdout and stderr into `log`, line by line, on two threads, which
    /// [`wait`](Self::wait) lets finish.
    pub fn pipe_output(&mut self, log: &Log) {
        fn copy(reader: impl Read + Send + 'static, log: Log) -> oneshot::Receiver<()> {
            let (done, copier) = oneshot::channel::<()>();
            std::thread::spawn(move || {
                // Dropped when the thread ends, which resolves `copier`.
                let _done = done;
                let mut reader = BufReader::new(reader);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    // A line longer than 64 KiB is written in pieces: memory stays bounded.
                    match (&mut reader).take(64 * 1024).read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => log.emit(&line),
                    }
                }
            });
            copier
        }
        if let Some(out) = self.child.stdout.take() {
            self.copiers.push(copy(out, log.clone()));
        }
        if let Some(err) = self.child.stderr.take() {
            self.copiers.push(copy(err, log.clone()));
        }
    }
}

/// Builds the command that runs the agent. With a key, the agent is told to read it from its
/// standard input (`OUTPOST_API_KEY_FILE=-`), which [`Running::send_key`] fills: the key
/// never sits in the agent's environment, where `/proc/<pid>/environ` would show it to root
/// (the agent is non-dumpable, which keeps other users' and its scripts' reads out).
pub fn agent_command(
    bin: &Path,
    args: &[OsString],
    env: &[(String, String)],
    release_version: Option<&str>,
    with_key: bool,
) -> Command {
    let mut command = Command::new(bin);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("OUTPOST_API_KEY")
        .env_remove("OUTPOST_API_KEY_FILE")
        .env("OUTPOST_SUPERVISED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if with_key {
        command
            .env("OUTPOST_API_KEY_FILE", "-")
            .stdin(Stdio::piped());
    }
    match release_version {
        Some(version) => command.env("OUTPOST_RELEASE_VERSION", version),
        None => command.env_remove("OUTPOST_RELEASE_VERSION"),
    };
    command
}

/// Runs `bin --version` and returns the last word of its first line (`outpost-agent 1.2.3`
/// -> `1.2.3`), through the reaper so it cannot race it.
pub async fn probe_version(reaper: &Reaper, bin: &Path) -> Option<String> {
    let mut command = Command::new(bin);
    command
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut running = reaper.spawn(&mut command).ok()?;
    let stdout = running.child.stdout.take()?;
    let read = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let _ = stdout.take(4096).read_to_string(&mut text);
        text
    });
    let exit = tokio::time::timeout(Duration::from_secs(10), running.wait()).await;
    let Ok(Exit::Code(0)) = exit else {
        running.signal(Signal::SIGKILL);
        return None;
    };
    let text = read.await.ok()?;
    text.lines()
        .next()?
        .split_whitespace()
        .last()
        .map(str::to_owned)
}
