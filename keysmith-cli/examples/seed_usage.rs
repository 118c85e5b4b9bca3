//! Writes 30 days of made-up traffic for one key, through the engine's
//! usage recorder (the path the HTTP adapters use), so that a dashboard has
//! a usage chart to draw. The dashboard's browser tests run it.
//!
//! ```text
//! cargo run -p keysmith-cli --example seed_usage -- sqlite:keys.db myapp acme akey_…
//! ```
//!
//! Some days also get refused requests (rate-limited, over quota), counted
//! in the roll-ups as the engine counts a refusal.
//!
//! Prints what it wrote as one JSON document: the day (UTC) of every record
//! written, with its requests, errors and refusals by reason, and the same
//! per UTC hour of the last 24 hours (`"2026-03-14T09:00"`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, Utc};
use keysmith_core::usage::{RefusalReason, UsageBatch, UsageCounts, UsageDelta};
use keysmith_core::{Engine, KeyId, Period, UsageId, UsageRecord};
use keysmith_sqlx::SqliteStore;

/// How many days end today.
const DAYS: u64 = 30;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, app, tenant, key] = args.as_slice() else {
        return Err("usage: seed_usage <sqlite:URL> <APP> <TENANT> <KEY_ID>".into());
    };
    let key_id: KeyId = key.parse()?;
    let engine = Engine::builder(Arc::new(SqliteStore::connect(url).await?)).build()?;
    let key = engine.tenant(app.as_str(), tenant.as_str()).get_key(key_id).await?;

    let now = Utc::now();
    let today = Period::Day.start_of(now);
    let mut written = BTreeMap::new();
    let last_hours = Period::Hour.start_of(now) - chrono::Duration::hours(23);
    let mut hours: BTreeMap<String, UsageCounts> = BTreeMap::new();
    let hour_of = |at: chrono::DateTime<Utc>| Period::Hour.start_of(at).format("%Y-%m-%dT%H:00").to_string();
    for age in (0..DAYS).rev() {
        let day = today.checked_sub_days(Days::new(age)).ok_or("date out of range")?;
        let (requests, errors) = traffic(DAYS - 1 - age);
        if requests == 0 {
            continue;
        }
        for n in 0..requests {
            // Spread over the day, and never after now.
            let at = (day + chrono::Duration::seconds(i64::try_from(n * 41)?)).min(now);
            let status = if n < errors { 500 } else { 200 };
            if at >= last_hours {
                hours.entry(hour_of(at)).or_default().add_passed(status);
            }
            engine.record_usage(UsageRecord {
                id: UsageId::new(),
                key_id,
                tenant: key.tenant.clone().into(),
                endpoint: if n % 3 == 0 { "/orders".into() } else { "/users".into() },
                method: "GET".into(),
                status,
                ip: None,
                user_agent: Some("seed_usage".into()),
                latency: Duration::from_millis(5 + n % 20),
                timestamp: at,
            });
        }
        // The queue is bounded: write each day before the next.
        engine.flush_usage().await;
        let refused = refusals(DAYS - 1 - age);
        if refused.refused.total() > 0 {
            // An hour into the day (or now): as the engine counts refusals, without raw records.
            let at = (day + chrono::Duration::hours(1)).min(now);
            let delta = UsageDelta {
                key_id,
                tenant: key.tenant.clone().into(),
                hour: Period::Hour.start_of(at),
                counts: refused,
            };
            engine.store().write_usage(&UsageBatch { id: UsageId::new(), records: &[], deltas: &[delta] }).await?;
            if at >= last_hours {
                hours.entry(hour_of(at)).or_default().add(&refused);
            }
        }
        written.insert(
            day.format("%Y-%m-%d").to_string(),
            serde_json::json!({ "requests": requests, "errors": errors, "refused": refused.refused }),
        );
    }
    engine.shutdown().await;
    let stats = engine.usage_stats();
    if stats.dropped > 0 || stats.failed > 0 {
        return Err(format!("usage records were not all written: {stats:?}").into());
    }
    let hours: BTreeMap<String, serde_json::Value> = hours
        .into_iter()
        .map(|(hour, counts)| {
            let value = serde_json::json!({ "requests": counts.requests, "errors": counts.errors, "refused": counts.refused.total() });
            (hour, value)
        })
        .collect();
    println!("{}", serde_json::json!({ "key_id": key_id.to_string(), "days": written, "hours": hours }));
    Ok(())
}

/// Requests and errors of day `index` (0 is the oldest): a rising trend,
/// quieter weekends, a day without traffic and an incident with many errors.
fn traffic(index: u64) -> (u64, u64) {
    if index == 9 {
        return (0, 0);
    }
    let weekday = 60 + index * 4 + (index * 37 % 11) * 3;
    let requests = if index % 7 >= 5 { weekday / 3 } else { weekday };
    let errors = if index == 20 { requests * 2 / 5 } else { requests / 30 };
    (requests, errors)
}

/// Refusals of day `index`: rate-limited on busy days, over quota during
/// the incident, none on most days.
fn refusals(index: u64) -> UsageCounts {
    let mut counts = UsageCounts::default();
    if index % 4 == 1 {
        *counts.refused.get_mut(RefusalReason::RateLimited) += 5 + index % 7;
    }
    if index == 20 || index == 29 {
        *counts.refused.get_mut(RefusalReason::QuotaExceeded) += 12;
    }
    counts
}
