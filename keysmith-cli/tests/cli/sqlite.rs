//! The flow on a temporary SQLite file, and SQLite-specific failures.

use std::sync::Arc;

use keysmith_core::Store;
use keysmith_sqlx::SqliteStore;
use serde_json::json;

use crate::flow::operator_flow;
use crate::harness::{Keysmith, bare, str_of};

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

/// A source of its own with a table `k` of one key hash, and a table `victim`.
async fn sqlite_source(dir: &tempfile::TempDir) -> (String, sqlx::SqlitePool) {
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("source.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let hash = crate::import::hash_of("mk_sqlite_source_000000");
    for statement in [
        "CREATE TABLE k (h TEXT)".to_owned(),
        format!("INSERT INTO k VALUES ('{hash}')"),
        "CREATE TABLE victim (x INTEGER)".to_owned(),
    ] {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    (url, pool)
}

#[tokio::test]
async fn an_import_only_reads_its_sqlite_source() {
    let (dir, ks) = temp_db();
    ks.run(&["migrate"]).ok();
    let (url, pool) = sqlite_source(&dir).await;
    for query in [
        "DROP TABLE victim; SELECT h AS hash FROM k",
        "DELETE FROM k RETURNING h AS hash",
        "PRAGMA query_only = OFF; DELETE FROM k RETURNING h AS hash",
    ] {
        crate::import::writing_query_is_refused(&ks, &url, query);
    }
    assert_eq!(ks.json(&["keys", "list"]), serde_json::Value::Array(vec![]));
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = 'victim'").fetch_one(&pool).await.unwrap();
    assert_eq!(tables, 1, "the table was dropped");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM k").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 1, "rows were deleted");
    pool.close().await;
}

#[tokio::test]
async fn a_query_that_fails_says_so_and_a_failure_midway_reports_what_was_imported() {
    let (dir, ks) = temp_db();
    ks.run(&["migrate"]).ok();
    let (url, pool) = sqlite_source(&dir).await;
    let error = ks.run(&["import", "--from-url", &url, "--query", "SELEC 1"]).fails(2);
    assert!(error.starts_with("error: the source query failed: ") && error.contains("SELEC"), "{error}");

    // Two good rows, then one the database fails on.
    for raw in ["mk_sqlite_second_000000", "mk_sqlite_third_0000000"] {
        let hash = crate::import::hash_of(raw);
        sqlx::query(&format!("INSERT INTO k VALUES ('{hash}')")).execute(&pool).await.unwrap();
    }
    sqlx::query("INSERT INTO k VALUES ('bad')").execute(&pool).await.unwrap();
    let query = "SELECT CASE WHEN h = 'bad' THEN json('{') ELSE h END AS hash FROM k ORDER BY rowid";
    let run = ks.run(&["import", "--from-url", &url, "--query", query, "--batch-size", "1"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.contains("imported") && run.stdout.contains('3'), "{}", run.stdout);
    assert!(run.stderr.contains("the source query failed") && run.stderr.contains("stopped"), "{}", run.stderr);
    assert_eq!(ks.json(&["keys", "list"]).as_array().unwrap().len(), 3);
    pool.close().await;
}

#[test]
fn a_dry_run_in_batches_reports_what_the_import_does() {
    let (_dir, ks) = temp_db();
    ks.run(&["migrate"]).ok();
    crate::import::dry_run_in_batches_reports_what_the_import_does(&ks);
}

#[test]
fn a_malformed_line_is_a_refused_row_and_the_rest_is_imported() {
    let (_dir, ks) = temp_db();
    ks.run(&["migrate"]).ok();
    crate::import::a_malformed_line_is_a_refused_row(&ks);
}

#[test]
fn an_unterminated_quote_is_a_refused_row_naming_its_lines() {
    let (_dir, ks) = temp_db();
    ks.run(&["migrate"]).ok();
    crate::import::an_unterminated_quote_is_a_refused_row_naming_its_lines(&ks);
}

#[tokio::test]
async fn a_field_or_column_named_twice_is_refused() {
    let (dir, ks) = temp_db();
    ks.run(&["migrate"]).ok();
    crate::import::a_field_or_column_named_twice_is_refused(&ks);
    let (url, pool) = sqlite_source(&dir).await;
    crate::import::a_query_naming_a_column_twice_is_refused(&ks, &url, "SELECT h AS hash, h AS hash FROM k");
    assert_eq!(ks.json(&["keys", "list"]).as_array().unwrap().len(), 1, "nothing more was written");
    pool.close().await;
}

/// On SQLite without `--redis-url` nothing publishes a change: the CLI says
/// so after each change instances cache, and only then.
#[tokio::test]
async fn a_change_nothing_publishes_is_noted_on_stderr() {
    let (_dir, ks) = temp_db();
    ks.run(&["migrate"]).ok();
    let created = ks.json(&["keys", "create", "--name", "a"]);
    let id = str_of(&created["key"], "id");
    for read in [&["keys", "list"][..], &["keys", "credits", id], &["owners", "credits", "cus_1"]] {
        let run = ks.run(read);
        assert!(run.stderr.is_empty(), "{read:?}: {}", run.stderr);
    }
    let changes = [
        &["keys", "suspend", id][..],
        &["keys", "reactivate", id],
        &["keys", "credits", id, "--set", "5"],
        &["owners", "credits", "cus_1", "--set", "2"],
        &["keys", "revoke", id],
    ];
    for change in changes {
        let run = ks.run(change);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stderr.starts_with("note: nothing publishes this change"), "{change:?}: {}", run.stderr);
        assert!(run.stderr.contains("--redis-url"), "{}", run.stderr);
    }
    // A refused change changed nothing: no note.
    let refused = ks.run(&["keys", "suspend", id]);
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    assert!(refused.stderr.starts_with("error: "), "{}", refused.stderr);
}

/// With `--redis-url` (here on SQLite, which has no feed of its own), a key
/// the CLI revokes is refused at once by an application instance that cached
/// it and listens on the same Redis change feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_url_a_key_revoked_by_the_cli_is_refused_at_once_by_an_instance_caching_it() {
    let Some(redis) = keysmith_tests::services::service_url("KEYSMITH_TEST_REDIS_URL") else { return };
    let (_dir, ks) = temp_db();
    ks.run(&["migrate"]).ok();
    let store = SqliteStore::connect(ks.url()).await.unwrap();
    let feed = keysmith_redis::RedisChangeFeed::connect(&redis).await.unwrap();
    crate::feed::a_revocation_reaches_an_instance_caching_the_key(&ks, &["--redis-url", &redis], store, feed).await;
}
