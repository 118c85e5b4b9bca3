//! Flag values: parsing (for clap) and the matching human-readable form.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// Units a duration may be written in.
const UNITS: [(&str, u64); 5] = [("w", 7 * 86_400), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];

/// Units a duration is printed in, largest first: days rather than weeks,
/// since policies are written in days (`90d`).
const PRINTED_UNITS: [(&str, u64); 4] = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];

/// One `--trusted-proxy` entry: a network (`10.0.0.0/8`) or an address.
pub(crate) fn parse_trusted_proxy(text: &str) -> Result<String, String> {
    keysmith_core::http::TrustedProxies::parse([text]).map_err(|error| error.to_string())?;
    Ok(text.trim().to_owned())
}

/// A `WWW-Authenticate` realm: printable ASCII without `"` or `\`, which
/// would end or escape the quoted value.
pub(crate) fn parse_realm(text: &str) -> Result<String, String> {
    let quotable = |c: char| (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ';
    if text.is_empty() || !text.chars().all(quotable) {
        return Err(format!("{text:?} is not a realm: use printable ASCII without quotes or backslashes"));
    }
    Ok(text.to_owned())
}

/// A duration: whole seconds (`3600`) or numbers with units `w`, `d`, `h`,
/// `m`, `s`, optionally chained (`1h30m`).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration (e.g. 30d, 12h, 1h30m, 90s or seconds)");
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let seconds = UNITS.iter().find(|(unit, _)| *unit == &rest[..unit_len]).map(|(_, secs)| *secs);
        let seconds = seconds.ok_or_else(invalid)?;
        total = number.checked_mul(seconds).and_then(|n| total.checked_add(n)).ok_or_else(invalid)?;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs(total))
}

/// A timeout or interval of `serve`, written and printed as a duration
/// (`10s`), so that `--help` shows the default as it is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeout(pub(crate) Duration);

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

/// How often `serve` sweeps by default.
pub(crate) const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// `--sweep-interval`: a duration up to 30 days; 0 turns the sweep off.
pub(crate) fn parse_sweep_interval(text: &str) -> Result<Timeout, String> {
    let interval = parse_duration(text)?;
    let max = Duration::from_secs(30 * 86_400);
    if interval > max {
        return Err(format!("{text:?} is more than {}", format_duration(max)));
    }
    Ok(Timeout(interval))
}

/// The usage retention of `--usage-retention <days>` (the default without).
pub(crate) fn usage_retention(days: Option<u32>) -> keysmith_core::UsageRetention {
    let retention = keysmith_core::UsageRetention::default();
    match days {
        Some(days) => retention.with_records(Duration::from_secs(u64::from(days) * 86_400)),
        None => retention,
    }
}

/// `--header-timeout`: a duration from 1s to 1h.
pub(crate) fn parse_header_timeout(text: &str) -> Result<Timeout, String> {
    parse_timeout(text, keysmith_admin::Server::MIN_HEADER_TIMEOUT)
}

/// `--shutdown-timeout`: a duration up to 1h; 0 drops open connections at
/// once.
pub(crate) fn parse_shutdown_timeout(text: &str) -> Result<Timeout, String> {
    parse_timeout(text, Duration::ZERO)
}

fn parse_timeout(text: &str, min: Duration) -> Result<Timeout, String> {
    let max = keysmith_admin::Server::MAX_TIMEOUT;
    let timeout = parse_duration(text)?;
    if timeout < min || timeout > max {
        return Err(format!("{text:?} is not between {} and {}", format_duration(min), format_duration(max)));
    }
    Ok(Timeout(timeout))
}

/// `1h30m`, `90d`, `0s`; sub-second durations in milliseconds.
pub(crate) fn format_duration(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        let millis = duration.subsec_millis();
        return if millis == 0 { "0s".to_owned() } else { format!("{millis}ms") };
    }
    let mut out = String::new();
    for (unit, size) in PRINTED_UNITS {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// A rate limit as written on the command line: requests per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimitArg {
    /// Requests allowed per window.
    pub(crate) requests: u32,
    /// The window.
    pub(crate) window: Duration,
}

/// `100/60s`, `10/1s`, `5000/h` (a bare unit means one of it).
pub(crate) fn parse_rate_limit(text: &str) -> Result<RateLimitArg, String> {
    let invalid = || format!("{text:?} is not a rate limit (REQUESTS/WINDOW, e.g. 100/60s or 5000/h)");
    let (requests, window) = text.trim().split_once('/').ok_or_else(invalid)?;
    let requests = requests.trim().parse().map_err(|_| invalid())?;
    let window = window.trim();
    if window.is_empty() {
        return Err(invalid());
    }
    let window = if window.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(window)
    } else {
        parse_duration(&format!("1{window}"))
    };
    Ok(RateLimitArg { requests, window: window.map_err(|_| invalid())? })
}

/// `NAME=REQUESTS/WINDOW[,BURST]`: `burst=10/1s`, `hourly=1000/h,1200`.
pub(crate) fn parse_named_limit(text: &str) -> Result<keysmith_core::RateLimit, String> {
    let invalid = || format!("{text:?} is not a named limit (NAME=REQUESTS/WINDOW[,BURST], e.g. burst=10/1s)");
    let (name, rest) = text.trim().split_once('=').ok_or_else(invalid)?;
    let (rate, burst) = match rest.split_once(',') {
        Some((rate, burst)) => (rate, Some(burst.trim().parse().map_err(|_| invalid())?)),
        None => (rest, None),
    };
    let rate = parse_rate_limit(rate)?;
    Ok(keysmith_core::RateLimit { name: name.trim().to_owned(), requests: rate.requests, window: rate.window, burst })
}

/// `100/1m`.
pub(crate) fn format_rate_limit(requests: u32, window: Duration) -> String {
    format!("{requests}/{}", format_duration(window))
}

/// An RFC 3339 time (`2025-01-31T12:00:00Z`) or a date (`2025-01-31`, its
/// UTC midnight).
pub(crate) fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(|date| date.and_time(chrono::NaiveTime::MIN).and_utc())
        .map_err(|_| format!("{text:?} is not a time (RFC 3339 like 2025-01-31T12:00:00Z, or a date like 2025-01-31)"))
}

/// RFC 3339 in UTC, to the second.
pub(crate) fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A JSON object naming each key once, at every depth (as the admin API
/// reads metadata).
pub(crate) fn parse_metadata(text: &str) -> Result<Map<String, Value>, String> {
    keysmith_admin::parse_metadata(text).map_err(|error| format!("expected a JSON object ({error})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        let table = [
            ("0", 0),
            ("3600", 3600),
            ("90s", 90),
            ("15m", 900),
            ("12h", 43_200),
            ("30d", 2_592_000),
            ("2w", 1_209_600),
            ("1h30m", 5400),
            (" 1d12h ", 129_600),
        ];
        for (text, secs) in table {
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for bad in ["", "h", "1x", "1.5h", "-1h", "1h 30m", "99999999999999999999w", "30 days"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_timeouts_are_bounded() {
        assert_eq!(parse_header_timeout("10s"), Ok(Timeout(keysmith_admin::DEFAULT_HEADER_TIMEOUT)));
        assert_eq!(parse_shutdown_timeout("0"), Ok(Timeout(Duration::ZERO)));
        assert_eq!(parse_shutdown_timeout("1h"), Ok(Timeout(Duration::from_secs(3600))));
        assert_eq!(parse_header_timeout("0"), Err("\"0\" is not between 1s and 1h".to_owned()));
        for bad in ["1h1s", "2h", "-1s", "soon"] {
            assert!(parse_header_timeout(bad).is_err(), "{bad}");
            assert!(parse_shutdown_timeout(bad).is_err(), "{bad}");
        }
        assert_eq!(Timeout(Duration::from_secs(90)).to_string(), "1m30s");
    }

    #[test]
    fn durations_print_in_the_largest_units() {
        for (secs, text) in [(0, "0s"), (59, "59s"), (5400, "1h30m"), (86_400 * 90, "90d"), (93_784, "1d2h3m4s")] {
            assert_eq!(format_duration(Duration::from_secs(secs)), text);
            assert_eq!(parse_duration(text), Ok(Duration::from_secs(secs)));
        }
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn named_limits_carry_a_name_a_rate_and_maybe_a_burst() {
        use keysmith_core::RateLimit;
        assert_eq!(parse_named_limit("burst=10/1s"), Ok(RateLimit::new("burst", 10, Duration::from_secs(1))));
        assert_eq!(
            parse_named_limit("hourly=1000/h,1200"),
            Ok(RateLimit::new("hourly", 1000, Duration::from_secs(3600)).with_burst(1200))
        );
        for bad in ["burst", "burst=", "burst=10", "=10/1s,x", "b=10/1s,", "b=10/1s,-1"] {
            assert!(parse_named_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_limits_are_requests_per_window() {
        assert_eq!(parse_rate_limit("100/60s"), Ok(RateLimitArg { requests: 100, window: Duration::from_secs(60) }));
        assert_eq!(parse_rate_limit("5000/h"), Ok(RateLimitArg { requests: 5000, window: Duration::from_secs(3600) }));
        assert_eq!(parse_rate_limit("10/30"), Ok(RateLimitArg { requests: 10, window: Duration::from_secs(30) }));
        for bad in ["100", "/60s", "x/60s", "100/", "100/fortnight", "-1/s"] {
            assert!(parse_rate_limit(bad).is_err(), "{bad}");
        }
        assert_eq!(format_rate_limit(100, Duration::from_secs(60)), "100/1m");
    }

    #[test]
    fn times_are_rfc3339_or_dates() {
        let at = parse_time("2025-01-31T13:00:00+01:00").unwrap();
        assert_eq!(format_time(at), "2025-01-31T12:00:00Z");
        assert_eq!(format_time(parse_time("2025-01-31").unwrap()), "2025-01-31T00:00:00Z");
        for bad in ["2025-13-01", "yesterday", "2025-01-31 12:00", ""] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_must_be_an_object() {
        assert_eq!(parse_metadata(r#"{"team":"infra"}"#).unwrap()["team"], "infra");
        for bad in ["[]", "1", "{", "\"x\"", r#"{"team":"a","team":"b"}"#, r#"{"t":{"a":1,"a":1}}"#] {
            assert!(parse_metadata(bad).is_err(), "{bad}");
        }
    }
}
