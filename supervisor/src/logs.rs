//! Size-rotated log files in `<state_dir>/logs`: `supervisor.log` (the supervisor's own
//! lines) and `agent.log` (the agent's stdout and stderr).
//!
//! Both are also copied to the supervisor's stderr, so `docker logs` and journald show
//! everything. A file past [`MAX_BYTES`] is renamed to `.1` (older ones shift up to
//! `.`[`KEEP`]`)` and a fresh one started, so the logs never take more than about
//! 6 × 10 MiB each. A log that cannot be written never stops the agent: the error is
//! reported once on stderr and the lines still go to stderr.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Size at which a log is rotated.
pub const MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept (`.1` … `.5`).
pub const KEEP: usize = 5;

/// An append-only file that rotates by size.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<File>,
    size: u64,
    failed: bool,
}

impl RotatingFile {
    /// Opens (creating) `path` for appending, with its directory.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> Self {
        let mut log = Self {
            path: path.to_owned(),
            max_bytes,
            keep,
            file: None,
            size: 0,
            failed: false,
        };
        log.reopen();
        log
    }

    fn reopen(&mut self) {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir);
        }
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
        {
            Ok(file) => {
                self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(file);
            }
            Err(err) => {
                self.file = None;
                if !self.failed {
                    self.failed = true;
                    eprintln!(
                        "outpost-supervisor: cannot write {}: {err}",
                        self.path.display()
                    );
                }
            }
        }
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) {
        self.file = None;
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        let _ = std::fs::rename(&self.path, self.rotated(1));
        self.reopen();
    }

    /// Appends `buf`, rotating first when it would pass the size limit.
    pub fn append(&mut self, buf: &[u8]) {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_bytes {
            self.rotate();
        }
        if let Some(file) = self.file.as_mut() {
            if file.write_all(buf).is_ok() {
                self.size += buf.len() as u64;
            } else {
                self.reopen();
            }
        }
    }
}

/// A log file shared between writers, whose lines are also copied to stderr.
#[derive(Clone)]
pub struct Log(Arc<Mutex<RotatingFile>>);

impl Log {
    /// Opens `<dir>/<name>` with the default limits.
    pub fn open(dir: &Path, name: &str) -> Self {
        Self(Arc::new(Mutex::new(RotatingFile::open(
            &dir.join(name),
            MAX_BYTES,
            KEEP,
        ))))
    }

    /// Writes to the file and to stderr.
    pub fn emit(&self, buf: &[u8]) {
        match self.0.lock() {
            Ok(mut file) => file.append(buf),
            Err(poisoned) => poisoned.into_inner().append(buf),
        }
        let _ = io::stderr().write_all(buf);
    }
}

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.emit(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs").join("x.log");
        let mut log = RotatingFile::open(&path, 100, 3);
        for i in 0..50 {
            log.append(format!("line {i:03} of the log\n").as_bytes());
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 100);
        for n in 1..=3 {
            let rotated = log.rotated(n);
            assert!(size(&rotated) > 0 && size(&rotated) <= 100, "{n}");
        }
        assert!(!log.rotated(4).exists());
        let newest = std::fs::read_to_string(&path).expect("read");
        assert!(newest.ends_with("line 049 of the log\n"), "{newest}");
    }
}
