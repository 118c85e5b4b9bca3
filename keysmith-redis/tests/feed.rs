//! `RedisChangeFeed` against a real Redis: a subscription whose connection
//! stays open but carries nothing (behind a proxy that went silent) is
//! noticed by its missed heartbeats, and bounds how stale a cache can be; a
//! publisher cut off alone tells the others through the store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use keysmith_core::feed::FeedHeartbeat;
use keysmith_core::store::CacheConfig;
use keysmith_core::{Engine, KeyId, MemoryStore, Store};
use keysmith_tests::feed_cases::{self, ProxiedPair};
use keysmith_tests::proxy::SilentProxy;

/// Runs `case` on two engines on one store and a channel of their own:
/// `a` on the test Redis, `b` on it through a proxy.
async fn on_a_proxied_pair(case: impl for<'a> AsyncFn(ProxiedPair<'a>)) {
    let Some(url) = common::redis_url() else { return };
    let proxy = SilentProxy::start(common::redis_addr(&url).await).await;
    // Long enough that only the feed (or its loss) can explain an eviction.
    let cache = CacheConfig::default().with_positive_ttl(Duration::from_secs(300));
    let heartbeat = FeedHeartbeat::default();
    let channel = format!("keysmith-test-feed:{}", KeyId::new());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let engine = async |url: &str| {
        let feed = common::feed(url).await.with_channel(&channel).unwrap();
        let builder = Engine::builder(Arc::clone(&store)).with_cache(cache.clone()).with_change_feed(feed);
        builder.with_feed_heartbeat(heartbeat).build().unwrap()
    };
    let (a, b) = (engine(&url).await, engine(&format!("redis://{}", proxy.addr())).await);
    case(ProxiedPair { a: &a, b: &b, proxy: &proxy, cache: &cache, heartbeat, feed: "RedisChangeFeed" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_silent_proxy_the_subscription_is_lost_and_staleness_stays_within_the_bound() {
    on_a_proxied_pair(feed_cases::a_silent_subscription_is_lost_and_staleness_stays_within_the_bound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_published_behind_a_silent_proxy_reaches_an_engine_on_redis_within_the_bound() {
    if common::cluster() {
        // A cluster client publishes to the nodes it discovers, past the
        // proxy in front of the first: one proxy cannot cut it off.
        println!("skipping on a Redis Cluster: a proxy in front of one node does not cut a publisher off");
        return;
    }
    on_a_proxied_pair(feed_cases::a_change_made_behind_a_silent_proxy_reaches_the_others_through_the_store).await;
}
