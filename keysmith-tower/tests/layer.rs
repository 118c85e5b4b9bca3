//! Wiring of the tower adapter beyond the shared conformance cases: the
//! layer missing, custom responders, plain tower services.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::routing::get;
use keysmith_core::{Engine, MemoryStore, NewKey, PolicySpec};
use keysmith_tower::{ApiKey, ApiKeyLayer, RequireScopes, default_refusal_response};
use tower::{Layer, Service, ServiceExt, service_fn};

async fn engine_and_key(scopes: &[&str]) -> (Engine, String) {
    let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
    let created =
        engine.tenant("app", "acme").create_key(NewKey::new("k").with_scopes(scopes.iter().copied())).await.unwrap();
    (engine, created.raw.expose().to_owned())
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 16).await.unwrap();
    (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn api_key_extractor_without_the_layer_is_500_naming_the_layer() {
    let app = Router::new()
        .route("/required", get(|_: ApiKey| async { "unreachable" }))
        .route("/optional", get(|key: Option<ApiKey>| async move { if key.is_none() { "none" } else { "some" } }))
        .route("/scoped", get(|| async { "unreachable" }).layer(RequireScopes::all(["read"])));
    // `Option<ApiKey>` is `None` without the layer, as in keysmith-actix.
    let response = app.clone().oneshot(get_req("/optional")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&axum::body::to_bytes(response.into_body(), 64).await.unwrap()[..], b"none");
    for path in ["/required", "/scoped"] {
        let (status, headers, body) = send(&app, get_req(path)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(headers["content-type"], "application/json");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("ApiKeyLayer"), "{path}: {message}");
    }
}

#[tokio::test]
async fn custom_responder_renders_every_refusal() {
    let (engine, raw) = engine_and_key(&["read"]).await;
    let layer = ApiKeyLayer::new(engine).optional().with_responder(|refusal| {
        let mut response = default_refusal_response(refusal);
        *response.body_mut() = format!("{{\"problem\":\"{}\"}}", refusal.code);
        response.headers_mut().insert("content-type", "application/problem+json".parse().unwrap());
        response
    });
    let app = Router::new()
        .route("/admin", get(|| async { "admin" }).layer(RequireScopes::all(["admin"])))
        .route("/me", get(|key: ApiKey| async move { key.name().to_owned() }))
        .layer(layer);

    // From the layer itself.
    let bad = Request::get("/me").header("x-api-key", "nope").body(Body::empty()).unwrap();
    let (status, headers, body) = send(&app, bad).await;
    assert_eq!((status, body["problem"].as_str()), (StatusCode::UNAUTHORIZED, Some("malformed_key")));
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(headers.contains_key("www-authenticate"), "the default headers are kept");
    // From RequireScopes.
    let reader = Request::get("/admin").header("x-api-key", &raw).body(Body::empty()).unwrap();
    let (status, _, body) = send(&app, reader).await;
    assert_eq!((status, body["problem"].as_str()), (StatusCode::FORBIDDEN, Some("insufficient_scope")));
    // From the extractor, for a keyless request in optional mode.
    let (status, _, body) = send(&app, get_req("/me")).await;
    assert_eq!((status, body["problem"].as_str()), (StatusCode::UNAUTHORIZED, Some("missing_key")));
}

#[tokio::test]
async fn plain_tower_services_get_the_key_rate_limit_headers_and_keep_their_error_type() {
    let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("p").with_rate_limit(5, Duration::from_secs(60))).await.unwrap();
    let created = acme.create_key(NewKey::new("svc").with_policy(policy.id)).await.unwrap();

    #[derive(Debug, PartialEq)]
    struct Boom;
    let inner = service_fn(|request: Request<String>| async move {
        let Some(key) = ApiKey::from_extensions(request.extensions()) else {
            return Ok(Response::new("anonymous".to_owned()));
        };
        if request.uri().path() == "/fail" {
            return Err(Boom);
        }
        Ok(Response::new(key.name().to_owned()))
    });
    let service = ApiKeyLayer::new(engine.clone()).layer(inner);

    let request = Request::get("/").header("x-api-key", created.raw.expose()).body(String::new()).unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.body(), "svc");
    assert!(response.headers()["ratelimit-policy"].to_str().unwrap().starts_with(r#""default";q=5;"#));
    assert!(response.headers()["ratelimit"].to_str().unwrap().starts_with(r#""default";r=4;"#));

    let failing = Request::get("/fail").header("x-api-key", created.raw.expose()).body(String::new()).unwrap();
    assert_eq!(service.clone().oneshot(failing).await.unwrap_err(), Boom);

    let refused = service.oneshot(Request::get("/").body(String::new()).unwrap()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.body().contains("missing_key"));
}

/// An inner service that answers only the instance `poll_ready` readied,
/// once per readiness, as tower's `ConcurrencyLimit` or `Buffer` do; a
/// clone starts unready. Clones are counted (a boxed axum route's clone
/// allocates).
struct Strict {
    ready: bool,
    clones: Arc<std::sync::atomic::AtomicUsize>,
}

impl Clone for Strict {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self { ready: false, clones: Arc::clone(&self.clones) }
    }
}

impl tower::Service<Request<String>> for Strict {
    type Response = Response<String>;
    type Error = &'static str;
    type Future = std::future::Ready<Result<Response<String>, &'static str>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), &'static str>> {
        self.ready = true;
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        if !std::mem::take(&mut self.ready) {
            return std::future::ready(Err("called without poll_ready"));
        }
        let who =
            ApiKey::from_extensions(request.extensions()).map_or("anonymous".to_owned(), |key| key.name().to_owned());
        std::future::ready(Ok(Response::new(who)))
    }
}

#[tokio::test]
async fn the_inner_service_called_is_the_one_polled_ready_and_is_cloned_only_for_a_deferred_call() {
    // A key that passes at once (the memory store) is called through the
    // instance the layer polled; an anonymous request in optional mode
    // goes through the future. One service, readied before each call, as
    // a server drives it.
    let (engine, raw) = engine_and_key(&[]).await;
    let clones = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inner = Strict { ready: false, clones: Arc::clone(&clones) };
    let mut service = ApiKeyLayer::new(engine).optional().layer(inner);
    let cloned = || clones.load(std::sync::atomic::Ordering::Relaxed);
    for round in 0..3 {
        let keyed = Request::get("/").header("x-api-key", &raw).body(String::new()).unwrap();
        let response = service.ready().await.unwrap().call(keyed).await;
        assert_eq!(response.map(Response::into_body), Ok("k".to_owned()), "keyed, round {round}");
        let bad = Request::get("/").header("x-api-key", "sk_live_not-a-key").body(String::new()).unwrap();
        let response = service.ready().await.unwrap().call(bad).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "round {round}");
        // Neither a key that passed at once nor a refusal clones the inner
        // service; the anonymous request, answered through the future,
        // takes the instance polled ready and leaves a clone in its place.
        assert_eq!(cloned(), round, "keyed and refused, round {round}");
        let anonymous = Request::get("/").body(String::new()).unwrap();
        let response = service.ready().await.unwrap().call(anonymous).await;
        assert_eq!(response.map(Response::into_body), Ok("anonymous".to_owned()), "anonymous, round {round}");
        assert_eq!(cloned(), round + 1, "anonymous, round {round}");
    }
}

#[tokio::test]
async fn preflights_need_a_key_by_default_and_passthrough_is_opt_in() {
    let (engine, _) = engine_and_key(&[]).await;
    let app = |layer: ApiKeyLayer| {
        Router::new().route("/x", get(|| async { "x" }).options(|| async { StatusCode::NO_CONTENT })).layer(layer)
    };
    let preflight =
        || Request::options("/x").header("access-control-request-method", "GET").body(Body::empty()).unwrap();
    let (status, _, body) = send(&app(ApiKeyLayer::new(engine.clone())), preflight()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("missing_key")));
    let passthrough = app(ApiKeyLayer::new(engine).with_preflight_passthrough(true));
    assert_eq!(send(&passthrough, preflight()).await.0, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_cors_layer_outside_answers_preflights_and_handlers_stay_behind_the_key() {
    use axum::http::{HeaderValue, Method};
    use tower_http::cors::CorsLayer;

    let (engine, raw) = engine_and_key(&[]).await;
    let cors = CorsLayer::new()
        .allow_origin(HeaderValue::from_static("https://app.example.com"))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([axum::http::header::AUTHORIZATION]);
    let app = Router::new()
        .route("/data", axum::routing::any(|| async { "protected data" }))
        .layer(ApiKeyLayer::new(engine))
        .layer(cors);

    let preflight = Request::options("/data")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&app, preflight).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(body, serde_json::Value::Null, "answered by the CORS layer, not the handler");

    // tower-http answers every OPTIONS itself; the handler is not reached.
    let options = Request::options("/data").header("origin", "https://app.example.com").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(options).await.unwrap();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    assert!(bytes.is_empty(), "{bytes:?}");
    // Other methods reach `any()` only with a key; refusals get CORS headers.
    let get = Request::get("/data").header("origin", "https://app.example.com").body(Body::empty()).unwrap();
    let (status, headers, body) = send(&app, get).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("missing_key")));
    assert_eq!(headers["access-control-allow-origin"], "https://app.example.com");
    let with_key = Request::post("/data").header("authorization", format!("Bearer {raw}")).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(with_key).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    assert_eq!(&bytes[..], b"protected data");
}

#[tokio::test]
async fn options_to_an_any_handler_needs_a_key_preflight_or_not() {
    let (engine, _) = engine_and_key(&[]).await;
    let app =
        Router::new().route("/data", axum::routing::any(|| async { "protected data" })).layer(ApiKeyLayer::new(engine));
    let plain = Request::options("/data").body(Body::empty()).unwrap();
    let preflight =
        Request::options("/data").header("access-control-request-method", "GET").body(Body::empty()).unwrap();
    for request in [plain, preflight] {
        let (status, _, body) = send(&app, request).await;
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("missing_key")));
    }
}

/// The endpoints the reader key's usage records name, sorted.
async fn recorded_endpoints(engine: &Engine) -> Vec<String> {
    engine.flush_usage().await;
    let acme = engine.tenant("app", "acme");
    let key = acme.list_keys(&keysmith_core::store::KeyFilter::default()).await.unwrap().remove(0);
    let records = acme.list_usage(key.id, Default::default(), Default::default()).await.unwrap();
    let mut endpoints: Vec<String> = records.iter().map(|record| record.endpoint.to_string()).collect();
    endpoints.sort_unstable();
    endpoints
}

fn authorized(path: &str, raw: &str) -> Request<Body> {
    Request::get(path).header("x-api-key", raw).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn a_layer_inside_a_nested_router_records_the_whole_route_template() {
    let (engine, raw) = engine_and_key(&[]).await;
    let users = Router::new().route("/users/{id}", get(|| async { "a user" })).layer(ApiKeyLayer::new(engine.clone()));
    let app = Router::new().nest("/v1", users);
    for path in ["/v1/users/7", "/v1/users/alice@example.com"] {
        assert_eq!(send(&app, authorized(path, &raw)).await.0, StatusCode::OK, "{path}");
    }
    assert_eq!(recorded_endpoints(&engine).await, ["/v1/users/{id}", "/v1/users/{id}"]);
}

/// A layer wrapped around a whole `Router` (not added with `Router::layer`)
/// runs before axum has matched a route, so it cannot know the template:
/// its records say `unmatched`, and never the path the client sent.
#[tokio::test]
async fn a_layer_wrapped_around_a_whole_router_records_unmatched_never_the_path() {
    let (engine, raw) = engine_and_key(&[]).await;
    let router = Router::new().route("/users/{id}", get(|| async { "a user" }));
    let app = ApiKeyLayer::new(engine.clone()).layer(router);
    let response = app.oneshot(authorized("/users/alice@example.com", &raw)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(recorded_endpoints(&engine).await, [keysmith_core::http::UNMATCHED_ROUTE]);
}
