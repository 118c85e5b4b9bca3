//! One module per entity; [`run`] opens the database and dispatches.

mod import;
mod keys;
mod maintenance;
mod owners;
mod policies;
mod scopes;
mod secret_scanning;
mod serve;
mod usage;

use std::sync::Arc;

use keysmith_core::hooks::MetricsPlugin;
use keysmith_core::leak::LeakPolicies;
use keysmith_core::{Engine, Tenant, TenantEngine, validate_id};

use crate::cli::{Cli, Command, GlobalArgs, KeysCommand, OwnersCommand, PoliciesCommand, ScopesCommand};
use crate::db;
use crate::error::CliError;
use crate::output::Printer;

/// Runs the command and returns what to print on stdout.
///
/// Usage errors (a missing tenant, a bad database URL) and ids that are not
/// identities (`--tenant "acme "`) are found before the database is opened,
/// so they never depend on it being reachable.
pub(crate) async fn run(cli: Cli) -> Result<String, CliError> {
    let Cli { global, command } = cli;
    let printer = Printer::new(global.json);
    if let Command::SecretScanning(command) = command {
        // Prints what to register with GitHub: no database involved.
        return secret_scanning::run(&command, printer);
    }
    let leak_policies = match &command {
        Command::Serve(args) => args.leak_policies().map_err(CliError::Usage)?,
        _ => LeakPolicies::default(),
    };
    let tenant = match command {
        Command::Migrate | Command::Sweep(_) | Command::SecretScanning(_) => None,
        Command::Serve(_) => {
            if let Some(app) = &global.app {
                validate_id("app_id", app)?;
            }
            None
        }
        Command::Keys(_)
        | Command::Owners(_)
        | Command::Policies(_)
        | Command::Scopes(_)
        | Command::Usage(_)
        | Command::Import(_)
        | Command::BootstrapAdmin(_) => Some(tenant_of(&global)?),
    };
    let app = global.app.clone();
    let store = db::open(global.database_url.as_deref()).await?;
    let builder = Engine::builder(Arc::clone(&store)).with_leak_policies(leak_policies);
    // `open` succeeded, so the URL is there.
    let database_url = global.database_url.as_deref().unwrap_or_default();
    let mut builder = db::with_change_feed(builder, database_url, global.redis_url.as_deref()).await?;
    if let Command::Serve(args) = &command {
        if args.metrics {
            builder = builder.with_plugin(MetricsPlugin::new());
        }
        builder = builder.with_usage_retention(crate::values::usage_retention(args.usage_retention));
        if let Some(interval) = args.sweep_interval() {
            builder = builder.with_background_sweep(interval);
        }
    }
    let outcome = match builder.build() {
        Ok(engine) => {
            let tenant = tenant.map(|Tenant { app_id, tenant_id }| engine.tenant(app_id, tenant_id));
            let unannounced = engine.feed_status().is_none() && changes_what_instances_cache(&command);
            let outcome = dispatch(command, &engine, tenant.as_ref(), app.as_deref(), printer).await;
            if unannounced && outcome.is_ok() {
                eprintln!("{NO_FEED_NOTE}");
            }
            engine.shutdown().await;
            outcome
        }
        Err(error) => Err(error.into()),
    };
    store.close().await;
    outcome
}

/// Said on stderr after a change that applications cache (a key's state, a
/// policy, a scope) when nothing publishes it.
const NO_FEED_NOTE: &str = "note: nothing publishes this change (no change feed: SQLite or MySQL without \
     --redis-url), so application instances that cache keys keep the old state until their cache entry expires \
     (30 s by default); see the guide's many-instances page";

/// Whether `command` changes what application instances cache with a key:
/// its state, its credits, its policy, a scope it holds.
fn changes_what_instances_cache(command: &Command) -> bool {
    match command {
        Command::Keys(KeysCommand::Credits(args)) => args.change.changes(),
        Command::Owners(OwnersCommand::Credits(args)) => args.change.changes(),
        Command::Keys(command) => matches!(
            command,
            KeysCommand::Rotate(_) | KeysCommand::Revoke(_) | KeysCommand::Suspend(_) | KeysCommand::Reactivate(_)
        ),
        Command::Policies(command) => matches!(command, PoliciesCommand::Update(_) | PoliciesCommand::Delete(_)),
        Command::Scopes(command) => matches!(command, ScopesCommand::Delete(_)),
        _ => false,
    }
}

async fn dispatch(
    command: Command, engine: &Engine, tenant: Option<&TenantEngine>, app: Option<&str>, printer: Printer,
) -> Result<String, CliError> {
    let tenant = || tenant.ok_or_else(|| CliError::Usage("this command needs --app and --tenant".to_owned()));
    match command {
        Command::Migrate => maintenance::migrate(engine, printer).await,
        Command::Sweep(args) => maintenance::sweep(args, engine, printer).await,
        Command::Keys(command) => keys::run(command, tenant()?, printer).await,
        Command::Owners(command) => owners::run(command, tenant()?, printer).await,
        Command::Policies(command) => policies::run(command, tenant()?, printer).await,
        Command::Scopes(command) => scopes::run(command, tenant()?, printer).await,
        Command::Usage(args) => usage::run(args, tenant()?, printer).await,
        Command::BootstrapAdmin(args) => maintenance::bootstrap_admin(args, engine, tenant()?, printer).await,
        Command::Serve(args) => serve::run(args, engine, app, printer).await,
        Command::SecretScanning(command) => secret_scanning::run(&command, printer),
        Command::Import(args) => import::run(args, tenant()?, printer).await,
    }
}

/// `--app` and `--tenant`, both required (blank counts as missing) and
/// taken as given: ids are compared exactly, so `"acme "` is refused as an
/// id no tenant can have, never trimmed into `acme`.
fn tenant_of(global: &GlobalArgs) -> Result<Tenant, CliError> {
    let given = |value: &Option<String>| value.as_deref().filter(|v| !v.trim().is_empty()).map(str::to_owned);
    match (given(&global.app), given(&global.tenant)) {
        (Some(app), Some(tenant)) => {
            let tenant = Tenant::new(app, tenant);
            tenant.validate()?;
            Ok(tenant)
        }
        (None, Some(_)) => {
            Err(CliError::Usage("this command acts for one tenant: pass --app (or set KEYSMITH_APP)".to_owned()))
        }
        (Some(_), None) => {
            Err(CliError::Usage("this command acts for one tenant: pass --tenant (or set KEYSMITH_TENANT)".to_owned()))
        }
        (None, None) => Err(CliError::Usage(
            "this command acts for one tenant: pass --app and --tenant (or set KEYSMITH_APP and KEYSMITH_TENANT)"
                .to_owned(),
        )),
    }
}
