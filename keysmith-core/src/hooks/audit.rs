//! The audit plugin: one structured record per event.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use super::{Event, Plugin};
use crate::{BoxError, Tenant};

/// One line of the audit trail. Holds ids and reasons, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// The event name (`key_revoked`…).
    pub event: &'static str,
    /// The tenant concerned, when known.
    pub tenant: Option<Tenant>,
    /// The id of the entity concerned.
    pub subject: Option<String>,
    /// What else matters: refusal code, revocation or rotation reason.
    pub detail: Option<String>,
}

impl AuditEntry {
    fn from_event(event: &Event) -> Self {
        let detail = match event {
            Event::KeyValidationFailed { reason, .. } => Some(reason.code().to_owned()),
            Event::KeyRevoked { key } => key.revoked_reason.clone(),
            Event::KeyLeaked { source, url, action, .. } => Some(format!("{action} (found in {source} at {url})")),
            Event::KeyRotated { record, .. } => {
                Some(format!("{} -> {} ({})", record.key_id, record.new_key_id, record.reason))
            }
            Event::QuotaExceeded { period, resets_at, .. } => {
                Some(format!("{period} quota used up until {}", resets_at.to_rfc3339()))
            }
            _ => None,
        };
        Self { event: event.name(), tenant: event.tenant().cloned(), subject: event.subject(), detail }
    }
}

type Sink = Arc<dyn Fn(&AuditEntry) + Send + Sync>;

/// Writes an [`AuditEntry`] per event: as a `tracing` event with target
/// `keysmith::audit` (level INFO), or to a sink of yours.
///
/// Successful validations are left out unless asked for: they happen on every
/// request and belong in metrics, not in an audit trail.
#[derive(Clone, Default)]
pub struct AuditPlugin {
    sink: Option<Sink>,
    validations: bool,
}

impl AuditPlugin {
    /// Audit to `tracing`, target `keysmith::audit`.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Audit to `sink` instead of `tracing`.
    #[must_use]
    pub fn with_sink(mut self, sink: impl Fn(&AuditEntry) + Send + Sync + 'static) -> Self {
        self.sink = Some(Arc::new(sink));
        self
    }

    /// Also record every successful validation.
    #[must_use]
    pub fn with_successful_validations(mut self) -> Self {
        self.validations = true;
        self
    }
}

impl fmt::Debug for AuditPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditPlugin")
            .field("sink", &self.sink.as_ref().map(|_| "custom"))
            .field("validations", &self.validations)
            .finish()
    }
}

#[async_trait]
impl Plugin for AuditPlugin {
    fn name(&self) -> &'static str {
        "audit"
    }

    async fn on_event(&self, event: &Event) -> Result<(), BoxError> {
        if matches!(event, Event::KeyValidated { .. }) && !self.validations {
            return Ok(());
        }
        let entry = AuditEntry::from_event(event);
        match &self.sink {
            Some(sink) => sink(&entry),
            None => tracing::info!(
                target: "keysmith::audit",
                event = entry.event,
                app_id = entry.tenant.as_ref().map(|t| t.app_id.as_str()),
                tenant_id = entry.tenant.as_ref().map(|t| t.tenant_id.as_str()),
                subject = entry.subject.as_deref(),
                detail = entry.detail.as_deref(),
                "keysmith audit",
            ),
        }
        Ok(())
    }
}
