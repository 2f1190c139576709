//! Extractors whose every rejection is an [`ApiError`]: axum's own answer plain text, which the API contract
//! forbids.
//!
//! Invariant: a body is read in three steps, each with its own status — the media type (415), the
//! bytes under the body limit (413), the JSON syntax (400) — and only then decoded into the request
//! type, where a wrong type, a missing field or an unknown field is a 422 naming the field's path.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use idem_core::IdempotencyKey;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, FieldError};

/// A JSON request body decoded into `T`.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::unsupported_media_type());
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(crate::DEFAULT_MAX_BODY_BYTES);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(limit)
            } else {
                ApiError::bad_request(format!("the request body could not be read: {rejection}"))
            }
        })?;
        let value = parse_json(&bytes)?;
        decode(value, "").map(ApiJson)
    }
}

/// The configured body limit, put in the request's extensions so that the 413 can say it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// `application/json`, any `application/*+json`, with or without parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses JSON text; any failure here is the client's syntax (400).
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::malformed_json("the request body is empty"));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::malformed_json(format!("the request body is not valid JSON: {e}")))
}

/// Decodes a JSON value into `T`; a failure is a 422 naming the field, prefixed by `prefix`.
pub fn decode<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let last = match e.path().iter().next_back() {
            Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
            _ => None,
        };
        let message = e.inner().to_string();
        ApiError::validation(vec![field_error(prefix, &path, last.as_deref(), message)])
    })
}

/// Names the field of a decoding error. serde reports a missing field at its parent's path, with the
/// field's name in backticks in the message: that name completes the path.
fn field_error(prefix: &str, path: &str, last: Option<&str>, message: String) -> FieldError {
    let mut parts: Vec<&str> = Vec::new();
    if !prefix.is_empty() {
        parts.push(prefix);
    }
    if path != "." {
        parts.push(path);
    }
    let named = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    // serde_path_to_error already ends an unknown field's path with its name; a missing one's not.
    if let Some(name) = named.filter(|n| last != Some(*n)) {
        parts.push(name);
    }
    let field = if parts.is_empty() {
        "body".to_owned()
    } else {
        parts.join(".").replace(".[", "[")
    };
    FieldError::new(field, message)
}

/// The `{id}` of a route. A value that cannot be decoded names nothing that exists: 404.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| PathId(id))
            .map_err(|_| ApiError::not_found("no such resource"))
    }
}

/// A query string decoded into `T` (whose fields are strings, validated by the handler).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| {
                ApiError::bad_request(format!("the query string is invalid: {}", e.body_text()))
            })
    }
}

/// The request header that carries an idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header that marks a replayed answer.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The `Idempotency-Key` header, validated; 422 naming `idempotency_key` when it is not a valid key.
pub fn idempotency_header(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(raw) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let s = raw.to_str().map_err(|_| {
        ApiError::invalid(
            "idempotency_key",
            "the Idempotency-Key header must be printable ASCII",
        )
    })?;
    IdempotencyKey::try_from(s.to_owned())
        .map(Some)
        .map_err(|e| ApiError::invalid("idempotency_key", e.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_unknown_fields_are_named_by_their_full_path() {
        let f = field_error("", ".", None, "missing field `task`".into());
        assert_eq!(f.field, "task");
        let f = field_error("", "items[3]", None, "missing field `task`".into());
        assert_eq!(f.field, "items[3].task");
        let unknown = "unknown field `prio`, expected one of".to_owned();
        let f = field_error("", "items[3].prio", Some("prio"), unknown);
        assert_eq!(f.field, "items[3].prio");
        let f = field_error(
            "",
            "items[3].priority",
            Some("priority"),
            "invalid type".into(),
        );
        assert_eq!(f.field, "items[3].priority");
        let f = field_error(
            "",
            ".",
            None,
            "invalid type: string, expected struct".into(),
        );
        assert_eq!(f.field, "body");
    }

    #[test]
    fn json_media_types_are_recognised_with_parameters() {
        let mut h = HeaderMap::new();
        for (ct, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            h.insert(CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(is_json(&h), ok, "{ct}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
