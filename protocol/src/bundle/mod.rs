//! The script library (CONTRACT.md §15): what a bundle is, what its signature covers, what an agent's
//! manifest allows, and what a `run` of a library script carries.
//!
//! Three programs must agree on these byte for byte — the CLI that signs a bundle on the
//! operator's machine, the server that stores it and refuses early what no agent would run, and
//! the agent that verifies and runs it — so they are defined here and nowhere else. Like
//! [`crate::release`], this module builds the signed message and leaves the Ed25519 arithmetic
//! to each side (ring), so the protocol crate stays free of crypto and I/O.
//!
//! The trust rule: the server is a courier. It checks what it can (a signature that does not
//! verify is refused at upload, so an operator hears of a mistake at once), but the agent
//! verifies the bundle's hash and signature against the keys *its own manifest* pins, so a
//! server that is taken over can only send what an operator already signed.
//!
//! The signature covers the bundle's SHA-256 and size under a context line of its own
//! (`outpost-bundle-v1`), so it can never be mistaken for a release signature made with the
//! same key. The bundle's name and version live in `outpost-bundle.json` inside the bundle, which
//! the hash covers; the agent checks after unpacking that they are the ones the run asked for.

#[cfg(feature = "archive")]
pub mod archive;

use serde::{Deserialize, Serialize};

use crate::ParamInfo;
use crate::check::{self, count, prose, shorten};
use crate::release::Version;

/// The file at the root of every bundle that describes it.
pub const MANIFEST_FILE: &str = "outpost-bundle.json";

/// First line of the message a bundle signature covers; bump it if the format ever changes.
pub const SIGNATURE_CONTEXT: &str = "outpost-bundle-v1";

/// `format` of a signature file (`BUNDLE.sig`).
pub const SIGNATURE_FORMAT: &str = "outpost-bundle-signature-v1";

/// Limits of the script library; the server and the agent both enforce them.
pub mod limits {
    /// A bundle (the `tar.gz` as uploaded and downloaded): 16 MiB.
    pub const MAX_BUNDLE_BYTES: u64 = 16 * 1024 * 1024;
    /// Every file of a bundle once unpacked, together: 256 MiB (a gzip bomb stops here).
    pub const MAX_UNPACKED_BYTES: u64 = 256 * 1024 * 1024;
    /// Entries (files and folders) in a bundle.
    pub const MAX_BUNDLE_ENTRIES: usize = 4096;
    /// `outpost-bundle.json`: 64 KiB.
    pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
    /// A path inside a bundle: bytes.
    pub const MAX_PATH_LEN: usize = 1024;
    /// Patterns in a manifest's `library.allow`.
    pub const MAX_ALLOW_PATTERNS: usize = 64;
    /// Keys in a manifest's `library.keys`.
    pub const MAX_KEYS: usize = 16;
}

/// The exact bytes a bundle signature covers: the context line, the bundle's SHA-256 (lowercase
/// hex) and its size in bytes, each on its own line.
pub fn signed_message(sha256_hex: &str, size: u64) -> String {
    format!(
        "{SIGNATURE_CONTEXT}\n{}\n{size}\n",
        sha256_hex.to_ascii_lowercase()
    )
}

/// `BUNDLE.sig`, as `outpost scripts sign` writes it and `outpost scripts upload` sends it:
/// JSON, so it names the key that made it and the bundle it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureFile {
    /// Always [`SIGNATURE_FORMAT`].
    pub format: String,
    /// The bundle's SHA-256, lowercase hex.
    pub sha256: String,
    /// The bundle's size in bytes.
    pub size: u64,
    /// The signer's Ed25519 public key, standard base64 (32 bytes).
    pub key: String,
    /// The Ed25519 signature over [`signed_message`], standard base64 (64 bytes).
    pub signature: String,
}

impl SignatureFile {
    /// Checks the shape (format, hex hash, base64 lengths); the signature itself is checked by
    /// whoever holds ring.
    pub fn check(&self) -> Result<(), String> {
        if self.format != SIGNATURE_FORMAT {
            return Err(format!(
                "format: {:?} is not {SIGNATURE_FORMAT:?}",
                shorten(&self.format)
            ));
        }
        sha256_hex(&self.sha256).map_err(|why| format!("sha256: {why}"))?;
        public_key(&self.key).map_err(|why| format!("key: {why}"))?;
        decode_fixed::<64>(&self.signature).map_err(|why| format!("signature: {why}"))?;
        Ok(())
    }

    /// The signature's 64 bytes (after [`Self::check`]).
    pub fn signature_bytes(&self) -> Result<[u8; 64], String> {
        decode_fixed::<64>(&self.signature)
    }
}

/// A SHA-256 as 64 lowercase hex digits.
pub fn sha256_hex(text: &str) -> Result<(), String> {
    if text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a SHA-256 in lowercase hex (64 digits)",
            shorten(text)
        ))
    }
}

/// An Ed25519 public key in standard base64: its 32 bytes.
pub fn public_key(text: &str) -> Result<[u8; 32], String> {
    decode_fixed::<32>(text)
}

fn decode_fixed<const N: usize>(text: &str) -> Result<[u8; N], String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| format!("{:?} is not standard base64", shorten(text)))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, not {N}", b.len()))
}

/// `outpost-bundle.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// The script's name in the library and in `run` (as [`check::script_name`]).
    pub name: String,
    /// `MAJOR.MINOR.PATCH`; the newest signed version runs when a job names none.
    pub version: Version,
    /// The file that runs, relative to the bundle's root (run directly: shebang or executable
    /// bit; with `requirements`, by the bundle's virtual environment's `python`).
    pub entrypoint: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Parameters it takes: names (`"NAME"`) or entries (`{"name": …, "secret": true}`), as in
    /// an agent's manifest. Absent: any valid name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Vec<ParamEntry>>,
    /// The run's timeout ceiling, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
    /// A pip requirements file inside the bundle (`requirements.txt`): the agent builds a
    /// virtual environment per bundle hash from it before the run, and the entrypoint runs with
    /// that environment's `python`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<String>,
}

/// One of a bundle's `params`: a bare name or an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamEntry {
    /// `"NAME"`.
    Name(String),
    /// `{"name": "NAME", "secret": true}`.
    Entry(ParamInfo),
}

impl BundleManifest {
    /// Parses and checks `outpost-bundle.json`, naming the field that is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > limits::MAX_MANIFEST_BYTES {
            return Err(format!(
                "{MANIFEST_FILE}: {} bytes; the limit is {}",
                bytes.len(),
                limits::MAX_MANIFEST_BYTES
            ));
        }
        let manifest: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("{MANIFEST_FILE}: {e}"))?;
        manifest
            .check()
            .map_err(|why| format!("{MANIFEST_FILE}: {why}"))?;
        Ok(manifest)
    }

    /// Checks every field.
    pub fn check(&self) -> Result<(), String> {
        check::script_name(&self.name).map_err(|why| format!("name: {why}"))?;
        bundle_path(&self.entrypoint).map_err(|why| format!("entrypoint: {why}"))?;
        if let Some(requirements) = &self.requirements {
            bundle_path(requirements).map_err(|why| format!("requirements: {why}"))?;
        }
        if let Some(description) = &self.description {
            prose(
                "description",
                description,
                crate::limits::MAX_SCRIPT_DESCRIPTION_LEN,
            )?;
        }
        if let Some(timeout_s) = self.timeout_s
            && !(1..=crate::limits::MAX_TIMEOUT_S).contains(&timeout_s)
        {
            return Err(format!(
                "timeout_s: {timeout_s} is not between 1 and {}",
                crate::limits::MAX_TIMEOUT_S
            ));
        }
        let params = self.params();
        count(
            "params",
            "params",
            params.len(),
            crate::limits::MAX_SCRIPT_PARAMS,
        )?;
        for (i, param) in params.iter().enumerate() {
            check::param_name(&param.name).map_err(|why| format!("params[{i}]: {why}"))?;
            if params[..i].iter().any(|p| p.name == param.name) {
                return Err(format!("params[{i}]: {} is listed twice", param.name));
            }
        }
        Ok(())
    }

    /// The parameters as the register frame and the agent's rules take them.
    pub fn params(&self) -> Vec<ParamInfo> {
        self.params
            .iter()
            .flatten()
            .map(|entry| match entry {
                ParamEntry::Name(name) => ParamInfo {
                    name: name.clone(),
                    secret: false,
                },
                ParamEntry::Entry(info) => info.clone(),
            })
            .collect()
    }
}

/// A path inside a bundle: relative, `/`-separated, no empty, `.` or `..` component, no
/// backslash or control character, at most [`limits::MAX_PATH_LEN`] bytes. Tar entries and the
/// manifest's `entrypoint` and `requirements` all pass here.
pub fn bundle_path(path: &str) -> Result<(), String> {
    let shown = shorten(path);
    if path.is_empty() || path.len() > limits::MAX_PATH_LEN {
        return Err(format!(
            "path {shown:?} must be 1 to {} bytes",
            limits::MAX_PATH_LEN
        ));
    }
    if path.starts_with('/') {
        return Err(format!("path {shown:?} is absolute"));
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(format!(
            "path {shown:?} holds a control character or a backslash"
        ));
    }
    // A trailing slash names a folder (tar writes them so); any other empty part is refused.
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    for part in trimmed.split('/') {
        match part {
            "" => return Err(format!("path {shown:?} has an empty component")),
            "." | ".." => return Err(format!("path {shown:?} has a {part:?} component")),
            _ => {}
        }
    }
    Ok(())
}

/// An agent's consent to library scripts: its manifest's `library` object, sent to the server
/// in `register` so that the server can refuse early a run no agent would accept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryPolicy {
    /// Patterns of script names the agent runs from the library: `*` matches any run of
    /// characters, `?` one; anything else matches itself.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Ed25519 public keys (standard base64) whose signatures the agent accepts.
    #[serde(default)]
    pub keys: Vec<String>,
}

impl LibraryPolicy {
    /// Checks the patterns and keys against the limits.
    pub fn check(&self) -> Result<(), String> {
        count(
            "library.allow",
            "patterns",
            self.allow.len(),
            limits::MAX_ALLOW_PATTERNS,
        )?;
        for (i, pattern) in self.allow.iter().enumerate() {
            allow_pattern(pattern).map_err(|why| format!("library.allow[{i}]: {why}"))?;
        }
        count("library.keys", "keys", self.keys.len(), limits::MAX_KEYS)?;
        for (i, key) in self.keys.iter().enumerate() {
            public_key(key).map_err(|why| format!("library.keys[{i}]: {why}"))?;
        }
        Ok(())
    }

    /// Whether a script of this name may run from the library.
    pub fn allows(&self, name: &str) -> bool {
        self.allow.iter().any(|pattern| glob_match(pattern, name))
    }

    /// Whether signatures by this key (standard base64) are accepted. Keys compare by their
    /// bytes, so padding or surrounding space in a manifest does not matter.
    pub fn trusts(&self, key: &str) -> bool {
        let Ok(key) = public_key(key) else {
            return false;
        };
        self.keys.iter().any(|k| public_key(k) == Ok(key))
    }
}

/// One `library.allow` pattern: what a script name may hold, plus `*` and `?`.
pub fn allow_pattern(pattern: &str) -> Result<(), String> {
    let ok = !pattern.is_empty()
        && pattern.len() <= crate::limits::MAX_SCRIPT_NAME_LEN
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-*?".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "pattern {:?} must be 1 to {} letters, digits, '.', '_', '-', '*' or '?'",
            shorten(pattern),
            crate::limits::MAX_SCRIPT_NAME_LEN
        ))
    }
}

/// `*` and `?` matching over bytes (names and patterns are ASCII). Written here rather than
/// taken from a glob crate because both sides need exactly this and nothing more (no classes,
/// no path separators), and the classic two-pointer walk is linear in practice and never
/// recursive, so a hostile pattern cannot blow the stack.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// `data.library` of a `run` command for a library script: which bundle, and the signature the
/// agent checks against its own keys. `data.script` holds the name as for manifest scripts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryRun {
    /// The version the job resolved (the newest signed one when it named none).
    pub version: Version,
    /// The bundle's SHA-256, lowercase hex; also its download path
    /// (`GET /agent/v1/scripts/{sha256}` with the agent key).
    pub sha256: String,
    /// The bundle's size in bytes: the agent reads no more.
    pub size: u64,
    /// The signer's public key (standard base64).
    pub key: String,
    /// The signature over [`signed_message`] (standard base64).
    pub signature: String,
}

impl LibraryRun {
    /// Checks the shape of every field.
    pub fn check(&self) -> Result<(), String> {
        sha256_hex(&self.sha256).map_err(|why| format!("library.sha256: {why}"))?;
        if self.size == 0 || self.size > limits::MAX_BUNDLE_BYTES {
            return Err(format!(
                "library.size: {} is not between 1 and {}",
                self.size,
                limits::MAX_BUNDLE_BYTES
            ));
        }
        public_key(&self.key).map_err(|why| format!("library.key: {why}"))?;
        decode_fixed::<64>(&self.signature).map_err(|why| format!("library.signature: {why}"))?;
        Ok(())
    }
}

/// Splits `name@version` as jobs and schedules name library scripts (`@` never occurs in a
/// script name). Without `@`, the version is `None`: the newest signed one.
pub fn split_reference(reference: &str) -> Result<(&str, Option<Version>), String> {
    match reference.split_once('@') {
        None => Ok((reference, None)),
        Some((name, version)) => {
            check::script_name(name)?;
            let version = version.parse().map_err(|e| format!("{e}"))?;
            Ok((name, Some(version)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names() {
        assert!(glob_match("backup-*", "backup-db"));
        assert!(glob_match("backup-*", "backup-"));
        assert!(!glob_match("backup-*", "backups"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*.sh", "x.y.sh"));
        assert!(!glob_match("*.sh", "x.shx"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("exact", "exactly"));
        // A hostile pattern stays quick (no backtracking blow-up).
        let pattern = "*a".repeat(60);
        assert!(!glob_match(&pattern, &"a".repeat(59)));
    }

    #[test]
    fn policies_check_their_patterns_and_keys() {
        let key = "0QDsxvCdT+oIbW0+ATW5ApjfIO+FOagCfPt4GSj/BdY=";
        let policy = LibraryPolicy {
            allow: vec!["backup-*".into()],
            keys: vec![key.into()],
        };
        policy.check().expect("valid");
        assert!(policy.allows("backup-db") && !policy.allows("restore-db"));
        assert!(policy.trusts(key) && policy.trusts(&format!(" {key}")));
        assert!(!policy.trusts("AAAA"));
        let bad = LibraryPolicy {
            allow: vec!["../*".into()],
            keys: vec![],
        };
        assert!(
            bad.check()
                .expect_err("refused")
                .starts_with("library.allow[0]: ")
        );
        let bad = LibraryPolicy {
            allow: vec![],
            keys: vec!["c2hvcnQ=".into()],
        };
        assert_eq!(
            bad.check().expect_err("refused"),
            "library.keys[0]: 5 bytes, not 32"
        );
        let many = LibraryPolicy {
            allow: vec!["a".into(); 65],
            keys: vec![],
        };
        assert!(
            many.check()
                .expect_err("refused")
                .contains("the limit is 64")
        );
    }

    #[test]
    fn bundle_paths_stay_inside() {
        for good in ["run.sh", "bin/run.sh", "lib/", "a/b/c.py"] {
            bundle_path(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
            "a\nb",
        ] {
            assert!(bundle_path(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn manifests_name_the_bad_field() {
        let good = br#"{"name": "backup-db", "version": "1.2.0", "entrypoint": "run.sh",
                        "params": ["TARGET", {"name": "PASSWORD", "secret": true}],
                        "timeout_s": 600, "requirements": "requirements.txt"}"#;
        let manifest = BundleManifest::parse(good).expect("valid");
        assert_eq!(manifest.params().len(), 2);
        assert!(manifest.params()[1].secret);
        let refused = |json: &str| BundleManifest::parse(json.as_bytes()).expect_err("refused");
        assert!(
            refused(r#"{"name": "x", "version": "1.0", "entrypoint": "a"}"#)
                .contains("MAJOR.MINOR.PATCH")
        );
        assert!(
            refused(r#"{"name": "x", "version": "1.0.0", "entrypoint": "../a"}"#)
                .starts_with("outpost-bundle.json: entrypoint: ")
        );
        assert!(
            refused(r#"{"name": "x@1", "version": "1.0.0", "entrypoint": "a"}"#)
                .starts_with("outpost-bundle.json: name: ")
        );
        assert!(
            refused(r#"{"name": "x", "version": "1.0.0", "entrypoint": "a", "shell": "sh"}"#)
                .contains("unknown field")
        );
        assert!(
            refused(
                r#"{"name": "x", "version": "1.0.0", "entrypoint": "a", "params": ["A", "A"]}"#
            )
            .contains("listed twice")
        );
        assert!(
            refused(r#"{"name": "x", "version": "1.0.0", "entrypoint": "a", "timeout_s": 0}"#)
                .contains("timeout_s")
        );
    }

    #[test]
    fn the_signed_message_binds_hash_and_size() {
        let sha = "AB".repeat(32);
        assert_eq!(
            signed_message(&sha, 7),
            format!("outpost-bundle-v1\n{}\n7\n", "ab".repeat(32))
        );
    }

    #[test]
    fn references_split_at_the_version() {
        assert_eq!(split_reference("backup").expect("valid"), ("backup", None));
        let (name, version) = split_reference("backup@1.2.3").expect("valid");
        assert_eq!(
            (name, version.expect("a version").to_string()),
            ("backup", "1.2.3".into())
        );
        assert!(split_reference("backup@latest").is_err());
    }
}
