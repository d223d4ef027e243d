//! Extractors whose rejections come back in our error shape.
//!
//! axum's own `Json`, `Path` and `Query` answer bad input with plain text.
//! These wrappers answer with [`ApiError`]: 400 for malformed syntax, 415 for
//! a wrong content type, 413 for an oversized body, and 422 with the failing
//! field's path for well-formed input of the wrong shape (unknown fields
//! included, since request types use `deny_unknown_fields`).

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError};

/// A JSON request body, or a JSON response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !has_json_content_type(&req) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request body with content type application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(bytes_rejection)?;
        parse_json(&bytes).map(Json)
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn has_json_content_type(req: &Request) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        ApiError::bad_request("bad_request", "the request body could not be read")
    }
}

/// Deserialises a JSON document, reporting where it went wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
                "malformed_json",
                format!("the request body is not valid JSON: {}", strip_position(&inner.to_string())),
            ),
            Category::Data => {
                let field = if path == "." { "body".to_owned() } else { path };
                ApiError::validation(vec![FieldError::new(field, strip_position(&inner.to_string()))])
            }
        }
    })
}

/// serde_json appends " at line 1 column 17"; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Path parameters; a malformed one (say, not a UUID) is a 400 naming it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(err)) => {
                Err(ApiError::bad_request("invalid_path_parameter", err.body_text()))
            }
            Err(other) => Err(ApiError::internal(anyhow::anyhow!("path extraction failed: {}", other.body_text()))),
        }
    }
}

/// Query parameters; bad ones are a 400 naming the parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(err)) => {
                Err(ApiError::bad_request("invalid_query", err.body_text()))
            }
            Err(other) => Err(ApiError::bad_request("invalid_query", other.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Login {
        email: String,
        password: String,
    }

    #[test]
    fn broken_json_is_a_bad_request() {
        let err = parse_json::<Login>(br#"{"email": "a@b.c", "#).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.code(), "malformed_json");
    }

    #[test]
    fn an_unknown_field_is_named() {
        let err = parse_json::<Login>(br#"{"email": "a@b.c", "password": "x", "admin": true}"#).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let response = err.into_response();
        let report = response.extensions().get::<crate::error::ErrorReport>().unwrap();
        assert!(report.body.details[0].message.contains("unknown field `admin`"), "{:?}", report.body.details);
    }

    #[test]
    fn a_wrong_type_names_the_field_path() {
        let err = parse_json::<Login>(br#"{"email": 42, "password": "x"}"#).unwrap_err();
        let response = err.into_response();
        let report = response.extensions().get::<crate::error::ErrorReport>().unwrap();
        assert_eq!(report.body.details[0].field, "email");
    }
}
