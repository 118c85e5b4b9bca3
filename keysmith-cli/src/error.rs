//! Why a command failed, and the exit status that says so.

use std::fmt;
use std::process::ExitCode;

use keysmith_core::Error;

/// The operation was refused: not found, invalid transition, name taken,
/// policy in use, an owner's key limit, credits that conflict with a policy
/// limiting by owner, or invalid input.
pub(crate) const EXIT_REFUSED: u8 = 1;
/// The command line could not be understood.
pub(crate) const EXIT_USAGE: u8 = 2;
/// The database is unreachable or failing.
pub(crate) const EXIT_UNAVAILABLE: u8 = 3;

/// A failed command. Its `Display` is one line, without the `error: ` lead.
#[derive(Debug)]
pub(crate) enum CliError {
    /// A usage error the parser could not catch (missing tenant, bad URL scheme…).
    Usage(String),
    /// The database could not be opened.
    Connect(Error),
    /// The engine refused or failed the operation.
    Engine(Error),
    /// Stdout could not be written.
    Output(std::io::Error),
    /// An import refused rows: its report (printed on stdout) and how many.
    RowsRefused {
        /// What the import printed.
        report: String,
        /// Rows refused.
        count: usize,
    },
    /// An import failed after writing batches: its report of those (printed
    /// on stdout), and why it stopped.
    ImportStopped {
        /// What the import printed.
        report: String,
        /// Rows read from the source after the last batch imported: not imported.
        not_read: u64,
        /// Why it stopped; its exit status is this one's.
        cause: Box<CliError>,
    },
    /// `serve` could not listen on its address.
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl CliError {
    /// The process exit status for this failure.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.status())
    }

    /// What the command printed on stdout before it failed, if anything.
    pub(crate) fn report(&self) -> Option<&str> {
        match self {
            Self::RowsRefused { report, .. } | Self::ImportStopped { report, .. } => Some(report),
            _ => None,
        }
    }

    fn status(&self) -> u8 {
        match self {
            Self::ImportStopped { cause, .. } => cause.status(),
            Self::Usage(_) => EXIT_USAGE,
            Self::RowsRefused { .. }
            | Self::Engine(
                Error::NotFound { .. }
                | Error::InvalidTransition { .. }
                | Error::AlreadyExists { .. }
                | Error::PolicyInUse { .. }
                | Error::OwnerKeyLimit { .. }
                | Error::OwnerLimitedCredits { .. }
                | Error::KeysHoldCredits { .. }
                | Error::InvalidInput { .. },
            ) => EXIT_REFUSED,
            // Store failures, and any failure added to keysmith later that is
            // not a refusal of the operation itself.
            Self::Connect(_) | Self::Engine(_) | Self::Output(_) | Self::Listen { .. } => EXIT_UNAVAILABLE,
        }
    }
}

impl From<Error> for CliError {
    fn from(error: Error) -> Self {
        Self::Engine(error)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Usage(message) => message.clone(),
            Self::Connect(Error::Store { source }) => {
                format!("cannot open the database: {source} (is it reachable, and is the URL right?)")
            }
            Self::Connect(error) => format!("cannot open the database: {error}"),
            Self::Engine(error) => {
                let text = error.to_string();
                if matches!(error, Error::Store { .. }) && names_missing_table(&text) {
                    format!("{text} (has `keysmith migrate` been run on this database?)")
                } else {
                    text
                }
            }
            Self::Output(error) => format!("cannot write the output: {error}"),
            Self::RowsRefused { count, .. } => format!("{count} row(s) refused; see the report above"),
            Self::ImportStopped { not_read, cause, .. } => format!(
                "{cause}; the import stopped there: the report above is of the batches before, \
                 {not_read} row(s) read since were not imported"
            ),
            Self::Listen { addr, source } => format!("cannot serve on {addr}: {source}"),
        };
        // One line, whatever a driver put in its message.
        f.write_str(&text.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// True for SQLite's and PostgreSQL's "table does not exist" messages about
/// one of Keysmith's tables.
fn names_missing_table(message: &str) -> bool {
    message.contains("no such table: keysmith_")
        || (message.contains("relation \"keysmith_") && message.contains("does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(error: &CliError) -> ExitCode {
        error.exit_code()
    }

    #[test]
    fn refusals_usage_and_failures_have_distinct_statuses() {
        let refused = CliError::Engine(Error::NotFound { entity: "key", id: "akey_x".to_owned() });
        assert_eq!(code(&refused), ExitCode::from(EXIT_REFUSED));
        assert_eq!(code(&CliError::Usage("x".to_owned())), ExitCode::from(EXIT_USAGE));
        let down = CliError::Engine(Error::store(std::io::Error::other("connection refused")));
        assert_eq!(code(&down), ExitCode::from(EXIT_UNAVAILABLE));
        assert_eq!(code(&CliError::Connect(Error::store("x"))), ExitCode::from(EXIT_UNAVAILABLE));
    }

    #[test]
    fn credits_that_conflict_with_a_policy_limiting_by_owner_are_refusals() {
        let policy_id = keysmith_core::PolicyId::new();
        let held = Error::KeysHoldCredits { policy_id, key_ids: vec![keysmith_core::KeyId::new()], count: 12 };
        let given = Error::OwnerLimitedCredits { policy_id, owner_id: "cus_1".to_owned() };
        for error in [held, given] {
            let error = CliError::Engine(error);
            assert_eq!(code(&error), ExitCode::from(EXIT_REFUSED), "{error}");
            assert!(error.to_string().contains(&policy_id.to_string()), "{error}");
        }
    }

    #[test]
    fn an_import_that_stops_keeps_its_report_and_its_cause_status() {
        for (cause, status) in [
            (CliError::Engine(Error::store("connection reset")), EXIT_UNAVAILABLE),
            (CliError::Usage("the source query failed: x".to_owned()), EXIT_USAGE),
        ] {
            let error =
                CliError::ImportStopped { report: "imported 3\n".to_owned(), not_read: 2, cause: Box::new(cause) };
            assert_eq!(code(&error), ExitCode::from(status));
            assert_eq!(error.report(), Some("imported 3\n"));
            assert!(error.to_string().contains("2 row(s) read since were not imported"), "{error}");
        }
    }

    #[test]
    fn messages_are_one_line_and_hint_at_migrations() {
        let error =
            CliError::Engine(Error::store("error returned from database: (code: 1) no such table: keysmith_keys"));
        let text = error.to_string();
        assert!(text.contains("keysmith migrate"), "{text}");
        let error = CliError::Engine(Error::store("line one\nline two"));
        assert_eq!(error.to_string(), "store unavailable: line one line two");
    }
}
