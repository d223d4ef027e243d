//! The operational endpoints every process serves: `/health`, `/ready`,
//! `/metrics` and `/openapi.json`.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::Json;
use crate::service::Platform;

/// How long a dependency may take to answer a readiness check.
const CHECK_DEADLINE: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct OpsState {
    platform: Platform,
    openapi: Arc<OnceLock<String>>,
}

/// The ops routes. `openapi` is filled in once the whole router is known.
pub(crate) fn routes(platform: &Platform, openapi: Arc<OnceLock<String>>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .with_state(OpsState { platform: platform.clone(), openapi })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process is up and serving. Touches no dependency, so a
/// database outage never gets healthy pods restarted.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: &'static str,
    /// Each dependency and `ok`.
    pub checks: BTreeMap<&'static str, &'static str>,
}

/// Readiness: Postgres and Redis both answer within a second. Otherwise
/// 503, naming each failing dependency in `details`.
#[utoipa::path(get, path = "/ready", tag = "ops", responses(
    (status = 200, body = Readiness),
    (status = 503, body = ErrorBody, description = "a dependency is down; `details` names it"),
))]
async fn ready(State(state): State<OpsState>) -> Result<Json<Readiness>, ApiError> {
    let platform = &state.platform;
    let postgres =
        async { sqlx::query("SELECT 1").execute(&platform.db.pool).await.map(drop).map_err(anyhow::Error::from) };
    let (postgres, redis) = tokio::join!(within_deadline(postgres), within_deadline(platform.redis.ping()));
    let mut failures = Vec::new();
    for (name, result) in [("postgres", postgres), ("redis", redis)] {
        if let Err(err) = result {
            tracing::warn!(dependency = name, error = %format!("{err:#}"), "readiness check failed");
            failures.push(FieldError::new(name, short_reason(&err)));
        }
    }
    if failures.is_empty() {
        return Ok(Json(Readiness { status: "ready", checks: BTreeMap::from([("postgres", "ok"), ("redis", "ok")]) }));
    }
    let names = failures.iter().map(|f| f.field.as_str()).collect::<Vec<_>>().join(", ");
    Err(ApiError::unavailable("not_ready", format!("not ready: {names} unavailable")).with_details(failures))
}

async fn within_deadline(check: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    match tokio::time::timeout(CHECK_DEADLINE, check).await {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("no answer within {} ms", CHECK_DEADLINE.as_millis())),
    }
}

/// The reason without addresses or credentials, for a response body that
/// anyone can fetch.
fn short_reason(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    if text.contains("no answer within") {
        "no answer within the deadline".to_owned()
    } else if text.to_ascii_lowercase().contains("refused") {
        "connection refused".to_owned()
    } else {
        "check failed".to_owned()
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.platform.metrics.render())
}

/// This document: the OpenAPI 3 description of every route the process serves.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi_json(State(state): State<OpsState>) -> impl IntoResponse {
    match state.openapi.get() {
        Some(doc) => ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response(),
        None => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the API description is not built yet")
            .into_response(),
    }
}
