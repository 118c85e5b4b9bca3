//! Shared by the targets: "no control character anywhere in this text", and
//! what an identity is, written apart from the engine's own check.
// Each target uses some of these.
#![allow(dead_code)]

use serde_json::Value;

/// True if `text` holds no control character.
pub fn clean(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// True if no key or string of `value`, at any depth, holds one.
pub fn clean_json(value: &Value) -> bool {
    match value {
        Value::String(text) => clean(text),
        Value::Array(items) => items.iter().all(clean_json),
        Value::Object(map) => map.iter().all(|(k, v)| clean(k) && clean_json(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    }
}

/// True if `id` is an identity (an app, tenant or owner id): 1 to 128
/// bytes, nothing trimmed away at either end, no control character.
pub fn is_identity(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.trim() == id && clean(id)
}
