//! The gate end to end on a memory store.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};

use super::*;
use crate::store::{Page, TimeRange};
use crate::{
    Engine, ManualClock, MemoryStore, NewKey, PolicySpec, RateLimit, Refusal, Store, TenantEngine, UsageRecord,
};

struct Setup {
    engine: Engine,
    store: Arc<MemoryStore>,
    acme: TenantEngine,
}

fn setup() -> Setup {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap());
    let engine = Engine::builder(Arc::clone(&store) as Arc<dyn Store>).with_clock(clock).build().unwrap();
    let acme = engine.tenant("app", "acme");
    Setup { engine, store, acme }
}

async fn key(s: &Setup, new: NewKey) -> String {
    s.acme.create_key(new).await.unwrap().raw.expose().to_owned()
}

fn bearer(raw: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {raw}"))]
}

async fn outcome(gate: &Gate, method: &str, peer: Option<&str>, headers: &[(&str, String)]) -> Outcome {
    let peer = peer.map(|p| p.parse().unwrap());
    gate.authorize(&RequestFacts::new(method, "/things/7", peer, headers).with_route(Some("/things/{id}"))).await
}

fn refused(outcome: Outcome) -> RefusalResponse {
    match outcome {
        Outcome::Refuse(response) => response,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn admitted(outcome: Outcome) -> Admitted {
    match outcome {
        Outcome::Pass(admitted) => admitted,
        other => panic!("expected a pass, got {other:?}"),
    }
}

#[tokio::test]
async fn valid_key_passes_and_its_usage_is_recorded_with_the_status() {
    let s = setup();
    let raw = key(&s, NewKey::new("ci").with_scopes(["read"])).await;
    let gate = Gate::new(s.engine.clone());
    let mut headers = bearer(&raw);
    headers.push(("user-agent", "curl/8".to_owned()));
    let pass = admitted(outcome(&gate, "GET", Some("198.51.100.7"), &headers).await);
    assert!(pass.key().has_scope("read:users"));
    assert!(pass.response_headers().is_empty(), "no rate limit, no RateLimit headers");
    let copy = pass.usage_record(418);
    let key_id = pass.key().id();
    pass.finish(418);

    s.engine.flush_usage().await;
    let records = s.acme.list_usage(key_id, TimeRange::default(), Page::default()).await.unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!((record.status, record.method.as_str(), record.endpoint.as_str()), (418, "GET", "/things/{id}"));
    assert_eq!(record.ip, Some("198.51.100.7".parse().unwrap()));
    assert_eq!(record.user_agent.as_deref(), Some("curl/8"));
    // `usage_record` (a copy) and `finish` (the record itself) agree on
    // everything but the id and the latency, which runs on.
    assert_eq!(UsageRecord { id: record.id, latency: record.latency, ..copy }, *record);
}

#[tokio::test]
async fn missing_key_is_refused_unless_optional_where_a_bad_key_is_still_refused() {
    let s = setup();
    let gate = Gate::new(s.engine.clone()).with_realm("things");
    let missing = refused(outcome(&gate, "GET", None, &[]).await);
    assert_eq!((missing.status, missing.code), (401, "missing_key"));
    assert_eq!(missing.header("www-authenticate"), Some(r#"Bearer realm="things""#));

    let optional = gate.with_optional(true);
    assert!(matches!(outcome(&optional, "GET", None, &[]).await, Outcome::Anonymous));
    let bad = refused(outcome(&optional, "GET", None, &bearer("sk_live_nope")).await);
    assert_eq!(bad.code, "malformed_key");
}

#[tokio::test]
async fn cors_preflight_needs_a_key_unless_passthrough_is_turned_on() {
    let s = setup();
    let gate = Gate::new(s.engine.clone());
    let preflight = [("access-control-request-method", "POST".to_owned())];
    assert_eq!(refused(outcome(&gate, "OPTIONS", None, &preflight).await).code, "missing_key");
    assert!(!gate.is_passthrough_preflight("OPTIONS", &preflight[..]));
    let passthrough = gate.with_preflight_passthrough(true);
    assert!(matches!(outcome(&passthrough, "OPTIONS", None, &preflight).await, Outcome::Preflight));
    // OPTIONS without the preflight header is an ordinary request.
    assert_eq!(refused(outcome(&passthrough, "OPTIONS", None, &[]).await).code, "missing_key");
}

#[tokio::test]
async fn a_long_negotiate_token_next_to_a_valid_key_is_ignored() {
    let s = setup();
    let raw = key(&s, NewKey::new("ci")).await;
    let gate = Gate::new(s.engine.clone());
    let headers = [("authorization", format!("Negotiate {}", "YII".repeat(2000))), ("x-api-key", raw)];
    admitted(outcome(&gate, "GET", None, &headers).await);
}

#[tokio::test]
async fn keys_of_another_app_are_refused_as_invalid() {
    let s = setup();
    let other = s.engine.tenant("other-app", "acme").create_key(NewKey::new("x")).await.unwrap();
    let own = key(&s, NewKey::new("y")).await;
    let gate = Gate::new(s.engine.clone()).with_app_id("app");
    let refusal = refused(outcome(&gate, "GET", None, &bearer(other.raw.expose())).await);
    assert_eq!((refusal.status, refusal.code), (401, "invalid_key"));
    admitted(outcome(&gate, "GET", None, &bearer(&own)).await);
}

#[tokio::test]
async fn store_failure_is_503_unavailable() {
    let s = setup();
    let raw = key(&s, NewKey::new("ci")).await;
    s.store.close().await;
    let response = refused(outcome(&Gate::new(s.engine.clone()), "GET", None, &bearer(&raw)).await);
    assert_eq!((response.status, response.code, response.refusal), (503, "unavailable", None));
}

#[tokio::test]
async fn ip_allowlist_sees_the_client_behind_a_trusted_proxy_only() {
    let s = setup();
    let policy = s.acme.create_policy(PolicySpec::new("office").with_allowed_ips(["203.0.113.0/24"])).await.unwrap();
    let raw = key(&s, NewKey::new("office").with_policy(policy.id)).await;
    let gate = Gate::new(s.engine.clone()).with_trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"]).unwrap());
    let mut headers = bearer(&raw);
    headers.push(("x-forwarded-for", "203.0.113.5".to_owned()));

    let via_proxy = admitted(outcome(&gate, "GET", Some("10.0.0.1"), &headers).await);
    assert_eq!(via_proxy.client_ip(), Some("203.0.113.5".parse().unwrap()));
    let spoofed = refused(outcome(&gate, "GET", Some("198.51.100.7"), &headers).await);
    assert_eq!(spoofed.code, "ip_not_allowed");
    let unknown_peer = refused(outcome(&gate, "GET", None, &bearer(&raw)).await);
    assert_eq!(unknown_peer.code, "ip_not_allowed");
}

#[tokio::test]
async fn ip_allowlist_entries_written_as_mapped_ipv6_match_ipv4_clients() {
    let s = setup();
    let spec = PolicySpec::new("mapped").with_allowed_ips(["::ffff:203.0.113.0/120", "::ffff:198.51.100.7"]);
    let policy = s.acme.create_policy(spec).await.unwrap();
    assert_eq!(policy.allowed_ips, ["203.0.113.0/24".parse().unwrap(), "198.51.100.7/32".parse().unwrap()]);
    let raw = key(&s, NewKey::new("mapped").with_policy(policy.id)).await;
    let gate =
        Gate::new(s.engine.clone()).with_trusted_proxies(TrustedProxies::parse(["::ffff:10.0.0.0/104"]).unwrap());
    for peer in ["203.0.113.5", "::ffff:203.0.113.5", "198.51.100.7"] {
        admitted(outcome(&gate, "GET", Some(peer), &bearer(&raw)).await);
    }
    assert_eq!(refused(outcome(&gate, "GET", Some("203.0.114.5"), &bearer(&raw)).await).code, "ip_not_allowed");
    // Through a proxy named as mapped IPv6, to a client written as mapped IPv6.
    let mut headers = bearer(&raw);
    headers.push(("x-forwarded-for", "::ffff:203.0.113.9".to_owned()));
    let via_proxy = admitted(outcome(&gate, "GET", Some("10.0.0.1"), &headers).await);
    assert_eq!(via_proxy.client_ip(), Some("203.0.113.9".parse().unwrap()));
}

#[tokio::test]
async fn an_unknown_client_behind_a_trusted_proxy_is_refused_by_an_ip_allowlist() {
    let s = setup();
    let policy = s.acme.create_policy(PolicySpec::new("proxy net").with_allowed_ips(["10.0.0.0/8"])).await.unwrap();
    let raw = key(&s, NewKey::new("k").with_policy(policy.id)).await;
    let gate = Gate::new(s.engine.clone()).with_trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"]).unwrap());
    // A client that corrupts or pads the header must not pass as the proxy.
    for xff in ["garbage".to_owned(), "10.0.0.5, _hidden".to_owned(), "1.1.1.1,".repeat(1000)] {
        let mut headers = bearer(&raw);
        headers.push(("x-forwarded-for", xff.clone()));
        assert_eq!(refused(outcome(&gate, "GET", Some("10.0.0.1"), &headers).await).code, "ip_not_allowed", "{xff}");
    }
}

#[tokio::test]
async fn rate_limited_keys_get_rate_limit_headers_then_429() {
    let s = setup();
    let policy =
        s.acme.create_policy(PolicySpec::new("slow").with_rate_limit(2, Duration::from_secs(60))).await.unwrap();
    let raw = key(&s, NewKey::new("slow").with_policy(policy.id)).await;
    let gate = Gate::new(s.engine.clone());
    let first = admitted(outcome(&gate, "GET", None, &bearer(&raw)).await);
    assert_eq!(
        first.response_headers(),
        [("ratelimit-policy", r#""default";q=2;w=60"#.to_owned()), ("ratelimit", r#""default";r=1;t=30"#.to_owned())]
    );
    let legacy = gate.clone().with_rate_limit_headers(RateLimitHeaders::Legacy);
    let second = admitted(outcome(&legacy, "GET", None, &bearer(&raw)).await);
    assert_eq!(
        second.response_headers(),
        [
            ("ratelimit-limit", "2".to_owned()),
            ("ratelimit-remaining", "0".to_owned()),
            ("ratelimit-reset", "60".to_owned())
        ]
    );
    let limited = refused(outcome(&gate, "GET", None, &bearer(&raw)).await);
    assert_eq!((limited.status, limited.code), (429, "rate_limited"));
    assert_eq!(limited.header("retry-after"), Some("30"));
    assert_eq!(limited.header("ratelimit"), Some(r#""default";r=0;t=30"#));
    let silent = gate.with_rate_limit_headers(RateLimitHeaders::None);
    let quiet = refused(outcome(&silent, "GET", None, &bearer(&raw)).await);
    assert!(quiet.headers.iter().all(|(name, _)| !name.starts_with("ratelimit")), "{:?}", quiet.headers);
}

#[tokio::test]
async fn every_limit_and_the_quota_are_announced_and_the_closest_limit_reported() {
    let s = setup();
    let spec = PolicySpec::new("tiers")
        .with_limit(RateLimit::new("burst", 10, Duration::from_secs(1)))
        .with_limit(RateLimit::new("hourly", 3, Duration::from_secs(3600)))
        .with_quota(Some(1000), Some(20_000));
    let policy = s.acme.create_policy(spec).await.unwrap();
    let raw = key(&s, NewKey::new("tiers").with_policy(policy.id)).await;
    let gate = Gate::new(s.engine.clone());
    let pass = admitted(outcome(&gate, "GET", None, &bearer(&raw)).await);
    let headers = pass.response_headers();
    // March: 31 days.
    let month = 31 * 86_400;
    assert_eq!(
        headers[0],
        (
            "ratelimit-policy",
            format!(
                r#""burst";q=10;w=1, "hourly";q=3;w=3600, "quota-daily";q=1000;w=86400, "quota-monthly";q=20000;w={month}"#
            )
        )
    );
    // `hourly` has 2 left, `burst` 9: the hourly one is closest to refusing.
    assert_eq!(headers[1], ("ratelimit", r#""hourly";r=2;t=1200"#.to_owned()));
}

#[tokio::test]
async fn a_request_validated_again_with_waiting_spends_each_limit_once() {
    let s = setup();
    let spec = PolicySpec::new("counted")
        .with_limit(RateLimit::new("hourly", 3, Duration::from_secs(3600)))
        .with_quota(Some(1000), None);
    let policy = s.acme.create_policy(spec).await.unwrap();
    let raw = key(&s, NewKey::new("counted").with_policy(policy.id)).await;
    let gate = Gate::new(s.engine.clone());
    // The first request finds no fresh quota counter: the validation that
    // may not wait counts `hourly`, stops at the quota and gives `hourly`
    // back; the one that waits counts it again, once.
    for remaining in [2, 1, 0] {
        let pass = admitted(outcome(&gate, "GET", None, &bearer(&raw)).await);
        assert_eq!(pass.key().rate_limit().map(|status| status.remaining), Some(remaining));
    }
    refused(outcome(&gate, "GET", None, &bearer(&raw)).await);
}

#[tokio::test]
async fn a_later_limit_that_refuses_spends_nothing_of_the_earlier_ones() {
    let s = setup();
    let spec = PolicySpec::new("tiers")
        .with_limit(RateLimit::new("burst", 2, Duration::from_secs(1)))
        .with_limit(RateLimit::new("hourly", 1, Duration::from_secs(3600)));
    let policy = s.acme.create_policy(spec).await.unwrap();
    let raw = key(&s, NewKey::new("tiers").with_policy(policy.id)).await;
    let gate = Gate::new(s.engine.clone());
    let pass = admitted(outcome(&gate, "GET", None, &bearer(&raw)).await);
    assert_eq!(pass.key().rate_limit().map(|status| status.remaining), Some(0));
    for _ in 0..3 {
        let limited = refused(outcome(&gate, "GET", None, &bearer(&raw)).await);
        match &limited.refusal {
            Some(Refusal::RateLimited { limit, .. }) => assert_eq!(limit.name, "hourly"),
            other => panic!("{other:?}"),
        }
        assert!(limited.message.contains("\"hourly\""), "{}", limited.message);
    }
    // Had the refusals spent `burst` (2 per second), the third would have
    // been refused by `burst` instead.
}

#[tokio::test]
async fn scope_checks_answer_403_or_401_without_a_key() {
    let s = setup();
    let raw = key(&s, NewKey::new("reader").with_scopes(["read:users"])).await;
    let gate = Gate::new(s.engine.clone());
    let reader = admitted(outcome(&gate, "GET", None, &bearer(&raw)).await);
    let key = reader.key();
    assert!(gate.scope_refusal(&ScopeRequirement::all(["read:users"]), Some(key)).is_none());
    let denied = gate.scope_refusal(&ScopeRequirement::any(["admin", "write:users"]), Some(key)).unwrap();
    assert!(denied.refund.is_none(), "the memory store gives back at once");
    let denied = denied.response;
    assert_eq!((denied.status, denied.code), (403, "insufficient_scope"));
    assert_eq!(
        denied.header("www-authenticate"),
        Some(r#"Bearer realm="api", error="insufficient_scope", scope="admin write:users""#)
    );
    // The scope attribute lists both; the message says one would do.
    assert_eq!(denied.message, "the API key lacks every scope that would do; it needs one of: admin write:users");
    let all = gate.scope_refusal(&ScopeRequirement::all(["read:users", "write:users"]), Some(key)).unwrap();
    assert_eq!(all.response.message, "the API key lacks the required scope(s): write:users");
    let anonymous = gate.scope_refusal(&ScopeRequirement::all(["read:users"]), None).unwrap().response;
    assert_eq!((anonymous.status, anonymous.code), (401, "missing_key"));
}

/// The endpoint each request's record names, by how the route became known.
#[tokio::test]
async fn records_name_the_route_known_before_or_after_the_handler_else_unmatched() {
    let s = setup();
    let raw = key(&s, NewKey::new("ci")).await;
    let headers = bearer(&raw);
    let facts = |route| RequestFacts::new("GET", "/things/alice@example.com", None, &headers[..]).with_route(route);
    let routes = Gate::new(s.engine.clone());
    let raw_paths = routes.clone().with_usage_endpoint(UsageEndpoint::RawPath);
    let cases = [
        // (gate, route before the handler, route after it, recorded)
        (&routes, Some("/things/{id}"), None, "/things/{id}"),
        (&routes, Some("/things/{id}"), Some("/ignored"), "/things/{id}"),
        (&routes, None, Some("/things/{name}"), "/things/{name}"),
        (&routes, None, None, UNMATCHED_ROUTE),
        (&raw_paths, Some("/things/{id}"), Some("/things/{id}"), "/things/alice@example.com"),
    ];
    let mut key_id = None;
    for (gate, before, after, _) in cases {
        let pass = admitted(gate.authorize(&facts(before)).await);
        key_id = Some(pass.key().id());
        pass.finish_routed(200, || after.map(std::borrow::Cow::Borrowed));
    }
    s.engine.flush_usage().await;
    let key_id = key_id.unwrap();
    let records = s.acme.list_usage(key_id, TimeRange::default(), Page::default()).await.unwrap();
    let mut recorded: Vec<&str> = records.iter().map(|record| record.endpoint.as_str()).collect();
    let mut expected: Vec<&str> = cases.iter().map(|case| case.3).collect();
    recorded.sort_unstable();
    expected.sort_unstable();
    assert_eq!(recorded, expected);
}

#[tokio::test]
async fn nothing_secret_is_in_debug_output() {
    let s = setup();
    let raw = key(&s, NewKey::new("ci")).await;
    let gate = Gate::new(s.engine.clone());
    let headers = bearer(&raw);
    let facts = RequestFacts::new("GET", "/", None, &headers[..]);
    let future = gate.authorize(&facts);
    let pass = admitted(future.await);
    for debug in [format!("{facts:?}"), format!("{pass:?}"), format!("{:?}", pass.key()), format!("{gate:?}")] {
        assert!(!debug.contains(&raw), "{debug}");
    }
}

#[tokio::test]
async fn credits_are_announced_as_a_policy_and_reported_when_closest_to_refusing() {
    let s = setup();
    let prepaid = key(&s, NewKey::new("prepaid").with_credits(crate::Credits::new(3))).await;
    let gate = Gate::new(s.engine.clone());
    let pass = admitted(outcome(&gate, "GET", None, &bearer(&prepaid)).await);
    assert_eq!(
        pass.response_headers(),
        [("ratelimit-policy", r#""credits";q=3"#.to_owned()), ("ratelimit", r#""credits";r=2"#.to_owned())]
    );

    let policy =
        s.acme.create_policy(PolicySpec::new("slow").with_rate_limit(10, Duration::from_secs(60))).await.unwrap();
    let daily = crate::Credits::new(5).with_refill(5, crate::Period::Day);
    let metered = key(&s, NewKey::new("metered").with_policy(policy.id).with_credits(daily)).await;
    let pass = admitted(outcome(&gate, "GET", None, &bearer(&metered)).await);
    let headers = pass.response_headers();
    assert_eq!(headers[0], ("ratelimit-policy", r#""default";q=10;w=60, "credits";q=5;w=86400"#.to_owned()));
    // 4 credits left against 9 requests: the credits are closest to refusing,
    // and they refill at the next UTC midnight.
    let (name, value) = &headers[1];
    assert_eq!(*name, "ratelimit");
    assert!(value.starts_with(r#""credits";r=4;t="#), "{value}");
}

/// The gate renders a policy's `RateLimit-Policy` once and reuses it; a
/// changed policy, or a month of another length for a monthly quota, is
/// rendered again, and what is written always equals a fresh rendering.
#[tokio::test]
async fn rendered_rate_limit_headers_follow_policy_changes_and_the_month() {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 31, 23, 59, 0).unwrap());
    let engine = Engine::builder(MemoryStore::new()).with_clock(clock.clone()).build().unwrap();
    let acme = engine.tenant("app", "acme");
    let spec = |requests| {
        PolicySpec::new("p")
            .with_limit(RateLimit::new("burst", requests, Duration::from_secs(60)))
            .with_quota(None, Some(20_000))
    };
    let policy = acme.create_policy(spec(10)).await.unwrap();
    let raw = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap().raw.expose().to_owned();
    let gate = Gate::new(engine.clone());
    let headers = || async {
        let pass = admitted(outcome(&gate, "GET", None, &bearer(&raw)).await);
        let mut fresh = Vec::new();
        RateLimitHeaders::Draft.write_for_validation(pass.key().validation(), &mut fresh);
        let written = pass.response_headers();
        assert_eq!(written, fresh, "the shared rendering equals a fresh one");
        written
    };

    let march = headers().await;
    assert_eq!(march[0].1, format!(r#""burst";q=10;w=60, "quota-monthly";q=20000;w={}"#, 31 * 86_400));
    assert_eq!(march[1].1, r#""burst";r=9;t=6"#);
    assert_eq!(headers().await[1].1, r#""burst";r=8;t=12"#, "the state is written from this request's numbers");

    acme.update_policy(policy.id, spec(100)).await.unwrap();
    assert!(headers().await[0].1.starts_with(r#""burst";q=100;w=60"#), "a changed policy is rendered again");

    clock.advance(Duration::from_secs(120));
    let april = headers().await;
    assert!(april[0].1.ends_with(&format!("w={}", 30 * 86_400)), "{april:?}");
}

#[tokio::test]
async fn a_gate_reports_its_configuration_and_shows_it_in_debug() {
    let s = setup();
    let sources = KeySources::empty().with_header("x-token");
    let proxies = TrustedProxies::parse(["10.0.0.0/8"]).unwrap().with_header(ForwardingHeader::Forwarded);
    let gate = Gate::new(s.engine.clone())
        .with_key_sources(sources.clone())
        .with_trusted_proxies(proxies.clone())
        .with_realm("things")
        .with_app_id("billing")
        .with_optional(true)
        .with_rate_limit_headers(RateLimitHeaders::Legacy)
        .with_usage_endpoint(UsageEndpoint::RawPath);
    assert_eq!((gate.key_sources(), gate.trusted_proxies()), (&sources, &proxies));
    assert_eq!((gate.realm(), gate.app_id(), gate.is_optional()), ("things", Some("billing"), true));
    assert_eq!((gate.rate_limit_headers(), gate.usage_endpoint()), (RateLimitHeaders::Legacy, UsageEndpoint::RawPath));
    assert!(std::ptr::eq(gate.engine(), gate.clone().engine()), "clones share one configuration");
    let debug = format!("{gate:?}");
    for field in [r#"realm: "things""#, r#"app_id: Some("billing")"#, "optional: true", "rate_limit_headers: Legacy"] {
        assert!(debug.contains(field), "{field} in {debug}");
    }
    let plain = Gate::new(s.engine.clone());
    assert_eq!((plain.realm(), plain.app_id(), plain.is_optional()), (Gate::DEFAULT_REALM, None, false));
    assert_eq!((plain.rate_limit_headers(), plain.usage_endpoint()), (RateLimitHeaders::Draft, UsageEndpoint::Route));
    assert_eq!(plain.key_sources(), &KeySources::default());
}

#[tokio::test]
async fn requests_and_their_outcomes_show_what_they_are_in_debug() {
    let s = setup();
    let raw = key(&s, NewKey::new("ci")).await;
    let gate = Gate::new(s.engine.clone());
    let none: &[(&str, &str)] = &[];
    let facts =
        RequestFacts::new("GET", "/things/7", Some([192, 0, 2, 1].into()), none).with_route(Some("/things/{id}"));
    assert_eq!(
        format!("{facts:?}"),
        r#"RequestFacts { method: "GET", path: "/things/7", route: Some("/things/{id}"), peer: Some(192.0.2.1), .. }"#
    );
    let missing = gate.authorize(&facts);
    assert_eq!(format!("{missing:?}"), r#"Authorize { state: "ready" }"#);
    assert!(matches!(missing.await, Outcome::Refuse(_)));
    let pass = admitted(outcome(&gate, "GET", Some("192.0.2.1"), &bearer(&raw)).await);
    let debug = format!("{pass:?}");
    assert!(debug.starts_with("Admitted { key: ApiKey {") && debug.contains("ip: Some(192.0.2.1)"), "{debug}");
    assert_eq!(pass.client_ip(), Some("192.0.2.1".parse().unwrap()));
}

#[tokio::test]
async fn only_an_options_request_with_the_preflight_header_passes_as_a_preflight() {
    let s = setup();
    let on = Gate::new(s.engine.clone()).with_preflight_passthrough(true);
    let preflight = [("access-control-request-method", "POST")];
    assert!(on.is_passthrough_preflight("OPTIONS", &preflight[..]));
    assert!(on.is_passthrough_preflight("options", &preflight[..]));
    assert!(!on.is_passthrough_preflight("GET", &preflight[..]));
    assert!(!on.is_passthrough_preflight("OPTIONS", &[] as &[(&str, &str)]));
    assert!(!on.with_preflight_passthrough(false).is_passthrough_preflight("OPTIONS", &preflight[..]));
}

#[tokio::test]
async fn user_agents_are_cut_to_512_bytes_and_the_origin_is_read_for_the_allowlist() {
    let s = setup();
    let origins = PolicySpec::new("web").with_allowed_origins(["https://app.example.com"]);
    let policy = s.acme.create_policy(origins).await.unwrap();
    let raw = key(&s, NewKey::new("web").with_policy(policy.id)).await;
    let gate = Gate::new(s.engine.clone());
    let mut headers = bearer(&raw);
    headers.push(("origin", "https://app.example.com".to_owned()));
    headers.push(("user-agent", format!("agent/{}", "x".repeat(600))));
    let pass = admitted(outcome(&gate, "GET", None, &headers).await);
    let agent = pass.usage_record(200).user_agent.unwrap();
    assert_eq!((agent.len(), &agent[..7]), (512, "agent/x"));
    headers[1].1 = "https://evil.example.com".to_owned();
    assert_eq!(refused(outcome(&gate, "GET", None, &headers).await).code, "origin_not_allowed");
}

#[tokio::test]
async fn a_request_refused_by_its_route_writes_no_headers_and_records_nothing() {
    let s = setup();
    let policy = s.acme.create_policy(PolicySpec::new("p").with_rate_limit(5, Duration::from_secs(60))).await.unwrap();
    let raw = key(&s, NewKey::new("reader").with_scopes(["read"]).with_policy(policy.id)).await;
    let gate = Gate::new(s.engine.clone());
    let pass = admitted(outcome(&gate, "GET", None, &bearer(&raw)).await);
    assert_eq!(pass.response_headers().len(), 2);
    let id = pass.key().id();
    assert!(gate.scope_refusal(&ScopeRequirement::all(["write"]), Some(pass.key())).is_some());
    assert!(pass.response_headers().is_empty(), "the refunded request spent nothing to announce");
    pass.finish(403);
    s.engine.flush_usage().await;
    assert!(s.acme.list_usage(id, TimeRange::default(), Page::default()).await.unwrap().is_empty());
}

/// A sink that keeps the shared values it is handed.
#[derive(Default)]
struct SharingSink(Vec<(&'static str, String, Option<SharedHeaderValue>)>);

impl HeaderSink for SharingSink {
    fn append_header(&mut self, name: &'static str, value: &str) {
        self.0.push((name, value.to_owned(), None));
    }

    fn append_shared(&mut self, name: &'static str, value: &SharedHeaderValue) {
        self.0.push((name, value.as_str().to_owned(), Some(value.clone())));
    }
}

/// Each policy's `RateLimit-Policy` is rendered once and handed to every
/// response shared; a policy whose limits or quota change is rendered again.
#[tokio::test]
async fn a_policys_headers_are_rendered_once_and_handed_over_shared() {
    let s = setup();
    let spec = |daily| {
        PolicySpec::new("p").with_rate_limit(100, Duration::from_secs(60)).with_quota(Some(daily), Some(20_000))
    };
    let first = s.acme.create_policy(spec(1000)).await.unwrap();
    let second = s.acme.create_policy(PolicySpec::new("q").with_rate_limit(7, Duration::from_secs(1))).await.unwrap();
    let a = key(&s, NewKey::new("a").with_policy(first.id)).await;
    let b = key(&s, NewKey::new("b").with_policy(second.id)).await;
    let gate = Gate::new(s.engine.clone());
    let written = |raw: String| {
        let gate = gate.clone();
        async move {
            let pass = admitted(outcome(&gate, "GET", None, &bearer(&raw)).await);
            let mut sink = SharingSink::default();
            pass.write_headers(&mut sink);
            sink.0
        }
    };
    let policy_value = |headers: &[(&'static str, String, Option<SharedHeaderValue>)]| {
        assert!(headers.iter().all(|(_, _, shared)| shared.is_some()), "{headers:?}");
        headers[0].2.clone().unwrap()
    };
    let one = policy_value(&written(a.clone()).await);
    let other = policy_value(&written(b.clone()).await);
    let again = policy_value(&written(a.clone()).await);
    assert_eq!(
        one.as_str(),
        r#""default";q=100;w=60, "quota-daily";q=1000;w=86400, "quota-monthly";q=20000;w=2678400"#
    );
    assert_eq!(other.as_str(), r#""default";q=7;w=1"#);
    assert_eq!(again.bytes().as_ptr(), one.bytes().as_ptr(), "rendered once, for every request of the policy");

    s.acme.update_policy(first.id, spec(500)).await.unwrap();
    let changed = policy_value(&written(a.clone()).await);
    assert!(changed.as_str().contains(r#""quota-daily";q=500;"#), "a changed quota is rendered again: {changed:?}");
    assert_eq!(policy_value(&written(a).await).bytes().as_ptr(), changed.bytes().as_ptr());
}

#[tokio::test]
async fn on_a_tie_the_one_that_takes_longest_to_reset_is_reported() {
    let s = setup();
    let policy = s.acme.create_policy(PolicySpec::new("p").with_rate_limit(10, Duration::from_secs(60))).await.unwrap();
    let raw = key(&s, NewKey::new("k").with_policy(policy.id).with_credits(crate::Credits::new(10))).await;
    let gate = Gate::new(s.engine.clone());
    let pass = admitted(outcome(&gate, "GET", None, &bearer(&raw)).await);
    // 9 requests and 9 credits left: the limit is full again in 6 s, the
    // prepaid credits never refill.
    assert_eq!(pass.response_headers()[1], ("ratelimit", r#""credits";r=9"#.to_owned()));
}

/// A key with a daily quota of 5 and a rate limit of 100 a minute is told
/// what is left of its quota, which refuses first; with a monthly quota as
/// tight, the month's, which takes longer to reset; on every path (the
/// gate's cached rendering, a fresh one, the legacy trio).
#[tokio::test]
async fn ratelimit_names_the_quota_when_it_has_the_fewest_requests_left() {
    let s = setup();
    let limited = |quota: PolicySpec| quota.with_rate_limit(100, Duration::from_secs(60));
    let daily = s.acme.create_policy(limited(PolicySpec::new("daily").with_quota(Some(5), None))).await.unwrap();
    let both = s.acme.create_policy(limited(PolicySpec::new("both").with_quota(Some(5), Some(5)))).await.unwrap();
    let gate = Gate::new(s.engine.clone());
    let legacy = gate.clone().with_rate_limit_headers(RateLimitHeaders::Legacy);
    let written = |gate: &Gate, raw: &str| {
        let (gate, raw) = (gate.clone(), raw.to_owned());
        async move {
            let pass = admitted(outcome(&gate, "GET", None, &bearer(&raw)).await);
            let mut fresh = Vec::new();
            gate.rate_limit_headers().write_for_validation(pass.key().validation(), &mut fresh);
            let cached = pass.response_headers();
            assert_eq!(cached, fresh, "the gate's rendering equals a fresh one");
            (pass.key().validation().quota, cached)
        }
    };

    let raw = key(&s, NewKey::new("daily").with_policy(daily.id)).await;
    // 12:00 UTC: 12 h to midnight.
    let (left, headers) = written(&gate, &raw).await;
    assert_eq!((left.daily(), left.monthly()), (Some(4), None));
    assert_eq!(
        headers,
        [
            ("ratelimit-policy", r#""default";q=100;w=60, "quota-daily";q=5;w=86400"#.to_owned()),
            ("ratelimit", r#""quota-daily";r=4;t=43200"#.to_owned()),
        ]
    );
    assert_eq!(written(&gate, &raw).await.1[1].1, r#""quota-daily";r=3;t=43200"#);
    assert_eq!(
        written(&legacy, &raw).await.1,
        [
            ("ratelimit-limit", "5".to_owned()),
            ("ratelimit-remaining", "2".to_owned()),
            ("ratelimit-reset", "43200".to_owned())
        ]
    );

    let raw = key(&s, NewKey::new("both").with_policy(both.id)).await;
    let (left, headers) = written(&gate, &raw).await;
    assert_eq!((left.daily(), left.monthly()), (Some(4), Some(4)));
    // 2026-03-10T12:00: 21 days and a half to April.
    assert_eq!(headers[1], ("ratelimit", r#""quota-monthly";r=4;t=1857600"#.to_owned()));
}

/// A validation without a quota carries none, and its headers name the
/// rate limit as before.
#[tokio::test]
async fn a_policy_without_a_quota_leaves_the_validation_without_one() {
    let s = setup();
    let policy = s.acme.create_policy(PolicySpec::new("p").with_rate_limit(10, Duration::from_secs(60))).await.unwrap();
    let raw = key(&s, NewKey::new("k").with_policy(policy.id)).await;
    let pass = admitted(outcome(&Gate::new(s.engine.clone()), "GET", None, &bearer(&raw)).await);
    assert!(pass.key().validation().quota.is_none());
    assert_eq!(pass.response_headers()[1], ("ratelimit", r#""default";r=9;t=6"#.to_owned()));
}

/// The cached rendering lists every limit of the policy: a validation
/// without a state for each (one put together by hand) is written fresh.
#[tokio::test]
async fn a_validation_without_every_limits_state_is_not_written_from_the_cache() {
    let s = setup();
    let spec = PolicySpec::new("p").with_limit(RateLimit::new("burst", 10, Duration::from_secs(1)));
    let policy = s.acme.create_policy(spec).await.unwrap();
    let raw = key(&s, NewKey::new("k").with_policy(policy.id)).await;
    let pass = admitted(outcome(&Gate::new(s.engine.clone()), "GET", None, &bearer(&raw)).await);
    let mut partial = pass.key().validation().clone();
    partial.rate_limits = crate::RateLimitStates::default();
    let cache = super::headers::PolicyHeaders::default();
    let mut cached = Vec::new();
    RateLimitHeaders::Draft.write_for_validation_with(&partial, Some(&cache), &mut cached);
    let mut fresh = Vec::new();
    RateLimitHeaders::Draft.write_for_validation(&partial, &mut fresh);
    assert_eq!((cached, fresh), (Vec::new(), Vec::new()));
}

#[test]
fn a_known_outcome_keeps_the_request_future_as_small_as_a_pass() {
    // `Authorize` is moved with the framework's request future; the rare
    // refusal it may hold is boxed, so it costs the common pass nothing.
    let (authorize, admitted) = (size_of::<Authorize>(), size_of::<Admitted>());
    assert!(authorize <= admitted + 16, "Authorize {authorize} bytes, Admitted {admitted}");
    println!("Authorize {authorize} B, Admitted {admitted} B, Outcome {} B", size_of::<Outcome>());
}
