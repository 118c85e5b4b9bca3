//! Usage-recording throughput and memory per key; `scripts/bench-usage`
//! runs every mode.
//!
//! - `bench-usage record <sqlite|postgres|mysql> [records] [batch] [writers]`:
//!   queues `records` usage records (default 200 000) through the engine's
//!   background recorder as fast as one task can, `writers` batches written
//!   at once (default: `UsageConfig`'s), then waits for the last
//!   write (`engine.shutdown()`), and prints records/s written and how many
//!   were dropped. PostgreSQL needs `KEYSMITH_TEST_POSTGRES_URL`, MySQL
//!   `KEYSMITH_TEST_MYSQL_URL`; `BENCH_ASYNCHRONOUS_USAGE_COMMIT=1` makes
//!   PostgreSQL commit usage asynchronously
//!   (`PgStore::with_asynchronous_usage_commit`). On PostgreSQL it then measures, in the same
//!   run, the server's own `COPY` of the same number of rows from a CSV
//!   file into a table of the same shape and indexes (`LIKE keysmith_usage
//!   INCLUDING ALL`), and prints the ratio, and the CPU time each side
//!   took: this process's (records made, queued, batched, encoded) and
//!   PostgreSQL's processes' (read from `/proc`, in 1/100 s ticks), for
//!   Keysmith's writes and for the `COPY`. Each phase starts after a
//!   `CHECKPOINT`, so neither pays for the other's dirty pages.
//! - `bench-usage memory-store [keys]`: RSS growth of a `MemoryStore`
//!   holding `keys` keys (default 1 000 000) created through the engine.
//! - `bench-usage limiter [keys]`: RSS growth of the GCRA rate limiter
//!   tracking `keys` keys.
//!
//! RSS is read from `/proc/self/status`, so it counts what the allocator
//! holds, not only live bytes: treat it as an upper bound.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use keysmith_benches::load::{cpu_ticks, rss_kib};
use keysmith_benches::{Backend, BenchStore};
use keysmith_core::limit::{GcraRateLimiter, RateLimiter};
use keysmith_core::usage::UsageConfig;
use keysmith_core::{Engine, KeyId, MemoryStore, NewKey, RateLimit, UsageId, UsageRecord};

fn usage() -> ! {
    eprintln!(
        "usage: bench-usage record <sqlite|postgres|mysql> [records] [batch] [writers] | memory-store [keys] | \
         limiter [keys]"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(value: Option<String>, default: T) -> T {
    value.map_or(default, |v| v.parse().unwrap_or_else(|_| usage()))
}

#[allow(clippy::cast_precision_loss)]
fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("record") => {
            let backend = match args.next().as_deref() {
                Some("sqlite") => Backend::Sqlite,
                Some("postgres") => Backend::Postgres,
                Some("mysql") => Backend::MySql,
                _ => usage(),
            };
            let records = arg(args.next(), 200_000);
            let batch = arg(args.next(), 500);
            let writers = arg(args.next(), UsageConfig::default().concurrent_writes);
            record(backend, records, batch, writers).await;
        }
        Some("memory-store") => memory_store(arg(args.next(), 1_000_000)).await,
        Some("limiter") => limiter(arg(args.next(), 1_000_000)).await,
        _ => usage(),
    }
}

async fn record(backend: Backend, records: usize, batch: usize, writers: usize) {
    let Some(store) = BenchStore::open(backend).await else {
        println!("record {}: skipped (its server URL is not set)", backend.name());
        return;
    };
    let config = UsageConfig {
        queue_capacity: records,
        batch_size: batch,
        concurrent_writes: writers,
        ..UsageConfig::default()
    };
    // The recorder writes to the store under the cache, as in production.
    let engine = store.builder().with_usage_config(config).build().expect("engine");
    let acme = engine.tenant("bench", "acme");
    let mut keys = Vec::new();
    for i in 0..100 {
        keys.push(acme.create_key(NewKey::new(format!("k{i}"))).await.expect("create key").key);
    }
    if matches!(backend, Backend::Postgres)
        && let Some(url) = &store.server_url
    {
        checkpoint(url).await;
    }
    let cpu_before = (cpu_ticks(None), cpu_ticks(Some("postgres")));
    let began = Instant::now();
    let now = chrono::Utc::now();
    for n in 0..records {
        let key = &keys[n % keys.len()];
        engine.record_usage(UsageRecord {
            id: UsageId::new(),
            key_id: key.id,
            tenant: key.tenant.clone().into(),
            endpoint: "/v1/invoices".into(),
            method: "GET".into(),
            status: if n % 20 == 0 { 500 } else { 200 },
            ip: Some([203, 0, 113, 9].into()),
            user_agent: Some("bench/1.0".into()),
            latency: Duration::from_millis(5),
            timestamp: now,
        });
    }
    let queued = began.elapsed();
    engine.shutdown().await;
    let elapsed = began.elapsed();
    let cpu = (cpu_ticks(None) - cpu_before.0, cpu_ticks(Some("postgres")).saturating_sub(cpu_before.1));
    let stats = engine.usage_stats();
    let ours = per_second(records, elapsed);
    println!(
        "record {}: {records} records, batches of {batch}, {writers} at once: queued in {:.3}s ({:.0}/s), written in {:.2}s: \
         {:.0} records/s; written {}, dropped {}, failed {}",
        backend.name(),
        queued.as_secs_f64(),
        per_second(records, queued),
        elapsed.as_secs_f64(),
        ours,
        stats.written,
        stats.dropped,
        stats.failed,
    );
    if matches!(backend, Backend::Postgres) {
        println!(
            "cpu: keysmith {:.2}s in this process (records made, queued, batched, encoded), {:.2}s in PostgreSQL's \
             processes",
            seconds(cpu.0),
            seconds(cpu.1)
        );
    }
    if matches!(backend, Backend::Postgres)
        && let Some(url) = &store.server_url
    {
        let (copy, copy_fk, copy_cpu) = copy_baseline(url, &keys, records).await;
        println!("cpu: COPY from the CSV file {:.2}s in PostgreSQL's processes", seconds(copy_cpu));
        println!(
            "copy postgres: {records} rows from a CSV file: {copy:.0} rows/s into a table of the same shape and \
             indexes, {copy_fk:.0} rows/s with its foreign key to keysmith_keys too; keysmith (roll-ups \
             included) / COPY = {:.2}, / COPY with the foreign key = {:.2}",
            ours / copy,
            ours / copy_fk
        );
    }
    drop(engine);
    drop(store);
}

/// Rows/s of PostgreSQL's own `COPY … FROM 'file' (FORMAT csv)` of `rows`
/// usage rows of `keys` into a table shaped and indexed as `keysmith_usage`,
/// without and with its foreign key to `keysmith_keys` (checked per row).
/// The CPU time of the first `COPY` (the one without the foreign key) in
/// PostgreSQL's processes comes third.
async fn copy_baseline(url: &str, keys: &[keysmith_core::Key], rows: usize) -> (f64, f64, u64) {
    use std::io::Write as _;

    let pool = sqlx::PgPool::connect(url).await.expect("connect to PostgreSQL");
    sqlx::query("CREATE TABLE bench_copy (LIKE keysmith_usage INCLUDING ALL)")
        .execute(&pool)
        .await
        .expect("create the COPY table");
    sqlx::query(
        "CREATE TABLE bench_copy_fk (LIKE keysmith_usage INCLUDING ALL, \
         FOREIGN KEY (key_id) REFERENCES keysmith_keys (id) ON DELETE CASCADE)",
    )
    .execute(&pool)
    .await
    .expect("create the COPY table with the foreign key");
    let path = std::env::temp_dir().join(format!("keysmith-bench-copy-{}.csv", std::process::id()));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create the CSV file"));
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S%.6f+00");
    for n in 0..rows {
        let key = &keys[n % keys.len()];
        let status = if n % 20 == 0 { 500 } else { 200 };
        writeln!(
            file,
            "{},{},{},{},/v1/invoices,GET,{status},203.0.113.9,bench/1.0,5000,{now}",
            UsageId::new().uuid(),
            key.id.uuid(),
            key.tenant.app_id,
            key.tenant.tenant_id,
        )
        .expect("write the CSV file");
    }
    drop(file.into_inner().expect("flush the CSV file"));
    let mut rates = [0.0; 2];
    let mut cpu = [0; 2];
    for ((rate, cpu), table) in rates.iter_mut().zip(&mut cpu).zip(["bench_copy", "bench_copy_fk"]) {
        checkpoint(url).await;
        let cpu_before = cpu_ticks(Some("postgres"));
        let began = Instant::now();
        sqlx::query(&format!(
            "COPY {table} (id, key_id, app_id, tenant_id, endpoint, method, status, ip, user_agent, latency_us, \
             occurred_at) FROM '{}' WITH (FORMAT csv)",
            path.display()
        ))
        .execute(&pool)
        .await
        .expect("COPY from the CSV file (the server must read it: same machine)");
        *rate = per_second(rows, began.elapsed());
        *cpu = cpu_ticks(Some("postgres")).saturating_sub(cpu_before);
    }
    let _ = std::fs::remove_file(&path);
    pool.close().await;
    (rates[0], rates[1], cpu[0])
}

/// Writes every dirty page out (`CHECKPOINT`) and waits a moment for the
/// server to settle, so that Keysmith's writes and the `COPY` baseline each
/// start from the same state: neither pays for the other's dirty pages, and
/// a checkpoint that the previous phase's WAL set off does not land in the
/// next one. Needs a superuser (or `pg_checkpoint`); without one it says so
/// and the run goes on.
async fn checkpoint(url: &str) {
    let done = match sqlx::PgPool::connect(url).await {
        Ok(pool) => {
            let done = sqlx::query("CHECKPOINT").execute(&pool).await.map(drop);
            pool.close().await;
            done
        }
        Err(error) => Err(error),
    };
    if let Err(error) = done {
        println!("checkpoint: not taken ({error}); the phases may pay for each other's writes");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Clock ticks of `/proc/<pid>/stat` (1/100 s) in seconds.
#[allow(clippy::cast_precision_loss)]
fn seconds(ticks: u64) -> f64 {
    ticks as f64 / 100.0
}

async fn memory_store(keys: usize) {
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::builder(store).build().expect("engine");
    let acme = engine.tenant("bench", "acme");
    let before = rss_kib(std::process::id());
    let began = Instant::now();
    for i in 0..keys {
        acme.create_key(NewKey::new(format!("key {i}")).with_scopes(["read"])).await.expect("create key");
    }
    let after = rss_kib(std::process::id());
    report("memory-store", keys, before, after, began.elapsed());
}

async fn limiter(keys: usize) {
    let limiter = GcraRateLimiter::new();
    // A long refill time, so no entry is idle enough to be evicted.
    let limit = RateLimit::new("default", 100, Duration::from_secs(3600));
    let before = rss_kib(std::process::id());
    let began = Instant::now();
    for _ in 0..keys {
        limiter
            .check(keysmith_core::limit::Subject::Key(KeyId::new()), &limit, chrono::Utc::now())
            .await
            .expect("check");
    }
    let after = rss_kib(std::process::id());
    if limiter.tracked_keys() != keys {
        println!("limiter: only {} of {keys} keys tracked: per-key figure below is off", limiter.tracked_keys());
    }
    report("limiter", keys, before, after, began.elapsed());
}

#[allow(clippy::cast_precision_loss)]
fn report(what: &str, keys: usize, before: u64, after: u64, elapsed: Duration) {
    let grown = after.saturating_sub(before);
    println!(
        "{what}: {keys} keys: RSS {before} KiB -> {after} KiB (+{:.1} MiB), {:.0} bytes per key, filled in {:.1}s",
        grown as f64 / 1024.0,
        (grown * 1024) as f64 / keys as f64,
        elapsed.as_secs_f64(),
    );
}
