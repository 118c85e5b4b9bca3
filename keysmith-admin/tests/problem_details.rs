//! `AdminConfig::with_problem_details`: every error of the admin API, the
//! key layer's refusals included, as RFC 9457 `application/problem+json`,
//! with the same statuses, headers and codes; successes untouched.

mod support;

use keysmith_admin::AdminConfig;
use support::{harness, harness_with, with_config};

#[tokio::test]
async fn problem_details_render_every_error_and_leave_successes_alone() {
    let h = harness_with(with_config(AdminConfig::with_problem_details), false).await;
    let key = Some(h.admin.as_str());

    let cases = [
        ("GET", "/keys", None, 401, "missing_key"),
        ("GET", "/keys/kpol_01h455vb4pex5vsknk084sn02q", key, 400, "invalid_id"),
        ("GET", "/keys/akey_01h455vb4pex5vsknk084sn02q", key, 404, "not_found"),
        ("GET", "/nowhere", key, 404, "route_not_found"),
        ("DELETE", "/keys", key, 405, "method_not_allowed"),
    ];
    for (method, path, key, status, code) in cases {
        let answer = h.send(method, path, key, None).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.text);
        assert_eq!(answer.headers["content-type"], "application/problem+json", "{method} {path}");
        assert_eq!(answer.body["code"], code, "{method} {path}: {}", answer.text);
        assert_eq!(answer.body["type"], format!("urn:keysmith:problem:{code}"));
        assert_eq!(answer.body["status"], status);
        assert!(answer.body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{}", answer.text);
        assert!(answer.body.get("error").is_none(), "one format, not both: {}", answer.text);
    }
    let not_allowed = h.send("DELETE", "/keys", key, None).await;
    assert!(not_allowed.headers["allow"].to_str().unwrap().contains("GET"), "headers are kept");

    let listed = h.get("/keys").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(listed.headers["content-type"], "application/json");
    assert!(listed.body.get("error").is_none() && listed.body.get("type").is_none(), "{}", listed.text);

    // Without the option: today's JSON body.
    harness().await.get("/keys/akey_01h455vb4pex5vsknk084sn02q").await.assert_error(404, "not_found");
}

#[tokio::test]
async fn problem_details_say_no_more_than_the_json_body_of_a_store_failure_or_a_pasted_key() {
    let h = harness_with(with_config(AdminConfig::with_problem_details), false).await;
    // A raw key pasted into the wrong field is not echoed back.
    let pasted = h.post("/keys", serde_json::json!({"name": "k", "scopes": h.admin})).await;
    assert_eq!(
        (pasted.status.as_u16(), &pasted.body["code"]),
        (422, &serde_json::json!("invalid_body")),
        "{}",
        pasted.text
    );
    assert!(!pasted.text.contains(&h.admin) && pasted.text.contains("[REDACTED]"), "{}", pasted.text);

    h.store.fail(true);
    let down = h.get("/keys").await;
    assert_eq!((down.status.as_u16(), &down.body["code"]), (503, &serde_json::json!("unavailable")), "{}", down.text);
    assert!(!down.text.contains("hunter2") && !down.text.contains("refused"), "{}", down.text);
}
