//! Keysmith's engine: API keys that are created once, stored as hashes,
//! validated on every request, rotated with grace periods and revoked for good.
//!
//! keysmith-core knows no web framework; `keysmith-tower` and
//! `keysmith-actix` plug it into servers, `keysmith-sqlx` stores it in
//! PostgreSQL, SQLite or MySQL/MariaDB.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use keysmith_core::{Engine, MemoryStore, NewKey, Refusal, RequestContext, RotationReason, ValidationError};
//!
//! let engine = Engine::builder(Arc::new(MemoryStore::new())).build()?;
//! let acme = engine.tenant("my-app", "acme");
//!
//! // The raw key is shown once; only its SHA-256 is stored.
//! let created = acme.create_key(NewKey::new("deploy bot").with_scopes(["read:users"])).await?;
//! let ctx = RequestContext::new();
//! let ok = engine.validate(created.raw.expose(), &ctx).await.unwrap();
//! assert_eq!(ok.key.tenant.tenant_id, "acme");
//!
//! // Rotate with no grace: the old secret stops at once, the new one works.
//! let rotated = acme.rotate_key(created.key.id, RotationReason::Compromised, Some(Duration::ZERO)).await?;
//! assert!(matches!(
//!     engine.validate(created.raw.expose(), &ctx).await,
//!     Err(ValidationError::Refused(Refusal::Revoked))
//! ));
//! assert!(engine.validate(rotated.raw.expose(), &ctx).await.is_ok());
//! # Ok::<(), keysmith_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! The string enums ([`KeyState`], [`Environment`], [`RotationReason`],
//! [`Period`], [`LimitBy`]) have one lowercase name per variant, the same in
//! `as_str`, `Display`, `FromStr` and serde. Optional features, off by
//! default: `clap` makes them `clap::ValueEnum` (command-line flags) and
//! `utoipa` makes them `utoipa::ToSchema` (OpenAPI documents).
#![forbid(unsafe_code)]

mod bounded;
mod clock;
mod engine;
mod error;
pub mod feed;
pub mod hooks;
pub mod http;
mod id;
mod input;
mod key;
pub mod leak;
pub mod limit;
mod names;
mod net;
pub mod policy;
mod refusal;
pub mod rotation;
pub mod scope;
mod serde_secs;
pub mod store;
mod tenant;
pub mod usage;

pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    CreatedKey, DEFAULT_ENVIRONMENT, DEFAULT_PREFIX, DEFAULT_ROTATION_GRACE, EXTERNAL_ID_FIELD, Engine, EngineBuilder,
    GRACE_ENDED_REASON, ImportOptions, ImportRefusal, ImportReport, ImportRow, ImportRun, NewKey, PresentedKey,
    REVOKED_BEFORE_IMPORT, RateLimitStates, Refund, RequestContext, RequiredScopes, RotatedKey, SweepReport,
    TenantEngine, Validation, ValidationError,
};
pub use error::{BoxError, Error, Result};
pub use feed::{Change, ChangeFeed};
pub use hooks::{Event, Plugin};
pub use id::{IdParseError, KeyId, PolicyId, RotationId, ScopeId, UsageId};
pub use input::{MAX_ID_LEN, MAX_METADATA_BYTES, MAX_METADATA_DEPTH, validate_id};
pub use key::{
    CreditSpend, Credits, CreditsStatus, Environment, HashParseError, Hasher, Key, KeyHash, KeyState, LegacyKeys,
    MAX_RAW_KEY_LEN, MIN_LEGACY_KEY_LEN, ParsedKey, RawKey, Refill, Sha256Hasher, validate_prefix,
};
pub use policy::{LimitBy, Policy, PolicySpec, Quota, RateLimit};
pub use refusal::{Refusal, retry_after_secs};
pub use rotation::{RotationReason, RotationRecord};
pub use scope::Scope;
pub use store::{CachedStore, KeyFilter, MemoryStore, Page, Store, TimeRange};
pub use tenant::Tenant;
pub use usage::{Period, QuotaRemaining, RefusalReason, UsageAggregate, UsageMode, UsageRecord, UsageRetention};
