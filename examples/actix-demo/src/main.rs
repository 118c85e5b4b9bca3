//! Keysmith behind actix-web: every route but the probes (`/health`,
//! `/ready`, and `/metrics` with `KEYSMITH_METRICS=1`) needs an API key,
//! two routes need scopes, and one demo key is rate limited. The same API
//! as the axum demo, on port 3001.
//!
//! ```sh
//! cargo run -p example-actix                                   # SQLite in ./keysmith-demo.db
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run -p example-actix
//! PORT=8080 cargo run -p example-actix
//! ```
//!
//! GitHub's secret scanning alerts are answered at
//! `POST /keysmith/v1/secret-scanning/github` (keys fetched from
//! `KEYSMITH_GITHUB_KEYS_URL`, GitHub's by default).
//!
//! On start it migrates the store, creates fresh keys and prints them as
//! `KEYSMITH_DEMO_*_KEY=…` lines, followed by curl commands to try.
//! Ctrl-C (or SIGTERM) stops the server gracefully and writes the queued
//! usage records. The limits are the axum demo's: a client that has not
//! sent a whole request head within `KEYSMITH_HEADER_TIMEOUT` seconds
//! (default 10) gets 408 and is disconnected, and on shutdown requests in
//! flight get `KEYSMITH_SHUTDOWN_TIMEOUT` seconds (default 10) before the
//! workers are stopped.

use std::net::Ipv4Addr;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderValue;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use demo_support::{APP_ID, NewUser, PrometheusHandle, REALM, Settings, Users};
use keysmith_actix::{ApiKey, ApiKeyMiddleware, RequireScopes};
use keysmith_admin::GithubSecretScanning;
use keysmith_admin::secret_scanning::{KEY_IDENTIFIER_HEADER, SIGNATURE_HEADER};
use keysmith_core::Engine;

/// How long a connection being closed may take to flush and shut down
/// before it is dropped: a client that stops reading cannot hold it open.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    demo_support::init_logging()?;
    let settings = Settings::from_env(3001)?;
    let engine = demo_support::open_engine(&settings).await?;
    let metrics = demo_support::install_metrics(&settings)?;
    let keys = demo_support::create_demo_keys(&engine).await?;

    // Built here, not in the per-worker closure: the engine's usage writer
    // then runs on this runtime, which outlives the workers.
    let keysmith = ApiKeyMiddleware::new(engine.clone()).with_realm(REALM).with_app_id(APP_ID);
    let users = Users::default();
    let app_engine = engine.clone();
    let scanning = demo_support::secret_scanning(&engine);
    let server = HttpServer::new(move || {
        let probes = Probes { engine: app_engine.clone(), metrics: metrics.clone() };
        App::new().configure(routes(keysmith.clone(), probes, users.clone(), scanning.clone()))
    })
    // The same limits as the axum demo and `keysmith serve`.
    .client_request_timeout(settings.header_timeout)
    .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
    .shutdown_timeout(settings.shutdown_timeout.as_secs())
    .bind((Ipv4Addr::LOCALHOST, settings.port))?
    .shutdown_signal(demo_support::shutdown_signal());
    let base = match server.addrs().first() {
        Some(addr) => format!("http://{addr}"),
        None => format!("http://{}:{}", Ipv4Addr::LOCALHOST, settings.port),
    };
    demo_support::print_instructions("actix-web", &base, &settings.database_url, &keys);

    server.run().await?;
    demo_support::finish(&engine).await;
    Ok(())
}

/// What the probe routes answer from: the engine, and the metrics recorder
/// when `/metrics` is served.
#[derive(Clone)]
struct Probes {
    engine: Engine,
    metrics: Option<PrometheusHandle>,
}

/// The routes: the probes are public, GitHub's secret scanning alerts are
/// authenticated by GitHub's signature, everything else goes through
/// `keysmith`.
fn routes(
    keysmith: ApiKeyMiddleware, probes: Probes, users: Users, scanning: GithubSecretScanning,
) -> impl FnOnce(&mut web::ServiceConfig) {
    move |config| {
        let metrics = probes.metrics.is_some();
        config
            .app_data(web::Data::new(probes))
            .app_data(web::Data::new(users))
            .service(get_route("/health", health))
            .service(get_route("/ready", ready));
        if metrics {
            config.service(get_route("/metrics", metrics_text));
        }
        config.app_data(web::Data::new(scanning)).route(GITHUB_ALERTS, web::post().to(github_alert));
        config.service(
            web::scope("").wrap(keysmith).service(get_route("/me", me)).service(
                web::resource("/users")
                    .route(web::get().to(list_users).wrap(RequireScopes::all(["read:users"])))
                    .route(web::head().to(list_users).wrap(RequireScopes::all(["read:users"])))
                    .route(web::post().to(create_user).wrap(RequireScopes::all(["write:users"])))
                    .default_service(web::to(|| async { method_not_allowed("GET,HEAD,POST") })),
            ),
        );
    }
}

/// A route as axum's `get` makes it, so that both demos answer alike: GET
/// and HEAD answer (HEAD without the body), any other method is 405 with
/// `Allow`.
fn get_route<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(|| async { method_not_allowed("GET,HEAD") }))
}

/// 405, naming the methods the route answers.
fn method_not_allowed(allowed: &'static str) -> HttpResponse {
    HttpResponse::MethodNotAllowed().insert_header(("allow", allowed)).finish()
}

/// `GET /health`: 200 while the demo serves (liveness), as
/// `keysmith_admin::HealthConfig` answers it.
async fn health() -> HttpResponse {
    HttpResponse::Ok().insert_header(NO_STORE).json(serde_json::json!({ "status": "ok" }))
}

/// `GET /ready`: the store and the change feed (see `demo_support::ready`).
async fn ready(probes: web::Data<Probes>) -> HttpResponse {
    let (status, body) = demo_support::ready(&probes.engine).await;
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE))
        .insert_header(NO_STORE)
        .json(body)
}

/// `GET /metrics` (only routed with `KEYSMITH_METRICS=1`).
async fn metrics_text(probes: web::Data<Probes>) -> HttpResponse {
    let Some(handle) = &probes.metrics else { return HttpResponse::NotFound().finish() };
    HttpResponse::Ok()
        .insert_header(NO_STORE)
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(demo_support::metrics_text(handle))
}

/// Probes answer the present: no cache may keep them.
const NO_STORE: (actix_web::http::header::HeaderName, HeaderValue) =
    (actix_web::http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));

async fn me(key: ApiKey) -> HttpResponse {
    HttpResponse::Ok().json(demo_support::me(&key))
}

async fn list_users(users: web::Data<Users>) -> HttpResponse {
    HttpResponse::Ok().json(users.list())
}

/// Where GitHub posts secret scanning alerts (the path the axum demo and
/// `keysmith serve` use too).
const GITHUB_ALERTS: &str = "/keysmith/v1/secret-scanning/github";

/// Reads the body up to the cap and hands it to keysmith-admin's endpoint,
/// which verifies GitHub's signature before anything else.
async fn github_alert(
    scanning: web::Data<GithubSecretScanning>, request: HttpRequest, payload: web::Payload,
) -> HttpResponse {
    let answer = match payload.to_bytes_limited(scanning.max_body()).await {
        Ok(Ok(body)) => {
            let header = |name: &str| request.headers().get(name).map(HeaderValue::as_bytes);
            scanning.handle(header(KEY_IDENTIFIER_HEADER), header(SIGNATURE_HEADER), &body).await
        }
        Ok(Err(_)) => scanning.unreadable(),
        Err(_) => scanning.too_large(),
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).content_type("application/json").body(answer.body)
}

async fn create_user(users: web::Data<Users>, key: ApiKey, new: web::Json<NewUser>) -> HttpResponse {
    HttpResponse::Created().json(users.create(new.into_inner(), &key))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_web::test;
    use demo_support::DemoKeys;
    use keysmith_core::{ManualClock, MemoryStore, RawKey};

    use super::*;

    /// The demo's routes on a memory store, and its keys.
    async fn demo() -> (impl FnOnce(&mut web::ServiceConfig), DemoKeys) {
        let clock = ManualClock::new(chrono::DateTime::UNIX_EPOCH);
        let engine = Engine::builder(Arc::new(MemoryStore::new())).with_clock(clock).build().unwrap();
        let keys = demo_support::create_demo_keys(&engine).await.unwrap();
        let keysmith = ApiKeyMiddleware::new(engine.clone()).with_realm(REALM).with_app_id(APP_ID);
        let probes = Probes { engine: engine.clone(), metrics: None };
        (routes(keysmith, probes, Users::default(), GithubSecretScanning::new(engine)), keys)
    }

    fn request(method: &str, path: &str, key: Option<&RawKey>) -> test::TestRequest {
        let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request =
            test::TestRequest::default().method(method.clone()).uri(path).peer_addr("127.0.0.1:50000".parse().unwrap());
        if let Some(key) = key {
            request = request.insert_header(("authorization", format!("Bearer {}", key.expose())));
        }
        if method == actix_web::http::Method::POST {
            request = request.set_json(serde_json::json!({ "name": "Grace" }));
        }
        request
    }

    #[actix_web::test]
    async fn routes_need_the_documented_keys_and_scopes() {
        let (routes, keys) = demo().await;
        let app = test::init_service(App::new().configure(routes)).await;
        let status = |method, path, key| {
            let request = request(method, path, key).to_request();
            let app = &app;
            async move { test::call_service(app, request).await.status().as_u16() }
        };
        assert_eq!(status("GET", "/health", None).await, 200);
        // The probes answer as the axum demo's: HEAD too, 405 to the rest.
        for (method, path, expected) in [("HEAD", "/health", 200), ("HEAD", "/ready", 200), ("POST", "/ready", 405)] {
            assert_eq!(status(method, path, None).await, expected, "{method} {path}");
        }
        assert_eq!(status("GET", "/me", None).await, 401);
        assert_eq!(status("GET", "/me", Some(&keys.read)).await, 200);
        assert_eq!(status("GET", "/users", Some(&keys.read)).await, 200);
        assert_eq!(status("POST", "/users", Some(&keys.read)).await, 403);
        assert_eq!(status("POST", "/users", Some(&keys.admin)).await, 201);
        assert_eq!(status("GET", "/users", Some(&keys.admin)).await, 200);
        // The same routes as the axum demo's: a GET route answers HEAD,
        // another method is 405 naming the allowed ones.
        assert_eq!(status("HEAD", "/me", Some(&keys.read)).await, 200);
        assert_eq!(status("HEAD", "/users", Some(&keys.read)).await, 200);
        for (path, allowed) in [("/me", "GET,HEAD"), ("/users", "GET,HEAD,POST")] {
            let response = test::call_service(&app, request("DELETE", path, Some(&keys.admin)).to_request()).await;
            assert_eq!(response.status().as_u16(), 405, "DELETE {path}");
            assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some(allowed), "{path}");
        }
    }

    #[actix_web::test]
    async fn created_users_are_listed_with_the_key_that_made_them() {
        let (routes, keys) = demo().await;
        let app = test::init_service(App::new().configure(routes)).await;
        let created: serde_json::Value =
            test::call_and_read_body_json(&app, request("POST", "/users", Some(&keys.admin)).to_request()).await;
        assert_eq!(created["name"], "Grace");
        let me: serde_json::Value =
            test::call_and_read_body_json(&app, request("GET", "/me", Some(&keys.admin)).to_request()).await;
        assert_eq!(created["created_by"], me["id"]);
        assert_eq!(me["app"], APP_ID);
        let listed: serde_json::Value =
            test::call_and_read_body_json(&app, request("GET", "/users", Some(&keys.read)).to_request()).await;
        assert_eq!(listed.as_array().map(Vec::len), Some(3));
    }

    #[actix_web::test]
    async fn limited_key_gets_429_on_its_fourth_request() {
        let (routes, keys) = demo().await;
        let app = test::init_service(App::new().configure(routes)).await;
        for remaining in ["2", "1", "0"] {
            let response = test::call_service(&app, request("GET", "/users", Some(&keys.limited)).to_request()).await;
            assert_eq!(response.status(), 200);
            let state = response.headers().get("ratelimit").unwrap().to_str().unwrap();
            assert!(state.starts_with(&format!("\"default\";r={remaining};")), "{state}");
        }
        let response = test::call_service(&app, request("GET", "/users", Some(&keys.limited)).to_request()).await;
        assert_eq!(response.status(), 429);
        assert!(response.headers().contains_key("retry-after"));
    }

    #[actix_web::test]
    async fn a_signed_github_alert_revokes_the_leaked_demo_key_without_an_api_key() {
        let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
        let keys = demo_support::create_demo_keys(&engine).await.unwrap();
        let github = keysmith_tests::github::FakeGithub::start().await;
        let keysmith = ApiKeyMiddleware::new(engine.clone()).with_realm(REALM).with_app_id(APP_ID);
        let scanning = GithubSecretScanning::new(engine.clone()).with_keys_url(github.keys_url());
        let app = test::init_service(App::new().configure(routes(
            keysmith,
            Probes { engine, metrics: None },
            Users::default(),
            scanning,
        )))
        .await;
        let body = keysmith_tests::github::alert_body(&[keys.read.expose()]);
        let alert = |body: String, signature: String| {
            test::TestRequest::post()
                .uri(GITHUB_ALERTS)
                .insert_header(("github-public-key-identifier", github.identifier().to_owned()))
                .insert_header(("github-public-key-signature", signature))
                .set_payload(body)
                .to_request()
        };

        let forged = test::call_service(&app, alert(body.clone(), github.sign(b"[]"))).await;
        assert_eq!(forged.status(), 401);
        let response = test::call_service(&app, alert(body.clone(), github.sign(body.as_bytes()))).await;
        assert_eq!(response.status(), 200);
        let feedback: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(feedback[0]["label"], "true_positive");

        let me = test::call_service(&app, request("GET", "/me", Some(&keys.read)).to_request()).await;
        assert_eq!(me.status(), 401, "the leaked key is revoked");
        let huge = "x".repeat(GithubSecretScanning::DEFAULT_MAX_BODY + 1);
        let too_large = test::call_service(&app, alert(huge, github.sign(b"x"))).await;
        assert_eq!(too_large.status(), 413);
    }
}
