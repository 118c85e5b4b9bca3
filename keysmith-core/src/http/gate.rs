//! The per-request flow both adapters run: read the key and the client
//! address, validate, and say what to do with the request.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::headers::{PolicyHeaders, names};
use super::{
    ApiKey, HeaderLookup, HeaderSink, KeySources, RateLimitHeaders, RefusalResponse, ScopeRequirement, TrustedProxies,
    UsageEndpoint,
};
use crate::clock::Stopwatch;
use crate::usage::texts::{Text, UsageTexts};
use crate::usage::{
    EntryNames, MAX_ENDPOINT_LEN, MAX_METHOD_LEN, MAX_USER_AGENT_LEN, NO_USER_AGENT, SharedStr, SharedTenant, Spill,
    UsageEntry, cut,
};
use crate::{Engine, PresentedKey, Refusal, RequestContext, UsageId, UsageRecord, Validation, ValidationError};

/// Longer `Origin` values cannot be allowed origins; they are cut (and so
/// refused by any origin allowlist).
const MAX_ORIGIN_LEN: usize = 1024;

/// What an adapter knows about a request before validation.
#[derive(Clone, Copy)]
pub struct RequestFacts<'a, H> {
    /// The HTTP method (`GET`).
    pub method: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The route template the request matched (`/users/{id}`), when the
    /// framework has routed it before the adapter runs (axum's
    /// `MatchedPath`); `None` otherwise (see [`Adapter::matched_route`](super::Adapter::matched_route)).
    pub route: Option<&'a str>,
    /// The address of the connection's other end, if the server knows it.
    pub peer: Option<IpAddr>,
    /// The request's headers (a reference to a header list, or an
    /// adapter's newtype over its header map).
    pub headers: H,
}

impl<'a, H: HeaderLookup> RequestFacts<'a, H> {
    /// The facts of one request, its route not known yet.
    pub fn new(method: &'a str, path: &'a str, peer: Option<IpAddr>, headers: H) -> Self {
        Self { method, path, route: None, peer, headers }
    }

    /// With the route template the request matched.
    #[must_use]
    pub fn with_route(mut self, route: Option<&'a str>) -> Self {
        self.route = route;
        self
    }
}

impl<H> fmt::Debug for RequestFacts<'_, H> {
    /// Leaves the headers out: they carry the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestFacts")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("route", &self.route)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// The HTTP behaviour both adapters share, in one framework-free value:
/// which headers carry the key, which proxies are trusted, the realm, the
/// app whose keys are accepted, optional mode and CORS preflights. Cheap to
/// clone (one `Arc`).
///
/// An adapter calls [`Gate::authorize`] for each request and acts on the
/// [`Outcome`]; for a passed request it later calls [`Admitted::finish`]
/// with the response status, which queues the usage record.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use keysmith_core::{Engine, MemoryStore, NewKey};
/// use keysmith_core::http::{Gate, Outcome, RequestFacts};
///
/// let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
/// let created = engine.tenant("app", "acme").create_key(NewKey::new("ci")).await?;
/// let gate = Gate::new(engine).with_realm("example");
///
/// let bearer = format!("Bearer {}", created.raw.expose());
/// let headers = [("authorization", bearer.as_str())];
/// let facts = RequestFacts::new("GET", "/things", Some([127, 0, 0, 1].into()), &headers[..]);
/// match gate.authorize(&facts).await {
///     Outcome::Pass(admitted) => {
///         assert_eq!(admitted.key().id(), created.key.id);
///         // …run the handler, then:
///         admitted.finish(200);
///     }
///     other => panic!("expected a pass, got {other:?}"),
/// }
///
/// let facts = RequestFacts::new("GET", "/things", None, &[] as &[(&str, &str)]);
/// let Outcome::Refuse(refusal) = gate.authorize(&facts).await else { panic!() };
/// assert_eq!((refusal.status, refusal.code), (401, "missing_key"));
/// # Ok::<(), keysmith_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Gate {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    engine: Engine,
    sources: KeySources,
    proxies: TrustedProxies,
    realm: String,
    app_id: Option<String>,
    optional: bool,
    preflight_passthrough: bool,
    rate_limit_headers: RateLimitHeaders,
    usage_endpoint: UsageEndpoint,
    /// Each policy's rendered rate-limit headers.
    policy_headers: Arc<PolicyHeaders>,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("Gate")
            .field("engine", &c.engine)
            .field("sources", &c.sources)
            .field("trusted_proxies", &c.proxies)
            .field("realm", &c.realm)
            .field("app_id", &c.app_id)
            .field("optional", &c.optional)
            .field("preflight_passthrough", &c.preflight_passthrough)
            .field("rate_limit_headers", &c.rate_limit_headers)
            .field("usage_endpoint", &c.usage_endpoint)
            .finish()
    }
}

impl Gate {
    /// The default realm of `WWW-Authenticate`.
    pub const DEFAULT_REALM: &'static str = "api";

    /// Validates with `engine`; keys from `Authorization: Bearer` and
    /// `X-API-Key`, no trusted proxy, realm `api`, keys of any app, a key
    /// required, CORS preflights authenticated like any request.
    #[must_use]
    pub fn new(engine: Engine) -> Self {
        Self {
            config: Arc::new(Config {
                engine,
                sources: KeySources::default(),
                proxies: TrustedProxies::none(),
                realm: Self::DEFAULT_REALM.to_owned(),
                app_id: None,
                optional: false,
                preflight_passthrough: false,
                rate_limit_headers: RateLimitHeaders::default(),
                usage_endpoint: UsageEndpoint::default(),
                policy_headers: Arc::default(),
            }),
        }
    }

    fn edit(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// Reads keys from these headers.
    #[must_use]
    pub fn with_key_sources(self, sources: KeySources) -> Self {
        self.edit(|c| c.sources = sources)
    }

    /// Believes forwarding headers from these proxies.
    #[must_use]
    pub fn with_trusted_proxies(self, proxies: TrustedProxies) -> Self {
        self.edit(|c| c.proxies = proxies)
    }

    /// The realm named in `WWW-Authenticate`.
    #[must_use]
    pub fn with_realm(self, realm: impl Into<String>) -> Self {
        let realm = realm.into();
        self.edit(|c| c.realm = realm)
    }

    /// Accepts only keys of this application (compared exactly); another
    /// app's key is refused as `invalid_key`, exactly like an unknown one.
    /// An id that is not an identity ([`validate_id`](crate::validate_id))
    /// matches no key: every request fails as `unavailable` (503) and the
    /// log says why. Check configuration with `validate_id` first.
    #[must_use]
    pub fn with_app_id(self, app_id: impl Into<String>) -> Self {
        let app_id = app_id.into();
        self.edit(|c| c.app_id = Some(app_id))
    }

    /// Optional mode: a request with no key passes without one
    /// ([`Outcome::Anonymous`]); a bad key is still refused.
    #[must_use]
    pub fn with_optional(self, optional: bool) -> Self {
        self.edit(|c| c.optional = optional)
    }

    /// Whether CORS preflights (`OPTIONS` with
    /// `Access-Control-Request-Method`) pass unauthenticated. Default no:
    /// a preflight is authenticated like any request, so it never reaches a
    /// handler that answers `OPTIONS` (axum's `any()`, an actix resource
    /// with a default route) without a key.
    ///
    /// Browsers send preflights without credentials, so the right wiring
    /// is a CORS layer *outside* Keysmith that answers them itself
    /// (tower-http's `CorsLayer`, actix-cors). Turn this on only when a CORS
    /// layer *inside* Keysmith answers every preflight before a handler
    /// could; the request then carries no key and records no usage.
    #[must_use]
    pub fn with_preflight_passthrough(self, passthrough: bool) -> Self {
        self.edit(|c| c.preflight_passthrough = passthrough)
    }

    /// Which rate-limit headers responses carry: the draft's
    /// `RateLimit-Policy` and `RateLimit` (the default), the legacy
    /// `RateLimit-Limit`/`-Remaining`/`-Reset`, or none.
    #[must_use]
    pub fn with_rate_limit_headers(self, mode: RateLimitHeaders) -> Self {
        self.edit(|c| c.rate_limit_headers = mode)
    }

    /// Which rate-limit headers responses carry.
    #[must_use]
    pub fn rate_limit_headers(&self) -> RateLimitHeaders {
        self.config.rate_limit_headers
    }

    /// What usage records name as the endpoint: the matched route template
    /// (the default), or the raw path, which may carry personal data (see
    /// [`UsageEndpoint::RawPath`]).
    #[must_use]
    pub fn with_usage_endpoint(self, endpoint: UsageEndpoint) -> Self {
        self.edit(|c| c.usage_endpoint = endpoint)
    }

    /// What usage records name as the endpoint.
    #[must_use]
    pub fn usage_endpoint(&self) -> UsageEndpoint {
        self.config.usage_endpoint
    }

    /// The engine.
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.config.engine
    }

    /// Where keys are read from.
    #[must_use]
    pub fn key_sources(&self) -> &KeySources {
        &self.config.sources
    }

    /// The trusted proxies.
    #[must_use]
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.config.proxies
    }

    /// The realm.
    #[must_use]
    pub fn realm(&self) -> &str {
        &self.config.realm
    }

    /// The only application whose keys are accepted, if restricted.
    #[must_use]
    pub fn app_id(&self) -> Option<&str> {
        self.config.app_id.as_deref()
    }

    /// True in optional mode.
    #[must_use]
    pub fn is_optional(&self) -> bool {
        self.config.optional
    }

    /// True if this request is a CORS preflight that passes unauthenticated.
    #[must_use]
    pub fn is_passthrough_preflight<H: HeaderLookup + ?Sized>(&self, method: &str, headers: &H) -> bool {
        self.config.preflight_passthrough
            && method.eq_ignore_ascii_case("OPTIONS")
            && headers.first_known(names::Known::ACCESS_CONTROL_REQUEST_METHOD).is_some()
    }

    /// The answer to `refusal`, with this gate's realm.
    #[must_use]
    pub fn refusal(&self, refusal: Refusal) -> RefusalResponse {
        let config = &self.config;
        RefusalResponse::refused_with(refusal, &config.realm, config.engine.clock().now(), config.rate_limit_headers)
    }

    /// Checks a route's scope requirement: `None` when it is met, else the
    /// answer, 403 `insufficient_scope`, or 401 `missing_key` for a request
    /// let through without a key (`key` is `None`, optional mode).
    ///
    /// A refused key gets back what its validation spent
    /// ([`Engine::refund_then`]): the refused request costs no rate-limit
    /// budget, quota or credits and records no usage; the refusal is
    /// counted among the key's outcomes (`insufficient_scope`). Adapters
    /// call this exactly where the route refuses, so none of them can
    /// forget the refund, and answer only once the [`ScopeRefusal`]'s
    /// [`refund`](ScopeRefusal::refund), if any, is done: credits a store
    /// gives back with a write are then back before the client can send
    /// its next request.
    #[must_use]
    pub fn scope_refusal(&self, requirement: &ScopeRequirement, key: Option<&ApiKey>) -> Option<ScopeRefusal> {
        let Some(key) = key else {
            self.config.engine.count_refusal(&Refusal::MissingKey, None);
            return Some(ScopeRefusal { response: self.refusal(Refusal::MissingKey), refund: None });
        };
        let missing = requirement.missing(key.scopes());
        if missing.is_empty() {
            return None;
        }
        let engine = &self.config.engine;
        let refund = engine.refund_then(key.validation());
        let one_of = requirement.mode() == super::ScopeMatch::Any && missing.len() > 1;
        let refusal = Refusal::InsufficientScope { missing, one_of };
        engine.count_refusal(&refusal, Some(&key.validation().key));
        let refund = (!refund.is_done()).then_some(refund);
        Some(ScopeRefusal { response: self.refusal(refusal), refund })
    }

    /// Decides what happens to a request. Headers are read before this
    /// returns; the future owns what it needs, so the request can be moved
    /// while it runs.
    ///
    /// The future never fails: infrastructure failure is
    /// [`Outcome::Refuse`] with [`RefusalResponse::unavailable`] (503),
    /// logged at `warn` with target `keysmith::http`.
    pub fn authorize<H: HeaderLookup>(&self, request: &RequestFacts<'_, H>) -> Authorize {
        let started = Stopwatch::start();
        let config = &self.config;
        if self.is_passthrough_preflight(request.method, &request.headers) {
            return Authorize::ready(Outcome::Preflight);
        }
        // Shape, checksum and hash now, while the header is borrowed: the
        // secret is never copied.
        let key = match config.sources.extract(&request.headers) {
            Ok(raw) => config.engine.present(raw),
            Err(Refusal::MissingKey) if config.optional => return Authorize::ready(Outcome::Anonymous),
            Err(refusal) => {
                // Refused before validation, which would have counted it.
                config.engine.count_refusal(&refusal, None);
                return Authorize::ready(Outcome::Refuse(self.refusal(refusal)));
            }
        };
        let texts = config.engine.usage_texts();
        let endpoint = match config.usage_endpoint {
            UsageEndpoint::RawPath => Some(Text::Shared(SharedStr::copied(cut(request.path, MAX_ENDPOINT_LEN)))),
            UsageEndpoint::Route => request.route.map(|route| route_text(texts, route)),
        };
        let draft = UsageDraft {
            method: SharedStr::method_code(request.method)
                .ok_or_else(|| SharedStr::copied(cut(request.method, MAX_METHOD_LEN))),
            endpoint,
            ip: config.proxies.client_ip(request.peer, &request.headers),
            // Added to the table only once the request has passed.
            user_agent: header_text(&request.headers, names::Known::USER_AGENT, MAX_USER_AGENT_LEN)
                .map(|agent| texts.look_up_user_agent(&agent)),
            started,
        };
        // Borrowed while validation needs no future; copied only for one.
        let origin = origin_text(&request.headers);
        // Without a future when every step answers at once (memory store,
        // warm cache, in-process limiter).
        let ready = config.engine.validate_ready(key, &self.context(&draft, origin.as_deref()));
        match ready {
            Some(result) => Authorize::ready(self.clone().outcome(result, draft)),
            None => {
                let origin = origin.map(|origin| match origin {
                    Cow::Borrowed(origin) => SharedStr::copied(origin),
                    Cow::Owned(origin) => SharedStr::from(origin),
                });
                Authorize { state: State::Pending(Box::pin(self.clone().validate(key, origin, draft))) }
            }
        }
    }

    /// What validation knows of the request. No path: validation reads
    /// none, and the record's endpoint may be known only once the handler
    /// has answered.
    fn context<'a>(&'a self, draft: &'a UsageDraft, origin: Option<&'a str>) -> RequestContext<'a> {
        let mut ctx = RequestContext::new();
        ctx.method = Some(draft.method());
        ctx.ip = draft.ip;
        ctx.origin = origin;
        ctx.app_id = self.config.app_id.as_deref();
        ctx
    }

    /// The outcome of a validation.
    fn outcome(self, result: Result<Validation, ValidationError>, draft: UsageDraft) -> Outcome {
        match result {
            // The admitted request keeps this gate (and through it the
            // engine) rather than a fresh clone of the engine.
            Ok(validation) => Outcome::Pass(Admitted { key: ApiKey::admitted(validation, draft), gate: self }),
            Err(ValidationError::Refused(refusal)) => Outcome::Refuse(self.refusal(refusal)),
            Err(ValidationError::Failed(error)) => {
                tracing::warn!(target: "keysmith::http", %error, method = draft.method(),
                    "API key validation failed; answering 503");
                self.config.engine.count_unavailable();
                Outcome::Refuse(RefusalResponse::unavailable())
            }
        }
    }

    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn holds its arguments twice (as arguments and as locals) in the future, \
                  which is boxed and copied per request"
    )]
    fn validate(
        self, key: PresentedKey, origin: Option<SharedStr>, draft: UsageDraft,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        async move {
            let result = self.config.engine.validate_presented(key, &self.context(&draft, origin.as_deref())).await;
            self.outcome(result, draft)
        }
    }
}

/// Route template `route`: its number in the routes table, or a copy when
/// the table is full.
#[inline]
fn route_text(texts: &UsageTexts, route: &str) -> Text {
    let route = cut(route, MAX_ENDPOINT_LEN);
    texts.route(route).map_or_else(|| Text::Shared(SharedStr::copied(route)), Text::Id)
}

/// The first value of header `name` as text (lossy), cut to `max` bytes.
fn header_text<'h, H: HeaderLookup + ?Sized>(headers: &'h H, name: names::Known, max: usize) -> Option<Cow<'h, str>> {
    let value = headers.first_known(name)?;
    Some(String::from_utf8_lossy(&value[..value.len().min(max)]))
}

/// The request's `Origin` as text (lossy), cut to [`MAX_ORIGIN_LEN`]
/// bytes. Sent more than once, its values are read joined, as HTTP joins a
/// repeated field (`a, b`): no allowlist holds such a value (an allowed
/// origin has no space), so a second `Origin` cannot pass behind an allowed
/// first one.
fn origin_text<'h, H: HeaderLookup + ?Sized>(headers: &'h H) -> Option<Cow<'h, str>> {
    let mut values = headers.known_values(names::Known::ORIGIN);
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(String::from_utf8_lossy(&first[..first.len().min(MAX_ORIGIN_LEN)]));
    };
    let mut joined = first.to_vec();
    for value in std::iter::once(second).chain(values) {
        if joined.len() >= MAX_ORIGIN_LEN {
            break;
        }
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(value);
    }
    joined.truncate(MAX_ORIGIN_LEN);
    Some(Cow::Owned(String::from_utf8_lossy(&joined).into_owned()))
}

/// A route's refusal of a key ([`Gate::scope_refusal`]): the answer, and
/// what is still to be given back of what the key's validation spent.
#[derive(Debug)]
#[non_exhaustive]
pub struct ScopeRefusal {
    /// The answer: 403 `insufficient_scope`, or 401 `missing_key`.
    pub response: RefusalResponse,
    /// The credits still being given back (a store write); await it before
    /// answering. `None` when everything was back at once.
    pub refund: Option<crate::Refund>,
}

/// What to do with a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The key is valid: put [`Admitted::key`] in the request's extensions,
    /// call the handler, add [`Admitted::write_headers`] and call
    /// [`Admitted::finish`] with the status ([`Gate::guard`] does all of
    /// this).
    Pass(Admitted),
    /// Optional mode and no key: call the handler without a key.
    Anonymous,
    /// A CORS preflight: call the handler without a key, record nothing.
    Preflight,
    /// Answer with this instead of calling the handler.
    Refuse(RefusalResponse),
}

/// A request whose key passed, on its way through the handler: two
/// pointers, as it is moved with the response future (its usage draft is
/// in the key's allocation).
pub struct Admitted {
    key: ApiKey,
    gate: Gate,
}

/// The usage record of a passed request, less what is known only once
/// the handler has answered.
#[derive(Clone)]
pub(super) struct UsageDraft {
    /// A standard method's code, or another method copied.
    method: Result<u8, SharedStr>,
    /// The endpoint when known before the handler runs: the raw path
    /// (opted in) or the route the framework had matched; else the route
    /// read from the response, or `unmatched`.
    endpoint: Option<Text>,
    ip: Option<IpAddr>,
    /// Numbered if the table knew it; else a copy, added to the table
    /// when the record is queued.
    user_agent: Option<Text>,
    started: Stopwatch,
}

impl fmt::Debug for Admitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let draft = self.draft();
        f.debug_struct("Admitted")
            .field("key", &self.key)
            .field("method", &draft.method())
            .field("endpoint", &draft.endpoint)
            .field("ip", &draft.ip)
            .finish_non_exhaustive()
    }
}

impl Admitted {
    /// The validated key.
    #[must_use]
    pub fn key(&self) -> &ApiKey {
        &self.key
    }

    /// The client address the key was checked against.
    #[must_use]
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.draft().client_ip()
    }

    fn draft(&self) -> &UsageDraft {
        self.key.draft().expect("a gate admits a key with its request's draft")
    }

    /// Writes the response's rate-limit headers into `out`, in the gate's
    /// [`RateLimitHeaders`] mode, when the key's policy limits it; else
    /// nothing (also for a request refused after validation, which spent
    /// nothing). [`Gate::guard`] calls it on every passed response.
    pub fn write_headers(&self, out: &mut impl HeaderSink) {
        let validation = self.key.validation();
        if !validation.is_refunded() {
            let config = &self.gate.config;
            config.rate_limit_headers.write_for_validation_with(validation, Some(&config.policy_headers), out);
        }
    }

    /// [`write_headers`](Self::write_headers) as a list.
    #[must_use]
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        self.write_headers(&mut headers);
        headers
    }

    /// The usage record of this request answered with `status`; latency
    /// runs from the start of [`Gate::authorize`] to now. Its endpoint is
    /// what was known before the handler ran (see
    /// [`finish_routed`](Self::finish_routed)).
    #[must_use]
    pub fn usage_record(&self, status: u16) -> UsageRecord {
        let texts = self.gate.engine().usage_texts();
        let (entry, spill) = self.draft().entry(&self.key, status, None, texts);
        entry.into_record(UsageId::new(), &texts.read(), spill)
    }

    /// Queues the usage record of this request answered with `status`;
    /// never waits. A request refunded after validation (refused by a
    /// route's scope requirement) records nothing.
    ///
    /// Its endpoint is the one known before the handler ran (the raw path
    /// if opted in, else [`RequestFacts::route`]), or [`UNMATCHED_ROUTE`](super::UNMATCHED_ROUTE).
    pub fn finish(self, status: u16) {
        self.finish_routed(status, || None);
    }

    /// [`finish`](Self::finish) for a framework that matches the route
    /// inside the service it wraps: when the endpoint was not known before
    /// the handler ran, it is the template `route` returns (called at most
    /// once), or [`UNMATCHED_ROUTE`](super::UNMATCHED_ROUTE) if that is `None`.
    pub fn finish_routed<'r>(self, status: u16, route: impl FnOnce() -> Option<Cow<'r, str>>) {
        if !self.key.validation().is_refunded() {
            let draft = self.draft();
            let engine = self.gate.engine();
            let texts = engine.usage_texts();
            let routed = match draft.endpoint {
                Some(_) => None,
                None => route().map(|route| route_text(texts, &route)),
            };
            let (entry, spill) = draft.entry(&self.key, status, routed, texts);
            engine.record_entry(entry, spill);
        }
    }
}

impl UsageDraft {
    /// The client address the key was checked against.
    pub(super) fn client_ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// The request's method.
    fn method(&self) -> &str {
        match &self.method {
            Ok(code) => SharedStr::standard_method(*code).unwrap_or_default(),
            Err(other) => other,
        }
    }

    /// The queued entry (and what its tables could not number), naming
    /// `routed` if the endpoint was not known before, else
    /// [`UNMATCHED_ROUTE`](super::UNMATCHED_ROUTE); a user agent the table
    /// did not know is added now that the request has passed.
    fn entry(
        &self, key: &ApiKey, status: u16, routed: Option<Text>, texts: &UsageTexts,
    ) -> (UsageEntry, Option<Box<Spill>>) {
        let validation = key.validation();
        let mut spill = None;
        let names = EntryNames {
            tenant: texts
                .tenant(&validation.key)
                .unwrap_or_else(|| Spill::tenant(&mut spill, SharedTenant::of_key(&validation.key))),
            endpoint: match self.endpoint.as_ref().or(routed.as_ref()) {
                Some(Text::Id(id)) => *id,
                Some(Text::Shared(text)) => Spill::endpoint(&mut spill, text.clone()),
                None => UsageTexts::UNMATCHED,
            },
            user_agent: match &self.user_agent {
                None => NO_USER_AGENT,
                Some(agent) => {
                    texts.settle_user_agent(agent).unwrap_or_else(|agent| Spill::user_agent(&mut spill, agent))
                }
            },
            method: match &self.method {
                Ok(code) => *code,
                Err(other) => Spill::method(&mut spill, other.clone()),
            },
        };
        let latency = self.started.elapsed();
        let at = validation.checked_at();
        (UsageEntry::new(validation.key.id, names, status, self.ip, latency, at, &mut spill), spill)
    }
}

/// The future of [`Gate::authorize`]: `Send`, `'static`, and free when the
/// outcome is known without validation (missing key, preflight).
#[must_use = "futures do nothing unless polled"]
pub struct Authorize {
    state: State,
}

enum State {
    Ready(Option<Known>),
    Pending(Pin<Box<dyn Future<Output = Outcome> + Send>>),
}

/// An [`Outcome`] known at once, with the rare refusal boxed: the future
/// of a passed request (moved through the framework's own futures) is only
/// as large as [`Admitted`].
enum Known {
    Pass(Admitted),
    Anonymous,
    Preflight,
    Refuse(Box<RefusalResponse>),
}

impl Authorize {
    fn ready(outcome: Outcome) -> Self {
        let known = match outcome {
            Outcome::Pass(admitted) => Known::Pass(admitted),
            Outcome::Anonymous => Known::Anonymous,
            Outcome::Preflight => Known::Preflight,
            Outcome::Refuse(refusal) => Known::Refuse(Box::new(refusal)),
        };
        Self { state: State::Ready(Some(known)) }
    }

    /// The admitted request, when the key passed without waiting for
    /// anything (the memory store, a warm cache); else this future, to be
    /// awaited.
    pub(super) fn passed_now(self) -> Result<Admitted, Self> {
        match self.state {
            State::Ready(Some(Known::Pass(admitted))) => Ok(admitted),
            state => Err(Self { state }),
        }
    }

    /// True when the outcome is known now and is a refusal: the inner
    /// service will not be called.
    pub(super) fn is_refused(&self) -> bool {
        matches!(self.state, State::Ready(Some(Known::Refuse(_))))
    }
}

impl fmt::Debug for Authorize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Ready(_) => "ready",
            State::Pending(_) => "validating",
        };
        f.debug_struct("Authorize").field("state", &state).finish()
    }
}

impl Future for Authorize {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match &mut self.state {
            State::Ready(known) => Poll::Ready(match known.take().expect("Authorize polled after completion") {
                Known::Pass(admitted) => Outcome::Pass(admitted),
                Known::Anonymous => Outcome::Anonymous,
                Known::Preflight => Outcome::Preflight,
                Known::Refuse(refusal) => Outcome::Refuse(*refusal),
            }),
            State::Pending(future) => future.as_mut().poll(cx),
        }
    }
}
