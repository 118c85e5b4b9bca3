//! [`PgChangeFeed`]: the change feed over PostgreSQL `LISTEN`/`NOTIFY`.

use async_trait::async_trait;
use futures_util::StreamExt;
use keysmith_core::feed::{Change, ChangeFeed, ChangeStream};
use keysmith_core::{Error, Result};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};

/// A [`ChangeFeed`] over PostgreSQL `LISTEN`/`NOTIFY`, so that a fleet on
/// one database hears of every revocation within a second without anything
/// else to run. Changes are published with `pg_notify` on the pool; each
/// subscription listens on a connection of its own, made with the pool's
/// connect options (one connection beside the pool's).
///
/// When the listening connection is lost the subscription reports it (the
/// engine drops its cache and runs on its outage TTL) and the engine
/// subscribes again, on a new connection, as soon as the server answers. A
/// listening connection that stays open but carries nothing (a partition, a
/// hung proxy) is noticed by the engine's heartbeats; it is then closed,
/// never handed back to a pool.
///
/// ```no_run
/// # async fn run() -> Result<(), keysmith_core::Error> {
/// use keysmith_core::Engine;
/// use keysmith_core::store::CacheConfig;
/// use keysmith_sqlx::{PgChangeFeed, PgStore, Store};
///
/// let store = PgStore::connect("postgres://postgres@127.0.0.1:5432/app").await?;
/// store.migrate().await?;
/// let feed = PgChangeFeed::new(store.pool().clone());
/// let engine = Engine::builder(store).with_cache(CacheConfig::default()).with_change_feed(feed).build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgChangeFeed {
    pool: PgPool,
    channel: String,
}

impl PgChangeFeed {
    /// The channel used unless told otherwise.
    pub const DEFAULT_CHANNEL: &str = "keysmith_changes";

    /// A feed on channel `keysmith_changes` of the pool's database.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool, channel: Self::DEFAULT_CHANNEL.to_owned() }
    }

    /// Uses `channel` instead (apps sharing a database keep their own):
    /// 1–63 characters of `[a-z0-9_]`, starting with a letter or `_`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for any other name.
    pub fn with_channel(mut self, channel: impl Into<String>) -> Result<Self> {
        let channel = channel.into();
        let valid = (1..=63).contains(&channel.len())
            && channel.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !channel.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(Error::InvalidInput {
                field: "channel",
                reason: "must be 1-63 characters of [a-z0-9_], not starting with a digit".to_owned(),
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
impl ChangeFeed for PgChangeFeed {
    async fn publish(&self, change: &Change) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(change.to_json()?)
            .execute(&self.pool)
            .await
            .map_err(Error::feed)?;
        Ok(())
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        // As sqlx's own `PgListener::connect`: one connection, no timers.
        let own = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with((*self.pool.connect_options()).clone());
        let mut listener = Listening { listener: PgListener::connect_with(&own).await.map_err(Error::feed)?, own };
        // A lost connection ends the subscription (and is reported) rather
        // than being restored behind the engine's back with changes missed.
        listener.listener.eager_reconnect(false);
        listener.listener.listen(&self.channel).await.map_err(Error::feed)?;
        let stream = futures_util::stream::unfold(Some(listener), |listener| async move {
            let mut listener = listener?;
            loop {
                match listener.listener.try_recv().await {
                    Ok(Some(notification)) => match Change::from_json(notification.payload()) {
                        Ok(change) => return Some((Ok(change), Some(listener))),
                        // Someone else's message on our channel: not a change, not a loss.
                        Err(error) => {
                            tracing::warn!(target: "keysmith::feed", %error, "ignored a notification that is not a change");
                        }
                    },
                    Ok(None) => return Some((Err(Error::feed("the listening connection was lost")), None)),
                    Err(error) => return Some((Err(Error::feed(error)), None)),
                }
            }
        });
        Ok(stream.boxed())
    }
}

/// A listener on a pool of its own, closed when the subscription is
/// dropped. sqlx hands a dropped connection back to its pool by pinging it
/// first, without a deadline: a half-open connection never answers, and
/// would hold a slot of a shared pool for good. A closed pool closes the
/// connection instead.
struct Listening {
    listener: PgListener,
    own: PgPool,
}

impl Drop for Listening {
    fn drop(&mut self) {
        // Marks the pool closed at once (before the listener's connection
        // goes back to it, after this); what the future would wait for is
        // not needed.
        drop(self.own.close());
    }
}
