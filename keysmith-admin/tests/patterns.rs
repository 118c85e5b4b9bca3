//! The document's patterns and lengths describe exactly what the engine
//! accepts: for generated text, "matches the schema" and "the engine
//! accepts it" agree.

use std::sync::{Arc, LazyLock};

use keysmith_core::{Engine, MemoryStore, NewKey, PolicySpec, TenantEngine};
use proptest::prelude::*;
use regex::Regex;
use serde_json::Value;

static DOC: LazyLock<Value> = LazyLock::new(|| serde_json::to_value(keysmith_admin::openapi()).unwrap());

/// The rule of a string property in the default document.
fn rule(component: &str, property: &str) -> (Regex, usize) {
    let mut schema: Value = DOC["components"]["schemas"][component]["properties"][property].clone();
    if schema["type"] == "array" {
        schema = schema["items"].clone();
    }
    let pattern = Regex::new(schema["pattern"].as_str().unwrap()).unwrap();
    (pattern, usize::try_from(schema["maxLength"].as_u64().unwrap()).unwrap())
}

fn fits((pattern, max): &(Regex, usize), text: &str) -> bool {
    pattern.is_match(text) && text.chars().count() <= *max
}

fn tenant() -> TenantEngine {
    Engine::builder(Arc::new(MemoryStore::new())).build().unwrap().tenant("app", "acme")
}

/// Text that is often close to a rule's edges: control characters,
/// whitespace of every kind, scope punctuation, long runs.
fn text() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        '\0', '\t', '\n', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}', ' ', '\u{a0}', '\u{2003}', '\u{3000}', '\u{feff}',
        ':', '*', '.', '_', '-', 'a', 'Z', '7', 'é', '🔑',
    ]);
    let piece = prop_oneof![special.prop_map(String::from), "[a-z:]{0,8}", any::<char>().prop_map(String::from)];
    prop_oneof![
        prop::collection::vec(piece, 0..12).prop_map(|p| p.concat()),
        (1usize..300, prop::sample::select(vec!["a", "é", " ", ":a"])).prop_map(|(n, s)| s.repeat(n)),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn owner_ids_match_the_engine(owner in text()) {
        let accepted = runtime().block_on(tenant().create_key(NewKey::new("k").with_owner(owner.clone()))).is_ok();
        // An identity's bound is in bytes, which JSON Schema cannot say:
        // `maxLength` (characters) is the same number, exact for ASCII ids.
        let (pattern, max) = rule("CreateKey", "owner_id");
        let fits = pattern.is_match(&owner) && (1..=max).contains(&owner.len());
        prop_assert_eq!(fits, accepted, "owner id {:?}", owner);
    }

    #[test]
    fn key_and_policy_names_match_the_engine(name in text()) {
        let acme = tenant();
        let rt = runtime();
        let key = rt.block_on(acme.create_key(NewKey::new(name.clone()))).is_ok();
        prop_assert_eq!(fits(&rule("CreateKey", "name"), &name), key, "key name {:?}", name);
        let policy = rt.block_on(acme.create_policy(PolicySpec::new(name.clone()))).is_ok();
        prop_assert_eq!(fits(&rule("PolicyInput", "name"), &name), policy, "policy name {:?}", name);
    }

    #[test]
    fn scope_names_and_descriptions_match_the_engine(name in text(), description in text()) {
        let rt = runtime();
        let scope_ok = rt.block_on(tenant().create_scope(&name, "")).is_ok();
        prop_assert_eq!(fits(&rule("CreateScope", "name"), &name), scope_ok, "scope {:?}", name);
        let key_scope_ok = rt.block_on(tenant().create_key(NewKey::new("k").with_scopes([name.clone()]))).is_ok();
        prop_assert_eq!(fits(&rule("CreateKey", "scopes"), &name), key_scope_ok, "key scope {:?}", name);
        let description_ok = rt.block_on(tenant().create_scope("s", &description)).is_ok();
        prop_assert_eq!(fits(&rule("CreateScope", "description"), &description), description_ok, "{:?}", description);
    }

    #[test]
    fn prefixes_and_reasons_match_the_engine(prefix in text(), reason in text()) {
        let acme = tenant();
        let rt = runtime();
        let prefix_ok = rt.block_on(acme.create_key(NewKey::new("k").with_prefix(prefix.clone()))).is_ok();
        prop_assert_eq!(fits(&rule("CreateKey", "prefix"), &prefix), prefix_ok, "prefix {:?}", prefix);
        let key = rt.block_on(acme.create_key(NewKey::new("k"))).unwrap().key;
        let reason_ok = rt.block_on(acme.revoke_key(key.id, reason.clone())).is_ok();
        prop_assert_eq!(fits(&rule("RevokeKey", "reason"), &reason), reason_ok, "reason {:?}", reason);
    }
}
