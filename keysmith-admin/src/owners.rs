//! `/owners/{owner_id}/credits`: the credits every key of an owner spends
//! under a policy with `limit_by: owner`.

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::credits::{AddCredits, Credits, CreditsInput};
use crate::error::{ErrorBody, Result};
use crate::extract::{Caller, JsonBody, PathText};

/// An owner's credits: one balance that each request of any of its keys
/// under a policy with `limit_by: owner` spends (at zero: 429
/// `credits_exhausted`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OwnerCredits {
    /// The application's id for the user or customer.
    #[schema(example = "cus_42")]
    owner_id: String,
    /// The credits, or `null` when the owner has none (its keys are not
    /// limited by credits).
    credits: Option<Credits>,
}

impl OwnerCredits {
    fn new(owner_id: String, credits: Option<keysmith_core::Credits>) -> Json<Self> {
        Json(Self { owner_id, credits: credits.map(Credits::from) })
    }
}

/// The owner's credits, as they stand now (after any refill due).
#[utoipa::path(
    get, path = "/owners/{owner_id}/credits", tag = "owners", operation_id = "get_owner_credits",
    params(("owner_id" = String, Path, description = "The owner's id, as on its keys: 1 to 128 bytes, compared exactly", min_length = 1)),
    responses(
        (status = 200, description = "The owner's credits (`null`: none)", body = OwnerCredits),
        (status = 400, description = "The owner id is empty, too long or has control characters or edge spaces", body = ErrorBody),
    )
)]
pub(crate) async fn get_owner_credits(
    Caller(tenant): Caller, PathText(owner_id): PathText,
) -> Result<Json<OwnerCredits>> {
    let credits = tenant.owner_credits(&owner_id).await?;
    Ok(OwnerCredits::new(owner_id, credits))
}

/// Gives the owner these credits, replacing any; every key of the owner
/// under a policy with `limit_by: owner` spends them. A refill starts with
/// the current period. The owner need not have a key yet.
#[utoipa::path(
    put, path = "/owners/{owner_id}/credits", tag = "owners", operation_id = "set_owner_credits",
    params(("owner_id" = String, Path, description = "The owner's id, as on its keys: 1 to 128 bytes, compared exactly", min_length = 1)),
    request_body = CreditsInput,
    responses(
        (status = 200, description = "The owner's credits", body = OwnerCredits),
        (status = 400, description = "The owner id is not one a key could have, or a value is out of range", body = ErrorBody),
    )
)]
pub(crate) async fn set_owner_credits(
    Caller(tenant): Caller, PathText(owner_id): PathText, JsonBody(body): JsonBody<CreditsInput>,
) -> Result<Json<OwnerCredits>> {
    let credits = tenant.set_owner_credits(&owner_id, Some(body.into())).await?;
    Ok(OwnerCredits::new(owner_id, credits))
}

/// Removes the owner's credits: its keys are no longer limited by credits.
#[utoipa::path(
    delete, path = "/owners/{owner_id}/credits", tag = "owners", operation_id = "remove_owner_credits",
    params(("owner_id" = String, Path, description = "The owner's id, as on its keys: 1 to 128 bytes, compared exactly", min_length = 1)),
    responses(
        (status = 200, description = "The owner, without credits", body = OwnerCredits),
        (status = 400, description = "The owner id is not one a key could have", body = ErrorBody),
    )
)]
pub(crate) async fn remove_owner_credits(
    Caller(tenant): Caller, PathText(owner_id): PathText,
) -> Result<Json<OwnerCredits>> {
    let credits = tenant.set_owner_credits(&owner_id, None).await?;
    Ok(OwnerCredits::new(owner_id, credits))
}

/// Tops the owner's credits up (after the refill due now, if one is).
#[utoipa::path(
    post, path = "/owners/{owner_id}/credits/add", tag = "owners", operation_id = "add_owner_credits",
    params(("owner_id" = String, Path, description = "The owner's id, as on its keys: 1 to 128 bytes, compared exactly", min_length = 1)),
    request_body = AddCredits,
    responses(
        (status = 200, description = "The owner's credits", body = OwnerCredits),
        (status = 400, description = "The owner id is not one a key could have, the owner has no credits, or the sum would pass 10^12", body = ErrorBody),
    )
)]
pub(crate) async fn add_owner_credits(
    Caller(tenant): Caller, PathText(owner_id): PathText, JsonBody(body): JsonBody<AddCredits>,
) -> Result<Json<OwnerCredits>> {
    let credits = tenant.add_owner_credits(&owner_id, body.amount()).await?;
    Ok(OwnerCredits::new(owner_id, Some(credits)))
}
