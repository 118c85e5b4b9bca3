//! Usage: recording (off the request path) and queries.

use super::{Engine, TenantEngine};
use crate::store::{Page, TimeRange, UsageTotal};
use crate::usage::UsageStats;
use crate::{KeyId, Period, Result, UsageAggregate, UsageRecord};

impl Engine {
    /// Queues a usage record; never waits. Adapters call this after the
    /// response, for requests that passed validation. A full queue, or an
    /// engine not [started](Engine::start), drops the record and counts it
    /// ([`Engine::usage_stats`], metric `keysmith_usage_dropped_total`).
    /// Its method, endpoint and user agent are cut to
    /// [`MAX_METHOD_LEN`](crate::usage::MAX_METHOD_LEN),
    /// [`MAX_ENDPOINT_LEN`](crate::usage::MAX_ENDPOINT_LEN) and
    /// [`MAX_USER_AGENT_LEN`](crate::usage::MAX_USER_AGENT_LEN) bytes.
    pub fn record_usage(&self, record: UsageRecord) {
        self.inner.usage.record(record.bounded());
    }

    /// Queues an adapter's usage entry and the values its tables could not
    /// number (see [`record_usage`](Self::record_usage)).
    pub(crate) fn record_entry(&self, entry: crate::usage::UsageEntry, spill: Option<Box<crate::usage::Spill>>) {
        self.inner.usage.record_entry(entry, spill);
    }

    /// The tables whose numbers queued usage entries carry.
    pub(crate) fn usage_texts(&self) -> &crate::usage::texts::UsageTexts {
        self.inner.usage.texts()
    }

    /// Writes every queued record now and waits for the write: while the
    /// store fails, for up to [`UsageConfig::write_retry`](crate::usage::UsageConfig::write_retry)
    /// (60 s by default), after which what failed is counted as failed.
    pub async fn flush_usage(&self) {
        self.inner.usage.flush().await;
    }

    /// Records written, dropped and failed so far.
    #[must_use]
    pub fn usage_stats(&self) -> UsageStats {
        self.inner.usage.stats()
    }

    /// Stops background work (the background sweep, if any) after writing
    /// everything queued. Call it on graceful shutdown; records arriving
    /// later are dropped and counted. A write the store fails is not
    /// retried through an outage here: a batch that has failed three times
    /// is counted as failed at its next failure.
    pub async fn shutdown(&self) {
        self.inner.sweeper.stop().await;
        self.inner.usage.shutdown().await;
    }
}

impl TenantEngine {
    /// A key's usage records in `range`, oldest first.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids; `NotFound` if the tenant has no
    /// such key.
    pub async fn list_usage(&self, key_id: KeyId, range: TimeRange, page: Page) -> Result<Vec<UsageRecord>> {
        let tenant = self.checked()?;
        self.get_key(key_id).await?;
        self.engine.inner.store.list_usage(tenant, key_id, range, page).await
    }

    /// A key's hourly, daily or monthly roll-ups whose period starts in
    /// `range`: passed requests by status class, refused ones by reason.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids; `NotFound` if the tenant has no
    /// such key.
    pub async fn usage_aggregates(
        &self, key_id: KeyId, period: Period, range: TimeRange,
    ) -> Result<Vec<UsageAggregate>> {
        let tenant = self.checked()?;
        self.get_key(key_id).await?;
        self.engine.inner.store.usage_aggregates(tenant, key_id, period, range).await
    }

    /// The tenant's totals (all keys) per hour, day or month in `range`.
    ///
    /// # Errors
    /// `InvalidInput` for the tenant's ids; a store failure.
    pub async fn usage_totals(&self, period: Period, range: TimeRange) -> Result<Vec<UsageTotal>> {
        self.engine.inner.store.tenant_usage(self.checked()?, period, range).await
    }
}
