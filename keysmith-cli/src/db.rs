//! Opening the store named by `--database-url`.

use std::sync::Arc;

use keysmith_core::{Error, Store};

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
