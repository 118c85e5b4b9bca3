//! The store's own lifecycle: migrations, ping, close.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Migrating again is harmless; ping answers.
pub async fn migrate_is_idempotent_and_ping_answers(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.get_key(&acme(), key.key.id).await.unwrap(), Some(key), "data survives migrations");
}

/// After `close`, calls fail with a store error.
pub async fn closed_store_fails_with_store_error(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    store.close().await;
    assert!(matches!(store.ping().await, Err(Error::Store { .. })));
    assert!(matches!(store.get_key(&acme(), key.key.id).await, Err(Error::Store { .. })));
    assert!(matches!(store.insert_key(&sample_key(&acme())).await, Err(Error::Store { .. })));
}
