//! `POST /verify` through the router: verdicts, spending, tenant isolation,
//! authentication and bad bodies.

mod support;

use std::time::Duration;

use keysmith_core::store::{Page, TimeRange};
use keysmith_core::{Engine, KeyId, MemoryStore, NewKey, PolicyId, PolicySpec, RateLimit, RequestContext, ScopeId};
use serde_json::{Value, json};
use support::{APP, harness};

/// A key of the admin's tenant holding only `keysmith:verify`.
async fn verifier(h: &support::Harness) -> String {
    let created = h.tenant().create_key(NewKey::new("gateway").with_scopes(["keysmith:verify"])).await.unwrap();
    created.raw.expose().to_owned()
}

async fn verify(h: &support::Harness, caller: &str, body: Value) -> support::Reply {
    h.send("POST", "/verify", Some(caller), Some(body)).await
}

#[tokio::test]
async fn a_valid_key_is_described_and_its_request_spent_and_recorded() {
    let h = harness().await;
    let caller = verifier(&h).await;
    let spec = PolicySpec::new("tiers")
        .with_limit(RateLimit::new("burst", 10, Duration::from_secs(1)))
        .with_limit(RateLimit::new("hourly", 2, Duration::from_secs(3600)));
    let policy = h.tenant().create_policy(spec).await.unwrap();
    let new = NewKey::new("customer").with_scopes(["read"]).with_policy(policy.id).with_owner("cust_1");
    let created = h.tenant().create_key(new).await.unwrap();
    let raw = created.raw.expose().to_owned();

    let reply = verify(&h, &caller, json!({"key": raw, "required_scopes": ["read:users"], "ip": "203.0.113.7"})).await;
    let verdict = reply.ok(200);
    assert_eq!(verdict["valid"], true);
    assert_eq!(verdict["code"], "valid");
    assert_eq!(verdict["key_id"], created.key.id.to_string());
    assert_eq!(verdict["owner_id"], "cust_1");
    assert_eq!(verdict["scopes"], json!(["read"]));
    assert_eq!(verdict["expires_at"], Value::Null);
    assert_eq!(verdict["credits"], Value::Null);
    assert_eq!(
        verdict["rate_limits"],
        json!([
            {"name": "burst", "requests": 10, "window": 1, "remaining": 9, "reset": 1},
            {"name": "hourly", "requests": 2, "window": 3600, "remaining": 1, "reset": 1800}
        ])
    );
    // The second request takes the last of `hourly`; the third is refused by it.
    assert_eq!(verify(&h, &caller, json!({"key": raw})).await.ok(200)["valid"], true);
    let limited = verify(&h, &caller, json!({"key": raw})).await;
    let limited = limited.ok(200);
    assert_eq!((limited["valid"].clone(), limited["code"].clone()), (json!(false), json!("rate_limited")));
    assert_eq!(limited["rate_limits"][0]["name"], "hourly");
    assert_eq!(limited["key_id"], Value::Null);

    // Two passed requests, recorded as usage of the verified key.
    h.engine.flush_usage().await;
    let usage = h.tenant().list_usage(created.key.id, TimeRange::default(), Page::default()).await.unwrap();
    assert_eq!(usage.len(), 2);
    assert_eq!((usage[0].endpoint.as_str(), usage[0].method.as_str(), usage[0].status), ("/verify", "POST", 200));
    assert_eq!(usage[0].ip, Some("203.0.113.7".parse().unwrap()));
}

#[tokio::test]
async fn under_limit_by_owner_a_verdict_reports_and_spends_the_owners_credits() {
    let h = harness().await;
    let caller = verifier(&h).await;
    let shared = PolicySpec::new("shared").with_limit_by(keysmith_core::LimitBy::Owner);
    let policy = h.tenant().create_policy(shared).await.unwrap();
    h.tenant().set_owner_credits("cust_1", Some(keysmith_core::Credits::new(3))).await.unwrap();
    let key = || async {
        let new = NewKey::new("customer").with_policy(policy.id).with_owner("cust_1");
        h.tenant().create_key(new).await.unwrap().raw.expose().to_owned()
    };
    let (first, second) = (key().await, key().await);

    let verdict = verify(&h, &caller, json!({"key": first, "cost": 2})).await.ok(200).clone();
    assert_eq!((verdict["valid"].clone(), verdict["credits"]["remaining"].clone()), (json!(true), json!(1)));
    // A whole number may be written with a zero fraction.
    let verdict = verify(&h, &caller, json!({"key": second, "cost": 2.0})).await.ok(200).clone();
    assert_eq!((verdict["valid"].clone(), verdict["code"].clone()), (json!(false), json!("credits_exhausted")));
    assert_eq!(verdict["credits"]["remaining"], 1, "what is left, short of the cost, and nothing spent");
    let verdict = verify(&h, &caller, json!({"key": second})).await.ok(200).clone();
    assert_eq!(verdict["credits"]["remaining"], 0, "one balance for both keys");
    let left = h.tenant().owner_credits("cust_1").await.unwrap();
    assert_eq!(left.map(|c| c.remaining), Some(0));
}

#[tokio::test]
async fn every_refusal_is_a_200_verdict_with_its_code_and_spends_nothing() {
    let h = harness().await;
    let caller = verifier(&h).await;
    let policy = h.tenant().create_policy(PolicySpec::new("one").with_rate_limit(1, Duration::from_secs(3600))).await;
    let new = NewKey::new("reader").with_scopes(["read"]).with_policy(policy.unwrap().id);
    let raw = h.tenant().create_key(new).await.unwrap().raw.expose().to_owned();
    let cases = [
        (json!({"key": "nope"}), "malformed_key"),
        (json!({"key": "sk_live_0000000000000000000000000000000000000A"}), "malformed_key"),
        (json!({"key": raw, "required_scopes": ["write"]}), "insufficient_scope"),
    ];
    for (body, code) in cases {
        let verdict = verify(&h, &caller, body).await;
        let verdict = verdict.ok(200);
        assert_eq!((verdict["valid"].clone(), verdict["code"].clone()), (json!(false), json!(code)), "{verdict}");
    }
    // The scope refusal spent nothing: the one request of the hour is still there.
    assert_eq!(verify(&h, &caller, json!({"key": raw})).await.ok(200)["valid"], true);
    let revoked = h.tenant().create_key(NewKey::new("gone")).await.unwrap();
    h.tenant().revoke_key(revoked.key.id, "test").await.unwrap();
    let verdict = verify(&h, &caller, json!({"key": revoked.raw.expose()})).await;
    assert_eq!(verdict.ok(200)["code"], "key_revoked");
}

#[tokio::test]
async fn another_tenants_key_is_invalid_and_nothing_of_it_is_spent_or_revealed() {
    let h = harness().await;
    let caller = verifier(&h).await;
    let other = h.engine.tenant(APP, "globex");
    let policy = other.create_policy(PolicySpec::new("one").with_rate_limit(1, Duration::from_secs(3600))).await;
    let created = other.create_key(NewKey::new("theirs").with_policy(policy.unwrap().id)).await.unwrap();
    let raw = created.raw.expose().to_owned();
    for _ in 0..3 {
        let verdict = verify(&h, &caller, json!({"key": raw})).await;
        let verdict = verdict.ok(200);
        assert_eq!(
            verdict,
            &json!({"valid": false, "code": "invalid_key", "key_id": null, "owner_id": null, "scopes": [],
                    "rate_limits": [], "credits": null, "expires_at": null})
        );
    }
    // Its owner still has the hour's one request.
    assert!(h.engine.validate(&raw, &RequestContext::new()).await.is_ok());
}

/// The verdict's status, content type and exact text.
fn verdict_of(reply: &support::Reply) -> (u16, String, String) {
    let content_type = reply.headers.get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (reply.status.as_u16(), content_type, reply.text.clone())
}

#[tokio::test]
async fn another_tenants_keys_in_any_state_answer_exactly_what_an_unknown_key_does() {
    let h = harness().await;
    let caller = verifier(&h).await;
    // A well-formed key no store here knows.
    let elsewhere = Engine::builder(std::sync::Arc::new(MemoryStore::new())).build().unwrap();
    let unknown = elsewhere.tenant(APP, "acme").create_key(NewKey::new("k")).await.unwrap().raw.expose().to_owned();
    let expected = verdict_of(&verify(&h, &caller, json!({"key": unknown})).await);
    assert_eq!(expected.0, 200);
    assert!(expected.2.contains(r#""code":"invalid_key""#), "{}", expected.2);

    // Another tenant of the app, and the same tenant id in another app:
    // keys in every state, with a policy that would refuse the request.
    let mut theirs = Vec::new();
    for (app, tenant) in [(APP, "globex"), ("other-app", support::TENANT)] {
        let other = h.engine.tenant(app, tenant);
        let strict = PolicySpec::new("strict").with_allowed_ips(["10.0.0.0/8"]);
        let policy = other.create_policy(strict.with_rate_limit(1, Duration::from_secs(3600))).await.unwrap();
        let key = async |name: &'static str| {
            other.create_key(NewKey::new(name).with_policy(policy.id).with_scopes(["read"])).await.unwrap()
        };
        let (active, revoked, suspended, rotated) = (key("a").await, key("r").await, key("s").await, key("o").await);
        other.revoke_key(revoked.key.id, "test").await.unwrap();
        other.suspend_key(suspended.key.id).await.unwrap();
        let replacement = other.rotate_key(rotated.key.id, keysmith_core::RotationReason::Manual, None).await.unwrap();
        let soon = support::start() + chrono::Duration::seconds(60);
        let expiring = other.create_key(NewKey::new("e").with_expires_at(soon)).await.unwrap();
        for created in [&active, &revoked, &suspended, &rotated, &expiring] {
            theirs.push(created.raw.expose().to_owned());
        }
        theirs.push(replacement.raw.expose().to_owned());
    }
    // Past the expiry of the `e` keys (their state still says active).
    h.clock.advance(Duration::from_secs(120));
    let bodies = [
        json!({}),
        json!({"required_scopes": ["write"]}),
        json!({"ip": "203.0.113.7", "origin": "https://evil.example", "cost": 5}),
    ];
    for raw in &theirs {
        for extra in &bodies {
            let mut body = extra.clone();
            body["key"] = json!(raw);
            let got = verdict_of(&verify(&h, &caller, body).await);
            assert_eq!(got, expected, "another tenant's key answered differently from an unknown one");
        }
    }
    // Nothing of theirs was spent or moved: the active keys still have the
    // hour's one request, from an allowed address.
    let allowed = RequestContext::new().with_ip("10.1.2.3".parse().unwrap());
    for raw in [&theirs[0], &theirs[6]] {
        assert!(h.engine.validate(raw, &allowed).await.is_ok());
    }
    let globex = h.engine.tenant(APP, "globex").list_keys(&Default::default()).await.unwrap();
    let expiring = globex.iter().find(|k| k.name == "e").unwrap();
    assert_eq!(expiring.state, keysmith_core::KeyState::Active, "only its own tenant's checks move a key to expired");
}

#[tokio::test]
async fn a_verify_key_gets_one_answer_from_every_admin_route_whatever_the_id_names() {
    let h = harness().await;
    let caller = verifier(&h).await;
    let ours = h.tenant().create_key(NewKey::new("ours")).await.unwrap().key.id.to_string();
    let our_policy = h.tenant().create_policy(PolicySpec::new("ours")).await.unwrap().id.to_string();
    let theirs = h.engine.tenant(APP, "globex");
    let their_key = theirs.create_key(NewKey::new("theirs")).await.unwrap().key.id.to_string();
    let their_policy = theirs.create_policy(PolicySpec::new("theirs")).await.unwrap().id.to_string();
    let their_scope = theirs.create_scope("read", "").await.unwrap().id.to_string();
    let (no_key, no_policy, no_scope) =
        (KeyId::new().to_string(), PolicyId::new().to_string(), ScopeId::new().to_string());

    let first = h.send("GET", &format!("/keys/{their_key}"), Some(&caller), None).await;
    first.assert_error(403, "insufficient_scope");
    let expected = (first.status, first.headers.get("www-authenticate").cloned(), first.text.clone());
    let mut requests = Vec::new();
    for (key, policy, scope) in
        [(&their_key, &their_policy, &their_scope), (&no_key, &no_policy, &no_scope), (&ours, &our_policy, &no_scope)]
    {
        requests.extend([
            ("GET", format!("/keys/{key}"), None),
            ("POST", format!("/keys/{key}/revoke"), Some(json!({"reason": "x"}))),
            ("POST", format!("/keys/{key}/rotate"), Some(json!({"grace_seconds": 0}))),
            ("PUT", format!("/keys/{key}/credits"), Some(json!({"remaining": 5}))),
            ("GET", format!("/keys/{key}/usage"), None),
            ("GET", format!("/policies/{policy}"), None),
            ("DELETE", format!("/policies/{policy}"), None),
            ("DELETE", format!("/scopes/{scope}"), None),
        ]);
    }
    requests.extend([
        ("GET", "/keys/not-an-id".to_owned(), None),
        ("GET", format!("/keys/{their_policy}"), None),
        ("GET", "/keys".to_owned(), None),
        ("GET", "/owners/cus_1/credits".to_owned(), None),
        ("PUT", "/owners/cus_1/credits".to_owned(), Some(json!({"remaining": 5}))),
        ("GET", "/no-such-route".to_owned(), None),
        ("DELETE", "/keys".to_owned(), None),
    ]);
    for (method, path, body) in requests {
        let reply = h.send(method, &path, Some(&caller), body).await;
        let got = (reply.status, reply.headers.get("www-authenticate").cloned(), reply.text.clone());
        assert_eq!(got, expected, "{method} {path}");
    }
    // Nothing was changed by the refused calls.
    assert_eq!(theirs.get_key(their_key.parse().unwrap()).await.unwrap().state, keysmith_core::KeyState::Active);
    assert_eq!(h.tenant().get_key(ours.parse().unwrap()).await.unwrap().state, keysmith_core::KeyState::Active);
}

#[tokio::test]
async fn only_a_verify_key_may_call_verify_and_it_can_do_nothing_else() {
    let h = harness().await;
    let caller = verifier(&h).await;
    let body = json!({"key": "sk_live_x"});
    // The admin key alone does not grant verify.
    let admin = h.send("POST", "/verify", Some(&h.admin.clone()), Some(body.clone())).await;
    admin.assert_error(403, "insufficient_scope");
    h.send("POST", "/verify", None, Some(body.clone())).await.assert_error(401, "missing_key");
    // A verify key cannot manage keys.
    h.send("GET", "/keys", Some(&caller), None).await.assert_error(403, "insufficient_scope");
    assert_eq!(verify(&h, &caller, body).await.status, 200);
}

#[tokio::test]
async fn bad_bodies_are_refused_before_any_check() {
    let h = harness().await;
    let caller = verifier(&h).await;
    let huge = "k".repeat(1025);
    let scopes: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
    for body in [
        json!({"key": huge}),
        json!({"key": "sk_live_x", "ip": "not-an-ip"}),
        json!({"key": "sk_live_x", "required_scopes": scopes}),
        json!({"key": "sk_live_x", "origin": "o".repeat(1025)}),
        json!({"key": "sk_live_x", "ip": ""}),
    ] {
        verify(&h, &caller, body).await.assert_error(400, "invalid_input");
    }
    // What was sent as the address is not echoed back (a key pasted there
    // in a format of the application's own, say).
    let pasted = verify(&h, &caller, json!({"key": "sk_live_x", "ip": "mk_3f9a0123456789abcdefXYZ"})).await;
    pasted.assert_error(400, "invalid_input");
    assert!(!pasted.text.contains("mk_3f9a"), "{}", pasted.text);
    // A required scope no key could hold is refused, not covered by `*` or a
    // prefix, and the key spends nothing.
    let (_, raw) = h.create_key(json!({"name": "wide", "scopes": ["*"]})).await;
    let pasted = verify(&h, &caller, json!({"key": raw, "required_scopes": ["mk_3f9a0123456789abcdef XYZ"]})).await;
    pasted.assert_error(400, "invalid_input");
    assert!(!pasted.text.contains("mk_3f9a"), "{}", pasted.text);
    for scope in ["read:", "read::x", "read:a b", "", "bad scope", ":read", "read\u{0}"] {
        let reply = verify(&h, &caller, json!({"key": raw, "required_scopes": ["read", scope]})).await;
        reply.assert_error(400, "invalid_input");
        assert!(reply.body["error"]["message"].as_str().unwrap().contains("scope"), "{}", reply.text);
    }
    for body in [
        json!({"keys": "x"}),
        json!({}),
        json!({"key": "sk_live_x", "cost": 1_000_000_000_001_u64}),
        json!({"key": "sk_live_x", "cost": 2.5}),
        json!({"key": "sk_live_x", "cost": -1}),
    ] {
        verify(&h, &caller, body).await.assert_error(422, "invalid_body");
    }
    let malformed = axum::http::Request::builder()
        .method("POST")
        .uri(format!("{}/verify", support::MOUNT))
        .header("authorization", format!("Bearer {caller}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{not json"))
        .unwrap();
    assert_eq!(h.raw(malformed).await.status, 400);

    // The largest body the checks let through is far under the body limit;
    // a body over the limit is 413.
    let largest = json!({
        "key": "k".repeat(1024), "required_scopes": vec!["s".repeat(keysmith_core::scope::MAX_NAME_LEN); 32], "origin": "o".repeat(1024),
        "ip": "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "cost": 1_000_000_000_000_u64,
    });
    assert!(largest.to_string().len() < keysmith_admin::DEFAULT_BODY_LIMIT / 4, "{}", largest.to_string().len());
    assert_eq!(verify(&h, &caller, largest).await.ok(200)["code"], "malformed_key");
    let oversized = json!({"key": "k".repeat(keysmith_admin::DEFAULT_BODY_LIMIT)});
    verify(&h, &caller, oversized).await.assert_error(413, "payload_too_large");
}

#[tokio::test]
async fn verify_answers_503_while_the_store_is_down() {
    let h = harness().await;
    let caller = verifier(&h).await;
    // Spending a key's credits needs the store.
    let new = NewKey::new("k").with_credits(keysmith_core::Credits::new(10));
    let raw = h.tenant().create_key(new).await.unwrap().raw.expose().to_owned();
    // The caller's own key is checked (and cached) first; then the store goes down.
    assert_eq!(verify(&h, &caller, json!({"key": "sk_live_x"})).await.status, 200);
    h.store.fail(true);
    let reply = verify(&h, &caller, json!({"key": raw})).await;
    reply.assert_error(503, "unavailable");
}
