//! Usage records, kept up to the retention, and their roll-ups.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Page, TimeRange, UsageStore, UsageTotal};
use crate::usage::{UsageBatch, UsageCounts, UsageDelta, fold_rollups};
use crate::{KeyId, Period, Result, Tenant, UsageAggregate, UsageId, UsageRecord};

use super::{MemoryStore, UsageTables};

/// The ids of the most recent usage records written, at least as many as
/// the store retains, so that a replayed record among them counts once.
///
/// Kept in two generations: when the newer one holds a retention's worth,
/// it becomes the older and the older one is emptied for reuse. So an id is
/// never removed one by one (a probe into a table the size of the retention
/// for every record written, mostly missing the CPU's caches), and a swept
/// or evicted record's id is remembered a while longer, which only keeps a
/// replay of it from counting twice.
#[derive(Debug)]
pub(super) struct RecentIds {
    newer: HashSet<UsageId, foldhash::fast::RandomState>,
    older: HashSet<UsageId, foldhash::fast::RandomState>,
    /// How many ids the newer generation takes before it turns older.
    generation: usize,
}

impl RecentIds {
    /// Room for at least `retention` ids (at least one).
    pub(super) fn new(retention: usize) -> Self {
        Self { newer: HashSet::default(), older: HashSet::default(), generation: retention.max(1) }
    }

    /// Remembers `id`; false if it was already remembered (a replay).
    fn insert(&mut self, id: UsageId) -> bool {
        if self.older.contains(&id) || !self.newer.insert(id) {
            return false;
        }
        if self.newer.len() >= self.generation {
            std::mem::swap(&mut self.newer, &mut self.older);
            self.newer.clear();
        }
        true
    }
}

#[async_trait]
impl UsageStore for MemoryStore {
    async fn write_usage(&self, batch: &UsageBatch<'_>) -> Result<()> {
        let mut guard = self.write_usage()?;
        let tables = &mut *guard;
        let mut fresh = Vec::with_capacity(batch.records.len());
        for record in batch.records {
            // Idempotent per record id, like the SQL stores: a replayed batch counts once.
            if !tables.ids.insert(record.id) {
                continue;
            }
            tables.records.push_back(record.clone());
            while tables.records.len() > tables.retention {
                tables.records.pop_front();
            }
            fresh.push(record);
        }
        // Deltas count once per batch id.
        let deltas: &[UsageDelta] = if batch.deltas.is_empty() {
            &[]
        } else {
            let written = batch.deltas.iter().map(|d| d.hour).max().unwrap_or_default();
            match tables.batches.entry(batch.id) {
                Entry::Occupied(_) => &[],
                Entry::Vacant(slot) => {
                    slot.insert(written);
                    batch.deltas
                }
            }
        };
        for ((key_id, period, start), tenant, counts) in fold_rollups(fresh, deltas) {
            tables
                .aggregates
                .entry((key_id, period, start))
                .or_insert_with(|| UsageAggregate::empty(key_id, tenant.tenant().clone(), period, start))
                .add(&counts);
        }
        Ok(())
    }

    async fn delete_usage_before(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let mut guard = self.write_usage()?;
        let tables = &mut *guard;
        let mut left = limit;
        let first = UsageId::first_uuid_at(before);
        tables.records.retain(|r| {
            if left > 0 && r.id.uuid() < first {
                left -= 1;
                false
            } else {
                true
            }
        });
        tables.batches.retain(|_, written| *written >= before);
        Ok(u64::from(limit - left))
    }

    async fn delete_aggregates_before(&self, period: Period, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let mut guard = self.write_usage()?;
        let mut left = limit;
        guard.aggregates.retain(|(_, p, start), _| {
            if left > 0 && *p == period && *start < before {
                left -= 1;
                false
            } else {
                true
            }
        });
        Ok(u64::from(limit - left))
    }

    async fn list_usage(
        &self, tenant: &Tenant, key_id: KeyId, range: TimeRange, page: Page,
    ) -> Result<Vec<UsageRecord>> {
        let tables = self.read_usage()?;
        let mut records: Vec<&UsageRecord> = tables
            .records
            .iter()
            .filter(|r| r.key_id == key_id && r.tenant == *tenant && range.contains(r.timestamp))
            .collect();
        // Oldest first, as the SQL stores list them.
        records.sort_unstable_by_key(|r| (r.timestamp, r.id));
        Ok(page.apply(records.into_iter().cloned()))
    }

    async fn usage_aggregates(
        &self, tenant: &Tenant, key_id: KeyId, period: Period, range: TimeRange,
    ) -> Result<Vec<UsageAggregate>> {
        let tables = self.read_usage()?;
        let mut aggregates: Vec<UsageAggregate> = tables
            .aggregates
            .values()
            .filter(|a| {
                a.key_id == key_id && a.tenant == *tenant && a.period == period && range.contains(a.period_start)
            })
            .cloned()
            .collect();
        aggregates.sort_unstable_by_key(|a| a.period_start);
        Ok(aggregates)
    }

    async fn tenant_usage(&self, tenant: &Tenant, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>> {
        Ok(self.read_usage()?.totals(tenant, period, range, |_| true))
    }

    async fn lineage_usage(
        &self, tenant: &Tenant, lineage: KeyId, period: Period, range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        let members = self.read()?.lineages.get(&lineage).cloned().unwrap_or_default();
        Ok(self.read_usage()?.totals(tenant, period, range, |key_id| members.contains(&key_id)))
    }

    async fn owner_usage(
        &self, tenant: &Tenant, owner_id: &str, period: Period, range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        let owner = (tenant.clone(), owner_id.to_owned());
        let members = self.read()?.owners.get(&owner).cloned().unwrap_or_default();
        Ok(self.read_usage()?.totals(tenant, period, range, |key_id| members.contains(&key_id)))
    }
}

impl UsageTables {
    /// The tenant's aggregates of keys that `counted`, summed per period start.
    fn totals(
        &self, tenant: &Tenant, period: Period, range: TimeRange, counted: impl Fn(KeyId) -> bool,
    ) -> Vec<UsageTotal> {
        let mut totals: BTreeMap<DateTime<Utc>, UsageCounts> = BTreeMap::new();
        for a in self.aggregates.values() {
            if a.tenant == *tenant && a.period == period && range.contains(a.period_start) && counted(a.key_id) {
                totals.entry(a.period_start).or_default().add(&a.counts());
            }
        }
        totals.into_iter().map(|(start, counts)| UsageTotal::new(period, start, counts)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(tenant: &Tenant, key_id: KeyId, minute: i64) -> UsageRecord {
        UsageRecord {
            id: UsageId::new(),
            key_id,
            tenant: tenant.into(),
            endpoint: "/things".into(),
            method: "GET".into(),
            status: 200,
            ip: None,
            user_agent: None,
            latency: Duration::from_millis(1),
            timestamp: DateTime::from_timestamp(1_767_225_600 + minute * 60, 0).unwrap(),
        }
    }

    #[tokio::test]
    async fn only_the_most_recent_records_are_kept_but_every_one_is_counted() {
        let store = MemoryStore::with_usage_retention(3);
        let tenant = Tenant::new("app", "acme");
        let key_id = KeyId::new();
        let records: Vec<UsageRecord> = (0..5).map(|minute| record(&tenant, key_id, minute)).collect();
        store.record_batch(&records[..2]).await.unwrap();
        store.record_batch(&records[2..]).await.unwrap();

        let listed = store.list_usage(&tenant, key_id, TimeRange::default(), Page::default()).await.unwrap();
        assert_eq!(listed, records[2..].to_vec(), "the three most recent, oldest first");
        let days = store.usage_aggregates(&tenant, key_id, Period::Day, TimeRange::default()).await.unwrap();
        assert_eq!(days.iter().map(|d| d.requests).sum::<u64>(), 5, "roll-ups count every record");

        // A replayed record that is still retained counts once, whether it
        // was written before the ids remembered last turned over (2) or
        // after (3, 4).
        store.record_batch(&records[4..]).await.unwrap();
        store.record_batch(&records[2..]).await.unwrap();
        let days = store.usage_aggregates(&tenant, key_id, Period::Day, TimeRange::default()).await.unwrap();
        assert_eq!(days.iter().map(|d| d.requests).sum::<u64>(), 5);
        let listed = store.list_usage(&tenant, key_id, TimeRange::default(), Page::default()).await.unwrap();
        assert_eq!(listed.len(), 3);
    }
}
