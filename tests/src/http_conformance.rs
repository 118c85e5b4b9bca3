//! HTTP conformance: the HTTP rules as cases every framework adapter must
//! pass, driven through the small [`Harness`] trait so the same cases run on
//! tower/axum and on actix-web.
//!
//! An adapter's test file implements [`Harness`] (build the routes below
//! behind the adapter configured from [`HarnessOptions`], send a
//! [`TestRequest`], return a [`TestResponse`]) and generates one test per
//! case with [`http_conformance_tests!`](crate::http_conformance_tests):
//!
//! ```text
//! keysmith_tests::http_conformance_tests!(TowerHarness);               // #[tokio::test]
//! keysmith_tests::http_conformance_tests!(ActixHarness, actix_web::test); // another test attribute
//! ```
//!
//! # Routes the harness serves
//!
//! | route | behind the adapter | answers |
//! |---|---|---|
//! | `GET /whoami` | handler takes `Option<ApiKey>` | 200 `{"key": "<key id>" \| null}` |
//! | `OPTIONS /whoami` | | 204 |
//! | `GET /key` | handler takes `ApiKey` | 200 `{"key": "<key id>"}` |
//! | `GET /teapot` | handler takes `ApiKey` | 418 |
//! | `GET /users/{id}` | a route with a parameter (same template syntax in axum and actix) | 200 |
//! | `GET /scoped/all` | `RequireScopes::all(["read:users", "write:users"])` | 200 |
//! | `GET /scoped/any` | `RequireScopes::any(["admin", "write:users"])` | 200 |
//! | `GET /fail` | the service behind the adapter fails (an error, not a response), before any route matched | what the server makes of the error: 500 (tower) or the error's status (actix, 502) |
//! | `GET /outside/key` | **not** behind the adapter; handler takes `ApiKey` | 500 naming the missing middleware |
//! | `GET /outside/whoami` | **not** behind the adapter; handler takes `Option<ApiKey>` | 200 `{"key": null}` |
//!
//! Any other path matches no route: 404, behind the adapter.
//!
//! The peer address of a request is [`TestRequest::peer`] (`None`: the
//! server does not know it).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use keysmith_core::http::{
    ForwardingHeader, KeySources, RateLimitHeaders, TrustedProxies, UNMATCHED_ROUTE, UsageEndpoint,
};
use keysmith_core::store::{Page, TimeRange};
use keysmith_core::{
    Clock, Engine, KeyId, ManualClock, MemoryStore, NewKey, PolicySpec, RotationReason, Store, TenantEngine,
};

/// Generates one test per conformance case for a [`Harness`] type, with
/// `#[tokio::test]` or the test attribute given after a comma.
#[macro_export]
macro_rules! http_conformance_tests {
    ($harness:ty) => {
        $crate::http_conformance_tests!($harness, tokio::test);
    };
    ($harness:ty, $attr:meta) => {
        $crate::http_conformance_tests!(@cases $harness, $attr;
            design_table,
            handlers_see_the_validated_key,
            rate_limit_headers_count_down_then_429_with_retry_after,
            legacy_rate_limit_headers_are_opt_in_and_none_sends_none,
            quota_exceeded_is_429_with_retry_after_until_midnight,
            ratelimit_names_the_quota_when_it_has_the_fewest_requests_left,
            quota_and_credits_refusals_carry_the_rate_limit_headers_in_every_mode,
            problem_details_are_opt_in_and_keep_statuses_headers_and_codes,
            usage_records_carry_the_handler_status,
            usage_records_name_the_route_template_not_the_path,
            usage_records_name_unmatched_when_no_route_matched,
            usage_records_name_the_raw_path_when_opted_in,
            store_down_is_503_unavailable,
            optional_mode_passes_keyless_requests_and_still_refuses_bad_keys,
            app_restriction_refuses_other_apps_keys,
            custom_key_sources_replace_the_defaults,
            unknown_peer_fails_ip_policies,
            unknown_client_behind_a_trusted_proxy_fails_ip_policies,
            only_the_configured_forwarding_header_is_read,
            mapped_ipv6_allowlist_and_proxy_entries_match_ipv4_clients,
            preflights_are_authenticated_unless_passthrough_is_turned_on,
            scope_refused_requests_spend_no_rate_limit_quota_or_usage,
            scope_refusals_give_credits_back_before_answering,
            inner_service_errors_keep_the_usage_record,
            extractors_without_the_middleware,
        );
    };
    (@cases $harness:ty, $attr:meta; $($case:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $case() {
                $crate::http_conformance::$case::<$harness>().await;
            }
        )*
    };
}

// ---------------------------------------------------------------- harness

/// How the adapter under test is configured; each field maps to one of its
/// builder options.
#[derive(Debug, Clone)]
pub struct HarnessOptions {
    /// Key sources; `None` keeps the adapter's default (Bearer, X-API-Key).
    pub key_sources: Option<KeySources>,
    /// Trusted proxies and the forwarding header they write.
    pub trusted_proxies: TrustedProxies,
    /// The realm of `WWW-Authenticate`.
    pub realm: String,
    /// Accept only this app's keys.
    pub app_id: Option<String>,
    /// Optional mode.
    pub optional: bool,
    /// CORS preflights pass without a key.
    pub preflight_passthrough: bool,
    /// Which rate-limit headers responses carry.
    pub rate_limit_headers: RateLimitHeaders,
    /// What usage records name as the endpoint.
    pub usage_endpoint: UsageEndpoint,
    /// Refusals in the RFC 9457 format (the adapter's
    /// `problem_refusal_response` as its responder).
    pub problem_details: bool,
}

impl Default for HarnessOptions {
    /// Realm `conformance`, trusted proxies `10.0.0.0/8` writing
    /// `X-Forwarded-For`, nothing else.
    fn default() -> Self {
        Self {
            key_sources: None,
            trusted_proxies: TrustedProxies::parse(["10.0.0.0/8"]).expect("network"),
            realm: REALM.to_owned(),
            app_id: None,
            optional: false,
            preflight_passthrough: false,
            rate_limit_headers: RateLimitHeaders::default(),
            usage_endpoint: UsageEndpoint::default(),
            problem_details: false,
        }
    }
}

/// An adapter serving the routes of the [module docs](self).
pub trait Harness: Sized {
    /// The adapter, configured by `options`, validating with `engine`.
    fn start(engine: Engine, options: HarnessOptions) -> impl Future<Output = Self>;

    /// Sends one request and returns the whole response (after the adapter
    /// has finished with it, usage recording included).
    fn send(&self, request: TestRequest) -> impl Future<Output = TestResponse>;
}

/// A request to send through the adapter.
#[derive(Debug, Clone)]
pub struct TestRequest {
    /// The method (`GET`).
    pub method: String,
    /// The path.
    pub path: String,
    /// Headers in order; values are bytes so non-UTF-8 values can be sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The peer address the server sees; `None` for unknown.
    pub peer: Option<IpAddr>,
}

/// The peer of requests unless a case says otherwise: not a trusted proxy.
pub const DEFAULT_PEER: &str = "198.51.100.7";

impl TestRequest {
    /// A request from [`DEFAULT_PEER`] with no header.
    #[must_use]
    pub fn new(method: &str, path: &str) -> Self {
        Self { method: method.to_owned(), path: path.to_owned(), headers: Vec::new(), peer: Some(ip(DEFAULT_PEER)) }
    }

    /// `GET path`.
    #[must_use]
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// With a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// With `Authorization: Bearer <key>`.
    #[must_use]
    pub fn bearer(self, key: &str) -> Self {
        self.header("authorization", format!("Bearer {key}"))
    }

    /// With `X-API-Key: <key>`.
    #[must_use]
    pub fn api_key(self, key: &str) -> Self {
        self.header("x-api-key", key)
    }

    /// From this peer (`None`: unknown).
    #[must_use]
    pub fn peer(mut self, peer: Option<&str>) -> Self {
        self.peer = peer.map(ip);
        self
    }
}

/// What the adapter answered.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// The status.
    pub status: u16,
    /// Headers in order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl TestResponse {
    /// The first value of `name` (lowercase).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` if it is not JSON).
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// `error.code` of a refusal body.
    #[must_use]
    pub fn error_code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_owned)
    }

    fn describe(&self) -> String {
        format!("{} {:?} {}", self.status, self.headers, String::from_utf8_lossy(&self.body))
    }
}

// ---------------------------------------------------------------- fixture

/// The realm the cases configure.
pub const REALM: &str = "conformance";
/// The application of the fixture's keys.
pub const APP: &str = "conformance";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// 2026-03-10 12:00:00 UTC, when the fixture's keys are created.
#[must_use]
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap()
}

/// An engine on a memory store with a manual clock, and one key for every
/// situation of the table. The clock stands two minutes after [`t0`].
#[derive(Debug)]
pub struct Fixture {
    /// The engine under test.
    pub engine: Engine,
    /// Its clock.
    pub clock: ManualClock,
    /// Its store (close it to take the store down).
    pub store: Arc<MemoryStore>,
    /// The tenant `conformance/acme`.
    pub acme: TenantEngine,
    /// The keys.
    pub keys: Keys,
}

/// Raw keys of the fixture (secrets: test data only).
#[derive(Debug, Clone)]
pub struct Keys {
    /// Scope `read:users`.
    pub reader: String,
    /// Id of `reader`.
    pub reader_id: KeyId,
    /// Scopes `read:users write:users admin`.
    pub admin: String,
    /// Scope `write:users`.
    pub writer: String,
    /// Revoked.
    pub revoked: String,
    /// Suspended.
    pub suspended: String,
    /// Past its expiry.
    pub expired: String,
    /// The old secret of a key rotated at [`t0`] with an hour of grace.
    pub rotated: String,
    /// Policy: IPs `203.0.113.0/24` only.
    pub office: String,
    /// Policy: origin `https://app.example.com` only.
    pub web: String,
    /// Policy: 3 requests per 10 seconds.
    pub limited: String,
    /// Policy: 1 request per day.
    pub quota: String,
    /// Policy: 100 requests a minute, 5 a day.
    pub metered: String,
    /// A key of another application (`elsewhere/acme`).
    pub other_app: String,
    /// Well-formed, valid checksum, never stored.
    pub unknown: String,
}

impl Fixture {
    /// Builds the engine and the keys.
    ///
    /// # Panics
    /// If the engine refuses to create them.
    pub async fn new() -> Self {
        let store = Arc::new(MemoryStore::new());
        let clock = ManualClock::new(t0());
        let engine = Engine::builder(Arc::clone(&store) as Arc<dyn Store>).with_clock(clock.clone()).build().unwrap();
        let acme = engine.tenant(APP, "acme");
        let create = |name: &'static str, scopes: &'static [&'static str]| {
            let acme = acme.clone();
            async move { acme.create_key(NewKey::new(name).with_scopes(scopes.iter().copied())).await.unwrap() }
        };
        let policy = |spec: PolicySpec| {
            let acme = acme.clone();
            async move { acme.create_policy(spec).await.unwrap().id }
        };
        let with_policy = |name: &'static str, policy_id| {
            let acme = acme.clone();
            async move {
                let new = NewKey::new(name).with_scopes(["read:users"]).with_policy(policy_id);
                acme.create_key(new).await.unwrap().raw.expose().to_owned()
            }
        };

        let reader = create("reader", &["read:users"]).await;
        let admin = create("admin", &["read:users", "write:users", "admin"]).await;
        let writer = create("writer", &["write:users"]).await;
        let revoked = create("revoked", &["read:users"]).await;
        acme.revoke_key(revoked.key.id, "conformance").await.unwrap();
        let suspended = create("suspended", &["read:users"]).await;
        acme.suspend_key(suspended.key.id).await.unwrap();
        let expiring = NewKey::new("expired").with_expires_at(t0() + chrono::Duration::minutes(1));
        let expired = acme.create_key(expiring).await.unwrap();
        let rotating = create("rotating", &["read:users"]).await;
        acme.rotate_key(rotating.key.id, RotationReason::Scheduled, Some(Duration::from_secs(3600))).await.unwrap();

        let office = policy(PolicySpec::new("office").with_allowed_ips(["203.0.113.0/24"])).await;
        let web = policy(PolicySpec::new("web").with_allowed_origins(["https://app.example.com"])).await;
        let limited = policy(PolicySpec::new("limited").with_rate_limit(3, Duration::from_secs(10))).await;
        let quota = policy(PolicySpec::new("quota").with_quota(Some(1), None)).await;
        let metered_spec = PolicySpec::new("metered").with_rate_limit(100, Duration::from_secs(60));
        let metered = policy(metered_spec.with_quota(Some(5), None)).await;

        let other_app = engine.tenant("elsewhere", "acme").create_key(NewKey::new("other")).await.unwrap();
        let throwaway = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
        let unknown = throwaway.tenant(APP, "acme").create_key(NewKey::new("never stored")).await.unwrap();

        let keys = Keys {
            reader_id: reader.key.id,
            reader: reader.raw.expose().to_owned(),
            admin: admin.raw.expose().to_owned(),
            writer: writer.raw.expose().to_owned(),
            revoked: revoked.raw.expose().to_owned(),
            suspended: suspended.raw.expose().to_owned(),
            expired: expired.raw.expose().to_owned(),
            rotated: rotating.raw.expose().to_owned(),
            office: with_policy("office", office).await,
            web: with_policy("web", web).await,
            limited: with_policy("limited", limited).await,
            quota: with_policy("quota", quota).await,
            metered: with_policy("metered", metered).await,
            other_app: other_app.raw.expose().to_owned(),
            unknown: unknown.raw.expose().to_owned(),
        };
        clock.advance(Duration::from_secs(120));
        Self { engine, clock, store, acme, keys }
    }

    /// A harness on this fixture's engine.
    pub async fn harness<H: Harness>(&self, options: HarnessOptions) -> H {
        H::start(self.engine.clone(), options).await
    }
}

// ---------------------------------------------------------------- the table

/// What a header of the response must be.
#[derive(Debug, Clone, Copy)]
pub enum HeaderExpect {
    /// Exactly this value.
    Is(&'static str),
    /// Present, any value.
    Present,
    /// Not sent.
    Absent,
}

/// One row: a request and what must come back.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// What the row checks.
    pub name: &'static str,
    /// The request, from the fixture's keys.
    pub request: fn(&Keys) -> TestRequest,
    /// The status.
    pub status: u16,
    /// The JSON error code, for refusals.
    pub code: Option<&'static str>,
    /// Headers that must (not) be there.
    pub headers: &'static [(&'static str, HeaderExpect)],
}

const MISSING: &str = r#"Bearer realm="conformance""#;
const INVALID: &str = r#"Bearer realm="conformance", error="invalid_token""#;
const WWW: &str = "www-authenticate";
const NO_RATE_LIMIT: (&str, HeaderExpect) = ("ratelimit", HeaderExpect::Absent);

fn refused(name: &'static str, request: fn(&Keys) -> TestRequest, status: u16, code: &'static str) -> Row {
    Row { name, request, status, code: Some(code), headers: &[] }
}

fn passed(name: &'static str, request: fn(&Keys) -> TestRequest) -> Row {
    Row { name, request, status: 200, code: None, headers: &[] }
}

/// Every outcome of the status table, and the extraction and
/// client-address rules, against a [`Fixture`] and
/// [`HarnessOptions::default`].
#[must_use]
pub fn rows() -> Vec<Row> {
    use HeaderExpect::{Absent, Is};
    let invalid: &'static [(&str, HeaderExpect)] = &[(WWW, Is(INVALID))];
    vec![
        // Outcomes of the design table.
        Row {
            headers: &[(WWW, Is(MISSING))],
            ..refused("no key", |_| TestRequest::get("/whoami"), 401, "missing_key")
        },
        Row {
            headers: invalid,
            ..refused("malformed key", |_| TestRequest::get("/whoami").bearer("sk_live_short"), 401, "malformed_key")
        },
        Row {
            headers: invalid,
            ..refused("unknown key", |k| TestRequest::get("/whoami").bearer(&k.unknown), 401, "invalid_key")
        },
        Row {
            headers: invalid,
            ..refused("revoked key", |k| TestRequest::get("/whoami").bearer(&k.revoked), 401, "key_revoked")
        },
        Row {
            headers: invalid,
            ..refused("expired key", |k| TestRequest::get("/whoami").bearer(&k.expired), 401, "key_expired")
        },
        Row {
            headers: invalid,
            ..refused("suspended key", |k| TestRequest::get("/whoami").bearer(&k.suspended), 401, "key_suspended")
        },
        Row {
            headers: &[(WWW, Absent)],
            ..refused("IP not allowed", |k| TestRequest::get("/whoami").bearer(&k.office), 403, "ip_not_allowed")
        },
        passed("IP allowed", |k| TestRequest::get("/whoami").bearer(&k.office).peer(Some("203.0.113.5"))),
        Row {
            headers: &[(WWW, Absent)],
            ..refused(
                "origin not allowed",
                |k| TestRequest::get("/whoami").bearer(&k.web).header("origin", "https://evil.example"),
                403,
                "origin_not_allowed",
            )
        },
        passed("origin allowed", |k| {
            TestRequest::get("/whoami").bearer(&k.web).header("origin", "https://app.example.com")
        }),
        passed("no origin sent, origin policy", |k| TestRequest::get("/whoami").bearer(&k.web)),
        // A second `Origin` cannot pass behind an allowed first one, nor an
        // allowed second behind another first.
        Row {
            headers: &[(WWW, Absent)],
            ..refused(
                "two origins, the first allowed",
                |k| {
                    TestRequest::get("/whoami")
                        .bearer(&k.web)
                        .header("origin", "https://app.example.com")
                        .header("origin", "https://evil.example")
                },
                403,
                "origin_not_allowed",
            )
        },
        Row {
            headers: &[(WWW, Absent)],
            ..refused(
                "two origins, the second allowed",
                |k| {
                    TestRequest::get("/whoami")
                        .bearer(&k.web)
                        .header("origin", "https://evil.example")
                        .header("origin", "https://app.example.com")
                },
                403,
                "origin_not_allowed",
            )
        },
        Row {
            headers: &[(WWW, Is(r#"Bearer realm="conformance", error="insufficient_scope", scope="write:users""#))],
            ..refused(
                "RequireScopes::all, one scope missing",
                |k| TestRequest::get("/scoped/all").bearer(&k.reader),
                403,
                "insufficient_scope",
            )
        },
        passed("RequireScopes::all, all held", |k| TestRequest::get("/scoped/all").bearer(&k.admin)),
        Row {
            headers: &[(
                WWW,
                Is(r#"Bearer realm="conformance", error="insufficient_scope", scope="admin write:users""#),
            )],
            ..refused(
                "RequireScopes::any, none held",
                |k| TestRequest::get("/scoped/any").bearer(&k.reader),
                403,
                "insufficient_scope",
            )
        },
        passed("RequireScopes::any, one held", |k| TestRequest::get("/scoped/any").bearer(&k.writer)),
        // Key extraction.
        refused(
            "two different keys",
            |k| TestRequest::get("/whoami").bearer(&k.reader).api_key(&k.admin),
            400,
            "ambiguous_key",
        ),
        Row {
            headers: &[NO_RATE_LIMIT],
            ..passed("same key in both headers", |k| TestRequest::get("/whoami").bearer(&k.reader).api_key(&k.reader))
        },
        passed("X-API-Key alone", |k| TestRequest::get("/whoami").api_key(&k.reader)),
        passed("lowercase bearer scheme", |k| {
            TestRequest::get("/whoami").header("authorization", format!("bearer {}", k.reader))
        }),
        passed("uppercase bearer scheme", |k| {
            TestRequest::get("/whoami").header("Authorization", format!("BEARER {}", k.reader))
        }),
        Row {
            headers: &[(WWW, Is(MISSING))],
            ..refused(
                "another auth scheme only",
                |_| TestRequest::get("/whoami").header("authorization", "Basic dXNlcjpwYXNz"),
                401,
                "missing_key",
            )
        },
        refused(
            "oversized key header",
            |_| TestRequest::get("/whoami").api_key(&"a".repeat(2048)),
            401,
            "malformed_key",
        ),
        passed("a long Negotiate token next to X-API-Key is ignored", |k| {
            TestRequest::get("/whoami")
                .header("authorization", format!("Negotiate {}", "YIIGhgYGKwYBBQUCoIIGejCCBnagMDAuBgkqhkiC".repeat(64)))
                .api_key(&k.reader)
        }),
        refused(
            "non-UTF-8 key header",
            |_| TestRequest::get("/whoami").header("x-api-key", b"sk_live_\xff\xfe".to_vec()),
            401,
            "malformed_key",
        ),
        passed("rotated key within its grace", |k| TestRequest::get("/whoami").bearer(&k.rotated)),
        passed("ApiKey extractor", |k| TestRequest::get("/key").bearer(&k.reader)),
        // Client address.
        refused(
            "X-Forwarded-For from an untrusted peer is ignored",
            |k| TestRequest::get("/whoami").bearer(&k.office).header("x-forwarded-for", "203.0.113.5"),
            403,
            "ip_not_allowed",
        ),
        refused(
            "Forwarded from an untrusted peer is ignored",
            |k| TestRequest::get("/whoami").bearer(&k.office).header("forwarded", "for=203.0.113.5"),
            403,
            "ip_not_allowed",
        ),
        passed("X-Forwarded-For via a trusted proxy: right-most untrusted address", |k| {
            TestRequest::get("/whoami")
                .bearer(&k.office)
                .peer(Some("10.0.0.1"))
                .header("x-forwarded-for", "198.51.100.66, 203.0.113.5, 10.0.0.2")
        }),
        refused(
            "X-Forwarded-For via a trusted proxy: a spoofed left entry is not used",
            |k| {
                TestRequest::get("/whoami")
                    .bearer(&k.office)
                    .peer(Some("10.0.0.1"))
                    .header("x-forwarded-for", "203.0.113.5, 198.51.100.66")
            },
            403,
            "ip_not_allowed",
        ),
        refused(
            "Forwarded via a trusted proxy is not read when X-Forwarded-For is configured",
            |k| {
                TestRequest::get("/whoami")
                    .bearer(&k.office)
                    .peer(Some("10.0.0.1"))
                    .header("forwarded", r#"for="203.0.113.5:4711";proto=https"#)
            },
            403,
            "ip_not_allowed",
        ),
        refused(
            "X-Forwarded-For via a trusted proxy: an entry that is not an address hides what is left of it",
            |k| {
                TestRequest::get("/whoami")
                    .bearer(&k.office)
                    .peer(Some("10.0.0.1"))
                    .header("x-forwarded-for", "203.0.113.5, unknown, 10.0.0.2")
            },
            403,
            "ip_not_allowed",
        ),
        passed("IPv4-mapped peer matches its IPv4 allowlist", |k| {
            TestRequest::get("/whoami").bearer(&k.office).peer(Some("::ffff:203.0.113.5"))
        }),
        refused(
            "malformed X-Forwarded-For via a trusted proxy: the client is unknown",
            |k| {
                TestRequest::get("/whoami")
                    .bearer(&k.office)
                    .peer(Some("10.0.0.1"))
                    .header("x-forwarded-for", "not-an-address")
            },
            403,
            "ip_not_allowed",
        ),
        // CORS preflight.
        Row {
            headers: &[(WWW, Is(MISSING))],
            ..refused(
                "CORS preflight without a key is refused by default",
                |_| TestRequest::new("OPTIONS", "/whoami").header("access-control-request-method", "GET"),
                401,
                "missing_key",
            )
        },
        refused(
            "OPTIONS without Access-Control-Request-Method needs a key",
            |_| TestRequest::new("OPTIONS", "/whoami"),
            401,
            "missing_key",
        ),
    ]
}

/// Checks one response against one row; the failures, if any.
fn check(row: &Row, response: &TestResponse) -> Vec<String> {
    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(format!("{}: {what}; got {}", row.name, response.describe()));
    if response.status != row.status {
        fail(format!("status {} expected", row.status));
    }
    if let Some(code) = row.code {
        if response.error_code().as_deref() != Some(code) {
            fail(format!("error code {code} expected"));
        }
        if response.json()["error"]["message"].as_str().is_none_or(str::is_empty) {
            fail("an error message expected".to_owned());
        }
        if !response.header("content-type").is_some_and(|v| v.starts_with("application/json")) {
            fail("Content-Type application/json expected".to_owned());
        }
    }
    for (name, expect) in row.headers {
        let value = response.header(name);
        let ok = match expect {
            HeaderExpect::Is(expected) => value == Some(*expected),
            HeaderExpect::Present => value.is_some(),
            HeaderExpect::Absent => value.is_none(),
        };
        if !ok {
            fail(format!("header {name} {expect:?} expected"));
        }
    }
    failures
}

// ---------------------------------------------------------------- cases

/// Runs every row of [`rows`]; reports all failing rows at once.
///
/// # Panics
/// Listing every row that failed.
pub async fn design_table<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let mut failures = Vec::new();
    let mut failed_rows = 0;
    let rows = rows();
    for row in &rows {
        let response = harness.send((row.request)(&fixture.keys)).await;
        let row_failures = check(row, &response);
        failed_rows += usize::from(!row_failures.is_empty());
        failures.extend(row_failures);
    }
    assert!(failures.is_empty(), "{failed_rows} of {} rows failed:\n{}", rows.len(), failures.join("\n"));
}

/// `ApiKey` and `Option<ApiKey>` hand the handler the key that passed.
///
/// # Panics
/// On a mismatch.
pub async fn handlers_see_the_validated_key<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let id = fixture.keys.reader_id.to_string();
    for path in ["/whoami", "/key"] {
        let response = harness.send(TestRequest::get(path).bearer(&fixture.keys.reader)).await;
        assert_eq!(response.status, 200, "{path}: {}", response.describe());
        assert_eq!(response.json()["key"], id.as_str(), "{path}: {}", response.describe());
    }
}

/// The draft's `RateLimit-Policy` and `RateLimit` count down on passed
/// requests; the request past the limit is 429 with `Retry-After` and
/// `r=0`; the window refills on the clock.
///
/// # Panics
/// On a mismatch.
pub async fn rate_limit_headers_count_down_then_429_with_retry_after<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let request = || TestRequest::get("/whoami").bearer(&fixture.keys.limited);
    // 3 per 10 s: each request takes 3.33 s of the window to refill.
    for state in [r#""default";r=2;t=4"#, r#""default";r=1;t=7"#, r#""default";r=0;t=10"#] {
        let response = harness.send(request()).await;
        assert_eq!(response.status, 200, "{}", response.describe());
        assert_eq!(response.header("ratelimit-policy"), Some(r#""default";q=3;w=10"#), "{}", response.describe());
        assert_eq!(response.header("ratelimit"), Some(state), "{}", response.describe());
        assert_eq!(response.header("ratelimit-limit"), None, "legacy headers are opt-in: {}", response.describe());
    }
    let limited = harness.send(request()).await;
    assert_eq!(
        (limited.status, limited.error_code().as_deref()),
        (429, Some("rate_limited")),
        "{}",
        limited.describe()
    );
    assert_eq!(limited.header("retry-after"), Some("4"), "{}", limited.describe());
    assert_eq!(limited.header("ratelimit"), Some(r#""default";r=0;t=4"#), "{}", limited.describe());
    assert_eq!(limited.header("ratelimit-policy"), Some(r#""default";q=3;w=10"#), "{}", limited.describe());

    fixture.clock.advance(Duration::from_secs(10));
    let again = harness.send(request()).await;
    assert_eq!(again.status, 200, "{}", again.describe());
    assert_eq!(draft_remaining(&again).as_deref(), Some("2"), "{}", again.describe());
}

/// With `RateLimitHeaders::Legacy` the `RateLimit-Limit`, `-Remaining` and
/// `-Reset` trio replaces the draft's fields; with `None` no rate-limit
/// header is sent (a 429 keeps its `Retry-After`).
///
/// # Panics
/// On a mismatch.
pub async fn legacy_rate_limit_headers_are_opt_in_and_none_sends_none<H: Harness>() {
    let fixture = Fixture::new().await;
    let legacy = HarnessOptions { rate_limit_headers: RateLimitHeaders::Legacy, ..HarnessOptions::default() };
    let harness: H = fixture.harness(legacy).await;
    let request = || TestRequest::get("/whoami").bearer(&fixture.keys.limited);
    for (remaining, reset) in [("2", "4"), ("1", "7")] {
        let response = harness.send(request()).await;
        assert_eq!(response.status, 200, "{}", response.describe());
        assert_eq!(response.header("ratelimit-limit"), Some("3"), "{}", response.describe());
        assert_eq!(response.header("ratelimit-remaining"), Some(remaining), "{}", response.describe());
        assert_eq!(response.header("ratelimit-reset"), Some(reset), "{}", response.describe());
        assert_eq!(response.header("ratelimit-policy"), None, "{}", response.describe());
        assert_eq!(response.header("ratelimit"), None, "{}", response.describe());
    }
    let none = HarnessOptions { rate_limit_headers: RateLimitHeaders::None, ..HarnessOptions::default() };
    let harness: H = fixture.harness(none).await;
    let passed = harness.send(request()).await;
    assert_eq!(passed.status, 200, "{}", passed.describe());
    let limited = harness.send(request()).await;
    assert_eq!(limited.status, 429, "{}", limited.describe());
    assert!(limited.header("retry-after").is_some(), "{}", limited.describe());
    for response in [&passed, &limited] {
        for name in ["ratelimit", "ratelimit-policy", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
            assert_eq!(response.header(name), None, "{name}: {}", response.describe());
        }
    }
}

/// The `r` (remaining) parameter of the response's `RateLimit` field.
fn draft_remaining(response: &TestResponse) -> Option<String> {
    let value = response.header("ratelimit")?;
    let (_, after) = value.split_once(";r=")?;
    Some(after.chars().take_while(char::is_ascii_digit).collect())
}

/// A used-up daily quota is 429 `quota_exceeded` with `Retry-After` until
/// UTC midnight.
///
/// # Panics
/// On a mismatch.
pub async fn quota_exceeded_is_429_with_retry_after_until_midnight<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let request = || TestRequest::get("/whoami").bearer(&fixture.keys.quota);
    assert_eq!(harness.send(request()).await.status, 200);
    let refused = harness.send(request()).await;
    assert_eq!(
        (refused.status, refused.error_code().as_deref()),
        (429, Some("quota_exceeded")),
        "{}",
        refused.describe()
    );
    // The clock stands at 12:02:00 UTC: 11 h 58 min to midnight.
    assert_eq!(refused.header("retry-after"), Some("43080"), "{}", refused.describe());
}

/// A key with a daily quota of 5 and a rate limit of 100 a minute is told
/// what is left of its quota (`"quota-daily";r=…`, `t` until UTC midnight),
/// not of its rate limit, which has far more left; its sixth request is
/// refused by the quota, with `r=0`.
///
/// # Panics
/// On a mismatch.
pub async fn ratelimit_names_the_quota_when_it_has_the_fewest_requests_left<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let request = || TestRequest::get("/whoami").bearer(&fixture.keys.metered);
    let policy = r#""default";q=100;w=60, "quota-daily";q=5;w=86400"#;
    // The clock stands at 12:02:00 UTC: 43 080 s to midnight.
    for left in (0..5).rev() {
        let response = harness.send(request()).await;
        let state = format!(r#""quota-daily";r={left};t=43080"#);
        let expected = (200, Some(policy), Some(state.as_str()));
        let got = (response.status, response.header("ratelimit-policy"), response.header("ratelimit"));
        assert_eq!(got, expected, "{}", response.describe());
    }
    let refused = harness.send(request()).await;
    let got = (refused.status, refused.error_code(), refused.header("ratelimit"));
    let expected = (429, Some("quota_exceeded".to_owned()), Some(r#""quota-daily";r=0;t=43080"#));
    assert_eq!(got, expected, "{}", refused.describe());
}

/// A 429 `quota_exceeded` or `credits_exhausted` carries the rate-limit
/// headers as a `rate_limited` one does: what refused, in
/// `RateLimit-Policy`, and `RateLimit` with `r=0` (the draft), or the
/// legacy trio with `RateLimit-Remaining: 0`, or none at all in the `None`
/// mode; `Retry-After` in every mode.
///
/// # Panics
/// On a mismatch.
pub async fn quota_and_credits_refusals_carry_the_rate_limit_headers_in_every_mode<H: Harness>() {
    const NAMES: [&str; 5] =
        ["ratelimit-policy", "ratelimit", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];
    let draft = [Some(r#""quota-daily";q=1;w=86400"#), Some(r#""quota-daily";r=0;t=43080"#), None, None, None];
    let draft_credits = [Some(r#""credits";q=1;w=86400"#), Some(r#""credits";r=0;t=43080"#), None, None, None];
    let legacy = [None, None, Some("1"), Some("0"), Some("43080")];
    let cases = [
        (RateLimitHeaders::Draft, draft, draft_credits),
        (RateLimitHeaders::Legacy, legacy, legacy),
        (RateLimitHeaders::None, [None; 5], [None; 5]),
    ];
    for (mode, quota_headers, credits_headers) in cases {
        let fixture = Fixture::new().await;
        let harness: H =
            fixture.harness(HarnessOptions { rate_limit_headers: mode, ..HarnessOptions::default() }).await;
        // One credit a day, refilled at UTC midnight.
        let credits = keysmith_core::Credits::new(1).with_refill(1, keysmith_core::Period::Day);
        let metered = fixture.acme.create_key(NewKey::new("credits").with_credits(credits)).await.unwrap();
        let metered = metered.raw.expose().to_owned();
        for (raw, code, expected) in
            [(&fixture.keys.quota, "quota_exceeded", quota_headers), (&metered, "credits_exhausted", credits_headers)]
        {
            let request = || TestRequest::get("/whoami").bearer(raw);
            let passed = harness.send(request()).await;
            assert_eq!(passed.status, 200, "{mode:?}: {}", passed.describe());
            let refused = harness.send(request()).await;
            let got = (refused.status, refused.error_code(), refused.header("retry-after"));
            assert_eq!(got, (429, Some(code.to_owned()), Some("43080")), "{mode:?}: {}", refused.describe());
            for (name, value) in NAMES.into_iter().zip(expected) {
                assert_eq!(refused.header(name), value, "{mode:?}, {name}: {}", refused.describe());
            }
        }
    }
}

/// Refusals are `application/json` `{"error": …}` by default; with the
/// RFC 9457 responder they are `application/problem+json` with the same
/// status, headers and code, quota refusals typed `quota-exceeded`, scope
/// refusals of `RequireScopes` included.
///
/// # Panics
/// On a mismatch.
pub async fn problem_details_are_opt_in_and_keep_statuses_headers_and_codes<H: Harness>() {
    let fixture = Fixture::new().await;
    let json: H = fixture.harness(HarnessOptions::default()).await;
    let revoked = json.send(TestRequest::get("/whoami").bearer(&fixture.keys.revoked)).await;
    assert_eq!(revoked.header("content-type"), Some("application/json"), "{}", revoked.describe());
    assert_eq!(revoked.json()["error"]["code"], "key_revoked");

    let problem: H = fixture.harness(HarnessOptions { problem_details: true, ..HarnessOptions::default() }).await;
    let cases = [
        (TestRequest::get("/whoami"), 401, "missing_key", "urn:keysmith:problem:missing_key"),
        (
            TestRequest::get("/whoami").bearer(&fixture.keys.revoked),
            401,
            "key_revoked",
            "urn:keysmith:problem:key_revoked",
        ),
        (
            TestRequest::get("/scoped/all").bearer(&fixture.keys.reader),
            403,
            "insufficient_scope",
            "urn:keysmith:problem:insufficient_scope",
        ),
    ];
    for (request, status, code, kind) in cases {
        let response = problem.send(request).await;
        assert_eq!(response.status, status, "{}", response.describe());
        assert_eq!(response.header("content-type"), Some("application/problem+json"), "{}", response.describe());
        let body = response.json();
        assert_eq!((body["type"].as_str(), body["code"].as_str()), (Some(kind), Some(code)), "{}", response.describe());
        assert_eq!(body["status"], status);
        assert!(body["detail"].as_str().is_some_and(|detail| !detail.is_empty()), "{}", response.describe());
        assert!(response.header("www-authenticate").is_some(), "challenges stay: {}", response.describe());
    }
    let quota = || TestRequest::get("/whoami").bearer(&fixture.keys.quota);
    assert_eq!(problem.send(quota()).await.status, 200);
    let refused = problem.send(quota()).await;
    assert_eq!(refused.status, 429, "{}", refused.describe());
    assert_eq!(refused.header("content-type"), Some("application/problem+json"));
    assert_eq!(refused.json()["type"], "https://iana.org/assignments/http-problem-types#quota-exceeded");
    assert_eq!(refused.json()["code"], "quota_exceeded");
    assert_eq!(refused.header("retry-after"), Some("43080"), "{}", refused.describe());
}

/// Passed requests are recorded with the status the handler answered;
/// refused ones (by the adapter or by a `RequireScopes` inside it) leave no
/// record (only a count among their key's outcomes).
///
/// # Panics
/// On a mismatch.
pub async fn usage_records_carry_the_handler_status<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let keys = &fixture.keys;
    for (path, status) in [("/teapot", 418), ("/whoami", 200), ("/scoped/all", 403)] {
        let response =
            harness.send(TestRequest::get(path).bearer(&keys.reader).header("user-agent", "conformance/1")).await;
        assert_eq!(response.status, status, "{path}: {}", response.describe());
    }
    assert_eq!(harness.send(TestRequest::get("/whoami").bearer(&keys.revoked)).await.status, 401);
    fixture.engine.flush_usage().await;

    let records = fixture.acme.list_usage(keys.reader_id, TimeRange::default(), Page::default()).await.unwrap();
    let mut seen: Vec<(u16, &str)> = records.iter().map(|r| (r.status, r.endpoint.as_str())).collect();
    seen.sort_unstable();
    assert_eq!(seen, [(200, "/whoami"), (418, "/teapot")]);
    for record in &records {
        assert_eq!(record.method, "GET");
        assert_eq!(record.ip, Some(ip(DEFAULT_PEER)));
        assert_eq!(record.user_agent.as_deref(), Some("conformance/1"));
        assert_eq!(record.timestamp, fixture.clock.now());
    }
    // The two refusals (scope, revoked) are counted among their keys' outcomes only.
    assert_eq!(fixture.engine.usage_stats().written, 2 + 2, "two records, two refusals");
}

/// Sends each path with the reader key, checks its status, and returns
/// the endpoints the reader's usage records name, sorted.
async fn endpoints_recorded<H: Harness>(fixture: &Fixture, harness: &H, requests: &[(&str, u16)]) -> Vec<String> {
    for (path, status) in requests {
        let response = harness.send(TestRequest::get(path).bearer(&fixture.keys.reader)).await;
        assert_eq!(response.status, *status, "{path}: {}", response.describe());
    }
    fixture.engine.flush_usage().await;
    let records = fixture.acme.list_usage(fixture.keys.reader_id, TimeRange::default(), Page::default()).await;
    let mut endpoints: Vec<String> = records.unwrap().iter().map(|record| record.endpoint.to_string()).collect();
    endpoints.sort_unstable();
    endpoints
}

/// A usage record names the route template the request matched, never the
/// path: the ids and e-mail addresses in paths are not stored, and every
/// request of a route counts under one endpoint.
///
/// # Panics
/// On a mismatch.
pub async fn usage_records_name_the_route_template_not_the_path<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let requests = [("/users/42", 200), ("/users/alice@example.com", 200), ("/users/bob%40example.com", 200)];
    assert_eq!(endpoints_recorded(&fixture, &harness, &requests).await, ["/users/{id}"; 3]);
}

/// A request that matched no route (the application's 404) is recorded
/// under the one fixed endpoint `unmatched`, whatever its path: probing
/// clients cannot grow the set of endpoints nor store what they sent.
///
/// # Panics
/// On a mismatch.
pub async fn usage_records_name_unmatched_when_no_route_matched<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let requests = [("/nowhere", 404), ("/users", 404), ("/whoami/alice@example.com", 404)];
    assert_eq!(endpoints_recorded(&fixture, &harness, &requests).await, [UNMATCHED_ROUTE; 3]);
}

/// With [`UsageEndpoint::RawPath`] (an opt-in) records name the path as
/// sent, for routes and for 404s alike.
///
/// # Panics
/// On a mismatch.
pub async fn usage_records_name_the_raw_path_when_opted_in<H: Harness>() {
    let fixture = Fixture::new().await;
    let options = HarnessOptions { usage_endpoint: UsageEndpoint::RawPath, ..HarnessOptions::default() };
    let harness: H = fixture.harness(options).await;
    let requests = [("/nowhere", 404), ("/users/42", 200), ("/whoami", 200)];
    assert_eq!(endpoints_recorded(&fixture, &harness, &requests).await, ["/nowhere", "/users/42", "/whoami"]);
}

/// With the store down a key is neither accepted nor refused: 503
/// `unavailable`. A request without a key needs no store and is still 401.
///
/// # Panics
/// On a mismatch.
pub async fn store_down_is_503_unavailable<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    fixture.store.close().await;
    let response = harness.send(TestRequest::get("/whoami").bearer(&fixture.keys.reader)).await;
    assert_eq!(
        (response.status, response.error_code().as_deref()),
        (503, Some("unavailable")),
        "{}",
        response.describe()
    );
    assert_eq!(response.header(WWW), None);
    assert!(response.header("content-type").is_some_and(|v| v.starts_with("application/json")));
    let keyless = harness.send(TestRequest::get("/whoami")).await;
    assert_eq!(keyless.error_code().as_deref(), Some("missing_key"), "{}", keyless.describe());
}

/// Optional mode: no key reaches the handler without one; a bad key is
/// still refused; routes that need a key or scopes answer 401.
///
/// # Panics
/// On a mismatch.
pub async fn optional_mode_passes_keyless_requests_and_still_refuses_bad_keys<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions { optional: true, ..HarnessOptions::default() }).await;
    let keys = &fixture.keys;

    let anonymous = harness.send(TestRequest::get("/whoami")).await;
    assert_eq!(anonymous.status, 200, "{}", anonymous.describe());
    assert_eq!(anonymous.json()["key"], serde_json::Value::Null);
    let known = harness.send(TestRequest::get("/whoami").bearer(&keys.reader)).await;
    assert_eq!(known.json()["key"], keys.reader_id.to_string().as_str(), "{}", known.describe());

    for (request, status, code) in [
        (TestRequest::get("/whoami").bearer("sk_live_short"), 401, "malformed_key"),
        (TestRequest::get("/whoami").bearer(&keys.revoked), 401, "key_revoked"),
        (TestRequest::get("/whoami").bearer(&keys.reader).api_key(&keys.admin), 400, "ambiguous_key"),
        (TestRequest::get("/key"), 401, "missing_key"),
        (TestRequest::get("/scoped/all"), 401, "missing_key"),
    ] {
        let response = harness.send(request.clone()).await;
        assert_eq!(
            (response.status, response.error_code().as_deref()),
            (status, Some(code)),
            "{request:?}: {}",
            response.describe()
        );
    }
    let missing = harness.send(TestRequest::get("/key")).await;
    assert_eq!(missing.header(WWW), Some(MISSING), "{}", missing.describe());
}

/// Restricted to one app, another app's valid key is `invalid_key`.
///
/// # Panics
/// On a mismatch.
pub async fn app_restriction_refuses_other_apps_keys<H: Harness>() {
    let fixture = Fixture::new().await;
    let options = HarnessOptions { app_id: Some(APP.to_owned()), ..HarnessOptions::default() };
    let harness: H = fixture.harness(options).await;
    let other = harness.send(TestRequest::get("/whoami").bearer(&fixture.keys.other_app)).await;
    assert_eq!((other.status, other.error_code().as_deref()), (401, Some("invalid_key")), "{}", other.describe());
    assert_eq!(other.header(WWW), Some(INVALID));
    assert_eq!(harness.send(TestRequest::get("/whoami").bearer(&fixture.keys.reader)).await.status, 200);

    // Unrestricted, the same key passes.
    let open: H = fixture.harness(HarnessOptions::default()).await;
    assert_eq!(open.send(TestRequest::get("/whoami").bearer(&fixture.keys.other_app)).await.status, 200);
}

/// Configured key sources replace the default ones.
///
/// # Panics
/// On a mismatch.
pub async fn custom_key_sources_replace_the_defaults<H: Harness>() {
    let fixture = Fixture::new().await;
    let options =
        HarnessOptions { key_sources: Some(KeySources::empty().with_header("X-Token")), ..HarnessOptions::default() };
    let harness: H = fixture.harness(options).await;
    let bearer = harness.send(TestRequest::get("/whoami").bearer(&fixture.keys.reader)).await;
    assert_eq!(bearer.error_code().as_deref(), Some("missing_key"), "{}", bearer.describe());
    let token = harness.send(TestRequest::get("/whoami").header("x-token", fixture.keys.reader.as_str())).await;
    assert_eq!(token.status, 200, "{}", token.describe());
}

/// When the server does not know the peer address, keys without an IP
/// policy pass and keys with one are refused.
///
/// # Panics
/// On a mismatch.
pub async fn unknown_peer_fails_ip_policies<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let office = harness.send(TestRequest::get("/whoami").bearer(&fixture.keys.office).peer(None)).await;
    assert_eq!(office.error_code().as_deref(), Some("ip_not_allowed"), "{}", office.describe());
    // Forwarding headers do not help without a (trusted) peer.
    let forwarded =
        TestRequest::get("/whoami").bearer(&fixture.keys.office).peer(None).header("x-forwarded-for", "203.0.113.5");
    assert_eq!(harness.send(forwarded).await.status, 403);
    let reader = harness.send(TestRequest::get("/whoami").bearer(&fixture.keys.reader).peer(None)).await;
    assert_eq!(reader.status, 200, "{}", reader.describe());
}

/// Behind a trusted proxy, a forwarding header the client padded past the
/// length cap, made unreadable, or ended with an entry that is not an
/// address leaves the client unknown: refused even by an allowlist that
/// holds the proxy's own network.
///
/// # Panics
/// On a mismatch.
pub async fn unknown_client_behind_a_trusted_proxy_fails_ip_policies<H: Harness>() {
    let fixture = Fixture::new().await;
    let spec = PolicySpec::new("inside").with_allowed_ips(["10.0.0.0/8", "203.0.113.0/24"]);
    let policy = fixture.acme.create_policy(spec).await.unwrap();
    let created = fixture.acme.create_key(NewKey::new("inside").with_policy(policy.id)).await.unwrap();
    let key = created.raw.expose();
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let via_proxy =
        |xff: Vec<u8>| TestRequest::get("/whoami").bearer(key).peer(Some("10.0.0.1")).header("x-forwarded-for", xff);

    let fine = harness.send(via_proxy(b"203.0.113.5".to_vec())).await;
    assert_eq!(fine.status, 200, "{}", fine.describe());
    for (what, xff) in [
        ("padded past the cap", format!("{}203.0.113.5", "10.1.1.1,".repeat(600)).into_bytes()),
        ("not UTF-8", b"\xff\xfe, 10.0.0.9".to_vec()),
        ("an obfuscated entry", b"203.0.113.5, _hidden".to_vec()),
        ("a unix socket", b"unix:/run/app.sock".to_vec()),
        ("empty", Vec::new()),
    ] {
        let response = harness.send(via_proxy(xff)).await;
        assert_eq!(
            (response.status, response.error_code().as_deref()),
            (403, Some("ip_not_allowed")),
            "{what}: {}",
            response.describe()
        );
    }
    // With no forwarding header the proxy itself is the client.
    let direct = harness.send(TestRequest::get("/whoami").bearer(key).peer(Some("10.0.0.1"))).await;
    assert_eq!(direct.status, 200, "{}", direct.describe());
}

/// With proxies that write `Forwarded`, only `Forwarded` is read: an
/// `X-Forwarded-For` the client sent passes through such a proxy untouched.
///
/// # Panics
/// On a mismatch.
pub async fn only_the_configured_forwarding_header_is_read<H: Harness>() {
    let fixture = Fixture::new().await;
    let trusted_proxies = TrustedProxies::parse(["10.0.0.0/8"]).unwrap().with_header(ForwardingHeader::Forwarded);
    let harness: H = fixture.harness(HarnessOptions { trusted_proxies, ..HarnessOptions::default() }).await;
    let request = || TestRequest::get("/whoami").bearer(&fixture.keys.office).peer(Some("10.0.0.1"));

    for forwarded in [r#"for="203.0.113.5:4711";proto=https"#, "for=198.51.100.1, for=203.0.113.5, for=10.0.0.2"] {
        let response = harness.send(request().header("forwarded", forwarded)).await;
        assert_eq!(response.status, 200, "{forwarded}: {}", response.describe());
    }
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.5"),
        ("forwarded", "for=203.0.113.5, for=unknown"),
        ("forwarded", "for=203.0.113.5, proto=https"),
    ] {
        let response = harness.send(request().header(name, value)).await;
        assert_eq!(
            response.error_code().as_deref(),
            Some("ip_not_allowed"),
            "{name}: {value}: {}",
            response.describe()
        );
    }
}

/// Allowlist and trusted-proxy entries written as IPv4-mapped IPv6
/// (`::ffff:a.b.c.0/120`) match IPv4 clients and proxies.
///
/// # Panics
/// On a mismatch.
pub async fn mapped_ipv6_allowlist_and_proxy_entries_match_ipv4_clients<H: Harness>() {
    let fixture = Fixture::new().await;
    let spec = PolicySpec::new("mapped").with_allowed_ips(["::ffff:203.0.113.0/120"]);
    let policy = fixture.acme.create_policy(spec).await.unwrap();
    let created = fixture.acme.create_key(NewKey::new("mapped").with_policy(policy.id)).await.unwrap();
    let key = created.raw.expose();
    let trusted_proxies = TrustedProxies::parse(["::ffff:10.0.0.0/104"]).unwrap();
    let harness: H = fixture.harness(HarnessOptions { trusted_proxies, ..HarnessOptions::default() }).await;

    for (peer, xff) in [
        ("203.0.113.5", None),
        ("::ffff:203.0.113.5", None),
        ("10.0.0.1", Some("203.0.113.5")),
        ("10.0.0.1", Some("::ffff:203.0.113.5, 10.0.0.2")),
    ] {
        let mut request = TestRequest::get("/whoami").bearer(key).peer(Some(peer));
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        let response = harness.send(request).await;
        assert_eq!(response.status, 200, "{peer} {xff:?}: {}", response.describe());
    }
    let outside = harness.send(TestRequest::get("/whoami").bearer(key).peer(Some("203.0.114.5"))).await;
    assert_eq!(outside.error_code().as_deref(), Some("ip_not_allowed"), "{}", outside.describe());
}

/// A CORS preflight is authenticated like any request, so a handler that
/// answers `OPTIONS` is never reached without a key; the opt-in
/// passthrough lets it through without one (for apps whose own CORS layer
/// inside answers it).
///
/// # Panics
/// On a mismatch.
pub async fn preflights_are_authenticated_unless_passthrough_is_turned_on<H: Harness>() {
    let fixture = Fixture::new().await;
    let preflight = || TestRequest::new("OPTIONS", "/whoami").header("access-control-request-method", "GET");
    let strict: H = fixture.harness(HarnessOptions::default()).await;
    let refused = strict.send(preflight()).await;
    assert_eq!(refused.error_code().as_deref(), Some("missing_key"), "{}", refused.describe());
    let keyed = strict.send(preflight().bearer(&fixture.keys.reader)).await;
    assert_eq!(keyed.status, 204, "{}", keyed.describe());

    let open: H = fixture.harness(HarnessOptions { preflight_passthrough: true, ..HarnessOptions::default() }).await;
    let passed = open.send(preflight()).await;
    assert_eq!(passed.status, 204, "{}", passed.describe());
    let plain = open.send(TestRequest::new("OPTIONS", "/whoami")).await;
    assert_eq!(plain.error_code().as_deref(), Some("missing_key"), "{}", plain.describe());
    fixture.engine.flush_usage().await;
    assert_eq!(fixture.engine.usage_stats().written, 1, "only the keyed preflight is recorded");
}

/// A request refused by a route's `RequireScopes` spends nothing: the key's
/// rate limit and quota are as if it had not been made, and no usage record
/// is written for it; the refusal is counted among the key's outcomes.
///
/// # Panics
/// On a mismatch.
pub async fn scope_refused_requests_spend_no_rate_limit_quota_or_usage<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let keys = &fixture.keys;
    // `limited` (3 per 10 s) and `quota` (1 a day) hold only `read:users`.
    for key in [&keys.limited, &keys.limited, &keys.limited, &keys.quota] {
        let refused = harness.send(TestRequest::get("/scoped/all").bearer(key)).await;
        assert_eq!(
            (refused.status, refused.error_code().as_deref()),
            (403, Some("insufficient_scope")),
            "{}",
            refused.describe()
        );
        assert_eq!(refused.header("ratelimit"), None, "{}", refused.describe());
    }
    for remaining in ["2", "1", "0"] {
        let response = harness.send(TestRequest::get("/whoami").bearer(&keys.limited)).await;
        assert_eq!(response.status, 200, "{}", response.describe());
        assert_eq!(draft_remaining(&response).as_deref(), Some(remaining), "{}", response.describe());
    }
    let response = harness.send(TestRequest::get("/whoami").bearer(&keys.quota)).await;
    assert_eq!(response.status, 200, "the day's one request is still there: {}", response.describe());
    let spent = harness.send(TestRequest::get("/whoami").bearer(&keys.quota)).await;
    assert_eq!(spent.error_code().as_deref(), Some("quota_exceeded"), "{}", spent.describe());

    fixture.engine.flush_usage().await;
    let totals = fixture.acme.usage_totals(keysmith_core::Period::Day, TimeRange::default()).await.unwrap();
    let (requests, errors) = totals.iter().fold((0, 0), |(r, e), t| (r + t.requests, e + t.errors));
    assert_eq!((requests, errors), (4, 0), "only the four passed requests are recorded: no 403 among them");
    // The refusals are counted among the keys' outcomes, charged to nothing.
    let refused = |reason| totals.iter().map(|t| t.refused.get(reason)).sum::<u64>();
    assert_eq!(refused(keysmith_core::RefusalReason::InsufficientScope), 4);
    assert_eq!(refused(keysmith_core::RefusalReason::QuotaExceeded), 1);
    assert_eq!(fixture.engine.usage_stats().written, 4 + 5, "passed requests and refusals");
}

/// When the service behind the adapter fails (an error, not a response),
/// the error goes on and the request's usage is still recorded, with the
/// status the server answers. No route had matched (the failing service
/// sits in front of the router), so the endpoint is `unmatched`.
///
/// # Panics
/// On a mismatch.
pub async fn inner_service_errors_keep_the_usage_record<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let keys = &fixture.keys;
    let response = harness.send(TestRequest::get("/fail").bearer(&keys.reader)).await;
    assert!(response.status >= 500, "{}", response.describe());
    fixture.engine.flush_usage().await;
    let records = fixture.acme.list_usage(keys.reader_id, TimeRange::default(), Page::default()).await.unwrap();
    let seen: Vec<(u16, &str)> = records.iter().map(|r| (r.status, r.endpoint.as_str())).collect();
    assert_eq!(seen, [(response.status, UNMATCHED_ROUTE)]);
}

/// Behind no middleware, `ApiKey` is a 500 that names the missing
/// middleware (the application is wired wrong), and `Option<ApiKey>` is
/// `None`, whatever the request carries: a handler taking `Option<ApiKey>`
/// answers keyless requests anyway, so a forgotten middleware never grants
/// more than that answer.
///
/// # Panics
/// On a mismatch.
pub async fn extractors_without_the_middleware<H: Harness>() {
    let fixture = Fixture::new().await;
    let harness: H = fixture.harness(HarnessOptions::default()).await;
    let keys = &fixture.keys;
    for request in [TestRequest::get("/outside/key"), TestRequest::get("/outside/key").bearer(&keys.reader)] {
        let response = harness.send(request).await;
        assert_eq!(response.status, 500, "{}", response.describe());
        assert_eq!(response.error_code().as_deref(), Some("internal_error"));
        let message = response.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains("needs keysmith_"), "{message}");
    }
    for request in [TestRequest::get("/outside/whoami"), TestRequest::get("/outside/whoami").bearer(&keys.reader)] {
        let response = harness.send(request).await;
        assert_eq!(response.status, 200, "{}", response.describe());
        assert_eq!(response.json(), serde_json::json!({ "key": null }));
    }
    fixture.engine.flush_usage().await;
    assert_eq!(fixture.engine.usage_stats().written, 0);
}

/// The credits a route's scope refusal gives back are back before the
/// refusal answers, also where the store gives them back with a write
/// (SQLite here, where the memory store of the other cases answers at
/// once): each next request of the key finds them, so a key with one credit
/// is refused for its scope again and again, never for its credits, and
/// still has its credit for a route it may use.
pub async fn scope_refusals_give_credits_back_before_answering<H: Harness>() {
    /// Makes the credits' write back come late: after a hundred turns of
    /// the scheduler, long after a refusal answered without waiting for it
    /// would have let the key's next request in.
    #[derive(Debug)]
    struct LateRefunds;

    #[async_trait::async_trait]
    impl keysmith_core::store::StoreProbe for LateRefunds {
        async fn before(&self, op: keysmith_core::store::StoreOp) -> keysmith_core::Result<()> {
            if op == keysmith_core::store::StoreOp::refund_credits {
                for _ in 0..100 {
                    tokio::task::yield_now().await;
                }
            }
            Ok(())
        }
    }

    let store = keysmith_sqlx::SqliteStore::connect("sqlite::memory:").await.expect("an in-memory database");
    store.migrate().await.expect("migrated");
    let probed = keysmith_core::store::ProbedStore::new(Arc::new(store), Arc::new(LateRefunds));
    let engine =
        Engine::builder(Arc::new(probed) as Arc<dyn Store>).with_clock(ManualClock::new(t0())).build().unwrap();
    let metered = NewKey::new("metered").with_scopes(["read:users"]).with_credits(keysmith_core::Credits::new(1));
    let created = engine.tenant(APP, "acme").create_key(metered).await.unwrap();
    let raw = created.raw.expose().to_owned();
    let harness = H::start(engine.clone(), HarnessOptions::default()).await;
    for _ in 0..5 {
        let refused = harness.send(TestRequest::get("/scoped/all").bearer(&raw)).await;
        assert_eq!(refused.error_code().as_deref(), Some("insufficient_scope"), "{}", refused.describe());
    }
    let passed = harness.send(TestRequest::get("/whoami").bearer(&raw)).await;
    assert_eq!(passed.status, 200, "the credit is back: {}", passed.describe());
    let spent = harness.send(TestRequest::get("/whoami").bearer(&raw)).await;
    assert_eq!(spent.error_code().as_deref(), Some("credits_exhausted"), "{}", spent.describe());
}
