//! The OpenAPI document: it parses, it lists exactly the router's routes,
//! and it describes parameters, bodies, errors and security.

mod support;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use keysmith_core::http::KeySources;
use keysmith_core::{KeyId, NewKey, PolicyId, ScopeId};
use serde_json::{Value, json};
use support::{MOUNT, harness, harness_with, with_config};

/// The routes of the issue, as (method, path template).
const ROUTES: [(&str, &str); 29] = [
    ("POST", "/keys"),
    ("GET", "/keys"),
    ("GET", "/keys/{id}"),
    ("POST", "/keys/{id}/rotate"),
    ("POST", "/keys/{id}/revoke"),
    ("POST", "/keys/{id}/suspend"),
    ("POST", "/keys/{id}/reactivate"),
    ("PUT", "/keys/{id}/scopes"),
    ("GET", "/keys/{id}/rotations"),
    ("PUT", "/keys/{id}/credits"),
    ("DELETE", "/keys/{id}/credits"),
    ("POST", "/keys/{id}/credits/add"),
    ("GET", "/keys/{id}/usage"),
    ("GET", "/keys/{id}/usage/aggregate"),
    ("POST", "/policies"),
    ("GET", "/policies"),
    ("GET", "/policies/{id}"),
    ("PUT", "/policies/{id}"),
    ("DELETE", "/policies/{id}"),
    ("POST", "/scopes"),
    ("GET", "/scopes"),
    ("DELETE", "/scopes/{id}"),
    ("GET", "/openapi.json"),
    ("POST", "/verify"),
    ("GET", "/owners/{owner_id}/credits"),
    ("PUT", "/owners/{owner_id}/credits"),
    ("DELETE", "/owners/{owner_id}/credits"),
    ("POST", "/owners/{owner_id}/credits/add"),
    ("POST", "/secret-scanning/github"),
];

/// The one route GitHub's signature authenticates, not an API key.
const SECRET_SCANNING: &str = "/secret-scanning/github";

fn expected() -> BTreeSet<(String, String)> {
    ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect()
}

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// (METHOD, path) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

async fn served_document(h: &support::Harness) -> Value {
    let reply = h.get("/openapi.json").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.headers["content-type"], "application/json");
    serde_json::from_str(&reply.text).expect("the document is JSON")
}

/// A request path for a template, with an id of the right type.
fn concrete(path: &str) -> String {
    if path.starts_with("/keys/") {
        path.replace("{id}", &KeyId::new().to_string())
    } else if path.starts_with("/owners/") {
        path.replace("{owner_id}", "cus_1")
    } else if path.starts_with("/policies/") {
        path.replace("{id}", &PolicyId::new().to_string())
    } else {
        path.replace("{id}", &ScopeId::new().to_string())
    }
}

#[tokio::test]
async fn document_lists_exactly_the_routers_routes() {
    let h = harness().await;
    let doc = served_document(&h).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    assert_eq!(documented(&doc), expected());
    assert_eq!(expected().len(), ROUTES.len());

    // Every documented operation is routed (answered by its handler, not by
    // the router's 404/405 fallbacks)…
    for (method, path) in expected() {
        let body = matches!(method.as_str(), "POST" | "PUT").then(|| json!({}));
        let reply = h.send(&method, &concrete(&path), Some(&h.admin), body).await;
        let code = reply.body["error"]["code"].as_str().unwrap_or("");
        assert!(
            code != "route_not_found" && code != "method_not_allowed" && reply.status != 405,
            "{method} {path}: {}",
            reply.text
        );
    }
    // …and every other method on those paths is 405: the router has no
    // undocumented operation.
    let paths: BTreeSet<String> = expected().into_iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if expected().contains(&(method.to_owned(), path.clone())) {
                continue;
            }
            let reply = h.send(method, &concrete(&path), Some(&h.admin), None).await;
            reply.assert_error(405, "method_not_allowed");
        }
    }
}

#[tokio::test]
async fn document_describes_parameters_bodies_errors_and_security() {
    let h = harness().await;
    let doc = served_document(&h).await;
    assert_eq!(doc["info"]["title"], "Keysmith admin API");
    assert_eq!(doc["servers"], json!([{"url": MOUNT}]));

    // Security: bearer and X-API-Key, either one, with the admin scope.
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(
        schemes["bearer"],
        json!({"type": "http", "scheme": "bearer", "description": schemes["bearer"]["description"]})
    );
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    assert_eq!(doc["security"], json!([{"bearer": ["keysmith:admin"]}, {"api_key": ["keysmith:admin"]}]));
    assert_eq!(
        doc["paths"]["/verify"]["post"]["security"],
        json!([{"bearer": ["keysmith:verify"]}, {"api_key": ["keysmith:verify"]}]),
        "verify is the one operation that needs keysmith:verify, not keysmith:admin"
    );
    assert_eq!(doc["paths"]["/keys"]["get"].get("security"), None, "the other operations take the document's");

    // The error schema and shared responses.
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], json!(["error"]));
    let detail = &doc["components"]["schemas"]["ErrorDetail"];
    assert_eq!(detail["required"], json!(["code", "message"]));
    for name in ["Unauthorized", "Forbidden", "TooManyRequests", "Unavailable", "UnprocessableEntity"] {
        let response = &doc["components"]["responses"][name];
        assert_eq!(
            response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
            "{name}"
        );
    }

    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(operation) = item.get(method) else { continue };
            let name = format!("{method} {path}");
            assert!(operation["operationId"].is_string(), "{name}");
            assert!(operation["tags"].as_array().is_some_and(|t| !t.is_empty()), "{name}");
            if path == SECRET_SCANNING {
                // Checked on its own below: no key layer answers it.
                continue;
            }
            let responses = operation["responses"].as_object().unwrap();
            for status in ["400", "401", "403", "429", "503"] {
                assert!(responses.contains_key(status), "{name} lacks {status}");
            }
            let bad_request = responses["400"]["description"].as_str().unwrap();
            assert!(bad_request.contains("`ambiguous_key`"), "{name}: {bad_request}");
            assert!(responses.keys().any(|s| s.starts_with('2')), "{name} has no success response");
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = response
                        .get("$ref")
                        .map(|r| {
                            let component = r.as_str().unwrap().rsplit('/').next().unwrap();
                            doc["components"]["responses"][component]["content"]["application/json"]["schema"].clone()
                        })
                        .unwrap_or_else(|| response["content"]["application/json"]["schema"].clone());
                    assert_eq!(schema["$ref"], "#/components/schemas/ErrorBody", "{name} {status}");
                }
            }
            if path.contains("{id}") {
                let params = operation["parameters"].as_array().unwrap();
                let id = params.iter().find(|p| p["name"] == "id").unwrap_or_else(|| panic!("{name}"));
                assert_eq!((id["in"].as_str(), id["required"].as_bool()), (Some("path"), Some(true)), "{name}");
                assert!(id["schema"]["pattern"].as_str().unwrap().contains('_'), "{name}");
                assert!(responses.contains_key("400") && responses.contains_key("404"), "{name}");
            }
            if operation.get("requestBody").is_some() {
                assert!(operation["requestBody"]["content"]["application/json"]["schema"].is_object(), "{name}");
                for status in ["400", "415", "422"] {
                    assert!(responses.contains_key(status), "{name} lacks {status}");
                }
            }
        }
    }

    // GitHub's route: its signature, not a key, and only its own answers.
    let scanning = &doc["paths"][SECRET_SCANNING]["post"];
    assert_eq!(scanning["security"], json!([{"github_signature": []}]));
    let signature = &schemes["github_signature"];
    assert_eq!((signature["type"].as_str(), signature["in"].as_str()), (Some("apiKey"), Some("header")));
    assert_eq!(signature["name"], "Github-Public-Key-Signature");
    assert_eq!(scanning["parameters"][0]["name"], "Github-Public-Key-Identifier");
    assert_eq!(scanning["parameters"][0]["required"], true);
    let responses = scanning["responses"].as_object().unwrap();
    assert_eq!(responses.keys().collect::<Vec<_>>(), ["200", "400", "401", "405", "413", "503"]);
    for (status, response) in responses.iter().filter(|(status, _)| *status != "200") {
        let schema = &response["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(schema, "#/components/schemas/ErrorBody", "{status}");
    }
    assert!(responses["401"]["description"].as_str().unwrap().starts_with("`invalid_signature`"));
    let items = |value: &Value| value["content"]["application/json"]["schema"]["items"]["$ref"].clone();
    assert_eq!(items(&scanning["requestBody"]), "#/components/schemas/GithubAlert");
    assert_eq!(items(&responses["200"]), "#/components/schemas/SecretScanningFeedback");
    let component = |name: &str| &doc["components"]["schemas"][name];
    assert_eq!(component("GithubAlert")["required"], json!(["token", "type"]));
    let labels = &component("SecretScanningFeedback")["properties"]["label"]["enum"];
    assert_eq!(*labels, json!(["true_positive", "false_positive"]));

    // Query parameters of the listings.
    let names = |path: &str| -> Vec<String> {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names("/keys"), ["state", "environment", "policy_id", "owner_id", "limit", "offset"]);
    assert_eq!(names("/keys/{id}/usage"), ["from", "to", "limit", "offset"]);
    assert_eq!(names("/keys/{id}/usage/aggregate"), ["period", "from", "to"]);
    assert_eq!(names("/policies"), ["limit", "offset"]);

    // Bodies and responses name their schemas; keys never show a hash.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "Key",
        "CreateKey",
        "CreatedKey",
        "RotateKey",
        "RotatedKey",
        "RevokeKey",
        "SetScopes",
        "KeyList",
        "Rotation",
        "RotationList",
        "UsageRecord",
        "UsageList",
        "UsageAggregate",
        "UsageAggregateList",
        "Policy",
        "PolicyInput",
        "PolicyList",
        "RateLimit",
        "Quota",
        "Scope",
        "CreateScope",
        "ScopeList",
        "KeyState",
        "Environment",
        "RotationReason",
        "Period",
    ] {
        assert!(schemas.contains_key(schema), "missing schema {schema}");
    }
    assert_eq!(schemas["CreatedKey"]["required"], json!(["key", "raw_key"]));
    assert_eq!(schemas["CreateKey"]["required"], json!(["name"]));
    assert_eq!(schemas["CreateKey"]["additionalProperties"], json!(false));
    for schema in ["Key", "Rotation"] {
        let properties = schemas[schema]["properties"].as_object().unwrap();
        assert!(properties.keys().all(|p| !p.contains("hash")), "{schema}: {properties:?}");
    }
    assert_eq!(schemas["KeyState"]["enum"], json!(["active", "rotated", "expired", "revoked", "suspended"]));
    let create = &doc["paths"]["/keys"]["post"];
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreateKey"
    );
    assert_eq!(
        create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CreatedKey"
    );
    // The optional bodies of rotate and revoke are documented as optional.
    assert_ne!(doc["paths"]["/keys/{id}/rotate"]["post"]["requestBody"]["required"], json!(true));
    assert_ne!(doc["paths"]["/keys/{id}/revoke"]["post"]["requestBody"]["required"], json!(true));
    assert!(doc["paths"]["/policies/{id}"]["delete"]["responses"]["409"]["description"].is_string());
    // Credits that conflict with a policy limiting by owner are a 409 on
    // every route that can give or keep them.
    for (path, method) in [
        ("/keys", "post"),
        ("/keys/{id}/credits", "put"),
        ("/keys/{id}/credits/add", "post"),
        ("/policies/{id}", "put"),
    ] {
        let conflict = &doc["paths"][path][method]["responses"]["409"];
        assert!(conflict["description"].as_str().unwrap().contains("`credits_conflict`"), "{method} {path}");
        assert_eq!(conflict["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody");
    }
}

#[tokio::test]
async fn document_needs_the_admin_key_and_matches_the_public_function() {
    let h = harness().await;
    h.send("GET", "/openapi.json", None, None).await.assert_error(401, "missing_key");
    let reader = h.tenant().create_key(NewKey::new("reader").with_scopes(["read"])).await.unwrap();
    h.send("GET", "/openapi.json", Some(reader.raw.expose()), None).await.assert_error(403, "insufficient_scope");

    let mut served = served_document(&h).await;
    served.as_object_mut().unwrap().remove("servers");
    let public = serde_json::to_value(keysmith_admin::openapi()).unwrap();
    assert_eq!(served, public);
}

#[tokio::test]
async fn security_schemes_follow_the_key_sources() {
    let h = harness_with(
        with_config(|config| config.with_key_sources(KeySources::empty().with_header("X-Admin-Token"))),
        false,
    )
    .await;
    let request =
        Request::get(format!("{MOUNT}/openapi.json")).header("x-admin-token", &h.admin).body(Body::empty()).unwrap();
    let reply = h.raw(request).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let schemes = reply.body["components"]["securitySchemes"].as_object().unwrap();
    // GitHub's signature authenticates its route whatever the key sources.
    assert_eq!(schemes.keys().collect::<Vec<_>>(), ["github_signature", "x-admin-token"]);
    assert_eq!(schemes["x-admin-token"]["name"], "x-admin-token");
    assert_eq!(reply.body["security"], json!([{"x-admin-token": ["keysmith:admin"]}]));
}

/// The `pattern` and `maxLength` of a string property of a component, or
/// of its items when it is an array.
fn string_rule<'a>(doc: &'a Value, component: &str, property: &str) -> &'a Value {
    let schema = &doc["components"]["schemas"][component]["properties"][property];
    if schema["type"] == "array" { &schema["items"] } else { schema }
}

#[tokio::test]
async fn document_states_the_engines_rules_for_names_scopes_text_and_numbers() {
    let h = harness().await;
    let doc = served_document(&h).await;
    let rules = [
        ("CreateKey", "name", 256),
        ("CreateKey", "scopes", 128),
        ("CreateKey", "prefix", 16),
        ("SetScopes", "scopes", 128),
        ("RevokeKey", "reason", 1024),
        ("PolicyInput", "name", 128),
        ("PolicyInput", "allowed_scopes", 128),
        ("CreateScope", "name", 128),
        ("CreateScope", "description", 1024),
    ];
    for (component, property, max) in rules {
        let rule = string_rule(&doc, component, property);
        assert_eq!(rule["maxLength"], max, "{component}.{property}: {rule}");
        regex::Regex::new(rule["pattern"].as_str().unwrap()).unwrap();
    }
    for component in ["CreateKey", "PolicyInput", "Key", "Policy"] {
        let metadata = &doc["components"]["schemas"][component]["properties"]["metadata"];
        assert_eq!(metadata["$ref"], "#/components/schemas/Metadata", "{component}");
    }
    let metadata = &doc["components"]["schemas"]["Metadata"];
    assert_eq!(metadata["propertyNames"]["pattern"], string_rule(&doc, "RevokeKey", "reason")["pattern"]);
    let grace = &doc["components"]["schemas"]["RotateKey"]["properties"]["grace_seconds"];
    let max_grace = keysmith_core::PolicySpec::MAX_ROTATION_GRACE.as_secs();
    assert_eq!((grace["minimum"].as_u64(), grace["maximum"].as_u64()), (Some(0), Some(max_grace)));
    let policy_grace = &doc["components"]["schemas"]["PolicyInput"]["properties"]["rotation_grace"];
    assert_eq!(policy_grace["maximum"].as_u64(), Some(max_grace));
    // `POST /verify`'s `ip` is an address (or null), as the engine parses it.
    let ip = &doc["components"]["schemas"]["VerifyRequest"]["properties"]["ip"];
    let formats: Vec<&Value> = ip["anyOf"].as_array().unwrap().iter().map(|s| &s["format"]).collect();
    assert_eq!(formats, [&json!("ipv4"), &json!("ipv6"), &Value::Null], "{ip}");
    assert!(!doc["components"]["schemas"]["VerifyRequest"]["required"].as_array().unwrap().contains(&json!("ip")));
    let offset = doc["paths"]["/keys"]["get"]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == "offset");
    assert_eq!(offset.unwrap()["schema"]["maximum"], 9_007_199_254_740_991_u64);
}

#[tokio::test]
async fn whole_numbers_with_a_zero_fraction_are_accepted_as_documented() {
    let h = harness().await;
    let (id, _) = h.create_key(json!({"name": "k"})).await;
    let rotated = h.post(&format!("/keys/{id}/rotate"), json!({"grace_seconds": 5.0})).await;
    assert_eq!(rotated.ok(201)["rotation"]["grace_seconds"], 5);
    let policy = json!({
        "name": "p", "rate_limits": [{"name": "default", "requests": 10.0, "window": 60.0, "burst": 2.0}],
        "quota": {"daily": 100.0}, "max_key_age": 86400.0, "rotation_grace": 0.0
    });
    let created = h.post("/policies", policy).await;
    let created = created.ok(201);
    assert_eq!(created["rate_limits"], json!([{"name": "default", "requests": 10, "window": 60, "burst": 2}]));
    assert_eq!((created["max_key_age"].as_u64(), created["rotation_grace"].as_u64()), (Some(86400), Some(0)));

    let (other, _) = h.create_key(json!({"name": "k2"})).await;
    // A rotation grace goes up to 366 days, as the engine allows.
    let longest = keysmith_core::PolicySpec::MAX_ROTATION_GRACE.as_secs();
    for grace in [json!(5.5), json!(-1), json!(longest + 1), json!("5")] {
        let refused = h.post(&format!("/keys/{other}/rotate"), json!({"grace_seconds": grace})).await;
        refused.assert_error(422, "invalid_body");
    }
    let rotated = h.post(&format!("/keys/{other}/rotate"), json!({"grace_seconds": longest})).await;
    assert_eq!(rotated.ok(201)["rotation"]["grace_seconds"], longest);
    h.post("/policies", json!({"name": "g", "rotation_grace": longest + 1})).await.assert_error(422, "invalid_body");
    for limit in [
        json!({"name": "a", "requests": 1.5, "window": 1}),
        json!({"name": "a", "requests": 4_294_967_296_u64, "window": 1}),
    ] {
        h.post("/policies", json!({"name": "q", "rate_limits": [limit]})).await.assert_error(422, "invalid_body");
    }
    h.get(&format!("/keys?offset={}", 1_u64 << 53)).await.assert_error(400, "invalid_query");
    assert_eq!(h.get(&format!("/keys?offset={}", (1_u64 << 53) - 1)).await.status, 200);
}

#[tokio::test]
async fn a_refill_takes_exactly_the_periods_the_document_names() {
    let h = harness().await;
    let doc = served_document(&h).await;
    let every = &doc["components"]["schemas"]["Refill"]["properties"]["every"];
    assert_eq!(every["enum"], json!(["day", "month"]), "{every}");
    let (id, _) = h.create_key(json!({"name": "k"})).await;
    let path = format!("/keys/{id}/credits");
    for period in ["day", "month"] {
        let body = json!({"remaining": 10, "refill": {"amount": 10, "every": period}});
        let set = h.send("PUT", &path, Some(&h.admin), Some(body)).await;
        assert_eq!(set.status, 200, "{period}: {}", set.text);
    }
    // Usage roll-ups have hours; credit refills do not, and the document
    // says so (it once offered every period of usage).
    let hourly = json!({"remaining": 10, "refill": {"amount": 10, "every": "hour"}});
    h.send("PUT", &path, Some(&h.admin), Some(hourly)).await.assert_error(400, "invalid_input");
}
