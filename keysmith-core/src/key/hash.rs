//! Hashing of raw keys: only the hash is stored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Turns a raw key into the value the store keeps and looks up.
///
/// The default is [`Sha256Hasher`]. A keyed hash (HMAC with a server-side
/// pepper) is a drop-in replacement; changing the hasher makes every existing
/// key unknown.
pub trait Hasher: Send + Sync + fmt::Debug + 'static {
    /// Hashes the whole raw key.
    fn hash(&self, raw_key: &str) -> KeyHash;
}

/// SHA-256 of the raw key.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sha256Hasher;

impl Hasher for Sha256Hasher {
    fn hash(&self, raw_key: &str) -> KeyHash {
        KeyHash(Sha256::digest(raw_key.as_bytes()).into())
    }
}

/// A 32-byte key hash; its text form is 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

/// Feeds a map's hasher the digest as two integers: it is already uniformly
/// random, and validation looks it up on every request. (Equal hashes feed
/// equal integers, so this agrees with `Eq`.)
impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (low, high) = self.0.split_at(16);
        state.write_u128(u128::from_le_bytes(low.try_into().unwrap_or_default()));
        state.write_u128(u128::from_le_bytes(high.try_into().unwrap_or_default()));
    }
}

impl KeyHash {
    /// The hash from its bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as stored by SQL backends.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Compares in constant time. Use this, not `==`, whenever one side came
    /// from a client.
    #[must_use]
    pub fn ct_eq(&self, other: &Self) -> bool {
        // The four words' differences folded into one without branching,
        // and that one compared in constant time: as constant-time as
        // comparing 32 bytes, with one optimisation barrier instead of 32.
        let (ours, theirs) = (Self::words(&self.0), Self::words(&other.0));
        let difference = ours.iter().zip(&theirs).fold(0, |difference, (a, b)| difference | (a ^ b));
        difference.ct_eq(&0).into()
    }

    fn words(bytes: &[u8; 32]) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(chunk);
            *word = u64::from_ne_bytes(buf);
        }
        words
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not the secret, but a short form is all a reader needs.
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// The text is not 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a key hash is 64 hex characters")]
pub struct HashParseError;

impl FromStr for KeyHash {
    type Err = HashParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| HashParseError)?;
        Ok(Self(bytes))
    }
}

impl Serialize for KeyHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_known_vector() {
        let hash = Sha256Hasher.hash("abc");
        assert_eq!(hash.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(hash.to_hex().parse::<KeyHash>().unwrap(), hash);
    }

    #[test]
    fn constant_time_comparison_agrees_with_equality() {
        let a = Sha256Hasher.hash("a");
        let b = Sha256Hasher.hash("b");
        assert!(a.ct_eq(&a));
        assert!(!a.ct_eq(&b));
    }

    #[test]
    fn bytes_round_trip_and_debug_shows_a_short_form() {
        let hash = Sha256Hasher.hash("abc");
        assert_eq!(hash.as_bytes()[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_eq!(KeyHash::from_bytes(*hash.as_bytes()), hash);
        assert_eq!(format!("{hash:?}"), "KeyHash(ba7816bf…)");
    }

    #[test]
    fn hex_parsing_rejects_bad_input() {
        assert!("abc".parse::<KeyHash>().is_err());
        assert!("z".repeat(64).parse::<KeyHash>().is_err());
    }
}
