//! What the OpenAPI document says about values the engine checks: the
//! patterns and lengths of names and text, the metadata object, and whole
//! numbers, which JSON may write with a zero fraction (`5.0`).
//!
//! The constants here describe the engine's rules; the tests of this module
//! hold them to those rules.

use serde::de::{self, Deserializer, Visitor};
use utoipa::openapi::{RefOr, Schema};

/// Text without control characters (NUL, C0, DEL, C1), as the engine
/// accepts in descriptions, reasons and metadata.
pub(crate) const TEXT_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*$";

/// A name: no control character and at least one character that is not
/// whitespace (names are stored trimmed).
pub(crate) const NAME_PATTERN: &str = concat!(
    r"^[^\u0000-\u001f\u007f-\u009f]*",
    r"[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]",
    r"[^\u0000-\u001f\u007f-\u009f]*$"
);

/// `*`, `keysmith:*`, or segments of letters, digits, `_`, `-`, `.`
/// joined by `:`.
pub(crate) const SCOPE_PATTERN: &str = r"^(\*|keysmith:\*|[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)*)$";

/// A key prefix.
pub(crate) const PREFIX_PATTERN: &str = "^[a-z0-9]{1,16}$";

/// An owner id: no control character, and no whitespace at either end
/// (owner ids are compared exactly, never trimmed).
pub(crate) const OWNER_ID_PATTERN: &str = concat!(
    r"^[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]",
    r"([^\u0000-\u001f\u007f-\u009f]*",
    r"[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?$"
);

/// The `Metadata` and `MetadataValue` components: a JSON object whose keys
/// and strings, at any depth, hold no control character.
pub(crate) fn metadata_components() -> [(&'static str, RefOr<Schema>); 2] {
    let text = serde_json::json!({"type": "string", "pattern": TEXT_PATTERN});
    let object = serde_json::json!({
        "type": "object",
        "description": "Application data: a JSON object of at most 65536 bytes as compact JSON, nested at most 32 levels. No key or string in it, at any depth, may hold a control character, and no object in it may name a key twice.",
        "propertyNames": text,
        "additionalProperties": {"$ref": "#/components/schemas/MetadataValue"},
    });
    let value = serde_json::json!({
        "description": "A value inside metadata.",
        "anyOf": [
            text,
            {"type": ["number", "boolean", "null"]},
            {"type": "array", "items": {"$ref": "#/components/schemas/MetadataValue"}},
            {"$ref": "#/components/schemas/Metadata"},
        ],
    });
    let parse = |value| serde_json::from_value(value).expect("a valid schema");
    [("Metadata", parse(object)), ("MetadataValue", parse(value))]
}

/// What a string property of a component must look like.
struct Rule {
    component: &'static str,
    property: &'static str,
    /// The rule is on the items of an array property.
    items: bool,
    pattern: &'static str,
    min_length: Option<usize>,
    max_length: usize,
}

const fn rule(component: &'static str, property: &'static str, pattern: &'static str, max_length: usize) -> Rule {
    Rule { component, property, items: false, pattern, min_length: None, max_length }
}

const fn name(component: &'static str, max_length: usize) -> Rule {
    Rule { component, property: "name", items: false, pattern: NAME_PATTERN, min_length: Some(1), max_length }
}

const fn scopes(component: &'static str, property: &'static str) -> Rule {
    Rule { component, property, items: true, pattern: SCOPE_PATTERN, min_length: None, max_length: 128 }
}

/// The engine's rules for the strings of request bodies.
const RULES: [Rule; 11] = [
    name("CreateKey", 256),
    Rule {
        component: "CreateKey",
        property: "owner_id",
        items: false,
        pattern: OWNER_ID_PATTERN,
        min_length: Some(1),
        max_length: keysmith_core::MAX_ID_LEN,
    },
    scopes("CreateKey", "scopes"),
    rule("CreateKey", "prefix", PREFIX_PATTERN, 16),
    scopes("SetScopes", "scopes"),
    rule("RevokeKey", "reason", TEXT_PATTERN, 1024),
    name("PolicyInput", 128),
    scopes("PolicyInput", "allowed_scopes"),
    rule("CreateScope", "name", SCOPE_PATTERN, 128),
    rule("CreateScope", "description", TEXT_PATTERN, 1024),
    scopes("VerifyRequest", "required_scopes"),
];

/// Writes [`RULES`] into the collected components, and adds the metadata
/// components.
///
/// # Panics
/// If a rule names a component or property that does not exist (a test
/// builds the document, so a rename is caught there).
pub(crate) fn apply(components: &mut utoipa::openapi::Components) {
    use utoipa::openapi::schema::ArrayItems;

    for rule in &RULES {
        let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(rule.component) else {
            panic!("no object component {}", rule.component);
        };
        let property = object.properties.get_mut(rule.property);
        let string = match (property, rule.items) {
            (Some(RefOr::T(Schema::Object(string))), false) => string,
            (Some(RefOr::T(Schema::Array(array))), true) => match &mut array.items {
                ArrayItems::RefOrSchema(items) => match items.as_mut() {
                    RefOr::T(Schema::Object(string)) => string,
                    RefOr::Ref(_) => panic!("{}.{} items are a reference", rule.component, rule.property),
                    _ => panic!("{}.{} items are not a string", rule.component, rule.property),
                },
                ArrayItems::False => panic!("{}.{} has no items", rule.component, rule.property),
            },
            _ => panic!("no string property {}.{}", rule.component, rule.property),
        };
        string.pattern = Some(rule.pattern.to_owned());
        string.min_length = rule.min_length;
        string.max_length = Some(rule.max_length);
    }
    for (name, schema) in metadata_components() {
        components.schemas.insert(name.to_owned(), schema);
    }
}

/// Gives every `owner_id` parameter (the filter of `GET /keys`, the
/// `/owners/{owner_id}` paths) the owner id pattern and an identity's length,
/// as [`RULES`] give them to request bodies.
///
/// # Panics
/// If `GET /keys` has no `owner_id` string parameter, or one is not a
/// string (a test builds the document, so a rename is caught there).
pub(crate) fn apply_parameters(paths: &mut utoipa::openapi::Paths) {
    let mut filter = false;
    for (path, item) in &mut paths.paths {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete];
        for operation in operations.into_iter().flatten() {
            let parameters = operation.parameters.iter_mut().flatten();
            for parameter in parameters.filter(|p| p.name == "owner_id") {
                let Some(RefOr::T(Schema::Object(string))) = parameter.schema.as_mut() else {
                    panic!("the owner_id parameter of {path} is not a string");
                };
                string.pattern = Some(OWNER_ID_PATTERN.to_owned());
                string.max_length = Some(keysmith_core::MAX_ID_LEN);
                filter |= path == "/keys";
            }
        }
    }
    assert!(filter, "GET /keys has no owner_id string parameter");
}

/// `#[schema(schema_with = …)]` for an optional client address: `null`, or
/// an IPv4 or IPv6 address, which the engine parses (no zone, no port).
pub(crate) fn optional_ip() -> Schema {
    let address = serde_json::json!({
        "description": "An IPv4 or IPv6 address.",
        "anyOf": [
            {"type": "string", "format": "ipv4"},
            {"type": "string", "format": "ipv6"},
            {"type": "null"},
        ],
    });
    serde_json::from_value(address).expect("a valid schema")
}

/// The periods a credit refill takes: a UTC `day` or `month` (the engine
/// refuses `hour`, which only usage roll-ups have).
pub(crate) const REFILL_PERIODS: [&str; 2] = ["day", "month"];

/// `#[schema(schema_with = …)]` for a refill's period.
pub(crate) fn refill_period() -> Schema {
    let period = serde_json::json!({
        "type": "string",
        "enum": REFILL_PERIODS,
        "description": "How often (UTC): the start of every day or every calendar month.",
    });
    serde_json::from_value(period).expect("a valid schema")
}

/// `#[schema(schema_with = …)]` for metadata fields.
pub(crate) fn metadata_ref() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name("Metadata")
}

/// The largest whole number a `u64` field takes: 2^53 - 1, the last one
/// every JSON client represents exactly.
pub(crate) const MAX_WHOLE: u64 = (1 << 53) - 1;

/// The longest duration a field takes (windows, key ages), in seconds: 100
/// years of 365.25 days.
pub(crate) const MAX_SECONDS: u64 = 3_155_760_000;

/// The longest rotation grace, in seconds: the engine's
/// [`PolicySpec::MAX_ROTATION_GRACE`](keysmith_core::PolicySpec::MAX_ROTATION_GRACE)
/// (366 days).
pub(crate) const MAX_GRACE_SECONDS: u64 = keysmith_core::PolicySpec::MAX_ROTATION_GRACE.as_secs();

/// Serde helpers for whole numbers that also accept `5.0`: JSON Schema's
/// `integer` is any number with a zero fraction, and clients that compute
/// a value in floating point send it so.
pub(crate) mod whole {
    use super::{Deserializer, MAX_GRACE_SECONDS, MAX_SECONDS, MAX_WHOLE, de, visit};

    /// A `u32`.
    pub(crate) fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        visit(d, u64::from(u32::MAX)).and_then(|n| u32::try_from(n).map_err(de::Error::custom))
    }

    /// A credit count, up to `keysmith_core::Credits::MAX`.
    pub(crate) fn credits<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        visit(d, keysmith_core::Credits::MAX)
    }

    /// A duration in seconds, up to [`MAX_SECONDS`].
    pub(crate) fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        visit(d, MAX_SECONDS)
    }

    /// An optional `u64` up to [`MAX_WHOLE`] (`null` is `None`; add
    /// `#[serde(default)]` for an absent field).
    pub(crate) fn option_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_option(Optional(MAX_WHOLE))
    }

    /// An optional duration in seconds, up to [`MAX_SECONDS`].
    pub(crate) fn option_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_option(Optional(MAX_SECONDS))
    }

    /// An optional rotation grace in seconds, up to [`MAX_GRACE_SECONDS`].
    pub(crate) fn option_grace<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_option(Optional(MAX_GRACE_SECONDS))
    }

    /// An optional credit count, up to `keysmith_core::Credits::MAX`.
    pub(crate) fn option_credits<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_option(Optional(keysmith_core::Credits::MAX))
    }

    /// An optional `u32`.
    pub(crate) fn option_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        d.deserialize_option(Optional(u64::from(u32::MAX)))?
            .map(|n| u32::try_from(n).map_err(de::Error::custom))
            .transpose()
    }

    struct Optional(u64);

    impl<'de> de::Visitor<'de> for Optional {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "null or a whole number from 0 to {}", self.0)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            visit(d, self.0).map(Some)
        }
    }
}

/// Deserializes a whole number from 0 to `max`, written as an integer or
/// as a number with a zero fraction.
fn visit<'de, D: Deserializer<'de>>(d: D, max: u64) -> Result<u64, D::Error> {
    d.deserialize_any(Whole(max))
}

struct Whole(u64);

impl Visitor<'_> for Whole {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a whole number from 0 to {}", self.0)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
        if n > self.0 {
            return Err(E::invalid_value(de::Unexpected::Unsigned(n), &self));
        }
        Ok(n)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
        u64::try_from(n).map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self)).and_then(|n| self.visit_u64(n))
    }

    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<u64, E> {
        // Exact: a zero fraction, and below 2^64 (`u64::MAX as f64` rounds
        // up to 2^64, so `<` keeps the cast in range).
        if n.fract() == 0.0 && n >= 0.0 && n < u64::MAX as f64 {
            return self.visit_u64(n as u64);
        }
        Err(E::invalid_value(de::Unexpected::Float(n), &self))
    }
}

/// Metadata as the admin API reads it: a JSON object in which no object, at
/// any depth, names a key twice. Parsers disagree on which of two values
/// counts (serde's maps keep the last), so such a body is refused as
/// ambiguous rather than read one way (422 `invalid_body`).
pub(crate) mod metadata {
    use serde::Deserialize;
    use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};

    /// Metadata given as JSON text (as `keysmith`'s `--metadata` takes it),
    /// read as the admin API reads a body's: an object naming each key once
    /// at every depth.
    ///
    /// # Errors
    /// The text is not JSON, not an object, or names a key twice.
    pub fn parse(text: &str) -> serde_json::Result<Map<String, Value>> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let object = unique_keys(&mut deserializer)?;
        deserializer.end()?;
        Ok(object)
    }

    /// A `metadata` object.
    pub(crate) fn unique_keys<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
        match d.deserialize_any(Strict)? {
            Value::Object(map) => Ok(map),
            other => Err(de::Error::invalid_type(unexpected(&other), &"a JSON object")),
        }
    }

    fn unexpected(value: &Value) -> de::Unexpected<'_> {
        match value {
            Value::Null => de::Unexpected::Unit,
            Value::Bool(b) => de::Unexpected::Bool(*b),
            Value::Number(_) => de::Unexpected::Other("a number"),
            Value::String(s) => de::Unexpected::Str(s),
            Value::Array(_) => de::Unexpected::Seq,
            Value::Object(_) => de::Unexpected::Map,
        }
    }

    /// A JSON value whose objects have unique keys.
    struct StrictValue(Value);

    impl<'de> Deserialize<'de> for StrictValue {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Strict).map(Self)
        }
    }

    struct Strict;

    impl<'de> Visitor<'de> for Strict {
        type Value = Value;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value whose objects name each key once")
        }

        fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
            Ok(Value::Bool(b))
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
            Ok(Value::from(n))
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
            Ok(Value::from(n))
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
            Ok(Value::from(n))
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
            Ok(Value::String(s.to_owned()))
        }

        fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
            Ok(Value::String(s))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }

        fn visit_none<E: de::Error>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(StrictValue(item)) = seq.next_element()? {
                items.push(item);
            }
            Ok(Value::Array(items))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut object = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                let StrictValue(value) = map.next_value()?;
                if object.contains_key(&key) {
                    return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
                }
                object.insert(key, value);
            }
            Ok(Value::Object(object))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct WithMetadata {
        #[serde(default, deserialize_with = "metadata::unique_keys")]
        metadata: serde_json::Map<String, serde_json::Value>,
    }

    #[test]
    fn metadata_naming_a_key_twice_at_any_depth_is_refused_and_the_rest_reads_as_json() {
        for text in [
            r#"{"metadata": {"a": 1, "a": 2}}"#,
            r#"{"metadata": {"a": {"b": true, "b": false}}}"#,
            r#"{"metadata": {"list": [1, {"c": null, "c": "x"}]}}"#,
        ] {
            let err = serde_json::from_str::<WithMetadata>(text).unwrap_err().to_string();
            assert!(err.contains("duplicate key"), "{text}: {err}");
        }
        let value =
            json!({"a": 1, "b": [1.5, -2, "x", null, true, {"c": {"d": []}}], "e": 18_446_744_073_709_551_615_u64});
        let read: WithMetadata = serde_json::from_value(json!({ "metadata": value })).unwrap();
        assert_eq!(serde_json::Value::Object(read.metadata), value);
        for not_an_object in [json!([1]), json!("x"), json!(3)] {
            assert!(serde_json::from_value::<WithMetadata>(json!({ "metadata": not_an_object })).is_err());
        }
        assert_eq!(metadata::parse(r#"{"a": {"b": 1}}"#).unwrap()["a"]["b"], 1);
        for bad in [r#"{"a": 1, "a": 2}"#, r#"{"a": {"b": 1, "b": 1}}"#, "[1]", r#"{"a": 1} x"#, ""] {
            assert!(metadata::parse(bad).is_err(), "{bad}");
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Numbers {
        #[serde(deserialize_with = "whole::u32")]
        small: u32,
        #[serde(default, deserialize_with = "whole::option_u64")]
        big: Option<u64>,
    }

    fn numbers(value: serde_json::Value) -> Result<Numbers, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn whole_numbers_accept_a_zero_fraction_and_nothing_else() {
        assert_eq!(numbers(json!({"small": 5})).unwrap(), Numbers { small: 5, big: None });
        assert_eq!(numbers(json!({"small": 5.0, "big": 7.0})).unwrap(), Numbers { small: 5, big: Some(7) });
        assert_eq!(numbers(json!({"small": 0, "big": null})).unwrap(), Numbers { small: 0, big: None });
        let max = numbers(json!({"small": u32::MAX, "big": MAX_WHOLE})).unwrap();
        assert_eq!(max, Numbers { small: u32::MAX, big: Some(MAX_WHOLE) });
        #[allow(clippy::cast_precision_loss)] // 2^53 - 1 is exact in f64.
        let as_float = numbers(json!({"small": 4_294_967_295.0, "big": MAX_WHOLE as f64})).unwrap();
        assert_eq!(as_float, max);
        for bad in [
            json!({"small": 5.5}),
            json!({"small": -1}),
            json!({"small": -1.0}),
            json!({"small": u64::from(u32::MAX) + 1}),
            json!({"small": "5"}),
            json!({"small": 1, "big": 1.8446744073709552e19}),
            json!({"small": 1, "big": MAX_WHOLE + 1}),
            json!({"small": 1, "big": 1e300}),
            json!({"small": 1, "big": true}),
        ] {
            assert!(numbers(bad.clone()).is_err(), "{bad}");
        }
        // Through the text parser too, where big integers become floats.
        let parsed: Result<Numbers, _> = serde_json::from_str(r#"{"small": 1, "big": 18446744073709551616}"#);
        assert!(parsed.is_err());
    }

    #[test]
    fn metadata_components_keep_every_keyword() {
        for (name, schema) in metadata_components() {
            let text = serde_json::to_string(&schema).unwrap();
            assert!(text.contains(TEXT_PATTERN.replace('\\', "\\\\").as_str()), "{name}: {text}");
        }
        let object = serde_json::to_value(&metadata_components()[0].1).unwrap();
        assert_eq!(object["propertyNames"]["pattern"], TEXT_PATTERN);
        assert_eq!(object["additionalProperties"]["$ref"], "#/components/schemas/MetadataValue");
    }
}
