//! Shared fixtures of keysmith-core's integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use keysmith_core::store::{
    KeyFilter, KeyStore, Page, PolicyStore, RotationStore, RotationWrite, ScopeStore, StoredKey, TimeRange, Transition,
    UsageStore, UsageTotal,
};
use keysmith_core::{
    Engine, EngineBuilder, Key, KeyHash, KeyId, ManualClock, MemoryStore, Period, Policy, PolicyId, Result,
    RotationRecord, Scope, ScopeId, Store, Tenant, UsageAggregate, UsageRecord,
};

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 14, 12, 0, 0).unwrap()
}

/// An engine on a memory store, with a manual clock at [`t0`].
pub fn engine() -> (Engine, ManualClock) {
    let clock = ManualClock::new(t0());
    let engine = builder(Arc::new(MemoryStore::new())).with_clock(clock.clone()).build().unwrap();
    (engine, clock)
}

pub fn builder(store: Arc<dyn Store>) -> EngineBuilder {
    Engine::builder(store)
}

/// A store that counts every call before handing it to a memory store.
#[derive(Debug, Default)]
pub struct CountingStore {
    inner: MemoryStore,
    calls: AtomicU64,
}

impl CountingStore {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn count(&self) -> &MemoryStore {
        self.calls.fetch_add(1, Ordering::SeqCst);
        &self.inner
    }
}

#[async_trait]
impl KeyStore for CountingStore {
    async fn insert_key(&self, key: &StoredKey) -> Result<()> {
        self.count().insert_key(key).await
    }
    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<StoredKey>> {
        self.count().find_key_by_hash(hash).await
    }
    async fn get_key(&self, tenant: &Tenant, id: KeyId) -> Result<Option<StoredKey>> {
        self.count().get_key(tenant, id).await
    }
    async fn list_keys(&self, tenant: &Tenant, filter: &KeyFilter) -> Result<Vec<Key>> {
        self.count().list_keys(tenant, filter).await
    }
    async fn transition_key(&self, tenant: &Tenant, id: KeyId, transition: &Transition) -> Result<Key> {
        self.count().transition_key(tenant, id, transition).await
    }
    async fn rotate_key(&self, tenant: &Tenant, rotation: &RotationWrite) -> Result<Key> {
        self.count().rotate_key(tenant, rotation).await
    }
    async fn set_key_scopes(&self, tenant: &Tenant, id: KeyId, scopes: &[String], at: DateTime<Utc>) -> Result<Key> {
        self.count().set_key_scopes(tenant, id, scopes, at).await
    }
    async fn touch_key(&self, id: KeyId, at: DateTime<Utc>) -> Result<()> {
        self.count().touch_key(id, at).await
    }
    async fn list_due_keys(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Key>> {
        self.count().list_due_keys(now, limit).await
    }
}

#[async_trait]
impl PolicyStore for CountingStore {
    async fn insert_policy(&self, policy: &Policy) -> Result<()> {
        self.count().insert_policy(policy).await
    }
    async fn get_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<Option<Arc<Policy>>> {
        self.count().get_policy(tenant, id).await
    }
    async fn list_policies(&self, tenant: &Tenant, page: Page) -> Result<Vec<Policy>> {
        self.count().list_policies(tenant, page).await
    }
    async fn update_policy(&self, policy: &Policy) -> Result<()> {
        self.count().update_policy(policy).await
    }
    async fn delete_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<()> {
        self.count().delete_policy(tenant, id).await
    }
}

#[async_trait]
impl ScopeStore for CountingStore {
    async fn insert_scope(&self, scope: &Scope) -> Result<()> {
        self.count().insert_scope(scope).await
    }
    async fn list_scopes(&self, tenant: &Tenant) -> Result<Vec<Scope>> {
        self.count().list_scopes(tenant).await
    }
    async fn delete_scope(&self, tenant: &Tenant, id: ScopeId) -> Result<()> {
        self.count().delete_scope(tenant, id).await
    }
}

#[async_trait]
impl UsageStore for CountingStore {
    async fn record_batch(&self, records: &[UsageRecord]) -> Result<()> {
        self.count().record_batch(records).await
    }
    async fn list_usage(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        range: TimeRange,
        page: Page,
    ) -> Result<Vec<UsageRecord>> {
        self.count().list_usage(tenant, key_id, range, page).await
    }
    async fn usage_aggregates(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageAggregate>> {
        self.count().usage_aggregates(tenant, key_id, period, range).await
    }
    async fn tenant_usage(&self, tenant: &Tenant, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>> {
        self.count().tenant_usage(tenant, period, range).await
    }
}

#[async_trait]
impl RotationStore for CountingStore {
    async fn list_rotations(&self, tenant: &Tenant, key_id: KeyId) -> Result<Vec<RotationRecord>> {
        self.count().list_rotations(tenant, key_id).await
    }
}

#[async_trait]
impl Store for CountingStore {
    async fn migrate(&self) -> Result<()> {
        self.count().migrate().await
    }
    async fn ping(&self) -> Result<()> {
        self.count().ping().await
    }
    async fn close(&self) {
        self.count().close().await;
    }
}
