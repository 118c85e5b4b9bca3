//! What the usage writer hands a store in one write: raw records and
//! roll-up increments that have no raw record (refusals, and passed
//! requests that the [`UsageMode`](super::UsageMode) does not keep).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{Period, SharedTenant, UsageCounts, UsageRecord};
use crate::{KeyId, UsageId};

/// One key's counts in one UTC hour that no raw record of the batch
/// carries. A store adds them to the key's hourly, daily and monthly
/// roll-ups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    /// The key.
    pub key_id: KeyId,
    /// The key's owner.
    pub tenant: SharedTenant,
    /// The first instant of the hour.
    pub hour: DateTime<Utc>,
    /// What to add.
    pub counts: UsageCounts,
}

/// One write of usage.
///
/// A store writes each record once (by its id: a record stored already is
/// skipped, and counts nothing again) and adds each written record and the
/// `deltas` to their keys' hourly, daily and monthly roll-ups, all in one
/// write. The deltas are added once per batch `id`: a batch written again
/// with the same id adds none of them.
#[derive(Debug, Clone, Copy)]
pub struct UsageBatch<'a> {
    /// The batch's id, the idempotency key of its deltas.
    pub id: UsageId,
    /// Raw records to keep.
    pub records: &'a [UsageRecord],
    /// Roll-up increments without raw records.
    pub deltas: &'a [UsageDelta],
}

impl<'a> UsageBatch<'a> {
    /// A batch of `records` only.
    #[must_use]
    pub fn of_records(records: &'a [UsageRecord]) -> Self {
        Self { id: UsageId::new(), records, deltas: &[] }
    }
}

/// One roll-up row's increment: the key, period and period start it adds to.
pub type RollupKey = (KeyId, Period, DateTime<Utc>);

/// Folds `records` (those the store has just written) and `deltas` into one
/// increment per key, period and period start, so a store makes one upsert
/// per roll-up row and batch.
#[must_use]
pub fn fold_rollups<'a>(
    records: impl IntoIterator<Item = &'a UsageRecord>, deltas: &'a [UsageDelta],
) -> Vec<(RollupKey, &'a SharedTenant, UsageCounts)> {
    type Fast = foldhash::fast::RandomState;
    // Per key and hour first (one lookup per record, where a batch holds
    // many records of few keys), then each hour into its day and month.
    let mut hours: HashMap<(KeyId, DateTime<Utc>), (&'a SharedTenant, UsageCounts), Fast> = HashMap::default();
    for record in records {
        let hour = Period::Hour.start_of(record.timestamp);
        hours
            .entry((record.key_id, hour))
            .or_insert((&record.tenant, UsageCounts::default()))
            .1
            .add_passed(record.status);
    }
    for delta in deltas {
        hours.entry((delta.key_id, delta.hour)).or_insert((&delta.tenant, UsageCounts::default())).1.add(&delta.counts);
    }
    let mut folded: HashMap<RollupKey, (&'a SharedTenant, UsageCounts), Fast> = HashMap::default();
    folded.reserve(hours.len() * Period::ALL.len());
    for ((key_id, hour), (tenant, counts)) in hours {
        for period in Period::ALL {
            let entry =
                folded.entry((key_id, period, period.start_of(hour))).or_insert((tenant, UsageCounts::default()));
            entry.1.add(&counts);
        }
    }
    let mut rows: Vec<_> = folded.into_iter().map(|(key, (tenant, counts))| (key, tenant, counts)).collect();
    // A stable order: concurrent writers lock roll-up rows in the same order.
    rows.sort_unstable_by_key(|(key, _, _)| *key);
    rows
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::RefusalReason;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn record(key_id: KeyId, tenant: &SharedTenant, timestamp: &str, status: u16) -> UsageRecord {
        UsageRecord {
            id: UsageId::new(),
            key_id,
            tenant: tenant.clone(),
            endpoint: "/v1/items".into(),
            method: "GET".into(),
            status,
            ip: None,
            user_agent: None,
            latency: Duration::from_millis(1),
            timestamp: at(timestamp),
        }
    }

    #[test]
    fn records_and_deltas_fold_into_one_increment_per_key_period_and_start() {
        let tenant = SharedTenant::from(crate::Tenant::new("app", "acme"));
        let (a, b) = (KeyId::new(), KeyId::new());
        let records = [
            record(a, &tenant, "2026-03-31T10:05:00Z", 200),
            record(a, &tenant, "2026-03-31T10:59:59Z", 500),
            record(a, &tenant, "2026-03-31T11:00:00Z", 201),
            record(b, &tenant, "2026-03-31T10:30:00Z", 404),
            // Another month, so another day and month too.
            record(a, &tenant, "2026-04-01T00:00:00Z", 302),
        ];
        let deltas = [UsageDelta {
            key_id: a,
            tenant: tenant.clone(),
            hour: at("2026-03-31T10:00:00Z"),
            counts: UsageCounts::refused(RefusalReason::RateLimited),
        }];
        let rows = fold_rollups(&records, &deltas);
        let find = |key: KeyId, period: Period, start: &str| {
            let found: Vec<_> = rows.iter().filter(|(k, _, _)| *k == (key, period, at(start))).collect();
            assert_eq!(found.len(), 1, "one increment for {period:?} {start}");
            found[0].2
        };
        // Key a, 10:00: two passed (one error) and one refused.
        let hour = find(a, Period::Hour, "2026-03-31T10:00:00Z");
        assert_eq!((hour.requests, hour.errors, hour.refused.total()), (2, 1, 1));
        assert_eq!((hour.status.success, hour.status.server_error), (1, 1));
        assert_eq!(find(a, Period::Hour, "2026-03-31T11:00:00Z").requests, 1);
        let day = find(a, Period::Day, "2026-03-31T00:00:00Z");
        assert_eq!((day.requests, day.errors, day.refused.total()), (3, 1, 1));
        let march = find(a, Period::Month, "2026-03-01T00:00:00Z");
        assert_eq!((march.requests, march.refused.total()), (3, 1));
        let april = find(a, Period::Month, "2026-04-01T00:00:00Z");
        assert_eq!((april.requests, april.status.redirection), (1, 1));
        assert_eq!(find(b, Period::Day, "2026-03-31T00:00:00Z").status.client_error, 1);
        // a: 3 hours, 2 days, 2 months; b: one of each.
        assert_eq!(rows.len(), 7 + 3);
        assert!(rows.windows(2).all(|pair| pair[0].0 < pair[1].0), "sorted by key, period and start");
    }
}
