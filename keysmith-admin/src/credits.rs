//! `/keys/{id}/credits`: set, remove and top up a key's prepaid uses.

use axum::Json;
use keysmith_core::{KeyId, Period};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ErrorBody, Result};
use crate::extract::{Caller, Id, JsonBody};
use crate::keys::Key;
use crate::schema::whole;

/// A key's prepaid uses, shared by its rotations: each request that passes
/// spends its cost (1 by default); at zero the key is refused with 429
/// `credits_exhausted`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Credits {
    /// Uses left (after any refill due now).
    #[schema(example = 1000)]
    remaining: u64,
    /// The periodic refill, if any.
    refill: Option<Refill>,
    /// The start of the refill period `remaining` belongs to.
    refilled_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// At the start of each UTC day or month, `remaining` becomes `amount`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Refill {
    /// What `remaining` becomes, 1 to 10^12.
    #[serde(deserialize_with = "whole::credits")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64, example = 1000)]
    amount: u64,
    /// How often (UTC): `day` or `month`.
    #[schema(schema_with = crate::schema::refill_period)]
    every: Period,
}

impl From<keysmith_core::Credits> for Credits {
    fn from(credits: keysmith_core::Credits) -> Self {
        Self {
            remaining: credits.remaining,
            refill: credits.refill.map(|refill| Refill { amount: refill.amount, every: refill.every }),
            refilled_at: credits.refilled_at,
        }
    }
}

/// Credits to give a key (replacing any it has).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreditsInput {
    /// Uses, 0 to 10^12.
    #[serde(deserialize_with = "whole::credits")]
    #[schema(maximum = 1_000_000_000_000_u64, example = 1000)]
    remaining: u64,
    /// Refill `remaining` to an amount every UTC day or month.
    refill: Option<Refill>,
}

impl From<CreditsInput> for keysmith_core::Credits {
    fn from(input: CreditsInput) -> Self {
        let credits = Self::new(input.remaining);
        match input.refill {
            Some(refill) => credits.with_refill(refill.amount, refill.every),
            None => credits,
        }
    }
}

/// Credits to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddCredits {
    /// Uses to add, 1 to 10^12; the sum may not pass 10^12.
    #[serde(deserialize_with = "whole::credits")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64, example = 500)]
    amount: u64,
}

impl AddCredits {
    /// The uses to add.
    pub(crate) fn amount(&self) -> u64 {
        self.amount
    }
}

/// Gives the key (and its lineage: the keys it replaced or that replace
/// it) these credits, replacing any. A refill starts with the current
/// period.
#[utoipa::path(
    put, path = "/keys/{id}/credits", tag = "keys", operation_id = "set_key_credits",
    params(("id" = String, Path, description = "The key's id (`akey_…`)", pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    request_body = CreditsInput,
    responses(
        (status = 200, description = "The key with its credits", body = Key),
        (status = 400, description = "The id is not a key id, or a value is out of range", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
        (status = 409, description = "The key's policy limits by owner and the key has an owner: it spends its owner's credits, so set `/owners/{owner_id}/credits` instead (`credits_conflict`)", body = ErrorBody),
    )
)]
pub(crate) async fn set_credits(
    Caller(tenant): Caller, Id(id): Id<KeyId>, JsonBody(body): JsonBody<CreditsInput>,
) -> Result<Json<Key>> {
    Ok(Json(tenant.set_credits(id, Some(body.into())).await?.into()))
}

/// Removes the key's credits: its requests are no longer counted against any.
#[utoipa::path(
    delete, path = "/keys/{id}/credits", tag = "keys", operation_id = "remove_key_credits",
    params(("id" = String, Path, description = "The key's id (`akey_…`)", pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    responses(
        (status = 200, description = "The key, without credits", body = Key),
        (status = 400, description = "The id is not a key id", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
    )
)]
pub(crate) async fn remove_credits(Caller(tenant): Caller, Id(id): Id<KeyId>) -> Result<Json<Key>> {
    Ok(Json(tenant.set_credits(id, None).await?.into()))
}

/// Tops the key's credits up (after the refill due now, if one is).
#[utoipa::path(
    post, path = "/keys/{id}/credits/add", tag = "keys", operation_id = "add_key_credits",
    params(("id" = String, Path, description = "The key's id (`akey_…`)", pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")),
    request_body = AddCredits,
    responses(
        (status = 200, description = "The key with its credits", body = Key),
        (status = 400, description = "The id is not a key id, the key has no credits, or the sum would pass 10^12", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
        (status = 409, description = "The key's policy limits by owner and the key has an owner: it spends its owner's credits, so top up `/owners/{owner_id}/credits` instead (`credits_conflict`)", body = ErrorBody),
    )
)]
pub(crate) async fn add_credits(
    Caller(tenant): Caller, Id(id): Id<KeyId>, JsonBody(body): JsonBody<AddCredits>,
) -> Result<Json<Key>> {
    Ok(Json(tenant.add_credits(id, body.amount).await?.into()))
}
