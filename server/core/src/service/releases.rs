//! Signed agent and supervisor builds: what the server publishes, and the builds it ships
//! with (`crate::builtin`) while nothing is published.
//!
//! Anyone may read these (an installer has no key yet); what is published is decided by the
//! operator with `outpost-server release publish`, not through the API.

use std::path::PathBuf;
use std::sync::Arc;

use outpost_protocol::release::Version;

use super::Core;
use outpost_store::domain::DomainError;
use outpost_store::release;

/// Where the server finds published files, and how it names their URLs.
#[derive(Debug)]
pub struct Files {
    /// `<data-dir>/releases`.
    pub dir: PathBuf,
    /// The builds shipped with the server, served while nothing is published.
    pub builtin: crate::builtin::Builtin,
    /// `--public-url`, for absolute download URLs.
    pub public_url: Option<String>,
    /// Whether this server serves HTTPS (for URLs built from the `Host` header).
    pub tls: bool,
    /// Under `--tls-auto`: what the install line pins (CONTRACT.md §19).
    pub pins: Option<InstallPins>,
}

/// What an install line pins when the server's certificate comes from its own CA.
#[derive(Debug, Clone)]
pub struct InstallPins {
    /// `sha256//<base64>` of the server key's SubjectPublicKeyInfo (`curl --pinnedpubkey`).
    pub server_key: String,
    /// Lowercase hex SHA-256 of the agent CA's certificate (deploy.sh `--ca-fingerprint`).
    pub ca_fingerprint: String,
}

/// Published releases.
#[derive(Clone)]
pub struct Releases {
    core: Arc<Core>,
    files: Arc<Files>,
}

impl Releases {
    pub(super) fn new(core: Arc<Core>, files: Files) -> Self {
        Self {
            core,
            files: Arc::new(files),
        }
    }

    /// Where the files are, the builds shipped with the server, and how URLs are made.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// The newest version published for `target`.
    pub async fn latest_version(&self, target: &str) -> Result<Option<Version>, DomainError> {
        Ok(self.core.store.latest_release_version(target).await?)
    }

    /// The newest version of one artifact published for `target`.
    pub async fn latest_artifact_version(
        &self,
        target: &str,
        name: &str,
    ) -> Result<Option<Version>, DomainError> {
        Ok(self
            .core
            .store
            .latest_artifact_version(target, name)
            .await?)
    }

    /// Whether anything was ever published (then the shipped builds are not served).
    pub async fn any_published(&self) -> Result<bool, DomainError> {
        Ok(self.core.store.any_release_published().await?)
    }

    /// Whether this server can serve agents `version` (CONTRACT.md §17: a published release of
    /// the agent, or, while nothing is published, the build it ships).
    pub async fn agent_servable(&self, version: &Version) -> Result<bool, DomainError> {
        let store = &self.core.store;
        if store
            .artifact_published(version, outpost_protocol::release::AGENT)
            .await?
        {
            return Ok(true);
        }
        Ok(!store.any_release_published().await? && *version == self.files.builtin.version)
    }

    /// The public key of the newest release, which the installer pins.
    pub async fn latest_public_key(&self) -> Result<Option<String>, DomainError> {
        Ok(self.core.store.latest_release_public_key().await?)
    }

    /// A release's artifacts for `target`.
    pub async fn artifacts(
        &self,
        version: &Version,
        target: &str,
    ) -> Result<Vec<release::Model>, DomainError> {
        Ok(self.core.store.release_artifacts(version, target).await?)
    }
}
