//! Events (CONTRACT.md §11): what happened that people should hear of, listed (`GET /api/events`)
//! or followed live (`GET /api/events/stream`).
//!
//! A stream reads the `events` table, not a bus: every node sees every event in the database,
//! so a stream on one node hears what another recorded with nothing sent between them, at
//! the cost of one indexed read a second ([`POLL`]). Reading only past the last id sent would
//! not do: ids are UUIDv7, ordered by the millisecond their node's clock gave when the row was
//! made, not by commit. Two nodes' clocks differ, and a transaction that made its row early (a
//! batch of fires) commits after one that made a later row. So each read starts a
//! [`WINDOW`] before the newest event the stream has seen and skips the ids it has seen
//! (a set of the window's ids, at most [`MAX_SEEN`]; when more than that fall in the window,
//! it shrinks to the newest ones). An event that commits more than the window after one
//! with a later id, or below a window shrunk that way, is not sent; `GET /api/events` still
//! lists it.
//!
//! Nothing grows with a slow reader: at most [`QUEUE`] events wait for it, and the next ones
//! are read from the database only as it makes room. A reader that makes none for
//! [`LAG_GRACE`] (a stalled connection) gets the events queued, a last `lagged` message, and
//! the end of the stream, which frees its place; it resumes with `Last-Event-ID`, losing
//! nothing still stored. A tenant has at most [`MAX_STREAMS`] streams open on a node.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Core;
use outpost_store::domain::{Caller, DomainError};
use outpost_store::{EventFilter, StoreError, event};

/// How often a stream reads the events table.
pub const POLL: Duration = Duration::from_secs(1);
/// How far before the newest event it has seen a stream reads again, for events committed
/// after others with later ids (and clocks that differ between nodes by less than this).
pub const WINDOW_MS: u64 = 10_000;
/// Ids of the window a stream remembers at most.
pub const MAX_SEEN: usize = 2_048;
/// Events waiting for a reader at most (each well under 64 KiB: its `data` is small).
pub const QUEUE: usize = 256;
/// How long a stream waits for its reader to take an event from a full queue before it ends
/// with `lagged`.
pub const LAG_GRACE: Duration = Duration::from_secs(30);
/// Streams a tenant may have open on one node; one more is refused (429).
pub const MAX_STREAMS: usize = 32;
/// Events read in one query.
const PAGE: u64 = 256;

/// How often a stream reads, and how long it waits for room: [`POLL`] and [`LAG_GRACE`], or
/// a unit test's milliseconds.
#[derive(Debug, Clone, Copy)]
struct Pace {
    poll: Duration,
    lag_grace: Duration,
}

const PACE: Pace = Pace {
    poll: POLL,
    lag_grace: LAG_GRACE,
};

/// Events: listing, and following live.
#[derive(Clone)]
pub struct Events {
    core: Arc<Core>,
    open: Arc<OpenStreams>,
}

/// What a stream follows: as the listing's filters.
#[derive(Debug, Clone, Default)]
pub struct StreamFilter {
    /// A type (`schedule.missed`) or a kind (`schedule`: every `schedule.*`).
    pub kind: Option<String>,
    /// Events about this thing.
    pub subject_id: Option<String>,
}

/// What a stream hands its reader next.
#[derive(Debug)]
pub enum Item {
    /// An event, once, in the order the stream read it.
    Event(Box<event::Model>),
    /// The reader left events unread for too long: the stream ends after this.
    Lagged,
}

/// A live stream of a tenant's events, from [`Events::follow`]. Dropping it stops the reads
/// and frees its place among the tenant's streams.
pub struct Subscription {
    rx: mpsc::Receiver<event::Model>,
    lagged: Arc<AtomicBool>,
    ended: bool,
    _slot: Slot,
}

impl Subscription {
    /// The next event; `None` once the stream has ended (the server is stopping, or after
    /// [`Item::Lagged`]).
    pub async fn next(&mut self) -> Option<Item> {
        if self.ended {
            return None;
        }
        match self.rx.recv().await {
            Some(event) => Some(Item::Event(Box::new(event))),
            None => {
                self.ended = true;
                self.lagged.load(Ordering::Acquire).then_some(Item::Lagged)
            }
        }
    }
}

impl Events {
    /// The events service.
    pub fn new(core: Arc<Core>) -> Self {
        Self {
            core,
            open: Arc::new(OpenStreams::default()),
        }
    }

    /// A tenant's events, newest first, and the cursor of the next page.
    pub async fn list(
        &self,
        caller: &Caller,
        kind: Option<String>,
        subject_id: Option<String>,
        cursor: Option<String>,
        limit: Option<u64>,
    ) -> Result<(Vec<event::Model>, Option<String>), DomainError> {
        let limit = limit.unwrap_or(50);
        if !(1..=200).contains(&limit) {
            return Err(DomainError::BadRequest(
                "limit: must be between 1 and 200".into(),
            ));
        }
        let filter = EventFilter {
            kind,
            subject_id,
            before: cursor,
            limit: limit + 1,
        };
        let mut events = self
            .core
            .store
            .list_events(&caller.tenant_id, &filter)
            .await?;
        let next = if events.len() as u64 > limit {
            events.truncate(limit as usize);
            events.last().map(|e| e.id.clone())
        } else {
            None
        };
        Ok((events, next))
    }

    /// Follows the tenant's events as they are recorded: those after event `after` (named
    /// `field` in errors), or, without one, those recorded from now on. What is stored when
    /// this returns is the starting point: the stream sends nothing older.
    #[tracing::instrument(skip_all, fields(tenant_id = %caller.tenant_id))]
    pub async fn follow(
        &self,
        caller: &Caller,
        filter: StreamFilter,
        after: Option<(&str, &str)>,
    ) -> Result<Subscription, DomainError> {
        let after = after
            .map(|(field, id)| {
                Uuid::parse_str(id.trim()).map_err(|_| {
                    DomainError::BadRequest(format!("{field}: not an event id: {id:?}"))
                })
            })
            .transpose()?;
        let slot = self.open.take(&caller.tenant_id)?;
        let source = Table {
            core: self.core.clone(),
            tenant_id: caller.tenant_id.clone(),
            filter,
        };
        let mut tail = match after {
            Some(id) => Tail::at(id),
            None => Tail::at(id_floor(now_ms())),
        };
        tail.start(&source, after).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        tokio::spawn(pump(
            source,
            tail,
            tx,
            lagged.clone(),
            self.core.shutdown.clone(),
            PACE,
        ));
        Ok(Subscription {
            rx,
            lagged,
            ended: false,
            _slot: slot,
        })
    }
}

/// Where a stream reads: the events table, or a test's rows.
trait Source: Send + Sync + 'static {
    /// Up to `limit` events with ids greater than `after`, oldest first.
    fn after(
        &self,
        after: &str,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<event::Model>, StoreError>> + Send;
}

/// A tenant's events in the store, filtered.
struct Table {
    core: Arc<Core>,
    tenant_id: String,
    filter: StreamFilter,
}

impl Source for Table {
    fn after(
        &self,
        after: &str,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<event::Model>, StoreError>> + Send {
        self.core.store.events_after(
            &self.tenant_id,
            self.filter.kind.as_deref(),
            self.filter.subject_id.as_deref(),
            after,
            limit,
        )
    }
}

/// Where a stream is: the window it reads again, and the ids in it that it has handled.
#[derive(Debug)]
struct Tail {
    /// Ids above `floor` that were sent, or passed over as older than the stream.
    seen: BTreeSet<Uuid>,
    /// The newest id seen, or where the stream started.
    newest: Uuid,
    /// Reads start after this: [`WINDOW_MS`] before `newest`, or later when more than
    /// [`MAX_SEEN`] ids fell in the window.
    floor: Uuid,
}

impl Tail {
    /// A stream at `position`: nothing at or before it is to be sent.
    fn at(position: Uuid) -> Self {
        Self {
            seen: BTreeSet::new(),
            newest: position,
            floor: id_floor(id_ms(position).saturating_sub(WINDOW_MS)),
        }
    }

    /// Reads what is stored in the window now and passes over all of it (a new stream), or
    /// what is up to `after` (a resumed one): what the stream will not send.
    async fn start<S: Source>(
        &mut self,
        source: &S,
        after: Option<Uuid>,
    ) -> Result<(), StoreError> {
        let mut from = self.floor.to_string();
        loop {
            let page = source.after(&from, PAGE).await?;
            let full = page.len() as u64 == PAGE;
            for row in page {
                let Ok(id) = Uuid::parse_str(&row.id) else {
                    from = row.id;
                    continue;
                };
                if after.is_some_and(|after| id > after) {
                    return Ok(());
                }
                self.note(id);
                from = row.id;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Whether a row read is to be sent: once per id, never at or below the floor.
    fn admit(&mut self, id: Uuid) -> bool {
        if id <= self.floor || self.seen.contains(&id) {
            return false;
        }
        self.note(id);
        true
    }

    fn note(&mut self, id: Uuid) {
        self.seen.insert(id);
        if id > self.newest {
            self.newest = id;
            let floor = id_floor(id_ms(id).saturating_sub(WINDOW_MS));
            if floor > self.floor {
                self.floor = floor;
            }
        }
        while let Some(&oldest) = self.seen.first()
            && (oldest <= self.floor || self.seen.len() > MAX_SEEN)
        {
            self.seen.pop_first();
            if oldest > self.floor {
                self.floor = oldest;
            }
        }
    }
}

/// Reads the source every [`POLL`] and queues each new event for the reader, until the
/// reader leaves, lags, or the server stops.
async fn pump<S: Source>(
    source: S,
    mut tail: Tail,
    tx: mpsc::Sender<event::Model>,
    lagged: Arc<AtomicBool>,
    shutdown: CancellationToken,
    pace: Pace,
) {
    loop {
        let mut from = tail.floor.to_string();
        loop {
            let page = tokio::select! {
                page = source.after(&from, PAGE) => page,
                () = tx.closed() => return,
                () = shutdown.cancelled() => return,
            };
            let page = match page {
                Ok(page) => page,
                Err(err) => {
                    // Tried again at the next poll; the reader only waits longer.
                    tracing::warn!(error = %err, "event stream: reading events failed");
                    break;
                }
            };
            let full = page.len() as u64 == PAGE;
            for row in page {
                from.clone_from(&row.id);
                let Ok(id) = Uuid::parse_str(&row.id) else {
                    tracing::warn!(event_id = %row.id, "event stream: an event id is not a UUID; not sent");
                    continue;
                };
                if !tail.admit(id) {
                    continue;
                }
                let room = tokio::select! {
                    room = tokio::time::timeout(pace.lag_grace, tx.reserve()) => room,
                    () = shutdown.cancelled() => return,
                };
                match room {
                    Ok(Ok(permit)) => permit.send(row),
                    // The reader left.
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::info!(
                            queued = QUEUE,
                            "event stream: the reader left its queue full for {:?}; ending it with `lagged`",
                            pace.lag_grace
                        );
                        lagged.store(true, Ordering::Release);
                        return;
                    }
                }
            }
            if !full {
                break;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pace.poll) => {}
            () = tx.closed() => return,
            () = shutdown.cancelled() => return,
        }
    }
}

/// The milliseconds since the epoch a UUIDv7 carries.
fn id_ms(id: Uuid) -> u64 {
    // The top 48 bits; the shift leaves nothing above them.
    u64::try_from(id.as_u128() >> 80).unwrap_or(u64::MAX)
}

/// An id below every UUIDv7 made at `ms` or later, and above every one made before (its
/// version and random bits are zero, so no event has it).
fn id_floor(ms: u64) -> Uuid {
    Uuid::from_u128(u128::from(ms & 0xFFFF_FFFF_FFFF) << 80)
}

fn now_ms() -> u64 {
    u64::try_from(outpost_store::now().timestamp_millis()).unwrap_or(0)
}

/// Streams open on this node, by tenant.
#[derive(Default)]
struct OpenStreams {
    by_tenant: Mutex<HashMap<String, usize>>,
}

impl OpenStreams {
    /// A place for one more of the tenant's streams, or 429 when it has [`MAX_STREAMS`].
    fn take(self: &Arc<Self>, tenant_id: &str) -> Result<Slot, DomainError> {
        let mut open = self
            .by_tenant
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(tenant_id.to_owned()).or_default();
        if *count >= MAX_STREAMS {
            return Err(DomainError::RateLimited {
                message: format!(
                    "too many event streams: a tenant may follow at most {MAX_STREAMS} at once \
                     on each server node; close one first"
                ),
                // Streams last long: there is no telling when one closes.
                retry_after_s: 5,
            });
        }
        *count += 1;
        Ok(Slot {
            open: self.clone(),
            tenant_id: tenant_id.to_owned(),
        })
    }
}

/// One stream's place among its tenant's; given back when dropped.
struct Slot {
    open: Arc<OpenStreams>,
    tenant_id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .by_tenant
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.tenant_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.tenant_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::Utc;
    use serde_json::json;

    /// Rows a test commits when it likes, in any order of id.
    #[derive(Clone, Default)]
    struct Rows(Arc<Mutex<Vec<event::Model>>>);

    impl Rows {
        fn commit(&self, id: Uuid) {
            let mut rows = self.0.lock().expect("rows");
            rows.push(event::Model {
                id: id.to_string(),
                tenant_id: "t".into(),
                kind: "schedule.missed".into(),
                subject_type: "schedule".into(),
                subject_id: "s".into(),
                subject_name: "s".into(),
                summary: String::new(),
                at: Utc::now(),
                detail: json!({}),
                dedup_key: None,
            });
            rows.sort_by(|a, b| a.id.cmp(&b.id));
        }
    }

    impl Source for Rows {
        fn after(
            &self,
            after: &str,
            limit: u64,
        ) -> impl Future<Output = Result<Vec<event::Model>, StoreError>> + Send {
            let rows = self.0.lock().expect("rows");
            let page: Vec<_> = rows
                .iter()
                .filter(|r| r.id.as_str() > after)
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .cloned()
                .collect();
            std::future::ready(Ok(page))
        }
    }

    /// An id made at `ms` (the `n`th of that millisecond).
    fn id(ms: u64, n: u16) -> Uuid {
        Uuid::from_u128((u128::from(ms) << 80) | (0x7 << 76) | u128::from(n))
    }

    const T0: u64 = 1_780_000_000_000;

    /// Fast, so that a test waits milliseconds for what takes seconds.
    const FAST: Pace = Pace {
        poll: Duration::from_millis(5),
        lag_grace: Duration::from_millis(300),
    };

    async fn started(rows: &Rows, after: Option<Uuid>) -> (Subscription, Arc<OpenStreams>) {
        let mut tail = Tail::at(after.unwrap_or(id_floor(T0)));
        tail.start(rows, after).await.expect("start");
        let (tx, rx) = mpsc::channel(QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        tokio::spawn(pump(
            rows.clone(),
            tail,
            tx,
            lagged.clone(),
            CancellationToken::new(),
            FAST,
        ));
        let open = Arc::new(OpenStreams::default());
        let slot = open.take("t").expect("slot");
        let sub = Subscription {
            rx,
            lagged,
            ended: false,
            _slot: slot,
        };
        (sub, open)
    }

    async fn next_id(sub: &mut Subscription) -> Uuid {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(Item::Event(e))) => Uuid::parse_str(&e.id).expect("id"),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn an_id_floor_sits_between_milliseconds() {
        assert_eq!(id_ms(id(T0, 5)), T0);
        assert!(id_floor(T0) < id(T0, 0));
        assert!(id_floor(T0) > id(T0 - 1, u16::MAX));
        assert_eq!(id_ms(id_floor(T0)), T0);
        // The string order the database uses is the same.
        assert!(id_floor(T0).to_string() < id(T0, 0).to_string());
    }

    #[tokio::test]
    async fn a_late_commit_in_the_window_is_sent_once_and_nothing_twice() {
        let rows = Rows::default();
        // Stored before the stream: never sent.
        rows.commit(id(T0 - 2_000, 1));
        let (mut sub, _open) = started(&rows, None).await;
        rows.commit(id(T0 + 100, 1));
        rows.commit(id(T0 + 300, 1));
        assert_eq!(next_id(&mut sub).await, id(T0 + 100, 1));
        assert_eq!(next_id(&mut sub).await, id(T0 + 300, 1));
        // Committed after T0+300 was sent, with an earlier id (another node, a long
        // transaction): still in the window, so sent, once.
        rows.commit(id(T0 + 200, 1));
        assert_eq!(next_id(&mut sub).await, id(T0 + 200, 1));
        rows.commit(id(T0 + 400, 1));
        assert_eq!(next_id(&mut sub).await, id(T0 + 400, 1));
        // Beyond the window: not sent (GET /api/events lists it).
        rows.commit(id(T0 + 20_000, 1));
        assert_eq!(next_id(&mut sub).await, id(T0 + 20_000, 1));
        rows.commit(id(T0 + 5_000, 1));
        rows.commit(id(T0 + 20_001, 1));
        assert_eq!(next_id(&mut sub).await, id(T0 + 20_001, 1));
        // Many polls later, nothing comes again.
        tokio::time::sleep(FAST.poll * 10).await;
        assert!(sub.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_resumed_stream_sends_only_what_follows_its_id() {
        let rows = Rows::default();
        for n in 1..=4 {
            rows.commit(id(T0 + n * 10, 0));
        }
        let (mut sub, _open) = started(&rows, Some(id(T0 + 20, 0))).await;
        assert_eq!(next_id(&mut sub).await, id(T0 + 30, 0));
        assert_eq!(next_id(&mut sub).await, id(T0 + 40, 0));
        // Committed after the resume, before its id: the previous stream never sent it.
        rows.commit(id(T0 + 15, 0));
        assert_eq!(next_id(&mut sub).await, id(T0 + 15, 0));
        tokio::time::sleep(FAST.poll * 10).await;
        assert!(sub.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_burst_larger_than_a_page_comes_whole_and_in_order() {
        let rows = Rows::default();
        let (mut sub, _open) = started(&rows, None).await;
        let burst: Vec<Uuid> = (0..600).map(|n| id(T0 + 1 + n / 7, n as u16)).collect();
        for id in &burst {
            rows.commit(*id);
        }
        for want in &burst {
            assert_eq!(next_id(&mut sub).await, *want);
        }
    }

    #[test]
    fn the_window_keeps_at_most_max_seen_ids() {
        let mut tail = Tail::at(id_floor(T0));
        for n in 0..(MAX_SEEN as u16 * 2) {
            assert!(tail.admit(id(T0 + 1, n)));
        }
        assert_eq!(tail.seen.len(), MAX_SEEN);
        // The floor rose to the oldest forgotten: those are never sent again.
        assert!(!tail.admit(id(T0 + 1, 0)));
        assert!(!tail.admit(id(T0 + 1, MAX_SEEN as u16 * 2 - 1)));
    }

    #[tokio::test]
    async fn a_reader_that_takes_nothing_gets_lagged_and_the_end() {
        let rows = Rows::default();
        let (mut sub, _open) = started(&rows, None).await;
        for n in 0..(QUEUE as u16 + 10) {
            rows.commit(id(T0 + 1, n));
        }
        // The pump fills the queue, then waits for room; nobody reads for the grace.
        tokio::time::sleep(FAST.lag_grace * 3).await;
        // What was queued still comes, in order, then `lagged`, then nothing.
        for n in 0..QUEUE as u16 {
            assert_eq!(next_id(&mut sub).await, id(T0 + 1, n));
        }
        assert!(matches!(sub.next().await, Some(Item::Lagged)));
        assert!(sub.next().await.is_none());
    }

    #[test]
    fn a_tenant_may_hold_max_streams_and_a_closed_one_frees_its_place() {
        let open = Arc::new(OpenStreams::default());
        let mut held: Vec<Slot> = (0..MAX_STREAMS)
            .map(|_| open.take("a").expect("slot"))
            .collect();
        let refused = open.take("a").err().expect("refused");
        assert!(matches!(refused, DomainError::RateLimited { .. }));
        assert!(refused.to_string().contains("32"), "{refused}");
        // Another tenant is not affected.
        drop(open.take("b").expect("another tenant"));
        held.pop();
        held.push(open.take("a").expect("a place freed"));
        drop(held);
        assert!(open.by_tenant.lock().expect("map").is_empty());
    }
}
