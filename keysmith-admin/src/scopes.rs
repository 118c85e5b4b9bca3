//! `/scopes`: the tenant's scope registry.

use axum::Json;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use keysmith_core::ScopeId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ErrorBody, Result};
use crate::extract::{Caller, Id, JsonBody};

/// A registered scope name.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Scope {
    /// The scope's id.
    #[schema(value_type = String, pattern = "^kscp_[0-7][0-9a-hjkmnp-tv-z]{25}$", example = "kscp_01h455vb4pex5vsknk084sn02q")]
    id: ScopeId,
    /// The name, unique in the tenant.
    #[schema(example = "read:users")]
    name: String,
    /// What the scope allows, for people.
    description: String,
    /// Creation time.
    created_at: DateTime<Utc>,
}

impl From<keysmith_core::Scope> for Scope {
    fn from(scope: keysmith_core::Scope) -> Self {
        Self { id: scope.id, name: scope.name, description: scope.description, created_at: scope.created_at }
    }
}

/// A scope to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateScope {
    /// `*`, `keysmith:*`, or segments of letters, digits, `_`, `-`, `.`
    /// joined by `:`; at most 128 characters.
    #[schema(example = "read:users")]
    name: String,
    /// What the scope allows: at most 1024 characters, no control character.
    #[serde(default)]
    #[schema(example = "Read user profiles")]
    description: String,
}

/// The tenant's scopes.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ScopeList {
    /// The scopes, by name.
    items: Vec<Scope>,
}

/// Registers a scope name.
#[utoipa::path(
    post, path = "/scopes", tag = "scopes", operation_id = "create_scope",
    request_body = CreateScope,
    responses(
        (status = 201, description = "The scope", body = Scope),
        (status = 400, description = "Invalid name or description", body = ErrorBody),
        (status = 409, description = "The tenant already registered this name (`already_exists`)", body = ErrorBody),
    )
)]
pub(crate) async fn create_scope(
    Caller(tenant): Caller, JsonBody(body): JsonBody<CreateScope>,
) -> Result<(StatusCode, Json<Scope>)> {
    let scope = tenant.create_scope(&body.name, &body.description).await?;
    Ok((StatusCode::CREATED, Json(scope.into())))
}

/// Lists the tenant's registered scopes, by name.
#[utoipa::path(
    get, path = "/scopes", tag = "scopes", operation_id = "list_scopes",
    responses((status = 200, description = "The tenant's scopes", body = ScopeList))
)]
pub(crate) async fn list_scopes(Caller(tenant): Caller) -> Result<Json<ScopeList>> {
    let scopes = tenant.list_scopes().await?;
    Ok(Json(ScopeList { items: scopes.into_iter().map(Scope::from).collect() }))
}

/// Removes a scope from the registry. Keys keep the scopes they hold.
#[utoipa::path(
    delete, path = "/scopes/{id}", tag = "scopes", operation_id = "delete_scope",
    params(("id" = String, Path, description = "The scope's id (`kscp_…`)", pattern = "^kscp_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The id is not a scope id", body = ErrorBody),
        (status = 404, description = "No such scope in this tenant", body = ErrorBody),
    )
)]
pub(crate) async fn delete_scope(Caller(tenant): Caller, Id(id): Id<ScopeId>) -> Result<StatusCode> {
    tenant.delete_scope(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
