//! End-to-end tests of the `keysmith` binary: the operator flow on SQLite
//! and PostgreSQL, exit statuses, and where secrets are printed.

mod flow;
mod harness;
mod mysql;
mod postgres;
mod sqlite;
mod usage_errors;
