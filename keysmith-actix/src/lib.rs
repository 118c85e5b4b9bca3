//! Keysmith for actix-web: middleware that validates API keys, per-scope
//! requirements, and an `ApiKey` extractor.
//!
//! - [`ApiKeyMiddleware`] validates every request's key: refusals are
//!   answered with the right status, `WWW-Authenticate`, `Retry-After` and a
//!   JSON body; passed requests carry an [`ApiKey`], get rate-limit
//!   headers and have their usage recorded after the response.
//! - [`RequireScopes::all`] / [`RequireScopes::any`] guard a `web::scope`
//!   or a resource.
//! - [`ApiKey`] and `Option<ApiKey>` are extractors.
//!
//! The rules themselves (key extraction, client address, refusal answers)
//! live in [`keysmith_core::http`] and are shared with the tower adapter;
//! this crate only speaks actix.
//!
//! ```
//! # actix_web::rt::System::new().block_on(async {
//! use std::sync::Arc;
//! use actix_web::{App, test, web};
//! use keysmith_actix::{ApiKey, ApiKeyMiddleware, RequireScopes};
//! use keysmith_core::{Engine, MemoryStore, NewKey};
//!
//! let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
//! let created = engine.tenant("my-app", "acme").create_key(NewKey::new("ci").with_scopes(["read:users"])).await?;
//!
//! let app = test::init_service(
//!     App::new()
//!         .service(
//!             web::resource("/users")
//!                 .wrap(RequireScopes::all(["read:users"]))
//!                 .route(web::get().to(|| async { "[]" })),
//!         )
//!         .route("/me", web::get().to(|key: ApiKey| async move { key.tenant().to_string() }))
//!         .wrap(ApiKeyMiddleware::new(engine.clone())),
//! )
//! .await;
//!
//! let request = test::TestRequest::get()
//!     .uri("/me")
//!     .insert_header(("authorization", format!("Bearer {}", created.raw.expose())))
//!     .to_request();
//! let response = test::call_service(&app, request).await;
//! assert_eq!(response.status(), 200);
//!
//! let response = test::call_service(&app, test::TestRequest::get().uri("/users").to_request()).await;
//! assert_eq!(response.status(), 401);
//! assert_eq!(response.headers().get("www-authenticate").unwrap(), r#"Bearer realm="api""#);
//!
//! engine.shutdown().await; // on graceful shutdown: writes queued usage
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! The client address is the connection's peer address; behind a proxy,
//! configure [`ApiKeyMiddleware::with_trusted_proxies`].
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod extract;
mod middleware;
mod request;
mod response;
mod routes;
mod scopes;

pub use extract::ApiKey;
pub use middleware::{ApiKeyMiddleware, ApiKeyService, ResponseFuture};
pub use response::{ApiKeyRejection, RefusalResponder, default_refusal_response, problem_refusal_response};
pub use scopes::{RequireScopes, RequireScopesMiddleware};

/// The framework-free pieces this crate is built on, for configuration.
pub use keysmith_core::http::{
    ForwardingHeader, KeySources, RateLimitHeaders, RefusalResponse, TrustedProxies, UNMATCHED_ROUTE, UsageEndpoint,
};
