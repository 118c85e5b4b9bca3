//! Connecting to Redis, naming keys, and what to do when Redis is down.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keysmith_core::limit::Subject;
use keysmith_core::{Error, KeyId, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The default key prefix.
pub(crate) const DEFAULT_PREFIX: &str = "keysmith";

/// What a check does when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutagePolicy {
    /// Decide in process (an in-process limiter, local quota counts) until
    /// Redis is back: requests keep flowing, limits hold per instance only.
    #[default]
    FailOpen,
    /// Answer with an error, which the adapters turn into 503
    /// `unavailable`: no request is admitted that the fleet's budget has
    /// not counted.
    FailClosed,
}

/// A connection to Redis with the key prefix and outage policy every
/// component of this crate shares.
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) conn: ConnectionManager,
    pub(crate) prefix: String,
    pub(crate) outage: OutagePolicy,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("prefix", &self.prefix)
            .field("outage", &self.outage)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// Connects to the Redis at `url` (`redis://host:port/db`), prefix
    /// `keysmith`, failing open.
    ///
    /// A call waits at most 250 ms for a connection and 250 ms for an
    /// answer, so an outage costs a request that long before the outage
    /// policy applies. A lost connection is re-established by the first
    /// call after it (the app needs no restart).
    ///
    /// # Errors
    /// The URL is not a Redis URL, or the first connection failed.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = client(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(250))
            .set_response_timeout(Duration::from_millis(250))
            .set_number_of_retries(1)
            .set_max_delay(100);
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(backend)?;
        Ok(Self::from_manager(conn))
    }

    /// Uses an existing connection manager.
    #[must_use]
    pub fn from_manager(conn: ConnectionManager) -> Self {
        Self { conn, prefix: DEFAULT_PREFIX.to_owned(), outage: OutagePolicy::default() }
    }

    /// Names every key `{prefix}:…`, so several apps can share one Redis.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// What to do when Redis cannot be reached.
    #[must_use]
    pub fn with_outage_policy(mut self, outage: OutagePolicy) -> Self {
        self.outage = outage;
        self
    }

    /// The key prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The outage policy.
    #[must_use]
    pub fn outage_policy(&self) -> OutagePolicy {
        self.outage
    }

    /// The connection, for components built on this configuration.
    #[must_use]
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The name of `credential`'s key `kind`: `{prefix}:{<id>}:<kind>`, the
    /// id in a hash tag so one credential's keys share a cluster slot.
    #[must_use]
    pub fn key(&self, credential: KeyId, kind: &str) -> String {
        format!("{}:{{{credential}}}:{kind}", self.prefix)
    }

    /// The name of `subject`'s key `kind`: [`key`](Self::key) for a key's
    /// lineage, `{prefix}:{owner:…}:<kind>` for an owner (its
    /// [`storage_key`](Subject::storage_key) in the hash tag, so one owner's
    /// keys share a cluster slot).
    #[must_use]
    pub fn subject_key(&self, subject: Subject<'_>, kind: &str) -> String {
        match subject {
            Subject::Key(lineage) => self.key(lineage, kind),
            Subject::Owner { .. } => format!("{}:{{{}}}:{kind}", self.prefix, subject.storage_key()),
        }
    }
}

/// A client for the Redis at `url`.
///
/// The error never repeats the URL, nor anything redis-rs says about it:
/// a URL may carry a password.
pub(crate) fn client(url: &str) -> Result<redis::Client> {
    redis::Client::open(url).map_err(|error| Error::InvalidInput {
        field: "redis_url",
        reason: format!(
            "not a Redis URL (redis://[user[:password]@]host[:port][/db], rediss://…, redis+unix://…): {:?}",
            error.kind()
        ),
    })
}

/// Runs `invocation` on `conn`, and once more if the connection had been
/// dropped (Redis restarted, the connection killed): the manager reconnects
/// after such a call, so the second attempt meets a fresh connection and a
/// restart costs no request an error. (Should the dropped call have run
/// before its answer was lost, it counts twice: over-counting, never
/// under-counting.)
pub(crate) async fn invoke<T: redis::FromRedisValue>(
    invocation: &redis::ScriptInvocation<'_>,
    mut conn: ConnectionManager,
) -> redis::RedisResult<T> {
    match invocation.invoke_async(&mut conn).await {
        Err(error) if error.is_connection_dropped() => invocation.invoke_async(&mut conn).await,
        answer => answer,
    }
}

/// A Redis failure as the engine's error (adapters answer 503).
pub(crate) fn backend(error: redis::RedisError) -> Error {
    Error::store(error)
}

/// Whether Redis answered the last call of one component, so an outage and
/// a recovery are each logged once, not once per request.
#[derive(Debug)]
pub(crate) struct Health {
    component: &'static str,
    up: AtomicBool,
}

impl Health {
    pub(crate) fn new(component: &'static str) -> Self {
        Self { component, up: AtomicBool::new(true) }
    }

    /// Redis answered.
    pub(crate) fn ok(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(component = self.component, "redis is reachable again: shared state in use");
        }
    }

    /// Redis failed; under `fail_open` the caller decides in process, and
    /// each such decision is counted in `keysmith_redis_fallbacks_total`.
    pub(crate) fn failed(&self, outage: OutagePolicy, error: &redis::RedisError) {
        if self.up.swap(false, Ordering::AcqRel) {
            match outage {
                OutagePolicy::FailOpen => tracing::warn!(
                    component = self.component,
                    %error,
                    "redis unreachable: deciding in process until it is back (limits hold per instance only)"
                ),
                OutagePolicy::FailClosed => tracing::error!(
                    component = self.component,
                    %error,
                    "redis unreachable: refusing to decide (503) until it is back"
                ),
            }
        }
        if outage == OutagePolicy::FailOpen {
            metrics::counter!("keysmith_redis_fallbacks_total", "component" => self.component).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_url_is_refused_without_repeating_its_password() {
        let urls = [
            "redis://user:hunter2-secret@127.0.0.1:notaport/0",
            "redis://:hunter2-secret@[::1/0",
            "http://user:hunter2-secret@127.0.0.1:6379",
            "redis://user:hunter2-secret@127.0.0.1:6379/not-a-db",
            "hunter2-secret",
        ];
        for url in urls {
            let error = RedisConfig::connect(url).await.unwrap_err();
            assert!(matches!(error, Error::InvalidInput { field: "redis_url", .. }), "{url}: {error:?}");
            for shown in [error.to_string(), format!("{error:?}"), format!("{error:#?}")] {
                assert!(!shown.contains("hunter2"), "{url}: the password shows in {shown}");
            }
        }
    }
}
