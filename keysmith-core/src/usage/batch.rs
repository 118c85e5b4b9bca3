//! What the usage writer hands a store in one write: raw records and
//! roll-up increments that have no raw record (refusals, and passed
//! requests that the [`UsageMode`](super::UsageMode) does not keep).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

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
/// Records are counted per key and UTC hour first, then each hour is added
/// to its day and month: a record costs one lookup, and a record that
/// continues a run of one key's records in one hour (as one busy key sends
/// them) costs a comparison and an addition.
#[must_use]
pub fn fold_rollups<'a>(
    records: impl IntoIterator<Item = &'a UsageRecord>, deltas: &'a [UsageDelta],
) -> Vec<(RollupKey, &'a SharedTenant, UsageCounts)> {
    let mut hours: HashMap<(KeyId, i64), Hour<'a>, Fast> = HashMap::default();
    let mut add = |at: (KeyId, i64), hour: Hour<'a>| match hours.entry(at) {
        Entry::Occupied(mut seen) => seen.get_mut().counts.add(&hour.counts),
        Entry::Vacant(vacant) => {
            vacant.insert(hour);
        }
    };
    // The run of consecutive records of one key in one hour being counted.
    let mut run: Option<((KeyId, i64), Hour<'a>)> = None;
    for record in records {
        let at = (record.key_id, hour_of(record.timestamp));
        match &mut run {
            Some((current, hour)) if *current == at => hour.counts.add_passed(record.status),
            _ => {
                let next =
                    Hour { tenant: &record.tenant, at: record.timestamp, counts: UsageCounts::passed(record.status) };
                if let Some((done_at, done)) = run.replace((at, next)) {
                    add(done_at, done);
                }
            }
        }
    }
    if let Some((done_at, done)) = run {
        add(done_at, done);
    }
    for delta in deltas {
        add((delta.key_id, hour_of(delta.hour)), Hour { tenant: &delta.tenant, at: delta.hour, counts: delta.counts });
    }
    let mut folded: HashMap<RollupKey, (&'a SharedTenant, UsageCounts), Fast> = HashMap::default();
    folded.reserve(hours.len() * Period::ALL.len());
    for ((key_id, _), hour) in hours {
        for period in Period::ALL {
            let entry = folded
                .entry((key_id, period, period.start_of(hour.at)))
                .or_insert((hour.tenant, UsageCounts::default()));
            entry.1.add(&hour.counts);
        }
    }
    let mut rows: Vec<_> = folded.into_iter().map(|(key, (tenant, counts))| (key, tenant, counts)).collect();
    // A stable order: concurrent writers lock roll-up rows in the same order.
    rows.sort_unstable_by_key(|(key, _, _)| *key);
    rows
}

/// Keys and ids are random or made here, never chosen to collide.
type Fast = foldhash::fast::RandomState;

/// Seconds in an hour: UTC hours are whole multiples of it since the epoch.
const HOUR_SECS: i64 = 60 * 60;

/// Hours since the epoch of `at`.
fn hour_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(HOUR_SECS)
}

/// One key's counts in one UTC hour (or in a run of its records in one).
struct Hour<'a> {
    tenant: &'a SharedTenant,
    /// An instant of the hour (any one names its periods).
    at: DateTime<Utc>,
    counts: UsageCounts,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{RefusalReason, Tenant};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn record_at(key_id: KeyId, tenant: &SharedTenant, timestamp: DateTime<Utc>, status: u16) -> UsageRecord {
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
            timestamp,
        }
    }

    fn record(key_id: KeyId, tenant: &SharedTenant, timestamp: &str, status: u16) -> UsageRecord {
        record_at(key_id, tenant, at(timestamp), status)
    }

    #[test]
    fn records_and_deltas_fold_into_one_increment_per_key_period_and_start() {
        let tenant = SharedTenant::from(Tenant::new("app", "acme"));
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
        let acme = SharedTenant::from(Tenant::new("app", "acme"));
        let (a, b) = (KeyId::new(), KeyId::new());
        // 2026-01-01T00:00:00Z plus `second`.
        let second = |s: i64| DateTime::from_timestamp(1_767_225_600 + s, 0).unwrap();
        let last_second_of_january = 31 * 24 * 3600 - 1;
        let records = vec![
            record_at(a, &acme, second(0), 200),
            record_at(a, &acme, second(1), 404),
            record_at(a, &acme, second(3599), 503),
            // The next hour, then another key, then the first key again.
            record_at(a, &acme, second(3600), 200),
            record_at(b, &acme, second(3601), 301),
            record_at(a, &acme, second(3602), 200),
            // The last second of a day and of a month, then the next ones.
            record_at(a, &acme, second(last_second_of_january), 200),
            record_at(a, &acme, second(last_second_of_january + 1), 200),
            // Back in time: a record of an earlier hour after a later one.
            record_at(b, &acme, second(5), 200),
        ];
        let rows: Vec<_> = fold_rollups(&records, &[]).into_iter().map(|(key, _, counts)| (key, counts)).collect();
        assert_eq!(rows, folded_one_by_one(&records));
        let months: u64 = rows.iter().filter(|((_, p, _), _)| *p == Period::Month).map(|(_, c)| c.requests).sum();
        assert_eq!(months, records.len() as u64, "every record counted once per period");
    }
}
