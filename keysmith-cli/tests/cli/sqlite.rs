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

#[test]
fn ids_that_are_not_identities_exit_1_and_never_reach_another_tenant() {
    let (_dir, ks) = temp_db();
    ks.run(&["migrate"]).ok();
    let created = ks.json(&["keys", "create", "--name", "theirs", "--owner", "cus_1"]);
    let id = created["key"]["id"].as_str().unwrap().to_owned();

    // `acme ` is not `acme`, and is no tenant at all: refused, never trimmed.
    let spaced = ks.for_tenant("acme ");
    for args in [&["keys", "list"][..], &["keys", "show", &id], &["keys", "revoke", &id], &["policies", "list"]] {
        let error = spaced.run(args).fails(1);
        assert_eq!(error, "error: invalid tenant_id: must not begin or end with whitespace\n", "{args:?}");
    }
    let url = ks.url();
    let error = bare(&["--database-url", url, "--app", "myapp ", "--tenant", "acme", "keys", "list"]).fails(1);
    assert_eq!(error, "error: invalid app_id: must not begin or end with whitespace\n");
    let long = "x".repeat(129);
    let error = bare(&["--database-url", url, "--app", "myapp", "--tenant", &long, "scopes", "list"]).fails(1);
    assert_eq!(error, "error: invalid tenant_id: must be 1 to 128 bytes, not 129\n");
    assert_eq!(ks.json(&["keys", "show", &id])["state"], "active", "acme's key was not revoked");

    // Owner ids are exact too.
    let error = ks.run(&["keys", "list", "--owner", "cus_1 "]).fails(1);
    assert_eq!(error, "error: invalid owner_id: must not begin or end with whitespace\n");
    ks.run(&["owners", "credits", " cus_1", "--set", "5"]).fails(1);
    assert_eq!(ks.json(&["keys", "list", "--owner", "cus_1"]).as_array().map(Vec::len), Some(1));
}

#[test]
fn ids_that_are_not_identities_are_refused_before_the_database_is_opened() {
    // Never reachable: the refusal comes first, with exit 1, not 3.
    let url = "postgres://postgres@127.0.0.1:1/never";
    let error = bare(&["--database-url", url, "--app", "myapp", "--tenant", "acme ", "keys", "list"]).fails(1);
    assert!(error.contains("invalid tenant_id"), "{error}");
    let error = bare(&["--database-url", url, "--app", "myapp\u{7}", "--tenant", "acme", "keys", "list"]).fails(1);
    assert!(error.contains("invalid app_id") && error.contains("U+0007"), "{error}");
    let error = bare(&["--database-url", url, "--app", " myapp", "serve"]).fails(1);
    assert!(error.contains("invalid app_id"), "{error}");
}

#[tokio::test]
async fn import_of_an_api_keys_table_on_sqlite() {
    let (dir, ks) = temp_db();
    ks.run(&["migrate"]).ok();
    // The source is a database of its own, as it usually is.
    let source_url = format!("sqlite:{}?mode=rwc", dir.path().join("legacy.db").display());
    let source = sqlx::SqlitePool::connect(&source_url).await.unwrap();
    for statement in crate::import::source_statements(crate::import::Dialect::Sqlite) {
        sqlx::query(&statement).execute(&source).await.unwrap();
    }
    source.close().await;
    let store = Arc::new(SqliteStore::connect(ks.url()).await.unwrap());
    crate::import::import_flow(&ks, &source_url, store.clone()).await;
    store.close().await;
}
