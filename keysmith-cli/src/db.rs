//! Opening the store named by `--database-url`.

use std::sync::Arc;

use keysmith_core::{EngineBuilder, Error, Store};
use keysmith_redis::RedisChangeFeed;

use crate::error::CliError;

/// Connects to the database at `url` (creating a missing SQLite file). Does
/// not migrate. A URL that names no supported database is a usage error
/// whose message names only its scheme: the rest may hold a password.
pub(crate) async fn open(url: Option<&str>) -> Result<Arc<dyn Store>, CliError> {
    let url = url.ok_or_else(|| CliError::Usage("no database: pass --database-url or set DATABASE_URL".to_owned()))?;
    keysmith_sqlx::connect(url).await.map_err(|error| match error {
        Error::InvalidInput { .. } => CliError::Usage(error.to_string()),
        error => CliError::Connect(error),
    })
}

/// `builder` with the change feed a command publishes on: Redis at
/// `redis_url` when given, else, on PostgreSQL, `NOTIFY` on the database at
/// `database_url` itself (a connection of its own, opened when a change is
/// first published); none on SQLite and MySQL/MariaDB.
pub(crate) async fn with_change_feed(
    builder: EngineBuilder, database_url: &str, redis_url: Option<&str>,
) -> Result<EngineBuilder, CliError> {
    if let Some(url) = redis_url {
        let feed = RedisChangeFeed::connect(url).await.map_err(|error| match error {
            Error::InvalidInput { .. } => CliError::Usage(format!("--redis-url: {error}")),
            // Exit 3, naming the feed rather than the database.
            error => CliError::Engine(error),
        })?;
        return Ok(builder.with_change_feed(feed));
    }
    match keysmith_sqlx::change_feed(database_url).map_err(CliError::Connect)? {
        Some(feed) => Ok(builder.with_change_feed(feed)),
        None => Ok(builder),
    }
}
