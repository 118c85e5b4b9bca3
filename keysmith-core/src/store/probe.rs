//! A store wrapper that reports every call to a probe: for counting calls,
//! injecting failures ("the database went away") or pausing a call in a
//! test, without writing yet another delegating store. Test instrumentation:
//! built only with the `testing` feature.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::Store;
use crate::{Error, Result};

/// One store method, as a probe sees it: `StoreOp::find_key_by_hash` and
/// so on, one constant a method, named as the method is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreOp(&'static str);

impl StoreOp {
    pub(super) const fn named(name: &'static str) -> Self {
        Self(name)
    }

    /// The method's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        self.0
    }
}

/// Sees every call of a [`ProbedStore`].
#[async_trait]
pub trait StoreProbe: Send + Sync + fmt::Debug + 'static {
    /// Before the call; an error is returned instead of calling the store.
    ///
    /// # Errors
    /// Whatever the probe wants the caller to see.
    async fn before(&self, op: StoreOp) -> Result<()> {
        let _ = op;
        Ok(())
    }

    /// After the store answered, before the answer is returned.
    async fn after(&self, op: StoreOp) {
        let _ = op;
    }
}

/// Wraps a store and reports each call to a [`StoreProbe`].
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use keysmith_core::store::{ProbedStore, StoreOp, StoreProbe};
/// use keysmith_core::{Engine, Error, MemoryStore, NewKey, RequestContext, ValidationError};
///
/// #[derive(Debug, Default)]
/// struct Outage(AtomicBool);
///
/// #[async_trait::async_trait]
/// impl StoreProbe for Outage {
///     async fn before(&self, _: StoreOp) -> keysmith_core::Result<()> {
///         if self.0.load(Ordering::SeqCst) { Err(Error::store("connection refused")) } else { Ok(()) }
///     }
/// }
///
/// let outage = Arc::new(Outage::default());
/// let store = ProbedStore::new(Arc::new(MemoryStore::new()), Arc::clone(&outage));
/// let engine = Engine::builder(Arc::new(store)).build()?;
/// let key = engine.tenant("app", "acme").create_key(NewKey::new("k")).await?;
/// outage.0.store(true, Ordering::SeqCst);
/// let result = engine.validate(key.raw.expose(), &RequestContext::new()).await;
/// assert!(matches!(result, Err(ValidationError::Failed(_))));
/// # Ok::<(), keysmith_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct ProbedStore<P> {
    inner: Arc<dyn Store>,
    probe: Arc<P>,
}

impl<P: StoreProbe> ProbedStore<P> {
    /// `inner`, reporting to `probe`.
    #[must_use]
    pub fn new(inner: Arc<dyn Store>, probe: Arc<P>) -> Self {
        Self { inner, probe }
    }

    /// The probe.
    #[must_use]
    pub fn probe(&self) -> &Arc<P> {
        &self.probe
    }

    /// The wrapped store.
    #[must_use]
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }
}

impl<P: StoreProbe> ProbedStore<P> {
    /// Runs one call of `op`: the probe's `before` (whose error is the
    /// answer, where the call can fail), the call, the probe's `after`.
    pub(super) async fn probed<T: Answer>(&self, op: StoreOp, call: impl Future<Output = T>) -> T {
        if let Err(error) = self.probe.before(op).await
            && let Some(refused) = T::refused(error)
        {
            return refused;
        }
        let answer = call.await;
        self.probe.after(op).await;
        answer
    }
}

/// What a store call answers, and so what a probe's refusal of it is.
pub(super) trait Answer: Sized {
    /// The answer to a call refused with `error`; `None` if the call cannot fail.
    fn refused(error: Error) -> Option<Self>;
}

impl<T> Answer for Result<T> {
    fn refused(error: Error) -> Option<Self> {
        Some(Err(error))
    }
}

/// `close` cannot fail, so a refusing probe cannot stop it.
impl Answer for () {
    fn refused(_: Error) -> Option<Self> {
        None
    }
}
