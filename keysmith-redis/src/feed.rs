//! [`RedisChangeFeed`]: the change feed over Redis pub/sub.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use keysmith_core::feed::{Change, ChangeFeed, ChangeStream};
use keysmith_core::{Error, Result};
use redis::AsyncCommands;

use crate::config::{Nodes, RedisConnection};

/// A [`ChangeFeed`] over Redis pub/sub: changes are `PUBLISH`ed on one
/// channel (`keysmith:changes` by default) through a shared connection, and
/// each subscription holds its own connection in subscriber mode.
///
/// When the subscriber connection is lost (server restart, `CLIENT KILL`)
/// the subscription reports it (the engine drops its cache and runs on its
/// outage TTL) and the engine subscribes again as soon as Redis answers. A
/// connection that stays open but answers nothing (a partition, a hung
/// proxy) is noticed too: the subscription by the engine's heartbeats, the
/// publishing connection by its 500 ms answer timeout, after which it is
/// replaced and the change sent once more on the new one.
///
/// On a Redis Cluster ([`connect_cluster`](Self::connect_cluster)) changes
/// are published through the cluster connection and a subscription listens
/// on one node (the first of the given nodes that answers): a cluster
/// forwards every `PUBLISH` to all of its nodes. When that node goes away
/// the subscription is lost, and the next one is made on a node that answers.
///
/// ```no_run
/// # async fn run() -> Result<(), keysmith_core::Error> {
/// use keysmith_core::store::CacheConfig;
/// use keysmith_core::{Engine, MemoryStore};
/// use keysmith_redis::RedisChangeFeed;
///
/// let feed = RedisChangeFeed::connect("redis://127.0.0.1:6379").await?;
/// let engine = Engine::builder(MemoryStore::new()).with_cache(CacheConfig::default()).with_change_feed(feed).build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisChangeFeed {
    nodes: Nodes,
    /// Replaced after a timeout: the connection reconnects only when it
    /// reports an error, which a half-open one never does.
    publisher: Arc<RwLock<RedisConnection>>,
    channel: String,
}

impl std::fmt::Debug for RedisChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisChangeFeed").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl RedisChangeFeed {
    /// The channel used unless told otherwise.
    pub const DEFAULT_CHANNEL: &str = "keysmith:changes";

    /// Connects to the Redis at `url` (the publishing connection; each
    /// subscription opens its own).
    ///
    /// # Errors
    /// The URL is not a Redis URL, or Redis does not answer.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::on(Nodes::single(url)?).await
    }

    /// Connects to the Redis Cluster that `nodes` (one URL or more) belong
    /// to: the publishing connection follows the cluster, and each
    /// subscription listens on the first of `nodes` that answers.
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
        let publisher = Arc::new(RwLock::new(publisher(&nodes).await?));
        Ok(Self { nodes, publisher, channel: Self::DEFAULT_CHANNEL.to_owned() })
    }

    /// Uses `channel` instead (apps sharing one Redis keep their own).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty name or one with control characters.
    pub fn with_channel(mut self, channel: impl Into<String>) -> Result<Self> {
        let channel = channel.into();
        if channel.is_empty() || channel.chars().any(char::is_control) {
            return Err(Error::InvalidInput {
                field: "channel",
                reason: "must be non-empty, without control characters".to_owned(),
            });
        }
        self.channel = channel;
        Ok(self)
    }

    /// The channel changes travel on.
    #[must_use]
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

#[async_trait]
impl ChangeFeed for RedisChangeFeed {
    /// Publishes on the shared connection, once more if it had been dropped
    /// (Redis restarted, and the manager reconnected) or answered nothing
    /// within 500 ms (half-open, and replaced here): the first change after
    /// a restart or a partition is not lost.
    async fn publish(&self, change: &Change) -> Result<()> {
        let payload = change.to_json()?;
        let mut conn = self.publisher.read().unwrap_or_else(PoisonError::into_inner).clone();
        let sent: redis::RedisResult<i64> = conn.publish(&self.channel, &payload).await;
        match sent {
            Ok(_) => return Ok(()),
            Err(error) if error.is_connection_dropped() => {}
            Err(error) if error.is_timeout() => {
                conn = publisher(&self.nodes).await?;
                *self.publisher.write().unwrap_or_else(PoisonError::into_inner) = conn.clone();
            }
            Err(error) => return Err(Error::feed(error)),
        }
        conn.publish::<_, _, i64>(&self.channel, &payload).await.map(drop).map_err(Error::feed)
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        let mut pubsub = self.nodes.pubsub().await.map_err(Error::feed)?;
        pubsub.subscribe(&self.channel).await.map_err(Error::feed)?;
        let messages = pubsub.into_on_message().filter_map(|message| async move {
            let payload: String = message.get_payload().ok()?;
            match Change::from_json(&payload) {
                Ok(change) => Some(Ok(change)),
                // Someone else's message on our channel: not a change, not a loss.
                Err(error) => {
                    tracing::warn!(target: "keysmith::feed", %error, "ignored a message that is not a change");
                    None
                }
            }
        });
        // The message stream ends when the connection is lost: say so.
        let lost = futures_util::stream::once(async { Err(Error::feed("the subscriber connection was lost")) });
        Ok(messages.chain(lost).boxed())
    }
}

/// A publishing connection to `nodes`, which waits at most 500 ms to
/// connect and for each answer.
async fn publisher(nodes: &Nodes) -> Result<RedisConnection> {
    nodes.connect(Duration::from_millis(500)).await.map_err(Error::feed)
}
