//! A router mounted like an application would, over a memory store that can
//! be told to fail, on a manual clock; and a way to call it.

#![allow(dead_code, unreachable_pub)] // Each test binary uses its own part.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use chrono::{DateTime, Utc};
use keysmith_admin::AdminConfig;
use keysmith_core::store::{ProbedStore, StoreOp, StoreProbe};
use keysmith_core::{Engine, Error, ManualClock, MemoryStore, NewKey, Result, TenantEngine};
use serde_json::Value;
use tower::ServiceExt;

pub const APP: &str = "billing";
pub const TENANT: &str = "acme";
pub const MOUNT: &str = "/keysmith/v1";

pub fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-10T12:00:00Z").unwrap().to_utc()
}

/// An application with the admin API nested at [`MOUNT`] and an admin key
/// of `billing`/`acme`.
pub struct Harness {
    pub app: Router,
    pub engine: Engine,
    pub clock: ManualClock,
    pub store: Arc<Outage>,
    /// The raw admin key of `billing`/`acme`.
    pub admin: String,
}

/// A response: status, headers and the body as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// The error code of a JSON error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {}", self.text))
    }

    /// Asserts an error answer: status, code, and JSON content type.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert_eq!(self.code(), code, "{}", self.text);
        assert_eq!(self.headers["content-type"], "application/json", "{}", self.text);
        assert!(!self.body["error"]["message"].as_str().unwrap().is_empty(), "{}", self.text);
    }

    /// Asserts a success status and returns the body.
    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        &self.body
    }
}

pub async fn harness() -> Harness {
    harness_with(keysmith_admin::router, false).await
}

/// A harness whose router comes from `build`, on an engine with strict
/// scopes or not.
pub async fn harness_with(build: impl FnOnce(Engine) -> Router, strict_scopes: bool) -> Harness {
    let clock = ManualClock::new(start());
    let store = Arc::new(Outage::default());
    let engine = Engine::builder(Arc::new(ProbedStore::new(Arc::new(MemoryStore::new()), Arc::clone(&store))))
        .with_clock(clock.clone())
        .with_strict_scopes(strict_scopes)
        .build()
        .unwrap();
    if strict_scopes {
        engine.tenant(APP, TENANT).create_scope("keysmith:admin", "the admin API").await.unwrap();
    }
    let admin = admin_key(&engine, APP, TENANT).await;
    let app = Router::new().nest(MOUNT, build(engine.clone()));
    Harness { app, engine, clock, store, admin }
}

/// A raw key holding `keysmith:admin` for `app`/`tenant`.
pub async fn admin_key(engine: &Engine, app: &str, tenant: &str) -> String {
    let created =
        engine.tenant(app, tenant).create_key(NewKey::new("operator").with_scopes(["keysmith:admin"])).await.unwrap();
    created.raw.expose().to_owned()
}

impl Harness {
    /// The admin's tenant, straight through the engine.
    pub fn tenant(&self) -> TenantEngine {
        self.engine.tenant(APP, TENANT)
    }

    /// Sends a request to `MOUNT + path` with `key` as a bearer token and
    /// `body` as JSON.
    pub async fn send(&self, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Reply {
        let mut request = Request::builder().method(method).uri(format!("{MOUNT}{path}"));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        self.raw(request.body(body).unwrap()).await
    }

    /// Sends a prepared request.
    pub async fn raw(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 22).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::Null) };
        Reply { status: parts.status, headers: parts.headers, body, text }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, Some(&self.admin), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send("POST", path, Some(&self.admin), Some(body)).await
    }

    pub async fn post_empty(&self, path: &str) -> Reply {
        self.send("POST", path, Some(&self.admin), None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send("PUT", path, Some(&self.admin), Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send("DELETE", path, Some(&self.admin), None).await
    }

    /// Creates a key through the API and returns (id, raw key).
    pub async fn create_key(&self, body: Value) -> (String, String) {
        let reply = self.post("/keys", body).await;
        let body = reply.ok(201);
        (body["key"]["id"].as_str().unwrap().to_owned(), body["raw_key"].as_str().unwrap().to_owned())
    }
}

/// The default admin router behind `config`.
pub fn with_config(config: impl FnOnce(AdminConfig) -> AdminConfig) -> impl FnOnce(Engine) -> Router {
    move |engine| config(AdminConfig::new(engine)).into_router()
}

/// Makes a store's management calls fail while `failing` is set.
/// Validation (lookup by hash, touches, usage writes) keeps working, so an
/// admin request gets past authentication and meets the failure.
#[derive(Debug, Default)]
pub struct Outage {
    failing: AtomicBool,
}

impl Outage {
    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

#[async_trait]
impl StoreProbe for Outage {
    async fn before(&self, op: StoreOp) -> Result<()> {
        let spared =
            matches!(op, StoreOp::find_key_by_hash | StoreOp::touch_key | StoreOp::write_usage | StoreOp::migrate);
        if self.failing.load(Ordering::SeqCst) && !spared {
            return Err(Error::store(std::io::Error::other("connection refused (db password=hunter2)")));
        }
        Ok(())
    }
}
