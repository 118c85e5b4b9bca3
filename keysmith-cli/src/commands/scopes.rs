//! `keysmith scopes …`: the tenant's scope registry.

use keysmith_core::TenantEngine;
use serde_json::json;

use crate::cli::{CreateScopeArgs, ScopeIdArg, ScopesCommand};
use crate::error::CliError;
use crate::output::{Details, Printer, Table};
use crate::values::format_time;

/// Runs one `scopes` subcommand.
pub(super) async fn run(command: ScopesCommand, tenant: &TenantEngine, printer: Printer) -> Result<String, CliError> {
    match command {
        ScopesCommand::Create(CreateScopeArgs { name, description }) => {
            let scope = tenant.create_scope(&name, &description).await?;
            printer.render(&scope, || {
                Details::new()
                    .line("id", scope.id.to_string())
                    .line("name", scope.name.clone())
                    .line("description", scope.description.clone())
                    .line("created", format_time(scope.created_at))
                    .render()
            })
        }
        ScopesCommand::List => {
            let scopes = tenant.list_scopes().await?;
            printer.render(&scopes, || {
                let mut table = Table::new(["ID", "NAME", "CREATED", "DESCRIPTION"]);
                for scope in &scopes {
                    table.row([
                        scope.id.to_string(),
                        scope.name.clone(),
                        format_time(scope.created_at),
                        scope.description.clone(),
                    ]);
                }
                table.render("no scopes")
            })
        }
        ScopesCommand::Delete(ScopeIdArg { id }) => {
            tenant.delete_scope(id).await?;
            printer.render(&json!({ "deleted": id }), || format!("Deleted scope {id}.\n"))
        }
    }
}
