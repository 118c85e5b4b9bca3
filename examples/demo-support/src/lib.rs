//! What the Keysmith web demos (`example-axum`, `example-actix`) share, so
//! that they differ only in their framework's wiring: settings from the
//! environment, the store, the demo keys, the instructions they print, the
//! demo's users "database" and graceful shutdown.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = demo_support::Settings::from_env(3000)?;
//! let engine = demo_support::open_engine(&settings).await?;
//! let keys = demo_support::create_demo_keys(&engine).await?;
//! demo_support::print_instructions("axum", "http://127.0.0.1:3000", &settings.database_url, &keys);
//! // …serve until demo_support::shutdown_signal() resolves, then:
//! demo_support::finish(&engine).await;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keysmith_admin::{GithubSecretScanning, Readiness, Server};
use keysmith_core::hooks::MetricsPlugin;
use keysmith_core::http::ApiKey;
use keysmith_core::store::{CacheConfig, Page};
use keysmith_core::{
    Credits, Engine, Environment, LegacyKeys, LimitBy, NewKey, Policy, PolicySpec, RawKey, Store, TenantEngine,
};
use keysmith_redis::{OutagePolicy, RedisChangeFeed, RedisConfig, RedisQuotas, RedisRateLimiter};
use keysmith_sqlx::{PgChangeFeed, PgStore};
use metrics_exporter_prometheus::PrometheusBuilder;
pub use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The store used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://keysmith-demo.db";
/// The application the demo keys belong to; the demos accept no other.
pub const APP_ID: &str = "keysmith-demo";
/// The tenant the demo keys belong to.
pub const TENANT_ID: &str = "demo";
/// The realm of the demos' `WWW-Authenticate` challenges.
pub const REALM: &str = "keysmith-demo";
/// The name of the rate-limit policy of the limited key.
pub const LIMITED_POLICY: &str = "demo-limited";
/// The name of the policy whose limit the owner's keys share.
pub const OWNER_POLICY: &str = "demo-owner-shared";
/// How often a `local_first` Redis limiter syncs with Redis in the demos.
/// The variable naming where GitHub's secret scanning public keys are
/// fetched from (GitHub's own URL when unset).
pub const GITHUB_KEYS_URL_VAR: &str = "KEYSMITH_GITHUB_KEYS_URL";
/// The variable listing the legacy key prefixes the demos accept for their
/// application (comma-separated, e.g. `mk`: keys imported with
/// `keysmith import` that start `mk_` validate as they are).
pub const LEGACY_PREFIXES_VAR: &str = "KEYSMITH_LEGACY_PREFIXES";
const LOCAL_FIRST_SYNC: Duration = Duration::from_millis(100);

/// An error of the demo's setup, for `main` to print.
pub type BoxError = Box<dyn std::error::Error>;

/// What the demos read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `DATABASE_URL`: `postgres://…`, `sqlite://…` or `mysql://…`; default
    /// [`DEFAULT_DATABASE_URL`].
    pub database_url: String,
    /// `PORT`, or the demo's default.
    pub port: u16,
    /// `KEYSMITH_HEADER_TIMEOUT` (seconds, 1 to 3600; default 10, as
    /// `keysmith serve`): a client that has not sent a whole request head
    /// within it is disconnected.
    pub header_timeout: Duration,
    /// `KEYSMITH_SHUTDOWN_TIMEOUT` (seconds, 0 to 3600; default 10, as
    /// `keysmith serve`): after Ctrl-C or SIGTERM, requests in flight get
    /// this long; then open connections are dropped and the queued usage is
    /// written.
    pub shutdown_timeout: Duration,
    /// `KEYSMITH_METRICS` (`1` or `true`; default off, as `keysmith serve
    /// --metrics`): the engine counts validations and the demo serves them,
    /// with every other metric Keysmith records, at `GET /metrics`.
    pub metrics: bool,
}

/// Logs on stderr what the engine and the admin API log (a store that went
/// down, a leaked-key alert, a hook that failed; never a raw key), as
/// `RUST_LOG` says (`target=level` directives, `keysmith=debug,warn`);
/// without it warnings and Keysmith's own notices.
///
/// # Errors
/// When `RUST_LOG` does not parse.
pub fn init_logging() -> Result<(), BoxError> {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            directives.parse::<Targets>().map_err(|error| format!("RUST_LOG {directives:?} does not parse: {error}"))?
        }
        _ => Targets::new().with_default(LevelFilter::WARN).with_target("keysmith", LevelFilter::INFO),
    };
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    tracing_subscriber::registry().with(filter).with(lines).try_init()?;
    Ok(())
}

impl Settings {
    /// Reads `DATABASE_URL`, `PORT` (`default_port` when unset),
    /// `KEYSMITH_HEADER_TIMEOUT`, `KEYSMITH_SHUTDOWN_TIMEOUT` and
    /// `KEYSMITH_METRICS`.
    ///
    /// # Errors
    /// When `PORT` is not a port number, a timeout not a number of seconds
    /// in its range, or `KEYSMITH_METRICS` neither on nor off.
    pub fn from_env(default_port: u16) -> Result<Self, BoxError> {
        let var = |name: &str| std::env::var(name).ok();
        Self::from_vars(
            [
                var("DATABASE_URL"),
                var("PORT"),
                var("KEYSMITH_HEADER_TIMEOUT"),
                var("KEYSMITH_SHUTDOWN_TIMEOUT"),
                var("KEYSMITH_METRICS"),
            ],
            default_port,
        )
    }

    fn from_vars(vars: [Option<String>; 5], default_port: u16) -> Result<Self, BoxError> {
        let [database_url, port, header_timeout, shutdown_timeout, metrics] = vars;
        let port = match port {
            Some(port) => port.parse().map_err(|_| format!("PORT must be a port number, not {port:?}"))?,
            None => default_port,
        };
        let header_timeout = seconds("KEYSMITH_HEADER_TIMEOUT", header_timeout, Server::MIN_HEADER_TIMEOUT)?;
        let shutdown_timeout = seconds("KEYSMITH_SHUTDOWN_TIMEOUT", shutdown_timeout, Duration::ZERO)?;
        let metrics = match metrics.as_deref().map(str::trim) {
            None | Some("" | "0" | "false") => false,
            Some("1" | "true") => true,
            Some(other) => return Err(format!("KEYSMITH_METRICS must be 1, true, 0 or false, not {other:?}").into()),
        };
        Ok(Self {
            database_url: database_url.unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
            port,
            header_timeout: header_timeout.unwrap_or(keysmith_admin::DEFAULT_HEADER_TIMEOUT),
            shutdown_timeout: shutdown_timeout.unwrap_or(keysmith_admin::DEFAULT_SHUTDOWN_TIMEOUT),
            metrics,
        })
    }
}

/// The timeout in variable `name`: whole seconds (`10` or `10s`) from `min`
/// to [`Server::MAX_TIMEOUT`].
fn seconds(name: &str, value: Option<String>, min: Duration) -> Result<Option<Duration>, BoxError> {
    let Some(value) = value else { return Ok(None) };
    let max = Server::MAX_TIMEOUT;
    let timeout = value.strip_suffix('s').unwrap_or(&value).parse().ok().map(Duration::from_secs);
    match timeout {
        Some(timeout) if (min..=max).contains(&timeout) => Ok(Some(timeout)),
        _ => {
            Err(format!("{name} must be whole seconds from {} to {}, not {value:?}", min.as_secs(), max.as_secs())
                .into())
        }
    }
}

/// The engine of the demos: PostgreSQL, SQLite or MySQL after the URL's scheme,
/// migrated on every start, with the engine's cache so validation usually
/// does no database I/O. Keys are made for the `test` environment.
///
/// Several instances can share one database: with `REDIS_URL` set they
/// share rate limits and quotas in Redis and hear each other's revocations
/// over Redis pub/sub; on PostgreSQL without Redis, over `LISTEN`/`NOTIFY`.
/// `REDIS_RATE_LIMIT=local_first` decides limits in process first and syncs
/// with Redis every 100 ms (`strict`, one Redis round trip per check, is the
/// default). `REDIS_OUTAGE=fail_closed` answers 503 while Redis is down
/// (`fail_open`, deciding in process, is the default).
/// `KEYSMITH_LEGACY_PREFIXES=mk` accepts imported keys of the
/// application's own format (`mk_…`) as they are. With
/// [`Settings::metrics`] the engine counts validations for `/metrics`.
///
/// # Errors
/// When the store (or Redis) cannot be reached or migrated.
pub async fn open_engine(settings: &Settings) -> Result<Engine, BoxError> {
    let database_url = settings.database_url.as_str();
    let redis_url = std::env::var("REDIS_URL").ok().filter(|url| !url.is_empty());
    let postgres = database_url.starts_with("postgres://") || database_url.starts_with("postgresql://");
    let builder = if postgres && redis_url.is_none() {
        let store = PgStore::connect(database_url).await?;
        store.migrate().await?;
        let feed = PgChangeFeed::new(store.pool().clone());
        Engine::builder(store).with_change_feed(feed)
    } else {
        let store = keysmith_sqlx::connect(database_url).await?;
        store.migrate().await?;
        Engine::builder(store)
    };
    let builder = match redis_url {
        Some(url) => {
            let outage = match std::env::var("REDIS_OUTAGE").ok().as_deref() {
                None | Some("" | "fail_open") => OutagePolicy::FailOpen,
                Some("fail_closed") => OutagePolicy::FailClosed,
                Some(other) => {
                    return Err(format!("REDIS_OUTAGE must be fail_open or fail_closed, not {other:?}").into());
                }
            };
            let config = RedisConfig::connect(&url).await?.with_outage_policy(outage);
            let limiter = RedisRateLimiter::new(config.clone());
            let limiter = match std::env::var("REDIS_RATE_LIMIT").ok().as_deref() {
                None | Some("" | "strict") => limiter,
                Some("local_first") => limiter.local_first(LOCAL_FIRST_SYNC)?,
                Some(other) => {
                    return Err(format!("REDIS_RATE_LIMIT must be strict or local_first, not {other:?}").into());
                }
            };
            builder
                .with_rate_limiter(limiter)
                .with_quotas(RedisQuotas::new(config))
                .with_change_feed(RedisChangeFeed::connect(&url).await?)
        }
        None => builder,
    };
    let builder = if settings.metrics { builder.with_plugin(MetricsPlugin::new()) } else { builder };
    let legacy = std::env::var(LEGACY_PREFIXES_VAR).unwrap_or_default();
    Ok(builder
        .with_cache(CacheConfig::default())
        .with_environment(Environment::Test)
        .with_legacy_keys(LegacyKeys::from_list(APP_ID, &legacy))
        .build()?)
}

/// GitHub's secret scanning alerts for `engine`'s keys, verified with the
/// public keys at `KEYSMITH_GITHUB_KEYS_URL` (GitHub's when unset). Both
/// demos serve it at `POST /keysmith/v1/secret-scanning/github`.
pub fn secret_scanning(engine: &Engine) -> GithubSecretScanning {
    let scanning = GithubSecretScanning::new(engine.clone());
    match std::env::var(GITHUB_KEYS_URL_VAR) {
        Ok(url) if !url.is_empty() => scanning.with_keys_url(url),
        _ => scanning,
    }
}

/// The secrets of the keys made on each start.
#[derive(Debug)]
pub struct DemoKeys {
    /// Scope `read:users`.
    pub read: RawKey,
    /// Scopes `read:users write:users keysmith:admin keysmith:verify`: it
    /// may call every route of the admin API, `POST /verify` included.
    pub admin: RawKey,
    /// Scope `read:users`, 3 requests per 10 seconds.
    pub limited: RawKey,
    /// Scope `read:users`, 2 prepaid uses (credits).
    pub metered: RawKey,
    /// Two keys of one owner (`demo-customer`), scope `read:users`, sharing
    /// one budget of 3 requests per 10 seconds (`limit_by: owner`).
    pub owned: [RawKey; 2],
}

/// The owner of the demo's two owned keys.
pub const DEMO_OWNER: &str = "demo-customer";

/// Creates fresh demo keys. The rate-limit policy is kept by name, so
/// restarts on the same database reuse it.
///
/// # Errors
/// When the store fails.
pub async fn create_demo_keys(engine: &Engine) -> keysmith_core::Result<DemoKeys> {
    let demo = engine.tenant(APP_ID, TENANT_ID);
    let policy =
        keep_policy(&demo, PolicySpec::new(LIMITED_POLICY).with_rate_limit(3, Duration::from_secs(10))).await?;
    let shared =
        PolicySpec::new(OWNER_POLICY).with_rate_limit(3, Duration::from_secs(10)).with_limit_by(LimitBy::Owner);
    let shared = keep_policy(&demo, shared).await?;
    let read = demo.create_key(NewKey::new("demo reader").with_scopes(["read:users"])).await?;
    let admin =
        NewKey::new("demo admin").with_scopes(["read:users", "write:users", "keysmith:admin", "keysmith:verify"]);
    let admin = demo.create_key(admin).await?;
    let limited =
        demo.create_key(NewKey::new("demo limited").with_scopes(["read:users"]).with_policy(policy.id)).await?;
    let metered =
        demo.create_key(NewKey::new("demo metered").with_scopes(["read:users"]).with_credits(Credits::new(2))).await?;
    let mut owned = Vec::with_capacity(2);
    for name in ["demo customer laptop", "demo customer CI"] {
        let new = NewKey::new(name).with_scopes(["read:users"]).with_owner(DEMO_OWNER).with_policy(shared.id);
        owned.push(demo.create_key(new).await?.raw);
    }
    let [first, second]: [RawKey; 2] = owned.try_into().expect("two keys");
    Ok(DemoKeys {
        read: read.raw,
        admin: admin.raw,
        limited: limited.raw,
        metered: metered.raw,
        owned: [first, second],
    })
}

/// Creates the policy `spec` names, or updates it to `spec` when a
/// restart on the same database finds it.
async fn keep_policy(demo: &TenantEngine, spec: PolicySpec) -> keysmith_core::Result<Policy> {
    let existing = demo.list_policies(Page::new(Page::MAX_LIMIT, 0)).await?;
    match existing.into_iter().find(|policy| policy.name == spec.name) {
        Some(policy) => demo.update_policy(policy.id, spec).await,
        None => demo.create_policy(spec).await,
    }
}

/// Prints where the demo listens, the fresh keys as
/// `KEYSMITH_DEMO_*_KEY=…` lines and curl commands for every route.
pub fn print_instructions(framework: &str, base: &str, database_url: &str, keys: &DemoKeys) {
    println!("Keysmith {framework} demo on {base} (store: {})", redact_url(database_url));
    println!();
    println!("Fresh demo keys (paste these lines into your shell):");
    println!("KEYSMITH_DEMO_READ_KEY={}", keys.read.expose());
    println!("KEYSMITH_DEMO_ADMIN_KEY={}", keys.admin.expose());
    println!("KEYSMITH_DEMO_LIMITED_KEY={}", keys.limited.expose());
    println!("KEYSMITH_DEMO_METERED_KEY={}", keys.metered.expose());
    println!("KEYSMITH_DEMO_OWNER_KEY_1={}", keys.owned[0].expose());
    println!("KEYSMITH_DEMO_OWNER_KEY_2={}", keys.owned[1].expose());
    println!();
    println!("Then try:");
    println!("  curl {base}/health    # and /ready; /metrics when started with KEYSMITH_METRICS=1");
    println!("  curl -H \"Authorization: Bearer $KEYSMITH_DEMO_READ_KEY\" {base}/me");
    println!("  curl -H \"X-API-Key: $KEYSMITH_DEMO_READ_KEY\" {base}/users");
    println!(
        "  curl -i -X POST -H \"Authorization: Bearer $KEYSMITH_DEMO_READ_KEY\" {base}/users    # 403: needs write:users"
    );
    println!(
        "  curl -X POST -H \"Authorization: Bearer $KEYSMITH_DEMO_ADMIN_KEY\" -H 'content-type: application/json' \
         -d '{{\"name\":\"Grace\"}}' {base}/users"
    );
    println!(
        "  for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}}\\n' \
         -H \"Authorization: Bearer $KEYSMITH_DEMO_LIMITED_KEY\" {base}/users; done    # 200 200 200 429"
    );
    println!(
        "  for i in 1 2 3; do curl -s -o /dev/null -w '%{{http_code}}\\n' \
         -H \"Authorization: Bearer $KEYSMITH_DEMO_METERED_KEY\" {base}/users; done    # 200 200 429: 2 credits"
    );
    println!(
        "  for k in \"$KEYSMITH_DEMO_OWNER_KEY_1\" \"$KEYSMITH_DEMO_OWNER_KEY_2\" \"$KEYSMITH_DEMO_OWNER_KEY_1\" \
         \"$KEYSMITH_DEMO_OWNER_KEY_2\"; do curl -s -o /dev/null -w '%{{http_code}}\\n' -H \"Authorization: Bearer $k\" \
         {base}/users; done    # 200 200 200 429: two keys of owner {DEMO_OWNER}, one budget"
    );
    println!("  curl -i {base}/me    # 401 without a key");
    println!();
    println!(
        "GitHub secret scanning alerts: POST {base}/keysmith/v1/secret-scanning/github (signed by GitHub; \
         keys from {GITHUB_KEYS_URL_VAR} or GitHub's)"
    );
    println!();
    println!("Ctrl-C stops the server and writes the queued usage records.");
}

/// Resolves on Ctrl-C, or SIGTERM on Unix, and says so. The handlers are
/// installed when this is called (call it before printing the address), so
/// a signal sent from then on stops the demo gracefully.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let signal = keysmith_admin::shutdown_signal();
    async move {
        signal.await;
        println!("Shutting down…");
    }
}

/// After the server stopped: writes the queued usage records and says how
/// many were written, dropped (queue full) and lost (the store kept
/// failing their batch).
pub async fn finish(engine: &Engine) {
    engine.shutdown().await;
    let stats = engine.usage_stats();
    println!(
        "Stopped; usage records written: {}, dropped: {}, failed: {}.",
        stats.written, stats.dropped, stats.failed
    );
}

/// The recorder behind `GET /metrics`, installed for the process when
/// [`Settings::metrics`] is on (`None` when off).
///
/// # Errors
/// When another recorder is installed already.
pub fn install_metrics(settings: &Settings) -> Result<Option<PrometheusHandle>, BoxError> {
    if !settings.metrics {
        return Ok(None);
    }
    let handle =
        PrometheusBuilder::new().install_recorder().map_err(|error| format!("cannot serve metrics: {error}"))?;
    Ok(Some(handle))
}

/// `GET /ready` for a framework that cannot mount
/// [`keysmith_admin::HealthConfig`]'s routes: status and body as they
/// answer it (200 when the store answers a ping and the change feed, if
/// any, is subscribed; else 503).
pub async fn ready(engine: &Engine) -> (u16, Readiness) {
    let readiness = keysmith_admin::readiness(engine, keysmith_admin::DEFAULT_PING_TIMEOUT).await;
    (if readiness.is_ready() { 200 } else { 503 }, readiness)
}

/// `GET /metrics` for a framework that cannot mount
/// [`keysmith_admin::HealthConfig`]'s routes: everything recorded so far,
/// in the Prometheus text format.
#[must_use]
pub fn metrics_text(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    handle.render()
}

/// `GET /me`: what the request's key says about itself.
#[must_use]
pub fn me(key: &ApiKey) -> Value {
    json!({
        "id": key.id(),
        "name": key.name(),
        "app": key.tenant().app_id,
        "tenant": key.tenant().tenant_id,
        "environment": key.environment(),
        "scopes": key.scopes(),
        "owner_id": key.key().owner_id,
        "credits_remaining": key.validation().credits.map(|credits| credits.remaining),
    })
}

/// The demo's "database" of users; cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct Users(Arc<Mutex<Vec<User>>>);

impl Default for Users {
    /// Two users to start with.
    fn default() -> Self {
        let seed = ["Ada Lovelace", "Alan Turing"].map(|name| User { name: name.to_owned(), created_by: None });
        Self(Arc::new(Mutex::new(seed.into_iter().collect())))
    }
}

impl Users {
    /// Every user, oldest first.
    #[must_use]
    pub fn list(&self) -> Vec<User> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Adds a user created by `key`.
    pub fn create(&self, new: NewUser, key: &ApiKey) -> User {
        let user = User { name: new.name, created_by: Some(key.id().to_string()) };
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(user.clone());
        user
    }
}

/// A user of the demo.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// The name.
    pub name: String,
    /// The key that created the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// The body of `POST /users`.
#[derive(Debug, Deserialize)]
pub struct NewUser {
    /// The name.
    pub name: String,
}

/// The URL without its password, for printing.
#[must_use]
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use keysmith_core::MemoryStore;

    use super::*;

    #[tokio::test]
    async fn restarting_on_the_same_store_reuses_the_policies() {
        let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
        create_demo_keys(&engine).await.unwrap();
        create_demo_keys(&engine).await.unwrap();
        let policies = engine.tenant(APP_ID, TENANT_ID).list_policies(Page::default()).await.unwrap();
        let mut names: Vec<_> = policies.iter().map(|policy| policy.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, [LIMITED_POLICY, OWNER_POLICY]);
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(redact_url("postgres://u:secret@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact_url("sqlite://keysmith-demo.db"), "sqlite://keysmith-demo.db");
    }

    /// The settings with `PORT` and the two timeouts set to these.
    fn with(port: Option<&str>, header: Option<&str>, shutdown: Option<&str>) -> Result<Settings, BoxError> {
        Settings::from_vars([None, port, header, shutdown, None].map(|var| var.map(str::to_owned)), 3001)
    }

    fn with_metrics(value: &str) -> Result<Settings, BoxError> {
        Settings::from_vars([None, None, None, None, Some(value.to_owned())], 3001)
    }

    #[test]
    fn metrics_are_off_unless_asked_for() {
        assert!(!with(None, None, None).unwrap().metrics);
        for (value, on) in [("1", true), ("true", true), ("0", false), ("false", false), ("", false)] {
            assert_eq!(with_metrics(value).unwrap().metrics, on, "{value:?}");
        }
        let error = with_metrics("yes please").unwrap_err().to_string();
        assert_eq!(error, r#"KEYSMITH_METRICS must be 1, true, 0 or false, not "yes please""#);
    }

    #[test]
    fn port_defaults_per_demo_and_must_be_a_number() {
        let defaults = with(None, None, None).unwrap();
        let expected = Settings {
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            port: 3001,
            header_timeout: keysmith_admin::DEFAULT_HEADER_TIMEOUT,
            shutdown_timeout: keysmith_admin::DEFAULT_SHUTDOWN_TIMEOUT,
            metrics: false,
        };
        assert_eq!(defaults, expected);
        assert_eq!(with(Some("8080"), None, None).unwrap().port, 8080);
        assert!(with(Some("http"), None, None).is_err());
    }

    #[test]
    fn timeouts_are_whole_seconds_within_their_range() {
        let settings = with(None, Some("5"), Some("0s")).unwrap();
        assert_eq!((settings.header_timeout, settings.shutdown_timeout), (Duration::from_secs(5), Duration::ZERO));
        assert_eq!(with(None, Some("3600s"), Some("3600")).unwrap().shutdown_timeout, Duration::from_secs(3600));
        for bad in ["0", "3601", "1.5", "-1", "10m", "", "ten"] {
            let error = with(None, Some(bad), None).unwrap_err().to_string();
            assert!(error.starts_with("KEYSMITH_HEADER_TIMEOUT must be whole seconds from 1 to 3600"), "{error}");
        }
        assert!(with(None, None, Some("3601")).is_err());
    }
}
