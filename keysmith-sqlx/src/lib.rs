//! SQL stores for Keysmith: [`PgStore`] (PostgreSQL, feature `postgres`),
//! [`SqliteStore`] (SQLite, feature `sqlite`) and [`MySqlStore`] (MySQL and
//! MariaDB, feature `mysql`), all on by default; [`connect`] picks one by
//! the URL's scheme. They share one body of store logic.
//!
//! Each implements the whole [`keysmith_core::Store`]. Migrations are embedded
//! ([`postgres::MIGRATOR`], [`sqlite::MIGRATOR`], [`mysql::MIGRATOR`]) and [`Store::migrate`]
//! runs them; it is idempotent and cheap, so call it on every start.
//!
//! ```
//! # #[cfg(feature = "sqlite")]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keysmith_core::{Engine, NewKey, RequestContext, Store};
//! use keysmith_sqlx::SqliteStore;
//!
//! let store = SqliteStore::connect("sqlite::memory:").await?;
//! store.migrate().await?;
//! let engine = Engine::builder(Arc::new(store)).build()?;
//!
//! let created = engine.tenant("my-app", "acme").create_key(NewKey::new("deploy bot")).await?;
//! let ok = engine.validate(created.raw.expose(), &RequestContext::new()).await.unwrap();
//! assert_eq!(ok.key.id, created.key.id);
//! # Ok::<(), keysmith_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Migrations
//!
//! [`Store::migrate`] runs a backend's `MIGRATOR` and tolerates the
//! application's own sqlx migrations in the same `_sqlx_migrations` history.
//! Running `MIGRATOR.run(&pool)` yourself works on a database whose history
//! holds only Keysmith's versions (sqlx refuses versions it does not know of,
//! unless a migrator is told to ignore them).
//!
//! # Schema
//!
//! Eleven tables: `keysmith_keys`, `keysmith_policies`, `keysmith_scopes`,
//! `keysmith_key_scopes`, `keysmith_usage`, `keysmith_usage_agg`,
//! `keysmith_usage_batches`, `keysmith_rotations`, `keysmith_credits` (per
//! key lineage), `keysmith_owner_credits` (per application, tenant and
//! owner) and `keysmith_change_log` (changes whose publish on the change
//! feed failed, as the feed carries them, for the other engines to read;
//! see [`Store::log_change`]).
//!
//! - Ids are stored as their UUID (PostgreSQL `uuid`, SQLite a 16-byte blob,
//!   MySQL `BINARY(16)`);
//!   the TypeID prefix is implied by the column. UUIDv7 order is creation order,
//!   so `ORDER BY id` lists oldest first, as every store does.
//! - Identities (app, tenant and owner ids) and names compare byte for byte:
//!   `acme`, `acme ` and `ACME` are three tenants. PostgreSQL and SQLite do so
//!   by default; MySQL and MariaDB tables use a NO PAD binary collation
//!   (`utf8mb4_0900_bin` or `utf8mb4_nopad_bin`, picked by the migration),
//!   since `utf8mb4_bin` ignores trailing spaces.
//! - Key hashes are the lowercase hex SHA-256 (64 characters), unique.
//! - Times are UTC: `timestamptz` in PostgreSQL, integer microseconds since the
//!   Unix epoch in SQLite (`datetime(col / 1000000, 'unixepoch')` reads them),
//!   `DATETIME(6)` in MySQL. All keep microseconds; nanoseconds are dropped.
//! - Durations (policy windows and ages, rotation grace, request latency) are
//!   integer microseconds.
//! - A key's scopes are rows of `keysmith_key_scopes` in order; they are names,
//!   not references to the scope registry, so deleting a registered scope
//!   leaves the keys that hold it unchanged.
//! - Deleting a policy (allowed only when no live key uses it) sets the
//!   `policy_id` of the terminal keys that still named it to `NULL`.
//! - Usage records and aggregates reference their key; writing a record for
//!   a key that does not exist fails the batch with `NotFound`. A batch written
//!   twice (a retry after an unclear failure) is counted once: records are
//!   inserted by id and only new ones reach the aggregates.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
mod common;
mod connect;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
mod dialect;
#[cfg(feature = "postgres")]
mod feed;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
mod rows;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
mod store;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
mod usage;

#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub use dialect::Backend;
#[cfg(feature = "postgres")]
pub use feed::PgChangeFeed;
#[cfg(feature = "mysql")]
pub use mysql::MySqlStore;
#[cfg(feature = "postgres")]
pub use postgres::PgStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
#[cfg(any(feature = "postgres", feature = "sqlite", feature = "mysql"))]
pub use store::SqlStore;

#[cfg(feature = "postgres")]
pub use connect::change_feed;
pub use connect::connect;

/// Re-exported so that `Store::migrate` and friends are in scope with one import.
pub use keysmith_core::Store;
