//! The bundle cache: `library/bundles/<sha256>.tar.gz`, filled from
//! `GET /agent/v1/scripts/{sha256}` and bounded by [`super::MAX_CACHE_BYTES`].
//!
//! A download is held to the run's signed hash and size: no more than `size` bytes are read
//! (a server sending more is refused at the first byte too many, whatever it announced), the
//! SHA-256 is computed as the bytes arrive, and the file is written beside the cache
//! (`library/tmp`), synced, and renamed into place only once both match. So the cache never
//! holds a file that is not exactly a signed bundle, and a cut or refused download leaves
//! nothing behind.
//!
//! A cached file is hashed again before each use rather than trusted by its name: it costs a
//! few milliseconds per MiB (figures: docs/OPERATIONS.md, "The script library on an agent"),
//! against a file damaged on disk or changed by hand in the state directory, which would
//! otherwise run without its signature meaning anything. One that does not match is removed
//! and downloaded again.
//!
//! A server that is busy (429 when a node already sends as many bundles as it allows, 503 when
//! it drains) is asked again after the `Retry-After` it names, jittered, within the
//! download's time: a run sent to a whole fleet at once must not fail on most agents because
//! they all asked in the same second.
//!
//! Each use touches the file's modification time, and eviction removes the least recently
//! used bundles until the cache fits its bound, never one a run is using.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use outpost_protocol::bundle::LibraryRun;
use outpost_protocol::codes;
use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::{DOWNLOAD_TIMEOUT, Library, Refused, hex};
use crate::http::Endpoint;

/// The cached bundle of `run`, downloading it first when needed. Returns its path and
/// whether it was downloaded.
pub async fn fetch(
    library: &Library,
    endpoint: Option<Endpoint>,
    run: &LibraryRun,
    cancel: &CancellationToken,
) -> Result<(PathBuf, bool), Refused> {
    let _lock = library.lock(format!("bundle:{}", run.sha256)).await;
    let path = library.bundle_path(&run.sha256);
    if path.exists() {
        let (check, sha256, size) = (path.clone(), run.sha256.clone(), run.size);
        let same = tokio::task::spawn_blocking(move || matches(&check, &sha256, size))
            .await
            .unwrap_or(false);
        if same {
            touch(&path);
            return Ok((path, false));
        }
        tracing::warn!(path = %path.display(), "a cached bundle does not match its hash; downloading it again");
        let _ = std::fs::remove_file(&path);
    }
    let Some(endpoint) = endpoint else {
        return Err(Refused::new(
            codes::DOWNLOAD_FAILED,
            "the agent has not reached a server yet to download the bundle from",
        ));
    };
    library
        .downloads
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + DOWNLOAD_TIMEOUT;
    let mut busy = 0u32;
    loop {
        let attempt = tokio::select! {
            result = download(library, &endpoint, run, &path, deadline) => result,
            () = cancel.cancelled() => {
                return Err(Refused::new(codes::CANCELLED, "cancelled while the bundle was downloading"));
            }
        };
        match attempt {
            Ok(()) => break,
            Err(Attempt::Failed(refused)) => return Err(refused),
            Err(Attempt::Busy {
                status,
                after,
                body,
            }) => {
                busy += 1;
                let wait = jittered(after);
                if Instant::now() + wait >= deadline {
                    return Err(Refused::new(
                        codes::DOWNLOAD_FAILED,
                        format!(
                            "downloading bundle {}: the server was still busy after {busy}                              tries in {} s (last answer {status}: {body})",
                            run.sha256,
                            DOWNLOAD_TIMEOUT.as_secs()
                        ),
                    ));
                }
                tracing::info!(bundle = %run.sha256, %status, wait_ms = wait.as_millis() as u64, "the server is busy sending bundles; downloading again after the wait it asked for");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = cancel.cancelled() => {
                        return Err(Refused::new(codes::CANCELLED, "cancelled while waiting to download the bundle"));
                    }
                }
            }
        }
    }
    evict(library, &run.sha256);
    Ok((path, true))
}

/// How one download attempt ended, short of success.
enum Attempt {
    /// The run fails with this.
    Failed(Refused),
    /// The server asked to be asked again later (429 or 503): after `after`.
    Busy {
        status: StatusCode,
        after: Duration,
        body: String,
    },
}

impl From<Refused> for Attempt {
    fn from(refused: Refused) -> Self {
        Self::Failed(refused)
    }
}

/// The longest wait taken from a `Retry-After` (a larger one is shortened to this).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The wait a `Retry-After` header asks for: whole seconds, 1 s when it is missing or not a
/// number (an HTTP date is not worth parsing here), at most [`MAX_RETRY_AFTER`].
fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
        .clamp(Duration::from_secs(1), MAX_RETRY_AFTER)
}

/// `after` plus up to half of it again, at random: a fleet refused together (a run sent to
/// every agent at once, more downloads than the server sends at a time) comes back spread out
/// rather than all in the same second.
fn jittered(after: Duration) -> Duration {
    after + after.mul_f64(rand::random::<f64>() / 2.0)
}

/// Whether the file at `path` is `size` bytes whose SHA-256 is `sha256`.
fn matches(path: &Path, sha256: &str, size: u64) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    if file.metadata().map(|m| m.len()).ok() != Some(size) {
        return false;
    }
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut reader = file.take(size + 1);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => context.update(&buf[..n]),
            Err(_) => return false,
        }
    }
    hex(context.finish().as_ref()) == sha256
}

/// Marks a cached file as just used.
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().write(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// A partial download, removed unless it was renamed into the cache.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One download attempt, which must end by `deadline`.
async fn download(
    library: &Library,
    endpoint: &Endpoint,
    run: &LibraryRun,
    path: &Path,
    deadline: Instant,
) -> Result<(), Attempt> {
    let sha = &run.sha256;
    let failed = |why: String| Refused::new(codes::DOWNLOAD_FAILED, why);
    let response = endpoint
        .get_bundle(sha, deadline.saturating_duration_since(Instant::now()))
        .await
        .map_err(|e| failed(format!("downloading bundle {sha}: {}", chain(&e))))?;
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        return Err(failed(format!(
            "the server has no bundle {sha} for this agent (404)"
        ))
        .into());
    }
    if !status.is_success() {
        let after = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(300).collect();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            return Err(Attempt::Busy {
                status,
                after,
                body,
            });
        }
        return Err(failed(format!(
            "downloading bundle {sha}: the server answered {status}: {body}"
        ))
        .into());
    }
    Ok(save(library, run, path, response).await?)
}

/// Writes the body of a successful answer into the cache, held to the signed hash and size.
async fn save(
    library: &Library,
    run: &LibraryRun,
    path: &Path,
    mut response: reqwest::Response,
) -> Result<(), Refused> {
    let sha = &run.sha256;
    let failed = |why: String| Refused::new(codes::DOWNLOAD_FAILED, why);
    let refused = |why: String| Refused::new(codes::BUNDLE_REFUSED, why);
    if let Some(length) = response.content_length()
        && length != run.size
    {
        return Err(refused(format!(
            "the server offers {length} bytes for bundle {sha}; its signature is for {}",
            run.size
        )));
    }
    let tmp = library
        .tmp
        .join(format!("{sha}.{}.part", uuid::Uuid::new_v4()));
    let mut partial = Partial(Some(tmp.clone()));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .await
        .map_err(|e| {
            Refused::new(
                codes::INTERNAL,
                format!("cannot write {}: {e}", tmp.display()),
            )
        })?;
    let local = |e: std::io::Error| {
        Refused::new(
            codes::INTERNAL,
            format!("cannot write the bundle to {}: {e}", tmp.display()),
        )
    };
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut got: u64 = 0;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                return Err(failed(format!(
                    "the download of bundle {sha} was cut after {got} of {} bytes: {}",
                    run.size,
                    chain(&e)
                )));
            }
        };
        got += chunk.len() as u64;
        if got > run.size {
            return Err(refused(format!(
                "the server sent more than the {} bytes bundle {sha} is signed for",
                run.size
            )));
        }
        context.update(&chunk);
        file.write_all(&chunk).await.map_err(local)?;
    }
    if got < run.size {
        return Err(failed(format!(
            "the download of bundle {sha} ended after {got} of {} bytes",
            run.size
        )));
    }
    let actual = hex(context.finish().as_ref());
    if actual != *sha {
        return Err(refused(format!(
            "the bytes downloaded for bundle {sha} have the SHA-256 {actual}: not the bundle \
             that was signed"
        )));
    }
    file.sync_all().await.map_err(local)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(local)?;
    partial.0 = None;
    if let Ok(dir) = std::fs::File::open(&library.bundles) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Removes the least recently used bundles until the cache fits its bound; never `keep` nor
/// one in use.
pub(super) fn evict(library: &Library, keep: &str) {
    let bound = library
        .max_cache_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    let Ok(entries) = std::fs::read_dir(&library.bundles) else {
        return;
    };
    let mut files: Vec<(SystemTime, u64, String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry
                .file_name()
                .to_str()?
                .strip_suffix(".tar.gz")?
                .to_owned();
            let meta = entry.metadata().ok()?;
            Some((
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
                name,
                entry.path(),
            ))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, size, sha, path) in files {
        if total <= bound {
            break;
        }
        if sha == keep {
            continue;
        }
        let Some(_lock) = library.evictable(format!("bundle:{sha}"), &sha) else {
            continue;
        };
        if std::fs::remove_file(&path).is_ok() {
            tracing::info!(bundle = %sha, bytes = size, "removed a bundle from the library cache (least recently used)");
            total -= size;
        }
    }
}

/// An error with its causes, which reqwest keeps apart ("error sending request" alone says
/// little).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
