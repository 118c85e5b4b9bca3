//! `Engine::validate` with a warm cache over SQLite, PostgreSQL and MySQL, next to
//! the memory store and the floor (one SHA-256 of a key plus one hash-map
//! lookup), all in one run so the report reads as ratios.
//!
//! `KEYSMITH_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test KEYSMITH_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test cargo bench -p keysmith-benches --bench validate_stores`
//!
//! Without a server's variable its benches are skipped with one line.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keysmith_benches::{Backend, BenchStore, seed};
use keysmith_core::RequestContext;
use sha2::{Digest, Sha256};

fn validate_stores(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let required = vec!["read:users".to_owned()];
    let client: IpAddr = "127.0.0.1".parse().unwrap();
    let full_ctx = RequestContext::new().with_ip(client).with_required_scopes(&required);
    let empty = RequestContext::new();

    let mut group = c.benchmark_group("stores");

    // The floor: what any API-key check must do at least.
    let floor_key = "sk_live_0123456789abcdefghijABCDEFGHIJ0123456789";
    let mut table: HashMap<[u8; 32], u64> = HashMap::new();
    for i in 0..1000u64 {
        table.insert(Sha256::digest(i.to_le_bytes()).into(), i);
    }
    table.insert(Sha256::digest(floor_key.as_bytes()).into(), 7);
    group.bench_function("floor_sha256_plus_lookup", |b| {
        b.iter(|| {
            let hash: [u8; 32] = Sha256::digest(black_box(floor_key.as_bytes())).into();
            black_box(table.get(&hash))
        });
    });

    for backend in [Backend::Memory, Backend::Sqlite, Backend::Postgres, Backend::MySql] {
        let Some(store) = runtime.block_on(BenchStore::open(backend)) else {
            println!("skipping {}: its server URL is not set", backend.name());
            continue;
        };
        let engine = store.engine();
        let keys = runtime.block_on(seed(&engine));
        // Warm the cache and the rate limiter's entry, and let the first
        // requests' `last_used_at` reach the store, as in a server that has
        // answered a key once this minute (the steady state).
        runtime.block_on(async {
            engine.validate(&keys.plain, &empty).await.unwrap();
            engine.validate(&keys.full, &full_ctx).await.unwrap();
            engine.flush_usage().await;
        });
        let name = backend.name();
        group.bench_function(format!("{name}/valid_no_policy"), |b| {
            b.to_async(&runtime)
                .iter(|| async { black_box(engine.validate(black_box(&keys.plain), &empty).await.is_ok()) });
        });
        group.bench_function(format!("{name}/valid_full_policy"), |b| {
            b.to_async(&runtime)
                .iter(|| async { black_box(engine.validate(black_box(&keys.full), &full_ctx).await.is_ok()) });
        });
        runtime.block_on(engine.shutdown());
        drop(engine);
        runtime.block_on(async move { drop(store) });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = validate_stores
}
criterion_main!(benches);
