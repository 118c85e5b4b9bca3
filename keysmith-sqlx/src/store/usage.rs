//! Usage: batches of records with their day and month aggregates, and
//! the totals read from the aggregates.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keysmith_core::store::{Page, TimeRange, UsageStore, UsageTotal};
use keysmith_core::{KeyId, Period, Result, Tenant, UsageAggregate, UsageRecord};

use uuid::Uuid;

use super::{SqlStore, begin, push_range, push_tenant};
use crate::common::{duration_to_micros, is_unique_violation, limit_offset, store_error, usage_write_error};
use crate::dialect::{Dialect, Exec as _, Sql};
use crate::rows::{self, Columns as _};

/// The body of [`Dialect::insert_usage`] in multi-row `INSERT`s. A batch
/// is new unless it is replayed, so it goes in whole; a taken id fails only
/// that statement (the transaction goes on), and the batch goes in again
/// without the records already stored. (`INSERT IGNORE` would skip a
/// record of an unknown key too, and returning the inserted ids costs more
/// than the rare second try.)
pub(crate) async fn insert_new_usage<DB: Dialect>(
    conn: &mut DB::Connection,
    records: &[&UsageRecord],
) -> Result<Vec<Uuid>> {
    let (sql, args) = usage_insert::<DB>(records)?.finish()?;
    match sqlx::query_with::<DB, _>(&sql, args).execute(conn.exec()).await {
        Ok(_) => return Ok(records.iter().map(|r| r.id.uuid()).collect()),
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
    let stored = rows.iter().map(|row| DB::uuid(row, "id")).collect::<Result<HashSet<Uuid>>>()?;
    let fresh: Vec<_> = records.iter().copied().filter(|r| !stored.contains(&r.id.uuid())).collect();
    if !fresh.is_empty() {
        let (sql, args) = usage_insert::<DB>(&fresh)?.finish()?;
        sqlx::query_with::<DB, _>(&sql, args).execute(conn.exec()).await.map_err(usage_write_error)?;
    }
    Ok(fresh.iter().map(|r| r.id.uuid()).collect())
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

/// An aggregate row: its key, period and the period's start.
type AggregateRow = (Uuid, Period, DateTime<Utc>);

/// One aggregate row's increment.
struct AggregateDelta<'a> {
    tenant: &'a Tenant,
    requests: i64,
    errors: i64,
}

/// The day and month increments of `records`, each record counted once.
fn aggregate_deltas<'a>(records: &[&'a UsageRecord]) -> Vec<(AggregateRow, AggregateDelta<'a>)> {
    let mut deltas: HashMap<AggregateRow, AggregateDelta<'a>> = HashMap::new();
    for r in records {
        for period in [Period::Day, Period::Month] {
            let delta = deltas
                .entry((r.key_id.uuid(), period, period.start_of(r.timestamp)))
                .or_insert(AggregateDelta { tenant: &r.tenant, requests: 0, errors: 0 });
            delta.requests += 1;
            delta.errors += i64::from(r.is_error());
        }
    }
    deltas.into_iter().collect()
}

#[async_trait]
impl<DB: Dialect> UsageStore for SqlStore<DB> {
    async fn record_batch(&self, records: &[UsageRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        // A repeated id inside the batch is one record.
        let mut seen = HashSet::with_capacity(records.len());
        let unique: Vec<&UsageRecord> = records.iter().filter(|r| seen.insert(r.id.uuid())).collect();
        let mut tx = begin(self).await?;
        // Records go in by id: the ones already stored (a replayed batch)
        // are skipped, so only new records reach the aggregates.
        let mut fresh = Vec::with_capacity(unique.len());
        for chunk in unique.chunks(DB::ROWS_PER_INSERT) {
            let inserted: HashSet<Uuid> = DB::insert_usage(&mut tx, chunk).await?.into_iter().collect();
            fresh.extend(chunk.iter().copied().filter(|r| inserted.contains(&r.id.uuid())));
        }
        let deltas = aggregate_deltas(&fresh);
        for chunk in deltas.chunks(DB::ROWS_PER_INSERT) {
            let mut qb = Sql::<DB>::new(
                "INSERT INTO keysmith_usage_agg (key_id, period, period_start, app_id, tenant_id, \
                 requests, errors) ",
            );
            qb.push_values(chunk, |mut b, ((key_id, period, start), delta)| {
                b.push_arg(*key_id)
                    .push_arg(period.as_str())
                    .push_arg(DB::time(*start))
                    .push_arg(&delta.tenant.app_id)
                    .push_arg(&delta.tenant.tenant_id)
                    .push_arg(delta.requests)
                    .push_arg(delta.errors);
            });
            qb.push(DB::ADD_TO_AGGREGATE);
            let (sql, args) = qb.finish()?;
            sqlx::query_with::<DB, _>(&sql, args).execute(tx.exec()).await.map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }

    async fn list_usage(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        range: TimeRange,
        page: Page,
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
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageAggregate>> {
        let mut qb = Sql::<DB>::new(
            "SELECT app_id, tenant_id, period_start, requests, errors FROM keysmith_usage_agg WHERE key_id = ",
        );
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
                let (requests, errors) = rows::counts::<DB>(row)?;
                Ok(UsageAggregate {
                    key_id,
                    tenant: rows::tenant::<DB>(row)?,
                    period,
                    period_start: DB::at(row, "period_start")?,
                    requests,
                    errors,
                })
            })
            .collect()
    }

    async fn tenant_usage(&self, tenant: &Tenant, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>> {
        totals(self, tenant, period, range, |_| {}).await
    }

    async fn lineage_usage(
        &self,
        tenant: &Tenant,
        lineage: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        totals(self, tenant, period, range, |qb| {
            qb.push(" AND a.key_id IN (SELECT k.id FROM keysmith_keys k WHERE k.lineage_id = ");
            qb.push_arg(lineage.uuid()).push(")");
        })
        .await
    }

    async fn owner_usage(
        &self,
        tenant: &Tenant,
        owner_id: &str,
        period: Period,
        range: TimeRange,
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
    store: &SqlStore<DB>,
    tenant: &Tenant,
    period: Period,
    range: TimeRange,
    filter: impl FnOnce(&mut Sql<'_, DB>),
) -> Result<Vec<UsageTotal>> {
    let mut qb = Sql::<DB>::new(format!(
        "SELECT a.period_start AS period_start, CAST(SUM(a.requests) AS {0}) AS requests, \
         CAST(SUM(a.errors) AS {0}) AS errors FROM keysmith_usage_agg a WHERE a.period = ",
        DB::BIGINT
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
        .map(|row| {
            let (requests, errors) = rows::counts::<DB>(row)?;
            Ok(UsageTotal { period, period_start: DB::at(row, "period_start")?, requests, errors })
        })
        .collect()
}
