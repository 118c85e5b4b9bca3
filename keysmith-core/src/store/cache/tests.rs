//! The cache's behaviour through an engine built `with_cache`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use tokio::sync::Notify;

use super::{CacheConfig, CachedStore};
use crate::store::{KeyStore, PolicyStore, ProbedStore, Store, StoreOp, StoreProbe, StoredKey, Transition};
use crate::{
    Change, Clock, CreditSpend, Credits, Engine, Environment, Error, Hasher, Key, KeyId, KeyState, ManualClock,
    MemoryStore, NewKey, Policy, PolicyId, RawKey, Refusal, RequestContext, Result, RotationReason, Sha256Hasher,
    Tenant, ValidationError,
};

const POSITIVE: Duration = Duration::from_secs(30);
const NEGATIVE: Duration = Duration::from_secs(5);

/// Lets a test stop a lookup after it has read and before it returns.
#[derive(Debug, Default)]
struct Hold {
    read: Notify,
    release: Notify,
}

/// Counts the reads the cache is meant to absorb, and can hold one
/// lookup after it has read.
#[derive(Debug, Default)]
struct Spy {
    lookups: AtomicU64,
    policy_reads: AtomicU64,
    owner_spends: AtomicU64,
    /// While set, every call fails as a database that went away would.
    down: AtomicBool,
    hold_next_lookup: Mutex<Option<Arc<Hold>>>,
    /// Holds the next call of this method after the store answered.
    hold_next_call: Mutex<Option<(StoreOp, Arc<Hold>)>>,
}

impl Spy {
    fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::SeqCst)
    }

    fn policy_reads(&self) -> u64 {
        self.policy_reads.load(Ordering::SeqCst)
    }

    fn owner_spends(&self) -> u64 {
        self.owner_spends.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl StoreProbe for Spy {
    async fn before(&self, op: StoreOp) -> Result<()> {
        match op {
            StoreOp::find_key_by_hash => self.lookups.fetch_add(1, Ordering::SeqCst),
            StoreOp::get_policy => self.policy_reads.fetch_add(1, Ordering::SeqCst),
            StoreOp::spend_owner_credits => self.owner_spends.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::store("connection refused"));
        }
        Ok(())
    }

    async fn after(&self, op: StoreOp) {
        let held = {
            let mut next = self.hold_next_call.lock().unwrap();
            if next.as_ref().is_some_and(|(held, _)| *held == op) { next.take() } else { None }
        };
        if let Some((_, hold)) = held {
            hold.read.notify_one();
            hold.release.notified().await;
        }
        if op == StoreOp::find_key_by_hash {
            let hold = self.hold_next_lookup.lock().unwrap().take();
            if let Some(hold) = hold {
                hold.read.notify_one();
                hold.release.notified().await;
            }
        }
    }
}

struct Setup {
    spy: Arc<Spy>,
    /// The store behind the cache, for changes made "by another instance".
    inner: Arc<MemoryStore>,
    cached: Arc<CachedStore>,
    engine: Engine,
    clock: ManualClock,
}

fn setup() -> Setup {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 15, 12, 0, 0).unwrap());
    let spy = Arc::new(Spy::default());
    let inner = Arc::new(MemoryStore::new());
    let probed = ProbedStore::new(Arc::clone(&inner) as Arc<dyn Store>, Arc::clone(&spy));
    let config =
        CacheConfig::default().with_positive_ttl(POSITIVE).with_negative_ttl(NEGATIVE).with_clock(clock.clone());
    let engine = Engine::builder(probed).with_cache(config).with_clock(clock.clone()).build().unwrap();
    let cached = Arc::clone(engine.cache().expect("built with a cache"));
    Setup { spy, inner, cached, engine, clock }
}

fn policy(tenant: &Tenant, name: &str) -> Policy {
    Policy {
        id: PolicyId::new(),
        tenant: tenant.clone(),
        name: name.into(),
        rate_limits: Vec::new(),
        limit_by: crate::LimitBy::Key,
        allowed_ips: vec![],
        allowed_origins: vec![],
        allowed_scopes: vec![],
        max_key_age: None,
        quota: None,
        rotation_grace: None,
        max_active_keys_per_owner: None,
        metadata: serde_json::Map::new(),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    }
}

async fn validate(engine: &Engine, raw: &str) -> Result<crate::Validation, ValidationError> {
    engine.validate(raw, &RequestContext::new()).await
}

#[tokio::test]
async fn warm_cache_validation_reads_nothing_from_the_store() {
    let Setup { spy, inner, engine, .. } = setup();
    let acme = engine.tenant("app", "acme");
    let policy = policy(acme.tenant(), "standard");
    inner.insert_policy(&policy).await.unwrap();
    let created = acme.create_key(NewKey::new("ci").with_policy(policy.id)).await.unwrap();
    let created_with = spy.policy_reads();

    for _ in 0..5 {
        let ok = validate(&engine, created.raw.expose()).await.unwrap();
        assert_eq!(ok.key.id, created.key.id);
    }
    assert_eq!(spy.lookups(), 1, "one lookup by hash, then hits");
    assert_eq!(spy.policy_reads() - created_with, 1, "one policy read, then hits");
}

#[tokio::test]
async fn unknown_keys_are_cached_until_the_negative_ttl() {
    let Setup { spy, engine, clock, .. } = setup();
    let unknown = RawKey::generate("sk", Environment::Live).unwrap();
    for _ in 0..3 {
        assert!(matches!(validate(&engine, unknown.expose()).await, Err(ValidationError::Refused(Refusal::Unknown))));
    }
    assert_eq!(spy.lookups(), 1);
    clock.advance(NEGATIVE - Duration::from_secs(1));
    validate(&engine, unknown.expose()).await.unwrap_err();
    assert_eq!(spy.lookups(), 1, "still cached just before the negative ttl");
    clock.advance(Duration::from_secs(1));
    validate(&engine, unknown.expose()).await.unwrap_err();
    assert_eq!(spy.lookups(), 2, "asked again once the negative entry expired");
}

#[tokio::test]
async fn changes_made_elsewhere_show_within_the_positive_ttl() {
    let Setup { spy, inner, engine, clock, .. } = setup();
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    validate(&engine, created.raw.expose()).await.unwrap();

    // Another instance revokes the key: this one does not know yet.
    let revoke = Transition::to(KeyState::Revoked, clock.now());
    inner.transition_key(acme.tenant(), created.key.id, &revoke).await.unwrap();
    clock.advance(POSITIVE - Duration::from_secs(1));
    assert!(validate(&engine, created.raw.expose()).await.is_ok(), "stale within the bound");
    clock.advance(Duration::from_secs(1));
    assert!(matches!(validate(&engine, created.raw.expose()).await, Err(ValidationError::Refused(Refusal::Revoked))));
    assert_eq!(spy.lookups(), 2);
}

#[tokio::test]
async fn a_key_change_with_its_hash_drops_a_cached_miss_for_it() {
    let Setup { inner, cached, engine, .. } = setup();
    let created = engine.tenant("app", "acme").create_key(NewKey::new("ci")).await.unwrap();
    let hash = Sha256Hasher.hash("sk_live_not_yet_there");
    assert_eq!(cached.find_key_by_hash(&hash).await.unwrap(), None);
    let key = StoredKey { key: Arc::new(Key { id: KeyId::new(), ..created.key }), hash };
    inner.insert_key(&key).await.unwrap();
    assert_eq!(cached.find_key_by_hash(&hash).await.unwrap(), None, "the miss is cached");
    let tenant = key.key.tenant.clone();
    cached.apply_change(&Change::Key { tenant, key_id: key.key.id, hash: Some(hash) }).await;
    assert_eq!(cached.find_key_by_hash(&hash).await.unwrap(), Some(key));
}

#[tokio::test]
async fn lifecycle_changes_through_the_engine_take_effect_at_once() {
    let Setup { spy, engine, .. } = setup();
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci").with_scopes(["read"])).await.unwrap();
    let raw = created.raw.expose();
    validate(&engine, raw).await.unwrap();

    acme.suspend_key(created.key.id).await.unwrap();
    assert!(matches!(validate(&engine, raw).await, Err(ValidationError::Refused(Refusal::Suspended))));
    acme.reactivate_key(created.key.id).await.unwrap();
    validate(&engine, raw).await.unwrap();

    let scopes = vec!["write".to_owned()];
    acme.set_key_scopes(created.key.id, &scopes).await.unwrap();
    assert_eq!(validate(&engine, raw).await.unwrap().key.scopes, scopes);

    let rotated = acme.rotate_key(created.key.id, RotationReason::Compromised, Some(Duration::ZERO)).await.unwrap();
    assert!(matches!(validate(&engine, raw).await, Err(ValidationError::Refused(Refusal::Revoked))));
    validate(&engine, rotated.raw.expose()).await.unwrap();

    acme.revoke_key(rotated.key.id, "done").await.unwrap();
    assert!(matches!(validate(&engine, rotated.raw.expose()).await, Err(ValidationError::Refused(Refusal::Revoked))));
    assert!(spy.lookups() >= 6, "every change sent the next validation to the store");
}

#[tokio::test]
async fn a_refused_transition_refreshes_the_cached_key() {
    let Setup { inner, engine, clock, .. } = setup();
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    validate(&engine, created.raw.expose()).await.unwrap();
    let revoke = Transition::to(KeyState::Revoked, clock.now());
    inner.transition_key(acme.tenant(), created.key.id, &revoke).await.unwrap();

    assert!(matches!(acme.suspend_key(created.key.id).await, Err(Error::InvalidTransition { .. })));
    assert!(matches!(validate(&engine, created.raw.expose()).await, Err(ValidationError::Refused(Refusal::Revoked))));
}

#[tokio::test]
async fn policy_changes_through_the_engine_take_effect_at_once() {
    let Setup { spy, cached, engine, .. } = setup();
    let handle = engine.tenant("app", "acme");
    let acme = handle.tenant().clone();
    let original = handle.create_policy(crate::PolicySpec::new("standard")).await.unwrap();
    assert_eq!(cached.get_policy(&acme, original.id).await.unwrap().as_deref(), Some(&original));
    assert_eq!(cached.get_policy(&acme, original.id).await.unwrap().as_deref(), Some(&original));
    assert_eq!(spy.policy_reads(), 1);
    assert_eq!(cached.get_policy(&Tenant::new("app", "globex"), original.id).await.unwrap(), None);

    let spec = crate::PolicySpec::new("standard").with_max_key_age(Duration::from_secs(60));
    let updated = handle.update_policy(original.id, spec).await.unwrap();
    assert_eq!(cached.get_policy(&acme, original.id).await.unwrap().as_deref(), Some(&updated));
    handle.delete_policy(original.id).await.unwrap();
    assert_eq!(cached.get_policy(&acme, original.id).await.unwrap(), None);
}

/// An engine built `with_cache` keeps a key's policy with the key, so a
/// warm validation is one probe; policy changes made through the
/// engine, dropped caches and the policy's TTL still reach it.
#[tokio::test]
async fn the_policy_kept_with_a_cached_key_follows_every_policy_change() {
    let Setup { spy, inner, clock, engine, .. } = setup();
    let acme = engine.tenant("app", "acme");
    let spec = |net: &str| crate::PolicySpec::new("nets").with_allowed_ips([net]);
    let policy = acme.create_policy(spec("10.0.0.0/8")).await.unwrap();
    let created = acme.create_key(NewKey::new("ci").with_policy(policy.id)).await.unwrap();
    let created_with = spy.policy_reads();
    let client: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    let check = || async { engine.validate(created.raw.expose(), &RequestContext::new().with_ip(client)).await };
    for _ in 0..3 {
        check().await.unwrap();
    }
    assert_eq!((spy.lookups(), spy.policy_reads() - created_with), (1, 1));

    // Through the engine: refused at once.
    acme.update_policy(policy.id, spec("192.0.2.0/24")).await.unwrap();
    assert!(matches!(check().await, Err(ValidationError::Refused(Refusal::IpNotAllowed))));
    // Dropped by hand: read again.
    engine.invalidate_cache();
    assert!(matches!(check().await, Err(ValidationError::Refused(Refusal::IpNotAllowed))));
    let reads = spy.policy_reads();

    // The key is cached again 10 s after its policy (a key change drops
    // only the key), and keeps the policy's expiry, not its own.
    clock.advance(Duration::from_secs(10));
    acme.suspend_key(created.key.id).await.unwrap();
    acme.reactivate_key(created.key.id).await.unwrap();
    assert!(check().await.is_err());
    assert_eq!(spy.policy_reads(), reads, "the policy came from its table");

    // Elsewhere: seen once the policy's entry expires.
    let mut elsewhere = (*inner.get_policy(acme.tenant(), policy.id).await.unwrap().unwrap()).clone();
    elsewhere.allowed_ips = vec!["10.0.0.0/8".parse().unwrap()];
    inner.update_policy(&elsewhere).await.unwrap();
    clock.advance(POSITIVE - Duration::from_secs(11));
    assert!(check().await.is_err(), "stale within the bound");
    assert_eq!(spy.policy_reads(), reads);
    clock.advance(Duration::from_secs(1));
    check().await.unwrap();
}

#[tokio::test]
async fn the_scopes_narrowed_with_a_cached_policy_follow_the_policy_and_the_key() {
    let Setup { engine, .. } = setup();
    let acme = engine.tenant("app", "acme");
    let spec = |allowed: &[&str]| crate::PolicySpec::new("scoped").with_allowed_scopes(allowed.iter().copied());
    let policy = acme.create_policy(spec(&[])).await.unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id).with_scopes(["read"])).await.unwrap();
    let scopes = || async { validate(&engine, created.raw.expose()).await.unwrap().scopes().to_vec() };
    // Each state twice: decided when the policy joins the cached key, then
    // kept with it.
    for _ in 0..2 {
        assert_eq!(scopes().await, ["read"]);
    }
    acme.update_policy(policy.id, spec(&["read:users", "write"])).await.unwrap();
    for _ in 0..2 {
        assert_eq!(scopes().await, ["read:users"], "narrowed to the tightened policy");
    }
    let need = vec!["read:billing".to_owned()];
    let refused = engine.validate(created.raw.expose(), &RequestContext::new().with_required_scopes(&need)).await;
    assert!(matches!(refused, Err(ValidationError::Refused(Refusal::InsufficientScope { .. }))));
    acme.set_key_scopes(created.key.id, &["write"]).await.unwrap();
    for _ in 0..2 {
        assert_eq!(scopes().await, ["write"], "the key's new scopes, not what was narrowed from the old ones");
    }
    acme.update_policy(policy.id, spec(&[])).await.unwrap();
    for _ in 0..2 {
        assert_eq!(scopes().await, ["write"]);
    }
}

#[tokio::test]
async fn a_lookup_racing_a_revocation_does_not_cache_what_it_read() {
    let Setup { spy, cached, engine, .. } = setup();
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    let hash = Sha256Hasher.hash(created.raw.expose());

    let hold = Arc::new(Hold::default());
    *spy.hold_next_lookup.lock().unwrap() = Some(Arc::clone(&hold));
    let reader = tokio::spawn({
        let cached = Arc::clone(&cached);
        async move { cached.find_key_by_hash(&hash).await }
    });
    hold.read.notified().await; // the lookup has read the active key
    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    assert!(
        matches!(validate(&engine, created.raw.expose()).await, Err(ValidationError::Refused(Refusal::Revoked))),
        "the revocation returned: no validation sees the active key, while the lookup is still out"
    );
    hold.release.notify_one();
    let read = reader.await.unwrap().unwrap().unwrap();
    assert_eq!(read.key.state, KeyState::Active, "the racing lookup answers what it read");

    let now = cached.find_key_by_hash(&hash).await.unwrap().unwrap();
    assert_eq!(now.key.state, KeyState::Revoked, "but did not leave it in the cache");
}

/// Holds the next `op` of the store behind the cache after it answered.
fn hold_next(spy: &Spy, op: StoreOp) -> Arc<Hold> {
    let hold = Arc::new(Hold::default());
    *spy.hold_next_call.lock().unwrap() = Some((op, Arc::clone(&hold)));
    hold
}

#[tokio::test]
async fn credits_set_through_one_key_of_a_lineage_reach_every_key_of_it_and_no_other() {
    let Setup { spy, engine, .. } = setup();
    let acme = engine.tenant("app", "acme");
    let old = acme.create_key(NewKey::new("ci")).await.unwrap();
    let new = acme.rotate_key(old.key.id, RotationReason::Scheduled, Some(Duration::from_secs(60))).await.unwrap();
    let other = acme.create_key(NewKey::new("other")).await.unwrap();
    for raw in [&old.raw, &new.raw, &other.raw] {
        validate(&engine, raw.expose()).await.unwrap();
    }
    assert_eq!(spy.lookups(), 3);

    acme.set_credits(new.key.id, Some(Credits::new(1))).await.unwrap();
    assert_eq!(validate(&engine, old.raw.expose()).await.unwrap().credits.map(|c| c.remaining), Some(0));
    assert!(matches!(
        validate(&engine, new.raw.expose()).await,
        Err(ValidationError::Refused(Refusal::CreditsExhausted { .. }))
    ));
    validate(&engine, other.raw.expose()).await.unwrap();
    assert_eq!(spy.lookups(), 5, "the lineage's two keys read again, the other key still cached");

    acme.add_credits(old.key.id, 1).await.unwrap();
    assert_eq!(validate(&engine, new.raw.expose()).await.unwrap().credits.map(|c| c.remaining), Some(0));
    validate(&engine, other.raw.expose()).await.unwrap();
    assert_eq!(spy.lookups(), 6);
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let cached = CachedStore::with_config(Arc::new(MemoryStore::new()), CacheConfig::default().with_max_keys(10));
    for i in 0..200 {
        cached.find_key_by_hash(&Sha256Hasher.hash(&format!("sk_live_{i}"))).await.unwrap();
    }
    cached.keys.back.run_pending_tasks();
    assert!(cached.keys.entry_count() <= 10, "{} entries", cached.keys.entry_count());
    // The front map holds no more than moka kept.
    assert!(cached.keys.front.len() <= 10, "{} entries in front", cached.keys.front.len());
}

/// A key of owner `cust_1` under a policy that limits by owner.
async fn owner_key(engine: &Engine) -> crate::CreatedKey {
    let acme = engine.tenant("app", "acme");
    let spec = crate::PolicySpec::new("per-owner").with_limit_by(crate::LimitBy::Owner);
    let policy = acme.create_policy(spec).await.unwrap();
    acme.create_key(NewKey::new("ci").with_owner("cust_1").with_policy(policy.id)).await.unwrap()
}

/// The owner credits a validation of `raw` left (`None`: not limited by credits).
async fn credits_left(engine: &Engine, raw: &str) -> Option<u64> {
    validate(engine, raw).await.unwrap().credits.map(|credits| credits.remaining)
}

#[tokio::test]
async fn an_owner_without_credits_costs_no_store_call_after_the_first_even_while_the_store_is_down() {
    let Setup { spy, cached, engine, .. } = setup();
    let created = owner_key(&engine).await;
    for _ in 0..3 {
        assert_eq!(credits_left(&engine, created.raw.expose()).await, None);
    }
    assert_eq!(spy.owner_spends(), 1, "asked once, then remembered as having none");
    assert_eq!(cached.stats().owners, 1);

    spy.down.store(true, Ordering::SeqCst);
    assert_eq!(credits_left(&engine, created.raw.expose()).await, None, "served while the store is down");
    assert_eq!(spy.lookups(), 1);
}

#[tokio::test]
async fn an_owner_given_credits_through_the_engine_spends_them_from_the_next_request() {
    let Setup { spy, engine, .. } = setup();
    let created = owner_key(&engine).await;
    let acme = engine.tenant("app", "acme");
    assert_eq!(credits_left(&engine, created.raw.expose()).await, None);

    acme.set_owner_credits("cust_1", Some(Credits::new(2))).await.unwrap();
    assert_eq!(credits_left(&engine, created.raw.expose()).await, Some(1));
    assert_eq!(credits_left(&engine, created.raw.expose()).await, Some(0));
    assert!(matches!(
        validate(&engine, created.raw.expose()).await,
        Err(ValidationError::Refused(Refusal::CreditsExhausted { .. }))
    ));
    assert_eq!(spy.owner_spends(), 4, "a balance is spent in the store on every request");

    acme.add_owner_credits("cust_1", 1).await.unwrap();
    assert_eq!(credits_left(&engine, created.raw.expose()).await, Some(0));

    // Removed: asked once more, then remembered as having none again.
    acme.set_owner_credits("cust_1", None).await.unwrap();
    assert_eq!(credits_left(&engine, created.raw.expose()).await, None);
    assert_eq!(credits_left(&engine, created.raw.expose()).await, None);
    assert_eq!(spy.owner_spends(), 6);
}

#[tokio::test]
async fn a_top_up_through_the_cache_drops_what_it_remembered_of_the_owner() {
    let Setup { inner, engine, .. } = setup();
    let created = owner_key(&engine).await;
    let acme = engine.tenant("app", "acme");
    assert_eq!(credits_left(&engine, created.raw.expose()).await, None);
    // Given credits elsewhere, then topped up here.
    inner.set_owner_credits(acme.tenant(), "cust_1", Some(&Credits::new(1))).await.unwrap();
    acme.add_owner_credits("cust_1", 2).await.unwrap();
    assert_eq!(credits_left(&engine, created.raw.expose()).await, Some(2));
}

#[tokio::test]
async fn an_owner_given_credits_elsewhere_spends_them_once_the_positive_ttl_passed() {
    let Setup { spy, inner, cached, clock, .. } = setup();
    let acme = Tenant::new("app", "acme");
    let spend = || async { cached.spend_owner_credits(&acme, "cust_1", 1, clock.now()).await.unwrap() };
    assert_eq!(spend().await, CreditSpend::Unlimited);
    inner.set_owner_credits(&acme, "cust_1", Some(&Credits::new(5))).await.unwrap();

    clock.advance(POSITIVE - Duration::from_secs(1));
    assert_eq!(spend().await, CreditSpend::Unlimited, "stale within the bound");
    assert_eq!(spy.owner_spends(), 1);
    clock.advance(Duration::from_secs(1));
    assert!(matches!(spend().await, CreditSpend::Spent(credits) if credits.remaining == 4));
    assert!(matches!(spend().await, CreditSpend::Spent(credits) if credits.remaining == 3));
    assert_eq!(spy.owner_spends(), 3, "a balance is never cached");
    assert_eq!(cached.stats().owners, 0);
}

#[tokio::test]
async fn owners_are_remembered_per_tenant() {
    let Setup { spy, inner, cached, clock, .. } = setup();
    let (acme, globex) = (Tenant::new("app", "acme"), Tenant::new("app", "globex"));
    inner.set_owner_credits(&globex, "cust_1", Some(&Credits::new(5))).await.unwrap();
    assert_eq!(cached.spend_owner_credits(&acme, "cust_1", 1, clock.now()).await.unwrap(), CreditSpend::Unlimited);
    let spent = cached.spend_owner_credits(&globex, "cust_1", 1, clock.now()).await.unwrap();
    assert!(matches!(spent, CreditSpend::Spent(credits) if credits.remaining == 4));
    assert_eq!(spy.owner_spends(), 2);
}

/// A spend that read "no credits" before credits were given, and
/// returns after, does not leave "no credits" in the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_racing_a_credit_change_does_not_remember_what_it_read() {
    let Setup { spy, cached, engine, clock, .. } = setup();
    let acme = engine.tenant("app", "acme");
    let hold = hold_next(&spy, StoreOp::spend_owner_credits);
    let spend = tokio::spawn({
        let (cached, tenant, now) = (Arc::clone(&cached), acme.tenant().clone(), clock.now());
        async move { cached.spend_owner_credits(&tenant, "cust_1", 1, now).await }
    });
    hold.read.notified().await;
    acme.set_owner_credits("cust_1", Some(Credits::new(3))).await.unwrap();
    hold.release.notify_one();
    assert_eq!(spend.await.unwrap().unwrap(), CreditSpend::Unlimited, "it answers what it read");
    let spent = cached.spend_owner_credits(acme.tenant(), "cust_1", 1, clock.now()).await.unwrap();
    assert!(matches!(spent, CreditSpend::Spent(credits) if credits.remaining == 2));
}

/// Probes of the keys table so far.
fn key_probes(cached: &CachedStore) -> u64 {
    cached.keys.probes.load(Ordering::Relaxed)
}

#[tokio::test]
async fn a_validation_probes_the_cache_once_on_a_miss_and_once_on_a_hit() {
    let Setup { spy, cached, engine, .. } = setup();
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(crate::PolicySpec::new("standard")).await.unwrap();
    let created = acme.create_key(NewKey::new("ci").with_policy(policy.id)).await.unwrap();
    let unknown = RawKey::generate("sk", Environment::Live).unwrap();

    for raw in [created.raw.expose(), unknown.expose()] {
        let before = key_probes(&cached);
        let _ = validate(&engine, raw).await;
        assert_eq!(key_probes(&cached) - before, 1, "a miss: one probe, then the store");
        let before = key_probes(&cached);
        let _ = validate(&engine, raw).await;
        assert_eq!(key_probes(&cached) - before, 1, "a hit: one probe");
    }
    assert_eq!(spy.lookups(), 2, "each hash asked of the store once");
}

#[tokio::test]
async fn an_owner_credits_write_that_fails_still_drops_what_the_cache_remembered() {
    let Setup { spy, cached, engine, .. } = setup();
    let created = owner_key(&engine).await;
    let acme = engine.tenant("app", "acme");
    assert_eq!(credits_left(&engine, created.raw.expose()).await, None);
    assert_eq!(cached.stats().owners, 1);

    spy.down.store(true, Ordering::SeqCst);
    assert!(acme.set_owner_credits("cust_1", Some(Credits::new(2))).await.is_err());
    assert_eq!(cached.stats().owners, 0, "forgotten: the write may have committed");
    spy.down.store(false, Ordering::SeqCst);
    assert_eq!(credits_left(&engine, created.raw.expose()).await, None);
    assert!(acme.add_owner_credits("cust_1", 1).await.is_err(), "no credits to top up");
    assert_eq!(cached.stats().owners, 0);
}

#[tokio::test]
async fn a_queued_touch_shows_in_the_cached_key_and_a_revocation_still_wins() {
    let Setup { spy, cached, engine, clock, .. } = setup();
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("ci")).await.unwrap();
    let hash = Sha256Hasher.hash(created.raw.expose());
    let first = validate(&engine, created.raw.expose()).await.unwrap();
    assert_eq!(first.key.last_used_at, None, "as the store had it");
    let cached_at = cached.find_key_by_hash_ready(&hash).unwrap().unwrap().key.last_used_at;
    assert_eq!(cached_at, Some(clock.now()), "the queued write, in place");
    assert_eq!(spy.lookups(), 1, "served from the cache throughout");

    acme.revoke_key(created.key.id, "leaked").await.unwrap();
    clock.advance(Duration::from_secs(120));
    cached.touched(created.key.id, clock.now());
    assert!(matches!(validate(&engine, created.raw.expose()).await, Err(ValidationError::Refused(Refusal::Revoked))));
}
