//! The script library, agent side (CONTRACT.md §15): a `run` whose `data.library` names a bundle
//! kept on the server.
//!
//! The server is a courier, not a master: a library script runs here only when this
//! machine's manifest consents (`library.allow` matches the name) and the bundle is signed by
//! a key that manifest pins (`library.keys`). A server that is taken over can therefore only
//! send what an operator already signed, to machines whose owners allowed it.
//!
//! The steps, each refusing with its own code and nothing executed on any refusal, are
//! ordered so that nothing is fetched or written for a run that would be refused anyway:
//!
//! 1. the policy ([`codes::SCRIPT_NOT_ALLOWED`]): no `library` in the manifest, a name no
//!    pattern allows, or a signer key the manifest does not pin. An unpinned key is a matter
//!    of consent, like the name, not of a damaged bundle; it is also the code the server
//!    uses when it refuses the same run early, so an operator reads one code for one cause
//!    whichever side noticed;
//! 2. the signature ([`codes::BUNDLE_REFUSED`]), checked against the pinned key *before*
//!    anything is downloaded: it covers the hash and size, which the download is then held to;
//! 3. the bundle ([`cache`]): from the cache when present (its hash checked again), else
//!    downloaded from the node of the current connection, at most `size` bytes, hashed on the
//!    way ([`codes::DOWNLOAD_FAILED`] for a refused or cut transfer, [`codes::BUNDLE_REFUSED`]
//!    for one that completes with other bytes);
//! 4. unpacking ([`unpack`]) into a fresh private folder under the bundle rules of
//!    `outpost_protocol::bundle::archive`, and the unpacked manifest's name and version must
//!    be the run's ([`codes::BUNDLE_REFUSED`]);
//! 5. the parameters, against the bundle's `params` ([`codes::BAD_PARAMS`]);
//! 6. the Python requirements ([`venv`]): a virtual environment per bundle hash, built
//!    outside the run's timeout ([`codes::REQUIREMENTS_FAILED`], the build log as output);
//! 7. the run itself, through [`crate::exec::run`] like any manifest script, in the unpacked
//!    folder, with the timeout the smaller of the request's and the bundle's `timeout_s`.
//!
//! The folder goes after the run whatever happened; the cached bundle and its virtual
//! environment stay for the next run. Both stores are bounded ([`MAX_CACHE_BYTES`],
//! [`MAX_VENVS`]), least recently used first out, never one a run is using.

pub mod cache;
pub mod unpack;
pub mod venv;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use outpost_protocol::bundle::{self, LibraryRun};
use outpost_protocol::{Response, ServerCommand, check, codes};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Agent;
use crate::exec::RunSpec;
use crate::manifest::{self, Script};
use crate::spool::SpoolWriter;

/// Bundles kept in the cache, together: 256 MiB (16 bundles of the largest size).
pub const MAX_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// Virtual environments kept (one per bundle hash with `requirements`).
pub const MAX_VENVS: usize = 16;
/// Time allowed for one bundle's download, the waits a busy server asks for (429, 503)
/// included.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Time allowed for building one virtual environment (`venv` and `pip install` together).
pub const VENV_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a library run did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The error code of the run's answer.
    pub code: &'static str,
    /// What was wrong, for people.
    pub message: String,
}

impl Refused {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The library's side of the state directory: `library/bundles` (the cache, one
/// `<sha256>.tar.gz` each), `library/venvs/<sha256>`, `library/runs/<command id>` (unpacked
/// bundles, while they run) and `library/tmp` (downloads and build logs in progress).
pub struct Library {
    bundles: PathBuf,
    venvs: PathBuf,
    runs: PathBuf,
    tmp: PathBuf,
    /// One lock per key (a bundle's download, a venv's build), so that concurrent runs of one
    /// bundle fetch and build it once. Entries go when nobody holds them.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Bundle hashes that runs are using now: never evicted.
    in_use: Mutex<HashMap<String, usize>>,
    max_cache_bytes: AtomicU64,
    max_venvs: AtomicUsize,
    /// Bundles downloaded since the agent started.
    downloads: AtomicU64,
    /// Virtual environments built (or tried) since the agent started.
    venv_builds: AtomicU64,
}

impl Library {
    /// Creates the folders (0700) and removes what a previous agent process left half done:
    /// unpacked bundles, partial downloads, virtual environments whose build did not finish.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let root = state_dir.join("library");
        let library = Self {
            bundles: root.join("bundles"),
            venvs: root.join("venvs"),
            runs: root.join("runs"),
            tmp: root.join("tmp"),
            locks: Mutex::new(HashMap::new()),
            in_use: Mutex::new(HashMap::new()),
            max_cache_bytes: AtomicU64::new(MAX_CACHE_BYTES),
            max_venvs: AtomicUsize::new(MAX_VENVS),
            downloads: AtomicU64::new(0),
            venv_builds: AtomicU64::new(0),
        };
        for dir in [
            &root,
            &library.bundles,
            &library.venvs,
            &library.runs,
            &library.tmp,
        ] {
            private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        for dir in [&library.runs, &library.tmp] {
            for entry in std::fs::read_dir(dir)?.flatten() {
                remove_tree(&entry.path());
            }
        }
        for entry in std::fs::read_dir(&library.venvs)?.flatten() {
            if !entry.path().join(venv::READY).is_file() {
                remove_tree(&entry.path());
            }
        }
        Ok(library)
    }

    /// Changes the bounds of the cache and of the virtual environments (tests make them small).
    pub fn set_limits(&self, cache_bytes: u64, venvs: usize) {
        self.max_cache_bytes.store(cache_bytes, Ordering::Relaxed);
        self.max_venvs.store(venvs, Ordering::Relaxed);
    }

    /// What `info` tells about the library (`library_cache`): the folder, and how many bundles were
    /// downloaded and environments built since the agent started (a cache hit counts neither).
    pub fn describe(&self) -> Value {
        json!({
            "dir": self.bundles.parent().map(|p| p.display().to_string()),
            "downloads": self.downloads.load(Ordering::Relaxed),
            "venv_builds": self.venv_builds.load(Ordering::Relaxed),
        })
    }

    /// Where a bundle is cached.
    pub fn bundle_path(&self, sha256: &str) -> PathBuf {
        self.bundles.join(format!("{sha256}.tar.gz"))
    }

    /// Where a bundle's virtual environment is.
    pub fn venv_path(&self, sha256: &str) -> PathBuf {
        self.venvs.join(sha256)
    }

    /// Where a run's bundle is unpacked.
    pub fn run_path(&self, id: outpost_protocol::CommandId) -> PathBuf {
        self.runs.join(id.to_string())
    }

    /// Takes the lock of `key`, waiting for whoever holds it.
    async fn lock(&self, key: String) -> KeyLock<'_> {
        let mutex = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = mutex.lock_owned().await;
        KeyLock {
            library: self,
            key,
            guard: Some(guard),
        }
    }

    /// Takes the lock of `key` if nobody holds it.
    fn try_lock(&self, key: String) -> Option<KeyLock<'_>> {
        let mutex = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = mutex.try_lock_owned().ok();
        // Built even without the guard, so that its drop removes an entry made for nothing.
        let lock = KeyLock {
            library: self,
            key,
            guard,
        };
        lock.guard.is_some().then_some(lock)
    }

    /// Whether a bundle may be removed now: nobody fetches or builds it (its lock, held by
    /// the caller while removing) and no run uses it. A run takes its lease before the lock,
    /// so one that starts after this check waits for the lock and then finds the file gone.
    fn evictable(&self, key: String, sha256: &str) -> Option<KeyLock<'_>> {
        let lock = self.try_lock(key)?;
        (!self.is_in_use(sha256)).then_some(lock)
    }

    /// Marks a bundle as in use until the lease is dropped.
    fn lease(&self, sha256: &str) -> Lease<'_> {
        *self
            .in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(sha256.to_owned())
            .or_default() += 1;
        Lease {
            library: self,
            sha256: sha256.to_owned(),
        }
    }

    fn is_in_use(&self, sha256: &str) -> bool {
        self.in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(sha256)
    }
}

/// A held [`Library::lock`]; the map entry goes with the last holder.
struct KeyLock<'a> {
    library: &'a Library,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for KeyLock<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.library.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

/// A bundle in use by one run.
struct Lease<'a> {
    library: &'a Library,
    sha256: String,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut in_use = self
            .library
            .in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_use.get_mut(&self.sha256) {
            *n -= 1;
            if *n == 0 {
                in_use.remove(&self.sha256);
            }
        }
    }
}

/// A run's unpacked bundle: removed when dropped, whatever the run's outcome.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// How long each step of a library run took, for the logs and the answer.
#[derive(Debug, Default)]
struct Timings {
    downloaded: bool,
    fetch: Duration,
    unpack: Duration,
    venv: Duration,
}

/// `run` of a library script: every check of the module docs, then the run. `library` is
/// `data.library` as it came.
pub async fn run(
    agent: &Agent,
    cmd: &ServerCommand,
    name: &str,
    library: &Value,
    cancel: CancellationToken,
) -> Response {
    let id = cmd.command_id;
    let started = Instant::now();
    let mut timings = Timings::default();
    let (spec, timeout_s, spool, dir, lease) = match prepare(
        agent,
        cmd,
        name,
        library,
        &cancel,
        &mut timings,
    )
    .await
    {
        Ok(prepared) => prepared,
        Err(refused) => {
            tracing::warn!(command_id = %id, script = %shown(name), code = refused.code, "library run refused: {}", refused.message);
            return Response::failed(id, refused.code, refused.message);
        }
    };
    let prepare_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        command_id = %id,
        script = %shown(name),
        downloaded = timings.downloaded,
        fetch_ms = timings.fetch.as_millis() as u64,
        unpack_ms = timings.unpack.as_millis() as u64,
        venv_ms = timings.venv.as_millis() as u64,
        "library bundle ready"
    );
    let mut response =
        crate::exec::run_for_answer(spec, timeout_s, agent.containment(), spool, cancel, || {
            agent.activity.notify_one()
        })
        .await;
    drop(dir);
    drop(lease);
    if let Value::Object(data) = &mut response.data {
        data.insert(
            "library".into(),
            json!({"downloaded": timings.downloaded, "prepare_ms": prepare_ms}),
        );
    }
    response
}

type Prepared<'a> = (RunSpec, u32, SpoolWriter, RunDir, Lease<'a>);

async fn prepare<'a>(
    agent: &'a Agent,
    cmd: &ServerCommand,
    name: &str,
    library: &Value,
    cancel: &CancellationToken,
    timings: &mut Timings,
) -> Result<Prepared<'a>, Refused> {
    let id = cmd.command_id;
    check::script_name(name).map_err(|why| Refused::new(codes::BAD_DATA, why))?;
    let run: LibraryRun = serde_json::from_value(library.clone())
        .map_err(|e| Refused::new(codes::BAD_DATA, format!("data.library: {e}")))?;
    run.check()
        .map_err(|why| Refused::new(codes::BAD_DATA, format!("data.{why}")))?;

    // 1. Consent.
    let manifest = agent.manifest();
    consent(manifest.library(), name, &run.key)?;

    // 2. The signature, before a byte is fetched.
    verify_signature(&run)?;

    // 3. The bundle.
    let store = agent.library();
    let lease = store.lease(&run.sha256);
    let step = Instant::now();
    let (bundle_file, downloaded) = cache::fetch(store, agent.endpoint(), &run, cancel).await?;
    timings.fetch = step.elapsed();
    timings.downloaded = downloaded;

    // 4. Unpacking, into a folder that goes whatever happens next.
    let step = Instant::now();
    let dir = RunDir(store.run_path(id));
    let target = dir.0.clone();
    let contents = tokio::task::spawn_blocking(move || unpack::unpack(&bundle_file, &target))
        .await
        .map_err(|e| Refused::new(codes::INTERNAL, format!("unpacking stopped: {e}")))??;
    timings.unpack = step.elapsed();
    let bundle_manifest = contents.manifest;
    if bundle_manifest.name != name || bundle_manifest.version != run.version {
        return Err(Refused::new(
            codes::BUNDLE_REFUSED,
            format!(
                "the bundle holds {}@{}, not the {}@{} the run names",
                bundle_manifest.name, bundle_manifest.version, name, run.version
            ),
        ));
    }

    // 5. Parameters, under the bundle's list as a manifest script's are under its own.
    let script = Script {
        name: name.to_owned(),
        path: bundle_manifest.entrypoint.clone(),
        description: None,
        args: Vec::new(),
        timeout_s: bundle_manifest.timeout_s,
        params: bundle_manifest
            .params
            .is_some()
            .then(|| bundle_manifest.params()),
    };
    let params = manifest::params_env(&script, cmd.data.get("params"))
        .map_err(|why| Refused::new(codes::BAD_PARAMS, why))?;

    let mut spool = SpoolWriter::create(&agent.spool_path(id)).map_err(|e| {
        Refused::new(
            codes::INTERNAL,
            format!("cannot create the output spool: {e}"),
        )
    })?;
    let max_output = crate::exec::max_output(cmd);
    let entrypoint = dir.0.join(&bundle_manifest.entrypoint);

    // 6. Requirements: a virtual environment, outside the run's timeout.
    let (program, args, env) = match &bundle_manifest.requirements {
        None => (entrypoint, Vec::new(), Vec::new()),
        Some(requirements) => {
            let step = Instant::now();
            let venv =
                venv::ensure(agent, &run.sha256, &dir.0, requirements, &mut spool, cancel).await?;
            timings.venv = step.elapsed();
            let bin = venv.join("bin");
            let path = match std::env::var("PATH") {
                Ok(path) if !path.is_empty() => format!("{}:{path}", bin.display()),
                _ => bin.display().to_string(),
            };
            let env = vec![
                ("PATH".to_owned(), path),
                ("VIRTUAL_ENV".to_owned(), venv.display().to_string()),
            ];
            (
                bin.join("python"),
                vec![entrypoint.display().to_string()],
                env,
            )
        }
    };
    // A cancel that came while the bundle was being prepared stops it here, before it runs.
    if cancel.is_cancelled() {
        return Err(Refused::new(
            codes::CANCELLED,
            "cancelled before the bundle ran",
        ));
    }
    let timeout_s = timeout_s(cmd, &bundle_manifest);
    let spec = RunSpec {
        id,
        program,
        args,
        params,
        env,
        dir: dir.0.clone(),
        timeout: Duration::from_secs(u64::from(timeout_s)),
        max_output,
    };
    Ok((spec, timeout_s, spool, dir, lease))
}

/// The run's timeout: the request's, capped by the bundle's `timeout_s`.
fn timeout_s(cmd: &ServerCommand, manifest: &bundle::BundleManifest) -> u32 {
    match manifest.timeout_s {
        Some(ceiling) => cmd.timeout_s.min(ceiling),
        None => cmd.timeout_s,
    }
    .max(1)
}

/// Step 1: the manifest's consent to this name and this signer.
pub fn consent(
    policy: Option<&bundle::LibraryPolicy>,
    name: &str,
    key: &str,
) -> Result<(), Refused> {
    let Some(policy) = policy else {
        return Err(Refused::new(
            codes::SCRIPT_NOT_ALLOWED,
            "this agent's manifest has no \"library\" section: it runs no library script",
        ));
    };
    if policy.allow.is_empty() {
        return Err(Refused::new(
            codes::SCRIPT_NOT_ALLOWED,
            "this agent's manifest allows no library script (library.allow is empty)",
        ));
    }
    if !policy.allows(name) {
        const SHOWN: usize = 10;
        let mut patterns = policy.allow[..policy.allow.len().min(SHOWN)].join(", ");
        if policy.allow.len() > SHOWN {
            patterns.push_str(&format!(" and {} more", policy.allow.len() - SHOWN));
        }
        return Err(Refused::new(
            codes::SCRIPT_NOT_ALLOWED,
            format!(
                "library script {:?} is not allowed by this agent's manifest (library.allow: {patterns})",
                shown(name),
            ),
        ));
    }
    if !policy.trusts(key) {
        return Err(Refused::new(
            codes::SCRIPT_NOT_ALLOWED,
            format!(
                "the bundle is signed by key {key}, which this agent's manifest does not pin \
                 (library.keys)"
            ),
        ));
    }
    Ok(())
}

/// Step 2: Ed25519 (ring) over [`bundle::signed_message`], with the run's key (pinned, as
/// [`consent`] checked).
pub fn verify_signature(run: &LibraryRun) -> Result<(), Refused> {
    use base64::Engine as _;
    let key = bundle::public_key(&run.key)
        .map_err(|why| Refused::new(codes::BAD_DATA, format!("data.library.key: {why}")))?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(run.signature.trim())
        .map_err(|_| {
            Refused::new(
                codes::BAD_DATA,
                "data.library.signature is not standard base64",
            )
        })?;
    let message = bundle::signed_message(&run.sha256, run.size);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(message.as_bytes(), &signature)
        .map_err(|_| {
            Refused::new(
                codes::BUNDLE_REFUSED,
                format!(
                    "the signature of bundle {} ({} bytes) does not verify with key {}",
                    run.sha256, run.size, run.key
                ),
            )
        })
}

/// At most 80 characters of a name from a request, for messages and logs.
fn shown(name: &str) -> String {
    name.chars().take(80).collect()
}

/// Creates a folder only this user may enter (0700), or makes an existing one so.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    crate::platform::create_private_dir(dir)?;
    crate::platform::restrict_to_owner(dir)
}

/// Removes a folder and what is in it, also when a script left folders without write or
/// search permission in it; never follows a symbolic link. A failure is logged: the folder
/// is tried again at the next start.
pub fn remove_tree(path: &Path) {
    let first = match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return,
        Ok(meta) if !meta.is_dir() => std::fs::remove_file(path),
        _ => std::fs::remove_dir_all(path),
    };
    if first.is_ok() {
        return;
    }
    open_up(path);
    if let Err(err) = std::fs::remove_dir_all(path)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %err, "cannot remove a library folder; it is tried again at the next start");
    }
}

/// Gives the owner full access to every folder under `path` (not following links).
fn open_up(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = crate::platform::restrict_to_owner(path);
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            open_up(&entry.path());
        }
    }
}

/// Lowercase hex of a digest.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
