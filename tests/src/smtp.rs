//! A real SMTP server for the email integration's tests: aiosmtpd (PyPI), run by
//! `tests/support/smtp_sink.py`, which writes each accepted message to a directory. Without
//! aiosmtpd a test skips, saying how to enable it (`pip install aiosmtpd`), unless
//! `OUTPOST_TEST_SMTP=1` asks for it (CI), when it fails instead. `OUTPOST_TEST_PYTHON` names
//! the interpreter that has it (default `python3`; CI's is a virtualenv's).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running SMTP sink; stopped when dropped.
pub struct SmtpSink {
    child: Child,
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl SmtpSink {
    /// Starts one, or returns `None` (after printing why `test` is skipped).
    pub fn start(test: &str) -> Option<Self> {
        let python = std::env::var("OUTPOST_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let found = Command::new(&python)
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            if std::env::var("OUTPOST_TEST_SMTP").as_deref() == Ok("1") {
                panic!(
                    "OUTPOST_TEST_SMTP=1 but python3 cannot import aiosmtpd (pip install aiosmtpd)"
                );
            }
            eprintln!(
                "SKIPPED {test}: needs an SMTP server: pip install aiosmtpd (CI sets OUTPOST_TEST_SMTP=1)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/smtp_sink.py");
        let mut child = Command::new(&python)
            .arg(script)
            .arg(port.to_string())
            .arg(dir.path().join("mail"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 tests/support/smtp_sink.py");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        // Blocks until the sink says it listens (or exits: then the line is empty).
        BufReader::new(stdout).read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ready", "the SMTP sink did not start");
        Some(Self { child, dir, port })
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The messages accepted so far, oldest first, each with its envelope lines first.
    pub fn messages(&self) -> Vec<String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("mail"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        paths.sort();
        paths
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
