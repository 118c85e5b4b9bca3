//! `keysmith import`: keys from a SQL query or a CSV / JSON Lines file, in batches.

use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, NaiveDateTime, Utc};
use futures_util::TryStreamExt as _;
use futures_util::stream::BoxStream;
use keysmith_core::{ImportOptions, ImportRefusal, ImportReport, ImportRow, ImportRun, TenantEngine};
use sqlx::{Column as _, ConnectOptions as _, Row as _};

use crate::cli::ImportArgs;
use crate::error::CliError;
use crate::output::{Details, Printer};

/// The source columns, named after Keysmith's fields.
const COLUMNS: [&str; 10] = [
    "hash",
    "hint",
    "name",
    "owner_id",
    "created_at",
    "last_used_at",
    "revoked_at",
    "expires_at",
    "scopes",
    "external_id",
];

/// A source row's cells as text, by position in [`COLUMNS`], or why the
/// row cannot be read.
type Cells = Result<Vec<(usize, Option<String>)>, Unreadable>;

/// Why a source row cannot be read, and its source id when that much was read.
struct Unreadable {
    external_id: Option<String>,
    reason: String,
}

impl Unreadable {
    fn new(reason: impl Into<String>) -> Self {
        Self { external_id: None, reason: reason.into() }
    }
}
/// One source row: its line and cells.
type SourceRow = (u64, Cells);

/// Reads the source in batches and imports each, then prints the report.
pub(super) async fn run(args: ImportArgs, tenant: &TenantEngine, printer: Printer) -> Result<String, CliError> {
    let mut options = ImportOptions::new().with_scopes(args.scopes.iter().map(|s| s.trim()).filter(|s| !s.is_empty()));
    if let Some(environment) = args.environment {
        options = options.with_environment(environment);
    }
    if let Some(policy) = args.policy {
        options = options.with_policy(policy);
    }
    let run = ImportRun::new(options.dry_run(args.dry_run));
    let batch_size = args.batch_size as usize;
    let mut importer =
        Importer { tenant, run, batch_size, batch: Vec::new(), report: ImportReport::default(), read: 0, done: 0 };
    importer.report.dry_run = args.dry_run;
    let read = match (&args.from_url, &args.query, &args.from_file) {
        (Some(url), Some(query), None) => read_query(url, query, &mut importer).await,
        (None, None, Some(path)) => read_file(path, &mut importer).await,
        _ => return Err(CliError::Usage("import reads --from-url with --query, or --from-file".to_owned())),
    };
    let finished = match read {
        Ok(()) => importer.flush().await,
        Err(error) => Err(error),
    };
    let report = importer.report;
    if let Err(cause) = finished {
        if importer.done == 0 {
            return Err(cause);
        }
        // Batches were written before the failure: say which.
        let report = printer.render(&report, || human(&report))?;
        return Err(CliError::ImportStopped {
            report,
            not_read: importer.read - importer.done,
            cause: Box::new(cause),
        });
    }
    let text = printer.render(&report, || human(&report))?;
    if report.refused.is_empty() {
        Ok(text)
    } else {
        Err(CliError::RowsRefused { report: text, count: report.refused.len() })
    }
}

/// Collects rows into batches and imports each batch.
struct Importer<'a> {
    tenant: &'a TenantEngine,
    run: ImportRun,
    batch_size: usize,
    batch: Vec<SourceRow>,
    report: ImportReport,
    /// Rows read from the source.
    read: u64,
    /// Rows of the batches imported (or refused) so far.
    done: u64,
}

impl Importer<'_> {
    async fn push(&mut self, row: SourceRow) -> Result<(), CliError> {
        self.read += 1;
        self.batch.push(row);
        if self.batch.len() >= self.batch_size {
            self.flush().await?;
        }
        Ok(())
    }

    /// Imports the batch. A row the source could not give (a time that does
    /// not parse, a CSV record of the wrong length, a line that is not a JSON
    /// object of Keysmith's fields) refuses its batch like a row the engine
    /// refuses: the others are checked in a dry run, so every bad row is
    /// reported at once.
    async fn flush(&mut self) -> Result<(), CliError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let total = self.batch.len() as u64;
        let mut rows = Vec::with_capacity(self.batch.len());
        let mut unreadable = Vec::new();
        for (line, cells) in self.batch.drain(..) {
            match cells.and_then(|cells| import_row(line, cells)) {
                Ok(row) => rows.push(row),
                Err(Unreadable { external_id, reason }) => unreadable.push(ImportRefusal { line, external_id, reason }),
            }
        }
        if unreadable.is_empty() {
            let report = self.tenant.import_batch(&mut self.run, &rows).await?;
            self.report.merge(report);
            self.done += total;
            return Ok(());
        }
        let checked = self.tenant.import_batch(&mut self.run.checking(), &rows).await?;
        let mut refused = unreadable;
        refused.extend(checked.refused);
        refused.sort_by_key(|refusal| refusal.line);
        let not_written = total - refused.len() as u64;
        self.report.merge(ImportReport { refused, not_written, ..ImportReport::default() });
        self.done += total;
        Ok(())
    }
}

/// The row the cells describe; `Err` names the column that is not readable.
fn import_row(line: u64, cells: Vec<(usize, Option<String>)>) -> Result<ImportRow, Unreadable> {
    let mut row = ImportRow { line, ..ImportRow::default() };
    let external_id = cells
        .iter()
        .find(|(column, _)| COLUMNS[*column] == "external_id")
        .and_then(|(_, value)| value.clone())
        .filter(|value| !value.is_empty());
    for (column, value) in cells {
        let Some(value) = value.filter(|value| !value.is_empty()) else { continue };
        let time = |value: &str| {
            parse_time(value).ok_or_else(|| Unreadable {
                external_id: external_id.clone(),
                reason: format!("{}: not a time: {value:?}", COLUMNS[column]),
            })
        };
        match COLUMNS[column] {
            "hash" => row.hash = value,
            "hint" => row.hint = Some(value),
            "name" => row.name = Some(value),
            "owner_id" => row.owner_id = Some(value),
            "created_at" => row.created_at = Some(time(&value)?),
            "last_used_at" => row.last_used_at = Some(time(&value)?),
            "revoked_at" => row.revoked_at = Some(time(&value)?),
            "expires_at" => row.expires_at = Some(time(&value)?),
            "scopes" => {
                row.scopes =
                    Some(value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect());
            }
            _ => row.external_id = Some(value),
        }
    }
    if row.hash.is_empty() {
        return Err(Unreadable { external_id: row.external_id, reason: "hash: missing".to_owned() });
    }
    Ok(row)
}

/// RFC 3339, or a database's `2024-05-01 10:00:00[.123][+00]` (UTC when it has no offset).
fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Some(at.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(at) = DateTime::parse_from_str(value, format) {
            return Some(at.with_timezone(&Utc));
        }
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|at| at.and_utc())
}

/// The position of a column in [`COLUMNS`]; an unknown name is refused
/// with the known ones.
fn column_index(name: &str) -> Result<usize, String> {
    let name = name.trim();
    COLUMNS.iter().position(|column| column.eq_ignore_ascii_case(name)).ok_or_else(|| {
        format!(
            "unknown source column {name:?}: columns are named after Keysmith's fields ({}); rename with AS",
            COLUMNS.join(", ")
        )
    })
}

/// The position of each column of a header (or a query's first row) in
/// [`COLUMNS`]: read before anything is written, so a bad one is a usage error.
/// A column named twice is refused too: which of its values would count is a guess.
fn column_indexes<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Vec<usize>, CliError> {
    let indexes = names.into_iter().map(column_index).collect::<Result<Vec<_>, _>>().map_err(CliError::Usage)?;
    if let Some(twice) = named_twice(&indexes) {
        return Err(CliError::Usage(format!("the source names the column {:?} twice", COLUMNS[twice])));
    }
    if !indexes.contains(&0) {
        return Err(CliError::Usage("the source has no hash column (the SHA-256 of each raw key, hex)".to_owned()));
    }
    Ok(indexes)
}

/// The first column (by its position in [`COLUMNS`]) that `indexes` holds twice.
fn named_twice(indexes: &[usize]) -> Option<usize> {
    let mut seen = [false; COLUMNS.len()];
    indexes.iter().copied().find(|&i| std::mem::replace(&mut seen[i], true))
}

async fn read_file(path: &Path, importer: &mut Importer<'_>) -> Result<(), CliError> {
    let unreadable =
        |error: &dyn std::fmt::Display| CliError::Usage(format!("cannot read {}: {error}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|error| unreadable(&error))?;
    let named_jsonl = path.extension().is_some_and(|ext| ext == "jsonl" || ext == "ndjson");
    if named_jsonl || text.trim_start().starts_with('{') {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            importer.push((i as u64 + 1, json_cells(line))).await?;
        }
        return Ok(());
    }
    // Flexible, so that a record of the wrong length is one bad row, not the end of the file.
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
    let header = reader.headers().map_err(|error| unreadable(&error))?.clone();
    let indexes = column_indexes(header.iter())?;
    let mut record = csv::StringRecord::new();
    loop {
        let (line, cells) = match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let start = record.position().cloned().unwrap_or_else(csv::Position::new);
                let last = last_line(&text, &start, reader.position());
                let cells = if last > start.line() {
                    Err(Unreadable::new(format!(
                        "a quoted field runs across lines {}\u{2013}{last} (an unterminated quote?): \
                         those {} lines are this one refused row",
                        start.line(),
                        last - start.line() + 1,
                    )))
                } else if record.len() == indexes.len() {
                    Ok(indexes.iter().zip(record.iter()).map(|(&i, cell)| (i, Some(cell.to_owned()))).collect())
                } else {
                    Err(Unreadable::new(format!("{} field(s), the header names {}", record.len(), indexes.len())))
                };
                (start.line(), cells)
            }
            Err(error) => (
                error.position().map_or(0, csv::Position::line),
                Err(Unreadable::new(format!("not a CSV record: {error}"))),
            ),
        };
        importer.push((line, cells)).await?;
    }
    Ok(())
}

/// The last line of the record read from `start` to `end`. No field of a
/// row may hold a line break, so a record past its first line is a quote
/// left open, which would otherwise take every line after it as one field.
fn last_line(text: &str, start: &csv::Position, end: &csv::Position) -> u64 {
    let span = text.get(start.byte() as usize..end.byte() as usize).unwrap_or_default();
    let breaks = span.trim_end_matches(['\r', '\n']).matches('\n').count();
    start.line() + breaks as u64
}

/// One JSON Lines object as cells; `scopes` may be an array.
/// A line naming a field twice (at any depth, or as `hash` and `HASH`) is
/// refused: which value would count is a guess.
fn json_cells(line: &str) -> Cells {
    let object = keysmith_admin::parse_metadata(line)
        .map_err(|error| Unreadable::new(format!("not a JSON object naming each field once: {error}")))?;
    let external_id =
        object.iter().find(|(name, _)| name.trim().eq_ignore_ascii_case("external_id")).and_then(|(_, v)| json_text(v));
    let cells: Vec<_> = object
        .iter()
        .map(|(name, value)| {
            column_index(name)
                .map(|i| (i, json_text(value)))
                .map_err(|reason| Unreadable { external_id: external_id.clone(), reason })
        })
        .collect::<Result<_, _>>()?;
    let indexes: Vec<usize> = cells.iter().map(|(i, _)| *i).collect();
    if let Some(twice) = named_twice(&indexes) {
        return Err(Unreadable { external_id, reason: format!("names the field {:?} twice", COLUMNS[twice]) });
    }
    Ok(cells)
}

/// A JSON value as a cell's text: an array's items joined with commas.
fn json_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .map(|item| item.as_str().map_or_else(|| item.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Some(other.to_string()),
    }
}

/// Runs the query on the source database, in a read-only transaction, and
/// imports its rows as they come. An import only reads its source (which
/// may be Keysmith's own database): a query that writes fails.
async fn read_query(url: &str, query: &str, importer: &mut Importer<'_>) -> Result<(), CliError> {
    use std::str::FromStr as _;
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "postgres" | "postgresql" => {
            // Read-only for the session too, should a statement end the transaction.
            let options = sqlx::postgres::PgConnectOptions::from_str(url)
                .map_err(source_error)?
                .options([("default_transaction_read_only", "on")]);
            let mut connection = options.connect().await.map_err(source_error)?;
            read_only(&mut connection, &["START TRANSACTION READ ONLY"]).await?;
            let read = read_rows::<sqlx::Postgres>(&mut connection, query, importer).await;
            // Closing ends the transaction, which only read.
            let _ = sqlx::Connection::close(connection).await;
            read
        }
        "mysql" | "mariadb" => {
            let options = sqlx::mysql::MySqlConnectOptions::from_str(url).map_err(source_error)?;
            let mut connection = options.connect().await.map_err(source_error)?;
            read_only(&mut connection, &["SET SESSION TRANSACTION READ ONLY", "START TRANSACTION READ ONLY"]).await?;
            let read = read_rows::<sqlx::MySql>(&mut connection, query, importer).await;
            // Closing ends the transaction, which only read.
            let _ = sqlx::Connection::close(connection).await;
            read
        }
        "sqlite" => {
            // Opened read-only (so are the databases it attaches), and query_only besides.
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .map_err(source_error)?
                .read_only(true)
                .create_if_missing(false);
            let mut connection = options.connect().await.map_err(source_error)?;
            read_only(&mut connection, &["PRAGMA query_only = ON", "BEGIN"]).await?;
            let read = read_rows::<sqlx::Sqlite>(&mut connection, query, importer).await;
            // Closing ends the transaction, which only read.
            let _ = sqlx::Connection::close(connection).await;
            read
        }
        _ => Err(CliError::Usage(format!(
            "--from-url {scheme:?}: the source must be a postgres://, mysql:// or sqlite: URL"
        ))),
    }
}

/// Makes the connection's next statements read-only.
async fn read_only<C>(connection: &mut C, statements: &[&str]) -> Result<(), CliError>
where
    for<'c> &'c mut C: sqlx::Executor<'c>,
{
    for statement in statements {
        sqlx::raw_sql(statement).execute(&mut *connection).await.map_err(source_error)?;
    }
    Ok(())
}

/// The source database could not be opened; its message names no URL (it may hold a password).
fn source_error(error: sqlx::Error) -> CliError {
    CliError::Connect(keysmith_core::Error::store(format!("the source database: {error}")))
}

/// The query failed: an error the database answered is the query's (a
/// usage error, with the database's message); another is the database's.
fn query_error(error: sqlx::Error) -> CliError {
    let sqlx::Error::Database(error) = error else {
        return CliError::Engine(keysmith_core::Error::store(format!("reading the source database: {error}")));
    };
    let message = error.message();
    let lower = message.to_ascii_lowercase();
    let writes = error.code().as_deref() == Some("25006")
        || ["read-only", "readonly", "read only"].iter().any(|needle| lower.contains(needle));
    let hint =
        if writes { " (an import only reads its source: the query runs in a read-only transaction)" } else { "" };
    CliError::Usage(format!("the source query failed: {message}{hint}"))
}

async fn read_rows<DB: Source>(
    connection: &mut DB::Connection, query: &str, importer: &mut Importer<'_>,
) -> Result<(), CliError> {
    let mut rows = DB::fetch(connection, query);
    let mut indexes: Option<Vec<usize>> = None;
    let mut line = 0u64;
    while let Some(row) = rows.try_next().await.map_err(query_error)? {
        line += 1;
        if indexes.is_none() {
            indexes = Some(column_indexes(row.columns().iter().map(sqlx::Column::name))?);
        }
        let cells = indexes
            .iter()
            .flatten()
            .enumerate()
            .map(|(position, &i)| DB::cell(&row, position).map(|text| (i, text)))
            .collect::<Result<_, _>>()
            .map_err(Unreadable::new);
        importer.push((line, cells)).await?;
    }
    Ok(())
}

/// A database the import reads from: any query's rows, each cell as text.
/// sqlx's bounds for that are stated once, on the one implementation.
trait Source: sqlx::Database {
    /// The rows of `query`.
    fn fetch<'e>(connection: &'e mut Self::Connection, query: &'e str)
    -> BoxStream<'e, Result<Self::Row, sqlx::Error>>;

    /// A cell as text, whatever type the source column has (text, UUID, time, integer).
    fn cell(row: &Self::Row, position: usize) -> Result<Option<String>, String>;
}

impl<DB> Source for DB
where
    DB: sqlx::Database,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'r> Option<String>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> Option<DateTime<Utc>>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> Option<NaiveDateTime>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> Option<uuid::Uuid>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> Option<i64>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> Option<i32>: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
{
    fn fetch<'e>(
        connection: &'e mut Self::Connection, query: &'e str,
    ) -> BoxStream<'e, Result<Self::Row, sqlx::Error>> {
        sqlx::query(query).fetch(connection)
    }

    fn cell(row: &Self::Row, position: usize) -> Result<Option<String>, String> {
        if let Ok(text) = row.try_get::<Option<String>, _>(position) {
            return Ok(text);
        }
        if let Ok(at) = row.try_get::<Option<DateTime<Utc>>, _>(position) {
            return Ok(at.map(|at| at.to_rfc3339()));
        }
        if let Ok(at) = row.try_get::<Option<NaiveDateTime>, _>(position) {
            return Ok(at.map(|at| at.and_utc().to_rfc3339()));
        }
        if let Ok(id) = row.try_get::<Option<uuid::Uuid>, _>(position) {
            return Ok(id.map(|id| id.to_string()));
        }
        if let Ok(n) = row.try_get::<Option<i64>, _>(position) {
            return Ok(n.map(|n| n.to_string()));
        }
        if let Ok(n) = row.try_get::<Option<i32>, _>(position) {
            return Ok(n.map(|n| n.to_string()));
        }
        let name = row.columns().get(position).map_or("?", |column| column.name());
        Err(format!("{name}: a column type the import cannot read; cast it to text in the query"))
    }
}

fn human(report: &ImportReport) -> String {
    let mut text = Details::new()
        .line(if report.dry_run { "would import" } else { "imported" }, report.imported.to_string())
        .line("of which revoked or expired", report.imported_inactive.to_string())
        .line("skipped (imported before)", report.skipped.to_string())
        .line("refused", report.refused.len().to_string())
        .line("not written (batch of a bad row)", report.not_written.to_string())
        .render();
    for refusal in &report.refused {
        let _ = write!(text, "line {}", refusal.line);
        if let Some(id) = &refusal.external_id {
            let _ = write!(text, " ({id})");
        }
        let _ = writeln!(text, ": {}", refusal.reason);
    }
    if report.dry_run {
        text.push_str("Dry run: nothing was written.\n");
    }
    text
}
