//! The default limiter: GCRA on `governor`, over a state store of ours
//! that keeps one atomic theoretical arrival time (TAT) per subject (a key's
//! lineage or an owner) and limit name in a `dashmap`, with idle subjects
//! evicted so memory follows the keys in use, not all keys ever seen.
//!
//! GCRA in one paragraph: every request costs one emission interval `T`
//! (`window / requests`); the TAT is when the key's budget would be back
//! to where it was had it made no request. A request at `now` fits when
//! `TAT - now <= T × (burst - 1)`, and moves the TAT to `max(TAT, now) + T`.
//! A refund moves it back by `T`. Once `TAT <= now` the budget is full and
//! the entry carries no information.
//!
//! `governor` decides (its `Quota` holds `T` and the burst, its `NotUntil`
//! says when a refused request would fit), over a `StateStore` of ours; this
//! file keeps the state: which TAT belongs to which (subject, limit),
//! created atomically, carried over a change of the limit's numbers, given
//! back on a refund and evicted when idle.

use std::cell::Cell as Slot;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use governor::Quota;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};

use super::{Holder, RateLimitStatus, RateLimiter, Subject};
use crate::bounded::SweepSchedule;
use crate::{Clock, Error, RateLimit, Result, SystemClock};

/// One budget of a subject: one named limit.
#[derive(Debug)]
struct Cell {
    /// The limit the cell was sized by (its name says which of the
    /// subject's cells this is); another size resizes it.
    limit: RateLimit,
    /// `limit` as `governor` reads it: `T` and the burst.
    quota: Quota,
    /// Theoretical arrival time, clock nanoseconds since the Unix epoch.
    tat: AtomicU64,
}

/// In-process GCRA rate limiter keyed by [`Subject`] (the engine passes the
/// key's lineage, so a rotated credential keeps its budget, or its owner)
/// and limit name; each subject has one budget per named limit of its
/// policy.
///
/// Each check is a `governor::RateLimiter` for the limit's [`Quota`] over
/// the budget's TAT, at the instant the engine read from its [`Clock`].
///
/// The first request of a subject and every later one decide against the
/// same cell: the cell is created, resized or replaced under the map's entry
/// lock, and every check runs under the map's guard, so concurrent first
/// requests (or requests racing an eviction) cannot each get a full budget.
/// A limit whose numbers change (a policy update) keeps the requests its
/// budget had counted and not yet refilled.
///
/// Memory is bounded by the keys active within their own refill time: once
/// a key's budget has fully refilled its entry carries no information and is
/// evicted (sweeps run when the map has doubled since the last one, so their
/// cost is amortised over the insertions).
#[derive(Debug)]
pub struct GcraRateLimiter {
    /// Only for eviction: checks run at the `now` they are given.
    clock: Arc<dyn Clock>,
    /// Each subject's cells, one per limit name (a policy has a handful).
    cells: DashMap<Holder, Vec<Cell>, foldhash::fast::RandomState>,
    sweeps: SweepSchedule,
}

impl Default for GcraRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl GcraRateLimiter {
    /// A limiter on the system clock.
    #[must_use]
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A limiter on `clock`.
    #[must_use]
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self { clock, cells: DashMap::default(), sweeps: SweepSchedule::default() }
    }

    /// How many subjects (key lineages and owners) currently hold a limiter.
    #[must_use]
    pub fn tracked_keys(&self) -> usize {
        self.cells.len()
    }

    /// Drops the limiters idle long enough to have a full budget.
    pub fn evict_idle(&self) {
        let now = self.clock.unix_nanos();
        self.cells.retain(|_, cells| {
            cells.retain(|cell| cell.tat.load(Ordering::Acquire) > now);
            !cells.is_empty()
        });
    }

    /// Counts one request: the whole check is in process, so both trait
    /// methods answer with this.
    fn decide(&self, subject: Subject<'_>, limit: &RateLimit, now: DateTime<Utc>) -> Result<RateLimitStatus> {
        let now = nanos(now);
        let holder = Holder::of(subject);
        // The common case checks under the map's read guard.
        if let Some(cells) = self.cells.get(&holder)
            && let Some(cell) = cells.iter().find(|cell| cell.limit == *limit)
        {
            return Ok(cell.check(now));
        }
        // First request, a new limit name or a changed limit: create or
        // resize the cell and check under the entry's write lock, so a racing
        // request waits and then counts against this same cell.
        let status = match self.cells.entry(holder) {
            MapEntry::Occupied(mut occupied) => {
                let cells = occupied.get_mut();
                let index = match cells.iter().position(|cell| cell.limit.name == limit.name) {
                    Some(index) => {
                        if cells[index].limit != *limit {
                            cells[index] = cells[index].resized(limit, now)?;
                        }
                        index
                    }
                    None => {
                        cells.push(Cell::new(limit, now)?);
                        cells.len() - 1
                    }
                };
                cells[index].check(now)
            }
            MapEntry::Vacant(vacant) => {
                let cells = vacant.insert(vec![Cell::new(limit, now)?]);
                cells[0].check(now)
            }
        };
        // Outside the entry lock: a sweep takes every shard's lock.
        self.sweeps.maybe_sweep(self.cells.len(), || {
            self.evict_idle();
            self.cells.len()
        });
        Ok(status)
    }
}

impl Cell {
    /// A full budget for `limit`, or an error when the limit cannot be
    /// enforced from `now` (clock nanos) without overflowing: zero requests
    /// or interval, or a full burst's refill past the clock's range.
    fn new(limit: &RateLimit, now: u64) -> Result<Self> {
        let invalid = || Error::invalid("rate_limit", "requests and window must be greater than zero");
        if limit.requests == 0 {
            return Err(invalid());
        }
        let interval = u64::try_from((limit.window / limit.requests).as_nanos()).unwrap_or(u64::MAX);
        let burst = NonZeroU32::new(limit.burst.unwrap_or(limit.requests))
            .or(NonZeroU32::new(limit.requests))
            .ok_or_else(invalid)?;
        let quota = Quota::with_period(Duration::from_nanos(interval)).ok_or_else(invalid)?.allow_burst(burst);
        interval
            .checked_mul(u64::from(burst.get() - 1))
            .and_then(|tolerance| now.checked_add(tolerance)?.checked_add(interval))
            .ok_or_else(|| Error::invalid("rate_limit", "the time to refill a full burst is too long"))?;
        Ok(Self { limit: limit.clone(), quota, tat: AtomicU64::new(now) })
    }

    /// What one request costs, in nanoseconds (`T`).
    fn interval(&self) -> u64 {
        u64::try_from(self.quota.replenish_interval().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A cell for `limit` that keeps the requests this one has counted and
    /// not yet refilled: changing a policy never refills a budget.
    fn resized(&self, limit: &RateLimit, now: u64) -> Result<Self> {
        let cell = Self::new(limit, now)?;
        let ahead = self.tat.load(Ordering::Acquire).saturating_sub(now);
        let used = ahead.div_ceil(self.interval());
        cell.tat.store(now.saturating_add(used.saturating_mul(cell.interval())), Ordering::Release);
        Ok(cell)
    }

    /// Counts one request made at `now` (clock nanos): `governor` decides,
    /// over this cell's TAT.
    fn check(&self, now: u64) -> RateLimitStatus {
        let state = Tat { cell: self, origin: now, left: Slot::new(now) };
        let governor: governor::RateLimiter<NotKeyed, _, _, StateInformationMiddleware> =
            governor::RateLimiter::new(self.quota, &state, Reading(Nanos::from(now)));
        let decision = governor.check();
        let limit = self.quota.burst_size().get();
        // How long until the whole burst is back: the TAT the decision left.
        let reset = Duration::from_nanos(state.left.get().saturating_sub(now));
        match decision {
            Ok(state) => RateLimitStatus {
                allowed: true,
                limit,
                remaining: state.remaining_burst_capacity(),
                reset,
                retry_after: None,
            },
            Err(not_until) => RateLimitStatus {
                allowed: false,
                limit,
                remaining: 0,
                reset,
                retry_after: Some(not_until.wait_time_from(Nanos::from(now))),
            },
        }
    }

    /// Gives back one request's cost.
    fn refund(&self) {
        let interval = self.interval();
        let _ = self.tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| Some(tat.saturating_sub(interval)));
    }
}

/// `governor`'s clock for one check: stopped at the instant the engine read
/// from its [`Clock`] for this request, so a check counts at the `now` it
/// is given.
#[derive(Debug, Clone, Copy)]
struct Reading(Nanos);

impl governor::clock::Clock for Reading {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        self.0
    }
}

/// A cell's TAT as one check's `governor::RateLimiter` reads and writes it.
///
/// `governor` counts time from when its limiter was made, the request's
/// instant (`origin`), so the TAT it sees is relative to it; one already
/// passed reads as 0 (a full budget either way).
#[derive(Debug)]
struct Tat<'a> {
    cell: &'a Cell,
    /// The check's instant, clock nanos.
    origin: u64,
    /// The TAT the decision left (clock nanos), for the `reset` figure.
    left: Slot<u64>,
}

impl StateStore for &Tat<'_> {
    type Key = NotKeyed;

    /// Runs `governor`'s decision on the TAT and stores the TAT it returns,
    /// deciding again if another request moved the TAT meanwhile.
    // Inlined into `governor`'s check (measured: ~50 instructions a check).
    #[inline]
    fn measure_and_replace<T, F, E>(&self, _: &NotKeyed, decide: F) -> std::result::Result<T, E>
    where
        F: Fn(Option<Nanos>) -> std::result::Result<(T, Nanos), E>,
    {
        let mut tat = self.cell.tat.load(Ordering::Acquire);
        loop {
            self.left.set(tat);
            let (outcome, next) = decide(Some(Nanos::from(tat.saturating_sub(self.origin))))?;
            let next = self.origin.saturating_add(next.as_u64());
            match self.cell.tat.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.left.set(next);
                    return Ok(outcome);
                }
                Err(current) => tat = current,
            }
        }
    }
}

/// Clock nanoseconds of `at` (0 before the epoch).
fn nanos(at: DateTime<Utc>) -> u64 {
    crate::clock::unix_nanos(at)
}

#[async_trait]
impl RateLimiter for GcraRateLimiter {
    async fn check(&self, subject: Subject<'_>, limit: &RateLimit, now: DateTime<Utc>) -> Result<RateLimitStatus> {
        self.decide(subject, limit, now)
    }

    fn check_ready(
        &self, subject: Subject<'_>, limit: &RateLimit, now: DateTime<Utc>,
    ) -> Option<Result<RateLimitStatus>> {
        Some(self.decide(subject, limit, now))
    }

    /// Moves the limit's TAT back by one emission interval, if its cell is
    /// still sized by `limit` (a cell resized or evicted since holds
    /// nothing of that request to give back).
    fn refund(&self, subject: Subject<'_>, limit: &RateLimit, at: DateTime<Utc>) {
        let _ = at;
        if let Some(cells) = self.cells.get(&Holder::of(subject))
            && let Some(cell) = cells.iter().find(|cell| cell.limit == *limit)
        {
            cell.refund();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bounded::MIN_SWEEP_LEN;
    use crate::{KeyId, ManualClock};

    fn limiter() -> (GcraRateLimiter, ManualClock) {
        let clock = ManualClock::new(chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(20_000));
        (GcraRateLimiter::with_clock(Arc::new(clock.clone())), clock)
    }

    fn five_per_second(burst: Option<u32>) -> RateLimit {
        RateLimit { name: "l".to_owned(), requests: 5, window: Duration::from_secs(1), burst }
    }

    #[tokio::test]
    async fn five_per_second_with_burst_allows_the_exact_sequence() {
        let (limiter, clock) = limiter();
        let key = KeyId::new();
        let limit = five_per_second(Some(10));

        // A full burst of 10 at once, remaining counting down 9..0.
        for expected_remaining in (0..10).rev() {
            let status = limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap();
            assert!(status.allowed);
            assert_eq!((status.limit, status.remaining), (10, expected_remaining));
        }
        // The 11th is refused; one cell (200 ms) must pass.
        let refused = limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(200)));

        clock.advance(Duration::from_millis(150));
        let still = limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap();
        assert_eq!(still.retry_after, Some(Duration::from_millis(50)));

        clock.advance(Duration::from_millis(50));
        let allowed = limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap();
        assert!(allowed.allowed);
        assert_eq!(allowed.remaining, 0);
        assert!(!limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap().allowed);

        // Steady state: one request per 200 ms fits forever.
        for _ in 0..20 {
            clock.advance(Duration::from_millis(200));
            assert!(limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap().allowed);
        }
        // After two idle seconds the whole burst is back.
        clock.advance(Duration::from_secs(2));
        let rested = limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap();
        assert_eq!(rested.remaining, 9);
        assert_eq!(rested.reset, Duration::from_millis(200));
    }

    #[tokio::test]
    async fn each_named_limit_of_a_subject_has_its_own_budget() {
        let (limiter, clock) = limiter();
        let key = Subject::Key(KeyId::new());
        let burst = RateLimit::new("burst", 2, Duration::from_secs(1));
        let hourly = RateLimit::new("hourly", 3, Duration::from_secs(3600));
        for _ in 0..2 {
            assert!(limiter.check(key, &burst, clock.now()).await.unwrap().allowed);
            assert!(limiter.check(key, &hourly, clock.now()).await.unwrap().allowed);
        }
        assert!(!limiter.check(key, &burst, clock.now()).await.unwrap().allowed);
        assert_eq!(limiter.check(key, &hourly, clock.now()).await.unwrap().remaining, 0);
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check(key, &burst, clock.now()).await.unwrap().allowed, "the burst refilled");
        assert!(!limiter.check(key, &hourly, clock.now()).await.unwrap().allowed, "the hourly did not");
        assert_eq!(limiter.tracked_keys(), 1, "one subject, two cells");
    }

    #[tokio::test]
    async fn an_owner_budget_is_shared_by_its_keys_and_no_one_else() {
        let (limiter, clock) = limiter();
        let limit = RateLimit::new("default", 2, Duration::from_secs(60));
        let acme = crate::Tenant::new("app", "acme");
        let other = crate::Tenant::new("app", "other");
        let owner = |tenant, owner_id| Subject::Owner { tenant, owner_id };
        assert!(limiter.check(owner(&acme, "cust_1"), &limit, clock.now()).await.unwrap().allowed);
        assert!(limiter.check(owner(&acme, "cust_1"), &limit, clock.now()).await.unwrap().allowed);
        assert!(!limiter.check(owner(&acme, "cust_1"), &limit, clock.now()).await.unwrap().allowed);
        // Another owner, the same owner id in another tenant, a key: their own budgets.
        assert!(limiter.check(owner(&acme, "cust_2"), &limit, clock.now()).await.unwrap().allowed);
        assert!(limiter.check(owner(&other, "cust_1"), &limit, clock.now()).await.unwrap().allowed);
        assert!(limiter.check(Subject::Key(KeyId::new()), &limit, clock.now()).await.unwrap().allowed);
        // Length prefixes keep ids with separators apart.
        let a = crate::Tenant::new("a:1", "b");
        let b = crate::Tenant::new("a", "1:b");
        assert_ne!(owner(&a, "c").storage_key(), owner(&b, "c").storage_key());
    }

    #[tokio::test]
    async fn without_burst_the_burst_is_the_request_count() {
        let (limiter, clock) = limiter();
        let key = KeyId::new();
        let limit = five_per_second(None);
        let allowed: Vec<bool> = {
            let mut v = Vec::new();
            for _ in 0..7 {
                v.push(limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap().allowed);
            }
            v
        };
        assert_eq!(allowed, [true, true, true, true, true, false, false]);
    }

    #[tokio::test]
    async fn each_key_has_its_own_budget() {
        let (limiter, clock) = limiter();
        let limit = RateLimit { name: "l".to_owned(), requests: 1, window: Duration::from_secs(60), burst: None };
        let (a, b) = (KeyId::new(), KeyId::new());
        assert!(limiter.check(Subject::Key(a), &limit, clock.now()).await.unwrap().allowed);
        assert!(!limiter.check(Subject::Key(a), &limit, clock.now()).await.unwrap().allowed);
        assert!(limiter.check(Subject::Key(b), &limit, clock.now()).await.unwrap().allowed);
    }

    #[tokio::test]
    async fn a_changed_limit_applies_on_the_next_request() {
        let (limiter, clock) = limiter();
        let key = KeyId::new();
        let strict = RateLimit { name: "l".to_owned(), requests: 1, window: Duration::from_secs(60), burst: None };
        assert!(limiter.check(Subject::Key(key), &strict, clock.now()).await.unwrap().allowed);
        assert!(!limiter.check(Subject::Key(key), &strict, clock.now()).await.unwrap().allowed);
        let relaxed = RateLimit { name: "l".to_owned(), requests: 100, window: Duration::from_secs(60), burst: None };
        let status = limiter.check(Subject::Key(key), &relaxed, clock.now()).await.unwrap();
        assert!(status.allowed);
        assert_eq!(status.limit, 100);
    }

    #[tokio::test]
    async fn a_changed_limit_keeps_what_was_used() {
        let (limiter, clock) = limiter();
        let key = KeyId::new();
        let hourly = RateLimit { name: "l".to_owned(), requests: 1, window: Duration::from_secs(3600), burst: Some(2) };
        assert!(limiter.check(Subject::Key(key), &hourly, clock.now()).await.unwrap().allowed);
        // Same rate, larger burst: one request already spent, two left.
        let larger = RateLimit { burst: Some(3), ..hourly.clone() };
        let status = limiter.check(Subject::Key(key), &larger, clock.now()).await.unwrap();
        assert_eq!((status.allowed, status.remaining), (true, 1));
        assert!(limiter.check(Subject::Key(key), &larger, clock.now()).await.unwrap().allowed);
        assert!(!limiter.check(Subject::Key(key), &larger, clock.now()).await.unwrap().allowed);
    }

    #[tokio::test]
    async fn a_refund_gives_back_exactly_one_request() {
        let (limiter, clock) = limiter();
        let key = KeyId::new();
        let limit = RateLimit { name: "l".to_owned(), requests: 2, window: Duration::from_secs(60), burst: None };
        assert_eq!(limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap().remaining, 1);
        assert_eq!(limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap().remaining, 0);
        limiter.refund(Subject::Key(key), &limit, clock.now());
        let again = limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap();
        assert_eq!((again.allowed, again.remaining), (true, 0));
        assert!(!limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap().allowed);
        // A refund against another limit (the policy changed since) gives nothing.
        limiter.refund(
            Subject::Key(key),
            &RateLimit { name: "l".to_owned(), requests: 3, ..limit.clone() },
            clock.now(),
        );
        assert!(!limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap().allowed);
        // A refund never fills more than the burst.
        clock.advance(Duration::from_secs(120));
        for _ in 0..5 {
            limiter.refund(Subject::Key(key), &limit, clock.now());
        }
        assert_eq!(limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap().remaining, 1);
    }

    /// Runs `threads` threads that each make `per_thread` requests of every
    /// key against `limit`, started together; returns how many each key got.
    fn race(
        limiter: &GcraRateLimiter, keys: &[KeyId], limit: &RateLimit, now: DateTime<Utc>, threads: usize,
    ) -> Vec<u32> {
        let admitted: Vec<AtomicU64> = keys.iter().map(|_| AtomicU64::new(0)).collect();
        let barrier = std::sync::Barrier::new(threads + 1);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..2 {
                        for (key, count) in keys.iter().zip(&admitted) {
                            if limiter.decide(Subject::Key(*key), limit, now).unwrap().allowed {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
            // An eviction pass racing the checks must not hand out budget.
            s.spawn(|| {
                barrier.wait();
                for _ in 0..50 {
                    limiter.evict_idle();
                }
            });
        });
        admitted.iter().map(|c| u32::try_from(c.load(Ordering::Relaxed)).unwrap()).collect()
    }

    #[test]
    fn concurrent_first_requests_of_a_key_share_one_burst() {
        let (limiter, clock) = limiter();
        let limit = RateLimit { name: "l".to_owned(), requests: 1, window: Duration::from_secs(3600), burst: Some(3) };
        let keys: Vec<KeyId> = (0..5000).map(|_| KeyId::new()).collect();
        let admitted = race(&limiter, &keys, &limit, clock.now(), 4);
        assert!(
            admitted.iter().all(|n| *n == 3),
            "admitted per key: {:?}",
            admitted.iter().filter(|n| **n != 3).collect::<Vec<_>>()
        );
    }

    #[test]
    fn concurrent_requests_after_eviction_or_a_limit_change_share_one_burst() {
        let (limiter, clock) = limiter();
        let hourly = RateLimit { name: "l".to_owned(), requests: 1, window: Duration::from_secs(3600), burst: None };
        let keys: Vec<KeyId> = (0..5000).map(|_| KeyId::new()).collect();
        for key in &keys {
            assert!(limiter.decide(Subject::Key(*key), &hourly, clock.now()).unwrap().allowed);
        }
        // Every budget is full again: the cells may be evicted under the racers.
        clock.advance(Duration::from_secs(3600));
        let admitted = race(&limiter, &keys, &hourly, clock.now(), 4);
        assert!(admitted.iter().all(|n| *n == 1), "after eviction");
        // A new limit (burst 3 at the same rate) keeps the request just spent.
        let larger = RateLimit { burst: Some(3), ..hourly.clone() };
        let admitted = race(&limiter, &keys, &larger, clock.now(), 4);
        assert!(admitted.iter().all(|n| *n == 2), "after the limit changed");
    }

    #[tokio::test]
    async fn idle_limiters_are_evicted_and_memory_stays_bounded() {
        let (limiter, clock) = limiter();
        let limit = RateLimit { name: "l".to_owned(), requests: 10, window: Duration::from_secs(1), burst: None };
        for _ in 0..(MIN_SWEEP_LEN * 4) {
            limiter.check(Subject::Key(KeyId::new()), &limit, clock.now()).await.unwrap();
            clock.advance(Duration::from_millis(1));
        }
        // Each key is idle after 1 s; with 1 ms between keys, about a
        // thousand stay live, however many were ever seen.
        assert!(limiter.tracked_keys() < MIN_SWEEP_LEN * 2, "{}", limiter.tracked_keys());
        clock.advance(Duration::from_secs(2));
        limiter.evict_idle();
        assert_eq!(limiter.tracked_keys(), 0);
    }

    #[tokio::test]
    async fn a_limiter_is_evicted_once_its_budget_is_full_again_and_not_before() {
        let (limiter, clock) = limiter();
        let limit = RateLimit { name: "l".to_owned(), requests: 1, window: Duration::from_secs(1), burst: None };
        limiter.check(Subject::Key(KeyId::new()), &limit, clock.now()).await.unwrap();
        clock.advance(Duration::from_secs(1) - Duration::from_nanos(1));
        limiter.evict_idle();
        assert_eq!(limiter.tracked_keys(), 1, "a nanosecond short of a full budget");
        clock.advance(Duration::from_nanos(1));
        limiter.evict_idle();
        assert_eq!(limiter.tracked_keys(), 0, "full again: nothing to remember");
    }

    #[tokio::test]
    async fn the_in_process_limiter_answers_in_place_and_counts_like_check() {
        let (limiter, clock) = limiter();
        let key = Subject::Key(KeyId::new());
        let limit = five_per_second(Some(1));
        let first = limiter.check_ready(key, &limit, clock.now()).expect("answered without a future").unwrap();
        assert!(first.allowed);
        let second = limiter.check_ready(key, &limit, clock.now()).expect("answered without a future").unwrap();
        assert!(!second.allowed, "the first request was counted");
        assert!(!limiter.check(key, &limit, clock.now()).await.unwrap().allowed);
    }

    #[tokio::test]
    async fn a_key_first_seen_during_a_sweep_is_kept() {
        let (limiter, clock) = limiter();
        let limit = RateLimit { name: "l".to_owned(), requests: 1, window: Duration::from_secs(3600), burst: None };
        let keys = MIN_SWEEP_LEN * 4;
        for _ in 0..keys {
            limiter.check(Subject::Key(KeyId::new()), &limit, clock.now()).await.unwrap();
        }
        assert_eq!(limiter.tracked_keys(), keys, "no key within its refill time was evicted");
    }

    #[tokio::test]
    async fn a_limit_that_cannot_be_enforced_is_an_error_and_counts_nothing() {
        let (limiter, clock) = limiter();
        let key = Subject::Key(KeyId::new());
        let unenforceable = [
            RateLimit::new("l", 0, Duration::from_secs(1)),
            RateLimit::new("l", 10, Duration::ZERO),
            RateLimit { burst: Some(u32::MAX), ..RateLimit::new("l", 1, Duration::from_secs(3600 * 24 * 365)) },
        ];
        for limit in &unenforceable {
            let error = limiter.check(key, limit, clock.now()).await.unwrap_err();
            assert!(matches!(error, Error::InvalidInput { field: "rate_limit", .. }), "{limit:?}: {error}");
        }
        assert_eq!(limiter.tracked_keys(), 0);
    }

    proptest::proptest! {
        /// Our state store changes nothing of `governor`'s decisions: a
        /// subject's answers are those of `governor`'s own limiter with the
        /// same quota on its fake clock, whatever the requests' spacing.
        #[test]
        fn decisions_are_governors_own(
            requests in 1u32..20,
            window_ms in 1u64..5_000,
            burst in proptest::option::of(1u32..30),
            gaps_ms in proptest::collection::vec(0u64..400, 1..60),
        ) {
            let (limiter, clock) = limiter();
            let limit = RateLimit { name: "l".to_owned(), requests, window: Duration::from_millis(window_ms), burst };
            let quota = Cell::new(&limit, nanos(clock.now())).unwrap().quota;
            let fake = governor::clock::FakeRelativeClock::default();
            let reference = governor::RateLimiter::direct_with_clock(quota, fake.clone())
                .with_middleware::<StateInformationMiddleware>();
            let key = Subject::Key(KeyId::new());
            for gap in gaps_ms {
                clock.advance(Duration::from_millis(gap));
                fake.advance(Duration::from_millis(gap));
                let ours = limiter.decide(key, &limit, clock.now()).unwrap();
                match reference.check() {
                    Ok(state) => {
                        proptest::prop_assert!(ours.allowed);
                        proptest::prop_assert_eq!(ours.remaining, state.remaining_burst_capacity());
                    }
                    Err(not_until) => {
                        proptest::prop_assert!(!ours.allowed);
                        let now = governor::clock::Clock::now(&fake);
                        proptest::prop_assert_eq!(ours.retry_after, Some(not_until.wait_time_from(now)));
                    }
                }
                proptest::prop_assert_eq!(ours.limit, quota.burst_size().get());
            }
        }
    }

    #[tokio::test]
    async fn a_busy_key_is_not_evicted() {
        let (limiter, clock) = limiter();
        let key = KeyId::new();
        let limit = RateLimit { name: "l".to_owned(), requests: 1, window: Duration::from_secs(10), burst: None };
        assert!(limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap().allowed);
        clock.advance(Duration::from_secs(5));
        limiter.evict_idle();
        assert!(
            !limiter.check(Subject::Key(key), &limit, clock.now()).await.unwrap().allowed,
            "the budget survived the sweep"
        );
    }
}
