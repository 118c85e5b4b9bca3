//! What application instances hear of the changes the CLI commits.

use std::time::{Duration, Instant};

use keysmith_core::store::{CacheConfig, Store};
use keysmith_core::{ChangeFeed, Engine, Refusal, RequestContext, ValidationError};

use crate::harness::{Keysmith, str_of};

/// A key the CLI (`ks`, with `flags` before the command) revokes is refused
/// within 5 s by an application instance on `store` that cached it and
/// listens on `feed`, where its cache alone would keep it five minutes.
pub(crate) async fn a_revocation_reaches_an_instance_caching_the_key(
    ks: &Keysmith, flags: &[&str], store: impl Store + 'static, feed: impl ChangeFeed,
) {
    let created = ks.json(&["keys", "create", "--name", "cached"]);
    let (id, raw) = (str_of(&created["key"], "id"), str_of(&created, "raw_key"));
    let cache = CacheConfig::default().with_positive_ttl(Duration::from_secs(300));
    let app = Engine::builder(store).with_cache(cache).with_change_feed(feed).build().unwrap();
    let ctx = RequestContext::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !app.feed_status().unwrap().subscribed {
        assert!(Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.validate(raw, &ctx).await.unwrap();

    let mut revoke = flags.to_vec();
    revoke.extend(["keys", "revoke", id, "--reason", "leaked"]);
    let run = ks.run(&revoke);
    assert!(run.stderr.is_empty(), "a published change noted as unpublished: {}", run.stderr);
    run.ok();
    let revoked = Instant::now();
    loop {
        match app.validate(raw, &ctx).await {
            Err(ValidationError::Refused(Refusal::Revoked)) => break,
            other => assert!(revoked.elapsed() < Duration::from_secs(5), "still {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app.feed_status().unwrap().received >= 1);
    app.shutdown().await;
}
