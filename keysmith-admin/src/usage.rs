//! `/keys/{id}/usage`: a key's request records and their hourly, daily or
//! monthly roll-ups with the outcome of every request.

use axum::Json;
use chrono::{DateTime, Utc};
use keysmith_core::store::TimeRange;
use keysmith_core::usage::{Refused, StatusClasses};
use keysmith_core::{KeyId, Period};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{Error, ErrorBody, Result};
use crate::extract::{Caller, Id, QueryParams};
use crate::model::page;

/// One request made with a key.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UsageRecord {
    /// The record's id.
    #[schema(value_type = String, pattern = "^kusg_[0-7][0-9a-hjkmnp-tv-z]{25}$")]
    id: keysmith_core::UsageId,
    /// The key used.
    #[schema(value_type = String, pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")]
    key_id: KeyId,
    /// The request path.
    #[schema(example = "/users")]
    endpoint: String,
    /// The HTTP method.
    #[schema(example = "GET")]
    method: String,
    /// The response status.
    #[schema(example = 200)]
    status: u16,
    /// The client address, when known.
    #[schema(value_type = Option<String>, format = "ip", example = "192.0.2.7")]
    ip: Option<std::net::IpAddr>,
    /// The `User-Agent`, when sent.
    user_agent: Option<String>,
    /// Time to answer, in milliseconds.
    latency_ms: u64,
    /// When the request was made.
    timestamp: DateTime<Utc>,
}

impl From<keysmith_core::UsageRecord> for UsageRecord {
    fn from(record: keysmith_core::UsageRecord) -> Self {
        Self {
            id: record.id,
            key_id: record.key_id,
            endpoint: record.endpoint.into(),
            method: record.method.into(),
            status: record.status,
            ip: record.ip,
            user_agent: record.user_agent.map(String::from),
            latency_ms: u64::try_from(record.latency.as_millis()).unwrap_or(u64::MAX),
            timestamp: record.timestamp,
        }
    }
}

/// What became of one key's requests in one hour, day or month: those that
/// passed (what quotas count) and those refused, by reason (charged to
/// nothing).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UsageAggregate {
    /// Hour, day or month.
    period: Period,
    /// The period's first instant (UTC).
    period_start: DateTime<Utc>,
    /// Requests that passed in the period.
    requests: u64,
    /// Of which answered with a status of 400 or more.
    errors: u64,
    /// The passed requests by status class (`2xx` counts every status below 300).
    status: StatusClasses,
    /// Requests refused, by reason (the refusal's error code).
    refused: Refused,
}

impl From<keysmith_core::UsageAggregate> for UsageAggregate {
    fn from(aggregate: keysmith_core::UsageAggregate) -> Self {
        Self {
            period: aggregate.period,
            period_start: aggregate.period_start,
            requests: aggregate.requests,
            errors: aggregate.errors,
            status: aggregate.status,
            refused: aggregate.refused,
        }
    }
}

/// A page of usage records.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UsageList {
    /// The records, oldest first.
    items: Vec<UsageRecord>,
    /// The page size asked for.
    limit: u32,
    /// How many records were skipped.
    offset: u64,
}

/// A key's roll-ups.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UsageAggregateList {
    /// The key.
    #[schema(value_type = String, pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$")]
    key_id: KeyId,
    /// The roll-ups, oldest first.
    items: Vec<UsageAggregate>,
}

/// Range and page of `GET /keys/{id}/usage`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageQuery {
    /// Records at or after this instant (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Records before this instant (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Records to skip (default 0).
    #[param(maximum = 9_007_199_254_740_991_u64)]
    offset: Option<u64>,
}

/// Period and range of `GET /keys/{id}/usage/aggregate`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AggregateQuery {
    /// `hour`, `day` (default) or `month`. Hourly roll-ups are kept for
    /// the usage retention (30 days by default).
    #[param(inline)]
    period: Option<Period>,
    /// Periods starting at or after this instant (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Periods starting before this instant (RFC 3339).
    to: Option<DateTime<Utc>>,
}

fn range(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Result<TimeRange> {
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(Error::InvalidQuery("from must not be after to".to_owned()));
    }
    Ok(TimeRange { from, to })
}

/// A key's usage records in a time range, oldest first.
#[utoipa::path(
    get, path = "/keys/{id}/usage", tag = "usage", operation_id = "list_key_usage",
    params(
        ("id" = String, Path, description = "The key's id (`akey_…`)", pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$"),
        UsageQuery,
    ),
    responses(
        (status = 200, description = "A page of usage records", body = UsageList),
        (status = 400, description = "The id is not a key id, or a query value is invalid", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
    )
)]
pub(crate) async fn list_usage(
    Caller(tenant): Caller, Id(id): Id<KeyId>, QueryParams(query): QueryParams<UsageQuery>,
) -> Result<Json<UsageList>> {
    let page = page(query.limit, query.offset)?;
    let records = tenant.list_usage(id, range(query.from, query.to)?, page).await?;
    Ok(Json(UsageList {
        items: records.into_iter().map(UsageRecord::from).collect(),
        limit: page.limit,
        offset: page.offset,
    }))
}

/// A key's hourly, daily or monthly roll-ups whose period starts in a time
/// range: passed requests by status class, refused ones by reason.
#[utoipa::path(
    get, path = "/keys/{id}/usage/aggregate", tag = "usage", operation_id = "aggregate_key_usage",
    params(
        ("id" = String, Path, description = "The key's id (`akey_…`)", pattern = "^akey_[0-7][0-9a-hjkmnp-tv-z]{25}$"),
        AggregateQuery,
    ),
    responses(
        (status = 200, description = "The key's roll-ups", body = UsageAggregateList),
        (status = 400, description = "The id is not a key id, or a query value is invalid", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
    )
)]
pub(crate) async fn aggregate_usage(
    Caller(tenant): Caller, Id(id): Id<KeyId>, QueryParams(query): QueryParams<AggregateQuery>,
) -> Result<Json<UsageAggregateList>> {
    let period = query.period.unwrap_or(Period::Day);
    let aggregates = tenant.usage_aggregates(id, period, range(query.from, query.to)?).await?;
    Ok(Json(UsageAggregateList { key_id: id, items: aggregates.into_iter().map(UsageAggregate::from).collect() }))
}
