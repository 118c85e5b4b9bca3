//! A change feed inside one process.

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::broadcast;

use super::{Change, ChangeFeed, ChangeStream};
use crate::{Error, Result};

/// A [`ChangeFeed`] for engines in one process (several engines on one
/// store, tests). A subscriber that falls more than the capacity behind
/// loses its subscription, as a network feed's would.
#[derive(Debug)]
pub struct LocalChangeFeed {
    sender: broadcast::Sender<Change>,
}

impl Default for LocalChangeFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalChangeFeed {
    /// A feed that buffers 1024 changes per subscriber.
    #[must_use]
    pub fn new() -> Self {
        Self::with_capacity(1024)
    }

    /// A feed that buffers `capacity` changes (at least one) per subscriber.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self { sender: broadcast::channel(capacity.max(1)).0 }
    }
}

#[async_trait]
impl ChangeFeed for LocalChangeFeed {
    async fn publish(&self, change: &Change) -> Result<()> {
        // No subscriber is not a failure: nobody has anything to evict.
        let _ = self.sender.send(change.clone());
        Ok(())
    }

    async fn subscribe(&self) -> Result<ChangeStream> {
        let receiver = self.sender.subscribe();
        let stream = futures_util::stream::unfold(Some(receiver), |receiver| async move {
            let mut receiver = receiver?;
            match receiver.recv().await {
                Ok(change) => Some((Ok(change), Some(receiver))),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Some((Err(Error::feed(format!("fell {missed} changes behind"))), None))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(stream.boxed())
    }
}
