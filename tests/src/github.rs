//! GitHub's side of secret scanning, for tests and benchmarks: a public key
//! endpoint on 127.0.0.1 serving a P-256 key made here, and alerts signed
//! with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey as _, LineEnding};

/// The path the fake serves its keys at (GitHub's).
pub const KEYS_PATH: &str = "/meta/public_keys/secret_scanning";

/// A P-256 key pair made from the OS's randomness.
#[must_use]
pub fn signing_key() -> SigningKey {
    loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the OS has randomness");
        // Nearly every 32 bytes are a valid scalar; retry the rare others.
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            return key;
        }
    }
}

/// `Github-Public-Key-Signature` for `body` signed with `key`: base64 of the
/// DER ECDSA signature.
#[must_use]
pub fn sign_with(key: &SigningKey, body: &[u8]) -> String {
    let signature: Signature = key.sign(body);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

/// An alert body reporting `tokens`, each found in a file of a public
/// repository.
#[must_use]
pub fn alert_body(tokens: &[&str]) -> String {
    let alerts: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            serde_json::json!({
                "token": token,
                "type": "keysmith_api_key",
                "url": format!("https://github.com/octo/leaky/blob/main/config-{i}.env"),
                "source": "content",
            })
        })
        .collect();
    serde_json::Value::Array(alerts).to_string()
}

/// A public key endpoint on 127.0.0.1, like GitHub's
/// `meta/public_keys/secret_scanning`, serving one key made at start.
/// Dropping it stops the server.
#[derive(Debug)]
pub struct FakeGithub {
    addr: SocketAddr,
    identifier: String,
    key: SigningKey,
    fetches: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    document: Arc<RwLock<String>>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeGithub {
    /// Starts the endpoint on a free port of 127.0.0.1.
    ///
    /// # Panics
    /// When no port can be bound.
    pub async fn start() -> Self {
        let key = signing_key();
        let identifier = hex_id(&key);
        let document = Arc::new(RwLock::new(keys_document(&identifier, &key)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let (count, fail, served) = (Arc::clone(&fetches), Arc::clone(&failing), Arc::clone(&document));
        let app = Router::new().route(
            KEYS_PATH,
            get(move || {
                let (count, fail) = (Arc::clone(&count), Arc::clone(&fail));
                let document = served.read().expect("not poisoned").clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    if fail.load(Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE.into_response();
                    }
                    let response: Response = ([("content-type", "application/json")], document).into_response();
                    response
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, identifier, key, fetches, failing, document, server }
    }

    /// The URL of the key document.
    #[must_use]
    pub fn keys_url(&self) -> String {
        format!("http://{}{KEYS_PATH}", self.addr)
    }

    /// The identifier of the key it serves.
    #[must_use]
    pub fn identifier(&self) -> &str {
        &self.identifier
    }

    /// `Github-Public-Key-Signature` for `body`, by the served key.
    #[must_use]
    pub fn sign(&self, body: &[u8]) -> String {
        sign_with(&self.key, body)
    }

    /// How many times the key document was fetched.
    #[must_use]
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// While `true`, the endpoint answers 503.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Withdraws the key [`sign`](Self::sign) signs with: the endpoint
    /// serves another key instead, as GitHub does when it retires one.
    ///
    /// # Panics
    /// When the document's lock was poisoned.
    pub fn withdraw_key(&self) {
        let successor = signing_key();
        *self.document.write().expect("not poisoned") = keys_document(&hex_id(&successor), &successor);
    }
}

/// GitHub's key document serving `key` as `identifier`, and a retired entry
/// that is not a key.
fn keys_document(identifier: &str, key: &SigningKey) -> String {
    let pem = key.verifying_key().to_public_key_pem(LineEnding::LF).expect("a P-256 key has a PEM form");
    serde_json::json!({
        "public_keys": [
            // A key that is not P-256 PEM is skipped, not fatal.
            {"key_identifier": "retired", "key": "not a key", "is_current": false},
            {"key_identifier": identifier, "key": pem, "is_current": true},
        ]
    })
    .to_string()
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An identifier derived from the key, as GitHub's are (hex of a digest).
fn hex_id(key: &SigningKey) -> String {
    let point = key.verifying_key().to_encoded_point(true);
    point.as_bytes().iter().take(16).map(|b| format!("{b:02x}")).collect()
}
