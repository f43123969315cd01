//! Unpacking a bundle into a fresh private folder for one run.
//!
//! Every rule about what a bundle may hold (no links, devices, `..`, absolute paths, size and
//! entry limits, the manifest and its entrypoint present) is
//! `outpost_protocol::bundle::archive::walk`'s, shared with the server; this module only
//! writes what the walk hands it, in a way that cannot be turned against the agent even if
//! the walk missed something:
//!
//! - the folder is new (`create_dir`, never reused) and 0700, under the state directory;
//! - files are created with `O_CREAT | O_EXCL` (`create_new`, which also refuses to open
//!   through a symbolic link) and `O_NOFOLLOW`, with mode 0755 or 0644 only: no set-id bit,
//!   no world-writable file, whatever the archive's header says;
//! - folders are created 0755; nothing but this code writes into the tree before the run, so
//!   no component of a path can be a link.
//!
//! A write that fails here (a full disk) is the agent's problem, not the bundle's: it is
//! reported as `internal`, while a bundle that breaks a rule is `bundle_refused`.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use outpost_protocol::bundle::archive::{self, Contents, EntryKind};
use outpost_protocol::codes;

use super::Refused;

/// Unpacks the bundle file at `bundle` into `dir`, which must not exist yet.
pub fn unpack(bundle: &Path, dir: &Path) -> Result<Contents, Refused> {
    let internal = |what: String| Refused::new(codes::INTERNAL, what);
    DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| internal(format!("cannot create {}: {e}", dir.display())))?;
    // The umask may have taken bits away; it cannot have added any.
    std::fs::set_permissions(dir, Permissions::from_mode(0o700))
        .map_err(|e| internal(format!("cannot restrict {}: {e}", dir.display())))?;
    let file = File::open(bundle)
        .map_err(|e| internal(format!("cannot open {}: {e}", bundle.display())))?;
    let mut local: Option<String> = None;
    let walked = archive::walk(BufReader::new(file), |path, kind, content| {
        write_entry(dir, path, kind, content).inspect_err(|e| {
            if e.kind() != io::ErrorKind::InvalidData {
                local = Some(format!("cannot unpack {path}: {e}"));
            }
        })
    });
    match (walked, local) {
        (Ok(contents), _) => Ok(contents),
        (Err(_), Some(why)) => Err(internal(why)),
        (Err(refused), None) => Err(Refused::new(
            codes::BUNDLE_REFUSED,
            format!("the bundle breaks the bundle rules: {refused}"),
        )),
    }
}

/// Writes one entry under `dir`. An error reading `content` (the archive itself: cut,
/// corrupt, past the size limit) comes back as `InvalidData`, so that the caller tells it from
/// a write that failed.
fn write_entry(dir: &Path, path: &str, kind: EntryKind, content: &mut dyn Read) -> io::Result<()> {
    let target = dir.join(path);
    let mut folders = DirBuilder::new();
    folders.recursive(true).mode(0o755);
    match kind {
        EntryKind::Dir => folders.create(&target),
        EntryKind::File { executable } => {
            if let Some(parent) = target.parent() {
                folders.create(parent)?;
            }
            let mode = if executable { 0o755 } else { 0o644 };
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&target)?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match content.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                };
                file.write_all(&buf[..n])?;
            }
            file.set_permissions(Permissions::from_mode(mode))
        }
    }
}
