//! Keysmith's REST management API: an axum [`Router`] an application
//! mounts, authenticated by Keysmith itself.
//!
//! - Every request needs an API key holding [`ADMIN_SCOPE`]
//!   (`keysmith:admin`), checked by `keysmith_tower`'s `ApiKeyLayer` and
//!   `RequireScopes`; the key's app and tenant are the only ones it can
//!   manage. Another tenant's ids are 404, exactly like unknown ones.
//! - Routes, JSON in and out, ids as TypeIDs: `/keys` (create, list, show,
//!   rotate, revoke, suspend, reactivate, scopes, rotations, usage and its
//!   roll-ups), `/policies`, `/scopes`, and `/openapi.json`, an OpenAPI 3.1
//!   document generated from the same code as the routes.
//! - The calling key cannot lock its tenant out: suspending, revoking or
//!   rotating itself, or taking `keysmith:admin` away from itself (through
//!   its scopes or its policy's `allowed_scopes`), is 409 `self_lockout`.
//! - `POST /secret-scanning/github` is GitHub's secret scanning partner
//!   endpoint ([`GithubSecretScanning`]): authenticated by GitHub's
//!   signature, not by an API key; the leaked keys it is told about are
//!   handled by their tenants' leak policy.
//! - Every error, rejections included, is JSON:
//!   `{"error": {"code": "…", "message": "…"}}` (see [`Error`]).
//! - Bodies are read up to [`DEFAULT_BODY_LIMIT`] (256 KiB,
//!   [`AdminConfig::with_body_limit`]); a larger one is 413
//!   `payload_too_large`.
//!
//! With the `ui` feature (on by default), [`ui_router()`] serves a
//! dashboard for the same API: mount it at `/keysmith/ui` beside the API at
//! `/keysmith/v1`. It is a static page that signs in with an admin key and
//! calls the API, so it can do nothing the API would refuse.
//!
//! [`HealthConfig`] serves the probes a load balancer or an orchestrator
//! needs at the root of a service: `GET /health`, `GET /ready` (store and
//! change feed) and, with the `prometheus` feature, `GET /metrics`.
//!
//! With the `server` feature (on by default), [`Server`] serves a router
//! over HTTP/1.1 with a header read timeout and a graceful-shutdown
//! deadline, as `keysmith serve` does.
//!
//! `/openapi.json` needs the admin key like every other route: the router
//! has no anonymous way in. To publish the document elsewhere, serve
//! [`openapi()`] (or [`AdminConfig::openapi`]) from your own route.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use axum::{Router, body::Body, http::Request};
//! use keysmith_core::{Engine, MemoryStore, NewKey};
//! use tower::ServiceExt;
//!
//! let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
//! let app: Router = Router::new().nest("/keysmith/v1", keysmith_admin::router(engine.clone()));
//!
//! // An operator's key for tenant "acme" of app "billing".
//! let admin = engine.tenant("billing", "acme").create_key(NewKey::new("ops").with_scopes(["keysmith:admin"])).await?;
//! let request = Request::post("/keysmith/v1/keys")
//!     .header("authorization", format!("Bearer {}", admin.raw.expose()))
//!     .header("content-type", "application/json")
//!     .body(Body::from(r#"{"name": "ci", "scopes": ["read:users"]}"#))?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.status(), 201);
//!
//! let body = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
//! let created: serde_json::Value = serde_json::from_slice(&body)?;
//! assert!(created["raw_key"].as_str().unwrap().starts_with("sk_live_")); // shown this once
//! assert_eq!(created["key"]["scopes"][0], "read:users");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
#![forbid(unsafe_code)]

mod config;
mod credits;
mod error;
mod extract;
mod health;
mod keys;
mod lockout;
mod model;
mod openapi;
mod owners;
mod policies;
mod schema;
mod scopes;
pub mod secret_scanning;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "ui")]
mod ui;
mod usage;
mod verify;

use std::sync::Arc;

use axum::Router;
use keysmith_core::Engine;

pub use config::{AdminConfig, DEFAULT_BODY_LIMIT, DEFAULT_REALM};
pub use error::{Error, Result};
pub use health::{Checks, DEFAULT_PING_TIMEOUT, HealthConfig, Readiness, readiness};
pub use lockout::SelfLockout;
pub use schema::metadata::parse as parse_metadata;
pub use secret_scanning::GithubSecretScanning;
#[cfg(feature = "server")]
pub use server::{DEFAULT_HEADER_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT, Server, Stopped, shutdown_signal};
#[cfg(feature = "ui")]
pub use ui::{DEFAULT_API_BASE, UiConfig, ui_router};

/// The scope an API key needs to use the admin API. It lies in the
/// reserved `keysmith:` namespace, so only a key that names it (or
/// `keysmith:*`) has it: `*` and the bare `keysmith` do not grant it.
pub const ADMIN_SCOPE: &str = "keysmith:admin";

/// The scope an API key needs to call `POST /verify` (and nothing else of
/// the admin API). Also reserved: `keysmith:admin` alone does not grant it,
/// so a service that verifies keys never holds a key that can manage them,
/// and an admin key is not a verify key by accident.
pub const VERIFY_SCOPE: &str = "keysmith:verify";

/// The admin API with the default authentication (see
/// [`AdminConfig::new`]); mount it with
/// `.nest("/keysmith/v1", keysmith_admin::router(engine))`.
pub fn router<S>(engine: Engine) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    AdminConfig::new(engine).into_router()
}

/// The OpenAPI 3.1 document of the admin API with the default key sources
/// (`Authorization: Bearer` and `X-API-Key`), for serving or merging
/// elsewhere. Its paths are relative to where the router is mounted.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    AdminConfig::openapi_for(&keysmith_core::http::KeySources::default())
}

/// What every handler shares.
#[derive(Clone)]
struct AdminState {
    engine: Engine,
    /// The finished document, served by `/openapi.json`.
    openapi: Arc<utoipa::openapi::OpenApi>,
}
