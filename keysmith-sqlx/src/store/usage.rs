//! Usage: batches of records and roll-up deltas, added to their hourly,
//! daily and monthly roll-ups in one transaction; the roll-ups and totals
//! read back; expired usage deleted in bounded batches.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keysmith_core::store::{Page, TimeRange, UsageStore, UsageTotal};
use keysmith_core::usage::{UsageBatch, fold_rollups};
use keysmith_core::{Error, KeyId, Period, Result, Tenant, UsageAggregate, UsageRecord};

use uuid::Uuid;

use sqlx::Transaction;

use super::{SqlStore, push_range, push_tenant};
use crate::common::{duration_to_micros, is_unique_violation, limit_offset, store_error, usage_write_error};
use crate::dialect::{Arg as _, Dialect, Exec as _, RowsAffected as _, Sql, statement};
use crate::rows::{self, Columns as _};
use crate::usage::{Rollup, count_values, insert_rollups, rollups_per_insert, select_counts, sum_counts};

/// A set of ids, hashed with a fast hasher (they are random or made here,
/// never chosen by an attacker to collide).
pub(crate) type IdSet = HashSet<Uuid, foldhash::fast::RandomState>;

/// Which records of a chunk [`Dialect::insert_usage`] inserted.
pub(crate) enum Inserted {
    /// Every one: the usual case, a batch written for the first time.
    All,
    /// Only these (a replayed batch, some of whose records were stored).
    Only(IdSet),
}

/// The body of [`Dialect::insert_usage`] in multi-row `INSERT`s. A batch
/// is new unless it is replayed, so it goes in whole; a taken id fails only
/// that statement (the transaction goes on), and the batch goes in again
/// without the records already stored. (`INSERT IGNORE` would skip a
/// record of an unknown key too, and returning the inserted ids costs more
/// than the rare second try.)
pub(crate) async fn insert_new_usage<DB: Dialect>(
    conn: &mut DB::Connection, records: &[&UsageRecord],
) -> Result<Inserted> {
    let (sql, args) = usage_insert::<DB>(records)?.finish()?;
    match sqlx::query_with::<DB, _>(&sql, args).execute(conn.exec()).await {
        Ok(_) => return Ok(Inserted::All),
        Err(e) if is_unique_violation(&e) => {}
        Err(e) => return Err(usage_write_error(e)),
    }
    let mut qb = Sql::<DB>::new("SELECT id FROM keysmith_usage WHERE id IN (");
    let mut ids = qb.separated(", ");
    for r in records {
        ids.push_arg(r.id.uuid());
    }
    qb.push(")");
    let (sql, args) = qb.finish()?;
    let rows = sqlx::query_with::<DB, _>(&sql, args).fetch_all(conn.exec()).await.map_err(store_error)?;
    let stored = rows.iter().map(|row| DB::uuid(row, "id")).collect::<Result<IdSet>>()?;
    let fresh: Vec<_> = records.iter().copied().filter(|r| !stored.contains(&r.id.uuid())).collect();
    if !fresh.is_empty() {
        let (sql, args) = usage_insert::<DB>(&fresh)?.finish()?;
        sqlx::query_with::<DB, _>(&sql, args).execute(conn.exec()).await.map_err(usage_write_error)?;
    }
    Ok(Inserted::Only(fresh.iter().map(|r| r.id.uuid()).collect()))
}

/// The body of [`Dialect::upsert_rollups`] in multi-row `INSERT`s.
pub(crate) async fn upsert_rollups_in_rows<DB: Dialect>(
    conn: &mut DB::Connection, rollups: &[Rollup<'_>],
) -> Result<()> {
    for chunk in rollups.chunks(rollups_per_insert(DB::ROWS_PER_INSERT)) {
        let mut qb = Sql::<DB>::new(insert_rollups());
        qb.push_values(chunk, |mut b, ((key_id, period, start), tenant, counts)| {
            b.push_arg(key_id.uuid())
                .push_arg(period.as_str())
                .push_arg(DB::time(*start))
                .push_arg(tenant.app_id.as_str())
                .push_arg(tenant.tenant_id.as_str());
            for value in count_values(counts) {
                b.push_arg(value);
            }
        });
        qb.push(DB::USAGE_SQL.add_counts());
        let (sql, args) = qb.finish()?;
        sqlx::query_with::<DB, _>(&sql, args).execute(conn.exec()).await.map_err(usage_write_error)?;
    }
    Ok(())
}

/// Begins the transaction of a usage batch and inserts its `records` that
/// are not stored yet (see [`Dialect::insert_usage`]); the records it
/// inserted, or `None` when it must be done again as a `replay`.
async fn insert_records<'r, DB: Dialect>(
    store: &SqlStore<DB>, records: &[&'r UsageRecord], replay: bool,
) -> Result<(Transaction<'static, DB>, Option<Vec<&'r UsageRecord>>)> {
    let begin = if store.asynchronous_usage_commit { DB::BEGIN_USAGE_ASYNCHRONOUS } else { DB::BEGIN };
    let mut tx = store.pool.begin_with(begin).await.map_err(store_error)?;
    check_keys::<DB>(&mut tx, records).await?;
    // Records go in by id: the ones already stored (a replayed batch) are
    // skipped, so only new records reach the roll-ups.
    let mut fresh = Vec::with_capacity(records.len());
    for chunk in records.chunks(DB::ROWS_PER_INSERT) {
        match DB::insert_usage(&mut tx, chunk, replay).await? {
            Some(Inserted::All) => fresh.extend_from_slice(chunk),
            Some(Inserted::Only(ids)) => fresh.extend(chunk.iter().copied().filter(|r| ids.contains(&r.id.uuid()))),
            None => return Ok((tx, None)),
        }
    }
    Ok((tx, Some(fresh)))
}

/// Fails the batch with `NotFound` unless every key of `records` exists,
/// and keeps those keys from being deleted until the batch commits: one
/// statement per batch where a foreign key would check every record (raw
/// records have none; a deleted key's records go by a trigger).
async fn check_keys<DB: Dialect>(conn: &mut DB::Connection, records: &[&UsageRecord]) -> Result<()> {
    // A batch has many records of few keys: the distinct ones, then sorted.
    let distinct: IdSet = records.iter().map(|r| r.key_id.uuid()).collect();
    let mut ids: Vec<Uuid> = distinct.into_iter().collect();
    ids.sort_unstable();
    for chunk in ids.chunks(DB::ROWS_PER_INSERT) {
        let mut qb = Sql::<DB>::new("SELECT id FROM keysmith_keys WHERE id IN (");
        let mut list = qb.separated(", ");
        for id in chunk {
            list.push_arg(*id);
        }
        // In id order, as every batch locks them.
        qb.push(") ORDER BY id").push(DB::SHARE_ROWS);
        let (sql, args) = qb.finish()?;
        let found = sqlx::query_with::<DB, _>(&sql, args).fetch_all(conn.exec()).await.map_err(store_error)?;
        if found.len() < chunk.len() {
            return Err(Error::NotFound { entity: "key", id: "a key of the usage batch".to_owned() });
        }
    }
    Ok(())
}

/// A multi-row `INSERT` of the usage `records`.
fn usage_insert<'a, DB: Dialect>(records: &[&'a UsageRecord]) -> Result<Sql<'a, DB>> {
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        rows.push((*r, duration_to_micros("latency", r.latency)?));
    }
    let mut qb = Sql::new(
        "INSERT INTO keysmith_usage (id, key_id, app_id, tenant_id, endpoint, method, status, ip, user_agent, \
         latency_us, occurred_at) ",
    );
    qb.push_values(rows, |mut b, (r, latency_us)| {
        b.push_arg(r.id.uuid())
            .push_arg(r.key_id.uuid())
            .push_arg(r.tenant.app_id.as_str())
            .push_arg(r.tenant.tenant_id.as_str())
            .push_arg(r.endpoint.as_str())
            .push_arg(r.method.as_str())
            .push_arg(i32::from(r.status))
            .push_arg(r.ip.map(|ip| ip.to_string()))
            .push_arg(r.user_agent.as_deref())
            .push_arg(latency_us)
            .push_arg(DB::time(r.timestamp));
    });
    Ok(qb)
}

#[async_trait]
impl<DB: Dialect> UsageStore for SqlStore<DB> {
    async fn write_usage(&self, batch: &UsageBatch<'_>) -> Result<()> {
        if batch.records.is_empty() && batch.deltas.is_empty() {
            return Ok(());
        }
        // A repeated id inside the batch is one record.
        let mut seen = IdSet::with_capacity_and_hasher(batch.records.len(), foldhash::fast::RandomState::default());
        let unique: Vec<&UsageRecord> = batch.records.iter().filter(|r| seen.insert(r.id.uuid())).collect();
        let (mut tx, fresh) = match insert_records(self, &unique, false).await? {
            (tx, Some(fresh)) => (tx, fresh),
            // Written before: the backend voided the transaction; again,
            // skipping the records stored.
            (tx, None) => {
                tx.rollback().await.map_err(store_error)?;
                match insert_records(self, &unique, true).await? {
                    (tx, Some(fresh)) => (tx, fresh),
                    (_, None) => return Err(Error::store("a replayed usage batch could not skip its stored records")),
                }
            }
        };
        // The deltas count once per batch id.
        let mut deltas = batch.deltas;
        if !deltas.is_empty() {
            let written = deltas.iter().map(|d| d.hour).max().unwrap_or_default();
            let added = sqlx::query(statement!(DB, DB::USAGE_SQL.insert_batch_id()))
                .arg(batch.id.uuid())
                .arg(DB::time(written))
                .execute(tx.exec())
                .await
                .map_err(store_error)?;
            if added.rows_affected() == 0 {
                deltas = &[];
            }
        }
        // One upsert per roll-up row: key, period and period start.
        let rollups = fold_rollups(fresh.iter().copied(), deltas);
        if !rollups.is_empty() {
            DB::upsert_rollups(&mut tx, &rollups).await?;
        }
        tx.commit().await.map_err(store_error)
    }

    async fn delete_usage_before(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let mut conn = self.conn().await?;
        let deleted = sqlx::query(statement!(DB, DB::USAGE_SQL.delete_records().as_str()))
            .arg(keysmith_core::UsageId::first_uuid_at(before))
            .arg(i64::from(limit))
            .execute(conn.exec())
            .await
            .map_err(store_error)?
            .rows_affected();
        // Every expired batch id, however few records expired (a batch of
        // refusals alone writes none), each statement still bounded.
        loop {
            let forgotten = sqlx::query(statement!(DB, DB::USAGE_SQL.delete_batch_ids().as_str()))
                .arg(DB::time(before))
                .arg(i64::from(limit))
                .execute(conn.exec())
                .await
                .map_err(store_error)?
                .rows_affected();
            if forgotten < u64::from(limit) {
                return Ok(deleted);
            }
        }
    }

    async fn delete_aggregates_before(&self, period: Period, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        Ok(sqlx::query(statement!(DB, DB::USAGE_SQL.delete_rollups().as_str()))
            .arg(period.as_str())
            .arg(DB::time(before))
            .arg(i64::from(limit))
            .execute(self.conn().await?.exec())
            .await
            .map_err(store_error)?
            .rows_affected())
    }

    async fn list_usage(
        &self, tenant: &Tenant, key_id: KeyId, range: TimeRange, page: Page,
    ) -> Result<Vec<UsageRecord>> {
        let mut qb = Sql::<DB>::new(format!(
            "SELECT id, key_id, app_id, tenant_id, endpoint, method, status, {} AS ip, user_agent, \
             latency_us, occurred_at FROM keysmith_usage WHERE key_id = ",
            DB::IP_READ
        ));
        qb.push_arg(key_id.uuid());
        push_tenant::<DB>(&mut qb, "", tenant);
        push_range::<DB>(&mut qb, "occurred_at", range);
        let (limit, offset) = limit_offset(page);
        qb.push(" ORDER BY occurred_at, id LIMIT ").push_arg(limit).push(" OFFSET ").push_arg(offset);
        let (sql, args) = qb.finish()?;
        let rows =
            sqlx::query_with::<DB, _>(&sql, args).fetch_all(self.conn().await?.exec()).await.map_err(store_error)?;
        rows.iter().map(rows::usage::<DB>).collect()
    }

    async fn usage_aggregates(
        &self, tenant: &Tenant, key_id: KeyId, period: Period, range: TimeRange,
    ) -> Result<Vec<UsageAggregate>> {
        let mut qb = Sql::<DB>::new(format!(
            "SELECT app_id, tenant_id, period_start, {} FROM keysmith_usage_agg WHERE key_id = ",
            select_counts()
        ));
        qb.push_arg(key_id.uuid());
        push_tenant::<DB>(&mut qb, "", tenant);
        qb.push(" AND period = ").push_arg(period.as_str());
        push_range::<DB>(&mut qb, "period_start", range);
        qb.push(" ORDER BY period_start");
        let (sql, args) = qb.finish()?;
        let rows =
            sqlx::query_with::<DB, _>(&sql, args).fetch_all(self.conn().await?.exec()).await.map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let tenant = rows::tenant::<DB>(row)?;
                let mut aggregate = UsageAggregate::empty(key_id, tenant, period, DB::at(row, "period_start")?);
                aggregate.add(&rows::usage_counts::<DB>(row)?);
                Ok(aggregate)
            })
            .collect()
    }

    async fn tenant_usage(&self, tenant: &Tenant, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>> {
        totals(self, tenant, period, range, |_| {}).await
    }

    async fn lineage_usage(
        &self, tenant: &Tenant, lineage: KeyId, period: Period, range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        totals(self, tenant, period, range, |qb| {
            qb.push(" AND a.key_id IN (SELECT k.id FROM keysmith_keys k WHERE k.lineage_id = ");
            qb.push_arg(lineage.uuid()).push(")");
        })
        .await
    }

    async fn owner_usage(
        &self, tenant: &Tenant, owner_id: &str, period: Period, range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        totals(self, tenant, period, range, |qb| {
            qb.push(" AND a.key_id IN (SELECT k.id FROM keysmith_keys k WHERE k.app_id = ");
            qb.push_arg(tenant.app_id.clone()).push(" AND k.tenant_id = ");
            qb.push_arg(tenant.tenant_id.clone()).push(" AND k.owner_id = ");
            qb.push_arg(owner_id.to_owned()).push(")");
        })
        .await
    }
}

/// The totals per `period` of `tenant`'s aggregates `a` that `filter` keeps.
async fn totals<DB: Dialect>(
    store: &SqlStore<DB>, tenant: &Tenant, period: Period, range: TimeRange, filter: impl FnOnce(&mut Sql<'_, DB>),
) -> Result<Vec<UsageTotal>> {
    let mut qb = Sql::<DB>::new(format!(
        "SELECT a.period_start AS period_start, {} FROM keysmith_usage_agg a WHERE a.period = ",
        sum_counts(DB::BIGINT)
    ));
    qb.push_arg(period.as_str());
    push_tenant::<DB>(&mut qb, "a.", tenant);
    filter(&mut qb);
    push_range::<DB>(&mut qb, "a.period_start", range);
    qb.push(" GROUP BY a.period_start ORDER BY a.period_start");
    let (sql, args) = qb.finish()?;
    let rows =
        sqlx::query_with::<DB, _>(&sql, args).fetch_all(store.conn().await?.exec()).await.map_err(store_error)?;
    rows.iter()
        .map(|row| Ok(UsageTotal::new(period, DB::at(row, "period_start")?, rows::usage_counts::<DB>(row)?)))
        .collect()
}
