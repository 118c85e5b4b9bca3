//! Usage records, kept up to the retention, and their roll-ups.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Page, TimeRange, UsageStore, UsageTotal};
use crate::{KeyId, Period, Result, Tenant, UsageAggregate, UsageRecord};

use super::{MemoryStore, UsageTables};

#[async_trait]
impl UsageStore for MemoryStore {
    async fn record_batch(&self, records: &[UsageRecord]) -> Result<()> {
        let mut guard = self.write_usage()?;
        let tables = &mut *guard;
        for record in records {
            // Idempotent per record id, like the SQL stores: a replayed batch counts once.
            if !tables.ids.insert(record.id) {
                continue;
            }
            tables.records.push_back(record.clone());
            while tables.records.len() > tables.retention {
                if let Some(oldest) = tables.records.pop_front() {
                    tables.ids.remove(&oldest.id);
                }
            }
            for period in [Period::Day, Period::Month] {
                let start = period.start_of(record.timestamp);
                let aggregate =
                    tables.aggregates.entry((record.key_id, period, start)).or_insert_with(|| UsageAggregate {
                        key_id: record.key_id,
                        tenant: record.tenant.tenant().clone(),
                        period,
                        period_start: start,
                        requests: 0,
                        errors: 0,
                    });
                aggregate.requests += 1;
                aggregate.errors += u64::from(record.is_error());
            }
        }
        Ok(())
    }

    async fn list_usage(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        range: TimeRange,
        page: Page,
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
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        period: Period,
        range: TimeRange,
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
        &self,
        tenant: &Tenant,
        lineage: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        let members = self.read()?.lineages.get(&lineage).cloned().unwrap_or_default();
        Ok(self.read_usage()?.totals(tenant, period, range, |key_id| members.contains(&key_id)))
    }

    async fn owner_usage(
        &self,
        tenant: &Tenant,
        owner_id: &str,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        let owner = (tenant.clone(), owner_id.to_owned());
        let members = self.read()?.owners.get(&owner).cloned().unwrap_or_default();
        Ok(self.read_usage()?.totals(tenant, period, range, |key_id| members.contains(&key_id)))
    }
}

impl UsageTables {
    /// The tenant's aggregates of keys that `counted`, summed per period start.
    fn totals(
        &self,
        tenant: &Tenant,
        period: Period,
        range: TimeRange,
        counted: impl Fn(KeyId) -> bool,
    ) -> Vec<UsageTotal> {
        let mut totals: BTreeMap<DateTime<Utc>, UsageTotal> = BTreeMap::new();
        for a in self.aggregates.values() {
            if a.tenant == *tenant && a.period == period && range.contains(a.period_start) && counted(a.key_id) {
                let total = totals.entry(a.period_start).or_insert_with(|| UsageTotal {
                    period,
                    period_start: a.period_start,
                    requests: 0,
                    errors: 0,
                });
                total.requests += a.requests;
                total.errors += a.errors;
            }
        }
        totals.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::UsageId;

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

        // A replayed record that is still retained counts once.
        store.record_batch(&records[4..]).await.unwrap();
        let days = store.usage_aggregates(&tenant, key_id, Period::Day, TimeRange::default()).await.unwrap();
        assert_eq!(days.iter().map(|d| d.requests).sum::<u64>(), 5);
        let listed = store.list_usage(&tenant, key_id, TimeRange::default(), Page::default()).await.unwrap();
        assert_eq!(listed.len(), 3);
    }
}
