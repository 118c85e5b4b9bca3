//! MySQL and MariaDB: [`MySqlStore`] and its migrations.

use chrono::{DateTime, NaiveDateTime, Utc};
use keysmith_core::Result;
use sqlx::MySql;
use sqlx::migrate::Migrator;
use sqlx::types::Json;

use crate::common::connect_server;
use crate::dialect::{Backend, Dialect, RowsAffected, Sql, Stored, sealed};
use crate::store::SqlStore;

/// The MySQL and MariaDB schema, embedded from `migrations/mysql`
/// ([migrations](crate#migrations)).
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/mysql");

/// A store in MySQL (8.0.17 or later) or MariaDB (10.5 or later), on InnoDB,
/// at a `mysql://…` or `mariadb://…` URL.
///
/// Times are stored as UTC `DATETIME(6)`, which holds the years 1000 to
/// 9999. Text compares byte for byte in a NO PAD binary collation
/// (`utf8mb4_0900_bin` on MySQL, `utf8mb4_nopad_bin` on MariaDB): `acme`
/// and `acme ` are two tenants, as in every store. `connect` opens a
/// pool of up to 10 connections; a lost one surfaces as
/// [`Error::Store`](keysmith_core::Error::Store) and is replaced when the
/// server is back.
pub type MySqlStore = SqlStore<MySql>;

impl sealed::Sealed for MySql {}

impl Backend for MySql {
    async fn open(url: &str) -> Result<sqlx::Pool<Self>> {
        connect_server(url, "MySQL").await
    }
}

impl Dialect for MySql {
    /// UTC in a `DATETIME(6)`, bound as a `DATETIME`: sqlx sends a
    /// `DateTime<Utc>` as a `TIMESTAMP`, which holds 1970 to 2038 only, and
    /// MariaDB stores a time outside that range as `NULL`.
    type Time = NaiveDateTime;
    /// A JSON array.
    type List = Json<Vec<String>>;
    type Scopes = ScopePairs;

    const SLOT: usize = 2;
    const EXTERNAL_ID: &'static str = "JSON_UNQUOTE(JSON_EXTRACT(metadata, '$.external_id'))";
    // The function's text compares in a PAD SPACE collation on MariaDB
    // (`e1` = `e1 `): compared as bytes instead.
    const EXTERNAL_ID_EXACT: &'static str = "BINARY JSON_UNQUOTE(JSON_EXTRACT(metadata, '$.external_id'))";
    const SHARE_ROWS: &'static str = " LOCK IN SHARE MODE";

    // Without gap locks: under REPEATABLE READ a state change that scans
    // the tenant index locks the gap a racing rotation inserts its new key
    // into, and the two deadlock. Each statement still reads the latest
    // committed rows and locks what it changes.
    const BEGIN: &'static str = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION";
    const SCOPES: &'static str = "(SELECT JSON_ARRAYAGG(JSON_ARRAY(s.position, s.scope)) \
        FROM keysmith_key_scopes s WHERE s.key_id = k.id)";
    const BIGINT: &'static str = "SIGNED";
    // `VALUES()` rather than a row alias: MariaDB has no alias form.
    // 65 535 bound values per statement.
    const ROWS_PER_INSERT: usize = 2000;
    const USAGE_SQL: crate::usage::UsageSql = crate::usage::UsageSql::MySql;
    // sqlx takes text in a binary collation (the schema's NO PAD
    // `utf8mb4_0900_bin` or `utf8mb4_nopad_bin`) for bytes and refuses it
    // as a `String`.
    const UNCHECKED_COLUMNS: bool = true;
    // sqlx's `GET_LOCK(…, -1)` is no lock on MariaDB (a negative timeout
    // returns at once), so concurrent migrations would race.
    const MIGRATION_LOCK: Option<(&'static str, &'static str)> =
        Some(("SELECT GET_LOCK('keysmith_migrations', 60) AS locked", "SELECT RELEASE_LOCK('keysmith_migrations')"));

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn push_age_micros(qb: &mut Sql<'_, Self>, now: DateTime<Utc>) {
        qb.push("TIMESTAMPDIFF(MICROSECOND, k.created_at, ").push_arg(Self::time(now)).push(")");
    }
}

/// UTC, without its zone: the column's `DATETIME(6)`.
impl Stored<DateTime<Utc>> for NaiveDateTime {
    fn store(at: DateTime<Utc>) -> Self {
        at.naive_utc()
    }

    fn load(self, _: &str) -> Result<DateTime<Utc>> {
        Ok(self.and_utc())
    }
}

/// A key's scopes as `[position, scope]` pairs: `JSON_ARRAYAGG` keeps no
/// order in MySQL. `NULL` for none.
type ScopePairs = Option<Json<Vec<(i64, String)>>>;

impl Stored<Vec<String>> for ScopePairs {
    fn store(scopes: Vec<String>) -> Self {
        Some(Json((0..).zip(scopes).collect()))
    }

    fn load(self, _: &str) -> Result<Vec<String>> {
        let mut scopes = self.map(|json| json.0).unwrap_or_default();
        scopes.sort_unstable_by_key(|(position, _)| *position);
        Ok(scopes.into_iter().map(|(_, scope)| scope).collect())
    }
}

impl RowsAffected for sqlx::mysql::MySqlQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}
