//! `ApiKeyLayer`: validate every request's key before the inner service.

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use keysmith_core::Engine;
use keysmith_core::http::{Adapter, Admission, Gate, Guarded, RefusalResponse, RequestFacts, SharedHeaderValue};
use tower_layer::Layer;
use tower_service::Service;

use crate::RefusalResponder;
use crate::request::{Headers, Installed, Shared, matched_route, peer};
use crate::response::{append_header, append_shared};

/// A [`Layer`] that validates the API key of every request.
///
/// A refused request is answered here (401, 403, 429… with the JSON body);
/// the inner service never sees it. A passed request reaches the inner
/// service with the [`ApiKey`](crate::ApiKey) in its extensions, its
/// response gets the `RateLimit-*` headers of the key's policy, and its
/// usage (status, latency) is queued once the inner service has answered
/// (also when it fails: then with status 500). If the store cannot be
/// reached the answer is 503, never a pass. The sequence is core's
/// ([`Gate::guard`]); this type is its tower glue.
///
/// The usage record names the route template the request matched, from
/// axum's `MatchedPath`, which the `Router` sets before the layers added
/// with `Router::layer` or `route_layer` run: add the layer that way, on the
/// router holding the routes (as below; inside a nested router too). A
/// request no route matched is recorded as `unmatched`, and so is every
/// request through a layer wrapped around a whole `Router` or around
/// `nest`, which runs before routing. The raw path is recorded only with
/// [`with_usage_endpoint`](Self::with_usage_endpoint)`(UsageEndpoint::RawPath)`,
/// which stores whatever personal data paths carry.
///
/// The client address comes from axum's `ConnectInfo<SocketAddr>`, so serve
/// the router with `into_make_service_with_connect_info::<SocketAddr>()`.
/// Without it the address is unknown and keys whose policy has an IP
/// allowlist are refused.
///
/// CORS preflights are authenticated like any other request; add
/// tower-http's `CorsLayer` *after* this layer (`.layer(ApiKeyLayer…)`
/// then `.layer(CorsLayer…)`), so that it is outside and answers them.
///
/// ```no_run
/// use std::net::SocketAddr;
/// use std::sync::Arc;
/// use axum::{Router, routing::get};
/// use keysmith_core::{Engine, MemoryStore};
/// use keysmith_core::http::TrustedProxies;
/// use keysmith_tower::{ApiKey, ApiKeyLayer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
/// let app = Router::new()
///     .route("/me", get(|key: ApiKey| async move { key.id().to_string() }))
///     .layer(
///         ApiKeyLayer::new(engine)
///             .with_realm("my-api")
///             .with_trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"])?),
///     );
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ApiKeyLayer {
    gate: Gate,
    responder: RefusalResponder,
}

impl ApiKeyLayer {
    /// Validates with `engine`, with [`Gate::new`]'s defaults: keys from
    /// `Authorization: Bearer` and `X-API-Key`, no trusted proxy, realm
    /// `api`, keys of any app required, CORS preflights authenticated like
    /// any request.
    pub fn new(engine: Engine) -> Self {
        Self::from_gate(Gate::new(engine))
    }

    /// Uses a [`Gate`] configured elsewhere (shared with another adapter,
    /// say).
    pub fn from_gate(gate: Gate) -> Self {
        Self { gate, responder: RefusalResponder::default() }
    }

    keysmith_core::__gate_options!();

    /// Renders refusals with `responder` (start from
    /// [`default_refusal_response`](crate::default_refusal_response) to keep
    /// the standard headers). `RequireScopes` and the extractors use it too.
    pub fn with_responder(
        mut self, responder: impl Fn(&RefusalResponse) -> Response<String> + Send + Sync + 'static,
    ) -> Self {
        self.responder = RefusalResponder::new(responder);
        self
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKeyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let shared = Arc::new(Shared { gate: self.gate.clone(), responder: self.responder.clone() });
        ApiKeyService { inner, shared }
    }
}

/// The service made by [`ApiKeyLayer`]. Its error type is the inner
/// service's, so it fits anywhere the inner service did (`Router::layer`).
#[derive(Debug, Clone)]
pub struct ApiKeyService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> ApiKeyService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ApiKeyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Core hands over the inner service only when the future may call
        // it: the clone is not ready, so the instance that was polled ready
        // goes into the future and the clone takes its place (tower's usual
        // swap). A key that passed at once is called through the instance
        // itself, and nothing is cloned for it or for a refusal.
        let glue = |inner: Option<&mut S>| Glue {
            inner: inner.map(|inner| {
                let clone = inner.clone();
                std::mem::replace(inner, clone)
            }),
            shared: Arc::clone(&self.shared),
            _bodies: PhantomData,
        };
        self.shared.gate.guard_inner(&mut self.inner, request, S::call, glue)
    }
}

/// The response future of [`ApiKeyService`]: core's request sequence
/// ([`Gate::guard`]) run with this crate's glue.
pub type ResponseFuture<S, ReqBody, ResBody> = Guarded<Glue<S, ReqBody, ResBody>>;

/// Tower's side of one request: the inner service that was polled ready
/// and what refusals and extractors need. Named only through
/// [`ResponseFuture`].
#[allow(unreachable_pub, reason = "named only through ResponseFuture")]
pub struct Glue<S, ReqBody, ResBody> {
    /// The inner service, for a request whose outcome was not known at
    /// once; `None` when the service called its own inner service already
    /// ([`Gate::guard_inner`]) or the request is refused.
    inner: Option<S>,
    shared: Arc<Shared>,
    _bodies: PhantomData<fn(ReqBody) -> ResBody>,
}

impl<S, ReqBody, ResBody> std::fmt::Debug for Glue<S, ReqBody, ResBody> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Glue").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Adapter for Glue<S, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Request = Request<ReqBody>;
    type Headers<'r>
        = Headers<'r>
    where
        Self: 'r;
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = S::Future;
    type Output = Response<ResBody>;

    fn facts(request: &Request<ReqBody>) -> RequestFacts<'_, Headers<'_>> {
        RequestFacts::new(
            request.method().as_str(),
            request.uri().path(),
            peer(request),
            Headers::new(request.headers()),
        )
        .with_route(matched_route(request))
    }

    fn admit(&self, request: &mut Request<ReqBody>, admission: Admission<'_>) {
        let (key, preflight) = (admission.key().cloned(), matches!(admission, Admission::Preflight));
        request.extensions_mut().insert(Installed { key, shared: Arc::clone(&self.shared), preflight });
    }

    fn call(&mut self, request: Request<ReqBody>) -> S::Future {
        // Core asks only the glue it was given with an inner service
        // (`Gate::guard_inner` calls it itself otherwise).
        self.inner.as_mut().expect("the glue of a request called at once is not asked to call").call(request)
    }

    fn refuse(self, _request: Request<ReqBody>, refusal: RefusalResponse) -> Response<ResBody> {
        self.shared.responder.respond(&refusal).map(ResBody::from)
    }

    fn pass(response: Response<ResBody>) -> Response<ResBody> {
        response
    }

    fn status(response: &Response<ResBody>) -> u16 {
        response.status().as_u16()
    }

    /// A tower error carries no status; hyper and axum answer it with 500.
    fn error_status(_error: &S::Error) -> u16 {
        500
    }

    fn append_header(response: &mut Response<ResBody>, name: &'static str, value: &str) {
        append_header(response.headers_mut(), name, value);
    }

    fn append_shared(response: &mut Response<ResBody>, name: &'static str, value: &SharedHeaderValue) {
        append_shared(response.headers_mut(), name, value);
    }
}
