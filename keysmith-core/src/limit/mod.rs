//! Rate limiting: a trait any backend implements, and the in-process GCRA
//! limiter used by default.

mod gcra;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use gcra::GcraRateLimiter;

use crate::{KeyId, RateLimit, Result};

/// Decides whether one more request of a key fits its rate limit.
///
/// Implementations keep one budget per key, sized by the `limit` handed in
/// (so a policy change takes effect on the next request). The key the
/// engine hands in is the credential's lineage (the id of the first key of
/// a chain of rotations), so a rotation never refills a budget. A distributed
/// implementation (Redis) plugs in through
/// [`EngineBuilder::with_rate_limiter`](crate::EngineBuilder::with_rate_limiter).
#[async_trait]
pub trait RateLimiter: Send + Sync + fmt::Debug + 'static {
    /// Counts one request of `key`, made at `now`, against `limit` and says
    /// whether it fits.
    ///
    /// # Errors
    /// The limiter's backend failed (the request is then neither allowed nor
    /// refused: adapters answer 503).
    async fn check(&self, key: KeyId, limit: &RateLimit, now: DateTime<Utc>) -> Result<RateLimitStatus>;

    /// [`check`](Self::check) answered at once, for a limiter that decides
    /// in process; `None` means "await `check`" (the default, right for a
    /// limiter that asks a server). Validation asks this first, so an
    /// in-process limiter costs no boxed future. A `Some` counts the request
    /// exactly as `check` would.
    fn check_ready(&self, key: KeyId, limit: &RateLimit, now: DateTime<Utc>) -> Option<Result<RateLimitStatus>> {
        let _ = (key, limit, now);
        None
    }

    /// Gives back one request of `key` that [`check`](Self::check) allowed
    /// at `at` against `limit`, because the request was refused afterwards
    /// (a route's scope requirement) and a refused request spends nothing.
    ///
    /// Never waits: a limiter whose state lives on a server starts the
    /// refund in the background. The default gives nothing back, so a
    /// limiter that cannot refund over-counts, never under-counts.
    fn refund(&self, key: KeyId, limit: &RateLimit, at: DateTime<Utc>) {
        let _ = (key, limit, at);
    }
}

/// The outcome of a rate-limit check, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// True if the request fits.
    pub allowed: bool,
    /// Requests the key may make at once (the burst).
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Time until the full burst is available again.
    pub reset: Duration,
    /// When refused: time until one request would fit.
    pub retry_after: Option<Duration>,
}
