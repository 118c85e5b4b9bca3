//! The HTTP servers `scripts/bench-http` measures, one per mode, all
//! answering `GET /` with `hello`:
//!
//! - `axum-bare`: axum alone.
//! - `axum-keysmith-memory`: axum + `ApiKeyLayer` on the memory store.
//! - `axum-keysmith-postgres`: axum + `ApiKeyLayer` on PostgreSQL behind
//!   `CachedStore` (needs `KEYSMITH_TEST_POSTGRES_URL`).
//! - `axum-governor`: axum + tower-governor keyed by the `X-API-Key` header,
//!   the rate-limit-only baseline.
//! - `axum-passthrough`: axum + a layer that does nothing (`Identity`), added
//!   with `Router::layer` as the others are: what layering costs any
//!   middleware on axum.
//! - `axum-handrolled`: axum + a hand-written `from_fn` middleware that
//!   SHA-256es `X-API-Key` and looks the hash up in a `HashMap`: the floor
//!   of any key check.
//! - `axum-handrolled-headers`: the same check answering with Keysmith's two
//!   rate-limit headers as constants (what sending them costs at least).
//! - `actix-bare`: actix-web alone (one worker).
//! - `actix-keysmith-memory`: actix-web + the `ApiKeyMiddleware` middleware on the
//!   memory store (one worker).
//!
//! `bench-server <mode> <port>` prints `key=<raw key>` (the key to send in
//! `X-API-Key`), then `ready`, and serves on 127.0.0.1 until killed.
//! `BENCH_VARIANT` takes parts out of the Keysmith modes (see `Variant`).
//! Keysmith modes use a key under a policy with every per-request check
//! (rate limit, IP allowlist, allowed scopes).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::Request;
use axum::routing::get;
use keysmith_benches::{Backend, BenchStore, Keys, seed, with_handrolled_check, with_handrolled_check_and_headers};
use keysmith_core::http::RateLimitHeaders;
use keysmith_core::{Engine, UsageMode};
use keysmith_tower::ApiKeyLayer;
use tower_governor::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

/// Rate limits by the raw `X-API-Key` header, as a user without Keysmith
/// would: no lookup, no policy.
#[derive(Debug, Clone, Copy)]
struct HeaderKey;

impl KeyExtractor for HeaderKey {
    type Key = String;

    fn extract<T>(&self, req: &Request<T>) -> Result<String, GovernorError> {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench-server <axum-bare|axum-passthrough|axum-handrolled|axum-handrolled-headers|axum-keysmith-memory|axum-keysmith-postgres|axum-governor|actix-bare|\
         actix-keysmith-memory> <port>"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(port)) = (args.next(), args.next()) else { usage() };
    let Ok(port) = port.parse::<u16>() else { usage() };
    if mode.starts_with("actix-") {
        actix_web::rt::System::new().block_on(serve_actix(&mode, port));
    } else {
        tokio::runtime::Runtime::new().expect("a tokio runtime").block_on(serve_axum(&mode, port));
    }
}

async fn serve_axum(mode: &str, port: u16) {
    let hello = Router::new().route("/", get(|| async { "hello" }));

    // Kept alive while serving: the engine's store and its database.
    let mut store_guard = None;
    let (app, key) = match mode {
        "axum-bare" => (hello, "sk_live_none".to_owned()),
        "axum-governor" => {
            let config = GovernorConfigBuilder::default()
                .key_extractor(HeaderKey)
                .period(Duration::from_nanos(1))
                .burst_size(1_000_000_000)
                .finish()
                .expect("a valid governor config");
            let layer = tower_governor::GovernorLayer::new(Arc::new(config));
            (hello.layer(layer), "sk_live_any".to_owned())
        }
        "axum-passthrough" => (hello.layer(tower::layer::util::Identity::new()), "sk_live_none".to_owned()),
        "axum-handrolled" | "axum-handrolled-headers" => {
            let key = "sk_live_handrolled_bench_key";
            let app = if mode.ends_with("headers") {
                with_handrolled_check_and_headers(hello, key)
            } else {
                with_handrolled_check(hello, key)
            };
            (app, key.to_owned())
        }
        "axum-keysmith-memory" | "axum-keysmith-postgres" => {
            let backend = if mode.ends_with("memory") { Backend::Memory } else { Backend::Postgres };
            let Some(store) = BenchStore::open(backend).await else {
                eprintln!("skipped: KEYSMITH_TEST_POSTGRES_URL not set");
                std::process::exit(3)
            };
            let variant = Variant::from_env();
            let engine = variant.engine(&store);
            let keys = seed(&engine).await;
            store_guard = Some(store);
            let layer = ApiKeyLayer::new(engine).with_rate_limit_headers(variant.headers());
            (hello.layer(layer), variant.key(keys))
        }
        _ => usage(),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind the port");
    println!("key={key}");
    println!("ready");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(terminated())
        .await
        .expect("serve");
    // Dropping the store removes its temporary database.
    drop(store_guard);
}

/// What `BENCH_VARIANT` (comma-separated) takes out of the Keysmith modes,
/// to see what each part costs: `aggregates` (usage counted per key and
/// hour, no raw records), `no-headers` (no `RateLimit` headers),
/// `plain-key` (the key without a policy: no limit, allowlist or scopes).
#[derive(Debug, Default)]
struct Variant {
    aggregates: bool,
    no_headers: bool,
    plain_key: bool,
}

impl Variant {
    fn from_env() -> Self {
        let mut variant = Self::default();
        for part in std::env::var("BENCH_VARIANT").unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
            match part {
                "aggregates" => variant.aggregates = true,
                "no-headers" => variant.no_headers = true,
                "plain-key" => variant.plain_key = true,
                other => {
                    eprintln!("unknown BENCH_VARIANT part {other:?} (aggregates, no-headers, plain-key)");
                    std::process::exit(2)
                }
            }
        }
        variant
    }

    /// The engine on `store`, recording usage as the variant says.
    fn engine(&self, store: &BenchStore) -> Engine {
        let mode = if self.aggregates { UsageMode::Aggregates } else { UsageMode::Records };
        store.builder().with_usage_mode(mode).build().expect("default engine")
    }

    /// The rate-limit headers the adapter sends.
    fn headers(&self) -> RateLimitHeaders {
        if self.no_headers { RateLimitHeaders::None } else { RateLimitHeaders::default() }
    }

    /// The key the requests present.
    fn key(&self, keys: Keys) -> String {
        if self.plain_key { keys.plain } else { keys.full }
    }
}

/// SIGTERM (what the script's `kill` sends) or Ctrl-C.
async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn serve_actix(mode: &str, port: u16) {
    use actix_web::{App, HttpServer, web};

    let hello = || async { "hello" };
    let server = match mode {
        "actix-bare" => {
            println!("key=sk_live_none");
            HttpServer::new(move || App::new().route("/", web::get().to(hello)))
                .workers(1)
                .bind(("127.0.0.1", port))
                .expect("bind the port")
                .run()
        }
        "actix-keysmith-memory" => {
            let store = BenchStore::open(Backend::Memory).await.expect("the memory store always opens");
            let variant = Variant::from_env();
            let engine = variant.engine(&store);
            let keys = seed(&engine).await;
            println!("key={}", variant.key(keys));
            let headers = variant.headers();
            HttpServer::new(move || {
                let middleware = keysmith_actix::ApiKeyMiddleware::new(engine.clone()).with_rate_limit_headers(headers);
                App::new().route("/", web::get().to(hello)).wrap(middleware)
            })
            .workers(1)
            .bind(("127.0.0.1", port))
            .expect("bind the port")
            .run()
        }
        _ => usage(),
    };
    println!("ready");
    server.await.expect("serve");
}
