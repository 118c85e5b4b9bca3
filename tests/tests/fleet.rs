//! Many engines, one truth: engines in one process, each with its own cache,
//! on one PostgreSQL database, hearing each other's changes through a change
//! feed (PostgreSQL LISTEN/NOTIFY, or Redis pub/sub).

use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use keysmith_core::feed::{ChangeFeed, FeedHeartbeat};
use keysmith_core::store::CacheConfig;
use keysmith_core::{
    Credits, Engine, LimitBy, NewKey, PolicySpec, Quota, Refusal, RequestContext, RotationReason, ValidationError,
};
use keysmith_redis::{OutagePolicy, RedisChangeFeed, RedisConfig, RedisQuotas, RedisRateLimiter};
use keysmith_sqlx::{PgChangeFeed, PgStore, Store};
use keysmith_tests::feed_cases::{self, ProxiedPair};
use keysmith_tests::proxy::SilentProxy;
use keysmith_tests::services::{PgTestDb, service_url};
use keysmith_tests::wait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Long enough that only the feed can explain an eviction within the test.
const POSITIVE_TTL: Duration = Duration::from_secs(300);
const OUTAGE_TTL: Duration = Duration::from_secs(1);
/// The generous bound the tests assert; the target is 1 s (measured below).
const BOUND: Duration = Duration::from_secs(5);
/// The feed's connections carry this name, so a test can kill them alone.
const FEED_APP: &str = "keysmith-fleet-feed";

fn cache() -> CacheConfig {
    CacheConfig::default().with_positive_ttl(POSITIVE_TTL).with_outage_ttl(OUTAGE_TTL)
}

async fn pg_feed(db: &PgTestDb) -> PgChangeFeed {
    pg_feed_with(PgConnectOptions::from_str(db.url()).unwrap()).await
}

/// A feed on its own small pool connecting with `options`.
async fn pg_feed_with(options: PgConnectOptions) -> PgChangeFeed {
    let options = options.application_name(FEED_APP);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options)
        .await
        .unwrap();
    PgChangeFeed::new(pool)
}

/// `count` engines on `db`, each with its own pool and cache, and a feed
/// made by `feed`; returned once every engine is subscribed.
async fn fleet<F: ChangeFeed>(db: &PgTestDb, count: usize, feed: impl AsyncFn() -> F) -> Vec<Engine> {
    let mut engines = Vec::new();
    for _ in 0..count {
        let store = PgStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        engines.push(Engine::builder(store).with_cache(cache()).with_change_feed(feed().await).build().unwrap());
    }
    for engine in &engines {
        until("subscribed", async || engine.feed_status().unwrap().subscribed).await;
    }
    engines
}

/// [`wait::until`] within [`BOUND`].
async fn until(what: &str, done: impl AsyncFnMut() -> bool) {
    wait::until(what, BOUND, done).await;
}

/// Validates on `engine` until it refuses, failing after [`BOUND`]; the
/// refusal and how long it took.
async fn refused_within_bound(engine: &Engine, raw: &str, ctx: &RequestContext<'_>) -> (Refusal, Duration) {
    let start = Instant::now();
    loop {
        match engine.validate(raw, ctx).await {
            Err(ValidationError::Refused(refusal)) => return (refusal, start.elapsed()),
            Err(ValidationError::Failed(error)) => panic!("validation failed: {error}"),
            Ok(_) => assert!(start.elapsed() < BOUND, "still accepted after {BOUND:?}"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn accepted(engine: &Engine, raw: &str) -> bool {
    engine.validate(raw, &RequestContext::new()).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_suspension_and_policy_tightening_on_one_engine_are_refused_by_the_others() {
    let Some(db) = PgTestDb::create().await else { return };
    let engines = fleet(&db, 3, async || pg_feed(&db).await).await;
    let acme = engines[0].tenant("app", "acme");
    let revoked = acme.create_key(NewKey::new("revoked")).await.unwrap();
    let suspended = acme.create_key(NewKey::new("suspended")).await.unwrap();
    let policy = acme.create_policy(PolicySpec::new("office")).await.unwrap();
    let limited = acme.create_key(NewKey::new("limited").with_policy(policy.id)).await.unwrap();
    let outside = RequestContext::new().with_ip("198.51.100.7".parse().unwrap());
    for engine in &engines[1..] {
        assert!(accepted(engine, revoked.raw.expose()).await);
        assert!(accepted(engine, suspended.raw.expose()).await);
        assert!(engine.validate(limited.raw.expose(), &outside).await.is_ok(), "policy cached");
    }

    acme.revoke_key(revoked.key.id, "leaked").await.unwrap();
    acme.suspend_key(suspended.key.id).await.unwrap();
    acme.update_policy(policy.id, PolicySpec::new("office").with_allowed_ips(["10.0.0.0/8"])).await.unwrap();
    let none = RequestContext::new();
    for engine in &engines[1..] {
        assert_eq!(refused_within_bound(engine, revoked.raw.expose(), &none).await.0, Refusal::Revoked);
        assert_eq!(refused_within_bound(engine, suspended.raw.expose(), &none).await.0, Refusal::Suspended);
        assert_eq!(refused_within_bound(engine, limited.raw.expose(), &outside).await.0, Refusal::IpNotAllowed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_credits_given_on_one_engine_are_spent_by_the_others_over_postgres() {
    let Some(db) = PgTestDb::create().await else { return };
    let engines = fleet(&db, 2, async || pg_feed(&db).await).await;
    let acme = engines[0].tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("per-owner").with_limit_by(LimitBy::Owner)).await.unwrap();
    let created = acme.create_key(NewKey::new("ci").with_owner("cust_1").with_policy(policy.id)).await.unwrap();
    let other = &engines[1];
    let credits = async || other.validate(created.raw.expose(), &RequestContext::new()).await.unwrap().credits;
    assert_eq!(credits().await, None, "the other engine remembers the owner has no credits");

    acme.set_owner_credits("cust_1", Some(Credits::new(100))).await.unwrap();
    let start = Instant::now();
    let spent = loop {
        if let Some(spent) = credits().await {
            break spent;
        }
        assert!(start.elapsed() < BOUND, "still spends nothing after {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert_eq!(spent.remaining, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_given_through_the_new_key_of_a_rotation_bind_the_old_key_on_the_others_over_postgres() {
    let Some(db) = PgTestDb::create().await else { return };
    let engines = fleet(&db, 2, async || pg_feed(&db).await).await;
    let (a, b) = (&engines[0], &engines[1]);
    let acme = a.tenant("app", "acme");
    let old = acme.create_key(NewKey::new("ci")).await.unwrap();
    let new = acme.rotate_key(old.key.id, RotationReason::Scheduled, Some(Duration::from_secs(3600))).await.unwrap();
    // b caches the old key, in its grace, as having no credits (once the
    // rotation's change has evicted what it cached before).
    let old_credits = async || b.validate(old.raw.expose(), &RequestContext::new()).await.map(|v| v.credits);
    until("the rotation seen", async || b.feed_status().unwrap().received >= 1).await;
    assert_eq!(old_credits().await.unwrap(), None);

    acme.set_credits(new.key.id, Some(Credits::new(3))).await.unwrap();
    for _ in 0..3 {
        assert!(accepted(a, new.raw.expose()).await);
    }
    let (refusal, took) = refused_within_bound(b, old.raw.expose(), &RequestContext::new()).await;
    assert!(matches!(refusal, Refusal::CreditsExhausted { .. }), "{refusal:?} after {took:?}");
    for _ in 0..5 {
        assert!(
            matches!(old_credits().await, Err(ValidationError::Refused(Refusal::CreditsExhausted { .. }))),
            "the old key passes free on b after the balance was spent on a"
        );
    }
}

/// Time from a revocation returning on one engine until both others refuse
/// the key, over 50 revocations: printed (run with `--nocapture`), not
/// asserted beyond the generous bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_propagation_over_postgres_is_measured() {
    let Some(db) = PgTestDb::create().await else { return };
    let engines = fleet(&db, 3, async || pg_feed(&db).await).await;
    report("PgChangeFeed", measure_propagation(&engines).await);
}

async fn measure_propagation(engines: &[Engine]) -> Vec<Duration> {
    let acme = engines[0].tenant("app", "acme");
    let mut times = Vec::new();
    for i in 0..50 {
        let created = acme.create_key(NewKey::new(format!("key {i}"))).await.unwrap();
        for engine in &engines[1..] {
            assert!(accepted(engine, created.raw.expose()).await);
        }
        acme.revoke_key(created.key.id, "measured").await.unwrap();
        let start = Instant::now();
        for engine in &engines[1..] {
            refused_within_bound(engine, created.raw.expose(), &RequestContext::new()).await;
        }
        times.push(start.elapsed());
    }
    times
}

fn report(feed: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{feed}: revocation refused on every other engine after p50 {:?}, p99 {:?}, max {:?} ({} revocations)",
        at(0.5),
        at(0.99),
        times[times.len() - 1],
        times.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_drops_the_cache_runs_on_the_outage_ttl_then_resubscribes() {
    let Some(db) = PgTestDb::create().await else { return };
    let engines = fleet(&db, 2, async || pg_feed(&db).await).await;
    let (a, b) = (&engines[0], &engines[1]);
    let acme = a.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    assert!(accepted(b, created.raw.expose()).await);
    assert_eq!(b.cache_stats().unwrap().keys, 1);

    // No new connection to the database, then the feeds' connections killed:
    // the engines cannot resubscribe until connections are allowed again.
    let mut admin = db.admin().await;
    sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", db.name())).execute(&mut admin).await.unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
    )
    .bind(db.name())
    .bind(FEED_APP)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(killed.len() >= 2, "one listener per engine");
    until("lost", async || b.feed_status().unwrap().losses == 1).await;
    let stats = b.cache_stats().unwrap();
    assert_eq!((stats.keys, stats.positive_ttl), (0, OUTAGE_TTL), "cache dropped, outage TTL");
    assert!(!b.feed_status().unwrap().subscribed);

    sqlx::query(&format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", db.name())).execute(&mut admin).await.unwrap();
    until("resubscribed", async || b.feed_status().unwrap().subscriptions == 2 && b.feed_status().unwrap().subscribed)
        .await;
    assert_eq!(b.cache_stats().unwrap().positive_ttl, POSITIVE_TTL);
    // And the feed works again.
    assert!(accepted(b, created.raw.expose()).await);
    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    assert_eq!(refused_within_bound(b, created.raw.expose(), &RequestContext::new()).await.0, Refusal::Revoked);
}

/// A private Redis, so that killing its clients (or stopping it) disturbs
/// no other test; without persistence, so a restart starts it empty.
struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    url: String,
}

impl PrivateRedis {
    async fn start() -> Option<Self> {
        service_url("KEYSMITH_TEST_REDIS_URL")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { child: None, port, url: format!("redis://127.0.0.1:{port}") };
        server.restart().await;
        Some(server)
    }

    /// Kills the server (by its pid) and waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server on its port and waits until it answers.
    async fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server could not start");
        self.child = Some(child);
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let deadline = Instant::now() + BOUND;
        while client.get_multiplexed_async_connection().await.is_err() {
            assert!(Instant::now() < deadline, "private redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_redis_a_revocation_is_refused_everywhere_and_a_killed_subscriber_resubscribes() {
    let Some(redis) = PrivateRedis::start().await else { return };
    let Some(db) = PgTestDb::create().await else { return };
    let engines = fleet(&db, 3, async || RedisChangeFeed::connect(&redis.url).await.unwrap()).await;
    let acme = engines[0].tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    for engine in &engines[1..] {
        assert!(accepted(engine, created.raw.expose()).await);
    }
    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    for engine in &engines[1..] {
        assert_eq!(
            refused_within_bound(engine, created.raw.expose(), &RequestContext::new()).await.0,
            Refusal::Revoked
        );
    }
    report("RedisChangeFeed", measure_propagation(&engines).await);

    let b = &engines[1];
    let other = acme.create_key(NewKey::new("other")).await.unwrap();
    assert!(accepted(b, other.raw.expose()).await);
    let mut conn = redis::Client::open(redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
    assert_eq!(killed, 3, "one subscriber per engine");
    until("lost and resubscribed", async || {
        let status = b.feed_status().unwrap();
        status.losses == 1 && status.subscriptions == 2 && status.subscribed
    })
    .await;
    assert_eq!(b.cache_stats().unwrap().keys, 0, "what was cached before the loss is dropped");
    assert_eq!(b.cache_stats().unwrap().positive_ttl, POSITIVE_TTL);
    assert!(accepted(b, other.raw.expose()).await);
    acme.revoke_key(other.key.id, "leaked").await.unwrap();
    assert_eq!(refused_within_bound(b, other.raw.expose(), &RequestContext::new()).await.0, Refusal::Revoked);
}

/// Two engines on one PostgreSQL database sharing one Redis for rate
/// limits, quotas and their change feed: `a` fails open, `b` fails closed.
async fn redis_fleet(db: &PgTestDb, redis: &PrivateRedis) -> (Engine, Engine) {
    let mut engines = Vec::new();
    for outage in [OutagePolicy::FailOpen, OutagePolicy::FailClosed] {
        let store = PgStore::connect(db.url()).await.unwrap();
        store.migrate().await.unwrap();
        let config = RedisConfig::connect(&redis.url).await.unwrap().with_outage_policy(outage);
        let engine = Engine::builder(store)
            .with_cache(cache())
            .with_change_feed(RedisChangeFeed::connect(&redis.url).await.unwrap())
            .with_rate_limiter(RedisRateLimiter::new(config.clone()))
            .with_quotas(RedisQuotas::new(config))
            .build()
            .unwrap();
        until("subscribed", async || engine.feed_status().unwrap().subscribed).await;
        engines.push(engine);
    }
    let b = engines.pop().unwrap();
    (engines.pop().unwrap(), b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_test_each_engine_keeps_its_outage_policy_and_the_fleet_recovers_without_restart() {
    let Some(mut redis) = PrivateRedis::start().await else { return };
    let Some(db) = PgTestDb::create().await else { return };
    let (a, b) = redis_fleet(&db, &redis).await;
    let acme = a.tenant("app", "acme");
    let spec = PolicySpec {
        quota: Some(Quota { daily: Some(1000), monthly: None }),
        ..PolicySpec::new("limited").with_rate_limit(1000, Duration::from_secs(3600))
    };
    let policy = acme.create_policy(spec).await.unwrap();
    let created = acme.create_key(NewKey::new("ci").with_policy(policy.id)).await.unwrap();
    let raw = created.raw.expose();
    assert!(accepted(&a, raw).await && accepted(&b, raw).await);

    redis.stop();
    // The feed is lost: caches dropped, short TTL.
    for engine in [&a, &b] {
        until("lost", async || engine.feed_status().unwrap().losses == 1).await;
        let stats = engine.cache_stats().unwrap();
        assert_eq!((stats.keys, stats.positive_ttl), (0, OUTAGE_TTL), "cache dropped, outage TTL");
    }
    // Fail open decides in process; fail closed answers an error (503).
    assert!(accepted(&a, raw).await, "fail open: the request is decided in process");
    let failed = b.validate(raw, &RequestContext::new()).await.unwrap_err();
    assert!(matches!(failed, ValidationError::Failed(keysmith_core::Error::Store { .. })), "{failed:?}");

    redis.restart().await;
    // Both resubscribe and decide in Redis again, without a restart.
    for engine in [&a, &b] {
        until("resubscribed", async || engine.feed_status().unwrap().subscriptions == 2).await;
        until("subscribed", async || engine.feed_status().unwrap().subscribed).await;
        assert_eq!(engine.cache_stats().unwrap().positive_ttl, POSITIVE_TTL);
    }
    let deadline = Instant::now() + BOUND;
    while !accepted(&b, raw).await {
        assert!(Instant::now() < deadline, "fail closed never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    assert_eq!(refused_within_bound(&b, raw, &RequestContext::new()).await.0, Refusal::Revoked);
}

/// Runs `case` on two engines of a fresh database: `a` with its feed
/// straight to the server, `b` with its feed (listening and publishing)
/// through a proxy; both stores go straight.
async fn on_a_proxied_pair(case: impl for<'a> AsyncFn(ProxiedPair<'a>)) {
    let Some(db) = PgTestDb::create().await else { return };
    let direct = PgConnectOptions::from_str(db.url()).unwrap();
    let upstream = tokio::net::lookup_host((direct.get_host(), direct.get_port())).await.unwrap().next().unwrap();
    let proxy = SilentProxy::start(upstream).await;
    let proxied = direct.clone().host("127.0.0.1").port(proxy.addr().port());
    let mut engines = fleet(&db, 1, async || pg_feed(&db).await).await;
    engines.extend(fleet(&db, 1, async || pg_feed_with(proxied.clone()).await).await);
    let pair = ProxiedPair {
        a: &engines[0],
        b: &engines[1],
        proxy: &proxy,
        cache: &cache(),
        heartbeat: FeedHeartbeat::default(),
        feed: "PgChangeFeed",
    };
    case(pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_behind_a_silent_proxy_is_lost_and_staleness_stays_within_the_bound() {
    on_a_proxied_pair(feed_cases::a_silent_subscription_is_lost_and_staleness_stays_within_the_bound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_published_behind_a_silent_proxy_reaches_the_others_through_the_database_within_the_bound() {
    on_a_proxied_pair(feed_cases::a_change_made_behind_a_silent_proxy_reaches_the_others_through_the_store).await;
}
