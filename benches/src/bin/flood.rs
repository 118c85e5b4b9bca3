//! Memory under a flood of made-up keys: one instance (axum with
//! `ApiKeyLayer`, an engine with its cache over SQLite or PostgreSQL) is
//! served in this process and sent random well-formed keys (valid
//! checksums, held by no one) over keep-alive HTTP/1.1 connections. Each
//! such key costs a hash, a store lookup and a negative cache entry; the
//! run reports resident memory and the cache's size as the flood goes on,
//! and exits 1 when an answer is not 401 or the cache held more entries
//! than it is configured to (plus the writes moka evicts in a batch, 384,
//! and one per connection in flight).
//!
//! ```sh
//! cargo build --release -p keysmith-benches --bin flood
//! target/release/flood                                  # 1 000 000 keys, the default cache
//! target/release/flood --keys 100000 --max-keys 10000 --negative-ttl 60
//! ```
//!
//! Options: `--keys N` (default 1 000 000), `--max-keys N` (the cache's
//! entries, default 100 000 as in `CacheConfig::default()`),
//! `--negative-ttl SECS` (default 5), `--connections N` (default 8),
//! `--store sqlite|postgres` (default `sqlite`, a file in the temp
//! directory; `postgres` makes a database of its own on
//! `KEYSMITH_TEST_POSTGRES_URL`), `--report PATH` (default
//! `target/flood-report.md`). The client runs in the same process: its
//! memory is a few buffers per connection, so the growth is the instance's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use keysmith_benches::load::{git_commit, rss_kib, send};
use keysmith_benches::{Backend, BenchStore};
use keysmith_core::store::CacheConfig;
use keysmith_core::{Engine, Environment, RawKey};
use keysmith_tower::ApiKeyLayer;

/// How far moka lets a cache run over its size before its housekeeping
/// evicts: the writes its log holds (64 × 6), each of which the cache's
/// front map may already hold.
const PENDING_WRITES: u64 = 384;

struct Settings {
    keys: u64,
    max_keys: u64,
    negative_ttl: Duration,
    connections: u64,
    backend: Backend,
    report: String,
}

fn settings() -> Settings {
    let mut settings = Settings {
        keys: 1_000_000,
        max_keys: 100_000,
        negative_ttl: Duration::from_secs(5),
        connections: 8,
        backend: Backend::Sqlite,
        report: "target/flood-report.md".to_owned(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| fail(&format!("{arg} needs a value (see the file's doc comment)")));
        let number = || value.parse::<u64>().unwrap_or_else(|_| fail(&format!("{arg} takes a number")));
        match arg.as_str() {
            "--keys" => settings.keys = number(),
            "--max-keys" => settings.max_keys = number(),
            "--negative-ttl" => settings.negative_ttl = Duration::from_secs(number()),
            "--connections" => settings.connections = number().max(1),
            "--store" => {
                settings.backend = match value.as_str() {
                    "sqlite" => Backend::Sqlite,
                    "postgres" => Backend::Postgres,
                    _ => fail("--store is sqlite or postgres"),
                }
            }
            "--report" => settings.report = value,
            other => fail(&format!("unknown argument {other:?} (see the file's doc comment)")),
        }
    }
    settings
}

fn fail(message: &str) -> ! {
    eprintln!("flood: {message}");
    std::process::exit(2)
}

/// One row of the report: the state after `sent` keys.
struct Sample {
    sent: u64,
    seconds: f64,
    rss_kib: u64,
    cached: u64,
}

/// What the senders share.
struct Flood {
    next: AtomicU64,
    answered: std::sync::Mutex<BTreeMap<u16, u64>>,
}

#[tokio::main]
async fn main() {
    let settings = settings();
    let Some(store) = BenchStore::open(settings.backend).await else {
        fail("--store postgres needs KEYSMITH_TEST_POSTGRES_URL")
    };
    let cache = CacheConfig::default().with_max_keys(settings.max_keys).with_negative_ttl(settings.negative_ttl);
    let engine = Engine::builder(Arc::clone(&store.store)).with_cache(cache).build().expect("engine");
    // One real key, so that the store is not empty.
    engine.tenant("flood", "t").create_key(keysmith_core::NewKey::new("real")).await.expect("create a key");

    let app = Router::new().route("/users", get(|| async { "users" })).layer(ApiKeyLayer::new(engine.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let pid = std::process::id();
    let cached = || engine.cache_stats().map_or(0, |stats| stats.keys);
    let started = Instant::now();
    let mut samples = vec![Sample { sent: 0, seconds: 0.0, rss_kib: rss_kib(pid), cached: cached() }];
    let flood = Arc::new(Flood { next: AtomicU64::new(0), answered: std::sync::Mutex::default() });
    let senders: Vec<_> =
        (0..settings.connections).map(|_| tokio::spawn(sender(Arc::clone(&flood), addr, settings.keys))).collect();

    // A sample at every tenth of the flood, and the largest cache seen
    // (read every 100 ms).
    let step = (settings.keys / 10).max(1);
    let mut largest = 0;
    while senders.iter().any(|sender| !sender.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        largest = largest.max(cached());
        let sent = flood.next.load(Ordering::Relaxed).min(settings.keys);
        if sent >= samples.last().map_or(0, |s| s.sent) + step {
            samples.push(Sample {
                sent: sent / step * step,
                seconds: started.elapsed().as_secs_f64(),
                rss_kib: rss_kib(pid),
                cached: cached(),
            });
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if samples.last().is_some_and(|last| last.sent == settings.keys) {
        samples.pop();
    }
    samples.push(Sample { sent: settings.keys, seconds, rss_kib: rss_kib(pid), cached: cached() });
    largest = largest.max(cached());
    // Once the negative TTL has passed the entries are stale: the next
    // write drops what expired (moka's housekeeping), so one more miss.
    tokio::time::sleep(settings.negative_ttl + Duration::from_secs(1)).await;
    let mut conn = None;
    let probe = RawKey::unissued("sk", Environment::Live).expect("a random key");
    send(&mut conn, addr, "GET", "/users", probe.expose(), None).await;
    let after_ttl = Sample {
        sent: settings.keys + 1,
        seconds: started.elapsed().as_secs_f64(),
        rss_kib: rss_kib(pid),
        cached: cached(),
    };

    let answered = flood.answered.lock().expect("answers").clone();
    let (text, broken) = report(&settings, &samples, &after_ttl, largest, &answered, seconds);
    print!("{text}");
    if let Err(error) = std::fs::write(&settings.report, &text) {
        eprintln!("flood: cannot write {}: {error}", settings.report);
    }
    std::process::exit(i32::from(broken));
}

/// Sends keys until `total` were taken (by all senders together), on one
/// keep-alive connection, and counts the answers.
async fn sender(flood: Arc<Flood>, addr: SocketAddr, total: u64) {
    let mut conn = None;
    let mut answered = BTreeMap::new();
    while flood.next.fetch_add(1, Ordering::Relaxed) < total {
        let key = RawKey::unissued("sk", Environment::Live).expect("a random key");
        let (status, _) = send(&mut conn, addr, "GET", "/users", key.expose(), None).await;
        *answered.entry(status).or_insert(0u64) += 1;
    }
    let mut all = flood.answered.lock().expect("answers");
    for (status, count) in answered {
        *all.entry(status).or_insert(0) += count;
    }
}

#[allow(clippy::cast_precision_loss)]
fn report(
    settings: &Settings, samples: &[Sample], after_ttl: &Sample, largest: u64, answered: &BTreeMap<u16, u64>,
    seconds: f64,
) -> (String, bool) {
    let mut text = String::new();
    let unexpected: u64 = answered.iter().filter(|(status, _)| **status != 401).map(|(_, count)| count).sum();
    let first = samples.first().map_or(0, |s| s.rss_kib);
    let last = samples.last().map_or(0, |s| s.rss_kib);
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let _ = writeln!(
        text,
        "# Flood: {} made-up keys, commit {}, {}\n\nMachine: {} cores, load {} at the end; store {}, cache of \
         {} keys, negative TTL {} s, {} connections; {:.1} s, {:.0} keys/s.\n",
        settings.keys,
        git_commit(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%MZ"),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" "),
        settings.backend.name(),
        settings.max_keys,
        settings.negative_ttl.as_secs(),
        settings.connections,
        seconds,
        settings.keys as f64 / seconds,
    );
    let _ = writeln!(text, "| keys sent | seconds | RSS | RSS growth | cached lookups |");
    let _ = writeln!(text, "|---:|---:|---:|---:|---:|");
    for sample in samples.iter().chain([after_ttl]) {
        let label = if sample.sent > settings.keys {
            format!("{} + 1 after the TTL", settings.keys)
        } else {
            sample.sent.to_string()
        };
        let _ = writeln!(
            text,
            "| {label} | {:.1} | {} KiB | {:+} KiB | {} |",
            sample.seconds,
            sample.rss_kib,
            i128::from(sample.rss_kib) - i128::from(first),
            sample.cached
        );
    }
    let bound = settings.max_keys + PENDING_WRITES + settings.connections;
    let over = largest > bound;
    let _ = writeln!(
        text,
        "\nRSS {first} KiB before, {peak} KiB at most, {last} KiB at the end ({:+} KiB); the cache held at most {largest} \
         lookups (configured: {}, bound with moka's pending writes: {bound}){}.\nAnswers: {answered:?}{}.",
        i128::from(last) - i128::from(first),
        settings.max_keys,
        if over { " — **BROKEN**: more than the bound" } else { "" },
        if unexpected > 0 { format!(" — **BROKEN**: {unexpected} not 401") } else { String::new() },
    );
    (text, over || unexpected > 0)
}
