//! HTTP behaviour shared by the framework adapters, written once and free
//! of any framework or `http` crate type.
//!
//! - [`KeySources`]: which headers carry the key and the rules for reading
//!   them (missing, ambiguous, malformed).
//! - [`TrustedProxies`]: the client address, from the peer or from the
//!   [forwarding header](ForwardingHeader) set by trusted proxies.
//! - [`RefusalResponse`]: a refusal or failure as status, headers and JSON
//!   body; [`RateLimitHeaders`] (draft `RateLimit-Policy` and `RateLimit`,
//!   the legacy trio, or none) for passed and rate-limited requests.
//! - [`ApiKey`]: what a validated request carries to its handler.
//! - [`ScopeRequirement`]: per-route scopes, all or any.
//! - [`UsageEndpoint`]: what usage records name: the matched route
//!   template (default) or, opted in, the raw path.
//! - [`Gate`]: the per-request flow that ties them together.
//! - [`Adapter`] and [`Gate::guard`]: the adapter kit. The whole sequence
//!   (authorize, leave the key in the request, call the inner service, add
//!   the rate-limit headers and queue the usage record, or answer the
//!   refusal) is [`Guarded`], written once; an adapter implements
//!   [`HeaderLookup`] for its header map and [`Adapter`]'s small steps in
//!   its framework's terms, and returns `Guarded` as its response future
//!   (from [`Gate::guard`], or from [`Gate::guard_inner`] for an adapter
//!   that calls its inner service itself when the key passed at once).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keysmith_core::{Engine, MemoryStore};
//! use keysmith_core::http::{Gate, Outcome, RequestFacts};
//!
//! let gate = Gate::new(Engine::builder(Arc::new(MemoryStore::new())).build()?).with_realm("example");
//! let headers = [("x-api-key", "sk_live_not-a-real-key")];
//! let facts = RequestFacts::new("GET", "/", None, &headers[..]);
//! let Outcome::Refuse(refusal) = gate.authorize(&facts).await else { panic!() };
//! assert_eq!(refusal.status, 401);
//! assert_eq!(refusal.header("www-authenticate"), Some(r#"Bearer realm="example", error="invalid_token""#));
//! # Ok::<(), keysmith_core::Error>(())
//! # }).unwrap();
//! ```

mod api_key;
mod client_ip;
mod extract;
mod gate;
mod headers;
mod kit;
mod response;
mod routes;
mod scopes;

pub use api_key::ApiKey;
pub use client_ip::{ForwardingHeader, MAX_FORWARDING_HEADER_LEN, TrustedProxies};
pub use extract::{KeySource, KeySources, MAX_KEY_HEADER_LEN};
pub use gate::{Admitted, Authorize, Gate, Outcome, RequestFacts, ScopeRefusal};
pub use headers::{HeaderLookup, RateLimitHeaders, SharedHeaderValue, names};
pub use kit::{Adapter, Admission, Guarded, HeaderSink, log_missing_middleware};
pub use response::{
    JSON_CONTENT_TYPE, PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX, QUOTA_EXCEEDED_TYPE, RefusalResponse, problem_body,
};
pub use routes::{UNMATCHED_ROUTE, UsageEndpoint};
pub use scopes::{ScopeMatch, ScopeRequirement};

#[cfg(test)]
mod tests;
