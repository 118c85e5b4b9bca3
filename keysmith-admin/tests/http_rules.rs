//! The admin router's HTTP edges: CORS preflights, the client address of
//! its keys' IP allowlists, and the body limit.

mod support;

use axum::body::Body;
use axum::http::Request;
use keysmith_admin::{AdminConfig, DEFAULT_BODY_LIMIT};
use keysmith_core::NewKey;
use keysmith_core::PolicySpec;
use keysmith_core::http::{ForwardingHeader, TrustedProxies};
use keysmith_tower::ApiKeyLayer;
use support::{Harness, MOUNT, harness, harness_with, with_config};

fn preflight(path: &str) -> Request<Body> {
    Request::options(format!("{MOUNT}{path}"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "DELETE")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn preflights_never_pass_the_admin_router_even_from_a_passthrough_layer() {
    let h = harness_with(
        |engine| AdminConfig::from_layer(ApiKeyLayer::new(engine).with_preflight_passthrough(true)).into_router(),
        false,
    )
    .await;
    // Known and unknown paths answer alike: nothing says which routes exist.
    for path in ["/keys", "/keys/akey_01h455vb4pex5vsknk084sn02q", "/no-such-route", "/openapi.json"] {
        h.raw(preflight(path)).await.assert_error(401, "missing_key");
    }
    let default = harness_with(|engine| AdminConfig::new(engine).into_router(), false).await;
    default.raw(preflight("/keys")).await.assert_error(401, "missing_key");
}

#[tokio::test]
async fn the_configured_forwarding_header_decides_the_admin_client_address() {
    let proxies = TrustedProxies::parse(["10.0.0.0/8"]).unwrap().with_header(ForwardingHeader::Forwarded);
    let h = harness_with(with_config(move |config| config.with_trusted_proxies(proxies)), false).await;
    let office =
        h.tenant().create_policy(PolicySpec::new("office").with_allowed_ips(["203.0.113.0/24"])).await.unwrap();
    let key =
        h.tenant().create_key(NewKey::new("ops").with_scopes(["keysmith:admin"]).with_policy(office.id)).await.unwrap();
    let request = |name: &str, value: &str| {
        let mut request = Request::get(format!("{MOUNT}/scopes"))
            .header("authorization", format!("Bearer {}", key.raw.expose()))
            .header(name, value)
            .body(Body::empty())
            .unwrap();
        let peer: std::net::SocketAddr = "10.0.0.1:40000".parse().unwrap();
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        request
    };
    assert_eq!(h.raw(request("forwarded", "for=203.0.113.5")).await.status, 200);
    // The proxy writes `Forwarded`: an `X-Forwarded-For` is the client's own.
    h.raw(request("x-forwarded-for", "203.0.113.5")).await.assert_error(403, "ip_not_allowed");
    h.raw(request("forwarded", "for=203.0.113.5, for=unknown")).await.assert_error(403, "ip_not_allowed");
}

/// `POST {MOUNT}{path}` with the admin key and a JSON body of exactly
/// `len` bytes (`fields` plus a `metadata.pad` string that fills it up).
fn sized_post(h: &Harness, path: &str, fields: &str, len: usize) -> Request<Body> {
    let frame = format!(r#"{{{fields},"metadata":{{"pad":""}}}}"#);
    let body = frame.replacen(r#""pad":"""#, &format!(r#""pad":"{}""#, "x".repeat(len - frame.len())), 1);
    assert_eq!(body.len(), len);
    Request::post(format!("{MOUNT}{path}"))
        .header("authorization", format!("Bearer {}", h.admin))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_payload_too_large_and_changes_nothing() {
    let h = harness().await;
    let keys_before = h.get("/keys").await.ok(200)["items"].as_array().unwrap().len();
    let reply = h.raw(sized_post(&h, "/keys", r#""name":"big""#, DEFAULT_BODY_LIMIT + 1)).await;
    reply.assert_error(413, "payload_too_large");
    assert_eq!(h.get("/keys").await.ok(200)["items"].as_array().unwrap().len(), keys_before);
    let reply = h.raw(sized_post(&h, "/policies", r#""name":"big""#, DEFAULT_BODY_LIMIT + 1)).await;
    reply.assert_error(413, "payload_too_large");
    assert_eq!(h.get("/policies").await.ok(200)["items"], serde_json::json!([]));

    // A body of exactly the limit is read: here the engine refuses its
    // metadata, larger than a key's metadata may be.
    let reply = h.raw(sized_post(&h, "/keys", r#""name":"at the limit""#, DEFAULT_BODY_LIMIT)).await;
    reply.assert_error(400, "invalid_input");
    assert!(reply.text.contains("metadata"), "{}", reply.text);
    let largest = keysmith_core::MAX_METADATA_BYTES + r#"{"name":"largest","metadata":}"#.len();
    let reply = h.raw(sized_post(&h, "/keys", r#""name":"largest""#, largest)).await;
    assert_eq!(reply.ok(201)["key"]["name"], "largest");
    assert_eq!(h.get("/keys").await.ok(200)["items"].as_array().unwrap().len(), keys_before + 1);
}

#[tokio::test]
async fn the_body_limit_is_configurable() {
    let h = harness_with(with_config(|config| config.with_body_limit(1024)), false).await;
    h.raw(sized_post(&h, "/keys", r#""name":"big""#, 1025)).await.assert_error(413, "payload_too_large");
    h.raw(sized_post(&h, "/keys", r#""name":"small""#, 1024)).await.ok(201);
}
