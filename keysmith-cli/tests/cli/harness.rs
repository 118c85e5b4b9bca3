//! Runs the `keysmith` binary and reads what it printed.

use std::process::Command;

use serde_json::Value;

/// The app and tenant every flow acts for.
pub(crate) const APP: &str = "myapp";
/// See [`APP`].
pub(crate) const TENANT: &str = "acme";

/// The binary, pointed at one database and one tenant.
#[derive(Debug, Clone)]
pub(crate) struct Keysmith {
    url: String,
    tenant: String,
}

/// One finished run.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub(crate) fn ok(self) -> String {
        assert_eq!(self.code, 0, "expected success, got {}: {}", self.code, self.stderr);
        // A change nothing publishes (SQLite, MySQL) is noted, once.
        let quiet = self.stderr.is_empty() || (self.stderr.starts_with("note: ") && self.stderr.lines().count() == 1);
        assert!(quiet, "stderr on success: {}", self.stderr);
        self.stdout
    }

    /// Asserts failure with `code`: nothing on stdout, one `error: ` line on
    /// stderr, which is returned.
    #[track_caller]
    pub(crate) fn fails(self, code: i32) -> String {
        assert_eq!(self.code, code, "expected exit {code}; stdout: {} stderr: {}", self.stdout, self.stderr);
        assert!(self.stdout.is_empty(), "stdout on failure: {}", self.stdout);
        assert!(self.stderr.starts_with("error: "), "{}", self.stderr);
        assert_eq!(self.stderr.lines().count(), 1, "not one line: {:?}", self.stderr);
        self.stderr
    }
}

impl Keysmith {
    /// The binary on the database at `url`, acting for [`APP`]/[`TENANT`].
    pub(crate) fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), tenant: TENANT.to_owned() }
    }

    /// The same database, acting for another tenant of [`APP`].
    pub(crate) fn for_tenant(&self, tenant: &str) -> Self {
        Self { url: self.url.clone(), tenant: tenant.to_owned() }
    }

    /// The database URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Runs `keysmith --database-url … --app … --tenant … ARGS`.
    pub(crate) fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["--database-url", &self.url, "--app", APP, "--tenant", &self.tenant];
        all.extend_from_slice(args);
        bare(&all)
    }

    /// Runs with `--json`, asserts success and parses stdout as one document.
    #[track_caller]
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let stdout = self.run(&all).ok();
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"))
    }
}

/// Runs `keysmith ARGS` with none of its environment variables set.
pub(crate) fn bare(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_keysmith"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("KEYSMITH_APP")
        .env_remove("KEYSMITH_TENANT")
        .env_remove("RUST_LOG")
        .env_remove("REDIS_URL")
        .output()
        .expect("cannot run keysmith");
    Run {
        code: output.status.code().expect("keysmith was killed by a signal"),
        stdout: String::from_utf8(output.stdout).expect("stdout is not UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is not UTF-8"),
    }
}

/// A JSON string field.
#[track_caller]
pub(crate) fn str_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_else(|| panic!("no string {field:?} in {value}"))
}
