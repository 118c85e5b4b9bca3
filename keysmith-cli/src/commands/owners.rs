//! `keysmith owners …`: the credits an owner's keys share.

use keysmith_core::{Credits, TenantEngine};
use serde::Serialize;

use super::keys::credits_line;
use crate::cli::{OwnerCreditsArgs, OwnersCommand};
use crate::error::CliError;
use crate::output::Printer;

/// An owner's credits, as printed with `--json`.
#[derive(Serialize)]
struct OwnerCredits<'a> {
    owner_id: &'a str,
    credits: Option<Credits>,
}

/// Runs one `owners` subcommand.
pub(super) async fn run(command: OwnersCommand, tenant: &TenantEngine, printer: Printer) -> Result<String, CliError> {
    match command {
        OwnersCommand::Credits(args) => credits(args, tenant, printer).await,
    }
}

async fn credits(args: OwnerCreditsArgs, tenant: &TenantEngine, printer: Printer) -> Result<String, CliError> {
    let owner_id = args.owner_id.as_str();
    let change = args.change;
    change.check()?;
    let credits = match (change.set, change.add, change.remove) {
        (Some(remaining), _, _) => tenant.set_owner_credits(owner_id, Some(change.refill.credits(remaining))).await?,
        (None, Some(amount), _) => Some(tenant.add_owner_credits(owner_id, amount).await?),
        (None, None, true) => tenant.set_owner_credits(owner_id, None).await?,
        (None, None, false) => tenant.owner_credits(owner_id).await?,
    };
    printer.render(&OwnerCredits { owner_id, credits }, || {
        format!("Owner {owner_id:?} credits: {}.\n", credits_line(credits))
    })
}
