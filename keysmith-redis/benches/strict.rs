//! Cost of one strict-mode check against a Redis (the test server by
//! default): a bounded loop of checks, one at a time, with p50/p99 of each,
//! next to a bare `PING` round trip on the same connection.
//!
//! `KEYSMITH_TEST_REDIS_URL=redis://127.0.0.1:6379 cargo bench -p keysmith-redis --bench strict`

use std::time::{Duration, Instant};

use chrono::Utc;
use keysmith_core::limit::RateLimiter;
use keysmith_core::limit::Subject;
use keysmith_core::{KeyId, RateLimit};
use keysmith_redis::{RedisConfig, RedisRateLimiter};

const WARMUP: usize = 1_000;
const SAMPLES: usize = 20_000;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    println!(
        "{name:<28} p50 {:>6.1} µs   p99 {:>6.1} µs   ({} samples)",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples.len()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::var("KEYSMITH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let config = RedisConfig::connect(&url).await.expect("cannot connect to Redis").with_prefix("keysmith-bench");
    let limiter = RedisRateLimiter::new(config.clone());
    let limit =
        RateLimit { name: "default".to_owned(), requests: 1_000_000, window: Duration::from_secs(1), burst: None };
    let keys: Vec<KeyId> = (0..1_000).map(|_| KeyId::new()).collect();

    let mut conn = config.connection();
    let mut ping = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let started = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.expect("PING failed");
        if i >= WARMUP {
            ping.push(started.elapsed());
        }
    }
    let mut checks = Vec::with_capacity(SAMPLES);
    for i in 0..WARMUP + SAMPLES {
        let key = keys[i % keys.len()];
        let started = Instant::now();
        let status = limiter.check(Subject::Key(key), &limit, Utc::now()).await.expect("check failed");
        if i >= WARMUP {
            checks.push(started.elapsed());
        }
        assert!(status.allowed);
    }
    report("PING round trip", ping);
    report("strict check (EVALSHA)", checks);
}
