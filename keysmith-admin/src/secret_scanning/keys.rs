//! GitHub's secret scanning public keys: fetched from a URL, cached, fetched
//! again for an unknown identifier at most once per interval and in any case
//! once the cached list is older than the refresh age, and used to verify a
//! request's signature.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keysmith_core::Clock;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;
use subtle::ConstantTimeEq as _;

/// The largest key document read (GitHub's is a few kilobytes).
const MAX_KEYS_DOCUMENT: usize = 256 * 1024;

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejection {
    /// Missing, malformed or wrong: 401.
    Invalid(&'static str),
    /// The keys could not be had, so nothing can be verified: 503.
    Unavailable,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// When the keys are fetched, and how long fetched keys are trusted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// A fetch that takes longer fails.
    pub(super) fetch_timeout: Duration,
    /// The shortest time between two fetches.
    pub(super) refetch_interval: Duration,
    /// Keys fetched longer ago are fetched again before they are used, so
    /// a key GitHub withdraws stops being trusted.
    pub(super) refresh_after: Duration,
    /// Keys fetched longer ago are not used at all, however the fetches
    /// fail: until one succeeds, every alert is 503.
    pub(super) max_age: Duration,
}

/// The keys last fetched, with their identifiers, and when.
#[derive(Default)]
struct Cached {
    keys: Vec<(String, VerifyingKey)>,
    fetched_at: Option<DateTime<Utc>>,
}

/// The key cache and how to refill it.
pub(super) struct PublicKeys {
    url: String,
    timing: Timing,
    clock: Arc<dyn Clock>,
    /// `None` when no TLS configuration could be made: every fetch fails.
    client: Option<HttpsClient>,
    keys: RwLock<Cached>,
    /// When the last fetch was tried; one fetch at a time.
    fetch: tokio::sync::Mutex<Option<DateTime<Utc>>>,
}

impl fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKeys").field("url", &self.url).field("timing", &self.timing).finish_non_exhaustive()
    }
}

/// Whether `age` has passed from `since` to `now` (a clock that went back
/// counts as no time passed).
fn older_than(since: DateTime<Utc>, now: DateTime<Utc>, age: Duration) -> bool {
    now.signed_duration_since(since).to_std().is_ok_and(|elapsed| elapsed >= age)
}

/// A client for `http://` and `https://` URLs: TLS by rustls with Mozilla's
/// roots (nothing depends on the host's certificates), with the process's
/// crypto provider when the application installed one, else ring (the one
/// this crate enables; taken explicitly, as rustls cannot choose when an
/// application enables several).
fn https_client() -> Option<HttpsClient> {
    let provider = rustls::crypto::CryptoProvider::get_default().cloned().unwrap_or_else(|| {
        // Deprecated only for lacking post-quantum key exchange, which a
        // fetch of public keys does not need.
        #[allow(deprecated)]
        Arc::new(rustls::crypto::ring::default_provider())
    });
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_webpki_roots(provider).ok()?;
    Some(Client::builder(TokioExecutor::new()).build(builder.https_or_http().enable_http1().build()))
}

/// GitHub's document: `{"public_keys": [{"key_identifier", "key", "is_current"}]}`.
#[derive(Deserialize)]
struct KeysDocument {
    public_keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    key_identifier: String,
    key: String,
}

impl PublicKeys {
    pub(super) fn new(url: String, timing: Timing, clock: Arc<dyn Clock>) -> Self {
        let client = https_client();
        if client.is_none() {
            tracing::error!(
                target: "keysmith::secret_scanning",
                "no TLS client could be configured; every alert will be answered 503",
            );
        }
        Self { url, timing, clock, client, keys: RwLock::default(), fetch: tokio::sync::Mutex::new(None) }
    }

    /// Verifies `signature` (base64 of a DER ECDSA P-256 SHA-256 signature)
    /// over `body` with the key named `identifier`.
    pub(super) async fn verify(&self, identifier: &str, signature: &str, body: &[u8]) -> Result<(), Rejection> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature.trim())
            .map_err(|_| Rejection::Invalid("the signature is not base64"))?;
        let signature = Signature::from_der(&der).map_err(|_| Rejection::Invalid("the signature is not DER ECDSA"))?;
        let key = self.key(identifier).await?;
        key.verify(body, &signature).map_err(|_| Rejection::Invalid("the signature does not match the body"))
    }

    /// The key named `identifier`: from the cache while it is younger than
    /// the refresh age, else fetched (at most once per refetch interval).
    /// When a fetch fails, the cached keys serve until their maximum age; a
    /// fetch that succeeds replaces them all, so a withdrawn key is unknown.
    async fn key(&self, identifier: &str) -> Result<VerifyingKey, Rejection> {
        if let Some(key) = self.cached(identifier, self.timing.refresh_after) {
            return Ok(key);
        }
        let mut last_fetch = self.fetch.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(key) = self.cached(identifier, self.timing.refresh_after) {
            return Ok(key);
        }
        let now = self.clock.now();
        let due = last_fetch.is_none_or(|at| older_than(at, now, self.timing.refetch_interval));
        let mut fetched = false;
        if due {
            *last_fetch = Some(now);
            match self.fetch_keys().await {
                Ok(keys) => {
                    *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Cached { keys, fetched_at: Some(now) };
                    fetched = true;
                }
                Err(reason) => tracing::warn!(
                    target: "keysmith::secret_scanning",
                    url = %self.url,
                    reason,
                    "GitHub's secret scanning keys could not be fetched; the cached ones serve until their maximum \
                     age, else answering 503",
                ),
            }
        }
        // Just fetched; or kept, as the list could not be had (or was tried
        // less than the refetch interval ago), until the maximum age.
        if let Some(key) = self.cached(identifier, self.timing.max_age) {
            return Ok(key);
        }
        if fetched {
            return Err(Rejection::Invalid("unknown public key identifier"));
        }
        if !due {
            // Not fetched again so soon: the identifier may be a key GitHub
            // published since, so the answer is "retry", never "forged".
            tracing::warn!(
                target: "keysmith::secret_scanning",
                key_identifier = %identifier,
                "unknown key identifier (or keys past their maximum age) and the keys were fetched less than the \
                 refetch interval ago; answering 503",
            );
        }
        Err(Rejection::Unavailable)
    }

    /// The cached key named `identifier`, compared in constant time, if the
    /// keys were fetched less than `age` ago.
    fn cached(&self, identifier: &str, age: Duration) -> Option<VerifyingKey> {
        let cached = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fetched_at = cached.fetched_at?;
        if older_than(fetched_at, self.clock.now(), age) {
            return None;
        }
        let mut found = None;
        for (name, key) in &cached.keys {
            if bool::from(name.as_bytes().ct_eq(identifier.as_bytes())) {
                found = Some(*key);
            }
        }
        found
    }

    /// Fetches and parses the key document; the reason when that fails.
    async fn fetch_keys(&self) -> Result<Vec<(String, VerifyingKey)>, String> {
        let fetch = async {
            let uri: hyper::Uri = self.url.parse().map_err(|error| format!("bad URL: {error}"))?;
            let request = hyper::Request::get(uri)
                .header(hyper::header::ACCEPT, "application/json")
                .header(hyper::header::USER_AGENT, concat!("keysmith/", env!("CARGO_PKG_VERSION")))
                .body(Empty::<Bytes>::new())
                .map_err(|error| error.to_string())?;
            let client = self.client.as_ref().ok_or("no TLS client")?;
            let response = client.request(request).await.map_err(|error| error.to_string())?;
            if !response.status().is_success() {
                return Err(format!("status {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_KEYS_DOCUMENT)
                .collect()
                .await
                .map_err(|error| error.to_string())?
                .to_bytes();
            Ok::<Bytes, String>(body)
        };
        let body = tokio::time::timeout(self.timing.fetch_timeout, fetch)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timing.fetch_timeout))??;
        let document: KeysDocument =
            serde_json::from_slice(&body).map_err(|error| format!("not a key document: {error}"))?;
        let keys: Vec<(String, VerifyingKey)> = document
            .public_keys
            .into_iter()
            .filter_map(|entry| match VerifyingKey::from_public_key_pem(&entry.key) {
                Ok(key) => Some((entry.key_identifier, key)),
                Err(_) => {
                    tracing::warn!(
                        target: "keysmith::secret_scanning",
                        key_identifier = %entry.key_identifier,
                        "a key that is not a P-256 public key in PEM was skipped",
                    );
                    None
                }
            })
            .collect();
        if keys.is_empty() {
            return Err("the document has no P-256 key".to_owned());
        }
        Ok(keys)
    }
}
