//! PostgreSQL: [`PgStore`] and its migrations. A usage batch's records go
//! in with `COPY … FROM STDIN` (the server's fastest path, in a savepoint);
//! a batch replayed after a write that committed falls back to one `UNNEST`
//! of column arrays that skips the records stored already.

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use keysmith_core::{Result, UsageRecord};
use sqlx::Postgres;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::common::{connect_server, duration_to_micros, is_unique_violation, store_error, usage_write_error};
use crate::dialect::{Backend, Dialect, RowsAffected, Sql, sealed};
use crate::store::SqlStore;

/// The PostgreSQL schema, embedded from `migrations/postgres`
/// ([migrations](crate#migrations)).
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// A store in PostgreSQL (12 or later), at a `postgres://…` URL.
///
/// `connect` opens a pool of up to 10 connections that waits at most 5
/// seconds for one. A lost connection surfaces as
/// [`Error::Store`](keysmith_core::Error::Store) (validation fails, it never
/// passes); the pool opens new connections when the server is back.
pub type PgStore = SqlStore<Postgres>;

impl sealed::Sealed for Postgres {}

impl Backend for Postgres {
    async fn open(url: &str) -> Result<sqlx::Pool<Self>> {
        connect_server(url, "PostgreSQL").await
    }
}

impl Dialect for Postgres {
    type Time = DateTime<Utc>;
    type List = Vec<String>;
    type Scopes = Vec<String>;

    const SLOT: usize = 0;
    // Conflicts only with deleting the key or changing its id.
    const SHARE_ROWS: &'static str = " FOR KEY SHARE";

    const SCOPES: &'static str =
        "ARRAY(SELECT s.scope FROM keysmith_key_scopes s WHERE s.key_id = k.id ORDER BY s.position)";
    const IP_READ: &'static str = "host(ip)";
    const ORDER_BY_NAME: &'static str = "name COLLATE \"C\"";
    const BIGINT: &'static str = "BIGINT";
    // 65 535 bound values per statement.
    const ROWS_PER_INSERT: usize = 2000;

    fn placeholders(sql: &str) -> Cow<'_, str> {
        let mut numbered = String::with_capacity(sql.len() + 16);
        for (n, part) in sql.split('?').enumerate() {
            if n > 0 {
                let _ = write!(numbered, "${n}");
            }
            numbered.push_str(part);
        }
        Cow::Owned(numbered)
    }

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn push_age_micros(qb: &mut Sql<'_, Self>, now: DateTime<Utc>) {
        // Exact numeric seconds, so a huge maximum age never overflows a
        // timestamp (it is simply never reached).
        qb.push("(EXTRACT(EPOCH FROM CAST(").push_arg(now);
        qb.push(" AS timestamptz)) - EXTRACT(EPOCH FROM k.created_at)) * 1000000");
    }

    async fn insert_usage(conn: &mut PgConnection, records: &[&UsageRecord]) -> Result<Vec<Uuid>> {
        // A batch is new unless it is replayed: COPY takes it whole. COPY
        // cannot skip a taken id, so a replay fails the savepoint, which is
        // rolled back, and the batch goes in again without the records stored.
        let mut data = Vec::with_capacity(records.len() * 192);
        for r in records {
            encode_copy_row(&mut data, r)?;
        }
        sqlx::query("SAVEPOINT keysmith_copy").execute(&mut *conn).await.map_err(store_error)?;
        match copy_usage(conn, data).await {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT keysmith_copy").execute(&mut *conn).await.map_err(store_error)?;
                return Ok(records.iter().map(|r| r.id.uuid()).collect());
            }
            Err(error) => {
                sqlx::query("ROLLBACK TO SAVEPOINT keysmith_copy").execute(&mut *conn).await.map_err(store_error)?;
                if !is_unique_violation(&error) {
                    return Err(usage_write_error(error));
                }
            }
        }
        // One array per column: 11 bound values however long the batch.
        let mut latencies = Vec::with_capacity(records.len());
        for r in records {
            latencies.push(duration_to_micros("latency", r.latency)?);
        }
        let column = |f: fn(&UsageRecord) -> &str| records.iter().map(|r| f(r)).collect::<Vec<_>>();
        sqlx::query_scalar(
            "INSERT INTO keysmith_usage (id, key_id, app_id, tenant_id, endpoint, method, status, ip, user_agent, \
                 latency_us, occurred_at) \
             SELECT id, key_id, app_id, tenant_id, endpoint, method, status, CAST(ip AS inet), user_agent, \
                 latency_us, occurred_at \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], \
                 $8::text[], $9::text[], $10::int8[], $11::timestamptz[]) \
                 AS t(id, key_id, app_id, tenant_id, endpoint, method, status, ip, user_agent, latency_us, occurred_at) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(records.iter().map(|r| r.id.uuid()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.key_id.uuid()).collect::<Vec<_>>())
        .bind(column(|r| &r.tenant.app_id))
        .bind(column(|r| &r.tenant.tenant_id))
        .bind(column(|r| &r.endpoint))
        .bind(column(|r| &r.method))
        .bind(records.iter().map(|r| i32::from(r.status)).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.ip.map(|ip| ip.to_string())).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.user_agent.as_deref()).collect::<Vec<_>>())
        .bind(latencies)
        .bind(records.iter().map(|r| r.timestamp).collect::<Vec<_>>())
        .fetch_all(conn)
        .await
        .map_err(usage_write_error)
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// Writes the lines `data` ([`encode_copy_row`]) with `COPY … FROM STDIN`
/// in text format.
async fn copy_usage(conn: &mut PgConnection, data: Vec<u8>) -> Result<(), sqlx::Error> {
    let mut copy = conn
        .copy_in_raw(
            "COPY keysmith_usage (id, key_id, app_id, tenant_id, endpoint, method, status, ip, user_agent, \
             latency_us, occurred_at) FROM STDIN",
        )
        .await?;
    if let Err(error) = copy.send(data).await {
        copy.abort("keysmith: sending the usage batch failed").await.ok();
        return Err(error);
    }
    copy.finish().await.map(drop)
}

/// One record as a line of `COPY`'s text format.
fn encode_copy_row(out: &mut Vec<u8>, r: &UsageRecord) -> Result<()> {
    use std::io::Write as _;

    let latency = duration_to_micros("latency", r.latency)?;
    let io = |e: std::io::Error| keysmith_core::Error::store(e);
    write!(out, "{}\t{}\t", r.id.uuid(), r.key_id.uuid()).map_err(io)?;
    for text in [r.tenant.app_id.as_str(), r.tenant.tenant_id.as_str(), r.endpoint.as_str(), r.method.as_str()] {
        escape_copy(out, text);
        out.push(b'\t');
    }
    write!(out, "{}\t", r.status).map_err(io)?;
    match r.ip {
        Some(ip) => write!(out, "{ip}\t").map_err(io)?,
        None => out.extend_from_slice(b"\\N\t"),
    }
    match &r.user_agent {
        Some(agent) => escape_copy(out, agent),
        None => out.extend_from_slice(b"\\N"),
    }
    writeln!(out, "\t{latency}\t{}", r.timestamp.format("%Y-%m-%d %H:%M:%S%.6f+00")).map_err(io)?;
    Ok(())
}

/// `text` escaped for `COPY`'s text format: backslash, tab, newline and
/// carriage return as backslash sequences (a NUL cannot be stored in text).
fn escape_copy(out: &mut Vec<u8>, text: &str) {
    for byte in text.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => {}
            _ => out.push(byte),
        }
    }
}
