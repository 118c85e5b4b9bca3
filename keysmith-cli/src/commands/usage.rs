//! `keysmith usage KEY_ID`: a key's roll-ups (passed requests and refusals
//! by reason), or its raw records.

use keysmith_core::store::{Page, TimeRange};
use keysmith_core::usage::{Refused, UsageCounts};
use keysmith_core::{Period, TenantEngine, UsageAggregate, UsageRecord};

use crate::cli::UsageArgs;
use crate::error::CliError;
use crate::output::{self, Printer, Table};
use crate::values::format_time;

/// Records listed when `--limit` is not given.
const DEFAULT_RECORDS: u32 = 100;

/// Runs `usage`.
pub(super) async fn run(args: UsageArgs, tenant: &TenantEngine, printer: Printer) -> Result<String, CliError> {
    let range = TimeRange { from: args.from, to: args.to };
    if args.records {
        let page = Page::new(args.limit.unwrap_or(DEFAULT_RECORDS), args.offset.unwrap_or(0));
        let records = tenant.list_usage(args.key, range, page).await?;
        printer.render(&records, || records_table(&records))
    } else {
        let period = args.period;
        let aggregates = tenant.usage_aggregates(args.key, period, range).await?;
        printer.render(&aggregates, || aggregates_table(period, &aggregates))
    }
}

fn aggregates_table(period: Period, aggregates: &[UsageAggregate]) -> String {
    let format = match period {
        Period::Hour => "%Y-%m-%d %H:00",
        Period::Day => "%Y-%m-%d",
        Period::Month => "%Y-%m",
    };
    let mut table = Table::new([period.as_str(), "REQUESTS", "ERRORS", "REFUSED", "REFUSED BY REASON"]);
    let mut total = UsageCounts::default();
    for aggregate in aggregates {
        total.add(&aggregate.counts());
        table.row([
            aggregate.period_start.format(format).to_string(),
            aggregate.requests.to_string(),
            aggregate.errors.to_string(),
            aggregate.refused.total().to_string(),
            reasons(&aggregate.refused),
        ]);
    }
    if !aggregates.is_empty() {
        table.row([
            "total".to_owned(),
            total.requests.to_string(),
            total.errors.to_string(),
            total.refused.total().to_string(),
            reasons(&total.refused),
        ]);
    }
    table.render("no usage")
}

/// The reasons with refusals, `reason n` each, or `-`.
fn reasons(refused: &Refused) -> String {
    let named: Vec<String> =
        refused.iter().filter(|(_, n)| *n > 0).map(|(reason, n)| format!("{reason} {n}")).collect();
    if named.is_empty() { "-".to_owned() } else { named.join(", ") }
}

fn records_table(records: &[UsageRecord]) -> String {
    let mut table = Table::new(["TIME", "METHOD", "ENDPOINT", "STATUS", "LATENCY", "IP", "USER AGENT"]);
    for record in records {
        table.row([
            format_time(record.timestamp),
            record.method.to_string(),
            record.endpoint.to_string(),
            record.status.to_string(),
            format!("{}ms", record.latency.as_millis()),
            output::opt(record.ip),
            output::opt(record.user_agent.as_deref()),
        ]);
    }
    table.render("no usage records")
}
