//! How much the cache keeps and for how long ([`CacheConfig`]), and what it
//! holds now ([`CacheStats`]).

use std::sync::Arc;
use std::time::Duration;

use crate::{Clock, SystemClock};

/// How much [`CachedStore`](super::CachedStore) keeps, and for how long.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub(super) max_keys: u64,
    pub(super) max_policies: u64,
    pub(super) positive_ttl: Duration,
    pub(super) negative_ttl: Duration,
    pub(super) outage_ttl: Duration,
    pub(super) clock: Arc<dyn Clock>,
}

impl Default for CacheConfig {
    /// 100 000 key lookups, 10 000 policies, found keys and policies for 30
    /// seconds (1 second while a change feed is down), unknown hashes for 5
    /// seconds, on the system clock.
    fn default() -> Self {
        Self {
            max_keys: 100_000,
            max_policies: 10_000,
            positive_ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            outage_ttl: Duration::from_secs(1),
            clock: Arc::new(SystemClock),
        }
    }
}

impl CacheConfig {
    /// At most this many hash lookups (found or not) are kept, and as many
    /// owners known to have no credits.
    #[must_use]
    pub fn with_max_keys(mut self, max: u64) -> Self {
        self.max_keys = max;
        self
    }

    /// At most this many policies are kept.
    #[must_use]
    pub fn with_max_policies(mut self, max: u64) -> Self {
        self.max_policies = max;
        self
    }

    /// How long a found key or policy, or an owner found to have no
    /// credits, is served from the cache. This bounds how stale a change
    /// made by another instance can look here.
    #[must_use]
    pub fn with_positive_ttl(mut self, ttl: Duration) -> Self {
        self.positive_ttl = ttl;
        self
    }

    /// How long "no key has this hash" is served from the cache.
    #[must_use]
    pub fn with_negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// How long a found key or policy is served from the cache of an engine
    /// with a [change feed](crate::feed) while it is not subscribed (before
    /// the first subscription and during feed outages): the bound on how
    /// stale another instance's change can look here then. Default 1 second;
    /// a longer positive TTL is not shortened, a shorter one is kept.
    #[must_use]
    pub fn with_outage_ttl(mut self, ttl: Duration) -> Self {
        self.outage_ttl = ttl;
        self
    }

    /// The clock that ages entries (a [`ManualClock`](crate::ManualClock) in tests).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long a found key or policy is served from the cache.
    #[must_use]
    pub fn positive_ttl(&self) -> Duration {
        self.positive_ttl
    }

    /// How long an unknown hash is served from the cache.
    #[must_use]
    pub fn negative_ttl(&self) -> Duration {
        self.negative_ttl
    }

    /// How long a found key or policy is served while a change feed is down.
    #[must_use]
    pub fn outage_ttl(&self) -> Duration {
        self.outage_ttl.min(self.positive_ttl)
    }
}

/// What a [`CachedStore`](super::CachedStore) holds now; see [`CachedStore::stats`](super::CachedStore::stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Cached hash lookups (found or not).
    pub keys: u64,
    /// Cached policies.
    pub policies: u64,
    /// Owners remembered as having no credits.
    pub owners: u64,
    /// How long a found key or policy cached now is served: the positive
    /// TTL, or the outage TTL while a change feed is down.
    pub positive_ttl: Duration,
}
