//! Quota counting: what the store's aggregates say plus what this instance
//! accepted and has not written yet, per credential lineage (the keys
//! rotation made from one another share one quota).
//!
//! Bound: on one instance a quota is never exceeded (check and count are one
//! atomic step per lineage). With several instances, each sees the others'
//! usage once they have written it (their flush interval) and it has re-read
//! the aggregates (`quota_refresh`): a lineage can overshoot by at most what
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

use super::{Period, UsageRecord};
use crate::bounded::SweepSchedule;
use crate::store::TimeRange;
use crate::{Key, KeyId, Quota, Result, Store};

/// Counts requests against daily and monthly quotas, per credential lineage
/// (the keys rotation made from one another share one quota).
///
/// The engine's default counts in process from the store's aggregates (exact
/// on one instance; with several, each may overshoot by what the others
/// accepted and have not written yet). A counter shared by a fleet (Redis)
/// plugs in through
/// [`EngineBuilder::with_quotas`](crate::EngineBuilder::with_quotas).
#[async_trait]
pub trait QuotaCounter: Send + Sync + fmt::Debug + 'static {
    /// Counts one request of `key`'s lineage, made at `now`, if it fits
    /// `quota` in both its day and its month; `Ok(Err(resets_at))` when it
    /// does not, with the time the exhausted quota resets (the month's if
    /// both are). A refused request is not counted. `store` is the engine's,
    /// for counters that read what it has recorded.
    ///
    /// # Errors
    /// The counter's backend failed (adapters answer 503).
    async fn try_consume(
        &self,
        store: &dyn Store,
        key: &Key,
        quota: &Quota,
        now: DateTime<Utc>,
    ) -> Result<Result<(), DateTime<Utc>>>;

    /// Gives back a request of `lineage` counted at `at` that was refused
    /// afterwards. Never waits: a counter on a server refunds in the
    /// background.
    fn refund(&self, lineage: KeyId, at: DateTime<Utc>);
}

#[async_trait]
impl QuotaCounter for QuotaTracker {
    async fn try_consume(
        &self,
        store: &dyn Store,
        key: &Key,
        quota: &Quota,
        now: DateTime<Utc>,
    ) -> Result<Result<(), DateTime<Utc>>> {
        Self::try_consume(self, store, key, quota, now).await
    }

    fn refund(&self, lineage: KeyId, at: DateTime<Utc>) {
        Self::refund(self, lineage, at);
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

/// Per-lineage quota counters.
#[derive(Debug)]
pub(crate) struct QuotaTracker {
    entries: DashMap<KeyId, Entry, foldhash::fast::RandomState>,
    /// The lineage of each key counted here whose id is not its lineage's
    /// (a rotated key's successor), to credit its written records.
    lineage_of: DashMap<KeyId, KeyId, foldhash::fast::RandomState>,
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
            lineage_of: DashMap::default(),
            refresh,
            sweeps: SweepSchedule::default(),
            writes_started: AtomicU64::new(0),
            writes_done: AtomicU64::new(0),
        }
    }

    /// Counts one request of `key`'s lineage if it fits `quota`; otherwise
    /// says when the exhausted quota resets. A refused request consumes
    /// nothing.
    pub(crate) async fn try_consume(
        &self,
        store: &dyn Store,
        key: &Key,
        quota: &Quota,
        now: DateTime<Utc>,
    ) -> Result<Result<(), DateTime<Utc>>> {
        let lineage = key.lineage_id;
        let day = Period::Day.start_of(now);
        let month = Period::Month.start_of(now);
        let fresh = self.entries.get(&lineage).is_some_and(|e| {
            e.day.start == day
                && e.month.start == month
                && (now - e.loaded_at).to_std().is_ok_and(|age| age < self.refresh)
        });
        let loaded = if fresh {
            None
        } else {
            let writes_seen = self.writes_done.load(Ordering::SeqCst);
            let counts = (
                stored_count(store, key, Period::Day, day).await?,
                stored_count(store, key, Period::Month, month).await?,
            );
            Some((counts, writes_seen))
        };
        if key.id != lineage && !self.lineage_of.contains_key(&key.id) {
            self.lineage_of.insert(key.id, lineage);
        }
        let mut entry = self
            .entries
            .entry(lineage)
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
                // Nothing of this lineage is pending here (entries with
                // pending requests are never evicted), so the read is exact.
                let ((stored_day, stored_month), _) = loaded.unwrap_or_default();
                Entry {
                    day: Counter { start: day, stored: stored_day, local: 0 },
                    month: Counter { start: month, stored: stored_month, local: 0 },
                    loaded_at: now,
                }
            });
        let day_full = quota.daily.is_some_and(|limit| entry.day.used() >= limit);
        let month_full = quota.monthly.is_some_and(|limit| entry.month.used() >= limit);
        if month_full {
            return Ok(Err(Period::Month.next_start(now)));
        }
        if day_full {
            return Ok(Err(Period::Day.next_start(now)));
        }
        entry.day.local += 1;
        entry.month.local += 1;
        drop(entry);
        self.sweeps.maybe_sweep(self.entries.len(), || self.evict_idle(now, lineage));
        Ok(Ok(()))
    }

    /// Gives back a request of `lineage` counted at `at` that was refused
    /// afterwards (and so will never be written).
    pub(crate) fn refund(&self, lineage: KeyId, at: DateTime<Utc>) {
        if let Some(mut entry) = self.entries.get_mut(&lineage) {
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
    fn evict_idle(&self, now: DateTime<Utc>, keep: KeyId) -> usize {
        let refresh = chrono::Duration::from_std(self.refresh).unwrap_or(chrono::Duration::MAX);
        self.entries.retain(|id, e| {
            *id == keep || e.day.local > 0 || e.month.local > 0 || now.signed_duration_since(e.loaded_at) < refresh
        });
        self.lineage_of.retain(|_, lineage| self.entries.contains_key(lineage));
        self.entries.len()
    }

    /// The writer is about to write a batch.
    pub(crate) fn begin_write(&self) {
        self.writes_started.fetch_add(1, Ordering::SeqCst);
    }

    /// The batch announced by [`begin_write`](Self::begin_write) is done:
    /// `written` are the records now in the store (none if it failed).
    pub(crate) fn end_write(&self, written: &[UsageRecord]) {
        self.on_written(written);
        self.writes_done.fetch_add(1, Ordering::SeqCst);
    }

    /// Moves written records from "accepted here" to "in the store".
    fn on_written(&self, records: &[UsageRecord]) {
        if self.entries.is_empty() {
            return;
        }
        for record in records {
            let lineage = self.lineage_of.get(&record.key_id).map_or(record.key_id, |l| *l);
            if let Some(mut entry) = self.entries.get_mut(&lineage) {
                let entry = &mut *entry;
                for (counter, period) in [(&mut entry.day, Period::Day), (&mut entry.month, Period::Month)] {
                    // Only what was counted as pending moves: a record the
                    // last read already saw is not counted again.
                    if counter.start == period.start_of(record.timestamp) && counter.local > 0 {
                        counter.local -= 1;
                        counter.stored += 1;
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

async fn stored_count(store: &dyn Store, key: &Key, period: Period, start: DateTime<Utc>) -> Result<u64> {
    let range = TimeRange { from: Some(start), to: Some(period.next_start(start)) };
    let totals = store.lineage_usage(&key.tenant, key.lineage_id, period, range).await?;
    Ok(totals.iter().map(|t| t.requests).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hasher as _;
    use crate::store::{KeyStore as _, UsageStore as _};
    use crate::{Environment, KeyState, MemoryStore, Tenant, UsageId};

    fn key(tenant: &Tenant, at: DateTime<Utc>) -> Key {
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

    fn record(key: &Key, at: DateTime<Utc>) -> UsageRecord {
        UsageRecord {
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
            assert_eq!(tracker.try_consume(&store, k, &quota, now).await.unwrap(), Ok(()));
        }
        tracker.begin_write();
        tracker.end_write(&[record(&written, now)]);
        let later = now + chrono::Duration::seconds(6);
        assert_eq!(tracker.evict_idle(later, KeyId::new()), 1);
        assert!(tracker.entries.contains_key(&pending.id));
        // The evicted key is re-read from the store and still counts its request.
        store.record_batch(&[record(&written, now)]).await.unwrap();
        for _ in 0..9 {
            assert_eq!(tracker.try_consume(&store, &written, &quota, later).await.unwrap(), Ok(()));
        }
        assert!(tracker.try_consume(&store, &written, &quota, later).await.unwrap().is_err());
    }
}
