//! [`ApiError`]: every failure the API answers, rendered as an RFC 9457 problem
//! (`application/problem+json`).
//!
//! Invariant: a 5xx never carries the underlying error to the client; it is logged here, once, and the
//! client gets a generic detail. Store errors the caller can act on map to their own statuses.

use std::collections::BTreeMap;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use idem_core::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// Where the `type` URIs of idem's problems live; each kind of problem has a stable slug below it.
const TYPE_BASE: &str = "https://idem.dev/problems/";

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid field of a request, named by its path in the body (`items[3].priority`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The body of every error answer (RFC 9457).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A stable URI per kind of problem, e.g. `https://idem.dev/problems/validation`.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Present on 422 (and on a 400 about a query parameter): every invalid field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Present on a failed readiness check: each component and what it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<BTreeMap<String, String>>,
}

/// An error answer; build it with the constructors, return it from handlers. Boxed: handlers
/// return it in every `Result`, which should stay small.
#[derive(Debug, Clone)]
pub struct ApiError(Box<Inner>);

#[derive(Debug, Clone)]
struct Inner {
    status: StatusCode,
    slug: &'static str,
    title: String,
    detail: String,
    errors: Vec<FieldError>,
    checks: Option<BTreeMap<String, String>>,
}

impl ApiError {
    fn new(status: StatusCode, slug: &'static str, title: &str, detail: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            status,
            slug,
            title: title.to_owned(),
            detail: detail.into(),
            errors: Vec::new(),
            checks: None,
        }))
    }

    /// 400: a request that cannot be read at all (bad query string, bad cursor).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// 400 naming one field (a query parameter that cannot be decoded).
    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::bad_request(format!("{field}: {message}"));
        e.0.errors.push(FieldError::new(field, message));
        e
    }

    /// 400: the body is not JSON (syntax error, truncated, empty).
    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            detail,
        )
    }

    /// 422 listing every invalid field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Invalid request",
            detail,
        );
        e.0.errors = errors;
        e
    }

    /// 422 about one field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    /// 422: an idempotency key reused with a different request.
    pub fn key_reused(field: impl Into<String>, key: &str) -> Self {
        let mut e = Self::invalid(
            field,
            format!("idempotency key {key:?} was already used with a different request"),
        );
        e.0.slug = "idempotency-key-reused";
        e.0.title = "Idempotency key reused".to_owned();
        e
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    /// 412: an `If-Match` precondition that the resource's current `ETag` does not meet.
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
            "Precondition failed",
            detail,
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "the request body must be JSON, sent with Content-Type: application/json",
        )
    }

    /// 503: a dependency is down; `checks` (when given) shows each component's answer.
    pub fn unavailable(
        detail: impl Into<String>,
        checks: Option<BTreeMap<String, String>>,
    ) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        );
        e.0.checks = checks;
        e
    }

    /// 500: logs `err` and answers a generic detail.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "an unexpected error occurred; it has been logged",
        )
    }

    /// A problem for a bare status (`type` `about:blank`, the reason phrase as title).
    pub fn from_status(status: StatusCode, detail: impl Into<String>) -> Self {
        let title = status.canonical_reason().unwrap_or("Error");
        Self::new(status, "about:blank", title, detail)
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn errors(&self) -> &[FieldError] {
        &self.0.errors
    }

    /// The body this error renders to.
    pub fn problem(&self) -> Problem {
        Problem {
            type_: if self.0.slug.starts_with("about:") {
                self.0.slug.to_owned()
            } else {
                format!("{TYPE_BASE}{}", self.0.slug)
            },
            title: self.0.title.clone(),
            status: self.0.status.as_u16(),
            detail: self.0.detail.clone(),
            errors: self.0.errors.clone(),
            checks: self.0.checks.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match serde_json::to_vec(&self.problem()) {
            Ok(b) => b,
            // Serializing strings and numbers cannot fail; answer something valid regardless.
            Err(_) => br#"{"type":"about:blank","title":"Internal server error","status":500,"detail":"error"}"#.to_vec(),
        };
        let mut res = (self.0.status, body).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::JobExists(id) => ApiError::conflict(format!("job {id} already exists")),
            StoreError::KeyConflict { key, .. } => ApiError::key_reused("idempotency_key", &key),
            StoreError::TaskNotFound(id) => ApiError::not_found(format!("task {id} not found")),
            StoreError::Unavailable(source) => {
                tracing::warn!(error = %source, "store unavailable");
                ApiError::unavailable("store unavailable", None)
            }
            other @ (StoreError::Fenced { .. } | StoreError::Corrupt(_)) => {
                ApiError::internal(other)
            }
        }
    }
}

/// The safety net of an error answer that is not already a problem (one produced outside
/// idem's handlers, such as the Swagger UI's own 404) is replaced by one with the same status. A
/// short client-error text is kept as the detail; a server error's never is.
pub async fn ensure_problem(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 1024)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .filter(|t| !t.trim().is_empty() && status.is_client_error());
    let detail = text.unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    let mut out = ApiError::from_status(status, detail).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

/// The fallback of unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// The fallback of known routes called with a method they do not have.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this route does not accept this method",
    )
}
