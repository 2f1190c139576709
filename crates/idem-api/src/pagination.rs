//! Keyset pagination for list endpoints: `limit` and an opaque `cursor`.
//!
//! Invariant: a cursor is the URL-safe base64 (no padding) of the store's own cursor (the last id of
//! the previous page), so clients cannot depend on its contents, and a cursor that does not decode
//! is refused (400) rather than read as "from the start".

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use idem_core::store::PageRequest;

use crate::error::ApiError;
use crate::validate::Checker;

/// The page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 100;
/// The largest page size.
pub const MAX_LIMIT: u32 = 1000;

/// Encodes a store cursor for clients.
pub fn encode_cursor(raw: &str) -> String {
    URL_SAFE_NO_PAD.encode(raw.as_bytes())
}

/// Decodes a client's cursor back into the store's; 400 naming `cursor` when it is not one of ours.
pub fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::bad_field("cursor", "not a cursor returned by this API"))
}

/// Parses `limit` (1..=1000, default 100) into `c`; the placeholder 1 is never used when invalid.
pub fn limit(c: &mut Checker, raw: Option<&str>) -> u32 {
    match raw {
        None => DEFAULT_LIMIT,
        Some(s) => match s.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                c.push(
                    "limit",
                    format!("must be an integer between 1 and {MAX_LIMIT}"),
                );
                1
            }
        },
    }
}

/// The store's page request from the query's `limit` and `cursor`.
pub fn page_request(
    c: &mut Checker,
    limit_raw: Option<&str>,
    cursor: Option<&str>,
) -> Result<PageRequest, ApiError> {
    let limit = limit(c, limit_raw);
    let after = match cursor.filter(|s| !s.is_empty()) {
        Some(s) => Some(decode_cursor(s)?),
        None => None,
    };
    Ok(PageRequest { limit, after })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let raw = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let c = encode_cursor(raw);
        assert!(!c.contains('=') && !c.contains('/') && !c.contains('+'));
        assert_eq!(decode_cursor(&c).unwrap(), raw);
        let err = decode_cursor("not base64!").unwrap_err();
        assert_eq!(err.status().as_u16(), 400);
        assert_eq!(err.errors()[0].field, "cursor");
    }

    #[test]
    fn limits_outside_the_range_are_invalid() {
        let mut c = Checker::new("");
        assert_eq!(limit(&mut c, None), 100);
        assert_eq!(limit(&mut c, Some("1000")), 1000);
        limit(&mut c, Some("0"));
        limit(&mut c, Some("1001"));
        limit(&mut c, Some("ten"));
        assert_eq!(c.into_errors().len(), 3);
    }
}
