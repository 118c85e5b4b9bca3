//! `RedisRateLimiter` against a real Redis: the in-process limiter's answers,
//! one budget across engines, refunds, and what an outage does.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keysmith_core::limit::Subject;
use keysmith_core::limit::{GcraRateLimiter, RateLimiter};
use keysmith_core::{
    Clock as _, Engine, KeyId, ManualClock, MemoryStore, NewKey, PolicySpec, RateLimit, Refusal, RequestContext, Store,
    ValidationError,
};
use keysmith_redis::{OutagePolicy, RedisConfig, RedisRateLimiter};

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-05-05T10:00:00.123456789Z").unwrap().to_utc()
}

#[tokio::test]
async fn answers_and_figures_match_the_in_process_limiter() {
    let Some(config) = common::shared().await else { return };
    let redis = RedisRateLimiter::new(config);
    let local = GcraRateLimiter::new();
    let clock = ManualClock::new(start());
    let key = KeyId::new();
    let burst = RateLimit { name: "default".to_owned(), requests: 5, window: Duration::from_secs(1), burst: Some(10) };
    let odd = RateLimit { name: "default".to_owned(), requests: 3, window: Duration::from_secs(1), burst: None };
    let larger = RateLimit { burst: Some(6), ..odd.clone() };
    // (advance before the check, limit)
    let mut steps: Vec<(u64, &RateLimit)> = vec![(0, &burst); 12];
    steps.extend([(150, &burst), (50, &burst), (0, &burst), (199, &burst), (1, &burst), (2_500, &burst)]);
    steps.extend([(0, &odd), (0, &odd), (0, &odd), (0, &odd), (333, &odd), (1, &odd), (0, &larger), (0, &larger)]);
    steps.extend([(0, &larger), (0, &larger), (10_000, &larger), (0, &odd)]);
    for (i, &(advance, limit)) in steps.iter().enumerate() {
        clock.advance(Duration::from_millis(advance));
        let expected = local.check(Subject::Key(key), limit, clock.now()).await.unwrap();
        let got = redis.check(Subject::Key(key), limit, clock.now()).await.unwrap();
        assert_eq!(got, expected, "step {i}");
    }
    // A refund gives back the same as the in-process one.
    redis.give_back(Subject::Key(key), &odd, clock.now()).await.unwrap();
    local.refund(Subject::Key(key), &odd, clock.now());
    let (expected, got) = (
        local.check(Subject::Key(key), &odd, clock.now()).await.unwrap(),
        redis.check(Subject::Key(key), &odd, clock.now()).await.unwrap(),
    );
    assert_eq!(got, expected, "after a refund");
}

#[tokio::test]
async fn a_limit_refused_by_the_in_process_limiter_is_refused_here_too() {
    let Some(config) = common::shared().await else { return };
    let redis = RedisRateLimiter::new(config);
    let zero = RateLimit { name: "default".to_owned(), requests: 0, window: Duration::from_secs(1), burst: None };
    assert!(redis.check(Subject::Key(KeyId::new()), &zero, start()).await.is_err());
}

/// Four engines on one store, each with its own limiter on one Redis.
async fn fleet(redis: &RedisConfig, engines: usize) -> (Vec<Engine>, String) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let fleet: Vec<Engine> = (0..engines)
        .map(|_| {
            let config = redis.clone();
            Engine::builder(Arc::clone(&store)).with_rate_limiter(RedisRateLimiter::new(config)).build().unwrap()
        })
        .collect();
    let acme = fleet[0].tenant("app", "acme");
    let policy =
        acme.create_policy(PolicySpec::new("ten").with_rate_limit(10, Duration::from_secs(3600))).await.unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
    (fleet, created.raw.expose().to_owned())
}

#[tokio::test]
async fn sixty_four_concurrent_requests_over_four_engines_admit_exactly_the_limit() {
    let Some(url) = common::redis_url() else { return };
    let prefix = common::unique_prefix();
    // Each engine has its own connection, as separate instances would.
    let mut configs = Vec::new();
    for _ in 0..4 {
        configs.push(common::connect(&url).await.with_prefix(&prefix));
    }
    let (engines, raw) = fleet(&configs[0], 1).await;
    let store = Arc::clone(engines[0].store());
    let engines: Vec<Engine> = configs
        .into_iter()
        .map(|c| Engine::builder(Arc::clone(&store)).with_rate_limiter(RedisRateLimiter::new(c)).build().unwrap())
        .collect();
    let admitted =
        common::admitted(&engines, &raw, 64, |e| matches!(e, ValidationError::Refused(Refusal::RateLimited { .. })))
            .await;
    assert_eq!(admitted, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_gives_the_request_back_to_every_engine() {
    let Some(config) = common::shared().await else { return };
    let (engines, raw) = fleet(&config, 2).await;
    let ctx = RequestContext::new();
    let mut last = None;
    for _ in 0..10 {
        last = Some(engines[0].validate(&raw, &ctx).await.unwrap());
    }
    assert!(engines[1].validate(&raw, &ctx).await.is_err(), "the budget is shared");
    assert!(engines[0].refund(&last.unwrap()));
    // The give-back runs in the background: wait (boundedly) for it to land.
    assert!(common::passes_soon(&engines[1], &raw).await, "the refunded request was never given back");
    assert!(engines[1].validate(&raw, &ctx).await.is_err(), "exactly one request was given back");
}

/// Checks `key` against one request per hour on a limiter of its own and
/// says whether it was allowed.
async fn once(limiter: &RedisRateLimiter, key: KeyId) -> keysmith_core::Result<bool> {
    let hourly = RateLimit { name: "default".to_owned(), requests: 1, window: Duration::from_secs(3600), burst: None };
    limiter.check(Subject::Key(key), &hourly, Utc::now()).await.map(|s| s.allowed)
}

/// True once two limiters share budgets through Redis again: a key one of
/// them spent is refused by the other.
async fn shared_again(a: &RedisRateLimiter, b: &RedisRateLimiter) -> bool {
    for _ in 0..200 {
        let key = KeyId::new();
        if once(a, key).await.unwrap_or(false) && !once(b, key).await.unwrap_or(true) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test]
async fn fail_open_decides_in_process_while_redis_is_down_and_shares_again_after() {
    let Some(mut server) = common::PrivateRedis::start().await else { return };
    let connect = || async { common::connect(&server.url()).await.with_outage_policy(OutagePolicy::FailOpen) };
    let (a, b) = (RedisRateLimiter::new(connect().await), RedisRateLimiter::new(connect().await));
    let key = KeyId::new();
    assert!(once(&a, key).await.unwrap());
    assert!(!once(&b, key).await.unwrap(), "shared while Redis is up");

    server.stop();
    // Each instance now decides alone: the key gets one request per instance.
    assert!(once(&a, key).await.unwrap(), "fail open: decided in process");
    assert!(!once(&a, key).await.unwrap(), "the in-process budget holds");
    assert!(once(&b, key).await.unwrap());

    server.restart().await;
    assert!(shared_again(&a, &b).await, "the limiters never went back to Redis");
}

#[tokio::test]
async fn fail_closed_answers_an_error_while_redis_is_down_and_recovers_after() {
    let Some(mut server) = common::PrivateRedis::start().await else { return };
    let connect = || async { common::connect(&server.url()).await.with_outage_policy(OutagePolicy::FailClosed) };
    let (a, b) = (RedisRateLimiter::new(connect().await), RedisRateLimiter::new(connect().await));
    assert!(once(&a, KeyId::new()).await.unwrap());

    server.stop();
    let error = once(&a, KeyId::new()).await.unwrap_err();
    assert!(matches!(error, keysmith_core::Error::Store { .. }), "{error:?}");

    server.restart().await;
    assert!(shared_again(&a, &b).await, "the limiters never went back to Redis");
}

#[tokio::test]
async fn a_refund_awaited_has_given_the_request_back_in_redis_when_it_completes() {
    let Some(config) = common::shared().await else { return };
    let (engines, raw) = fleet(&config, 2).await;
    let ctx = RequestContext::new();
    let validation = engines[0].validate(&raw, &ctx).await.unwrap();
    assert_eq!(validation.rate_limits[0].remaining, 9);
    // Refused afterwards (a route's scopes): the give-back is a round trip
    // to await, not a task that lands some time later.
    let refund = engines[0].refund_then(&validation);
    assert!(!refund.is_done(), "the give-back was not left to await");
    assert!(refund.await);
    // Once it completed, another instance finds the budget whole.
    let next = engines[1].validate(&raw, &ctx).await.unwrap();
    assert_eq!(next.rate_limits[0].remaining, 9, "the refused request still held a request of the budget");
}

#[tokio::test]
async fn once_redis_is_found_down_checks_do_not_wait_on_it_and_a_probe_brings_it_back() {
    let Some(mut server) = common::PrivateRedis::start().await else { return };
    let connect = || async {
        common::connect(&server.url())
            .await
            .with_outage_policy(OutagePolicy::FailClosed)
            .with_retry_interval(Duration::from_millis(20))
    };
    let (a, b) = (RedisRateLimiter::new(connect().await), RedisRateLimiter::new(connect().await));
    assert!(once(&a, KeyId::new()).await.unwrap());

    server.stop();
    // The check that finds Redis down waits on its call; Redis's error.
    let found = once(&a, KeyId::new()).await.unwrap_err().to_string();
    assert!(!found.contains("redis is unreachable"), "{found}");
    // The next ones call nothing: refused at once (fail closed), saying why.
    for _ in 0..20 {
        let refused = once(&a, KeyId::new()).await.unwrap_err().to_string();
        assert!(refused.contains("redis is unreachable") && refused.contains("probe"), "{refused}");
    }

    server.restart().await;
    assert!(shared_again(&a, &b).await, "the probe never brought the limiter back to Redis");
}

#[tokio::test]
async fn after_a_partition_heals_a_connection_that_went_silent_is_replaced_and_redis_decides_again() {
    let Some((proxy, behind, url)) = common::behind_silent_proxy().await else { return };
    let prefix = common::unique_prefix();
    let a = RedisRateLimiter::new(behind.with_prefix(&prefix).with_outage_policy(OutagePolicy::FailClosed));
    let b = RedisRateLimiter::new(common::connect(&url).await.with_prefix(&prefix));
    assert!(shared_again(&a, &b).await);

    proxy.go_silent();
    assert!(once(&a, KeyId::new()).await.is_err(), "no answer: fail closed");
    proxy.recover();
    // The old connection stays open and silent forever (as a half-open one
    // does until TCP gives up, minutes later); only a new one can answer.
    assert!(shared_again(&a, &b).await, "the limiter never went back to Redis after the partition healed");
}

#[tokio::test]
async fn an_engine_failing_closed_answers_unavailable_while_redis_is_down() {
    let Some(mut server) = common::PrivateRedis::start().await else { return };
    let config = common::connect(&server.url()).await.with_outage_policy(OutagePolicy::FailClosed);
    let (engines, raw) = fleet(&config, 1).await;
    let ctx = RequestContext::new();
    assert!(engines[0].validate(&raw, &ctx).await.is_ok());
    server.stop();
    let refused = engines[0].validate(&raw, &ctx).await.unwrap_err();
    assert!(matches!(refused, ValidationError::Failed(keysmith_core::Error::Store { .. })), "{refused:?}");
}

#[tokio::test]
async fn each_named_limit_and_each_owner_has_its_own_budget_in_redis() {
    let Some(config) = common::shared().await else { return };
    let redis = RedisRateLimiter::new(config);
    let now = start();
    let key = Subject::Key(KeyId::new());
    let burst = RateLimit::new("burst", 2, Duration::from_secs(1));
    let hourly = RateLimit::new("hourly", 1, Duration::from_secs(3600));
    assert!(redis.check(key, &burst, now).await.unwrap().allowed);
    assert!(redis.check(key, &hourly, now).await.unwrap().allowed);
    assert!(!redis.check(key, &hourly, now).await.unwrap().allowed, "hourly is spent");
    assert!(redis.check(key, &burst, now).await.unwrap().allowed, "burst has its own budget");
    // Two keys of one owner share the owner's budget; another tenant's
    // owner of the same id does not.
    let (acme, other) = (keysmith_core::Tenant::new("app", "acme"), keysmith_core::Tenant::new("app", "other"));
    let owner_id = format!("cust-{}", KeyId::new());
    let owner = |tenant| Subject::Owner { tenant, owner_id: &owner_id };
    assert!(redis.check(owner(&acme), &hourly, now).await.unwrap().allowed);
    assert!(!redis.check(owner(&acme), &hourly, now).await.unwrap().allowed);
    assert!(redis.check(owner(&other), &hourly, now).await.unwrap().allowed);
}
