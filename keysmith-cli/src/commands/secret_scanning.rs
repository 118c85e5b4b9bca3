//! `keysmith secret-scanning pattern`: what to register with GitHub's secret
//! scanning partner program for this deployment's keys.

use keysmith_core::leak::{CHECKSUM_RULE, token_pattern};
use serde_json::json;

use crate::cli::{PatternArgs, SecretScanningCommand};
use crate::error::CliError;
use crate::output::Printer;

/// Runs a `secret-scanning` subcommand.
pub(super) fn run(command: &SecretScanningCommand, printer: Printer) -> Result<String, CliError> {
    match command {
        SecretScanningCommand::Pattern(args) => pattern(args, printer),
    }
}

fn pattern(args: &PatternArgs, printer: Printer) -> Result<String, CliError> {
    let pattern =
        token_pattern(&args.prefixes, &args.environments).map_err(|error| CliError::Usage(error.to_string()))?;
    let environments: Vec<&str> = args.environments.iter().map(|env| env.as_str()).collect();
    printer.render(
        &json!({
            "pattern": pattern,
            "prefixes": args.prefixes,
            "environments": environments,
            "checksum": CHECKSUM_RULE,
            "endpoint": "POST <your base URL>/keysmith/v1/secret-scanning/github",
        }),
        || {
            format!(
                "Regular expression (prefixes {}; environments {}):\n  {pattern}\n\nPost-processing:\n  {CHECKSUM_RULE}\n\n\
                 Alert endpoint:\n  POST <your base URL>/keysmith/v1/secret-scanning/github\n",
                args.prefixes.join(", "),
                environments.join(", "),
            )
        },
    )
}
