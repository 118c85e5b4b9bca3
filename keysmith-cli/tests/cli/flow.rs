//! The operator's main flow, run on every backend: migrate, scopes,
//! policies, the key lifecycle, usage and sweep, each result checked through
//! the CLI's JSON and, for secrets, through the engine itself.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keysmith_core::{
    Engine, KeyId, ManualClock, NewKey, Refusal, RequestContext, Store, Tenant, UsageId, UsageRecord, ValidationError,
};
use serde_json::{Value, json};

use crate::harness::{APP, Keysmith, TENANT, str_of};

/// Everything an operator does, on the database behind `ks` and `store`
/// (already migrated through the CLI).
pub(crate) async fn operator_flow(ks: &Keysmith, store: Arc<dyn Store>) {
    let engine = Engine::builder(Arc::clone(&store)).build().unwrap();

    scopes(ks);
    let policy_id = policies(ks);
    let key_id = keys(ks, &engine, &policy_id).await;
    usage(ks, &engine, &key_id).await;
    sweep(ks, &engine).await;
    tenants_are_isolated(ks, &key_id, &policy_id);
    control_characters_are_refused(ks, &key_id);
    owners_and_credits(ks, &engine).await;
    owner_credits(ks, &engine).await;
    engine.shutdown().await;
}

/// `--owner` on create and list, a policy's per-owner key limit, and
/// `keys credits` setting, topping up and removing credits.
async fn owners_and_credits(ks: &Keysmith, engine: &Engine) {
    let policy = ks.json(&["policies", "create", "--name", "one-per-owner", "--max-keys-per-owner", "1"]);
    let policy_id = str_of(&policy, "id").to_owned();
    let created = ks.json(&["keys", "create", "--name", "o", "--owner", "cus_7", "--policy", &policy_id]);
    let owned_id = str_of(&created["key"], "id").to_owned();
    assert_eq!(created["key"]["owner_id"], "cus_7");
    let refused = ks.run(&["keys", "create", "--name", "o2", "--owner", "cus_7", "--policy", &policy_id]).fails(1);
    assert!(refused.contains("cus_7"), "{refused}");
    let listed = ks.json(&["keys", "list", "--owner", "cus_7"]);
    let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|k| str_of(k, "id")).collect();
    assert_eq!(ids, [owned_id.as_str()]);

    let metered =
        ks.json(&["keys", "create", "--name", "m", "--credits", "1", "--refill", "5", "--refill-every", "day"]);
    let (id, raw) = (str_of(&metered["key"], "id").to_owned(), str_of(&metered, "raw_key").to_owned());
    assert_eq!(metered["key"]["credits"]["refill"], json!({"amount": 5, "every": "day"}));
    validate(engine, &raw).await.expect("one credit");
    let refusal = validate(engine, &raw).await.unwrap_err();
    assert_eq!(refusal.refusal().map(keysmith_core::Refusal::code), Some("credits_exhausted"));
    let topped = ks.run(&["keys", "credits", &id, "--add", "2"]).ok();
    assert!(topped.contains("credits: 2 left, refilled to 5 every day"), "{topped}");
    // No flag: shown, unchanged.
    let shown = ks.run(&["keys", "credits", &id]).ok();
    assert_eq!(shown, format!("Key {id} credits: 2 left, refilled to 5 every day.\n"));
    assert_eq!(ks.json(&["keys", "credits", &id])["credits"]["remaining"], 2);
    ks.run(&["keys", "credits", &id, "--refill", "5", "--refill-every", "day"]).fails(2);
    validate(engine, &raw).await.expect("topped up");
    let set = ks.json(&["keys", "credits", &id, "--set", "9"]);
    assert_eq!(set["credits"]["remaining"], 9);
    let removed = ks.json(&["keys", "credits", &id, "--remove"]);
    assert_eq!(removed["credits"], Value::Null);
    assert_eq!(ks.json(&["keys", "credits", &id])["credits"], Value::Null);
    ks.run(&["keys", "credits", &id, "--add", "1"]).fails(1);
    ks.run(&["keys", "create", "--name", "x", "--refill", "5", "--refill-every", "day"]).fails(2);
}

/// `owners credits`: the credits every key of an owner spends under a
/// policy that limits by owner, shown, set, topped up and removed.
async fn owner_credits(ks: &Keysmith, engine: &Engine) {
    let policy = ks.json(&["policies", "create", "--name", "shared-credits", "--limit-by", "owner"]);
    let policy_id = str_of(&policy, "id").to_owned();
    let key = |name: &str| ks.json(&["keys", "create", "--name", name, "--owner", "cus_9", "--policy", &policy_id]);
    let (first, second) = (key("a"), key("b"));
    let (first_id, first) = (str_of(&first["key"], "id").to_owned(), str_of(&first, "raw_key").to_owned());
    let second = str_of(&second, "raw_key").to_owned();

    assert_eq!(ks.json(&["owners", "credits", "cus_9"]), json!({"owner_id": "cus_9", "credits": null}));
    let set = ks.json(&["owners", "credits", "cus_9", "--set", "1", "--refill", "5", "--refill-every", "month"]);
    assert_eq!(
        (set["credits"]["remaining"].as_u64(), set["credits"]["refill"]["every"].as_str()),
        (Some(1), Some("month"))
    );
    validate(engine, &first).await.expect("one credit");
    let refusal = validate(engine, &second).await.unwrap_err();
    assert_eq!(refusal.refusal().map(keysmith_core::Refusal::code), Some("credits_exhausted"), "one balance");
    let topped = ks.run(&["owners", "credits", "cus_9", "--add", "2"]).ok();
    assert!(topped.contains("credits: 2 left, refilled to 5 every month"), "{topped}");
    validate(engine, &second).await.expect("topped up");
    assert_eq!(ks.json(&["owners", "credits", "cus_9"])["credits"]["remaining"], 1);
    let own = ks.run(&["keys", "credits", &first_id, "--set", "3"]).fails(1);
    assert!(own.contains("set the owner's credits instead"), "{own}");
    // A policy does not start limiting by owner while an owner's key holds
    // credits of its own: the message names the key.
    let metered = ks.json(&["policies", "create", "--name", "metered-owners"]);
    let metered_id = str_of(&metered, "id").to_owned();
    let holder =
        ks.json(&["keys", "create", "--name", "h", "--owner", "cus_9", "--policy", &metered_id, "--credits", "1"]);
    let holder_id = str_of(&holder["key"], "id").to_owned();
    let switch = ["policies", "update", &metered_id, "--name", "metered-owners", "--limit-by", "owner"];
    let held = ks.run(&switch).fails(1);
    assert!(held.contains(&holder_id) && held.contains("cannot limit by owner"), "{held}");
    ks.json(&["keys", "credits", &holder_id, "--remove"]);
    assert_eq!(ks.json(&switch)["limit_by"], "owner");
    let removed = ks.json(&["owners", "credits", "cus_9", "--remove"]);
    assert_eq!(removed["credits"], Value::Null);
    assert!(validate(engine, &first).await.unwrap().credits.is_none(), "no credits, no credits limit");
    ks.run(&["owners", "credits", "cus_9", "--add", "1"]).fails(1);
    ks.run(&["owners", "credits", " cus_9", "--set", "1"]).fails(1);
    ks.run(&["owners", "credits", "cus_9", "--set", "1", "--add", "1"]).fails(2);
    ks.run(&["owners", "credits", "cus_9", "--refill", "5", "--refill-every", "day"]).fails(2);
}

/// NUL (through JSON escapes: a command line cannot hold one) and other
/// control characters are refused with exit 1 and a clear message, on every
/// database; nothing changes.
fn control_characters_are_refused(ks: &Keysmith, key_id: &str) {
    let nul = r#"{"note": {"list": ["a\u0000b"]}}"#;
    let before = ks.json(&["keys", "show", key_id]);
    let runs = [
        (ks.run(&["keys", "create", "--name", "esc\u{1b}[2J"]), "name"),
        (ks.run(&["keys", "create", "--name", "k", "--metadata", nul]), "metadata"),
        (ks.run(&["policies", "create", "--name", "bell\u{7}"]), "name"),
        (ks.run(&["policies", "create", "--name", "p", "--metadata", nul]), "metadata"),
        (ks.run(&["scopes", "create", "--name", "ok", "--description", "del\u{7f}"]), "description"),
        (ks.run(&["keys", "revoke", key_id, "--reason", "tab\there"]), "reason"),
    ];
    for (run, field) in runs {
        let error = run.fails(1);
        assert!(error.contains(&format!("invalid {field}")) && error.contains("control character"), "{error}");
        assert!(!error.contains('\u{1b}') && !error.contains('\u{7}'), "the message echoes no control character");
    }
    assert_eq!(ks.json(&["keys", "show", key_id]), before);
    assert!(ks.json(&["scopes", "list"]).as_array().unwrap().iter().all(|s| s["name"] != "ok"));
}

fn scopes(ks: &Keysmith) {
    let read = ks.json(&["scopes", "create", "--name", "read", "--description", "Read everything"]);
    assert_eq!(read["name"], "read");
    assert_eq!(read["description"], "Read everything");
    assert!(str_of(&read, "id").starts_with("kscp_"));
    ks.json(&["scopes", "create", "--name", "write:orders"]);
    let taken = ks.run(&["scopes", "create", "--name", "read"]).fails(1);
    assert!(taken.contains("already exists"), "{taken}");

    let list = ks.json(&["scopes", "list"]);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|s| str_of(s, "name")).collect();
    assert_eq!(names, ["read", "write:orders"]);
    let human = ks.run(&["scopes", "list"]).ok();
    assert!(human.starts_with("ID ") && human.contains("Read everything"), "{human}");

    let temp = ks.json(&["scopes", "create", "--name", "temp"]);
    let temp_id = str_of(&temp, "id");
    assert_eq!(ks.json(&["scopes", "delete", temp_id])["deleted"], temp_id);
    ks.run(&["scopes", "delete", temp_id]).fails(1);
    assert_eq!(ks.json(&["scopes", "list"]).as_array().unwrap().len(), 2);
}

/// Returns the id of the policy `partners`.
fn policies(ks: &Keysmith) -> String {
    let created = ks.json(&[
        "policies",
        "create",
        "--name",
        "partners",
        "--rate-limit",
        "100/60s",
        "--burst",
        "20",
        "--limit",
        "hourly=1000/h,1200",
        "--limit-by",
        "owner",
        "--allow-ip",
        "10.0.0.0/8",
        "--allow-ip",
        "192.0.2.7",
        "--allow-origin",
        "https://App.example.com/",
        "--allow-scope",
        "read",
        "--max-key-age",
        "90d",
        "--daily-quota",
        "1000",
        "--monthly-quota",
        "20000",
        "--rotation-grace",
        "1h",
        "--metadata",
        r#"{"tier":"gold"}"#,
    ]);
    let id = str_of(&created, "id").to_owned();
    assert!(id.starts_with("kpol_"));
    assert_eq!(
        created["rate_limits"],
        json!([
            { "name": "default", "requests": 100, "window": 60, "burst": 20 },
            { "name": "hourly", "requests": 1000, "window": 3600, "burst": 1200 }
        ])
    );
    assert_eq!(created["limit_by"], "owner");
    assert_eq!(created["allowed_ips"], json!(["10.0.0.0/8", "192.0.2.7/32"]));
    assert_eq!(created["allowed_origins"], json!(["https://app.example.com"]));
    assert_eq!(created["allowed_scopes"], json!(["read"]));
    assert_eq!(created["max_key_age"], 90 * 86_400);
    assert_eq!(created["quota"], json!({ "daily": 1000, "monthly": 20000 }));
    assert_eq!(created["rotation_grace"], 3600);
    assert_eq!(created["metadata"], json!({ "tier": "gold" }));

    let shown = ks.json(&["policies", "show", &id]);
    assert_eq!(same_times(&shown), same_times(&created));
    let human = ks.run(&["policies", "show", &id]).ok();
    assert!(
        human.contains("default 100/1m (burst 20), hourly 1000/1h (burst 1200)") && human.contains("90d"),
        "{human}"
    );
    let twice = ks.run(&["policies", "create", "--name", "twice", "--limit", "a=1/s", "--limit", "a=2/s"]).fails(1);
    assert!(twice.contains("names two limits"), "{twice}");
    ks.run(&["policies", "create", "--name", "bad-limit", "--limit", "10/s"]).fails(2);
    ks.run(&["policies", "create", "--name", "bad-by", "--limit-by", "tenant"]).fails(2);

    let bad_cidr = ks.run(&["policies", "create", "--name", "bad", "--allow-ip", "10.0.0.0/33"]).fails(1);
    assert!(bad_cidr.contains("allowed_ips"), "{bad_cidr}");
    ks.run(&["policies", "create", "--name", "partners"]).fails(1);

    // An update replaces the whole spec: what is not given is cleared.
    let updated =
        ks.json(&["policies", "update", &id, "--name", "partners", "--allow-scope", "read", "--daily-quota", "1000"]);
    assert_eq!(updated["id"], id.as_str());
    assert_eq!(updated["rate_limits"], json!([]));
    assert_eq!(updated["limit_by"], "key");
    assert_eq!(updated["allowed_ips"], json!([]));
    assert_eq!(updated["quota"], json!({ "daily": 1000, "monthly": null }));
    assert_eq!(updated["max_key_age"], Value::Null);
    assert_eq!(same_times(&updated)["created_at"], same_times(&created)["created_at"]);

    let spare = ks.json(&["policies", "create", "--name", "spare"]);
    let spare_id = str_of(&spare, "id");
    let list = ks.json(&["policies", "list"]);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|p| str_of(p, "name")).collect();
    assert_eq!(names, ["partners", "spare"]);
    assert_eq!(ks.json(&["policies", "list", "--limit", "1", "--offset", "1"])[0]["name"], "spare");
    assert!(ks.run(&["policies", "list"]).ok().contains("spare"));
    assert_eq!(ks.json(&["policies", "delete", spare_id])["deleted"], spare_id);
    ks.run(&["policies", "show", spare_id]).fails(1);
    id
}

/// Returns the id of an active key under the policy.
async fn keys(ks: &Keysmith, engine: &Engine, policy_id: &str) -> String {
    // JSON: the secret is the `raw_key` field, printed once.
    let run = ks.run(&[
        "--json",
        "keys",
        "create",
        "--name",
        "ci",
        "--scope",
        "read:users",
        "--policy",
        policy_id,
        "--expires-in",
        "30d",
        "--metadata",
        r#"{"team":"infra"}"#,
    ]);
    let stdout = run.ok();
    let created: Value = serde_json::from_str(&stdout).unwrap();
    let raw = str_of(&created, "raw_key").to_owned();
    let id = str_of(&created["key"], "id").to_owned();
    assert_eq!(stdout.matches(&raw).count(), 1, "the raw key must be printed exactly once");
    assert_eq!(created["key"]["policy_id"], policy_id);
    assert_eq!(created["key"]["scopes"], json!(["read:users"]));
    assert_eq!(created["key"]["metadata"], json!({ "team": "infra" }));
    assert_eq!(created["key"]["tenant"], json!({ "app_id": APP, "tenant_id": TENANT }));
    let expires = chrono::DateTime::parse_from_rfc3339(str_of(&created["key"], "expires_at")).unwrap();
    let in_days = (expires.with_timezone(&Utc) - Utc::now()).num_hours();
    assert!((29 * 24..=30 * 24).contains(&in_days), "{in_days}");
    assert!(created["key"].get("hash").is_none());
    let validation = validate(engine, &raw).await.expect("the printed key validates");
    assert_eq!(validation.key.id.to_string(), id);

    // Human: one labelled line carries the secret.
    let stdout = ks
        .run(&["keys", "create", "--name", "deploy", "--environment", "test", "--prefix", "ops", "--scope", "*"])
        .ok();
    let labelled: Vec<&str> = stdout.lines().filter(|l| l.starts_with("raw key (shown once")).collect();
    assert_eq!(labelled.len(), 1, "{stdout}");
    let human_raw = labelled[0].rsplit(' ').next().unwrap();
    assert!(human_raw.starts_with("ops_test_"), "{human_raw}");
    assert_eq!(stdout.matches(human_raw).count(), 1);
    let deploy = validate(engine, human_raw).await.expect("the printed key validates");
    assert_eq!(deploy.key.environment.as_str(), "test");

    // Refused creations.
    let outside = ks.run(&["keys", "create", "--name", "x", "--policy", policy_id, "--scope", "write"]).fails(1);
    assert!(outside.contains("not allowed by policy"), "{outside}");
    ks.run(&["keys", "create", "--name", "x", "--expires-at", "2001-01-01T00:00:00Z"]).fails(1);
    ks.run(&["keys", "create", "--name", "x", "--prefix", "BAD"]).fails(1);

    // Listing, filtering, showing: never a secret.
    let all = ks.json(&["keys", "list"]);
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(ks.json(&["keys", "list", "--policy", policy_id]).as_array().unwrap().len(), 1);
    assert_eq!(ks.json(&["keys", "list", "--environment", "test"])[0]["name"], "deploy");
    assert_eq!(ks.json(&["keys", "list", "--limit", "1", "--offset", "1"])[0]["name"], "deploy");
    assert_eq!(ks.json(&["keys", "list", "--state", "revoked"]), json!([]));
    // `last_used_at` is written in the background after the validation above.
    let mut shown = ks.json(&["keys", "show", &id]);
    shown["last_used_at"] = Value::Null;
    assert_eq!(same_times(&shown), same_times(&created["key"]));
    for listing in [ks.run(&["keys", "list"]).ok(), ks.run(&["keys", "show", &id]).ok(), all.to_string()] {
        assert!(!listing.contains(&raw) && !listing.contains(human_raw), "a listing shows a secret");
    }

    // Suspend and reactivate.
    assert_eq!(ks.json(&["keys", "suspend", &id])["state"], "suspended");
    assert!(matches!(validate(engine, &raw).await, Err(ValidationError::Refused(Refusal::Suspended))));
    let again = ks.run(&["keys", "suspend", &id]).fails(1);
    assert!(again.contains("suspended"), "{again}");
    assert_eq!(ks.run(&["keys", "reactivate", &id]).ok(), format!("Key {id} is now active.\n"));
    ks.run(&["keys", "reactivate", &id]).fails(1);
    validate(engine, &raw).await.expect("reactivated");

    // Rotate with a grace: both secrets work; the new one is printed once.
    let stdout = ks.run(&["--json", "keys", "rotate", &id, "--reason", "scheduled", "--grace", "1h"]).ok();
    let rotated: Value = serde_json::from_str(&stdout).unwrap();
    let new_raw = str_of(&rotated, "raw_key");
    let new_id = str_of(&rotated["key"], "id").to_owned();
    assert_eq!(stdout.matches(new_raw).count(), 1);
    assert_eq!(rotated["old_key"]["state"], "rotated");
    assert_eq!(rotated["rotation"]["key_id"], id.as_str());
    assert_eq!(rotated["rotation"]["new_key_id"], new_id.as_str());
    assert_eq!(rotated["rotation"]["reason"], "scheduled");
    assert_eq!(rotated["rotation"]["grace_ttl"], 3600);
    assert!(!stdout.contains("hash"), "{stdout}");
    assert_eq!(validate(engine, new_raw).await.unwrap().key.id.to_string(), new_id);
    assert_eq!(validate(engine, &raw).await.unwrap().key.id.to_string(), id, "the old key is in its grace");
    ks.run(&["keys", "rotate", &id]).fails(1);

    // Rotate the human way, grace 0: the old secret stops at once.
    let stdout = ks.run(&["keys", "rotate", &new_id, "--reason", "compromised", "--grace", "0"]).ok();
    let line = stdout.lines().find(|l| l.starts_with("raw key (shown once")).expect(&stdout);
    let newest_raw = line.rsplit(' ').next().unwrap();
    assert!(stdout.contains(&format!("replaces             {new_id}")), "{stdout}");
    assert!(matches!(validate(engine, new_raw).await, Err(ValidationError::Refused(Refusal::Revoked))));
    let newest_id = validate(engine, newest_raw).await.unwrap().key.id.to_string();

    // Revoke: permanent.
    let revoked = ks.json(&["keys", "revoke", &id, "--reason", "leaked in a log"]);
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["revoked_reason"], "leaked in a log");
    assert!(matches!(validate(engine, &raw).await, Err(ValidationError::Refused(Refusal::Revoked))));
    ks.run(&["keys", "revoke", &id]).fails(1);
    ks.run(&["keys", "reactivate", &id]).fails(1);
    assert_eq!(ks.json(&["keys", "list", "--state", "revoked"]).as_array().unwrap().len(), 1);

    // A policy with live keys cannot go.
    let in_use = ks.run(&["policies", "delete", policy_id]).fails(1);
    assert!(in_use.contains("used by"), "{in_use}");

    ks.run(&["keys", "show", &KeyId::new().to_string()]).fails(1);
    newest_id
}

async fn usage(ks: &Keysmith, engine: &Engine, key_id: &str) {
    let key: KeyId = key_id.parse().unwrap();
    for status in [200, 200, 404] {
        engine.record_usage(UsageRecord {
            id: UsageId::new(),
            key_id: key,
            tenant: Tenant::new(APP, TENANT).into(),
            endpoint: "/v1/orders".into(),
            method: "GET".into(),
            status,
            ip: Some("10.1.2.3".parse::<IpAddr>().unwrap()),
            user_agent: Some("curl/8".into()),
            latency: Duration::from_millis(12),
            timestamp: Utc::now(),
        });
    }
    engine.flush_usage().await;

    let days = ks.json(&["usage", key_id]);
    assert_eq!(days.as_array().unwrap().len(), 1, "{days}");
    assert_eq!(days[0]["period"], "day");
    assert_eq!(days[0]["requests"], 3);
    assert_eq!(days[0]["errors"], 1);
    let months = ks.json(&["usage", key_id, "--period", "month"]);
    assert_eq!(months[0]["period"], "month");
    assert_eq!(months[0]["requests"], 3);
    assert_eq!(ks.json(&["usage", key_id, "--from", "2100-01-01"]), json!([]));
    assert_eq!(ks.json(&["usage", key_id, "--to", "2000-01-01T00:00:00Z"]), json!([]));
    let human = ks.run(&["usage", key_id]).ok();
    let total: Vec<&str> = human.lines().find(|l| l.starts_with("total")).unwrap().split_whitespace().collect();
    assert_eq!(total, ["total", "3", "1", "0", "-"], "requests, errors, refused, by reason: {human}");

    let records = ks.json(&["usage", key_id, "--records"]);
    assert_eq!(records.as_array().unwrap().len(), 3);
    assert_eq!(records[0]["endpoint"], "/v1/orders");
    let page = ks.json(&["usage", key_id, "--records", "--limit", "1", "--offset", "2"]);
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["status"], 404);
    assert!(ks.run(&["usage", key_id, "--records"]).ok().contains("curl/8"));

    ks.run(&["usage", &KeyId::new().to_string()]).fails(1);
}

async fn sweep(ks: &Keysmith, engine: &Engine) {
    // A key made two days ago that expired yesterday, and a rotation whose
    // grace ended at once: the sweep settles both.
    let now = Utc::now();
    let past = Engine::builder(Arc::clone(engine.store()))
        .with_clock(ManualClock::new(now - chrono::Days::new(2)))
        .build()
        .unwrap();
    let old = past
        .tenant(APP, TENANT)
        .create_key(NewKey::new("old").with_expires_at(now - chrono::Days::new(1)))
        .await
        .unwrap();
    let doomed = ks.json(&["keys", "create", "--name", "doomed"]);
    let doomed_id = str_of(&doomed["key"], "id");
    ks.json(&["keys", "rotate", doomed_id, "--grace", "0"]);

    // Every rotated key left (this one and the compromised rotation of the
    // key flow) was rotated with grace 0.
    let rotated = ks.json(&["keys", "list", "--state", "rotated"]);
    let rotated = rotated.as_array().unwrap().len();
    assert_eq!(rotated, 2);

    // A usage record three days old: past a retention of two days.
    let three_days_ago = now - chrono::Days::new(3);
    engine.record_usage(UsageRecord {
        id: UsageId::at(three_days_ago),
        key_id: old.key.id,
        tenant: old.key.tenant.clone().into(),
        endpoint: "/v1/old".into(),
        method: "GET".into(),
        status: 200,
        ip: None,
        user_agent: None,
        latency: Duration::from_millis(1),
        timestamp: three_days_ago,
    });
    engine.flush_usage().await;

    let swept = ks.json(&["sweep", "--usage-retention", "2"]);
    let expected = json!({
        "expired": 1,
        "rotations_ended": rotated,
        "usage_records_deleted": 1,
        "hourly_rollups_deleted": 0,
    });
    assert_eq!(swept, expected, "hourly roll-ups are kept 30 days");
    assert_eq!(ks.json(&["keys", "show", &old.key.id.to_string()])["state"], "expired");
    assert_eq!(ks.json(&["keys", "show", doomed_id])["state"], "revoked");
    assert_eq!(ks.json(&["keys", "list", "--state", "rotated"]), json!([]));
    let again = ks.run(&["sweep"]).ok();
    assert_eq!(
        again,
        "keys expired             0\nrotations ended          0\nusage records deleted    0\nhourly roll-ups deleted  0\n"
    );
}

fn tenants_are_isolated(ks: &Keysmith, key_id: &str, policy_id: &str) {
    let other = ks.for_tenant("globex");
    assert_eq!(other.json(&["keys", "list"]), json!([]));
    assert_eq!(other.json(&["policies", "list"]), json!([]));
    assert_eq!(other.json(&["scopes", "list"]), json!([]));
    other.run(&["keys", "show", key_id]).fails(1);
    other.run(&["keys", "revoke", key_id]).fails(1);
    other.run(&["policies", "show", policy_id]).fails(1);
    other.run(&["usage", key_id]).fails(1);
    assert_eq!(ks.json(&["keys", "show", key_id])["state"], "active");
}

async fn validate(engine: &Engine, raw: &str) -> Result<keysmith_core::Validation, ValidationError> {
    engine.validate(raw, &RequestContext::new()).await
}

/// `value` with its `…_at` times cut to the microsecond: what a create
/// returns carries the engine clock's full precision, what a store returns
/// carries the store's.
fn same_times(value: &Value) -> Value {
    let mut value = value.clone();
    if let Some(object) = value.as_object_mut() {
        for (field, time) in object.iter_mut().filter(|(field, _)| field.ends_with("_at")) {
            if let Some(text) = time.as_str() {
                let at = chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{field}: {e}"));
                *time = json!(at.timestamp_micros());
            }
        }
    }
    value
}
