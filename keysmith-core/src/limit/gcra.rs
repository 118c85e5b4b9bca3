//! The default limiter: GCRA (`governor`) per key, in a `dashmap`, with
//! idle keys evicted so memory follows the keys in use, not all keys ever seen.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};

use super::{RateLimitStatus, RateLimiter};
use crate::bounded::SweepSchedule;
use crate::{Clock, Error, KeyId, RateLimit, Result, SystemClock};

type Limiter = governor::RateLimiter<NotKeyed, InMemoryState, RequestClock, StateInformationMiddleware>;

/// The time governor sees for a key: the `now` of the request being checked,
/// stored just before the check. The engine has read the clock once for the
/// whole validation; reading it again here was one of the largest costs of
/// a rate-limited validation. Two concurrent checks of one key may each see
/// the other's `now`, which is no different from two clock reads racing.
#[derive(Debug, Clone)]
struct RequestClock(Arc<AtomicU64>);

impl governor::clock::Clock for RequestClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct Entry {
    limit: RateLimit,
    quota: governor::Quota,
    limiter: Limiter,
    /// When the key was last checked (clock nanos); also the time its
    /// limiter reads.
    last_seen: Arc<AtomicU64>,
    /// After this long without a request the budget is full again, so the
    /// entry can be dropped without changing any decision.
    idle_after: u64,
}

/// In-process GCRA rate limiter keyed by [`KeyId`]; each key has its own
/// budget from its policy.
///
/// Memory is bounded by the keys active within their own refill time: once
/// a key's budget has fully refilled its entry carries no information and is
/// evicted (sweeps run when the map has doubled since the last one, so their
/// cost is amortised over the insertions).
#[derive(Debug)]
pub struct GcraRateLimiter {
    /// Only for eviction: checks run at the `now` they are given.
    clock: Arc<dyn Clock>,
    entries: DashMap<KeyId, Arc<Entry>, foldhash::fast::RandomState>,
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
        Self { clock, entries: DashMap::default(), sweeps: SweepSchedule::default() }
    }

    /// How many keys currently hold a limiter.
    #[must_use]
    pub fn tracked_keys(&self) -> usize {
        self.entries.len()
    }

    /// Drops the limiters of keys idle long enough to have a full budget.
    pub fn evict_idle(&self) {
        let now = self.clock.unix_nanos();
        self.entries.retain(|_, entry| now.saturating_sub(entry.last_seen.load(Ordering::Relaxed)) < entry.idle_after);
    }

    /// A new limiter for `key` seen at `seen`, replacing one sized by
    /// another limit.
    fn insert(&self, key: KeyId, limit: &RateLimit, seen: u64) -> Result<Arc<Entry>> {
        // Seen from the start: a sweep triggered by this very insertion
        // must not take the new entry for an idle one.
        let entry = Arc::new(new_entry(limit, seen)?);
        self.entries.insert(key, Arc::clone(&entry));
        self.sweeps.maybe_sweep(self.entries.len(), || {
            self.evict_idle();
            self.entries.len()
        });
        Ok(entry)
    }
}

impl Entry {
    /// Counts one request made at `seen` (clock nanos).
    fn check(&self, seen: u64) -> RateLimitStatus {
        // Marks the key as seen and sets the time governor reads.
        self.last_seen.store(seen, Ordering::Relaxed);
        let burst = self.quota.burst_size().get();
        let period = self.quota.replenish_interval();
        match self.limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                RateLimitStatus {
                    allowed: true,
                    limit: burst,
                    remaining,
                    reset: period * (burst - remaining),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(Nanos::from(seen));
                RateLimitStatus {
                    allowed: false,
                    limit: burst,
                    remaining: 0,
                    reset: retry_after + period * (burst - 1),
                    retry_after: Some(retry_after),
                }
            }
        }
    }
}

fn new_entry(limit: &RateLimit, seen: u64) -> Result<Entry> {
    let invalid = || Error::invalid("rate_limit", "requests and window must be greater than zero");
    let requests = NonZeroU32::new(limit.requests).ok_or_else(invalid)?;
    let burst = limit.burst.and_then(NonZeroU32::new).unwrap_or(requests);
    let period = limit.window / requests.get();
    let quota = governor::Quota::with_period(period).ok_or_else(invalid)?.allow_burst(burst);
    let idle_after = u64::try_from(period.saturating_mul(burst.get()).as_nanos()).unwrap_or(u64::MAX);
    let last_seen = Arc::new(AtomicU64::new(seen));
    Ok(Entry {
        limit: *limit,
        quota,
        limiter: governor::RateLimiter::direct_with_clock(quota, RequestClock(Arc::clone(&last_seen)))
            .with_middleware::<StateInformationMiddleware>(),
        last_seen,
        idle_after,
    })
}

#[async_trait]
impl RateLimiter for GcraRateLimiter {
    async fn check(&self, key: KeyId, limit: &RateLimit, now: DateTime<Utc>) -> Result<RateLimitStatus> {
        self.decide(key, limit, now)
    }

    fn check_ready(&self, key: KeyId, limit: &RateLimit, now: DateTime<Utc>) -> Option<Result<RateLimitStatus>> {
        Some(self.decide(key, limit, now))
    }
}

impl GcraRateLimiter {
    /// Counts one request: the whole check is in process, so both trait
    /// methods answer with this.
    fn decide(&self, key: KeyId, limit: &RateLimit, now: DateTime<Utc>) -> Result<RateLimitStatus> {
        let seen = now.timestamp_nanos_opt().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        // The common case checks under the map's read guard, without
        // cloning the entry out.
        if let Some(entry) = self.entries.get(&key)
            && entry.limit == *limit
        {
            return Ok(entry.check(seen));
        }
        Ok(self.insert(key, limit, seen)?.check(seen))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ManualClock;
    use crate::bounded::MIN_SWEEP_LEN;

    fn limiter() -> (GcraRateLimiter, ManualClock) {
        let clock = ManualClock::new(chrono::DateTime::UNIX_EPOCH + chrono::Duration::days(20_000));
        (GcraRateLimiter::with_clock(Arc::new(clock.clone())), clock)
    }

    fn five_per_second(burst: Option<u32>) -> RateLimit {
        RateLimit { requests: 5, window: Duration::from_secs(1), burst }
    }

    #[tokio::test]
    async fn five_per_second_with_burst_allows_the_exact_sequence() {
        let (limiter, clock) = limiter();
        let key = KeyId::new();
        let limit = five_per_second(Some(10));

        // A full burst of 10 at once, remaining counting down 9..0.
        for expected_remaining in (0..10).rev() {
            let status = limiter.check(key, &limit, clock.now()).await.unwrap();
            assert!(status.allowed);
            assert_eq!((status.limit, status.remaining), (10, expected_remaining));
        }
        // The 11th is refused; one cell (200 ms) must pass.
        let refused = limiter.check(key, &limit, clock.now()).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(200)));

        clock.advance(Duration::from_millis(150));
        let still = limiter.check(key, &limit, clock.now()).await.unwrap();
        assert_eq!(still.retry_after, Some(Duration::from_millis(50)));

        clock.advance(Duration::from_millis(50));
        let allowed = limiter.check(key, &limit, clock.now()).await.unwrap();
        assert!(allowed.allowed);
        assert_eq!(allowed.remaining, 0);
        assert!(!limiter.check(key, &limit, clock.now()).await.unwrap().allowed);

        // Steady state: one request per 200 ms fits forever.
        for _ in 0..20 {
            clock.advance(Duration::from_millis(200));
            assert!(limiter.check(key, &limit, clock.now()).await.unwrap().allowed);
        }
        // After two idle seconds the whole burst is back.
        clock.advance(Duration::from_secs(2));
        let rested = limiter.check(key, &limit, clock.now()).await.unwrap();
        assert_eq!(rested.remaining, 9);
        assert_eq!(rested.reset, Duration::from_millis(200));
    }

    #[tokio::test]
    async fn without_burst_the_burst_is_the_request_count() {
        let (limiter, clock) = limiter();
        let key = KeyId::new();
        let limit = five_per_second(None);
        let allowed: Vec<bool> = {
            let mut v = Vec::new();
            for _ in 0..7 {
                v.push(limiter.check(key, &limit, clock.now()).await.unwrap().allowed);
            }
            v
        };
        assert_eq!(allowed, [true, true, true, true, true, false, false]);
    }

    #[tokio::test]
    async fn each_key_has_its_own_budget() {
        let (limiter, clock) = limiter();
        let limit = RateLimit { requests: 1, window: Duration::from_secs(60), burst: None };
        let (a, b) = (KeyId::new(), KeyId::new());
        assert!(limiter.check(a, &limit, clock.now()).await.unwrap().allowed);
        assert!(!limiter.check(a, &limit, clock.now()).await.unwrap().allowed);
        assert!(limiter.check(b, &limit, clock.now()).await.unwrap().allowed);
    }

    #[tokio::test]
    async fn a_changed_limit_applies_on_the_next_request() {
        let (limiter, clock) = limiter();
        let key = KeyId::new();
        let strict = RateLimit { requests: 1, window: Duration::from_secs(60), burst: None };
        assert!(limiter.check(key, &strict, clock.now()).await.unwrap().allowed);
        assert!(!limiter.check(key, &strict, clock.now()).await.unwrap().allowed);
        let relaxed = RateLimit { requests: 100, window: Duration::from_secs(60), burst: None };
        let status = limiter.check(key, &relaxed, clock.now()).await.unwrap();
        assert!(status.allowed);
        assert_eq!(status.limit, 100);
    }

    #[tokio::test]
    async fn idle_limiters_are_evicted_and_memory_stays_bounded() {
        let (limiter, clock) = limiter();
        let limit = RateLimit { requests: 10, window: Duration::from_secs(1), burst: None };
        for _ in 0..(MIN_SWEEP_LEN * 4) {
            limiter.check(KeyId::new(), &limit, clock.now()).await.unwrap();
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
    async fn a_key_first_seen_during_a_sweep_is_kept() {
        let (limiter, clock) = limiter();
        let limit = RateLimit { requests: 1, window: Duration::from_secs(3600), burst: None };
        let keys = MIN_SWEEP_LEN * 4;
        for _ in 0..keys {
            limiter.check(KeyId::new(), &limit, clock.now()).await.unwrap();
        }
        assert_eq!(limiter.tracked_keys(), keys, "no key within its refill time was evicted");
    }

    #[tokio::test]
    async fn a_busy_key_is_not_evicted() {
        let (limiter, clock) = limiter();
        let key = KeyId::new();
        let limit = RateLimit { requests: 1, window: Duration::from_secs(10), burst: None };
        assert!(limiter.check(key, &limit, clock.now()).await.unwrap().allowed);
        clock.advance(Duration::from_secs(5));
        limiter.evict_idle();
        assert!(!limiter.check(key, &limit, clock.now()).await.unwrap().allowed, "the budget survived the sweep");
    }
}
