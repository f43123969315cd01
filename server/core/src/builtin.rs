//! The agent and supervisor builds this server ships with, served as a release until the
//! operator publishes one.
//!
//! Why: `curl …/deploy.sh | bash -s -- --key …` must work on a fresh server, before anyone
//! has made a signing key or invented a version number. A server is shipped with the agent and
//! supervisor built with it, beside its executable (`target/debug` after `cargo build`,
//! `/usr/local/bin` in the server's image), or in `--builds-dir`. The server serves those
//! files under its own version and target triple, signed with a release key it makes at its
//! first start (`<data-dir>/release.key`, PKCS#8 PEM, mode 0600, like `master.key`).
//!
//! What stays as it is for published releases (`crate::release`): the same routes
//! (`/api/releases/…`, `/downloads/…`), the same v1 and v2 signed messages, so a supervisor
//! that pinned this server's key checks a built-in build exactly as it checks a published one
//! (the size before the download, the hash of what it wrote, name, version and target bound).
//! What changes is who holds the key: the server itself, so whoever controls the server (its
//! data directory) can sign agent builds that agents pinned to this key will install. Operators
//! who want the signing key offline publish releases with their own key
//! (`release keygen`, `release publish`); `/deploy.sh` then pins that key instead.
//!
//! Precedence: once any release is published, the built-in builds are not served at all, for
//! any target. The server never offers builds signed by two keys at once, and `/deploy.sh`
//! always pins the key of what it serves.
//!
//! Nothing is copied or embedded (embedding would add the agent and supervisor to the
//! server's binary, hundreds of megabytes in a debug build, for every server start and test;
//! figures: docs/BENCHMARKS.md, "Design notes behind the figures"). A file is hashed and
//! signed when it is first asked for, not at start, and again whenever its size, modification
//! time or inode change (a package upgrade replacing it), so the signature always covers the
//! file as it is. A file rewritten in place during a download fails the client's hash check,
//! and is signed afresh at the next request.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use outpost_protocol::release::{ARTIFACTS, Version};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// The file in the data directory holding the server's own release signing key.
pub const KEY_FILE: &str = "release.key";

/// The target triple this server was built for, which its built-in builds are taken to be.
pub const TARGET: &str = env!("OUTPOST_TARGET");

/// What identifies one version of a file: device, inode, size and modification time.
type Stamp = (u64, u64, u64, i64, i64);

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

/// One built-in file, hashed and signed.
#[derive(Debug, Clone)]
pub struct Signed {
    /// `outpost-agent` or `outpost-supervisor`.
    pub name: &'static str,
    /// Where it is.
    pub path: PathBuf,
    stamp: Stamp,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Over the v1 message.
    pub signature: String,
    /// Over the v2 message (with the size).
    pub signature_v2: String,
    /// The file's modification time (when it was built), shown as the release's date.
    pub modified: DateTime<Utc>,
}

/// The builds beside the server and the key that signs them.
pub struct Builtin {
    dir: PathBuf,
    key: Ed25519KeyPair,
    public_key: String,
    key_path: PathBuf,
    /// The server's own version: the builds ship with it.
    pub version: Version,
    /// [`TARGET`].
    pub target: &'static str,
    signed: tokio::sync::Mutex<Vec<Signed>>,
    hashed_packages: tokio::sync::Mutex<Vec<(String, Stamp, String)>>,
}

impl std::fmt::Debug for Builtin {
    // The key pair stays out of any log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builtin")
            .field("dir", &self.dir)
            .field("public_key", &self.public_key)
            .field("version", &self.version)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Builtin {
    /// Loads `<data-dir>/release.key`, creating it on first start, for the builds in `dir`
    /// (`--builds-dir`, else the directory of the server's executable).
    pub fn open(data_dir: &Path, dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let dir = match dir {
            Some(dir) => dir,
            None => std::env::current_exe()
                .context("cannot tell where the server's executable is (set --builds-dir)")?
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/")),
        };
        outpost_store::private_files::create_private_dir(data_dir)?;
        let key_path = data_dir.join(KEY_FILE);
        let key = match crate::release::create_signing_key(&key_path) {
            Ok(key) => {
                tracing::info!(path = %key_path.display(), "created the release key that signs the agent builds this server ships with; back it up with the data directory");
                key
            }
            Err(_) if key_path.exists() => crate::release::load_signing_key(&key_path)
                .with_context(|| {
                    format!(
                        "the server's release key {} is unusable; restore it from a backup (agents installed from this server pinned it)",
                        key_path.display()
                    )
                })?,
            Err(err) => return Err(err),
        };
        let public_key = STANDARD.encode(key.public_key().as_ref());
        let version = env!("CARGO_PKG_VERSION")
            .parse()
            .context("the server's own version is not MAJOR.MINOR.PATCH")?;
        Ok(Self {
            dir,
            key,
            public_key,
            key_path,
            version,
            target: TARGET,
            signed: tokio::sync::Mutex::new(Vec::new()),
            hashed_packages: tokio::sync::Mutex::new(Vec::new()),
        })
    }

    /// Where the builds are looked for.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The public half of the server's release key (base64), for agents to pin.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Whether the agent build is there (a `stat`, no hashing): what `/deploy.sh` asks before
    /// it offers this server's key for pinning.
    pub fn has_agent(&self) -> bool {
        self.dir.join(outpost_protocol::release::AGENT).is_file()
    }

    /// Logs what is served, or what is missing and how to fix it.
    pub fn log_startup(&self) {
        let missing: Vec<&str> = ARTIFACTS
            .iter()
            .copied()
            .filter(|name| !self.dir.join(name).is_file())
            .collect();
        if missing.is_empty() {
            tracing::info!(
                dir = %self.dir.display(),
                version = %self.version,
                target = self.target,
                public_key = %self.public_key,
                key = %self.key_path.display(),
                "serving the agent and supervisor builds shipped with this server until a release is published"
            );
        } else {
            tracing::warn!(
                dir = %self.dir.display(),
                missing = %missing.join(", "),
                "no built-in {} here: deploy.sh cannot install agents until the files are put there (or --builds-dir points at them), or a release is published (outpost-server release publish --help)",
                missing.join(" and ")
            );
        }
    }

    /// The built-in `name`, hashed and signed (again if the file changed since), or `None`
    /// when there is no such file.
    pub async fn artifact(&self, name: &str) -> anyhow::Result<Option<Signed>> {
        let Some(name) = ARTIFACTS.iter().copied().find(|a| *a == name) else {
            return Ok(None);
        };
        let path = self.dir.join(name);
        let meta = match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        // One hash at a time: concurrent first requests wait for it rather than each reading
        // the file.
        let mut signed = self.signed.lock().await;
        if let Some(found) = signed
            .iter()
            .find(|s| s.name == name && s.stamp == stamp(&meta))
        {
            return Ok(Some(found.clone()));
        }
        let hashed = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || hash(&path))
                .await
                .context("the hashing task failed")??
        };
        let Some((sha256, meta)) = hashed else {
            return Ok(None);
        };
        let (signature, signature_v2) = crate::release::sign_artifact(
            &self.key,
            name,
            &self.version,
            self.target,
            &sha256,
            meta.len(),
        );
        let entry = Signed {
            name,
            path,
            stamp: stamp(&meta),
            sha256,
            size: meta.len(),
            signature,
            signature_v2,
            modified: meta
                .modified()
                .map(DateTime::from)
                .unwrap_or_else(|_| Utc::now()),
        };
        tracing::info!(name, sha256 = %entry.sha256, size = entry.size, "signed the built-in build");
        signed.retain(|s| s.name != name);
        signed.push(entry.clone());
        Ok(Some(entry))
    }

    /// The built-in `name` opened for serving, with the signed facts that match the open file
    /// (its size and stamp checked on the descriptor, so a file replaced between signing and
    /// opening is signed afresh rather than served under the old hash).
    pub async fn open_file(&self, name: &str) -> anyhow::Result<Option<(tokio::fs::File, Signed)>> {
        for _ in 0..3 {
            let Some(signed) = self.artifact(name).await? else {
                return Ok(None);
            };
            let file = match tokio::fs::File::open(&signed.path).await {
                Ok(file) => file,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(err).with_context(|| format!("opening {}", signed.path.display()));
                }
            };
            if stamp(&file.metadata().await?) == signed.stamp {
                return Ok(Some((file, signed)));
            }
        }
        anyhow::bail!("the built-in {name} keeps changing while it is being served")
    }
}

/// The packages a server may serve (`scripts/packages.sh` names them).
pub const PACKAGES: &[&str] = &["outpost-agent", "outpost", "outpost-server"];

/// The Debian architectures Outpost is built for.
pub const PACKAGE_ARCHES: &[&str] = &["amd64", "arm64"];

/// The Debian architecture of [`TARGET`], when it is one of [`PACKAGE_ARCHES`].
pub fn debian_arch() -> Option<&'static str> {
    match TARGET.split('-').next() {
        Some("x86_64") => Some("amd64"),
        Some("aarch64") => Some("arm64"),
        _ => None,
    }
}

/// A served package: which one, for which architecture (from a file name
/// `<name>_<arch>.deb`, the only names the packages folder is asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageFile {
    /// One of [`PACKAGES`].
    pub name: &'static str,
    /// One of [`PACKAGE_ARCHES`].
    pub arch: &'static str,
}

impl PackageFile {
    /// Parses `<name>_<arch>.deb`; `None` for any other name (no path can come out of it).
    pub fn parse(file: &str) -> Option<Self> {
        let (name, arch) = file.strip_suffix(".deb")?.split_once('_')?;
        Some(Self {
            name: PACKAGES.iter().copied().find(|p| *p == name)?,
            arch: PACKAGE_ARCHES.iter().copied().find(|a| *a == arch)?,
        })
    }

    /// `<name>_<arch>.deb`.
    pub fn file_name(&self) -> String {
        format!("{}_{}.deb", self.name, self.arch)
    }
}

impl Builtin {
    /// Where the packages are looked for: `<builds-dir>/packages`.
    pub fn packages_dir(&self) -> PathBuf {
        self.dir.join("packages")
    }

    /// The package's SHA-256 (hashed again when the file changed), or `None` when the server
    /// has no such file.
    pub async fn package_sha256(&self, package: PackageFile) -> anyhow::Result<Option<String>> {
        Ok(self
            .package_with_stamp(package)
            .await?
            .map(|(sha, _, _)| sha))
    }

    /// The package opened for serving, its size and SHA-256, checked on the open descriptor
    /// like [`Builtin::open_file`].
    pub async fn open_package(
        &self,
        package: PackageFile,
    ) -> anyhow::Result<Option<(tokio::fs::File, u64, String)>> {
        for _ in 0..3 {
            let Some((sha256, stamp_then, path)) = self.package_with_stamp(package).await? else {
                return Ok(None);
            };
            let file = match tokio::fs::File::open(&path).await {
                Ok(file) => file,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err).with_context(|| format!("opening {}", path.display())),
            };
            let meta = file.metadata().await?;
            if stamp(&meta) == stamp_then {
                return Ok(Some((file, meta.len(), sha256)));
            }
        }
        anyhow::bail!(
            "{} keeps changing while it is being served",
            package.file_name()
        )
    }

    async fn package_with_stamp(
        &self,
        package: PackageFile,
    ) -> anyhow::Result<Option<(String, Stamp, PathBuf)>> {
        let file_name = package.file_name();
        let path = self.packages_dir().join(&file_name);
        let meta = match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        // One hash at a time, as for the binaries: a burst of first requests reads it once.
        let mut hashed = self.hashed_packages.lock().await;
        if let Some((_, stamp, sha)) = hashed
            .iter()
            .find(|(name, stamp, _)| *name == file_name && *stamp == self::stamp(&meta))
        {
            return Ok(Some((sha.clone(), *stamp, path)));
        }
        let result = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || hash(&path))
                .await
                .context("the hashing task failed")??
        };
        let Some((sha256, meta)) = result else {
            return Ok(None);
        };
        tracing::info!(file = %file_name, sha256 = %sha256, size = meta.len(), "hashed the package");
        hashed.retain(|(name, _, _)| *name != file_name);
        hashed.push((file_name, stamp(&meta), sha256.clone()));
        Ok(Some((sha256, stamp(&meta), path)))
    }
}

/// SHA-256 of the file and its metadata, taken on one open descriptor before and after the
/// read; retried when the file changed meanwhile. `None` when it disappeared.
fn hash(path: &Path) -> anyhow::Result<Option<(String, std::fs::Metadata)>> {
    use std::io::Read;
    for _ in 0..3 {
        let mut file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("opening {}", path.display())),
        };
        let before = file.metadata()?;
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let after = file.metadata()?;
        if stamp(&before) == stamp(&after) && size == after.len() {
            return Ok(Some((hex::encode(hasher.finish().as_ref()), after)));
        }
    }
    anyhow::bail!("{} keeps changing while it is being hashed", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_protocol::release::{AGENT, SUPERVISOR, signed_message, signed_message_v2};
    use ring::signature::{ED25519, UnparsedPublicKey};

    fn verify(public_key: &str, message: &str, signature: &str) -> bool {
        let key = STANDARD.decode(public_key).expect("key");
        let sig = STANDARD.decode(signature).expect("sig");
        UnparsedPublicKey::new(&ED25519, key)
            .verify(message.as_bytes(), &sig)
            .is_ok()
    }

    #[tokio::test]
    async fn signs_what_is_there_and_again_when_it_changes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let builds = tmp.path().join("builds");
        std::fs::create_dir(&builds).expect("builds");
        let builtin = Builtin::open(&data, Some(builds.clone())).expect("open");
        let mode = std::fs::metadata(data.join(KEY_FILE))
            .expect("key file")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        assert!(!builtin.has_agent());
        assert!(builtin.artifact(AGENT).await.expect("artifact").is_none());
        assert!(
            builtin
                .artifact("agent.db")
                .await
                .expect("artifact")
                .is_none()
        );

        std::fs::write(builds.join(AGENT), b"first build").expect("write");
        let first = builtin.artifact(AGENT).await.expect("ok").expect("some");
        assert!(builtin.has_agent());
        assert_eq!(first.size, 11);
        assert_eq!(
            first.sha256,
            hex::encode(ring::digest::digest(&ring::digest::SHA256, b"first build"))
        );
        let v = builtin.version;
        assert!(verify(
            builtin.public_key(),
            &signed_message(AGENT, &v, TARGET, &first.sha256),
            &first.signature
        ));
        assert!(verify(
            builtin.public_key(),
            &signed_message_v2(AGENT, &v, TARGET, &first.sha256, first.size),
            &first.signature_v2
        ));
        // The supervisor's signature does not pass for the agent.
        assert!(!verify(
            builtin.public_key(),
            &signed_message(SUPERVISOR, &v, TARGET, &first.sha256),
            &first.signature
        ));

        // Replaced (a package upgrade): signed afresh.
        let tmp_file = builds.join(".new");
        std::fs::write(&tmp_file, b"second, longer build").expect("write");
        std::fs::rename(&tmp_file, builds.join(AGENT)).expect("rename");
        let (_, second) = builtin.open_file(AGENT).await.expect("ok").expect("some");
        assert_ne!(second.sha256, first.sha256);
        assert_eq!(second.size, 20);

        // The same key at the next start; never overwritten.
        let again = Builtin::open(&data, Some(builds)).expect("open again");
        assert_eq!(again.public_key(), builtin.public_key());
    }

    #[test]
    fn package_names_are_the_only_files_asked_for() {
        let agent = PackageFile::parse("outpost-agent_amd64.deb").expect("agent");
        assert_eq!((agent.name, agent.arch), ("outpost-agent", "amd64"));
        assert_eq!(agent.file_name(), "outpost-agent_amd64.deb");
        assert!(PackageFile::parse("outpost_arm64.deb").is_some());
        for bad in [
            "outpost-agent_amd64",
            "outpost-agent_i386.deb",
            "../outpost-agent_amd64.deb",
            "outpost-agent_amd64.deb/..",
            "outpost-agent_0.1.0_amd64.deb",
            "other_amd64.deb",
            "_amd64.deb",
            "",
        ] {
            assert!(PackageFile::parse(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn hashes_packages_and_again_when_they_change() {
        let tmp = tempfile::tempdir().expect("tmp");
        let builds = tmp.path().join("builds");
        std::fs::create_dir_all(builds.join("packages")).expect("packages");
        let builtin = Builtin::open(&tmp.path().join("data"), Some(builds.clone())).expect("open");
        let agent = PackageFile::parse("outpost-agent_amd64.deb").expect("name");
        assert!(builtin.package_sha256(agent).await.expect("ok").is_none());

        let path = builds.join("packages").join(agent.file_name());
        std::fs::write(&path, b"first package").expect("write");
        let first = builtin
            .package_sha256(agent)
            .await
            .expect("ok")
            .expect("some");
        assert_eq!(
            first,
            hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                b"first package"
            ))
        );
        // An upgrade replaces the file: hashed afresh, and served with the new size.
        let new = builds.join("packages").join(".new");
        std::fs::write(&new, b"second, longer package").expect("write");
        std::fs::rename(&new, &path).expect("rename");
        let (_, size, second) = builtin
            .open_package(agent)
            .await
            .expect("ok")
            .expect("some");
        assert_eq!(size, 22);
        assert_ne!(second, first);
        assert_eq!(
            builtin.package_sha256(agent).await.expect("ok"),
            Some(second)
        );
    }
}
