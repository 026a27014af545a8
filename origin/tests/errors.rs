//! How every error becomes a response: status, the one JSON shape, what is said and what is
//! kept back, and which database failures are the client's, the service's or an outage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use portcullis_origin::error::{ApiError, FieldError, code_for};
use serde_json::{Value, json};

async fn render(error: ApiError) -> (StatusCode, Option<String>, Value) {
    let response = error.into_response();
    let status = response.status();
    assert_eq!(response.headers()["content-type"], "application/json");
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap();
    (status, retry_after, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn each_error_has_its_status_code_and_message() {
    let cases = [
        (ApiError::Unauthorized, 401, "unauthorized", "Authentication failed."),
        (ApiError::NotFound, 404, "not_found", "No such resource."),
        (ApiError::BadRequest("Bad cursor.".into()), 400, "bad_request", "Bad cursor."),
        (ApiError::UnsupportedMediaType, 415, "unsupported_media_type", "Send the request body as application/json."),
        (ApiError::PayloadTooLarge, 413, "payload_too_large", "The request body is too large."),
        (ApiError::Conflict("That name is taken.".into()), 409, "conflict", "That name is taken."),
    ];
    for (error, status, code, message) in cases {
        assert_eq!(error.status().as_u16(), status, "{error}");
        let (rendered, retry_after, body) = render(error).await;
        assert_eq!(rendered.as_u16(), status);
        assert_eq!(retry_after, None);
        assert_eq!(body, json!({"error": code, "message": message}), "no details key when there are none");
    }
}

#[tokio::test]
async fn validation_errors_list_every_field() {
    let error = ApiError::Validation(vec![
        FieldError::new("run_at", "must be in the future"),
        FieldError::new("kind", "unknown"),
    ]);
    let (status, _, body) = render(error).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"], "validation_failed");
    assert_eq!(
        body["details"],
        json!([{"field": "run_at", "message": "must be in the future"}, {"field": "kind", "message": "unknown"}])
    );
    let (_, _, body) = render(ApiError::field("limit", "too big")).await;
    assert_eq!(body["details"], json!([{"field": "limit", "message": "too big"}]));
}

#[tokio::test]
async fn internal_causes_and_outages_are_never_shown_to_the_client() {
    let (status, retry_after, body) =
        render(ApiError::Internal("relation app.secret_table does not exist".into())).await;
    assert_eq!((status, retry_after), (StatusCode::INTERNAL_SERVER_ERROR, None));
    assert_eq!(body, json!({"error": "internal_error", "message": "Something went wrong on our side."}));

    let (status, retry_after, body) = render(ApiError::Unavailable("connection refused to 10.0.0.5:5432".into())).await;
    assert_eq!((status, retry_after.as_deref()), (StatusCode::SERVICE_UNAVAILABLE, Some("5")));
    assert_eq!(body["error"], "service_unavailable");
    assert!(!body.to_string().contains("10.0.0.5"), "{body}");
}

/// A database error with a given SQLSTATE, as a driver reports it.
#[derive(Debug)]
struct Sqlstate(&'static str);

impl std::fmt::Display for Sqlstate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error with SQLSTATE {}", self.0)
    }
}

impl std::error::Error for Sqlstate {}

impl sqlx::error::DatabaseError for Sqlstate {
    fn message(&self) -> &str {
        "database error"
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.0))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}

fn mapped(err: sqlx::Error) -> StatusCode {
    ApiError::from(err).status()
}

#[test]
fn database_errors_map_to_client_service_or_outage() {
    let database = |code| sqlx::Error::Database(Box::new(Sqlstate(code)));
    // Connection exceptions and operator intervention (a shutdown): the database is away.
    assert_eq!(mapped(database("08006")), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mapped(database("57P01")), StatusCode::SERVICE_UNAVAILABLE);
    // Data exceptions come from what the client sent.
    assert_eq!(mapped(database("22P05")), StatusCode::BAD_REQUEST);
    assert_eq!(mapped(database("22003")), StatusCode::BAD_REQUEST);
    match ApiError::from(database("22021")) {
        ApiError::BadRequest(message) => assert_eq!(message, "The request contains a value that cannot be stored."),
        other => panic!("{other:?}"),
    }
    // Anything else the database refuses is this program's fault.
    assert_eq!(mapped(database("42501")), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(mapped(database("23505")), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(mapped(sqlx::Error::RowNotFound), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(mapped(sqlx::Error::ColumnNotFound("result".into())), StatusCode::INTERNAL_SERVER_ERROR);
    // Out of reach: I/O, a broken protocol, an exhausted pool, a closed pool.
    assert_eq!(mapped(sqlx::Error::Protocol("unexpected message".into())), StatusCode::SERVICE_UNAVAILABLE);
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    assert_eq!(mapped(sqlx::Error::Io(io)), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mapped(sqlx::Error::PoolTimedOut), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mapped(sqlx::Error::PoolClosed), StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn bare_statuses_get_their_canonical_codes() {
    let expected = [
        (400, "bad_request"),
        (401, "unauthorized"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (408, "request_timeout"),
        (413, "payload_too_large"),
        (415, "unsupported_media_type"),
        (422, "validation_failed"),
        (429, "rate_limited"),
        (503, "service_unavailable"),
        (500, "internal_error"),
        (502, "internal_error"),
        (418, "error"),
        (409, "error"),
    ];
    for (status, code) in expected {
        assert_eq!(code_for(StatusCode::from_u16(status).unwrap()), code, "{status}");
    }
}
