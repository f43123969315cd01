//! Noticing that a file changed without waking up to look: inotify.
//!
//! Polling the manifest (a `stat` every few seconds) wakes an idle agent for nothing. Each of
//! those wake-ups is cheap in syscalls but not in time: on a small VM a task woken from idle
//! runs cold (caches, TLB), so the polling alone cost an agent that had nothing to do more CPU
//! than CONTRACT.md §8's floor for an idle agent (figures: docs/BENCHMARKS.md, "Design notes behind
//! the figures"). inotify on the file's folder wakes the agent only when something in that
//! folder changed, which for an agent in service is never.
//!
//! The folder is watched, not the file: editors and config tools replace files by renaming a
//! new one over them, and a watch on the old inode would go quiet. When the path is a symlink,
//! the folder of its target is watched as well, and the watches follow the link when it is
//! re-pointed. What inotify cannot see (a network filesystem changed from another host, a
//! folder that did not exist yet, an overflowed event queue) is caught by a slow check every
//! minute; where inotify is not available at all, the file is polled every 2 s.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Quiet time after the last event before the file is looked at: a save is often several
/// events (create, write, rename), and reading between them would see half a file.
const SETTLE: Duration = Duration::from_millis(100);
/// Upper bound on the settling, should events never stop.
const SETTLE_MAX: Duration = Duration::from_secs(1);

/// The folder events that can mean the watched file changed. `IN_MODIFY` is left out on
/// purpose: a write in place ends with `IN_CLOSE_WRITE`, and a file being written to
/// continuously (a log next to the manifest) would otherwise wake the agent at every write.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// What identifies a version of the file: modification time, size and inode (a file renamed
/// over the old one has a new inode even when time and size agree). `None` when it is missing.
type Stamp = Option<(Option<SystemTime>, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len(), m.ino()))
}

/// The inotify descriptor, in the form tokio's reactor takes.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Hands the descriptor to tokio's reactor, for readability only.
#[allow(unsafe_code)]
fn register(inotify: Inotify) -> std::io::Result<AsyncFd<Fd>> {
    // SAFETY: `Fd` owns the descriptor (an `OwnedFd` inside `Inotify`), which nothing can
    // close or replace while the `AsyncFd` holds it, and `as_raw_fd` always returns it.
    unsafe { AsyncFd::register_with_interest(Fd(inotify), Interest::READABLE) }
        .map_err(std::io::Error::from)
}

/// One watched folder and the name in it that matters.
struct Watched {
    wd: WatchDescriptor,
    dir: PathBuf,
    name: OsString,
}

/// Watches one file; [`FileWatch::changed`] returns when its content may be new.
pub struct FileWatch {
    path: PathBuf,
    last: Stamp,
    inotify: Option<AsyncFd<Fd>>,
    watched: Vec<Watched>,
    check: Interval,
    /// An event about the file was read and the file not yet looked at.
    pending: bool,
}

impl FileWatch {
    /// Starts watching `path` (which need not exist yet). `safety` is how often the file is
    /// checked when inotify works ([`crate::platform::SAFETY_CHECK`] in service), `fallback`
    /// how often when not.
    /// Must be called inside a tokio runtime.
    pub fn new(path: &Path, safety: Duration, fallback: Duration) -> Self {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(std::io::Error::from)
            .and_then(register);
        let inotify = match inotify {
            Ok(fd) => Some(fd),
            Err(why) => {
                tracing::info!(
                    path = %path.display(),
                    "inotify is not available ({why}); checking the file every {} s",
                    fallback.as_secs()
                );
                None
            }
        };
        let period = if inotify.is_some() { safety } else { fallback };
        let mut check = tokio::time::interval_at(Instant::now() + period, period);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watch = Self {
            path: path.to_owned(),
            last: stamp(path),
            inotify,
            watched: Vec::new(),
            check,
            pending: false,
        };
        watch.follow();
        watch
    }

    /// Takes the file as it is now as seen (after a reload asked for by other means).
    pub fn mark_seen(&mut self) {
        self.last = stamp(&self.path);
    }

    /// Returns once the file differs from the last version seen (created, replaced, written,
    /// removed). Cancel-safe: dropping the future loses no change, the next call finds it.
    pub async fn changed(&mut self) {
        loop {
            if !self.pending {
                self.pending = self.event_or_check().await;
            }
            if self.pending {
                self.settle().await;
                self.pending = false;
            }
            self.follow();
            let now = stamp(&self.path);
            if now != self.last {
                self.last = now;
                return;
            }
        }
    }

    /// Waits for an event about the file (true) or the periodic check (false).
    async fn event_or_check(&mut self) -> bool {
        loop {
            tokio::select! {
                _ = self.check.tick() => return false,
                relevant = next_events(&mut self.inotify, &mut self.watched) => {
                    if relevant {
                        return true;
                    }
                }
            }
        }
    }

    /// Lets a burst of events end before the file is read.
    async fn settle(&mut self) {
        let give_up = Instant::now() + SETTLE_MAX;
        loop {
            let quiet = tokio::time::sleep_until((Instant::now() + SETTLE).min(give_up));
            tokio::select! {
                () = quiet => return,
                _ = next_events(&mut self.inotify, &mut self.watched) => {}
            }
        }
    }

    /// Points the watches at the file's folder and, when the file is a symlink, its target's
    /// folder: the link may have been created or re-pointed since the last look.
    fn follow(&mut self) {
        let Some(fd) = &self.inotify else {
            return;
        };
        let mut wanted = Vec::with_capacity(2);
        wanted.extend(split(&self.path));
        if let Ok(target) = std::fs::canonicalize(&self.path)
            && let Some(t) = split(&target)
            && !wanted.contains(&t)
        {
            wanted.push(t);
        }
        let inotify = &fd.get_ref().0;
        // Drop the watches no longer wanted (a link pointing elsewhere now).
        let (keep, gone): (Vec<_>, Vec<_>) = self
            .watched
            .drain(..)
            .partition(|w| wanted.iter().any(|(d, n)| *d == w.dir && *n == w.name));
        self.watched = keep;
        for w in gone {
            if !self.watched.iter().any(|k| k.wd == w.wd) {
                let _ = inotify.rm_watch(w.wd);
            }
        }
        for (dir, name) in wanted {
            if self.watched.iter().any(|w| w.dir == dir && w.name == name) {
                continue;
            }
            // Adding a watch on a folder already watched returns its descriptor again.
            match inotify.add_watch(&dir, mask()) {
                Ok(wd) => self.watched.push(Watched { wd, dir, name }),
                // A folder that does not exist yet is picked up by a later check.
                Err(why) => tracing::debug!(dir = %dir.display(), "cannot watch ({why})"),
            }
        }
    }
}

/// The folder holding `path` and the file's name in it.
fn split(path: &Path) -> Option<(PathBuf, OsString)> {
    let name = path.file_name()?.to_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    Some((dir, name))
}

/// Reads what inotify has; true when an event may concern the file. Pends forever without
/// inotify. A read error other than "nothing yet" turns inotify off (the periodic check then
/// runs at its slow pace, which is still a bound on how late a change is seen).
async fn next_events(inotify: &mut Option<AsyncFd<Fd>>, watched: &mut Vec<Watched>) -> bool {
    let Some(fd) = inotify.as_ref() else {
        return std::future::pending().await;
    };
    let mut guard = match fd.readable().await {
        Ok(guard) => guard,
        Err(why) => {
            tracing::warn!("inotify failed ({why}); only periodic checks from now on");
            *inotify = None;
            watched.clear();
            return true;
        }
    };
    let events = match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(Into::into)) {
        Ok(Ok(events)) => events,
        Ok(Err(why)) => {
            tracing::warn!(
                "reading inotify events failed ({why}); only periodic checks from now on"
            );
            *inotify = None;
            watched.clear();
            return true;
        }
        Err(_would_block) => return false,
    };
    let mut relevant = false;
    for event in events {
        if event.mask.contains(AddWatchFlags::IN_IGNORED) {
            // The folder went away: its watch is gone and must be added again when it returns.
            watched.retain(|w| w.wd != event.wd);
            relevant = true;
            continue;
        }
        relevant |= match &event.name {
            Some(name) => watched.iter().any(|w| w.wd == event.wd && w.name == *name),
            // Events about the folder itself, or a queue overflow.
            None => true,
        };
    }
    relevant
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits for `changed`, failing after a long time. The periodic check is an hour away, so
    /// only inotify can end the wait.
    async fn sees(watch: &mut FileWatch, what: &str) {
        tokio::time::timeout(Duration::from_secs(30), watch.changed())
            .await
            .unwrap_or_else(|_| panic!("the watch did not notice {what}"));
    }

    #[tokio::test]
    async fn writes_replacements_removals_and_relinks_are_noticed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("manifest.json");
        let hour = Duration::from_secs(3600);
        let mut watch = FileWatch::new(&file, hour, hour);
        assert!(watch.inotify.is_some(), "inotify is available on Linux");

        std::fs::write(&file, "one").expect("write");
        sees(&mut watch, "the file's creation").await;
        std::fs::write(&file, "two, longer").expect("write");
        sees(&mut watch, "a write in place").await;
        let new = tmp.path().join(".manifest.json.tmp");
        std::fs::write(&new, "three").expect("write");
        std::fs::rename(&new, &file).expect("rename");
        sees(&mut watch, "a new file renamed over it").await;
        std::fs::remove_file(&file).expect("remove");
        sees(&mut watch, "its removal").await;

        // A symlink to a file in another folder; then the target changes; then the link is
        // re-pointed to a third folder, whose file changes in turn.
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        std::fs::create_dir(&a).expect("mkdir");
        std::fs::create_dir(&b).expect("mkdir");
        std::fs::write(a.join("m.json"), "a1").expect("write");
        std::fs::write(b.join("m.json"), "b1, longer").expect("write");
        std::os::unix::fs::symlink(a.join("m.json"), &file).expect("symlink");
        sees(&mut watch, "the symlink's creation").await;
        std::fs::write(a.join("m.json"), "a2, longer").expect("write");
        sees(&mut watch, "a write to the link's target").await;
        let link = tmp.path().join(".link.tmp");
        std::os::unix::fs::symlink(b.join("m.json"), &link).expect("symlink");
        std::fs::rename(&link, &file).expect("rename");
        sees(&mut watch, "the link re-pointed").await;
        std::fs::write(b.join("m.json"), "b2").expect("write");
        sees(&mut watch, "a write to the new target").await;
        assert_eq!(
            watch.watched.len(),
            2,
            "the old target's folder is no longer watched"
        );
    }

    #[tokio::test]
    async fn other_files_in_the_folder_do_not_count() {
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("manifest.json");
        std::fs::write(&file, "one").expect("write");
        let hour = Duration::from_secs(3600);
        let mut watch = FileWatch::new(&file, hour, hour);
        // A journal being written next to the manifest, as in the state directory.
        for i in 0..20 {
            std::fs::write(tmp.path().join("journal"), format!("{i}")).expect("write");
        }
        let noticed = tokio::time::timeout(Duration::from_millis(500), watch.changed()).await;
        assert!(noticed.is_err(), "nothing about the manifest changed");
        // And the watch still works afterwards.
        std::fs::write(&file, "two, longer").expect("write");
        sees(&mut watch, "a write after the noise").await;
    }

    #[tokio::test]
    async fn without_events_the_periodic_check_finds_the_change() {
        let tmp = tempfile::tempdir().expect("tmp");
        let file = tmp.path().join("manifest.json");
        std::fs::write(&file, "one").expect("write");
        let mut watch = FileWatch::new(
            &file,
            Duration::from_secs(1),
            crate::platform::FALLBACK_POLL,
        );
        // As if changed behind inotify's back (a network filesystem): no watch at all.
        let fd = watch.inotify.take().expect("inotify");
        drop(fd);
        watch.watched.clear();
        std::fs::write(&file, "two, longer").expect("write");
        tokio::time::timeout(Duration::from_secs(30), watch.changed())
            .await
            .expect("the periodic check sees it");
    }
}
