//! One set of cases every [`Store`] must pass, whatever keeps the data.
//!
//! Each case is a `pub async fn(Arc<dyn Store>)` on a fresh, migrated store;
//! [`store_conformance_tests!`](crate::store_conformance_tests) turns the
//! whole list into one `#[tokio::test]` per case for a backend.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use keysmith_core::store::{
    CacheConfig, KeyFilter, Page, ProbedStore, RotationWrite, StoreOp, StoreProbe, StoredKey, TimeRange, Transition,
};
use keysmith_core::usage::UsageConfig;
use keysmith_core::{
    CreditSpend, Credits, Engine, EngineBuilder, Environment, Error, Hasher, Key, KeyId, KeyState, LimitBy,
    ManualClock, NewKey, Period, Policy, PolicyId, PolicySpec, Quota, RateLimit, Refusal, RequestContext, RotationId,
    RotationReason, RotationRecord, Scope, ScopeId, Sha256Hasher, Store, Tenant, UsageId, UsageRecord, Validation,
    ValidationError,
};
use tokio::sync::{Barrier, Notify};
use tokio::task::JoinSet;

/// Names of every case, in the order the macro generates them.
#[macro_export]
macro_rules! store_conformance_tests {
    ($setup:path) => {
        $crate::store_conformance_tests!(@cases $setup;
            key_round_trips_through_insert_get_and_hash_lookup,
            taken_key_id_or_hash_is_already_exists_and_writes_nothing,
            key_with_another_tenants_policy_is_not_found_and_not_stored,
            unknown_hash_finds_nothing,
            other_tenants_see_nothing_and_change_nothing,
            list_keys_filters_orders_and_paginates,
            list_keys_filters_by_owner_within_the_tenant,
            owner_key_limit_counts_live_keys_under_the_policy,
            concurrent_creations_for_one_owner_leave_exactly_the_limit,
            credits_belong_to_the_lineage_and_can_be_set_or_removed,
            concurrent_spends_never_take_credits_below_zero,
            credits_refill_on_the_utc_period_boundary_and_top_up,
            owner_credits_are_per_tenant_and_owner_and_can_be_set_or_removed,
            concurrent_spends_never_take_owner_credits_below_zero,
            owner_credits_refill_on_the_utc_period_boundary_and_top_up,
            transitions_follow_the_lifecycle,
            concurrent_revokes_have_exactly_one_winner,
            concurrent_rotations_have_exactly_one_winner,
            racing_suspend_never_undoes_a_revoke,
            rotation_writes_new_key_old_state_and_record,
            failed_rotation_leaves_old_key_active_and_no_record,
            rotation_needs_an_active_key,
            rotation_across_tenants_is_rejected,
            set_key_scopes_replaces_them_in_order,
            touch_key_never_moves_last_used_backwards,
            due_keys_are_expired_aged_or_past_grace,
            policy_round_trips_and_updates,
            policy_names_are_unique_per_tenant,
            list_policies_orders_and_paginates,
            policy_in_use_by_a_live_key_cannot_be_deleted,
            policy_delete_and_key_insert_race_atomically,
            scope_registry_is_per_tenant_and_sorted_by_name,
            usage_batches_roll_up_into_days_and_months,
            usage_batches_accumulate_and_count_each_record_once,
            large_usage_batch_is_written_whole,
            usage_queries_filter_by_range_and_paginate,
            migrate_is_idempotent_and_ping_answers,
            closed_store_fails_with_store_error,
            lineage_usage_sums_every_key_of_the_lineage,
            owner_usage_sums_every_key_of_the_owner_in_the_tenant,
            rotation_shares_the_lineage_budget_and_keeps_the_expiry,
            a_quota_reload_racing_a_batch_write_counts_the_batch_once,
            control_characters_are_refused_before_the_store,
            ids_differing_only_by_trailing_space_case_or_unicode_form_are_different_tenants,
            ids_with_a_trailing_space_are_invalid_input_before_the_store,
        );
    };
    (@cases $setup:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let Some(fixture) = $setup().await else { return };
                fixture.run($crate::store_conformance::$case).await;
            }
        )*
    };
}

/// A migrated store for one case, and whatever must live as long as it
/// (a test database that is dropped afterwards).
#[derive(Debug)]
pub struct Fixture {
    /// The store under test.
    pub store: Arc<dyn Store>,
    /// The cache that the engines of the engine-level cases get.
    engine_cache: Option<CacheConfig>,
    // Declared after the store, so dropped after it.
    guard: Option<Box<dyn std::fmt::Debug + Send>>,
}

tokio::task_local! {
    /// The fixture's [`Fixture::engine_cache`] while a case runs.
    static ENGINE_CACHE: Option<CacheConfig>;
}

/// An engine builder on `store`, with the cache of the fixture the case
/// runs on, if it has one.
pub fn engine_builder(store: Arc<dyn Store>) -> EngineBuilder {
    let builder = Engine::builder(store);
    match ENGINE_CACHE.try_with(Clone::clone).ok().flatten() {
        Some(config) => builder.with_cache(config),
        None => builder,
    }
}

impl Fixture {
    /// A fixture on `store`, migrated.
    ///
    /// # Panics
    /// If the migration fails.
    pub async fn new(store: Arc<dyn Store>) -> Self {
        store.migrate().await.expect("migrate");
        Self { store, engine_cache: None, guard: None }
    }

    /// Gives the engines that engine-level cases build a cache configured
    /// by `config` (store-level cases are unchanged).
    #[must_use]
    pub fn with_engine_cache(mut self, config: CacheConfig) -> Self {
        self.engine_cache = Some(config);
        self
    }

    /// Runs `case` on the fixture's store, then drops the fixture.
    pub async fn run<F: std::future::Future<Output = ()>>(self, case: impl FnOnce(Arc<dyn Store>) -> F) {
        ENGINE_CACHE.scope(self.engine_cache.clone(), case(Arc::clone(&self.store))).await;
        drop(self);
    }

    /// Keeps `guard` alive (and drops it after the store) with the fixture.
    #[must_use]
    pub fn with_guard(mut self, guard: impl std::fmt::Debug + Send + 'static) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }
}

// ---------------------------------------------------------------- fixtures

/// 2026-03-15 12:00:00 UTC, the suite's "now".
#[must_use]
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 15, 12, 0, 0).unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

fn acme() -> Tenant {
    Tenant::new("billing", "acme")
}

fn globex() -> Tenant {
    Tenant::new("billing", "globex")
}

/// Same tenant id as [`acme`], another application.
fn acme_elsewhere() -> Tenant {
    Tenant::new("shipping", "acme")
}

/// An active key of `tenant` with every field set, created at [`t0`].
#[must_use]
pub fn sample_key(tenant: &Tenant) -> StoredKey {
    let id = KeyId::new();
    let mut metadata = serde_json::Map::new();
    metadata.insert("team".into(), "payments".into());
    metadata.insert("tier".into(), 3.into());
    let key = Key {
        id,
        lineage_id: id,
        name: "deploy bot".into(),
        hint: "sk_live_…a1b2".into(),
        prefix: "sk".into(),
        environment: Environment::Live,
        state: KeyState::Active,
        scopes: vec!["write:users".into(), "read".into(), "admin:billing:refunds".into()],
        tenant: tenant.clone(),
        owner_id: Some("cus_42 ünïcode".into()),
        credits: None,
        policy_id: None,
        expires_at: Some(at(86_400 * 30)),
        grace_expires_at: None,
        revoked_reason: None,
        last_used_at: None,
        created_at: t0(),
        updated_at: t0(),
        metadata,
    };
    StoredKey { hash: Sha256Hasher.hash(&format!("sk_live_{id}")), key: Arc::new(key) }
}

fn modified(stored: &StoredKey, change: impl FnOnce(&mut Key)) -> StoredKey {
    let mut key = Key::clone(&stored.key);
    change(&mut key);
    StoredKey { key: Arc::new(key), hash: stored.hash }
}

/// A policy of `tenant` with every field set.
#[must_use]
pub fn sample_policy(tenant: &Tenant, name: &str) -> Policy {
    let mut metadata = serde_json::Map::new();
    metadata.insert("owner".into(), "ops".into());
    Policy {
        id: PolicyId::new(),
        tenant: tenant.clone(),
        name: name.into(),
        rate_limits: vec![
            RateLimit::new("burst", 100, Duration::from_millis(60_500)).with_burst(20),
            RateLimit::new("daily-cap", 5000, Duration::from_secs(86_400)),
        ],
        limit_by: LimitBy::Owner,
        allowed_ips: vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()],
        allowed_origins: vec!["https://app.example.com".into()],
        allowed_scopes: vec!["read".into(), "write:users".into(), "admin".into()],
        max_key_age: Some(Duration::from_secs(90 * 86_400)),
        quota: Some(Quota { daily: Some(10_000), monthly: None }),
        rotation_grace: Some(Duration::from_secs(3600)),
        max_active_keys_per_owner: Some(3),
        metadata,
        created_at: t0(),
        updated_at: t0(),
    }
}

/// A bare policy: no limits at all.
fn bare_policy(tenant: &Tenant, name: &str) -> Policy {
    Policy {
        rate_limits: vec![],
        limit_by: LimitBy::Key,
        allowed_ips: vec![],
        allowed_origins: vec![],
        allowed_scopes: vec![],
        max_key_age: None,
        quota: None,
        rotation_grace: None,
        max_active_keys_per_owner: None,
        metadata: serde_json::Map::new(),
        ..sample_policy(tenant, name)
    }
}

fn usage(key: &Key, timestamp: DateTime<Utc>, status: u16) -> UsageRecord {
    UsageRecord {
        id: UsageId::new(),
        key_id: key.id,
        tenant: key.tenant.clone().into(),
        endpoint: "/v1/invoices".into(),
        method: "GET".into(),
        status,
        ip: Some("203.0.113.9".parse().unwrap()),
        user_agent: Some("curl/8.5".into()),
        latency: Duration::from_millis(12),
        timestamp,
    }
}

/// The rotation of `old` into a fresh key, at `at_secs` with `grace`.
fn rotation_of(old: &StoredKey, at_secs: i64, grace: Duration) -> RotationWrite {
    let now = at(at_secs);
    let fresh = sample_key(&old.key.tenant);
    let new_key = modified(&fresh, |k| {
        k.name.clone_from(&old.key.name);
        k.scopes.clone_from(&old.key.scopes);
        k.policy_id = old.key.policy_id;
        k.owner_id.clone_from(&old.key.owner_id);
        k.metadata.clone_from(&old.key.metadata);
        k.lineage_id = old.key.lineage_id;
        k.created_at = now;
        k.updated_at = now;
    });
    let record = RotationRecord {
        id: RotationId::new(),
        key_id: old.key.id,
        new_key_id: new_key.key.id,
        tenant: old.key.tenant.clone(),
        old_hash: old.hash,
        new_hash: new_key.hash,
        reason: RotationReason::Scheduled,
        grace_ttl: grace,
        grace_expires_at: now + chrono::Duration::from_std(grace).unwrap(),
        created_at: now,
    };
    RotationWrite { new_key, record }
}

async fn insert(store: &Arc<dyn Store>, key: StoredKey) -> StoredKey {
    store.insert_key(&key).await.expect("insert_key");
    key
}

async fn state_of(store: &Arc<dyn Store>, key: &StoredKey) -> KeyState {
    store.get_key(&key.key.tenant, key.key.id).await.unwrap().expect("key exists").key.state
}

fn page(limit: u32, offset: u64) -> KeyFilter {
    KeyFilter { page: Page::new(limit, offset), ..KeyFilter::default() }
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: keysmith_core::Result<T>, entity: &str) {
    match result {
        Err(Error::NotFound { entity: found, .. }) if found == entity => {}
        other => panic!("expected NotFound {{ entity: {entity:?} }}, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid_transition<T: std::fmt::Debug>(result: keysmith_core::Result<T>, from: KeyState, to: KeyState) {
    match result {
        Err(Error::InvalidTransition { from: f, to: t }) if f == from && t == to => {}
        other => panic!("expected InvalidTransition {{ from: {from}, to: {to} }}, got {other:?}"),
    }
}

#[track_caller]
fn assert_already_exists<T: std::fmt::Debug>(result: keysmith_core::Result<T>, entity: &str) {
    match result {
        Err(Error::AlreadyExists { entity: found, .. }) if found == entity => {}
        other => panic!("expected AlreadyExists {{ entity: {entity:?} }}, got {other:?}"),
    }
}

// ---------------------------------------------------------------- keys

/// Every field of a key survives the store, and both lookups agree.
pub async fn key_round_trips_through_insert_get_and_hash_lookup(store: Arc<dyn Store>) {
    let policy = sample_policy(&acme(), "standard");
    store.insert_policy(&policy).await.unwrap();
    let key = insert(
        &store,
        modified(&sample_key(&acme()), |k| {
            k.policy_id = Some(policy.id);
            k.environment = Environment::Test;
            k.last_used_at = Some(at(5));
        }),
    )
    .await;

    let got = store.get_key(&acme(), key.key.id).await.unwrap().expect("get_key finds the key");
    assert_eq!(got, key);
    let found = store.find_key_by_hash(&key.hash).await.unwrap().expect("find_key_by_hash finds the key");
    assert_eq!(found, key);
    assert_eq!(found.key.scopes, ["write:users", "read", "admin:billing:refunds"], "scopes keep their order");

    // A key without scopes, policy or expiry.
    let bare = insert(
        &store,
        modified(&sample_key(&acme()), |k| {
            k.scopes.clear();
            k.expires_at = None;
            k.metadata.clear();
        }),
    )
    .await;
    assert_eq!(store.get_key(&acme(), bare.key.id).await.unwrap(), Some(bare));
}

/// A second key with a taken id or hash fails and leaves no row behind.
pub async fn taken_key_id_or_hash_is_already_exists_and_writes_nothing(store: Arc<dyn Store>) {
    let first = insert(&store, sample_key(&acme())).await;

    let same_hash = modified(&sample_key(&acme()), |k| k.scopes = vec!["other".into()]);
    let same_hash = StoredKey { hash: first.hash, ..same_hash };
    assert_already_exists(store.insert_key(&same_hash).await, "key");
    assert_eq!(store.get_key(&acme(), same_hash.key.id).await.unwrap(), None);

    let same_id = modified(&sample_key(&acme()), |k| k.id = first.key.id);
    assert_already_exists(store.insert_key(&same_id).await, "key");
    assert_eq!(store.find_key_by_hash(&same_id.hash).await.unwrap(), None);

    // The first key is untouched, scopes included.
    assert_eq!(store.get_key(&acme(), first.key.id).await.unwrap(), Some(first));
}

/// A key can only reference its own tenant's policies; a refused key is not
/// stored at all.
pub async fn key_with_another_tenants_policy_is_not_found_and_not_stored(store: Arc<dyn Store>) {
    let theirs = sample_policy(&globex(), "standard");
    store.insert_policy(&theirs).await.unwrap();

    let key = modified(&sample_key(&acme()), |k| k.policy_id = Some(theirs.id));
    assert_not_found(store.insert_key(&key).await, "policy");
    let missing = modified(&sample_key(&acme()), |k| k.policy_id = Some(PolicyId::new()));
    assert_not_found(store.insert_key(&missing).await, "policy");

    for refused in [&key, &missing] {
        assert_eq!(store.get_key(&acme(), refused.key.id).await.unwrap(), None);
        assert_eq!(store.find_key_by_hash(&refused.hash).await.unwrap(), None);
    }
    assert!(store.list_keys(&acme(), &KeyFilter::default()).await.unwrap().is_empty());
}

/// A hash nobody has is `None`.
pub async fn unknown_hash_finds_nothing(store: Arc<dyn Store>) {
    insert(&store, sample_key(&acme())).await;
    let unknown = Sha256Hasher.hash("sk_live_nobody");
    assert_eq!(store.find_key_by_hash(&unknown).await.unwrap(), None);
}

/// Another tenant (same app or same tenant id in another app) can neither
/// see nor change anything of acme's.
pub async fn other_tenants_see_nothing_and_change_nothing(store: Arc<dyn Store>) {
    let policy = sample_policy(&acme(), "standard");
    store.insert_policy(&policy).await.unwrap();
    let key = insert(&store, modified(&sample_key(&acme()), |k| k.policy_id = Some(policy.id))).await;
    let scope = Scope {
        id: ScopeId::new(),
        tenant: acme(),
        name: "read".into(),
        description: "read things".into(),
        created_at: t0(),
    };
    store.insert_scope(&scope).await.unwrap();
    store.record_batch(&[usage(&key.key, at(1), 200)]).await.unwrap();
    let rotated = insert(&store, sample_key(&acme())).await;
    let rotation = rotation_of(&rotated, 10, Duration::from_secs(60));
    store.rotate_key(&acme(), &rotation).await.unwrap();

    for other in [globex(), acme_elsewhere()] {
        let id = key.key.id;
        assert_eq!(store.get_key(&other, id).await.unwrap(), None);
        assert!(store.list_keys(&other, &KeyFilter::default()).await.unwrap().is_empty());
        let revoke = Transition::to(KeyState::Revoked, at(20)).with_reason("not yours");
        assert_not_found(store.transition_key(&other, id, &revoke).await, "key");
        assert_not_found(store.set_key_scopes(&other, id, &["*".to_owned()], at(20)).await, "key");
        let mut theirs = rotation_of(&key, 20, Duration::ZERO);
        theirs.new_key = modified(&theirs.new_key, |k| k.tenant = other.clone());
        theirs.record.tenant = other.clone();
        assert_not_found(store.rotate_key(&other, &theirs).await, "key");

        assert_eq!(store.get_policy(&other, policy.id).await.unwrap(), None);
        assert!(store.list_policies(&other, Page::default()).await.unwrap().is_empty());
        let hijacked = Policy { tenant: other.clone(), name: "hijacked".into(), ..policy.clone() };
        assert_not_found(store.update_policy(&hijacked).await, "policy");
        assert_not_found(store.delete_policy(&other, policy.id).await, "policy");

        assert!(store.list_scopes(&other).await.unwrap().is_empty());
        assert_not_found(store.delete_scope(&other, scope.id).await, "scope");

        let all = TimeRange::default();
        assert!(store.list_usage(&other, id, all, Page::default()).await.unwrap().is_empty());
        assert!(store.usage_aggregates(&other, id, Period::Day, all).await.unwrap().is_empty());
        assert!(store.tenant_usage(&other, Period::Month, all).await.unwrap().is_empty());
        assert!(store.list_rotations(&other, rotated.key.id).await.unwrap().is_empty());
        assert!(store.list_rotations(&other, rotation.new_key.key.id).await.unwrap().is_empty());
    }

    // Nothing changed for acme.
    assert_eq!(store.get_key(&acme(), key.key.id).await.unwrap(), Some(key.clone()));
    assert_eq!(store.get_policy(&acme(), policy.id).await.unwrap().as_deref(), Some(&policy));
    assert_eq!(store.list_scopes(&acme()).await.unwrap(), vec![scope]);
    assert_eq!(store.list_rotations(&acme(), rotated.key.id).await.unwrap().len(), 1);
    let all = TimeRange::default();
    assert_eq!(store.list_usage(&acme(), key.key.id, all, Page::default()).await.unwrap().len(), 1);
}

/// Listings filter by state, environment and policy, in id order, by page.
pub async fn list_keys_filters_orders_and_paginates(store: Arc<dyn Store>) {
    let policy = bare_policy(&acme(), "p");
    store.insert_policy(&policy).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        let key = modified(&sample_key(&acme()), |k| {
            k.environment = if i % 2 == 0 { Environment::Live } else { Environment::Test };
            k.policy_id = (i < 3).then_some(policy.id);
        });
        ids.push(insert(&store, key).await.key.id);
    }
    insert(&store, sample_key(&globex())).await;
    store.transition_key(&acme(), ids[1], &Transition::to(KeyState::Suspended, at(1))).await.unwrap();
    store.transition_key(&acme(), ids[4], &Transition::to(KeyState::Revoked, at(1))).await.unwrap();

    let list = |filter: KeyFilter| {
        let store = Arc::clone(&store);
        async move { store.list_keys(&acme(), &filter).await.unwrap().iter().map(|k| k.id).collect::<Vec<_>>() }
    };
    assert_eq!(list(KeyFilter::default()).await, ids, "all of acme's keys, oldest first");
    assert_eq!(
        list(KeyFilter { state: Some(KeyState::Active), ..KeyFilter::default() }).await,
        [ids[0], ids[2], ids[3], ids[5], ids[6]]
    );
    assert_eq!(list(KeyFilter { state: Some(KeyState::Suspended), ..KeyFilter::default() }).await, [ids[1]]);
    assert_eq!(
        list(KeyFilter { environment: Some(Environment::Test), ..KeyFilter::default() }).await,
        [ids[1], ids[3], ids[5]]
    );
    assert_eq!(list(KeyFilter { policy_id: Some(policy.id), ..KeyFilter::default() }).await, [ids[0], ids[1], ids[2]]);
    let combined = KeyFilter {
        state: Some(KeyState::Active),
        environment: Some(Environment::Live),
        policy_id: Some(policy.id),
        ..KeyFilter::default()
    };
    assert_eq!(list(combined).await, [ids[0], ids[2]]);
    assert!(list(KeyFilter { state: Some(KeyState::Expired), ..KeyFilter::default() }).await.is_empty());

    assert_eq!(list(page(3, 0)).await, ids[..3]);
    assert_eq!(list(page(3, 3)).await, ids[3..6]);
    assert_eq!(list(page(3, 6)).await, ids[6..]);
    assert!(list(page(3, 7)).await.is_empty());
    assert!(list(page(0, 0)).await.is_empty());
    assert_eq!(list(page(2, 1)).await, ids[1..3]);
}

/// The owner filter matches the owner id exactly, within the tenant, and
/// combines with the other filters.
pub async fn list_keys_filters_by_owner_within_the_tenant(store: Arc<dyn Store>) {
    let owned =
        |tenant: &Tenant, owner: Option<&str>| modified(&sample_key(tenant), |k| k.owner_id = owner.map(str::to_owned));
    let a1 = insert(&store, owned(&acme(), Some("cus_a"))).await.key.id;
    insert(&store, owned(&acme(), Some("cus_b"))).await;
    insert(&store, owned(&acme(), None)).await;
    let a2 = insert(&store, owned(&acme(), Some("cus_a"))).await.key.id;
    insert(&store, owned(&acme(), Some("CUS_A"))).await;
    insert(&store, owned(&globex(), Some("cus_a"))).await;
    store.transition_key(&acme(), a2, &Transition::to(KeyState::Suspended, at(1))).await.unwrap();

    let list = |filter: KeyFilter| {
        let store = Arc::clone(&store);
        async move { store.list_keys(&acme(), &filter).await.unwrap().iter().map(|k| k.id).collect::<Vec<_>>() }
    };
    let of = |owner: &str| KeyFilter { owner_id: Some(owner.into()), ..KeyFilter::default() };
    assert_eq!(list(of("cus_a")).await, [a1, a2], "exact match, this tenant only, oldest first");
    let suspended = KeyFilter { state: Some(KeyState::Suspended), ..of("cus_a") };
    assert_eq!(list(suspended).await, [a2]);
    assert!(list(of("cus_")).await.is_empty(), "no prefix match");
    let got = store.get_key(&acme(), a1).await.unwrap().unwrap();
    assert_eq!(got.key.owner_id.as_deref(), Some("cus_a"));
}

#[track_caller]
fn assert_owner_key_limit<T: std::fmt::Debug>(result: keysmith_core::Result<T>, policy: &Policy, limit: u32) {
    match result {
        Err(Error::OwnerKeyLimit { policy_id, limit: l, .. }) if policy_id == policy.id && l == limit => {}
        other => panic!("expected OwnerKeyLimit {{ limit: {limit} }}, got {other:?}"),
    }
}

/// A policy's `max_active_keys_per_owner` counts the owner's `active` and
/// `suspended` keys under that policy, in that tenant; rotated, revoked and
/// expired keys free their place, and a rotation keeps the count.
pub async fn owner_key_limit_counts_live_keys_under_the_policy(store: Arc<dyn Store>) {
    let policy = Policy { max_active_keys_per_owner: Some(2), ..bare_policy(&acme(), "two per owner") };
    let other = bare_policy(&acme(), "unlimited");
    store.insert_policy(&policy).await.unwrap();
    store.insert_policy(&other).await.unwrap();
    let owned = |owner: Option<&str>, policy: &Policy| {
        modified(&sample_key(&acme()), |k| {
            k.owner_id = owner.map(str::to_owned);
            k.policy_id = Some(policy.id);
        })
    };
    let first = insert(&store, owned(Some("cus_a"), &policy)).await;
    let second = insert(&store, owned(Some("cus_a"), &policy)).await;
    let refused = owned(Some("cus_a"), &policy);
    assert_owner_key_limit(store.insert_key(&refused).await, &policy, 2);
    assert_eq!(store.find_key_by_hash(&refused.hash).await.unwrap(), None, "a refused key is not stored");
    // Other owners, keys without an owner and other policies are not counted.
    insert(&store, owned(Some("cus_b"), &policy)).await;
    insert(&store, owned(None, &policy)).await;
    insert(&store, owned(None, &policy)).await;
    insert(&store, owned(Some("cus_a"), &other)).await;

    // A suspended key keeps its place (it can be reactivated).
    store.transition_key(&acme(), second.key.id, &Transition::to(KeyState::Suspended, at(1))).await.unwrap();
    assert_owner_key_limit(store.insert_key(&owned(Some("cus_a"), &policy)).await, &policy, 2);
    // A rotation keeps the count: the rotated key no longer counts, its replacement does.
    store.rotate_key(&acme(), &rotation_of(&first, 2, Duration::from_secs(3600))).await.unwrap();
    assert_owner_key_limit(store.insert_key(&owned(Some("cus_a"), &policy)).await, &policy, 2);
    // A revoked key frees its place.
    store.transition_key(&acme(), second.key.id, &Transition::to(KeyState::Revoked, at(3))).await.unwrap();
    insert(&store, owned(Some("cus_a"), &policy)).await;
    assert_owner_key_limit(store.insert_key(&owned(Some("cus_a"), &policy)).await, &policy, 2);
    // So does a key past its expiry that nothing has marked expired yet.
    let expired = modified(&owned(Some("cus_c"), &policy), |k| k.expires_at = Some(t0()));
    insert(&store, expired.clone()).await;
    insert(&store, modified(&owned(Some("cus_c"), &policy), |k| k.created_at = at(10))).await;
    insert(&store, modified(&owned(Some("cus_c"), &policy), |k| k.created_at = at(10))).await;

    // The limit is the policy's own: another tenant's owner of that name is not counted.
    let globex_policy = Policy { max_active_keys_per_owner: Some(1), ..bare_policy(&globex(), "one") };
    store.insert_policy(&globex_policy).await.unwrap();
    let globex_key = || {
        modified(&sample_key(&globex()), |k| {
            k.owner_id = Some("cus_a".into());
            k.policy_id = Some(globex_policy.id);
        })
    };
    insert(&store, globex_key()).await;
    assert_owner_key_limit(store.insert_key(&globex_key()).await, &globex_policy, 1);
}

/// With a limit of 1, 32 concurrent creations for one owner leave exactly
/// one live key: the check and the insert are one atomic step.
pub async fn concurrent_creations_for_one_owner_leave_exactly_the_limit(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    let policy = Policy { max_active_keys_per_owner: Some(1), ..bare_policy(&acme(), "one per owner") };
    store.insert_policy(&policy).await.unwrap();
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = JoinSet::new();
    for _ in 0..RACERS {
        let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
        let key = modified(&sample_key(&acme()), |k| {
            k.owner_id = Some("cus_racer".into());
            k.policy_id = Some(policy.id);
        });
        tasks.spawn(async move {
            barrier.wait().await;
            store.insert_key(&key).await
        });
    }
    let mut created = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            Ok(()) => created += 1,
            refused => assert_owner_key_limit(refused, &policy, 1),
        }
    }
    assert_eq!(created, 1, "exactly one creation wins");
    let of_owner = KeyFilter { owner_id: Some("cus_racer".into()), ..KeyFilter::default() };
    assert_eq!(store.list_keys(&acme(), &of_owner).await.unwrap().len(), 1, "one key is stored");
}

// ---------------------------------------------------------------- credits

fn with_credits(stored: &StoredKey, credits: Credits) -> StoredKey {
    modified(stored, |k| k.credits = Some(credits))
}

async fn credits_of(store: &Arc<dyn Store>, key: &StoredKey) -> Option<Credits> {
    store.get_key(&key.key.tenant, key.key.id).await.unwrap().expect("key exists").key.credits
}

/// Credits are stored with the key, read with it (by id, by hash, in
/// listings), shared by its rotation's replacement, and set or removed as
/// a whole; a lineage without credits spends nothing.
pub async fn credits_belong_to_the_lineage_and_can_be_set_or_removed(store: Arc<dyn Store>) {
    let credits = Credits::new(5);
    let old = insert(&store, with_credits(&sample_key(&acme()), credits)).await;
    assert_eq!(credits_of(&store, &old).await, Some(credits));
    let found = store.find_key_by_hash(&old.hash).await.unwrap().unwrap();
    assert_eq!(found.key.credits, Some(credits));

    let rotation = rotation_of(&old, 10, Duration::from_secs(3600));
    store.rotate_key(&acme(), &rotation).await.unwrap();
    let new = rotation.new_key;
    assert_eq!(credits_of(&store, &new).await, Some(credits), "the replacement shares the credits");
    let spent = store.spend_credits(&old.key, 2, at(11)).await.unwrap();
    assert_eq!(spent, CreditSpend::Spent(Credits::new(3)), "the old secret spends from the same credits");
    assert_eq!(credits_of(&store, &new).await, Some(Credits::new(3)));
    let listed = store.list_keys(&acme(), &KeyFilter::default()).await.unwrap();
    assert!(listed.iter().all(|k| k.credits == Some(Credits::new(3))), "{listed:?}");

    let refill = Credits { refilled_at: Some(t0()), ..Credits::new(7).with_refill(100, Period::Month) };
    let set = store.set_credits(&acme(), new.key.id, Some(&refill)).await.unwrap();
    assert_eq!(set.credits, Some(refill));
    assert_eq!(credits_of(&store, &old).await, Some(refill));
    let removed = store.set_credits(&acme(), old.key.id, None).await.unwrap();
    assert_eq!(removed.credits, None);
    assert_eq!(credits_of(&store, &new).await, None);
    assert_eq!(store.spend_credits(&new.key, 1, at(12)).await.unwrap(), CreditSpend::Unlimited);

    // Another tenant's key is not found, and nothing changes.
    assert_not_found(store.set_credits(&globex(), new.key.id, Some(&credits)).await, "key");
    assert_not_found(store.add_credits(&globex(), new.key.id, 1, at(12)).await, "key");
    assert_eq!(credits_of(&store, &new).await, None);
}

/// 32 concurrent spends of credits that pay for 10: exactly 10 pass, the
/// others find them exhausted, and nothing goes below zero.
pub async fn concurrent_spends_never_take_credits_below_zero(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    let key = insert(&store, with_credits(&sample_key(&acme()), Credits::new(10))).await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = JoinSet::new();
    for _ in 0..RACERS {
        let (store, barrier, key) = (Arc::clone(&store), Arc::clone(&barrier), Arc::clone(&key.key));
        tasks.spawn(async move {
            barrier.wait().await;
            store.spend_credits(&key, 1, at(1)).await.unwrap()
        });
    }
    assert_eq!(tally_spends(tasks, 10).await, (10, RACERS - 10));
    assert_eq!(credits_of(&store, &key).await, Some(Credits::new(0)));
    // A cost larger than what is left spends nothing.
    store.add_credits(&acme(), key.key.id, 3, at(2)).await.unwrap();
    assert_eq!(store.spend_credits(&key.key, 4, at(2)).await.unwrap(), CreditSpend::Exhausted(Credits::new(3)));
    assert_eq!(store.spend_credits(&key.key, 3, at(2)).await.unwrap(), CreditSpend::Spent(Credits::new(0)));
}

/// How many of the racing spends of credits that began at `start` passed
/// and how many found them exhausted (at zero).
async fn tally_spends(mut tasks: JoinSet<CreditSpend>, start: u64) -> (usize, usize) {
    let (mut spent, mut exhausted) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            CreditSpend::Spent(credits) => {
                assert!(credits.remaining < start);
                spent += 1;
            }
            CreditSpend::Exhausted(credits) => {
                assert_eq!(credits.remaining, 0);
                exhausted += 1;
            }
            CreditSpend::Unlimited => panic!("the credits were set"),
        }
    }
    (spent, exhausted)
}

/// A refill resets `remaining` to its amount with the first spend (or
/// top-up) of a new UTC period, once; top-ups add within bounds; a refund
/// gives back, never past the bound.
pub async fn credits_refill_on_the_utc_period_boundary_and_top_up(store: Arc<dyn Store>) {
    let today = Period::Day.start_of(t0());
    let tomorrow = Period::Day.next_start(t0());
    let credits = Credits { refilled_at: Some(today), ..Credits::new(2).with_refill(5, Period::Day) };
    let key = insert(&store, with_credits(&sample_key(&acme()), credits)).await;
    let left = |remaining, refilled_at| Credits { remaining, refilled_at: Some(refilled_at), ..credits };

    assert_eq!(store.spend_credits(&key.key, 2, at(1)).await.unwrap(), CreditSpend::Spent(left(0, today)));
    assert_eq!(store.spend_credits(&key.key, 1, at(2)).await.unwrap(), CreditSpend::Exhausted(left(0, today)));
    let just_before = tomorrow - chrono::Duration::microseconds(1);
    assert_eq!(store.spend_credits(&key.key, 1, just_before).await.unwrap(), CreditSpend::Exhausted(left(0, today)));
    assert_eq!(store.spend_credits(&key.key, 1, tomorrow).await.unwrap(), CreditSpend::Spent(left(4, tomorrow)));
    assert_eq!(
        store.spend_credits(&key.key, 1, tomorrow).await.unwrap(),
        CreditSpend::Spent(left(3, tomorrow)),
        "one refill per period"
    );

    store.refund_credits(&key.key, 1).await.unwrap();
    assert_eq!(credits_of(&store, &key).await, Some(left(4, tomorrow)));
    // A top-up in a later period refills first, then adds.
    let next_day = Period::Day.next_start(tomorrow);
    let topped = store.add_credits(&acme(), key.key.id, 10, next_day).await.unwrap();
    assert_eq!(topped.credits, Some(left(15, next_day)));
    match store.add_credits(&acme(), key.key.id, Credits::MAX, next_day).await {
        Err(Error::InvalidInput { field: "amount", .. }) => {}
        other => panic!("expected InvalidInput for amount, got {other:?}"),
    }
    assert_eq!(credits_of(&store, &key).await, Some(left(15, next_day)), "a refused top-up changes nothing");
    store.refund_credits(&key.key, Credits::MAX).await.unwrap();
    assert_eq!(credits_of(&store, &key).await, Some(left(Credits::MAX, next_day)), "a refund stops at the bound");

    let plain = insert(&store, sample_key(&acme())).await;
    match store.add_credits(&acme(), plain.key.id, 1, next_day).await {
        Err(Error::InvalidInput { field: "credits", .. }) => {}
        other => panic!("expected InvalidInput for credits, got {other:?}"),
    }
    assert_eq!(credits_of(&store, &plain).await, None);
}

/// An owner's credits are its own within its tenant: the same owner id in
/// another tenant or application has none, a lineage's credits are apart,
/// and setting `None` removes them (nothing left to spend).
pub async fn owner_credits_are_per_tenant_and_owner_and_can_be_set_or_removed(store: Arc<dyn Store>) {
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), None);
    assert_eq!(store.spend_owner_credits(&acme(), "cust-1", 1, at(1)).await.unwrap(), CreditSpend::Unlimited);
    let credits = Credits::new(5);
    store.set_owner_credits(&acme(), "cust-1", Some(&credits)).await.unwrap();
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), Some(credits));
    for (tenant, owner) in [(acme(), "cust-2"), (globex(), "cust-1"), (acme_elsewhere(), "cust-1"), (acme(), "CUST-1")]
    {
        assert_eq!(store.owner_credits(&tenant, owner).await.unwrap(), None, "{tenant:?} {owner}");
        assert_eq!(store.spend_owner_credits(&tenant, owner, 1, at(1)).await.unwrap(), CreditSpend::Unlimited);
        store.refund_owner_credits(&tenant, owner, 1).await.unwrap();
        match store.add_owner_credits(&tenant, owner, 1, at(1)).await {
            Err(Error::InvalidInput { field: "credits", .. }) => {}
            other => panic!("expected InvalidInput for credits, got {other:?}"),
        }
        assert_eq!(store.owner_credits(&tenant, owner).await.unwrap(), None, "nothing was created");
    }
    // A key's lineage credits are not the owner's.
    let key = insert(&store, modified(&sample_key(&acme()), |k| k.owner_id = Some("cust-1".into()))).await;
    assert_eq!(credits_of(&store, &key).await, None);
    assert_eq!(store.spend_credits(&key.key, 1, at(2)).await.unwrap(), CreditSpend::Unlimited);

    let spent = store.spend_owner_credits(&acme(), "cust-1", 2, at(2)).await.unwrap();
    assert_eq!(spent, CreditSpend::Spent(Credits::new(3)));
    store.refund_owner_credits(&acme(), "cust-1", 1).await.unwrap();
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), Some(Credits::new(4)));
    let refill =
        Credits { refilled_at: Some(Period::Month.start_of(t0())), ..Credits::new(7).with_refill(9, Period::Month) };
    store.set_owner_credits(&acme(), "cust-1", Some(&refill)).await.unwrap();
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), Some(refill), "replaced whole");
    store.set_owner_credits(&acme(), "cust-1", None).await.unwrap();
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), None);
    assert_eq!(store.spend_owner_credits(&acme(), "cust-1", 1, at(3)).await.unwrap(), CreditSpend::Unlimited);
    store.set_owner_credits(&acme(), "cust-1", None).await.unwrap();
}

/// 32 concurrent spends of an owner's credits that pay for 10: exactly 10
/// pass, the others find them exhausted, and nothing goes below zero.
pub async fn concurrent_spends_never_take_owner_credits_below_zero(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    store.set_owner_credits(&acme(), "cust-1", Some(&Credits::new(10))).await.unwrap();
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = JoinSet::new();
    for _ in 0..RACERS {
        let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
        tasks.spawn(async move {
            barrier.wait().await;
            store.spend_owner_credits(&acme(), "cust-1", 1, at(1)).await.unwrap()
        });
    }
    assert_eq!(tally_spends(tasks, 10).await, (10, RACERS - 10));
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), Some(Credits::new(0)));
    // A cost larger than what is left spends nothing.
    assert_eq!(store.add_owner_credits(&acme(), "cust-1", 3, at(2)).await.unwrap(), Credits::new(3));
    let too_much = store.spend_owner_credits(&acme(), "cust-1", 4, at(2)).await.unwrap();
    assert_eq!(too_much, CreditSpend::Exhausted(Credits::new(3)));
    let all = store.spend_owner_credits(&acme(), "cust-1", 3, at(2)).await.unwrap();
    assert_eq!(all, CreditSpend::Spent(Credits::new(0)));
}

/// An owner's refill resets `remaining` with the first spend (or top-up)
/// of a new UTC period, once; top-ups add within bounds; a refund gives
/// back, never past the bound.
pub async fn owner_credits_refill_on_the_utc_period_boundary_and_top_up(store: Arc<dyn Store>) {
    let today = Period::Day.start_of(t0());
    let tomorrow = Period::Day.next_start(t0());
    let credits = Credits { refilled_at: Some(today), ..Credits::new(2).with_refill(5, Period::Day) };
    store.set_owner_credits(&acme(), "cust-1", Some(&credits)).await.unwrap();
    let left = |remaining, refilled_at| Credits { remaining, refilled_at: Some(refilled_at), ..credits };
    let spend = |cost, now| {
        let store = Arc::clone(&store);
        async move { store.spend_owner_credits(&acme(), "cust-1", cost, now).await.unwrap() }
    };

    assert_eq!(spend(2, at(1)).await, CreditSpend::Spent(left(0, today)));
    assert_eq!(spend(1, at(2)).await, CreditSpend::Exhausted(left(0, today)));
    let just_before = tomorrow - chrono::Duration::microseconds(1);
    assert_eq!(spend(1, just_before).await, CreditSpend::Exhausted(left(0, today)));
    assert_eq!(spend(1, tomorrow).await, CreditSpend::Spent(left(4, tomorrow)));
    assert_eq!(spend(1, tomorrow).await, CreditSpend::Spent(left(3, tomorrow)), "one refill per period");

    store.refund_owner_credits(&acme(), "cust-1", 1).await.unwrap();
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), Some(left(4, tomorrow)));
    // A top-up in a later period refills first, then adds.
    let next_day = Period::Day.next_start(tomorrow);
    assert_eq!(store.add_owner_credits(&acme(), "cust-1", 10, next_day).await.unwrap(), left(15, next_day));
    match store.add_owner_credits(&acme(), "cust-1", Credits::MAX, next_day).await {
        Err(Error::InvalidInput { field: "amount", .. }) => {}
        other => panic!("expected InvalidInput for amount, got {other:?}"),
    }
    let stored = store.owner_credits(&acme(), "cust-1").await.unwrap();
    assert_eq!(stored, Some(left(15, next_day)), "a refused top-up changes nothing");
    store.refund_owner_credits(&acme(), "cust-1", Credits::MAX).await.unwrap();
    let stored = store.owner_credits(&acme(), "cust-1").await.unwrap();
    assert_eq!(stored, Some(left(Credits::MAX, next_day)), "a refund stops at the bound");
}

// ---------------------------------------------------------------- lifecycle

/// Allowed changes apply (state, `updated_at`, the reason of a revocation
/// or suspension, cleared by reactivation); others are refused naming the
/// current state; unknown keys are not found.
pub async fn transitions_follow_the_lifecycle(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let id = key.key.id;

    // A suspension keeps its reason (a leaked key's is `leaked: <url>`).
    let suspend = Transition::to(KeyState::Suspended, at(10)).with_reason("leaked: https://example.com/a");
    let suspended = store.transition_key(&acme(), id, &suspend).await.unwrap();
    assert_eq!(suspended.state, KeyState::Suspended);
    assert_eq!(suspended.updated_at, at(10));
    assert_eq!(suspended.revoked_reason.as_deref(), Some("leaked: https://example.com/a"));
    assert_eq!(suspended.scopes, key.key.scopes);
    let expected = Key {
        state: KeyState::Suspended,
        updated_at: at(10),
        revoked_reason: Some("leaked: https://example.com/a".to_owned()),
        ..Key::clone(&key.key)
    };
    assert_eq!(suspended, expected, "nothing else changes");

    assert_invalid_transition(
        store.transition_key(&acme(), id, &Transition::to(KeyState::Suspended, at(11))).await,
        KeyState::Suspended,
        KeyState::Suspended,
    );
    assert_invalid_transition(
        store.transition_key(&acme(), id, &Transition::to(KeyState::Expired, at(11))).await,
        KeyState::Suspended,
        KeyState::Expired,
    );

    let active = store.transition_key(&acme(), id, &Transition::to(KeyState::Active, at(20))).await.unwrap();
    assert_eq!((active.state, active.updated_at), (KeyState::Active, at(20)));
    assert_eq!(active.revoked_reason, None, "reactivation clears the reason");

    let revoke = Transition::to(KeyState::Revoked, at(30)).with_reason("leaked in a gist");
    let revoked = store.transition_key(&acme(), id, &revoke).await.unwrap();
    assert_eq!(revoked.state, KeyState::Revoked);
    assert_eq!(revoked.revoked_reason.as_deref(), Some("leaked in a gist"));
    assert_eq!(revoked.updated_at, at(30));

    for to in KeyState::ALL {
        assert_invalid_transition(
            store.transition_key(&acme(), id, &Transition::to(to, at(40))).await,
            KeyState::Revoked,
            to,
        );
    }
    let stored = store.find_key_by_hash(&key.hash).await.unwrap().unwrap();
    assert_eq!(*stored.key, revoked, "the hash lookup sees the change");

    // Expiry from active, then nothing.
    let other = insert(&store, sample_key(&acme())).await;
    let expired =
        store.transition_key(&acme(), other.key.id, &Transition::to(KeyState::Expired, at(50))).await.unwrap();
    assert_eq!(expired.state, KeyState::Expired);
    assert_invalid_transition(
        store.transition_key(&acme(), other.key.id, &Transition::to(KeyState::Revoked, at(51))).await,
        KeyState::Expired,
        KeyState::Revoked,
    );

    assert_not_found(store.transition_key(&acme(), KeyId::new(), &revoke).await, "key");
}

/// 32 simultaneous revocations of one key: one succeeds, the rest are told
/// the key is already revoked.
pub async fn concurrent_revokes_have_exactly_one_winner(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    let key = insert(&store, sample_key(&acme())).await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = JoinSet::new();
    for i in 0..RACERS {
        let (store, barrier, id) = (Arc::clone(&store), Arc::clone(&barrier), key.key.id);
        tasks.spawn(async move {
            barrier.wait().await;
            let revoke = Transition::to(KeyState::Revoked, at(10)).with_reason(format!("racer {i}"));
            store.transition_key(&acme(), id, &revoke).await
        });
    }
    let mut winners = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(key) => winners.push(key),
            loser => assert_invalid_transition(loser, KeyState::Revoked, KeyState::Revoked),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one revocation wins");
    let stored = store.get_key(&acme(), key.key.id).await.unwrap().unwrap();
    assert_eq!(stored.key.revoked_reason, winners[0].revoked_reason, "the winner's reason is the one kept");
}

/// 32 simultaneous rotations of one key: one new key exists, one record.
pub async fn concurrent_rotations_have_exactly_one_winner(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    let old = insert(&store, sample_key(&acme())).await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = JoinSet::new();
    for _ in 0..RACERS {
        let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
        let rotation = rotation_of(&old, 10, Duration::from_secs(3600));
        tasks.spawn(async move {
            barrier.wait().await;
            let result = store.rotate_key(&acme(), &rotation).await;
            (rotation, result)
        });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (rotation, result) = joined.unwrap();
        match result {
            Ok(old) => winners.push((rotation, old)),
            loser => {
                assert_invalid_transition(loser, KeyState::Rotated, KeyState::Rotated);
                losers.push(rotation);
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one rotation wins");
    let (winner, old_now) = &winners[0];
    assert_eq!(old_now.state, KeyState::Rotated);
    assert!(store.find_key_by_hash(&winner.new_key.hash).await.unwrap().is_some());
    for loser in &losers {
        assert_eq!(store.find_key_by_hash(&loser.new_key.hash).await.unwrap(), None, "a loser's key is not stored");
        assert_eq!(store.get_key(&acme(), loser.new_key.key.id).await.unwrap(), None);
    }
    assert_eq!(store.list_rotations(&acme(), old.key.id).await.unwrap(), vec![winner.record.clone()]);
    let active = KeyFilter { state: Some(KeyState::Active), ..KeyFilter::default() };
    assert_eq!(store.list_keys(&acme(), &active).await.unwrap().len(), 1, "one active key: the winner's");
}

/// Suspensions racing revocations never bring a revoked key back.
pub async fn racing_suspend_never_undoes_a_revoke(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    let key = insert(&store, sample_key(&acme())).await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = JoinSet::new();
    for i in 0..RACERS {
        let (store, barrier, id) = (Arc::clone(&store), Arc::clone(&barrier), key.key.id);
        tasks.spawn(async move {
            barrier.wait().await;
            let to = if i.is_multiple_of(2) { KeyState::Suspended } else { KeyState::Revoked };
            (to, store.transition_key(&acme(), id, &Transition::to(to, at(10))).await)
        });
    }
    let (mut revokes, mut suspends) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (KeyState::Revoked, Ok(_)) => revokes += 1,
            (_, Ok(_)) => suspends += 1,
            (_, Err(Error::InvalidTransition { .. })) => {}
            (_, Err(error)) => panic!("unexpected error: {error}"),
        }
    }
    assert_eq!(revokes, 1, "exactly one revocation applies");
    assert!(suspends <= 1, "at most one suspension applies");
    assert_eq!(state_of(&store, &key).await, KeyState::Revoked);
}

/// A rotation moves the old key to `rotated` with its grace, inserts the new
/// key with its scopes and records the rotation, visible from both keys.
pub async fn rotation_writes_new_key_old_state_and_record(store: Arc<dyn Store>) {
    let policy = bare_policy(&acme(), "p");
    store.insert_policy(&policy).await.unwrap();
    let old = insert(&store, modified(&sample_key(&acme()), |k| k.policy_id = Some(policy.id))).await;
    let rotation = rotation_of(&old, 100, Duration::from_secs(3600));

    let returned = store.rotate_key(&acme(), &rotation).await.unwrap();
    let expected_old = Key {
        state: KeyState::Rotated,
        grace_expires_at: Some(at(100 + 3600)),
        updated_at: at(100),
        ..Key::clone(&old.key)
    };
    assert_eq!(returned, expected_old);
    assert_eq!(store.get_key(&acme(), old.key.id).await.unwrap().unwrap().key.as_ref(), &expected_old);
    assert_eq!(*store.find_key_by_hash(&old.hash).await.unwrap().unwrap().key, expected_old);

    let new = store.find_key_by_hash(&rotation.new_key.hash).await.unwrap().expect("new key stored");
    assert_eq!(new, rotation.new_key);
    assert_eq!(new.key.scopes, old.key.scopes);
    assert_eq!(new.key.policy_id, Some(policy.id));

    let record = rotation.record.clone();
    assert_eq!(store.list_rotations(&acme(), old.key.id).await.unwrap(), vec![record.clone()]);
    assert_eq!(store.list_rotations(&acme(), new.key.id).await.unwrap(), vec![record.clone()]);

    // Rotating the new key again: both records, oldest first.
    let second = rotation_of(&new, 200, Duration::ZERO);
    store.rotate_key(&acme(), &second).await.unwrap();
    assert_eq!(store.list_rotations(&acme(), new.key.id).await.unwrap(), vec![record, second.record.clone()]);
    assert_eq!(
        store.get_key(&acme(), new.key.id).await.unwrap().unwrap().key.grace_expires_at,
        Some(at(200)),
        "a zero grace ends at the rotation"
    );
}

/// A rotation whose new key cannot be written changes nothing.
pub async fn failed_rotation_leaves_old_key_active_and_no_record(store: Arc<dyn Store>) {
    let old = insert(&store, sample_key(&acme())).await;
    let bystander = insert(&store, sample_key(&acme())).await;

    // The new key's hash collides with another key's.
    let mut colliding = rotation_of(&old, 10, Duration::from_secs(60));
    colliding.new_key = StoredKey { hash: bystander.hash, ..colliding.new_key };
    colliding.record.new_hash = bystander.hash;
    assert_already_exists(store.rotate_key(&acme(), &colliding).await, "key");

    // The new key's id collides.
    let mut same_id = rotation_of(&old, 10, Duration::from_secs(60));
    same_id.new_key = modified(&same_id.new_key, |k| k.id = bystander.key.id);
    same_id.record.new_key_id = bystander.key.id;
    assert_already_exists(store.rotate_key(&acme(), &same_id).await, "key");

    // The new key names a policy that is not the tenant's.
    let mut foreign = rotation_of(&old, 10, Duration::from_secs(60));
    foreign.new_key = modified(&foreign.new_key, |k| k.policy_id = Some(PolicyId::new()));
    assert_not_found(store.rotate_key(&acme(), &foreign).await, "policy");

    assert_eq!(store.get_key(&acme(), old.key.id).await.unwrap(), Some(old.clone()), "old key untouched");
    assert_eq!(store.get_key(&acme(), bystander.key.id).await.unwrap(), Some(bystander));
    assert!(store.list_rotations(&acme(), old.key.id).await.unwrap().is_empty(), "no record");
    for failed in [&colliding, &foreign] {
        assert_eq!(store.get_key(&acme(), failed.new_key.key.id).await.unwrap(), None, "no new key");
    }
    assert_eq!(store.find_key_by_hash(&same_id.new_key.hash).await.unwrap(), None);
    assert_eq!(store.find_key_by_hash(&foreign.new_key.hash).await.unwrap(), None);
    assert_eq!(store.list_keys(&acme(), &KeyFilter::default()).await.unwrap().len(), 2);

    // And the old key still rotates fine afterwards.
    let ok = rotation_of(&old, 20, Duration::from_secs(60));
    assert_eq!(store.rotate_key(&acme(), &ok).await.unwrap().state, KeyState::Rotated);
}

/// Only an active key rotates; an unknown key is not found.
pub async fn rotation_needs_an_active_key(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    store.transition_key(&acme(), key.key.id, &Transition::to(KeyState::Suspended, at(1))).await.unwrap();
    let rotation = rotation_of(&key, 10, Duration::from_secs(60));
    assert_invalid_transition(store.rotate_key(&acme(), &rotation).await, KeyState::Suspended, KeyState::Rotated);
    assert_eq!(store.get_key(&acme(), rotation.new_key.key.id).await.unwrap(), None);

    let ghost = rotation_of(&sample_key(&acme()), 10, Duration::from_secs(60));
    assert_not_found(store.rotate_key(&acme(), &ghost).await, "key");
    assert_eq!(store.find_key_by_hash(&ghost.new_key.hash).await.unwrap(), None);
    assert!(store.list_rotations(&acme(), key.key.id).await.unwrap().is_empty());
}

/// A rotation cannot move a key into another tenant.
pub async fn rotation_across_tenants_is_rejected(store: Arc<dyn Store>) {
    let old = insert(&store, sample_key(&acme())).await;
    let mut rotation = rotation_of(&old, 10, Duration::from_secs(60));
    rotation.new_key = modified(&rotation.new_key, |k| k.tenant = globex());
    assert!(matches!(store.rotate_key(&acme(), &rotation).await, Err(Error::InvalidInput { .. })));
    assert_eq!(store.get_key(&acme(), old.key.id).await.unwrap(), Some(old.clone()));
    assert_eq!(store.find_key_by_hash(&rotation.new_key.hash).await.unwrap(), None);
    assert!(store.list_rotations(&acme(), old.key.id).await.unwrap().is_empty());
}

/// Scopes are replaced whole, keep their order, and may become empty.
pub async fn set_key_scopes_replaces_them_in_order(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let scopes: Vec<String> = ["zeta", "alpha", "mid:x"].map(str::to_owned).to_vec();
    let updated = store.set_key_scopes(&acme(), key.key.id, &scopes, at(5)).await.unwrap();
    assert_eq!(updated.scopes, scopes);
    assert_eq!(updated.updated_at, at(5));
    assert_eq!(updated, Key { scopes: scopes.clone(), updated_at: at(5), ..Key::clone(&key.key) });
    assert_eq!(store.find_key_by_hash(&key.hash).await.unwrap().unwrap().key.scopes, scopes);

    let cleared = store.set_key_scopes(&acme(), key.key.id, &[], at(6)).await.unwrap();
    assert!(cleared.scopes.is_empty());
    assert!(store.get_key(&acme(), key.key.id).await.unwrap().unwrap().key.scopes.is_empty());

    assert_not_found(store.set_key_scopes(&acme(), KeyId::new(), &scopes, at(7)).await, "key");
}

/// `last_used_at` only moves forward; touching an unknown key is harmless.
pub async fn touch_key_never_moves_last_used_backwards(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let last_used = |store: Arc<dyn Store>, key: StoredKey| async move {
        store.get_key(&acme(), key.key.id).await.unwrap().unwrap().key.last_used_at
    };
    store.touch_key(key.key.id, at(100)).await.unwrap();
    assert_eq!(last_used(Arc::clone(&store), key.clone()).await, Some(at(100)));
    store.touch_key(key.key.id, at(50)).await.unwrap();
    assert_eq!(last_used(Arc::clone(&store), key.clone()).await, Some(at(100)));
    store.touch_key(key.key.id, at(200)).await.unwrap();
    assert_eq!(last_used(Arc::clone(&store), key.clone()).await, Some(at(200)));
    assert_eq!(store.find_key_by_hash(&key.hash).await.unwrap().unwrap().key.last_used_at, Some(at(200)));
    let updated_at = store.get_key(&acme(), key.key.id).await.unwrap().unwrap().key.updated_at;
    assert_eq!(updated_at, t0(), "touching is not a change of the key");
    store.touch_key(KeyId::new(), at(300)).await.unwrap();
}

/// Due keys: active past expiry or policy age, rotated past grace; of every
/// tenant, by id, at most `limit`.
pub async fn due_keys_are_expired_aged_or_past_grace(store: Arc<dyn Store>) {
    let now = at(10 * 86_400);
    let aged = Policy { max_key_age: Some(Duration::from_secs(5 * 86_400)), ..bare_policy(&acme(), "aged") };
    let ageless = bare_policy(&acme(), "ageless");
    store.insert_policy(&aged).await.unwrap();
    store.insert_policy(&ageless).await.unwrap();

    let key = |change: Box<dyn FnOnce(&mut Key)>| modified(&sample_key(&acme()), change);
    let past_expiry = insert(&store, key(Box::new(|k| k.expires_at = Some(at(86_400))))).await;
    let at_expiry = insert(&store, key(Box::new(move |k| k.expires_at = Some(now)))).await;
    let _future_expiry = insert(&store, key(Box::new(|k| k.expires_at = Some(at(20 * 86_400))))).await;
    let too_old = insert(
        &store,
        key(Box::new(|k| {
            k.expires_at = None;
            k.policy_id = Some(aged.id);
        })),
    )
    .await;
    let _young = insert(
        &store,
        key(Box::new(|k| {
            k.expires_at = None;
            k.policy_id = Some(aged.id);
            k.created_at = at(6 * 86_400);
        })),
    )
    .await;
    let exactly_max_age = insert(
        &store,
        key(Box::new(|k| {
            k.expires_at = None;
            k.policy_id = Some(aged.id);
            k.created_at = at(5 * 86_400);
        })),
    )
    .await;
    let _no_age_limit = insert(
        &store,
        key(Box::new(|k| {
            k.expires_at = None;
            k.policy_id = Some(ageless.id);
        })),
    )
    .await;
    let grace_over = insert(&store, key(Box::new(|k| k.expires_at = None))).await;
    store.rotate_key(&acme(), &rotation_of(&grace_over, 60, Duration::from_secs(60))).await.unwrap();
    let in_grace = insert(&store, key(Box::new(|k| k.expires_at = None))).await;
    store.rotate_key(&acme(), &rotation_of(&in_grace, 60, Duration::from_secs(30 * 86_400))).await.unwrap();
    let revoked = insert(&store, key(Box::new(|k| k.expires_at = Some(at(1))))).await;
    store.transition_key(&acme(), revoked.key.id, &Transition::to(KeyState::Revoked, at(2))).await.unwrap();
    let suspended = insert(&store, key(Box::new(|k| k.expires_at = Some(at(1))))).await;
    store.transition_key(&acme(), suspended.key.id, &Transition::to(KeyState::Suspended, at(2))).await.unwrap();
    let elsewhere = insert(&store, modified(&sample_key(&globex()), |k| k.expires_at = Some(at(86_400)))).await;

    let due: Vec<KeyId> = store.list_due_keys(now, 100).await.unwrap().iter().map(|k| k.id).collect();
    let mut expected = vec![
        past_expiry.key.id,
        at_expiry.key.id,
        too_old.key.id,
        exactly_max_age.key.id,
        grace_over.key.id,
        elsewhere.key.id,
    ];
    expected.sort();
    assert_eq!(due, expected);
    let first_two: Vec<KeyId> = store.list_due_keys(now, 2).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(first_two, expected[..2]);
    assert!(store.list_due_keys(t0(), 100).await.unwrap().is_empty(), "nothing is due at the start");
}

// ---------------------------------------------------------------- policies

/// Every field of a policy survives the store; an update replaces them all.
pub async fn policy_round_trips_and_updates(store: Arc<dyn Store>) {
    let policy = sample_policy(&acme(), "standard");
    store.insert_policy(&policy).await.unwrap();
    assert_eq!(store.get_policy(&acme(), policy.id).await.unwrap().as_deref(), Some(&policy));
    let bare = bare_policy(&acme(), "bare");
    store.insert_policy(&bare).await.unwrap();
    assert_eq!(store.get_policy(&acme(), bare.id).await.unwrap().as_deref(), Some(&bare));
    let empty_quota = Policy {
        quota: Some(Quota::default()),
        rate_limits: vec![RateLimit::new("default", 1, Duration::from_secs(1))],
        ..bare_policy(&acme(), "empty quota")
    };
    store.insert_policy(&empty_quota).await.unwrap();
    assert_eq!(store.get_policy(&acme(), empty_quota.id).await.unwrap().as_deref(), Some(&empty_quota));

    let updated = Policy {
        name: "premium".into(),
        rate_limits: vec![RateLimit::new("per-second", 5000, Duration::from_secs(1))],
        limit_by: LimitBy::Key,
        allowed_ips: vec!["192.168.1.7/32".parse().unwrap()],
        allowed_origins: vec![],
        max_key_age: None,
        quota: Some(Quota { daily: None, monthly: Some(1_000_000) }),
        updated_at: at(60),
        ..policy.clone()
    };
    store.update_policy(&updated).await.unwrap();
    assert_eq!(store.get_policy(&acme(), policy.id).await.unwrap().as_deref(), Some(&updated));

    assert_not_found(store.update_policy(&bare_policy(&acme(), "ghost")).await, "policy");
    let clash = Policy { name: "bare".into(), ..updated.clone() };
    assert_already_exists(store.update_policy(&clash).await, "policy");
    assert_eq!(store.get_policy(&acme(), policy.id).await.unwrap().as_deref(), Some(&updated), "unchanged");
    assert_eq!(store.get_policy(&acme(), PolicyId::new()).await.unwrap(), None);
}

/// Two policies of one tenant cannot share a name; two tenants can.
pub async fn policy_names_are_unique_per_tenant(store: Arc<dyn Store>) {
    store.insert_policy(&bare_policy(&acme(), "standard")).await.unwrap();
    assert_already_exists(store.insert_policy(&bare_policy(&acme(), "standard")).await, "policy");
    store.insert_policy(&bare_policy(&globex(), "standard")).await.unwrap();
    store.insert_policy(&bare_policy(&acme_elsewhere(), "standard")).await.unwrap();
    store.insert_policy(&bare_policy(&acme(), "Standard")).await.unwrap();
    assert_eq!(store.list_policies(&acme(), Page::default()).await.unwrap().len(), 2);
}

/// Policies list in id order, by page.
pub async fn list_policies_orders_and_paginates(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let policy = bare_policy(&acme(), &format!("p{}", 9 - i));
        store.insert_policy(&policy).await.unwrap();
        ids.push(policy.id);
    }
    store.insert_policy(&bare_policy(&globex(), "p")).await.unwrap();
    let list = |page: Page| {
        let store = Arc::clone(&store);
        async move { store.list_policies(&acme(), page).await.unwrap().iter().map(|p| p.id).collect::<Vec<_>>() }
    };
    assert_eq!(list(Page::default()).await, ids);
    assert_eq!(list(Page::new(2, 0)).await, ids[..2]);
    assert_eq!(list(Page::new(2, 2)).await, ids[2..4]);
    assert_eq!(list(Page::new(2, 4)).await, ids[4..]);
    assert!(list(Page::new(2, 6)).await.is_empty());
}

/// A policy used by an active, suspended or rotated key cannot go; once
/// every key using it is terminal it can.
pub async fn policy_in_use_by_a_live_key_cannot_be_deleted(store: Arc<dyn Store>) {
    let policy = bare_policy(&acme(), "standard");
    store.insert_policy(&policy).await.unwrap();
    let uses = |store: Arc<dyn Store>| {
        let policy_id = policy.id;
        async move { insert(&store, modified(&sample_key(&acme()), |k| k.policy_id = Some(policy_id))).await }
    };
    let key = uses(Arc::clone(&store)).await;
    let in_use = |result: keysmith_core::Result<()>| match result {
        Err(Error::PolicyInUse { policy_id }) if policy_id == policy.id => {}
        other => panic!("expected PolicyInUse, got {other:?}"),
    };

    in_use(store.delete_policy(&acme(), policy.id).await);
    store.transition_key(&acme(), key.key.id, &Transition::to(KeyState::Suspended, at(1))).await.unwrap();
    in_use(store.delete_policy(&acme(), policy.id).await);
    store.transition_key(&acme(), key.key.id, &Transition::to(KeyState::Revoked, at(2))).await.unwrap();

    let rotated = uses(Arc::clone(&store)).await;
    let rotation = rotation_of(&rotated, 3, Duration::from_secs(60));
    store.rotate_key(&acme(), &rotation).await.unwrap();
    in_use(store.delete_policy(&acme(), policy.id).await);
    store.transition_key(&acme(), rotation.new_key.key.id, &Transition::to(KeyState::Expired, at(4))).await.unwrap();
    in_use(store.delete_policy(&acme(), policy.id).await); // the rotated key still validates in its grace
    store.transition_key(&acme(), rotated.key.id, &Transition::to(KeyState::Revoked, at(5))).await.unwrap();

    assert_not_found(store.delete_policy(&globex(), policy.id).await, "policy");
    store.delete_policy(&acme(), policy.id).await.unwrap();
    assert_eq!(store.get_policy(&acme(), policy.id).await.unwrap(), None);
    assert_not_found(store.delete_policy(&acme(), policy.id).await, "policy");
    // Terminal keys that used it are still there.
    assert_eq!(state_of(&store, &key).await, KeyState::Revoked);
    assert_eq!(state_of(&store, &rotated).await, KeyState::Revoked);
}

/// A policy deletion racing a key creation under it: never both.
pub async fn policy_delete_and_key_insert_race_atomically(store: Arc<dyn Store>) {
    for round in 0..20 {
        let policy = bare_policy(&acme(), &format!("race {round}"));
        store.insert_policy(&policy).await.unwrap();
        let key = modified(&sample_key(&acme()), |k| k.policy_id = Some(policy.id));
        let barrier = Arc::new(Barrier::new(2));
        let deleting = {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                store.delete_policy(&acme(), policy.id).await
            })
        };
        let inserting = {
            let (store, barrier, key) = (Arc::clone(&store), Arc::clone(&barrier), key.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.insert_key(&key).await
            })
        };
        let (deleted, inserted) = (deleting.await.unwrap(), inserting.await.unwrap());
        match (&deleted, &inserted) {
            (Ok(()), Err(Error::NotFound { entity: "policy", .. })) => {
                assert_eq!(store.get_key(&acme(), key.key.id).await.unwrap(), None);
            }
            (Err(Error::PolicyInUse { .. }), Ok(())) => {
                assert!(store.get_policy(&acme(), policy.id).await.unwrap().is_some());
                let stored = store.get_key(&acme(), key.key.id).await.unwrap().unwrap();
                assert_eq!(stored.key.policy_id, Some(policy.id));
            }
            other => panic!("round {round}: delete and insert must not both win or both lose: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- scopes

/// The registry: names unique per tenant, listed by name (byte order),
/// deletion leaves keys' scopes alone.
pub async fn scope_registry_is_per_tenant_and_sorted_by_name(store: Arc<dyn Store>) {
    let scope = |tenant: &Tenant, name: &str| Scope {
        id: ScopeId::new(),
        tenant: tenant.clone(),
        name: name.into(),
        description: format!("the {name} scope"),
        created_at: t0(),
    };
    let names = ["read:users", "read", "Write", "admin", "read-all", "read:users:emails"];
    let mut scopes = Vec::new();
    for name in names {
        let s = scope(&acme(), name);
        store.insert_scope(&s).await.unwrap();
        scopes.push(s);
    }
    assert_already_exists(store.insert_scope(&scope(&acme(), "read")).await, "scope");
    store.insert_scope(&scope(&globex(), "read")).await.unwrap();

    let listed = store.list_scopes(&acme()).await.unwrap();
    let listed_names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(listed_names, ["Write", "admin", "read", "read-all", "read:users", "read:users:emails"]);
    let read = scopes.iter().find(|s| s.name == "read").unwrap();
    assert_eq!(listed.iter().find(|s| s.name == "read"), Some(read), "every field round-trips");

    let key = insert(&store, modified(&sample_key(&acme()), |k| k.scopes = vec!["read".into()])).await;
    store.delete_scope(&acme(), read.id).await.unwrap();
    assert_not_found(store.delete_scope(&acme(), read.id).await, "scope");
    assert_eq!(store.list_scopes(&acme()).await.unwrap().len(), names.len() - 1);
    assert_eq!(store.get_key(&acme(), key.key.id).await.unwrap().unwrap().key.scopes, ["read"]);
    store.insert_scope(&scope(&acme(), "read")).await.unwrap();
    assert_eq!(store.list_scopes(&globex()).await.unwrap().len(), 1);
}

// ---------------------------------------------------------------- usage

/// Records are kept as written and rolled up per key into UTC days and
/// months, errors being statuses of 400 and above.
pub async fn usage_batches_roll_up_into_days_and_months(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let other_key = insert(&store, sample_key(&acme())).await;
    let theirs = insert(&store, sample_key(&globex())).await;
    let day = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 3, d, h, 30, 0).unwrap();

    let mut records = vec![
        usage(&key.key, day(15, 0), 200),
        usage(&key.key, day(15, 23), 399),
        usage(&key.key, day(15, 12), 400),
        usage(&key.key, day(16, 1), 503),
        usage(&key.key, Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap(), 201),
        usage(&other_key.key, day(15, 8), 404),
        usage(&theirs.key, day(15, 9), 500),
    ];
    records[1].ip = Some("2001:db8::1".parse().unwrap());
    records[1].user_agent = None;
    records[2].ip = None;
    records[2].method = "POST".into();
    records[2].latency = Duration::from_millis(1234);
    store.record_batch(&records).await.unwrap();

    let all = TimeRange::default();
    let listed = store.list_usage(&acme(), key.key.id, all, Page::default()).await.unwrap();
    let mut expected: Vec<UsageRecord> = records[..5].to_vec();
    expected.sort_by_key(|r| r.timestamp);
    assert_eq!(listed, expected, "records round-trip, oldest first");

    let days = store.usage_aggregates(&acme(), key.key.id, Period::Day, all).await.unwrap();
    let summary: Vec<_> = days.iter().map(|a| (a.period_start, a.requests, a.errors)).collect();
    assert_eq!(
        summary,
        [
            (Utc.with_ymd_and_hms(2026, 3, 15, 0, 0, 0).unwrap(), 3, 1),
            (Utc.with_ymd_and_hms(2026, 3, 16, 0, 0, 0).unwrap(), 1, 1),
            (Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap(), 1, 0),
        ]
    );
    assert!(days.iter().all(|a| a.key_id == key.key.id && a.tenant == acme() && a.period == Period::Day));

    let months = store.usage_aggregates(&acme(), key.key.id, Period::Month, all).await.unwrap();
    let summary: Vec<_> = months.iter().map(|a| (a.period_start, a.requests, a.errors)).collect();
    assert_eq!(
        summary,
        [
            (Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(), 4, 2),
            (Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap(), 1, 0),
        ]
    );

    let totals = store.tenant_usage(&acme(), Period::Day, all).await.unwrap();
    let summary: Vec<_> = totals.iter().map(|t| (t.period_start, t.requests, t.errors)).collect();
    assert_eq!(
        summary,
        [
            (Utc.with_ymd_and_hms(2026, 3, 15, 0, 0, 0).unwrap(), 4, 2),
            (Utc.with_ymd_and_hms(2026, 3, 16, 0, 0, 0).unwrap(), 1, 1),
            (Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap(), 1, 0),
        ]
    );
    let monthly = store.tenant_usage(&acme(), Period::Month, all).await.unwrap();
    assert_eq!(monthly.iter().map(|t| (t.requests, t.errors)).collect::<Vec<_>>(), [(5, 3), (1, 0)]);
    assert!(monthly.iter().all(|t| t.period == Period::Month));
    let theirs_total = store.tenant_usage(&globex(), Period::Month, all).await.unwrap();
    assert_eq!(theirs_total.iter().map(|t| (t.requests, t.errors)).collect::<Vec<_>>(), [(1, 1)]);

    store.record_batch(&[]).await.unwrap();
}

/// Batches add up; every record counts once, in its day and its month, also
/// when a retried batch brings it again.
pub async fn usage_batches_accumulate_and_count_each_record_once(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let first: Vec<_> = (0..3).map(|i| usage(&key.key, at(i), if i == 0 { 500 } else { 200 })).collect();
    let second: Vec<_> = (3..5).map(|i| usage(&key.key, at(i), 429)).collect();
    store.record_batch(&first).await.unwrap();
    store.record_batch(&second).await.unwrap();
    // A retried batch that repeats stored records and brings new ones adds only the new ones.
    let retried = [first[1].clone(), usage(&key.key, at(5), 404), first[0].clone(), usage(&key.key, at(6), 200)];
    store.record_batch(&retried).await.unwrap();

    let all = TimeRange::default();
    for period in [Period::Day, Period::Month] {
        let aggregates = store.usage_aggregates(&acme(), key.key.id, period, all).await.unwrap();
        assert_eq!(aggregates.len(), 1, "{period}");
        assert_eq!((aggregates[0].requests, aggregates[0].errors), (7, 4), "{period}");
        assert_eq!(aggregates[0].period_start, period.start_of(t0()));
    }
    assert_eq!(store.list_usage(&acme(), key.key.id, all, Page::default()).await.unwrap().len(), 7);
}

/// A batch larger than any single statement's bound-variable limit is
/// written whole.
pub async fn large_usage_batch_is_written_whole(store: Arc<dyn Store>) {
    const RECORDS: usize = 2_500;
    let keys = [insert(&store, sample_key(&acme())).await, insert(&store, sample_key(&acme())).await];
    let records: Vec<_> = (0..RECORDS)
        .map(|i| {
            let secs = i64::try_from(i).unwrap() * 60; // spans three days
            usage(&keys[i % 2].key, at(secs), if i.is_multiple_of(10) { 500 } else { 200 })
        })
        .collect();
    store.record_batch(&records).await.unwrap();

    let all = TimeRange::default();
    let totals = store.tenant_usage(&acme(), Period::Month, all).await.unwrap();
    assert_eq!(totals.iter().map(|t| (t.requests, t.errors)).collect::<Vec<_>>(), [(2_500, 250)]);
    let days = store.tenant_usage(&acme(), Period::Day, all).await.unwrap();
    assert_eq!(days.iter().map(|t| t.requests).sum::<u64>(), 2_500);
    let mut seen = HashSet::new();
    let mut offset = 0;
    loop {
        let page = store.list_usage(&acme(), keys[0].key.id, all, Page::new(Page::MAX_LIMIT, offset)).await.unwrap();
        if page.is_empty() {
            break;
        }
        offset += page.len() as u64;
        seen.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(seen.len(), RECORDS / 2);
}

/// Usage and aggregates filter by a half-open time range and paginate.
pub async fn usage_queries_filter_by_range_and_paginate(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let records: Vec<_> = (0..10).map(|i| usage(&key.key, at(i * 3600), 200)).collect();
    store.record_batch(&records).await.unwrap();
    let ids = |records: Vec<UsageRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all_ids = ids(records.clone());

    let range = TimeRange { from: Some(at(2 * 3600)), to: Some(at(5 * 3600)) };
    let listed = store.list_usage(&acme(), key.key.id, range, Page::default()).await.unwrap();
    assert_eq!(ids(listed), all_ids[2..5], "from is inclusive, to exclusive");
    let open_end = TimeRange { from: Some(at(8 * 3600)), to: None };
    assert_eq!(ids(store.list_usage(&acme(), key.key.id, open_end, Page::default()).await.unwrap()), all_ids[8..]);
    let open_start = TimeRange { from: None, to: Some(at(3600)) };
    assert_eq!(ids(store.list_usage(&acme(), key.key.id, open_start, Page::default()).await.unwrap()), all_ids[..1]);
    let paged = store.list_usage(&acme(), key.key.id, TimeRange::default(), Page::new(4, 4)).await.unwrap();
    assert_eq!(ids(paged), all_ids[4..8]);
    assert!(store.list_usage(&acme(), KeyId::new(), TimeRange::default(), Page::default()).await.unwrap().is_empty());

    // Aggregates: by the start of their period.
    let mut later = usage(&key.key, at(3 * 86_400), 200);
    later.timestamp = Utc.with_ymd_and_hms(2026, 3, 18, 1, 0, 0).unwrap();
    store.record_batch(&[later]).await.unwrap();
    let day = |d: u32| Some(Utc.with_ymd_and_hms(2026, 3, d, 0, 0, 0).unwrap());
    let range = TimeRange { from: day(16), to: day(19) };
    let days = store.usage_aggregates(&acme(), key.key.id, Period::Day, range).await.unwrap();
    assert_eq!(days.iter().map(|a| (a.period_start, a.requests)).collect::<Vec<_>>(), [(day(18).unwrap(), 1)]);
    let up_to = TimeRange { from: None, to: day(18) };
    let days = store.usage_aggregates(&acme(), key.key.id, Period::Day, up_to).await.unwrap();
    assert_eq!(days.iter().map(|a| a.requests).collect::<Vec<_>>(), [10]);
    let totals = store.tenant_usage(&acme(), Period::Day, range).await.unwrap();
    assert_eq!(totals.iter().map(|t| t.requests).collect::<Vec<_>>(), [1]);
    let month = TimeRange { from: day(2), to: None };
    assert!(store.usage_aggregates(&acme(), key.key.id, Period::Month, month).await.unwrap().is_empty());
}

// ---------------------------------------------------------------- lifecycle of the store

/// Migrating again is harmless; ping answers.
pub async fn migrate_is_idempotent_and_ping_answers(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.get_key(&acme(), key.key.id).await.unwrap(), Some(key), "data survives migrations");
}

/// After `close`, calls fail with a store error.
pub async fn closed_store_fails_with_store_error(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    store.close().await;
    assert!(matches!(store.ping().await, Err(Error::Store { .. })));
    assert!(matches!(store.get_key(&acme(), key.key.id).await, Err(Error::Store { .. })));
    assert!(matches!(store.insert_key(&sample_key(&acme())).await, Err(Error::Store { .. })));
}

/// A lineage's usage is the sum over every key rotation made from its first
/// key, per period, and nothing of other keys or tenants.
pub async fn lineage_usage_sums_every_key_of_the_lineage(store: Arc<dyn Store>) {
    let first = insert(&store, sample_key(&acme())).await;
    let rotation = rotation_of(&first, 10, Duration::from_secs(3600));
    store.rotate_key(&acme(), &rotation).await.unwrap();
    let second = store.get_key(&acme(), rotation.new_key.key.id).await.unwrap().unwrap();
    assert_eq!(second.key.lineage_id, first.key.id, "the new key keeps the lineage");
    let other = insert(&store, sample_key(&acme())).await;
    let next_day = 86_400 + 5;
    let batch = [
        usage(&first.key, at(20), 200),
        usage(&second.key, at(30), 500),
        usage(&second.key, at(next_day), 200),
        usage(&other.key, at(40), 200),
    ];
    store.record_batch(&batch).await.unwrap();

    let all = TimeRange::default();
    let lineage = first.key.id;
    let totals = |period, range| {
        let store = Arc::clone(&store);
        async move {
            let totals = store.lineage_usage(&acme(), lineage, period, range).await.unwrap();
            totals.into_iter().map(|t| (t.period_start, t.requests, t.errors)).collect::<Vec<_>>()
        }
    };
    let today = Period::Day.start_of(t0());
    let tomorrow = Period::Day.next_start(t0());
    assert_eq!(totals(Period::Day, all).await, [(today, 2, 1), (tomorrow, 1, 0)]);
    assert_eq!(totals(Period::Month, all).await, [(Period::Month.start_of(t0()), 3, 1)]);
    let from_tomorrow = TimeRange { from: Some(tomorrow), to: None };
    assert_eq!(totals(Period::Day, from_tomorrow).await, [(tomorrow, 1, 0)]);

    let requests = |tenant: Tenant, lineage: KeyId| {
        let store = Arc::clone(&store);
        async move {
            let totals = store.lineage_usage(&tenant, lineage, Period::Month, all).await.unwrap();
            totals.iter().map(|t| t.requests).sum::<u64>()
        }
    };
    assert_eq!(requests(acme(), other.key.id).await, 1);
    assert_eq!(requests(acme(), second.key.id).await, 0, "a successor's own id names no lineage");
    assert_eq!(requests(globex(), lineage).await, 0, "another tenant sees nothing");
}

/// An owner's usage is the sum over every key of the tenant that carries
/// its id (rotated successors included), per period, and nothing of other
/// owners, ownerless keys or another tenant's (or app's) owner of that id.
pub async fn owner_usage_sums_every_key_of_the_owner_in_the_tenant(store: Arc<dyn Store>) {
    let owned =
        |tenant: &Tenant, owner: Option<&str>| modified(&sample_key(tenant), |k| k.owner_id = owner.map(str::to_owned));
    let first = insert(&store, owned(&acme(), Some("cus_a"))).await;
    let second = insert(&store, owned(&acme(), Some("cus_a"))).await;
    let rotation = rotation_of(&second, 10, Duration::from_secs(3600));
    store.rotate_key(&acme(), &rotation).await.unwrap();
    let successor = store.get_key(&acme(), rotation.new_key.key.id).await.unwrap().unwrap();
    assert_eq!(successor.key.owner_id.as_deref(), Some("cus_a"), "rotation keeps the owner");
    let others = [
        insert(&store, owned(&acme(), Some("cus_b"))).await,
        insert(&store, owned(&acme(), Some("CUS_A"))).await,
        insert(&store, owned(&acme(), None)).await,
        insert(&store, owned(&globex(), Some("cus_a"))).await,
        insert(&store, owned(&acme_elsewhere(), Some("cus_a"))).await,
    ];
    let next_day = 86_400 + 5;
    let mut batch = vec![
        usage(&first.key, at(20), 200),
        usage(&second.key, at(30), 500),
        usage(&successor.key, at(40), 200),
        usage(&first.key, at(next_day), 200),
    ];
    batch.extend(others.iter().map(|k| usage(&k.key, at(50), 200)));
    store.record_batch(&batch).await.unwrap();

    let all = TimeRange::default();
    let totals = |tenant: Tenant, owner: &'static str, period, range| {
        let store = Arc::clone(&store);
        async move {
            let totals = store.owner_usage(&tenant, owner, period, range).await.unwrap();
            totals.into_iter().map(|t| (t.period_start, t.requests, t.errors)).collect::<Vec<_>>()
        }
    };
    let today = Period::Day.start_of(t0());
    let tomorrow = Period::Day.next_start(t0());
    assert_eq!(totals(acme(), "cus_a", Period::Day, all).await, [(today, 3, 1), (tomorrow, 1, 0)]);
    assert_eq!(totals(acme(), "cus_a", Period::Month, all).await, [(Period::Month.start_of(t0()), 4, 1)]);
    let from_tomorrow = TimeRange { from: Some(tomorrow), to: None };
    assert_eq!(totals(acme(), "cus_a", Period::Day, from_tomorrow).await, [(tomorrow, 1, 0)]);
    assert_eq!(totals(acme(), "cus_b", Period::Month, all).await, [(Period::Month.start_of(t0()), 1, 0)]);
    assert!(totals(acme(), "cus_", Period::Month, all).await.is_empty(), "no prefix match");
    assert!(totals(acme(), "nobody", Period::Month, all).await.is_empty());
    let elsewhere = totals(acme_elsewhere(), "cus_a", Period::Month, all).await;
    assert_eq!(elsewhere, [(Period::Month.start_of(t0()), 1, 0)], "another app's tenant of the same id counts its own");
}

/// An engine on `store` with a manual clock at [`t0`].
fn engine_on(store: Arc<dyn Store>, clock: &ManualClock) -> Engine {
    let config = UsageConfig { quota_refresh: Duration::from_secs(5), ..UsageConfig::default() };
    engine_builder(store).with_clock(clock.clone()).with_usage_config(config).build().unwrap()
}

/// The usage record of a validated request.
fn record_of(validation: &Validation) -> UsageRecord {
    UsageRecord { timestamp: validation.checked_at(), ..usage(&validation.key, validation.checked_at(), 200) }
}

#[track_caller]
fn refusal_of(result: Result<Validation, ValidationError>) -> Refusal {
    match result {
        Err(ValidationError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Rotation keeps the credential's budget: both secrets share one rate
/// limit and one quota (also as read back from the store by another
/// engine), the new key keeps `expires_at`, and a rotation for
/// `compromised` with no grace stops the old key at once.
pub async fn rotation_shares_the_lineage_budget_and_keeps_the_expiry(store: Arc<dyn Store>) {
    let clock = ManualClock::new(t0());
    let engine = engine_on(Arc::clone(&store), &clock);
    let acme = engine.tenant("billing", "acme");
    let spec = PolicySpec::new("metered")
        .with_rate_limit(3, Duration::from_secs(3600))
        .with_quota(Some(4), None)
        .with_rotation_grace(Duration::from_secs(3600));
    let policy = acme.create_policy(spec).await.unwrap();
    let expires_at = at(86_400 * 30);
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id).with_expires_at(expires_at)).await.unwrap();
    let ctx = RequestContext::new();
    let mut remaining = Vec::new();
    let first = engine.validate(created.raw.expose(), &ctx).await.unwrap();
    remaining.push(first.rate_limits[0].remaining);
    engine.record_usage(record_of(&first));

    let rotated = acme.rotate_key(created.key.id, RotationReason::Scheduled, None).await.unwrap();
    assert_eq!(rotated.record.grace_ttl, Duration::from_secs(3600), "the policy's grace");
    assert_eq!(rotated.key.expires_at, Some(expires_at), "the new key keeps the expiry");
    assert_eq!(rotated.key.lineage_id, created.key.id);
    assert_eq!(acme.get_key(rotated.key.id).await.unwrap().expires_at, Some(expires_at));

    // Old and new secret draw on one rate limit.
    for raw in [rotated.raw.expose(), created.raw.expose()] {
        let passed = engine.validate(raw, &ctx).await.unwrap();
        remaining.push(passed.rate_limits[0].remaining);
        engine.record_usage(record_of(&passed));
    }
    assert_eq!(remaining, [2, 1, 0]);
    assert!(matches!(refusal_of(engine.validate(rotated.raw.expose(), &ctx).await), Refusal::RateLimited { .. }));
    engine.flush_usage().await;

    // Another engine (a restart) reads the lineage's quota from the store:
    // three of four spent, whichever secret spent them.
    let restarted = engine_on(Arc::clone(&store), &clock);
    let passed = restarted.validate(rotated.raw.expose(), &ctx).await.unwrap();
    restarted.record_usage(record_of(&passed));
    assert!(matches!(refusal_of(restarted.validate(rotated.raw.expose(), &ctx).await), Refusal::QuotaExceeded { .. }));

    // Compromised, no grace given: the old secret stops at once, and the
    // replacement starts from the lineage's spent quota.
    let acme = restarted.tenant("billing", "acme");
    let replaced = acme.rotate_key(rotated.key.id, RotationReason::Compromised, None).await.unwrap();
    assert_eq!(replaced.record.grace_ttl, Duration::ZERO);
    assert_eq!(refusal_of(restarted.validate(rotated.raw.expose(), &ctx).await), Refusal::Revoked);
    assert!(matches!(refusal_of(restarted.validate(replaced.raw.expose(), &ctx).await), Refusal::QuotaExceeded { .. }));
    restarted.flush_usage().await;

    // Without a policy grace: the engine's default of 24 hours.
    let plain = acme.create_key(NewKey::new("plain")).await.unwrap();
    let rotated = acme.rotate_key(plain.key.id, RotationReason::Manual, None).await.unwrap();
    assert_eq!(rotated.record.grace_ttl, Duration::from_secs(24 * 3600));
}

/// Holds the next usage batch after the store has written it and before
/// the writer learns so.
#[derive(Debug, Default)]
struct HoldWrittenBatch {
    armed: std::sync::atomic::AtomicBool,
    written: Notify,
    release: Notify,
}

#[async_trait::async_trait]
impl StoreProbe for HoldWrittenBatch {
    async fn after(&self, op: StoreOp) {
        if op == StoreOp::RecordBatch && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.written.notify_one();
            self.release.notified().await;
        }
    }
}

/// A quota re-read that lands after the store wrote a batch but before the
/// writer marked it written does not count the batch twice: a daily quota
/// of 10 admits 10.
pub async fn a_quota_reload_racing_a_batch_write_counts_the_batch_once(store: Arc<dyn Store>) {
    let probe = Arc::new(HoldWrittenBatch::default());
    let probed: Arc<dyn Store> = Arc::new(ProbedStore::new(store, Arc::clone(&probe)));
    let clock = ManualClock::new(t0());
    let engine = engine_on(probed, &clock);
    let acme = engine.tenant("billing", "acme");
    let policy = acme.create_policy(PolicySpec::new("ten a day").with_quota(Some(10), None)).await.unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
    let (raw, ctx) = (created.raw.expose(), RequestContext::new());
    let mut admitted = 0;
    let first = engine.validate(raw, &ctx).await.unwrap();
    engine.record_usage(record_of(&first));
    admitted += 1;

    probe.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let flush = tokio::spawn({
        let engine = engine.clone();
        async move { engine.flush_usage().await }
    });
    probe.written.notified().await;
    // The re-read sees the batch in the aggregates while it is still
    // pending here.
    clock.advance(Duration::from_secs(6));
    let racing = engine.validate(raw, &ctx).await.unwrap();
    engine.record_usage(record_of(&racing));
    admitted += 1;
    probe.release.notify_one();
    flush.await.unwrap();

    // Within the same refresh interval, the racing read is not counted on
    // top of the pending requests.
    for _ in 0..20 {
        match engine.validate(raw, &ctx).await {
            Ok(passed) => {
                engine.record_usage(record_of(&passed));
                admitted += 1;
            }
            Err(refused) => {
                assert!(matches!(refusal_of(Err(refused)), Refusal::QuotaExceeded { .. }));
                break;
            }
        }
    }
    assert_eq!(admitted, 10, "a daily quota of 10 admits 10");
    engine.flush_usage().await;
    clock.advance(Duration::from_secs(6));
    assert!(matches!(refusal_of(engine.validate(raw, &ctx).await), Refusal::QuotaExceeded { .. }), "re-read");
    let totals = acme.usage_totals(Period::Day, TimeRange::default()).await.unwrap();
    assert_eq!(totals.iter().map(|t| t.requests).sum::<u64>(), 10);
}

// ---------------------------------------------------------------- input the engine refuses

/// NUL and other control characters in names, descriptions, reasons and
/// metadata are `InvalidInput` from the engine on every store (PostgreSQL
/// cannot store NUL and would fail with a store error), and leave nothing
/// behind; other Unicode round-trips.
pub async fn control_characters_are_refused_before_the_store(store: Arc<dyn Store>) {
    let engine = engine_builder(Arc::clone(&store)).build().unwrap();
    let tenant = engine.tenant("billing", "acme");
    let key = tenant.create_key(keysmith_core::NewKey::new("kept")).await.unwrap().key;
    let nul_metadata = || {
        let mut metadata = serde_json::Map::new();
        metadata.insert("nested".to_owned(), serde_json::json!({"list": ["ok", "a\u{0}b"]}));
        metadata
    };
    let invalid = |result: Result<(), Error>, field: &str| match result {
        Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field),
        other => panic!("{field}: expected InvalidInput, got {other:?}"),
    };
    for text in ["nul\0", "esc\u{1b}[31m", "del\u{7f}"] {
        invalid(tenant.create_key(keysmith_core::NewKey::new(text)).await.map(drop), "name");
        invalid(tenant.create_policy(keysmith_core::PolicySpec::new(text)).await.map(drop), "name");
        invalid(tenant.create_scope("read", text).await.map(drop), "description");
        invalid(tenant.revoke_key(key.id, text).await.map(drop), "reason");
    }
    let with_metadata = keysmith_core::NewKey::new("k").with_metadata(nul_metadata());
    invalid(tenant.create_key(with_metadata).await.map(drop), "metadata");
    let mut spec = keysmith_core::PolicySpec::new("p");
    spec.metadata = nul_metadata();
    invalid(tenant.create_policy(spec).await.map(drop), "metadata");

    let keys = store.list_keys(&acme(), &KeyFilter::default()).await.unwrap();
    assert_eq!(keys.iter().map(|k| (k.name.as_str(), k.state)).collect::<Vec<_>>(), [("kept", KeyState::Active)]);
    assert!(store.list_policies(&acme(), Page::default()).await.unwrap().is_empty());
    assert!(store.list_scopes(&acme()).await.unwrap().is_empty());

    let mut metadata = serde_json::Map::new();
    metadata.insert("note".to_owned(), "línea ☕ 🔑 \u{200b}".into());
    let unicode = keysmith_core::NewKey::new("clé ☕").with_metadata(metadata.clone());
    let created = tenant.create_key(unicode).await.unwrap().key;
    let stored = store.get_key(&acme(), created.id).await.unwrap().unwrap();
    assert_eq!((stored.key.name.as_str(), &stored.key.metadata), ("clé ☕", &metadata));
}

// ---------------------------------------------------------------- exact identities

/// acme's twin in the identity cases: a tenant id with a composed `é`
/// (U+00E9, NFC), so that its decomposed form is a lookalike too.
fn cafe() -> Tenant {
    Tenant::new("billing", "caf\u{e9}")
}

/// Tenants that a store comparing loosely (trailing spaces ignored, case
/// folded, Unicode normalized) would take for `tenant`.
fn lookalikes(tenant: &Tenant) -> Vec<Tenant> {
    let (app, id) = (tenant.app_id.as_str(), tenant.tenant_id.as_str());
    let decomposed = id.replace('\u{e9}', "e\u{301}");
    assert_ne!(decomposed, id, "the tenant id has a composed é");
    vec![
        Tenant::new(app, format!("{id} ")),
        Tenant::new(app, format!("{id}  ")),
        Tenant::new(format!("{app} "), id),
        Tenant::new(app, id.to_uppercase()),
        Tenant::new(app.to_uppercase(), id),
        Tenant::new(app, decomposed),
    ]
}

/// Owner ids a loose store would take for `owner`.
fn owner_lookalikes(owner: &str) -> Vec<String> {
    vec![format!("{owner} "), owner.to_uppercase(), owner.replace('\u{e9}', "e\u{301}")]
}

/// What [`exact_identity_rows`] wrote for one tenant.
#[derive(Debug)]
pub struct IdentityRows {
    /// The tenant that owns everything below.
    pub tenant: Tenant,
    /// A key of an owner, under `policy`.
    pub key: StoredKey,
    /// A policy named `gold`.
    pub policy: Policy,
    /// A registered scope named `read`.
    pub scope: Scope,
}

/// The owner of [`IdentityRows::key`], with 5 credits of its own.
pub const IDENTITY_OWNER: &str = "cus_\u{e9}";

/// Writes, for the tenant `billing`/`café`, a key of owner
/// [`IDENTITY_OWNER`] under a policy `gold`, a scope `read` and the owner's
/// credits, straight into the store (as a database made by an earlier
/// version may hold them).
///
/// # Panics
/// If the store refuses a write.
pub async fn exact_identity_rows(store: &Arc<dyn Store>) -> IdentityRows {
    let tenant = cafe();
    let policy = bare_policy(&tenant, "gold");
    store.insert_policy(&policy).await.unwrap();
    let key = insert(
        store,
        modified(&sample_key(&tenant), |k| {
            k.owner_id = Some(IDENTITY_OWNER.into());
            k.policy_id = Some(policy.id);
        }),
    )
    .await;
    let scope = Scope {
        id: ScopeId::new(),
        tenant: tenant.clone(),
        name: "read".into(),
        description: "read things".into(),
        created_at: t0(),
    };
    store.insert_scope(&scope).await.unwrap();
    store.set_owner_credits(&tenant, IDENTITY_OWNER, Some(&Credits::new(5))).await.unwrap();
    IdentityRows { tenant, key, policy, scope }
}

/// Every lookalike of the rows' tenant (trailing spaces, case, the
/// decomposed `é`) reads, lists, revokes and changes nothing of it, and
/// takes the same names for its own policies, scopes and owner credits; an
/// owner id's lookalikes are other owners; a name's lookalikes are other
/// names. The rows are unchanged afterwards.
///
/// # Panics
/// When a lookalike reaches the rows.
pub async fn lookalikes_reach_nothing(store: &Arc<dyn Store>, rows: &IdentityRows) {
    let IdentityRows { tenant, key, policy, scope } = rows;
    let id = key.key.id;
    for other in lookalikes(tenant) {
        let seen = format!("{other:?}");
        assert_eq!(store.get_key(&other, id).await.unwrap(), None, "{seen}");
        assert!(store.list_keys(&other, &KeyFilter::default()).await.unwrap().is_empty(), "{seen}");
        let owned = KeyFilter { owner_id: Some(IDENTITY_OWNER.into()), ..KeyFilter::default() };
        assert!(store.list_keys(&other, &owned).await.unwrap().is_empty(), "{seen}");
        let revoke = Transition::to(KeyState::Revoked, at(20)).with_reason("lookalike");
        assert_not_found(store.transition_key(&other, id, &revoke).await, "key");
        assert_not_found(store.set_key_scopes(&other, id, &["*".to_owned()], at(20)).await, "key");

        assert_eq!(store.get_policy(&other, policy.id).await.unwrap(), None, "{seen}");
        assert!(store.list_policies(&other, Page::default()).await.unwrap().is_empty(), "{seen}");
        let hijacked = Policy { tenant: other.clone(), name: "hijacked".into(), ..policy.clone() };
        assert_not_found(store.update_policy(&hijacked).await, "policy");
        assert_not_found(store.delete_policy(&other, policy.id).await, "policy");

        assert!(store.list_scopes(&other).await.unwrap().is_empty(), "{seen}");
        assert_not_found(store.delete_scope(&other, scope.id).await, "scope");

        assert_eq!(store.owner_credits(&other, IDENTITY_OWNER).await.unwrap(), None, "{seen}");
        let spent = store.spend_owner_credits(&other, IDENTITY_OWNER, 1, at(20)).await.unwrap();
        assert_eq!(spent, CreditSpend::Unlimited, "{seen}");

        // The lookalike is a tenant of its own: the same names are free.
        store.insert_policy(&bare_policy(&other, "gold")).await.unwrap();
        store.insert_scope(&Scope { id: ScopeId::new(), tenant: other.clone(), ..scope.clone() }).await.unwrap();
        store.set_owner_credits(&other, IDENTITY_OWNER, Some(&Credits::new(1))).await.unwrap();
        assert_eq!(store.list_policies(&other, Page::default()).await.unwrap().len(), 1, "{seen}");
    }

    for owner in owner_lookalikes(IDENTITY_OWNER) {
        assert_eq!(store.owner_credits(tenant, &owner).await.unwrap(), None, "{owner:?}");
        let owned = KeyFilter { owner_id: Some(owner.clone()), ..KeyFilter::default() };
        assert!(store.list_keys(tenant, &owned).await.unwrap().is_empty(), "{owner:?}");
        store.set_owner_credits(tenant, &owner, Some(&Credits::new(7))).await.unwrap();
    }
    // Names that differ by a trailing space or by case are other names.
    for name in ["gold ", "GOLD"] {
        store.insert_policy(&bare_policy(tenant, name)).await.unwrap();
        let scope_name = name.replace("gold", "read").replace("GOLD", "READ");
        let lookalike = Scope { id: ScopeId::new(), name: scope_name, ..scope.clone() };
        store.insert_scope(&lookalike).await.unwrap();
    }
    assert_already_exists(store.insert_policy(&bare_policy(tenant, "gold")).await, "policy");
    assert_already_exists(store.insert_scope(&Scope { id: ScopeId::new(), ..scope.clone() }).await, "scope");

    // Nothing of the tenant's changed.
    assert_eq!(store.get_key(tenant, id).await.unwrap().as_ref(), Some(key));
    assert_eq!(store.get_policy(tenant, policy.id).await.unwrap().as_deref(), Some(policy));
    let owned = KeyFilter { owner_id: Some(IDENTITY_OWNER.into()), ..KeyFilter::default() };
    assert_eq!(store.list_keys(tenant, &owned).await.unwrap().len(), 1);
    let names: Vec<String> = store.list_scopes(tenant).await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["READ", "read", "read "], "three names, byte order");
    assert_eq!(store.list_policies(tenant, Page::default()).await.unwrap().len(), 3);
    assert_eq!(store.owner_credits(tenant, IDENTITY_OWNER).await.unwrap(), Some(Credits::new(5)));
}

/// Ids that differ only by a trailing space, by case or by Unicode form
/// (NFC `é` against NFD `e` + U+0301) are different tenants, owners and
/// names, never the same: key reads by id, listings, revocations, policies,
/// scopes and owner credits of one never reach the other (written against
/// the store: the engine refuses edge whitespace before any store call).
pub async fn ids_differing_only_by_trailing_space_case_or_unicode_form_are_different_tenants(store: Arc<dyn Store>) {
    let rows = exact_identity_rows(&store).await;
    lookalikes_reach_nothing(&store, &rows).await;
}

/// Counts every store call.
#[derive(Debug, Default)]
struct CountCalls(std::sync::atomic::AtomicU64);

#[async_trait::async_trait]
impl StoreProbe for CountCalls {
    async fn before(&self, _: StoreOp) -> keysmith_core::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// Through the engine, a tenant, app or owner id with a trailing space is
/// `InvalidInput` naming it, before any store call; the tenant it looks
/// like keeps everything.
pub async fn ids_with_a_trailing_space_are_invalid_input_before_the_store(store: Arc<dyn Store>) {
    let probe = Arc::new(CountCalls::default());
    let probed: Arc<dyn Store> = Arc::new(ProbedStore::new(Arc::clone(&store), Arc::clone(&probe)));
    let engine = engine_builder(probed).build().unwrap();
    let ours = engine.tenant("billing", "acme");
    let key = ours.create_key(NewKey::new("kept").with_owner("cus_1")).await.unwrap().key;
    ours.set_owner_credits("cus_1", Some(Credits::new(5))).await.unwrap();
    let before = probe.0.load(std::sync::atomic::Ordering::SeqCst);

    let invalid = |result: Result<(), Error>, field: &str, what: &str| match result {
        Err(Error::InvalidInput { field: f, .. }) if f == field => {}
        other => panic!("{what}: expected InvalidInput on {field}, got {other:?}"),
    };
    for (handle, field) in
        [(engine.tenant("billing", "acme "), "tenant_id"), (engine.tenant("billing ", "acme"), "app_id")]
    {
        invalid(handle.get_key(key.id).await.map(drop), field, "get_key");
        invalid(handle.list_keys(&KeyFilter::default()).await.map(drop), field, "list_keys");
        invalid(handle.revoke_key(key.id, "lookalike").await.map(drop), field, "revoke_key");
        invalid(handle.list_policies(Page::default()).await.map(drop), field, "list_policies");
        invalid(handle.list_scopes().await.map(drop), field, "list_scopes");
        invalid(handle.owner_credits("cus_1").await.map(drop), field, "owner_credits");
        invalid(handle.create_key(NewKey::new("k")).await.map(drop), field, "create_key");
    }
    let owner = KeyFilter { owner_id: Some("cus_1 ".into()), ..KeyFilter::default() };
    invalid(ours.list_keys(&owner).await.map(drop), "owner_id", "list_keys by owner");
    invalid(ours.owner_credits("cus_1 ").await.map(drop), "owner_id", "owner_credits");
    invalid(ours.set_owner_credits("cus_1 ", None).await.map(drop), "owner_id", "set_owner_credits");
    invalid(ours.create_key(NewKey::new("k").with_owner("cus_1 ")).await.map(drop), "owner_id", "create_key");
    assert_eq!(probe.0.load(std::sync::atomic::Ordering::SeqCst), before, "no refused call reached the store");

    let stored = store.get_key(&acme(), key.id).await.unwrap().expect("acme's key");
    assert_eq!(stored.key.state, KeyState::Active);
    assert_eq!(store.owner_credits(&acme(), "cus_1").await.unwrap(), Some(Credits::new(5)));
    assert_eq!(store.list_keys(&acme(), &KeyFilter::default()).await.unwrap().len(), 1);
}
