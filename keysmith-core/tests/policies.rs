//! Policies and scopes: management, and each validation step they drive.

mod support;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use keysmith_core::store::{KeyFilter, Page};
use keysmith_core::{
    Engine, Error, LimitBy, ManualClock, MemoryStore, NewKey, PolicySpec, Refusal, RequestContext, Validation,
    ValidationError,
};
use support::{engine, t0};

fn refusal(result: Result<Validation, ValidationError>) -> Refusal {
    match result {
        Err(ValidationError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn bad_cidrs_and_origins_are_refused_at_create_time() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let bad_cidr = acme.create_policy(PolicySpec::new("p").with_allowed_ips(["10.0.0.0/8", "10.0.0.300/24"])).await;
    match bad_cidr {
        Err(Error::InvalidInput { field: "allowed_ips", reason }) => {
            assert!(reason.contains("10.0.0.300/24"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let bad_origin = acme.create_policy(PolicySpec::new("p").with_allowed_origins(["example.com"])).await;
    assert!(matches!(bad_origin, Err(Error::InvalidInput { field: "allowed_origins", .. })));
    assert!(acme.list_policies(Page::default()).await.unwrap().is_empty(), "nothing was stored");
}

#[tokio::test]
async fn policy_crud_and_unique_names() {
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");
    let policy = acme
        .create_policy(PolicySpec::new("partners").with_allowed_ips(["192.0.2.0/24", "2001:db8::1"]))
        .await
        .unwrap();
    assert_eq!(
        policy.allowed_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["192.0.2.0/24", "2001:db8::1/128"]
    );
    assert_eq!(acme.get_policy(policy.id).await.unwrap(), policy);
    assert!(matches!(
        acme.create_policy(PolicySpec::new("partners")).await,
        Err(Error::AlreadyExists { entity: "policy", .. })
    ));

    clock.advance(Duration::from_secs(10));
    let updated = acme.update_policy(policy.id, PolicySpec::new("partners-v2")).await.unwrap();
    assert_eq!(updated.created_at, policy.created_at);
    assert_eq!(updated.updated_at, t0() + chrono::Duration::seconds(10));
    assert!(updated.allowed_ips.is_empty());
    assert_eq!(acme.list_policies(Page::default()).await.unwrap(), std::slice::from_ref(&updated));

    acme.delete_policy(policy.id).await.unwrap();
    assert!(matches!(acme.get_policy(policy.id).await, Err(Error::NotFound { .. })));
    assert!(matches!(acme.delete_policy(policy.id).await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn a_policy_in_use_by_a_live_key_cannot_be_deleted() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("p")).await.unwrap();
    let key = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap().key;
    acme.suspend_key(key.id).await.unwrap();
    assert!(matches!(acme.delete_policy(policy.id).await, Err(Error::PolicyInUse { .. })), "suspended is live");
    acme.revoke_key(key.id, "done").await.unwrap();
    acme.delete_policy(policy.id).await.unwrap();
}

#[tokio::test]
async fn ip_allowlists_match_ipv4_ipv6_and_mapped_addresses() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let policy = acme
        .create_policy(PolicySpec::new("office").with_allowed_ips(["203.0.113.0/24", "2001:db8:abcd::/48"]))
        .await
        .unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
    let raw = created.raw.expose();
    let check = |addr: Option<&str>| {
        let engine = engine.clone();
        let addr = addr.map(ip);
        async move {
            let ctx = RequestContext { ip: addr, ..RequestContext::new() };
            engine.validate(raw, &ctx).await
        }
    };
    for allowed in ["203.0.113.7", "2001:db8:abcd:12::1", "::ffff:203.0.113.9"] {
        assert!(check(Some(allowed)).await.is_ok(), "{allowed} should be allowed");
    }
    for denied in ["198.51.100.1", "2001:db8:abce::1", "::ffff:198.51.100.1", "::1"] {
        assert_eq!(refusal(check(Some(denied)).await), Refusal::IpNotAllowed, "{denied}");
    }
    assert_eq!(refusal(check(None).await), Refusal::IpNotAllowed, "no IP known while a list is set");
}

#[tokio::test]
async fn origin_allowlist_applies_only_when_an_origin_is_sent() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let policy =
        acme.create_policy(PolicySpec::new("web").with_allowed_origins(["https://App.example.com/"])).await.unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
    let raw = created.raw.expose();
    let with_origin = |o| RequestContext::new().with_origin(o);
    assert!(engine.validate(raw, &with_origin("https://app.example.com")).await.is_ok());
    assert!(engine.validate(raw, &with_origin("HTTPS://APP.EXAMPLE.COM")).await.is_ok());
    assert_eq!(
        refusal(engine.validate(raw, &with_origin("https://evil.example.com")).await),
        Refusal::OriginNotAllowed
    );
    assert_eq!(refusal(engine.validate(raw, &with_origin("http://app.example.com")).await), Refusal::OriginNotAllowed);
    assert!(engine.validate(raw, &RequestContext::new()).await.is_ok(), "server-to-server calls send no Origin");
}

#[tokio::test]
async fn insufficient_scope_lists_what_is_missing() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let created = acme.create_key(NewKey::new("k").with_scopes(["read", "write:users"])).await.unwrap();
    let need = vec!["read:orders".to_owned(), "write:orders".to_owned(), "write:users:emails".to_owned()];
    let result = engine.validate(created.raw.expose(), &RequestContext::new().with_required_scopes(&need)).await;
    assert_eq!(refusal(result), Refusal::InsufficientScope { missing: vec!["write:orders".into()], one_of: false });
    let ok =
        engine.validate(created.raw.expose(), &RequestContext::new().with_required_scopes(&need[..1])).await.unwrap();
    assert!(ok.has_scope("read:anything"));
}

#[tokio::test]
async fn scopes_outside_the_policy_are_refused_at_create_and_assign() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("readers").with_allowed_scopes(["read"])).await.unwrap();
    let refused = acme.create_key(NewKey::new("k").with_policy(policy.id).with_scopes(["read:users", "write"])).await;
    match refused {
        Err(Error::InvalidInput { field: "scopes", reason }) => assert!(reason.contains("write"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let key = acme.create_key(NewKey::new("k").with_policy(policy.id).with_scopes(["read:users"])).await.unwrap().key;
    assert!(matches!(acme.set_key_scopes(key.id, &["admin"]).await, Err(Error::InvalidInput { .. })));
    let updated = acme.set_key_scopes(key.id, &["read", "read"]).await.unwrap();
    assert_eq!(updated.scopes, ["read"], "duplicates collapse");
    // In a policy's allowed scopes too, in the order given.
    let spec = PolicySpec::new("twice").with_allowed_scopes(["write", "read", "write"]);
    assert_eq!(acme.create_policy(spec).await.unwrap().allowed_scopes, ["write", "read"]);
    assert_eq!(acme.set_key_scopes(key.id, &[] as &[&str]).await.unwrap().scopes, Vec::<String>::new());
}

#[tokio::test]
async fn a_tightened_policy_narrows_scopes_on_the_next_request() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("p")).await.unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id).with_scopes(["read"])).await.unwrap();
    let need = vec!["read:billing".to_owned()];
    let ctx = RequestContext::new().with_required_scopes(&need);
    assert!(engine.validate(created.raw.expose(), &ctx).await.is_ok());
    acme.update_policy(policy.id, PolicySpec::new("p").with_allowed_scopes(["read:users"])).await.unwrap();
    assert_eq!(
        refusal(engine.validate(created.raw.expose(), &ctx).await),
        Refusal::InsufficientScope { missing: need.clone(), one_of: false }
    );
    let ok = engine.validate(created.raw.expose(), &RequestContext::new()).await.unwrap();
    assert_eq!(ok.scopes(), ["read:users"]);
}

#[tokio::test]
async fn strict_scopes_require_registration() {
    let clock = ManualClock::new(t0());
    let engine =
        Engine::builder(Arc::new(MemoryStore::new())).with_clock(clock).with_strict_scopes(true).build().unwrap();
    let acme = engine.tenant("app", "acme");
    assert!(matches!(acme.create_key(NewKey::new("k").with_scopes(["read"])).await, Err(Error::InvalidInput { .. })));
    let scope = acme.create_scope("read", "Read everything").await.unwrap();
    assert!(matches!(acme.create_scope("read", "again").await, Err(Error::AlreadyExists { .. })));
    assert!(matches!(acme.create_scope("bad scope", "").await, Err(Error::InvalidInput { .. })));
    acme.create_key(NewKey::new("k").with_scopes(["read"])).await.unwrap();
    assert_eq!(acme.list_scopes().await.unwrap(), std::slice::from_ref(&scope));
    acme.delete_scope(scope.id).await.unwrap();
    assert!(acme.list_scopes().await.unwrap().is_empty());
    assert!(matches!(acme.delete_scope(scope.id).await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn max_key_age_expires_keys_at_validation_and_in_the_sweeper() {
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");
    let policy =
        acme.create_policy(PolicySpec::new("young").with_max_key_age(Duration::from_secs(3600))).await.unwrap();
    let presented = acme.create_key(NewKey::new("a").with_policy(policy.id)).await.unwrap();
    let idle = acme.create_key(NewKey::new("b").with_policy(policy.id)).await.unwrap();
    clock.advance(Duration::from_secs(3599));
    assert!(engine.validate(presented.raw.expose(), &RequestContext::new()).await.is_ok());
    clock.advance(Duration::from_secs(1));
    assert_eq!(refusal(engine.validate(presented.raw.expose(), &RequestContext::new()).await), Refusal::Expired);
    assert_eq!(engine.sweep().await.unwrap().expired, 1, "the idle key");
    let states: Vec<_> =
        acme.list_keys(&KeyFilter::default()).await.unwrap().into_iter().map(|k| (k.id, k.state)).collect();
    assert_eq!(
        states,
        [(presented.key.id, keysmith_core::KeyState::Expired), (idle.key.id, keysmith_core::KeyState::Expired)]
    );
}

#[tokio::test]
async fn rate_limit_refuses_with_retry_after_and_recovers_with_time() {
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");
    let policy = acme.create_policy(PolicySpec::new("slow").with_rate_limit(3, Duration::from_secs(10))).await.unwrap();
    let created = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
    let raw = created.raw.expose();
    let ctx = RequestContext::new();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        remaining.push(engine.validate(raw, &ctx).await.unwrap().rate_limits[0].remaining);
    }
    assert_eq!(remaining, [2, 1, 0]);
    match refusal(engine.validate(raw, &ctx).await) {
        Refusal::RateLimited { retry_after, status, .. } => {
            assert_eq!(retry_after, Duration::from_secs(10) / 3);
            assert_eq!((status.limit, status.remaining, status.allowed), (3, 0, false));
        }
        other => panic!("{other:?}"),
    }
    clock.advance(Duration::from_secs(10) / 3);
    assert!(engine.validate(raw, &ctx).await.is_ok());

    // A policy change applies on the next request.
    acme.update_policy(policy.id, PolicySpec::new("slow").with_rate_limit(100, Duration::from_secs(10))).await.unwrap();
    assert_eq!(engine.validate(raw, &ctx).await.unwrap().rate_limits[0].limit, 100);
}

#[tokio::test]
async fn tenants_never_see_each_others_policies_or_scopes() {
    let (engine, _) = engine();
    let a = engine.tenant("app", "a");
    let b = engine.tenant("app", "b");
    let policy = b.create_policy(PolicySpec::new("p")).await.unwrap();
    let scope = b.create_scope("read", "").await.unwrap();
    assert!(matches!(a.get_policy(policy.id).await, Err(Error::NotFound { .. })));
    assert!(matches!(a.update_policy(policy.id, PolicySpec::new("x")).await, Err(Error::NotFound { .. })));
    assert!(matches!(a.delete_policy(policy.id).await, Err(Error::NotFound { .. })));
    assert!(a.list_policies(Page::default()).await.unwrap().is_empty());
    assert!(matches!(a.create_key(NewKey::new("k").with_policy(policy.id)).await, Err(Error::NotFound { .. })));
    assert!(a.list_scopes().await.unwrap().is_empty());
    assert!(matches!(a.delete_scope(scope.id).await, Err(Error::NotFound { .. })));
    // Same names are fine in another tenant.
    a.create_policy(PolicySpec::new("p")).await.unwrap();
    a.create_scope("read", "").await.unwrap();
    assert_eq!(b.list_scopes().await.unwrap(), [scope]);
}

#[tokio::test]
async fn a_key_of_another_app_is_unknown_and_spends_none_of_its_limits() {
    let (engine, _) = engine();
    let billing = engine.tenant("billing", "acme");
    let policy =
        billing.create_policy(PolicySpec::new("one").with_rate_limit(1, Duration::from_secs(60))).await.unwrap();
    let created = billing.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
    let raw = created.raw.expose();
    for _ in 0..3 {
        let other_app = RequestContext::new().with_app_id("search");
        assert_eq!(refusal(engine.validate(raw, &other_app).await), Refusal::Unknown);
    }
    assert!(engine.validate(raw, &RequestContext::new().with_app_id("billing")).await.is_ok(), "budget untouched");
}

fn field_of(result: keysmith_core::Result<keysmith_core::Policy>) -> &'static str {
    match result {
        Err(Error::InvalidInput { field, reason }) => {
            assert!(!reason.is_empty());
            field
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[tokio::test]
async fn policy_values_out_of_bounds_are_refused_when_written() {
    let (engine, _) = engine();
    let acme = engine.tenant("app", "acme");
    let rate = |requests, window, burst| PolicySpec {
        rate_limits: vec![keysmith_core::RateLimit { name: "default".to_owned(), requests, window, burst }],
        ..PolicySpec::new("p")
    };
    let cases = [
        (rate(1, Duration::from_secs(20_000_000_000), None), "rate_limits.window"),
        (rate(1, PolicySpec::MAX_WINDOW + Duration::from_secs(1), None), "rate_limits.window"),
        (rate(1, Duration::from_micros(999), None), "rate_limits.window"),
        (rate(u32::MAX, Duration::from_secs(1), None), "rate_limits.requests"),
        (rate(0, Duration::from_secs(1), None), "rate_limits.requests"),
        (rate(10, Duration::from_secs(1), Some(0)), "rate_limits.burst"),
        (rate(10, Duration::from_secs(1), Some(PolicySpec::MAX_REQUESTS + 1)), "rate_limits.burst"),
        // One a day with a burst of a thousand takes a thousand days to refill.
        (rate(1, Duration::from_secs(86_400), Some(1000)), "rate_limits.burst"),
        (PolicySpec::new("p").with_quota(Some(PolicySpec::MAX_QUOTA + 1), None), "quota.daily"),
        (PolicySpec::new("p").with_quota(None, Some(0)), "quota.monthly"),
        (PolicySpec::new("p").with_max_key_age(PolicySpec::MAX_KEY_AGE + Duration::from_secs(1)), "max_key_age"),
        (PolicySpec::new("p").with_max_key_age(Duration::ZERO), "max_key_age"),
        (
            PolicySpec::new("p").with_rotation_grace(PolicySpec::MAX_ROTATION_GRACE + Duration::from_secs(1)),
            "rotation_grace",
        ),
        (PolicySpec::new("p").with_allowed_ips(vec!["10.0.0.0/8"; PolicySpec::MAX_ALLOWLIST_LEN + 1]), "allowed_ips"),
        (
            PolicySpec::new("p").with_allowed_origins(vec!["https://a.example"; PolicySpec::MAX_ALLOWLIST_LEN + 1]),
            "allowed_origins",
        ),
        (PolicySpec::new("p").with_allowed_scopes(vec!["read"; PolicySpec::MAX_ALLOWLIST_LEN + 1]), "allowed_scopes"),
    ];
    for (spec, field) in cases {
        assert_eq!(field_of(acme.create_policy(spec.clone()).await), field, "{spec:?}");
    }
    // An update is held to the same bounds, and changes nothing when refused.
    let policy = acme.create_policy(PolicySpec::new("p").with_rate_limit(5, Duration::from_secs(1))).await.unwrap();
    let huge = PolicySpec::new("p").with_rate_limit(u32::MAX, Duration::from_secs(1));
    assert_eq!(field_of(acme.update_policy(policy.id, huge).await), "rate_limits.requests");
    assert_eq!(acme.get_policy(policy.id).await.unwrap(), policy);
}

#[tokio::test]
async fn the_largest_accepted_policy_values_are_enforced() {
    let (engine, clock) = engine();
    let acme = engine.tenant("app", "acme");
    let max = PolicySpec::MAX_REQUESTS;
    let limits = [
        (max, PolicySpec::MAX_WINDOW, Some(max)),
        (1, PolicySpec::MAX_WINDOW, None),
        (max, PolicySpec::MIN_WINDOW, None),
        (max, Duration::from_secs(1), Some(max)),
    ];
    for (i, (requests, window, burst)) in limits.into_iter().enumerate() {
        let spec = PolicySpec {
            rate_limits: vec![keysmith_core::RateLimit { name: "default".to_owned(), requests, window, burst }],
            quota: Some(keysmith_core::Quota {
                daily: Some(PolicySpec::MAX_QUOTA),
                monthly: Some(PolicySpec::MAX_QUOTA),
            }),
            max_key_age: Some(PolicySpec::MAX_KEY_AGE),
            rotation_grace: Some(PolicySpec::MAX_ROTATION_GRACE),
            ..PolicySpec::new(format!("largest {i}"))
        };
        let policy = acme.create_policy(spec).await.unwrap();
        let created = acme.create_key(NewKey::new("k").with_policy(policy.id)).await.unwrap();
        let raw = created.raw.expose();
        let first = engine.validate(raw, &RequestContext::new()).await.unwrap().rate_limits[0];
        assert_eq!((first.limit, first.remaining), (burst.unwrap_or(requests), burst.unwrap_or(requests) - 1));
        if requests == 1 {
            assert!(matches!(refusal(engine.validate(raw, &RequestContext::new()).await), Refusal::RateLimited { .. }));
        }
        // The longest grace the policy allows is a valid rotation.
        let rotated = acme.rotate_key(created.key.id, keysmith_core::RotationReason::Scheduled, None).await.unwrap();
        assert_eq!(rotated.record.grace_ttl, PolicySpec::MAX_ROTATION_GRACE);
        clock.advance(Duration::from_secs(1));
    }
}

#[tokio::test]
async fn under_limit_by_owner_an_owners_keys_share_one_budget() {
    let (engine, _clock) = engine();
    let acme = engine.tenant("app", "acme");
    let spec =
        PolicySpec::new("per-customer").with_rate_limit(3, Duration::from_secs(60)).with_limit_by(LimitBy::Owner);
    let policy = acme.create_policy(spec).await.unwrap();
    let key = |name: &'static str, owner: Option<&'static str>| {
        let acme = acme.clone();
        async move {
            let mut new = NewKey::new(name).with_policy(policy.id);
            if let Some(owner) = owner {
                new = new.with_owner(owner);
            }
            acme.create_key(new).await.unwrap().raw.expose().to_owned()
        }
    };
    let (first, second) = (key("a", Some("cust_1")).await, key("b", Some("cust_1")).await);
    let other_owner = key("c", Some("cust_2")).await;
    let (no_owner, no_owner_too) = (key("d", None).await, key("e", None).await);
    let ctx = RequestContext::new();
    let pass = |raw: String| {
        let engine = engine.clone();
        async move { engine.validate(&raw, &RequestContext::new()).await.map(|v| v.rate_limits[0].remaining) }
    };
    // One customer, two keys, one budget of 3.
    assert_eq!(pass(first.clone()).await.unwrap(), 2);
    assert_eq!(pass(second.clone()).await.unwrap(), 1);
    assert_eq!(pass(first.clone()).await.unwrap(), 0);
    match refusal(engine.validate(&second, &ctx).await) {
        Refusal::RateLimited { limit, .. } => assert_eq!(limit.name, "default"),
        other => panic!("{other:?}"),
    }
    // Another customer has its own budget; keys without an owner keep
    // their own (lineage) budgets.
    assert_eq!(pass(other_owner).await.unwrap(), 2);
    assert_eq!(pass(no_owner.clone()).await.unwrap(), 2);
    assert_eq!(pass(no_owner).await.unwrap(), 1);
    assert_eq!(pass(no_owner_too).await.unwrap(), 2);
}
