//! Quota counting: what the store's aggregates say plus what this instance
//! accepted and has not written yet.
//!
//! Bound: on one instance a quota is never exceeded (check and count are one
//! atomic step per key). With several instances, each sees the others' usage
//! once they have written it (their flush interval) and it has re-read the
//! aggregates (`quota_refresh`): a key can overshoot by at most what the other
//! instances accept within one flush interval plus one refresh interval.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;

use super::{Period, UsageRecord};
use crate::bounded::SweepSchedule;
use crate::store::TimeRange;
use crate::{Key, KeyId, Quota, Result, Store};

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

/// Per-key quota counters.
#[derive(Debug)]
pub(crate) struct QuotaTracker {
    entries: DashMap<KeyId, Entry, foldhash::fast::RandomState>,
    refresh: Duration,
    sweeps: SweepSchedule,
}

impl QuotaTracker {
    pub(crate) fn new(refresh: Duration) -> Self {
        Self { entries: DashMap::default(), refresh, sweeps: SweepSchedule::default() }
    }

    /// Counts one request of `key` if it fits `quota`; otherwise says when
    /// the exhausted quota resets. A refused request consumes nothing.
    pub(crate) async fn try_consume(
        &self,
        store: &dyn Store,
        key: &Key,
        quota: &Quota,
        now: DateTime<Utc>,
    ) -> Result<Result<(), DateTime<Utc>>> {
        let day = Period::Day.start_of(now);
        let month = Period::Month.start_of(now);
        let fresh = self.entries.get(&key.id).is_some_and(|e| {
            e.day.start == day
                && e.month.start == month
                && (now - e.loaded_at).to_std().is_ok_and(|age| age < self.refresh)
        });
        let loaded = if fresh {
            None
        } else {
            Some((
                stored_count(store, key, Period::Day, day).await?,
                stored_count(store, key, Period::Month, month).await?,
            ))
        };
        let mut entry = self
            .entries
            .entry(key.id)
            .and_modify(|e| {
                if let Some((stored_day, stored_month)) = loaded {
                    e.day = reloaded(e.day, day, stored_day);
                    e.month = reloaded(e.month, month, stored_month);
                    e.loaded_at = now;
                }
            })
            .or_insert_with(|| {
                let (stored_day, stored_month) = loaded.unwrap_or_default();
                Entry {
                    day: Counter { start: day, stored: stored_day, local: 0 },
                    month: Counter { start: month, stored: stored_month, local: 0 },
                    loaded_at: now,
                }
            });
        let key_id = key.id;
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
        self.sweeps.maybe_sweep(self.entries.len(), || self.evict_idle(now, key_id));
        Ok(Ok(()))
    }

    /// Drops entries that hold nothing the store does not: stale (they would
    /// be re-read anyway) and with every accepted request written.
    fn evict_idle(&self, now: DateTime<Utc>, keep: KeyId) -> usize {
        let refresh = chrono::Duration::from_std(self.refresh).unwrap_or(chrono::Duration::MAX);
        self.entries.retain(|id, e| {
            *id == keep || e.day.local > 0 || e.month.local > 0 || now.signed_duration_since(e.loaded_at) < refresh
        });
        self.entries.len()
    }

    /// Moves written records from "accepted here" to "in the store".
    pub(crate) fn on_written(&self, records: &[UsageRecord]) {
        if self.entries.is_empty() {
            return;
        }
        for record in records {
            if let Some(mut entry) = self.entries.get_mut(&record.key_id) {
                let entry = &mut *entry;
                for (counter, period) in [(&mut entry.day, Period::Day), (&mut entry.month, Period::Month)] {
                    if counter.start == period.start_of(record.timestamp) {
                        counter.local = counter.local.saturating_sub(1);
                        counter.stored += 1;
                    }
                }
            }
        }
    }
}

/// A counter after re-reading the store: a new period starts from the store
/// alone; the same period keeps its unwritten requests and never goes below
/// what it already knew was written (a batch may land between the read and
/// this update).
fn reloaded(current: Counter, start: DateTime<Utc>, stored: u64) -> Counter {
    if current.start == start {
        Counter { start, stored: stored.max(current.stored), local: current.local }
    } else {
        Counter { start, stored, local: 0 }
    }
}

async fn stored_count(store: &dyn Store, key: &Key, period: Period, start: DateTime<Utc>) -> Result<u64> {
    let range = TimeRange { from: Some(start), to: Some(period.next_start(start)) };
    let aggregates = store.usage_aggregates(&key.tenant, key.id, period, range).await?;
    Ok(aggregates.iter().map(|a| a.requests).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::UsageStore as _;
    use crate::{Environment, KeyState, MemoryStore, Tenant, UsageId};

    fn key(tenant: &Tenant, at: DateTime<Utc>) -> Key {
        Key {
            id: KeyId::new(),
            name: "k".into(),
            hint: "sk_live_…abcd".into(),
            prefix: "sk".into(),
            environment: Environment::Live,
            state: KeyState::Active,
            scopes: vec![],
            tenant: tenant.clone(),
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
            tenant: key.tenant.clone(),
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
            assert_eq!(tracker.try_consume(&store, k, &quota, now).await.unwrap(), Ok(()));
        }
        tracker.on_written(&[record(&written, now)]);
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
