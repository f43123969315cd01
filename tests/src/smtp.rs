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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(test, port)
    }

    /// Whether the SMTP sink can run here; `false` after printing why `test` is skipped
    /// (panics when `OUTPOST_TEST_SMTP=1` asks for it).
    pub fn available(test: &str) -> bool {
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
        }
        found
    }

    /// Starts one on `port` (a relay that comes up after the server that sends through it).
    pub fn start_on(test: &str, port: u16) -> Option<Self> {
        if !Self::available(test) {
            return None;
        }
        let python = std::env::var("OUTPOST_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let dir = tempfile::tempdir().expect("tempdir");
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

    /// Waits (up to 60 s) until a message to `to` whose text holds `needle` has arrived, and
    /// returns it; panics naming what did arrive otherwise.
    pub async fn wait_for(&self, to: &str, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let found = self.messages().into_iter().find(|m| {
                m.lines()
                    .any(|l| l.starts_with("X-Envelope-To:") && l.contains(to))
                    && (m.contains(needle)
                        || (m.contains("Content-Type: text/plain")
                            && text_part(m).contains(needle)))
            });
            if let Some(message) = found {
                return message;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no mail to {to} holding {needle:?} within 60 s; the sink has {:#?}",
                self.messages()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// The decoded text part of a message as the sink wrote it (a single-part plain message, or
/// the `text/plain` part of a multipart one), quoted-printable or base64 undone, as a mail
/// client shows it.
pub fn text_part(message: &str) -> String {
    let message = message.replace("\r\n", "\n");
    let start = message
        .find("Content-Type: text/plain")
        .unwrap_or_else(|| panic!("no text part in {message}"));
    let part = &message[start..];
    let (head, rest) = part
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no body in {part}"));
    let body = match rest.find("\n--") {
        Some(end) => &rest[..end],
        None => rest,
    };
    let encoding = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Transfer-Encoding: "))
        .unwrap_or("7bit")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => {
            use base64::Engine;
            let joined: String = body.split_whitespace().collect();
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(joined)
                    .expect("base64 body"),
            )
            .into_owned()
        }
        _ => body.to_owned(),
    }
}

/// The 6-digit code of a verification mail (CONTRACT.md §18): the first line of six digits in
/// its text part.
pub fn mailed_code(message: &str) -> String {
    let text = text_part(message);
    text.lines()
        .map(str::trim)
        .find(|l| l.len() == 6 && l.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no code in {text}"))
        .to_owned()
}

/// RFC 2045 quoted-printable: `=` at a line's end joins it to the next, `=XX` is a byte.
fn decode_quoted_printable(body: &str) -> String {
    let joined = body.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len() + 1
            && let Some(hex) = joined.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
