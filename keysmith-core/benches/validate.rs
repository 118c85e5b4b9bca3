//! `Engine::validate` on the memory store, next to its floor: one SHA-256 of
//! a key plus one hash-map lookup, measured in the same run; and the same
//! full-policy key through an engine built `with_cache` (warm), the path of
//! the SQL stores.
//!
//! `cargo bench -p keysmith-core --bench validate`
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keysmith_core::store::CacheConfig;
use keysmith_core::{Engine, MemoryStore, NewKey, PolicySpec, RequestContext};
use sha2::{Digest, Sha256};

fn validate(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::builder(Arc::clone(&store)).build().unwrap();
    let cached = runtime
        .block_on(async { Engine::builder(Arc::clone(&store)).with_cache(CacheConfig::default()).build().unwrap() });
    let acme = engine.tenant("bench", "acme");
    let (plain, full, unknown) = runtime.block_on(async {
        let plain = acme.create_key(NewKey::new("plain").with_scopes(["read"])).await.unwrap();
        let policy = acme
            .create_policy(
                PolicySpec::new("full")
                    .with_rate_limit(PolicySpec::MAX_REQUESTS, PolicySpec::MIN_WINDOW)
                    .with_allowed_ips(["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"])
                    .with_allowed_scopes(["read", "write"]),
            )
            .await
            .unwrap();
        let full = acme
            .create_key(NewKey::new("full").with_policy(policy.id).with_scopes(["read", "write:users"]))
            .await
            .unwrap();
        let other = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
        let unknown = other.tenant("x", "y").create_key(NewKey::new("u")).await.unwrap();
        (plain, full, unknown)
    });
    let malformed = format!("{}x", &plain.raw.expose()[..plain.raw.expose().len() - 1]);
    let required = vec!["read:users".to_owned(), "write:users".to_owned()];
    let client: IpAddr = "192.0.2.10".parse().unwrap();
    let full_ctx = RequestContext::new().with_ip(client).with_required_scopes(&required);
    let empty = RequestContext::new();
    // The steady state of a server: each key was seen once this minute and
    // its `last_used_at` has reached the store, so a validation does not
    // queue another write.
    runtime.block_on(async {
        engine.validate(plain.raw.expose(), &empty).await.unwrap();
        engine.validate(full.raw.expose(), &full_ctx).await.unwrap();
        engine.flush_usage().await;
        // Warm: the key and its policy are cached (the second validation
        // keeps the policy with the key).
        for _ in 0..2 {
            cached.validate(full.raw.expose(), &full_ctx).await.unwrap();
        }
        cached.flush_usage().await;
    });

    // The floor: what any API-key check must do at least.
    let mut table: HashMap<[u8; 32], u64> = HashMap::new();
    for i in 0..1000u64 {
        table.insert(Sha256::digest(i.to_le_bytes()).into(), i);
    }
    let floor_key = plain.raw.expose().to_owned();
    table.insert(Sha256::digest(floor_key.as_bytes()).into(), 7);

    let mut group = c.benchmark_group("validate");
    group.bench_function("floor_sha256_plus_lookup", |b| {
        b.iter(|| {
            let hash: [u8; 32] = Sha256::digest(black_box(floor_key.as_bytes())).into();
            black_box(table.get(&hash))
        });
    });
    group.bench_function("malformed", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(engine.validate(black_box(&malformed), &empty).await.is_err()) });
    });
    group.bench_function("unknown", |b| {
        let raw = unknown.raw.expose();
        b.to_async(&runtime).iter(|| async { black_box(engine.validate(black_box(raw), &empty).await.is_err()) });
    });
    group.bench_function("valid_no_policy", |b| {
        let raw = plain.raw.expose();
        b.to_async(&runtime).iter(|| async { black_box(engine.validate(black_box(raw), &empty).await.is_ok()) });
    });
    group.bench_function("valid_full_policy", |b| {
        let raw = full.raw.expose();
        b.to_async(&runtime).iter(|| async { black_box(engine.validate(black_box(raw), &full_ctx).await.is_ok()) });
    });
    group.bench_function("cached_full_policy", |b| {
        let raw = full.raw.expose();
        b.to_async(&runtime).iter(|| async { black_box(cached.validate(black_box(raw), &full_ctx).await.is_ok()) });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = validate
}
criterion_main!(benches);
