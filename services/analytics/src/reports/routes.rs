//! `/v1/reports`: ask for a report, follow its job, download the file,
//! cancel it. Every job is the caller's own: another user's id is a 404,
//! like one that does not exist.

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::date::IsoDate;
use freedumb_kit::extract::{Json, Path, Query};
use freedumb_kit::idempotency::{self, IdempotencyKey, fingerprint};
use freedumb_kit::{ApiError, ApiResult, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::jobs::{self, After, Format, Job, Kind, Status};
use crate::range::Range;
use crate::{AnalyticsState, SCHEMA};

pub(crate) fn router() -> OpenApiRouter<AnalyticsState> {
    OpenApiRouter::new()
        .routes(routes!(create_report, list_reports))
        .routes(routes!(get_report))
        .routes(routes!(download_report))
        .routes(routes!(cancel_report))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReport {
    kind: Kind,
    /// The first day, included.
    from: IsoDate,
    /// The last day, included: on or after `from` and at most 3 years
    /// (36 months) after it, or the answer is a 422 naming `to`.
    to: IsoDate,
    format: Format,
}

/// Where to go from a job. `download` is there once it succeeded (and
/// until it expires), `cancel` while it is queued or running.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportLinks {
    #[serde(rename = "self")]
    #[schema(example = "/v1/reports/0193a5e2-7f1c-7b6e-9d2a-1c3b5d7e9f01")]
    this: String,
    download: Option<String>,
    cancel: Option<String>,
}

/// A report job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Report {
    id: Uuid,
    kind: Kind,
    format: Format,
    from: IsoDate,
    to: IsoDate,
    status: Status,
    /// How far the current or last attempt got, 0 to 100.
    #[schema(minimum = 0, maximum = 100)]
    progress: i16,
    /// Attempts started so far, at most `max_attempts`.
    attempts: i32,
    max_attempts: i32,
    /// Why the last attempt failed: set while a retry waits and once
    /// `failed`.
    error: Option<String>,
    created_at: DateTime<Utc>,
    /// When the first attempt started.
    started_at: Option<DateTime<Utc>>,
    /// When it succeeded, failed or was cancelled.
    finished_at: Option<DateTime<Utc>>,
    /// When a succeeded report's file is deleted (the status then reads
    /// `expired` and the download is a 410).
    expires_at: Option<DateTime<Utc>>,
    links: ReportLinks,
}

fn location(id: Uuid) -> String {
    format!("/v1/reports/{id}")
}

impl From<Job> for Report {
    fn from(job: Job) -> Report {
        let this = location(job.id);
        let links = ReportLinks {
            download: (job.status == Status::Succeeded).then(|| format!("{this}/download")),
            cancel: matches!(job.status, Status::Queued | Status::Running).then(|| format!("{this}/cancel")),
            this,
        };
        Report {
            id: job.id,
            kind: job.kind,
            format: job.format,
            from: job.range.from(),
            to: job.range.to(),
            status: job.status,
            progress: job.progress,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            error: job.error,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            expires_at: job.expires_at,
            links,
        }
    }
}

/// Queues a report. The answer is at once: the job, to follow at
/// `Location` until its status is `succeeded`, then to download.
#[utoipa::path(post, path = "/v1/reports", tag = "reports", security(("bearer" = [])), request_body = CreateReport,
    params(IdempotencyKey),
    responses(
        (status = 202, body = Report, description = "queued",
            headers(("Location" = String, description = "the job: `/v1/reports/{id}`"))),
        (status = 422, body = ErrorBody, description = "`to` before `from` or more than 3 years after it")))]
async fn create_report(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(req): Json<CreateReport>,
) -> ApiResult<Response> {
    let range = Range::new(req.from, req.to)?;
    let fp = fingerprint("POST /v1/reports", &req);
    let (kind, format) = (req.kind, req.format);
    let response = idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let job = jobs::create(tx.conn(), user.user_id, kind, format, range).await?;
            Ok((StatusCode::ACCEPTED, serde_json::to_value(Report::from(job)).context("failed to serialise a report")?))
        })
    })
    .await?;
    with_location(response).await
}

/// Adds `Location` to a created job's answer, read from its body: a replay
/// comes from the stored body alone, so the header is derived from it, for
/// the first answer and every replay alike.
async fn with_location(response: Response) -> ApiResult<Response> {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.context("failed to read a report's answer")?;
    let id = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|body| body["id"].as_str().and_then(|id| id.parse::<Uuid>().ok()));
    if let Some(id) = id {
        let value = HeaderValue::from_str(&location(id)).context("a location is a header value")?;
        parts.headers.insert(header::LOCATION, value);
    }
    Ok(Response::from_parts(parts, axum::body::Body::from(bytes)))
}

/// Default page size.
const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListReports {
    /// Default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(max_length = 200)]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReportPage {
    /// Newest first.
    items: Vec<Report>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

fn encode_cursor(after: After) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&after).unwrap_or_default())
}

fn decode_cursor(text: &str) -> ApiResult<After> {
    let bad = || ApiError::bad_request("invalid_query", "cursor is not a cursor from this listing");
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

/// The caller's report jobs, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/reports", tag = "reports", security(("bearer" = [])), params(ListReports),
    responses((status = 200, body = ReportPage)))]
async fn list_reports(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    Query(q): Query<ListReports>,
) -> ApiResult<Json<ReportPage>> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be 1 to {MAX_PAGE}")));
    }
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    let mut items = jobs::list(&mut conn, user.user_id, after, limit + 1).await?;
    let next_cursor = if items.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
        items.pop();
        items.last().map(|last| encode_cursor(After { created_at: last.created_at, id: last.id }))
    } else {
        None
    };
    Ok(Json(ReportPage { items: items.into_iter().map(Report::from).collect(), next_cursor }))
}

async fn find(state: &AnalyticsState, user_id: Uuid, id: Uuid) -> ApiResult<Job> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    jobs::find(&mut conn, user_id, id).await?.ok_or_else(|| ApiError::not_found("no such report"))
}

/// A report job: its status and progress.
#[utoipa::path(get, path = "/v1/reports/{id}", tag = "reports", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Report)))]
async fn get_report(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Report>> {
    Ok(Json(find(&state, user.user_id, id).await?.into()))
}

/// The finished report: the CSV or the SVG chart, as an attachment.
#[utoipa::path(get, path = "/v1/reports/{id}/download", tag = "reports", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "the file, as the job's `format` says",
            content((String = "text/csv"), (String = "image/svg+xml")),
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"<kind>_<from>_<to>.<format>\"`"))),
        (status = 409, body = ErrorBody, description = "`report_not_ready`: the job is queued or running (poll it); \
            `report_failed`: it failed or was cancelled, so there is no file"),
        (status = 410, body = ErrorBody, description = "`report_expired`: the file was deleted after the retention period")))]
async fn download_report(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let job = find(&state, user.user_id, id).await?;
    match job.status {
        Status::Succeeded => {}
        Status::Queued | Status::Running => {
            return Err(ApiError::conflict(
                "report_not_ready",
                "the report is not ready yet; poll it until it succeeded",
            ));
        }
        Status::Failed | Status::Cancelled => {
            return Err(ApiError::conflict("report_failed", "the report failed or was cancelled: it has no file"));
        }
        Status::Expired => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "report_expired",
                "the report expired and its file was deleted",
            ));
        }
    }
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    // It may have expired between the two reads.
    let Some(content) = jobs::content(&mut conn, user.user_id, id).await? else {
        return Err(ApiError::new(StatusCode::GONE, "report_expired", "the report expired and its file was deleted"));
    };
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", content.file_name))
        .context("a report's file name is a header value")?;
    let content_type = HeaderValue::from_str(&content.content_type).context("a content type is a header value")?;
    Ok(([(header::CONTENT_TYPE, content_type), (header::CONTENT_DISPOSITION, disposition)], content.bytes)
        .into_response())
}

/// Cancels a queued or running report; the runner stops at its next
/// heartbeat and writes nothing.
#[utoipa::path(post, path = "/v1/reports/{id}/cancel", tag = "reports", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Report, description = "cancelled"),
        (status = 409, body = ErrorBody, description = "`report_finished`: it already succeeded, failed, expired or was cancelled")))]
async fn cancel_report(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Report>> {
    let job = find(&state, user.user_id, id).await?;
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    match jobs::cancel(&mut conn, user.user_id, id).await? {
        Some(cancelled) => Ok(Json(cancelled.into())),
        None => Err(ApiError::conflict(
            "report_finished",
            format!("the report is {} and can no longer be cancelled", job.status.as_str()),
        )),
    }
}
