//! `ApiKeyLayer`: validate every request's key before the inner service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use keysmith_core::Engine;
use keysmith_core::http::{
    Admitted, Authorize, Gate, KeySources, Outcome, RateLimitHeaders, RequestFacts, TrustedProxies,
};
use keysmith_core::http::{ApiKey as CoreApiKey, RefusalResponse};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::RefusalResponder;
use crate::request::{Headers, Installed, Shared, peer};
use crate::response::append_rate_limit_headers;

/// A [`Layer`] that validates the API key of every request.
///
/// A refused request is answered here (401, 403, 429… with the JSON body);
/// the inner service never sees it. A passed request reaches the inner
/// service with the [`ApiKey`](crate::ApiKey) in its extensions, its
/// response gets the rate-limit headers of the key's policy, and its
/// usage (status, latency) is queued once the inner service has answered.
/// If the store cannot be reached the answer is 503, never a pass.
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

    /// Reads keys from these headers.
    pub fn with_key_sources(mut self, sources: KeySources) -> Self {
        self.gate = self.gate.with_key_sources(sources);
        self
    }

    /// Believes the forwarding header of these proxies (`X-Forwarded-For`
    /// unless [`TrustedProxies::with_header`] says `Forwarded`); behind
    /// them an entry that is not an address, or a header that cannot be
    /// read, makes the client unknown.
    pub fn with_trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.gate = self.gate.with_trusted_proxies(proxies);
        self
    }

    /// The realm of `WWW-Authenticate` (default `api`).
    pub fn with_realm(mut self, realm: impl Into<String>) -> Self {
        self.gate = self.gate.with_realm(realm);
        self
    }

    /// Accepts only keys of this application (others are `invalid_key`).
    pub fn with_app_id(mut self, app_id: impl Into<String>) -> Self {
        self.gate = self.gate.with_app_id(app_id);
        self
    }

    /// Optional mode: a request without a key reaches the inner service
    /// without an `ApiKey` (handlers take `Option<ApiKey>`); a bad key is
    /// still refused.
    pub fn optional(mut self) -> Self {
        self.gate = self.gate.with_optional(true);
        self
    }

    /// Whether CORS preflights pass without a key (default no: they are
    /// authenticated like any request). Put the CORS layer outside Keysmith
    /// instead, so it answers preflights itself; turn this on only if a CORS
    /// layer inside answers every preflight before a handler sees it
    /// ([`Gate::with_preflight_passthrough`]).
    pub fn with_preflight_passthrough(mut self, passthrough: bool) -> Self {
        self.gate = self.gate.with_preflight_passthrough(passthrough);
        self
    }

    /// Which rate-limit headers responses carry: the draft's
    /// `RateLimit-Policy` and `RateLimit` by default
    /// ([`Gate::with_rate_limit_headers`]).
    pub fn with_rate_limit_headers(mut self, mode: RateLimitHeaders) -> Self {
        self.gate = self.gate.with_rate_limit_headers(mode);
        self
    }

    /// Renders refusals with `responder` (start from
    /// [`default_refusal_response`](crate::default_refusal_response) to keep
    /// the standard headers). `RequireScopes` and the extractors use it too.
    pub fn with_responder(
        mut self,
        responder: impl Fn(&RefusalResponse) -> Response<String> + Send + Sync + 'static,
    ) -> Self {
        self.responder = RefusalResponder::new(responder);
        self
    }

    /// The framework-free configuration.
    #[must_use]
    pub fn gate(&self) -> &Gate {
        &self.gate
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
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let authorize = {
            let headers = Headers(request.headers());
            let facts = RequestFacts::new(request.method().as_str(), request.uri().path(), peer(&request), &headers);
            self.shared.gate.authorize(&facts)
        };
        // The clone is not ready; the instance that was polled ready is the
        // one to call (tower's usual swap).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let waiting = Waiting { inner, request, shared: Arc::clone(&self.shared) };
        ResponseFuture { state: State::Authorizing { authorize, waiting: Some(waiting) } }
    }
}

pin_project! {
    /// The response future of [`ApiKeyService`].
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

/// What a request waits with while its key is checked; taken (once) when
/// the outcome is known.
struct Waiting<S, ReqBody> {
    inner: S,
    request: Request<ReqBody>,
    shared: Arc<Shared>,
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Authorizing {
            authorize: Authorize,
            waiting: Option<Waiting<S, ReqBody>>,
        },
        Calling {
            #[pin]
            future: S::Future,
            admitted: Option<Admitted>,
        },
    }
}

impl<S, ReqBody> std::fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Authorizing { .. } => "authorizing",
            State::Calling { .. } => "calling",
        };
        f.debug_struct("ResponseFuture").field("state", &state).finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Authorizing { authorize, waiting } => {
                    let outcome = ready!(Pin::new(authorize).poll(cx));
                    let Some(Waiting { mut inner, mut request, shared }) = waiting.take() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    let mut preflight = false;
                    let admitted = match outcome {
                        Outcome::Pass(admitted) => {
                            request.extensions_mut().insert(CoreApiKey::clone(admitted.key()));
                            Some(admitted)
                        }
                        Outcome::Refuse(refusal) => {
                            return Poll::Ready(Ok(shared.responder.respond(&refusal).map(ResBody::from)));
                        }
                        Outcome::Preflight => {
                            preflight = true;
                            None
                        }
                        // Anonymous, and anything later core may add that
                        // lets the request through without a key.
                        _ => None,
                    };
                    request.extensions_mut().insert(Installed { shared, preflight });
                    let future = inner.call(request);
                    this.state.set(State::Calling { future, admitted });
                }
                StateProj::Calling { future, admitted } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(admitted) = admitted.take() {
                        append_rate_limit_headers(response.headers_mut(), &admitted.response_headers());
                        admitted.finish(response.status().as_u16());
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}
