//! Key extraction from arbitrary headers: never panics; an extracted key
//! is short and taken from a key header; another scheme's `Authorization`
//! changes nothing, whatever it carries.

#![no_main]

use keysmith_core::http::{KeySources, MAX_KEY_HEADER_LEN};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 5] = ["authorization", "x-api-key", "Authorization", "X-API-KEY", "cookie"];

#[derive(Debug, Arbitrary)]
struct Header {
    name: u8,
    value: Vec<u8>,
}

fn is_bearer(value: &[u8]) -> bool {
    let value = value.trim_ascii_start();
    let end = value.iter().position(u8::is_ascii_whitespace).unwrap_or(value.len());
    value[..end].eq_ignore_ascii_case(b"bearer")
}

fuzz_target!(|headers: Vec<Header>| {
    let pairs: Vec<(&str, &[u8])> =
        headers.iter().map(|h| (NAMES[usize::from(h.name) % NAMES.len()], h.value.as_slice())).collect();
    let sources = KeySources::default();
    let got = sources.extract(&pairs[..]);

    if let Ok(key) = got {
        assert!(!key.is_empty() && key.len() <= MAX_KEY_HEADER_LEN);
        let carried = pairs.iter().any(|(name, value)| {
            !name.eq_ignore_ascii_case("cookie") && value.windows(key.len()).any(|w| w == key.as_bytes())
        });
        assert!(carried, "the key comes from no key header");
    }

    // Without the other schemes' values the answer is the same.
    let without_others: Vec<(&str, &[u8])> = pairs
        .iter()
        .copied()
        .filter(|(name, value)| !name.eq_ignore_ascii_case("authorization") || is_bearer(value))
        .collect();
    assert_eq!(sources.extract(&without_others[..]), got);
});
