//! Every error the API returns: a status and one JSON shape,
//! `{"error": code, "message": text, "details": [{"field", "message"}]?}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `validation_failed`.
    pub error: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// One rule a request broke.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, e.g. `run_at` or `body` for the document itself.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication required")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("too many attempts: retry after {0} s")]
    Throttled(u64),
    #[error("too many password checks at once")]
    Busy,
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(self) -> ErrorBody {
        let (error, message, details) = match self {
            // Says nothing about which part failed: user, password, token, signature or expiry.
            Self::Unauthorized => ("unauthorized", "Authentication failed.".to_owned(), Vec::new()),
            Self::NotFound => ("not_found", "No such resource.".to_owned(), Vec::new()),
            Self::BadRequest(m) => ("bad_request", m, Vec::new()),
            Self::UnsupportedMediaType => {
                ("unsupported_media_type", "Send the request body as application/json.".to_owned(), Vec::new())
            }
            Self::PayloadTooLarge => ("payload_too_large", "The request body is too large.".to_owned(), Vec::new()),
            Self::Validation(details) => ("validation_failed", "The request is not valid.".to_owned(), details),
            Self::Conflict(m) => ("conflict", m, Vec::new()),
            Self::Throttled(_) => (
                "rate_limited",
                "Too many attempts for this account; retry after the time given.".to_owned(),
                Vec::new(),
            ),
            Self::Busy => ("service_unavailable", "Too many logins at once; retry shortly.".to_owned(), Vec::new()),
            Self::Unavailable(_) => {
                ("service_unavailable", "The service is temporarily unavailable; retry shortly.".to_owned(), Vec::new())
            }
            Self::Internal(_) => ("internal_error", "Something went wrong on our side.".to_owned(), Vec::new()),
        };
        ErrorBody { error, message, details }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(cause) => tracing::error!(%cause, "internal error"),
            Self::Unavailable(cause) => tracing::warn!(%cause, "dependency unavailable"),
            _ => {}
        }
        let retry_after = match &self {
            Self::Unavailable(_) => Some(HeaderValue::from_static("5")),
            Self::Busy => Some(HeaderValue::from_static("1")),
            Self::Throttled(seconds) => Some(HeaderValue::from(*seconds)),
            _ => None,
        };
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(value) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &err {
            // Connection exceptions (08) and operator intervention such as a shutdown (57P).
            E::Database(db) if db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) => {
                Self::Unavailable(err.to_string())
            }
            // Data exceptions (22xxx: a NUL byte, an out-of-range value) come from what the client
            // sent: a 400, not a 500, even where validation missed the case.
            E::Database(db) if db.code().is_some_and(|c| c.starts_with("22")) => {
                Self::BadRequest("The request contains a value that cannot be stored.".into())
            }
            // Faults of this program or the data: a 500, logged.
            E::Database(_)
            | E::RowNotFound
            | E::ColumnNotFound(_)
            | E::ColumnIndexOutOfBounds { .. }
            | E::ColumnDecode { .. }
            | E::Decode(_)
            | E::Encode(_)
            | E::TypeNotFound { .. }
            | E::Configuration(_)
            | E::Migrate(_)
            | E::InvalidArgument(_)
            | E::AnyDriverError(_) => Self::Internal(err.to_string()),
            // Everything else is the database being out of reach: I/O, TLS, protocol breaks,
            // pool timeouts.
            _ => Self::Unavailable(err.to_string()),
        }
    }
}

/// Canonical error code for a bare status produced outside the handlers (routing, timeouts).
pub fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "validation_failed",
        429 => "rate_limited",
        503 => "service_unavailable",
        s if s >= 500 => "internal_error",
        _ => "error",
    }
}
