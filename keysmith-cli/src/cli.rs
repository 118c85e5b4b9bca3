//! The command line, as clap parses it. Values that cannot be parsed (ids,
//! durations, times, JSON) are refused here, so they exit with status 2.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use keysmith_core::leak::{LeakPolicies, LeakPolicy};
use keysmith_core::{Environment, KeyId, KeyState, LimitBy, Period, PolicyId, RotationReason, ScopeId};
use serde_json::{Map, Value};

use crate::values::{self, RateLimitArg, Timeout};

const ABOUT: &str = "Operate Keysmith: migrate its database, manage API keys, policies, scopes and usage, and serve \
                     the management API and dashboard.";

const AFTER_HELP: &str = "\
Exit status:
  0  success
  1  the operation was refused (not found, invalid state change, name taken, policy in use, invalid input)
  2  usage error (unknown command or flag, unparsable value, missing --app/--tenant, bad database URL)
  3  infrastructure failure (database unreachable or failing; serve cannot listen on its address)

Raw keys are printed once, on stdout, by `keys create`, `keys rotate` and `bootstrap-admin`, and nowhere else.";

/// `keysmith [GLOBAL FLAGS] <COMMAND>`.
#[derive(Debug, Parser)]
#[command(
    name = "keysmith",
    version,
    about = ABOUT,
    after_help = AFTER_HELP,
    propagate_version = true,
    arg_required_else_help = true
)]
pub(crate) struct Cli {
    /// Flags every command accepts.
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Where the database is, which tenant to act for, and how to print.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub(crate) struct GlobalArgs {
    /// Database URL: `sqlite:keys.db` (the file is created if missing),
    /// `postgres://user@host:5432/db` or `mysql://user@host:3306/db`.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true, value_name = "URL")]
    pub(crate) database_url: Option<String>,
    /// Redis URL of the change feed your application instances listen on
    /// (`RedisChangeFeed`): every change a command commits (a key revoked,
    /// suspended, rotated, expired, its scopes changed; a policy updated…)
    /// is published there, so instances that cache keys forget them at once.
    /// Without it, on PostgreSQL changes are published with `NOTIFY` on the
    /// database itself (`PgChangeFeed`); on SQLite and MySQL/MariaDB nothing
    /// is published (instances see a change when their cache entries expire).
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true, value_name = "URL")]
    pub(crate) redis_url: Option<String>,
    /// Application id of the tenant to act for (required by keys, policies, scopes and usage); ids are
    /// compared exactly: 1 to 128 bytes, no whitespace at either end.
    #[arg(long, env = "KEYSMITH_APP", global = true, value_name = "APP_ID")]
    pub(crate) app: Option<String>,
    /// Tenant id within the application (required by keys, policies, scopes and usage); 1 to 128 bytes,
    /// no whitespace at either end.
    #[arg(long, env = "KEYSMITH_TENANT", global = true, value_name = "TENANT_ID")]
    pub(crate) tenant: Option<String>,
    /// Print one JSON document on stdout instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create or update Keysmith's tables (idempotent: safe on every deploy).
    Migrate,
    /// Create, list, inspect, rotate, revoke, suspend and reactivate API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Show, set, top up or remove the credits an owner's keys share (under a
    /// policy with `--limit-by owner`).
    #[command(subcommand)]
    Owners(OwnersCommand),
    /// Manage policies: rate limits, IP and origin allowlists, scopes, key age, quotas.
    #[command(subcommand)]
    Policies(PoliciesCommand),
    /// Manage the tenant's scope registry.
    #[command(subcommand)]
    Scopes(ScopesCommand),
    /// Show a key's usage: hourly, daily or monthly roll-ups (passed requests and
    /// refusals by reason), or raw records with --records.
    Usage(UsageArgs),
    /// Expire keys past their expiry or maximum age and end rotations past their
    /// grace, for every tenant; then delete usage past its retention (raw records
    /// and hourly roll-ups, 30 days each by default), in bounded batches.
    Sweep(SweepArgs),
    /// Create a first admin key (scope `keysmith:admin`) for --app/--tenant and
    /// print it once. Migrates the database first, so it works on a new one.
    BootstrapAdmin(BootstrapAdminArgs),
    /// Serve the REST management API at /keysmith/v1 and the dashboard at
    /// /keysmith/ui/ until SIGINT or SIGTERM. Migrates the database first.
    ///
    /// With --app, only admin keys of that application are accepted; each admin
    /// key manages its own tenant. Request bodies over 256 KiB are refused
    /// (413 payload_too_large).
    ///
    /// On SIGINT or SIGTERM it stops accepting connections, closes idle ones,
    /// gives requests in flight --shutdown-timeout to finish, drops the
    /// connections still open, and writes the queued usage records.
    Serve(ServeArgs),
    /// Help registering with GitHub's secret scanning partner program.
    #[command(subcommand)]
    SecretScanning(SecretScanningCommand),
    /// Import the keys of your own api_keys table, by the SHA-256 each raw key
    /// hashes to, so that clients keep their keys.
    ///
    /// Source columns are named after Keysmith's fields (rename with `AS` in
    /// the query, or in the file's header): hash (required: 64 hex, the SHA-256
    /// of the whole raw key), hint, name, owner_id, created_at, last_used_at,
    /// revoked_at, expires_at, scopes (comma-separated), external_id. Rows
    /// whose hash the tenant holds already, or whose external_id a key was
    /// imported from, are skipped, so running it again is a no-op. Each batch is
    /// all or nothing: a bad row (or a line of the file that is not a row) is
    /// reported with its line and reason and nothing of its batch is written.
    /// The query runs in a read-only transaction: a query that writes fails.
    /// A dry run reports what the import would do. Exits 1 when a row was refused.
    Import(ImportArgs),
}

/// `keysmith import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// A database to read keys from: `postgres://…`, `mysql://…` or
    /// `sqlite:…` (with --query).
    #[arg(
        long,
        value_name = "URL",
        requires = "query",
        conflicts_with = "from_file",
        required_unless_present = "from_file"
    )]
    pub(crate) from_url: Option<String>,
    /// The query that reads the keys from --from-url, one row per key.
    #[arg(long, value_name = "SQL", requires = "from_url")]
    pub(crate) query: Option<String>,
    /// A file to read keys from: CSV with a header row, or JSON Lines (one
    /// object per line; chosen by a `.jsonl`/`.ndjson` name or a first line
    /// starting with `{`).
    #[arg(long, value_name = "PATH")]
    pub(crate) from_file: Option<std::path::PathBuf>,
    /// Report what would be imported and refused; write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// The environment of the imported keys (their rotations issue keys of it; default: live).
    #[arg(long, value_enum)]
    pub(crate) environment: Option<Environment>,
    /// Hold every imported key to this policy (`kpol_…`); a policy with
    /// `--max-keys-per-owner 1` keeps "one active key per user".
    #[arg(long, value_name = "POLICY_ID")]
    pub(crate) policy: Option<PolicyId>,
    /// The scopes of rows that name none (comma-separated).
    #[arg(long, value_name = "SCOPES", value_delimiter = ',')]
    pub(crate) scopes: Vec<String>,
    /// Rows per batch (each batch is one transaction).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) batch_size: u32,
}

/// `keysmith secret-scanning …`.
#[derive(Debug, Subcommand)]
pub(crate) enum SecretScanningCommand {
    /// Print the regular expression that matches this deployment's raw keys,
    /// to register with GitHub, and the checksum rule for its post-processing.
    /// Needs no database.
    Pattern(PatternArgs),
}

/// `keysmith secret-scanning pattern`.
#[derive(Debug, Args)]
pub(crate) struct PatternArgs {
    /// A key prefix in use (repeatable, or comma-separated).
    #[arg(long = "prefix", value_name = "PREFIX", value_delimiter = ',', default_value = keysmith_core::DEFAULT_PREFIX)]
    pub(crate) prefixes: Vec<String>,
    /// An environment in use (repeatable, or comma-separated).
    #[arg(long = "environment", value_name = "ENV", value_delimiter = ',', default_value = keysmith_core::DEFAULT_ENVIRONMENT.as_str())]
    pub(crate) environments: Vec<Environment>,
}

/// `keysmith bootstrap-admin`.
#[derive(Debug, Args)]
pub(crate) struct BootstrapAdminArgs {
    /// A name for people.
    #[arg(long, default_value = "bootstrap admin")]
    pub(crate) name: String,
}

/// `keysmith serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on (port 0: any free port, printed at start).
    #[arg(long, env = "KEYSMITH_LISTEN", default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub(crate) listen: std::net::SocketAddr,
    /// A proxy whose forwarding header (`--forwarded-header`) is believed
    /// for the client address (repeatable, or comma-separated): `10.0.0.0/8`,
    /// `::1`. Without one, the client is the connection's peer.
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_delimiter = ',', value_parser = values::parse_trusted_proxy)]
    pub(crate) trusted_proxies: Vec<String>,
    /// The one header trusted proxies write the client's address into:
    /// `x-forwarded-for` or `forwarded` (RFC 7239). Only that one is read,
    /// never whichever is present.
    #[arg(long, env = "KEYSMITH_FORWARDED_HEADER", value_enum, default_value_t = ForwardedHeader::XForwardedFor)]
    pub(crate) forwarded_header: ForwardedHeader,
    /// How log lines are written on stderr: `text` or `json` (one object a
    /// line). `RUST_LOG` chooses what is logged (default: warnings, and
    /// Keysmith's own notices such as a leaked-key alert or a store that went
    /// down and came back).
    #[arg(long, env = "KEYSMITH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// The realm of `WWW-Authenticate` challenges.
    #[arg(long, default_value = keysmith_admin::DEFAULT_REALM, value_parser = values::parse_realm)]
    pub(crate) realm: String,
    /// A client that has not sent a whole request head within this time is
    /// disconnected; an idle keep-alive connection is closed after it too
    /// (1s to 1h).
    #[arg(
        long,
        env = "KEYSMITH_HEADER_TIMEOUT",
        value_name = "DURATION",
        value_parser = values::parse_header_timeout,
        default_value_t = Timeout(keysmith_admin::DEFAULT_HEADER_TIMEOUT)
    )]
    pub(crate) header_timeout: Timeout,
    /// On SIGINT or SIGTERM, requests in flight get this long to finish;
    /// then the connections still open are dropped and the queued usage
    /// records are written (0 to 1h).
    #[arg(
        long,
        env = "KEYSMITH_SHUTDOWN_TIMEOUT",
        value_name = "DURATION",
        value_parser = values::parse_shutdown_timeout,
        default_value_t = Timeout(keysmith_admin::DEFAULT_SHUTDOWN_TIMEOUT)
    )]
    pub(crate) shutdown_timeout: Timeout,
    /// Where GitHub's secret scanning public keys are fetched from, to
    /// verify the alerts posted to /keysmith/v1/secret-scanning/github.
    #[arg(
        long,
        env = "KEYSMITH_GITHUB_KEYS_URL",
        default_value = keysmith_admin::secret_scanning::DEFAULT_GITHUB_KEYS_URL,
        value_name = "URL"
    )]
    pub(crate) github_keys_url: String,
    /// What a key reported leaked becomes: revoked, suspended, or left alone
    /// with only the `KeyLeaked` event (notify).
    #[arg(long, env = "KEYSMITH_LEAK_POLICY", default_value_t = LeakPolicy::Revoke)]
    pub(crate) leak_policy: LeakPolicy,
    /// Another leak policy for one tenant: `--tenant-leak-policy APP TENANT POLICY` (repeatable).
    #[arg(long, num_args = 3, value_names = ["APP", "TENANT", "POLICY"], action = clap::ArgAction::Append)]
    pub(crate) tenant_leak_policy: Vec<String>,
    /// Serve `GET /metrics` (Prometheus text format): validations by
    /// outcome, their latency, events, usage and change-feed counters.
    /// Without it the route is 404. `/health` and `/ready` are always served.
    #[arg(long, env = "KEYSMITH_METRICS")]
    pub(crate) metrics: bool,
    /// Answer errors in the RFC 9457 format (`application/problem+json`)
    /// instead of `{"error": {"code", "message"}}`.
    #[arg(long, env = "KEYSMITH_PROBLEM_DETAILS")]
    pub(crate) problem_details: bool,
    /// Sweep in the background this often, as `keysmith sweep` does (keys
    /// expired, rotation grace ended, usage past its retention deleted in
    /// bounded batches), the first one interval after start; 0 turns it off
    /// (when another process sweeps).
    #[arg(
        long,
        env = "KEYSMITH_SWEEP_INTERVAL",
        value_name = "DURATION",
        value_parser = values::parse_sweep_interval,
        default_value_t = Timeout(values::DEFAULT_SWEEP_INTERVAL)
    )]
    pub(crate) sweep_interval: Timeout,
    /// Keep raw usage records for this many days (default 30); the
    /// background sweep deletes older ones.
    #[arg(long, env = "KEYSMITH_USAGE_RETENTION", value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub(crate) usage_retention: Option<u32>,
}

/// `--forwarded-header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ForwardedHeader {
    /// `X-Forwarded-For: <client>, <proxy>…`.
    XForwardedFor,
    /// `Forwarded: for=<client>, for=<proxy>…` (RFC 7239).
    Forwarded,
}

impl From<ForwardedHeader> for keysmith_core::http::ForwardingHeader {
    fn from(header: ForwardedHeader) -> Self {
        match header {
            ForwardedHeader::XForwardedFor => Self::XForwardedFor,
            ForwardedHeader::Forwarded => Self::Forwarded,
        }
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

impl ServeArgs {
    /// How often the background sweep runs, if it does.
    pub(crate) fn sweep_interval(&self) -> Option<std::time::Duration> {
        Some(self.sweep_interval.0).filter(|interval| !interval.is_zero())
    }

    /// The leak policies the flags ask for.
    pub(crate) fn leak_policies(&self) -> Result<LeakPolicies, String> {
        let mut policies = LeakPolicies::new(self.leak_policy);
        for triple in self.tenant_leak_policy.chunks(3) {
            let [app, tenant, policy] = triple else {
                return Err("--tenant-leak-policy takes APP TENANT POLICY".to_owned());
            };
            // The ids --app and --tenant take, checked as they are.
            let flag = |error: keysmith_core::Error| format!("--tenant-leak-policy: {error}");
            keysmith_core::validate_id("app_id", app).map_err(flag)?;
            keysmith_core::validate_id("tenant_id", tenant).map_err(flag)?;
            let policy: LeakPolicy = policy.parse().map_err(flag)?;
            policies = policies.with_tenant(app.clone(), tenant.clone(), policy);
        }
        Ok(policies)
    }
}

/// `keysmith keys …`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key and print its secret, once.
    Create(CreateKeyArgs),
    /// List the tenant's keys, oldest first.
    List(ListKeysArgs),
    /// Show one key.
    Show(KeyIdArg),
    /// Replace an active key with a new one and print the new secret, once.
    Rotate(RotateKeyArgs),
    /// Revoke a key for good.
    Revoke(RevokeKeyArgs),
    /// Suspend an active key until it is reactivated.
    Suspend(KeyIdArg),
    /// Reactivate a suspended key.
    Reactivate(KeyIdArg),
    /// Show, set, top up or remove a key's credits (prepaid uses; no flag:
    /// show them).
    Credits(KeyCreditsArgs),
}

/// Credits for a new key, or the new credits of `keys credits --set`.
#[derive(Debug, Args)]
pub(crate) struct CreditsArgs {
    /// Refill the credits to this amount at the start of every UTC day or month.
    #[arg(long, value_name = "AMOUNT", requires = "refill_every")]
    pub(crate) refill: Option<u64>,
    /// How often --refill applies (UTC).
    #[arg(long, value_name = "PERIOD", requires = "refill", value_parser = refill_period())]
    pub(crate) refill_every: Option<Period>,
}

/// `--refill-every`: the periods a refill takes, `day` and `month` (usage
/// roll-ups also have `hour`; refills do not).
fn refill_period() -> impl clap::builder::TypedValueParser<Value = Period> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["day", "month"])
        .map(|name| if name == "day" { Period::Day } else { Period::Month })
}

impl CreditsArgs {
    /// `remaining` credits with the refill asked for.
    pub(crate) fn credits(&self, remaining: u64) -> keysmith_core::Credits {
        let credits = keysmith_core::Credits::new(remaining);
        match (self.refill, self.refill_every) {
            (Some(amount), Some(every)) => credits.with_refill(amount, every),
            _ => credits,
        }
    }
}

/// `keysmith keys credits`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("change").args(["set", "add", "remove"]))]
pub(crate) struct KeyCreditsArgs {
    /// The key (`akey_…`); its rotations share the credits.
    #[arg(value_name = "KEY_ID")]
    pub(crate) id: KeyId,
    /// What to change (nothing: show the credits).
    #[command(flatten)]
    pub(crate) change: CreditsChange,
}

/// What `keys credits` and `owners credits` change: at most one of --set,
/// --add and --remove.
#[derive(Debug, Args)]
pub(crate) struct CreditsChange {
    /// Replace the credits with this many uses.
    #[arg(long, value_name = "REMAINING")]
    pub(crate) set: Option<u64>,
    /// Add this many uses to the credits.
    #[arg(long, value_name = "AMOUNT", conflicts_with_all = ["refill", "refill_every"])]
    pub(crate) add: Option<u64>,
    /// Remove the credits: requests are no longer limited by them.
    #[arg(long, conflicts_with_all = ["refill", "refill_every"])]
    pub(crate) remove: bool,
    /// The refill of --set.
    #[command(flatten)]
    pub(crate) refill: CreditsArgs,
}

impl CreditsChange {
    /// Whether this changes the credits (no flag shows them).
    pub(crate) fn changes(&self) -> bool {
        self.set.is_some() || self.add.is_some() || self.remove
    }

    /// Refuses `--refill` without `--set` (clap cannot: `--refill` also
    /// belongs to `keys create`, which has no `--set`).
    pub(crate) fn check(&self) -> Result<(), crate::error::CliError> {
        if self.refill.refill.is_some() && self.set.is_none() {
            return Err(crate::error::CliError::Usage("--refill needs --set".to_owned()));
        }
        Ok(())
    }
}

/// `keysmith owners …`.
#[derive(Debug, Subcommand)]
pub(crate) enum OwnersCommand {
    /// Show, set, top up or remove the credits every key of an owner spends
    /// under a policy with `--limit-by owner` (no flag: show them).
    Credits(OwnerCreditsArgs),
}

/// `keysmith owners credits`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("change").args(["set", "add", "remove"]))]
pub(crate) struct OwnerCreditsArgs {
    /// The owner: your id for the user or customer, as on its keys.
    #[arg(value_name = "OWNER_ID")]
    pub(crate) owner_id: String,
    /// What to change (nothing: show the credits).
    #[command(flatten)]
    pub(crate) change: CreditsChange,
}

/// A key, by id.
#[derive(Debug, Args)]
pub(crate) struct KeyIdArg {
    /// The key's id (`akey_…`).
    #[arg(value_name = "KEY_ID")]
    pub(crate) id: KeyId,
}

/// `keysmith keys create`.
#[derive(Debug, Args)]
pub(crate) struct CreateKeyArgs {
    /// A name for people ("CI deploy key").
    #[arg(long)]
    pub(crate) name: String,
    /// A scope to grant (repeatable, or comma-separated).
    #[arg(long = "scope", value_name = "SCOPE", value_delimiter = ',')]
    pub(crate) scopes: Vec<String>,
    /// Hold the key to this policy (`kpol_…`).
    #[arg(long, value_name = "POLICY_ID")]
    pub(crate) policy: Option<PolicyId>,
    /// Give the key to this owner: your id for the user or customer it is for.
    #[arg(long, value_name = "OWNER_ID")]
    pub(crate) owner: Option<String>,
    /// Give the key this many prepaid uses (each request spends its cost).
    #[arg(long, value_name = "REMAINING")]
    pub(crate) credits: Option<u64>,
    /// The refill of --credits.
    #[command(flatten)]
    pub(crate) refill: CreditsArgs,
    /// Expire the key at this time (RFC 3339, or a date meaning its UTC midnight).
    #[arg(long, value_name = "TIME", value_parser = values::parse_time, conflicts_with = "expires_in")]
    pub(crate) expires_at: Option<DateTime<Utc>>,
    /// Expire the key after this long (`30d`, `12h`, `1h30m`, seconds).
    #[arg(long, value_name = "DURATION", value_parser = values::parse_duration)]
    pub(crate) expires_in: Option<Duration>,
    /// The environment written into the key (default: live).
    #[arg(long, value_enum)]
    pub(crate) environment: Option<Environment>,
    /// The key prefix (1–16 of a-z, 0-9; default: sk).
    #[arg(long)]
    pub(crate) prefix: Option<String>,
    /// Application data, a JSON object (`{"team":"infra"}`).
    #[arg(long, value_name = "JSON", value_parser = values::parse_metadata)]
    pub(crate) metadata: Option<Map<String, Value>>,
}

/// `keysmith keys list`.
#[derive(Debug, Args)]
pub(crate) struct ListKeysArgs {
    /// Only keys in this state.
    #[arg(long, value_enum)]
    pub(crate) state: Option<KeyState>,
    /// Only keys of this environment.
    #[arg(long, value_enum)]
    pub(crate) environment: Option<Environment>,
    /// Only keys under this policy (`kpol_…`).
    #[arg(long, value_name = "POLICY_ID")]
    pub(crate) policy: Option<PolicyId>,
    /// Only keys of this owner (matched exactly).
    #[arg(long, value_name = "OWNER_ID")]
    pub(crate) owner: Option<String>,
    /// Which page of the listing.
    #[command(flatten)]
    pub(crate) page: PageArgs,
}

/// `--limit` and `--offset`.
#[derive(Debug, Args)]
pub(crate) struct PageArgs {
    /// At most this many rows (1–1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) limit: u32,
    /// Skip this many rows first.
    #[arg(long, default_value_t = 0)]
    pub(crate) offset: u64,
}

/// `keysmith keys rotate`.
#[derive(Debug, Args)]
pub(crate) struct RotateKeyArgs {
    /// The key to replace (`akey_…`); it must be active.
    #[arg(value_name = "KEY_ID")]
    pub(crate) id: KeyId,
    /// Why the key is rotated.
    #[arg(long, value_enum, default_value_t = RotationReason::Manual)]
    pub(crate) reason: RotationReason,
    /// How long the old secret keeps working (`1h`, `3600`, `0` to stop it at
    /// once; default: 0 for `compromised`, else the policy's rotation grace,
    /// else 24h).
    #[arg(long, value_name = "DURATION", value_parser = values::parse_duration)]
    pub(crate) grace: Option<Duration>,
}

/// `keysmith keys revoke`.
#[derive(Debug, Args)]
pub(crate) struct RevokeKeyArgs {
    /// The key to revoke (`akey_…`).
    #[arg(value_name = "KEY_ID")]
    pub(crate) id: KeyId,
    /// Why, recorded with the key.
    #[arg(long, default_value = "revoked by an operator")]
    pub(crate) reason: String,
}

/// `keysmith policies …`.
#[derive(Debug, Subcommand)]
pub(crate) enum PoliciesCommand {
    /// Create a policy.
    Create(PolicySpecArgs),
    /// List the tenant's policies, oldest first.
    List(PageArgs),
    /// Show one policy.
    Show(PolicyIdArg),
    /// Replace a policy's settings with exactly the flags given.
    ///
    /// The update REPLACES the whole specification: every setting whose flag is
    /// left out is cleared (no rate limit, no allowlist, no quota…), not kept.
    /// Keys under the policy are held to the new settings from their next request.
    Update(UpdatePolicyArgs),
    /// Delete a policy that no live key uses.
    Delete(PolicyIdArg),
}

/// A policy, by id.
#[derive(Debug, Args)]
pub(crate) struct PolicyIdArg {
    /// The policy's id (`kpol_…`).
    #[arg(value_name = "POLICY_ID")]
    pub(crate) id: PolicyId,
}

/// `keysmith policies update`.
#[derive(Debug, Args)]
pub(crate) struct UpdatePolicyArgs {
    /// The policy's id (`kpol_…`).
    #[arg(value_name = "POLICY_ID")]
    pub(crate) id: PolicyId,
    /// The complete new specification.
    #[command(flatten)]
    pub(crate) spec: PolicySpecArgs,
}

/// A policy specification, flag by flag (mirrors `PolicySpec`).
#[derive(Debug, Args)]
pub(crate) struct PolicySpecArgs {
    /// The name, unique within the tenant.
    #[arg(long)]
    pub(crate) name: String,
    /// One limit named `default`, requests per window: `100/60s`, `10/1s`, `5000/h`.
    #[arg(long, value_name = "REQUESTS/WINDOW", value_parser = values::parse_rate_limit)]
    pub(crate) rate_limit: Option<RateLimitArg>,
    /// Requests allowed at once above the steady rate (default: the requests of --rate-limit).
    #[arg(long, requires = "rate_limit")]
    pub(crate) burst: Option<u32>,
    /// A named limit (repeatable; every one is enforced): `burst=10/1s`, `hourly=1000/h,1200` (the last
    /// number is the burst).
    #[arg(long = "limit", value_name = "NAME=REQUESTS/WINDOW[,BURST]", value_parser = values::parse_named_limit)]
    pub(crate) limits: Vec<keysmith_core::RateLimit>,
    /// Whose budget the limits, quota and credits count: `key` (each key's lineage) or `owner` (all keys of an owner).
    #[arg(long, value_enum, value_name = "key|owner", default_value_t = LimitBy::Key, hide_possible_values = true)]
    pub(crate) limit_by: LimitBy,
    /// A client network or address allowed to use the keys (repeatable): `10.0.0.0/8`, `2001:db8::1`.
    #[arg(long = "allow-ip", value_name = "CIDR", value_delimiter = ',')]
    pub(crate) allowed_ips: Vec<String>,
    /// An `Origin` allowed (repeatable): `https://app.example.com`.
    #[arg(long = "allow-origin", value_name = "ORIGIN", value_delimiter = ',')]
    pub(crate) allowed_origins: Vec<String>,
    /// A scope keys under the policy may hold (repeatable; none: any scope).
    #[arg(long = "allow-scope", value_name = "SCOPE", value_delimiter = ',')]
    pub(crate) allowed_scopes: Vec<String>,
    /// Keys older than this are expired: `90d`.
    #[arg(long, value_name = "DURATION", value_parser = values::parse_duration)]
    pub(crate) max_key_age: Option<Duration>,
    /// Requests per key per UTC day.
    #[arg(long, value_name = "REQUESTS")]
    pub(crate) daily_quota: Option<u64>,
    /// Requests per key per UTC calendar month.
    #[arg(long, value_name = "REQUESTS")]
    pub(crate) monthly_quota: Option<u64>,
    /// Default grace of rotations of keys under the policy: `1h`, `0`.
    #[arg(long, value_name = "DURATION", value_parser = values::parse_duration)]
    pub(crate) rotation_grace: Option<Duration>,
    /// At most this many live keys per owner under the policy (1: one key per customer).
    #[arg(long, value_name = "KEYS")]
    pub(crate) max_keys_per_owner: Option<u32>,
    /// Application data, a JSON object.
    #[arg(long, value_name = "JSON", value_parser = values::parse_metadata)]
    pub(crate) metadata: Option<Map<String, Value>>,
}

/// `keysmith scopes …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ScopesCommand {
    /// Register a scope name.
    Create(CreateScopeArgs),
    /// List the registered scopes, by name.
    List,
    /// Remove a scope from the registry (keys keep the scopes they hold).
    Delete(ScopeIdArg),
}

/// `keysmith scopes create`.
#[derive(Debug, Args)]
pub(crate) struct CreateScopeArgs {
    /// The scope (`read`, `write:orders`).
    #[arg(long)]
    pub(crate) name: String,
    /// What the scope allows, for people.
    #[arg(long, default_value = "")]
    pub(crate) description: String,
}

/// A scope, by id.
#[derive(Debug, Args)]
pub(crate) struct ScopeIdArg {
    /// The scope's id (`kscp_…`).
    #[arg(value_name = "SCOPE_ID")]
    pub(crate) id: ScopeId,
}

/// `keysmith sweep`.
#[derive(Debug, Args)]
pub(crate) struct SweepArgs {
    /// Keep raw usage records for this many days (default 30); older ones are deleted.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub(crate) usage_retention: Option<u32>,
}

/// `keysmith usage`.
#[derive(Debug, Args)]
pub(crate) struct UsageArgs {
    /// The key (`akey_…`).
    #[arg(value_name = "KEY_ID")]
    pub(crate) key: KeyId,
    /// Roll-up period of the aggregates.
    #[arg(long, value_enum, default_value_t = Period::Day)]
    pub(crate) period: Period,
    /// From this time on, inclusive (RFC 3339, or a date meaning its UTC midnight).
    #[arg(long, value_name = "TIME", value_parser = values::parse_time)]
    pub(crate) from: Option<DateTime<Utc>>,
    /// Up to this time, exclusive (RFC 3339, or a date meaning its UTC midnight).
    #[arg(long, value_name = "TIME", value_parser = values::parse_time)]
    pub(crate) to: Option<DateTime<Utc>>,
    /// List the raw usage records instead of the aggregates.
    #[arg(long)]
    pub(crate) records: bool,
    /// With --records: at most this many records (1–1000).
    #[arg(long, requires = "records", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) limit: Option<u32>,
    /// With --records: skip this many records first.
    #[arg(long, requires = "records")]
    pub(crate) offset: Option<u64>,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_sweeps_hourly_by_default_and_zero_turns_it_off() {
        let interval = |flags: &[&str]| {
            let cli = Cli::try_parse_from(["keysmith", "serve"].iter().chain(flags)).unwrap();
            let super::Command::Serve(args) = cli.command else { panic!("not serve") };
            args.sweep_interval()
        };
        assert_eq!(interval(&[]), Some(std::time::Duration::from_secs(3600)));
        assert_eq!(interval(&["--sweep-interval", "15m"]), Some(std::time::Duration::from_secs(900)));
        assert_eq!(interval(&["--sweep-interval", "0"]), None);
        assert!(Cli::try_parse_from(["keysmith", "serve", "--sweep-interval", "31d"]).is_err());
    }

    /// Every flag that takes one of core's string enums, with where the
    /// admin API's document lists that enum's names (under
    /// `components/schemas`).
    const ENUM_FLAGS: [(&[&str], &str, &str); 7] = [
        (&["keys", "list"], "state", "KeyState"),
        (&["keys", "list"], "environment", "Environment"),
        (&["keys", "create"], "environment", "Environment"),
        (&["keys", "create"], "refill_every", "Refill/properties/every"),
        (&["keys", "rotate"], "reason", "RotationReason"),
        (&["usage"], "period", "Period"),
        (&["policies", "create"], "limit_by", "LimitBy"),
    ];

    #[test]
    fn enum_flags_accept_exactly_the_names_the_admin_api_accepts() {
        let doc = serde_json::to_value(keysmith_admin::openapi()).unwrap();
        let command = Cli::command();
        for (path, id, schema) in ENUM_FLAGS {
            let sub = path.iter().fold(&command, |command, name| command.find_subcommand(name).unwrap());
            let arg = sub.get_arguments().find(|arg| arg.get_id() == id).unwrap();
            let names: Vec<String> =
                arg.get_possible_values().iter().map(|value| value.get_name().to_owned()).collect();
            let names_in_api = doc.pointer(&format!("/components/schemas/{schema}/enum")).unwrap();
            let api: Vec<String> = serde_json::from_value(names_in_api.clone()).unwrap();
            assert_eq!(names, api, "--{id} of `{}` and the API's {schema}", path.join(" "));
        }
    }

    #[test]
    fn enum_flags_parse_each_name_and_refuse_others() {
        let key = keysmith_core::KeyId::new().to_string();
        let command = Cli::command();
        for (path, id, _) in ENUM_FLAGS {
            let sub = path.iter().fold(&command, |command, name| command.find_subcommand(name).unwrap());
            let arg = sub.get_arguments().find(|arg| arg.get_id() == id).unwrap();
            let flag = format!("--{}", arg.get_long().unwrap());
            let mut line: Vec<String> = ["keysmith"].iter().chain(path).map(|s| (*s).to_owned()).collect();
            match path {
                ["keys", "rotate"] | ["usage"] => line.push(key.clone()),
                ["keys" | "policies", "create"] => line.extend(["--name".to_owned(), "n".to_owned()]),
                _ => {}
            }
            if id == "refill_every" {
                line.extend(["--refill".to_owned(), "1".to_owned()]);
            }
            for value in arg.get_possible_values() {
                let name = value.get_name();
                let parsed = Cli::try_parse_from(line.iter().cloned().chain([flag.clone(), name.to_owned()]));
                assert!(parsed.is_ok(), "{flag} {name}: {parsed:?}");
                let upper = Cli::try_parse_from(line.iter().cloned().chain([flag.clone(), name.to_uppercase()]));
                assert!(upper.is_err(), "{flag} {} is accepted", name.to_uppercase());
            }
        }
    }
}
