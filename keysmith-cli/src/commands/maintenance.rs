//! `keysmith migrate` and `keysmith sweep`: database-wide work, for every tenant.

use keysmith_core::Engine;
use serde_json::json;

use crate::error::CliError;
use crate::output::{Details, Printer};

/// Brings the schema up to date.
pub(super) async fn migrate(engine: &Engine, printer: Printer) -> Result<String, CliError> {
    engine.store().migrate().await?;
    printer.render(&json!({ "migrated": true }), || "Database schema is up to date.\n".to_owned())
}

/// Expires keys that are due and ends rotations past their grace.
pub(super) async fn sweep(engine: &Engine, printer: Printer) -> Result<String, CliError> {
    let report = engine.sweep().await?;
    let value = json!({ "expired": report.expired, "rotations_ended": report.rotations_ended });
    printer.render(&value, || {
        Details::new()
            .line("keys expired", report.expired.to_string())
            .line("rotations ended", report.rotations_ended.to_string())
            .render()
    })
}
