//! Opening the store named by `--database-url`.

use std::sync::Arc;

use keysmith_core::Store;
use keysmith_sqlx::{PgStore, SqliteStore};

use crate::error::CliError;

/// The database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// `sqlite:path` or `sqlite://path`.
    Sqlite,
    /// `postgres://…` or `postgresql://…`.
    Postgres,
}

impl Backend {
    /// The backend of `url`, from its scheme.
    ///
    /// The message of the error names only the scheme: the rest of the URL
    /// may hold a password.
    pub(crate) fn of(url: &str) -> Result<Self, CliError> {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("sqlite") => Ok(Self::Sqlite),
            Some("postgres" | "postgresql") => Ok(Self::Postgres),
            Some(scheme) if !scheme.is_empty() && !scheme.contains(['/', ' ']) => Err(CliError::Usage(format!(
                "unsupported database URL scheme `{scheme}:` (expected sqlite: or postgres:)"
            ))),
            _ => Err(CliError::Usage(
                "the database URL has no scheme (expected sqlite:path/to/keys.db or postgres://user@host/db)"
                    .to_owned(),
            )),
        }
    }
}

/// Connects to the database at `url` (creating a missing SQLite file). Does
/// not migrate.
pub(crate) async fn open(url: Option<&str>) -> Result<Arc<dyn Store>, CliError> {
    let url = url.ok_or_else(|| CliError::Usage("no database: pass --database-url or set DATABASE_URL".to_owned()))?;
    let store: Arc<dyn Store> = match Backend::of(url)? {
        Backend::Sqlite => Arc::new(SqliteStore::connect(url).await.map_err(CliError::Connect)?),
        Backend::Postgres => Arc::new(PgStore::connect(url).await.map_err(CliError::Connect)?),
    };
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_the_backend() {
        assert_eq!(Backend::of("sqlite:keys.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of("sqlite://var/keys.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of("postgres://u@h/db").unwrap(), Backend::Postgres);
        assert_eq!(Backend::of("PostgreSQL://u@h/db").unwrap(), Backend::Postgres);
    }

    #[test]
    fn other_schemes_are_usage_errors_that_hide_the_url() {
        let error = Backend::of("mysql://root:hunter2@h/db").unwrap_err();
        assert!(matches!(error, CliError::Usage(_)));
        let text = error.to_string();
        assert!(text.contains("mysql:") && !text.contains("hunter2"), "{text}");
        assert!(matches!(Backend::of("keys.db"), Err(CliError::Usage(_))));
    }
}
