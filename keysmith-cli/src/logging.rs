//! Log lines on stderr: what the engine, the admin API and the libraries
//! below them report (a store that went down, a leaked-key alert handled, a
//! hook that failed), never a raw key. `RUST_LOG` chooses what is logged,
//! as comma-separated `target=level` directives (`keysmith=debug,warn`).

use std::io::IsTerminal as _;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::cli::LogFormat;
use crate::error::CliError;

/// What is logged without `RUST_LOG`: every crate's warnings and errors,
/// and, for `serve`, Keysmith's own notices too (info: each leaked-key
/// alert, a change feed or Redis that came back). A command's result goes
/// to stdout; these lines never mix with it.
fn default_filter(serving: bool) -> Targets {
    let filter = Targets::new().with_default(LevelFilter::WARN);
    if serving { filter.with_target("keysmith", LevelFilter::INFO) } else { filter }
}

/// Installs the process's subscriber; a `RUST_LOG` that does not parse is a
/// usage error.
pub(crate) fn init(serving: bool, format: LogFormat) -> Result<(), CliError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => directives
            .parse::<Targets>()
            .map_err(|error| CliError::Usage(format!("RUST_LOG {directives:?} does not parse: {error}")))?,
        _ => default_filter(serving),
    };
    let lines =
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(lines).try_init(),
        LogFormat::Json => registry.with(lines.json()).try_init(),
    }
    .map_err(|error| CliError::Usage(format!("cannot install the logger: {error}")))
}
