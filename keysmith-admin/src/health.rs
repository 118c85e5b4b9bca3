//! Probes for load balancers and orchestrators: `GET /health` (liveness),
//! `GET /ready` (store and change feed) and, opt-in, `GET /metrics`
//! (Prometheus text format).

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keysmith_core::Engine;
use serde::Serialize;

/// How long `/ready` waits for the store's ping unless configured
/// otherwise: a store that takes longer counts as down.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The probe routes, to mount at the root of a service (they need no API
/// key: what they answer names no tenant, key or address):
///
/// | route | answer |
/// |---|---|
/// | `GET /health` | 200 `{"status": "ok"}` while the process serves |
/// | `GET /ready` | 200 when the store answers a ping within the [timeout](Self::with_ping_timeout) and the change feed, if the engine has one, is subscribed; else 503. Body: `{"status": "ready" \| "not_ready", "checks": {"store": "up" \| "down", "change_feed": "subscribed" \| "unsubscribed" \| "publishing" \| "publish_failing" \| "none"}}` (`publishing`: a feed but no cache, so no subscription to wait for; `publish_failing`: so, and its last publish failed, its changes going through the store's change log meanwhile, still ready) |
/// | `GET /metrics` | with `with_metrics` (feature `prometheus`): every metric recorded through the `metrics` facade, in the Prometheus text format |
///
/// `/ready` says which part is down and nothing more: the store's error is
/// logged (target `keysmith::health`), never answered, since it can name
/// hosts and users.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use axum::{Router, body::Body, http::Request};
/// use keysmith_admin::HealthConfig;
/// use keysmith_core::{Engine, MemoryStore};
/// use tower::ServiceExt;
///
/// let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
/// let app: Router = Router::new()
///     .nest("/keysmith/v1", keysmith_admin::router(engine.clone()))
///     .merge(HealthConfig::new(engine).into_router());
///
/// let response = app.oneshot(Request::get("/ready").body(Body::empty())?).await?;
/// assert_eq!(response.status(), 200);
/// let body = axum::body::to_bytes(response.into_body(), 1 << 10).await?;
/// assert_eq!(body, r#"{"status":"ready","checks":{"store":"up","change_feed":"none"}}"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
#[must_use]
pub struct HealthConfig {
    engine: Engine,
    ping_timeout: Duration,
    #[cfg(feature = "prometheus")]
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl std::fmt::Debug for HealthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("HealthConfig");
        debug.field("ping_timeout", &self.ping_timeout);
        #[cfg(feature = "prometheus")]
        debug.field("metrics", &self.metrics.is_some());
        debug.finish_non_exhaustive()
    }
}

impl HealthConfig {
    /// `/health` and `/ready` for this engine; no `/metrics`.
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            #[cfg(feature = "prometheus")]
            metrics: None,
        }
    }

    /// How long `/ready` waits for the store's ping.
    pub fn with_ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = timeout;
        self
    }

    /// Serves `GET /metrics` from this recorder's handle. Install the
    /// recorder once per process
    /// (`PrometheusBuilder::new().install_recorder()`), and register
    /// `keysmith_core::hooks::MetricsPlugin` on the engine for the
    /// validation metrics.
    #[cfg(feature = "prometheus")]
    pub fn with_metrics(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// The routes, to merge at the root of the service.
    pub fn into_router<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        #[cfg(feature = "prometheus")]
        let metrics = self.metrics.clone();
        let router = Router::new().route("/health", get(health)).route("/ready", get(ready));
        #[cfg(feature = "prometheus")]
        let router = match metrics {
            Some(handle) => router.route("/metrics", get(move || std::future::ready(render_metrics(&handle)))),
            None => router,
        };
        router.with_state(self)
    }
}

/// What `GET /ready` answers, for a service on another framework that
/// serves its own probe (see [`readiness`]); serialized as the route's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// Each part's state.
    pub checks: Checks,
}

impl Readiness {
    /// True when the service is ready: the store is up and the change feed,
    /// if any, is not lost. A probe answers 200 then, else 503.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

/// Each part [`Readiness`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Checks {
    /// `up` or `down`.
    pub store: &'static str,
    /// `subscribed`, `unsubscribed`, `publishing` (a feed but no cache, so
    /// no subscription to wait for), `publish_failing` (so, and its last
    /// publish failed: the feed is unreachable, changes go through the
    /// store's change log; still ready) or `none`.
    pub change_feed: &'static str,
}

/// Whether `engine` can serve, as `GET /ready` answers it: its store's ping
/// (answered within `ping_timeout`; [`DEFAULT_PING_TIMEOUT`] is the
/// route's default) and its change feed. The store's error is logged
/// (target `keysmith::health`), never returned, since it can name hosts and
/// users.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use keysmith_admin::{DEFAULT_PING_TIMEOUT, readiness};
/// use keysmith_core::{Engine, MemoryStore};
///
/// let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
/// let ready = readiness(&engine, DEFAULT_PING_TIMEOUT).await;
/// assert!(ready.is_ready());
/// assert_eq!(serde_json::to_string(&ready)?, r#"{"status":"ready","checks":{"store":"up","change_feed":"none"}}"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub async fn readiness(engine: &Engine, ping_timeout: Duration) -> Readiness {
    let store = match tokio::time::timeout(ping_timeout, engine.store().ping()).await {
        Ok(Ok(())) => "up",
        Ok(Err(error)) => {
            tracing::warn!(target: "keysmith::health", %error, "readiness: the store did not answer its ping");
            "down"
        }
        Err(_) => {
            tracing::warn!(target: "keysmith::health", timeout = ?ping_timeout, "readiness: the store's ping timed out");
            "down"
        }
    };
    let change_feed = match engine.feed_status() {
        None => "none",
        // Without a cache the engine only publishes: nothing to keep fresh,
        // no subscription to wait for. Its changes reach the fleet through
        // the store's change log while the feed fails, so it stays ready.
        Some(status) if engine.cache_stats().is_none() && status.publish_failing => "publish_failing",
        Some(_) if engine.cache_stats().is_none() => "publishing",
        Some(status) if status.subscribed => "subscribed",
        Some(_) => "unsubscribed",
    };
    let ready = store == "up" && change_feed != "unsubscribed";
    Readiness { status: if ready { "ready" } else { "not_ready" }, checks: Checks { store, change_feed } }
}

async fn health() -> Response {
    no_store((StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response())
}

async fn ready(State(config): State<HealthConfig>) -> Response {
    let readiness = readiness(&config.engine, config.ping_timeout).await;
    let status = if readiness.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    no_store((status, Json(readiness)).into_response())
}

/// The Prometheus text exposition of everything recorded so far.
#[cfg(feature = "prometheus")]
fn render_metrics(handle: &metrics_exporter_prometheus::PrometheusHandle) -> Response {
    // Histograms are drained into their summaries by upkeep; without the
    // exporter's own upkeep task (not started by `install_recorder`), each
    // scrape runs it.
    handle.run_upkeep();
    let mut response = handle.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    no_store(response)
}

/// Probes answer the present: no cache may keep them.
fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
