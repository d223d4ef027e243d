//! The `analytics.report_jobs` table and the state machine of a job.
//!
//! ```text
//!            claim                    success
//!   queued ─────────▶ running ──────────────────▶ succeeded ──(retention)──▶ expired
//!     ▲   ◀──────────    │  │
//!     │  failed attempt, │  │ failed attempt, none left
//!     │  backoff         │  └──────────────────▶ failed
//!     │                  │
//!     └── cancel ────────┴── cancel ─────────────▶ cancelled
//! ```
//!
//! Every transition is one `UPDATE` whose `WHERE` names the state it leaves
//! (and, for a runner's writes, the runner holding the lease), so a
//! cancellation and a runner finishing at the same moment cannot both win,
//! and a runner whose lease was taken over writes nothing.
//!
//! The runner's half (claim, heartbeat, finish) is public so that a test can
//! play a runner that dies after claiming.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use freedumb_kit::date::IsoDate;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::range::Range;

/// How many times a job is tried before it fails.
pub const MAX_ATTEMPTS: i32 = 3;

/// What a report shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
// Named for the document, where other services have a `Kind` of their own.
#[schema(as = ReportKind)]
pub enum Kind {
    /// Spending per top-level category (subcategories rolled up), per
    /// currency; the chart is bars.
    SpendingByCategory,
    /// Income and expense per calendar month, per currency; the chart is
    /// grouped bars.
    IncomeExpense,
    /// Inflow, outflow, transfers, net and closing balance per period (a day
    /// for ranges up to 31 days, an ISO week up to 184 days, else a month),
    /// per currency; the chart is lines.
    CashFlow,
    /// Accounts, investments and their total at the end of every day, per
    /// currency; the chart is lines.
    NetWorth,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SpendingByCategory => "spending_by_category",
            Kind::IncomeExpense => "income_expense",
            Kind::CashFlow => "cash_flow",
            Kind::NetWorth => "net_worth",
        }
    }

    fn parse(text: &str) -> anyhow::Result<Kind> {
        Ok(match text {
            "spending_by_category" => Kind::SpendingByCategory,
            "income_expense" => Kind::IncomeExpense,
            "cash_flow" => Kind::CashFlow,
            "net_worth" => Kind::NetWorth,
            other => anyhow::bail!("the report_jobs table holds an unknown kind {other:?}"),
        })
    }
}

/// The file a report is delivered as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
// Named for the document, where other services have a `Format` of their own.
#[schema(as = ReportFormat)]
pub enum Format {
    /// `text/csv`: a header row, one row per item, amounts as exact decimal
    /// strings next to their currency.
    Csv,
    /// `image/svg+xml`: a chart, one panel per currency.
    Svg,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Svg => "svg",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Svg => "image/svg+xml",
        }
    }

    fn parse(text: &str) -> anyhow::Result<Format> {
        Ok(match text {
            "csv" => Format::Csv,
            "svg" => Format::Svg,
            other => anyhow::bail!("the report_jobs table holds an unknown format {other:?}"),
        })
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
// Named for the document, where other services have a `Status` of their own.
#[schema(as = ReportStatus)]
pub enum Status {
    /// Waiting for a runner, first or after a failed attempt (see `error`).
    Queued,
    /// A runner is generating it; `progress` moves.
    Running,
    /// Done: `GET …/download` returns the file until `expires_at`.
    Succeeded,
    /// Every attempt failed; `error` says why the last one did.
    Failed,
    Cancelled,
    /// It succeeded, and its file was deleted after the retention period.
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }

    fn parse(text: &str) -> anyhow::Result<Status> {
        Ok(match text {
            "queued" => Status::Queued,
            "running" => Status::Running,
            "succeeded" => Status::Succeeded,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            "expired" => Status::Expired,
            other => anyhow::bail!("the report_jobs table holds an unknown status {other:?}"),
        })
    }
}

/// A job as the API shows it (never its content).
#[derive(Debug, Clone)]
pub struct Job {
    pub id: Uuid,
    pub kind: Kind,
    pub format: Format,
    pub range: Range,
    pub status: Status,
    pub progress: i16,
    pub attempts: i32,
    pub max_attempts: i32,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    kind: String,
    format: String,
    range_from: NaiveDate,
    range_to: NaiveDate,
    status: String,
    progress: i16,
    attempts: i32,
    max_attempts: i32,
    error: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

/// The columns of a [`Job`]. A succeeded report past its `expires_at` reads
/// as `expired` even before the sweep has deleted its file, so the status
/// and the download agree whenever the sweep runs.
const COLUMNS: &str = "id, kind, format, range_from, range_to,
    CASE WHEN status = 'succeeded' AND expires_at <= now() THEN 'expired' ELSE status END AS status,
    progress, attempts, max_attempts, error, created_at, started_at, finished_at, expires_at";

fn range_of(from: NaiveDate, to: NaiveDate) -> anyhow::Result<Range> {
    let date =
        |d: NaiveDate| IsoDate::new(d).with_context(|| format!("the report_jobs table holds a date {d} out of range"));
    Range::new(date(from)?, date(to)?).map_err(|err| anyhow::anyhow!("the report_jobs table holds a bad range: {err}"))
}

impl TryFrom<JobRow> for Job {
    type Error = anyhow::Error;

    fn try_from(row: JobRow) -> anyhow::Result<Job> {
        Ok(Job {
            id: row.id,
            kind: Kind::parse(&row.kind)?,
            format: Format::parse(&row.format)?,
            range: range_of(row.range_from, row.range_to)?,
            status: Status::parse(&row.status)?,
            progress: row.progress,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            error: row.error,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            expires_at: row.expires_at,
        })
    }
}

/// Queues a job for the user.
pub async fn create(
    conn: &mut PgConnection,
    user_id: Uuid,
    kind: Kind,
    format: Format,
    range: Range,
) -> anyhow::Result<Job> {
    let row: JobRow = sqlx::query_as(&format!(
        "INSERT INTO analytics.report_jobs (id, user_id, kind, format, range_from, range_to, max_attempts)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(user_id)
    .bind(kind.as_str())
    .bind(format.as_str())
    .bind(range.from().get())
    .bind(range.to().get())
    .bind(MAX_ATTEMPTS)
    .fetch_one(&mut *conn)
    .await
    .context("failed to queue a report job")?;
    // Delivered on commit, to every runner of the database that listens:
    // a new job starts at once rather than at the next poll.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NEW_JOB_CHANNEL)
        .execute(conn)
        .await
        .context("failed to announce a report job")?;
    row.try_into()
}

/// The Postgres `NOTIFY` channel a queued job is announced on.
pub const NEW_JOB_CHANNEL: &str = "analytics_report_jobs";

/// The user's job, if it is theirs.
pub async fn find(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> anyhow::Result<Option<Job>> {
    let row: Option<JobRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM analytics.report_jobs WHERE id = $1 AND user_id = $2"))
            .bind(id)
            .bind(user_id)
            .fetch_optional(conn)
            .await
            .context("failed to read a report job")?;
    row.map(Job::try_from).transpose()
}

/// Where a page of the listing ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct After {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// The user's jobs, newest first, `limit` of them after `after`.
pub async fn list(
    conn: &mut PgConnection,
    user_id: Uuid,
    after: Option<After>,
    limit: i64,
) -> anyhow::Result<Vec<Job>> {
    let rows: Vec<JobRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM analytics.report_jobs
         WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    ))
    .bind(user_id)
    .bind(after.map(|a| a.created_at))
    .bind(after.map(|a| a.id))
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("failed to list report jobs")?;
    rows.into_iter().map(Job::try_from).collect()
}

/// Cancels a queued or running job: `None` when it was in another state
/// (the caller has looked it up first). A runner sees the cancellation at
/// its next heartbeat and stops.
pub async fn cancel(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> anyhow::Result<Option<Job>> {
    let row: Option<JobRow> = sqlx::query_as(&format!(
        "UPDATE analytics.report_jobs
         SET status = 'cancelled', finished_at = now(), locked_by = NULL, locked_until = NULL
         WHERE id = $1 AND user_id = $2 AND status IN ('queued', 'running')
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(user_id)
    .fetch_optional(conn)
    .await
    .context("failed to cancel a report job")?;
    row.map(Job::try_from).transpose()
}

/// A finished report's file.
pub struct Content {
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub file_name: String,
}

/// The file of a succeeded, unexpired job of the user's.
pub async fn content(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> anyhow::Result<Option<Content>> {
    let row: Option<(Vec<u8>, String, String)> = sqlx::query_as(
        "SELECT content, content_type, file_name FROM analytics.report_jobs
         WHERE id = $1 AND user_id = $2 AND status = 'succeeded' AND expires_at > now()",
    )
    .bind(id)
    .bind(user_id)
    .fetch_optional(conn)
    .await
    .context("failed to read a report's file")?;
    Ok(row.map(|(bytes, content_type, file_name)| Content { bytes, content_type, file_name }))
}

// ---------------------------------------------------------------- the runner's half

/// A job a runner holds the lease of.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: Kind,
    pub format: Format,
    pub range: Range,
    /// This attempt's number, from 1.
    pub attempt: i32,
    pub max_attempts: i32,
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: Uuid,
    user_id: Uuid,
    kind: String,
    format: String,
    range_from: NaiveDate,
    range_to: NaiveDate,
    attempts: i32,
    max_attempts: i32,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Takes the oldest runnable job for `runner` with a lease of `lease`: a
/// queued one whose backoff has passed, or a running one whose runner's
/// lease ran out (it died). Replicas skip each other's locked rows, so each
/// job goes to one runner. A job whose lapsed attempt was its last fails
/// here instead of running a fourth time.
pub async fn claim(conn: &mut PgConnection, runner: Uuid, lease: Duration) -> anyhow::Result<Option<Claimed>> {
    loop {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.context("failed to begin a claim")?;
        let row: Option<ClaimRow> = sqlx::query_as(
            "SELECT id, user_id, kind, format, range_from, range_to, attempts, max_attempts
             FROM analytics.report_jobs
             WHERE status IN ('queued', 'running') AND run_after <= now()
               AND (locked_until IS NULL OR locked_until < now())
             ORDER BY created_at, id
             LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await
        .context("failed to look for a runnable report job")?;
        let Some(row) = row else { return Ok(None) };
        if row.attempts >= row.max_attempts {
            sqlx::query(
                "UPDATE analytics.report_jobs
                 SET status = 'failed', finished_at = now(), locked_by = NULL, locked_until = NULL,
                     error = 'the runner stopped during the last attempt (its lease ran out)'
                 WHERE id = $1",
            )
            .bind(row.id)
            .execute(&mut *tx)
            .await
            .context("failed to fail a report job out of attempts")?;
            tx.commit().await.context("failed to commit a failed report job")?;
            continue;
        }
        sqlx::query(
            "UPDATE analytics.report_jobs
             SET status = 'running', attempts = attempts + 1, progress = 0, locked_by = $2,
                 locked_until = now() + $3 * interval '1 millisecond', started_at = COALESCE(started_at, now())
             WHERE id = $1",
        )
        .bind(row.id)
        .bind(runner)
        .bind(millis(lease))
        .execute(&mut *tx)
        .await
        .context("failed to claim a report job")?;
        tx.commit().await.context("failed to commit a claim")?;
        return Ok(Some(Claimed {
            id: row.id,
            user_id: row.user_id,
            kind: Kind::parse(&row.kind)?,
            format: Format::parse(&row.format)?,
            range: range_of(row.range_from, row.range_to)?,
            attempt: row.attempts + 1,
            max_attempts: row.max_attempts,
        }));
    }
}

/// Renews the lease and stores the progress: `false` when the job is no
/// longer this runner's to run (cancelled, or its lease lapsed and another
/// runner took it), and the runner must stop.
pub async fn heartbeat(
    conn: &mut PgConnection,
    id: Uuid,
    runner: Uuid,
    lease: Duration,
    progress: i16,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE analytics.report_jobs
         SET progress = GREATEST(progress, $3), locked_until = now() + $4 * interval '1 millisecond'
         WHERE id = $1 AND locked_by = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(runner)
    .bind(progress.clamp(0, 100))
    .bind(millis(lease))
    .execute(conn)
    .await
    .context("failed to renew a report job's lease")?;
    Ok(done.rows_affected() == 1)
}

/// Stores the file: `false` if the job stopped being this runner's.
pub async fn succeed(
    conn: &mut PgConnection,
    id: Uuid,
    runner: Uuid,
    content: &Content,
    retention: Duration,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE analytics.report_jobs
         SET status = 'succeeded', progress = 100, error = NULL, finished_at = now(),
             expires_at = now() + $6 * interval '1 millisecond',
             content = $3, content_type = $4, file_name = $5, locked_by = NULL, locked_until = NULL
         WHERE id = $1 AND locked_by = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(runner)
    .bind(&content.bytes)
    .bind(&content.content_type)
    .bind(&content.file_name)
    .bind(millis(retention))
    .execute(conn)
    .await
    .context("failed to store a report")?;
    Ok(done.rows_affected() == 1)
}

/// Ends a failed attempt: back to `queued` after `backoff × 2^(attempt−1)`,
/// or `failed` once the attempts are used up. The error is kept either way.
pub async fn fail_attempt(
    conn: &mut PgConnection,
    id: Uuid,
    runner: Uuid,
    error: &str,
    backoff: Duration,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE analytics.report_jobs
         SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
             finished_at = CASE WHEN attempts >= max_attempts THEN now() END,
             run_after = now() + $4 * power(2, LEAST(attempts - 1, 20)) * interval '1 millisecond',
             error = $3, locked_by = NULL, locked_until = NULL
         WHERE id = $1 AND locked_by = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(runner)
    .bind(error)
    .bind(millis(backoff))
    .execute(conn)
    .await
    .context("failed to record a failed report attempt")?;
    Ok(())
}

/// Gives a job back on shutdown, as if this attempt had not started, so the
/// next runner takes it at once instead of after the lease.
pub async fn release(conn: &mut PgConnection, id: Uuid, runner: Uuid) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE analytics.report_jobs
         SET status = 'queued', attempts = GREATEST(attempts - 1, 0), progress = 0,
             locked_by = NULL, locked_until = NULL
         WHERE id = $1 AND locked_by = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(runner)
    .execute(conn)
    .await
    .context("failed to release a report job")?;
    Ok(())
}

/// Deletes the files of reports past their `expires_at` and marks them
/// `expired`; returns how many.
pub async fn sweep(conn: &mut PgConnection) -> anyhow::Result<u64> {
    let done = sqlx::query(
        "UPDATE analytics.report_jobs
         SET status = 'expired', content = NULL, content_type = NULL
         WHERE status = 'succeeded' AND expires_at <= now()",
    )
    .execute(conn)
    .await
    .context("failed to expire reports")?;
    Ok(done.rows_affected())
}
