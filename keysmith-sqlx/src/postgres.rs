//! PostgreSQL: [`PgStore`] and its migrations. A usage batch's records go
//! in with `COPY … FROM STDIN` in binary format (the server's fastest
//! path); a batch replayed after a write that committed fails it, and is
//! written again in a new transaction with one `UNNEST` of column arrays
//! that skips the records stored already.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use keysmith_core::{Result, UsageRecord};
use sqlx::Postgres;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::common::{connect_server, duration_to_micros, is_unique_violation, usage_write_error};
use crate::dialect::{Backend, Dialect, RowsAffected, Sql, sealed};
use crate::store::{Inserted, SqlStore};
use crate::usage::{COUNT_COLUMNS, Rollup, count_values, insert_rollups};

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

impl PgStore {
    /// Whether usage batches commit asynchronously (default: no, each
    /// commit waits until its WAL is on disk).
    ///
    /// Asynchronous commit (`synchronous_commit = off` for usage
    /// transactions only) trades durability for throughput: a usage
    /// transaction no longer waits for its fsync. **A crash of the database
    /// server (or of its machine) may then lose the usage batches of its last
    /// 3 × `wal_writer_delay` (600 ms by default) that the recorder already
    /// counted as written**: their raw records and their roll-ups, so quotas
    /// and the usage a tenant is shown read less than was served. A batch is
    /// lost whole or kept whole, never in part, and nothing else (keys,
    /// policies, credits) is written asynchronously. Turn it on only where
    /// losing up to that much usage on a server crash is acceptable.
    #[must_use]
    pub fn with_asynchronous_usage_commit(mut self, on: bool) -> Self {
        self.asynchronous_usage_commit = on;
        self
    }
}

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
    const EXTERNAL_ID: &'static str = "(metadata ->> 'external_id')";
    // See `SqlStore::with_asynchronous_usage_commit`.
    const BEGIN_USAGE_ASYNCHRONOUS: &'static str = "BEGIN; SET LOCAL synchronous_commit = off";
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

    async fn insert_usage(conn: &mut PgConnection, records: &[&UsageRecord], replay: bool) -> Result<Option<Inserted>> {
        if !replay {
            // A batch is new unless it is replayed: COPY takes it whole, or
            // fails on a taken id, which voids the transaction.
            let size = records.iter().map(|r| copy_row_len(r)).sum::<usize>();
            let mut data = Vec::with_capacity(COPY_HEADER.len() + size + 2);
            data.extend_from_slice(COPY_HEADER);
            for r in records {
                encode_copy_row(&mut data, r)?;
            }
            data.extend_from_slice(&(-1i16).to_be_bytes());
            return match copy_usage(conn, data).await {
                Ok(()) => Ok(Some(Inserted::All)),
                Err(error) if is_unique_violation(&error) => Ok(None),
                Err(error) => Err(usage_write_error(error)),
            };
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
        .map(|ids: Vec<Uuid>| Some(Inserted::Only(ids.into_iter().collect())))
        .map_err(usage_write_error)
    }

    async fn upsert_rollups(conn: &mut PgConnection, rollups: &[Rollup<'_>]) -> Result<()> {
        // One array per column: 20 bound values and one plan however many
        // rows (a multi-row `VALUES` binds 20 per row and plans each time).
        static SQL: OnceLock<String> = OnceLock::new();
        let sql = SQL.get_or_init(|| {
            let counts: Vec<String> = (6..6 + COUNT_COLUMNS.len()).map(|n| format!("${n}::int8[]")).collect();
            format!(
                "{}SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], {}){}",
                insert_rollups(),
                counts.join(", "),
                Self::USAGE_SQL.add_counts()
            )
        });
        let mut columns: [Vec<i64>; COUNT_COLUMNS.len()] = std::array::from_fn(|_| Vec::with_capacity(rollups.len()));
        for (_, _, counts) in rollups {
            for (column, value) in columns.iter_mut().zip(count_values(counts)) {
                column.push(value);
            }
        }
        let mut query = sqlx::query(sql)
            .bind(rollups.iter().map(|((key_id, _, _), _, _)| key_id.uuid()).collect::<Vec<_>>())
            .bind(rollups.iter().map(|((_, period, _), _, _)| period.as_str()).collect::<Vec<_>>())
            .bind(rollups.iter().map(|((_, _, start), _, _)| *start).collect::<Vec<_>>())
            .bind(rollups.iter().map(|(_, tenant, _)| tenant.app_id.as_str()).collect::<Vec<_>>())
            .bind(rollups.iter().map(|(_, tenant, _)| tenant.tenant_id.as_str()).collect::<Vec<_>>());
        for column in columns {
            query = query.bind(column);
        }
        query.execute(conn).await.map(drop).map_err(usage_write_error)
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// Writes `data` ([`COPY_HEADER`], rows of [`encode_copy_row`], the
/// trailer) with `COPY … FROM STDIN` in binary format.
async fn copy_usage(conn: &mut PgConnection, data: Vec<u8>) -> Result<(), sqlx::Error> {
    let mut copy = conn
        .copy_in_raw(
            "COPY keysmith_usage (id, key_id, app_id, tenant_id, endpoint, method, status, ip, user_agent, \
             latency_us, occurred_at) FROM STDIN WITH (FORMAT binary)",
        )
        .await?;
    if let Err(error) = copy.send(data).await {
        copy.abort("keysmith: sending the usage batch failed").await.ok();
        return Err(error);
    }
    copy.finish().await.map(drop)
}

/// The signature, flags and (empty) header extension of `COPY`'s binary
/// format.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One record as a row of `COPY`'s binary format: the server parses no
/// text (uuids, times and addresses go as their binary values), which
/// makes it cheaper than its own `COPY` from a CSV file.
fn encode_copy_row(out: &mut Vec<u8>, r: &UsageRecord) -> Result<()> {
    let latency = duration_to_micros("latency", r.latency)?;
    out.extend_from_slice(&11i16.to_be_bytes());
    field(out, r.id.uuid().as_bytes());
    field(out, r.key_id.uuid().as_bytes());
    for text in [r.tenant.app_id.as_str(), r.tenant.tenant_id.as_str(), r.endpoint.as_str(), r.method.as_str()] {
        text_field(out, text);
    }
    field(out, &i32::from(r.status).to_be_bytes());
    match r.ip {
        // inet: family (PostgreSQL's own numbers), prefix bits, not a
        // cidr, address length, address.
        Some(IpAddr::V4(ip)) => {
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&[2, 32, 0, 4]);
            out.extend_from_slice(&ip.octets());
        }
        Some(IpAddr::V6(ip)) => {
            out.extend_from_slice(&20i32.to_be_bytes());
            out.extend_from_slice(&[3, 128, 0, 16]);
            out.extend_from_slice(&ip.octets());
        }
        None => null_field(out),
    }
    match &r.user_agent {
        Some(agent) => text_field(out, agent),
        None => null_field(out),
    }
    field(out, &latency.to_be_bytes());
    field(out, &(r.timestamp.timestamp_micros() - PG_EPOCH_MICROS).to_be_bytes());
    Ok(())
}

/// The length of [`encode_copy_row`]'s row of `r` (give or take the NULs
/// a text loses), so that a batch's buffer is allocated once.
fn copy_row_len(r: &UsageRecord) -> usize {
    // The field count, then each field's length and its bytes: two uuids,
    // status, latency and time, the address, then the texts.
    let ip = match r.ip {
        Some(IpAddr::V4(_)) => 8,
        Some(IpAddr::V6(_)) => 20,
        None => 0,
    };
    let texts = [r.tenant.app_id.as_str(), r.tenant.tenant_id.as_str(), r.endpoint.as_str(), r.method.as_str()]
        .iter()
        .map(|text| text.len())
        .sum::<usize>()
        + r.user_agent.as_ref().map_or(0, |agent| agent.len());
    2 + 11 * 4 + 16 + 16 + 4 + 8 + 8 + ip + texts
}

/// A field of `bytes`, after its length.
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&i32::try_from(bytes.len()).unwrap_or(i32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A text field: its UTF-8 bytes without NUL (which a text cannot hold).
fn text_field(out: &mut Vec<u8>, text: &str) {
    if text.as_bytes().contains(&0) {
        field(out, text.replace('\0', "").as_bytes());
    } else {
        field(out, text.as_bytes());
    }
}

/// A NULL field.
fn null_field(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}
