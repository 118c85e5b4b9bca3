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
