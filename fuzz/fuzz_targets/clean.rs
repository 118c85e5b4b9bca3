//! Shared by the targets: "no control character anywhere in this text".

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
