//! The raw key format: `{prefix}_{env}_{random}{check}`.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use super::Environment;
use crate::{Error, Result};

/// No key is longer than this, of Keysmith's format (at most 60 bytes) or a
/// legacy one; longer input is malformed before any other work is done.
pub const MAX_RAW_KEY_LEN: usize = 128;

const RANDOM_LEN: usize = 32;
const CHECK_LEN: usize = 6;
const BODY_LEN: usize = RANDOM_LEN + CHECK_LEN;
const MAX_PREFIX_LEN: usize = 16;
/// The shortest and longest keys of this format: `a_dev_` and a 16-character
/// prefix with `_live_` or `_test_`, each followed by the 38-byte body. The
/// parser's first check is exact, so that it rejects no key it should parse
/// and leaves no length to the later checks.
const MIN_KEY_LEN: usize = 44;
const MAX_KEY_LEN: usize = 60;
/// Random bytes at or above this (4 × 62) are drawn again, so that every
/// base62 character is equally likely.
const UNBIASED_BYTES: u8 = 248;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A raw API key: the secret handed to the client once.
///
/// `Debug` and `Display` are redacted and the memory is zeroized on drop;
/// [`RawKey::expose`] is the one way to read it.
pub struct RawKey(SecretString);

impl RawKey {
    /// Generates a new key with `random` from the OS CSPRNG.
    pub(crate) fn generate(prefix: &str, environment: Environment) -> Result<Self> {
        validate_prefix(prefix)?;
        let env = environment.as_str();
        let mut key = String::with_capacity(MAX_KEY_LEN);
        key.push_str(prefix);
        key.push('_');
        key.push_str(env);
        key.push('_');
        fill_base62(&mut key, RANDOM_LEN)?;
        let crc = crc32fast::hash(key.as_bytes());
        push_check(&mut key, crc);
        Ok(Self(SecretString::from(key)))
    }

    /// A new key that no store holds, for tests and benchmarks that present
    /// well-formed unknown keys (each costs what a real miss costs: a hash
    /// and a lookup).
    ///
    /// # Errors
    /// As key creation: an invalid prefix, or the OS random generator failed.
    #[cfg(feature = "testing")]
    pub fn unissued(prefix: &str, environment: Environment) -> Result<Self> {
        Self::generate(prefix, environment)
    }

    /// The key itself. Show it to its owner once; never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The displayable hint: `sk_live_…` followed by the last four characters.
    #[must_use]
    pub fn hint(&self) -> String {
        let key = self.expose();
        let body = key.rfind('_').map_or(0, |i| i + 1);
        format!("{}…{}", &key[..body], &key[key.len() - 4..])
    }
}

impl fmt::Debug for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawKey([REDACTED])")
    }
}

impl fmt::Display for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// The parts of a well-formed raw key. Borrowed from the input; not secret
/// beyond the input itself, so it has no `Debug`.
#[allow(missing_debug_implementations)]
pub struct ParsedKey<'a> {
    /// The key's prefix.
    pub prefix: &'a str,
    /// The environment written into the key.
    pub environment: Environment,
    /// The whole key, to be hashed.
    pub raw: &'a str,
}

impl<'a> ParsedKey<'a> {
    /// Checks shape, environment and checksum without any I/O. `None` means
    /// malformed; why is not said, since nothing about a bad secret is logged.
    #[must_use]
    pub fn parse(raw: &'a str) -> Option<Self> {
        // Runs on every request, before anything else: byte positions rather
        // than `split_once`, and no error values built for a bad key. The
        // body is the last 38 bytes; the environment sits between the first
        // `_` and the `_` before the body.
        if raw.len() > MAX_KEY_LEN || raw.len() < MIN_KEY_LEN {
            return None;
        }
        let bytes = raw.as_bytes();
        let body_start = bytes.len() - BODY_LEN;
        // A fold without early exit, which the compiler vectorizes: every
        // presented key runs this, and nearly all of them pass it.
        let body_alphanumeric = bytes[body_start..].iter().fold(true, |ok, b| ok & b.is_ascii_alphanumeric());
        if bytes[body_start - 1] != b'_' || !body_alphanumeric {
            return None;
        }
        let prefix_end = bytes[..body_start - 1].iter().position(|b| *b == b'_')?;
        let prefix = &raw[..prefix_end];
        let prefix_valid = bytes[..prefix_end].iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN || !prefix_valid {
            return None;
        }
        let environment = match &bytes[prefix_end + 1..body_start - 1] {
            b"live" => Environment::Live,
            b"test" => Environment::Test,
            b"dev" => Environment::Dev,
            _ => return None,
        };
        let (signed, check) = bytes.split_at(bytes.len() - CHECK_LEN);
        (check_value(check) == u64::from(crc32fast::hash(signed))).then_some(Self { prefix, environment, raw })
    }
}

/// Checks that a key prefix is 1–16 characters of `[a-z0-9]`.
///
/// # Errors
/// [`Error::InvalidInput`] naming the rule that was broken.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let valid_chars = prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN || !valid_chars {
        return Err(Error::invalid("prefix", "must be 1 to 16 characters of a-z and 0-9"));
    }
    Ok(())
}

/// Appends `len` uniformly random base62 characters from the OS CSPRNG.
fn fill_base62(out: &mut String, len: usize) -> Result<()> {
    let mut pool = [0u8; 64];
    let mut produced = 0;
    while produced < len {
        getrandom::fill(&mut pool).map_err(|e| Error::store(format!("OS random generator failed: {e}")))?;
        for character in pool.iter().filter_map(|byte| base62_char(*byte)) {
            if produced == len {
                break;
            }
            out.push(character);
            produced += 1;
        }
    }
    pool.fill(0);
    Ok(())
}

/// The base62 character a random byte stands for, or `None` for the bytes
/// that would make some characters likelier than others.
fn base62_char(byte: u8) -> Option<char> {
    (byte < UNBIASED_BYTES).then(|| char::from(BASE62[usize::from(byte % 62)]))
}

/// The CRC32 as six zero-padded base62 digits (62^6 > 2^32).
fn check_digits(mut crc: u32) -> [u8; CHECK_LEN] {
    let mut digits = [b'0'; CHECK_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    digits
}

/// Each base62 character's digit value, by byte (0 for the other bytes,
/// which the body check refuses before this is read).
const BASE62_VALUES: [u8; 256] = {
    let mut values = [0u8; 256];
    let mut digit = 0;
    while digit < BASE62.len() {
        values[BASE62[digit] as usize] = digit as u8;
        digit += 1;
    }
    values
};

/// The number six base62 check digits write (the inverse of
/// [`check_digits`] for alphanumeric digits): comparing it with the CRC is
/// the same test as comparing the digits, without dividing.
fn check_value(check: &[u8]) -> u64 {
    check.iter().fold(0, |value, digit| value * 62 + u64::from(BASE62_VALUES[usize::from(*digit)]))
}

/// Appends the check digits of `crc`.
fn push_check(out: &mut String, crc: u32) {
    out.extend(check_digits(crc).iter().map(|d| char::from(*d)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(prefix: &str, env: Environment) -> RawKey {
        RawKey::generate(prefix, env).unwrap()
    }

    #[test]
    fn generated_keys_have_the_documented_shape_and_parse() {
        let raw = key("sk", Environment::Live);
        let s = raw.expose();
        assert!(s.starts_with("sk_live_"));
        assert_eq!(s.len(), "sk_live_".len() + 38);
        let parsed = ParsedKey::parse(s).expect("well formed");
        assert_eq!(parsed.prefix, "sk");
        assert_eq!(parsed.environment, Environment::Live);
        let custom = key("acme42", Environment::Dev);
        assert_eq!(ParsedKey::parse(custom.expose()).unwrap().environment, Environment::Dev);
    }

    #[test]
    fn generated_keys_differ() {
        let a = key("sk", Environment::Test);
        let b = key("sk", Environment::Test);
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn one_changed_character_breaks_the_checksum() {
        let raw = key("sk", Environment::Live);
        let s = raw.expose();
        let i = "sk_live_".len() + 5;
        let replacement = if &s[i..=i] == "a" { "b" } else { "a" };
        let tampered = format!("{}{replacement}{}", &s[..i], &s[i + 1..]);
        assert!(ParsedKey::parse(&tampered).is_none());
    }

    #[test]
    fn malformed_shapes_are_rejected() {
        let good = key("sk", Environment::Live);
        let s = good.expose();
        let body = &s["sk_live_".len()..];
        let cases = [
            String::new(),
            "sk".to_owned(),
            "sk_live_".to_owned(),
            format!("sk_prod_{body}"),
            format!("SK_live_{body}"),
            format!("sk_live_{}", &body[1..]),
            format!("{s}x"),
            format!("sk_live_{}é", &body[1..]),
            "x".repeat(10 * 1024),
            format!("{}_live_{body}", "a".repeat(17)),
            format!("_live_{body}"),
        ];
        for case in &cases {
            assert!(ParsedKey::parse(case).is_none(), "accepted {case:?}");
        }
    }

    /// `unsigned` with its correct check digits appended: a key that breaks
    /// one shape rule but not the checksum, so each rule is pinned on its own.
    fn signed(unsigned: &str) -> String {
        let mut key = unsigned.to_owned();
        push_check(&mut key, crc32fast::hash(unsigned.as_bytes()));
        key
    }

    const RANDOM: &str = "0123456789abcdefghijABCDEFGHIJxy";

    #[test]
    fn every_environment_parses_with_a_valid_checksum() {
        for (env, expected) in [("live", Environment::Live), ("test", Environment::Test), ("dev", Environment::Dev)] {
            let raw = signed(&format!("sk_{env}_{RANDOM}"));
            assert_eq!(ParsedKey::parse(&raw).map(|parsed| parsed.environment), Some(expected), "{env}");
        }
        for env in ["prod", "Live", "tes", "", "live_live"] {
            assert!(ParsedKey::parse(&signed(&format!("sk_{env}_{RANDOM}"))).is_none(), "accepted environment {env:?}");
        }
    }

    #[test]
    fn prefix_rules_hold_even_when_the_checksum_is_valid() {
        let longest = "a1b2c3d4e5f6g7h8";
        let parsed = ParsedKey::parse(&signed(&format!("{longest}_live_{RANDOM}"))).map(|parsed| parsed.prefix.len());
        assert_eq!(parsed, Some(16), "a 16-character prefix is valid");
        for prefix in ["", "a1b2c3d4e5f6g7h8i", "Sk", "sK", "s-k", "s.k", "ß"] {
            let raw = signed(&format!("{prefix}_live_{RANDOM}"));
            assert!(ParsedKey::parse(&raw).is_none(), "accepted prefix {prefix:?}");
        }
    }

    #[test]
    fn body_rules_hold_even_when_the_checksum_is_valid() {
        // One character of the random part that is not alphanumeric, in
        // each position class (first, middle, last).
        for (i, bad) in [(0, '-'), (15, '_'), (31, '+'), (10, ' ')] {
            let mut random: Vec<char> = RANDOM.chars().collect();
            random[i] = bad;
            let random: String = random.into_iter().collect();
            let raw = signed(&format!("sk_live_{random}"));
            assert!(ParsedKey::parse(&raw).is_none(), "accepted {bad:?} at {i}");
        }
        // Two of them (a rule that counted bad characters rather than
        // refusing any would let an even number through).
        let random = format!("-{}+", &RANDOM[1..RANDOM_LEN - 1]);
        assert!(ParsedKey::parse(&signed(&format!("sk_live_{random}"))).is_none());
        // A random part one character short or long shifts the separator.
        assert!(ParsedKey::parse(&signed(&format!("sk_live_{}", &RANDOM[1..]))).is_none());
        assert!(ParsedKey::parse(&signed(&format!("sk_live_{RANDOM}x"))).is_none());
        // No separator before the body.
        assert!(ParsedKey::parse(&signed(&format!("sk_livex{RANDOM}"))).is_none());
        assert!(ParsedKey::parse(&signed(&format!("sklive{RANDOM}"))).is_none());
    }

    #[test]
    fn a_key_of_the_longest_valid_shape_parses_and_any_longer_input_does_not() {
        for env in ["live", "test"] {
            let raw = signed(&format!("a1b2c3d4e5f6g7h8_{env}_{RANDOM}"));
            assert_eq!(raw.len(), MAX_KEY_LEN);
            assert!(ParsedKey::parse(&raw).is_some(), "{raw}");
        }
        let padded = signed(&format!("{}_test_{RANDOM}", "a".repeat(MAX_RAW_KEY_LEN)));
        assert!(ParsedKey::parse(&padded).is_none());
    }

    #[test]
    fn a_key_of_the_shortest_valid_shape_parses() {
        let raw = signed(&format!("a_dev_{RANDOM}"));
        assert_eq!(raw.len(), MIN_KEY_LEN);
        assert_eq!(ParsedKey::parse(&raw).map(|parsed| parsed.prefix), Some("a"));
    }

    #[test]
    fn every_cut_of_a_key_is_refused_without_panicking() {
        // Every length a truncated or padded key can have, the short ones
        // included (the parser indexes from the end before anything else).
        let raw = signed(&format!("a1b2c3d4e5f6g7h8_live_{RANDOM}"));
        for start in 1..raw.len() {
            assert!(ParsedKey::parse(&raw[start..]).is_none(), "accepted {:?}", &raw[start..]);
        }
        for end in 0..raw.len() {
            assert!(ParsedKey::parse(&raw[..end]).is_none(), "accepted {:?}", &raw[..end]);
        }
        for extra in 1..=MAX_RAW_KEY_LEN {
            let padded = format!("{}{raw}", "a".repeat(extra));
            assert!(ParsedKey::parse(&padded).is_none(), "accepted {} bytes", padded.len());
        }
    }

    #[test]
    fn a_key_with_one_separator_only_is_refused() {
        for unsigned in [format!("sklive_{RANDOM}"), format!("sk_live{RANDOM}"), format!("s_{RANDOM}")] {
            assert!(ParsedKey::parse(&signed(&unsigned)).is_none(), "accepted {unsigned:?}");
        }
    }

    #[test]
    fn keys_issued_earlier_still_parse() {
        // Written down once: a change to the checksum or its digits would
        // make every key already handed out malformed.
        let issued = "sk_live_0123456789abcdefghijABCDEFGHIJxy195Mcx";
        assert_eq!(signed("sk_live_0123456789abcdefghijABCDEFGHIJxy"), issued);
        assert!(ParsedKey::parse(issued).is_some());
        assert!(ParsedKey::parse("a_dev_0123456789abcdefghijABCDEFGHIJxy0bn6cY").is_some());
        assert!(ParsedKey::parse("sk_live_0123456789abcdefghijABCDEFGHIJxy195Mcy").is_none());
    }

    #[test]
    fn random_bytes_map_to_base62_without_bias() {
        for (byte, expected) in [(0, '0'), (9, '9'), (10, 'A'), (36, 'a'), (61, 'z'), (62, '0'), (130, '6'), (247, 'z')]
        {
            assert_eq!(base62_char(byte), Some(expected), "{byte}");
        }
        for byte in [248, 255] {
            assert_eq!(base62_char(byte), None, "{byte} would favour the first characters");
        }
    }

    #[test]
    fn generated_keys_use_the_whole_alphabet() {
        let mut seen = std::collections::BTreeSet::new();
        // 64 keys draw 2 048 characters: every one of the 62 appears unless
        // the generator is broken (the chance that a fair one misses one
        // is below 10^-12).
        for _ in 0..64 {
            let raw = key("sk", Environment::Test);
            seen.extend(raw.expose()["sk_test_".len().."sk_test_".len() + RANDOM_LEN].chars());
        }
        assert_eq!(seen.len(), 62, "{seen:?}");
    }

    #[test]
    fn hint_shows_prefix_environment_and_last_four() {
        let raw = key("sk", Environment::Live);
        let hint = raw.hint();
        assert!(hint.starts_with("sk_live_…"));
        assert!(raw.expose().ends_with(&hint["sk_live_…".len()..]));
        assert_eq!(hint.chars().count(), "sk_live_…".chars().count() + 4);
    }

    #[test]
    fn raw_key_never_prints() {
        let raw = key("sk", Environment::Live);
        let body = &raw.expose()["sk_live_".len()..];
        for printed in [format!("{raw:?}"), format!("{raw}"), format!("{raw:#?}")] {
            assert!(!printed.contains(body), "{printed}");
            assert!(printed.contains("REDACTED"));
        }
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("sk").is_ok());
        assert!(validate_prefix("a1b2c3d4e5f6g7h8").is_ok());
        for bad in ["", "Sk", "s_k", "a1b2c3d4e5f6g7h8i", "sk-", "ßk"] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_values_read_back_the_check_digits() {
        for crc in [0, 1, 61, 62, 3_843, 3_844, 0x8000_0000, u32::MAX] {
            assert_eq!(check_value(&check_digits(crc)), u64::from(crc), "{crc}");
        }
        // Digits past u32::MAX are no CRC: they never match one.
        assert_eq!(check_value(b"zzzzzz"), 62u64.pow(6) - 1);
    }

    #[test]
    fn check_digits_are_zero_padded() {
        let digits = [0, 1, 61, 62, u32::MAX].map(|crc| String::from_utf8(check_digits(crc).to_vec()).unwrap());
        assert_eq!(digits, ["000000", "000001", "00000z", "000010", "4gfFC3"]);
    }
}
