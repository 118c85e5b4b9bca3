//! The admin API's routes end to end: success paths, error paths, tenant
//! isolation, authentication and JSON errors.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use keysmith_admin::AdminConfig;
use keysmith_core::{
    KeyId, NewKey, PolicyId, PolicySpec, Refusal, RequestContext, ScopeId, UsageId, UsageRecord, Validation,
    ValidationError,
};
use keysmith_tower::ApiKeyLayer;
use serde_json::{Value, json};
use support::{APP, MOUNT, TENANT, admin_key, harness, harness_with, start, with_config};

async fn validates(h: &support::Harness, raw: &str) -> Result<Validation, ValidationError> {
    h.engine.validate(raw, &RequestContext::new()).await
}

/// True if `value` has a field whose name contains `hash`, at any depth.
fn mentions_hash(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| k.contains("hash") || mentions_hash(v)),
        Value::Array(items) => items.iter().any(mentions_hash),
        _ => false,
    }
}

#[tokio::test]
async fn created_key_secret_is_returned_once_and_validates() {
    let h = harness().await;
    let expires = (start() + chrono::Duration::days(30)).to_rfc3339();
    let reply = h
        .post(
            "/keys",
            json!({
                "name": "CI deploy", "scopes": ["read:users"], "environment": "test",
                "prefix": "ci", "expires_at": expires, "metadata": {"team": "platform"}
            }),
        )
        .await;
    let body = reply.ok(201).clone();
    let raw = body["raw_key"].as_str().unwrap().to_owned();
    assert!(raw.starts_with("ci_test_"), "{raw}");
    let key = &body["key"];
    assert!(key["id"].as_str().unwrap().starts_with("akey_"));
    assert_eq!(key["name"], "CI deploy");
    assert_eq!(key["environment"], "test");
    assert_eq!(key["state"], "active");
    assert_eq!(key["scopes"], json!(["read:users"]));
    assert_eq!(key["metadata"], json!({"team": "platform"}));
    assert_eq!(key["hint"], json!(format!("ci_test_…{}", &raw[raw.len() - 4..])));
    assert!(!mentions_hash(&body), "{body}");

    // The secret works, for this tenant's key.
    let validation = validates(&h, &raw).await.unwrap();
    assert_eq!(validation.key.id.to_string(), key["id"].as_str().unwrap());
    assert_eq!(validation.key.tenant.tenant_id, TENANT);

    // …and is never shown again.
    let id = key["id"].as_str().unwrap();
    for reply in [h.get(&format!("/keys/{id}")).await, h.get("/keys").await] {
        assert_eq!(reply.status, 200);
        assert!(!reply.text.contains(&raw), "{}", reply.text);
        assert!(!reply.text.contains("raw_key"), "{}", reply.text);
        assert!(!mentions_hash(&reply.body), "{}", reply.text);
    }
    let shown = h.get(&format!("/keys/{id}")).await;
    assert_eq!(shown.ok(200)["name"], "CI deploy");
}

#[tokio::test]
async fn create_key_checks_its_input() {
    let h = harness().await;
    h.post("/keys", json!({"name": " "})).await.assert_error(400, "invalid_input");
    h.post("/keys", json!({"name": "k", "scopes": ["read users"]})).await.assert_error(400, "invalid_input");
    h.post("/keys", json!({"name": "k", "prefix": "Not-OK"})).await.assert_error(400, "invalid_input");
    let past = (start() - chrono::Duration::days(1)).to_rfc3339();
    h.post("/keys", json!({"name": "k", "expires_at": past})).await.assert_error(400, "invalid_input");
    let scope_id = ScopeId::new().to_string();
    h.post("/keys", json!({"name": "k", "policy_id": scope_id})).await.assert_error(400, "invalid_id");
    let unknown_policy = PolicyId::new().to_string();
    h.post("/keys", json!({"name": "k", "policy_id": unknown_policy})).await.assert_error(404, "not_found");
    h.post("/keys", json!({"name": "k", "environment": "prod"})).await.assert_error(422, "invalid_body");
    h.post("/keys", json!({"scopes": []})).await.assert_error(422, "invalid_body");
}

#[tokio::test]
async fn key_lifecycle_through_the_api() {
    let h = harness().await;
    let (id, raw) = h.create_key(json!({"name": "svc", "scopes": ["read"]})).await;

    let suspended = h.post_empty(&format!("/keys/{id}/suspend")).await;
    assert_eq!(suspended.ok(200)["state"], "suspended");
    assert!(validates(&h, &raw).await.is_err());
    h.post_empty(&format!("/keys/{id}/suspend")).await.assert_error(409, "invalid_transition");
    h.post_empty(&format!("/keys/{id}/rotate")).await.assert_error(409, "invalid_transition");

    let reactivated = h.post_empty(&format!("/keys/{id}/reactivate")).await;
    assert_eq!(reactivated.ok(200)["state"], "active");
    assert!(validates(&h, &raw).await.is_ok());
    h.post_empty(&format!("/keys/{id}/reactivate")).await.assert_error(409, "invalid_transition");

    // Rotation with no grace: the old secret stops at once, the new one works.
    let rotated = h.post(&format!("/keys/{id}/rotate"), json!({"reason": "compromised", "grace_seconds": 0})).await;
    let body = rotated.ok(201).clone();
    let new_id = body["key"]["id"].as_str().unwrap().to_owned();
    let new_raw = body["raw_key"].as_str().unwrap().to_owned();
    assert_ne!(new_id, id);
    assert_eq!(body["key"]["scopes"], json!(["read"]));
    assert_eq!(body["old_key"]["id"], json!(id));
    assert_eq!(body["old_key"]["state"], "rotated");
    assert_eq!(body["rotation"]["reason"], "compromised");
    assert_eq!(body["rotation"]["grace_seconds"], 0);
    assert_eq!(body["rotation"]["key_id"], json!(id));
    assert_eq!(body["rotation"]["new_key_id"], json!(new_id));
    assert!(!mentions_hash(&body), "{body}");
    assert!(validates(&h, &raw).await.is_err());
    assert_eq!(validates(&h, &new_raw).await.unwrap().key.id.to_string(), new_id);
    h.post_empty(&format!("/keys/{id}/rotate")).await.assert_error(409, "invalid_transition");

    for key in [&id, &new_id] {
        let rotations = h.get(&format!("/keys/{key}/rotations")).await;
        let items = rotations.ok(200)["items"].as_array().unwrap().clone();
        assert_eq!(items.len(), 1, "{key}");
        assert_eq!(items[0]["id"], body["rotation"]["id"]);
        assert!(!mentions_hash(&rotations.body));
    }

    let revoked = h.post(&format!("/keys/{new_id}/revoke"), json!({"reason": "leaked"})).await;
    let revoked = revoked.ok(200);
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["revoked_reason"], "leaked");
    assert!(validates(&h, &new_raw).await.is_err());
    h.post_empty(&format!("/keys/{new_id}/revoke")).await.assert_error(409, "invalid_transition");
    h.post_empty(&format!("/keys/{new_id}/reactivate")).await.assert_error(409, "invalid_transition");
}

#[tokio::test]
async fn rotate_and_revoke_need_no_body() {
    let h = harness().await;
    let (id, raw) = h.create_key(json!({"name": "svc"})).await;
    let rotated = h.post_empty(&format!("/keys/{id}/rotate")).await;
    let body = rotated.ok(201);
    assert_eq!(body["rotation"]["reason"], "manual");
    assert_eq!(body["rotation"]["grace_seconds"], 24 * 60 * 60);
    // Within the default grace both secrets validate.
    assert!(validates(&h, &raw).await.is_ok());
    assert!(validates(&h, body["raw_key"].as_str().unwrap()).await.is_ok());

    let revoked = h.post_empty(&format!("/keys/{id}/revoke")).await;
    assert_eq!(revoked.ok(200)["state"], "revoked");
    assert_eq!(revoked.body["revoked_reason"], "revoked through the admin API");

    // An empty JSON object, or null, is the same as no body.
    let (other, _) = h.create_key(json!({"name": "other"})).await;
    let rotated = h.post(&format!("/keys/{other}/rotate"), json!({})).await;
    assert_eq!(rotated.ok(201)["rotation"]["reason"], "manual");
    let (third, _) = h.create_key(json!({"name": "third"})).await;
    let rotated = h.post(&format!("/keys/{third}/rotate"), Value::Null).await;
    assert_eq!(rotated.ok(201)["rotation"]["reason"], "manual");
    let revoked = h.post(&format!("/keys/{third}/revoke"), Value::Null).await;
    assert_eq!(revoked.ok(200)["revoked_reason"], "revoked through the admin API");
    h.post(&format!("/keys/{other}/rotate"), json!({"reason": "bored"})).await.assert_error(422, "invalid_body");
}

#[tokio::test]
async fn control_characters_are_invalid_input_and_change_nothing() {
    let h = harness().await;
    let (id, raw) = h.create_key(json!({"name": "kept"})).await;
    let policy = h.post("/policies", json!({"name": "kept"})).await.ok(201)["id"].as_str().unwrap().to_owned();
    for text in ["nul\u{0}", "esc\u{1b}[2J", "del\u{7f}", "line\nbreak"] {
        let refusals = [
            h.post("/keys", json!({"name": text})).await,
            h.post("/keys", json!({"name": "k", "metadata": {"note": {"list": [text]}}})).await,
            h.post("/keys", json!({"name": "k", "metadata": {text: 1}})).await,
            h.post("/policies", json!({"name": text})).await,
            h.post("/policies", json!({"name": "p", "metadata": {"note": text}})).await,
            h.put(&format!("/policies/{policy}"), json!({"name": text})).await,
            h.post("/scopes", json!({"name": "read", "description": text})).await,
            h.post("/scopes", json!({"name": text})).await,
            h.post(&format!("/keys/{id}/revoke"), json!({"reason": text})).await,
        ];
        for reply in &refusals {
            reply.assert_error(400, "invalid_input");
        }
        assert!(refusals[0].body["error"]["message"].as_str().unwrap().contains("control character"));
    }
    assert_eq!(h.get("/keys").await.ok(200)["items"].as_array().unwrap().len(), 2);
    assert_eq!(h.get(&format!("/policies/{policy}")).await.ok(200)["name"], "kept");
    assert_eq!(h.get("/scopes").await.ok(200)["items"], json!([]));
    assert!(validates(&h, &raw).await.is_ok(), "the key was not revoked");
}

#[tokio::test]
async fn list_keys_filters_and_pages() {
    let h = harness().await;
    let policy = h.post("/policies", json!({"name": "p"})).await.ok(201)["id"].as_str().unwrap().to_owned();
    let (a, _) = h.create_key(json!({"name": "a", "environment": "test"})).await;
    let (b, _) = h.create_key(json!({"name": "b", "policy_id": policy})).await;
    let (c, _) = h.create_key(json!({"name": "c"})).await;
    h.post_empty(&format!("/keys/{c}/suspend")).await.ok(200);

    let ids = |reply: &support::Reply| -> Vec<String> {
        reply.ok(200)["items"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap().to_owned()).collect()
    };
    // The admin key itself is one of the tenant's keys, created first.
    let all = h.get("/keys").await;
    assert_eq!(ids(&all).len(), 4);
    assert_eq!((all.body["limit"].as_u64(), all.body["offset"].as_u64()), (Some(100), Some(0)));
    assert_eq!(ids(&h.get("/keys?state=suspended").await), [c.as_str()]);
    assert_eq!(ids(&h.get("/keys?environment=test").await), [a.as_str()]);
    assert_eq!(ids(&h.get(&format!("/keys?policy_id={policy}")).await), [b.as_str()]);
    assert_eq!(ids(&h.get("/keys?state=active&environment=live").await).len(), 2);
    assert_eq!(ids(&h.get("/keys?limit=2&offset=1").await), [a, b]);

    h.get("/keys?state=gone").await.assert_error(400, "invalid_query");
    h.get("/keys?limit=0").await.assert_error(400, "invalid_query");
    h.get("/keys?limit=1001").await.assert_error(400, "invalid_query");
    h.get("/keys?limit=ten").await.assert_error(400, "invalid_query");
    h.get("/keys?colour=blue").await.assert_error(400, "invalid_query");
    h.get(&format!("/keys?policy_id={}", KeyId::new())).await.assert_error(400, "invalid_id");
}

#[tokio::test]
async fn set_key_scopes_replaces_them_within_the_policy() {
    let h = harness().await;
    let policy = h.post("/policies", json!({"name": "readers", "allowed_scopes": ["read"]})).await;
    let policy = policy.ok(201)["id"].as_str().unwrap().to_owned();
    let (id, raw) = h.create_key(json!({"name": "k", "scopes": ["read:a"], "policy_id": policy})).await;

    let updated = h.put(&format!("/keys/{id}/scopes"), json!({"scopes": ["read:b", "read:c"]})).await;
    assert_eq!(updated.ok(200)["scopes"], json!(["read:b", "read:c"]));
    assert!(validates(&h, &raw).await.unwrap().has_scope("read:c"));

    let refused = h.put(&format!("/keys/{id}/scopes"), json!({"scopes": ["write"]})).await;
    refused.assert_error(400, "invalid_input");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("write"), "{}", refused.text);
    h.put(&format!("/keys/{id}/scopes"), json!({"scopes": ["bad scope"]})).await.assert_error(400, "invalid_input");
    h.put(&format!("/keys/{id}/scopes"), json!({"scope": ["read"]})).await.assert_error(422, "invalid_body");
    h.put(&format!("/keys/{}/scopes", KeyId::new()), json!({"scopes": []})).await.assert_error(404, "not_found");

    let cleared = h.put(&format!("/keys/{id}/scopes"), json!({"scopes": []})).await;
    assert_eq!(cleared.ok(200)["scopes"], json!([]));
}

#[tokio::test]
async fn strict_scopes_refuse_unregistered_names() {
    let h = harness_with(keysmith_admin::router, true).await;
    let refused = h.post("/keys", json!({"name": "k", "scopes": ["read:users"]})).await;
    refused.assert_error(400, "invalid_input");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("read:users"), "{}", refused.text);

    h.post("/scopes", json!({"name": "read:users"})).await.ok(201);
    let (id, _) = h.create_key(json!({"name": "k", "scopes": ["read:users"]})).await;
    h.put(&format!("/keys/{id}/scopes"), json!({"scopes": ["write"]})).await.assert_error(400, "invalid_input");
}

#[tokio::test]
async fn usage_routes_return_records_and_rollups() {
    let h = harness().await;
    let (id, _) = h.create_key(json!({"name": "k"})).await;
    let key_id: KeyId = id.parse().unwrap();
    let day = chrono::Duration::days(1);
    let record = |at: chrono::DateTime<chrono::Utc>, status: u16| UsageRecord {
        id: UsageId::new(),
        key_id,
        tenant: keysmith_core::Tenant::new(APP, TENANT).into(),
        endpoint: "/users".into(),
        method: "GET".into(),
        status,
        ip: Some([192, 0, 2, 7].into()),
        user_agent: Some("curl/8".into()),
        latency: Duration::from_millis(12),
        timestamp: at,
    };
    for (at, status) in [(start(), 200), (start(), 500), (start() + day, 200), (start() + day * 40, 404)] {
        h.engine.record_usage(record(at, status));
    }
    h.engine.flush_usage().await;

    let usage = h.get(&format!("/keys/{id}/usage")).await;
    let items = usage.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 4);
    assert_eq!(items[0]["endpoint"], "/users");
    assert_eq!(items[0]["method"], "GET");
    assert_eq!(items[0]["ip"], "192.0.2.7");
    assert_eq!(items[0]["latency_ms"], 12);
    assert_eq!(items[0]["key_id"], json!(id));

    let from = (start() + day).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = (start() + day * 2).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ranged = h.get(&format!("/keys/{id}/usage?from={from}&to={to}")).await;
    assert_eq!(ranged.ok(200)["items"].as_array().unwrap().len(), 1);
    let paged = h.get(&format!("/keys/{id}/usage?limit=2&offset=3")).await;
    assert_eq!(paged.ok(200)["items"].as_array().unwrap().len(), 1);
    assert_eq!(paged.body["items"][0]["status"], 404);

    let daily = h.get(&format!("/keys/{id}/usage/aggregate")).await;
    let days = daily.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(days.len(), 3);
    assert_eq!(days[0]["period"], "day");
    assert_eq!(days[0]["period_start"], "2026-03-10T00:00:00Z");
    assert_eq!((days[0]["requests"].as_u64(), days[0]["errors"].as_u64()), (Some(2), Some(1)));
    let monthly = h.get(&format!("/keys/{id}/usage/aggregate?period=month")).await;
    let months = monthly.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(months.len(), 2);
    assert_eq!(months[0]["period_start"], "2026-03-01T00:00:00Z");
    assert_eq!(months[0]["requests"], 3);
    // Roll-ups are selected by the start of their period.
    let ranged = h.get(&format!("/keys/{id}/usage/aggregate?period=day&from={from}&to={to}")).await;
    assert_eq!(ranged.ok(200)["items"].as_array().unwrap().len(), 0);
    let whole_day = "from=2026-03-11T00:00:00Z&to=2026-03-12T00:00:00Z";
    let ranged = h.get(&format!("/keys/{id}/usage/aggregate?period=day&{whole_day}")).await;
    let items = ranged.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["period_start"], "2026-03-11T00:00:00Z");
    assert_eq!(ranged.body["key_id"], json!(id));

    assert_eq!(days[0]["status"], json!({"2xx": 1, "3xx": 0, "4xx": 0, "5xx": 1}));
    assert_eq!(days[0]["refused"]["rate_limited"], 0);

    // Hourly roll-ups, and refusals of the key counted by reason.
    let hourly = h.get(&format!("/keys/{id}/usage/aggregate?period=hour")).await;
    let hours = hourly.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(hours.len(), 3);
    assert_eq!(hours[0]["period"], "hour");
    assert_eq!(hours[0]["period_start"], "2026-03-10T12:00:00Z");
    let revoked = h.create_key(json!({"name": "revoked"})).await;
    h.post_empty(&format!("/keys/{}/revoke", revoked.0)).await.ok(200);
    for _ in 0..2 {
        assert!(h.engine.validate(&revoked.1, &keysmith_core::RequestContext::new()).await.is_err());
    }
    h.engine.flush_usage().await;
    let hourly = h.get(&format!("/keys/{}/usage/aggregate?period=hour", revoked.0)).await;
    let refused = &hourly.ok(200)["items"][0];
    assert_eq!((refused["requests"].as_u64(), refused["refused"]["key_revoked"].as_u64()), (Some(0), Some(2)));

    h.get(&format!("/keys/{id}/usage/aggregate?period=week")).await.assert_error(400, "invalid_query");
    h.get(&format!("/keys/{id}/usage?from={to}&to={from}")).await.assert_error(400, "invalid_query");
    h.get(&format!("/keys/{id}/usage?from=yesterday")).await.assert_error(400, "invalid_query");
    h.get(&format!("/keys/{}/usage", KeyId::new())).await.assert_error(404, "not_found");
    h.get(&format!("/keys/{}/usage/aggregate", KeyId::new())).await.assert_error(404, "not_found");
}

#[tokio::test]
async fn policy_routes_create_list_show_replace_delete() {
    let h = harness().await;
    let created = h
        .post(
            "/policies",
            json!({
                "name": "partners",
                "rate_limits": [
                    {"name": "burst", "requests": 100, "window": 60, "burst": 20},
                    {"name": "daily", "requests": 5000, "window": 86400}
                ],
                "limit_by": "owner",
                "allowed_ips": ["10.1.2.3/8", "192.0.2.7"],
                "allowed_origins": ["HTTPS://App.Example.com/"],
                "allowed_scopes": ["read"],
                "max_key_age": 7776000,
                "quota": {"daily": 1000},
                "rotation_grace": 3600,
                "metadata": {"tier": "gold"}
            }),
        )
        .await;
    let policy = created.ok(201).clone();
    let id = policy["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("kpol_"));
    assert_eq!(
        policy["rate_limits"],
        json!([
            {"name": "burst", "requests": 100, "window": 60, "burst": 20},
            {"name": "daily", "requests": 5000, "window": 86400, "burst": null}
        ])
    );
    assert_eq!(policy["limit_by"], "owner");
    assert_eq!(policy["allowed_ips"], json!(["10.0.0.0/8", "192.0.2.7/32"]));
    assert_eq!(policy["allowed_origins"], json!(["https://app.example.com"]));
    assert_eq!(policy["max_key_age"], 7_776_000);
    assert_eq!(policy["quota"], json!({"daily": 1000, "monthly": null}));
    assert_eq!(policy["rotation_grace"], 3600);
    assert_eq!(policy["metadata"], json!({"tier": "gold"}));

    h.post("/policies", json!({"name": "partners"})).await.assert_error(409, "already_exists");
    let bad_cidr = h.post("/policies", json!({"name": "x", "allowed_ips": ["10.0.0.0/33"]})).await;
    bad_cidr.assert_error(400, "invalid_input");
    assert!(bad_cidr.body["error"]["message"].as_str().unwrap().contains("allowed_ips"), "{}", bad_cidr.text);
    h.post("/policies", json!({"name": "x", "allowed_origins": ["example.com"]}))
        .await
        .assert_error(400, "invalid_input");
    h.post("/policies", json!({"name": "x", "rate_limits": [{"name": "a", "requests": 0, "window": 1}]}))
        .await
        .assert_error(400, "invalid_input");
    let twice = json!([{"name": "a", "requests": 1, "window": 1}, {"name": "a", "requests": 2, "window": 1}]);
    let duplicate = h.post("/policies", json!({"name": "x", "rate_limits": twice})).await;
    duplicate.assert_error(400, "invalid_input");
    assert!(duplicate.body["error"]["message"].as_str().unwrap().contains("names two limits"), "{}", duplicate.text);
    for name in ["Burst", "", "credits", "a b"] {
        let limit = json!([{"name": name, "requests": 1, "window": 1}]);
        h.post("/policies", json!({"name": "x", "rate_limits": limit})).await.assert_error(400, "invalid_input");
    }
    let many: Vec<Value> = (0..9).map(|i| json!({"name": format!("l{i}"), "requests": 1, "window": 1})).collect();
    h.post("/policies", json!({"name": "x", "rate_limits": many})).await.assert_error(400, "invalid_input");
    h.post("/policies", json!({"name": "x", "rate_limits": [{"requests": 1, "window": 1}]}))
        .await
        .assert_error(422, "invalid_body");
    h.post("/policies", json!({"name": "x", "limit_by": "tenant"})).await.assert_error(422, "invalid_body");
    h.post("/policies", json!({"name": "x", "allowed_ip": ["10.0.0.0/8"]})).await.assert_error(422, "invalid_body");

    let other = h.post("/policies", json!({"name": "internal"})).await.ok(201)["id"].as_str().unwrap().to_owned();
    let listed = h.get("/policies").await;
    let names: Vec<&str> =
        listed.ok(200)["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["partners", "internal"]);
    let page = h.get("/policies?limit=1&offset=1").await;
    assert_eq!(page.ok(200)["items"][0]["id"], json!(other));
    h.get("/policies?limit=0").await.assert_error(400, "invalid_query");

    assert_eq!(h.get(&format!("/policies/{id}")).await.ok(200)["name"], "partners");

    let replaced = h.put(&format!("/policies/{id}"), json!({"name": "partners-v2", "quota": {"monthly": 5}})).await;
    let replaced = replaced.ok(200);
    assert_eq!(replaced["name"], "partners-v2");
    assert_eq!(replaced["rate_limits"], json!([]));
    assert_eq!(replaced["limit_by"], "key");
    assert_eq!(replaced["allowed_ips"], json!([]));
    assert_eq!(replaced["quota"], json!({"daily": null, "monthly": 5}));
    assert_eq!(replaced["created_at"], policy["created_at"]);
    h.put(&format!("/policies/{id}"), json!({"name": "internal"})).await.assert_error(409, "already_exists");
    h.put(&format!("/policies/{id}"), json!({"name": "y", "allowed_ips": ["nope"]}))
        .await
        .assert_error(400, "invalid_input");
    h.put(&format!("/policies/{}", PolicyId::new()), json!({"name": "z"})).await.assert_error(404, "not_found");

    // In use by a live key: 409 until the key is revoked.
    let (key, _) = h.create_key(json!({"name": "k", "policy_id": id})).await;
    h.delete(&format!("/policies/{id}")).await.assert_error(409, "policy_in_use");
    h.post_empty(&format!("/keys/{key}/revoke")).await.ok(200);
    let deleted = h.delete(&format!("/policies/{id}")).await;
    assert_eq!(deleted.status, 204);
    assert!(deleted.text.is_empty());
    h.get(&format!("/policies/{id}")).await.assert_error(404, "not_found");
    h.delete(&format!("/policies/{id}")).await.assert_error(404, "not_found");
}

#[tokio::test]
async fn scope_routes_create_list_delete() {
    let h = harness().await;
    let created = h.post("/scopes", json!({"name": "write:users", "description": "Change users"})).await;
    let scope = created.ok(201).clone();
    assert!(scope["id"].as_str().unwrap().starts_with("kscp_"));
    assert_eq!(scope["description"], "Change users");
    h.post("/scopes", json!({"name": "read:users"})).await.ok(201);

    h.post("/scopes", json!({"name": "write:users"})).await.assert_error(409, "already_exists");
    h.post("/scopes", json!({"name": "read:"})).await.assert_error(400, "invalid_input");
    h.post("/scopes", json!({"name": "x", "description": "d".repeat(1025)})).await.assert_error(400, "invalid_input");
    h.post("/scopes", json!({"description": "no name"})).await.assert_error(422, "invalid_body");

    let listed = h.get("/scopes").await;
    let names: Vec<&str> =
        listed.ok(200)["items"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["read:users", "write:users"]);

    let id = scope["id"].as_str().unwrap();
    let deleted = h.delete(&format!("/scopes/{id}")).await;
    assert_eq!(deleted.status, 204);
    h.delete(&format!("/scopes/{id}")).await.assert_error(404, "not_found");
    assert_eq!(h.get("/scopes").await.ok(200)["items"].as_array().unwrap().len(), 1);
}

/// Every route that takes an id, with a method and a body that would
/// succeed for an id of the caller's own tenant.
fn id_routes(key: &str, policy: &str, scope: &str) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", format!("/keys/{key}"), None),
        ("POST", format!("/keys/{key}/rotate"), Some(json!({"grace_seconds": 0}))),
        ("POST", format!("/keys/{key}/revoke"), Some(json!({"reason": "x"}))),
        ("POST", format!("/keys/{key}/suspend"), None),
        ("POST", format!("/keys/{key}/reactivate"), None),
        ("PUT", format!("/keys/{key}/scopes"), Some(json!({"scopes": ["read"]}))),
        ("GET", format!("/keys/{key}/rotations"), None),
        ("GET", format!("/keys/{key}/usage"), None),
        ("GET", format!("/keys/{key}/usage/aggregate"), None),
        ("GET", format!("/policies/{policy}"), None),
        ("PUT", format!("/policies/{policy}"), Some(json!({"name": "renamed"}))),
        ("DELETE", format!("/policies/{policy}"), None),
        ("DELETE", format!("/scopes/{scope}"), None),
    ]
}

#[tokio::test]
async fn other_tenants_ids_are_404_on_every_id_route() {
    let h = harness().await;
    // Same tenant name in another app, and another tenant of the same app.
    for (app, tenant) in [(APP, "globex"), ("other-app", TENANT)] {
        let theirs = h.engine.tenant(app, tenant);
        let policy = theirs.create_policy(PolicySpec::new("theirs")).await.unwrap();
        let key = theirs.create_key(NewKey::new("theirs").with_scopes(["read"]).with_policy(policy.id)).await.unwrap();
        // Suspended, so that reactivate would succeed for its owner.
        let suspended = theirs.create_key(NewKey::new("paused")).await.unwrap();
        theirs.suspend_key(suspended.key.id).await.unwrap();
        let scope = theirs.create_scope("read", "").await.unwrap();

        let key_id = key.key.id.to_string();
        let mut routes = id_routes(&key_id, &policy.id.to_string(), &scope.id.to_string());
        routes.push(("POST", format!("/keys/{}/reactivate", suspended.key.id), None));
        for (method, path, body) in routes {
            let reply = h.send(method, &path, Some(&h.admin), body).await;
            reply.assert_error(404, "not_found");
            assert!(
                !reply.text.contains("globex") && !reply.text.contains("other-app"),
                "{method} {path}: {}",
                reply.text
            );
        }
        // Referencing their policy from a new key is 404 too.
        h.post("/keys", json!({"name": "k", "policy_id": policy.id})).await.assert_error(404, "not_found");

        // Nothing of theirs changed or shows up in our listings.
        let still = theirs.get_key(key.key.id).await.unwrap();
        assert_eq!((still.state, still.scopes.clone()), (keysmith_core::KeyState::Active, vec!["read".to_owned()]));
        assert_eq!(theirs.get_policy(policy.id).await.unwrap().name, "theirs");
        assert_eq!(theirs.list_scopes().await.unwrap().len(), 1);
        assert_eq!(theirs.get_key(suspended.key.id).await.unwrap().state, keysmith_core::KeyState::Suspended);
        for listing in ["/keys", "/policies", "/scopes"] {
            let reply = h.get(listing).await;
            assert!(!reply.text.contains("theirs") && !reply.text.contains(&key_id), "{listing}: {}", reply.text);
        }
    }

    // Their admin, symmetrically, cannot see ours.
    let (ours, _) = h.create_key(json!({"name": "ours"})).await;
    let their_admin = admin_key(&h.engine, APP, "globex").await;
    h.send("GET", &format!("/keys/{ours}"), Some(&their_admin), None).await.assert_error(404, "not_found");
    assert_eq!(h.send("GET", &format!("/keys/{ours}"), Some(&h.admin), None).await.status, 200);
}

#[tokio::test]
async fn well_formed_unknown_ids_are_404() {
    let h = harness().await;
    let routes = id_routes(&KeyId::new().to_string(), &PolicyId::new().to_string(), &ScopeId::new().to_string());
    for (method, path, body) in routes {
        h.send(method, &path, Some(&h.admin), body).await.assert_error(404, "not_found");
    }
}

#[tokio::test]
async fn ids_with_a_wrong_prefix_are_400() {
    let h = harness().await;
    let wrong_key = PolicyId::new().to_string();
    let wrong_policy = KeyId::new().to_string();
    let wrong_scope = KeyId::new().to_string();
    for (method, path, body) in id_routes(&wrong_key, &wrong_policy, &wrong_scope) {
        let reply = h.send(method, &path, Some(&h.admin), body).await;
        reply.assert_error(400, "invalid_id");
    }
    for garbage in ["akey_", "akey_zzzz", "not-an-id", "AKEY_01H455VB4PEX5VSKNK084SN02Q"] {
        h.get(&format!("/keys/{garbage}")).await.assert_error(400, "invalid_id");
    }
    let reply = h.get(&format!("/keys/{wrong_key}")).await;
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("akey"), "{}", reply.text);
}

#[tokio::test]
async fn bad_json_is_answered_in_json() {
    let h = harness().await;
    let send = |body: &'static str, content_type: Option<&'static str>| {
        let mut request = Request::post(format!("{MOUNT}/keys")).header("authorization", format!("Bearer {}", h.admin));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        h.raw(request.body(Body::from(body)).unwrap())
    };
    send("{\"name\": ", Some("application/json")).await.assert_error(400, "invalid_json");
    send("not json", Some("application/json")).await.assert_error(400, "invalid_json");
    send("{\"name\": 5}", Some("application/json")).await.assert_error(422, "invalid_body");
    send("{\"name\": \"k\", \"colour\": \"red\"}", Some("application/json")).await.assert_error(422, "invalid_body");
    send("[]", Some("application/json")).await.assert_error(422, "invalid_body");
    // Metadata naming a key twice is ambiguous (parsers disagree on which
    // value counts): refused, whatever its depth.
    for body in
        [r#"{"name": "k", "metadata": {"a": 1, "a": 2}}"#, r#"{"name": "k", "metadata": {"x": [{"b": 1, "b": 1}]}}"#]
    {
        let reply = send(body, Some("application/json")).await;
        reply.assert_error(422, "invalid_body");
        assert!(reply.text.contains("duplicate key"), "{}", reply.text);
    }
    let policy = Request::post(format!("{MOUNT}/policies"))
        .header("authorization", format!("Bearer {}", h.admin))
        .header("content-type", "application/json")
        .body(Body::from(r#"{"name": "p", "metadata": {"tier": "gold", "tier": "free"}}"#))
        .unwrap();
    h.raw(policy).await.assert_error(422, "invalid_body");
    assert_eq!(h.get("/policies").await.ok(200)["items"], json!([]));
    send("{\"name\": \"k\"}", Some("text/plain")).await.assert_error(415, "unsupported_media_type");
    // A secret pasted into the wrong field is not echoed back.
    let pasted = h.post("/keys", json!({"name": "k", "scopes": h.admin})).await;
    pasted.assert_error(422, "invalid_body");
    assert!(!pasted.text.contains(&h.admin) && pasted.text.contains("[REDACTED]"), "{}", pasted.text);
    let pasted = h.post("/policies", json!({"name": "p", "allowed_ips": [h.admin]})).await;
    pasted.assert_error(400, "invalid_input");
    assert!(!pasted.text.contains(&h.admin), "{}", pasted.text);
    send("{\"name\": \"k\"}", None).await.assert_error(415, "unsupported_media_type");
    // The optional bodies of rotate and revoke are checked once sent.
    let (id, _) = h.create_key(json!({"name": "k"})).await;
    let request = Request::post(format!("{MOUNT}/keys/{id}/revoke"))
        .header("authorization", format!("Bearer {}", h.admin))
        .header("content-type", "application/json")
        .body(Body::from("{oops"))
        .unwrap();
    h.raw(request).await.assert_error(400, "invalid_json");
    assert_eq!(h.get(&format!("/keys/{id}")).await.ok(200)["state"], "active");
    // A body sent without a Content-Type is refused, not ignored: a
    // compromised key's rotation without grace must not fall back to the
    // default grace, nor a revoke drop its reason.
    let unlabelled = |path: String, body: String| {
        let request = Request::post(format!("{MOUNT}{path}"))
            .header("authorization", format!("Bearer {}", h.admin))
            .body(Body::from(body))
            .unwrap();
        h.raw(request)
    };
    for body in ["{\"reason\": \"compromised\", \"grace_seconds\": 0}", "not json at all", "{}"] {
        unlabelled(format!("/keys/{id}/rotate"), body.to_owned()).await.assert_error(415, "unsupported_media_type");
        unlabelled(format!("/keys/{id}/revoke"), body.to_owned()).await.assert_error(415, "unsupported_media_type");
    }
    assert_eq!(h.get(&format!("/keys/{id}")).await.ok(200)["state"], "active");
    assert_eq!(h.get(&format!("/keys/{id}/rotations")).await.ok(200)["items"], json!([]));
    // Past the body limit it is 413, labelled or not.
    unlabelled(format!("/keys/{id}/revoke"), "x".repeat(1 << 20)).await.assert_error(413, "payload_too_large");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json() {
    let h = harness().await;
    h.get("/nope").await.assert_error(404, "route_not_found");
    h.get("/keys/akey_01h455vb4pex5vsknk084sn02q/nope").await.assert_error(404, "route_not_found");
    let reply = h.delete("/keys").await;
    reply.assert_error(405, "method_not_allowed");
    let allow = reply.headers["allow"].to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    h.send("PATCH", &format!("/policies/{}", PolicyId::new()), Some(&h.admin), None)
        .await
        .assert_error(405, "method_not_allowed");
    h.send("GET", &format!("/keys/{}/rotate", KeyId::new()), Some(&h.admin), None)
        .await
        .assert_error(405, "method_not_allowed");
}

/// One request per route, for the authentication tests.
fn every_route() -> Vec<(&'static str, String, Option<Value>)> {
    let mut routes = id_routes(&KeyId::new().to_string(), &PolicyId::new().to_string(), &ScopeId::new().to_string());
    routes.extend([
        ("POST", "/keys".to_owned(), Some(json!({"name": "k"}))),
        ("GET", "/keys".to_owned(), None),
        ("POST", "/policies".to_owned(), Some(json!({"name": "p"}))),
        ("GET", "/policies".to_owned(), None),
        ("POST", "/scopes".to_owned(), Some(json!({"name": "s"}))),
        ("GET", "/scopes".to_owned(), None),
        ("GET", "/openapi.json".to_owned(), None),
        ("GET", "/no-such-route".to_owned(), None),
        ("DELETE", "/keys".to_owned(), None),
    ]);
    routes
}

#[tokio::test]
async fn requests_without_a_key_are_401() {
    let h = harness().await;
    for (method, path, body) in every_route() {
        let reply = h.send(method, &path, None, body).await;
        reply.assert_error(401, "missing_key");
        assert_eq!(reply.headers["www-authenticate"], r#"Bearer realm="keysmith-admin""#, "{method} {path}");
    }
    let bad = h.send("GET", "/keys", Some("sk_live_not-a-key"), None).await;
    bad.assert_error(401, "malformed_key");
}

#[tokio::test]
async fn keys_without_the_admin_scope_are_403() {
    let h = harness().await;
    let reader = h.tenant().create_key(NewKey::new("reader").with_scopes(["read", "keysmith:read"])).await.unwrap();
    let reader = reader.raw.expose().to_owned();
    for (method, path, body) in every_route() {
        let reply = h.send(method, &path, Some(&reader), body).await;
        reply.assert_error(403, "insufficient_scope");
        let challenge = reply.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains(r#"scope="keysmith:admin""#), "{method} {path}: {challenge}");
    }
    // A revoked admin key is refused.
    let (id, raw) = h.create_key(json!({"name": "ops", "scopes": ["keysmith:admin"]})).await;
    assert_eq!(h.send("GET", "/scopes", Some(&raw), None).await.status, 200);
    h.post_empty(&format!("/keys/{id}/revoke")).await.ok(200);
    h.send("GET", "/scopes", Some(&raw), None).await.assert_error(401, "key_revoked");
}

#[tokio::test]
async fn keys_with_every_application_scope_are_not_admins() {
    let h = harness().await;
    // `*`, the bare root `keysmith`, and wide application scopes never
    // reach into the reserved `keysmith:` namespace.
    for scopes in [vec!["*"], vec!["keysmith"], vec!["*", "keysmith", "admin", "read"]] {
        let key = h.tenant().create_key(NewKey::new("wide").with_scopes(scopes.clone())).await.unwrap();
        for (method, path, body) in every_route() {
            let reply = h.send(method, &path, Some(key.raw.expose()), body).await;
            reply.assert_error(403, "insufficient_scope");
            assert!(reply.text.contains("keysmith:admin"), "{scopes:?} {method} {path}: {}", reply.text);
        }
    }
}

#[tokio::test]
async fn keys_naming_the_reserved_namespace_are_admins() {
    let h = harness().await;
    for scope in ["keysmith:*", "keysmith:admin"] {
        let key = h.tenant().create_key(NewKey::new("ops").with_scopes([scope])).await.unwrap();
        assert_eq!(h.send("GET", "/keys", Some(key.raw.expose()), None).await.status, 200, "{scope}");
        let created =
            h.send("POST", "/scopes", Some(key.raw.expose()), Some(json!({"name": format!("s{}", scope.len())})));
        assert_eq!(created.await.status, 201, "{scope}");
    }
    // A policy allowing `*` does not allow the reserved namespace either.
    let policy = h.post("/policies", json!({"name": "apps", "allowed_scopes": ["*"]})).await;
    let policy = policy.ok(201)["id"].as_str().unwrap().to_owned();
    h.post("/keys", json!({"name": "k", "policy_id": policy, "scopes": ["keysmith:admin"]}))
        .await
        .assert_error(400, "invalid_input");
    h.create_key(json!({"name": "k", "policy_id": policy, "scopes": ["read", "*"]})).await;
}

/// The id of the harness's own admin key.
async fn own_key_id(h: &support::Harness) -> String {
    validates(h, &h.admin).await.unwrap().key.id.to_string()
}

#[tokio::test]
async fn an_admin_key_cannot_lock_its_tenant_out() {
    let h = harness().await;
    let me = own_key_id(&h).await;
    let refusals = [
        h.post_empty(&format!("/keys/{me}/suspend")).await,
        h.post(&format!("/keys/{me}/revoke"), json!({"reason": "oops"})).await,
        h.post_empty(&format!("/keys/{me}/revoke")).await,
        h.post_empty(&format!("/keys/{me}/rotate")).await,
        h.post(&format!("/keys/{me}/rotate"), json!({"grace_seconds": 3600})).await,
        h.post(&format!("/keys/{me}/rotate"), json!({"reason": "compromised", "grace_seconds": 0})).await,
        h.put(&format!("/keys/{me}/scopes"), json!({"scopes": ["read"]})).await,
        h.put(&format!("/keys/{me}/scopes"), json!({"scopes": []})).await,
        h.put(&format!("/keys/{me}/scopes"), json!({"scopes": ["*", "keysmith"]})).await,
    ];
    for reply in &refusals {
        reply.assert_error(409, "self_lockout");
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("lock") && message.contains("tenant"), "{message}");
    }
    // Nothing changed: the key still works, active, with its scope, unrotated.
    let key = h.get(&format!("/keys/{me}")).await;
    assert_eq!(key.ok(200)["state"], "active");
    assert_eq!(key.body["scopes"], json!(["keysmith:admin"]));
    assert_eq!(h.get(&format!("/keys/{me}/rotations")).await.ok(200)["items"], json!([]));

    // Scope changes that keep the admin scope are fine.
    let kept = h.put(&format!("/keys/{me}/scopes"), json!({"scopes": ["read", "keysmith:admin"]})).await;
    assert_eq!(kept.ok(200)["scopes"], json!(["read", "keysmith:admin"]));
    let widened = h.put(&format!("/keys/{me}/scopes"), json!({"scopes": ["keysmith:*"]})).await;
    assert_eq!(widened.ok(200)["scopes"], json!(["keysmith:*"]));

    // The same operations on another admin key of the tenant are allowed.
    let (other, _) = h.create_key(json!({"name": "ops-2", "scopes": ["keysmith:admin"]})).await;
    h.put(&format!("/keys/{other}/scopes"), json!({"scopes": ["read"]})).await.ok(200);
    h.post_empty(&format!("/keys/{other}/suspend")).await.ok(200);
    h.post_empty(&format!("/keys/{other}/revoke")).await.ok(200);
    let (third, _) = h.create_key(json!({"name": "ops-3", "scopes": ["keysmith:admin"]})).await;
    h.post_empty(&format!("/keys/{third}/rotate")).await.ok(201);
}

#[tokio::test]
async fn an_admin_key_cannot_take_its_scope_away_through_its_policy() {
    let h = harness().await;
    let policy = h.post("/policies", json!({"name": "ops", "allowed_scopes": ["keysmith:admin", "read"]})).await;
    let policy = policy.ok(201)["id"].as_str().unwrap().to_owned();
    let created = h.post("/keys", json!({"name": "ops", "policy_id": policy, "scopes": ["keysmith:admin"]})).await;
    let raw = created.ok(201)["raw_key"].as_str().unwrap().to_owned();
    let path = format!("/policies/{policy}");
    let as_ops = |body: Value| h.send("PUT", &path, Some(&raw), Some(body));

    for allowed in [json!(["read"]), json!(["*"]), json!(["keysmith"])] {
        as_ops(json!({"name": "ops", "allowed_scopes": allowed})).await.assert_error(409, "self_lockout");
    }
    assert_eq!(
        h.get(&format!("/policies/{policy}")).await.ok(200)["allowed_scopes"],
        json!(["keysmith:admin", "read"])
    );
    // Keeping the admin scope, or allowing every scope, is fine.
    as_ops(json!({"name": "ops", "allowed_scopes": ["keysmith:*"]})).await.ok(200);
    as_ops(json!({"name": "ops"})).await.ok(200);
    // Another admin key (not under the policy) may narrow it.
    h.put(&format!("/policies/{policy}"), json!({"name": "ops", "allowed_scopes": ["read"]})).await.ok(200);
    h.send("GET", "/keys", Some(&raw), None).await.assert_error(403, "insufficient_scope");
}

#[tokio::test]
async fn an_admin_key_cannot_shut_itself_out_through_its_policys_addresses_or_age() {
    let h = harness().await;
    let policy = h.post("/policies", json!({"name": "ops"})).await.ok(201)["id"].as_str().unwrap().to_owned();
    let created = h.post("/keys", json!({"name": "ops", "policy_id": policy, "scopes": ["keysmith:admin"]})).await;
    let raw = created.ok(201)["raw_key"].as_str().unwrap().to_owned();
    let path = format!("/policies/{policy}");
    // The calling key, from 10.1.2.3 (or from nowhere known).
    let as_ops = |body: Value, peer: Option<&str>| {
        let mut request = Request::put(format!("{MOUNT}{path}"))
            .header("authorization", format!("Bearer {raw}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        if let Some(peer) = peer {
            let peer: std::net::SocketAddr = format!("{peer}:40000").parse().unwrap();
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        }
        h.raw(request)
    };
    let from_here = Some("10.1.2.3");

    for (body, peer) in [
        (json!({"name": "ops", "allowed_ips": ["192.0.2.0/24"]}), from_here),
        (json!({"name": "ops", "allowed_ips": ["10.0.0.0/8"]}), None),
        // Already an hour old at the harness's clock: a minute's age expires it.
        (json!({"name": "ops", "max_key_age": 60}), from_here),
    ] {
        h.clock.advance(Duration::from_secs(3600));
        let reply = as_ops(body.clone(), peer).await;
        reply.assert_error(409, "self_lockout");
        assert!(reply.body["error"]["message"].as_str().unwrap().contains("lock"), "{}", reply.text);
    }
    let stored = h.get(&path).await;
    assert_eq!(stored.ok(200)["allowed_ips"], json!([]));
    assert_eq!(stored.body["max_key_age"], Value::Null);
    // An invalid policy is still the invalid input it is.
    as_ops(json!({"name": "ops", "allowed_ips": ["10.0.0.0/33"]}), from_here).await.assert_error(400, "invalid_input");

    // A list holding the request's address, an age the key is within: fine,
    // and the key still works from there.
    as_ops(json!({"name": "ops", "allowed_ips": ["10.0.0.0/8"], "max_key_age": 86_400}), from_here).await.ok(200);
    assert_eq!(as_ops(json!({"name": "ops", "allowed_ips": ["10.0.0.0/8"]}), from_here).await.status, 200);
    // Another admin key (not under the policy) may shut it out.
    h.put(&path, json!({"name": "ops", "allowed_ips": ["192.0.2.0/24"]})).await.ok(200);
    as_ops(json!({"name": "ops"}), from_here).await.assert_error(403, "ip_not_allowed");
}

#[tokio::test]
async fn store_failures_are_503_without_details() {
    let h = harness().await;
    h.store.fail(true);
    for (method, path, body) in
        [("GET", "/keys".to_owned(), None), ("POST", "/policies".to_owned(), Some(json!({"name": "p"})))]
    {
        let reply = h.send(method, &path, Some(&h.admin), body).await;
        reply.assert_error(503, "unavailable");
        assert!(!reply.text.contains("hunter2") && !reply.text.contains("refused"), "{}", reply.text);
    }
    h.store.fail(false);
    assert_eq!(h.get("/keys").await.status, 200);
}

#[tokio::test]
async fn configuration_reaches_the_layer() {
    // Only keys of one app.
    let h = harness_with(with_config(|config| config.with_app_id("another-app").with_realm("ops")), false).await;
    let refused = h.get("/keys").await;
    refused.assert_error(401, "invalid_key");
    assert_eq!(refused.headers["www-authenticate"], r#"Bearer realm="ops", error="invalid_token""#);
    let theirs = admin_key(&h.engine, "another-app", "t1").await;
    assert_eq!(h.send("GET", "/keys", Some(&theirs), None).await.status, 200);

    // Keys from a custom header only.
    let h = harness_with(
        with_config(|config| {
            config.with_key_sources(keysmith_core::http::KeySources::empty().with_header("X-Admin-Token"))
        }),
        false,
    )
    .await;
    h.get("/keys").await.assert_error(401, "missing_key");
    let request = Request::get(format!("{MOUNT}/keys")).header("x-admin-token", &h.admin).body(Body::empty()).unwrap();
    assert_eq!(h.raw(request).await.status, 200);

    // A layer configured by the application: still needs the admin scope,
    // even in optional mode.
    let h = harness_with(
        |engine| AdminConfig::from_layer(ApiKeyLayer::new(engine).optional().with_realm("app")).into_router(),
        false,
    )
    .await;
    let anonymous = h.send("GET", "/keys", None, None).await;
    anonymous.assert_error(401, "missing_key");
    assert_eq!(anonymous.headers["www-authenticate"], r#"Bearer realm="app""#);
    assert_eq!(h.get("/keys").await.status, 200);
    let reader = h.tenant().create_key(NewKey::new("reader").with_scopes(["read"])).await.unwrap();
    h.send("GET", "/keys", Some(reader.raw.expose()), None).await.assert_error(403, "insufficient_scope");
}

#[tokio::test]
async fn owners_are_set_listed_and_held_to_their_policys_key_limit() {
    let h = harness().await;
    let policy = h.post("/policies", json!({"name": "free", "max_active_keys_per_owner": 1})).await;
    let policy_id = policy.ok(201)["id"].as_str().unwrap().to_owned();
    assert_eq!(policy.body["max_active_keys_per_owner"], 1);
    let body = json!({"name": "k", "owner_id": "cus_1", "policy_id": policy_id});
    let (id, _) = h.create_key(body.clone()).await;
    let refused = h.post("/keys", body).await;
    refused.assert_error(409, "owner_key_limit");
    h.create_key(json!({"name": "k", "owner_id": "cus_2"})).await;
    h.create_key(json!({"name": "k"})).await;

    let listed = h.get("/keys?owner_id=cus_1").await;
    let items = listed.ok(200)["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!((items[0]["id"].as_str(), items[0]["owner_id"].as_str()), (Some(id.as_str()), Some("cus_1")));
    for bad in [json!(""), json!(" cus"), json!("a\u{0}b"), json!("x".repeat(256))] {
        h.post("/keys", json!({"name": "k", "owner_id": bad})).await.assert_error(400, "invalid_input");
    }
    h.post("/policies", json!({"name": "zero", "max_active_keys_per_owner": 0}))
        .await
        .assert_error(400, "invalid_input");
}

#[tokio::test]
async fn credits_are_set_spent_topped_up_and_removed_through_the_api() {
    let h = harness().await;
    let created = h.post("/keys", json!({"name": "metered", "credits": {"remaining": 1}})).await;
    let body = created.ok(201).clone();
    assert_eq!(body["key"]["credits"], json!({"remaining": 1, "refill": null, "refilled_at": null}));
    let (id, raw) = (body["key"]["id"].as_str().unwrap().to_owned(), body["raw_key"].as_str().unwrap().to_owned());

    assert!(validates(&h, &raw).await.is_ok());
    let refused = validates(&h, &raw).await.unwrap_err();
    assert_eq!(refused.refusal().map(Refusal::code), Some("credits_exhausted"));

    let added = h.post(&format!("/keys/{id}/credits/add"), json!({"amount": 5})).await;
    assert_eq!(added.ok(200)["credits"]["remaining"], 5);
    let set =
        h.put(&format!("/keys/{id}/credits"), json!({"remaining": 2, "refill": {"amount": 10, "every": "day"}})).await;
    let credits = set.ok(200)["credits"].clone();
    assert_eq!((credits["remaining"].as_u64(), credits["refill"]["every"].as_str()), (Some(2), Some("day")));
    assert!(credits["refilled_at"].is_string());
    h.put(&format!("/keys/{id}/credits"), json!({"remaining": 1_000_000_000_001_u64}))
        .await
        .assert_error(422, "invalid_body");
    h.put(&format!("/keys/{id}/credits"), json!({"remaining": 1, "refill": {"amount": 0, "every": "day"}}))
        .await
        .assert_error(400, "invalid_input");
    h.post(&format!("/keys/{id}/credits/add"), json!({"amount": 999_999_999_999_u64}))
        .await
        .assert_error(400, "invalid_input");

    let removed = h.delete(&format!("/keys/{id}/credits")).await;
    assert_eq!(removed.ok(200)["credits"], Value::Null);
    h.post(&format!("/keys/{id}/credits/add"), json!({"amount": 1})).await.assert_error(400, "invalid_input");
    let other_tenant = KeyId::new();
    h.delete(&format!("/keys/{other_tenant}/credits")).await.assert_error(404, "not_found");
}

#[tokio::test]
async fn an_owners_credits_are_set_spent_by_its_keys_topped_up_and_removed_through_the_api() {
    let h = harness().await;
    let none = h.get("/owners/cus_1/credits").await;
    assert_eq!(none.ok(200), &json!({"owner_id": "cus_1", "credits": null}));
    let policy = h.post("/policies", json!({"name": "shared", "limit_by": "owner"})).await;
    let policy_id = policy.ok(201)["id"].as_str().unwrap().to_owned();
    let (first_id, first) = h.create_key(json!({"name": "a", "owner_id": "cus_1", "policy_id": policy_id})).await;
    let (_, second) = h.create_key(json!({"name": "b", "owner_id": "cus_1", "policy_id": policy_id})).await;

    let set = h.put("/owners/cus_1/credits", json!({"remaining": 2, "refill": {"amount": 10, "every": "month"}})).await;
    let body = set.ok(200).clone();
    assert_eq!((body["owner_id"].as_str(), body["credits"]["remaining"].as_u64()), (Some("cus_1"), Some(2)));
    assert_eq!(body["credits"]["refill"], json!({"amount": 10, "every": "month"}));
    assert!(body["credits"]["refilled_at"].is_string());
    assert_eq!(validates(&h, &first).await.unwrap().credits.map(|c| c.remaining), Some(1));
    assert_eq!(validates(&h, &second).await.unwrap().credits.map(|c| c.remaining), Some(0));
    let refused = validates(&h, &first).await.unwrap_err();
    assert_eq!(refused.refusal().map(Refusal::code), Some("credits_exhausted"));
    assert_eq!(h.get("/owners/cus_1/credits").await.ok(200)["credits"]["remaining"], 0);

    let added = h.post("/owners/cus_1/credits/add", json!({"amount": 5})).await;
    assert_eq!(added.ok(200)["credits"]["remaining"], 5);
    h.post("/owners/cus_1/credits/add", json!({"amount": 999_999_999_999_u64}))
        .await
        .assert_error(400, "invalid_input");
    h.put("/owners/cus_1/credits", json!({"remaining": 1_000_000_000_001_u64})).await.assert_error(422, "invalid_body");
    h.put("/owners/cus_1/credits", json!({"remaining": 1, "refill": {"amount": 0, "every": "day"}}))
        .await
        .assert_error(400, "invalid_input");
    // A key that spends its owner's credits takes none of its own.
    let own = h.put(&format!("/keys/{first_id}/credits"), json!({"remaining": 3})).await;
    own.assert_error(409, "credits_conflict");
    assert!(own.text.contains("owner"), "{}", own.text);

    let removed = h.delete("/owners/cus_1/credits").await;
    assert_eq!(removed.ok(200), &json!({"owner_id": "cus_1", "credits": null}));
    assert_eq!(validates(&h, &first).await.unwrap().credits, None, "no credits, no credits limit");
    h.post("/owners/cus_1/credits/add", json!({"amount": 1})).await.assert_error(400, "invalid_input");
    for bad in ["%20cus", "a%00b", "line%0A", &"x".repeat(256)] {
        h.get(&format!("/owners/{bad}/credits")).await.assert_error(400, "invalid_input");
        h.put(&format!("/owners/{bad}/credits"), json!({"remaining": 1})).await.assert_error(400, "invalid_input");
    }
    // Percent-encoded ids are the owner's id decoded.
    let spaced = h.put("/owners/cus%201/credits", json!({"remaining": 4})).await;
    assert_eq!(spaced.ok(200)["owner_id"], "cus 1");
}

#[tokio::test]
async fn owner_credits_routes_act_on_the_callers_tenant_only() {
    let h = harness().await;
    let theirs = h.engine.tenant(APP, "globex");
    theirs.set_owner_credits("cus_1", Some(keysmith_core::Credits::new(3))).await.unwrap();
    assert_eq!(h.get("/owners/cus_1/credits").await.ok(200)["credits"], Value::Null);
    h.post("/owners/cus_1/credits/add", json!({"amount": 5})).await.assert_error(400, "invalid_input");
    h.put("/owners/cus_1/credits", json!({"remaining": 100})).await.ok(200);
    h.delete("/owners/cus_1/credits").await.ok(200);
    let still = theirs.owner_credits("cus_1").await.unwrap();
    assert_eq!(still.map(|c| c.remaining), Some(3), "nothing of theirs changed");
    let reader = h.tenant().create_key(NewKey::new("reader").with_scopes(["read"])).await.unwrap();
    let denied = h.send("GET", "/owners/cus_1/credits", Some(reader.raw.expose()), None).await;
    denied.assert_error(403, "insufficient_scope");
}

#[tokio::test]
async fn an_owner_id_with_edge_whitespace_or_over_128_bytes_is_400_before_any_store_call() {
    let h = harness().await;
    h.put("/owners/cus_1/credits", json!({"remaining": 5})).await.ok(200);
    h.create_key(json!({"name": "k", "owner_id": "cus_1"})).await;
    // With every management call of the store failing, a 400 (not a 503)
    // shows the engine refused the id before calling the store.
    h.store.fail(true);
    // 65 × "é" (two bytes each) is 130 bytes.
    let too_long = "%C3%A9".repeat(65);
    for bad in ["cus_1%20", "%20cus_1", "cus_1%09", "cus_1%C2%A0", too_long.as_str()] {
        let credits = format!("/owners/{bad}/credits");
        let replies = [
            h.get(&credits).await,
            h.put(&credits, json!({"remaining": 1})).await,
            h.delete(&credits).await,
            h.post(&format!("{credits}/add"), json!({"amount": 1})).await,
            h.get(&format!("/keys?owner_id={bad}")).await,
        ];
        for reply in replies {
            reply.assert_error(400, "invalid_input");
            assert!(reply.text.contains("owner_id"), "{}", reply.text);
        }
    }
    h.post("/keys", json!({"name": "k", "owner_id": "cus_1 "})).await.assert_error(400, "invalid_input");
    h.store.fail(false);
    // `cus_1` kept its credits and its one key; `cus_1 ` never existed.
    assert_eq!(h.get("/owners/cus_1/credits").await.ok(200)["credits"]["remaining"], 5);
    assert_eq!(h.get("/keys?owner_id=cus_1").await.ok(200)["items"].as_array().unwrap().len(), 1);
    // 128 bytes is an owner id; 129 is not.
    let longest = "x".repeat(128);
    h.put(&format!("/owners/{longest}/credits"), json!({"remaining": 1})).await.ok(200);
    let over = "x".repeat(129);
    h.put(&format!("/owners/{over}/credits"), json!({"remaining": 1})).await.assert_error(400, "invalid_input");
}

#[tokio::test]
async fn another_tenants_key_gets_the_credits_routes_answer_of_a_key_that_does_not_exist() {
    let h = harness().await;
    let theirs = h.engine.tenant(APP, "globex");
    let metered = NewKey::new("theirs").with_credits(keysmith_core::Credits::new(3));
    let their_key = theirs.create_key(metered).await.unwrap().key.id.to_string();
    let no_key = KeyId::new().to_string();
    let routes = |id: &str| {
        [
            ("PUT", format!("/keys/{id}/credits"), Some(json!({"remaining": 100}))),
            ("PUT", format!("/keys/{id}/credits"), Some(json!({"remaining": 1_000_000_000_001_u64}))),
            ("POST", format!("/keys/{id}/credits/add"), Some(json!({"amount": 5}))),
            ("DELETE", format!("/keys/{id}/credits"), None),
        ]
    };
    for ((method, theirs_path, body), (_, none_path, _)) in routes(&their_key).into_iter().zip(routes(&no_key)) {
        let got = h.send(method, &theirs_path, Some(&h.admin), body.clone()).await;
        let expected = h.send(method, &none_path, Some(&h.admin), body).await;
        assert_eq!(got.status, expected.status, "{method} {theirs_path}");
        assert_eq!(got.text.replace(&their_key, "ID"), expected.text.replace(&no_key, "ID"), "{method} {theirs_path}");
    }
    let still = theirs.get_key(their_key.parse().unwrap()).await.unwrap();
    assert_eq!(still.credits.map(|c| c.remaining), Some(3), "nothing of theirs changed");
}

/// The API accepts every name of core's string enums where it takes one,
/// exactly as spelled (the CLI's flags take the same names), and answers
/// with them.
#[tokio::test]
async fn every_enum_name_is_accepted_exactly_as_spelled() {
    use keysmith_core::{Environment, KeyState, LimitBy, Period, RotationReason};
    let h = harness().await;
    for state in KeyState::ALL {
        h.get(&format!("/keys?state={state}")).await.ok(200);
        h.get(&format!("/keys?state={}", state.as_str().to_uppercase())).await.assert_error(400, "invalid_query");
    }
    for environment in Environment::ALL {
        h.get(&format!("/keys?environment={environment}")).await.ok(200);
        let key = h.post("/keys", json!({"name": "k", "environment": environment})).await;
        assert_eq!(key.ok(201)["key"]["environment"], environment.as_str());
        let upper = environment.as_str().to_uppercase();
        h.post("/keys", json!({"name": "k", "environment": upper})).await.assert_error(422, "invalid_body");
    }
    for reason in RotationReason::ALL {
        let (id, _) = h.create_key(json!({"name": "rotated"})).await;
        let rotated = h.post(&format!("/keys/{id}/rotate"), json!({"reason": reason})).await;
        assert_eq!(rotated.ok(201)["rotation"]["reason"], reason.as_str());
    }
    let (id, _) = h.create_key(json!({"name": "used"})).await;
    for period in Period::ALL {
        h.get(&format!("/keys/{id}/usage/aggregate?period={period}")).await.ok(200);
        let refill = json!({"remaining": 5, "refill": {"amount": 5, "every": period}});
        if period == Period::Hour {
            // Credits refill daily or monthly only.
            h.put(&format!("/keys/{id}/credits"), refill).await.assert_error(400, "invalid_input");
            continue;
        }
        assert_eq!(
            h.put(&format!("/keys/{id}/credits"), refill).await.ok(200)["credits"]["refill"]["every"],
            period.as_str()
        );
    }
    for limit_by in LimitBy::ALL {
        let policy = h.post("/policies", json!({"name": format!("by {limit_by}"), "limit_by": limit_by})).await;
        assert_eq!(policy.ok(201)["limit_by"], limit_by.as_str());
    }
    h.post("/policies", json!({"name": "p", "limit_by": "Key"})).await.assert_error(422, "invalid_body");
}
