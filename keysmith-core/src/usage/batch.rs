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
    let mut folded: HashMap<RollupKey, (&'a SharedTenant, UsageCounts), foldhash::fast::RandomState> =
        HashMap::default();
    let mut add = |key_id: KeyId, tenant: &'a SharedTenant, at: DateTime<Utc>, counts: &UsageCounts| {
        for period in Period::ALL {
            let entry = folded.entry((key_id, period, period.start_of(at))).or_insert((tenant, UsageCounts::default()));
            entry.1.add(counts);
        }
    };
    for record in records {
        add(record.key_id, &record.tenant, record.timestamp, &UsageCounts::passed(record.status));
    }
    for delta in deltas {
        add(delta.key_id, &delta.tenant, delta.hour, &delta.counts);
    }
    let mut rows: Vec<_> = folded.into_iter().map(|(key, (tenant, counts))| (key, tenant, counts)).collect();
    // A stable order: concurrent writers lock roll-up rows in the same order.
    rows.sort_unstable_by_key(|(key, _, _)| *key);
    rows
}
