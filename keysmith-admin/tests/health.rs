//! `/health` and `/ready`: what they answer for an engine whose change feed
//! is, or is not, subscribed, and whose store does not answer.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use keysmith_admin::HealthConfig;
use keysmith_core::feed::{ChangeStream, LocalChangeFeed};
use keysmith_core::store::CacheConfig;
use keysmith_core::{Change, ChangeFeed, Engine, Error, MemoryStore, NewKey, Result};
use tower::ServiceExt as _;

/// A feed whose subscriptions always fail, as one whose server is down.
#[derive(Debug)]
struct Unreachable;

#[async_trait]
impl ChangeFeed for Unreachable {
    async fn publish(&self, _: &Change) -> Result<()> {
        Err(Error::feed("unreachable at 10.1.2.3"))
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        Err(Error::feed("unreachable at 10.1.2.3"))
    }
}

async fn get(app: &Router, path: &str) -> (u16, String) {
    let response = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn ready_is_503_while_the_change_feed_is_not_subscribed_and_health_stays_200() {
    let engine = Engine::builder(Arc::new(MemoryStore::new()))
        .with_cache(CacheConfig::default())
        .with_change_feed(Unreachable)
        .build()
        .unwrap();
    let app: Router = HealthConfig::new(engine.clone()).into_router();
    let (status, body) = get(&app, "/ready").await;
    assert_eq!(status, 503);
    assert_eq!(body, r#"{"status":"not_ready","checks":{"store":"up","change_feed":"unsubscribed"}}"#);
    assert_eq!(get(&app, "/health").await, (200, r#"{"status":"ok"}"#.to_owned()));
    engine.shutdown().await;
}

#[tokio::test]
async fn ready_is_200_once_the_change_feed_is_subscribed() {
    let engine = Engine::builder(Arc::new(MemoryStore::new()))
        .with_cache(CacheConfig::default())
        .with_change_feed(LocalChangeFeed::new())
        .build()
        .unwrap();
    let app: Router = HealthConfig::new(engine.clone()).into_router();
    // The subscription is made by a background task as the engine starts:
    // on this one-thread runtime it runs when the test yields.
    let mut answer = get(&app, "/ready").await;
    for _ in 0..10_000 {
        if answer.0 == 200 {
            break;
        }
        tokio::task::yield_now().await;
        answer = get(&app, "/ready").await;
    }
    assert_eq!(answer, (200, r#"{"status":"ready","checks":{"store":"up","change_feed":"subscribed"}}"#.to_owned()));
    engine.shutdown().await;
}

#[tokio::test]
async fn an_engine_that_only_publishes_changes_is_ready_without_a_subscription() {
    let engine = Engine::builder(Arc::new(MemoryStore::new())).with_change_feed(Unreachable).build().unwrap();
    let app: Router = HealthConfig::new(engine.clone()).into_router();
    let (status, body) = get(&app, "/ready").await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"status":"ready","checks":{"store":"up","change_feed":"publishing"}}"#)
    );
    engine.shutdown().await;
}

/// A feed that refuses to publish while `down` is set.
#[derive(Debug, Default, Clone)]
struct Switchable {
    down: Arc<AtomicBool>,
}

#[async_trait]
impl ChangeFeed for Switchable {
    async fn publish(&self, _: &Change) -> Result<()> {
        if self.down.load(Ordering::SeqCst) { Err(Error::feed("unreachable at 10.1.2.3")) } else { Ok(()) }
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        Err(Error::feed("never subscribed"))
    }
}

#[tokio::test]
async fn a_publisher_whose_feed_fails_says_so_and_stays_ready() {
    let feed = Switchable::default();
    let engine = Engine::builder(Arc::new(MemoryStore::new())).with_change_feed(feed.clone()).build().unwrap();
    let app: Router = HealthConfig::new(engine.clone()).into_router();
    let acme = engine.tenant("app", "acme");
    let key = acme.create_key(NewKey::new("k")).await.unwrap().key.id;

    feed.down.store(true, Ordering::SeqCst);
    acme.suspend_key(key).await.unwrap();
    // Its changes go through the store's change log meanwhile: still ready.
    assert_eq!(
        get(&app, "/ready").await,
        (200, r#"{"status":"ready","checks":{"store":"up","change_feed":"publish_failing"}}"#.to_owned())
    );

    feed.down.store(false, Ordering::SeqCst);
    acme.reactivate_key(key).await.unwrap();
    assert_eq!(
        get(&app, "/ready").await,
        (200, r#"{"status":"ready","checks":{"store":"up","change_feed":"publishing"}}"#.to_owned())
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn metrics_is_not_served_unless_configured() {
    let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
    let app: Router = HealthConfig::new(engine).into_router();
    assert_eq!(get(&app, "/metrics").await.0, 404);
}

#[tokio::test]
async fn ready_is_503_while_the_store_fails_and_says_only_that_it_is_down() {
    let h = support::harness().await;
    let app: Router = HealthConfig::new(h.engine.clone()).into_router();
    h.store.fail(true);
    let (status, body) = get(&app, "/ready").await;
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"status":"not_ready","checks":{"store":"down","change_feed":"none"}}"#),
        "the store's error (its password, its host) stays in the log"
    );
    assert_eq!(get(&app, "/health").await.0, 200);
    h.store.fail(false);
    assert_eq!(get(&app, "/ready").await.0, 200);
}
