//! Usage: recording (off the request path) and queries.

use super::{Engine, TenantEngine};
use crate::store::{Page, TimeRange, UsageTotal};
use crate::usage::UsageStats;
use crate::{KeyId, Period, Result, UsageAggregate, UsageRecord};

impl Engine {
    /// Queues a usage record; never waits. Adapters call this after the
    /// response, for requests that passed validation. A full queue drops the
    /// record and counts it ([`Engine::usage_stats`], metric
    /// `keysmith_usage_dropped_total`).
    pub fn record_usage(&self, record: UsageRecord) {
        self.inner.usage.record(record);
    }

    /// Starts the background task that writes usage on the current Tokio
    /// runtime, unless it runs already. Without this call it starts on the
    /// runtime of the first request that records usage. Servers whose
    /// request runtimes stop before `main` does (actix-web's workers) call
    /// it from `main`, so that the records still queued when the workers
    /// stop are written by [`Engine::shutdown`]. Outside a runtime it does
    /// nothing. True if the task runs.
    pub fn start_usage_recorder(&self) -> bool {
        self.inner.usage.start_here()
    }

    /// Writes every queued record now and waits for the write.
    pub async fn flush_usage(&self) {
        self.inner.usage.flush().await;
    }

    /// Records written, dropped and failed so far.
    #[must_use]
    pub fn usage_stats(&self) -> UsageStats {
        self.inner.usage.stats()
    }

    /// Stops background work after writing everything queued. Call it on
    /// graceful shutdown; records arriving later are dropped and counted.
    pub async fn shutdown(&self) {
        self.inner.usage.shutdown().await;
    }
}

impl TenantEngine {
    /// A key's usage records in `range`, oldest first.
    ///
    /// # Errors
    /// `NotFound` if the tenant has no such key.
    pub async fn list_usage(&self, key_id: KeyId, range: TimeRange, page: Page) -> Result<Vec<UsageRecord>> {
        self.get_key(key_id).await?;
        self.engine.inner.store.list_usage(&self.tenant, key_id, range, page).await
    }

    /// A key's daily or monthly roll-ups whose period starts in `range`.
    ///
    /// # Errors
    /// `NotFound` if the tenant has no such key.
    pub async fn usage_aggregates(
        &self,
        key_id: KeyId,
        period: Period,
        range: TimeRange,
    ) -> Result<Vec<UsageAggregate>> {
        self.get_key(key_id).await?;
        self.engine.inner.store.usage_aggregates(&self.tenant, key_id, period, range).await
    }

    /// The tenant's totals (all keys) per day or month in `range`.
    ///
    /// # Errors
    /// A store failure.
    pub async fn usage_totals(&self, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>> {
        self.engine.inner.store.tenant_usage(&self.tenant, period, range).await
    }
}
