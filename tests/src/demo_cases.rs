//! Cases both web demos (`example-axum`, `example-actix`) must pass, run
//! against their binaries: each demo's `tests/shutdown.rs` is one line,
//! `keysmith_tests::demo_cases_tests!(env!("CARGO_BIN_EXE_…"));`.

use std::process::Command;
use std::time::Duration;

/// One `#[test]` per case, each run against the demo binary `$binary`.
#[macro_export]
macro_rules! demo_cases_tests {
    ($binary:expr) => {
        $crate::demo_cases_tests!(@cases $binary;
            a_slow_client_does_not_hold_the_demo_past_the_shutdown_deadline,
            a_half_sent_head_is_disconnected_after_the_header_timeout,
            imported_keys_of_an_accepted_prefix_pass_the_demo_as_they_are,
            the_demo_serves_its_probes_and_metrics_when_asked,
        );
    };
    (@cases $binary:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::demo_cases::$case($binary);
            }
        )*
    };
}

use crate::server_process::{ServerProcess, half_head, request, slow_body, wait_closed};

/// Starts the demo `binary` on a fresh SQLite database in `dir`, on a free
/// port, with these `KEYSMITH_HEADER_TIMEOUT` and
/// `KEYSMITH_SHUTDOWN_TIMEOUT` (seconds), and without Redis.
///
/// # Panics
/// When the demo does not start.
#[must_use]
pub fn start_demo(binary: &str, dir: &std::path::Path, header_timeout: u64, shutdown_timeout: u64) -> ServerProcess {
    start_demo_with(binary, dir, header_timeout, shutdown_timeout, &[])
}

/// [`start_demo`] with more environment variables.
///
/// # Panics
/// When the demo does not start.
#[must_use]
pub fn start_demo_with(
    binary: &str, dir: &std::path::Path, header_timeout: u64, shutdown_timeout: u64, vars: &[(&str, &str)],
) -> ServerProcess {
    let mut command = Command::new(binary);
    command.env_remove("KEYSMITH_METRICS").envs(vars.iter().copied());
    command
        .current_dir(dir)
        .env("DATABASE_URL", format!("sqlite:{}", dir.join("demo.db").display()))
        .env("PORT", "0")
        .env("KEYSMITH_HEADER_TIMEOUT", header_timeout.to_string())
        .env("KEYSMITH_SHUTDOWN_TIMEOUT", shutdown_timeout.to_string())
        .env_remove("REDIS_URL")
        .env_remove("REDIS_RATE_LIMIT");
    ServerProcess::start(command)
}

/// Slow clients do not keep the demo alive after SIGTERM past its shutdown
/// deadline (1 s here; the header timeout is an hour away): one that sent
/// half a request head, and one whose request is in flight, its body half
/// sent (which the demo waits for until the deadline). The usage queued
/// before the signal is written.
///
/// # Panics
/// When the demo does not behave so.
pub fn a_slow_client_does_not_hold_the_demo_past_the_shutdown_deadline(binary: &str) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut demo = start_demo(binary, dir.path(), 3600, 1);
    let reader = format!("Bearer {}", demo.printed("KEYSMITH_DEMO_READ_KEY"));
    let me = request(demo.addr(), "GET", "/me", &[("Authorization", &reader)], b"");
    assert_eq!(me.status, 200, "{}", me.body);
    let half_head = half_head(demo.addr());
    let admin = format!("Bearer {}", demo.printed("KEYSMITH_DEMO_ADMIN_KEY"));
    let headers = [("Authorization", admin.as_str()), ("Content-Type", "application/json")];
    let half_body = slow_body(demo.addr(), "POST", "/users", &headers);

    demo.terminate();
    let (status, took) = demo.wait_for_exit(Duration::from_secs(60));
    assert!(status.success(), "the demo exited with {status}: {}", demo.stderr());
    assert!(took >= Duration::from_millis(900), "the request in flight was not given the deadline: {took:?}");
    // Far more than the deadline and the usage write take, far less than a
    // framework's default deadline (actix-web's is 30 s).
    assert!(took < Duration::from_secs(20), "the deadline was not kept: {took:?}");
    let stdout = demo.stdout();
    assert!(
        stdout.contains("usage records written: 1, dropped: 0, failed: 0."),
        "the /me request is not written: {stdout}"
    );
    for slow in [half_head, half_body] {
        let (answer, _) = wait_closed(slow, Duration::from_secs(5));
        assert!(!answer.contains(" 201 "), "the half-sent request was served: {answer}");
    }
}

/// A client that has not sent a whole request head within the header
/// timeout (1 s here) is disconnected, unserved; the demo goes on serving.
///
/// # Panics
/// When the demo does not behave so.
pub fn a_half_sent_head_is_disconnected_after_the_header_timeout(binary: &str) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut demo = start_demo(binary, dir.path(), 1, 10);
    // The server's clock starts at the connection: the floor is measured from
    // before it (a loaded machine may take a while to see the head read).
    let connecting = std::time::Instant::now();
    let (answer, waited) = wait_closed(half_head(demo.addr()), Duration::from_secs(20));
    let since_connect = connecting.elapsed();
    // axum's server closes without a word, actix-web's answers 408 first.
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    // At the configured timeout, not a framework's default (actix-web's is 5 s).
    assert!(since_connect >= Duration::from_millis(900), "closed before the header timeout: {since_connect:?}");
    assert!(waited < Duration::from_secs(4), "not closed at the header timeout: {waited:?}");
    assert_eq!(request(demo.addr(), "GET", "/health", &[], b"").status, 200);
    demo.terminate();
    let (status, _) = demo.wait_for_exit(Duration::from_secs(60));
    assert!(status.success(), "the demo exited with {status}: {}", demo.stderr());
}

/// The demo's probes need no key: `/health` while it serves, `/ready`
/// naming the store and the change feed; with `KEYSMITH_METRICS=1`,
/// `/metrics` counts what it validated, and without it `/metrics` is not a
/// probe.
///
/// # Panics
/// When the demo does not behave so.
pub fn the_demo_serves_its_probes_and_metrics_when_asked(binary: &str) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut demo = start_demo_with(binary, dir.path(), 10, 1, &[("KEYSMITH_METRICS", "1")]);
    let health = request(demo.addr(), "GET", "/health", &[], b"");
    assert_eq!((health.status, health.body.as_str()), (200, r#"{"status":"ok"}"#));
    let ready = request(demo.addr(), "GET", "/ready", &[], b"");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, r#"{"status":"ready","checks":{"store":"up","change_feed":"none"}}"#)
    );
    let reader = format!("Bearer {}", demo.printed("KEYSMITH_DEMO_READ_KEY"));
    assert_eq!(request(demo.addr(), "GET", "/me", &[("Authorization", &reader)], b"").status, 200);
    let metrics = request(demo.addr(), "GET", "/metrics", &[], b"");
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    let validated = metrics
        .body
        .lines()
        .find(|line| line.starts_with("keysmith_validations_total{") && line.contains(r#"outcome="valid""#));
    assert!(validated.is_some_and(|line| line.ends_with(" 1")), "{}", metrics.body);
    demo.terminate();
    let (status, _) = demo.wait_for_exit(Duration::from_secs(60));
    assert!(status.success(), "the demo exited with {status}: {}", demo.stderr());

    let dir = tempfile::tempdir().expect("temporary directory");
    let mut demo = start_demo(binary, dir.path(), 10, 1);
    assert_eq!(request(demo.addr(), "GET", "/ready", &[], b"").status, 200);
    let metrics = request(demo.addr(), "GET", "/metrics", &[], b"");
    assert_ne!(metrics.status, 200, "{}", metrics.body);
    demo.terminate();
    let (status, _) = demo.wait_for_exit(Duration::from_secs(60));
    assert!(status.success(), "the demo exited with {status}: {}", demo.stderr());
}

/// Keys imported into the demo's database in the application's own format
/// validate as they are once `KEYSMITH_LEGACY_PREFIXES` accepts their
/// prefix; a revoked one is refused as revoked, one of another prefix as
/// malformed.
///
/// # Panics
/// When the demo does not behave so.
pub fn imported_keys_of_an_accepted_prefix_pass_the_demo_as_they_are(binary: &str) {
    use keysmith_core::{Engine, Hasher as _, ImportOptions, ImportRow, Sha256Hasher, Store as _};
    let dir = tempfile::tempdir().expect("temporary directory");
    let (active, revoked, other) =
        ("mk_4c71ve0123456789abcdef01234567", "mk_9e70ked0123456789abcdef0123456", "pk_07he90123456789abcdef012345678");
    let url = format!("sqlite:{}", dir.path().join("demo.db").display());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let store = keysmith_sqlx::SqliteStore::connect(&url).await.expect("the demo's database");
        store.migrate().await.expect("migrated");
        let engine = Engine::builder(store).build().expect("an engine");
        let row = |raw: &str, line| ImportRow {
            line,
            hash: Sha256Hasher.hash(raw).to_hex(),
            hint: Some(raw[..9].to_owned()),
            ..ImportRow::default()
        };
        let rows =
            [row(active, 2), ImportRow { revoked_at: Some(chrono::Utc::now()), ..row(revoked, 3) }, row(other, 4)];
        let options = ImportOptions::new().with_scopes(["read:users"]);
        let report = engine.tenant("keysmith-demo", "demo").import_keys(&rows, &options).await.expect("imported");
        assert_eq!(report.imported, 3, "{report:?}");
        engine.shutdown().await;
        engine.store().close().await;
    });

    let mut demo = start_demo_with(binary, dir.path(), 10, 1, &[("KEYSMITH_LEGACY_PREFIXES", "mk")]);
    let get = |raw: &str| request(demo.addr(), "GET", "/me", &[("Authorization", &format!("Bearer {raw}"))], b"");
    let passed = get(active);
    assert_eq!(passed.status, 200, "{}", passed.body);
    let refused = get(revoked);
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("key_revoked"), "{}", refused.body);
    let malformed = get(other);
    assert_eq!(malformed.status, 401, "{}", malformed.body);
    assert!(malformed.body.contains("malformed_key"), "{}", malformed.body);
    demo.terminate();
    let (status, _) = demo.wait_for_exit(Duration::from_secs(60));
    assert!(status.success(), "the demo exited with {status}: {}", demo.stderr());
}
