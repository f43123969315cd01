//! Running one whitelisted script: its own process group, a clean environment, streamed
//! output, a timeout and cancellation, and nothing left behind.
//!
//! The script is executed directly (shebang or binary), never through a shell, with the
//! manifest's fixed arguments only. Its environment is built from nothing: `PATH`, `HOME`,
//! `LANG` and `TZ` from the agent, the request's parameters as `OUTPOST_PARAM_*`, and
//! `OUTPOST_RUN_ID`. Neither the agent key nor any other agent setting reaches it.
//!
//! The script leads a new process group, inside the run's box ([`crate::platform`]): its own
//! cgroup where the agent can create one, and a parent-death signal either way. On timeout or
//! cancel the whole run gets SIGTERM and, 5 s later, SIGKILL. When the script itself exits,
//! whatever it left running is killed at once (the whole cgroup; without one, its group and
//! the orphans the agent adopted from it), so a grandchild holding the output pipes cannot
//! keep the run open and nothing outlives the run. Reading output stops at the latest 5 s after
//! the script exits, for a descendant that escaped containment and still holds a pipe.
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use outpost_protocol::{
    CommandId, OutputStream, Response, ServerCommand, codes, limits::MAX_OUTPUT_CHUNK,
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::platform::{self, Containment};
use crate::spool::SpoolWriter;

/// Output kept per stream when the server does not say: 100 MiB, the protocol's default.
pub const DEFAULT_MAX_OUTPUT: u64 = 100 * 1024 * 1024;
/// Grace between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long output is still read after the script exited (for descendants that escaped).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

/// What to run.
pub struct RunSpec {
    /// The command's id, given to the script as `OUTPOST_RUN_ID`.
    pub id: CommandId,
    /// Resolved script file.
    pub program: PathBuf,
    /// Fixed arguments from the manifest.
    pub args: Vec<String>,
    /// `OUTPOST_PARAM_*` variables.
    pub params: Vec<(String, String)>,
    /// Variables set by the agent itself over the base ones (a library bundle's virtual
    /// environment: `PATH` with its `bin` first, `VIRTUAL_ENV`); never from a request.
    pub env: Vec<(String, String)>,
    /// Working directory (the manifest's folder, or a library run's unpacked bundle).
    pub dir: PathBuf,
    /// Time allowed.
    pub timeout: Duration,
    /// Bytes kept per stream; the rest is read and dropped.
    pub max_output: u64,
}

/// The exit record carried in `response.data`.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct ExitRecord {
    /// Exit code, when the script exited rather than being killed by a signal.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Wall time.
    pub duration_ms: u64,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Killed on request.
    pub cancelled: bool,
    /// Some output was over the cap and not kept.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub output_truncated: bool,
    /// Output could not be written to the spool (the agent's disk is full, say): what was
    /// kept before stays, nothing after it is (a hole would be worse), and the run fails with
    /// `output_lost`.
    #[serde(skip)]
    pub spool_failed: Option<String>,
    /// Bytes of stdout produced (kept or not).
    pub stdout_bytes: u64,
    /// Bytes of stderr produced.
    pub stderr_bytes: u64,
}

/// Why a run could not start.
#[derive(Debug)]
pub struct SpawnError(pub String);

/// The environment a script starts with.
pub fn base_env() -> Vec<(String, String)> {
    ["PATH", "HOME", "LANG", "TZ"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v)))
        .collect()
}

/// Runs the script to the end, in a box of `contain`, writing its output to `spool` and
/// calling `on_output` after each chunk.
pub async fn run(
    spec: RunSpec,
    contain: &Containment,
    mut spool: SpoolWriter,
    cancel: CancellationToken,
    on_output: impl Fn(),
) -> Result<ExitRecord, SpawnError> {
    let started = Instant::now();
    let mut cell = contain
        .prepare(spec.id)
        .map_err(|e| SpawnError(format!("cannot create the run's cgroup: {e}")))?;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(base_env())
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .envs(spec.params.iter().map(|(k, v)| (k, v)))
        .env("OUTPOST_RUN_ID", spec.id.to_string())
        .current_dir(&spec.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cell.spawn(command).await.map_err(|e| {
        let place = cell
            .place()
            .map(|place| format!(" in {place}"))
            .unwrap_or_default();
        SpawnError(format!(
            "cannot start {}{place}: {e}",
            spec.program.display()
        ))
    })?;
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(SpawnError("the script's output pipes are missing".into()));
    };

    let mut record = ExitRecord::default();
    let mut out_buf = vec![0u8; MAX_OUTPUT_CHUNK];
    let mut err_buf = vec![0u8; MAX_OUTPUT_CHUNK];
    let (mut out_open, mut err_open) = (true, true);
    let mut status = None;
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let far = || tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);

    loop {
        if status.is_some() && !out_open && !err_open {
            break;
        }
        tokio::select! {
            n = stdout.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => keep(&mut spool, OutputStream::Stdout, &out_buf[..n], &mut record, spec.max_output, &on_output),
            },
            n = stderr.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => keep(&mut spool, OutputStream::Stderr, &err_buf[..n], &mut record, spec.max_output, &on_output),
            },
            exit = child.wait(), if status.is_none() => {
                status = Some(exit);
                // Whatever the script left running goes with it.
                cell.kill();
                drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            () = &mut deadline, if status.is_none() && kill_at.is_none() => {
                record.timed_out = true;
                cell.terminate();
                kill_at = Some(tokio::time::Instant::now() + KILL_GRACE);
            }
            () = cancel.cancelled(), if status.is_none() && kill_at.is_none() => {
                record.cancelled = true;
                cell.terminate();
                kill_at = Some(tokio::time::Instant::now() + KILL_GRACE);
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or_else(far)), if status.is_none() && kill_at.is_some() => {
                cell.kill();
                kill_at = Some(far());
            }
            () = tokio::time::sleep_until(drain_until.unwrap_or_else(far)), if drain_until.is_some() => {
                // A descendant that escaped still holds a pipe; stop waiting for it.
                break;
            }
        }
    }
    record.duration_ms = started.elapsed().as_millis() as u64;
    cell.finish().await;
    match status {
        Some(Ok(status)) => {
            record.exit_code = status.code();
            record.signal = platform::exit_signal(&status);
        }
        Some(Err(e)) => return Err(SpawnError(format!("waiting for the script failed: {e}"))),
        None => {}
    }
    Ok(record)
}

/// Output kept per stream for a run: the server's `max_output_bytes`, else the default.
pub fn max_output(cmd: &ServerCommand) -> u64 {
    cmd.data
        .get("max_output_bytes")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_OUTPUT)
}

/// Runs a script that passed every check (from the manifest or the library) with [`run`] and
/// turns its exit record into the answer. `timeout_s` is the timeout as the answer states it.
pub async fn run_for_answer(
    spec: RunSpec,
    timeout_s: u32,
    contain: &Containment,
    spool: SpoolWriter,
    cancel: CancellationToken,
    on_output: impl Fn(),
) -> Response {
    let id = spec.id;
    match run(spec, contain, spool, cancel, on_output).await {
        Ok(record) => {
            let success = record.exit_code == Some(0)
                && !record.timed_out
                && !record.cancelled
                && record.spool_failed.is_none();
            let error = if success {
                None
            } else if let Some(why) = &record.spool_failed {
                Some((
                    codes::OUTPUT_LOST,
                    format!(
                        "the agent could not keep the script's output ({why}); the output stored \
                         is incomplete (exit code {:?})",
                        record.exit_code
                    ),
                ))
            } else if record.timed_out {
                Some((
                    codes::TIMED_OUT,
                    format!("killed after the {timeout_s} s timeout"),
                ))
            } else if record.cancelled {
                Some((codes::CANCELLED, "cancelled on request".to_owned()))
            } else if let Some(signal) = record.signal {
                Some((codes::KILLED, format!("killed by signal {signal}")))
            } else {
                Some((
                    codes::EXIT_CODE,
                    format!("exited with code {}", record.exit_code.unwrap_or(-1)),
                ))
            };
            let data = json!(record);
            match error {
                None => Response::ok(id, data),
                Some((code, message)) => Response {
                    data,
                    ..Response::failed(id, code, message)
                },
            }
        }
        Err(SpawnError(why)) => Response::failed(id, codes::SPAWN_FAILED, why),
    }
}

fn keep(
    spool: &mut SpoolWriter,
    stream: OutputStream,
    bytes: &[u8],
    record: &mut ExitRecord,
    cap: u64,
    on_output: &impl Fn(),
) {
    let total = match stream {
        OutputStream::Stdout => &mut record.stdout_bytes,
        OutputStream::Stderr => &mut record.stderr_bytes,
    };
    let kept_before = (*total).min(cap);
    *total += bytes.len() as u64;
    let room = cap.saturating_sub(kept_before) as usize;
    if room < bytes.len() {
        record.output_truncated = true;
    }
    let kept = &bytes[..bytes.len().min(room)];
    if kept.is_empty() || record.spool_failed.is_some() {
        return;
    }
    if let Err(err) = spool.append(stream, kept) {
        // Disk full or gone: the run goes on (killing it half-way could do more harm), its
        // output stops being kept, and it fails with `output_lost`.
        tracing::error!(error = %err, "cannot write script output to the spool; the run's output is incomplete");
        record.output_truncated = true;
        record.spool_failed = Some(err.to_string());
        return;
    }
    on_output();
}
