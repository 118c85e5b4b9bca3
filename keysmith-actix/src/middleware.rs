//! `Keysmith`: validate every request's key before the wrapped service.

use std::future::{Ready, ready};
use std::rc::Rc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::{Error, HttpMessage, HttpResponse};
use futures_util::future::LocalBoxFuture;
use keysmith_core::Engine;
use keysmith_core::http::TrustedProxies;
use keysmith_core::http::{
    ApiKey as CoreApiKey, Gate, KeySources, Outcome, RateLimitHeaders, RefusalResponse, RequestFacts,
};

use crate::request::{Headers, Installed, Shared};
use crate::response::append_rate_limit_headers;
use crate::{ApiKeyRejection, RefusalResponder};

/// Middleware that validates the API key of every request;
/// `.wrap()` it around an `App`, a `web::scope` or a resource.
///
/// A refused request is answered here (401, 403, 429… with the JSON body)
/// as an [`ApiKeyRejection`] error response; the wrapped service never sees
/// it. A passed request reaches the wrapped service with the
/// [`ApiKey`](crate::ApiKey) in its extensions, its response gets the
/// rate-limit headers of the key's policy, and its usage (status,
/// latency) is queued once the wrapped service has answered. If the store
/// cannot be reached the answer is 503, never a pass.
///
/// The client address is the connection's peer (`ServiceRequest::peer_addr`);
/// the forwarding header (`X-Forwarded-For`, or `Forwarded` if configured)
/// is read only from [trusted proxies](Self::with_trusted_proxies).
///
/// CORS preflights are authenticated like any other request; `.wrap()`
/// actix-cors's `Cors` *after* `Keysmith` (the last `wrap` is the
/// outermost), so that it answers them.
///
/// Build it in `main`, outside the `HttpServer::new` closure, and clone it
/// into the closure: constructing it starts the engine's usage writer on
/// the current runtime
/// ([`Engine::start_usage_recorder`](keysmith_core::Engine::start_usage_recorder)).
/// actix-web runs each worker on its own runtime and stops them before
/// `main` goes on; a writer started on a worker would be stopped with it,
/// losing the records still queued for [`Engine::shutdown`].
///
/// ```no_run
/// use actix_web::{App, HttpServer, web};
/// use keysmith_actix::{ApiKey, Keysmith, TrustedProxies};
/// use keysmith_core::{Engine, MemoryStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = Engine::builder(std::sync::Arc::new(MemoryStore::new())).build()?;
/// let keysmith = Keysmith::new(engine.clone())
///     .with_realm("my-api")
///     .with_trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"])?);
/// HttpServer::new(move || {
///     App::new()
///         .route("/me", web::get().to(|key: ApiKey| async move { key.id().to_string() }))
///         .wrap(keysmith.clone())
/// })
/// .bind(("127.0.0.1", 3001))?
/// .run()
/// .await?;
/// engine.shutdown().await; // writes the queued usage records
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Keysmith {
    gate: Gate,
    responder: RefusalResponder,
}

impl Keysmith {
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
        // Usage is written by a task of the runtime this runs on; in `main`
        // that runtime outlives the workers (see the type's docs).
        gate.engine().start_usage_recorder();
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

    /// Optional mode: a request without a key reaches the wrapped service
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
    /// the standard headers). `RequireScopes` and the extractor use it too.
    pub fn with_responder(
        mut self,
        responder: impl Fn(&RefusalResponse) -> HttpResponse + Send + Sync + 'static,
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

impl<S, B> Transform<S, ServiceRequest> for Keysmith
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = KeysmithMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(KeysmithMiddleware {
            service: Rc::new(service),
            shared: Rc::new(Shared { gate: self.gate.clone(), responder: self.responder.clone() }),
        }))
    }
}

/// The service made by [`Keysmith`]. Refusals have the right-hand body of
/// the [`EitherBody`]; the wrapped service's responses the left.
#[derive(Debug)]
pub struct KeysmithMiddleware<S> {
    service: Rc<S>,
    shared: Rc<Shared>,
}

impl<S, B> Service<ServiceRequest> for KeysmithMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let authorize = {
            let headers = Headers(request.headers());
            let peer = request.peer_addr().map(|addr| addr.ip());
            let facts = RequestFacts::new(request.method().as_str(), request.path(), peer, &headers);
            self.shared.gate.authorize(&facts)
        };
        let service = Rc::clone(&self.service);
        let shared = Rc::clone(&self.shared);
        Box::pin(async move {
            let mut preflight = false;
            let admitted = match authorize.await {
                Outcome::Pass(admitted) => {
                    request.extensions_mut().insert(CoreApiKey::clone(admitted.key()));
                    Some(admitted)
                }
                Outcome::Refuse(refusal) => {
                    let rejection = ApiKeyRejection::refused(refusal, shared.responder.clone());
                    return Ok(request.error_response(rejection).map_into_right_body());
                }
                Outcome::Preflight => {
                    preflight = true;
                    None
                }
                // Anonymous, and anything later core may add that lets the
                // request through without a key.
                _ => None,
            };
            request.extensions_mut().insert(Installed { shared, preflight });
            match service.call(request).await {
                Ok(mut response) => {
                    if let Some(admitted) = admitted {
                        append_rate_limit_headers(response.headers_mut(), &admitted.response_headers());
                        admitted.finish(response.status().as_u16());
                    }
                    Ok(response.map_into_left_body())
                }
                Err(error) => {
                    // The error becomes a response further out; record the
                    // status it will have.
                    if let Some(admitted) = admitted {
                        admitted.finish(error.as_response_error().status_code().as_u16());
                    }
                    Err(error)
                }
            }
        })
    }
}
