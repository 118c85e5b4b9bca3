//! Keysmith behind axum: every route but the probes (`/health`, `/ready`,
//! and `/metrics` with `KEYSMITH_METRICS=1`) needs an API key, two routes
//! need scopes, one demo key is rate limited, the REST management API
//! (`keysmith-admin`) is mounted at `/keysmith/v1` and its dashboard at
//! `/keysmith/ui/`.
//!
//! ```sh
//! cargo run -p example-axum                                   # SQLite in ./keysmith-demo.db
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run -p example-axum
//! PORT=8080 cargo run -p example-axum
//! ```
//!
//! On start it migrates the store, creates fresh keys and prints them as
//! `KEYSMITH_DEMO_*_KEY=…` lines, followed by curl commands to try.
//! Ctrl-C (or SIGTERM) stops the server gracefully and writes the queued
//! usage records. It is served by `keysmith_admin::Server`, as `keysmith
//! serve` is: a client that has not sent a whole request head within
//! `KEYSMITH_HEADER_TIMEOUT` seconds (default 10) is disconnected, and on
//! shutdown requests in flight get `KEYSMITH_SHUTDOWN_TIMEOUT` seconds
//! (default 10) before open connections are dropped.

use std::net::Ipv4Addr;

use axum::extract::State;
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use demo_support::{APP_ID, NewUser, REALM, Settings, User, Users};
use keysmith_admin::{AdminConfig, GithubSecretScanning, HealthConfig, Server};
use keysmith_core::Engine;
use keysmith_tower::{ApiKey, ApiKeyLayer, RequireScopes};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    demo_support::init_logging()?;
    let settings = Settings::from_env(3000)?;
    let engine = demo_support::open_engine(&settings).await?;
    let metrics = demo_support::install_metrics(&settings)?;
    let keys = demo_support::create_demo_keys(&engine).await?;
    let mut probes = HealthConfig::new(engine.clone());
    if let Some(handle) = metrics {
        probes = probes.with_metrics(handle);
    }
    let app = app(engine.clone(), demo_support::secret_scanning(&engine), probes);
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, settings.port)).await?;
    let base = format!("http://{}", listener.local_addr()?);
    // Handled from before the address is printed.
    let stop = demo_support::shutdown_signal();
    demo_support::print_instructions("axum", &base, &settings.database_url, &keys);
    print_admin_instructions(&base);

    let stopped = Server::new()
        .with_header_timeout(settings.header_timeout)
        .with_shutdown_timeout(settings.shutdown_timeout)
        .serve(listener, app, stop)
        .await;
    if stopped.dropped_connections > 0 {
        println!("Shutdown deadline passed; open connections dropped: {}.", stopped.dropped_connections);
    }
    demo_support::finish(&engine).await;
    Ok(())
}

/// The routes: the probes (`/health`, `/ready`, `/metrics` if configured)
/// are public, everything else needs a key, and the
/// management API under `/keysmith/v1` needs a `keysmith:admin` key. The
/// dashboard at `/keysmith/ui/` is static files: it signs in with an admin
/// key and calls the management API. GitHub posts secret scanning alerts
/// to `/keysmith/v1/secret-scanning/github`, signed, with no key.
fn app(engine: Engine, scanning: GithubSecretScanning, probes: HealthConfig) -> Router {
    let users = Users::default();
    let api = Router::new()
        .route("/me", get(me))
        .route(
            "/users",
            get(list_users.layer(RequireScopes::all(["read:users"])))
                .post(create_user.layer(RequireScopes::all(["write:users"]))),
        )
        .with_state(users)
        .layer(ApiKeyLayer::new(engine.clone()).with_realm(REALM).with_app_id(APP_ID));
    let admin = AdminConfig::new(engine.clone())
        .with_realm(REALM)
        .with_app_id(APP_ID)
        .with_secret_scanning(scanning)
        .into_router();
    probes
        .into_router()
        .merge(api)
        .nest("/keysmith/v1", admin)
        .nest_service("/keysmith/ui", keysmith_admin::ui_router())
}

/// curl commands for the management API, after the shared instructions.
fn print_admin_instructions(base: &str) {
    println!();
    println!("The REST management API (keysmith-admin) is at {base}/keysmith/v1; the admin key works with it:");
    println!("  curl -H \"Authorization: Bearer $KEYSMITH_DEMO_ADMIN_KEY\" {base}/keysmith/v1/keys");
    println!(
        "  curl -X POST -H \"Authorization: Bearer $KEYSMITH_DEMO_ADMIN_KEY\" -H 'content-type: application/json' \
         -d '{{\"name\":\"ci\",\"scopes\":[\"read:users\"]}}' {base}/keysmith/v1/keys    # raw_key is shown once"
    );
    println!("  curl -H \"Authorization: Bearer $KEYSMITH_DEMO_ADMIN_KEY\" {base}/keysmith/v1/openapi.json");
    println!(
        "  curl -X POST -H \"Authorization: Bearer $KEYSMITH_DEMO_ADMIN_KEY\" -H 'content-type: application/json' \
         -d \"{{\\\"key\\\":\\\"$KEYSMITH_DEMO_READ_KEY\\\"}}\" {base}/keysmith/v1/verify    # it may verify keys too"
    );
    println!();
    println!("The dashboard is at {base}/keysmith/ui/: sign in with the admin key.");
}

async fn me(key: ApiKey) -> Json<Value> {
    Json(demo_support::me(&key))
}

async fn list_users(State(users): State<Users>) -> Json<Vec<User>> {
    Json(users.list())
}

async fn create_user(State(users): State<Users>, key: ApiKey, Json(new): Json<NewUser>) -> (StatusCode, Json<User>) {
    (StatusCode::CREATED, Json(users.create(new, &key)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use demo_support::DemoKeys;
    use keysmith_core::{ManualClock, MemoryStore, RawKey};
    use tower::ServiceExt;

    use super::*;

    async fn demo() -> (Router, DemoKeys) {
        let clock = ManualClock::new(chrono::DateTime::UNIX_EPOCH);
        let engine = Engine::builder(Arc::new(MemoryStore::new())).with_clock(clock).build().unwrap();
        let keys = demo_support::create_demo_keys(&engine).await.unwrap();
        (app(engine.clone(), GithubSecretScanning::new(engine.clone()), HealthConfig::new(engine)), keys)
    }

    async fn status(app: &Router, method: &str, path: &str, key: Option<&RawKey>) -> u16 {
        let mut request = Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {}", key.expose()));
        }
        let body = if method == "POST" { Body::from(r#"{"name":"Grace"}"#) } else { Body::empty() };
        app.clone().oneshot(request.body(body).unwrap()).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn routes_need_the_documented_keys_and_scopes() {
        let (app, keys) = demo().await;
        assert_eq!(status(&app, "GET", "/health", None).await, 200);
        for (method, path, expected) in [("HEAD", "/health", 200), ("HEAD", "/ready", 200), ("POST", "/ready", 405)] {
            assert_eq!(status(&app, method, path, None).await, expected, "{method} {path}");
        }
        assert_eq!(status(&app, "GET", "/me", None).await, 401);
        assert_eq!(status(&app, "GET", "/me", Some(&keys.read)).await, 200);
        assert_eq!(status(&app, "GET", "/users", Some(&keys.read)).await, 200);
        assert_eq!(status(&app, "POST", "/users", Some(&keys.read)).await, 403);
        assert_eq!(status(&app, "POST", "/users", Some(&keys.admin)).await, 201);
        assert_eq!(status(&app, "GET", "/users", Some(&keys.admin)).await, 200);
        // What the actix demo answers alike: HEAD where GET is routed, 405
        // for another method.
        for (method, path, expected) in [("HEAD", "/me", 200), ("HEAD", "/users", 200), ("DELETE", "/me", 405)] {
            assert_eq!(status(&app, method, path, Some(&keys.admin)).await, expected, "{method} {path}");
        }
    }

    #[tokio::test]
    async fn admin_key_manages_keys_through_the_admin_api() {
        let (app, keys) = demo().await;
        assert_eq!(status(&app, "GET", "/keysmith/v1/keys", Some(&keys.admin)).await, 200);
        assert_eq!(status(&app, "GET", "/keysmith/v1/openapi.json", Some(&keys.admin)).await, 200);
        assert_eq!(status(&app, "POST", "/keysmith/v1/keys", Some(&keys.admin)).await, 201);
        assert_eq!(status(&app, "GET", "/keysmith/v1/keys", Some(&keys.read)).await, 403);
        assert_eq!(status(&app, "GET", "/keysmith/v1/keys", None).await, 401);
    }

    #[tokio::test]
    async fn admin_key_may_verify_keys_and_the_read_key_may_not() {
        let (app, keys) = demo().await;
        let verify = |key: &RawKey| {
            let body = serde_json::json!({ "key": keys.read.expose() }).to_string();
            Request::post("/keysmith/v1/verify")
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {}", key.expose()))
                .body(Body::from(body))
                .unwrap()
        };
        let response = app.clone().oneshot(verify(&keys.admin)).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let verdict: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((verdict["valid"].as_bool(), verdict["code"].as_str()), (Some(true), Some("valid")));
        assert_eq!(app.clone().oneshot(verify(&keys.read)).await.unwrap().status(), 403);
    }

    #[tokio::test]
    async fn dashboard_is_served_beside_the_admin_api_without_a_key() {
        let (app, _) = demo().await;
        assert_eq!(status(&app, "GET", "/keysmith/ui/", None).await, 200);
        assert_eq!(status(&app, "GET", "/keysmith/ui/app.js", None).await, 200);
        assert_eq!(status(&app, "GET", "/keysmith/ui", None).await, 308);
    }

    #[tokio::test]
    async fn metered_key_gets_429_once_its_two_credits_are_spent() {
        let (app, keys) = demo().await;
        for _ in 0..2 {
            assert_eq!(status(&app, "GET", "/users", Some(&keys.metered)).await, 200);
        }
        assert_eq!(status(&app, "GET", "/users", Some(&keys.metered)).await, 429);
    }

    #[tokio::test]
    async fn the_owners_two_keys_share_one_budget() {
        let (app, keys) = demo().await;
        let [first, second] = &keys.owned;
        for key in [first, second, first] {
            assert_eq!(status(&app, "GET", "/users", Some(key)).await, 200);
        }
        assert_eq!(status(&app, "GET", "/users", Some(second)).await, 429, "the second key shares the first's budget");
    }

    #[tokio::test]
    async fn limited_key_gets_429_on_its_fourth_request() {
        let (app, keys) = demo().await;
        for _ in 0..3 {
            assert_eq!(status(&app, "GET", "/users", Some(&keys.limited)).await, 200);
        }
        assert_eq!(status(&app, "GET", "/users", Some(&keys.limited)).await, 429);
    }

    #[tokio::test]
    async fn a_signed_github_alert_revokes_the_leaked_demo_key_without_an_api_key() {
        let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
        let keys = demo_support::create_demo_keys(&engine).await.unwrap();
        let github = keysmith_tests::github::FakeGithub::start().await;
        let scanning = GithubSecretScanning::new(engine.clone()).with_keys_url(github.keys_url());
        let app = app(engine.clone(), scanning, HealthConfig::new(engine));
        let body = keysmith_tests::github::alert_body(&[keys.read.expose()]);
        let request = Request::post("/keysmith/v1/secret-scanning/github")
            .header("github-public-key-identifier", github.identifier())
            .header("github-public-key-signature", github.sign(body.as_bytes()))
            .body(Body::from(body))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(status(&app, "GET", "/me", Some(&keys.read)).await, 401, "the leaked key is revoked");
    }
}
