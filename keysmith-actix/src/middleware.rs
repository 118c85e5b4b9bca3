//! `ApiKeyMiddleware`: validate every request's key before the wrapped service.

use std::borrow::Cow;
use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::rc::Rc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::{Error, HttpMessage, HttpResponse};
use keysmith_core::Engine;
use keysmith_core::http::{Adapter, Admission, Gate, Guarded, RefusalResponse, RequestFacts, SharedHeaderValue};

use crate::request::{Headers, Installed, Shared};
use crate::response::{append_header, append_shared};
use crate::routes::StaticRoutes;
use crate::{ApiKeyRejection, RefusalResponder};

/// Middleware that validates the API key of every request;
/// `.wrap()` it around an `App`, a `web::scope` or a resource.
///
/// A refused request is answered here (401, 403, 429… with the JSON body)
/// as an [`ApiKeyRejection`] error response; the wrapped service never sees
/// it. A passed request reaches the wrapped service with the
/// [`ApiKey`](crate::ApiKey) in its extensions, its response gets the
/// `RateLimit-*` headers of the key's policy, and its usage (status,
/// latency) is queued once the wrapped service has answered (also when it
/// fails: then with the status of the error's response). If the store
/// cannot be reached the answer is 503, never a pass. The sequence is
/// core's ([`Gate::guard`]); this type is its actix glue.
///
/// The usage record names the pattern of the resource the request was
/// routed to (`HttpRequest::match_pattern`, read from the response, so
/// wherever the middleware wraps), `unmatched` when no resource matched or
/// when the wrapped service failed with an error (which carries no
/// request). The raw path is recorded only with
/// [`with_usage_endpoint`](Self::with_usage_endpoint)`(UsageEndpoint::RawPath)`,
/// which stores whatever personal data paths carry.
///
/// The client address is the connection's peer (`ServiceRequest::peer_addr`);
/// the forwarding header (`X-Forwarded-For`, or `Forwarded` if configured)
/// is read only from [trusted proxies](Self::with_trusted_proxies).
///
/// CORS preflights are authenticated like any other request; `.wrap()`
/// actix-cors's `Cors` *after* `ApiKeyMiddleware` (the last `wrap` is the
/// outermost), so that it answers them.
///
/// The engine writes usage on the runtime it was built on (or the one it
/// was [started](keysmith_core::Engine::start) on): build it in `main`, where
/// [`Engine::shutdown`](keysmith_core::Engine::shutdown) runs after the
/// workers stop.
///
/// ```no_run
/// use actix_web::{App, HttpServer, web};
/// use keysmith_actix::{ApiKey, ApiKeyMiddleware, TrustedProxies};
/// use keysmith_core::{Engine, MemoryStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = Engine::builder(std::sync::Arc::new(MemoryStore::new())).build()?;
/// let keysmith = ApiKeyMiddleware::new(engine.clone())
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
pub struct ApiKeyMiddleware {
    gate: Gate,
    responder: RefusalResponder,
}

impl ApiKeyMiddleware {
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
    /// the standard headers). `RequireScopes` and the extractor use it too.
    pub fn with_responder(
        mut self, responder: impl Fn(&RefusalResponse) -> HttpResponse + Send + Sync + 'static,
    ) -> Self {
        self.responder = RefusalResponder::new(responder);
        self
    }
}

impl<S, B> Transform<S, ServiceRequest> for ApiKeyMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = ApiKeyService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ApiKeyService {
            service: Rc::new(service),
            shared: Rc::new(Shared {
                gate: self.gate.clone(),
                responder: self.responder.clone(),
                routes: StaticRoutes::default(),
            }),
        }))
    }
}

/// The service made by [`ApiKeyMiddleware`]. Refusals have the right-hand body of
/// the [`EitherBody`]; the wrapped service's responses the left.
#[derive(Debug)]
pub struct ApiKeyService<S> {
    service: Rc<S>,
    shared: Rc<Shared>,
}

impl<S, B> Service<ServiceRequest> for ApiKeyService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        // A key that passed at once calls the wrapped service now rather
        // than from the future's first poll.
        let glue = |_: Option<&mut &S>| Glue {
            service: Rc::clone(&self.service),
            shared: Rc::clone(&self.shared),
            _body: PhantomData,
        };
        self.shared.gate.guard_inner(&mut &*self.service, request, |service, request| service.call(request), glue)
    }
}

/// The response future of [`ApiKeyService`]: core's request sequence
/// ([`Gate::guard`]) run with this crate's glue.
pub type ResponseFuture<S, B> = Guarded<Glue<S, B>>;

/// actix's side of one request: the wrapped service and what refusals and
/// extractors need. Named only through [`ResponseFuture`].
pub struct Glue<S, B> {
    service: Rc<S>,
    shared: Rc<Shared>,
    _body: PhantomData<fn() -> B>,
}

impl<S, B> std::fmt::Debug for Glue<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Glue").finish_non_exhaustive()
    }
}

impl<S, B> Adapter for Glue<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Request = ServiceRequest;
    type Headers<'r>
        = Headers<'r>
    where
        Self: 'r;
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = S::Future;
    type Output = ServiceResponse<EitherBody<B>>;

    fn facts(request: &ServiceRequest) -> RequestFacts<'_, Headers<'_>> {
        let peer = request.peer_addr().map(|addr| addr.ip());
        RequestFacts::new(request.method().as_str(), request.path(), peer, Headers(request.headers()))
    }

    fn admit(&self, request: &mut ServiceRequest, admission: Admission<'_>) {
        let (key, preflight) = (admission.key().cloned(), matches!(admission, Admission::Preflight));
        request.extensions_mut().insert(Installed { key, shared: Rc::clone(&self.shared), preflight });
    }

    fn call(&mut self, request: ServiceRequest) -> S::Future {
        self.service.call(request)
    }

    fn refuse(self, request: ServiceRequest, refusal: RefusalResponse) -> Self::Output {
        let rejection = ApiKeyRejection::refused(refusal, self.shared.responder.clone());
        request.error_response(rejection).map_into_right_body()
    }

    fn pass(response: ServiceResponse<B>) -> Self::Output {
        response.map_into_left_body()
    }

    fn status(response: &ServiceResponse<B>) -> u16 {
        response.status().as_u16()
    }

    /// The status of the response actix will make of the error.
    fn error_status(error: &Error) -> u16 {
        error.as_response_error().status_code().as_u16()
    }

    /// The pattern of the resource the request was routed to
    /// (`HttpRequest::match_pattern`): the router runs inside the wrapped
    /// service, so the request the response carries has been matched by
    /// then.
    /// A route without parameters is read from the middleware's
    /// [`StaticRoutes`](crate::routes::StaticRoutes) without allocating.
    fn matched_route<'r>(&self, response: &'r ServiceResponse<B>) -> Option<Cow<'r, str>> {
        self.shared.routes.template(response.request())
    }

    fn append_header(response: &mut ServiceResponse<B>, name: &'static str, value: &str) {
        append_header(response.headers_mut(), name, value);
    }

    fn append_shared(response: &mut ServiceResponse<B>, name: &'static str, value: &SharedHeaderValue) {
        append_shared(response.headers_mut(), name, value);
    }
}
