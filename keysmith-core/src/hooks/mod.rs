//! Hooks: plugins observe what the engine does, for audit and metrics.
//!
//! Events never carry a raw key. A plugin that fails is logged and ignored:
//! it never fails the operation. With no plugin registered the engine does
//! not even build the events.

mod audit;
mod metrics;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use audit::{AuditEntry, AuditPlugin};
pub use metrics::MetricsPlugin;

use crate::leak::LeakAction;
use crate::{BoxError, Key, KeyId, Period, Policy, PolicyId, Refusal, RotationRecord, Scope, ScopeId, Tenant};

/// Something that happened, handed to every plugin.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A key was created (the raw key is not here: it is shown only to the creator).
    KeyCreated {
        /// The new key.
        key: Arc<Key>,
    },
    /// A key validated.
    KeyValidated {
        /// The key.
        key: Arc<Key>,
        /// Time spent validating.
        latency: Duration,
    },
    /// A key was refused.
    KeyValidationFailed {
        /// Why.
        reason: Refusal,
        /// The key, when the secret matched one.
        key_id: Option<KeyId>,
        /// Its owner, when known.
        tenant: Option<Tenant>,
        /// Time spent validating.
        latency: Duration,
    },
    /// A key was rotated.
    KeyRotated {
        /// The old key, now `rotated`.
        key: Arc<Key>,
        /// The rotation, naming the new key.
        record: RotationRecord,
    },
    /// A key was revoked.
    KeyRevoked {
        /// The key, now `revoked`.
        key: Arc<Key>,
    },
    /// A key was suspended.
    KeySuspended {
        /// The key, now `suspended`.
        key: Arc<Key>,
    },
    /// A suspended key was reactivated.
    KeyReactivated {
        /// The key, now `active`.
        key: Arc<Key>,
    },
    /// A key expired (by its expiry time or its policy's maximum age).
    KeyExpired {
        /// The key, now `expired`.
        key: Arc<Key>,
    },
    /// A key was reported leaked (found in public by a secret scanner) and
    /// its tenant's leak policy applied. Never carries the leaked token.
    KeyLeaked {
        /// The key.
        key_id: KeyId,
        /// Its owner.
        tenant: Tenant,
        /// Where the scanner found it (GitHub: `content`, `commit`, `issue`…).
        source: String,
        /// The public URL of the place it was found.
        url: String,
        /// What was done to the key.
        action: LeakAction,
    },
    /// A key hit its rate limit.
    KeyRateLimited {
        /// The key.
        key_id: KeyId,
        /// Its owner.
        tenant: Tenant,
        /// When the next request would be allowed.
        retry_after: Duration,
    },
    /// A key used up its daily or monthly quota.
    QuotaExceeded {
        /// The key.
        key_id: KeyId,
        /// Its owner.
        tenant: Tenant,
        /// Which quota was used up: the daily (`Period::Day`) or the monthly
        /// (`Period::Month`) one.
        period: Period,
        /// When the quota resets.
        resets_at: DateTime<Utc>,
    },
    /// A policy was created.
    PolicyCreated {
        /// The policy.
        policy: Arc<Policy>,
    },
    /// A policy was changed.
    PolicyUpdated {
        /// The policy as it is now.
        policy: Arc<Policy>,
    },
    /// A policy was deleted.
    PolicyDeleted {
        /// Its owner.
        tenant: Tenant,
        /// The policy.
        policy_id: PolicyId,
    },
    /// A scope was registered.
    ScopeCreated {
        /// The scope.
        scope: Arc<Scope>,
    },
    /// A scope was removed from the registry.
    ScopeDeleted {
        /// Its owner.
        tenant: Tenant,
        /// The scope.
        scope_id: ScopeId,
    },
}

impl Event {
    /// The event's name in snake case (`key_created`…), for logs and labels.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::KeyCreated { .. } => "key_created",
            Self::KeyValidated { .. } => "key_validated",
            Self::KeyValidationFailed { .. } => "key_validation_failed",
            Self::KeyRotated { .. } => "key_rotated",
            Self::KeyRevoked { .. } => "key_revoked",
            Self::KeySuspended { .. } => "key_suspended",
            Self::KeyReactivated { .. } => "key_reactivated",
            Self::KeyExpired { .. } => "key_expired",
            Self::KeyLeaked { .. } => "key_leaked",
            Self::KeyRateLimited { .. } => "key_rate_limited",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::PolicyCreated { .. } => "policy_created",
            Self::PolicyUpdated { .. } => "policy_updated",
            Self::PolicyDeleted { .. } => "policy_deleted",
            Self::ScopeCreated { .. } => "scope_created",
            Self::ScopeDeleted { .. } => "scope_deleted",
        }
    }

    /// The tenant concerned, when known.
    #[must_use]
    pub fn tenant(&self) -> Option<&Tenant> {
        match self {
            Self::KeyCreated { key }
            | Self::KeyValidated { key, .. }
            | Self::KeyRotated { key, .. }
            | Self::KeyRevoked { key }
            | Self::KeySuspended { key }
            | Self::KeyReactivated { key }
            | Self::KeyExpired { key } => Some(&key.tenant),
            Self::KeyValidationFailed { tenant, .. } => tenant.as_ref(),
            Self::KeyRateLimited { tenant, .. }
            | Self::KeyLeaked { tenant, .. }
            | Self::QuotaExceeded { tenant, .. }
            | Self::PolicyDeleted { tenant, .. }
            | Self::ScopeDeleted { tenant, .. } => Some(tenant),
            Self::PolicyCreated { policy } | Self::PolicyUpdated { policy } => Some(&policy.tenant),
            Self::ScopeCreated { scope } => Some(&scope.tenant),
        }
    }

    /// The id of the entity the event is about, as a string, when there is one.
    #[must_use]
    pub fn subject(&self) -> Option<String> {
        match self {
            Self::KeyCreated { key }
            | Self::KeyValidated { key, .. }
            | Self::KeyRotated { key, .. }
            | Self::KeyRevoked { key }
            | Self::KeySuspended { key }
            | Self::KeyReactivated { key }
            | Self::KeyExpired { key } => Some(key.id.to_string()),
            Self::KeyValidationFailed { key_id, .. } => key_id.map(|id| id.to_string()),
            Self::KeyRateLimited { key_id, .. }
            | Self::QuotaExceeded { key_id, .. }
            | Self::KeyLeaked { key_id, .. } => Some(key_id.to_string()),
            Self::PolicyCreated { policy } | Self::PolicyUpdated { policy } => Some(policy.id.to_string()),
            Self::PolicyDeleted { policy_id, .. } => Some(policy_id.to_string()),
            Self::ScopeCreated { scope } => Some(scope.id.to_string()),
            Self::ScopeDeleted { scope_id, .. } => Some(scope_id.to_string()),
        }
    }
}

/// Observes events. Register with [`EngineBuilder::with_plugin`](crate::EngineBuilder::with_plugin).
#[async_trait]
pub trait Plugin: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs when the plugin fails.
    fn name(&self) -> &'static str;

    /// Called for every event, in the order they happen, on the path of the
    /// operation: keep it quick (hand slow work to a channel).
    ///
    /// # Errors
    /// An error is logged (target `keysmith::hooks`) and otherwise ignored.
    async fn on_event(&self, event: &Event) -> Result<(), BoxError>;
}

/// The registered plugins.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hooks {
    plugins: Arc<[Arc<dyn Plugin>]>,
}

impl Hooks {
    pub(crate) fn new(plugins: Vec<Arc<dyn Plugin>>) -> Self {
        Self { plugins: plugins.into() }
    }

    /// True when nothing listens, so callers skip building events.
    pub(crate) fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Hands the event to every plugin; failures are logged, not returned.
    pub(crate) async fn emit(&self, event: Event) {
        for plugin in self.plugins.iter() {
            if let Err(error) = plugin.on_event(&event).await {
                tracing::warn!(
                    target: "keysmith::hooks",
                    plugin = plugin.name(),
                    event = event.name(),
                    error = %error,
                    "plugin failed; the operation goes on",
                );
            }
        }
    }
}
