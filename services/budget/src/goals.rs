//! `/v1/goals`: a target amount (and date), contributions towards it,
//! progress, and a projected completion date.
//!
//! The projection assumes saving continues at the average daily rate since
//! the first contribution: `remaining × days so far ÷ saved`, rounded up, in
//! integer arithmetic. Reaching the target records `goal.reached`, once.

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Days, NaiveDate, Utc};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::extract::{Json, Path};
use freedumb_kit::idempotency::{self, IdempotencyKey};
use freedumb_kit::money::Currency;
use freedumb_kit::{ApiError, ApiResult, ErrorBody, FieldError, FieldErrors};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::{BudgetState, SCHEMA, fingerprint};

pub(crate) fn router() -> OpenApiRouter<BudgetState> {
    OpenApiRouter::new()
        .routes(routes!(create_goal, list_goals))
        .routes(routes!(get_goal, update_goal, delete_goal))
        .routes(routes!(contribute))
}

pub const GOAL_REACHED: &str = "goal.reached";

#[derive(Debug, sqlx::FromRow)]
struct GoalRow {
    id: Uuid,
    name: String,
    currency: String,
    target_amount: i64,
    target_date: Option<NaiveDate>,
    reached_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    saved: i64,
    first_contribution: Option<NaiveDate>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Goal {
    id: Uuid,
    name: String,
    currency: String,
    #[schema(example = "5000.00")]
    target_amount: String,
    #[schema(value_type = Option<String>, format = Date)]
    target_date: Option<NaiveDate>,
    #[schema(example = "1250.00")]
    saved: String,
    #[schema(example = "3750.00")]
    remaining: String,
    /// Saved as a percentage of the target, one decimal.
    #[schema(example = "25.0")]
    percent: String,
    /// When the target is met at the average rate so far; null before any
    /// saving, or once reached.
    #[schema(value_type = Option<String>, format = Date)]
    projected_completion: Option<NaiveDate>,
    /// Whether the projection meets the target date; null without either.
    on_track: Option<bool>,
    reached_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

const SELECT: &str = "
    SELECT g.id, g.user_id, g.name, g.currency, g.target_amount, g.target_date, g.reached_at, g.created_at,
           COALESCE((SELECT SUM(c.amount) FROM budget.goal_contributions c WHERE c.goal_id = g.id), 0)::bigint AS saved,
           (SELECT MIN(c.date) FROM budget.goal_contributions c WHERE c.goal_id = g.id) AS first_contribution
    FROM budget.goals g";

async fn find(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> ApiResult<GoalRow> {
    sqlx::query_as(&format!("{SELECT} WHERE g.id = $1 AND g.user_id = $2"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .context("failed to load a goal")?
        .ok_or_else(|| ApiError::not_found("no such goal"))
}

/// Days needed at the average rate so far, rounded up.
fn projection(saved: i64, remaining: i64, first: NaiveDate, today: NaiveDate) -> Option<NaiveDate> {
    if saved <= 0 || remaining <= 0 {
        return None;
    }
    let elapsed = i128::from((today - first).num_days().max(1));
    let days = (i128::from(remaining) * elapsed + i128::from(saved) - 1) / i128::from(saved);
    today.checked_add_days(Days::new(u64::try_from(days).ok()?))
}

impl GoalRow {
    fn into_goal(self, today: NaiveDate) -> anyhow::Result<Goal> {
        let currency =
            Currency::from_code(&self.currency).with_context(|| format!("unknown currency {}", self.currency))?;
        let remaining = (self.target_amount - self.saved).max(0);
        let per_mille = i128::from(self.saved) * 1000 / i128::from(self.target_amount);
        let projected = self.first_contribution.and_then(|first| projection(self.saved, remaining, first, today));
        Ok(Goal {
            id: self.id,
            name: self.name,
            currency: currency.code().to_owned(),
            target_amount: currency.format(self.target_amount),
            target_date: self.target_date,
            saved: currency.format(self.saved),
            remaining: currency.format(remaining),
            percent: format!(
                "{}{}.{}",
                if per_mille < 0 { "-" } else { "" },
                per_mille.abs() / 10,
                per_mille.abs() % 10
            ),
            on_track: match (projected, self.target_date) {
                (Some(projected), Some(target)) => Some(projected <= target),
                _ if remaining == 0 => Some(true),
                _ => None,
            },
            projected_completion: projected,
            reached_at: self.reached_at,
            created_at: self.created_at,
        })
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGoal {
    #[schema(example = "Emergency fund")]
    name: String,
    #[schema(example = "EUR")]
    currency: String,
    #[schema(example = "5000.00")]
    target_amount: String,
    #[schema(value_type = Option<String>, format = Date)]
    target_date: Option<NaiveDate>,
}

fn parse_name(name: &str) -> Result<String, FieldError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(FieldError::new("name", "must be 1 to 100 characters"));
    }
    Ok(name.to_owned())
}

fn parse_target(currency: Currency, text: &str) -> Result<i64, FieldError> {
    match currency.parse(text) {
        Ok(amount) if amount > 0 => Ok(amount),
        Ok(_) => Err(FieldError::new("target_amount", "must be positive")),
        Err(err) => Err(FieldError::new("target_amount", err.to_string())),
    }
}

/// Creates a savings goal.
#[utoipa::path(post, path = "/v1/goals", tag = "goals", security(("bearer" = [])), request_body = CreateGoal,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body return the first answer")),
    responses((status = 201, body = Goal), (status = "4XX", body = ErrorBody)))]
async fn create_goal(
    State(state): State<BudgetState>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(req): Json<CreateGoal>,
) -> ApiResult<axum::response::Response> {
    let mut errors = FieldErrors::default();
    let name = errors.keep(parse_name(&req.name));
    let currency = errors.keep(
        Currency::from_code(req.currency.trim())
            .ok_or_else(|| FieldError::new("currency", "must be a supported ISO 4217 code")),
    );
    let target = currency.and_then(|c| errors.keep(parse_target(c, &req.target_amount)));
    let (Some(name), Some(currency), Some(target), true) = (name, currency, target, errors.is_empty()) else {
        return Err(errors.into_error());
    };
    let fp = fingerprint("POST /v1/goals", &req);
    idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let id = Uuid::now_v7();
            sqlx::query("INSERT INTO budget.goals (id, user_id, name, currency, target_amount, target_date) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(id)
                .bind(user.user_id)
                .bind(&name)
                .bind(currency.code())
                .bind(target)
                .bind(req.target_date)
                .execute(tx.conn())
                .await
                .context("failed to insert a goal")?;
            let goal = find(tx.conn(), user.user_id, id).await?.into_goal(Utc::now().date_naive())?;
            Ok((StatusCode::CREATED, serde_json::to_value(goal).context("serialise")?))
        })
    })
    .await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GoalList {
    items: Vec<Goal>,
}

/// The caller's goals with their progress.
#[utoipa::path(get, path = "/v1/goals", tag = "goals", security(("bearer" = [])),
    responses((status = 200, body = GoalList), (status = "4XX", body = ErrorBody)))]
async fn list_goals(State(state): State<BudgetState>, user: AuthUser) -> ApiResult<Json<GoalList>> {
    let rows: Vec<GoalRow> = sqlx::query_as(&format!("{SELECT} WHERE g.user_id = $1 ORDER BY g.created_at, g.id"))
        .bind(user.user_id)
        .fetch_all(&state.platform.db.pool)
        .await
        .context("failed to list goals")?;
    let today = Utc::now().date_naive();
    Ok(Json(GoalList { items: rows.into_iter().map(|r| r.into_goal(today)).collect::<anyhow::Result<_>>()? }))
}

/// One goal with its progress.
#[utoipa::path(get, path = "/v1/goals/{id}", tag = "goals", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Goal), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn get_goal(State(state): State<BudgetState>, user: AuthUser, Path(id): Path<Uuid>) -> ApiResult<Json<Goal>> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    Ok(Json(find(&mut conn, user.user_id, id).await?.into_goal(Utc::now().date_naive())?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGoal {
    name: Option<String>,
    target_amount: Option<String>,
    #[schema(value_type = Option<String>, format = Date)]
    target_date: Option<NaiveDate>,
}

/// Renames a goal or changes its target.
#[utoipa::path(patch, path = "/v1/goals/{id}", tag = "goals", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = UpdateGoal,
    responses((status = 200, body = Goal), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn update_goal(
    State(state): State<BudgetState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateGoal>,
) -> ApiResult<Json<Goal>> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let current = find(tx.conn(), user.user_id, id).await?;
    let currency = Currency::from_code(&current.currency).context("unknown currency")?;
    let mut errors = FieldErrors::default();
    let name = req.name.as_deref().and_then(|n| errors.keep(parse_name(n)));
    let target = req.target_amount.as_deref().and_then(|t| errors.keep(parse_target(currency, t)));
    errors.finish()?;
    sqlx::query(
        "UPDATE budget.goals SET name = COALESCE($2, name), target_amount = COALESCE($3, target_amount),
                target_date = COALESCE($4, target_date), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(name)
    .bind(target)
    .bind(req.target_date)
    .execute(tx.conn())
    .await
    .context("failed to update a goal")?;
    mark_if_reached(tx.conn(), user.user_id, id).await?;
    let goal = find(tx.conn(), user.user_id, id).await?.into_goal(Utc::now().date_naive())?;
    tx.commit().await.context("failed to commit")?;
    Ok(Json(goal))
}

/// Deletes a goal and its contributions.
#[utoipa::path(delete, path = "/v1/goals/{id}", tag = "goals", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn delete_goal(State(state): State<BudgetState>, user: AuthUser, Path(id): Path<Uuid>) -> ApiResult<StatusCode> {
    let done = sqlx::query("DELETE FROM budget.goals WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user.user_id)
        .execute(&state.platform.db.pool)
        .await
        .context("failed to delete a goal")?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("no such goal"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Contribution {
    /// Decimal string in the goal's currency; negative for a withdrawal.
    #[schema(example = "250.00")]
    amount: String,
    /// Default today.
    #[schema(value_type = Option<String>, format = Date)]
    date: Option<NaiveDate>,
    note: Option<String>,
}

/// Adds money to a goal (or takes some out).
#[utoipa::path(post, path = "/v1/goals/{id}/contributions", tag = "goals", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = Contribution,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body return the first answer")),
    responses((status = 201, body = Goal), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn contribute(
    State(state): State<BudgetState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    key: IdempotencyKey,
    Json(req): Json<Contribution>,
) -> ApiResult<axum::response::Response> {
    let fp = fingerprint(&format!("POST /v1/goals/{id}/contributions"), &req);
    idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let goal = find(tx.conn(), user.user_id, id).await?;
            let currency = Currency::from_code(&goal.currency).context("unknown currency")?;
            let amount = currency.parse(&req.amount).map_err(|e| ApiError::field("amount", e.to_string()))?;
            if amount == 0 {
                return Err(ApiError::field("amount", "must not be zero"));
            }
            let note = req.note.as_deref().map(str::trim).filter(|n| !n.is_empty());
            if note.is_some_and(|n| n.chars().count() > 200) {
                return Err(ApiError::field("note", "must be at most 200 characters"));
            }
            sqlx::query(
                "INSERT INTO budget.goal_contributions (id, goal_id, amount, date, note) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(Uuid::now_v7())
            .bind(id)
            .bind(amount)
            .bind(req.date.unwrap_or_else(|| Utc::now().date_naive()))
            .bind(note)
            .execute(tx.conn())
            .await
            .context("failed to insert a contribution")?;
            mark_if_reached(tx.conn(), user.user_id, id).await?;
            let goal = find(tx.conn(), user.user_id, id).await?.into_goal(Utc::now().date_naive())?;
            Ok((StatusCode::CREATED, serde_json::to_value(goal).context("serialise")?))
        })
    })
    .await
}

/// The payload of `goal.reached` (docs/events.md).
#[derive(Debug, Serialize)]
struct GoalReached {
    /// The payload's contract version.
    version: u32,
    goal_id: Uuid,
    user_id: Uuid,
    name: String,
    currency: String,
    target_minor: i64,
    saved_minor: i64,
}

/// Marks the goal reached and records `goal.reached`, the first time saved
/// meets the target.
async fn mark_if_reached(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> ApiResult<()> {
    let goal = find(conn, user_id, id).await?;
    if goal.reached_at.is_some() || goal.saved < goal.target_amount {
        return Ok(());
    }
    sqlx::query("UPDATE budget.goals SET reached_at = now() WHERE id = $1 AND reached_at IS NULL")
        .bind(id)
        .execute(&mut *conn)
        .await
        .context("failed to mark a goal reached")?;
    let reached = GoalReached {
        version: 1,
        goal_id: id,
        user_id,
        name: goal.name,
        currency: goal.currency,
        target_minor: goal.target_amount,
        saved_minor: goal.saved,
    };
    freedumb_kit::events::record(conn, SCHEMA, GOAL_REACHED, &reached).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn the_projection_extends_the_average_rate() {
        // 100 saved over 10 days: 10 a day; 250 to go is 25 more days.
        assert_eq!(projection(100, 250, d("2026-11-01"), d("2026-11-11")), Some(d("2026-12-06")));
        // Rounded up: 1 a day over 3 days, 1 left, is one more day.
        assert_eq!(projection(3, 1, d("2026-11-01"), d("2026-11-04")), Some(d("2026-11-05")));
    }

    #[test]
    fn nothing_saved_or_nothing_left_has_no_projection() {
        assert_eq!(projection(0, 100, d("2026-11-01"), d("2026-11-11")), None);
        assert_eq!(projection(100, 0, d("2026-11-01"), d("2026-11-11")), None);
    }
}
