//! `keysmith usage KEY_ID`: a key's roll-ups, or its raw records.

use keysmith_core::store::{Page, TimeRange};
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
        Period::Day => "%Y-%m-%d",
        Period::Month => "%Y-%m",
    };
    let mut table = Table::new([period.as_str(), "REQUESTS", "ERRORS"]);
    let (mut requests, mut errors) = (0u64, 0u64);
    for aggregate in aggregates {
        requests += aggregate.requests;
        errors += aggregate.errors;
        table.row([
            aggregate.period_start.format(format).to_string(),
            aggregate.requests.to_string(),
            aggregate.errors.to_string(),
        ]);
    }
    if !aggregates.is_empty() {
        table.row(["total".to_owned(), requests.to_string(), errors.to_string()]);
    }
    table.render("no usage")
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
