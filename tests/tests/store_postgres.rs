//! The store conformance suite on `PgStore` (one fresh database per test),
//! and what only a server can show: outages and recovery, concurrent
//! migrations, replayed usage batches, throughput.

use std::sync::Arc;

use keysmith_sqlx::PgStore;
use keysmith_tests::services::PgTestDb;
use keysmith_tests::store_conformance::Fixture;

async fn setup() -> Option<Fixture> {
    let db = PgTestDb::create().await?;
    let store = PgStore::connect(db.url()).await.expect("connect to the test database");
    Some(Fixture::new(Arc::new(store)).await.with_guard(db))
}

keysmith_tests::store_conformance_tests!(setup);

mod postgres_only {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use keysmith_core::store::{KeyStore, StoredKey, TimeRange, UsageStore};
    use keysmith_core::{
        Engine, Error, NewKey, Period, Refusal, RequestContext, Store, Tenant, UsageId, UsageRecord, ValidationError,
    };
    use keysmith_sqlx::PgStore;
    use keysmith_tests::services::PgTestDb;
    use keysmith_tests::sql_cases;
    use keysmith_tests::store_conformance::sample_key;
    use sqlx::PgConnection;

    async fn store(db: &PgTestDb) -> Arc<PgStore> {
        let store = PgStore::connect(db.url()).await.expect("connect to the test database");
        store.migrate().await.expect("migrate");
        Arc::new(store)
    }

    async fn terminate_connections(admin: &mut PgConnection, db: &PgTestDb) -> u64 {
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(db.name())
        .fetch_all(&mut *admin)
        .await
        .unwrap();
        killed.into_iter().filter(|k| *k).count() as u64
    }

    async fn allow_connections(admin: &mut PgConnection, db: &PgTestDb, allow: bool) {
        sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS {allow}", db.name()))
            .execute(&mut *admin)
            .await
            .unwrap();
    }

    #[track_caller]
    fn assert_store_failure<T: std::fmt::Debug>(result: Result<T, ValidationError>) {
        match result {
            Err(ValidationError::Failed(Error::Store { .. })) => {}
            other => panic!("expected a store failure (never a pass or a refusal), got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn validation_fails_while_the_database_is_unreachable_and_recovers_without_restart() {
        let Some(db) = PgTestDb::create().await else { return };
        let engine = Engine::builder(store(&db).await).build().unwrap();
        let acme = engine.tenant("app", "acme");
        let created = acme.create_key(NewKey::new("ci")).await.unwrap();
        let unknown = acme.create_key(NewKey::new("to revoke")).await.unwrap();
        acme.revoke_key(unknown.key.id, "so that it is refused").await.unwrap();
        let ctx = RequestContext::new();
        engine.validate(created.raw.expose(), &ctx).await.unwrap();

        // The database goes away: live connections are killed, new ones refused.
        let mut admin = db.admin().await;
        allow_connections(&mut admin, &db, false).await;
        assert!(terminate_connections(&mut admin, &db).await >= 1, "the pool had a live connection");

        for _ in 0..3 {
            assert_store_failure(engine.validate(created.raw.expose(), &ctx).await);
            // A key that would be refused is not refused either: nothing is known.
            assert_store_failure(engine.validate(unknown.raw.expose(), &ctx).await);
        }
        assert!(matches!(acme.revoke_key(created.key.id, "x").await, Err(Error::Store { .. })));
        assert!(matches!(engine.store().ping().await, Err(Error::Store { .. })));

        // It comes back: the same engine and pool work again.
        allow_connections(&mut admin, &db, true).await;
        let ok = engine.validate(created.raw.expose(), &ctx).await.expect("validation recovers");
        assert_eq!(ok.key.id, created.key.id);
        assert!(matches!(
            engine.validate(unknown.raw.expose(), &ctx).await,
            Err(ValidationError::Refused(Refusal::Revoked))
        ));
        engine.store().ping().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn usage_recorded_while_the_database_is_unreachable_is_written_once_it_is_back() {
        let Some(db) = PgTestDb::create().await else { return };
        let engine = Engine::builder(store(&db).await).build().unwrap();
        let tenant = Tenant::new("app", "acme");
        let created = engine.tenant("app", "acme").create_key(NewKey::new("ci")).await.unwrap();
        let record = |n: i64| UsageRecord {
            id: UsageId::new(),
            key_id: created.key.id,
            tenant: (&tenant).into(),
            endpoint: "/v1/orders".into(),
            method: "GET".into(),
            status: 200,
            ip: None,
            user_agent: None,
            latency: Duration::from_millis(2),
            timestamp: chrono::Utc::now() + chrono::Duration::milliseconds(n),
        };

        let mut admin = db.admin().await;
        allow_connections(&mut admin, &db, false).await;
        terminate_connections(&mut admin, &db).await;
        for n in 0..40 {
            engine.record_usage(record(n));
        }
        let flushing = tokio::spawn({
            let engine = engine.clone();
            async move { engine.flush_usage().await }
        });
        // The writer's first attempts fail (a real outage: how long the pool
        // takes to give up is the driver's), and it keeps the batch.
        let retried = async || engine.usage_stats().retried_writes > 0;
        keysmith_tests::wait::until("a write tried again", Duration::from_secs(30), retried).await;
        assert_eq!((engine.usage_stats().written, engine.usage_stats().failed), (0, 0));

        // The database comes back within the retry window: nothing is lost.
        allow_connections(&mut admin, &db, true).await;
        tokio::time::timeout(Duration::from_secs(60), flushing).await.expect("the flush ends").unwrap();
        let stats = engine.usage_stats();
        assert_eq!((stats.written, stats.dropped, stats.failed), (40, 0, 0), "{stats:?}");
        let page = keysmith_core::store::Page::new(100, 0);
        let written =
            engine.tenant("app", "acme").list_usage(created.key.id, TimeRange::default(), page).await.unwrap();
        assert_eq!(written.len(), 40);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_connections_are_replaced_and_never_produce_a_pass_or_refusal() {
        let Some(db) = PgTestDb::create().await else { return };
        let engine = Engine::builder(store(&db).await).build().unwrap();
        let created = engine.tenant("app", "acme").create_key(NewKey::new("ci")).await.unwrap();
        let ctx = RequestContext::new();
        let mut admin = db.admin().await;
        for round in 0..5 {
            engine.validate(created.raw.expose(), &ctx).await.unwrap();
            terminate_connections(&mut admin, &db).await;
            // The pool tests a connection before use and opens a new one.
            match engine.validate(created.raw.expose(), &ctx).await {
                Ok(validation) => assert_eq!(validation.key.id, created.key.id),
                Err(ValidationError::Failed(_)) => {
                    engine.validate(created.raw.expose(), &ctx).await.unwrap_or_else(|e| {
                        panic!("round {round}: still failing after the killed connection was dropped: {e}")
                    });
                }
                Err(refused) => panic!("round {round}: a killed connection must not refuse: {refused}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_migrations_of_one_database_all_succeed() {
        let Some(db) = PgTestDb::create().await else { return };
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let url = db.url().to_owned();
            tasks.spawn(async move {
                let store = PgStore::connect(&url).await?;
                store.migrate().await?;
                store.migrate().await
            });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn migrations_coexist_with_the_applications_own() {
        let Some(db) = PgTestDb::create().await else { return };
        let store = store(&db).await;
        // The application ran a migration of its own into the same history.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (1, 'create app tables', true, '\\x00', 1)",
        )
        .execute(store.pool())
        .await
        .unwrap();
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
    }

    #[tokio::test]
    async fn the_usage_outcomes_migration_upgrades_an_existing_database() {
        use keysmith_core::store::KeyStore;
        let Some(db) = PgTestDb::create().await else { return };
        let pool = db.pool().await;
        sql_cases::migrations_before_usage_outcomes(&keysmith_sqlx::postgres::MIGRATOR).run(&pool).await.unwrap();
        let tenant = Tenant::new("app", "acme");
        let key = keysmith_tests::store_conformance::sample_key(&tenant);
        let store = PgStore::new(pool);
        store.insert_key(&key).await.unwrap();
        let literal = |id: uuid::Uuid| format!("'{id}'");
        let statement = sql_cases::rollup_before_usage_outcomes(&tenant, key.key.id, literal, "'2026-03-15T00:00:00Z'");
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
        let Some(db) = PgTestDb::create().await else { return };
        let pool = db.pool().await;
        sql_cases::migrations_before_owner_credits(&keysmith_sqlx::postgres::MIGRATOR).run(&pool).await.unwrap();
        let (tenant, old) = (Tenant::new("app", "acme"), sql_cases::KeyBeforeOwnerCredits::new().await);
        let literal = |id: uuid::Uuid| format!("'{id}'");
        for statement in sql_cases::rows_before_owner_credits(&tenant, &old, literal, "'{}'", "now()") {
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
        let store = PgStore::new(pool);
        store.migrate().await.unwrap();
        sql_cases::owners_take_credits_after_the_migration(Arc::new(store), &tenant, &old).await;
    }

    #[tokio::test]
    async fn the_owners_and_credits_migrations_upgrade_an_existing_database() {
        use keysmith_core::KeyId;
        let Some(db) = PgTestDb::create().await else { return };
        let pool = db.pool().await;
        sql_cases::migrations_before_owners(&keysmith_sqlx::postgres::MIGRATOR).run(&pool).await.unwrap();
        let (tenant, key) = (Tenant::new("app", "acme"), KeyId::new());
        let literal = |id: uuid::Uuid| format!("'{id}'");
        for statement in sql_cases::rows_before_owners(&tenant, key, literal, "now()") {
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
        let store = PgStore::new(pool);
        store.migrate().await.unwrap();
        sql_cases::old_keys_take_owners_and_credits_after_the_migrations(Arc::new(store), &tenant, key).await;
    }

    #[tokio::test]
    async fn the_lineage_migration_upgrades_an_existing_database() {
        use keysmith_core::KeyId;
        let Some(db) = PgTestDb::create().await else { return };
        let pool = db.pool().await;
        // The database as the first schema left it.
        let first = sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(keysmith_sqlx::postgres::MIGRATOR.migrations[..1].to_vec()),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        first.run(&pool).await.unwrap();
        let tenant = Tenant::new("app", "acme");
        let ids = [KeyId::new(), KeyId::new(), KeyId::new(), KeyId::new()];
        let literal = |id: uuid::Uuid| format!("'{id}'");
        for statement in sql_cases::rows_before_lineages(&tenant, ids, literal, "now()") {
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
        let store = PgStore::new(pool);
        store.migrate().await.unwrap();
        sql_cases::keys_rotated_before_lineages_get_their_chains_lineage(Arc::new(store), &tenant, ids).await;
    }

    #[tokio::test]
    async fn the_named_limits_migration_upgrades_an_existing_database() {
        use keysmith_core::PolicyId;
        let Some(db) = PgTestDb::create().await else { return };
        let pool = db.pool().await;
        sql_cases::migrations_before_named_limits(&keysmith_sqlx::postgres::MIGRATOR).run(&pool).await.unwrap();
        let tenant = Tenant::new("app", "acme");
        let ids = [PolicyId::new(), PolicyId::new()];
        let literal = |id: uuid::Uuid| format!("'{id}'");
        for statement in sql_cases::policies_before_named_limits(&tenant, ids, literal, "'{}'", "now()") {
            sqlx::query(&statement).execute(&pool).await.unwrap();
        }
        let store = PgStore::new(pool);
        store.migrate().await.unwrap();
        sql_cases::single_limits_become_the_default_named_limit(Arc::new(store), &tenant, ids).await;
    }

    #[tokio::test]
    async fn the_public_migrator_builds_the_schema() {
        let Some(db) = PgTestDb::create().await else { return };
        let pool = db.pool().await;
        keysmith_sqlx::postgres::MIGRATOR.run(&pool).await.unwrap();
        let store = PgStore::new(pool);
        let key = sample_key(&Tenant::new("app", "acme"));
        store.insert_key(&key).await.unwrap();
        assert_eq!(store.find_key_by_hash(&key.hash).await.unwrap(), Some(key));
    }

    #[tokio::test]
    async fn replayed_usage_batch_is_counted_once() {
        let Some(db) = PgTestDb::create().await else { return };
        sql_cases::replayed_usage_batch_is_counted_once(store(&db).await).await;
    }

    #[tokio::test]
    async fn replayed_usage_batch_is_counted_once_with_asynchronous_usage_commit() {
        let Some(db) = PgTestDb::create().await else { return };
        let store = PgStore::connect(db.url()).await.expect("connect to the test database");
        store.migrate().await.expect("migrate");
        sql_cases::replayed_usage_batch_is_counted_once(Arc::new(store.with_asynchronous_usage_commit(true))).await;
    }

    #[tokio::test]
    async fn usage_for_an_unknown_key_fails_the_whole_batch() {
        let Some(db) = PgTestDb::create().await else { return };
        sql_cases::usage_for_an_unknown_key_fails_the_whole_batch(store(&db).await).await;
    }

    #[tokio::test]
    async fn usage_records_round_trip_through_binary_copy() {
        let Some(db) = PgTestDb::create().await else { return };
        let store = store(&db).await;
        let tenant = Tenant::new("app", "acme");
        let key = sample_key(&tenant);
        store.insert_key(&key).await.unwrap();
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        let record = |ip: Option<&str>, agent: Option<&'static str>, endpoint: &'static str, timestamp| UsageRecord {
            id: UsageId::new(),
            key_id: key.key.id,
            tenant: (&tenant).into(),
            endpoint: endpoint.into(),
            method: "PATCH".into(),
            status: 418,
            ip: ip.map(|ip| ip.parse().unwrap()),
            user_agent: agent.map(Into::into),
            latency: Duration::from_micros(1_234_567),
            timestamp,
        };
        let records = vec![
            // Before PostgreSQL's epoch (2000-01-01): a negative time.
            record(Some("2001:db8::1"), None, "/v1/things", at("1999-12-31T23:59:59.5Z")),
            record(Some("203.0.113.9"), Some("tab\there\nnew \\ ünï"), "/v1/ü/{id}", at("2026-03-15T12:34:56.789012Z")),
            record(None, Some("a\0b"), "/", at("2026-03-15T12:34:57Z")),
            record(Some("::ffff:192.0.2.1"), Some(""), "/v1/x", at("2026-03-15T12:34:58Z")),
        ];
        store.record_batch(&records).await.unwrap();
        let listed =
            store.list_usage(&tenant, key.key.id, TimeRange::default(), keysmith_core::store::Page::default()).await;
        let mut expected = records.clone();
        // A text cannot hold a NUL: it is left out.
        expected[2].user_agent = Some("ab".into());
        assert_eq!(listed.unwrap(), expected);
    }

    #[tokio::test]
    async fn a_change_log_reports_unreadable_rows_and_a_renumbering() {
        let Some(db) = PgTestDb::create().await else { return };
        let store = store(&db).await;
        let pool = store.pool().clone();
        sql_cases::a_change_log_reports_unreadable_rows_and_a_renumbering(
            store,
            &pool,
            &["TRUNCATE keysmith_change_log RESTART IDENTITY"],
        )
        .await;
    }

    #[tokio::test]
    async fn usage_of_a_deleted_key_goes_with_it() {
        let Some(db) = PgTestDb::create().await else { return };
        let store = store(&db).await;
        let pool = store.pool().clone();
        sql_cases::usage_of_a_deleted_key_goes_with_it(store, |id| async move {
            sqlx::query("DELETE FROM keysmith_keys WHERE id = $1").bind(id).execute(&pool).await.unwrap();
        })
        .await;
    }

    /// Sustained usage recording: 200 000 records in batches of 500.
    /// `cargo test --release -p keysmith-tests --test store_postgres -- --ignored --nocapture usage_recording_throughput`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check: run it by name"]
    async fn usage_recording_throughput() {
        const RECORDS: usize = 200_000;
        const BATCH: usize = 500;
        const KEYS: usize = 100;
        let Some(db) = PgTestDb::create().await else { return };
        let store = store(&db).await;
        let tenant = Tenant::new("bench", "acme");
        let mut keys: Vec<StoredKey> = Vec::new();
        for _ in 0..KEYS {
            let key = sample_key(&tenant);
            store.insert_key(&key).await.unwrap();
            keys.push(key);
        }
        let start = chrono::Utc::now();
        let batches: Vec<Vec<UsageRecord>> = (0..RECORDS / BATCH)
            .map(|b| {
                (0..BATCH)
                    .map(|i| {
                        let n = b * BATCH + i;
                        UsageRecord {
                            id: UsageId::new(),
                            key_id: keys[n % KEYS].key.id,
                            tenant: (&tenant).into(),
                            endpoint: "/v1/invoices".into(),
                            method: "GET".into(),
                            status: if n.is_multiple_of(20) { 500 } else { 200 },
                            ip: Some("203.0.113.9".parse().unwrap()),
                            user_agent: Some("bench/1.0".into()),
                            latency: Duration::from_millis(5),
                            timestamp: start + chrono::Duration::milliseconds(i64::try_from(n).unwrap() * 10),
                        }
                    })
                    .collect()
            })
            .collect();

        let began = Instant::now();
        for batch in &batches {
            store.record_batch(batch).await.unwrap();
        }
        let elapsed = began.elapsed();
        let totals = store.tenant_usage(&tenant, Period::Month, TimeRange::default()).await.unwrap();
        assert_eq!(totals.iter().map(|t| t.requests).sum::<u64>(), RECORDS as u64);
        #[allow(clippy::cast_precision_loss)]
        let rate = RECORDS as f64 / elapsed.as_secs_f64();
        println!(
            "usage_recording_throughput: {RECORDS} records in batches of {BATCH} over {KEYS} keys in {:.2}s: \
             {rate:.0} records/s (one writer)",
            elapsed.as_secs_f64()
        );
    }

    /// Import speed: 20 000 keys through `TenantEngine::import_keys` in
    /// batches of 1000, without a policy and under one limiting each owner
    /// to one live key (every row then checks its owner).
    /// `cargo test --release -p keysmith-tests --test store_postgres -- --ignored --nocapture import_throughput`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check: run it by name"]
    async fn import_throughput() {
        use keysmith_core::{Engine, Hasher as _, ImportOptions, ImportRow, PolicySpec, Sha256Hasher};
        const KEYS: usize = 20_000;
        const BATCH: usize = 1000;
        let Some(db) = PgTestDb::create().await else { return };
        let engine = Engine::builder(store(&db).await).build().unwrap();
        let one_per_owner = engine
            .tenant("bench", "acme")
            .create_policy(PolicySpec::new("one").with_max_active_keys_per_owner(1))
            .await
            .unwrap();
        for (tenant, options) in
            [("plain", ImportOptions::new()), ("acme", ImportOptions::new().with_policy(one_per_owner.id))]
        {
            let rows: Vec<ImportRow> = (0..KEYS)
                .map(|n| ImportRow {
                    line: n as u64 + 2,
                    hash: Sha256Hasher.hash(&format!("mk_{tenant}_{n:032}")).to_hex(),
                    hint: Some("mk_abc123".into()),
                    name: Some(format!("key {n}")),
                    owner_id: Some(format!("user-{n}")),
                    external_id: Some(uuid::Uuid::new_v4().to_string()),
                    scopes: Some(vec!["read".into()]),
                    ..ImportRow::default()
                })
                .collect();
            let handle = engine.tenant("bench", tenant);
            let began = Instant::now();
            for batch in rows.chunks(BATCH) {
                let report = handle.import_keys(batch, &options).await.unwrap();
                assert_eq!(report.imported, BATCH as u64, "{report:?}");
            }
            let elapsed = began.elapsed();
            #[allow(clippy::cast_precision_loss)]
            let rate = KEYS as f64 / elapsed.as_secs_f64();
            let policy = if tenant == "plain" { "no policy" } else { "one live key per owner" };
            println!(
                "import_throughput ({policy}): {KEYS} keys in batches of {BATCH} in {:.2}s: {rate:.0} keys/s",
                elapsed.as_secs_f64()
            );
        }
    }
}
