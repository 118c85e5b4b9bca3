//! The HTTP conformance cases on the tower/axum adapter.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use keysmith_core::Engine;
use keysmith_tests::http_conformance::{Harness, HarnessOptions, TestRequest, TestResponse};
use keysmith_tower::{ApiKey, ApiKeyLayer, RequireScopes, problem_refusal_response};
use tower::ServiceExt;

/// The routes behind the layer, added as the documentation wires it
/// (`Router::layer`, so it sees axum's `MatchedPath`); `/fail`, a service
/// that errors, behind the same layer (no `Router` route can fail); and the
/// routes outside it.
struct TowerHarness {
    guarded: Router,
    failing: tower::util::BoxCloneSyncService<Request<Body>, axum::response::Response, std::io::Error>,
    outside: Router,
}

fn key_json(key: Option<&ApiKey>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "key": key.map(|k| k.id().to_string()) }))
}

impl Harness for TowerHarness {
    async fn start(engine: Engine, options: HarnessOptions) -> Self {
        let mut layer = ApiKeyLayer::new(engine)
            .with_realm(options.realm)
            .with_trusted_proxies(options.trusted_proxies)
            .with_preflight_passthrough(options.preflight_passthrough)
            .with_rate_limit_headers(options.rate_limit_headers)
            .with_usage_endpoint(options.usage_endpoint);
        if let Some(sources) = options.key_sources {
            layer = layer.with_key_sources(sources);
        }
        if let Some(app_id) = options.app_id {
            layer = layer.with_app_id(app_id);
        }
        if options.problem_details {
            layer = layer.with_responder(problem_refusal_response);
        }
        if options.optional {
            layer = layer.optional();
        }
        let guarded = Router::new()
            .route("/scoped/all", get(|| async { "ok" }))
            .route_layer(RequireScopes::all(["read:users", "write:users"]))
            .route("/scoped/any", get(|| async { "ok" }).layer(RequireScopes::any(["admin", "write:users"])))
            .route(
                "/whoami",
                get(|key: Option<ApiKey>| async move { key_json(key.as_ref()) })
                    .options(|| async { StatusCode::NO_CONTENT }),
            )
            .route("/key", get(|key: ApiKey| async move { key_json(Some(&key)) }))
            .route("/teapot", get(|_: ApiKey| async { StatusCode::IM_A_TEAPOT.into_response() }))
            .route("/users/{id}", get(|| async { "a user" }))
            .layer(layer.clone());
        // `/fail`: a service that errors, behind the layer; its error is
        // answered with 500, as hyper does.
        let failing = tower::service_fn(|_: Request<Body>| async {
            Err::<axum::response::Response, _>(std::io::Error::other("the inner service failed"))
        });
        let failing = tower::util::BoxCloneSyncService::new(tower::ServiceBuilder::new().layer(layer).service(failing));
        let outside = Router::new()
            .route("/outside/key", get(|key: ApiKey| async move { key_json(Some(&key)) }))
            .route("/outside/whoami", get(|key: Option<ApiKey>| async move { key_json(key.as_ref()) }));
        Self { guarded, failing, outside }
    }

    async fn send(&self, request: TestRequest) -> TestResponse {
        let mut builder = Request::builder().method(request.method.as_str()).uri(request.path.as_str());
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_slice());
        }
        let mut http_request = builder.body(Body::empty()).expect("request");
        if let Some(peer) = request.peer {
            http_request.extensions_mut().insert(ConnectInfo(SocketAddr::new(peer, 40_000)));
        }
        let response = if request.path.starts_with("/outside/") {
            self.outside.clone().oneshot(http_request).await.expect("infallible")
        } else if request.path == "/fail" {
            match self.failing.clone().oneshot(http_request).await {
                Ok(response) => response,
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        } else {
            self.guarded.clone().oneshot(http_request).await.expect("infallible")
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body").to_vec();
        TestResponse { status, headers, body }
    }
}

keysmith_tests::http_conformance_tests!(TowerHarness);
