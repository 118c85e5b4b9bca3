//! [`SqlStore`]: the store logic every SQL backend shares, written once as
//! generic functions over a [`Dialect`], one module per subsystem.
//!
//! The statements are portable SQL: every state change locks the key's row,
//! checks its state, updates it and reads it back in one transaction (MySQL
//! has no `UPDATE … RETURNING`); multi-row writes (a key with its scopes, a
//! rotation, a usage batch with its day and month aggregates) are one
//! transaction, each table written by multi-row statements. Rows are read
//! back by the generic functions of [`rows`](crate::rows).

mod changes;
mod credits;
mod import;
mod keys;
mod policies;
mod rotations;
mod scopes;
mod usage;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keysmith_core::store::{LoggedChanges, TimeRange};
use keysmith_core::{Change, Error, Result, Store, Tenant};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool, Transaction};
use uuid::Uuid;

use crate::common::store_error;
use crate::dialect::{Arg as _, Backend, Dialect, Exec as _, Sql, Statement};
use crate::rows::Columns as _;

pub(crate) use usage::{Inserted, insert_new_usage, upsert_rollups_in_rows};

/// A store in an SQL database `DB`: [`PgStore`](crate::PgStore),
/// [`SqliteStore`](crate::SqliteStore) or [`MySqlStore`](crate::MySqlStore),
/// whose pages say how each connects and stores.
#[derive(Debug, Clone)]
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    /// Usage transactions commit without waiting for their WAL (PostgreSQL's
    /// [`with_asynchronous_usage_commit`](crate::PgStore::with_asynchronous_usage_commit)).
    pub(crate) asynchronous_usage_commit: bool,
}

impl<DB: Database> SqlStore<DB> {
    /// A store on an existing pool (its settings are yours; SQLite's must
    /// enforce foreign keys).
    #[must_use]
    pub fn new(pool: Pool<DB>) -> Self {
        Self { pool, asynchronous_usage_commit: false }
    }

    /// The pool, for health checks or the application's own queries.
    #[must_use]
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

impl<DB: Database> From<Pool<DB>> for SqlStore<DB> {
    fn from(pool: Pool<DB>) -> Self {
        Self::new(pool)
    }
}

impl<DB: Backend> SqlStore<DB> {
    /// Connects to `url` (as the backend's store documents); does not migrate.
    ///
    /// # Errors
    /// [`Error::Store`] if the URL is invalid or the database cannot be
    /// reached or opened, saying why (connection refused, access denied, no
    /// such database…) rather than only that the pool timed out.
    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self::new(DB::open(url).await?))
    }
}

impl<DB: Database> SqlStore<DB> {
    /// A connection of the pool.
    async fn conn(&self) -> Result<PoolConnection<DB>> {
        self.pool.acquire().await.map_err(store_error)
    }
}

/// A transaction on `store`, begun as the backend begins one.
async fn begin<DB: Dialect>(store: &SqlStore<DB>) -> Result<Transaction<'static, DB>> {
    store.pool.begin_with(DB::BEGIN).await.map_err(store_error)
}

/// The keys of a statement that ends `FROM keysmith_keys k` and whatever `tail` adds.
async fn keys<DB: Dialect>(store: &SqlStore<DB>, tail: impl FnOnce(&mut Sql<'_, DB>)) -> Result<Vec<DB::Row>> {
    let mut qb = select_keys();
    tail(&mut qb);
    let (sql, args) = qb.finish()?;
    sqlx::query_with::<DB, _>(&sql, args).fetch_all(store.conn().await?.exec()).await.map_err(store_error)
}

#[async_trait]
impl<DB: Dialect> Store for SqlStore<DB> {
    async fn migrate(&self) -> Result<()> {
        // The application's own migrations may live in the same history table.
        let migrator =
            Migrator { migrations: DB::migrator().migrations.clone(), ignore_missing: true, ..Migrator::DEFAULT };
        let mut conn = self.conn().await?;
        let Some((lock, unlock)) = DB::MIGRATION_LOCK else {
            return migrator.run_direct(&mut *conn).await.map_err(Error::store);
        };
        let locked = sqlx::query(lock).fetch_one(conn.exec()).await.map_err(store_error)?;
        if DB::big(&locked, "locked")? != 1 {
            return Err(Error::store("another migration of this database did not finish in time"));
        }
        let migrated = migrator.run_direct(&mut *conn).await.map_err(Error::store);
        sqlx::query(unlock).execute(conn.exec()).await.map_err(store_error)?;
        migrated
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.conn().await?.exec()).await.map_err(store_error)?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn log_change(&self, change: &Change, at: DateTime<Utc>) -> Result<bool> {
        changes::log(self, change, at).await.map(|()| true)
    }

    async fn changes_after(&self, after: Option<u64>, limit: u32) -> Result<Option<LoggedChanges>> {
        changes::after(self, after, limit).await.map(Some)
    }

    async fn delete_changes_before(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        changes::delete_before(self, before, limit).await
    }
}

/// Binds a row's id and then its tenant, the order of every
/// `id = ? AND app_id = ? AND tenant_id = ?` (and of the columns that open
/// each table).
trait BindScoped<'q> {
    fn bind_scoped(self, id: Uuid, tenant: &'q Tenant) -> Self;
}

impl<'q, DB: Dialect> BindScoped<'q> for Statement<'q, DB> {
    fn bind_scoped(self, id: Uuid, tenant: &'q Tenant) -> Self {
        self.arg(id).arg(&tenant.app_id).arg(&tenant.tenant_id)
    }
}

/// The columns of the key `k` but its scopes.
const KEY_COLUMNS: &str = "k.id, k.lineage_id, k.app_id, k.tenant_id, k.hash, k.name, k.hint, k.prefix, \
    k.environment, k.state, k.policy_id, k.expires_at, k.grace_expires_at, k.revoked_reason, \
    k.last_used_at, k.created_at, k.updated_at, k.metadata, k.owner_id, \
    c.remaining AS credits_remaining, c.refill_amount AS credits_refill_amount, \
    c.refill_every AS credits_refill_every, c.refilled_at AS credits_refilled_at";

/// The keys `k` with their lineage's credits `c`.
const KEYS_FROM: &str = "keysmith_keys k LEFT JOIN keysmith_credits c ON c.lineage_id = k.lineage_id";

/// The keys `k` with their scopes and credits, for a `WHERE` to follow.
fn select_keys<'a, DB: Dialect>() -> Sql<'a, DB> {
    Sql::new(format!("SELECT {KEY_COLUMNS}, {} AS scopes FROM {KEYS_FROM}", DB::SCOPES))
}

/// Pushes ` AND` the tenant's columns, named after `alias` (`"k."`, or `""` for none).
fn push_tenant<'a, DB: Dialect>(qb: &mut Sql<'a, DB>, alias: &str, tenant: &'a Tenant) {
    qb.push(format_args!(" AND {alias}app_id = ")).push_arg(&tenant.app_id);
    qb.push(format_args!(" AND {alias}tenant_id = ")).push_arg(&tenant.tenant_id);
}

fn push_range<DB: Dialect>(qb: &mut Sql<'_, DB>, column: &str, range: TimeRange) {
    if let Some(from) = range.from {
        qb.push(format_args!(" AND {column} >= ")).push_arg(DB::time(from));
    }
    if let Some(to) = range.to {
        qb.push(format_args!(" AND {column} < ")).push_arg(DB::time(to));
    }
}
