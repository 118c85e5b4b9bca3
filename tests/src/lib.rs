//! Cross-crate test suites for Keysmith (not published).
//!
//! [`store_conformance`] holds the cases every store must pass; a backend's
//! test file runs them all with one macro call:
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keysmith_core::{MemoryStore, Store};
//! use keysmith_tests::store_conformance;
//!
//! // In tests/tests/store_memory.rs:
//! //     async fn setup() -> Option<Fixture> { Some(Fixture::new(Arc::new(MemoryStore::new())).await) }
//! //     keysmith_tests::store_conformance_tests!(setup);
//! // or one case by hand:
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! store_conformance::transitions_follow_the_lifecycle(store).await;
//! # });
//! ```
//!
//! [`http_conformance`] holds the HTTP behaviour (the status table of docs/guide/http.md, extraction and client-address rules) as cases every framework adapter
//! must pass, through its [`Harness`](http_conformance::Harness) trait.
//!
//! [`server_process`] runs a server binary (`keysmith serve`, the demos) as
//! a child process, with raw HTTP/1.1 clients for it; [`demo_cases`] holds
//! the cases both web demos must pass.
//!
//! [`feed_cases`] holds what every network change feed must do when its
//! connections go silent, through [`proxy::SilentProxy`]: a proxy that stands
//! between a client and a server and can stop forwarding without closing
//! anything.
//!
//! The README and every chapter of `docs/guide/` are compiled as doctests of
//! a module built only for doctests, so a snippet that drifts from the API
//! fails `cargo test`.
//!
//! [`github`] plays GitHub's side of secret scanning: a key endpoint on
//! 127.0.0.1 and signed alerts.
#![forbid(unsafe_code)]

pub mod demo_cases;
#[cfg(doctest)]
pub mod docs;
pub mod feed_cases;
pub mod github;
pub mod http_conformance;
pub mod proxy;
pub mod server_process;
pub mod services;
pub mod sql_cases;
pub mod store_conformance;
pub mod wait;
