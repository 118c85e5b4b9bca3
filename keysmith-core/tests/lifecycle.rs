//! Key lifecycle through the engine: creation, states, rotation, expiry,
//! tenant isolation and what never prints.

mod support;

use std::sync::Arc;
use std::time::Duration;

use keysmith_core::store::KeyFilter;
use keysmith_core::{
    Environment, Error, KeyState, NewKey, Refusal, RequestContext, RotationReason, TenantEngine, ValidationError,
};
use support::{engine, t0};

fn refusal(result: Result<keysmith_core::Validation, ValidationError>) -> Refusal {
    match result {
        Err(ValidationError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn new_key(tenant: &TenantEngine) -> keysmith_core::CreatedKey {
    tenant.create_key(NewKey::new("test key").with_scopes(["read"])).await.unwrap()
}

#[tokio::test]
async fn created_key_validates_and_reports_its_tenant() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let created = new_key(&acme).await;
    assert_eq!(created.key.state, KeyState::Active);
    assert_eq!(created.key.environment, Environment::Live);
    assert!(created.raw.expose().starts_with("sk_live_"));
    assert_eq!(created.key.created_at, t0());

    let validation = engine.validate(created.raw.expose(), &RequestContext::new()).await.unwrap();
    assert_eq!(validation.key.id, created.key.id);
    assert_eq!(validation.key.tenant, *acme.tenant());
    assert_eq!(acme.get_key(created.key.id).await.unwrap(), created.key);
}

#[tokio::test]
async fn create_key_rejects_bad_input_and_stores_nothing() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let cases = [
        NewKey::new("  "),
        NewKey::new("x".repeat(257)),
        NewKey::new("ok").with_prefix("Bad_Prefix"),
        NewKey::new("ok").with_scopes(["read users"]),
        NewKey::new("ok").with_expires_at(t0()),
    ];
    for case in cases {
        let err = acme.create_key(case).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    }
    let unknown_policy = acme.create_key(NewKey::new("ok").with_policy(keysmith_core::PolicyId::new())).await;
    assert!(matches!(unknown_policy, Err(Error::NotFound { entity: "policy", .. })));
    assert!(acme.list_keys(&KeyFilter::default()).await.unwrap().is_empty());
}

#[tokio::test]
async fn every_allowed_transition_applies_and_every_other_is_refused() {
    use KeyState::{Active, Expired, Revoked, Rotated, Suspended};
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");

    // Put a fresh key into each state, then try every operation on it.
    for from in KeyState::ALL {
        for to in [Rotated, Revoked, Suspended, Active] {
            let created = acme
                .create_key(NewKey::new("k").with_expires_at(clock.now_plus(Duration::from_secs(3600))))
                .await
                .unwrap();
            let id = created.key.id;
            match from {
                Active => {}
                Rotated => drop(acme.rotate_key(id, RotationReason::Manual, None).await.unwrap()),
                Revoked => drop(acme.revoke_key(id, "setup").await.unwrap()),
                Suspended => drop(acme.suspend_key(id).await.unwrap()),
                Expired => {
                    clock.advance(Duration::from_secs(3600));
                    let result = engine.validate(created.raw.expose(), &RequestContext::new()).await;
                    assert_eq!(refusal(result), Refusal::Expired);
                    clock.set(t0());
                }
            }
            assert_eq!(acme.get_key(id).await.unwrap().state, from);
            let result = match to {
                Rotated => acme.rotate_key(id, RotationReason::Manual, None).await.map(|r| r.old),
                Revoked => acme.revoke_key(id, "test").await,
                Suspended => acme.suspend_key(id).await,
                Active => acme.reactivate_key(id).await,
                Expired => unreachable!(),
            };
            if from.can_become(to) {
                assert_eq!(result.unwrap().state, to, "{from} -> {to}");
            } else {
                match result {
                    Err(Error::InvalidTransition { from: f, to: t }) => assert_eq!((f, t), (from, to)),
                    other => panic!("{from} -> {to} should be refused, got {other:?}"),
                }
                assert_eq!(acme.get_key(id).await.unwrap().state, from, "a refused change changes nothing");
            }
        }
    }
}

trait ClockExt {
    fn now_plus(&self, by: Duration) -> chrono::DateTime<chrono::Utc>;
}

impl ClockExt for keysmith_core::ManualClock {
    fn now_plus(&self, by: Duration) -> chrono::DateTime<chrono::Utc> {
        use keysmith_core::Clock;
        self.now() + chrono::Duration::from_std(by).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rotations_of_one_key_make_exactly_one_new_key() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let created = new_key(&acme).await;
    let id = created.key.id;

    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let acme = acme.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                acme.rotate_key(id, RotationReason::Scheduled, None).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(rotated) => winners.push(rotated),
            Err(Error::InvalidTransition { from: KeyState::Rotated, to: KeyState::Rotated }) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1);
    let keys = acme.list_keys(&KeyFilter::default()).await.unwrap();
    assert_eq!(keys.len(), 2, "the old key and exactly one new key");
    assert_eq!(acme.list_rotations(id).await.unwrap().len(), 1);
    assert_eq!(keys.iter().filter(|k| k.state == KeyState::Active).count(), 1);
}

#[tokio::test]
async fn rotated_key_stops_validating_after_grace() {
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");
    let created = new_key(&acme).await;
    let rotated =
        acme.rotate_key(created.key.id, RotationReason::Scheduled, Some(Duration::from_secs(600))).await.unwrap();

    assert_eq!(rotated.key.name, created.key.name);
    assert_eq!(rotated.key.scopes, created.key.scopes);
    assert_ne!(rotated.key.id, created.key.id);
    assert_eq!(rotated.old.state, KeyState::Rotated);
    assert_eq!(rotated.record.grace_expires_at, t0() + chrono::Duration::seconds(600));
    assert_eq!(rotated.record.new_hash.to_hex().len(), 64);
    assert_ne!(rotated.record.old_hash, rotated.record.new_hash);

    let ctx = RequestContext::new();
    clock.advance(Duration::from_secs(599));
    assert!(engine.validate(created.raw.expose(), &ctx).await.is_ok(), "old key valid in grace");
    assert!(engine.validate(rotated.raw.expose(), &ctx).await.is_ok(), "new key valid");

    clock.advance(Duration::from_secs(1));
    assert_eq!(refusal(engine.validate(created.raw.expose(), &ctx).await), Refusal::Revoked);
    assert!(engine.validate(rotated.raw.expose(), &ctx).await.is_ok());

    let report = engine.sweep().await.unwrap();
    assert_eq!(report.rotations_ended, 1);
    let old = acme.get_key(created.key.id).await.unwrap();
    assert_eq!(old.state, KeyState::Revoked);
    assert_eq!(old.revoked_reason.as_deref(), Some(keysmith_core::GRACE_ENDED_REASON));
}

#[tokio::test]
async fn rotation_with_zero_grace_stops_the_old_key_at_once() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let created = new_key(&acme).await;
    let rotated = acme.rotate_key(created.key.id, RotationReason::Compromised, Some(Duration::ZERO)).await.unwrap();
    let ctx = RequestContext::new();
    assert_eq!(refusal(engine.validate(created.raw.expose(), &ctx).await), Refusal::Revoked);
    assert!(engine.validate(rotated.raw.expose(), &ctx).await.is_ok());
    // A rotated key cannot be rotated again, but can be revoked.
    assert!(matches!(
        acme.rotate_key(created.key.id, RotationReason::Manual, None).await,
        Err(Error::InvalidTransition { from: KeyState::Rotated, .. })
    ));
    assert_eq!(acme.revoke_key(created.key.id, "cleanup").await.unwrap().state, KeyState::Revoked);
}

#[tokio::test]
async fn rotation_without_grace_uses_the_engine_default() {
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");
    let created = new_key(&acme).await;
    let rotated = acme.rotate_key(created.key.id, RotationReason::Manual, None).await.unwrap();
    assert_eq!(rotated.record.grace_ttl, keysmith_core::DEFAULT_ROTATION_GRACE);
    clock.advance(keysmith_core::DEFAULT_ROTATION_GRACE - Duration::from_secs(1));
    assert!(engine.validate(created.raw.expose(), &RequestContext::new()).await.is_ok());
}

#[tokio::test]
async fn key_past_its_expiry_is_refused_and_becomes_expired() {
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");
    let expires_at = t0() + chrono::Duration::hours(1);
    let created = acme.create_key(NewKey::new("short-lived").with_expires_at(expires_at)).await.unwrap();
    let ctx = RequestContext::new();
    assert!(engine.validate(created.raw.expose(), &ctx).await.is_ok());

    clock.advance(Duration::from_secs(3600));
    assert_eq!(refusal(engine.validate(created.raw.expose(), &ctx).await), Refusal::Expired);
    assert_eq!(acme.get_key(created.key.id).await.unwrap().state, KeyState::Expired);
    // Expired is terminal.
    assert!(matches!(acme.reactivate_key(created.key.id).await, Err(Error::InvalidTransition { .. })));
    assert_eq!(refusal(engine.validate(created.raw.expose(), &ctx).await), Refusal::Expired);
}

#[tokio::test]
async fn sweeper_expires_keys_nobody_presented() {
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");
    let soon = t0() + chrono::Duration::minutes(5);
    let doomed = acme.create_key(NewKey::new("a").with_expires_at(soon)).await.unwrap();
    let lasting = acme.create_key(NewKey::new("b")).await.unwrap();
    assert_eq!(engine.sweep().await.unwrap(), keysmith_core::SweepReport::default());

    clock.advance(Duration::from_secs(300));
    let report = engine.sweep().await.unwrap();
    assert_eq!(report.expired, 1);
    assert_eq!(acme.get_key(doomed.key.id).await.unwrap().state, KeyState::Expired);
    assert_eq!(acme.get_key(lasting.key.id).await.unwrap().state, KeyState::Active);
    assert_eq!(engine.sweep().await.unwrap().expired, 0, "sweeping twice changes nothing");
}

#[tokio::test]
async fn suspended_key_is_refused_until_reactivated() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let created = new_key(&acme).await;
    let ctx = RequestContext::new();
    acme.suspend_key(created.key.id).await.unwrap();
    assert_eq!(refusal(engine.validate(created.raw.expose(), &ctx).await), Refusal::Suspended);
    acme.reactivate_key(created.key.id).await.unwrap();
    assert!(engine.validate(created.raw.expose(), &ctx).await.is_ok());
}

#[tokio::test]
async fn revoked_key_never_comes_back() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let created = new_key(&acme).await;
    let revoked = acme.revoke_key(created.key.id, "leaked in a log").await.unwrap();
    assert_eq!(revoked.revoked_reason.as_deref(), Some("leaked in a log"));
    let id = created.key.id;
    assert!(matches!(
        acme.reactivate_key(id).await,
        Err(Error::InvalidTransition { from: KeyState::Revoked, to: KeyState::Active })
    ));
    assert!(matches!(acme.suspend_key(id).await, Err(Error::InvalidTransition { .. })));
    assert!(matches!(acme.rotate_key(id, RotationReason::Manual, None).await, Err(Error::InvalidTransition { .. })));
    assert!(matches!(acme.revoke_key(id, "again").await, Err(Error::InvalidTransition { .. })));
    assert_eq!(acme.get_key(id).await.unwrap().revoked_reason.as_deref(), Some("leaked in a log"));
    assert_eq!(refusal(engine.validate(created.raw.expose(), &RequestContext::new()).await), Refusal::Revoked);
}

#[tokio::test]
async fn malformed_keys_are_refused_without_a_store_call() {
    let (store, counter) = support::counting_store();
    let engine = support::builder(store).build().unwrap();
    let created = engine.tenant("app", "acme").create_key(NewKey::new("k")).await.unwrap();
    let raw = created.raw.expose();
    let body = &raw["sk_live_".len()..];
    let flipped = {
        let mut chars: Vec<char> = raw.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    let cases = [
        flipped,
        format!("sk_prod_{body}"),
        "k".repeat(10 * 1024),
        String::new(),
        format!("sk_live_{}ü", &body[..body.len() - 2]),
        "🔑🔑🔑".to_owned(),
        format!("{raw} "),
        format!("sk_live_{body}{body}"),
    ];
    let before = counter.calls();
    for case in &cases {
        assert_eq!(refusal(engine.validate(case, &RequestContext::new()).await), Refusal::Malformed, "{case:?}");
    }
    assert_eq!(counter.calls(), before, "no malformed key reaches the store");

    // A well-formed key that does not exist does reach the store, and is unknown.
    let other = engine.tenant("app", "acme").create_key(NewKey::new("other")).await.unwrap();
    engine.tenant("app", "acme").revoke_key(other.key.id, "x").await.unwrap();
    let before = counter.calls();
    let unknown = keysmith_core::store::MemoryStore::new();
    let stranger = keysmith_core::Engine::builder(Arc::new(unknown)).build().unwrap();
    let foreign = stranger.tenant("a", "b").create_key(NewKey::new("x")).await.unwrap();
    assert_eq!(refusal(engine.validate(foreign.raw.expose(), &RequestContext::new()).await), Refusal::Unknown);
    assert_eq!(counter.calls(), before + 1);
}

#[tokio::test]
async fn a_tenant_cannot_touch_another_tenants_key() {
    let (engine, _) = engine();
    let a = engine.tenant("app", "a");
    let b = engine.tenant("app", "b");
    let other_app = engine.tenant("other-app", "a");
    let key = new_key(&b).await.key;

    for intruder in [&a, &other_app] {
        let not_found = |r: Result<_, Error>| matches!(r, Err(Error::NotFound { entity: "key", .. }));
        assert!(not_found(intruder.get_key(key.id).await));
        assert!(intruder.list_keys(&KeyFilter::default()).await.unwrap().is_empty());
        assert!(not_found(intruder.rotate_key(key.id, RotationReason::Manual, None).await.map(|r| r.key)));
        assert!(not_found(intruder.revoke_key(key.id, "x").await));
        assert!(not_found(intruder.suspend_key(key.id).await));
        assert!(not_found(intruder.reactivate_key(key.id).await));
        assert!(not_found(intruder.list_rotations(key.id).await.map(|_| key.clone())));
    }
    assert_eq!(b.get_key(key.id).await.unwrap().state, KeyState::Active, "nothing changed");
}

#[tokio::test]
async fn list_keys_filters_and_pages() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let mut ids = Vec::new();
    for i in 0..5 {
        let env = if i % 2 == 0 { Environment::Live } else { Environment::Test };
        ids.push(acme.create_key(NewKey::new(format!("k{i}")).with_environment(env)).await.unwrap().key.id);
    }
    acme.suspend_key(ids[0]).await.unwrap();

    let all = acme.list_keys(&KeyFilter::default()).await.unwrap();
    assert_eq!(all.iter().map(|k| k.id).collect::<Vec<_>>(), ids, "ordered by creation");
    let test_env = KeyFilter { environment: Some(Environment::Test), ..KeyFilter::default() };
    assert_eq!(acme.list_keys(&test_env).await.unwrap().len(), 2);
    let suspended = KeyFilter { state: Some(KeyState::Suspended), ..KeyFilter::default() };
    assert_eq!(acme.list_keys(&suspended).await.unwrap()[0].id, ids[0]);
    let page = KeyFilter { page: keysmith_core::store::Page::new(2, 2), ..KeyFilter::default() };
    assert_eq!(acme.list_keys(&page).await.unwrap().iter().map(|k| k.id).collect::<Vec<_>>(), ids[2..4]);
}

#[tokio::test]
async fn keys_can_use_their_own_prefix_and_environment() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let created =
        acme.create_key(NewKey::new("k").with_prefix("acme").with_environment(Environment::Dev)).await.unwrap();
    assert!(created.raw.expose().starts_with("acme_dev_"));
    assert!(created.key.hint.starts_with("acme_dev_…"));
    assert!(engine.validate(created.raw.expose(), &RequestContext::new()).await.is_ok());
    let rotated = acme.rotate_key(created.key.id, RotationReason::Manual, None).await.unwrap();
    assert!(rotated.raw.expose().starts_with("acme_dev_"), "rotation keeps prefix and environment");
}

#[tokio::test]
async fn a_store_that_went_away_is_an_error_not_a_refusal() {
    let store = Arc::new(keysmith_core::MemoryStore::new());
    let engine = support::builder(store.clone()).build().unwrap();
    let created = engine.tenant("app", "acme").create_key(NewKey::new("k")).await.unwrap();
    keysmith_core::Store::close(&*store).await;
    match engine.validate(created.raw.expose(), &RequestContext::new()).await {
        Err(ValidationError::Failed(Error::Store { .. })) => {}
        other => panic!("expected a store error, got {other:?}"),
    }
}
