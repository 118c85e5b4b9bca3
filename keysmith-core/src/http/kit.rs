//! The per-request sequence of every adapter, written once: read the
//! request, authorize it, leave the key in the request, call the inner
//! service, then add the rate-limit headers and queue the usage record, or
//! answer the refusal. An adapter says how its framework does each small
//! step ([`Adapter`]) and returns [`Gate::guard`]'s future as its own.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::{
    Admitted, ApiKey, Authorize, Gate, HeaderLookup, Outcome, RefusalResponse, RequestFacts, SharedHeaderValue,
};

/// Where response headers are written: the adapter's response, or a list.
/// Core renders every header value once, from numbers where it has them,
/// and hands it over with its lowercase name.
pub trait HeaderSink {
    /// Appends `name: value`; `name` is lowercase and valid, `value` is
    /// visible ASCII.
    fn append_header(&mut self, name: &'static str, value: &str);

    /// Appends `name: value` for a value core rendered once and shares
    /// (a policy's `RateLimit-Policy`); a sink that can keep the shared
    /// bytes (`HeaderValue::from_maybe_shared`) overrides this to skip the
    /// copy.
    fn append_shared(&mut self, name: &'static str, value: &SharedHeaderValue) {
        self.append_header(name, value.as_str());
    }
}

impl HeaderSink for Vec<(&'static str, String)> {
    fn append_header(&mut self, name: &'static str, value: &str) {
        self.push((name, value.to_owned()));
    }
}

/// How a request goes on to the inner service; the adapter records it in
/// the request's extensions, for its extractors and scope guards.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Admission<'a> {
    /// The key passed.
    Key(&'a ApiKey),
    /// Optional mode and no key.
    Anonymous,
    /// A CORS preflight let through without a key.
    Preflight,
}

impl<'a> Admission<'a> {
    /// The key the request passed with, if any: what an adapter leaves in
    /// the request's extensions beside whether it was a preflight.
    #[must_use]
    pub fn key(self) -> Option<&'a ApiKey> {
        match self {
            Self::Key(key) => Some(key),
            Self::Anonymous | Self::Preflight => None,
        }
    }
}

/// One framework's side of the request sequence. Each method is one small
/// step in that framework's terms; the order, and every decision, is
/// [`Gate::guard`]'s.
///
/// An adapter implements it on a per-request value holding what it needs to
/// call the inner service and to render refusals.
pub trait Adapter: Sized {
    /// The framework's request.
    type Request;
    /// The request's headers as core reads them (a newtype over the
    /// framework's header map).
    type Headers<'r>: HeaderLookup
    where
        Self: 'r;
    /// The inner service's response.
    type Response;
    /// The inner service's error.
    type Error;
    /// The inner service's future.
    type Future: Future<Output = Result<Self::Response, Self::Error>>;
    /// What the adapter's service answers (the inner response, or a
    /// refusal, in one type).
    type Output;

    /// Method, path, peer address and headers of `request`, and its route
    /// template if the framework has matched it already
    /// ([`RequestFacts::with_route`]).
    fn facts(request: &Self::Request) -> RequestFacts<'_, Self::Headers<'_>>;

    /// Records in `request` that it passed and how (the key, for
    /// handlers), before the inner service is called.
    fn admit(&self, request: &mut Self::Request, admission: Admission<'_>);

    /// Calls the inner service. For a passed key the adapter is kept until
    /// the response, for [`matched_route`](Self::matched_route).
    fn call(&mut self, request: Self::Request) -> Self::Future;

    /// The answer to a refused request.
    fn refuse(self, request: Self::Request, refusal: RefusalResponse) -> Self::Output;

    /// The inner service's response as the adapter's answer.
    fn pass(response: Self::Response) -> Self::Output;

    /// The status of a response.
    fn status(response: &Self::Response) -> u16;

    /// The status the inner service's error will be answered with, for the
    /// usage record (500 when the framework cannot tell).
    fn error_status(error: &Self::Error) -> u16;

    /// The route template the request matched, read from the inner
    /// service's response: for a framework that routes inside the service
    /// the adapter wraps (actix-web). Asked only for a passed request whose
    /// [facts](Self::facts) carried no route, and only when usage records
    /// name routes; `None` (the default) records
    /// [`UNMATCHED_ROUTE`](super::UNMATCHED_ROUTE).
    fn matched_route<'r>(&self, response: &'r Self::Response) -> Option<Cow<'r, str>> {
        let _ = response;
        None
    }

    /// Appends a header to a response (a name from
    /// [`names`](super::names), a valid value).
    fn append_header(response: &mut Self::Response, name: &'static str, value: &str);

    /// Appends a shared header value to a response
    /// ([`HeaderSink::append_shared`]); by default as
    /// [`append_header`](Self::append_header) does.
    fn append_shared(response: &mut Self::Response, name: &'static str, value: &SharedHeaderValue) {
        Self::append_header(response, name, value.as_str());
    }
}

impl Gate {
    /// The whole per-request sequence for `request`, with `adapter`'s glue:
    ///
    /// 1. [`authorize`](Self::authorize) (headers are read before this
    ///    returns);
    /// 2. a refusal is answered with [`Adapter::refuse`] and the inner
    ///    service is not called;
    /// 3. otherwise [`Adapter::admit`] leaves the key (or the anonymous or
    ///    preflight mark) in the request and [`Adapter::call`] runs the
    ///    inner service;
    /// 4. for a passed key, the response gets the rate-limit headers and
    ///    the usage record is queued with its status and route (from the
    ///    facts, else [`Adapter::matched_route`]); when the inner service
    ///    fails, the record is queued with the status the error will be
    ///    answered with ([`Adapter::error_status`]) and the route known
    ///    before the call, and the error goes on unchanged.
    pub fn guard<A: Adapter>(&self, adapter: A, request: A::Request) -> Guarded<A> {
        let authorize = self.authorize(&A::facts(&request));
        Guarded::authorizing(adapter, authorize, request)
    }

    /// [`guard`](Self::guard) for an adapter that can call its inner
    /// service itself, as tower's and actix's do: when the key passed at
    /// once (the memory store, a warm cache), the request is admitted and
    /// `call` calls `inner` before this returns, rather than from the
    /// future's first poll; [`Adapter::call`] is then never asked.
    /// `adapter` makes the adapter; it is handed `inner` only when the
    /// future may still call it (the outcome is not known yet, or lets the
    /// request through without a key), so that a tower service keeps the
    /// instance it polled ready and leaves a clone in its place, and clones
    /// nothing for a key that passed or a request refused at once.
    #[inline]
    pub fn guard_inner<A: Adapter, I>(
        &self, inner: &mut I, request: A::Request, call: impl FnOnce(&mut I, A::Request) -> A::Future,
        adapter: impl FnOnce(Option<&mut I>) -> A,
    ) -> Guarded<A> {
        let authorize = self.authorize(&A::facts(&request));
        match authorize.passed_now() {
            Ok(admitted) => Guarded::admitted(adapter(None), admitted, request, |request| call(inner, request)),
            Err(authorize) => {
                let inner = (!authorize.is_refused()).then_some(inner);
                Guarded::authorizing(adapter(inner), authorize, request)
            }
        }
    }
}

impl<A: Adapter> Guarded<A> {
    /// The rest of [`Gate::guard`] for a request [`Gate::authorize`]d
    /// already: waits for `authorize`, then answers the refusal or admits
    /// the request and calls the inner service with [`Adapter::call`].
    fn authorizing(adapter: A, authorize: Authorize, request: A::Request) -> Self {
        Self { step: Step::Authorizing { authorize, parked: Some((adapter, request)) } }
    }

    /// The rest of [`Gate::guard_inner`] for a request whose key passed
    /// already: the adapter [admits](Adapter::admit) it, `call` calls the
    /// inner service now, and the response gets the rate-limit headers and
    /// queues the usage record as `guard`'s would. Inlined, so that the
    /// inner service's future is built where it stays.
    #[inline]
    fn admitted(
        adapter: A, admitted: Admitted, mut request: A::Request, call: impl FnOnce(A::Request) -> A::Future,
    ) -> Self {
        adapter.admit(&mut request, Admission::Key(admitted.key()));
        Self { step: Step::Calling { future: call(request), passed: Some((adapter, admitted)) } }
    }
}

pin_project! {
    /// The future of [`Gate::guard`]: the adapter's response future.
    #[must_use = "futures do nothing unless polled"]
    pub struct Guarded<A: Adapter> {
        #[pin]
        step: Step<A>,
    }
}

pin_project! {
    #[project = StepProj]
    enum Step<A: Adapter> {
        Authorizing {
            authorize: Authorize,
            parked: Option<(A, A::Request)>,
        },
        Calling {
            #[pin]
            future: A::Future,
            // The adapter, for the route, and the request that passed.
            passed: Option<(A, Admitted)>,
        },
    }
}

impl<A: Adapter> fmt::Debug for Guarded<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match &self.step {
            Step::Authorizing { .. } => "authorizing",
            Step::Calling { .. } => "calling",
        };
        f.debug_struct("Guarded").field("step", &step).finish_non_exhaustive()
    }
}

impl<A: Adapter> Future for Guarded<A> {
    type Output = Result<A::Output, A::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.step.as_mut().project() {
                StepProj::Authorizing { authorize, parked } => {
                    let outcome = ready!(Pin::new(authorize).poll(cx));
                    let (mut adapter, mut request) = parked.take().expect("Guarded polled after completion");
                    let admitted = match outcome {
                        Outcome::Pass(admitted) => {
                            adapter.admit(&mut request, Admission::Key(admitted.key()));
                            Some(admitted)
                        }
                        Outcome::Refuse(refusal) => return Poll::Ready(Ok(adapter.refuse(request, refusal))),
                        Outcome::Preflight => {
                            adapter.admit(&mut request, Admission::Preflight);
                            None
                        }
                        Outcome::Anonymous => {
                            adapter.admit(&mut request, Admission::Anonymous);
                            None
                        }
                    };
                    let future = adapter.call(request);
                    let passed = admitted.map(|admitted| (adapter, admitted));
                    this.step.set(Step::Calling { future, passed });
                }
                StepProj::Calling { future, passed } => {
                    let result = ready!(future.poll(cx));
                    let passed = passed.take();
                    return Poll::Ready(match result {
                        Ok(mut response) => {
                            if let Some((adapter, admitted)) = passed {
                                admitted.write_headers(&mut ResponseSink::<A>(&mut response));
                                admitted.finish_routed(A::status(&response), || adapter.matched_route(&response));
                            }
                            Ok(A::pass(response))
                        }
                        Err(error) => {
                            if let Some((_, admitted)) = passed {
                                admitted.finish(A::error_status(&error));
                            }
                            Err(error)
                        }
                    });
                }
            }
        }
    }
}

/// An adapter's response as a [`HeaderSink`].
struct ResponseSink<'a, A: Adapter>(&'a mut A::Response);

impl<A: Adapter> HeaderSink for ResponseSink<'_, A> {
    fn append_header(&mut self, name: &'static str, value: &str) {
        A::append_header(self.0, name, value);
    }

    fn append_shared(&mut self, name: &'static str, value: &SharedHeaderValue) {
        A::append_shared(self.0, name, value);
    }
}

/// Logs, once per process and at `error`, that `needed_by` (an extractor)
/// ran where `middleware` never did: the application is wired wrong. The
/// extractor still answers (500, or `None` for an optional key); the log
/// says why.
pub fn log_missing_middleware(needed_by: &str, middleware: &str) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::error!(target: "keysmith::http", needed_by, middleware,
            "{needed_by} ran on a request that {middleware} never saw; add the middleware in front of it");
    }
}

/// The configuration setters of an adapter's middleware, forwarded to its
/// [`Gate`] field named `gate`: generated once, so that every adapter offers
/// the same options with the same documentation.
#[doc(hidden)]
#[macro_export]
macro_rules! __gate_options {
    () => {
        /// Reads keys from these headers (default `Authorization: Bearer`
        /// and `X-API-Key`).
        pub fn with_key_sources(mut self, sources: $crate::http::KeySources) -> Self {
            self.gate = self.gate.with_key_sources(sources);
            self
        }

        /// Believes the forwarding header of these proxies (`X-Forwarded-For`
        /// unless [`TrustedProxies::with_header`]($crate::http::TrustedProxies::with_header)
        /// says `Forwarded`); behind them an entry that is not an address, or
        /// a header that cannot be read, makes the client unknown.
        pub fn with_trusted_proxies(mut self, proxies: $crate::http::TrustedProxies) -> Self {
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
        /// authenticated like any request). Put the CORS layer outside
        /// Keysmith instead, so it answers preflights itself; turn this on
        /// only if a CORS layer inside answers every preflight before a
        /// handler sees it
        /// ([`Gate::with_preflight_passthrough`]($crate::http::Gate::with_preflight_passthrough)).
        pub fn with_preflight_passthrough(mut self, passthrough: bool) -> Self {
            self.gate = self.gate.with_preflight_passthrough(passthrough);
            self
        }

        /// Which rate-limit headers responses carry: the draft's
        /// `RateLimit-Policy` and `RateLimit` by default, the legacy
        /// `RateLimit-Limit`/`-Remaining`/`-Reset` trio, or none
        /// ([`Gate::with_rate_limit_headers`]($crate::http::Gate::with_rate_limit_headers)).
        pub fn with_rate_limit_headers(mut self, mode: $crate::http::RateLimitHeaders) -> Self {
            self.gate = self.gate.with_rate_limit_headers(mode);
            self
        }

        /// What usage records name as the endpoint: the route template the
        /// request matched (default; `unmatched` when none did), or
        /// [`UsageEndpoint::RawPath`]($crate::http::UsageEndpoint::RawPath),
        /// the path as sent, which stores whatever ids, e-mail addresses or
        /// tokens paths carry: read its privacy note first.
        pub fn with_usage_endpoint(mut self, endpoint: $crate::http::UsageEndpoint) -> Self {
            self.gate = self.gate.with_usage_endpoint(endpoint);
            self
        }

        /// The framework-free configuration.
        #[must_use]
        pub fn gate(&self) -> &$crate::http::Gate {
            &self.gate
        }
    };
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::limit::RateLimitStatus;
    use crate::{Engine, MemoryStore, NewKey, PolicySpec};

    /// A framework whose requests are header lists and whose responses are
    /// a status and header list; what happened is logged.
    #[derive(Clone, Default)]
    struct Fake {
        log: Arc<Mutex<Vec<String>>>,
        fail: bool,
    }

    struct FakeRequest {
        headers: Vec<(String, String)>,
        admitted: Option<String>,
    }

    type FakeResponse = (u16, Vec<(&'static str, String)>);

    impl Adapter for Fake {
        type Request = FakeRequest;
        type Headers<'r> = &'r [(String, String)];
        type Response = FakeResponse;
        type Error = u16;
        type Future = std::future::Ready<Result<FakeResponse, u16>>;
        type Output = FakeResponse;

        fn facts(request: &FakeRequest) -> RequestFacts<'_, &[(String, String)]> {
            RequestFacts::new("GET", "/x", Some(IpAddr::from([127, 0, 0, 1])), &request.headers[..])
        }

        fn admit(&self, request: &mut FakeRequest, admission: Admission<'_>) {
            request.admitted = Some(match admission {
                Admission::Key(key) => key.name().to_owned(),
                Admission::Anonymous => "anonymous".to_owned(),
                Admission::Preflight => "preflight".to_owned(),
            });
        }

        fn call(&mut self, request: FakeRequest) -> Self::Future {
            self.log.lock().unwrap().push(format!("called as {}", request.admitted.unwrap_or_default()));
            std::future::ready(if self.fail { Err(502) } else { Ok((200, Vec::new())) })
        }

        fn refuse(self, _: FakeRequest, refusal: RefusalResponse) -> FakeResponse {
            (refusal.status, refusal.headers)
        }

        fn pass(response: FakeResponse) -> FakeResponse {
            response
        }

        fn status(response: &FakeResponse) -> u16 {
            response.0
        }

        fn error_status(error: &u16) -> u16 {
            *error
        }

        fn append_header(response: &mut FakeResponse, name: &'static str, value: &str) {
            response.1.append_header(name, value);
        }
    }

    async fn gate_and_key() -> (Gate, String) {
        let engine = Engine::builder(MemoryStore::new()).build().unwrap();
        let acme = engine.tenant("app", "acme");
        let policy = acme.create_policy(PolicySpec::new("p").with_rate_limit(5, std::time::Duration::from_secs(60)));
        let policy = policy.await.unwrap();
        let created = acme.create_key(NewKey::new("ci").with_policy(policy.id)).await.unwrap();
        (Gate::new(engine), created.raw.expose().to_owned())
    }

    fn request(key: Option<&str>) -> FakeRequest {
        let headers = key.map(|k| vec![("x-api-key".to_owned(), k.to_owned())]).unwrap_or_default();
        FakeRequest { headers, admitted: None }
    }

    #[tokio::test]
    async fn a_passed_request_is_admitted_called_given_headers_and_recorded() {
        let (gate, key) = gate_and_key().await;
        let fake = Fake::default();
        let (status, headers) = gate.guard(fake.clone(), request(Some(&key))).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(*fake.log.lock().unwrap(), ["called as ci"]);
        let names: Vec<_> = headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["ratelimit-policy", "ratelimit"]);
        assert!(headers[1].1.starts_with(r#""default";r=4;"#), "{headers:?}");
        gate.engine().flush_usage().await;
        assert_eq!(gate.engine().usage_stats().written, 1);
    }

    #[tokio::test]
    async fn user_agents_are_recorded_and_only_passed_requests_add_them_to_the_table() {
        let (gate, key) = gate_and_key().await;
        let agents = &gate.engine().usage_texts().user_agents;
        let refused = [("x-api-key", "ks_live_nope"), ("user-agent", "scanner/1")];
        let outcome = gate.authorize(&RequestFacts::new("GET", "/x", None, &refused[..])).await;
        assert!(matches!(outcome, Outcome::Refuse(_)));
        assert_eq!(agents.find("scanner/1"), None, "a refused request adds nothing");

        let passed = [("x-api-key", key.as_str()), ("user-agent", "client/2")];
        let mut key_id = None;
        for _ in 0..3 {
            let Outcome::Pass(admitted) = gate.authorize(&RequestFacts::new("GET", "/x", None, &passed[..])).await
            else {
                panic!("the key passes")
            };
            key_id = Some(admitted.key().id());
            admitted.finish(200);
        }
        assert!(agents.find("client/2").is_some());
        gate.engine().flush_usage().await;
        let acme = gate.engine().tenant("app", "acme");
        let page = crate::store::Page::new(10, 0);
        let records = acme.list_usage(key_id.unwrap(), crate::store::TimeRange::default(), page).await.unwrap();
        let agents: Vec<_> = records.iter().map(|r| r.user_agent.as_deref()).collect();
        assert_eq!(agents, [Some("client/2"); 3]);
        let mut ids: Vec<_> = records.iter().map(|r| r.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), 3, "the writer numbers every record");
        assert!(records.iter().all(|r| r.endpoint == super::super::UNMATCHED_ROUTE && r.method == "GET"));
    }

    #[tokio::test]
    async fn a_refusal_never_calls_the_inner_service() {
        let (gate, _) = gate_and_key().await;
        let fake = Fake::default();
        let (status, headers) = gate.guard(fake.clone(), request(None)).await.unwrap();
        assert_eq!(status, 401);
        assert!(headers.iter().any(|(n, v)| *n == "www-authenticate" && v.starts_with("Bearer")));
        assert!(fake.log.lock().unwrap().is_empty());
        let anonymous = gate.clone().with_optional(true);
        assert_eq!(anonymous.guard(fake.clone(), request(None)).await.unwrap().0, 200);
        assert_eq!(*fake.log.lock().unwrap(), ["called as anonymous"]);
    }

    #[tokio::test]
    async fn an_inner_error_goes_on_and_keeps_the_usage_record_with_its_status() {
        let (gate, key) = gate_and_key().await;
        let fake = Fake { fail: true, ..Fake::default() };
        assert_eq!(gate.guard(fake, request(Some(&key))).await, Err(502));
        gate.engine().flush_usage().await;
        assert_eq!(gate.engine().usage_stats().written, 1);
    }

    #[test]
    fn rate_limit_headers_are_written_from_the_numbers() {
        let status = RateLimitStatus {
            allowed: true,
            limit: 1_000_000_000,
            remaining: 0,
            reset: std::time::Duration::from_millis(1_001),
            retry_after: None,
        };
        let limit = crate::RateLimit::new("default", 1_000_000_000, std::time::Duration::from_secs(1));
        let mut headers = Vec::new();
        super::super::RateLimitHeaders::Legacy.write_for_refusal(
            &limit,
            &status,
            std::time::Duration::ZERO,
            &mut headers,
        );
        assert_eq!(
            headers,
            [
                ("ratelimit-limit", "1000000000".to_owned()),
                ("ratelimit-remaining", "0".to_owned()),
                ("ratelimit-reset", "2".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn a_passed_request_is_recorded_as_unmatched_when_no_route_is_known() {
        let (gate, key) = gate_and_key().await;
        let (status, _) = gate.guard(Fake::default(), request(Some(&key))).await.unwrap();
        assert_eq!(status, 200);
        gate.engine().flush_usage().await;
        let acme = gate.engine().tenant("app", "acme");
        let Outcome::Pass(admitted) = gate.authorize(&Fake::facts(&request(Some(&key)))).await else { panic!() };
        let page = crate::store::Page::new(10, 0);
        let records = acme.list_usage(admitted.key().id(), crate::store::TimeRange::default(), page).await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].endpoint, super::super::UNMATCHED_ROUTE);
    }

    #[tokio::test]
    async fn legacy_headers_are_written_into_the_adapters_response() {
        let (gate, key) = gate_and_key().await;
        let legacy = gate.with_rate_limit_headers(super::super::RateLimitHeaders::Legacy);
        let (_, headers) = legacy.guard(Fake::default(), request(Some(&key))).await.unwrap();
        let names: Vec<_> = headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"]);
        assert_eq!(headers[1].1, "4");
    }

    #[tokio::test]
    async fn an_admission_carries_the_key_only_when_one_passed() {
        let (gate, key) = gate_and_key().await;
        let Outcome::Pass(admitted) = gate.authorize(&Fake::facts(&request(Some(&key)))).await else { panic!() };
        assert_eq!(Admission::Key(admitted.key()).key().map(ApiKey::id), Some(admitted.key().id()));
        assert!(Admission::Anonymous.key().is_none() && Admission::Preflight.key().is_none());
        let guarded = gate.guard(Fake::default(), request(None));
        assert_eq!(format!("{guarded:?}"), r#"Guarded { step: "authorizing", .. }"#);
    }

    #[test]
    fn a_missing_middleware_is_logged_once() {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        let logged = || String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            log_missing_middleware("the ApiKey extractor", "ApiKeyLayer");
            let text = logged();
            assert_eq!(text.lines().count(), 1, "the first time: {text}");
            assert!(text.contains("ERROR") && text.contains("add the middleware in front of it"), "{text}");
            log_missing_middleware("the ApiKey extractor", "ApiKeyLayer");
        });
        assert_eq!(logged().lines().count(), 1, "only the first time");
    }
}
