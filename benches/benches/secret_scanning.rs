//! GitHub secret scanning alerts of 1 000 tokens through the admin router on
//! SQLite (a file, WAL): the signature check, the lookups and the
//! revocations, answered with the feedback array. The target is under one
//! second for a batch of 1 000.
//!
//! `cargo bench -p keysmith-benches --bench secret_scanning`
//!
//! - `first_report_1000_keys`: every token is a live key, so every one is
//!   looked up, revoked, published and evented (the worst case);
//! - `replay_1000_keys`: the same batch again (lookups only: idempotent);
//! - `1000_foreign_tokens`: tokens that are not ours (no store call).
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use keysmith_admin::{AdminConfig, GithubSecretScanning};
use keysmith_benches::{Backend, BenchStore};
use keysmith_core::store::CacheConfig;
use keysmith_core::{Engine, NewKey};
use keysmith_tests::github::{FakeGithub, alert_body};
use tower::ServiceExt;

const BATCH: usize = 1000;

/// Posts `body` signed by `github`; panics unless the answer is 200.
async fn post(app: &Router, github: &FakeGithub, body: &str) {
    let request = Request::post("/keysmith/v1/secret-scanning/github")
        .header("github-public-key-identifier", github.identifier())
        .header("github-public-key-signature", github.sign(body.as_bytes()))
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    std::hint::black_box(axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap());
}

/// `BATCH` fresh keys' secrets.
async fn fresh_keys(engine: &Engine) -> Vec<String> {
    let tenant = engine.tenant("bench", "leaky");
    let mut raws = Vec::with_capacity(BATCH);
    for i in 0..BATCH {
        raws.push(tenant.create_key(NewKey::new(format!("k{i}"))).await.unwrap().raw.expose().to_owned());
    }
    raws
}

fn secret_scanning(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = runtime.block_on(BenchStore::open(Backend::Sqlite)).expect("SQLite needs no server");
    let engine = Engine::builder(Arc::clone(&store.store)).with_cache(CacheConfig::default()).build().unwrap();
    let github = runtime.block_on(FakeGithub::start());
    let scanning = GithubSecretScanning::new(engine.clone()).with_keys_url(github.keys_url());
    let app: Router = Router::new()
        .nest("/keysmith/v1", AdminConfig::new(engine.clone()).with_secret_scanning(scanning).into_router());
    // Fetch GitHub's keys once, as a running server has.
    runtime.block_on(post(&app, &github, "[]"));

    let mut group = c.benchmark_group("secret_scanning_sqlite");
    group.sample_size(10);
    group.bench_function("first_report_1000_keys", |b| {
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let raws = runtime.block_on(fresh_keys(&engine));
                let body = alert_body(&raws.iter().map(String::as_str).collect::<Vec<_>>());
                let started = Instant::now();
                runtime.block_on(post(&app, &github, &body));
                spent += started.elapsed();
            }
            spent
        });
    });
    let raws = runtime.block_on(fresh_keys(&engine));
    let replay = alert_body(&raws.iter().map(String::as_str).collect::<Vec<_>>());
    runtime.block_on(post(&app, &github, &replay));
    group.bench_function("replay_1000_keys", |b| b.iter(|| runtime.block_on(post(&app, &github, &replay))));
    let foreign = alert_body(&vec!["ghp_16C7e42F292c6912E7710c838347Ae178B4a"; BATCH]);
    group.bench_function("1000_foreign_tokens", |b| b.iter(|| runtime.block_on(post(&app, &github, &foreign))));
    group.finish();
    drop(store);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = secret_scanning
}
criterion_main!(benches);
