//! The admin API's JSON bodies: whatever bytes arrive on a route that takes
//! a body, the answer is never a server error or a panic, always JSON, never
//! echoes the admin key, and anything it stored is free of control
//! characters.
#![no_main]

#[path = "clean.rs"]
mod clean;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use clean::clean_json;
use keysmith_admin::ADMIN_SCOPE;
use keysmith_core::{Engine, MemoryStore, NewKey, PolicySpec, RequestContext};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;

/// Routes with a body; `{key}` and `{policy}` are existing ids, `{admin}`
/// the calling key's own id.
const ROUTES: [(&str, &str); 9] = [
    ("POST", "/keys"),
    ("POST", "/policies"),
    ("PUT", "/policies/{policy}"),
    ("POST", "/scopes"),
    ("POST", "/keys/{key}/rotate"),
    ("POST", "/keys/{key}/revoke"),
    ("PUT", "/keys/{key}/scopes"),
    ("PUT", "/keys/{admin}/scopes"),
    ("POST", "/keys/{admin}/revoke"),
];

/// One engine and router for the whole run (building them per input would
/// make the target a hundred times slower); inputs change its state, which
/// the invariants hold whatever it is.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
    app: Router,
    admin: String,
    ids: [(&'static str, String); 3],
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (engine, app, admin, ids) = runtime.block_on(async {
            let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
            let tenant = engine.tenant("fuzz", "t");
            let admin = tenant.create_key(NewKey::new("ops").with_scopes(["keysmith:admin"])).await.unwrap();
            let key = tenant.create_key(NewKey::new("k")).await.unwrap().key;
            let policy = tenant.create_policy(PolicySpec::new("p")).await.unwrap();
            let ids = [
                ("{key}", key.id.to_string()),
                ("{policy}", policy.id.to_string()),
                ("{admin}", admin.key.id.to_string()),
            ];
            let app: Router = Router::new().nest("/v1", keysmith_admin::router(engine.clone()));
            (engine, app, admin.raw.expose().to_owned(), ids)
        });
        Fixture { runtime, engine, app, admin, ids }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let (method, template) = ROUTES[usize::from(selector) % ROUTES.len()];
    let fixture = fixture();
    let path = fixture.ids.iter().fold(template.to_owned(), |path, (name, id)| path.replace(name, id));
    fixture.runtime.block_on(async {
        let request = Request::builder()
            .method(method)
            .uri(format!("/v1{path}"))
            .header("authorization", format!("Bearer {}", fixture.admin))
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
            .unwrap();
        let response = fixture.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
        assert!(!status.is_server_error(), "{method} {template}: {status} {}", String::from_utf8_lossy(&bytes));
        let text = std::str::from_utf8(&bytes).expect("UTF-8 body");
        assert!(!text.contains(&fixture.admin), "the admin key was echoed");
        let answer: Value = serde_json::from_str(text).expect("a JSON body");
        if status.is_success() {
            assert!(clean_json(&answer), "{method} {template} stored control characters: {text}");
        } else {
            assert!(answer["error"]["code"].is_string() && answer["error"]["message"].is_string(), "{text}");
        }
        // The calling key still opens the admin API: active, and granted
        // the admin scope by its scopes and its policy. Asked of the engine
        // (what the API's layer asks) rather than with a second request,
        // whose routing and JSON cost a sixth of each run.
        let admin_scope = [ADMIN_SCOPE];
        let still_admin = RequestContext::new().with_required_scopes(&admin_scope);
        let refused = fixture.engine.validate(&fixture.admin, &still_admin).await.err();
        assert!(refused.is_none(), "{method} {template} locked the tenant out: {refused:?}");
    });
});
