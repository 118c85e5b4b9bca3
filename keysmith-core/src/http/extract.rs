//! Where a request carries its key, and the rules for reading it.

use super::HeaderLookup;
use super::headers::names;
use crate::Refusal;

/// Header values longer than this are refused as malformed before any other
/// work (a raw key is at most [`MAX_RAW_KEY_LEN`](crate::MAX_RAW_KEY_LEN)
/// bytes; the bound leaves room for the scheme and whitespace).
pub const MAX_KEY_HEADER_LEN: usize = 1024;

/// The authorization scheme whose credential is a key.
const BEARER: &str = "bearer";

/// One place a key may be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// `<header>: Bearer <key>` (the scheme matched case-insensitively);
    /// values with another scheme (`Basic …`, `Negotiate …`) are not keys
    /// and are ignored, however long.
    Bearer {
        /// The header, lowercase (`authorization`).
        header: String,
    },
    /// `<header>: <key>`, the whole value.
    Header {
        /// The header, lowercase (`x-api-key`).
        name: String,
    },
}

impl KeySource {
    fn header(&self) -> &str {
        match self {
            Self::Bearer { header } => header,
            Self::Header { name } => name,
        }
    }

    /// The key in one header value: `Ok(None)` if the value is not meant
    /// for us (another authorization scheme, whatever its length or bytes:
    /// the scheme is looked at before anything else).
    fn read<'h>(&self, value: &'h [u8]) -> Result<Option<&'h str>, Refusal> {
        if let Self::Bearer { .. } = self {
            let value = value.trim_ascii_start();
            let scheme_end = value.iter().position(u8::is_ascii_whitespace).unwrap_or(value.len());
            if !value[..scheme_end].eq_ignore_ascii_case(BEARER.as_bytes()) {
                return Ok(None);
            }
        }
        if value.len() > MAX_KEY_HEADER_LEN {
            return Err(Refusal::Malformed);
        }
        let value = trim(std::str::from_utf8(value).map_err(|_| Refusal::Malformed)?);
        let key = match self {
            Self::Header { .. } => value,
            // The scheme is `bearer`, checked above; the key is what follows.
            Self::Bearer { .. } => trim(&value[BEARER.len()..]),
        };
        if key.is_empty() {
            return Err(Refusal::Malformed);
        }
        Ok(Some(key))
    }
}

/// `text.trim()`, answered without decoding characters from either end
/// when both ends are visible ASCII, which no whitespace is (a key sent as
/// it should be).
fn trim(text: &str) -> &str {
    match (text.as_bytes().first(), text.as_bytes().last()) {
        (Some(first), Some(last)) if first.is_ascii_graphic() && last.is_ascii_graphic() => text,
        _ => text.trim(),
    }
}

/// The headers a key is read from, in order. The default is
/// `Authorization: Bearer <key>` and `X-API-Key: <key>`.
///
/// No key anywhere is [`Refusal::MissingKey`]; two *different* keys is
/// [`Refusal::AmbiguousKey`] (the same key twice is fine); a value longer
/// than [`MAX_KEY_HEADER_LEN`], not UTF-8, or empty is
/// [`Refusal::Malformed`]. An `Authorization` value with another scheme
/// than `Bearer` is someone else's credential and is skipped before any of
/// these checks, so a long `Negotiate` token next to an `X-API-Key` does
/// not make the request malformed.
///
/// ```
/// use keysmith_core::Refusal;
/// use keysmith_core::http::KeySources;
///
/// let sources = KeySources::default();
/// let headers = [("authorization", "bearer sk_live_abc")];
/// assert_eq!(sources.extract(&headers[..]), Ok("sk_live_abc"));
///
/// let two = [("authorization", "Bearer sk_live_abc"), ("x-api-key", "sk_live_xyz")];
/// assert_eq!(sources.extract(&two[..]), Err(Refusal::AmbiguousKey));
///
/// // Only a custom header:
/// let custom = KeySources::empty().with_header("X-Token");
/// assert_eq!(custom.extract(&headers[..]), Err(Refusal::MissingKey));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySources {
    sources: Vec<KeySource>,
    /// Each source's header, when it is a per-request name (the default
    /// ones): found by its place, not its text.
    known: Vec<Option<names::Known>>,
}

impl Default for KeySources {
    fn default() -> Self {
        Self::empty().with_bearer().with_header(names::X_API_KEY)
    }
}

impl KeySources {
    /// No source at all: add some with the `with_*` methods.
    #[must_use]
    pub fn empty() -> Self {
        Self { sources: Vec::new(), known: Vec::new() }
    }

    /// Also reads `Authorization: Bearer <key>`.
    #[must_use]
    pub fn with_bearer(self) -> Self {
        self.with_bearer_in(names::AUTHORIZATION)
    }

    /// Also reads `<header>: Bearer <key>` (`Proxy-Authorization`, say).
    #[must_use]
    pub fn with_bearer_in(self, header: impl AsRef<str>) -> Self {
        self.with(KeySource::Bearer { header: header.as_ref().to_ascii_lowercase() })
    }

    /// Also reads the whole value of `header` as the key.
    #[must_use]
    pub fn with_header(self, header: impl AsRef<str>) -> Self {
        self.with(KeySource::Header { name: header.as_ref().to_ascii_lowercase() })
    }

    fn with(mut self, source: KeySource) -> Self {
        self.known.push(names::Known::of(source.header()));
        self.sources.push(source);
        self
    }

    /// The sources, in the order they are read.
    #[must_use]
    pub fn sources(&self) -> &[KeySource] {
        &self.sources
    }

    /// The key the request carries.
    ///
    /// # Errors
    /// [`Refusal::MissingKey`], [`Refusal::AmbiguousKey`] or
    /// [`Refusal::Malformed`], as described on the type.
    pub fn extract<'h, H: HeaderLookup + ?Sized>(&self, headers: &'h H) -> Result<&'h str, Refusal> {
        let mut found: Option<&'h str> = None;
        for (source, known) in self.sources.iter().zip(&self.known) {
            match known {
                Some(known) => source.read_all(headers.known_values(*known), &mut found)?,
                None => source.read_all(headers.header_values(source.header()), &mut found)?,
            }
        }
        found.ok_or(Refusal::MissingKey)
    }
}

impl KeySource {
    /// Reads every value of this source's header into `found`, the key
    /// read so far.
    fn read_all<'h>(&self, values: impl Iterator<Item = &'h [u8]>, found: &mut Option<&'h str>) -> Result<(), Refusal> {
        for value in values {
            let Some(key) = self.read(value)? else { continue };
            match found {
                None => *found = Some(key),
                Some(previous) if *previous == key => {}
                Some(_) => return Err(Refusal::AmbiguousKey),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(headers: &[(&str, &[u8])]) -> Result<String, Refusal> {
        KeySources::default().extract(headers).map(str::to_owned)
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_whitespace_tolerant() {
        for value in ["Bearer k1", "bearer k1", "BEARER k1", "  Bearer \t k1  "] {
            assert_eq!(extract(&[("Authorization", value.as_bytes())]), Ok("k1".to_owned()), "{value:?}");
        }
    }

    #[test]
    fn keys_are_trimmed_of_unicode_whitespace_as_str_trim_does() {
        for text in ["k1", " k1", "k1 ", "\u{a0}k1\u{3000}", "\u{b}k1\t", "k\u{e9}", "\u{e9}", "", "  ", "a b"] {
            assert_eq!(trim(text), text.trim(), "{text:?}");
        }
        assert_eq!(extract(&[("X-API-Key", "\u{a0}k1\u{2003}".as_bytes())]), Ok("k1".to_owned()));
    }

    #[test]
    fn x_api_key_is_read_whole() {
        assert_eq!(extract(&[("X-API-Key", b" k1 ")]), Ok("k1".to_owned()));
    }

    #[test]
    fn no_key_is_missing_and_other_schemes_are_ignored() {
        assert_eq!(extract(&[]), Err(Refusal::MissingKey));
        assert_eq!(extract(&[("authorization", b"Basic dXNlcjpwYXNz")]), Err(Refusal::MissingKey));
        assert_eq!(extract(&[("authorization", b"Bearerk1")]), Err(Refusal::MissingKey));
        assert_eq!(extract(&[("authorization", b"Basic x"), ("x-api-key", b"k1")]), Ok("k1".to_owned()));
    }

    #[test]
    fn another_schemes_credential_is_ignored_whatever_its_length_or_bytes() {
        let mut negotiate = b"Negotiate ".to_vec();
        negotiate.extend(vec![b'Y'; 8 * MAX_KEY_HEADER_LEN]);
        assert_eq!(extract(&[("authorization", &negotiate), ("x-api-key", b"k1")]), Ok("k1".to_owned()));
        assert_eq!(extract(&[("authorization", &negotiate)]), Err(Refusal::MissingKey));
        let binary: &[u8] = b"Basic \xff\xfe";
        assert_eq!(extract(&[("authorization", binary), ("x-api-key", b"k1")]), Ok("k1".to_owned()));
        // An overlong Bearer value is still malformed.
        let mut bearer = b"  bearer ".to_vec();
        bearer.extend(vec![b'a'; MAX_KEY_HEADER_LEN]);
        assert_eq!(extract(&[("authorization", &bearer), ("x-api-key", b"k1")]), Err(Refusal::Malformed));
    }

    #[test]
    fn two_different_keys_are_ambiguous_and_the_same_key_twice_is_fine() {
        assert_eq!(extract(&[("authorization", b"Bearer k1"), ("x-api-key", b"k2")]), Err(Refusal::AmbiguousKey));
        assert_eq!(extract(&[("x-api-key", b"k1"), ("x-api-key", b"k2")]), Err(Refusal::AmbiguousKey));
        assert_eq!(extract(&[("authorization", b"Bearer k1"), ("x-api-key", b"k1")]), Ok("k1".to_owned()));
    }

    #[test]
    fn oversized_empty_or_non_utf8_values_are_malformed() {
        let long = vec![b'a'; MAX_KEY_HEADER_LEN + 1];
        assert_eq!(extract(&[("x-api-key", &long)]), Err(Refusal::Malformed));
        let mut bearer = b"Bearer ".to_vec();
        bearer.extend(vec![b'a'; MAX_KEY_HEADER_LEN]);
        assert_eq!(extract(&[("authorization", &bearer)]), Err(Refusal::Malformed));
        assert_eq!(extract(&[("x-api-key", b"sk_\xff\xfe")]), Err(Refusal::Malformed));
        assert_eq!(extract(&[("x-api-key", b"  ")]), Err(Refusal::Malformed));
        assert_eq!(extract(&[("authorization", b"Bearer   ")]), Err(Refusal::Malformed));
        assert_eq!(extract(&[("authorization", b"Bearer")]), Err(Refusal::Malformed));
    }

    #[test]
    fn a_value_of_exactly_the_longest_length_is_read() {
        let longest = vec![b'a'; MAX_KEY_HEADER_LEN];
        assert_eq!(extract(&[("x-api-key", &longest)]).map(|key| key.len()), Ok(MAX_KEY_HEADER_LEN));
        let mut bearer = b"Bearer ".to_vec();
        bearer.extend(vec![b'a'; MAX_KEY_HEADER_LEN - bearer.len()]);
        assert_eq!(extract(&[("authorization", &bearer)]).map(|key| key.len()), Ok(MAX_KEY_HEADER_LEN - 7));
    }

    #[test]
    fn the_default_sources_are_bearer_then_x_api_key() {
        let expected = [
            KeySource::Bearer { header: "authorization".to_owned() },
            KeySource::Header { name: "x-api-key".to_owned() },
        ];
        assert_eq!(KeySources::default().sources(), expected);
        assert_eq!(
            KeySources::empty().with_bearer_in("Proxy-Authorization").sources()[0].header(),
            "proxy-authorization"
        );
    }

    #[test]
    fn sources_are_configurable() {
        let sources = KeySources::empty().with_header("X-Token").with_bearer_in("Proxy-Authorization");
        let headers: &[(&str, &str)] = &[("authorization", "Bearer k1"), ("x-api-key", "k2")];
        assert_eq!(sources.extract(headers), Err(Refusal::MissingKey));
        let headers: &[(&str, &str)] = &[("x-token", "k3")];
        assert_eq!(sources.extract(headers), Ok("k3"));
        let headers: &[(&str, &str)] = &[("proxy-authorization", "Bearer k4")];
        assert_eq!(sources.extract(headers), Ok("k4"));
        assert_eq!(KeySources::empty().extract(headers), Err(Refusal::MissingKey));
    }
}
