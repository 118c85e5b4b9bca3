//! Keysmith quickstart: an engine on the in-memory store, one tenant, one key,
//! validated, rotated with a grace period, and revoked.
//!
//! Run it with `cargo run -p example-quickstart`.

use std::sync::Arc;
use std::time::Duration;

use keysmith_core::{Engine, MemoryStore, NewKey, RequestContext, RotationReason, ValidationError};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
    let acme = engine.tenant("quickstart", "acme");

    // 1. Create: the raw key is returned once; the store keeps only its SHA-256.
    let created = acme.create_key(NewKey::new("billing service").with_scopes(["read:invoices"])).await?;
    println!("1. created {} ({}), scopes {:?}", created.key.id, created.key.hint, created.key.scopes);
    println!("   raw key, shown once: {}", created.raw.expose());

    // 2. Validate, as a server would on every request.
    let ctx = RequestContext::new().with_required_scopes(&["read:invoices"]);
    let ok = engine.validate(created.raw.expose(), &ctx).await?;
    println!("2. validated: key {} of tenant {}", ok.key.id, ok.key.tenant);

    // 3. Rotate with a one-hour grace: both secrets work until it ends.
    let rotated = acme.rotate_key(created.key.id, RotationReason::Scheduled, Some(Duration::from_secs(3600))).await?;
    println!("3. rotated to {} ({}); old key is now {}", rotated.key.id, rotated.key.hint, rotated.old.state);
    println!("   new raw key, shown once: {}", rotated.raw.expose());
    let old_still_ok = engine.validate(created.raw.expose(), &ctx).await.is_ok();
    let new_ok = engine.validate(rotated.raw.expose(), &ctx).await.is_ok();
    println!("   during the grace period: old key valid = {old_still_ok}, new key valid = {new_ok}");

    // 4. Revoke the new key: it is refused from now on, for good.
    let revoked = acme.revoke_key(rotated.key.id, "quickstart finished").await?;
    println!("4. revoked {}: state {}", revoked.id, revoked.state);
    match engine.validate(rotated.raw.expose(), &ctx).await {
        Err(ValidationError::Refused(refusal)) => println!("   validating it now: refused ({})", refusal.code()),
        other => return Err(format!("a revoked key must be refused, got {other:?}").into()),
    }
    match acme.reactivate_key(rotated.key.id).await {
        Err(error) => println!("   reactivating it: {error}"),
        Ok(_) => return Err("a revoked key must never come back".into()),
    }
    Ok(())
}
