//! A run's output reduced to what grouping needs (CONTRACT.md §16), computed once when the
//! run ends so that a job's summary never reads output again.
//!
//! - `stdout_sha`, `stderr_sha`: SHA-256 of every byte stored of each stream. Exact: two runs
//!   share a group only when their stored output is the same bytes (not UTF-8 text: invalid
//!   UTF-8 is fingerprinted as it came).
//! - `masked_sha`: SHA-256 of both streams' first [`MASK_BYTES`] with every run of ASCII digits
//!   replaced by one `#`, so that `41% used` and `63% used` group under `?mask=numbers`. The
//!   bound keeps the work per run constant however much a script prints.
//! - `first_line`, `last_line`: of stdout, or of stderr when stdout is empty; at most
//!   [`LINE_CHARS`] characters each, invalid UTF-8 replaced (they are shown, never compared).
//!   Empty lines are skipped, so a trailing newline does not make the last line empty.
//!
//! The digest is fed chunk by chunk in the order they were stored, so memory stays bounded
//! whatever the output's size.

use outpost_store::command;
use ring::digest::{Context, SHA256};
use serde_json::Value;

/// Bytes of each stream the masked fingerprint reads.
pub const MASK_BYTES: usize = 1024 * 1024;
/// Characters kept of the first and last line.
pub const LINE_CHARS: usize = 200;
/// Bytes kept of a line while it is read (a line longer than this is cut: enough for
/// [`LINE_CHARS`] characters of 4 bytes).
const LINE_BYTES: usize = LINE_CHARS * 4;

/// One stream being read.
struct StreamDigest {
    sha: Context,
    /// Bytes fed so far.
    bytes: u64,
    /// Masked bytes fed to the masked fingerprint (the first [`MASK_BYTES`]).
    masked_fed: usize,
    /// The previous byte fed to the mask was a digit.
    in_digits: bool,
    /// The first non-empty line, once complete.
    first: Option<Vec<u8>>,
    /// The line being read (its first [`LINE_BYTES`]).
    current: Vec<u8>,
    /// The current line has a non-whitespace byte.
    current_seen: bool,
    /// The last complete non-empty line.
    last: Option<Vec<u8>>,
}

impl StreamDigest {
    fn new() -> Self {
        Self {
            sha: Context::new(&SHA256),
            bytes: 0,
            masked_fed: 0,
            in_digits: false,
            first: None,
            current: Vec::new(),
            current_seen: false,
            last: None,
        }
    }

    fn feed(&mut self, bytes: &[u8], masked: &mut Context) {
        self.sha.update(bytes);
        self.bytes += bytes.len() as u64;
        let room = MASK_BYTES - self.masked_fed;
        let head = &bytes[..bytes.len().min(room)];
        if !head.is_empty() {
            let mut out = Vec::with_capacity(head.len());
            for &b in head {
                if b.is_ascii_digit() {
                    if !self.in_digits {
                        out.push(b'#');
                    }
                    self.in_digits = true;
                } else {
                    out.push(b);
                    self.in_digits = false;
                }
            }
            masked.update(&out);
            self.masked_fed += head.len();
        }
        for &b in bytes {
            if b == b'\n' {
                self.end_line();
            } else {
                if self.current.len() < LINE_BYTES {
                    self.current.push(b);
                }
                if !b.is_ascii_whitespace() {
                    self.current_seen = true;
                }
            }
        }
    }

    fn end_line(&mut self) {
        if self.current_seen {
            let line = std::mem::take(&mut self.current);
            if self.first.is_none() {
                self.first = Some(line.clone());
            }
            self.last = Some(line);
        } else {
            self.current.clear();
        }
        self.current_seen = false;
    }

    fn finish(mut self) -> (String, u64, Option<Vec<u8>>, Option<Vec<u8>>) {
        self.end_line();
        let sha = hex::encode(self.sha.finish());
        (sha, self.bytes, self.first, self.last)
    }
}

/// A run's output being digested: feed it chunk by chunk, then [`Digester::finish`].
pub struct Digester {
    stdout: StreamDigest,
    stderr: StreamDigest,
    masked_stdout: Context,
    masked_stderr: Context,
}

impl Default for Digester {
    fn default() -> Self {
        Self::new()
    }
}

impl Digester {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self {
            stdout: StreamDigest::new(),
            stderr: StreamDigest::new(),
            masked_stdout: Context::new(&SHA256),
            masked_stderr: Context::new(&SHA256),
        }
    }

    /// The next stored chunk of stdout (`stderr` false) or stderr.
    pub fn feed(&mut self, stderr: bool, bytes: &[u8]) {
        if stderr {
            self.stderr.feed(bytes, &mut self.masked_stderr);
        } else {
            self.stdout.feed(bytes, &mut self.masked_stdout);
        }
    }

    /// The fingerprints and lines of everything fed.
    pub fn finish(self) -> OutputDigest {
        let (stdout_sha, stdout_bytes, out_first, out_last) = self.stdout.finish();
        let (stderr_sha, _, err_first, err_last) = self.stderr.finish();
        let mut masked = Context::new(&SHA256);
        masked.update(self.masked_stdout.finish().as_ref());
        masked.update(self.masked_stderr.finish().as_ref());
        let (first, last) = if stdout_bytes > 0 && out_first.is_some() {
            (out_first, out_last)
        } else {
            (err_first, err_last)
        };
        OutputDigest {
            stdout_sha,
            stderr_sha,
            masked_sha: hex::encode(masked.finish()),
            first_line: first.map(|l| shown(&l)),
            last_line: last.map(|l| shown(&l)),
        }
    }
}

/// What [`Digester::finish`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDigest {
    /// SHA-256 of stdout, hex.
    pub stdout_sha: String,
    /// SHA-256 of stderr, hex.
    pub stderr_sha: String,
    /// SHA-256 of both streams' first [`MASK_BYTES`] with digits masked, hex.
    pub masked_sha: String,
    /// The first non-empty line (stdout's, or stderr's when stdout has none).
    pub first_line: Option<String>,
    /// The last non-empty line, from the same stream.
    pub last_line: Option<String>,
}

/// A line as shown: invalid UTF-8 replaced, a trailing `\r` dropped, at most [`LINE_CHARS`]
/// characters.
fn shown(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    text.chars().take(LINE_CHARS).collect()
}

/// The key of a run's group: runs with equal keys ended the same way with the same output.
/// 16 hex characters (64 bits of SHA-256) of the state, exit code, error code and the two
/// fingerprints (exact) or the masked one.
pub fn group_key(
    state: &str,
    exit_code: Option<i32>,
    error_code: Option<&str>,
    fingerprints: &[&str],
) -> String {
    let mut ctx = Context::new(&SHA256);
    let exit = exit_code.map(|c| c.to_string()).unwrap_or_default();
    for part in [state, &exit, error_code.unwrap_or("")]
        .into_iter()
        .chain(fingerprints.iter().copied())
    {
        ctx.update(part.as_bytes());
        ctx.update(&[0x1f]);
    }
    hex::encode(&ctx.finish().as_ref()[..8])
}

/// Whether `text` could be a key [`group_key`] made (16 lowercase hex characters).
pub fn is_group_key(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// How long a finished run took, in milliseconds: what its agent measured (`duration_ms` in
/// its result), or else from when it started (or was delivered, or made) to its end.
pub fn run_duration_ms(run: &command::Model) -> Option<i64> {
    let end = run.finished_at?;
    run.result
        .as_ref()
        .and_then(|r| r.get("duration_ms"))
        .and_then(Value::as_i64)
        .or_else(|| {
            let start = run
                .started_at
                .or(run.delivered_at)
                .unwrap_or(run.created_at);
            Some((end - start).num_milliseconds().max(0))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(chunks: &[(bool, &[u8])]) -> OutputDigest {
        let mut d = Digester::new();
        for (stderr, bytes) in chunks {
            d.feed(*stderr, bytes);
        }
        d.finish()
    }

    #[test]
    fn the_chunking_does_not_change_the_digest() {
        let text = b"first line\nsecond 42\n\nlast line 7\n";
        let whole = digest(&[(false, text)]);
        let bytes: Vec<(bool, &[u8])> = text.chunks(3).map(|c| (false, c)).collect();
        assert_eq!(digest(&bytes), whole);
        assert_eq!(whole.first_line.as_deref(), Some("first line"));
        assert_eq!(whole.last_line.as_deref(), Some("last line 7"));
        assert_eq!(
            whole.stdout_sha,
            hex::encode(ring::digest::digest(&SHA256, text))
        );
    }

    #[test]
    fn digits_are_masked_only_in_the_masked_fingerprint() {
        let a = digest(&[(false, b"/ 41% used\n")]);
        let b = digest(&[(false, b"/ 63% used\n")]);
        let c = digest(&[(false, b"/ 7% used\n")]);
        assert_ne!(a.stdout_sha, b.stdout_sha);
        assert_eq!(a.masked_sha, b.masked_sha);
        assert_eq!(a.masked_sha, c.masked_sha);
        let d = digest(&[(false, b"/ 41% free\n")]);
        assert_ne!(a.masked_sha, d.masked_sha);
        // A run of digits split across chunks is still one run.
        let split = digest(&[(false, b"/ 4"), (false, b"1% used\n")]);
        assert_eq!(split.masked_sha, a.masked_sha);
    }

    #[test]
    fn the_streams_are_told_apart() {
        let out = digest(&[(false, b"x\n")]);
        let err = digest(&[(true, b"x\n")]);
        assert_ne!(out.stdout_sha, err.stdout_sha);
        assert_ne!(out.masked_sha, err.masked_sha);
        assert_eq!(err.first_line.as_deref(), Some("x"));
    }

    #[test]
    fn only_the_first_mebibyte_is_masked() {
        let mut long = vec![b'a'; MASK_BYTES];
        let a = {
            let mut v = long.clone();
            v.extend_from_slice(b"tail one");
            digest(&[(false, &v)])
        };
        long.extend_from_slice(b"tail two");
        let b = digest(&[(false, &long)]);
        assert_eq!(a.masked_sha, b.masked_sha);
        assert_ne!(a.stdout_sha, b.stdout_sha);
    }

    #[test]
    fn invalid_utf8_and_long_lines_are_shown_bounded() {
        let mut line = vec![0xff, b'o', b'k'];
        line.extend(std::iter::repeat_n(b'z', 5000));
        let d = digest(&[(false, &line)]);
        let first = d.first_line.expect("a line");
        assert!(first.starts_with("\u{fffd}ok"), "{first}");
        assert_eq!(first.chars().count(), LINE_CHARS);
        let empty = digest(&[]);
        assert_eq!(empty.first_line, None);
    }

    #[test]
    fn group_keys_separate_every_part() {
        let k = group_key("failed", Some(1), None, &["a", "b"]);
        assert!(is_group_key(&k), "{k}");
        assert_ne!(k, group_key("failed", Some(2), None, &["a", "b"]));
        assert_ne!(k, group_key("failed", Some(1), Some("lost"), &["a", "b"]));
        assert_ne!(k, group_key("failed", Some(1), None, &["ab", ""]));
        assert!(!is_group_key("zz"));
        assert!(!is_group_key("0123456789ABCDEF"));
    }
}
