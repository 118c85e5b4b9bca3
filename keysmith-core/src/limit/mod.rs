//! Rate limiting: a trait any backend implements, and the in-process GCRA
//! limiter used by default.

mod gcra;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use gcra::GcraRateLimiter;

use crate::{KeyId, RateLimit, Result, Tenant};

/// Whose budget a rate limit counts against.
///
/// The engine hands in the key's lineage (the id of the first key of a
/// chain of rotations, so a rotation never refills a budget), or, under a
/// policy with `limit_by: owner`, the key's owner, so that every key of
/// one customer spends one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject<'a> {
    /// A key's lineage.
    Key(KeyId),
    /// Every key of `owner_id` in `tenant`.
    Owner {
        /// The tenant the owner belongs to (owner ids are unique per tenant).
        tenant: &'a Tenant,
        /// The application's id of the user or customer.
        owner_id: &'a str,
    },
}

impl Subject<'_> {
    /// A text form, unique per subject and safe in a store key: `key:`
    /// and the lineage id, or `owner:` and the length-prefixed app, tenant
    /// and owner ids (so no two owners share a form, whatever characters
    /// their ids hold).
    #[must_use]
    pub fn storage_key(&self) -> String {
        match self {
            Self::Key(id) => format!("key:{id}"),
            Self::Owner { tenant, owner_id } => format!(
                "owner:{}:{}:{}:{}:{owner_id}",
                tenant.app_id.len(),
                tenant.app_id,
                tenant.tenant_id.len(),
                tenant.tenant_id
            ),
        }
    }
}

/// A subject as an in-process map holds it (the rate limiter's cells, the
/// quota counters): a lineage id as it is (no allocation on the common
/// path), an owner by its unique text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Holder {
    Key(KeyId),
    Owner(Box<str>),
}

/// Hashes what the variant holds and not which variant it is: a lineage id
/// and an owner's text never compare equal anyway, and a lookup on the
/// request path hashes one integer.
impl Hash for Holder {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Self::Key(id) => id.hash(state),
            Self::Owner(text) => text.hash(state),
        }
    }
}

impl Holder {
    #[inline]
    pub(crate) fn of(subject: Subject<'_>) -> Self {
        match subject {
            Subject::Key(id) => Self::Key(id),
            Subject::Owner { .. } => Self::Owner(subject.storage_key().into_boxed_str()),
        }
    }
}

/// Decides whether one more request of a subject fits one of its rate
/// limits.
///
/// Implementations keep one budget per subject and limit name, sized by the
/// `limit` handed in (so a policy change takes effect on the next request).
/// A policy with several limits is checked limit by limit; a request that a
/// later limit refuses is [`refund`](Self::refund)ed on the earlier ones, so
/// a refused request spends nothing. A distributed implementation (Redis)
/// plugs in through
/// [`EngineBuilder::with_rate_limiter`](crate::EngineBuilder::with_rate_limiter).
#[async_trait]
pub trait RateLimiter: Send + Sync + fmt::Debug + 'static {
    /// Counts one request of `subject`, made at `now`, against `limit` and
    /// says whether it fits.
    ///
    /// # Errors
    /// The limiter's backend failed (the request is then neither allowed nor
    /// refused: adapters answer 503).
    async fn check(&self, subject: Subject<'_>, limit: &RateLimit, now: DateTime<Utc>) -> Result<RateLimitStatus>;

    /// [`check`](Self::check) answered at once, for a limiter that decides
    /// in process; `None` means "await `check`" (the default, right for a
    /// limiter that asks a server). Validation asks this first, so an
    /// in-process limiter costs no boxed future. A `Some` counts the request
    /// exactly as `check` would.
    fn check_ready(
        &self, subject: Subject<'_>, limit: &RateLimit, now: DateTime<Utc>,
    ) -> Option<Result<RateLimitStatus>> {
        let _ = (subject, limit, now);
        None
    }

    /// Gives back one request of `subject` that [`check`](Self::check)
    /// allowed at `at` against `limit`, because the request was refused
    /// afterwards (by a later limit, the quota, or a route's scope
    /// requirement) and a refused request spends nothing.
    ///
    /// Never waits: a limiter whose state lives on a server starts the
    /// refund in the background. The default gives nothing back, so a
    /// limiter that cannot refund over-counts, never under-counts.
    fn refund(&self, subject: Subject<'_>, limit: &RateLimit, at: DateTime<Utc>) {
        let _ = (subject, limit, at);
    }

    /// [`refund`](Self::refund), for a caller that must not answer before
    /// the request is back (a route's scope refusal: the client's next
    /// request must find the budget whole). A limiter whose state lives on
    /// a server answers the give-back's future instead of starting it in
    /// the background; `None` (the default, which calls `refund`) when it
    /// was given back at once.
    fn refund_then(&self, subject: Subject<'_>, limit: &RateLimit, at: DateTime<Utc>) -> Option<GiveBack> {
        self.refund(subject, limit, at);
        None
    }
}

/// A give-back of a limiter or quota counter on a server, still to be
/// awaited (see [`RateLimiter::refund_then`]).
pub type GiveBack = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The outcome of one limit's check, with what the `RateLimit` headers say.
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
