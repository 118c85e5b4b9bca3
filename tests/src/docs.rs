//! The README and the guide, compiled: every Rust snippet in them is a
//! doctest of this module, so `cargo test --workspace` fails when one drifts
//! from the API. Only built for doctests; the documents are read on GitHub.

#[doc = include_str!("../../README.md")]
pub mod readme {}

#[doc = include_str!("../../docs/guide/keys.md")]
pub mod keys {}

#[doc = include_str!("../../docs/guide/policies.md")]
pub mod policies {}

#[doc = include_str!("../../docs/guide/owners-and-credits.md")]
pub mod owners_and_credits {}

#[doc = include_str!("../../docs/guide/http.md")]
pub mod http {}

#[doc = include_str!("../../docs/guide/stores.md")]
pub mod stores {}

#[doc = include_str!("../../docs/guide/many-instances.md")]
pub mod many_instances {}

#[doc = include_str!("../../docs/guide/operating.md")]
pub mod operating {}

#[doc = include_str!("../../docs/guide/leaked-keys.md")]
pub mod leaked_keys {}

#[doc = include_str!("../../docs/guide/hooks-and-metrics.md")]
pub mod hooks_and_metrics {}

#[doc = include_str!("../../docs/guide/security.md")]
pub mod security {}

#[doc = include_str!("../../docs/guide/import.md")]
pub mod import {}
