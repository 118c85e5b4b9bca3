//! The engine: configuration, tenant-scoped management and validation.

mod import;
mod leaks;
mod policies;
mod request;
mod scopes;
mod sweeper;
mod tenant;
mod usage;
mod validate;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use import::{
    EXTERNAL_ID_FIELD, ImportOptions, ImportRefusal, ImportReport, ImportRow, ImportRun, REVOKED_BEFORE_IMPORT,
};
pub use request::{RequestContext, RequiredScopes};
pub use tenant::{CreatedKey, NewKey, RotatedKey, TenantEngine};
pub use validate::{PresentedKey, RateLimitStates, Refund, Validation, ValidationError};

use dashmap::DashMap;

use crate::bounded::SweepSchedule;
use crate::feed::subscriber::FeedLink;
use crate::feed::{FeedHeartbeat, FeedStatus};
use crate::hooks::{Event, Hooks, Plugin};
use crate::leak::LeakPolicies;
use crate::limit::{GcraRateLimiter, RateLimiter};
use crate::store::{CacheConfig, CacheStats, CachedStore, IntoStore, Store, Transition};
use crate::usage::QuotaCounter;
use crate::usage::quota::QuotaTracker;
use crate::usage::{UsageConfig, UsageMode, UsageRecorder, UsageRetention};
use crate::{
    Change, ChangeFeed, Clock, Environment, Error, Hasher, Key, KeyId, KeyState, LegacyKeys, Period, Result,
    Sha256Hasher, SystemClock, Tenant,
};

/// The prefix of new keys unless the builder names another.
pub const DEFAULT_PREFIX: &str = "sk";

/// The environment of new keys unless the builder names another.
pub const DEFAULT_ENVIRONMENT: Environment = Environment::Live;

/// The grace period of a rotation when neither the call nor the key's policy
/// gives one.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// The reason recorded when the sweeper ends a rotated key's grace period.
pub const GRACE_ENDED_REASON: &str = "rotation grace period ended";

/// Keysmith's engine. Cheap to clone: clones share one state.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use keysmith_core::store::CacheConfig;
/// use keysmith_core::{Engine, MemoryStore, NewKey, RequestContext};
///
/// let engine = Engine::builder(MemoryStore::new()).with_cache(CacheConfig::default()).build()?;
/// let acme = engine.tenant("billing", "acme");
/// let created = acme.create_key(NewKey::new("deploy bot").with_scopes(["read"])).await?;
///
/// let validation = engine.validate(created.raw.expose(), &RequestContext::new()).await.unwrap();
/// assert_eq!(validation.key.id, created.key.id);
/// # Ok::<(), keysmith_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// The cache of validation's reads from `store`, when the engine was
    /// built with one; kept fresh by [`Engine::committed`] and the feed.
    cache: Option<Arc<CachedStore>>,
    feed: Option<Arc<FeedLink>>,
    hasher: Arc<dyn Hasher>,
    clock: Arc<dyn Clock>,
    hooks: Hooks,
    prefix: String,
    environment: Environment,
    legacy: LegacyKeys,
    rotation_grace: Duration,
    strict_scopes: bool,
    limiter: Arc<dyn RateLimiter>,
    /// The plugged-in quota counter, or the in-process one the recorder feeds.
    quotas: Arc<dyn QuotaCounter>,
    usage: UsageRecorder,
    usage_config: UsageConfig,
    usage_retention: UsageRetention,
    sweeper: sweeper::Sweeper,
    /// When this engine last queued a `last_used_at` write, per key, in
    /// microseconds since the epoch.
    touched: DashMap<KeyId, i64, foldhash::fast::RandomState>,
    touch_sweeps: SweepSchedule,
    leak_policies: LeakPolicies,
    /// Keys whose leak was notified (under `LeakPolicy::Notify`), so that
    /// a report seen again fires nothing.
    notified: moka::sync::Cache<KeyId, ()>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Engine")
            .field("store", &inner.store)
            .field("hasher", &inner.hasher)
            .field("clock", &inner.clock)
            .field("plugins", &inner.hooks)
            .field("prefix", &inner.prefix)
            .field("environment", &inner.environment)
            .field("rotation_grace", &inner.rotation_grace)
            .field("strict_scopes", &inner.strict_scopes)
            .field("limiter", &inner.limiter)
            .field("usage", &inner.usage)
            .field("feed", &inner.feed)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(feed) = &self.feed {
            feed.stop();
        }
    }
}

impl Engine {
    /// Starts configuring an engine on `store`: any [`Store`], by value or
    /// in an `Arc` (also `Arc<dyn Store>`).
    pub fn builder(store: impl IntoStore) -> EngineBuilder {
        EngineBuilder {
            store: store.into_store(),
            cache: None,
            feed: None,
            heartbeat: FeedHeartbeat::default(),
            hasher: Arc::new(Sha256Hasher),
            clock: Arc::new(SystemClock),
            plugins: Vec::new(),
            prefix: DEFAULT_PREFIX.to_owned(),
            environment: DEFAULT_ENVIRONMENT,
            rotation_grace: DEFAULT_ROTATION_GRACE,
            strict_scopes: false,
            limiter: None,
            quota_counter: None,
            usage_config: UsageConfig::default(),
            usage_mode: UsageMode::default(),
            usage_retention: UsageRetention::default(),
            sweep_interval: None,
            leak_policies: LeakPolicies::default(),
            legacy: LegacyKeys::default(),
        }
    }

    /// Management operations for one tenant. Nothing done through the handle
    /// can see or touch another tenant's entities.
    ///
    /// Both ids must be identities ([`validate_id`](crate::validate_id): 1
    /// to 128 bytes, no whitespace at either end, no control character); they
    /// are compared exactly, so `"acme"` and `"acme "` are never one tenant.
    /// Making the handle cannot fail: every operation of a handle with an id
    /// that is not an identity fails with [`Error::InvalidInput`] naming
    /// `app_id` or `tenant_id`, before any store call.
    /// [`Tenant::validate`] checks the ids without a handle.
    #[must_use]
    pub fn tenant(&self, app_id: impl Into<String>, tenant_id: impl Into<String>) -> TenantEngine {
        TenantEngine::new(self.clone(), Tenant::new(app_id, tenant_id))
    }

    /// The store, for what the engine does not wrap (migrations, health
    /// checks). Writes made through it directly bypass the engine's cache
    /// and change feed: they are seen as changes made elsewhere.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The engine's cache, if it was built with one.
    #[cfg(test)]
    pub(crate) fn cache(&self) -> Option<&Arc<CachedStore>> {
        self.inner.cache.as_ref()
    }

    /// What the engine's cache holds now, if it was built
    /// [`with_cache`](EngineBuilder::with_cache).
    #[must_use]
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.inner.cache.as_ref().map(|cache| cache.stats())
    }

    /// Drops everything the engine's cache holds (after changing the
    /// database by hand, say). Without a cache it does nothing.
    pub fn invalidate_cache(&self) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate_all();
        }
    }

    /// The state of the engine's change feed, if it was built
    /// [`with_change_feed`](EngineBuilder::with_change_feed).
    #[must_use]
    pub fn feed_status(&self) -> Option<FeedStatus> {
        self.inner.feed.as_ref().map(|feed| feed.status())
    }

    /// Starts the engine's background work on the current Tokio runtime:
    /// the usage writer, the change feed subscription and, if the engine
    /// was built with one, the background sweep. An engine built
    /// inside a runtime starts itself, on that runtime; one built outside
    /// calls this from inside the runtime that should run them (the one
    /// that lives until [`Engine::shutdown`]). Until then usage records are
    /// dropped and counted. True if everything runs; calling it again does
    /// nothing.
    pub fn start(&self) -> bool {
        let usage = self.inner.usage.start_here();
        let sweeper = self.inner.sweeper.start_here(Arc::downgrade(&self.inner));
        self.start_change_feed() && usage && sweeper
    }

    /// Starts the change feed subscription on the current Tokio runtime,
    /// unless it runs already. An engine built inside a runtime starts it
    /// itself; one built outside calls this from inside one. Until it runs,
    /// the cache keeps found entries only for its outage TTL. True if it
    /// runs (or the engine has no feed or no cache to keep fresh).
    pub fn start_change_feed(&self) -> bool {
        match (&self.inner.feed, &self.inner.cache) {
            (Some(feed), Some(cache)) => feed.start(cache),
            _ => true,
        }
    }

    /// After a write this engine committed: drops what `change` makes stale
    /// from this engine's cache (so that once the write returns no
    /// validation here sees the old state), then tells the other engines on
    /// the change feed; feed failures are counted and logged only. The one
    /// path by which a write reaches a cache, this engine's or another's.
    async fn committed(&self, change: impl FnOnce() -> Change) {
        let inner = &self.inner;
        if inner.cache.is_none() && inner.feed.is_none() {
            return;
        }
        let change = change();
        if let Some(cache) = &inner.cache {
            cache.apply_change(&change).await;
        }
        if let Some(feed) = &inner.feed {
            feed.publish(change).await;
        }
    }

    /// Drops what `change` may have made stale from this engine's cache
    /// only, publishing nothing: a key created here (a miss cached for its
    /// hash), or a write that failed but may have committed or that found
    /// the entity changed elsewhere.
    async fn forget(&self, change: impl FnOnce() -> Change) {
        if let Some(cache) = &self.inner.cache {
            cache.apply_change(&change()).await;
        }
    }

    /// The engine's clock.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Moves every key that is due to its terminal state: `active` keys past
    /// `expires_at` become `expired`, `rotated` keys past their grace become
    /// `revoked`; then deletes the usage that has expired under the
    /// engine's [`UsageRetention`] ([`sweep_usage`](Self::sweep_usage)).
    /// Run it periodically; validation expires keys lazily too.
    ///
    /// # Errors
    /// A store failure; keys swept before it stay swept.
    pub async fn sweep(&self) -> Result<SweepReport> {
        self.sweep_with(&self.inner.usage_retention).await
    }

    /// [`sweep`](Self::sweep) with `retention` instead of the engine's
    /// (`keysmith sweep --usage-retention` overrides it for one run).
    ///
    /// # Errors
    /// As [`sweep`](Self::sweep).
    pub async fn sweep_with(&self, retention: &UsageRetention) -> Result<SweepReport> {
        let mut report = self.sweep_keys().await?;
        let usage = self.sweep_usage(retention).await?;
        report.usage_records_deleted = usage.usage_records_deleted;
        report.hourly_rollups_deleted = usage.hourly_rollups_deleted;
        Ok(report)
    }

    /// Deletes raw usage records older than `retention.records` and hourly
    /// roll-ups older than `retention.hourly` (at the engine's clock), in
    /// statements of at most `retention.batch` rows, so that no statement
    /// runs over a whole table or holds its locks for long. Daily and
    /// monthly roll-ups, which quotas count, are never deleted here.
    ///
    /// # Errors
    /// A store failure; what was deleted before it stays deleted.
    pub async fn sweep_usage(&self, retention: &UsageRetention) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let now = self.inner.clock.now();
        let batch = retention.batch.max(1);
        let before = |age: Duration| {
            chrono::TimeDelta::from_std(age)
                .ok()
                .and_then(|age| now.checked_sub_signed(age))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
        };
        let records_before = before(retention.records);
        loop {
            let deleted = self.inner.store.delete_usage_before(records_before, batch).await?;
            report.usage_records_deleted += deleted;
            if deleted < u64::from(batch) {
                break;
            }
        }
        let hours_before = Period::Hour.start_of(before(retention.hourly));
        loop {
            let deleted = self.inner.store.delete_aggregates_before(Period::Hour, hours_before, batch).await?;
            report.hourly_rollups_deleted += deleted;
            if deleted < u64::from(batch) {
                break;
            }
        }
        Ok(report)
    }

    async fn sweep_keys(&self) -> Result<SweepReport> {
        const BATCH: u32 = 500;
        let mut report = SweepReport::default();
        loop {
            let now = self.inner.clock.now();
            let due = self.inner.store.list_due_keys(now, BATCH).await?;
            let mut changed = 0;
            for key in &due {
                let (transition, counter) = match key.state {
                    KeyState::Active => (Transition::to(KeyState::Expired, now), &mut report.expired),
                    _ => (
                        Transition::to(KeyState::Revoked, now).with_reason(GRACE_ENDED_REASON),
                        &mut report.rotations_ended,
                    ),
                };
                if let Some(key) = self.apply_transition(key, &transition).await? {
                    *counter += 1;
                    changed += 1;
                    self.committed(|| Change::key(&key, None)).await;
                    self.emit_transition(key).await;
                }
            }
            // A short batch means nothing is left; a batch where nothing moved
            // means others are racing us for the same keys.
            if due.len() < BATCH as usize || changed == 0 {
                return Ok(report);
            }
        }
    }

    /// Applies a transition that may legitimately lose a race: `None` if the
    /// key is no longer in a state the transition starts from.
    async fn apply_transition(&self, key: &Key, transition: &Transition) -> Result<Option<Arc<Key>>> {
        match self.inner.store.transition_key(&key.tenant, key.id, transition).await {
            Ok(key) => Ok(Some(Arc::new(key))),
            Err(Error::InvalidTransition { .. } | Error::NotFound { .. }) => {
                // Changed elsewhere: what this engine cached of it is stale.
                self.forget(|| Change::key(key, None)).await;
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    async fn emit(&self, event: impl FnOnce() -> Event) {
        if !self.inner.hooks.is_empty() {
            self.inner.hooks.emit(event()).await;
        }
    }

    /// Emits the event that matches the state `key` just entered.
    async fn emit_transition(&self, key: Arc<Key>) {
        self.emit(|| match key.state {
            KeyState::Revoked => Event::KeyRevoked { key },
            KeyState::Suspended => Event::KeySuspended { key },
            KeyState::Expired => Event::KeyExpired { key },
            KeyState::Active => Event::KeyReactivated { key },
            KeyState::Rotated => unreachable!("rotation emits KeyRotated with its record"),
        })
        .await;
    }
}

/// What [`Engine::sweep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Active keys moved to `expired`.
    pub expired: u64,
    /// Rotated keys whose grace ended, moved to `revoked`.
    pub rotations_ended: u64,
    /// Raw usage records deleted as expired.
    pub usage_records_deleted: u64,
    /// Hourly roll-ups deleted as expired.
    pub hourly_rollups_deleted: u64,
}

/// Configures an [`Engine`]; see [`Engine::builder`].
#[must_use]
pub struct EngineBuilder {
    store: Arc<dyn Store>,
    cache: Option<CacheConfig>,
    feed: Option<Arc<dyn ChangeFeed>>,
    heartbeat: FeedHeartbeat,
    hasher: Arc<dyn Hasher>,
    clock: Arc<dyn Clock>,
    plugins: Vec<Arc<dyn Plugin>>,
    prefix: String,
    environment: Environment,
    rotation_grace: Duration,
    strict_scopes: bool,
    limiter: Option<Arc<dyn RateLimiter>>,
    quota_counter: Option<Arc<dyn QuotaCounter>>,
    usage_config: UsageConfig,
    usage_mode: UsageMode,
    usage_retention: UsageRetention,
    sweep_interval: Option<Duration>,
    leak_policies: LeakPolicies,
    legacy: LegacyKeys,
}

impl fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("store", &self.store)
            .field("cache", &self.cache)
            .field("feed", &self.feed)
            .field("heartbeat", &self.heartbeat)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// Puts a cache configured by `config` in front of the store, owned by
    /// the engine: validation's lookups (keys by hash, found or not, and
    /// policies) are served from memory, and every change the engine makes
    /// is applied to the cache before it returns, so after a change returns
    /// no validation on this engine sees the old state. Changes made by other instances are
    /// seen within the positive TTL, or within a second with a
    /// [change feed](Self::with_change_feed).
    pub fn with_cache(mut self, config: CacheConfig) -> Self {
        self.cache = Some(config);
        self
    }

    /// Publishes every state change this engine commits on `feed`, and
    /// (with a [cache](Self::with_cache)) evicts what the changes published
    /// by every engine on it make stale. While not subscribed, the cache
    /// keeps found entries only for its
    /// [outage TTL](CacheConfig::with_outage_ttl). Pass an `Arc` to share
    /// one feed between engines in one process.
    ///
    /// The subscription is watched by [heartbeats](FeedHeartbeat): one that
    /// carries nothing for the heartbeat deadline (2 s by default) is lost
    /// too, so during any feed fault a change made elsewhere is seen within
    /// the deadline plus the outage TTL. A change this engine cannot publish
    /// goes to the store's change log, which every engine with a cache reads
    /// once per heartbeat interval (see [`crate::feed`]).
    pub fn with_change_feed(mut self, feed: impl ChangeFeed) -> Self {
        self.feed = Some(Arc::new(feed));
        self
    }

    /// How often a quiet [change feed](Self::with_change_feed) carries a
    /// heartbeat and how long the subscription may carry nothing before it
    /// is lost (default: 500 ms and 2 s).
    pub fn with_feed_heartbeat(mut self, heartbeat: FeedHeartbeat) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Hashes keys with `hasher` instead of SHA-256.
    pub fn with_hasher(mut self, hasher: impl Hasher) -> Self {
        self.hasher = Arc::new(hasher);
        self
    }

    /// Reads time from `clock` (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Registers a plugin; plugins see events in registration order.
    pub fn with_plugin(mut self, plugin: impl Plugin) -> Self {
        self.plugins.push(Arc::new(plugin));
        self
    }

    /// The prefix of new keys (default `sk`): 1–16 characters of `[a-z0-9]`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The environment of new keys (default `live`).
    pub fn with_environment(mut self, environment: Environment) -> Self {
        self.environment = environment;
        self
    }

    /// The grace period of rotations that name none and whose key's policy
    /// names none (default 24 hours; at most
    /// [`PolicySpec::MAX_ROTATION_GRACE`](crate::PolicySpec::MAX_ROTATION_GRACE)).
    /// Rotations for `compromised` that name none have no grace.
    pub fn with_rotation_grace(mut self, grace: Duration) -> Self {
        self.rotation_grace = grace;
        self
    }

    /// Refuses to give keys scopes that are not in the tenant's registry.
    pub fn with_strict_scopes(mut self, strict: bool) -> Self {
        self.strict_scopes = strict;
        self
    }

    /// Uses `limiter` for policy rate limits instead of the in-process GCRA
    /// limiter (which runs on the engine's clock).
    pub fn with_rate_limiter(mut self, limiter: impl RateLimiter) -> Self {
        self.limiter = Some(Arc::new(limiter));
        self
    }

    /// Counts quotas with `counter` (one shared by a fleet) instead of in
    /// process from the store's aggregates.
    pub fn with_quotas(mut self, counter: impl QuotaCounter) -> Self {
        self.quota_counter = Some(Arc::new(counter));
        self
    }

    /// Sizes the usage queue and sets flush, quota-refresh and last-used
    /// intervals.
    pub fn with_usage_config(mut self, config: UsageConfig) -> Self {
        self.usage_config = config;
        self
    }

    /// What the usage writer keeps of passed requests: raw records (the
    /// default), roll-ups only, or one raw record in `n`
    /// ([`UsageMode`]); roll-ups and quotas are exact in every mode.
    pub fn with_usage_mode(mut self, mode: UsageMode) -> Self {
        self.usage_mode = mode;
        self
    }

    /// How long [`Engine::sweep`] keeps raw usage records and hourly
    /// roll-ups (30 days each by default).
    pub fn with_usage_retention(mut self, retention: UsageRetention) -> Self {
        self.usage_retention = retention;
        self
    }

    /// Runs [`Engine::sweep`] in the background every `interval` (the
    /// first one interval after the engine starts), on a task of its own that validation never waits
    /// for, until [`Engine::shutdown`]. A failed sweep is logged and counted
    /// (`keysmith_sweep_failed_total`) and tried again at the next tick.
    /// Off by default: an application may sweep from one place only.
    pub fn with_background_sweep(mut self, interval: Duration) -> Self {
        self.sweep_interval = Some(interval);
        self
    }

    /// What [`Engine::report_leaks`] does with a leaked key of each tenant:
    /// a default and per-tenant overrides (by default every tenant's leaked
    /// keys are revoked).
    pub fn with_leak_policies(mut self, policies: LeakPolicies) -> Self {
        self.leak_policies = policies;
        self
    }

    /// Accepts keys in an application's own, older format (imported with
    /// [`TenantEngine::import_keys`]) as they are; see [`LegacyKeys`]. By
    /// default none: every key not in Keysmith's format is malformed.
    pub fn with_legacy_keys(mut self, legacy: LegacyKeys) -> Self {
        self.legacy = legacy;
        self
    }

    /// Builds the engine. Inside a Tokio runtime its background work (usage
    /// writer, change feed) starts on that runtime; outside one, call
    /// [`Engine::start`] from inside the runtime that should run it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad prefix, a rotation grace over
    /// the maximum, or a feed heartbeat whose deadline is under twice its
    /// interval.
    pub fn build(self) -> Result<Engine> {
        crate::key::validate_prefix(&self.prefix)?;
        self.legacy.check()?;
        self.heartbeat.check()?;
        let max_grace = crate::PolicySpec::MAX_ROTATION_GRACE;
        if self.rotation_grace > max_grace {
            return Err(Error::invalid("rotation_grace", format!("must be at most {} seconds", max_grace.as_secs())));
        }
        if self.usage_config.batch_size == 0 || self.usage_config.flush_interval.is_zero() {
            return Err(Error::invalid("usage_config", "batch_size and flush_interval must be greater than zero"));
        }
        if self.sweep_interval.is_some_and(|interval| interval.is_zero()) {
            return Err(Error::invalid("sweep_interval", "must be greater than zero"));
        }
        if self.usage_mode == UsageMode::Sampled(0) {
            return Err(Error::invalid("usage_mode", "a sample of one record in 0 is not a sample; use 1 or more"));
        }
        let store = self.store;
        // A change that failed to publish is tried again while another
        // engine may hold what it drops: a positive TTL, this engine's own
        // or the default.
        let republish_for = self.cache.as_ref().unwrap_or(&CacheConfig::default()).positive_ttl();
        let cache = self.cache.map(|config| Arc::new(CachedStore::with_config(Arc::clone(&store), config)));
        let feed = self.feed.map(|feed| {
            Arc::new(FeedLink::new(feed, self.heartbeat, republish_for, Arc::clone(&store), Arc::clone(&self.clock)))
        });
        if let (Some(_), Some(cache)) = (&feed, &cache) {
            // Not subscribed yet: changes made elsewhere may be missed.
            cache.feed_lost();
        }
        // A first reading here, not in the first request: the system clock
        // calibrates the CPU's counter it counts by once per process.
        self.clock.unix_nanos();
        let limiter = self.limiter.unwrap_or_else(|| Arc::new(GcraRateLimiter::with_clock(Arc::clone(&self.clock))));
        let quotas = Arc::new(QuotaTracker::new(self.usage_config.quota_refresh));
        let usage = UsageRecorder::new(self.usage_config, self.usage_mode, Arc::clone(&store), Arc::clone(&quotas));
        let quotas = self.quota_counter.unwrap_or(quotas);
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                cache,
                feed,
                limiter,
                quotas,
                usage,
                usage_config: self.usage_config,
                usage_retention: self.usage_retention,
                sweeper: sweeper::Sweeper::new(self.sweep_interval),
                touched: DashMap::default(),
                touch_sweeps: SweepSchedule::default(),
                hasher: self.hasher,
                clock: self.clock,
                hooks: Hooks::new(self.plugins),
                prefix: self.prefix,
                environment: self.environment,
                legacy: self.legacy,
                rotation_grace: self.rotation_grace,
                strict_scopes: self.strict_scopes,
                leak_policies: self.leak_policies,
                notified: moka::sync::Cache::builder()
                    .max_capacity(leaks::NOTIFIED_CAPACITY)
                    .time_to_live(leaks::NOTIFIED_TTL)
                    .build(),
            }),
        };
        // Inside a runtime the background work starts on it; outside,
        // `Engine::start` starts it later.
        engine.start();
        Ok(engine)
    }
}
