//! The store logic every SQL backend shares, written once.
//!
//! A backend is a `sqlx::Database` with a [`Dialect`]: how it stores a time,
//! a list of strings and a key's scopes, its placeholders, the few SQL
//! fragments that differ and its usage insert. [`sql_store!`] then
//! implements the whole [`keysmith_core::Store`] for the backend's store
//! type, with the database type known, so sqlx's traits need no generic
//! bounds. Rows are read back by the generic functions of
//! [`rows`](crate::rows).
//!
//! The statements are portable SQL: every state change locks the key's row,
//! checks its state, updates it and reads it back in one transaction (MySQL
//! has no `UPDATE … RETURNING`); multi-row
//! writes (a key with its scopes, a rotation, a usage batch with its day and
//! month aggregates) are one transaction, each table written by multi-row
//! statements.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{Encode, QueryBuilder, Type};
use uuid::Uuid;

use keysmith_core::{Result, UsageRecord};

use crate::common::duration_to_micros;

/// What one SQL backend does its own way.
pub(crate) trait Dialect: sqlx::Database {
    /// A time as bound and read.
    type Time: Stored<DateTime<Utc>> + Send;
    /// A list of strings as bound and read (policy lists).
    type List: Stored<Vec<String>> + Send;
    /// A key's scopes as [`Dialect::SCOPES`] reads them, in order.
    type Scopes: Stored<Vec<String>>;

    /// The statement that starts a transaction.
    const BEGIN: &'static str = "BEGIN";
    /// Appended to a `SELECT` to lock the rows it reads until commit.
    const LOCK_ROWS: &'static str = " FOR UPDATE";
    /// The expression listing the scopes of the key `k`, in order.
    const SCOPES: &'static str;
    /// The usage table's `ip` column as text.
    const IP_READ: &'static str = "ip";
    /// Sorts scope names by their bytes.
    const ORDER_BY_NAME: &'static str = "name";
    /// The function that picks the smaller of two values.
    const LEAST: &'static str = "LEAST";
    /// The type a `SUM` of counts is cast to.
    const BIGINT: &'static str;
    /// Appended to an aggregate insert: adds to the row that exists.
    const ADD_TO_AGGREGATE: &'static str = " ON CONFLICT (key_id, period, period_start) DO UPDATE \
        SET requests = keysmith_usage_agg.requests + excluded.requests, \
            errors = keysmith_usage_agg.errors + excluded.errors";
    /// Rows per multi-row `INSERT` (11 values each), within the backend's
    /// limit on bound values.
    const ROWS_PER_INSERT: usize;
    /// Whether columns are read without sqlx's check of the column type
    /// (the decoders still check what they read).
    const UNCHECKED_COLUMNS: bool = false;
    /// Statements (answering `locked` = 1) that take and release a lock
    /// serializing migrations, where sqlx's own does not hold.
    const MIGRATION_LOCK: Option<(&'static str, &'static str)> = None;

    /// Opens a pool on `url` (what the store's `connect` documents).
    fn open(url: &str) -> impl Future<Output = Result<sqlx::Pool<Self>>> + Send;
    /// `sql` with `?` placeholders in the backend's own form.
    fn placeholders(sql: &str) -> Cow<'_, str> {
        Cow::Borrowed(sql)
    }
    /// A time as bound.
    fn time(at: DateTime<Utc>) -> Self::Time {
        Stored::store(at)
    }
    /// Pushes the age of the key `k` at `now`, in microseconds.
    fn push_age_micros(qb: &mut QueryBuilder<'_, Self>, now: DateTime<Utc>);
    /// Inserts the usage `records` (distinct ids, at most
    /// [`Dialect::ROWS_PER_INSERT`]) that are not stored yet, inside the
    /// caller's transaction, and returns the ids it inserted.
    ///
    /// # Errors
    /// `NotFound` when a record's key does not exist.
    fn insert_usage(
        conn: &mut Self::Connection,
        records: &[&UsageRecord],
    ) -> impl Future<Output = Result<Vec<Uuid>>> + Send;
}

/// A value as a backend's column holds it.
pub(crate) trait Stored<T>: Sized {
    /// The column value of `value`.
    fn store(value: T) -> Self;
    /// The value back; `what` names the column in a corruption error.
    ///
    /// # Errors
    /// When the column holds what no value is stored as.
    fn load(self, what: &str) -> Result<T>;
}

/// Stored as it is.
impl<T> Stored<T> for T {
    fn store(value: T) -> T {
        value
    }

    fn load(self, _: &str) -> Result<T> {
        Ok(self)
    }
}

/// Stored as JSON.
impl<T> Stored<T> for Json<T> {
    fn store(value: T) -> Self {
        Json(value)
    }

    fn load(self, _: &str) -> Result<T> {
        Ok(self.0)
    }
}

/// The body of [`Dialect::insert_usage`] in multi-row `INSERT`s, for `$db`
/// (a macro: sqlx's traits, generic, would tie each query to the records'
/// lifetime). A batch is new unless it is replayed, so it goes in whole; a
/// taken id fails only that statement (the transaction goes on), and the
/// batch goes in again without the records already stored. (`INSERT IGNORE`
/// would skip a record of an unknown key too, and returning the inserted
/// ids costs more than the rare second try.)
macro_rules! insert_new_usage {
    ($db:ty, $conn:expr, $records:expr) => {{
        use $crate::common::{is_unique_violation, store_error, usage_write_error};
        let (conn, records): (&mut <$db as sqlx::Database>::Connection, &[&keysmith_core::UsageRecord]) =
            ($conn, $records);
        match $crate::store::usage_insert::<$db>(records)?.build().execute(&mut *conn).await {
            Ok(_) => return Ok(records.iter().map(|r| r.id.uuid()).collect()),
            Err(e) if is_unique_violation(&e) => {}
            Err(e) => return Err(usage_write_error(e)),
        }
        let mut qb = QueryBuilder::<$db>::new("SELECT id FROM keysmith_usage WHERE id IN (");
        let mut ids = qb.separated(", ");
        for r in records {
            ids.push_bind(r.id.uuid());
        }
        qb.push(")");
        let stored: std::collections::HashSet<Uuid> =
            qb.build_query_scalar().fetch_all(&mut *conn).await.map_err(store_error)?.into_iter().collect();
        let fresh: Vec<_> = records.iter().copied().filter(|r| !stored.contains(&r.id.uuid())).collect();
        if !fresh.is_empty() {
            $crate::store::usage_insert::<$db>(&fresh)?.build().execute(&mut *conn).await.map_err(usage_write_error)?;
        }
        Ok(fresh.iter().map(|r| r.id.uuid()).collect())
    }};
}
pub(crate) use insert_new_usage;

/// A multi-row `INSERT` of the usage `records`.
pub(crate) fn usage_insert<'a, DB>(records: &[&'a UsageRecord]) -> Result<QueryBuilder<'a, DB>>
where
    DB: Dialect,
    DB::Time: 'a + Encode<'a, DB> + Type<DB>,
    Uuid: Encode<'a, DB> + Type<DB>,
    &'a str: Encode<'a, DB> + Type<DB>,
    Option<&'a str>: Encode<'a, DB> + Type<DB>,
    Option<String>: Encode<'a, DB> + Type<DB>,
    i32: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        rows.push((*r, duration_to_micros("latency", r.latency)?));
    }
    let mut qb = QueryBuilder::new(
        "INSERT INTO keysmith_usage (id, key_id, app_id, tenant_id, endpoint, method, status, ip, user_agent, \
         latency_us, occurred_at) ",
    );
    qb.push_values(rows, |mut b, (r, latency_us)| {
        b.push_bind(r.id.uuid())
            .push_bind(r.key_id.uuid())
            .push_bind(r.tenant.app_id.as_str())
            .push_bind(r.tenant.tenant_id.as_str())
            .push_bind(r.endpoint.as_str())
            .push_bind(r.method.as_str())
            .push_bind(i32::from(r.status))
            .push_bind(r.ip.map(|ip| ip.to_string()))
            .push_bind(r.user_agent.as_deref())
            .push_bind(latency_us)
            .push_bind(DB::time(r.timestamp));
    });
    Ok(qb)
}

/// A statement text built once per call site: the parts concatenated, with
/// the backend's placeholders.
macro_rules! statement {
    ($db:ty, $($part:expr),+ $(,)?) => {{
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        SQL.get_or_init(|| <$db as $crate::store::Dialect>::placeholders(&[$($part),+].concat()).into_owned())
            .as_str()
    }};
}
pub(crate) use statement;

/// Declares the store `$store` on a `sqlx::Pool<$db>` (with `attrs`, its
/// docs) and implements [`keysmith_core::Store`] for it, where `$db` is a
/// [`Dialect`] and the calling module has a `MIGRATOR`.
macro_rules! sql_store {
    ($(#[$attr:meta])* $store:ident, $db:ty) => {
        $(#[$attr])*
        #[derive(Debug, Clone)]
        pub struct $store {
            pool: sqlx::Pool<$db>,
        }

        impl $store {
            /// A store on an existing pool (its settings are yours; SQLite's
            /// must enforce foreign keys).
            #[must_use]
            pub fn new(pool: sqlx::Pool<$db>) -> Self {
                Self { pool }
            }

            /// Connects to `url` (as above); does not migrate.
            ///
            /// # Errors
            /// [`Error::Store`](keysmith_core::Error::Store) if the URL is
            /// invalid or the database cannot be reached or opened, saying why
            /// (connection refused, access denied, no such database…) rather
            /// than only that the pool timed out.
            pub async fn connect(url: &str) -> keysmith_core::Result<Self> {
                Ok(Self::new(<$db as $crate::store::Dialect>::open(url).await?))
            }

            /// The pool, for health checks or the application's own queries.
            #[must_use]
            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }
        }

        mod shared {
            use std::collections::{HashMap, HashSet};
            use std::sync::Arc;

            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use keysmith_core::store::{
                ImportOutcome, KeyFilter, KeyStore, Page, PolicyStore, RotationStore, RotationWrite, ScopeStore, StoredKey,
                TimeRange, Transition, UsageStore, UsageTotal,
            };
            use keysmith_core::{
                CreditSpend, Credits, Error, Key, KeyHash, KeyId, KeyState, Period, Policy, PolicyId, Result, RotationRecord,
                Scope, ScopeId, Store, Tenant, UsageAggregate, UsageRecord,
            };
            use sqlx::migrate::Migrator;
            use sqlx::types::Json;
            use sqlx::{Database, QueryBuilder};
            use uuid::Uuid;

            use super::{$store, MIGRATOR};
            use crate::common::{
                PolicyColumns, corrupt, duration_to_micros, is_foreign_key_violation,
                key_insert_error, limit_offset, check_transition, named_write_error,
                parse_column, store_error,
            };
            use crate::rows::{self, Columns as _};
            use crate::store::{Dialect, Stored as _, statement};

            type Db = $db;
            type Row = <Db as Database>::Row;
            type Connection = <Db as Database>::Connection;
            type Query<'q> = sqlx::query::Query<'q, Db, <Db as Database>::Arguments<'q>>;

            /// Binds a row's id and then its tenant, the order of every
            /// `id = ? AND app_id = ? AND tenant_id = ?` (and of the columns
            /// that open each table).
            trait BindScoped<'q> {
                fn bind_scoped(self, id: Uuid, tenant: &'q Tenant) -> Self;
            }

            impl<'q> BindScoped<'q> for Query<'q> {
                fn bind_scoped(self, id: Uuid, tenant: &'q Tenant) -> Self {
                    self.bind(id).bind(&tenant.app_id).bind(&tenant.tenant_id)
                }
            }

            /// The columns of the key `k` but its scopes.
            const KEY_COLUMNS: &str = "k.id, k.lineage_id, k.app_id, k.tenant_id, k.hash, k.name, k.hint, k.prefix, \
                k.environment, k.state, k.policy_id, k.expires_at, k.grace_expires_at, k.revoked_reason, \
                k.last_used_at, k.created_at, k.updated_at, k.metadata, k.owner_id, \
                c.remaining AS credits_remaining, c.refill_amount AS credits_refill_amount, \
                c.refill_every AS credits_refill_every, c.refilled_at AS credits_refilled_at";

            /// The keys `k` with their lineage's credits `c`.
            const KEYS_FROM: &str =
                "keysmith_keys k LEFT JOIN keysmith_credits c ON c.lineage_id = k.lineage_id";

            /// The credits columns of `keysmith_credits`, named as in [`KEY_COLUMNS`].
            const CREDITS_COLUMNS: &str = "remaining AS credits_remaining, refill_amount AS credits_refill_amount, \
                refill_every AS credits_refill_every, refilled_at AS credits_refilled_at";

            /// The columns of `keysmith_policies`.
            const POLICY_COLUMNS: &str = "id, app_id, tenant_id, name, rate_limits, limit_by, \
                allowed_ips, allowed_origins, allowed_scopes, \
                max_key_age_us, quota, rotation_grace_us, metadata, created_at, updated_at, \
                max_active_keys_per_owner";

            /// The lineage of the tenant's key `id`.
            async fn lineage_on(conn: &mut Connection, tenant: &Tenant, id: KeyId) -> Result<Uuid> {
                let row = sqlx::query(statement!(
                    Db,
                    "SELECT id, lineage_id FROM keysmith_keys WHERE id = ? AND app_id = ? AND tenant_id = ?"
                ))
                .bind_scoped(id.uuid(), tenant)
                .fetch_optional(&mut *conn)
                .await
                .map_err(store_error)?
                .ok_or_else(|| Error::NotFound { entity: "key", id: id.to_string() })?;
                Ok(Db::opt_uuid(&row, "lineage_id")?.unwrap_or(id.uuid()))
            }

            /// A row of credits and how it is addressed: a lineage's in
            /// `keysmith_credits`, an owner's in `keysmith_owner_credits`.
            /// Both tables are read and written by the same statements.
            #[derive(Debug, Clone, Copy)]
            enum Holder<'a> {
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
                fn of(table: &str, holder: &str) -> Self {
                    let row = format!("app_id = ? AND tenant_id = ? AND {holder} = ?");
                    let sql = |text: String| Db::placeholders(&text).into_owned();
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
                            Db::LEAST
                        )),
                    }
                }
            }

            impl<'a> Holder<'a> {
                fn sql(self) -> &'static CreditsSql {
                    static LINEAGE: std::sync::OnceLock<CreditsSql> = std::sync::OnceLock::new();
                    static OWNER: std::sync::OnceLock<CreditsSql> = std::sync::OnceLock::new();
                    match self {
                        Self::Lineage(..) => LINEAGE.get_or_init(|| CreditsSql::of("keysmith_credits", "lineage_id")),
                        Self::Owner(..) => OWNER.get_or_init(|| CreditsSql::of("keysmith_owner_credits", "owner_id")),
                    }
                }

                /// Binds the row's address.
                fn bind<'q>(self, query: Query<'q>) -> Query<'q>
                where
                    'a: 'q,
                {
                    match self {
                        Self::Lineage(tenant, lineage) => query.bind(&tenant.app_id).bind(&tenant.tenant_id).bind(lineage),
                        Self::Owner(tenant, owner_id) => query.bind(&tenant.app_id).bind(&tenant.tenant_id).bind(owner_id),
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

            async fn credits_on(conn: &mut Connection, holder: Holder<'_>) -> Result<Option<Credits>> {
                let query = sqlx::query(&holder.sql().read);
                let row = holder.bind(query).fetch_optional(&mut *conn).await.map_err(store_error)?;
                row.as_ref().map(rows::credits::<Db>).transpose().map(Option::flatten)
            }

            async fn insert_credits_on(conn: &mut Connection, holder: Holder<'_>, credits: &Credits) -> Result<()> {
                holder
                    .bind(sqlx::query(&holder.sql().insert))
                    .bind(credit_count(credits.remaining))
                    .bind(credits.refill.map(|r| credit_count(r.amount)))
                    .bind(credits.refill.map(|r| r.every.as_str()))
                    .bind(credits.refilled_at.map(Db::time))
                    .execute(&mut *conn)
                    .await
                    .map_err(store_error)?;
                Ok(())
            }

            /// Replaces the holder's credits whole (`None`: removes them).
            async fn replace_credits_on(conn: &mut Connection, holder: Holder<'_>, credits: Option<&Credits>) -> Result<()> {
                holder.bind(sqlx::query(&holder.sql().delete)).execute(&mut *conn).await.map_err(store_error)?;
                match credits {
                    Some(credits) => insert_credits_on(conn, holder, credits).await,
                    None => Ok(()),
                }
            }

            async fn refill_on(conn: &mut Connection, holder: Holder<'_>, now: DateTime<Utc>) -> Result<()> {
                let (day, month) = (Period::Day.start_of(now), Period::Month.start_of(now));
                let query = sqlx::query(&holder.sql().refill).bind(Db::time(day)).bind(Db::time(month));
                holder
                    .bind(query)
                    .bind(Db::time(day))
                    .bind(Db::time(month))
                    .execute(&mut *conn)
                    .await
                    .map_err(store_error)?;
                Ok(())
            }

            /// Refills, then adds `amount`; `InvalidInput` for a holder
            /// without credits or a sum past [`Credits::MAX`].
            async fn add_credits_on(conn: &mut Connection, holder: Holder<'_>, amount: u64, now: DateTime<Utc>) -> Result<()> {
                refill_on(conn, holder, now).await?;
                let added = holder
                    .bind(sqlx::query(&holder.sql().add).bind(credit_count(amount)))
                    .bind(credit_count(Credits::MAX.saturating_sub(amount)))
                    .execute(&mut *conn)
                    .await
                    .map_err(store_error)?;
                if added.rows_affected() > 0 {
                    return Ok(());
                }
                Err(match credits_on(conn, holder).await? {
                    None => Error::InvalidInput {
                        field: "credits",
                        reason: format!("the {} has no credits to add to; set them first", holder.noun()),
                    },
                    Some(_) => Error::InvalidInput { field: "amount", reason: format!("credits would pass {}", Credits::MAX) },
                })
            }

            async fn spend_credits_on(conn: &mut Connection, holder: Holder<'_>, cost: u64, now: DateTime<Utc>) -> Result<CreditSpend> {
                refill_on(conn, holder, now).await?;
                let spent = holder
                    .bind(sqlx::query(&holder.sql().spend).bind(credit_count(cost)))
                    .bind(credit_count(cost))
                    .execute(&mut *conn)
                    .await
                    .map_err(store_error)?;
                Ok(match (spent.rows_affected(), credits_on(conn, holder).await?) {
                    (_, None) => CreditSpend::Unlimited,
                    (0, Some(credits)) => CreditSpend::Exhausted(credits),
                    (_, Some(credits)) => CreditSpend::Spent(credits),
                })
            }

            async fn refund_credits_on(pool: &sqlx::Pool<Db>, holder: Holder<'_>, cost: u64) -> Result<()> {
                let query = sqlx::query(&holder.sql().refund).bind(credit_count(cost)).bind(credit_count(Credits::MAX));
                holder
                    .bind(query)
                    .bind(credit_count(Credits::MAX))
                    .execute(pool)
                    .await
                    .map_err(store_error)?;
                Ok(())
            }

            /// The key `id` of `tenant`, or of any tenant when `tenant` is `None`.
            async fn key_on(conn: &mut Connection, tenant: Option<&Tenant>, id: KeyId) -> Result<Option<Row>> {
                let mut qb = select_keys();
                qb.push(" WHERE k.id = ").push_bind(id.uuid());
                if let Some(tenant) = tenant {
                    push_tenant(&mut qb, "k.", tenant);
                }
                qb.build().fetch_optional(&mut *conn).await.map_err(store_error)
            }

            /// Reads back the key `id` that `tx` changed, then commits.
            async fn commit_changed(mut tx: sqlx::Transaction<'static, Db>, id: KeyId) -> Result<Key> {
                let row = key_on(&mut tx, None, id).await?;
                tx.commit().await.map_err(store_error)?;
                row.as_ref().map_or_else(|| Err(Error::store("a changed key vanished")), rows::key::<Db>)
            }

            /// Which of `keys`' hashes are held already: by `tenant`'s keys
            /// (`true`) or another tenant's (`false`).
            async fn held_hashes_on(conn: &mut Connection, tenant: &Tenant, keys: &[StoredKey]) -> Result<HashMap<String, bool>> {
                let mut held = HashMap::new();
                // By hash alone, so that the unique index on it answers; the
                // tenant is compared here.
                for chunk in keys.chunks(1000) {
                    let mut qb = QueryBuilder::<Db>::new("SELECT hash, app_id, tenant_id FROM keysmith_keys WHERE hash IN (");
                    let mut list = qb.separated(", ");
                    for stored in chunk {
                        list.push_bind(stored.hash.to_hex());
                    }
                    qb.push(")");
                    for row in qb.build().persistent(false).fetch_all(&mut *conn).await.map_err(store_error)? {
                        held.insert(Db::text(&row, "hash")?, rows::tenant::<Db>(&row)? == *tenant);
                    }
                }
                Ok(held)
            }

            /// The body of `import_keys`, inside the caller's transaction: a
            /// few statements per batch, not per key, each planned for its
            /// values (not prepared: a generic plan of a long `IN` list reads
            /// every key of the tenant). Which hashes are held
            /// is asked once; the owners' live keys under each policy with a
            /// limit are counted once (the policy row locked until commit, as
            /// a single creation does); the keys and their scopes then go in
            /// by multi-row `INSERT`s.
            async fn import_keys_on(
                conn: &mut Connection,
                tenant: &Tenant,
                keys: &[StoredKey],
            ) -> Result<Vec<ImportOutcome>> {
                if keys.iter().any(|stored| stored.key.tenant != *tenant) {
                    return Err(Error::InvalidInput {
                        field: "tenant",
                        reason: "an imported key belongs to another tenant than the import".to_owned(),
                    });
                }
                let mut held = held_hashes_on(conn, tenant, keys).await?;
                let mut live = live_owner_keys_on(conn, tenant, keys).await?;
                let mut outcomes = Vec::with_capacity(keys.len());
                let mut inserts = Vec::with_capacity(keys.len());
                for stored in keys {
                    let key = &stored.key;
                    let hash = stored.hash.to_hex();
                    let outcome = match held.get(&hash) {
                        Some(true) => ImportOutcome::AlreadyImported,
                        Some(false) => ImportOutcome::HashTaken,
                        None => {
                            let counted = match (&key.owner_id, key.policy_id) {
                                (Some(owner), Some(policy)) if key.state.counts_toward_owner_limit() => {
                                    live.get_mut(&policy).map(|(limit, owners)| (*limit, owners.entry(owner.clone()).or_default()))
                                }
                                _ => None,
                            };
                            match counted {
                                Some((limit, held_by_owner)) if *held_by_owner >= i64::from(limit) => {
                                    ImportOutcome::OwnerKeyLimit { limit }
                                }
                                counted => {
                                    if let Some((_, held_by_owner)) = counted {
                                        *held_by_owner += 1;
                                    }
                                    // A second row of the same hash is the same key.
                                    held.insert(hash, true);
                                    inserts.push(stored);
                                    ImportOutcome::Imported
                                }
                            }
                        }
                    };
                    outcomes.push(outcome);
                }
                insert_keys_on(conn, &inserts).await?;
                Ok(outcomes)
            }

            /// For each policy of `keys` that limits keys per owner: its
            /// limit, and how many live keys each of the keys' owners holds
            /// under it. The policy rows stay locked until commit.
            async fn live_owner_keys_on(
                conn: &mut Connection,
                tenant: &Tenant,
                keys: &[StoredKey],
            ) -> Result<HashMap<PolicyId, (u32, HashMap<String, i64>)>> {
                let mut owners_by_policy: HashMap<PolicyId, HashSet<&str>> = HashMap::new();
                for stored in keys {
                    if let (Some(owner), Some(policy)) = (&stored.key.owner_id, stored.key.policy_id) {
                        owners_by_policy.entry(policy).or_default().insert(owner);
                    }
                }
                // Live at the import's time: its active keys' `updated_at`.
                let now = keys.iter().map(|stored| stored.key.updated_at).max();
                let mut live = HashMap::new();
                for (policy_id, owners) in owners_by_policy {
                    let row = sqlx::query(statement!(
                        Db,
                        "SELECT max_active_keys_per_owner FROM keysmith_policies \
                         WHERE id = ? AND app_id = ? AND tenant_id = ?",
                        Db::LOCK_ROWS
                    ))
                    .bind_scoped(policy_id.uuid(), tenant)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(store_error)?;
                    let Some(limit) = row.map(|row| Db::opt_big(&row, "max_active_keys_per_owner")).transpose()?.flatten()
                    else {
                        continue;
                    };
                    let limit = u32::try_from(limit).map_err(|e| corrupt("policy max_active_keys_per_owner", e))?;
                    let owners: Vec<&str> = owners.into_iter().collect();
                    let mut counts = HashMap::new();
                    for chunk in owners.chunks(1000) {
                        let mut qb = QueryBuilder::<Db>::new(
                            "SELECT owner_id, COUNT(*) AS held FROM keysmith_keys WHERE policy_id = ",
                        );
                        qb.push_bind(policy_id.uuid());
                        push_tenant(&mut qb, "", tenant);
                        qb.push(" AND state IN ('active', 'suspended') AND (expires_at IS NULL OR expires_at > ");
                        qb.push_bind(now.map(Db::time));
                        qb.push(") AND owner_id IN (");
                        let mut list = qb.separated(", ");
                        for owner in chunk {
                            list.push_bind(*owner);
                        }
                        qb.push(") GROUP BY owner_id");
                        for row in qb.build().persistent(false).fetch_all(&mut *conn).await.map_err(store_error)? {
                            counts.insert(Db::text(&row, "owner_id")?, Db::big(&row, "held")?);
                        }
                    }
                    live.insert(policy_id, (limit, counts));
                }
                Ok(live)
            }

            /// Inserts new keys (of new lineages, without credits) and their
            /// scopes by multi-row statements, inside the caller's transaction.
            async fn insert_keys_on(conn: &mut Connection, keys: &[&StoredKey]) -> Result<()> {
                // 19 values a key, within the backend's limit on bound values.
                for chunk in keys.chunks(Db::ROWS_PER_INSERT * 11 / 19) {
                    let mut qb = QueryBuilder::<Db>::new(
                        "INSERT INTO keysmith_keys (id, app_id, tenant_id, hash, name, hint, prefix, environment, \
                         state, policy_id, expires_at, grace_expires_at, revoked_reason, last_used_at, created_at, \
                         updated_at, metadata, lineage_id, owner_id) ",
                    );
                    qb.push_values(chunk, |mut row, stored| {
                        let key = &*stored.key;
                        row.push_bind(key.id.uuid())
                            .push_bind(key.tenant.app_id.clone())
                            .push_bind(key.tenant.tenant_id.clone())
                            .push_bind(stored.hash.to_hex())
                            .push_bind(key.name.clone())
                            .push_bind(key.hint.clone())
                            .push_bind(key.prefix.clone())
                            .push_bind(key.environment.as_str())
                            .push_bind(key.state.as_str())
                            .push_bind(key.policy_id.map(|id| id.uuid()))
                            .push_bind(key.expires_at.map(Db::time))
                            .push_bind(key.grace_expires_at.map(Db::time))
                            .push_bind(key.revoked_reason.clone())
                            .push_bind(key.last_used_at.map(Db::time))
                            .push_bind(Db::time(key.created_at))
                            .push_bind(Db::time(key.updated_at))
                            .push_bind(Json(key.metadata.clone()))
                            .push_bind(key.lineage_id.uuid())
                            .push_bind(key.owner_id.clone());
                    });
                    let first = chunk.first().map(|stored| (stored.key.id, stored.key.policy_id));
                    if let Err(error) = qb.build().persistent(false).execute(&mut *conn).await {
                        let (id, policy_id) = first.unwrap_or((KeyId::new(), None));
                        return Err(key_insert_error(error, id, policy_id));
                    }
                }
                let scopes: Vec<(KeyId, i32, &String)> = keys
                    .iter()
                    .flat_map(|stored| stored.key.scopes.iter().zip(0..).map(|(scope, position)| (stored.key.id, position, scope)))
                    .collect();
                for chunk in scopes.chunks(Db::ROWS_PER_INSERT) {
                    let mut qb = QueryBuilder::<Db>::new("INSERT INTO keysmith_key_scopes (key_id, position, scope) ");
                    qb.push_values(chunk, |mut row, (id, position, scope)| {
                        row.push_bind(id.uuid()).push_bind(*position).push_bind((*scope).clone());
                    });
                    qb.build().persistent(false).execute(&mut *conn).await.map_err(store_error)?;
                }
                Ok(())
            }

            /// Inserts a key and its scopes on `conn` (inside the caller's transaction).
            async fn insert_key_on(conn: &mut Connection, stored: &StoredKey) -> Result<()> {
                let key = &*stored.key;
                let policy_id = key.policy_id.map(|id| id.uuid());
                // The policy must be the tenant's: checked in the statement itself,
                // and the foreign key keeps the policy from vanishing before commit.
                let inserted = sqlx::query(statement!(
                    Db,
                    "INSERT INTO keysmith_keys (id, app_id, tenant_id, hash, name, hint, prefix, environment, \
                     state, policy_id, expires_at, grace_expires_at, revoked_reason, last_used_at, created_at, \
                     updated_at, metadata, lineage_id, owner_id) \
                     SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM (SELECT 1) AS one \
                     WHERE ? IS NULL OR EXISTS (SELECT 1 FROM keysmith_policies p \
                         WHERE p.id = ? AND p.app_id = ? AND p.tenant_id = ?)"
                ))
                .bind_scoped(key.id.uuid(), &key.tenant)
                .bind(stored.hash.to_hex())
                .bind(&key.name)
                .bind(&key.hint)
                .bind(&key.prefix)
                .bind(key.environment.as_str())
                .bind(key.state.as_str())
                .bind(policy_id)
                .bind(key.expires_at.map(Db::time))
                .bind(key.grace_expires_at.map(Db::time))
                .bind(&key.revoked_reason)
                .bind(key.last_used_at.map(Db::time))
                .bind(Db::time(key.created_at))
                .bind(Db::time(key.updated_at))
                .bind(Json(&key.metadata))
                .bind(key.lineage_id.uuid())
                .bind(&key.owner_id)
                .bind(policy_id)
                .bind(policy_id)
                .bind(&key.tenant.app_id)
                .bind(&key.tenant.tenant_id)
                .execute(&mut *conn)
                .await
                .map_err(|e| key_insert_error(e, key.id, key.policy_id))?;

                if inserted.rows_affected() == 0 {
                    // No row: the policy is not the tenant's, unless the key is
                    // taken anyway (reported first, like every store does).
                    let taken = sqlx::query(statement!(Db, "SELECT id FROM keysmith_keys WHERE id = ? OR hash = ?"))
                        .bind(key.id.uuid())
                        .bind(stored.hash.to_hex())
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(store_error)?;
                    return Err(if taken.is_some() {
                        Error::AlreadyExists { entity: "key", name: key.id.to_string() }
                    } else {
                        Error::NotFound {
                            entity: "policy",
                            id: key.policy_id.map(|id| id.to_string()).unwrap_or_default(),
                        }
                    });
                }
                insert_scopes_on(conn, key.id, &key.scopes).await
            }

            /// Refuses a new live key of an owner who already holds as many
            /// live keys under the key's policy as it allows. The policy row
            /// stays locked until commit, so concurrent creations under that
            /// policy count one after another.
            async fn check_owner_limit_on(conn: &mut Connection, key: &Key) -> Result<()> {
                let (Some(owner_id), Some(policy_id)) = (&key.owner_id, key.policy_id) else {
                    return Ok(());
                };
                if !key.state.counts_toward_owner_limit() {
                    return Ok(());
                }
                let row = sqlx::query(statement!(
                    Db,
                    "SELECT max_active_keys_per_owner FROM keysmith_policies \
                     WHERE id = ? AND app_id = ? AND tenant_id = ?",
                    Db::LOCK_ROWS
                ))
                .bind_scoped(policy_id.uuid(), &key.tenant)
                .fetch_optional(&mut *conn)
                .await
                .map_err(store_error)?;
                // No such policy: the insert reports it.
                let Some(limit) = row.map(|row| Db::opt_big(&row, "max_active_keys_per_owner")).transpose()?.flatten()
                else {
                    return Ok(());
                };
                let held: i64 = sqlx::query(statement!(
                    Db,
                    "SELECT COUNT(*) AS held FROM keysmith_keys WHERE app_id = ? AND tenant_id = ? AND owner_id = ? \
                     AND policy_id = ? AND state IN ('active', 'suspended') AND (expires_at IS NULL OR expires_at > ?)"
                ))
                .bind(&key.tenant.app_id)
                .bind(&key.tenant.tenant_id)
                .bind(owner_id)
                .bind(policy_id.uuid())
                .bind(Db::time(key.created_at))
                .fetch_one(&mut *conn)
                .await
                .map_err(store_error)
                .and_then(|row| Db::big(&row, "held"))?;
                if held >= limit {
                    return Err(Error::OwnerKeyLimit {
                        owner_id: owner_id.clone(),
                        policy_id,
                        limit: u32::try_from(limit).map_err(|e| corrupt("policy max_active_keys_per_owner", e))?,
                    });
                }
                Ok(())
            }

            async fn insert_scopes_on(conn: &mut Connection, id: KeyId, scopes: &[String]) -> Result<()> {
                for (chunk, first) in scopes.chunks(Db::ROWS_PER_INSERT).zip((0..).step_by(Db::ROWS_PER_INSERT)) {
                    let mut qb = QueryBuilder::<Db>::new("INSERT INTO keysmith_key_scopes (key_id, position, scope) ");
                    qb.push_values(chunk.iter().zip(first..), |mut row, (scope, position): (_, i32)| {
                        row.push_bind(id.uuid()).push_bind(position).push_bind(scope);
                    });
                    qb.build().execute(&mut *conn).await.map_err(store_error)?;
                }
                Ok(())
            }

            /// Locks the key `id` of `tenant` by its primary key until commit
            /// and checks that it can move from one of `from` to `to`.
            ///
            /// The row is locked before the conditional `UPDATE`: InnoDB may
            /// run that `UPDATE` through a secondary index (`state, …`) and
            /// lock its entry before the row, while a racing change holding
            /// the row waits for that entry, and the two deadlock. Waiting
            /// for the row first puts every change of one key in one order.
            async fn lock_for_transition(
                conn: &mut Connection,
                tenant: &Tenant,
                id: KeyId,
                from: &[KeyState],
                to: KeyState,
            ) -> Result<()> {
                let row = sqlx::query(statement!(
                    Db,
                    "SELECT state FROM keysmith_keys WHERE id = ? AND app_id = ? AND tenant_id = ?",
                    Db::LOCK_ROWS
                ))
                .bind_scoped(id.uuid(), tenant)
                .fetch_optional(&mut *conn)
                .await
                .map_err(store_error)?;
                let current = row.map(|row| parse_column("key state", &Db::text(&row, "state")?)).transpose()?;
                check_transition(id, current, from, to)
            }

            /// The keys `k` with their scopes and credits, for a `WHERE` to follow.
            fn select_keys<'a>() -> QueryBuilder<'a, Db> {
                QueryBuilder::new(format!("SELECT {KEY_COLUMNS}, {} AS scopes FROM {KEYS_FROM}", Db::SCOPES))
            }

            /// Pushes ` AND` the tenant's columns, named after `alias` (`"k."`, or `""` for none).
            fn push_tenant<'a>(qb: &mut QueryBuilder<'a, Db>, alias: &str, tenant: &'a Tenant) {
                qb.push(format_args!(" AND {alias}app_id = ")).push_bind(&tenant.app_id);
                qb.push(format_args!(" AND {alias}tenant_id = ")).push_bind(&tenant.tenant_id);
            }

            fn push_range(qb: &mut QueryBuilder<'_, Db>, column: &str, range: TimeRange) {
                if let Some(from) = range.from {
                    qb.push(format_args!(" AND {column} >= ")).push_bind(Db::time(from));
                }
                if let Some(to) = range.to {
                    qb.push(format_args!(" AND {column} < ")).push_bind(Db::time(to));
                }
            }

            impl $store {
                async fn begin(&self) -> Result<sqlx::Transaction<'static, Db>> {
                    self.pool.begin_with(Db::BEGIN).await.map_err(store_error)
                }

                /// The keys of a statement that ends `FROM keysmith_keys k` and whatever `tail` adds.
                async fn keys(&self, tail: impl FnOnce(&mut QueryBuilder<'_, Db>)) -> Result<Vec<Row>> {
                    let mut qb = select_keys();
                    tail(&mut qb);
                    qb.build().fetch_all(&self.pool).await.map_err(store_error)
                }
            }

            #[async_trait]
            impl KeyStore for $store {
                async fn insert_key(&self, key: &StoredKey) -> Result<()> {
                    let mut tx = self.begin().await?;
                    if let Err(error) = check_owner_limit_on(&mut tx, &key.key).await {
                        // At once, not when the connection is next used: the
                        // policy row stays locked until the transaction ends.
                        tx.rollback().await.map_err(store_error)?;
                        return Err(error);
                    }
                    insert_key_on(&mut tx, key).await?;
                    // A new lineage; a rotation's key shares the credits stored already.
                    if let Some(credits) = &key.key.credits {
                        let holder = Holder::Lineage(&key.key.tenant, key.key.lineage_id.uuid());
                        insert_credits_on(&mut tx, holder, credits).await?;
                    }
                    tx.commit().await.map_err(store_error)
                }

                async fn import_keys(&self, tenant: &Tenant, keys: &[StoredKey], dry_run: bool) -> Result<Vec<ImportOutcome>> {
                    let mut tx = self.begin().await?;
                    let outcomes = match import_keys_on(&mut tx, tenant, keys).await {
                        Ok(outcomes) => outcomes,
                        Err(error) => {
                            tx.rollback().await.map_err(store_error)?;
                            return Err(error);
                        }
                    };
                    if dry_run {
                        tx.rollback().await.map_err(store_error)?;
                    } else {
                        tx.commit().await.map_err(store_error)?;
                    }
                    Ok(outcomes)
                }

                async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<StoredKey>> {
                    let row = sqlx::query(statement!(
                        Db,
                        "SELECT ",
                        KEY_COLUMNS,
                        ", ",
                        Db::SCOPES,
                        " AS scopes FROM ",
                        KEYS_FROM,
                        " WHERE k.hash = ?"
                    ))
                    .bind(hash.to_hex())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(store_error)?;
                    row.as_ref().map(rows::stored_key::<Db>).transpose()
                }

                async fn get_key(&self, tenant: &Tenant, id: KeyId) -> Result<Option<StoredKey>> {
                    let mut conn = self.pool.acquire().await.map_err(store_error)?;
                    key_on(&mut conn, Some(tenant), id).await?.as_ref().map(rows::stored_key::<Db>).transpose()
                }

                async fn list_keys(&self, tenant: &Tenant, filter: &KeyFilter) -> Result<Vec<Key>> {
                    let rows = self
                        .keys(|qb| {
                            qb.push(" WHERE k.app_id = ").push_bind(tenant.app_id.clone());
                            qb.push(" AND k.tenant_id = ").push_bind(tenant.tenant_id.clone());
                            if let Some(state) = filter.state {
                                qb.push(" AND k.state = ").push_bind(state.as_str());
                            }
                            if let Some(environment) = filter.environment {
                                qb.push(" AND k.environment = ").push_bind(environment.as_str());
                            }
                            if let Some(policy_id) = filter.policy_id {
                                qb.push(" AND k.policy_id = ").push_bind(policy_id.uuid());
                            }
                            if let Some(owner_id) = &filter.owner_id {
                                qb.push(" AND k.owner_id = ").push_bind(owner_id.clone());
                            }
                            let (limit, offset) = limit_offset(filter.page);
                            qb.push(" ORDER BY k.id LIMIT ").push_bind(limit).push(" OFFSET ").push_bind(offset);
                        })
                        .await?;
                    rows.iter().map(rows::key::<Db>).collect()
                }

                async fn transition_key(&self, tenant: &Tenant, id: KeyId, transition: &Transition) -> Result<Key> {
                    let mut tx = self.begin().await?;
                    lock_for_transition(&mut tx, tenant, id, transition.from, transition.to).await?;
                    let mut qb = QueryBuilder::<Db>::new("UPDATE keysmith_keys SET state = ");
                    qb.push_bind(transition.to.as_str()).push(", updated_at = ").push_bind(Db::time(transition.at));
                    if transition.to != KeyState::Expired {
                        // Revoked and suspended keys keep why; a reactivated key forgets it.
                        qb.push(", revoked_reason = ").push_bind(transition.reason.clone());
                    }
                    qb.push(" WHERE id = ").push_bind(id.uuid());
                    push_tenant(&mut qb, "", tenant);
                    // Still compare-and-set: the lock is what orders racing changes.
                    qb.push(" AND state IN (");
                    let mut states = qb.separated(", ");
                    for state in transition.from {
                        states.push_bind(state.as_str());
                    }
                    qb.push(")");
                    if qb.build().execute(&mut *tx).await.map_err(store_error)?.rows_affected() == 0 {
                        return Err(Error::store(format!("key {id} changed state while locked")));
                    }
                    commit_changed(tx, id).await
                }

                async fn rotate_key(&self, tenant: &Tenant, rotation: &RotationWrite) -> Result<Key> {
                    let record = &rotation.record;
                    if rotation.new_key.key.tenant != *tenant || record.tenant != *tenant {
                        return Err(Error::InvalidInput { field: "tenant", reason: "a rotation stays within one tenant".into() });
                    }
                    let mut tx = self.begin().await?;
                    lock_for_transition(&mut tx, tenant, record.key_id, &[KeyState::Active], KeyState::Rotated).await?;
                    let rotated = sqlx::query(statement!(
                        Db,
                        "UPDATE keysmith_keys SET state = 'rotated', grace_expires_at = ?, updated_at = ? \
                         WHERE id = ? AND app_id = ? AND tenant_id = ? AND state = 'active'"
                    ))
                    .bind(Db::time(record.grace_expires_at))
                    .bind(Db::time(record.created_at))
                    .bind_scoped(record.key_id.uuid(), tenant)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    if rotated.rows_affected() == 0 {
                        return Err(Error::store(format!("key {} changed state while locked", record.key_id)));
                    }
                    insert_key_on(&mut tx, &rotation.new_key).await?;
                    sqlx::query(statement!(
                        Db,
                        "INSERT INTO keysmith_rotations (id, key_id, new_key_id, app_id, tenant_id, old_hash, \
                         new_hash, reason, grace_ttl_us, grace_expires_at, created_at) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ))
                    .bind(record.id.uuid())
                    .bind(record.key_id.uuid())
                    .bind_scoped(record.new_key_id.uuid(), &record.tenant)
                    .bind(record.old_hash.to_hex())
                    .bind(record.new_hash.to_hex())
                    .bind(record.reason.as_str())
                    .bind(duration_to_micros("grace", record.grace_ttl)?)
                    .bind(Db::time(record.grace_expires_at))
                    .bind(Db::time(record.created_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| {
                        if is_foreign_key_violation(&e) {
                            Error::NotFound { entity: "key", id: record.new_key_id.to_string() }
                        } else {
                            named_write_error(e, "rotation", &record.id.to_string())
                        }
                    })?;
                    commit_changed(tx, record.key_id).await
                }

                async fn set_key_scopes(
                    &self,
                    tenant: &Tenant,
                    id: KeyId,
                    scopes: &[String],
                    at: DateTime<Utc>,
                ) -> Result<Key> {
                    let mut tx = self.begin().await?;
                    let updated = sqlx::query(statement!(
                        Db,
                        "UPDATE keysmith_keys SET updated_at = ? WHERE id = ? AND app_id = ? AND tenant_id = ?"
                    ))
                    .bind(Db::time(at))
                    .bind_scoped(id.uuid(), tenant)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    if updated.rows_affected() == 0 {
                        return Err(Error::NotFound { entity: "key", id: id.to_string() });
                    }
                    sqlx::query(statement!(Db, "DELETE FROM keysmith_key_scopes WHERE key_id = ?"))
                        .bind(id.uuid())
                        .execute(&mut *tx)
                        .await
                        .map_err(store_error)?;
                    insert_scopes_on(&mut tx, id, scopes).await?;
                    commit_changed(tx, id).await
                }

                async fn touch_key(&self, id: KeyId, at: DateTime<Utc>) -> Result<()> {
                    sqlx::query(statement!(
                        Db,
                        "UPDATE keysmith_keys SET last_used_at = ? \
                         WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)"
                    ))
                    .bind(Db::time(at))
                    .bind(id.uuid())
                    .bind(Db::time(at))
                    .execute(&self.pool)
                    .await
                    .map_err(store_error)?;
                    Ok(())
                }

                async fn set_credits(&self, tenant: &Tenant, id: KeyId, credits: Option<&Credits>) -> Result<Key> {
                    let mut tx = self.begin().await?;
                    let lineage = lineage_on(&mut tx, tenant, id).await?;
                    replace_credits_on(&mut tx, Holder::Lineage(tenant, lineage), credits).await?;
                    commit_changed(tx, id).await
                }

                async fn add_credits(&self, tenant: &Tenant, id: KeyId, amount: u64, now: DateTime<Utc>) -> Result<Key> {
                    let mut tx = self.begin().await?;
                    let lineage = lineage_on(&mut tx, tenant, id).await?;
                    add_credits_on(&mut tx, Holder::Lineage(tenant, lineage), amount, now).await?;
                    commit_changed(tx, id).await
                }

                async fn spend_credits(&self, key: &Key, cost: u64, now: DateTime<Utc>) -> Result<CreditSpend> {
                    let mut conn = self.pool.acquire().await.map_err(store_error)?;
                    spend_credits_on(&mut conn, Holder::Lineage(&key.tenant, key.lineage_id.uuid()), cost, now).await
                }

                async fn refund_credits(&self, key: &Key, cost: u64) -> Result<()> {
                    refund_credits_on(&self.pool, Holder::Lineage(&key.tenant, key.lineage_id.uuid()), cost).await
                }

                async fn owner_credits(&self, tenant: &Tenant, owner_id: &str) -> Result<Option<Credits>> {
                    let mut conn = self.pool.acquire().await.map_err(store_error)?;
                    credits_on(&mut conn, Holder::Owner(tenant, owner_id)).await
                }

                async fn set_owner_credits(&self, tenant: &Tenant, owner_id: &str, credits: Option<&Credits>) -> Result<()> {
                    let mut tx = self.begin().await?;
                    replace_credits_on(&mut tx, Holder::Owner(tenant, owner_id), credits).await?;
                    tx.commit().await.map_err(store_error)
                }

                async fn add_owner_credits(
                    &self,
                    tenant: &Tenant,
                    owner_id: &str,
                    amount: u64,
                    now: DateTime<Utc>,
                ) -> Result<Credits> {
                    let holder = Holder::Owner(tenant, owner_id);
                    let mut tx = self.begin().await?;
                    add_credits_on(&mut tx, holder, amount, now).await?;
                    let credits = credits_on(&mut tx, holder).await?.ok_or_else(|| Error::store("topped-up credits vanished"))?;
                    tx.commit().await.map_err(store_error)?;
                    Ok(credits)
                }

                async fn spend_owner_credits(
                    &self,
                    tenant: &Tenant,
                    owner_id: &str,
                    cost: u64,
                    now: DateTime<Utc>,
                ) -> Result<CreditSpend> {
                    let holder = Holder::Owner(tenant, owner_id);
                    let mut conn = self.pool.acquire().await.map_err(store_error)?;
                    // An owner without credits is what `CachedStore` remembers,
                    // so no read ahead of the spend: a balance costs three
                    // statements, as a lineage's does.
                    spend_credits_on(&mut conn, holder, cost, now).await
                }

                async fn refund_owner_credits(&self, tenant: &Tenant, owner_id: &str, cost: u64) -> Result<()> {
                    refund_credits_on(&self.pool, Holder::Owner(tenant, owner_id), cost).await
                }

                async fn list_due_keys(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Key>> {
                    let rows = self
                        .keys(|qb| {
                            qb.push(" LEFT JOIN keysmith_policies p ON p.id = k.policy_id WHERE (k.state = 'active' AND (k.expires_at <= ");
                            qb.push_bind(Db::time(now)).push(" OR (p.max_key_age_us IS NOT NULL AND ");
                            Db::push_age_micros(qb, now);
                            qb.push(" >= p.max_key_age_us))) OR (k.state = 'rotated' AND k.grace_expires_at <= ");
                            qb.push_bind(Db::time(now)).push(") ORDER BY k.id LIMIT ").push_bind(i64::from(limit));
                        })
                        .await?;
                    rows.iter().map(rows::key::<Db>).collect()
                }
            }

            /// Binds a policy's columns from `name` to `updated_at`, in table order.
            fn bind_policy<'q>(query: Query<'q>, policy: &'q Policy, c: &'q PolicyColumns) -> Query<'q> {
                query
                    .bind(&policy.name)
                    .bind(Json(&c.rate_limits))
                    .bind(policy.limit_by.as_str())
                    .bind(<Db as Dialect>::List::store(c.allowed_ips.clone()))
                    .bind(<Db as Dialect>::List::store(policy.allowed_origins.clone()))
                    .bind(<Db as Dialect>::List::store(policy.allowed_scopes.clone()))
                    .bind(c.max_key_age_us)
                    .bind(policy.quota.as_ref().map(Json))
                    .bind(c.rotation_grace_us)
                    .bind(Json(&policy.metadata))
                    .bind(Db::time(policy.created_at))
                    .bind(Db::time(policy.updated_at))
                    .bind(c.max_active_keys_per_owner)
            }

            #[async_trait]
            impl PolicyStore for $store {
                async fn insert_policy(&self, policy: &Policy) -> Result<()> {
                    let c = PolicyColumns::of(policy)?;
                    let insert = sqlx::query(statement!(
                        Db,
                        "INSERT INTO keysmith_policies (",
                        POLICY_COLUMNS,
                        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ))
                    .bind_scoped(policy.id.uuid(), &policy.tenant);
                    bind_policy(insert, policy, &c)
                        .execute(&self.pool)
                        .await
                        .map_err(|e| named_write_error(e, "policy", &policy.name))?;
                    Ok(())
                }

                async fn get_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<Option<Arc<Policy>>> {
                    let row = sqlx::query(statement!(
                        Db,
                        "SELECT ",
                        POLICY_COLUMNS,
                        " FROM keysmith_policies WHERE id = ? AND app_id = ? AND tenant_id = ?"
                    ))
                    .bind_scoped(id.uuid(), tenant)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(store_error)?;
                    Ok(row.as_ref().map(rows::policy::<Db>).transpose()?.map(Arc::new))
                }

                async fn list_policies(&self, tenant: &Tenant, page: Page) -> Result<Vec<Policy>> {
                    let (limit, offset) = limit_offset(page);
                    let rows = sqlx::query(statement!(
                        Db,
                        "SELECT ",
                        POLICY_COLUMNS,
                        " FROM keysmith_policies WHERE app_id = ? AND tenant_id = ? ORDER BY id LIMIT ? OFFSET ?"
                    ))
                    .bind(&tenant.app_id)
                    .bind(&tenant.tenant_id)
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(store_error)?;
                    rows.iter().map(rows::policy::<Db>).collect()
                }

                async fn update_policy(&self, policy: &Policy) -> Result<()> {
                    let c = PolicyColumns::of(policy)?;
                    let update = sqlx::query(statement!(
                        Db,
                        "UPDATE keysmith_policies SET name = ?, rate_limits = ?, limit_by = ?, allowed_ips = ?, allowed_origins = ?, allowed_scopes = ?, \
                         max_key_age_us = ?, quota = ?, rotation_grace_us = ?, metadata = ?, created_at = ?, \
                         updated_at = ?, max_active_keys_per_owner = ? WHERE id = ? AND app_id = ? AND tenant_id = ?"
                    ));
                    let updated = bind_policy(update, policy, &c)
                        .bind_scoped(policy.id.uuid(), &policy.tenant)
                        .execute(&self.pool)
                        .await
                        .map_err(|e| named_write_error(e, "policy", &policy.name))?;
                    if updated.rows_affected() == 0 {
                        return Err(Error::NotFound { entity: "policy", id: policy.id.to_string() });
                    }
                    Ok(())
                }

                async fn delete_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<()> {
                    let mut tx = self.begin().await?;
                    // Locking the row first makes the check atomic: a key insert that
                    // names the policy holds a share lock on it until it commits (so it
                    // is visible to the check below) or waits for this transaction (and
                    // then fails on the foreign key). SQLite's transaction holds the
                    // write lock from its start.
                    let found = sqlx::query(statement!(
                        Db,
                        "SELECT id FROM keysmith_policies WHERE id = ? AND app_id = ? AND tenant_id = ?",
                        Db::LOCK_ROWS
                    ))
                    .bind_scoped(id.uuid(), tenant)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    if found.is_none() {
                        return Err(Error::NotFound { entity: "policy", id: id.to_string() });
                    }
                    let in_use = sqlx::query(statement!(
                        Db,
                        "SELECT id FROM keysmith_keys WHERE policy_id = ? AND state NOT IN ('expired', 'revoked') \
                         LIMIT 1",
                        Db::LOCK_ROWS
                    ))
                    .bind(id.uuid())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?;
                    if in_use.is_some() {
                        return Err(Error::PolicyInUse { policy_id: id });
                    }
                    sqlx::query(statement!(Db, "DELETE FROM keysmith_policies WHERE id = ?"))
                        .bind(id.uuid())
                        .execute(&mut *tx)
                        .await
                        .map_err(store_error)?;
                    tx.commit().await.map_err(store_error)
                }
            }

            #[async_trait]
            impl ScopeStore for $store {
                async fn insert_scope(&self, scope: &Scope) -> Result<()> {
                    sqlx::query(statement!(
                        Db,
                        "INSERT INTO keysmith_scopes (id, app_id, tenant_id, name, description, created_at) \
                         VALUES (?, ?, ?, ?, ?, ?)"
                    ))
                    .bind_scoped(scope.id.uuid(), &scope.tenant)
                    .bind(&scope.name)
                    .bind(&scope.description)
                    .bind(Db::time(scope.created_at))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| named_write_error(e, "scope", &scope.name))?;
                    Ok(())
                }

                async fn list_scopes(&self, tenant: &Tenant) -> Result<Vec<Scope>> {
                    let rows = sqlx::query(statement!(
                        Db,
                        "SELECT id, name, description, created_at FROM keysmith_scopes \
                         WHERE app_id = ? AND tenant_id = ? ORDER BY ",
                        Db::ORDER_BY_NAME
                    ))
                    .bind(&tenant.app_id)
                    .bind(&tenant.tenant_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(store_error)?;
                    rows.iter()
                        .map(|row| {
                            Ok(Scope {
                                id: ScopeId::from_uuid(Db::uuid(row, "id")?),
                                tenant: tenant.clone(),
                                name: Db::text(row, "name")?,
                                description: Db::text(row, "description")?,
                                created_at: Db::at(row, "created_at")?,
                            })
                        })
                        .collect()
                }

                async fn delete_scope(&self, tenant: &Tenant, id: ScopeId) -> Result<()> {
                    let deleted = sqlx::query(statement!(
                        Db,
                        "DELETE FROM keysmith_scopes WHERE id = ? AND app_id = ? AND tenant_id = ?"
                    ))
                    .bind_scoped(id.uuid(), tenant)
                    .execute(&self.pool)
                    .await
                    .map_err(store_error)?;
                    if deleted.rows_affected() == 0 {
                        return Err(Error::NotFound { entity: "scope", id: id.to_string() });
                    }
                    Ok(())
                }
            }

            /// One aggregate row's increment.
            struct AggregateDelta<'a> {
                tenant: &'a Tenant,
                requests: i64,
                errors: i64,
            }

            /// The day and month increments of `records`, each record counted once.
            fn aggregate_deltas<'a>(records: &[&'a UsageRecord]) -> Vec<((Uuid, Period, DateTime<Utc>), AggregateDelta<'a>)> {
                let mut deltas: HashMap<(Uuid, Period, DateTime<Utc>), AggregateDelta<'a>> = HashMap::new();
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
            impl UsageStore for $store {
                async fn record_batch(&self, records: &[UsageRecord]) -> Result<()> {
                    if records.is_empty() {
                        return Ok(());
                    }
                    // A repeated id inside the batch is one record.
                    let mut seen = HashSet::with_capacity(records.len());
                    let unique: Vec<&UsageRecord> = records.iter().filter(|r| seen.insert(r.id.uuid())).collect();
                    let mut tx = self.begin().await?;
                    // Records go in by id: the ones already stored (a replayed batch)
                    // are skipped, so only new records reach the aggregates.
                    let mut fresh = Vec::with_capacity(unique.len());
                    for chunk in unique.chunks(Db::ROWS_PER_INSERT) {
                        let inserted: HashSet<Uuid> = Db::insert_usage(&mut tx, chunk).await?.into_iter().collect();
                        fresh.extend(chunk.iter().copied().filter(|r| inserted.contains(&r.id.uuid())));
                    }
                    let deltas = aggregate_deltas(&fresh);
                    for chunk in deltas.chunks(Db::ROWS_PER_INSERT) {
                        let mut qb = QueryBuilder::<Db>::new(
                            "INSERT INTO keysmith_usage_agg (key_id, period, period_start, app_id, tenant_id, \
                             requests, errors) ",
                        );
                        qb.push_values(chunk, |mut b, ((key_id, period, start), delta)| {
                            b.push_bind(*key_id)
                                .push_bind(period.as_str())
                                .push_bind(Db::time(*start))
                                .push_bind(&delta.tenant.app_id)
                                .push_bind(&delta.tenant.tenant_id)
                                .push_bind(delta.requests)
                                .push_bind(delta.errors);
                        });
                        qb.push(Db::ADD_TO_AGGREGATE);
                        qb.build().execute(&mut *tx).await.map_err(store_error)?;
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
                    let mut qb = QueryBuilder::<Db>::new(format!(
                        "SELECT id, key_id, app_id, tenant_id, endpoint, method, status, {} AS ip, user_agent, \
                         latency_us, occurred_at FROM keysmith_usage WHERE key_id = ",
                        Db::IP_READ
                    ));
                    qb.push_bind(key_id.uuid());
                    push_tenant(&mut qb, "", tenant);
                    push_range(&mut qb, "occurred_at", range);
                    let (limit, offset) = limit_offset(page);
                    qb.push(" ORDER BY occurred_at, id LIMIT ").push_bind(limit).push(" OFFSET ").push_bind(offset);
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(store_error)?;
                    rows.iter().map(rows::usage::<Db>).collect()
                }

                async fn usage_aggregates(
                    &self,
                    tenant: &Tenant,
                    key_id: KeyId,
                    period: Period,
                    range: TimeRange,
                ) -> Result<Vec<UsageAggregate>> {
                    let mut qb = QueryBuilder::<Db>::new(
                        "SELECT app_id, tenant_id, period_start, requests, errors FROM keysmith_usage_agg WHERE key_id = ",
                    );
                    qb.push_bind(key_id.uuid());
                    push_tenant(&mut qb, "", tenant);
                    qb.push(" AND period = ").push_bind(period.as_str());
                    push_range(&mut qb, "period_start", range);
                    qb.push(" ORDER BY period_start");
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(store_error)?;
                    rows.iter()
                        .map(|row| {
                            let (requests, errors) = rows::counts::<Db>(row)?;
                            Ok(UsageAggregate {
                                key_id,
                                tenant: rows::tenant::<Db>(row)?,
                                period,
                                period_start: Db::at(row, "period_start")?,
                                requests,
                                errors,
                            })
                        })
                        .collect()
                }

                async fn tenant_usage(&self, tenant: &Tenant, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>> {
                    self.totals(tenant, period, range, |_| {}).await
                }

                async fn lineage_usage(
                    &self,
                    tenant: &Tenant,
                    lineage: KeyId,
                    period: Period,
                    range: TimeRange,
                ) -> Result<Vec<UsageTotal>> {
                    self.totals(tenant, period, range, |qb| {
                        qb.push(" AND a.key_id IN (SELECT k.id FROM keysmith_keys k WHERE k.lineage_id = ");
                        qb.push_bind(lineage.uuid()).push(")");
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
                    self.totals(tenant, period, range, |qb| {
                        qb.push(" AND a.key_id IN (SELECT k.id FROM keysmith_keys k WHERE k.app_id = ");
                        qb.push_bind(tenant.app_id.clone()).push(" AND k.tenant_id = ");
                        qb.push_bind(tenant.tenant_id.clone()).push(" AND k.owner_id = ");
                        qb.push_bind(owner_id.to_owned()).push(")");
                    })
                    .await
                }
            }

            impl $store {
                /// The totals per `period` of `tenant`'s aggregates `a` that `filter` keeps.
                async fn totals(
                    &self,
                    tenant: &Tenant,
                    period: Period,
                    range: TimeRange,
                    filter: impl FnOnce(&mut QueryBuilder<'_, Db>),
                ) -> Result<Vec<UsageTotal>> {
                    let mut qb = QueryBuilder::<Db>::new(format!(
                        "SELECT a.period_start AS period_start, CAST(SUM(a.requests) AS {0}) AS requests, \
                         CAST(SUM(a.errors) AS {0}) AS errors FROM keysmith_usage_agg a WHERE a.period = ",
                        Db::BIGINT
                    ));
                    qb.push_bind(period.as_str());
                    push_tenant(&mut qb, "a.", tenant);
                    filter(&mut qb);
                    push_range(&mut qb, "a.period_start", range);
                    qb.push(" GROUP BY a.period_start ORDER BY a.period_start");
                    let rows = qb.build().fetch_all(&self.pool).await.map_err(store_error)?;
                    rows.iter()
                        .map(|row| {
                            let (requests, errors) = rows::counts::<Db>(row)?;
                            Ok(UsageTotal { period, period_start: Db::at(row, "period_start")?, requests, errors })
                        })
                        .collect()
                }
            }

            #[async_trait]
            impl RotationStore for $store {
                async fn list_rotations(&self, tenant: &Tenant, key_id: KeyId) -> Result<Vec<RotationRecord>> {
                    let rows = sqlx::query(statement!(
                        Db,
                        "SELECT id, key_id, new_key_id, app_id, tenant_id, old_hash, new_hash, reason, grace_ttl_us, \
                         grace_expires_at, created_at FROM keysmith_rotations \
                         WHERE app_id = ? AND tenant_id = ? AND (key_id = ? OR new_key_id = ?) ORDER BY id"
                    ))
                    .bind(&tenant.app_id)
                    .bind(&tenant.tenant_id)
                    .bind(key_id.uuid())
                    .bind(key_id.uuid())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(store_error)?;
                    rows.iter().map(rows::rotation::<Db>).collect()
                }
            }

            #[async_trait]
            impl Store for $store {
                async fn migrate(&self) -> Result<()> {
                    // The application's own migrations may live in the same history table.
                    let migrator =
                        Migrator { migrations: MIGRATOR.migrations.clone(), ignore_missing: true, ..Migrator::DEFAULT };
                    let mut conn = self.pool.acquire().await.map_err(store_error)?;
                    let Some((lock, unlock)) = Db::MIGRATION_LOCK else {
                        return migrator.run_direct(&mut *conn).await.map_err(Error::store);
                    };
                    let locked = sqlx::query(lock).fetch_one(&mut *conn).await.map_err(store_error)?;
                    if Db::big(&locked, "locked")? != 1 {
                        return Err(Error::store("another migration of this database did not finish in time"));
                    }
                    let migrated = migrator.run_direct(&mut *conn).await.map_err(Error::store);
                    sqlx::query(unlock).execute(&mut *conn).await.map_err(store_error)?;
                    migrated
                }

                async fn ping(&self) -> Result<()> {
                    sqlx::query("SELECT 1").execute(&self.pool).await.map_err(store_error)?;
                    Ok(())
                }

                async fn close(&self) {
                    self.pool.close().await;
                }
            }

            impl From<sqlx::Pool<Db>> for $store {
                fn from(pool: sqlx::Pool<Db>) -> Self {
                    Self::new(pool)
                }
            }
        }
    };
}
pub(crate) use sql_store;
