//! External services for tests (DESIGN §13): where they are, whether a
//! missing one skips or fails, and a throwaway PostgreSQL database per test.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};

/// The variable holding the PostgreSQL URL of the test server.
pub const POSTGRES_URL_VAR: &str = "KEYSMITH_TEST_POSTGRES_URL";

/// When `1`, a missing service fails the test instead of skipping it.
pub const REQUIRE_SERVICES_VAR: &str = "KEYSMITH_TEST_REQUIRE_SERVICES";

/// The URL in `var`, or `None` after printing one `skipping:` line.
///
/// # Panics
/// When the variable is unset and `KEYSMITH_TEST_REQUIRE_SERVICES=1`.
#[must_use]
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(REQUIRE_SERVICES_VAR).is_ok_and(|v| v == "1") => {
            panic!("{var} is not set and {REQUIRE_SERVICES_VAR}=1")
        }
        _ => {
            println!("skipping: {var} not set");
            None
        }
    }
}

/// A fresh database on the test server, dropped (with its connections) when
/// this value is dropped, even by a failing test.
#[derive(Debug)]
pub struct PgTestDb {
    admin: PgConnectOptions,
    name: String,
    url: String,
}

impl PgTestDb {
    /// Creates `keysmith_test_<random>` on the server of
    /// `KEYSMITH_TEST_POSTGRES_URL`; `None` (after one line) if it is unset.
    ///
    /// # Panics
    /// If the server cannot be reached or the database cannot be created.
    pub async fn create() -> Option<Self> {
        let admin_url = service_url(POSTGRES_URL_VAR)?;
        let admin = PgConnectOptions::from_str(&admin_url).expect("KEYSMITH_TEST_POSTGRES_URL is not a PostgreSQL URL");
        let name = format!("keysmith_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = admin.connect().await.expect("cannot connect to the test PostgreSQL server");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("CREATE DATABASE failed");
        conn.close().await.ok();
        let url = with_database(&admin_url, &name);
        Some(Self { admin, name, url })
    }

    /// The database's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A URL for the database.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A connection to the server's admin database (the one of the URL),
    /// for what a test does from outside the store.
    ///
    /// # Panics
    /// If the server cannot be reached.
    pub async fn admin(&self) -> PgConnection {
        self.admin.connect().await.expect("cannot connect to the test PostgreSQL server")
    }

    /// A small pool on the database, for a test's own checks.
    ///
    /// # Panics
    /// If the database cannot be reached.
    pub async fn pool(&self) -> sqlx::PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&self.url)
            .await
            .expect("cannot connect to the test database")
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime (even while unwinding): use a thread
        // with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let mut conn = admin.connect().await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
                conn.close().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

/// `url` with its database (the path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(with_database("postgres://u@h:5432/test", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/test?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
    }
}

/// A directory under the system's temporary one, removed when dropped.
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// Creates `keysmith-<label>-<random>`.
    ///
    /// # Panics
    /// If the directory cannot be created.
    #[must_use]
    pub fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!("keysmith-{label}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&path).expect("cannot create a temporary directory");
        Self(path)
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
