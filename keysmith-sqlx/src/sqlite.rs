//! SQLite: [`SqliteStore`] and its migrations. Transactions take the write
//! lock up front (`BEGIN IMMEDIATE`), so they never fail half-way on a busy
//! database.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keysmith_core::Result;
use sqlx::Sqlite;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;

use crate::common::{corrupt, store_error};
use crate::dialect::{Backend, Dialect, RowsAffected, Sql, Stored, sealed};
use crate::store::SqlStore;

/// The SQLite schema, embedded from `migrations/sqlite`
/// ([migrations](crate#migrations)).
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// A store in SQLite (3.35 or later; the bundled one by default).
///
/// `connect` takes `sqlite://path/to/file.db` (creating a missing file) or
/// `sqlite::memory:`, and enforces foreign keys with a 5-second busy
/// timeout; a file is in WAL mode, an in-memory database lives in one
/// connection that the pool never closes.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use keysmith_core::{Engine, Store};
/// use keysmith_sqlx::SqliteStore;
///
/// let dir = std::env::temp_dir().join(format!("keysmith-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let url = format!("sqlite://{}", dir.join("keys.db").display());
///
/// let store = SqliteStore::connect(&url).await?; // creates the file
/// store.migrate().await?;
/// store.migrate().await?; // safe on every start
/// let engine = Engine::builder(Arc::new(store)).build()?;
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), keysmith_core::Error>(())
/// # }).unwrap();
/// ```
pub type SqliteStore = SqlStore<Sqlite>;

impl sealed::Sealed for Sqlite {}

impl Backend for Sqlite {
    async fn open(url: &str) -> Result<sqlx::Pool<Self>> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(store_error)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if in_memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
        } else {
            SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options.journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Normal))
                .await
        }
        .map_err(store_error)
    }
}

impl Dialect for Sqlite {
    /// Microseconds since the Unix epoch, UTC.
    type Time = i64;
    /// A JSON array.
    type List = Json<Vec<String>>;
    type Scopes = Json<Vec<String>>;

    const SLOT: usize = 1;
    const EXTERNAL_ID: &'static str = "json_extract(metadata, '$.external_id')";

    // The write lock up front: a state read in a transaction stays true
    // until it commits (SQLite has no row locks), and nothing fails half-way.
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    const LOCK_ROWS: &'static str = "";
    // One writer at a time: `BEGIN IMMEDIATE` holds the database.
    const SHARE_ROWS: &'static str = "";
    const SCOPES: &'static str = "(SELECT json_group_array(scope) FROM (SELECT s.scope FROM keysmith_key_scopes s \
        WHERE s.key_id = k.id ORDER BY s.position))";
    const LEAST: &'static str = "MIN";
    const BIGINT: &'static str = "INTEGER";
    // 32 766 bound values per statement (3.32 and later).
    const ROWS_PER_INSERT: usize = 1000;

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn push_age_micros(qb: &mut Sql<'_, Self>, now: DateTime<Utc>) {
        qb.push("(").push_arg(Self::time(now)).push(" - k.created_at)");
    }
}

/// Microseconds since the Unix epoch.
impl Stored<DateTime<Utc>> for i64 {
    fn store(at: DateTime<Utc>) -> i64 {
        at.timestamp_micros()
    }

    fn load(self, what: &str) -> Result<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self).ok_or_else(|| corrupt(what, "time out of range"))
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}
