//! `RedisRateLimiter::local_first` against a real Redis: decided in process
//! far from the limit, strict near it, within the stated bound across
//! several limiters, and every admitted request ends up counted in Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keysmith_core::limit::Subject;
use keysmith_core::limit::{GcraRateLimiter, RateLimiter};
use keysmith_core::{Error, KeyId, RateLimit};
use keysmith_redis::{RedisConfig, RedisRateLimiter};

/// Long enough that the background sync never runs within a test: the
/// tests sync by hand.
const BY_HAND: Duration = Duration::from_secs(3600);

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-05-05T10:00:00.5Z").unwrap().to_utc()
}

fn hundred_per_hour() -> RateLimit {
    RateLimit { name: "default".to_owned(), requests: 100, window: Duration::from_secs(3600), burst: None }
}

/// Checks as the engine does; `(allowed, decided in process)`.
async fn check(limiter: &RedisRateLimiter, key: KeyId, limit: &RateLimit, now: DateTime<Utc>) -> (bool, bool) {
    match limiter.check_ready(Subject::Key(key), limit, now) {
        Some(status) => (status.unwrap().allowed, true),
        None => (limiter.check(Subject::Key(key), limit, now).await.unwrap().allowed, false),
    }
}

/// What Redis has counted of `key`: requests left for a strict limiter.
async fn left_in_redis(config: &RedisConfig, key: KeyId, limit: &RateLimit, now: DateTime<Utc>) -> u32 {
    let strict = RedisRateLimiter::new(config.clone());
    let status = strict.check(Subject::Key(key), limit, now).await.unwrap();
    assert!(strict.give_back(Subject::Key(key), limit, now).await.unwrap() || !status.allowed);
    if status.allowed { status.remaining + 1 } else { 0 }
}

#[tokio::test]
async fn far_from_the_limit_checks_are_decided_in_process_and_near_it_by_redis() {
    let Some(config) = common::shared().await else { return };
    let limiter = RedisRateLimiter::new(config.clone()).local_first(BY_HAND).unwrap();
    let (key, limit, now) = (KeyId::new(), hundred_per_hour(), start());
    // A key new to this instance is checked by Redis; then L = 5 requests
    // (a twentieth of the burst) are admitted here before Redis is asked.
    assert_eq!(check(&limiter, key, &limit, now).await, (true, false));
    for _ in 0..5 {
        assert_eq!(check(&limiter, key, &limit, now).await, (true, true));
    }
    assert_eq!(left_in_redis(&config, key, &limit, now).await, 99, "the five are not sent yet");
    assert_eq!(check(&limiter, key, &limit, now).await, (true, false), "the allowance is spent: Redis decides");
    assert_eq!(left_in_redis(&config, key, &limit, now).await, 93, "the strict check sent the five first");

    // Once less than half the burst would be left, every check is strict.
    let mut decided_here = 0;
    for _ in 0..93 {
        let (allowed, here) = check(&limiter, key, &limit, now).await;
        assert!(allowed);
        decided_here += usize::from(here);
    }
    assert!(!check(&limiter, key, &limit, now).await.0, "exactly the limit");
    limiter.sync().await.unwrap();
    assert_eq!(left_in_redis(&config, key, &limit, now).await, 0);
    assert_eq!(decided_here, 36, "in process only while half the burst is left, five at a time");
}

#[tokio::test]
async fn alone_the_limit_is_exact_and_refusals_match_the_in_process_limiter() {
    let Some(config) = common::shared().await else { return };
    let limiter = RedisRateLimiter::new(config).local_first(BY_HAND).unwrap();
    let local = GcraRateLimiter::new();
    let (key, now) = (KeyId::new(), start());
    let limit =
        RateLimit { name: "default".to_owned(), requests: 40, window: Duration::from_secs(60), burst: Some(60) };
    let mut admitted = 0;
    for _ in 0..100 {
        let expected = local.check(Subject::Key(key), &limit, now).await.unwrap();
        let got = match limiter.check_ready(Subject::Key(key), &limit, now) {
            Some(status) => status.unwrap(),
            None => limiter.check(Subject::Key(key), &limit, now).await.unwrap(),
        };
        assert_eq!(got, expected);
        admitted += usize::from(got.allowed);
    }
    assert_eq!(admitted, 60);
}

/// `count` limiters, each with its own connection, checking one key from
/// four tasks each, 50 tries per task, at one instant: how many passed.
async fn hammer(url: &str, count: usize, limit: RateLimit) -> (usize, RedisConfig, KeyId) {
    let prefix = common::unique_prefix();
    let mut fleet = Vec::new();
    for _ in 0..count {
        let config = common::connect(url).await.with_prefix(&prefix);
        fleet.push(Arc::new(RedisRateLimiter::new(config).local_first(BY_HAND).unwrap()));
    }
    let (key, now) = (KeyId::new(), start());
    let tasks: Vec<_> = (0..count * 4)
        .map(|task| {
            let (limiter, limit) = (Arc::clone(&fleet[task % count]), limit.clone());
            tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..50 {
                    admitted += usize::from(check(&limiter, key, &limit, now).await.0);
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    for limiter in &fleet {
        limiter.sync().await.unwrap();
    }
    let config = common::connect(url).await.with_prefix(&prefix);
    (admitted, config, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_two_four_and_eight_limiters_a_burst_admits_at_most_the_stated_overshoot() {
    let Some(url) = common::redis_url() else { return };
    let limit = hundred_per_hour();
    for count in [2, 4, 8] {
        let (admitted, config, key) = hammer(&url, count, limit.clone()).await;
        // The bound: 2 × N × L, L = ⌊100 / 20⌋.
        let bound = 100 + 2 * count * 5;
        println!("{count} limiters: {admitted} admitted against a limit of 100 (bound {bound})");
        assert!((100..=bound).contains(&admitted), "{count} limiters admitted {admitted}");
        assert_eq!(left_in_redis(&config, key, &limit, start()).await, 0, "every admitted request is counted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_burst_is_exact_over_many_limiters() {
    let Some(url) = common::redis_url() else { return };
    let three = RateLimit { name: "default".to_owned(), requests: 3, window: Duration::from_secs(10), burst: None };
    let (admitted, _, _) = hammer(&url, 8, three).await;
    assert_eq!(admitted, 3);
}

#[tokio::test]
async fn a_refund_of_a_request_decided_in_process_is_taken_back_before_it_is_sent() {
    let Some(config) = common::shared().await else { return };
    let limiter = RedisRateLimiter::new(config.clone()).local_first(BY_HAND).unwrap();
    let (key, limit, now) = (KeyId::new(), hundred_per_hour(), start());
    assert_eq!(check(&limiter, key, &limit, now).await, (true, false));
    assert_eq!(check(&limiter, key, &limit, now).await, (true, true));
    assert_eq!(check(&limiter, key, &limit, now).await, (true, true));
    limiter.refund(Subject::Key(key), &limit, now);
    limiter.sync().await.unwrap();
    assert_eq!(left_in_redis(&config, key, &limit, now).await, 98, "two counted, the refunded one not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_sync_sends_what_was_admitted_in_process() {
    let Some(config) = common::shared().await else { return };
    let limiter = RedisRateLimiter::new(config.clone()).local_first(Duration::from_millis(20)).unwrap();
    let (key, limit, now) = (KeyId::new(), hundred_per_hour(), start());
    for _ in 0..4 {
        check(&limiter, key, &limit, now).await;
    }
    // Real time passes for the background task: wait for it, boundedly.
    let mut left = 0;
    for _ in 0..200 {
        left = left_in_redis(&config, key, &limit, now).await;
        if left == 96 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(left, 96, "the requests decided in process never reached Redis");
}

#[tokio::test]
async fn a_zero_sync_interval_is_refused() {
    let Some(config) = common::shared().await else { return };
    let error = RedisRateLimiter::new(config).local_first(Duration::ZERO).unwrap_err();
    assert!(matches!(error, Error::InvalidInput { field: "sync_interval", .. }), "{error:?}");
}
