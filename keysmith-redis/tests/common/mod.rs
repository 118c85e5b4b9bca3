//! Where the test Redis is, a prefix per test, and a private server to stop.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keysmith_redis::RedisConfig;

/// The URL of the shared test Redis, or `None` after one `skipping:` line
/// (a failure when `KEYSMITH_TEST_REQUIRE_SERVICES=1`).
pub fn redis_url() -> Option<String> {
    const VAR: &str = "KEYSMITH_TEST_REDIS_URL";
    match std::env::var(VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("KEYSMITH_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") => {
            panic!("{VAR} is not set and KEYSMITH_TEST_REQUIRE_SERVICES=1")
        }
        _ => {
            println!("skipping: {VAR} not set");
            None
        }
    }
}

/// A prefix no other test (or run) uses.
pub fn unique_prefix() -> String {
    format!("keysmith-test-{}", keysmith_core::KeyId::new())
}

/// A connection to the shared test Redis under a fresh prefix.
pub async fn shared() -> Option<RedisConfig> {
    let url = redis_url()?;
    Some(RedisConfig::connect(&url).await.expect("cannot connect to the test Redis").with_prefix(unique_prefix()))
}

/// A `redis-server` of this test's own, on a free port, without persistence:
/// stopped and started again on the same port without touching the shared one.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one, or `None` (after one line) when the tests have no Redis.
    pub async fn start() -> Option<Self> {
        redis_url()?;
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Self { port, child: None };
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
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).unwrap();
        for _ in 0..200 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the private redis-server on port {} did not start", self.port);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
