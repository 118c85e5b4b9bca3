//! What a command prints: one JSON document with `--json`, aligned text
//! otherwise.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::CliError;
use crate::values::format_time;

/// Chooses between the JSON and the human form of a command's result.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Printer {
    json: bool,
}

impl Printer {
    /// JSON when `json`, text otherwise.
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    /// True with `--json`.
    pub(crate) fn is_json(self) -> bool {
        self.json
    }

    /// The text to print for a result: `value` as pretty JSON, or what
    /// `human` writes. Only the chosen form is built.
    pub(crate) fn render<T: Serialize>(self, value: &T, human: impl FnOnce() -> String) -> Result<String, CliError> {
        if self.json {
            let mut text =
                serde_json::to_string_pretty(value).map_err(|error| CliError::Output(std::io::Error::other(error)))?;
            text.push('\n');
            Ok(text)
        } else {
            Ok(human())
        }
    }
}

/// Columns aligned on the widest cell; the last column is not padded.
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub(crate) fn new<const N: usize>(header: [&str; N]) -> Self {
        Self { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    /// Adds a row (as many cells as titles).
    pub(crate) fn row<const N: usize>(&mut self, cells: [String; N]) {
        debug_assert_eq!(N, self.header.len());
        self.rows.push(cells.into());
    }

    /// The table, or `empty` (a whole line) when it has no rows.
    pub(crate) fn render(&self, empty: &str) -> String {
        if self.rows.is_empty() {
            return format!("{empty}\n");
        }
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            write_aligned(&mut out, row, &widths);
        }
        out
    }
}

/// `label  value` lines, values aligned.
#[derive(Debug, Default)]
pub(crate) struct Details {
    lines: Vec<(&'static str, String)>,
}

impl Details {
    /// An empty list.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a line.
    pub(crate) fn line(&mut self, label: &'static str, value: impl Into<String>) -> &mut Self {
        self.lines.push((label, value.into()));
        self
    }

    /// The lines.
    pub(crate) fn render(&self) -> String {
        let width = self.lines.iter().map(|(label, _)| label.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (label, value) in &self.lines {
            let _ = writeln!(out, "{label:<width$}  {value}");
        }
        out
    }
}

fn write_aligned(out: &mut String, cells: &[String], widths: &[usize]) {
    let last = cells.len().saturating_sub(1);
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i == last {
            out.push_str(cell);
        } else {
            let pad = width - cell.chars().count();
            let _ = write!(out, "{cell}{:pad$}  ", "");
        }
    }
    out.push('\n');
}

/// A time, or `-`.
pub(crate) fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(dash, format_time)
}

/// A comma-separated list, or `-`.
pub(crate) fn list<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() { dash() } else { items.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(", ") }
}

/// Anything displayable, or `-`.
pub(crate) fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(dash, |v| v.to_string())
}

/// A JSON object on one line, or `-` when it is empty.
pub(crate) fn metadata(object: &serde_json::Map<String, serde_json::Value>) -> String {
    if object.is_empty() { dash() } else { serde_json::Value::Object(object.clone()).to_string() }
}

fn dash() -> String {
    "-".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_on_the_widest_cell() {
        let mut table = Table::new(["ID", "NAME", "STATE"]);
        table.row(["a".to_owned(), "long name".to_owned(), "active".to_owned()]);
        table.row(["bbbb".to_owned(), "x".to_owned(), "revoked".to_owned()]);
        assert_eq!(table.render("none"), "ID    NAME       STATE\na     long name  active\nbbbb  x          revoked\n");
        assert_eq!(Table::new(["ID"]).render("no keys"), "no keys\n");
    }

    #[test]
    fn details_align_values() {
        let text = Details::new().line("id", "akey_1").line("expires at", "-").render();
        assert_eq!(text, "id          akey_1\nexpires at  -\n");
    }

    #[test]
    fn missing_values_print_as_a_dash() {
        assert_eq!(list::<String>(&[]), "-");
        assert_eq!(list(&["read", "write"]), "read, write");
        assert_eq!(opt(None::<u32>), "-");
        assert_eq!(time(None), "-");
    }
}
