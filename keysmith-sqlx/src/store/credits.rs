//! Credits, a key lineage's (`keysmith_credits`) or an owner's
//! (`keysmith_owner_credits`): both tables are read and written by the same
//! statements, through a [`Holder`].

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use keysmith_core::{CreditSpend, Credits, Error, KeyId, Period, Result, Tenant};
use uuid::Uuid;

use super::BindScoped as _;
use crate::common::store_error;
use crate::dialect::{Arg as _, BACKENDS, Dialect, Exec as _, RowsAffected as _, Statement, statement};
use crate::rows::{self, Columns as _};

/// The credits columns of `keysmith_credits`, named as in the keys' columns.
const CREDITS_COLUMNS: &str = "remaining AS credits_remaining, refill_amount AS credits_refill_amount, \
    refill_every AS credits_refill_every, refilled_at AS credits_refilled_at";

/// The lineage of the tenant's key `id`.
pub(super) async fn lineage_on<DB: Dialect>(conn: &mut DB::Connection, tenant: &Tenant, id: KeyId) -> Result<Uuid> {
    let row = sqlx::query(statement!(
        DB,
        "SELECT id, lineage_id FROM keysmith_keys WHERE id = ? AND app_id = ? AND tenant_id = ?"
    ))
    .bind_scoped(id.uuid(), tenant)
    .fetch_optional(conn.exec())
    .await
    .map_err(store_error)?
    .ok_or_else(|| Error::NotFound { entity: "key", id: id.to_string() })?;
    Ok(DB::opt_uuid(&row, "lineage_id")?.unwrap_or(id.uuid()))
}

/// A row of credits and how it is addressed: a lineage's in
/// `keysmith_credits`, an owner's in `keysmith_owner_credits`.
/// Both tables are read and written by the same statements.
#[derive(Debug, Clone, Copy)]
pub(super) enum Holder<'a> {
    Lineage(&'a Tenant, Uuid),
    Owner(&'a Tenant, &'a str),
}

/// The statements on one credits table, each with its row
/// addressed by `app_id = ? AND tenant_id = ? AND <holder> = ?`.
struct CreditsSql {
    read: String,
    delete: String,
    insert: String,
    /// Refills if a refill period began since the last refill; a
    /// no-op otherwise (and for a racing second caller, which finds
    /// the refill made).
    refill: String,
    /// Adds, unless that would pass [`Credits::MAX`].
    add: String,
    /// Takes `cost` only if that many are left: concurrent spends
    /// never take the credits below zero.
    spend: String,
    /// Gives back, up to [`Credits::MAX`] (never lowering what is above).
    refund: String,
}

impl CreditsSql {
    fn of<DB: Dialect>(table: &str, holder: &str) -> Self {
        let row = format!("app_id = ? AND tenant_id = ? AND {holder} = ?");
        let sql = |text: String| DB::placeholders(&text).into_owned();
        Self {
            read: sql(format!("SELECT {CREDITS_COLUMNS} FROM {table} WHERE {row}")),
            delete: sql(format!("DELETE FROM {table} WHERE {row}")),
            insert: sql(format!(
                "INSERT INTO {table} (app_id, tenant_id, {holder}, remaining, refill_amount, \
                 refill_every, refilled_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            )),
            refill: sql(format!(
                "UPDATE {table} SET remaining = refill_amount, \
                 refilled_at = CASE refill_every WHEN 'day' THEN ? ELSE ? END \
                 WHERE {row} AND refill_every IS NOT NULL \
                 AND (refilled_at IS NULL OR refilled_at < CASE refill_every WHEN 'day' THEN ? ELSE ? END)"
            )),
            add: sql(format!("UPDATE {table} SET remaining = remaining + ? WHERE {row} AND remaining <= ?")),
            spend: sql(format!("UPDATE {table} SET remaining = remaining - ? WHERE {row} AND remaining >= ?")),
            refund: sql(format!(
                "UPDATE {table} SET remaining = {}(remaining + ?, ?) WHERE {row} AND remaining < ?",
                DB::LEAST
            )),
        }
    }
}

impl<'a> Holder<'a> {
    /// The statements on the holder's table, in `DB`'s form.
    fn sql<DB: Dialect>(self) -> &'static CreditsSql {
        static LINEAGE: [OnceLock<CreditsSql>; BACKENDS] = [const { OnceLock::new() }; BACKENDS];
        static OWNER: [OnceLock<CreditsSql>; BACKENDS] = [const { OnceLock::new() }; BACKENDS];
        match self {
            Self::Lineage(..) => {
                LINEAGE[DB::SLOT].get_or_init(|| CreditsSql::of::<DB>("keysmith_credits", "lineage_id"))
            }
            Self::Owner(..) => {
                OWNER[DB::SLOT].get_or_init(|| CreditsSql::of::<DB>("keysmith_owner_credits", "owner_id"))
            }
        }
    }

    /// Binds the row's address.
    fn address<'q, DB: Dialect>(self, query: Statement<'q, DB>) -> Statement<'q, DB>
    where
        'a: 'q,
    {
        match self {
            Self::Lineage(tenant, lineage) => query.arg(&tenant.app_id).arg(&tenant.tenant_id).arg(lineage),
            Self::Owner(tenant, owner_id) => query.arg(&tenant.app_id).arg(&tenant.tenant_id).arg(owner_id),
        }
    }

    /// What holds the credits, for messages.
    fn noun(self) -> &'static str {
        match self {
            Self::Lineage(..) => "key",
            Self::Owner(..) => "owner",
        }
    }
}

/// A credit amount as stored: within [`Credits::MAX`], so it fits.
fn credit_count(amount: u64) -> i64 {
    i64::try_from(amount.min(Credits::MAX + 1)).unwrap_or(i64::MAX)
}

pub(super) async fn credits_on<DB: Dialect>(conn: &mut DB::Connection, holder: Holder<'_>) -> Result<Option<Credits>> {
    let query = sqlx::query(&holder.sql::<DB>().read);
    let row = holder.address(query).fetch_optional(conn.exec()).await.map_err(store_error)?;
    row.as_ref().map(rows::credits::<DB>).transpose().map(Option::flatten)
}

pub(super) async fn insert_credits_on<DB: Dialect>(
    conn: &mut DB::Connection, holder: Holder<'_>, credits: &Credits,
) -> Result<()> {
    holder
        .address(sqlx::query(&holder.sql::<DB>().insert))
        .arg(credit_count(credits.remaining))
        .arg(credits.refill.map(|r| credit_count(r.amount)))
        .arg(credits.refill.map(|r| r.every.as_str()))
        .arg(credits.refilled_at.map(DB::time))
        .execute(conn.exec())
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Replaces the holder's credits whole (`None`: removes them).
pub(super) async fn replace_credits_on<DB: Dialect>(
    conn: &mut DB::Connection, holder: Holder<'_>, credits: Option<&Credits>,
) -> Result<()> {
    holder.address(sqlx::query(&holder.sql::<DB>().delete)).execute(conn.exec()).await.map_err(store_error)?;
    match credits {
        Some(credits) => insert_credits_on::<DB>(conn, holder, credits).await,
        None => Ok(()),
    }
}

async fn refill_on<DB: Dialect>(conn: &mut DB::Connection, holder: Holder<'_>, now: DateTime<Utc>) -> Result<()> {
    let (day, month) = (Period::Day.start_of(now), Period::Month.start_of(now));
    let query = sqlx::query(&holder.sql::<DB>().refill).arg(DB::time(day)).arg(DB::time(month));
    holder.address(query).arg(DB::time(day)).arg(DB::time(month)).execute(conn.exec()).await.map_err(store_error)?;
    Ok(())
}

/// Refills, then adds `amount`; `InvalidInput` for a holder
/// without credits or a sum past [`Credits::MAX`].
pub(super) async fn add_credits_on<DB: Dialect>(
    conn: &mut DB::Connection, holder: Holder<'_>, amount: u64, now: DateTime<Utc>,
) -> Result<()> {
    refill_on::<DB>(conn, holder, now).await?;
    let added = holder
        .address(sqlx::query(&holder.sql::<DB>().add).arg(credit_count(amount)))
        .arg(credit_count(Credits::MAX.saturating_sub(amount)))
        .execute(conn.exec())
        .await
        .map_err(store_error)?;
    if added.rows_affected() > 0 {
        return Ok(());
    }
    Err(match credits_on::<DB>(conn, holder).await? {
        None => Error::InvalidInput {
            field: "credits",
            reason: format!("the {} has no credits to add to; set them first", holder.noun()),
        },
        Some(_) => Error::InvalidInput { field: "amount", reason: format!("credits would pass {}", Credits::MAX) },
    })
}

pub(super) async fn spend_credits_on<DB: Dialect>(
    conn: &mut DB::Connection, holder: Holder<'_>, cost: u64, now: DateTime<Utc>,
) -> Result<CreditSpend> {
    refill_on::<DB>(conn, holder, now).await?;
    let spent = holder
        .address(sqlx::query(&holder.sql::<DB>().spend).arg(credit_count(cost)))
        .arg(credit_count(cost))
        .execute(conn.exec())
        .await
        .map_err(store_error)?;
    Ok(match (spent.rows_affected(), credits_on::<DB>(conn, holder).await?) {
        (_, None) => CreditSpend::Unlimited,
        (0, Some(credits)) => CreditSpend::Exhausted(credits),
        (_, Some(credits)) => CreditSpend::Spent(credits),
    })
}

pub(super) async fn refund_credits_on<DB: Dialect>(
    conn: &mut DB::Connection, holder: Holder<'_>, cost: u64,
) -> Result<()> {
    let query = sqlx::query(&holder.sql::<DB>().refund).arg(credit_count(cost)).arg(credit_count(Credits::MAX));
    holder.address(query).arg(credit_count(Credits::MAX)).execute(conn.exec()).await.map_err(store_error)?;
    Ok(())
}
