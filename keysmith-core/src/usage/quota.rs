//! Quota counting: what the store's aggregates say plus what this instance
//! accepted and has not written yet, per subject: a credential lineage (the
//! keys rotation made from one another share one quota) or, under a policy
//! with `limit_by: owner`, an owner (every key of one customer shares one
//! quota).
//!
//! Bound: on one instance a quota is never exceeded (check and count are one
//! atomic step per subject). With several instances, each sees the others'
//! usage once they have written it (their flush interval) and it has re-read
//! the aggregates (`quota_refresh`): a subject can overshoot by at most what
//! the other instances accept within one flush interval plus one refresh
//! interval.
//!
//! A re-read must not count a batch twice: once in the aggregates it read
//! and once more as "accepted, not written yet". The writer announces each
//! batch ([`QuotaTracker::begin_write`]) and says when it is done
//! ([`QuotaTracker::end_write`]); a re-read is kept only if no batch was
//! being written from before it started until it is applied, so what it
//! read and what is pending never overlap. A re-read that raced a write is
//! dropped (the next request reads again).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;

use super::Period;
use crate::bounded::SweepSchedule;
use crate::limit::{Holder, Subject};
use crate::store::TimeRange;
use crate::{Key, KeyId, Quota, Result, Store, Tenant};

/// Counts requests against daily and monthly quotas, per subject: a
/// credential lineage (the keys rotation made from one another share one
/// quota) or an owner (under `limit_by: owner`, every key of one customer
/// shares one quota), the same subject the rate limits count for.
///
/// The engine's default counts in process from the store's aggregates (exact
/// on one instance; with several, each may overshoot by what the others
/// accepted and have not written yet). A counter shared by a fleet (Redis)
/// plugs in through
/// [`EngineBuilder::with_quotas`](crate::EngineBuilder::with_quotas).
///
/// A counter answers, for a request that fits, what is left of the day and
/// of the month once it is counted ([`QuotaRemaining`], which the
/// `RateLimit` headers report when a quota is closest to refusing), and for
/// one that does not, the [`Period`] whose quota is used up.
/// [`QuotaRemaining::check`] makes that answer from the counts a counter
/// holds.
#[async_trait]
pub trait QuotaCounter: Send + Sync + fmt::Debug + 'static {
    /// Counts one request of `key`, made at `now`, for `subject` (the key's
    /// lineage, or its owner under `limit_by: owner`) if it fits `quota` in
    /// both its day and its month: `Ok(Ok(left))` with what is left of
    /// each once it is counted; `Ok(Err(period))` when it does not fit,
    /// with the period whose quota is used up ([`Period::Month`] if both
    /// are, else [`Period::Day`]; it resets at `period.next_start(now)`).
    /// A refused request is not counted. `store` is the engine's, for
    /// counters that read what it has recorded ([`stored_requests`]).
    ///
    /// # Errors
    /// The counter's backend failed (adapters answer 503).
    async fn try_consume(
        &self, store: &dyn Store, key: &Key, subject: Subject<'_>, quota: &Quota, now: DateTime<Utc>,
    ) -> Result<Result<QuotaRemaining, Period>>;

    /// [`try_consume`](Self::try_consume) when it can answer at once
    /// without I/O (the counter is in memory and fresh), with the same
    /// answer; `None` sends the engine to `try_consume`. The default is
    /// `None`: a counter on a server always waits.
    fn try_consume_ready(
        &self, key: &Key, subject: Subject<'_>, quota: &Quota, now: DateTime<Utc>,
    ) -> Option<Result<QuotaRemaining, Period>> {
        let _ = (key, subject, quota, now);
        None
    }

    /// Gives back a request of `subject` counted at `at` that was refused
    /// afterwards. Never waits: a counter on a server refunds in the
    /// background.
    fn refund(&self, subject: Subject<'_>, at: DateTime<Utc>);

    /// [`refund`](Self::refund), awaitable, as
    /// [`RateLimiter::refund_then`](crate::limit::RateLimiter::refund_then):
    /// a counter on a server answers the give-back's future; `None` (the
    /// default, which calls `refund`) when it was given back at once.
    fn refund_then(&self, subject: Subject<'_>, at: DateTime<Utc>) -> Option<crate::limit::GiveBack> {
        self.refund(subject, at);
        None
    }
}

/// What is left of a subject's daily and monthly quota once a request is
/// counted: a [`QuotaCounter`]'s answer for a request that fits, kept in the
/// [`Validation`](crate::Validation) for the `RateLimit` headers. A period
/// the policy sets no quota for has nothing to say
/// ([`daily`](Self::daily) or [`monthly`](Self::monthly) is `None`).
///
/// Two numbers, no option flags: it travels with every validation.
///
/// ```
/// use keysmith_core::{Period, Quota, QuotaRemaining};
///
/// let quota = Quota { daily: Some(5), monthly: Some(100) };
/// // 4 requests today, 40 this month, counted already: the fifth fits.
/// let left = QuotaRemaining::check(&quota, 4, 40).unwrap();
/// assert_eq!((left.daily(), left.monthly()), (Some(0), Some(59)));
/// assert_eq!(QuotaRemaining::check(&quota, 5, 41), Err(Period::Day));
/// assert_eq!(QuotaRemaining::check(&quota, 5, 100), Err(Period::Month), "the month's, when both are used up");
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct QuotaRemaining {
    /// [`NO_QUOTA`] when the period has none (no quota comes near it:
    /// [`PolicySpec::MAX_QUOTA`](crate::PolicySpec::MAX_QUOTA)).
    daily: u64,
    monthly: u64,
}

/// What [`QuotaRemaining`] holds for a period without a quota.
const NO_QUOTA: u64 = u64::MAX;

impl Default for QuotaRemaining {
    fn default() -> Self {
        Self::NONE
    }
}

impl QuotaRemaining {
    /// No quota: what a validation under a policy without one carries.
    pub const NONE: Self = Self { daily: NO_QUOTA, monthly: NO_QUOTA };

    /// `daily` and `monthly` requests left (`None`: the period has no
    /// quota).
    #[must_use]
    pub fn new(daily: Option<u64>, monthly: Option<u64>) -> Self {
        let held = |left: Option<u64>| left.map_or(NO_QUOTA, |left| left.min(NO_QUOTA - 1));
        Self { daily: held(daily), monthly: held(monthly) }
    }

    /// What is left of `quota` once `day` requests of the day and `month`
    /// of the month are counted (the request being answered included).
    #[must_use]
    pub fn left(quota: &Quota, day: u64, month: u64) -> Self {
        Self::new(
            quota.daily.map(|limit| limit.saturating_sub(day)),
            quota.monthly.map(|limit| limit.saturating_sub(month)),
        )
    }

    /// A counter's answer for one more request when `day` requests of the
    /// day and `month` of the month are counted already: what is left once
    /// it is counted, or the period whose quota is used up (the month's when
    /// both are, as it resets last).
    ///
    /// # Errors
    /// The period whose quota leaves no room for the request.
    pub fn check(quota: &Quota, day: u64, month: u64) -> Result<Self, Period> {
        if quota.monthly.is_some_and(|limit| month >= limit) {
            return Err(Period::Month);
        }
        if quota.daily.is_some_and(|limit| day >= limit) {
            return Err(Period::Day);
        }
        Ok(Self::left(quota, day.saturating_add(1), month.saturating_add(1)))
    }

    /// Requests left today, if the policy has a daily quota.
    #[must_use]
    pub fn daily(self) -> Option<u64> {
        (self.daily != NO_QUOTA).then_some(self.daily)
    }

    /// Requests left this month, if the policy has a monthly quota.
    #[must_use]
    pub fn monthly(self) -> Option<u64> {
        (self.monthly != NO_QUOTA).then_some(self.monthly)
    }

    /// True when neither period has a quota ([`NONE`](Self::NONE)).
    #[must_use]
    pub fn is_none(self) -> bool {
        self == Self::NONE
    }
}

impl fmt::Debug for QuotaRemaining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaRemaining").field("daily", &self.daily()).field("monthly", &self.monthly()).finish()
    }
}

#[async_trait]
impl QuotaCounter for QuotaTracker {
    async fn try_consume(
        &self, store: &dyn Store, key: &Key, subject: Subject<'_>, quota: &Quota, now: DateTime<Utc>,
    ) -> Result<Result<QuotaRemaining, Period>> {
        Self::try_consume(self, store, key, subject, quota, now).await
    }

    fn try_consume_ready(
        &self, key: &Key, subject: Subject<'_>, quota: &Quota, now: DateTime<Utc>,
    ) -> Option<Result<QuotaRemaining, Period>> {
        Self::try_consume_ready(self, key, subject, quota, now)
    }

    fn refund(&self, subject: Subject<'_>, at: DateTime<Utc>) {
        Self::refund(self, subject, at);
    }
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    start: DateTime<Utc>,
    /// Requests the store holds for the period.
    stored: u64,
    /// Requests accepted here that the store does not hold yet.
    local: u64,
}

impl Counter {
    fn used(&self) -> u64 {
        self.stored + self.local
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    day: Counter,
    month: Counter,
    loaded_at: DateTime<Utc>,
}

/// Quota counters per subject (lineage or owner).
#[derive(Debug)]
pub(crate) struct QuotaTracker {
    entries: DashMap<Holder, Entry, foldhash::fast::RandomState>,
    /// The subject of each key counted here that is not the key's own id
    /// (a rotated key's successor counts for its lineage, an owner's key
    /// for its owner), to credit its written records.
    subject_of: DashMap<KeyId, Holder, foldhash::fast::RandomState>,
    refresh: Duration,
    sweeps: SweepSchedule,
    /// Batches the writer has started and finished writing.
    writes_started: AtomicU64,
    writes_done: AtomicU64,
}

impl QuotaTracker {
    pub(crate) fn new(refresh: Duration) -> Self {
        Self {
            entries: DashMap::default(),
            subject_of: DashMap::default(),
            refresh,
            sweeps: SweepSchedule::default(),
            writes_started: AtomicU64::new(0),
            writes_done: AtomicU64::new(0),
        }
    }

    /// Counts one request of `key` for `subject` if it fits `quota`, with
    /// what is left; otherwise says which period's quota is used up. A
    /// refused request consumes nothing.
    pub(crate) async fn try_consume(
        &self, store: &dyn Store, key: &Key, subject: Subject<'_>, quota: &Quota, now: DateTime<Utc>,
    ) -> Result<Result<QuotaRemaining, Period>> {
        let holder = Holder::of(subject);
        let periods = (Period::Day.start_of(now), Period::Month.start_of(now));
        let loaded = if self.is_fresh(&holder, periods, now) {
            None
        } else {
            let writes_seen = self.writes_done.load(Ordering::SeqCst);
            let counts = (
                stored_requests(store, &key.tenant, subject, Period::Day, now).await?,
                stored_requests(store, &key.tenant, subject, Period::Month, now).await?,
            );
            Some((counts, writes_seen))
        };
        Ok(self.consume(key, holder, periods, quota, now, loaded))
    }

    /// [`try_consume`](Self::try_consume) when the subject's counter is
    /// fresh (no store read needed); else `None`.
    pub(crate) fn try_consume_ready(
        &self, key: &Key, subject: Subject<'_>, quota: &Quota, now: DateTime<Utc>,
    ) -> Option<Result<QuotaRemaining, Period>> {
        let holder = Holder::of(subject);
        let periods = (Period::Day.start_of(now), Period::Month.start_of(now));
        self.is_fresh(&holder, periods, now).then(|| self.consume(key, holder, periods, quota, now, None))
    }

    /// True if `holder`'s counter is of these periods and was read from the
    /// store less than the refresh interval ago.
    fn is_fresh(&self, holder: &Holder, (day, month): (DateTime<Utc>, DateTime<Utc>), now: DateTime<Utc>) -> bool {
        self.entries.get(holder).is_some_and(|e| {
            e.day.start == day
                && e.month.start == month
                && (now - e.loaded_at).to_std().is_ok_and(|age| age < self.refresh)
        })
    }

    /// Counts the request against `holder`'s counter, with the store's
    /// counts when they were just `loaded` (with the writes seen before).
    fn consume(
        &self, key: &Key, holder: Holder, (day, month): (DateTime<Utc>, DateTime<Utc>), quota: &Quota,
        now: DateTime<Utc>, loaded: Option<((u64, u64), u64)>,
    ) -> Result<QuotaRemaining, Period> {
        if holder != Holder::Key(key.id) {
            if self.subject_of.get(&key.id).is_none_or(|h| *h != holder) {
                self.subject_of.insert(key.id, holder.clone());
            }
        } else if self.subject_of.contains_key(&key.id) {
            // Its policy went back from `limit_by: owner` to `key`.
            self.subject_of.remove(&key.id);
        }
        let mut entry = self
            .entries
            .entry(holder.clone())
            .and_modify(|e| {
                if let Some(((stored_day, stored_month), writes_seen)) = loaded {
                    // Under the entry's lock, as `on_written` is: no batch
                    // may have been in flight since before the read. A
                    // counter entering a new period holds nothing pending
                    // for it and takes the read regardless.
                    let overlapped = self.writes_started.load(Ordering::SeqCst) != writes_seen;
                    let reload = |c: Counter, start, stored| {
                        if overlapped && c.start == start { c } else { reloaded(c, start, stored) }
                    };
                    e.day = reload(e.day, day, stored_day);
                    e.month = reload(e.month, month, stored_month);
                    if !overlapped {
                        e.loaded_at = now;
                    }
                }
            })
            .or_insert_with(|| {
                // Nothing of this subject is pending here (entries with
                // pending requests are never evicted), so the read is exact.
                let ((stored_day, stored_month), _) = loaded.unwrap_or_default();
                Entry {
                    day: Counter { start: day, stored: stored_day, local: 0 },
                    month: Counter { start: month, stored: stored_month, local: 0 },
                    loaded_at: now,
                }
            });
        let left = QuotaRemaining::check(quota, entry.day.used(), entry.month.used())?;
        entry.day.local += 1;
        entry.month.local += 1;
        drop(entry);
        self.sweeps.maybe_sweep(self.entries.len(), || self.evict_idle(now, &holder));
        Ok(left)
    }

    /// Gives back a request of `subject` counted at `at` that was refused
    /// afterwards (and so will never be written).
    pub(crate) fn refund(&self, subject: Subject<'_>, at: DateTime<Utc>) {
        if let Some(mut entry) = self.entries.get_mut(&Holder::of(subject)) {
            let entry = &mut *entry;
            for (counter, period) in [(&mut entry.day, Period::Day), (&mut entry.month, Period::Month)] {
                if counter.start == period.start_of(at) {
                    counter.local = counter.local.saturating_sub(1);
                }
            }
        }
    }

    /// Drops entries that hold nothing the store does not: stale (they would
    /// be re-read anyway) and with every accepted request written.
    fn evict_idle(&self, now: DateTime<Utc>, keep: &Holder) -> usize {
        let refresh = chrono::Duration::from_std(self.refresh).unwrap_or(chrono::Duration::MAX);
        self.entries.retain(|holder, e| {
            holder == keep || e.day.local > 0 || e.month.local > 0 || now.signed_duration_since(e.loaded_at) < refresh
        });
        self.subject_of.retain(|_, holder| self.entries.contains_key(holder));
        self.entries.len()
    }

    /// The writer is about to write a batch.
    pub(crate) fn begin_write(&self) {
        self.writes_started.fetch_add(1, Ordering::SeqCst);
    }

    /// The batch announced by [`begin_write`](Self::begin_write) is done:
    /// `written` are the records now in the store (none if it failed).
    pub(crate) fn end_write(&self, written: impl Iterator<Item = (KeyId, DateTime<Utc>, u64)>) {
        self.on_written(written);
        self.writes_done.fetch_add(1, Ordering::SeqCst);
    }

    /// Moves written records from "accepted here" to "in the store".
    fn on_written(&self, requests: impl Iterator<Item = (KeyId, DateTime<Utc>, u64)>) {
        if self.entries.is_empty() {
            return;
        }
        for (key_id, at, count) in requests {
            let holder = self.subject_of.get(&key_id).map_or(Holder::Key(key_id), |h| h.clone());
            if let Some(mut entry) = self.entries.get_mut(&holder) {
                let entry = &mut *entry;
                for (counter, period) in [(&mut entry.day, Period::Day), (&mut entry.month, Period::Month)] {
                    // Only what was counted as pending moves: a record the
                    // last read already saw is not counted again.
                    if counter.start == period.start_of(at) {
                        let moved = count.min(counter.local);
                        counter.local -= moved;
                        counter.stored += moved;
                    }
                }
            }
        }
    }
}

/// A counter after re-reading the store: a new period starts from the store
/// alone; the same period keeps its unwritten requests (the read raced no
/// write, so it holds none of them).
fn reloaded(current: Counter, start: DateTime<Utc>, stored: u64) -> Counter {
    if current.start == start {
        Counter { start, stored, local: current.local }
    } else {
        Counter { start, stored, local: 0 }
    }
}

/// The requests `store` holds for `subject` in the `period` containing
/// `at`: what a quota counter starts from. A lineage is read in `tenant`
/// (the key's), an owner in its own tenant.
///
/// # Errors
/// The store failed.
pub async fn stored_requests(
    store: &dyn Store, tenant: &Tenant, subject: Subject<'_>, period: Period, at: DateTime<Utc>,
) -> Result<u64> {
    let start = period.start_of(at);
    let range = TimeRange { from: Some(start), to: Some(period.next_start(start)) };
    let totals = match subject {
        Subject::Key(lineage) => store.lineage_usage(tenant, lineage, period, range).await?,
        Subject::Owner { tenant, owner_id } => store.owner_usage(tenant, owner_id, period, range).await?,
    };
    Ok(totals.iter().map(|t| t.requests).sum())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::Hasher as _;
    use crate::store::{KeyStore as _, UsageStore as _};
    use crate::{Environment, KeyState, MemoryStore, Tenant, UsageId};

    /// An active key of `tenant` made at `at`.
    pub(in crate::usage) fn key(tenant: &Tenant, at: DateTime<Utc>) -> Key {
        let id = KeyId::new();
        Key {
            id,
            lineage_id: id,
            name: "k".into(),
            hint: "sk_live_…abcd".into(),
            prefix: "sk".into(),
            environment: Environment::Live,
            state: KeyState::Active,
            scopes: vec![],
            tenant: tenant.clone(),
            owner_id: None,
            credits: None,
            policy_id: None,
            expires_at: None,
            grace_expires_at: None,
            revoked_reason: None,
            last_used_at: None,
            created_at: at,
            updated_at: at,
            metadata: serde_json::Map::new(),
        }
    }

    fn record(key: &Key, at: DateTime<Utc>) -> crate::UsageRecord {
        crate::UsageRecord {
            id: UsageId::new(),
            key_id: key.id,
            tenant: (&key.tenant).into(),
            endpoint: "/".into(),
            method: "GET".into(),
            status: 200,
            ip: None,
            user_agent: None,
            latency: Duration::ZERO,
            timestamp: at,
        }
    }

    #[tokio::test]
    async fn written_records_move_to_the_subject_their_key_was_last_counted_for() {
        let store = MemoryStore::new();
        let tenant = Tenant::new("app", "acme");
        let now = DateTime::parse_from_rfc3339("2026-05-05T10:00:00Z").unwrap().to_utc();
        let quota = Quota { daily: Some(10), monthly: None };
        let tracker = QuotaTracker::new(Duration::from_secs(5));
        let mut owned = key(&tenant, now);
        owned.owner_id = Some("cust_1".into());
        let owner = Subject::Owner { tenant: &tenant, owner_id: "cust_1" };
        let counts = |subject| {
            let entry = tracker.entries.get(&Holder::of(subject)).unwrap();
            (entry.day.stored, entry.day.local)
        };
        // Under `limit_by: owner`, then (the policy changed) under `key`.
        for subject in [owner, Subject::Key(owned.lineage_id)] {
            let left = tracker.try_consume(&store, &owned, subject, &quota, now).await.unwrap();
            assert_eq!(left, Ok(QuotaRemaining::new(Some(9), None)));
            assert_eq!(counts(subject), (0, 1));
            tracker.begin_write();
            tracker.end_write([(owned.id, now, 1)].into_iter());
            assert_eq!(counts(subject), (1, 0), "the written request left what was pending");
        }
        assert_eq!(counts(owner), (1, 0), "the owner was not credited the lineage's request");
    }

    #[tokio::test]
    async fn entries_with_unwritten_requests_survive_eviction() {
        let store = MemoryStore::new();
        let tenant = Tenant::new("app", "acme");
        let now = DateTime::parse_from_rfc3339("2026-05-05T10:00:00Z").unwrap().to_utc();
        let quota = Quota { daily: Some(10), monthly: None };
        let tracker = QuotaTracker::new(Duration::from_secs(5));
        let (written, pending) = (key(&tenant, now), key(&tenant, now));
        for k in [&written, &pending] {
            let hash = crate::Sha256Hasher.hash(&k.id.to_string());
            store.insert_key(&crate::store::StoredKey { key: std::sync::Arc::new(k.clone()), hash }).await.unwrap();
        }
        for k in [&written, &pending] {
            assert!(tracker.try_consume(&store, k, Subject::Key(k.lineage_id), &quota, now).await.unwrap().is_ok());
        }
        tracker.begin_write();
        tracker.end_write([(written.id, now, 1)].into_iter());
        let later = now + chrono::Duration::seconds(6);
        assert_eq!(tracker.evict_idle(later, &Holder::Key(KeyId::new())), 1);
        assert!(tracker.entries.contains_key(&Holder::Key(pending.id)));
        // The evicted key is re-read from the store and still counts its request.
        store.record_batch(&[record(&written, now)]).await.unwrap();
        for left in (0..9).rev() {
            assert_eq!(
                tracker.try_consume(&store, &written, Subject::Key(written.lineage_id), &quota, later).await.unwrap(),
                Ok(QuotaRemaining::new(Some(left), None))
            );
        }
        assert!(
            tracker
                .try_consume(&store, &written, Subject::Key(written.lineage_id), &quota, later)
                .await
                .unwrap()
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_tracker_answers_what_is_left_of_the_day_and_the_month() {
        let store = MemoryStore::new();
        let tenant = Tenant::new("app", "acme");
        let now = DateTime::parse_from_rfc3339("2026-05-30T10:00:00Z").unwrap().to_utc();
        let quota = Quota { daily: Some(3), monthly: Some(4) };
        let tracker = QuotaTracker::new(Duration::from_secs(3600));
        let k = key(&tenant, now);
        let subject = Subject::Key(k.lineage_id);
        let mut answers = vec![tracker.try_consume(&store, &k, subject, &quota, now).await.unwrap()];
        for _ in 0..3 {
            answers.push(tracker.try_consume_ready(&k, subject, &quota, now).unwrap());
        }
        let left = |day, month| Ok(QuotaRemaining::new(Some(day), Some(month)));
        assert_eq!(answers, [left(2, 3), left(1, 2), left(0, 1), Err(Period::Day)]);
        tracker.refund(subject, now);
        assert_eq!(tracker.try_consume_ready(&k, subject, &quota, now).unwrap(), left(0, 1), "a refund is left again");
        // The next day of the same month: a fresh day, the month's last request.
        let tomorrow = now + chrono::Duration::days(1);
        assert_eq!(tracker.try_consume(&store, &k, subject, &quota, tomorrow).await.unwrap(), left(2, 0));
        assert_eq!(tracker.try_consume_ready(&k, subject, &quota, tomorrow).unwrap(), Err(Period::Month));
    }
}
