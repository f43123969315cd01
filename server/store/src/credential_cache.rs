//! The rows every REST request authenticates with, and the agent rows commands read, kept
//! for a second.
//!
//! Every request reads its API key's row (and the row of the key's owner) or its access
//! token's user, to act with the role that row has *now* (CONTRACT.md §9). On SQLite each read
//! is a hand-off to a connection's thread and back, a tenth of a millisecond or more of a
//! round trip that is a little over one. So a process keeps the rows it read, and a copy
//! serves while both hold:
//!
//! - **no credential changed since it was read.** One epoch per process counts changes: a
//!   write to API keys or users bumps it *after* its commit ([`changed`]; a service
//!   transaction that makes one commits with `Store::commit_credentials`), and a copy
//!   remembers the epoch from *before* its read. A read that raced a change is thus
//!   never served: either it began after the commit, or the bump makes its copy stale. The
//!   other nodes of a cluster bump theirs when told (`outpost_web::cluster`, [`forget`]), and
//!   forget everything when their listener may have missed a notification.
//! - **it is younger than the server's `--credential-cache-ms`** (at most [`FRESH`], a
//!   second; 0 keeps nothing). What no process here was told about (a row changed by hand, a
//!   notification that was lost) counts after at most that long. The host command that revokes
//!   keys beside a running server (`outpost-server admin-key rotate`) tells the nodes on
//!   PostgreSQL and waits out [`FRESH`] before it says the old keys are revoked.
//!
//! Only rows that were found are kept: an unknown token reads the store every time (and
//! counts against its address). The copies hold what the database holds (hashes, never a
//! secret), and every check (the constant-time hash comparison, expiry, revocation, status,
//! role) still runs on each request against the copy.
//!
//! **Agents' rows** are kept the same way for commands (`KeptCredentials::agent_with_key`:
//! the agent with its key, which decides what the command may do), under an epoch of their
//! own, so that a fleet reconnecting does not make every request read its API key again.
//! [`agents_changed`] bumps it after every write to the columns a command reads: what an
//! agent declared when it registered, its node, its server tags, its deletion, and any change
//! to an agent key (the writes to bookkeeping columns only, the heartbeats, the
//! online/offline announcements and a key's last use, do not). A command uses a copy only
//! for an agent connected to this process, whose registration this process wrote: so the
//! copy never decides where an agent is connected, and what changes on another node reaches
//! this one as a hint (or after the copy's second) exactly as for credentials.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::{Result, Store, agent, agent_key, api_key, user};

/// How long a kept row serves at most (`--credential-cache-ms` may only shorten it).
pub const FRESH: Duration = Duration::from_secs(1);
/// Rows kept per kind at most; past it the stale ones go, then all.
const MAX_KEPT: usize = 4096;
/// Agents' rows kept at most: they are larger (the scripts an agent declared), and a copy
/// pays only for commands sent to one agent within a second, which few agents get at once.
const MAX_KEPT_AGENTS: usize = 256;

/// Changes this process made or was told about, to one kind of kept row.
pub(crate) struct Epoch {
    count: AtomicU64,
    /// The changes this process made, for the other nodes.
    local: LazyLock<watch::Sender<u64>>,
    /// Counts forgetting, by why (`here`, `other_node`, `resync`).
    forgotten: fn(&'static str),
}

impl Epoch {
    const fn new(forgotten: fn(&'static str)) -> Self {
        Self {
            count: AtomicU64::new(0),
            local: LazyLock::new(|| watch::Sender::new(0)),
            forgotten,
        }
    }

    fn now(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    fn changed(&self) {
        let epoch = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        self.local.send_replace(epoch);
        (self.forgotten)("here");
    }

    fn forget(&self, why: &'static str) {
        self.count.fetch_add(1, Ordering::SeqCst);
        (self.forgotten)(why);
    }
}

/// Changes to API keys and users.
static CREDENTIALS: Epoch = Epoch::new(crate::metrics::credentials_forgotten);
/// Changes to agents' rows and agent keys.
static AGENTS: Epoch = Epoch::new(crate::metrics::agent_rows_forgotten);

/// Credentials changed through this process (committed): no copy read before serves again,
/// and the other nodes are told ([`local_changes`]).
pub fn changed() {
    CREDENTIALS.changed();
}

/// Credentials may have changed elsewhere: another node said so (`other_node`), or its word
/// may have been lost (`resync`). No copy read before serves again; nobody is told.
pub fn forget(why: &'static str) {
    CREDENTIALS.forget(why);
}

/// Wakes on every change [`changed`] records, for the node that tells the others.
pub fn local_changes() -> watch::Receiver<u64> {
    CREDENTIALS.local.subscribe()
}

/// An agent's row or an agent key changed through this process (committed): what
/// [`KeptCredentials::agent_with_key`] kept before serves no more, and the other nodes are
/// told ([`local_agent_changes`]). Every store method that writes a column of `agents` or
/// `agent_keys` that a command reads calls it after its write (see the module's docs); a
/// service transaction that calls one of them commits with `Store::commit_agents`.
pub fn agents_changed() {
    AGENTS.changed();
}

/// Agents' rows may have changed elsewhere ([`forget`]'s reasons).
pub fn forget_agents(why: &'static str) {
    AGENTS.forget(why);
}

/// Wakes on every change [`agents_changed`] records.
pub fn local_agent_changes() -> watch::Receiver<u64> {
    AGENTS.local.subscribe()
}

#[cfg(test)]
fn epoch() -> u64 {
    CREDENTIALS.now()
}

struct Copy<V> {
    value: V,
    epoch: u64,
    read_at: Instant,
}

struct Kept<K, V> {
    copies: Mutex<HashMap<K, Copy<V>>>,
    /// The changes that make these copies stale.
    epoch: &'static Epoch,
    /// Copies at most.
    max: usize,
}

impl<K: Eq + Hash, V: Clone> Kept<K, V> {
    fn new(epoch: &'static Epoch, max: usize) -> Self {
        Self {
            copies: Mutex::new(HashMap::new()),
            epoch,
            max,
        }
    }

    fn epoch(&self) -> u64 {
        self.epoch.now()
    }

    /// The copy of `key`, if one was read since the last change and less than `fresh`
    /// before `now`.
    fn get(&self, key: &K, fresh: Duration, now: Instant) -> Option<V> {
        let epoch = self.epoch();
        let copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        copies
            .get(key)
            .filter(|c| c.epoch == epoch && now.saturating_duration_since(c.read_at) < fresh)
            .map(|c| c.value.clone())
    }

    /// Keeps `value`, read after the epoch was `epoch`, unless something changed since.
    fn keep(&self, key: K, value: V, epoch: u64, read_at: Instant, fresh: Duration) {
        let current = self.epoch();
        if epoch != current || fresh.is_zero() {
            return;
        }
        let mut copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        if copies.len() >= self.max {
            copies.retain(|_, c| c.epoch == current && c.read_at.elapsed() < fresh);
            if copies.len() >= self.max {
                copies.clear();
            }
        }
        copies.insert(
            key,
            Copy {
                value,
                epoch,
                read_at,
            },
        );
    }
}

impl<K: Eq + Hash, V: Clone> Kept<K, V> {
    /// The copy of `key` while one serves, `read` otherwise (kept when it found a row).
    /// `counted` is told where the row came from (`kept`, `store`). The epoch is taken before
    /// `read` runs: a future does nothing until it is awaited.
    async fn read_through(
        &self,
        key: K,
        fresh: Duration,
        counted: fn(&'static str),
        read: impl Future<Output = Result<Option<V>>>,
    ) -> Result<Option<V>> {
        if let Some(value) = self.get(&key, fresh, Instant::now()) {
            counted("kept");
            return Ok(Some(value));
        }
        counted("store");
        let (epoch, read_at) = (self.epoch(), Instant::now());
        let found = read.await?;
        if let Some(value) = &found {
            self.keep(key, value.clone(), epoch, read_at, fresh);
        }
        Ok(found)
    }
}

/// An agent's row with its key's, as [`Store::get_agent_with_key`] reads them.
type AgentWithKey = (agent::Model, Option<agent_key::Model>);

/// One process's copies of the rows authentication reads, and of the agent rows commands
/// read (see the module's docs).
pub struct KeptCredentials {
    fresh: Duration,
    api_keys: Kept<String, api_key::Model>,
    users: Kept<(String, String), user::Model>,
    agents: Kept<(String, String), AgentWithKey>,
}

impl Default for KeptCredentials {
    fn default() -> Self {
        Self::new(FRESH)
    }
}

impl KeptCredentials {
    /// Copies that serve for at most `fresh` (none when it is zero), and never longer than
    /// [`FRESH`]: the host command that revokes keys waits that long, not more.
    pub fn new(fresh: Duration) -> Self {
        Self {
            fresh: fresh.min(FRESH),
            api_keys: Kept::new(&CREDENTIALS, MAX_KEPT),
            users: Kept::new(&CREDENTIALS, MAX_KEPT),
            agents: Kept::new(&AGENTS, MAX_KEPT_AGENTS),
        }
    }

    /// [`Store::api_key_by_hash`], from a copy while one serves.
    pub async fn api_key_by_hash(
        &self,
        store: &Store,
        hash: &str,
    ) -> Result<Option<api_key::Model>> {
        let read = store.api_key_by_hash(hash);
        let counted = crate::metrics::credential_read;
        (self.api_keys)
            .read_through(hash.to_owned(), self.fresh, counted, read)
            .await
    }

    /// [`Store::get_user`], from a copy while one serves.
    pub async fn user(
        &self,
        store: &Store,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<user::Model>> {
        let key = (tenant_id.to_owned(), id.to_owned());
        let read = store.get_user(tenant_id, id);
        let counted = crate::metrics::credential_read;
        self.users
            .read_through(key, self.fresh, counted, read)
            .await
    }

    /// [`Store::get_agent_with_key`], from a copy while one serves. For a command to an agent
    /// connected to this process only: the caller asks only then, so what the row says about
    /// where the agent is connected (`node_id`) never comes from a copy, and what it declared
    /// when it registered (scripts, library, version, hostname) was written by this process,
    /// which bumped the epoch after writing it. The heartbeat's columns (`last_seen`,
    /// `last_heartbeat`) may be a second old in a copy.
    pub async fn agent_with_key(
        &self,
        store: &Store,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<AgentWithKey>> {
        let key = (tenant_id.to_owned(), id.to_owned());
        let read = store.get_agent_with_key(tenant_id, id);
        let counted = crate::metrics::agent_row_read;
        self.agents
            .read_through(key, self.fresh, counted, read)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_copy_serves_until_it_ages_out() {
        let kept = Kept::new(&CREDENTIALS, MAX_KEPT);
        let read_at = Instant::now();
        // Another test in this process (`cargo test` runs them on threads) may change
        // credentials in between; then it is tried again.
        loop {
            let before = epoch();
            kept.keep("k", 1, before, read_at, SECOND);
            let served = kept.get(&"k", SECOND, read_at + Duration::from_millis(999));
            if epoch() == before {
                assert_eq!(served, Some(1));
                break;
            }
        }
        assert_eq!(kept.get(&"k", SECOND, read_at + SECOND), None);
        assert_eq!(kept.get(&"other", SECOND, read_at), None);
    }

    #[test]
    fn a_change_after_the_read_began_is_never_served_over() {
        let kept = Kept::new(&CREDENTIALS, MAX_KEPT);
        let read_at = Instant::now();
        // Read, then a change commits (`changed`), then the read's row arrives to be kept.
        let before = epoch();
        changed();
        kept.keep("k", 1, before, read_at, SECOND);
        assert_eq!(kept.get(&"k", SECOND, read_at), None);
        // Kept after the read, then a change: gone at once.
        kept.keep("k", 2, epoch(), read_at, SECOND);
        forget("resync");
        assert_eq!(kept.get(&"k", SECOND, read_at), None);
    }

    #[test]
    fn nothing_is_kept_when_copies_are_off() {
        let kept = Kept::new(&CREDENTIALS, MAX_KEPT);
        let read_at = Instant::now();
        kept.keep("k", 1, epoch(), read_at, Duration::ZERO);
        assert_eq!(kept.get(&"k", SECOND, read_at), None);
    }

    #[test]
    fn the_copies_stay_bounded() {
        let kept = Kept::new(&CREDENTIALS, MAX_KEPT);
        let read_at = Instant::now();
        let epoch = epoch();
        for i in 0..(MAX_KEPT * 2) {
            kept.keep(i, i, epoch, read_at, SECOND);
        }
        let held = kept.copies.lock().expect("lock").len();
        assert!(held <= MAX_KEPT, "{held} copies");
    }

    #[test]
    fn agents_and_credentials_are_forgotten_apart() {
        let agents = Kept::new(&AGENTS, MAX_KEPT_AGENTS);
        let keys = Kept::new(&CREDENTIALS, MAX_KEPT);
        let read_at = Instant::now();
        // Other tests in this process change credentials in between: then it is tried again.
        loop {
            let before = (CREDENTIALS.now(), AGENTS.now());
            agents.keep("a", 1, before.1, read_at, SECOND);
            keys.keep("k", 1, before.0, read_at, SECOND);
            agents_changed();
            let kept_key = keys.get(&"k", SECOND, read_at);
            if CREDENTIALS.now() == before.0 {
                assert_eq!(kept_key, Some(1), "an agent's change forgot a credential");
                break;
            }
        }
        assert_eq!(agents.get(&"a", SECOND, read_at), None);
        // And a credential's change leaves the agents' copies.
        loop {
            let before = AGENTS.now();
            agents.keep("a", 2, before, read_at, SECOND);
            changed();
            let kept = agents.get(&"a", SECOND, read_at);
            if AGENTS.now() == before {
                assert_eq!(kept, Some(2), "a credential's change forgot an agent");
                break;
            }
        }
        forget_agents("resync");
        assert_eq!(agents.get(&"a", SECOND, read_at), None);
    }

    #[tokio::test]
    async fn agent_changes_wake_their_teller_and_forgetting_does_not() {
        let mut agents = local_agent_changes();
        agents.mark_unchanged();
        forget_agents("other_node");
        assert!(!agents.has_changed().expect("open"));
        agents_changed();
        assert!(agents.has_changed().expect("open"));
    }

    #[tokio::test]
    async fn local_changes_wake_the_teller_and_forgetting_does_not() {
        let mut changes = local_changes();
        changes.mark_unchanged();
        forget("other_node");
        assert!(!changes.has_changed().expect("open"));
        changed();
        assert!(changes.has_changed().expect("open"));
    }
}
