//! Python requirements: one virtual environment per bundle hash, `library/venvs/<sha256>`.
//!
//! A bundle naming `requirements` gets its environment before its first run:
//! `python3 -m venv <dir>`, then `<dir>/bin/python -m pip install --no-input
//! --disable-pip-version-check -r <file>` in the unpacked bundle (so that relative paths in
//! the file name files of the bundle), with `--require-hashes` when the file pins hashes
//! (`--hash=`), so that pip refuses any package whose hash the operator did not sign with the
//! bundle. The build is outside the run's timeout, bounded by [`super::VENV_TIMEOUT`], and
//! runs under the same rules as a script (a clean environment, its own process group and
//! box, killed on cancel), since `pip install` runs the packages' build code.
//!
//! The environment is built where it will be used (virtual environments hold their own path
//! and do not survive a move) and is marked ready ([`READY`]) only once both steps succeeded;
//! one without the mark is a build that failed or was cut by a crash, and is removed. A
//! failed build fails the run with `requirements_failed`, and its log (both steps' output) is
//! the run's output, where the operator reads it; nothing of the bundle runs.
//!
//! Concurrent runs of one bundle wait for one build (a lock per hash) instead of building
//! twice. At most [`super::MAX_VENVS`] environments are kept, the least recently used
//! removed first, never one a run is using.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use outpost_protocol::codes;
use tokio_util::sync::CancellationToken;

use super::{Library, Refused, VENV_TIMEOUT, remove_tree};
use crate::Agent;
use crate::exec::{self, ExitRecord, RunSpec};
use crate::spool::{SpoolReader, SpoolWriter};

/// The file that marks a virtual environment as complete.
pub const READY: &str = ".outpost-ready";
/// Output of a build kept per stream (pip is verbose when it fails).
const BUILD_LOG_MAX: u64 = 4 * 1024 * 1024;

/// The ready virtual environment of bundle `sha256`, built first when needed from
/// `requirements` (a path inside `bundle_dir`, the unpacked bundle). On a failed build the
/// log is appended to `spool`, the run's output.
pub async fn ensure(
    agent: &Agent,
    sha256: &str,
    bundle_dir: &Path,
    requirements: &str,
    spool: &mut SpoolWriter,
    cancel: &CancellationToken,
) -> Result<PathBuf, Refused> {
    let library = agent.library();
    let _lock = library.lock(format!("venv:{sha256}")).await;
    let venv = library.venv_path(sha256);
    let ready = venv.join(READY);
    if ready.is_file() {
        touch(&ready);
        return Ok(venv);
    }
    // A build that failed half-way, or that a crash cut.
    remove_tree(&venv);
    let log = library
        .tmp
        .join(format!("venv-{sha256}.{}.log", uuid::Uuid::new_v4()));
    library
        .venv_builds
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let outcome = build(agent, &venv, bundle_dir, requirements, &log, cancel).await;
    let result = match outcome {
        Ok(()) => match std::fs::write(&ready, format!("{sha256}\n")) {
            Ok(()) => {
                tracing::info!(bundle = %sha256, venv = %venv.display(), "virtual environment built");
                Ok(())
            }
            Err(e) => Err(Refused::new(
                codes::INTERNAL,
                format!("cannot mark {} as built: {e}", venv.display()),
            )),
        },
        Err(refused) => Err(refused),
    };
    if let Err(refused) = result {
        remove_tree(&venv);
        if refused.code == codes::REQUIREMENTS_FAILED {
            copy_log(&log, spool);
        }
        let _ = std::fs::remove_file(&log);
        return Err(refused);
    }
    let _ = std::fs::remove_file(&log);
    evict(library, sha256);
    Ok(venv)
}

/// `python3 -m venv`, then `pip install -r`, their output into the spool at `log`.
async fn build(
    agent: &Agent,
    venv: &Path,
    bundle_dir: &Path,
    requirements: &str,
    log: &Path,
    cancel: &CancellationToken,
) -> Result<(), Refused> {
    let deadline = Instant::now() + VENV_TIMEOUT;
    let failed = |why: String| Refused::new(codes::REQUIREMENTS_FAILED, why);
    let requirements = bundle_dir.join(requirements);
    let hashes = pins_hashes(&requirements)
        .map_err(|e| failed(format!("cannot read {}: {e}", requirements.display())))?;

    let spool = SpoolWriter::create(log).map_err(|e| {
        Refused::new(
            codes::INTERNAL,
            format!("cannot create the build log {}: {e}", log.display()),
        )
    })?;
    let step = RunSpec {
        id: uuid::Uuid::now_v7(),
        program: PathBuf::from("python3"),
        args: vec!["-m".into(), "venv".into(), venv.display().to_string()],
        params: Vec::new(),
        env: Vec::new(),
        dir: bundle_dir.to_owned(),
        timeout: deadline.saturating_duration_since(Instant::now()),
        max_output: BUILD_LOG_MAX,
    };
    let record = exec::run(step, agent.containment(), spool, cancel.clone(), || {})
        .await
        .map_err(|e| failed(format!("cannot start python3 -m venv: {}", e.0)))?;
    judge("python3 -m venv", &record)?;

    let spool = SpoolWriter::open_append(log).map_err(|e| {
        Refused::new(
            codes::INTERNAL,
            format!("cannot append to the build log {}: {e}", log.display()),
        )
    })?;
    let bin = venv.join("bin");
    let mut args: Vec<String> = [
        "-m",
        "pip",
        "install",
        "--no-input",
        "--disable-pip-version-check",
        "-r",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    args.push(requirements.display().to_string());
    if hashes {
        args.push("--require-hashes".into());
    }
    let path = match std::env::var("PATH") {
        Ok(path) if !path.is_empty() => format!("{}:{path}", bin.display()),
        _ => bin.display().to_string(),
    };
    let step = RunSpec {
        id: uuid::Uuid::now_v7(),
        program: bin.join("python"),
        args,
        params: Vec::new(),
        env: vec![
            ("PATH".into(), path),
            ("VIRTUAL_ENV".into(), venv.display().to_string()),
        ],
        dir: bundle_dir.to_owned(),
        timeout: deadline.saturating_duration_since(Instant::now()),
        max_output: BUILD_LOG_MAX,
    };
    let record = exec::run(step, agent.containment(), spool, cancel.clone(), || {})
        .await
        .map_err(|e| failed(format!("cannot start pip: {}", e.0)))?;
    judge("pip install", &record)
}

/// A build step's end as a refusal, if it did not succeed.
fn judge(what: &str, record: &ExitRecord) -> Result<(), Refused> {
    let failed = |why: String| {
        Refused::new(
            codes::REQUIREMENTS_FAILED,
            format!("{why}; the build log is the run's output, and nothing of the bundle ran"),
        )
    };
    if record.cancelled {
        return Err(Refused::new(
            codes::CANCELLED,
            format!("cancelled during {what}"),
        ));
    }
    if record.timed_out {
        return Err(failed(format!(
            "{what} did not finish within {} s (the requirements' own timeout)",
            VENV_TIMEOUT.as_secs()
        )));
    }
    match (record.exit_code, record.signal) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(failed(format!("{what} exited with code {code}"))),
        (None, Some(signal)) => Err(failed(format!("{what} was killed by signal {signal}"))),
        (None, None) => Err(failed(format!("{what} ended without an exit code"))),
    }
}

/// Whether a requirements file pins hashes (`--hash=` on any line): then pip must refuse any
/// requirement without one (`--require-hashes`), rather than leave unpinned ones to chance.
fn pins_hashes(path: &Path) -> std::io::Result<bool> {
    let file = std::fs::File::open(path)?;
    for line in BufReader::new(file).split(b'\n') {
        if line?.windows(7).any(|w| w == b"--hash=") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Appends a build log's chunks to the run's output.
fn copy_log(log: &Path, spool: &mut SpoolWriter) {
    let Some(mut reader) = SpoolReader::open(log) else {
        return;
    };
    while let Ok(Some(chunk)) = reader.next_chunk() {
        if let Err(e) = spool.append(chunk.stream, &chunk.bytes) {
            tracing::warn!(error = %e, "cannot copy the requirements' build log to the run's output");
            return;
        }
    }
}

fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().write(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Removes the least recently used environments past the bound; never `keep` nor one in use.
fn evict(library: &Library, keep: &str) {
    let bound = library.max_venvs.load(std::sync::atomic::Ordering::Relaxed);
    let Ok(entries) = std::fs::read_dir(&library.venvs) else {
        return;
    };
    let mut venvs: Vec<(SystemTime, String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_owned();
            let used = std::fs::metadata(entry.path().join(READY))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Some((used, name, entry.path()))
        })
        .collect();
    venvs.sort();
    let mut count = venvs.len();
    for (_, sha, path) in venvs {
        if count <= bound {
            break;
        }
        if sha == keep {
            continue;
        }
        let Some(_lock) = library.evictable(format!("venv:{sha}"), &sha) else {
            continue;
        };
        tracing::info!(bundle = %sha, "removed a virtual environment (least recently used)");
        remove_tree(&path);
        count -= 1;
    }
}
