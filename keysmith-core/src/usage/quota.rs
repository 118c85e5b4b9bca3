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
}

impl QuotaTracker {
    pub(crate) fn new(refresh: Duration) -> Self {
        Self { entries: DashMap::default(), refresh }
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
        Ok(Ok(()))
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
