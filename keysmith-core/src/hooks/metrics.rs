//! The metrics plugin: counters and a latency histogram through the
//! `metrics` facade, so any exporter (Prometheus, StatsD…) picks them up.

use async_trait::async_trait;

use super::{Event, Plugin};
use crate::BoxError;

/// Counter: validations by `outcome` (`valid` or a refusal code).
const VALIDATIONS_TOTAL: &str = "keysmith_validations_total";
/// Histogram: seconds spent in `validate`, labelled by `outcome`.
const VALIDATION_DURATION: &str = "keysmith_validation_duration_seconds";
/// Counter: every event by `event` name.
const EVENTS_TOTAL: &str = "keysmith_events_total";

/// Records metrics for every event. Labels are low-cardinality: outcome and
/// event names only, never key ids or tenants.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsPlugin;

impl MetricsPlugin {
    /// The metric name of validation counts.
    pub const VALIDATIONS_TOTAL: &'static str = VALIDATIONS_TOTAL;
    /// The metric name of validation latency.
    pub const VALIDATION_DURATION: &'static str = VALIDATION_DURATION;
    /// The metric name of event counts.
    pub const EVENTS_TOTAL: &'static str = EVENTS_TOTAL;

    /// The plugin.
    #[must_use]
    pub fn new() -> Self {
        Self
    }
}

#[async_trait]
impl Plugin for MetricsPlugin {
    fn name(&self) -> &'static str {
        "metrics"
    }

    async fn on_event(&self, event: &Event) -> Result<(), BoxError> {
        match event {
            Event::KeyValidated { latency, .. } => {
                metrics::counter!(VALIDATIONS_TOTAL, "outcome" => "valid").increment(1);
                metrics::histogram!(VALIDATION_DURATION, "outcome" => "valid").record(latency.as_secs_f64());
            }
            Event::KeyValidationFailed { reason, latency, .. } => {
                metrics::counter!(VALIDATIONS_TOTAL, "outcome" => reason.code()).increment(1);
                metrics::histogram!(VALIDATION_DURATION, "outcome" => "refused").record(latency.as_secs_f64());
            }
            _ => {}
        }
        metrics::counter!(EVENTS_TOTAL, "event" => event.name()).increment(1);
        Ok(())
    }
}
