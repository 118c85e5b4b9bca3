//! `AdminConfig::with_problem_details`: every error of the admin API, the
//! key layer's refusals included, as RFC 9457 `application/problem+json`,
//! with the same statuses, headers and codes; successes untouched.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use keysmith_admin::AdminConfig;
use keysmith_core::{Engine, MemoryStore, NewKey};
use tower::ServiceExt as _;

struct Answer {
    status: u16,
    content_type: Option<String>,
    allow: Option<String>,
    body: serde_json::Value,
}

async fn send(app: &Router, method: &str, path: &str, key: Option<&str>) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (status, content_type, allow) = (response.status().as_u16(), header("content-type"), header("allow"));
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    Answer { status, content_type, allow, body: serde_json::from_slice(&bytes).unwrap_or_default() }
}

#[tokio::test]
async fn problem_details_render_every_error_and_leave_successes_alone() {
    let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
    let admin =
        engine.tenant("app", "acme").create_key(NewKey::new("ops").with_scopes(["keysmith:admin"])).await.unwrap();
    let key = admin.raw.expose();
    let app: Router = Router::new().nest("/v1", AdminConfig::new(engine.clone()).with_problem_details().into_router());

    let cases = [
        ("GET", "/v1/keys", None, 401, "missing_key"),
        ("GET", "/v1/keys/kpol_01h455vb4pex5vsknk084sn02q", Some(key), 400, "invalid_id"),
        ("GET", "/v1/keys/akey_01h455vb4pex5vsknk084sn02q", Some(key), 404, "not_found"),
        ("GET", "/v1/nowhere", Some(key), 404, "route_not_found"),
        ("DELETE", "/v1/keys", Some(key), 405, "method_not_allowed"),
    ];
    for (method, path, key, status, code) in cases {
        let answer = send(&app, method, path, key).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
        assert_eq!(answer.content_type.as_deref(), Some("application/problem+json"), "{method} {path}");
        assert_eq!(answer.body["code"], code, "{method} {path}: {}", answer.body);
        assert_eq!(answer.body["type"], format!("urn:keysmith:problem:{code}"));
        assert_eq!(answer.body["status"], status);
        assert!(answer.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{}", answer.body);
        assert!(answer.body.get("error").is_none(), "one format, not both: {}", answer.body);
    }
    let not_allowed = send(&app, "DELETE", "/v1/keys", Some(key)).await;
    assert!(not_allowed.allow.is_some_and(|allow| allow.contains("GET")), "headers are kept");

    let listed = send(&app, "GET", "/v1/keys", Some(key)).await;
    assert_eq!((listed.status, listed.content_type.as_deref()), (200, Some("application/json")));
    assert!(listed.body.get("error").is_none() && listed.body.get("type").is_none(), "{}", listed.body);

    // Without the option: today's JSON body.
    let plain: Router = Router::new().nest("/v1", keysmith_admin::router(engine.clone()));
    let answer = send(&plain, "GET", "/v1/keys/akey_01h455vb4pex5vsknk084sn02q", Some(key)).await;
    assert_eq!(
        (answer.content_type.as_deref(), &answer.body["error"]["code"]),
        (Some("application/json"), &serde_json::json!("not_found"))
    );
}
