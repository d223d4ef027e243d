//! The one error shape every 4xx and 5xx response has.
//!
//! Handlers return [`ApiError`]. Its response carries the JSON body and, as a
//! response extension, the error itself, so the observe middleware can add
//! the request id, log the cause chain of a 5xx, and turn any error response
//! that did not come from here (axum's 404 and 405, tower-http's 413 and
//! timeouts) into the same shape.

use std::fmt;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code such as `validation_failed` or `unauthorized`.
    #[schema(example = "validation_failed")]
    pub code: String,
    /// A human-readable explanation; never contains secrets or internals.
    pub message: String,
    /// Per-field problems, for validation errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
    /// The request's `X-Request-Id`, to quote when reporting a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's path in the request, such as `email` or `items[2].amount`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// Collects the field errors of one request, so a client hears about every
/// bad field at once rather than one per attempt.
#[derive(Debug, Default)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// The value, or `None` with its error kept.
    pub fn keep<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        result.map_err(|err| self.0.push(err)).ok()
    }

    pub fn push(&mut self, error: FieldError) {
        self.0.push(error);
    }

    pub fn extend(&mut self, errors: impl IntoIterator<Item = FieldError>) {
        self.0.extend(errors);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` if no field failed, otherwise the 422 listing them all.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() { Ok(()) } else { Err(ApiError::validation(self.0)) }
    }

    pub fn into_error(self) -> ApiError {
        ApiError::validation(self.0)
    }
}

/// An error a handler returns.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<FieldError>,
    retry_after_secs: Option<u64>,
    /// For 5xx: what actually went wrong. Logged, never sent.
    source: Option<anyhow::Error>,
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source:#}")?;
        }
        Ok(())
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: Vec::new(), retry_after_secs: None, source: None }
    }

    pub fn with_details(mut self, details: Vec<FieldError>) -> Self {
        self.details = details;
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Well-formed input that breaks a rule: 422 with one entry per field.
    pub fn validation(details: Vec<FieldError>) -> Self {
        let message = match details.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => "the request has invalid fields".to_owned(),
        };
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", message).with_details(details)
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    /// 401. The response carries `WWW-Authenticate: Bearer` (RFC 6750).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn too_many_requests(retry_after_secs: u64, message: impl Into<String>) -> Self {
        let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message);
        err.retry_after_secs = Some(retry_after_secs.max(1));
        err
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// A failure that is not the client's fault. The client sees a generic
    /// message; the cause chain goes to the log.
    pub fn internal(source: anyhow::Error) -> Self {
        let mut err = Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "an internal error occurred");
        err.source = Some(source);
        err
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The default error for a status that some layer produced without a
    /// body of ours.
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::BAD_REQUEST => ("bad_request", "the request is malformed"),
            StatusCode::UNAUTHORIZED => ("unauthorized", "authentication is required"),
            StatusCode::FORBIDDEN => ("forbidden", "not allowed"),
            StatusCode::NOT_FOUND => ("not_found", "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this route does not accept that method"),
            StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is larger than 10 MiB"),
            StatusCode::URI_TOO_LONG => ("uri_too_long", "the request target is too long"),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ("headers_too_large", "the request headers are too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "the content type is not supported"),
            StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "the service is unavailable"),
            StatusCode::GATEWAY_TIMEOUT => ("timeout", "the request took too long"),
            s if s.is_client_error() => ("bad_request", "the request was rejected"),
            _ => ("internal", "an internal error occurred"),
        };
        Self::new(status, code, message)
    }

    fn body(&self, request_id: Option<String>) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
            details: self.details.clone(),
            request_id,
        }
    }

    pub(crate) fn report(&self) -> ErrorReport {
        ErrorReport { body: self.body(None), cause: self.source.as_ref().map(|e| format!("{e:#}")) }
    }

    /// 503 for a dependency that is down: says when to retry, and keeps
    /// `source` (logged by `observe`, never sent) so the log says why.
    pub fn dependency_down(
        code: &'static str,
        message: impl Into<String>,
        retry_after_secs: u64,
        source: anyhow::Error,
    ) -> Self {
        let mut err = Self::unavailable(code, message);
        err.retry_after_secs = Some(retry_after_secs.max(1));
        err.source = Some(source);
        err
    }
}

impl<E: Into<anyhow::Error>> From<E> for ApiError {
    fn from(err: E) -> Self {
        ApiError::internal(err.into())
    }
}

/// What the observe middleware needs to finish an error response: the body
/// without its request id, and the cause to log.
#[derive(Clone)]
pub struct ErrorReport {
    pub body: ErrorBody,
    /// The cause chain of a 5xx, formatted with `{:#}`.
    pub cause: Option<String>,
}

impl ErrorReport {
    /// Re-renders the body with the request id filled in.
    pub fn render(&self, status: StatusCode, request_id: &str) -> Response {
        let mut body = self.body.clone();
        body.request_id = Some(request_id.to_owned());
        (status, Json(body)).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let report = self.report();
        let mut response = (self.status, Json(&report.body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(report);
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_hides_its_cause_from_the_client() {
        let err = ApiError::internal(anyhow::anyhow!("password authentication failed for user postgres"));
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let report = response.extensions().get::<ErrorReport>().unwrap();
        assert_eq!(report.body.message, "an internal error occurred");
        assert!(report.cause.as_deref().unwrap().contains("password authentication failed"));
    }

    #[test]
    fn a_single_field_error_names_the_field_in_the_message() {
        let err = ApiError::field("email", "is not a valid email address");
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.body(None).message, "email: is not a valid email address");
    }

    #[test]
    fn unauthorized_carries_the_bearer_challenge() {
        let response = ApiError::unauthorized("token expired").into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn too_many_requests_says_when_to_retry() {
        let response = ApiError::too_many_requests(0, "slow down").into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
