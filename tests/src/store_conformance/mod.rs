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
use keysmith_core::usage::{RefusalReason, UsageBatch, UsageConfig, UsageCounts, UsageDelta};
use keysmith_core::{
    Change, CreditSpend, Credits, Engine, EngineBuilder, Environment, Error, Hasher, Key, KeyId, KeyState, LimitBy,
    ManualClock, NewKey, Period, Policy, PolicyId, PolicySpec, Quota, RateLimit, Refusal, RequestContext, RotationId,
    RotationReason, RotationRecord, Scope, ScopeId, Sha256Hasher, Store, Tenant, UsageId, UsageRecord, Validation,
    ValidationError,
};
use tokio::sync::{Barrier, Notify};
use tokio::task::JoinSet;

mod changes;
mod credits;
mod engine;
mod identities;
mod import;
mod keys;
mod lifecycle;
mod policies;
mod scopes;
mod store;
mod usage;

pub use changes::*;
pub use credits::*;
pub use engine::*;
pub use identities::*;
pub use import::*;
pub use keys::*;
pub use lifecycle::*;
pub use policies::*;
pub use scopes::*;
pub use store::*;
pub use usage::*;

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
            outcomes_roll_up_by_hour_class_and_reason_and_a_replayed_batch_counts_once,
            retention_deletes_only_what_expired_in_bounded_batches,
            expired_batch_ids_are_forgotten_however_few_records_expire,
            rotation_shares_the_lineage_budget_and_keeps_the_expiry,
            aggregates_mode_writes_exact_roll_ups_only_and_loses_nothing,
            a_quota_reload_racing_a_batch_write_counts_the_batch_once,
            control_characters_are_refused_before_the_store,
            ids_differing_only_by_trailing_space_case_or_unicode_form_are_different_tenants,
            ids_with_a_trailing_space_are_invalid_input_before_the_store,
            imported_legacy_keys_validate_as_they_are_and_rotate_to_checksummed_keys,
            import_is_idempotent_all_or_nothing_and_keeps_the_owner_limit,
            imported_hash_of_another_tenants_key_is_refused,
            times_past_2038_are_kept_and_enforced,
            oversized_usage_texts_are_cut_and_fail_no_batch,
            a_key_past_its_expiry_is_neither_rotated_nor_suspended,
            import_skips_rows_whose_source_id_was_imported,
            logged_changes_are_read_back_in_order_after_a_sequence_number,
            logged_changes_are_deleted_by_age_in_bounded_batches,
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

pub(crate) fn at(secs: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(secs)
}

pub(crate) fn acme() -> Tenant {
    Tenant::new("billing", "acme")
}

pub(crate) fn globex() -> Tenant {
    Tenant::new("billing", "globex")
}

/// Same tenant id as [`acme`], another application.
pub(crate) fn acme_elsewhere() -> Tenant {
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

pub(crate) fn modified(stored: &StoredKey, change: impl FnOnce(&mut Key)) -> StoredKey {
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
pub(crate) fn bare_policy(tenant: &Tenant, name: &str) -> Policy {
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

pub(crate) fn usage(key: &Key, timestamp: DateTime<Utc>, status: u16) -> UsageRecord {
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
pub(crate) fn rotation_of(old: &StoredKey, at_secs: i64, grace: Duration) -> RotationWrite {
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

pub(crate) async fn insert(store: &Arc<dyn Store>, key: StoredKey) -> StoredKey {
    store.insert_key(&key).await.expect("insert_key");
    key
}

pub(crate) async fn state_of(store: &Arc<dyn Store>, key: &StoredKey) -> KeyState {
    store.get_key(&key.key.tenant, key.key.id).await.unwrap().expect("key exists").key.state
}

pub(crate) fn page(limit: u32, offset: u64) -> KeyFilter {
    KeyFilter { page: Page::new(limit, offset), ..KeyFilter::default() }
}

#[track_caller]
pub(crate) fn assert_not_found<T: std::fmt::Debug>(result: keysmith_core::Result<T>, entity: &str) {
    match result {
        Err(Error::NotFound { entity: found, .. }) if found == entity => {}
        other => panic!("expected NotFound {{ entity: {entity:?} }}, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn assert_invalid_transition<T: std::fmt::Debug>(
    result: keysmith_core::Result<T>, from: KeyState, to: KeyState,
) {
    match result {
        Err(Error::InvalidTransition { from: f, to: t }) if f == from && t == to => {}
        other => panic!("expected InvalidTransition {{ from: {from}, to: {to} }}, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn assert_already_exists<T: std::fmt::Debug>(result: keysmith_core::Result<T>, entity: &str) {
    match result {
        Err(Error::AlreadyExists { entity: found, .. }) if found == entity => {}
        other => panic!("expected AlreadyExists {{ entity: {entity:?} }}, got {other:?}"),
    }
}
