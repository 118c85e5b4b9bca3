//! `keysmith bootstrap-admin` and `keysmith serve`: a first admin key on a
//! new database, and the management API and dashboard over real HTTP.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use keysmith_core::{Engine, RequestContext, Store as _};
use keysmith_sqlx::SqliteStore;
use keysmith_tests::server_process::{Response, ServerProcess, half_head, keep_alive_request, request, wait_closed};

use crate::harness::{APP, Keysmith, TENANT, bare, str_of};

fn temp_db() -> (tempfile::TempDir, Keysmith) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("keys.db").display());
    (dir, Keysmith::new(url))
}

/// The secret of the one `raw key: …` line of `stdout`.
#[track_caller]
fn raw_key_line(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().filter_map(|line| line.strip_prefix("raw key: ")).collect();
    assert_eq!(lines.len(), 1, "not one raw key line: {stdout}");
    lines[0].to_owned()
}

#[tokio::test]
async fn bootstrap_admin_prints_a_working_admin_key_once_on_a_new_database() {
    let (_dir, ks) = temp_db();
    // No `migrate` first: bootstrap-admin brings the schema up itself.
    let stdout = ks.run(&["bootstrap-admin"]).ok();
    let raw = raw_key_line(&stdout);
    assert_eq!(stdout.matches(&raw).count(), 1, "the secret is printed once: {stdout}");

    let store = Arc::new(SqliteStore::connect(ks.url()).await.unwrap());
    let engine = Engine::builder(store.clone()).build().unwrap();
    let admin = vec![keysmith_admin::ADMIN_SCOPE.to_owned()];
    let validation = engine.validate(&raw, &RequestContext::new().with_required_scopes(&admin)).await.unwrap();
    assert_eq!((validation.key.tenant.app_id.as_str(), validation.key.tenant.tenant_id.as_str()), (APP, TENANT));
    assert_eq!(validation.key.name, "bootstrap admin");

    // A second run makes a second key; --json carries it as `raw_key`.
    let second = ks.json(&["bootstrap-admin", "--name", "ops"]);
    assert_ne!(str_of(&second, "raw_key"), raw);
    assert_eq!(second["key"]["scopes"], serde_json::json!([keysmith_admin::ADMIN_SCOPE]));
    engine.shutdown().await;
    store.close().await;
}

#[test]
fn bootstrap_admin_needs_a_tenant() {
    let (_dir, ks) = temp_db();
    let error = bare(&["--database-url", ks.url(), "--app", APP, "bootstrap-admin"]).fails(2);
    assert!(error.contains("--tenant"), "{error}");
}

#[test]
fn serve_refuses_bad_flags_before_opening_the_database() {
    let never = "postgres://postgres@127.0.0.1:1/never";
    let error = bare(&["--database-url", never, "serve", "--trusted-proxy", "10.0.0.0/33"]).fails(2);
    assert!(error.contains("10.0.0.0/33"), "{error}");
    bare(&["--database-url", never, "serve", "--realm", "a\"b"]).fails(2);
    bare(&["--database-url", never, "serve", "--listen", "localhost"]).fails(2);
    for (flag, value) in [("--header-timeout", "0"), ("--header-timeout", "2h"), ("--shutdown-timeout", "1h1s")] {
        let error = bare(&["--database-url", never, "serve", flag, value]).fails(2);
        assert!(error.contains("is not between"), "{error}");
    }
}

#[test]
fn serve_help_names_the_timeouts_and_their_defaults() {
    let help = bare(&["serve", "--help"]).ok();
    for text in [
        "--header-timeout <DURATION>",
        "[env: KEYSMITH_HEADER_TIMEOUT",
        "--shutdown-timeout <DURATION>",
        "[env: KEYSMITH_SHUTDOWN_TIMEOUT",
        "[default: 10s]",
        "256 KiB",
    ] {
        assert!(help.contains(text), "{text:?} not in {help}");
    }
}

/// `keysmith --app myapp serve --listen 127.0.0.1:0 EXTRA…` on `ks`'s database.
pub(crate) fn serve(ks: &Keysmith, extra: &[&str]) -> ServerProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keysmith"));
    command.args(["--database-url", ks.url(), "--app", APP, "serve", "--listen", "127.0.0.1:0"]).args(extra);
    for var in [
        "KEYSMITH_HEADER_TIMEOUT",
        "KEYSMITH_SHUTDOWN_TIMEOUT",
        "KEYSMITH_LISTEN",
        "KEYSMITH_METRICS",
        "KEYSMITH_PROBLEM_DETAILS",
        "KEYSMITH_FORWARDED_HEADER",
        "KEYSMITH_LOG_FORMAT",
        "RUST_LOG",
        "REDIS_URL",
    ] {
        command.env_remove(var);
    }
    ServerProcess::start(command)
}

/// A new database with an admin key: the database, the raw key and its id.
fn with_admin() -> (tempfile::TempDir, Keysmith, String, String) {
    let (dir, ks) = temp_db();
    let admin = ks.json(&["bootstrap-admin"]);
    let (raw, id) = (str_of(&admin, "raw_key").to_owned(), str_of(&admin["key"], "id").to_owned());
    (dir, ks, raw, id)
}

/// One request with `key` as a bearer token, a JSON `body` if not empty;
/// the answer.
pub(crate) fn call(server: &ServerProcess, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> Response {
    let auth = key.map(|key| format!("Bearer {key}"));
    let mut headers = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    request(server.addr(), method, path, &headers, body)
}

/// The requests the usage roll-ups of `key_id` count.
fn requests_recorded(ks: &Keysmith, key_id: &str) -> u64 {
    let usage = ks.json(&["usage", key_id]);
    usage.as_array().unwrap().iter().map(|day| day["requests"].as_u64().unwrap()).sum()
}

#[test]
fn serve_answers_the_management_api_and_the_dashboard_and_stops_on_sigterm() {
    let (_dir, ks, raw, admin_id) = with_admin();
    let mut server = serve(&ks, &["--realm", "ops"]);

    let answer = call(&server, "GET", "/keysmith/v1/keys", Some(&raw), b"");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let keys: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(keys["items"][0]["id"], admin_id.as_str());

    let answer = call(&server, "GET", "/keysmith/v1/keys", None, b"");
    assert_eq!(answer.status, 401);
    assert!(answer.head.contains("www-authenticate: bearer realm=\"ops\""), "{}", answer.head);

    let answer = call(&server, "GET", "/keysmith/ui/", None, b"");
    assert_eq!(answer.status, 200);
    assert!(answer.head.contains("content-security-policy: default-src 'self'"), "{}", answer.head);
    assert!(answer.body.contains("app.js"), "{}", answer.body);
    assert_eq!(call(&server, "GET", "/", None, b"").status, 303);

    server.terminate();
    let (status, _) = server.wait_for_exit(Duration::from_secs(60));
    assert!(status.success(), "serve exited with {status}: {}", server.stderr());
    assert!(server.stdout().contains("Stopped; queued usage records written."), "{}", server.stdout());

    // The one request made with the admin key was written on shutdown.
    assert_eq!(requests_recorded(&ks, &admin_id), 1);
}

#[test]
fn a_slow_client_does_not_hold_serve_past_the_shutdown_deadline_and_queued_usage_is_written() {
    let (_dir, ks, raw, admin_id) = with_admin();
    // The header timeout is far away: only the shutdown deadline can end
    // the slow client's connection.
    let mut server = serve(&ks, &["--header-timeout", "1h", "--shutdown-timeout", "1s"]);
    assert_eq!(call(&server, "GET", "/keysmith/v1/keys", Some(&raw), b"").status, 200);
    let slow = half_head(server.addr());

    server.terminate();
    let (status, took) = server.wait_for_exit(Duration::from_secs(60));
    assert!(status.success(), "serve exited with {status}: {}", server.stderr());
    assert!(took >= Duration::from_millis(900), "the slow client was not given the deadline: {took:?}");
    assert!(
        server
            .stdout()
            .contains("Stopped at the shutdown deadline (1 open connection dropped); queued usage records written."),
        "{}",
        server.stdout()
    );
    assert_eq!(wait_closed(slow, Duration::from_secs(5)).0, "", "dropped without an answer");
    assert_eq!(requests_recorded(&ks, &admin_id), 1, "the usage queued before the signal was written");
}

#[test]
fn serve_disconnects_a_half_sent_head_after_the_header_timeout() {
    let (_dir, ks, raw, _) = with_admin();
    let mut server = serve(&ks, &["--header-timeout", "1s"]);
    // The server's clock starts at the connection: the floor is measured from
    // before it (a loaded machine may take a while to see the head read).
    let connecting = std::time::Instant::now();
    let slow = half_head(server.addr());
    let (answer, waited) = wait_closed(slow, Duration::from_secs(30));
    let since_connect = connecting.elapsed();
    assert_eq!(answer, "", "no answer, the connection is closed");
    assert!(since_connect >= Duration::from_millis(900), "closed before the header timeout: {since_connect:?}");
    assert!(waited < Duration::from_secs(4), "not closed at the header timeout (the default is 10s): {waited:?}");
    // The server goes on serving.
    assert_eq!(call(&server, "GET", "/keysmith/v1/keys", Some(&raw), b"").status, 200);
    server.terminate();
    assert!(server.wait_for_exit(Duration::from_secs(60)).0.success(), "{}", server.stderr());
}

#[test]
fn serve_answers_413_to_an_oversized_body_and_changes_nothing() {
    let (_dir, ks, raw, admin_id) = with_admin();
    let mut server = serve(&ks, &[]);
    // One byte over the limit (a key with padded metadata).
    let frame = r#"{"name":"big","metadata":{"pad":""}}"#;
    let pad = "x".repeat(keysmith_admin::DEFAULT_BODY_LIMIT + 1 - frame.len());
    let body = frame.replace(r#""pad":"""#, &format!(r#""pad":"{pad}""#));
    let answer = call(&server, "POST", "/keysmith/v1/keys", Some(&raw), body.as_bytes());
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(answer.head.contains("content-type: application/json"), "{}", answer.head);
    let error: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(error["error"]["code"], "payload_too_large");

    let listed = call(&server, "GET", "/keysmith/v1/keys", Some(&raw), b"");
    let keys: serde_json::Value = serde_json::from_str(&listed.body).unwrap();
    let ids: Vec<&str> = keys["items"].as_array().unwrap().iter().map(|key| key["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [admin_id.as_str()], "no key was created");
    server.terminate();
    assert!(server.wait_for_exit(Duration::from_secs(60)).0.success(), "{}", server.stderr());
}

/// A supervisor may stop `serve` as soon as it has said where it listens:
/// the signal handlers are installed before that line, so SIGTERM then is a
/// graceful stop (exit 0, usage written), never the default action that
/// ends the process at once (seen as "exited with signal 15" when the
/// handler was installed only once the server first waited).
#[test]
fn sigterm_as_soon_as_serve_announces_its_address_stops_it_gracefully() {
    let (_dir, ks, _, _) = with_admin();
    let mut server = serve(&ks, &[]);
    server.terminate();
    let (status, _) = server.wait_for_exit(Duration::from_secs(60));
    assert!(status.success(), "serve exited with {status}: {}", server.stderr());
    assert!(server.stdout().contains("Stopped; queued usage records written."), "{}", server.stdout());
}

#[test]
fn an_idle_keep_alive_connection_does_not_delay_serves_shutdown() {
    let (_dir, ks, _, _) = with_admin();
    // Neither timeout is what closes the connection.
    let mut server = serve(&ks, &["--header-timeout", "1h", "--shutdown-timeout", "1h"]);
    let (idle, answer) = keep_alive_request(server.addr(), "/");
    assert_eq!(answer.status, 303);

    server.terminate();
    let (status, took) = server.wait_for_exit(Duration::from_secs(60));
    assert!(status.success(), "serve exited with {status}: {}", server.stderr());
    assert!(server.stdout().contains("Stopped; queued usage records written."), "{took:?} {}", server.stdout());
    assert_eq!(wait_closed(idle, Duration::from_secs(5)).0, "");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_takes_github_alerts_with_its_keys_url_and_leak_policy() {
    use keysmith_tests::github::{FakeGithub, alert_body};

    let (_dir, ks) = temp_db();
    let github = FakeGithub::start().await;
    ks.run(&["migrate"]).ok();
    let created = ks.json(&["keys", "create", "--name", "ci"]);
    let (raw, id) = (str_of(&created, "raw_key").to_owned(), str_of(&created["key"], "id").to_owned());
    let keys_url = github.keys_url();
    let mut server = serve(
        &ks,
        &["--github-keys-url", &keys_url, "--leak-policy", "revoke", "--tenant-leak-policy", APP, TENANT, "suspend"],
    );

    let body = alert_body(&[&raw]);
    let (identifier, signature) = (github.identifier().to_owned(), github.sign(body.as_bytes()));
    let headers = [
        ("Content-Type", "application/json"),
        ("Github-Public-Key-Identifier", identifier.as_str()),
        ("Github-Public-Key-Signature", signature.as_str()),
    ];
    let answer = request(server.addr(), "POST", "/keysmith/v1/secret-scanning/github", &headers, body.as_bytes());
    server.terminate();
    assert!(server.wait_for_exit(Duration::from_secs(60)).0.success(), "{}", server.stderr());

    assert_eq!(answer.status, 200, "{}", answer.body);
    let response = answer.body;
    assert!(response.contains("\"label\":\"true_positive\""), "{response}");
    assert!(!response.contains(&raw), "the token was echoed");
    let key = ks.json(&["keys", "show", &id]);
    assert_eq!(key["state"], "suspended", "the tenant's override applies: {key}");
    assert_eq!(key["revoked_reason"], "leaked: https://github.com/octo/leaky/blob/main/config-0.env");
    // Logged by default, as a notice of Keysmith's, without the token.
    let log = server.stderr();
    assert!(log.contains("keysmith::secret_scanning") && log.contains("secret scanning alert handled"), "{log}");
    assert!(log.contains("true_positives=1") && !log.contains(&raw), "{log}");
}

#[test]
fn serve_logs_what_rust_log_asks_for_as_text_or_json_lines_on_stderr() {
    let (_dir, ks) = temp_db();
    // Quiet by default: no warning, so nothing.
    let mut server = serve(&ks, &[]);
    server.terminate();
    assert!(server.wait_for_exit(Duration::from_secs(60)).0.success(), "{}", server.stderr());
    assert_eq!(server.stderr(), "");

    // The migration's statements at debug, one JSON object a line.
    let mut command = Command::new(env!("CARGO_BIN_EXE_keysmith"));
    command
        .args(["--database-url", ks.url(), "serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "sqlx=debug,warn");
    let mut server = ServerProcess::start(command);
    server.terminate();
    assert!(server.wait_for_exit(Duration::from_secs(60)).0.success(), "{}", server.stderr());
    let log = server.stderr();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect();
    assert!(lines.iter().any(|line| line["target"] == "sqlx::query"), "{log}");
    assert!(lines.iter().all(|line| line["level"] == "DEBUG" || line["level"] == "WARN" || line["level"] == "ERROR"));
}

#[test]
fn a_rust_log_that_does_not_parse_is_a_usage_error() {
    let (_dir, ks) = temp_db();
    let output = Command::new(env!("CARGO_BIN_EXE_keysmith"))
        .args(["--database-url", ks.url(), "migrate"])
        .env("RUST_LOG", "keysmith=loud")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("error: RUST_LOG") && stderr.contains("keysmith=loud"), "{stderr}");
}

#[test]
fn serve_reads_the_client_address_from_the_one_forwarding_header_it_is_told() {
    let (_dir, ks) = temp_db();
    ks.run(&["migrate"]).ok();
    let policy = ks.json(&["policies", "create", "--name", "office", "--allow-ip", "10.0.0.0/8"]);
    let policy_id = str_of(&policy, "id").to_owned();
    let created = ks.json(&["keys", "create", "--name", "ops", "--scope", "keysmith:admin", "--policy", &policy_id]);
    let raw = str_of(&created, "raw_key").to_owned();
    let auth = format!("Bearer {raw}");
    let list = |server: &ServerProcess, header: (&str, &str)| {
        request(server.addr(), "GET", "/keysmith/v1/keys", &[("Authorization", auth.as_str()), header], b"").status
    };
    let forwarded = ("Forwarded", "for=10.1.1.1");
    let x_forwarded_for = ("X-Forwarded-For", "10.1.1.1");

    // The default header is X-Forwarded-For; a Forwarded header is not read.
    let mut server = serve(&ks, &["--trusted-proxy", "127.0.0.1"]);
    assert_eq!((list(&server, x_forwarded_for), list(&server, forwarded)), (200, 403));
    server.terminate();
    assert!(server.wait_for_exit(Duration::from_secs(60)).0.success(), "{}", server.stderr());

    let mut server = serve(&ks, &["--trusted-proxy", "127.0.0.1", "--forwarded-header", "forwarded"]);
    assert_eq!((list(&server, x_forwarded_for), list(&server, forwarded)), (403, 200));
    server.terminate();
    assert!(server.wait_for_exit(Duration::from_secs(60)).0.success(), "{}", server.stderr());
}

#[test]
fn secret_scanning_pattern_prints_the_regex_for_the_prefixes_and_environments_in_use() {
    let defaults = bare(&["secret-scanning", "pattern"]).ok();
    assert!(defaults.contains(r"\b(?:sk)_(?:live)_[0-9A-Za-z]{38}\b"), "{defaults}");
    assert!(defaults.contains("CRC-32"), "the checksum rule is printed: {defaults}");
    assert!(defaults.contains("Test keys (made as real keys are, never stored: they validate nowhere):\n  sk_live_"));
    let chosen =
        bare(&["--json", "secret-scanning", "pattern", "--prefix", "sk,acme", "--environment", "live,test"]).ok();
    let chosen: serde_json::Value = serde_json::from_str(&chosen).unwrap();
    let test_keys: Vec<&str> = chosen["test_keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    let shapes: Vec<&str> = test_keys.iter().map(|key| &key[..key.len() - 38]).collect();
    assert_eq!(shapes, ["sk_live_", "sk_test_", "acme_live_", "acme_test_"], "one test key per prefix and environment");
    for key in test_keys {
        assert!(keysmith_core::ParsedKey::parse(key).is_some(), "{key}: the shape and checksum of a real key");
    }
    assert_eq!(chosen["pattern"], r"\b(?:sk|acme)_(?:live|test)_[0-9A-Za-z]{38}\b");
    let repeated = bare(&["--json", "secret-scanning", "pattern", "--environment", "live,test,live"]).ok();
    let repeated: serde_json::Value = serde_json::from_str(&repeated).unwrap();
    assert_eq!(repeated["pattern"], r"\b(?:sk)_(?:live|test)_[0-9A-Za-z]{38}\b", "each environment once");
    bare(&["secret-scanning", "pattern", "--prefix", "SK"]).fails(2);
    bare(&["secret-scanning", "pattern", "--environment", "prod"]).fails(2);
}

#[test]
fn serve_answers_health_and_ready_without_a_key_and_metrics_only_when_asked() {
    let (_dir, ks, _raw, _id) = with_admin();
    let server = serve(&ks, &[]);
    let health = call(&server, "GET", "/health", None, b"");
    assert_eq!((health.status, health.body.as_str()), (200, r#"{"status":"ok"}"#));
    assert!(health.head.contains("cache-control: no-store"), "{}", health.head);
    let ready = call(&server, "GET", "/ready", None, b"");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body, r#"{"status":"ready","checks":{"store":"up","change_feed":"none"}}"#);
    assert_eq!(call(&server, "GET", "/metrics", None, b"").status, 404, "metrics are opt-in");
    let refused = call(&server, "GET", "/keysmith/v1/keys", None, b"");
    assert!(refused.head.contains("content-type: application/json"), "{}", refused.head);
}

#[test]
fn serve_answers_errors_as_problem_details_when_asked() {
    let (_dir, ks, raw, _id) = with_admin();
    let server = serve(&ks, &["--problem-details"]);
    let refused = call(&server, "GET", "/keysmith/v1/keys", None, b"");
    assert_eq!(refused.status, 401);
    assert!(refused.head.contains("content-type: application/problem+json"), "{}", refused.head);
    let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!((body["code"].as_str(), body["status"].as_u64()), (Some("missing_key"), Some(401)));
    let missing = call(&server, "GET", "/keysmith/v1/keys/akey_01h455vb4pex5vsknk084sn02q", Some(&raw), b"");
    let body: serde_json::Value = serde_json::from_str(&missing.body).unwrap();
    assert_eq!((missing.status, body["type"].as_str()), (404, Some("urn:keysmith:problem:not_found")));
}

#[test]
fn serve_metrics_count_validations_by_outcome_and_carry_no_key_hash_id_or_path() {
    let (_dir, ks, raw, id) = with_admin();
    let server = serve(&ks, &["--metrics"]);
    // Real traffic: valid calls on routes with ids in their path, an unknown
    // key, a malformed one.
    assert_eq!(call(&server, "GET", "/keysmith/v1/keys", Some(&raw), b"").status, 200);
    assert_eq!(call(&server, "GET", &format!("/keysmith/v1/keys/{id}"), Some(&raw), b"").status, 200);
    let revoked = ks.json(&["keys", "create", "--name", "gone"]);
    let (revoked_raw, revoked_id) = (str_of(&revoked, "raw_key").to_owned(), str_of(&revoked["key"], "id").to_owned());
    ks.run(&["keys", "revoke", &revoked_id]).ok();
    assert_eq!(call(&server, "GET", "/keysmith/v1/keys", Some(&revoked_raw), b"").status, 401);
    assert_eq!(call(&server, "GET", "/keysmith/v1/keys?secret=sk_live_abc", Some("sk_live_short"), b"").status, 401);

    let scrape = call(&server, "GET", "/metrics", None, b"");
    assert_eq!(scrape.status, 200, "{}", scrape.body);
    assert!(scrape.head.contains("content-type: text/plain; version=0.0.4"), "{}", scrape.head);
    let text = scrape.body;
    assert!(text.contains(r#"keysmith_validations_total{outcome="valid"} 2"#), "{text}");
    assert!(text.contains(r#"keysmith_validations_total{outcome="key_revoked"} 1"#), "{text}");
    assert!(text.contains(r#"keysmith_validations_total{outcome="malformed_key"} 1"#), "{text}");
    assert!(text.contains(r#"keysmith_events_total{event="key_validated"} 2"#), "{text}");
    assert!(text.contains("keysmith_validation_duration_seconds"), "{text}");

    // Nothing secret or unbounded in any label: only known label names, and
    // values that are codes.
    let hash = keysmith_core::Hasher::hash(&keysmith_core::Sha256Hasher, &raw).to_hex();
    for forbidden in [
        raw.as_str(),
        revoked_raw.as_str(),
        hash.as_str(),
        id.as_str(),
        revoked_id.as_str(),
        "/keysmith",
        "sk_live",
        "akey_",
        APP,
        TENANT,
    ] {
        assert!(!text.contains(forbidden), "{forbidden:?} in the metrics: {text}");
    }
    for labels in text.lines().filter(|line| !line.starts_with('#')).filter_map(|line| {
        let open = line.find('{')?;
        Some(&line[open + 1..line.rfind('}')?])
    }) {
        for pair in labels.split(',') {
            let (name, value) = pair.split_once('=').unwrap();
            assert!(
                ["outcome", "event", "component", "code", "quantile", "le"].contains(&name),
                "label {name} in {text}"
            );
            let value = value.trim_matches('"');
            assert!(
                value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.+-".contains(c)),
                "label value {value:?} in {text}"
            );
        }
    }
}
