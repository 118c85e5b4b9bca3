//! [`RedisChangeFeed`]: the change feed over Redis pub/sub.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use keysmith_core::feed::{Change, ChangeFeed, ChangeStream};
use keysmith_core::{Error, Result};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A [`ChangeFeed`] over Redis pub/sub: changes are `PUBLISH`ed on one
/// channel (`keysmith:changes` by default) through a shared connection, and
/// each subscription holds its own connection in subscriber mode.
///
/// When the subscriber connection is lost (server restart, `CLIENT KILL`)
/// the subscription reports it (the engine drops its cache and runs on its
/// outage TTL) and the engine subscribes again as soon as Redis answers.
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
    client: redis::Client,
    publisher: ConnectionManager,
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
        let client = crate::config::client(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(500))
            .set_response_timeout(Duration::from_millis(500))
            .set_number_of_retries(1);
        let publisher = ConnectionManager::new_with_config(client.clone(), config).await.map_err(Error::feed)?;
        Ok(Self { client, publisher, channel: Self::DEFAULT_CHANNEL.to_owned() })
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
    async fn publish(&self, change: &Change) -> Result<()> {
        let mut conn = self.publisher.clone();
        let _: i64 = conn.publish(&self.channel, change.to_json()?).await.map_err(Error::feed)?;
        Ok(())
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        let mut pubsub = self.client.get_async_pubsub().await.map_err(Error::feed)?;
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
