//! The OpenAPI 3.1 document: collected from the handlers' `#[utoipa::path]`
//! attributes by the same router that serves them, then completed with the
//! security schemes and the error responses every route shares.

use std::collections::btree_map::Entry;

use axum::Json;
use axum::extract::{NestedPath, Request, State};
use keysmith_core::http::{KeySource, KeySources};
use utoipa::OpenApi as _;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder, Server};

use crate::error::ErrorBody;
use crate::{ADMIN_SCOPE, AdminState, VERIFY_SCOPE};

/// The document's fixed parts; paths are added by the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Keysmith admin API",
        description = "Manage one tenant's API keys, policies, scopes and usage. \
            Every route needs an API key holding the `keysmith:admin` scope (`POST /verify`: `keysmith:verify`) \
            and acts on that key's tenant only: ids of other tenants are answered with 404, like unknown ids. \
            The exception is `POST /secret-scanning/github`, which GitHub calls: its signature authenticates it.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    tags(
        (name = "keys", description = "API keys and their lifecycle"),
        (name = "owners", description = "Credits shared by the keys of one owner (under `limit_by: owner`)"),
        (name = "usage", description = "Request records and hourly, daily or monthly roll-ups per key, with refusals by reason"),
        (name = "policies", description = "Rate limits, IP and origin allowlists, scopes, key age and quotas"),
        (name = "scopes", description = "The tenant's scope registry"),
        (name = "verify", description = "Verifying a key for a service that cannot embed Keysmith"),
        (name = "meta", description = "This document"),
    ),
    components(schemas(ErrorBody))
)]
pub(crate) struct ApiDoc;

/// The starting document.
pub(crate) fn base() -> OpenApi {
    ApiDoc::openapi()
}

/// An error response shared by many operations, as a component.
struct SharedResponse {
    /// The component's name.
    name: &'static str,
    status: &'static str,
    description: &'static str,
    /// A header documented with it: name and description.
    header: Option<(&'static str, &'static str)>,
}

const SHARED_RESPONSES: [SharedResponse; 7] = [
    SharedResponse {
        name: "Unauthorized",
        status: "401",
        description: "No key, or a malformed, unknown, revoked, expired or suspended one",
        header: Some(("WWW-Authenticate", "`Bearer realm=\"…\"`, with `error=\"invalid_token\"` for a bad key")),
    },
    SharedResponse {
        name: "Forbidden",
        status: "403",
        description: "The key lacks the `keysmith:admin` scope, or its policy refuses the client's IP or origin",
        header: Some((
            "WWW-Authenticate",
            "`Bearer …, error=\"insufficient_scope\", scope=\"keysmith:admin\"` for a missing scope",
        )),
    },
    SharedResponse {
        name: "TooManyRequests",
        status: "429",
        description: "The admin key's rate limit or quota is spent",
        header: Some(("Retry-After", "Seconds to wait")),
    },
    SharedResponse {
        name: "Unavailable",
        status: "503",
        description: "The key store could not be reached",
        header: None,
    },
    SharedResponse {
        name: "PayloadTooLarge",
        status: "413",
        description: "The body is larger than the router's limit (256 KiB unless configured otherwise)",
        header: None,
    },
    SharedResponse {
        name: "UnsupportedMediaType",
        status: "415",
        description: "The body is not sent as `Content-Type: application/json`",
        header: None,
    },
    SharedResponse {
        name: "UnprocessableEntity",
        status: "422",
        description: "The body is JSON of the wrong shape (a missing or unknown field, a wrong type)",
        header: None,
    },
];

/// Appended to every operation's 400: the authentication layer refuses a
/// request that carries two different keys.
const AMBIGUOUS_KEY: &str = "the request carries two different API keys (`ambiguous_key`)";

/// Responses every operation may give (the authentication layer's).
const EVERY_OPERATION: [&str; 4] = ["Unauthorized", "Forbidden", "TooManyRequests", "Unavailable"];
/// Responses every operation with a body may give, besides 400.
const WITH_BODY: [&str; 3] = ["PayloadTooLarge", "UnsupportedMediaType", "UnprocessableEntity"];

/// Completes the collected document: security schemes for the configured
/// key sources, required on every operation, and the shared error
/// responses; then `POST /secret-scanning/github`, which GitHub's signature
/// authenticates instead.
pub(crate) fn finish(doc: &mut OpenApi, sources: &KeySources) {
    let components = doc.components.get_or_insert_with(Default::default);
    crate::schema::apply(components);
    crate::schema::apply_parameters(&mut doc.paths);
    for shared in &SHARED_RESPONSES {
        components
            .responses
            .insert(shared.name.to_owned(), RefOr::T(error_response(shared.description, shared.header)));
    }
    let (mut requirements, mut verify_requirements) = (Vec::new(), Vec::new());
    for (name, scheme) in security_schemes(sources) {
        components.add_security_scheme(name.clone(), scheme);
        verify_requirements.push(SecurityRequirement::new(name.clone(), [VERIFY_SCOPE]));
        requirements.push(SecurityRequirement::new(name, [ADMIN_SCOPE]));
    }
    doc.security = Some(requirements);
    // `POST /verify` is the one operation a `keysmith:verify` key calls.
    if let Some(verify) = doc.paths.paths.get_mut("/verify").and_then(|item| item.post.as_mut()) {
        verify.security = Some(verify_requirements);
    }

    let status_of = |name: &str| SHARED_RESPONSES.iter().find(|r| r.name == name).map(|r| r.status).unwrap_or_default();
    for item in doc.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            let has_body = operation.request_body.is_some();
            let shared = EVERY_OPERATION.iter().chain(if has_body { &WITH_BODY[..] } else { &[] });
            for name in shared {
                operation
                    .responses
                    .responses
                    .entry(status_of(name).to_owned())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*name)));
            }
            // The authentication layer's 400, on every route.
            match operation.responses.responses.entry("400".to_owned()) {
                Entry::Occupied(mut own) => {
                    if let RefOr::T(response) = own.get_mut() {
                        response.description.push_str("; or ");
                        response.description.push_str(AMBIGUOUS_KEY);
                    }
                }
                Entry::Vacant(none) => {
                    let description = if has_body {
                        format!("The body is not valid JSON; or {AMBIGUOUS_KEY}")
                    } else {
                        let mut text = AMBIGUOUS_KEY.to_owned();
                        text[..1].make_ascii_uppercase();
                        text
                    };
                    none.insert(RefOr::T(error_response(&description, None)));
                }
            }
        }
    }
    crate::secret_scanning::document::add_to(doc);
}

fn error_response(description: &str, header: Option<(&str, &str)>) -> Response {
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    let mut response = ResponseBuilder::new().description(description).content("application/json", content);
    if let Some((name, description)) = header {
        let header = HeaderBuilder::new().description(Some(description)).build();
        response = response.header(name, header);
    }
    response.build()
}

/// One scheme per place a key is read from: `bearer` for
/// `Authorization: Bearer`, `api_key` for `X-API-Key`, the header's name
/// for others.
fn security_schemes(sources: &KeySources) -> Vec<(String, SecurityScheme)> {
    sources
        .sources()
        .iter()
        .filter_map(|source| match source {
            KeySource::Bearer { header } if header == "authorization" => Some((
                "bearer".to_owned(),
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("`Authorization: Bearer <key>` with a key holding `keysmith:admin`"))
                        .build(),
                ),
            )),
            KeySource::Bearer { header } => Some((
                header.clone(),
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    header.clone(),
                    format!("`{header}: Bearer <key>` with a key holding `keysmith:admin`"),
                ))),
            )),
            KeySource::Header { name } => Some((
                if name == "x-api-key" { "api_key".to_owned() } else { name.clone() },
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    if name == "x-api-key" { "X-API-Key".to_owned() } else { name.clone() },
                    format!("`{name}: <key>` with a key holding `keysmith:admin`"),
                ))),
            )),
            // A source kind added to core later: undocumented until
            // described here.
            _ => None,
        })
        .collect()
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Serves this document. Its `servers` entry is the path the router is
/// nested at, so the paths resolve wherever it is mounted.
#[utoipa::path(
    get, path = "/openapi.json", tag = "meta", operation_id = "openapi",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object))
)]
pub(crate) async fn openapi_json(State(state): State<AdminState>, request: Request) -> Json<OpenApi> {
    let mut doc = OpenApi::clone(&state.openapi);
    if let Some(nested) = request.extensions().get::<NestedPath>() {
        doc.servers = Some(vec![Server::new(nested.as_str())]);
    }
    Json(doc)
}
