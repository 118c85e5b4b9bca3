//! Checks on the text callers write into entities (names, descriptions,
//! reasons, metadata) and on the identities they act for (app, tenant and
//! owner ids), made by the engine before anything reaches a store, so every
//! store, the admin API and the CLI refuse the same input.
//!
//! Control characters (NUL, the other C0 codes, DEL and the C1 codes) are
//! refused everywhere: PostgreSQL cannot store NUL at all, and the others
//! only ever come from a bug or an attack (terminal escapes in a key name
//! shown by the CLI, forged line breaks in logs).

use serde_json::Value;

use crate::{Error, Result};

/// The longest app id, tenant id or owner id, in bytes (of UTF-8).
pub const MAX_ID_LEN: usize = 128;

/// A name as stored: `name` trimmed. Refuses a name of more than `max`
/// characters (counted before trimming), one that is only whitespace, and
/// one with a control character anywhere (a trailing newline included).
pub(crate) fn check_name(name: &str, max: usize) -> Result<&str> {
    check_text("name", name)?;
    let trimmed = name.trim();
    if trimmed.is_empty() || name.chars().count() > max {
        return Err(Error::invalid("name", format!("must be 1 to {max} characters, not only whitespace")));
    }
    Ok(trimmed)
}

/// Checks an identity: an app id, a tenant id or an owner id, named by
/// `field` in the error. An identity is 1 to [`MAX_ID_LEN`] bytes, does not
/// begin or end with whitespace and holds no control character.
///
/// Identities are compared byte for byte by every store, never trimmed,
/// folded or normalized, so `"acme"` and `"acme "` could only ever be two
/// tenants; the engine refuses the second form instead of storing it.
///
/// ```
/// use keysmith_core::{Error, validate_id};
///
/// assert!(validate_id("tenant_id", "acme").is_ok());
/// assert!(matches!(validate_id("tenant_id", "acme "), Err(Error::InvalidInput { field: "tenant_id", .. })));
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] naming `field` and the rule that was broken.
pub fn validate_id(field: &'static str, id: &str) -> Result<()> {
    // The length first: nothing longer is ever scanned.
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Error::invalid(field, format!("must be 1 to {MAX_ID_LEN} bytes, not {}", id.len())));
    }
    check_text(field, id)?;
    if id.trim() != id {
        return Err(Error::invalid(field, "must not begin or end with whitespace"));
    }
    Ok(())
}

/// Refuses `value` if it holds a control character.
pub(crate) fn check_text(field: &'static str, value: &str) -> Result<()> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(Error::invalid(field, format!("must not contain control characters (found {})", code_point(c)))),
        None => Ok(()),
    }
}

/// Refuses a time outside the years 1000 to 9999 (UTC), which is what every
/// store keeps (MySQL's `DATETIME` holds no more).
pub(crate) fn check_time(field: &'static str, at: chrono::DateTime<chrono::Utc>) -> Result<()> {
    use chrono::Datelike as _;
    if !(1000..=9999).contains(&at.year()) {
        return Err(Error::invalid(field, "must be within the years 1000 to 9999 (UTC)"));
    }
    Ok(())
}

/// The largest metadata object of a key or policy, in bytes of compact
/// JSON: it is kept with the key wherever the key is cached.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// The deepest nesting of objects and arrays in metadata (the object
/// itself is level 1).
pub const MAX_METADATA_DEPTH: usize = 32;

/// Refuses a metadata object with a control character in any key or string,
/// at any depth (the message says where, as a JSON pointer), nested deeper
/// than [`MAX_METADATA_DEPTH`], or larger than [`MAX_METADATA_BYTES`] as
/// compact JSON.
pub(crate) fn check_metadata(field: &'static str, metadata: &serde_json::Map<String, Value>) -> Result<()> {
    // An explicit stack: application data can be nested deeper than the
    // thread's stack allows for recursion.
    let mut pending: Vec<(String, &Value, usize)> = Vec::new();
    let mut bytes = push_members(field, "", metadata, 1, &mut pending)?;
    while let Some((path, value, depth)) = pending.pop() {
        bytes += match value {
            Value::String(text) => {
                if let Some(c) = text.chars().find(|c| c.is_control()) {
                    return Err(found(field, "string", &path, c));
                }
                json_string_len(text)
            }
            Value::Array(items) => {
                check_depth(field, &path, depth + 1)?;
                // Each item takes a byte at least: a list too long for the
                // bound is refused before its items are queued.
                if bytes.saturating_add(2 * items.len()) > MAX_METADATA_BYTES {
                    return Err(too_large(field));
                }
                pending
                    .extend(items.iter().enumerate().rev().map(|(i, item)| (format!("{path}/{i}"), item, depth + 1)));
                2 + items.len().saturating_sub(1)
            }
            Value::Object(map) => {
                check_depth(field, &path, depth + 1)?;
                push_members(field, &path, map, depth + 1, &mut pending)?
            }
            Value::Number(number) => number.to_string().len(),
            Value::Bool(true) | Value::Null => 4,
            Value::Bool(false) => 5,
        };
        if bytes > MAX_METADATA_BYTES {
            return Err(too_large(field));
        }
    }
    Ok(())
}

fn too_large(field: &'static str) -> Error {
    Error::invalid(field, format!("must be at most {MAX_METADATA_BYTES} bytes as JSON"))
}

fn check_depth(field: &'static str, path: &str, depth: usize) -> Result<()> {
    if depth > MAX_METADATA_DEPTH {
        return Err(Error::invalid(field, format!("nests deeper than {MAX_METADATA_DEPTH} levels at {path:?}")));
    }
    Ok(())
}

/// The length of `text` as a JSON string, quotes and escapes included.
fn json_string_len(text: &str) -> usize {
    2 + text
        .chars()
        .map(|c| match c {
            '"' | '\\' => 2,
            c if c.is_control() => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

/// Checks an object's keys and queues its values at `depth`, first member
/// on top; the object's own bytes as compact JSON (its members' values
/// not counted).
fn push_members<'a>(
    field: &'static str, path: &str, map: &'a serde_json::Map<String, Value>, depth: usize,
    pending: &mut Vec<(String, &'a Value, usize)>,
) -> Result<usize> {
    // Each member takes four bytes at least (`"":0`).
    if 4 * map.len() > MAX_METADATA_BYTES {
        return Err(too_large(field));
    }
    let start = pending.len();
    let mut bytes = 2 + map.len().saturating_sub(1);
    for (key, value) in map {
        let at = format!("{path}/{}", escape_pointer(key));
        if let Some(c) = key.chars().find(|c| c.is_control()) {
            return Err(found(field, "key", &at, c));
        }
        bytes += json_string_len(key) + 1;
        pending.push((at, value, depth));
    }
    pending[start..].reverse();
    Ok(bytes)
}

fn found(field: &'static str, what: &str, path: &str, c: char) -> Error {
    Error::invalid(
        field,
        format!(
            "the {what} at {path:?} contains a control character ({}); control characters are not allowed",
            code_point(c)
        ),
    )
}

fn code_point(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// A JSON pointer segment (RFC 6901): `~` and `/` escaped. Control
/// characters are not echoed back: the error names the first one found.
fn escape_pointer(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '~' => "~0".to_owned(),
            '/' => "~1".to_owned(),
            c if c.is_control() => code_point(c),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> serde_json::Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn text_with_a_control_character_is_refused() {
        for bad in ["a\0b", "\u{1}", "tab\there", "line\n", "del\u{7f}", "c1\u{85}", "\u{9b}31m"] {
            let err = check_text("name", bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid name: must not contain control characters (found U+"), "{err}");
        }
        for good in ["", "CI deploy key", "café ☕", "emoji 🔑", "\u{200b}zero width"] {
            assert!(check_text("name", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn identities_are_bounded_trimmed_and_clean() {
        for good in ["user_42", "cus_9Xz", "alice@example.com", "a b", "é", "\u{200b}zero width", "x"] {
            assert!(validate_id("owner_id", good).is_ok(), "{good:?}");
        }
        assert!(validate_id("app_id", &"x".repeat(MAX_ID_LEN)).is_ok());
        // 64 two-byte characters are 128 bytes; one more is too long.
        assert!(validate_id("app_id", &"é".repeat(MAX_ID_LEN / 2)).is_ok());
        let cases = [
            ("", "must be 1 to 128 bytes, not 0"),
            (&"x".repeat(MAX_ID_LEN + 1), "must be 1 to 128 bytes, not 129"),
            (&"é".repeat(MAX_ID_LEN / 2 + 1), "must be 1 to 128 bytes, not 130"),
            (" bob", "must not begin or end with whitespace"),
            ("bob ", "must not begin or end with whitespace"),
            ("acme\u{3000}", "must not begin or end with whitespace"),
            ("\u{a0}acme", "must not begin or end with whitespace"),
            (" ", "must not begin or end with whitespace"),
            ("b\0b", "must not contain control characters (found U+0000)"),
            ("line\n", "must not contain control characters (found U+000A)"),
            ("c1\u{85}x", "must not contain control characters (found U+0085)"),
        ];
        for (bad, reason) in cases {
            let err = validate_id("tenant_id", bad).unwrap_err().to_string();
            assert_eq!(err, format!("invalid tenant_id: {reason}"), "{bad:?}");
        }
    }

    #[test]
    fn metadata_is_checked_at_every_depth_with_the_path() {
        let cases = [
            (json!({"note": "a\u{0}b"}), "the string at \"/note\" contains a control character (U+0000)"),
            (json!({"a": {"b": [1, "ok", "x\u{1b}[2J"]}}), "the string at \"/a/b/2\""),
            (json!({"ok": true, "k\u{0}": 1}), "the key at \"/kU+0000\""),
            (json!({"a/b~": {"c": "\n"}}), "the string at \"/a~1b~0/c\""),
        ];
        for (value, expected) in cases {
            let err = check_metadata("metadata", &object(value)).unwrap_err().to_string();
            assert!(err.starts_with("invalid metadata: ") && err.contains(expected), "{err}");
        }
        let fine = json!({"team": "platform", "n": 3, "nested": {"list": ["a", null, {"b": "c"}]}});
        assert!(check_metadata("metadata", &object(fine)).is_ok());
    }

    #[test]
    fn metadata_is_bounded_in_depth_and_in_bytes_of_json() {
        // The object is level 1; under it, 31 arrays: the deepest allowed.
        let mut nested = json!("leaf");
        for _ in 0..MAX_METADATA_DEPTH - 1 {
            nested = json!([nested]);
        }
        assert!(check_metadata("metadata", &object(json!({"a": nested.clone()}))).is_ok());
        let err = check_metadata("metadata", &object(json!({"a": [nested]}))).unwrap_err().to_string();
        assert!(err.contains("deeper than 32 levels"), "{err}");

        // The exact size of compact JSON: at the bound, then one byte past it.
        let at_bound = |extra: usize| {
            let fixed = serde_json::to_string(&json!({"k": "", "n": 12, "t": true, "e": "\"\u{e9}"})).unwrap().len();
            let filler = "x".repeat(MAX_METADATA_BYTES - fixed + extra);
            object(json!({"k": filler, "n": 12, "t": true, "e": "\"\u{e9}"}))
        };
        assert_eq!(serde_json::to_string(&at_bound(0)).unwrap().len(), MAX_METADATA_BYTES);
        assert!(check_metadata("metadata", &at_bound(0)).is_ok());
        let err = check_metadata("metadata", &at_bound(1)).unwrap_err().to_string();
        assert!(err.contains("at most 65536 bytes"), "{err}");
        // Long lists and wide objects, counted exactly near the bound and
        // refused before their items are queued far past it.
        assert!(check_metadata("metadata", &object(json!({"a": vec![0; 30_000]}))).is_ok());
        assert!(check_metadata("metadata", &object(json!({"a": vec![0; 40_000]}))).is_err());
        assert!(check_metadata("metadata", &object(json!({"a": vec![0; 200_000]}))).is_err());
        let wide: serde_json::Map<String, Value> = (0..20_000).map(|i| (i.to_string(), json!(0))).collect();
        assert!(check_metadata("metadata", &wide).is_err());
    }

    #[test]
    fn deep_metadata_does_not_overflow_the_stack() {
        let mut value = Value::String("bad\0".to_owned());
        for _ in 0..20_000 {
            value = Value::Array(vec![value]);
        }
        let mut map = serde_json::Map::new();
        map.insert("deep".to_owned(), value);
        assert!(check_metadata("metadata", &map).is_err());
        // Dropping a value this deep recurses in serde_json; leak it instead.
        std::mem::forget(map);
    }
}
