//! Fixtures shared by Keysmith's benchmarks (not published): the stores a
//! measurement runs on and the keys it presents.
//!
//! - `cargo bench -p keysmith-benches --bench validate_stores`: validation
//!   through an engine's cache ([`CachedStore`]) over SQLite,
//!   PostgreSQL and MySQL next to the memory store and the SHA-256 + lookup floor.
//! - `bench-server <mode>`: the HTTP servers `scripts/bench-http` drives with wrk.
//! - `bench-usage`: usage-recording throughput and memory per key
//!   (`scripts/bench-usage`).
//! - `soak`: the soak-and-chaos run behind `scripts/soak`.
//! - `flood`: memory of one instance under a flood of made-up keys.
//!
//! ```no_run
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use keysmith_benches::{Backend, BenchStore, seed};
//!
//! let store = BenchStore::open(Backend::Sqlite).await.expect("SQLite needs no server");
//! let keys = seed(&store.engine()).await;
//! assert!(keys.full.starts_with("sk_live_"));
//! # });
//! ```
#![forbid(unsafe_code)]

pub mod load;

use std::sync::Arc;
use std::time::Duration;

use keysmith_core::store::CacheConfig;
#[cfg(doc)]
use keysmith_core::store::CachedStore;
use keysmith_core::{Engine, EngineBuilder, MemoryStore, NewKey, PolicySpec, Store};
use keysmith_sqlx::{MySqlStore, PgStore, SqliteStore};
use keysmith_tests::services::{MySqlTestDb, PgTestDb};

/// Where a benchmark keeps its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// [`MemoryStore`], no cache in front.
    Memory,
    /// [`SqliteStore`] on a file in the temp directory, engines with a [`CachedStore`].
    Sqlite,
    /// [`PgStore`] on a fresh database of `KEYSMITH_TEST_POSTGRES_URL`,
    /// engines with a [`CachedStore`].
    Postgres,
    /// [`MySqlStore`] on a fresh database of `KEYSMITH_TEST_MYSQL_URL`,
    /// engines with a [`CachedStore`].
    MySql,
}

impl Backend {
    /// A short name for reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Sqlite => "sqlite_cached",
            Self::Postgres => "postgres_cached",
            Self::MySql => "mysql_cached",
        }
    }
}

/// An opened, migrated store, and what must outlive it (the temporary
/// database or file, removed on drop).
#[derive(Debug)]
pub struct BenchStore {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Whether [`builder`](Self::builder) gives engines a cache (the SQL
    /// backends).
    pub cached: bool,
    /// The database's URL, for PostgreSQL and MySQL.
    pub server_url: Option<String>,
    _server_db: Option<Box<dyn std::fmt::Debug + Send>>,
    sqlite_file: Option<std::path::PathBuf>,
}

impl BenchStore {
    /// Opens and migrates `backend`; `None` (after one `skipping:` line) for
    /// PostgreSQL or MySQL when `KEYSMITH_TEST_POSTGRES_URL` or
    /// `KEYSMITH_TEST_MYSQL_URL` is unset.
    ///
    /// # Panics
    /// When the database cannot be opened or migrated.
    pub async fn open(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Memory => {
                let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
                Some(Self { store, cached: false, server_url: None, _server_db: None, sqlite_file: None })
            }
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("keysmith-bench-{}.db", std::process::id()));
                let _ = std::fs::remove_file(&path);
                let url = format!("sqlite://{}", path.display());
                let sqlite = SqliteStore::connect(&url).await.expect("open the SQLite file");
                sqlite.migrate().await.expect("migrate SQLite");
                Some(Self {
                    store: Arc::new(sqlite),
                    cached: true,
                    server_url: None,
                    _server_db: None,
                    sqlite_file: Some(path),
                })
            }
            Backend::Postgres => {
                let db = PgTestDb::create().await?;
                // Usage commits synchronously unless asked (`bench-usage`).
                let asynchronous = std::env::var_os("BENCH_ASYNCHRONOUS_USAGE_COMMIT").is_some();
                let pg = PgStore::connect(db.url())
                    .await
                    .expect("connect to PostgreSQL")
                    .with_asynchronous_usage_commit(asynchronous);
                pg.migrate().await.expect("migrate PostgreSQL");
                let url = db.url().to_owned();
                Some(Self::on_server(Arc::new(pg), url, Box::new(db)))
            }
            Backend::MySql => {
                let db = MySqlTestDb::create().await?;
                let mysql = MySqlStore::connect(db.url()).await.expect("connect to MySQL");
                mysql.migrate().await.expect("migrate MySQL");
                let url = db.url().to_owned();
                Some(Self::on_server(Arc::new(mysql), url, Box::new(db)))
            }
        }
    }

    fn on_server(store: Arc<dyn Store>, url: String, db: Box<dyn std::fmt::Debug + Send>) -> Self {
        Self { store, cached: true, server_url: Some(url), _server_db: Some(db), sqlite_file: None }
    }

    /// An engine builder on the store, with a default cache for the SQL
    /// backends.
    pub fn builder(&self) -> EngineBuilder {
        let builder = Engine::builder(Arc::clone(&self.store));
        if self.cached { builder.with_cache(CacheConfig::default()) } else { builder }
    }

    /// An engine on the store with default settings.
    ///
    /// # Panics
    /// Never with the default configuration.
    #[must_use]
    pub fn engine(&self) -> Engine {
        self.builder().build().expect("default engine")
    }
}

impl Drop for BenchStore {
    fn drop(&mut self) {
        if let Some(path) = &self.sqlite_file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
    }
}

/// The raw keys a benchmark presents.
#[derive(Debug, Clone)]
pub struct Keys {
    /// A key with scopes and no policy.
    pub plain: String,
    /// A key under a policy with every per-request check: a rate limit high
    /// enough never to refuse, an IP allowlist (127.0.0.0/8 among others) and
    /// allowed scopes. Present it from 127.0.0.1 requiring `read:users`.
    pub full: String,
}

/// The policy every "full policy" measurement uses.
#[must_use]
pub fn full_policy() -> PolicySpec {
    PolicySpec::new("full")
        .with_rate_limit(1_000_000, Duration::from_secs(1))
        .with_allowed_ips(["10.0.0.0/8", "127.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"])
        .with_allowed_scopes(["read", "write"])
}

/// Creates the [`Keys`] in tenant `bench/acme`.
///
/// # Panics
/// When the store refuses the writes.
pub async fn seed(engine: &Engine) -> Keys {
    let acme = engine.tenant("bench", "acme");
    let plain = acme.create_key(NewKey::new("plain").with_scopes(["read"])).await.expect("create plain key");
    let policy = acme.create_policy(full_policy()).await.expect("create policy");
    let full = acme
        .create_key(NewKey::new("full").with_policy(policy.id).with_scopes(["read", "write:users"]))
        .await
        .expect("create full key");
    Keys { plain: plain.raw.expose().to_owned(), full: full.raw.expose().to_owned() }
}

/// `router` behind the hand-written check the benchmarks compare Keysmith
/// with, the floor of any key check: an axum `from_fn` middleware that
/// SHA-256es `X-API-Key`, looks the hash up in a `HashMap` holding `key`'s,
/// and puts the owner it finds into the request's extensions (401 without
/// a known key). Added with `Router::layer`, as `ApiKeyLayer` is.
pub fn with_handrolled_check(router: axum::Router, key: &str) -> axum::Router {
    handrolled(router, key, false)
}

/// [`with_handrolled_check`] that also answers a passed request with the
/// two rate-limit headers Keysmith sends (`RateLimit-Policy` and
/// `RateLimit`), as constants: what those two headers cost at least, for a
/// comparison of like with like.
pub fn with_handrolled_check_and_headers(router: axum::Router, key: &str) -> axum::Router {
    handrolled(router, key, true)
}

fn handrolled(router: axum::Router, key: &str, headers: bool) -> axum::Router {
    use axum::body::Body;
    use axum::http::header::{HeaderName, HeaderValue};
    use axum::http::{Request, StatusCode};
    use axum::middleware::Next;
    use axum::response::IntoResponse;
    use sha2::{Digest, Sha256};

    const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
    let mut known = std::collections::HashMap::new();
    known.insert(<[u8; 32]>::from(Sha256::digest(key.as_bytes())), Arc::new("acme".to_owned()));
    let known = Arc::new(known);
    let check = move |mut request: Request<Body>, next: Next| {
        let known = Arc::clone(&known);
        async move {
            let hash = request.headers().get("x-api-key").map(|v| <[u8; 32]>::from(Sha256::digest(v.as_bytes())));
            match hash.and_then(|hash| known.get(&hash)) {
                Some(tenant) => {
                    request.extensions_mut().insert(Arc::clone(tenant));
                    let mut response = next.run(request).await;
                    if headers {
                        let map = response.headers_mut();
                        map.append(RATELIMIT_POLICY, HeaderValue::from_static("\"default\";q=1000000;w=1"));
                        map.append(RATELIMIT, HeaderValue::from_static("\"default\";r=999999;t=1"));
                    }
                    response
                }
                None => StatusCode::UNAUTHORIZED.into_response(),
            }
        }
    };
    router.layer(axum::middleware::from_fn(check))
}
