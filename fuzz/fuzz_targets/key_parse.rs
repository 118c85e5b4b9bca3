//! Key parsing on arbitrary input: never panics, accepts only short,
//! key-shaped text, and a real key with any one byte changed is refused.

#![no_main]

use std::sync::{Arc, LazyLock};

use keysmith_core::{Engine, MAX_RAW_KEY_LEN, MemoryStore, NewKey, ParsedKey};
use libfuzzer_sys::fuzz_target;

/// A key made by the engine.
static KEY: LazyLock<String> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    runtime.block_on(async {
        let engine = Engine::builder(Arc::new(MemoryStore::new())).build().expect("engine");
        let created = engine.tenant("fuzz", "fuzz").create_key(NewKey::new("fuzz")).await.expect("key");
        created.raw.expose().to_owned()
    })
});

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = std::str::from_utf8(data)
        && let Some(parsed) = ParsedKey::parse(raw)
    {
        assert!(raw.len() <= MAX_RAW_KEY_LEN, "{} bytes accepted", raw.len());
        assert!(raw.starts_with(&format!("{}_{}_", parsed.prefix, parsed.environment.as_str())));
        assert_eq!(parsed.raw, raw);
    }

    // The first two bytes pick a position and a replacement in a real key.
    let key = KEY.as_bytes();
    assert!(ParsedKey::parse(&KEY).is_some());
    if let [position, replacement, ..] = *data {
        let mut changed = key.to_vec();
        changed[usize::from(position) % key.len()] = replacement;
        if changed != key
            && let Ok(changed) = std::str::from_utf8(&changed)
        {
            assert!(ParsedKey::parse(changed).is_none(), "one changed byte passed the checksum");
        }
    }
});
