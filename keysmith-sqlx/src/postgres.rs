//! PostgreSQL: [`PgStore`] and its migrations.
//!
//! Every state change is one conditional `UPDATE … WHERE state IN (…)` in a
//! transaction; multi-row writes (a key with its scopes, a rotation, a usage
//! batch with its aggregates) are one transaction.

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use keysmith_core::Result;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row as _};

use crate::common::{connect_server, store_error};
use crate::store::{Dialect, sql_store};

/// The PostgreSQL schema, embedded (`migrations/postgres`).
///
/// [`Store::migrate`](keysmith_core::Store::migrate) runs it and tolerates
/// the application's own sqlx migrations in the same `_sqlx_migrations`
/// history. Running `MIGRATOR.run(&pool)` yourself works on a database whose
/// history holds only Keysmith's versions (sqlx refuses versions it does not
/// know of, unless a migrator is told to ignore them).
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

sql_store! {
    /// A store in PostgreSQL (12 or later).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keysmith_core::Error> {
    /// use std::sync::Arc;
    /// use keysmith_core::{Engine, Store};
    /// use keysmith_sqlx::PgStore;
    ///
    /// let store = PgStore::connect("postgres://postgres@127.0.0.1:5432/app").await?;
    /// store.migrate().await?;
    /// let engine = Engine::builder(Arc::new(store)).build()?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A lost connection surfaces as [`Error::Store`](keysmith_core::Error::Store)
    /// (validation fails, it never passes); the pool opens new connections when
    /// the server is back.
    PgStore, sqlx::Postgres
}

impl PgStore {
    /// Connects to `url` with a pool of up to 10 connections that waits at
    /// most 5 seconds for a connection. Does not migrate.
    ///
    /// # Errors
    /// [`Error::Store`](keysmith_core::Error::Store) if the URL is invalid or
    /// the server cannot be reached, saying why (connection refused,
    /// authentication failed, no such database…) rather than only that the
    /// pool timed out.
    pub async fn connect(url: &str) -> Result<Self> {
        let options: PgConnectOptions = url.parse().map_err(store_error)?;
        Ok(Self::new(connect_server(options, "PostgreSQL").await?))
    }
}

impl Dialect for Postgres {
    type Time = DateTime<Utc>;
    type List = Vec<String>;
    type Scopes = Vec<String>;

    const SCOPES: &'static str =
        "ARRAY(SELECT s.scope FROM keysmith_key_scopes s WHERE s.key_id = k.id ORDER BY s.position)";
    const IP_READ: &'static str = "host(ip)";
    const IP_WRITE: (&'static str, &'static str) = ("CAST(", " AS inet)");
    const ORDER_BY_NAME: &'static str = "name COLLATE \"C\"";
    const BIGINT: &'static str = "BIGINT";
    // 65 535 bound values per statement.
    const ROWS_PER_INSERT: usize = 2000;

    fn placeholders(sql: &str) -> Cow<'_, str> {
        let mut numbered = String::with_capacity(sql.len() + 16);
        for (n, part) in sql.split('?').enumerate() {
            if n > 0 {
                let _ = write!(numbered, "${n}");
            }
            numbered.push_str(part);
        }
        Cow::Owned(numbered)
    }

    fn time(at: DateTime<Utc>) -> DateTime<Utc> {
        at
    }

    fn from_time(_: &str, stored: DateTime<Utc>) -> Result<DateTime<Utc>> {
        Ok(stored)
    }

    fn list(items: &[String]) -> Vec<String> {
        items.to_vec()
    }

    fn from_list(stored: Vec<String>) -> Vec<String> {
        stored
    }

    fn from_scopes(stored: Vec<String>) -> Result<Vec<String>> {
        Ok(stored)
    }

    fn push_age_micros(qb: &mut QueryBuilder<'_, Self>, now: DateTime<Utc>) {
        // Exact numeric seconds, so a huge maximum age never overflows a
        // timestamp (it is simply never reached).
        qb.push("(EXTRACT(EPOCH FROM CAST(").push_bind(now);
        qb.push(" AS timestamptz)) - EXTRACT(EPOCH FROM k.created_at)) * 1000000");
    }

    fn get<T>(row: &PgRow, column: &str) -> sqlx::Result<T>
    where
        T: for<'r> sqlx::Decode<'r, Self> + sqlx::Type<Self>,
    {
        row.try_get(column)
    }
}
