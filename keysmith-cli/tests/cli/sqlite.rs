//! The flow on a temporary SQLite file, and SQLite-specific failures.

use std::sync::Arc;

use keysmith_core::Store;
use keysmith_sqlx::SqliteStore;
use serde_json::json;

use crate::flow::operator_flow;
use crate::harness::{Keysmith, bare};

fn temp_db() -> (tempfile::TempDir, Keysmith) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("keys.db").display());
    (dir, Keysmith::new(url))
}

#[tokio::test]
async fn operator_flow_on_sqlite() {
    let (dir, ks) = temp_db();
    assert_eq!(ks.json(&["migrate"]), json!({ "migrated": true }));
    assert!(dir.path().join("keys.db").exists(), "migrate creates the file");
    assert_eq!(ks.run(&["migrate"]).ok(), "Database schema is up to date.\n");

    let store = Arc::new(SqliteStore::connect(ks.url()).await.unwrap());
    operator_flow(&ks, store.clone()).await;
    store.close().await;
}

#[test]
fn commands_before_migrate_fail_as_infrastructure_with_a_hint() {
    let (_dir, ks) = temp_db();
    let error = ks.run(&["keys", "list"]).fails(3);
    assert!(error.contains("keysmith migrate"), "{error}");
}

#[test]
fn an_unopenable_sqlite_file_is_an_infrastructure_failure() {
    let (dir, _) = temp_db();
    let url = format!("sqlite:{}", dir.path().join("missing-dir").join("keys.db").display());
    let error = bare(&["--database-url", &url, "migrate"]).fails(3);
    assert!(error.starts_with("error: cannot open the database"), "{error}");
}

#[test]
fn environment_variables_stand_in_for_the_global_flags() {
    let (_dir, ks) = temp_db();
    ks.run(&["migrate"]).ok();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keysmith"))
        .args(["--json", "scopes", "create", "--name", "read"])
        .env("DATABASE_URL", ks.url())
        .env("KEYSMITH_APP", crate::harness::APP)
        .env("KEYSMITH_TENANT", crate::harness::TENANT)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(ks.json(&["scopes", "list"])[0]["name"], "read");
}
