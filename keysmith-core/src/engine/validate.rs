//! Validation of a presented key: the ordered checks of ARCHITECTURE.md's request path.

use std::fmt;
use std::ops::Deref;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use chrono::{DateTime, Utc};
use dashmap::mapref::entry::Entry;
use smallvec::SmallVec;

use super::{Engine, RequestContext};
use crate::Change;
use crate::hooks::Event;
use crate::key::{LegacyMatch, ParsedKey};
use crate::limit::{GiveBack, RateLimitStatus, Subject};
use crate::store::{StoredKey, Transition};
use crate::{
    CreditSpend, CreditsStatus, Error, Key, KeyHash, KeyState, LimitBy, Period, Policy, QuotaRemaining, RateLimit,
    Refusal, scope,
};

/// Counter: refusals of requests whose key was not identified (missing,
/// malformed, unknown), by code; they have no tenant to count for.
const UNATTRIBUTED_REFUSALS: &str = "keysmith_refusals_unattributed_total";

/// A key that passed validation.
#[derive(Debug)]
pub struct Validation {
    /// The key (its `tenant` says whose it is).
    pub key: Arc<Key>,
    /// The key's policy, if it has one.
    pub policy: Option<Arc<Policy>>,
    /// Each rate limit's state after this request, in the order of the
    /// policy's `rate_limits` (empty when nothing limits the rate).
    pub rate_limits: RateLimitStates,
    /// The key's credits after this request spent its cost, when the key
    /// has credits.
    pub credits: Option<CreditsStatus>,
    /// What is left of the policy's daily and monthly quota after this
    /// request ([`QuotaRemaining::NONE`] when the policy has no quota).
    pub quota: QuotaRemaining,
    /// The key's scopes narrowed to the policy's `allowed_scopes`, when the
    /// policy was tightened after the key got them (shared with the cache
    /// that keeps them with the key and its policy).
    narrowed: Option<Arc<[String]>>,
    /// The engine clock's time when the key was checked.
    checked_at: DateTime<Utc>,
    /// Set once [`Engine::refund`] gave back what the request spent.
    refunded: AtomicBool,
}

impl Clone for Validation {
    fn clone(&self) -> Self {
        Self {
            key: Arc::clone(&self.key),
            policy: self.policy.clone(),
            rate_limits: self.rate_limits.clone(),
            credits: self.credits,
            quota: self.quota,
            narrowed: self.narrowed.clone(),
            checked_at: self.checked_at,
            refunded: AtomicBool::new(self.is_refunded()),
        }
    }
}

impl Validation {
    /// The scopes the key holds in effect: its own, within what its policy
    /// allows.
    #[must_use]
    pub fn scopes(&self) -> &[String] {
        self.narrowed.as_deref().unwrap_or(&self.key.scopes)
    }

    /// When the key was checked, by the engine's clock: the request's time
    /// (adapters stamp usage records with it rather than read the clock
    /// again).
    #[must_use]
    pub fn checked_at(&self) -> DateTime<Utc> {
        self.checked_at
    }

    /// True if the key's scopes cover `required` (hierarchically).
    #[must_use]
    pub fn has_scope(&self, required: &str) -> bool {
        scope::any_grants(self.scopes(), required)
    }

    /// Each of the policy's rate limits with its state after this request.
    pub fn rate_limit_states(&self) -> impl Iterator<Item = (&RateLimit, &RateLimitStatus)> {
        let limits = self.policy.as_deref().map_or(&[][..], |p| &p.rate_limits[..]);
        limits.iter().zip(&self.rate_limits)
    }

    /// The rate limit closest to refusing: fewest requests left, and of
    /// those the one that takes longest to refill. (The `RateLimit` header
    /// weighs the quota, [`quota`](Self::quota), and the credits too.)
    #[must_use]
    pub fn closest_rate_limit(&self) -> Option<(&RateLimit, &RateLimitStatus)> {
        self.rate_limit_states().min_by(|(_, a), (_, b)| a.remaining.cmp(&b.remaining).then(b.reset.cmp(&a.reset)))
    }

    /// True once [`Engine::refund`] gave back what this request spent: it
    /// was refused after validation, and records no usage.
    #[must_use]
    pub fn is_refunded(&self) -> bool {
        self.refunded.load(Ordering::Acquire)
    }

    fn new(
        key: Arc<Key>, policy: Option<Arc<Policy>>, rate_limits: RateLimitStates, narrowed: Option<Arc<[String]>>,
        checked_at: DateTime<Utc>,
    ) -> Self {
        Self {
            key,
            policy,
            rate_limits,
            credits: None,
            quota: QuotaRemaining::NONE,
            narrowed,
            checked_at,
            refunded: AtomicBool::new(false),
        }
    }
}

/// Each of a policy's rate limits with its state after a request, in the
/// policy's order; reads as a slice. Two are held inline, so a validation
/// allocates nothing for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitStates(SmallVec<[RateLimitStatus; 2]>);

impl Deref for RateLimitStates {
    type Target = [RateLimitStatus];

    fn deref(&self) -> &[RateLimitStatus] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a RateLimitStates {
    type Item = &'a RateLimitStatus;
    type IntoIter = std::slice::Iter<'a, RateLimitStatus>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Why [`Engine::validate`] did not return a [`Validation`].
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// The key does not pass: the client's fault.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The system could not decide (store down): never a pass, never a refusal.
    #[error(transparent)]
    Failed(#[from] Error),
}

impl From<Refusal> for ValidationError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}

impl ValidationError {
    /// The refusal, if this is one.
    #[must_use]
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(refusal) => Some(refusal),
            Self::Failed(_) => None,
        }
    }
}

/// What validation needs of a presented secret, taken without I/O and
/// without copying the secret: its hash, or the fact that it is malformed.
/// Adapters take it while they still borrow the request's headers
/// ([`Engine::present`]) and validate it later
/// ([`Engine::validate_presented`]), so the secret never outlives them.
#[derive(Clone, Copy)]
pub struct PresentedKey {
    hash: Option<KeyHash>,
    /// Which legacy rules accepted the key; none for a key in Keysmith's format.
    legacy: LegacyMatch,
}

impl fmt::Debug for PresentedKey {
    /// Says only whether the key was well formed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedKey").field("well_formed", &self.hash.is_some()).finish_non_exhaustive()
    }
}

impl Engine {
    /// Checks a secret's shape and checksum and hashes it (step 1 of
    /// [`validate`](Self::validate), no I/O); a malformed key is refused
    /// as such when validated.
    #[must_use]
    #[inline]
    pub fn present(&self, raw_key: &str) -> PresentedKey {
        if let Some(parsed) = ParsedKey::parse(raw_key) {
            return PresentedKey { hash: Some(self.inner.hasher.hash(parsed.raw)), legacy: LegacyMatch::default() };
        }
        // A legacy key, if some application accepts its shape: hashed
        // whole, without a checksum; anything else costs no lookup.
        let legacy = self.inner.legacy.matches(raw_key);
        PresentedKey { hash: legacy.any().then(|| self.inner.hasher.hash(raw_key)), legacy }
    }

    /// Validates a presented key: shape and checksum, lookup, state, expiry,
    /// then the policy's checks (IP, origin, scopes, rate limit, quota), in that order,
    /// and last the credits: the key's own when it has some (whatever its
    /// policy's `limit_by`: a key with credits never passes for free), else
    /// its owner's under `limit_by: owner`.
    ///
    /// # Errors
    /// [`ValidationError::Refused`] when the key does not pass,
    /// [`ValidationError::Failed`] when the store could not answer.
    pub async fn validate(&self, raw_key: &str, ctx: &RequestContext<'_>) -> Result<Validation, ValidationError> {
        // The presented key stays where it was made and is lent to the
        // steps: moved into them, its hash, just written, would be copied
        // and read back at once (a stall of the CPU's store forwarding).
        let key = self.present(raw_key);
        self.validate_lent(&key, ctx).await
    }

    /// [`validate`](Self::validate) for a key taken by
    /// [`present`](Self::present).
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub async fn validate_presented(
        &self, key: PresentedKey, ctx: &RequestContext<'_>,
    ) -> Result<Validation, ValidationError> {
        self.validate_lent(&key, ctx).await
    }

    /// [`validate_presented`](Self::validate_presented) of a key lent.
    async fn validate_lent(&self, key: &PresentedKey, ctx: &RequestContext<'_>) -> Result<Validation, ValidationError> {
        if !self.inner.hooks.is_empty() {
            // Boxed: only engines with hooks pay for this future, and no
            // other validation's future keeps its result across an await.
            return Box::pin(self.validate_reported(key, ctx)).await;
        }
        let result = self.validate_inner(key, ctx, Waits::Allowed).await;
        self.count_if_refused(&result);
        result.map_err(|(e, _)| e)
    }

    /// [`validate_presented`](Self::validate_presented) in an engine with
    /// hooks: they are told how it ended.
    async fn validate_reported(
        &self, key: &PresentedKey, ctx: &RequestContext<'_>,
    ) -> Result<Validation, ValidationError> {
        let started = Instant::now();
        let result = self.validate_inner(key, ctx, Waits::Allowed).await;
        self.count_if_refused(&result);
        self.report_validation(&result, started.elapsed()).await;
        result.map_err(|(e, _)| e)
    }

    /// Counts a validation's refusal, if it is one (see
    /// [`count_refusal`](Self::count_refusal)).
    fn count_if_refused(&self, result: &Result<Validation, (ValidationError, Option<Arc<Key>>)>) {
        if let Err((ValidationError::Refused(refusal), key)) = result {
            self.count_refusal(refusal, key.as_ref());
        }
    }

    /// Counts a refusal among its key's outcomes (queued like usage: no
    /// store call here, nothing charged), or, when no key was identified
    /// (missing, ambiguous, malformed or unknown), in the metric
    /// `keysmith_refusals_unattributed_total` only.
    pub(crate) fn count_refusal(&self, refusal: &Refusal, key: Option<&Arc<Key>>) {
        match (refusal.reason(), key) {
            (Some(reason), Some(key)) => self.inner.usage.record_refusal(key, reason, self.inner.clock.now()),
            // Literal labels for the codes a flood of made-up keys gets:
            // a static metric key, no label vector allocated per refusal.
            _ => match refusal {
                Refusal::Unknown => metrics::counter!(UNATTRIBUTED_REFUSALS, "code" => "invalid_key").increment(1),
                Refusal::Malformed => metrics::counter!(UNATTRIBUTED_REFUSALS, "code" => "malformed_key").increment(1),
                Refusal::MissingKey => metrics::counter!(UNATTRIBUTED_REFUSALS, "code" => "missing_key").increment(1),
                Refusal::AmbiguousKey => {
                    metrics::counter!(UNATTRIBUTED_REFUSALS, "code" => "ambiguous_key").increment(1);
                }
                other => metrics::counter!(UNATTRIBUTED_REFUSALS, "code" => other.code()).increment(1),
            },
        }
    }

    /// Counts a request answered 503 `unavailable` because its key could
    /// not be checked (the store or a limiter failed), in the metric
    /// `keysmith_refusals_unattributed_total`: no roll-up counts it.
    pub(crate) fn count_unavailable(&self) {
        metrics::counter!(UNATTRIBUTED_REFUSALS, "code" => "unavailable").increment(1);
    }

    /// [`validate_presented`](Self::validate_presented) when every step
    /// answers at once (a memory store or a warm cache, the in-process
    /// limiter, a fresh quota counter), without a future to keep; `None`
    /// when a step would wait, or hooks are installed, and then nothing was
    /// spent: the caller validates with the future instead.
    pub(crate) fn validate_ready(
        &self, key: PresentedKey, ctx: &RequestContext<'_>,
    ) -> Option<Result<Validation, ValidationError>> {
        if !self.inner.hooks.is_empty() {
            return None;
        }
        // Polled once, on the stack: with `Waits::Never` a step that would
        // wait gives back what was spent and stops for good instead.
        let validation = pin!(self.validate_inner(&key, ctx, Waits::Never));
        match validation.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => {
                self.count_if_refused(&result);
                Some(result.map_err(|(e, _)| e))
            }
            Poll::Pending => None,
        }
    }

    /// Tells the hooks how a validation ended.
    async fn report_validation(
        &self, result: &Result<Validation, (ValidationError, Option<Arc<Key>>)>, latency: std::time::Duration,
    ) {
        let event = match result {
            Ok(validation) => Event::KeyValidated { key: Arc::clone(&validation.key), latency },
            Err((ValidationError::Refused(reason), key)) => Event::KeyValidationFailed {
                reason: reason.clone(),
                key_id: key.as_ref().map(|k| k.id),
                tenant: key.as_ref().map(|k| k.tenant.clone()),
                latency,
            },
            Err((ValidationError::Failed(_), _)) => return,
        };
        self.inner.hooks.emit(event).await;
    }

    /// The validation steps; a refusal comes with the key it concerns, when
    /// the secret matched one, for the hooks.
    async fn validate_inner(
        &self, presented: &PresentedKey, ctx: &RequestContext<'_>, waits: Waits,
    ) -> Result<Validation, (ValidationError, Option<Arc<Key>>)> {
        let inner = &self.inner;
        // The caller's restriction to an app or a tenant: ids that no key
        // can have are the caller's error (a misconfigured adapter), never
        // a silent refusal of every key.
        check_restriction(ctx).map_err(|error| (ValidationError::Failed(error), None))?;
        // 1. Shape and checksum, no I/O (done by `present`).
        // Borrowed where the future holds it, not copied out.
        let Some(hash) = &presented.hash else { return Err((Refusal::Malformed.into(), None)) };
        // 2. Lookup by hash, confirmed in constant time. The engine's cache
        // answers the key with its policy in one probe when it holds both.
        // On a miss it asks the store without probing again (boxed, as the
        // store's own future is, so that every validation's future stays
        // small); on a hit it probed the policy table too (`policy_probed`).
        // With the policy, the cache keeps the key's scopes narrowed to it.
        // Each answer is confirmed where it is taken: what moves on is the
        // key alone, not the lookup's result.
        let mut cached_narrowed = None;
        let (key, mut cached_policy, policy_probed) = match &inner.cache {
            Some(cache) => match cache.find_key_and_policy_narrowed_ready(hash) {
                Some((found, Some((policy, narrowed)))) => {
                    cached_narrowed = Some(narrowed);
                    (confirmed(Ok(found), hash).map_err(unattributed)?, Some(policy), true)
                }
                Some((found, None)) => (confirmed(Ok(found), hash).map_err(unattributed)?, None, true),
                None => {
                    let found = waits.then_boxed(|| cache.load_key(hash)).await;
                    (confirmed(found, hash).map_err(unattributed)?, None, false)
                }
            },
            // A store that holds both in process answers the key with its
            // policy under one lookup, and keeps the key's scopes narrowed
            // to the policy as the cache does.
            None => match inner.store.find_key_with_policy_ready(hash) {
                Some(Ok((found, held))) => {
                    let policy = held.map(|held| {
                        let (policy, narrowed) = held.into_parts();
                        cached_narrowed = Some(narrowed);
                        policy
                    });
                    (confirmed(Ok(found), hash).map_err(unattributed)?, policy, false)
                }
                Some(Err(error)) => return Err((error.into(), None)),
                None => match inner.store.find_key_by_hash_ready(hash) {
                    Some(found) => (confirmed(found, hash).map_err(unattributed)?, None, false),
                    None => {
                        let found = waits.then(|| inner.store.find_key_by_hash(hash)).await;
                        (confirmed(found, hash).map_err(unattributed)?, None, false)
                    }
                },
            },
        };
        // A legacy key passes step 1 only for an application that accepts
        // its format: for any other it is malformed, found or not.
        if presented.legacy.any() && !inner.legacy.accepts(presented.legacy, &key.tenant.app_id) {
            return Err((Refusal::Malformed.into(), None));
        }
        // Another application's key is, to this application, unknown.
        if ctx.app_id.is_some_and(|app| app != key.tenant.app_id)
            || ctx.tenant_id.is_some_and(|tenant| tenant != key.tenant.tenant_id)
        {
            return Err((Refusal::Unknown.into(), None));
        }
        let refuse = |refusal: Refusal, key: &Arc<Key>| (ValidationError::Refused(refusal), Some(Arc::clone(key)));
        let fail = |error: Error| (ValidationError::Failed(error), None);

        // 3. State.
        let now = inner.clock.now();
        match key.state {
            KeyState::Active => {}
            KeyState::Rotated if key.grace_expires_at.is_some_and(|end| now < end) => {}
            KeyState::Rotated | KeyState::Revoked => return Err(refuse(Refusal::Revoked, &key)),
            KeyState::Suspended => return Err(refuse(Refusal::Suspended, &key)),
            KeyState::Expired => return Err(refuse(Refusal::Expired, &key)),
        }

        let policy = match key.policy_id {
            Some(policy_id) if cached_policy.as_ref().is_some_and(|policy| policy.id == policy_id) => {
                cached_policy.take()
            }
            Some(policy_id) => {
                // Not the cached policy: neither are its narrowed scopes.
                cached_narrowed = None;
                let found = match &inner.cache {
                    Some(cache) if policy_probed => {
                        waits.then_boxed(|| cache.load_policy(&key.tenant, policy_id)).await
                    }
                    Some(cache) => waits.then_boxed(|| cache.get_policy(&key.tenant, policy_id)).await,
                    None => match inner.store.get_policy_ready(&key.tenant, policy_id) {
                        Some(found) => found,
                        None => waits.then(|| inner.store.get_policy(&key.tenant, policy_id)).await,
                    },
                };
                Some(found.map_err(fail)?.ok_or_else(|| fail(Error::not_found("policy", policy_id)))?)
            }
            None => None,
        };

        // 4. Expiry time and maximum age.
        if self.is_expired(&key, policy.as_deref(), now) {
            if key.state == KeyState::Active {
                // Rare: boxed, so that every validation's future stays small.
                waits.then_boxed(|| self.mark_expired(&key, now)).await.map_err(fail)?;
            }
            return Err(refuse(Refusal::Expired, &key));
        }

        let Some(policy) = policy else {
            let missing = ctx.required_scopes.missing_from(&key.scopes);
            if !missing.is_empty() {
                return Err(refuse(Refusal::InsufficientScope { missing, one_of: false }, &key));
            }
            let mut validation = Validation::new(key, None, RateLimitStates::default(), None, now);
            // 10. Credits.
            if credits_subject(&validation.key, None).is_some() {
                validation = Box::pin(self.spend_credits(validation, ctx.cost(), waits)).await?;
            }
            self.touch(&validation.key, now);
            return Ok(validation);
        };

        // 5. Client address.
        if !policy.allows_ip(ctx.ip) {
            return Err(refuse(Refusal::IpNotAllowed, &key));
        }
        // 6. Origin, when the request has one.
        if let Some(origin) = ctx.origin
            && !policy.allows_origin(origin)
        {
            return Err(refuse(Refusal::OriginNotAllowed, &key));
        }
        // 7. Required scopes, within what the policy allows.
        let narrowed = cached_narrowed.unwrap_or_else(|| scope::narrow(&key.scopes, &policy.allowed_scopes));
        let missing = ctx.required_scopes.missing_from(narrowed.as_deref().unwrap_or(&key.scopes));
        if !missing.is_empty() {
            return Err(refuse(Refusal::InsufficientScope { missing, one_of: false }, &key));
        }
        // 8. Rate limits, every one; a limit that refuses gives back what
        // the earlier ones counted.
        // The validation is made here, so that each limit's state is pushed
        // where it stays.
        let mut validation = Validation::new(key, None, RateLimitStates::default(), narrowed, now);
        let key = &validation.key;
        let subject = limit_subject(key, &policy);
        for limit in &policy.rate_limits {
            // The common answer is taken where the limiter left it; only
            // another one moves on. The subject is made afresh for the call
            // rather than read back from the future, where it was stored in
            // pieces.
            let status = match inner.limiter.check_ready(limit_subject(key, &policy), limit, now) {
                Some(Ok(status)) => status,
                ready => {
                    let checked = match ready {
                        Some(checked) => checked,
                        None => {
                            if waits == Waits::Never {
                                self.refund_rate_limits(
                                    subject,
                                    &policy.rate_limits[..validation.rate_limits.len()],
                                    now,
                                );
                            }
                            waits.then(|| inner.limiter.check(subject, limit, now)).await
                        }
                    };
                    match checked {
                        Ok(status) => status,
                        Err(error) => {
                            self.refund_rate_limits(subject, &policy.rate_limits[..validation.rate_limits.len()], now);
                            return Err(fail(error));
                        }
                    }
                }
            };
            if !status.allowed {
                self.refund_rate_limits(subject, &policy.rate_limits[..validation.rate_limits.len()], now);
                let retry_after = status.retry_after.unwrap_or(status.reset);
                if !inner.hooks.is_empty() {
                    // Boxed only for an engine with hooks: a refusal on the
                    // ready path allocates nothing for them.
                    let event = || Event::KeyRateLimited { key_id: key.id, tenant: key.tenant.clone(), retry_after };
                    Box::pin(self.emit(event)).await;
                }
                return Err(refuse(Refusal::RateLimited { limit: limit.clone(), retry_after, status }, key));
            }
            validation.rate_limits.0.push(status);
        }
        // 9. Quota; only a request that passes everything is counted.
        if let Some(quota) = &policy.quota {
            let ready = inner.quotas.try_consume_ready(key, subject, quota, now).map(Ok);
            let consumed = match ready {
                Some(ready) => ready,
                None => {
                    if waits == Waits::Never {
                        self.refund_rate_limits(subject, &policy.rate_limits, now);
                    }
                    waits.then(|| inner.quotas.try_consume(&*inner.store, key, subject, quota, now)).await
                }
            };
            let consumed = match consumed {
                Ok(consumed) => consumed,
                Err(error) => {
                    self.refund_rate_limits(subject, &policy.rate_limits, now);
                    return Err(fail(error));
                }
            };
            match consumed {
                Ok(left) => validation.quota = left,
                Err(period) => {
                    self.refund_rate_limits(subject, &policy.rate_limits, now);
                    let resets_at = period.next_start(now);
                    if !inner.hooks.is_empty() {
                        let event =
                            || Event::QuotaExceeded { key_id: key.id, tenant: key.tenant.clone(), period, resets_at };
                        Box::pin(self.emit(event)).await;
                    }
                    let used_up = if period == Period::Month { quota.monthly } else { quota.daily };
                    let refusal = Refusal::QuotaExceeded { resets_at, period, quota: used_up.unwrap_or_default() };
                    return Err(refuse(refusal, key));
                }
            }
        }

        validation.policy = Some(policy);
        // 10. Credits, last: what the request spent above is given back if
        // they refuse it.
        if credits_subject(&validation.key, validation.policy.as_deref()).is_some() {
            validation = Box::pin(self.spend_credits(validation, ctx.cost(), waits)).await?;
        }
        self.touch(&validation.key, now);
        Ok(validation)
    }

    /// Spends the request's cost from the credits of the key's lineage, or,
    /// when it has none, of its owner under `limit_by: owner`; a refusal
    /// gives back the rate-limit request and the quota request it had spent.
    async fn spend_credits(
        &self, mut validation: Validation, cost: u64, waits: Waits,
    ) -> Result<Validation, (ValidationError, Option<Arc<Key>>)> {
        let store = &self.inner.store;
        let (key, now) = (&validation.key, validation.checked_at);
        let ready = match credits_subject(key, validation.policy.as_deref()) {
            Some(Subject::Owner { tenant, owner_id }) => match &self.inner.cache {
                Some(cache) => cache.spend_owner_credits_ready(tenant, owner_id, cost, now),
                None => store.spend_owner_credits_ready(tenant, owner_id, cost, now),
            },
            Some(Subject::Key(_)) => store.spend_credits_ready(key, cost, now),
            None => Some(Ok(CreditSpend::Unlimited)),
        };
        let spent = match ready {
            Some(spent) => spent,
            None => {
                if waits == Waits::Never {
                    self.refund_limits(&validation);
                }
                let waited = || async {
                    match credits_subject(key, validation.policy.as_deref()) {
                        Some(Subject::Owner { tenant, owner_id }) => match &self.inner.cache {
                            Some(cache) => cache.spend_owner_credits(tenant, owner_id, cost, now).await,
                            None => store.spend_owner_credits(tenant, owner_id, cost, now).await,
                        },
                        Some(Subject::Key(_)) => store.spend_credits(key, cost, now).await,
                        None => Ok(CreditSpend::Unlimited),
                    }
                };
                waits.then(waited).await
            }
        };
        match spent {
            Ok(CreditSpend::Spent(credits)) => {
                validation.credits = Some(credits.status(cost, now));
                Ok(validation)
            }
            Ok(CreditSpend::Unlimited) => Ok(validation),
            Ok(CreditSpend::Exhausted(credits)) => {
                self.refund_limits(&validation);
                // Nothing was spent: the status's cost is 0.
                let status = credits.status(0, now);
                let refusal = Refusal::CreditsExhausted { refills_at: status.refills_at, status };
                Err((refusal.into(), Some(Arc::clone(&validation.key))))
            }
            Err(error) => {
                self.refund_limits(&validation);
                Err((error.into(), None))
            }
        }
    }

    /// Gives back what a validated request spent, because it was refused
    /// after validation (a route's scope requirement): its rate-limit
    /// request, its quota request and its credits go back to the key's
    /// lineage (credits kept by a SQL store are given back by a task on the
    /// current Tokio runtime), and the
    /// validation is marked so that no usage is recorded for it. A refused
    /// request spends nothing.
    ///
    /// Never waits. True the first time; a second refund of the same
    /// validation (or of a clone made after the first) gives nothing. To
    /// answer the request only once its credits are back, so that the key's
    /// next request finds them, await [`refund_then`](Self::refund_then)
    /// instead (the adapters' `RequireScopes` do).
    pub fn refund(&self, validation: &Validation) -> bool {
        self.refund_then(validation).detach()
    }

    /// [`refund`](Self::refund), awaitable: what an in-process limiter,
    /// quota counter or store gives back at once is back when this returns;
    /// the [`Refund`] completes once the rest is back too (a limiter or
    /// quota counter on a server, such as Redis, and credits a store writes
    /// later). Dropping it without awaiting it gives up that rest;
    /// [`Refund::detach`] gives it back in a task instead.
    pub fn refund_then(&self, validation: &Validation) -> Refund {
        if validation.refunded.swap(true, Ordering::AcqRel) {
            return Refund { refunded: false, pending: None };
        }
        let limits = self.refund_limits(validation);
        let credits = self.refund_credits(validation);
        let pending: Option<GiveBack> = match (limits.is_empty(), credits) {
            (true, credits) => credits,
            (false, credits) => Some(Box::pin(async move {
                for give_back in limits.into_iter().chain(credits) {
                    give_back.await;
                }
            })),
        };
        Refund { refunded: true, pending }
    }

    /// The credits part of [`refund_then`](Self::refund_then): the store's
    /// write still to await, if it did not answer at once.
    fn refund_credits(&self, validation: &Validation) -> Option<GiveBack> {
        let credits = validation.credits.filter(|c| c.cost > 0)?;
        // Past a refill since the spend, what it spent belonged to a period
        // whose credits the refill replaced: given back now, it would add to
        // the new period's.
        if credits.refills_at.is_some_and(|refill| refill <= self.inner.clock.now()) {
            return None;
        }
        let store = &self.inner.store;
        let key = &validation.key;
        // The owner's credits, or else the lineage's.
        let owner_id = match credits_subject(key, validation.policy.as_deref()) {
            Some(Subject::Owner { owner_id, .. }) => Some(owner_id),
            _ => None,
        };
        let ready = match owner_id {
            Some(owner_id) => store.refund_owner_credits_ready(&key.tenant, owner_id, credits.cost),
            None => store.refund_credits_ready(key, credits.cost),
        };
        match ready {
            Some(Ok(())) => None,
            Some(Err(error)) => {
                credits_refund_failed(key, &error);
                None
            }
            None => {
                let owner_id = owner_id.map(str::to_owned);
                let (store, key) = (Arc::clone(store), Arc::clone(key));
                Some(Box::pin(async move {
                    let refunded = match owner_id {
                        Some(owner_id) => store.refund_owner_credits(&key.tenant, &owner_id, credits.cost).await,
                        None => store.refund_credits(&key, credits.cost).await,
                    };
                    if let Err(error) = refunded {
                        credits_refund_failed(&key, &error);
                    }
                }))
            }
        }
    }

    /// Gives back the rate-limit request and the quota request `validation`
    /// spent: what a limiter or counter on a server still has to do, to
    /// await.
    fn refund_limits(&self, validation: &Validation) -> SmallVec<[GiveBack; 2]> {
        let mut pending = SmallVec::new();
        if let Some(policy) = &validation.policy {
            let subject = limit_subject(&validation.key, policy);
            let at = validation.checked_at;
            for limit in &policy.rate_limits[..validation.rate_limits.len()] {
                pending.extend(self.inner.limiter.refund_then(subject, limit, at));
            }
            if policy.quota.is_some() {
                pending.extend(self.inner.quotas.refund_then(subject, at));
            }
        }
        pending
    }

    /// Gives back one request counted at `at` against each of `limits`.
    fn refund_rate_limits(&self, subject: Subject<'_>, limits: &[RateLimit], at: DateTime<Utc>) {
        for limit in limits {
            self.inner.limiter.refund(subject, limit, at);
        }
    }

    /// Queues a `last_used_at` write unless one was queued (or stored) for
    /// this key within the interval.
    fn touch(&self, key: &Key, now: DateTime<Utc>) {
        let inner = &self.inner;
        // In microseconds: a comparison is one subtraction, with no calendar
        // arithmetic.
        let now_micros = crate::clock::unix_micros(now);
        let interval_micros = i64::try_from(inner.usage_config.last_used_interval.as_micros()).unwrap_or(i64::MAX);
        let recent = |at: i64| now_micros.saturating_sub(at) < interval_micros;
        // Stored `last_used_at` first (there once the write-back landed),
        // then the writes queued here.
        if key.last_used_at.is_some_and(|at| recent(crate::clock::unix_micros_near(at, now, now_micros))) {
            return;
        }
        if inner.touched.get(&key.id).is_some_and(|at| recent(*at)) {
            return;
        }
        match inner.touched.entry(key.id) {
            Entry::Occupied(entry) if recent(*entry.get()) => return,
            Entry::Occupied(mut entry) => {
                entry.insert(now_micros);
            }
            Entry::Vacant(entry) => {
                entry.insert(now_micros);
            }
        }
        inner.usage.touch(key.id, now);
        if let Some(cache) = &inner.cache {
            cache.touched(key.id, now);
        }
        inner.touch_sweeps.maybe_sweep(inner.touched.len(), || {
            inner.touched.retain(|_, at| recent(*at));
            inner.touched.len()
        });
    }

    /// Moves an active key found past its expiry to `expired`, once.
    pub(super) async fn mark_expired(&self, key: &Key, now: DateTime<Utc>) -> Result<(), Error> {
        if let Some(expired) = self.apply_transition(key, &Transition::to(KeyState::Expired, now)).await? {
            self.committed(|| Change::key(&expired, None)).await;
            self.emit_transition(expired).await;
        }
        Ok(())
    }

    #[inline]
    pub(super) fn is_expired(&self, key: &Key, policy: Option<&Policy>, now: DateTime<Utc>) -> bool {
        let _ = self;
        key.expires_at.is_some_and(|at| at <= now)
            || crate::key::past_max_age(key, policy.and_then(|p| p.max_key_age), now)
    }
}

/// Counter: credits a refused request had spent that the store would not
/// take back (logged too, with the key's id).
const CREDIT_REFUNDS_FAILED: &str = "keysmith_credit_refunds_failed_total";

fn credits_refund_failed(key: &Key, error: &Error) {
    metrics::counter!(CREDIT_REFUNDS_FAILED).increment(1);
    tracing::warn!(key_id = %key.id, %error, "could not give back the credits of a refused request");
}

/// What [`Engine::refund_then`] gave back; a future that completes once
/// everything the refused request spent is back (its rate-limit and quota
/// requests on a server such as Redis, its credits in the store; at once
/// when all was given back in process), with whether this call refunded
/// anything (`false` for a validation refunded already).
#[must_use = "dropped, it gives up what it has not given back yet; await it or detach it"]
pub struct Refund {
    refunded: bool,
    /// The give-backs still to do: a limiter's or quota counter's on a
    /// server, the credits' write when the store could not answer at once.
    pending: Option<GiveBack>,
}

impl Refund {
    /// Whether everything is back already (nothing left to await).
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.pending.is_none()
    }

    /// Gives back the rest in a task on the current Tokio runtime, without
    /// waiting; whether this call refunded anything. Without a runtime it
    /// cannot be done: counted (`keysmith_credit_refunds_failed_total`)
    /// and logged.
    pub fn detach(self) -> bool {
        if let Some(pending) = self.pending {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(pending);
                }
                Err(_) => {
                    metrics::counter!(CREDIT_REFUNDS_FAILED).increment(1);
                    tracing::warn!("could not give back what a refused request spent: no Tokio runtime");
                }
            }
        }
        self.refunded
    }
}

impl Future for Refund {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        if let Some(pending) = self.pending.as_mut() {
            std::task::ready!(pending.as_mut().poll(cx));
            self.pending = None;
        }
        Poll::Ready(self.refunded)
    }
}

impl fmt::Debug for Refund {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refund").field("refunded", &self.refunded).field("done", &self.is_done()).finish()
    }
}

/// Whether a validation may wait for a step that does not answer at once
/// (a store without a ready answer, a limiter or quota counter on a server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waits {
    /// It awaits the step.
    Allowed,
    /// It stops there for good, after giving back what it had spent: the
    /// caller ([`Engine::validate_ready`]) drops it and validates again
    /// with waiting allowed.
    Never,
}

impl Waits {
    /// The future `step` makes, or, when waiting is not allowed, a future
    /// that never ends (`step` is not called: a store's boxed future is not
    /// even made).
    async fn then<T, F: Future<Output = T>>(self, step: impl FnOnce() -> F) -> T {
        match self {
            Self::Allowed => step().await,
            Self::Never => std::future::pending().await,
        }
    }

    /// [`then`](Self::then) with `step`'s future boxed (a rare or large
    /// step, kept out of every validation's future); when waiting is not
    /// allowed nothing is boxed.
    async fn then_boxed<T, F: Future<Output = T>>(self, step: impl FnOnce() -> F) -> T {
        match self {
            Self::Allowed => Box::pin(step()).await,
            Self::Never => std::future::pending().await,
        }
    }
}

/// The key a lookup by `hash` found, if its hash is `hash` (compared in
/// constant time); else the refusal of an unknown key, or the store's error.
fn confirmed(found: Result<Option<StoredKey>, Error>, hash: &KeyHash) -> Result<Arc<Key>, ValidationError> {
    match found {
        Ok(Some(stored)) if stored.hash.ct_eq(hash) => Ok(stored.key),
        Ok(_) => Err(Refusal::Unknown.into()),
        Err(error) => Err(error.into()),
    }
}

/// A validation's error that concerns no key the hooks should hear of.
fn unattributed(error: ValidationError) -> (ValidationError, Option<Arc<Key>>) {
    (error, None)
}

/// Refuses a restriction to an app or a tenant whose id is not an identity
/// ([`validate_id`](crate::validate_id)): no key can be of it.
fn check_restriction(ctx: &RequestContext<'_>) -> Result<(), Error> {
    if let Some(app_id) = ctx.app_id {
        crate::validate_id("app_id", app_id)?;
    }
    if let Some(tenant_id) = ctx.tenant_id {
        crate::validate_id("tenant_id", tenant_id)?;
        // Tenant ids are per application: alone, one would let through
        // every application's tenant of that name.
        if ctx.app_id.is_none() {
            return Err(Error::invalid("tenant_id", "restricts to a tenant of an application: set app_id too"));
        }
    }
    Ok(())
}

/// Whose budget the policy's rate limits and quota count for `key`: its
/// owner's under `limit_by: owner` (every key of the owner shares it), else
/// its lineage (a rotation shares its predecessor's budget). A key without
/// an owner keeps its lineage's budget even under `limit_by: owner`.
fn limit_subject<'a>(key: &'a Key, policy: &Policy) -> Subject<'a> {
    match (policy.limit_by, key.owner_id.as_deref()) {
        (LimitBy::Owner, Some(owner_id)) => Subject::Owner { tenant: &key.tenant, owner_id },
        _ => Subject::Key(key.lineage_id),
    }
}

/// Whose credits a request with `key` spends, if any can: its lineage's
/// when the lineage has credits, else its owner's when its policy's limits
/// are the owner's (whether the owner has credits is the store's to say).
///
/// A key of an owner under `limit_by: owner` is refused credits of its own,
/// but one can still hold some: given in a race with the policy's switch to
/// owner, or from before that rule. It spends them, and is refused when they
/// run out, rather than pass for free on an owner without credits.
fn credits_subject<'a>(key: &'a Key, policy: Option<&Policy>) -> Option<Subject<'a>> {
    if key.credits.is_some() {
        return Some(Subject::Key(key.lineage_id));
    }
    match policy.map(|policy| limit_subject(key, policy)) {
        Some(owner @ Subject::Owner { .. }) => Some(owner),
        _ => None,
    }
}
