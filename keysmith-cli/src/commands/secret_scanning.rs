//! `keysmith secret-scanning pattern`: what to register with GitHub's secret
//! scanning partner program for this deployment's keys.

use keysmith_core::Environment;
use keysmith_core::leak::{CHECKSUM_RULE, test_key, token_pattern};
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
    // One per prefix and environment, made as real keys are and never
    // stored: GitHub asks for sample tokens to test the pattern with.
    let mut pairs: Vec<(&str, Environment)> = Vec::new();
    for prefix in &args.prefixes {
        for &environment in &args.environments {
            if !pairs.contains(&(prefix.as_str(), environment)) {
                pairs.push((prefix.as_str(), environment));
            }
        }
    }
    let test_keys = pairs
        .into_iter()
        .map(|(prefix, environment)| test_key(prefix, environment).map(|key| key.expose().to_owned()))
        .collect::<Result<Vec<String>, _>>()?;
    printer.render(
        &json!({
            "pattern": pattern,
            "prefixes": args.prefixes,
            "environments": environments,
            "checksum": CHECKSUM_RULE,
            "endpoint": "POST <your base URL>/keysmith/v1/secret-scanning/github",
            "test_keys": test_keys,
        }),
        || {
            format!(
                "Regular expression (prefixes {}; environments {}):\n  {pattern}\n\nPost-processing:\n  {CHECKSUM_RULE}\n\n\
                 Alert endpoint:\n  POST <your base URL>/keysmith/v1/secret-scanning/github\n\n\
                 Test keys (made as real keys are, never stored: they validate nowhere):\n  {}\n",
                args.prefixes.join(", "),
                environments.join(", "),
                test_keys.join("\n  "),
            )
        },
    )
}
