use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::{Change, ChangeFeed, ChangeStream, FeedHeartbeat, LocalChangeFeed};
use crate::store::{CacheConfig, ProbedStore, StoreOp, StoreProbe};
use crate::{
    Credits, Engine, Error, LimitBy, ManualClock, MemoryStore, NewKey, PolicySpec, Refusal, RequestContext, Result,
    RotationReason, Store, ValidationError,
};

const POSITIVE: Duration = Duration::from_secs(30);
const OUTAGE: Duration = Duration::from_secs(1);

/// A feed whose subscriptions a test can cut, and refuse to restore.
#[derive(Debug)]
struct CuttableFeed {
    inner: LocalChangeFeed,
    cut: watch::Sender<u64>,
    refuse: AtomicBool,
    fail_publish: AtomicBool,
}

impl CuttableFeed {
    fn new() -> Self {
        Self {
            inner: LocalChangeFeed::new(),
            cut: watch::channel(0).0,
            refuse: AtomicBool::new(false),
            fail_publish: AtomicBool::new(false),
        }
    }

    /// Ends every current subscription; new ones are refused while `refuse`.
    fn cut(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::SeqCst);
        self.cut.send_modify(|cuts| *cuts += 1);
    }
}

#[async_trait]
impl ChangeFeed for CuttableFeed {
    async fn publish(&self, change: &Change) -> Result<()> {
        if self.fail_publish.load(Ordering::SeqCst) {
            return Err(Error::feed("feed is down"));
        }
        self.inner.publish(change).await
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Error::feed("feed is down"));
        }
        let mut cut = self.cut.subscribe();
        cut.mark_unchanged();
        let stream = self.inner.subscribe().await?;
        Ok(stream.take_until(async move { cut.changed().await.ok() }).boxed())
    }
}

struct Fleet {
    clock: ManualClock,
    feed: Arc<CuttableFeed>,
    a: Engine,
    b: Engine,
}

/// A clock that moves only when a test says so.
fn clock() -> ManualClock {
    ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 15, 12, 0, 0).unwrap())
}

/// An engine on `store` with a cache of its own on `clock`, on `feed`.
fn engine_on<S: Store + 'static>(store: &Arc<S>, clock: &ManualClock, feed: Arc<dyn ChangeFeed>) -> Engine {
    let cache = CacheConfig::default().with_positive_ttl(POSITIVE).with_outage_ttl(OUTAGE).with_clock(clock.clone());
    Engine::builder(Arc::clone(store))
        .with_clock(clock.clone())
        .with_cache(cache)
        .with_change_feed(feed)
        .with_feed_heartbeat(HEARTBEAT)
        .build()
        .unwrap()
}

async fn fleet() -> Fleet {
    fleet_on(Arc::new(MemoryStore::new())).await
}

async fn fleet_on<S: Store + 'static>(store: Arc<S>) -> Fleet {
    let clock = clock();
    let feed = Arc::new(CuttableFeed::new());
    let engine = || engine_on(&store, &clock, Arc::clone(&feed) as Arc<dyn ChangeFeed>);
    let (a, b) = (engine(), engine());
    for engine in [&a, &b] {
        eventually(|| engine.feed_status().unwrap().subscribed).await;
    }
    Fleet { clock, feed, a, b }
}

/// Waits (on the real clock, up to 5 s) until `done` holds.
async fn eventually(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "condition not met within 5 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Validates until the answer is a refusal (5 s at most), and returns it.
async fn refused_eventually(engine: &Engine, raw: &str) -> Refusal {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match engine.validate(raw, &RequestContext::new()).await {
            Err(ValidationError::Refused(refusal)) => return refusal,
            Err(ValidationError::Failed(error)) => panic!("validation failed: {error}"),
            Ok(_) => assert!(Instant::now() < deadline, "still accepted after 5 s"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn accepted(engine: &Engine, raw: &str) -> bool {
    engine.validate(raw, &RequestContext::new()).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_engine_is_refused_by_another_before_its_cache_expires() {
    let Fleet { a, b, .. } = fleet().await;
    let acme = a.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    assert!(accepted(&b, created.raw.expose()).await, "b caches the key");

    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    // The cache clock never moves: only the change can evict b's entry.
    assert_eq!(refused_eventually(&b, created.raw.expose()).await, Refusal::Revoked);
    assert!(b.feed_status().unwrap().received >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_rotation_and_scope_changes_reach_other_engines() {
    let Fleet { a, b, .. } = fleet().await;
    let acme = a.tenant("app", "acme");
    let suspended = acme.create_key(NewKey::new("one")).await.unwrap();
    let rotated = acme.create_key(NewKey::new("two").with_scopes(["read"])).await.unwrap();
    for raw in [&suspended.raw, &rotated.raw] {
        assert!(accepted(&b, raw.expose()).await);
    }

    acme.suspend_key(suspended.key.id).await.unwrap();
    assert_eq!(refused_eventually(&b, suspended.raw.expose()).await, Refusal::Suspended);
    acme.reactivate_key(suspended.key.id).await.unwrap();
    eventually_accepted(&b, suspended.raw.expose()).await;

    let read = ["read".to_owned()];
    let scoped = RequestContext::new().with_required_scopes(&read);
    assert!(b.validate(rotated.raw.expose(), &scoped).await.is_ok());
    acme.set_key_scopes(rotated.key.id, &["write"]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.validate(rotated.raw.expose(), &scoped).await.is_ok() {
        assert!(Instant::now() < deadline, "old scopes still granted after 5 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    acme.rotate_key(rotated.key.id, RotationReason::Compromised, None).await.unwrap();
    assert_eq!(refused_eventually(&b, rotated.raw.expose()).await, Refusal::Revoked);
}

async fn eventually_accepted(engine: &Engine, raw: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !accepted(engine, raw).await {
        assert!(Instant::now() < deadline, "still refused after 5 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_tightened_on_one_engine_binds_on_another() {
    let Fleet { a, b, .. } = fleet().await;
    let acme = a.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("office")).await.unwrap();
    let created = acme.create_key(NewKey::new("ci").with_policy(policy.id)).await.unwrap();
    let ctx = RequestContext::new().with_ip("198.51.100.7".parse().unwrap());
    assert!(b.validate(created.raw.expose(), &ctx).await.is_ok(), "b caches the policy");

    acme.update_policy(policy.id, PolicySpec::new("office").with_allowed_ips(["10.0.0.0/8"])).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match b.validate(created.raw.expose(), &ctx).await {
            Err(ValidationError::Refused(Refusal::IpNotAllowed)) => break,
            other => assert!(Instant::now() < deadline, "still {other:?} after 5 s"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_credits_given_on_one_engine_are_spent_on_another_before_its_cache_expires() {
    let Fleet { a, b, .. } = fleet().await;
    let acme = a.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("per-owner").with_limit_by(LimitBy::Owner)).await.unwrap();
    let created = acme.create_key(NewKey::new("ci").with_owner("cust_1").with_policy(policy.id)).await.unwrap();
    let credits = || async { b.validate(created.raw.expose(), &RequestContext::new()).await.unwrap().credits };
    assert_eq!(credits().await, None, "b remembers the owner has no credits");
    assert_eq!(b.cache_stats().unwrap().owners, 1);

    acme.set_owner_credits("cust_1", Some(Credits::new(100))).await.unwrap();
    // The cache clock never moves: only the change can evict b's entry.
    let deadline = Instant::now() + Duration::from_secs(5);
    let spent = loop {
        if let Some(spent) = credits().await {
            break spent;
        }
        assert!(Instant::now() < deadline, "b still spends nothing after 5 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert_eq!(spent.remaining, 99);
    assert_eq!(credits().await.map(|credits| credits.remaining), Some(98));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_drops_the_cache_and_shortens_its_ttl_until_restored() {
    let Fleet { clock, feed, a, b } = fleet().await;
    let acme = a.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    assert!(accepted(&b, created.raw.expose()).await);
    assert_eq!(b.cache_stats().unwrap().keys, 1);
    assert_eq!(b.cache_stats().unwrap().positive_ttl, POSITIVE);

    feed.cut(true);
    eventually(|| b.feed_status().unwrap().losses == 1).await;
    let stats = b.cache_stats().unwrap();
    assert_eq!((stats.keys, stats.positive_ttl), (0, OUTAGE), "cache dropped, outage TTL");
    assert!(!b.feed_status().unwrap().subscribed);

    // A revocation b cannot hear of is seen once the outage TTL has passed.
    assert!(accepted(&b, created.raw.expose()).await);
    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    assert!(accepted(&b, created.raw.expose()).await, "served from b's cache within the outage TTL");
    clock.advance(OUTAGE);
    assert!(!accepted(&b, created.raw.expose()).await, "refused once the outage TTL passed");

    feed.refuse.store(false, Ordering::SeqCst);
    eventually(|| b.feed_status().unwrap().subscribed).await;
    let status = b.feed_status().unwrap();
    assert_eq!((status.subscriptions, status.losses), (2, 1));
    assert_eq!(b.cache_stats().unwrap().positive_ttl, POSITIVE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_is_counted_and_never_fails_the_change() {
    let Fleet { feed, a, .. } = fleet().await;
    let acme = a.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    feed.fail_publish.store(true, Ordering::SeqCst);

    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    let status = a.feed_status().unwrap();
    // At least the first attempt; its retries may have begun.
    assert_eq!(status.published, 0);
    assert!(status.publish_failures >= 1, "{status:?}");
    assert!(!accepted(&a, created.raw.expose()).await, "the publishing engine itself never serves the old state");
}

/// A store whose change log cannot be written: what a change that fails to
/// publish then has is its republishing alone.
#[derive(Debug)]
struct LogUnreachable;

#[async_trait]
impl StoreProbe for LogUnreachable {
    async fn before(&self, op: StoreOp) -> Result<()> {
        if op == StoreOp::log_change { Err(Error::store("the database is unreachable")) } else { Ok(()) }
    }
}

fn log_unreachable() -> Arc<ProbedStore<LogUnreachable>> {
    Arc::new(ProbedStore::new(Arc::new(MemoryStore::new()), Arc::new(LogUnreachable)))
}

#[tokio::test(start_paused = true)]
async fn a_change_that_failed_to_publish_reaches_the_other_engines_once_the_feed_takes_it_again() {
    // Nor can it be logged: only a republish can carry it.
    let Fleet { clock, feed, a, b } = fleet_on(log_unreachable()).await;
    let acme = a.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    assert!(accepted(&b, created.raw.expose()).await, "b caches the key");
    feed.fail_publish.store(true, Ordering::SeqCst);

    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    // While the feed refuses (for less than the heartbeat deadline, after
    // which b would count its subscription lost), the retries at 100, 300
    // and 700 ms fail and b cannot know.
    let refusing = HEARTBEAT.deadline() / 2;
    assert!(pass(&clock, refusing, async || !accepted(&b, created.raw.expose()).await).await.is_none());
    let failures = a.feed_status().unwrap().publish_failures;
    assert_eq!(failures, 4, "the first attempt and three retries");
    // The feed takes changes again (a reconnection, a failover): the
    // revocation reaches b at the next retry (1.5 s after the first
    // attempt), not when b's entry expires.
    feed.fail_publish.store(false, Ordering::SeqCst);
    let took = pass(&clock, HEARTBEAT.deadline(), async || !accepted(&b, created.raw.expose()).await).await;
    let took = took.expect("still accepted a heartbeat deadline after the feed came back");
    assert!(took <= Duration::from_millis(510), "at the retry due 500 ms later: {took:?}");
    let (sender, receiver) = (a.feed_status().unwrap(), b.feed_status().unwrap());
    assert_eq!((sender.published, sender.republished, sender.log_failures), (1, 1, 1));
    assert_eq!(receiver.losses, 0, "b heard it through its subscription, never lost");
}

#[tokio::test]
async fn before_its_first_subscription_the_cache_keeps_found_entries_for_the_outage_ttl() {
    let feed = CuttableFeed::new();
    feed.refuse.store(true, Ordering::SeqCst);
    let engine = Engine::builder(MemoryStore::new())
        .with_cache(CacheConfig::default().with_positive_ttl(POSITIVE).with_outage_ttl(OUTAGE))
        .with_change_feed(feed)
        .build()
        .unwrap();
    assert_eq!(engine.cache_stats().unwrap().positive_ttl, OUTAGE);
    assert!(!engine.feed_status().unwrap().subscribed);
}

#[test]
fn changes_travel_as_json_with_hashes_in_hex_and_no_secret() {
    let tenant = crate::Tenant::new("app", "acme");
    let hash = crate::KeyHash::from_bytes([0xab; 32]);
    let change = Change::Key { tenant, key_id: crate::KeyId::new(), hash: Some(hash) };
    let json = change.to_json().unwrap();
    assert!(json.contains(&"ab".repeat(32)), "{json}");
    assert!(json.contains("\"kind\":\"key\""), "{json}");
    assert_eq!(Change::from_json(&json).unwrap(), change);
    assert!(matches!(Change::from_json("not json"), Err(Error::Feed { .. })));
    assert!(matches!(Change::from_json(r#"{"tenant":"acme"}"#), Err(Error::Feed { .. })), "no kind: not a change");
}

#[test]
fn a_change_of_a_kind_this_version_does_not_know_is_read_as_unknown() {
    let newer = r#"{"kind":"quota_reset","tenant":{"app_id":"app","tenant_id":"acme"},"owner_id":"cust_1"}"#;
    assert_eq!(Change::from_json(newer).unwrap(), Change::Unknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_an_unknown_kind_drops_the_whole_cache_and_is_counted() {
    let Fleet { feed, a, b, .. } = fleet().await;
    let acme = a.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    assert!(accepted(&b, created.raw.expose()).await);
    assert_eq!(b.cache_stats().unwrap().keys, 1);

    let newer = r#"{"kind":"quota_reset","tenant":{"app_id":"app","tenant_id":"acme"}}"#;
    feed.publish(&Change::from_json(newer).unwrap()).await.unwrap();
    eventually(|| b.feed_status().unwrap().unknown == 1).await;
    assert_eq!(b.cache_stats().unwrap().keys, 0, "what the change made stale cannot be told: nothing is kept");
    let status = b.feed_status().unwrap();
    assert!(status.subscribed && status.losses == 0, "the subscription itself is fine: {status:?}");
}

#[test]
fn an_owner_change_travels_as_json() {
    let change = Change::owner(&crate::Tenant::new("app", "acme"), "cust_1");
    let json = change.to_json().unwrap();
    assert_eq!(json, r#"{"kind":"owner","tenant":{"app_id":"app","tenant_id":"acme"},"owner_id":"cust_1"}"#);
    assert_eq!(Change::from_json(&json).unwrap(), change);
}

/// Two engines on one store, each with its own cache on `clock`, sharing
/// `feed`, once both are subscribed; waits by yielding only.
async fn pair(clock: &ManualClock, feed: &Arc<LocalChangeFeed>) -> (Engine, Engine) {
    let store = Arc::new(MemoryStore::new());
    let engine = || engine_on(&store, clock, Arc::clone(feed) as Arc<dyn ChangeFeed>);
    let (a, b) = (engine(), engine());
    for engine in [&a, &b] {
        yield_until(|| engine.feed_status().unwrap().subscribed).await;
    }
    (a, b)
}

/// Yields to the engines' subscription tasks until `done` holds (10 000
/// times at most): no clock moves meanwhile.
async fn yield_until(mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not met after 10 000 yields");
}

#[tokio::test]
async fn credits_given_through_the_new_key_of_a_rotation_bind_the_old_key_on_another_engine() {
    let clock = clock();
    let (a, b) = pair(&clock, &Arc::new(LocalChangeFeed::new())).await;
    let acme = a.tenant("app", "acme");
    let old = acme.create_key(NewKey::new("ci")).await.unwrap();
    let new = acme.rotate_key(old.key.id, RotationReason::Scheduled, Some(Duration::from_secs(3600))).await.unwrap();
    yield_until(|| b.feed_status().unwrap().received == 1).await;
    // b caches both keys of the lineage as having no credits.
    for raw in [&old.raw, &new.raw] {
        assert_eq!(b.validate(raw.expose(), &RequestContext::new()).await.unwrap().credits, None);
    }
    assert_eq!(b.cache_stats().unwrap().keys, 2);

    acme.set_credits(new.key.id, Some(Credits::new(3))).await.unwrap();
    yield_until(|| b.feed_status().unwrap().received == 2).await;
    for _ in 0..3 {
        assert!(accepted(&a, new.raw.expose()).await);
    }
    // The cache clock never moved: only the change can have evicted it.
    for _ in 0..5 {
        let answer = b.validate(old.raw.expose(), &RequestContext::new()).await;
        assert!(
            matches!(answer, Err(ValidationError::Refused(Refusal::CreditsExhausted { .. }))),
            "the old key passed free on b after the balance was spent on a: {answer:?}"
        );
    }
    assert_eq!(b.cache_stats().unwrap().keys, 1, "only the old key, read again");

    // A top-up through the old key reaches b's entry for the new one.
    assert!(!accepted(&b, new.raw.expose()).await);
    assert_eq!(b.cache_stats().unwrap().keys, 2);
    acme.add_credits(old.key.id, 2).await.unwrap();
    yield_until(|| b.feed_status().unwrap().received == 3).await;
    assert_eq!(b.cache_stats().unwrap().keys, 0);
    let spent = b.validate(new.raw.expose(), &RequestContext::new()).await.unwrap().credits.unwrap();
    assert_eq!(spent.remaining, 1);
}

#[test]
fn a_lineage_change_travels_as_json() {
    let lineage_id = crate::KeyId::new();
    let change = Change::Lineage { tenant: crate::Tenant::new("app", "acme"), lineage_id };
    let json = change.to_json().unwrap();
    let expected =
        format!(r#"{{"kind":"lineage","tenant":{{"app_id":"app","tenant_id":"acme"}},"lineage_id":"{lineage_id}"}}"#);
    assert_eq!(json, expected);
    assert_eq!(Change::from_json(&json).unwrap(), change);
}

#[test]
fn a_heartbeat_travels_as_an_owner_change_that_engines_without_heartbeats_ignore() {
    let json = Change::Heartbeat.to_json().unwrap();
    assert_eq!(json, r#"{"kind":"owner","tenant":{"app_id":"","tenant_id":""},"owner_id":"keysmith:heartbeat"}"#);
    assert_eq!(Change::from_json(&json).unwrap(), Change::Heartbeat);
    assert_eq!(Change::from_json(r#"{"kind":"heartbeat"}"#).unwrap(), Change::Heartbeat);
    // An owner change of a real tenant is still one.
    let owner = r#"{"kind":"owner","tenant":{"app_id":"app","tenant_id":""},"owner_id":"keysmith:heartbeat"}"#;
    assert!(matches!(Change::from_json(owner).unwrap(), Change::Owner { .. }));
    // What an engine from before heartbeats reads: an owner change, not an unknown kind.
    let older: Change = serde_json::from_str(&json).unwrap();
    assert!(matches!(older, Change::Owner { ref tenant, .. } if tenant.app_id.is_empty()));
}

#[tokio::test]
async fn a_heartbeat_as_an_engine_without_heartbeats_applies_it_evicts_nothing() {
    let engine = Engine::builder(MemoryStore::new()).with_cache(CacheConfig::default()).build().unwrap();
    let cached = Arc::clone(engine.cache().expect("built with a cache"));
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("per-owner").with_limit_by(LimitBy::Owner)).await.unwrap();
    let created = acme.create_key(NewKey::new("ci").with_owner("cust_1").with_policy(policy.id)).await.unwrap();
    assert!(accepted(&engine, created.raw.expose()).await);
    let before = cached.stats();
    assert_eq!((before.keys, before.policies, before.owners), (1, 1, 1));

    // What an engine from before heartbeats reads, and applies.
    let older: Change = serde_json::from_str(&Change::Heartbeat.to_json().unwrap()).unwrap();
    cached.apply_change(&older).await;
    assert_eq!(cached.stats(), before, "nothing evicted");
}

/// One engine's way onto a shared in-process feed, which a test can
/// partition: its subscriptions then stay open and carry nothing, a new
/// subscription never answers and a publish never returns. Healed, new
/// subscriptions work; those made before stay dead, as connections whose
/// path died.
#[derive(Debug)]
struct PartitionableFeed {
    inner: Arc<LocalChangeFeed>,
    /// (partitioned, epoch): a subscription delivers while its epoch is
    /// the current one and the link is not partitioned.
    link: watch::Sender<(bool, u64)>,
    subscribe_calls: std::sync::atomic::AtomicU64,
}

impl PartitionableFeed {
    fn new(inner: &Arc<LocalChangeFeed>) -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::clone(inner),
            link: watch::channel((false, 0)).0,
            subscribe_calls: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn partition(&self) {
        self.link.send_modify(|(partitioned, _)| *partitioned = true);
    }

    fn heal(&self) {
        self.link.send_modify(|(partitioned, epoch)| {
            *partitioned = false;
            *epoch += 1;
        });
    }

    fn partitioned(&self) -> bool {
        self.link.borrow().0
    }
}

#[async_trait]
impl ChangeFeed for PartitionableFeed {
    async fn publish(&self, change: &Change) -> Result<()> {
        if self.partitioned() {
            return std::future::pending().await;
        }
        self.inner.publish(change).await
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        self.subscribe_calls.fetch_add(1, Ordering::SeqCst);
        if self.partitioned() {
            return std::future::pending().await;
        }
        let link = self.link.subscribe();
        let epoch = link.borrow().1;
        let stream = self.inner.subscribe().await?;
        let alive = move || *link.borrow() == (false, epoch);
        Ok(stream.filter(move |_| std::future::ready(alive())).boxed())
    }
}

const HEARTBEAT: FeedHeartbeat = FeedHeartbeat::DEFAULT;

/// Engines `a` (on the shared feed) and `b` (on its partitionable link to
/// it), with caches on `clock`, once both are subscribed.
async fn partitionable_pair(clock: &ManualClock) -> (Engine, Engine, Arc<PartitionableFeed>) {
    let store = Arc::new(MemoryStore::new());
    let shared = Arc::new(LocalChangeFeed::new());
    let link = PartitionableFeed::new(&shared);
    let (a, b) = (engine_on(&store, clock, shared), engine_on(&store, clock, Arc::clone(&link) as Arc<dyn ChangeFeed>));
    for engine in [&a, &b] {
        yield_until(|| engine.feed_status().unwrap().subscribed).await;
    }
    (a, b, link)
}

/// Lets `span` of time pass, on the (paused) Tokio clock and on `clock`
/// alike, in steps of 10 ms; stops early, returning the time taken, once
/// `done` holds.
async fn pass(clock: &ManualClock, span: Duration, mut done: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let step = Duration::from_millis(10);
    let mut passed = Duration::ZERO;
    while passed <= span {
        if done().await {
            return Some(passed);
        }
        tokio::time::sleep(step).await;
        clock.advance(step);
        passed += step;
    }
    None
}

#[tokio::test(start_paused = true)]
async fn a_quiet_feed_stays_subscribed_on_heartbeats_and_a_fleet_sends_about_one_per_interval() {
    let clock = clock();
    let feed = Arc::new(LocalChangeFeed::new());
    let engines: Vec<Engine> = (0..5)
        .map(|_| {
            Engine::builder(MemoryStore::new())
                .with_cache(CacheConfig::default())
                .with_change_feed(Arc::clone(&feed))
                .build()
                .unwrap()
        })
        .collect();
    let minute = Duration::from_secs(60);
    assert_eq!(pass(&clock, minute, async || false).await, None);

    let sent: u64 = engines.iter().map(|engine| engine.feed_status().unwrap().heartbeats_sent).sum();
    println!("five quiet engines sent {sent} heartbeats in a minute");
    for engine in &engines {
        let status = engine.feed_status().unwrap();
        assert!(status.subscribed && status.losses == 0, "{status:?}");
        assert_eq!(status.heartbeats_received, sent, "every engine hears every heartbeat");
    }
    // One every 0.5 to 0.75 s for the fleet, not one per engine.
    let (fewest, most) =
        (minute.div_duration_f64(HEARTBEAT.interval() * 3 / 2), minute.div_duration_f64(HEARTBEAT.interval()));
    assert!((fewest as u64..=most as u64 + 5).contains(&sent), "{sent} heartbeats in a minute from five engines");
}

#[tokio::test(start_paused = true)]
async fn a_subscription_that_goes_silent_is_lost_at_the_deadline_and_a_revocation_is_seen_within_the_bound() {
    let clock = clock();
    let (a, b, link) = partitionable_pair(&clock).await;
    let acme = a.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    assert!(accepted(&b, created.raw.expose()).await, "b caches the key");

    link.partition();
    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    assert!(accepted(&b, created.raw.expose()).await, "b cannot know yet");
    let bound = HEARTBEAT.deadline() + OUTAGE;
    let refused = pass(&clock, bound, async || !accepted(&b, created.raw.expose()).await).await;
    let took = refused.expect("still accepted after the heartbeat deadline and the outage TTL");
    let step = Duration::from_millis(10);
    assert!(took <= HEARTBEAT.deadline() + step, "the cache is dropped when the silence is noticed: {took:?}");
    let status = b.feed_status().unwrap();
    assert_eq!((status.subscribed, status.losses, status.missed_heartbeats), (false, 1, 1), "{status:?}");
    assert_eq!(b.cache_stats().unwrap().positive_ttl, OUTAGE);

    // Still partitioned: subscribing times out and is tried again; a
    // change made meanwhile is seen within the outage TTL.
    let other = acme.create_key(NewKey::new("other")).await.unwrap();
    assert!(accepted(&b, other.raw.expose()).await);
    acme.revoke_key(other.key.id, "leaked").await.unwrap();
    let refused = pass(&clock, OUTAGE, async || !accepted(&b, other.raw.expose()).await).await;
    assert!(refused.is_some(), "still accepted after the outage TTL");
    pass(&clock, HEARTBEAT.deadline() * 2, async || false).await;
    assert!(link.subscribe_calls.load(Ordering::SeqCst) >= 3, "subscribing again and again");
    assert!(!b.feed_status().unwrap().subscribed);

    link.heal();
    assert!(pass(&clock, HEARTBEAT.deadline() * 2, async || b.feed_status().unwrap().subscribed).await.is_some());
    assert_eq!(b.cache_stats().unwrap().positive_ttl, POSITIVE);
    let third = acme.create_key(NewKey::new("third")).await.unwrap();
    assert!(accepted(&b, third.raw.expose()).await);
    acme.revoke_key(third.key.id, "leaked").await.unwrap();
    let refused = pass(&clock, Duration::from_secs(1), async || !accepted(&b, third.raw.expose()).await).await;
    assert!(refused.is_some(), "the feed works again");
    // Healthy again: the deadline passes many times over without a loss.
    pass(&clock, HEARTBEAT.deadline() * 5, async || false).await;
    assert_eq!(b.feed_status().unwrap().losses, 1);
}

#[tokio::test]
async fn a_heartbeat_deadline_under_twice_the_interval_is_refused() {
    let heartbeat =
        FeedHeartbeat::default().with_interval(Duration::from_secs(1)).with_deadline(Duration::from_secs(1));
    let built = Engine::builder(MemoryStore::new())
        .with_change_feed(LocalChangeFeed::new())
        .with_feed_heartbeat(heartbeat)
        .build();
    assert!(matches!(built, Err(Error::InvalidInput { field: "heartbeat", .. })), "{built:?}");
}

#[tokio::test(start_paused = true)]
async fn a_change_published_into_a_silent_feed_returns_at_the_deadline_and_reaches_the_others_through_the_store() {
    let clock = clock();
    // `b` alone is cut off from the feed: its publishes hang, while `a`
    // keeps hearing heartbeats and so stays on the positive TTL.
    let (a, b, link) = partitionable_pair(&clock).await;
    let acme = b.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    assert!(accepted(&a, created.raw.expose()).await, "a caches the key");
    link.partition();

    let started = tokio::time::Instant::now();
    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    assert_eq!(started.elapsed(), HEARTBEAT.deadline(), "held no longer than the deadline");
    let status = b.feed_status().unwrap();
    assert_eq!((status.publish_failures, status.logged, status.log_failures), (1, 1, 0), "{status:?}");
    assert!(!accepted(&b, created.raw.expose()).await, "committed, and seen by b at once");

    let left = HEARTBEAT.deadline() + HEARTBEAT.interval() - started.elapsed();
    let refused = pass(&clock, left, async || !accepted(&a, created.raw.expose()).await).await;
    assert!(refused.is_some(), "a still accepts the key b revoked after the deadline and an interval");
    let status = a.feed_status().unwrap();
    assert!(status.subscribed && status.losses == 0, "a heard the feed throughout: {status:?}");
    assert_eq!((status.from_log, status.log_read_failures), (1, 0), "{status:?}");
    assert_eq!(a.cache_stats().unwrap().positive_ttl, POSITIVE);

    // Found once: later reads skip what was applied.
    pass(&clock, HEARTBEAT.interval() * 4, async || false).await;
    assert_eq!(a.feed_status().unwrap().from_log, 1);
}

#[tokio::test(start_paused = true)]
async fn the_change_log_carries_lineage_and_policy_changes_and_an_engine_started_later_replays_nothing() {
    let clock = clock();
    let (a, b, link) = partitionable_pair(&clock).await;
    let acme = b.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("office")).await.unwrap();
    let created = acme.create_key(NewKey::new("ci").with_policy(policy.id)).await.unwrap();
    let ctx = RequestContext::new().with_ip("198.51.100.7".parse().unwrap());
    assert_eq!(a.validate(created.raw.expose(), &ctx).await.unwrap().credits, None, "a caches key and policy");
    link.partition();

    acme.update_policy(policy.id, PolicySpec::new("office").with_allowed_ips(["10.0.0.0/8"])).await.unwrap();
    acme.set_credits(created.key.id, Some(Credits::new(5))).await.unwrap();
    assert_eq!(b.feed_status().unwrap().logged, 2);
    let both = pass(&clock, HEARTBEAT.interval(), async || a.feed_status().unwrap().from_log == 2).await;
    assert!(both.is_some(), "both changes read within an interval of the last one");
    let answer = a.validate(created.raw.expose(), &ctx).await;
    assert!(matches!(answer, Err(ValidationError::Refused(Refusal::IpNotAllowed))), "{answer:?}");
    let inside = RequestContext::new().with_ip("10.1.2.3".parse().unwrap());
    let spent = a.validate(created.raw.expose(), &inside).await.unwrap().credits.expect("the lineage's new credits");
    assert_eq!(spent.remaining, 4);

    // A new engine on the store reads where the log stands, not its history.
    let store = Arc::clone(a.store());
    let late = Engine::builder(store)
        .with_cache(CacheConfig::default().with_clock(clock.clone()))
        .with_change_feed(LocalChangeFeed::new())
        .build()
        .unwrap();
    pass(&clock, HEARTBEAT.interval() * 3, async || false).await;
    assert_eq!(late.feed_status().unwrap().from_log, 0);
}

#[tokio::test(start_paused = true)]
async fn a_change_that_could_neither_be_published_nor_logged_is_counted() {
    let clock = clock();
    let store = log_unreachable();
    let shared = Arc::new(LocalChangeFeed::new());
    let link = PartitionableFeed::new(&shared);
    let engine = Engine::builder(store)
        .with_clock(clock.clone())
        .with_cache(CacheConfig::default().with_clock(clock.clone()))
        .with_change_feed(Arc::clone(&link))
        .build()
        .unwrap();
    yield_until(|| engine.feed_status().unwrap().subscribed).await;
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    link.partition();

    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    let status = engine.feed_status().unwrap();
    assert_eq!((status.publish_failures, status.logged, status.log_failures), (1, 0, 1), "{status:?}");
    assert!(!accepted(&engine, created.raw.expose()).await, "the change itself is committed");
}

#[tokio::test(start_paused = true)]
async fn an_engine_whose_change_log_was_renumbered_drops_its_cache_and_reads_on_within_an_interval() {
    let clock = clock();
    // `b` alone is cut off from the feed, so its changes go through the
    // store's change log, which `a` reads.
    let store = Arc::new(MemoryStore::new());
    let shared = Arc::new(LocalChangeFeed::new());
    let link = PartitionableFeed::new(&shared);
    let (a, b) =
        (engine_on(&store, &clock, shared), engine_on(&store, &clock, Arc::clone(&link) as Arc<dyn ChangeFeed>));
    for engine in [&a, &b] {
        yield_until(|| engine.feed_status().unwrap().subscribed).await;
    }
    let acme = b.tenant("app", "acme");
    let mut keys = Vec::new();
    for name in ["one", "two", "three", "four"] {
        keys.push(acme.create_key(NewKey::new(name)).await.unwrap());
    }
    link.partition();
    for key in &keys[..2] {
        acme.revoke_key(key.key.id, "leaked").await.unwrap();
    }
    let read = pass(&clock, HEARTBEAT.interval(), async || a.feed_status().unwrap().from_log == 2).await;
    assert!(read.is_some(), "a read both revocations from the log");

    // The log is truncated and numbered from 1 again: the next revocation
    // is numbered below what `a` has read.
    store.renumber_change_log();
    assert!(accepted(&a, keys[2].raw.expose()).await, "a caches the key");
    acme.revoke_key(keys[2].key.id, "leaked").await.unwrap();
    let refused = pass(&clock, HEARTBEAT.interval(), async || !accepted(&a, keys[2].raw.expose()).await).await;
    assert!(refused.is_some(), "a still accepts the key revoked after an interval (positive TTL {POSITIVE:?})");
    let status = a.feed_status().unwrap();
    assert_eq!((status.log_resets, status.from_log, status.log_read_failures), (1, 2, 0), "{status:?}");
    assert!(status.subscribed && status.losses == 0, "the feed itself is fine: {status:?}");
    assert_eq!(a.cache_stats().unwrap().positive_ttl, POSITIVE);

    // Read on from the new numbers: the next change is applied, alone.
    assert!(accepted(&a, keys[3].raw.expose()).await, "a caches the key");
    acme.revoke_key(keys[3].key.id, "leaked").await.unwrap();
    let refused = pass(&clock, HEARTBEAT.interval(), async || !accepted(&a, keys[3].raw.expose()).await).await;
    assert!(refused.is_some(), "a still accepts the key revoked after the renumbering");
    pass(&clock, HEARTBEAT.interval() * 3, async || false).await;
    let status = a.feed_status().unwrap();
    assert_eq!((status.log_resets, status.from_log), (1, 3), "{status:?}");
}
