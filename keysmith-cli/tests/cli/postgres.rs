//! The flow on a fresh PostgreSQL database per test (skipped
//! with one line without `KEYSMITH_TEST_POSTGRES_URL`, failing instead when
//! `KEYSMITH_TEST_REQUIRE_SERVICES=1`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use keysmith_core::Store;
use keysmith_sqlx::{PgChangeFeed, PgStore};
use keysmith_tests::server_process::Response;
use keysmith_tests::services::PgTestDb;
use serde_json::json;

use crate::flow::operator_flow;
use crate::harness::{Keysmith, bare};
use crate::serve::{call, serve};

#[tokio::test]
async fn operator_flow_on_postgres() {
    let Some(db) = PgTestDb::create().await else { return };
    let ks = Keysmith::new(db.url());
    assert_eq!(ks.json(&["migrate"]), json!({ "migrated": true }));
    ks.run(&["migrate"]).ok();

    let store = Arc::new(PgStore::connect(db.url()).await.unwrap());
    operator_flow(&ks, store.clone()).await;
    store.close().await;
}

#[test]
fn an_unreachable_server_is_an_infrastructure_failure() {
    // Port 1 on the loopback: nothing listens there, nothing leaves the machine.
    let error = bare(&["--database-url", "postgres://postgres@127.0.0.1:1/keysmith", "migrate"]).fails(3);
    assert!(error.starts_with("error: cannot open the database"), "{error}");
    // The cause, not only that a pool gave up waiting.
    assert!(error.contains("Connection refused"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_is_not_ready_while_its_database_is_unreachable_and_ready_again_after() {
    let Some(db) = PgTestDb::create().await else { return };
    let ks = Keysmith::new(db.url());
    ks.run(&["bootstrap-admin"]).ok();
    let server = serve(&ks, &[]);
    let ready = || call(&server, "GET", "/ready", None, b"");
    assert_eq!(ready().status, 200);

    db.set_reachable(false).await;
    let down = until(ready, |answer| answer.status != 200);
    assert_eq!(down.status, 503, "{}", down.body);
    // The whole body: the store's error (naming the database) is not answered.
    assert_eq!(down.body, r#"{"status":"not_ready","checks":{"store":"down","change_feed":"publishing"}}"#);
    // Liveness is not readiness: the process still serves.
    assert_eq!(call(&server, "GET", "/health", None, b"").status, 200);

    db.set_reachable(true).await;
    let up = until(ready, |answer| answer.status == 200);
    assert_eq!(up.body, r#"{"status":"ready","checks":{"store":"up","change_feed":"publishing"}}"#);
}

/// Asks until the answer is as wanted (a real server changing state on its
/// own: a pool noticing its connections are gone); at most a minute.
#[track_caller]
fn until(ask: impl Fn() -> Response, wanted: impl Fn(&Response) -> bool) -> Response {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = ask();
        if wanted(&answer) || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn import_of_an_api_keys_table_on_postgres() {
    let Some(db) = PgTestDb::create().await else { return };
    let ks = Keysmith::new(db.url());
    ks.run(&["migrate"]).ok();
    let source = sqlx::PgPool::connect(db.url()).await.unwrap();
    for statement in crate::import::source_statements(crate::import::Dialect::Postgres) {
        sqlx::query(&statement).execute(&source).await.unwrap();
    }
    let store = Arc::new(PgStore::connect(db.url()).await.unwrap());
    crate::import::import_flow(&ks, db.url(), store.clone()).await;
    store.close().await;
}

#[tokio::test]
async fn an_import_only_reads_its_postgres_source() {
    let Some(db) = PgTestDb::create().await else { return };
    let ks = Keysmith::new(db.url());
    ks.run(&["migrate"]).ok();
    let source = sqlx::PgPool::connect(db.url()).await.unwrap();
    let hash = crate::import::hash_of("mk_postgres_source_0000");
    for statement in ["CREATE TABLE k (h TEXT)".to_owned(), format!("INSERT INTO k VALUES ('{hash}')")] {
        sqlx::query(&statement).execute(&source).await.unwrap();
    }
    for query in [
        "DELETE FROM k RETURNING h AS hash",
        "WITH gone AS (DELETE FROM k RETURNING h) SELECT h AS hash FROM gone",
        "DELETE FROM k; SELECT 'x' AS hash",
        "COMMIT; DELETE FROM k RETURNING h AS hash",
        // Keysmith's own tables, the source the guide allows.
        "DELETE FROM keysmith_policies RETURNING id::text AS hash",
    ] {
        crate::import::writing_query_is_refused(&ks, db.url(), query);
    }
    assert_eq!(ks.json(&["keys", "list"]), serde_json::Value::Array(vec![]));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM k").fetch_one(&source).await.unwrap();
    assert_eq!(rows, 1, "rows were deleted");
    crate::import::a_query_naming_a_column_twice_is_refused(&ks, db.url(), "SELECT h AS hash, h AS hash FROM k");
    let error = ks.run(&["import", "--from-url", db.url(), "--query", "SELEC 1"]).fails(2);
    assert!(error.starts_with("error: the source query failed: ") && error.contains("SELEC"), "{error}");
    source.close().await;
}

/// A key the CLI revokes on PostgreSQL is refused at once by an application
/// instance that cached it and listens on the database's change feed
/// (`NOTIFY`), with nothing set on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_by_the_cli_is_refused_at_once_by_an_instance_caching_it() {
    let Some(db) = PgTestDb::create().await else { return };
    let ks = Keysmith::new(db.url());
    ks.run(&["migrate"]).ok();
    let store = PgStore::connect(db.url()).await.unwrap();
    let feed = PgChangeFeed::new(store.pool().clone());
    crate::feed::a_revocation_reaches_an_instance_caching_the_key(&ks, &[], store, feed).await;
}
