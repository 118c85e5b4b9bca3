//! [`connect`]: the store a database URL names.

use std::sync::Arc;

use keysmith_core::{Error, Result, Store};

/// The backends, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
    MySql,
}

impl Backend {
    /// The backend of `url`, from its scheme (any case). The error names
    /// only the scheme: the rest of the URL may hold a password.
    fn of(url: &str) -> Result<Self> {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase());
        let expected = "expected postgres://, sqlite: or mysql://";
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => Ok(Self::Postgres),
            Some("sqlite") => Ok(Self::Sqlite),
            Some("mysql" | "mariadb") => Ok(Self::MySql),
            Some(scheme) if !scheme.is_empty() && !scheme.contains(['/', ' ', '@']) => {
                Err(invalid(format!("unsupported scheme `{scheme}:` ({expected})")))
            }
            _ => Err(invalid(format!("no scheme ({expected})"))),
        }
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidInput { field: "database URL", reason }
}

/// Connects to the store `url` names: `postgres://…` or `postgresql://…`
/// ([`PgStore`](crate::PgStore)), `sqlite:path` or `sqlite::memory:`
/// ([`SqliteStore`](crate::SqliteStore), creating a missing file), `mysql://…`
/// or `mariadb://…` ([`MySqlStore`](crate::MySqlStore)). Does not migrate.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// # #[cfg(feature = "sqlite")] {
/// let store = keysmith_sqlx::connect("sqlite::memory:").await?;
/// store.migrate().await?;
/// # }
/// let unknown = keysmith_sqlx::connect("redis://127.0.0.1").await.unwrap_err();
/// assert!(unknown.to_string().contains("expected postgres://, sqlite: or mysql://"));
/// # Ok::<(), keysmith_core::Error>(())
/// # }).unwrap();
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] for a URL without a scheme, another scheme, or a
/// backend whose feature is off; [`Error::Store`] when the database cannot
/// be reached or opened.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    let off = |feature: &str| invalid(format!("keysmith-sqlx is built without its `{feature}` feature"));
    match Backend::of(url)? {
        #[cfg(feature = "postgres")]
        Backend::Postgres => Ok(Arc::new(crate::PgStore::connect(url).await?)),
        #[cfg(feature = "sqlite")]
        Backend::Sqlite => Ok(Arc::new(crate::SqliteStore::connect(url).await?)),
        #[cfg(feature = "mysql")]
        Backend::MySql => Ok(Arc::new(crate::MySqlStore::connect(url).await?)),
        #[allow(unreachable_patterns)]
        backend => Err(off(match backend {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
            Backend::MySql => "mysql",
        })),
    }
}

/// The change feed of the database `url` names, when it has one:
/// PostgreSQL's `LISTEN`/`NOTIFY` ([`PgChangeFeed`](crate::PgChangeFeed), on
/// the default channel, over a connection of its own opened when first
/// used); `None` for SQLite and MySQL/MariaDB, which have no feed of their
/// own (use Redis's).
///
/// # Errors
/// As [`connect`]: a URL that names no supported database, or one sqlx
/// cannot read.
#[cfg(feature = "postgres")]
pub fn change_feed(url: &str) -> Result<Option<crate::PgChangeFeed>> {
    match Backend::of(url)? {
        Backend::Postgres => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy(url)
                .map_err(crate::common::store_error)?;
            Ok(Some(crate::PgChangeFeed::new(pool)))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_pick_the_backend() {
        assert_eq!(Backend::of("postgres://u@h/db").unwrap(), Backend::Postgres);
        assert_eq!(Backend::of("PostgreSQL://u@h/db").unwrap(), Backend::Postgres);
        assert_eq!(Backend::of("sqlite:keys.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of("sqlite://var/keys.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of("mysql://root@h:3306/db").unwrap(), Backend::MySql);
        assert_eq!(Backend::of("mariadb://root@h/db").unwrap(), Backend::MySql);
    }

    #[test]
    fn other_schemes_name_the_three_and_hide_the_url() {
        let error = Backend::of("redis://u:hunter2@h/0").unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, Error::InvalidInput { .. }));
        assert!(text.contains("redis:") && !text.contains("hunter2"), "{text}");
        assert!(text.contains("postgres://") && text.contains("sqlite:") && text.contains("mysql://"), "{text}");
        assert!(Backend::of("keys.db").unwrap_err().to_string().contains("no scheme"));
        assert!(Backend::of("/var/lib/keys.db").unwrap_err().to_string().contains("no scheme"));
    }
}
