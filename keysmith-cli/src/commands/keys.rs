//! `keysmith keys …`: the key lifecycle. Raw keys are printed here, once,
//! and only into the returned stdout text.

use chrono::{DateTime, Utc};
use keysmith_core::store::{KeyFilter, Page};
use keysmith_core::{Key, KeyState, NewKey, RotationRecord, TenantEngine};
use serde::Serialize;

use crate::cli::{CreateKeyArgs, KeyIdArg, KeysCommand, ListKeysArgs, RevokeKeyArgs, RotateKeyArgs};
use crate::error::CliError;
use crate::output::{self, Details, Printer, Table};
use crate::values::{format_duration, format_time};

/// The label of the line that carries a new secret in human output.
const RAW_KEY_LABEL: &str = "raw key (shown once, store it now):";

/// Runs one `keys` subcommand.
pub(super) async fn run(command: KeysCommand, tenant: &TenantEngine, printer: Printer) -> Result<String, CliError> {
    match command {
        KeysCommand::Create(args) => create(args, tenant, printer).await,
        KeysCommand::List(args) => list(args, tenant, printer).await,
        KeysCommand::Show(KeyIdArg { id }) => {
            let key = tenant.get_key(id).await?;
            printer.render(&key, || details(&key).render())
        }
        KeysCommand::Rotate(args) => rotate(args, tenant, printer).await,
        KeysCommand::Revoke(RevokeKeyArgs { id, reason }) => {
            let key = tenant.revoke_key(id, reason).await?;
            printer.render(&key, || changed(&key))
        }
        KeysCommand::Suspend(KeyIdArg { id }) => {
            let key = tenant.suspend_key(id).await?;
            printer.render(&key, || changed(&key))
        }
        KeysCommand::Reactivate(KeyIdArg { id }) => {
            let key = tenant.reactivate_key(id).await?;
            printer.render(&key, || changed(&key))
        }
        KeysCommand::Credits(args) => {
            let change = args.change;
            change.check()?;
            let key = match (change.set, change.add, change.remove) {
                (Some(remaining), _, _) => tenant.set_credits(args.id, Some(change.refill.credits(remaining))).await?,
                (None, Some(amount), _) => tenant.add_credits(args.id, amount).await?,
                (None, None, true) => tenant.set_credits(args.id, None).await?,
                (None, None, false) => tenant.get_key(args.id).await?,
            };
            printer.render(&key, || format!("Key {} credits: {}.\n", key.id, credits(&key)))
        }
    }
}

/// A key's credits on one line: `12 left, refilled to 100 every day`.
fn credits(key: &Key) -> String {
    credits_line(key.credits)
}

/// Credits on one line: `12 left, refilled to 100 every day`, or `none`.
pub(super) fn credits_line(credits: Option<keysmith_core::Credits>) -> String {
    match credits {
        None => "none".to_owned(),
        Some(credits) => match credits.refill {
            Some(refill) => format!("{} left, refilled to {} every {}", credits.remaining, refill.amount, refill.every),
            None => format!("{} left", credits.remaining),
        },
    }
}

/// A new key and its secret, as printed with `--json`.
#[derive(Serialize)]
struct Created<'a> {
    key: &'a Key,
    raw_key: &'a str,
}

async fn create(args: CreateKeyArgs, tenant: &TenantEngine, printer: Printer) -> Result<String, CliError> {
    let mut new = NewKey::new(args.name).with_scopes(args.scopes);
    if let Some(policy) = args.policy {
        new = new.with_policy(policy);
    }
    if let Some(owner) = args.owner {
        new = new.with_owner(owner);
    }
    match args.credits {
        Some(remaining) => new = new.with_credits(args.refill.credits(remaining)),
        None if args.refill.refill.is_some() => {
            return Err(CliError::Usage("--refill needs --credits".to_owned()));
        }
        None => {}
    }
    let expires_at = match (args.expires_at, args.expires_in) {
        (Some(at), _) => Some(at),
        (None, Some(after)) => Some(
            chrono::Duration::from_std(after)
                .ok()
                .and_then(|after| tenant.engine().clock().now().checked_add_signed(after))
                .ok_or_else(|| CliError::Usage("--expires-in is too long".to_owned()))?,
        ),
        (None, None) => None,
    };
    if let Some(at) = expires_at {
        new = new.with_expires_at(at);
    }
    if let Some(environment) = args.environment {
        new = new.with_environment(environment);
    }
    if let Some(prefix) = args.prefix {
        new = new.with_prefix(prefix);
    }
    if let Some(metadata) = args.metadata {
        new = new.with_metadata(metadata);
    }
    let created = tenant.create_key(new).await?;
    let raw_key = created.raw.expose();
    printer.render(&Created { key: &created.key, raw_key }, || {
        format!("{}\n{RAW_KEY_LABEL} {raw_key}\n", details(&created.key).render())
    })
}

async fn list(args: ListKeysArgs, tenant: &TenantEngine, printer: Printer) -> Result<String, CliError> {
    let filter = KeyFilter {
        state: args.state,
        environment: args.environment,
        policy_id: args.policy,
        owner_id: args.owner,
        page: Page::new(args.page.limit, args.page.offset),
    };
    let keys = tenant.list_keys(&filter).await?;
    printer.render(&keys, || {
        let mut table =
            Table::new(["ID", "NAME", "STATE", "ENV", "HINT", "SCOPES", "OWNER", "POLICY", "EXPIRES", "CREATED"]);
        for key in &keys {
            table.row([
                key.id.to_string(),
                key.name.clone(),
                key.state.to_string(),
                key.environment.to_string(),
                key.hint.clone(),
                output::list(&key.scopes),
                output::opt(key.owner_id.as_deref()),
                output::opt(key.policy_id),
                output::time(key.expires_at),
                format_time(key.created_at),
            ]);
        }
        table.render("no keys")
    })
}

/// A rotation as printed: the record without the two hashes.
#[derive(Serialize)]
struct RotationView<'a> {
    id: String,
    key_id: String,
    new_key_id: String,
    reason: &'a str,
    /// Seconds, as everywhere in Keysmith's JSON.
    grace_ttl: u64,
    grace_expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

impl<'a> RotationView<'a> {
    fn of(record: &'a RotationRecord) -> Self {
        Self {
            id: record.id.to_string(),
            key_id: record.key_id.to_string(),
            new_key_id: record.new_key_id.to_string(),
            reason: record.reason.as_str(),
            grace_ttl: record.grace_ttl.as_secs(),
            grace_expires_at: record.grace_expires_at,
            created_at: record.created_at,
        }
    }
}

/// A rotation's result, as printed with `--json`.
#[derive(Serialize)]
struct Rotated<'a> {
    key: &'a Key,
    raw_key: &'a str,
    old_key: &'a Key,
    rotation: RotationView<'a>,
}

async fn rotate(args: RotateKeyArgs, tenant: &TenantEngine, printer: Printer) -> Result<String, CliError> {
    let rotated = tenant.rotate_key(args.id, args.reason, args.grace).await?;
    let raw_key = rotated.raw.expose();
    let record = &rotated.record;
    let view = Rotated { key: &rotated.key, raw_key, old_key: &rotated.old, rotation: RotationView::of(record) };
    printer.render(&view, || {
        let mut text = details(&rotated.key).render();
        text.push('\n');
        text.push_str(
            &Details::new()
                .line("replaces", record.key_id.to_string())
                .line("reason", record.reason.as_str())
                .line("grace", format_duration(record.grace_ttl))
                .line("old key valid until", format_time(record.grace_expires_at))
                .render(),
        );
        text.push_str(&format!("\n{RAW_KEY_LABEL} {raw_key}\n"));
        text
    })
}

/// One line saying the key's new state.
fn changed(key: &Key) -> String {
    match (&key.state, &key.revoked_reason) {
        (KeyState::Revoked | KeyState::Suspended, Some(reason)) => {
            format!("Key {} is now {} ({reason}).\n", key.id, key.state)
        }
        (state, _) => format!("Key {} is now {state}.\n", key.id),
    }
}

/// Every field of a key, one per line.
fn details(key: &Key) -> Details {
    let mut details = Details::new();
    details
        .line("id", key.id.to_string())
        .line("name", key.name.clone())
        .line("state", key.state.to_string())
        .line("environment", key.environment.to_string())
        .line("hint", key.hint.clone())
        .line("scopes", output::list(&key.scopes))
        .line("owner", output::opt(key.owner_id.as_deref()))
        .line("credits", credits(key))
        .line("policy", output::opt(key.policy_id))
        .line("expires at", output::time(key.expires_at));
    if key.grace_expires_at.is_some() {
        details.line("grace ends", output::time(key.grace_expires_at));
    }
    if let Some(reason) = &key.revoked_reason {
        let label = if key.state == KeyState::Revoked { "revoked reason" } else { "reason" };
        details.line(label, reason.clone());
    }
    details
        .line("last used", output::time(key.last_used_at))
        .line("created", format_time(key.created_at))
        .line("updated", format_time(key.updated_at))
        .line("metadata", output::metadata(&key.metadata));
    details
}
