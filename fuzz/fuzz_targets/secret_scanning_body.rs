//! The body of a GitHub secret scanning alert (parsed only once its
//! signature is verified, but GitHub's JSON is still input): whatever the
//! bytes, parsing never panics and its error names a position, never the
//! body; what parses goes through `Engine::report_leaks`, which answers one
//! finding per token, each named by a SHA-256 hex hash, never the token.
#![no_main]

use std::sync::{Arc, OnceLock};

use keysmith_admin::secret_scanning::parse_alerts;
use keysmith_core::leak::LeakReport;
use keysmith_core::{Engine, MemoryStore, NewKey};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let engine = runtime.block_on(async {
            let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
            engine.tenant("fuzz", "t").create_key(NewKey::new("k")).await.unwrap();
            engine
        });
        Fixture { runtime, engine }
    })
}

fuzz_target!(|data: &[u8]| {
    let alerts = match parse_alerts(data) {
        Ok(alerts) => alerts,
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with("the body is not a JSON array"), "{message}");
            return;
        }
    };
    let reports: Vec<LeakReport<'_>> =
        alerts.iter().map(|alert| LeakReport { token: &alert.token, source: &alert.source, url: &alert.url }).collect();
    let fixture = fixture();
    let findings = fixture.runtime.block_on(fixture.engine.report_leaks(&reports)).expect("a memory store never fails");
    assert_eq!(findings.len(), alerts.len());
    for (finding, alert) in findings.iter().zip(&alerts) {
        assert_eq!(finding.token_hash.len(), 64);
        assert!(finding.token_hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(alert.token.len() < 8 || !format!("{finding:?}").contains(&alert.token));
    }
});
