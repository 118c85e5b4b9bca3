//! Credits of a key's own and a policy that limits by owner do not go
//! together: every way of putting them together through the API is 409
//! `credits_conflict`, and nothing changes.

mod support;

use keysmith_core::{RequestContext, ValidationError};
use serde_json::{Value, json};
use support::harness;

#[tokio::test]
async fn credits_for_a_key_that_spends_its_owners_are_a_conflict_not_bad_input() {
    let h = harness().await;
    let policy = h.post("/policies", json!({"name": "shared", "limit_by": "owner"})).await;
    let policy_id = policy.ok(201)["id"].as_str().unwrap().to_owned();

    let created = h
        .post("/keys", json!({"name": "k", "owner_id": "cus_1", "policy_id": policy_id, "credits": {"remaining": 3}}))
        .await;
    created.assert_error(409, "credits_conflict");
    assert!(created.text.contains(&policy_id) && created.text.contains("cus_1"), "{}", created.text);
    assert_eq!(h.get("/keys?owner_id=cus_1").await.ok(200)["items"], json!([]), "no key was created");

    // A schema-valid body on a key whose policy limits by owner.
    let (id, _) = h.create_key(json!({"name": "k", "owner_id": "cus_1", "policy_id": policy_id})).await;
    let set = h.put(&format!("/keys/{id}/credits"), json!({"remaining": 3})).await;
    set.assert_error(409, "credits_conflict");
    assert!(set.text.contains("set the owner's credits instead"), "{}", set.text);
    assert_eq!(h.get(&format!("/keys/{id}")).await.ok(200)["credits"], Value::Null, "nothing changed");
    h.delete(&format!("/keys/{id}/credits")).await.ok(200);

    // A key without an owner keeps credits of its own under the same policy.
    let ownerless = h.post("/keys", json!({"name": "k", "policy_id": policy_id, "credits": {"remaining": 3}})).await;
    assert_eq!(ownerless.ok(201)["key"]["credits"]["remaining"], 3);
}

#[tokio::test]
async fn switching_a_policy_to_limit_by_owner_is_a_conflict_while_keys_of_owners_hold_credits() {
    let h = harness().await;
    let policy = h.post("/policies", json!({"name": "metered"})).await;
    let policy_id = policy.ok(201)["id"].as_str().unwrap().to_owned();
    let (id, raw) = h
        .create_key(json!({"name": "k", "owner_id": "cus_1", "policy_id": policy_id, "credits": {"remaining": 1}}))
        .await;
    let by_owner = json!({"name": "metered", "limit_by": "owner"});

    let switched = h.put(&format!("/policies/{policy_id}"), by_owner.clone()).await;
    switched.assert_error(409, "credits_conflict");
    assert!(
        switched.text.contains(&format!("1 key of owners under it holds credits of their own ({id})")),
        "{}",
        switched.text
    );
    assert_eq!(h.get(&format!("/policies/{policy_id}")).await.ok(200)["limit_by"], "key", "nothing changed");
    // Its one credit is still spent: one request of ten passes.
    let mut passes = 0;
    for _ in 0..10 {
        match h.engine.validate(&raw, &RequestContext::new()).await {
            Ok(_) => passes += 1,
            Err(ValidationError::Refused(refusal)) => assert_eq!(refusal.code(), "credits_exhausted"),
            Err(error) => panic!("{error}"),
        }
    }
    assert_eq!(passes, 1);

    // Without its credits the policy can limit by owner.
    h.delete(&format!("/keys/{id}/credits")).await.ok(200);
    assert_eq!(h.put(&format!("/policies/{policy_id}"), by_owner).await.ok(200)["limit_by"], "owner");
}
