//! Updates: ask the server for a release, download it beside the agent, verify it, swap it in,
//! and roll it back if it cannot stay up.
//!
//! Trust comes only from the pinned key (`OUTPOST_RELEASE_PUBKEY`): the server, the network
//! and the metadata are all treated as hostile. So the SHA-256 is computed over the bytes as
//! they are written to disk and must be the signed one, the signature is checked over a
//! message built from the version and target we asked for (never the server's copy of them),
//! and every failure removes the download and leaves the running binary alone (fail closed).
//!
//! A release's v2 signature also covers the file's size (`signed_message_v2`), and it is
//! checked *before* the download: a release not signed by the pinned key is refused without
//! fetching it, and the download stops at the signed size, whatever the server sends (a
//! `Content-Length` that differs is refused before the body is read; a body that runs past
//! the size is cut off at the first chunk that would cross it). A release published before
//! v2 signatures existed has only the v1 signature, over the SHA-256, which can only be
//! checked after the download: its size is then what the metadata says, unauthenticated, and
//! the download still stops there and at [`MAX_DOWNLOAD`] whatever the metadata says.
//!
//! The download is a temporary file in the agent's own directory (same filesystem, so the
//! final `rename` is atomic), created `O_EXCL` and owner-only until verified. The previous
//! binary is kept as `<agent>.prev` (a hard link, so it is never half-written), and the
//! swap is one `rename` over the agent's path.
//!
//! "Execute exactly the verified file": after the rename the supervisor hashes the file at
//! the final path again right before it starts it, and refuses (rolls back) on any
//! difference, so nothing swapped in between verification and start is run. What remains is
//! the instant between that last hash and `execve`; exploiting it needs write access to the
//! agent's directory, which already allows replacing the supervisor itself, so it gives an
//! attacker nothing new. Keep that directory writable by the agent's user only (deploy.sh
//! does).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use outpost_protocol::release::{
    self, ReleaseInfo, UpdateStatus, Version, signed_message, signed_message_v2,
};
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// The target triple this supervisor was built for; it installs agents of the same target.
pub const TARGET: &str = env!("OUTPOST_TARGET");

/// Largest agent binary accepted, whatever a release says.
pub const MAX_DOWNLOAD: u64 = 512 * 1024 * 1024;
/// Largest release metadata document accepted.
const MAX_METADATA: usize = 1024 * 1024;

/// File in the state directory recording which release the agent binary is.
pub const INSTALLED_FILE: &str = "installed.json";

/// What the supervisor installed last: the binary's release version and hash, and the one
/// before it (kept as `.prev`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// The agent binary's release version.
    pub version: Option<String>,
    /// Its SHA-256, to tell whether the file on disk is still that release.
    pub sha256: Option<String>,
    /// The version kept as `.prev`.
    pub previous_version: Option<String>,
    /// Its SHA-256.
    pub previous_sha256: Option<String>,
}

impl Installed {
    /// Reads the record (empty when absent or unreadable).
    pub fn load(state_dir: &Path) -> Self {
        std::fs::read(state_dir.join(INSTALLED_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the record atomically.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        write_atomic(
            &state_dir.join(INSTALLED_FILE),
            &serde_json::to_vec_pretty(self).unwrap_or_default(),
        )
    }

    /// The release version of a binary with hash `sha256`, if it is the recorded one.
    pub fn version_of(&self, sha256: Option<&str>) -> Option<&str> {
        match (&self.sha256, sha256) {
            (Some(recorded), Some(actual)) if recorded == actual => self.version.as_deref(),
            _ => None,
        }
    }
}

/// An `update` request as the agent left it in the state directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The version asked for; `None` = the latest.
    pub version: Option<Version>,
    /// Whether a downgrade is allowed.
    pub force: bool,
}

/// Reads and removes the agent's `target_version` and `update_force` files, so a later
/// restart never repeats the request.
pub fn take_request(state_dir: &Path) -> Result<Request, String> {
    let version_path = state_dir.join("target_version");
    let force_path = state_dir.join("update_force");
    let text = std::fs::read_to_string(&version_path).ok();
    let force = force_path.exists();
    let _ = std::fs::remove_file(&version_path);
    let _ = std::fs::remove_file(&force_path);
    let version = match text.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(
            text.parse()
                .map_err(|e| format!("the requested version is unusable: {e}"))?,
        ),
    };
    Ok(Request { version, force })
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finish().as_ref()))
}

/// `<agent>.prev`.
pub fn prev_path(bin: &Path) -> PathBuf {
    let mut name = bin.as_os_str().to_owned();
    name.push(".prev");
    PathBuf::from(name)
}

/// Talks to the server's release API and downloads verified binaries.
pub struct Updater {
    client: reqwest::Client,
    /// The REST base of each server node in `OUTPOST_SERVER_URL`.
    bases: Vec<url::Url>,
    api_key: String,
    pinned: Vec<u8>,
    /// How long to keep asking while no server answers ([`FETCH_PATIENCE`]).
    patience: Duration,
}

/// How long [`Updater::fetch`] keeps asking when no server node answers at all.
pub const FETCH_PATIENCE: Duration = Duration::from_secs(60);

/// How the names of downloads under way begin (followed by the supervisor's pid and a
/// random number), beside the agent so that the swap is a rename in one filesystem.
pub const PARTIAL_PREFIX: &str = ".outpost-agent.download-";

/// A download under way: its file is removed when this is dropped, unless [`Partial::keep`].
struct Partial(Option<PathBuf>);

impl Partial {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// The verified file, kept.
    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes downloads another process left in `dir` (a supervisor killed during one: its
/// drop never ran). Only one supervisor looks after an agent's folder, so a download not
/// named with this process's pid is nobody's.
fn remove_stale_downloads(dir: &Path) {
    let mine = format!("{PARTIAL_PREFIX}{}-", std::process::id());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(PARTIAL_PREFIX) && !name.starts_with(&mine) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %name, "removed a download a previous supervisor left")
                }
                Err(err) => {
                    tracing::warn!(file = %name, error = %err, "cannot remove a download a previous supervisor left")
                }
            }
        }
    }
}

/// The pauses between tries of something a restarting server may refuse for a moment: 1, 2,
/// 4, 8, then 15 s, while the next try still starts within the patience.
struct Retry {
    started: tokio::time::Instant,
    pause: Duration,
    patience: Duration,
}

impl Retry {
    fn new(patience: Duration) -> Self {
        Self {
            started: tokio::time::Instant::now(),
            pause: Duration::from_secs(1),
            patience,
        }
    }

    /// How long to wait before the next try, or `None`: patience is spent.
    fn next_pause(&mut self) -> Option<Duration> {
        let pause = self.pause;
        if self.started.elapsed() + pause > self.patience {
            return None;
        }
        self.pause = (pause * 2).min(Duration::from_secs(15));
        Some(pause)
    }
}

/// Why a download failed.
#[derive(Debug)]
pub enum DownloadError {
    /// The connection failed or broke off, or a 5xx: asking again (maybe another node) may
    /// work.
    Transport(String),
    /// Anything else: the release's size, hash or signature, a 4xx, this machine's disk.
    Refused(String),
}

impl DownloadError {
    /// What to log and report.
    pub fn into_message(self) -> String {
        match self {
            Self::Transport(why) | Self::Refused(why) => why,
        }
    }
}

/// How asking one server node for release metadata failed.
enum FetchError {
    /// No answer (connection refused, timeout, a 5xx from the node or a proxy before it):
    /// another node may answer.
    Unreachable(String),
    /// The node answered, and no other would answer better: every node of a cluster reads
    /// the same releases.
    Answered(String),
}

impl Updater {
    /// Builds an updater, or says why updates cannot work with this configuration.
    pub fn new(
        server_url: Option<&str>,
        api_key: Option<&str>,
        ca_cert: Option<&Path>,
        pubkey: Option<&str>,
    ) -> Result<Self, String> {
        let pubkey = pubkey.ok_or(
            "no release key is pinned (OUTPOST_RELEASE_PUBKEY): updates are refused; \
             set it to the key printed by `outpost-server release keygen`",
        )?;
        let pinned = STANDARD
            .decode(pubkey.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or("OUTPOST_RELEASE_PUBKEY is not a base64 Ed25519 public key (32 bytes)")?;
        let server_url = server_url.ok_or("OUTPOST_SERVER_URL is not set")?;
        let api_key = api_key.ok_or("OUTPOST_API_KEY is not set")?;
        let bases = outpost_agent::config::parse_server_urls(server_url)
            .map_err(|e| format!("{e:#}"))?
            .iter()
            .map(|url| api_base(url.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = outpost_agent::tls::client_config(ca_cert).map_err(|e| format!("{e:#}"))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            bases,
            api_key: api_key.to_owned(),
            pinned,
            patience: FETCH_PATIENCE,
        })
    }

    /// Keeps asking for `patience` instead of [`FETCH_PATIENCE`] while no server answers
    /// (zero: one round over the servers).
    #[must_use]
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// Release metadata for this supervisor's target: `version`, or the latest.
    ///
    /// With several server nodes, they are asked in turn from a random one (so a fleet
    /// updating at once spreads over them) until one answers; the download then comes from
    /// where that answer says.
    ///
    /// When no node answers at all (a server restarting, as it does in a rolling upgrade of
    /// the server while a rollout runs), it asks again after 1, 2, 4, 8 and then every 15 s,
    /// for [`FETCH_PATIENCE`] in all (see [`Updater::with_patience`]), before the update
    /// fails: the agent is not running meanwhile, but it could not reach that server either.
    pub async fn fetch(&self, version: Option<&Version>) -> Result<ReleaseInfo, String> {
        let mut retry = Retry::new(self.patience);
        loop {
            match self.fetch_round(version).await {
                Err(FetchError::Unreachable(why)) => {
                    let Some(pause) = retry.next_pause() else {
                        return Err(format!(
                            "{why} (no server answered for {} s)",
                            retry.started.elapsed().as_secs()
                        ));
                    };
                    tracing::warn!(error = %why, retry_in = ?pause, "no server answers about releases; asking again");
                    tokio::time::sleep(pause).await;
                }
                Err(FetchError::Answered(why)) => return Err(why),
                Ok(info) => return Ok(info),
            }
        }
    }

    /// One round of [`fetch`](Self::fetch): every node once.
    async fn fetch_round(&self, version: Option<&Version>) -> Result<ReleaseInfo, FetchError> {
        let start = rand::random_range(0..self.bases.len());
        let mut failures = Vec::new();
        for i in 0..self.bases.len() {
            let base = &self.bases[(start + i) % self.bases.len()];
            match self.fetch_from(base, version).await {
                Err(FetchError::Unreachable(why)) => {
                    if i + 1 < self.bases.len() {
                        tracing::warn!(error = %why, "no answer about releases; asking the next server");
                    }
                    failures.push(why);
                }
                answered => return answered,
            }
        }
        Err(FetchError::Unreachable(failures.join("; ")))
    }

    /// [`fetch`](Self::fetch) from one node.
    async fn fetch_from(
        &self,
        base: &url::Url,
        version: Option<&Version>,
    ) -> Result<ReleaseInfo, FetchError> {
        use FetchError::{Answered, Unreachable};
        let which = version.map_or_else(|| "latest".to_owned(), Version::to_string);
        let mut url = base.clone();
        let path = format!("{}/api/releases/{which}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.query_pairs_mut().append_pair("target", TARGET);
        let response = self
            .client
            .get(url.clone())
            .bearer_auth(&self.api_key)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| Unreachable(format!("asking {url} for release {which}: {e}")))?;
        let status = response.status();
        let body = read_limited(response, MAX_METADATA)
            .await
            .map_err(|e| Unreachable(format!("reading release metadata from {url}: {e}")))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
            let why = format!(
                "the server has no usable release {which} for {TARGET}: HTTP {status}: {text}"
            );
            return Err(if status.is_server_error() {
                Unreachable(format!("{url}: {why}"))
            } else {
                Answered(why)
            });
        }
        check_metadata(&url, &body, version).map_err(Answered)
    }

    /// Downloads the release's agent into a temporary file in `dir` and verifies its size,
    /// SHA-256 and signature (the v2 signature before the download, when the release has
    /// one). Returns the file and its hash; removes it on any failure.
    pub async fn download(
        &self,
        info: &ReleaseInfo,
        dir: &Path,
    ) -> Result<(PathBuf, String), String> {
        self.try_download(info, dir)
            .await
            .map_err(DownloadError::into_message)
    }

    /// [`download`](Self::download), saying whether asking again could work.
    pub async fn try_download(
        &self,
        info: &ReleaseInfo,
        dir: &Path,
    ) -> Result<(PathBuf, String), DownloadError> {
        let artifact = info.agent.as_ref().ok_or_else(|| {
            DownloadError::Refused(format!(
                "release {} has no {}",
                info.version,
                release::AGENT
            ))
        })?;
        if artifact.size > MAX_DOWNLOAD {
            return Err(DownloadError::Refused(format!(
                "release {} says its agent is {} bytes, more than the {MAX_DOWNLOAD} accepted",
                info.version, artifact.size
            )));
        }
        let signed_before = match &artifact.signature_v2 {
            Some(signature) => {
                let message = signed_message_v2(
                    release::AGENT,
                    &info.version,
                    TARGET,
                    &artifact.sha256,
                    artifact.size,
                );
                self.verify(&message, signature, &info.version)
                    .map_err(DownloadError::Refused)?;
                true
            }
            None => {
                tracing::warn!(
                    version = %info.version,
                    size = artifact.size,
                    "this release predates size-bound (v2) signatures: its size is not \
                     authenticated; the signature is checked after the download"
                );
                false
            }
        };
        remove_stale_downloads(dir);
        let tmp = dir.join(format!(
            "{PARTIAL_PREFIX}{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        // Removed on failure, and also when this future is dropped half-way (a shutdown
        // during the download): only a verified file outlives it.
        let partial = Partial(Some(tmp));
        let sha = self
            .download_to(info, partial.path(), signed_before)
            .await?;
        Ok((partial.keep(), sha))
    }

    /// Release metadata, then its agent downloaded and verified, asking again (from the
    /// metadata on) while the failure is the network's: a node that dies or restarts in the
    /// middle of a download (its URL names that node) is replaced by the one that answers
    /// next. `check` decides on the metadata before anything is downloaded (a refusal ends
    /// it; `Ok(None)`: nothing to do). Asks for [`FETCH_PATIENCE`] in all, like
    /// [`fetch`](Self::fetch).
    pub async fn fetch_and_download<T>(
        &self,
        version: Option<&Version>,
        dir: &Path,
        mut check: impl FnMut(&ReleaseInfo) -> Result<Option<T>, String>,
    ) -> Result<Option<(ReleaseInfo, T, PathBuf, String)>, (Option<ReleaseInfo>, String)> {
        let mut retry = Retry::new(self.patience);
        loop {
            let info = self.fetch(version).await.map_err(|why| (None, why))?;
            let decided = match check(&info) {
                Ok(Some(decided)) => decided,
                Ok(None) => return Ok(None),
                Err(why) => return Err((Some(info), why)),
            };
            match self.try_download(&info, dir).await {
                Ok((file, sha)) => return Ok(Some((info, decided, file, sha))),
                Err(DownloadError::Transport(why)) => {
                    let Some(pause) = retry.next_pause() else {
                        return Err((Some(info), why));
                    };
                    tracing::warn!(error = %why, retry_in = ?pause, "the download broke off; asking again");
                    tokio::time::sleep(pause).await;
                }
                Err(err) => return Err((Some(info), err.into_message())),
            }
        }
    }

    /// Checks an Ed25519 signature (base64) over `message` against the pinned key.
    fn verify(&self, message: &str, signature: &str, version: &Version) -> Result<(), String> {
        let signature = STANDARD
            .decode(signature)
            .map_err(|_| "the release signature is not base64".to_owned())?;
        UnparsedPublicKey::new(&ED25519, &self.pinned)
            .verify(message.as_bytes(), &signature)
            .map_err(|_| {
                format!(
                    "signature check failed: release {version} for {TARGET} is not signed by the \
                     pinned OUTPOST_RELEASE_PUBKEY (or its metadata was altered)"
                )
            })
    }

    /// The download itself. `signed_before`: the metadata's hash and size were verified
    /// (v2), so the file must only match them; otherwise the v1 signature is checked over the
    /// hash computed here.
    async fn download_to(
        &self,
        info: &ReleaseInfo,
        tmp: &Path,
        signed_before: bool,
    ) -> Result<String, DownloadError> {
        use DownloadError::{Refused, Transport};
        use std::os::unix::fs::OpenOptionsExt;
        let Some(artifact) = info.agent.as_ref() else {
            return Err(Refused("no agent in the release".into()));
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(tmp)
            .map_err(|e| Refused(format!("cannot create {}: {e}", tmp.display())))?;
        // No credentials: downloads are public, and the URL comes from the metadata, so it
        // may name another host that must not see the agent key.
        let mut response = self
            .client
            .get(&artifact.url)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| {
                let why = format!("downloading {}: {e}", artifact.url);
                // No answer, or a 5xx (the node or a proxy before it): another try may
                // work. A 4xx is the server's word.
                match e.status() {
                    Some(status) if !status.is_server_error() => Refused(why),
                    _ => Transport(why),
                }
            })?;
        if let Some(announced) = response.content_length()
            && announced != artifact.size
        {
            return Err(Refused(format!(
                "the server announces {announced} bytes for {}, the release states {}; \
                 not downloading it",
                artifact.url, artifact.size
            )));
        }
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Transport(format!("downloading {}: {e}", artifact.url)))?
        {
            // Nothing past the stated size is hashed or written: the first chunk that would
            // cross it ends the download (dropping the response closes the connection).
            if chunk.len() as u64 > artifact.size - size {
                return Err(Refused(format!(
                    "the download of {} is larger than the {} bytes the release states; \
                     stopped there",
                    artifact.url, artifact.size
                )));
            }
            size += chunk.len() as u64;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .map_err(|e| Refused(format!("writing {}: {e}", tmp.display())))?;
        }
        file.sync_all()
            .map_err(|e| Refused(format!("writing {}: {e}", tmp.display())))?;
        if size != artifact.size {
            // Without a Content-Length, a connection closed early ends the body without an
            // error: a short file is a broken download, not a refusal.
            return Err(Transport(format!(
                "the download of {} has {size} bytes, the release states {}",
                artifact.url, artifact.size
            )));
        }
        let sha = hex::encode(hasher.finish().as_ref());
        if !sha.eq_ignore_ascii_case(&artifact.sha256) {
            return Err(Refused(format!(
                "SHA-256 mismatch: the release states {}, the downloaded file hashes to {sha}",
                artifact.sha256
            )));
        }
        if !signed_before {
            let message = signed_message(release::AGENT, &info.version, TARGET, &sha);
            self.verify(&message, &artifact.signature, &info.version)
                .map_err(Refused)?;
        }
        Ok(sha)
    }
}

/// Reads release metadata and checks it is the release asked for.
fn check_metadata(
    url: &url::Url,
    body: &[u8],
    version: Option<&Version>,
) -> Result<ReleaseInfo, String> {
    let which = version.map_or_else(|| "latest".to_owned(), Version::to_string);
    let info: ReleaseInfo = serde_json::from_slice(body)
        .map_err(|e| format!("release metadata from {url} is malformed: {e}"))?;
    if info.target != TARGET {
        return Err(format!(
            "the server answered with a release for {:?}, not {TARGET}",
            info.target
        ));
    }
    if version.is_some_and(|v| *v != info.version) {
        return Err(format!(
            "asked for release {which}, the server answered with {}",
            info.version
        ));
    }
    Ok(info)
}

/// Makes the verified download executable, keeps the current binary as `.prev` and renames
/// the download over the agent's path.
pub fn install(bin: &Path, download: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(download, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", download.display()))?;
    let prev = prev_path(bin);
    match std::fs::remove_file(&prev) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("removing {}", prev.display()));
        }
        _ => {}
    }
    if bin.exists() && std::fs::hard_link(bin, &prev).is_err() {
        std::fs::copy(bin, &prev)
            .with_context(|| format!("keeping {} as {}", bin.display(), prev.display()))?;
    }
    std::fs::rename(download, bin)
        .with_context(|| format!("moving the new agent to {}", bin.display()))?;
    sync_dir(bin);
    Ok(())
}

/// Puts `.prev` back in place of the agent.
pub fn restore_previous(bin: &Path) -> anyhow::Result<()> {
    let prev = prev_path(bin);
    std::fs::rename(&prev, bin)
        .with_context(|| format!("restoring {} from {}", bin.display(), prev.display()))?;
    sync_dir(bin);
    Ok(())
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

/// Writes the report the agent sends with its next `register`.
pub fn write_status(state_dir: &Path, status: &UpdateStatus) {
    let path = state_dir.join("update_status.json");
    let bytes = serde_json::to_vec(status).unwrap_or_default();
    if let Err(err) = write_atomic(&path, &bytes) {
        tracing::error!(path = %path.display(), error = %err, "cannot write the update report");
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The REST base URL from the agent's server URL: `ws(s)://` becomes `http(s)://`, the path
/// prefix is kept.
pub fn api_base(server_url: &str) -> Result<url::Url, String> {
    let mut url = url::Url::parse(server_url)
        .map_err(|e| format!("OUTPOST_SERVER_URL {server_url:?} is not a URL: {e}"))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        other => {
            return Err(format!(
                "OUTPOST_SERVER_URL has unsupported scheme {other:?}"
            ));
        }
    };
    url.set_scheme(scheme)
        .map_err(|()| format!("cannot use {server_url:?} over {scheme}"))?;
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("more than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_of_the_list_is_asked_for_releases() {
        let updater = Updater::new(
            Some("ws://a:8080, wss://b/outpost/,http://c"),
            Some("opa_x"),
            None,
            Some(&STANDARD.encode([7u8; 32])),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let bases: Vec<_> = updater.bases.iter().map(url::Url::as_str).collect();
        assert_eq!(bases, ["http://a:8080/", "https://b/outpost/", "http://c/"]);
        for (list, want) in [
            ("ws://a,,ws://b", "entry 2 is empty"),
            ("ws://a,ftp://b", "entry 2 (\"ftp://b\") must be"),
            ("ws://a,http://a", "names the same server as entry 1"),
        ] {
            let err = Updater::new(
                Some(list),
                Some("opa_x"),
                None,
                Some(&STANDARD.encode([7u8; 32])),
            )
            .err()
            .unwrap_or_else(|| panic!("{list} accepted"));
            assert!(err.contains(want), "{list}: {err}");
        }
    }

    /// A server that is down when the supervisor asks (restarting) is asked again: the answer
    /// that comes once it listens decides, not the refused connection.
    #[tokio::test]
    async fn a_server_that_is_down_is_asked_again_until_it_answers() {
        // A free port, closed again: nothing listens on it for now.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let updater = Updater::new(
            Some(&format!("ws://{addr}")),
            Some("opa_x"),
            None,
            Some(&STANDARD.encode([7u8; 32])),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        let asking = tokio::spawn(async move { updater.fetch(None).await });
        // The server comes back after the first refusal; it has no such release (404).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
        let (mut conn, _) = listener.accept().await.expect("asked again");
        let mut request = vec![0u8; 4096];
        let n = tokio::io::AsyncReadExt::read(&mut conn, &mut request)
            .await
            .expect("request");
        assert!(
            String::from_utf8_lossy(&request[..n]).starts_with("GET /api/releases/latest?"),
            "{}",
            String::from_utf8_lossy(&request[..n])
        );
        tokio::io::AsyncWriteExt::write_all(
            &mut conn,
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nno such x",
        )
        .await
        .expect("answer");
        let err = match asking.await.expect("task") {
            Ok(info) => panic!("a 404 is a refusal, not release {}", info.version),
            Err(err) => err,
        };
        assert!(err.contains("HTTP 404"), "{err}");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "asked again after a pause"
        );
    }

    #[test]
    fn server_urls_map_to_the_rest_base() {
        for (input, want) in [
            ("ws://h:1", "http://h:1/"),
            ("wss://h/outpost/", "https://h/outpost/"),
            ("https://h", "https://h/"),
        ] {
            assert_eq!(api_base(input).expect(input).as_str(), want);
        }
        assert!(api_base("ftp://h").is_err());
    }

    #[test]
    fn requests_are_taken_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("target_version"), "1.2.3").expect("write");
        std::fs::write(dir.path().join("update_force"), "1").expect("write");
        let request = take_request(dir.path()).expect("request");
        assert_eq!(request.version, Some("1.2.3".parse().expect("v")));
        assert!(request.force);
        assert_eq!(take_request(dir.path()).expect("empty"), Request::default());
        std::fs::write(dir.path().join("target_version"), "latest!").expect("write");
        assert!(take_request(dir.path()).is_err());
    }

    #[test]
    fn the_record_names_only_its_own_file() {
        let installed = Installed {
            version: Some("1.0.0".into()),
            sha256: Some("aa".into()),
            ..Installed::default()
        };
        assert_eq!(installed.version_of(Some("aa")), Some("1.0.0"));
        assert_eq!(installed.version_of(Some("bb")), None);
        assert_eq!(installed.version_of(None), None);
    }
}
