//! `local_first` against a Redis (the test server by default):
//!
//! 1. cost of one check, one at a time, next to the in-process limiter and
//!    strict mode (p50/p99/mean of a bounded loop);
//! 2. overshoot: 2, 4 and 8 limiters (each with its own connection, as
//!    instances would have) on one key, (a) all at once until refused, and
//!    (b) driven round-robin at twice the limit's rate for a few seconds,
//!    admitted against what the limit allows.
//!
//! `KEYSMITH_TEST_REDIS_URL=redis://127.0.0.1:6379 cargo bench -p keysmith-redis --bench local_first`

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use keysmith_core::limit::Subject;
use keysmith_core::limit::{GcraRateLimiter, RateLimiter};
use keysmith_core::{KeyId, RateLimit};
use keysmith_redis::{RedisConfig, RedisRateLimiter};

const WARMUP: usize = 2_000;
const SAMPLES: usize = 50_000;
const SYNC: Duration = Duration::from_millis(100);

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

fn report(name: &str, mut samples: Vec<Duration>) {
    let mean = samples.iter().sum::<Duration>().as_secs_f64() * 1e6 / samples.len() as f64;
    samples.sort_unstable();
    println!(
        "{name:<44} p50 {:>7.2} µs   p99 {:>7.2} µs   mean {mean:>7.2} µs",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
    );
}

/// Checks as the engine does: `check_ready` first, `check` if that is `None`.
async fn check(limiter: &dyn RateLimiter, key: KeyId, limit: &RateLimit) -> bool {
    let now = Utc::now();
    let status = match limiter.check_ready(Subject::Key(key), limit, now) {
        Some(status) => status,
        None => limiter.check(Subject::Key(key), limit, now).await,
    };
    status.expect("check failed").allowed
}

async fn cost(name: &str, limiter: &dyn RateLimiter, limit: &RateLimit) {
    let keys: Vec<KeyId> = (0..1_000).map(|_| KeyId::new()).collect();
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let started = Instant::now();
        let allowed = check(limiter, keys[i % keys.len()], limit).await;
        if i >= WARMUP {
            samples.push(started.elapsed());
        }
        assert!(allowed);
    }
    report(name, samples);
}

async fn limiters(url: &str, prefix: &str, count: usize) -> Vec<Arc<RedisRateLimiter>> {
    let mut limiters = Vec::new();
    for _ in 0..count {
        let config = RedisConfig::connect(url).await.expect("cannot connect to Redis").with_prefix(prefix);
        limiters.push(Arc::new(RedisRateLimiter::new(config).local_first(SYNC).unwrap()));
    }
    limiters
}

/// Every limiter checks the key from 8 tasks at once until 4 × the burst
/// have been tried: admitted against the burst.
async fn burst(url: &str, count: usize) -> usize {
    let limit = RateLimit { name: "default".to_owned(), requests: 100, window: Duration::from_secs(3600), burst: None };
    let fleet = limiters(url, &format!("keysmith-bench-{}", KeyId::new()), count).await;
    let key = KeyId::new();
    let tries_per_task = 400 / (count * 8);
    let tasks: Vec<_> = (0..count * 8)
        .map(|task| {
            let (limiter, limit) = (Arc::clone(&fleet[task % count]), limit.clone());
            tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..tries_per_task {
                    admitted += usize::from(check(&*limiter, key, &limit).await);
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    admitted
}

/// Round-robin over the limiters at twice the limit's rate for `run`:
/// (admitted, what the limit allows in that time).
async fn steady(url: &str, count: usize, run: Duration) -> (u64, u64) {
    let limit = RateLimit { name: "default".to_owned(), requests: 200, window: Duration::from_secs(1), burst: None };
    let fleet = limiters(url, &format!("keysmith-bench-{}", KeyId::new()), count).await;
    let key = KeyId::new();
    let pace = limit.window / limit.requests / 2;
    let started = Instant::now();
    let mut ticks = tokio::time::interval(pace);
    let (mut admitted, mut i) = (0, 0);
    while started.elapsed() < run {
        ticks.tick().await;
        admitted += u64::from(check(&*fleet[i % count], key, &limit).await);
        i += 1;
    }
    let elapsed = started.elapsed();
    let allowed = u64::from(limit.requests) + (elapsed.as_nanos() / (limit.window / limit.requests).as_nanos()) as u64;
    (admitted, allowed)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::var("KEYSMITH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let config = RedisConfig::connect(&url).await.expect("cannot connect to Redis").with_prefix("keysmith-bench");
    // Far from its limit: nearly every check is decided in process.
    let busy =
        RateLimit { name: "default".to_owned(), requests: 1_000_000, window: Duration::from_secs(1), burst: None };
    println!("cost of one check (1000 keys, limit 1 000 000/s, one at a time):");
    cost("in-process GcraRateLimiter", &GcraRateLimiter::new(), &busy).await;
    cost("local_first(100 ms)", &RedisRateLimiter::new(config.clone()).local_first(SYNC).unwrap(), &busy).await;
    cost("strict", &RedisRateLimiter::new(config.clone()), &busy).await;

    println!("\novershoot, local_first(100 ms):");
    for count in [2, 4, 8] {
        let admitted = burst(&url, count).await;
        println!(
            "  {count} limiters, all at once, limit 100/h: {admitted} admitted ({:+} over)",
            admitted as i64 - 100
        );
    }
    for count in [2, 4, 8] {
        let (admitted, allowed) = steady(&url, count, Duration::from_secs(5)).await;
        let over = (admitted as f64 / allowed as f64 - 1.0) * 100.0;
        println!(
            "  {count} limiters, round-robin at 2× the rate of 200/s for 5 s: {admitted} admitted of {allowed} allowed ({over:+.1}%)"
        );
    }
}
