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
///
/// Records of one key in one hour arrive together (a batch is a lane's
/// queue in arrival order), so they are counted as one run: a record that
/// continues its run costs a comparison and an addition, and the periods'
/// starts are computed and looked up once per run rather than per record.
#[must_use]
pub fn fold_rollups<'a>(
    records: impl IntoIterator<Item = &'a UsageRecord>, deltas: &'a [UsageDelta],
) -> Vec<(RollupKey, &'a SharedTenant, UsageCounts)> {
    let mut folded: HashMap<RollupKey, (&'a SharedTenant, UsageCounts), foldhash::fast::RandomState> =
        HashMap::default();
    let mut add = |key_id: KeyId, tenant: &'a SharedTenant, at: DateTime<Utc>, counts: &UsageCounts| {
        for period in Period::ALL {
            let entry = folded.entry((key_id, period, period.start_of(at))).or_insert((tenant, UsageCounts::default()));
            entry.1.add(counts);
        }
    };
    let mut run: Option<Run<'a>> = None;
    for record in records {
        let hour = record.timestamp.timestamp().div_euclid(HOUR_SECS);
        match &mut run {
            Some(run) if run.key_id == record.key_id && run.hour == hour => run.counts.add_passed(record.status),
            _ => {
                let next = Run {
                    key_id: record.key_id,
                    tenant: &record.tenant,
                    at: record.timestamp,
                    hour,
                    counts: UsageCounts::passed(record.status),
                };
                if let Some(done) = run.replace(next) {
                    add(done.key_id, done.tenant, done.at, &done.counts);
                }
            }
        }
    }
    if let Some(done) = run {
        add(done.key_id, done.tenant, done.at, &done.counts);
    }
    for delta in deltas {
        add(delta.key_id, &delta.tenant, delta.hour, &delta.counts);
    }
    let mut rows: Vec<_> = folded.into_iter().map(|(key, (tenant, counts))| (key, tenant, counts)).collect();
    // A stable order: concurrent writers lock roll-up rows in the same order.
    rows.sort_unstable_by_key(|(key, _, _)| *key);
    rows
}

/// Seconds in an hour: UTC hours are whole multiples of it since the epoch.
const HOUR_SECS: i64 = 60 * 60;

/// Consecutive records of one key in one UTC hour, counted together.
struct Run<'a> {
    key_id: KeyId,
    tenant: &'a SharedTenant,
    /// The first record's time (any instant of the hour names its periods).
    at: DateTime<Utc>,
    /// Hours since the epoch.
    hour: i64,
    counts: UsageCounts,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Tenant;

    fn record(tenant: &Tenant, key_id: KeyId, second: i64, status: u16) -> UsageRecord {
        UsageRecord {
            id: UsageId::new(),
            key_id,
            tenant: tenant.into(),
            endpoint: "/things".into(),
            method: "GET".into(),
            status,
            ip: None,
            user_agent: None,
            latency: Duration::from_millis(1),
            // 2026-01-01T00:00:00Z plus `second`.
            timestamp: DateTime::from_timestamp(1_767_225_600 + second, 0).unwrap(),
        }
    }

    /// `fold_rollups` as it was written first: every record added to its
    /// three periods on its own.
    fn folded_one_by_one(records: &[UsageRecord]) -> Vec<(RollupKey, UsageCounts)> {
        let mut folded: HashMap<RollupKey, UsageCounts> = HashMap::new();
        for record in records {
            for period in Period::ALL {
                let key = (record.key_id, period, period.start_of(record.timestamp));
                folded.entry(key).or_default().add(&UsageCounts::passed(record.status));
            }
        }
        let mut rows: Vec<_> = folded.into_iter().collect();
        rows.sort_unstable_by_key(|(key, _)| *key);
        rows
    }

    #[test]
    fn runs_of_one_key_and_hour_fold_to_what_each_record_adds_on_its_own() {
        let acme = Tenant::new("app", "acme");
        let (a, b) = (KeyId::new(), KeyId::new());
        let last_second_of_january = 31 * 24 * 3600 - 1;
        let records = vec![
            record(&acme, a, 0, 200),
            record(&acme, a, 1, 404),
            record(&acme, a, 3599, 503),
            // The next hour, then another key, then the first key again.
            record(&acme, a, 3600, 200),
            record(&acme, b, 3601, 301),
            record(&acme, a, 3602, 200),
            // The last second of a day and of a month, then the next ones.
            record(&acme, a, last_second_of_january, 200),
            record(&acme, a, last_second_of_january + 1, 200),
            // Back in time: a record of an earlier hour after a later one.
            record(&acme, b, 5, 200),
        ];
        let rows: Vec<_> = fold_rollups(&records, &[]).into_iter().map(|(key, _, counts)| (key, counts)).collect();
        assert_eq!(rows, folded_one_by_one(&records));
        let months: u64 = rows.iter().filter(|((_, p, _), _)| *p == Period::Month).map(|(_, c)| c.requests).sum();
        assert_eq!(months, records.len() as u64, "every record counted once per period");
    }
}
