//! A store wrapper that reports every call to a probe: for counting calls,
//! injecting failures ("the database went away") or pausing a call in a
//! test, without writing yet another delegating store. Test instrumentation:
//! built only with the `testing` feature.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    ImportOutcome, KeyFilter, KeyStore, Page, PolicyStore, RotationStore, RotationWrite, ScopeStore, Store, StoredKey,
    TimeRange, Transition, UsageStore, UsageTotal,
};
use crate::{
    CreditSpend, Credits, Key, KeyHash, KeyId, Period, Policy, PolicyId, Result, RotationRecord, Scope, ScopeId,
    Tenant, UsageAggregate, UsageRecord,
};

/// One store method, as a probe sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // Each variant is the store method of the same name.
pub enum StoreOp {
    InsertKey,
    ImportKeys,
    FindKeyByHash,
    GetKey,
    ListKeys,
    TransitionKey,
    RotateKey,
    SetKeyScopes,
    TouchKey,
    SetCredits,
    AddCredits,
    SpendCredits,
    RefundCredits,
    OwnerCredits,
    SetOwnerCredits,
    AddOwnerCredits,
    SpendOwnerCredits,
    RefundOwnerCredits,
    ListDueKeys,
    InsertPolicy,
    GetPolicy,
    ListPolicies,
    UpdatePolicy,
    DeletePolicy,
    InsertScope,
    ListScopes,
    DeleteScope,
    /// `write_usage` (and `record_batch`, which calls it).
    RecordBatch,
    DeleteUsageBefore,
    DeleteAggregatesBefore,
    ListUsage,
    UsageAggregates,
    TenantUsage,
    LineageUsage,
    OwnerUsage,
    ListRotations,
    Migrate,
    Ping,
    Close,
}

/// Sees every call of a [`ProbedStore`].
#[async_trait]
pub trait StoreProbe: Send + Sync + fmt::Debug + 'static {
    /// Before the call; an error is returned instead of calling the store.
    ///
    /// # Errors
    /// Whatever the probe wants the caller to see.
    async fn before(&self, op: StoreOp) -> Result<()> {
        let _ = op;
        Ok(())
    }

    /// After the store answered, before the answer is returned.
    async fn after(&self, op: StoreOp) {
        let _ = op;
    }
}

/// Wraps a store and reports each call to a [`StoreProbe`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use keysmith_core::store::{ProbedStore, StoreOp, StoreProbe};
/// use keysmith_core::{Engine, Error, MemoryStore, NewKey, RequestContext, ValidationError};
///
/// #[derive(Debug, Default)]
/// struct Outage(AtomicBool);
///
/// #[async_trait::async_trait]
/// impl StoreProbe for Outage {
///     async fn before(&self, _: StoreOp) -> keysmith_core::Result<()> {
///         if self.0.load(Ordering::SeqCst) { Err(Error::store("connection refused")) } else { Ok(()) }
///     }
/// }
///
/// let outage = Arc::new(Outage::default());
/// let store = ProbedStore::new(Arc::new(MemoryStore::new()), Arc::clone(&outage));
/// let engine = Engine::builder(Arc::new(store)).build()?;
/// let key = engine.tenant("app", "acme").create_key(NewKey::new("k")).await?;
/// outage.0.store(true, Ordering::SeqCst);
/// let result = engine.validate(key.raw.expose(), &RequestContext::new()).await;
/// assert!(matches!(result, Err(ValidationError::Failed(_))));
/// # Ok::<(), keysmith_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct ProbedStore<P> {
    inner: Arc<dyn Store>,
    probe: Arc<P>,
}

impl<P: StoreProbe> ProbedStore<P> {
    /// `inner`, reporting to `probe`.
    #[must_use]
    pub fn new(inner: Arc<dyn Store>, probe: Arc<P>) -> Self {
        Self { inner, probe }
    }

    /// The probe.
    #[must_use]
    pub fn probe(&self) -> &Arc<P> {
        &self.probe
    }

    /// The wrapped store.
    #[must_use]
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }
}

/// Runs one probed call: `before`, the inner call, `after`.
macro_rules! probed {
    ($self:ident, $op:ident, $call:expr) => {{
        $self.probe.before(StoreOp::$op).await?;
        let result = $call.await;
        $self.probe.after(StoreOp::$op).await;
        result
    }};
}

#[async_trait]
impl<P: StoreProbe> KeyStore for ProbedStore<P> {
    async fn insert_key(&self, key: &StoredKey) -> Result<()> {
        probed!(self, InsertKey, self.inner.insert_key(key))
    }
    async fn import_keys(&self, tenant: &Tenant, keys: &[StoredKey], dry_run: bool) -> Result<Vec<ImportOutcome>> {
        probed!(self, ImportKeys, self.inner.import_keys(tenant, keys, dry_run))
    }
    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<StoredKey>> {
        probed!(self, FindKeyByHash, self.inner.find_key_by_hash(hash))
    }
    async fn get_key(&self, tenant: &Tenant, id: KeyId) -> Result<Option<StoredKey>> {
        probed!(self, GetKey, self.inner.get_key(tenant, id))
    }
    async fn list_keys(&self, tenant: &Tenant, filter: &KeyFilter) -> Result<Vec<Key>> {
        probed!(self, ListKeys, self.inner.list_keys(tenant, filter))
    }
    async fn transition_key(&self, tenant: &Tenant, id: KeyId, transition: &Transition) -> Result<Key> {
        probed!(self, TransitionKey, self.inner.transition_key(tenant, id, transition))
    }
    async fn rotate_key(&self, tenant: &Tenant, rotation: &RotationWrite) -> Result<Key> {
        probed!(self, RotateKey, self.inner.rotate_key(tenant, rotation))
    }
    async fn set_key_scopes(&self, tenant: &Tenant, id: KeyId, scopes: &[String], at: DateTime<Utc>) -> Result<Key> {
        probed!(self, SetKeyScopes, self.inner.set_key_scopes(tenant, id, scopes, at))
    }
    async fn touch_key(&self, id: KeyId, at: DateTime<Utc>) -> Result<()> {
        probed!(self, TouchKey, self.inner.touch_key(id, at))
    }
    async fn set_credits(&self, tenant: &Tenant, id: KeyId, credits: Option<&Credits>) -> Result<Key> {
        probed!(self, SetCredits, self.inner.set_credits(tenant, id, credits))
    }
    async fn add_credits(&self, tenant: &Tenant, id: KeyId, amount: u64, now: DateTime<Utc>) -> Result<Key> {
        probed!(self, AddCredits, self.inner.add_credits(tenant, id, amount, now))
    }
    async fn spend_credits(&self, key: &Key, cost: u64, now: DateTime<Utc>) -> Result<CreditSpend> {
        probed!(self, SpendCredits, self.inner.spend_credits(key, cost, now))
    }
    async fn refund_credits(&self, key: &Key, cost: u64) -> Result<()> {
        probed!(self, RefundCredits, self.inner.refund_credits(key, cost))
    }
    async fn owner_credits(&self, tenant: &Tenant, owner_id: &str) -> Result<Option<Credits>> {
        probed!(self, OwnerCredits, self.inner.owner_credits(tenant, owner_id))
    }
    async fn set_owner_credits(&self, tenant: &Tenant, owner_id: &str, credits: Option<&Credits>) -> Result<()> {
        probed!(self, SetOwnerCredits, self.inner.set_owner_credits(tenant, owner_id, credits))
    }
    async fn add_owner_credits(
        &self,
        tenant: &Tenant,
        owner_id: &str,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<Credits> {
        probed!(self, AddOwnerCredits, self.inner.add_owner_credits(tenant, owner_id, amount, now))
    }
    async fn spend_owner_credits(
        &self,
        tenant: &Tenant,
        owner_id: &str,
        cost: u64,
        now: DateTime<Utc>,
    ) -> Result<CreditSpend> {
        probed!(self, SpendOwnerCredits, self.inner.spend_owner_credits(tenant, owner_id, cost, now))
    }
    async fn refund_owner_credits(&self, tenant: &Tenant, owner_id: &str, cost: u64) -> Result<()> {
        probed!(self, RefundOwnerCredits, self.inner.refund_owner_credits(tenant, owner_id, cost))
    }
    async fn list_due_keys(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Key>> {
        probed!(self, ListDueKeys, self.inner.list_due_keys(now, limit))
    }
}

#[async_trait]
impl<P: StoreProbe> PolicyStore for ProbedStore<P> {
    async fn insert_policy(&self, policy: &Policy) -> Result<()> {
        probed!(self, InsertPolicy, self.inner.insert_policy(policy))
    }
    async fn get_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<Option<Arc<Policy>>> {
        probed!(self, GetPolicy, self.inner.get_policy(tenant, id))
    }
    async fn list_policies(&self, tenant: &Tenant, page: Page) -> Result<Vec<Policy>> {
        probed!(self, ListPolicies, self.inner.list_policies(tenant, page))
    }
    async fn update_policy(&self, policy: &Policy) -> Result<()> {
        probed!(self, UpdatePolicy, self.inner.update_policy(policy))
    }
    async fn delete_policy(&self, tenant: &Tenant, id: PolicyId) -> Result<()> {
        probed!(self, DeletePolicy, self.inner.delete_policy(tenant, id))
    }
}

#[async_trait]
impl<P: StoreProbe> ScopeStore for ProbedStore<P> {
    async fn insert_scope(&self, scope: &Scope) -> Result<()> {
        probed!(self, InsertScope, self.inner.insert_scope(scope))
    }
    async fn list_scopes(&self, tenant: &Tenant) -> Result<Vec<Scope>> {
        probed!(self, ListScopes, self.inner.list_scopes(tenant))
    }
    async fn delete_scope(&self, tenant: &Tenant, id: ScopeId) -> Result<()> {
        probed!(self, DeleteScope, self.inner.delete_scope(tenant, id))
    }
}

#[async_trait]
impl<P: StoreProbe> UsageStore for ProbedStore<P> {
    async fn write_usage(&self, batch: &crate::usage::UsageBatch<'_>) -> Result<()> {
        probed!(self, RecordBatch, self.inner.write_usage(batch))
    }
    async fn delete_usage_before(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        probed!(self, DeleteUsageBefore, self.inner.delete_usage_before(before, limit))
    }
    async fn delete_aggregates_before(&self, period: Period, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        probed!(self, DeleteAggregatesBefore, self.inner.delete_aggregates_before(period, before, limit))
    }
    async fn list_usage(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        range: TimeRange,
        page: Page,
    ) -> Result<Vec<UsageRecord>> {
        probed!(self, ListUsage, self.inner.list_usage(tenant, key_id, range, page))
    }
    async fn usage_aggregates(
        &self,
        tenant: &Tenant,
        key_id: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageAggregate>> {
        probed!(self, UsageAggregates, self.inner.usage_aggregates(tenant, key_id, period, range))
    }
    async fn tenant_usage(&self, tenant: &Tenant, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>> {
        probed!(self, TenantUsage, self.inner.tenant_usage(tenant, period, range))
    }
    async fn lineage_usage(
        &self,
        tenant: &Tenant,
        lineage: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        probed!(self, LineageUsage, self.inner.lineage_usage(tenant, lineage, period, range))
    }

    async fn owner_usage(
        &self,
        tenant: &Tenant,
        owner_id: &str,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageTotal>> {
        probed!(self, OwnerUsage, self.inner.owner_usage(tenant, owner_id, period, range))
    }
}

#[async_trait]
impl<P: StoreProbe> RotationStore for ProbedStore<P> {
    async fn list_rotations(&self, tenant: &Tenant, key_id: KeyId) -> Result<Vec<RotationRecord>> {
        probed!(self, ListRotations, self.inner.list_rotations(tenant, key_id))
    }
}

#[async_trait]
impl<P: StoreProbe> Store for ProbedStore<P> {
    async fn migrate(&self) -> Result<()> {
        probed!(self, Migrate, self.inner.migrate())
    }
    async fn ping(&self) -> Result<()> {
        probed!(self, Ping, self.inner.ping())
    }
    async fn close(&self) {
        // `close` cannot fail, so a refusing probe cannot stop it.
        let _ = self.probe.before(StoreOp::Close).await;
        self.inner.close().await;
        self.probe.after(StoreOp::Close).await;
    }
}
