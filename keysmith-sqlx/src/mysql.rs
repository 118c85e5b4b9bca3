//! MySQL and MariaDB: [`MySqlStore`] and its migrations.
//!
//! Every state change is one conditional `UPDATE … WHERE state IN (…)` in a
//! transaction, followed by a read of the changed row (MySQL has no
//! `UPDATE … RETURNING`); multi-row writes (a key with its scopes, a
//! rotation, a usage batch with its aggregates) are one transaction, the
//! aggregates one multi-row `INSERT … ON DUPLICATE KEY UPDATE`.

use chrono::{DateTime, Utc};
use keysmith_core::Result;
use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlConnectOptions, MySqlRow};
use sqlx::types::Json;
use sqlx::{MySql, QueryBuilder, Row as _};

use crate::common::{connect_server, store_error};
use crate::store::{Dialect, sql_store};

/// The MySQL and MariaDB schema, embedded (`migrations/mysql`).
///
/// [`Store::migrate`](keysmith_core::Store::migrate) runs it and tolerates
/// the application's own sqlx migrations in the same `_sqlx_migrations`
/// history. Running `MIGRATOR.run(&pool)` yourself works on a database whose
/// history holds only Keysmith's versions (sqlx refuses versions it does not
/// know of, unless a migrator is told to ignore them).
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/mysql");

sql_store! {
    /// A store in MySQL (8.0 or later) or MariaDB (10.5 or later), on InnoDB.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), keysmith_core::Error> {
    /// use std::sync::Arc;
    /// use keysmith_core::{Engine, Store};
    /// use keysmith_sqlx::MySqlStore;
    ///
    /// let store = MySqlStore::connect("mysql://root@127.0.0.1:3306/app").await?;
    /// store.migrate().await?;
    /// let engine = Engine::builder(Arc::new(store)).build()?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Times are stored as UTC `DATETIME(6)`, which holds the years 1000 to
    /// 9999. A lost connection surfaces as
    /// [`Error::Store`](keysmith_core::Error::Store) (validation fails, it never
    /// passes); the pool opens new connections when the server is back.
    MySqlStore, sqlx::MySql
}

impl MySqlStore {
    /// Connects to `url` (`mysql://…` or `mariadb://…`) with a pool of up to
    /// 10 connections that waits at most 5 seconds for a connection. Does
    /// not migrate.
    ///
    /// # Errors
    /// [`Error::Store`](keysmith_core::Error::Store) if the URL is invalid or
    /// the server cannot be reached, saying why (connection refused,
    /// access denied, unknown database…) rather than only that the pool
    /// timed out.
    pub async fn connect(url: &str) -> Result<Self> {
        let options: MySqlConnectOptions = url.parse().map_err(store_error)?;
        Ok(Self::new(connect_server(options, "MySQL").await?))
    }
}

impl Dialect for MySql {
    /// UTC in a `DATETIME(6)`.
    type Time = DateTime<Utc>;
    /// A JSON array.
    type List = Json<Vec<String>>;
    /// `[position, scope]` pairs: `JSON_ARRAYAGG` keeps no order in MySQL.
    type Scopes = Option<Json<Vec<(i64, String)>>>;

    // Without gap locks: under REPEATABLE READ a compare-and-set that scans
    // the tenant index locks the gap a racing rotation inserts its new key
    // into, and the two deadlock. Each statement still reads the latest
    // committed rows and locks what it changes.
    const BEGIN: &'static str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION";
    const SCOPES: &'static str = "(SELECT JSON_ARRAYAGG(JSON_ARRAY(s.position, s.scope)) \
        FROM keysmith_key_scopes s WHERE s.key_id = k.id)";
    const BIGINT: &'static str = "SIGNED";
    // `VALUES()` rather than a row alias: MariaDB has no alias form.
    const ADD_TO_AGGREGATE: &'static str =
        " ON DUPLICATE KEY UPDATE requests = requests + VALUES(requests), errors = errors + VALUES(errors)";
    // 65 535 bound values per statement.
    const ROWS_PER_INSERT: usize = 2000;
    // sqlx's `GET_LOCK(…, -1)` is no lock on MariaDB (a negative timeout
    // returns at once), so concurrent migrations would race.
    const MIGRATION_LOCK: Option<(&'static str, &'static str)> =
        Some(("SELECT GET_LOCK('keysmith_migrations', 60) AS locked", "SELECT RELEASE_LOCK('keysmith_migrations')"));

    fn time(at: DateTime<Utc>) -> DateTime<Utc> {
        at
    }

    fn from_time(_: &str, stored: DateTime<Utc>) -> Result<DateTime<Utc>> {
        Ok(stored)
    }

    fn list(items: &[String]) -> Json<Vec<String>> {
        Json(items.to_vec())
    }

    fn from_list(stored: Json<Vec<String>>) -> Vec<String> {
        stored.0
    }

    fn from_scopes(stored: Option<Json<Vec<(i64, String)>>>) -> Result<Vec<String>> {
        let mut scopes = stored.map(|json| json.0).unwrap_or_default();
        scopes.sort_unstable_by_key(|(position, _)| *position);
        Ok(scopes.into_iter().map(|(_, scope)| scope).collect())
    }

    fn push_age_micros(qb: &mut QueryBuilder<'_, Self>, now: DateTime<Utc>) {
        qb.push("TIMESTAMPDIFF(MICROSECOND, k.created_at, ").push_bind(now).push(")");
    }

    fn get<T>(row: &MySqlRow, column: &str) -> sqlx::Result<T>
    where
        T: for<'r> sqlx::Decode<'r, Self> + sqlx::Type<Self>,
    {
        // sqlx takes text in a binary collation (utf8mb4_bin) for bytes and
        // refuses it as a `String`; the decoders still check what they read.
        row.try_get_unchecked(column)
    }
}
