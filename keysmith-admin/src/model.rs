//! Values shared by several resources: pagination and ids given as text.
//! The string enums (`KeyState`, `Environment`, `RotationReason`, `Period`,
//! `LimitBy`) are keysmith-core's own, with its `utoipa` feature.

use crate::error::{Error, Result};
use keysmith_core::store::Page;

/// The default page size of listings.
pub(crate) const DEFAULT_LIMIT: u32 = 100;

/// `limit` (1 to [`Page::MAX_LIMIT`], default 100) and `offset` (default 0)
/// as a page.
pub(crate) fn page(limit: Option<u32>, offset: Option<u64>) -> Result<Page> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > Page::MAX_LIMIT {
        return Err(Error::InvalidQuery(format!("limit must be 1 to {}", Page::MAX_LIMIT)));
    }
    let offset = offset.unwrap_or(0);
    if offset > crate::schema::MAX_WHOLE {
        return Err(Error::InvalidQuery(format!("offset must be at most {}", crate::schema::MAX_WHOLE)));
    }
    Ok(Page::new(limit, offset))
}

/// Parses an optional id given as text (query or body), so a wrong prefix
/// is a 400 `invalid_id` like in paths.
pub(crate) fn parse_id<T>(text: Option<&str>) -> Result<Option<T>>
where
    T: std::str::FromStr<Err = keysmith_core::IdParseError>,
{
    text.map(str::parse).transpose().map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_bounded() {
        assert_eq!(page(None, None).unwrap(), Page::new(100, 0));
        assert_eq!(page(Some(1000), Some(5)).unwrap(), Page::new(1000, 5));
        assert!(page(Some(0), None).is_err());
        assert!(page(Some(1001), None).is_err());
        assert_eq!(page(None, Some((1 << 53) - 1)).unwrap(), Page::new(100, (1 << 53) - 1));
        assert!(page(None, Some(1 << 53)).is_err());
    }
}
