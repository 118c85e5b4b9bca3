//! Connecting to Redis (one server or a cluster), naming keys, and what to
//! do when Redis is down.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use keysmith_core::limit::Subject;
use keysmith_core::{Error, KeyId, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

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
    pub(crate) link: Arc<Link>,
    pub(crate) prefix: String,
    pub(crate) outage: OutagePolicy,
    pub(crate) retry_interval: Duration,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("prefix", &self.prefix)
            .field("outage", &self.outage)
            .field("retry_interval", &self.retry_interval)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// Connects to the Redis at `url` (`redis://host:port/db`), prefix
    /// `keysmith`, failing open.
    ///
    /// A call waits at most 250 ms for a connection and 250 ms for an
    /// answer, 500 ms in all, so an outage costs the requests in flight
    /// when it begins that long before the outage policy applies. From then
    /// on Redis is left alone: every component on this connection (limiter,
    /// quotas) decides every request by its outage policy at once, without
    /// a call, and a background probe
    /// pings Redis every [retry interval](Self::with_retry_interval) until
    /// it answers; then calls go to Redis again (the app needs no restart).
    /// A connection that stays open but answers nothing (a partition, a
    /// hung proxy) is replaced by a new one after a call or probe times
    /// out.
    ///
    /// # Errors
    /// The URL is not a Redis URL, or the first connection failed.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::on(Nodes::single(url)?).await
    }

    /// Connects to the Redis Cluster that `nodes` (one URL or more, each
    /// `redis://host:port`) belong to, prefix `keysmith`, failing open.
    ///
    /// Each call goes to the master of its keys' slot (every script's keys
    /// share one, by their hash tag), following the cluster as slots move;
    /// a node is waited on as [`connect`](Self::connect) waits on a server.
    ///
    /// # Errors
    /// No URL, one that is not a Redis URL, or no node answered.
    pub async fn connect_cluster<I, S>(nodes: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::on(Nodes::cluster(nodes)?).await
    }

    async fn on(nodes: Nodes) -> Result<Self> {
        let conn = nodes.connect(CALL_TIMEOUT).await.map_err(backend)?;
        Ok(Self::from_link(Link::new(conn, Some(nodes))))
    }

    /// Uses an existing connection manager (which, unlike one made by
    /// [`connect`](Self::connect), is not replaced after a timeout).
    #[must_use]
    pub fn from_manager(conn: ConnectionManager) -> Self {
        Self::from_link(Link::new(RedisConnection::Single(conn), None))
    }

    /// Uses an existing cluster connection (not replaced after a timeout).
    #[must_use]
    pub fn from_cluster(conn: ClusterConnection) -> Self {
        Self::from_link(Link::new(RedisConnection::Cluster(conn), None))
    }

    fn from_link(link: Link) -> Self {
        Self {
            link: Arc::new(link),
            prefix: DEFAULT_PREFIX.to_owned(),
            outage: OutagePolicy::default(),
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }

    /// Names every key `{prefix}:…`, so several apps can share one Redis.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How often, once a call found Redis unreachable, a background probe
    /// pings it (default [`DEFAULT_RETRY_INTERVAL`]); meanwhile no request
    /// calls Redis, each is decided by the outage policy at once. A zero
    /// interval is taken as 1 ms.
    #[must_use]
    pub fn with_retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval.max(Duration::from_millis(1));
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
    pub fn connection(&self) -> RedisConnection {
        self.link.current()
    }

    /// The name of `credential`'s key `kind`: `{prefix}:{<id>}:<kind>`, the
    /// id in a hash tag so one credential's keys share a cluster slot.
    #[must_use]
    pub fn key(&self, credential: KeyId, kind: &str) -> String {
        subject_key_in(&self.prefix, Subject::Key(credential), kind)
    }

    /// The name of `subject`'s key `kind`: [`key`](Self::key) for a key's
    /// lineage, `{prefix}:{owner:…}:<kind>` for an owner (its
    /// [`storage_key`](Subject::storage_key) in the hash tag, so one owner's
    /// keys share a cluster slot).
    #[must_use]
    pub fn subject_key(&self, subject: Subject<'_>, kind: &str) -> String {
        subject_key_in(&self.prefix, subject, kind)
    }
}

fn subject_key_in(prefix: &str, subject: Subject<'_>, kind: &str) -> String {
    match subject {
        Subject::Key(lineage) => format!("{prefix}:{{{lineage}}}:{kind}"),
        Subject::Owner { .. } => format!("{prefix}:{{{}}}:{kind}", subject.storage_key()),
    }
}

/// How long a call waits for a connection, and then for its answer.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// The most one call may take in all: a connection being re-established
/// (which the connection manager may try more than once) and the answer.
const CALL_DEADLINE: Duration = Duration::from_millis(500);

/// How often a background probe pings Redis while it is unreachable, unless
/// configured otherwise ([`RedisConfig::with_retry_interval`]).
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// How long a probe waits for Redis's answer, reconnecting included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to one Redis server or to a Redis Cluster, cloned freely
/// (clones share it), for `redis`'s commands and scripts
/// ([`ConnectionLike`]).
#[derive(Clone)]
#[non_exhaustive]
pub enum RedisConnection {
    /// One server, through a reconnecting [`ConnectionManager`].
    Single(ConnectionManager),
    /// A cluster: each command goes to the node serving its keys.
    Cluster(ClusterConnection),
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConnection::Single",
            Self::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Where Redis is: one server, or the seed nodes of a cluster.
#[derive(Clone)]
pub(crate) enum Nodes {
    Single(redis::Client),
    Cluster(Vec<redis::Client>),
}

impl Nodes {
    pub(crate) fn single(url: &str) -> Result<Self> {
        Ok(Self::Single(client(url)?))
    }

    pub(crate) fn cluster<I, S>(urls: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = urls.into_iter().map(|url| client(url.as_ref())).collect::<Result<Vec<_>>>()?;
        if nodes.is_empty() {
            return Err(Error::InvalidInput {
                field: "redis_url",
                reason: "a cluster needs the URL of at least one of its nodes".to_owned(),
            });
        }
        Ok(Self::Cluster(nodes))
    }

    /// A connection whose calls wait at most `timeout` to connect and as
    /// long for each answer, retried once.
    pub(crate) async fn connect(&self, timeout: Duration) -> redis::RedisResult<RedisConnection> {
        match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(1)
                    .set_max_delay(100);
                Ok(RedisConnection::Single(ConnectionManager::new_with_config(client.clone(), config).await?))
            }
            Self::Cluster(nodes) => {
                let seeds = nodes.iter().map(|node| node.get_connection_info().clone());
                let client = ClusterClientBuilder::new(seeds)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()?;
                Ok(RedisConnection::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// A subscriber connection: to the server, or to the first node of the
    /// cluster that answers (a cluster forwards every `PUBLISH` to all of
    /// its nodes, so any one of them hears every change).
    pub(crate) async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let nodes = match self {
            Self::Single(client) => std::slice::from_ref(client),
            Self::Cluster(nodes) => nodes.as_slice(),
        };
        let mut failure = None;
        for node in nodes {
            match node.get_async_pubsub().await {
                Ok(pubsub) => return Ok(pubsub),
                Err(error) => failure = Some(error),
            }
        }
        Err(failure.unwrap_or_else(|| (redis::ErrorKind::ClientError, "no Redis node to subscribe on").into()))
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

/// The connection every component of one [`RedisConfig`] shares, and how
/// to make a new one when it stops answering.
pub(crate) struct Link {
    conn: RwLock<RedisConnection>,
    /// `None` for a connection handed in, which cannot be remade.
    nodes: Option<Nodes>,
    replacing: AtomicBool,
    /// False once a component's call failed, until a probe hears Redis: the
    /// other components on this connection then stop calling too, rather
    /// than each paying its own timeout.
    up: AtomicBool,
}

impl Link {
    fn new(conn: RedisConnection, nodes: Option<Nodes>) -> Self {
        Self { conn: RwLock::new(conn), nodes, replacing: AtomicBool::new(false), up: AtomicBool::new(true) }
    }

    pub(crate) fn current(&self) -> RedisConnection {
        self.conn.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A call timed out: the connection may be half-open, which the
    /// connection itself never notices (it reconnects on errors only), so
    /// a new one is made in the background and swapped in once it answers.
    /// One replacement at a time; calls meanwhile use the old connection.
    fn replace(self: &Arc<Self>) {
        let Some(nodes) = self.nodes.clone() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.replacing.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = Arc::clone(self);
        runtime.spawn(async move {
            if let Ok(mut conn) = nodes.connect(CALL_TIMEOUT).await
                && redis::cmd("PING").query_async::<()>(&mut conn).await.is_ok()
            {
                *link.conn.write().unwrap_or_else(PoisonError::into_inner) = conn;
                tracing::info!("redis: replaced a connection that stopped answering");
            }
            link.replacing.store(false, Ordering::Release);
        });
    }

    /// True if Redis answers a `PING` within [`PROBE_TIMEOUT`]; a
    /// connection that times out is replaced.
    async fn ping(self: &Arc<Self>) -> bool {
        let mut conn = self.current();
        match tokio::time::timeout(PROBE_TIMEOUT, redis::cmd("PING").query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                if error.is_timeout() {
                    self.replace();
                }
                false
            }
            Err(_) => {
                self.replace();
                false
            }
        }
    }
}

/// Runs `invocation` on `link`'s connection, and once more if the
/// connection had been dropped (Redis restarted, the connection killed):
/// the manager reconnects after such a call, so the second attempt meets a
/// fresh connection and a restart costs no request an error. (Should the
/// dropped call have run before its answer was lost, it counts twice:
/// over-counting, never under-counting.) After a timeout the connection is
/// replaced in the background.
pub(crate) async fn invoke<T: redis::FromRedisValue>(
    invocation: &redis::ScriptInvocation<'_>, link: &Arc<Link>,
) -> redis::RedisResult<T> {
    let mut conn = link.current();
    let call = async {
        match invocation.invoke_async(&mut conn).await {
            Err(error) if error.is_connection_dropped() => invocation.invoke_async(&mut conn).await,
            answer => answer,
        }
    };
    let answer = tokio::time::timeout(CALL_DEADLINE, call).await.unwrap_or_else(|_| {
        Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from redis within {CALL_DEADLINE:?}"),
        )))
    });
    if answer.as_ref().is_err_and(redis::RedisError::is_timeout) {
        link.replace();
    }
    answer
}

/// Starts `give_back` (a limiter's or quota counter's refund) in a task on
/// the current Tokio runtime, for a caller that does not await it; without
/// a runtime nothing is given back.
pub(crate) fn detach(give_back: Option<keysmith_core::limit::GiveBack>) {
    if let Some(give_back) = give_back
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        runtime.spawn(give_back);
    }
}

/// A Redis failure as the engine's error (adapters answer 503).
pub(crate) fn backend(error: redis::RedisError) -> Error {
    Error::store(error)
}

/// Whether one component (the limiter, the quotas) may call Redis: a
/// circuit breaker. A failed call marks Redis down; while it is down no
/// request calls it (each is decided by the outage policy at once) and one
/// background task pings it every retry interval until it answers.
pub(crate) struct Health {
    component: &'static str,
    outage: OutagePolicy,
    up: AtomicBool,
    /// Set while a background task probes Redis.
    probing: Arc<AtomicBool>,
    link: Arc<Link>,
    retry_interval: Duration,
    /// Run by the probe once Redis answers, before calls go to it again:
    /// true when done (false: Redis stays down, the probe tries again).
    recovery: Option<Recovery>,
}

/// What a component does once Redis is back, before it calls Redis again.
pub(crate) type Recovery = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("component", &self.component)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Clears a probe's flag when its task ends, finished or dropped with its
/// runtime, so that the next request that finds Redis down starts another.
struct ProbeDone(Arc<AtomicBool>);

impl Drop for ProbeDone {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Health {
    pub(crate) fn new(component: &'static str, config: &RedisConfig) -> Self {
        Self {
            component,
            outage: config.outage,
            up: AtomicBool::new(true),
            probing: Arc::default(),
            link: Arc::clone(&config.link),
            retry_interval: config.retry_interval,
            recovery: None,
        }
    }

    /// Runs `recovery` once Redis answers a probe, before calls go to it
    /// again.
    pub(crate) fn with_recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = Some(recovery);
        self
    }

    /// True while calls go to Redis (no outage known).
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// True when calls may go to Redis. False while it is known down: the
    /// caller applies the outage policy without a call (counted as a
    /// fallback), and a probe watches for Redis's return.
    pub(crate) fn available(self: &Arc<Self>) -> bool {
        if self.up.load(Ordering::Acquire) {
            if self.link.up.load(Ordering::Acquire) {
                return true;
            }
            // Another component on this connection found Redis down.
            self.went_down(&"another component's call failed");
        }
        self.probe();
        if self.outage == OutagePolicy::FailOpen {
            metrics::counter!("keysmith_redis_fallbacks_total", "component" => self.component).increment(1);
        }
        false
    }

    /// The error a caller failing closed answers while Redis is down.
    pub(crate) fn unavailable(&self) -> Error {
        backend(redis::RedisError::from((
            redis::ErrorKind::IoError,
            "redis is unreachable",
            format!("the {} component waits for it to answer a probe", self.component),
        )))
    }

    /// Redis answered a probe, and the component caught up: calls go to it
    /// again.
    fn ok(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(component = self.component, "redis is reachable again: shared state in use");
        }
    }

    /// A call to Redis failed: Redis is down until a probe hears it.
    pub(crate) fn failed(self: &Arc<Self>, error: &redis::RedisError) {
        self.link.up.store(false, Ordering::Release);
        self.went_down(error);
        if self.outage == OutagePolicy::FailOpen {
            metrics::counter!("keysmith_redis_fallbacks_total", "component" => self.component).increment(1);
        }
        self.probe();
    }

    /// Marks Redis down for this component, logging the transition once.
    fn went_down(&self, error: &dyn fmt::Display) {
        if self.up.swap(false, Ordering::AcqRel) {
            match self.outage {
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
    }

    /// Starts the background probe unless one runs (on the current tokio
    /// runtime; without one, Redis is called again instead).
    fn probe(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.link.up.store(true, Ordering::Release);
            self.up.store(true, Ordering::Release);
            return;
        };
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        // Weak: a limiter or quota counter dropped meanwhile ends its probe.
        let (health, done) = (Arc::downgrade(self), ProbeDone(Arc::clone(&self.probing)));
        let (link, interval, recovery) = (Arc::clone(&self.link), self.retry_interval, self.recovery.clone());
        runtime.spawn(async move {
            let _done = done;
            loop {
                tokio::time::sleep(interval).await;
                let answered = link.ping().await;
                if answered {
                    link.up.store(true, Ordering::Release);
                }
                let Some(health) = health.upgrade() else { return };
                let caught_up = match &recovery {
                    Some(recover) if answered => recover().await,
                    _ => answered,
                };
                if caught_up {
                    health.ok();
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use keysmith_core::Tenant;

    use super::*;

    /// The part of `key` Redis Cluster hashes: the text between the first
    /// `{` and the first `}` after it, if not empty; else the whole key.
    fn hash_tag(key: &str) -> &str {
        key.find('{')
            .and_then(|open| key[open + 1..].find('}').map(|len| &key[open + 1..open + 1 + len]))
            .filter(|tag| !tag.is_empty())
            .unwrap_or(key)
    }

    #[test]
    fn every_key_of_one_subject_shares_one_cluster_slot_whatever_its_ids_hold() {
        let id = KeyId::new();
        let odd = Tenant::new("a}p{p", "}{");
        let subjects = [
            Subject::Key(id),
            Subject::Owner { tenant: &odd, owner_id: "cu}st{" },
            Subject::Owner { tenant: &odd, owner_id: "}" },
        ];
        for prefix in ["keysmith", "app{x", "app}", "a:b"] {
            for subject in subjects {
                // The rate limit's bucket and the quota script's two counters.
                let names = ["rl:default", "q:day:2026-05-05", "q:month:2026-05-01"]
                    .map(|kind| subject_key_in(prefix, subject, kind));
                let tags = names.each_ref().map(|name| hash_tag(name));
                assert!(tags.iter().all(|tag| *tag == tags[0]), "{names:?} hash to different slots");
                assert_ne!(tags[0], names[0], "{prefix}: no hash tag in {}", names[0]);
            }
        }
        assert_eq!(hash_tag(&subject_key_in("keysmith", Subject::Key(id), "rl:x")), id.to_string());
    }

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
