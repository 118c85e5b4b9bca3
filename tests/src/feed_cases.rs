//! Cases every network change feed must pass, on real servers: the same
//! body runs over `RedisChangeFeed` (keysmith-redis/tests/feed.rs) and
//! `PgChangeFeed` (tests/tests/fleet.rs).

use std::time::Duration;

use keysmith_core::feed::FeedHeartbeat;
use keysmith_core::store::CacheConfig;
use keysmith_core::{Engine, NewKey, Refusal, RequestContext, ValidationError};

use crate::proxy::SilentProxy;
use crate::wait;

/// What a busy test machine may add to a bound.
const SLACK: Duration = Duration::from_millis(1500);
/// How long a poll waits for anything before the case fails.
const CAP: Duration = Duration::from_secs(15);

/// Two engines on one store and one feed: `a` reaches the feed's server
/// directly, `b` (its subscription and its publishing) through `proxy`.
#[derive(Debug)]
pub struct ProxiedPair<'a> {
    /// The engine that reaches the feed directly.
    pub a: &'a Engine,
    /// The engine behind the proxy.
    pub b: &'a Engine,
    /// The proxy in front of `b`'s feed.
    pub proxy: &'a SilentProxy,
    /// What both engines' caches were built with.
    pub cache: &'a CacheConfig,
    /// What both engines' heartbeats were built with.
    pub heartbeat: FeedHeartbeat,
    /// The feed's name, for what the case prints.
    pub feed: &'static str,
}

/// A feed's connections go silent under `b` (open, carrying nothing): `b`
/// counts its subscription lost by the missed heartbeats, a key revoked on
/// `a` is refused by `b` within the heartbeat deadline plus the outage TTL,
/// and once the path is back `b` subscribes again and changes flow both
/// ways.
///
/// # Panics
/// When the feed does not behave so.
pub async fn a_silent_subscription_is_lost_and_staleness_stays_within_the_bound(pair: ProxiedPair<'_>) {
    let ProxiedPair { a, b, proxy, cache, heartbeat, feed } = pair;
    for engine in [a, b] {
        until("subscribed", async || engine.feed_status().unwrap().subscribed).await;
    }
    let acme = a.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    assert!(!refused(b, created.raw.expose()).await, "b caches the key");
    // A quiet feed stays subscribed on heartbeats.
    tokio::time::sleep(heartbeat.deadline() * 2).await;
    let status = b.feed_status().unwrap();
    assert!(status.subscribed && status.losses == 0 && status.heartbeats_received > 0, "{status:?}");

    proxy.go_silent();
    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    let took = until("refused", async || refused(b, created.raw.expose()).await).await;
    let bound = heartbeat.deadline() + cache.outage_ttl();
    println!("{feed} behind a silent proxy: revocation refused after {took:?} (bound {bound:?})");
    assert!(took <= bound + SLACK, "refused after {took:?}, bound {bound:?}");
    let status = b.feed_status().unwrap();
    assert!(!status.subscribed && status.losses == 1 && status.missed_heartbeats == 1, "{status:?}");
    assert_eq!(b.cache_stats().unwrap().positive_ttl, cache.outage_ttl());

    // Still silent: b stays unsubscribed, and a change is seen within the
    // outage TTL.
    let other = acme.create_key(NewKey::new("other")).await.unwrap();
    assert!(!refused(b, other.raw.expose()).await);
    acme.revoke_key(other.key.id, "leaked").await.unwrap();
    let took = until("refused", async || refused(b, other.raw.expose()).await).await;
    assert!(took <= cache.outage_ttl() + SLACK, "refused after {took:?}");
    assert!(!b.feed_status().unwrap().subscribed);

    proxy.recover();
    until("resubscribed", async || b.feed_status().unwrap().subscribed).await;
    assert_eq!(b.feed_status().unwrap().subscriptions, 2);
    assert_eq!(b.cache_stats().unwrap().positive_ttl, cache.positive_ttl());
    let third = acme.create_key(NewKey::new("third")).await.unwrap();
    assert!(!refused(b, third.raw.expose()).await);
    acme.revoke_key(third.key.id, "leaked").await.unwrap();
    until("refused", async || refused(b, third.raw.expose()).await).await;
    // And what b publishes reaches a again: b's publishing connection,
    // silent too, was replaced.
    let fourth = acme.create_key(NewKey::new("fourth")).await.unwrap();
    assert!(!refused(a, fourth.raw.expose()).await);
    b.tenant("app", "acme").revoke_key(fourth.key.id, "leaked").await.unwrap();
    assert_eq!(b.feed_status().unwrap().publish_failures, 0);
    until("refused by a", async || refused(a, fourth.raw.expose()).await).await;
}

/// `b` alone is cut off from the feed (its connections through `proxy` go
/// silent) while `a` still hears it: `a` keeps hearing heartbeats, so it
/// stays subscribed on the positive TTL, and a key revoked through `b` is
/// still refused by `a` within the heartbeat deadline (after which `b`'s
/// publish has failed and `b` writes the change to the store's change log)
/// plus one interval (`a`'s next read of the log).
///
/// # Panics
/// When the fleet does not behave so.
pub async fn a_change_made_behind_a_silent_proxy_reaches_the_others_through_the_store(pair: ProxiedPair<'_>) {
    let ProxiedPair { a, b, proxy, heartbeat, feed, .. } = pair;
    for engine in [a, b] {
        until("subscribed", async || engine.feed_status().unwrap().subscribed).await;
    }
    let acme = b.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    assert!(!refused(a, created.raw.expose()).await, "a caches the key");

    proxy.go_silent();
    let started = std::time::Instant::now();
    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    let status = b.feed_status().unwrap();
    assert!(status.publish_failures >= 1 && status.logged == 1, "{status:?}");
    until("refused by a", async || refused(a, created.raw.expose()).await).await;
    let took = started.elapsed();
    let bound = heartbeat.deadline() + heartbeat.interval();
    println!(
        "{feed}, the publisher behind a silent proxy: revocation refused elsewhere after {took:?} (bound {bound:?})"
    );
    assert!(took <= bound + SLACK, "refused after {took:?}, bound {bound:?}");
    let status = a.feed_status().unwrap();
    assert!(status.subscribed && status.losses == 0 && status.from_log == 1, "a heard the feed throughout: {status:?}");
}

/// [`wait::until`] within [`CAP`].
async fn until(what: &str, done: impl AsyncFnMut() -> bool) -> Duration {
    wait::until(what, CAP, done).await
}

/// Whether `engine` refuses `raw` as revoked (false when it accepts it).
async fn refused(engine: &Engine, raw: &str) -> bool {
    match engine.validate(raw, &RequestContext::new()).await {
        Err(ValidationError::Refused(refusal)) => refusal == Refusal::Revoked,
        Err(ValidationError::Failed(error)) => panic!("validation failed: {error}"),
        Ok(_) => false,
    }
}
