//! Reading a bundle (`tar.gz`) under the library's rules, for the server (which checks and
//! lists a bundle at upload) and the agent (which unpacks it before a run). One walker, so what
//! the server accepts and what an agent unpacks cannot drift apart.
//!
//! The rules: only regular files and folders (no symlink, hard link, device, FIFO or sparse
//! entry: each is refused by name, so a bundle can never point outside its folder); every path
//! as [`super::bundle_path`] says (relative, no `..`), a leading `./` aside since `tar -C dir .`
//! writes one; no path twice, no file under another file; at most
//! [`limits::MAX_BUNDLE_ENTRIES`] entries and [`limits::MAX_UNPACKED_BYTES`] of content, counted
//! from the headers *before* anything is read and again on the decompressed stream, so a gzip
//! bomb stops at the limit, not at the end of the disk. `outpost-bundle.json` must be at the
//! root, and its `entrypoint` (and `requirements`) must be files of the bundle.
//!
//! The walker never touches the file system: the caller's visitor gets each entry with a reader
//! of its content and decides where (whether) to write it.

use std::collections::BTreeMap;
use std::io::{self, Read};

use super::{BundleManifest, MANIFEST_FILE, bundle_path, limits};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A folder.
    Dir,
    /// A regular file; `executable` when any execute bit is set in its mode.
    File {
        /// Any of the mode's execute bits is set.
        executable: bool,
    },
}

/// One file of a bundle, as listed by `GET /api/scripts/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileInfo {
    /// Path inside the bundle.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether it carries an execute bit.
    pub executable: bool,
}

/// A bundle walked to its end: its manifest and its files.
#[derive(Debug, Clone)]
pub struct Contents {
    /// `outpost-bundle.json`, parsed and checked.
    pub manifest: BundleManifest,
    /// Every regular file, in archive order.
    pub files: Vec<FileInfo>,
    /// The files' sizes together.
    pub unpacked_bytes: u64,
}

/// Why a bundle was refused: the message names the entry and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Walks `bundle` (the `tar.gz` bytes as a reader), checking every rule, and hands each entry to
/// `visit` with its path, kind and a reader of its content (empty for folders). The visitor's
/// own I/O errors end the walk with that error.
pub fn walk<R: Read>(
    bundle: R,
    mut visit: impl FnMut(&str, EntryKind, &mut dyn Read) -> io::Result<()>,
) -> Result<Contents, Refused> {
    let refused = |why: String| Refused(why);
    // Headers, long names and PAX records also come out of the decoder: allow them room, then
    // stop whatever the headers claim.
    let budget = limits::MAX_UNPACKED_BYTES + (limits::MAX_BUNDLE_ENTRIES as u64 + 16) * 8 * 1024;
    let stream = Bounded {
        inner: flate2::read::GzDecoder::new(bundle),
        left: budget,
    };
    let mut archive = tar::Archive::new(stream);
    let entries = archive
        .entries()
        .map_err(|e| refused(format!("not a tar.gz: {e}")))?;
    let mut kinds: BTreeMap<String, bool> = BTreeMap::new(); // path -> is a folder
    let mut files = Vec::new();
    let mut unpacked: u64 = 0;
    let mut manifest: Option<BundleManifest> = None;
    let mut count = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|e| refused(format!("not a tar.gz: {e}")))?;
        let kind = entry.header().entry_type();
        // A PAX global header carries defaults for the entries after it, nothing to unpack.
        if kind == tar::EntryType::XGlobalHeader {
            continue;
        }
        count += 1;
        if count > limits::MAX_BUNDLE_ENTRIES {
            return Err(refused(format!(
                "more than {} entries",
                limits::MAX_BUNDLE_ENTRIES
            )));
        }
        let raw = entry.path_bytes().into_owned();
        let Ok(raw) = String::from_utf8(raw) else {
            return Err(refused("an entry's path is not UTF-8".into()));
        };
        let path = raw.strip_prefix("./").unwrap_or(&raw);
        if path.is_empty() {
            // `./` itself: the bundle's root.
            continue;
        }
        bundle_path(path).map_err(|why| refused(format!("entry {why}")))?;
        let path = path.strip_suffix('/').unwrap_or(path).to_owned();
        let kind = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry.header().mode().unwrap_or(0o644);
                EntryKind::File {
                    executable: mode & 0o111 != 0,
                }
            }
            tar::EntryType::Directory => EntryKind::Dir,
            other => {
                let what = match other {
                    tar::EntryType::Symlink => "a symbolic link",
                    tar::EntryType::Link => "a hard link",
                    tar::EntryType::Char => "a character device",
                    tar::EntryType::Block => "a block device",
                    tar::EntryType::Fifo => "a FIFO",
                    tar::EntryType::GNUSparse => "a sparse file",
                    _ => "not a regular file or folder",
                };
                return Err(refused(format!(
                    "entry {path:?} is {what}; bundles hold only regular files and folders"
                )));
            }
        };
        // No path twice, and nothing under a file.
        if kinds.contains_key(&path) {
            return Err(refused(format!("entry {path:?} appears twice")));
        }
        let mut parent = path.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            if kinds.get(up) == Some(&false) {
                return Err(refused(format!("entry {path:?} is under the file {up:?}")));
            }
            parent = up;
        }
        kinds.insert(path.clone(), kind == EntryKind::Dir);
        match kind {
            EntryKind::Dir => {
                visit(&path, kind, &mut io::empty())
                    .map_err(|e| refused(format!("{path}: {e}")))?;
            }
            EntryKind::File { executable } => {
                let size = entry.size();
                unpacked = unpacked.saturating_add(size);
                if unpacked > limits::MAX_UNPACKED_BYTES {
                    return Err(refused(format!(
                        "its files hold more than {} bytes unpacked",
                        limits::MAX_UNPACKED_BYTES
                    )));
                }
                if path == MANIFEST_FILE {
                    if size > limits::MAX_MANIFEST_BYTES {
                        return Err(refused(format!(
                            "{MANIFEST_FILE}: {size} bytes; the limit is {}",
                            limits::MAX_MANIFEST_BYTES
                        )));
                    }
                    let mut bytes = Vec::with_capacity(size as usize);
                    (&mut entry)
                        .take(limits::MAX_MANIFEST_BYTES)
                        .read_to_end(&mut bytes)
                        .map_err(|e| refused(format!("{path}: {e}")))?;
                    manifest = Some(BundleManifest::parse(&bytes).map_err(refused)?);
                    visit(&path, kind, &mut bytes.as_slice())
                        .map_err(|e| refused(format!("{path}: {e}")))?;
                } else {
                    // The visitor reads at most the declared size; what it leaves, tar skips.
                    let mut content = (&mut entry).take(size);
                    visit(&path, kind, &mut content)
                        .map_err(|e| refused(format!("{path}: {e}")))?;
                }
                files.push(FileInfo {
                    path,
                    size,
                    executable,
                });
            }
        }
    }
    let Some(manifest) = manifest else {
        return Err(refused(format!("no {MANIFEST_FILE} at the bundle's root")));
    };
    let is_file = |p: &str| kinds.get(p) == Some(&false);
    if !is_file(&manifest.entrypoint) {
        return Err(refused(format!(
            "entrypoint {:?} is not a file of the bundle",
            manifest.entrypoint
        )));
    }
    if let Some(requirements) = &manifest.requirements
        && !is_file(requirements)
    {
        return Err(refused(format!(
            "requirements {requirements:?} is not a file of the bundle"
        )));
    }
    Ok(Contents {
        manifest,
        files,
        unpacked_bytes: unpacked,
    })
}

/// A reader that fails once it has given `left` bytes: the decompressed stream's hard stop.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other(format!(
                "the bundle unpacks to more than {} bytes",
                limits::MAX_UNPACKED_BYTES
            )));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Builds a bundle from `(path, content, executable)` files, as `tar -czf` would (for tests and
/// for tools that pack a folder). Folders are implied by the paths.
pub fn pack(files: &[(&str, &[u8], bool)]) -> io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for (path, content, executable) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(if *executable { 0o755 } else { 0o644 });
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        builder.append_data(&mut header, path, *content)?;
    }
    builder.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &[u8] =
        br#"{"name": "backup-db", "version": "1.0.0", "entrypoint": "bin/run.sh"}"#;

    fn list(bundle: &[u8]) -> Result<Contents, Refused> {
        walk(bundle, |_, _, r| io::copy(r, &mut io::sink()).map(drop))
    }

    fn raw(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut builder = tar::Builder::new(gz);
        for (path, kind, content) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(content.len() as u64);
            header.set_mode(0o755);
            if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
                header.set_link_name("../../etc/passwd").expect("link");
            }
            // Bypass the builder's own path checks: an attacker writes raw headers.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *content).expect("append");
        }
        builder.into_inner().expect("tar").finish().expect("gz")
    }

    #[test]
    fn a_good_bundle_lists_its_files() {
        let bundle = pack(&[
            (MANIFEST_FILE, MANIFEST, false),
            ("bin/run.sh", b"#!/bin/sh\necho hi\n", true),
        ])
        .expect("pack");
        let contents = list(&bundle).expect("valid");
        assert_eq!(contents.manifest.name, "backup-db");
        assert_eq!(contents.files.len(), 2);
        assert!(contents.files[1].executable && !contents.files[0].executable);
    }

    #[test]
    fn bad_bundles_are_refused_naming_the_entry() {
        let manifest = (MANIFEST_FILE, tar::EntryType::Regular, MANIFEST);
        let run = ("bin/run.sh", tar::EntryType::Regular, &b"x"[..]);
        type Entries<'a> = Vec<(&'a str, tar::EntryType, &'a [u8])>;
        let cases: Vec<(Entries, &str)> = vec![
            (
                vec![manifest, run, ("../evil", tar::EntryType::Regular, b"x")],
                "has a \"..\" component",
            ),
            (
                vec![
                    manifest,
                    run,
                    ("/etc/cron.d/x", tar::EntryType::Regular, b"x"),
                ],
                "is absolute",
            ),
            (
                vec![manifest, run, ("link", tar::EntryType::Symlink, b"")],
                "a symbolic link",
            ),
            (
                vec![manifest, run, ("hard", tar::EntryType::Link, b"")],
                "a hard link",
            ),
            (
                vec![manifest, run, ("dev", tar::EntryType::Char, b"")],
                "a character device",
            ),
            (
                vec![manifest, run, ("fifo", tar::EntryType::Fifo, b"")],
                "a FIFO",
            ),
            (vec![manifest, run, run], "appears twice"),
            (
                vec![
                    manifest,
                    run,
                    ("bin/run.sh/x", tar::EntryType::Regular, b""),
                ],
                "under the file",
            ),
            (vec![run], "no outpost-bundle.json"),
            (vec![manifest], "entrypoint \"bin/run.sh\" is not a file"),
        ];
        for (entries, expected) in cases {
            let why = list(&raw(&entries)).expect_err(expected).0;
            assert!(why.contains(expected), "{why:?} does not say {expected:?}");
        }
        assert!(
            list(b"not gzip at all")
                .expect_err("refused")
                .0
                .contains("tar.gz")
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        // 257 MiB of zeros fits well under the upload limit once compressed.
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        let size = limits::MAX_UNPACKED_BYTES + 1024 * 1024;
        header.set_size(size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, "zeros", io::repeat(0).take(size))
            .expect("append");
        let bomb = builder.into_inner().expect("tar").finish().expect("gz");
        assert!(
            bomb.len() < limits::MAX_BUNDLE_BYTES as usize,
            "{}",
            bomb.len()
        );
        let why = list(&bomb).expect_err("refused").0;
        assert!(why.contains("more than 268435456 bytes"), "{why}");
        // Many small entries stop at the count.
        let many: Vec<(String, &[u8], bool)> = (0..=limits::MAX_BUNDLE_ENTRIES)
            .map(|i| (format!("f{i}"), &b""[..], false))
            .collect();
        let many: Vec<(&str, &[u8], bool)> =
            many.iter().map(|(p, c, x)| (p.as_str(), *c, *x)).collect();
        let why = list(&pack(&many).expect("pack")).expect_err("refused").0;
        assert!(why.contains("more than 4096 entries"), "{why}");
    }
}
