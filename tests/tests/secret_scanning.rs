//! GitHub secret scanning through the admin router: signed alerts against a
//! key endpoint on 127.0.0.1 (`keysmith_tests::github`), on every store and
//! through the change feed to a second engine; every way a request can be
//! forged or broken, answered without a change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{TimeZone, Utc};
use keysmith_admin::{AdminConfig, GithubSecretScanning};
use keysmith_core::feed::LocalChangeFeed;
use keysmith_core::store::CacheConfig;
use keysmith_core::{
    Engine, KeyState, ManualClock, MemoryStore, NewKey, Refusal, RequestContext, Store, ValidationError,
};
use keysmith_tests::github::{FakeGithub, alert_body, sign_with, signing_key};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const ROUTE: &str = "/keysmith/v1/secret-scanning/github";
/// The change feed's bound the tests allow (its target is one second).
const FEED_BOUND: Duration = Duration::from_secs(5);

fn clock() -> ManualClock {
    ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 14, 12, 0, 0).unwrap())
}

fn app(engine: &Engine, scanning: GithubSecretScanning) -> Router {
    Router::new().nest("/keysmith/v1", AdminConfig::new(engine.clone()).with_secret_scanning(scanning).into_router())
}

fn scanning(engine: &Engine, github: &FakeGithub, clock: &ManualClock) -> GithubSecretScanning {
    GithubSecretScanning::new(engine.clone()).with_keys_url(github.keys_url()).with_clock(clock.clone())
}

/// Posts `body` with the given identifier and signature headers.
async fn post(app: &Router, body: &[u8], identifier: Option<&str>, signature: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::post(ROUTE).header("content-type", "application/json");
    if let Some(identifier) = identifier {
        request = request.header("Github-Public-Key-Identifier", identifier);
    }
    if let Some(signature) = signature {
        request = request.header("Github-Public-Key-Signature", signature);
    }
    let response = app.clone().oneshot(request.body(Body::from(body.to_vec())).unwrap()).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Posts `body` signed by `github`.
async fn signed(app: &Router, github: &FakeGithub, body: &str) -> (StatusCode, String) {
    post(app, body.as_bytes(), Some(github.identifier()), Some(&github.sign(body.as_bytes()))).await
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

async fn refusal(engine: &Engine, raw: &str) -> Option<Refusal> {
    match engine.validate(raw, &RequestContext::new()).await {
        Ok(_) => None,
        Err(ValidationError::Refused(refusal)) => Some(refusal),
        Err(other) => panic!("{other:?}"),
    }
}

/// Two engines on `store`, each with its own cache, on one change feed.
fn two_engines(store: &Arc<dyn Store>) -> (Engine, Engine) {
    let feed = Arc::new(LocalChangeFeed::new());
    // A positive TTL long enough that only the feed explains an eviction.
    let cache = CacheConfig::default().with_positive_ttl(Duration::from_secs(3600));
    let build = || {
        Engine::builder(Arc::clone(store))
            .with_cache(cache.clone())
            .with_change_feed(Arc::clone(&feed))
            .build()
            .unwrap()
    };
    (build(), build())
}

/// The case every store runs: a signed alert revokes the key, the answer is
/// the feedback array, a second engine stops accepting the key within the
/// feed's bound, and a replay changes nothing.
async fn signed_alert_revokes_the_key_everywhere_and_a_replay_changes_nothing(store: Arc<dyn Store>) {
    store.migrate().await.unwrap();
    let (reporter, other) = two_engines(&store);
    let github = FakeGithub::start().await;
    let clock = clock();
    let app = app(&reporter, scanning(&reporter, &github, &clock));
    let created = reporter.tenant("billing", "acme").create_key(NewKey::new("ci")).await.unwrap();
    let raw = created.raw.expose();
    for engine in [&reporter, &other] {
        let deadline = Instant::now() + FEED_BOUND;
        while !engine.feed_status().unwrap().subscribed {
            assert!(Instant::now() < deadline, "the feed never subscribed");
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(refusal(&other, raw).await, None, "the second engine caches the key as active");
    let body = alert_body(&[raw, "ghp_notoursatall"]);

    let (status, answer) = signed(&app, &github, &body).await;

    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(!answer.contains(raw), "the raw token was echoed");
    let feedback: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        feedback,
        serde_json::json!([
            {"token_hash": sha256_hex(raw), "token_type": "keysmith_api_key", "label": "true_positive"},
            {"token_hash": sha256_hex("ghp_notoursatall"), "token_type": "keysmith_api_key", "label": "false_positive"},
        ])
    );
    let key = reporter.tenant("billing", "acme").get_key(created.key.id).await.unwrap();
    assert_eq!(key.state, KeyState::Revoked);
    assert_eq!(key.revoked_reason.as_deref(), Some("leaked: https://github.com/octo/leaky/blob/main/config-0.env"));
    assert_eq!(refusal(&reporter, raw).await, Some(Refusal::Revoked));
    let deadline = Instant::now() + FEED_BOUND;
    while refusal(&other, raw).await.is_none() {
        assert!(Instant::now() < deadline, "the second engine still accepts the leaked key after {FEED_BOUND:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let (status, replayed) = signed(&app, &github, &body).await;

    assert_eq!((status, replayed), (StatusCode::OK, answer), "a replay is answered alike");
    assert_eq!(reporter.tenant("billing", "acme").get_key(created.key.id).await.unwrap(), key, "and changes nothing");
}

mod memory {
    use super::{Arc, MemoryStore};

    #[tokio::test]
    async fn signed_alert_revokes_the_key_everywhere_and_a_replay_changes_nothing() {
        super::signed_alert_revokes_the_key_everywhere_and_a_replay_changes_nothing(Arc::new(MemoryStore::new())).await;
    }
}

mod sqlite {

    #[tokio::test]
    async fn signed_alert_revokes_the_key_everywhere_and_a_replay_changes_nothing() {
        let dir = keysmith_tests::services::TempDir::new("leaks");
        let url = format!("sqlite://{}", dir.path().join("keys.db").display());
        let store = keysmith_sqlx::connect(&url).await.unwrap();
        super::signed_alert_revokes_the_key_everywhere_and_a_replay_changes_nothing(store).await;
    }
}

mod postgres {
    use keysmith_tests::services::PgTestDb;

    #[tokio::test]
    async fn signed_alert_revokes_the_key_everywhere_and_a_replay_changes_nothing() {
        let Some(db) = PgTestDb::create().await else { return };
        let store = keysmith_sqlx::connect(db.url()).await.unwrap();
        super::signed_alert_revokes_the_key_everywhere_and_a_replay_changes_nothing(store).await;
    }
}

mod mysql {
    use keysmith_tests::services::MySqlTestDb;

    #[tokio::test]
    async fn signed_alert_revokes_the_key_everywhere_and_a_replay_changes_nothing() {
        let Some(db) = MySqlTestDb::create().await else { return };
        let store = keysmith_sqlx::connect(db.url()).await.unwrap();
        super::signed_alert_revokes_the_key_everywhere_and_a_replay_changes_nothing(store).await;
    }
}

/// A memory engine with one key, the fake GitHub and the app.
async fn setup() -> (Engine, FakeGithub, ManualClock, Router, String) {
    let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
    let github = FakeGithub::start().await;
    let clock = clock();
    let app = app(&engine, scanning(&engine, &github, &clock));
    let created = engine.tenant("billing", "acme").create_key(NewKey::new("ci")).await.unwrap();
    (engine, github, clock, app, created.raw.expose().to_owned())
}

/// A name, a body, and the identifier and signature headers sent with it.
type ForgeryCase<'a> = (&'a str, &'a [u8], Option<&'a str>, Option<&'a str>);

#[tokio::test]
async fn forged_or_unsigned_alerts_are_401_and_change_nothing() {
    let (engine, github, clock, app, raw) = setup().await;
    let body = alert_body(&[&raw]);
    let good = github.sign(body.as_bytes());
    let tampered = alert_body(&[&raw]).replace("config-0", "config-9");
    let longer = format!("{body} ");
    let other_key = sign_with(&signing_key(), body.as_bytes());
    // Fetch the keys once, so that an unknown identifier below is judged
    // against them (a refetch is due again after the interval).
    assert_eq!(signed(&app, &github, "[]").await.0, StatusCode::OK);
    let cases: [ForgeryCase<'_>; 8] = [
        ("no headers", body.as_bytes(), None, None),
        ("no signature", body.as_bytes(), Some(github.identifier()), None),
        ("no identifier", body.as_bytes(), None, Some(&good)),
        ("signature not base64", body.as_bytes(), Some(github.identifier()), Some("%%%")),
        ("signature not DER", body.as_bytes(), Some(github.identifier()), Some("AAAA")),
        ("tampered body", tampered.as_bytes(), Some(github.identifier()), Some(&good)),
        ("another key's signature", body.as_bytes(), Some(github.identifier()), Some(&other_key)),
        ("signature of the body with a byte added", longer.as_bytes(), Some(github.identifier()), Some(&good)),
    ];
    for (case, body, identifier, signature) in cases {
        let (status, answer) = post(&app, body, identifier, signature).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {answer}");
        assert!(answer.contains("invalid_signature"), "{case}: {answer}");
        assert!(!answer.contains(&raw), "{case}: the token was echoed");
    }
    clock.advance(Duration::from_secs(61));
    let (status, answer) = post(&app, body.as_bytes(), Some("not-a-github-key"), Some(&good)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "unknown identifier: {answer}");
    assert_eq!(refusal(&engine, &raw).await, None, "the key still validates");
}

#[tokio::test]
async fn an_unknown_identifier_fetches_the_keys_again_at_most_once_per_interval() {
    let (_engine, github, clock, app, _raw) = setup().await;
    let body = alert_body(&[]);
    let signature = github.sign(body.as_bytes());
    for _ in 0..3 {
        assert_eq!(signed(&app, &github, &body).await.0, StatusCode::OK);
    }
    assert_eq!(github.fetches(), 1, "known keys are cached");

    // Within the interval an unknown identifier fetches nothing and is told
    // to retry (it may be a key GitHub published since).
    for _ in 0..3 {
        let (status, _) = post(&app, body.as_bytes(), Some("rotated-in"), Some(&signature)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(github.fetches(), 1);
    clock.advance(Duration::from_secs(61));
    let (status, _) = post(&app, body.as_bytes(), Some("rotated-in"), Some(&signature)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "fetched again, still unknown");
    assert_eq!(github.fetches(), 2);
}

#[tokio::test]
async fn known_keys_are_fetched_again_after_an_hour_and_a_withdrawn_key_is_refused() {
    let (engine, github, clock, app, raw) = setup().await;
    let empty = alert_body(&[]);
    assert_eq!(signed(&app, &github, &empty).await.0, StatusCode::OK);
    clock.advance(Duration::from_secs(59 * 60));
    assert_eq!(signed(&app, &github, &empty).await.0, StatusCode::OK);
    assert_eq!(github.fetches(), 1, "younger than an hour: cached");
    clock.advance(Duration::from_secs(2 * 60));
    assert_eq!(signed(&app, &github, &empty).await.0, StatusCode::OK);
    assert_eq!(github.fetches(), 2, "an hour old: fetched again though the identifier is known");

    // GitHub withdraws the key: once the list is an hour old, the next
    // fetch drops it, and what it signs is refused as forged.
    github.withdraw_key();
    assert_eq!(signed(&app, &github, &empty).await.0, StatusCode::OK, "still within the hour");
    clock.advance(Duration::from_secs(61 * 60));
    let body = alert_body(&[&raw]);
    let (status, answer) = signed(&app, &github, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert_eq!(github.fetches(), 3);
    assert_eq!(refusal(&engine, &raw).await, None, "the key still validates");
}

#[tokio::test]
async fn cached_keys_serve_while_the_endpoint_fails_until_a_day_old() {
    let (_engine, github, clock, app, _raw) = setup().await;
    let empty = alert_body(&[]);
    assert_eq!(signed(&app, &github, &empty).await.0, StatusCode::OK);
    github.set_failing(true);
    clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(signed(&app, &github, &empty).await.0, StatusCode::OK, "a failed refresh keeps the cached keys");
    assert_eq!(github.fetches(), 2);
    assert_eq!(signed(&app, &github, &empty).await.0, StatusCode::OK);
    assert_eq!(github.fetches(), 2, "tried again only after the refetch interval");
    clock.advance(Duration::from_secs(22 * 3600));
    let (status, answer) = signed(&app, &github, &empty).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a day old: no longer trusted; {answer}");
    // Once the endpoint answers, the keys are fresh again.
    github.set_failing(false);
    clock.advance(Duration::from_secs(61));
    assert_eq!(signed(&app, &github, &empty).await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_unreachable_key_endpoint_is_503_and_changes_nothing() {
    let (engine, github, clock, app, raw) = setup().await;
    github.set_failing(true);
    let body = alert_body(&[&raw]);

    let (status, answer) = signed(&app, &github, &body).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(answer.contains("unavailable"));
    assert_eq!(refusal(&engine, &raw).await, None);
    // GitHub retries; once the keys can be had the alert goes through.
    github.set_failing(false);
    clock.advance(Duration::from_secs(61));
    assert_eq!(signed(&app, &github, &body).await.0, StatusCode::OK);
    assert_eq!(refusal(&engine, &raw).await, Some(Refusal::Revoked));

    // Nothing listening at all.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/keys", closed.local_addr().unwrap());
    drop(closed);
    let down = app_with(&engine, GithubSecretScanning::new(engine.clone()).with_keys_url(url));
    let fresh = engine.tenant("billing", "acme").create_key(NewKey::new("ci")).await.unwrap();
    let body = alert_body(&[fresh.raw.expose()]);
    assert_eq!(signed(&down, &github, &body).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refusal(&engine, fresh.raw.expose()).await, None);
}

fn app_with(engine: &Engine, scanning: GithubSecretScanning) -> Router {
    app(engine, scanning)
}

#[tokio::test(start_paused = true)]
async fn a_key_endpoint_that_never_answers_is_503_after_the_timeout() {
    let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
    let github = FakeGithub::start().await;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/keys", silent.local_addr().unwrap());
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let scanning =
        GithubSecretScanning::new(engine.clone()).with_keys_url(url).with_fetch_timeout(Duration::from_secs(2));
    let app = app(&engine, scanning);
    let started = tokio::time::Instant::now();

    let (status, _) = signed(&app, &github, "[]").await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= Duration::from_secs(2), "answered before the timeout");
}

#[tokio::test]
async fn a_body_over_the_cap_is_413_and_changes_nothing() {
    let (engine, github, clock, _, raw) = setup().await;
    let app = app(&engine, scanning(&engine, &github, &clock).with_max_body(4096));
    let mut tokens = vec![raw.as_str()];
    tokens.extend(std::iter::repeat_n("ghp_padding_padding_padding", 200));
    let body = alert_body(&tokens);
    assert!(body.len() > 4096);

    let (status, answer) = signed(&app, &github, &body).await;

    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(github.fetches(), 0, "nothing was looked at");
    assert_eq!(refusal(&engine, &raw).await, None);
}

#[tokio::test]
async fn hostile_signed_bodies_are_answered_without_a_500() {
    let (engine, github, _, app, raw) = setup().await;
    let nested = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let cases: Vec<(&str, String, StatusCode)> = vec![
        ("not JSON", "token=abc".to_owned(), StatusCode::BAD_REQUEST),
        ("an object", r#"{"token": "x"}"#.to_owned(), StatusCode::BAD_REQUEST),
        ("deeply nested", nested, StatusCode::BAD_REQUEST),
        ("NUL bytes", "\0\0\0".to_owned(), StatusCode::BAD_REQUEST),
        ("a number for the token", r#"[{"token": 1, "type": "t"}]"#.to_owned(), StatusCode::BAD_REQUEST),
        ("a NUL inside the token", r#"[{"token": "sk_live_\u0000", "type": "t"}]"#.to_owned(), StatusCode::OK),
        ("an empty array", "[]".to_owned(), StatusCode::OK),
        ("invalid UTF-8", String::from_utf8_lossy(b"[\xff\xfe]").into_owned(), StatusCode::BAD_REQUEST),
    ];
    for (case, body, expected) in cases {
        let (status, answer) = signed(&app, &github, &body).await;
        assert_eq!(status, expected, "{case}: {answer}");
    }
    assert_eq!(refusal(&engine, &raw).await, None);
}

#[tokio::test]
async fn the_route_needs_no_api_key_while_the_management_routes_still_do() {
    let (_engine, github, _, app, _) = setup().await;
    assert_eq!(signed(&app, &github, "[]").await.0, StatusCode::OK);
    let response = app.clone().oneshot(Request::get("/keysmith/v1/keys").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = app.clone().oneshot(Request::get(ROUTE).body(Body::empty()).unwrap()).await.unwrap();
    assert_ne!(response.status(), StatusCode::OK, "only POST is served");
}
