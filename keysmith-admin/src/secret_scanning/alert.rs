//! The body GitHub posts: a JSON array of `{token, type, url, source}`.

use std::fmt;

use serde::Deserialize;

/// One match GitHub's secret scanning reports.
#[derive(Clone, Deserialize)]
pub struct GithubAlert {
    /// The token as found. Secret: `Debug` leaves it out, and it is never
    /// logged or echoed.
    pub token: String,
    /// The token type: the name of the pattern registered with GitHub.
    #[serde(rename = "type")]
    pub token_type: String,
    /// The public URL of the place it was found.
    #[serde(default)]
    pub url: String,
    /// Where it was found (`content`, `commit`, `pull_request_title`…).
    #[serde(default)]
    pub source: String,
}

impl fmt::Debug for GithubAlert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubAlert")
            .field("token", &"[REDACTED]")
            .field("token_type", &self.token_type)
            .field("url", &self.url)
            .field("source", &self.source)
            .finish()
    }
}

/// The body is not a JSON array of alerts. The message says where, never
/// what: the body holds secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the body is not a JSON array of {{token, type, url, source}} objects (line {line}, column {column})")]
pub struct AlertParseError {
    line: usize,
    column: usize,
}

/// Parses the body of a secret scanning alert (already verified: see
/// [`GithubSecretScanning`](super::GithubSecretScanning)). Unknown fields are
/// ignored, as GitHub may add some; `url` and `source` may be missing.
/// Nesting is bounded by the JSON parser, so no body can exhaust the stack.
///
/// # Errors
/// [`AlertParseError`] for anything but an array of objects with a string
/// `token` and `type` (and strings for `url` and `source` when present).
pub fn parse_alerts(body: &[u8]) -> Result<Vec<GithubAlert>, AlertParseError> {
    serde_json::from_slice(body).map_err(|error| AlertParseError { line: error.line(), column: error.column() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_array_parses_and_tolerates_new_fields() {
        let body = br#"[{"token":"sk_live_x","type":"keysmith_key","url":"https://github.com/o/r","source":"content","extra":1}]"#;
        let alerts = parse_alerts(body).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].token_type, "keysmith_key");
        assert_eq!(alerts[0].source, "content");
        assert!(parse_alerts(b"[]").unwrap().is_empty());
    }

    #[test]
    fn hostile_bodies_are_errors_that_do_not_echo_the_body() {
        let nested = "[".repeat(100_000);
        for body in [
            &b"not json"[..],
            b"{}",
            b"[1]",
            b"[{\"token\": 5, \"type\": \"t\"}]",
            b"[{\"type\": \"t\"}]",
            b"[\"sk_live_secret\"]",
            b"\0\0",
            nested.as_bytes(),
        ] {
            let error = parse_alerts(body).unwrap_err();
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let alerts = parse_alerts(br#"[{"token":"sk_live_topsecret","type":"t"}]"#).unwrap();
        assert!(!format!("{alerts:?}").contains("topsecret"));
    }
}
