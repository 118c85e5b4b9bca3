//! The in-process limiter alone: one check of a warm subject (a key's
//! lineage, an owner), allowed and refused, as validation makes it
//! (`check_ready`, one limit, the instant handed in).
//!
//! `cargo bench -p keysmith-core --bench limiter`
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use keysmith_core::limit::{GcraRateLimiter, RateLimiter, Subject};
use keysmith_core::{KeyId, RateLimit, Tenant};

fn limiter(c: &mut Criterion) {
    let limiter = GcraRateLimiter::new();
    // A limit no loop reaches: every check is allowed.
    let roomy = RateLimit::new("default", 1_000_000, Duration::from_millis(1));
    // One request an hour, spent: every check is refused.
    let spent = RateLimit::new("hourly", 1, Duration::from_secs(3600));
    let start: DateTime<Utc> = Utc::now();
    let keys: Vec<KeyId> = (0..1_000).map(|_| KeyId::new()).collect();
    let tenant = Tenant::new("bench", "acme");
    let owners: Vec<String> = (0..1_000).map(|i| format!("customer_{i}")).collect();
    let owner = |i: usize| Subject::Owner { tenant: &tenant, owner_id: &owners[i] };
    for (i, key) in keys.iter().enumerate() {
        limiter.check_ready(Subject::Key(*key), &roomy, start).unwrap().unwrap();
        limiter.check_ready(Subject::Key(*key), &spent, start).unwrap().unwrap();
        limiter.check_ready(owner(i), &roomy, start).unwrap().unwrap();
    }

    let mut group = c.benchmark_group("limiter");
    group.bench_function("allowed_key", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.check_ready(Subject::Key(keys[i]), black_box(&roomy), start))
        });
    });
    group.bench_function("refused_key", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.check_ready(Subject::Key(keys[i]), black_box(&spent), start))
        });
    });
    group.bench_function("allowed_owner", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % owners.len();
            black_box(limiter.check_ready(owner(i), black_box(&roomy), start))
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = limiter
}
criterion_main!(benches);
