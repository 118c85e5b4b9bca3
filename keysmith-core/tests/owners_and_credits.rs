//! Owners (listing, the per-owner key limit, a quota shared by an owner's
//! keys) and credits (spent, refused, refilled, given back) through the
//! engine.

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone as _, Utc};
use keysmith_core::store::{KeyFilter, ProbedStore, StoreOp, StoreProbe};
use keysmith_core::usage::UsageConfig;
use keysmith_core::{
    Clock, CreatedKey, Credits, CreditsStatus, Engine, Error, LimitBy, ManualClock, MemoryStore, NewKey, Period,
    PolicyId, PolicySpec, Refill, Refusal, RequestContext, RotationReason, Store, TenantEngine, UsageId, UsageRecord,
    Validation, ValidationError,
};
use support::{engine, t0};
use tokio::sync::Notify;

fn refusal(result: Result<Validation, ValidationError>) -> Refusal {
    match result {
        Err(ValidationError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn one_key_per_owner_is_refused_a_second_until_the_first_is_revoked() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("free").with_max_active_keys_per_owner(1)).await.unwrap();
    let first = acme.create_key(NewKey::new("k").with_owner("user_1").with_policy(policy.id)).await.unwrap();
    assert_eq!(first.key.owner_id.as_deref(), Some("user_1"));

    let second = acme.create_key(NewKey::new("k").with_owner("user_1").with_policy(policy.id)).await;
    assert!(matches!(second, Err(Error::OwnerKeyLimit { limit: 1, .. })), "{second:?}");
    // Rotation keeps the count: the replacement takes the rotated key's place.
    let rotated = acme.rotate_key(first.key.id, RotationReason::Manual, None).await.unwrap();
    assert_eq!(rotated.key.owner_id.as_deref(), Some("user_1"), "rotation keeps the owner");
    let third = acme.create_key(NewKey::new("k").with_owner("user_1").with_policy(policy.id)).await;
    assert!(matches!(third, Err(Error::OwnerKeyLimit { .. })));
    // Another owner, or no owner, is not held to user_1's count.
    acme.create_key(NewKey::new("k").with_owner("user_2").with_policy(policy.id)).await.unwrap();
    acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();

    acme.revoke_key(rotated.key.id, "replaced").await.unwrap();
    acme.create_key(NewKey::new("k").with_owner("user_1").with_policy(policy.id)).await.unwrap();
    let of_user = KeyFilter { owner_id: Some("user_1".into()), ..KeyFilter::default() };
    assert_eq!(acme.list_keys(&of_user).await.unwrap().len(), 3, "the first key, its replacement and the new one");
}

#[tokio::test]
async fn bad_owner_ids_and_limits_are_refused_before_anything_is_stored() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    for bad in ["", " padded", "new\nline", "nul\0", &"x".repeat(256)] {
        let result = acme.create_key(NewKey::new("k").with_owner(bad)).await;
        assert!(matches!(result, Err(Error::InvalidInput { field: "owner_id", .. })), "{bad:?}: {result:?}");
        let listed = acme.list_keys(&KeyFilter { owner_id: Some(bad.to_owned()), ..KeyFilter::default() }).await;
        assert!(matches!(listed, Err(Error::InvalidInput { field: "owner_id", .. })), "{bad:?}");
    }
    assert!(acme.list_keys(&KeyFilter::default()).await.unwrap().is_empty());
    for keys in [0, PolicySpec::MAX_KEYS_PER_OWNER + 1] {
        let spec = PolicySpec::new("p").with_max_active_keys_per_owner(keys);
        let result = acme.create_policy(spec).await;
        assert!(matches!(result, Err(Error::InvalidInput { field: "max_active_keys_per_owner", .. })), "{keys}");
    }
}

#[tokio::test]
async fn each_passed_request_spends_its_cost_and_an_empty_key_is_refused() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("k").with_credits(Credits::new(3))).await.unwrap();
    let raw = created.raw.expose();

    let first = engine.validate(raw, &RequestContext::new()).await.unwrap();
    let status = first.credits.expect("a key with credits reports them");
    assert_eq!((status.remaining, status.cost, status.refills_at), (2, 1, None));
    let second = engine.validate(raw, &RequestContext::new().with_cost(2)).await.unwrap();
    assert_eq!(second.credits.unwrap().remaining, 0);
    let free = engine.validate(raw, &RequestContext::new().with_cost(0)).await.unwrap();
    assert_eq!(free.credits.unwrap().remaining, 0, "a zero cost passes and spends nothing");
    // What was left, for the `RateLimit` headers; nothing was spent.
    let left = CreditsStatus { remaining: 0, cost: 0, refill: None, refills_at: None };
    assert_eq!(
        refusal(engine.validate(raw, &RequestContext::new()).await),
        Refusal::CreditsExhausted { refills_at: None, status: left }
    );

    let topped = acme.add_credits(created.key.id, 5).await.unwrap();
    assert_eq!(topped.credits.unwrap().remaining, 5);
    assert_eq!(refusal(engine.validate(raw, &RequestContext::new().with_cost(6)).await).code(), "credits_exhausted");
    assert_eq!(acme.get_key(created.key.id).await.unwrap().credits.unwrap().remaining, 5, "a refusal spends nothing");
    // Removed credits no longer limit the key.
    acme.set_credits(created.key.id, None).await.unwrap();
    let unlimited = engine.validate(raw, &RequestContext::new().with_cost(100)).await.unwrap();
    assert_eq!(unlimited.credits, None);
}

#[tokio::test]
async fn credits_refill_at_the_utc_boundary_and_survive_rotation() {
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");
    let credits = Credits::new(1).with_refill(2, Period::Day);
    let created = acme.create_key(NewKey::new("k").with_credits(credits)).await.unwrap();
    let raw = created.raw.expose();
    let midnight = Period::Day.next_start(t0());

    assert_eq!(engine.validate(raw, &RequestContext::new()).await.unwrap().credits.unwrap().refills_at, Some(midnight));
    let refill = Some(Refill { amount: 2, every: Period::Day });
    let left = CreditsStatus { remaining: 0, cost: 0, refill, refills_at: Some(midnight) };
    assert_eq!(
        refusal(engine.validate(raw, &RequestContext::new()).await),
        Refusal::CreditsExhausted { refills_at: Some(midnight), status: left }
    );
    // A rotation neither refills nor splits them.
    let rotated = acme.rotate_key(created.key.id, RotationReason::Scheduled, None).await.unwrap();
    assert_eq!(rotated.key.credits.map(|c| c.remaining), Some(0));
    assert!(refusal(engine.validate(rotated.raw.expose(), &RequestContext::new()).await).code() == "credits_exhausted");

    clock.set(midnight);
    assert_eq!(acme.get_key(rotated.key.id).await.unwrap().credits.unwrap().remaining, 2, "shown as refilled");
    assert_eq!(engine.validate(raw, &RequestContext::new()).await.unwrap().credits.unwrap().remaining, 1);
    assert_eq!(
        engine.validate(rotated.raw.expose(), &RequestContext::new()).await.unwrap().credits.unwrap().remaining,
        0
    );
    assert!(engine.validate(raw, &RequestContext::new()).await.is_err());
}

/// A refund made after the credits' refill boundary gives nothing back:
/// the request spent credits of the period the refill replaced, and the new
/// period's refill stays what the refill gives.
#[tokio::test]
async fn a_refund_after_a_refill_does_not_add_to_the_new_period() {
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");
    clock.set(Utc.with_ymd_and_hms(2026, 3, 14, 23, 59, 59).unwrap());
    let credits = Credits::new(5).with_refill(5, Period::Day);
    let created = acme.create_key(NewKey::new("k").with_credits(credits)).await.unwrap();
    let raw = created.raw.expose();
    let remaining = || async { acme.get_key(created.key.id).await.unwrap().credits.unwrap().remaining };

    let late = engine.validate(raw, &RequestContext::new()).await.unwrap();
    assert_eq!(remaining().await, 4);
    clock.set(Utc.with_ymd_and_hms(2026, 3, 15, 0, 0, 1).unwrap());
    engine.validate(raw, &RequestContext::new()).await.unwrap();
    assert_eq!(remaining().await, 4, "refilled to 5, one spent");
    assert!(engine.refund(&late), "the rest of what it spent is given back");
    assert_eq!(remaining().await, 4, "the day before's credit is not added to today's");
    // Within one period a refund gives back, as before.
    let today = engine.validate(raw, &RequestContext::new()).await.unwrap();
    assert_eq!(remaining().await, 3);
    assert!(engine.refund(&today));
    assert_eq!(remaining().await, 4);
}

#[tokio::test]
async fn a_request_refused_for_another_reason_spends_no_credits() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let policy = acme
        .create_policy(
            PolicySpec::new("p")
                .with_rate_limit(1, Duration::from_secs(60))
                .with_allowed_origins(["https://app.example.com"]),
        )
        .await
        .unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id).with_credits(Credits::new(1))).await.unwrap();
    let raw = created.raw.expose();
    let remaining = || async { acme.get_key(created.key.id).await.unwrap().credits.unwrap().remaining };

    let wrong_origin = RequestContext::new().with_origin("https://evil.example");
    assert_eq!(refusal(engine.validate(raw, &wrong_origin).await), Refusal::OriginNotAllowed);
    let scopes = ["admin".to_owned()];
    let missing_scope = RequestContext::new().with_required_scopes(&scopes);
    assert!(matches!(refusal(engine.validate(raw, &missing_scope).await), Refusal::InsufficientScope { .. }));
    assert_eq!(remaining().await, 1);

    // Refused after validation (a route's scopes): the credits come back,
    // and so does the rate-limit request.
    let passed = engine.validate(raw, &RequestContext::new()).await.unwrap();
    assert_eq!(remaining().await, 0);
    assert!(engine.refund(&passed));
    assert_eq!(remaining().await, 1);
    assert!(!engine.refund(&passed), "a second refund gives nothing");
    assert_eq!(remaining().await, 1);
    engine.validate(raw, &RequestContext::new()).await.unwrap();

    // Exhausted credits give back the rate-limit request they were checked after.
    let other = acme.create_key(NewKey::new("k2").with_policy(policy.id).with_credits(Credits::new(0))).await.unwrap();
    assert_eq!(refusal(engine.validate(other.raw.expose(), &RequestContext::new()).await).code(), "credits_exhausted");
    acme.add_credits(other.key.id, 1).await.unwrap();
    engine.validate(other.raw.expose(), &RequestContext::new()).await.expect("the rate limit was not spent");
}

#[tokio::test]
async fn credit_values_are_bounded_everywhere() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let too_many = acme.create_key(NewKey::new("k").with_credits(Credits::new(Credits::MAX + 1))).await;
    assert!(matches!(too_many, Err(Error::InvalidInput { field: "credits.remaining", .. })));
    let zero_refill =
        acme.create_key(NewKey::new("k").with_credits(Credits::new(1).with_refill(0, Period::Month))).await;
    assert!(matches!(zero_refill, Err(Error::InvalidInput { field: "credits.refill.amount", .. })));
    assert!(acme.list_keys(&KeyFilter::default()).await.unwrap().is_empty());

    let created = acme.create_key(NewKey::new("k").with_credits(Credits::new(Credits::MAX))).await.unwrap();
    assert!(matches!(acme.add_credits(created.key.id, 1).await, Err(Error::InvalidInput { field: "amount", .. })));
    assert!(matches!(acme.add_credits(created.key.id, 0).await, Err(Error::InvalidInput { field: "amount", .. })));
    let plain = acme.create_key(NewKey::new("plain")).await.unwrap();
    assert!(matches!(acme.add_credits(plain.key.id, 1).await, Err(Error::InvalidInput { field: "credits", .. })));
}

/// A key of `owner` under `policy`; its raw secret.
async fn owned_key(acme: &TenantEngine, policy: PolicyId, owner: &str) -> String {
    acme.create_key(NewKey::new("k").with_owner(owner).with_policy(policy)).await.unwrap().raw.expose().to_owned()
}

/// True if `raw` passes; false if it is refused with `quota_exceeded`.
async fn within_quota(engine: &Engine, raw: &str) -> bool {
    match engine.validate(raw, &RequestContext::new()).await {
        Ok(_) => true,
        Err(ValidationError::Refused(Refusal::QuotaExceeded { .. })) => false,
        Err(other) => panic!("expected a pass or quota_exceeded, got {other:?}"),
    }
}

#[tokio::test]
async fn under_limit_by_owner_an_owners_keys_share_one_quota() {
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");
    let shared = PolicySpec::new("per-customer").with_quota(Some(3), None).with_limit_by(LimitBy::Owner);
    let shared = acme.create_policy(shared).await.unwrap().id;
    let per_key = acme.create_policy(PolicySpec::new("per-key").with_quota(Some(3), None)).await.unwrap().id;
    let (first, second) = (owned_key(&acme, shared, "cust_1").await, owned_key(&acme, shared, "cust_1").await);
    let other_owner = owned_key(&acme, shared, "cust_2").await;

    // One customer, two keys, one daily quota of 3.
    for raw in [&first, &second, &first] {
        assert!(within_quota(&engine, raw).await);
    }
    assert!(!within_quota(&engine, &second).await, "the owner's quota is spent");
    assert!(!within_quota(&engine, &first).await, "refusals spend nothing, and nothing came back");
    // Another customer has its own quota; a request refused after
    // validation gives its quota request back to that customer.
    let passed = engine.validate(&other_owner, &RequestContext::new()).await.unwrap();
    assert!(engine.refund(&passed));
    for _ in 0..3 {
        assert!(within_quota(&engine, &other_owner).await);
    }
    assert!(!within_quota(&engine, &other_owner).await);
    // Under `limit_by: key` the same customer's keys have a quota each.
    let (third, fourth) = (owned_key(&acme, per_key, "cust_1").await, owned_key(&acme, per_key, "cust_1").await);
    for raw in [&third, &third, &third, &fourth, &fourth, &fourth] {
        assert!(within_quota(&engine, raw).await);
    }
    assert!(!within_quota(&engine, &third).await && !within_quota(&engine, &fourth).await);
    // The owner's quota is back at the next UTC day, and a request of one of
    // its keys refused afterwards (no credits left) gives it back.
    clock.set(Period::Day.next_start(clock.now()));
    let broke = owned_key(&acme, shared, "cust_1").await;
    acme.set_owner_credits("cust_1", Some(Credits::new(0))).await.unwrap();
    for _ in 0..5 {
        let refused = refusal(engine.validate(&broke, &RequestContext::new()).await);
        assert_eq!(refused.code(), "credits_exhausted");
    }
    acme.set_owner_credits("cust_1", None).await.unwrap();
    for raw in [&second, &first, &second] {
        assert!(within_quota(&engine, raw).await);
    }
    assert!(!within_quota(&engine, &first).await);
}

#[tokio::test]
async fn an_owners_quota_counts_what_every_instance_recorded_for_any_of_its_keys() {
    let clock = ManualClock::new(t0());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let config = UsageConfig { quota_refresh: Duration::from_secs(5), ..UsageConfig::default() };
    let on_store =
        || Engine::builder(Arc::clone(&store)).with_clock(clock.clone()).with_usage_config(config).build().unwrap();
    let first = on_store();
    let acme = first.tenant("app", "acme");
    let spec = PolicySpec::new("per-customer").with_quota(Some(4), None).with_limit_by(LimitBy::Owner);
    let policy = acme.create_policy(spec).await.unwrap().id;
    let (a, b) = (owned_key(&acme, policy, "cust_1").await, owned_key(&acme, policy, "cust_1").await);
    let other_owner = owned_key(&acme, policy, "cust_2").await;

    // The first instance serves one request of each of the owner's keys
    // (and one of another owner's) and records them.
    for raw in [&a, &b, &other_owner] {
        let ok = first.validate(raw, &RequestContext::new()).await.unwrap();
        let record = UsageRecord {
            id: UsageId::new(),
            key_id: ok.key.id,
            tenant: ok.key.tenant.clone().into(),
            endpoint: "/".into(),
            method: "GET".into(),
            status: 200,
            ip: None,
            user_agent: None,
            latency: Duration::ZERO,
            timestamp: clock.now(),
        };
        first.record_usage(record);
    }
    first.flush_usage().await;
    // After a refresh the first still counts two for the owner, not four.
    clock.advance(Duration::from_secs(6));
    assert!(within_quota(&first, &a).await);
    assert!(within_quota(&first, &b).await);
    assert!(!within_quota(&first, &a).await);

    // A second instance reads the owner's two written requests from the
    // store: two more fit (it does not see the first's unwritten ones).
    let second = on_store();
    assert!(within_quota(&second, &b).await);
    assert!(within_quota(&second, &a).await);
    assert!(!within_quota(&second, &b).await);
}

/// Uses left after `raw` passes, or `None` if it is refused with
/// `credits_exhausted`.
async fn credits_left(engine: &Engine, raw: &str) -> Option<u64> {
    match engine.validate(raw, &RequestContext::new()).await {
        Ok(validation) => Some(validation.credits.expect("the request spent credits").remaining),
        Err(ValidationError::Refused(Refusal::CreditsExhausted { .. })) => None,
        Err(other) => panic!("expected a pass or credits_exhausted, got {other:?}"),
    }
}

#[tokio::test]
async fn under_limit_by_owner_an_owners_keys_spend_one_balance_that_refills_at_the_utc_boundary() {
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");
    let shared = acme.create_policy(PolicySpec::new("shared").with_limit_by(LimitBy::Owner)).await.unwrap();
    let credits = acme.set_owner_credits("cus_1", Some(Credits::new(3).with_refill(2, Period::Day))).await.unwrap();
    let midnight = Period::Day.next_start(t0());
    assert_eq!(credits.and_then(|c| c.refilled_at), Some(Period::Day.start_of(t0())), "stamped with today");
    let (first, second) = (owned_key(&acme, shared.id, "cus_1").await, owned_key(&acme, shared.id, "cus_1").await);
    let other_owner = owned_key(&acme, shared.id, "cus_2").await;

    assert_eq!(credits_left(&engine, &first).await, Some(2));
    assert_eq!(credits_left(&engine, &second).await, Some(1), "one balance for both keys");
    let passed = engine.validate(&first, &RequestContext::new().with_cost(1)).await.unwrap();
    let status = passed.credits.unwrap();
    assert_eq!((status.remaining, status.cost, status.refills_at), (0, 1, Some(midnight)));
    assert!(matches!(
        refusal(engine.validate(&second, &RequestContext::new()).await),
        Refusal::CreditsExhausted { refills_at: Some(at), status } if at == midnight && status.remaining == 0
    ));
    assert_eq!(acme.owner_credits("cus_1").await.unwrap().map(|c| c.remaining), Some(0));
    // Another owner has no balance, so nothing limits it by credits.
    let unlimited = engine.validate(&other_owner, &RequestContext::new()).await.unwrap();
    assert_eq!(unlimited.credits, None);

    clock.set(midnight);
    assert_eq!(acme.owner_credits("cus_1").await.unwrap().map(|c| c.remaining), Some(2), "shown as refilled");
    assert_eq!(credits_left(&engine, &second).await, Some(1));
    assert_eq!(credits_left(&engine, &first).await, Some(0));
    assert_eq!(credits_left(&engine, &first).await, None);
    // A top-up, then a request refused after validation gives its cost back
    // to the owner.
    assert_eq!(acme.add_owner_credits("cus_1", 5).await.unwrap().remaining, 5);
    let passed = engine.validate(&second, &RequestContext::new().with_cost(2)).await.unwrap();
    assert_eq!(passed.credits.map(|c| c.remaining), Some(3));
    assert!(engine.refund(&passed));
    assert_eq!(acme.owner_credits("cus_1").await.unwrap().map(|c| c.remaining), Some(5));
    // Removed: the owner's keys are no longer limited by credits.
    assert_eq!(acme.set_owner_credits("cus_1", None).await.unwrap(), None);
    assert_eq!(engine.validate(&first, &RequestContext::new()).await.unwrap().credits, None);
    assert_eq!(acme.owner_credits("cus_1").await.unwrap(), None);
}

#[tokio::test]
async fn owner_credits_belong_to_the_tenant_and_leave_limit_by_key_alone() {
    let (engine, _) = engine();
    let (acme, globex) = (engine.tenant("app", "acme"), engine.tenant("app", "globex"));
    let per_key = acme.create_policy(PolicySpec::new("per key")).await.unwrap();
    acme.set_owner_credits("cus_1", Some(Credits::new(1))).await.unwrap();
    // Under limit_by key, each key spends its own credits, never the owner's.
    let created = acme
        .create_key(NewKey::new("k").with_owner("cus_1").with_policy(per_key.id).with_credits(Credits::new(2)))
        .await;
    let raw = created.unwrap().raw.expose().to_owned();
    assert_eq!(credits_left(&engine, &raw).await, Some(1));
    assert_eq!(credits_left(&engine, &raw).await, Some(0));
    assert_eq!(acme.owner_credits("cus_1").await.unwrap().map(|c| c.remaining), Some(1));
    let no_credits = owned_key(&acme, per_key.id, "cus_1").await;
    assert_eq!(engine.validate(&no_credits, &RequestContext::new()).await.unwrap().credits, None);

    // The same owner id in another tenant is another owner.
    assert_eq!(globex.owner_credits("cus_1").await.unwrap(), None);
    let shared = globex.create_policy(PolicySpec::new("shared").with_limit_by(LimitBy::Owner)).await.unwrap();
    let theirs = owned_key(&globex, shared.id, "cus_1").await;
    assert_eq!(engine.validate(&theirs, &RequestContext::new()).await.unwrap().credits, None);
    assert!(matches!(globex.add_owner_credits("cus_1", 1).await, Err(Error::InvalidInput { field: "credits", .. })));
    assert_eq!(acme.owner_credits("cus_1").await.unwrap().map(|c| c.remaining), Some(1));
}

#[tokio::test]
async fn a_key_that_spends_its_owners_credits_takes_none_of_its_own() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let shared = acme.create_policy(PolicySpec::new("shared").with_limit_by(LimitBy::Owner)).await.unwrap();
    let owned = NewKey::new("k").with_owner("cus_1").with_policy(shared.id);
    let refused = acme.create_key(owned.clone().with_credits(Credits::new(5))).await;
    assert!(
        matches!(&refused, Err(Error::OwnerLimitedCredits { policy_id, owner_id }) if *policy_id == shared.id && owner_id == "cus_1"),
        "{refused:?}"
    );
    assert!(acme.list_keys(&KeyFilter::default()).await.unwrap().is_empty(), "no key was created");
    let created = acme.create_key(owned).await.unwrap();
    let refused = acme.set_credits(created.key.id, Some(Credits::new(5))).await;
    assert!(matches!(refused, Err(Error::OwnerLimitedCredits { .. })), "{refused:?}");
    let message = refused.unwrap_err().to_string();
    assert!(message.contains(&shared.id.to_string()) && message.contains("\"cus_1\""), "{message}");
    assert_eq!(acme.get_key(created.key.id).await.unwrap().credits, None);
    acme.set_credits(created.key.id, None).await.expect("removing is always allowed");
    // A key without an owner keeps its own credits under the same policy.
    let ownerless = acme.create_key(NewKey::new("k").with_policy(shared.id).with_credits(Credits::new(1))).await;
    assert_eq!(credits_left(&engine, ownerless.unwrap().raw.expose()).await, Some(0));
}

/// A key of `acme` under `policy`, with an owner and credits when given.
async fn metered_key(acme: &TenantEngine, policy: PolicyId, owner: Option<&str>, credits: Option<u64>) -> CreatedKey {
    let mut new = NewKey::new("k").with_policy(policy);
    if let Some(owner) = owner {
        new = new.with_owner(owner);
    }
    if let Some(credits) = credits {
        new = new.with_credits(Credits::new(credits));
    }
    acme.create_key(new).await.unwrap()
}

#[tokio::test]
async fn a_policy_cannot_start_limiting_by_owner_while_keys_of_owners_under_it_hold_credits() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let metered = acme.create_policy(PolicySpec::new("metered")).await.unwrap();
    let first = metered_key(&acme, metered.id, Some("cus_1"), Some(1)).await;
    let second = metered_key(&acme, metered.id, Some("cus_2"), Some(5)).await;
    // One lineage, two keys that validate (the old one within its grace).
    let replaced = acme.rotate_key(first.key.id, RotationReason::Manual, None).await.unwrap();
    // Not in the way: a key without an owner keeps its own credits under
    // `limit_by: owner`, a key without credits has none to lose, and a
    // revoked key never validates again.
    metered_key(&acme, metered.id, None, Some(5)).await;
    metered_key(&acme, metered.id, Some("cus_3"), None).await;
    let revoked = metered_key(&acme, metered.id, Some("cus_4"), Some(5)).await;
    acme.revoke_key(revoked.key.id, "gone").await.unwrap();

    let by_owner = PolicySpec::new("metered").with_limit_by(LimitBy::Owner);
    let refused = acme.update_policy(metered.id, by_owner.clone()).await;
    match &refused {
        Err(Error::KeysHoldCredits { policy_id, key_ids, count }) => {
            assert_eq!(*policy_id, metered.id);
            assert_eq!(key_ids, &[replaced.key.id, second.key.id], "one key per lineage, its newest");
            assert_eq!(*count, 2);
        }
        other => panic!("expected KeysHoldCredits, got {other:?}"),
    }
    let message = refused.unwrap_err().to_string();
    assert!(
        message.contains(&format!(
            "2 keys of owners under it hold credits of their own ({}, {})",
            replaced.key.id, second.key.id
        )),
        "{message}"
    );
    assert_eq!(acme.get_policy(metered.id).await.unwrap().limit_by, LimitBy::Key, "nothing changed");
    assert_eq!(credits_left(&engine, replaced.raw.expose()).await, Some(0), "its credit is still its own");
    // Changes that leave `limit_by` alone are not held up.
    acme.update_policy(metered.id, PolicySpec::new("metered").with_quota(Some(100), None)).await.unwrap();

    // Once their credits are removed the policy limits by owner, and the
    // keys spend their owners' credits.
    acme.set_credits(replaced.key.id, None).await.unwrap();
    acme.set_credits(second.key.id, None).await.unwrap();
    assert_eq!(acme.update_policy(metered.id, by_owner).await.unwrap().limit_by, LimitBy::Owner);
    acme.set_owner_credits("cus_1", Some(Credits::new(1))).await.unwrap();
    assert_eq!(credits_left(&engine, replaced.raw.expose()).await, Some(0));
    assert_eq!(credits_left(&engine, first.raw.expose()).await, None, "the old key of the lineage too");
}

#[tokio::test]
async fn the_refusal_to_limit_by_owner_names_ten_keys_and_counts_them_all() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let metered = acme.create_policy(PolicySpec::new("metered")).await.unwrap();
    // More than one page of a listing.
    let mut ids = Vec::new();
    for i in 0..1_001 {
        ids.push(metered_key(&acme, metered.id, Some(&format!("cus_{i}")), Some(1)).await.key.id);
    }
    let refused = acme.update_policy(metered.id, PolicySpec::new("metered").with_limit_by(LimitBy::Owner)).await;
    match &refused {
        Err(Error::KeysHoldCredits { key_ids, count, .. }) => {
            assert_eq!(key_ids, &ids[..Error::LISTED_KEYS], "the oldest ten");
            assert_eq!(*count, 1_001);
        }
        other => panic!("expected KeysHoldCredits, got {other:?}"),
    }
    let message = refused.unwrap_err().to_string();
    assert!(message.contains(&format!("{} and 991 more)", ids[9])), "{message}");
    assert!(!message.contains(&ids[10].to_string()), "{message}");
}

/// Pauses every `set_credits` store write (the engine's checks done) until
/// released.
#[derive(Debug, Default)]
struct HeldCreditWrites {
    reached: Notify,
    release: Notify,
}

#[async_trait]
impl StoreProbe for HeldCreditWrites {
    async fn before(&self, op: StoreOp) -> keysmith_core::Result<()> {
        if op == StoreOp::set_credits {
            self.reached.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn credits_given_in_a_race_with_the_switch_to_owner_are_spent_never_passed_for_free() {
    let probe = Arc::new(HeldCreditWrites::default());
    let store = Arc::new(ProbedStore::new(Arc::new(MemoryStore::new()), Arc::clone(&probe)));
    let engine = Engine::builder(store).with_clock(ManualClock::new(t0())).build().unwrap();
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("p")).await.unwrap();
    let created = acme.create_key(NewKey::new("k").with_owner("cus_1").with_policy(policy.id)).await.unwrap();
    let (id, raw) = (created.key.id, created.raw.expose());

    // Credits are given while the policy limits by key; before they are
    // written, the policy switches to owner (no key holds credits yet).
    let giving = tokio::spawn({
        let acme = acme.clone();
        async move { acme.set_credits(id, Some(Credits::new(1))).await }
    });
    probe.reached.notified().await;
    acme.update_policy(policy.id, PolicySpec::new("p").with_limit_by(LimitBy::Owner)).await.unwrap();
    probe.release.notify_one();
    giving.await.unwrap().unwrap();
    assert_eq!(acme.get_policy(policy.id).await.unwrap().limit_by, LimitBy::Owner);
    assert_eq!(acme.owner_credits("cus_1").await.unwrap(), None);

    // The key spends its one credit (given back by a refund to the key, not
    // to the owner), then is refused: 1 request of 10 passes.
    let passed = engine.validate(raw, &RequestContext::new()).await.unwrap();
    assert_eq!(passed.credits.map(|c| c.remaining), Some(0));
    assert!(engine.refund(&passed));
    // The probed store gives it back on a task: let it run.
    for _ in 0..100 {
        if acme.get_key(id).await.unwrap().credits.map(|c| c.remaining) == Some(1) {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(acme.get_key(id).await.unwrap().credits.map(|c| c.remaining), Some(1), "given back to the key");
    let mut passes = 0;
    for _ in 0..10 {
        passes += usize::from(credits_left(&engine, raw).await.is_some());
    }
    assert_eq!(passes, 1);
    assert_eq!(acme.get_key(id).await.unwrap().credits.map(|c| c.remaining), Some(0));

    // Its owner's credits do not free it: its own come first.
    acme.set_owner_credits("cus_1", Some(Credits::new(5))).await.unwrap();
    assert_eq!(credits_left(&engine, raw).await, None);
    assert_eq!(acme.owner_credits("cus_1").await.unwrap().map(|c| c.remaining), Some(5));
    // They cannot be topped up, only removed; then it spends its owner's.
    assert!(matches!(acme.add_credits(id, 5).await, Err(Error::OwnerLimitedCredits { .. })));
    probe.release.notify_one();
    acme.set_credits(id, None).await.unwrap();
    assert_eq!(credits_left(&engine, raw).await, Some(4));
}

#[tokio::test]
async fn owner_credits_refuse_bad_owner_ids_and_values() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    for bad in ["", " padded", "new\nline", &"x".repeat(256)] {
        let set = acme.set_owner_credits(bad, Some(Credits::new(1))).await;
        assert!(matches!(set, Err(Error::InvalidInput { field: "owner_id", .. })), "{bad:?}: {set:?}");
        assert!(matches!(acme.owner_credits(bad).await, Err(Error::InvalidInput { field: "owner_id", .. })));
        assert!(matches!(acme.add_owner_credits(bad, 1).await, Err(Error::InvalidInput { field: "owner_id", .. })));
    }
    let too_many = acme.set_owner_credits("cus_1", Some(Credits::new(Credits::MAX + 1))).await;
    assert!(matches!(too_many, Err(Error::InvalidInput { field: "credits.remaining", .. })));
    let zero_refill = acme.set_owner_credits("cus_1", Some(Credits::new(1).with_refill(0, Period::Month))).await;
    assert!(matches!(zero_refill, Err(Error::InvalidInput { field: "credits.refill.amount", .. })));
    assert_eq!(acme.owner_credits("cus_1").await.unwrap(), None);
    acme.set_owner_credits("cus_1", Some(Credits::new(Credits::MAX))).await.unwrap();
    assert!(matches!(acme.add_owner_credits("cus_1", 1).await, Err(Error::InvalidInput { field: "amount", .. })));
    assert!(matches!(acme.add_owner_credits("cus_1", 0).await, Err(Error::InvalidInput { field: "amount", .. })));
}
