//! Who is connected and has not authenticated yet, and whom to close when there are too many.
//!
//! Every accepted connection is admitted here first; its socket holds an [`Open`] for as long
//! as it is open (inside the I/O object, so an upgraded WebSocket keeps it too). Until a
//! request on it passes an API- or agent-key check ([`Conn::authenticated`]) it is also
//! listed under its client address, oldest first. Three limits apply at admission:
//!
//! - **per address** (`--max-unauthenticated-per-address`): an address at its limit gives up
//!   its oldest unauthenticated connection for the new one;
//! - **in total** (`--max-unauthenticated`): the address holding the most gives up its oldest;
//! - **open connections** (the open-file limit less a reserve): the address holding the most
//!   unauthenticated connections gives up its oldest; with none to give up, the new connection
//!   is closed at once. Authenticated agents are never closed to make room.
//!
//! The new connection is always the one let in (when anything can be closed), because it is
//! the one that may be a fresh `/healthz` or an agent about to authenticate, while a socket
//! that has sat unauthenticated longest is the likeliest to be an attacker's. Of an address's
//! connections, the oldest with no request in progress goes first: an idle socket or one still
//! sending its headers, before one whose request is being answered (which is done within
//! milliseconds unless it is a slow body, which `--body-timeout` ends anyway).
//!
//! The lock is taken when a connection is admitted, when it authenticates and when an
//! unauthenticated one closes: never per request, and never for an authenticated connection
//! after its first authenticated request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use tokio::sync::Notify;

/// Connections of an address looked at for one with no request in progress before its oldest
/// is taken whatever it does: bounds the work of one admission.
const SCAN: usize = 32;

/// The limits on connections, from the configuration and the open-file limit.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Unauthenticated connections in all.
    pub unauthenticated: usize,
    /// Unauthenticated connections from one address.
    pub per_address: usize,
    /// Open connections of every kind.
    pub connections: usize,
}

/// A client address as the per-address limit sees it: an IPv4 address, or an IPv6 /64 (one
/// host usually holds a whole /64, so counting single IPv6 addresses would count nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    /// An IPv4 address (IPv4-mapped IPv6 addresses included).
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl From<IpAddr> for Address {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(u32::from(v4)),
                None => Self::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Why a connection was closed by the server, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Its address had too many unauthenticated connections.
    PerAddress,
    /// The server had too many unauthenticated connections.
    Total,
    /// The server was at its open-file budget.
    FileLimit,
}

impl Shed {
    fn label(self) -> &'static str {
        match self {
            Self::PerAddress => "per_address",
            Self::Total => "total",
            Self::FileLimit => "file_limit",
        }
    }
}

/// Nothing asked of the connection task.
const KEEP: u8 = 0;
/// Finish the response in progress, then close (a body came too slowly).
const CLOSE_AFTER_RESPONSE: u8 = 1;
/// Close now (shed to make room).
const CLOSE_NOW: u8 = 2;

/// What the connection task is asked to do, see [`Conn::requested`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Finish the response in progress, then close.
    AfterResponse,
    /// Close at once.
    Now,
}

/// One connection's state, shared by its task, its requests and the registry.
pub struct Conn {
    id: u64,
    address: Address,
    registry: Arc<Registry>,
    /// Whether it is in the registry's lists. Changed only under the registry's lock; once
    /// false it stays false, so `false` read without the lock is reliable.
    listed: AtomicBool,
    authenticated: AtomicBool,
    /// Whether a request has started on it (before that the header timeout applies).
    requested: AtomicBool,
    in_flight: AtomicU32,
    /// When it last had no request in progress, in milliseconds since the registry's epoch.
    quiet_since_ms: AtomicU64,
    close: AtomicU8,
    closing: Notify,
}

impl Conn {
    /// Records that a request on this connection passed a key check. Cheap when it already
    /// has: authenticated clients call it on every request.
    pub fn authenticated(&self) {
        if self.authenticated.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.listed.load(Ordering::Acquire) {
            let mut inner = self.registry.lock();
            self.registry.unlist(&mut inner, self);
        }
    }

    /// Whether a request on it passed a key check.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    /// Counts a request as started; the returned guard counts it as finished when dropped
    /// (with its response body, so a streamed response counts as in progress).
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.requested.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Whether any request has started on it.
    pub fn has_requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// When it has had no request in progress since, or `None` while one is.
    pub fn quiet_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.quiet_since_ms.load(Ordering::Relaxed);
        Some(self.registry.epoch + Duration::from_millis(ms))
    }

    /// Asks the connection's task to close it.
    pub fn request_close(&self, how: Close) {
        let value = match how {
            Close::AfterResponse => CLOSE_AFTER_RESPONSE,
            Close::Now => CLOSE_NOW,
        };
        if self.close.fetch_max(value, Ordering::AcqRel) < value {
            self.closing.notify_one();
        }
    }

    /// Resolves when a close at least as urgent as `at_least` is requested (at once if one
    /// already was); then says which.
    pub async fn wait_close(&self, at_least: Close) -> Close {
        let level = match at_least {
            Close::AfterResponse => CLOSE_AFTER_RESPONSE,
            Close::Now => CLOSE_NOW,
        };
        loop {
            match self.close.load(Ordering::Acquire) {
                CLOSE_NOW => return Close::Now,
                CLOSE_AFTER_RESPONSE if level == CLOSE_AFTER_RESPONSE => {
                    return Close::AfterResponse;
                }
                _ => self.closing.notified().await,
            }
        }
    }

    /// Whether a close has been requested.
    pub fn close_requested(&self) -> Option<Close> {
        match self.close.load(Ordering::Acquire) {
            CLOSE_NOW => Some(Close::Now),
            CLOSE_AFTER_RESPONSE => Some(Close::AfterResponse),
            _ => None,
        }
    }
}

/// A request in progress on a connection (see [`Conn::request_started`]).
pub struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.quiet_since_ms
            .store(conn.registry.now_ms(), Ordering::Relaxed);
        conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted connection: its socket counts as open while the [`Open`] half lives, and the
/// connection as unauthenticated (until it authenticates) while the [`Listed`] half does.
pub struct Admitted {
    listed: Listed,
    open: Open,
}

impl Admitted {
    /// The connection's shared state.
    pub fn conn(&self) -> &Arc<Conn> {
        &self.listed.0
    }

    /// The two halves: the connection task keeps [`Listed`]; the socket carries [`Open`],
    /// through an upgrade too.
    pub fn split(self) -> (Listed, Open) {
        (self.listed, self.open)
    }
}

/// Holds the connection's state; takes it off the unauthenticated lists when dropped (with
/// the connection's task: at its close, or its upgrade, which only follows a key check).
pub struct Listed(Arc<Conn>);

impl Drop for Listed {
    fn drop(&mut self) {
        let conn = &self.0;
        if conn.listed.load(Ordering::Acquire) {
            let mut inner = conn.registry.lock();
            conn.registry.unlist(&mut inner, conn);
        }
    }
}

/// Counts a socket as open until dropped. It holds only the registry, not the connection's
/// state, so that an agent's WebSocket costs nothing more than a pointer for it (the state,
/// with its lock-free close signal, is freed when the upgrade ends the connection's task).
pub struct Open(Arc<Registry>);

impl Drop for Open {
    fn drop(&mut self) {
        let registry = &self.0;
        let was = registry.open.fetch_sub(1, Ordering::AcqRel);
        registry.metrics.open.decrement(1.0);
        if was > registry.caps.connections {
            registry.room.notify_one();
        }
    }
}

/// The connections of one server process (both listeners), see the module docs.
pub struct Registry {
    caps: Caps,
    /// Woken when a socket closes while over the descriptor budget.
    room: Notify,
    epoch: Instant,
    next_id: AtomicU64,
    open: AtomicUsize,
    inner: Mutex<Inner>,
    metrics: Metrics,
}

#[derive(Default)]
struct Inner {
    unauthenticated: usize,
    /// Each address's unauthenticated connections, oldest (lowest id) first.
    by_address: HashMap<Address, BTreeMap<u64, Arc<Conn>>>,
    /// Addresses by how many unauthenticated connections they hold.
    by_count: BTreeSet<(usize, Address)>,
}

struct Metrics {
    open: Gauge,
    unauthenticated: Gauge,
    shed: [Counter; 3],
    refused: Counter,
}

impl Registry {
    /// An empty registry with these limits.
    pub fn new(caps: Caps) -> Arc<Self> {
        let shed = [Shed::PerAddress, Shed::Total, Shed::FileLimit]
            .map(|why| metrics::counter!(super::CONNECTIONS_SHED, "reason" => why.label()));
        Arc::new(Self {
            caps,
            room: Notify::new(),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            inner: Mutex::new(Inner::default()),
            metrics: Metrics {
                open: metrics::gauge!(super::CONNECTIONS_OPEN),
                unauthenticated: metrics::gauge!(super::CONNECTIONS_UNAUTHENTICATED),
                shed,
                refused: metrics::counter!(super::CONNECTIONS_REFUSED),
            },
        })
    }

    /// The limits in force.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until at most `overshoot` sockets beyond the descriptor budget are open: the
    /// connections closed to make room for new ones hold their descriptors until their tasks
    /// have run, and an accept loop that went on meanwhile would run the process out.
    pub async fn wait_for_room(&self, overshoot: usize) {
        while self.open() > self.caps.connections + overshoot {
            // A close past the budget wakes us; the timer covers a wake-up taken by a close
            // that happened before we waited.
            let _ = tokio::time::timeout(Duration::from_millis(10), self.room.notified()).await;
        }
    }

    /// Unauthenticated connections open now.
    pub fn unauthenticated(&self) -> usize {
        self.lock().unauthenticated
    }

    /// Counts a socket just accepted as open, closing an unauthenticated connection if that
    /// goes over the descriptor budget; `None` (and the socket is to be closed) when there is
    /// none to close. Called by the accept loop, so that sockets waiting for their task count
    /// too; it takes the lock only over the budget.
    pub fn open_one(self: &Arc<Self>) -> Option<Open> {
        let now_open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.metrics.open.increment(1.0);
        let open = Open(self.clone());
        if now_open > self.caps.connections {
            let mut inner = self.lock();
            if !self.shed_heaviest(&mut inner, Shed::FileLimit) {
                drop(inner);
                self.metrics.refused.increment(1);
                return None;
            }
        }
        Some(open)
    }

    /// Lists the connection from `peer` (its socket counted by `open`) as unauthenticated,
    /// closing another unauthenticated one if a cap says so.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr, open: Open) -> Admitted {
        let address = Address::from(peer.ip());
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            address,
            registry: self.clone(),
            listed: AtomicBool::new(true),
            authenticated: AtomicBool::new(false),
            requested: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            quiet_since_ms: AtomicU64::new(self.now_ms()),
            close: AtomicU8::new(KEEP),
            closing: Notify::new(),
        });
        let mut inner = self.lock();
        let of_address = inner.by_address.get(&address).map_or(0, BTreeMap::len);
        if of_address >= self.caps.per_address {
            self.shed_from(&mut inner, address, Shed::PerAddress);
        } else if inner.unauthenticated >= self.caps.unauthenticated {
            self.shed_heaviest(&mut inner, Shed::Total);
        }
        let count = {
            let list = inner.by_address.entry(address).or_default();
            list.insert(conn.id, conn.clone());
            list.len()
        };
        if count > 1 {
            inner.by_count.remove(&(count - 1, address));
        }
        inner.by_count.insert((count, address));
        inner.unauthenticated += 1;
        self.metrics
            .unauthenticated
            .set(inner.unauthenticated as f64);
        drop(inner);
        Admitted {
            listed: Listed(conn),
            open,
        }
    }

    /// Closes one unauthenticated connection to free a descriptor (the process ran out);
    /// whether there was one.
    pub fn shed_for_descriptor(&self) -> bool {
        let mut inner = self.lock();
        self.shed_heaviest(&mut inner, Shed::FileLimit)
    }

    fn shed_heaviest(&self, inner: &mut Inner, why: Shed) -> bool {
        match inner.by_count.last() {
            Some(&(_, address)) => self.shed_from(inner, address, why),
            None => false,
        }
    }

    /// Closes `address`'s oldest connection with no request in progress (or its oldest, if
    /// the first few all have one).
    fn shed_from(&self, inner: &mut Inner, address: Address, why: Shed) -> bool {
        let Some(list) = inner.by_address.get(&address) else {
            return false;
        };
        let victim = list
            .values()
            .take(SCAN)
            .find(|conn| conn.in_flight.load(Ordering::Acquire) == 0)
            .or_else(|| list.values().next())
            .cloned();
        let Some(victim) = victim else {
            return false;
        };
        self.unlist(inner, &victim);
        victim.request_close(Close::Now);
        self.metrics.shed[why as usize].increment(1);
        true
    }

    /// Takes `conn` off the unauthenticated lists, if it is still on them.
    fn unlist(&self, inner: &mut Inner, conn: &Conn) {
        let Some(list) = inner.by_address.get_mut(&conn.address) else {
            return;
        };
        if list.remove(&conn.id).is_none() {
            return;
        }
        conn.listed.store(false, Ordering::Release);
        let count = list.len();
        if count == 0 {
            inner.by_address.remove(&conn.address);
        }
        inner.by_count.remove(&(count + 1, conn.address));
        if count > 0 {
            inner.by_count.insert((count, conn.address));
        }
        inner.unauthenticated -= 1;
        self.metrics
            .unauthenticated
            .set(inner.unauthenticated as f64);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; if something did, the lists are still consistent
        // enough to go on with.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(unauthenticated: usize, per_address: usize, connections: usize) -> Arc<Registry> {
        Registry::new(Caps {
            unauthenticated,
            per_address,
            connections,
        })
    }

    fn peer(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 40_000))
    }

    /// What the accept loop and the connection task do for a new connection.
    fn accept(registry: &Arc<Registry>, last: u8) -> Option<Admitted> {
        let open = registry.open_one()?;
        Some(registry.admit(peer(last), open))
    }

    #[test]
    fn an_address_at_its_limit_gives_up_its_oldest_idle_connection() {
        let registry = registry(100, 3, 1000);
        let first = accept(&registry, 2).expect("admitted");
        let second = accept(&registry, 2).expect("admitted");
        let _busy = first.conn().request_started();
        let third = accept(&registry, 2).expect("admitted");
        let fourth = accept(&registry, 2).expect("admitted");
        // The first has a request in progress: the second, idle, went instead.
        assert_eq!(first.conn().close_requested(), None);
        assert_eq!(second.conn().close_requested(), Some(Close::Now));
        assert_eq!(third.conn().close_requested(), None);
        assert_eq!(fourth.conn().close_requested(), None);
        assert_eq!(registry.unauthenticated(), 3);
        // Another address is not affected.
        let other = accept(&registry, 3).expect("admitted");
        assert_eq!(other.conn().close_requested(), None);
        assert_eq!(registry.open(), 5);
        drop(second);
        assert_eq!(registry.open(), 4);
        assert_eq!(registry.unauthenticated(), 4);
    }

    #[test]
    fn the_total_limit_takes_from_the_address_holding_the_most() {
        let registry = registry(4, 10, 1000);
        let a: Vec<_> = (0..3).map(|_| accept(&registry, 2).expect("a")).collect();
        let b = accept(&registry, 3).expect("b");
        let c = accept(&registry, 4).expect("c");
        assert_eq!(a[0].conn().close_requested(), Some(Close::Now));
        assert!(a[1..].iter().all(|x| x.conn().close_requested().is_none()));
        assert_eq!(b.conn().close_requested(), None);
        assert_eq!(c.conn().close_requested(), None);
        assert_eq!(registry.unauthenticated(), 4);
    }

    #[test]
    fn authenticated_connections_leave_the_count_and_are_never_shed() {
        let registry = registry(2, 2, 3);
        let agent = accept(&registry, 2).expect("agent");
        agent.conn().authenticated();
        assert!(agent.conn().is_authenticated());
        assert_eq!(registry.unauthenticated(), 0);
        let x = accept(&registry, 5).expect("x");
        let y = accept(&registry, 5).expect("y");
        // At the file budget (3 open): the unauthenticated oldest makes room.
        let z = accept(&registry, 6).expect("z");
        assert_eq!(x.conn().close_requested(), Some(Close::Now));
        assert_eq!(agent.conn().close_requested(), None);
        drop((x, y, z));
        // Only the agent is open: a fourth and fifth fit, and a sixth...
        let p = accept(&registry, 7).expect("p");
        let q = accept(&registry, 7).expect("q");
        p.conn().authenticated();
        q.conn().authenticated();
        // ...finds nothing it may close.
        assert!(accept(&registry, 7).is_none());
        assert_eq!(agent.conn().close_requested(), None);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(Address::from(a), Address::from(b));
        assert_ne!(Address::from(a), Address::from(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        let v4: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(Address::from(mapped), Address::from(v4));
    }

    #[test]
    fn quiet_since_follows_requests() {
        let registry = registry(10, 10, 10);
        let admitted = accept(&registry, 2).expect("admitted");
        let conn = admitted.conn().clone();
        assert!(!conn.has_requested());
        assert!(conn.quiet_since().is_some());
        let request = conn.request_started();
        assert!(conn.has_requested());
        assert_eq!(conn.quiet_since(), None);
        drop(request);
        assert!(conn.quiet_since().is_some());
    }
}
