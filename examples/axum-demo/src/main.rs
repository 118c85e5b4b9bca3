//! Keysmith behind axum: every route but `/health` needs an API key, two
//! routes need scopes, and one demo key is rate limited.
//!
//! ```sh
//! cargo run -p example-axum                                   # SQLite in ./keysmith-demo.db
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run -p example-axum
//! PORT=8080 cargo run -p example-axum
//! ```
//!
//! On start it migrates the store, creates three fresh keys and prints them
//! as `KEYSMITH_DEMO_*_KEY=…` lines, followed by curl commands to try.
//! Ctrl-C stops the server gracefully and writes the queued usage records.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use keysmith_core::store::Page;
use keysmith_core::{CachedStore, Engine, Environment, NewKey, PolicySpec, RawKey, Store};
use keysmith_sqlx::{PgStore, SqliteStore};
use keysmith_tower::{ApiKey, ApiKeyLayer, RequireScopes};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const DEFAULT_DATABASE_URL: &str = "sqlite://keysmith-demo.db";
const APP_ID: &str = "keysmith-demo";
const TENANT_ID: &str = "demo";
const LIMITED_POLICY: &str = "demo-limited";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse().map_err(|_| format!("PORT must be a port number, not {port:?}"))?,
        Err(_) => 3000,
    };

    // The store: PostgreSQL or SQLite, migrated on every start, with a cache
    // in front so validation usually does no database I/O.
    let store: Arc<dyn Store> = if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")
    {
        Arc::new(PgStore::connect(&database_url).await?)
    } else {
        Arc::new(SqliteStore::connect(&database_url).await?)
    };
    store.migrate().await?;
    let engine = Engine::builder(Arc::new(CachedStore::new(store))).with_environment(Environment::Test).build()?;

    let keys = create_demo_keys(&engine).await?;
    let app = app(engine.clone());
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    let base = format!("http://{}", listener.local_addr()?);

    println!("Keysmith axum demo on {base} (store: {})", redact_url(&database_url));
    println!();
    println!("Fresh demo keys (paste these three lines into your shell):");
    println!("KEYSMITH_DEMO_READ_KEY={}", keys.read.expose());
    println!("KEYSMITH_DEMO_ADMIN_KEY={}", keys.admin.expose());
    println!("KEYSMITH_DEMO_LIMITED_KEY={}", keys.limited.expose());
    println!();
    println!("Then try:");
    println!("  curl {base}/health");
    println!("  curl -H \"Authorization: Bearer $KEYSMITH_DEMO_READ_KEY\" {base}/me");
    println!("  curl -H \"X-API-Key: $KEYSMITH_DEMO_READ_KEY\" {base}/users");
    println!(
        "  curl -i -X POST -H \"Authorization: Bearer $KEYSMITH_DEMO_READ_KEY\" {base}/users    # 403: needs write:users"
    );
    println!(
        "  curl -X POST -H \"Authorization: Bearer $KEYSMITH_DEMO_ADMIN_KEY\" -H 'content-type: application/json' \
         -d '{{\"name\":\"Grace\"}}' {base}/users"
    );
    println!(
        "  for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}}\\n' \
         -H \"Authorization: Bearer $KEYSMITH_DEMO_LIMITED_KEY\" {base}/users; done    # 200 200 200 429"
    );
    println!("  curl -i {base}/me    # 401 without a key");
    println!();
    println!("Ctrl-C stops the server and writes the queued usage records.");

    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    engine.shutdown().await;
    let stats = engine.usage_stats();
    println!("Stopped; usage records written: {}, dropped: {}.", stats.written, stats.dropped);
    Ok(())
}

/// The routes: `/health` is public, everything else needs a key.
fn app(engine: Engine) -> Router {
    let users = Users::default();
    let api = Router::new()
        .route("/me", get(me))
        .route(
            "/users",
            get(list_users.layer(RequireScopes::all(["read:users"])))
                .post(create_user.layer(RequireScopes::all(["write:users"]))),
        )
        .with_state(users)
        .layer(ApiKeyLayer::new(engine.clone()).with_realm("keysmith-demo").with_app_id(APP_ID));
    Router::new().route("/health", get(health)).with_state(engine).merge(api)
}

/// The secrets of the keys made on each start.
struct DemoKeys {
    /// Scope `read:users`.
    read: RawKey,
    /// Scopes `read:users write:users keysmith:admin`.
    admin: RawKey,
    /// Scope `read:users`, 3 requests per 10 seconds.
    limited: RawKey,
}

/// Creates fresh demo keys. The rate-limit policy is kept by name, so
/// restarts on the same database reuse it.
async fn create_demo_keys(engine: &Engine) -> keysmith_core::Result<DemoKeys> {
    let demo = engine.tenant(APP_ID, TENANT_ID);
    let spec = PolicySpec::new(LIMITED_POLICY).with_rate_limit(3, Duration::from_secs(10));
    let existing = demo.list_policies(Page::new(Page::MAX_LIMIT, 0)).await?;
    let policy = match existing.into_iter().find(|policy| policy.name == LIMITED_POLICY) {
        Some(policy) => demo.update_policy(policy.id, spec).await?,
        None => demo.create_policy(spec).await?,
    };
    let read = demo.create_key(NewKey::new("demo reader").with_scopes(["read:users"])).await?;
    let admin =
        demo.create_key(NewKey::new("demo admin").with_scopes(["read:users", "write:users", "keysmith:admin"])).await?;
    let limited =
        demo.create_key(NewKey::new("demo limited").with_scopes(["read:users"]).with_policy(policy.id)).await?;
    Ok(DemoKeys { read: read.raw, admin: admin.raw, limited: limited.raw })
}

async fn health(State(engine): State<Engine>) -> (StatusCode, Json<Value>) {
    match engine.store().ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ok" }))),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "store unavailable" }))),
    }
}

async fn me(key: ApiKey) -> Json<Value> {
    Json(json!({
        "id": key.id(),
        "name": key.name(),
        "app": key.tenant().app_id,
        "tenant": key.tenant().tenant_id,
        "environment": key.environment(),
        "scopes": key.scopes(),
    }))
}

/// The demo's "database" of users.
#[derive(Clone)]
struct Users(Arc<Mutex<Vec<User>>>);

impl Default for Users {
    fn default() -> Self {
        let seed = ["Ada Lovelace", "Alan Turing"].map(|name| User { name: name.to_owned(), created_by: None });
        Self(Arc::new(Mutex::new(seed.into_iter().collect())))
    }
}

#[derive(Clone, Serialize)]
struct User {
    name: String,
    /// The key that created the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    created_by: Option<String>,
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
}

async fn list_users(State(users): State<Users>) -> Json<Vec<User>> {
    Json(users.0.lock().unwrap_or_else(PoisonError::into_inner).clone())
}

async fn create_user(State(users): State<Users>, key: ApiKey, Json(new): Json<NewUser>) -> (StatusCode, Json<User>) {
    let user = User { name: new.name, created_by: Some(key.id().to_string()) };
    users.0.lock().unwrap_or_else(PoisonError::into_inner).push(user.clone());
    (StatusCode::CREATED, Json(user))
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    println!("Shutting down…");
}

/// The URL without its password, for printing.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use keysmith_core::{ManualClock, MemoryStore};
    use tower::ServiceExt;

    use super::*;

    async fn demo() -> (Router, DemoKeys) {
        let clock = ManualClock::new(chrono::DateTime::UNIX_EPOCH);
        let engine = Engine::builder(Arc::new(MemoryStore::new())).with_clock(clock).build().unwrap();
        let keys = create_demo_keys(&engine).await.unwrap();
        (app(engine), keys)
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
        assert_eq!(status(&app, "GET", "/me", None).await, 401);
        assert_eq!(status(&app, "GET", "/me", Some(&keys.read)).await, 200);
        assert_eq!(status(&app, "GET", "/users", Some(&keys.read)).await, 200);
        assert_eq!(status(&app, "POST", "/users", Some(&keys.read)).await, 403);
        assert_eq!(status(&app, "POST", "/users", Some(&keys.admin)).await, 201);
        assert_eq!(status(&app, "GET", "/users", Some(&keys.admin)).await, 200);
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
    async fn restarting_on_the_same_store_reuses_the_policy() {
        let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
        create_demo_keys(&engine).await.unwrap();
        create_demo_keys(&engine).await.unwrap();
        let policies = engine.tenant(APP_ID, TENANT_ID).list_policies(Page::default()).await.unwrap();
        assert_eq!(policies.len(), 1);
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(redact_url("postgres://u:secret@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact_url("sqlite://keysmith-demo.db"), "sqlite://keysmith-demo.db");
    }
}
