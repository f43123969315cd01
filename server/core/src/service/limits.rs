//! Rate limits (CONTRACT.md §9): how many requests a caller, a client address or an email may make in
//! a minute, and who the client is behind trusted proxies.
//!
//! Three limits, each answered `429 rate_limited` with `Retry-After` (whole seconds):
//! - **per caller** on every `/api` route that authenticates (`--rate-limit`, default 1,200 a
//!   minute, 0 = off): [`super::access::Access::authenticate`] charges the authenticated
//!   caller (its [`Caller::rate_key`]), so a route that takes a `Caller` cannot skip it;
//! - **per client address, for requests that fail authentication** (the same number): every
//!   refused token is charged to its address, and once the address is over, its requests are
//!   refused before their token is even looked up, so keys cannot be guessed faster than that
//!   (also not by a valid key's holder behind the same address: see OPERATIONS.md);
//! - **sign-in attempts** ([`Limits::auth_attempt`], 10 a minute per client address and per
//!   email): the login, refresh, register, accept-invite and password-reset handlers must call
//!   it first thing, before reading any account.
//!
//! Each limit is a GCRA (generic cell rate algorithm, the "virtual scheduling" form of a token
//! bucket): one instant per key, the theoretical arrival time of its next request. N a minute
//! allows a burst of N, then one request every 60/N seconds. A key whose instant has passed
//! is indistinguishable from a key never seen, so forgetting it loses nothing: that is how
//! memory stays bounded. Each limiter holds at most [`MAX_KEYS`] keys (as 64-bit keyed
//! hashes, not the keys themselves: an email can be long); when a shard is full, its idle keys
//! are dropped, and if that is not enough (a flood of distinct addresses or emails within one
//! minute) the quarter of its keys nearest to idle is dropped, which can only give those keys
//! back part of their allowance early. New keys are never refused for want of room.
//!
//! State is per process: behind a load balancer each node counts for itself (OPERATIONS.md,
//! "Rate limits"). The clock is injected ([`Limits::with_clock`]) so tests need not wait.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::forwarded::TrustedProxies;
use outpost_store::domain::{Caller, DomainError};

/// Sign-in attempts a minute, per client address and per email (CONTRACT.md §9).
pub const AUTH_ATTEMPTS_PER_MINUTE: u32 = 10;

/// Password reset requests and confirmations a minute, per client address and per email:
/// one bucket for both routes (CONTRACT.md §18).
pub const RESETS_PER_MINUTE: u32 = 5;

/// Verification codes a user may have mailed a minute (CONTRACT.md §18).
pub const RESENDS_PER_MINUTE: u32 = 3;

/// Default `--rate-limit`: requests a minute per caller on `/api`.
pub const DEFAULT_PER_MINUTE: u32 = 1_200;

/// Keys one limiter remembers at most (about 40 bytes each).
pub const MAX_KEYS: usize = 65_536;

/// Independent locks per limiter, so that requests seldom wait on each other.
const SHARDS: usize = 16;

const MINUTE: Duration = Duration::from_secs(60);

/// One GCRA limit over many keys.
pub struct Limiter {
    /// Time one request uses up: a minute divided by the limit.
    interval: Duration,
    /// How far ahead a key's next arrival time may run: the burst (a minute).
    window: Duration,
    shards: Box<[Mutex<HashMap<u64, Instant>>]>,
    shard_cap: usize,
    /// Keys are stored as their hash under a key chosen at random per process, so a client
    /// cannot craft colliding keys.
    hasher: RandomState,
}

impl Limiter {
    /// `per_minute` requests a minute (at least 1), remembering at most `max_keys` keys.
    pub fn new(per_minute: u32, max_keys: usize) -> Self {
        let per_minute = per_minute.max(1);
        let interval = MINUTE / per_minute;
        Self {
            interval,
            window: interval * per_minute,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_cap: (max_keys / SHARDS).max(4),
            hasher: RandomState::new(),
        }
    }

    fn slot(&self, key: &(impl Hash + ?Sized)) -> (u64, &Mutex<HashMap<u64, Instant>>) {
        let digest = self.hasher.hash_one(key);
        (digest, &self.shards[(digest % SHARDS as u64) as usize])
    }

    /// Counts a request of `key` at `now`; `Err(wait)` if it is over the limit (then nothing
    /// is counted: a refused request does not push the key's next allowance further away).
    pub fn check(&self, key: &(impl Hash + ?Sized), now: Instant) -> Result<(), Duration> {
        let (digest, shard) = self.slot(key);
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let next = self.next(map.get(&digest).copied(), now)?;
        if map.len() >= self.shard_cap && !map.contains_key(&digest) {
            make_room(&mut map, now, self.shard_cap);
        }
        map.insert(digest, next);
        Ok(())
    }

    /// Whether a request of `key` at `now` would be refused, without counting it.
    pub fn peek(&self, key: &(impl Hash + ?Sized), now: Instant) -> Result<(), Duration> {
        let (digest, shard) = self.slot(key);
        let map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        self.next(map.get(&digest).copied(), now).map(|_| ())
    }

    /// The key's arrival time after one more request, or how long until one is allowed.
    fn next(&self, stored: Option<Instant>, now: Instant) -> Result<Instant, Duration> {
        let next = stored.map_or(now, |t| t.max(now)) + self.interval;
        match next.checked_sub(self.window) {
            Some(allowed_at) if allowed_at > now => Err(allowed_at - now),
            _ => Ok(next),
        }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Frees a full shard: idle keys first (losing nothing), then, if it is still full, the
/// quarter nearest to idle.
fn make_room(map: &mut HashMap<u64, Instant>, now: Instant, cap: usize) {
    map.retain(|_, next| *next > now);
    if map.len() < cap {
        return;
    }
    let mut times: Vec<Instant> = map.values().copied().collect();
    let cut = times.len() / 4;
    let (_, threshold, _) = times.select_nth_unstable(cut);
    let threshold = *threshold;
    map.retain(|_, next| *next > threshold);
}

/// The whole seconds of `Retry-After`: rounded up, at least 1.
fn whole_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// An address as the limits count it: IPv4, or the /64 of an IPv6 address (one host usually
/// holds a whole /64, so single IPv6 addresses would let it count afresh at will).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Every rate limit of the server and its trusted proxies. Cheap to clone.
#[derive(Clone)]
pub struct Limits {
    inner: Arc<Inner>,
}

struct Inner {
    proxies: TrustedProxies,
    /// `--rate-limit`, 0 = off.
    per_minute: u32,
    callers: Option<Limiter>,
    failures: Option<Limiter>,
    attempts_by_address: Limiter,
    attempts_by_email: Limiter,
    resets_by_address: Limiter,
    resets_by_email: Limiter,
    resends: Limiter,
    clock: Clock,
}

impl Limits {
    /// `per_minute` requests a minute per caller on `/api` (0: no limit), and the proxies whose
    /// `X-Forwarded-For` counts.
    pub fn new(per_minute: u32, proxies: TrustedProxies) -> Self {
        Self::with_clock(per_minute, proxies, Arc::new(Instant::now))
    }

    /// The same, reading the time from `clock` (tests).
    pub fn with_clock(per_minute: u32, proxies: TrustedProxies, clock: Clock) -> Self {
        let limiter = || (per_minute > 0).then(|| Limiter::new(per_minute, MAX_KEYS));
        Self {
            inner: Arc::new(Inner {
                proxies,
                per_minute,
                callers: limiter(),
                failures: limiter(),
                attempts_by_address: Limiter::new(AUTH_ATTEMPTS_PER_MINUTE, MAX_KEYS),
                attempts_by_email: Limiter::new(AUTH_ATTEMPTS_PER_MINUTE, MAX_KEYS),
                resets_by_address: Limiter::new(RESETS_PER_MINUTE, MAX_KEYS),
                resets_by_email: Limiter::new(RESETS_PER_MINUTE, MAX_KEYS),
                resends: Limiter::new(RESENDS_PER_MINUTE, MAX_KEYS),
                clock,
            }),
        }
    }

    /// The client of a request that came from `peer` with these `X-Forwarded-For` values
    /// (see [`crate::forwarded`]): the peer, unless it is a trusted proxy.
    pub fn client_address(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        self.inner.proxies.client(peer, forwarded_for)
    }

    /// Refuses a request from `client` before its token is looked up when that address is
    /// over its allowance of failed authentications.
    pub fn before_authentication(&self, client: IpAddr) -> Result<(), DomainError> {
        let Some(failures) = &self.inner.failures else {
            return Ok(());
        };
        failures
            .peek(&address_key(client), (self.inner.clock)())
            .map_err(|wait| self.failures_refusal(wait))
    }

    /// Counts a failed authentication from `client`; the error to answer with: `why`, or
    /// `rate_limited` once the address is over its allowance.
    pub fn failed_authentication(&self, client: IpAddr, why: DomainError) -> DomainError {
        let Some(failures) = &self.inner.failures else {
            return why;
        };
        match failures.check(&address_key(client), (self.inner.clock)()) {
            Ok(()) => why,
            Err(wait) => self.failures_refusal(wait),
        }
    }

    fn failures_refusal(&self, wait: Duration) -> DomainError {
        refused(
            "api_address",
            format!(
                "rate limit: at most {} requests a minute that fail authentication per client \
                 address (--rate-limit)",
                self.inner.per_minute
            ),
            wait,
        )
    }

    /// Counts a request of an authenticated caller on `/api`; `rate_limited` past
    /// `--rate-limit` a minute.
    pub fn call(&self, caller: &Caller) -> Result<(), DomainError> {
        let Some(callers) = &self.inner.callers else {
            return Ok(());
        };
        callers
            .check(caller.rate_key().as_str(), (self.inner.clock)())
            .map_err(|wait| {
                refused(
                    "api",
                    format!(
                        "rate limit: at most {} requests a minute per caller (--rate-limit)",
                        self.inner.per_minute
                    ),
                    wait,
                )
            })
    }

    /// Counts a sign-in attempt (login, refresh, register, accept-invite, password reset) from
    /// `client` for `email` (if the route takes one; compared lower-cased); `rate_limited` past
    /// [`AUTH_ATTEMPTS_PER_MINUTE`] a minute for either.
    ///
    /// Those handlers call this **first thing**, before reading any account, so that an
    /// attempt costs the same whether or not the account exists. The address is counted first:
    /// an attempt refused for its address does not count against the email (a client cannot
    /// lock an account out faster than its own allowance), while one refused for the email
    /// still counts against the address (spraying a locked account costs the sprayer).
    pub fn auth_attempt(&self, client: IpAddr, email: Option<&str>) -> Result<(), DomainError> {
        let now = (self.inner.clock)();
        self.inner
            .attempts_by_address
            .check(&address_key(client), now)
            .map_err(|wait| {
                refused(
                    "auth_address",
                    format!(
                        "rate limit: at most {AUTH_ATTEMPTS_PER_MINUTE} sign-in attempts a minute \
                         per client address"
                    ),
                    wait,
                )
            })?;
        if let Some(email) = email {
            let email = email.trim().to_lowercase();
            self.inner
                .attempts_by_email
                .check(email.as_str(), now)
                .map_err(|wait| {
                    refused(
                        "auth_email",
                        format!(
                            "rate limit: at most {AUTH_ATTEMPTS_PER_MINUTE} sign-in attempts a \
                             minute per email address"
                        ),
                        wait,
                    )
                })?;
        }
        Ok(())
    }
}

impl Limits {
    /// Counts a password reset request or confirmation from `client` (first thing, as
    /// [`Limits::auth_attempt`]), and for `email` when it is known: a request names it, a
    /// confirmation learns it from its token. `rate_limited` past [`RESETS_PER_MINUTE`] a
    /// minute for either.
    pub fn reset_attempt(&self, client: IpAddr, email: Option<&str>) -> Result<(), DomainError> {
        let now = (self.inner.clock)();
        self.inner
            .resets_by_address
            .check(&address_key(client), now)
            .map_err(|wait| {
                refused(
                    "reset_address",
                    format!(
                        "rate limit: at most {RESETS_PER_MINUTE} password resets a minute per \
                         client address"
                    ),
                    wait,
                )
            })?;
        if let Some(email) = email {
            self.reset_attempt_for(email)?;
        }
        Ok(())
    }

    /// Counts a password reset for `email` alone (a confirmation, once its token named it).
    pub fn reset_attempt_for(&self, email: &str) -> Result<(), DomainError> {
        let email = email.trim().to_lowercase();
        self.inner
            .resets_by_email
            .check(email.as_str(), (self.inner.clock)())
            .map_err(|wait| {
                refused(
                    "reset_email",
                    format!(
                        "rate limit: at most {RESETS_PER_MINUTE} password resets a minute per \
                         email address"
                    ),
                    wait,
                )
            })
    }

    /// Counts a verification code mailed to `user_id`; `rate_limited` past
    /// [`RESENDS_PER_MINUTE`] a minute.
    pub fn resend_attempt(&self, user_id: &str) -> Result<(), DomainError> {
        self.inner
            .resends
            .check(user_id, (self.inner.clock)())
            .map_err(|wait| {
                refused(
                    "verify_resend",
                    format!("rate limit: at most {RESENDS_PER_MINUTE} verification codes a minute"),
                    wait,
                )
            })
    }
}

/// A refusal by the limit called `limit` (the metric's label), counted.
fn refused(limit: &'static str, message: String, wait: Duration) -> DomainError {
    outpost_store::metrics::rate_limited(limit);
    let retry_after_s = whole_seconds(wait);
    DomainError::RateLimited {
        message: format!("{message}; try again in {retry_after_s} s"),
        retry_after_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_store::domain::Role;

    /// A clock the test moves by hand.
    #[derive(Clone)]
    struct TestClock(Arc<Mutex<Instant>>);

    impl TestClock {
        fn new() -> Self {
            Self(Arc::new(Mutex::new(Instant::now())))
        }
        fn now(&self) -> Instant {
            *self.0.lock().expect("clock")
        }
        fn advance(&self, by: Duration) {
            *self.0.lock().expect("clock") += by;
        }
        fn clock(&self) -> Clock {
            let this = self.clone();
            Arc::new(move || this.now())
        }
    }

    fn caller(key: &str) -> Caller {
        Caller {
            tenant_id: "t".into(),
            principal: outpost_store::domain::Principal::ApiKey {
                key_id: key.into(),
                owner: None,
            },
            role: Role::Owner,
            scopes: outpost_store::domain::Scopes::ALL,
            label: key.into(),
            address: None,
        }
    }

    fn retry_after(result: Result<(), DomainError>) -> u64 {
        match result {
            Err(DomainError::RateLimited { retry_after_s, .. }) => retry_after_s,
            other => panic!("expected rate_limited, got {other:?}"),
        }
    }

    #[test]
    fn a_burst_of_n_then_one_every_period_over_n() {
        let clock = TestClock::new();
        let limiter = Limiter::new(5, 1024);
        let t0 = clock.now();
        for i in 0..5 {
            assert_eq!(limiter.check("k", t0), Ok(()), "request {i}");
        }
        assert_eq!(limiter.check("k", t0), Err(Duration::from_secs(12)));
        // A refusal is not counted: the wait does not grow.
        assert_eq!(limiter.check("k", t0), Err(Duration::from_secs(12)));
        assert_eq!(
            limiter.check("k", t0 + Duration::from_secs(5)),
            Err(Duration::from_secs(7))
        );
        assert!(limiter.peek("k", t0 + Duration::from_secs(12)).is_ok());
        assert!(limiter.check("k", t0 + Duration::from_secs(12)).is_ok());
        assert!(limiter.check("k", t0 + Duration::from_secs(12)).is_err());
        // Other keys are unaffected.
        assert!(limiter.check("other", t0).is_ok());
        // After a quiet minute the whole burst is back.
        let later = t0 + Duration::from_secs(72);
        for _ in 0..5 {
            assert!(limiter.check("k", later).is_ok());
        }
        assert!(limiter.check("k", later).is_err());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_distinct_keys() {
        let clock = TestClock::new();
        let limiter = Limiter::new(10, 1024);
        // A flood within one instant: nothing is idle, yet the table never outgrows its cap...
        for i in 0..100_000u32 {
            assert!(
                limiter.check(&i, clock.now()).is_ok(),
                "a new key is never refused"
            );
            clock.advance(Duration::from_micros(1));
        }
        assert!(limiter.len() <= 1024, "{} keys", limiter.len());
        // ...and a key being limited right now survives it (the flood's keys are nearer to
        // idle than one that used its whole burst).
        let busy = "busy";
        for _ in 0..10 {
            limiter.check(busy, clock.now()).expect("burst");
        }
        for i in 100_000..200_000u32 {
            limiter.check(&i, clock.now()).expect("flood");
        }
        assert!(limiter.check(busy, clock.now()).is_err());
        assert!(limiter.len() <= 1024);
    }

    #[test]
    fn idle_keys_are_forgotten_when_room_is_needed() {
        let clock = TestClock::new();
        let limiter = Limiter::new(60, 1024);
        for i in 0..20_000u32 {
            limiter.check(&i, clock.now()).expect("fresh");
        }
        assert!(limiter.len() <= 1024);
        // One request at 60 a minute is idle a second later.
        clock.advance(Duration::from_secs(2));
        for i in 100_000..100_256u32 {
            limiter.check(&i, clock.now()).expect("fresh");
        }
        // The idle keys made room, and none of the new keys had to go: each has 59 more.
        assert!(limiter.len() <= 1024, "{} keys", limiter.len());
        for i in 100_000..100_256u32 {
            for _ in 0..59 {
                limiter.check(&i, clock.now()).expect("within the burst");
            }
            assert!(limiter.check(&i, clock.now()).is_err(), "key {i} forgotten");
        }
    }

    #[test]
    fn a_full_shard_drops_idle_keys_first_then_those_nearest_to_idle() {
        let now = Instant::now();
        let at = |s: u64| now + Duration::from_secs(s);
        // Six idle (their time has passed), two busy: only the idle go.
        let mut map: HashMap<u64, Instant> = (0..6).map(|k| (k, now)).collect();
        map.insert(10, at(30));
        map.insert(11, at(50));
        make_room(&mut map, now, 8);
        assert_eq!(map.len(), 2);
        // None idle: the quarter nearest to idle (and ties) go, the busiest stay.
        let mut map: HashMap<u64, Instant> = (1..=8).map(|k| (k, at(k))).collect();
        make_room(&mut map, now, 8);
        let mut left: Vec<u64> = map.keys().copied().collect();
        left.sort_unstable();
        assert_eq!(left, vec![4, 5, 6, 7, 8]);
    }

    #[test]
    fn per_caller_limit_with_retry_after_and_off_at_zero() {
        let clock = TestClock::new();
        let limits = Limits::with_clock(5, TrustedProxies::default(), clock.clock());
        let (a, b) = (caller("a"), caller("b"));
        for _ in 0..5 {
            limits.call(&a).expect("within the limit");
        }
        let err = limits.call(&a).expect_err("the 6th");
        assert_eq!(err.code(), "rate_limited");
        assert!(
            err.to_string().contains("at most 5 requests a minute"),
            "{err}"
        );
        assert_eq!(retry_after(Err(err)), 12);
        limits.call(&b).expect("another caller is unaffected");
        clock.advance(Duration::from_millis(11_500));
        assert_eq!(
            retry_after(limits.call(&a)),
            1,
            "rounded up to a whole second"
        );
        clock.advance(Duration::from_millis(500));
        limits.call(&a).expect("one more after 12 s");

        let off = Limits::with_clock(0, TrustedProxies::default(), clock.clock());
        for _ in 0..10_000 {
            off.call(&a).expect("no limit");
            assert!(
                off.before_authentication("1.2.3.4".parse().expect("ip"))
                    .is_ok()
            );
        }
    }

    #[test]
    fn failed_authentications_are_limited_per_address() {
        let clock = TestClock::new();
        let limits = Limits::with_clock(3, TrustedProxies::default(), clock.clock());
        let guesser: IpAddr = "198.51.100.7".parse().expect("ip");
        let other: IpAddr = "198.51.100.8".parse().expect("ip");
        let unauthorized = || DomainError::Unauthorized("unknown API key".into());
        for _ in 0..3 {
            limits.before_authentication(guesser).expect("not yet");
            let err = limits.failed_authentication(guesser, unauthorized());
            assert_eq!(err.code(), "unauthorized");
        }
        // Over: refused before the token is looked at.
        assert_eq!(retry_after(limits.before_authentication(guesser)), 20);
        assert!(limits.before_authentication(other).is_ok());
        // One IPv6 host's /64 is one address.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        for _ in 0..3 {
            limits.failed_authentication(v6a, unauthorized());
        }
        assert!(limits.before_authentication(v6b).is_err());
        assert!(
            limits
                .before_authentication("2001:db8:1:3::1".parse().expect("ip"))
                .is_ok()
        );
        clock.advance(Duration::from_secs(20));
        assert!(limits.before_authentication(guesser).is_ok());
    }

    #[test]
    fn sign_in_attempts_per_address_and_per_email() {
        let clock = TestClock::new();
        let limits = Limits::with_clock(1_200, TrustedProxies::default(), clock.clock());
        let ip = |n: u8| IpAddr::from([203, 0, 113, n]);
        // Ten from one address, then refused, whatever the email.
        for i in 0..10 {
            limits
                .auth_attempt(ip(1), Some(&format!("user{i}@example.com")))
                .expect("within ten");
        }
        let err = limits
            .auth_attempt(ip(1), Some("new@example.com"))
            .expect_err("the 11th from one address");
        assert!(err.to_string().contains("per client address"), "{err}");
        assert_eq!(retry_after(Err(err)), 6);
        // That refusal did not count against new@: ten from elsewhere still pass.
        for n in 0..10 {
            limits
                .auth_attempt(ip(100 + n), Some("New@Example.com "))
                .expect("ten for one email");
        }
        // The 11th for one email (any case), from a fresh address: refused.
        let err = limits
            .auth_attempt(ip(200), Some("NEW@example.COM"))
            .expect_err("the 11th for one email");
        assert!(err.to_string().contains("per email"), "{err}");
        // Refresh and accept-invite carry no email: the address alone counts.
        for _ in 0..9 {
            limits
                .auth_attempt(ip(200), None)
                .expect("address allowance");
        }
        assert!(limits.auth_attempt(ip(200), None).is_err());
        // The limit holds even with --rate-limit 0.
        let off = Limits::with_clock(0, TrustedProxies::default(), clock.clock());
        for _ in 0..10 {
            off.auth_attempt(ip(9), None).expect("ten");
        }
        assert!(off.auth_attempt(ip(9), None).is_err());
        // A minute later everything is allowed again.
        clock.advance(MINUTE);
        limits
            .auth_attempt(ip(1), Some("new@example.com"))
            .expect("a minute later");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(6)), 6);
        assert_eq!(whole_seconds(Duration::from_millis(6_001)), 7);
    }
}
