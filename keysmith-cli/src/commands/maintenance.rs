//! `keysmith migrate`, `keysmith sweep` and `keysmith bootstrap-admin`:
//! database-wide work, and the first key of a tenant.

use keysmith_core::{Engine, Key, NewKey, TenantEngine};
use serde::Serialize;
use serde_json::json;

use crate::cli::{BootstrapAdminArgs, SweepArgs};
use crate::error::CliError;
use crate::output::{Details, Printer};

/// Brings the schema up to date.
pub(super) async fn migrate(engine: &Engine, printer: Printer) -> Result<String, CliError> {
    engine.store().migrate().await?;
    printer.render(&json!({ "migrated": true }), || "Database schema is up to date.\n".to_owned())
}

/// Expires keys that are due, ends rotations past their grace and deletes
/// expired usage (raw records older than `--usage-retention` days).
pub(super) async fn sweep(args: SweepArgs, engine: &Engine, printer: Printer) -> Result<String, CliError> {
    let retention = crate::values::usage_retention(args.usage_retention);
    let report = engine.sweep_with(&retention).await?;
    let value = json!({
        "expired": report.expired,
        "rotations_ended": report.rotations_ended,
        "usage_records_deleted": report.usage_records_deleted,
        "hourly_rollups_deleted": report.hourly_rollups_deleted,
    });
    printer.render(&value, || {
        Details::new()
            .line("keys expired", report.expired.to_string())
            .line("rotations ended", report.rotations_ended.to_string())
            .line("usage records deleted", report.usage_records_deleted.to_string())
            .line("hourly roll-ups deleted", report.hourly_rollups_deleted.to_string())
            .render()
    })
}

/// A new admin key and its secret, as printed with `--json`.
#[derive(Serialize)]
struct Bootstrapped<'a> {
    key: &'a Key,
    raw_key: &'a str,
}

/// Migrates, then creates a key holding the admin API's scope for the
/// tenant, and prints its secret once, as a `raw key: …` line.
pub(super) async fn bootstrap_admin(
    args: BootstrapAdminArgs, engine: &Engine, tenant: &TenantEngine, printer: Printer,
) -> Result<String, CliError> {
    engine.store().migrate().await?;
    let created = tenant.create_key(NewKey::new(args.name).with_scopes([keysmith_admin::ADMIN_SCOPE])).await?;
    let raw_key = created.raw.expose();
    let key = &created.key;
    printer.render(&Bootstrapped { key, raw_key }, || {
        let details = Details::new()
            .line("id", key.id.to_string())
            .line("name", key.name.clone())
            .line("tenant", format!("{} / {}", key.tenant.app_id, key.tenant.tenant_id))
            .line("scopes", keysmith_admin::ADMIN_SCOPE)
            .render();
        format!(
            "{details}\nSign in to the dashboard or call the management API with this key.\n\
             It is shown this once; only its hash is stored.\nraw key: {raw_key}\n"
        )
    })
}
