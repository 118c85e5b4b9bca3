//! `keysmith policies …`.

use keysmith_core::store::Page;
use keysmith_core::{Policy, PolicySpec, Quota, RateLimit, TenantEngine};
use serde_json::json;

use crate::cli::{PoliciesCommand, PolicyIdArg, PolicySpecArgs, UpdatePolicyArgs};
use crate::error::CliError;
use crate::output::{self, Details, Printer, Table};
use crate::values::{format_duration, format_rate_limit, format_time};

/// Runs one `policies` subcommand.
pub(super) async fn run(command: PoliciesCommand, tenant: &TenantEngine, printer: Printer) -> Result<String, CliError> {
    match command {
        PoliciesCommand::Create(args) => {
            let policy = tenant.create_policy(spec(args)).await?;
            printer.render(&policy, || details(&policy).render())
        }
        PoliciesCommand::List(page) => {
            let policies = tenant.list_policies(Page::new(page.limit, page.offset)).await?;
            printer.render(&policies, || table(&policies))
        }
        PoliciesCommand::Show(PolicyIdArg { id }) => {
            let policy = tenant.get_policy(id).await?;
            printer.render(&policy, || details(&policy).render())
        }
        PoliciesCommand::Update(UpdatePolicyArgs { id, spec: args }) => {
            let policy = tenant.update_policy(id, spec(args)).await?;
            printer.render(&policy, || details(&policy).render())
        }
        PoliciesCommand::Delete(PolicyIdArg { id }) => {
            tenant.delete_policy(id).await?;
            printer.render(&json!({ "deleted": id }), || format!("Deleted policy {id}.\n"))
        }
    }
}

/// The flags as a complete specification: what is not given is not set.
fn spec(args: PolicySpecArgs) -> PolicySpec {
    let mut spec = PolicySpec::new(args.name);
    if let Some(limit) = args.rate_limit {
        let default = RateLimit::new(RateLimit::DEFAULT_NAME, limit.requests, limit.window);
        spec = spec.with_limit(RateLimit { burst: args.burst, ..default });
    }
    spec.rate_limits.extend(args.limits);
    spec.limit_by = args.limit_by;
    spec.allowed_ips = args.allowed_ips;
    spec.allowed_origins = args.allowed_origins;
    spec.allowed_scopes = args.allowed_scopes;
    spec.max_key_age = args.max_key_age;
    if args.daily_quota.is_some() || args.monthly_quota.is_some() {
        spec.quota = Some(Quota { daily: args.daily_quota, monthly: args.monthly_quota });
    }
    spec.rotation_grace = args.rotation_grace;
    spec.max_active_keys_per_owner = args.max_keys_per_owner;
    spec.metadata = args.metadata.unwrap_or_default();
    spec
}

/// `burst 10/1s, hourly 1000/1h (burst 1200)`, or `-`.
fn rate_limit(policy: &Policy) -> String {
    if policy.rate_limits.is_empty() {
        return "-".to_owned();
    }
    let limits: Vec<String> = policy
        .rate_limits
        .iter()
        .map(|limit| {
            let rate = format_rate_limit(limit.requests, limit.window);
            match limit.burst {
                Some(burst) => format!("{} {rate} (burst {burst})", limit.name),
                None => format!("{} {rate}", limit.name),
            }
        })
        .collect();
    limits.join(", ")
}

fn table(policies: &[Policy]) -> String {
    let mut table = Table::new(["ID", "NAME", "RATE LIMIT", "DAILY", "MONTHLY", "MAX KEY AGE", "SCOPES", "CREATED"]);
    for policy in policies {
        let quota = policy.quota.unwrap_or_default();
        table.row([
            policy.id.to_string(),
            policy.name.clone(),
            rate_limit(policy),
            output::opt(quota.daily),
            output::opt(quota.monthly),
            output::opt(policy.max_key_age.map(format_duration)),
            output::list(&policy.allowed_scopes),
            format_time(policy.created_at),
        ]);
    }
    table.render("no policies")
}

/// Every setting of a policy, one per line.
fn details(policy: &Policy) -> Details {
    let quota = policy.quota.unwrap_or_default();
    let ips: Vec<String> = policy.allowed_ips.iter().map(ToString::to_string).collect();
    let mut details = Details::new();
    details
        .line("id", policy.id.to_string())
        .line("name", policy.name.clone())
        .line("rate limits", rate_limit(policy))
        .line("limit by", policy.limit_by.to_string())
        .line("allowed ips", output::list(&ips))
        .line("allowed origins", output::list(&policy.allowed_origins))
        .line("allowed scopes", output::list(&policy.allowed_scopes))
        .line("max key age", output::opt(policy.max_key_age.map(format_duration)))
        .line("daily quota", output::opt(quota.daily))
        .line("monthly quota", output::opt(quota.monthly))
        .line("rotation grace", output::opt(policy.rotation_grace.map(format_duration)))
        .line("keys per owner", output::opt(policy.max_active_keys_per_owner))
        .line("metadata", output::metadata(&policy.metadata))
        .line("created", format_time(policy.created_at))
        .line("updated", format_time(policy.updated_at));
    details
}
