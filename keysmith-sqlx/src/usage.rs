//! The usage tables' shape as every backend spells it: the count columns of
//! a roll-up (`keysmith_usage_agg`), how a batch adds to them, and the
//! statements that delete expired usage in bounded batches.

use std::sync::OnceLock;

use keysmith_core::usage::{RefusalReason, RollupKey, SharedTenant, UsageCounts};

/// One roll-up row's increment, as `fold_rollups` gives it.
pub(crate) type Rollup<'a> = (RollupKey, &'a SharedTenant, UsageCounts);

/// The count columns of a roll-up, in the order [`count_values`] gives
/// them: passed requests, errors, status classes, refusals by reason.
pub(crate) const COUNT_COLUMNS: [&str; 15] = [
    "requests",
    "errors",
    "status_2xx",
    "status_3xx",
    "status_4xx",
    "status_5xx",
    "refused_rate_limited",
    "refused_quota_exceeded",
    "refused_credits_exhausted",
    "refused_insufficient_scope",
    "refused_ip_not_allowed",
    "refused_origin_not_allowed",
    "refused_key_revoked",
    "refused_key_suspended",
    "refused_key_expired",
];

/// `counts` as the values of [`COUNT_COLUMNS`] (saturating at `i64::MAX`).
pub(crate) fn count_values(counts: &UsageCounts) -> [i64; 15] {
    let status = counts.status;
    let mut values =
        [counts.requests, counts.errors, status.success, status.redirection, status.client_error, status.server_error]
            .into_iter()
            .chain(RefusalReason::ALL.into_iter().map(|reason| counts.refused.get(reason)));
    std::array::from_fn(|_| values.next().map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)))
}

/// The counts whose [`COUNT_COLUMNS`] hold `values`.
pub(crate) fn counts_of(values: [u64; 15]) -> UsageCounts {
    let mut counts = UsageCounts { requests: values[0], errors: values[1], ..UsageCounts::default() };
    counts.status.success = values[2];
    counts.status.redirection = values[3];
    counts.status.client_error = values[4];
    counts.status.server_error = values[5];
    for (reason, n) in RefusalReason::ALL.into_iter().zip(&values[6..]) {
        *counts.refused.get_mut(reason) = *n;
    }
    counts
}

/// `requests, errors, …`: the count columns, as a `SELECT` lists them.
pub(crate) fn select_counts() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| COUNT_COLUMNS.join(", "))
}

/// `CAST(SUM(a.requests) AS {bigint}) AS requests, …`: the count columns
/// summed over the roll-ups `a`.
pub(crate) fn sum_counts(bigint: &str) -> String {
    COUNT_COLUMNS.iter().map(|c| format!("CAST(SUM(a.{c}) AS {bigint}) AS {c}")).collect::<Vec<_>>().join(", ")
}

/// How a backend spells the usage statements that differ.
#[derive(Debug, Clone, Copy)]
pub(crate) enum UsageSql {
    /// PostgreSQL and SQLite: `ON CONFLICT`, `DELETE … WHERE … IN (SELECT … LIMIT ?)`.
    Standard,
    /// MySQL and MariaDB: `ON DUPLICATE KEY UPDATE`, `INSERT IGNORE`, `DELETE … LIMIT ?`.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    MySql,
}

impl UsageSql {
    /// The clause appended to a roll-up insert: adds to the rows that exist.
    pub(crate) fn add_counts(self) -> &'static str {
        static ON_CONFLICT: OnceLock<String> = OnceLock::new();
        static ON_DUPLICATE: OnceLock<String> = OnceLock::new();
        match self {
            Self::Standard => ON_CONFLICT.get_or_init(|| {
                let sets: Vec<String> =
                    COUNT_COLUMNS.iter().map(|c| format!("{c} = keysmith_usage_agg.{c} + excluded.{c}")).collect();
                format!(" ON CONFLICT (key_id, period, period_start) DO UPDATE SET {}", sets.join(", "))
            }),
            Self::MySql => ON_DUPLICATE.get_or_init(|| {
                let sets: Vec<String> = COUNT_COLUMNS.iter().map(|c| format!("{c} = {c} + VALUES({c})")).collect();
                format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }),
        }
    }

    /// Records a batch id (bound: id, written at), adding no row when it
    /// is recorded already.
    pub(crate) fn insert_batch_id(self) -> &'static str {
        match self {
            Self::Standard => {
                "INSERT INTO keysmith_usage_batches (id, written_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
            }
            Self::MySql => "INSERT IGNORE INTO keysmith_usage_batches (id, written_at) VALUES (?, ?)",
        }
    }

    /// Deletes at most `?` rows of `table` whose `column` is before `?`
    /// (bound: the time, then the limit), where `key` is the table's key
    /// (also the change log's, `store/changes.rs`).
    pub(crate) fn delete_before(self, table: &str, key: &str, column: &str, filter: &str) -> String {
        match self {
            Self::Standard => format!(
                "DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {filter}{column} < ? LIMIT ?)"
            ),
            Self::MySql => format!("DELETE FROM {table} WHERE {filter}{column} < ? LIMIT ?"),
        }
    }

    /// Deletes at most `?` raw records whose id is below `?` (ids are
    /// UUIDv7, made when the request was: the primary key serves this, no
    /// index on time is needed).
    pub(crate) fn delete_records(self) -> String {
        self.delete_before("keysmith_usage", "id", "id", "")
    }

    /// Deletes at most `?` batch ids written before `?`.
    pub(crate) fn delete_batch_ids(self) -> String {
        self.delete_before("keysmith_usage_batches", "id", "written_at", "")
    }

    /// Deletes at most `?` roll-ups of the period `?` starting before `?`
    /// (bound: the period, the time, the limit).
    pub(crate) fn delete_rollups(self) -> String {
        self.delete_before("keysmith_usage_agg", "key_id, period, period_start", "period_start", "period = ? AND ")
    }
}

/// The columns of a roll-up insert: the row's identity, then the counts.
pub(crate) fn insert_rollups() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "INSERT INTO keysmith_usage_agg (key_id, period, period_start, app_id, tenant_id, {}) ",
            COUNT_COLUMNS.join(", ")
        )
    })
}

/// Roll-up rows (20 values each) per multi-row insert, for a backend that
/// takes `rows_per_insert` rows of 11 values.
pub(crate) const fn rollups_per_insert(rows_per_insert: usize) -> usize {
    rows_per_insert * 11 / (5 + COUNT_COLUMNS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_through_their_columns() {
        let mut counts = UsageCounts::passed(503);
        counts.add(&UsageCounts::passed(302));
        counts.add(&UsageCounts::refused(RefusalReason::KeyExpired));
        counts.add(&UsageCounts::refused(RefusalReason::RateLimited));
        let values = count_values(&counts);
        assert_eq!(values[0..2], [2, 1]);
        assert_eq!(counts_of(values.map(|v| u64::try_from(v).unwrap())), counts);
        assert_eq!(COUNT_COLUMNS[6 + RefusalReason::KeyExpired as usize], "refused_key_expired");
    }
}
