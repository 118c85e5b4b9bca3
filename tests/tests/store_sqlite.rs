//! The store conformance suite on `SqliteStore`, in memory and in a file,
//! and what only SQLite has to show (a file created on connect, reopened).

use std::sync::Arc;

use keysmith_core::Store;
use keysmith_core::store::KeyStore;
use keysmith_sqlx::SqliteStore;
use keysmith_tests::services::TempDir;
use keysmith_tests::store_conformance::{Fixture, sample_key};

mod in_memory {
    use super::{Arc, Fixture, SqliteStore};

    async fn setup() -> Option<Fixture> {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open an in-memory database");
        Some(Fixture::new(Arc::new(store)).await)
    }

    keysmith_tests::store_conformance_tests!(setup);
}

mod file {
    use super::{Arc, Fixture, SqliteStore, TempDir};

    async fn setup() -> Option<Fixture> {
        let dir = TempDir::new("sqlite");
        let url = format!("sqlite://{}", dir.path().join("keys.db").display());
        let store = SqliteStore::connect(&url).await.expect("open a database file");
        Some(Fixture::new(Arc::new(store)).await.with_guard(dir))
    }

    keysmith_tests::store_conformance_tests!(setup);
}

#[tokio::test]
async fn connect_creates_the_file_in_wal_mode_and_data_survives_reopening() {
    let dir = TempDir::new("sqlite-reopen");
    let path = dir.path().join("nested.db");
    let url = format!("sqlite://{}", path.display());
    assert!(!path.exists());

    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    assert!(path.exists(), "connect creates the database file");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(store.pool()).await.unwrap();
    assert_eq!(mode, "wal");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(store.pool()).await.unwrap();
    assert_eq!(foreign_keys, 1);
    let key = sample_key(&keysmith_core::Tenant::new("app", "t"));
    store.insert_key(&key).await.unwrap();
    store.close().await;

    let reopened = SqliteStore::connect(&url).await.unwrap();
    reopened.migrate().await.unwrap();
    assert_eq!(reopened.find_key_by_hash(&key.hash).await.unwrap(), Some(key));
}

#[tokio::test]
async fn replayed_usage_batch_is_counted_once() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    keysmith_tests::sql_cases::replayed_usage_batch_is_counted_once(Arc::new(store)).await;
}

#[tokio::test]
async fn usage_for_an_unknown_key_fails_the_whole_batch() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    keysmith_tests::sql_cases::usage_for_an_unknown_key_fails_the_whole_batch(Arc::new(store)).await;
}

#[tokio::test]
async fn usage_of_a_deleted_key_goes_with_it() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let pool = store.pool().clone();
    keysmith_tests::sql_cases::usage_of_a_deleted_key_goes_with_it(Arc::new(store), |id| async move {
        sqlx::query("DELETE FROM keysmith_keys WHERE id = ?").bind(id).execute(&pool).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_change_log_reports_unreadable_rows_and_a_renumbering() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    store.migrate().await.unwrap();
    let pool = store.pool().clone();
    let renumber =
        ["DELETE FROM keysmith_change_log", "DELETE FROM sqlite_sequence WHERE name = 'keysmith_change_log'"];
    keysmith_tests::sql_cases::a_change_log_reports_unreadable_rows_and_a_renumbering(
        Arc::new(store),
        &pool,
        &renumber,
    )
    .await;
}

#[tokio::test]
async fn the_owners_and_credits_migrations_upgrade_an_existing_database() {
    use keysmith_core::{KeyId, Tenant};
    use keysmith_tests::sql_cases;
    let dir = TempDir::new("sqlite-owners");
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    sql_cases::migrations_before_owners(&keysmith_sqlx::sqlite::MIGRATOR).run(store.pool()).await.unwrap();
    let (tenant, key) = (Tenant::new("app", "acme"), KeyId::new());
    let blob = |id: uuid::Uuid| format!("X'{}'", id.simple());
    for statement in sql_cases::rows_before_owners(&tenant, key, blob, "0") {
        sqlx::query(&statement).execute(store.pool()).await.unwrap();
    }
    store.migrate().await.unwrap();
    sql_cases::old_keys_take_owners_and_credits_after_the_migrations(Arc::new(store), &tenant, key).await;
}

#[tokio::test]
async fn the_owner_credits_migration_upgrades_an_existing_database() {
    use keysmith_core::Tenant;
    use keysmith_tests::sql_cases;
    let dir = TempDir::new("sqlite-owner-credits");
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    sql_cases::migrations_before_owner_credits(&keysmith_sqlx::sqlite::MIGRATOR).run(store.pool()).await.unwrap();
    let (tenant, old) = (Tenant::new("app", "acme"), sql_cases::KeyBeforeOwnerCredits::new().await);
    let blob = |id: uuid::Uuid| format!("X'{}'", id.simple());
    for statement in sql_cases::rows_before_owner_credits(&tenant, &old, blob, "'[]'", "0") {
        sqlx::query(&statement).execute(store.pool()).await.unwrap();
    }
    store.migrate().await.unwrap();
    sql_cases::owners_take_credits_after_the_migration(Arc::new(store), &tenant, &old).await;
}

#[tokio::test]
async fn the_lineage_migration_upgrades_an_existing_database() {
    use keysmith_core::{KeyId, Tenant};
    let dir = TempDir::new("sqlite-lineage");
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    // The database as the first schema left it.
    let first = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(keysmith_sqlx::sqlite::MIGRATOR.migrations[..1].to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    first.run(store.pool()).await.unwrap();
    let tenant = Tenant::new("app", "acme");
    let ids = [KeyId::new(), KeyId::new(), KeyId::new(), KeyId::new()];
    let blob = |id: uuid::Uuid| format!("X'{}'", id.simple());
    for statement in keysmith_tests::sql_cases::rows_before_lineages(&tenant, ids, blob, "0") {
        sqlx::query(&statement).execute(store.pool()).await.unwrap();
    }
    store.migrate().await.unwrap();
    keysmith_tests::sql_cases::keys_rotated_before_lineages_get_their_chains_lineage(Arc::new(store), &tenant, ids)
        .await;
}

#[tokio::test]
async fn the_named_limits_migration_upgrades_an_existing_database() {
    use keysmith_core::{PolicyId, Tenant};
    use keysmith_tests::sql_cases;
    let dir = TempDir::new("sqlite-named-limits");
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    sql_cases::migrations_before_named_limits(&keysmith_sqlx::sqlite::MIGRATOR).run(store.pool()).await.unwrap();
    let tenant = Tenant::new("app", "acme");
    let ids = [PolicyId::new(), PolicyId::new()];
    let blob = |id: uuid::Uuid| format!("X'{}'", id.simple());
    for statement in sql_cases::policies_before_named_limits(&tenant, ids, blob, "'[]'", "0") {
        sqlx::query(&statement).execute(store.pool()).await.unwrap();
    }
    store.migrate().await.unwrap();
    sql_cases::single_limits_become_the_default_named_limit(Arc::new(store), &tenant, ids).await;
}

#[tokio::test]
async fn the_usage_outcomes_migration_upgrades_an_existing_database() {
    use keysmith_core::Tenant;
    use keysmith_core::store::KeyStore;
    use keysmith_tests::sql_cases;
    let dir = TempDir::new("sqlite-usage-outcomes");
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    sql_cases::migrations_before_usage_outcomes(&keysmith_sqlx::sqlite::MIGRATOR).run(store.pool()).await.unwrap();
    let tenant = Tenant::new("app", "acme");
    let key = keysmith_tests::store_conformance::sample_key(&tenant);
    store.insert_key(&key).await.unwrap();
    let day = chrono::DateTime::parse_from_rfc3339("2026-03-15T00:00:00Z").unwrap().to_utc();
    let blob = |id: uuid::Uuid| format!("X'{}'", id.simple());
    let literal = day.timestamp_micros().to_string();
    let statement = sql_cases::rollup_before_usage_outcomes(&tenant, key.key.id, blob, &literal);
    sqlx::query(&statement).execute(store.pool()).await.unwrap();
    store.migrate().await.unwrap();
    sql_cases::old_rollups_keep_their_counts_after_the_outcomes_migration(Arc::new(store), &tenant, key.key.id, day)
        .await;
}
