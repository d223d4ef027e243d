//! The middleware every request passes through first: request id, one log
//! line, metrics, and the error shape.
//!
//! It is added with `Router::layer`, which wraps each route, so it sees the
//! matched route template (`/v1/accounts/{id}`) and labels metrics with that,
//! never with the raw path.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::{ApiError, ErrorReport};
use crate::metrics::{Metrics, UNMATCHED_ROUTE, method_label};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the rest of the stack knows about the request in flight.
#[derive(Debug)]
pub struct RequestContext {
    pub request_id: String,
    user_id: OnceLock<Uuid>,
}

impl RequestContext {
    /// Records the authenticated user for the request's log line.
    pub fn set_user(&self, user_id: Uuid) {
        let _ = self.user_id.set(user_id);
    }
}

/// A caller's request id is kept if it is short and printable; otherwise a
/// new one is made, so a hostile header cannot forge log lines.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::now_v7().to_string())
}

pub async fn observe(State(metrics): State<Metrics>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().map_or(UNMATCHED_ROUTE, |p| p.as_str()).to_owned();
    let ctx = Arc::new(RequestContext { request_id: request_id(&req), user_id: OnceLock::new() });
    req.extensions_mut().insert(ctx.clone());

    let span = tracing::info_span!("request", request_id = %ctx.request_id);
    let mut response = next.run(req).instrument(span.clone()).await;

    let status = response.status();
    let report = response.extensions_mut().remove::<ErrorReport>();
    if let Some(report) = &report {
        response = keep_headers(response, report.render(status, &ctx.request_id));
    } else if status.as_u16() >= 400 && !is_json(&response) {
        // An error from a layer or from axum itself (404, 405, 413, timeout).
        let rendered = ApiError::for_status(status).report().render(status, &ctx.request_id);
        response = keep_headers(response, rendered);
    }
    if let Ok(value) = HeaderValue::from_str(&ctx.request_id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }

    let elapsed = started.elapsed();
    metrics.observe_request(method, &route, status.as_u16(), elapsed);
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    let user_id = ctx.user_id.get().map(Uuid::to_string);
    let _entered = span.enter();
    if status.is_server_error() {
        let cause = report.as_ref().and_then(|r| r.cause.as_deref()).unwrap_or("");
        tracing::error!(target: "http", method, route, status = status.as_u16(), latency_ms, user_id, error = cause, "request failed");
    } else if is_probe(&route) && status.is_success() {
        // Probes and scrapes arrive every few seconds per replica; at info
        // they would drown the requests that matter.
        tracing::debug!(target: "http", method, route, status = status.as_u16(), latency_ms, "request");
    } else {
        tracing::info!(target: "http", method, route, status = status.as_u16(), latency_ms, user_id, "request");
    }
    response
}

fn is_probe(route: &str) -> bool {
    matches!(route, "/health" | "/ready" | "/metrics")
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("application/problem+json"))
}

/// The rendered error body with the original response's status and headers
/// (`Allow` on a 405, `Retry-After` on a 429, `WWW-Authenticate` on a 401).
fn keep_headers(original: Response, rendered: Response) -> Response {
    let (mut parts, _) = original.into_parts();
    let (rendered_parts, body) = rendered.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, rendered_parts.headers[header::CONTENT_TYPE].clone());
    Response::from_parts(parts, Body::new(body))
}
