//! Key lifecycle: transitions, rotations, scopes, last use, due keys.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Allowed changes apply (state, `updated_at`, the reason of a revocation
/// or suspension, cleared by reactivation); others are refused naming the
/// current state; unknown keys are not found.
pub async fn transitions_follow_the_lifecycle(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let id = key.key.id;

    // A suspension keeps its reason (a leaked key's is `leaked: <url>`).
    let suspend = Transition::to(KeyState::Suspended, at(10)).with_reason("leaked: https://example.com/a");
    let suspended = store.transition_key(&acme(), id, &suspend).await.unwrap();
    assert_eq!(suspended.state, KeyState::Suspended);
    assert_eq!(suspended.updated_at, at(10));
    assert_eq!(suspended.revoked_reason.as_deref(), Some("leaked: https://example.com/a"));
    assert_eq!(suspended.scopes, key.key.scopes);
    let expected = Key {
        state: KeyState::Suspended,
        updated_at: at(10),
        revoked_reason: Some("leaked: https://example.com/a".to_owned()),
        ..Key::clone(&key.key)
    };
    assert_eq!(suspended, expected, "nothing else changes");

    assert_invalid_transition(
        store.transition_key(&acme(), id, &Transition::to(KeyState::Suspended, at(11))).await,
        KeyState::Suspended,
        KeyState::Suspended,
    );
    assert_invalid_transition(
        store.transition_key(&acme(), id, &Transition::to(KeyState::Expired, at(11))).await,
        KeyState::Suspended,
        KeyState::Expired,
    );

    let active = store.transition_key(&acme(), id, &Transition::to(KeyState::Active, at(20))).await.unwrap();
    assert_eq!((active.state, active.updated_at), (KeyState::Active, at(20)));
    assert_eq!(active.revoked_reason, None, "reactivation clears the reason");

    let revoke = Transition::to(KeyState::Revoked, at(30)).with_reason("leaked in a gist");
    let revoked = store.transition_key(&acme(), id, &revoke).await.unwrap();
    assert_eq!(revoked.state, KeyState::Revoked);
    assert_eq!(revoked.revoked_reason.as_deref(), Some("leaked in a gist"));
    assert_eq!(revoked.updated_at, at(30));

    for to in KeyState::ALL {
        assert_invalid_transition(
            store.transition_key(&acme(), id, &Transition::to(to, at(40))).await,
            KeyState::Revoked,
            to,
        );
    }
    let stored = store.find_key_by_hash(&key.hash).await.unwrap().unwrap();
    assert_eq!(*stored.key, revoked, "the hash lookup sees the change");

    // Expiry from active, then nothing.
    let other = insert(&store, sample_key(&acme())).await;
    let expired =
        store.transition_key(&acme(), other.key.id, &Transition::to(KeyState::Expired, at(50))).await.unwrap();
    assert_eq!(expired.state, KeyState::Expired);
    assert_invalid_transition(
        store.transition_key(&acme(), other.key.id, &Transition::to(KeyState::Revoked, at(51))).await,
        KeyState::Expired,
        KeyState::Revoked,
    );

    assert_not_found(store.transition_key(&acme(), KeyId::new(), &revoke).await, "key");
}

/// 32 simultaneous revocations of one key: one succeeds, the rest are told
/// the key is already revoked.
pub async fn concurrent_revokes_have_exactly_one_winner(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    let key = insert(&store, sample_key(&acme())).await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = JoinSet::new();
    for i in 0..RACERS {
        let (store, barrier, id) = (Arc::clone(&store), Arc::clone(&barrier), key.key.id);
        tasks.spawn(async move {
            barrier.wait().await;
            let revoke = Transition::to(KeyState::Revoked, at(10)).with_reason(format!("racer {i}"));
            store.transition_key(&acme(), id, &revoke).await
        });
    }
    let mut winners = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(key) => winners.push(key),
            loser => assert_invalid_transition(loser, KeyState::Revoked, KeyState::Revoked),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one revocation wins");
    let stored = store.get_key(&acme(), key.key.id).await.unwrap().unwrap();
    assert_eq!(stored.key.revoked_reason, winners[0].revoked_reason, "the winner's reason is the one kept");
}

/// 32 simultaneous rotations of one key: one new key exists, one record.
pub async fn concurrent_rotations_have_exactly_one_winner(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    let old = insert(&store, sample_key(&acme())).await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = JoinSet::new();
    for _ in 0..RACERS {
        let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
        let rotation = rotation_of(&old, 10, Duration::from_secs(3600));
        tasks.spawn(async move {
            barrier.wait().await;
            let result = store.rotate_key(&acme(), &rotation).await;
            (rotation, result)
        });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (rotation, result) = joined.unwrap();
        match result {
            Ok(old) => winners.push((rotation, old)),
            loser => {
                assert_invalid_transition(loser, KeyState::Rotated, KeyState::Rotated);
                losers.push(rotation);
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one rotation wins");
    let (winner, old_now) = &winners[0];
    assert_eq!(old_now.state, KeyState::Rotated);
    assert!(store.find_key_by_hash(&winner.new_key.hash).await.unwrap().is_some());
    for loser in &losers {
        assert_eq!(store.find_key_by_hash(&loser.new_key.hash).await.unwrap(), None, "a loser's key is not stored");
        assert_eq!(store.get_key(&acme(), loser.new_key.key.id).await.unwrap(), None);
    }
    assert_eq!(store.list_rotations(&acme(), old.key.id).await.unwrap(), vec![winner.record.clone()]);
    let active = KeyFilter { state: Some(KeyState::Active), ..KeyFilter::default() };
    assert_eq!(store.list_keys(&acme(), &active).await.unwrap().len(), 1, "one active key: the winner's");
}

/// Suspensions racing revocations never bring a revoked key back.
pub async fn racing_suspend_never_undoes_a_revoke(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    let key = insert(&store, sample_key(&acme())).await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = JoinSet::new();
    for i in 0..RACERS {
        let (store, barrier, id) = (Arc::clone(&store), Arc::clone(&barrier), key.key.id);
        tasks.spawn(async move {
            barrier.wait().await;
            let to = if i.is_multiple_of(2) { KeyState::Suspended } else { KeyState::Revoked };
            (to, store.transition_key(&acme(), id, &Transition::to(to, at(10))).await)
        });
    }
    let (mut revokes, mut suspends) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (KeyState::Revoked, Ok(_)) => revokes += 1,
            (_, Ok(_)) => suspends += 1,
            (_, Err(Error::InvalidTransition { .. })) => {}
            (_, Err(error)) => panic!("unexpected error: {error}"),
        }
    }
    assert_eq!(revokes, 1, "exactly one revocation applies");
    assert!(suspends <= 1, "at most one suspension applies");
    assert_eq!(state_of(&store, &key).await, KeyState::Revoked);
}

/// A rotation moves the old key to `rotated` with its grace, inserts the new
/// key with its scopes and records the rotation, visible from both keys.
pub async fn rotation_writes_new_key_old_state_and_record(store: Arc<dyn Store>) {
    let policy = bare_policy(&acme(), "p");
    store.insert_policy(&policy).await.unwrap();
    let old = insert(&store, modified(&sample_key(&acme()), |k| k.policy_id = Some(policy.id))).await;
    let rotation = rotation_of(&old, 100, Duration::from_secs(3600));

    let returned = store.rotate_key(&acme(), &rotation).await.unwrap();
    let expected_old = Key {
        state: KeyState::Rotated,
        grace_expires_at: Some(at(100 + 3600)),
        updated_at: at(100),
        ..Key::clone(&old.key)
    };
    assert_eq!(returned, expected_old);
    assert_eq!(store.get_key(&acme(), old.key.id).await.unwrap().unwrap().key.as_ref(), &expected_old);
    assert_eq!(*store.find_key_by_hash(&old.hash).await.unwrap().unwrap().key, expected_old);

    let new = store.find_key_by_hash(&rotation.new_key.hash).await.unwrap().expect("new key stored");
    assert_eq!(new, rotation.new_key);
    assert_eq!(new.key.scopes, old.key.scopes);
    assert_eq!(new.key.policy_id, Some(policy.id));

    let record = rotation.record.clone();
    assert_eq!(store.list_rotations(&acme(), old.key.id).await.unwrap(), vec![record.clone()]);
    assert_eq!(store.list_rotations(&acme(), new.key.id).await.unwrap(), vec![record.clone()]);

    // Rotating the new key again: both records, oldest first.
    let second = rotation_of(&new, 200, Duration::ZERO);
    store.rotate_key(&acme(), &second).await.unwrap();
    assert_eq!(store.list_rotations(&acme(), new.key.id).await.unwrap(), vec![record, second.record.clone()]);
    assert_eq!(
        store.get_key(&acme(), new.key.id).await.unwrap().unwrap().key.grace_expires_at,
        Some(at(200)),
        "a zero grace ends at the rotation"
    );
}

/// A rotation whose new key cannot be written changes nothing.
pub async fn failed_rotation_leaves_old_key_active_and_no_record(store: Arc<dyn Store>) {
    let old = insert(&store, sample_key(&acme())).await;
    let bystander = insert(&store, sample_key(&acme())).await;

    // The new key's hash collides with another key's.
    let mut colliding = rotation_of(&old, 10, Duration::from_secs(60));
    colliding.new_key = StoredKey { hash: bystander.hash, ..colliding.new_key };
    colliding.record.new_hash = bystander.hash;
    assert_already_exists(store.rotate_key(&acme(), &colliding).await, "key");

    // The new key's id collides.
    let mut same_id = rotation_of(&old, 10, Duration::from_secs(60));
    same_id.new_key = modified(&same_id.new_key, |k| k.id = bystander.key.id);
    same_id.record.new_key_id = bystander.key.id;
    assert_already_exists(store.rotate_key(&acme(), &same_id).await, "key");

    // The new key names a policy that is not the tenant's.
    let mut foreign = rotation_of(&old, 10, Duration::from_secs(60));
    foreign.new_key = modified(&foreign.new_key, |k| k.policy_id = Some(PolicyId::new()));
    assert_not_found(store.rotate_key(&acme(), &foreign).await, "policy");

    assert_eq!(store.get_key(&acme(), old.key.id).await.unwrap(), Some(old.clone()), "old key untouched");
    assert_eq!(store.get_key(&acme(), bystander.key.id).await.unwrap(), Some(bystander));
    assert!(store.list_rotations(&acme(), old.key.id).await.unwrap().is_empty(), "no record");
    for failed in [&colliding, &foreign] {
        assert_eq!(store.get_key(&acme(), failed.new_key.key.id).await.unwrap(), None, "no new key");
    }
    assert_eq!(store.find_key_by_hash(&same_id.new_key.hash).await.unwrap(), None);
    assert_eq!(store.find_key_by_hash(&foreign.new_key.hash).await.unwrap(), None);
    assert_eq!(store.list_keys(&acme(), &KeyFilter::default()).await.unwrap().len(), 2);

    // And the old key still rotates fine afterwards.
    let ok = rotation_of(&old, 20, Duration::from_secs(60));
    assert_eq!(store.rotate_key(&acme(), &ok).await.unwrap().state, KeyState::Rotated);
}

/// Only an active key rotates; an unknown key is not found.
pub async fn rotation_needs_an_active_key(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    store.transition_key(&acme(), key.key.id, &Transition::to(KeyState::Suspended, at(1))).await.unwrap();
    let rotation = rotation_of(&key, 10, Duration::from_secs(60));
    assert_invalid_transition(store.rotate_key(&acme(), &rotation).await, KeyState::Suspended, KeyState::Rotated);
    assert_eq!(store.get_key(&acme(), rotation.new_key.key.id).await.unwrap(), None);

    let ghost = rotation_of(&sample_key(&acme()), 10, Duration::from_secs(60));
    assert_not_found(store.rotate_key(&acme(), &ghost).await, "key");
    assert_eq!(store.find_key_by_hash(&ghost.new_key.hash).await.unwrap(), None);
    assert!(store.list_rotations(&acme(), key.key.id).await.unwrap().is_empty());
}

/// A rotation cannot move a key into another tenant.
pub async fn rotation_across_tenants_is_rejected(store: Arc<dyn Store>) {
    let old = insert(&store, sample_key(&acme())).await;
    let mut rotation = rotation_of(&old, 10, Duration::from_secs(60));
    rotation.new_key = modified(&rotation.new_key, |k| k.tenant = globex());
    assert!(matches!(store.rotate_key(&acme(), &rotation).await, Err(Error::InvalidInput { .. })));
    assert_eq!(store.get_key(&acme(), old.key.id).await.unwrap(), Some(old.clone()));
    assert_eq!(store.find_key_by_hash(&rotation.new_key.hash).await.unwrap(), None);
    assert!(store.list_rotations(&acme(), old.key.id).await.unwrap().is_empty());
}

/// Scopes are replaced whole, keep their order, and may become empty.
pub async fn set_key_scopes_replaces_them_in_order(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let scopes: Vec<String> = ["zeta", "alpha", "mid:x"].map(str::to_owned).to_vec();
    let updated = store.set_key_scopes(&acme(), key.key.id, &scopes, at(5)).await.unwrap();
    assert_eq!(updated.scopes, scopes);
    assert_eq!(updated.updated_at, at(5));
    assert_eq!(updated, Key { scopes: scopes.clone(), updated_at: at(5), ..Key::clone(&key.key) });
    assert_eq!(store.find_key_by_hash(&key.hash).await.unwrap().unwrap().key.scopes, scopes);

    let cleared = store.set_key_scopes(&acme(), key.key.id, &[], at(6)).await.unwrap();
    assert!(cleared.scopes.is_empty());
    assert!(store.get_key(&acme(), key.key.id).await.unwrap().unwrap().key.scopes.is_empty());

    assert_not_found(store.set_key_scopes(&acme(), KeyId::new(), &scopes, at(7)).await, "key");
}

/// `last_used_at` only moves forward; touching an unknown key is harmless.
pub async fn touch_key_never_moves_last_used_backwards(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let last_used = |store: Arc<dyn Store>, key: StoredKey| async move {
        store.get_key(&acme(), key.key.id).await.unwrap().unwrap().key.last_used_at
    };
    store.touch_key(key.key.id, at(100)).await.unwrap();
    assert_eq!(last_used(Arc::clone(&store), key.clone()).await, Some(at(100)));
    store.touch_key(key.key.id, at(50)).await.unwrap();
    assert_eq!(last_used(Arc::clone(&store), key.clone()).await, Some(at(100)));
    store.touch_key(key.key.id, at(200)).await.unwrap();
    assert_eq!(last_used(Arc::clone(&store), key.clone()).await, Some(at(200)));
    assert_eq!(store.find_key_by_hash(&key.hash).await.unwrap().unwrap().key.last_used_at, Some(at(200)));
    let updated_at = store.get_key(&acme(), key.key.id).await.unwrap().unwrap().key.updated_at;
    assert_eq!(updated_at, t0(), "touching is not a change of the key");
    store.touch_key(KeyId::new(), at(300)).await.unwrap();
}

/// Due keys: active past expiry or policy age, rotated past grace; of every
/// tenant, by id, at most `limit`.
pub async fn due_keys_are_expired_aged_or_past_grace(store: Arc<dyn Store>) {
    let now = at(10 * 86_400);
    let aged = Policy { max_key_age: Some(Duration::from_secs(5 * 86_400)), ..bare_policy(&acme(), "aged") };
    let ageless = bare_policy(&acme(), "ageless");
    store.insert_policy(&aged).await.unwrap();
    store.insert_policy(&ageless).await.unwrap();

    let key = |change: Box<dyn FnOnce(&mut Key)>| modified(&sample_key(&acme()), change);
    let past_expiry = insert(&store, key(Box::new(|k| k.expires_at = Some(at(86_400))))).await;
    let at_expiry = insert(&store, key(Box::new(move |k| k.expires_at = Some(now)))).await;
    let _future_expiry = insert(&store, key(Box::new(|k| k.expires_at = Some(at(20 * 86_400))))).await;
    let too_old = insert(
        &store,
        key(Box::new(|k| {
            k.expires_at = None;
            k.policy_id = Some(aged.id);
        })),
    )
    .await;
    let _young = insert(
        &store,
        key(Box::new(|k| {
            k.expires_at = None;
            k.policy_id = Some(aged.id);
            k.created_at = at(6 * 86_400);
        })),
    )
    .await;
    let exactly_max_age = insert(
        &store,
        key(Box::new(|k| {
            k.expires_at = None;
            k.policy_id = Some(aged.id);
            k.created_at = at(5 * 86_400);
        })),
    )
    .await;
    let _no_age_limit = insert(
        &store,
        key(Box::new(|k| {
            k.expires_at = None;
            k.policy_id = Some(ageless.id);
        })),
    )
    .await;
    let grace_over = insert(&store, key(Box::new(|k| k.expires_at = None))).await;
    store.rotate_key(&acme(), &rotation_of(&grace_over, 60, Duration::from_secs(60))).await.unwrap();
    let in_grace = insert(&store, key(Box::new(|k| k.expires_at = None))).await;
    store.rotate_key(&acme(), &rotation_of(&in_grace, 60, Duration::from_secs(30 * 86_400))).await.unwrap();
    let revoked = insert(&store, key(Box::new(|k| k.expires_at = Some(at(1))))).await;
    store.transition_key(&acme(), revoked.key.id, &Transition::to(KeyState::Revoked, at(2))).await.unwrap();
    let suspended = insert(&store, key(Box::new(|k| k.expires_at = Some(at(1))))).await;
    store.transition_key(&acme(), suspended.key.id, &Transition::to(KeyState::Suspended, at(2))).await.unwrap();
    let elsewhere = insert(&store, modified(&sample_key(&globex()), |k| k.expires_at = Some(at(86_400)))).await;

    let due: Vec<KeyId> = store.list_due_keys(now, 100).await.unwrap().iter().map(|k| k.id).collect();
    let mut expected = vec![
        past_expiry.key.id,
        at_expiry.key.id,
        too_old.key.id,
        exactly_max_age.key.id,
        grace_over.key.id,
        elsewhere.key.id,
    ];
    expected.sort();
    assert_eq!(due, expected);
    let first_two: Vec<KeyId> = store.list_due_keys(now, 2).await.unwrap().iter().map(|k| k.id).collect();
    assert_eq!(first_two, expected[..2]);
    assert!(store.list_due_keys(t0(), 100).await.unwrap().is_empty(), "nothing is due at the start");
}
