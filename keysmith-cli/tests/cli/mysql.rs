//! The flow on a fresh MySQL/MariaDB database per test (skipped with one
//! line without `KEYSMITH_TEST_MYSQL_URL`, failing instead when
//! `KEYSMITH_TEST_REQUIRE_SERVICES=1`).

use std::sync::Arc;

use keysmith_core::Store;
use keysmith_sqlx::MySqlStore;
use keysmith_tests::services::MySqlTestDb;
use serde_json::json;

use crate::flow::operator_flow;
use crate::harness::{Keysmith, bare};

#[tokio::test]
async fn operator_flow_on_mysql() {
    let Some(db) = MySqlTestDb::create().await else { return };
    let ks = Keysmith::new(db.url());
    assert_eq!(ks.json(&["migrate"]), json!({ "migrated": true }));
    ks.run(&["migrate"]).ok();

    let store = Arc::new(MySqlStore::connect(db.url()).await.unwrap());
    operator_flow(&ks, store.clone()).await;
    store.close().await;
}

#[test]
fn an_unreachable_mysql_server_is_an_infrastructure_failure() {
    // Port 1 on the loopback: nothing listens there, nothing leaves the machine.
    let error = bare(&["--database-url", "mariadb://root@127.0.0.1:1/keysmith", "migrate"]).fails(3);
    assert!(error.starts_with("error: cannot open the database"), "{error}");
    assert!(error.contains("Connection refused"), "{error}");
}

#[tokio::test]
async fn import_of_an_api_keys_table_on_mysql() {
    let Some(db) = MySqlTestDb::create().await else { return };
    let ks = Keysmith::new(db.url());
    ks.run(&["migrate"]).ok();
    let source = sqlx::MySqlPool::connect(db.url()).await.unwrap();
    for statement in crate::import::source_statements(crate::import::Dialect::MySql) {
        sqlx::query(&statement).execute(&source).await.unwrap();
    }
    let store = Arc::new(MySqlStore::connect(db.url()).await.unwrap());
    crate::import::import_flow(&ks, db.url(), store.clone()).await;
    store.close().await;
}

#[tokio::test]
async fn an_import_only_reads_its_mysql_source() {
    let Some(db) = MySqlTestDb::create().await else { return };
    // Not migrated: the query fails before anything would be written (and
    // migrations of parallel tests wait on one server-wide lock).
    let ks = Keysmith::new(db.url());
    let source = sqlx::MySqlPool::connect(db.url()).await.unwrap();
    let hash = crate::import::hash_of("mk_mysql_source_0000000");
    for statement in [
        "CREATE TABLE k (h VARCHAR(64))".to_owned(),
        format!("INSERT INTO k VALUES ('{hash}')"),
        "CREATE TABLE victim (x INT)".to_owned(),
    ] {
        sqlx::query(&statement).execute(&source).await.unwrap();
    }
    for query in [
        "DELETE FROM k",
        "DROP TABLE victim",
        "DELETE FROM k; SELECT 'x' AS hash",
        "COMMIT; DELETE FROM k",
        "DELETE FROM k RETURNING h AS hash",
    ] {
        crate::import::writing_query_is_refused(&ks, db.url(), query);
    }
    crate::import::a_query_naming_a_column_twice_is_refused(&ks, db.url(), "SELECT h AS hash, h AS hash FROM k");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM k").fetch_one(&source).await.unwrap();
    assert_eq!(rows, 1, "rows were deleted");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'victim'",
    )
    .fetch_one(&source)
    .await
    .unwrap();
    assert_eq!(tables, 1, "the table was dropped");
    source.close().await;
}
