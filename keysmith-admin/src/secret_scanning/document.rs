//! `POST /secret-scanning/github` in the admin API's OpenAPI document. The
//! route is not one of the key-authenticated handlers the document is
//! collected from: GitHub's signature authenticates it, so it is described
//! here with its own security, body and answers, none of the key layer's.

use serde_json::{Value, json};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{OpenApi, RefOr, Schema};

use super::{GITHUB_ROUTE, GithubSecretScanning};

/// The security scheme of the route: GitHub's signature header.
const SIGNATURE_SCHEME: &str = "github_signature";
/// The route's tag.
const TAG: &str = "secret-scanning";

/// Adds the route, its tag, its security scheme and its two schemas to a
/// finished document.
pub(crate) fn add_to(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        SIGNATURE_SCHEME,
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "Github-Public-Key-Signature",
            "GitHub's ECDSA P-256 SHA-256 signature over the raw body (base64 of DER), made with the key \
             that `Github-Public-Key-Identifier` names among those published at the configured keys URL",
        ))),
    );
    components.schemas.insert("GithubAlert".to_owned(), schema(alert_schema()));
    components.schemas.insert("SecretScanningFeedback".to_owned(), schema(feedback_schema()));
    doc.tags.get_or_insert_with(Vec::new).push(
        TagBuilder::new()
            .name(TAG)
            .description(Some("Leaked keys reported by GitHub's secret scanning (authenticated by GitHub's signature)"))
            .build(),
    );
    let item = serde_json::from_value(json!({ "post": operation() })).expect("a valid path item");
    doc.paths.paths.insert(GITHUB_ROUTE.to_owned(), item);
}

fn schema(value: Value) -> RefOr<Schema> {
    serde_json::from_value(value).expect("a valid schema")
}

fn operation() -> Value {
    let max_body = GithubSecretScanning::DEFAULT_MAX_BODY / 1024;
    let error = |description: String| {
        json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        })
    };
    let array_of =
        |component: &str| json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{component}")}});
    json!({
        "tags": [TAG],
        "operationId": "github_secret_scanning",
        "summary": "Receive GitHub's secret scanning alerts",
        "description": "GitHub's secret scanning partner endpoint. GitHub posts the tokens matching the pattern \
            registered with it (`keysmith secret-scanning pattern`) that it found in public places; each one that \
            is a key of this deployment is handled by its tenant's leak policy (revoked by default, or suspended, \
            or only reported to the hooks), whatever the tenant. Authenticated by GitHub's signature alone, never \
            by an API key. Idempotent: an alert posted again changes nothing more. Every answer but 200 changes \
            nothing.",
        "security": [{ SIGNATURE_SCHEME: [] }],
        "parameters": [{
            "name": "Github-Public-Key-Identifier",
            "in": "header",
            "required": true,
            "description": "The identifier of the GitHub key that signed the body",
            "schema": {"type": "string"},
        }],
        "requestBody": {
            "required": true,
            "description": "The alerts, as GitHub sends them (fields GitHub adds later are ignored)",
            "content": {"application/json": {"schema": array_of("GithubAlert")}},
        },
        "responses": {
            "200": {
                "description": "One entry per alert: which token, by its SHA-256, and whether it is one of ours",
                "content": {"application/json": {"schema": array_of("SecretScanningFeedback")}},
            },
            "400": error("`invalid_body`: the verified body is not a JSON array of alerts".to_owned()),
            "401": error(
                "`invalid_signature`: a signature header is missing or unreadable, the signature does not match \
                 the body, or no published key has the identifier"
                    .to_owned(),
            ),
            "405": error("`method_not_allowed`: another method than POST".to_owned()),
            "413": error(format!("`payload_too_large`: the body is over the cap ({max_body} KiB unless configured otherwise)")),
            "503": error(
                "`unavailable`: GitHub's keys or the key store could not be reached; GitHub retries".to_owned(),
            ),
        },
    })
}

fn alert_schema() -> Value {
    json!({
        "type": "object",
        "description": "One token GitHub found.",
        "required": ["token", "type"],
        "properties": {
            "token": {"type": "string", "description": "The token as found (never logged, stored or echoed)"},
            "type": {"type": "string", "description": "The name of the pattern registered with GitHub"},
            "url": {"type": "string", "description": "The public URL of the place it was found"},
            "source": {"type": "string", "description": "Where it was found (`content`, `commit`, …)"},
        },
    })
}

fn feedback_schema() -> Value {
    json!({
        "type": "object",
        "description": "GitHub's feedback on one alert.",
        "required": ["token_hash", "token_type", "label"],
        "properties": {
            "token_hash": {
                "type": "string",
                "pattern": "^[0-9a-f]{64}$",
                "description": "The SHA-256 of the token, lowercase hex",
            },
            "token_type": {"type": "string", "description": "The alert's `type`"},
            "label": {
                "type": "string",
                "enum": ["true_positive", "false_positive"],
                "description": "`true_positive` when the token is a key of this deployment",
            },
        },
    })
}
