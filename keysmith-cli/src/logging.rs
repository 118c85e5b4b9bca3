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
/// to stdout; these lines never mix with it. A one-shot command leaves out
/// sqlx's notices of statements slower than a second (`sqlx::query`): its
/// wait for the migration lock while another process migrates is one, and
/// they say nothing a command's user can act on.
fn default_filter(serving: bool) -> Targets {
    let filter = Targets::new().with_default(LevelFilter::WARN);
    if serving {
        filter.with_target("keysmith", LevelFilter::INFO)
    } else {
        filter.with_target("sqlx::query", LevelFilter::ERROR)
    }
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

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::default_filter;

    #[test]
    fn commands_log_warnings_but_not_sqlx_slow_statements_and_serve_logs_keysmith_notices() {
        let command = default_filter(false);
        assert!(command.would_enable("sqlx::pool", &Level::WARN));
        assert!(command.would_enable("keysmith::feed", &Level::WARN));
        assert!(!command.would_enable("sqlx::query", &Level::WARN), "a slow statement is no command's business");
        assert!(command.would_enable("sqlx::query", &Level::ERROR));
        assert!(!command.would_enable("keysmith::feed", &Level::INFO));
        let serve = default_filter(true);
        assert!(serve.would_enable("sqlx::query", &Level::WARN));
        assert!(serve.would_enable("keysmith::feed", &Level::INFO));
        assert!(!serve.would_enable("hyper", &Level::INFO));
    }
}
