//! Where the test Redis is, a prefix per test, and a private server to stop.
//!
//! With `KEYSMITH_TEST_REDIS_CLUSTER_URL` set (node URLs, comma separated, as
//! `scripts/redis-cluster` prints them) every test runs on that Redis Cluster
//! instead, and a private server is a one-node cluster holding every slot.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keysmith_redis::{RedisChangeFeed, RedisConfig, RedisConnection};

const CLUSTER_VAR: &str = "KEYSMITH_TEST_REDIS_CLUSTER_URL";

/// Whether the tests run on a Redis Cluster.
pub fn cluster() -> bool {
    std::env::var(CLUSTER_VAR).is_ok_and(|urls| !urls.is_empty())
}

/// The URL of the shared test Redis (the cluster's node URLs, comma
/// separated, on a cluster), or `None` after one `skipping:` line (a
/// failure when `KEYSMITH_TEST_REQUIRE_SERVICES=1`).
pub fn redis_url() -> Option<String> {
    const VAR: &str = "KEYSMITH_TEST_REDIS_URL";
    if cluster() {
        return std::env::var(CLUSTER_VAR).ok();
    }
    keysmith_tests::services::service_url(VAR)
}

/// A prefix no other test (or run) uses.
pub fn unique_prefix() -> String {
    format!("keysmith-test-{}", keysmith_core::KeyId::new())
}

/// A connection to the shared test Redis under a fresh prefix.
pub async fn shared() -> Option<RedisConfig> {
    let url = redis_url()?;
    Some(connect(&url).await.with_prefix(unique_prefix()))
}

/// A new connection to the Redis (or cluster) at `url`, as an instance of
/// the app would make it.
pub async fn connect(url: &str) -> RedisConfig {
    let config =
        if cluster() { RedisConfig::connect_cluster(url.split(',')).await } else { RedisConfig::connect(url).await };
    config.expect("cannot connect to the test Redis")
}

/// A change feed on the Redis (or cluster) at `url`.
pub async fn feed(url: &str) -> RedisChangeFeed {
    let feed = if cluster() {
        RedisChangeFeed::connect_cluster(url.split(',')).await
    } else {
        RedisChangeFeed::connect(url).await
    };
    feed.expect("cannot connect the change feed")
}

/// A connection for the test's own commands (`KEYS`, `FLUSHALL`: on a
/// cluster, sent to every master).
pub async fn admin(url: &str) -> RedisConnection {
    connect(url).await.connection()
}

/// A proxy in front of the test Redis that can go silent, a connection
/// through it and the shared test Redis's URL; `None` without a test Redis
/// or on a cluster (a cluster client learns its nodes' own addresses and
/// bypasses a proxy in front of one; the single-node run covers
/// partitions).
pub async fn behind_silent_proxy() -> Option<(keysmith_tests::proxy::SilentProxy, RedisConfig, String)> {
    let url = redis_url()?;
    if cluster() {
        return None;
    }
    let proxy = keysmith_tests::proxy::SilentProxy::start(redis_addr(&url).await).await;
    // The same database as the URL's, which the tests' own connections use.
    let db = redis::Client::open(url.as_str()).expect("the test Redis URL").get_connection_info().redis.db;
    let behind = RedisConfig::connect(&format!("redis://{}/{db}", proxy.addr())).await.expect("the proxy's Redis");
    Some((proxy, behind, url))
}

/// Where the Redis at `url` listens (on a cluster, its first node).
pub async fn redis_addr(url: &str) -> std::net::SocketAddr {
    let first = url.split(',').next().unwrap_or(url);
    let info = redis::Client::open(first).unwrap().get_connection_info().addr.clone();
    let redis::ConnectionAddr::Tcp(host, port) = info else { panic!("the test Redis is not on TCP: {url}") };
    tokio::net::lookup_host((host.as_str(), port)).await.unwrap().next().unwrap()
}

/// A `redis-server` of this test's own, on a free port, without persistence:
/// stopped and started again on the same port without touching the shared one.
/// On a cluster run it is a cluster of one node that serves every slot
/// (and keeps its cluster configuration, in a directory of its own, across
/// restarts).
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    /// Starts one, or `None` (after one line) when the tests have no Redis.
    pub async fn start() -> Option<Self> {
        redis_url()?;
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("keysmith-test-redis-{port}-{}", keysmith_core::KeyId::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self { port, child: None, dir };
        server.restart().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (by its pid) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Starts the server on its port and waits until it answers.
    pub async fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]);
        if cluster() {
            command.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
            command.arg("--dir").arg(&self.dir);
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server not found");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        for _ in 0..200 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
                && (!cluster() || serves_every_slot(&mut conn).await)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the private redis-server on port {} did not start", self.port);
    }
}

/// A one-node cluster: assigns it every slot the first time, then tells
/// whether it is ready (`cluster_state:ok`).
async fn serves_every_slot(conn: &mut redis::aio::MultiplexedConnection) -> bool {
    let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(conn).await.unwrap_or_default();
    if info.contains("cluster_slots_assigned:0") {
        let _: redis::RedisResult<()> =
            redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(0).arg(16383).query_async(conn).await;
        return false;
    }
    info.contains("cluster_state:ok")
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Validates `raw` `n` times at once, round-robin over `engines`: how many
/// passed, after asserting every other answer matched `refused`.
pub async fn admitted(
    engines: &[keysmith_core::Engine], raw: &str, n: usize, refused: fn(&keysmith_core::ValidationError) -> bool,
) -> usize {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (engine, raw) = (engines[i % engines.len()].clone(), raw.to_owned());
            tokio::spawn(async move { engine.validate(&raw, &keysmith_core::RequestContext::new()).await })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(error) => assert!(refused(&error), "unexpected answer: {error:?}"),
        }
    }
    admitted
}

/// Validates `raw` on `engine` until it passes (a refund sent in the
/// background has landed): false if it never does within about a second.
pub async fn passes_soon(engine: &keysmith_core::Engine, raw: &str) -> bool {
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if engine.validate(raw, &keysmith_core::RequestContext::new()).await.is_ok() {
            return true;
        }
    }
    false
}
