//! The Linux implementation of [`crate::platform`].
//!
//! Containment ([`contain`]): a cgroup v2 per run where the agent may create one, process
//! groups, `PR_SET_PDEATHSIG` and a child subreaper, and the clean-up after a killed agent.
//! File watching ([`watch`]): inotify on the file's folder. Here: `PR_SET_DUMPABLE`, the
//! signals (SIGTERM and Ctrl-C stop, SIGHUP reloads), exit signals and Unix permission bits.

pub mod contain;
pub mod watch;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use tokio::signal::unix::{Signal, SignalKind, signal};

pub use contain::{Cell, Containment, clean_up_after};
pub use watch::FileWatch;

/// Makes this process non-dumpable (`PR_SET_DUMPABLE` 0): `/proc/<pid>/environ`, `mem`,
/// `maps`, `fd/` and ptrace become closed to other processes of the same user, which is what
/// scripts are. Processes with `CAP_SYS_PTRACE` (root) are not stopped by it. It also disables
/// core dumps. A script does not inherit it: `execve` makes a process dumpable again.
pub fn make_undumpable() -> Result<(), String> {
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("PR_SET_DUMPABLE failed: {e}"))
}

/// SIGHUP, when a handler could be installed.
pub struct ReloadSignal(Option<Signal>);

impl ReloadSignal {
    /// Installs the SIGHUP handler; without one, [`ReloadSignal::recv`] pends forever.
    pub fn listen() -> Self {
        Self(signal(SignalKind::hangup()).ok())
    }

    /// Returns at the next SIGHUP.
    pub async fn recv(&mut self) {
        match self.0.as_mut() {
            Some(hup) => {
                hup.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Returns at SIGTERM or Ctrl-C (SIGINT); pends forever when SIGTERM cannot be listened for.
pub async fn stop_requested() {
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// glibc's `malloc_trim(0)`: returns the free pages of every arena, not only the top of the
/// heap, to the kernel. Other C libraries have no such call; this does nothing there.
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointer and has no precondition; it works on the
    // allocator's own free lists under the allocator's locks.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// See the glibc version above.
#[cfg(not(target_env = "gnu"))]
pub fn release_free_memory() {}

/// The signal that ended the process, if any.
pub fn exit_signal(status: &ExitStatus) -> Option<i32> {
    status.signal()
}

/// `mkdir -p` with mode 0700 for the folders it creates.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Mode 0600, written to `<path>.tmp`, synced, renamed over `path`.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// `chmod 0700`.
pub fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// The permission bits, when any group or other bit is set.
pub fn open_to_others(meta: &std::fs::Metadata) -> Option<u32> {
    let mode = meta.permissions().mode();
    (mode & 0o077 != 0).then_some(mode & 0o777)
}
