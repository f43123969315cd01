//! Releases: what the server serves under `/api/releases` and what exactly a release signature
//! covers.
//!
//! The server (which publishes and serves releases) and the supervisor (which verifies them)
//! must agree byte for byte on the signed message, so it is built here and nowhere else. The
//! message binds the artifact name, version and target to the file's SHA-256: a validly signed
//! old build cannot be replayed as a newer version, nor a supervisor build as an agent.
//!
//! There are two messages, and a release carries a signature over each. The first
//! ([`signed_message`], `outpost-release-v1`) leaves out the file's size: the size follows
//! from the hash, but only once the whole file is downloaded, so a verifier could not trust
//! the size it was told before it had read that much. The second ([`signed_message_v2`],
//! `outpost-release-v2`) adds the size, so a supervisor checks the metadata's signature
//! *before* it downloads anything and then reads exactly the signed number of bytes. The v1
//! signature stays for supervisors that only know v1 (they ignore the new field); a
//! supervisor that knows v2 uses it whenever the release has one, and falls back to v1 only
//! for releases published before v2 existed (see the supervisor's `update` module).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// First line of every signed message; bump it if the format ever changes.
pub const SIGNATURE_CONTEXT: &str = "outpost-release-v1";

/// Artifact name of the agent binary.
pub const AGENT: &str = "outpost-agent";
/// Artifact name of the supervisor binary.
pub const SUPERVISOR: &str = "outpost-supervisor";
/// Every artifact a release may hold.
pub const ARTIFACTS: &[&str] = &[AGENT, SUPERVISOR];

/// First line of the message that also binds the file's size.
pub const SIGNATURE_CONTEXT_V2: &str = "outpost-release-v2";

/// The exact bytes a v1 Ed25519 release signature ([`Artifact::signature`]) covers.
pub fn signed_message(name: &str, version: &Version, target: &str, sha256_hex: &str) -> String {
    format!(
        "{SIGNATURE_CONTEXT}\n{name}\n{version}\n{target}\n{}\n",
        sha256_hex.to_ascii_lowercase()
    )
}

/// The exact bytes a v2 release signature ([`Artifact::signature_v2`]) covers: the v1 fields
/// and the file's size in bytes, in decimal.
pub fn signed_message_v2(
    name: &str,
    version: &Version,
    target: &str,
    sha256_hex: &str,
    size: u64,
) -> String {
    format!(
        "{SIGNATURE_CONTEXT_V2}\n{name}\n{version}\n{target}\n{}\n{size}\n",
        sha256_hex.to_ascii_lowercase()
    )
}

/// Whether `target` looks like a Rust target triple (`x86_64-unknown-linux-gnu`): 1 to 64
/// characters of `[A-Za-z0-9_.-]`, so it is safe as a path segment.
pub fn valid_target(target: &str) -> bool {
    !target.is_empty()
        && target.len() <= 64
        && !target.starts_with('.')
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A release version: `MAJOR.MINOR.PATCH`, numbers only (no pre-release or build suffix), so
/// ordering is plain and unambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Patch.
    pub patch: u64,
}

/// Why a version string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {0:?} is not MAJOR.MINOR.PATCH (e.g. 1.2.3)")]
pub struct BadVersion(String);

impl FromStr for Version {
    type Err = BadVersion;

    fn from_str(s: &str) -> Result<Self, BadVersion> {
        let bad = || BadVersion(s.chars().take(40).collect());
        let mut parts = s.split('.');
        let mut next = || -> Result<u64, BadVersion> {
            let part = parts.next().ok_or_else(bad)?;
            // No signs, no leading zeros (except "0"), at most 9 digits.
            if part.is_empty()
                || part.len() > 9
                || !part.bytes().all(|b| b.is_ascii_digit())
                || (part.len() > 1 && part.starts_with('0'))
            {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        let version = Self {
            major: next()?,
            minor: next()?,
            patch: next()?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `GET /api/releases/latest?target=…` and `GET /api/releases/{version}?target=…`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// The release's version.
    pub version: Version,
    /// Target triple of its binaries.
    pub target: String,
    /// When it was published.
    pub published_at: DateTime<Utc>,
    /// Ed25519 public key (standard base64, 32 bytes) the release was signed with. For
    /// information only: a verifier checks against the key it pinned, never this one.
    pub public_key: String,
    /// The agent binary.
    pub agent: Option<Artifact>,
    /// The supervisor binary.
    pub supervisor: Option<Artifact>,
}

/// One downloadable binary of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Absolute URL under `/downloads/`.
    pub url: String,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Ed25519 signature (standard base64) over [`signed_message`].
    pub signature: String,
    /// Ed25519 signature (standard base64) over [`signed_message_v2`], which also covers
    /// `size`. Absent for releases published before it existed; omitted then, and ignored by
    /// supervisors that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_v2: Option<String>,
}

/// What the supervisor reports about the last update through the agent's `register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// `updated`, `failed` (nothing changed: a download or verification failed) or
    /// `rolled_back` (the new version kept crashing and the previous one was restored).
    pub status: String,
    /// Version running before the attempt, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Version asked for, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why it failed or was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// [`UpdateStatus::status`] values.
pub mod update_status {
    /// The new version was installed and started.
    pub const UPDATED: &str = "updated";
    /// The update was refused or failed; the old binary kept running.
    pub const FAILED: &str = "failed";
    /// The new version crashed at start three times; the previous binary was restored.
    pub const ROLLED_BACK: &str = "rolled_back";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        let v = |s: &str| s.parse::<Version>();
        assert!(v("1.2.3").is_ok());
        assert!(v("0.10.0").expect("ok") > v("0.9.99").expect("ok"));
        assert_eq!(v("1.2.3").expect("ok").to_string(), "1.2.3");
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "v1.2.3",
            "1.2.x",
            "01.2.3",
            "1.2.3-rc1",
            "-1.2.3",
            "1..3",
            "1.2.3 ",
        ] {
            assert!(v(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn signed_message_binds_every_field() {
        let v: Version = "1.2.3".parse().expect("version");
        assert_eq!(
            signed_message(AGENT, &v, "x86_64-unknown-linux-gnu", "ABcd"),
            "outpost-release-v1\noutpost-agent\n1.2.3\nx86_64-unknown-linux-gnu\nabcd\n"
        );
        assert_eq!(
            signed_message_v2(AGENT, &v, "x86_64-unknown-linux-gnu", "ABcd", 1234),
            "outpost-release-v2\noutpost-agent\n1.2.3\nx86_64-unknown-linux-gnu\nabcd\n1234\n"
        );
    }

    #[test]
    fn targets() {
        assert!(valid_target("x86_64-unknown-linux-gnu"));
        for bad in ["", "..", "../etc", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_target(bad), "{bad:?} accepted");
        }
    }
}
