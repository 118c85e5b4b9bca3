//! The store conformance suite on `MySqlStore` (one fresh database per
//! test), and what only a server can show: concurrent migrations, the
//! public migrator, replayed usage batches, case-sensitive names.

use std::sync::Arc;

use keysmith_sqlx::MySqlStore;
use keysmith_tests::services::MySqlTestDb;
use keysmith_tests::store_conformance::Fixture;

async fn setup() -> Option<Fixture> {
    let db = MySqlTestDb::create().await?;
    let store = MySqlStore::connect(db.url()).await.expect("connect to the test database");
    Some(Fixture::new(Arc::new(store)).await.with_guard(db))
}

keysmith_tests::store_conformance_tests!(setup);

mod mysql_only {
    use std::sync::Arc;

    use keysmith_core::store::{KeyStore, PolicyStore};
    use keysmith_core::{Error, Store, Tenant};
    use keysmith_sqlx::MySqlStore;
    use keysmith_tests::services::MySqlTestDb;
    use keysmith_tests::sql_cases;
    use keysmith_tests::store_conformance::{sample_key, sample_policy};

    async fn store(db: &MySqlTestDb) -> Arc<MySqlStore> {
        let store = MySqlStore::connect(db.url()).await.expect("connect to the test database");
        store.migrate().await.expect("migrate");
        Arc::new(store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_migrations_of_one_database_all_succeed() {
        let Some(db) = MySqlTestDb::create().await else { return };
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let url = db.url().to_owned();
            tasks.spawn(async move {
                let store = MySqlStore::connect(&url).await?;
                store.migrate().await?;
                store.migrate().await
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn the_named_limits_migration_upgrades_an_existing_database() {
        use keysmith_core::PolicyId;
        let Some(db) = MySqlTestDb::create().await else { return };
        let pool = db.pool().await;
        sql_cases::migrations_before_named_limits(&keysmith_sqlx::mysql::MIGRATOR).run(&pool).await.unwrap();
        let tenant = Tenant::new("app", "acme");
        let ids = [PolicyId::new(), PolicyId::new()];
        let literal = |id: uuid::Uuid| format!("UNHEX('{}')", id.simple());
        for statement in sql_cases::policies_before_named_limits(&tenant, ids, literal, "'[]'", "NOW(6)") {
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
        let store = MySqlStore::new(pool);
        store.migrate().await.unwrap();
        sql_cases::single_limits_become_the_default_named_limit(Arc::new(store), &tenant, ids).await;
    }

    #[tokio::test]
    async fn the_usage_outcomes_migration_upgrades_an_existing_database() {
        use keysmith_core::store::KeyStore;
        let Some(db) = MySqlTestDb::create().await else { return };
        let pool = db.pool().await;
        sql_cases::migrations_before_usage_outcomes(&keysmith_sqlx::mysql::MIGRATOR).run(&pool).await.unwrap();
        let tenant = Tenant::new("app", "acme");
        let key = keysmith_tests::store_conformance::sample_key(&tenant);
        let store = MySqlStore::new(pool);
        store.insert_key(&key).await.unwrap();
        let literal = |id: uuid::Uuid| format!("X'{}'", id.simple());
        let statement = sql_cases::rollup_before_usage_outcomes(&tenant, key.key.id, literal, "'2026-03-15 00:00:00'");
        sqlx::query(&statement).execute(store.pool()).await.unwrap();
        store.migrate().await.unwrap();
        let day = chrono::DateTime::parse_from_rfc3339("2026-03-15T00:00:00Z").unwrap().to_utc();
        sql_cases::old_rollups_keep_their_counts_after_the_outcomes_migration(
            Arc::new(store),
            &tenant,
            key.key.id,
            day,
        )
        .await;
    }

    #[tokio::test]
    async fn the_owner_credits_migration_upgrades_an_existing_database() {
        let Some(db) = MySqlTestDb::create().await else { return };
        let pool = db.pool().await;
        sql_cases::migrations_before_owner_credits(&keysmith_sqlx::mysql::MIGRATOR).run(&pool).await.unwrap();
        let (tenant, old) = (Tenant::new("app", "acme"), sql_cases::KeyBeforeOwnerCredits::new().await);
        let literal = |id: uuid::Uuid| format!("X'{}'", id.simple());
        for statement in sql_cases::rows_before_owner_credits(&tenant, &old, literal, "'[]'", "NOW(6)") {
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
        let store = MySqlStore::new(pool);
        store.migrate().await.unwrap();
        sql_cases::owners_take_credits_after_the_migration(Arc::new(store), &tenant, &old).await;
    }

    #[tokio::test]
    async fn the_owners_and_credits_migrations_upgrade_an_existing_database() {
        use keysmith_core::KeyId;
        let Some(db) = MySqlTestDb::create().await else { return };
        let pool = db.pool().await;
        sql_cases::migrations_before_owners(&keysmith_sqlx::mysql::MIGRATOR).run(&pool).await.unwrap();
        let (tenant, key) = (Tenant::new("app", "acme"), KeyId::new());
        let hex = |id: uuid::Uuid| format!("X'{}'", id.simple());
        for statement in sql_cases::rows_before_owners(&tenant, key, hex, "NOW(6)") {
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
        let store = MySqlStore::new(pool);
        store.migrate().await.unwrap();
        sql_cases::old_keys_take_owners_and_credits_after_the_migrations(Arc::new(store), &tenant, key).await;
    }

    #[tokio::test]
    async fn the_exact_identities_migration_upgrades_an_existing_database() {
        use keysmith_tests::store_conformance::{exact_identity_rows, lookalikes_reach_nothing};
        let Some(db) = MySqlTestDb::create().await else { return };
        let pool = db.pool().await;
        sql_cases::migrations_before_exact_identities(&keysmith_sqlx::mysql::MIGRATOR).run(&pool).await.unwrap();
        let store: Arc<dyn Store> = Arc::new(MySqlStore::new(pool.clone()));
        let rows = exact_identity_rows(&store).await;
        // The earlier schema's PAD SPACE collation takes `café ` for `café`.
        let spaced = Tenant::new(rows.tenant.app_id.clone(), format!("{} ", rows.tenant.tenant_id));
        assert!(store.get_key(&spaced, rows.key.key.id).await.unwrap().is_some(), "the flaw being fixed");

        store.migrate().await.unwrap();
        assert_eq!(store.get_key(&spaced, rows.key.key.id).await.unwrap(), None);
        lookalikes_reach_nothing(&store, &rows).await;
        let loose: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT TABLE_NAME, COALESCE(COLUMN_NAME, ''), COLLATION_NAME FROM ( \
               SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS \
               WHERE TABLE_SCHEMA = DATABASE() AND COLLATION_NAME IS NOT NULL \
               UNION ALL SELECT TABLE_NAME, NULL, TABLE_COLLATION FROM information_schema.TABLES \
               WHERE TABLE_SCHEMA = DATABASE()) t \
             WHERE TABLE_NAME LIKE 'keysmith\\_%' \
               AND COLLATION_NAME NOT IN ('utf8mb4_0900_bin', 'utf8mb4_nopad_bin')",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(loose.is_empty(), "every table and text column compares exactly: {loose:?}");
        store.close().await;
    }

    #[tokio::test]
    async fn the_public_migrator_builds_the_schema() {
        let Some(db) = MySqlTestDb::create().await else { return };
        let pool = db.pool().await;
        keysmith_sqlx::mysql::MIGRATOR.run(&pool).await.unwrap();
        let store = MySqlStore::new(pool);
        let key = sample_key(&Tenant::new("app", "acme"));
        store.insert_key(&key).await.unwrap();
        assert_eq!(store.find_key_by_hash(&key.hash).await.unwrap(), Some(key));
    }

    #[tokio::test]
    async fn mariadb_urls_connect_too() {
        let Some(db) = MySqlTestDb::create().await else { return };
        let url = db.url().replacen("mysql://", "mariadb://", 1);
        let store = keysmith_sqlx::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
    }

    #[tokio::test]
    async fn names_differing_only_in_case_are_different_policies() {
        let Some(db) = MySqlTestDb::create().await else { return };
        let store = store(&db).await;
        let tenant = Tenant::new("app", "acme");
        store.insert_policy(&sample_policy(&tenant, "Gold")).await.unwrap();
        store.insert_policy(&sample_policy(&tenant, "gold")).await.unwrap();
        let again = store.insert_policy(&sample_policy(&tenant, "gold")).await;
        assert!(matches!(again, Err(Error::AlreadyExists { entity: "policy", .. })), "{again:?}");
    }

    #[tokio::test]
    async fn replayed_usage_batch_is_counted_once() {
        let Some(db) = MySqlTestDb::create().await else { return };
        sql_cases::replayed_usage_batch_is_counted_once(store(&db).await).await;
    }

    #[tokio::test]
    async fn usage_for_an_unknown_key_fails_the_whole_batch() {
        let Some(db) = MySqlTestDb::create().await else { return };
        sql_cases::usage_for_an_unknown_key_fails_the_whole_batch(store(&db).await).await;
    }

    #[tokio::test]
    async fn a_change_log_reports_unreadable_rows_and_a_renumbering() {
        let Some(db) = MySqlTestDb::create().await else { return };
        let store = store(&db).await;
        let pool = store.pool().clone();
        sql_cases::a_change_log_reports_unreadable_rows_and_a_renumbering(
            store,
            &pool,
            &["TRUNCATE TABLE keysmith_change_log"],
        )
        .await;
    }

    #[tokio::test]
    async fn usage_of_a_deleted_key_goes_with_it() {
        let Some(db) = MySqlTestDb::create().await else { return };
        let store = store(&db).await;
        let pool = store.pool().clone();
        sql_cases::usage_of_a_deleted_key_goes_with_it(store, |id| async move {
            sqlx::query("DELETE FROM keysmith_keys WHERE id = ?").bind(id).execute(&pool).await.unwrap();
        })
        .await;
    }
}
