//! `keysmith`: the operator's command line for Keysmith.
//!
//! It opens the database named by `--database-url` (SQLite or PostgreSQL,
//! through `keysmith-sqlx`), runs one command through the Keysmith engine and
//! prints its result: aligned text, or one JSON document with `--json`.
//!
//! ```text
//! keysmith --database-url sqlite:keys.db migrate
//! keysmith --database-url sqlite:keys.db --app myapp --tenant acme keys create --name ci --scope read
//! keysmith --database-url sqlite:keys.db --app myapp --tenant acme --json keys list --state active
//! ```
//!
//! `keysmith bootstrap-admin` makes a tenant's first `keysmith:admin` key,
//! and `keysmith serve` runs the REST management API (`/keysmith/v1`) and
//! its dashboard (`/keysmith/ui/`) until SIGINT or SIGTERM:
//!
//! ```text
//! keysmith --database-url sqlite:keys.db --app myapp --tenant acme bootstrap-admin
//! keysmith --database-url sqlite:keys.db serve --listen 127.0.0.1:8080
//! ```
//!
//! Exit status: 0 success; 1 the operation was refused (not found, invalid
//! state change, name taken, policy in use, invalid input); 2 usage error
//! (bad flag or value, missing `--app`/`--tenant`, bad database URL);
//! 3 infrastructure failure (database unreachable). Errors are one line on
//! stderr. Raw keys are printed once, on stdout, and nowhere else.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod db;
mod error;
mod logging;
mod output;
mod values;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use clap::error::ErrorKind;

use crate::cli::{Cli, Command, LogFormat};
use crate::error::{CliError, EXIT_UNAVAILABLE, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let serve = match &cli.command {
        Command::Serve(args) => Some(args.log_format),
        _ => None,
    };
    if let Err(error) = logging::init(serve.is_some(), serve.unwrap_or(LogFormat::Text)) {
        eprintln!("error: {error}");
        return error.exit_code();
    }
    // `serve` answers many clients at once on every core; any other command
    // is one operation after another.
    let runtime = if serve.is_some() {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    match runtime.block_on(commands::run(cli)).and_then(|text| print(&text)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(report) = error.report()
                && let Err(error) = print(report)
            {
                eprintln!("error: {error}");
            }
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}

/// Writes the result to stdout. A reader that went away (`| head`) is not
/// an error.
fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(error)),
        _ => Ok(()),
    }
}

/// Help and version go out as clap prints them; any other parse error is
/// reduced to one `error: …` line on stderr, with status 2.
fn usage_error(error: &clap::Error) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            if error.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS }
        }
        _ => {
            eprintln!("{}", one_line(&error.render().to_string()));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// clap's message without its usage block, on one line.
fn one_line(rendered: &str) -> String {
    rendered
        .split("\n\n")
        .map(str::trim)
        .filter(|part| !part.is_empty() && !part.starts_with("Usage:") && !part.starts_with("For more information"))
        .map(|part| part.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn clap_errors_become_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --name <NAME>\n\nUsage: keysmith keys create --name <NAME>\n\nFor more information, try '--help'.\n";
        assert_eq!(one_line(rendered), "error: the following required arguments were not provided: --name <NAME>");
        let rendered = "error: unexpected argument '--scop' found\n\n  tip: a similar argument exists: '--scope'\n\nUsage: x\n\nFor more information, try '--help'.\n";
        assert_eq!(
            one_line(rendered),
            "error: unexpected argument '--scop' found; tip: a similar argument exists: '--scope'"
        );
    }
}
