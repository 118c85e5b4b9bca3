//! [`Dialect`]: what one SQL backend does its own way, and the one place
//! that states what sqlx must know of a backend for the store logic to be
//! written once, as ordinary generic functions.
//!
//! sqlx states its capabilities as bounds on other types (`i64: Encode<DB>`,
//! `&mut DB::Connection: Executor`…), which Rust does not carry from a
//! trait's `where` clause to its users. So each is turned into a bound on
//! the backend itself, which is carried: [`Binds`] (a value binds as a
//! parameter), [`Reads`] (a column decodes as a value) and [`Exec`] (a
//! connection runs statements), each implemented once for every backend
//! that sqlx equips, and [`Dialect`] lists the ones the store needs.

use std::borrow::Cow;
use std::fmt::{Display, Write as _};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{Arguments as _, ColumnIndex, Connection, Database, Decode, Encode, Executor, IntoArguments, Type};
use uuid::Uuid;

use keysmith_core::{Error, Quota, Result, UsageRecord};

use crate::common::{StoredRateLimit, store_error};
use crate::store::{Inserted, insert_new_usage, upsert_rollups_in_rows};
use crate::usage::Rollup;

/// A backend's statement with its arguments.
pub(crate) type Statement<'q, DB> = Query<'q, DB, <DB as Database>::Arguments<'q>>;

/// What one SQL backend does its own way, and (as supertraits) what sqlx
/// must provide for it: every parameter type the store binds, every column
/// type it reads, an executor on a connection, and migrations.
pub(crate) trait Dialect:
    Backend
    + sqlx::database::HasStatementCache
    + for<'q> Database<Arguments<'q>: IntoArguments<'q, Self>, Connection: Exec + Migrate, QueryResult: RowsAffected>
    + for<'q> Binds<'q, i32>
    + for<'q> Binds<'q, i64>
    + for<'q> Binds<'q, Option<i64>>
    + for<'q> Binds<'q, Uuid>
    + for<'q> Binds<'q, Option<Uuid>>
    + for<'q> Binds<'q, &'q str>
    + for<'q> Binds<'q, Option<&'q str>>
    + for<'q> Binds<'q, &'q String>
    + for<'q> Binds<'q, String>
    + for<'q> Binds<'q, &'q Option<String>>
    + for<'q> Binds<'q, Option<String>>
    + for<'q> Binds<'q, Json<&'q Map<String, Value>>>
    + for<'q> Binds<'q, Json<Map<String, Value>>>
    + for<'q> Binds<'q, Json<&'q Vec<StoredRateLimit>>>
    + for<'q> Binds<'q, Option<Json<&'q Quota>>>
    + for<'q> Binds<'q, <Self as Dialect>::Time>
    + for<'q> Binds<'q, Option<<Self as Dialect>::Time>>
    + for<'q> Binds<'q, <Self as Dialect>::List>
    + Reads<i32>
    + Reads<i64>
    + Reads<Option<i64>>
    + Reads<Uuid>
    + Reads<Option<Uuid>>
    + Reads<String>
    + Reads<Option<String>>
    + Reads<Option<Json<Map<String, Value>>>>
    + Reads<Option<Json<Vec<StoredRateLimit>>>>
    + Reads<Option<Json<Quota>>>
    + Reads<<Self as Dialect>::Time>
    + Reads<Option<<Self as Dialect>::Time>>
    + Reads<<Self as Dialect>::List>
    + Reads<<Self as Dialect>::Scopes>
{
    /// A time as bound and read.
    type Time: Stored<DateTime<Utc>> + Send;
    /// A list of strings as bound and read (policy lists).
    type List: Stored<Vec<String>> + Send;
    /// A key's scopes as [`Dialect::SCOPES`] reads them, in order.
    type Scopes: Stored<Vec<String>>;

    /// This backend's slot in the per-backend caches of statement texts
    /// (`0..BACKENDS`, one each).
    const SLOT: usize;
    /// The statement that starts a transaction.
    const BEGIN: &'static str = "BEGIN";
    /// The statement that starts a usage batch's transaction when the store
    /// commits usage asynchronously (only PostgreSQL can be asked to).
    const BEGIN_USAGE_ASYNCHRONOUS: &'static str = Self::BEGIN;
    /// Appended to a `SELECT` to lock the rows it reads until commit.
    const LOCK_ROWS: &'static str = " FOR UPDATE";
    /// Appended to a `SELECT` of keys to keep them from being deleted until
    /// commit, without blocking other readers (what a foreign key's check
    /// takes).
    const SHARE_ROWS: &'static str;
    /// The expression listing the scopes of the key `k`, in order.
    const SCOPES: &'static str;
    /// The usage table's `ip` column as text.
    const IP_READ: &'static str = "ip";
    /// A key's source id (the `external_id` its import wrote into its
    /// metadata: [`EXTERNAL_ID_FIELD`](keysmith_core::EXTERNAL_ID_FIELD))
    /// as text, `NULL` without one.
    const EXTERNAL_ID: &'static str;
    /// [`EXTERNAL_ID`](Self::EXTERNAL_ID) as compared with source ids:
    /// byte for byte, as every identity is.
    const EXTERNAL_ID_EXACT: &'static str = Self::EXTERNAL_ID;
    /// Sorts scope names by their bytes.
    const ORDER_BY_NAME: &'static str = "name";
    /// The function that picks the smaller of two values.
    const LEAST: &'static str = "LEAST";
    /// The type a `SUM` of counts is cast to.
    const BIGINT: &'static str;
    /// How the backend spells the usage statements that differ.
    const USAGE_SQL: crate::usage::UsageSql = crate::usage::UsageSql::Standard;
    /// Rows per multi-row `INSERT` (11 values each), within the backend's
    /// limit on bound values.
    const ROWS_PER_INSERT: usize;
    /// Whether columns are read without sqlx's check of the column type
    /// (the decoders still check what they read).
    const UNCHECKED_COLUMNS: bool = false;
    /// Statements (answering `locked` = 1) that take and release a lock
    /// serializing migrations, where sqlx's own does not hold.
    const MIGRATION_LOCK: Option<(&'static str, &'static str)> = None;

    /// The backend's migrations.
    fn migrator() -> &'static Migrator;
    /// `sql` with `?` placeholders in the backend's own form.
    fn placeholders(sql: &str) -> Cow<'_, str> {
        Cow::Borrowed(sql)
    }
    /// A time as bound.
    fn time(at: DateTime<Utc>) -> Self::Time {
        Stored::store(at)
    }
    /// Pushes the age of the key `k` at `now`, in microseconds.
    fn push_age_micros(qb: &mut Sql<'_, Self>, now: DateTime<Utc>);
    /// Inserts the usage `records` (distinct ids, at most
    /// [`Dialect::ROWS_PER_INSERT`]) that are not stored yet, inside the
    /// caller's transaction, and says which it inserted; by default in
    /// multi-row `INSERT`s ([`insert_new_usage`]).
    ///
    /// The caller has checked that the records' keys exist.
    ///
    /// `None` when the backend wrote nothing because some records are
    /// stored already and it cannot skip them in this attempt, which voids
    /// the transaction: the caller writes the batch again in a new one with
    /// `replay` set, and then it skips them.
    fn insert_usage(
        conn: &mut Self::Connection, records: &[&UsageRecord], _replay: bool,
    ) -> impl Future<Output = Result<Option<Inserted>>> + Send {
        async move { insert_new_usage::<Self>(conn, records).await.map(Some) }
    }
    /// Adds each of `rollups` (in the order given, which every batch
    /// shares, so two batches cannot deadlock) to its roll-up row, inside
    /// the caller's transaction; by default in multi-row `INSERT`s.
    ///
    /// # Errors
    /// `NotFound` when a roll-up's key does not exist.
    fn upsert_rollups(conn: &mut Self::Connection, rollups: &[Rollup<'_>]) -> impl Future<Output = Result<()>> + Send {
        upsert_rollups_in_rows::<Self>(conn, rollups)
    }
}

/// A database a [`SqlStore`](crate::SqlStore) runs on: `sqlx::Postgres`,
/// `sqlx::Sqlite` or `sqlx::MySql` (sealed).
pub trait Backend: Database + sealed::Sealed {
    /// Opens a pool on `url` (what the backend's store documents).
    fn open(url: &str) -> impl Future<Output = Result<sqlx::Pool<Self>>> + Send;
}

/// Keeps [`Backend`] to the databases of this crate.
pub(crate) mod sealed {
    /// Implemented by each backend.
    pub trait Sealed {}
}

/// How many backends there are (slots of [`Dialect::SLOT`]).
pub(crate) const BACKENDS: usize = 3;

/// The backend binds a `T` as a statement parameter (sqlx's `Encode` and
/// `Type`, as a bound on the backend). Every backend binds whatever sqlx
/// can encode for it.
pub(crate) trait Binds<'q, T>: Database {
    /// `query` with `value` bound next.
    fn bind(query: Statement<'q, Self>, value: T) -> Statement<'q, Self>;
    /// Adds `value` to `args`.
    ///
    /// # Errors
    /// When the value cannot be encoded.
    fn add(args: &mut Self::Arguments<'q>, value: T) -> Result<(), BoxDynError>;
}

impl<'q, DB: Database, T: 'q + Encode<'q, DB> + Type<DB>> Binds<'q, T> for DB {
    fn bind(query: Statement<'q, Self>, value: T) -> Statement<'q, Self> {
        query.bind(value)
    }

    fn add(args: &mut Self::Arguments<'q>, value: T) -> Result<(), BoxDynError> {
        args.add(value)
    }
}

/// The backend reads a column as a `T` (sqlx's `Decode` and `Type`, and
/// columns named by `&str`, as a bound on the backend).
pub(crate) trait Reads<T>: Database {
    /// The column `column` of `row`; `unchecked` skips sqlx's check of the
    /// column's type (the decoder still checks what it reads).
    ///
    /// # Errors
    /// When the column is missing or does not decode as a `T`.
    fn read(row: &Self::Row, column: &str, unchecked: bool) -> Result<T>;
}

impl<DB: Database, T: for<'r> Decode<'r, DB> + Type<DB>> Reads<T> for DB
where
    for<'c> &'c str: ColumnIndex<DB::Row>,
{
    fn read(row: &Self::Row, column: &str, unchecked: bool) -> Result<T> {
        use sqlx::Row as _;
        if unchecked { row.try_get_unchecked(column) } else { row.try_get(column) }.map_err(store_error)
    }
}

/// A connection as sqlx's executor (which sqlx implements for `&mut` of
/// each backend's connection).
pub(crate) trait Exec: Connection {
    /// The connection, ready to run one statement.
    fn exec(&mut self) -> impl Executor<'_, Database = Self::Database>;
}

impl<C: Connection> Exec for C
where
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
{
    fn exec(&mut self) -> impl Executor<'_, Database = Self::Database> {
        self
    }
}

/// [`Binds`] as a method of a statement: `.arg(value)` where sqlx's own
/// `.bind(value)` would need the bounds stated again.
pub(crate) trait Arg<'q, DB: Database>: Sized {
    /// The statement with `value` bound next.
    #[must_use]
    fn arg<T>(self, value: T) -> Self
    where
        DB: Binds<'q, T>;
}

impl<'q, DB: Database> Arg<'q, DB> for Statement<'q, DB> {
    fn arg<T>(self, value: T) -> Self
    where
        DB: Binds<'q, T>,
    {
        DB::bind(self, value)
    }
}

/// How many rows a statement changed (each backend's result has it as its
/// own method).
pub(crate) trait RowsAffected {
    /// How many rows the statement changed.
    fn rows_affected(&self) -> u64;
}

/// A statement built piece by piece, as with sqlx's `QueryBuilder`, whose
/// text and arguments come apart when it is [finished](Sql::finish): sqlx's
/// builder lends out a statement that borrows it as long as its arguments
/// live, which generic code cannot drop.
pub(crate) struct Sql<'q, DB: Database> {
    text: String,
    args: DB::Arguments<'q>,
    /// The first argument that failed to encode.
    error: Option<BoxDynError>,
}

impl<'q, DB: Database> Sql<'q, DB> {
    /// A statement that starts with `init`.
    pub(crate) fn new(init: impl Into<String>) -> Self {
        Self { text: init.into(), args: DB::Arguments::default(), error: None }
    }

    /// Appends SQL text.
    pub(crate) fn push(&mut self, sql: impl Display) -> &mut Self {
        let _ = write!(self.text, "{sql}");
        self
    }

    /// Appends a placeholder and binds `value` to it.
    pub(crate) fn push_arg<T>(&mut self, value: T) -> &mut Self
    where
        DB: Binds<'q, T>,
    {
        if let Err(error) = DB::add(&mut self.args, value) {
            self.error.get_or_insert(error);
        }
        let _ = self.args.format_placeholder(&mut self.text);
        self
    }

    /// A list of items separated by `separator`.
    pub(crate) fn separated(&mut self, separator: &'static str) -> List<'_, 'q, DB> {
        List { sql: self, separator, first: true }
    }

    /// Appends `VALUES (…), (…)`, one tuple per row, whose items `push_row` pushes.
    pub(crate) fn push_values<I: IntoIterator>(
        &mut self, rows: I, mut push_row: impl FnMut(List<'_, 'q, DB>, I::Item),
    ) -> &mut Self {
        self.push("VALUES ");
        for (n, row) in rows.into_iter().enumerate() {
            self.push(if n == 0 { "(" } else { ", (" });
            push_row(self.separated(", "), row);
            self.push(")");
        }
        self
    }

    /// The statement's text and arguments, to run as
    /// `sqlx::query_with::<DB, _>(&text, args)`.
    ///
    /// # Errors
    /// When an argument could not be encoded.
    pub(crate) fn finish(self) -> Result<(String, DB::Arguments<'q>)> {
        match self.error {
            Some(error) => Err(Error::store(error)),
            None => Ok((self.text, self.args)),
        }
    }
}

/// Items of a [`Sql`] statement with a separator between them.
pub(crate) struct List<'s, 'q, DB: Database> {
    sql: &'s mut Sql<'q, DB>,
    separator: &'static str,
    first: bool,
}

impl<'q, DB: Database> List<'_, 'q, DB> {
    /// Appends the separator (but before the first item) and a placeholder,
    /// and binds `value` to it.
    pub(crate) fn push_arg<T>(&mut self, value: T) -> &mut Self
    where
        DB: Binds<'q, T>,
    {
        if !std::mem::take(&mut self.first) {
            self.sql.push(self.separator);
        }
        self.sql.push_arg(value);
        self
    }
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

/// A statement text built once per call site and backend: the parts
/// concatenated, with the backend's placeholders.
macro_rules! statement {
    ($db:ty, $($part:expr),+ $(,)?) => {{
        static SQL: [std::sync::OnceLock<String>; $crate::dialect::BACKENDS] =
            [const { std::sync::OnceLock::new() }; $crate::dialect::BACKENDS];
        SQL[<$db as $crate::dialect::Dialect>::SLOT]
            .get_or_init(|| <$db as $crate::dialect::Dialect>::placeholders(&[$($part),+].concat()).into_owned())
            .as_str()
    }};
}
pub(crate) use statement;
