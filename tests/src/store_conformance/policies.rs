//! Policies: round trips, unique names, listing, deletion while in use.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Every field of a policy survives the store; an update replaces them all.
pub async fn policy_round_trips_and_updates(store: Arc<dyn Store>) {
    let policy = sample_policy(&acme(), "standard");
    store.insert_policy(&policy).await.unwrap();
    assert_eq!(store.get_policy(&acme(), policy.id).await.unwrap().as_deref(), Some(&policy));
    let bare = bare_policy(&acme(), "bare");
    store.insert_policy(&bare).await.unwrap();
    assert_eq!(store.get_policy(&acme(), bare.id).await.unwrap().as_deref(), Some(&bare));
    let empty_quota = Policy {
        quota: Some(Quota::default()),
        rate_limits: vec![RateLimit::new("default", 1, Duration::from_secs(1))],
        ..bare_policy(&acme(), "empty quota")
    };
    store.insert_policy(&empty_quota).await.unwrap();
    assert_eq!(store.get_policy(&acme(), empty_quota.id).await.unwrap().as_deref(), Some(&empty_quota));

    let updated = Policy {
        name: "premium".into(),
        rate_limits: vec![RateLimit::new("per-second", 5000, Duration::from_secs(1))],
        limit_by: LimitBy::Key,
        allowed_ips: vec!["192.168.1.7/32".parse().unwrap()],
        allowed_origins: vec![],
        max_key_age: None,
        quota: Some(Quota { daily: None, monthly: Some(1_000_000) }),
        updated_at: at(60),
        ..policy.clone()
    };
    store.update_policy(&updated).await.unwrap();
    assert_eq!(store.get_policy(&acme(), policy.id).await.unwrap().as_deref(), Some(&updated));

    assert_not_found(store.update_policy(&bare_policy(&acme(), "ghost")).await, "policy");
    let clash = Policy { name: "bare".into(), ..updated.clone() };
    assert_already_exists(store.update_policy(&clash).await, "policy");
    assert_eq!(store.get_policy(&acme(), policy.id).await.unwrap().as_deref(), Some(&updated), "unchanged");
    assert_eq!(store.get_policy(&acme(), PolicyId::new()).await.unwrap(), None);
}

/// Two policies of one tenant cannot share a name; two tenants can.
pub async fn policy_names_are_unique_per_tenant(store: Arc<dyn Store>) {
    store.insert_policy(&bare_policy(&acme(), "standard")).await.unwrap();
    assert_already_exists(store.insert_policy(&bare_policy(&acme(), "standard")).await, "policy");
    store.insert_policy(&bare_policy(&globex(), "standard")).await.unwrap();
    store.insert_policy(&bare_policy(&acme_elsewhere(), "standard")).await.unwrap();
    store.insert_policy(&bare_policy(&acme(), "Standard")).await.unwrap();
    assert_eq!(store.list_policies(&acme(), Page::default()).await.unwrap().len(), 2);
}

/// Policies list in id order, by page.
pub async fn list_policies_orders_and_paginates(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let policy = bare_policy(&acme(), &format!("p{}", 9 - i));
        store.insert_policy(&policy).await.unwrap();
        ids.push(policy.id);
    }
    store.insert_policy(&bare_policy(&globex(), "p")).await.unwrap();
    let list = |page: Page| {
        let store = Arc::clone(&store);
        async move { store.list_policies(&acme(), page).await.unwrap().iter().map(|p| p.id).collect::<Vec<_>>() }
    };
    assert_eq!(list(Page::default()).await, ids);
    assert_eq!(list(Page::new(2, 0)).await, ids[..2]);
    assert_eq!(list(Page::new(2, 2)).await, ids[2..4]);
    assert_eq!(list(Page::new(2, 4)).await, ids[4..]);
    assert!(list(Page::new(2, 6)).await.is_empty());
}

/// A policy used by an active, suspended or rotated key cannot go; once
/// every key using it is terminal it can.
pub async fn policy_in_use_by_a_live_key_cannot_be_deleted(store: Arc<dyn Store>) {
    let policy = bare_policy(&acme(), "standard");
    store.insert_policy(&policy).await.unwrap();
    let uses = |store: Arc<dyn Store>| {
        let policy_id = policy.id;
        async move { insert(&store, modified(&sample_key(&acme()), |k| k.policy_id = Some(policy_id))).await }
    };
    let key = uses(Arc::clone(&store)).await;
    let in_use = |result: keysmith_core::Result<()>| match result {
        Err(Error::PolicyInUse { policy_id }) if policy_id == policy.id => {}
        other => panic!("expected PolicyInUse, got {other:?}"),
    };

    in_use(store.delete_policy(&acme(), policy.id).await);
    store.transition_key(&acme(), key.key.id, &Transition::to(KeyState::Suspended, at(1))).await.unwrap();
    in_use(store.delete_policy(&acme(), policy.id).await);
    store.transition_key(&acme(), key.key.id, &Transition::to(KeyState::Revoked, at(2))).await.unwrap();

    let rotated = uses(Arc::clone(&store)).await;
    let rotation = rotation_of(&rotated, 3, Duration::from_secs(60));
    store.rotate_key(&acme(), &rotation).await.unwrap();
    in_use(store.delete_policy(&acme(), policy.id).await);
    store.transition_key(&acme(), rotation.new_key.key.id, &Transition::to(KeyState::Expired, at(4))).await.unwrap();
    in_use(store.delete_policy(&acme(), policy.id).await); // the rotated key still validates in its grace
    store.transition_key(&acme(), rotated.key.id, &Transition::to(KeyState::Revoked, at(5))).await.unwrap();

    assert_not_found(store.delete_policy(&globex(), policy.id).await, "policy");
    store.delete_policy(&acme(), policy.id).await.unwrap();
    assert_eq!(store.get_policy(&acme(), policy.id).await.unwrap(), None);
    assert_not_found(store.delete_policy(&acme(), policy.id).await, "policy");
    // Terminal keys that used it are still there.
    assert_eq!(state_of(&store, &key).await, KeyState::Revoked);
    assert_eq!(state_of(&store, &rotated).await, KeyState::Revoked);
}

/// A policy deletion racing a key creation under it: never both.
pub async fn policy_delete_and_key_insert_race_atomically(store: Arc<dyn Store>) {
    for round in 0..20 {
        let policy = bare_policy(&acme(), &format!("race {round}"));
        store.insert_policy(&policy).await.unwrap();
        let key = modified(&sample_key(&acme()), |k| k.policy_id = Some(policy.id));
        let barrier = Arc::new(Barrier::new(2));
        let deleting = {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                store.delete_policy(&acme(), policy.id).await
            })
        };
        let inserting = {
            let (store, barrier, key) = (Arc::clone(&store), Arc::clone(&barrier), key.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.insert_key(&key).await
            })
        };
        let (deleted, inserted) = (deleting.await.unwrap(), inserting.await.unwrap());
        match (&deleted, &inserted) {
            (Ok(()), Err(Error::NotFound { entity: "policy", .. })) => {
                assert_eq!(store.get_key(&acme(), key.key.id).await.unwrap(), None);
            }
            (Err(Error::PolicyInUse { .. }), Ok(())) => {
                assert!(store.get_policy(&acme(), policy.id).await.unwrap().is_some());
                let stored = store.get_key(&acme(), key.key.id).await.unwrap().unwrap();
                assert_eq!(stored.key.policy_id, Some(policy.id));
            }
            other => panic!("round {round}: delete and insert must not both win or both lose: {other:?}"),
        }
    }
}
