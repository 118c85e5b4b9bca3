//! `keysmith import` of a typical hand-written api_keys table, the same on every database.

use std::sync::Arc;

use keysmith_core::{Engine, Hasher as _, LegacyKeys, ParsedKey, Refusal, RequestContext, Sha256Hasher, Store};
use serde_json::Value;

use crate::harness::{APP, Keysmith, str_of};

/// A database's spelling of the table most teams wrote themselves.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

/// The clients' raw keys, in the application's own format (`mk_…`, no checksum).
const ALICE: &str = "mk_a11ce0c4f1e24b7d9e8a6b5c4d3e2f10";
const BOB_OLD: &str = "mk_b0b01d5e6f7a8b9c0d1e2f3a4b5c6d70";
const BOB: &str = "mk_b0b02a7c8d9e0f1a2b3c4d5e6f7a8b90";
/// A key of a prefix the engine does not accept.
const CAROL: &str = "pk_ca7010a2b3c4d5e6f7a8b9c0d1e2f3a4";

const ALICE_ID: &str = "4f0f4f4e-0000-4000-8000-00000000a11c";
const BOB_ID: &str = "4f0f4f4e-0000-4000-8000-000000000b0b";
const CAROL_ID: &str = "4f0f4f4e-0000-4000-8000-00000000ca70";

/// The query a team writes: their columns renamed after Keysmith's fields.
pub(crate) const QUERY: &str = "SELECT id AS external_id, user_id AS owner_id, key_hash AS hash, \
    key_prefix AS hint, name, last_used_at, created_at, revoked_at FROM api_keys";

/// The statements that create and fill the table on `dialect`.
pub(crate) fn source_statements(dialect: Dialect) -> Vec<String> {
    let create = match dialect {
        Dialect::Postgres => {
            "CREATE TABLE api_keys (id UUID PRIMARY KEY, user_id UUID NOT NULL, key_hash VARCHAR(64) NOT NULL, \
             key_prefix VARCHAR(16) NOT NULL, name VARCHAR(255), last_used_at TIMESTAMPTZ, \
             created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), revoked_at TIMESTAMPTZ)"
        }
        Dialect::MySql => {
            "CREATE TABLE api_keys (id CHAR(36) PRIMARY KEY, user_id CHAR(36) NOT NULL, key_hash VARCHAR(64) NOT NULL, \
             key_prefix VARCHAR(16) NOT NULL, name VARCHAR(255), last_used_at DATETIME(6) NULL, \
             created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), revoked_at DATETIME(6) NULL)"
        }
        Dialect::Sqlite => {
            "CREATE TABLE api_keys (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, key_hash TEXT NOT NULL, \
             key_prefix TEXT NOT NULL, name TEXT, last_used_at TEXT, \
             created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, revoked_at TEXT)"
        }
    };
    let mut statements = vec![create.to_owned()];
    if !matches!(dialect, Dialect::MySql) {
        // MySQL has no partial index; the rule is the same.
        statements
            .push("CREATE UNIQUE INDEX api_keys_one_active ON api_keys (user_id) WHERE revoked_at IS NULL".into());
    }
    let rows = [
        ("4f0f4f4e-0000-4000-8000-000000000001", ALICE_ID, ALICE, "'ci'", "'2025-06-01 08:30:00'", "NULL"),
        ("4f0f4f4e-0000-4000-8000-000000000002", BOB_ID, BOB_OLD, "NULL", "NULL", "'2025-03-01 00:00:00'"),
        ("4f0f4f4e-0000-4000-8000-000000000003", BOB_ID, BOB, "'laptop'", "NULL", "NULL"),
        ("4f0f4f4e-0000-4000-8000-000000000004", CAROL_ID, CAROL, "'prod'", "NULL", "NULL"),
    ];
    for (id, user, raw, name, last_used, revoked) in rows {
        statements.push(format!(
            "INSERT INTO api_keys (id, user_id, key_hash, key_prefix, name, last_used_at, created_at, revoked_at) \
             VALUES ('{id}', '{user}', '{}', '{}', {name}, {last_used}, '2025-01-15 12:00:00', {revoked})",
            Sha256Hasher.hash(raw).to_hex(),
            &raw[..9],
        ));
    }
    statements
}

fn refusal(result: Result<keysmith_core::Validation, keysmith_core::ValidationError>) -> Refusal {
    result.unwrap_err().refusal().cloned().expect("a refusal")
}

/// Imports the filled table at `source_url` into the migrated database of
/// `ks`, then checks what a team relies on.
pub(crate) async fn import_flow(ks: &Keysmith, source_url: &str, store: Arc<dyn Store>) {
    let policy = ks.json(&["policies", "create", "--name", "one-per-user", "--max-keys-per-owner", "1"]);
    let policy_id = str_of(&policy, "id").to_owned();
    let import = ["import", "--from-url", source_url, "--query", QUERY, "--policy", &policy_id, "--scopes", "read"];

    // A dry run says what would happen and writes nothing.
    let dry = ks.json(&[&import[..], &["--dry-run"]].concat());
    assert_eq!((dry["imported"].as_u64(), dry["imported_inactive"].as_u64()), (Some(4), Some(1)), "{dry}");
    assert_eq!(ks.json(&["keys", "list"]), Value::Array(vec![]));

    let report = ks.json(&import);
    assert_eq!((report["imported"].as_u64(), report["skipped"].as_u64()), (Some(4), Some(0)), "{report}");

    // The raw keys validate as they are; the revoked one does not.
    let legacy = LegacyKeys::new().accept_prefixes(APP, ["mk_"]);
    let engine = Engine::builder(Arc::clone(&store)).with_legacy_keys(legacy).build().unwrap();
    let ctx = RequestContext::new().with_required_scopes(&["read"]);
    let alice = engine.validate(ALICE, &ctx).await.expect("alice's key validates as it is");
    assert_eq!(alice.key.owner_id.as_deref(), Some(ALICE_ID));
    assert_eq!(alice.key.name, "ci");
    assert_eq!(alice.key.hint, &ALICE[..9]);
    assert_eq!(alice.key.metadata["external_id"], "4f0f4f4e-0000-4000-8000-000000000001");
    assert!(alice.key.last_used_at.is_some());
    engine.validate(BOB, &ctx).await.expect("bob's current key validates");
    assert_eq!(refusal(engine.validate(BOB_OLD, &ctx).await), Refusal::Revoked);
    // Imported, but of a prefix this engine does not accept.
    assert_eq!(refusal(engine.validate(CAROL, &ctx).await), Refusal::Malformed);

    // One active key per user: the policy refuses a second one.
    let refused = ks.run(&["keys", "create", "--name", "x", "--owner", ALICE_ID, "--policy", &policy_id]).fails(1);
    assert!(refused.contains(ALICE_ID), "{refused}");

    // A second run is a no-op.
    let again = ks.json(&import);
    assert_eq!((again["imported"].as_u64(), again["skipped"].as_u64()), (Some(0), Some(4)), "{again}");
    assert_eq!(ks.json(&["keys", "list"]).as_array().unwrap().len(), 4);

    // A bad row is reported with its line; nothing of its batch is written.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("more.csv");
    let dave = "mk_da7e0a1b2c3d4e5f6a7b8c9d0e1f2a3b";
    let csv = format!(
        "hash,owner_id,name,external_id\n{},dave,dave's key,d1\nnot-a-hash,erin,erin's key,e1\n",
        Sha256Hasher.hash(dave).to_hex()
    );
    std::fs::write(&file, csv).unwrap();
    let run = ks.run(&["import", "--from-file", file.to_str().unwrap(), "--policy", &policy_id]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("line 3 (e1): invalid hash"), "{}", run.stdout);
    assert!(run.stderr.contains("1 row(s) refused"), "{}", run.stderr);
    assert_eq!(refusal(engine.validate(dave, &RequestContext::new()).await), Refusal::Unknown, "not written");
    assert_eq!(ks.json(&["keys", "list"]).as_array().unwrap().len(), 4);

    // A rotation moves a client onto a checksummed key of the same look.
    let id = alice.key.id.to_string();
    let rotated = ks.json(&["keys", "rotate", &id, "--grace", "0"]);
    let raw = str_of(&rotated, "raw_key");
    assert_eq!(ParsedKey::parse(raw).map(|parsed| parsed.prefix), Some("mk"), "{raw}");
    engine.validate(raw, &ctx).await.expect("the rotated key validates");
    assert_eq!(refusal(engine.validate(ALICE, &ctx).await), Refusal::Revoked);
    engine.shutdown().await;
}

/// The hex SHA-256 of `raw`, as a source keeps it.
pub(crate) fn hash_of(raw: &str) -> String {
    Sha256Hasher.hash(raw).to_hex()
}

/// Runs `query` as an import source, dry run and real: both fail as a bad
/// query, before anything is imported. The caller checks the source is intact.
#[track_caller]
pub(crate) fn writing_query_is_refused(ks: &Keysmith, source_url: &str, query: &str) {
    for dry_run in [true, false] {
        let mut args = vec!["import", "--from-url", source_url, "--query", query];
        if dry_run {
            args.push("--dry-run");
        }
        let error = ks.run(&args).fails(2);
        assert!(error.starts_with("error: the source query failed: "), "{query}: {error}");
    }
}

/// Writes `text` to a file named `name` in `dir` and returns its path.
fn source_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `ks --json ARGS`, whatever its exit status: the status and the report.
fn report_of(ks: &Keysmith, args: &[&str]) -> (i32, Value) {
    let run = ks.run(&[&["--json"][..], args].concat());
    let report = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"));
    (run.code, report)
}

/// A dry run over several batches says what the real run then does: the
/// keys, source ids and owners' live keys of earlier batches count.
pub(crate) fn dry_run_in_batches_reports_what_the_import_does(ks: &Keysmith) {
    let policy = ks.json(&["policies", "create", "--name", "one-each", "--max-keys-per-owner", "1"]);
    let policy_id = str_of(&policy, "id").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let csv = format!(
        "hash,owner_id,external_id\n{},owner-z,y1\n{},owner-z,y2\n{},owner-q,y1\n{},owner-w,y4\n{},owner-w,y4\n",
        hash_of("mk_batch_one_0000000000"),
        hash_of("mk_batch_two_0000000000"),
        hash_of("mk_batch_three_00000000"),
        hash_of("mk_batch_four_000000000"),
        hash_of("mk_batch_four_000000000"),
    );
    let file = source_file(&dir, "keys.csv", &csv);
    let import = ["import", "--from-file", &file, "--policy", &policy_id, "--batch-size", "1"];
    let (dry_code, mut dry) = report_of(ks, &[&import[..], &["--dry-run"]].concat());
    assert_eq!(ks.json(&["keys", "list"]), Value::Array(vec![]), "a dry run writes nothing");
    let (code, real) = report_of(ks, &import);
    assert_eq!((real["imported"].as_u64(), real["skipped"].as_u64()), (Some(2), Some(2)), "{real}");
    assert_eq!(real["refused"][0]["line"], 3, "{real}");
    assert_eq!(dry["dry_run"], true);
    dry["dry_run"] = Value::Bool(false);
    assert_eq!(dry, real, "the dry run said otherwise");
    assert_eq!((dry_code, code), (1, 1));
}

/// A line of a file that is not a row (wrong field count, not JSON, an
/// unknown field) is a refused row with its line; the other batches are
/// imported and the command exits 1.
pub(crate) fn a_malformed_line_is_a_refused_row(ks: &Keysmith) {
    let dir = tempfile::tempdir().unwrap();
    let csv = format!(
        "hash,owner_id,external_id,created_at\n{},o1,c1,\n{},o2\n{},o3,c3,yesterday\n{},o4,c4,\n",
        hash_of("mk_csv_one_000000000000"),
        hash_of("mk_csv_two_000000000000"),
        hash_of("mk_csv_three_0000000000"),
        hash_of("mk_csv_four_00000000000"),
    );
    let file = source_file(&dir, "keys.csv", &csv);
    let run = ks.run(&["import", "--from-file", &file, "--batch-size", "1"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("line 3: 2 field(s), the header names 4"), "{}", run.stdout);
    // A time that does not parse names the row's source id, as other refusals do.
    assert!(run.stdout.contains("line 4 (c3): created_at: not a time"), "{}", run.stdout);
    assert!(run.stderr.contains("2 row(s) refused"), "{}", run.stderr);
    assert_eq!(ks.json(&["keys", "list"]).as_array().unwrap().len(), 2);

    let jsonl = format!(
        "{{\"hash\":\"{}\",\"external_id\":\"j1\"}}\n{{\"hash\":\"{}\",\"external_id\":\"j2\",\"colour\":\"red\"}}\n\
         {{not json\n{{\"hash\":\"{}\",\"external_id\":\"j4\"}}\n",
        hash_of("mk_json_one_00000000000"),
        hash_of("mk_json_two_00000000000"),
        hash_of("mk_json_four_0000000000"),
    );
    let file = source_file(&dir, "keys.jsonl", &jsonl);
    let run = ks.run(&["import", "--from-file", &file, "--batch-size", "1"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("line 2 (j2): unknown source column \"colour\""), "{}", run.stdout);
    assert!(run.stdout.contains("line 3: not a JSON object"), "{}", run.stdout);
    assert_eq!(ks.json(&["keys", "list"]).as_array().unwrap().len(), 4);

    // A header without a hash column is a usage error before anything is read.
    let file = source_file(&dir, "nohash.csv", "owner_id\no1\n");
    let error = ks.run(&["import", "--from-file", &file]).fails(2);
    assert!(error.contains("no hash column"), "{error}");
}

/// A quote left open in a CSV file is one refused row that names the lines
/// it took (the csv reader would read on to the end of the file as one
/// field); every line is accounted for and the rows before it are imported.
pub(crate) fn an_unterminated_quote_is_a_refused_row_naming_its_lines(ks: &Keysmith) {
    let dir = tempfile::tempdir().unwrap();
    let row = |n: u32| format!("{},o{n},e{n},x\n", hash_of(&format!("mk_quote_row_{n:010}")));
    let mut csv = "hash,owner_id,external_id,name\n".to_owned();
    (2..=10).for_each(|n| csv.push_str(&row(n)));
    csv.push_str("mk_not_a_hash,\"unterminated,o11,x\n");
    (12..=14).for_each(|n| csv.push_str(&row(n)));
    let file = source_file(&dir, "keys.csv", &csv);
    let (code, report) = report_of(ks, &["import", "--from-file", &file, "--batch-size", "3"]);
    assert_eq!(code, 1, "{report}");
    let refused = report["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{report}");
    assert_eq!(refused[0]["line"], 11, "{report}");
    let reason = refused[0]["reason"].as_str().unwrap();
    assert!(reason.contains("a quoted field runs across lines 11\u{2013}14"), "{reason}");
    assert!(reason.contains("those 4 lines are this one refused row"), "{reason}");
    // Lines 2–10 in batches of three: the one of line 11 is not written.
    assert_eq!((report["imported"].as_u64(), report["not_written"].as_u64()), (Some(9), Some(0)), "{report}");
    assert_eq!(ks.json(&["keys", "list"]).as_array().unwrap().len(), 9);

    // A quoted field that closes on a later line is refused the same way: no field holds a line break.
    let csv = format!(
        "hash,name\n{},\"two\nlines\"\n{},one line\n",
        hash_of("mk_quote_two_lines_0000"),
        hash_of("mk_quote_one_line_00000")
    );
    let file = source_file(&dir, "multiline.csv", &csv);
    let run = ks.run(&["import", "--from-file", &file]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("line 2: a quoted field runs across lines 2\u{2013}3"), "{}", run.stdout);
    assert!(run.stdout.contains("those 2 lines"), "{}", run.stdout);
}

/// A field or column named twice is refused, never read as its last value:
/// a JSON Lines line naming a field twice (at any depth) is a refused row;
/// a CSV header naming a column twice is a usage error before anything is written.
pub(crate) fn a_field_or_column_named_twice_is_refused(ks: &Keysmith) {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (hash_of("mk_twice_first_00000000"), hash_of("mk_twice_second_0000000"));
    let jsonl = format!(
        "{{\"hash\":\"{first}\",\"hash\":\"{second}\"}}\n\
         {{\"hash\":\"{first}\",\"external_id\":\"t1\",\"external_id\":\"t2\"}}\n\
         {{\"hash\":\"{first}\",\"HASH\":\"{second}\"}}\n\
         {{\"hash\":\"{first}\",\"name\":{{\"a\":1,\"a\":2}}}}\n\
         {{\"hash\":\"{}\",\"external_id\":\"t5\"}}\n",
        hash_of("mk_twice_fifth_00000000"),
    );
    let file = source_file(&dir, "keys.jsonl", &jsonl);
    let (code, report) = report_of(ks, &["import", "--from-file", &file, "--batch-size", "1"]);
    assert_eq!(code, 1, "{report}");
    let lines: Vec<_> = report["refused"].as_array().unwrap().iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [1, 2, 3, 4], "{report}");
    for refusal in report["refused"].as_array().unwrap() {
        let reason = refusal["reason"].as_str().unwrap();
        assert!(reason.contains("duplicate key") || reason.contains("twice"), "{reason}");
    }
    assert_eq!(report["imported"], 1, "{report}");
    assert_eq!(ks.json(&["keys", "list"]).as_array().unwrap().len(), 1);

    let file = source_file(&dir, "twice.csv", &format!("hash,external_id,hash\n{first},c1,{second}\n"));
    let error = ks.run(&["import", "--from-file", &file]).fails(2);
    assert!(error.contains("names the column \"hash\" twice"), "{error}");
    assert_eq!(ks.json(&["keys", "list"]).as_array().unwrap().len(), 1);
}

/// A query whose result names a column twice is a usage error before anything is read.
#[track_caller]
pub(crate) fn a_query_naming_a_column_twice_is_refused(ks: &Keysmith, source_url: &str, query: &str) {
    let error = ks.run(&["import", "--from-url", source_url, "--query", query]).fails(2);
    assert!(error.contains("names the column \"hash\" twice"), "{query}: {error}");
}
