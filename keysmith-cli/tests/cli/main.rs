//! End-to-end tests of the `keysmith` binary: the operator flow on SQLite
//! and PostgreSQL, exit statuses, where secrets are printed, and `serve`.

mod feed;
mod flow;
mod harness;
mod import;
mod mysql;
mod postgres;
mod serve;
mod sqlite;
mod usage_errors;
