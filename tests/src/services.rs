//! External services for tests: where they are, whether a
//! missing one skips or fails, and a throwaway database per test on the
//! PostgreSQL or MySQL server.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::{ConnectOptions, Connection, Database, Executor, MySql, Pool, Postgres};

/// The variable holding the PostgreSQL URL of the test server.
pub const POSTGRES_URL_VAR: &str = "KEYSMITH_TEST_POSTGRES_URL";

/// The variable holding the MySQL (or MariaDB) URL of the test server.
pub const MYSQL_URL_VAR: &str = "KEYSMITH_TEST_MYSQL_URL";

/// When `1`, a missing service fails the test instead of skipping it.
pub const REQUIRE_SERVICES_VAR: &str = "KEYSMITH_TEST_REQUIRE_SERVICES";

/// The URL in `var`, or `None` after one `skipping:` line on stderr
/// (once per test binary and variable).
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
            announce_skip(var);
            None
        }
    }
}

/// Says once per test binary that the tests needing `var` are skipped.
/// Written to stderr itself, not through `println!`, which the test
/// harness captures from a passing test: the line shows in a plain
/// `cargo test`, where those tests still count as passed.
fn announce_skip(var: &str) {
    use std::io::Write as _;
    static ANNOUNCED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut announced = ANNOUNCED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if announced.iter().any(|seen| seen == var) {
        return;
    }
    announced.push(var.to_owned());
    let binary = std::env::args().next().unwrap_or_default();
    // `store_mysql-0123456789abcdef` is `store_mysql`.
    let binary = std::path::Path::new(&binary).file_name().map(|name| {
        let name = name.to_string_lossy();
        match name.rsplit_once('-') {
            Some((test, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => test.to_owned(),
            _ => name.into_owned(),
        }
    });
    let line = format!(
        "skipping: {var} not set, so the tests of {} that need it pass without running \
         ({REQUIRE_SERVICES_VAR}=1 makes this a failure)\n",
        binary.as_deref().unwrap_or("this binary")
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// A database server that tests make throwaway databases on.
pub trait TestServer: Database {
    /// The variable holding the server's URL.
    const URL_VAR: &'static str;
    /// The statement that drops database `name` even while it has connections.
    fn drop_database(name: &str) -> String;
    /// Runs `sql` (no parameters) on `conn`.
    fn execute<'c>(conn: &'c mut Self::Connection, sql: &'c str) -> Execution<'c>;
}

/// A statement running on a connection.
pub type Execution<'c> = Pin<Box<dyn Future<Output = sqlx::Result<()>> + Send + 'c>>;

fn execute<'c, DB: Database>(conn: &'c mut DB::Connection, sql: &'c str) -> Execution<'c>
where
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
{
    Box::pin(async move { conn.execute(sql).await.map(drop) })
}

impl TestServer for Postgres {
    const URL_VAR: &'static str = POSTGRES_URL_VAR;

    fn drop_database(name: &str) -> String {
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    }

    fn execute<'c>(conn: &'c mut Self::Connection, sql: &'c str) -> Execution<'c> {
        execute::<Self>(conn, sql)
    }
}

impl TestServer for MySql {
    const URL_VAR: &'static str = MYSQL_URL_VAR;

    fn drop_database(name: &str) -> String {
        format!("DROP DATABASE IF EXISTS {name}")
    }

    fn execute<'c>(conn: &'c mut Self::Connection, sql: &'c str) -> Execution<'c> {
        execute::<Self>(conn, sql)
    }
}

/// A fresh database on the test server, dropped (with its connections) when
/// this value is dropped, even by a failing test.
#[derive(Debug)]
pub struct TestDb<DB: TestServer> {
    admin: <DB::Connection as Connection>::Options,
    name: String,
    url: String,
}

/// A fresh database on the PostgreSQL server of `KEYSMITH_TEST_POSTGRES_URL`.
pub type PgTestDb = TestDb<Postgres>;

/// A fresh database on the MySQL server of `KEYSMITH_TEST_MYSQL_URL`.
pub type MySqlTestDb = TestDb<MySql>;

impl<DB: TestServer> TestDb<DB> {
    /// Creates `keysmith_test_<random>` on the server of the server's
    /// variable; `None` (after one line) if it is unset.
    ///
    /// # Panics
    /// If the server cannot be reached or the database cannot be created.
    pub async fn create() -> Option<Self> {
        let admin_url = service_url(DB::URL_VAR)?;
        let admin = <DB::Connection as Connection>::Options::from_str(&admin_url)
            .unwrap_or_else(|e| panic!("{} is not a {} URL: {e}", DB::URL_VAR, DB::NAME));
        let name = format!("keysmith_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = admin.connect().await.expect("cannot connect to the test server");
        DB::execute(&mut conn, &format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE failed");
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
    pub async fn admin(&self) -> DB::Connection {
        self.admin.connect().await.expect("cannot connect to the test server")
    }

    /// A small pool on the database, for a test's own checks.
    ///
    /// # Panics
    /// If the database cannot be reached.
    pub async fn pool(&self) -> Pool<DB> {
        PoolOptions::<DB>::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&self.url)
            .await
            .expect("cannot connect to the test database")
    }
}

impl PgTestDb {
    /// Makes this database unreachable (`false`: new connections refused,
    /// open ones ended) or reachable again, while the server stays up for
    /// every other test: an outage of one database.
    ///
    /// # Panics
    /// If the server cannot be reached.
    pub async fn set_reachable(&self, reachable: bool) {
        let mut admin = self.admin().await;
        let allow = format!("ALTER DATABASE {} ALLOW_CONNECTIONS {reachable}", self.name);
        admin.execute(allow.as_str()).await.expect("ALTER DATABASE failed");
        if !reachable {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&self.name)
            .execute(&mut admin)
            .await
            .expect("pg_terminate_backend failed");
        }
        admin.close().await.ok();
    }
}

impl<DB: TestServer> Drop for TestDb<DB> {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let sql = DB::drop_database(&self.name);
        // Drop may run inside a runtime (even while unwinding): use a thread
        // with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let mut conn = admin.connect().await?;
                DB::execute(&mut conn, &sql).await?;
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
