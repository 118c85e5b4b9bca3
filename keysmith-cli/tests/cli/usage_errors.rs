//! Status 2: the command line could not be understood. None of these needs
//! a reachable database: they fail before it is opened.

use crate::harness::{Keysmith, bare};

/// A database that is never reached: every case fails before connecting.
fn ks() -> Keysmith {
    Keysmith::new("postgres://postgres@127.0.0.1:1/never")
}

#[test]
fn ids_of_the_wrong_type_are_usage_errors() {
    let policy_id = keysmith_core::PolicyId::new().to_string();
    let error = ks().run(&["keys", "show", &policy_id]).fails(2);
    assert!(error.contains("invalid akey id"), "{error}");
    ks().run(&["keys", "revoke", "akey_nope"]).fails(2);
    ks().run(&["policies", "delete", &keysmith_core::KeyId::new().to_string()]).fails(2);
    ks().run(&["scopes", "delete", "kscp"]).fails(2);
    ks().run(&["keys", "create", "--name", "x", "--policy", "akey_01h455vb4pex5vsknk084sn02q"]).fails(2);
}

#[test]
fn unparsable_values_are_usage_errors() {
    let key = keysmith_core::KeyId::new().to_string();
    let cases: &[&[&str]] = &[
        &["keys", "create", "--name", "x", "--expires-in", "3 weeks"],
        &["keys", "create", "--name", "x", "--expires-at", "tomorrow"],
        &["keys", "create", "--name", "x", "--expires-at", "2030-01-01", "--expires-in", "1d"],
        &["keys", "create", "--name", "x", "--metadata", "[1]"],
        &["keys", "create", "--name", "x", "--environment", "prod"],
        &["keys", "rotate", &key, "--grace", "soon"],
        &["keys", "rotate", &key, "--reason", "bored"],
        &["keys", "list", "--state", "dead"],
        &["keys", "list", "--limit", "0"],
        &["policies", "create", "--name", "p", "--rate-limit", "100"],
        &["policies", "create", "--name", "p", "--burst", "5"],
        &["policies", "create", "--name", "p", "--daily-quota", "-1"],
        &["usage", &key, "--period", "week"],
        &["usage", &key, "--from", "last monday"],
        &["usage", &key, "--limit", "5"],
        &["keys", "create"],
        &["keys", "frobnicate"],
        &["keys", "create", "--name", "x", "--scop", "read"],
    ];
    for args in cases {
        let run = ks().run(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        run.fails(2);
    }
}

#[test]
fn unknown_enum_values_are_refused_listing_the_allowed_ones() {
    let key = keysmith_core::KeyId::new().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["keys", "list", "--state", "bogus"], "[possible values: active, rotated, expired, revoked, suspended]"),
        (&["keys", "list", "--environment", "prod"], "[possible values: live, test, dev]"),
        (
            &["keys", "create", "--name", "x", "--credits", "5", "--refill", "5", "--refill-every", "week"],
            "[possible values: day, month]",
        ),
        // Usage has hours; a refill does not.
        (
            &["keys", "create", "--name", "x", "--credits", "5", "--refill", "5", "--refill-every", "hour"],
            "[possible values: day, month]",
        ),
        (&["keys", "rotate", &key, "--reason", "bored"], "[possible values: scheduled, compromised, expiring, manual]"),
        (&["usage", &key, "--period", "week"], "[possible values: hour, day, month]"),
        (&["policies", "create", "--name", "p", "--limit-by", "team"], "[possible values: key, owner]"),
    ];
    for (args, allowed) in cases {
        let error = ks().run(args).fails(2);
        assert!(error.contains("invalid value") && error.contains(allowed), "{args:?}: {error}");
    }
}

#[test]
fn tenant_commands_need_app_and_tenant() {
    let url = "postgres://postgres@127.0.0.1:1/never";
    let error = bare(&["--database-url", url, "keys", "list"]).fails(2);
    assert!(error.contains("--app") && error.contains("--tenant"), "{error}");
    let error = bare(&["--database-url", url, "--app", "a", "keys", "list"]).fails(2);
    assert!(error.contains("--tenant"), "{error}");
    let error = bare(&["--database-url", url, "--app", "a", "--tenant", " ", "policies", "list"]).fails(2);
    assert!(error.contains("--tenant"), "{error}");
    bare(&["--database-url", url, "--tenant", "t", "scopes", "list"]).fails(2);
}

#[test]
fn tenant_leak_policy_ids_are_checked_as_app_and_tenant_are() {
    let url = "postgres://postgres@127.0.0.1:1/never";
    let cases: &[(&[&str], &str)] = &[
        (&["t\u{1}", "acme", "notify"], "invalid app_id"),
        (&["billing", "t\u{1}", "notify"], "invalid tenant_id"),
        (&["billing", "acme ", "notify"], "invalid tenant_id"),
        (&["", "acme", "notify"], "invalid app_id"),
        (&["billing", "acme", "ignore"], "invalid leak_policy"),
    ];
    for (triple, field) in cases {
        let mut args = vec!["--database-url", url, "serve", "--tenant-leak-policy"];
        args.extend_from_slice(triple);
        let error = bare(&args).fails(2);
        assert!(error.contains("--tenant-leak-policy") && error.contains(field), "{triple:?}: {error}");
        assert!(!error.contains('\u{1}'), "the message echoes no control character: {error:?}");
    }
}

#[test]
fn database_urls_need_a_supported_scheme() {
    let error = bare(&["--database-url", "redis://root:hunter2@127.0.0.1/x", "migrate"]).fails(2);
    assert!(error.contains("redis:") && !error.contains("hunter2"), "{error}");
    assert!(error.contains("postgres://") && error.contains("sqlite:") && error.contains("mysql://"), "{error}");
    bare(&["--database-url", "keys.db", "sweep"]).fails(2);
    let error = bare(&["sweep"]).fails(2);
    assert!(error.contains("DATABASE_URL"), "{error}");
}

/// A Redis change feed that cannot be reached is an infrastructure failure
/// naming the feed, and a malformed URL a usage error; neither shows the
/// URL's password.
#[test]
fn an_unreachable_or_malformed_redis_url_says_so_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("keys.db").display());
    // Port 1 on the loopback: nothing listens there.
    let error = bare(&["--database-url", &url, "--redis-url", "redis://u:hunter2@127.0.0.1:1/0", "migrate"]).fails(3);
    assert!(error.starts_with("error: change feed unavailable") && !error.contains("hunter2"), "{error}");
    let error = bare(&["--database-url", &url, "--redis-url", "rediz://u:hunter2@h/0", "migrate"]).fails(2);
    assert!(error.contains("--redis-url") && !error.contains("hunter2"), "{error}");
}

#[test]
fn help_and_version_succeed() {
    let help = bare(&["--help"]).ok();
    assert!(help.contains("Exit status") && help.contains("infrastructure failure"), "{help}");
    let update = bare(&["policies", "update", "--help"]).ok();
    assert!(update.contains("REPLACES"), "{update}");
    assert!(bare(&["--version"]).ok().starts_with("keysmith "));
}

#[test]
fn import_help_names_only_flags_that_exist() {
    let help = bare(&["import", "--help"]).ok();
    let policies = bare(&["policies", "create", "--help"]).ok();
    // The flags a help text declares: its lines `  [-x, ]--flag[ <VALUE>]`.
    let declared: Vec<&str> = [&help, &policies]
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|line| {
            let line = line.trim_start();
            let line = if line.starts_with('-') && line.get(2..4) == Some(", ") { &line[4..] } else { line };
            line.starts_with("--").then(|| line.split(' ').next().unwrap_or(line))
        })
        .collect();
    let named = help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).filter(|word| word.starts_with("--"));
    for flag in named {
        assert!(declared.contains(&flag), "import --help names {flag}, which neither import nor policies create takes");
    }
}
