//! `keysmith bootstrap-admin` and `keysmith serve`: a first admin key on a
//! new database, and the management API and dashboard over real HTTP.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;

use keysmith_core::{Engine, RequestContext, Store as _};
use keysmith_sqlx::SqliteStore;

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
}

/// One HTTP/1.1 request; the status line, the headers (lowercase) and the body.
fn http(addr: &str, method: &str, path: &str, key: Option<&str>) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let auth = key.map(|key| format!("Authorization: Bearer {key}\r\n")).unwrap_or_default();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[test]
fn serve_answers_the_management_api_and_the_dashboard_and_stops_on_sigterm() {
    let (_dir, ks) = temp_db();
    let admin = ks.json(&["bootstrap-admin"]);
    let raw = str_of(&admin, "raw_key").to_owned();
    let admin_id = str_of(&admin["key"], "id").to_owned();

    let (mut child, mut stdout, addr) = start_serve(&ks, &["--app", APP, "--realm", "ops"]);

    let (status, _, body) = http(&addr, "GET", "/keysmith/v1/keys", Some(&raw));
    assert_eq!(status, 200, "{body}");
    let keys: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(keys["items"][0]["id"], admin_id.as_str());

    let (status, head, _) = http(&addr, "GET", "/keysmith/v1/keys", None);
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer realm=\"ops\""), "{head}");

    let (status, head, body) = http(&addr, "GET", "/keysmith/ui/", None);
    assert_eq!(status, 200);
    assert!(head.contains("content-security-policy: default-src 'self'"), "{head}");
    assert!(body.contains("app.js"), "{body}");
    assert_eq!(http(&addr, "GET", "/", None).0, 303);

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "serve exited with {status}: {rest}");
    assert!(rest.contains("Stopped"), "{rest}");

    // The one request made with the admin key was written on shutdown.
    let usage = ks.json(&["usage", &admin_id]);
    let requests: u64 = usage.as_array().unwrap().iter().map(|day| day["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 1, "{usage}");
}

/// Starts `keysmith serve` on a free port with `args`; the child, its
/// stdout and the address it listens on.
fn start_serve(ks: &Keysmith, args: &[&str]) -> (std::process::Child, BufReader<std::process::ChildStdout>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keysmith"))
        .args(["--database-url", ks.url(), "serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let Some(addr) = first.trim().strip_prefix("Keysmith is listening on http://").map(str::to_owned) else {
        let _ = child.kill();
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        panic!("serve did not start: {first:?} {stderr}")
    };
    (child, stdout, addr)
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
    let (mut child, _stdout, addr) = start_serve(
        &ks,
        &["--github-keys-url", &keys_url, "--leak-policy", "revoke", "--tenant-leak-policy", APP, TENANT, "suspend"],
    );

    let body = alert_body(&[&raw]);
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /keysmith/v1/secret-scanning/github HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Github-Public-Key-Identifier: {}\r\nGithub-Public-Key-Signature: {}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        github.identifier(),
        github.sign(body.as_bytes()),
        body.len(),
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let _ = child.kill();
    let _ = child.wait();

    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"label\":\"true_positive\""), "{response}");
    assert!(!response.contains(&raw), "the token was echoed");
    let key = ks.json(&["keys", "show", &id]);
    assert_eq!(key["state"], "suspended", "the tenant's override applies: {key}");
    assert_eq!(key["revoked_reason"], "leaked: https://github.com/octo/leaky/blob/main/config-0.env");
}

#[test]
fn secret_scanning_pattern_prints_the_regex_for_the_prefixes_and_environments_in_use() {
    let defaults = bare(&["secret-scanning", "pattern"]).ok();
    assert!(defaults.contains(r"\b(?:sk)_(?:live)_[0-9A-Za-z]{38}\b"), "{defaults}");
    assert!(defaults.contains("CRC-32"), "the checksum rule is printed: {defaults}");
    let chosen =
        bare(&["--json", "secret-scanning", "pattern", "--prefix", "sk,acme", "--environment", "live,test"]).ok();
    let chosen: serde_json::Value = serde_json::from_str(&chosen).unwrap();
    assert_eq!(chosen["pattern"], r"\b(?:sk|acme)_(?:live|test)_[0-9A-Za-z]{38}\b");
    bare(&["secret-scanning", "pattern", "--prefix", "SK"]).fails(2);
    bare(&["secret-scanning", "pattern", "--environment", "prod"]).fails(2);
}
