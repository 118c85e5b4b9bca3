//! Keysmith for tower and axum: a layer that validates API keys, per-route
//! scope requirements, and an `ApiKey` extractor.
//!
//! - [`ApiKeyLayer`] validates every request's key: refusals
//!   are answered with the right status, `WWW-Authenticate`, `Retry-After`
//!   and a JSON body; passed requests carry an [`ApiKey`], get rate-limit
//!   headers and have their usage recorded after the response.
//! - [`RequireScopes::all`] / [`RequireScopes::any`] guard single routes.
//! - [`ApiKey`] and `Option<ApiKey>` are axum extractors (feature `axum`,
//!   on by default).
//!
//! The rules themselves (key extraction, client address, refusal answers)
//! live in [`keysmith_core::http`] and are shared with the actix adapter;
//! this crate only speaks tower.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use axum::{Router, body::Body, http::Request, routing::get};
//! use keysmith_core::{Engine, MemoryStore, NewKey};
//! use keysmith_tower::{ApiKey, ApiKeyLayer, RequireScopes};
//! use tower::ServiceExt;
//!
//! let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
//! let created = engine.tenant("my-app", "acme").create_key(NewKey::new("ci").with_scopes(["read:users"])).await?;
//!
//! let app = Router::new()
//!     .route("/users", get(|| async { "[]" }))
//!     .route_layer(RequireScopes::all(["read:users"]))
//!     .route("/me", get(|key: ApiKey| async move { key.tenant().to_string() }))
//!     .layer(ApiKeyLayer::new(engine.clone()));
//!
//! let request = Request::get("/me")
//!     .header("authorization", format!("Bearer {}", created.raw.expose()))
//!     .body(Body::empty())?;
//! let response = app.clone().oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//!
//! let response = app.oneshot(Request::get("/users").body(Body::empty())?).await?;
//! assert_eq!(response.status(), 401);
//! assert_eq!(response.headers()["www-authenticate"], r#"Bearer realm="api""#);
//!
//! engine.shutdown().await; // on graceful shutdown: writes queued usage
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! Serve with `into_make_service_with_connect_info::<SocketAddr>()` so the
//! layer knows the client address (see [`ApiKeyLayer`]).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod extract;
mod layer;
mod request;
mod response;
mod scopes;

pub use extract::{ApiKey, ApiKeyRejection};
pub use layer::{ApiKeyLayer, ApiKeyService, ResponseFuture};
pub use response::{RefusalResponder, default_refusal_response, problem_refusal_response};
pub use scopes::{RequireScopes, RequireScopesFuture, RequireScopesService};

/// The framework-free pieces this crate is built on, for configuration.
pub use keysmith_core::http::{
    ForwardingHeader, KeySources, RateLimitHeaders, RefusalResponse, TrustedProxies, UNMATCHED_ROUTE, UsageEndpoint,
};
