//! `AdminConfig`: how the admin router authenticates, and the router itself.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use keysmith_core::Engine;
use keysmith_core::http::{KeySources, TrustedProxies};
use keysmith_tower::{ApiKeyLayer, RequireScopes};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{method_not_allowed, route_not_found};
use crate::{
    ADMIN_SCOPE, AdminState, GithubSecretScanning, VERIFY_SCOPE, credits, keys, openapi, owners, policies, scopes,
    usage, verify,
};

/// The realm of `WWW-Authenticate` unless configured otherwise.
pub const DEFAULT_REALM: &str = "keysmith-admin";

/// The largest request body the admin router reads unless configured
/// otherwise: 256 KiB (axum's own default is 2 MiB). The largest `/verify`
/// body the route accepts is about 36 KiB (a 1 KiB key, 32 scopes of 1 KiB,
/// a 1 KiB origin); the rest leaves room for a policy's allowlists (some
/// 5,000 IPv6 networks) or a key's metadata. A larger body is 413
/// `payload_too_large`, and nothing is changed.
pub const DEFAULT_BODY_LIMIT: usize = 256 * 1024;

/// Configures the admin router's authentication: where keys are read from,
/// which proxies are trusted, the realm, and the one application whose
/// keys are accepted. Whatever the configuration, every route (and every
/// unknown path) needs a key holding [`ADMIN_SCOPE`], and acts on that key's
/// tenant only, except GitHub's secret scanning alerts
/// (`POST /secret-scanning/github`), which GitHub's signature authenticates.
///
/// ```
/// use std::sync::Arc;
/// use axum::Router;
/// use keysmith_admin::AdminConfig;
/// use keysmith_core::{Engine, MemoryStore};
/// use keysmith_core::http::TrustedProxies;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
/// let admin = AdminConfig::new(engine)
///     .with_app_id("billing")
///     .with_trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"])?)
///     .into_router();
/// let app: Router = Router::new().nest("/keysmith/v1", admin);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct AdminConfig {
    layer: ApiKeyLayer,
    body_limit: usize,
    secret_scanning: Option<GithubSecretScanning>,
    problem_details: bool,
}

impl AdminConfig {
    /// Validates keys with `engine`: from `Authorization: Bearer` and
    /// `X-API-Key`, no trusted proxy, realm [`DEFAULT_REALM`], keys of any
    /// application.
    pub fn new(engine: Engine) -> Self {
        Self::from_layer(ApiKeyLayer::new(engine).with_realm(DEFAULT_REALM))
    }

    /// Authenticates with a layer configured elsewhere (the one the rest of
    /// the application uses, say). The router manages keys through the
    /// layer's engine. [`RequireScopes`] for [`ADMIN_SCOPE`] is still added:
    /// even an [`optional`](ApiKeyLayer::optional) layer lets no request
    /// in without an admin key, and a
    /// [preflight passthrough](ApiKeyLayer::with_preflight_passthrough) is
    /// turned off.
    pub fn from_layer(layer: ApiKeyLayer) -> Self {
        Self { layer, body_limit: DEFAULT_BODY_LIMIT, secret_scanning: None, problem_details: false }
    }

    /// Serves GitHub's secret scanning alerts at
    /// `POST /secret-scanning/github` with this configuration (the keys URL,
    /// say) instead of [`GithubSecretScanning::new`]'s defaults. The route
    /// needs no API key: GitHub's signature authenticates it.
    pub fn with_secret_scanning(mut self, scanning: GithubSecretScanning) -> Self {
        self.secret_scanning = Some(scanning);
        self
    }

    /// Reads keys from these headers (the OpenAPI document's security
    /// schemes follow).
    pub fn with_key_sources(mut self, sources: KeySources) -> Self {
        self.layer = self.layer.with_key_sources(sources);
        self
    }

    /// Believes the forwarding header of these proxies (`X-Forwarded-For`,
    /// or `Forwarded` with [`TrustedProxies::with_header`]) for the admin
    /// keys' IP allowlists; behind them an unreadable header or an entry
    /// that is not an address makes the client unknown.
    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.layer = self.layer.with_trusted_proxies(proxies);
        self
    }

    /// The realm of `WWW-Authenticate`.
    pub fn with_realm(mut self, realm: impl Into<String>) -> Self {
        self.layer = self.layer.with_realm(realm);
        self
    }

    /// Accepts only admin keys of this application.
    pub fn with_app_id(mut self, app_id: impl Into<String>) -> Self {
        self.layer = self.layer.with_app_id(app_id);
        self
    }

    /// Reads request bodies of at most `bytes` (default
    /// [`DEFAULT_BODY_LIMIT`]); a larger one is 413 `payload_too_large`.
    /// Bodies are read only after the key is authenticated.
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Answers every error in the RFC 9457 format, `application/problem+json`
    /// (`{"type", "title", "status", "detail", "code"}`, `code` being the
    /// code of the default JSON body), instead of
    /// `{"error": {"code", "message"}}`: the refusals of the key layer
    /// (`keysmith_tower::problem_refusal_response`) and the API's own
    /// errors alike. Statuses and headers do not change. GitHub's secret
    /// scanning route keeps its own protocol.
    pub fn with_problem_details(mut self) -> Self {
        self.layer = self.layer.with_responder(keysmith_tower::problem_refusal_response);
        self.problem_details = true;
        self
    }

    /// The OpenAPI document this configuration serves at `/openapi.json`
    /// (its security schemes follow the key sources).
    #[must_use]
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        Self::openapi_for(self.layer.gate().key_sources())
    }

    pub(crate) fn openapi_for(sources: &KeySources) -> utoipa::openapi::OpenApi {
        let (_, mut doc) = collect().split_for_parts();
        openapi::finish(&mut doc, sources);
        doc
    }

    /// The router, to mount with `Router::nest` (any state type: it
    /// carries its own).
    ///
    /// Unknown paths answer 404 `route_not_found` and known paths with
    /// another method 405 `method_not_allowed` (with `Allow`), both as JSON
    /// and both only to admin keys: without one the answer is 401 or 403,
    /// so the router reveals no data to others (for another method on a
    /// known path axum still adds its `Allow` header to the 401: which routes
    /// exist is documented, no secret). CORS preflights are
    /// no exception; answer them with a CORS layer outside the router.
    pub fn into_router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let (_, mut doc) = collect().split_for_parts();
        openapi::finish(&mut doc, self.layer.gate().key_sources());
        let engine = self.layer.gate().engine().clone();
        let scanning = self.secret_scanning.unwrap_or_else(|| GithubSecretScanning::new(engine.clone()));
        let state = AdminState { engine, openapi: Arc::new(doc) };
        let (admin, _) = admin_routes().split_for_parts();
        let (verify, _) = verify_routes().split_for_parts();
        let problem_details = self.problem_details;
        let router = admin
            .fallback(route_not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(RequireScopes::all([ADMIN_SCOPE]))
            .merge(
                verify.route_layer(RequireScopes::all([VERIFY_SCOPE])).method_not_allowed_fallback(method_not_allowed),
            )
            .layer(DefaultBodyLimit::max(self.body_limit))
            // A preflight let through would reach the fallbacks, whose 404
            // and 405 say which routes exist.
            .layer(self.layer.with_preflight_passthrough(false))
            .with_state(state);
        let router = if problem_details {
            router.layer(axum::middleware::map_response(crate::error::as_problem))
        } else {
            router
        };
        // After the key layer: GitHub signs its alerts, it holds no key.
        router.merge(scanning.into_router())
    }
}

/// Every route with its OpenAPI operation: the router and the document come
/// from the same list, so they cannot disagree.
fn collect() -> OpenApiRouter<AdminState> {
    admin_routes().merge(verify_routes())
}

/// `POST /verify`, for keys holding [`VERIFY_SCOPE`].
fn verify_routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(verify::verify_key))
}

/// The management routes, for keys holding [`ADMIN_SCOPE`].
fn admin_routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(keys::create_key, keys::list_keys))
        .routes(routes!(keys::get_key))
        .routes(routes!(keys::rotate_key))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(keys::suspend_key))
        .routes(routes!(keys::reactivate_key))
        .routes(routes!(keys::set_key_scopes))
        .routes(routes!(keys::list_rotations))
        .routes(routes!(credits::set_credits, credits::remove_credits))
        .routes(routes!(credits::add_credits))
        .routes(routes!(owners::get_owner_credits, owners::set_owner_credits, owners::remove_owner_credits))
        .routes(routes!(owners::add_owner_credits))
        .routes(routes!(usage::list_usage))
        .routes(routes!(usage::aggregate_usage))
        .routes(routes!(policies::create_policy, policies::list_policies))
        .routes(routes!(policies::get_policy, policies::update_policy, policies::delete_policy))
        .routes(routes!(scopes::create_scope, scopes::list_scopes))
        .routes(routes!(scopes::delete_scope))
        .routes(routes!(openapi::openapi_json))
}
