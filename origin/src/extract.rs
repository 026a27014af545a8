//! Request extractors with the API's error shapes: JSON bodies (415, 413, 422 with field
//! paths), UUID path parameters (422) and query strings (422).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::{ApiError, FieldError};

/// What a handler takes from a request body: parsed from the body's JSON shape ([`Self::Body`],
/// which the OpenAPI schema describes) into domain types, naming every field that is wrong.
pub trait FromBody: Sized {
    type Body: DeserializeOwned;
    fn from_body(body: Self::Body) -> Result<Self, Vec<FieldError>>;
}

/// A JSON body that parsed (unknown fields rejected) into `T` by [`FromBody`].
pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: FromBody> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest("The request body could not be read.".into())
            }
        })?;
        let body = parse_json::<T::Body>(&bytes)?;
        T::from_body(body).map(Self).map_err(ApiError::Validation)
    }
}

/// Parses JSON, naming the field of any error (`body` for the document itself).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let mut message = err.into_inner().to_string();
        if let Some(cut) = message.rfind(" at line ") {
            message.truncate(cut);
        }
        let field = if path == "." { field_named_in(&message).unwrap_or("body").to_owned() } else { path };
        ApiError::Validation(vec![FieldError::new(field, message)])
    })?;
    deserializer.end().map_err(|_| ApiError::field("body", "trailing characters after the JSON document"))?;
    Ok(value)
}

/// The field a top-level serde message names (`unknown field `x``, `missing field `x``): an
/// internally tagged enum such as `POST /schedule`'s body buffers its fields, so the error path
/// stops at the document.
fn field_named_in(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.strip_prefix("missing field `"))?;
    rest.split_once('`').map(|(field, _)| field)
}

/// A UUID path parameter; anything else is a 422 naming the parameter.
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::field("job_id", "missing path parameter"))?;
        Uuid::parse_str(&raw).map(Self).map_err(|_| ApiError::field("job_id", "must be a UUID"))
    }
}

/// A query string parsed into `T` (unknown parameters rejected), errors as 422.
pub struct ValidQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ValidQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer).map(Self).map_err(|err| {
            let field = err.path().to_string();
            let field = if field == "." { "query".to_owned() } else { field };
            ApiError::field(field, err.into_inner().to_string())
        })
    }
}
